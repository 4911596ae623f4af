"""MonitoringEngine: watch many targets continuously through one ICMP socket per family.

Shape (see DESIGN.md, "Engine"):

* **One shared socket per family.** Every target is a *slot* of one ``IcmpSocket``
  (AF_INET or AF_INET6), opened lazily by ``probe.open_icmp_socket`` with
  ``window = ceil(timeout_s / min_interval_s) + 1`` so a slot may have as many probes
  outstanding as its interval and the timeout allow.
* **A timing wheel, ticked every ``tick_s`` (10 ms).** Each target has its own
  interval; its first probe is placed at a phase taken from the golden-ratio
  sequence (``i * 0.618... mod 1`` of the interval), which spreads any number of
  targets evenly over the interval, so probes never go out in one burst. On each
  tick every due probe of a family goes out in ONE ``sock.send(slots)`` call
  (sendmmsg batches inside the core). Rescheduling keeps the phase
  (``next = due_tick + interval``), so a late tick does not make targets drift.
* **Replies** are drained with ``sock.recv()`` from ``loop.add_reader`` and right
  after each send (on loopback the reply is queued inside ``sendmmsg`` itself, so
  this saves an epoll wake-up per tick). **Timeouts** come from ``sock.expire``
  every ``expire_every_s``. The engine has ONE timeout for all targets (the config
  has only ``defaults.timeout_s``), so one ``expire`` call per socket suffices.
* **Results** become ``ProbeResult`` once each (per batch, never per packet in the
  core) and go to ``store.submit`` in one list per callback and to subscribers.
* **Subscribers** get events through bounded queues; a full queue loses its
  OLDEST events, counted in ``Subscription.dropped``. Publishing is a deque extend
  and never waits, so a subscriber that never reads cannot slow probing.
* **Names** are resolved in the default executor (``loop.getaddrinfo``) and
  re-resolved every ``resolve_interval_s`` (300 s): getaddrinfo does not expose
  the record's TTL, and reading TTLs would mean shipping our own DNS client, so a
  fixed interval is the honest approximation. A name that does not resolve gives
  an ``Outcome.RESOLVE_ERROR`` result at each of its (backed-off) probe times. A
  name that resolved once and fails to re-resolve keeps its last address (probes
  still tell the truth about it); the failure is logged and counted.
* **Backoff**: after ``backoff_after`` (3) consecutive *local* errors
  (``send_error``, ``resolve_error``) a target's next probe waits
  ``interval x 2^(errors - backoff_after + 1)``, capped at ``max_backoff_s`` (300 s).
  Any probe that left the host (reply, timeout, unreachable, time exceeded) or a
  successful resolution resets it.
* **Resource guard** (``guard.ResourceGuard``): its factor stretches every interval
  while the process is over its CPU / memory limits.
* **Network state**: with a ``network`` monitor whose ``state`` is ``DOWN``, due
  probes are not sent; each becomes an ``Outcome.LOCAL_DOWN`` result, and
  timeouts / send errors of probes in flight are recorded as ``LOCAL_DOWN`` too, so
  our own outage is not booked as the targets' loss.
* **Stopping** (``stop()``, or SIGINT / SIGTERM under ``run()``): no new probes; the
  probes in flight get up to ``timeout_s`` to answer and are then expired, so every
  probe sent has exactly one result; then everything is submitted and the store
  flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# The core's event kinds; the order is OUTCOME_BY_KIND's.
from ._icmp import (
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
)
from .errors import ConfigError, TargetError
from .guard import ResourceGuard
from .results import OUTCOME_BY_KIND, Outcome, ProbeResult

_N_KINDS = len(OUTCOME_BY_KIND)
_tuple_new = tuple.__new__

# (slot, kind, seq, rtt_ns, ttl, icmp_type, icmp_code, router, errno)
CoreEvent = tuple[int, int, int, int, int, int, int, "str | None", int]

DEFAULT_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_TICK_S = 0.010
DEFAULT_RESOLVE_INTERVAL_S = 300.0
DEFAULT_MAX_BACKOFF_S = 300.0
DEFAULT_BACKOFF_AFTER = 3
# A re-resolution that failed for a name with a known address is retried sooner.
_RERESOLVE_RETRY_S = 30.0
_GOLDEN = 0.6180339887498949

# Target status, as the live table and StateChanged events show it.
STATUS_UNKNOWN = "unknown"
STATUS_UP = "up"
STATUS_DOWN = "down"  # timeout / unreachable / time exceeded
STATUS_ERROR = "error"  # local error (send / resolve), possibly backing off
STATUS_LOCAL_DOWN = "local_down"  # our own network is down

_STATUS_BY_KIND = (
    STATUS_UP,
    STATUS_DOWN,
    STATUS_DOWN,
    STATUS_DOWN,
    STATUS_ERROR,
    None,  # duplicate: no change
    None,  # late: no change
)
# Outcomes that prove the probe left the host: they reset the error backoff.
_LEFT_HOST = frozenset((EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE, EV_TIME_EXCEEDED))


# socket counters worth reporting (the core counts them; silent drops look like loss)
_SOCKET_COUNTERS = (
    "rx_drops",
    "enobufs",
    "foreign",
    "malformed",
    "stale",
    "events_lost",
    "socket_errors",
)


class IcmpSocketLike(Protocol):
    """What the engine needs from ``_icmp.IcmpSocket`` (tests use a fake)."""

    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def add_target(self, address: str) -> int: ...
    def remove_target(self, slot: int) -> None: ...
    def send(self, slots: Iterable[int]) -> list[Any]: ...
    def recv(self, max_packets: int = 0) -> list[Any]: ...
    def expire(self, timeout_s: float) -> list[Any]: ...
    def totals(self) -> dict[str, int]: ...


SocketFactory = Callable[[int, int], IcmpSocketLike]  # (family, window) -> socket
Resolver = Callable[[str, int], Awaitable[list[tuple[int, str]]]]  # -> [(family, address)]
# Called with every batch of results, in the event loop, before the store gets them.
Observer = Callable[[Sequence[ProbeResult]], None]


# ---------------------------------------------------------------------------------
# events


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


EngineEvent = ResultEvent | TargetAdded | TargetRemoved | StateChanged


class Subscription:
    """A bounded, drop-oldest queue of engine events; an async iterator.

    ``dropped`` counts events lost because the subscriber read too slowly. Iteration
    ends when the engine stops or ``close()`` is called.
    """

    def __init__(self, engine: MonitoringEngine, maxsize: int) -> None:
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


# ---------------------------------------------------------------------------------
# per-target state


class _Target:
    __slots__ = (
        "host",
        "labels",
        "interval_s",
        "interval_ticks",
        "timeout_s",
        "timeout_ns",
        "is_name",
        "address",
        "family",
        "slot",
        "due_tick",
        "removed",
        "errors",
        "status",
        "done",
        "received",
        "last_rtt_ms",
        "last_outcome",
        "last_errno",
        "resolving",
        "resolve_failed",
        "next_resolve_at",
        "added_at",
    )

    def __init__(self, host: str, interval_s: float, labels: dict[str, str], is_name: bool):
        self.host = host
        self.labels = labels
        self.interval_s = interval_s
        self.interval_ticks = 1
        self.timeout_s = 0.0
        self.timeout_ns = 0
        self.is_name = is_name
        self.address: str | None = None
        self.family = 0
        self.slot: int | None = None
        self.due_tick = -1  # -1: not scheduled
        self.removed = False
        self.errors = 0  # consecutive local errors
        self.status = STATUS_UNKNOWN
        self.done = 0  # probes with a final outcome (not duplicates / late)
        self.received = 0
        self.last_rtt_ms: float | None = None
        self.last_outcome: Outcome | None = None
        self.last_errno: int | None = None
        self.resolving = False
        self.resolve_failed = False
        self.next_resolve_at = 0.0
        self.added_at = time.time()


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """A snapshot of one target, for tables and metrics."""

    host: str
    address: str | None
    interval_s: float
    labels: dict[str, str]
    status: str
    probes: int  # probes with a final outcome
    received: int
    last_rtt_ms: float | None
    last_outcome: str | None
    consecutive_errors: int
    backoff_s: float | None  # current backoff delay, None when not backing off

    @property
    def loss(self) -> float | None:
        return None if self.probes == 0 else (self.probes - self.received) / self.probes


# ---------------------------------------------------------------------------------
# the engine


def _default_socket_factory(mode: str, socket_options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from .probe import open_icmp_socket

        sock: IcmpSocketLike = open_icmp_socket(family, mode=mode, window=window, **socket_options)
        return sock

    return open_socket


async def _default_resolver(host: str, family: int) -> list[tuple[int, str]]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_RAW)
    out = [(int(fam), str(sa[0])) for fam, _, _, _, sa in infos]
    # prefer IPv4 when the caller did not choose, as ping does
    out.sort(key=lambda fa: 0 if fa[0] == socket.AF_INET else 1)
    return out


def _network_is_down(network: Any) -> bool:
    st = getattr(network, "state", None)
    name = getattr(st, "name", st)
    return str(name).upper() == "DOWN"


def _get_logger() -> Any:
    try:
        from .logs import get_logger

        return get_logger("fastping.engine")
    except ImportError:  # logs.py lands with the store branch
        import structlog

        return structlog.get_logger("fastping.engine")


class MonitoringEngine:
    """Probe every target on its own interval through one socket per family.

    ``store`` is anything with ``submit(iterable_of_ProbeResult)`` and ``async
    flush()`` (``store.ResultStore``); the engine submits and flushes but does not
    start or close it. ``network`` is an optional ``netstate.NetworkMonitor``.
    ``guard`` is a ``ResourceGuard`` (``None``: the spec's defaults, 5 % / 100 MB;
    pass ``ResourceGuard(None, None)`` to disable).
    """

    def __init__(
        self,
        targets: Iterable[str] = (),
        *,
        store: Any = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        min_interval_s: float | None = None,
        max_timeout_s: float | None = None,
        mode: str = "auto",
        family: int | None = None,
        socket_options: dict[str, Any] | None = None,
        tick_s: float = DEFAULT_TICK_S,
        expire_every_s: float | None = None,
        resolve_interval_s: float = DEFAULT_RESOLVE_INTERVAL_S,
        backoff_after: int = DEFAULT_BACKOFF_AFTER,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        guard: ResourceGuard | None = None,
        network: Any = None,
        socket_factory: SocketFactory | None = None,
        resolver: Resolver | None = None,
        logger: Any = None,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"interval_s={interval_s!r}: give a positive number of seconds")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s={timeout_s!r}: give a positive number of seconds")
        if not tick_s > 0 or tick_s > 1.0:
            raise ConfigError(f"tick_s={tick_s!r}: give a tick between 0 and 1 s (10 ms is usual)")
        if mode not in ("auto", "raw", "dgram"):
            raise ConfigError(
                f"mode={mode!r}: the monitoring engine needs a socket, use 'auto', 'raw' or "
                "'dgram' ('subprocess' cannot multiplex thousands of targets)"
            )
        if family not in (None, socket.AF_INET, socket.AF_INET6):
            raise ConfigError(f"family={family!r}: use socket.AF_INET, socket.AF_INET6 or None")
        if backoff_after < 1:
            raise ConfigError(f"backoff_after={backoff_after!r}: must be at least 1")
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.tick_s = float(tick_s)
        self.min_interval_s = float(min_interval_s if min_interval_s is not None else interval_s)
        self.max_timeout_s = float(max_timeout_s if max_timeout_s is not None else timeout_s)
        if self.max_timeout_s < self.timeout_s:
            raise ConfigError(
                f"max_timeout_s={self.max_timeout_s!r} is shorter than timeout_s={self.timeout_s!r}"
            )
        if self.min_interval_s < self.tick_s:
            raise ConfigError(
                f"min_interval_s={self.min_interval_s!r} is shorter than the tick ({self.tick_s} s)"
            )
        self.expire_every_s = (
            float(expire_every_s)
            if expire_every_s is not None
            else max(self.tick_s, min(0.05, self.max_timeout_s / 10))
        )
        self.resolve_interval_s = float(resolve_interval_s)
        self.backoff_after = int(backoff_after)
        self.max_backoff_s = float(max_backoff_s)
        self.mode = mode
        self.family = family
        self.store = store
        self.network = network
        self._log = logger if logger is not None else _get_logger()
        self.guard = guard if guard is not None else ResourceGuard(logger=self._log)
        if self.guard._log is None:
            self.guard._log = self._log
        self._socket_factory = socket_factory or _default_socket_factory(
            mode, dict(socket_options or {})
        )
        self._resolver = resolver or _default_resolver
        # window: probes a slot may have in flight (interval shorter than the timeout)
        self.window = math.ceil(self.max_timeout_s / self.min_interval_s) + 1

        self._targets: dict[str, _Target] = {}
        self._sockets: dict[int, IcmpSocketLike] = {}
        self._slot_maps: dict[int, list[_Target | None]] = {}
        self._socket_errors: dict[int, tuple[int | None, str]] = {}
        self._wheel: dict[int, list[_Target]] = {}
        self._phase_n = 0
        self._subs: list[Subscription] = []
        self._observers: list[Observer] = []
        self._out: list[ProbeResult] = []  # results of the current callback
        self._evs: list[EngineEvent] = []  # non-result events of the current callback

        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._stopping = False
        self._t0 = 0.0
        self._cur_tick = 0
        self._next_tick_at = 0.0
        self._next_expire_at = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested: asyncio.Event | None = None
        self._net_down = False
        self._factor = 1.0
        self._started_wall = 0.0

        # counters
        self._kind_counts = [0] * _N_KINDS
        self._local_down = 0
        self._timeouts_local_down = 0
        self._resolve_errors = 0
        self._reresolve_failures = 0
        self._sent = 0  # probes the kernel accepted
        self._send_calls = 0
        self._orphan_events = 0
        self._results = 0
        self._submitted_batches = 0
        self._store_errors = 0
        self._observer_errors = 0
        self._ticks = 0
        self._lag_max_s = 0.0
        self._lag_sum_s = 0.0
        self._lag_last_s = 0.0
        self._closed_socket_totals: dict[str, int] = {}

        for t in targets:
            self.add_target(t)

    # -- targets ---------------------------------------------------------------

    def add_target(
        self,
        host: str,
        interval_s: float | None = None,
        labels: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Start watching ``host`` (an address or a host name), before or while running.

        ``timeout_s`` (default: the engine's) may differ per target, up to the engine's
        ``max_timeout_s``: the socket expires probes at ``max_timeout_s`` and a reply
        slower than the target's own timeout is recorded as a timeout, so outcomes are
        exact per target; only a short-timeout target's timeouts are reported late.

        Raises TargetError when ``host`` is malformed, a block / range (add its
        addresses one by one), already watched, or asks for an interval the
        socket window cannot serve.
        """
        from .targets import Address, Name, parse_target

        specs = parse_target(host)
        if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
            raise TargetError(
                f"target {host!r} is a block or range: the engine watches single hosts, "
                "add its addresses one at a time"
            )
        spec = specs[0]
        key = spec.label if isinstance(spec, Address) else spec.name
        if key in self._targets:
            raise TargetError(f"target {key!r} is already being watched")
        iv = self.interval_s if interval_s is None else float(interval_s)
        if not iv > 0:
            raise TargetError(f"target {key!r}: interval_s={interval_s!r} must be positive")
        if iv < self.min_interval_s:
            raise TargetError(
                f"target {key!r}: interval {iv:g} s is shorter than this engine's minimum "
                f"({self.min_interval_s:g} s, which sizes the socket window); create the engine "
                f"with min_interval_s={iv:g}"
            )
        if isinstance(spec, Address) and self.family not in (None, spec.family):
            raise TargetError(f"target {key!r} is not of the family this engine was limited to")
        to = self.timeout_s if timeout_s is None else float(timeout_s)
        if not 0 < to <= self.max_timeout_s:
            raise TargetError(
                f"target {key!r}: timeout {to:g} s must be positive and at most this engine's "
                f"max_timeout_s ({self.max_timeout_s:g} s); create the engine with "
                f"max_timeout_s={to:g}"
            )
        t = _Target(key, iv, dict(labels or {}), isinstance(spec, Name))
        t.interval_ticks = max(1, round(iv / self.tick_s))
        t.timeout_s = to
        t.timeout_ns = int(to * 1e9)
        if isinstance(spec, Address):
            t.address = spec.address
            t.family = spec.family
        self._targets[key] = t
        self._evs.append(TargetAdded(key, iv, dict(t.labels)))
        if self._running:
            self._activate(t)
            self._publish()
        self._log.debug("target added", target=key, interval_s=iv)

    def remove_target(self, host: str) -> None:
        """Stop watching ``host``. Probes already in flight still get their result
        (the slot is freed ``timeout_s`` later)."""
        t = self._targets.pop(host, None)
        if t is None:
            raise TargetError(f"target {host!r} is not being watched (see engine.targets())")
        t.removed = True
        t.due_tick = -1
        self._evs.append(TargetRemoved(host))
        if t.slot is not None:
            self._free_slot_later(t.family, t.slot)
            t.slot = None
        if self._running:
            self._publish()
        self._log.debug("target removed", target=host)

    def targets(self) -> list[TargetInfo]:
        return [self._info(t) for t in self._targets.values()]

    def target(self, host: str) -> TargetInfo:
        t = self._targets.get(host)
        if t is None:
            raise TargetError(f"target {host!r} is not being watched")
        return self._info(t)

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, host: object) -> bool:
        return host in self._targets

    def _info(self, t: _Target) -> TargetInfo:
        b = self._backoff_s(t)
        return TargetInfo(
            t.host,
            t.address,
            t.interval_s,
            dict(t.labels),
            t.status,
            t.done,
            t.received,
            t.last_rtt_ms,
            None if t.last_outcome is None else t.last_outcome.value,
            t.errors,
            b,
        )

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """Events from now on (results, targets added / removed, state changes)
        through a queue of ``maxsize`` that drops the oldest when full."""
        sub = Subscription(self, maxsize)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def add_observer(self, fn: Observer) -> None:
        """Call ``fn(results)`` with every batch of results, synchronously in the event
        loop (metrics count them there). Unlike a subscription nothing is ever dropped,
        so ``fn`` must be quick and must neither keep nor change the sequence; an
        exception it raises is counted (``stats()["observer_errors"]``) and logged."""
        self._observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        with contextlib.suppress(ValueError):
            self._observers.remove(fn)

    # -- life cycle --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_requested = asyncio.Event()
        self._running = True
        self._stopping = False
        self._started_wall = time.time()
        self._t0 = loop.time()
        self._cur_tick = 0
        self._next_expire_at = self._t0 + self.expire_every_s
        # open the sockets the initial targets need up front, so a permission
        # problem shows at once (each family's failure is still per-target below)
        for fam in {t.family for t in self._targets.values() if t.family}:
            self._ensure_socket(fam)
        for t in list(self._targets.values()):
            self._activate(t)
        if self.guard.enabled:
            self.guard.prime()
            self._spawn(self._guard_loop())
        self._spawn(self._resolve_loop())
        self._net_down = self.network is not None and _network_is_down(self.network)
        self._next_tick_at = self._t0 + self.tick_s
        self._tick_handle = loop.call_at(self._next_tick_at, self._on_tick)
        self._publish()
        self._log.info(
            "monitoring started",
            targets=len(self._targets),
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            window=self.window,
        )

    def request_stop(self) -> None:
        """Ask ``run()`` to stop (what SIGINT / SIGTERM do)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self, duration_s: float | None = None, *, handle_signals: bool = True) -> None:
        """Start, run until ``duration_s`` passes or SIGINT / SIGTERM arrives, stop."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread: the caller handles signals
        try:
            assert self._stop_requested is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), duration_s)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def stop(self) -> None:
        """Stop probing, let probes in flight finish (up to ``timeout_s``), record
        every outstanding result, flush the store and end the subscriptions."""
        if not self._running or self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # linger: replies keep arriving through the readers
        deadline = loop.time() + self.max_timeout_s + self.expire_every_s
        while self.outstanding > 0 and loop.time() < deadline:
            await asyncio.sleep(min(0.01, self.tick_s))
            self._drain_all(self.max_timeout_s)
        # what is still out after the full timeout is a timeout (expire(0) takes all)
        self._drain_all(0.0)
        self._closed_socket_totals = self._socket_totals()
        for fam, sock in list(self._sockets.items()):
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            with contextlib.suppress(Exception):
                sock.close()
            del self._sockets[fam]
        self._slot_maps.clear()
        for t in self._targets.values():
            t.slot = None
            t.due_tick = -1
        self._wheel.clear()
        self._running = False
        if self.store is not None:
            try:
                await self.store.flush()
            except Exception as e:  # the store counts and logs its own failures
                self._store_errors += 1
                self._log.error("store flush failed at stop", error=str(e))
        for sub in list(self._subs):
            sub._end()
        self._subs.clear()
        self._log.info(
            "monitoring stopped",
            sent=self._sent,
            results=self._results,
            received=self._kind_counts[EV_REPLY],
        )

    async def __aenter__(self) -> MonitoringEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sockets -----------------------------------------------------------------

    def _ensure_socket(self, family: int) -> IcmpSocketLike | None:
        sock = self._sockets.get(family)
        if sock is not None:
            return sock
        try:
            sock = self._socket_factory(family, self.window)
        except Exception as e:  # PermissionDenied, EAFNOSUPPORT, ...
            err = getattr(e, "errno", None)
            if self._socket_errors.get(family, (None, ""))[1] != str(e):
                fam = "IPv6" if family == socket.AF_INET6 else "IPv4"
                self._log.error(f"cannot open the {fam} ICMP socket: {e}", errno=err)
            self._socket_errors[family] = (err, str(e))
            return None
        self._socket_errors.pop(family, None)
        self._sockets[family] = sock
        self._slot_maps[family] = []
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable, family)
        return sock

    def _attach(self, t: _Target) -> bool:
        """Give ``t`` a slot in its family's socket; False if the socket is unavailable."""
        assert t.address is not None
        sock = self._ensure_socket(t.family)
        if sock is None:
            return False
        slot = sock.add_target(t.address)
        smap = self._slot_maps[t.family]
        if slot >= len(smap):
            smap.extend([None] * (slot + 1 - len(smap)))
        smap[slot] = t
        t.slot = slot
        return True

    def _free_slot_later(self, family: int, slot: int) -> None:
        # Replies and timeouts for probes in flight still map to the target until
        # they are all in; only then is the slot given back (and maybe reused).
        if self._loop is None or not self._running:
            return
        self._loop.call_later(
            self.max_timeout_s + 2 * self.expire_every_s, self._free_slot, family, slot
        )

    def _free_slot(self, family: int, slot: int) -> None:
        sock = self._sockets.get(family)
        smap = self._slot_maps.get(family)
        if sock is None or smap is None or slot >= len(smap):
            return
        t = smap[slot]
        if t is not None and not t.removed and t.slot == slot:
            return  # reused meanwhile (cannot happen before the free, but be safe)
        # expire what is still out for this slot, then free it
        self._handle(family, sock.expire(self.max_timeout_s))
        smap[slot] = None
        sock.remove_target(slot)
        self._flush_out()

    # -- scheduling ---------------------------------------------------------------

    def _activate(self, t: _Target) -> None:
        """Put ``t`` on the wheel at its phase (and resolve it if it is a name)."""
        self._phase_n += 1
        frac = (self._phase_n * _GOLDEN) % 1.0
        self._schedule(t, self._cur_tick + 1 + int(frac * t.interval_ticks))
        if t.address is not None and t.slot is None:
            self._attach(t)  # failure: the due probe records SEND_ERROR and retries
        elif t.is_name and t.address is None:
            self._start_resolve(t)

    def _schedule(self, t: _Target, tick: int) -> None:
        t.due_tick = tick
        b = self._wheel.get(tick)
        if b is None:
            self._wheel[tick] = [t]
        else:
            b.append(t)

    def _backoff_s(self, t: _Target) -> float | None:
        n = t.errors - self.backoff_after
        if n < 0:
            return None
        return min(self.max_backoff_s, t.interval_s * (2.0 ** min(n + 1, 30)))

    def _reset_errors(self, t: _Target) -> None:
        backing_off = t.errors >= self.backoff_after
        t.errors = 0
        if backing_off and not t.removed and self._running and t.due_tick >= 0:
            # the next probe was placed at the backed-off delay: bring it back
            nt = self._cur_tick + t.interval_ticks
            if nt < t.due_tick:
                self._schedule(t, nt)

    def _apply_backoff(self, t: _Target) -> None:
        b = self._backoff_s(t)
        if b is None or t.removed or not self._running:
            return
        if t.errors == self.backoff_after:
            self._log.warning(
                "target backing off after repeated local errors",
                target=t.host,
                errors=t.errors,
                outcome=None if t.last_outcome is None else t.last_outcome.value,
                errno=t.last_errno,
                max_backoff_s=self.max_backoff_s,
            )
        self._schedule(t, self._cur_tick + max(1, round(b * self._factor / self.tick_s)))

    def _on_tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = now - self._next_tick_at
        self._ticks += 1
        self._lag_last_s = lag
        self._lag_sum_s += lag
        if lag > self._lag_max_s:
            self._lag_max_s = lag
        cur = int((now - self._t0) / self.tick_s)
        prev = self._cur_tick
        self._cur_tick = cur
        self._check_network()
        try:
            self._send_due(prev, cur, now)
            if now >= self._next_expire_at:
                self._next_expire_at = now + self.expire_every_s
                self._drain_all(self.max_timeout_s)
            self._flush_out()
        finally:
            if self._running and not self._stopping:
                self._next_tick_at = self._t0 + (cur + 1) * self.tick_s
                self._tick_handle = loop.call_at(self._next_tick_at, self._on_tick)

    def _step(self, t: _Target, factor: float) -> int:
        """Ticks to the next probe of ``t``: its interval, stretched by the guard's
        factor, or its backoff delay."""
        if t.errors >= self.backoff_after:
            b = self._backoff_s(t)
            assert b is not None
            return max(1, round(b * factor / self.tick_s))
        return max(1, round(t.interval_ticks * factor))

    def _send_due(self, prev: int, cur: int, now: float) -> None:
        # The per-target loop below is the engine's only per-probe work besides
        # turning events into results: keep it to attribute reads and appends.
        wheel = self._wheel
        factor = self._factor
        plain = factor == 1.0
        backoff_after = self.backoff_after
        v4: list[int] = []
        v6: list[int] = []
        unattached: list[_Target] = []
        last_nt = -1
        last_list: list[_Target] = []
        for tk in range(prev + 1, cur + 1):
            bucket = wheel.pop(tk, None)
            if not bucket:
                continue
            for t in bucket:
                if t.due_tick != tk:
                    continue  # rescheduled (backoff) or removed: a stale entry
                if plain and t.errors < backoff_after:
                    step = t.interval_ticks
                else:
                    step = self._step(t, factor)
                nt = tk + step
                if nt <= cur:
                    # the loop stalled for more than an interval: skip the missed
                    # rounds but keep the phase, or every target would pile into one
                    # tick and go out in one burst from then on
                    nt += ((cur - nt) // step + 1) * step
                t.due_tick = nt
                if nt != last_nt:  # most targets of a bucket share an interval
                    got = wheel.get(nt)
                    if got is None:
                        got = wheel[nt] = []
                    last_list = got
                    last_nt = nt
                last_list.append(t)
                slot = t.slot
                if slot is None:
                    unattached.append(t)
                elif t.family == socket.AF_INET:
                    v4.append(slot)
                else:
                    v6.append(slot)
        due: dict[int, list[int]] = {}
        if v4:
            due[socket.AF_INET] = v4
        if v6:
            due[socket.AF_INET6] = v6
        wall = time.time()
        if self._net_down:
            # our own network is down: record, do not send
            out = self._out
            for slots in due.values():
                self._local_down += len(slots)
            for fam, slots in due.items():
                smap = self._slot_maps[fam]
                for slot in slots:
                    t2 = smap[slot]
                    assert t2 is not None
                    out.append(ProbeResult(t2.host, t2.address, -1, Outcome.LOCAL_DOWN, time=wall))
                    self._note(t2, Outcome.LOCAL_DOWN, STATUS_LOCAL_DOWN)
            for t in unattached:
                if t.address is not None:
                    self._local_down += 1
                    out.append(ProbeResult(t.host, t.address, -1, Outcome.LOCAL_DOWN, time=wall))
                    self._note(t, Outcome.LOCAL_DOWN, STATUS_LOCAL_DOWN)
            return
        for fam, slots in due.items():
            sock = self._sockets[fam]
            self._send_calls += 1
            self._sent += len(slots)  # refused ones are taken back in _handle
            # the core drains the socket after each sendmmsg batch: the events
            # returned are send errors AND replies (on loopback the reply is queued
            # inside sendmmsg); one recv() more takes what came in meanwhile
            self._handle(fam, sock.send(slots))
            self._handle(fam, sock.recv())
        for t in unattached:
            self._probe_unattached(t, wall)

    def _probe_unattached(self, t: _Target, wall: float) -> None:
        """A due probe for a target without a slot: unresolved name or no socket."""
        if t.address is None:
            if t.resolving:
                return  # first resolution still running: nothing to report yet
            if t.resolve_failed:
                self._start_resolve(t)  # the attempt is the probe; it reports
            return
        if self._attach(t):
            sock = self._sockets[t.family]
            assert t.slot is not None
            self._send_calls += 1
            self._sent += 1
            self._handle(t.family, sock.send([t.slot]))
            return
        err, msg = self._socket_errors.get(t.family, (None, "socket unavailable"))
        self._kind_counts[EV_SEND_ERROR] += 1
        self._out.append(
            ProbeResult(t.host, t.address, -1, Outcome.SEND_ERROR, errno=err, time=wall)
        )
        t.done += 1
        t.errors += 1
        t.last_errno = err
        self._note(t, Outcome.SEND_ERROR, STATUS_ERROR, msg)
        self._apply_backoff(t)

    # -- events ------------------------------------------------------------------

    def _on_readable(self, family: int) -> None:
        sock = self._sockets.get(family)
        if sock is None:
            return
        self._handle(family, sock.recv())
        self._flush_out()

    def _drain_all(self, timeout_s: float) -> None:
        for fam, sock in list(self._sockets.items()):
            self._handle(fam, sock.recv())
            self._handle(fam, sock.expire(timeout_s))
        self._flush_out()

    def _handle(self, family: int, events: Sequence[CoreEvent]) -> None:
        """Core events -> ProbeResult (+ per-target state)."""
        if not events:
            return
        smap = self._slot_maps.get(family)
        if smap is None:
            self._orphan_events += len(events)
            return
        n_map = len(smap)
        out = self._out
        append = out.append
        counts = self._kind_counts
        wall = time.time()
        # Locals for the hot path (one pass per reply, 10,000 a second at the issue-4
        # benchmark): no global or attribute look-ups, and ProbeResult built with
        # tuple.__new__ (what its generated __new__ does, minus a Python-level call).
        new_result = _tuple_new
        result_cls = ProbeResult
        reply = Outcome.REPLY
        ev_reply = EV_REPLY
        replies = 0
        try:
            for slot, kind, seq, rtt_ns, ttl, itype, icode, router, err in events:
                t = smap[slot] if slot < n_map else None
                if t is None:
                    self._orphan_events += 1
                    continue
                if kind == ev_reply and rtt_ns <= t.timeout_ns:  # the hot path
                    rtt_ms = rtt_ns / 1e6
                    replies += 1
                    append(
                        new_result(
                            result_cls,
                            # the core gives None when it has no TTL
                            (
                                t.host,
                                t.address,
                                seq,
                                reply,
                                rtt_ms,
                                ttl or None,
                                itype,
                                icode,
                                None,
                                None,
                                wall,
                            ),
                        )  # fmt: skip
                    )
                    t.done += 1
                    t.received += 1
                    t.last_rtt_ms = rtt_ms
                    t.last_outcome = reply
                    if t.errors:
                        self._reset_errors(t)
                    if t.status != STATUS_UP:
                        self._set_status(t, STATUS_UP, "reply")
                    continue
                self._handle_other(t, kind, seq, rtt_ns, ttl, itype, icode, router, err, wall)
        finally:
            counts[EV_REPLY] += replies

    def _handle_other(
        self,
        t: _Target,
        kind: int,
        seq: int,
        rtt_ns: int,
        ttl: int | None,
        itype: int | None,
        icode: int | None,
        router: str | None,
        err: int | None,
        wall: float,
    ) -> None:
        """Every event but a timely reply: timeouts, errors, duplicates, late replies."""
        counts = self._kind_counts
        out = self._out
        if kind == EV_REPLY:  # slower than this target's own timeout
            kind = EV_TIMEOUT
        outcome = OUTCOME_BY_KIND[kind]
        status = _STATUS_BY_KIND[kind]
        if kind == EV_SEND_ERROR:
            self._sent -= 1  # counted as sent when handed to send()
        if self._net_down and kind in (EV_TIMEOUT, EV_SEND_ERROR):
            outcome = Outcome.LOCAL_DOWN
            status = STATUS_LOCAL_DOWN
            self._local_down += 1
            if kind == EV_TIMEOUT:
                self._timeouts_local_down += 1
        else:
            counts[kind] += 1
        is_icmp = kind in (EV_UNREACHABLE, EV_TIME_EXCEEDED)
        rtt = rtt_ns / 1e6 if kind in (EV_DUPLICATE, EV_LATE) and rtt_ns > 0 else None
        out.append(
            ProbeResult(
                t.host,
                t.address,
                seq,
                outcome,
                rtt,
                (ttl or None) if is_icmp or rtt is not None else None,
                itype if is_icmp or rtt is not None else None,
                icode if is_icmp or rtt is not None else None,
                router if is_icmp else None,
                err or None,
                wall,
            )
        )
        if kind in (EV_DUPLICATE, EV_LATE):
            return  # extra events: counted apart, no state change
        t.done += 1
        if outcome is Outcome.LOCAL_DOWN:
            self._note(t, outcome, STATUS_LOCAL_DOWN)
            return
        if kind in _LEFT_HOST:
            if t.errors:
                self._reset_errors(t)
        else:  # send error: local
            t.errors += 1
            t.last_errno = err or None
        assert status is not None
        self._note(t, outcome, status, f"errno {err}" if err else outcome.value)
        if kind == EV_SEND_ERROR:
            self._apply_backoff(t)

    def _note(self, t: _Target, outcome: Outcome, status: str, reason: str = "") -> None:
        t.last_outcome = outcome
        if t.status != status:
            self._set_status(t, status, reason or outcome.value)

    def _set_status(self, t: _Target, status: str, reason: str) -> None:
        old = t.status
        t.status = status
        self._evs.append(StateChanged(t.host, "status", old, status, reason, time.time()))
        self._log.info("target state changed", target=t.host, old=old, new=status, reason=reason)

    def _flush_out(self) -> None:
        """Hand this callback's results to the store and the subscribers."""
        out = self._out
        if out:
            self._out = []
            self._results += len(out)
            for fn in self._observers:
                try:
                    fn(out)
                except Exception as e:  # an observer must not stop probing; count it
                    self._observer_errors += 1
                    if self._observer_errors == 1 or self._observer_errors % 1000 == 0:
                        self._log.error(
                            "result observer failed", error=repr(e), count=self._observer_errors
                        )
            if self.store is not None:
                try:
                    self.store.submit(out)
                    self._submitted_batches += 1
                except Exception as e:  # never let the store stop probing; count it
                    self._store_errors += 1
                    self._log.error("store rejected a batch", error=str(e), results=len(out))
            if self._subs:
                evs: list[EngineEvent] = [ResultEvent(r) for r in out]
                if self._evs:
                    evs.extend(self._evs)
                    self._evs = []
                for sub in self._subs:
                    sub._put_many(evs)
        self._publish()

    def _publish(self) -> None:
        if self._evs:
            evs = self._evs
            self._evs = []
            for sub in self._subs:
                sub._put_many(evs)

    # -- network state, resolution, guard ---------------------------------------

    def _check_network(self) -> None:
        if self.network is None:
            return
        down = _network_is_down(self.network)
        if down != self._net_down:
            self._net_down = down
            old, new = ("up", "down") if down else ("down", "up")
            self._evs.append(
                StateChanged(None, "network", old, new, "network monitor", time.time())
            )
            if down:
                self._log.warning(
                    "our own network is down: probes are recorded as local_down, not as loss"
                )
            else:
                self._log.info("our own network is back: probing resumes")

    def _start_resolve(self, t: _Target) -> None:
        if t.resolving or t.removed or self._loop is None or self._stopping:
            return
        t.resolving = True
        self._spawn(self._resolve(t))

    async def _resolve(self, t: _Target) -> None:
        try:
            try:
                addrs = await self._resolver(t.host, self.family or 0)
                if not addrs:
                    raise OSError(f"no address for {t.host!r}")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # gaierror, UnicodeError, OSError
                self._resolve_failed(t, e)
                return
            fam, addr = addrs[0]
            t.resolve_failed = False
            t.next_resolve_at = time.monotonic() + self.resolve_interval_s
            if t.removed:
                return
            if addr != t.address:
                if t.slot is not None:
                    self._free_slot_later(t.family, t.slot)
                    t.slot = None
                old = t.address
                t.address, t.family = addr, fam
                if self._running and not self._stopping:
                    self._attach(t)
                if old is not None:
                    self._log.info("target address changed", target=t.host, old=old, new=addr)
            if t.errors and t.last_outcome is Outcome.RESOLVE_ERROR:
                self._reset_errors(t)
        finally:
            t.resolving = False

    def _resolve_failed(self, t: _Target, e: BaseException) -> None:
        msg = getattr(e, "strerror", None) or str(e)
        if t.address is not None:
            # keep probing the last known address; try again sooner than usual
            self._reresolve_failures += 1
            t.next_resolve_at = time.monotonic() + min(self.resolve_interval_s, _RERESOLVE_RETRY_S)
            self._log.warning(
                "re-resolving failed; still probing the last address",
                target=t.host,
                address=t.address,
                error=msg,
            )
            return
        t.resolve_failed = True
        t.next_resolve_at = float("inf")  # retried at its probe times (backed off)
        if t.removed or self._stopping:
            return
        self._resolve_errors += 1
        err = getattr(e, "errno", None)
        self._out.append(
            ProbeResult(
                t.host,
                None,
                -1,
                Outcome.RESOLVE_ERROR,
                errno=err if isinstance(err, int) else None,
                time=time.time(),
            )
        )
        t.done += 1
        t.errors += 1
        self._note(t, Outcome.RESOLVE_ERROR, STATUS_ERROR, f"cannot resolve: {msg}")
        self._apply_backoff(t)
        self._flush_out()

    async def _resolve_loop(self) -> None:
        step = max(0.1, min(5.0, self.resolve_interval_s / 10))
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for t in list(self._targets.values()):
                if (
                    t.is_name
                    and not t.resolving
                    and t.address is not None
                    and t.next_resolve_at <= now
                ):
                    self._start_resolve(t)

    async def _guard_loop(self) -> None:
        g = self.guard
        while True:
            await asyncio.sleep(g.check_interval_s)
            old = self._factor
            try:
                new = g.check()
            except Exception as e:  # psutil trouble must not stop monitoring
                self._log.error("resource check failed", error=str(e))
                continue
            if new != old:
                self._factor = new
                self._evs.append(
                    StateChanged(
                        None, "throttle", f"x{old:g}", f"x{new:g}", "resource guard", time.time()
                    )
                )
                self._publish()

    # -- numbers -----------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Probes sent that have no final outcome yet."""
        c = self._kind_counts
        finals = c[EV_REPLY] + c[EV_TIMEOUT] + c[EV_UNREACHABLE] + c[EV_TIME_EXCEEDED]
        # timeouts of sent probes recorded as local_down completed them too
        return self._sent - finals - self._timeouts_local_down

    def _socket_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sock in self._sockets.values():
            try:
                for k, v in sock.totals().items():
                    if k in _SOCKET_COUNTERS:
                        out[k] = out.get(k, 0) + int(v)
            except Exception:  # a fake or closed socket
                pass
        return out

    @property
    def interval_factor(self) -> float:
        return self._factor

    def stats(self) -> dict[str, Any]:
        """Counters for logs and metrics."""
        c = self._kind_counts
        loop_time = self._loop.time() if self._loop is not None else 0.0
        sock_totals = self._socket_totals() if self._sockets else self._closed_socket_totals
        store_stats: dict[str, Any] | None = None
        if self.store is not None and hasattr(self.store, "stats"):
            with contextlib.suppress(Exception):
                store_stats = dict(self.store.stats())
        return {
            "targets": len(self._targets),
            "running": self._running,
            "uptime_s": round(loop_time - self._t0, 3) if self._running else None,
            "sent": self._sent,
            "received": c[EV_REPLY],
            "results": self._results,
            "outstanding": self.outstanding,
            "outcomes": {
                "reply": c[EV_REPLY],
                "timeout": c[EV_TIMEOUT],
                "unreachable": c[EV_UNREACHABLE],
                "time_exceeded": c[EV_TIME_EXCEEDED],
                "send_error": c[EV_SEND_ERROR],
                "duplicate": c[EV_DUPLICATE],
                "late": c[EV_LATE],
                "local_down": self._local_down,
                "resolve_error": self._resolve_errors,
            },
            "reresolve_failures": self._reresolve_failures,
            "send_calls": self._send_calls,
            "orphan_events": self._orphan_events,
            "subscribers": len(self._subs),
            "subscriber_dropped": sum(s.dropped for s in self._subs),
            "ticks": self._ticks,
            "loop_lag_s": {
                "last": round(self._lag_last_s, 6),
                "max": round(self._lag_max_s, 6),
                "mean": round(self._lag_sum_s / self._ticks, 6) if self._ticks else 0.0,
            },
            "interval_factor": self._factor,
            "network_down": self._net_down,
            "guard": self.guard.stats(),
            "socket": sock_totals,
            "store_submit_errors": self._store_errors,
            "observer_errors": self._observer_errors,
            "store": store_stats,
        }


def parse_family(text: str | None) -> int | None:
    """'4' / '6' / None -> socket family (CLI helper)."""
    if text in (None, "", "any"):
        return None
    if text in ("4", "inet", "ipv4"):
        return socket.AF_INET
    if text in ("6", "inet6", "ipv6"):
        return socket.AF_INET6
    raise ConfigError(f"family {text!r}: use 4, 6 or any")
