"""MonitoringEngine with the real core, real SQLite and real loopback / namespaced targets.

Targets: 127.0.0.0/8 and ::1 in this namespace, or addresses inside network
namespaces these tests create (fp4-<random>) and delete afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import child_env, needs_root
from engine_fakes import CaptureLog
from fastping import chunk
from fastping.engine import MonitoringEngine, ResultEvent, TargetAdded, TargetRemoved
from fastping.guard import ResourceGuard
from fastping.results import Outcome
from fastping.store import ResultStore

pytestmark = needs_root

NO_GUARD = ResourceGuard(None, None)


def db_records(db: Path, target: str | None = None) -> list[tuple[str, float, int]]:
    """(target, time, outcome code) of every stored record, straight from the SQLite
    file (each results row is a chunk of one target's records)."""
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT targets.name, results.data FROM results JOIN targets ON targets.id = tid"
        ).fetchall()
    out = []
    for name, data in rows:
        if target is None or name == target:
            cols = chunk.unpack(data)
            out += [(name, t, code) for t, code in zip(cols.t, cols.code, strict=True)]
    return sorted(out, key=lambda r: r[1])


def db_outcomes(db: Path) -> Counter[tuple[str, int]]:
    """(target, outcome code) -> records, straight from the SQLite file."""
    return Counter((n, o) for n, _, o in db_records(db))


def db_count(db: Path) -> int:
    return ResultStore(db).count_results()


async def run_engine(
    db: Path, targets: list[str], duration_s: float, **kw: Any
) -> tuple[MonitoringEngine, ResultStore]:
    store = ResultStore(db, flush_interval_s=0.1)
    kw.setdefault("guard", ResourceGuard(None, None))
    eng = MonitoringEngine(targets, store=store, **kw)
    await store.start()
    try:
        await eng.run(duration_s, handle_signals=False)
    finally:
        await store.close()
    return eng, store


