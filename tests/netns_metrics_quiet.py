"""A MonitoringEngine with metrics on and nobody else wanting results: the sockets
stay in the core's quiet log mode, and a scrape must still say exactly what the
store recorded, our network's outage included.

Used by tests/test_metrics_scrape.py under ``ip netns exec`` in the host namespace
of its ``router_netns`` fixture (tests/test_metrics.py), so every target is loopback
or an address inside namespaces the test made (the same targets as netns_metrics.py:
replies, nft-dropped timeouts, rejected unreachables, send errors). A stand-in
network monitor says "down" for the middle of the run: probes in flight then are
local_down (the core counted them as timeouts), and due probes are not sent.

Prints one JSON document: the endpoint's text during and after the run, the log
modes the sockets had before, during and after the outage, and the ground truth
read back from the SQLite store: per target and outcome, local_down outcomes of
probes that had left (seq >= 0), and the sum of the replies' RTTs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import urllib.request
from typing import Any

from netns_metrics import TARGETS


class _Network:
    """What the engine reads of a network monitor: ``state``."""

    state = "UP"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


async def main(db: str, duration_s: float) -> dict[str, Any]:
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.metrics import serve_metrics
    from fastping.results import Outcome
    from fastping.store import ResultStore

    store = ResultStore(db)
    net = _Network()
    engine = MonitoringEngine(
        store=store, interval_s=0.1, timeout_s=0.3, mode="raw",
        guard=ResourceGuard(None, None), backoff_after=1000, network=net,
    )  # fmt: skip
    for host, labels in TARGETS.items():
        engine.add_target(host, labels=labels)
    server = serve_metrics(engine, "127.0.0.1:0")
    modes: dict[str, list[int]] = {}

    def sample(when: str) -> None:
        modes[when] = sorted(s.log_mode for s in engine._sockets.values())

    async def outage() -> str:
        third = duration_s / 3
        await asyncio.sleep(third)
        sample("before")
        during = await asyncio.to_thread(scrape, server.url)
        net.state = "DOWN"
        await asyncio.sleep(third / 2)
        sample("down")
        await asyncio.sleep(third / 2)
        net.state = "UP"
        await asyncio.sleep(third / 2)
        sample("after")
        return during

    await store.start()
    _, during = await asyncio.gather(engine.run(duration_s, handle_signals=False), outage())
    await store.close()
    after = await asyncio.to_thread(scrape, server.url)
    server.close()
    truth: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rtt_ms: dict[str, float] = collections.defaultdict(float)
    for host in TARGETS:
        for r in store.recent(host, 1_000_000):
            truth[host][r.outcome.value] += 1
            if r.outcome is Outcome.LOCAL_DOWN and r.seq >= 0:
                truth[host]["sent_down"] += 1
            if r.outcome is Outcome.REPLY and r.rtt_ms is not None:
                rtt_ms[host] += r.rtt_ms
    return {
        "during": during,
        "after": after,
        "modes": modes,
        "truth": {h: dict(c) for h, c in truth.items()},
        "rtt_ms": rtt_ms,
        "stats": engine.stats(),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--duration", type=float, default=3.0)
    a = ap.parse_args()
    doc = asyncio.run(main(a.db, a.duration))
    json.dump(doc, sys.stdout, default=str)
