"""``fastping report``: statistics from the store a ``fastping monitor`` run wrote."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")

# The keys of `fastping sweep --json` first, then the store's extras.
JSON_KEYS: tuple[str, ...] = (
    "target", "address", "sent", "received", "loss", "min_ms", "avg_ms", "max_ms",
    "stddev_ms", "jitter_ms", "p50_ms", "p95_ms", "p99_ms",
    "timeouts", "unreachable", "time_exceeded", "send_errors", "local_down",
    "resolve_errors", "duplicates", "late", "first_time", "last_time", "approximate",
)  # fmt: skip


def parse_when(text: str, now: float) -> float | None:
    """'1h' / '30m' / '2d' / '90' (seconds) ago, an ISO time ('2026-05-01T12:00',
    UTC unless it names a zone), or 'all' (None: no bound)."""
    t = text.strip()
    if t.lower() in ("all", ""):
        return None
    m = _DURATION.match(t)
    if m:
        ago = float(m.group(1)) * _UNITS_S[m.group(2) or "s"]
        if not ago <= now:  # also inf / nan from a 400-digit number
            raise argparse.ArgumentTypeError(
                f"{text!r} reaches back before 1970: give a shorter duration or 'all'"
            )
        return now - ago
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give a duration ago (30s, 15m, 1h, 2d, 1w), "
            "an ISO time (2026-05-01T12:00, UTC unless a zone is given) or 'all'"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _when_arg(text: str) -> str:
    parse_when(text, time.time())  # validate now: argparse reports a bad value with usage
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", metavar="PATH", default=None,
        help="the SQLite file `fastping monitor` wrote (default: store.path of --config, "
        "else fastping.db)",
    )  # fmt: skip
    parser.add_argument("--config", metavar="FILE", help="take the database path from this config")
    parser.add_argument(
        "--target", "-t", metavar="T", action="append", default=None,
        help="only this target (repeat for more)",
    )  # fmt: skip
    parser.add_argument(
        "--since", metavar="WHEN", type=_when_arg, default="1h",
        help="start of the window: 30s, 15m, 1h, 2d, 1w ago, an ISO time, or 'all' (default 1h)",
    )  # fmt: skip
    parser.add_argument(
        "--until", metavar="WHEN", type=_when_arg, default=None,
        help="end of the window, same forms as --since (default: now)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="one JSON object per target per line (the keys of `sweep --json` plus "
        "stddev_ms, jitter_ms, p50_ms, p95_ms, p99_ms and counts per outcome)",
    )  # fmt: skip
    parser.add_argument(
        "--html", metavar="FILE",
        help="also write a self-contained HTML page with a latency chart per target",
    )  # fmt: skip
    parser.add_argument(
        "--max-charts", metavar="N", type=int, default=100,
        help="chart at most N targets in --html, those with the most loss first (default 100)",
    )  # fmt: skip


def _round(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in JSON_KEYS:
        v = d.get(k)
        if k == "loss" and isinstance(v, float):
            v = round(v, 6)
        elif isinstance(v, float) and k.endswith("_ms"):
            v = round(v, 4)
        elif isinstance(v, float) and k.endswith("_time"):
            v = round(v, 3)
        out[k] = v
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _table(stats: list[dict[str, Any]]) -> str:
    head = ("TARGET", "ADDRESS", "SENT", "RECV", "LOSS", "MIN", "AVG", "MAX", "P50", "P95",
            "P99", "JITTER")  # fmt: skip
    rows = [
        (
            s["target"],
            str(s["address"]),
            str(s["sent"]),
            str(s["received"]),
            f"{s['loss'] * 100:.1f}%",
            _ms(s["min_ms"]),
            _ms(s["avg_ms"]),
            _ms(s["max_ms"]),
            _ms(s["p50_ms"]),
            _ms(s["p95_ms"]),
            _ms(s["p99_ms"]),
            _ms(s["jitter_ms"]),
        )  # fmt: skip
        for s in stats
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..store import ResultStore

    db = args.db
    if db is None and args.config:
        from ..config import load_config

        db = load_config(args.config).store.path
    db = db or "fastping.db"
    if args.html:
        _check_writable(args.html)  # before anything is printed, not after
    store = ResultStore(db)
    now = time.time()
    since = parse_when(args.since, now)
    until = parse_when(args.until, now) if args.until else None

    known = store.targets()  # raises ConfigError for a missing / foreign file
    if not known:
        raise ConfigError(
            f"the database {db!r} holds no results yet: let `fastping monitor --db {db}` "
            "run for a while first"
        )
    if args.target:
        missing = [t for t in args.target if t not in set(known)]
        if missing:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise ConfigError(
                f"no results for target {', '.join(map(repr, missing))} in {db!r}; "
                f"targets there: {shown}"
            )
        stats = [s for t in args.target if (s := store.target_stats(t, since, until))]
    else:
        from ..targets import address_order

        stats = sorted(store.all_stats(since, until), key=lambda s: address_order(s["target"]))
    window = "all" if since is None else args.since
    if not stats:
        span = store.time_range()
        hint = ""
        if span is not None:
            hint = (
                f"; its results span {time.strftime('%Y-%m-%d %H:%M', time.gmtime(span[0]))}"
                f" – {time.strftime('%Y-%m-%d %H:%M', time.gmtime(span[1]))} UTC: "
                "try --since all"
            )
        print(f"fastping report: no results in {db!r} for --since {window}{hint}", file=sys.stderr)
        return 1

    if args.json:
        for s in stats:
            print(json.dumps(_round(s)))
    else:
        lo = since if since is not None else min(s["first_time"] for s in stats)
        hi = until if until is not None else now
        print(
            f"{db}: {len(stats)} targets, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(lo))} – "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(hi))} UTC (RTTs in ms)"
        )
        print(_table(stats))
        _print_send_timing(db, since, until)
        if any(s["approximate"] for s in stats):
            print("(percentiles of ranges older than the retention window are estimated "
                  "from per-minute rollups)")  # fmt: skip
        _print_http(db, since, until)
    if args.html:
        _write_html(args, store, db, stats, since, until, now)
    return 0


def _check_writable(path: str) -> None:
    import os

    from ..errors import ConfigError

    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ConfigError(
            f"--html: cannot write {path!r}: {e.strerror or e}; choose a writable path"
        ) from None
    if not existed:
        os.unlink(path)


def _print_send_timing(db: str, since: float | None, until: float | None) -> None:
    """The prober's own timing over the window (how late probes left against their
    schedule), so its noise is not read as the network's jitter."""
    import sqlite3

    from ..timing import read_windows_with_guard

    try:
        lat, factor, slowed_s = read_windows_with_guard(db, since, until)
    except sqlite3.Error:
        return
    if factor > 1.0:
        print(
            f"resource guard: probe intervals stretched up to x{factor:g} for ~{slowed_s:.0f} s "
            "of this window (fewer probes than asked; raise resources.max_cpu_percent / "
            "--max-cpu-percent, or 0 to turn the guard off)"
        )
    if lat.probes:
        d = lat.to_dict()
        print(
            f"prober timing: {d['probes']:,} probes left p50 <= {d['p50_us']:,.0f} us, "
            f"p99 <= {d['p99_us']:,.0f} us, max {d['max_us']:,.0f} us after their schedule "
            "(kernel TX timestamps; this is fastping's own noise, not the network's)"
        )


