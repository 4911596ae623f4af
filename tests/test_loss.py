"""loss.py driven directly: known loss patterns in, measured parameters out."""

from __future__ import annotations

import math
import random
import time

import pytest

from fastping import chunk
from fastping.loss import (
    BURST_BUCKETS,
    LossTracker,
    Outage,
    OutageRule,
    find_outages,
    group_incidents,
    ipdv,
    ipdv_quantiles,
    network_of,
    rfc3550_jitter,
)

INTERVAL = 1.0
TIMEOUT = 0.5
T0 = 1_800_000_000.0


def records(
    lost: list[bool], rtt_of=lambda i: 10.0
) -> tuple[list[float], list[float], list[int], bytes]:
    """Record columns as the core logs them: a reply's time is send + RTT, a
    timeout's is send + timeout."""
    t, r, c = [], [], []
    for i, x in enumerate(lost):
        send = T0 + i * INTERVAL
        if x:
            t.append(send + TIMEOUT)
            r.append(math.nan)
            c.append(1)
        else:
            rtt = rtt_of(i)
            t.append(send + rtt / 1000)
            r.append(rtt)
            c.append(0)
    return t, r, [i & 0xFFFF for i in range(len(lost))], bytes(c)


def gilbert(
    n: int, p: float, r: float, k: float = 0.0, h: float = 1.0, seed: int = 1
) -> list[bool]:
    """Gilbert-Elliott: good -> bad with p, bad -> good with r; lost with k (good), h (bad)."""
    rnd = random.Random(seed)
    bad = False
    out = []
    for _ in range(n):
        out.append(rnd.random() < (h if bad else k))
        bad = (rnd.random() >= r) if bad else (rnd.random() < p)
    return out


def test_random_loss_reads_as_gilbert_p_equal_loss() -> None:
    rnd = random.Random(7)
    lost = [rnd.random() < 0.05 for _ in range(20000)]
    tr = LossTracker(OutageRule(min_lost=5))
    t, r, q, c = records(lost)
    evs = tr.feed("a", t, r, q, c, TIMEOUT)
    st = tr.stats("a")
    assert st is not None
    assert st.lost == sum(lost)
    assert abs(st.loss - 0.05) < 0.005
    # independent loss: p = L, r = 1 - L
    assert abs(st.p - 0.05) < 0.006
    assert abs(st.r - 0.95) < 0.02
    assert st.mean_burst < 1.1
    # five in a row at 5% happens ~0.3 times in 20,000: none or next to none
    assert len(evs) <= 2


def test_bursts_of_ten_every_hundred() -> None:
    lost = [(i % 100) >= 90 for i in range(10000)]
    tr = LossTracker(OutageRule(min_lost=20))
    t, r, q, c = records(lost)
    assert tr.feed("a", t, r, q, c, TIMEOUT) == []  # 10 < 20: no outage
    assert tr.settle() == []
    st = tr.stats("a")
    assert st.burst_hist == {10: 100}
    assert st.mean_burst == 10
    assert st.r == pytest.approx(99 / 999)  # 1/r = mean run length, the last has no successor
    assert st.p == pytest.approx(100 / 9000)
    assert st.rfc3611_bursts == 100
    assert st.burst_density == 1.0
    assert st.gap_density == 0.0
    # the agent-wide histogram: all in the (5, 10] bucket
    assert tr.burst_buckets[BURST_BUCKETS.index(10)] == 99  # the open one is not finished


@pytest.mark.parametrize("p,r", [(0.01, 0.2), (0.05, 0.5), (0.002, 0.05)])
def test_gilbert_parameters_recovered(p: float, r: float) -> None:
    lost = gilbert(200_000, p, r, seed=3)
    tr = LossTracker()
    t, rt, q, c = records(lost)
    tr.feed("a", t, rt, q, c, TIMEOUT)
    st = tr.stats("a")
    assert st.p == pytest.approx(p, rel=0.1)
    assert st.r == pytest.approx(r, rel=0.1)
    assert st.mean_burst == pytest.approx(1 / r, rel=0.1)


