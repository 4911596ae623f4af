"""fastping's public API: ``sweep`` and ``ping``, and their async twins.

A sweep opens one IcmpSocket per address family (and per worker), hands it the
targets as compact slots, and runs the whole send/receive loop in C with the GIL
released. Results are read back lazily from the core's arrays.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from errno import EPERM
from functools import partial
from typing import Any, NamedTuple

from .errors import PermissionDenied, TargetError
from .results import (
    EV_CLOSED,
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_TIME_EXCEEDED,
    EV_UNREACHABLE,
    OUTCOME_BY_KIND,
    HostResult,
    Outcome,
    ProbeResult,
    SlotStats,
    SweepResult,
)
from .targets import resolve

# Polite defaults: a user pointing fastping at the internet without thinking
# sends 1,000 probes/s at most. Benchmarks and loopback sweeps pass rate_pps=0.
DEFAULT_RATE_PPS = 1000.0
log = logging.getLogger("fastping.api")


def target_set(targets: Iterable[str] | str | Any) -> Any:
    """Parse targets (strings, or an already built ``_pipeline.TargetSet``) into a
    TargetSet; bad targets raise TargetError naming each of them."""
    from ._pipeline import TargetSet

    if isinstance(targets, TargetSet):
        ts = targets
    else:
        ts = TargetSet()
        ts.add_arguments([targets] if isinstance(targets, str) else targets)
    check_target_set(ts)
    return ts


def check_target_set(ts: Any, shown: int = 20) -> None:
    """Raise TargetError listing the bad targets (the first ``shown``; all are counted)."""
    if ts.fatal:
        raise TargetError(ts.fatal)
    if not ts.n_errors:
        return
    lines = [f"{src}:{no}: {msg}" if src is not None else msg for src, no, msg in ts.errors]
    more = ts.n_errors - min(len(lines), shown)
    text = "\n".join(lines[:shown])
    if more > 0:
        text += f"\n... and {more} more bad target{'s' if more > 1 else ''}"
    raise TargetError(text)


class _Plan:
    """Where each host of a sweep lives: runs of one family's slots in host order,
    names (resolved to a slot or to an error), labels where the target is not its
    address. Arrays, not an object per host."""

    def __init__(self, ts: Any, family: int | None) -> None:
        from ._pipeline import RUN_NAME, RUN_V4

        v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
        if family == v4 and ts.n_v6:
            raise TargetError(f"target {ts.first_v6!r} is not IPv4")
        if family == v6 and ts.n_v4:
            raise TargetError(f"target {ts.first_v4!r} is not IPv6")
        self.ts = ts
        self.labels: dict[int, str] = dict(ts.labels)
        names: list[str] = ts.names
        resolved = resolve(names, family) if names else {}
        self.n_slots = {v4: int(ts.n_v4), v6: int(ts.n_v6)}
        extra: dict[int, list[str]] = {v4: [], v6: []}
        # per name: (family, global slot) or the error
        self.names: list[tuple[int, int] | str] = []
        self.name_labels = names
        for n in names:
            r = resolved[n]
            if isinstance(r, str):
                self.names.append(r)
            else:
                addr, fam = r
                if family is not None and fam != family:
                    raise TargetError(f"target {n!r} is not {'IPv4' if family == v4 else 'IPv6'}")
                self.names.append((fam, self.n_slots[fam]))
                self.n_slots[fam] += 1
                extra[fam].append(addr)
        self.extra = extra
        # runs: host start, kind (family, or -1 for names), first slot / name index, count
        self.run_host = array("q")
        self.run_fam = array("q")
        self.run_pos = array("q")
        self.run_len = array("q")
        pos = {v4: 0, v6: 0, -1: 0}
        h = 0
        for kind, count in ts.runs():
            fam = -1 if kind == RUN_NAME else (v4 if kind == RUN_V4 else v6)
            self.run_host.append(h)
            self.run_fam.append(fam)
            self.run_pos.append(pos[fam])
            self.run_len.append(count)
            pos[fam] += count
            h += count
        self.n_hosts = h
        self.unresolved = sum(1 for r in self.names if isinstance(r, str))

    def packed(self, fam: int) -> bytes:
        """The family's slot addresses (parsed ones, then resolved names)."""
        return bytes(self.ts.packed(fam)) + self._resolved(fam)

    def take_packed(self, fam: int) -> Any:
        """packed(), with the parsed addresses moved out of the target set rather than
        copied (a million IPv4 targets: 4 MB less at the sweep's peak); the set holds
        none of that family afterwards."""
        out = self.ts.take_packed(fam)
        return bytes(out) + self._resolved(fam) if self.extra[fam] else out

    def _resolved(self, fam: int) -> bytes:
        # the addresses of the names that resolved to this family, packed
        return b"".join(socket.inet_pton(fam, a) for a in self.extra[fam])


# events that carry an RTT (reply, duplicate, late, a closed port's RST) and those
# from an ICMP error (whose TTL is the error's)
_RTT_KINDS = frozenset((EV_REPLY, EV_DUPLICATE, EV_LATE, EV_CLOSED))
_ICMP_ERROR_KINDS = frozenset((EV_UNREACHABLE, EV_TIME_EXCEEDED))


def _host_from_stats(target: str, address: str, st: SlotStats) -> HostResult:
    recv = st.received
    h = HostResult(
        target=target,
        address=address,
        sent=st.sent + st.send_errors,
        received=recv,
        duplicates=st.duplicates,
        late=st.late,
        timeouts=st.timeouts,
        unreachable=st.unreachable,
        time_exceeded=st.time_exceeded,
        send_errors=st.send_errors,
        user_timed=st.user_timed,
    )
    if recv:
        avg = st.sum_ns / recv
        h.min_ms = st.min_ns / 1e6
        h.max_ms = st.max_ns / 1e6
        h.avg_ms = avg / 1e6
        h.stddev_ms = math.sqrt(max(st.sumsq_ns2 / recv - avg * avg, 0.0)) / 1e6
        h.jitter_ms = (st.jitter_sum_ns / st.jitter_n / 1e6) if st.jitter_n else None
        h.ttl = st.last_ttl or None
    if st.unreachable or st.time_exceeded:
        kind = "time exceeded" if st.time_exceeded else "unreachable"
        h.error = (
            f"{kind} (type {st.last_err_type} code {st.last_err_code}) from {st.last_err_router}"
        )
    elif st.send_errors and not recv:
        h.error = "send failed (see send_errors)"
    return h


