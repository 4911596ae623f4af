"""Sweep speed on loopback, against the C reference and fping, in the same run.

65,536 targets (127.1.0.0/16), one echo each, no pacing:
  * fastping's core vs the C reference (`mmsg_ceiling -m inter -f`): goal >= 0.9x
  * fastping vs `fping -a -r0 -i0 -t500` (65,535 targets: its maximum): goal >= 2x
  * the whole `fastping sweep` process vs fping's: wall time goal <= 0.6x
1,048,576 targets (127.16.0.0/12): every reply, peak RSS (goal < 150 MB).
Run as root: pytest benchmarks/bench_sweep.py --benchmark-only -s
"""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
import time

import pytest

from conftest import child_env, fastping_cli, report

ROUNDS = 5


def _c_pps(binary: str, n: int, base: str, *extra: str) -> tuple[float, int, float]:
    out = subprocess.run(
        [binary, "-n", str(n), "-a", base, "-m", "inter", "-f", *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = dict(re.findall(r"(\w+)=([\d.]+)", out))
    # probes per second over the whole sweep (send + wait for the last reply)
    return float(m["n"]) / float(m["total_s"]), int(m["replies"]), float(m["total_s"])


def _core_sweep(n: int, first: int) -> tuple[float, int, float]:
    from fastping.probe import open_icmp_socket

    with open_icmp_socket(socket.AF_INET, mode="raw") as s:
        s.append_range_v4(first, n)
        t = time.perf_counter()
        s.sweep(1, 1.0, 1.0, 0.0)
        d = time.perf_counter() - t
        return n / d, s.totals()["received"], d


def _wall(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    return time.perf_counter() - t, r.stdout


@pytest.mark.usefixtures("needs_root")
def test_sweep_65536_against_c_and_fping(benchmark, c_reference: str, fping: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "sweep 65,536 loopback targets"
    first = 0x7F010000
    c, core, fp, cli, fpw = [], [], [], [], []
    for _ in range(ROUNDS):  # interleaved, so drift hits every tool alike
        pps, got, _ = _c_pps(c_reference, 65536, "127.1.0.0")
        assert got == 65536
        c.append(pps)
        pps, got, _ = _core_sweep(65536, first)
        assert got == 65536
        core.append(pps)
        w, out = _wall([fping, "-a", "-r0", "-i0", "-t500", "-g", "127.1.0.0", "127.1.255.254"])
        fpw.append(w)
        fp.append(65535 / w)
        assert len(out.splitlines()) == 65535
        w, out = _wall([*fastping_cli(), "sweep", "127.1.0.0/16", "--rate", "0", "-q"])
        cli.append(w)
        assert "65536 alive" in " ".join(out.split())
    med = statistics.median
    r_c, r_fp, r_wall = med(core) / med(c), med(core) / med(fp), med(cli) / med(fpw)
    benchmark.extra_info.update(
        core_pps=med(core),
        c_pps=med(c),
        fping_pps=med(fp),
        fastping_wall_s=med(cli),
        fping_wall_s=med(fpw),
        ratio_core_vs_c=r_c,
        ratio_vs_fping=r_fp,
        wall_ratio=r_wall,
    )
    report(
        f"sweep 65,536: fastping core {med(core):,.0f} probes/s | C reference {med(c):,.0f} "
        f"| fping {med(fp):,.0f}  (medians of {ROUNDS}, interleaved)"
    )
    report(f"  fastping / C reference = {r_c:.2f}x (goal >= 0.9)")
    report(f"  fastping / fping       = {r_fp:.2f}x (goal >= 2)")
    report(
        f"  `fastping sweep` process wall {med(cli):.3f} s vs fping {med(fpw):.3f} s "
        f"= {r_wall:.2f}x (goal <= 0.6)"
    )
    benchmark.pedantic(_core_sweep, args=(65536, first), rounds=3)


@pytest.mark.usefixtures("needs_root")
def test_sweep_1m_every_reply_and_rss(benchmark) -> None:  # type: ignore[no-untyped-def]
    from bench_workers import N, run_sweep_1m

    benchmark.group = "sweep 1,048,576 loopback targets"
    d = run_sweep_1m(1)
    assert d["received"] == N and d["alive"] == N
    benchmark.extra_info["workers1"] = d
    report(
        f"sweep 1,048,576 (workers=1): {d['s']:.2f} s, {N / d['s']:,.0f} probes/s, "
        f"kernel drops {d['drops']}, peak RSS {d['rss_mb']:.0f} MB (goal < 150); "
        "workers=2 and the C reference: benchmarks/bench_workers.py"
    )
    benchmark.pedantic(lambda: None, rounds=1)
