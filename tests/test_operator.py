"""The operator's everyday path (issue 23): config errors are bad arguments (exit 3),
every section is validated when the file loads, one duration syntax everywhere,
and a closed pipe is a quiet exit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import child_env, fastping_cmd
from fastping.config import parse_config_text
from fastping.duration import parse_duration
from fastping.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(1, 1.0), (0.25, 0.25), ("2", 2.0), ("500ms", 0.5), ("1s", 1.0), ("2m", 120.0),
     ("1m30s", 90.0), ("1h", 3600.0), ("250us", 0.00025)],
)  # fmt: skip
def test_one_duration_syntax(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "1x", "s", "", "nan", "inf", True, None, [1]])
def test_bad_durations_say_what_is_allowed(bad: object) -> None:
    with pytest.raises(ValueError, match="500ms"):
        parse_duration(bad)


def test_durations_are_accepted_in_every_section() -> None:
    cfg = parse_config_text(
        "defaults: {interval_s: 500ms, timeout_s: 2s}\n"
        "targets: [{host: 127.0.0.1, interval_s: 1m}]\n"
        "store: {retention_s: 1h, flush_interval_s: 250ms, chunk_s: 5s}\n"
        "resources: {check_interval_s: 10s}\n"
        "retry: {initial_delay: 500ms, max_delay: 1m30s}\n"
        "network: {check_interval: 5s, check_timeout: 500ms}\n"
    )
    assert cfg.defaults.interval_s == 0.5 and cfg.defaults.timeout_s == 2.0
    assert cfg.targets[0].interval_s == 60.0
    assert (cfg.store.retention_s, cfg.store.flush_interval_s, cfg.store.chunk_s) == (
        3600.0, 0.25, 5.0)  # fmt: skip
    assert cfg.resources.check_interval_s == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retry: balanaced\n", "balanaced"),
        ("retry: {max_attempts: many}\n", "retry.max_attempts"),
        ("retry: {initial_delay: soon}\n", "retry.initial_delay"),
        ("retry: {bogus: 1}\n", "retry.bogus: unknown key"),
        ("network: {check_interval: often}\n", "network.check_interval"),
        ("network: {bogus: 1}\n", "network"),
    ],
)
def test_retry_and_network_sections_are_validated_on_load(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_text(text, source="f.yaml")


def test_config_errors_exit_3(tmp_path: Path) -> None:
    cfg = tmp_path / "fastping.yaml"
    for text in ("retry: balanaced\n", "defaults: {interval_s: fast}\n", "stor: {}\n"):
        cfg.write_text(text + "targets: [127.0.0.1]\n")
        r = subprocess.run(fastping_cmd("monitor", "-C", str(cfg), "--duration", "1"),
                           capture_output=True, text=True, env=child_env(), timeout=60)  # fmt: skip
        assert r.returncode == 3, (text, r.stderr)
        assert r.stderr.startswith("fastping: ") and "Traceback" not in r.stderr


def _piped_to_head(*args: str) -> tuple[int, str, str]:
    """``fastping ARGS | head -n 1`` with a reader that leaves after one line."""
    cmd = " ".join(fastping_cmd(*args))
    p = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -n 1"],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def test_report_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    from fastping.results import Outcome, ProbeResult
    from fastping.store import ResultStore

    db = tmp_path / "r.db"
    import asyncio
    import time

    async def fill() -> None:
        store = ResultStore(db)
        await store.start()
        now = time.time()
        store.submit(
            ProbeResult(f"127.9.{i // 250}.{i % 250}", f"127.9.{i // 250}.{i % 250}", 0,
                        Outcome.REPLY, 0.1, 64, time=now - 5)
            for i in range(5000)
        )  # fmt: skip
        await store.close()

    asyncio.run(fill())
    rc, out, err = _piped_to_head("report", "--db", str(db), "--since", "all")
    assert out.count("\n") == 1
    assert "Broken pipe" not in err and "system error" not in err, err
    assert "Traceback" not in err
    assert rc == 0, err
