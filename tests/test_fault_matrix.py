"""The fault matrix (issue #14): ``fastping monitor`` run through every failure its
store and its metrics endpoint can meet, each stopped by SIGTERM and by SIGINT.

For every case: the process exits by its deadline; the summary's counts add up
(every result is stored or dropped, every probe has one outcome); and what was
dropped is said (exit 4 and a line naming how many and why), while a fault that
cleared loses nothing (exit 0).

The cases run concurrently (one monitor each, a thread driving its fault), so the
matrix costs about one case's time; each parametrized test then checks its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, child_env, fastping_cmd

pytestmark = pytest.mark.skipif(
    not ROOT or shutil.which("mount") is None or shutil.which("chattr") is None,
    reason="the matrix mounts tmpfs and sets chattr +i: needs root, mount(8), chattr(1)",
)

RUN_S = 2.0  # probing before the signal
STOP_TIMEOUT_S = 2.0  # --stop-timeout
# signal -> exit: linger (timeout 0.2 s) + stop-timeout + close (<= 1 s) + a write
# attempt + interpreter exit, with room for a loaded 2-core machine
EXIT_DEADLINE_S = 0.2 + STOP_TIMEOUT_S + 1.0 + 8.0
REFUSE_DEADLINE_S = 30.0  # start-up to refusal, 16 interpreters starting at once
PER_PROBE = ("reply", "timeout", "unreachable", "time_exceeded", "send_error", "local_down")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tmpfs(d: Path, size: str) -> Iterator[Path]:
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def fill(d: Path) -> Path:
    """Fill the file system holding ``d`` to the last block."""
    f = d / "filler"
    with open(f, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return f


def make_db(db: Path) -> None:
    """A real fastping database (one short monitor run)."""
    r = subprocess.run(
        fastping_cmd("monitor", "127.0.0.1", "-i", "0.2", "--duration", "0.5", "--db", str(db)),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@dataclass
class Case:
    fault: str
    sig: signal.Signals
    clears: bool  # the fault is gone before the stop: nothing may be lost
    refused: bool = False  # refused at start (no summary)
    stdout: str = ""
    stderr: str = ""
    rc: int | None = None
    exit_after_signal_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Fault:
    """Sets up the failure, changes it while the monitor runs, cleans up."""

    clears = False
    refused = False
    metrics = False

    def __init__(self, d: Path) -> None:
        self.d = d
        self.db = d / "fp.db"

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self.d.mkdir(parents=True, exist_ok=True)
        yield

    def during(self, case: Case, port: int | None) -> None:  # runs for RUN_S
        time.sleep(RUN_S)


class FullThatFrees(Fault):
    clears = True

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        with tmpfs(self.d, "512k"):
            self.filler = fill(self.d)
            yield

    def during(self, case: Case, port: int | None) -> None:
        time.sleep(RUN_S / 2)
        self.filler.unlink()
        time.sleep(RUN_S / 2 + 1.0)  # the writer's backoff


class FullNeverFrees(Fault):
    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        with tmpfs(self.d, "256k"):
            fill(self.d)
            yield


class Locked(Fault):
    """Another process holds an exclusive lock from before the start to after the exit."""

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self.d.mkdir(parents=True, exist_ok=True)
        make_db(self.db)
        conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()


class ReadOnly(Fault):
    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        with tmpfs(self.d, "4m"):
            make_db(self.db)
            subprocess.run(["mount", "-o", "remount,ro", str(self.d)], check=True)
            yield


class Immutable(Fault):
    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self.d.mkdir(parents=True, exist_ok=True)
        make_db(self.db)
        subprocess.run(["chattr", "+i", str(self.db)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(self.db)], check=False)


class CorruptAtStart(Fault):
    refused = True

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self.d.mkdir(parents=True, exist_ok=True)
        self.db.write_bytes(os.urandom(100_000))
        yield


class CorruptMidRun(Fault):
    """The file's first page is overwritten while the monitor writes to it."""

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self.d.mkdir(parents=True, exist_ok=True)
        make_db(self.db)
        yield

    def during(self, case: Case, port: int | None) -> None:
        time.sleep(RUN_S / 2)
        with open(self.db, "r+b") as f:
            f.write(os.urandom(4096))
        time.sleep(RUN_S / 2)


