"""The whole `fastping sweep` process, file in and results out (issue #13).

Run as root, on demand (not part of the default suite):

    PYTHONPATH=$PWD/src python3 benchmarks/bench_pipeline.py [--rounds 5]

Every figure is a median over interleaved rounds (the machine is shared: noisy):

  1. `fastping sweep -f 1m.txt --rate 0 --workers 2 --json -s > out` over a
     1,048,576-line file of loopback addresses (127.16.0.0/12): whole-process wall
     and peak RSS (/usr/bin/time -v) against the sweep loop's own time (the summary's
     sweep_window_ns: first send to last reply; and duration_s: sockets opened,
     loaded, swept); the same with -q and with --csv.
     Goals: wall <= 1.25x the sweep loop, peak RSS <= 120 MB.
  2. 65,535 targets from a file: `fastping sweep -f 65k.txt --rate 0 -a` against
     `fping -a -r0 -i0 -f 65k.txt` (same output: the answering addresses, one a
     line). Goal: fastping <= 0.5x fping's wall.
  3. 1,048,576 targets, --workers 2, whole process: probes/s (targets / wall)
     against one C loop (`mmsg_ceiling -m inter -f`, /work/shared/bench). Goal >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

N_1M = 1 << 20
N_65K = 65535
C_SRC = "/work/shared/bench/mmsg_ceiling.c"


def write_targets(path: Path, first: int, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            a = first + i
            f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}\n")


def timed(cmd: list[str], out_path: str = os.devnull) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stderr) of one process, from /usr/bin/time -v."""
    with open(out_path, "wb") as out:
        r = subprocess.run(
            ["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.PIPE, text=True
        )
    err = r.stderr
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):(\d+\.\d+)", err)
    assert m, err
    wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024  # type: ignore[union-attr]
    return wall, rss, err


def count_lines(path: str | Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def summary_of(text: str) -> dict:  # type: ignore[type-arg]
    for line in reversed(text.splitlines()):
        if line.startswith("{") and '"targets"' in line:
            return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError(f"no summary in {text[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (raw ICMP sockets)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fastping-bench-pipeline."))
    try:
        f1m, f65k = tmp / "1m.txt", tmp / "65k.txt"
        write_targets(f1m, (127 << 24) | (16 << 16), N_1M)
        write_targets(f65k, (127 << 24) | (1 << 16) | 1, N_65K)
        cref = tmp / "mmsg_ceiling"
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(cref), C_SRC], check=True)
        py = [sys.executable, "-m", "fastping.cli", "sweep"]
        runs: dict[str, list[dict]] = {}  # type: ignore[type-arg]

        def add(name: str, **v: float) -> None:
            runs.setdefault(name, []).append(v)

        for rnd in range(args.rounds):
            for mode, extra in (
                ("json", ["--json", "-s"]),
                ("quiet", ["-q", "--json"]),
                ("csv", ["--csv", "-s"]),
            ):
                out = str(tmp / "out")
                wall, rss, err = timed(
                    [*py, "-f", str(f1m), "--rate", "0", "--workers", "2", *extra], out
                )
                text = err if mode != "quiet" else Path(out).read_text()
                s = summary_of(text)
                lines = count_lines(out) if mode != "quiet" else 1
                assert mode == "quiet" or lines == N_1M + (mode == "csv"), lines
                add(
                    f"1m {mode}",
                    wall=wall,
                    rss=rss,
                    loop=s["sweep_window_ns"] / 1e9,
                    dur=s["duration_s"],
                    alive=s["alive"],
                )
            wall, rss, err = timed(
                [str(cref), "-n", str(N_1M), "-a", "127.16.0.0", "-m", "inter", "-f"]
            )
            add("1m C one loop", wall=wall, rss=rss)
            wall, rss, _ = timed([*py, "-f", str(f65k), "--rate", "0", "-a"], str(tmp / "a.out"))
            n_fast = count_lines(tmp / "a.out")
            add("65k fastping -a", wall=wall, rss=rss, alive=n_fast)
            wall, rss, _ = timed(["fping", "-a", "-r0", "-i0", "-f", str(f65k)], str(tmp / "f.out"))
            n_fping = count_lines(tmp / "f.out")
            add("65k fping -a -r0 -i0", wall=wall, rss=rss, alive=n_fping)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
        print(f"\n{'run':<24}{'wall s':>9}{'RSS MB':>9}{'loop s':>9}{'dur s':>8}{'wall/loop':>10}")
        for k, m in med.items():
            loop = m.get("loop")
            print(
                f"{k:<24}{m['wall']:>9.3f}{m['rss']:>9.1f}"
                + (f"{loop:>9.3f}{m['dur']:>8.3f}{m['wall'] / loop:>10.2f}" if loop else "")
            )
        c_pps = N_1M / med["1m C one loop"]["wall"]
        for mode in ("json", "quiet", "csv"):
            m = med[f"1m {mode}"]
            print(
                f"1m {mode}: wall/loop {m['wall'] / m['loop']:.2f} (goal <= 1.25), peak RSS "
                f"{m['rss']:.0f} MB (goal <= 120), probes/s {N_1M / m['wall']:,.0f} = "
                f"{N_1M / m['wall'] / c_pps:.2f}x one C loop (goal >= 1.5)"
            )
        fa, fp = med["65k fastping -a"], med["65k fping -a -r0 -i0"]
        print(
            f"65k: fastping {fa['wall']:.3f} s / fping {fp['wall']:.3f} s = "
            f"{fa['wall'] / fp['wall']:.2f} (goal <= 0.5); alive {fa['alive']:.0f} vs "
            f"{fp['alive']:.0f}; RSS {fa['rss']:.0f} vs {fp['rss']:.0f} MB"
        )
        print("rounds:", json.dumps(runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
