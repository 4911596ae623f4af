"""Paths in the monitoring engine (issue #19; fastping.pathwatch): the engine traces
its ICMP targets every few seconds through routed namespaces the test makes
(tests/pathlab.py, always removed); a route change mid-run is a ``path_change``
event, stored in SQLite, listed by ``fastping report --paths`` and counted in
``fastping_path_changes_total``; a router that stops answering is not a change.
Every probe goes to addresses inside the lab's namespaces only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import child_env, fastping_cmd
from tests.pathlab import PathLab, target4, target6

from fastping.errors import ConfigError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")

# the lab's targets: two v4 addresses and one v6 behind the chain
TARGETS = [target4(1), target4(2), target6(1)]
TRACE_EVERY_S = 1.0
DEADLINE_S = 30.0  # no wait below is longer: a failure fails, it does not hang


@pytest.fixture
def lab() -> Iterator[PathLab]:
    with PathLab(3, twin=2) as lb:
        yield lb


def _path_a(lab: PathLab, fam: int) -> tuple[str, ...]:
    return tuple(lab.hop_address(h, fam) for h in (1, 2, 3))


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _sample(text: str, name: str, target: str) -> float | None:
    m = re.search(rf'^{name}{{target="{re.escape(target)}"}} (\S+)$', text, re.M)
    return None if m is None else float(m.group(1))


async def _until(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ engine in-process


def test_route_change_is_a_path_change_event_stored_and_counted(
    lab: PathLab, tmp_path: Path
) -> None:
    from fastping.engine import MonitoringEngine
    from fastping.metrics import serve_metrics
    from fastping.pathwatch import PathChange
    from fastping.store import ResultStore

    db = tmp_path / "fp.db"
    got: dict[str, Any] = {}

    async def main() -> None:
        store = ResultStore(db, flush_interval_s=0.1)
        await store.start()
        engine = MonitoringEngine(
            TARGETS, store=store, interval_s=0.5, timeout_s=0.5,
            trace_every_s=TRACE_EVERY_S, trace_options={"max_ttl": 8, "timeout_s": 0.5},
        )  # fmt: skip
        server = serve_metrics(engine, "127.0.0.1:0")
        sub = engine.subscribe(100_000)
        events: list[PathChange] = []

        def pump() -> list[PathChange]:
            events.extend(e for e in sub.drain() if isinstance(e, PathChange))
            return events

        await engine.start()
        try:
            paths = engine.paths
            assert paths is not None
            # baseline: two rounds through r2, every hop answered
            await _until(lambda: paths.rounds >= 2, "two trace rounds")
            got["before"] = {h: engine.path(h) for h in TARGETS}
            got["scrape_before"] = _scrape(server.url)
            assert not pump()
            got["expect_a"] = {f: _path_a(lab, f) for f in (4, 6)}
            lab.set_path("b")  # the route at r1 now goes through r2b
            await _until(lambda: {e.target for e in pump()} == set(TARGETS), "a change each")
            got["after"] = {h: engine.path(h) for h in TARGETS}
            # r1 stops saying time exceeded: hop 1 is silent, the path is the same
            lab.silence(1)
            r0 = paths.rounds
            await _until(lambda: paths.rounds >= r0 + 3, "three rounds with r1 silent")
            pump()
            got["silent"] = {h: engine.path(h) for h in TARGETS}
            got["events"] = list(events)
            got["changes"] = {h: paths.changes(h) for h in TARGETS}
            got["scrape"] = _scrape(server.url)
            got["stats"] = engine.stats()["paths"]
        finally:
            await engine.stop()
            server.close()
            await store.close()

    lab.run(lambda: asyncio.run(main()))

    for h in TARGETS:
        fam = 6 if ":" in h else 4
        before, after, silent = got["before"][h], got["after"][h], got["silent"][h]
        assert before.reached and before.hop_count == 4, before.to_json()
        assert before.path == (*got["expect_a"][fam], before.address)
        # through r2b: hop 2 answers from the twin's address
        assert after.reached and after.hop_count == 4, after.to_json()
        assert after.path[1] == lab.twin_addresses(fam)[1]
        assert after.path[2] in lab.hop_addresses(3, fam)
        # r1 silent: no answer at hop 1, the rest as before
        assert silent.reached and silent.path[0] is None, silent.to_json()
        assert silent.path[1:] == after.path[1:]
    # exactly one change per target: the route change; the silent hop made none
    evs = got["events"]
    assert sorted(e.target for e in evs) == sorted(TARGETS)
    assert got["changes"] == {h: 1 for h in TARGETS}
    for e in evs:
        assert e.kind == "path_change"
        assert e.old == got["before"][e.target].path and e.new == got["after"][e.target].path
        assert e.old_hops == e.new_hops == 4
    st = got["stats"]
    assert st["path_changes"] == 3 and st["errors"] == 0 and st["store_errors"] == 0
    assert st["dropped"] == 0 and st["stored"] == st["traced"] >= 3 * 6

    # metrics: hop counts and the changes, per target; 0 changes before the switch
    for h in TARGETS:
        assert _sample(got["scrape_before"], "fastping_path_changes_total", h) == 0
        assert _sample(got["scrape"], "fastping_path_changes_total", h) == 1
        assert _sample(got["scrape"], "fastping_trace_hops", h) == 4

    # the store: every round's traces, and the three changes with both paths
    with sqlite3.connect(db) as conn:
        n_traces = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        rows = conn.execute(
            "SELECT target, old_hops, new_hops, old_path, new_path FROM path_changes"
        ).fetchall()
        hops = {r[0] for r in conn.execute("SELECT DISTINCT hop_count FROM traces")}
    assert n_traces == st["traced"]
    assert hops == {4}
    assert sorted(r[0] for r in rows) == sorted(TARGETS)
    for target, oh, nh, op, np in rows:
        assert (oh, nh) == (4, 4)
        assert tuple(json.loads(op)) == got["before"][target].path
        assert tuple(json.loads(np)) == got["after"][target].path

    # fastping report: the per-target path line and the --paths listing
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert "paths: 3 targets traced, 3 path changes in the window" in rep.stdout
    section = rep.stdout.split("paths: 3 targets traced", 1)[1].splitlines()
    for h in TARGETS:
        line = next(ln for ln in section if ln.strip().startswith(h + " "))
        assert "4 hops" in line and "changes 1" in line, line
        assert line.rstrip().endswith(" ".join(a or "*" for a in got["silent"][h].path)), line
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--json"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    per_target = {d["target"]: d for d in map(json.loads, rep.stdout.splitlines())}
    assert {t: (d["hop_count"], d["path_changes"]) for t, d in per_target.items()} == {
        h: (4, 1) for h in TARGETS
    }
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--paths", "--json"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    docs = [json.loads(ln) for ln in rep.stdout.splitlines()]
    assert sorted(d["target"] for d in docs) == sorted(TARGETS)
    for d in docs:
        assert tuple(d["old"]) == got["before"][d["target"]].path
        assert tuple(d["new"]) == got["after"][d["target"]].path


def test_an_outage_start_traces_the_target_at_once(lab: PathLab) -> None:
    """on_outage: r3 starts dropping the target's traffic (a blackhole route); the
    target's outage (3 lost probes) gets it traced long before the next round (an
    hour away): its path now ends at r2, a path change."""
    from fastping.engine import MonitoringEngine
    from fastping.pathwatch import PathChange

    target = target4(7)
    got: dict[str, Any] = {}

    async def main() -> None:
        engine = MonitoringEngine(
            [target], interval_s=0.2, timeout_s=0.3, store_flush_s=0.3,
            trace_every_s=3600.0,
            trace_options={"max_ttl": 6, "timeout_s": 0.5, "on_outage": True},
        )  # fmt: skip
        sub = engine.subscribe(100_000)
        events: list[Any] = []
        await engine.start()
        try:
            paths = engine.paths
            assert paths is not None
            await _until(lambda: paths.rounds >= 1, "the first round")
            got["before"] = engine.path(target)
            subprocess.run(["ip", "-n", lab.routers[2], "route", "replace", "blackhole",
                            "10.200.0.0/16"], check=True)  # fmt: skip

            def changed() -> bool:
                events.extend(sub.drain())
                return any(isinstance(e, PathChange) for e in events)

            await _until(changed, "a path change from the outage's trace")
            got["events"] = events
            got["after"] = engine.path(target)
            got["stats"] = paths.stats()
        finally:
            await engine.stop()

    lab.run(lambda: asyncio.run(main()))
    before, after = got["before"], got["after"]
    assert before.reached and before.hop_count == 4
    assert not after.reached and after.hop_count is None, after.to_json()
    # r1 and r2 still answer; nothing past r3's blackhole does
    assert after.path[:2] == before.path[:2]
    assert all(a is None for a in after.path[3:])
    kinds = [type(e).__name__ for e in got["events"]]
    # the outage came first, then the trace it asked for
    assert kinds.index("OutageEvent") < kinds.index("PathChange"), kinds
    [ch] = [e for e in got["events"] if isinstance(e, PathChange)]
    assert ch.old == before.path and ch.new == after.path and ch.new_hops is None
    st = got["stats"]
    assert st["rounds"] == 2 and st["urgent_rounds"] == 1 and st["path_changes"] == 1


def test_stop_ends_a_long_round_at_once(lab: PathLab) -> None:
    """A round of 2,000 targets x 8 hops at 400 probes/s would take 40 s; the engine
    stops 1 s into it and the sweep in the worker thread ends with it (interrupted),
    rather than holding the process until the round is done."""
    from fastping.engine import MonitoringEngine

    many = [target4(i) for i in range(100, 2100)]
    got: dict[str, Any] = {}

    async def main() -> None:
        engine = MonitoringEngine(
            many[:1], interval_s=1.0, trace_every_s=3600.0,
            trace_options={"max_ttl": 8, "timeout_s": 0.5, "rate_pps": 400},
        )  # fmt: skip
        for h in many[1:]:
            engine.add_target(h)
        await engine.start()
        await asyncio.sleep(1.0)
        await engine.stop()
        got["paths"] = engine.paths

    lab.run(lambda: asyncio.run(main()))  # returns once the executor's thread has ended
    st = got["paths"].stats()
    assert st["interrupted"] == 1 and st["rounds"] == 0 and st["traced"] == 0, st


def test_path_mtu_is_measured_again_after_a_path_change(lab: PathLab) -> None:
    """--mtu-on-change: each target's path MTU at its first trace; after the route
    moves to r2b, whose onward link carries 1400 bytes and whose frag-needed /
    packet-too-big nft drops (a black hole), it is measured again: 1400, the hole
    at r2b (hop 2). Both in the engine's stats and in the metrics."""
    from fastping.engine import MonitoringEngine
    from fastping.metrics import serve_metrics

    got: dict[str, Any] = {}
    targets = [target4(5), target6(5)]

    async def main() -> None:
        engine = MonitoringEngine(
            targets, interval_s=0.5, timeout_s=0.5, trace_every_s=TRACE_EVERY_S,
            trace_options={"max_ttl": 8, "timeout_s": 0.3, "mtu_on_change": True},
        )  # fmt: skip
        server = serve_metrics(engine, "127.0.0.1:0")
        await engine.start()
        try:
            paths = engine.paths
            assert paths is not None
            await _until(lambda: paths.mtu_checks >= 2, "the first path MTUs")
            got["first"] = {h: paths.mtu(h) for h in targets}
            lab.set_twin_mtu(1, 1400)
            lab.black_hole(2, twin=True)
            lab.set_path("b")
            await _until(lambda: paths.mtu_checks >= 4, "the path MTUs after the change")
            got["after"] = {h: paths.mtu(h) for h in targets}
            got["stats"] = engine.stats()["paths"]
            got["scrape"] = _scrape(server.url)
        finally:
            await engine.stop()
            server.close()

    lab.run(lambda: asyncio.run(main()))
    for h in targets:
        first, after = got["first"][h], got["after"][h]
        assert first.pmtu == 1500 and not first.black_hole, first
        assert after.pmtu == 1400 and after.black_hole, after
        fam = 4 if ":" not in h else 6
        assert after.hole_hop == 2 and after.hole_address in lab.hop_addresses(2, fam), after
        assert _sample(got["scrape"], "fastping_path_mtu_bytes", h) == 1400.0
        assert _sample(got["scrape"], "fastping_path_black_hole", h) == 1.0
    st = got["stats"]
    assert st["mtu_on_change"] and st["mtu_changes"] == 2 and st["mtu_errors"] == 0, st
    assert st["path_changes"] == 2, st


