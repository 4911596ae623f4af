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

    @property
    def mean_us(self) -> float | None:
        return self.sum_ns / self.probes / 1e3 if self.probes else None

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "probes": self.probes,
            "mean_us": r(self.mean_us),
            "p50_us": r(self.quantile_us(0.5)),
            "p99_us": r(self.quantile_us(0.99)),
            "max_us": r(self.max_ns / 1e3) if self.probes else None,
        }

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


def _part(x: SendLateness) -> Part:
    return (x.probes, x.sum_ns, x.max_ns, x.hist)
