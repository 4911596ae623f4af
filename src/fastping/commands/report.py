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
    "kind", "port", "closed",
)  # fmt: skip
# the heading of each probe kind's table (a report of ICMP targets only has none)
KIND_TITLES: dict[str, str] = {
    "icmp": "ICMP echo",
    "tcp": "TCP SYN (RECV = open; CLOSED = answered with a RST, counted in the loss; "
    "no answer = filtered)",
    "udp": "UDP (RECV = an answer from the port; CLOSED = ICMP port unreachable, counted "
    "in the loss; no answer = open|filtered)",
    "dns": "DNS (RECV = answers of any rcode, by rcode after it; TC = truncated answers; "
    "no answer = timeout)",
}
# a DNS target's --json line has these too (after JSON_KEYS): its question and server,
# and its answers by rcode name (NOERROR, NXDOMAIN, SERVFAIL, ...) and TC
DNS_KEYS: tuple[str, ...] = ("server", "name", "type", "rcodes", "truncated")
# the rcodes with a column of their own in the DNS table (others: OTHER)
DNS_COLUMNS: tuple[str, ...] = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")
# from a shared (PostgreSQL) store, after those
SHARED_KEYS: tuple[str, ...] = ("agent", "labels")


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
        "--db", metavar="PATH|URL", default=None,
        help="the SQLite file `fastping monitor` wrote, or the shared PostgreSQL database "
        "(postgresql://...) many agents write (default: store.url, else store.path of "
        "--config, else fastping.db)",
    )  # fmt: skip
    parser.add_argument(
        "--agent", metavar="NAME", action="append", default=None,
        help="shared database: only this agent's results (repeat for more)",
    )  # fmt: skip
    parser.add_argument(
        "--label", metavar="KEY=VALUE", action="append", default=None, type=_label_arg,
        help="shared database: only targets with this configured label (repeat: all of them)",
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
        "--outages", action="store_true",
        help="list only the outages (targets' and our own network's) and the incidents "
        "that group them; with --json one object per line",
    )  # fmt: skip
    parser.add_argument(
        "--paths", action="store_true",
        help="list only the path changes the monitor's traces saw (--trace-every): time, "
        "target, old path -> new path; with --json one object per line",
    )  # fmt: skip
    parser.add_argument(
        "--incident-window", metavar="S", type=float, default=10.0,
        help="outages of targets in one /24 (/64) starting within S seconds of each other "
        "are one incident (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--max-patterns", metavar="N", type=int, default=1000,
        help="loss patterns and RFC 3550 / RFC 3393 jitter (read record by record) for at "
        "most N targets, those with the most loss first; the others get null (default 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--max-charts", metavar="N", type=int, default=100,
        help="chart at most N targets in --html, those with the most loss first (default 100)",
    )  # fmt: skip


def _label_arg(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. site=lab")
    return k.strip(), v.strip()


def _round(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in JSON_KEYS + tuple(k for k in (*SHARED_KEYS, *DNS_KEYS) if k in d):
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


def _kind_order(kind: str) -> int:
    from ..targets import PROBE_KINDS

    return PROBE_KINDS.index(kind) if kind in PROBE_KINDS else len(PROBE_KINDS)


def _tables(stats: list[dict[str, Any]]) -> str:
    """The table of ``_table``, one per probe kind (with a heading) when there is more
    than ICMP: a TCP target's CLOSED count has a column of its own."""
    kinds = sorted({s["kind"] for s in stats}, key=_kind_order)
    if kinds == ["icmp"]:
        return _table(stats)
    parts = []
    for k in kinds:
        these = [s for s in stats if s["kind"] == k]
        parts.append(f"{KIND_TITLES.get(k, k.upper())}: {len(these)} targets")
        parts.append(_dns_table(these) if k == "dns" else _table(these, closed=k != "icmp"))
    return "\n".join(parts)


def _dns_table(stats: list[dict[str, Any]]) -> str:
    """The DNS targets' table: server, name and type, then the answers by rcode and TC
    beside the counts (a DNS target has no closed ports: ICMP errors are UNREACH)."""
    shared = any("agent" in s for s in stats)
    head = ("SERVER", *(("AGENT",) if shared else ()), "NAME", "TYPE", "SENT", "RECV",
            *(c[:6] for c in DNS_COLUMNS), "OTHER", "TC", "TIMEOUT", "UNREACH", "LOSS",
            "MIN", "AVG", "MAX", "P50", "P95", "P99")  # fmt: skip
    rows = []
    for s in stats:
        rc = s.get("rcodes") or {}
        rows.append((
            s.get("server", s["target"]), *((str(s["agent"]),) if shared else ()),
            s.get("name", ""), s.get("type", ""), str(s["sent"]), str(s["received"]),
            *(str(rc.get(c, 0)) for c in DNS_COLUMNS),
            str(sum(n for c, n in rc.items() if c not in DNS_COLUMNS)),
            str(s.get("truncated", 0)), str(s["timeouts"]), str(s["unreachable"]),
            f"{s['loss'] * 100:.1f}%", _ms(s["min_ms"]), _ms(s["avg_ms"]), _ms(s["max_ms"]),
            _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["p99_ms"]),
        ))  # fmt: skip
    left = 4 if shared else 3
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r))
        .rstrip()
        for r in [head, *rows]
    )


