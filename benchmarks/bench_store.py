"""Store write throughput: the batched ResultStore writer against a naive writer that
commits one transaction per result, on the same schema and pragmas, in the same run.

    PYTHONPATH=src python -m pytest benchmarks/bench_store.py --benchmark-only
    PYTHONPATH=src python benchmarks/bench_store.py          # a plain table

Both write to a file in a temporary directory (the disk the tests run on), WAL mode,
synchronous=NORMAL. Results/s is in each benchmark's extra_info.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastping.results import Outcome, ProbeResult
from fastping.store import _INSERT_RESULT, _SCHEMA, OUTCOME_CODE, ResultStore

# The same count for both, so pytest-benchmark's time columns compare directly.
N = 20_000
BIG_N = 200_000  # the batched writer again on a larger run (plain-table mode only)
TARGETS = 10_000  # results spread over 10k targets, as one engine tick would give


def make_results(n: int) -> list[ProbeResult]:
    t0 = time.time()
    out = []
    for i in range(n):
        k = i % TARGETS
        tgt = f"127.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
        if i % 50 == 0:
            out.append(ProbeResult(tgt, tgt, i, Outcome.TIMEOUT, time=t0 + i / TARGETS))
        else:
            out.append(
                ProbeResult(
                    tgt,
                    tgt,
                    i,
                    Outcome.REPLY,
                    rtt_ms=0.05 + (i % 17) * 0.001,
                    ttl=64,
                    time=t0 + i / TARGETS,
                )  # fmt: skip
            )
    return out


def batched_write(path: Path, results: list[ProbeResult]) -> dict[str, float]:
    """Through ResultStore: submit in engine-sized chunks, then flush and close."""

    async def go() -> dict[str, float]:
        store = ResultStore(path)
        await store.start()
        t = time.perf_counter()
        submit_s = 0.0
        for i in range(0, len(results), TARGETS):
            s = time.perf_counter()
            store.submit(results[i : i + TARGETS])
            submit_s += time.perf_counter() - s
            await asyncio.sleep(0)  # let the writer run, as the engine's loop would
        await store.flush()
        elapsed = time.perf_counter() - t
        await store.close()
        assert store.stats()["written"] == len(results)
        return {"elapsed_s": elapsed, "submit_us_per_result": submit_s / len(results) * 1e6}

    return asyncio.run(go())


def naive_write(path: Path, results: list[ProbeResult]) -> dict[str, float]:
    """One INSERT and one COMMIT per result: what the store must not do."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    tids: dict[str, int] = {}
    t = time.perf_counter()
    for r in results:
        tid = tids.get(r.target)
        if tid is None:
            conn.execute("INSERT OR IGNORE INTO targets (name) VALUES (?)", (r.target,))
            tid = tids[r.target] = conn.execute(
                "SELECT id FROM targets WHERE name = ?", (r.target,)
            ).fetchone()[0]
        conn.execute("BEGIN")
        conn.execute(
            _INSERT_RESULT,
            (r.time, tid, r.seq, OUTCOME_CODE[r.outcome], r.rtt_ms, r.ttl, None),
        )  # fmt: skip
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    n = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    conn.close()
    assert n == len(results)
    return {"elapsed_s": elapsed}


def _fresh(tmp: Path, name: str) -> Path:
    for suffix in ("", "-wal", "-shm"):
        (tmp / f"{name}{suffix}").unlink(missing_ok=True)
    return tmp / name


Writer = Callable[[Path, list[ProbeResult]], dict[str, float]]


def _bench(benchmark: Any, tmp_path: Path, name: str, fn: Writer, n: int) -> dict[str, float]:
    results = make_results(n)
    out: dict[str, float] = {}

    def once() -> None:
        out.update(fn(_fresh(tmp_path, name), results))

    benchmark.pedantic(once, rounds=3, iterations=1)
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info.update({"results": n, "results_per_s": round(rate), **out})
    return out


@pytest.mark.benchmark(group="store-write")
def test_batched_writer(benchmark: Any, tmp_path: Path) -> None:
    _bench(benchmark, tmp_path, "batched.db", batched_write, N)


@pytest.mark.benchmark(group="store-write")
def test_naive_writer(benchmark: Any, tmp_path: Path) -> None:
    _bench(benchmark, tmp_path, "naive.db", naive_write, N)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = []
        for name, fn, n in (("batched (ResultStore)", batched_write, N),
                            ("naive (1 txn/result)", naive_write, N),
                            ("batched (ResultStore)", batched_write, BIG_N)):  # fmt: skip
            results = make_results(n)
            best: dict[str, float] = {}
            for _ in range(3):
                r = fn(_fresh(tmp, "b.db"), results)
                if not best or r["elapsed_s"] < best["elapsed_s"]:
                    best = r
            rows.append((name, n, best))
        print(f"{'writer':24} {'results':>8} {'seconds':>8} {'results/s':>11}  submit µs/result")
        for name, n, r in rows:
            sub = f"{r['submit_us_per_result']:.2f}" if "submit_us_per_result" in r else "-"
            print(f"{name:24} {n:8d} {r['elapsed_s']:8.3f} {n / r['elapsed_s']:11.0f}  {sub}")
        ratio = (rows[0][1] / rows[0][2]["elapsed_s"]) / (rows[1][1] / rows[1][2]["elapsed_s"])
        print(f"batched / naive: {ratio:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