def test_results_recorded_and_queried_back(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    targets = ["127.0.0.1", "::1", "localhost"]  # localhost: /etc/hosts, no DNS packet
    eng, store = asyncio.run(
        run_engine(db, targets, 1.0, interval_s=0.1, min_interval_s=0.1, timeout_s=0.5)
    )
    st = eng.stats()
    # ~30 at 0.1 s for 1 s; a loaded machine may skip rounds (the schedule itself is
    # pinned down exactly in test_engine_unit, on a virtual clock): what matters here is
    # that every probe sent is received, recorded and queried back
    assert st["sent"] == st["received"] == st["results"] >= 9
    assert st["outstanding"] == 0 and st["socket"]["rx_drops"] == 0
    assert db_count(db) == st["sent"]  # every probe has its row
    now = time.time()
    for t in targets:
        recent = store.recent(t, 100)
        info = eng.target(t)
        assert len(recent) == info.probes >= 3, t
        assert all(r.outcome is Outcome.REPLY and 0 < (r.rtt_ms or 0) < 50 for r in recent)
        stats = store.target_stats(t, now - 60, now + 1)
        assert stats is not None and stats["loss"] == 0.0 and stats["sent"] == info.probes
        assert info.status == "up" and info.loss == 0.0
    assert {r.address for r in store.recent("localhost", 5)} <= {"127.0.0.1", "::1"}


def test_targets_added_and_removed_mid_run(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    store = ResultStore(db, flush_interval_s=0.1)
    eng = MonitoringEngine(
        ["127.0.0.1"], store=store, interval_s=0.05, timeout_s=0.3, guard=NO_GUARD
    )
    marks: dict[str, float] = {}

    async def main() -> list[Any]:
        sub = eng.subscribe(maxsize=100_000)
        await store.start()
        await eng.start()
        await asyncio.sleep(0.4)
        marks["added"] = time.time()
        eng.add_target("127.0.0.5", labels={"role": "late"})
        eng.add_target("::1")
        await asyncio.sleep(0.4)
        eng.remove_target("127.0.0.1")
        marks["removed"] = time.time()
        await asyncio.sleep(0.5)
        await eng.stop()
        await store.close()
        return sub.drain()

    events = asyncio.run(main())
    first = store.recent("127.0.0.1", 1000)
    late = store.recent("127.0.0.5", 1000)
    v6 = store.recent("::1", 1000)
    assert 12 <= len(first) <= 20
    # nothing probed after removal (results of probes in flight may land a moment later)
    assert max(r.time for r in first) < marks["removed"] + 0.05
    assert 10 <= len(late) <= 20 and 10 <= len(v6) <= 20
    assert min(r.time for r in late) >= marks["added"]
    assert all(r.outcome is Outcome.REPLY for r in first + late + v6)
    assert db_count(db) == eng.stats()["sent"]
    assert [e.target for e in events if isinstance(e, TargetRemoved)] == ["127.0.0.1"]
    added = {e.target: e for e in events if isinstance(e, TargetAdded)}
    assert set(added) == {"127.0.0.1", "127.0.0.5", "::1"}
    assert added["127.0.0.5"].labels == {"role": "late"}
    assert sum(isinstance(e, ResultEvent) for e in events) == db_count(db)


def test_subscriber_that_never_reads_does_not_slow_probing(tmp_path: Path) -> None:
    hosts = [f"127.0.4.{i}" for i in range(1, 201)]

    async def main(with_sub: bool) -> tuple[int, int, Any]:
        store = ResultStore(tmp_path / f"s{int(with_sub)}.db", flush_interval_s=0.1)
        eng = MonitoringEngine(hosts, store=store, interval_s=0.1, timeout_s=0.3, guard=NO_GUARD)
        sub = eng.subscribe(maxsize=100) if with_sub else None
        await store.start()
        await eng.start()
        await asyncio.sleep(1.2)
        dropped_live = eng.stats()["subscriber_dropped"]
        await eng.stop()
        await store.close()
        return eng.stats()["sent"], dropped_live, sub

    sent_without, _, _ = asyncio.run(main(False))
    sent_with, dropped_live, sub = asyncio.run(main(True))
    assert sent_without >= 2000
    assert abs(sent_with - sent_without) <= 0.05 * sent_without, (sent_with, sent_without)
    assert len(sub) == 100  # only the newest 100 are kept ...
    # ... and everything older was counted: the results, 200 TargetAdded and
    # 200 StateChanged (unknown -> up) events
    assert sub.dropped + len(sub) == sent_with + 200 + 200
    assert dropped_live > 0


def test_resource_guard_with_tiny_limits_throttles_real_probing(tmp_path: Path) -> None:
    hosts = [f"127.0.5.{i}" for i in range(1, 51)]
    log = CaptureLog()
    guard = ResourceGuard(0.0001, 1, check_interval_s=0.25, max_factor=8, logger=log)
    throttled, _ = asyncio.run(
        run_engine(tmp_path / "g.db", hosts, 1.6, interval_s=0.05, timeout_s=0.2, guard=guard)
    )
    free, _ = asyncio.run(run_engine(tmp_path / "f.db", hosts, 1.6, interval_s=0.05, timeout_s=0.2))
    assert guard.factor == 8.0 and guard.throttle_steps == 3
    assert throttled.stats()["sent"] < 0.5 * free.stats()["sent"]
    assert throttled.stats()["guard"]["cpu_percent"] is not None
    warn = [m for m in log.messages("warning") if "slowing probing" in m]
    assert warn and "intervals x2" in warn[0]
    assert db_count(tmp_path / "g.db") == throttled.stats()["sent"]


def test_failed_resolution_is_a_result_not_a_crash(tmp_path: Path) -> None:
    async def resolver(host: str, family: int) -> list[tuple[int, str]]:
        # a failing lookup without sending a DNS query anywhere
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, "127.0.0.1")]

    db = tmp_path / "n.db"
    eng, store = asyncio.run(
        run_engine(
            db,
            ["nowhere.invalid", "loop.test"],
            1.0,
            interval_s=0.05,
            timeout_s=0.2,
            resolver=resolver,
        )
    )
    bad = store.recent("nowhere.invalid", 100)
    assert 3 <= len(bad) <= 8  # backed off after three
    assert all(r.outcome is Outcome.RESOLVE_ERROR and r.errno == socket.EAI_NONAME for r in bad)
    good = store.recent("loop.test", 100)
    assert len(good) >= 15 and all(r.outcome is Outcome.REPLY for r in good)
    assert {r.address for r in good} == {"127.0.0.1"}


# ---- a fastping monitor child process -----------------------------------------------


def monitor_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastping.cli", "monitor", "--table", "never", *args]


