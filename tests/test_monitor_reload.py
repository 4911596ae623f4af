"""``fastping monitor`` reloads its configuration and target files on SIGHUP:
targets added and removed in the running engine, no result of a kept target lost,
the metrics endpoint the same server throughout. Target files may be Prometheus
file_sd JSON."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import child_env, fastping_cmd, needs_root
from fastping.commands.monitor import read_file_sd
from fastping.errors import TargetError
from fastping.store import ResultStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _sd(path: Path, hosts: list[str]) -> None:
    path.write_text(json.dumps([{"targets": hosts, "labels": {"site": "lo", "__meta_x": "y"}}]))


@needs_root
def test_sighup_adds_and_removes_targets_and_keeps_every_result(tmp_path: Path) -> None:
    cfg = tmp_path / "fastping.yaml"
    cfg.write_text(
        "defaults:\n  interval_s: 100ms\n  timeout_s: 0.5\n"
        "targets:\n  - 127.0.0.1\nstore:\n  chunk_s: 1\n"
    )
    sd = tmp_path / "targets.json"
    _sd(sd, ["127.0.0.2", "127.0.0.3:9100"])
    db, port = tmp_path / "m.db", _free_port()
    proc = subprocess.Popen(
        fastping_cmd("monitor", "-C", str(cfg), "-f", str(sd), "--db", str(db),
                     "--metrics", f"127.0.0.1:{port}", "--duration", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        before = _scrape(port)
        assert 'ip="127.0.0.3"' in before and 'site="lo"' in before
        time.sleep(1.0)
        _sd(sd, ["127.0.0.2", "127.0.0.4"])
        cfg.write_text(cfg.read_text().replace("  - 127.0.0.1\n", "  - 127.0.0.1\n  - ::1\n"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while 'ip="127.0.0.4"' not in (after := _scrape(port)):
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert 'ip="::1"' in after
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["metrics_scrapes"] >= 2  # the same server answered before and after
    assert summary["targets"] == 4  # 127.0.0.1, ::1, 127.0.0.2, 127.0.0.4
    assert "reloaded targets" in err, err
    store = ResultStore(db)
    assert set(store.targets()) == {"127.0.0.1", "::1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
    total = 0
    for host in ("127.0.0.1", "127.0.0.2"):  # kept through the reload
        rs = store.recent(host, limit=100_000)
        seqs = [r.seq for r in rs]
        # every probe's result is there: serials 0..n-1, none missing, none twice
        assert sorted(seqs) == list(range(len(seqs))), (host, seqs)
        assert len(seqs) >= 20, (host, len(seqs))  # ~3.5 s at 10/s
        assert all(r.outcome.value == "reply" for r in rs)
        total += len(seqs)
    gone = store.recent("127.0.0.3", limit=100_000)  # removed: its probes in flight too
    assert sorted(r.seq for r in gone) == list(range(len(gone))) and len(gone) >= 5
    assert all(r.outcome.value == "reply" for r in gone)
    assert len(store.recent("127.0.0.4", limit=100_000)) >= 5
    assert summary["sent"] >= total


@needs_root
def test_a_reload_that_does_not_load_keeps_the_old_targets(tmp_path: Path) -> None:
    cfg = tmp_path / "fastping.yaml"
    cfg.write_text("defaults:\n  interval_s: 0.1\ntargets:\n  - 127.0.0.1\n")
    proc = subprocess.Popen(
        fastping_cmd("monitor", "-C", str(cfg), "--db", str(tmp_path / "m.db"),
                     "--duration", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        time.sleep(2.0)  # started (imports, sockets)
        cfg.write_text("defaults:\n  interval_s: fast\ntargets:\n  - 127.0.0.1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "reload failed" in err and "interval_s" in err
    assert json.loads(out.splitlines()[-1])["targets"] == 1


def test_file_sd_json_is_read(tmp_path: Path) -> None:
    f = tmp_path / "sd.json"
    f.write_text(json.dumps([
        {"targets": ["127.0.0.1", "[::1]:9100", "127.0.0.2:80"], "labels": {"site": "a"}},
        {"targets": ["localhost"]},
    ]))  # fmt: skip
    assert read_file_sd(str(f)) == [
        ("127.0.0.1", {"site": "a"}),
        ("::1", {"site": "a"}),
        ("127.0.0.2", {"site": "a"}),
        ("localhost", {}),
    ]
    f.write_text('{"targets": []}')
    with pytest.raises(TargetError, match="must be a list"):
        read_file_sd(str(f))
    f.write_text('[{"targets": "127.0.0.1"}]')
    with pytest.raises(TargetError, match='group 0: "targets"'):
        read_file_sd(str(f))