def _table(stats: list[dict[str, Any]], closed: bool = False) -> str:
    """One row per target; from a shared store one per (target, agent), the agents of
    one target next to each other, with an AGENT column."""
    shared = any("agent" in s for s in stats)
    head: tuple[str, ...] = ("TARGET", "ADDRESS", "SENT", "RECV", "LOSS", "MIN", "AVG", "MAX",
                             "P50", "P95", "P99", "JITTER")  # fmt: skip
    if closed:
        head = (*head[:4], "CLOSED", *head[4:])
    if shared:
        head = (head[0], "AGENT", *head[1:])
    rows = [
        (
            s["target"],
            *((str(s["agent"]),) if shared else ()),
            str(s["address"]),
            str(s["sent"]),
            str(s["received"]),
            *((str(s.get("closed", 0)),) if closed else ()),
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
        left = 3 if shared else 2
        cells = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# Loss-pattern keys each --json line gets after JSON_KEYS (fastping.loss defines them).
PATTERN_KEYS: tuple[str, ...] = (
    "rfc3550_jitter_ms", "ipdv_p50_ms", "ipdv_p95_ms", "ipdv_p99_ms", "loss_pattern", "outages",
)  # fmt: skip


def _when(t: float | None) -> str:
    if t is None:
        return "ongoing"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _patterns(
    store: Any,
    stats: list[dict[str, Any]],
    since: float | None,
    until: float | None,
    outages: list[Any],
    limit: int,
) -> None:
    """Add the loss pattern (fastping.loss) of each target's raw records to its stats:
    of the ``limit`` targets with the most loss (the analysis reads every record in
    Python; 10,000 targets x an hour would be 36 million)."""
    from ..loss import LossTracker, ipdv_quantiles, rfc3550_jitter

    ranked = sorted(stats, key=lambda s: (-s["loss"], s["target"]))[:limit]
    logs = store.probe_log(since, until, [s["target"] for s in ranked]) if ranked else {}
    by_target: dict[str, list[Any]] = {}
    for o in outages:
        if o.target is not None:
            by_target.setdefault(o.target, []).append(o)
    for s in stats:
        cols = logs.get(s["target"])
        s["outages"] = [o.to_dict() for o in by_target.get(s["target"], [])]
        if cols is None:
            s.update({k: None for k in PATTERN_KEYS if k != "outages"})
            continue
        t, rtt, seq, code = cols
        tr = LossTracker()
        tr.feed(s["target"], t, rtt, seq, code, 0.0)
        tr.settle()
        st = tr.stats(s["target"])
        s["loss_pattern"] = None if st is None else st.to_dict()
        s["rfc3550_jitter_ms"] = rfc3550_jitter(rtt)
        s.update(ipdv_quantiles(seq, rtt))


def _outage_lines(outages: list[Any], incidents: list[Any], limit: int | None = None) -> list[str]:
    """The outage list (the first ``limit`` when given) and the incidents."""
    lines = []
    ours = [o for o in outages if o.target is None]
    theirs = [o for o in outages if o.target is not None]
    lines.append(f"outages: {len(theirs)} of targets, {len(ours)} of our own network "
                 "(ours are never counted as a target's)")  # fmt: skip
    shown = sorted(outages, key=lambda o: o.start)
    if limit is not None and len(shown) > limit:
        shown = shown[:limit]
    for o in shown:
        dur = "-" if o.duration_s is None else f"{o.duration_s:.3f} s"
        who = o.target if o.target is not None else "OUR NETWORK"
        lines.append(f"  {who:<24} {_when(o.start)} – {_when(o.end)}  {dur:>12}  "
                     f"lost {o.lost}  ({o.rule})")  # fmt: skip
    if len(shown) < len(outages):
        lines.append(f"  ... {len(outages) - len(shown)} more: fastping report --outages")
    for inc in incidents:
        lines.append(
            f"incident {inc.network}: {len(inc.targets)} targets from {_when(inc.start)} "
            f"to {_when(inc.end)}: {', '.join(inc.targets[:8])}"
            + (", ..." if len(inc.targets) > 8 else "")
        )
    return lines


def _pattern_table(stats: list[dict[str, Any]]) -> str:
    head = ("TARGET", "BURSTS", "MEAN", "MAX", "GILBERT_P", "GILBERT_R", "BURST_DENS",
            "GAP_DENS", "J3550", "IPDV50", "IPDV99", "OUTAGES")  # fmt: skip

    def f(v: Any, d: int = 4) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    rows = []
    for s in stats:
        lp = s.get("loss_pattern") or {}
        rows.append((
            s["target"], str(lp.get("bursts", "-")), f(lp.get("mean_burst"), 2),
            str(lp.get("max_burst", "-")), f(lp.get("gilbert_p")), f(lp.get("gilbert_r")),
            f(lp.get("burst_density"), 3), f(lp.get("gap_density"), 4),
            f(s.get("rfc3550_jitter_ms"), 3), f(s.get("ipdv_p50_ms"), 3),
            f(s.get("ipdv_p99_ms"), 3), str(len(s.get("outages") or [])),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        ).rstrip()
        for r in [head, *rows]
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..store import ResultStore, is_postgres_url

    db = args.db
    if db is None and args.config:
        from ..config import load_config

        sc = load_config(args.config).store
        db = sc.url or sc.path
    db = db or "fastping.db"
    if args.html:
        _check_writable(args.html)  # before anything is printed, not after
    shared = is_postgres_url(db)
    store: Any
    if shared:
        try:
            from ..store_pg import PgResultStore, redact
        except ImportError:
            raise ConfigError(
                "a postgresql:// --db needs psycopg 3: pip install 'fastping[postgresql]'"
            ) from None
        store = PgResultStore(db)
        db = redact(db)
    else:
        if args.agent or args.label:
            raise ConfigError(
                "--agent / --label filter a shared PostgreSQL store (--db postgresql://...); "
                f"{db!r} is one agent's SQLite file and keeps no agents or labels"
            )
        store = ResultStore(db)
    try:
        return _report(args, store, db, shared)
    finally:
        if shared:
            store.close_reader()


def _report(args: argparse.Namespace, store: Any, db: str, shared: bool) -> int:
    import json

    from ..errors import ConfigError
    from ..loss import group_incidents

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
    if shared:
        from ..targets import address_order

        labels = dict(args.label) if args.label else None
        stats = store.all_stats(since, until, targets=args.target, agents=args.agent,
                                labels=labels)  # fmt: skip
        if args.agent and not stats:
            have = store.agents()
            unknown = [a for a in args.agent if a not in have]
            if unknown:
                raise ConfigError(
                    f"no agent {', '.join(map(repr, unknown))} in {db!r}; agents there: "
                    + (", ".join(have[:20]) or "none")
                )
        # every agent's view of a target next to the others'
        stats.sort(key=lambda s: (address_order(s["target"]), s["agent"]))
    elif args.target:
        stats = [s for t in args.target if (s := store.target_stats(t, since, until))]
    else:
        from ..targets import address_order

        stats = sorted(store.all_stats(since, until), key=lambda s: address_order(s["target"]))
    _add_kinds(store, stats)
    _add_dns(store, stats, since, until)
    window = "all" if since is None else args.since
    outages = store.outages(since, until, args.target)
    incidents = group_incidents(outages, window_s=args.incident_window)
    if args.outages:
        if args.json:
            for o in outages:
                print(json.dumps(o.to_dict()))
            for inc in incidents:
                print(json.dumps({"incident": inc.to_dict()}))
        else:
            print("\n".join(_outage_lines(outages, incidents)))
        return 0
    if args.paths:
        _print_path_changes(store, since, until, args.target, args.json, shared, args.agent)
        return 0
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

    _patterns(store, stats, since, until, outages, max(args.max_patterns, 0))
    paths = _path_summary(store, since, until, args.target, args.agent if shared else None)
    if args.json:
        for s in stats:
            d = _round(s)
            for k in PATTERN_KEYS:
                v = s.get(k)
                d[k] = round(v, 4) if isinstance(v, float) else v
            if paths is not None:  # the monitor traced (--trace-every)
                p = paths.get(s["target"])
                d["hop_count"] = None if p is None else p["hop_count"]
                d["path_changes"] = 0 if p is None else p["changes"]
            print(json.dumps(d))
    else:
        lo = since if since is not None else min(s["first_time"] for s in stats)
        hi = until if until is not None else now
        agents = f" from {len({s['agent'] for s in stats})} agents" if shared else ""
        print(
            f"{db}: {len({s['target'] for s in stats})} targets{agents}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(lo))} – "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(hi))} UTC (RTTs in ms)"
        )
        print(_tables(stats))
        if any((s.get("loss_pattern") or {}).get("lost") for s in stats):
            print(
                "loss patterns (runs of consecutive losses; Gilbert p = P(lost | received "
                "before), r = P(received | lost before); RFC 3611 densities with Gmin 16; "
                "J3550 = RFC 3550 jitter, IPDV = RFC 3393 |delay variation| p50/p99, ms):"
            )
            print(_pattern_table([s for s in stats if (s.get("loss_pattern") or {}).get("lost")]))
        print("\n".join(_outage_lines(outages, incidents, limit=50)))
        if paths:
            print("\n".join(_path_lines(paths)))
        if shared:
            _print_timing(store.read_timing(since, until, args.agent))
        else:
            _print_send_timing(db, since, until)
        if any(s["approximate"] for s in stats):
            print("(percentiles of ranges older than the retention window are estimated "
                  "from per-minute rollups)")  # fmt: skip
        _print_http(db, since, until)
    if args.html:
        _write_html(args, store, db, stats, since, until, now, outages, incidents)
    return 0


def _path_text(path: list[str | None]) -> str:
    return " ".join("*" if a is None else a for a in path) or "-"


def _path_summary(
    store: Any,
    since: float | None,
    until: float | None,
    targets: list[str] | None,
    agents: list[str] | None,
) -> dict[str, dict[str, Any]] | None:
    """Per traced target: its latest trace (up to ``until``) and its path changes in
    the window; None when the monitor never traced (no traces in the store)."""
    kw = {"agents": agents} if agents else {}
    latest: dict[str, dict[str, Any]] = store.latest_traces(until, targets, **kw)
    if not latest:
        return None
    changes: dict[str, int] = {}
    for c in store.path_changes(since, until, targets, **kw):
        changes[c["target"]] = changes.get(c["target"], 0) + 1
    for t, p in latest.items():
        p["changes"] = changes.get(t, 0)
    return latest


def _path_lines(paths: dict[str, dict[str, Any]]) -> list[str]:
    """One line per traced target: hops in its latest trace, path changes in the
    window, the latest path."""
    from ..targets import address_order

    lines = [f"paths: {len(paths)} targets traced, "
             f"{sum(p['changes'] for p in paths.values())} path changes in the window "
             "(fastping report --paths lists them; * = no answer from that hop)"]  # fmt: skip
    for t in sorted(paths, key=address_order):
        p = paths[t]
        hops = "not reached" if p["hop_count"] is None else f"{p['hop_count']} hops"
        lines.append(f"  {t:<24} {hops:>11}  changes {p['changes']:<3}  traced "
                     f"{_when(p['time'])}  {_path_text(p['path'])}")  # fmt: skip
    return lines


def _print_path_changes(
    store: Any,
    since: float | None,
    until: float | None,
    targets: list[str] | None,
    as_json: bool,
    shared: bool,
    agents: list[str] | None,
) -> None:
    import json

    kw = {"agents": agents} if shared and agents else {}
    changes = store.path_changes(since, until, targets, **kw)
    if as_json:
        for c in changes:
            c["time"] = round(c["time"], 3)
            print(json.dumps(c))
        return
    print(f"path changes: {len(changes)} (* = no answer from that hop)")
    for c in changes:
        who = c["target"] + (f" [{c['agent']}]" if "agent" in c else "")
        old = "not reached" if c["old_hops"] is None else f"{c['old_hops']} hops"
        new = "not reached" if c["new_hops"] is None else f"{c['new_hops']} hops"
        print(f"  {_when(c['time'])}  {who}: {_path_text(c['old'])} ({old}) -> "
              f"{_path_text(c['new'])} ({new})")  # fmt: skip


def _add_dns(
    store: Any, stats: list[dict[str, Any]], since: float | None, until: float | None
) -> None:
    """A DNS target's server, question and answers by rcode (store.dns_answers), in its
    stats; from a shared store each agent's own (its answers are keyed (target, agent))."""
    from ..targets import split_kind

    dns = [s for s in stats if s["kind"] == "dns"]
    if not dns:
        return
    answers = store.dns_answers(since, until) if hasattr(store, "dns_answers") else {}
    for s in dns:
        kt = split_kind(s["target"])
        h = f"[{kt.host}]" if ":" in kt.host else kt.host
        s["server"], s["name"], s["type"] = f"{h}:{kt.port}", kt.qname, kt.qtype
        a = answers.get((s["target"], s["agent"]) if "agent" in s else s["target"])
        if a is not None:
            s["rcodes"], s["truncated"] = a["rcodes"], a["truncated"]


def _add_kinds(store: Any, stats: list[dict[str, Any]]) -> None:
    """Each target's probe kind and port (the store keeps them with the target), in
    its stats; sorted by kind, the order within a kind kept."""
    from ..store import kind_port

    kinds = store.target_kinds()
    for s in stats:
        s["kind"], s["port"] = kinds.get(s["target"]) or kind_port(s["target"])
        s.setdefault("closed", 0)
    stats.sort(key=lambda s: _kind_order(s["kind"]))


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
        _print_timing(read_windows_with_guard(db, since, until))
    except sqlite3.Error:
        return


def _print_timing(got: tuple[Any, float, float]) -> None:
    lat, factor, slowed_s = got
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
        print(
            "  ".join(
                c.ljust(w) if i < 2 or i == len(head) - 1 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )


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
    outages: list[Any] | None = None,
    incidents: list[Any] | None = None,
) -> None:
    from ..errors import ConfigError
    from ..htmlreport import pick_bucket_s, render_report

    lo = since if since is not None else min(s["first_time"] for s in stats)
    hi = until if until is not None else max(now, max(s["last_time"] for s in stats))
    # Worst first: most loss, then slowest median.
    ranked = sorted(stats, key=lambda s: (-s["loss"], -(s["p50_ms"] or 0.0), s["target"]))
    chosen = ranked[: max(args.max_charts, 0)]
    from ..targets import address_order

    chosen.sort(
        key=lambda s: (_kind_order(s["kind"]), address_order(s["target"]), s.get("agent", ""))
    )
    charts = []
    for s in chosen:
        # At least two probes a step, so a target probed every 10 s does not come out as
        # a dotted line of half-empty steps.
        n = s["sent"] + s["local_down"] + s["resolve_errors"]
        interval_s = (s["last_time"] - s["first_time"]) / (n - 1) if n > 1 else 0.0
        bucket_s = pick_bucket_s(max(hi - lo, 2 * interval_s * 360))
        kw = {"agent": s["agent"]} if "agent" in s else {}
        charts.append((s, store.series(s["target"], lo, hi, bucket_s, **kw), bucket_s))
    page = render_report(
        db=db, since=lo, until=hi, stats=stats, charts=charts,
        left_out=len(stats) - len(chosen), outages=outages or [], incidents=incidents or [],
        # the HTTP checks' table lives in the SQLite file beside the results
        extra_html=(
            "" if db.startswith(("postgresql://", "postgres://"))
            else _http_html(db, lo, hi, args.max_charts)
        ),
    )  # fmt: skip
    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise ConfigError(f"--html: cannot write {args.html!r}: {e.strerror or e}") from None
    stream = sys.stderr if args.json else sys.stdout
    print(f"wrote {args.html} ({len(charts)} charts)", file=stream)
