"""``fastping trace``: traceroute every target at once, one pass over targets x hops.

A few targets: an mtr-like table each. Many (more than ``--table-max``): one
summary of the whole run. ``--json``: one object per target per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TABLE_MAX = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes
    from .pathargs import add_path_arguments

    add_path_arguments(p, "seconds to wait for the last answers after the last probe (default 1)")
    p.add_argument(
        "-m",
        "--max-ttl",
        type=argtypes.int_range(1, 64),
        default=16,
        metavar="N",
        help="highest TTL / hop limit probed (default 16, at most 64)",
    )
    p.add_argument(
        "-q",
        "--queries",
        type=argtypes.int_range(1, 64),
        default=1,
        metavar="N",
        help="probes per hop (default 1)",
    )
    p.add_argument(
        "--workers",
        "-w",
        type=argtypes.int_range(0, 64),
        default=0,
        metavar="N",
        help="sending threads, each with its own socket (default 0: one per usable core, "
        "at most 8, for traces big and fast enough to need them)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help=f"the many-target summary even for a few targets (default above {TABLE_MAX} targets)",
    )
    p.add_argument(
        "-s", "--stats", action="store_true", help="with --json: the summary as JSON on stderr"
    )


def run(args: argparse.Namespace) -> int:
    from ..trace import trace
    from .pathargs import family_of, path_targets

    targets = path_targets(args, "trace")
    fam = family_of(args)
    progress = None
    if sys.stderr.isatty() and not args.json:
        from .sweep import _Progress

        progress = _Progress()
    try:
        res = trace(
            targets,
            max_ttl=args.max_ttl,
            queries=args.queries,
            timeout_s=args.timeout,
            rate_pps=args.rate,
            mode=args.mode,
            family=fam,
            on_progress=progress.update if progress else None,
            workers=args.workers,
        )
    finally:
        if progress:
            progress.close()
    summary = _summary(res)
    out = sys.stdout
    if args.json:
        out.writelines(tr.json_line() + "\n" for tr in res.traces)
        if args.stats:
            sys.stderr.write(json.dumps(summary) + "\n")
    elif len(res.traces) > TABLE_MAX or args.summary:
        out.write("\n".join(_summary_lines(summary)) + "\n")
    else:
        for tr in res.traces:
            out.write("\n".join(_table(tr)) + "\n")
        out.write(
            f"{summary['reached']}/{summary['traces']} reached, {summary['probes_sent']} probes "
            f"in {summary['elapsed_s']:.3f} s\n"
        )
    if res.totals.get("interrupted"):
        sys.stderr.write("fastping: interrupted: the answers so far are shown\n")
        return 130
    errors = [t for t in res.traces if t.error]
    for t in errors:
        sys.stderr.write(f"fastping: {t.error}\n")
    if errors:
        return 2
    return 0 if all(t.reached for t in res.traces) else 1


def _table(tr: Any) -> list[str]:
    if tr.error:
        return [f"trace to {tr.target}: {tr.error}"]
    name = tr.target if tr.target == tr.address else f"{tr.target} ({tr.address})"
    state = (
        f"reached in {tr.hop_count} hop{'' if tr.hop_count == 1 else 's'}"
        if tr.reached
        else "not reached"
    )
    lines = [
        f"trace to {name}: {state}",
        " hop  address                                 loss%  sent     best      avg",
    ]
    for h in tr.hops:
        loss = 100.0 * (h.sent - h.received) / h.sent if h.sent else 0.0
        if h.address is None:
            lines.append(f"{h.ttl:>4}  {'*':<40}{loss:>5.1f}{h.sent:>6}")
            continue
        tag = " !" + _unreach_tag(h) if h.kind == "unreachable" else ""
        lines.append(
            f"{h.ttl:>4}  {h.address + tag:<40}{loss:>5.1f}{h.sent:>6}"
            f"{h.rtt_ms:>9.3f}{h.avg_ms if h.avg_ms is not None else h.rtt_ms:>9.3f}"
        )
    return lines


def _unreach_tag(h: Any) -> str:
    # traceroute's annotations: !N network, !H host, !P protocol, !X administratively
    v4 = {0: "N", 1: "H", 2: "P", 3: "", 9: "X", 10: "X", 13: "X"}
    v6 = {0: "N", 1: "X", 3: "H", 4: "", 5: "X", 6: "X"}
    table = v4 if h.icmp_type == 3 else v6 if h.icmp_type == 1 else {}
    return table.get(h.icmp_code, f"<{h.icmp_type}/{h.icmp_code}>")


def _summary(res: Any) -> dict[str, Any]:
    t = res.totals
    ok = [tr for tr in res.traces if not tr.error]
    reached = [tr for tr in ok if tr.reached]
    dist: dict[int, int] = {}
    for tr in reached:
        dist[tr.hop_count] = dist.get(tr.hop_count, 0) + 1
    per_ttl: dict[int, set[str]] = {}
    silent: dict[int, int] = {}
    for tr in ok:
        for h in tr.hops:
            if h.kind == "target":
                continue
            if h.address is None:
                silent[h.ttl] = silent.get(h.ttl, 0) + 1
            else:
                per_ttl.setdefault(h.ttl, set()).add(h.address)
    sent = int(t.get("sent", 0))
    return {
        "traces": len(res.traces),
        "reached": len(reached),
        "not_reached": len(ok) - len(reached),
        "errors": len(res.traces) - len(ok),
        "hop_counts": {str(k): v for k, v in sorted(dist.items())},
        "routers_per_ttl": {str(k): len(v) for k, v in sorted(per_ttl.items())},
        "silent_hops_per_ttl": {str(k): v for k, v in sorted(silent.items())},
        "probes_sent": sent,
        "answers": int(t.get("received", 0)),
        "hop_answers": int(t.get("hops", 0)),
        "probes_skipped": int(t.get("skipped", 0)),
        "send_errors": int(t.get("send_errors", 0)),
        "duplicates": int(t.get("duplicates", 0)),
        "late": int(t.get("late", 0)),
        "foreign": int(t.get("foreign", 0)),
        "unattributed": int(t.get("errors_unattributed", 0)),
        "mode": res.mode,
        "workers": int(t.get("workers", 1)),
        "elapsed_s": round(res.elapsed_s, 6),
        "probes_per_s": round(sent / res.elapsed_s, 1) if res.elapsed_s > 0 else 0.0,
    }


def _summary_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"{s['traces']:>10} targets traced ({s['mode']} ICMP socket)",
        f"{s['reached']:>10} reached",
        f"{s['not_reached']:>10} not reached",
    ]
    if s["errors"]:
        lines.append(f"{s['errors']:>10} not traced (see the errors above)")
    if s["hop_counts"]:
        hc = ", ".join(f"{k} hops: {v}" for k, v in s["hop_counts"].items())
        lines.append(f"{'':>10} distance: {hc}")
    for ttl, n in s["routers_per_ttl"].items():
        quiet = s["silent_hops_per_ttl"].get(ttl, 0)
        extra = f", {quiet} silent" if quiet else ""
        lines.append(f"{'':>10} hop {ttl}: {n} router{'s' if n != 1 else ''}{extra}")
    for ttl, quiet in s["silent_hops_per_ttl"].items():
        if ttl not in s["routers_per_ttl"]:
            lines.append(f"{'':>10} hop {ttl}: no answer ({quiet} traces)")
    lines.append(
        f"{s['probes_sent']:>10} probes sent, {s['answers']} answered, {s['probes_skipped']} "
        "skipped past a path's end"
    )
    for key, label in (
        ("send_errors", "send errors"),
        ("duplicates", "duplicate answers"),
        ("late", "answers after the timeout"),
        ("foreign", "foreign packets ignored"),
        ("unattributed", "ICMP errors not ours"),
    ):
        if s.get(key):
            lines.append(f"{s[key]:>10} {label}")
    lines.append(f"{s['elapsed_s']:>10.3f} s elapsed, {s['probes_per_s']:.0f} probes/s")
    return lines
