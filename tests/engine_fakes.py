"""Test doubles for the engine's scheduling tests: a fake IcmpSocket with the core's
event contract, and an in-memory store. Real-socket tests live in test_engine.py."""

from __future__ import annotations

import asyncio
import socket
import time
from bisect import bisect_left
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from fastping.results import (
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
    CoreEvent,
    ProbeResult,
    SlotStats,
)

_NO_ERROR = (None, None, None, None)  # an event's ICMP type, code, router and errno
# the SlotStats count (and the totals() counter, same name) each event kind adds to
_COUNT_OF = {
    EV_REPLY: "received",
    EV_TIMEOUT: "timeouts",
    EV_UNREACHABLE: "unreachable",
    EV_TIME_EXCEEDED: "time_exceeded",
    EV_SEND_ERROR: "send_errors",
    EV_DUPLICATE: "duplicates",
    EV_LATE: "late",
}
# final outcomes: the slot's last one is remembered (quiet mode returns changes only)
_FINAL = frozenset((EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE, EV_TIME_EXCEEDED, EV_SEND_ERROR))
_LOGGED = frozenset((EV_REPLY, EV_TIMEOUT))
T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the loop would sleep: the time the
    callbacks take counts for nothing, so the engine's schedule is exact and does not
    depend on the machine's load (the engine reads its time from ``loop.time()``). Real
    I/O is still polled at every turn; with no timer due at all the loop blocks for
    real (a thread's result, a signal)."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 1000.0
        real = self._selector
        loop = self

        class _Selector:
            def select(self, timeout: float | None = None) -> Any:
                events = real.select(0)
                if events or timeout is None:
                    return events or real.select(timeout)
                loop._now += max(0.0, timeout)
                return events

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self._selector = _Selector()  # type: ignore[assignment]

    def time(self) -> float:
        return self._now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a VirtualClockLoop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def now() -> float:
    """The running loop's clock (virtual under run_virtual; time.monotonic() under an
    ordinary loop, which is what its time() is), or time.monotonic() outside one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class FakeIcmpSocket:
    """Answers instantly for live addresses, never for ``dead`` ones, refuses sends to
    ``refuse`` ones with ``refuse_errno`` (as the kernel does with ENETUNREACH).

    A model of the core's engine contract, outcome log included: ``set_log`` modes
    0 / 1 / 2, ``take_log`` chunks, ``forget_last``, per-slot timeouts (a reply
    slower than its slot's timeout is a timeout plus a late event), ``slot_stats`` /
    ``slot_last`` and ``totals`` counters."""

    def __init__(
        self,
        family: int,
        window: int,
        *,
        dead: Iterable[str] = (),
        refuse: Iterable[str] = (),
        refuse_errno: int = 101,
        rtt_ns: int = 40_000,
    ) -> None:
        self.family = family
        self.window = window
        self.due: list[int] = []  # due_ns of each send() call that named one
        self.dead = set(dead)
        self.refuse = set(refuse)
        self.refuse_errno = refuse_errno
        self.rtt_ns = rtt_ns
        self._a, self._b = socket.socketpair()
        self.slots: dict[int, str] = {}
        self._free: list[int] = []
        self._next = 0
        self._seq: dict[int, int] = {}
        self._pending: list[tuple[Any, ...]] = []
        self._outstanding: dict[tuple[int, int], float] = {}
        self.send_batches: list[int] = []  # size of each send() call
        self.sends: list[tuple[float, str]] = []  # (monotonic time, address)
        self.closed = False
        self.removed: list[int] = []
        self.log_mode = 0
        self.mode_history: list[int] = []
        self.returned = 0  # events handed back to the engine
        self._log: list[tuple[int, float, float | None, int, int, int]] = []
        self._last: dict[int, int] = {}
        self._slot_timeout_ns: dict[int, int] = {}
        self._stats: dict[int, dict[str, int]] = {}  # slot -> SlotStats' counts and RTTs
        self._sumsq: dict[int, float] = {}
        self._last_rtt: dict[int, tuple[int, int, int]] = {}
        self._bounds: list[int] = []  # set_rtt_buckets ([]: off)
        self._hist: dict[int, list[int]] = {}  # slot -> replies per bucket, then their RTT sum
        self.counts = dict.fromkeys(
            (
                "sent",
                "received",
                "duplicates",
                "late",
                "timeouts",
                "unreachable",
                "time_exceeded",
                "send_errors",
            ),
            0,
        )

    def fileno(self) -> int:
        return self._a.fileno()

    def close(self) -> None:
        self.closed = True
        self._a.close()
        self._b.close()

    def add_target(self, address: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._next
            self._next += 1
        self.slots[slot] = address
        self._seq[slot] = 0
        self._stats[slot] = dict.fromkeys(SlotStats._fields[:11], 0)
        self._sumsq[slot] = 0.0
        self._hist[slot] = [0] * (len(self._bounds) + 2)
        self._last.pop(slot, None)
        self._last_rtt.pop(slot, None)
        self._slot_timeout_ns.pop(slot, None)
        return slot

    def remove_target(self, slot: int) -> None:
        del self.slots[slot]
        self._free.append(slot)
        self.removed.append(slot)
        self._last.pop(slot, None)
        self._slot_timeout_ns.pop(slot, None)
        for k in [k for k in self._outstanding if k[0] == slot]:
            del self._outstanding[k]  # as the core: forgotten (the engine expires first)

    # -- the outcome log -----------------------------------------------------
    def set_log(self, mode: int) -> None:
        if mode != self.log_mode or not self.mode_history:
            self.mode_history.append(mode)
        self.log_mode = mode

    def set_slot_timeout(self, slot: int, timeout_s: float) -> None:
        self._slot_timeout_ns[slot] = int(timeout_s * 1e9)

    def forget_last(self, slot: int = -1) -> None:
        if slot < 0:
            self._last.clear()
        else:
            self._last.pop(slot, None)

    def take_log(self, slot: int = -1) -> list[tuple[int, bytes]]:
        from fastping import chunk

        take = [r for r in self._log if slot < 0 or r[0] == slot]
        self._log = [r for r in self._log if not (slot < 0 or r[0] == slot)]
        by: dict[int, list[tuple[int, float, float | None, int, int, int]]] = {}
        for r in take:
            by.setdefault(r[0], []).append(r)
        return [
            (
                s,
                chunk.pack(
                    [r[1] for r in rs],
                    [r[2] for r in rs],
                    [r[3] for r in rs],
                    [r[4] for r in rs],
                    [r[5] for r in rs],
                ),
            )
            for s, rs in by.items()
        ]

    def slot_address(self, slot: int) -> str:
        return self.slots[slot]

    def slot_stats(self, slot: int) -> SlotStats:
        st = self._stats[slot]
        recv = st["received"]
        # the fake makes no ICMP error and keeps no jitter
        return SlotStats(
            **st, sumsq_ns2=self._sumsq[slot], jitter_sum_ns=0,
            jitter_n=max(recv - 1, 0), last_ttl=64 if recv else 0, last_err_type=0,
            last_err_code=0, last_err_router=None, user_timed=0,
        )  # fmt: skip

    def set_rtt_buckets(self, bounds_ns: Iterable[int]) -> None:
        self._bounds = [int(b) for b in bounds_ns]
        self._hist = {s: [0] * (len(self._bounds) + 2) for s in self._stats}

    def slot_buckets(self, slot: int) -> tuple[tuple[int, ...], int] | None:
        h = self._hist[slot]
        return (tuple(h[:-1]), h[-1]) if self._bounds else None

    def slot_last(self, slot: int) -> tuple[int, int, int]:
        return self._last_rtt.get(slot, (-1, 0, 0))

    def _final(self, ev: tuple[Any, ...], out: list[tuple[Any, ...]]) -> None:
        """Count, log and (by mode) return one event, as the core does."""
        slot, kind, seq, rtt_ns, ttl = ev[:5]
        self.counts[_COUNT_OF[kind]] += 1
        st = self._stats[slot]
        st[_COUNT_OF[kind]] += 1
        if kind == EV_REPLY:
            st["min_ns"] = min(st["min_ns"], rtt_ns) if st["sum_ns"] else rtt_ns
            st["max_ns"] = max(st["max_ns"], rtt_ns)
            st["sum_ns"] += rtt_ns
            self._sumsq[slot] += float(rtt_ns) ** 2
            h = self._hist[slot]
            h[bisect_left(self._bounds, rtt_ns)] += 1  # the core's le semantics
            h[-1] += rtt_ns
        changed = True
        if kind in _FINAL:
            changed = self._last.get(slot) != kind
            self._last[slot] = kind
            self._last_rtt[slot] = (kind, rtt_ns if kind == EV_REPLY else 0, time.time_ns())
        if self.log_mode and kind in _LOGGED:
            reply = kind == EV_REPLY
            # a kind is its chunk code (one numbering)
            self._log.append((slot, time.time(), rtt_ns / 1e6 if reply else None, seq, kind,
                              ttl if reply else 0))  # fmt: skip
        if self.log_mode != 1 or kind not in _LOGGED or changed:
            out.append(ev)
            self.returned += 1

    def lateness(self) -> tuple[int, int, int, tuple[int, ...]]:
        return (0, 0, 0, (0,) * 240)  # the real core's histogram; the fake keeps due_ns

    def send(
        self, slots: Iterable[int], drain: bool = True, due_ns: int = 0
    ) -> list[tuple[Any, ...]]:
        if due_ns:
            self.due.append(due_ns)
        slots = list(slots)
        self.send_batches.append(len(slots))
        t_now = now()
        out: list[tuple[Any, ...]] = []
        for s in slots:
            addr = self.slots[s]
            seq = self._seq[s] = (self._seq[s] + 1) & 0xFFFF
            self.sends.append((t_now, addr))
            if addr in self.refuse:
                err = self.refuse_errno
                self._final(CoreEvent(s, EV_SEND_ERROR, seq, 0, None, None, None, None, err), out)
                continue
            self.counts["sent"] += 1
            self._stats[s]["sent"] += 1
            if addr in self.dead:
                if sum(1 for k in self._outstanding if k[0] == s) >= self.window:
                    raise AssertionError(f"window {self.window} exceeded for {addr}")
                self._outstanding[(s, seq)] = t_now
            elif self.rtt_ns > self._slot_timeout_ns.get(s, self.rtt_ns):
                # slower than the slot's timeout: the probe times out, the reply is late
                self._final(CoreEvent(s, EV_TIMEOUT, seq, 0, None, None, None, None, None), out)
                self._pending.append(CoreEvent(s, EV_LATE, seq, self.rtt_ns, 64, *_NO_ERROR))
            else:
                self._pending.append(CoreEvent(s, EV_REPLY, seq, self.rtt_ns, 64, *_NO_ERROR))
        return out

    def recv(self, max_packets: int = 0) -> list[tuple[Any, ...]]:
        pending, self._pending = self._pending, []
        out: list[tuple[Any, ...]] = []
        for ev in pending:
            if ev[0] in self.slots:
                self._final(ev, out)
        return out

    def expire(self, timeout_s: float) -> list[tuple[Any, ...]]:
        t_now = now()
        out: list[tuple[Any, ...]] = []
        for (s, seq), t0 in list(self._outstanding.items()):
            limit = min(timeout_s, self._slot_timeout_ns.get(s, 10**18) / 1e9)
            if t_now - t0 >= limit:
                del self._outstanding[(s, seq)]
                self._final(CoreEvent(s, EV_TIMEOUT, seq, 0, None, None, None, None, None), out)
        return out

    def totals(self) -> dict[str, int]:
        return {
            **self.counts,
            "outstanding": len(self._outstanding),
            "rx_drops": 0,
            "enobufs": 0,
            "log_pending": len(self._log),
            "log_dropped": 0,
        }


class FakeFactory:
    """socket_factory for the engine; keeps the sockets it made."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.sockets: dict[int, FakeIcmpSocket] = {}
        self.fail: dict[int, OSError] = {}

    def __call__(self, family: int, window: int) -> FakeIcmpSocket:
        if family in self.fail:
            raise self.fail[family]
        s = FakeIcmpSocket(family, window, **self.kw)
        self.sockets[family] = s
        return s

    @property
    def v4(self) -> FakeIcmpSocket:
        return self.sockets[socket.AF_INET]


class FakeNetwork:
    """The slice of netstate.NetworkMonitor the engine reads: ``state.name`` and
    ``is_up()``; a test sets ``state`` to ``FakeNetwork._S("DOWN")`` and back."""

    class _S:
        def __init__(self, name: str) -> None:
            self.name = name

    def __init__(self) -> None:
        self.state = self._S("UP")

    def is_up(self) -> bool:
        return self.state.name != "DOWN"


class ListStore:
    """The slice of ResultStore the engine uses, in memory."""

    def __init__(self) -> None:
        self.results: list[ProbeResult] = []
        self.batches = 0
        self.flushes = 0
        self.chunks = 0  # chunks received through submit_chunks

    def submit(self, results: Iterable[ProbeResult]) -> None:
        self.results.extend(results)
        self.batches += 1

    def submit_chunks(self, items: Iterable[tuple[str, str | None, bytes]]) -> None:
        """The engine's outcome-log chunks, unpacked into results (a test double of
        ResultStore.submit_chunks: the real store keeps them packed)."""
        from fastping import chunk

        for target, address, blob in items:
            self.chunks += 1
            c = chunk.unpack(blob)
            for i in range(len(c)):
                rtt = c.rtt_ms[i]
                self.results.append(
                    ProbeResult(
                        target,
                        address,
                        c.seq[i],
                        chunk.OUTCOME_BY_CODE[c.code[i]],
                        None if rtt != rtt else rtt,
                        c.ttl[i] or None,
                        time=c.t[i],
                    )
                )
        self.batches += 1

    async def flush(self) -> None:
        self.flushes += 1

    def stats(self) -> dict[str, int]:
        return {"queued": 0, "written": len(self.results), "dropped": 0}

    def of(self, target: str) -> list[ProbeResult]:
        return [r for r in self.results if r.target == target]


class CaptureLog:
    """A logger double recording (level, message, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _rec(self, level: str, msg: str, **kw: Any) -> None:
        self.records.append((level, msg, kw))

    def debug(self, msg: str, **kw: Any) -> None:
        self._rec("debug", msg, **kw)

    def info(self, msg: str, **kw: Any) -> None:
        self._rec("info", msg, **kw)

    def warning(self, msg: str, **kw: Any) -> None:
        self._rec("warning", msg, **kw)

    def error(self, msg: str, **kw: Any) -> None:
        self._rec("error", msg, **kw)

    def messages(self, level: str) -> list[str]:
        return [m for lv, m, _ in self.records if lv == level]
