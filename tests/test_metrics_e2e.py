"""End to end: a real Prometheus server scrapes two sharded agents on loopback, and a
query through its HTTP API returns every target exactly once."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, child_env, fastping_cmd
from fastping.shard import shard_of

PROMETHEUS = "/usr/bin/prometheus"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = [f"127.0.{i // 10}.{1 + i % 10}" for i in range(20)]  # loopback only

pytestmark = [
    pytest.mark.skipif(not ROOT, reason="needs root for raw ICMP sockets"),
    pytest.mark.skipif(
        shutil.which(PROMETHEUS) is None and shutil.which("prometheus") is None,
        reason="needs Debian's prometheus package (.ci/run installs it)",
    ),
    pytest.mark.timeout(90),
]


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_prometheus_scrapes_two_shards_and_sees_every_target_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    prom_port, a0, a1 = free_ports(3)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fastping\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{a0}', '127.0.0.1:{a1}']\n"
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, port in enumerate((a0, a1)):
            procs.append(
                subprocess.Popen(
                    fastping_cmd(
                        "monitor",
                        *TARGETS,
                        "--shard",
                        f"{i}/2",
                        "--interval",
                        "0.5",
                        "--duration",
                        "50",
                        "--db",
                        str(tmp_path / f"a{i}.db"),
                        "--metrics",
                        f"127.0.0.1:{port}",
                        "--max-cpu-percent",
                        "0",
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=child_env(),
                )  # fmt: skip
            )
        procs.append(
            subprocess.Popen(
                [
                    shutil.which(PROMETHEUS) or "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )  # fmt: skip
        )
        by_host: dict[str, list[str]] = {}
        up: list[dict[str, Any]] = []
        deadline = t0 + 45
        while time.monotonic() < deadline:
            time.sleep(0.5)
            for p in procs:
                assert p.poll() is None, p.communicate()[1][-2000:]
            try:
                up = query(prom_port, "up")
                res = query(prom_port, "count by (host, instance) (smokeping_requests_total > 0)")
            except OSError:
                continue  # Prometheus still starting
            by_host = {}
            for r in res:
                by_host.setdefault(r["metric"]["host"], []).append(r["metric"]["instance"])
            if len(by_host) == len(TARGETS) and sum(float(u["value"][1]) for u in up) == 2:
                break
        # every target exactly once, on the agent its shard names
        assert sorted(by_host) == sorted(TARGETS), (by_host, up)
        for host, instances in by_host.items():
            assert instances == [f"127.0.0.1:{(a0, a1)[shard_of(host, 2)]}"], host
        total = query(prom_port, "count(count by (host) (smokeping_requests_total))")
        assert float(total[0]["value"][1]) == len(TARGETS)
        shards = query(prom_port, "fastping_shard")
        assert {r["metric"]["shard"] for r in shards} == {"0/2", "1/2"}
        # no loss on loopback: requests are counted when their outcome is known, so
        # requests - responses is exactly the lost probes even mid-run
        loss = query(
            prom_port,
            "sum(smokeping_requests_total) - sum(smokeping_response_duration_seconds_count)",
        )
        assert float(loss[0]["value"][1]) == 0.0
        # every query of the example dashboard parses and runs against these metrics
        dash = json.loads((EXAMPLES / "grafana-fastping.json").read_text())
        for panel in dash["panels"]:
            for t in panel["targets"]:
                expr = t["expr"].replace("$__rate_interval", "5s").replace("$host", ".*")
                query(prom_port, expr)  # raises on a 400 (bad PromQL)
    finally:
        stop(procs)
    assert time.monotonic() - t0 < 60