def test_rfc3611_densities_of_gilbert_elliott() -> None:
    # bad state: 50% loss, mean stay 40 probes; good state: 0.1% loss, mean stay 1000
    lost = gilbert(300_000, p=0.001, r=0.025, k=0.001, h=0.5, seed=11)
    tr = LossTracker()
    t, rt, q, c = records(lost)
    tr.feed("a", t, rt, q, c, TIMEOUT)
    st = tr.stats("a")
    # bursts are cut where the channel happens to deliver >= 16 in a row, so the
    # density inside them is above h and the gap density near k
    assert 0.45 < st.burst_density < 0.7
    assert st.gap_density < 0.004
    assert st.rfc3611_bursts > 100


def test_outages_found_exactly_none_invented() -> None:
    lost = [False] * 300
    truth = [(50, 80), (120, 121), (200, 203), (250, 300)]  # [first lost, first answered)
    for a, b in truth:
        for i in range(a, b):
            lost[i] = True
    lost[10] = lost[11] = True  # two in a row: not an outage with min_lost=3
    tr = LossTracker(OutageRule(min_lost=3))
    t, r, q, c = records(lost)
    evs = tr.feed("a", t, r, q, c, TIMEOUT)
    starts = [e.outage for e in evs if e.what == "start"]
    ends = [e.outage for e in evs if e.what == "end"]
    assert [o.start for o in starts] == [T0 + 50, T0 + 200, T0 + 250]
    assert [(o.start, o.end, o.lost) for o in ends] == [
        (T0 + 50, pytest.approx(T0 + 80), 30),
        (T0 + 200, pytest.approx(T0 + 203), 3),
    ]
    assert [o.start for o in tr.current_outages()] == [T0 + 250]
    assert tr.outages_current == 1 and tr.outages_total == 3


def test_chunk_fast_path_equals_record_walk() -> None:
    lost = gilbert(5000, 0.02, 0.3, seed=5)
    t, r, q, c = records(lost, rtt_of=lambda i: 5 + (i % 7))
    a = LossTracker()
    evs_a = a.feed("x", t, r, q, c, TIMEOUT)
    b = LossTracker()
    evs_b = []
    for i in range(0, len(c), 10):  # hand-overs of 10 records, as the engine does
        k = len(c[i : i + 10])
        blob = chunk.pack(t[i : i + 10], r[i : i + 10], q[i : i + 10], c[i : i + 10], [64] * k)
        evs_b += b.feed_chunk("x", blob, TIMEOUT)
    evs_a += a.settle()
    evs_b += b.settle()
    assert [(e.what, e.outage.start, e.outage.end) for e in evs_a] == [
        (e.what, e.outage.start, pytest.approx(e.outage.end)) for e in evs_b
    ]
    sa, sb = a.stats("x"), b.stats("x")
    assert (sa.probes, sa.lost, sa.burst_hist, sa.rfc3611_bursts) == (
        sb.probes, sb.lost, sb.burst_hist, sb.rfc3611_bursts,
    )  # fmt: skip
    assert sa.p == pytest.approx(sb.p) and sa.r == pytest.approx(sb.r)


def test_local_down_takes_the_run_back() -> None:
    tr = LossTracker(OutageRule(min_lost=3), local_grace_s=5.0)
    t, r, q, c = records([False] * 10 + [True] * 4)  # losses from T0+10 on
    evs = tr.feed("a", t, r, q, c, TIMEOUT)
    assert [e.what for e in evs] == ["start"]
    # our network is seen down at T0+13.7: those four losses were ours
    evs = tr.local_down(T0 + 13.7)
    assert [(e.what, e.outage.kind) for e in evs] == [("end", "target"), ("start", "local")]
    assert evs[0].outage.lost == 0 and "withdrawn" in evs[0].outage.rule
    assert tr.outages_total == 0 and tr.outages_current == 0
    st = tr.stats("a")
    assert st.lost == 0 and st.probes == 10
    evs = tr.local_up(T0 + 40, lost=25)
    assert evs[0].outage == Outage(None, T0 + 13.7, T0 + 40, 25, "local", "network monitor: DOWN")


