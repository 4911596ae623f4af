"""Paths in the monitoring engine: every ``every_s`` seconds, one ``trace()`` of all
the engine's ICMP targets (issue #19).

``MonitoringEngine(trace_every_s=300)`` makes a :class:`PathWatcher`
(``engine.paths``). Each round traces every ICMP target that has an address, all at
once (``fastping.trace.trace``: the whole targets x hops space in one paced sweep),
in a worker thread (the sweep blocks in C with the GIL released, so the event loop
keeps probing). Each target's last :class:`~fastping.trace.Trace` is kept
(``engine.path(host)``); when ``path_changed(old, new)`` says the new one took
another path, a :class:`PathChange` engine event goes to the subscribers, the
change is counted (``changes(host)``, ``fastping_path_changes_total``) and logged.
A hop that did not answer in either trace (a silent router, a rate-limited answer)
is never a change. Every round's traces and changes go to the store
(``store.write_traces``, when the store has it): tables ``traces`` and
``path_changes``. A round that fails (no ICMP socket, a store error) is counted and
logged; the traces a store could not take are kept (bounded) and written with the
next round, and what does not fit is counted as dropped.

With ``on_outage`` a target whose outage starts (``fastping.loss``: N consecutive
lost probes) is traced at once, not at the next round: where its path now ends is the
first thing to know. Such rounds trace only those targets, at most one every
``URGENT_MIN_GAP_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .engine import MonitoringEngine
    from .pmtu import PathMtu
    from .trace import Trace

DEFAULT_TRACE_MAX_TTL = 16
DEFAULT_TRACE_TIMEOUT_S = 1.0
DEFAULT_TRACE_RATE_PPS = 1000.0
MIN_TRACE_EVERY_S = 1.0
MAX_PENDING = 100_000  # trace rows kept for a store that failed, before dropping
# on_outage: targets whose outage started are traced at once, in one round at most this
# often (a flapping fleet must not turn the prober into a traceroute loop)
URGENT_MIN_GAP_S = 5.0


@dataclass(frozen=True, slots=True)
class PathChange:
    """A target's path changed between two traces (engine event ``kind``
    "path_change"): ``old`` / ``new`` are the responders hop by hop (None: no answer),
    ``old_hops`` / ``new_hops`` the hop counts (None: the target was not reached)."""

    target: str
    time: float
    old: tuple[str | None, ...]
    new: tuple[str | None, ...]
    old_hops: int | None
    new_hops: int | None
    address: str | None = None
    kind: str = "path_change"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "address": self.address,
            "time": round(self.time, 3),
            "old": list(self.old),
            "new": list(self.new),
            "old_hops": self.old_hops,
            "new_hops": self.new_hops,
        }


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One target's trace of one round, as the store keeps it."""

    target: str
    time: float
    address: str
    hop_count: int | None
    reached: bool
    path: tuple[str | None, ...]


def check_trace_every(v: float | None) -> float | None:
    if v is None:
        return None
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= MIN_TRACE_EVERY_S):
        raise ConfigError(
            f"trace_every_s={v!r}: give seconds between path traces, at least "
            f"{MIN_TRACE_EVERY_S:g} (300 is usual), or None for no traces"
        )
    return float(v)


