"""fastping-fping against fping, whole processes, the same run.

  * 65,535 loopback targets (127.1.0.1-127.1.255.255, fping's maximum), `-C 1 -q -i 0`:
    wall time of each process from start to exit, medians of ROUNDS interleaved runs.
    (`-i 0` for both: with fping's default -i 10 ms either takes 655 s, since
    fastping-fping honours -i as fping does.)
  * 1,048,576 targets (127.16.0.0-127.31.255.255, `-g`), which fping refuses:
    fastping-fping's wall time, replies and peak RSS.
Run as root: pytest benchmarks/bench_fping.py --benchmark-only -s
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

import pytest

from conftest import child_env, report

ROUNDS = 5
FIRST, LAST = "127.1.0.1", "127.1.255.255"


def _ours() -> list[str]:
    return [sys.executable, "-m", "fastping.commands.fping"]


def _wall(cmd: list[str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    return time.perf_counter() - t, r.returncode, r.stderr


def _answered(stderr: str) -> int:
    # -C 1 -q: one "host : RTT" line per target on stderr, "-" when lost
    return sum(1 for line in stderr.splitlines() if " : " in line and not line.endswith("-"))


@pytest.mark.usefixtures("needs_root")
def test_fping_65535_wall(benchmark, fping: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "fping -C 1 -q, 65,535 loopback targets"
    args = ["-C", "1", "-q", "-i", "0", "-g", FIRST, LAST]
    ref, ours, ref_got = [], [], []
    for _ in range(ROUNDS):  # interleaved, so drift hits both alike
        w, _rc, err = _wall([fping, *args])
        # fping at -i 0 loses some replies now and then (exit 1): counted, not asserted
        ref_got.append(_answered(err))
        assert ref_got[-1] > 60000, err[-300:]
        ref.append(w)
        w, rc, err = _wall([*_ours(), *args])
        assert rc == 0 and _answered(err) == 65535, err[-300:]
        ours.append(w)
    med = statistics.median
    benchmark.extra_info.update(fping_wall_s=med(ref), fastping_fping_wall_s=med(ours))
    report(
        f"fping -C 1 -q -i 0, 65,535 targets: fastping-fping {med(ours):.3f} s, fping "
        f"{med(ref):.3f} s wall = {med(ours) / med(ref):.2f}x (medians of {ROUNDS}, "
        f"interleaved; all runs fastping {min(ours):.3f}-{max(ours):.3f}, "
        f"fping {min(ref):.3f}-{max(ref):.3f}); fastping-fping answered 65,535 every run, "
        f"fping {min(ref_got):,}-{max(ref_got):,}"
    )
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.usefixtures("needs_root")
def test_fping_1m(benchmark, fping: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "fping -C 1 -q, 1,048,576 loopback targets"
    args = ["-C", "1", "-q", "-i", "0", "-g", "127.16.0.0", "127.31.255.255"]
    r = subprocess.run([fping, *args], capture_output=True, text=True, timeout=120)
    fping_says = (r.stderr.strip().splitlines() or ["(nothing)"])[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    w, rc, err = _wall([*_ours(), *args])
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    got = _answered(err)
    assert rc == 0 and got == 1 << 20, err[-300:]
    report(
        f"fping -C 1 -q -i 0, 1,048,576 targets: fastping-fping {w:.2f} s wall, "
        f"{got:,} answered, peak RSS {rss_mb:.0f} MB"
        + ("" if rss_mb > before / 1024 else " (RSS: an earlier child's peak)")
        + f"; fping: rc {r.returncode}, {fping_says!r}"
    )
    benchmark.extra_info.update(wall_s=w, rss_mb=rss_mb, fping_rc=r.returncode)
    benchmark.pedantic(lambda: None, rounds=1)
    assert os.geteuid() == 0
