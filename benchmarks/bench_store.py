"""Store write cost per record, same run, same disk, 10,000 targets:

- chunks: what the engine hands over once the core keeps the outcome log: one chunk
  per target per 10 s flush window (10 records at 1 probe/s), ``submit_chunks``;
- results: ProbeResults through ``submit`` (grouped per target and packed by the
  writer), in engine order (one tick = one result per target) and, for contrast, with
  100 targets (many results of one target per write batch);
- old layout: schema 1, one SQLite row per result (7 columns, a (tid, t) index),
  batches of 1000 in one transaction each: a reference copy of the SQL and the insert
  loop the store used before chunks.

    PYTHONPATH=src python -m pytest benchmarks/bench_store.py --benchmark-only
    PYTHONPATH=src python benchmarks/bench_store.py          # a plain table

"writer us/record" is the CPU time of the writer's thread (packing, SQLite, commit)
per record, measured with time.thread_time() around each write; "submit us/record" is
the caller's (the event loop's) cost. WAL mode, synchronous=NORMAL, a file in a
temporary directory.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fastping import chunk
from fastping.chunk import OUTCOME_CODE
from fastping.results import Outcome, ProbeResult
from fastping.store import ResultStore

TARGETS = 10_000
WINDOWS = 3  # flush windows of 10 s: 300,000 records per run
WINDOW_S = 10
SMALL_TARGETS = 100

# ---- the schema-1 layout, kept here as the reference ----------------------------------

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS results (
    t REAL NOT NULL, tid INTEGER NOT NULL, seq INTEGER NOT NULL, outcome INTEGER NOT NULL,
    rtt_ms REAL, ttl INTEGER, address TEXT
);
CREATE INDEX IF NOT EXISTS results_tid_t ON results (tid, t);
"""
OLD_INSERT = (
    "INSERT INTO results (t, tid, seq, outcome, rtt_ms, ttl, address) VALUES (?,?,?,?,?,?,?)"
)


def name(k: int) -> str:
    return f"127.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def make_results(targets: int, records: int) -> list[ProbeResult]:
    """``records`` results over ``targets`` targets in time order (one probe per target
    per second, as the engine makes them); every 50th a timeout."""
    t0 = time.time()
    out = []
    for i in range(records):
        tgt = name(i % targets)
        t = t0 + i / targets
        if i % 50 == 0:
            out.append(ProbeResult(tgt, tgt, i & 0xFFFF, Outcome.TIMEOUT, time=t))
        else:
            out.append(ProbeResult(tgt, tgt, i & 0xFFFF, Outcome.REPLY,
                                   rtt_ms=0.05 + (i % 17) * 0.001, ttl=64, time=t))  # fmt: skip
    return out


def make_chunks(targets: int, windows: int) -> list[list[tuple[str, str, bytes]]]:
    """Per flush window, one chunk per target of WINDOW_S records (1 probe/s)."""
    t0 = time.time()
    out = []
    reply, timeout = OUTCOME_CODE[Outcome.REPLY], OUTCOME_CODE[Outcome.TIMEOUT]
    for w in range(windows):
        batch = []
        for k in range(targets):
            ts = [t0 + (w * WINDOW_S + s) + k / targets for s in range(WINDOW_S)]
            lost = [(k + s) % 50 == 0 for s in range(WINDOW_S)]
            blob = chunk.pack(
                ts,
                [None if x else 0.05 + ((k + s) % 17) * 0.001 for s, x in enumerate(lost)],
                [w * WINDOW_S + s for s in range(WINDOW_S)],
                [timeout if x else reply for x in lost],
                [None if x else 64 for x in lost],
            )
            batch.append((name(k), name(k), blob))
        out.append(batch)
    return out


