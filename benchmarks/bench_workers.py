"""Both cores: a 1,048,576-target loopback sweep with workers=2 against the C
reference, measured in the same run (interleaved rounds).

  * fastping workers=2 vs one C loop (`mmsg_ceiling -m inter -f`): goal >= 1.5x
  * beside it, two C instances at once with the BPF filter (`-F`), each sweeping
    half: the machine's ceiling
  * every reply received, peak RSS < 150 MB
Run as root: pytest benchmarks/bench_workers.py --benchmark-only -s
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

import pytest

from conftest import child_env, report

N = 1 << 20
ROUNDS = 3
CODE = (
    "import fastping, resource, time, json, sys\n"
    "t = time.perf_counter()\n"
    "r = fastping.sweep('127.16.0.0/12', rate_pps=0, timeout_s=2.0, workers=int(sys.argv[1]))\n"
    "d = time.perf_counter() - t\n"
    "alive = sum(1 for h in r if h.alive)\n"
    "dup = sum(h.duplicates for h in r)\n"
    "print(json.dumps(dict(received=r.received, alive=alive, dup=dup, s=d,"
    " send_s=r.totals['send_window_ns'] / 1e9, sweep_s=r.totals['sweep_window_ns'] / 1e9,"
    " drops=r.totals['rx_drops'],"
    " rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))\n"
)


def run_sweep_1m(workers: int) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-c", CODE, str(workers)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _c(binary: str, n: int, base: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [binary, "-n", str(n), "-a", base, "-m", "inter", "-f", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )


def _c_result(p: subprocess.Popen[str]) -> dict[str, float]:
    out = p.communicate(timeout=300)[0]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}


@pytest.mark.usefixtures("needs_root")
def test_two_workers_against_one_and_two_c_loops(benchmark, c_reference: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "sweep 1,048,576 loopback targets, both cores"
    fp2, fp1, c1, c2, c1_loss, fp2_loop = [], [], [], [], [], []
    for _ in range(ROUNDS):
        d = run_sweep_1m(2)
        assert d["received"] == N and d["alive"] == N and d["dup"] == 0
        assert d["rss_mb"] < 150
        fp2.append(N / d["s"])
        fp2_loop.append(N / d["sweep_s"])
        d1 = run_sweep_1m(1)
        fp1.append(N / d1["s"])
        r = _c_result(_c(c_reference, N, "127.16.0.0"))
        c1.append(N / r["total_s"])
        c1_loss.append(r["loss"])
        a = _c(c_reference, N // 2, "127.16.0.0", "-F")
        b = _c(c_reference, N // 2, "127.24.0.0", "-F")
        ra, rb = _c_result(a), _c_result(b)
        c2.append(N / max(ra["total_s"], rb["total_s"]))
    med = statistics.median
    ratio = med(fp2) / med(c1)
    benchmark.extra_info.update(
        fastping_workers2_pps=med(fp2),
        fastping_workers2_loop_pps=med(fp2_loop),
        fastping_workers1_pps=med(fp1),
        c_one_loop_pps=med(c1),
        c_two_instances_pps=med(c2),
        ratio_vs_one_c_loop=ratio,
        last_run=d,
    )
    report(f"1,048,576 targets (whole sweep incl. start-up, medians of {ROUNDS}, interleaved):")
    report(
        f"  fastping workers=2 {med(fp2):,.0f} probes/s | workers=1 {med(fp1):,.0f} | "
        f"one C loop {med(c1):,.0f} (loss {med(c1_loss):.2f}%) | two C loops {med(c2):,.0f}"
    )
    report(
        f"  workers=2 / one C loop = {ratio:.2f}x (goal >= 1.5); "
        f"/ two C loops (ceiling) = {med(fp2) / med(c2):.2f}x; peak RSS {d['rss_mb']:.0f} MB"
    )
    loop = med(fp2_loop)
    report(
        f"  like for like (first send to last reply, as C's total_s): workers=2 {loop:,.0f} "
        f"probes/s = {loop / med(c1):.2f}x one C loop, {loop / med(c2):.2f}x two C loops"
    )
    benchmark.pedantic(lambda: None, rounds=1)
