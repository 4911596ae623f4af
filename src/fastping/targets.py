"""Target parsing: addresses, host names, CIDR blocks, ranges and target files.

Large blocks stay compact: an IPv4 CIDR or range is kept as (first, count) and
expanded inside the core, so a /12 never becomes a million Python strings.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import TargetError

# A sweep may name at most this many addresses from one IPv6 block: scanning a
# /64 (2^64 addresses) is never what anyone meant.
MAX_V6_BLOCK = 1 << 20
MAX_V4_BLOCK = 1 << 24

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.(?!-)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


@dataclass(frozen=True, slots=True)
class V4Range:
    """``count`` consecutive IPv4 addresses from ``first`` (host-order int)."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Address:
    """One numeric address; ``label`` is what the user typed (the name, for a host name)."""

    label: str
    address: str
    family: int


@dataclass(frozen=True, slots=True)
class Name:
    """A host name still to resolve."""

    name: str


Spec = V4Range | Address | Name


# fe80::/10 exists on every link: unscoped, the kernel picks an interface for it
# (RFC 4007 section 6), so the probe may go out where nobody meant.
_NO_SCOPE = (
    "link-local address needs a scope: {t}%eth0 (the interface it is on; `ip -6 addr` lists them)"
)


def parse_target(text: str) -> list[Spec]:
    """Parse one target as a user typed it. Raises TargetError saying what is wrong."""
    t = text.strip()
    if not t:
        raise TargetError("empty target: give an address, a host name, a CIDR block or a range")
    if t.startswith("-"):
        raise TargetError(
            f"target {t!r} starts with '-': options go before targets, not as targets"
        )
    if "/" in t:
        return _parse_cidr(t)
    if "-" in t and _looks_numeric_range(t):
        return _parse_range(t)
    try:
        ip = ipaddress.ip_address(t.split("%", 1)[0] if ":" in t else t)
    except ValueError:
        pass
    else:
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if ip.version == 6 and ip.is_link_local and "%" not in t:
            raise TargetError(_NO_SCOPE.format(t=t))
        return [Address(t, str(ip), fam)]
    if _HOSTNAME.match(t) and not re.fullmatch(r"[0-9.]+", t):
        return [Name(t.rstrip("."))]
    raise TargetError(
        f"target {t!r} is not an IPv4/IPv6 address, host name, CIDR block (10.0.0.0/24) "
        "or range (10.0.0.1-10.0.0.9)"
    )


MAX_EXPANDED = 1 << 20  # addresses one block / range may expand to for a monitor


def expand_target(text: str, limit: int = MAX_EXPANDED) -> list[str]:
    """One target as the monitor and the engine watch it: an address or name stays
    itself, a CIDR block or range becomes its addresses (at most ``limit``, else
    TargetError). The one rule ``fastping monitor`` and ``MonitoringEngine`` share."""
    specs = parse_target(text)
    out: list[str] = []
    for s in specs:
        if isinstance(s, V4Range):
            if s.count + len(out) > limit:
                raise TargetError(
                    f"target {text!r} expands to {s.count} addresses; a monitor watches at most "
                    f"{limit} per block (split it, or use several agents with --shard)"
                )
            out.extend(str(ipaddress.IPv4Address(s.first + i)) for i in range(s.count))
        elif isinstance(s, Address):
            out.append(s.label if len(specs) == 1 else s.address)
        else:
            out.append(s.name)
    return out


def address_order(target: str) -> tuple[int, int, int, str]:
    """Sort key: IPv4 addresses numerically (127.5.0.2 before 127.5.0.10), then IPv6,
    then names alphabetically."""
    try:
        ip = ipaddress.ip_address(target.split("%", 1)[0])
    except ValueError:
        return (1, 0, 0, target)
    return (0, ip.version, int(ip), target)


def _looks_numeric_range(t: str) -> bool:
    a, _, b = t.partition("-")
    return bool(re.fullmatch(r"[0-9.]+", a) or ":" in a) and bool(b)


def _parse_cidr(t: str) -> list[Spec]:
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError as e:
        raise TargetError(f"bad CIDR block {t!r}: {e}") from None
    if net.version == 4:
        if net.num_addresses > MAX_V4_BLOCK:
            raise TargetError(
                f"CIDR block {t!r} has {net.num_addresses} addresses; split it (at most /8)"
            )
        return [V4Range(int(net.network_address), net.num_addresses)]
    if net.is_link_local:
        raise TargetError(
            f"IPv6 block {t!r} is link-local: its addresses need an interface scope each "
            "(fe80::1%eth0); name them one by one"
        )
    if net.num_addresses > MAX_V6_BLOCK:
        raise TargetError(
            f"IPv6 block {t!r} is too large to sweep ({net.num_addresses} addresses); "
            f"at most {MAX_V6_BLOCK} (a /108)"
        )
    # IPv6 blocks are expanded here (they are bounded above).
    return _V6Block(int(net.network_address), net.num_addresses)


