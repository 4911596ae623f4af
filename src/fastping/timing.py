"""The prober's own timing quality: how late each probe left against its schedule.

A monitor that reports network jitter must not report its own. The engine gives the
core the time each batch of probes was due (``IcmpSocket.send(slots, due_ns=...)``,
the tick's scheduled time); the core compares it with the probe's kernel TX
timestamp (when it really left) and counts the difference in a histogram:

* buckets of whole microseconds below 16 us, then 8 buckets per octave (each within
  12.5% of its lower bound), up to ~2^33 us; the last bucket is open-ended;
* bucket ``i`` holds lateness in ``[BOUNDS_US[i], BOUNDS_US[i + 1])`` microseconds.

Quantiles read from it are the upper bound of the bucket that holds them ("p99 at
most X us"). Prometheus gets the same counts as a histogram with exact power-of-two
microsecond bounds (each is a bucket edge, so no count is split).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

N_BUCKETS = 240  # the core's LAT_BUCKETS


def _bounds() -> list[int]:
    out = []
    for i in range(N_BUCKETS):
        if i < 16:
            out.append(i)
        else:
            e = 4 + (i - 16) // 8
            out.append((1 << e) + ((i - 16) % 8) * (1 << (e - 3)))
    return out


BOUNDS_US: list[int] = _bounds()
# Prometheus bucket bounds: 1 us .. 2^23 us (~8.4 s), every one a bucket edge above
PROM_BOUNDS_US: list[int] = [1 << k for k in range(24)]

Part = tuple[int, int, int, tuple[int, ...]]  # IcmpSocket.lateness()


@dataclass(frozen=True)
class SendLateness:
    """How late probes left against their schedule (sums over sockets or a window)."""

    probes: int = 0
    sum_ns: int = 0
    max_ns: int = 0
    hist: tuple[int, ...] = (0,) * N_BUCKETS

    @classmethod
    def of(cls, parts: Iterable[Part]) -> SendLateness:
        """The sum of several sockets' ``lateness()``."""
        n = s = m = 0
        hist = [0] * N_BUCKETS
        for count, sum_ns, max_ns, h in parts:
            n += count
            s += sum_ns
            m = max(m, max_ns)
            for i, c in enumerate(h):
                if c:
                    hist[i] += c
        return cls(n, s, m, tuple(hist))

    def __add__(self, other: SendLateness) -> SendLateness:
        return SendLateness.of([_part(self), _part(other)])

    def quantile_us(self, q: float) -> float | None:
        """At most this many microseconds late for a share ``q`` (0..1) of the probes
        (the upper bound of the bucket holding the q-th; the maximum for the last)."""
        if self.probes == 0:
            return None
        rank = max(1, int(q * self.probes + 0.999999))
        seen = 0
        for i, c in enumerate(self.hist):
            seen += c
            if seen >= rank:
                upper = BOUNDS_US[i + 1] if i + 1 < N_BUCKETS else self.max_ns / 1e3
                return float(min(upper, self.max_ns / 1e3))
        return self.max_ns / 1e3

    def at_least_us(self, us: float) -> int:
        """Probes that left at least ``us`` microseconds late (buckets whose lower
        bound is at least ``us``: a bucket that straddles it is not counted, so this
        undercounts by at most one bucket's share, 12.5% of the bound)."""
        return sum(c for b, c in zip(BOUNDS_US, self.hist, strict=True) if c and b >= us)

    @property
    def mean_us(self) -> float | None:
        return self.sum_ns / self.probes / 1e3 if self.probes else None

    def to_dict(self, behind_us: float | None = None) -> dict[str, Any]:
        """The counts as a dict; with ``behind_us``, "behind_schedule" is the number of
        probes that left at least that late (see behind_schedule_us)."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        extra = {} if behind_us is None else {"behind_schedule": self.at_least_us(behind_us)}
        return {
            "probes": self.probes,
            "mean_us": r(self.mean_us),
            "p50_us": r(self.quantile_us(0.5)),
            "p99_us": r(self.quantile_us(0.99)),
            "max_us": r(self.max_ns / 1e3) if self.probes else None,
        } | extra

    def prometheus_buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le in seconds, count) pairs, ending with +Inf."""
        out = []
        cum = 0
        i = 0
        for b in PROM_BOUNDS_US:
            while i < N_BUCKETS and BOUNDS_US[i] < b:
                cum += self.hist[i]
                i += 1
            out.append((repr(b / 1e6), cum))
        out.append(("+Inf", self.probes))
        return out


