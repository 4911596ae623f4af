"""Unit tests for fastping.retry: schedule, jitter, profiles, config, classification,
network pausing, deadline and cancellation. No privilege, no network: a fake
clock/sleep drives the backoff and a fake monitor plays the network."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tests.engine_fakes import run_virtual

from fastping.errors import ConfigError, FastpingError, ResolveError, SocketError, TransientError
from fastping.retry import (
    DEFAULT_PROFILE,
    PROFILES,
    Attempt,
    RetryConfig,
    Retryer,
    RetryError,
    RetryTimeout,
    is_retryable_error,
    retrying,
)

# ------------------------------------------------------------------------- fakes


_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """fastping.retry's records as dicts (event, log_level, the extra fields), taken
    from stdlib logging, the only way the library logs."""
    out: list[dict[str, Any]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            d = {k: v for k, v in record.__dict__.items() if k not in _RECORD_KEYS}
            out.append({"event": record.getMessage(), "log_level": record.levelname.lower(), **d})

    lg = logging.getLogger("fastping.retry")
    h, old = Grab(), lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


class FakeTime:
    """A clock that only moves when something sleeps. `on_sleep` lets a test act
    (e.g. drop the network) in the middle of a backoff."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def clock(self) -> float:
        return self.now

    def _advance(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        if self.on_sleep is not None:
            self.on_sleep(self.now)

    async def sleep(self, s: float) -> None:
        self._advance(s)
        await asyncio.sleep(0)  # still a real await point (cancellation)

    def sync_sleep(self, s: float) -> None:
        self._advance(s)


class FakeMonitor:
    """Plays NetworkMonitor: `state`, `is_up()`, `wait_for_network()` (wakes when UP).
    Thread-safe enough for the sync tests (a plain attribute, polled)."""

    def __init__(self, state: str = "up") -> None:
        self._state = state
        self.waits_started = 0
        self.waits_cancelled = 0

    @property
    def state(self) -> str:
        return self._state

    def set(self, state: str) -> None:
        self._state = state

    def is_up(self) -> bool:
        return self._state == "up"

    async def wait_for_network(self, timeout: float | None = None) -> str:
        self.waits_started += 1
        try:
            while self._state != "up":
                await asyncio.sleep(0.002)
            return self._state
        except asyncio.CancelledError:
            self.waits_cancelled += 1
            raise


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def failing_op(
    fail_times: int, exc: Callable[[], BaseException] = refused, calls: list[int] | None = None
) -> Callable[[int], Awaitable[str]]:
    seen = calls if calls is not None else []

    async def op(attempt: int) -> str:
        seen.append(attempt)
        if len(seen) <= fail_times:
            raise exc()
        return f"ok@{attempt}"

    return op


def make(cfg: RetryConfig, ft: FakeTime, **kw: Any) -> Retryer:
    return Retryer(
        cfg,
        clock=ft.clock,
        sleep=ft.sleep,
        sync_sleep=ft.sync_sleep,
        rng=random.Random(7),
        **kw,
    )


NOJIT = RetryConfig(max_attempts=6, initial_delay=1.0, max_delay=5.0, multiplier=2.0, jitter=False)

# ---------------------------------------------------------------------- schedule


def test_delay_schedule_is_exponential_and_capped() -> None:
    ft = FakeTime()
    calls: list[int] = []
    r = make(NOJIT, ft)
    with pytest.raises(RetryError) as ei:
        asyncio.run(r.run(failing_op(99, calls=calls), name="sched"))
    assert ft.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert calls == [1, 2, 3, 4, 5, 6]
    err = ei.value
    assert [(a.attempt, a.delay) for a in err.attempts] == [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 5.0),
        (5, 5.0),
        (6, 0.0),
    ]
    assert all(a.counted for a in err.attempts)
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert err.last_error is err.__cause__ is err.attempts[-1].error
    assert "6 of 6 attempts" in str(err) and "max_attempts" in str(err)
    # an Attempt unpacks like the (attempt, error, delay) triple first
    attempt, error, delay, *_ = err.attempts[0]
    assert (attempt, delay) == (1, 1.0) and isinstance(error, ConnectionRefusedError)


