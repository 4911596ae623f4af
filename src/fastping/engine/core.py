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
* **A timing wheel, ticked every ``tick_s`` (20 ms)** (``engine.wheel.Wheel``, on
  integer ticks: this class turns the loop's time into ticks). Each target has its own
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

# The core's event kinds: results.EventKind's numbers (OUTCOME_BY_KIND's index).
from .._icmp import (
    EV_CLOSED,
    EV_DUPLICATE,
    EV_LATE,
    EV_LOCAL_DOWN,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
)
from ..chunk import OUTCOME_CODE, RECORD_SIZE
from ..errors import ConfigError, TargetError
from ..guard import ResourceGuard
from ..loss import LossTracker, OutageEvent, OutageRule
from ..pathwatch import PathChange, PathWatcher
from ..results import OUTCOME_BY_KIND, Outcome, ProbeResult
from .contracts import (
    ChunkItem,
    CoreEvent,
    IcmpSocketLike,
    NetworkMonitorLike,
    Observer,
    Resolver,
    ResultStoreLike,
    SocketFactory,
    SockKey,
    network_is_down,
)
from .events import EngineEvent, ResultEvent, StateChanged, Subscription, TargetAdded, TargetRemoved
from .sockets import socket_factories
from .stats import (
    CORE_COUNTERS,
    SOCKET_COUNTERS,
    EngineStats,
    LossStats,
    OutcomeCounts,
    SendLateness,
    behind_schedule_us,
)
from .target import (
    STATUS_DOWN,
    STATUS_ERROR,
    STATUS_LOCAL_DOWN,
    STATUS_RANK,
    STATUS_UNKNOWN,
    STATUS_UP,
    TargetCounters,
    TargetInfo,
    _Target,
)
from .wheel import Wheel, tick_of

if TYPE_CHECKING:
    from ..targets import Address, KindTarget, Name
    from ..trace import Trace

_CHUNK_RECORD = RECORD_SIZE
_tuple_new = tuple.__new__

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
# Outcomes that prove the probe left the host: they reset the error backoff.
_LEFT_HOST = frozenset((EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE, EV_TIME_EXCEEDED, EV_CLOSED))
# the kinds the core logs (and the store gets from the log): replies, timeouts, closed
_LOGGED = frozenset((EV_REPLY, EV_TIMEOUT, EV_CLOSED))


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


def _get_logger() -> Any:
    try:
        from ..logs import get_logger

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


def _checked_tick(
    interval_s: float,
    timeout_s: float,
    min_interval_s: float | None,
    max_timeout_s: float | None,
    tick_s: float | None,
    stop_flush_s: float,
) -> float:
    """Check the engine's times one by one; the tick (given, or the default tick, or
    the shortest interval when that is shorter)."""
    _check_interval("interval_s", interval_s)
    _check_timeout("timeout_s", timeout_s)
    if min_interval_s is not None:
        _check_interval("min_interval_s", min_interval_s)
    if max_timeout_s is not None:
        _check_timeout("max_timeout_s", max_timeout_s)
    if not 0 < stop_flush_s <= 3600:
        raise ConfigError(f"stop_flush_s={stop_flush_s!r}: give 0 < seconds <= 3600")
    if tick_s is None:
        shortest = min_interval_s if min_interval_s is not None else interval_s
        tick_s = min(DEFAULT_TICK_S, shortest) if shortest > 0 else DEFAULT_TICK_S
    if not tick_s > 0 or tick_s > 1.0:
        raise ConfigError(f"tick_s={tick_s!r}: give a tick between 0 and 1 s (20 ms is usual)")
    return tick_s


def _check_choices(mode: str, family: int | None, backoff_after: int, store_flush_s: float) -> None:
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


def _window(min_interval_s: float, max_timeout_s: float) -> int:
    """Probes a slot may have in flight (an interval shorter than the timeout)."""
    window = math.ceil(max_timeout_s / min_interval_s) + 1
    if window > MAX_WINDOW:
        # every probe beyond the window would be a send_error: nothing would be probed
        raise ConfigError(
            f"interval {min_interval_s:g} s with timeout {max_timeout_s:g} s puts "
            f"{window} probes of a target in flight; at most {MAX_WINDOW} can be: give an "
            f"interval of at least {max_timeout_s / (MAX_WINDOW - 1):.3g} s or a shorter "
            "timeout"
        )
    return window


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
        store: ResultStoreLike | None = None,
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
        network: NetworkMonitorLike | None = None,
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
        tick_s = _checked_tick(
            interval_s, timeout_s, min_interval_s, max_timeout_s, tick_s, stop_flush_s
        )
        _check_choices(mode, family, backoff_after, store_flush_s)
        self._set_timing(
            interval_s, timeout_s, min_interval_s, max_timeout_s, tick_s, expire_every_s,
            stop_flush_s, store_flush_s,
        )  # fmt: skip
        self.resolve_interval_s = float(resolve_interval_s)
        self.backoff_after, self.max_backoff_s = int(backoff_after), float(max_backoff_s)
        self.mode, self.family = mode, family
        self.store, self.network = store, network
        self._log = logger if logger is not None else _get_logger()
        self.guard = self._own_guard(guard)
        self._factories = socket_factories(
            mode, socket_options, socket_factory, kind_factories, kind_options
        )
        self._resolver = resolver or _default_resolver
        self.window = _window(self.min_interval_s, self.max_timeout_s)
        self._init_state()
        self._init_counters()
        # loss patterns and outages (fastping.loss), fed with the outcome log's chunks
        self.loss: LossTracker | None = LossTracker(outage_rule) if loss_tracking else None
        # periodic traces of the ICMP targets, path changes as events (fastping.pathwatch)
        self.paths: PathWatcher | None = None
        if trace_every_s is not None:
            self.paths = PathWatcher(self, trace_every_s, **(trace_options or {}))
        for t in targets:
            self.add_target(t)

    def _own_guard(self, guard: ResourceGuard | None) -> ResourceGuard:
        """``guard`` (default: 50 % of a core, 100 MB), logging to the engine's log and
        stretching the engine's interval."""
        g = guard if guard is not None else ResourceGuard(logger=self._log)
        if g._log is None:
            g._log = self._log
        g.base_interval_s = self.interval_s
        return g

    def _set_timing(
        self,
        interval_s: float,
        timeout_s: float,
        min_interval_s: float | None,
        max_timeout_s: float | None,
        tick_s: float,
        expire_every_s: float | None,
        stop_flush_s: float,
        store_flush_s: float,
    ) -> None:
        """The engine's times (checked one by one already), and how they must relate."""
        self.stop_flush_s = float(stop_flush_s)
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

    def _init_state(self) -> None:
        """Targets, sockets, the wheel, subscribers and the life-cycle state."""
        self._targets: dict[str, _Target] = {}
        # one socket per (kind, family), opened when a target needs it
        self._sockets: dict[SockKey, IcmpSocketLike] = {}
        self._slot_maps: dict[SockKey, list[_Target | None]] = {}
        self._socket_errors: dict[SockKey, tuple[int | None, str]] = {}
        self._tcp_timing: str | None = None  # the first TCP socket's ("connect" sticks)
        # steady slot arrays and targets needing attention, by tick (engine.wheel)
        self._wheel: Wheel[_Target] = Wheel(self._wake_by)
        self._idle_ticks = max(1, round(1.0 / self.tick_s))  # nothing to do: wake in 1 s
        self._subs: list[Subscription] = []
        # (observer, the probe kinds whose results it wants; None: every result)
        self._observers: list[tuple[Observer, frozenset[str] | None]] = []
        self._tick_listeners: list[Callable[[], None]] = []
        self._out: list[ProbeResult] = []  # results of this callback for subscribers
        self._store_out: list[ProbeResult] = []  # results of this callback the core did not log
        self._want_all = False  # subscribers or observers of all: every event returned
        self._want_kinds: frozenset[str] = frozenset()  # ... of these kinds' sockets
        self._rtt_bounds_ns: tuple[int, ...] = ()  # per-slot RTT buckets (set_rtt_buckets)
        self._evs: list[EngineEvent] = []  # non-result events of the current callback
        self._outage_listeners: list[Callable[[Sequence[OutageEvent]], None]] = []

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

    def _init_counters(self) -> None:
        """The engine's own counters: the core counts what it sees (totals())."""
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
        self._local_down_at_start = 0  # self._local_down when our network went down
        self._outage_listener_errors = 0
        self._outage_log_lines = 0

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
        from ..targets import Address, Name, kind_label, parse_target, with_kind

        kt = with_kind(host, kind, port)
        if kt.kind not in self._factories:
            raise TargetError(
                f"target {host!r}: probe kind {kt.kind!r} is not known here "
                f"(known: {', '.join(self._factories)})"
            )
        specs = parse_target(kt.host)
        if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
            self._add_block(host, kt, interval_s, labels, timeout_s)
            return
        spec = specs[0]
        key = kind_label(
            kt.kind, spec.label if isinstance(spec, Address) else spec.name, kt.port,
            kt.qname, kt.qtype,
        )  # fmt: skip
        if key in self._targets:
            raise TargetError(f"target {key!r} is already being watched")
        family = spec.family if isinstance(spec, Address) else None
        iv, to = self._target_times(key, family, interval_s, timeout_s)
        t = self._new_target(key, spec, kt, iv, to, labels)
        self._targets[key] = t
        self._evs.append(TargetAdded(key, iv, dict(t.labels)))
        if self._running:
            self._activate(t)
            self._publish()
        self._log.debug("target added", target=key, interval_s=iv)

    def _new_target(
        self,
        key: str,
        spec: Address | Name,
        kt: KindTarget,
        interval_s: float,
        timeout_s: float,
        labels: dict[str, str] | None,
    ) -> _Target:
        from ..targets import Address, Name

        t = _Target(key, interval_s, dict(labels or {}), isinstance(spec, Name), kt.kind, kt.port)
        t.name = spec.label if isinstance(spec, Address) else spec.name
        if kt.qname:
            t.question = (kt.qname, kt.qtype)
        t.interval_ticks = max(1.0, interval_s / self.tick_s)
        t.timeout_s = timeout_s
        t.timeout_ns = int(timeout_s * 1e9)
        if isinstance(spec, Address):
            t.set_address(spec.address, spec.family)
        return t

    def _add_block(
        self,
        host: str,
        kt: KindTarget,
        interval_s: float | None,
        labels: dict[str, str] | None,
        timeout_s: float | None,
    ) -> None:
        """A CIDR block or range: each of its addresses, or none when one is taken."""
        from ..targets import expand_target, kind_label

        hosts = [
            kind_label(kt.kind, h, kt.port, kt.qname, kt.qtype) for h in expand_target(kt.host)
        ]
        taken = [h for h in hosts if h in self._targets]
        if taken:
            raise TargetError(f"target {host!r}: {taken[0]!r} is already being watched")
        for h in hosts:
            self.add_target(h, interval_s, labels, timeout_s)

    def _target_times(
        self, key: str, family: int | None, interval_s: float | None, timeout_s: float | None
    ) -> tuple[float, float]:
        """A new target's (interval, timeout), checked against what the engine can
        serve; ``family`` is an address's (None for a name)."""
        iv = self.interval_s if interval_s is None else float(interval_s)
        if not iv > 0:
            raise TargetError(f"target {key!r}: interval_s={interval_s!r} must be positive")
        if iv < self.min_interval_s:
            raise TargetError(
                f"target {key!r}: interval {iv:g} s is shorter than this engine's minimum "
                f"({self.min_interval_s:g} s, which sizes the socket window); create the engine "
                f"with min_interval_s={iv:g}"
            )
        if family is not None and self.family not in (None, family):
            raise TargetError(f"target {key!r} is not of the family this engine was limited to")
        to = self.timeout_s if timeout_s is None else float(timeout_s)
        if not 0 < to <= self.max_timeout_s:
            raise TargetError(
                f"target {key!r}: timeout {to:g} s must be positive and at most this engine's "
                f"max_timeout_s ({self.max_timeout_s:g} s); create the engine with "
                f"max_timeout_s={to:g}"
            )
        return iv, to

    def remove_target(self, host: str) -> None:
        """Stop watching ``host``. Probes already in flight still get their result
        (the slot is freed ``timeout_s`` later). A block or range removes each of
        its addresses."""
        if host not in self._targets and ("/" in host or "-" in host):
            from ..targets import expand_kind_target

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
        self._wheel.remove(t)
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
        rank = STATUS_RANK
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
            counts[EV_REPLY] += st.received - closed
            counts[EV_DUPLICATE] += st.duplicates
            counts[EV_LATE] += st.late
            counts[EV_TIMEOUT] += st.timeouts
            counts[EV_UNREACHABLE] += st.unreachable
            counts[EV_TIME_EXCEEDED] += st.time_exceeded
            counts[EV_SEND_ERROR] += st.send_errors
            counts[EV_CLOSED] += closed
            if st.received > closed:
                ttl = st.last_ttl
            got = sock.slot_buckets(slot)
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
        if self._rtt_bounds_ns:
            sock.set_rtt_buckets(self._rtt_bounds_ns)

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
        self._net_down = self.network is not None and network_is_down(self.network)
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
        await self._linger(loop)
        self._flush_logs()
        if self.loss is not None:
            # records held back for order are all in now; outages still going on are
            # stored with what they have lost so far (and no end: we stopped watching)
            self._outage_events(self.loss.settle())
            submit = getattr(self.store, "submit_outages", None)
            if submit is not None:
                with contextlib.suppress(Exception):
                    submit(self.loss.current_outages())
        self._close_sockets(loop)
        self._running = False
        await self._flush_store_at_stop()
        for sub in list(self._subs):
            sub._end()
        self._subs.clear()
        st = self.stats()
        self._log.info(
            "monitoring stopped", sent=st["sent"], results=st["results"], received=st["received"]
        )

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the probes in flight their full timeout to answer (replies keep
        arriving through the readers); what is still out then is a timeout."""
        deadline = loop.time() + self.max_timeout_s + self.expire_every_s
        while self.outstanding > 0 and loop.time() < deadline:
            await asyncio.sleep(min(0.01, self.tick_s))
            self._drain_all(self.max_timeout_s)
        self._drain_all(0.0)  # expire(0) takes all

    def _close_sockets(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close every socket, keeping its counters (engine's and per target), and
        empty the wheel."""
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

    async def _flush_store_at_stop(self) -> None:
        if self.store is None:
            return
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
        tick = self._wheel.first_tick(self._tick_now(), t.interval_ticks)
        if t.address is not None and t.slot is None:
            self._attach(t)  # failure: the due probe records SEND_ERROR and retries
        elif t.is_name and t.address is None:
            self._start_resolve(t)
        if t.slot is not None and t.errors < self.backoff_after:
            self._wheel.make_steady(t, tick)
        else:
            self._wheel.schedule(t, tick)

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
                self._wheel.schedule(t, nt)

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
            self._wheel.unsteady(t)
        self._wheel.schedule(t, self._tick_now() + max(1, round(b * self._factor / self.tick_s)))

    def _now(self) -> float:
        """The engine's clock: its loop's (virtual in tests), monotonic outside one."""
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _tick_now(self) -> int:
        """The current tick (the loop may have slept through empty ones)."""
        if self._loop is None or not self._running:
            return self._cur_tick
        return max(self._cur_tick, tick_of(self._loop.time() - self._t0, self.tick_s))

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
        """The next tick with work: probes due (the wheel's), probes to expire, a log to
        hand over. Empty ticks are slept through: each wake-up costs CPU (~60-120 us on
        a VM), and an engine watching ten targets has nothing to do on most ticks; with
        nothing at all to do it looks again in a second (a target added from another
        callback wakes the loop at once through _wake_by anyway)."""
        return self._wheel.next_wake(cur, self._deadline_ticks, self._idle_ticks)

    def _deadline_ticks(self) -> list[int]:
        """The ticks by which probes in flight must be timed out and the outcome log
        handed over (only when there are such)."""
        out: list[int] = []
        if self._sockets:
            tot = self._socket_totals()
            tick_s, t0 = self.tick_s, self._t0
            if tot.get("outstanding", 0) > 0:  # time them out on time
                out.append(math.ceil((self._next_expire_at - t0) / tick_s))
            if tot.get("log_pending", 0) > 0:  # hand the log over on time
                out.append(math.ceil((self._next_log_flush_at - t0) / tick_s))
        return out

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
        cur = tick_of(now - self._t0, self.tick_s)
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

    def _send_due(self, prev: int, cur: int, now: float) -> None:
        # Steady targets cost no Python per probe: each due slot array goes to the core
        # in one send() (the wheel has moved it, whole, to its next tick). Only targets
        # that need attention are looked at one by one (_send_due_targets).
        wheel = self._wheel
        pop_steady = wheel.pop_steady
        sockets = self._sockets
        factor = self._factor
        net_down = self._net_down
        sent: set[SockKey] = set()
        # when each tick's probes were due, on the core's clock (CLOCK_REALTIME ns): the
        # core counts how late each one really left (its kernel TX timestamp)
        wall_off_ns = time.time_ns() - int(now * 1e9)
        for tk in range(prev + 1, cur + 1):
            due_ns = int((self._t0 + tk * self.tick_s) * 1e9) + wall_off_ns
            for sk, arr in pop_steady(tk, cur, factor):
                if net_down:
                    self._local_down_slots(sk, arr)
                    continue
                sock = sockets.get(sk)
                if sock is None:  # closed under us (stop): nothing to send
                    continue
                self._send_calls += 1
                # the core drains the socket after each sendmmsg batch: the events
                # returned are send errors AND replies (on loopback the reply is
                # queued inside sendmmsg)
                self._handle(sk, sock.send(arr, True, due_ns))
                sent.add(sk)
            if tk in wheel.attention:
                self._send_due_targets(tk, cur, factor, due_ns)
        # one recv() more takes what came in meanwhile
        for sk in sent:
            sock = sockets.get(sk)
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

    def _send_due_targets(self, tk: int, cur: int, factor: float, due_ns: int = 0) -> None:
        """Due targets that need attention, one by one: not attached (name not resolved,
        no socket) or backing off. A target that is attached and not backing off
        becomes steady (its slot joins the slot array of its next tick)."""
        backoff_after = self.backoff_after
        wheel = self._wheel
        wall = time.time()
        for t in wheel.pop_attention(tk):
            steady = t.slot is not None and t.errors < backoff_after
            wheel.reschedule(t, self._step(t, factor), tk, cur, steady)
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
        logged = not self._net_down  # replies and timeouts are in the core's log
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
        logged = kind in _LOGGED and not self._net_down
        if self._net_down and kind in (EV_TIMEOUT, EV_SEND_ERROR):
            outcome, status = self._count_local_down(t, slot, kind)
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

    def _count_local_down(self, t: _Target, slot: int, kind: int) -> tuple[Outcome, str]:
        """A timeout or send error while our network is down: counted as local_down
        (and apart, so stats() takes it out of the core's timeouts / send errors)."""
        self._local_down += 1
        if kind == EV_TIMEOUT:
            self._timeouts_local_down += 1
        else:
            self._senderr_local_down += 1
        if slot == t.slot:  # the slot counted it as a timeout or send error
            mc = t.mcounts
            mc[kind] -= 1  # kind: EV_TIMEOUT or EV_SEND_ERROR, a count's index
            mc[EV_LOCAL_DOWN] += 1
            t.sent_down += 1
        return Outcome.LOCAL_DOWN, STATUS_LOCAL_DOWN

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
                out: list[ChunkItem] = []
                for slot, blob in items:
                    t = smap[slot] if slot < n_map else None
                    if t is None:  # cannot happen: a slot's log is taken before it is freed
                        self._orphan_events += len(blob) // _CHUNK_RECORD
                        continue
                    out.append((t.host, sock.slot_address(slot), blob))
                self._submit_chunk_items(out)

    def _submit_chunk_items(self, items: list[ChunkItem]) -> None:
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

    def _feed_loss(self, items: list[ChunkItem]) -> None:
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
        down = network_is_down(self.network)
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
                        self._wheel.unsteady(t)
                        self._wheel.schedule(t, self._tick_now() + 1)
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
        return {k: now.get(k, 0) + closed.get(k, 0) for k in CORE_COUNTERS + SOCKET_COUNTERS}

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

    def stats(self) -> EngineStats:
        """Counters for logs and metrics."""
        c = self._core_totals()
        outcomes: OutcomeCounts = {
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
        sock_totals = {k: c[k] for k in SOCKET_COUNTERS}
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
            "results": sum(cast("dict[str, int]", outcomes).values()),
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

    def _loss_stats(self) -> LossStats | None:
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
