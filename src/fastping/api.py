"""fastping's public API: ``sweep`` and ``ping``, and their async twins.

A sweep opens one IcmpSocket per address family (and per worker), hands it the
targets as compact slots, and runs the whole send/receive loop in C with the GIL
released. Results are read back lazily from the core's arrays.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .errors import TargetError
from .results import OUTCOME_BY_KIND, HostResult, Outcome, ProbeResult, SweepResult
from .targets import Address, Name, V4Range, parse_targets, resolve

# Polite defaults: a user pointing fastping at the internet without thinking
# sends 1,000 probes/s at most. Benchmarks and loopback sweeps pass rate_pps=0.
DEFAULT_RATE_PPS = 1000.0


@dataclass
class _Entry:
    """One input entry: a block of slots on one socket, or an unresolved name."""

    label: str | None  # None: use the slot's address as the label
    sock_index: int  # -1 for a name that did not resolve
    first_slot: int
    count: int
    error: str | None = None


@dataclass
class _Plan:
    entries: list[_Entry] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # cumulative host index per entry
    n_hosts: int = 0


def _plan_targets(
    targets: Iterable[str] | str, family: int | None
) -> tuple[_Plan, dict[int, list[Any]]]:
    """Parse and resolve targets; group them per family as socket slot blocks."""
    if isinstance(targets, str):
        targets = [targets]
    specs = parse_targets(targets)
    names = [s.name for s in specs if isinstance(s, Name)]
    resolved = resolve(names, family) if names else {}
    # per family: list of ("range", first, count) / ("addr", address) in slot order
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    blocks: dict[int, list[Any]] = {v4: [], v6: []}
    next_slot: dict[int, int] = {v4: 0, v6: 0}
    plan = _Plan()

    def add(fam: int, label: str | None, item: Any, count: int) -> None:
        if family is not None and fam != family:
            raise TargetError(
                f"target {label or item!r} is not {'IPv4' if family == socket.AF_INET else 'IPv6'}"
            )
        plan.entries.append(_Entry(label, fam, next_slot[fam], count))
        blocks[fam].append(item)
        next_slot[fam] += count

    for s in specs:
        if isinstance(s, V4Range):
            add(v4, None, ("range", s.first, s.count), s.count)
        elif isinstance(s, Address):
            add(s.family, s.label, ("addr", s.address), 1)
        else:
            r = resolved[s.name]
            if isinstance(r, str):
                plan.entries.append(_Entry(s.name, -1, 0, 1, error=r))
            else:
                add(r[1], s.name, ("addr", r[0]), 1)
    total = 0
    for e in plan.entries:
        plan.offsets.append(total)
        total += e.count
    plan.n_hosts = total
    return plan, blocks


def _host_from_stats(target: str, address: str, st: tuple[Any, ...]) -> HostResult:
    sent, recv, dup, late, tmo, unr, texc, serr, mn, mx, sm, sq, js, jn, ttl, et, ec, rtr = st[:18]
    h = HostResult(
        target=target,
        address=address,
        sent=sent + serr,
        received=recv,
        duplicates=dup,
        late=late,
        timeouts=tmo,
        unreachable=unr,
        time_exceeded=texc,
        send_errors=serr,
        user_timed=st[18] if len(st) > 18 else 0,
    )
    if recv:
        avg = sm / recv
        h.min_ms = mn / 1e6
        h.max_ms = mx / 1e6
        h.avg_ms = avg / 1e6
        h.stddev_ms = math.sqrt(max(sq / recv - avg * avg, 0.0)) / 1e6
        h.jitter_ms = (js / jn / 1e6) if jn else None
        h.ttl = ttl or None
    if unr or texc:
        kind = "time exceeded" if texc else "unreachable"
        h.error = f"{kind} (type {et} code {ec}) from {rtr}"
    elif serr and not recv:
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
) -> SweepResult:
    """Probe every target ``count`` times and return one HostResult per target.

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
    if mode == "subprocess":
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
        )
    except UseSubprocess:
        # auto mode and no ICMP socket allowed: the system ping (already logged why)
        return _subprocess_sweep(targets, sub_opts)


