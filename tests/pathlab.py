"""A routed path of our own: network namespaces the test makes, always removed.

    src ──L0── r1 ──L1── r2 ──L2── r3 ──L3── tgt          (hops=3)
                 ╲              ╱
                  ── r2b ──────                           (twin=2: a second router
                     T0     T1                             beside r2, for ECMP and
                                                           route changes)

``src`` is where the prober runs (``run(fn)`` on a thread inside it, or
``exec(...)``). Link Lk joins node k (left, ``.1`` / ``::1``) and node k+1 (right,
``.2`` / ``::2``) on 10.100.k.0/24 and fd00:100:k::/64; the twin's links are
10.101.{0,1}.0/24 and fd00:101:{0,1}::/64. ``tgt`` owns all of 10.200.0.0/16 and
fd00:200::/64 through local routes, so any address in them answers echo requests.
Routers forward (their own sysctls) and, unless ``ratelimit`` says otherwise, send
ICMP errors without rate limits. Hop h of a trace to the target is
``hop_address(h)``: the address of router h on the link facing the source.

Knobs: ``set_mtu(link, mtu)`` (both ends of Lk), ``silence(router)`` (it sends no
time exceeded), ``black_hole(router)`` (it drops its own fragmentation-needed /
packet-too-big), ``set_path("a" | "b" | "ecmp")`` (through r{twin}, r{twin}b, or
both with multipath). Only addresses inside these namespaces are ever probed.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from typing import TypeVar

from tests.conftest import child_env
from tests.privhelpers import in_netns

T = TypeVar("T")

TARGET_NET4 = "10.200.0.0/16"
TARGET_NET6 = "fd00:200::/64"


def target4(i: int) -> str:
    """The i-th address of the target's /16 (i in 0..65535)."""
    return f"10.200.{i >> 8}.{i & 0xFF}"


def target6(i: int) -> str:
    return f"fd00:200::{i:x}" if i else "fd00:200::"


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


