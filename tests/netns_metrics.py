"""Run a MonitoringEngine with its metrics endpoint and report what both recorded.

Used by tests/test_metrics.py, which runs this file under ``ip netns exec`` in
the host namespace of the ``netns`` fixture (conftest.Netns), so every target is
loopback or an address inside namespaces the test made:

    127.0.0.1, 127.0.0.2      replies (host namespace's lo)
    10.201.0.1                replies (the router, over the veth)
    10.202.0.5 (router lo)    nft drops the echo requests: timeouts
    10.202.0.6 (router lo)    nft rejects them with host-unreachable: unreachables
    10.203.0.7                an `unreachable` route in the host namespace: the
                              kernel refuses the send: send errors

Prints one JSON document: the endpoint's text during and after the run, the
registry's text (prometheus_client's generic path), the engine's stats and the
ground truth: every result the engine published, counted per target and outcome
through a subscription large enough to lose nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import urllib.request
from typing import Any

TARGETS = {
    "127.0.0.1": {"site": "lab", "role": "loopback"},
    "127.0.0.2": {"site": "lab"},
    "10.201.0.1": {"role": "router"},
    "10.202.0.5": {},
    "10.202.0.6": {},
    "10.203.0.7": {},
}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


async def main(db: str, duration_s: float) -> dict[str, Any]:
    from prometheus_client.exposition import generate_latest

    from fastping.engine import MonitoringEngine, ResultEvent
    from fastping.guard import ResourceGuard
    from fastping.metrics import serve_metrics
    from fastping.store import ResultStore

    store = ResultStore(db)
    engine = MonitoringEngine(
        store=store,
        interval_s=0.1,
        timeout_s=0.3,
        mode="raw",
        guard=ResourceGuard(None, None),
        backoff_after=1000,  # keep sending to the send-error target: more to count
    )
    for host, labels in TARGETS.items():
        engine.add_target(host, labels=labels)
    server = serve_metrics(engine, "127.0.0.1:0", shard=(0, 1))
    sub = engine.subscribe(maxsize=1_000_000)
    await store.start()
    task = asyncio.create_task(engine.run(duration_s, handle_signals=False))
    await asyncio.sleep(duration_s / 2)
    during = await asyncio.to_thread(scrape, server.url)  # while probing
    await task
    await store.close()
    after = await asyncio.to_thread(scrape, server.url)
    registry_text = generate_latest(server.registry).decode()
    server.close()
    truth: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    lost_seq = 0
    for ev in sub.drain():
        if isinstance(ev, ResultEvent):
            r = ev.result
            truth[r.target][r.outcome.value] += 1
            if r.outcome.value == "local_down" and r.seq >= 0:
                lost_seq += 1
    return {
        "during": during,
        "after": after,
        "registry": registry_text,
        "truth": {h: dict(c) for h, c in truth.items()},
        "stats": engine.stats(),
        "sub_dropped": sub.dropped,
        "scrapes": server.scrapes,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--duration", type=float, default=2.0)
    a = ap.parse_args()
    doc = asyncio.run(main(a.db, a.duration))
    json.dump(doc, sys.stdout, default=str)
