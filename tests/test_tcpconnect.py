"""Unprivileged TCP connect() probes against real sockets and a namespace."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import SRC, Netns, child_env
from fastping import tcpconnect as tc

TIMEOUT = 1.0


def _listener(fam: int, addr: str) -> socket.socket:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((addr, 0))
    s.listen(4096)
    return s


def _free_port(fam: int, addr: str) -> int:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((addr, 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = _listener(socket.AF_INET, "127.0.0.1"), _listener(socket.AF_INET6, "::1")
    yield a, b
    a.close()
    b.close()


def _check_rtts(results: list[tc.ConnectResult]) -> None:
    for r in results:
        if r.outcome in (tc.OPEN, tc.CLOSED):
            assert r.rtt_ns is not None and 0 < r.rtt_ns < TIMEOUT * 1e9, r


def test_open_and_closed_v4_v6(listeners: tuple[socket.socket, socket.socket]) -> None:
    a, b = listeners
    targets = [
        ("127.0.0.1", a.getsockname()[1]),
        ("::1", b.getsockname()[1]),
        ("127.0.0.1", _free_port(socket.AF_INET, "127.0.0.1")),
        ("::1", _free_port(socket.AF_INET6, "::1")),
    ]
    seen: list[tuple[int, int]] = []
    res = tc.connect_sweep(targets, timeout_s=TIMEOUT, progress=lambda d, t: seen.append((d, t)))
    assert [(r.address, r.port) for r in res] == targets
    assert [r.outcome for r in res] == [tc.OPEN, tc.OPEN, tc.CLOSED, tc.CLOSED]
    assert res[2].errno == res[3].errno == 111
    assert seen[-1] == (4, 4)
    _check_rtts(res)


def _ss_states(port: int) -> list[str]:
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_many_open_leave_no_time_wait(listeners: tuple[socket.socket, socket.socket]) -> None:
    a, _ = listeners
    port = a.getsockname()[1]
    targets = [(f"127.0.{i // 250}.{1 + i % 250}", port) for i in range(2000)]
    a.close()  # listen on 0.0.0.0 so every 127/8 address answers
    srv = _listener(socket.AF_INET, "0.0.0.0")
    port = srv.getsockname()[1]
    targets = [(h, port) for h, _ in targets]
    try:
        res = tc.connect_sweep(targets, timeout_s=5.0, concurrency=512)
        assert all(r.outcome == tc.OPEN for r in res), {r.outcome for r in res}
        # accepted-queue entries were reset by our RST: accepting them yields dead sockets
        states = _ss_states(port)
        assert "TIME-WAIT" not in states and "SYN-SENT" not in states and "FIN-WAIT-1" not in states
        assert "CLOSE-WAIT" not in states and "ESTAB" not in states, states
    finally:
        srv.close()
    assert _ss_states(port) == []


def test_rlimit_nofile_lowers_concurrency() -> None:
    code = (
        "import logging, resource, socket, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "from fastping.tcpconnect import connect_sweep\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(4096)\n"
        "r = connect_sweep([('127.0.0.1', s.getsockname()[1])] * 500, concurrency=1024)\n"
        "print(sum(x.outcome == 'open' for x in r))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=child_env(), timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "500"
    assert "concurrency lowered from 1024" in p.stderr


def test_rlimit_warning_in_process(caplog: pytest.LogCaptureFixture) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.WARNING, logger="fastping.tcpconnect"):
        assert tc._fit_concurrency(soft + 10) < soft
    assert "RLIMIT_NOFILE" in caplog.text


def test_can_raw_tcp_matches_socket() -> None:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
        expect = True
    except PermissionError:
        expect = False
    assert tc.can_raw_tcp() is expect


RULES = (
    "add table inet fpt; add chain inet fpt in { type filter hook input priority 0; }; "
    "add rule inet fpt in tcp dport 9001 drop; "
    "add rule inet fpt in meta nfproto ipv4 tcp dport 9002 reject with icmp type admin-prohibited; "
    "add rule inet fpt in meta nfproto ipv6 tcp dport 9002 "
    "reject with icmpv6 type admin-prohibited"
)


def test_filtered_and_unreachable_in_netns(netns: Netns) -> None:
    netns.exec_h("ip", "addr", "add", "fd00:201::2/64", "dev", netns.veth_h, "nodad")
    netns.exec_r("ip", "addr", "add", "fd00:201::1/64", "dev", netns.veth_r, "nodad")
    netns.exec_r("nft", RULES)
    targets = [(a, p) for a in ("10.201.0.1", "fd00:201::1") for p in (9001, 9002, 9003)]
    code = (
        f"import json, sys; sys.path.insert(0, {SRC!r})\n"
        "from fastping.tcpconnect import connect_sweep\n"
        f"r = connect_sweep({targets!r}, timeout_s={TIMEOUT})\n"
        "print(json.dumps([[x.outcome, x.errno, x.rtt_ns] for x in r]))\n"
    )
    p = netns.exec_h(sys.executable, "-c", code, timeout=60)
    got = json.loads(p.stdout)
    assert [o for o, _, _ in got] == [tc.FILTERED, tc.UNREACHABLE, tc.CLOSED] * 2, got
    assert got[0][2] is None and got[0][1] is None
    assert got[1][1] == 113 and got[4][1] == 13  # EHOSTUNREACH; EACCES (ICMPv6 admin)
    for o, _, rtt in got:
        if o != tc.FILTERED:
            assert rtt is not None and 0 < rtt < TIMEOUT * 1e9
