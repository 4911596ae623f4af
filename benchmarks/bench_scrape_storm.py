"""Scrape storm (issue #14 row 9): 10,000 loopback targets at a 1 s interval, with
the metrics endpoint hit by 200 concurrent scrapers for the whole storm window.

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_scrape_storm.py              # ~2 min
    PYTHONPATH=src python benchmarks/bench_scrape_storm.py --targets 2000 --storm 10

Three variants, each in a fresh process (peak RSS is per process), one after the
other on the same machine:

* ``quiet``: the endpoint served, scraped by nobody (the reference);
* ``storm``: 200 scrapers at once, each scraping again as soon as it has its answer;
* ``storm_uncached``: the same storm against the endpoint as it was before the fix
  (a render per scrape, a thread per connection, backlog 5), for comparison.

The scrapers run in a separate process (their threads must not share the engine's
GIL). Reported per variant: probes sent during the storm window against the
schedule (targets x seconds / interval), event-loop lag p50/p99/max measured by a
10 ms ticker in the engine's loop, peak RSS (VmHWM), scrapes answered and failed.
Targets are 127.4.0.1 ... (127.4.0.0/18): loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FIRST = int(ipaddress.IPv4Address("127.4.0.1"))
SCRAPERS = 200

SCRAPER = r"""
import sys, threading, time, urllib.request
url, n, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = [0] * n; bad = [0] * n; end = time.monotonic() + dur
def run(i):
    while time.monotonic() < end:
        try:
            req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
            ok[i] += 1
        except OSError:
            bad[i] += 1
            time.sleep(0.05)
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sum(ok), sum(bad))
"""


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def variant(name: str, n: int, warm_s: float, storm_s: float) -> dict[str, Any]:
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.metrics import MetricsServer, serve_metrics
    from fastping.store import ResultStore

    if name == "storm_uncached":
        # the endpoint as it was: no cache, a thread per connection, backlog 5
        MetricsServer.CACHE_S = 0.0
        MetricsServer.MAX_HANDLERS = 100_000
    db = Path(tempfile.mkdtemp(prefix="fp-storm-")) / "fp.db"
    store = ResultStore(db)
    engine = MonitoringEngine(
        store=store, interval_s=1.0, timeout_s=1.0, guard=ResourceGuard(None, None)
    )
    for i in range(n):
        engine.add_target(str(ipaddress.IPv4Address(FIRST + i)))
    server = serve_metrics(engine, "127.0.0.1:0")
    if name == "storm_uncached":
        server._httpd.socket.listen(5)
    await store.start()
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    run = asyncio.create_task(engine.run(None, handle_signals=False))
    await asyncio.sleep(warm_s)
    tick = asyncio.create_task(ticker())
    sent0 = engine.stats()["sent"]
    t0 = time.monotonic()
    scrape = None
    if name != "quiet":
        scrape = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRAPER, server.url, str(SCRAPERS), str(storm_s),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
    await asyncio.sleep(storm_s)
    sent = engine.stats()["sent"] - sent0
    window = time.monotonic() - t0
    ok = bad = 0
    if scrape is not None:
        out, _ = await scrape.communicate()
        ok, bad = (int(x) for x in out.split())
    tick.cancel()
    engine.request_stop()
    await run
    server.close()
    await store.close()
    return {
        "variant": name,
        "targets": n,
        "window_s": round(window, 2),
        "sent_of_schedule": round(sent / (n * window / 1.0), 4),
        "loop_lag_p50_ms": round(_pct(lags, 0.50) * 1000, 2),
        "loop_lag_p99_ms": round(_pct(lags, 0.99) * 1000, 2),
        "loop_lag_max_ms": round(max(lags) * 1000, 2) if lags else None,
        "peak_rss_mb": round(_hwm_mb(), 1),
        "scrapes_ok": ok,
        "scrapes_failed": bad,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--warm", type=float, default=8.0)
    ap.add_argument("--storm", type=float, default=30.0)
    ap.add_argument("--variant", choices=("quiet", "storm", "storm_uncached"))
    a = ap.parse_args(argv)
    if not 1 <= a.targets <= 16_383:
        ap.error("--targets must be 1..16383 (127.4.0.0/18, loopback only)")
    if a.variant:
        print(json.dumps(asyncio.run(variant(a.variant, a.targets, a.warm, a.storm))))
        return 0
    for v in ("quiet", "storm", "storm_uncached"):
        r = subprocess.run(
            [sys.executable, __file__, "--variant", v, "--targets", str(a.targets),
             "--warm", str(a.warm), "--storm", str(a.storm)],
            capture_output=True, text=True, env=dict(os.environ),
        )  # fmt: skip
        print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
