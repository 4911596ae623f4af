"""Per-slot RTT histograms kept in C (``set_rtt_buckets`` / ``slot_buckets``): what
metrics read at scrape time instead of recounting every reply in Python. Real
sockets against loopback only."""

from __future__ import annotations

import socket
from bisect import bisect_left

import pytest
from tests.test_tcp import QUIET_PORTS, _free_port, _listener

from conftest import needs_root
from fastping import _icmp
from fastping._icmp import EV_REPLY, IcmpSocket

V4, V6 = socket.AF_INET, socket.AF_INET6
pytestmark = needs_root


def _bounds_around(rtts: list[int]) -> list[int]:
    """Bounds that split these RTTs over several buckets, one exactly on an RTT (a
    reply equal to a bound is in that bound's bucket: Prometheus' ``le``)."""
    lo, hi = min(rtts), max(rtts)
    mid = sorted(rtts)[len(rtts) // 2]
    return sorted({max(1, lo // 2), mid, (mid + hi) // 2 + 1, hi * 4})


@pytest.mark.parametrize(("family", "prefix"), [(V4, "127.0.0."), (V6, "::")])
def test_buckets_are_the_replies_rtts_counted_per_bound(family: int, prefix: str) -> None:
    addrs = [f"{prefix}1"] if family == V6 else [f"{prefix}{i}" for i in range(1, 9)]
    with IcmpSocket(family, window=4) as s:
        s.set_targets(addrs)
        # a first round to learn the RTTs, then bounds around them and four rounds more
        evs = s.sweep(count=1, timeout_s=1.0, events=True)
        rtts = [e[3] for e in evs if e[1] == EV_REPLY]
        bounds = _bounds_around(rtts)
        s.set_rtt_buckets(bounds)
        assert s.rtt_bounds_ns == tuple(bounds)
        s.reset_stats()
        evs = s.sweep(count=4, interval_s=0.01, timeout_s=1.0, events=True)
        for slot in range(len(addrs)):
            got = s.slot_buckets(slot)
            assert got is not None
            counts, sum_ns = got
            mine = [e[3] for e in evs if e[0] == slot and e[1] == EV_REPLY]
            assert len(mine) == 4
            want = [0] * (len(bounds) + 1)
            for r in mine:
                want[bisect_left(bounds, r)] += 1
            assert list(counts) == want
            st = s.slot_stats(slot)
            assert sum(counts) == st.received == 4  # every reply, once
            assert sum_ns == sum(mine) == st.sum_ns  # the same sum the slot keeps


def test_a_reply_equal_to_a_bound_is_in_its_bucket_and_above_all_in_the_last() -> None:
    with IcmpSocket(V4) as s:
        slot = s.add_target("127.0.0.1")
        evs = s.sweep(count=1, timeout_s=1.0, events=True)
        rtt = next(e[3] for e in evs if e[1] == EV_REPLY)
        s.set_rtt_buckets([rtt])  # le == rtt: the first bucket
        s.sweep(count=1, timeout_s=1.0)
        counts, _ = s.slot_buckets(slot) or ((), 0)
        assert sum(counts) == 1
        s.set_rtt_buckets([1])  # every loopback RTT is above 1 ns: the last bucket
        evs = s.sweep(count=2, interval_s=0.01, timeout_s=1.0, events=True)
        rtts = [e[3] for e in evs if e[1] == EV_REPLY]
        # set_rtt_buckets restarts the histogram (not the slot's other figures)
        assert s.slot_buckets(slot) == ((0, 2), sum(rtts))


def test_bad_bounds_are_refused_and_empty_turns_them_off() -> None:
    with IcmpSocket(V4) as s:
        slot = s.add_target("127.0.0.1")
        assert s.slot_buckets(slot) is None and s.rtt_bounds_ns == ()
        for bad in ([0], [-5, 10], [10, 10], [20, 10]):
            with pytest.raises(ValueError, match="strictly increasing"):
                s.set_rtt_buckets(bad)
        with pytest.raises(ValueError, match="at most 4096"):
            s.set_rtt_buckets(range(1, 5000))
        with pytest.raises(IndexError):
            s.slot_buckets(99)
        s.set_rtt_buckets([1000, 2000])
        assert s.slot_buckets(slot) == ((0, 0, 0), 0)
        s.set_rtt_buckets([])
        assert s.slot_buckets(slot) is None
        assert s.memory()["rtt_buckets"] == 0


def test_slots_added_later_grow_the_histogram_and_a_reused_slot_starts_at_zero() -> None:
    n = 2000
    with IcmpSocket(V4) as s:
        s.set_rtt_buckets([10_000, 100_000, 10**9])  # before any slot exists
        first = s.add_target("127.0.0.1")
        s.sweep(count=1, timeout_s=1.0)
        assert sum(s.slot_buckets(first)[0]) == 1  # type: ignore[index]
        s.remove_target(first)
        again = s.add_target("127.0.0.2")
        assert again == first and s.slot_buckets(again) == ((0, 0, 0, 0), 0)
        for i in range(n):  # the table grows (realloc) with the histogram beside it
            s.add_target(f"127.10.{i >> 8}.{i & 255}")
        s.sweep(count=1, timeout_s=2.0)
        assert s.memory()["rtt_buckets"] >= (n + 1) * 5 * 8
        total = 0
        for slot in range(n + 1):
            counts, sum_ns = s.slot_buckets(slot) or ((), 0)
            st = s.slot_stats(slot)
            assert sum(counts) == st.received and sum_ns == st.sum_ns
            total += sum(counts)
        assert total == n + 1 and s.totals()["received"] == n + 2  # + the first reply
        s.reset_stats()
        assert all(s.slot_buckets(k) == ((0, 0, 0, 0), 0) for k in range(n + 1))


def test_tcp_histogram_holds_open_answers_not_closed_ports_rsts() -> None:
    with _listener() as ls, _icmp.TcpSocket(sport_base=QUIET_PORTS) as t:
        t.set_rtt_buckets([10**9])
        open_slot = t.add_target("127.0.0.1", ls.getsockname()[1])
        closed_slot = t.add_target("127.0.0.1", _free_port())
        t.sweep(count=3, interval_s=0.01, timeout_s=1.0)
        assert t.slot_stats(open_slot).received == 3 and t.slot_closed(open_slot) == 0
        assert t.slot_buckets(open_slot)[0] == (3, 0)  # type: ignore[index]
        assert t.slot_stats(closed_slot).received == 3 and t.slot_closed(closed_slot) == 3
        assert t.slot_buckets(closed_slot) == ((0, 0), 0)
