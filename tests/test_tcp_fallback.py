"""TCP without CAP_NET_RAW (issue 17): ``sweep --tcp`` and ``ping tcp://`` fall back
to connect() timing and say so; ``doctor`` tells which timing you get. Real
listeners on loopback and in namespaces the tests create; "unprivileged" is a
child run by setpriv with CAP_NET_RAW dropped from its bounding set (so from
every set it can have), checked through /proc in that child."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Netns, child_env, fastping_cmd
from fastping import api
from fastping.privilege import CAP_NET_RAW_BIT, Diagnosis
from fastping.results import Outcome

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: raw sockets, netns")

# util-linux setpriv: a child without CAP_NET_RAW (root's uid, the rest of its caps)
NO_NET_RAW = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]
NOTE = "no CAP_NET_RAW: TCP timed by connect()"
OPEN_PORT = 8080  # the router namespace's listener
DROP, REJECT, CLOSED, PORT_UNREACH = 9001, 9002, 9003, 9004


def run(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [*(NO_NET_RAW if unprivileged else []), *fastping_cmd(*args)]
    return subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=60)


def _listener(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(4096)
    return s


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """(open, closed) ports: the open one listens on 127.0.0.1 only."""
    with _listener() as a:
        yield a.getsockname()[1], _free_port()


def test_the_child_really_lacks_cap_net_raw() -> None:
    r = subprocess.run(
        [*NO_NET_RAW, "grep", "^CapEff", "/proc/self/status"], capture_output=True, text=True
    )
    assert not int(r.stdout.split()[1], 16) >> CAP_NET_RAW_BIT & 1, r.stdout


# ------------------------------------------------------------ sweep on loopback
def _mask(text: str) -> str:
    return re.sub(r"\d+\.\d+ ms", "T ms", text)


def test_connect_sweep_writes_the_raw_sweeps_lines(ports: tuple[int, int]) -> None:
    """Same targets, both timings: the same lines, JSON keys and states (the RTTs
    differ, and connect() has no TTL)."""
    port, closed = ports
    argv = ["sweep", "--tcp", "-p", f"{port},{closed}", "127.0.0.1", "localhost", "--rate", "0"]
    raw, conn = run(*argv, "--mode", "raw"), run(*argv, "--mode", "connect")
    assert raw.returncode == conn.returncode == 1, (raw.stderr, conn.stderr)
    assert _mask(raw.stdout) == _mask(conn.stdout)
    assert (
        conn.stdout.splitlines()[0]
        == f"127.0.0.1:{port} is open (" + (conn.stdout.splitlines()[0].split("(", 1)[1])
    )
    assert f"127.0.0.1:{closed} is closed (" in conn.stdout
    assert "connect() attempts" in conn.stderr and "SYNs sent" in raw.stderr
    assert "connect timing" in conn.stderr and "raw timing" in raw.stderr
    assert NOTE not in conn.stderr  # asked for: nothing to explain
    rj = [json.loads(x) for x in run(*argv, "--mode", "raw", "--json").stdout.splitlines()]
    cj = [json.loads(x) for x in run(*argv, "--mode", "connect", "--json").stdout.splitlines()]
    assert [list(x) for x in rj] == [list(x) for x in cj]
    assert [x.get("state") for x in rj] == [x.get("state") for x in cj]
    assert [x.get("state") for x in cj] == ["open", "open", "closed", "closed"]
    assert all(x["ttl"] is None for x in cj) and all(x["ttl"] == 64 for x in rj)
    assert all(0 < x["min_ms"] < 1000 for x in cj)


def test_sweep_without_cap_net_raw_falls_back_and_says_so(ports: tuple[int, int]) -> None:
    port, closed = ports
    targets = [f"tcp://127.0.0.1:{port}", f"tcp://[::1]:{closed}", f"tcp://127.0.0.1:{closed}"]
    r = run("sweep", *targets, "--json", "-s", unprivileged=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count(NOTE) == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {(x["address"], x["port"], x["state"]) for x in rows} == {
        ("127.0.0.1", port, "open"),
        ("::1", closed, "closed"),
        ("127.0.0.1", closed, "closed"),
    }
    summary = json.loads(r.stderr.splitlines()[-1])
    assert summary["timing"] == "connect" and summary["alive"] == 1 and summary["closed"] == 2
    assert summary["timed_kernel"] == 0 and summary["timed_user"] == 3
    # the same as root: raw SYNs, nothing said
    r = run("sweep", *targets, "-q", "--json")
    summary = json.loads(r.stdout)
    assert summary["timing"] == "raw" and summary["alive"] == 1 and NOTE not in r.stderr
    # -q text summary says it too
    r = run("sweep", *targets, "-q", unprivileged=True)
    assert "   connect timing (non-blocking connect()" in r.stdout, r.stdout


@pytest.mark.parametrize("unprivileged", [False, True])
def test_sweep_tcp_host_port_targets_keep_their_port(
    ports: tuple[int, int], unprivileged: bool
) -> None:
    """HOST:PORT ([v6]:PORT) targets with --tcp, raw or by connect(): each on its own
    port; no --port needed when every target has one."""
    open_port, closed_port = ports
    r = run("sweep", "--tcp", f"127.0.0.1:{open_port}", f"[::1]:{closed_port}", "--json",
            unprivileged=unprivileged)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {(x["address"], x["port"], x["state"]) for x in rows} == {
        ("127.0.0.1", open_port, "open"), ("::1", closed_port, "closed"),
    }  # fmt: skip


@pytest.mark.parametrize("unprivileged", [False, True])
def test_json_targets_keep_their_port_for_names_too(
    ports: tuple[int, int], unprivileged: bool
) -> None:
    """A host name probed on a port is a host:port pair in JSON, as an address is:
    "target": "localhost:PORT" (it was "localhost", the port lost), beside "address"
    and "port"; ping's JSON lines and summary say the same."""
    open_port, closed_port = ports
    r = run("sweep", "--tcp", "-p", f"{open_port},{closed_port}", "localhost", "127.0.0.1",
            "--json", "-4", unprivileged=unprivileged)  # fmt: skip
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted((x["target"], x["address"], x["port"], x["state"]) for x in rows) == sorted([
        (f"localhost:{open_port}", "127.0.0.1", open_port, "open"),
        (f"localhost:{closed_port}", "127.0.0.1", closed_port, "closed"),
        (f"127.0.0.1:{open_port}", "127.0.0.1", open_port, "open"),
        (f"127.0.0.1:{closed_port}", "127.0.0.1", closed_port, "closed"),
    ]), r.stderr  # fmt: skip
    r = run("sweep", f"tcp://localhost:{open_port}", "--json", "-4", unprivileged=unprivileged)
    assert json.loads(r.stdout)["target"] == f"localhost:{open_port}", r.stderr
    for host, want in (
        ("localhost", f"localhost:{open_port}"),
        ("127.0.0.1", f"127.0.0.1:{open_port}"),
    ):
        r = run("ping", f"tcp://{host}:{open_port}", "-c", "2", "-i", "0.05", "--json", "-4",
                unprivileged=unprivileged)  # fmt: skip
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["target"], x["port"]) for x in lines] == [(want, open_port)] * 3, lines
    with _listener(socket.AF_INET6, "::1") as l6:
        p6 = l6.getsockname()[1]
        r = run("ping", f"tcp://[::1]:{p6}", "-c", "1", "--json", unprivileged=unprivileged)
        assert [json.loads(x)["target"] for x in r.stdout.splitlines()] == [f"[::1]:{p6}"] * 2


