"""The engine's events (what ``MonitoringEngine.subscribe()`` delivers) and the
``Subscription`` queue that delivers them: bounded, drop-oldest, never waited on by
the engine (see the engine's docstring, "Subscribers")."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..loss import OutageEvent
from ..pathwatch import PathChange
from ..results import ProbeResult


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """One probe result (also stored)."""

    result: ProbeResult


@dataclass(frozen=True, slots=True)
class TargetAdded:
    target: str
    interval_s: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TargetRemoved:
    target: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A target's status changed (``target`` set) or the engine's (``target`` None:
    ``what`` is ``"network"`` or ``"throttle"``)."""

    target: str | None
    what: str
    old: str
    new: str
    reason: str = ""
    time: float = 0.0


# OutageEvent (fastping.loss): a target's outage (or our own network's) started / ended;
# PathChange (fastping.pathwatch): a target's traced path changed (trace_every_s)
EngineEvent = ResultEvent | TargetAdded | TargetRemoved | StateChanged | OutageEvent | PathChange


class _Unsubscribes(Protocol):
    """The engine side of a subscription: ``close()`` takes it off the engine."""

    def _unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """A bounded, drop-oldest queue of engine events; an async iterator.

    ``dropped`` counts events lost because the subscriber read too slowly. Iteration
    ends when the engine stops or ``close()`` is called.
    """

    def __init__(self, engine: _Unsubscribes, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize}: a subscription needs room for >= 1 event")
        self.maxsize = maxsize
        self.dropped = 0
        self.delivered = 0
        self._q: deque[EngineEvent] = deque(maxlen=maxsize)
        self._engine = engine
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _put_many(self, events: Sequence[EngineEvent]) -> None:
        if self._closed:
            return
        q = self._q
        over = len(q) + len(events) - self.maxsize
        if over > 0:
            self.dropped += over
        q.extend(events)  # maxlen: the deque itself pushes the oldest out, in C
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _end(self) -> None:
        self._closed = True
        self._wake()

    def close(self) -> None:
        """Stop receiving events (queued ones can still be read)."""
        self._engine._unsubscribe(self)
        self._end()

    def __len__(self) -> int:
        return len(self._q)

    def get_nowait(self) -> EngineEvent | None:
        if self._q:
            self.delivered += 1
            return self._q.popleft()
        return None

    def drain(self) -> list[EngineEvent]:
        """Everything queued now, oldest first."""
        out = list(self._q)
        self._q.clear()
        self.delivered += len(out)
        return out

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self

    async def __anext__(self) -> EngineEvent:
        while not self._q:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.delivered += 1
        return self._q.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
