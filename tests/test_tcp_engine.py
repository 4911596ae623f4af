"""TCP targets everywhere a target goes (issue #17): the engine, ``fastping monitor``
(command line and config file), the store (kind and port with each target, closed
ports, a schema 2 file migrated), ``report`` and the metrics. Real sockets: listeners
on loopback, closed ports, a port nft drops inside a namespace the test makes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import child_env, fastping_cmd, slot_counts
from fastping.chunk import OUTCOME_CODE
from fastping.engine import MonitoringEngine
from fastping.errors import TargetError
from fastping.guard import ResourceGuard
from fastping.metrics import MetricsCollector
from fastping.results import OUTCOME_BY_KIND, Outcome
from fastping.store import SCHEMA_VERSION, ResultStore
from privhelpers import netns
from test_metrics import promtool_check
from test_store_pg import pg_server, pg_url  # noqa: F401 (fixtures: an initdb of our own)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: raw sockets, netns")

DATA = Path(__file__).parent / "data"
# below the ephemeral range the listeners' ports come from (see test_tcp.QUIET_PORTS)
QUIET_PORTS = 20000


def _listener(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(4096)
    return s


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """(an open port with a listener on 127.0.0.1, a closed port)."""
    with _listener() as ls:
        yield ls.getsockname()[1], _free_port()


def _monitor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastping_cmd("monitor", "--table", "never", "--log-level", "ERROR", *args),
        capture_output=True, text=True, env=child_env(), timeout=120, cwd=cwd,
    )  # fmt: skip


def _outcomes(db: Path) -> dict[str, Counter[str]]:
    store = ResultStore(db)
    return {t: Counter(r.outcome.value for r in store.recent(t, 1000)) for t in store.targets()}


# ------------------------------------------------------------------ identity, outcomes


def test_closed_is_an_outcome_with_the_cores_log_code() -> None:
    from fastping import _icmp

    assert Outcome.CLOSED.value == "closed"
    assert OUTCOME_BY_KIND[_icmp.EV_CLOSED] is Outcome.CLOSED
    assert OUTCOME_CODE[Outcome.CLOSED] == _icmp.EV_CLOSED == 9  # a kind is its code
    assert len(set(OUTCOME_CODE.values())) == len(OUTCOME_CODE)


def test_kind_and_port_are_part_of_a_targets_identity() -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    e.add_target("127.0.0.1")
    e.add_target("tcp://127.0.0.1:22")
    e.add_target("127.0.0.1", kind="tcp", port=80)
    e.add_target("tcp://[::1]:22")
    e.add_target("tcp://127.0.1.0/30:443")  # a block: each address on the port
    hosts = sorted(i.host for i in e.targets())
    assert hosts == sorted([
        "127.0.0.1", "tcp://127.0.0.1:22", "tcp://127.0.0.1:80", "tcp://[::1]:22",
        *(f"tcp://127.0.1.{i}:443" for i in range(4)),
    ])  # fmt: skip
    info = e.target("tcp://127.0.0.1:80")
    assert (info.kind, info.port, info.address) == ("tcp", 80, "127.0.0.1")
    assert (e.target("127.0.0.1").kind, e.target("127.0.0.1").port) == ("icmp", 0)
    with pytest.raises(TargetError, match="already being watched"):
        e.add_target("tcp://127.0.0.1:80")
    with pytest.raises(TargetError, match="already being watched"):
        e.add_target("127.0.0.1", kind="tcp", port=22)
    e.remove_target("tcp://127.0.1.0/30:443")
    assert len(e) == 4


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("tcp://127.0.0.1", {}, "write tcp://HOST:PORT"),
        ("tcp://127.0.0.1:0", {}, "port 1..65535"),
        ("sctp://127.0.0.1:9", {}, "unknown probe kind 'sctp'"),
        ("127.0.0.1", {"kind": "tcp"}, "needs a port"),
        ("127.0.0.1", {"kind": "icmp", "port": 3}, "ICMP has no ports"),
        ("tcp://127.0.0.1:22", {"port": 23}, "names its kind and port already"),
    ],
)
def test_bad_kind_targets_say_what_to_write(text: str, kw: dict[str, object], message: str) -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    with pytest.raises(TargetError, match=message):
        e.add_target(text, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the engine, mixed


Mixed = tuple[MonitoringEngine, Counter[tuple[str, str]], MetricsCollector]


async def _mixed_run(open_port: int, closed_port: int) -> Mixed:
    e = MonitoringEngine(
        interval_s=0.1, timeout_s=0.3, guard=ResourceGuard(None, None),
        kind_options={"tcp": {"sport_base": QUIET_PORTS}},
    )  # fmt: skip
    for t in ("127.0.0.1", f"tcp://127.0.0.1:{open_port}", f"tcp://127.0.0.1:{closed_port}",
              f"tcp://localhost:{open_port}"):  # fmt: skip
        e.add_target(t)
    metrics = MetricsCollector(e)
    sub = e.subscribe(100_000)
    await e.run(1.2, handle_signals=False)
    seen = Counter(
        (ev.result.target, ev.result.outcome.value) for ev in sub.drain() if hasattr(ev, "result")
    )
    return e, seen, metrics


def test_engine_probes_icmp_and_tcp_targets_side_by_side(ports: tuple[int, int]) -> None:
    open_port, closed_port = ports
    e, seen, metrics = asyncio.run(_mixed_run(open_port, closed_port))
    op, cl = f"tcp://127.0.0.1:{open_port}", f"tcp://127.0.0.1:{closed_port}"
    # every probe of each target has exactly its outcome
    by_target: dict[str, set[str]] = {}
    for (t, o), _n in seen.items():
        by_target.setdefault(t, set()).add(o)
    assert by_target == {
        "127.0.0.1": {"reply"}, op: {"reply"}, cl: {"closed"},
        f"tcp://localhost:{open_port}": {"reply"},
    }  # fmt: skip
    for t in by_target:
        assert seen[(t, next(iter(by_target[t])))] >= 8, seen
    st = e.stats()
    assert st["outcomes"]["closed"] == seen[(cl, "closed")]
    assert st["received"] == st["outcomes"]["reply"]
    assert st["results"] == st["sent"]
    info = {i.host: i for i in e.targets()}
    assert (
        info[cl].status == "down" and info[cl].received == 0 and info[cl].last_outcome == "closed"
    )
    assert info[op].status == "up" and info[op].received == info[op].probes > 0
    # the metrics: kind and port labels, smokeping's families, a closed outcome for TCP only
    text = metrics.render().decode()
    promtool_check(text)
    assert (
        f'smokeping_requests_total{{ip="127.0.0.1",host="127.0.0.1",source="",tos="0",'
        f'kind="tcp",port="{closed_port}"}} {seen[(cl, "closed")]}'
    ) in text.splitlines()
    assert (
        'smokeping_response_duration_seconds_count{ip="127.0.0.1",host="127.0.0.1",source="",'
        f'tos="0",kind="tcp",port="{closed_port}"}} 0'
    ) in text.splitlines()
    assert (
        f'smokeping_response_duration_seconds_count{{ip="127.0.0.1",host="127.0.0.1",source="",'
        f'tos="0",kind="icmp",port=""}} {seen[("127.0.0.1", "reply")]}'
    ) in text.splitlines()
    assert f'port="{closed_port}",outcome="closed"}} {seen[(cl, "closed")]}' in text
    assert 'kind="icmp",port="",outcome="closed"' not in text  # ICMP has no closed ports
    # the generic prometheus_client path gives the same samples
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    reg = CollectorRegistry()
    reg.register(metrics)

    def samples(t: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(t)
            if f.name.startswith(("smokeping_requests", "smokeping_response", "fastping_results"))
            for s in f.samples
        }

    assert samples(generate_latest(reg).decode()) == samples(text)


def test_icmp_only_metrics_keep_smokeping_probers_labels() -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    e.add_target("127.0.0.1")
    text = MetricsCollector(e).render().decode()
    assert 'smokeping_requests_total{ip="127.0.0.1",host="127.0.0.1",source="",tos="0"} 0' in text
    assert "kind=" not in text


# ------------------------------------------------------------------ monitor and the store


def _filtered_port_rule(ns: str, port: int) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft",
         "add table inet fpt; add chain inet fpt in { type filter hook input priority 0; }; "
         f"add rule inet fpt in tcp dport {port} drop"],
        check=True,
    )  # fmt: skip


def test_monitor_open_closed_and_filtered_ports_are_stored_as_such(tmp_path: Path) -> None:
    """Inside a namespace: a listener (open), a port nobody listens on (closed) and a
    port nft drops (filtered); the monitor stores reply / closed / timeout for them
    and the report shows each TCP target as tcp://host:port."""
    db = tmp_path / "tcp.db"
    with netns() as ns:
        _filtered_port_rule(ns, 1111)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket,sys,time\n"
             "s=socket.socket(); s.bind(('127.0.0.1',2222)); s.listen(4096)\n"
             "print('up', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "up\n"
            r = subprocess.run(
                ["ip", "netns", "exec", ns, *fastping_cmd(
                    "monitor", "--table", "never", "--log-level", "ERROR", "--db", str(db),
                    "-i", "0.2", "-t", "0.5", "-d", "2",
                    "tcp://127.0.0.1:2222", "tcp://127.0.0.1:3333", "tcp://127.0.0.1:1111",
                    "127.0.0.1",
                )],
                capture_output=True, text=True, env=child_env(), timeout=120,
            )  # fmt: skip
        finally:
            listener.kill()
            listener.wait()
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    got = _outcomes(db)
    assert set(got) == {"tcp://127.0.0.1:2222", "tcp://127.0.0.1:3333",
                        "tcp://127.0.0.1:1111", "127.0.0.1"}  # fmt: skip
    assert set(got["tcp://127.0.0.1:2222"]) == {"reply"}
    assert set(got["tcp://127.0.0.1:3333"]) == {"closed"}
    assert set(got["tcp://127.0.0.1:1111"]) == {"timeout"}
    assert set(got["127.0.0.1"]) == {"reply"}
    assert all(sum(c.values()) >= 6 for c in got.values()), got
    assert summary["outcomes"]["closed"] == got["tcp://127.0.0.1:3333"]["closed"]
    assert summary["stored"] == summary["results"] == sum(sum(c.values()) for c in got.values())
    # the store keeps the kind and the port with each target
    with sqlite3.connect(db) as c:
        rows = dict((n, (k, p)) for n, k, p in c.execute("SELECT name, kind, port FROM targets"))
        version = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(SCHEMA_VERSION)
    assert rows == {
        "tcp://127.0.0.1:2222": ("tcp", 2222), "tcp://127.0.0.1:3333": ("tcp", 3333),
        "tcp://127.0.0.1:1111": ("tcp", 1111), "127.0.0.1": ("icmp", 0),
    }  # fmt: skip
    # report: a table per kind, the TCP one with its CLOSED column; JSON with kind and port
    html = str(tmp_path / "r.html")
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--html", html),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    lines = rep.stdout.splitlines()
    assert lines[1] == "ICMP echo: 1 targets"
    tcp_head = next(i for i, ln in enumerate(lines) if ln.startswith("TCP SYN"))
    assert lines[tcp_head + 1].split()[:6] == [
        "TARGET",
        "ADDRESS",
        "SENT",
        "RECV",
        "CLOSED",
        "LOSS",
    ]
    closed_row = next(ln.split() for ln in lines if ln.startswith("tcp://127.0.0.1:3333"))
    n_closed = got["tcp://127.0.0.1:3333"]["closed"]
    assert closed_row[2:6] == [str(n_closed), "0", str(n_closed), "100.0%"]
    page = (tmp_path / "r.html").read_text()
    assert "<h2>tcp://127.0.0.1:2222</h2>" in page and "TCP targets" in page
    assert f"closed {n_closed}" in page
    js = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--json"),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    recs = {d["target"]: d for d in map(json.loads, js.stdout.splitlines())}
    assert (recs["tcp://127.0.0.1:1111"]["kind"], recs["tcp://127.0.0.1:1111"]["port"]) == (
        "tcp",
        1111,
    )
    assert recs["tcp://127.0.0.1:1111"]["timeouts"] == got["tcp://127.0.0.1:1111"]["timeout"]
    assert recs["tcp://127.0.0.1:3333"]["closed"] == n_closed
    assert (recs["127.0.0.1"]["kind"], recs["127.0.0.1"]["port"]) == ("icmp", 0)