def _socket_sweep(
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
) -> SweepResult:
    plan, blocks = _plan_targets(targets, family)
    window = _window(count, interval_s, timeout_s)
    from .probe import open_icmp_socket

    opts = dict(
        payload_size=payload_size,
        ttl=ttl,
        tos=tos,
        dont_fragment=dont_fragment,
        window=window,
        batch_size=batch_size,
    )
    total_slots = sum((e.count for e in plan.entries if e.sock_index >= 0), 0)
    if workers == 0:
        workers = auto_workers(total_slots, rate_pps)
    socks: dict[int, _Shards] = {}
    t0 = time.perf_counter()
    jobs: list[tuple[Any, int, float]] = []
    try:
        for fam, items in blocks.items():
            n = sum(it[2] if it[0] == "range" else 1 for it in items)
            if n == 0:
                continue
            # each worker owns a contiguous share of this family's slots, on a socket
            # of its own (own identifier, BPF filter and buffers)
            k = max(1, min(workers, n))
            bounds = [n * i // k for i in range(k + 1)]
            shards = _Shards(fam, bounds[:-1])
            socks[fam] = shards
            for i in range(k):
                sock = open_icmp_socket(fam, mode=mode, **opts)
                shards.socks.append(sock)
                _load_part(sock, items, bounds[i], bounds[i + 1])
                # the rate is a global budget, shared in proportion to the work
                share = rate_pps * (bounds[i + 1] - bounds[i]) / total_slots if rate_pps else 0.0
                jobs.append((sock, bounds[i], share))
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
    rtts: dict[tuple[int, int], list[float]] | None = None
    if collect_rtts:
        rtts = {}
        for fam, offset, evs in events:
            for ev in evs:
                if ev[1] == 0:
                    rtts.setdefault((fam, offset + ev[0]), []).append(ev[3] / 1e6)
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
    totals["unresolved"] = sum(1 for e in plan.entries if e.sock_index < 0)
    totals["workers"] = workers
    totals["interrupted"] = int(interrupted)  # Ctrl-C ended a multi-round sweep early
    return SweepResult(plan.n_hosts, _getter(plan, socks, rtts), totals, duration)


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
    """One family's sockets, each holding a contiguous range of global slots."""

    def __init__(self, family: int, starts: list[int]) -> None:
        self.family = family
        self.starts = starts
        self.socks: list[Any] = []

    def locate(self, slot: int) -> tuple[Any, int]:
        import bisect

        i = bisect.bisect_right(self.starts, slot) - 1
        return self.socks[i], slot - self.starts[i]

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


def _getter(
    plan: _Plan, socks: dict[int, _Shards], rtts: dict[tuple[int, int], list[float]] | None
) -> Callable[[int], HostResult]:
    import bisect

    def get(i: int) -> HostResult:
        k = bisect.bisect_right(plan.offsets, i) - 1
        e = plan.entries[k]
        if e.sock_index < 0:
            return HostResult(target=e.label or "", address=None, error=e.error)
        g = e.first_slot + (i - plan.offsets[k])
        sock, slot = socks[e.sock_index].locate(g)
        addr = sock.slot_address(slot)
        h = _host_from_stats(e.label or addr, addr, sock.slot_stats(slot))
        if rtts is not None:
            h.rtts_ms = rtts.get((e.sock_index, g), [])
        return h

    return get


def _subprocess_sweep(targets: Iterable[str] | str, opts: dict[str, Any]) -> SweepResult:
    from .subproc import hosts_to_sweep_result, subprocess_sweep

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
    as ``fastping ping`` refuses it: use ``sweep``."""
    from .probe import UseSubprocess

    options.pop("rate_pps", None)
    mode = options.pop("mode", "auto")
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
        _check_args(count, interval_s, timeout_s, 0.0, 1)
        plan, blocks = _plan_targets([host], family)
        if len(plan.entries) != 1 or plan.n_hosts != 1:
            raise TargetError(f"ping takes one host, not a block: {host!r} (use sweep)")
        e = plan.entries[0]
        self.target = e.label or host
        self.count, self.interval_s, self.timeout_s = count, interval_s, timeout_s
        self.error = e.error
        self.address: str | None = None
        self._sock: Any = None
        if e.sock_index < 0:
            return  # a name that did not resolve: stats() says so
        from .probe import open_icmp_socket

        self.address = blocks[e.sock_index][0][1]
        self._sock = open_icmp_socket(
            e.sock_index,
            mode=mode,
            payload_size=payload_size,
            ttl=ttl,
            tos=tos,
            dont_fragment=dont_fragment,
            window=_window(count, interval_s, timeout_s),
        )
        self._sock.timeout_s = timeout_s  # slower replies are late, as in sweep()
        self._slot = self._sock.add_target(self.address)
        self.rtts_ms: list[float] = []

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
                    if r.outcome is Outcome.REPLY and r.rtt_ms is not None:
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
        has_rtt = kind in (0, 5, 6) and rtt_ns > 0  # reply, duplicate, late
        return ProbeResult(
            self.target,
            self.address,
            seq,
            outcome,
            rtt_ns / 1e6 if has_rtt else None,
            (ttl or None) if has_rtt or kind in (2, 3) else None,
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
    def _stats(self) -> tuple[Any, ...]:
        if self._sock is not None and not self._sock.closed:
            self._last_stats: tuple[Any, ...] = self._sock.slot_stats(self._slot)
        return self._last_stats

    def close(self) -> None:
        if self._sock is not None and not self._sock.closed:
            self._last_stats = self._sock.slot_stats(self._slot)
            self._sock.close()


async def async_sweep(targets: Iterable[str] | str, **kwargs: Any) -> SweepResult:
    """``sweep`` without blocking the event loop (the core runs in a thread with
    the GIL released)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(sweep, targets, **kwargs))


async def async_ping(host: str, **kwargs: Any) -> HostResult:
    """``ping`` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(ping, host, **kwargs))