def test_local_down_cuts_an_older_outage() -> None:
    tr = LossTracker(OutageRule(min_lost=3), local_grace_s=5.0)
    t, r, q, c = records([False] * 10 + [True] * 30)
    tr.feed("a", t, r, q, c, TIMEOUT)
    evs = tr.local_down(T0 + 41)
    end = next(e.outage for e in evs if e.outage.kind == "target")
    assert end.start == T0 + 10 and end.end == T0 + 41 and end.lost == 30
    assert tr.outages_total == 1 and tr.outages_current == 0


def test_jitter_definitions() -> None:
    rtts = [10.0, 12.0, math.nan, 11.0, 15.0]
    # successive answered RTTs: 10, 12, 11, 15 -> |D| 2, 1, 4
    j = 0.0
    for d in (2, 1, 4):
        j += (d - j) / 16
    assert rfc3550_jitter(rtts) == pytest.approx(j)
    assert rfc3550_jitter([1.0]) is None
    # IPDV only for sequence-consecutive, both answered: (0,1) and (3,4)
    seq = [65534, 65535, 0, 1, 2]
    assert ipdv(seq, rtts) == [2.0, 4.0]
    q = ipdv_quantiles(seq, rtts, (50, 100))
    assert q == {"ipdv_p50_ms": 3.0, "ipdv_p100_ms": 4.0}


def test_incidents_group_a_slash24() -> None:
    os_ = [Outage(f"192.0.2.{i}", 100.0 + i * 0.2, 160.0, 55) for i in range(1, 30)]
    os_ += [Outage("198.51.100.7", 101.0, 130.0, 29)]  # another network: alone
    os_ += [Outage("192.0.2.99", 400.0, 410.0, 10)]  # same /24, much later: alone
    inc = group_incidents(os_, window_s=10, min_targets=2)
    assert len(inc) == 1
    assert inc[0].network == "192.0.2.0/24" and len(inc[0].targets) == 29
    assert inc[0].start == 100.2 and inc[0].end == 160.0
    assert network_of("2001:db8::5") == "2001:db8::/64" and network_of("example.org") is None


def test_find_outages_offline() -> None:
    t, r, q, c = records([False] * 5 + [True] * 6 + [False] * 5)
    outs, st = find_outages("a", t, r, q, c, TIMEOUT, OutageRule(3))
    assert [(o.start, round(o.end, 6), o.lost) for o in outs] == [(T0 + 5, T0 + 11, 6)]
    assert st.outages == 1


def test_rule_checked() -> None:
    with pytest.raises(ValueError):
        OutageRule(0)


def test_log_order_is_not_probe_order() -> None:
    """Interval 0.1 s, timeout 0.5 s: the core logs a reply to probe k+1 long before
    the timeout of probe k. Fed in that (logged) order, in hand-overs of 1 s, the
    runs, outages and their times come out as in probe order."""
    iv, tmo = 0.1, 0.5
    lost = gilbert(3000, 0.03, 0.2, seed=9)
    for i in range(1000, 1100):
        lost[i] = True  # a 10 s outage
    recs = []
    for i, x in enumerate(lost):
        send = T0 + i * iv
        recs.append((send + tmo + 0.03, math.nan, i & 0xFFFF, 1) if x
                    else (send + 0.002, 2.0, i & 0xFFFF, 0))  # fmt: skip
    logged = sorted(recs)  # the order outcomes became known
    a = LossTracker(OutageRule(5))
    ta, ra, qa, ca = zip(*recs, strict=True)
    ev_a = a.feed("x", ta, ra, qa, bytes(ca), tmo, iv) + a.settle()
    b = LossTracker(OutageRule(5))
    ev_b = []
    k = 0
    while k < len(logged):
        j = k
        while j < len(logged) and logged[j][0] < logged[k][0] + 1.0:
            j += 1
        part = logged[k:j]
        blob = chunk.pack([p[0] for p in part], [p[1] for p in part], [p[2] for p in part],
                          [p[3] for p in part], [0] * len(part))  # fmt: skip
        ev_b += b.feed_chunk("x", blob, tmo, iv)
        k = j
    ev_b += b.settle()
    sa, sb = a.stats("x"), b.stats("x")
    assert sa.burst_hist == sb.burst_hist and sa.lost == sb.lost == sum(lost)
    assert sa.p == pytest.approx(sb.p) and sa.r == pytest.approx(sb.r)
    key = [
        (e.what, round(e.outage.start, 3), e.outage.end and round(e.outage.end, 3)) for e in ev_a
    ]
    assert key == [(e.what, round(e.outage.start, 3), e.outage.end and round(e.outage.end, 3))
                   for e in ev_b]  # fmt: skip
    big = [e.outage for e in ev_b if e.what == "end" and e.outage.lost >= 100]
    assert len(big) == 1
    assert abs(big[0].start - (T0 + 100.0)) < iv and abs(big[0].end - (T0 + 110.0)) < iv