def test_monitor_config_file_with_tcp_targets_and_tcp_ports_flag(
    tmp_path: Path, ports: tuple[int, int]
) -> None:
    open_port, closed_port = ports
    cfg = tmp_path / "fastping.yaml"
    cfg.write_text(
        "defaults: {interval_s: 0.2, timeout_s: 0.5}\n"
        "targets:\n"
        "  - 127.0.0.1\n"
        f"  - tcp://127.0.0.1:{open_port}\n"
        f"  - {{host: 127.0.0.1, kind: tcp, port: {closed_port}, labels: {{svc: none}}}}\n"
        f"  - {{host: localhost, port: {open_port}}}\n"  # a port alone means TCP
        f"store: {{path: {tmp_path / 'c.db'}}}\n"
    )
    r = _monitor("--config", str(cfg), "-d", "1.5")
    assert r.returncode == 0, r.stderr
    got = _outcomes(tmp_path / "c.db")
    assert {t: set(c) for t, c in got.items()} == {
        "127.0.0.1": {"reply"},
        f"tcp://127.0.0.1:{open_port}": {"reply"},
        f"tcp://127.0.0.1:{closed_port}": {"closed"},
        f"tcp://localhost:{open_port}": {"reply"},
    }
    # --tcp -p: each plain target on each port; tcp:// targets keep theirs
    db = tmp_path / "p.db"
    r = _monitor("127.0.0.1", f"tcp://[::1]:{_free_port('::1')}", "--tcp", "-p",
                 f"{open_port},{closed_port}", "--db", str(db), "-i", "0.2", "-d", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = _outcomes(db)
    assert {t: set(c) for t, c in got.items() if t.startswith("tcp://127")} == {
        f"tcp://127.0.0.1:{open_port}": {"reply"},
        f"tcp://127.0.0.1:{closed_port}": {"closed"},
    }
    assert len(got) == 3 and not any(t == "127.0.0.1" for t in got)


@pytest.mark.parametrize(
    ("args", "yaml", "message"),
    [
        (["--tcp", "127.0.0.1"], None, "--tcp needs the ports to probe"),
        (["-p", "22", "127.0.0.1"], None, "--port is for TCP or UDP probes: add --tcp or --udp"),
        (["--tcp", "-p", "22-10", "127.0.0.1"], None, "within 1..65535, low to high"),
        (["tcp://127.0.0.1:99999"], None, "port 1..65535"),
        ([], "targets: [{host: 127.0.0.1, kind: tcp}]", "a tcp target needs a port"),
        ([], "targets: [{host: 127.0.0.1, kind: icmp, port: 3}]", "ICMP has no ports"),
        (
            [],
            "targets: [tcp://127.0.0.1:22, {host: 127.0.0.1, port: 22}]",
            "duplicate of targets[0]",
        ),
        ([], "targets: [{host: 'http://127.0.0.1/', port: 80}]", "is an HTTP check"),
    ],
)
def test_monitor_refuses_bad_tcp_targets_saying_what_to_do(
    tmp_path: Path, args: list[str], yaml: str | None, message: str
) -> None:
    if yaml is not None:
        (tmp_path / "f.yaml").write_text(yaml + "\n")
        args = [*args, "--config", str(tmp_path / "f.yaml")]
    r = _monitor(*args, "--db", str(tmp_path / "x.db"), "-d", "0.5")
    assert r.returncode == 3, r.stderr
    assert message in r.stderr, r.stderr


def test_monitor_tcp_mode_raw_without_cap_net_raw_names_it(tmp_path: Path) -> None:
    r = subprocess.run(
        ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
         *fastping_cmd("monitor", "--table", "never", "tcp://127.0.0.1:22", "--mode", "raw",
                       "--db", str(tmp_path / "x.db"), "-d", "0.5")],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 4, r.stderr
    assert "CAP_NET_RAW" in r.stderr and "TCP targets need a raw socket" in r.stderr
    assert "--mode connect" in r.stderr  # what to do instead
    assert not (tmp_path / "x.db").exists()  # refused before anything started


NO_NET_RAW = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]


