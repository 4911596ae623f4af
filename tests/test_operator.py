"""The operator's everyday path (issue 23): config errors are bad arguments (exit 3),
every section is validated when the file loads, one duration syntax everywhere,
and a closed pipe is a quiet exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_env, fastping_cmd, needs_root
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


@needs_root
def test_monitor_without_an_icmp_socket_exits_4_at_once(tmp_path: Path) -> None:
    import shutil
    import time

    from privhelpers import netns, ping_range

    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (apt-get install util-linux)")
    # root without CAP_NET_RAW (dropped from the bounding set) in a namespace whose
    # ping_group_range is closed: no raw socket, no dgram socket
    argv = fastping_cmd("monitor", "127.0.0.1", "::1", "--duration", "10",
                        "--db", str(tmp_path / "m.db"))  # fmt: skip
    with netns() as ns, ping_range(ns, "1 0"):
        t0 = time.monotonic()
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "setpriv", "--bounding-set=-net_raw",
             "--inh-caps=-net_raw", *argv],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
        took = time.monotonic() - t0
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert r.stdout == ""  # it did not run: no summary with sent=0
    assert "CAP_NET_RAW" in r.stderr and "ping_group_range" in r.stderr, r.stderr
    assert "falling back" not in r.stderr and "send_error" not in r.stderr
    assert r.stderr.count("\n") < 12, r.stderr  # one message, not a warning per probe
    assert took < 10  # at once, not after the 10 s it was given


def test_library_logging_goes_through_logging_never_stdout() -> None:
    # retry and the mode fallback log; with only basicConfig(WARNING) the host program
    # sees fastping's warnings through its own handler (stderr here), nothing on stdout,
    # and without any config nothing at all
    code = (
        "import logging, sys\n"
        "{setup}\n"
        "from fastping.retry import RetryConfig, Retryer\n"
        "n = []\n"
        "def op(attempt):\n"
        "    n.append(1)\n"
        "    if len(n) < 3: raise OSError(111, 'refused')\n"
        "    return 'ok'\n"
        "cfg = RetryConfig(max_attempts=5, initial_delay=0.001, max_delay=0.001, jitter=False)\n"
        "r = Retryer(cfg)\n"
        "print(r.call(op, name='op'))\n"
        "logging.getLogger('fastping.probe').warning('fastping: a warning')\n"
    )
    for setup, want_err in (("logging.basicConfig(level=logging.WARNING)", True), ("", False)):
        r = subprocess.run([sys.executable, "-c", code.format(setup=setup)],
                           capture_output=True, text=True, env=child_env(), timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout == "ok\n", r.stdout  # only the program's own output
        assert ("a warning" in r.stderr) is want_err, r.stderr
        assert "DEBUG" not in r.stderr and "INFO" not in r.stderr


def test_guard_default_lets_the_documented_workload_run_and_its_warning_names_the_knob() -> None:
    from fastping.config import FastpingConfig
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard

    # 10,000 targets every second cost ~10-15 % of a core (README): under the default
    g = ResourceGuard()
    assert g.update(15.0, 62.0) == 1.0
    assert FastpingConfig().resources.max_cpu_percent == g.max_cpu_percent == 50.0
    warns: list[str] = []

    class Log:
        def warning(self, msg: str, **kw: object) -> None:
            warns.append(msg)

        def info(self, msg: str, **kw: object) -> None:
            pass

        debug = info

    e = MonitoringEngine(interval_s=1.0, guard=ResourceGuard(5.0, 100.0, logger=Log()))
    assert e.guard.update(7.0, 50.0) == 2.0
    assert "every 1 s target now probed every 2 s" in warns[0]
    assert "--max-cpu-percent / resources.max_cpu_percent (now 5)" in warns[0]
    assert "0 to turn the guard off" in warns[0]


@needs_root
def test_monitor_start_up_is_one_log_line_not_one_per_target(tmp_path: Path) -> None:
    # 500 loopback targets: before, 500 INFO "target state changed unknown->up" lines
    r = subprocess.run(
        fastping_cmd("monitor", "127.11.0.1-127.11.1.244", "--interval", "0.5", "--duration",
                     "3", "--db", str(tmp_path / "m.db"), "--table", "never"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert not any("state changed" in x for x in lines), lines[:3]
    started = [x for x in lines if "monitor started" in x]
    assert len(started) == 1 and "targets=500" in started[0] and "up=500" in started[0], lines
    assert len(lines) <= 3, lines  # start-up line, (summary), "monitoring stopped"