# ---- in the engine (fake socket: no privilege, no network) -----------------------


class _OutageStore:
    """ListStore plus the outages table's entry point."""

    def __init__(self) -> None:
        from engine_fakes import ListStore

        self.inner = ListStore()
        self.outages: list[Outage] = []

    def submit(self, results):  # type: ignore[no-untyped-def]
        self.inner.submit(results)

    def submit_chunks(self, items):  # type: ignore[no-untyped-def]
        self.inner.submit_chunks(items)

    def submit_outages(self, outages):  # type: ignore[no-untyped-def]
        self.outages.extend(outages)

    async def flush(self, timeout_s=None):  # type: ignore[no-untyped-def]
        return True

    def stats(self):  # type: ignore[no-untyped-def]
        return {}


def test_engine_outage_events_store_and_metrics() -> None:
    import asyncio

    from engine_fakes import CaptureLog, FakeFactory
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.loss import OutageEvent
    from fastping.metrics import MetricsCollector

    fac = FakeFactory(dead={"127.0.0.9"})
    store = _OutageStore()
    log = CaptureLog()
    eng = MonitoringEngine(
        ["127.0.0.9", "127.0.0.2"], store=store, socket_factory=fac, logger=log,
        guard=ResourceGuard(None, None), interval_s=0.05, timeout_s=0.1, store_flush_s=0.1,
        outage_rule=OutageRule(3),
    )  # fmt: skip
    sub = eng.subscribe(maxsize=100_000)

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.6)
        assert [o.target for o in eng.outages()] == ["127.0.0.9"]
        fac.v4.dead.clear()  # it answers again
        back = time.time()
        await asyncio.sleep(0.5)
        await eng.stop()
        ends = [e.outage for e in evs() if e.what == "end"]
        assert len(ends) == 1 and abs(ends[0].end - back) < 0.05 + 0.03, (ends, back)

    got: list[OutageEvent] = []

    def evs() -> list[OutageEvent]:
        got.extend(e for e in sub.drain() if isinstance(e, OutageEvent))
        return got

    asyncio.run(main())
    what = [(e.what, e.outage.target) for e in evs()]
    assert what == [("start", "127.0.0.9"), ("end", "127.0.0.9")]
    assert [o.end is None for o in store.outages] == [True, False]
    end = store.outages[-1]
    # lost probes every 50 ms; on a loaded machine a send may slip by up to an interval
    assert end.lost >= 8 and end.duration_s == pytest.approx(end.lost * 0.05, abs=0.05 + 0.06)
    assert any("outage started" in m for m in log.messages("warning"))
    st = eng.stats()["loss"]
    assert st["outages_total"] == 1 and st["outages_current"] == 0
    text = MetricsCollector(eng).render().decode()
    assert "fastping_outages_total 1.0" in text
    assert "fastping_outages_current 0.0" in text
    assert "fastping_local_outage 0.0" in text
    assert 'fastping_loss_burst_length_bucket{le="+Inf"} 1.0' in text
    assert f"fastping_loss_burst_length_sum {float(end.lost)}" in text


