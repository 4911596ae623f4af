"""The monitoring engine, one room per concern:

* ``core``: ``MonitoringEngine``, wiring the rest (life cycle, targets, the hot
  paths ``_on_tick`` / ``_send_due`` / ``_handle``, network, resolution, guard);
* ``wheel``: the timing wheel on integer ticks (steady slot arrays, the attention
  wheel, next tick and next wake), clock-free;
* ``events``: the events subscribers get and ``Subscription``;
* ``stats``: ``EngineStats``, the typed ``stats()``, and ``SendLateness``;
* ``contracts``: Protocols for the socket, store and network monitor the engine
  accepts, and ``network_is_down``;
* ``sockets``: the socket class of each probe kind (``SOCKET_KINDS``);
* ``target``: per-target state and ``TargetInfo``.

Everything ``fastping.engine`` exported when it was one module is still importable
from here.
"""

from __future__ import annotations

from .._icmp import (
    EV_CLOSED,
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
)
from ..loss import OutageEvent
from ..pathwatch import PathChange
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
from .core import (
    DEFAULT_BACKOFF_AFTER,
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_RESOLVE_INTERVAL_S,
    DEFAULT_STOP_FLUSH_S,
    DEFAULT_STORE_FLUSH_S,
    DEFAULT_TICK_S,
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    MAX_WINDOW,
    MIN_INTERVAL_S,
    MonitoringEngine,
)
from .events import (
    EngineEvent,
    ResultEvent,
    StateChanged,
    Subscription,
    TargetAdded,
    TargetRemoved,
)
from .sockets import SOCKET_KINDS, KindOpener, socket_factories
from .stats import EngineStats, LoopLag, LossStats, OutcomeCounts, SendLateness
from .target import (
    N_OUTCOME_CODES,
    STATUS_DOWN,
    STATUS_ERROR,
    STATUS_LOCAL_DOWN,
    STATUS_UNKNOWN,
    STATUS_UP,
    TargetCounters,
    TargetInfo,
)
from .wheel import Wheel

__all__ = [
    "DEFAULT_BACKOFF_AFTER",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MAX_BACKOFF_S",
    "DEFAULT_RESOLVE_INTERVAL_S",
    "DEFAULT_STOP_FLUSH_S",
    "DEFAULT_STORE_FLUSH_S",
    "DEFAULT_TICK_S",
    "DEFAULT_TIMEOUT_S",
    "EV_CLOSED",
    "EV_DUPLICATE",
    "EV_LATE",
    "EV_REPLY",
    "EV_SEND_ERROR",
    "EV_TIMEOUT",
    "EV_TIME_EXCEEDED",
    "EV_UNREACHABLE",
    "MAX_TIMEOUT_S",
    "MAX_WINDOW",
    "MIN_INTERVAL_S",
    "OUTCOME_BY_KIND",
    "SOCKET_KINDS",
    "STATUS_DOWN",
    "STATUS_ERROR",
    "STATUS_LOCAL_DOWN",
    "STATUS_UNKNOWN",
    "STATUS_UP",
    "ChunkItem",
    "CoreEvent",
    "EngineEvent",
    "EngineStats",
    "IcmpSocketLike",
    "KindOpener",
    "LoopLag",
    "LossStats",
    "MonitoringEngine",
    "N_OUTCOME_CODES",
    "NetworkMonitorLike",
    "Observer",
    "OutageEvent",
    "Outcome",
    "OutcomeCounts",
    "PathChange",
    "ProbeResult",
    "Resolver",
    "ResultEvent",
    "ResultStoreLike",
    "SendLateness",
    "SockKey",
    "SocketFactory",
    "StateChanged",
    "Subscription",
    "TargetAdded",
    "TargetCounters",
    "TargetInfo",
    "TargetRemoved",
    "Wheel",
    "network_is_down",
    "socket_factories",
]
