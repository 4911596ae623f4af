"""The engine's timing wheel, on integer ticks and nothing else: no clock, no event
loop. The engine turns its loop's time into ticks (``tick_of``) and ticks into
timer deadlines; everything here is exact integer (and unrounded-phase) arithmetic,
so ``tests/test_wheel.py`` drives it tick by tick with exact assertions.

Two kinds of entries (see the engine's docstring, "Slot arrays"):

* **Steady** targets (attached, not backing off) are only a slot number in an
  ``array('I')`` of a *group*: ``steady[tick][(sock_key, interval_ticks)] =
  [exact_tick, slots]``. ``pop_steady(tk, ...)`` hands each due group out for one
  ``sock.send`` and moves it, whole, to the tick of its next round: no Python per
  probe.
* **Attention** targets (name not resolved, no socket, backing off) sit one by one on
  ``attention[tick]``; ``pop_attention(tk)`` yields the ones due. An entry whose
  target was rescheduled or removed meanwhile is stale (its ``due_tick`` moved on)
  and skipped: removing is O(1).

Rescheduling keeps the unrounded phase (``next = exact + step``), so an interval
that is not a whole number of ticks is exact on average and a stalled loop skips
rounds without piling every target into one tick (``next_tick``).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from .contracts import SockKey

GOLDEN = 0.6180339887498949  # first-probe phases: i * GOLDEN mod 1 spreads any count evenly

# a group of steady slots: [unrounded tick of its next round, slots]
SlotGroup = list[Any]  # [float, array[int]]: a list, so the tick is updated in place
GroupKey = tuple[SockKey, float]  # (socket, interval in ticks)


class WheelEntry(Protocol):
    """What the wheel reads and writes of a target (``engine.target._Target``)."""

    slot: int | None
    sk: SockKey
    interval_ticks: float  # its interval / the tick, unrounded
    due_tick: int  # the attention tick it is due at; -1: not on the attention wheel
    due_exact: float  # that tick, unrounded
    steady: bool  # its slot is in a steady group


E = TypeVar("E", bound=WheelEntry)


def tick_of(elapsed_s: float, tick_s: float) -> int:
    """The tick ``elapsed_s`` falls in. A tick fired at its own start time must count as
    that tick: asyncio runs a timer up to its clock's resolution early, and
    ``k * tick_s / tick_s`` may come out a hair below ``k`` in floating point, which
    would make the engine re-arm the same tick at once (a clock that stands still,
    as a test's virtual one, would then never leave it)."""
    return int(elapsed_s / tick_s + 1e-6)


def next_tick(exact: float, step: float, tk: int, cur: int) -> tuple[int, float]:
    """The tick after ``tk`` for a probe ``step`` ticks after the unrounded ``exact``
    (ticks are rounded, the phase is kept unrounded so an interval that is not a
    whole number of ticks is exact on average), and its unrounded tick. When the loop
    stalled past it (``cur``, the tick now), the missed rounds are skipped but the
    phase is kept: otherwise every target would pile into one tick and go out in one
    burst from then on."""
    exact += step
    if exact < cur + 0.5:
        exact += (int((cur + 0.5 - exact) / step) + 1) * step
    # rounded half up, with the same millionth of a tick as tick_of: a phase that
    # sits on a half tick must not fall on either side by floating-point noise (an
    # interval of a whole number of ticks would come out as alternating gaps)
    return max(tk + 1, int(exact + 0.5 + 1e-6)), exact


def _no_wake(tick: int) -> None:
    pass


class Wheel(Generic[E]):
    """Steady slot groups and attention entries by tick. ``wake(tick)`` is called
    whenever something is placed at ``tick`` (the engine re-arms its timer when that
    is earlier than the one armed)."""

    __slots__ = ("steady", "attention", "wake", "_phase_n")

    def __init__(self, wake: Callable[[int], None] | None = None) -> None:
        self.steady: dict[int, dict[GroupKey, SlotGroup]] = {}
        self.attention: dict[int, list[E]] = {}
        self.wake = wake if wake is not None else _no_wake
        self._phase_n = 0

    def first_tick(self, after: int, interval_ticks: float) -> int:
        """The tick of a new target's first probe, after tick ``after``: the next phase
        of the golden-ratio sequence, as a fraction of its interval."""
        self._phase_n += 1
        frac = (self._phase_n * GOLDEN) % 1.0
        return after + 1 + int(frac * interval_ticks)

    def schedule(self, t: E, tick: int, exact: float | None = None) -> None:
        """Put ``t`` on the attention wheel at ``tick`` (unrounded: ``exact``). An
        earlier entry of ``t`` becomes stale."""
        t.due_tick = tick
        t.due_exact = float(tick) if exact is None else exact
        self.wake(tick)
        b = self.attention.get(tick)
        if b is None:
            self.attention[tick] = [t]
        else:
            b.append(t)

    def make_steady(self, t: E, tick: int) -> None:
        """Put ``t``'s slot in the slot group of ``tick`` (it leaves the attention
        wheel)."""
        assert t.slot is not None
        t.steady = True
        t.due_tick = -1  # its entries on the attention wheel, if any, are stale now
        self.wake(tick)
        groups = self.steady.get(tick)
        if groups is None:
            groups = self.steady[tick] = {}
        key = (t.sk, t.interval_ticks)
        grp = groups.get(key)
        if grp is None:
            groups[key] = [float(tick), array("I", (t.slot,))]
        else:
            grp[1].append(t.slot)

    def unsteady(self, t: E) -> None:
        """Take ``t``'s slot out of its slot group. A scan of every group, in C:
        removals are rare."""
        t.steady = False
        slot = t.slot
        if slot is None:
            return
        key = (t.sk, t.interval_ticks)
        for groups in self.steady.values():
            grp = groups.get(key)
            if grp is not None and slot in grp[1]:
                grp[1].remove(slot)
                if not grp[1]:
                    del groups[key]
                return

    def remove(self, t: E) -> None:
        """``t`` is due nowhere any more (its attention entries turn stale)."""
        t.due_tick = -1
        if t.steady:
            self.unsteady(t)

    def clear(self) -> None:
        self.steady.clear()
        self.attention.clear()

    def pop_steady(self, tk: int, cur: int, factor: float) -> Iterator[tuple[SockKey, array[int]]]:
        """The steady groups due at ``tk``, as (socket, slots) to send, each moved to
        the tick of its next round first: ``interval_ticks x factor`` (the resource
        guard's stretch) after its unrounded tick, past ``cur`` (the tick now). Lazy:
        a group is moved when it is reached, so what the send of one group changes
        (a slot backing off leaves its group) is seen by the next."""
        steady = self.steady
        groups = steady.pop(tk, None)
        if not groups:
            return
        for key, grp in groups.items():
            arr = grp[1]
            nt, grp[0] = next_tick(grp[0], max(1.0, key[1] * factor), tk, cur)
            dest = steady.get(nt)
            if dest is None:
                dest = steady[nt] = {}
            have = dest.get(key)
            if have is None:
                dest[key] = grp
            else:
                have[1].extend(arr)
            yield key[0], arr

    def pop_attention(self, tk: int) -> Iterator[E]:
        """The attention targets due at ``tk`` (stale entries skipped: checked as each
        is reached, so handling one target may make a later entry stale). Each must
        be rescheduled (``reschedule``) or it is due nowhere."""
        bucket = self.attention.pop(tk, None)
        if not bucket:
            return
        for t in bucket:
            if t.due_tick == tk and not t.steady:
                yield t

    def reschedule(self, t: E, step: float, tk: int, cur: int, steady: bool) -> None:
        """``t``, due at ``tk``, to its next round ``step`` ticks on (``next_tick``): in
        a steady group when ``steady``, else on the attention wheel."""
        nt, exact = next_tick(t.due_exact, step, tk, cur)
        if steady:
            self.make_steady(t, nt)
        else:
            self.schedule(t, nt, exact)

    def next_wake(self, cur: int, deadlines: Callable[[], Iterable[int]], idle_ticks: int) -> int:
        """The next tick with work after ``cur``: probes due, or one of the engine's
        ``deadlines()`` (expiry, log hand-over; asked only when no probe is due at
        ``cur + 1``, the busy case); ``cur + idle_ticks`` when there is nothing at all.
        Empty ticks are slept through: each wake-up costs CPU."""
        nxt = cur + 1
        steady = self.steady
        attention = self.attention
        if nxt in steady or nxt in attention:
            return nxt  # the busy case (every tick has probes): no search
        cands = list(deadlines())
        if steady:
            cands.append(min(steady))
        if attention:
            cands.append(min(attention))
        if not cands:
            return cur + idle_ticks
        return max(nxt, min(cands))

    def steady_slots(self, tick: int) -> dict[GroupKey, list[int]]:
        """The slots of each steady group at ``tick`` (for tests and debugging)."""
        return {k: list(g[1]) for k, g in self.steady.get(tick, {}).items()}
