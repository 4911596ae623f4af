"""Network-aware retry: exponential backoff with full jitter that pauses, without
spending attempts, while our own network is down.

    cfg = RetryConfig.profile("balanced")
    async with NetworkMonitor(check_hosts=["gateway"]) as mon:
        retryer = Retryer(cfg, network=mon)
        body = await retryer.run(fetch, name="export", timeout_s=600)

Flow on a failure (spec 002, "How it works"):

1. Not retryable (see `is_retryable_error`) -> the error propagates unchanged.
2. Retryable and the attached monitor says DOWN -> log "network is down, waiting
   for recovery" and wait for it. The failure does not count against
   `max_attempts`; when the network is back the same attempt number runs again
   at once, with no backoff delay.
3. Retryable and the network is not known to be down -> exponential backoff with
   full jitter, capped at `max_delay`. If the monitor reports DOWN during that
   sleep, the failure is treated as the start of the outage (case 2): the sleep
   ends, the attempt is refunded and the retryer waits for the network instead.
4. Attempts used up -> `RetryError` carrying the history; `__cause__` is the
   last error.

`timeout_s` (an overall deadline) and task cancellation work at every await
point: during an attempt, a backoff sleep and a wait for the network. When the
deadline passes, `RetryTimeout` (a `RetryError` and a `TimeoutError`) is raised.

Durations are seconds (floats); in the YAML configuration they may also be
Go-style strings ("500ms", "1s", "1m30s"), as in the spec's examples.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, cast, overload

from pydantic import Field, ValidationInfo, field_validator

from .duration import parse_duration
from .errors import ConfigError, RetryError, RetryTimeout, TransientError
from .logs import get_logger
from .settings import Seconds, Section, WholeNumber

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "Attempt",
    "NetworkLike",
    "RetryConfig",
    "RetryError",
    "RetryTimeout",
    "Retryer",
    "is_retryable_error",
    "retrying",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# through stdlib logging (logs.get_logger), never structlog's own default printer,
# which writes to stdout whatever the host program configured
log = get_logger("fastping.retry")


class NetworkLike(Protocol):
    """What the retryer needs from `fastping.netstate.NetworkMonitor`."""

    @property
    def state(self) -> Any: ...  # NetworkState (or its str): engine.contracts.network_is_down

    def is_up(self) -> bool: ...

    async def wait_for_network(self, timeout: float | None = None) -> Any: ...


# --------------------------------------------------------------------------- errors


class Attempt(NamedTuple):
    """One failed attempt. Unpacks like the (attempt, error, delay) triple first.

    attempt:      the attempt number (1-based) that failed. A failure that did not
                  count (the network was down) is followed by a retry with the same
                  number, so numbers can repeat in a history.
    error:        what it raised.
    delay:        seconds of backoff slept after it (0.0 when the retryer waited for
                  the network instead, or when it was the last one).
    network_wait: seconds spent waiting for the network to return after it.
    counted:      False when the failure was refunded because the network was down.
    """

    attempt: int
    error: BaseException
    delay: float
    network_wait: float = 0.0
    counted: bool = True


# ------------------------------------------------------------------- classification

# errno values that mean "the path to the peer is (temporarily) gone", as opposed to
# EACCES, EINVAL & co. which no amount of waiting fixes. See connect(2), send(2),
# tcp(7): ENETUNREACH/ENETDOWN/EADDRNOTAVAIL are what a dropped local link gives.
TRANSIENT_ERRNOS: frozenset[int] = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EPIPE",
        "ENOBUFS",
        "EADDRNOTAVAIL",
        "ENONET",
        "ESHUTDOWN",
        "EAGAIN",
    )
    if hasattr(errno, name)
)

# getaddrinfo(3): only EAI_AGAIN is "temporary failure in name resolution";
# EAI_NONAME (no such host) must fail at once.
_TRANSIENT_GAI: frozenset[int] = frozenset(
    getattr(socket, n) for n in ("EAI_AGAIN",) if hasattr(socket, n)
)


def is_retryable_error(exc: BaseException) -> bool:
    """The default classification: connection and timeout errors, transient
    errnos, temporary DNS failures and fastping's `TransientError` retry;
    everything else (and a `RetryError` from a nested retryer) fails at once."""
    if isinstance(exc, RetryError):
        return False  # a nested retryer already spent its attempts
    if isinstance(exc, TransientError):
        return True
    # asyncio.TimeoutError is TimeoutError from 3.11 on, socket.timeout from 3.10.
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError, socket.timeout)):
        return True
    if isinstance(exc, socket.gaierror):
        return exc.errno in _TRANSIENT_GAI
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return False


# --------------------------------------------------------------------------- config

# The spec's configuration examples set max_attempts, initial_delay and
# wait_for_network per profile; max_delay 30s, multiplier 2 and jitter come from
# its retry example and are shared. It gives no network_timeout: "operations can
# wait indefinitely for network recovery", bounded by the caller's deadline.
_PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "conservative": {"max_attempts": 3, "initial_delay": 1.0, "wait_for_network": True},
    "balanced": {"max_attempts": 5, "initial_delay": 1.0, "wait_for_network": True},
    "patient": {"max_attempts": 10, "initial_delay": 2.0, "wait_for_network": True},
}


class RetryConfig(Section):
    """How often and how patiently to retry. The defaults are the `balanced` profile.

    max_attempts:     attempts that may fail before giving up (the first one counts);
                      failures while the network is down do not count.
    initial_delay:    backoff before the 2nd attempt, seconds.
    max_delay:        cap on any single backoff, seconds.
    multiplier:       growth of the backoff per attempt (delay_n = initial * mult**(n-1)).
    jitter:           full jitter: sleep a uniform random time in [0, delay_n] so many
                      clients that failed together do not retry together.
    wait_for_network: pause (without spending attempts) while an attached network
                      monitor says DOWN.
    network_timeout:  longest single pause for the network, seconds; None waits as
                      long as the overall deadline allows. When it passes with the
                      network still down, the failure counts as an attempt and the
                      next attempt runs at once (the pause served as its backoff).

    The YAML `retry:` section (``from_mapping``, and ``fastping.config`` for the
    file) may name a profile (`profile: patient`, or just the string `patient`)
    and set keys, which override the profile's values::

        retry:
          profile: conservative
          initial_delay: 500ms
          network_timeout: 2m

    Durations are seconds or Go-style strings ("500ms", "1s", "1m30s"). A bad value,
    from the file or the constructor, raises ConfigError naming the key, the value
    and what is allowed.
    """

    SECTION: ClassVar[str] = "retry"

    max_attempts: WholeNumber = Field(default=5, ge=1)
    initial_delay: Seconds = Field(default=1.0, ge=0, allow_inf_nan=False)
    max_delay: Seconds = Field(default=30.0, ge=0, allow_inf_nan=False)
    multiplier: float = 2.0
    jitter: bool = True
    wait_for_network: bool = True
    network_timeout: float | None = None

    @field_validator("max_delay")
    @classmethod
    def _not_below_initial(cls, v: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_delay")
        if initial is not None and v < initial:
            raise ValueError(f"must be >= initial_delay ({initial:g} s)")
        return v

    @field_validator("multiplier", mode="before")
    @classmethod
    def _multiplier(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, not true or false")
        return v

    @field_validator("multiplier")
    @classmethod
    def _growth(cls, v: float) -> float:
        if not 1.0 <= v < math.inf:
            raise ValueError("must be a finite number >= 1.0 (1.0 keeps the delay constant)")
        return v

    @field_validator("network_timeout", mode="before")
    @classmethod
    def _network_timeout(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null")):
            return None
        try:
            seconds = parse_duration(v)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            raise ValueError(
                "must be seconds > 0 (a number or a duration like 30s, 2m), "
                "or null to wait without limit"
            )
        return seconds

    # ---- profiles

    @classmethod
    def profile_values(cls) -> Mapping[str, Mapping[str, Any]]:
        return _PROFILE_SETTINGS

    @classmethod
    def profile(cls, name: str) -> RetryConfig:
        """The named profile: `conservative`, `balanced` (the default) or `patient`."""
        try:
            return PROFILES[name.strip().lower()]
        except (KeyError, AttributeError):
            raise ConfigError(
                f"retry.profile: got {name!r}; expected one of {', '.join(PROFILES)}"
            ) from None

    # ---- the schedule

    def backoff_cap(self, failures: int) -> float:
        """The un-jittered delay after the `failures`-th counted failure (1-based):
        initial_delay * multiplier**(failures-1), capped at max_delay."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        try:
            raw = self.initial_delay * self.multiplier ** (failures - 1)
        except OverflowError:
            raw = math.inf
        return min(self.max_delay, raw)

    def total_backoff_cap(self) -> float:
        """The longest the backoff sleeps of one run can add up to (no jitter draws
        exceed it): the sum of the caps between max_attempts attempts."""
        return sum(self.backoff_cap(n) for n in range(1, self.max_attempts))