# ------------------------------------------------------------------ fastping monitor


def _db_count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_monitor_trace_every_reports_the_change(lab: PathLab, tmp_path: Path) -> None:
    db = tmp_path / "mon.db"
    port = 20000 + os.getpid() % 20000
    cmd = ["ip", "netns", "exec", lab.src, *fastping_cmd(
        "monitor", *TARGETS[:2], "--db", str(db), "--interval", "0.5", "--timeout", "0.5",
        "--trace-every", "1", "--duration", "120", "--table", "never",
        "--metrics", f"127.0.0.1:{port}", "--log-level", "WARNING",
    )]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())  # fmt: skip
    try:
        _wait(lambda: _db_count(db, "traces") >= 4, "two rounds of traces", proc)
        lab.set_path("b")
        _wait(lambda: _db_count(db, "path_changes") >= 2, "the path changes", proc)
        # the metrics endpoint lives in the source namespace: scrape from there
        text = lab.exec(
            lab.src, "python3", "-c",
            f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}"
            "/metrics', timeout=5).read().decode())",
        ).stdout  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    for h in TARGETS[:2]:
        assert _sample(text, "fastping_path_changes_total", h) == 1, text[-2000:]
        assert _sample(text, "fastping_trace_hops", h) == 4
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["paths"]["path_changes"] == 2 and summary["paths"]["errors"] == 0
    assert "path changed" in err  # logged at WARNING
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--paths"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout.splitlines()[0] == "path changes: 2 (* = no answer from that hop)"
    twin = lab.twin_addresses(4)
    for h in TARGETS[:2]:
        line = next(ln for ln in rep.stdout.splitlines() if f" {h}: " in ln)
        old, new = line.split(": ", 1)[1].split(" -> ")
        assert old.split()[1] == twin[0] and new.split()[1] == twin[1], line
        assert "(4 hops)" in old and "(4 hops)" in new