def sweep(
    targets: Iterable[str] | str,
    *,
    count: int = 1,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    rate_pps: float = DEFAULT_RATE_PPS,
    payload_size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    dont_fragment: bool = False,
    mode: str = "auto",
    workers: int = 1,
    family: int | None = None,
    collect_rtts: bool = False,
    batch_size: int = 64,
    on_progress: Callable[[int, int, int], None] | None = None,
    tcp_port: int = 0,
    udp_port: int = 0,
) -> SweepResult:
    """Probe every target ``count`` times and return one HostResult per target.

    ``tcp_port``: TCP probes to that port instead of ICMP echo; a target is then
    alive when its port answers open (a SYN-ACK), and a RST is counted apart as
    closed. ``mode`` "raw": stateless SYNs on a raw socket
    (``fastping._icmp.TcpSocket``: root or CAP_NET_RAW, kernel timestamps);
    "connect": a non-blocking connect() per pair, no privilege, RTT from user
    space (``fastping.tcpconnect``); "auto" (default): raw when the process may
    open a raw socket, else connect. ``result.timing`` says which ("raw" or
    "connect").
    ``udp_port``: UDP probes to that port (``fastping._icmp.UdpSocket``, no
    privilege needed); alive when an application answers, the host's ICMP port
    unreachable counted apart as closed, silence open|filtered (several ports in
    one sweep: ``udp_sweep``).

    Targets: addresses, host names (resolved concurrently; a name that does not
    resolve is a result with ``error`` set), CIDR blocks, ranges. ``rate_pps`` is
    the total send rate (0 = as fast as the machine goes); ``workers`` splits
    the targets over that many sockets and threads (GIL released, so each uses a
    core) and shares the rate budget between them; 0 picks one per usable core
    when the sweep is big and fast enough to need it.
    """
    _check_args(count, interval_s, timeout_s, rate_pps, workers)
    sub_opts: dict[str, Any] = dict(
        count=count,
        interval_s=interval_s,
        timeout_s=timeout_s,
        payload_size=payload_size,
        ttl=ttl,
        tos=tos,
        dont_fragment=dont_fragment,
        family=family,
        collect_rtts=collect_rtts,
    )
    if tcp_port and udp_port:
        raise ValueError("tcp_port and udp_port: a sweep probes one protocol")
    if tcp_port:
        return _tcp_sweep(
            targets,
            tcp_port=tcp_port,
            mode=mode,
            sub_opts=sub_opts,
            rate_pps=rate_pps,
            workers=workers,
            batch_size=batch_size,
            on_progress=on_progress,
        )
    if udp_port:
        _check_udp(udp_port, mode)
    elif mode == "connect":
        raise ValueError("mode 'connect' is for TCP probes (tcp_port): ICMP uses raw, dgram, "
                         "subprocess or auto")  # fmt: skip
    elif mode == "subprocess":
        return _subprocess_sweep(targets, sub_opts)
    from .probe import UseSubprocess

    try:
        return _socket_sweep(
            targets,
            count=count,
            interval_s=interval_s,
            timeout_s=timeout_s,
            rate_pps=rate_pps,
            payload_size=payload_size,
            ttl=ttl,
            tos=tos,
            dont_fragment=dont_fragment,
            mode=mode,
            workers=workers,
            family=family,
            collect_rtts=collect_rtts,
            batch_size=batch_size,
            on_progress=on_progress,
            tcp_port=tcp_port,
            udp_port=udp_port,
        )
    except UseSubprocess:
        # auto mode and no ICMP socket allowed: the system ping (already logged why)
        return _subprocess_sweep(targets, sub_opts)


def _socket_sweep(targets: Iterable[str] | str, **kw: Any) -> SweepResult:
    return _socket_sweeps(targets, **kw)[0]