def behind_schedule_us(interval_s: float) -> float:
    """When a probe has missed its schedule: it left 100 ms or more after it was due, or
    half its interval when that is shorter (the next round is then nearer than this
    one). Said in the monitor's log and summary, never taken for the network's jitter."""
    return min(100_000.0, interval_s * 1e6 / 2)


def _part(x: SendLateness) -> Part:
    return (x.probes, x.sum_ns, x.max_ns, x.hist)


def delta(now: SendLateness, before: SendLateness) -> SendLateness:
    """What ``now`` counted since ``before`` (both cumulative); max_ns is ``now``'s
    maximum when it grew in the window, else the window's largest bucket bound."""
    hist = tuple(a - b for a, b in zip(now.hist, before.hist, strict=True))
    if now.max_ns > before.max_ns:
        top = now.max_ns
    else:
        top = max((BOUNDS_US[i] * 1000 for i, c in enumerate(hist) if c), default=0)
    return SendLateness(now.probes - before.probes, now.sum_ns - before.sum_ns, top, hist)


# -- persisted beside the results, so `fastping report` shows the prober's timing ------
# One row per window the monitor hands over (every store.chunk_s): the window's counts;
# hist is N_BUCKETS little-endian u64 counts.
TIMING_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS send_timing (t0 REAL NOT NULL, t1 REAL NOT NULL, "
    "probes INTEGER NOT NULL, sum_ns INTEGER NOT NULL, max_ns INTEGER NOT NULL, "
    "hist BLOB NOT NULL, interval_factor REAL NOT NULL DEFAULT 1.0)"
)


def write_window(
    db: str,
    t0: float,
    t1: float,
    lat: SendLateness,
    interval_factor: float = 1.0,
    timeout_s: float = 2.0,
) -> None:
    """Append one window's lateness to ``db`` (its own short connection, bounded by
    ``timeout_s``; raises sqlite3.Error, which the caller logs and counts), with the
    largest factor the resource guard stretched the intervals by in it."""
    import sqlite3
    import struct

    blob = struct.pack(f"<{N_BUCKETS}Q", *lat.hist)
    conn = sqlite3.connect(db, timeout=timeout_s)
    try:
        with conn:
            conn.execute(TIMING_SCHEMA)
            conn.execute(
                "INSERT INTO send_timing VALUES (?, ?, ?, ?, ?, ?, ?)",
                (t0, t1, lat.probes, lat.sum_ns, lat.max_ns, blob, interval_factor),
            )
    finally:
        conn.close()


def read_windows(db: str, since: float | None, until: float | None) -> SendLateness:
    """The sum of the windows that end inside [since, until] (no table: nothing)."""
    return read_windows_with_guard(db, since, until)[0]


def read_windows_with_guard(
    db: str, since: float | None, until: float | None
) -> tuple[SendLateness, float, float]:
    """(lateness summed, the largest guard factor, seconds of windows with a factor
    above 1) over the windows that end inside [since, until]."""
    import sqlite3
    import struct

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
    try:
        try:
            rows = conn.execute(
                "SELECT probes, sum_ns, max_ns, hist, interval_factor, t1 - t0 FROM send_timing"
                " WHERE t1 >= ? AND t1 <= ?",
                (since if since is not None else float("-inf"),
                 until if until is not None else float("inf")),
            ).fetchall()  # fmt: skip
        except sqlite3.OperationalError:
            return SendLateness(), 1.0, 0.0  # written before fastping kept it
    finally:
        conn.close()
    parts: list[Part] = []
    top, slowed_s = 1.0, 0.0
    for probes, sum_ns, max_ns, blob, factor, span_s in rows:
        if len(blob) != 8 * N_BUCKETS:
            continue  # not ours
        parts.append((probes, sum_ns, max_ns, struct.unpack(f"<{N_BUCKETS}Q", blob)))
        top = max(top, float(factor))
        if factor > 1.0:
            slowed_s += float(span_s)
    return SendLateness.of(parts), top, slowed_s
