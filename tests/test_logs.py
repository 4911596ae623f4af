"""structlog setup: JSON lines in a rotating file, readable console, idempotent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from fastping.errors import ConfigError
from fastping.logs import configure_logging, get_logger


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_fastping_handler", False)]


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    fp = logging.getLogger("fastping")
    level = fp.level
    yield
    root = logging.getLogger()
    for h in ours():
        root.removeHandler(h)
        h.close()
    fp.setLevel(level)
    structlog.reset_defaults()


def lines(p: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in p.read_text().splitlines()]


def test_json_lines_to_file_and_readable_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "fastping.log"
    configure_logging(level="INFO", file=f)
    log = get_logger("fastping.test")
    log.info("target down", target="127.0.0.1", loss=0.5)
    log.debug("not shown at INFO")
    logging.getLogger("asyncio").warning("foreign %s record", "stdlib")
    for h in ours():
        h.flush()
    recs = lines(f)
    assert [r["event"] for r in recs] == ["target down", "foreign stdlib record"]
    first = recs[0]
    assert first["level"] == "info" and first["logger"] == "fastping.test"
    assert first["target"] == "127.0.0.1" and first["loss"] == 0.5
    assert str(first["timestamp"]).endswith("Z")
    err = capsys.readouterr().err
    assert "target down" in err and "target=127.0.0.1" in err and "loss=0.5" in err
    assert not err.lstrip().startswith("{")  # readable, not JSON


def test_console_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json")
    get_logger("fastping.test").warning("burst of timeouts", count=12)
    rec = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rec["event"] == "burst of timeouts" and rec["count"] == 12 and rec["level"] == "warning"


def test_idempotent(tmp_path: Path) -> None:
    f = tmp_path / "fastping.log"
    configure_logging(file=f, console=False)
    configure_logging(file=f, console=False)
    assert len(ours()) == 1
    get_logger("fastping.test").info("once")
    for h in ours():
        h.flush()
    assert [r["event"] for r in lines(f)] == ["once"]
    configure_logging(console=True)  # replaces: file handler gone, console added
    assert [type(h) for h in ours()] == [logging.StreamHandler]


def test_rotation(tmp_path: Path) -> None:
    f = tmp_path / "fastping.log"
    configure_logging(file=f, max_bytes=2000, backup_count=2, console=False)
    log = get_logger("fastping.test")
    for i in range(200):
        log.info("padding the log", i=i, pad="x" * 50)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["fastping.log", "fastping.log.1", "fastping.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert lines(f)[-1]["i"] == 199  # the newest is in the live file


def test_reserved_names_and_exceptions(tmp_path: Path) -> None:
    f = tmp_path / "fastping.log"
    configure_logging(file=f, console=False)
    log = get_logger("fastping.test")
    log.info("uses reserved keys", name="x", msg="y")  # would crash a plain stdlib extra=
    try:
        raise OSError(13, "Permission denied")
    except OSError:
        log.exception("socket failed")
    for h in ours():
        h.flush()
    a, b = lines(f)
    assert a["name_"] == "x" and a["msg_"] == "y"
    assert b["level"] == "error" and "PermissionError" in str(b["exception"])


def test_level_applies_to_fastping(tmp_path: Path) -> None:
    f = tmp_path / "fastping.log"
    configure_logging(level="warning", file=f, console=False)
    log = get_logger("fastping.test")
    log.info("quiet")
    log.warning("loud")
    for h in ours():
        h.flush()
    assert [r["event"] for r in lines(f)] == ["loud"]


def test_get_logger_before_configure_does_not_print_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    get_logger("fastping.test").info("nobody configured logging")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"level": "LOUD"}, "logging.level: 'LOUD' is not allowed: must be one of DEBUG"),
        ({"fmt": "xml"}, "logging.format: 'xml' is not allowed"),
        ({"max_bytes": -1}, "logging.max_bytes: -1 is not allowed"),
        ({"file": "/nonexistent-dir/x.log"}, "logging.file: cannot open '/nonexistent-dir/x.log'"),
    ],
)
def test_bad_settings(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        configure_logging(**kw)  # type: ignore[arg-type]
