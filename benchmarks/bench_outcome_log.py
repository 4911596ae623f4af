"""The core's outcome log: what quiet mode saves per probe, and what take_log costs.

10,000 loopback targets (127.4.0.1 ...), driven like the engine drives them: send()
100 slots per call (one round = 100 calls), then recv() and expire(). Mode 0 returns
an event tuple per reply, which Python then drops; mode 1 (quiet) logs every reply in
C and returns nothing once the targets' state is known; mode 2 logs and returns.
Modes run interleaved, round for round, so the ratio is same-run. take_log() is timed
on the log those rounds filled (per record), and take_log(slot) on a full log.

Run: PYTHONPATH=src python -m pytest -q benchmarks/bench_outcome_log.py --benchmark-only -s
"""

from __future__ import annotations

import ipaddress
import os
import socket
import statistics
import time
from array import array
from collections.abc import Callable

import pytest

from conftest import report
from fastping import chunk
from fastping._icmp import IcmpSocket

N_TARGETS = 10_000
PER_CALL = 100
FIRST = int(ipaddress.IPv4Address("127.4.0.1"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for raw sockets")


def _socket(mode: int) -> IcmpSocket:
    s = IcmpSocket(socket.AF_INET, window=2)
    s.append_range_v4(FIRST, N_TARGETS)
    s.set_log(mode)
    return s


def _calls() -> list[array[int]]:
    return [array("I", range(i, i + PER_CALL)) for i in range(0, N_TARGETS, PER_CALL)]


def _round(s: IcmpSocket, calls: list[array[int]], handle: bool = False) -> int:
    """One round over every target, as the engine's ticks would send it; returns the
    number of events Python was handed. They are dropped, or with ``handle`` given
    the least an engine does with one (unpack it, store the RTT by slot)."""
    n_events = 0
    last: dict[int, int] = {}
    for slots in calls:
        ev = s.send(slots)
        n_events += len(ev)
        if handle:
            for slot, _kind, _seq, rtt_ns, *_ in ev:
                last[slot] = rtt_ns
    n_events += len(s.recv())
    n_events += len(s.expire(1.0))
    return n_events


def _wall_ns(fn: Callable[[], object]) -> int:
    w = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - w


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_send_round(benchmark, mode: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"one round: {N_TARGETS} loopback targets, {PER_CALL} slots per send()"
    calls = _calls()
    with _socket(mode) as s:
        _round(s, calls)  # the first round's replies are changes in every mode
        s.take_log()
        benchmark.pedantic(_round, args=(s, calls), rounds=15, iterations=1)
        t = s.totals()
        assert t["received"] == t["sent"] and t["log_dropped"] == 0
        if mode:
            assert t["log_pending"] == t["received"] - N_TARGETS


def test_quiet_vs_events_same_run(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Modes interleaved round for round (best and median round, ns per probe); then
    the receive side alone: a whole round sent without draining and one recv() timed,
    which is where the events are made (or not). The kernel's loopback work (it
    answers the echo inside our sendmmsg, ~5 us) is in every figure, so the
    differences are the point. "0+h": mode 0 with the least per-event Python work."""
    benchmark.group = "same-run ratio"
    calls = _calls()
    rounds = 20
    variants = {"0": (0, False), "0+h": (0, True), "1": (1, False), "2": (2, False)}
    socks = {v: _socket(mode) for v, (mode, _) in variants.items()}
    per_round: dict[str, list[int]] = {v: [] for v in socks}
    per_recv: dict[str, list[int]] = {v: [] for v in socks}
    try:
        for s in socks.values():
            _round(s, calls)
            s.take_log()
        for _ in range(rounds):
            for v, s in socks.items():
                handle = variants[v][1]
                got: list[int] = []
                per_round[v].append(
                    _wall_ns(lambda s=s, g=got, h=handle: g.append(_round(s, calls, h)))  # type: ignore[misc]
                )
                assert got[0] == (0 if v == "1" else N_TARGETS)
        pending = socks["1"].totals()["log_pending"]
        assert pending == rounds * N_TARGETS
        take_ns = _wall_ns(socks["1"].take_log)
        # receive side alone: 10,000 replies queued, then one recv()
        rx_rounds = 20
        for _ in range(rx_rounds):
            for v, s in socks.items():
                s.take_log()
                for slots in calls:
                    s.send(slots, drain=False)
                got_rx: list[object] = []
                per_recv[v].append(_wall_ns(lambda s=s, g=got_rx: g.extend(s.recv())))  # type: ignore[misc]
                assert len(got_rx) == (0 if v == "1" else N_TARGETS)
                s.expire(1.0)
        best = {v: min(x) / N_TARGETS for v, x in per_round.items()}
        rx_best = {v: min(x) / N_TARGETS for v, x in per_recv.items()}
        for v, s in socks.items():
            t = s.totals()
            assert t["received"] == t["sent"] == (1 + rounds + rx_rounds) * N_TARGETS, t
            assert t["rx_drops"] == 0 and t["log_dropped"] == 0
            report(
                f"outcome log: mode {v}: round best {best[v]:.0f} / median "
                f"{statistics.median(per_round[v]) / N_TARGETS:.0f} ns/probe; "
                f"recv() alone best {rx_best[v]:.0f} ns/reply"
            )
        report(
            f"outcome log: quiet vs mode 0: {best['0'] - best['1']:.0f} ns/probe less a round "
            f"({best['0+h'] - best['1']:.0f} vs 0+h), {rx_best['0'] - rx_best['1']:.0f} ns/reply "
            f"less in recv()"
        )
        report(
            f"outcome log: take_log() of {pending} records over {N_TARGETS} slots: "
            f"{take_ns / pending:.1f} ns/record ({take_ns / 1e6:.1f} ms)"
        )
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    finally:
        for s in socks.values():
            s.close()


def test_take_log(benchmark) -> None:  # type: ignore[no-untyped-def]
    """take_log() per record with 5 records per slot (a 5 s flush window at 1 s)."""
    benchmark.group = "take_log"
    calls = _calls()
    with _socket(1) as s:

        def fill() -> tuple[tuple[()], dict[str, object]]:
            s.take_log()
            for _ in range(5):
                _round(s, calls)
            return (), {}

        out = benchmark.pedantic(s.take_log, setup=fill, rounds=5, iterations=1)
        assert len(out) == N_TARGETS and all(chunk.count(b) == 5 for _, b in out)
        per_record = benchmark.stats.stats.min / (5 * N_TARGETS) * 1e9
        report(f"outcome log: take_log() best {per_record:.1f} ns/record (50,000 records)")
        # one slot out of a full log: a scan of every record (the engine does it when a
        # target is removed)
        fill()
        w = _wall_ns(lambda: s.take_log(1234))
        report(f"outcome log: take_log(slot) on a 50,000-record log: {w / 1e3:.0f} us")
