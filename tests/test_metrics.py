"""Prometheus metrics: valid exposition (promtool), counters equal to what the
engine recorded (replies, timeouts, unreachables, send errors in namespaces),
bounded labels, clear errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Netns, child_env, fastping_cmd
from fastping.engine import MonitoringEngine
from fastping.errors import ConfigError, SocketError
from fastping.metrics import (
    DEFAULT_BUCKETS_S,
    METRIC_NAMES,
    OUTCOMES,
    MetricsCollector,
    parse_listen,
    serve_metrics,
)
from fastping.results import Outcome, ProbeResult

HERE = Path(__file__).resolve().parent
Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def by_host(smp: dict[Key, float], name: str, **match: str) -> dict[str, float]:
    out = {}
    for (n, labels), v in smp.items():
        d = dict(labels)
        if n == name and all(d.get(k) == val for k, val in match.items()):
            out[d["host"]] = v
    return out


def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: apt-get install prometheus (.ci/run installs it)")
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    # exit 0: valid; lint problems are printed and fail too (exit 3)
    assert r.returncode == 0, r.stdout + r.stderr


def _engine(*hosts: str, labels: dict[str, dict[str, str]] | None = None) -> MonitoringEngine:
    e = MonitoringEngine()
    for h in hosts:
        e.add_target(h, labels=(labels or {}).get(h))
    return e


# ---- without privileges ---------------------------------------------------------


def test_buckets_are_smokeping_probers() -> None:
    # smokeping_prober main.go: prometheus.ExponentialBuckets(0.00005, 2, 20)
    expect = "5e-05,0.0001,0.0002,0.0004,0.0008,0.0016,0.0032,0.0064,0.0128,0.0256,0.0512,"
    expect += "0.1024,0.2048,0.4096,0.8192,1.6384,3.2768,6.5536,13.1072,26.2144"
    e = _engine("127.0.0.1")
    c = MetricsCollector(e)
    assert ",".join(c._les[:-1]) == expect and len(DEFAULT_BUCKETS_S) == 20


def test_counts_buckets_labels_and_valid_exposition() -> None:
    labels = {"127.0.0.1": {"site": 'lab "q" \\ x\ny'}, "::1": {"role": "v6"}}
    e = _engine("127.0.0.1", "::1", "127.0.0.3", labels=labels)
    c = MetricsCollector(e, source="10.0.0.1", tos=16, observe_all=True)  # results by hand
    assert c.label_names == ("ip", "host", "source", "tos", "role", "site")
    rs = [
        ProbeResult("127.0.0.1", "127.0.0.1", 1, Outcome.REPLY, 0.07, 64),  # 70 us
        ProbeResult("127.0.0.1", "127.0.0.1", 2, Outcome.REPLY, 0.2, 63),  # 200 us: le=0.0002
        ProbeResult("127.0.0.1", "127.0.0.1", 2, Outcome.DUPLICATE, 0.3, 63),
        ProbeResult("127.0.0.1", "127.0.0.1", 3, Outcome.LATE, 1500.0, 63),
        ProbeResult("::1", "::1", 1, Outcome.TIMEOUT),
        ProbeResult("::1", "::1", 2, Outcome.UNREACHABLE, None, 64, 1, 3, "::2"),
        ProbeResult("::1", "::1", 3, Outcome.TIME_EXCEEDED, None, 64, 11, 0, "::3"),
        ProbeResult("::1", "::1", -1, Outcome.SEND_ERROR, errno=101),
        ProbeResult("::1", "::1", 4, Outcome.LOCAL_DOWN),  # in flight when we went down
        ProbeResult("::1", "::1", -1, Outcome.LOCAL_DOWN),  # never sent
        ProbeResult("127.0.0.3", None, -1, Outcome.RESOLVE_ERROR),
        ProbeResult("not-watched", "10.9.9.9", 1, Outcome.REPLY, 1.0, 1),  # ignored
    ]
    c.observe(rs)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    text = c.render().decode()
    promtool_check(text)
    smp = samples(text)
    # fast path == generic path (but for the clocks, which tick between the two reads)
    clocks = ("fastping_network_state_seconds_total", "fastping_guard_throttled_seconds_total")
    generic = samples(generate_latest(reg).decode())
    assert {k: v for k, v in smp.items() if k[0] not in clocks} == {
        k: v for k, v in generic.items() if k[0] not in clocks
    }
    assert by_host(smp, "smokeping_requests_total") == {"127.0.0.1": 2, "::1": 4, "127.0.0.3": 0}
    assert by_host(smp, "smokeping_response_duration_seconds_count")["127.0.0.1"] == 2
    assert by_host(smp, "smokeping_response_duration_seconds_bucket", le="0.0001") == {
        "127.0.0.1": 1, "::1": 0, "127.0.0.3": 0}  # fmt: skip
    assert by_host(smp, "smokeping_response_duration_seconds_bucket", le="0.0002")[
        "127.0.0.1"] == 2  # fmt: skip
    assert by_host(smp, "smokeping_response_duration_seconds_sum")["127.0.0.1"] == pytest.approx(
        0.00027
    )
    assert by_host(smp, "smokeping_response_ttl")["127.0.0.1"] == 63
    assert by_host(smp, "smokeping_response_duplicates_total")["127.0.0.1"] == 1
    assert by_host(smp, "smokeping_send_errors_total")["::1"] == 1
    for o in OUTCOMES:
        got = by_host(smp, "fastping_results_total", outcome=o.value)
        want = {h: sum(1 for r in rs[:-1] if r.target == h and r.outcome is o)
                for h in ("127.0.0.1", "::1", "127.0.0.3")}  # fmt: skip
        assert got == want, o
    # labels: configured values (escaped), smokeping_prober's base labels; nothing from packets
    lab = {dict(k[1])["host"]: dict(k[1]) for k in smp if k[0] == "smokeping_requests_total"}
    assert lab["127.0.0.1"] == {"ip": "127.0.0.1", "host": "127.0.0.1", "source": "10.0.0.1",
                                "tos": "16", "site": "lab \"q\" \\ x\ny", "role": ""}  # fmt: skip
    assert lab["127.0.0.3"]["ip"] == "127.0.0.3"  # a result without address keeps the series
    assert not any("10.9.9.9" in str(k) or "::2" in str(k) for k in smp)
    names = {k[0] for k in smp}
    for n in METRIC_NAMES:
        if n not in ("fastping_guard_cpu_percent", "fastping_guard_rss_bytes"):
            assert any(s == n or s.startswith(n + "_") for s in names), n
    assert smp[("fastping_network_state", frozenset({("state", "unknown")}))] == 1


def test_series_moves_with_the_address_and_removed_targets_go() -> None:
    e = _engine("127.0.0.1", "127.0.0.2")
    c = MetricsCollector(e, observe_all=True)
    c.observe([ProbeResult("127.0.0.1", "127.0.0.1", 1, Outcome.TIMEOUT)])
    t = e._targets["127.0.0.1"]
    t.address = "127.0.0.9"  # as if re-resolved
    c.observe([ProbeResult("127.0.0.1", "127.0.0.9", 2, Outcome.TIMEOUT)])
    e.remove_target("127.0.0.2")
    smp = samples(c.render().decode())
    req = {dict(k[1])["ip"]: v for k, v in smp.items() if k[0] == "smokeping_requests_total"}
    assert req == {"127.0.0.9": 1}  # one series per target, at its current address
    c.observe([])  # the loop thread prunes what a scrape found gone
    assert list(c._series) == ["127.0.0.1"]


def test_bad_labels_and_buckets_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="cannot be a Prometheus label"):
        MetricsCollector(_engine("127.0.0.1", labels={"127.0.0.1": {"my-label": "x"}}))
    with pytest.raises(ConfigError, match="cannot be a Prometheus label"):
        MetricsCollector(_engine("127.0.0.1", labels={"127.0.0.1": {"host": "x"}}))
    with pytest.raises(ConfigError, match="increasing positive"):
        MetricsCollector(_engine("127.0.0.1"), buckets_s=[0.1, 0.01])


def test_a_label_not_known_at_start_is_counted_not_exported() -> None:
    e = _engine("127.0.0.1")
    c = MetricsCollector(e, observe_all=True)
    e.add_target("127.0.0.2", labels={"late": "1"})
    c.observe([ProbeResult("127.0.0.2", "127.0.0.2", 1, Outcome.REPLY, 0.1, 64)])
    smp = samples(c.render().decode())
    assert smp[("fastping_metrics_ignored_labels_total", frozenset())] == 1
    assert all("late" not in dict(k[1]) for k in smp)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("127.0.0.1:9374", ("127.0.0.1", 9374)),
        ("[::1]:9000", ("::1", 9000)),
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9374", ("0.0.0.0", 9374)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text: str, expect: tuple[str, int]) -> None:
    assert parse_listen(text) == expect


@pytest.mark.parametrize("text", [":9374", "::1", "127.0.0.1", "127.0.0.1:99999", "h:x"])
def test_parse_listen_refuses_ambiguity(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(text)


def test_endpoint_serves_gzip_404_and_refuses_a_busy_port() -> None:
    e = _engine("127.0.0.1")
    with serve_metrics(e, "127.0.0.1:0") as srv:
        import gzip

        req = urllib.request.Request(srv.url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = gzip.decompress(r.read()).decode()
        assert 'smokeping_requests_total{ip="127.0.0.1",host="127.0.0.1"' in text
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(srv.url.replace("/metrics", "/nope"), timeout=10)
        assert ei.value.code == 404
        with pytest.raises(SocketError, match="choose another"):
            serve_metrics(e, f"127.0.0.1:{srv.port}")
        assert srv.scrapes == 1
    assert e._observers == []  # closing detaches


def test_observer_failure_is_counted_and_probing_goes_on() -> None:
    # the engine hook itself: a failing observer is counted, later observers still run
    e = _engine("127.0.0.1")
    seen: list[int] = []

    def bad(rs: Any) -> None:
        raise RuntimeError("boom")

    e.add_observer(bad)
    e.add_observer(lambda rs: seen.append(len(rs)))
    e._out.append(ProbeResult("127.0.0.1", "127.0.0.1", 1, Outcome.REPLY, 0.1, 64))
    e._flush_out()
    assert seen == [1] and e.stats()["observer_errors"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--metrics", "::1"], "HOST:PORT"),
        (["--metrics", ":9374"], "0.0.0.0:9374"),
        (["--shard", "2/2"], "needs 0 <= I < N"),
    ],
)
def test_monitor_rejects_bad_metrics_and_shard(args: list[str], msg: str, tmp_path: Path) -> None:
    r = subprocess.run(
        fastping_cmd("monitor", "127.0.0.1", *args, "--duration", "1", "--db",
                     str(tmp_path / "x.db")),
        capture_output=True, text=True, env=child_env(), timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert not (tmp_path / "x.db").exists()  # refused before doing anything


# ---- with privileges: real sockets, real namespaces --------------------------------


@pytest.fixture
def router_netns(netns: Netns) -> Iterator[Netns]:
    """conftest.Netns plus two addresses on the router's lo that drop / reject
    echo requests (nftables), and an `unreachable` route in the host namespace."""
    netns.exec_r("ip", "addr", "add", "10.202.0.5/32", "dev", "lo")
    netns.exec_r("ip", "addr", "add", "10.202.0.6/32", "dev", "lo")
    netns.exec_r(
        "nft",
        "add table inet fp7; "
        "add chain inet fp7 in { type filter hook input priority 0; policy accept; }; "
        "add rule inet fp7 in ip daddr 10.202.0.5 icmp type echo-request drop; "
        "add rule inet fp7 in ip daddr 10.202.0.6 icmp type echo-request "
        "reject with icmp type host-unreachable",
    )
    netns.exec_h("ip", "route", "add", "unreachable", "10.203.0.0/24")
    yield netns  # conftest's fixture deletes both namespaces (with their nft tables)


@pytest.mark.skipif(not ROOT, reason="needs root: raw sockets and network namespaces")
def test_counters_match_what_the_engine_recorded(router_netns: Netns, tmp_path: Path) -> None:
    r = router_netns.exec_h(
        sys.executable, str(HERE / "netns_metrics.py"), "--db", str(tmp_path / "m.db"),
        "--duration", "2.0", timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    truth: dict[str, dict[str, int]] = doc["truth"]
    stats = doc["stats"]
    assert doc["sub_dropped"] == 0 and doc["scrapes"] == 2
    for key in ("during", "after"):
        promtool_check(doc[key])
    smp = samples(doc["after"])
    # the endpoint's fast text and prometheus_client's generic path agree per target
    # (agent-wide gauges move between the two reads, so those are not compared)
    per_target = {
        "smokeping_requests_total",
        "fastping_results_total",
        "smokeping_response_duration_seconds_count",
        "smokeping_send_errors_total",
    }
    reg = samples(doc["registry"])
    assert {k: v for k, v in smp.items() if k[0] in per_target} == {
        k: v for k, v in reg.items() if k[0] in per_target
    }
    hosts = ["127.0.0.1", "127.0.0.2", "10.201.0.1", "10.202.0.5", "10.202.0.6", "10.203.0.7"]
    for o in OUTCOMES:
        got = by_host(smp, "fastping_results_total", outcome=o.value)
        assert got == {h: truth.get(h, {}).get(o.value, 0) for h in hosts}, o
    # the scenario happened: each kind of outcome at its own target, ~20 probes each
    assert truth["127.0.0.1"]["reply"] >= 15 and truth["10.201.0.1"]["reply"] >= 15
    assert truth["10.202.0.5"].get("timeout", 0) >= 12 and "reply" not in truth["10.202.0.5"]
    assert truth["10.202.0.6"].get("unreachable", 0) >= 15
    assert truth["10.203.0.7"].get("send_error", 0) >= 15
    req = by_host(smp, "smokeping_requests_total")
    final = ("reply", "timeout", "unreachable", "time_exceeded")
    assert req == {h: sum(truth.get(h, {}).get(k, 0) for k in final) for h in hosts}
    assert sum(req.values()) == stats["sent"]  # every probe sent has its outcome counted
    assert smp[("fastping_probes_sent_total", frozenset())] == stats["sent"]
    assert by_host(smp, "smokeping_response_duration_seconds_count") == {
        h: truth.get(h, {}).get("reply", 0) for h in hosts
    }
    assert by_host(smp, "smokeping_send_errors_total")["10.203.0.7"] == truth["10.203.0.7"][
        "send_error"]  # fmt: skip
    ttl = by_host(smp, "smokeping_response_ttl")
    assert ttl["127.0.0.1"] == 64 and ttl["10.201.0.1"] == 64 and ttl["10.202.0.5"] == 0
    labels = {dict(k[1])["host"]: dict(k[1]) for k in smp if k[0] == "smokeping_requests_total"}
    assert labels["127.0.0.1"]["site"] == "lab" and labels["10.201.0.1"]["role"] == "router"
    assert smp[("fastping_shard", frozenset({("shard", "0/1")}))] == 1
    assert smp[("fastping_socket_receive_drops_total", frozenset())] == stats["socket"]["rx_drops"]
    # mid-run the counters were already moving
    mid = by_host(samples(doc["during"]), "fastping_results_total", outcome="reply")
    assert 0 < mid["127.0.0.1"] < truth["127.0.0.1"]["reply"]


@pytest.mark.skipif(not ROOT, reason="needs root for raw sockets")
def test_monitor_command_serves_metrics_while_it_runs(tmp_path: Path) -> None:
    port = _free_port()
    p = subprocess.Popen(
        fastping_cmd("monitor", "127.0.0.1", "127.0.0.2", "::1", "--interval", "0.1",
                     "--duration", "4", "--db", str(tmp_path / "c.db"),
                     "--metrics", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        text = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                if "fastping_results_total" in text and 'outcome="reply"} 0' not in text:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        promtool_check(text)
        assert set(by_host(samples(text), "smokeping_requests_total")) == {
            "127.0.0.1", "127.0.0.2", "::1"}  # fmt: skip
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["metrics"] == f"http://127.0.0.1:{port}/metrics"
    assert summary["metrics_scrapes"] >= 1
    assert "serving Prometheus metrics" in err
