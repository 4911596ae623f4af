"""The core's per-slot memory: what a slot costs, and that the figures kept in the
columns made only on demand (rare counters, wide RTTs, the engine's last outcome,
per-slot timeouts) stay exact, on real sockets against loopback and namespaces."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.test_socket import _forge_reply

from conftest import needs_root, slot_counts
from fastping import _icmp
from fastping._icmp import EV_REPLY, IcmpSocket

V4, V6 = socket.AF_INET, socket.AF_INET6
pytestmark = needs_root

PER_SLOT = ("addresses", "slots", "probes", "rare", "recent", "timeouts")


def _per_slot(s: IcmpSocket) -> float:
    m = s.memory()
    return sum(m[k] for k in PER_SLOT) / m["slots"] * m["per_slot_size"]["SlotStats"]


def test_a_one_round_sweep_keeps_68_bytes_per_ipv4_target() -> None:
    """4 (address) + 48 (SlotStats) + 16 (one Probe): nothing else is made for a
    sweep whose every target answers once."""
    n = 4096
    with IcmpSocket(V4) as s:
        s.append_packed(b"".join(socket.inet_aton(f"127.9.{i >> 8}.{i & 255}") for i in range(n)))
        s.sweep(count=1, timeout_s=1.0)
        t = s.totals()
        m = s.memory()
        assert t["received"] == n and t["stats_lost"] == 0
        assert m["rare"] == m["recent"] == m["timeouts"] == 0
        assert _per_slot(s) == 4 + 48 + 16
        st = s.slot_stats(7)
        assert slot_counts(st) == {"sent": 1, "received": 1}
        assert 0 < st.min_ns == st.max_ns == st.sum_ns < 10**9  # min = max = sum for one reply
        assert (st.jitter_sum_ns, st.jitter_n) == (0, 0)  # no jitter from one reply
        assert s.slot_last(7)[0] == _icmp.EV_REPLY


def test_two_rounds_keep_jitter_exactly() -> None:
    """count > 1 makes the SlotRecent column: jitter over received - 1 pairs, the
    same sum as the per-reply RTTs give."""
    with IcmpSocket(V4, window=3) as s:
        s.set_targets(["127.0.0.1", "127.0.0.2"])
        slots = [0, 1]
        evs = s.sweep(count=3, interval_s=0.01, timeout_s=0.5, events=True)
        m = s.memory()
        assert m["recent"] > 0 and m["rare"] == 0
        for slot in slots:
            rtts = [e[3] for e in evs if e[0] == slot and e[1] == EV_REPLY]
            assert len(rtts) == 3
            st = s.slot_stats(slot)
            assert (st.min_ns, st.max_ns, st.sum_ns) == (min(rtts), max(rtts), sum(rtts))
            assert st.jitter_sum_ns == abs(rtts[1] - rtts[0]) + abs(rtts[2] - rtts[1])
            assert st.jitter_n == 2


def test_rtt_beyond_32_bits_of_ns_is_kept_exactly() -> None:
    """An RTT of 4.3 s or more does not fit SlotStats' 32-bit range: the slot's range
    moves to its SlotRare and stays exact. The namespace's kernel does not answer
    echoes; the late answer and the quick one are the test's."""
    from tests.privhelpers import in_netns, netns

    def body() -> tuple[list[int], tuple[object, ...], dict[str, int]]:
        subprocess.run(["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"], check=True)
        with (
            IcmpSocket(V4, window=2) as s,
            socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw,
        ):
            raw.bind(("127.0.0.5", 0))
            slot = s.add_target("127.0.0.5")
            rtts: list[int] = []
            assert s.send([slot]) == []
            time.sleep(4.4)
            _forge_reply(
                raw, "127.0.0.5", s.ident, 0, _icmp.build_probe_payload(slot, 0, s.key, 56)
            )
            time.sleep(0.05)
            rtts += [e[3] for e in s.recv() if e[1] == EV_REPLY]
            assert s.send([slot]) == []
            _forge_reply(
                raw, "127.0.0.5", s.ident, 1, _icmp.build_probe_payload(slot, 1, s.key, 56)
            )
            time.sleep(0.05)
            rtts += [e[3] for e in s.recv() if e[1] == EV_REPLY]
            return rtts, s.slot_stats(slot), s.memory()

    with netns() as ns:
        rtts, st, mem = in_netns(ns, body)
    assert len(rtts) == 2 and rtts[0] > 2**32 > rtts[1]
    assert (st.sent, st.received) == (2, 2)
    assert (st.min_ns, st.max_ns, st.sum_ns) == (rtts[1], rtts[0], rtts[0] + rtts[1])
    assert st.jitter_sum_ns == rtts[0] - rtts[1]  # jitter: one pair
    assert mem["rare"] > 0


def test_a_reused_slot_starts_from_zero() -> None:
    """A freed slot's duplicate and error counters (its SlotRare) are zeroed when the
    slot is given to a new target, and reset_stats zeroes every one."""
    with (
        IcmpSocket(V4, window=2) as s,
        socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw,
    ):

        def probe_and_copy(slot: int) -> None:
            # one probe, its reply from the kernel, then a copy of it: a duplicate
            s.send([slot])
            time.sleep(0.05)
            s.recv()
            _forge_reply(
                raw, "127.0.0.1", s.ident, 0, _icmp.build_probe_payload(slot, 0, s.key, 56)
            )
            time.sleep(0.05)
            s.recv()

        slot = s.add_target("127.0.0.1")
        probe_and_copy(slot)
        assert s.slot_stats(slot).duplicates == 1  # the copy: one duplicate
        s.remove_target(slot)
        again = s.add_target("127.0.0.1")
        assert again == slot
        assert slot_counts(s.slot_stats(again)) == {}
        probe_and_copy(again)
        assert slot_counts(s.slot_stats(again)) == {"sent": 1, "received": 1, "duplicates": 1}
        rare = s.memory()["rare"]
        s.reset_stats()
        assert slot_counts(s.slot_stats(again)) == {}
        s.clear_targets()
        s.set_targets(["127.0.0.4"])
        assert slot_counts(s.slot_stats(0)) == {}
        assert s.memory()["rare"] == rare  # kept and reused, not made again


def test_per_slot_timeout_column_is_made_on_demand() -> None:
    with IcmpSocket(V4) as s:
        slot = s.add_target("127.0.0.1")
        assert s.memory()["timeouts"] == 0
        s.set_slot_timeout(slot, 0.5)
        assert s.memory()["timeouts"] == s.memory()["slots"] // 48 * 8
        s.set_targets([f"127.0.1.{i}" for i in range(100)])  # grows the column with the slots
        assert s.memory()["timeouts"] == s.memory()["slots"] // 48 * 8