def udp_sweep(
    targets: Iterable[str] | str,
    ports: Iterable[int],
    *,
    count: int = 1,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    rate_pps: float = DEFAULT_RATE_PPS,
    ttl: int | None = None,
    tos: int | None = None,
    workers: int = 1,
    family: int | None = None,
    collect_rtts: bool = False,
    batch_size: int = 64,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[SweepResult]:
    """UDP probes to every one of ``ports`` on every target, all in one sweep (the
    pairs go out together and share one timeout): one SweepResult per port, in the
    order given. The first carries the sweep's totals and duration, the others none
    (summing them counts the sweep once). States as ``sweep(udp_port=)``."""
    plist = list(ports)
    if not plist:
        raise ValueError("ports: name at least one UDP port")
    for p in plist:
        _check_udp(p, "auto")
    _check_args(count, interval_s, timeout_s, rate_pps, workers)
    return _socket_sweeps(
        targets,
        count=count,
        interval_s=interval_s,
        timeout_s=timeout_s,
        rate_pps=rate_pps,
        payload_size=56,
        ttl=ttl,
        tos=tos,
        dont_fragment=False,
        mode="auto",
        workers=workers,
        family=family,
        collect_rtts=collect_rtts,
        batch_size=batch_size,
        on_progress=on_progress,
        udp_port=plist[0],
        ports=plist,
    )


def _socket_sweeps(
    targets: Iterable[str] | str,
    *,
    count: int,
    interval_s: float,
    timeout_s: float,
    rate_pps: float,
    payload_size: int,
    ttl: int | None,
    tos: int | None,
    dont_fragment: bool,
    mode: str,
    workers: int,
    family: int | None,
    collect_rtts: bool,
    batch_size: int,
    on_progress: Callable[[int, int, int], None] | None = None,
    tcp_port: int = 0,
    udp_port: int = 0,
    ports: list[int] | None = None,
) -> list[SweepResult]:
    """The sweep, with every target on each of ``ports`` (default: the one port, or
    none for ICMP) in one go: one SweepResult per port (see udp_sweep)."""
    plan = _Plan(target_set(targets), family)
    window = _window(count, interval_s, timeout_s)
    opts = dict(
        payload_size=payload_size,
        ttl=ttl,
        tos=tos,
        dont_fragment=dont_fragment,
        window=window,
        batch_size=batch_size,
    )
    ports = ports or [tcp_port or udp_port]
    total_slots = sum(plan.n_slots.values()) * len(ports)
    if workers == 0:
        workers = auto_workers(total_slots, rate_pps)
    socks: dict[int, _Shards] = {}
    t0 = time.perf_counter()
    jobs: list[tuple[Any, int, float]] = []
    try:
        for fam, n in plan.n_slots.items():
            if n == 0:
                continue
            # each worker owns a contiguous share of this family's slots, on a socket
            # of its own (own identifier, BPF filter and buffers)
            k = max(1, min(workers, n))
            bounds = [n * i // k for i in range(k + 1)]
            shards = socks[fam] = _Shards(fam, bounds[:-1], n)
            # every socket of every family first: a mode that cannot open one falls
            # back with the target set whole (its addresses are moved out just below)
            shards.socks = [
                _open_socket(fam, mode, opts, ports[0], udp=udp_port > 0) for _ in range(k)
            ]
        for fam, shards in socks.items():
            alen = 4 if fam == socket.AF_INET else 16
            bounds = [*shards.starts, plan.n_slots[fam]]
            packed = memoryview(plan.take_packed(fam))
            for i, sock in enumerate(shards.socks):
                for port in ports:  # slot = port's index * the shard's length + host's
                    sock.append_packed(packed[bounds[i] * alen : bounds[i + 1] * alen], port)
                # the rate is a global budget, shared in proportion to the work
                share = rate_pps * (bounds[i + 1] - bounds[i]) / total_slots if rate_pps else 0.0
                jobs.append((sock, bounds[i], share * len(ports)))
            del packed
        plan.ts.release_packed()
        watcher = None
        if on_progress is not None:
            watcher = _ProgressWatcher([j[0] for j in jobs], total_slots * count, on_progress)
            watcher.start()
        try:
            events, interrupted = _run_jobs(jobs, count, interval_s, timeout_s, collect_rtts)
        finally:
            if watcher is not None:
                watcher.stop()
    except BaseException:
        for sh in socks.values():
            sh.close()
        raise
    duration = time.perf_counter() - t0
    rtts: list[dict[tuple[int, int], list[float]]] | None = None
    if collect_rtts:
        rtts = [{} for _ in ports]
        for fam, offset, evs in events:
            width = socks[fam].length_at(offset)
            for ev in evs:
                if ev[1] == EV_REPLY:
                    j, local = divmod(ev[0], width)
                    rtts[j].setdefault((fam, offset + local), []).append(ev[3] / 1e6)
    totals: dict[str, int] = {}
    send_window = sweep_window = 0
    for sh in socks.values():
        for sock in sh.socks:
            t = sock.totals()
            send_window = max(send_window, int(t["send_ns"]))
            sweep_window = max(sweep_window, int(t["total_ns"]))
            for key, v in t.items():
                totals[key] = totals.get(key, 0) + int(v)
        sh.close()
    # workers send side by side: the sweep's sending took as long as the slowest
    totals["send_window_ns"] = send_window
    totals["sweep_window_ns"] = sweep_window  # first send to last reply or timeout
    totals["send_errors"] = totals.get("send_errors", 0)
    totals["sent"] = totals.get("sent", 0) + totals["send_errors"]
    totals["unresolved"] = plan.unresolved
    totals["workers"] = workers
    totals["interrupted"] = int(interrupted)  # Ctrl-C ended a multi-round sweep early
    out = []
    for j in range(len(ports)):
        views = {f: sh.view(j) for f, sh in socks.items()}
        hosts = _Hosts(plan, views, rtts[j] if rtts is not None else None)
        tot = totals if j == 0 else {k: 0 for k in totals}
        dur = duration if j == 0 else 0.0
        out.append(SweepResult(plan.n_hosts, hosts.get, tot, dur, source=hosts))
    return out


def _check_udp(udp_port: int, mode: str) -> None:
    if not 1 <= udp_port <= 65535:
        raise ValueError(f"udp_port {udp_port} must be 1..65535")
    if mode not in ("auto", "dgram"):
        raise ValueError(f"UDP probes use a datagram socket: mode {mode!r} does not apply")


def _open_udp_socket(fam: int, opts: dict[str, Any]) -> Any:
    from ._icmp import UdpSocket

    return UdpSocket(
        fam,
        ttl=opts["ttl"],
        tos=opts["tos"],
        window=opts["window"],
        batch_size=opts["batch_size"],
    )


def _open_socket(
    fam: int, mode: str, opts: dict[str, Any], tcp_port: int, udp: bool = False
) -> Any:
    """One worker's socket: ICMP in the privilege mode asked for, TCP SYN, or with
    ``udp`` UDP (``tcp_port`` is then the UDP port)."""
    if udp:
        return _open_udp_socket(fam, opts)
    if not tcp_port:
        from .probe import open_icmp_socket

        return open_icmp_socket(fam, mode=mode, **opts)
    from ._icmp import TcpSocket

    return TcpSocket(
        fam,
        ttl=opts["ttl"],
        tos=opts["tos"],
        window=opts["window"],
        batch_size=opts["batch_size"],
    )


TCP_MODES = ("auto", "raw", "connect")


def tcp_timing(mode: str = "auto") -> str:
    """How TCP probes are timed in ``mode``: "raw" or "connect" (auto: raw when a
    raw TCP socket can be opened here, i.e. with CAP_NET_RAW)."""
    from .tcpconnect import can_raw_tcp

    if mode not in TCP_MODES:
        raise ValueError(
            f"TCP probes are timed by a raw socket or by connect(): mode {mode!r} does not "
            "apply (use raw, connect or auto)"
        )
    if mode != "auto":
        return mode
    if can_raw_tcp():
        return "raw"
    log.info(
        "fastping: no CAP_NET_RAW: TCP probes timed by connect() instead of raw SYNs",
        extra={"mode": "connect"},
    )
    return "connect"


def raw_tcp_denied(err: OSError) -> PermissionDenied:
    """The error for mode raw without the capability: what is missing, what to do."""
    from .privilege import diagnose

    d = diagnose()
    cap = "present" if d.cap_net_raw else "missing"
    eff = f", CapEff {d.cap_eff:016x}" if d.cap_eff is not None else ""
    return PermissionDenied(
        f"TCP mode raw needs a raw socket, which needs CAP_NET_RAW ({cap} for uid "
        f"{d.euid}{eff}; socket(SOCK_RAW, IPPROTO_TCP): {os.strerror(err.errno or EPERM)}). Use "
        '--mode connect (mode="connect": connect() timing, no privilege), or grant the '
        f"capability: sudo setcap cap_net_raw+ep {d.python}, or run as root"
    )


def _tcp_sweep(
    targets: Iterable[str] | str,
    *,
    tcp_port: int,
    mode: str,
    sub_opts: dict[str, Any],
    rate_pps: float,
    workers: int,
    batch_size: int,
    on_progress: Callable[[int, int, int], None] | None,
) -> SweepResult:
    """sweep() with tcp_port: raw SYNs (TcpSocket) or connect() timing."""
    if not 1 <= tcp_port <= 65535:
        raise ValueError(f"tcp_port {tcp_port} must be 1..65535")
    if tcp_timing(mode) == "connect":
        return _connect_sweep(targets, tcp_port, sub_opts, rate_pps, on_progress)
    try:
        res = _socket_sweep(
            targets, **sub_opts, rate_pps=rate_pps, mode="raw", workers=workers,
            batch_size=batch_size, on_progress=on_progress, tcp_port=tcp_port,
        )  # fmt: skip
    except PermissionError as e:
        if isinstance(e, PermissionDenied):
            raise
        raise raw_tcp_denied(e) from e
    res.timing = "raw"
    return res


def _connect_sweep(
    targets: Iterable[str] | str,
    port: int,
    opts: dict[str, Any],
    rate_pps: float,
    on_progress: Callable[[int, int, int], None] | None,
) -> SweepResult:
    """A TCP sweep by connect() (no CAP_NET_RAW): the same results, timed in user space."""
    from .tcpconnect import sweep_rounds

    plan = _Plan(target_set(targets), opts["family"])
    hosts = _ConnectHosts(plan, port)
    t0 = time.perf_counter()
    tally, interrupted = sweep_rounds(
        hosts.pairs,
        count=opts["count"],
        interval_s=opts["interval_s"],
        timeout_s=opts["timeout_s"],
        rate_pps=rate_pps,
        ttl=opts["ttl"],
        tos=opts["tos"],
        collect_rtts=opts["collect_rtts"],
        progress=on_progress,
    )
    duration = time.perf_counter() - t0
    hosts.tally = tally
    totals = tally.totals()
    totals["unresolved"] = plan.unresolved
    totals["workers"] = 1
    totals["interrupted"] = int(interrupted)
    totals["sweep_window_ns"] = int(duration * 1e9)
    return SweepResult(plan.n_hosts, hosts.get, totals, duration, source=hosts, timing="connect")


class _ConnectHosts:
    """The hosts of a connect() sweep, in host order: each a (address, port) pair
    of the tally, or a name that did not resolve; read back as HostResults or as
    core rows for the compiled formatters, like _Hosts."""

    def __init__(self, plan: _Plan, port: int) -> None:
        self.port = port
        self.pairs: list[tuple[str, int]] = []
        # per host: (family, packed address, label, None), or for a name that did
        # not resolve (0, b"", the name, the error)
        self.hosts: list[tuple[int, bytes, str | None, str | None]] = []
        self.tally: Any = None
        self.index = array("q")  # per host: its pair, -1 for a name that did not resolve
        packed = {f: plan.packed(f) for f, n in plan.n_slots.items() if n}
        for k in range(len(plan.run_host)):
            fam, pos, n, h0 = plan.run_fam[k], plan.run_pos[k], plan.run_len[k], plan.run_host[k]
            for j in range(n):
                label = plan.labels.get(h0 + j)
                if fam < 0:
                    r = plan.names[pos + j]
                    if isinstance(r, str):
                        self.hosts.append((0, b"", plan.name_labels[pos + j], r))
                        self.index.append(-1)
                        continue
                    self._add(r[0], packed[r[0]], r[1], plan.name_labels[pos + j])
                else:
                    self._add(fam, packed[fam], pos + j, label)

    def _add(self, fam: int, packed: bytes, slot: int, label: str | None) -> None:
        alen = 4 if fam == socket.AF_INET else 16
        a = packed[slot * alen : (slot + 1) * alen]
        self.hosts.append((fam, a, label, None))
        self.index.append(len(self.pairs))
        self.pairs.append((socket.inet_ntop(fam, a), self.port))

    def _each(self) -> Iterator[tuple[int, tuple[int, bytes, str | None, str | None]]]:
        """(pair index or -1, host entry) in host order."""
        return zip(self.index, self.hosts, strict=True)

    def get(self, n: int) -> HostResult:
        i, (_, _, label, error) = self.index[n], self.hosts[n]
        if i < 0:
            return HostResult(target=label or "", address=None, error=error)
        addr = self.pairs[i][0]
        h: HostResult = self.tally.host(i, label or addr, addr)
        return h

    def write(self, fmt: Any, count: int, text_of_missing: Callable[[HostResult], str]) -> None:
        from ._pipeline import FMT_NONE, SEL_ALIVE, Formatter
        from .tcpconnect import _NO_ICMP, unreachable_text

        t = self.tally
        for i, h in self._each():
            fam, a, label, error = h
            if i < 0:
                fmt.count_row(False)
                if fmt.fmt != FMT_NONE and fmt.select != SEL_ALIVE:
                    fmt.write_text(text_of_missing(HostResult(label or "", None, error=error)))
                continue
            row = t.row(i, a, self.port)
            if not t.unreach[i]:
                fmt.write_rows(row, 1, fam, label)
                continue
            # the formatters know ICMP errors only: write this row apart and say
            # connect()'s errno where the ICMP type, code and router would be
            side = Formatter(fmt.fmt, fmt.select, count, None)
            side.write_rows(row, 1, fam, label)
            text = side.getvalue().decode().replace(_NO_ICMP, unreachable_text(t.errno[i]))
            fmt.count_row(bool(side.alive))
            if text:
                fmt.write_text(text)

    def columns(self) -> dict[str, Any]:
        from ._pipeline import Columns

        cols = Columns()
        for i, h in self._each():
            if i < 0:
                cols.add_missing()
            else:
                cols.add_rows(self.tally.row(i, h[1], self.port), 1, h[0])
        return cols.result()


def auto_workers(n_targets: int, rate_pps: float) -> int:
    """Workers for a sweep when the caller did not choose: one per usable core
    (at most 8), only when the sweep is big and fast enough to need more than one
    core (a paced sweep below ~50,000 probes/s does not)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if rate_pps and rate_pps < 50_000:
        return 1
    return max(1, min(cores, 8, n_targets // 16384))


class _ProgressWatcher(threading.Thread):
    """Calls ``fn(sent, total, received)`` about five times a second while the
    sockets sweep (their counters are read while the C loops run), and once at the end."""

    def __init__(self, socks: list[Any], total: int, fn: Callable[[int, int, int], None]) -> None:
        super().__init__(daemon=True)
        self.socks, self.total, self.fn = socks, total, fn
        self.done = threading.Event()

    def report(self) -> None:
        sent = received = 0
        for s in self.socks:
            t = s.totals()
            sent += int(t["sent"]) + int(t["send_errors"])
            received += int(t["received"])
        self.fn(sent, self.total, received)

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.report()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.report()


class _Shards:
    """One family's sockets, each holding a contiguous range of the ``total``
    global slots; with several ports, each socket holds its range once per port,
    and the view of port ``block`` is located in that copy."""

    def __init__(self, family: int, starts: list[int], total: int, block: int = 0) -> None:
        self.family = family
        self.starts = starts
        self.total = total
        self.block = block
        self.socks: list[Any] = []

    def _index(self, slot: int) -> int:
        import bisect

        return bisect.bisect_right(self.starts, slot) - 1

    def _end(self, i: int) -> int:
        return self.starts[i + 1] if i + 1 < len(self.starts) else self.total

    def locate(self, slot: int) -> tuple[Any, int]:
        i = self._index(slot)
        return self.socks[i], slot - self.starts[i] + self.block * (self._end(i) - self.starts[i])

    def left(self, slot: int) -> int:
        """Global slots from ``slot`` to the end of its socket's range."""
        return self._end(self._index(slot)) - slot

    def length_at(self, start: int) -> int:
        """The length of the range that starts at ``start``."""
        i = self._index(start)
        return self._end(i) - self.starts[i]

    def view(self, block: int) -> _Shards:
        v = _Shards(self.family, self.starts, self.total, block)
        v.socks = self.socks
        return v

    def close(self) -> None:
        for s in self.socks:
            s.close()


def _load_part(sock: Any, items: list[Any], lo: int, hi: int) -> None:
    """Load global slots [lo, hi) of a family's target items into ``sock``."""
    pos = 0
    batch: list[str] = []
    for it in items:
        size = it[2] if it[0] == "range" else 1
        a, b = max(lo, pos), min(hi, pos + size)
        if a < b:
            if it[0] == "range":
                if batch:
                    sock.append_targets(batch)
                    batch = []
                sock.append_range_v4(it[1] + (a - pos), b - a)
            else:
                batch.append(it[1])
        pos += size
        if pos >= hi:
            break
    if batch:
        sock.append_targets(batch)


def _check_args(
    count: int, interval_s: float, timeout_s: float, rate_pps: float, workers: int
) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count}")
    if interval_s < 0:
        raise ValueError(f"interval_s must be >= 0, not {interval_s}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
    if rate_pps < 0:
        raise ValueError(f"rate_pps must be >= 0 (0 = no limit), not {rate_pps}")
    if workers < 0:
        raise ValueError(f"workers must be >= 1, or 0 for one per usable core, not {workers}")


def _window(count: int, interval_s: float, timeout_s: float) -> int:
    """Probes per target that can be outstanding at once."""
    if count <= 1:
        return 1
    if interval_s <= 0:
        return min(count, 64)
    return max(1, min(count, math.ceil(timeout_s / interval_s) + 1, 64))


def _run_jobs(
    jobs: list[tuple[Any, int, float]],
    count: int,
    interval_s: float,
    timeout_s: float,
    collect: bool,
) -> tuple[list[tuple[int, int, list[Any]]], bool]:
    """Run each socket's sweep; several at once run in threads (the core releases
    the GIL for the whole sweep, so they use as many cores). Returns (family,
    first global slot, events) per socket and call, and whether Ctrl-C cut it short.

    Several rounds whose timeout fits in the interval run one round per call, the
    wait between rounds in Python: the same schedule, and Ctrl-C (KeyboardInterrupt)
    ends the sweep after the round in flight with the statistics so far (as fping
    does). A longer timeout overlaps rounds, so
    those run in one call of the core."""
    out: list[tuple[int, int, list[Any]]] = []
    errors: list[BaseException] = []
    _interrupted = threading.Event()

    def run(sock: Any, offset: int, rate: float, rounds: int) -> None:
        try:
            ev = sock.sweep(rounds, interval_s, timeout_s, rate, None, collect)
            out.append((sock.family, offset, ev or []))
        except KeyboardInterrupt:  # arrived as the round ended: its stats are in the core
            _interrupted.set()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    def run_all(rounds: int) -> None:
        if len(jobs) == 1:
            run(*jobs[0], rounds)
            return
        threads = [threading.Thread(target=run, args=(*j, rounds), daemon=True) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # the core cannot be stopped mid-round: let it finish
                try:
                    t.join()
                except KeyboardInterrupt:
                    _interrupted.set()

    if count == 1 or timeout_s > interval_s:
        run_all(count)
    else:
        t0 = time.monotonic()
        for r in range(count):
            try:
                if r:
                    time.sleep(max(0.0, t0 + r * interval_s - time.monotonic()))
                run_all(1)
            except KeyboardInterrupt:
                _interrupted.set()
            if _interrupted.is_set():
                break
    if errors:
        raise errors[0]
    return out, _interrupted.is_set()


class _Hosts:
    """The hosts of a finished sweep, read from the sockets' arrays: one at a time
    (``get``, a HostResult), or in blocks of core rows for the compiled formatters
    and the column export (``write``, ``columns``). The sockets are closed; their
    arrays stay until this object goes."""

    ROWS = 4096  # rows exported from the core at a time (~430 KiB)

    def __init__(
        self,
        plan: _Plan,
        socks: dict[int, _Shards],
        rtts: dict[tuple[int, int], list[float]] | None,
    ) -> None:
        self.plan, self.socks, self.rtts = plan, socks, rtts

    def get(self, i: int) -> HostResult:
        import bisect

        p = self.plan
        k = bisect.bisect_right(p.run_host, i) - 1
        fam, off = p.run_fam[k], p.run_pos[k] + (i - p.run_host[k])
        label = p.labels.get(i)
        if fam < 0:
            r = p.names[off]
            if isinstance(r, str):
                return HostResult(target=p.name_labels[off], address=None, error=r)
            label = p.name_labels[off]
            fam, off = r
        sock, slot = self.socks[fam].locate(off)
        addr = sock.slot_address(slot)
        h = _host_from_stats(label or addr, addr, sock.slot_stats(slot))
        if self.rtts is not None:
            h.rtts_ms = self.rtts.get((fam, off), [])
        return h

    def _pieces(self) -> Iterator[Any]:
        """(socket, family, first slot, count, label) in host order, or (label, error)
        for a name that did not resolve; a labelled host is a piece of its own."""
        p = self.plan
        labelled = sorted(p.labels)
        li = 0
        for k in range(len(p.run_host)):
            fam, pos, n, h0 = p.run_fam[k], p.run_pos[k], p.run_len[k], p.run_host[k]
            if fam < 0:
                for j in range(pos, pos + n):
                    r = p.names[j]
                    if isinstance(r, str):
                        yield (p.name_labels[j], r)
                    else:
                        yield from self._slots(r[0], r[1], 1, p.name_labels[j])
                continue
            h, end = h0, h0 + n
            while h < end:
                while li < len(labelled) and labelled[li] < h:
                    li += 1
                nxt = labelled[li] if li < len(labelled) and labelled[li] < end else end
                if nxt > h:
                    yield from self._slots(fam, pos + (h - h0), nxt - h, None)
                    h = nxt
                if h < end and li < len(labelled) and labelled[li] == h:
                    yield from self._slots(fam, pos + (h - h0), 1, p.labels[h])
                    h += 1

    def _slots(
        self, fam: int, g: int, n: int, label: str | None
    ) -> Iterator[tuple[Any, int, int, int, str | None]]:
        sh = self.socks[fam]
        while n > 0:
            sock, slot = sh.locate(g)
            take = min(n, sh.left(g))
            yield (sock, fam, slot, take, label)
            g += take
            n -= take

    def _rows(self) -> Iterator[_Block]:
        buf = bytearray(self.ROWS * _row_size())
        for piece in self._pieces():
            if len(piece) == 2:
                yield _Block(None, 0, 0, piece[0], piece[1])
                continue
            sock, fam, slot, n, label = piece
            while n > 0:
                got = sock.export_rows(slot, min(n, self.ROWS), buf)
                yield _Block(buf, got, fam, label, None)
                slot += got
                n -= got

    def write(self, fmt: Any, count: int, text_of_missing: Callable[[HostResult], str]) -> None:
        """Feed every host, in order, to a ``_pipeline.Formatter``; a name that did
        not resolve is formatted by ``text_of_missing`` (Python)."""
        from ._pipeline import FMT_NONE, SEL_ALIVE

        for b in self._rows():
            if b.rows is None:
                fmt.count_row(False)
                if fmt.fmt != FMT_NONE and fmt.select != SEL_ALIVE:
                    fmt.write_text(text_of_missing(HostResult(b.label or "", None, error=b.error)))
            else:
                fmt.write_rows(b.rows, b.n, b.family, b.label)

    def columns(self) -> dict[str, Any]:
        from ._pipeline import Columns

        cols = Columns()
        for b in self._rows():
            if b.rows is None:
                cols.add_missing()
            else:
                cols.add_rows(b.rows, b.n, b.family)
        return cols.result()


class _Block(NamedTuple):
    """``n`` core rows of one family in ``rows`` (None: a name that did not resolve)."""

    rows: bytearray | None
    n: int
    family: int
    label: str | None
    error: str | None


def _row_size() -> int:
    from ._pipeline import ROW_SIZE

    return int(ROW_SIZE)


def _subprocess_sweep(targets: Iterable[str] | str | Any, opts: dict[str, Any]) -> SweepResult:
    from ._pipeline import TargetSet
    from .subproc import hosts_to_sweep_result, subprocess_sweep

    if isinstance(targets, TargetSet):
        targets = targets.address_strings()
    t0 = time.perf_counter()
    hosts = subprocess_sweep([targets] if isinstance(targets, str) else list(targets), **opts)
    return hosts_to_sweep_result(hosts, time.perf_counter() - t0)


def ping(
    host: str,
    *,
    count: int = 4,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    on_probe: Callable[[ProbeResult], None] | None = None,
    **options: Any,
) -> HostResult:
    """Ping one host ``count`` times; the result carries every RTT in ``rtts_ms``.
    ``on_probe`` (if given) is called with each probe's outcome as it is known
    (``Pinger`` is the iterator behind it). A block (``"10.0.0.0/30"``) is refused,
    as ``fastping ping`` refuses it: use ``sweep``. ``tcp_port``: TCP probes to
    that port (``TcpPinger``; ``mode`` raw, connect or auto)."""
    from .probe import UseSubprocess

    options.pop("rate_pps", None)
    mode = options.pop("mode", "auto")
    tcp_port = options.pop("tcp_port", 0)
    if tcp_port:  # TCP probes to that port: raw SYNs, or connect() without CAP_NET_RAW
        options.pop("payload_size", None)
        options.pop("dont_fragment", None)
        tp = TcpPinger(
            host, tcp_port, count=count, interval_s=interval_s, timeout_s=timeout_s,
            mode=mode, **options,
        )  # fmt: skip
        for r in tp:
            if on_probe is not None:
                on_probe(r)
        return tp.stats()
    try:
        pinger = Pinger(
            host, count=count, interval_s=interval_s, timeout_s=timeout_s, mode=mode, **options
        )
    except UseSubprocess:
        res = sweep(
            [host], count=count, interval_s=interval_s, timeout_s=timeout_s, rate_pps=0.0,
            collect_rtts=True, mode="subprocess", **options,
        )  # fmt: skip
        h = res[0]
        if on_probe is not None:
            for i, rtt in enumerate(h.rtts_ms):
                on_probe(ProbeResult(h.target, h.address, i, Outcome.REPLY, rtt_ms=rtt, ttl=h.ttl))
        return h
    for r in pinger:
        if on_probe is not None:
            on_probe(r)
    return pinger.stats()


class Pinger:
    """One host pinged ``count`` times, each probe's outcome as it is known, the
    way ping(8) prints them: ``for r in Pinger("::1", count=5): ...`` yields one
    ``ProbeResult`` per probe (replies, timeouts, unreachables, send errors) plus
    the duplicates and late replies, in the order they happen. ``stats()`` is the
    host's summary so far, so a caller stopped by Ctrl-C still has one.

    Needs an ICMP socket (raw or dgram): ``UseSubprocess`` when ``mode`` is
    "subprocess" or auto finds none (``ping()`` then runs the system ping)."""

    def __init__(
        self,
        host: str,
        *,
        count: int = 4,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        payload_size: int = 56,
        ttl: int | None = None,
        tos: int | None = None,
        dont_fragment: bool = False,
        mode: str = "auto",
        family: int | None = None,
    ) -> None:
        where = self._locate(host, family, count, interval_s, timeout_s)
        if where is None:
            return  # a name that did not resolve: stats() says so
        fam, address = where
        from .probe import open_icmp_socket

        sock = open_icmp_socket(
            fam,
            mode=mode,
            payload_size=payload_size,
            ttl=ttl,
            tos=tos,
            dont_fragment=dont_fragment,
            window=_window(count, interval_s, timeout_s),
        )
        sock.timeout_s = timeout_s  # slower replies are late, as in sweep()
        self._slot = sock.add_target(address)
        self._sock: Any = sock

    def _locate(
        self, host: str, family: int | None, count: int, interval_s: float, timeout_s: float
    ) -> tuple[int, str] | None:
        """Check the arguments, resolve ``host``: its family and address, or None
        (``error`` set)."""
        _check_args(count, interval_s, timeout_s, 0.0, 1)
        plan = _Plan(target_set([host]), family)
        if plan.n_hosts != 1:
            raise TargetError(f"ping takes one host, not a block: {host!r} (use sweep)")
        self.count, self.interval_s, self.timeout_s = count, interval_s, timeout_s
        self.error: str | None = None
        self.address: str | None = None
        self._sock = None
        self.rtts_ms: list[float] = []
        fam = plan.run_fam[0]
        if fam < 0:  # a host name
            self.target = plan.name_labels[0]
            r = plan.names[0]
            if isinstance(r, str):
                self.error = r
                return None
            fam = r[0]
            address = plan.extra[fam][0]
        else:
            self.target = host.strip()
            address = socket.inet_ntop(fam, plan.packed(fam))
        self.address = address
        return int(fam), address

    def __iter__(self) -> Iterator[ProbeResult]:
        sock = self._sock
        if sock is None:
            return
        finals = sent = 0
        start = time.monotonic()
        next_send = start
        linger_until: float | None = None
        # bounded whatever the replies do: the last probe's timeout plus a margin
        hard_stop = start + self.count * self.interval_s + self.timeout_s + 1.0
        try:
            while True:
                now = time.monotonic()
                events: list[Any] = []
                if sent < self.count and now >= next_send:
                    events += sock.send([self._slot])
                    sent += 1
                    next_send = start + sent * self.interval_s
                events += sock.recv()
                events += sock.expire(self.timeout_s)
                for ev in events:
                    r = self._result(ev)
                    if r.outcome not in (Outcome.DUPLICATE, Outcome.LATE):
                        finals += 1
                    if r.outcome in _ANSWERS and r.rtt_ms is not None:
                        self.rtts_ms.append(r.rtt_ms)
                    yield r
                now = time.monotonic()
                if sent >= self.count and finals >= sent:
                    # every probe has its outcome; the last one still gets its window
                    # (its interval, at most its timeout), so its duplicates and
                    # delayed copies are counted like every other probe's
                    if linger_until is None:
                        linger_until = now + min(self.interval_s, self.timeout_s)
                    if now >= linger_until:
                        return
                if now >= hard_stop:
                    return
                due = next_send if sent < self.count else (linger_until or hard_stop)
                # short waits, so Ctrl-C is seen at once (the wait releases the GIL)
                sock.wait(min(max(due - now, 0.0), 0.1))
        finally:
            self.close()

    def _result(self, ev: Any) -> ProbeResult:
        slot, kind, seq, rtt_ns, ttl, itype, icode, router, err = ev
        outcome = OUTCOME_BY_KIND[kind]
        has_rtt = kind in _RTT_KINDS and rtt_ns > 0
        return ProbeResult(
            self.target,
            self.address,
            seq,
            outcome,
            rtt_ns / 1e6 if has_rtt else None,
            (ttl or None) if has_rtt or kind in _ICMP_ERROR_KINDS else None,
            itype,
            icode,
            router,
            err or None,
            time.time(),
        )

    def stats(self) -> HostResult:
        """The host's statistics over the probes so far."""
        if self.address is None:
            return HostResult(target=self.target, address=None, error=self.error)
        h = _host_from_stats(self.target, self.address, self._stats)
        h.rtts_ms = list(self.rtts_ms)
        return h

    @property
    def _stats(self) -> SlotStats:
        if self._sock is not None and not self._sock.closed:
            self._last_stats: SlotStats = self._sock.slot_stats(self._slot)
        return self._last_stats

    def close(self) -> None:
        if self._sock is not None and not self._sock.closed:
            self._last_stats = self._sock.slot_stats(self._slot)
            self._sock.close()


_ANSWERS = (Outcome.REPLY, Outcome.CLOSED)  # the answers a probe's RTT is kept for
# tcpconnect's outcomes as a probe's
_CONNECT_OUTCOME = {
    "open": Outcome.REPLY,
    "closed": Outcome.CLOSED,
    "filtered": Outcome.TIMEOUT,
    "unreachable": Outcome.UNREACHABLE,
    "error": Outcome.SEND_ERROR,
}


class _PortPinger(Pinger):
    """A pinger of one host:port: ``closed`` counts the answers that said the port
    is closed (a RST, an ICMP port unreachable), read from the socket's slot, kept
    when the socket closes."""

    _closed = 0

    @property
    def closed(self) -> int:
        if self._sock is not None and not self._sock.closed:
            self._closed = int(self._sock.slot_closed(self._slot))
        return self._closed

    def close(self) -> None:
        if self._sock is not None and not self._sock.closed:
            self._closed = int(self._sock.slot_closed(self._slot))
        super().close()


class TcpPinger(_PortPinger):
    """One host's TCP ``port`` probed ``count`` times, each probe's outcome as it is
    known: REPLY (open: a SYN-ACK), CLOSED (a RST), TIMEOUT (filtered: silence),
    UNREACHABLE (an ICMP error), SEND_ERROR. ``mode`` "raw": SYNs on a raw socket
    (TcpSocket; CAP_NET_RAW; kernel timestamps); "connect": one non-blocking
    connect() per probe (no privilege; RTT from user space; probes do not
    overlap, so a timeout longer than the interval spaces them out); "auto": raw
    when it may. ``timing`` says which; ``closed`` counts the RSTs (in
    ``stats().received`` too, as for sweep)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        count: int = 4,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        ttl: int | None = None,
        tos: int | None = None,
        mode: str = "auto",
        family: int | None = None,
    ) -> None:
        if not 1 <= port <= 65535:
            raise ValueError(f"TCP port {port} must be 1..65535")
        self.port = port
        self.timing = tcp_timing(mode)
        self._ttl, self._tos = ttl, tos
        self._closed = 0
        where = self._locate(host, family, count, interval_s, timeout_s)
        from .tcpconnect import Tally

        self._tally = Tally(1)
        if where is None or self.timing == "connect":
            return
        fam, address = where
        from ._icmp import TcpSocket

        try:
            sock = TcpSocket(fam, ttl=ttl, tos=tos, window=_window(count, interval_s, timeout_s))
        except PermissionError as e:
            raise raw_tcp_denied(e) from e
        sock.timeout_s = timeout_s
        self._slot = sock.add_target(address, port)
        self._sock = sock

    @property
    def closed(self) -> int:
        """Probes answered by a RST (port closed)."""
        if self.timing == "connect":
            return int(self._tally.closed[0])
        return super().closed

    def __iter__(self) -> Iterator[ProbeResult]:
        if self.address is None:
            return
        if self.timing == "raw":
            yield from super().__iter__()
            return
        from .tcpconnect import connect_sweep

        start = time.monotonic()
        for seq in range(self.count):
            time.sleep(max(0.0, start + seq * self.interval_s - time.monotonic()))
            r = connect_sweep(
                [(self.address, self.port)], timeout_s=self.timeout_s, concurrency=1,
                ttl=self._ttl, tos=self._tos,
            )[0]  # fmt: skip
            self._tally.add(0, r)
            rtt = r.rtt_ns / 1e6 if r.rtt_ns is not None else None
            if rtt is not None:
                self.rtts_ms.append(rtt)
            yield ProbeResult(
                self.target, self.address, seq, _CONNECT_OUTCOME[r.outcome], rtt,
                errno=r.errno, time=time.time(),
            )  # fmt: skip

    def stats(self) -> HostResult:
        if self.timing == "raw" or self.address is None:
            return super().stats()
        h: HostResult = self._tally.host(0, self.target, self.address)
        h.rtts_ms = list(self.rtts_ms)
        return h


class UdpPinger(_PortPinger):
    """One host's UDP ``port`` probed ``count`` times on an unprivileged UdpSocket
    (payload keyed per port, as in udp_sweep): REPLY (open: the service answered),
    CLOSED (the host's own ICMP port unreachable), UNREACHABLE / TIME_EXCEEDED
    (another ICMP error, or a port unreachable from another address), TIMEOUT
    (open|filtered: silence). ``closed`` counts the port unreachables (in
    ``stats().received`` too, with their RTTs, as for TCP)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        count: int = 4,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        ttl: int | None = None,
        tos: int | None = None,
        family: int | None = None,
    ) -> None:
        if not 1 <= port <= 65535:
            raise ValueError(f"UDP port {port} must be 1..65535")
        self.port = port
        self._closed = 0
        where = self._locate(host, family, count, interval_s, timeout_s)
        if where is None:
            return
        fam, address = where
        from ._icmp import UdpSocket

        sock = UdpSocket(fam, ttl=ttl, tos=tos, window=_window(count, interval_s, timeout_s))
        sock.timeout_s = timeout_s
        self._slot = sock.add_target(address, port)
        self._sock = sock


async def async_sweep(targets: Iterable[str] | str, **kwargs: Any) -> SweepResult:
    """``sweep`` without blocking the event loop (the core runs in a thread with
    the GIL released)."""
    import asyncio  # here: a command-line sweep never pays for importing asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(sweep, targets, **kwargs))


async def async_ping(host: str, **kwargs: Any) -> HostResult:
    """``ping`` without blocking the event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(ping, host, **kwargs))
