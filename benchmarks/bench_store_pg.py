"""Store writes in real time, PostgreSQL against SQLite, same run, same machine:
10,000 targets probed every second for 60 s, handed to the store as the engine does
(every store.chunk_s = 10 s, one chunk per target from the core's outcome log: 10
records each, 2 % timeouts), then four such agents into one PostgreSQL at once.

    PYTHONPATH=src python benchmarks/bench_store_pg.py                # 60 s per case
    PYTHONPATH=src python benchmarks/bench_store_pg.py --seconds 20 --agents 2
    PYTHONPATH=src python -m pytest benchmarks/bench_store_pg.py -s   # a 20 s version

Figures per agent:

- writer CPU us/result: CPU time of the store's writer thread (``time.thread_time()``
  around each ``backend.write``: packing, the driver, SQLite itself in-process) per
  result written; for PostgreSQL also the server's CPU (every process of the cluster,
  from /proc) per result, since that work moved out of the agent;
- end-to-end delay: from a probe's result time to the commit that holds it (mean and
  max over results: the chunk window dominates, as it does in production) and from
  hand-off (``submit_chunks``) to commit (p50 / p99 / max over chunks: the store's own
  latency);
- dropped / queued at the end (must be 0).

Each store writes with its own default store.batch_size (SQLite 1,000 records a
transaction, PostgreSQL 10,000) unless ``--batch-size`` sets both.
The PostgreSQL cluster is started here (initdb into a temporary directory, 127.0.0.1,
Debian's defaults: fsync and synchronous_commit on; ``--pg-fast`` turns both off,
closer to SQLite's WAL + synchronous=NORMAL, which does not sync each commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fastping import chunk  # noqa: E402
from fastping.store import ResultStore  # noqa: E402

CHUNK_S = 10


def _name(k: int, agent: int) -> str:
    return f"127.{100 + agent}.{(k >> 8) & 255}.{k & 255}"


def _window(targets: int, agent: int, t_start: float) -> list[tuple[str, str, bytes]]:
    """One hand-off: each target's CHUNK_S results (1 probe/s, spread over the second)."""
    items = []
    for k in range(targets):
        off = k / targets
        ts = [t_start + s + off for s in range(CHUNK_S)]
        codes = bytes(1 if (k + s) % 50 == 0 else 0 for s in range(CHUNK_S))
        rtt = [math.nan if c else 0.05 + (k % 17) * 0.001 for c in codes]
        name = _name(k, agent)
        items.append((name, name, chunk.pack(ts, rtt, list(range(CHUNK_S)), codes,
                                              bytes([64]) * CHUNK_S)))  # fmt: skip
    return items


def run_agent(
    db: str, agent: int, targets: int, seconds: float, out: Any = None, batch: int | None = None
) -> dict[str, Any]:
    """One agent for ``seconds``: hand-offs every CHUNK_S, then flush and close."""
    res = asyncio.run(_agent(db, agent, targets, seconds, batch))
    if out is not None:
        out.put(res)
    return res