def test_mode_raw_without_the_capability_says_what_to_do() -> None:
    for cmd in (["sweep", "--tcp", "-p", "22"], ["ping", "--tcp", "-p", "22", "-c", "1"]):
        r = run(*cmd, "127.0.0.1", "--mode", "raw", unprivileged=True)
        assert r.returncode == 4, r.stderr
        assert "CAP_NET_RAW" in r.stderr and "--mode connect" in r.stderr, r.stderr
        assert "setcap cap_net_raw+ep" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["sweep", "--tcp", "-p", "22", "127.0.0.1", "--mode", "dgram"],
            "--mode dgram is for ICMP",
        ),
        (["sweep", "127.0.0.1", "--mode", "connect"], "--mode connect is for TCP probes"),
        (["ping", "127.0.0.1", "--mode", "connect"], "--mode connect is for TCP probes"),
        (["ping", "tcp://127.0.0.1"], "write tcp://HOST:PORT"),
        (["ping", "tcp://127.0.0.1:0"], "port 1..65535"),
        (["ping", "tcp://127.0.0.1:22", "-p", "23"], "names its port"),
        (["ping", "127.0.0.1", "--tcp"], "--tcp needs the port to probe"),
        (["ping", "127.0.0.1", "-p", "22"], "add --tcp"),
        (["ping", "127.0.0.1", "--tcp", "-p", "70000"], "out of range: give 1..65535"),
        (["ping", "tcp://127.0.0.0/30:22"], "one host, not a block"),
        (["ping", "tcp://127.0.0.1:22", "--mode", "subprocess"], "--mode subprocess is for ICMP"),
    ],
)
def test_bad_tcp_arguments_say_what_to_write(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.returncode == 3 and message in r.stderr, r.stderr


def test_api_sweep_connect_rounds_and_modes(ports: tuple[int, int]) -> None:
    port, closed = ports
    seen: list[tuple[int, int, int]] = []
    res = api.sweep(["127.0.0.1", "::1"], tcp_port=port, mode="connect", count=3,
                    interval_s=0.02, rate_pps=0, collect_rtts=True,
                    on_progress=lambda *a: seen.append(a))  # fmt: skip
    assert res.timing == "connect"
    assert seen[-1] == (6, 6, 6)  # attempts done, of all, answers (RSTs included)
    a, b = res[0], res[1]
    assert (a.sent, a.received, a.timeouts) == (3, 3, 0) and len(a.rtts_ms) == 3
    assert a.min_ms is not None and a.max_ms is not None and 0 < a.min_ms <= a.max_ms
    assert a.jitter_ms is not None
    # ::1 has no listener: RSTs, answers as the raw sweep counts them, counted apart
    assert b.sent == 3 and b.received == 3 and b.error is None and b.rtts_ms == []
    assert res.totals["closed"] == 3 and res.summary()["timing"] == "connect"
    raw = api.sweep(["127.0.0.1", "::1"], tcp_port=port, mode="raw", count=3, interval_s=0.02,
                    rate_pps=0, collect_rtts=True)  # fmt: skip
    assert [(h.sent, h.received, len(h.rtts_ms)) for h in raw] == [
        (h.sent, h.received, len(h.rtts_ms)) for h in res
    ]
    assert api.sweep(["127.0.0.1"], tcp_port=closed, mode="raw").timing == "raw"
    with pytest.raises(ValueError, match="use raw, connect or auto"):
        api.sweep(["127.0.0.1"], tcp_port=port, mode="dgram")
    with pytest.raises(ValueError, match="mode 'connect' is for TCP probes"):
        api.sweep(["127.0.0.1"], mode="connect")
    h = api.ping("127.0.0.1", tcp_port=port, count=2, interval_s=0.01, mode="connect")
    assert h.received == 2 and len(h.rtts_ms) == 2


# ------------------------------------------------------------ ping tcp:// on loopback
@pytest.mark.parametrize("unprivileged", [False, True])
def test_ping_tcp_open_and_closed(ports: tuple[int, int], unprivileged: bool) -> None:
    port, closed = ports
    r = run("ping", f"tcp://127.0.0.1:{port}", "-c", "3", "-i", "0.05", unprivileged=unprivileged)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    how = "connect()" if unprivileged else "SYNs on a raw socket"
    assert lines[0] == f"PING 127.0.0.1 (127.0.0.1) TCP port {port}: {how}"
    ttl = "" if unprivileged else " ttl=64"
    for seq, line in enumerate(lines[1:4]):
        assert re.fullmatch(rf"open 127\.0\.0\.1 port {port}: tcp_seq={seq} rtt=\d+\.\d{{3}} ms"
                            rf"{ttl}", line), line  # fmt: skip
    assert lines[4] == f"--- 127.0.0.1 port {port} tcp ping statistics ---"
    assert lines[5] == "3 probes sent, 3 answers (3 open, 0 closed), 0.0% loss"
    assert re.fullmatch(r"rtt min/avg/max/stddev/jitter = [\d./]+ ms", lines[6]), lines[6]
    assert (NOTE in r.stderr) is unprivileged
    # a closed port: RSTs, exit 1 (the host is up, the service is not)
    r = run("ping", "::1", "--tcp", "-p", str(closed), "-c", "2", "-i", "0.05", "--json",
            unprivileged=unprivileged)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["seq"], x["outcome"], x["state"]) for x in rows[:2]] == [
        (0, "closed", "closed"),
        (1, "closed", "closed"),
    ]
    final = rows[2]
    assert (final["sent"], final["received"], final["closed"], final["open"]) == (2, 2, 2, 0)
    assert final["timing"] == ("connect" if unprivileged else "raw")


