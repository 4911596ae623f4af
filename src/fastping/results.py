"""Result types shared by every mode (raw, dgram, subprocess) and every layer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import repeat
from operator import mul, sub
from typing import Any, NamedTuple, overload


class Outcome(str, Enum):
    """How one probe ended. Exactly one per probe; ``DUPLICATE`` and ``LATE`` are
    extra events counted apart, never as answers."""

    REPLY = "reply"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    TIME_EXCEEDED = "time_exceeded"
    SEND_ERROR = "send_error"
    LOCAL_DOWN = "local_down"
    RESOLVE_ERROR = "resolve_error"
    DUPLICATE = "duplicate"
    LATE = "late"
    # a probe kind with ports: the host answered that the port is closed (TCP RST); an
    # answer with an RTT, but not a reply (the service is not there)
    CLOSED = "closed"


# index = the core's event kind (EV_REPLY .. EV_LATE)
OUTCOME_BY_KIND: tuple[Outcome, ...] = (
    Outcome.REPLY,
    Outcome.TIMEOUT,
    Outcome.UNREACHABLE,
    Outcome.TIME_EXCEEDED,
    Outcome.SEND_ERROR,
    Outcome.DUPLICATE,
    Outcome.LATE,
    Outcome.CLOSED,  # EV_CLOSED (7)
)


class ProbeResult(NamedTuple):
    """One probe's outcome (or one duplicate / late reply). Immutable; a NamedTuple
    because the engine makes one per probe and it builds 3x faster than a frozen
    dataclass (0.4 vs 1.3 us), which shows at 10,000 probes/s."""

    target: str
    address: str | None
    seq: int
    outcome: Outcome
    rtt_ms: float | None = None
    ttl: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    router: str | None = None
    errno: int | None = None
    time: float = 0.0  # Unix seconds when the outcome was known

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "address": self.address,
            "seq": self.seq,
            "outcome": self.outcome.value,
            "rtt_ms": self.rtt_ms,
            "ttl": self.ttl,
            "icmp_type": self.icmp_type,
            "icmp_code": self.icmp_code,
            "router": self.router,
            "errno": self.errno,
            "time": self.time,
        }


@dataclass(slots=True)
class HostResult:
    """Everything one target did over a sweep or a window."""

    target: str
    address: str | None
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    late: int = 0
    timeouts: int = 0
    unreachable: int = 0
    time_exceeded: int = 0
    send_errors: int = 0
    min_ms: float | None = None
    avg_ms: float | None = None
    max_ms: float | None = None
    stddev_ms: float | None = None
    jitter_ms: float | None = None
    ttl: int | None = None
    error: str | None = None  # resolve failure, or the last ICMP error / errno in words
    rtts_ms: list[float] = field(default_factory=list)  # per reply, when collected
    # replies whose RTT starts at a user-space send time, not the kernel's TX timestamp
    # (the sweep's summary counts both: timed_kernel, timed_user)
    user_timed: int = 0

    @property
    def loss(self) -> float:
        """Share of probes sent that got no reply, 0..1 (1.0 when nothing was sent)."""
        if self.sent == 0:
            return 1.0
        return (self.sent - self.received) / self.sent

    @property
    def alive(self) -> bool:
        return self.received > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "address": self.address,
            "sent": self.sent,
            "received": self.received,
            "loss": round(self.loss, 6),
            "min_ms": _r(self.min_ms),
            "avg_ms": _r(self.avg_ms),
            "max_ms": _r(self.max_ms),
            "stddev_ms": _r(self.stddev_ms),
            "jitter_ms": _r(self.jitter_ms),
            "duplicates": self.duplicates,
            "late": self.late,
            "timeouts": self.timeouts,
            "unreachable": self.unreachable,
            "time_exceeded": self.time_exceeded,
            "send_errors": self.send_errors,
            "ttl": self.ttl,
            "error": self.error,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def rtt_summary(rtts_ms: Sequence[float]) -> dict[str, float | None]:
    """min/avg/max/stddev/jitter/percentiles of a list of RTTs (ms); None when empty.
    Jitter is the mean absolute difference of successive RTTs (RFC 3550 style, unsmoothed)."""
    n = len(rtts_ms)
    if n == 0:
        return dict.fromkeys(
            ("min_ms", "avg_ms", "max_ms", "stddev_ms", "jitter_ms", "p50_ms", "p95_ms", "p99_ms")
        )
    # map() and operator functions rather than generator expressions: the store runs
    # this over every target's raw RTTs
    avg = sum(rtts_ms) / n
    dev = list(map(sub, rtts_ms, repeat(avg, n)))
    var = sum(map(mul, dev, dev)) / n
    jit = sum(map(abs, map(sub, rtts_ms[1:], rtts_ms[:-1]))) / (n - 1) if n > 1 else None
    s = sorted(rtts_ms)
    return {
        "min_ms": s[0],
        "avg_ms": avg,
        "max_ms": s[-1],
        "stddev_ms": math.sqrt(var),
        "jitter_ms": jit,
        "p50_ms": percentile(s, 50),
        "p95_ms": percentile(s, 95),
        "p99_ms": percentile(s, 99),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile of already sorted values."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


class SweepResult(Sequence[HostResult]):
    """The hosts of a sweep, built lazily from the core's arrays so a million
    targets do not become a million Python objects at once."""

    def __init__(
        self,
        n: int,
        get: Callable[[int], HostResult],
        totals: dict[str, int],
        duration_s: float,
        source: Any = None,
        timing: str | None = None,
    ) -> None:
        self._n = n
        # TCP: how the RTTs were timed, "raw" (SYN on a raw socket, kernel
        # timestamps) or "connect" (connect() on many sockets, no privilege)
        self.timing = timing
        self._get = get
        self._source = source  # api._Hosts: the core's arrays, read in blocks
        self.totals = totals
        self.duration_s = duration_s
        self._index: dict[str, int] | None = None  # target / address -> position, on demand

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> HostResult: ...
    @overload
    def __getitem__(self, i: slice) -> list[HostResult]: ...
    @overload
    def __getitem__(self, i: str) -> HostResult: ...
    def __getitem__(self, i: int | slice | str) -> HostResult | list[HostResult]:
        """By position, slice, or target: ``res["127.0.0.1"]`` (the target as given,
        or its address; KeyError when the sweep had no such target)."""
        if isinstance(i, str):
            return self._get(self._position(i))
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._get(i)

    def _position(self, target: str) -> int:
        if self._index is None:
            index: dict[str, int] = {}
            for k in range(self._n):  # once; the first name wins for an address listed twice
                h = self._get(k)
                index.setdefault(h.target, k)
                if h.address is not None:
                    index.setdefault(h.address, k)
            self._index = index
        try:
            return self._index[target]
        except KeyError:
            raise KeyError(f"{target!r} was not a target of this sweep") from None

    def get(self, target: str, default: HostResult | None = None) -> HostResult | None:
        """The result of ``target`` (as given, or its address), or ``default``."""
        try:
            return self[target]
        except KeyError:
            return default

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return self.get(item) is not None
        return super().__contains__(item)

    def __iter__(self) -> Iterator[HostResult]:
        for i in range(self._n):
            yield self._get(i)

    def columns(self) -> dict[str, Any]:
        """Every host's results as columns, in host order, with no Python object per
        host: ``array.array``s named as HostResult's fields (``sent``, ``received``,
        ``duplicates``, ``late``, ``timeouts``, ``unreachable``, ``time_exceeded``,
        ``send_errors``: uint32; ``min_ms``, ``avg_ms``, ``max_ms``, ``stddev_ms``,
        ``jitter_ms``: float64, NaN where HostResult has None; ``ttl`` (0: none),
        ``icmp_type``, ``icmp_code``: uint8; ``family``: 4, 6, or 0 for a name that
        did not resolve), and ``address``: bytes, 16 a host (an IPv4 address in the
        first 4). Each supports the buffer protocol (``numpy.frombuffer``,
        ``memoryview``)."""
        if self._source is not None:
            return self._source.columns()  # type: ignore[no-any-return]
        return _columns_of(self)

    def write_rows(
        self, fmt: Any, count: int, text_of_missing: Callable[[HostResult], str]
    ) -> None:
        """Feed every host to a ``_pipeline.Formatter`` (the command's output path);
        results without core arrays (the system-ping fallback) go through Python."""
        if self._source is not None:
            self._source.write(fmt, count, text_of_missing)
            return
        for h in self:
            fmt.count_row(h.alive)
            sel = fmt.select
            if fmt.fmt and not ((sel == 1 and not h.alive) or (sel == 2 and h.alive)):
                fmt.write_text(text_of_missing(h))

    @property
    def sent(self) -> int:
        return self.totals.get("sent", 0)

    @property
    def received(self) -> int:
        return self.totals.get("received", 0)

    @property
    def probes_per_s(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Totals of the sweep (walks every host once to count the alive ones)."""
        return self.summary_with(alive=sum(1 for h in self if h.alive))

    def summary_with(self, alive: int) -> dict[str, Any]:
        """Totals of the sweep, with ``alive`` already counted by the caller."""
        return {
            "targets": self._n,
            "alive": alive,
            "down": self._n - alive,
            "sent": self.sent,
            "received": self.received,
            "duration_s": round(self.duration_s, 6),
            "probes_per_s": round(self.probes_per_s, 1),
            **{k: v for k, v in self.totals.items() if k not in ("sent", "received")},
            **({"timing": self.timing} if self.timing else {}),
        }


# HostResult's per-probe counters, in the order columns and totals list them
HOST_COUNTS = (
    "sent",
    "received",
    "duplicates",
    "late",
    "timeouts",
    "unreachable",
    "time_exceeded",
    "send_errors",
)


def _columns_of(hosts: Sequence[HostResult]) -> dict[str, Any]:
    """columns() for results that are already HostResults (the Python twin)."""
    import ipaddress
    from array import array

    nan = float("nan")
    out: dict[str, Any] = {"family": array("B")}
    for k in HOST_COUNTS:
        out[k] = array("I", [getattr(h, k) for h in hosts])
    for k in ("min_ms", "avg_ms", "max_ms", "stddev_ms", "jitter_ms"):
        out[k] = array("d", [nan if getattr(h, k) is None else getattr(h, k) for h in hosts])
    out["ttl"] = array("B", [h.ttl or 0 for h in hosts])
    out["icmp_type"] = array("B", [0] * len(hosts))
    out["icmp_code"] = array("B", [0] * len(hosts))
    addr = bytearray()
    for h in hosts:
        if h.address is None:
            out["family"].append(0)
            addr += bytes(16)
        else:
            ip = ipaddress.ip_address(h.address.split("%", 1)[0])
            out["family"].append(ip.version)
            addr += ip.packed.ljust(16, b"\0")
    out["address"] = bytes(addr)
    return out
