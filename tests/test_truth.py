"""RTT truth: every RTT fastping reports, compared with a packet capture of the same
probe (tcpdump on ``lo`` of a namespace the test makes, nanosecond timestamps).

The bar is the issue's: p99 of |fastping's RTT - the wire's request-to-reply gap|
within 10 us, for a full-rate sweep of 16,384 targets and for the monitor at more
than 5,000 probes/s, IPv4 and IPv6, raw and datagram sockets. Before kernel TX
timestamps the sweep's median error was +237 us (the k-th probe of a batch was
stamped as if it had left with the first).

Targets: 127.9.0.0/18 and fd00:f9::/114, both inside the test's own namespace
(``ip -6 route add local fd00:f9::/112 dev lo`` makes its kernel answer the whole
IPv6 block, as it answers all of 127/8).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.capture import observed_netns, percentile, tcpdump, wire_rtts
from tests.conftest import ROOT, child_env

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not ROOT, reason="needs root: namespaces, raw sockets, tcpdump"),
]

BAR_P99_NS = 10_000  # the bar; fping measured ~3.9 us on this kind of machine
V6_LOCAL = "fd00:f9::/112"


@pytest.fixture()
def ns() -> Iterator[str]:
    # datagram (unprivileged) ICMP sockets for every group, in this namespace only
    with observed_netns(
        "fpt-truth", V6_LOCAL, sysctls=("net.ipv4.ping_group_range=0 2147483647",)
    ) as name:
        yield name


def fastping_in(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "fastping.cli", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )


def errors_ns(
    reported: dict[tuple[str, int], float], wire: dict[tuple[str, int], list[int]]
) -> list[float]:
    """fastping's RTT minus the wire's, in ns, for every probe seen by both."""
    out = []
    for key, rtt_ns in reported.items():
        gaps = wire.get(key)
        if gaps and len(gaps) == 1:
            out.append(rtt_ns - gaps[0])
    return out


def check_bar(errs: list[float], expected: int, what: str) -> None:
    assert len(errs) >= 0.99 * expected, f"{what}: only {len(errs)} of {expected} probes matched"
    ab = sorted(abs(e) for e in errs)
    p99 = percentile(ab, 0.99)
    med = percentile(sorted(errs), 0.5)
    print(
        f"{what}: {len(errs)} probes, error median {med / 1e3:+.2f} us,"
        f" p99 |error| {p99 / 1e3:.2f} us"
    )
    assert p99 <= BAR_P99_NS, f"{what}: p99 |RTT - wire| = {p99 / 1e3:.1f} us > 10 us"


@pytest.mark.parametrize(
    "family,mode,workers",
    [("v4", "raw", 1), ("v6", "raw", 1), ("v4", "dgram", 1), ("v6", "dgram", 1), ("v4", "raw", 2)],
)
def test_sweep_rtts_agree_with_the_wire(
    ns: str, tmp_path: Path, family: str, mode: str, workers: int
) -> None:
    target = "127.9.0.0/18" if family == "v4" else "fd00:f9::/114"
    pcap = tmp_path / "sweep.pcap"
    w = ("--workers", str(workers))
    with tcpdump(ns, pcap, icmp6=family == "v6"):
        r = fastping_in(ns, "sweep", target, "--rate", "0", "--mode", mode, "--json", "-t", "2", *w)
    assert r.returncode == 0, r.stderr
    hosts = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(hosts) == 16384 and all(h["received"] == 1 for h in hosts)
    # the summary says how every reply was timed: from the kernel's TX timestamp
    q = fastping_in(ns, "sweep", target, "--rate", "0", "--mode", mode, "--json", "-q", *w)
    summary = json.loads(q.stdout)
    assert summary["timed_kernel"] == 16384 and summary["timed_user"] == 0, summary
    reported = {(h["address"], 0): h["min_ms"] * 1e6 for h in hosts}
    assert summary["workers"] == workers
    check_bar(errors_ns(reported, wire_rtts(pcap)), 16384, f"sweep {family} {mode} w{workers}")


@pytest.mark.parametrize("family,mode", [("v4", "raw"), ("v6", "dgram")])
def test_monitor_rtts_agree_with_the_wire(ns: str, tmp_path: Path, family: str, mode: str) -> None:
    """The engine at 8,192 targets every second (8,192 probes/s) for 4 s: every stored
    RTT against the capture of its probe (address, sequence number)."""
    target = "127.9.0.0/19" if family == "v4" else "fd00:f9::/115"
    db = tmp_path / "truth.db"
    pcap = tmp_path / "monitor.pcap"
    with tcpdump(ns, pcap, icmp6=family == "v6"):
        r = fastping_in(
            ns, "monitor", target, "--interval", "1", "--duration", "4", "--db", str(db),
            "--mode", mode, "--max-cpu-percent", "0", "--max-memory-mb", "0", "--table", "never",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from fastping.results import Outcome
    from fastping.store import ResultStore

    store = ResultStore(db)  # read only: never started, so nothing to close
    reported: dict[tuple[str, int], float] = {}
    for name in store.targets():
        for pr in store.recent(name, limit=100):
            if pr.outcome is Outcome.REPLY and pr.rtt_ms is not None:
                reported[(pr.address or name, pr.seq)] = pr.rtt_ms * 1e6
    assert len(reported) >= 3 * 8192, f"only {len(reported)} replies stored"
    check_bar(errors_ns(reported, wire_rtts(pcap)), len(reported), f"monitor {family} {mode}")


@pytest.mark.parametrize("address", ["127.9.0.77", "fd00:f9::77"])
def test_ping_rtts_agree_with_the_wire(ns: str, tmp_path: Path, address: str) -> None:
    """fastping.ping's per-probe RTTs against the capture: 1,000 probes 2 ms apart, so
    the p99 is the 10th worst probe. (With 200, it was the 2nd worst, and two hardware
    interrupts landing between the kernel's TX stamp and the loopback enqueue, ~20 us
    each on this VM, failed ~1 run in 4 on a busy machine; fastping's stamp is the
    kernel's in both cases, so no tool could have seen those probes leave later.)"""
    pcap = tmp_path / "ping.pcap"
    code = (
        "import json, fastping; "
        f"h = fastping.ping({address!r}, count=1000, interval_s=0.002, timeout_s=1.0); "
        "print(json.dumps(h.rtts_ms))"
    )
    with tcpdump(ns, pcap, icmp6=":" in address):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rtts = json.loads(r.stdout)
    assert len(rtts) == 1000
    wire = wire_rtts(pcap)
    reported = {(address, seq): rtt * 1e6 for seq, rtt in enumerate(rtts)}
    check_bar(errors_ns(reported, wire), 1000, f"ping {address}")
