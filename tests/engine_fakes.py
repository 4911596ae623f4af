"""Test doubles for the engine's scheduling tests: a fake IcmpSocket with the core's
event contract, and an in-memory store. Real-socket tests live in test_engine.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any

from fastping.results import ProbeResult

EV_REPLY, EV_TIMEOUT, EV_SEND_ERROR = 0, 1, 4


class FakeIcmpSocket:
    """Answers instantly for live addresses, never for ``dead`` ones, refuses sends to
    ``refuse`` ones with ``refuse_errno`` (as the kernel does with ENETUNREACH)."""

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
        return slot

    def remove_target(self, slot: int) -> None:
        del self.slots[slot]
        self._free.append(slot)
        self.removed.append(slot)
        for k in [k for k in self._outstanding if k[0] == slot]:
            del self._outstanding[k]

    def send(self, slots: Iterable[int]) -> list[tuple[Any, ...]]:
        slots = list(slots)
        self.send_batches.append(len(slots))
        now = time.monotonic()
        errs = []
        for s in slots:
            addr = self.slots[s]
            seq = self._seq[s] = (self._seq[s] + 1) & 0xFFFF
            self.sends.append((now, addr))
            if addr in self.refuse:
                errs.append((s, EV_SEND_ERROR, seq, 0, 0, 0, 0, None, self.refuse_errno))
            elif addr in self.dead:
                if sum(1 for k in self._outstanding if k[0] == s) >= self.window:
                    raise AssertionError(f"window {self.window} exceeded for {addr}")
                self._outstanding[(s, seq)] = now
            else:
                self._pending.append((s, EV_REPLY, seq, self.rtt_ns, 64, 0, 0, None, 0))
        return errs

    def recv(self, max_packets: int = 0) -> list[tuple[Any, ...]]:
        out, self._pending = self._pending, []
        return out

    def expire(self, timeout_s: float) -> list[tuple[Any, ...]]:
        now = time.monotonic()
        out = []
        for (s, seq), t0 in list(self._outstanding.items()):
            if now - t0 >= timeout_s:
                del self._outstanding[(s, seq)]
                out.append((s, EV_TIMEOUT, seq, 0, 0, 0, 0, None, 0))
        return out

    def totals(self) -> dict[str, int]:
        return {"rx_drops": 0, "enobufs": 0}


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


class ListStore:
    """The slice of ResultStore the engine uses, in memory."""

    def __init__(self) -> None:
        self.results: list[ProbeResult] = []
        self.batches = 0
        self.flushes = 0

    def submit(self, results: Iterable[ProbeResult]) -> None:
        self.results.extend(results)
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
