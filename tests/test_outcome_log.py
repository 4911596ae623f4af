"""IcmpSocket's outcome log and quiet mode, on real raw sockets against loopback (and
in test-made namespaces for ICMP errors and send errors)."""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

import pytest

from conftest import needs_root
from fastping import chunk
from fastping._icmp import (
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIMEOUT,
    EV_UNREACHABLE,
    IcmpSocket,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
pytestmark = needs_root

Event = tuple[Any, ...]


def _round(s: IcmpSocket, slots: Sequence[int], want_received: int) -> list[Event]:
    """Send one probe per slot and drain until ``want_received`` replies in all (the
    socket's running total) have come in; quiet mode returns no events to wait on."""
    events = s.send(slots)
    deadline = time.monotonic() + 2.0
    while s.totals()["received"] < want_received and time.monotonic() < deadline:
        s.wait(0.05)
        events += s.recv()
    assert s.totals()["received"] == want_received, s.totals()
    return events


def _by_slot(log: list[tuple[int, bytes]]) -> dict[int, chunk.Columns]:
    slots = [slot for slot, _ in log]
    assert slots == sorted(slots) and len(set(slots)) == len(slots)
    return {slot: chunk.unpack(blob) for slot, blob in log}


def test_mode0_is_unchanged() -> None:
    with IcmpSocket(V4) as s:
        assert s.log_mode == 0 and s.log_max == 4_000_000
        slots = [s.add_target(f"127.3.1.{i}") for i in range(1, 21)]
        for r in range(3):
            events = _round(s, slots, 20 * (r + 1))
            assert sorted(e[0] for e in events) == slots
            assert {e[1] for e in events} == {EV_REPLY} and {e[2] for e in events} == {r}
        t = s.totals()
        assert t["log_pending"] == 0 and t["log_dropped"] == 0
        assert s.take_log() == []
        # the last outcome is tracked in every mode
        kind, rtt_ns, t_ns = s.slot_last(slots[0])
        assert kind == EV_REPLY and rtt_ns > 0 and abs(t_ns / 1e9 - time.time()) < 5


def test_quiet_mode_200_targets_3_rounds() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        assert s.log_mode == 1
        slots = [s.add_target(f"127.3.{i // 200}.{i % 200 + 1}") for i in range(200)]
        t0 = time.time()
        first = _round(s, slots, 200)
        # a slot's first final outcome is a change: every reply comes back once
        assert sorted(e[0] for e in first) == slots
        assert {(e[1], e[2]) for e in first} == {(EV_REPLY, 0)}
        assert _round(s, slots, 400) == []
        assert _round(s, slots, 600) == []
        t1 = time.time()
        assert s.totals()["log_pending"] == 600
        cols = _by_slot(s.take_log())
        assert s.totals()["log_pending"] == 0 and s.take_log() == []
        assert sorted(cols) == slots
        first_rtt_ms = {e[0]: e[3] / 1e6 for e in first}
        for slot, c in cols.items():
            assert len(c) == 3
            assert list(c.seq) == [0, 1, 2]
            assert c.code == bytes(3) and c.ttl == bytes([64]) * 3
            assert all(r > 0 for r in c.rtt_ms)
            # the returned event and the logged record are the same reply
            assert c.rtt_ms[0] == pytest.approx(first_rtt_ms[slot], rel=1e-6)
            assert all(t0 - 0.001 <= t <= t1 + 0.001 for t in c.t)
            assert list(c.t) == sorted(c.t)
            kind, rtt_ns, t_ns = s.slot_last(slot)
            assert kind == EV_REPLY
            assert rtt_ns / 1e6 == pytest.approx(c.rtt_ms[2], rel=1e-6)
            assert t_ns / 1e9 == pytest.approx(c.t[2], abs=1e-6)
        assert s.totals()["log_dropped"] == 0


def test_timeout_is_logged_and_returned_when_it_is_a_change() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        a = s.add_target("127.3.2.1")
        t0 = time.time()
        assert [e[:3] for e in _round(s, [a], 1)] == [(a, EV_REPLY, 0)]
        # the reply stays queued (no drain) while expire(0) times the probe out
        assert s.send([a], drain=False) == []
        assert [e[:3] for e in s.expire(0.0)] == [(a, EV_TIMEOUT, 1)]
        assert [e[:3] for e in s.recv()] == [(a, EV_LATE, 1)]  # late: always returned
        assert s.slot_last(a)[0] == EV_TIMEOUT
        # a second timeout in a row changes nothing: logged, not returned
        assert s.send([a], drain=False) == []
        assert s.expire(0.0) == []
        assert [e[:3] for e in s.recv()] == [(a, EV_LATE, 2)]
        # and the reply after it is a change again
        assert [e[:3] for e in _round(s, [a], 2)] == [(a, EV_REPLY, 3)]
        t1 = time.time()
        cols = _by_slot(s.take_log())
        c = cols[a]
        assert list(c.seq) == [0, 1, 2, 3]
        assert c.code == bytes([0, 1, 1, 0])
        assert c.ttl == bytes([64, 0, 0, 64])
        assert math.isnan(c.rtt_ms[1]) and math.isnan(c.rtt_ms[2])
        assert c.rtt_ms[0] > 0 and c.rtt_ms[3] > 0
        assert all(t0 - 0.001 <= t <= t1 + 0.001 for t in c.t)
        assert s.totals()["timeouts"] == 2 and s.totals()["late"] == 2


def test_forget_last() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        slots = [s.add_target(f"127.3.3.{i}") for i in range(1, 6)]
        assert len(_round(s, slots, 5)) == 5
        assert _round(s, slots, 10) == []
        s.forget_last(slots[2])
        assert s.slot_last(slots[2]) == (-1, 0, 0)
        assert [e[0] for e in _round(s, slots, 15)] == [slots[2]]
        s.forget_last()
        assert sorted(e[0] for e in _round(s, slots, 20)) == slots
        assert _round(s, slots, 25) == []
        with pytest.raises(IndexError, match="does not exist"):
            s.forget_last(99)
        with pytest.raises(IndexError):
            s.slot_last(99)
        assert sum(len(c) for c in _by_slot(s.take_log()).values()) == 25


def test_mode2_returns_everything_and_logs_it() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(2)
        slots = [s.add_target(f"127.3.4.{i}") for i in range(1, 11)]
        returned: dict[int, list[Event]] = {slot: [] for slot in slots}
        for r in range(3):
            events = _round(s, slots, 10 * (r + 1))
            assert sorted(e[0] for e in events) == slots
            for e in events:
                returned[e[0]].append(e)
        cols = _by_slot(s.take_log())
        for slot in slots:
            c = cols[slot]
            assert list(c.seq) == [e[2] for e in returned[slot]] == [0, 1, 2]
            assert list(c.rtt_ms) == pytest.approx([e[3] / 1e6 for e in returned[slot]])
            assert c.ttl == bytes(e[4] for e in returned[slot])


def test_per_slot_timeout() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        a = s.add_target("127.3.5.1")
        b = s.add_target("127.3.5.2")
        # 1 ns: every reply is slower, so the probe times out and the reply is late
        s.set_slot_timeout(a, 1e-9)
        events = s.send([a, b])
        kinds = sorted((e[0], e[1]) for e in events)
        assert kinds == [(a, EV_TIMEOUT), (a, EV_LATE), (b, EV_REPLY)]
        cols = _by_slot(s.take_log())
        assert cols[a].code == bytes([1]) and math.isnan(cols[a].rtt_ms[0])
        assert cols[b].code == bytes([0])
        # expire() honours a slot timeout shorter than its own argument
        s.set_slot_timeout(a, 0.05)
        s.forget_last()
        assert s.send([a, b], drain=False) == []
        assert s.expire(10.0) == []
        time.sleep(0.06)
        assert [e[:2] for e in s.expire(10.0)] == [(a, EV_TIMEOUT)]
        rest = sorted(e[:2] for e in s.recv())
        assert rest == [(a, EV_LATE), (b, EV_REPLY)]
        # and a socket timeout shorter than the slot's wins (the minimum applies)
        s.set_slot_timeout(b, 10.0)
        s.timeout_s = 1e-9
        assert sorted(e[:2] for e in s.send([b])) == [(b, EV_TIMEOUT), (b, EV_LATE)]
        s.timeout_s = 0.0
        s.set_slot_timeout(a, 0)
        assert [e[:2] for e in s.send([a])] == [(a, EV_REPLY)]
        with pytest.raises(ValueError, match=">= 0"):
            s.set_slot_timeout(a, -1.0)
        with pytest.raises(ValueError, match=">= 0"):
            s.set_slot_timeout(a, float("nan"))
        with pytest.raises(KeyError, match="not in use"):
            s.set_slot_timeout(7, 1.0)


def test_log_max_overflow_is_counted() -> None:
    with pytest.raises(ValueError, match="log_max"):
        IcmpSocket(V4, log_max=-1)
    with IcmpSocket(V4, log_max=5) as s:
        s.set_log(1)
        slots = [s.add_target(f"127.3.6.{i}") for i in range(1, 5)]
        for r in range(3):
            _round(s, slots, 4 * (r + 1))
        t = s.totals()
        assert t["log_pending"] == 5 and t["log_dropped"] == 7
        cols = _by_slot(s.take_log())
        # the first five records were kept: round 0 for all four, round 1 for slot 0
        assert {slot: list(c.seq) for slot, c in cols.items()} == {
            slots[0]: [0, 1],
            slots[1]: [0],
            slots[2]: [0],
            slots[3]: [0],
        }
        s.log_max = 100
        assert s.log_max == 100
        _round(s, slots, 16)
        assert s.totals()["log_pending"] == 4 and s.totals()["log_dropped"] == 7
        with pytest.raises(ValueError, match="log_max"):
            s.log_max = -1


def test_take_log_of_one_slot_keeps_the_others() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        slots = [s.add_target(f"127.3.7.{i}") for i in range(1, 4)]
        _round(s, slots, 3)
        _round(s, slots, 6)
        taken = s.take_log(slots[1])
        assert [slot for slot, _ in taken] == [slots[1]]
        assert list(chunk.unpack(taken[0][1]).seq) == [0, 1]
        assert s.totals()["log_pending"] == 4
        assert s.take_log(slots[1]) == []
        assert s.take_log(12345) == []
        rest = _by_slot(s.take_log())
        assert sorted(rest) == [slots[0], slots[2]]
        assert all(list(c.seq) == [0, 1] for c in rest.values())
        with pytest.raises(ValueError, match="-1 for all"):
            s.take_log(-2)


def test_remove_then_add_resets_last_kind_and_slot_timeout() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        a = s.add_target("127.3.8.1")
        assert len(_round(s, [a], 1)) == 1
        s.set_slot_timeout(a, 1e-9)
        assert s.slot_last(a)[0] == EV_REPLY
        s.take_log(a)
        s.remove_target(a)
        assert s.slot_last(a) == (-1, 0, 0)
        assert s.add_target("127.3.8.2") == a  # the freed slot is reused
        # a fresh slot: its first reply is returned, and the 1 ns timeout is gone
        assert [e[:2] for e in _round(s, [a], 2)] == [(a, EV_REPLY)]
        assert _by_slot(s.take_log())[a].code == bytes([0])


def test_ipv6_loopback() -> None:
    with IcmpSocket(V6) as s:
        s.set_log(1)
        a = s.add_target("::1")
        assert [e[:3] for e in _round(s, [a], 1)] == [(a, EV_REPLY, 0)]
        assert _round(s, [a], 2) == []
        assert _round(s, [a], 3) == []
        c = _by_slot(s.take_log())[a]
        assert list(c.seq) == [0, 1, 2] and c.code == bytes(3)
        assert c.ttl == bytes([64]) * 3  # the hop limit of ::1's replies
        assert all(r > 0 for r in c.rtt_ms)


def test_bad_input_and_empty_log() -> None:
    with IcmpSocket(V4) as s:
        assert s.take_log() == [] and s.take_log(0) == []
        for bad in (-1, 3):
            with pytest.raises(ValueError, match="log mode"):
                s.set_log(bad)
        assert s.log_mode == 0
        with pytest.raises(TypeError):
            s.take_log("0")  # type: ignore[arg-type]


def test_the_log_survives_close_and_clear_targets() -> None:
    # an engine drains the log at stop, after closing; records of dropped slots stay
    s = IcmpSocket(V4)
    s.set_log(2)
    a = s.add_target("127.3.10.1")
    _round(s, [a], 1)
    s.clear_targets()
    assert s.totals()["log_pending"] == 1
    s.close()
    (slot, blob), *more = s.take_log()
    assert slot == a and more == [] and chunk.unpack(blob).code == bytes([0])


def test_sweep_does_not_log_or_filter() -> None:
    with IcmpSocket(V4) as s:
        s.set_log(1)
        s.set_targets(["127.3.9.1", "127.3.9.2"])
        events = s.sweep(count=3, interval_s=0.0, timeout_s=0.5, events=True)
        assert events is not None and len(events) == 6
        assert {e[1] for e in events} == {EV_REPLY}
        assert s.sweep(count=1, timeout_s=0.5) is None
        assert s.totals()["log_pending"] == 0 and s.take_log() == []


# ---------------------------------------------------------------- namespaces
_NS_SCRIPT = """
import json, socket, sys, time
from fastping import chunk
from fastping._icmp import IcmpSocket
s = IcmpSocket(socket.AF_INET)
s.set_log(1)
slots = [s.add_target(a) for a in sys.argv[1:]]
rounds = []
for r in range(3):
    ev = s.send(slots)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and s.totals()["outstanding"] > 0:
        s.wait(0.05)
        ev += s.recv()
    rounds.append(sorted(list(e[:3]) for e in ev))
log = {slot: list(chunk.unpack(blob).code) for slot, blob in s.take_log()}
print(json.dumps({"rounds": rounds, "log": log, "last": [s.slot_last(x)[0] for x in slots]}))
"""


def _run_in(netns: Any, *targets: str) -> dict[str, Any]:
    out = netns.exec_h(sys.executable, "-c", _NS_SCRIPT, *targets)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_quiet_mode_returns_every_error(netns) -> None:  # type: ignore[no-untyped-def]
    # the router rejects 10.201.8.0/24 with host unreachable; 10.201.0.1 answers
    netns.reject_beyond_router("10.201.8.0/24")
    res = _run_in(netns, "10.201.8.8", "10.201.0.1")
    # every unreachable comes back; the router's replies only the first time
    assert res["rounds"] == [
        [[0, EV_UNREACHABLE, 0], [1, EV_REPLY, 0]],
        [[0, EV_UNREACHABLE, 1]],
        [[0, EV_UNREACHABLE, 2]],
    ]
    # only replies and timeouts are logged
    assert res["log"] == {"1": [0, 0, 0]} and res["last"] == [EV_UNREACHABLE, EV_REPLY]


def test_quiet_mode_returns_every_send_error(netns) -> None:  # type: ignore[no-untyped-def]
    netns.exec_h("ip", "route", "del", "default")  # no route to 10.202.0.0/16 now
    res = _run_in(netns, "10.202.0.1")
    assert [[e[:2] for e in r] for r in res["rounds"]] == [[[0, EV_SEND_ERROR]]] * 3
    assert res["log"] == {} and res["last"] == [EV_SEND_ERROR]


def test_log_grows_and_shrinks_without_losing_records() -> None:
    # 80,000 records outgrow the first buffers (4096, then doubling); a small take after
    # that shrinks the buffer again; nothing is lost or reordered on the way
    n = 10_000
    with IcmpSocket(V4) as s:
        s.set_log(1)
        first = s.append_range_v4(int.from_bytes(socket.inet_aton("127.5.0.1"), "big"), n)
        slots = array("I", range(first, first + n))
        for r in range(8):
            _round(s, slots, n * (r + 1))
        assert s.totals()["log_pending"] == 8 * n
        log = s.take_log()
        assert len(log) == n
        assert all(list(chunk.unpack(b).seq) == list(range(8)) for _, b in log)
        _round(s, slots, 9 * n)
        log = s.take_log()  # 10,000 records: the 126,976-record buffer shrinks
        assert [chunk.count(b) for _, b in log] == [1] * n
        for r in range(9, 12):
            _round(s, slots, n * (r + 1))
        cols = _by_slot(s.take_log())
        assert all(list(c.seq) == [9, 10, 11] and c.code == bytes(3) for c in cols.values())
        assert s.totals()["log_dropped"] == 0
