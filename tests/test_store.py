"""ResultStore on real SQLite files: round trips, rollups, and bad moments of the disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastping import chunk
from fastping.errors import ConfigError
from fastping.results import Outcome, ProbeResult, rtt_summary
from fastping.store import ResultStore, _quantiles

NOW = time.time()


def reply(
    target: str, seq: int, rtt_ms: float, t: float, address: str | None = None
) -> ProbeResult:
    return ProbeResult(target, address or target, seq, Outcome.REPLY, rtt_ms=rtt_ms, ttl=64, time=t)


def other(target: str, seq: int, outcome: Outcome, t: float, **kw: object) -> ProbeResult:
    kw.setdefault("address", target)
    return ProbeResult(target, seq=seq, outcome=outcome, time=t, **kw)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def f32(xs: list[float]) -> list[float]:
    """What the store keeps of RTTs: float32 (the chunk layout)."""
    return array("f", xs).tolist()


def count_rows(path: Path, table: str = "results") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def stored_records(path: Path) -> list[chunk.Columns]:
    """Every results row, decoded straight from the file (not through the store)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT t0, t1, n, data FROM results ORDER BY rowid").fetchall()
    finally:
        conn.close()
    out = []
    for t0, t1, n, data in rows:
        c = chunk.unpack(data)
        # the row's summary columns agree with its chunk, records in time order
        assert (n, t0, t1) == (len(c), c.t[0], c.t[-1]) and list(c.t) == sorted(c.t)
        out.append(c)
    return out


def stored_seqs(path: Path) -> list[int]:
    return sorted(s for c in stored_records(path) for s in c.seq)


def check_stats(got: dict[str, object], rtts: list[float]) -> None:
    """Stats equal rtt_summary of the same RTTs (in time order), as float32."""
    want = rtt_summary(f32(rtts))
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


# ---- round trip ---------------------------------------------------------------------