PROFILES: Mapping[str, RetryConfig] = {
    name: RetryConfig(**values) for name, values in _PROFILE_SETTINGS.items()
}
DEFAULT_PROFILE = "balanced"


# -------------------------------------------------------------------------- retryer

_TIMED_OUT = object()  # sentinel: a bounded await ran out of time
_EPSILON_S = 1e-9  # float residue of summing sleep chunks; not worth another sleep


async def _bounded(aw: Awaitable[T], timeout_s: float | None) -> T | object:
    """Await `aw` for at most timeout_s; return _TIMED_OUT if it did not finish.

    Unlike asyncio.wait_for this cannot confuse a TimeoutError raised *by* `aw`
    with our own limit, and it works the same on 3.10 (no asyncio.timeout).
    Cancelling the caller cancels `aw` too.
    """
    if timeout_s is None:
        return await aw
    if timeout_s <= 0:
        if inspect.iscoroutine(aw):
            aw.close()  # never started; avoid "never awaited" warnings
        return _TIMED_OUT
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except BaseException:  # cancelled: take the attempt down with us
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return _TIMED_OUT


@dataclass
class _Run:
    """Book-keeping of one run()/call()."""

    name: str
    started: float
    deadline: float | None
    timeout_s: float | None
    attempt: int = 1  # the attempt number now due (repeats after a refunded failure)
    tries: int = 0  # operations actually started
    history: list[Attempt] = field(default_factory=list)