# ------------------------------------------------------------ a namespace: filtered, unreachable
RULES = (
    "add table inet fpt; add chain inet fpt in { type filter hook input priority 0; }; "
    f"add rule inet fpt in tcp dport {DROP} drop; "
    f"add rule inet fpt in tcp dport {REJECT} reject with icmp type admin-prohibited; "
    f"add rule inet fpt in tcp dport {PORT_UNREACH} reject with icmp type port-unreachable"
)


@pytest.fixture
def router_ns(netns: Netns) -> Iterator[Netns]:
    """The conftest pair; the router (10.201.0.1) listens on OPEN_PORT, drops DROP,
    rejects REJECT with ICMP admin-prohibited and PORT_UNREACH with port unreachable,
    and has nothing on CLOSED."""
    netns.exec_r("nft", RULES)
    listen = subprocess.Popen(
        ["ip", "netns", "exec", netns.router, "python3", "-c",
         "import socket, time\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(('0.0.0.0', {OPEN_PORT})); s.listen(128); print('up', flush=True)\n"
         "time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listen.stdout is not None and listen.stdout.readline().strip() == "up"
        yield netns
    finally:
        listen.kill()
        listen.wait()


def _in_host(ns: Netns, *args: str, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    return ns.exec_h(*(NO_NET_RAW if unprivileged else []), *fastping_cmd(*args),
                     check=False, timeout=60)  # fmt: skip


@pytest.mark.parametrize("unprivileged", [False, True])
def test_sweep_in_a_namespace_open_filtered_unreachable_closed(
    router_ns: Netns, unprivileged: bool
) -> None:
    ports = f"{OPEN_PORT},{DROP},{REJECT},{CLOSED},{PORT_UNREACH}"
    r = _in_host(router_ns, "sweep", "--tcp", "-p", ports, "10.201.0.1", "--json", "-s",
                 "-t", "0.5", unprivileged=unprivileged)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["port"], x["state"]) for x in rows] == [
        (OPEN_PORT, "open"),
        (DROP, "filtered"),
        (REJECT, "unreachable"),
        (CLOSED, "closed"),
        # what connect() cannot tell: the kernel says ECONNREFUSED for an ICMP port
        # unreachable as for a RST (documented in docs/modes.md)
        (PORT_UNREACH, "closed" if unprivileged else "unreachable"),
    ]
    unreach = rows[2]
    assert unreach["unreachable"] == 1 and unreach["received"] == 0
    if unprivileged:
        assert unreach["error"] == "unreachable (connect(): No route to host)"
    else:
        assert unreach["error"] == "unreachable (type 3 code 13) from 10.201.0.1"
    assert rows[1]["timeouts"] == 1 and rows[1]["error"] is None
    summary = json.loads(r.stderr.splitlines()[-1])
    assert summary["timing"] == ("connect" if unprivileged else "raw")
    assert (summary["alive"], summary["timeouts"]) == (1, 1)
    assert summary["unreachable"] == (1 if unprivileged else 2)
    assert (NOTE in r.stderr) is unprivileged
    # the text lines, in the raw sweep's words
    r = _in_host(router_ns, "sweep", "--tcp", "-p", f"{DROP},{REJECT}", "10.201.0.1", "-t", "0.5",
                 unprivileged=unprivileged)  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0] == f"10.201.0.1:{DROP} is filtered"
    why = "connect(): No route to host" if unprivileged else "type 3 code 13) from 10.201.0.1"
    assert lines[1].startswith(f"10.201.0.1:{REJECT} is unreachable (unreachable ("), lines[1]
    assert why in lines[1], lines[1]