def test_success_after_failures_returns_value_and_stops() -> None:
    ft = FakeTime()
    calls: list[int] = []
    r = make(NOJIT, ft)
    assert asyncio.run(r.run(failing_op(2, calls=calls))) == "ok@3"
    assert calls == [1, 2, 3]
    assert ft.sleeps == [1.0, 2.0]


def test_first_try_success_never_sleeps() -> None:
    ft = FakeTime()
    r = make(NOJIT, ft)
    assert asyncio.run(r.run(failing_op(0))) == "ok@1"
    assert ft.sleeps == []


def test_backoff_cap_values_and_overflow() -> None:
    cfg = RetryConfig(max_attempts=5, initial_delay=0.5, max_delay=3.0, multiplier=3.0)
    assert [cfg.backoff_cap(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 3.0, 3.0]
    assert cfg.total_backoff_cap() == 0.5 + 1.5 + 3.0 + 3.0
    assert cfg.backoff_cap(100_000) == 3.0  # 3.0**99999 overflows a float
    assert RetryConfig(multiplier=1.0, initial_delay=2.0).backoff_cap(9) == 2.0
    with pytest.raises(ValueError):
        cfg.backoff_cap(0)


def test_full_jitter_stays_within_zero_and_cap() -> None:
    cfg = RetryConfig(max_attempts=20, initial_delay=1.0, max_delay=8.0, multiplier=2.0)
    r = Retryer(cfg, rng=random.Random(1))
    for n in range(1, 10):
        cap = cfg.backoff_cap(n)
        draws = [r.next_delay(n) for _ in range(2000)]
        assert min(draws) >= 0.0 and max(draws) <= cap
        # full jitter spreads over the whole range, not a +-25% band around cap
        assert min(draws) < 0.05 * cap and max(draws) > 0.95 * cap
        assert abs(sum(draws) / len(draws) - cap / 2) < 0.05 * cap


def test_jittered_run_sleeps_within_caps() -> None:
    ft = FakeTime()
    cfg = RetryConfig(max_attempts=8, initial_delay=0.1, max_delay=1.0, multiplier=2.0)
    r = make(cfg, ft)
    with pytest.raises(RetryError):
        asyncio.run(r.run(failing_op(99)))
    assert len(ft.sleeps) == 7
    for n, s in enumerate(ft.sleeps, start=1):
        assert 0.0 <= s <= cfg.backoff_cap(n)
    assert len(set(ft.sleeps)) == 7  # actually random


# ---------------------------------------------------------------------- profiles


def test_profiles_have_the_spec_values() -> None:
    c, b, p = (RetryConfig.profile(n) for n in ("conservative", "balanced", "patient"))
    assert (c.max_attempts, c.initial_delay, c.wait_for_network) == (3, 1.0, True)
    assert (b.max_attempts, b.initial_delay, b.wait_for_network) == (5, 1.0, True)
    assert (p.max_attempts, p.initial_delay, p.wait_for_network) == (10, 2.0, True)
    for cfg in (c, b, p):  # from the spec's retry example
        assert (cfg.max_delay, cfg.multiplier, cfg.jitter) == (30.0, 2.0, True)
        assert cfg.network_timeout is None  # "can wait indefinitely" (bounded by deadline)
    assert DEFAULT_PROFILE == "balanced"
    assert RetryConfig() == b == PROFILES["balanced"]
    assert RetryConfig.profile(" Patient ") == p
    assert Retryer("conservative").config == c


def test_unknown_profile_names_allowed_ones() -> None:
    with pytest.raises(ConfigError) as ei:
        RetryConfig.profile("reckless")
    msg = str(ei.value)
    assert "'reckless'" in msg and "conservative" in msg and "patient" in msg


# ---------------------------------------------------------------- from_mapping


def test_from_mapping_profile_and_overrides() -> None:
    cfg = RetryConfig.from_mapping(
        {
            "profile": "conservative",
            "initial_delay": "500ms",
            "max_delay": "1m30s",
            "network_timeout": "2m",
            "jitter": False,
        }
    )
    assert cfg.max_attempts == 3  # from the profile
    assert cfg.initial_delay == 0.5
    assert cfg.max_delay == 90.0
    assert cfg.network_timeout == 120.0
    assert cfg.jitter is False


def test_from_mapping_spec_yaml_section() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(
        "retry:\n  max_attempts: 10\n  initial_delay: 2s\n  wait_for_network: true\n"
    )
    assert RetryConfig.from_mapping(doc["retry"]) == RetryConfig.profile("patient")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, RetryConfig()),
        ("patient", RetryConfig.profile("patient")),
        ({}, RetryConfig()),
        ({"max_attempts": "7"}, RetryConfig(max_attempts=7)),
        ({"initial_delay": 0.25, "max_delay": 2}, RetryConfig(initial_delay=0.25, max_delay=2.0)),
        ({"initial_delay": "1.5"}, RetryConfig(initial_delay=1.5)),
        ({"network_timeout": None}, RetryConfig(network_timeout=None)),
        ({"network_timeout": "250ms"}, RetryConfig(network_timeout=0.25)),
        ({"wait_for_network": "no"}, RetryConfig(wait_for_network=False)),
        ({"multiplier": "1.5"}, RetryConfig(multiplier=1.5)),
    ],
)
def test_from_mapping_accepts(data: Any, expected: RetryConfig) -> None:
    assert RetryConfig.from_mapping(data) == expected