class Retryer:
    """Runs an operation until it succeeds, its attempts run out or its deadline passes.

    config:        RetryConfig (default: the balanced profile).
    network:       a NetworkMonitor (or anything with state / is_up /
                   wait_for_network); None disables network-aware pausing. It may
                   be set later: `retryer.network = monitor`.
    is_retryable:  predicate deciding which errors retry; defaults to
                   `is_retryable_error`. Wrap it to widen or narrow:
                   `is_retryable=lambda e: is_retryable_error(e) or isinstance(e, X)`.
    clock:         monotonic seconds, for the deadline and the logged durations.
    sleep:         async sleep used for backoff (tests inject a fake).
    sync_sleep:    blocking sleep used by `call` (tests inject a fake).
    rng:           random.Random for jitter (tests seed it).
    poll_interval_s: how often the network state is re-read while backing off (to
                   notice an outage that began just after the failure) and while a
                   sync `call` waits for the network.

    The injected sleeps should advance the injected clock, as real ones do.
    """

    def __init__(
        self,
        config: RetryConfig | str | None = None,
        network: NetworkLike | None = None,
        is_retryable: Callable[[BaseException], bool] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        sync_sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
        poll_interval_s: float = 0.05,
    ) -> None:
        if isinstance(config, str):
            config = RetryConfig.profile(config)
        self.config = config if config is not None else RetryConfig()
        self.network = network
        self.is_retryable = is_retryable if is_retryable is not None else is_retryable_error
        self.clock = clock
        self.sleep = sleep
        self.sync_sleep = sync_sleep
        self.rng = rng if rng is not None else random.Random()
        if not (poll_interval_s > 0):
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        self.poll_interval_s = poll_interval_s

    # ---- shared decisions

    def next_delay(self, failures: int) -> float:
        """The backoff after the `failures`-th counted failure, jittered if configured."""
        cap = self.config.backoff_cap(failures)
        return self.rng.uniform(0.0, cap) if self.config.jitter else cap

    def _network_down(self) -> bool:
        net = self.network
        if net is None or not self.config.wait_for_network:
            return False
        # the one reading of "down" (imported here: the engine needs the built core)
        from .engine.contracts import network_is_down

        return network_is_down(net)

    def _start(self, name: str, timeout_s: float | None) -> _Run:
        if timeout_s is not None and not (timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        now = self.clock()
        return _Run(
            name=name,
            started=now,
            deadline=None if timeout_s is None else now + timeout_s,
            timeout_s=timeout_s,
        )

    def _remaining(self, run: _Run) -> float | None:
        return None if run.deadline is None else run.deadline - self.clock()

    def _timeout_error(self, run: _Run, where: str) -> RetryTimeout:
        history = run.history
        last = history[-1].error if history else None
        log.warning(
            "retry deadline passed",
            op=run.name,
            attempt=run.attempt,
            where=where,
            timeout_s=run.timeout_s,
            tries=run.tries,
            error=repr(last) if last is not None else None,
        )
        err = RetryTimeout(
            f"{run.name}: deadline of {run.timeout_s}s passed {where} "
            f"(attempt {run.attempt} of {self.config.max_attempts}, {run.tries} tried"
            + (f"; last error: {last!r}" if last is not None else "")
            + "); give it a longer timeout_s",
            name=run.name,
            attempts=list(history),
        )
        err.__cause__ = last
        return err

    def _exhausted_error(self, run: _Run) -> RetryError:
        history = run.history
        last = history[-1].error
        counted = sum(1 for a in history if a.counted)
        log.error(
            "retries exhausted",
            op=run.name,
            attempts=counted,
            tries=run.tries,
            error=repr(last),
            elapsed_s=round(self.clock() - run.started, 6),
        )
        err = RetryError(
            f"{run.name}: failed {counted} of {self.config.max_attempts} attempts "
            f"({run.tries} tried); last error: {last!r}. Raise retry.max_attempts or use "
            f"a more patient profile (retry.profile: patient)",
            name=run.name,
            attempts=list(history),
        )
        err.__cause__ = last
        return err

    def _log_start(self, run: _Run) -> None:
        run.tries += 1
        log.debug(
            "attempt starting",
            op=run.name,
            attempt=run.attempt,
            max_attempts=self.config.max_attempts,
            try_number=run.tries,
        )

    def _log_success(self, run: _Run) -> None:
        (log.info if run.tries > 1 else log.debug)(
            "operation succeeded",
            op=run.name,
            attempt=run.attempt,
            tries=run.tries,
            elapsed_s=round(self.clock() - run.started, 6),
        )

    def _check_retryable(self, run: _Run, exc: Exception) -> None:
        """Re-raise `exc` unchanged when it must not be retried."""
        if self.is_retryable(exc):
            return
        log.warning(
            "attempt failed, not retryable", op=run.name, attempt=run.attempt, error=repr(exc)
        )
        raise exc

    def _log_down(self, run: _Run, exc: BaseException, during_backoff: bool) -> None:
        log.warning(
            "network is down, waiting for recovery",
            op=run.name,
            attempt=run.attempt,
            error=repr(exc),
            during_backoff=during_backoff,
            network_timeout_s=self.config.network_timeout,
        )

    def _after_network_wait(
        self, run: _Run, exc: BaseException, slept: float, waited: float, recovered: bool
    ) -> None:
        """Record a failure that was followed by a wait for the network."""
        history = run.history
        if recovered:
            log.info(
                "network recovered, retrying now",
                op=run.name,
                attempt=run.attempt,
                waited_s=round(waited, 6),
            )
            history.append(Attempt(run.attempt, exc, slept, waited, counted=False))
            return  # same attempt number runs again, at once
        log.warning(
            "network still down after network_timeout, counting the attempt",
            op=run.name,
            attempt=run.attempt,
            waited_s=round(waited, 6),
        )
        history.append(Attempt(run.attempt, exc, slept, waited, counted=True))
        if run.attempt >= self.config.max_attempts:
            raise self._exhausted_error(run)
        run.attempt += 1

    def _plan_backoff(self, run: _Run, exc: BaseException) -> float:
        """Delay before the next attempt, or raise when attempts or time run out."""
        history = run.history
        if run.attempt >= self.config.max_attempts:
            history.append(Attempt(run.attempt, exc, 0.0))
            raise self._exhausted_error(run)
        delay = self.next_delay(run.attempt)
        remaining = self._remaining(run)
        if remaining is not None and delay >= remaining:
            # The next attempt could not start in time: say so now, not after a sleep.
            history.append(Attempt(run.attempt, exc, 0.0))
            raise self._timeout_error(run, "before the next attempt could start")
        log.warning(
            "attempt failed, retrying",
            op=run.name,
            attempt=run.attempt,
            max_attempts=self.config.max_attempts,
            error=repr(exc),
            delay_s=round(delay, 6),
        )
        return delay

    def _network_wait_limit(self, run: _Run) -> tuple[float | None, bool]:
        """(limit in s, whether the deadline rather than network_timeout binds)."""
        nt = self.config.network_timeout
        remaining = self._remaining(run)
        if remaining is None:
            return nt, False
        if nt is None or remaining <= nt:
            return max(0.0, remaining), True
        return nt, False

    # ---- async

    async def run(
        self,
        op: Callable[[int], Awaitable[T]],
        *,
        name: str = "operation",
        timeout_s: float | None = None,
    ) -> T:
        """Await `op(attempt)` until it succeeds. `attempt` is 1-based; it repeats
        after a failure that did not count because the network was down.

        Raises the error itself when it is not retryable, RetryError when the
        attempts run out, RetryTimeout when `timeout_s` passes; cancellation
        propagates (CancelledError) from any point.
        """
        run = self._start(name, timeout_s)
        try:
            while True:
                remaining = self._remaining(run)
                if remaining is not None and remaining <= 0:
                    raise self._timeout_error(run, "before the next attempt could start")
                self._log_start(run)
                try:
                    result = await _bounded(op(run.attempt), remaining)
                except Exception as exc:  # CancelledError is a BaseException: not caught
                    self._check_retryable(run, exc)
                    await self._handle_failure(run, exc)
                    continue
                if result is _TIMED_OUT:
                    raise self._timeout_error(run, "during an attempt")
                self._log_success(run)
                return cast(T, result)
        except asyncio.CancelledError:
            log.info("retry cancelled", op=run.name, attempt=run.attempt, tries=run.tries)
            raise

    async def _handle_failure(self, run: _Run, exc: Exception) -> None:
        if self._network_down():
            self._log_down(run, exc, during_backoff=False)
            waited, recovered = await self._wait_network(run, exc)
            self._after_network_wait(run, exc, 0.0, waited, recovered)
            return
        delay = self._plan_backoff(run, exc)
        slept, went_down = await self._backoff(delay)
        if went_down:
            # The outage began right after the failure (the monitor had not seen
            # it yet): refund the attempt and wait, as if it had been down already.
            self._log_down(run, exc, during_backoff=True)
            waited, recovered = await self._wait_network(run, exc)
            self._after_network_wait(run, exc, slept, waited, recovered)
            return
        run.history.append(Attempt(run.attempt, exc, slept))
        run.attempt += 1

    async def _backoff(self, delay: float) -> tuple[float, bool]:
        """Sleep `delay`; with a monitor attached, stop early if it reports DOWN.
        Returns (seconds slept, whether the network went down)."""
        if self.network is None or not self.config.wait_for_network:
            await self.sleep(delay)
            return delay, False
        slept = 0.0
        # Count the budget down by chunks (not by the clock) so a fake sleep that
        # does not move a fake clock still terminates.
        while delay - slept > _EPSILON_S:
            chunk = min(self.poll_interval_s, delay - slept)
            await self.sleep(chunk)
            slept += chunk
            if self._network_down():
                return slept, True
        return slept, False

    async def _wait_network(self, run: _Run, exc: BaseException) -> tuple[float, bool]:
        """Wait until the monitor no longer says DOWN. Returns (waited_s, recovered);
        raises RetryTimeout if the deadline passes first."""
        limit, deadline_binds = self._network_wait_limit(run)
        t0 = self.clock()
        outcome = await _bounded(self._until_not_down(), limit)
        waited = self.clock() - t0
        if outcome is _TIMED_OUT:
            if deadline_binds:
                run.history.append(Attempt(run.attempt, exc, 0.0, waited, counted=False))
                raise self._timeout_error(run, "while waiting for the network")
            return waited, False
        return waited, True

    async def _until_not_down(self) -> None:
        """Return once the state is anything but DOWN.

        wait_for_network() wakes us the moment the monitor sees UP (event driven);
        a slow poll of `state` covers a return to DEGRADED or UNKNOWN, which a
        monitor's wait_for_network may not count as recovery.
        """
        net = self.network
        assert net is not None
        if not self._network_down():
            return
        waiter = asyncio.ensure_future(net.wait_for_network())
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=self.poll_interval_s)
                if not self._network_down():
                    return
            waiter.result()  # surface a broken monitor rather than spin
            # wait_for_network returned but the state still reads DOWN (it may
            # use a different notion of "up"): fall back to polling.
            while self._network_down():
                await asyncio.sleep(self.poll_interval_s)
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)

    # ---- sync

    def call(
        self,
        fn: Callable[[int], T],
        *,
        name: str = "operation",
        timeout_s: float | None = None,
    ) -> T:
        """Blocking twin of `run` for a sync `fn(attempt)`.

        The deadline is checked between attempts and bounds every sleep and wait
        for the network; a running `fn` cannot be interrupted (give it its own
        socket timeout). While the network is down the monitor's `state` is polled
        every `poll_interval_s`, so the monitor must run in another thread's loop
        (not the one blocked in this call).
        """
        run = self._start(name, timeout_s)
        while True:
            remaining = self._remaining(run)
            if remaining is not None and remaining <= 0:
                raise self._timeout_error(run, "before the next attempt could start")
            self._log_start(run)
            try:
                result = fn(run.attempt)
            except Exception as exc:
                self._check_retryable(run, exc)
                self._handle_failure_sync(run, exc)
                continue
            self._log_success(run)
            return result

    def _handle_failure_sync(self, run: _Run, exc: Exception) -> None:
        if self._network_down():
            self._log_down(run, exc, during_backoff=False)
            waited, recovered = self._wait_network_sync(run, exc)
            self._after_network_wait(run, exc, 0.0, waited, recovered)
            return
        delay = self._plan_backoff(run, exc)
        if self.network is None or not self.config.wait_for_network:
            self.sync_sleep(delay)
            slept, went_down = delay, False
        else:
            slept, went_down = 0.0, False
            while delay - slept > _EPSILON_S:
                chunk = min(self.poll_interval_s, delay - slept)
                self.sync_sleep(chunk)
                slept += chunk
                if self._network_down():
                    went_down = True
                    break
        if went_down:
            self._log_down(run, exc, during_backoff=True)
            waited, recovered = self._wait_network_sync(run, exc)
            self._after_network_wait(run, exc, slept, waited, recovered)
            return
        run.history.append(Attempt(run.attempt, exc, slept))
        run.attempt += 1

    def _wait_network_sync(self, run: _Run, exc: BaseException) -> tuple[float, bool]:
        limit, deadline_binds = self._network_wait_limit(run)
        waited = 0.0  # counted in chunks, like _backoff, so fake sleeps terminate
        while self._network_down():
            if limit is not None and waited >= limit:
                if deadline_binds:
                    run.history.append(Attempt(run.attempt, exc, 0.0, waited, counted=False))
                    raise self._timeout_error(run, "while waiting for the network")
                return waited, False
            chunk = self.poll_interval_s
            if limit is not None:
                chunk = min(chunk, limit - waited)
            self.sync_sleep(chunk)
            waited += chunk
        return waited, True


