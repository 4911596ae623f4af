"""Resource guard: keeps the monitoring process inside its CPU and memory budget.

A safety net that keeps the monitor from taking over the host (default: half of one
core, 100 MB): the README's workload of 10,000 targets every second (~10-15 % of a
core with the store) runs as asked, and only a runaway is slowed down. The guard
samples the process with psutil every ``check_interval_s`` and turns what it sees
into a *slow-down factor* the engine multiplies every probe interval by:

* over a limit  -> the factor doubles (up to ``max_factor``) and a WARNING says so;
* comfortably under both limits -> the factor halves again (down to 1) and an INFO
  line says probing is back to normal.

"Comfortably" is the hysteresis that stops the factor from flapping: probing cost
is roughly proportional to the probe rate, so halving the factor about doubles the
CPU share; the guard only steps back when ``2 x cpu`` would still be under 90 % of
the limit, and memory is under 90 % of its limit.

CPU percentages are of ONE core (psutil's convention: 100 = one core busy), measured
over the interval since the previous check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

# Defaults (also config.py's and the CLI's): a safety net, not a budget
DEFAULT_MAX_CPU_PERCENT = 50.0
DEFAULT_MAX_MEMORY_MB = 100.0

# Recover only when the doubled rate would still leave this much headroom.
_RECOVER_HEADROOM = 0.9


@dataclass(frozen=True, slots=True)
class GuardSample:
    """One measurement and the decision taken on it."""

    time: float
    cpu_percent: float
    rss_mb: float
    factor: float
    over_cpu: bool
    over_memory: bool


class ResourceGuard:
    """Turns CPU / memory measurements into a probe-interval stretch factor.

    ``max_cpu_percent`` / ``max_memory_mb`` of ``None`` (or 0) disable that limit.
    """

    def __init__(
        self,
        max_cpu_percent: float | None = DEFAULT_MAX_CPU_PERCENT,
        max_memory_mb: float | None = 100.0,
        *,
        check_interval_s: float = 5.0,
        max_factor: float = 16.0,
        logger: Any = None,
    ) -> None:
        if max_cpu_percent is not None and max_cpu_percent < 0:
            raise ConfigError(
                f"max_cpu_percent={max_cpu_percent!r}: give a positive percentage of one "
                "core (e.g. 5), or 0 to disable the CPU limit"
            )
        if max_memory_mb is not None and max_memory_mb < 0:
            raise ConfigError(
                f"max_memory_mb={max_memory_mb!r}: give a positive size in MB (e.g. 100), "
                "or 0 to disable the memory limit"
            )
        if check_interval_s <= 0:
            raise ConfigError(
                f"check_interval_s={check_interval_s!r}: give a positive number of seconds"
            )
        if max_factor < 1:
            raise ConfigError(f"max_factor={max_factor!r}: must be at least 1")
        self.max_cpu_percent = max_cpu_percent or None
        self.max_memory_mb = max_memory_mb or None
        self.check_interval_s = float(check_interval_s)
        self.max_factor = float(max_factor)
        self.factor = 1.0
        self.checks = 0
        self.throttle_steps = 0  # how often the factor went up
        self.last: GuardSample | None = None
        self.peak_rss_mb = 0.0
        self._log = logger
        self._proc: Any = None
        # the engine's default probe interval, so a warning can say what it became
        self.base_interval_s: float | None = None

    @property
    def enabled(self) -> bool:
        return self.max_cpu_percent is not None or self.max_memory_mb is not None

    @property
    def throttled(self) -> bool:
        return self.factor > 1.0

    def prime(self) -> None:
        """Start the CPU measurement window (psutil measures since the previous call)."""
        import psutil  # heavy-ish; only when the guard is used

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    def sample(self) -> tuple[float, float]:
        """(CPU % of one core since the previous sample, RSS in MB) of this process."""
        if self._proc is None:
            self.prime()
        cpu = float(self._proc.cpu_percent(None))
        rss_mb = self._proc.memory_info().rss / (1024 * 1024)
        return cpu, rss_mb

    def check(self) -> float:
        """Sample the process and update the factor; returns the new factor."""
        cpu, rss_mb = self.sample()
        return self.update(cpu, rss_mb)

    def update(self, cpu_percent: float, rss_mb: float) -> float:
        """Decide on one measurement (pure apart from logging; tests drive it directly)."""
        self.checks += 1
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb)
        over_cpu = self.max_cpu_percent is not None and cpu_percent > self.max_cpu_percent
        over_mem = self.max_memory_mb is not None and rss_mb > self.max_memory_mb
        old = self.factor
        if over_cpu or over_mem:
            self.factor = min(self.max_factor, self.factor * 2.0)
            if self.factor != old:
                self.throttle_steps += 1
            self._warn(cpu_percent, rss_mb, over_cpu, over_mem, old)
        elif self.factor > 1.0 and self._comfortably_under(cpu_percent, rss_mb):
            self.factor = max(1.0, self.factor / 2.0)
            if self._log is not None:
                self._log.info(
                    "resources back under limits; probing faster again",
                    cpu_percent=round(cpu_percent, 2),
                    rss_mb=round(rss_mb, 1),
                    interval_factor=self.factor,
                )
        self.last = GuardSample(time.time(), cpu_percent, rss_mb, self.factor, over_cpu, over_mem)
        return self.factor

    def _comfortably_under(self, cpu_percent: float, rss_mb: float) -> bool:
        cpu_ok = (
            self.max_cpu_percent is None
            or cpu_percent * 2.0 <= self.max_cpu_percent * _RECOVER_HEADROOM
        )
        mem_ok = self.max_memory_mb is None or rss_mb <= self.max_memory_mb * _RECOVER_HEADROOM
        return cpu_ok and mem_ok

    def _warn(
        self, cpu_percent: float, rss_mb: float, over_cpu: bool, over_mem: bool, old: float
    ) -> None:
        if self._log is None:
            return
        what = []
        if over_cpu:
            what.append(f"CPU {cpu_percent:.1f}% > {self.max_cpu_percent:g}% of one core")
        if over_mem:
            what.append(f"memory {rss_mb:.0f} MB > {self.max_memory_mb:g} MB")
        if self.factor != old:
            action = f"slowing probing: intervals x{self.factor:g}"
        else:
            action = f"probing already at the slowest allowed (intervals x{self.factor:g})"
        if self.base_interval_s:
            action += (
                f" (every {self.base_interval_s:g} s target now probed every "
                f"{self.base_interval_s * self.factor:g} s)"
            )
        knobs = []
        if over_cpu:
            knobs.append(
                f"--max-cpu-percent / resources.max_cpu_percent (now {self.max_cpu_percent:g})"
            )
        if over_mem:
            knobs.append(f"--max-memory-mb / resources.max_memory_mb (now {self.max_memory_mb:g})")
        self._log.warning(
            f"resource limit exceeded ({'; '.join(what)}); {action}; to allow more, raise "
            f"{' and '.join(knobs)}, or set it to 0 to turn the guard off",
            cpu_percent=round(cpu_percent, 2),
            rss_mb=round(rss_mb, 1),
            interval_factor=self.factor,
        )

    def stats(self) -> dict[str, Any]:
        last = self.last
        return {
            "interval_factor": self.factor,
            "checks": self.checks,
            "throttle_steps": self.throttle_steps,
            "cpu_percent": None if last is None else round(last.cpu_percent, 3),
            "rss_mb": None if last is None else round(last.rss_mb, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 2),
            "max_cpu_percent": self.max_cpu_percent,
            "max_memory_mb": self.max_memory_mb,
        }