def _parse_range(t: str) -> list[Spec]:
    a, _, b = t.partition("-")
    try:
        lo = ipaddress.ip_address(a)
        if "." in b or ":" in b:
            hi = ipaddress.ip_address(b)
        else:  # 10.0.0.1-20: last octet
            if lo.version != 4:
                raise ValueError("short form a.b.c.d-N is IPv4 only")
            last = int(b)
            if not 0 <= last <= 255:
                raise ValueError(f"last octet {last} is not 0..255")
            hi = ipaddress.ip_address((int(lo) & ~0xFF) | last)
    except ValueError as e:
        raise TargetError(f"bad range {t!r}: {e}") from None
    if lo.version != hi.version:
        raise TargetError(f"bad range {t!r}: both ends must be IPv4 or both IPv6")
    if int(hi) < int(lo):
        raise TargetError(f"bad range {t!r}: the end is before the start")
    n = int(hi) - int(lo) + 1
    if lo.version == 4:
        if n > MAX_V4_BLOCK:
            raise TargetError(f"range {t!r} has {n} addresses; split it (at most {MAX_V4_BLOCK})")
        return [V4Range(int(lo), n)]
    if lo.is_link_local or hi.is_link_local:
        raise TargetError(
            f"IPv6 range {t!r} is link-local: its addresses need an interface scope each "
            "(fe80::1%eth0); name them one by one"
        )
    if n > MAX_V6_BLOCK:
        raise TargetError(f"IPv6 range {t!r} has {n} addresses; at most {MAX_V6_BLOCK}")
    return _V6Block(int(lo), n)


def _V6Block(first: int, count: int) -> list[Spec]:  # noqa: N802
    """IPv6 blocks are bounded (MAX_V6_BLOCK), so they are expanded here."""
    out: list[Spec] = []
    for i in range(count):
        a = str(ipaddress.IPv6Address(first + i))
        out.append(Address(a, a, socket.AF_INET6))
    return out


def parse_targets(texts: Iterable[str]) -> list[Spec]:
    """Parse many targets in order (IPv6 blocks expanded, IPv4 blocks kept compact)."""
    out: list[Spec] = []
    for t in texts:
        out.extend(parse_target(t))
    return out


def read_targets_file(path: str | Path) -> list[str]:
    """Targets from a file: one per line, blank lines and ``#`` comments ignored
    (``-`` reads standard input)."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TargetError(f"cannot read targets file {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TargetError(f"targets file {str(path)!r} is not UTF-8 text: {e}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        for word in s.split():
            try:
                parse_target(split_kind(word).host)  # tcp://HOST:PORT lines too
            except TargetError as e:
                raise TargetError(f"{path}:{lineno}: {e}") from None
            out.append(word)
    return out


def resolve(
    names: Iterable[str], family: int | None = None, workers: int = 32
) -> dict[str, tuple[str, int] | str]:
    """Resolve host names concurrently. Each name maps to (address, family) or to
    an error message: a name that does not resolve is a result, not a crash."""
    uniq = list(dict.fromkeys(names))

    def one(name: str) -> tuple[str, tuple[str, int] | str]:
        try:
            infos = socket.getaddrinfo(name, None, family or 0, socket.SOCK_RAW)
        except socket.gaierror as e:
            return name, f"cannot resolve {name!r}: {e.strerror}"
        except UnicodeError as e:
            return name, f"cannot resolve {name!r}: {e}"
        # prefer IPv4 when the caller did not choose, as ping does
        infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
        fam, _, _, _, sa = infos[0]
        return name, (str(sa[0]), int(fam))

    if not uniq:
        return {}
    from concurrent.futures import ThreadPoolExecutor  # only when there are names

    with ThreadPoolExecutor(max_workers=min(workers, len(uniq))) as ex:
        return dict(ex.map(one, uniq))


# ---------------------------------------------------------------------------------
# probe kinds: what a target is probed with ("icmp" echo, "tcp" SYN, "udp" datagram)

ICMP = "icmp"
# kinds with ports, as their URL-like scheme (tcp://HOST:PORT); the socket class of
# each is engine.SOCKET_KINDS'
PORT_KINDS: tuple[str, ...] = ("tcp", "udp")
# DNS queries: dns://SERVER[:PORT]/NAME?type=T, the server's port, the question's name
# and type (commands.dnssweep.parse_dns_target is the grammar)
DNS = "dns"
PROBE_KINDS: tuple[str, ...] = (ICMP, *PORT_KINDS, DNS)


@dataclass(frozen=True, slots=True)
class KindTarget:
    """A target with its probe kind: ``host`` (an address, name, block or range) and,
    for a kind with ports, ``port``. ``label`` is its identity everywhere (engine,
    store, metrics, report): the host for ICMP, ``tcp://host:port`` for TCP."""

    kind: str
    host: str
    port: int = 0
    qname: str = ""  # DNS: the question's name and type
    qtype: str = ""

    @property
    def label(self) -> str:
        return kind_label(self.kind, self.host, self.port, self.qname, self.qtype)


