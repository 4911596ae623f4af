"""Retry across a real outage: a TCP operation from one network namespace to a
server in another, the client's link cut mid-operation and restored after a
pause longer than all backoff delays together (see tests/netns_retry.py).

With the NetworkMonitor attached the operation succeeds and no attempt is spent
during the outage; without it the same outage exhausts the attempts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import netns_retry as scenario

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(scenario.can_run() is not None, reason=str(scenario.can_run())),
]

# Client defaults (netns_retry.py): max_attempts 4, initial_delay 0.05 s, max_delay
# 0.2 s, no jitter -> backoff sleeps 0.05 + 0.1 + 0.2 = 0.35 s in all, plus one
# 0.3 s I/O timeout for the exchange in flight when the link drops.
ALL_BACKOFF_S = 0.05 + 0.1 + 0.2
IO_TIMEOUT_S = 0.3
OUTAGE_S = 1.0
assert OUTAGE_S > ALL_BACKOFF_S + IO_TIMEOUT_S


@pytest.fixture
def topo() -> Iterator[scenario.Topo]:
    with scenario.topology() as t, scenario.tcp_server(t):
        yield t
    # the context managers removed both namespaces; make sure of it
    assert t.client_ns not in scenario._ip("netns", "list").stdout


@pytest.mark.parametrize(
    ("check_host", "sync"),
    [(False, False), (True, False), (False, True)],
    ids=["netlink-only", "check-host", "sync-call"],
)
def test_outage_with_monitor_spends_no_attempt(
    topo: scenario.Topo, check_host: bool, sync: bool
) -> None:
    args = ["--check-host", scenario.SERVER_IP] if check_host else []
    if sync:
        args.append("--sync")
    out = scenario.run_outage(topo, monitor=True, outage_s=OUTAGE_S, client_args=args)

    res = out.result
    assert res["ok"] is True, res
    assert res["value"] == 1  # the attempt that succeeded is still attempt number 1
    starts = out.attempt_starts
    assert [s["attempt"] for s in starts] == [1, 1]
    # the first started before the cut; the retry only after the link was back
    assert starts[0]["t"] < out.t_cut
    assert starts[1]["t"] > out.t_restore_begin
    # nothing was tried while the link was down
    assert not [s for s in starts if out.t_cut < s["t"] < out.t_restore_begin]
    latency_s = starts[1]["t"] - out.t_restore_end
    assert latency_s < 0.5, f"retry started {latency_s:.3f}s after the link came back"

    events = [log["event"] for log in out.logs]
    assert "network is down, waiting for recovery" in events
    assert "network recovered, retrying now" in events
    assert "attempt failed, retrying" not in events  # no backoff was spent
    states = [e["state"] for e in out.of("state")]
    assert states[:2] == ["down", "up"], states
    if check_host:
        assert "check hosts answered" in out.of("state")[1]["reason"]


def test_same_outage_without_monitor_exhausts_attempts(topo: scenario.Topo) -> None:
    out = scenario.run_outage(topo, monitor=False, outage_s=OUTAGE_S)

    res = out.result
    assert res["ok"] is False and res["error"] == "RetryError", res
    starts = out.attempt_starts
    assert [s["attempt"] for s in starts] == [1, 2, 3, 4]
    assert all(s["t"] < out.t_restore_begin for s in starts)  # gave up during the outage
    hist = res["history"]
    assert [h["attempt"] for h in hist] == [1, 2, 3, 4]
    assert all(h["counted"] for h in hist)
    assert [h["delay"] for h in hist] == [0.05, 0.1, 0.2, 0.0]
    # the in-flight exchange timed out; the reconnects hit the missing route
    assert "Timeout" in hist[0]["error"]
    assert all("Network is unreachable" in h["error"] for h in hist[1:]), hist
    assert "Network is unreachable" in res["cause"]


def test_deadline_during_outage_returns_promptly(topo: scenario.Topo) -> None:
    deadline_s = 1.0
    out = scenario.run_outage(
        topo, monitor=True, outage_s=0, restore=False, client_args=["--deadline", str(deadline_s)]
    )
    res = out.result
    assert res["ok"] is False and res["error"] == "RetryTimeout", res
    assert "waiting for the network" in res["message"]
    assert [h["counted"] for h in res["history"]] == [False]  # the outage spent nothing
    run_started = out.attempt_starts[0]["t"]
    late_s = res_t(out) - (run_started + deadline_s)
    assert -0.01 < late_s < 0.2, f"returned {late_s:.3f}s after the deadline"
    assert len(out.attempt_starts) == 1


def test_cancel_during_outage_returns_promptly(topo: scenario.Topo) -> None:
    out = scenario.run_outage(
        topo, monitor=True, outage_s=0, restore=False, client_args=["--cancel-after-down", "0.6"]
    )
    assert out.result.get("cancelled") is True, out.result
    (cancel,) = out.of("cancelling")
    took_s = res_t(out) - cancel["t"]
    assert took_s < 0.1, f"cancellation took {took_s:.3f}s"
    events = [log["event"] for log in out.logs]
    # it was cancelled while waiting for the network, not during an attempt
    assert events[-2:] == ["network is down, waiting for recovery", "retry cancelled"], events


def res_t(out: scenario.Outcome) -> float:
    return float(out.result["t"])
