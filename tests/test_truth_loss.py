"""Loss truth: the sent/received counts fastping reports per target, against a packet
capture of the same probes (tcpdump on ``lo`` of a namespace the test makes), with a
quarter of the echo requests dropped at random by nftables before the kernel answers
them. Every figure must be the capture's exactly: a dropped reply counted as one, a
duplicate or a stray packet taken for an answer, a probe sent twice would all show.

Targets: 127.9.64.0/26 and fd00:f9::100/122, inside the test's own namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.capture import observed_netns, read_echoes, tcpdump
from tests.conftest import ROOT, child_env

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not ROOT, reason="needs root: namespaces, raw sockets, tcpdump, nft"),
]

V6_LOCAL = "fd00:f9::/112"
DROP_RULES = """
table inet fpt_loss {
    chain in {
        type filter hook input priority 0;
        icmp type echo-request numgen random mod 4 == 0 drop
        icmpv6 type echo-request numgen random mod 4 == 0 drop
    }
}
"""


@pytest.fixture()
def ns() -> Iterator[str]:
    with observed_netns("fpt-loss", V6_LOCAL, nft_rules=DROP_RULES) as name:
        yield name


def wire_counts(pcap: Path, targets: set[str]) -> dict[str, tuple[int, int]]:
    """address -> (echo requests to it, echo replies from it) on the wire."""
    req: Counter[str] = Counter()
    rep: Counter[str] = Counter()
    for kind, addr, _ident, _seq, _t in read_echoes(pcap):
        if addr in targets:
            (req if kind == "req" else rep)[addr] += 1
    return {a: (req[a], rep[a]) for a in targets}


@pytest.mark.parametrize(
    "family,cidr",
    [("v4", "127.9.64.0/26"), ("v6", "fd00:f9::100/122")],
)
def test_sweep_loss_is_the_captures(ns: str, tmp_path: Path, family: str, cidr: str) -> None:
    pcap = tmp_path / "loss.pcap"
    with tcpdump(ns, pcap, icmp6=family == "v6"):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "fastping.cli", "sweep", cidr,
             "-c", "20", "-p", "0.01", "-t", "0.5", "--rate", "0", "--json"],
            capture_output=True, text=True, env=child_env(), timeout=120,
        )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr  # 1: some targets down (none should be)
    hosts = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    hosts = [h for h in hosts if "address" in h]
    assert len(hosts) == 64
    wire = wire_counts(pcap, {h["address"] for h in hosts})
    for h in hosts:
        assert (h["sent"], h["received"]) == wire[h["address"]], h
        assert h["duplicates"] == h["late"] == 0
        assert h["loss"] == pytest.approx(1 - h["received"] / h["sent"], abs=1e-4)
    sent = sum(h["sent"] for h in hosts)
    lost = sent - sum(h["received"] for h in hosts)
    assert sent == 64 * 20
    assert 0.18 < lost / sent < 0.32  # nft drops a quarter at random


def test_ping_loss_is_the_captures(ns: str, tmp_path: Path) -> None:
    """fastping.ping's counts of 100 probes, as the capture saw them."""
    pcap = tmp_path / "ping.pcap"
    code = (
        "import json, fastping; "
        "h = fastping.ping('127.9.64.77', count=100, interval_s=0.005, timeout_s=0.5); "
        "print(json.dumps([h.sent, h.received]))"
    )
    with tcpdump(ns, pcap):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sent, received = json.loads(r.stdout)
    assert (sent, received) == wire_counts(pcap, {"127.9.64.77"})["127.9.64.77"]
    assert 10 < sent - received < 45