def _timed_writer(store: ResultStore, acc: dict[str, float]) -> None:
    """Wrap the writer's write(): wall and thread CPU time of every write."""
    inner = store._writer.write

    def write(*a: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return inner(*a)
        finally:
            acc["writer_s"] += time.perf_counter() - w
            acc["writer_cpu_s"] += time.thread_time() - c

    store._writer.write = write  # type: ignore[method-assign]


def _through_store(
    path: Path, submit: Callable[[ResultStore], float], records: int
) -> dict[str, float]:
    async def go() -> dict[str, float]:
        store = ResultStore(path)
        await store.start()
        acc = {"writer_s": 0.0, "writer_cpu_s": 0.0}
        _timed_writer(store, acc)
        t = time.perf_counter()
        submit_s = await submit(store)  # type: ignore[misc]
        await store.flush()
        elapsed = time.perf_counter() - t
        await store.close()
        st = store.stats()
        assert st["written"] == records and st["dropped"] == 0, st
        assert store.count_results() == records
        return {**acc, "elapsed_s": elapsed, "submit_s": submit_s, "rows": st["rows_written"]}

    return asyncio.run(go())


def chunk_write(path: Path, windows: Sequence[list[tuple[str, str, bytes]]]) -> dict[str, float]:
    async def submit(store: ResultStore) -> float:
        s = 0.0
        for batch in windows:
            t = time.perf_counter()
            store.submit_chunks(batch)
            s += time.perf_counter() - t
            await store.flush()  # the next window comes 10 s later
        return s

    return _through_store(path, submit, sum(chunk.count(c) for b in windows for _, _, c in b))  # type: ignore[arg-type]


def results_write(path: Path, results: list[ProbeResult], tick: int = TARGETS) -> dict[str, float]:
    async def submit(store: ResultStore) -> float:
        s = 0.0
        for k, i in enumerate(range(0, len(results), tick), 1):
            t = time.perf_counter()
            store.submit(results[i : i + tick])
            s += time.perf_counter() - t
            await asyncio.sleep(0)  # let the writer run, as the engine's loop would
            if k % WINDOW_S == 0:
                # what the store's chunk_window_s (10 s) does: a write per 10 ticks
                await store.flush()
        return s

    return _through_store(path, submit, len(results))  # type: ignore[arg-type]


def old_layout_write(path: Path, results: list[ProbeResult], batch: int = 1000) -> dict[str, float]:
    """Schema 1: the old _Writer._insert loop, one row per result, 1000 a transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(OLD_SCHEMA)
    tids: dict[str, int] = {}
    codes = OUTCOME_CODE
    w, c = time.perf_counter(), time.thread_time()
    for i in range(0, len(results), batch):
        conn.execute("BEGIN IMMEDIATE")
        rows = []
        for r in results[i : i + batch]:
            target = r.target
            tid = tids.get(target)
            if tid is None:
                conn.execute("INSERT OR IGNORE INTO targets (name) VALUES (?)", (target,))
                tid = tids[target] = conn.execute(
                    "SELECT id FROM targets WHERE name = ?", (target,)
                ).fetchone()[0]
            address = r.address
            stored = None if address == target else ("" if address is None else address)
            rows.append((float(r.time), tid, int(r.seq), codes[r.outcome], r.rtt_ms, r.ttl,
                         stored))  # fmt: skip
        conn.executemany(OLD_INSERT, rows)
        conn.execute("COMMIT")
    out = {"writer_s": time.perf_counter() - w, "writer_cpu_s": time.thread_time() - c}
    n = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    conn.close()
    assert n == len(results)
    return {**out, "elapsed_s": out["writer_s"], "submit_s": 0.0, "rows": n}


def _fresh(tmp: Path, name: str) -> Path:
    for suffix in ("", "-wal", "-shm"):
        (tmp / f"{name}{suffix}").unlink(missing_ok=True)
    return tmp / name


CASES: list[tuple[str, Callable[[], Any], Callable[[Path, Any], dict[str, float]]]] = [
    ("chunks 10k tgt x 10 rec", lambda: make_chunks(TARGETS, WINDOWS), chunk_write),
    ("results 10k tgt", lambda: make_results(TARGETS, TARGETS * WINDOW_S * WINDOWS),
     results_write),
    ("results 100 tgt", lambda: make_results(SMALL_TARGETS, TARGETS * WINDOW_S * WINDOWS),
     results_write),
    ("old layout 1 row/result", lambda: make_results(TARGETS, TARGETS * WINDOW_S * WINDOWS),
     old_layout_write),
]  # fmt: skip
RECORDS = TARGETS * WINDOW_S * WINDOWS


@pytest.mark.benchmark(group="store-write")
@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_store_write(benchmark: Any, tmp_path: Path, case: int) -> None:
    label, make, fn = CASES[case]
    data = make()
    out: dict[str, float] = {}

    def once() -> None:
        out.update(fn(_fresh(tmp_path, "b.db"), data))

    benchmark.pedantic(once, rounds=2, iterations=1)
    benchmark.extra_info.update(
        {
            "records": RECORDS,
            "rows": out["rows"],
            "writer_us_per_record": round(out["writer_cpu_s"] / RECORDS * 1e6, 3),
            "submit_us_per_record": round(out["submit_s"] / RECORDS * 1e6, 3),
            "records_per_s_writer": round(RECORDS / out["writer_s"]),
        }
    )


def main() -> int:
    print(f"{RECORDS} records per case (10,000 targets x 1 probe/s x {WINDOWS * WINDOW_S} s "
          "unless said); best of 3")  # fmt: skip
    print(f"{'case':26} {'rows':>7} {'writer rec/s':>13} {'writer us/rec':>14} "
          f"{'submit us/rec':>14} {'wall s':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, make, fn in CASES:
            data = make()
            best: dict[str, float] = {}
            for _ in range(3):
                r = fn(_fresh(tmp, "b.db"), data)
                if not best or r["writer_cpu_s"] < best["writer_cpu_s"]:
                    best = r
            print(
                f"{label:26} {int(best['rows']):7d} {RECORDS / best['writer_s']:13.0f} "
                f"{best['writer_cpu_s'] / RECORDS * 1e6:14.3f} "
                f"{best['submit_s'] / RECORDS * 1e6:14.3f} {best['elapsed_s']:7.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
