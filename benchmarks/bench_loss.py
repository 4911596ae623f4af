"""What the loss analysis (fastping.loss) costs the engine: 10,000 targets every second.

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_loss.py                    # 2 pairs x 30 s
    PYTHONPATH=src python benchmarks/bench_loss.py --pairs 3 --duration 60 --lossy 0.1

Runs the same engine (bench_engine.py's setup: 10,000 targets, 1 s interval, 1 s
timeout, SQLite store) with the LossTracker on and off, interleaved (on, off, off,
on, ...), in ONE invocation, and reports for each run the process's CPU share of
one core in the steady state (after a 5 s warm-up) and, for the runs with the
tracker, the CPU time spent inside it (the engine's ``_feed_loss``, timed with
``time.thread_time`` around each call: the analysis' own cost, free of the noise of
a shared machine and of the store's writer thread taking the GIL meanwhile). The
issue's bound: at most 0.5 points of a core.

Everything runs inside a network namespace made here (``fp-loss-b-<rand>``, its own
loopback, removed afterwards), so ``--lossy SHARE`` can drop 5 % of the echo
replies of SHARE of the targets with nftables there (``numgen random`` in the input
hook: a drop in the output hook would be a send error, EPERM, not a loss): the
analysis then walks those targets' chunks record by record (its slow path), as in
a fleet with lossy targets. Targets are 127.2.0.1 ... on that namespace's loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FIRST = int(ipaddress.IPv4Address("127.2.0.1"))


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def run_engine(n: int, duration_s: float, db: Path, tracking: bool) -> dict[str, Any]:
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.store import ResultStore

    store = ResultStore(db)
    engine = MonitoringEngine(
        store=store, interval_s=1.0, timeout_s=1.0,
        guard=ResourceGuard(100.0, 1000.0, check_interval_s=5.0), loss_tracking=tracking,
    )  # fmt: skip
    spent = [0.0, 0]
    if tracking:
        inner = engine._feed_loss

        def timed(items: Any) -> None:
            t0 = time.thread_time()  # this thread's CPU: not the writer thread's GIL turns
            inner(items)
            spent[0] += time.thread_time() - t0
            spent[1] += len(items)

        engine._feed_loss = timed  # type: ignore[method-assign]
    for i in range(n):
        engine.add_target(str(ipaddress.IPv4Address(FIRST + i)))
    await store.start()
    await engine.start()
    await asyncio.sleep(min(5.0, duration_s / 4))
    cpu2, wall2, in2 = _cpu_s(), time.monotonic(), spent[0]
    await asyncio.sleep(duration_s)
    cpu3, wall3, in3 = _cpu_s(), time.monotonic(), spent[0]
    await engine.stop()
    await store.close()
    st = engine.stats()
    wall = wall3 - wall2
    loss = st.get("loss") or {}
    return {
        "tracking": tracking,
        "targets": n,
        "sent": st["sent"],
        "loss": round(1 - st["received"] / st["sent"], 5) if st["sent"] else None,
        "cpu_share_steady": round((cpu3 - cpu2) / wall, 4),
        "analysis_share": round((in3 - in2) / wall, 5) if tracking else None,
        "analysis_us_per_chunk": round(1e6 * spent[0] / spent[1], 2) if spent[1] else None,
        "chunks": spent[1],
        "outages_total": loss.get("outages_total"),
        "bursts": sum(loss.get("burst_buckets") or []),
        "loop_lag_mean_s": st["loop_lag_s"]["mean"],
    }


def inner(a: argparse.Namespace) -> int:
    """Inside the namespace: the interleaved runs."""
    rows = []
    for i in range(a.pairs):
        for tracking in (True, False) if i % 2 == 0 else (False, True):
            with tempfile.TemporaryDirectory() as d:
                r = asyncio.run(run_engine(a.targets, a.duration, Path(d) / "b.db", tracking))
            rows.append(r)
            print(json.dumps(r), flush=True)
    on = sorted(r["cpu_share_steady"] for r in rows if r["tracking"])
    off = sorted(r["cpu_share_steady"] for r in rows if not r["tracking"])
    own = sorted(r["analysis_share"] for r in rows if r["tracking"])
    med = lambda v: v[len(v) // 2]  # noqa: E731
    print(json.dumps({
        "targets": a.targets, "lossy_share": a.lossy, "pairs": a.pairs, "duration_s": a.duration,
        "cpu_share_with": on, "cpu_share_without": off,
        "difference_points_median": round(100 * (med(on) - med(off)), 2),
        "analysis_points_measured_inside": [round(100 * x, 3) for x in own],
    }))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument(
        "--lossy",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the targets whose echo replies lose 5 %% (nftables)",
    )
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not 1 <= a.targets <= 16_383:
        ap.error("--targets must be 1..16383 (127.2.0.0/18)")
    if a.inner:
        return inner(a)
    if os.geteuid() != 0:
        print("needs root: raw sockets and a network namespace of its own", file=sys.stderr)
        return 2
    ns = f"fp-loss-b-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        if a.lossy > 0:
            k = max(1, round(a.targets * a.lossy))
            last = ipaddress.IPv4Address(FIRST + k - 1)
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft",
                 "add table ip fpl; add chain ip fpl inp { type filter hook input priority 0; }; "
                 f"add rule ip fpl inp ip saddr 127.2.0.1-{last} icmp type echo-reply "
                 "numgen random mod 20 == 0 drop"],
                check=True,
            )  # fmt: skip
        env = dict(os.environ)
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
             "--targets", str(a.targets), "--duration", str(a.duration),
             "--pairs", str(a.pairs), "--lossy", str(a.lossy)],
            env=env,
        ).returncode  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
