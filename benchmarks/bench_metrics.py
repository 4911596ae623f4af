"""Cost of the metrics path: 10,000 loopback targets at a 1 s interval.

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_metrics.py                 # ~2 min
    PYTHONPATH=src python benchmarks/bench_metrics.py --duration 10 --targets 2000
    PYTHONPATH=src python -m pytest -q -s benchmarks/bench_metrics.py -m slow

In one process, one after the other (twice, alternating, so drift shows), the same
engine + SQLite store run for ``--duration`` seconds:

* ``off``: no metrics;
* ``collector``: fastping's way, as ``fastping monitor --metrics`` runs it: the
  core counts outcomes and keeps RTT buckets per slot, the engine stays in its
  quiet log mode, and ``MetricsCollector`` reads those counters only when scraped;
  the endpoint is served and scraped every 5 s during the run, as a busy
  Prometheus would;
* ``prometheus_objects``: the usual prometheus_client way, for comparison: an
  observer that calls ``Histogram.labels(...).observe()`` / ``Counter.labels(...)
  .inc()`` per result (what smokeping_prober does per packet in Go).

Reported: process CPU share of one core for each run, the time spent inside the
observer per result for ``prometheus_objects`` (measured directly, so it does not
drown in the run's noise), and the scrape: reading the counters of every target
(``refresh_s``), ``render()`` time, HTTP GET time with and without gzip, bytes and
lines, for all targets; prometheus_client's generic ``generate_latest`` on the same
registry for comparison. Targets are 127.3.0.1 ... (127.3.0.0/18): loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import ipaddress
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

FIRST = int(ipaddress.IPv4Address("127.3.0.1"))
SCRAPE_EVERY_S = 5.0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class _Timed:
    """Wraps an observer and adds up the CPU time spent in it (thread CPU time: wall
    time would also count the store's writer thread holding the GIL meanwhile)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.s = 0.0
        self.results = 0

    def __call__(self, results: Sequence[Any]) -> None:
        t = time.thread_time()
        self.fn(results)
        self.s += time.thread_time() - t
        self.results += len(results)


def _prometheus_objects_observer(engine: Any) -> Any:
    """Per-result prometheus_client objects (the comparison, not fastping's way)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from fastping.metrics import DEFAULT_BUCKETS_S
    from fastping.results import Outcome

    reg = CollectorRegistry()
    names = ["ip", "host", "source", "tos"]
    hist = Histogram("smokeping_response_duration_seconds", "rtt", names,
                     buckets=DEFAULT_BUCKETS_S, registry=reg)  # fmt: skip
    ttl = Gauge("smokeping_response_ttl", "ttl", names, registry=reg)
    res = Counter("fastping_results", "results", [*names, "outcome"], registry=reg)
    reply = Outcome.REPLY

    def observe(results: Sequence[Any]) -> None:
        for r in results:
            lv = (r.address or "", r.target, "", "0")
            if r.outcome is reply:
                hist.labels(*lv).observe(r.rtt_ms / 1000.0)
                ttl.labels(*lv).set(r.ttl or 0)
            res.labels(*lv, r.outcome.value).inc()

    return observe, reg


def _get(url: str, gz: bool) -> tuple[float, int]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gz else {})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - t, len(body)


async def run_once(n: int, duration_s: float, mode: str, db: Path) -> dict[str, Any]:
    from prometheus_client.exposition import generate_latest

    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.metrics import MetricsCollector, serve_metrics
    from fastping.store import ResultStore

    store = ResultStore(db)
    engine = MonitoringEngine(
        store=store, interval_s=1.0, timeout_s=1.0, guard=ResourceGuard(None, None)
    )
    for i in range(n):
        engine.add_target(str(ipaddress.IPv4Address(FIRST + i)))
    timed: _Timed | None = None
    server = None
    scrapes: list[float] = []
    if mode == "collector":
        server = serve_metrics(engine, "127.0.0.1:0")
    elif mode == "prometheus_objects":
        fn, _reg = _prometheus_objects_observer(engine)
        timed = _Timed(fn)
        engine.add_observer(timed)

    async def scraper() -> None:
        assert server is not None
        while True:
            await asyncio.sleep(SCRAPE_EVERY_S)
            dt, _ = await asyncio.to_thread(_get, server.url, True)
            scrapes.append(dt)

    await store.start()
    task = asyncio.create_task(scraper()) if server is not None else None
    cpu0, wall0 = _cpu_s(), time.monotonic()
    await engine.run(duration_s, handle_signals=False)
    wall = time.monotonic() - wall0
    cpu = _cpu_s() - cpu0
    if task is not None:
        task.cancel()
    await store.close()
    st = engine.stats()
    out: dict[str, Any] = {
        "mode": mode,
        "targets": n,
        "wall_s": round(wall, 2),
        "sent": st["sent"],
        "received": st["received"],
        "cpu_share_of_one_core": round(cpu / wall, 4),
        "loop_lag_max_s": st["loop_lag_s"]["max"],
    }
    if timed is not None:
        out["observer_results"] = timed.results
        out["observer_us_per_result"] = round(1e6 * timed.s / max(1, timed.results), 3)
        out["observer_share_of_one_core"] = round(timed.s / wall, 5)
    if server is not None:
        out["scrapes_during_run"] = len(scrapes)
        out["scrape_http_gzip_s_during_run"] = [round(s, 3) for s in scrapes]
        coll: MetricsCollector = server.collector
        t = time.perf_counter()
        coll._refresh()
        out["refresh_s"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        body = coll.render()
        out["render_s"] = round(time.perf_counter() - t, 3)
        out["exposition_bytes"] = len(body)
        out["exposition_lines"] = body.count(b"\n")
        t = time.perf_counter()
        out["gzip_bytes"] = len(gzip.compress(body, 1))
        out["gzip_s"] = round(time.perf_counter() - t, 3)
        out["http_get_plain_s"], _ = _get(server.url, False)
        out["http_get_gzip_s"], out["http_gzip_body_bytes"] = _get(server.url, True)
        out["http_get_plain_s"] = round(out["http_get_plain_s"], 3)
        out["http_get_gzip_s"] = round(out["http_get_gzip_s"], 3)
        t = time.perf_counter()
        generate_latest(server.registry)
        out["prometheus_client_generate_latest_s"] = round(time.perf_counter() - t, 3)
        server.close()
    return out


def bench(n: int, duration_s: float, rounds: int = 2) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            for mode in ("off", "collector", "prometheus_objects"):
                db = Path(d) / f"{mode}-{r}.db"
                runs.append(asyncio.run(run_once(n, duration_s, mode, db)))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def mean(mode: str, key: str) -> float:
        v = [x[key] for x in runs if x["mode"] == mode]
        return round(sum(v) / len(v), 4)

    return {
        "runs": runs,
        "summary": {
            "cpu_share_off": mean("off", "cpu_share_of_one_core"),
            "cpu_share_collector": mean("collector", "cpu_share_of_one_core"),
            "cpu_share_prometheus_objects": mean("prometheus_objects", "cpu_share_of_one_core"),
            "observer_us_per_result_prometheus_objects": mean(
                "prometheus_objects", "observer_us_per_result"
            ),
            "refresh_s": mean("collector", "refresh_s"),
            "render_s": mean("collector", "render_s"),
            "http_get_gzip_s": mean("collector", "http_get_gzip_s"),
            "prometheus_client_generate_latest_s": mean(
                "collector", "prometheus_client_generate_latest_s"
            ),
        },
    }


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for raw sockets (loopback only)")
def test_metrics_cost_10k_targets() -> None:
    out = bench(10_000, 20.0)
    print(json.dumps(out["summary"], indent=2))
    s = out["summary"]
    # reading the core's counters at scrape time must cost less than objects per probe
    assert s["cpu_share_collector"] < s["cpu_share_prometheus_objects"]
    assert s["render_s"] < s["prometheus_client_generate_latest_s"]
    for r in out["runs"]:
        assert r["sent"] == r["received"]  # loopback: nothing lost, metrics or not


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    if not 1 <= a.targets <= 16_383:
        ap.error("--targets must be 1..16383 (127.3.0.0/18, loopback only)")
    out = bench(a.targets, a.duration, a.rounds)
    print(json.dumps(out["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
