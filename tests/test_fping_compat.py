"""fastping-fping against Debian's fping 5.1: the same arguments on the same targets,
output compared line by line with the RTT numbers masked, and the exit codes.

Targets live in namespaces this module makes (tests/conftest.py ``Netns``): the host
namespace's loopback, the router (alive), an address the router blackholes (dead:
no answer), one it rejects with host-unreachable (unreachable), and ::1. Nothing
outside those namespaces is ever probed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, SRC, Netns

pytestmark = [pytest.mark.privileged]

ALIVE = ["127.0.0.1", "10.201.0.1", "::1"]
DEAD = "10.202.0.5"  # blackholed by the router: silence
UNREACH = "10.203.0.5"  # rejected by the router: ICMP host unreachable
DUP = "10.201.0.3"  # the router's second address: every echo reply sent twice
ALIVE6, DEAD6, UNREACH6 = "fd00:201::1", "fd00:202::5", "fd00:203::5"  # the same, IPv6
MIXED6 = ["::1", ALIVE6, DEAD6, UNREACH6]
MIXED = [*ALIVE, DEAD, UNREACH]
FAST = ["-t", "60", "-r", "1"]  # keeps each dead-target run short, same for both


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    if not ROOT:
        pytest.fail("needs root: namespaces and raw sockets (CI runs as root)")
    if shutil.which("fping") is None:
        pytest.fail("needs Debian's fping: apt-get install fping")
    n = Netns()
    try:
        n.up()
        n.exec_r("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0")
        n.exec_r("sysctl", "-qw", f"net.ipv4.conf.{n.veth_r}.send_redirects=0")
        n.exec_r("ip", "route", "add", "blackhole", "10.202.0.0/24")
        n.reject_beyond_router("10.203.0.0/24")
        n.exec_r("ip", "addr", "add", f"{DUP}/24", "dev", n.veth_r)
        n.exec_r(
            "nft",
            "add table ip fpdup; add chain ip fpdup out { type filter hook output priority 0; }; "
            f"add rule ip fpdup out ip saddr {DUP} icmp type echo-reply "
            f'dup to 10.201.0.2 device "{n.veth_r}"',
        )
        # IPv6: the router at fd00:201::1, fd00:202::/64 blackholed, fd00:203::/64 rejected
        n.exec_h("ip", "addr", "add", "fd00:201::2/64", "dev", n.veth_h, "nodad")
        n.exec_r("ip", "addr", "add", "fd00:201::1/64", "dev", n.veth_r, "nodad")
        n.exec_h("ip", "-6", "route", "add", "default", "via", "fd00:201::1")
        n.exec_r("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        n.exec_r("sysctl", "-qw", "net.ipv6.icmp.ratelimit=0")
        n.exec_r("ip", "-6", "route", "add", "blackhole", "fd00:202::/64")
        n.exec_r("ip", "-6", "route", "add", "fd00:203::/64", "via", "fd00:201::2")
        n.exec_r(
            "nft",
            "add table ip6 fpt6; add chain ip6 fpt6 fw { type filter hook forward priority 0; }; "
            "add rule ip6 fpt6 fw ip6 daddr fd00:203::/64 reject with icmpv6 type addr-unreachable",
        )
        # name resolution inside the namespace asks only its own loopback (ip netns
        # exec bind-mounts /etc/netns/NAME/resolv.conf): an unknown name fails there
        d = Path("/etc/netns") / n.host
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        yield n
    finally:
        shutil.rmtree(Path("/etc/netns") / n.host, ignore_errors=True)
        n.down()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_both(n: Netns, args: list[str]) -> tuple[subprocess.CompletedProcess[str], ...]:
    out = []
    for cmd in (["fping"], [sys.executable, "-m", "fastping.cli", "fping"]):
        out.append(
            subprocess.run(
                ["ip", "netns", "exec", n.host, *cmd, *args],
                capture_output=True,
                text=True,
                env=_env(),
                timeout=60,
            )
        )
    return tuple(out)


_NUM = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])|(?<![\d.])\d+\.\d+e[+-]\d+")
_HOST = re.compile(r"^(?:\[N\] )?(\S+)")


def mask(text: str) -> list[str]:
    """RTTs, averages, timestamps and elapsed times become N; lines about one host
    are kept in their order, hosts in the order they first appear (fping prints a
    timeout when it expires, so lines of different hosts interleave by timing)."""
    lines = [_NUM.sub("N", line) for line in text.splitlines()]
    lines = [re.sub(r"^\[\d\d:\d\d:\d\d\]$", "[T]", line) for line in lines]
    first: dict[str, int] = {}
    keyed = []
    for pos, line in enumerate(lines):
        m = _HOST.match(line)
        key = m.group(1) if m and " : " in line else f"#{pos}"
        if line.startswith("ICMP"):
            key = "ICMP " + line.rsplit(" ", 1)[-1]
        first.setdefault(key, pos)
        keyed.append((first[key], pos, line))
    return [line for _f, _p, line in sorted(keyed)]


def assert_same(n: Netns, args: list[str]) -> None:
    ref, ours = run_both(n, args)
    detail = (
        f"\nargs: {args}\n--- fping (rc {ref.returncode})\n{ref.stdout}{ref.stderr}"
        f"--- fastping-fping (rc {ours.returncode})\n{ours.stdout}{ours.stderr}"
    )
    assert ours.returncode == ref.returncode, detail
    assert mask(ours.stdout) == mask(ref.stdout), detail
    assert mask(ours.stderr) == mask(ref.stderr), detail


CASES: list[list[str]] = [
    # every option alone (on top of FAST where dead targets would make fping slow)
    [*FAST, *MIXED],
    ["-a", *FAST, *MIXED],
    ["-u", *FAST, *MIXED],
    ["-e", *FAST, *MIXED],
    ["-q", *FAST, *MIXED],
    ["-s", *FAST, *MIXED],
    ["-r", "0", "-t", "60", *MIXED],
    ["-B", "1", *FAST, *MIXED],
    ["-t", "80", "-r", "0", *MIXED],
    ["-i", "5", *FAST, *MIXED],
    ["-c", "2", "-p", "100", *MIXED],
    ["-C", "2", "-p", "100", *MIXED],
    ["-C", "3", "-p", "50", "-q", *MIXED],
    ["-c", "3", "-p", "100", "-t", "300", *MIXED],  # -t > -p: rounds overlap
    ["-C", "3", "-p", "100", "-t", "300", "-q", *MIXED],
    ["-c", "1", "-s", "-p", "100", *MIXED],
    ["-D", "-c", "2", "-p", "100", *ALIVE],
    ["-Q", "1", "-c", "3", "-p", "600", "127.0.0.1", "::1"],
    ["-b", "100", "-c", "1", *ALIVE],
    ["-b", "16", "-e", *ALIVE],
    ["-g", "127.0.0.1", "127.0.0.6"],
    ["-g", "127.0.0.0/29", "-a"],
    ["-4", "127.0.0.1", "::1"],
    ["-6", "127.0.0.1", "::1"],
    ["-S", "127.0.0.1", "-c", "1", "127.0.0.1"],
    ["-I", "lo", "127.0.0.1", "127.0.0.2"],
    ["-O", "16", "-e", *ALIVE],
    ["-H", "64", "-c", "1", *ALIVE],
    ["-M", *ALIVE],
    ["-x", "2", *FAST, *MIXED],
    ["-x", "4", *FAST, *MIXED],
    ["-c", "1", "-x", "1", "127.0.0.1"],
    ["-A", "-a", "127.0.0.1", "localhost"],
    ["-a", "-c", "1", "127.0.0.1", DEAD],
    ["nosuch.invalid", "127.0.0.1"],
    ["-s", *FAST, *MIXED6],
    ["-c", "2", "-p", "100", *MIXED6],
    ["-C", "2", "-p", "100", "-q", "-s", *MIXED6],
    ["-s", "-u", "nosuch.invalid", *FAST, "127.0.0.1", DEAD],
    ["-C", "1", "-q", "nosuch.invalid", "127.0.0.1"],
    ["-aq", "127.0.0.1", "::1"],
    ["--count=1", "--quiet", "--period=50", *ALIVE],
    # duplicates: reported on stderr where fping prints no line per reply
    ["-s", "-r", "0", DUP, "127.0.0.1"],
    ["-e", DUP],
    ["-c", "2", "-p", "100", DUP, "127.0.0.1"],
    ["-C", "2", "-p", "100", "-q", DUP, "127.0.0.1"],
    ["-c", "1", "-q", DUP],
    # fping's own refusals: same message and exit code
    ["-a", "-u", "127.0.0.1"],
    ["-l", "-c", "2", "127.0.0.1"],
    ["--bogus", "127.0.0.1"],
    ["-I", "nosuchif0", "127.0.0.1"],
    ["-S", "bogus", "127.0.0.1"],
    # the combinations the monitoring systems use
    ["-C", "3", "-q", "-B1", "-r1", "-i10", *MIXED],  # SmokePing's FPing probe
    ["-C", "3", "-p", "100", "-i", "5", "-t", "80", "-b", "56", "-q", *MIXED],  # Zabbix
    ["-e", "-q", "-c", "3", "-p", "100", *MIXED],  # LibreNMS
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a)[:60])
def test_same_as_fping(ns: Netns, args: list[str]) -> None:
    assert_same(ns, args)


def test_file_and_stdin(ns: Netns, tmp_path: Path) -> None:
    f = tmp_path / "targets"
    f.write_text("# comment\n127.0.0.1\n\n10.201.0.1  trailing words\n" + DEAD + "\n")
    assert_same(ns, ["-f", str(f), *FAST])
    ref, ours = (
        subprocess.run(
            ["ip", "netns", "exec", ns.host, *cmd, "-f", "-", "-a"],
            input="127.0.0.1\n::1\n",
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
        for cmd in (["fping"], [sys.executable, "-m", "fastping.cli", "fping"])
    )
    assert (ours.returncode, ours.stdout, ours.stderr) == (ref.returncode, ref.stdout, ref.stderr)


def test_loop_mode_until_interrupted(ns: Netns) -> None:
    """-l runs until SIGINT, then prints the summaries, like fping."""
    results = []
    for cmd in (["fping"], [sys.executable, "-m", "fastping.cli", "fping"]):
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns.host, *cmd, "-l", "-p", "200", "127.0.0.1", DEAD],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        time.sleep(1.5 if cmd[0] != "fping" else 1.0)  # our start-up: the interpreter
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        results.append((p.returncode, out, err))
    (rc_ref, out_ref, err_ref), (rc, out, err) = results
    assert rc == rc_ref == 1
    shape = re.compile(r"\[\d+\]")
    # the same kinds of lines (the number of rounds depends on when SIGINT came)
    assert {shape.sub("[k]", x) for x in mask(out)} == {shape.sub("[k]", x) for x in mask(out_ref)}
    summary = re.compile(r"^(\S+)\s+: xmt/rcv/%loss = \d+/\d+/\d+%")
    hosts = [m.group(1) for m in map(summary.match, err.splitlines()) if m]
    hosts_ref = [m.group(1) for m in map(summary.match, err_ref.splitlines()) if m]
    assert hosts == hosts_ref == ["127.0.0.1", DEAD]


def fastping_fping(
    n: Netns, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", n.host, sys.executable, "-m", "fastping.cli", "fping", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
        input=stdin,
    )


def test_json(ns: Netns) -> None:
    """-J (fping 5.4; Debian's 5.1 has none to compare with): one JSON document."""
    import json

    r = fastping_fping(ns, "-J", "-c", "2", "-p", "50", "127.0.0.1", DEAD)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    live, dead = doc["hosts"]["127.0.0.1"], doc["hosts"][DEAD]
    assert (live["xmt"], live["rcv"], live["loss_percentage"]) == (2, 2, 0)
    assert 0 < live["min"] <= live["avg"] <= live["max"]
    assert dead == {"xmt": 2, "rcv": 0, "loss_percentage": 100}
    r = fastping_fping(ns, "-J", "-C", "2", "-p", "50", "127.0.0.1", DEAD)
    doc = json.loads(r.stdout)
    assert len(doc["hosts"]["127.0.0.1"]) == 2 and all(v > 0 for v in doc["hosts"]["127.0.0.1"])
    assert doc["hosts"][DEAD] == [None, None]


def test_fast_reachable_stops_retrying(ns: Netns) -> None:
    """-X N (fping 5.2): stop as soon as N hosts answered; -x N waits for all retries."""
    t0 = time.monotonic()
    r = fastping_fping(ns, "-X", "1", "-t", "400", "-r", "3", "127.0.0.1", DEAD)
    fast = time.monotonic() - t0
    assert r.returncode == 0
    assert r.stdout == "Enough hosts reachable (required: 1, reachable: 1)\n"
    t0 = time.monotonic()
    r = fastping_fping(ns, "-x", "1", "-t", "400", "-r", "3", "127.0.0.1", DEAD)
    assert r.returncode == 0 and time.monotonic() - t0 > fast + 1.0  # 0.4 * (1.5+2.25+3.4) s more


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-d", "127.0.0.1"], "reverse-DNS"),
        (["-R", "127.0.0.1"], "random payload"),
        (["-o", "-c", "1", "127.0.0.1"], "outage"),
        (["-b", "8", "127.0.0.1"], "at least 16 bytes"),
        (["-l", "-p", "100", "-t", "500", "127.0.0.1"], "use -t no longer than -p"),
    ],
)
def test_refuses_what_it_cannot_honour(ns: Netns, args: list[str], words: str) -> None:
    r = fastping_fping(ns, *args)
    assert r.returncode == 3
    assert r.stdout == ""
    assert words in r.stderr and r.stderr.startswith("fping: ")


