"""NetworkMonitor latency and idle cost, on demand (needs root):

    PYTHONPATH=src python benchmarks/bench_netstate.py [--flaps 20] [--idle-s 20]

1. Flap latency, in a network namespace pair made here: time from the netlink
   request `link set down` to the DOWN change, and from `link set up` (plus
   re-adding the default route the kernel flushed) to the UP change, the check
   host's ICMP verification included. The monitor runs in-process in namespace A.
2. Idle cost: a monitor (netlink, one check host, default 10 s interval) in a
   child process, sampled with psutil for ``--idle-s`` seconds: CPU %, RSS, and
   the RSS / Python-heap growth caused by starting the monitor.

Nothing leaves the namespaces; they are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)

HOST = "10.56.9.1"
GW = "10.56.1.2"

CHILD = r"""
import asyncio, json, os, sys, tracemalloc, psutil
from fastping.netstate import NetworkMonitor
proc = psutil.Process()
import pyroute2, fastping.api  # imports are not the monitor's running cost
async def main():
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    mon = NetworkMonitor(check_hosts=[sys.argv[1]])
    await mon.start()
    heap, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"state": mon.state.value, "rss_start_delta": proc.memory_info().rss - rss0,
                      "heap_bytes": heap}), flush=True)
    await asyncio.sleep(float(sys.argv[2]))
    print(json.dumps({"rss": proc.memory_info().rss, "counters": mon.counters}), flush=True)
    await mon.stop()
asyncio.run(main())
"""


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def flaps(ifname: str, n: int) -> tuple[list[float], list[float]]:
    from pyroute2 import AsyncIPRoute

    from fastping.netstate import NetworkMonitor, NetworkState

    down_ms: list[float] = []
    up_ms: list[float] = []
    async with (
        NetworkMonitor(check_hosts=[HOST], check_timeout=1.0) as mon,
        AsyncIPRoute() as ipr,
    ):
        assert mon.state is NetworkState.UP, mon.reason
        index = [m["index"] async for m in await ipr.get_links() if m.get("IFLA_IFNAME") == ifname][
            0
        ]
        sub = mon.subscribe()
        for _ in range(n):
            t0 = time.time()
            await ipr.link("set", index=index, state="down")
            ch = await asyncio.wait_for(sub.__anext__(), 5)
            assert ch.state is NetworkState.DOWN, ch
            down_ms.append((ch.time - t0) * 1000)
            await asyncio.sleep(0.05)
            t0 = time.time()
            await ipr.link("set", index=index, state="up")
            await ipr.route("replace", dst="0.0.0.0/0", gateway=GW, oif=index)
            ch = await asyncio.wait_for(sub.__anext__(), 5)
            assert ch.state is NetworkState.UP and ch.verified, ch
            up_ms.append((ch.time - t0) * 1000)
            await asyncio.sleep(0.05)
    return down_ms, up_ms


def idle(ns: str, idle_s: float) -> dict[str, float]:
    import psutil

    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, HOST, str(idle_s + 2)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    p = psutil.Process(proc.pid)
    time.sleep(1.0)  # let start-up settle
    c0 = p.cpu_times()
    t0 = time.monotonic()
    time.sleep(idle_s)
    c1 = p.cpu_times()
    wall = time.monotonic() - t0
    rss = p.memory_info().rss
    last = json.loads(proc.stdout.readline())
    proc.wait(30)
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
    return {
        "state": first["state"],
        "cpu_percent": 100 * cpu_s / wall,
        "rss_mb": rss / 1e6,
        "rss_growth_on_start_kb": first["rss_start_delta"] / 1e3,
        "python_heap_of_monitor_kb": first["heap_bytes"] / 1e3,
        "checks": last["counters"]["checks"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flaps", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=20.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sfx = secrets.token_hex(3)
    a, b, va, vb = f"fp5-{sfx}-bA", f"fp5-{sfx}-bB", f"fp5{sfx}ba", f"fp5{sfx}bb"
    try:
        sh(f"ip netns add {a}; ip netns add {b}")
        sh(f"ip link add {va} type veth peer name {vb}")
        sh(f"ip link set {va} netns {a}; ip link set {vb} netns {b}")
        sh(f"ip -n {a} addr add 10.56.1.1/24 dev {va}; ip -n {b} addr add {GW}/24 dev {vb}")
        sh(f"ip -n {a} link set {va} up; ip -n {b} link set {vb} up")
        sh(f"ip -n {a} link set lo up; ip -n {b} link set lo up")
        sh(f"ip -n {b} addr add {HOST}/32 dev lo; ip -n {a} route add default via {GW}")
        from pyroute2.netns import popns, pushns

        pushns(a)
        try:
            down_ms, up_ms = asyncio.run(flaps(va, args.flaps))
        finally:
            popns()
        result = {
            "flaps": args.flaps,
            "down_ms": {
                "median": statistics.median(down_ms),
                "p95": pct(down_ms, 95),
                "max": max(down_ms),
            },
            "up_verified_ms": {
                "median": statistics.median(up_ms),
                "p95": pct(up_ms, 95),
                "max": max(up_ms),
            },
            "idle": idle(a, args.idle_s),
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