class ScrapeStorm(Fault):
    """200 concurrent scrapes of the metrics endpoint while probing."""

    clears = True
    metrics = True

    def during(self, case: Case, port: int | None) -> None:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape(_: int) -> int:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return 1 if b"fastping_" in r.read() else 0
            except OSError:
                return 0

        time.sleep(0.5)
        with ThreadPoolExecutor(200) as ex:
            ok = sum(ex.map(scrape, range(200)))
        case.extra["scrapes_ok"] = ok
        time.sleep(0.5)


FAULTS: dict[str, type[Fault]] = {
    "full_frees": FullThatFrees,
    "full_never_frees": FullNeverFrees,
    "locked": Locked,
    "read_only": ReadOnly,
    "immutable": Immutable,
    "corrupt_at_start": CorruptAtStart,
    "corrupt_mid_run": CorruptMidRun,
    "scrape_storm": ScrapeStorm,
}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def run_case(base: Path, fault_name: str, sig_name: str) -> Case:
    fault = FAULTS[fault_name](base / f"{fault_name}-{sig_name}")
    case = Case(fault_name, SIGNALS[sig_name], fault.clears, fault.refused)
    port = _free_port() if fault.metrics else None
    with fault.around():
        cmd = fastping_cmd(
            "monitor", "127.0.0.1", "::1", "-i", "0.05", "-t", "0.2", "--db", str(fault.db),
            "--stop-timeout", str(STOP_TIMEOUT_S),
        )  # fmt: skip
        if port:
            cmd += ["--metrics", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        t_start = time.monotonic()
        lines: list[str] = []
        out: list[str] = []
        started = threading.Event()

        def read_err() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if "monitor started: first round done" in line:
                    started.set()

        def read_out() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.read())

        readers = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out)]
        for r in readers:
            r.start()
        try:
            if fault.refused:
                t_sig = t_start  # nothing to signal: the deadline counts from the start
            else:
                assert started.wait(30), "".join(lines)
                fault.during(case, port)
                t_sig = time.monotonic()
                proc.send_signal(case.sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            case.exit_after_signal_s = time.monotonic() - t_sig
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for r in readers:
            r.join(5)
        case.rc, case.stdout, case.stderr = proc.returncode, "".join(out), "".join(lines)
    return case


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Case]:
    base = tmp_path_factory.mktemp("matrix")
    keys = [(f, s) for f in FAULTS for s in SIGNALS]
    with ThreadPoolExecutor(len(keys)) as ex:
        futures = {k: ex.submit(run_case, base, *k) for k in keys}
    out: dict[tuple[str, str], Case | BaseException] = {}
    for k, f in futures.items():
        e = f.exception()
        out[k] = e if e is not None else f.result()
    return out  # type: ignore[return-value]


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(matrix: dict[tuple[str, str], Case], fault: str, sig: str) -> None:
    c = matrix[(fault, sig)]
    if isinstance(c, BaseException):
        raise c  # the case's own setup failed: reported here, not for all 16
    where = f"{fault}/{sig}: rc={c.rc}\nstdout: {c.stdout}\nstderr tail:\n" + "".join(
        c.stderr.splitlines(keepends=True)[-8:]
    )
    deadline = REFUSE_DEADLINE_S if c.refused else EXIT_DEADLINE_S
    assert c.exit_after_signal_s is not None and c.exit_after_signal_s < deadline, where
    if c.refused:
        assert c.rc == 3 and c.stdout == "", where
        assert "is not a fastping database (no SQLite header)" in c.stderr.splitlines()[-1], where
        return
    summary = json.loads(c.stdout.strip().splitlines()[-1])
    sent, results = summary["sent"], summary["results"]
    stored, dropped = summary["stored"], summary["store_dropped"]
    assert sent > 0, where
    # every probe ended as exactly one outcome; every result was stored or dropped
    assert sent == sum(summary["outcomes"][k] for k in PER_PROBE), where
    assert results == stored + dropped, where
    if c.clears:
        assert (c.rc, dropped, stored) == (0, 0, results), where
    if dropped:
        last = c.stderr.strip().splitlines()[-1]
        assert c.rc == 4, where
        assert last.startswith(f"fastping: {dropped} of {results} results were not written"), where
        assert summary["store_last_error"] and summary["store_last_error"] in last, where
    else:
        assert c.rc == 0, where
    if fault in ("full_never_frees", "locked", "read_only", "immutable"):
        assert dropped == results and stored == 0, where  # the fault never cleared
    if fault == "scrape_storm":
        assert c.extra["scrapes_ok"] == 200 and summary["metrics_scrapes"] >= 200, where
