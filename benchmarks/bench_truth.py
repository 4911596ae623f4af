"""Throughput with truthful timing: the whole ``fastping sweep`` process (kernel TX
timestamps on every probe) against the C references, interleaved in one run.

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_truth.py               # 65,536 and 1,048,576
    PYTHONPATH=src python benchmarks/bench_truth.py --sizes 65536 --runs 3

References (built here with gcc -O2):
* ``benchmarks/c/ts_ref.c``: the same loop as the plain one with the same kernel
  timestamping fastping does (SO_TIMESTAMPING TX+RX, SCM_TS_OPT_ID keys, the error
  queue drained before the replies) and each RTT computed;
* ``/work/shared/bench/mmsg_ceiling.c -m inter -f -r 4194304``: the plain loop, no
  timestamps (the same 4 MiB receive buffer as ts_ref).

For fastping the figure is targets / wall of the whole process (start-up, target
expansion, output), and the core's own rate from its summary. Loopback only
(127.16.0.0/12).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TS_REF = HERE / "c" / "ts_ref.c"
PLAIN = Path(os.environ.get("FASTPING_BENCH_C", "/work/shared/bench/mmsg_ceiling.c"))
CIDR = {65536: "127.16.0.0/16", 1048576: "127.16.0.0/12"}


def build(src: Path, out: Path) -> Path:
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(out), str(src)], check=True)
    return out


def result_line(text: str) -> dict[str, str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("RESULT"))
    return dict(re.findall(r"(\w+)=(\S+)", line))


def run_c(binary: Path, n: int, *extra: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([str(binary), "-n", str(n), "-a", "127.16.0.0", *extra],
                       capture_output=True, text=True, check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    res = result_line(r.stdout)
    replies = int(res["replies"])
    assert replies == n, f"{binary.name}: {replies} of {n} replies"
    return n / wall


def run_fastping(n: int, workers: int) -> tuple[float, float, dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "fastping.cli", "sweep", CIDR[n], "--rate", "0", "-q", "--json",
           "--workers", str(workers)]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["received"] == n, s
    return n / wall, float(s["probes_per_s"]), s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="65536,1048576")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        ts = build(TS_REF, Path(d) / "ts_ref")
        plain = build(PLAIN, Path(d) / "mmsg_ceiling")
        for n in (int(x) for x in a.sizes.split(",")):
            rows: dict[str, list[float]] = {}
            timed = None
            for _ in range(a.runs):
                rows.setdefault("c_ts_ref", []).append(run_c(ts, n))
                rows.setdefault("c_plain", []).append(
                    run_c(plain, n, "-m", "inter", "-f", "-r", "4194304")
                )
                for w in (1, 2):
                    whole, core, s = run_fastping(n, w)
                    rows.setdefault(f"fastping_w{w}_process", []).append(whole)
                    rows.setdefault(f"fastping_w{w}_core", []).append(core)
                    timed = (s["timed_kernel"], s["timed_user"])
            med = {k: statistics.median(v) for k, v in rows.items()}
            print(f"\n{n:,} targets, medians of {a.runs} interleaved runs (probes/s):")
            for k, v in med.items():
                print(f"  {k:<22} {v:>10,.0f}   x ts_ref {v / med['c_ts_ref']:.2f}"
                      f"   x plain {v / med['c_plain']:.2f}")  # fmt: skip
            print(f"  fastping replies timed by the kernel / in user space: {timed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