def test_engine_our_network_down_is_not_the_targets_outage() -> None:
    import asyncio

    from engine_fakes import CaptureLog, FakeFactory, FakeNetwork
    from fastping.engine import MonitoringEngine
    from fastping.guard import ResourceGuard
    from fastping.metrics import MetricsCollector

    fac = FakeFactory()
    net = FakeNetwork()
    store = _OutageStore()
    eng = MonitoringEngine(
        ["127.0.0.2", "127.0.0.3"], store=store, socket_factory=fac, logger=CaptureLog(),
        guard=ResourceGuard(None, None), interval_s=0.05, timeout_s=0.1, store_flush_s=0.1,
        network=net,
    )  # fmt: skip

    async def main() -> None:
        await eng.start()
        await asyncio.sleep(0.3)
        # our link goes: nothing answers; the network monitor notices 0.2 s later, so
        # the targets' first timeouts are logged before it says DOWN
        fac.v4.dead.update({"127.0.0.2", "127.0.0.3"})
        await asyncio.sleep(0.2)
        net.state = net._S("DOWN")
        await asyncio.sleep(0.4)
        assert "fastping_local_outage 1.0" in MetricsCollector(eng).render().decode()
        fac.v4.dead.clear()
        net.state = net._S("UP")
        await asyncio.sleep(0.3)
        await eng.stop()

    asyncio.run(main())
    final = {(o.kind, o.target, o.start): o for o in store.outages}  # as the table upserts
    theirs = [o for o in final.values() if o.kind == "target" and o.lost > 0]
    ours = [o for o in store.outages if o.kind == "local"]
    # a start may have been published before the network monitor spoke: withdrawn
    assert all(o.end is not None for o in final.values() if o.kind == "target"), final
    assert theirs == []
    assert eng.loss is not None and eng.loss.dropped_as_local >= 2  # taken back as ours
    assert len(ours) == 2 and ours[-1].end is not None and ours[-1].lost >= 8
    st = eng.stats()["loss"]
    assert st["outages_total"] == 0 and st["local_outages_total"] == 1
    for h in ("127.0.0.2", "127.0.0.3"):
        s = eng.loss.stats(h) if eng.loss else None
        assert s is not None and s.lost == 0, s


def test_store_outages_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import sqlite3

    from fastping.store import ResultStore

    db = tmp_path / "o.db"

    async def main() -> None:
        async with ResultStore(db) as st:
            st.submit_chunks([("127.0.0.1", None, chunk.pack([T0], [1.0], [1], [0], [64]))])
            await st.flush()
            assert st.outages() == []  # no table yet: nothing, not an error
            st.submit_outages([Outage("127.0.0.1", T0 + 10, None, 3, rule="3 consecutive lost"),
                               Outage(None, T0 + 50, None, 0, "local", "network monitor: DOWN"),
                               Outage("127.0.0.2", T0 + 60, None, 3)])  # fmt: skip
            await st.flush()
            # the same outages ending: their rows are updated, not doubled
            st.submit_outages(
                [
                    Outage("127.0.0.1", T0 + 10, T0 + 40, 30),
                    Outage(None, T0 + 50, T0 + 55, 250, "local"),
                    Outage("127.0.0.2", T0 + 60, T0 + 60, 0, rule="withdrawn"),
                ]
            )
            assert st.stats()["outages_written"] == 3
        # close() wrote the rest

    asyncio.run(main())
    st = ResultStore(db)
    got = st.outages()
    assert got == [Outage("127.0.0.1", T0 + 10, T0 + 40, 30, "target", ""),
                   Outage(None, T0 + 50, T0 + 55, 250, "local", "")]  # withdrawn: gone  # fmt: skip
    assert st.outages(since=T0 + 41) == [got[1]]
    assert st.outages(until=T0 + 9) == []
    assert st.outages(kind="target") == [got[0]]
    assert st.outages(targets=["127.0.0.9"]) == [got[1]]  # ours stay in every target view
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM outages").fetchone()[0] == 3
    t, rtt, seq, code = st.probe_log()["127.0.0.1"]
    assert list(seq) == [1] and code == b"\x00"
