"""Real servers the tests (and benchmarks) start and stop themselves, on loopback only:
a PostgreSQL cluster of their own (Debian's ``postgresql``: ``initdb`` into a temporary
directory, listening on 127.0.0.1 at a free port) and VictoriaMetrics (Debian's
``victoria-metrics``) as a Prometheus remote-write receiver.

Under CI=true a missing server is a failure, elsewhere a skip (``need``)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def need(what: str, why: str) -> None:
    """Skip (or, under CI=true, fail) because ``what`` is missing."""
    import pytest

    msg = f"needs {what}: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (CI installs it: see .ci/run)")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PgServer:
    """A PostgreSQL cluster of the test's own. As root, the server runs as the
    ``postgres`` user (it refuses to run as root). ``fsync`` is off unless
    ``durable``: the tests need a real server, not a durable one."""

    def __init__(self, *, durable: bool = False) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise FileNotFoundError("initdb (apt-get install postgresql)")
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="fp-fleet-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.durable = durable
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql://fastping@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        full = [os.path.join(self.bindir, cmd[0]), *cmd[1:]]
        if self.user is not None:
            full = ["runuser", "-u", self.user, "--", *full]
        return subprocess.run(full, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-U", "fastping", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        return self

    def start(self) -> PgServer:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.base} -c max_connections=50"
            + ("" if self.durable else " -c fsync=off -c synchronous_commit=off")
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                  "-t", "60", "start")  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return "" if cur.description is None else json.dumps(cur.fetchall(), default=str)

    def postgres_cpu_s(self) -> float:
        """CPU seconds (user + system) of every process of this cluster so far."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        pids = [pid]
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for p in pids:
            try:
                f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime, stime, and cutime, cstime: the backends that ended (a connection
            # closed) were reaped by the postmaster, which inherits their CPU time
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
        return total

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


class VictoriaMetrics:
    """Single-node VictoriaMetrics on 127.0.0.1 with a temporary storage directory."""

    def __init__(self) -> None:
        exe = shutil.which("victoria-metrics")
        if exe is None:
            raise FileNotFoundError("victoria-metrics (apt-get install victoria-metrics)")
        self.exe = exe
        self.base = Path(tempfile.mkdtemp(prefix="fp-fleet-vm-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = f"{self.url}/api/v1/write"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VictoriaMetrics:
        self.proc = subprocess.Popen(
            [
                self.exe,
                f"-storageDataPath={self.base / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-search.latencyOffset=0s",
                "-retentionPeriod=1d",
                "-loggerLevel=ERROR",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "vm.log", "wb"),  # noqa: SIM115 - the process keeps it
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"victoria-metrics did not come up: {(self.base / 'vm.log').read_text()}"
        )

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every raw sample of the series matching ``match`` (after a forced flush, so
        what was written a moment ago is there)."""
        import urllib.parse

        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]

    def query(self, expr: str) -> list[dict[str, Any]]:
        import urllib.parse

        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)
