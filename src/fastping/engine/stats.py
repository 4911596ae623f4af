"""The engine's numbers, typed: ``EngineStats`` is what ``MonitoringEngine.stats()``
returns (read by ``metrics``, ``fastping monitor``'s summaries and live table), so
a key renamed or a value's type changed is a type error in every reader, not a
``KeyError`` at scrape time. ``SendLateness`` (``fastping.timing``) is the prober's
own lateness against its schedule.

Every key is always present (a TypedDict of ``total=True``); the ones that may be
None say so in their type.
"""

from __future__ import annotations

from typing import Any, TypedDict

from ..timing import SendLateness, behind_schedule_us

__all__ = [
    "CORE_COUNTERS",
    "SOCKET_COUNTERS",
    "EngineStats",
    "LoopLag",
    "LossStats",
    "OutcomeCounts",
    "SendLateness",
    "behind_schedule_us",
]

# socket counters worth reporting (the core counts them; silent drops look like loss)
SOCKET_COUNTERS = (
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
CORE_COUNTERS = (
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


class OutcomeCounts(TypedDict):
    """Final outcomes over the engine's life, one count per ``results.Outcome``."""

    reply: int
    closed: int
    timeout: int
    unreachable: int
    time_exceeded: int
    send_error: int
    duplicate: int
    late: int
    local_down: int
    resolve_error: int


class LoopLag(TypedDict):
    """How late the engine's ticks ran, in seconds."""

    last: float
    max: float
    mean: float


class LossStats(TypedDict):
    """The loss tracker's counters (``fastping.loss.LossTracker``)."""

    outages_total: int
    outages_current: int
    local_outages_total: int
    local_outage: bool
    burst_buckets: list[int]
    burst_sum: int
    records: int


class EngineStats(TypedDict):
    """What ``MonitoringEngine.stats()`` returns."""

    targets: int
    running: bool
    tcp_timing: str | None  # "raw" / "connect", None before a TCP socket was opened
    uptime_s: float | None  # None when not running
    sent: int
    received: int  # replies (closed ports not counted)
    results: int  # final outcomes: the sum of ``outcomes``
    outstanding: int
    outcomes: OutcomeCounts
    log_chunks: int
    log_records: int
    reresolve_failures: int
    send_calls: int
    orphan_events: int
    subscribers: int
    subscriber_dropped: int
    ticks: int
    loop_lag_s: LoopLag
    interval_factor: float
    send_lateness: dict[str, Any]  # SendLateness.to_dict()
    network_down: bool
    guard: dict[str, Any]  # ResourceGuard.stats()
    socket: dict[str, int]  # SOCKET_COUNTERS, summed over the sockets
    store_submit_errors: int
    observer_errors: int
    store: dict[str, Any] | None  # the store's stats(), None without one
    loss: LossStats | None  # None with loss_tracking=False
    paths: dict[str, Any] | None  # PathWatcher.stats(), None without trace_every_s
