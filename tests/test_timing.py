"""The prober's timing quality: kernel TX timestamps in every mode, the send-lateness
histogram (core and fastping.timing), and how the monitor reports it."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from tests.conftest import ROOT, child_env, fastping_cmd

from fastping import HAS_EXTENSION
from fastping.timing import BOUNDS_US, N_BUCKETS, SendLateness

needs_root = pytest.mark.skipif(not ROOT, reason="needs root for raw ICMP sockets")


def test_extension_loaded() -> None:
    assert HAS_EXTENSION


def test_bounds_are_the_cores() -> None:
    from fastping._icmp import lateness_bucket_bounds

    assert lateness_bucket_bounds() == BOUNDS_US
    assert len(BOUNDS_US) == N_BUCKETS
    assert BOUNDS_US[:17] == list(range(17)) and BOUNDS_US[17] == 18
    # 8 buckets per octave above 16 us: each within 12.5% of its lower bound
    for lo, hi in zip(BOUNDS_US[16:], BOUNDS_US[17:], strict=False):
        assert 0 < hi - lo <= lo / 8


def hist_of(values_us: list[int]) -> SendLateness:
    h = [0] * N_BUCKETS
    for v in values_us:
        i = max(k for k, b in enumerate(BOUNDS_US) if b <= v)
        h[i] += 1
    return SendLateness(len(values_us), sum(values_us) * 1000, max(values_us) * 1000, tuple(h))


def test_quantiles_are_bucket_upper_bounds() -> None:
    lat = hist_of([3] * 90 + [100] * 9 + [5000])
    assert lat.quantile_us(0.5) == 4  # in [3, 4)
    assert lat.quantile_us(0.9) == 4
    assert lat.quantile_us(0.99) == 104  # 100 is in [96, 104)
    assert lat.quantile_us(1.0) == 5000  # the maximum, not the bucket's bound
    assert lat.to_dict() == {
        "probes": 100, "mean_us": 61.7, "p50_us": 4.0, "p99_us": 104.0, "max_us": 5000.0,
    }  # fmt: skip
    assert SendLateness().quantile_us(0.5) is None and SendLateness().to_dict()["max_us"] is None


def test_sum_and_prometheus_buckets() -> None:
    a = hist_of([1, 2, 3])
    b = hist_of([1000, 70_000])
    s = a + b
    assert s.probes == 5 and s.max_ns == 70_000_000 and s.sum_ns == 71_006_000
    buckets = dict(s.prometheus_buckets())
    assert buckets["1e-06"] == 0  # nothing below 1 us
    assert buckets["2e-06"] == 1 and buckets["4e-06"] == 3
    assert buckets["0.001024"] == 4 and buckets["0.065536"] == 4 and buckets["0.131072"] == 5
    assert buckets["+Inf"] == 5
    counts = [c for _, c in s.prometheus_buckets()]
    assert counts == sorted(counts)  # cumulative


@needs_root
@pytest.mark.parametrize("mode", ["kernel", "packet", "batch"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_send_lateness_against_due(mode: str, family: int) -> None:
    """Probes scheduled 2 ms ago left at least 2 ms late, and at most a little more."""
    from fastping._icmp import IcmpSocket

    addrs = [f"127.9.3.{i}" for i in range(1, 201)] if family == socket.AF_INET else ["::1"]
    with IcmpSocket(family, timestamps=mode) as s:
        s.set_targets(addrs)
        due = time.time_ns() - 2_000_000
        s.send(range(len(addrs)), True, due)
        time.sleep(0.05)
        s.recv()
        n, sum_ns, max_ns, hist = s.lateness()
        assert n == len(addrs) and sum(hist) == n
        lat = SendLateness(n, sum_ns, max_ns, hist)
        assert lat.quantile_us(0.0) >= 2000 and sum_ns >= 2_000_000 * n
        assert max_ns < 200_000_000  # the send itself took well under 200 ms
        t = s.totals()
        assert t["received"] == len(addrs)
        if mode == "kernel":
            assert s.timestamps == "kernel"
            assert t["timed_kernel"] == len(addrs) and t["timed_user"] == 0
            assert t["tx_stamps"] == len(addrs) and t["tx_unmatched"] == 0
        else:
            assert s.timestamps == mode
            assert t["timed_kernel"] == 0 and t["timed_user"] == len(addrs)
            assert s.slot_stats(0).user_timed == 1  # per slot: its reply was user-timed
        s.reset_lateness()
        assert s.lateness()[0] == 0
        # a send without a schedule counts nothing
        s.send(range(len(addrs)), True)
        time.sleep(0.05)
        s.recv()
        assert s.lateness()[0] == 0


@needs_root
def test_kernel_rtts_exclude_batching() -> None:
    """In a 1,024-probe batch the last probe leaves ~1,000 sends after the first: with
    one clock read per batch ('batch') its RTT includes that wait, with kernel TX
    timestamps it does not. Same targets, same socket settings, both ways."""
    from fastping._icmp import IcmpSocket

    addrs = [f"127.9.{4 + i // 256}.{i % 256}" for i in range(1024)]
    worst = {}
    for mode in ("kernel", "batch"):
        with IcmpSocket(socket.AF_INET, timestamps=mode, batch_size=1024) as s:
            s.set_targets(addrs)
            s.sweep(count=1, timeout_s=1.0)
            stats = [s.slot_stats(i) for i in range(len(addrs))]
            rtts = sorted(st.min_ns for st in stats if st.received)
            assert len(rtts) == len(addrs)
            worst[mode] = rtts[int(len(rtts) * 0.99)]
    # loopback RTT is a few us; a 1,024-probe batch takes milliseconds to hand over
    assert worst["kernel"] < 100_000, worst
    assert worst["batch"] > 5 * worst["kernel"], worst


def test_bad_timestamps_mode() -> None:
    from fastping._icmp import IcmpSocket

    with pytest.raises(ValueError, match="timestamps must be"):
        IcmpSocket(socket.AF_INET, timestamps="hardware")


@needs_root
def test_monitor_summary_reports_send_lateness(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        fastping_cmd(
            "monitor", "127.0.0.1", "::1", "127.9.5.0/28", "--interval", "0.2", "--duration",
            "2", "--db", str(tmp_path / "l.db"), "--table", "never", "--log-level", "WARNING",
        ),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    lat = summary["send_lateness"]
    # every probe the engine sent was scheduled and its lateness counted
    assert lat["probes"] == summary["sent"] > 100
    assert 0 <= lat["p50_us"] <= lat["p99_us"] <= lat["max_us"] + 1e-9
    assert lat["p99_us"] < 1_000_000  # a tick late at most would be 20 ms; 1 s is broken
    # the windows went into the database beside the results, and the report shows them
    from fastping.timing import read_windows

    stored = read_windows(str(tmp_path / "l.db"), None, None)
    assert stored.probes == summary["sent"]
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(tmp_path / "l.db"), "--since", "all"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    line = next(ln for ln in rep.stdout.splitlines() if ln.startswith("prober timing:"))
    assert f"{summary['sent']:,} probes left" in line
    assert "resource guard" not in rep.stdout  # it never acted
    # a window in which the guard stretched the intervals x4: the report says so
    import time as _time

    from fastping.timing import write_window

    now = _time.time()
    write_window(str(tmp_path / "l.db"), now - 10, now, hist_of([10]), interval_factor=4.0)
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(tmp_path / "l.db"), "--since", "all"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert "resource guard: probe intervals stretched up to x4 for ~10 s" in rep.stdout


def test_windows_round_trip_and_deltas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastping.timing import delta, read_windows, write_window

    db = str(tmp_path / "t.db")
    a = hist_of([5, 7, 300])
    b = a + hist_of([40, 50])
    w = delta(b, a)
    assert (w.probes, w.sum_ns) == (2, 90_000) and w.quantile_us(1.0) <= 56
    write_window(db, 100.0, 110.0, a)
    write_window(db, 110.0, 120.0, w)
    both = read_windows(db, None, None)
    assert (both.probes, both.sum_ns, both.hist) == (b.probes, b.sum_ns, b.hist)
    assert read_windows(db, 115.0, None).probes == 2  # only the window ending at 120
    assert read_windows(db, None, 105.0).probes == 0
    from fastping.timing import read_windows_with_guard

    write_window(db, 120.0, 130.0, a, interval_factor=2.5)
    lat, factor, slowed_s = read_windows_with_guard(db, None, None)
    assert (lat.probes, factor, slowed_s) == (b.probes + a.probes, 2.5, 10.0)
    # a database without the table (an older monitor's) has nothing, and says so quietly
    import sqlite3

    sqlite3.connect(str(tmp_path / "old.db")).execute("CREATE TABLE x (a)").connection.close()
    assert read_windows(str(tmp_path / "old.db"), None, None).probes == 0
    # a file that is not a database: the writer raises (the monitor logs and counts it)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        write_window(str(junk), 0.0, 1.0, a)


@needs_root
def test_a_missed_schedule_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The monitor held up for 0.6 s (SIGSTOP, as a scrape storm or a stalled disk
    would hold its loop): the probes due meanwhile leave late, and the log and the
    summary say how many missed their schedule, rather than passing it off as the
    network's delay."""
    import signal
    import time as _time

    p = subprocess.Popen(
        fastping_cmd(
            "monitor", "127.9.7.0/28", "--interval", "0.2", "--duration", "3",
            "--db", str(tmp_path / "s.db"), "--table", "never", "--log-level", "WARNING",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        _time.sleep(1.5)
        p.send_signal(signal.SIGSTOP)
        _time.sleep(0.6)
        p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    lat = json.loads(out.strip().splitlines()[-1])["send_lateness"]
    # 16 targets, each due at least twice in the 0.6 s stop: all left >= 100 ms late
    assert lat["behind_schedule"] >= 16, lat
    assert lat["max_us"] >= 400_000, lat
    warn = [ln for ln in err.splitlines() if "probing behind schedule" in ln]
    assert warn, err
    assert "behind_schedule=" in warn[0] or '"behind_schedule"' in warn[0]


def test_behind_schedule_counts_whole_buckets() -> None:
    from fastping.timing import behind_schedule_us

    assert behind_schedule_us(1.0) == 100_000 and behind_schedule_us(0.05) == 25_000
    lat = hist_of([50, 90_000, 110_000, 150_000, 3_000_000])
    assert lat.at_least_us(100_000) == 3  # 90 ms is not behind, 110 ms is
    # a bucket that straddles the limit ([98,304, 106,496) us) is not counted: at least N
    assert hist_of([100_000]).at_least_us(100_000) == 0
    assert lat.to_dict(100_000)["behind_schedule"] == 3
    assert "behind_schedule" not in lat.to_dict()
