"""fastping.engine as a package: every name the one-module engine exported is still
importable from it, no function in it is over 60 lines, and the one reading of "our
network is down" (engine.contracts.network_is_down) agrees for every kind of monitor
the engine and the retryer are given."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastping.engine as engine
from fastping.engine.contracts import network_is_down
from fastping.netstate import NetworkState

ENGINE_DIR = Path(engine.__file__).parent

# what `fastping.engine` defined when it was engine.py (public names, and the event
# kinds test_engine_unit reads from it)
OLD_EXPORTS = [
    "CoreEvent",
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
    "EngineEvent",
    "IcmpSocketLike",
    "KindOpener",
    "MAX_TIMEOUT_S",
    "MAX_WINDOW",
    "MIN_INTERVAL_S",
    "MonitoringEngine",
    "N_OUTCOME_CODES",
    "OUTCOME_BY_KIND",
    "Observer",
    "Outcome",
    "ProbeResult",
    "Resolver",
    "ResultEvent",
    "SOCKET_KINDS",
    "STATUS_DOWN",
    "STATUS_ERROR",
    "STATUS_LOCAL_DOWN",
    "STATUS_UNKNOWN",
    "STATUS_UP",
    "SendLateness",
    "SockKey",
    "SocketFactory",
    "StateChanged",
    "Subscription",
    "TargetAdded",
    "TargetCounters",
    "TargetInfo",
    "TargetRemoved",
]


def test_every_name_of_the_old_module_is_still_exported() -> None:
    missing = [n for n in OLD_EXPORTS if not hasattr(engine, n)]
    assert missing == []
    assert set(OLD_EXPORTS) <= set(engine.__all__)
    assert all(hasattr(engine, n) for n in engine.__all__)


def test_the_rooms() -> None:
    from fastping.engine import contracts, core, events, sockets, stats, target, wheel

    assert engine.MonitoringEngine is core.MonitoringEngine
    assert engine.Subscription is events.Subscription
    assert engine.EngineStats is stats.EngineStats
    assert engine.SOCKET_KINDS is sockets.SOCKET_KINDS
    assert engine.TargetInfo is target.TargetInfo
    assert engine.Wheel is wheel.Wheel
    assert engine.IcmpSocketLike is contracts.IcmpSocketLike
    assert set(engine.SOCKET_KINDS) == {"icmp", "tcp", "udp", "dns"}
    # the wheel knows no clock and no event loop: it imports neither
    tree = ast.parse((ENGINE_DIR / "wheel.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "array", "collections.abc", "typing", "contracts"}


def test_no_function_in_the_engine_is_over_60_lines() -> None:
    long = []
    for f in sorted(ENGINE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 60:
                    long.append(f"{f.name}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_stats_has_every_key_engine_stats_declares() -> None:
    eng = engine.MonitoringEngine(["127.0.0.1"], guard=engine.core.ResourceGuard(None, None))
    st = eng.stats()
    assert set(st) == set(engine.EngineStats.__annotations__)
    assert set(st["outcomes"]) == set(engine.OutcomeCounts.__annotations__)
    assert set(st["loop_lag_s"]) == set(engine.LoopLag.__annotations__)
    assert st["loss"] is not None and set(st["loss"]) == set(engine.LossStats.__annotations__)
    assert st["results"] == sum(st["outcomes"].values()) == 0
    assert st["targets"] == 1 and st["running"] is False and st["uptime_s"] is None


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


class _Monitor:
    def __init__(self, state: object) -> None:
        self.state = state


@pytest.mark.parametrize(
    ("state", "down"),
    [
        (NetworkState.DOWN, True),
        (NetworkState.UP, False),
        (NetworkState.DEGRADED, False),
        (NetworkState.UNKNOWN, False),
        ("down", True),  # the retryer's tests play the monitor with strings
        ("up", False),
        (_Named("DOWN"), True),  # the engine's tests: an object with a name
        (_Named("UP"), False),
        (None, False),
    ],
)
def test_network_is_down(state: object, down: bool) -> None:
    assert network_is_down(_Monitor(state)) is down


def test_no_monitor_is_not_down() -> None:
    assert network_is_down(None) is False
