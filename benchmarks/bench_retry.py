"""Recovery latency of the network-aware retry: link up -> next attempt starts.

Runs the outage scenario of tests/netns_retry.py repeatedly (root: it makes two
network namespaces and removes them) and reports median / p95 / max of

  latency    restore command returned (link up, default route back) -> the
             client's next attempt starts
  detect     restore returned -> the NetworkMonitor reports the new state
  react      monitor's state change -> next attempt (the retryer's own share)

for the monitor without check hosts (netlink only), with the server as a check
host (verified by an ICMP echo), and, for comparison, plain backoff without a
monitor (10 attempts, full jitter, max_delay 1 s: it retries whenever its
schedule says, not when the link returns).

    python benchmarks/bench_retry.py --runs 10          # on demand, ~1 minute
    python -m pytest benchmarks/bench_retry.py -s       # same, via pytest
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import netns_retry as scenario  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "monitor, netlink only": {"monitor": True, "args": []},
    "monitor + check host": {"monitor": True, "args": ["--check-host", scenario.SERVER_IP]},
    "no monitor, backoff only": {
        "monitor": False,
        "args": ["--max-attempts", "10", "--max-delay", "1.0", "--jitter"],
    },
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def one_run(topo: scenario.Topo, variant: dict[str, Any], outage_s: float) -> dict[str, Any]:
    out = scenario.run_outage(
        topo, monitor=variant["monitor"], outage_s=outage_s, client_args=variant["args"]
    )
    after = [s for s in out.attempt_starts if s["t"] > out.t_restore_begin]
    row: dict[str, Any] = {
        "ok": out.result["ok"],
        "restore_cmd_s": out.t_restore_end - out.t_restore_begin,
        "latency_s": None,
        "detect_s": None,
        "react_s": None,
    }
    if after:
        row["latency_s"] = after[0]["t"] - out.t_restore_end
        ups = [e for e in out.of("state") if e["t"] > out.t_restore_begin]
        if ups:
            row["detect_s"] = ups[0]["t"] - out.t_restore_end
            row["react_s"] = after[0]["t"] - ups[0]["t"]
    return row


def summarize(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return None
    return {
        "n": len(vals),
        "median_ms": statistics.median(vals) * 1e3,
        "p95_ms": percentile(vals, 95) * 1e3,
        "max_ms": max(vals) * 1e3,
    }


def run_all(runs: int, outage_s: float) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": runs, "outage_s": outage_s, "variants": {}}
    with scenario.topology() as topo, scenario.tcp_server(topo):
        for name, variant in VARIANTS.items():
            rows = [one_run(topo, variant, outage_s) for _ in range(runs)]
            report["variants"][name] = {
                "succeeded": sum(1 for r in rows if r["ok"]),
                "latency": summarize(rows, "latency_s"),
                "detect": summarize(rows, "detect_s"),
                "react": summarize(rows, "react_s"),
                "restore_cmd": summarize(rows, "restore_cmd_s"),
            }
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"recovery latency, {report['runs']} runs per variant, outage {report['outage_s']} s",
        f"{'variant':26} {'ok':>5} {'metric':8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}",
    ]
    for name, v in report["variants"].items():
        for metric in ("latency", "detect", "react"):
            s = v[metric]
            if s is None:
                continue
            lines.append(
                f"{name:26} {v['succeeded']:>2}/{report['runs']:<2} {metric:8} "
                f"{s['median_ms']:>10.1f} {s['p95_ms']:>8.1f} {s['max_ms']:>8.1f}"
            )
    cmd = next(iter(report["variants"].values()))["restore_cmd"]
    if cmd:
        lines.append(f"(the `ip -batch` restore itself took median {cmd['median_ms']:.1f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--outage-s", type=float, default=1.0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    why = scenario.can_run()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    report = run_all(a.runs, a.outage_s)
    print(json.dumps(report, indent=2) if a.json else render(report))
    return 0


def test_recovery_latency() -> None:
    """pytest entry (benchmarks are on demand): the monitored variants recover on
    every run, well before a backoff schedule would have."""
    import pytest

    why = scenario.can_run()
    if why:
        pytest.skip(why)
    report = run_all(runs=5, outage_s=1.0)
    print("\n" + render(report))
    for name in ("monitor, netlink only", "monitor + check host"):
        v = report["variants"][name]
        assert v["succeeded"] == 5
        assert v["latency"]["p95_ms"] < 500


if __name__ == "__main__":
    sys.exit(main())