@pytest.mark.parametrize("how", ["no CAP_NET_RAW", "--mode connect"])
def test_monitor_tcp_by_connect_open_closed_filtered(tmp_path: Path, how: str) -> None:
    """Without CAP_NET_RAW (auto mode), or with --mode connect as root, the monitor
    times TCP targets by connect(): inside a namespace a listener (open), a port
    nobody has (closed), a port nft drops (filtered) are stored as reply / closed /
    timeout, the summary says "timing": "connect", and no connection is left behind
    (SO_LINGER 0: no TIME-WAIT, no ESTAB, no SYN-SENT)."""
    db = tmp_path / "c.db"
    unpriv = how == "no CAP_NET_RAW"
    with netns() as ns:
        _filtered_port_rule(ns, 1111)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket,sys,time\n"
             "s=socket.socket(); s.bind(('127.0.0.1',2222)); s.listen(4096)\n"
             "print('up', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "up\n"
            r = subprocess.run(
                ["ip", "netns", "exec", ns, *(NO_NET_RAW if unpriv else []), *fastping_cmd(
                    "monitor", "--table", "never", "--log-level", "WARNING", "--db", str(db),
                    "-i", "0.2", "-t", "0.5", "-d", "2",
                    *([] if unpriv else ["--mode", "connect"]),
                    "tcp://127.0.0.1:2222", "tcp://127.0.0.1:3333", "tcp://127.0.0.1:1111",
                    "tcp://[::1]:3333",
                )],
                capture_output=True, text=True, env=child_env(), timeout=120,
            )  # fmt: skip
            ss = subprocess.run(
                ["ip", "netns", "exec", ns, "ss", "-Htan"], capture_output=True, text=True,
                check=True,
            ).stdout  # fmt: skip
        finally:
            listener.kill()
            listener.wait()
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["timing"] == "connect"
    # auto mode says why it fell back; --mode connect was asked for, so nothing to say
    assert ("no CAP_NET_RAW: TCP timed by connect()" in r.stderr) is unpriv, r.stderr
    got = _outcomes(db)
    assert {t: set(c) for t, c in got.items()} == {
        "tcp://127.0.0.1:2222": {"reply"},
        "tcp://127.0.0.1:3333": {"closed"},
        "tcp://[::1]:3333": {"closed"},
        "tcp://127.0.0.1:1111": {"timeout"},
    }
    assert all(sum(c.values()) >= 6 for c in got.values()), got
    assert summary["outcomes"]["closed"] == got["tcp://127.0.0.1:3333"]["closed"] + got[
        "tcp://[::1]:3333"]["closed"]  # fmt: skip
    assert summary["outcomes"]["reply"] == got["tcp://127.0.0.1:2222"]["reply"]
    assert summary["stored"] == summary["results"] == sum(sum(c.values()) for c in got.values())
    assert summary["outcomes"]["send_error"] == 0
    # the listener's queue may hold connections that were reset; none of ours is alive
    states = [ln.split()[0] for ln in ss.splitlines() if ln.strip()]
    assert [s for s in states if s not in ("LISTEN",)] == [], ss
    # the RTTs are there (user-space timing), the closed ones too
    store = ResultStore(db)
    rtts = [x.rtt_ms for x in store.recent("tcp://127.0.0.1:2222", 1000)]
    assert rtts and all(v is not None and v > 0 for v in rtts)