def test_more_targets_than_fping_takes(ns: Netns) -> None:
    """fping stops at 65,535 targets; fastping-fping takes them all (-g, one block)."""
    r = fastping_fping(ns, "-C", "1", "-q", "-i", "0", "-g", "127.1.0.0", "127.1.255.255")
    assert r.returncode == 0, r.stderr[-500:]
    lines = r.stderr.splitlines()
    assert len(lines) == 65536
    assert lines[0].startswith("127.1.0.0     : 0.") and lines[-1].startswith("127.1.255.255 : ")


def test_the_targets_are_what_the_matrix_needs(ns: Netns) -> None:
    """The matrix means something only if the namespace targets behave as named:
    checked with Debian's fping itself."""
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns.host,
            "fping",
            "-C",
            "1",
            "-t",
            "200",
            "-p",
            "300",
            *MIXED,
            *MIXED6,
            DUP,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    got = {}
    for line in r.stderr.splitlines():
        if " : " in line and "duplicate" not in line:
            host, vals = line.split(" : ")
            got[host.strip()] = vals.strip()
    for host in [*ALIVE, ALIVE6, "::1", DUP]:
        assert got[host] != "-", r.stderr
    for host in (DEAD, UNREACH, DEAD6, UNREACH6):
        assert got[host] == "-", r.stderr
    assert f"ICMP Host Unreachable from 10.201.0.1 for ICMP Echo sent to {UNREACH}" in r.stderr
    r = subprocess.run(
        ["ip", "netns", "exec", ns.host, "fping", "-C", "1", "-q", DUP],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"{DUP} : duplicate for [0]" in r.stderr