# ------------------------------------------------------------------------ decorator


@overload
def retrying(__fn: F) -> F: ...


@overload
def retrying(
    config: RetryConfig | str | None = None,
    *,
    network: NetworkLike | None = None,
    is_retryable: Callable[[BaseException], bool] | None = None,
    name: str | None = None,
    timeout_s: float | None = None,
    retryer: Retryer | None = None,
) -> Callable[[F], F]: ...


def retrying(
    config: RetryConfig | str | Callable[..., Any] | None = None,
    *,
    network: NetworkLike | None = None,
    is_retryable: Callable[[BaseException], bool] | None = None,
    name: str | None = None,
    timeout_s: float | None = None,
    retryer: Retryer | None = None,
) -> Any:
    """Decorate a sync or async function so each call retries per `config`.

        @retrying("patient", timeout_s=300)
        async def upload(path: str) -> None: ...

        @retrying                      # balanced profile
        def fetch() -> bytes: ...

    `config` is a RetryConfig or a profile name. The Retryer is exposed as
    `fn.retryer`, so a monitor created later can be attached:
    `upload.retryer.network = monitor`. `name` defaults to the function's
    qualified name.
    """
    if callable(config) and not isinstance(config, (RetryConfig, str)):
        return retrying()(config)  # bare @retrying
    r = retryer if retryer is not None else Retryer(config, network, is_retryable)

    def decorate(fn: F) -> F:
        op_name: str = name or str(getattr(fn, "__qualname__", repr(fn)))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                def op(_attempt: int) -> Coroutine[Any, Any, Any]:
                    return cast(Coroutine[Any, Any, Any], fn(*args, **kwargs))

                return await r.run(op, name=op_name, timeout_s=timeout_s)

            async_wrapper.retryer = r  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return r.call(lambda _attempt: fn(*args, **kwargs), name=op_name, timeout_s=timeout_s)

        sync_wrapper.retryer = r  # type: ignore[attr-defined]
        return cast(F, sync_wrapper)

    return decorate