def test_sigterm_leaves_every_result_in_the_store(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    proc = subprocess.Popen(
        monitor_cmd("127.0.6.1-40", "::1", "--interval", "0.05", "--timeout", "0.5",
                    "--db", str(db), "--duration", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        # results reach the database every store.chunk_s (10 s) while running, so wait
        # for the database, let it probe a while, and stop it well before that: SIGTERM
        # must flush everything held in the core's log and in the store's queue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not db.exists():
            time.sleep(0.05)
        assert db.exists(), "monitor created no database within 20 s"
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    rows = db_count(db)
    assert summary["sent"] > 200
    assert rows == summary["sent"] == summary["results"] == summary["stored"], (rows, summary)
    assert summary["store_dropped"] == 0
    assert db_outcomes(db)[("::1", 0)] > 0  # outcome code 0 = reply
    assert "monitoring stopped" in err


def test_monitor_defaults_to_loopback_and_rejects_bad_input(tmp_path: Path) -> None:
    r = subprocess.run(
        monitor_cmd("--duration", "0.6", "--interval", "0.2"),
        cwd=tmp_path, capture_output=True, text=True, env=child_env(), timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["targets"] == 2 and summary["db"] == "fastping.db"
    names = {n for n, _ in db_outcomes(tmp_path / "fastping.db")}
    assert names == {"127.0.0.1", "::1"}
    bad = subprocess.run(
        monitor_cmd("--mode", "subprocess"), capture_output=True, text=True, env=child_env()
    )
    assert bad.returncode == 3 and "invalid choice" in bad.stderr
    bad = subprocess.run(
        monitor_cmd("--interval", "0", "--duration", "1", "--db", str(tmp_path / "x.db")),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert bad.returncode == 3 and "argument --interval/-i: 0 is out of range" in bad.stderr


# ---- inside a network namespace of our own --------------------------------------------


class Ns:
    """One namespace with lo up and a veth pair of our own (10.199.N.1/24 on one end).
    Unique names per run; removed in the fixture's finally."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"fp4-{tag}"
        self.veth_a = f"fp4a{tag}"
        self.veth_b = f"fp4b{tag}"
        self.net = f"10.199.{int(tag[:2], 16)}"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        self.ip("addr", "add", f"{self.net}.1/24", "dev", self.veth_a)
        self.ip("link", "set", self.veth_a, "up")
        self.ip("link", "set", self.veth_b, "up")

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def run(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            capture_output=True, text=True, env=child_env(), timeout=60, **kw,
        )  # fmt: skip


@pytest.fixture
def ns() -> Iterator[Ns]:
    n = Ns()
    try:
        n.up()
        yield n
    finally:
        n.down()
    assert (
        n.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )


def test_timeouts_recorded_for_an_address_that_does_not_answer(ns: Ns, tmp_path: Path) -> None:
    # the namespace drops echo requests to .1 (its own veth address); lo still answers
    nft = (
        "add table inet fp4; "
        "add chain inet fp4 in { type filter hook input priority 0; policy accept; }; "
        f"add rule inet fp4 in ip daddr {ns.net}.1 icmp type echo-request drop"
    )
    r = ns.run(["nft", nft])
    assert r.returncode == 0, r.stderr
    db = tmp_path / "t.db"
    dead = f"{ns.net}.1"
    r = ns.run(monitor_cmd(dead, "127.0.0.1", "--interval", "0.1", "--timeout", "0.3",
                           "--duration", "1.2", "--db", str(db)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    oc = db_outcomes(db)
    n_dead = oc[(dead, 1)]  # outcome code 1 = timeout
    assert n_dead >= 10 and oc[(dead, 0)] == 0
    assert oc[("127.0.0.1", 0)] >= 10 and oc[("127.0.0.1", 1)] == 0
    assert summary["outcomes"]["timeout"] == n_dead
    assert db_count(db) == summary["sent"]  # the ones in flight at the end too


def test_backoff_after_send_errors(ns: Ns, tmp_path: Path) -> None:
    # no route to 10.254/16 inside the namespace: the kernel refuses each send
    db = tmp_path / "b.db"
    r = ns.run(monitor_cmd("10.254.0.9", "127.0.0.1", "--interval", "0.05",
                           "--duration", "2", "--db", str(db)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [(r.time, r.outcome, r.errno) for r in ResultStore(db).recent("10.254.0.9", 1000)]
    assert all(o is Outcome.SEND_ERROR and e == errno.ENETUNREACH for _, o, e in rows)
    # 40 probes without backoff; with it: 3 at 50 ms, then 0.1, 0.2, 0.4, 0.8 s ...
    assert 5 <= len(rows) <= 9, rows
    gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)]
    assert gaps[-1] > 3 * gaps[0]
    assert "backing off" in r.stderr
    assert db_outcomes(db)[("127.0.0.1", 0)] >= 35  # the healthy target is untouched


def test_monitor_records_local_down_while_our_network_is_down(netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`fastping monitor --netstate` inside a namespace: while the host's only link
    is down, probes are local_down, not timeouts; after it returns, replies again."""
    db = tmp_path / "n.db"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.host, *monitor_cmd(
            "10.201.0.1", "--netstate", "--interval", "0.1", "--timeout", "0.3",
            "--db", str(db), "--duration", "4")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        time.sleep(1.2)
        netns.exec_h("ip", "link", "set", netns.veth_h, "down")
        time.sleep(1.2)
        netns.exec_h("ip", "link", "set", netns.veth_h, "up")
        netns.exec_h("ip", "route", "replace", "default", "via", "10.201.0.1")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 1), err
    from fastping.store import OUTCOME_BY_CODE

    rows = Counter(code for _, _, code in db_records(db))
    by_name = {OUTCOME_BY_CODE[k].value: v for k, v in rows.items()}
    assert by_name.get("local_down", 0) >= 5, (by_name, err[-2000:])
    assert by_name.get("reply", 0) >= 5
    # the outage is not reported as target loss
    assert by_name.get("timeout", 0) <= 3, by_name