async def _agent(
    db: str, agent: int, targets: int, seconds: float, batch: int | None
) -> dict[str, Any]:
    opt = {} if batch is None else {"batch_size": batch}  # else each store's default
    store: ResultStore
    if db.startswith("postgresql://"):
        from fastping.store_pg import PgResultStore

        store = PgResultStore(db, agent=f"bench-{agent}", chunk_window_s=CHUNK_S, **opt)
    else:
        store = ResultStore(db, chunk_window_s=CHUNK_S, **opt)
    cpu = [0.0]
    handed: dict[int, float] = {}  # id(chunk data) -> hand-off time
    per_chunk: list[float] = []  # hand-off -> commit
    rec_delay_sum = [0.0]
    rec_delay_max = [0.0]
    records = [0]
    inner = store._writer.write

    def write(results: Any, chunks: Any) -> Any:
        c0 = time.thread_time()
        r = inner(results, chunks)
        cpu[0] += time.thread_time() - c0
        now = time.time()
        for c in chunks:
            t = array("d")
            t.frombytes(c.data[: 8 * c.n])
            rec_delay_sum[0] += c.n * now - math.fsum(t)
            rec_delay_max[0] = max(rec_delay_max[0], now - t[0])
            records[0] += c.n
            h = handed.pop(id(c.data), None)
            if h is not None:
                per_chunk.append(now - h)
        return r

    store._writer.write = write  # type: ignore[method-assign]
    await store.start()
    t0 = math.ceil(time.time())
    windows = max(1, int(seconds // CHUNK_S))
    for w in range(windows):
        start = t0 + w * CHUNK_S
        items = _window(targets, agent, start)
        await asyncio.sleep(max(0.0, start + CHUNK_S - time.time()))
        now = time.time()
        for _, _, data in items:
            handed[id(data)] = now
        store.submit_chunks(items)
    await store.flush(120)
    await store.close()
    st = store.stats()
    per_chunk.sort()
    n = max(1, records[0])
    return {
        "agent": agent,
        "results": records[0],
        "writer_us_per_result": cpu[0] / n * 1e6,
        "delay_mean_s": rec_delay_sum[0] / n,
        "delay_max_s": rec_delay_max[0],
        "handoff_commit_p50_s": per_chunk[len(per_chunk) // 2] if per_chunk else None,
        "handoff_commit_p99_s": per_chunk[int(len(per_chunk) * 0.99)] if per_chunk else None,
        "handoff_commit_max_s": per_chunk[-1] if per_chunk else None,
        "dropped": st["dropped"],
        "queued": st["queued"],
        "rows": st["rows_written"],
        "write_failures": st["write_failures"],
    }


def _line(label: str, r: dict[str, Any], server_us: float | None = None) -> str:
    s = (
        f"{label:<28} {r['results']:>8,} results  writer {r['writer_us_per_result']:5.2f} us/result"
        + (f" (+ server {server_us:5.2f})" if server_us is not None else "")
        + f"  probe->commit mean {r['delay_mean_s']:5.2f} s max {r['delay_max_s']:5.2f} s"
        f"  hand-off->commit p50 {r['handoff_commit_p50_s']:.3f}"
        f" p99 {r['handoff_commit_p99_s']:.3f}"
        f" max {r['handoff_commit_max_s']:.3f} s  dropped {r['dropped']} queued {r['queued']}"
    )
    return s


def bench(
    seconds: float, targets: int, agents: int, fast: bool, batch: int | None = None
) -> list[str]:
    from servers import PgServer

    lines = []
    srv = PgServer(durable=not fast).init().start()
    tmp = Path(tempfile.mkdtemp(prefix="fp-fleet-bench-"))
    try:
        lines.append(f"{targets:,} targets x 1 probe/s for {seconds:g} s, chunk_s {CHUNK_S}; "
                     f"PostgreSQL {'fsync/sync commit off' if fast else 'defaults (fsync on)'}"
                     f", store.batch_size {batch or 'default (SQLite 1000, PostgreSQL 10000)'}"
            f", {os.cpu_count()} cores")  # fmt: skip
        r = run_agent(str(tmp / "bench.db"), 0, targets, seconds, batch=batch)
        lines.append(_line("SQLite, 1 agent", r))
        cpu0 = srv.postgres_cpu_s()
        r = run_agent(srv.url, 0, targets, seconds, batch=batch)
        server = (srv.postgres_cpu_s() - cpu0) / max(1, r["results"]) * 1e6
        lines.append(_line("PostgreSQL, 1 agent", r, server))
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        cpu0 = srv.postgres_cpu_s()
        procs = [ctx.Process(target=run_agent, args=(srv.url, a + 1, targets, seconds, q, batch))
                 for a in range(agents)]  # fmt: skip
        for p in procs:
            p.start()
        got = [q.get(timeout=seconds * 4 + 300) for _ in procs]
        for p in procs:
            p.join(60)
        total = sum(g["results"] for g in got)
        server = (srv.postgres_cpu_s() - cpu0) / max(1, total) * 1e6
        for g in sorted(got, key=lambda g: g["agent"]):
            lines.append(_line(f"PostgreSQL, {agents} agents: #{g['agent']}", g))
        count = json.loads(srv.psql("SELECT sum(n) FROM fastping_results WHERE agent <> 'bench-0'"))
        lines.append(
            f"{agents} agents together: {total:,} results written, {int(count[0][0]):,} in the "
            f"database, writer mean {statistics.mean(g['writer_us_per_result'] for g in got):.2f}"
            f" us/result, server {server:.2f} us/result, dropped {sum(g['dropped'] for g in got)}"
        )
    finally:
        srv.cleanup()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return lines


def test_store_pg_realtime() -> None:
    """A 20 s version for `pytest benchmarks/` (the figures in the report come from
    the 60 s command line)."""
    import pytest

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("needs psycopg (pip install 'psycopg[binary]')")
    from conftest import report

    for line in bench(20, 10_000, 2, fast=False):
        report(line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--pg-fast", action="store_true", help="fsync and synchronous_commit off")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="store.batch_size for both (default: each store's own)")  # fmt: skip
    a = ap.parse_args()
    for line in bench(a.seconds, a.targets, a.agents, a.pg_fast, a.batch_size):
        print(line, flush=True)