@pytest.mark.parametrize(
    ("data", "must_mention"),
    [
        ({"max_attempt": 3}, ["max_attempt", "allowed keys", "max_attempts"]),
        ({"max_attempts": 0}, ["max_attempts", "0", ">= 1"]),
        ({"max_attempts": "many"}, ["max_attempts", "'many'", "whole number"]),
        ({"max_attempts": True}, ["max_attempts", "true", "whole number"]),
        ({"initial_delay": "soon"}, ["initial_delay", "'soon'", "1s"]),
        ({"initial_delay": "1x"}, ["initial_delay", "'1x'", "duration"]),
        ({"initial_delay": -1}, ["initial_delay", "-1", ">= 0"]),
        ({"max_delay": 0.5, "initial_delay": 1}, ["max_delay", "0.5", "initial_delay"]),
        ({"multiplier": 0.5}, ["multiplier", "0.5", ">= 1.0"]),
        ({"jitter": "maybe"}, ["jitter", "'maybe'", "true or false"]),
        ({"network_timeout": 0}, ["network_timeout", "0", "null"]),
        ({"network_timeout": "forever"}, ["network_timeout", "'forever'", "null"]),
        ({"profile": "reckless"}, ["profile", "'reckless'", "balanced"]),
        (["max_attempts"], ["retry", "mapping", "profile"]),
    ],
)
def test_from_mapping_rejects_with_a_clear_message(data: Any, must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        RetryConfig.from_mapping(data)
    msg = str(ei.value)
    for word in must_mention:
        assert word in msg, (word, msg)
    assert isinstance(ei.value, FastpingError)


def test_constructor_validates_too() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ConfigError, match="initial_delay"):
        RetryConfig(initial_delay=float("nan"))


# ---------------------------------------------------------------- classification

