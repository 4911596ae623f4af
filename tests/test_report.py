"""`fastping report` on real SQLite files written by ResultStore."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

from fastping.cli import main
from fastping.commands.report import parse_when
from fastping.results import Outcome, ProbeResult, rtt_summary
from fastping.store import ResultStore

SRC = Path(__file__).resolve().parent.parent / "src"
SWEEP_KEYS = ("target", "address", "sent", "received", "loss", "min_ms", "avg_ms", "max_ms")
EXTRA_KEYS = ("stddev_ms", "jitter_ms", "p50_ms", "p95_ms", "p99_ms")


def build_db(path: Path, now: float) -> dict[str, list[float]]:
    """Two targets over the last 30 minutes, one probe every 10 s; 127.0.0.2 loses
    every 4th probe and a whole 5-minute stretch."""
    rtts: dict[str, list[float]] = {"127.0.0.1": [], "127.0.0.2": []}
    res = []
    for i in range(180):
        t = now - 1800 + i * 10
        for tgt, base in (("127.0.0.1", 0.05), ("127.0.0.2", 0.2)):
            lost = tgt == "127.0.0.2" and (i % 4 == 0 or 60 <= i < 90)
            if lost:
                res.append(ProbeResult(tgt, tgt, i, Outcome.TIMEOUT, time=t))
            else:
                r = base + 0.01 * (i % 7) + 0.05 * math.sin(i / 20) ** 2
                rtts[tgt].append(array("f", [r])[0])  # the store keeps float32 RTTs
                res.append(ProbeResult(tgt, tgt, i, Outcome.REPLY, rtt_ms=r, time=t))

    async def go() -> None:
        store = ResultStore(path)
        await store.start()
        store.submit(res)
        await store.close()

    asyncio.run(go())
    return rtts


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[float]]]:
    p = tmp_path_factory.mktemp("report") / "fp.db"
    return p, build_db(p, time.time())


def test_json_lines_have_sweep_keys_and_exact_values(
    db: tuple[Path, dict[str, list[float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, rtts = db
    assert main(["report", "--db", str(path), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    objs = [json.loads(ln) for ln in out]
    assert [o["target"] for o in objs] == ["127.0.0.1", "127.0.0.2"]
    for o in objs:
        assert list(o)[: len(SWEEP_KEYS)] == list(SWEEP_KEYS)
        for k in EXTRA_KEYS + ("timeouts", "duplicates", "late", "local_down"):
            assert k in o
        want = rtt_summary(rtts[o["target"]])
        for k, v in want.items():
            assert o[k] == pytest.approx(round(v, 4), abs=1e-9), k  # type: ignore[arg-type]
    a, b = objs
    assert (a["sent"], a["received"], a["loss"]) == (180, 180, 0.0)
    assert b["sent"] == 180 and b["received"] == len(rtts["127.0.0.2"])
    assert b["timeouts"] == 180 - b["received"]
    assert b["loss"] == pytest.approx(round(b["timeouts"] / 180, 6))


def test_text_table(
    db: tuple[Path, dict[str, list[float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = db
    assert main(["report", "--db", str(path), "--since", "2h"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["TARGET", "ADDRESS", "SENT", "RECV", "LOSS"]
    row = lines[3].split()
    assert row[0] == "127.0.0.2" and row[2] == "180" and row[4].endswith("%")


def test_since_and_target_filter(
    db: tuple[Path, dict[str, list[float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = db
    assert main(["report", "--db", str(path), "--json", "--since", "5m", "-t", "127.0.0.1"]) == 0
    objs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [o["target"] for o in objs] == ["127.0.0.1"]
    assert 28 <= objs[0]["sent"] <= 31  # one probe per 10 s


def test_html_is_self_contained_with_a_chart_per_target(
    db: tuple[Path, dict[str, list[float]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = db
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(path), "--html", str(page)]) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<svg") == 2
    assert "<h2>127.0.0.1</h2>" in text and "<h2>127.0.0.2</h2>" in text
    # nothing fetched from elsewhere: no scripts, no external src/href
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    # loss is marked: the 5-minute outage of 127.0.0.2 is shaded red, and loss is drawn
    assert 'fill="#d42020" fill-opacity="0.18"' in text
    assert "loss 100.0%" in text
    # a median line
    assert 'stroke="#1a9e1a"' in text


def test_html_max_charts(
    db: tuple[Path, dict[str, list[float]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = db
    page = tmp_path / "one.html"
    assert main(["report", "--db", str(path), "--html", str(page), "--max-charts", "1"]) == 0
    text = page.read_text()
    assert text.count("<svg") == 1 and "<h2>127.0.0.2</h2>" in text  # the lossy one
    assert "1 more targets" in text


def test_missing_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(tmp_path / "none.db")]) == 3
    err = capsys.readouterr().err
    assert "no fastping database at" in err and "fastping monitor --db" in err


def test_empty_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "empty.db"

    async def go() -> None:
        store = ResultStore(p)
        await store.start()
        await store.close()

    asyncio.run(go())
    assert main(["report", "--db", str(p)]) == 3
    assert "holds no results yet" in capsys.readouterr().err


def test_no_results_in_window_hints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "old.db"
    build_db(p, time.time() - 5 * 86400)
    assert main(["report", "--db", str(p), "--since", "1h"]) == 1
    err = capsys.readouterr().err
    assert "no results" in err and "try --since all" in err
    assert main(["report", "--db", str(p), "--since", "all", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_unknown_target(
    db: tuple[Path, dict[str, list[float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = db
    assert main(["report", "--db", str(path), "-t", "127.9.9.9"]) == 3
    err = capsys.readouterr().err
    assert "no results for target '127.9.9.9'" in err and "127.0.0.1" in err


def test_bad_since_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--since", "yesterday-ish"]) == 3
    assert "is not a time" in capsys.readouterr().err


def test_parse_when() -> None:
    now = 1_000_000.0
    assert parse_when("90", now) == now - 90
    assert parse_when("15m", now) == now - 900
    assert parse_when("2d", now) == now - 2 * 86400
    assert parse_when("all", now) is None
    assert parse_when("1970-01-02T00:00:00", now) == 86400.0
    assert parse_when("1970-01-02T01:00:00+01:00", now) == 86400.0


def test_command_line_entry(db: tuple[Path, dict[str, list[float]]]) -> None:
    path, _ = db
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.run(
        [sys.executable, "-m", "fastping.cli", "report", "--db", str(path), "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 2


def test_targets_sorted_by_address_and_html_path_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    hosts = ["127.5.0.10", "127.5.0.2", "::1", "127.5.0.1", "gw.example"]

    async def go() -> None:
        store = ResultStore(tmp_path / "s.db")
        await store.start()
        store.submit(ProbeResult(h, h, 0, Outcome.REPLY, rtt_ms=0.1, time=now - 60) for h in hosts)
        await store.close()

    asyncio.run(go())
    assert main(["report", "--db", str(tmp_path / "s.db"), "--json"]) == 0
    rows = [json.loads(x)["target"] for x in capsys.readouterr().out.splitlines()]
    assert rows == ["127.5.0.1", "127.5.0.2", "127.5.0.10", "::1", "gw.example"]
    bad = tmp_path / "no-such-dir" / "r.html"
    assert main(["report", "--db", str(tmp_path / "s.db"), "--html", str(bad)]) == 3
    out, err = capsys.readouterr()
    assert out == ""  # refused before the table was printed
    assert "--html: cannot write" in err and "choose a writable path" in err