class PathLab:
    def __init__(
        self, hops: int = 3, *, twin: int | None = None, v6: bool = True, ratelimit: bool = False
    ) -> None:
        if hops < 1:
            raise ValueError("hops must be >= 1")
        if twin is not None and not 1 < twin < hops:
            raise ValueError(f"twin must be a middle router: 2..{hops - 1}")
        self.hops = hops
        self.twin = twin
        self.v6 = v6
        self.ratelimit = ratelimit
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.src = f"fpp-s-{tag}"
        self.tgt = f"fpp-t-{tag}"
        self.routers = [f"fpp-r{k}-{tag}" for k in range(1, hops + 1)]
        self.twin_ns = f"fpp-r{twin}b-{tag}" if twin is not None else None
        self.path = "a"
        self._made: list[str] = []

    # ------------------------------------------------------------ naming
    def node(self, k: int) -> str:
        """Node k of the chain: 0 = src, 1..hops = routers, hops + 1 = tgt."""
        if k == 0:
            return self.src
        if k == self.hops + 1:
            return self.tgt
        return self.routers[k - 1]

    def dev(self, link: int, right: bool) -> str:
        return f"fpl{link}{'r' if right else 'l'}{self.tag}"

    @staticmethod
    def addr4(link: int, right: bool, twin: bool = False) -> str:
        return f"10.{101 if twin else 100}.{link}.{2 if right else 1}"

    @staticmethod
    def addr6(link: int, right: bool, twin: bool = False) -> str:
        import ipaddress

        return str(
            ipaddress.IPv6Address(f"fd00:{101 if twin else 100}:{link}::{2 if right else 1}")
        )

    def hop_address(self, h: int, family: int = 4) -> str:
        """What router h (1-based) answers from: its address facing the source; on
        the twin's side of the split when the path goes through it."""
        if self.twin is not None and h == self.twin and self.path == "b":
            return self.addr4(0, True, True) if family == 4 else self.addr6(0, True, True)
        return self.addr4(h - 1, True) if family == 4 else self.addr6(h - 1, True)

    def hop_addresses(self, h: int, family: int = 4) -> set[str]:
        """Every address hop h's router may answer from on the current path (Linux
        picks the source of an ICMP error by family and route: the inbound link's
        address, or the one towards the source)."""
        out = {self.hop_address(h, family)}
        if self.twin is not None and h == self.twin + 1 and self.path == "b":
            out.add(self.addr4(1, True, True) if family == 4 else self.addr6(1, True, True))
        return out

    def twin_addresses(self, family: int = 4) -> tuple[str, str]:
        """Hop ``twin``'s two possible answers: through r{twin}, through r{twin}b."""
        assert self.twin is not None
        if family == 4:
            return self.addr4(self.twin - 1, True), self.addr4(0, True, True)
        return self.addr6(self.twin - 1, True), self.addr6(0, True, True)

    # ------------------------------------------------------------ running things
    def exec(
        self, ns: str, *cmd: str, check: bool = True, timeout: float | None = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            check=check,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=timeout,
        )

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a thread inside the source namespace."""
        return in_netns(self.src, fn)

    def _ns(self, ns: str, *cmd: str, check: bool = True) -> None:
        r = _sh("ip", "-n", ns, *cmd, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"ip -n {ns} {' '.join(cmd)}: {r.stderr.strip()}")

    def _sysctl(self, ns: str, *settings: str) -> None:
        for s in settings:
            # a setting this kernel lacks (per-namespace icmp_msgs_per_sec) is skipped
            _sh("ip", "netns", "exec", ns, "sysctl", "-qw", s, check=False)

    # ------------------------------------------------------------ building
    def _link(
        self, a: str, b: str, dev_a: str, dev_b: str, a4: str, b4: str, a6: str, b6: str
    ) -> None:
        _sh("ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        _sh("ip", "link", "set", dev_a, "netns", a)
        _sh("ip", "link", "set", dev_b, "netns", b)
        for ns, dev, v4, v6 in ((a, dev_a, a4, a6), (b, dev_b, b4, b6)):
            self._ns(ns, "addr", "add", f"{v4}/24", "dev", dev)
            if self.v6:
                self._ns(ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            self._ns(ns, "link", "set", dev, "up")

    def up(self) -> PathLab:
        names = [self.src, *self.routers, self.tgt] + ([self.twin_ns] if self.twin_ns else [])
        for ns in names:
            _sh("ip", "netns", "add", ns)
            self._made.append(ns)
            self._ns(ns, "link", "set", "lo", "up")
            self._sysctl(
                ns,
                "net.ipv6.conf.all.accept_ra=0",
                "net.ipv6.conf.default.accept_ra=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            )
        for k in range(self.hops + 1):
            self._link(
                self.node(k),
                self.node(k + 1),
                self.dev(k, False),
                self.dev(k, True),
                self.addr4(k, False),
                self.addr4(k, True),
                self.addr6(k, False),
                self.addr6(k, True),
            )
        if self.twin is not None and self.twin_ns is not None:
            t = self.twin
            self._link(
                self.node(t - 1),
                self.twin_ns,
                f"fpt0l{self.tag}",
                f"fpt0r{self.tag}",
                self.addr4(0, False, True),
                self.addr4(0, True, True),
                self.addr6(0, False, True),
                self.addr6(0, True, True),
            )
            self._link(
                self.twin_ns,
                self.node(t + 1),
                f"fpt1l{self.tag}",
                f"fpt1r{self.tag}",
                self.addr4(1, False, True),
                self.addr4(1, True, True),
                self.addr6(1, False, True),
                self.addr6(1, True, True),
            )
        for r in self.routers + ([self.twin_ns] if self.twin_ns else []):
            self._sysctl(
                r,
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
            if not self.ratelimit:
                self._sysctl(
                    r,
                    "net.ipv4.icmp_ratelimit=0",
                    "net.ipv6.icmp.ratelimit=0",
                    "net.ipv4.icmp_msgs_per_sec=100000000",
                    "net.ipv4.icmp_msgs_burst=100000000",
                )
        # the target owns its whole prefixes
        self._ns(self.tgt, "route", "add", "local", TARGET_NET4, "dev", "lo")
        if self.v6:
            self._ns(self.tgt, "-6", "route", "add", "local", TARGET_NET6, "dev", "lo")
        self._sysctl(
            self.tgt,
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=100000000",
            "net.ipv4.icmp_msgs_burst=100000000",
        )
        # everyone sends towards the source by default (to the left) ...
        for k in range(1, self.hops + 2):
            self._default(self.node(k), self.addr4(k - 1, False), self.addr6(k - 1, False))
        if self.twin_ns is not None:
            self._default(self.twin_ns, self.addr4(0, False, True), self.addr6(0, False, True))
        # ... the source everything to the right, and each router the target's prefix
        self._default(self.src, self.addr4(0, True), self.addr6(0, True))
        for k in range(1, self.hops + 1):
            if self.twin is not None and k == self.twin - 1:
                continue  # set_path decides
            self._to_target(self.node(k), [(self.addr4(k, True), self.addr6(k, True))])
        if self.twin_ns is not None:
            self._to_target(self.twin_ns, [(self.addr4(1, True, True), self.addr6(1, True, True))])
            self.set_path("a")
        return self

    def _default(self, ns: str, via4: str, via6: str) -> None:
        self._ns(ns, "route", "replace", "default", "via", via4)
        if self.v6:
            self._ns(ns, "-6", "route", "replace", "default", "via", via6)

    def _to_target(self, ns: str, vias: list[tuple[str, str]]) -> None:
        if len(vias) == 1:
            self._ns(ns, "route", "replace", TARGET_NET4, "via", vias[0][0])
            if self.v6:
                self._ns(ns, "-6", "route", "replace", TARGET_NET6, "via", vias[0][1])
            return
        hops4 = [w for v4, _ in vias for w in ("nexthop", "via", v4)]
        self._ns(ns, "route", "replace", TARGET_NET4, *hops4)
        if self.v6:
            hops6 = [w for _, v6 in vias for w in ("nexthop", "via", v6)]
            self._ns(ns, "-6", "route", "replace", TARGET_NET6, *hops6)

    def set_path(self, path: str) -> None:
        """Route the split through r{twin} ("a"), r{twin}b ("b") or both ("ecmp",
        hashed per flow on addresses and protocol)."""
        if self.twin is None:
            raise ValueError("set_path needs a lab made with twin=")
        a = (self.addr4(self.twin - 1, True), self.addr6(self.twin - 1, True))
        b = (self.addr4(0, True, True), self.addr6(0, True, True))
        vias = {"a": [a], "b": [b], "ecmp": [a, b]}.get(path)
        if vias is None:
            raise ValueError(f"path must be a, b or ecmp, not {path!r}")
        before = self.node(self.twin - 1)
        self._sysctl(
            before, "net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1"
        )
        self._to_target(before, vias)
        self.path = path

    # ------------------------------------------------------------ faults
    def set_mtu(self, link: int, mtu: int) -> None:
        """Both ends of link ``link`` (0 = src–r1) get ``mtu``."""
        left, right = self.node(link), self.node(link + 1)
        self._ns(left, "link", "set", self.dev(link, False), "mtu", str(mtu))
        self._ns(right, "link", "set", self.dev(link, True), "mtu", str(mtu))

    def _nft(self, ns: str, rule: str) -> None:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rule,
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {p.stderr.strip()}")

    def silence(self, router: int, twin: bool = False) -> None:
        """Router ``router`` (1-based; with ``twin``, the twin beside it) forwards but
        never says time exceeded."""
        if twin and (self.twin_ns is None or router != self.twin):
            raise ValueError(f"router {router} has no twin in this lab")
        self._nft(
            self.twin_ns if twin and self.twin_ns else self.node(router),
            "table inet fpp {\n chain out {\n type filter hook output priority 0;\n"
            " icmp type time-exceeded drop\n icmpv6 type time-exceeded drop\n }\n}\n",
        )

    def black_hole(self, router: int, twin: bool = False) -> None:
        """Router ``router`` (1-based; with ``twin``, the twin beside it) drops the
        fragmentation-needed / packet-too-big it sends (a PMTUD black hole: big
        packets vanish there, small ones pass)."""
        if twin and (self.twin_ns is None or router != self.twin):
            raise ValueError(f"router {router} has no twin in this lab")
        self._nft(
            self.twin_ns if twin and self.twin_ns else self.node(router),
            "table inet fpph {\n chain out {\n type filter hook output priority 0;\n"
            " icmp type destination-unreachable icmp code frag-needed drop\n"
            " icmpv6 type packet-too-big drop\n }\n}\n",
        )

    def set_twin_mtu(self, link: int, mtu: int) -> None:
        """Both ends of the twin's link ``link`` (0: towards the source, 1: onwards)."""
        if self.twin is None or self.twin_ns is None or link not in (0, 1):
            raise ValueError("set_twin_mtu needs a lab made with twin=, link 0 or 1")
        left = self.node(self.twin - 1) if link == 0 else self.twin_ns
        right = self.twin_ns if link == 0 else self.node(self.twin + 1)
        self._ns(left, "link", "set", f"fpt{link}l{self.tag}", "mtu", str(mtu))
        self._ns(right, "link", "set", f"fpt{link}r{self.tag}", "mtu", str(mtu))

    def down(self) -> None:
        for ns in reversed(self._made):
            _sh("ip", "netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> PathLab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()
