"""Subprocess mode: output parsers (recorded iputils / BusyBox samples), target
validation and injection, argument lists, and real runs against loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fastping import subproc
from fastping.errors import ConfigError, PermissionDenied, TargetError
from fastping.privilege import PingBinary, find_ping
from fastping.subproc import (
    async_subprocess_sweep,
    build_ping_argv,
    hosts_to_sweep_result,
    parse_ping_output,
    subprocess_sweep,
    to_host_result,
)
from privhelpers import in_netns, netns

T = TypeVar("T")
DATA = Path(__file__).resolve().parent / "data" / "ping"
IPUTILS = PingBinary("/usr/bin/ping", "/usr/bin/ping", "iputils", "", False, True)
BUSYBOX = PingBinary("/usr/bin/ping", "/usr/bin/busybox", "busybox", "", False, False)

needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="no ping binary")
needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox missing")


def sample(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


def host(name: str, count: int = 2) -> object:
    return to_host_result(
        parse_ping_output(sample(name)), target="t", address="192.0.2.1", count=count,
        collect_rtts=True,
    )  # fmt: skip


# -- parsers, from recorded output (tests/data/ping/record.sh) --------------------

# name: (sent, received, duplicates, timeouts, unreachable, time_exceeded, send_errors)
EXPECTED = {
    "iputils_ok_v4": (3, 3, 0, 0, 0, 0, 0),
    "iputils_ok_v6": (2, 2, 0, 0, 0, 0, 0),
    "iputils_partial_loss": (4, 2, 0, 2, 0, 0, 0),
    "iputils_all_lost": (2, 0, 0, 2, 0, 0, 0),
    "iputils_neigh_fail": (2, 0, 0, 2, 0, 0, 0),
    "iputils_unreachable": (2, 0, 0, 0, 2, 0, 0),
    "iputils_ttl_exceeded": (2, 0, 0, 0, 0, 2, 0),
    "iputils_duplicates": (2, 2, 1, 0, 0, 0, 0),
    "iputils_no_route": (2, 0, 0, 0, 0, 0, 2),
    "iputils_no_permission": (0, 0, 0, 0, 0, 0, 0),
    "busybox_ok_v4": (3, 3, 0, 0, 0, 0, 0),
    "busybox_ok_v6": (2, 2, 0, 0, 0, 0, 0),
    "busybox_partial_loss": (4, 2, 0, 2, 0, 0, 0),
    "busybox_all_lost": (2, 0, 0, 2, 0, 0, 0),
    "busybox_neigh_fail": (2, 0, 0, 2, 0, 0, 0),
    # BusyBox ignores ICMP errors: they look like loss
    "busybox_unreachable": (2, 0, 0, 2, 0, 0, 0),
    "busybox_ttl_exceeded": (2, 0, 0, 2, 0, 0, 0),
    "busybox_duplicates": (2, 2, 1, 0, 0, 0, 0),
    "busybox_no_route": (2, 0, 0, 0, 0, 0, 2),
    "busybox_no_permission": (0, 0, 0, 0, 0, 0, 0),
}


def test_every_sample_has_an_expectation() -> None:
    assert {p.stem for p in DATA.glob("*.txt")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_counts(name: str) -> None:
    h = host(name)
    got = (h.sent, h.received, h.duplicates, h.timeouts, h.unreachable, h.time_exceeded,
           h.send_errors)  # fmt: skip
    assert got == EXPECTED[name]
    # every probe ends as exactly one outcome
    assert h.received + h.timeouts + h.unreachable + h.time_exceeded + h.send_errors == h.sent
    if h.received:
        assert h.min_ms is not None and h.avg_ms is not None and h.max_ms is not None
        assert h.min_ms <= h.avg_ms <= h.max_ms
        assert h.ttl == 64
        assert len(h.rtts_ms) == h.received
    else:
        assert h.min_ms is None and h.rtts_ms == []


def test_iputils_rtts_and_summary_agree() -> None:
    p = parse_ping_output(sample("iputils_ok_v4"))
    assert p.transmitted == 3 and p.received == 3
    assert len(p.rtts_ms) == 3 and p.seqs == [1, 2, 3]
    assert p.summary_min_ms == pytest.approx(min(p.rtts_ms))
    assert p.summary_max_ms == pytest.approx(max(p.rtts_ms))
    assert p.summary_dev_ms is not None
    h = host("iputils_ok_v4", 3)
    assert h.avg_ms == pytest.approx(sum(p.rtts_ms) / 3)
    assert h.stddev_ms is not None and h.jitter_ms is not None


def test_busybox_rtts_and_summary() -> None:
    p = parse_ping_output(sample("busybox_ok_v4"))
    assert p.seqs == [0, 1, 2]  # BusyBox counts from 0
    assert p.summary_avg_ms is not None and p.summary_dev_ms is None
    assert p.summary_min_ms == pytest.approx(min(p.rtts_ms))


def test_duplicates_are_not_answers() -> None:
    for name in ("iputils_duplicates", "busybox_duplicates"):
        p = parse_ping_output(sample(name))
        assert len(p.rtts_ms) == 2 and len(p.dup_rtts_ms) == 1
        assert p.duplicates == 1


def test_partial_loss_keeps_seq_of_answered() -> None:
    assert parse_ping_output(sample("iputils_partial_loss")).seqs == [1, 3]
    assert parse_ping_output(sample("busybox_partial_loss")).seqs == [0, 2]
    assert host("iputils_partial_loss", 4).loss == 0.5


def test_icmp_errors_name_the_router() -> None:
    h = host("iputils_ttl_exceeded")
    assert h.error == "Time to live exceeded (from 10.91.0.2)"
    h = host("iputils_unreachable")
    assert h.error == "Destination Host Unreachable (from 10.91.0.2)"


def test_send_errors_and_permission_errors_are_reported() -> None:
    assert "Network is unreachable" in (host("iputils_no_route").error or "")
    assert "Network is unreachable" in (host("busybox_no_route").error or "")
    p = parse_ping_output(sample("iputils_no_permission"))
    assert p.permission_error and "Operation not permitted" in p.permission_error
    p = parse_ping_output(sample("busybox_no_permission"))
    assert p.permission_error and "permission denied" in p.permission_error


def test_parser_variants() -> None:
    text = (
        "PING localhost (127.0.0.1) 56(84) bytes of data.\n"
        "64 bytes from localhost (127.0.0.1): icmp_seq=1 ttl=64 time=0.050 ms\n"
        "64 bytes from ::1: icmp_seq=2 hlim=63 time=1.50 ms\n"
        "From 192.0.2.9 icmp_seq=3 Redirect Host(New nexthop: 192.0.2.1)\n"
        "From 2001:db8::1 icmp_seq=4 Destination unreachable: No route\n"
        "From 192.0.2.9 (192.0.2.9): icmp_seq=5 Time to live exceeded\n"
        "--- localhost ping statistics ---\n"
        "5 packets transmitted, 2 received, +2 errors, 60% packet loss, time 4005ms\n"
        "rtt min/avg/max/mdev = 0.050/0.775/1.500/0.725 ms\n"
    )
    p = parse_ping_output(text)
    assert p.rtts_ms == [0.05, 1.5] and p.ttl == 63
    assert p.unreachable == 1 and p.time_exceeded == 1 and p.errors == 2
    assert p.router == "192.0.2.9"
    h = to_host_result(p, target="localhost", address="127.0.0.1", count=5)
    assert (h.sent, h.received, h.timeouts) == (5, 2, 1)


def test_quiet_output_uses_summary() -> None:
    text = (
        "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n\n"
        "--- 127.0.0.1 ping statistics ---\n"
        "3 packets transmitted, 3 received, 0% packet loss, time 2003ms\n"
        "rtt min/avg/max/mdev = 0.030/0.040/0.050/0.008 ms\n"
    )
    h = to_host_result(parse_ping_output(text), target="x", address="127.0.0.1", count=3)
    assert (h.sent, h.received) == (3, 3)
    assert (h.min_ms, h.avg_ms, h.max_ms, h.stddev_ms) == (0.03, 0.04, 0.05, 0.008)


def test_killed_ping_without_summary() -> None:
    text = "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n"
    h = to_host_result(
        parse_ping_output(text), target="x", address="127.0.0.1", count=3, killed_after_s=9.0
    )
    assert h.sent == 3 and h.received == 0 and h.timeouts == 3
    assert "killed" in (h.error or "")


# -- target validation and injection ------------------------------------------------

BAD_TARGETS = [
    "; rm -rf /",
    "-f",
    "--help",
    "127.0.0.1; reboot",
    "$(touch /tmp/fp3-pwned)",
    "`id`",
    "127.0.0.1 -f",
    "a|b",
    "host\nname",
    "",
    "-c 1000000 127.0.0.1",
]


@pytest.mark.parametrize("bad", BAD_TARGETS)
def test_bad_targets_rejected_before_any_process(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []

    async def no_exec(*a: object, **k: object) -> None:
        started.append(a)
        raise AssertionError("a process was started for a bad target")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_exec)
    with pytest.raises(TargetError):
        subprocess_sweep(["127.0.0.1", bad], ping=IPUTILS)
    assert started == []
    assert not os.path.exists("/tmp/fp3-pwned")


def test_build_argv_only_takes_numeric_addresses() -> None:
    for bad in ("; rm -rf /", "-f", "localhost", "127.0.0.1 -f"):
        with pytest.raises(TargetError):
            build_ping_argv(IPUTILS, bad, count=1, interval_s=1, timeout_s=1)


def test_build_argv_iputils() -> None:
    argv = build_ping_argv(IPUTILS, "127.0.0.1", count=3, interval_s=0.2, timeout_s=1.5,
                           payload_size=100, ttl=9, tos=16, dont_fragment=True)  # fmt: skip
    assert argv[0] == "/usr/bin/ping"
    assert argv[-2:] == ["--", "127.0.0.1"]
    assert "-n" in argv and "-4" in argv
    joined = " ".join(argv)
    for frag in ("-c 3", "-W 1.5", "-s 100", "-i 0.2", "-t 9", "-Q 16", "-M do"):
        assert frag in joined
    assert "-w" not in argv  # would make iputils send more than count probes
    v6 = build_ping_argv(IPUTILS, "::1", count=1, interval_s=1, timeout_s=1)
    assert "-6" in v6 and "-i" not in v6 and v6[-1] == "::1"


def test_build_argv_busybox() -> None:
    argv = build_ping_argv(BUSYBOX, "::1", count=2, interval_s=0.5, timeout_s=0.3)
    assert argv[-2:] == ["--", "::1"] and "-6" in argv
    assert " ".join(argv).count("-W 1") == 1  # whole seconds, rounded up
    assert "-n" not in argv
    with pytest.raises(ConfigError, match="BusyBox ping cannot set ToS"):
        build_ping_argv(BUSYBOX, "127.0.0.1", count=1, interval_s=1, timeout_s=1, tos=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0},
        {"interval_s": -1},
        {"timeout_s": 0},
        {"payload_size": 70000},
        {"ttl": 0},
        {"max_concurrency": 0},
    ],
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        subprocess_sweep(["127.0.0.1"], ping=IPUTILS, **kwargs)  # type: ignore[arg-type]


def test_too_many_targets_refused() -> None:
    with pytest.raises(TargetError, match="too many for subprocess mode"):
        subprocess_sweep(["10.0.0.0/8"], ping=IPUTILS)


def test_family_mismatch() -> None:
    with pytest.raises(TargetError, match="not IPv6"):
        subprocess_sweep(["127.0.0.1"], family=socket.AF_INET6, ping=IPUTILS)


def test_no_ping_is_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PermissionDenied, match="no ping binary on PATH"):
        subprocess_sweep(["127.0.0.1"])


# -- real runs against loopback --------------------------------------------------


@pytest.fixture(scope="module")
def isolated() -> Iterator[Callable[[Callable[[], T]], T]]:
    """Run a callable inside a private network namespace when we are root: its
    loopback carries only our probes (a BusyBox ping's raw socket sees every
    ICMP packet of its namespace and may drop replies when another program
    floods the host's loopback), and name lookups cannot leave it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield lambda fn: fn()
        return
    with netns() as ns:
        yield lambda fn: in_netns(ns, fn)


@needs_ping
def test_loopback_sweep_iputils(isolated: Callable[[Callable[[], T]], T]) -> None:
    hosts = isolated(
        lambda: subprocess_sweep(
            ["127.0.0.1", "::1", "localhost", "127.0.0.2-4", "no-such-host.invalid"],
            count=3, interval_s=0.05, timeout_s=1.0, collect_rtts=True,
        )
    )  # fmt: skip
    assert [h.target for h in hosts] == [
        "127.0.0.1", "::1", "localhost", "127.0.0.2", "127.0.0.3", "127.0.0.4",
        "no-such-host.invalid",
    ]  # fmt: skip
    for h in hosts[:-1]:
        assert (h.sent, h.received, h.timeouts, h.send_errors) == (3, 3, 0, 0), h
        assert len(h.rtts_ms) == 3 and h.min_ms is not None and h.ttl == 64
        assert h.error is None
    bad = hosts[-1]
    assert bad.address is None and bad.sent == 0 and "cannot resolve" in (bad.error or "")
    res = hosts_to_sweep_result(hosts, 1.0)
    assert res.sent == 18 and res.received == 18 and res.totals["resolve_errors"] == 1
    assert res.summary()["alive"] == 6


@needs_busybox
def test_loopback_sweep_busybox(tmp_path: Path, isolated: Callable[[Callable[[], T]], T]) -> None:
    (tmp_path / "ping").symlink_to(shutil.which("busybox") or "")
    bb = find_ping(str(tmp_path))
    assert bb is not None and bb.flavor == "busybox"
    hosts = isolated(
        lambda: subprocess_sweep(
            ["127.0.0.1", "::1"], count=2, interval_s=0.05, timeout_s=1, ping=bb
        )
    )
    for h in hosts:
        assert (h.sent, h.received) == (2, 2), h
        assert h.min_ms is not None and h.ttl == 64


@needs_ping
def test_concurrency_is_bounded(tmp_path: Path, isolated: Callable[[Callable[[], T]], T]) -> None:
    # a wrapper "ping" that records how many copies run at once, then execs the real one
    real = shutil.which("ping")
    log = tmp_path / "log"
    wrapper = tmp_path / "ping"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo start >> "{log}"\n'
        f'n=$(grep -c start "{log}"); e=$(grep -c end "{log}" || true)\n'
        f'echo "running $((n - e))" >> "{log}"\n'
        f'"{real}" "$@"; rc=$?\n'
        f'echo end >> "{log}"\n'
        "exit $rc\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    pb = PingBinary(str(wrapper), str(wrapper), "iputils", "", False, False)
    t0 = time.monotonic()
    hosts = isolated(
        lambda: subprocess_sweep([f"127.0.0.{i}" for i in range(1, 9)], count=2, interval_s=0.3,
                                 timeout_s=1, max_concurrency=2, ping=pb)
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert all(h.received == 2 for h in hosts)
    running = [
        int(ln.split()[1]) for ln in log.read_text().splitlines() if ln.startswith("running")
    ]
    assert len(running) == 8 and max(running) <= 2
    assert elapsed >= 4 * 0.3  # 8 runs of >= 0.3 s, two at a time


@needs_ping
def test_hung_ping_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hang = tmp_path / "ping"
    hang.write_text(
        "#!/bin/sh\necho 'PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.'\nexec sleep 30\n"
    )
    hang.chmod(0o755)
    monkeypatch.setattr(subproc, "KILL_GRACE_S", 0.2)
    pb = PingBinary(str(hang), str(hang), "iputils", "", False, False)
    t0 = time.monotonic()
    (h,) = subprocess_sweep(["127.0.0.1"], timeout_s=0.2, ping=pb)
    assert time.monotonic() - t0 < 5
    assert h.sent == 1 and h.received == 0 and "killed" in (h.error or "")


@needs_ping
def test_async_twin_and_sync_inside_loop() -> None:
    async def main() -> tuple[list[object], list[object]]:
        a = await async_subprocess_sweep(["127.0.0.1"], count=1, timeout_s=1)
        b = subprocess_sweep(["::1"], count=1, timeout_s=1)  # from inside a running loop
        return a, b  # type: ignore[return-value]

    a, b = asyncio.run(main())
    assert a[0].received == 1 and b[0].received == 1  # type: ignore[attr-defined]


def test_ping_permission_failure_raises(tmp_path: Path) -> None:
    # a "ping" that fails the way iputils does without privilege
    fake = tmp_path / "ping"
    fake.write_text("#!/bin/sh\ncat '" + str(DATA / "iputils_no_permission.txt") + "'\nexit 2\n")
    fake.chmod(0o755)
    pb = PingBinary(str(fake), str(fake), "iputils", "", False, False)
    with pytest.raises(PermissionDenied, match="may not open an ICMP socket"):
        subprocess_sweep(["127.0.0.1"], ping=pb)
