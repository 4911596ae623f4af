"""A watched target's state (``_Target``: what the engine keeps per target) and its
snapshot for tables and metrics (``TargetInfo``), with the status words both show."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from ..results import EventKind, Outcome
from .contracts import SockKey

# Target status, as the live table and StateChanged events show it.
STATUS_UNKNOWN = "unknown"
STATUS_UP = "up"
STATUS_DOWN = "down"  # timeout / unreachable / time exceeded
STATUS_ERROR = "error"  # local error (send / resolve), possibly backing off
STATUS_LOCAL_DOWN = "local_down"  # our own network is down

# Problems first, in the live table.
STATUS_RANK = {
    STATUS_DOWN: 0,
    STATUS_ERROR: 1,
    STATUS_LOCAL_DOWN: 2,
    STATUS_UNKNOWN: 3,
    STATUS_UP: 4,
}

# per-target counters (TargetCounters.counts) are indexed by the one outcome
# numbering (results.EventKind: the core's event kinds, the chunks' codes)
N_OUTCOME_CODES = len(EventKind)


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
