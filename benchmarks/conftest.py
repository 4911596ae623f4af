"""Shared pieces of the benchmarks: the reference tools, and a summary of the
ratios measured in this run (printed at the end; the machine is noisy, so only
same-run ratios mean anything)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = ROOT.parent / "shared" / "bench"
_LINES: list[str] = []


def report(line: str) -> None:
    """Add a line to the end-of-run summary (and print it now with -s)."""
    _LINES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _LINES:
        terminalreporter.section("fastping figures (same run)")
        for line in _LINES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def c_reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C reference sweep (../shared/bench/mmsg_ceiling.c), compiled here."""
    src = Path(os.environ.get("FASTPING_C_REFERENCE", SHARED_BENCH / "mmsg_ceiling.c"))
    if not src.exists():
        pytest.skip(f"C reference not found at {src} (set FASTPING_C_REFERENCE)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the C reference")
    out = tmp_path_factory.mktemp("cref") / "mmsg_ceiling"
    subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.fixture(scope="session")
def fping() -> str:
    path = shutil.which("fping")
    if path is None:
        pytest.skip("fping not installed (apt-get install fping)")
    return path


@pytest.fixture(scope="session")
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("sweep benchmarks need root (raw sockets)")


def fastping_cli() -> list[str]:
    return [sys.executable, "-m", "fastping.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env