@pytest.mark.parametrize("unprivileged", [False, True])
def test_ping_tcp_in_a_namespace(router_ns: Netns, unprivileged: bool) -> None:
    out = {}
    for port in (OPEN_PORT, DROP, REJECT, CLOSED):
        r = _in_host(router_ns, "ping", f"tcp://10.201.0.1:{port}", "-c", "2", "-i", "0.3",
                     "-t", "0.25", unprivileged=unprivileged)  # fmt: skip
        out[port] = (r.returncode, r.stdout.splitlines())
    rc, lines = out[OPEN_PORT]
    assert rc == 0 and lines[1].startswith(f"open 10.201.0.1 port {OPEN_PORT}: tcp_seq=0 rtt=")
    rc, lines = out[DROP]
    assert rc == 1
    assert lines[1] == f"no answer from 10.201.0.1 port {DROP}: tcp_seq=0 (filtered: timeout " \
        "after 0.25 s)"  # fmt: skip
    assert lines[-1] == "2 probes sent, 0 answers (0 open, 0 closed), 100.0% loss, 2 filtered"
    rc, lines = out[REJECT]
    assert rc == 1
    if unprivileged:
        assert lines[1] == (
            f"unreachable 10.201.0.1 port {REJECT}: tcp_seq=0 (connect(): No route to host)"
        )
    else:
        assert lines[1] == "unreachable from 10.201.0.1: tcp_seq=0 (type 3 code 13)"
    assert "2 unreachable" in lines[-2]
    rc, lines = out[CLOSED]
    assert rc == 1 and lines[1].startswith(f"closed 10.201.0.1 port {CLOSED}: tcp_seq=0 rtt=")


