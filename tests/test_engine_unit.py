"""Engine scheduling logic against a fake socket (no privilege, no network).

The same behaviours are checked against the real core on loopback in test_engine.py;
these pin down timing, backoff and queueing exactly, which real sockets cannot.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import Counter
from typing import Any

import pytest

from engine_fakes import CaptureLog, FakeFactory, FakeNetwork, ListStore, run_virtual
from fastping.engine import (
    MonitoringEngine,
    ResultEvent,
    StateChanged,
    TargetAdded,
    TargetRemoved,
)
from fastping.errors import ConfigError, TargetError
from fastping.guard import ResourceGuard
from fastping.results import OUTCOME_BY_KIND, Outcome

NO_GUARD = ResourceGuard(None, None)


def make(
    targets: list[str] | tuple[str, ...] = (),
    factory: FakeFactory | None = None,
    **kw: Any,
) -> tuple[MonitoringEngine, FakeFactory, ListStore, CaptureLog]:
    factory = factory or FakeFactory()
    store = ListStore()
    log = CaptureLog()
    kw.setdefault("guard", ResourceGuard(None, None))
    eng = MonitoringEngine(targets, store=store, socket_factory=factory, logger=log, **kw)
    return eng, factory, store, log


def test_event_kinds_match_outcome_table() -> None:
    from fastping import engine

    assert OUTCOME_BY_KIND[engine.EV_REPLY] is Outcome.REPLY
    assert OUTCOME_BY_KIND[engine.EV_TIMEOUT] is Outcome.TIMEOUT
    assert OUTCOME_BY_KIND[engine.EV_SEND_ERROR] is Outcome.SEND_ERROR
    assert OUTCOME_BY_KIND[engine.EV_LATE] is Outcome.LATE
    try:
        from fastping import _icmp
    except ImportError:
        pytest.skip("core not built yet")
    assert (_icmp.EV_REPLY, _icmp.EV_TIMEOUT, _icmp.EV_SEND_ERROR, _icmp.EV_LATE) == (
        engine.EV_REPLY,
        engine.EV_TIMEOUT,
        engine.EV_SEND_ERROR,
        engine.EV_LATE,
    )


def test_probes_are_spread_over_the_interval_not_burst() -> None:
    hosts = [f"127.0.1.{i}" for i in range(1, 201)]
    eng, fac, store, _ = make(hosts, interval_s=0.5, timeout_s=0.2)

    async def main() -> None:
        await eng.run(1.02, handle_signals=False)

    run_virtual(main())
    batches = fac.v4.send_batches
    # 200 targets over the 25 ticks (of 20 ms) of the interval: ~8 a tick; a burst
    # would be 200 at once
    # (a virtual clock: 1.02 s is ticks 0..50, exactly)
    assert eng.tick_s == 0.02
    assert len(batches) == 51
    assert max(batches) <= 9, batches  # 200 / 25 ticks, one more where phases round
    # every target at its phase p in ticks 0..24 and again 25 and 50 ticks later: the 8
    # of phase 0 get a third probe at tick 50
    assert sum(batches) == 2 * 200 + 8
    # each target got its probes, and every probe has its result
    per = Counter(r.target for r in store.results)
    assert set(per) == set(hosts)
    assert sorted(Counter(per.values()).items()) == [(2, 192), (3, 8)], per
    assert len(store.results) == sum(batches)
    assert all(
        r.outcome is Outcome.REPLY and r.rtt_ms == pytest.approx(0.04) for r in store.results
    )


def test_each_target_on_its_own_interval() -> None:
    eng, fac, store, _ = make(interval_s=1.0, min_interval_s=0.05, timeout_s=0.2)
    eng.add_target("127.0.0.2", interval_s=0.05)
    eng.add_target("127.0.0.3", interval_s=0.5)
    eng.add_target("127.0.0.4")  # engine default: 1 s

    # on a virtual clock: the schedule is exact whatever the machine's load
    run_virtual(eng.run(1.55, handle_signals=False))
    n = Counter(r.target for r in store.results)
    assert n["127.0.0.2"] == 31, n  # 1.55 s / 50 ms, from its phase in the first interval
    assert n["127.0.0.3"] == 3, n
    assert n["127.0.0.4"] == 1, n
    # the socket window is sized from the shortest interval: ceil(0.2/0.05)+1
    assert fac.v4.window == 5
    # phase is kept: 50 ms is 2.5 ticks of 20 ms, so the gaps are 2 and 3 ticks in turn
    times = [t for t, a in fac.v4.sends if a == "127.0.0.2"]
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]
    assert set(gaps) == {0.04, 0.06}, gaps
    assert all(a != b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert abs((times[-1] - times[0]) / len(gaps) - 0.05) <= 0.02 / len(gaps)


def test_interval_shorter_than_window_allows_is_refused() -> None:
    eng, *_ = make(interval_s=1.0)
    with pytest.raises(TargetError, match="min_interval_s"):
        eng.add_target("127.0.0.2", interval_s=0.1)
    with pytest.raises(TargetError, match="already being watched"):
        eng.add_target("127.0.0.5")
        eng.add_target("127.0.0.5")
    eng.add_target("127.0.0.0/30")  # a block: its addresses, as fastping monitor does
    assert {"127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3"} <= set(eng._targets)
    with pytest.raises(TargetError, match="'127.0.0.5' is already being watched"):
        eng.add_target("127.0.0.4-6")
    assert "127.0.0.4" not in eng._targets  # all or nothing
    eng.remove_target("127.0.0.0/30")
    assert "127.0.0.2" not in eng._targets
    with pytest.raises(TargetError, match="not an IPv4/IPv6 address"):
        eng.add_target("bad host!")
    with pytest.raises(TargetError, match="not being watched"):
        eng.remove_target("127.9.9.9")
    with pytest.raises(ConfigError, match="subprocess"):
        MonitoringEngine(mode="subprocess")
    with pytest.raises(ConfigError, match="give seconds between 0.001 and 86400"):
        MonitoringEngine(interval_s=0)


def test_add_and_remove_while_running_with_events() -> None:
    eng, fac, store, _ = make(["127.0.0.2"], interval_s=0.05, timeout_s=0.1)
    seen: list[Any] = []

    async def main() -> None:
        sub = eng.subscribe(maxsize=100_000)

        async def reader() -> None:
            async for ev in sub:
                seen.append(ev)

        rt = asyncio.create_task(reader())
        await eng.start()
        await asyncio.sleep(0.3)
        eng.add_target("127.0.0.3", labels={"site": "a"})
        await asyncio.sleep(0.3)
        eng.remove_target("127.0.0.2")
        removed_at = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)
        await eng.stop()
        await asyncio.wait_for(rt, 1)  # iteration ends when the engine stops
        sends_after = [t for t, a in fac.v4.sends if a == "127.0.0.2" and t > removed_at]
        assert sends_after == []

    run_virtual(main())
    n = Counter(r.target for r in store.results)
    # on the virtual clock: 0.6 s of 50 ms probes each, .2 before its removal and .3
    # from its addition to the stop
    assert n["127.0.0.2"] == 12, n
    assert n["127.0.0.3"] == 12, n
    added = [e for e in seen if isinstance(e, TargetAdded)]
    # a subscriber from before start() also hears of the initial targets
    assert [e.target for e in added] == ["127.0.0.2", "127.0.0.3"]
    assert added[1].labels == {"site": "a"}
    assert [e.target for e in seen if isinstance(e, TargetRemoved)] == ["127.0.0.2"]
    ups = [e for e in seen if isinstance(e, StateChanged) and e.new == "up"]
    assert {e.target for e in ups} == {"127.0.0.2", "127.0.0.3"}
    results = [e.result for e in seen if isinstance(e, ResultEvent)]
    assert len(results) == len(store.results)
    assert eng.stats()["results"] == len(store.results)
    # the removed target's slot was given back to the socket after its linger
    assert fac.v4.removed == [0]


def test_slow_subscriber_loses_oldest_and_does_not_slow_probing() -> None:
    hosts = [f"127.0.2.{i}" for i in range(1, 101)]

    async def both() -> tuple[int, int, Any]:
        # side by side in one loop, so machine load hits both engines alike
        eng1, _, store1, _ = make(hosts, interval_s=0.1, timeout_s=0.1)
        eng2, _, store2, _ = make(hosts, interval_s=0.1, timeout_s=0.1)
        sub = eng2.subscribe(maxsize=50)
        await asyncio.gather(eng1.run(1.0, handle_signals=False),
                             eng2.run(1.0, handle_signals=False))  # fmt: skip
        return len(store1.results), len(store2.results), sub

    # a virtual clock: the engines keep their schedule exactly, so any difference is the
    # subscriber's doing
    n_without, n_with, sub = run_virtual(both())
    assert n_with == n_without == 1000, (n_with, n_without)
    assert len(sub) == 50
    # everything beyond its 50 slots was counted as dropped, oldest first
    assert sub.dropped >= n_with - 50
    last = [e for e in sub.drain() if isinstance(e, ResultEvent)]
    assert last  # the newest events are the ones kept


def test_subscriber_drops_are_in_stats() -> None:
    eng, fac, store, _ = make(["127.0.0.2"], interval_s=0.05, timeout_s=0.1)

    async def main() -> dict[str, Any]:
        sub = eng.subscribe(maxsize=2)
        await eng.start()
        await asyncio.sleep(0.4)
        st = eng.stats()
        assert st["subscriber_dropped"] == sub.dropped > 0
        await eng.stop()
        return st

    st = run_virtual(main())
    assert st["subscribers"] == 1


def test_timeouts_and_every_sent_probe_has_a_result_at_stop() -> None:
    fac = FakeFactory(dead={"127.0.0.9"})
    eng, fac, store, _ = make(["127.0.0.9", "127.0.0.2"], fac, interval_s=0.1, timeout_s=0.25)
    run_virtual(eng.run(0.6, handle_signals=False))
    dead = store.of("127.0.0.9")
    sent_dead = sum(1 for _, a in fac.v4.sends if a == "127.0.0.9")
    assert sent_dead == 6  # 0.6 s / 100 ms (virtual clock)
    assert len(dead) == sent_dead  # the ones in flight at stop were waited for
    assert all(r.outcome is Outcome.TIMEOUT and r.rtt_ms is None for r in dead)
    assert len(store.results) == len(fac.v4.sends) == eng.stats()["sent"]
    assert eng.stats()["outstanding"] == 0
    assert eng.target("127.0.0.9").status == "down"
    assert eng.target("127.0.0.9").loss == 1.0
    assert eng.target("127.0.0.2").loss == 0.0


def test_backoff_doubles_to_the_cap_and_resets_on_success() -> None:
    fac = FakeFactory(refuse={"127.0.0.7"}, refuse_errno=errno.ENETUNREACH)
    eng, fac, store, log = make(
        ["127.0.0.7"],
        fac,
        interval_s=0.02,
        min_interval_s=0.02,
        timeout_s=0.1,
        max_backoff_s=0.16,
    )

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(1.3)
        # the path heals: the next probe succeeds and the backoff resets
        fac.v4.refuse.clear()
        await asyncio.sleep(0.5)
        await eng.stop()

    run_virtual(main())  # a virtual clock: the backoff's delays exactly, whatever the load
    times = [t for t, a in fac.v4.sends if a == "127.0.0.7"]
    errs = [r for r in store.results if r.outcome is Outcome.SEND_ERROR]
    assert all(r.errno == errno.ENETUNREACH for r in errs)
    # without backoff 1.3 s / 20 ms = 65 probes; with it: 3 at the interval, then the
    # delay doubles (40, 80 ms) up to the 160 ms cap
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]
    assert len(errs) == 12, len(errs)
    assert gaps[:11] == [0.02, 0.02, 0.04, 0.08] + [0.16] * 7, gaps
    # after healing: back to a probe every 20 ms at once (reset on success)
    ok = [r for r in store.results if r.outcome is Outcome.REPLY]
    assert set(gaps[12:]) == {0.02}, gaps
    assert len(ok) == len(times) - 12 >= 15, len(ok)
    assert eng.target("127.0.0.7").consecutive_errors == 0
    assert any("backing off" in m for m in log.messages("warning"))


def test_unavailable_socket_family_is_a_send_error_not_a_crash() -> None:
    fac = FakeFactory()
    fac.fail[socket.AF_INET6] = OSError(errno.EAFNOSUPPORT, "Address family not supported")
    eng, fac, store, log = make(["127.0.0.2", "::1"], fac, interval_s=0.05, timeout_s=0.1)
    run_virtual(eng.run(0.5, handle_signals=False))
    v6 = store.of("::1")
    assert v6 and all(r.outcome is Outcome.SEND_ERROR for r in v6)
    assert v6[0].errno == errno.EAFNOSUPPORT
    print("V6", len(v6), len(store.of("127.0.0.2")))
    assert len(v6) == 5  # 3 at the interval, then backed off (10 would be every 50 ms)
    assert len(store.of("127.0.0.2")) == 10  # 0.5 s / 50 ms
    assert any("IPv6" in m for m in log.messages("error"))


def test_resolve_error_is_a_result_and_names_reresolve() -> None:
    calls: Counter[str] = Counter()
    answers = {"good.test": [(socket.AF_INET, "127.0.0.11")]}

    async def resolver(host: str, family: int) -> list[tuple[int, str]]:
        calls[host] += 1
        await asyncio.sleep(0)
        if host in answers:
            return answers[host]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    eng, fac, store, _ = make(
        ["good.test", "bad.test"],
        interval_s=0.05,
        timeout_s=0.1,
        resolver=resolver,
        resolve_interval_s=0.3,
        max_backoff_s=0.2,
    )

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.45)
        answers["good.test"] = [(socket.AF_INET, "127.0.0.12")]  # the record changed
        await asyncio.sleep(0.7)
        await eng.stop()

    run_virtual(main())
    bad = store.of("bad.test")
    assert bad and all(r.outcome is Outcome.RESOLVE_ERROR and r.address is None for r in bad)
    assert bad[0].errno == socket.EAI_NONAME
    assert len(bad) == 8  # backed off to 0.2 s, not once per 50 ms (23 in 1.15 s)
    good = store.of("good.test")
    addrs = [r.address for r in good]
    assert addrs[0] == "127.0.0.11" and addrs[-1] == "127.0.0.12"
    assert all(r.outcome is Outcome.REPLY for r in good)
    assert calls["good.test"] >= 2  # re-resolved on its interval
    assert eng.stats()["outcomes"]["resolve_error"] == len(bad)
    assert eng.target("bad.test").status == "error"


def test_network_down_records_local_down_not_loss() -> None:
    net = FakeNetwork()
    fac = FakeFactory(dead={"127.0.0.9"})
    eng, fac, store, log = make(
        ["127.0.0.2", "127.0.0.9"], fac, interval_s=0.05, timeout_s=0.3, network=net
    )
    sub = eng.subscribe(maxsize=10_000)

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.3)
        net.state = net._S("DOWN")
        down_at = asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)
        up_at = asyncio.get_running_loop().time()
        net.state = net._S("UP")
        await asyncio.sleep(0.3)
        await eng.stop()
        sent_while_down = [t for t, _ in fac.v4.sends if down_at + 0.011 < t < up_at - 0.011]
        assert sent_while_down == []

    run_virtual(main())
    ld = [r for r in store.results if r.outcome is Outcome.LOCAL_DOWN]
    # 0.5 s down: 10 probes of each target, plus the dead one's 6 in flight (0.3 s timeout)
    assert len(ld) == 26
    assert {r.target for r in ld} == {"127.0.0.2", "127.0.0.9"}
    # the dead target's probes in flight when the network went down: local_down too
    assert eng.stats()["outcomes"]["local_down"] == len(ld)
    evs = [e for e in sub.drain() if isinstance(e, StateChanged) and e.what == "network"]
    assert [(e.old, e.new) for e in evs] == [("up", "down"), ("down", "up")]
    assert any("network is down" in m for m in log.messages("warning"))
    # probing resumed
    assert store.results[-1].outcome is not Outcome.LOCAL_DOWN


def test_quiet_mode_replies_reach_the_store_through_the_core_log() -> None:
    hosts = [f"127.0.3.{i}" for i in range(1, 51)]
    eng, fac, store, _ = make(hosts, interval_s=0.05, timeout_s=0.2, store_flush_s=0.1)
    seen_mid_run: list[int] = []

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.45)
        seen_mid_run.append(len(store.results))  # chunks arrive while running
        await asyncio.sleep(0.3)
        await eng.stop()

    run_virtual(main())
    sock = fac.v4
    assert sock.mode_history == [1]  # no subscriber: quiet from the start
    sent = eng.stats()["sent"]
    assert sent >= 50 * 10
    # every probe has exactly one stored result, and they came packed from the log
    assert len(store.results) == sent == eng.stats()["results"]
    # float32 on disk: 7 significant digits
    assert all(
        r.outcome is Outcome.REPLY and r.rtt_ms == pytest.approx(0.04) for r in store.results
    )
    assert store.chunks >= 50 * 3 and eng.stats()["log_records"] == sent
    assert seen_mid_run[0] >= 50 * 3
    # the engine saw each target's first reply only: no per-probe Python work
    assert sock.returned == 50
    info = eng.target("127.0.3.7")
    assert info.status == "up" and info.probes >= 10 and info.loss == 0.0
    assert info.last_rtt_ms == 0.04


def test_subscribers_switch_the_core_to_every_event_without_storing_twice() -> None:
    eng, fac, store, _ = make(["127.0.0.2", "127.0.0.3"], interval_s=0.05, timeout_s=0.2)
    got: list[int] = []

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.2)
        sub = eng.subscribe(maxsize=10_000)
        await asyncio.sleep(0.3)
        got.append(sum(isinstance(e, ResultEvent) for e in sub.drain()))
        sub.close()
        await asyncio.sleep(0.2)
        await eng.stop()

    run_virtual(main())
    assert fac.v4.mode_history == [1, 2, 1]
    assert got[0] >= 2 * 5  # every result while subscribed
    assert len(store.results) == eng.stats()["sent"]  # and each stored once


def test_network_down_in_quiet_mode_turns_the_log_off_and_states_recover() -> None:
    net = FakeNetwork()
    fac = FakeFactory(dead={"127.0.0.9"})
    eng, fac, store, _ = make(
        ["127.0.0.2", "127.0.0.9"], fac, interval_s=0.05, timeout_s=0.2, network=net
    )
    states: list[str] = []

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.3)
        net.state = net._S("DOWN")
        await asyncio.sleep(0.4)
        states.append(eng.target("127.0.0.2").status)
        net.state = net._S("UP")
        await asyncio.sleep(0.5)
        await eng.stop()

    run_virtual(main())
    assert fac.v4.mode_history == [1, 0, 1]
    assert states == ["local_down"]
    # back up: each target's next outcome came through again (forget_last)
    assert eng.target("127.0.0.2").status == "up"
    assert eng.target("127.0.0.9").status == "down"
    ld = [r for r in store.results if r.outcome is Outcome.LOCAL_DOWN]
    assert len(ld) >= 8 and eng.stats()["outcomes"]["local_down"] == len(ld)
    # every outcome is stored exactly once, whichever way it went
    assert len(store.results) == eng.stats()["results"]


def test_guard_update_throttles_and_recovers_with_hysteresis() -> None:
    log = CaptureLog()
    g = ResourceGuard(5.0, 100.0, check_interval_s=1, max_factor=8, logger=log)
    assert g.update(1.0, 50) == 1.0
    assert g.update(7.0, 50) == 2.0
    assert g.update(9.0, 50) == 4.0
    assert g.update(3.0, 150) == 8.0  # memory over
    assert g.update(3.0, 150) == 8.0  # capped
    assert g.update(3.0, 50) == 8.0  # 2 x 3 % > 90 % of 5 %: would overshoot, stay
    assert g.update(2.0, 50) == 4.0
    assert g.update(2.0, 95) == 4.0  # memory not comfortably under (90 MB)
    assert g.update(1.0, 80) == 2.0
    assert g.update(1.0, 80) == 1.0
    warns = log.messages("warning")
    assert "slowing probing: intervals x2" in warns[0] and "CPU 7.0% > 5%" in warns[0]
    assert "memory 150 MB > 100 MB" in warns[2]
    assert "slowest allowed" in warns[3]
    assert len(log.messages("info")) == 3
    with pytest.raises(ConfigError, match="positive"):
        ResourceGuard(-1, 100)
    off = ResourceGuard(None, 0)
    assert not off.enabled and off.update(500, 5000) == 1.0


def test_guard_with_tiny_limits_slows_the_engine_and_says_so() -> None:
    hosts = [f"127.0.3.{i}" for i in range(1, 51)]
    log = CaptureLog()
    guard = ResourceGuard(0.0001, 1, check_interval_s=0.2, max_factor=8)
    eng, fac, store, log = make(hosts, interval_s=0.05, timeout_s=0.1, guard=guard)
    free, *_ = make(hosts, interval_s=0.05, timeout_s=0.1)

    run_virtual(eng.run(1.5, handle_signals=False))
    run_virtual(free.run(1.5, handle_signals=False))
    throttled_n = eng.stats()["sent"]
    free_n = free.stats()["sent"]
    assert guard.factor == 8.0
    assert throttled_n < 0.5 * free_n, (throttled_n, free_n)
    assert any("slowing probing" in m for m in log.messages("warning"))
    assert eng.stats()["guard"]["throttle_steps"] == 3


def test_a_stalled_loop_does_not_collapse_the_phases() -> None:
    hosts = [f"127.0.7.{i}" for i in range(1, 101)]
    eng, fac, store, _ = make(hosts, interval_s=0.1, timeout_s=0.1)

    async def main() -> int:
        await eng.start()
        await asyncio.sleep(0.3)
        time.sleep(0.35)  # block the loop for 3.5 intervals
        mark = len(fac.v4.send_batches)
        await asyncio.sleep(0.5)
        await eng.stop()
        return mark

    mark = run_virtual(main())
    after = fac.v4.send_batches[mark + 1 :]  # the first batch after the stall is the catch-up
    # 100 targets over 10 ticks: ~10 a tick; collapsed phases would be 100 at once
    assert after and max(after) <= 25, after
    assert max(fac.v4.send_batches[mark : mark + 1]) <= 100  # each target at most once


def test_per_target_timeout_makes_slow_replies_timeouts_plus_late() -> None:
    fac = FakeFactory(rtt_ns=80_000_000)  # every reply takes 80 ms
    eng, fac, store, _ = make(interval_s=0.1, timeout_s=0.2, max_timeout_s=0.5, factory=fac)
    eng.add_target("127.0.0.2", timeout_s=0.05)  # shorter than the RTT: timeouts
    eng.add_target("127.0.0.3")  # the engine's 0.2 s: replies
    with pytest.raises(TargetError, match="max_timeout_s"):
        eng.add_target("127.0.0.4", timeout_s=1.0)
    run_virtual(eng.run(0.5, handle_signals=False))
    short = store.of("127.0.0.2")
    # each probe timed out at the target's own timeout; its reply came later and is
    # an extra event (late, with its RTT), never an answer
    timeouts = [r for r in short if r.outcome is Outcome.TIMEOUT]
    late = [r for r in short if r.outcome is Outcome.LATE]
    assert timeouts and all(r.rtt_ms is None for r in timeouts)
    assert len(late) == len(timeouts) and all(r.rtt_ms == 80.0 for r in late)
    assert len(short) == len(timeouts) + len(late)
    assert all(r.outcome is Outcome.REPLY for r in store.of("127.0.0.3"))
    assert eng.stats()["outcomes"]["timeout"] == len(timeouts)
    assert eng.stats()["outcomes"]["late"] == len(late)
    assert eng.target("127.0.0.2").loss == 1.0
    assert eng.stats()["outstanding"] == 0
    # the window is sized for the longest timeout: ceil(0.5 / 0.1) + 1
    assert fac.v4.window == 6


def test_live_table_shows_problems_first() -> None:
    from fastping.commands.monitor import render_table

    fac = FakeFactory(dead={"127.0.0.9"})
    eng, fac, store, _ = make(["127.0.0.2", "127.0.0.9"], fac, interval_s=0.05, timeout_s=0.1)
    run_virtual(eng.run(0.4, handle_signals=False))
    text = render_table(eng, rows_max=1, width=100)
    lines = text.splitlines()
    assert lines[0].startswith("fastping monitor  0:00:00  targets 2")
    assert "unreachable 0" in lines[0] and "errors 0" in lines[0]
    assert "TARGET" in lines[2] and "LAST RTT ms" in lines[2] and "REASON" in lines[2]
    assert lines[3].split()[:2] == ["127.0.0.9", "down"] and "100.0%" in lines[3]
    assert lines[3].endswith("  timeout")  # why it is down
    assert lines[4] == "... and 1 more (problems first)"
    assert lines[5].startswith("status: up | down: timeout") and "*: backing off" in lines[6]


def test_tick_defaults_to_20ms_or_the_shortest_interval() -> None:
    eng, *_ = make()
    assert eng.tick_s == 0.02
    eng, *_ = make(interval_s=1.0, min_interval_s=0.005, timeout_s=0.01)
    assert eng.tick_s == 0.005  # a 5 ms interval needs a 5 ms tick
    with pytest.raises(ConfigError, match="shorter than the tick"):
        make(interval_s=0.005, timeout_s=0.01, tick_s=0.02)


def test_interval_that_is_not_a_whole_number_of_ticks_is_exact_on_average() -> None:
    # 30 ms at a 20 ms tick: gaps of 20 and 40 ms alternate, 30 ms on average
    eng, fac, store, _ = make(["127.0.0.2"], interval_s=0.03, timeout_s=0.2, tick_s=0.02)
    run_virtual(eng.run(1.2, handle_signals=False))  # a virtual clock: exact, whatever the load
    times = [t for t, _ in fac.v4.sends]
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 39  # 1.2 s / 30 ms, from its phase in the first interval
    assert set(gaps) == {0.02, 0.04} and all(a != b for a, b in zip(gaps, gaps[1:], strict=False))
    mean = (times[-1] - times[0]) / len(gaps)
    assert abs(mean - 0.03) <= 0.02 / len(gaps), mean  # off by at most one tick over the run


def test_a_small_engine_sleeps_through_empty_ticks() -> None:
    # 3 targets at 1 s: ~3 ticks of work a second; waking every 20 ms would be 50
    eng, fac, store, _ = make(["127.0.0.2", "127.0.0.3", "127.0.0.4"], interval_s=1.0,
                              timeout_s=0.5)  # fmt: skip
    added: list[float] = []

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.5)
        added.append(asyncio.get_running_loop().time())
        eng.add_target("127.0.0.5")  # while the loop sleeps: it must wake for it
        await asyncio.sleep(1.6)
        await eng.stop()

    run_virtual(main())
    st = eng.stats()
    assert st["ticks"] <= 25, st["ticks"]  # 2.1 s at 20 ms would be 105
    per = Counter(a for _, a in fac.v4.sends)
    assert per["127.0.0.2"] == per["127.0.0.3"] == per["127.0.0.4"] == 2, per
    first_new = min(t for t, a in fac.v4.sends if a == "127.0.0.5")
    assert 0 <= first_new - added[0] <= 1.0  # at its phase, within one interval
    assert per["127.0.0.5"] >= 1
    assert len(store.results) == st["sent"] == sum(per.values())


def test_top_targets_are_problems_first_and_only_as_many_as_asked() -> None:
    fac = FakeFactory(dead={"127.0.0.9", "127.0.0.8"})
    hosts = ["127.0.0.2", "127.0.0.9", "127.0.0.3", "127.0.0.8"]
    eng, fac, store, _ = make(hosts, fac, interval_s=0.05, timeout_s=0.1)
    run_virtual(eng.run(0.4, handle_signals=False))
    top = eng.top_targets(3)
    assert [(i.host, i.status) for i in top] == [
        ("127.0.0.8", "down"),
        ("127.0.0.9", "down"),
        ("127.0.0.2", "up"),
    ]
    assert top[0].loss == 1.0 and top[2].loss == 0.0 and top[2].probes >= 5
    assert eng.top_targets(0) == [] and len(eng.top_targets(10)) == 4