RETRYABLE: list[BaseException] = [
    refused(),
    ConnectionResetError(errno.ECONNRESET, "reset"),
    ConnectionAbortedError(),
    BrokenPipeError(),
    TimeoutError(),
    TimeoutError("timed out"),
    asyncio.TimeoutError(),
    OSError(errno.ENETUNREACH, "Network is unreachable"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    OSError(errno.ENETDOWN, "Network is down"),
    OSError(errno.ETIMEDOUT, "timed out"),
    OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
    SocketError(errno.ENETUNREACH, "send failed"),
    TransientError("check host silent"),
    socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
]
NOT_RETRYABLE: list[BaseException] = [
    ValueError("bad"),
    KeyError("k"),
    RuntimeError("boom"),
    PermissionError(errno.EACCES, "denied"),
    OSError(errno.EACCES, "denied"),
    FileNotFoundError(errno.ENOENT, "missing"),
    OSError(errno.EINVAL, "invalid"),
    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ConfigError("bad config"),
    ResolveError("no such host"),
    RetryError("inner retryer gave up", name="inner", attempts=[]),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=repr)
def test_retryable(exc: BaseException) -> None:
    assert is_retryable_error(exc)


@pytest.mark.parametrize("exc", NOT_RETRYABLE, ids=repr)
def test_not_retryable(exc: BaseException) -> None:
    assert not is_retryable_error(exc)


def test_non_retryable_fails_at_once_unchanged() -> None:
    ft = FakeTime()
    calls: list[int] = []
    boom = ValueError("not transient")
    r = make(NOJIT, ft)
    with pytest.raises(ValueError) as ei:
        asyncio.run(r.run(failing_op(99, exc=lambda: boom, calls=calls)))
    assert ei.value is boom
    assert calls == [1] and ft.sleeps == []


def test_predicate_widens_and_narrows() -> None:
    ft = FakeTime()
    calls: list[int] = []
    wide = make(NOJIT, ft, is_retryable=lambda e: is_retryable_error(e) or isinstance(e, KeyError))
    assert asyncio.run(wide.run(failing_op(2, exc=lambda: KeyError("x"), calls=calls))) == "ok@3"

    calls.clear()
    narrow = make(
        NOJIT,
        ft,
        is_retryable=lambda e: is_retryable_error(e) and not isinstance(e, ConnectionRefusedError),
    )
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(narrow.run(failing_op(2, calls=calls)))
    assert calls == [1]


# ---------------------------------------------------------------------- deadline


def test_deadline_raises_before_a_sleep_that_would_pass_it() -> None:
    ft = FakeTime()
    calls: list[int] = []
    r = make(NOJIT, ft)
    with pytest.raises(RetryTimeout) as ei:
        asyncio.run(r.run(failing_op(99, calls=calls), name="dl", timeout_s=2.5))
    # t=0 fail, sleep 1, t=1 fail, next delay 2 > 1.5 left: give up now, not at t=3
    assert calls == [1, 2] and ft.sleeps == [1.0]
    err = ei.value
    assert isinstance(err, TimeoutError) and isinstance(err, RetryError)
    assert [a.attempt for a in err.attempts] == [1, 2]
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert "deadline of 2.5s" in str(err) and "timeout_s" in str(err)
    assert not is_retryable_error(err)  # an outer retryer must not retry it


def test_deadline_interrupts_a_running_attempt() -> None:
    finished: list[str] = []

    async def slow(attempt: int) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            finished.append("cleaned up")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        r = Retryer(NOJIT, clock=loop.time)
        t0 = loop.time()
        with pytest.raises(RetryTimeout, match="during an attempt"):
            await r.run(slow, timeout_s=0.1)
        return loop.time() - t0

    # virtual time: the 30 s attempt was cut at the 0.1 s deadline, to the tick
    assert run_virtual(main()) == pytest.approx(0.1, abs=1e-6)
    assert finished == ["cleaned up"]  # the attempt was cancelled, not leaked


def test_own_timeout_error_of_op_is_a_retryable_failure_not_the_deadline() -> None:
    calls: list[int] = []
    r = Retryer(RetryConfig(max_attempts=3, initial_delay=0.001, jitter=False))
    with pytest.raises(RetryError) as ei:
        asyncio.run(r.run(failing_op(99, exc=TimeoutError, calls=calls), timeout_s=30))
    assert not isinstance(ei.value, RetryTimeout)
    assert calls == [1, 2, 3]


def test_sync_call_deadline() -> None:
    ft = FakeTime()
    r = make(NOJIT, ft)
    calls: list[int] = []

    def fn(attempt: int) -> None:
        calls.append(attempt)
        raise refused()

    with pytest.raises(RetryTimeout):
        r.call(fn, timeout_s=3.5)
    assert calls == [1, 2, 3] and ft.sleeps == [1.0, 2.0]


def test_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        asyncio.run(Retryer().run(failing_op(0), timeout_s=0))


# ------------------------------------------------------------------ cancellation


def test_cancel_during_backoff_is_prompt() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        cfg = RetryConfig(initial_delay=30.0, max_delay=30.0, jitter=False)
        r = Retryer(cfg, clock=loop.time)
        task = asyncio.ensure_future(r.run(failing_op(99)))
        await asyncio.sleep(0.05)
        t0 = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return loop.time() - t0

    assert run_virtual(main()) == 0.0  # not one tick of the 30 s backoff after the cancel


def test_cancel_during_attempt_cancels_the_attempt() -> None:
    state: list[str] = []

    async def op(attempt: int) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state.append("cancelled")
            raise

    async def main() -> None:
        task = asyncio.ensure_future(Retryer().run(op, timeout_s=60))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert state == ["cancelled"]


# ------------------------------------------------------------- network-aware


def test_failure_while_down_waits_and_does_not_spend_an_attempt() -> None:
    ft = FakeTime()
    mon = FakeMonitor("up")
    calls: list[int] = []
    cfg = RetryConfig(max_attempts=2, initial_delay=1.0, jitter=False)
    r = make(cfg, ft, network=mon, poll_interval_s=0.01)

    async def op(attempt: int) -> str:
        calls.append(attempt)
        if len(calls) <= 3:  # three failures during the outage, more than max_attempts
            mon.set("down")
            asyncio.get_running_loop().call_later(0.03, mon.set, "up")
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return "done"

    async def main() -> str:
        return await r.run(op, name="outage")

    with capture_logs() as logs:
        assert asyncio.run(main()) == "done"
    assert calls == [1, 1, 1, 1]  # the attempt number is never used up
    assert ft.sleeps == []  # no backoff before or after the recovery
    events = [e["event"] for e in logs]
    assert events.count("network is down, waiting for recovery") == 3
    assert events.count("network recovered, retrying now") == 3
    down = next(e for e in logs if e["event"] == "network is down, waiting for recovery")
    assert down["op"] == "outage" and down["attempt"] == 1
    assert "unreachable" in down["error"]


def test_outage_history_is_attached_when_attempts_later_run_out() -> None:
    ft = FakeTime()
    mon = FakeMonitor("up")
    cfg = RetryConfig(max_attempts=2, initial_delay=1.0, jitter=False)
    r = make(cfg, ft, network=mon, poll_interval_s=0.01)
    calls: list[int] = []

    async def op(attempt: int) -> None:
        calls.append(attempt)
        if len(calls) == 1:
            mon.set("down")
            asyncio.get_running_loop().call_later(0.03, mon.set, "up")
        raise refused()

    with pytest.raises(RetryError) as ei:
        asyncio.run(r.run(op))
    assert calls == [1, 1, 2]
    hist = ei.value.attempts
    assert [(a.attempt, a.counted) for a in hist] == [(1, False), (1, True), (2, True)]
    assert hist[0].delay == 0.0  # waited for the network instead (fake clock: no wait measured)
    assert hist[1].delay == pytest.approx(1.0) == pytest.approx(sum(ft.sleeps))


def test_outage_starting_during_backoff_refunds_the_attempt() -> None:
    ft = FakeTime()
    mon = FakeMonitor("up")  # the monitor has not noticed yet when the op fails
    cfg = RetryConfig(max_attempts=3, initial_delay=1.0, jitter=False)
    r = make(cfg, ft, network=mon, poll_interval_s=0.1)
    calls: list[int] = []

    def drop_then_restore(now: float) -> None:
        if now >= 1000.3 and calls == [1]:
            mon.set("down")
            asyncio.get_running_loop().call_later(0.03, mon.set, "up")

    ft.on_sleep = drop_then_restore
    assert asyncio.run(r.run(failing_op(1, calls=calls))) == "ok@1"
    assert calls == [1, 1]
    assert sum(ft.sleeps) == pytest.approx(0.3)  # the sleep stopped when DOWN was seen


@pytest.mark.parametrize("state", ["up", "degraded", "unknown"])
def test_only_down_pauses(state: str) -> None:
    ft = FakeTime()
    r = make(NOJIT, ft, network=FakeMonitor(state), poll_interval_s=10.0)
    calls: list[int] = []
    assert asyncio.run(r.run(failing_op(2, calls=calls))) == "ok@3"
    assert calls == [1, 2, 3] and ft.sleeps == [1.0, 2.0]


def test_wait_for_network_false_ignores_the_monitor() -> None:
    ft = FakeTime()
    cfg = RetryConfig(max_attempts=3, initial_delay=1.0, jitter=False, wait_for_network=False)
    mon = FakeMonitor("down")
    r = make(cfg, ft, network=mon)
    with pytest.raises(RetryError):
        asyncio.run(r.run(failing_op(99)))
    assert ft.sleeps == [1.0, 2.0] and mon.waits_started == 0


def test_recovery_to_degraded_ends_the_wait() -> None:
    mon = FakeMonitor("down")  # its wait_for_network only wakes on UP
    r = Retryer(NOJIT, network=mon, poll_interval_s=0.01)
    calls: list[int] = []

    async def main() -> str:
        asyncio.get_running_loop().call_later(0.05, mon.set, "degraded")
        return await r.run(failing_op(1, calls=calls))

    assert asyncio.run(asyncio.wait_for(main(), 5)) == "ok@1"
    assert calls == [1, 1]


def test_cancel_while_waiting_for_network_is_prompt_and_clean() -> None:
    mon = FakeMonitor("down")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        r = Retryer(NOJIT, network=mon, clock=loop.time)
        task = asyncio.ensure_future(r.run(failing_op(99)))
        await asyncio.sleep(0.1)
        assert mon.waits_started == 1
        t0 = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = loop.time() - t0
        await asyncio.sleep(0)
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftovers == []
        return took

    assert run_virtual(main()) == 0.0
    assert mon.waits_cancelled == 1


def test_deadline_while_waiting_for_network() -> None:
    mon = FakeMonitor("down")

    async def main() -> tuple[float, RetryTimeout]:
        loop = asyncio.get_running_loop()
        r = Retryer(NOJIT, network=mon, clock=loop.time)
        t0 = loop.time()
        with pytest.raises(RetryTimeout, match="waiting for the network") as ei:
            await r.run(failing_op(99), name="dlnet", timeout_s=0.2)
        return loop.time() - t0, ei.value

    took, err = run_virtual(main())
    assert took == pytest.approx(0.2, abs=1e-6)  # the deadline, not a poll later
    (only,) = err.attempts
    assert only.counted is False and only.network_wait == pytest.approx(0.2, abs=1e-6)
    assert mon.waits_cancelled == 1


def test_network_timeout_counts_the_attempt_and_retries_at_once() -> None:
    mon = FakeMonitor("down")
    cfg = RetryConfig(max_attempts=2, initial_delay=10.0, jitter=False, network_timeout=0.05)
    calls: list[int] = []

    async def main() -> tuple[float, RetryError]:
        loop = asyncio.get_running_loop()
        r = Retryer(cfg, network=mon, poll_interval_s=0.01, clock=loop.time)
        t0 = loop.time()
        with pytest.raises(RetryError) as ei:
            await r.run(failing_op(99, calls=calls))
        return loop.time() - t0, ei.value

    took, err = run_virtual(main())
    assert took == pytest.approx(0.1, abs=1e-6)  # two 50 ms network waits, no 10 s backoff
    assert calls == [1, 2]
    hist = err.attempts
    assert [(a.attempt, a.counted, a.delay) for a in hist] == [(1, True, 0.0), (2, True, 0.0)]
    assert [round(a.network_wait, 6) for a in hist] == [0.05, 0.05]


def test_monitor_can_be_attached_later() -> None:
    mon = FakeMonitor("down")
    r = Retryer(NOJIT, poll_interval_s=0.01)
    r.network = mon
    calls: list[int] = []

    async def main() -> str:
        asyncio.get_running_loop().call_later(0.03, mon.set, "up")
        return await r.run(failing_op(1, calls=calls))

    assert asyncio.run(main()) == "ok@1" and calls == [1, 1]


# -------------------------------------------------------------------------- sync


def test_sync_call_schedule_and_success() -> None:
    ft = FakeTime()
    r = make(NOJIT, ft)
    calls: list[int] = []

    def fn(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 4:
            raise TimeoutError("timed out")
        return "yes"

    assert r.call(fn, name="sync") == "yes"
    assert calls == [1, 2, 3, 4] and ft.sleeps == [1.0, 2.0, 4.0]


def test_sync_call_waits_for_network_without_spending_attempts() -> None:
    mon = FakeMonitor("up")
    cfg = RetryConfig(max_attempts=1, initial_delay=5.0, jitter=False)
    ft = FakeTime()
    r = make(cfg, ft, network=mon, poll_interval_s=0.005)
    calls: list[int] = []
    up_at: list[float] = []

    def fn(attempt: int) -> str:
        calls.append(attempt)
        if len(calls) <= 2:
            mon.set("down")
            up_at.append(ft.now + 0.03)  # back 30 ms later, by the fake clock
            raise OSError(errno.ENETDOWN, "Network is down")
        return "back"

    ft.on_sleep = lambda now: mon.set("up") if now >= up_at[-1] - 1e-9 else None
    t0 = ft.now
    assert r.call(fn) == "back"
    assert calls == [1, 1, 1]
    # two 30 ms outages, each seen at the next 5 ms poll; never the 5 s backoff
    assert ft.now - t0 == pytest.approx(0.06, abs=0.011)
    assert max(ft.sleeps) <= 0.005 + 1e-9


def test_sync_call_deadline_while_waiting_for_network() -> None:
    mon = FakeMonitor("down")
    ft = FakeTime()
    r = make(NOJIT, ft, network=mon, poll_interval_s=0.01)
    t0 = ft.now
    with pytest.raises(RetryTimeout, match="waiting for the network"):
        r.call(lambda a: (_ for _ in ()).throw(refused()), timeout_s=0.1)
    assert ft.now - t0 == pytest.approx(0.1, abs=1e-6)  # the deadline, to the chunk


def test_sync_call_non_retryable() -> None:
    r = Retryer(NOJIT)
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        r.call(lambda a: empty["missing"])


# --------------------------------------------------------------------- decorator


def test_decorator_async_keeps_args_and_metadata() -> None:
    seen: list[tuple[int, str]] = []

    @retrying(RetryConfig(max_attempts=3, initial_delay=0.001, jitter=False))
    async def fetch(x: int, *, label: str) -> str:
        """Fetch things."""
        seen.append((x, label))
        if len(seen) < 3:
            raise refused()
        return f"{label}{x}"

    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch things."
    assert isinstance(fetch.retryer, Retryer)  # type: ignore[attr-defined]
    assert asyncio.run(fetch(4, label="n")) == "n4"
    assert seen == [(4, "n")] * 3


def test_decorator_sync_with_profile_name_and_bare() -> None:
    calls: list[int] = []

    @retrying("conservative")
    def never(v: int) -> int:
        calls.append(v)
        raise TimeoutError

    never.retryer.sync_sleep = lambda s: None  # type: ignore[attr-defined]
    with pytest.raises(RetryError) as ei:
        never(9)
    assert calls == [9, 9, 9]  # conservative: 3 attempts
    assert ei.value.name.endswith("never")

    @retrying
    def ok() -> str:
        return "fine"

    assert ok() == "fine"
    assert ok.retryer.config == RetryConfig()  # type: ignore[attr-defined]


def test_decorator_timeout_and_shared_retryer() -> None:
    shared = Retryer(NOJIT, network=FakeMonitor("down"))

    @retrying(retryer=shared, timeout_s=0.1, name="job")
    async def job() -> None:
        raise refused()

    with pytest.raises(RetryTimeout) as ei:
        asyncio.run(job())
    assert ei.value.name == "job"


# -------------------------------------------------------------------------- logs


def test_log_events_for_attempts_waits_and_recovery() -> None:
    ft = FakeTime()
    mon = FakeMonitor("up")
    cfg = RetryConfig(max_attempts=2, initial_delay=1.0, jitter=False)
    r = make(cfg, ft, network=mon, poll_interval_s=0.01)
    calls: list[int] = []

    async def op(attempt: int) -> None:
        calls.append(attempt)
        if len(calls) == 2:
            mon.set("down")
            asyncio.get_running_loop().call_later(0.02, mon.set, "up")
        raise refused()

    with capture_logs() as logs, pytest.raises(RetryError):
        asyncio.run(r.run(op, name="logged"))
    events = [(e["event"], e.get("attempt")) for e in logs]
    assert events == [
        ("attempt starting", 1),
        ("attempt failed, retrying", 1),
        ("attempt starting", 2),
        ("network is down, waiting for recovery", 2),
        ("network recovered, retrying now", 2),
        ("attempt starting", 2),
        ("retries exhausted", None),
    ]
    assert all(e["op"] == "logged" for e in logs)
    retrying_ev = logs[1]
    assert retrying_ev["delay_s"] == 1.0 and "ConnectionRefusedError" in retrying_ev["error"]
    assert logs[-1]["log_level"] == "error" and logs[-1]["attempts"] == 2


def test_attempt_is_a_named_tuple() -> None:
    a = Attempt(2, refused(), 0.5)
    assert a.network_wait == 0.0 and a.counted is True and a[:2] == (2, a.error)
