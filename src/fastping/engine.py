"""MonitoringEngine: watch many targets continuously through one socket per probe kind
and family.

Shape (see DESIGN.md, "Engine"):

* **One shared socket per (kind, family).** Every target is a *slot* of one socket:
  an ``IcmpSocket`` for ICMP echo (opened by ``probe.open_icmp_socket``), a
  ``TcpSocket`` for ``tcp://host:port`` targets (stateless SYNs: open = reply, a RST =
  ``Outcome.CLOSED``, silence = timeout; without CAP_NET_RAW, or ``mode="connect"``,
  a ``tcpconnect.ConnectSocket``: connect() timing, the same outcomes, ``stats()``
  says ``"tcp_timing"``), each AF_INET or AF_INET6, opened lazily with
  ``window = ceil(timeout_s / min_interval_s) + 1`` so a slot may have as many probes
  outstanding as its interval and the timeout allow. ``udp://host:port`` targets are
  slots of an unprivileged ``UdpSocket`` (an answer = reply, ICMP port unreachable =
  closed, silence = timeout: open|filtered); ``dns://server/name?type=T`` targets of a
  ``DnsSocket`` (any answer = reply, its rcode in the reply's TTL byte, see
  docs/dns.md). ``SOCKET_KINDS`` maps a kind to its
  socket class (one API, so a kind is a row there, not a branch); a target's kind and
  port are part of its identity (``targets.kind_label``).
* **A timing wheel, ticked every ``tick_s`` (20 ms).** Each target has its own
  interval; its first probe is placed at a phase taken from the golden-ratio
  sequence (``i * 0.618... mod 1`` of the interval), which spreads any number of
  targets evenly over the interval, so probes never go out in one burst. On each
  tick every due probe of a family goes out in ONE ``sock.send(slots)`` call
  (sendmmsg batches inside the core). Rescheduling keeps the unrounded phase
  (``next = due + interval``), so a late tick does not make targets drift and an
  interval that is not a whole number of ticks is exact on average. Ticks with
  nothing to do are slept through (each wake-up costs CPU), so a small engine wakes
  only when a probe is due, probes are to be expired or the log handed over.
* **Slot arrays, not per-target work.** A target in the steady state (attached, not
  backing off) is only a slot number in an ``array('I')`` of its wheel bucket: a
  tick sends each due array with one ``sock.send`` and moves the array, whole, to
  the tick of its next round. Targets that need attention (a name not resolved
  yet, no socket, backing off) sit on a per-target wheel until they are steady.
* **Replies** are drained with ``sock.recv()`` from ``loop.add_reader`` and right
  after each send (on loopback the reply is queued inside ``sendmmsg`` itself, so
  this saves an epoll wake-up per tick). **Timeouts** come from ``sock.expire``
  every ``expire_every_s``; each slot carries its target's own timeout
  (``set_slot_timeout``), so a reply slower than it is a timeout plus a late reply.
* **The outcome log.** Replies and timeouts are logged by the core, in C, and
  handed to the store every ``store_flush_s`` as one packed chunk per target
  (``take_log`` → ``store.submit_chunks``): at 10,000 probes/s a Python object and
  a SQLite row per probe would cost more CPU than the probing. In this "quiet"
  mode the core returns only the events that change a target's state (its first
  reply, a reply after a timeout, every error, duplicate or late reply); with
  subscribers or observers it returns every event and the engine builds a
  ``ProbeResult`` for each (for them; the store still gets the log). Results the
  core does not log (errors, duplicates, late replies, ``local_down``,
  ``resolve_error``) go to ``store.submit`` as ``ProbeResult``. Counters come
  from the core (``totals``, ``slot_stats``), not from counting in Python.
* **Subscribers** get events through bounded queues; a full queue loses its
  OLDEST events, counted in ``Subscription.dropped``. Publishing is a deque extend
  and never waits, so a subscriber that never reads cannot slow probing.
* **Names** are resolved in the default executor (``loop.getaddrinfo``) and
  re-resolved every ``resolve_interval_s`` (300 s): getaddrinfo does not expose
  the record's TTL, and reading TTLs would mean shipping our own DNS client, so a
  fixed interval is the honest approximation; with ``resolver=dnsresolve.DnsResolver``
  names are asked of a DNS server on a DnsSocket instead and re-resolved on their
  record's TTL (``Resolved.ttl_s``). A name that does not resolve gives
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
  our own outage is not booked as the targets' loss (the core's log is switched
  off meanwhile so every timeout passes through the engine).
* **Stopping** (``stop()``, or SIGINT / SIGTERM under ``run()``): no new probes; the
  probes in flight get up to ``timeout_s`` to answer and are then expired, so every
  probe sent has exactly one result; then the log and everything else is submitted
  and the store flushed. A kill -9 loses at most ``store_flush_s`` of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import signal
import socket
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

# The core's event kinds: results.EventKind's numbers (OUTCOME_BY_KIND's index).
from ._icmp import (
    EV_CLOSED,
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
)
from .chunk import OUTCOME_CODE, RECORD_SIZE
from .errors import ConfigError, TargetError
from .guard import ResourceGuard
from .loss import LossTracker, OutageEvent, OutageRule
from .pathwatch import PathChange, PathWatcher
from .results import OUTCOME_BY_KIND, Outcome, ProbeResult, SlotStats
from .timing import SendLateness, behind_schedule_us

if TYPE_CHECKING:
    from .trace import Trace

_CHUNK_RECORD = RECORD_SIZE
_tuple_new = tuple.__new__

# (slot, kind, seq, rtt_ns, ttl, icmp_type, icmp_code, router, errno)
CoreEvent = tuple[int, int, int, int, int, int, int, "str | None", int]

DEFAULT_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 1.0
# 20 ms: each wake-up costs the process ~60-120 us of CPU on a VM (timer, context
# switch, event loop) whatever it then does, so at 10,000 probes/s a 10 ms tick spent
# ~1.2% of a core on waking alone; 20 ms halves that and still spreads a 1 s interval
# over 50 batches.
DEFAULT_TICK_S = 0.020
DEFAULT_RESOLVE_INTERVAL_S = 300.0
DEFAULT_MAX_BACKOFF_S = 300.0
DEFAULT_BACKOFF_AFTER = 3
DEFAULT_STORE_FLUSH_S = 10.0
# Below 1 ms the tick (which follows the shortest interval) would spin the loop at
# 100% CPU and starve the stop signal; no monitoring needs a target probed faster.
MIN_INTERVAL_S = 0.001
MAX_TIMEOUT_S = 3600.0  # the core turns seconds into int64 nanoseconds
MAX_WINDOW = 64  # probes in flight per target: IcmpSocket's window limit
# stop(): how long the store may take to write what is queued; a store that cannot
# (full disk, corrupt file) leaves the rest to close(), which counts it as dropped
DEFAULT_STOP_FLUSH_S = 10.0
# A re-resolution that failed for a name with a known address is retried sooner.
_RERESOLVE_RETRY_S = 30.0
_GOLDEN = 0.6180339887498949

# Target status, as the live table and StateChanged events show it.
STATUS_UNKNOWN = "unknown"
STATUS_UP = "up"
STATUS_DOWN = "down"  # timeout / unreachable / time exceeded
STATUS_ERROR = "error"  # local error (send / resolve), possibly backing off
STATUS_LOCAL_DOWN = "local_down"  # our own network is down

# a target's status after an outcome (None: no change), and indexed by event kind
_STATUS_OF: dict[Outcome, str | None] = {
    Outcome.REPLY: STATUS_UP,
    Outcome.TIMEOUT: STATUS_DOWN,
    Outcome.UNREACHABLE: STATUS_DOWN,
    Outcome.TIME_EXCEEDED: STATUS_DOWN,
    Outcome.SEND_ERROR: STATUS_ERROR,
    Outcome.LOCAL_DOWN: STATUS_LOCAL_DOWN,  # engine-made, as RESOLVE_ERROR
    Outcome.RESOLVE_ERROR: STATUS_ERROR,
    Outcome.DUPLICATE: None,
    Outcome.LATE: None,
    Outcome.CLOSED: STATUS_DOWN,  # the host answered, the service is not there
}
_STATUS_BY_KIND = tuple(_STATUS_OF[o] for o in OUTCOME_BY_KIND)
# Problems first, in the live table.
_STATUS_RANK = {
    STATUS_DOWN: 0,
    STATUS_ERROR: 1,
    STATUS_LOCAL_DOWN: 2,
    STATUS_UNKNOWN: 3,
    STATUS_UP: 4,
}
# Outcomes that prove the probe left the host: they reset the error backoff.
_LEFT_HOST = frozenset((EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE, EV_TIME_EXCEEDED, EV_CLOSED))
# the kinds the core logs (and the store gets from the log): replies, timeouts, closed
_LOGGED = frozenset((EV_REPLY, EV_TIMEOUT, EV_CLOSED))


# socket counters worth reporting (the core counts them; silent drops look like loss)
_SOCKET_COUNTERS = (
    "rx_drops",
    "enobufs",
    "foreign",
    "malformed",
    "stale",
    "events_lost",
    "socket_errors",
    "log_pending",
    "log_dropped",
)
# what the core counts per outcome (summed over the sockets, open and closed)
_CORE_COUNTERS = (
    "sent",
    "received",
    "timeouts",
    "unreachable",
    "time_exceeded",
    "send_errors",
    "duplicates",
    "late",
    "outstanding",
    "closed",  # answers that said the port is closed (TCP RST); in "received" too
)


class IcmpSocketLike(Protocol):
    """What the engine needs from ``_icmp.IcmpSocket`` (tests use a fake)."""

    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def add_target(self, address: str, port: int = 0) -> int: ...
    def remove_target(self, slot: int) -> None: ...
    def send(self, slots: Iterable[int], drain: bool = True, due_ns: int = 0) -> list[Any]: ...
    def lateness(self) -> tuple[int, int, int, tuple[int, ...]]: ...
    def recv(self, max_packets: int = 0) -> list[Any]: ...
    def expire(self, timeout_s: float) -> list[Any]: ...
    def totals(self) -> dict[str, int]: ...
    def set_log(self, mode: int) -> None: ...
    def take_log(self, slot: int = -1) -> list[tuple[int, bytes]]: ...
    def forget_last(self, slot: int = -1) -> None: ...
    def set_slot_timeout(self, slot: int, timeout_s: float) -> None: ...
    def slot_stats(self, slot: int) -> SlotStats: ...
    def slot_closed(self, slot: int) -> int: ...  # kinds with ports (TCP) only
    def slot_last(self, slot: int) -> tuple[int, int, int]: ...
    def slot_address(self, slot: int) -> str: ...


SocketFactory = Callable[[int, int], IcmpSocketLike]  # (family, window) -> socket
# a socket of the engine: (probe kind, family); targets.PROBE_KINDS are the kinds
SockKey = tuple[str, int]
Resolver = Callable[[str, int], Awaitable[list[tuple[int, str]]]]  # -> [(family, address)]
# Called with every batch of results, in the event loop, before the store gets them.
Observer = Callable[[Sequence[ProbeResult]], None]
# per-target counters (TargetCounters.counts) are indexed by the outcome's number
N_OUTCOME_CODES = max(OUTCOME_CODE.values()) + 1
_C_REPLY, _C_TIMEOUT, _C_UNREACH, _C_TEXC, _C_SENDERR, _C_LOCAL_DOWN, _C_DUP, _C_LATE, _C_CLOSED = (
    OUTCOME_CODE[o]
    for o in (
        Outcome.REPLY,
        Outcome.TIMEOUT,
        Outcome.UNREACHABLE,
        Outcome.TIME_EXCEEDED,
        Outcome.SEND_ERROR,
        Outcome.LOCAL_DOWN,
        Outcome.DUPLICATE,
        Outcome.LATE,
        Outcome.CLOSED,
    )  # fmt: skip
)


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


# OutageEvent (fastping.loss): a target's outage (or our own network's) started / ended;
# PathChange (fastping.pathwatch): a target's traced path changed (trace_every_s)
EngineEvent = ResultEvent | TargetAdded | TargetRemoved | StateChanged | OutageEvent | PathChange


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
        "due_exact",
        "timeout_s",
        "timeout_ns",
        "is_name",
        "address",
        "family",
        "kind",
        "port",
        "name",
        "sk",
        "slot",
        "due_tick",
        "removed",
        "errors",
        "status",
        "steady",
        "py_done",
        "mcounts",
        "mbuckets",
        "sent_down",
        "mttl",
        "base_done",
        "base_received",
        "base_last_rtt_ms",
        "last_outcome",
        "last_errno",
        "resolving",
        "resolve_failed",
        "next_resolve_at",
        "added_at",
        "question",
    )

    def __init__(
        self,
        host: str,
        interval_s: float,
        labels: dict[str, str],
        is_name: bool,
        kind: str = "icmp",
        port: int = 0,
    ):
        self.host = host  # the target's identity: its label (tcp://host:port for TCP)
        self.kind = kind
        self.port = port
        self.name = host  # what is resolved and probed: the host without kind and port
        self.sk: SockKey = (kind, 0)  # the socket it is a slot of
        self.labels = labels
        self.interval_s = interval_s
        self.interval_ticks = 1.0  # interval / tick, not rounded: phases stay exact
        self.due_exact = 0.0  # the unrounded tick of the next probe (target wheel)
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
        self.steady = False  # its slot is in a wheel array (see _send_due)
        # final outcomes the engine made itself (local_down, resolve / socket errors);
        # the core counts the rest per slot, and base_* keeps what earlier slots of
        # this target counted (a name whose address changed got a new slot)
        self.py_done = 0
        # for metrics, since the target's current address: what the core's slot counts
        # do not say (outcomes the engine made itself, timeouts it recorded as
        # local_down), then at stop() what the slots had counted; RTT buckets kept then
        self.mcounts = [0] * N_OUTCOME_CODES
        self.mbuckets: list[int] | None = None  # per bucket, then the RTT sum in ns
        self.sent_down = 0  # local_down outcomes of probes that had left
        self.mttl = 0  # the last reply's TTL when the slot was given up
        self.base_done = 0
        self.base_received = 0
        self.base_last_rtt_ms: float | None = None
        self.last_outcome: Outcome | None = None
        self.last_errno: int | None = None
        self.resolving = False
        self.resolve_failed = False
        self.next_resolve_at = 0.0
        self.added_at = time.time()
        self.question: tuple[str, str] | None = None  # DNS: (name, type) it asks

    def set_address(self, address: str, family: int) -> None:
        if address != self.address:  # a new series of counters for metrics
            self.mcounts = [0] * N_OUTCOME_CODES
            self.mbuckets = None
            self.sent_down = self.mttl = 0
        self.address = address
        self.family = family
        self.sk = (self.kind, family)


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
    kind: str = "icmp"  # the probe kind (targets.PROBE_KINDS)
    port: int = 0  # its port, for a kind with ports (0 for ICMP)

    @property
    def loss(self) -> float | None:
        return None if self.probes == 0 else (self.probes - self.received) / self.probes


class TargetCounters(NamedTuple):
    """What was counted for one target since its current address was set, read at
    scrape time (``MonitoringEngine.counters``) from the core's per-slot counters and
    RTT buckets plus the outcomes the engine made itself."""

    host: str
    address: str | None
    kind: str
    port: int
    labels: dict[str, str]
    counts: list[int]  # per outcome, indexed by chunk.OUTCOME_CODE
    sent_down: int  # local_down outcomes of probes that had left (in counts too)
    buckets: list[int] | None  # replies per RTT bucket (set_rtt_buckets), not cumulative
    rtt_sum_ns: int  # the sum of those replies' RTTs
    ttl: int  # the last reply's TTL (0 before the first)


# ---------------------------------------------------------------------------------
# the engine


# kind -> (mode, options) -> SocketFactory: the socket class of each probe kind. A
# kind is a row here (each class has IcmpSocket's API), not a branch elsewhere.
KindOpener = Callable[[str, dict[str, Any]], SocketFactory]


def _icmp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from .probe import open_icmp_socket

        # "connect" is TCP's alone: ICMP then takes what it can get (auto)
        icmp_mode = "auto" if mode == "connect" else mode
        sock: IcmpSocketLike = open_icmp_socket(family, mode=icmp_mode, window=window, **options)
        return sock

    return open_socket


def _tcp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from ._icmp import TcpSocket
        from .tcpconnect import ConnectSocket

        # stateless SYNs on a raw socket (mode raw: PermissionError names CAP_NET_RAW);
        # mode connect, or auto without CAP_NET_RAW: connect() timing (its ``timing``
        # says "connect"), as ``fastping sweep --tcp`` falls back
        if mode != "connect":
            try:
                sock: IcmpSocketLike = TcpSocket(family, window=window, **options)
                return sock
            except PermissionError:
                if mode == "raw":
                    raise
        return ConnectSocket(family, window=window, **options)

    return open_socket


def _udp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from ._icmp import UdpSocket

        # unprivileged (SOCK_DGRAM): an answer = open, ICMP port unreachable = closed,
        # silence = timeout (open|filtered: a UDP service need not answer)
        sock: IcmpSocketLike = UdpSocket(family, window=window, **options)
        return sock

    return open_socket


def _dns_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from ._icmp import DnsSocket

        # unprivileged (SOCK_DGRAM): any answer = reply (its rcode and TC in the reply's
        # TTL byte, dnscodec.read_answer_code), ICMP port unreachable = unreachable
        sock: IcmpSocketLike = DnsSocket(family, window=window, **options)
        return sock

    return open_socket


SOCKET_KINDS: dict[str, KindOpener] = {
    "icmp": _icmp_opener,
    "tcp": _tcp_opener,
    "udp": _udp_opener,
    "dns": _dns_opener,
}


async def _default_resolver(host: str, family: int) -> list[tuple[int, str]]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_RAW)
    out = [(int(fam), str(sa[0])) for fam, _, _, _, sa in infos]
    # prefer IPv4 when the caller did not choose, as ping does
    out.sort(key=lambda fa: 0 if fa[0] == socket.AF_INET else 1)
    return out


def _resolve_after(addrs: Any, default_s: float) -> float:
    """When to resolve a name again: on its record's TTL when the resolver knows it
    (dnsresolve.DnsResolver's answers carry ``ttl_s``), else every ``default_s``."""
    ttl = getattr(addrs, "ttl_s", None)
    return default_s if ttl is None else float(ttl)


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


def _check_interval(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and MIN_INTERVAL_S <= v <= 86400):
        raise ConfigError(
            f"{name}={v!r}: give seconds between {MIN_INTERVAL_S:g} and 86400 "
            "(a shorter interval would spin the loop at 100% CPU)"
        )


def _check_timeout(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and 0 < v <= MAX_TIMEOUT_S):
        raise ConfigError(f"{name}={v!r}: give seconds > 0 and at most {MAX_TIMEOUT_S:g}")


def _tick_of(elapsed_s: float, tick_s: float) -> int:
    """The tick ``elapsed_s`` falls in. A tick fired at its own start time must count as
    that tick: asyncio runs a timer up to its clock's resolution early, and
    ``k * tick_s / tick_s`` may come out a hair below ``k`` in floating point, which
    would make the engine re-arm the same tick at once (a clock that stands still,
    as a test's virtual one, would then never leave it)."""
    return int(elapsed_s / tick_s + 1e-6)


class MonitoringEngine:
    """Probe every target on its own interval through one socket per family.

    ``store`` is anything with ``submit(iterable_of_ProbeResult)`` and ``async
    flush()`` (``store.ResultStore``); the engine submits and flushes but does not
    start or close it. ``network`` is an optional ``netstate.NetworkMonitor``.
    ``guard`` is a ``ResourceGuard`` (``None``: 50 % of one core / 100 MB;
    pass ``ResourceGuard(None, None)`` to disable). ``trace_every_s``: trace every
    ICMP target that often (``fastping.pathwatch``; ``trace_options``: its max_ttl,
    timeout_s, rate_pps), path changes as ``PathChange`` events, ``path(host)``.
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
        tick_s: float | None = None,
        expire_every_s: float | None = None,
        resolve_interval_s: float = DEFAULT_RESOLVE_INTERVAL_S,
        backoff_after: int = DEFAULT_BACKOFF_AFTER,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        store_flush_s: float = DEFAULT_STORE_FLUSH_S,
        guard: ResourceGuard | None = None,
        network: Any = None,
        socket_factory: SocketFactory | None = None,
        kind_factories: dict[str, SocketFactory] | None = None,
        kind_options: dict[str, dict[str, Any]] | None = None,
        resolver: Resolver | None = None,
        logger: Any = None,
        stop_flush_s: float = DEFAULT_STOP_FLUSH_S,
        outage_rule: OutageRule | None = None,
        loss_tracking: bool = True,
        trace_every_s: float | None = None,
        trace_options: dict[str, Any] | None = None,
    ) -> None:
        _check_interval("interval_s", interval_s)
        _check_timeout("timeout_s", timeout_s)
        if min_interval_s is not None:
            _check_interval("min_interval_s", min_interval_s)
        if max_timeout_s is not None:
            _check_timeout("max_timeout_s", max_timeout_s)
        if not 0 < stop_flush_s <= 3600:
            raise ConfigError(f"stop_flush_s={stop_flush_s!r}: give 0 < seconds <= 3600")
        self.stop_flush_s = float(stop_flush_s)
        if tick_s is None:
            # the default tick, or the shortest interval when that is shorter
            shortest = min_interval_s if min_interval_s is not None else interval_s
            tick_s = min(DEFAULT_TICK_S, shortest) if shortest > 0 else DEFAULT_TICK_S
        if not tick_s > 0 or tick_s > 1.0:
            raise ConfigError(f"tick_s={tick_s!r}: give a tick between 0 and 1 s (20 ms is usual)")
        if mode not in ("auto", "raw", "dgram", "connect"):
            raise ConfigError(
                f"mode={mode!r}: the monitoring engine needs a socket, use 'auto', 'raw', "
                "'dgram' or 'connect' (TCP by connect(), ICMP auto; 'subprocess' cannot "
                "multiplex thousands of targets)"
            )
        if family not in (None, socket.AF_INET, socket.AF_INET6):
            raise ConfigError(f"family={family!r}: use socket.AF_INET, socket.AF_INET6 or None")
        if backoff_after < 1:
            raise ConfigError(f"backoff_after={backoff_after!r}: must be at least 1")
        if not 0 < store_flush_s <= 3600:
            raise ConfigError(
                f"store_flush_s={store_flush_s!r}: give 0 < seconds <= 3600 (how often the "
                "results logged in the core go to the store; 10 s is usual)"
            )
        self.store_flush_s = float(store_flush_s)
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
        self.guard.base_interval_s = self.interval_s
        self._factories = self._kind_factories(
            mode, socket_options, socket_factory, kind_factories, kind_options
        )
        self._resolver = resolver or _default_resolver
        # window: probes a slot may have in flight (interval shorter than the timeout)
        self.window = math.ceil(self.max_timeout_s / self.min_interval_s) + 1
        if self.window > MAX_WINDOW:
            # every probe beyond the window would be a send_error: nothing would be probed
            raise ConfigError(
                f"interval {self.min_interval_s:g} s with timeout {self.max_timeout_s:g} s puts "
                f"{self.window} probes of a target in flight; at most {MAX_WINDOW} can be: give an "
                f"interval of at least {self.max_timeout_s / (MAX_WINDOW - 1):.3g} s or a shorter "
                "timeout"
            )

        self._targets: dict[str, _Target] = {}
        # one socket per (kind, family), opened when a target needs it
        self._sockets: dict[SockKey, IcmpSocketLike] = {}
        self._slot_maps: dict[SockKey, list[_Target | None]] = {}
        self._socket_errors: dict[SockKey, tuple[int | None, str]] = {}
        self._tcp_timing: str | None = None  # the first TCP socket's ("connect" sticks)
        self._wheel: dict[int, list[_Target]] = {}  # targets needing attention
        # steady targets: tick -> {((kind, family), interval_ticks): [unrounded tick, slots]}
        self._steady: dict[int, dict[tuple[SockKey, float], list[Any]]] = {}
        self._phase_n = 0
        self._subs: list[Subscription] = []
        # (observer, the probe kinds whose results it wants; None: every result)
        self._observers: list[tuple[Observer, frozenset[str] | None]] = []
        self._tick_listeners: list[Callable[[], None]] = []
        self._out: list[ProbeResult] = []  # results of this callback for subscribers
        self._store_out: list[ProbeResult] = []  # results of this callback the core did not log
        self._want_all = False  # subscribers or observers of all: every event returned
        self._want_kinds: frozenset[str] = frozenset()  # ... of these kinds' sockets
        self._rtt_bounds_ns: tuple[int, ...] = ()  # per-slot RTT buckets (set_rtt_buckets)
        self._log_mode = 1  # what the sockets log and return (_update_log_modes)
        self._evs: list[EngineEvent] = []  # non-result events of the current callback

        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._stopping = False
        self._t0 = 0.0
        self._cur_tick = 0
        self._next_tick_at = 0.0
        self._armed_tick = 0  # the tick the loop will wake at next
        self._in_tick = False
        self._next_expire_at = 0.0
        self._next_log_flush_at = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested: asyncio.Event | None = None
        self._net_down = False
        self._factor = 1.0
        self._started_wall = 0.0

        # counters: the core counts what it sees (totals()); these are the engine's own
        self._local_down = 0  # due probes not sent + probes whose outcome became local_down
        self._timeouts_local_down = 0  # core timeouts recorded as local_down
        self._senderr_local_down = 0  # core send errors recorded as local_down
        self._py_send_errors = 0  # no socket for the family
        self._resolve_errors = 0
        self._reresolve_failures = 0
        self._send_calls = 0
        self._orphan_events = 0
        self._submitted_batches = 0
        self._chunks = 0  # outcome-log chunks handed to the store
        self._log_records = 0  # records in them
        self._store_errors = 0
        self._observer_errors = 0
        self._ticks = 0
        self._lag_max_s = 0.0
        self._lag_sum_s = 0.0
        self._lag_last_s = 0.0
        self._closed_totals: dict[str, int] = {}  # sockets closed at stop, summed
        self._closed_lateness = SendLateness()  # theirs, too
        # loss patterns and outages (fastping.loss), fed with the outcome log's chunks
        self.loss: LossTracker | None = LossTracker(outage_rule) if loss_tracking else None
        self._local_down_at_start = 0  # self._local_down when our network went down
        self._outage_listeners: list[Callable[[Sequence[OutageEvent]], None]] = []
        self._outage_listener_errors = 0
        self._outage_log_lines = 0
        # periodic traces of the ICMP targets, path changes as events (fastping.pathwatch)
        self.paths: PathWatcher | None = (
            PathWatcher(self, trace_every_s, **(trace_options or {}))
            if trace_every_s is not None
            else None
        )

        for t in targets:
            self.add_target(t)

    @staticmethod
    def _kind_factories(
        mode: str,
        socket_options: dict[str, Any] | None,
        socket_factory: SocketFactory | None,
        kind_factories: dict[str, SocketFactory] | None,
        kind_options: dict[str, dict[str, Any]] | None,
    ) -> dict[str, SocketFactory]:
        """The socket factory of each probe kind: ``socket_factory`` (ICMP) and
        ``kind_factories`` as given, the others from SOCKET_KINDS with their
        ``kind_options`` (``socket_options`` are ICMP's)."""
        given = dict(kind_factories or {})
        opts = dict(kind_options or {})
        for k in (*given, *opts):
            if k not in SOCKET_KINDS:
                raise ConfigError(f"probe kind {k!r}: this engine knows {', '.join(SOCKET_KINDS)}")
        if socket_factory is not None:
            given["icmp"] = socket_factory
        opts.setdefault("icmp", dict(socket_options or {}))
        out: dict[str, SocketFactory] = {}
        for k, opener in SOCKET_KINDS.items():
            out[k] = given[k] if k in given else opener(mode, dict(opts.get(k, {})))
        return out

    # -- targets ---------------------------------------------------------------

    def add_target(
        self,
        host: str,
        interval_s: float | None = None,
        labels: dict[str, str] | None = None,
        timeout_s: float | None = None,
        *,
        kind: str | None = None,
        port: int | None = None,
    ) -> None:
        """Start watching ``host`` (an address or a host name), before or while running.

        ``host`` may name its probe kind: ``tcp://HOST:PORT`` is a TCP SYN probe of
        PORT (open = reply, closed = ``Outcome.CLOSED``, filtered = timeout), or
        ``kind`` / ``port`` say it (``add_target("h", kind="tcp", port=22)``). The
        kind and port are part of the target's identity, its label
        (``targets.kind_label``): a host pinged and probed on two ports is three
        targets.

        ``timeout_s`` (default: the engine's) may differ per target, up to the engine's
        ``max_timeout_s``: the socket expires probes at ``max_timeout_s`` and a reply
        slower than the target's own timeout is recorded as a timeout, so outcomes are
        exact per target; only a short-timeout target's timeouts are reported late.

        A CIDR block or range adds each of its addresses, as ``fastping monitor`` does
        (``targets.expand_target``: one rule for the command and the library).

        Raises TargetError when ``host`` is malformed, already watched (for a block:
        any of its addresses, and then none is added), or asks for an interval the
        socket window cannot serve.
        """
        from .targets import Address, Name, expand_target, kind_label, parse_target, with_kind

        kt = with_kind(host, kind, port)
        if kt.kind not in self._factories:
            raise TargetError(
                f"target {host!r}: probe kind {kt.kind!r} is not known here "
                f"(known: {', '.join(self._factories)})"
            )
        specs = parse_target(kt.host)
        if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
            hosts = [
                kind_label(kt.kind, h, kt.port, kt.qname, kt.qtype) for h in expand_target(kt.host)
            ]
            taken = [h for h in hosts if h in self._targets]
            if taken:
                raise TargetError(f"target {host!r}: {taken[0]!r} is already being watched")
            for h in hosts:
                self.add_target(h, interval_s, labels, timeout_s)
            return
        spec = specs[0]
        key = kind_label(
            kt.kind, spec.label if isinstance(spec, Address) else spec.name, kt.port,
            kt.qname, kt.qtype,
        )  # fmt: skip
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
        t = _Target(key, iv, dict(labels or {}), isinstance(spec, Name), kt.kind, kt.port)
        t.name = spec.label if isinstance(spec, Address) else spec.name
        if kt.qname:
            t.question = (kt.qname, kt.qtype)
        t.interval_ticks = max(1.0, iv / self.tick_s)
        t.timeout_s = to
        t.timeout_ns = int(to * 1e9)
        if isinstance(spec, Address):
            t.set_address(spec.address, spec.family)
        self._targets[key] = t
        self._evs.append(TargetAdded(key, iv, dict(t.labels)))
        if self._running:
            self._activate(t)
            self._publish()
        self._log.debug("target added", target=key, interval_s=iv)

    def remove_target(self, host: str) -> None:
        """Stop watching ``host``. Probes already in flight still get their result
        (the slot is freed ``timeout_s`` later). A block or range removes each of
        its addresses."""
        if host not in self._targets and ("/" in host or "-" in host):
            from .targets import expand_kind_target

            hosts = expand_kind_target(host)
            if hosts != [host]:
                missing = [h for h in hosts if h not in self._targets]
                if missing:
                    raise TargetError(f"target {missing[0]!r} is not being watched")
                for h in hosts:
                    self.remove_target(h)
                return
        t = self._targets.pop(host, None)
        if t is None:
            raise TargetError(f"target {host!r} is not being watched (see engine.targets())")
        t.removed = True
        t.due_tick = -1
        if t.steady:
            self._unsteady(t)
        self._evs.append(TargetRemoved(host))
        if t.slot is not None:
            self._free_slot_later(t.sk, t.slot)
            t.slot = None
        if self._running:
            self._publish()
        self._log.debug("target removed", target=host)

    def targets(self) -> list[TargetInfo]:
        return [self._info(t) for t in self._targets.values()]

    def top_targets(self, n: int) -> list[TargetInfo]:
        """The ``n`` targets a person should see first: problems first (down, error,
        local_down, unknown, then up), by name within each. Only those ``n`` are
        looked up in the core, so a live table over 10,000 targets stays cheap."""
        rank = _STATUS_RANK
        top = heapq.nsmallest(
            max(0, n), self._targets.values(), key=lambda t: (rank.get(t.status, 5), t.host)
        )
        return [self._info(t) for t in top]

    def target(self, host: str) -> TargetInfo:
        t = self._targets.get(host)
        if t is None:
            raise TargetError(f"target {host!r} is not being watched")
        return self._info(t)

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, host: object) -> bool:
        return host in self._targets

    def _slot_counts(self, t: _Target) -> tuple[int, int, float | None]:
        """(final outcomes, replies, last RTT ms) the core counted for ``t``'s slot."""
        sock = self._sockets.get(t.sk) if t.slot is not None else None
        if sock is None or t.slot is None:
            return 0, 0, None
        st = sock.slot_stats(t.slot)
        done = st.received + st.timeouts + st.unreachable + st.time_exceeded + st.send_errors
        # a closed port answered (it is in received) but did not reply: not received here
        received = st.received - sock.slot_closed(t.slot) if t.port else st.received
        kind, rtt_ns, _ = sock.slot_last(t.slot)
        return done, received, (rtt_ns / 1e6 if kind == EV_REPLY else None)

    def counters(self, skip_kinds: Iterable[str] = ()) -> Iterator[TargetCounters]:
        """Every target's counters (but those of ``skip_kinds``), read now from the
        core's slots: the scrape side of metrics. Safe from another thread (the HTTP
        server's): it reads the target table's current members, each slot with the GIL
        held, and a slot only while it is still that target's."""
        skip = frozenset(skip_kinds)
        for t in list(self._targets.values()):
            if t.kind not in skip and not t.removed:
                yield self._target_counters(t)

    def _target_counters(self, t: _Target) -> TargetCounters:
        counts = list(t.mcounts)
        hb = t.mbuckets
        buckets = None if hb is None else hb[:-1]
        rtt_sum = 0 if hb is None else hb[-1]
        ttl = t.mttl
        slot, sock = t.slot, self._sockets.get(t.sk)
        if slot is not None and sock is not None:
            st = sock.slot_stats(slot)
            closed = sock.slot_closed(slot) if t.port else 0
            # a closed port's answer is in received
            counts[_C_REPLY] += st.received - closed
            counts[_C_DUP] += st.duplicates
            counts[_C_LATE] += st.late
            counts[_C_TIMEOUT] += st.timeouts
            counts[_C_UNREACH] += st.unreachable
            counts[_C_TEXC] += st.time_exceeded
            counts[_C_SENDERR] += st.send_errors
            counts[_C_CLOSED] += closed
            if st.received > closed:
                ttl = st.last_ttl
            sb = getattr(sock, "slot_buckets", None)
            got = sb(slot) if sb is not None else None
            if got is not None:
                b, n = got
                buckets = (
                    list(b) if buckets is None else [x + y for x, y in zip(buckets, b, strict=True)]
                )
                rtt_sum += n
        return TargetCounters(
            t.host, t.address, t.kind, t.port, t.labels, counts, t.sent_down, buckets, rtt_sum,
            ttl,
        )  # fmt: skip

    def _keep_counters(self, t: _Target) -> None:
        """The slot is given up but the address stays (stop()): its counts move to
        the target's own, so counters() goes on from them."""
        c = self._target_counters(t)
        t.mcounts = c.counts
        t.mttl = c.ttl
        t.mbuckets = None if c.buckets is None else [*c.buckets, c.rtt_sum_ns]

    def _results_of(self, out: list[ProbeResult], kinds: frozenset[str]) -> list[ProbeResult]:
        """The results of targets of these probe kinds (an observer's share)."""
        if not self._want_all and kinds == self._want_kinds:
            return out  # nothing else was returned
        targets = self._targets
        mine = []
        for r in out:
            t = targets.get(r.target)
            if t is not None and t.kind in kinds:
                mine.append(r)
        return mine

    def _info(self, t: _Target) -> TargetInfo:
        b = self._backoff_s(t)
        done, received, last_rtt_ms = self._slot_counts(t)
        return TargetInfo(
            t.host,
            t.address,
            t.interval_s,
            dict(t.labels),
            t.status,
            t.base_done + t.py_done + done,
            t.base_received + received,
            last_rtt_ms if t.slot is not None else t.base_last_rtt_ms,
            None if t.last_outcome is None else t.last_outcome.value,
            t.errors,
            b,
            t.kind,
            t.port,
        )

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """Events from now on (results, targets added / removed, state changes)
        through a queue of ``maxsize`` that drops the oldest when full."""
        sub = Subscription(self, maxsize)
        self._subs.append(sub)
        self._update_log_modes()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)
        self._update_log_modes()

    def add_observer(self, fn: Observer, kinds: Iterable[str] | None = None) -> None:
        """Call ``fn(results)`` with every batch of results, synchronously in the event
        loop. Unlike a subscription nothing is ever dropped, so ``fn`` must be quick and
        must neither keep nor change the sequence; an exception it raises is counted
        (``stats()["observer_errors"]``) and logged. ``kinds``: only the results of
        targets of these probe kinds ("dns"): the other kinds' sockets stay in the
        quiet log mode, where the core counts replies per slot without returning them
        (metrics read those counters at scrape time: ``counters``)."""
        self._observers.append((fn, None if kinds is None else frozenset(kinds)))
        self._update_log_modes()

    def remove_observer(self, fn: Observer) -> None:
        self._observers = [(f, k) for f, k in self._observers if f != fn]
        self._update_log_modes()

    def add_tick_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at every engine tick, in the event loop (metrics keep their
        state clocks with it); it must be quick. Its exceptions count as an observer's."""
        self._tick_listeners.append(fn)

    def remove_tick_listener(self, fn: Callable[[], None]) -> None:
        self._tick_listeners = [f for f in self._tick_listeners if f != fn]

    def _update_log_modes(self) -> None:
        """Tell each socket what to log and what to return (see the module docstring):
        log replies and timeouts unless our network is down (the engine must see every
        timeout then, to record it as local_down); return every event when someone
        wants every result of the socket's kind, else only the ones that change a
        target's state."""
        self._want_all = bool(self._subs) or any(k is None for _, k in self._observers)
        self._want_kinds = frozenset().union(*(k for _, k in self._observers if k is not None))
        self._log_mode = 0 if self._net_down else 1
        for sk, sock in self._sockets.items():
            sock.set_log(self._mode_for(sk))

    def _mode_for(self, sk: SockKey) -> int:
        if self._net_down:
            return 0
        return 2 if self._want_all or sk[0] in self._want_kinds else 1

    def set_rtt_buckets(self, bounds_s: Sequence[float]) -> bool:
        """Keep reply RTTs per target in buckets with these upper bounds (seconds), in
        the core (``counters`` reads them); each socket's buckets restart at zero. One
        set per engine: False, and nothing changed, when other bounds are kept already."""
        ns = tuple(round(b * 1e9) for b in bounds_s)
        if self._rtt_bounds_ns and ns != self._rtt_bounds_ns:
            return False
        if ns != self._rtt_bounds_ns:
            self._rtt_bounds_ns = ns
            for sock in self._sockets.values():
                self._apply_rtt_buckets(sock)
        return True

    @property
    def rtt_bounds_ns(self) -> tuple[int, ...]:
        return self._rtt_bounds_ns

    def _apply_rtt_buckets(self, sock: IcmpSocketLike) -> None:
        setter = getattr(sock, "set_rtt_buckets", None)
        if setter is not None and self._rtt_bounds_ns:
            setter(self._rtt_bounds_ns)

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
        self._next_log_flush_at = self._t0 + self.store_flush_s
        self._net_down = self.network is not None and _network_is_down(self.network)
        if self._net_down and self.loss is not None:
            self._local_down_at_start = self._local_down
            self._outage_events(self.loss.local_down(time.time()))
        self._update_log_modes()
        # open the sockets the initial targets need up front, so a permission
        # problem shows at once (each family's failure is still per-target below)
        for sk in {t.sk for t in self._targets.values() if t.family}:
            self._ensure_socket(sk)
        for t in list(self._targets.values()):
            self._activate(t)
        if self.guard.enabled:
            self.guard.prime()
            self._spawn(self._guard_loop())
        self._spawn(self._resolve_loop())
        if self.paths is not None:
            self._spawn(self.paths.run())
        self._arm(1)
        self._publish()
        # DEBUG: a program (fastping monitor) says it once, with the first round's outcome
        self._log.debug(
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
        self._flush_logs()
        if self.loss is not None:
            # records held back for order are all in now; outages still going on are
            # stored with what they have lost so far (and no end: we stopped watching)
            self._outage_events(self.loss.settle())
            submit = getattr(self.store, "submit_outages", None)
            if submit is not None:
                with contextlib.suppress(Exception):
                    submit(self.loss.current_outages())
        for k, v in self._socket_totals().items():
            self._closed_totals[k] = self._closed_totals.get(k, 0) + v
        self._closed_lateness = self.send_lateness()
        for t in self._targets.values():  # keep the per-target counts of the closed slots
            if t.slot is not None:
                done, received, t.base_last_rtt_ms = self._slot_counts(t)
                t.base_done += done
                t.base_received += received
                self._keep_counters(t)
        for sk, sock in list(self._sockets.items()):
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            with contextlib.suppress(Exception):
                sock.close()
            del self._sockets[sk]
        self._slot_maps.clear()
        for t in self._targets.values():
            t.slot = None
            t.due_tick = -1
            t.steady = False
        self._wheel.clear()
        self._steady.clear()
        self._running = False
        if self.store is not None:
            try:
                if not await self.store.flush(self.stop_flush_s):
                    self._log.error(
                        "store could not write every result by the stop deadline; the "
                        "store's close() counts what is left as dropped",
                        deadline_s=self.stop_flush_s,
                        store=self.store.stats(),
                    )
            except Exception as e:  # the store counts and logs its own failures
                self._store_errors += 1
                self._log.error("store flush failed at stop", error=str(e))
        for sub in list(self._subs):
            sub._end()
        self._subs.clear()
        st = self.stats()
        self._log.info(
            "monitoring stopped", sent=st["sent"], results=st["results"], received=st["received"]
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

    def _ensure_socket(self, sk: SockKey) -> IcmpSocketLike | None:
        sock = self._sockets.get(sk)
        if sock is not None:
            return sock
        kind, family = sk
        try:
            sock = self._factories[kind](family, self.window)
        except Exception as e:  # PermissionDenied, EAFNOSUPPORT, ...
            err = getattr(e, "errno", None)
            if self._socket_errors.get(sk, (None, ""))[1] != str(e):
                fam = "IPv6" if family == socket.AF_INET6 else "IPv4"
                self._log.error(f"cannot open the {fam} {kind.upper()} socket: {e}", errno=err)
            self._socket_errors[sk] = (err, str(e))
            return None
        self._socket_errors.pop(sk, None)
        self._sockets[sk] = sock
        timing = getattr(sock, "timing", "raw")
        if kind == "tcp" and self._tcp_timing != "connect":
            self._tcp_timing = timing
        if kind == "tcp" and timing == "connect" and self.mode != "connect":
            self._log.warning(
                "no CAP_NET_RAW: TCP timed by connect() (non-blocking, many at once; RTTs "
                "from user space, no TTL); grant CAP_NET_RAW for raw SYNs"
            )
        sock.set_log(self._mode_for(sk))
        self._apply_rtt_buckets(sock)
        self._slot_maps[sk] = []
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable, sk)
        return sock

    def _attach(self, t: _Target) -> bool:
        """Give ``t`` a slot in its family's socket; False if the socket is unavailable."""
        assert t.address is not None
        sock = self._ensure_socket(t.sk)
        if sock is None:
            return False
        if t.question is not None:  # a DNS slot: its question too
            slot = sock.add_query(t.address, t.port, *t.question)  # type: ignore[attr-defined]
        else:
            slot = sock.add_target(t.address, t.port) if t.port else sock.add_target(t.address)
        sock.set_slot_timeout(slot, t.timeout_s)
        smap = self._slot_maps[t.sk]
        if slot >= len(smap):
            smap.extend([None] * (slot + 1 - len(smap)))
        smap[slot] = t
        t.slot = slot
        return True

    def _free_slot_later(self, sk: SockKey, slot: int) -> None:
        # Replies and timeouts for probes in flight still map to the target until
        # they are all in; only then is the slot given back (and maybe reused).
        if self._loop is None or not self._running:
            return
        self._loop.call_later(
            self.max_timeout_s + 2 * self.expire_every_s, self._free_slot, sk, slot
        )

    def _free_slot(self, sk: SockKey, slot: int) -> None:
        sock = self._sockets.get(sk)
        smap = self._slot_maps.get(sk)
        if sock is None or smap is None or slot >= len(smap):
            return
        t = smap[slot]
        if t is not None and not t.removed and t.slot == slot:
            return  # reused meanwhile (cannot happen before the free, but be safe)
        # expire what is still out for this slot, hand its log to the store, free it
        self._handle(sk, sock.expire(self.max_timeout_s))
        if t is not None:
            self._submit_chunk_items(
                [(t.host, sock.slot_address(s), b) for s, b in sock.take_log(slot)]
            )
            if self.loss is not None and t.removed and t.host not in self._targets:
                self._outage_events(self.loss.forget(t.host))
        smap[slot] = None
        sock.remove_target(slot)
        self._flush_out()

    # -- scheduling ---------------------------------------------------------------

    def _activate(self, t: _Target) -> None:
        """Put ``t`` on the wheel at its phase (and resolve it if it is a name)."""
        self._phase_n += 1
        frac = (self._phase_n * _GOLDEN) % 1.0
        tick = self._tick_now() + 1 + int(frac * t.interval_ticks)
        if t.address is not None and t.slot is None:
            self._attach(t)  # failure: the due probe records SEND_ERROR and retries
        elif t.is_name and t.address is None:
            self._start_resolve(t)
        if t.slot is not None and t.errors < self.backoff_after:
            self._make_steady(t, tick)
        else:
            self._schedule(t, tick)

    def _schedule(self, t: _Target, tick: int, exact: float | None = None) -> None:
        t.due_tick = tick
        t.due_exact = float(tick) if exact is None else exact
        self._wake_by(tick)
        b = self._wheel.get(tick)
        if b is None:
            self._wheel[tick] = [t]
        else:
            b.append(t)

    def _make_steady(self, t: _Target, tick: int) -> None:
        """Put ``t``'s slot in the slot array of ``tick`` (it leaves the target wheel)."""
        assert t.slot is not None
        t.steady = True
        t.due_tick = -1  # its entries on the target wheel, if any, are stale now
        self._wake_by(tick)
        groups = self._steady.get(tick)
        if groups is None:
            groups = self._steady[tick] = {}
        key = (t.sk, t.interval_ticks)
        grp = groups.get(key)
        if grp is None:
            groups[key] = [float(tick), array("I", (t.slot,))]
        else:
            grp[1].append(t.slot)

    def _unsteady(self, t: _Target) -> None:
        """Take ``t``'s slot out of its slot array. A scan of every array, in C:
        removals are rare."""
        t.steady = False
        slot = t.slot
        if slot is None:
            return
        key = (t.sk, t.interval_ticks)
        for groups in self._steady.values():
            grp = groups.get(key)
            if grp is not None and slot in grp[1]:
                grp[1].remove(slot)
                if not grp[1]:
                    del groups[key]
                return

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
            nt = self._tick_now() + max(1, round(t.interval_ticks))
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
        if t.steady:
            self._unsteady(t)
        self._schedule(t, self._tick_now() + max(1, round(b * self._factor / self.tick_s)))

    def _now(self) -> float:
        """The engine's clock: its loop's (virtual in tests), monotonic outside one."""
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _tick_now(self) -> int:
        """The current tick (the loop may have slept through empty ones)."""
        if self._loop is None or not self._running:
            return self._cur_tick
        return max(self._cur_tick, _tick_of(self._loop.time() - self._t0, self.tick_s))

    def _arm(self, tick: int) -> None:
        assert self._loop is not None
        self._armed_tick = tick
        self._next_tick_at = self._t0 + tick * self.tick_s
        self._tick_handle = self._loop.call_at(self._next_tick_at, self._on_tick)

    def _wake_by(self, tick: int) -> None:
        """Make sure the loop wakes up by ``tick`` (something was scheduled there)."""
        if self._in_tick or self._tick_handle is None or tick >= self._armed_tick:
            return  # the end of this tick picks the next one; or it wakes early enough
        self._tick_handle.cancel()
        self._arm(max(tick, self._tick_now() + 1))

    def _next_wake(self, cur: int) -> int:
        """The next tick with work: probes due, probes to expire, a log to hand over.
        Empty ticks are slept through: each wake-up costs CPU (~60-120 us on a VM), and
        an engine watching ten targets has nothing to do on most ticks."""
        nxt = cur + 1
        if nxt in self._steady or nxt in self._wheel:
            return nxt  # the busy case (every tick has probes): no search
        cands = []
        if self._steady:
            cands.append(min(self._steady))
        if self._wheel:
            cands.append(min(self._wheel))
        if self._sockets:
            tot = self._socket_totals()
            tick_s, t0 = self.tick_s, self._t0
            if tot.get("outstanding", 0) > 0:  # time them out on time
                cands.append(math.ceil((self._next_expire_at - t0) / tick_s))
            if tot.get("log_pending", 0) > 0:  # hand the log over on time
                cands.append(math.ceil((self._next_log_flush_at - t0) / tick_s))
        if not cands:
            # nothing at all to do: look again in a second (a target added from another
            # callback wakes the loop at once through _wake_by anyway)
            return cur + max(1, round(1.0 / self.tick_s))
        return max(nxt, min(cands))

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
        cur = _tick_of(now - self._t0, self.tick_s)
        prev = self._cur_tick
        self._cur_tick = cur
        self._in_tick = True
        self._check_network()
        for fn in self._tick_listeners:
            try:
                fn()
            except Exception as e:  # like an observer's: counted, never stops probing
                self._observer_errors += 1
                self._log.error("tick listener failed", error=repr(e))
        try:
            self._send_due(prev, cur, now)
            if now >= self._next_expire_at:
                self._next_expire_at = now + self.expire_every_s
                self._drain_all(self.max_timeout_s)
            self._flush_out()
            if now >= self._next_log_flush_at:
                self._next_log_flush_at = now + self.store_flush_s
                self._flush_logs()
        finally:
            self._in_tick = False
            if self._running and not self._stopping:
                self._arm(self._next_wake(cur))

    def _step(self, t: _Target, factor: float) -> float:
        """Ticks (unrounded) to the next probe of ``t``: its interval, stretched by the
        guard's factor, or its backoff delay."""
        if t.errors >= self.backoff_after:
            b = self._backoff_s(t)
            assert b is not None
            return max(1.0, b * factor / self.tick_s)
        return max(1.0, t.interval_ticks * factor)

    @staticmethod
    def _next_tick(exact: float, step: float, tk: int, cur: int) -> tuple[int, float]:
        """The tick after ``tk`` for a probe ``step`` ticks after the unrounded ``exact``
        (ticks are rounded, the phase is kept unrounded so an interval that is not a
        whole number of ticks is exact on average). When the loop stalled past it, the
        missed rounds are skipped but the phase is kept: otherwise every target would
        pile into one tick and go out in one burst from then on."""
        exact += step
        if exact < cur + 0.5:
            exact += (int((cur + 0.5 - exact) / step) + 1) * step
        # rounded half up, with the same millionth of a tick as _tick_of: a phase that
        # sits on a half tick must not fall on either side by floating-point noise (an
        # interval of a whole number of ticks would come out as alternating gaps)
        return max(tk + 1, int(exact + 0.5 + 1e-6)), exact

    def _send_due(self, prev: int, cur: int, now: float) -> None:
        # Steady targets cost no Python per probe: each due slot array goes to the core
        # in one send() and moves, whole, to its next tick. Only targets that need
        # attention are looked at one by one (below).
        steady = self._steady
        wheel = self._wheel
        factor = self._factor
        net_down = self._net_down
        sent: set[SockKey] = set()
        # when each tick's probes were due, on the core's clock (CLOCK_REALTIME ns): the
        # core counts how late each one really left (its kernel TX timestamp)
        wall_off_ns = time.time_ns() - int(now * 1e9)
        for tk in range(prev + 1, cur + 1):
            due_ns = int((self._t0 + tk * self.tick_s) * 1e9) + wall_off_ns
            groups = steady.pop(tk, None)
            if groups:
                for key, grp in groups.items():
                    sk, step = key
                    arr = grp[1]
                    nt, grp[0] = self._next_tick(grp[0], max(1.0, step * factor), tk, cur)
                    dest = steady.get(nt)
                    if dest is None:
                        dest = steady[nt] = {}
                    have = dest.get(key)
                    if have is None:
                        dest[key] = grp
                    else:
                        have[1].extend(arr)
                    if net_down:
                        self._local_down_slots(sk, arr)
                        continue
                    sock = self._sockets.get(sk)
                    if sock is None:  # closed under us (stop): nothing to send
                        continue
                    self._send_calls += 1
                    # the core drains the socket after each sendmmsg batch: the events
                    # returned are send errors AND replies (on loopback the reply is
                    # queued inside sendmmsg)
                    self._handle(sk, sock.send(arr, True, due_ns))
                    sent.add(sk)
            bucket = wheel.pop(tk, None)
            if bucket:
                self._send_due_targets(tk, cur, bucket, factor, due_ns)
        # one recv() more takes what came in meanwhile
        for sk in sent:
            sock = self._sockets.get(sk)
            if sock is not None:
                self._handle(sk, sock.recv())

    def _local_down_slots(self, sk: SockKey, slots: array[int]) -> None:
        """Due probes of steady targets while our network is down: recorded, not sent."""
        smap = self._slot_maps.get(sk, [])
        wall = time.time()
        for slot in slots:
            t = smap[slot] if slot < len(smap) else None
            if t is None:
                continue
            self._record_local_down(t, wall)

    def _record_local_down(self, t: _Target, wall: float) -> None:
        self._local_down += 1
        self._own_result(t, ProbeResult(t.host, t.address, -1, Outcome.LOCAL_DOWN, time=wall))
        self._note(t, Outcome.LOCAL_DOWN, STATUS_LOCAL_DOWN)

    def _own_result(self, t: _Target, r: ProbeResult) -> None:
        """A final result the engine made itself (no probe reached the core's log):
        to the store and, when someone wants results, to them; counted per target."""
        self._store_out.append(r)
        if self._want_all or t.kind in self._want_kinds:
            self._out.append(r)
        t.py_done += 1
        t.mcounts[OUTCOME_CODE[r.outcome]] += 1

    def _send_due_targets(
        self, tk: int, cur: int, bucket: list[_Target], factor: float, due_ns: int = 0
    ) -> None:
        """Due targets that need attention, one by one: not attached (name not resolved,
        no socket) or backing off. A target that is attached and not backing off
        becomes steady (its slot joins the slot array of its next tick)."""
        backoff_after = self.backoff_after
        wall = time.time()
        for t in bucket:
            if t.due_tick != tk or t.steady:
                continue  # rescheduled (backoff), removed or steady: a stale entry
            nt, exact = self._next_tick(t.due_exact, self._step(t, factor), tk, cur)
            if t.slot is not None and t.errors < backoff_after:
                self._make_steady(t, nt)
            else:
                self._schedule(t, nt, exact)
            if self._net_down and t.address is not None:
                self._record_local_down(t, wall)
                continue
            if t.slot is None:
                self._probe_unattached(t, wall)
                continue
            sock = self._sockets.get(t.sk)
            if sock is None:
                continue
            self._send_calls += 1
            self._handle(t.sk, sock.send((t.slot,), True, due_ns))

    def _probe_unattached(self, t: _Target, wall: float) -> None:
        """A due probe for a target without a slot: unresolved name or no socket."""
        if t.address is None:
            if t.resolving:
                return  # first resolution still running: nothing to report yet
            if t.resolve_failed:
                self._start_resolve(t)  # the attempt is the probe; it reports
            return
        if self._attach(t):
            sock = self._sockets[t.sk]
            assert t.slot is not None
            self._send_calls += 1
            self._handle(t.sk, sock.send((t.slot,)))
            return
        err, msg = self._socket_errors.get(t.sk, (None, "socket unavailable"))
        self._py_send_errors += 1
        self._own_result(
            t, ProbeResult(t.host, t.address, -1, Outcome.SEND_ERROR, errno=err, time=wall)
        )
        t.errors += 1
        t.last_errno = err
        self._note(t, Outcome.SEND_ERROR, STATUS_ERROR, msg)
        self._apply_backoff(t)

    # -- events ------------------------------------------------------------------

    def _on_readable(self, sk: SockKey) -> None:
        sock = self._sockets.get(sk)
        if sock is None:
            return
        self._handle(sk, sock.recv())
        self._flush_out()

    def _drain_all(self, timeout_s: float) -> None:
        for sk, sock in list(self._sockets.items()):
            self._handle(sk, sock.recv())
            self._handle(sk, sock.expire(timeout_s))
        self._flush_out()

    def _handle(self, sk: SockKey, events: Sequence[CoreEvent]) -> None:
        """Core events -> per-target state, and ``ProbeResult`` where someone needs one.

        In the quiet log mode only state changes arrive here. Replies and timeouts
        are in the core's log then (the store gets them from there), so a result is
        built for them only for subscribers and observers (log mode 2)."""
        if not events:
            return
        smap = self._slot_maps.get(sk)
        if smap is None:
            self._orphan_events += len(events)
            return
        n_map = len(smap)
        want = self._want_all or sk[0] in self._want_kinds
        logged = self._log_mode != 0  # replies and timeouts are in the core's log
        out = self._out
        wall = time.time()
        new_result = _tuple_new
        result_cls = ProbeResult
        reply = Outcome.REPLY
        ev_reply = EV_REPLY
        for slot, kind, seq, rtt_ns, ttl, itype, icode, router, err in events:
            t = smap[slot] if slot < n_map else None
            if t is None:
                self._orphan_events += 1
                continue
            if kind == ev_reply:
                if want or not logged:
                    r = new_result(
                        result_cls,
                        # the core gives None when it has no TTL
                        (t.host, t.address, seq, reply, rtt_ns / 1e6, ttl or None,
                         itype, icode, None, None, wall),
                    )  # fmt: skip
                    if want:
                        out.append(r)
                    if not logged:
                        self._store_out.append(r)
                t.last_outcome = reply
                if t.errors:
                    self._reset_errors(t)
                if t.status != STATUS_UP:
                    self._set_status(t, STATUS_UP, "reply")
                continue
            self._handle_other(t, slot, kind, seq, rtt_ns, ttl, itype, icode, router, err,
                               wall, want)  # fmt: skip

    def _handle_other(
        self,
        t: _Target,
        slot: int,
        kind: int,
        seq: int,
        rtt_ns: int,
        ttl: int | None,
        itype: int | None,
        icode: int | None,
        router: str | None,
        err: int | None,
        wall: float,
        want: bool,
    ) -> None:
        """Every event but a reply: timeouts, errors, duplicates, late replies."""
        outcome = OUTCOME_BY_KIND[kind]
        status = _STATUS_BY_KIND[kind]
        # a timeout or a closed port is in the core's log unless the log is off (our
        # network is down)
        logged = kind in _LOGGED and self._log_mode != 0
        if self._net_down and kind in (EV_TIMEOUT, EV_SEND_ERROR):
            outcome = Outcome.LOCAL_DOWN
            status = STATUS_LOCAL_DOWN
            self._local_down += 1
            if kind == EV_TIMEOUT:
                self._timeouts_local_down += 1
            else:
                self._senderr_local_down += 1
            if slot == t.slot:  # the slot counted it as a timeout or send error
                mc = t.mcounts
                mc[_C_TIMEOUT if kind == EV_TIMEOUT else _C_SENDERR] -= 1
                mc[_C_LOCAL_DOWN] += 1
                t.sent_down += 1
        is_icmp = kind in (EV_UNREACHABLE, EV_TIME_EXCEEDED)
        rtt = rtt_ns / 1e6 if kind in (EV_DUPLICATE, EV_LATE, EV_CLOSED) and rtt_ns > 0 else None
        if want or not logged:
            r = ProbeResult(
                t.host,
                t.address,
                seq,
                outcome,
                rtt,
                (ttl or None) if is_icmp or rtt is not None else None,
                itype if is_icmp or (rtt is not None and kind != EV_CLOSED) else None,
                icode if is_icmp or (rtt is not None and kind != EV_CLOSED) else None,
                router if is_icmp else None,
                err or None,
                wall,
            )
            if want:
                self._out.append(r)
            if not logged:
                self._store_out.append(r)
        if kind in (EV_DUPLICATE, EV_LATE):
            return  # extra events: counted apart, no state change
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
        # a target's first state is no change: 10,000 of them would be 10,000 INFO lines
        # in the first second (the monitor logs one line for the first round instead)
        log = self._log.debug if old == STATUS_UNKNOWN else self._log.info
        log("target state changed", target=t.host, old=old, new=status, reason=reason)

    def _flush_out(self) -> None:
        """Hand this callback's results to the store and the subscribers."""
        sout = self._store_out
        if sout:
            self._store_out = []
            if self.store is not None:
                try:
                    self.store.submit(sout)
                    self._submitted_batches += 1
                except Exception as e:  # never let the store stop probing; count it
                    self._store_errors += 1
                    self._log.error("store rejected a batch", error=str(e), results=len(sout))
        out = self._out
        if out:
            self._out = []
            for fn, kinds in self._observers:
                try:
                    if kinds is None:
                        fn(out)
                    else:
                        mine = self._results_of(out, kinds)
                        if mine:
                            fn(mine)
                except Exception as e:  # an observer must not stop probing; count it
                    self._observer_errors += 1
                    if self._observer_errors == 1 or self._observer_errors % 1000 == 0:
                        self._log.error(
                            "result observer failed", error=repr(e), count=self._observer_errors
                        )
            if self._subs:
                evs: list[EngineEvent] = [ResultEvent(r) for r in out]
                if self._evs:
                    evs.extend(self._evs)
                    self._evs = []
                for sub in self._subs:
                    sub._put_many(evs)
        self._publish()

    def _flush_logs(self) -> None:
        """Every socket's outcome log to the store: one chunk per target."""
        for sk, sock in self._sockets.items():
            items = sock.take_log()
            if items:
                smap = self._slot_maps.get(sk, [])
                n_map = len(smap)
                out: list[tuple[str, str | None, bytes]] = []
                for slot, blob in items:
                    t = smap[slot] if slot < n_map else None
                    if t is None:  # cannot happen: a slot's log is taken before it is freed
                        self._orphan_events += len(blob) // _CHUNK_RECORD
                        continue
                    out.append((t.host, sock.slot_address(slot), blob))
                self._submit_chunk_items(out)

    def _submit_chunk_items(self, items: list[tuple[str, str | None, bytes]]) -> None:
        if not items:
            return
        if self.loss is not None:
            self._feed_loss(items)
        self._chunks += len(items)
        self._log_records += sum(len(b) for _, _, b in items) // _CHUNK_RECORD
        if self.store is None:
            return  # counted and published already; there is nowhere to keep them
        try:
            self.store.submit_chunks(items)
        except Exception as e:  # never let the store stop probing; count it
            self._store_errors += 1
            self._log.error("store rejected the outcome log", error=str(e), chunks=len(items))

    def _feed_loss(self, items: list[tuple[str, str | None, bytes]]) -> None:
        """The chunks of one hand-over to the loss tracker; outage events out. Per
        chunk that is all replies: a dict lookup, a bytes scan and two ints read."""
        loss = self.loss
        assert loss is not None
        evs = loss.feed_chunks(items, self._loss_params)
        if evs:
            self._outage_events(evs)

    def _loss_params(self, host: str) -> tuple[float, float]:
        """(timeout_s, interval_s) of a target for the loss tracker: its interval as
        the resource guard stretches it; (timeout, 0 = unknown) once removed."""
        t = self._targets.get(host)
        if t is None:
            return self.timeout_s, 0.0
        return t.timeout_s, t.interval_s * self._factor

    def _outage_events(self, evs: Sequence[OutageEvent]) -> None:
        """Outage starts and ends: to subscribers (as engine events), the store (its
        outages table, when it has one) and the log (a summary line past 20 a batch:
        a whole fleet going down must not write 10,000 lines)."""
        if not evs:
            return
        self._evs.extend(evs)
        for fn in self._outage_listeners:
            try:
                fn(evs)
            except Exception as e:  # a listener (a webhook queue) must not stop probing
                self._outage_listener_errors += 1
                self._log.error("outage listener failed", error=repr(e))
        submit = getattr(self.store, "submit_outages", None) if self.store is not None else None
        if submit is not None:
            try:
                submit([e.outage for e in evs])
            except Exception as e:  # never let the store stop probing; count it
                self._store_errors += 1
                self._log.error("store rejected outages", error=str(e), outages=len(evs))
        for ev in evs[:20]:
            o = ev.outage
            who = o.target if o.target is not None else "our own network"
            if ev.what == "start":
                self._log.warning(
                    "outage started", target=who, kind=o.kind, start=round(o.start, 3),
                    rule=o.rule,
                )  # fmt: skip
            else:
                self._log.info(
                    "outage ended", target=who, kind=o.kind, start=round(o.start, 3),
                    end=None if o.end is None else round(o.end, 3),
                    duration_s=None if o.duration_s is None else round(o.duration_s, 3),
                    lost=o.lost, rule=o.rule,
                )  # fmt: skip
        if len(evs) > 20:
            self._log.warning(
                "more outage events", events=len(evs) - 20,
                starts=sum(1 for e in evs[20:] if e.what == "start"),
                ends=sum(1 for e in evs[20:] if e.what == "end"),
            )  # fmt: skip
        if self._running and not self._in_tick:
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
            if self.loss is not None:
                # what the log holds happened before: the tracker sees it first, then
                # our outage (a target's loss run just before it is ours, not theirs)
                self._flush_logs()
                now = time.time()
                if down:
                    self._local_down_at_start = self._local_down
                    self._outage_events(self.loss.local_down(now))
                else:
                    self._outage_events(
                        self.loss.local_up(now, self._local_down - self._local_down_at_start)
                    )
            self._net_down = down
            self._update_log_modes()
            if not down:
                # the targets' statuses say local_down: let each next outcome through
                for sock in self._sockets.values():
                    sock.forget_last(-1)
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
                addrs = await self._resolver(t.name, self.family or 0)
                if not addrs:
                    raise OSError(f"no address for {t.host!r}")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # gaierror, UnicodeError, OSError
                self._resolve_failed(t, e)
                return
            fam, addr = addrs[0]
            t.resolve_failed = False
            after = _resolve_after(addrs, self.resolve_interval_s)
            t.next_resolve_at = self._now() + after
            if after < self.resolve_interval_s and self._loop is not None:
                # a TTL shorter than the usual interval: due on its own timer (the
                # resolve loop looks only every few seconds)
                self._loop.call_later(after, self._resolve_due, t)
            if t.removed:
                return
            if addr != t.address:
                if t.slot is not None:
                    if t.steady:  # probe the new address at the next tick
                        self._unsteady(t)
                        self._schedule(t, self._tick_now() + 1)
                    done, received, _ = self._slot_counts(t)
                    t.base_done += done
                    t.base_received += received
                    self._free_slot_later(t.sk, t.slot)
                    t.slot = None
                old = t.address
                t.set_address(addr, fam)
                if self._running and not self._stopping:
                    self._attach(t)
                if old is not None:
                    self._log.info("target address changed", target=t.host, old=old, new=addr)
            if t.errors and t.last_outcome is Outcome.RESOLVE_ERROR:
                self._reset_errors(t)
        finally:
            t.resolving = False

    def _resolve_due(self, t: _Target) -> None:
        if t.is_name and not t.removed and t.next_resolve_at <= self._now() + 1e-3:
            self._start_resolve(t)

    def _resolve_failed(self, t: _Target, e: BaseException) -> None:
        msg = getattr(e, "strerror", None) or str(e)
        if t.address is not None:
            # keep probing the last known address; try again sooner than usual
            self._reresolve_failures += 1
            t.next_resolve_at = self._now() + min(self.resolve_interval_s, _RERESOLVE_RETRY_S)
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
        self._own_result(
            t,
            ProbeResult(
                t.host,
                None,
                -1,
                Outcome.RESOLVE_ERROR,
                errno=err if isinstance(err, int) else None,
                time=time.time(),
            ),
        )
        t.errors += 1
        self._note(t, Outcome.RESOLVE_ERROR, STATUS_ERROR, f"cannot resolve: {msg}")
        self._apply_backoff(t)
        self._flush_out()

    async def _resolve_loop(self) -> None:
        step = max(0.1, min(5.0, self.resolve_interval_s / 10))
        while True:
            await asyncio.sleep(step)
            now = self._now()
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
        return self._core_totals()["outstanding"]

    def _socket_totals(self) -> dict[str, int]:
        """The core's counters, summed over the open sockets."""
        out: dict[str, int] = {}
        for sock in self._sockets.values():
            try:
                for k, v in sock.totals().items():
                    out[k] = out.get(k, 0) + int(v)
            except Exception:  # a closed socket
                pass
        return out

    def _core_totals(self) -> dict[str, int]:
        """The core's counters over this engine's life (closed sockets included)."""
        now = self._socket_totals()
        closed = self._closed_totals
        return {k: now.get(k, 0) + closed.get(k, 0) for k in _CORE_COUNTERS + _SOCKET_COUNTERS}

    @property
    def tcp_timing(self) -> str | None:
        """How TCP targets are timed: "raw" (SYNs on a raw socket, kernel timestamps),
        "connect" (connect() on many sockets: mode="connect", or auto without
        CAP_NET_RAW), None before a TCP socket was opened."""
        return self._tcp_timing

    @property
    def interval_factor(self) -> float:
        return self._factor

    def send_lateness(self) -> SendLateness:
        """How late the probes left against their tick's schedule, over this engine's
        life: the kernel's TX timestamp of each probe minus the time its tick was due
        (event-loop wake-up lag plus the time to get through the batch). The prober's
        own noise, so it is never mistaken for the network's jitter."""
        return self._closed_lateness + SendLateness.of(s.lateness() for s in self._sockets.values())

    def stats(self) -> dict[str, Any]:
        """Counters for logs and metrics."""
        c = self._core_totals()
        outcomes = {
            "reply": c["received"] - c["closed"],
            "closed": c["closed"],
            "timeout": c["timeouts"] - self._timeouts_local_down,
            "unreachable": c["unreachable"],
            "time_exceeded": c["time_exceeded"],
            "send_error": c["send_errors"] - self._senderr_local_down + self._py_send_errors,
            "duplicate": c["duplicates"],
            "late": c["late"],
            "local_down": self._local_down,
            "resolve_error": self._resolve_errors,
        }
        loop_time = self._loop.time() if self._loop is not None else 0.0
        sock_totals = {k: c[k] for k in _SOCKET_COUNTERS}
        store_stats: dict[str, Any] | None = None
        if self.store is not None and hasattr(self.store, "stats"):
            with contextlib.suppress(Exception):
                store_stats = dict(self.store.stats())
        return {
            "targets": len(self._targets),
            "running": self._running,
            "tcp_timing": self.tcp_timing,
            "uptime_s": round(loop_time - self._t0, 3) if self._running else None,
            "sent": c["sent"],
            "received": c["received"] - c["closed"],
            "results": sum(outcomes.values()),
            "outstanding": c["outstanding"],
            "outcomes": outcomes,
            "log_chunks": self._chunks,
            "log_records": self._log_records,
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
            "send_lateness": self.send_lateness().to_dict(behind_schedule_us(self.interval_s)),
            "network_down": self._net_down,
            "guard": self.guard.stats(),
            "socket": sock_totals,
            "store_submit_errors": self._store_errors,
            "observer_errors": self._observer_errors,
            "store": store_stats,
            "loss": self._loss_stats(),
            "paths": None if self.paths is None else self.paths.stats(),
        }

    def _loss_stats(self) -> dict[str, Any] | None:
        loss = self.loss
        if loss is None:
            return None
        return {
            "outages_total": loss.outages_total,
            "outages_current": loss.outages_current,
            "local_outages_total": loss.local_outages_total,
            "local_outage": loss.local_outage is not None,
            "burst_buckets": list(loss.burst_buckets),
            "burst_sum": loss.burst_sum,
            "records": loss.records,
        }

    def add_outage_listener(self, fn: Callable[[Sequence[OutageEvent]], None]) -> None:
        """Call ``fn(events)`` with every batch of outage starts and ends, in the event
        loop (keep it short: queue the work). Unlike a subscription it does not make
        the core return every probe's event, so it costs nothing per probe."""
        self._outage_listeners.append(fn)

    def path(self, host: str) -> Trace | None:
        """``host``'s latest trace (``fastping.trace.Trace``; None before its first, or
        when the engine traces nothing: ``trace_every_s``)."""
        if host not in self._targets:
            raise TargetError(f"target {host!r} is not being watched")
        return None if self.paths is None else self.paths.path(host)

    def _path_events(self, evs: Sequence[PathChange]) -> None:
        """Path changes (fastping.pathwatch) to the subscribers."""
        self._evs.extend(evs)
        if self._running and not self._in_tick:
            self._publish()

    def outages(self) -> list[Any]:
        """Outages going on now (``fastping.loss.Outage``), targets' and ours."""
        if self.loss is None:
            return []
        cur = self.loss.current_outages()
        if self.loss.local_outage is not None:
            cur.append(self.loss.local_outage)
        return cur