class PathWatcher:
    """The engine's periodic traces (see the module docstring)."""

    def __init__(
        self,
        engine: MonitoringEngine,
        every_s: float,
        *,
        max_ttl: int = DEFAULT_TRACE_MAX_TTL,
        timeout_s: float = DEFAULT_TRACE_TIMEOUT_S,
        rate_pps: float = DEFAULT_TRACE_RATE_PPS,
        mode: str | None = None,
        on_outage: bool = False,
        mtu_on_change: bool = False,
    ) -> None:
        from .trace import MAX_MAX_TTL

        every = check_trace_every(every_s)
        assert every is not None
        if not 1 <= int(max_ttl) <= MAX_MAX_TTL:
            raise ConfigError(f"trace max_ttl={max_ttl!r}: give 1..{MAX_MAX_TTL} hops")
        if not (math.isfinite(timeout_s) and 0 < timeout_s <= 60):
            raise ConfigError(f"trace timeout_s={timeout_s!r}: give 0 < seconds <= 60")
        if not (math.isfinite(rate_pps) and rate_pps > 0):
            raise ConfigError(
                f"trace rate_pps={rate_pps!r}: give a positive probe rate (routers rate-limit "
                "their ICMP errors; 1000/s is polite)"
            )
        self.engine = engine
        self.every_s = every
        self.max_ttl = int(max_ttl)
        self.timeout_s = float(timeout_s)
        self.rate_pps = float(rate_pps)
        if mode is None:  # the engine's ICMP mode ("connect" is TCP's alone: auto)
            mode = engine.mode if engine.mode in ("auto", "raw", "dgram") else "auto"
        if mode not in ("auto", "raw", "dgram"):
            raise ConfigError(f"trace mode {mode!r}: tracing uses raw or dgram ICMP sockets")
        self.mode = mode
        self._last: dict[str, Trace] = {}
        self._changes: dict[str, int] = {}
        self._pending: list[TraceRecord] = []
        self._pending_changes: list[PathChange] = []
        self.rounds = 0
        self.traced = 0  # target traces done
        self.changes_total = 0
        self.errors = 0  # rounds that failed (no socket, ...)
        self.store_errors = 0
        self.stored = 0
        self.dropped = 0  # trace rows a failing store could not take, beyond MAX_PENDING
        self.last_error: str | None = None
        self.last_round_s: float | None = None
        self.on_outage = bool(on_outage)
        self.urgent_rounds = 0  # rounds for targets whose outage started
        self.interrupted = 0  # rounds cut short by the engine stopping
        self._cancel = threading.Event()  # set: the round's sweep ends (engine stop)
        # path MTU, measured at the first trace and again after each path change
        self.mtu_on_change = bool(mtu_on_change)
        self._mtu: dict[str, PathMtu] = {}
        self.mtu_checks = 0  # targets whose path MTU was measured
        self.mtu_changes = 0  # ... and came out other than before
        self.mtu_errors = 0
        self._urgent: set[str] = set()
        self._wake: asyncio.Event | None = None
        if self.on_outage:
            engine.add_outage_listener(self._on_outages)

    # -- reading ---------------------------------------------------------------------

    def path(self, host: str) -> Trace | None:
        """``host``'s latest trace (None before its first)."""
        return self._last.get(host)

    def mtu(self, host: str) -> PathMtu | None:
        """``host``'s path MTU as last measured (``mtu_on_change``), None before."""
        return self._mtu.get(host)

    def mtu_snapshot(self) -> list[tuple[str, int | None, bool]]:
        """(target, path MTU or None, black hole) of every target measured."""
        return [(h, m.pmtu, m.black_hole) for h, m in dict(self._mtu).items()]

    def changes(self, host: str) -> int:
        """Path changes of ``host`` seen by this engine."""
        return self._changes.get(host, 0)

    def snapshot(self) -> list[tuple[str, int | None, int]]:
        """(target, hop count or None, path changes) of every target traced, for the
        metrics thread (a copy of the dict, taken at once)."""
        last = dict(self._last)
        ch = dict(self._changes)
        return [(h, tr.hop_count, ch.get(h, 0)) for h, tr in last.items()]

    def stats(self) -> dict[str, Any]:
        return {
            "every_s": self.every_s,
            "rounds": self.rounds,
            "traced": self.traced,
            "path_changes": self.changes_total,
            "errors": self.errors,
            "store_errors": self.store_errors,
            "stored": self.stored,
            "dropped": self.dropped,
            "pending": len(self._pending),
            "last_error": self.last_error,
            "last_round_s": self.last_round_s,
            "urgent_rounds": self.urgent_rounds,
            "interrupted": self.interrupted,
            "mtu_on_change": self.mtu_on_change,
            "mtu_checks": self.mtu_checks,
            "mtu_changes": self.mtu_changes,
            "mtu_errors": self.mtu_errors,
        }

    # -- running ---------------------------------------------------------------------

    def _targets(self, only: set[str] | None = None) -> dict[str, list[str]]:
        """address -> the ICMP targets probing it (watched now, resolved; of ``only``)."""
        out: dict[str, list[str]] = {}
        known = self.engine._targets  # no TargetInfo (and core look-ups) per target
        ts = known.values() if only is None else [known[h] for h in only if h in known]
        for t in ts:
            if t.kind == "icmp" and t.address:
                out.setdefault(t.address, []).append(t.host)
        return out

    def _on_outages(self, evs: Any) -> None:
        """Outage listener (event loop): targets whose outage started, traced soon."""
        for ev in evs:
            o = ev.outage
            if ev.what == "start" and o.target is not None and o.target in self.engine:
                self._urgent.add(o.target)
        if self._urgent and self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Trace at once, then every ``every_s``, and (``on_outage``) the targets whose
        outage started (the engine's task; cancelled at stop)."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        next_at = loop.time()
        urgent_ok_at = 0.0
        while True:
            delay = next_at - loop.time()
            if self._urgent:
                delay = min(delay, urgent_ok_at - loop.time())
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue  # recompute what is due
            if loop.time() >= next_at:
                next_at = max(next_at + self.every_s, loop.time())
                self._urgent.clear()  # a full round traces them too
                await self.trace_once()
            elif self._urgent:
                only, self._urgent = self._urgent, set()
                urgent_ok_at = loop.time() + URGENT_MIN_GAP_S
                self.urgent_rounds += 1
                await self.trace_once(only)

    async def trace_once(self, only: set[str] | None = None) -> list[PathChange]:
        """One round: trace every ICMP target (or those of ``only``), publish and
        store the changes."""
        from .trace import trace

        by_addr = self._targets(only)
        if not by_addr:
            return []
        t0 = time.monotonic()
        cancel = self._cancel
        cancel.clear()
        try:
            run = await asyncio.to_thread(
                trace,
                list(by_addr),
                max_ttl=self.max_ttl,
                queries=1,
                timeout_s=self.timeout_s,
                rate_pps=self.rate_pps,
                mode=self.mode,
                workers=1,
                stop=cancel,  # the engine's stop ends a 10,000-target round at once
            )
        except asyncio.CancelledError:
            cancel.set()  # the engine stops: the sweep in the worker thread ends too
            self.interrupted += 1
            raise
        except Exception as e:  # no ICMP socket, ...: counted, logged, retried next round
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if self.errors == 1 or self.errors % 100 == 0:
                self.engine._log.error("path trace failed", error=self.last_error,
                                       count=self.errors)  # fmt: skip
            return []
        if run.totals.get("interrupted"):
            # cut short (the engine stops): targets not reached only for want of
            # time would read as path changes; nothing of the round is kept
            return []
        self.rounds += 1
        self.last_round_s = round(time.monotonic() - t0, 3)
        now = time.time()
        records: list[TraceRecord] = []
        changes: list[PathChange] = []
        for tr in run.traces:
            if tr.error is not None:
                continue
            for host in by_addr.get(tr.address, ()):
                if host not in self.engine:
                    continue  # removed while it was traced
                self.traced += 1
                records.append(TraceRecord(host, now, tr.address, tr.hop_count, tr.reached,
                                           tr.path))  # fmt: skip
                old = self._last.get(host)
                self._last[host] = tr
                if old is not None and _changed(old, tr):
                    ch = PathChange(host, now, old.path, tr.path, old.hop_count, tr.hop_count,
                                    tr.address)  # fmt: skip
                    changes.append(ch)
                    self._changes[host] = self._changes.get(host, 0) + 1
        # targets no longer watched: their last trace goes
        for host in [h for h in self._last if h not in self.engine]:
            del self._last[host]
            self._changes.pop(host, None)
        self.changes_total += len(changes)
        if changes:
            self.engine._path_events(changes)
            for ch in changes[:20]:
                self.engine._log.warning(
                    "path changed", target=ch.target, old=_path_text(ch.old),
                    new=_path_text(ch.new), old_hops=ch.old_hops, new_hops=ch.new_hops,
                )  # fmt: skip
            if len(changes) > 20:
                self.engine._log.warning("more path changes", changes=len(changes) - 20)
        await self._store(records, changes)
        if self.mtu_on_change:
            # the first trace of a target, and every path change, gets its path MTU
            # (measured again: another path may carry another MTU, or a black hole)
            due = {ch.target for ch in changes} | {r.target for r in records
                                                   if r.target not in self._mtu}  # fmt: skip
            if due:
                await self._check_mtu(due)
        return changes

    async def _check_mtu(self, hosts: set[str]) -> None:
        from .pmtu import path_mtu

        by_addr = self._targets(hosts)
        if not by_addr:
            return
        try:
            run = await asyncio.to_thread(
                path_mtu, list(by_addr), mode=self.mode, timeout_s=self.timeout_s,
                rate_pps=self.rate_pps, max_ttl=self.max_ttl,
            )  # fmt: skip
        except Exception as e:  # counted, logged; the next change tries again
            self.mtu_errors += 1
            self.last_error = f"mtu: {type(e).__name__}: {e}"
            self.engine._log.error("path MTU check failed", error=self.last_error)
            return
        for res in run.results:
            for host in by_addr.get(res.address, ()):
                if host not in self.engine:
                    continue
                self.mtu_checks += 1
                old = self._mtu.get(host)
                self._mtu[host] = res
                if old is not None and (old.pmtu, old.black_hole) != (res.pmtu, res.black_hole):
                    self.mtu_changes += 1
                    self.engine._log.warning(
                        "path MTU changed", target=host, old=old.pmtu, new=res.pmtu,
                        black_hole=res.black_hole, hole_hop=res.hole_hop,
                        hole_address=res.hole_address,
                    )  # fmt: skip
                elif res.black_hole:
                    self.engine._log.warning(
                        "PMTUD black hole", target=host, pmtu=res.pmtu, hole_hop=res.hole_hop,
                        hole_address=res.hole_address,
                    )  # fmt: skip

    async def _store(self, records: list[TraceRecord], changes: list[PathChange]) -> None:
        store = self.engine.store
        write = getattr(store, "write_traces", None) if store is not None else None
        if write is None:
            return
        recs = self._pending + records
        chs = self._pending_changes + changes
        self._pending, self._pending_changes = [], []
        fut = asyncio.ensure_future(asyncio.to_thread(write, recs, chs))
        try:
            await asyncio.wait([fut])  # neither raises the write's error nor cancels it
        except asyncio.CancelledError:
            # the engine stops during the write: the worker thread goes on, so wait for
            # it (the engine awaits this task before the store closes): the round is
            # then written, or kept as pending, and counted either way
            await asyncio.wait([fut])
            self._written(fut, recs, chs)
            raise
        self._written(fut, recs, chs)

    def _written(
        self, fut: asyncio.Future[None], recs: list[TraceRecord], chs: list[PathChange]
    ) -> None:
        e = fut.exception()
        if e is None:
            self.stored += len(recs)
            return
        # locked, full, down: kept for the next round, bounded
        self.store_errors += 1
        self.last_error = f"store: {type(e).__name__}: {e}"
        self.engine._log.error("store rejected traces", error=str(e), traces=len(recs))
        over = len(recs) - MAX_PENDING
        if over > 0:
            self.dropped += over
            recs = recs[over:]
        self._pending, self._pending_changes = recs, chs


def _changed(old: Trace, new: Trace) -> bool:
    from .trace import path_changed

    return path_changed(old, new)


def _path_text(path: tuple[str | None, ...]) -> str:
    return " ".join(a if a is not None else "*" for a in path) or "-"


path_text = _path_text
