"""Traceroute of every target behind a routed chain (#19), against Debian's scamper
(and mtr for a sample), in one run, inside namespaces this script makes (and deletes).

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_trace.py                  # 65,536 targets
    PYTHONPATH=src python benchmarks/bench_trace.py --targets 4096 --runs 3

The lab is tests/pathlab.py's: src -> r1 -> r2 -> r3 -> tgt, the routers' ICMP rate
limits raised, tgt owning 10.200.0.0/16, so every target is 4 hops away and every hop
answers. Figures, per tool:

* ``fastping trace -f FILE -r 0 --json -s`` (targets from a file, one JSON line per
  target written to a file): probes sent, every hop found or not, the pass's rate
  (probes / first send to last answer, the core's figure) and the whole process's
  (probes / wall, start-up and output included), peak RSS (GNU time);
* ``scamper -p 10000 -c "trace -P icmp-paris -q 1 -m 16 -w 1" -f FILE -O json`` (its
  highest packets/s; 10,000 tasks at once): probes / wall, hops found;
* hop addresses: fastping's against scamper's for every target both traced, and
  against ``mtr -n -j -c 1`` for a sample.

Only addresses inside the lab's namespaces are probed.
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
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.pathlab import PathLab, target4  # noqa: E402


def _timed(lab: PathLab, cmd: list[str], out: Path) -> tuple[float, int, str]:
    """Run ``cmd`` in the lab's source namespace under GNU time: wall s, peak RSS
    KiB, stderr (without time's report)."""
    tv = Path(tempfile.mktemp(suffix=".time"))
    t0 = time.perf_counter()
    with out.open("w") as f:
        p = subprocess.run(
            ["ip", "netns", "exec", lab.src, "/usr/bin/time", "-v", "-o", str(tv), *cmd],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            timeout=900,
        )
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:3]} exited {p.returncode}: {p.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv.read_text())
    tv.unlink()
    return wall, int(m.group(1)) if m else 0, p.stderr


def run_fastping(lab: PathLab, targets: Path, out: Path, workers: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "fastping.cli", "trace", "-f", str(targets), "-r", "0",
           "-t", "1", "--json", "-s", "-w", str(workers)]  # fmt: skip
    wall, rss, err = _timed(lab, cmd, out)
    s = json.loads(err.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "sent": s["probes_sent"],
        "hop_answers": s["hop_answers"],
        "reached": s["reached"],
        "pass_pps": s["probes_per_s"],
        "process_pps": s["probes_sent"] / wall,
        "rss_mb": rss / 1024,
        "workers": s["workers"],
    }


def run_scamper(lab: PathLab, targets: Path, out: Path) -> dict[str, float]:
    cmd = ["scamper", "-p", "10000", "-w", "10000", "-O", "json", "-o", str(out), "-c",
           "trace -P icmp-paris -q 1 -m 16 -w 1", "-f", str(targets)]  # fmt: skip
    wall, rss, _ = _timed(lab, cmd, Path(os.devnull))
    sent = hops = reached = 0
    for line in out.read_text().splitlines():
        d = json.loads(line)
        if d.get("type") != "trace":
            continue
        sent += int(d.get("probe_count", 0))
        for h in d.get("hops", []):
            if h.get("icmp_type") == 11:
                hops += 1
            elif h.get("icmp_type") == 0:
                reached += 1
    return {"wall_s": wall, "sent": sent, "hop_answers": hops, "reached": reached,
            "process_pps": sent / wall, "rss_mb": rss / 1024}  # fmt: skip


def paths_fastping(out: Path) -> dict[str, list[str | None]]:
    res = {}
    for line in out.read_text().splitlines():
        d = json.loads(line)
        res[d["address"]] = [h["address"] for h in d.get("hops", [])]
    return res


def paths_scamper(out: Path) -> dict[str, list[str | None]]:
    res: dict[str, list[str | None]] = {}
    for line in out.read_text().splitlines():
        d = json.loads(line)
        if d.get("type") != "trace":
            continue
        path: list[str | None] = [None] * int(d.get("hop_count", 0))
        for h in d.get("hops", []):
            ttl = int(h["probe_ttl"])
            if ttl <= len(path):
                path[ttl - 1] = h["addr"]
        res[d["dst"]] = path
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=65536, help="targets (<= 65536)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="fastping --workers (0: auto)")
    ap.add_argument("--mtr-sample", type=int, default=20)
    a = ap.parse_args()
    n = min(a.targets, 65536)
    tmp = Path(tempfile.mkdtemp(prefix="fpb-trace-"))
    os.chmod(tmp, 0o755)
    targets = tmp / "targets.txt"
    targets.write_text("".join(f"{target4(i)}\n" for i in range(n)))
    fp_runs, sc_runs = [], []
    with PathLab(3, v6=False) as lab:
        for r in range(a.runs):
            fp_out, sc_out = tmp / f"fastping{r}.json", tmp / f"scamper{r}.json"
            fp_runs.append(run_fastping(lab, targets, fp_out, a.workers))
            sc_runs.append(run_scamper(lab, targets, sc_out))
            print(f"run {r + 1}: fastping {fp_runs[-1]}", file=sys.stderr)
            print(f"run {r + 1}: scamper  {sc_runs[-1]}", file=sys.stderr)
        ours, theirs = paths_fastping(tmp / "fastping0.json"), paths_scamper(tmp / "scamper0.json")
        both = [t for t in ours if t in theirs]
        agree = sum(1 for t in both if ours[t] == theirs[t])
        sample = [target4(i * max(1, n // a.mtr_sample)) for i in range(a.mtr_sample)]
        mtr_agree = 0
        for t in sample:
            out = lab.exec(lab.src, "mtr", "-n", "-j", "-c", "1", t).stdout
            hubs = [h["host"] if h["host"] != "???" else None
                    for h in json.loads(out)["report"]["hubs"]]  # fmt: skip
            mtr_agree += hubs == ours.get(t)
    med = statistics.median
    print(f"targets {n}, 3 routers + target = 4 hops each, runs {a.runs} (median)")
    print(f"{'tool':<10}{'probes':>10}{'hops found':>12}{'reached':>9}{'wall s':>9}"
          f"{'pass pps':>11}{'process pps':>13}{'RSS MB':>8}")  # fmt: skip
    for name, runs in (("fastping", fp_runs), ("scamper", sc_runs)):
        print(f"{name:<10}{med(r['sent'] for r in runs):>10.0f}"
              f"{med(r['hop_answers'] for r in runs):>12.0f}{med(r['reached'] for r in runs):>9.0f}"
              f"{med(r['wall_s'] for r in runs):>9.2f}"
              f"{med(r.get('pass_pps', 0) for r in runs):>11.0f}"
              f"{med(r['process_pps'] for r in runs):>13.0f}"
              f"{med(r['rss_mb'] for r in runs):>8.1f}")  # fmt: skip
    print(
        f"hops expected: {3 * n}; paths identical to scamper's: {agree}/{len(both)}; "
        f"to mtr's: {mtr_agree}/{len(sample)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
