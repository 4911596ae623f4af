"""Metrics on and off, this tree against another checkout, in the same run (issue 16).

    git worktree add --detach /tmp/before ec3bcff       # the tree to compare with
    (cd /tmp/before && python3 setup.py build_ext --inplace -q)
    python3 setup.py build_ext --inplace -q
    PYTHONPATH=src python3 benchmarks/bench_metrics_ab.py --before /tmp/before [--rounds 3]

Each run is a child process of its tree (PYTHONPATH=<tree>/src): an engine probing
10,000 loopback targets (127.3.0.0/18) every second for ``--duration`` seconds with a
SQLite store, and with metrics on the endpoint served and scraped (gzip) every 5 s,
as ``fastping monitor --metrics`` runs and a busy Prometheus scrapes. Rounds
alternate trees and modes (before off, before on, this off, this on), so drift hits
both; reported: each run's process CPU share of one core, and the means.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, ipaddress, json, os, sys, tempfile, time, urllib.request
from pathlib import Path

FIRST = int(ipaddress.IPv4Address("127.3.0.1"))


def cpu():
    t = os.times()
    return t.user + t.system


def get(url):
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return len(r.read())


async def run(n, duration_s, on, db):
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.metrics import serve_metrics
    from fastping.store import ResultStore

    store = ResultStore(db)
    engine = MonitoringEngine(
        store=store, interval_s=1.0, timeout_s=1.0, guard=ResourceGuard(None, None)
    )
    for i in range(n):
        engine.add_target(str(ipaddress.IPv4Address(FIRST + i)))
    server = serve_metrics(engine, "127.0.0.1:0") if on else None
    scrapes = []

    async def scraper():
        while True:
            await asyncio.sleep(5.0)
            scrapes.append(await asyncio.to_thread(get, server.url))

    await store.start()
    task = asyncio.create_task(scraper()) if server is not None else None
    c0, w0 = cpu(), time.monotonic()
    await engine.run(duration_s, handle_signals=False)
    wall, used = time.monotonic() - w0, cpu() - c0
    if task is not None:
        task.cancel()
    await store.close()
    if server is not None:
        server.close()
    st = engine.stats()
    return {"cpu_share": round(used / wall, 4), "sent": st["sent"],
            "received": st["received"], "scrapes": len(scrapes)}


n, duration_s, on = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "on"
with tempfile.TemporaryDirectory() as d:
    print(json.dumps(asyncio.run(run(n, duration_s, on, Path(d) / "m.db"))))
"""


def run_one(tree: Path, n: int, duration_s: float, mode: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(duration_s), mode],
        capture_output=True, text=True, env=env, cwd=tree, timeout=duration_s + 300,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"{tree} {mode}: {r.stderr[-2000:]}")
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (built)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=20.0)
    a = ap.parse_args(argv)
    if not 1 <= a.targets <= 16_383:
        ap.error("--targets must be 1..16383 (127.3.0.0/18, loopback only)")
    trees = {"before": a.before.resolve(), "this": HERE}
    shares: dict[str, list[float]] = {}
    for r in range(a.rounds):
        for name, tree in trees.items():
            for mode in ("off", "on"):
                res = run_one(tree, a.targets, a.duration, mode)
                key = f"{name} {mode}"
                shares.setdefault(key, []).append(float(res["cpu_share"]))  # type: ignore[arg-type]
                print(json.dumps({"round": r, "run": key, **res}), file=sys.stderr, flush=True)
    means = {k: round(statistics.mean(v), 4) for k, v in shares.items()}
    summary = {
        "cpu_share_mean": means,
        "metrics_on_points_cheaper": round(100 * (means["before on"] - means["this on"]), 2),
        "metrics_off_points_cheaper": round(100 * (means["before off"] - means["this off"]), 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