@contextlib.contextmanager
def _udp_echo(host: str = "127.0.0.1") -> Iterator[int]:
    """A UDP echo server on ``host``; yields its port."""
    import threading

    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((host, 0))
    srv.settimeout(0.1)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(2048)
            except TimeoutError:
                continue
            srv.sendto(data, peer)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        th.join()
        srv.close()


def _free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def test_host_port_targets_with_tcp_and_udp_in_file_sd_config_and_command_line(
    tmp_path: Path, ports: tuple[int, int]
) -> None:
    """Prometheus writes targets host:port: with --tcp / --udp a file_sd target, a
    command-line target or a config entry written host:port ([v6]:port) is probed on
    its own port, a portless one on each --port; without them file_sd keeps ICMP."""
    tcp_open, tcp_closed = ports
    udp_closed = _free_udp_port("::1")
    with _udp_echo() as udp_open:
        sd = tmp_path / "sd.json"
        sd.write_text(json.dumps([
            {"targets": [f"127.0.0.1:{tcp_open}", f"[::1]:{tcp_closed}"], "labels": {"job": "a"}},
            {"targets": ["localhost"], "labels": {"job": "b"}},
        ]))  # fmt: skip
        runs = {
            "file_sd --tcp": (["-f", str(sd), "--tcp", "-p", str(tcp_open)], {
                f"tcp://127.0.0.1:{tcp_open}": {"reply"},
                f"tcp://[::1]:{tcp_closed}": {"closed"},
                f"tcp://localhost:{tcp_open}": {"reply"},
            }),
            "file_sd, ICMP": (["-f", str(sd)], {
                "127.0.0.1": {"reply"}, "::1": {"reply"}, "localhost": {"reply"},
            }),
            "command line --udp": (
                ["--udp", f"127.0.0.1:{udp_open}", f"[::1]:{udp_closed}"], {
                    f"udp://127.0.0.1:{udp_open}": {"reply"},
                    f"udp://[::1]:{udp_closed}": {"closed"},
                }),
        }  # fmt: skip
        cfg = tmp_path / "hp.yaml"
        cfg.write_text(
            "defaults: {interval_s: 0.2, timeout_s: 0.5}\ntargets:\n"
            f"  - 127.0.0.1:{tcp_open}\n"  # a port alone means TCP
            f"  - {{host: '[::1]:{tcp_closed}', labels: {{svc: x}}}}\n"
            f"  - {{host: '127.0.0.1:{udp_open}', kind: udp}}\n"
        )
        runs["config"] = (["--config", str(cfg)], {
            f"tcp://127.0.0.1:{tcp_open}": {"reply"},
            f"tcp://[::1]:{tcp_closed}": {"closed"},
            f"udp://127.0.0.1:{udp_open}": {"reply"},
        })  # fmt: skip
        results = {}
        for name, (args, _want) in runs.items():
            db = tmp_path / f"{len(results)}.db"
            r = _monitor(*args, "-i", "0.2", "-t", "0.5", "--db", str(db), "-d", "1.2")
            assert r.returncode == 0, (name, r.stderr)
            results[name] = {t: set(c) for t, c in _outcomes(db).items()}
    for name, (_args, want) in runs.items():
        assert results[name] == want, (name, results[name])
    # bad ones say what to write
    for args, message in (
        (["-f", str(sd), "--tcp"], "--tcp needs the ports to probe 'localhost'"),
        (["--tcp", "--udp", "127.0.0.1:22"], "--tcp and --udp: give one"),
        (["--tcp", "127.0.0.1:0"], "port 0 must be 1..65535"),
    ):
        r = _monitor(*args, "--db", str(tmp_path / "bad.db"), "-d", "0.5")
        assert r.returncode == 3 and message in r.stderr, (args, r.stderr)
    cfg.write_text(f"targets:\n  - {{host: '127.0.0.1:{tcp_open}', port: 1}}\n")
    r = _monitor("--config", str(cfg), "--db", str(tmp_path / "bad.db"), "-d", "0.5")
    assert r.returncode == 3 and "names its port already: drop port: 1" in r.stderr, r.stderr