# ------------------------------------------------------------------ bad input


def test_bad_trace_settings_are_refused() -> None:
    from fastping.engine import MonitoringEngine

    for bad in (0.0, -1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="trace_every_s"):
            MonitoringEngine(["127.0.0.1"], trace_every_s=bad)
    with pytest.raises(ConfigError, match="max_ttl"):
        MonitoringEngine(["127.0.0.1"], trace_every_s=5, trace_options={"max_ttl": 0})
    with pytest.raises(ConfigError, match="rate_pps"):
        MonitoringEngine(["127.0.0.1"], trace_every_s=5, trace_options={"rate_pps": 0})
    r = subprocess.run(
        fastping_cmd("monitor", "127.0.0.1", "--trace-every", "0.2", "--duration", "1"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 3 and "--trace-every" in r.stderr and "at least 1" in r.stderr, r
    r = subprocess.run(
        fastping_cmd("monitor", "127.0.0.1", "--trace-on-outage", "--duration", "1"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 3 and "needs --trace-every" in r.stderr, r
    r = subprocess.run(
        fastping_cmd("monitor", "127.0.0.1", "--mtu-on-change", "--duration", "1"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 3 and "--mtu-on-change" in r.stderr and "needs --trace-every" in r.stderr
    from fastping.config import parse_config_text

    with pytest.raises(ConfigError, match="every_s"):
        parse_config_text("trace:\n  every_s: 0.5\n")
    with pytest.raises(ConfigError, match="max_ttl"):
        parse_config_text("trace:\n  every_s: 60\n  max_ttl: 65\n")
    tc = parse_config_text("trace:\n  every_s: 5m\n  max_ttl: 12\n  on_outage: true\n").trace
    assert (tc.every_s, tc.max_ttl, tc.timeout_s, tc.rate_pps, tc.on_outage) == (
        300.0, 12, 1.0, 1000.0, True,
    )  # fmt: skip


# ------------------------------------------------------------------ store failures, PostgreSQL


def test_traces_a_locked_store_could_not_take_are_written_later(tmp_path: Path) -> None:
    """Another connection holds the database's write lock over a trace round: the
    round's rows are kept and written with the next one, none lost (loopback only)."""
    from fastping.engine import MonitoringEngine
    from fastping.store import ResultStore

    db = tmp_path / "locked.db"
    got: dict[str, Any] = {}

    async def main() -> None:
        store = ResultStore(db, flush_interval_s=0.1, busy_timeout_ms=50)
        await store.start()
        engine = MonitoringEngine(["127.0.0.1"], store=store, trace_every_s=1.0,
                                  trace_options={"max_ttl": 4, "timeout_s": 0.3})  # fmt: skip
        await engine.start()
        paths = engine.paths
        assert paths is not None
        try:
            await _until(lambda: paths.stored >= 1, "the first round stored")
            lock = sqlite3.connect(db, isolation_level=None, timeout=5)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                await _until(lambda: paths.store_errors >= 1, "a write refused by the lock")
                got["pending"] = paths.stats()["pending"]
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            r0 = paths.rounds
            await _until(
                lambda: paths.rounds >= r0 + 2 and not paths.stats()["pending"], "the catch-up"
            )
        finally:
            await engine.stop()
            await store.close()
        got["stats"] = paths.stats()
        got["last"] = paths.path("127.0.0.1")

    asyncio.run(main())
    st = got["stats"]
    assert got["pending"] >= 1 and st["store_errors"] >= 1 and st["dropped"] == 0
    assert got["last"].reached and got["last"].hop_count == 1
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT count(*) FROM traces WHERE target = '127.0.0.1'").fetchone()[0]
    assert n == st["stored"] == st["traced"]  # every trace made is in the file


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    from tests.servers import PgServer, need

    try:
        import psycopg  # noqa: F401
    except ImportError:
        need("psycopg", "pip install 'psycopg[binary]' (the extra 'postgresql')")
    try:
        srv = PgServer()
    except FileNotFoundError as e:
        need("PostgreSQL", str(e))
    try:
        srv.init().start()
        yield srv.url
    finally:
        srv.cleanup()


def test_postgresql_store_keeps_traces_and_changes_per_agent(pg_url: str) -> None:
    """The engine's traces into a shared PostgreSQL store (loopback targets), a path
    change written beside them, and `fastping report --paths` reading them back."""
    from fastping.engine import MonitoringEngine
    from fastping.pathwatch import PathChange
    from fastping.store_pg import PgResultStore

    got: dict[str, Any] = {}

    async def main() -> None:
        store = PgResultStore(pg_url, agent="a1", flush_interval_s=0.1)
        await store.start()
        engine = MonitoringEngine(["127.0.0.1", "::1"], store=store, trace_every_s=1.0,
                                  trace_options={"max_ttl": 4, "timeout_s": 0.3})  # fmt: skip
        await engine.start()
        paths = engine.paths
        assert paths is not None
        try:
            await _until(lambda: paths.stored >= 4, "two rounds stored")
        finally:
            await engine.stop()
        ch = PathChange("127.0.0.1", time.time(), ("10.0.0.1", None), ("10.0.0.2", None),
                        None, 2, "127.0.0.1")  # fmt: skip
        await asyncio.to_thread(store.write_traces, [], [ch])
        got["latest"] = store.latest_traces()
        got["changes"] = store.path_changes(agents=["a1"])
        got["none"] = store.path_changes(agents=["other"])
        got["stats"] = paths.stats()
        await store.close()

    asyncio.run(main())
    latest = got["latest"]
    assert set(latest) == {"127.0.0.1", "::1"}
    for t, d in latest.items():
        assert d["reached"] and d["hop_count"] == 1 and d["path"] == [t] and d["agent"] == "a1"
    assert got["stats"]["path_changes"] == 0 and got["stats"]["store_errors"] == 0
    assert got["none"] == []
    [c] = got["changes"]
    assert (c["target"], c["old"], c["new"], c["old_hops"], c["new_hops"]) == (
        "127.0.0.1", ["10.0.0.1", None], ["10.0.0.2", None], None, 2,
    )  # fmt: skip
    rep = subprocess.run(
        fastping_cmd("report", "--db", pg_url, "--since", "all", "--paths"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert "127.0.0.1 [a1]: 10.0.0.1 * (not reached) -> 10.0.0.2 * (2 hops)" in rep.stdout
