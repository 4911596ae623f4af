"""Path MTU for every target at once, and PMTUD black holes located hop by hop.

``path_mtu(["10.0.0.1", "2001:db8::1"])`` returns one :class:`PathMtu` per target:
the largest don't-fragment ICMP echo (whole IP packet, bytes) that reaches it and
comes back, how it was found, and, when big probes vanish without the
fragmentation-needed / packet-too-big that should say why (a black hole), the last
hop that still passes them.

How (every step covers all targets at once: one IcmpSocket per probe size, or per
size and TTL, every target on it, the sockets' sweeps on threads of their own):

1. The local MTU: the device the route to the target leaves by (netlink
   RTM_GETROUTE, SIOCGIFMTU). No probe is bigger.
2. A ladder (RFC 8899-style: 1280, 1400, 1480, 1500, jumbo sizes ..., capped by the
   local MTU, and a small probe that proves the target answers at all), all rungs
   in one round. Each probe is sent with DF whatever the kernel learned before
   (``dont_fragment="probe"``: IP_PMTUDISC_PROBE), so a cached PMTU never refuses it.
3. The MTU a router names (fragmentation needed / packet too big) is tried next;
   when it passes it is the answer ("ptb"). Otherwise the gap between the largest
   size that passed and the smallest that failed is cut into ``SECTIONS`` parts
   per round, down to the byte ("search").
4. A failure no router explained, below the local MTU, is a black hole. Probes of
   the smallest failing size ("big") and of the path MTU ("small") go out with TTL
   1..max_ttl: routers check the TTL before the MTU, so big probes still draw time
   exceeded from every router they reach. The last hop that answers big probes is
   the router that drops them; hops that answer neither size (silent, or their
   ICMP errors rate-limited) are "no answer from this hop", asked again, never
   read as a place where big probes vanish.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import PermissionDenied, SocketError, TargetError

# IP + ICMP header bytes of a probe
IP_HDR: dict[int, int] = {socket.AF_INET: 28, socket.AF_INET6: 48}
MIN_MTU: dict[int, int] = {socket.AF_INET: 68, socket.AF_INET6: 1280}  # RFC 791 / RFC 8200
# ping's default probe: "does it answer at all?"
SMALL: dict[int, int] = {socket.AF_INET: 84, socket.AF_INET6: 104}
LADDER = (1280, 1400, 1420, 1450, 1480, 1492, 1500, 4352, 8000, 9000, 9216, 16384, 65535)
MAX_PAYLOAD = 65000  # IcmpSocket's largest payload
MAX_SOCKETS = 64  # sockets (and sweep threads) of one round at once
SECTIONS = 8  # each search round cuts every target's open gap into this many parts
MAX_ROUNDS = 24
DEFAULT_MAX_TTL = 30
ICMP_TIME_EXCEEDED: dict[int, int] = {socket.AF_INET: 11, socket.AF_INET6: 3}
# (type, code) of the error that names an MTU
ICMP_FRAG: dict[int, tuple[int, int]] = {socket.AF_INET: (3, 4), socket.AF_INET6: (2, 0)}


@dataclass(slots=True)
class PathMtu:
    """One target's answer. ``pmtu``: largest packet (IP header included) that passed,
    None when the target answered nothing. ``method``: "ptb" (a router's
    fragmentation-needed / packet-too-big named it and a probe of that size passed),
    "search" (found by probing alone), "local" (the path carries the local MTU).
    ``black_hole``: bigger probes vanished with no router saying why; ``hole_hop`` /
    ``hole_address``: the last hop that passes them (0: the source itself), and
    ``hole_next_hop`` the first hop past it seen to answer small probes but not big
    ones: the hole is between the two, exactly located (``hole_exact``) when they
    are neighbours; hops between that answered neither size (silent, or their ICMP
    errors rate-limited) are in ``silent_hops``."""

    target: str
    address: str
    family: int = 4
    local_mtu: int | None = None
    interface: str | None = None
    pmtu: int | None = None
    method: str | None = None
    reported_mtu: int | None = None  # the last MTU a router named
    reported_by: str | None = None
    black_hole: bool = False
    hole_hop: int | None = None
    hole_address: str | None = None
    hole_next_hop: int | None = None
    hole_next_address: str | None = None
    hole_exact: bool = False  # hole_next_hop == hole_hop + 1: no silent hop between
    hops: int | None = None  # the target's distance, when the location step saw it
    silent_hops: list[int] = field(default_factory=list)  # answered neither size
    probes: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "address": self.address}
        if self.error is not None:
            d["error"] = self.error
            if self.local_mtu is not None:
                d["local_mtu"] = self.local_mtu
            return d
        d.update(
            family=self.family,
            pmtu=self.pmtu,
            method=self.method,
            local_mtu=self.local_mtu,
            interface=self.interface,
            black_hole=self.black_hole,
            probes=self.probes,
        )
        if self.reported_mtu is not None:
            d["reported_mtu"] = self.reported_mtu
            d["reported_by"] = self.reported_by
        if self.black_hole:
            d.update(
                hole_hop=self.hole_hop,
                hole_address=self.hole_address,
                hole_next_hop=self.hole_next_hop,
                hole_next_address=self.hole_next_address,
                hole_exact=self.hole_exact,
                hops=self.hops,
                silent_hops=self.silent_hops,
            )
        return d


@dataclass(slots=True)
class MtuRun:
    results: list[PathMtu]
    totals: dict[str, int]
    elapsed_s: float
    mode: str


# ------------------------------------------------------------------ local MTU
_RTM_GETROUTE, _RTM_NEWROUTE, _NLMSG_ERROR = 26, 24, 2
_RTA_DST, _RTA_OIF = 1, 4
_SIOCGIFMTU = 0x8921


def local_mtus(addresses: Sequence[str], family: int) -> dict[str, tuple[int, str] | str]:
    """Per address: (MTU, device) of the route the kernel would send by, or why there
    is none (no route). In the calling thread's network namespace."""
    out: dict[str, tuple[int, str] | str] = {}
    dev_mtu: dict[int, tuple[int, str]] = {}
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    ctl = socket.socket(family, socket.SOCK_DGRAM)
    try:
        nl.bind((0, 0))
        for seq, a in enumerate(dict.fromkeys(addresses), 1):
            raw = socket.inet_pton(family, a)
            rta = struct.pack("=HH", 4 + len(raw), _RTA_DST) + raw
            body = struct.pack("=BBBBBBBBI", family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + rta
            nl.send(struct.pack("=IHHII", 16 + len(body), _RTM_GETROUTE, 1, seq, 0) + body)
            oif = _route_reply(nl, seq)
            if isinstance(oif, str):
                out[a] = oif
                continue
            if oif not in dev_mtu:
                name = socket.if_indextoname(oif)
                ifr = fcntl.ioctl(ctl, _SIOCGIFMTU, struct.pack("16si12x", name.encode(), 0))
                dev_mtu[oif] = (struct.unpack_from("i", ifr, 16)[0], name)
            out[a] = dev_mtu[oif]
    finally:
        nl.close()
        ctl.close()
    return out


def _route_reply(nl: socket.socket, seq: int) -> int | str:
    while True:
        data = nl.recv(65536)
        off = 0
        while off + 16 <= len(data):
            ln, typ, _fl, s, _pid = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                return "bad netlink reply"
            if s == seq:
                if typ == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    return f"no route: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
                if typ == _RTM_NEWROUTE:
                    a = off + 16 + 12
                    while a + 4 <= off + ln:
                        alen, atyp = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if atyp == _RTA_OIF:
                            return int(struct.unpack_from("=I", data, a + 4)[0])
                        a += (alen + 3) & ~3
                    return "no route: the route names no device"
            off += (ln + 3) & ~3


# ------------------------------------------------------------------ probing rounds
@dataclass(slots=True)
class _Seen:
    """What one (size, TTL) socket saw of one address."""

    sent: int = 0
    replies: int = 0
    reply_ttl: int | None = None  # the TTL / hop limit the last reply arrived with
    texc_router: str | None = None
    mtu: int = 0  # named by a fragmentation-needed / packet-too-big
    mtu_router: str | None = None
    unreach: tuple[int, int] | None = None
    send_errors: int = 0


class _Prober:
    """Runs rounds of (size, ttl) -> addresses, one socket each, sweeps in parallel."""

    def __init__(
        self, family: int, mode: str, tries: int, timeout_s: float, rate_pps: float
    ) -> None:
        self.family = family
        self.mode = mode
        self.tries = tries
        self.timeout_s = timeout_s
        self.rate_pps = rate_pps
        self.kinds: list[str] = []
        self.totals: dict[str, int] = {}

    def _open(self, size: int, ttl: int | None) -> Any:
        from ._icmp import IcmpSocket

        kinds = ("raw", "dgram") if self.mode == "auto" else (self.mode,)
        last: OSError | None = None
        for kind in kinds:
            try:
                s = IcmpSocket(
                    self.family,
                    kind=kind,
                    payload_size=size - IP_HDR[self.family],
                    ttl=ttl,
                    dont_fragment="probe",
                )
            except OSError as e:  # EPERM without CAP_NET_RAW, EACCES from ping_group_range
                last = e
                continue
            self.kinds.append(kind)
            return s
        raise PermissionDenied(
            f"cannot open an ICMP socket ({', '.join(kinds)}): {last}; run as root, give "
            "python CAP_NET_RAW (setcap cap_net_raw+ep), or let your group use "
            "unprivileged ICMP (sysctl net.ipv4.ping_group_range)"
        )

    def round(
        self, jobs: dict[tuple[int, int | None], list[str]], tries: int | None = None
    ) -> dict[tuple[int, int | None], dict[str, _Seen]]:
        """One socket per (size, ttl), every address of it as a slot, ``tries`` probes
        each; the sweeps at once, ``MAX_SOCKETS`` at a time (many targets with
        different gaps ask many sizes). Returns what each socket saw of each address."""
        n_tries = self.tries if tries is None else tries
        items = [(k, list(dict.fromkeys(v))) for k, v in jobs.items() if v]
        out: dict[tuple[int, int | None], dict[str, _Seen]] = {}
        for i in range(0, len(items), MAX_SOCKETS):
            out.update(self._round(dict(items[i : i + MAX_SOCKETS]), n_tries))
        return out

    def _round(
        self, jobs: dict[tuple[int, int | None], list[str]], n_tries: int
    ) -> dict[tuple[int, int | None], dict[str, _Seen]]:
        socks: list[tuple[tuple[int, int | None], Any, list[str]]] = []
        errors: list[BaseException] = []
        total = sum(len(v) for v in jobs.values()) * n_tries
        try:
            for key, addrs in jobs.items():
                s = self._open(*key)
                s.set_targets(addrs)
                socks.append((key, s, addrs))

            def sweep(s: Any, n: int) -> None:
                share = self.rate_pps * n * n_tries / total if self.rate_pps else 0.0
                try:
                    s.sweep(n_tries, 0.05 if n_tries > 1 else 0.0, self.timeout_s, share)
                except BaseException as e:  # re-raised in the caller's thread
                    errors.append(e)

            threads = [
                threading.Thread(target=sweep, args=(s, len(a)), daemon=True) for _, s, a in socks
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            out: dict[tuple[int, int | None], dict[str, _Seen]] = {}
            frag_type, frag_code = ICMP_FRAG[self.family]
            texc = ICMP_TIME_EXCEEDED[self.family]
            for key, s, addrs in socks:
                per: dict[str, _Seen] = {}
                for i, a in enumerate(addrs):
                    st = s.slot_stats(i)
                    seen = _Seen(sent=st.sent, replies=st.received, send_errors=st.send_errors)
                    seen.reply_ttl = st.last_ttl if st.received else None
                    etype, ecode, router = st.last_err_type, st.last_err_code, st.last_err_router
                    if st.time_exceeded:
                        seen.texc_router = router if etype == texc else None
                    if st.unreachable:
                        v6 = self.family == socket.AF_INET6
                        if etype == frag_type and (v6 or ecode == frag_code):
                            seen.mtu = s.slot_mtu(i)
                            seen.mtu_router = router
                        else:
                            seen.unreach = (etype, ecode)
                    per[a] = seen
                out[key] = per
                for k, v in s.totals().items():
                    if isinstance(v, int):
                        self.totals[k] = self.totals.get(k, 0) + v
            return out
        finally:
            for _, s, _ in socks:
                s.close()


# ------------------------------------------------------------------ the search
@dataclass(slots=True)
class _State:
    res: PathMtu
    local: int
    lo: int = 0  # largest size that passed
    hi: int = 0  # smallest size that failed (local + 1: none yet)
    tried: set[int] = field(default_factory=set)
    ptb: dict[int, int] = field(default_factory=dict)  # failed size -> MTU named (0: none)
    reply_ttl: int | None = None  # of the target's echo replies: its distance, roughly


def _ladder(fam: int, local: int) -> list[int]:
    rungs = {SMALL[fam], MIN_MTU[fam] if fam == socket.AF_INET6 else 576, local}
    rungs.update(r for r in LADDER if r <= local)
    return sorted(r for r in rungs if SMALL[fam] <= r <= local)


def _points(lo: int, hi: int, n: int) -> list[int]:
    """Up to n - 1 sizes cutting (lo, hi) into n near-equal parts."""
    gap = hi - lo
    if gap <= 1:
        return []
    return sorted({lo + (gap * k) // n for k in range(1, n)} - {lo, hi} or {lo + gap // 2})


def _search(prober: _Prober, states: list[_State]) -> None:
    fam = prober.family
    jobs: dict[tuple[int, int | None], list[str]] = {}
    for st in states:
        for size in _ladder(fam, st.local):
            jobs.setdefault((size, None), []).append(st.res.address)
            st.tried.add(size)
    for _ in range(MAX_ROUNDS):
        if not jobs:
            return
        seen = prober.round(jobs)
        jobs = {}
        by_addr: dict[str, list[tuple[int, _Seen]]] = {}
        for (size, _ttl), per in seen.items():
            for a, s in per.items():
                by_addr.setdefault(a, []).append((size, s))
        for st in states:
            got = by_addr.get(st.res.address)
            if not got:
                continue
            for size, s in sorted(got, key=lambda x: x[0]):
                st.res.probes += s.sent
                if s.replies:
                    st.lo = max(st.lo, size)
                    st.reply_ttl = s.reply_ttl or st.reply_ttl
                else:
                    st.ptb[size] = s.mtu
                    if s.mtu:
                        st.res.reported_mtu, st.res.reported_by = s.mtu, s.mtu_router
            if st.lo == 0:
                st.res.error = "no answer to any probe, however small"
                continue
            # a failure at or below a size that passed was loss, not the path; a
            # router's word that its next hop carries m bytes makes m + 1 fail too
            fails = [z for z in st.ptb if z > st.lo]
            named = [st.ptb[z] for z in fails if st.lo <= st.ptb[z] < z]
            st.hi = min([*fails, *(m + 1 for m in named)], default=st.local + 1)
            # a named MTU not tried yet: try it first
            nxt = sorted({m for m in named if m not in st.tried and st.lo < m < st.hi})
            if not nxt:
                nxt = [z for z in _points(st.lo, st.hi, SECTIONS) if z not in st.tried]
            for z in nxt:
                st.tried.add(z)
                jobs.setdefault((z, None), []).append(st.res.address)
    for st in states:  # MAX_ROUNDS ran out (cannot with SECTIONS >= 2 and 64 KiB)
        if st.hi - st.lo > 1 and st.res.error is None:
            st.res.error = f"search unfinished: passes {st.lo}, fails {st.hi}"


def _conclude(st: _State) -> None:
    r = st.res
    if st.lo == 0:
        r.error = r.error or "no answer to any probe, however small"
        return
    r.pmtu = st.lo
    if st.lo >= st.local:
        # the path carries all the local interface sends (or all --max-mtu allowed)
        r.method = "local" if st.local == r.local_mtu else "max"
    elif any(m == st.lo for m in st.ptb.values()):
        r.method = "ptb"
    else:
        r.method = "search"
        # the smallest failing size vanished (or drew an error that named no MTU)
        r.black_hole = st.ptb.get(st.hi, 0) == 0


def _locate(
    prober: _Prober, states: list[_State], max_ttl: int, retries: int, pause_s: float
) -> None:
    """TTL-limited big (smallest failing size) and small (path MTU) probes for every
    black-hole target at once: the last hop answering big probes drops them.

    Evidence is shared: a big probe that drew time exceeded from router R at hop k
    proves the links up to R carry big packets, for every target whose hop k is R.
    So the rounds after the first ask again only what is still unknown (a hop whose
    answer was rate-limited), one probe per router where one answer settles it:
    routers limit their ICMP errors per source (Linux: about 6 at once, then 1/s),
    and a limited answer must read as "no answer from this hop", never move the hole.
    """
    holes = [st for st in states if st.res.black_hole]
    if not holes:
        return
    by_address = {st.res.address: st for st in holes}
    sizes = {a: (st.hi, st.lo) for a, st in by_address.items()}  # (big, small)
    # per address and hop: [big answer, small answer], each ("hop" | "target", router)
    ans: dict[str, dict[int, list[tuple[str, str] | None]]] = {
        a: {k: [None, None] for k in range(1, max_ttl + 1)} for a in by_address
    }
    confirmed: set[tuple[int, str]] = set()  # a lone big probe to it drew nothing
    asked: set[tuple[str, int, int]] = set()

    def ask(want: set[tuple[str, int, int]]) -> None:
        jobs: dict[tuple[int, int | None], list[str]] = {}
        asked.update(want)
        for a, k, b in want:
            jobs.setdefault((sizes[a][b], k), []).append(a)
        for (size, ttl), per in prober.round(jobs, tries=1).items():
            assert ttl is not None
            for a, s in per.items():
                for b in (0, 1):
                    if sizes[a][b] != size or (a, ttl, b) not in want:
                        continue
                    by_address[a].res.probes += s.sent
                    if s.replies:
                        ans[a][ttl][b] = ("target", a)
                    elif s.texc_router is not None:
                        ans[a][ttl][b] = ("hop", s.texc_router)

    # the first round: every hop up to a little past the distance the replies' TTL
    # suggests (initial 64 / 128 / 255 less the hops back); a target not reached by
    # then has its further hops asked in the next rounds, as silent ones are
    reach = {a: min(max_ttl, _guess_distance(st.reply_ttl) + 2) for a, st in by_address.items()}
    ask({(a, k, b) for a in by_address for k in range(1, reach[a] + 1) for b in (0, 1)})
    for _ in range(retries):
        lone, unknown = _still_unknown(ans, max_ttl, confirmed)
        if not lone and not unknown:
            break
        time.sleep(pause_s)  # let rate-limiting routers' token buckets refill
        if lone:
            # one big probe per router and nothing else to it: a token is there, so
            # no answer means the big probe never reached it
            ask({(a, k, 0) for (k, _r), a in lone.items()})
            for (k, router), a in lone.items():
                if ans[a][k][0] is None:
                    confirmed.add((k, router))
        if unknown:
            ask(unknown)
    reached = _big_reached(ans)
    for a, st in by_address.items():
        r = st.res
        per_ttl = ans[a]
        r.hops = _distance(per_ttl)
        top = r.hops if r.hops is not None else max_ttl
        hole, nxt = _hole(per_ttl, top, reached)
        r.hole_hop = hole
        if hole:
            got = per_ttl[hole][0] or per_ttl[hole][1]
            r.hole_address = got[1] if got else None
        # silent: asked with both sizes, answered neither (hops never asked are not)
        r.silent_hops = [
            k
            for k in range(1, top)
            if per_ttl[k] == [None, None] and (a, k, 0) in asked and (a, k, 1) in asked
        ]
        if nxt is not None:
            r.hole_next_hop = nxt
            got = per_ttl[nxt][1]
            r.hole_next_address = got[1] if got else None
            # exact: nothing silent between, and the hop past it seen not to get big
            # probes when it had an answer to give (the target itself: the search)
            r.hole_exact = nxt == hole + 1 and (
                nxt == r.hops or (got is not None and (nxt, got[1]) in confirmed)
            )


def _guess_distance(reply_ttl: int | None) -> int:
    if not reply_ttl:
        return 64
    initial = next(i for i in (32, 64, 128, 255) if i >= reply_ttl)
    return initial - reply_ttl + 1


def _distance(per_ttl: dict[int, list[tuple[str, str] | None]]) -> int | None:
    """The smallest TTL at which the target itself answered."""
    return min(
        (k for k, v in per_ttl.items() if any(x and x[0] == "target" for x in v)), default=None
    )


def _big_reached(ans: dict[str, dict[int, list[tuple[str, str] | None]]]) -> set[tuple[int, str]]:
    """(hop, router) pairs some big probe reached."""
    return {
        (k, v[0][1]) for per in ans.values() for k, v in per.items() if v[0] and v[0][0] == "hop"
    }


def _hole(
    per_ttl: dict[int, list[tuple[str, str] | None]], top: int, reached: set[tuple[int, str]]
) -> tuple[int, int | None]:
    """(last hop big probes reach, 0: none; first hop past it that answered small
    probes, None: none did)."""
    hole = 0
    for k in range(1, top + 1):
        big, small = per_ttl[k]
        router = (big or small or ("", ""))[1]
        if big is not None or (small is not None and (k, router) in reached):
            hole = k  # monotone: reaching hop k means passing every hop before it
    nxt = next((k for k in range(hole + 1, top + 1) if per_ttl[k][1] is not None), None)
    return hole, nxt


def _still_unknown(
    ans: dict[str, dict[int, list[tuple[str, str] | None]]],
    max_ttl: int,
    confirmed: set[tuple[int, str]],
) -> tuple[dict[tuple[int, str], str], set[tuple[str, int, int]]]:
    """What the next round asks, for each target between the last hop big probes are
    known to reach and the first past it that answered small probes: (1) per router
    seen there but neither reached by a big probe nor confirmed out of its reach,
    one target to send it a lone big probe for; (2) big and small probes at hops
    that answered neither (a silent stretch may be rate limiting)."""
    reached = _big_reached(ans)
    lone: dict[tuple[int, str], str] = {}
    unknown: set[tuple[str, int, int]] = set()
    for a, per_ttl in ans.items():
        dist = _distance(per_ttl)
        top = dist or max_ttl
        hole, nxt = _hole(per_ttl, top, reached)
        end = nxt if nxt is not None else top - 1
        for k in range(hole + 1, end + 1):
            big, small = per_ttl[k]
            if big is not None or k == dist:
                continue
            if small is not None:
                key = (k, small[1])
                if key not in reached and key not in confirmed:
                    lone.setdefault(key, a)
            else:
                unknown.add((a, k, 0))
                unknown.add((a, k, 1))
    return lone, unknown


# ------------------------------------------------------------------ entry point
def path_mtu(
    targets: Sequence[str],
    *,
    family: int | None = None,
    mode: str = "auto",
    tries: int = 2,
    timeout_s: float = 1.0,
    rate_pps: float = 1000.0,
    max_ttl: int = DEFAULT_MAX_TTL,
    locate: bool = True,
    retries: int = 3,
    retry_pause_s: float = 1.0,
    max_mtu: int | None = None,
) -> MtuRun:
    """Path MTU of every target (addresses or names) at once. ``tries``: probes per
    size and target (any answer passes it); ``timeout_s``: wait after each round's
    last probe; ``rate_pps``: total probes per second (0: flat out); ``locate``:
    find where a black hole is (TTL-limited probes, ``max_ttl`` hops, ``retries``
    more rounds ``retry_pause_s`` apart for hops that did not answer: ICMP rate
    limits); ``max_mtu``: probe no bigger."""
    from .targets import resolve

    if not 1 <= tries <= 16:
        raise TargetError(f"tries {tries} must be 1..16 probes per size")
    if not 1 <= max_ttl <= 64:
        raise TargetError(f"max_ttl {max_ttl} must be 1..64")
    if not 0 <= retries <= 10:
        raise TargetError(f"retries {retries} must be 0..10")
    if not 0 <= retry_pause_s <= 60:
        raise TargetError(f"retry pause {retry_pause_s} must be 0..60 s")
    if not timeout_s > 0:
        raise TargetError(f"timeout {timeout_s} must be more than 0 s")
    if rate_pps < 0:
        raise TargetError(f"rate {rate_pps} must be >= 0 probes/s")
    if mode not in ("auto", "raw", "dgram"):
        raise TargetError(f"mode {mode!r}: path MTU uses raw or dgram ICMP sockets (or auto)")
    if max_mtu is not None and max_mtu < 68:
        raise TargetError(f"max_mtu {max_mtu} must be at least 68 bytes")
    t0 = time.monotonic()
    results: list[PathMtu] = []
    by_fam: dict[int, dict[str, list[PathMtu]]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    names = [t for t in targets if _numeric(t) is None]
    resolved = resolve(names, family) if names else {}
    for t in targets:
        num = _numeric(t)
        r = resolved.get(t) if num is None else num
        if r is None or isinstance(r, str):
            results.append(PathMtu(t, t, error=r or f"cannot resolve {t!r}"))
            continue
        addr, fam = r
        res = PathMtu(t, addr, family=4 if fam == socket.AF_INET else 6)
        results.append(res)
        if family is not None and fam != family:
            res.error = f"{t!r} is not an IPv{6 if family == socket.AF_INET6 else 4} address"
            continue
        by_fam[fam].setdefault(addr, []).append(res)
    busy = {f: p for f, p in by_fam.items() if p}
    n_all = sum(len(p) for p in busy.values())
    probers = {
        f: _Prober(f, mode, tries, timeout_s, rate_pps * len(p) / n_all if rate_pps else 0.0)
        for f, p in busy.items()
    }
    errors: list[BaseException] = []

    def one(fam: int) -> None:
        try:
            _family(probers[fam], busy[fam], locate, max_ttl, retries, retry_pause_s, max_mtu)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    # each family on a thread of its own (made here, so in the caller's namespace)
    threads = [threading.Thread(target=one, args=(f,), daemon=True) for f in busy]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    totals: dict[str, int] = {}
    kinds: list[str] = []
    for prober in probers.values():
        for k, v in prober.totals.items():
            totals[k] = totals.get(k, 0) + v
        kinds.extend(prober.kinds)
    return MtuRun(results, totals, time.monotonic() - t0, "+".join(dict.fromkeys(kinds)))


def _family(
    prober: _Prober,
    per_addr: dict[str, list[PathMtu]],
    locate: bool,
    max_ttl: int,
    retries: int,
    retry_pause_s: float,
    max_mtu: int | None,
) -> None:
    fam = prober.family
    try:
        locals_ = local_mtus(list(per_addr), fam)
    except OSError as e:
        raise SocketError(f"cannot read the local routes (netlink): {e}") from e
    states: list[_State] = []
    for addr, same in per_addr.items():
        lm = locals_[addr]
        head = same[0]
        if isinstance(lm, str):
            head.error = lm
            continue
        mtu, dev = lm
        head.local_mtu, head.interface = mtu, dev
        cap = min(mtu, MAX_PAYLOAD + IP_HDR[fam], max_mtu or mtu)
        if cap < SMALL[fam]:
            head.error = f"MTU {cap} is below the smallest probe ({SMALL[fam]} bytes)"
            continue
        states.append(_State(head, cap))
    if states:
        _search(prober, states)
        for st in states:
            if st.res.error is None:
                _conclude(st)
        if locate:
            _locate(prober, states, max_ttl, retries, retry_pause_s)
    for same in per_addr.values():  # targets naming one address share its answer
        for other in same[1:]:
            _copy(same[0], other)


def _copy(src: PathMtu, dst: PathMtu) -> None:
    for f in fields(PathMtu):
        if f.name != "target":
            setattr(dst, f.name, getattr(src, f.name))


def _numeric(t: str) -> tuple[str, int] | None:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, t)), fam
        except OSError:
            continue
    return None
