"""fastping.agent: the monitor's wiring (engine, store, metrics, ...) from a config,
without the command line. Real sockets on loopback, a real SQLite file, a real
scrape of the metrics endpoint."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastping.agent import Agent, AgentOptions, AgentTarget, config_targets, select_targets
from fastping.config import FastpingConfig, parse_config
from fastping.errors import ConfigError
from fastping.store import ResultStore

HOSTS = ("127.0.0.1", "127.0.0.2", "::1")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def until(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def loopback_config(db: Path, **extra: Any) -> FastpingConfig:
    data: dict[str, Any] = {
        "defaults": {"interval_s": 0.1, "timeout_s": 0.5},
        "targets": ["127.0.0.1", {"host": "127.0.0.2", "labels": {"site": "lab"}}, "::1"],
        "store": {"path": str(db), "chunk_s": 0.5, "flush_interval_s": 0.1},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    data.update(extra)
    return FastpingConfig.model_validate(data)


def stored_per_target(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT t.name, sum(r.n) FROM results r JOIN targets t ON t.id = r.tid GROUP BY t.name"
        ).fetchall()
    finally:
        conn.close()
    return {name: int(n) for name, n in rows}


def test_agent_probes_loopback_stores_and_serves_metrics(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    cfg = loopback_config(db)
    fds_before, threads_before = open_fds(), threading.active_count()

    async def go() -> tuple[Agent, str, int]:
        agent = Agent(cfg)
        await agent.start()
        engine = agent.engine
        assert {i.host for i in engine.targets()} == set(HOSTS)
        await until(lambda: all(engine.target(h).probes >= 5 for h in HOSTS))
        assert agent.metrics is not None
        body = await asyncio.to_thread(scrape, agent.metrics.url)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        await agent.run_until(stop)  # the running agent, stopped by the event
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == [], leftover
        return agent, body, engine.stats()["results"]

    agent, body, results = asyncio.run(go())
    # the scrape names every target, the configured label on its own target
    for h in HOSTS:
        assert re.search(rf'smokeping_requests_total\{{ip="{re.escape(h)}",[^}}]*\}} [1-9]', body)
    assert re.search(r'smokeping_requests_total\{ip="127\.0\.0\.2",[^}]*site="lab"', body)
    # every result landed in the SQLite file, per target, replies all (loopback)
    summary = agent.summary()
    assert summary["results"] == results >= 15
    assert summary["stored"] == results and summary["store_dropped"] == 0
    assert summary["outcomes"]["reply"] == results and summary["db"] == str(db)
    per_target = stored_per_target(db)
    assert set(per_target) == set(HOSTS) and all(n >= 5 for n in per_target.values())
    assert sum(per_target.values()) == ResultStore(db).count_results() == results
    conn = sqlite3.connect(db)
    try:  # the send-timing window written at stop
        assert conn.execute("SELECT count(*) FROM send_timing").fetchone()[0] >= 1
    finally:
        conn.close()
    # stopped cleanly: the endpoint is closed, no socket, file or thread left behind
    with pytest.raises(OSError):
        scrape(summary["metrics"])
    deadline = time.monotonic() + 5
    while (open_fds() - fds_before or threading.active_count() > threads_before) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert open_fds() - fds_before == set()
    assert threading.active_count() <= threads_before, threading.enumerate()


def test_agent_from_yaml_file_with_options_and_reload(tmp_path: Path) -> None:
    """A YAML file, options over it (as the command line's flags are), and a reload
    to another configuration while running."""
    db = tmp_path / "yaml.db"
    path = tmp_path / "fastping.yaml"
    path.write_text(
        "defaults: {interval_s: 5, timeout_s: 0.5}\n"
        "targets:\n  - 127.0.0.1\n  - {host: 127.0.0.3, interval_s: 0.2}\n"
        f"store: {{path: {str(db)!r}}}\n",
        encoding="utf-8",
    )
    agent = Agent.from_file(path, interval_s=0.1, db=str(tmp_path / "over.db"))
    # the option replaces the default interval, not a target's own; --db the path
    assert agent.initial_targets == [
        AgentTarget("127.0.0.1", 0.1, 0.5, {}),
        AgentTarget("127.0.0.3", 0.2, 0.5, {}),
    ]
    assert agent.settings.db == str(tmp_path / "over.db") and agent.metrics is None

    async def go() -> None:
        async with agent:
            engine = agent.engine
            await until(lambda: engine.target("127.0.0.1").probes >= 3)
            # (the engine refuses a timeout above its max_timeout_s, the start's 0.5)
            agent.reload(parse_config({"defaults": {"timeout_s": 0.5},
                                       "targets": ["127.0.0.4", "127.0.0.3"]}))  # fmt: skip
            assert sorted(i.host for i in engine.targets()) == ["127.0.0.3", "127.0.0.4"]
            # 127.0.0.3 now has the default interval: the option's 0.1, not its 0.2
            assert agent.current["127.0.0.3"].interval_s == 0.1
            await until(lambda: engine.target("127.0.0.4").probes >= 3)
        agent.reload(parse_config({"targets": ["127.0.0.5"]}))  # stopped: nothing changes
        assert sorted(agent.current) == ["127.0.0.3", "127.0.0.4"]
        with pytest.raises(RuntimeError, match="runs once"):
            await agent.run(0.1)  # a stopped agent is not started again

    asyncio.run(go())
    per_target = stored_per_target(tmp_path / "over.db")
    assert {"127.0.0.1", "127.0.0.4"} <= set(per_target) <= {"127.0.0.1", "127.0.0.3", "127.0.0.4"}
    assert not db.exists()  # --db won over store.path


@pytest.mark.parametrize(
    ("data", "options", "says"),
    [
        ({}, {}, "no targets: list some under 'targets:'"),
        (
            {"targets": ["127.0.0.1"], "mode": "subprocess"},
            {},
            "mode 'subprocess' cannot run the monitor",
        ),
        (
            {"targets": ["127.0.0.1"], "trace": {"mtu_on_change": True}},
            {},
            "needs --trace-every S (trace.every_s)",
        ),
        ({"targets": ["127.0.0.1"]}, {"outage_after": 0}, "1 or more"),
        ({"targets": ["127.0.0.1"]}, {"outage_webhook": "ftp://127.0.0.1/x"}, "--outage-webhook"),
        ({"targets": ["127.0.0.1"]}, {"metrics_listen": "nowhere"}, "give HOST:PORT"),
        ({"targets": ["127.0.0.1"]}, {"remote_write_url": "127.0.0.1:9"}, "http:// or https://"),
    ],  # fmt: skip
)
def test_bad_config_is_refused_before_anything_opens(
    tmp_path: Path, data: dict[str, Any], options: dict[str, Any], says: str
) -> None:
    db = tmp_path / "never.db"
    cfg = FastpingConfig.model_validate({**data, "store": {"path": str(db)}})
    with pytest.raises(ConfigError, match=re.escape(says)):
        Agent(cfg, AgentOptions(**options))
    assert not db.exists()


def test_bad_yaml_names_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets: [127.0.0.1]\ndefaults:\n  interval_s: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"defaults\.interval_s.*line 3"):
        Agent.from_file(path)


def test_store_refused_at_start_leaves_nothing_running(tmp_path: Path) -> None:
    """A file that is not a fastping database: start() fails, and what had started
    (nothing past the store) is stopped; the agent cannot be started again."""
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.commit()
    conn.close()
    agent = Agent(loopback_config(db))
    threads_before = threading.active_count()

    async def go() -> None:
        with pytest.raises(ConfigError, match="other.db"):
            await agent.start()
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        with pytest.raises(RuntimeError, match="starts once"):
            await agent.start()
        with pytest.raises(RuntimeError, match="not started"):
            agent.engine  # noqa: B018 - the property raises

    asyncio.run(go())
    assert agent.metrics is None and threading.active_count() <= threads_before


def test_config_targets_expand_shard_and_dedupe() -> None:
    cfg = parse_config(
        {
            "defaults": {"interval_s": 2},
            "targets": [
                "127.0.0.0/30",
                {"host": "tcp://127.0.0.1:22", "timeout_s": 0.2},
                "http://127.0.0.1:8080/",
            ],
        }  # fmt: skip
    )
    ts = config_targets(cfg, timeout_s=0.7)
    assert [t.host for t in ts] == [*(f"127.0.0.{i}" for i in range(4)), "tcp://127.0.0.1:22"]
    assert ts[0] == AgentTarget("127.0.0.0", 2.0, 0.7, {}) and ts[-1].timeout_s == 0.2
    # two shards split the hosts with no overlap and no gap; a host given twice is once
    shares = [select_targets(ts + ts[:1], (i, 2)) for i in range(2)]
    assert all(listed == 5 for _, listed in shares)
    hosts = [t.host for share, _ in shares for t in share]
    assert sorted(hosts) == sorted(t.host for t in ts)


def test_docs_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/agent.md's example, as written (its database moved into tmp_path)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text("utf-8")
    m = re.search(r"```python\n(.*?)```", text, re.S)
    assert m is not None
    code = m.group(1).replace("/tmp/fastping-agent.db", str(tmp_path / "doc.db"))
    exec(compile(code, "docs/agent.md", "exec"), {"__name__": "docs_agent"})  # noqa: S102
    out = capsys.readouterr().out
    assert "{'127.0.0.1': 'up', '::1': 'up'}" in out and "bytes of metrics" in out
    assert set(stored_per_target(tmp_path / "doc.db")) == {"127.0.0.1", "::1"}