def _print_http(db: str, since: float | None, until: float | None) -> None:
    """The HTTP checks' table (medians over successful checks), when there are any."""
    from ..httpstore import HttpStore

    sums = HttpStore(db).summaries(since, until)
    if not sums:
        return
    print()
    print(f"HTTP checks: {len(sums)} URL/address pairs (medians of successful checks, ms; "
          "server = wait - network RTT)")  # fmt: skip
    head = ("url", "address", "checks", "ok", "dns", "connect", "tls", "wait", "rtt", "server",
            "total", "failures")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for u in sums:
        ph = u.phases_ms
        rows.append((
            u.url, str(u.address), str(u.checks), str(u.ok),
            *(_ms(ph.get(k)) for k in ("dns", "connect", "tls", "wait")),
            _ms(u.rtt_ms), _ms(u.server_ms), _ms(u.total_ms),
            ", ".join(f"{k} {n}" for k, n in sorted(u.outcomes.items()) if k != "ok") or "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 or i == len(head) - 1 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())


def _http_html(db: str, lo: float, hi: float, max_charts: int) -> str:
    from ..htmlreport import http_section, pick_bucket_s
    from ..httpstore import HttpStore

    hs = HttpStore(db)
    sums = hs.summaries(lo, hi)
    if not sums:
        return ""
    # worst first (most failures, then slowest), at most max_charts charts
    ranked = sorted(sums, key=lambda u: (u.ok / max(1, u.checks), -(u.total_ms or 0.0)))
    chosen = ranked[: max(max_charts, 0)]
    bucket_s = pick_bucket_s(hi - lo, points=120)
    charts = [(u, hs.series(u.url, u.address, lo, hi, bucket_s), float(bucket_s)) for u in chosen]
    return http_section(sums, charts, lo, hi)


def _write_html(
    args: argparse.Namespace,
    store: Any,
    db: str,
    stats: list[dict[str, Any]],
    since: float | None,
    until: float | None,
    now: float,
) -> None:
    from ..errors import ConfigError
    from ..htmlreport import pick_bucket_s, render_report

    lo = since if since is not None else min(s["first_time"] for s in stats)
    hi = until if until is not None else max(now, max(s["last_time"] for s in stats))
    # Worst first: most loss, then slowest median.
    ranked = sorted(stats, key=lambda s: (-s["loss"], -(s["p50_ms"] or 0.0), s["target"]))
    chosen = ranked[: max(args.max_charts, 0)]
    from ..targets import address_order

    chosen.sort(key=lambda s: address_order(s["target"]))
    charts = []
    for s in chosen:
        # At least two probes a step, so a target probed every 10 s does not come out as
        # a dotted line of half-empty steps.
        n = s["sent"] + s["local_down"] + s["resolve_errors"]
        interval_s = (s["last_time"] - s["first_time"]) / (n - 1) if n > 1 else 0.0
        bucket_s = pick_bucket_s(max(hi - lo, 2 * interval_s * 360))
        charts.append((s, store.series(s["target"], lo, hi, bucket_s), bucket_s))
    page = render_report(
        db=db, since=lo, until=hi, stats=stats, charts=charts,
        left_out=len(stats) - len(chosen), extra_html=_http_html(db, lo, hi, args.max_charts),
    )  # fmt: skip
    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise ConfigError(f"--html: cannot write {args.html!r}: {e.strerror or e}") from None
    stream = sys.stderr if args.json else sys.stdout
    print(f"wrote {args.html} ({len(charts)} charts)", file=stream)
