"""The engine's timing wheel (fastping.engine.wheel) on integer ticks: no clock, no
event loop, no socket. Every assertion is exact: which slots and targets are due at
which tick, where they go next, when the engine must wake.

The driver below does per tick what ``MonitoringEngine._send_due`` does: send each
due steady group, then take the due attention targets and reschedule them.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

import pytest

from fastping.engine.contracts import SockKey
from fastping.engine.wheel import GOLDEN, Wheel, next_tick, tick_of

V4: SockKey = ("icmp", 2)
V6: SockKey = ("icmp", 10)
TCP4: SockKey = ("tcp", 2)


class Entry:
    """A target as the wheel sees it (engine.target._Target has these and more)."""

    __slots__ = ("name", "slot", "sk", "interval_ticks", "due_tick", "due_exact", "steady")

    def __init__(
        self, name: str, interval_ticks: float, slot: int | None = None, sk: SockKey = V4
    ) -> None:
        self.name = name
        self.slot = slot
        self.sk = sk
        self.interval_ticks = interval_ticks
        self.due_tick = -1
        self.due_exact = 0.0
        self.steady = False

    def __repr__(self) -> str:
        return f"Entry({self.name!r})"


Due = dict[int, list[tuple[SockKey, list[int]] | str]]


def drive(
    w: Wheel[Entry],
    prev: int,
    cur: int,
    factor: float = 1.0,
    attention_step: float | None = None,
    make_steady: Iterable[str] = (),
) -> Due:
    """Ticks prev+1 .. cur as the engine runs them in one wake-up at ``cur``: what was
    sent at each tick (steady groups as (socket, slots), attention targets by name).
    Attention targets are rescheduled by their interval (or ``attention_step``); the
    ones named in ``make_steady`` join a steady group instead."""
    steady_now = set(make_steady)
    out: Due = {}
    for tk in range(prev + 1, cur + 1):
        got: list[tuple[SockKey, list[int]] | str] = []
        for sk, arr in w.pop_steady(tk, cur, factor):
            got.append((sk, sorted(arr)))
        for t in w.pop_attention(tk):
            step = attention_step if attention_step is not None else t.interval_ticks * factor
            w.reschedule(t, max(1.0, step), tk, cur, t.name in steady_now)
            got.append(t.name)
        if got:
            out[tk] = got
    return out


def run(w: Wheel[Entry], ticks: int, start: int = 0, **kw: Any) -> Due:
    """One wake-up per tick, start+1 .. start+ticks."""
    out: Due = {}
    for cur in range(start + 1, start + ticks + 1):
        out.update(drive(w, cur - 1, cur, **kw))
    return out


# --- tick arithmetic ----------------------------------------------------------


def test_tick_of_counts_a_tick_fired_at_its_own_start_as_that_tick() -> None:
    # 0.7 / 0.1 is 6.999999999999999 in floating point: plain int() would say tick 6
    assert int(0.7 / 0.1) == 6
    assert tick_of(0.7, 0.1) == 7
    assert [tick_of(k * 0.02, 0.02) for k in range(0, 2001)] == list(range(0, 2001))
    assert tick_of(0.0399, 0.02) == 1
    assert tick_of(0.04, 0.02) == 2


def test_next_tick_keeps_the_unrounded_phase() -> None:
    assert next_tick(10.0, 5.0, 10, 10) == (15, 15.0)
    # 2.5 ticks: rounded half up, the phase exact: 12.5 -> 13, 15, 17.5 -> 18, 20
    exact, tk, seen = 10.0, 10, []
    for _ in range(4):
        tk, exact = next_tick(exact, 2.5, tk, tk)
        seen.append((tk, exact))
    assert seen == [(13, 12.5), (15, 15.0), (18, 17.5), (20, 20.0)]


def test_next_tick_after_a_stall_skips_rounds_but_keeps_the_phase() -> None:
    # due at 10 every 5 ticks, the loop woke only at 37: next round at 40 (10 mod 5),
    # not at 38 (which would bunch every target into the tick after the stall)
    assert next_tick(10.0, 5.0, 10, 37) == (40, 40.0)
    assert next_tick(7.0, 50.0, 7, 1000) == (1007, 1007.0)
    # a round exactly on the stalled tick's half is still the next one after it
    assert next_tick(0.0, 4.0, 0, 8) == (12, 12.0)
    # never at or before the tick being handled
    assert next_tick(10.0, 0.2, 10, 10) == (11, 10.6)


def test_first_ticks_follow_the_golden_ratio_sequence() -> None:
    w: Wheel[Entry] = Wheel()
    # phase n: after + 1 + int(frac(n * 0.618...) * interval)
    assert [w.first_tick(0, 50.0) for _ in range(5)] == [31, 12, 43, 24, 5]
    assert w.first_tick(100, 50.0) == 100 + 1 + int((6 * GOLDEN) % 1.0 * 50)


def test_first_ticks_spread_200_targets_over_a_25_tick_interval() -> None:
    w: Wheel[Entry] = Wheel()
    per_tick: dict[int, int] = {}
    for _ in range(200):
        tk = w.first_tick(0, 25.0)
        per_tick[tk] = per_tick.get(tk, 0) + 1
    assert sorted(per_tick) == list(range(1, 26))  # every tick of the interval used
    assert sum(per_tick.values()) == 200
    assert max(per_tick.values()) == 9 and min(per_tick.values()) == 7


# --- steady groups -------------------------------------------------------------


def test_steady_slots_go_out_as_one_group_per_socket_and_interval() -> None:
    w: Wheel[Entry] = Wheel()
    a, b = Entry("a", 5.0, slot=0), Entry("b", 5.0, slot=1)
    c = Entry("c", 5.0, slot=0, sk=V6)  # another socket: its own group
    d = Entry("d", 3.0, slot=2)  # another interval: its own group
    for t in (a, b, c):
        w.make_steady(t, 2)
    w.make_steady(d, 2)
    assert all(t.steady and t.due_tick == -1 for t in (a, b, c, d))
    due = run(w, 12)
    assert due == {
        2: [(V4, [0, 1]), (V6, [0]), (V4, [2])],
        5: [(V4, [2])],
        7: [(V4, [0, 1]), (V6, [0])],
        8: [(V4, [2])],
        11: [(V4, [2])],
        12: [(V4, [0, 1]), (V6, [0])],
    }
    assert w.steady_slots(17) == {(V4, 5.0): [0, 1], (V6, 5.0): [0]}
    assert w.steady_slots(14) == {(V4, 3.0): [2]}


def test_a_non_whole_interval_is_exact_on_average() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 2.5, slot=7), 10)
    due = run(w, 30, start=9)
    assert sorted(due) == [10, 13, 15, 18, 20, 23, 25, 28, 30, 33, 35, 38]
    assert len(due) == 12  # 30 ticks / 2.5


def test_groups_landing_on_the_same_tick_merge() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 10.0, slot=0), 5)
    w.make_steady(Entry("b", 10.0, slot=1), 15)  # where a's group goes next
    assert run(w, 25) == {5: [(V4, [0])], 15: [(V4, [0, 1])], 25: [(V4, [0, 1])]}
    assert list(w.steady) == [35]


def test_the_guards_factor_stretches_the_step() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 5.0, slot=3), 10)
    assert drive(w, 9, 10, factor=2.0) == {10: [(V4, [3])]}
    assert list(w.steady) == [20]
    assert drive(w, 10, 20, factor=1.5) == {20: [(V4, [3])]}
    assert w.steady[28][(V4, 5.0)][0] == 27.5  # unrounded: 20 + 7.5, rounded up to 28


def test_a_big_tick_jump_sends_each_group_once_and_keeps_its_phase() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 50.0, slot=0), 7)
    w.make_steady(Entry("b", 50.0, slot=1, sk=TCP4), 30)
    w.schedule(Entry("n", 50.0), 40)  # an attention target: rescheduled by 50 ticks
    # the loop stalled: one wake-up at tick 1000 runs ticks 1..1000
    due = drive(w, 0, 1000)
    assert due == {7: [(V4, [0])], 30: [(TCP4, [1])], 40: ["n"]}
    assert w.steady_slots(1007) == {(V4, 50.0): [0]}
    assert w.steady_slots(1030) == {(TCP4, 50.0): [1]}
    assert list(w.attention) == [1040]
    assert sorted(w.steady) == [1007, 1030]


def test_unsteady_takes_one_slot_out_and_drops_an_empty_group() -> None:
    w: Wheel[Entry] = Wheel()
    a, b = Entry("a", 4.0, slot=0), Entry("b", 4.0, slot=1)
    w.make_steady(a, 3)
    w.make_steady(b, 3)
    run(w, 3)  # both went out at 3 and moved to 7
    w.unsteady(a)
    assert not a.steady
    assert w.steady_slots(7) == {(V4, 4.0): [1]}
    w.unsteady(b)
    assert w.steady == {7: {}}
    assert run(w, 10, start=3) == {}


def test_unsteady_of_a_target_without_a_slot_only_clears_the_flag() -> None:
    w: Wheel[Entry] = Wheel()
    a = Entry("a", 4.0, slot=0)
    w.make_steady(a, 3)
    a.slot = None
    w.unsteady(a)
    assert not a.steady and w.steady_slots(3) == {(V4, 4.0): [0]}


def test_a_slot_leaving_during_the_tick_is_not_moved_with_a_later_group() -> None:
    # as the engine's send of one group can make a target back off (unsteady), the
    # groups of a tick are moved one by one, each when reached
    w: Wheel[Entry] = Wheel()
    a = Entry("a", 5.0, slot=0)
    b = Entry("b", 5.0, slot=4, sk=V6)
    w.make_steady(a, 1)
    w.make_steady(b, 1)
    sent = []
    for sk, arr in w.pop_steady(1, 1, 1.0):
        sent.append((sk, list(arr)))
        if sk == V4:
            w.unsteady(b)  # b's group has not been reached: still at tick 1, popped
    assert sent == [(V4, [0]), (V6, [4])]
    assert w.steady_slots(6) == {(V4, 5.0): [0], (V6, 5.0): [4]}


def test_make_steady_needs_a_slot() -> None:
    w: Wheel[Entry] = Wheel()
    with pytest.raises(AssertionError):
        w.make_steady(Entry("a", 5.0), 1)


# --- attention targets -----------------------------------------------------------


def test_attention_targets_are_due_one_by_one_and_rescheduled() -> None:
    w: Wheel[Entry] = Wheel()
    n, m = Entry("n", 4.0), Entry("m", 6.0)
    w.schedule(n, 2)
    w.schedule(m, 2)
    assert (n.due_tick, n.due_exact) == (2, 2.0)
    # in the order they were placed: m went to 14 at tick 8, n at tick 10
    assert run(w, 14) == {2: ["n", "m"], 6: ["n"], 8: ["m"], 10: ["n"], 14: ["m", "n"]}


def test_an_attention_target_keeps_its_exact_phase() -> None:
    w: Wheel[Entry] = Wheel()
    t = Entry("t", 1.5)
    w.schedule(t, 3, exact=2.5)  # as the engine places a rescheduled one: rounded up
    assert run(w, 9) == {3: ["t"], 4: ["t"], 6: ["t"], 7: ["t"], 9: ["t"]}
    assert (t.due_tick, t.due_exact) == (10, 10.0)


def test_rescheduling_and_removal_leave_stale_entries_that_are_skipped() -> None:
    w: Wheel[Entry] = Wheel()
    t, u = Entry("t", 5.0), Entry("u", 5.0)
    w.schedule(t, 3)
    w.schedule(t, 8)  # backed off: its entry at 3 is stale
    w.schedule(u, 3)
    w.remove(u)  # removed: its entry at 3 is stale
    assert u.due_tick == -1
    assert sorted(w.attention) == [3, 8]  # stale entries stay until their tick
    assert run(w, 12) == {8: ["t"]}
    assert 3 not in w.attention


def test_remove_takes_a_steady_target_out_of_its_group() -> None:
    w: Wheel[Entry] = Wheel()
    a, b = Entry("a", 5.0, slot=0), Entry("b", 5.0, slot=1)
    w.make_steady(a, 2)
    w.make_steady(b, 2)
    w.remove(a)
    assert not a.steady and a.due_tick == -1
    assert run(w, 7) == {2: [(V4, [1])], 7: [(V4, [1])]}


def test_an_attention_target_becomes_steady_at_its_next_round() -> None:
    w: Wheel[Entry] = Wheel()
    t = Entry("t", 4.0)
    w.schedule(t, 2)
    assert drive(w, 0, 2) == {2: ["t"]}  # not attached yet: stays on the attention wheel
    t.slot = 9  # attached meanwhile
    assert drive(w, 2, 6, make_steady={"t"}) == {6: ["t"]}
    assert t.steady and t.due_tick == -1
    assert w.steady_slots(10) == {(V4, 4.0): [9]}
    assert run(w, 8, start=6) == {10: [(V4, [9])], 14: [(V4, [9])]}


def test_a_steady_target_sent_back_to_attention_leaves_its_group() -> None:
    # backing off: the engine takes the slot out (unsteady) and schedules the target
    w: Wheel[Entry] = Wheel()
    t = Entry("t", 2.0, slot=5)
    w.make_steady(t, 1)
    assert run(w, 3) == {1: [(V4, [5])], 3: [(V4, [5])]}
    w.unsteady(t)
    w.schedule(t, 10)
    assert run(w, 12, start=3, attention_step=8.0) == {10: ["t"]}
    assert (t.due_tick, t.due_exact) == (18, 18.0)


def test_an_entry_made_steady_while_due_on_the_attention_wheel_is_skipped() -> None:
    w: Wheel[Entry] = Wheel()
    t = Entry("t", 3.0, slot=1)
    w.schedule(t, 4)
    w.make_steady(t, 4)  # attached at once: steady from the same tick
    assert drive(w, 3, 4) == {4: [(V4, [1])]}


# --- waking ----------------------------------------------------------------------


def test_schedule_and_make_steady_tell_the_engine_when_to_wake() -> None:
    woken: list[int] = []
    w: Wheel[Entry] = Wheel(woken.append)
    w.schedule(Entry("a", 5.0), 7)
    w.make_steady(Entry("b", 5.0, slot=0), 3)
    w.reschedule(Entry("c", 5.0), 5.0, 3, 3, False)  # due_exact 0 + 5 -> tick 5
    assert woken == [7, 3, 5]


def test_next_wake_when_busy_does_not_ask_for_the_deadlines() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 1.0, slot=0), 6)

    def no_deadlines() -> list[int]:
        raise AssertionError("asked although a probe is due at the next tick")

    assert w.next_wake(5, no_deadlines, 50) == 6
    w2: Wheel[Entry] = Wheel()
    w2.schedule(Entry("n", 1.0), 6)
    assert w2.next_wake(5, no_deadlines, 50) == 6


def test_next_wake_sleeps_through_empty_ticks() -> None:
    w: Wheel[Entry] = Wheel()
    assert w.next_wake(5, list, 50) == 55  # nothing at all: look again in idle_ticks
    assert w.next_wake(5, lambda: [9], 50) == 9  # a deadline (expiry, log hand-over)
    assert w.next_wake(5, lambda: [2], 50) == 6  # a deadline already past: next tick
    w.make_steady(Entry("a", 100.0, slot=0), 40)
    w.schedule(Entry("n", 100.0), 30)
    assert w.next_wake(5, list, 50) == 30
    assert w.next_wake(5, lambda: [12, 80], 50) == 12
    # a stale attention entry still wakes the loop (it is found stale then): cheap
    w.remove(w.attention[30][0])
    assert w.next_wake(5, list, 50) == 30
    assert drive(w, 5, 30) == {}
    assert w.next_wake(30, list, 50) == 40


def test_next_wake_after_a_big_jump() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 50.0, slot=0), 7)
    drive(w, 0, 1000)
    assert w.next_wake(1000, list, 50) == 1007


def test_clear_empties_both_wheels() -> None:
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 5.0, slot=0), 2)
    w.schedule(Entry("n", 5.0), 3)
    w.clear()
    assert w.steady == {} and w.attention == {}
    assert w.next_wake(0, list, 50) == 50


def test_slot_arrays_are_unsigned_int_arrays() -> None:
    # the core's send() takes the group's array itself (no copy, no list)
    w: Wheel[Entry] = Wheel()
    w.make_steady(Entry("a", 5.0, slot=70000), 2)
    ((sk, arr),) = list(w.pop_steady(2, 2, 1.0))
    assert sk == V4 and isinstance(arr, array) and arr.typecode == "I"
    assert list(arr) == [70000]
