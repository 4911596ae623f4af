"""Metrics read from the core at scrape time (issue 16): with metrics on and nobody
else wanting every result, the engine keeps its sockets in the quiet log mode, and
each scrape still agrees with what the store recorded, probe for probe, through an
outage of our own network, across stop(), and with a target whose address changes.
Real sockets, real SQLite, loopback and namespaces the tests make."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
from tests.test_metrics import (
    by_host,
    promtool_check,
    router_netns,  # noqa: F401 (a fixture)
    samples,
)

from conftest import ROOT, Netns
from fastping.engine import N_OUTCOME_CODES, MonitoringEngine
from fastping.guard import ResourceGuard
from fastping.metrics import OUTCOMES, MetricsCollector
from fastping.results import Outcome
from fastping.store import ResultStore

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root: raw sockets and namespaces")
HERE = Path(__file__).resolve().parent
HOSTS = ["127.0.0.1", "127.0.0.2", "10.201.0.1", "10.202.0.5", "10.202.0.6", "10.203.0.7"]


def test_quiet_engine_scrapes_what_the_store_recorded(
    router_netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    r = router_netns.exec_h(
        sys.executable, str(HERE / "netns_metrics_quiet.py"), "--db", str(tmp_path / "q.db"),
        "--duration", "3.0", timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    # metrics on, no subscriber: quiet (1) while the network is up, off (0) while down
    assert doc["modes"] == {"before": [1], "down": [0], "after": [1]}, doc["modes"]
    truth = doc["truth"]
    for key in ("during", "after"):
        promtool_check(doc[key])
    smp = samples(doc["after"])
    for o in OUTCOMES:
        got = by_host(smp, "fastping_results_total", outcome=o.value)
        assert got == {h: truth.get(h, {}).get(o.value, 0) for h in HOSTS}, o
    # the outage happened and shows as ours: probes in flight (the core had counted
    # them as timeouts) and probes not sent are local_down, not loss
    assert truth["10.202.0.5"].get("sent_down", 0) >= 1, truth
    assert all(truth[h].get("local_down", 0) >= 3 for h in HOSTS), truth
    req = by_host(smp, "smokeping_requests_total")
    final = ("reply", "timeout", "unreachable", "time_exceeded", "sent_down")
    assert req == {h: sum(truth[h].get(k, 0) for k in final) for h in HOSTS}
    count = by_host(smp, "smokeping_response_duration_seconds_count")
    assert count == {h: truth[h].get("reply", 0) for h in HOSTS}
    rtt_sum = by_host(smp, "smokeping_response_duration_seconds_sum")
    for h in HOSTS:  # the core's RTT sum against the stored per-probe RTTs
        assert rtt_sum[h] == pytest.approx(doc["rtt_ms"].get(h, 0.0) / 1000, abs=1e-6), h
    ttl = by_host(smp, "smokeping_response_ttl")
    assert ttl["127.0.0.1"] == 64 and ttl["10.201.0.1"] == 64 and ttl["10.202.0.5"] == 0
    mid = by_host(samples(doc["during"]), "fastping_results_total", outcome="reply")
    assert 0 < mid["127.0.0.1"] < truth["127.0.0.1"]["reply"]


async def _run(engine: MonitoringEngine, store: ResultStore, seconds: float) -> None:
    await store.start()
    await engine.run(seconds, handle_signals=False)
    await store.close()


def test_counters_survive_stop_and_restart_from_zero_at_a_new_address(tmp_path: Path) -> None:
    """stop() gives the slots back: a scrape after it says what they had counted; a
    second run goes on from there; a new address is a new series from zero."""
    addr = {"value": "127.0.0.1"}

    async def resolver(host: str, family: int) -> list[tuple[int, str]]:
        return [(socket.AF_INET, addr["value"])]  # names resolve without DNS

    store = ResultStore(tmp_path / "s.db")
    engine = MonitoringEngine(
        interval_s=0.05, timeout_s=0.2, mode="raw", guard=ResourceGuard(None, None),
        store=store, resolver=resolver, resolve_interval_s=0.2,
    )  # fmt: skip
    engine.add_target("loop.test")
    engine.add_target("::1")
    c = MetricsCollector(engine)
    asyncio.run(_run(engine, store, 0.8))
    first = by_host(samples(c.render().decode()), "fastping_results_total", outcome="reply")
    assert first["loop.test"] >= 10 and first["::1"] >= 10
    sent = engine.stats()["sent"]
    assert sum(first.values()) == sent  # loopback answers every probe
    rows = {x.host: x for x in engine.counters()}
    assert len(rows["::1"].counts) == N_OUTCOME_CODES
    assert sum(rows["::1"].buckets or ()) == first["::1"]  # the buckets were kept too
    store = ResultStore(tmp_path / "s.db")
    engine.store = store
    asyncio.run(_run(engine, store, 0.6))
    second = samples(c.render().decode())
    replies = by_host(second, "fastping_results_total", outcome="reply")
    assert replies["::1"] > first["::1"]  # went on from the first run's count
    assert replies["::1"] + replies["loop.test"] == engine.stats()["sent"]
    addr["value"] = "127.0.0.2"  # re-resolved in the next run: a new series
    store = ResultStore(tmp_path / "s.db")
    engine.store = store
    asyncio.run(_run(engine, store, 0.8))
    third = samples(c.render().decode())
    ips = {
        dict(k[1])["ip"]: v
        for k, v in third.items()
        if k[0] == "fastping_results_total"
        and dict(k[1]).get("outcome") == "reply"
        and dict(k[1])["host"] == "loop.test"
    }
    assert list(ips) == ["127.0.0.2"], ips  # one series per target, at its address
    assert 0 < ips["127.0.0.2"] < replies["loop.test"] + 20
    mine = [x for x in store.recent("loop.test", 100_000) if x.address == "127.0.0.2"]
    assert ips["127.0.0.2"] == sum(1 for x in mine if x.outcome is Outcome.REPLY)


def test_two_collectors_with_other_buckets_count_results_themselves() -> None:
    """One set of per-slot buckets per engine: a second collector asking for others
    counts every result as an observer (and the engine returns results for it)."""
    engine = MonitoringEngine(["127.0.0.1"], interval_s=0.05, mode="raw",
                              guard=ResourceGuard(None, None))  # fmt: skip
    a = MetricsCollector(engine)
    b = MetricsCollector(engine, buckets_s=[0.001, 0.01])
    assert not a._observe_all and b._observe_all
    asyncio.run(engine.run(0.5, handle_signals=False))
    ra = by_host(samples(a.render().decode()), "smokeping_response_duration_seconds_count")
    rb = by_host(samples(b.render().decode()), "smokeping_response_duration_seconds_count")
    assert ra == rb and ra["127.0.0.1"] == engine.stats()["received"] >= 5
    b.detach()
    a.detach()
    assert engine._want_all is False and engine._want_kinds == frozenset()


def test_expo_lines_writes_what_python_would_and_refuses_bad_rows() -> None:
    from fastping._pipeline import expo_lines

    heads = [b'm{a="1"', b'm{a="2"']
    tails = [b',le="1"} ', b',le="+Inf"} ']
    rows = [[3, 4], [0, 2**62]]
    want = "".join(
        f"{h.decode()}{t.decode()}{v}\n"
        for h, r in zip(heads, rows, strict=True)
        for t, v in zip(tails, r, strict=False)
    )
    assert expo_lines(heads, tails, rows).decode() == want
    cum = expo_lines(heads, tails, rows, True, [b"s1\n", b"s2\n"]).decode()
    assert cum.splitlines() == [
        'm{a="1",le="1"} 3', 'm{a="1",le="+Inf"} 7', "s1",
        'm{a="2",le="1"} 0', f'm{{a="2",le="+Inf"}} {2**62}', "s2",
    ]  # fmt: skip
    assert expo_lines([b"x{"], [b"} "], [[-5]]) == b"x{} -5\n"
    assert expo_lines([b"x{"], [b"} "], [[]]) == b""  # a short row writes what it has
    with pytest.raises(ValueError, match="row 0 has 3 values for 2 tails"):
        expo_lines(heads[:1], tails, [[1, 2, 3]])
    with pytest.raises(ValueError, match="give one each"):
        expo_lines(heads, tails, rows[:1])
    with pytest.raises(TypeError, match="not bytes"):
        expo_lines(heads, ["} "], [[1], [2]])  # type: ignore[list-item]
    with pytest.raises(OverflowError):
        expo_lines([b"x{"], [b"} "], [[2**70]])