def kind_label(kind: str, host: str, port: int = 0, qname: str = "", qtype: str = "A") -> str:
    """The identity of ``host`` probed with ``kind`` on ``port``: ``host`` for ICMP,
    ``tcp://host:port`` (``tcp://[v6]:port``) for a kind with ports,
    ``dns://host[:port]/qname?type=qtype`` for DNS (port 53 left out, as sweep prints)."""
    if kind == ICMP:
        return host
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if kind == DNS:
        return f"dns://{h if port == 53 else f'{h}:{port}'}/{qname}?type={qtype or 'A'}"
    return f"{kind}://{h}:{port}"


def split_kind(text: str) -> KindTarget:
    """``tcp://HOST:PORT`` / ``udp://HOST:PORT`` -> its kind, host and port; anything
    else is an ICMP target (``host`` as given). Raises TargetError for a malformed
    kind target (the host itself is checked by parse_target)."""
    t = text.strip()
    scheme, sep, rest = t.partition("://")
    if not sep:
        return KindTarget(ICMP, t)
    kind = scheme.lower()
    if kind == DNS:
        from .commands.dnssweep import parse_dns_target

        d = parse_dns_target(t)
        return KindTarget(DNS, d.server, d.port, d.name, d.qtype)
    if kind not in PORT_KINDS:
        raise TargetError(
            f"target {t!r}: unknown probe kind {scheme!r}: write tcp://HOST:PORT, "
            "udp://HOST:PORT or dns://SERVER/NAME?type=T (ICMP targets have no scheme; "
            "http(s):// URLs are HTTP checks)"
        )
    host, colon, port_s = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise TargetError(
            f"target {t!r}: write {kind}://HOST:PORT (IPv6 in brackets: {kind}://[::1]:22), "
            "port 1..65535"
        )
    return KindTarget(kind, host, int(port_s))


def split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` (a Prometheus target, no scheme) -> (host, port);
    None for anything else (a bare address, IPv6 included, a name, a block, a
    ``kind://`` target). A port outside 1..65535 is a TargetError."""
    t = text.strip()
    if "://" in t:
        return None
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_s = rest[1:]
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or ":" in host:  # no colon, or a bare IPv6 address
            return None
    if not host or not port_s.isdigit():
        return None
    if not 1 <= int(port_s) <= 65535:
        raise TargetError(f"target {t!r}: port {port_s} must be 1..65535")
    return host, int(port_s)


def with_kind(text: str, kind: str | None, port: int | None) -> KindTarget:
    """A target as a config entry or a flag gives it: ``text`` may carry its own kind
    (tcp://HOST:PORT), or ``kind`` / ``port`` say it; both at once must agree."""
    kt = split_kind(text)
    if kind is None and port is None:
        return kt
    k = (kind or (kt.kind if kt.kind != ICMP else "tcp")).lower()
    if k not in PROBE_KINDS:
        raise TargetError(f"target {text!r}: kind {kind!r} is not one of {', '.join(PROBE_KINDS)}")
    if k == DNS or kt.kind == DNS:
        if kt.kind != DNS or k != DNS or port is not None:
            raise TargetError(
                f"target {text!r}: a DNS target is dns://SERVER[:PORT]/NAME?type=T, or "
                "{kind: dns, server: SERVER[:PORT], name: NAME, type: T} in a config"
            )
        return kt
    if kt.kind != ICMP and (k != kt.kind or (port is not None and port != kt.port)):
        raise TargetError(
            f"target {text!r} names its kind and port already; drop kind/port or make them agree"
        )
    if kt.kind != ICMP:
        return kt
    if k == ICMP:
        if port:
            raise TargetError(f"target {text!r}: ICMP has no ports; give kind: tcp (or udp)")
        return kt
    if port is None or not 1 <= port <= 65535:
        raise TargetError(f"target {text!r}: a {k} target needs a port 1..65535 (port: 22)")
    return KindTarget(k, kt.host, port)


def expand_kind_target(text: str, limit: int = MAX_EXPANDED) -> list[str]:
    """expand_target for a target that may carry a kind: ``tcp://10.0.0.0/30:80`` is
    each address of the block on port 80, as labels (``tcp://10.0.0.1:80``, ...)."""
    kt = split_kind(text)
    if kt.kind == ICMP:
        return expand_target(text, limit)
    return [
        kind_label(kt.kind, h, kt.port, kt.qname, kt.qtype) for h in expand_target(kt.host, limit)
    ]