# ------------------------------------------------------------ doctor
def test_doctor_says_which_tcp_timing_both_ways() -> None:
    r = run("doctor")
    assert "  TCP timing: raw SYN (kernel timestamps): raw TCP socket opened; CAP_NET_RAW " \
        "present" in r.stdout, r.stdout  # fmt: skip
    assert "TCP (--tcp, tcp://) mode=auto will use: raw" in r.stdout
    r = run("doctor", unprivileged=True)
    want = (
        "  TCP timing: connect() fallback: opening a raw TCP socket failed: Operation not "
        "permitted; CAP_NET_RAW missing in the effective set (CapEff "
    )
    assert want in r.stdout, r.stdout
    assert "non-blocking connect()" in r.stdout and "setcap cap_net_raw+ep" in r.stdout
    assert "TCP (--tcp, tcp://) mode=auto will use: connect" in r.stdout
    for unpriv, timing in ((False, "raw"), (True, "connect")):
        for extra in ([], ["-6"]):
            d = json.loads(run("doctor", "--json", *extra, unprivileged=unpriv).stdout)
            assert d["tcp"]["timing"] == timing and d["tcp"]["verified"] is True, d["tcp"]
            assert bool(d["tcp"]["fixes"]) is unpriv


def test_tcp_status_inferred_from_the_capability() -> None:
    base = dict(uid=1000, euid=1000, egid=1000, groups=(), ping_group_range=(1, 0), ping=None,
                python="/usr/bin/python3.11", user="alice")  # fmt: skip
    off = Diagnosis(cap_eff=0, **base)  # type: ignore[arg-type]
    on = Diagnosis(cap_eff=1 << CAP_NET_RAW_BIT, **base)  # type: ignore[arg-type]
    assert off.tcp_status().timing == "connect" and not off.tcp_status().verified
    assert "setcap cap_net_raw+ep /usr/bin/python3.11" in off.tcp_status().fixes[0]
    assert on.tcp_status().timing == "raw" and on.tcp_status().fixes == ()
    # an observed refusal beats the capability bit
    seen = Diagnosis(cap_eff=1 << CAP_NET_RAW_BIT, tcp_raw_open_errno=1, **base)  # type: ignore[arg-type]
    assert seen.tcp_status().timing == "connect" and seen.tcp_status().verified
    assert Outcome.CLOSED.value == "closed"


# ------------------------------------------------------------ a real non-root user
CLI = "import sys; sys.path.insert(0, sys.argv[1]); from fastping.cli import main; " \
    "sys.exit(main(sys.argv[2:]))"  # fmt: skip