def test_results_recorded_and_queried_back(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    rtts_a = [0.21, 0.35, 0.18, 0.9, 0.4, 0.22, 0.27, 1.7, 0.3, 0.25]
    res: list[ProbeResult] = []
    t = NOW - 100
    for i, r in enumerate(rtts_a):
        res.append(reply("a.example", i, r, t + i, address="127.0.0.1"))
    # every other outcome once or twice; only the first five kinds count as sent
    res += [
        other("a.example", 20, Outcome.TIMEOUT, t + 20, address="127.0.0.1"),
        other("a.example", 21, Outcome.TIMEOUT, t + 21, address="127.0.0.1"),
        other("a.example", 22, Outcome.UNREACHABLE, t + 22, icmp_type=3, icmp_code=1,
              router="127.0.0.9"),
        other("a.example", 23, Outcome.TIME_EXCEEDED, t + 23, router="127.0.0.8"),
        other("a.example", 24, Outcome.SEND_ERROR, t + 24, errno=101),
        other("a.example", 25, Outcome.LOCAL_DOWN, t + 25),
        other("a.example", 26, Outcome.RESOLVE_ERROR, t + 26, address=None),
        ProbeResult("a.example", "127.0.0.1", 3, Outcome.DUPLICATE, rtt_ms=5.0, time=t + 27),
        ProbeResult("a.example", "127.0.0.1", 7, Outcome.LATE, rtt_ms=1500.0, time=t + 28),
    ]  # fmt: skip
    rtts_b = [1.0, 2.0, 3.0]
    res += [reply("127.0.0.2", i, r, t + i) for i, r in enumerate(rtts_b)]

    async def go() -> ResultStore:
        store = ResultStore(db)
        await store.start()
        store.submit(res)
        assert await store.flush(5.0)
        assert store.stats()["written"] == len(res)
        await store.close()
        return store

    store = run(go())
    assert isinstance(store, ResultStore)
    a = store.target_stats("a.example")
    assert a is not None
    assert a["sent"] == 10 + 5  # replies + timeout x2, unreachable, time exceeded, send error
    assert a["received"] == 10
    assert a["loss"] == pytest.approx(5 / 15)
    assert (a["timeouts"], a["unreachable"], a["time_exceeded"], a["send_errors"]) == (2, 1, 1, 1)
    assert (a["local_down"], a["resolve_errors"], a["duplicates"], a["late"]) == (1, 1, 1, 1)
    assert a["address"] == "127.0.0.1"
    assert a["approximate"] is False
    check_stats(a, rtts_a)  # duplicate (5 ms) and late (1500 ms) RTTs are not in here
    b = store.target_stats("127.0.0.2")
    assert b is not None and b["sent"] == b["received"] == 3 and b["loss"] == 0.0
    check_stats(b, rtts_b)
    assert [s["target"] for s in store.all_stats()] == ["127.0.0.2", "a.example"]
    assert store.target_stats("nobody") is None

    # windows
    w = store.target_stats("a.example", since=t + 2, until=t + 5)
    assert w is not None and w["sent"] == 4
    check_stats(w, rtts_a[2:6])
    assert store.target_stats("a.example", since=t + 1000) is None
    assert [s["target"] for s in store.all_stats(since=t + 15)] == ["a.example"]

    # recent: newest `limit`, oldest first, fields intact
    rec = store.recent("a.example", limit=3)
    assert [r.seq for r in rec] == [26, 3, 7]
    assert rec[1].outcome is Outcome.DUPLICATE and rec[1].rtt_ms == 5.0
    full = store.recent("a.example", limit=100)
    want = sorted((r for r in res if r.target == "a.example"), key=lambda r: r.time)
    assert full == want  # every field round-trips, address included
    assert store.recent("nobody") == []


def test_results_are_held_and_packed_per_target(tmp_path: Path) -> None:
    """ProbeResults wait chunk_window_s in the queue, so the results of a target from
    many submits (engine ticks) go into one row, in one transaction; a flush writes
    what is held at once."""
    db = tmp_path / "fp.db"
    statements: list[str] = []

    async def go() -> tuple[float, float]:
        store = ResultStore(db, batch_size=100, flush_interval_s=0.02, chunk_window_s=0.4)
        await store.start()
        conn = store._writer.conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        t = time.monotonic()
        for i in range(10):  # 10 ticks of 2 targets x 50
            store.submit(
                reply(f"127.0.0.{1 + j % 2}", i * 100 + j, 0.1, NOW + i * 100 + j)
                for j in range(100)
            )
            await asyncio.sleep(0)
        while store.stats()["written"] < 1000 and time.monotonic() - t < 5:
            await asyncio.sleep(0.01)
        waited = time.monotonic() - t
        store.submit([reply("127.0.0.1", 5000, 0.1, NOW + 5000)])
        t = time.monotonic()
        assert await store.flush(5.0)
        flushed = time.monotonic() - t
        await store.close()
        return waited, flushed

    out = run(go())
    assert isinstance(out, tuple)
    waited, flushed = out
    assert 0.35 <= waited < 2.0 and flushed < 0.3
    commits = sum(1 for s in statements if s.strip().upper() == "COMMIT")
    assert commits == 2  # the 1000 held ones, then the flushed one
    # two targets: one chunk row each, then the flushed one
    assert count_rows(db) == 3 and ResultStore(db).count_results() == 1001
    assert stored_seqs(db) == [*range(1000), 5000]


def test_chunks_are_written_in_batches_of_records(tmp_path: Path) -> None:
    """batch_size counts records: 100 chunks of 10 with batch_size 100 take ~10
    transactions (chunks are not held: the engine already packed a window)."""
    db = tmp_path / "fp.db"
    statements: list[str] = []

    async def go() -> None:
        store = ResultStore(db, batch_size=100, flush_interval_s=0.05)
        await store.start()
        conn = store._writer.conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        store.submit_chunks((f"127.0.1.{k}", None, make_chunk(NOW, 10)) for k in range(100))
        t = time.monotonic()
        while store.stats()["written"] < 1000 and time.monotonic() - t < 5:
            await asyncio.sleep(0.01)
        await store.close()

    run(go())
    commits = sum(1 for s in statements if s.strip().upper() == "COMMIT")
    assert commits == 10 and count_rows(db) == 100


def test_submit_from_another_thread(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"

    async def go() -> None:
        store = ResultStore(db, batch_size=50, flush_interval_s=10.0)
        await store.start()
        th = threading.Thread(
            target=store.submit, args=([reply("127.0.0.1", i, 0.1, NOW + i) for i in range(120)],)
        )
        th.start()
        th.join()
        assert await store.flush(5.0)
        await store.close()

    run(go())
    assert ResultStore(db).count_results() == 120


# ---- rollups and retention ----------------------------------------------------------


def make_history(start: float, seconds: int, step: int) -> tuple[list[ProbeResult], list[float]]:
    """One target, a probe every `step` s; every 7th times out; RTTs vary smoothly."""
    res = []
    rtts = []
    for i in range(0, seconds, step):
        if i % 7 == 3:
            res.append(other("127.0.0.1", i, Outcome.TIMEOUT, start + i))
        else:
            r = 0.5 + 0.3 * math.sin(i / 500) + (i % 13) * 0.01
            rtts.append(r)
            res.append(reply("127.0.0.1", i, r, start + i))
    return res, rtts


def test_rollup_keeps_totals_and_deletes_old_raw_rows(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    start = math.floor((NOW - 3 * 3600) / 60) * 60 + 1  # 3 h of history, 1 s past a minute
    res, rtts = make_history(start, 3 * 3600, 5)
    cutoff = math.floor((NOW - 3600) / 60) * 60

    async def go() -> tuple[int, ResultStore, list[chunk.Columns]]:
        # 97 results a batch: chunks of ~8 minutes that do not start on a minute
        store = ResultStore(db, retention_s=3600, rollup_interval_s=math.inf, batch_size=97)
        await store.start()
        for i in range(0, len(res), 97):
            store.submit(res[i : i + 97])
            assert await store.flush(10.0)
        before = store.target_stats("127.0.0.1")
        assert before is not None and before["approximate"] is False
        check_stats(before, rtts)
        chunks = stored_records(db)
        n = await store.rollup(now=NOW)
        await store.close()
        return n, store, chunks

    n, store, chunks = run(go())  # type: ignore[misc]
    # Only chunks wholly older than the cutoff are folded; the one over it waits.
    folded = [c for c in chunks if c.t[-1] < cutoff]
    straddling = [c for c in chunks if c.t[0] < cutoff <= c.t[-1]]
    assert len(straddling) == 1 and len(folded) > 10
    old_t = [t for c in folded for t in c.t]
    assert n == len(old_t)
    left = stored_records(db)
    assert [list(c.t) for c in left] == [list(c.t) for c in chunks if c.t[-1] >= cutoff]
    assert store.count_results() == len(res)  # raw + rolled: nothing lost, nothing twice
    conn = sqlite3.connect(db)
    minutes = {int(t // 60) for t in old_t}
    assert conn.execute("SELECT count(*) FROM rollups").fetchone()[0] == len(minutes)
    # one minute checked column by column against its raw results
    m = sorted(minutes)[5]
    in_m = [r for r in res if int(r.time // 60) == m]
    m_rtts = f32([r.rtt_ms for r in in_m if r.rtt_ms is not None])
    row = conn.execute(
        "SELECT sent, received, timeouts, min_ms, max_ms, sum_ms, p50_ms, jitter_n "
        "FROM rollups WHERE minute = ?",
        (m * 60,),
    ).fetchone()
    conn.close()
    summ = rtt_summary(m_rtts)
    assert row[0] == len(in_m) and row[1] == len(m_rtts) and row[2] == len(in_m) - len(m_rtts)
    assert row[3] == summ["min_ms"] and row[4] == summ["max_ms"]
    assert row[5] == pytest.approx(sum(m_rtts)) and row[6] == pytest.approx(summ["p50_ms"])
    assert row[7] == len(m_rtts) - 1

    after = store.target_stats("127.0.0.1")
    assert after is not None and after["approximate"] is True
    want = rtt_summary(f32(rtts))
    assert after["sent"] == len(res) and after["received"] == len(rtts)
    assert after["timeouts"] == len(res) - len(rtts)
    assert after["min_ms"] == want["min_ms"] and after["max_ms"] == want["max_ms"]
    assert after["avg_ms"] == pytest.approx(want["avg_ms"], rel=1e-12)
    assert after["stddev_ms"] == pytest.approx(want["stddev_ms"], rel=1e-9)
    # jitter combines exactly: first/last RTT of each minute bridge the boundaries
    assert after["jitter_ms"] == pytest.approx(want["jitter_ms"], rel=1e-9)
    # percentiles of rolled-up minutes are estimates: close, not equal
    spread = want["max_ms"] - want["min_ms"]  # type: ignore[operator]
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        assert abs(after[k] - want[k]) < 0.05 * spread, k  # type: ignore[operator]

    # a window inside the rolled-up range holds the minutes that overlap it
    lo, hi = start + 600, start + 1199
    w = store.target_stats("127.0.0.1", since=lo, until=hi)
    assert w is not None and w["approximate"] is True
    in_w = [r for r in res if lo - 60 < (r.time // 60) * 60 <= hi]
    assert w["sent"] == len(in_w)
    assert w["received"] == len([r for r in in_w if r.outcome is Outcome.REPLY])
    series = store.series("127.0.0.1", None, None, 600)
    assert sum(b["sent"] for b in series) == len(res)
    assert sum(b["received"] for b in series) == len(rtts)
    assert all(b["p5_ms"] <= b["p50_ms"] <= b["p95_ms"] for b in series)
    assert series == sorted(series, key=lambda b: b["time"])


def test_rollup_merges_late_stragglers(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    t0 = math.floor((NOW - 7200) / 60) * 60

    async def go() -> ResultStore:
        store = ResultStore(db, retention_s=3600, rollup_interval_s=math.inf)
        await store.start()
        store.submit([reply("127.0.0.1", i, 1.0 + i, t0 + i) for i in range(3)])
        await store.flush()
        assert await store.rollup(now=NOW) == 3
        # results for an already folded minute arrive later (a slow writer elsewhere)
        store.submit(
            [reply("127.0.0.1", 3, 10.0, t0 + 30), other("127.0.0.1", 4, Outcome.TIMEOUT, t0 + 31)]
        )
        await store.flush()
        assert await store.rollup(now=NOW) == 2
        await store.close()
        return store

    store = run(go())
    assert isinstance(store, ResultStore)
    assert count_rows(db, "rollups") == 1 and count_rows(db) == 0
    s = store.target_stats("127.0.0.1")
    assert s is not None
    assert (s["sent"], s["received"], s["timeouts"]) == (5, 4, 1)
    assert (s["min_ms"], s["max_ms"]) == (1.0, 10.0)
    assert s["avg_ms"] == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_writer_rolls_up_on_its_own(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    old = [reply("127.0.0.1", i, 0.5, NOW - 7200 + i) for i in range(50)]

    async def go() -> dict[str, object]:
        store = ResultStore(db, retention_s=3600, rollup_interval_s=0.2, flush_interval_s=0.05,
                            chunk_window_s=0.05)  # fmt: skip
        await store.start()
        store.submit(old)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if store.stats()["rolled_up"]:
                break
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["rolled_up"] == 50
    assert count_rows(db) == 0 and count_rows(db, "rollups") >= 1


def test_quantiles_of_mixture() -> None:
    assert _quantiles([(0.0, 10.0, 10.0)], [0.5, 0.9]) == pytest.approx([5.0, 9.0])
    assert _quantiles([(1.0, 1.0, 1.0), (3.0, 3.0, 1.0)], [0.25, 0.75]) == [1.0, 3.0]
    # a point mass inside a uniform piece
    q = _quantiles([(0.0, 2.0, 2.0), (1.0, 1.0, 2.0)], [0.5])
    assert q == [1.0]


# ---- queue, drops and failures -------------------------------------------------------


def test_full_queue_drops_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "fp.db"

    async def go() -> dict[str, object]:
        store = ResultStore(db, max_queue=100, flush_interval_s=10.0)
        await store.start()
        with caplog.at_level(logging.ERROR, logger="fastping.store"):
            store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(250))
        assert store.stats()["queued"] == 100 and store.stats()["dropped"] == 150
        await store.close()

        store.submit([reply("127.0.0.1", 999, 0.1, NOW)])  # after close: counted, not held
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 100 and stats["dropped"] == 151 and stats["queued"] == 0
    assert stored_seqs(db) == list(range(100))  # the accepted ones, all of them
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "dropped" in errors[0].getMessage()


def test_malformed_results_are_counted_not_retried_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller bug (a result that cannot be stored) must not block the good results
    around it: the bad ones are dropped, counted and logged; the rest are written."""
    db = tmp_path / "fp.db"
    good = [reply("127.0.0.1", i, 0.1, NOW + i) for i in range(20)]
    bad_outcome = ProbeResult("127.0.0.1", "127.0.0.1", 100, "bogus", time=NOW)  # type: ignore[arg-type]
    bad_rtt = ProbeResult("127.0.0.1", "127.0.0.1", 101, Outcome.REPLY, rtt_ms=[1], time=NOW)  # type: ignore[arg-type]

    async def go() -> dict[str, object]:
        store = ResultStore(db, flush_interval_s=0.02)
        await store.start()
        with caplog.at_level(logging.ERROR, logger="fastping.store"):
            store.submit([*good[:10], bad_outcome, bad_rtt, *good[10:]])
            assert await store.flush(5.0)
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 20 and stats["dropped"] == 2 and stats["write_failures"] == 0
    assert stored_seqs(db) == list(range(20))
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_malformed_extra_fields_leave_no_half_row(tmp_path: Path) -> None:
    """ICMP error fields go to a side table; a result whose side row cannot be written
    is dropped whole (no results row without its router), the rest keep theirs."""
    db = tmp_path / "fp.db"
    ok = other("127.0.0.1", 1, Outcome.UNREACHABLE, NOW + 1, icmp_type=3, icmp_code=1,
               router="127.0.0.9")  # fmt: skip
    bad_router = other("127.0.0.1", 2, Outcome.UNREACHABLE, NOW + 2, router=["x"])
    err = other("127.0.0.1", 3, Outcome.SEND_ERROR, NOW + 3, errno=101)

    async def go() -> dict[str, object]:
        store = ResultStore(db, flush_interval_s=0.02)
        await store.start()
        store.submit([reply("127.0.0.1", 0, 0.1, NOW), ok, bad_router, err])
        assert await store.flush(5.0)
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 3 and stats["dropped"] == 1
    assert stored_seqs(db) == [0, 1, 3]
    assert count_rows(db, "results_extra") == 2  # the reply needs none
    rec = ResultStore(db).recent("127.0.0.1")
    assert [(r.seq, r.icmp_type, r.icmp_code, r.router, r.errno) for r in rec] == [
        (0, None, None, None, None),
        (1, 3, 1, "127.0.0.9", None),
        (3, None, None, None, 101),
    ]


def test_flush_waiting_elsewhere_returns_when_close_counts_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"

    async def go() -> tuple[bool, dict[str, object]]:
        store = ResultStore(db, flush_interval_s=0.02, retry_initial_s=0.02, busy_timeout_ms=20)
        await store.start()
        with exclusive_lock(db):
            store.submit(reply("127.0.0.1", i, 0.1, NOW) for i in range(5))
            waiter = asyncio.create_task(store.flush())  # no timeout of its own
            await store.close(timeout_s=0.2)
            done = await asyncio.wait_for(waiter, 2.0)
        return done, store.stats()

    out = run(go())
    assert isinstance(out, tuple)
    done, stats = out
    # flush() promises "written or counted as dropped": close() counted them
    assert done is True and stats["dropped"] == 5 and stats["written"] == 0


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_locked_database_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"

    async def go() -> dict[str, object]:
        store = ResultStore(
            db, batch_size=100, flush_interval_s=0.02, retry_initial_s=0.02, retry_max_s=0.1,
            busy_timeout_ms=20,
        )  # fmt: skip
        await store.start()
        store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(50))
        assert await store.flush(5.0)
        with exclusive_lock(db):
            for k in range(10):
                store.submit(reply("127.0.0.1", 50 + k * 100 + j, 0.1, NOW) for j in range(100))
                await asyncio.sleep(0.03)
            assert await store.flush(0.3) is False  # still locked: nothing can be written
            st = store.stats()
            assert st["write_failures"] >= 2 and st["queued"] == 1000
            assert "SQLITE_BUSY" in str(st["last_error"])
        assert await store.flush(10.0)
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 1050 and stats["dropped"] == 0 and stats["retries"] >= 1
    assert stored_seqs(db) == list(range(1050))


def test_close_while_failing_counts_the_rest_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "fp.db"

    async def go() -> dict[str, object]:
        store = ResultStore(db, flush_interval_s=0.02, retry_initial_s=0.02, busy_timeout_ms=20)
        await store.start()
        with exclusive_lock(db), caplog.at_level(logging.ERROR, logger="fastping.store"):
            store.submit(reply("127.0.0.1", i, 0.1, NOW) for i in range(77))
            t = time.monotonic()
            await store.close(timeout_s=0.3)
            assert time.monotonic() - t < 3.0
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 0 and stats["dropped"] == 77 and stats["queued"] == 0
    assert any("unwritten" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert count_rows(db) == 0


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs needs root and mount(8)",
)


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fp4-store-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        d.rmdir()


@needs_root
def test_read_only_filesystem_loses_nothing() -> None:
    """The database lies on a read-only mount; results wait in the queue and are all
    written once the mount is writable again."""
    with tmpfs("4m") as d:
        ro = Path(tempfile.mkdtemp(prefix="fp4-ro-"))
        try:

            async def seed() -> None:
                store = ResultStore(d / "fp.db")
                await store.start()
                store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(10))
                await store.close()

            run(seed())
            subprocess.run(["mount", "--bind", str(d), str(ro)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)

            async def go() -> dict[str, object]:
                store = ResultStore(
                    ro / "fp.db", flush_interval_s=0.02, retry_initial_s=0.02, retry_max_s=0.1
                )
                await store.start()
                store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(10, 510))
                assert await store.flush(0.5) is False
                st = store.stats()
                assert st["written"] == 0 and st["queued"] == 500 and st["write_failures"] >= 2
                subprocess.run(["mount", "-o", "remount,bind,rw", str(ro)], check=True)
                assert await store.flush(10.0)
                await store.close()
                return store.stats()

            stats = run(go())
            assert isinstance(stats, dict)
            assert stats["written"] == 500 and stats["dropped"] == 0
            assert stored_seqs(d / "fp.db") == list(range(510))
        finally:
            subprocess.run(["umount", str(ro)], check=False)
            ro.rmdir()


@needs_root
def test_full_disk_counts_exactly_what_was_dropped() -> None:
    """A 64 KiB tmpfs fills up: what fits in the queue is kept and written once space
    is back; what did not fit is counted, result by result."""
    with tmpfs("64k") as d:
        db = d / "fp.db"

        async def go() -> tuple[dict[str, object], list[int]]:
            store = ResultStore(
                db, batch_size=200, max_queue=3000, flush_interval_s=0.02,
                retry_initial_s=0.02, retry_max_s=0.1,
            )  # fmt: skip
            await store.start()
            accepted: list[int] = []
            for i in range(8000):
                before = store.stats()["dropped"]
                store.submit([reply("127.0.0.1", i, 0.1, NOW + i)])
                if store.stats()["dropped"] == before:
                    accepted.append(i)
                if i % 200 == 0:
                    await asyncio.sleep(0.005)
            assert await store.flush(0.5) is False  # the disk is full
            st = store.stats()
            assert "SQLITE_FULL" in str(st["last_error"])
            assert st["dropped"] == 8000 - len(accepted) > 0
            assert st["written"] + st["queued"] == len(accepted)
            subprocess.run(["mount", "-o", "remount,size=8m", str(d)], check=True)
            assert await store.flush(10.0)
            await store.close()
            return store.stats(), accepted

        out = run(go())
        assert isinstance(out, tuple)
        stats, accepted = out
        assert stats["written"] == len(accepted)
        assert stats["dropped"] == 8000 - len(accepted)
        assert stored_seqs(db) == accepted


# ---- errors ---------------------------------------------------------------------------


def test_missing_database_gives_clear_error(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "nope.db")
    with pytest.raises(ConfigError, match="no fastping database at .*nope.db.*fastping monitor"):
        store.all_stats()


def test_foreign_file_gives_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello, not a database\n" * 100)
    with pytest.raises(ConfigError, match="not a fastping database"):
        ResultStore(p).targets()


def test_start_in_missing_directory_raises(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "no" / "such" / "fp.db")
    with pytest.raises(ConfigError, match="does not exist"):
        run(store.start())


@pytest.mark.parametrize("kw", [{"retention_s": 0}, {"batch_size": -1}, {"max_queue": 0}])
def test_bad_settings_rejected(tmp_path: Path, kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="is not allowed: must be > 0"):
        ResultStore(tmp_path / "fp.db", **kw)  # type: ignore[arg-type]


# ---- chunks ----------------------------------------------------------------------------

REPLY, TIMEOUT = chunk.OUTCOME_CODE[Outcome.REPLY], chunk.OUTCOME_CODE[Outcome.TIMEOUT]


def make_chunk(t0: float, n: int, step_s: float = 1.0, lose_every: int = 4, seq0: int = 0,
               rtt0: float = 0.2) -> bytes:  # fmt: skip
    """n records of one target from t0, every `lose_every`-th a timeout; RTTs with at
    most 4 significant digits (they read back from float32 as written)."""
    t = [t0 + i * step_s for i in range(n)]
    lost = [i % lose_every == lose_every - 1 for i in range(n)]
    rtt = [None if x else round(rtt0 + 0.013 * ((seq0 + i) % 17), 3) for i, x in enumerate(lost)]
    return chunk.pack(
        t, rtt, [seq0 + i for i in range(n)], [TIMEOUT if x else REPLY for x in lost],
        [None if x else 64 for x in lost],
    )  # fmt: skip


def as_results(target: str, address: str | None, blob: bytes) -> list[ProbeResult]:
    """What recent() should give back for the records of a chunk."""
    c = chunk.unpack(blob)
    return [
        ProbeResult(
            target,
            address,
            c.seq[i],
            chunk.OUTCOME_BY_CODE[c.code[i]],
            rtt_ms=None if c.rtt_ms[i] != c.rtt_ms[i] else round(c.rtt_ms[i], 3),
            ttl=c.ttl[i] or None,
            time=c.t[i],
        )  # fmt: skip
        for i in range(len(c))
    ]


def direct_stats(results: list[ProbeResult]) -> dict[str, object]:
    """The numbers target_stats must give, worked out here from the results."""
    rs = sorted(results, key=lambda r: r.time)
    sent = [r for r in rs if r.outcome in (Outcome.REPLY, Outcome.TIMEOUT, Outcome.UNREACHABLE,
                                           Outcome.TIME_EXCEEDED, Outcome.SEND_ERROR)]  # fmt: skip
    rtts = [r.rtt_ms for r in rs if r.outcome is Outcome.REPLY and r.rtt_ms is not None]
    received = sum(1 for r in rs if r.outcome is Outcome.REPLY)
    return {"sent": len(sent), "received": received,
            "loss": (len(sent) - received) / len(sent), **rtt_summary(f32(rtts))}  # fmt: skip


def test_chunks_and_results_mixed_for_one_target(tmp_path: Path) -> None:
    """The engine's chunks (replies, timeouts) and ProbeResults (errors, sent at once)
    of one target overlap in time; recent() and target_stats() see one time line."""
    db = tmp_path / "fp.db"
    base = NOW - 100
    chunks = [make_chunk(base + 10 * k, 10, seq0=10 * k) for k in range(3)]
    singles = [
        other("127.0.0.1", 100, Outcome.SEND_ERROR, base + 2.5, errno=101),
        other(
            "127.0.0.1",
            101,
            Outcome.UNREACHABLE,
            base + 12.5,
            icmp_type=3,
            icmp_code=1,
            router="127.0.0.9",
        ),  # fmt: skip
        reply("127.0.0.1", 102, 0.75, base + 29.5),
        other("127.0.0.1", 103, Outcome.DUPLICATE, base + 30.5, rtt_ms=0.5),
    ]
    named = make_chunk(base, 5, lose_every=100, rtt0=1.0)

    async def go() -> dict[str, object]:
        store = ResultStore(db, flush_interval_s=0.02)
        await store.start()
        store.submit_chunks(
            [("127.0.0.1", "127.0.0.1", chunks[0]), ("h.example", "127.0.0.2", named)]
        )
        store.submit(singles[:2])
        store.submit_chunks(("127.0.0.1", "127.0.0.1", c) for c in chunks[1:])
        store.submit(singles[2:])
        assert await store.flush(5.0)
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 35 + 4 and stats["dropped"] == 0 and stats["queued"] == 0
    # 4 chunks, and the singles (all in one write batch) packed into one
    assert stats["rows_written"] == 4 + 1
    store = ResultStore(db)
    want = sorted(
        [r for c in chunks for r in as_results("127.0.0.1", "127.0.0.1", c)] + singles,
        key=lambda r: r.time,
    )
    assert store.recent("127.0.0.1", limit=1000) == want  # extras joined back
    assert store.recent("127.0.0.1", limit=5) == want[-5:]
    assert store.count_results("127.0.0.1") == 34 and store.count_results() == 39
    got = store.target_stats("127.0.0.1")
    assert got is not None
    for k, v in direct_stats(want).items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    assert (got["send_errors"], got["unreachable"], got["duplicates"]) == (1, 1, 1)
    assert got["timeouts"] == 6 and got["approximate"] is False
    h = store.target_stats("h.example")
    assert h is not None and h["address"] == "127.0.0.2" and h["received"] == 5
    assert store.recent("h.example", 1)[0].address == "127.0.0.2"
    assert [s["target"] for s in store.all_stats()] == ["127.0.0.1", "h.example"]
    assert store.all_stats()[0] == got


def test_chunk_straddling_the_window_counts_only_records_inside(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    t0 = math.floor(NOW / 10) * 10 - 50
    blob = make_chunk(t0, 20, lose_every=5)  # t0 .. t0+19, one row

    async def go() -> None:
        store = ResultStore(db)
        await store.start()
        store.submit_chunks([("127.0.0.1", None, blob)])
        await store.close()

    run(go())
    assert count_rows(db) == 1
    store = ResultStore(db)
    recs = as_results("127.0.0.1", None, blob)
    inside = [r for r in recs if t0 + 3.5 <= r.time <= t0 + 12]  # 4 .. 12: 9 records
    w = store.target_stats("127.0.0.1", since=t0 + 3.5, until=t0 + 12)
    assert w is not None and w["sent"] == len(inside) == 9
    assert w["first_time"] == t0 + 4 and w["last_time"] == t0 + 12
    for k, v in direct_stats(inside).items():
        assert w[k] == pytest.approx(v, rel=1e-12), k
    assert w["address"] == "127.0.0.1"  # address None was stored as '' (none): the name
    assert store.count_results("127.0.0.1", t0 + 3.5, t0 + 12) == 9
    assert store.count_results(since=t0 + 19) == 1 and store.count_results(until=t0 - 1) == 0
    assert store.target_stats("127.0.0.1", since=t0 + 19.5) is None
    series = store.series("127.0.0.1", t0 + 3.5, t0 + 12, 5.0)
    assert [b["sent"] for b in series] == [1, 5, 3]  # 4 | 5..9 | 10..12
    assert store.time_range() == (t0, t0 + 19)


def test_rollup_of_chunks_equals_raw_stats(tmp_path: Path) -> None:
    """Chunks of 10 s not aligned to minutes, rolled up in two rounds (a chunk straddles
    the first cutoff, so its minute is folded in two parts): the totals of the rollups
    equal those of the raw records: counts, min and max exactly, mean, stddev and
    jitter within float rounding; percentiles close."""
    db = tmp_path / "fp.db"
    start = math.floor((NOW - 7200) / 60) * 60 + 3
    chunks = [make_chunk(start + 10 * k, 10, seq0=10 * k, lose_every=6) for k in range(60)]
    cut1 = start - 3 + 300  # minute boundary; the chunk from start+290 reaches over it

    async def go() -> tuple[dict[str, object], dict[str, object], dict[str, object], int, int]:
        store = ResultStore(db, retention_s=3600, rollup_interval_s=math.inf)
        await store.start()
        store.submit_chunks(("127.0.0.1", "127.0.0.1", c) for c in chunks)
        assert await store.flush(5.0)
        raw = store.target_stats("127.0.0.1")
        n1 = await store.rollup(now=cut1 + 3600)
        mid = store.target_stats("127.0.0.1")
        n2 = await store.rollup(now=NOW)
        after = store.target_stats("127.0.0.1")
        await store.close()
        assert raw is not None and mid is not None and after is not None
        return raw, mid, after, n1, n2

    raw, mid, after, n1, n2 = run(go())  # type: ignore[misc]
    assert n1 == 290 and n2 == 600 - 290  # the straddling chunk waited for round two
    assert count_rows(db) == 0 and count_rows(db, "rollups") == 11  # from 3 s past a minute
    assert raw["approximate"] is False and after["approximate"] is True
    for got in (mid, after):
        for k in ("sent", "received", "timeouts", "min_ms", "max_ms"):
            assert got[k] == raw[k], k
        assert got["first_time"] == start - 3  # a rollup minute's time is its start
        for k in ("avg_ms", "stddev_ms", "jitter_ms"):
            assert got[k] == pytest.approx(raw[k], rel=1e-9), k
        for k in ("p50_ms", "p95_ms", "p99_ms"):
            assert abs(got[k] - raw[k]) < 0.1 * (raw["max_ms"] - raw["min_ms"]), k  # type: ignore[operator]
    assert ResultStore(db).count_results() == 600


def test_submit_chunks_overflow_counts_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "fp.db"

    async def go() -> dict[str, object]:
        store = ResultStore(db, max_queue=25, flush_interval_s=10.0, batch_size=1000)
        await store.start()
        with caplog.at_level(logging.ERROR, logger="fastping.store"):
            store.submit_chunks(
                ("127.0.0.1", None, make_chunk(NOW + 10 * k, n, seq0=10 * k))
                for k, n in enumerate((10, 10, 10, 3))
            )
            # a chunk that does not fit is dropped whole; the smaller one after it fits
            assert store.stats()["queued"] == 23 and store.stats()["dropped"] == 10
            store.submit(reply("127.0.0.1", 100 + i, 0.1, NOW + 100 + i) for i in range(5))
            assert store.stats()["queued"] == 25 and store.stats()["dropped"] == 13
        await store.close()
        store.submit_chunks([("127.0.0.1", None, make_chunk(NOW, 4))])  # after close
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 25 and stats["dropped"] == 17 and stats["queued"] == 0
    assert ResultStore(db).count_results() == 25
    assert stored_seqs(db) == [*range(20), 30, 31, 32, 100, 101]
    assert any("dropped" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_submit_chunks_rejects_what_is_not_a_chunk(tmp_path: Path) -> None:
    """Checked at submit time, in the caller's stack; nothing of the call is queued."""
    good = make_chunk(NOW, 3)
    store = ResultStore(tmp_path / "fp.db")
    with pytest.raises(chunk.ChunkError, match="'127.0.0.2' has 55 bytes, not a whole number"):
        store.submit_chunks([("127.0.0.1", None, good), ("127.0.0.2", None, good + b"\x01")])
    bad_code = bytearray(good)
    bad_code[3 * 16] = 200
    with pytest.raises(chunk.ChunkError, match="unknown outcome code"):
        store.submit_chunks([("127.0.0.1", None, bytes(bad_code))])
    with pytest.raises(TypeError, match="target must be a str"):
        store.submit_chunks([(None, None, good)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="address of '127.0.0.1' must be a str"):
        store.submit_chunks([("127.0.0.1", 5, good)])  # type: ignore[list-item]
    assert store.stats()["queued"] == 0 and store.stats()["dropped"] == 0
    store.submit_chunks([("127.0.0.1", None, b"")])  # empty: nothing to write
    assert store.stats()["queued"] == 0


def test_submit_chunks_copies_buffers_and_sorts_records(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    t = [NOW + 3, NOW + 1, NOW + 2]
    unsorted = chunk.pack(t, [0.3, 0.1, 0.2], [3, 1, 2], [REPLY] * 3, [64] * 3)
    buf = bytearray(make_chunk(NOW + 10, 2))

    async def go() -> None:
        store = ResultStore(db)
        await store.start()
        store.submit_chunks([("127.0.0.1", None, unsorted), ("127.0.0.1", None, buf)])
        buf[:] = b"\x00" * len(buf)  # the caller reuses its buffer
        await store.close()

    run(go())
    rows = stored_records(db)  # checks t0/t1/n and time order of every row
    assert [list(c.seq) for c in rows] == [[1, 2, 3], [0, 1]]
    assert [r.rtt_ms for r in ResultStore(db).recent("127.0.0.1")] == [0.1, 0.2, 0.3, 0.2, 0.213]


def test_chunks_wait_out_a_locked_database(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"

    async def go() -> dict[str, object]:
        store = ResultStore(db, flush_interval_s=0.02, retry_initial_s=0.02, retry_max_s=0.1,
                            busy_timeout_ms=20)  # fmt: skip
        await store.start()
        with exclusive_lock(db):
            store.submit_chunks(
                (f"127.0.0.{k}", None, make_chunk(NOW, 10, seq0=10 * k)) for k in range(1, 101)
            )
            assert await store.flush(0.3) is False
            st = store.stats()
            assert st["queued"] == 1000 and st["written"] == 0 and st["write_failures"] >= 1
        assert await store.flush(10.0)
        await store.close()
        return store.stats()

    stats = run(go())
    assert isinstance(stats, dict)
    assert stats["written"] == 1000 and stats["rows_written"] == 100 and stats["dropped"] == 0
    assert ResultStore(db).count_results() == 1000


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE targets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE results (t REAL NOT NULL, tid INTEGER NOT NULL, seq INTEGER NOT NULL,
    outcome INTEGER NOT NULL, rtt_ms REAL, ttl INTEGER, address TEXT);
CREATE INDEX results_tid_t ON results (tid, t);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO targets VALUES (1, '127.0.0.1');
INSERT INTO results VALUES (1700000000.0, 1, 0, 0, 0.1, 64, NULL);
"""


def test_schema_1_database_gives_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA_1)
    conn.close()
    before = db.read_bytes()
    msg = r"old.db'? holds fastping database schema 1 .*older.*move the file aside .* new --db"
    with pytest.raises(ConfigError, match=msg):
        run(ResultStore(db).start())
    with pytest.raises(ConfigError, match=msg):
        ResultStore(db).all_stats()
    assert db.read_bytes() == before  # not touched: no half-new tables in an old file


def test_damaged_row_names_the_target(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"

    async def go() -> None:
        store = ResultStore(db)
        await store.start()
        store.submit_chunks([("127.0.0.1", None, make_chunk(NOW, 3))])
        await store.close()

    run(go())
    conn = sqlite3.connect(db)
    conn.execute("UPDATE results SET data = CAST(data || x'00' AS BLOB)")
    conn.commit()
    conn.close()
    with pytest.raises(chunk.ChunkError, match="'127.0.0.1'.*damaged results row.*55 bytes"):
        ResultStore(db).target_stats("127.0.0.1")


def test_held_results_are_written_when_half_the_queue_fills(tmp_path: Path) -> None:
    """Holding results to pack them never costs a drop: at half of max_queue they are
    written without waiting out chunk_window_s."""
    db = tmp_path / "fp.db"

    async def go() -> tuple[float, dict[str, object]]:
        store = ResultStore(db, max_queue=100, batch_size=10, flush_interval_s=0.02)
        await store.start()
        t = time.monotonic()
        store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(40))
        await asyncio.sleep(0.2)
        assert store.stats()["written"] == 0  # 40 < 50: held (chunk_window_s is 10 s)
        store.submit(reply("127.0.0.1", i, 0.1, NOW + i) for i in range(40, 60))
        while store.stats()["written"] < 60 and time.monotonic() - t < 5:
            await asyncio.sleep(0.01)
        took = time.monotonic() - t
        await store.close()
        return took, store.stats()

    out = run(go())
    assert isinstance(out, tuple)
    took, stats = out
    assert took < 2.0 and stats["written"] == 60 and stats["dropped"] == 0
    assert count_rows(db) == 1