# ------------------------------------------------------------------ an older database


def _schema2_db(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.executescript((DATA / "store_schema2.sql").read_text())


def test_a_schema_2_database_stays_readable_and_is_migrated_by_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _schema2_db(db)
    os.chmod(db, 0o444)  # a reader changes nothing (read-only even for root's checks below)
    before = ResultStore(db).all_stats(None, None)
    assert [(s["target"], s["sent"], s["received"], s["closed"]) for s in before] == [
        ("127.0.0.1", 8, 8, 0), ("127.0.0.2", 2, 0, 0),
    ]  # fmt: skip
    assert before[0]["approximate"]  # part of it from rollups: read through the views
    assert ResultStore(db).target_kinds() == {"127.0.0.1": ("icmp", 0), "127.0.0.2": ("icmp", 0)}
    assert ResultStore(db).count_results() == 10
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone()[0] == "2"  # untouched
    os.chmod(db, 0o644)

    async def write() -> None:
        store = ResultStore(db)
        await store.start()
        from fastping.results import ProbeResult

        now = time.time()
        store.submit([ProbeResult("tcp://127.0.0.1:22", "127.0.0.1", 0, Outcome.CLOSED, 0.05,
                                  64, time=now)])  # fmt: skip
        await store.close()

    asyncio.run(write())
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
        kinds = c.execute("SELECT name, kind, port FROM targets ORDER BY id").fetchall()
    assert kinds == [("127.0.0.1", "icmp", 0), ("127.0.0.2", "icmp", 0),
                     ("tcp://127.0.0.1:22", "tcp", 22)]  # fmt: skip
    after = {s["target"]: s for s in ResultStore(db).all_stats(None, None)}
    for s in before:  # the old data as it was
        assert {k: after[s["target"]][k] for k in s} == s
    tcp = after["tcp://127.0.0.1:22"]
    assert (tcp["sent"], tcp["received"], tcp["closed"], tcp["loss"]) == (1, 0, 1, 1.0)
    assert [r.outcome for r in ResultStore(db).recent("tcp://127.0.0.1:22")] == [Outcome.CLOSED]
    # and a rollup of closed records keeps them (the migrated rollups.closed column)

    async def fold() -> int:
        store = ResultStore(db, retention_s=1)
        await store.start()
        n = await store.rollup(now=time.time() + 3600)
        await store.close()
        return n

    assert asyncio.run(fold()) >= 1
    rolled = ResultStore(db).target_stats("tcp://127.0.0.1:22")
    assert rolled is not None and rolled["closed"] == 1 and rolled["approximate"]


# ------------------------------------------------------------------ the shared store


def test_postgresql_store_keeps_kind_port_and_closed_and_adds_them_to_an_older_schema(
    pg_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    import psycopg

    from fastping.results import ProbeResult
    from fastping.store_pg import PgResultStore

    now = time.time()

    async def write(results: list[ProbeResult]) -> None:
        store = PgResultStore(pg_url, agent="a1")
        await store.start()
        store.submit(results)
        assert await store.flush(30)
        await store.close()

    icmp = [ProbeResult("127.0.0.1", "127.0.0.1", 0, Outcome.REPLY, 0.1, 64, time=now)]
    asyncio.run(write(icmp))
    # a database as the version before TCP targets made it: without the new columns
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("ALTER TABLE fastping_targets DROP COLUMN kind, DROP COLUMN port")
        c.execute("ALTER TABLE fastping_rollups DROP COLUMN closed")
    tcp = [
        ProbeResult("tcp://127.0.0.1:22", "127.0.0.1", i, Outcome.CLOSED, 0.05, 64, time=now + i)
        for i in range(3)
    ]
    asyncio.run(write(tcp))
    reader = PgResultStore(pg_url)
    try:
        assert reader.target_kinds() == {
            "127.0.0.1": ("icmp", 0),
            "tcp://127.0.0.1:22": ("tcp", 22),
        }
        st = {s["target"]: s for s in reader.all_stats(None, None)}
        assert (st["tcp://127.0.0.1:22"]["closed"], st["tcp://127.0.0.1:22"]["sent"]) == (3, 3)
        assert st["tcp://127.0.0.1:22"]["received"] == 0
        assert (st["127.0.0.1"]["received"], st["127.0.0.1"]["closed"]) == (1, 0)
    finally:
        reader.close_reader()


# ------------------------------------------------------------------ SIGHUP and /metrics


def _scrape(port: int, want: str) -> str:
    import urllib.request

    deadline = time.monotonic() + 20
    text = ""
    while want not in text:
        assert time.monotonic() < deadline, text
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            pass
        time.sleep(0.2)
    return text


def test_sighup_swaps_tcp_targets_and_the_endpoint_labels_them(
    tmp_path: Path, ports: tuple[int, int]
) -> None:
    import signal

    open_port, closed_port = ports
    cfg = tmp_path / "fastping.yaml"
    head = "defaults: {interval_s: 0.1, timeout_s: 0.5}\nstore: {chunk_s: 1}\ntargets:\n"
    cfg.write_text(head + f"  - 127.0.0.1\n  - tcp://127.0.0.1:{open_port}\n")
    db, mport = tmp_path / "h.db", _free_port()
    proc = subprocess.Popen(
        fastping_cmd("monitor", "-C", str(cfg), "--db", str(db), "--table", "never",
                     "--log-level", "ERROR", "--metrics", f"127.0.0.1:{mport}", "-d", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        base = 'smokeping_requests_total{ip="127.0.0.1",host="127.0.0.1",source="",tos="0",'
        before = _scrape(mport, f'{base}kind="tcp",port="{open_port}"}}')
        assert f'{base}kind="icmp",port=""}}' in before
        cfg.write_text(head + f"  - 127.0.0.1\n  - {{host: 127.0.0.1, port: {closed_port}}}\n")
        proc.send_signal(signal.SIGHUP)
        closed_line = f'port="{closed_port}",outcome="closed"}} '
        after = _scrape(mport, closed_line)
        deadline = time.monotonic() + 20
        while int(after.split(closed_line, 1)[1].split()[0]) == 0:  # no probe answered yet
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
            after = _scrape(mport, closed_line)
        assert f'kind="tcp",port="{open_port}"' not in after  # removed: its series gone
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    got = _outcomes(db)
    assert {t: set(c) for t, c in got.items()} == {
        "127.0.0.1": {"reply"},
        f"tcp://127.0.0.1:{open_port}": {"reply"},
        f"tcp://127.0.0.1:{closed_port}": {"closed"},
    }
    assert got[f"tcp://127.0.0.1:{closed_port}"]["closed"] >= 5


ENGINE_NO_RAW = """
import asyncio, json
from fastping.engine import MonitoringEngine
from fastping.guard import ResourceGuard

async def main():
    e = MonitoringEngine(interval_s=0.1, timeout_s=0.2, guard=ResourceGuard(None, None),
                         mode="raw")
    e.add_target("tcp://127.0.0.1:22")
    sub = e.subscribe()
    await e.run(0.5, handle_signals=False)
    i = e.target("tcp://127.0.0.1:22")
    why = [ev.reason for ev in sub.drain() if getattr(ev, "what", "") == "status"]
    print(json.dumps({"status": i.status, "outcome": i.last_outcome, "why": why,
                      "send_error": e.stats()["outcomes"]["send_error"]}))

asyncio.run(main())
"""


def test_engine_mode_raw_without_cap_net_raw_records_send_errors_naming_it() -> None:
    r = subprocess.run(
        ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
         sys.executable, "-c", ENGINE_NO_RAW],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["status"] == "error" and got["outcome"] == "send_error"
    assert got["send_error"] >= 1  # each due probe says so (backed off), nothing silent
    # the target's state change says why, in the socket's words
    assert len(got["why"]) == 1 and "CAP_NET_RAW" in got["why"][0], got


ENGINE_CONNECT = """
import asyncio, json, socket, sys
from collections import Counter
from fastping.engine import MonitoringEngine
from fastping.guard import ResourceGuard

open_port, closed_port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

async def main():
    e = MonitoringEngine(interval_s=0.1, timeout_s=0.3, guard=ResourceGuard(None, None),
                         mode=mode)
    op, cl = f"tcp://127.0.0.1:{open_port}", f"tcp://127.0.0.1:{closed_port}"
    e.add_target(op)
    e.add_target(cl)
    sub = e.subscribe(10_000)
    await e.run(1.0, handle_signals=False)
    res = [ev.result for ev in sub.drain() if hasattr(ev, "result")]
    info = {i.host: i for i in e.targets()}
    print(json.dumps({
        "timing": e.tcp_timing, "stats_timing": e.stats()["tcp_timing"],
        "outcomes": e.stats()["outcomes"], "sent": e.stats()["sent"],
        "results": e.stats()["results"], "outstanding": e.outstanding,
        "seen": {f"{t} {o}": n for (t, o), n in Counter(
            (r.target, r.outcome.value) for r in res).items()},
        "rtts_open": [r.rtt_ms for r in res if r.target == op],
        "rtts_closed": [r.rtt_ms for r in res if r.target == cl],
        "ttl": sorted({str(r.ttl) for r in res}),
        "info": {h: [i.status, i.probes, i.received, i.last_outcome] for h, i in info.items()},
    }))

asyncio.run(main())
"""


@pytest.mark.parametrize(("unprivileged", "mode"), [(True, "auto"), (False, "connect")])
def test_engine_tcp_by_connect_open_and_closed(
    ports: tuple[int, int], unprivileged: bool, mode: str
) -> None:
    """The engine's TCP targets without CAP_NET_RAW (auto) or with mode="connect":
    connect() timing on real sockets, an open port replies, a closed one is closed,
    every probe has exactly one result, and the engine says the timing."""
    open_port, closed_port = ports
    r = subprocess.run(
        [*(NO_NET_RAW if unprivileged else []), sys.executable, "-c", ENGINE_CONNECT,
         str(open_port), str(closed_port), mode],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    op, cl = f"tcp://127.0.0.1:{open_port}", f"tcp://127.0.0.1:{closed_port}"
    assert got["timing"] == got["stats_timing"] == "connect"
    assert set(got["seen"]) == {f"{op} reply", f"{cl} closed"}, got
    assert got["seen"][f"{op} reply"] >= 8 and got["seen"][f"{cl} closed"] >= 8, got
    o = got["outcomes"]
    assert o["reply"] == got["seen"][f"{op} reply"] and o["closed"] == got["seen"][f"{cl} closed"]
    assert o["send_error"] == o["timeout"] == o["late"] == o["duplicate"] == 0
    assert got["results"] == got["sent"] and got["outstanding"] == 0
    assert all(v is not None and v > 0 for v in got["rtts_open"] + got["rtts_closed"])
    assert got["ttl"] == ["None"]  # connect() sees no TTL
    assert got["info"][op][:2] == ["up", got["seen"][f"{op} reply"]]
    assert got["info"][op][2] == got["info"][op][1]
    assert got["info"][cl] == ["down", got["seen"][f"{cl} closed"], 0, "closed"]


def test_connect_socket_keeps_the_cores_contract(ports: tuple[int, int]) -> None:
    """ConnectSocket against TcpSocket on the same scenario (open and closed ports on
    loopback, a slot removed and reused, a probe pushed out of a full window, a
    per-slot timeout shorter than the answer): the same event kinds per call, the same
    counters, per-slot stats and outcome log, in each log mode."""
    from fastping import _icmp, chunk
    from fastping.tcpconnect import ConnectSocket

    open_port, closed_port = ports

    def scenario(sock: Any, mode: int) -> dict[str, Any]:
        sock.set_log(mode)
        sock.set_rtt_buckets([10**9])  # open answers per slot: all under a second
        name = {sock.add_target("127.0.0.1", open_port): "open",
                sock.add_target("127.0.0.1", closed_port): "closed"}  # fmt: skip
        calls: list[list[tuple[str, int]]] = []

        def settle() -> list[Any]:
            evs: list[Any] = []
            for _ in range(200):
                evs += sock.recv()
                if sock.totals()["outstanding"] == 0:
                    break
                time.sleep(0.005)
            return evs

        def kinds(evs: list[Any]) -> list[tuple[str, int]]:
            return sorted((name[e[0]], e[1]) for e in evs)

        for _ in range(3):
            calls.append(kinds(sock.send(sorted(name)) + settle()))
        gone = next(s for s, n in name.items() if n == "closed")
        sock.remove_target(gone)
        name[sock.add_target("127.0.0.1", closed_port)] = "closed"
        calls.append(kinds(sock.send(sorted(name)) + settle()))
        logs = {name[s]: sorted(chunk.unpack(b).code) for s, b in sock.take_log()}
        slots = {n: slot_counts(sock.slot_stats(s)) for s, n in name.items()}
        closed = {n: sock.slot_closed(s) for s, n in name.items()}
        last = {n: sock.slot_last(s)[0] for s, n in name.items()}
        hist = {n: (sock.slot_buckets(s) or ((),))[0] for s, n in name.items()}
        assert hist["open"] == (4, 0) and hist["closed"] == (0, 0), hist
        tot = sock.totals()
        sock.close()
        return {"calls": calls, "logs": logs, "slots": slots, "closed": closed, "last": last,
                "hist": hist,
                "totals": {k: tot[k] for k in ("sent", "received", "timeouts", "closed",
                                               "send_errors", "duplicates", "late",
                                               "outstanding")}}  # fmt: skip

    for mode in (0, 1, 2):
        raw = scenario(_icmp.TcpSocket(socket.AF_INET, window=2), mode)
        conn = scenario(ConnectSocket(socket.AF_INET, window=2), mode)
        assert conn == raw, (mode, conn, raw)

    # a full window pushes the oldest probe out as a timeout; a slot's own timeout
    # shorter than the answer makes it a timeout and a late answer; expire times out
    with ConnectSocket(socket.AF_INET, window=1) as cs, _listener() as ls:
        cs.set_log(2)
        s = cs.add_target("127.0.0.1", ls.getsockname()[1])
        q = cs.add_target("127.0.0.1", open_port)
        cs.set_slot_timeout(q, 1e-9)
        ev = cs.send([s], drain=False) + cs.send([s], drain=False)
        assert [e[1] for e in ev] == [_icmp.EV_TIMEOUT]
        time.sleep(0.05)
        evq = cs.send([q], drain=False)
        time.sleep(0.05)
        got = cs.recv()
        assert sorted((e[0], e[1]) for e in got) == sorted(
            [(s, _icmp.EV_REPLY), (q, _icmp.EV_TIMEOUT), (q, _icmp.EV_LATE)]
        ), (evq, got)
        assert cs.totals()["late"] == 1 and cs.totals()["outstanding"] == 0
        with pytest.raises(ValueError, match="port 0 must be 1..65535"):
            cs.add_target("127.0.0.1", 0)
        with pytest.raises(ValueError, match="not a numeric IPv4 address"):
            cs.add_target("localhost", 22)
        with pytest.raises(KeyError, match="slot 99 is not in use"):
            cs.send([99])


NOFILE_SHORT = """
import errno, json, resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # soft = hard: it cannot be raised
from fastping.tcpconnect import ConnectSocket
port = int(sys.argv[1])
with ConnectSocket(socket.AF_INET, window=1) as cs:
    slots = [cs.add_target(f"127.0.1.{i}", port) for i in range(1, 101)]
    evs = cs.send(slots, drain=False)
    for _ in range(200):
        evs += cs.recv()
        if cs.totals()["outstanding"] == 0:
            break
        time.sleep(0.01)
    t = cs.totals()
    print(json.dumps({"kinds": sorted({(e[1], e[8]) for e in evs}), "n": len(evs),
                      "sent": t["sent"], "received": t["received"],
                      "send_errors": t["send_errors"], "emfile": errno.EMFILE}))
"""


def test_connect_probes_past_the_descriptor_limit_are_send_errors_not_lost() -> None:
    """Every connect() probe is a descriptor: past RLIMIT_NOFILE (here 64, soft = hard,
    so it cannot be raised) each probe that gets none is a send error with EMFILE,
    counted; the others are answered. 100 probes, 100 outcomes."""
    with _listener("0.0.0.0") as ls:  # answers for every 127.0.1.x
        r = subprocess.run(
            [sys.executable, "-c", NOFILE_SHORT, str(ls.getsockname()[1])],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    from fastping import _icmp

    assert got["n"] == 100 and got["sent"] + got["send_errors"] == 100, got
    assert got["send_errors"] > 0 and got["received"] == got["sent"] > 0, got
    assert got["kinds"] == [[_icmp.EV_REPLY, None], [_icmp.EV_SEND_ERROR, got["emfile"]]], got


# ------------------------------------------------------------------ UDP, the same way


def test_monitor_udp_targets_open_and_closed_beside_tcp_and_icmp(
    tmp_path: Path, ports: tuple[int, int]
) -> None:
    """udp://HOST:PORT is one more row of engine.SOCKET_KINDS: an echo server's port
    answers (reply), a port nobody has is closed (ICMP port unreachable)."""
    import threading

    tcp_open, _ = ports
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(2048)
            except TimeoutError:
                continue
            srv.sendto(data, peer)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    udp_open = srv.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        udp_closed = c.getsockname()[1]
    cfg = tmp_path / "u.yaml"
    cfg.write_text(
        "defaults: {interval_s: 0.2, timeout_s: 0.5}\ntargets:\n  - 127.0.0.1\n"
        f"  - udp://127.0.0.1:{udp_open}\n  - {{host: 127.0.0.1, kind: udp, port: {udp_closed}}}\n"
        f"  - tcp://127.0.0.1:{tcp_open}\n"
    )
    db = tmp_path / "u.db"
    try:
        r = _monitor("--config", str(cfg), "--db", str(db), "-d", "1.5")
    finally:
        stop.set()
        th.join()
        srv.close()
    assert r.returncode == 0, r.stderr
    got = _outcomes(db)
    assert {t: set(c) for t, c in got.items()} == {
        "127.0.0.1": {"reply"},
        f"udp://127.0.0.1:{udp_open}": {"reply"},
        f"udp://127.0.0.1:{udp_closed}": {"closed"},
        f"tcp://127.0.0.1:{tcp_open}": {"reply"},
    }
    assert ResultStore(db).target_kinds()[f"udp://127.0.0.1:{udp_closed}"] == ("udp", udp_closed)
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all"),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    from fastping.commands.report import KIND_TITLES

    # a table per kind, in the order icmp, tcp, udp, each with its heading
    heads = [ln for ln in rep.stdout.splitlines() if ln.endswith(" targets")]
    assert heads == [
        f"{KIND_TITLES[k]}: {n} targets" for k, n in (("icmp", 1), ("tcp", 1), ("udp", 2))
    ]
