"""PgResultStore against a PostgreSQL cluster the tests start (initdb of their own, on
127.0.0.1): the same answers as the SQLite store for the same results, partitions
dropped by retention, agents kept apart, and the queue's retry and drop accounting
while the server is down."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastping import chunk
from fastping.results import Outcome, ProbeResult
from fastping.store import ResultStore
from servers import PgServer, need

try:
    import psycopg  # type: ignore[no-redef]

    from fastping.store_pg import PgResultStore, redact
except ImportError:  # pragma: no cover - CI installs the extra
    psycopg = None

NOW = time.time()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if psycopg is None:
        need("psycopg", "pip install 'psycopg[binary]' (the extra 'postgresql')")
    try:
        srv = PgServer()
    except FileNotFoundError as e:
        need("PostgreSQL", str(e))
    try:
        srv.init().start()
        yield srv
    finally:
        srv.cleanup()


def new_database(srv: PgServer) -> str:
    name = "fp_" + uuid.uuid4().hex[:10]
    srv.psql(f"CREATE DATABASE {name}")
    return srv.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return new_database(pg_server)


def sample_results(targets: list[str], n: int, t0: float, step: float = 1.0) -> list[ProbeResult]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        for k, tg in enumerate(targets):
            t = t0 + i * step + k * 0.001
            x = rng.random()
            if x < 0.8:
                out.append(ProbeResult(tg, tg, i, Outcome.REPLY, rtt_ms=rng.uniform(0.1, 30),
                                       ttl=64, time=t))  # fmt: skip
            elif x < 0.9:
                out.append(ProbeResult(tg, tg, i, Outcome.TIMEOUT, time=t))
            else:
                out.append(ProbeResult(tg, tg, i, Outcome.UNREACHABLE, icmp_type=3, icmp_code=1,
                                       router="127.0.0.254", time=t))  # fmt: skip
    return out


def sample_chunks(targets: list[str], n: int, t0: float) -> list[tuple[str, str | None, bytes]]:
    rng = random.Random(11)
    items = []
    for tg in targets:
        t = [t0 + i + 0.5 for i in range(n)]
        codes = bytes(0 if rng.random() < 0.9 else 1 for _ in range(n))
        rtt = [rng.uniform(0.05, 5) if c == 0 else float("nan") for c in codes]
        items.append((tg, tg, chunk.pack(t, rtt, list(range(n)), codes, bytes([64] * n))))
    return items


async def fill(
    store: Any, results: list[ProbeResult], chunks: list[Any], window_s: float | None = None
) -> None:
    """Write ``results`` (in rows of at most ``window_s`` each, as the engine hands
    them over) and ``chunks``."""
    await store.start()
    if window_s is None:
        store.submit(results)
    else:
        by: dict[int, list[ProbeResult]] = {}
        for r in results:
            by.setdefault(int(r.time // window_s), []).append(r)
        for k in sorted(by):
            store.submit(by[k])
            assert await store.flush(30)
    store.submit_chunks(chunks)
    assert await store.flush(30)
    await store.close()


def strip(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d.pop("agent", None)
    d.pop("labels", None)
    return d


def test_same_answers_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    targets = [f"127.0.{i // 200}.{i % 200 + 1}" for i in range(40)]
    results = sample_results(targets, 30, NOW - 300)
    chunks = sample_chunks(targets[:10], 50, NOW - 200)
    lite = ResultStore(tmp_path / "a.db", batch_size=500)
    pg = PgResultStore(pg_url, agent="a1", batch_size=500)
    asyncio.run(fill(lite, results, chunks))
    asyncio.run(fill(pg, results, chunks))
    assert pg.stats()["written"] == lite.stats()["written"] == len(results) + 10 * 50
    assert pg.targets() == lite.targets()
    got = [strip(s) for s in pg.all_stats()]
    want = lite.all_stats()
    assert got == want and len(got) == 40
    assert {s["agent"] for s in pg.all_stats()} == {"a1"}
    for since, until in ((None, None), (NOW - 250, NOW - 190), (NOW - 100, None)):
        assert pg.count_results(since=since, until=until) == lite.count_results(
            since=since, until=until
        )
        assert [strip(s) for s in pg.all_stats(since, until)] == lite.all_stats(since, until)
    tg = targets[3]
    assert pg.recent(tg, 25) == lite.recent(tg, 25)
    assert any(r.router == "127.0.0.254" for r in pg.recent(tg, 100))  # the side rows
    assert pg.series(tg, NOW - 300, NOW, 30) == lite.series(tg, NOW - 300, NOW, 30)
    rows = (
        psycopg.connect(pg_url)
        .execute(  # type: ignore[union-attr]
            "SELECT count(*), count(DISTINCT agent), min(agent) FROM fastping_results"
        )
        .fetchone()
    )
    assert rows[0] == pg.stats()["rows_written"] and rows[1:] == (1, "a1")
    pg.close_reader()


def test_two_agents_one_target_side_by_side(pg_url: str) -> None:
    a = PgResultStore(pg_url, agent="site-a")
    b = PgResultStore(pg_url, agent="site-b")
    a.set_labels({"127.0.0.2": {"site": "x"}})  # written when the store opens
    asyncio.run(fill(a, sample_results(["127.0.0.1", "127.0.0.2"], 10, NOW - 60), []))
    asyncio.run(fill(b, sample_results(["127.0.0.1"], 7, NOW - 60), []))
    rows = a.all_stats()
    assert [(s["target"], s["agent"], s["sent"]) for s in rows] == [
        ("127.0.0.1", "site-a", 10), ("127.0.0.1", "site-b", 7), ("127.0.0.2", "site-a", 10),
    ]  # fmt: skip
    assert [s["target"] for s in a.all_stats(agents=["site-b"])] == ["127.0.0.1"]
    assert [s["target"] for s in a.all_stats(labels={"site": "x"})] == ["127.0.0.2"]
    assert a.count_results(agent="site-b") == 7
    assert a.count_results("127.0.0.1") == 17
    assert len(a.recent("127.0.0.1", 100, agent="site-b")) == 7
    assert a.agents() == ["site-a", "site-b"]
    a.close_reader()


def test_retention_folds_and_drops_whole_partitions(pg_url: str, tmp_path: Path) -> None:
    targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    old = NOW - 3 * 3600  # three hours of partitions of 10 minutes, then the last 10 min
    results = sample_results(targets, 400, old, step=27.0)  # ~3 h
    pg = PgResultStore(pg_url, agent="r", partition_s=600, retention_s=3600)
    lite = ResultStore(tmp_path / "r.db", retention_s=3600)
    asyncio.run(fill(pg, results, [], window_s=60))
    asyncio.run(fill(lite, results, [], window_s=60))
    # a second agent's rows share the partitions; the first agent's rollup folds them
    # too, under their own agent
    other = sample_results(["127.0.0.1"], 100, old, step=60.0)
    asyncio.run(fill(PgResultStore(pg_url, agent="r2", partition_s=600), other, [], 60))
    before = pg.partitions()
    assert len(before) >= 17  # a partition every 10 minutes
    total = pg.count_results(agent="r")
    assert total == len(results) and pg.count_results(agent="r2") == len(other)

    async def roll(store: Any) -> int:
        await store.start()
        n = await store.rollup()
        await store.close()
        return int(n)

    folded = asyncio.run(roll(pg))
    after = pg.partitions()
    cutoff = (NOW - 3600) // 60 * 60
    assert all(p + 600 > cutoff for p in after) and len(after) < len(before)
    assert set(after) <= set(before)
    # nothing lost, only folded
    assert folded > 0 and pg.count_results(agent="r") == total
    assert pg.count_results(agent="r2") == len(other)
    asyncio.run(roll(lite))
    # counts over the whole range agree exactly with SQLite's (which folds by minute)
    mine = pg.all_stats(agents=["r"])
    for s_pg, s_lite in zip(mine, lite.all_stats(since=None), strict=True):
        for k in ("sent", "received", "timeouts", "unreachable", "min_ms", "max_ms"):
            assert s_pg[k] == pytest.approx(s_lite[k]), k
        assert s_pg["approximate"]
    conn = psycopg.connect(pg_url)  # type: ignore[union-attr]
    n_roll = conn.execute(
        "SELECT count(*), array_agg(DISTINCT agent ORDER BY agent) FROM fastping_rollups"
    ).fetchone()
    assert n_roll[0] > 0 and n_roll[1] == ["r", "r2"]
    # the side rows went with their partitions
    assert (
        conn.execute(
            "SELECT count(*) FROM fastping_results_extra WHERE t1 < %s", (min(after),)
        ).fetchone()[0]
        == 0
    )
    conn.close()
    pg.close_reader()


def test_malformed_rows_are_set_aside_and_counted(pg_url: str) -> None:
    good = sample_results(["127.0.0.1"], 5, NOW - 30)
    bad = ProbeResult("127.0.0.9", "127.0.0.9", 1, Outcome.UNREACHABLE, router="a\x00b",
                      time=NOW - 10)  # fmt: skip
    badname = ProbeResult("127.0.0.8\x00", None, 1, Outcome.TIMEOUT, time=NOW - 10)
    # wider than SQLite's 64 bits: refused, not cut to its low bytes
    wide = ProbeResult("127.0.0.7", None, 1, Outcome.SEND_ERROR, errno=2**70, time=NOW - 10)
    big = ProbeResult("127.0.0.6", None, 1, Outcome.SEND_ERROR, errno=2**40, time=NOW - 10)
    pg = PgResultStore(pg_url, agent="m")
    asyncio.run(fill(pg, [*good, bad, badname, wide, big], []))
    st = pg.stats()
    assert st["dropped"] == 3 and st["written"] == 6
    assert pg.count_results() == 6
    assert [r.errno for r in pg.recent("127.0.0.6")] == [2**40]
    pg.close_reader()


def test_server_down_queue_keeps_or_counts_exactly() -> None:
    """A server of its own, stopped under a running store: a big queue keeps every
    result until it is back; a small one counts exactly what did not fit."""
    if psycopg is None:
        need("psycopg", "pip install 'psycopg[binary]'")
    try:
        srv = PgServer()
    except FileNotFoundError as e:
        need("PostgreSQL", str(e))
    srv.init().start()
    try:

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            big = PgResultStore(srv.url, agent="big", retry_max_s=0.5, connect_timeout_s=1,
                                chunk_window_s=0.2)  # fmt: skip
            small = PgResultStore(srv.url, agent="small", max_queue=100, retry_max_s=0.5,
                                  connect_timeout_s=1, chunk_window_s=0.2)  # fmt: skip
            await big.start()
            await small.start()
            big.submit(sample_results(["127.0.0.1"], 20, NOW - 100))
            small.submit(sample_results(["127.0.0.2"], 20, NOW - 100))
            assert await big.flush(10) and await small.flush(10)
            srv.stop()
            big.submit(sample_results(["127.0.0.1"], 300, NOW - 50, step=0.1))
            small.submit(sample_results(["127.0.0.2"], 300, NOW - 50, step=0.1))
            await asyncio.sleep(2.0)
            assert big.stats()["write_failures"] > 0 and big.stats()["queued"] == 300
            assert small.stats()["dropped"] == 200 and small.stats()["queued"] == 100
            srv.start()
            assert await big.flush(20) and await small.flush(20)
            await big.close()
            await small.close()
            return big.stats(), small.stats()

        b, s = asyncio.run(go())
        assert b["dropped"] == 0 and b["written"] == 320 and b["retries"] > 0
        assert s["dropped"] == 200 and s["written"] == 120
        reader = PgResultStore(srv.url)
        assert reader.count_results(agent="big") == 320
        assert reader.count_results(agent="small") == 120
        reader.close_reader()
    finally:
        srv.cleanup()


def test_redact_hides_the_password() -> None:
    if psycopg is None:
        need("psycopg", "pip install 'psycopg[binary]'")
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_slow_server_times_out_and_is_retried(pg_url: str) -> None:
    """A server that does not answer (here: the results table locked by another
    session) costs the writer statement_timeout_s, then the batch is retried; nothing
    is lost."""
    pg = PgResultStore(pg_url, agent="slow", statement_timeout_s=0.5, retry_max_s=0.3,
                       chunk_window_s=0.1)  # fmt: skip

    async def go() -> dict[str, Any]:
        await pg.start()
        pg.submit(sample_results(["127.0.0.1"], 5, NOW - 20))
        assert await pg.flush(10)
        blocker = await asyncio.to_thread(psycopg.connect, pg_url)  # type: ignore[union-attr]
        await asyncio.to_thread(
            blocker.execute, "LOCK TABLE fastping_results IN ACCESS EXCLUSIVE MODE"
        )
        pg.submit(sample_results(["127.0.0.1"], 50, NOW - 10, step=0.1))
        await asyncio.sleep(2.0)  # 2 s of a locked table
        failures = pg.stats()["write_failures"]
        await asyncio.to_thread(blocker.rollback)
        blocker.close()
        assert await pg.flush(10)
        await pg.close()
        st = pg.stats()
        st["failures_while_locked"] = failures
        return st

    st = asyncio.run(go())
    assert st["failures_while_locked"] >= 2
    assert st["dropped"] == 0 and st["written"] == 55
    assert pg.count_results() == 55
    pg.close_reader()