def _as_user(user: Any, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``fastping ARGS`` as ``user`` (setpriv --reuid: no capability left) in ``ns``,
    from the user's copy of the package."""
    from privhelpers import _setpriv

    argv = ["ip", "netns", "exec", ns, *_setpriv(user.uid, user.gid), "env", "-i",
            "PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=/", user.python, "-I", "-c", CLI,
            user.src, *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_non_root_user_gets_the_connect_fallback() -> None:
    """A throwaway system user in a fresh namespace with a listener: sweep, ping
    tcp:// and doctor, timed by connect()."""
    from privhelpers import in_netns, netns, throwaway_user

    with throwaway_user() as user, netns() as ns:
        ls = in_netns(ns, _listener)  # the socket lives in the namespace
        try:
            port = ls.getsockname()[1]
            closed = in_netns(ns, _free_port)
            r = _as_user(user, ns, "sweep", "--tcp", "-p", f"{port},{closed}", "127.0.0.1",
                         "--json", "-s")  # fmt: skip
            assert r.returncode == 1, r.stderr
            assert NOTE in r.stderr
            rows = [json.loads(x) for x in r.stdout.splitlines()]
            assert [(x["port"], x["state"]) for x in rows] == [(port, "open"), (closed, "closed")]
            summary = json.loads(r.stderr.splitlines()[-1])
            assert summary["timing"] == "connect" and summary["alive"] == 1, summary
            r = _as_user(user, ns, "ping", f"tcp://127.0.0.1:{port}", "-c", "2", "-i", "0.05")
            assert r.returncode == 0, r.stderr
            lines = r.stdout.splitlines()
            assert lines[0] == f"PING 127.0.0.1 (127.0.0.1) TCP port {port}: connect()"
            assert lines[1].startswith(f"open 127.0.0.1 port {port}: tcp_seq=0 rtt=")
            r = _as_user(user, ns, "doctor", "--json")
            d = json.loads(r.stdout)
            assert d["uid"] == user.uid and d["cap_net_raw"] is False
            assert d["tcp"]["timing"] == "connect" and d["tcp"]["verified"], d["tcp"]
        finally:
            ls.close()


def test_ctrl_c_ends_a_connect_sweep_with_the_rounds_done(ports: tuple[int, int]) -> None:
    import signal
    import time

    port, _ = ports
    argv = ["sweep", "--tcp", "-p", str(port), "127.0.0.1", "-c", "50", "--period", "0.1",
            "--mode", "connect", "-q", "--json"]  # fmt: skip
    p = subprocess.Popen(fastping_cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=child_env())  # fmt: skip
    time.sleep(1.5)  # start-up, then some rounds
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    s = json.loads(out)
    assert s["interrupted"] == 1 and 1 <= s["sent"] < 50, s
    assert s["received"] == s["sent"] and s["timing"] == "connect"


@pytest.mark.parametrize("unprivileged", [False, True])
def test_ttl_reaches_the_syn(unprivileged: bool) -> None:
    """--ttl sets the SYN's TTL by either timing: nft in a fresh namespace drops
    every SYN to the port whose TTL is not 7."""
    from privhelpers import in_netns, netns

    with netns() as ns:
        subprocess.run(["ip", "netns", "exec", ns, "nft",
                        "add table ip fpt; add chain ip fpt in { type filter hook input "
                        "priority 0; }; add rule ip fpt in tcp dport 7777 tcp flags syn "
                        "ip ttl != 7 drop"], check=True)  # fmt: skip
        ls = in_netns(ns, lambda: _bound_listener(7777))
        try:
            states = {}
            for ttl in ("7", "8"):
                r = subprocess.run(
                    ["ip", "netns", "exec", ns, *(NO_NET_RAW if unprivileged else []),
                     *fastping_cmd("sweep", "tcp://127.0.0.1:7777", "--ttl", ttl, "-t", "0.3",
                                   "--json")],
                    capture_output=True, text=True, env=child_env(), timeout=60,
                )  # fmt: skip
                states[ttl] = json.loads(r.stdout)["state"]
        finally:
            ls.close()
    assert states == {"7": "open", "8": "filtered"}


def _bound_listener(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s
