"""DNS targets in the monitoring engine (#18): the prober's CPU for SERVERS x NAMES
dns:// targets probed every second, inside a namespace this script makes (and
deletes; only ``lo`` exists there). unbound answers on every 127/8 address
(``interface-automatic``); the names are under its static ``test.`` zone (NXDOMAIN).

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_dns_monitor.py --servers 10 --names 100
    PYTHONPATH=src python benchmarks/bench_dns_monitor.py --servers 50 --names 100

Prints the queries sent and answered, and the CPU time of the thread that runs the
engine (RUSAGE_THREAD: unbound, another process, is not in it) over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


async def _run(port: int, servers: int, names: int, seconds: float) -> tuple[Any, ...]:
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard

    e = MonitoringEngine(interval_s=1.0, timeout_s=1.0, guard=ResourceGuard(None, None))
    for s in range(servers):
        for n in range(names):
            e.add_target(f"dns://127.0.{s // 250}.{s % 250 + 1}:{port}/n{n}.test?type=A")
    r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    await e.run(seconds, handle_signals=False)
    r1, t1 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return e.stats(), cpu, t1 - t0


def main() -> None:
    from dnsservers import free_port, unbound
    from privhelpers import in_netns, netns

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    with netns() as ns:
        port = in_netns(ns, free_port)
        with unbound(ns, port, automatic=True):
            st, cpu, wall = in_netns(
                ns, lambda: asyncio.run(_run(port, a.servers, a.names, a.seconds))
            )
    outcomes = {k: v for k, v in st["outcomes"].items() if v}
    print(f"{a.servers * a.names} targets: sent {st['sent']}, received {st['received']}, "
          f"outcomes {outcomes}")  # fmt: skip
    print(f"engine thread CPU {cpu:.3f} s over {wall:.2f} s = {100 * cpu / wall:.1f}% of a "
          f"core, {1e6 * cpu / max(st['sent'], 1):.1f} us per query")  # fmt: skip


if __name__ == "__main__":
    main()
