"""NetworkMonitor logic without privilege: configuration, the netlink picture
(fed decoded messages), subscribers, waiters, webhook (local http.server on
127.0.0.1) and the TCP fallback against loopback."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastping.errors import ConfigError, FastpingError
from fastping.netstate import (
    IFF_LOOPBACK,
    IFF_LOWER_UP,
    IFF_RUNNING,
    IFF_UP,
    MonitorNotRunning,
    NetworkConfig,
    NetworkMonitor,
    NetworkState,
    NetworkTimeout,
    StateChange,
    _Link,
    _msg_route,
    _Route,
    _Topology,
    tcp_reachable,
)

pytestmark = pytest.mark.timeout(60)
AF4, AF6 = socket.AF_INET, socket.AF_INET6
UP_FLAGS = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- configuration ---


def test_config_from_mapping_parses_spec_keys_and_durations() -> None:
    cfg = NetworkConfig.from_mapping(
        {
            "check_interval": "15s",
            "check_timeout": "500ms",
            "check_hosts": ["10.0.0.1", "gateway"],
            "enable_netlink": True,
            "preferred_ifaces": ["eth0", "wlan*"],
            "notify_on_change": True,
        }
    )
    assert cfg.check_interval == 15.0 and cfg.check_timeout == 0.5
    assert cfg.check_hosts == ("10.0.0.1", "gateway")
    assert cfg.preferred_ifaces == ("eth0", "wlan*")
    assert cfg.notify_on_change is None  # the spec's boolean: no webhook without a URL
    assert NetworkConfig.from_mapping(None) == NetworkConfig()
    assert NetworkConfig().check_hosts == ()  # nothing is probed unless named


@pytest.mark.parametrize(
    ("name", "interval_s", "timeout_s"),
    [("conservative", 5, 2), ("balanced", 10, 5), ("patient", 30, 10)],
)
def test_profiles_carry_the_spec_timing(name: str, interval_s: float, timeout_s: float) -> None:
    for cfg in (NetworkConfig.from_mapping({"profile": name}), NetworkConfig.profile(name)):
        assert (cfg.check_interval, cfg.check_timeout) == (interval_s, timeout_s)
        assert cfg.check_hosts == ()
    cfg = NetworkConfig.from_mapping({"profile": name, "check_timeout": 1})
    assert cfg.check_timeout == 1.0


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"check_interval": "fast"}, "network.check_interval"),
        ({"check_interval": -1}, "network.check_interval"),
        ({"check_timeout": True}, "network.check_timeout"),
        ({"check_hosts": 5}, "network.check_hosts"),
        ({"check_hosts": [""]}, "network.check_hosts[0]"),
        ({"notify_on_change": "ftp://x"}, "network.notify_on_change"),
        ({"enable_netlink": "maybe"}, "network.enable_netlink"),
        ({"webhook_retries": -1}, "network.webhook_retries"),
        ({"check_intreval": 5}, "network.check_intreval"),
        ({"profile": "eager"}, "network.profile"),
    ],
)
def test_config_errors_name_the_key(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        NetworkConfig.from_mapping(mapping)
    assert str(info.value).startswith(key + ":")


def test_monitor_rejects_unknown_override() -> None:
    with pytest.raises(ConfigError, match="check_intervall"):
        NetworkMonitor(check_intervall=5)


# --- the netlink picture ---


def _topo() -> _Topology:
    t = _Topology()
    t.apply_link(True, _Link(1, "lo", UP_FLAGS | IFF_LOOPBACK, "UNKNOWN", 1, 65536, None))
    t.apply_link(True, _Link(2, "eth0", UP_FLAGS, "UP", 1, 1500, "02:00:00:00:00:01"))
    t.apply_link(True, _Link(3, "wlan0", UP_FLAGS, "UP", 1, 1500, "02:00:00:00:00:02"))
    t.apply_addr(True, 1, AF4, "127.0.0.1")
    t.apply_addr(True, 2, AF4, "192.0.2.10")
    t.apply_addr(True, 3, AF6, "2001:db8::10")
    t.apply_route(True, _Route(AF4, 254, 100, "192.0.2.1", (2,)))
    t.apply_route(True, _Route(AF6, 254, 600, "fe80::1", (3,)))
    return t


def test_usable_needs_link_address_and_route_of_one_family() -> None:
    t = _topo()
    u = t.evaluate(())
    assert u.usable and u.interfaces == {"eth0": "usable", "wlan0": "usable"}  # lo never counts
    assert u.gateways == ("192.0.2.1", "fe80::1%wlan0")
    # an IPv4 address with only an IPv6 route does not make eth0 usable
    t.apply_route(False, _Route(AF4, 254, 100, None, ()))
    t.apply_route(True, _Route(AF6, 254, 700, "fe80::2", (2,)))
    assert t.evaluate(()).interfaces["eth0"] == "no-default-route"


@pytest.mark.parametrize(
    ("flags", "oper", "carrier", "status"),
    [
        (0, "DOWN", 0, "down"),
        (UP_FLAGS, "DORMANT", 1, "dormant"),
        (IFF_UP, "LOWERLAYERDOWN", 0, "lower-layer-down"),
        (IFF_UP, "DOWN", 0, "no-carrier"),
        (UP_FLAGS, "UNKNOWN", 1, "usable"),  # tun/dummy never set operstate
        (UP_FLAGS, "TESTING", 1, "testing"),
    ],
)
def test_link_states(flags: int, oper: str, carrier: int, status: str) -> None:
    t = _topo()
    t.apply_link(True, _Link(2, "eth0", flags, oper, carrier, 1500, None))
    assert t.evaluate(()).interfaces["eth0"] == status


def test_link_down_and_last_ipv4_address_flush_ipv4_routes_silently() -> None:
    t = _topo()
    t.apply_link(True, _Link(2, "eth0", 0, "DOWN", 0, 1500, None))
    assert not any(r.family == AF4 for r in t.routes)  # as the kernel does, without a message
    t.apply_link(True, _Link(2, "eth0", UP_FLAGS, "UP", 1, 1500, None))
    assert t.evaluate(()).interfaces["eth0"] == "no-default-route"
    t = _topo()
    t.apply_addr(True, 2, AF4, "192.0.2.11")
    t.apply_addr(False, 2, AF4, "192.0.2.10")
    assert t.evaluate(()).interfaces["eth0"] == "usable"  # another IPv4 address remains
    t.apply_addr(False, 2, AF4, "192.0.2.11")
    assert t.evaluate(()).interfaces["eth0"] == "no-address"
    assert not any(r.family == AF4 for r in t.routes)


def test_route_messages_multipath_linkdown_and_non_default() -> None:
    base = {"family": AF4, "dst_len": 0, "type": 1, "table": 254, "flags": 0}
    assert _msg_route({**base, "dst_len": 24}) is None
    assert _msg_route({**base, "type": 6}) is None  # prohibit: not a way out
    r = _msg_route({**base, "RTA_OIF": 2, "RTA_GATEWAY": "192.0.2.1", "RTA_PRIORITY": 5})
    assert r == _Route(AF4, 254, 5, "192.0.2.1", (2,))
    r = _msg_route({**base, "flags": 0x10, "RTA_OIF": 2})  # RTNH_F_LINKDOWN
    assert r is not None and r.oifs == ()
    mp = [{"oif": 2, "flags": 0x1, "RTA_GATEWAY": "192.0.2.1"}, {"oif": 3, "flags": 0}]
    r = _msg_route({**base, "RTA_MULTIPATH": mp})
    assert r is not None and r.oifs == (3,) and r.gateway == "192.0.2.1"


def test_preferred_ifaces_with_patterns() -> None:
    t = _topo()
    u = t.evaluate(("wl*",))
    assert u.interfaces == {"wlan0": "usable"}
    t.apply_link(True, _Link(3, "wlan0", 0, "DOWN", 0, 1500, None))
    u = t.evaluate(("wl*",))
    assert not u.usable and u.reason == "no usable interface (wlan0: down)"
    assert t.evaluate(("eth9",)).reason == "no preferred interface present"


# --- the monitor's state machine with a fake prober and an injected topology ---


class FakeProber:
    def __init__(self) -> None:
        self.answers: dict[str, bool] = {}
        self.calls: list[str] = []

    async def __call__(self, host: str, timeout_s: float) -> bool:
        self.calls.append(host)
        await asyncio.sleep(0)
        return self.answers.get(host, False)


async def _started(prober: FakeProber, **kw: Any) -> NetworkMonitor:
    """A running monitor whose picture we set by hand (no netlink, no /proc)."""
    mon = NetworkMonitor(prober=prober, **kw)
    mon._topology = _topo()
    mon._running = True
    mon._wake = asyncio.Event()
    await mon._check()
    return mon


def test_all_some_none_answering() -> None:
    async def body() -> None:
        p = FakeProber()
        p.answers = {"10.0.0.1": True, "10.0.0.2": True}
        mon = await _started(p, check_hosts=["10.0.0.1", "10.0.0.2"])
        assert mon.state is NetworkState.UP and mon.verified
        p.answers["10.0.0.2"] = False
        await mon._check()
        assert mon.state is NetworkState.DEGRADED
        assert mon.reason.endswith("1 of 2 check hosts answered, no answer from 10.0.0.2")
        assert mon.is_up() and mon.is_up  # a property like state; the call form still works
        mon.config = NetworkConfig(
            check_hosts=("10.0.0.1", "10.0.0.2"), degraded_counts_as_up=False
        )
        assert not mon.is_up() and not mon.is_up
        p.answers.clear()
        await mon._check()
        assert not mon.is_up and mon.is_up == False  # noqa: E712
        assert mon.state is NetworkState.DOWN and mon.verified
        await mon.stop()

    asyncio.run(body())


def test_presets_expand_without_duplicates() -> None:
    async def body() -> None:
        p = FakeProber()
        mon = await _started(p, check_hosts=["gateway", "192.0.2.1", "public"])
        assert p.calls == ["192.0.2.1", "fe80::1%wlan0", "8.8.8.8", "1.1.1.1", "8.8.4.4"]
        await mon.stop()

    asyncio.run(body())


def test_every_subscriber_sees_every_change_in_order() -> None:
    async def body() -> None:
        mon = await _started(FakeProber())
        subs = [mon.subscribe() for _ in range(3)]
        states = [NetworkState.DOWN, NetworkState.UP] * 2500
        for s in states:  # faster than anyone reads: queues hold them all
            mon._set_state(s, "test", verified=False)
        assert mon.counters["max_subscriber_backlog"] == len(states)
        await mon.stop()  # ends the iterations after the backlog
        for sub in subs:
            got = [c.state async for c in sub]
            assert got == states
        assert mon.counters["changes"] == len(states) + 1  # + unknown -> up at start

    asyncio.run(body())


def test_wait_for_network_timeout_cancel_and_stop() -> None:
    async def body() -> None:
        mon = await _started(FakeProber(), check_hosts=["10.0.0.9"])
        assert mon.state is NetworkState.DOWN
        with pytest.raises(NetworkTimeout) as info:
            await mon.wait_for_network(timeout=0.05)
        assert isinstance(info.value, asyncio.TimeoutError)
        assert isinstance(info.value, FastpingError)
        assert "still down after 0.05 s" in str(info.value)
        assert not mon._waiters
        w = asyncio.create_task(mon.wait_for_network(timeout=10))
        await asyncio.sleep(0.01)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        assert not mon._waiters
        w = asyncio.create_task(mon.wait_for_network())
        await asyncio.sleep(0.01)
        mon._set_state(NetworkState.DEGRADED, "half", verified=True)
        assert await w is NetworkState.DEGRADED
        mon._set_state(NetworkState.DOWN, "gone", verified=True)
        w = asyncio.create_task(mon.wait_for_network())
        await asyncio.sleep(0.01)
        await mon.stop()
        with pytest.raises(MonitorNotRunning, match="stopped while waiting"):
            await w
        with pytest.raises(MonitorNotRunning, match="start"):
            await mon.wait_for_network()

    asyncio.run(body())


# --- webhook ---


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(500)
        else:
            _Hook.received.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    _Hook.received = []
    _Hook.fail_first = 1
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    finally:
        srv.shutdown()
        srv.server_close()


def test_webhook_posts_each_change_with_retry(hook_server: str) -> None:
    async def body() -> None:
        from fastping.netstate import _Webhook

        mon = await _started(FakeProber(), notify_on_change=hook_server, webhook_timeout=2.0)
        mon._webhook = _Webhook(hook_server, 2.0, 3)
        mon._set_state(NetworkState.DOWN, "cable", verified=False)
        mon._set_state(NetworkState.UP, "back", verified=False)
        await mon.stop()  # waits for delivery (bounded by webhook_timeout)
        assert [(d["previous"], d["state"], d["reason"]) for d in _Hook.received] == [
            ("up", "down", "cable"),
            ("down", "up", "back"),
        ]
        assert set(_Hook.received[0]) >= {"previous", "state", "reason", "interfaces", "time"}
        assert _Hook.received[0]["interfaces"] == {"eth0": "usable", "wlan0": "usable"}

    asyncio.run(body())


def test_dead_webhook_never_blocks_the_monitor() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body() -> None:
        from fastping.netstate import _Webhook

        mon = await _started(FakeProber(), webhook_timeout=0.3)
        hook = _Webhook(f"http://127.0.0.1:{port}/", 0.3, 1)
        mon._webhook = hook
        t0 = time.perf_counter()
        for i in range(50):
            mon._set_state(
                NetworkState.DOWN if i % 2 == 0 else NetworkState.UP, "x", verified=False
            )
        assert time.perf_counter() - t0 < 0.1
        await mon.stop()
        hook._thread.join(2)
        assert hook.sent == 0 and hook.failed == 50  # every one counted, none silently lost

    asyncio.run(body())


# --- TCP fallback against loopback ---


def test_tcp_reachable_open_refused_and_timeout() -> None:
    async def body() -> None:
        srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        assert await tcp_reachable("127.0.0.1", 1.0, ports=[port])
        async with srv:
            pass
        await srv.wait_closed()
        assert await tcp_reachable("127.0.0.1", 1.0, ports=[port])  # refused: host is there
        assert not await tcp_reachable("127.0.0.1", 0.2, ports=[])

    asyncio.run(body())


# --- CLI ---


def test_cli_netstate_json_on_this_host() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastping.cli", "netstate", "--json"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    doc = json.loads(out.stdout)
    assert doc["state"] in ("up", "down") and doc["verified"] is False
    assert out.returncode == (0 if doc["state"] == "up" else 1)
    assert "lo" in doc["interfaces"] and "rx_bytes" in doc["interfaces"]["lo"]


def test_cli_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "fastping.yaml"
    cfg.write_text("network:\n  check_interval: soon\n")
    out = subprocess.run(
        [sys.executable, "-m", "fastping.cli", "netstate", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert out.returncode != 0
    assert "network.check_interval" in out.stderr


def test_state_change_json_shape() -> None:
    ch = StateChange(NetworkState.UP, NetworkState.DOWN, "r", 1.5, {"eth0": "down"})
    assert ch.to_dict() == {
        "state": "down",
        "previous": "up",
        "reason": "r",
        "time": 1.5,
        "verified": False,
        "interfaces": {"eth0": "down"},
    }
