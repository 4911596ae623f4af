"""The engine's unit tests run on FakeIcmpSocket (tests/engine_fakes.py); this checks
the fake against the real core on one shared scenario, so a change of the core's
contract cannot leave the fake (and every test built on it) behind unnoticed.

The scenario runs in a namespace of its own where nft drops the echo requests to one
address (the fake's ``dead``), in each outcome-log mode: three rounds of send, recv and
expire, a target removed and its slot reused. Compared: the kinds of the events each
round's send and recv return (together: the core hands back replies drained during the
send, the fake at recv) and its expire, per slot; the counters, the per-slot stats, the
last outcome and the outcome log's records (their sequence numbers aside: the core's
first probe of a slot is serial 0, the fake's 1, and no test relies on either)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import pytest
from tests.engine_fakes import FakeIcmpSocket

from conftest import needs_root, slot_counts
from fastping import chunk

pytestmark = needs_root

DEAD = "127.0.0.5"
RULES = f"""
table ip fpt_fake {{
    chain in {{
        type filter hook input priority 0;
        icmp type echo-request ip daddr {DEAD} drop
    }}
}}
"""
COUNTERS = ("sent", "received", "timeouts", "duplicates", "late", "send_errors")


def scenario(sock: Any, mode: int) -> dict[str, Any]:
    """What the engine sees of ``sock`` over three rounds; slots named by address."""
    sock.set_log(mode)
    sock.set_rtt_buckets([10**9])  # the replies per slot: all under a second
    addr: dict[int, str] = {}
    for a in ("127.0.0.1", DEAD, "127.0.0.2"):
        addr[sock.add_target(a)] = a
    calls: list[list[tuple[str, int]]] = []

    def kinds(events: list[tuple[Any, ...]]) -> list[tuple[str, int]]:
        return sorted((addr[e[0]], e[1]) for e in events)

    def round_() -> None:
        # replies come back from send (the core drains after each batch, and on
        # loopback they are there) or from recv (the fake): the engine takes both
        ev = sock.send(sorted(addr))
        time.sleep(0.05)
        calls.append(kinds(ev + sock.recv()))
        calls.append(kinds(sock.expire(0.03)))

    round_()
    round_()
    gone = next(s for s, a in addr.items() if a == "127.0.0.2")
    sock.remove_target(gone)
    del addr[gone]
    addr[sock.add_target("127.0.0.3")] = "127.0.0.3"
    round_()
    t = sock.totals()
    log = sorted(
        (addr[slot], code) for slot, blob in sock.take_log() for code in chunk.unpack(blob).code
    )
    return {
        "calls": calls,
        "totals": {k: t[k] for k in COUNTERS},
        "outstanding": t["outstanding"],
        "stats": {a: slot_counts(sock.slot_stats(s)) for s, a in addr.items()},
        "last": {a: sock.slot_last(s)[0] for s, a in addr.items()},
        "buckets": {a: (sock.slot_buckets(s) or ((),))[0] for s, a in addr.items()},
        "log": log,
    }


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_the_fake_socket_behaves_as_the_core(mode: int) -> None:
    from tests.privhelpers import in_netns, netns

    from fastping._icmp import IcmpSocket

    def body() -> tuple[dict[str, Any], dict[str, Any]]:
        subprocess.run(["nft", "-f", "-"], input=RULES, text=True, check=True)
        with IcmpSocket(socket.AF_INET, window=2) as real:
            got_real = scenario(real, mode)
        fake = FakeIcmpSocket(socket.AF_INET, 2, dead={DEAD})
        try:
            got_fake = scenario(fake, mode)
        finally:
            fake.close()
        return got_real, got_fake

    with netns() as ns:
        real, fake = in_netns(ns, body)
    # the real core saw what the scenario means: the dead address times out each round
    assert real["totals"]["timeouts"] == 3 and real["totals"]["received"] == 6
    for key in ("calls", "totals", "outstanding", "stats", "last", "log"):
        assert fake[key] == real[key], key
