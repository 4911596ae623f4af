"""A self-contained HTML report: one latency-over-time chart per target.

The picture SmokePing users know: the median RTT as a line coloured by packet loss,
"smoke" bands around it for the spread (min..max, p5..p95, p25..p75, darker towards
the middle), buckets with total loss shaded red, and a loss strip under the chart.
Inline SVG and CSS only: no scripts, no fonts or files from elsewhere, so the page
works offline and can be mailed.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import Any

# Median colour by loss share, as SmokePing's legend does (upper bound, colour, label).
LOSS_COLOURS: tuple[tuple[float, str, str], ...] = (
    (0.0, "#1a9e1a", "0"),
    (0.05, "#1f5fd6", "≤5%"),
    (0.20, "#9b30d9", "≤20%"),
    (0.50, "#e07b00", "≤50%"),
    (1.0, "#d42020", ">50%"),
)
NICE_BUCKETS_S: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip

WIDTH = 960
HEIGHT = 260
LEFT, RIGHT, TOP = 64, 16, 14
PLOT_H = 180
STRIP_H = 14  # loss strip under the plot


OUTAGE_COLOUR = "#ff8c00"
OUR_OUTAGE_COLOUR = "#3b6fb6"


def pick_bucket_s(span_s: float, points: int = 360) -> int:
    """A round bucket length giving about ``points`` buckets over ``span_s``."""
    want = span_s / points
    return next((b for b in NICE_BUCKETS_S if b >= want), NICE_BUCKETS_S[-1])


def loss_colour(loss: float) -> str:
    for bound, colour, _ in LOSS_COLOURS:
        if loss <= bound + 1e-12:
            return colour
    return LOSS_COLOURS[-1][1]


def _nice_ceiling(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= x:
            return m * e
    return 10 * e


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _time_ticks(t0: float, t1: float) -> tuple[list[float], str]:
    span = t1 - t0
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
             43200, 86400, 172800, 604800)  # fmt: skip
    step = next((s for s in steps if span / s <= 8), steps[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if span < 86400 else "%m-%d %H:%M"
    ticks: list[float] = []
    t = float(math.ceil(t0 / step) * step)
    while t <= t1:
        ticks.append(t)
        t += step
    return ticks, fmt


def _frame(title: str, ymax: float, w: float, ylabel: str) -> list[str]:
    """A chart's start: the svg element, the plot area, the y grid with its labels (six
    lines from 0 to ``ymax`` ms) and the y axis' name."""
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{PLOT_H}" fill="#fcfcfc" '
        'stroke="#999" stroke-width="0.5"/>',
    ]
    for i in range(6):
        v = ymax * i / 5
        y = TOP + PLOT_H - min(v, ymax) / ymax * PLOT_H
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="ax">{_fmt_ms(v)}</text>'
        )
    out.append(
        f'<text x="14" y="{TOP + PLOT_H / 2:.0f}" class="ax" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + PLOT_H / 2:.0f})">{ylabel}</text>'
    )
    return out


def chart_svg(
    series: Sequence[dict[str, Any]],
    t0: float,
    t1: float,
    bucket_s: float,
    title: str = "",
    outages: Sequence[Any] = (),
) -> str:
    """One chart; ``series`` as ResultStore.series(..., quantiles=True) gives it;
    ``outages`` (fastping.loss.Outage: the target's and our own network's) are marked
    as bands across the plot, with their times in a tooltip."""
    w = WIDTH - LEFT - RIGHT
    x_of = (lambda t: LEFT + (t - t0) / (t1 - t0) * w) if t1 > t0 else (lambda t: LEFT)
    maxes = sorted(p["max_ms"] for p in series if p.get("max_ms") is not None)
    meds = [p["p50_ms"] for p in series if p.get("p50_ms") is not None]
    # Scale to the 98th percentile of bucket maxima so one spike does not flatten the
    # picture (SmokePing does the same); taller bands are clipped at the top.
    top_ms = 0.0
    if maxes:
        top_ms = maxes[min(len(maxes) - 1, int(len(maxes) * 0.98))]
    if meds:
        top_ms = max(top_ms, max(meds) * 1.15)
    ymax = _nice_ceiling(top_ms)

    def y_of(ms: float) -> float:
        return TOP + PLOT_H - min(ms, ymax) / ymax * PLOT_H

    out = _frame(title, ymax, w, "RTT (ms)")
    # x ticks
    ticks, fmt = _time_ticks(t0, t1)
    base = TOP + PLOT_H + STRIP_H + 4
    for t in ticks:
        x = x_of(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PLOT_H}" stroke="#ececec"/>'
        )
        label = time.strftime(fmt, time.gmtime(t))
        out.append(
            f'<text x="{x:.1f}" y="{base + 12}" text-anchor="middle" class="ax">{label}</text>'
        )
    out.append(
        f'<text x="{LEFT + w}" y="{base + 28}" text-anchor="end" class="ax">'
        f"time (UTC), {int(bucket_s)} s per step</text>"
    )

    for o in outages:
        a = max(o.start, t0)
        b = min(o.end if o.end is not None else t1, t1)
        if b < a:
            continue
        ours = o.target is None
        colour = OUR_OUTAGE_COLOUR if ours else OUTAGE_COLOUR
        x0 = x_of(a)
        width = max(x_of(b) - x0, 1.5)
        dur = "ongoing" if o.end is None else f"{o.end - o.start:.3f} s"
        tip = (
            "our own network down" if ours else f"outage: {o.lost} probes lost"
        ) + f"\n{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(o.start))} UTC, {dur}"
        out.append(
            f'<rect class="{"ouroutage" if ours else "outage"}" x="{x0:.1f}" y="{TOP}" '
            f'width="{width:.2f}" height="{PLOT_H + STRIP_H + 2}" fill="{colour}" '
            f'fill-opacity="0.28"><title>{html.escape(tip)}</title></rect>'
        )
    smoke = (("min_ms", "max_ms", "#e3e3e3"), ("p5_ms", "p95_ms", "#c4c4c4"),
             ("p25_ms", "p75_ms", "#9c9c9c"))  # fmt: skip
    strip_y = TOP + PLOT_H + 2
    med: list[tuple[float, float, float, str]] = []  # (x0, x1, y, colour)
    for p in series:
        t = float(p["time"])
        x0 = x_of(max(t, t0))
        x1 = min(x_of(t + bucket_s), LEFT + w)
        width = max(x1 - x0, 0.6)
        loss = float(p["loss"]) if p["sent"] else 0.0
        if p["sent"] and p["received"] == 0:  # total loss: shade the whole height
            out.append(
                f'<rect x="{x0:.1f}" y="{TOP}" width="{width:.2f}" height="{PLOT_H}" '
                'fill="#d42020" fill-opacity="0.18"/>'
            )
        for lo_k, hi_k, colour in smoke:
            lo, hi = p.get(lo_k), p.get(hi_k)
            if lo is None or hi is None:
                continue
            y_hi, y_lo = y_of(hi), y_of(lo)
            out.append(
                f'<rect x="{x0:.1f}" y="{y_hi:.1f}" width="{width:.2f}" '
                f'height="{max(y_lo - y_hi, 0.8):.1f}" fill="{colour}"/>'
            )
        if loss > 0:
            h = max(loss * STRIP_H, 1.5)
            out.append(
                f'<rect x="{x0:.1f}" y="{strip_y + STRIP_H - h:.1f}" width="{width:.2f}" '
                f'height="{h:.1f}" fill="{loss_colour(loss)}"/>'
            )
        if p.get("p50_ms") is not None:
            med.append((x0, x0 + width, y_of(p["p50_ms"]), loss_colour(loss)))
        tip = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))} UTC\n"
            f"median {_fmt_ms(p.get('p50_ms'))} ms, min {_fmt_ms(p.get('min_ms'))}, "
            f"max {_fmt_ms(p.get('max_ms'))}\nloss {loss * 100:.1f}% "
            f"({p['sent'] - p['received']}/{p['sent']})"
        )
        out.append(
            f'<rect x="{x0:.1f}" y="{TOP}" width="{width:.2f}" height="{PLOT_H + STRIP_H + 2}" '
            f'fill="transparent"><title>{html.escape(tip)}</title></rect>'
        )
    # median: a short bar per bucket, joined to its neighbour when adjacent
    prev: tuple[float, float, float, str] | None = None
    for x0, x1, y, colour in med:
        if prev is not None and abs(prev[1] - x0) < 0.75:
            out.append(
                f'<line x1="{x0:.1f}" y1="{prev[2]:.1f}" x2="{x0:.1f}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
        out.append(
            f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        prev = (x0, x1, y, colour)
    out.append(
        f'<rect x="{LEFT}" y="{strip_y}" width="{w}" height="{STRIP_H}" fill="none" '
        'stroke="#bbb" stroke-width="0.5"/>'
    )
    out.append(f'<text x="{LEFT - 6}" y="{strip_y + 11}" text-anchor="end" class="ax">loss</text>')
    if not series:
        out.append(
            f'<text x="{LEFT + w / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle" '
            'class="ax">no results in this window</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


# the stacked parts of an HTTP check (httpstore.STACK), bottom to top, and their colours
HTTP_PARTS: tuple[tuple[str, str, str], ...] = (
    ("redirect", "#bdbdbd", "earlier redirects"),
    ("dns", "#8dd3c7", "dns"),
    ("connect", "#80b1d3", "connect"),
    ("tls", "#bebada", "tls"),
    ("send", "#fdb462", "send"),
    ("wait_network", "#b3de69", "wait: network RTT"),
    ("server", "#fb8072", "wait: server"),
    ("transfer", "#fccde5", "transfer"),
)


def http_chart_svg(
    series: Sequence[dict[str, Any]], t0: float, t1: float, bucket_s: float, title: str = ""
) -> str:
    """One URL's checks over time as stacked bars: per bucket, the median of each part
    (``HttpStore.series``), so the bar's height is about the median total and the red
    part is the server's own time. Buckets where a check failed get a red tick under
    the plot."""
    w = WIDTH - LEFT - RIGHT
    x_of = (lambda t: LEFT + (t - t0) / (t1 - t0) * w) if t1 > t0 else (lambda t: LEFT)
    totals = sorted(sum(v for v in p["parts"].values() if v) for p in series)
    top = totals[min(len(totals) - 1, int(len(totals) * 0.98))] if totals else 0.0
    ymax = _nice_ceiling(top * 1.1)

    def y_of(ms: float) -> float:
        return TOP + PLOT_H - min(ms, ymax) / ymax * PLOT_H

    out = _frame(title, ymax, w, "time (ms)")
    ticks, fmt = _time_ticks(t0, t1)
    base = TOP + PLOT_H + STRIP_H + 4
    for t in ticks:
        x = x_of(t)
        label = time.strftime(fmt, time.gmtime(t))
        out.append(
            f'<text x="{x:.1f}" y="{base + 12}" text-anchor="middle" class="ax">{label}</text>'
        )
    out.append(
        f'<text x="{LEFT + w}" y="{base + 28}" text-anchor="end" class="ax">'
        f"time (UTC), {int(bucket_s)} s per bar, medians of each part</text>"
    )
    strip_y = TOP + PLOT_H + 2
    for p in series:
        t = float(p["time"])
        x0 = x_of(max(t, t0))
        width = max(min(x_of(t + bucket_s), LEFT + w) - x0 - 0.3, 0.6)
        acc = 0.0
        tip = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))} UTC, "
               f"{p['ok']}/{p['checks']} ok"]  # fmt: skip
        for key, colour, label in HTTP_PARTS:
            v = p["parts"].get(key)
            if not v:
                continue
            y_hi, y_lo = y_of(acc + v), y_of(acc)
            acc += v
            tip.append(f"{label} {_fmt_ms(v)} ms")
            if y_lo - y_hi >= 0.05:
                out.append(
                    f'<rect x="{x0:.1f}" y="{y_hi:.2f}" width="{width:.2f}" '
                    f'height="{y_lo - y_hi:.2f}" fill="{colour}"/>'
                )
        if p["failed"]:
            tip.append("failed: " + ", ".join(p["failed"]))
            share = 1 - p["ok"] / p["checks"]
            h = max(share * STRIP_H, 1.5)
            out.append(
                f'<rect x="{x0:.1f}" y="{strip_y + STRIP_H - h:.1f}" width="{width:.2f}" '
                f'height="{h:.1f}" fill="#d42020"/>'
            )
        out.append(
            f'<rect x="{x0:.1f}" y="{TOP}" width="{width:.2f}" height="{PLOT_H + STRIP_H + 2}" '
            f'fill="transparent"><title>{html.escape(chr(10).join(tip))}</title></rect>'
        )
    out.append(
        f'<rect x="{LEFT}" y="{strip_y}" width="{w}" height="{STRIP_H}" fill="none" '
        'stroke="#bbb" stroke-width="0.5"/>'
    )
    out.append(
        f'<text x="{LEFT - 6}" y="{strip_y + 11}" text-anchor="end" class="ax">failed</text>'
    )
    if not series:
        out.append(
            f'<text x="{LEFT + w / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle" '
            'class="ax">no checks in this window</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def http_section(
    summaries: Sequence[Any],
    charts: Sequence[tuple[Any, Sequence[dict[str, Any]], float]],
    since: float,
    until: float,
) -> str:
    """The HTTP part of the page: a table per URL and address, then a stacked phase
    chart for each (``summaries``: ``HttpStore.summaries()``)."""
    esc = html.escape
    if not summaries:
        return ""
    rows = []
    for s in summaries:
        ph = s.phases_ms
        bad = ", ".join(f"{k} {n}" for k, n in sorted(s.outcomes.items()) if k != "ok")
        rows.append(
            f"<tr><td>{esc(s.url)}</td><td>{esc(str(s.address))}</td><td>{s.checks}</td>"
            f"<td>{s.ok}</td>"
            + "".join(f"<td>{_fmt_ms(ph.get(k))}</td>" for k in ("dns", "connect", "tls", "wait"))
            + f"<td>{_fmt_ms(s.rtt_ms)}</td><td>{_fmt_ms(s.server_ms)}</td>"
            f"<td>{_fmt_ms(s.total_ms)}</td><td>{esc(bad)}</td></tr>"
        )
    legend = (
        "".join(
            f'<span><b style="background:{c}"></b>{esc(lbl)}</span>' for _, c, lbl in HTTP_PARTS
        )
        + '<span><b style="background:#d42020"></b>failed checks</span>'
    )
    sections = []
    for s, series, bucket_s in charts:
        sections.append(
            f"<h2>{esc(s.url)} [{esc(str(s.address))}]</h2>"
            f'<p class="stats">{s.ok}/{s.checks} ok · median total {_fmt_ms(s.total_ms)} ms · '
            f"server {_fmt_ms(s.server_ms)} ms · network RTT {_fmt_ms(s.rtt_ms)} ms</p>"
            + http_chart_svg(series, since, until, bucket_s, title=f"phases of {s.url}")
        )
    return (
        "<h1>HTTP checks</h1>"
        '<p class="meta">medians over successful checks; server = wait for the first byte '
        "minus the network RTT of the same address (docs/http.md)</p>"
        "<table><tr><th>url</th><th>address</th><th>checks</th><th>ok</th><th>dns</th>"
        "<th>connect</th><th>tls</th><th>wait</th><th>rtt</th><th>server</th>"
        "<th>total (ms)</th><th>failures</th></tr>"
        + "".join(rows)
        + "</table>"
        + f'<p class="legend">{legend}</p>'
        + "".join(sections)
    )


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:24px;
max-width:1000px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 2px}
.meta{color:#666;margin:0 0 14px} .stats{color:#444;margin:0 0 4px;font-size:13px}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;text-align:right}
th{border-bottom:1px solid #999} td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f4f4f4}
svg .ax{font-size:11px;fill:#555}
.side{display:flex;gap:14px} .side>div{flex:1;min-width:0} .side svg{width:100%;height:auto}
h3{font-size:14px;margin:6px 0 2px;color:#333}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:18px;height:4px;vertical-align:middle;margin-right:4px}
.legend b{display:inline-block;width:14px;height:10px;vertical-align:middle;margin-right:4px}
"""


def _outage_table(outages: Sequence[Any], incidents: Sequence[Any]) -> str:
    esc = html.escape

    def when(t: float | None) -> str:
        return "ongoing" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    if not outages:
        return '<p class="meta">No outages in this window.</p>'
    rows = "".join(
        f'<tr class="{"ouroutage" if o.target is None else "outage"}">'
        f"<td>{esc(o.target) if o.target is not None else '<b>our own network</b>'}</td>"
        f"<td>{when(o.start)}</td><td>{when(o.end)}</td>"
        f"<td>{'-' if o.end is None else f'{o.end - o.start:.3f}'}</td><td>{o.lost}</td>"
        f"<td>{esc(o.rule)}</td></tr>"
        for o in sorted(outages, key=lambda o: o.start)
    )
    inc = "".join(
        f"<li>{esc(i.network)}: {len(i.targets)} targets, {when(i.start)} – {when(i.end)} UTC</li>"
        for i in incidents
    )
    return (
        "<h2>Outages</h2><table><tr><th>target</th><th>start (UTC)</th><th>end</th>"
        f"<th>duration (s)</th><th>lost</th><th>rule</th></tr>{rows}</table>"
        + (f"<p>Incidents (outages of one /24 starting together):</p><ul>{inc}</ul>" if inc else "")
    )


KIND_HEADINGS = {
    "icmp": "ICMP echo targets",
    "tcp": "TCP targets (received = open; closed = RST, in the loss; no answer = filtered)",
    "udp": "UDP targets (received = an answer; closed = ICMP port unreachable, in the loss; "
    "no answer = open|filtered)",
}


def render_report(
    *,
    db: str,
    since: float,
    until: float,
    stats: Sequence[dict[str, Any]],
    charts: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]], float]],
    left_out: int = 0,
    outages: Sequence[Any] = (),
    incidents: Sequence[Any] = (),
    extra_html: str = "",
) -> str:
    """The whole page: a summary table of ``stats`` and one chart per
    (stats, series, bucket_s). Stats from a shared store carry ``agent``: the table
    gets an agent column, and the charts of one target by several agents (adjacent
    in ``charts``) are drawn side by side; ``extra_html`` (the HTTP checks' section)
    at the end."""
    esc = html.escape
    agents = any("agent" in s for s in stats)

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    rows = []
    for s in stats:
        rows.append(
            "<tr>"
            f"<td>{esc(s['target'])}</td>"
            + (f"<td>{esc(str(s.get('agent', '')))}</td>" if agents else "")
            + f"<td>{s['sent']}</td><td>{s['received']}</td>"
            f"<td>{s['loss'] * 100:.1f}%</td><td>{_fmt_ms(s['min_ms'])}</td>"
            f"<td>{_fmt_ms(s['p50_ms'])}</td><td>{_fmt_ms(s['avg_ms'])}</td>"
            f"<td>{_fmt_ms(s['p95_ms'])}</td><td>{_fmt_ms(s['max_ms'])}</td>"
            f"<td>{_fmt_ms(s['jitter_ms'])}</td></tr>"
        )
    legend = "".join(
        f'<span><i style="background:{c}"></i>median, loss {esc(lbl)}</span>'
        for _, c, lbl in LOSS_COLOURS
    ) + (
        '<span><b style="background:#e3e3e3"></b>min–max</span>'
        '<span><b style="background:#c4c4c4"></b>p5–p95</span>'
        '<span><b style="background:#9c9c9c"></b>p25–p75</span>'
        '<span><b style="background:#d42020;opacity:.25"></b>no reply at all</span>'
        f'<span><b style="background:{OUTAGE_COLOUR};opacity:.4"></b>outage</span>'
        f'<span><b style="background:{OUR_OUTAGE_COLOUR};opacity:.4"></b>our network down</span>'
    )
    sections: list[tuple[str, str, str]] = []  # (target, agent, html)
    kinds = {str(s.get("kind", "icmp")) for s, _, _ in charts}
    last_kind = None
    for s, series, bucket_s in charts:
        kind = str(s.get("kind", "icmp"))
        if len(kinds) > 1 and kind != last_kind:
            # the charts come grouped by probe kind: a heading before each group
            sections.append(("", "", f'<h2 class="kind">{esc(KIND_HEADINGS.get(kind, kind))}</h2>'))
        last_kind = kind
        other = [
            f"{k.replace('_', ' ')} {s[k]}"
            for k in (
                "timeouts",
                "unreachable",
                "time_exceeded",
                "send_errors",
                "local_down",
                "resolve_errors",
                "duplicates",
                "late",
                "closed",
            )  # fmt: skip
            if s.get(k)
        ]
        line = (
            f"{esc(str(s['address']))} · sent {s['sent']}, received {s['received']}, "
            f"loss {s['loss'] * 100:.2f}% · rtt min/median/avg/max "
            f"{_fmt_ms(s['min_ms'])}/{_fmt_ms(s['p50_ms'])}/{_fmt_ms(s['avg_ms'])}/"
            f"{_fmt_ms(s['max_ms'])} ms · jitter {_fmt_ms(s['jitter_ms'])} ms"
            + (f" · {esc(', '.join(other))}" if other else "")
            + (" · percentiles estimated from minute rollups" if s.get("approximate") else "")
        )
        agent = str(s.get("agent", ""))
        of = f"{s['target']} from {agent}" if agent else str(s["target"])
        sections.append(
            (
                str(s["target"]),
                agent,
                f'<p class="stats">{line}</p>'
                + chart_svg(
                    series,
                    since,
                    until,
                    bucket_s,
                    title=f"latency of {of}",
                    outages=[o for o in outages if o.target in (None, s["target"])],
                ),
            )
        )
    parts = []
    i = 0
    while i < len(sections):
        j = i + 1
        while j < len(sections) and sections[j][0] == sections[i][0]:
            j += 1
        if not sections[i][0]:  # a kind's heading
            parts.append(sections[i][2])
            i = j
            continue
        head = f"<h2>{esc(sections[i][0])}</h2>"
        if agents:
            # one column per agent watching this target, side by side
            cols = "".join(
                f"<div><h3>from {esc(a)}</h3>{body}</div>" for _, a, body in sections[i:j]
            )
            parts.append(f'{head}<div class="side">{cols}</div>')
        else:
            parts.extend(head + body for _, _, body in sections[i:j])
        i = j
    more = (
        f'<p class="meta">{left_out} more targets are in the table but not charted '
        "(the charts show those with the most loss, then the slowest); use --target to "
        "chart others.</p>"
        if left_out
        else ""
    )
    agent_th = "<th>agent</th>" if agents else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fastping report: {esc(db)}</title>
<style>{_CSS}</style></head>
<body>
<h1>fastping report</h1>
<p class="meta">{esc(db)} · {when(since)} – {when(until)} UTC · {len(stats)} targets ·
generated {when(time.time())} UTC</p>
<table><tr><th>target</th>{agent_th}<th>sent</th><th>recv</th><th>loss</th><th>min</th><th>median</th>
<th>avg</th><th>p95</th><th>max</th><th>jitter (ms)</th></tr>
{"".join(rows)}</table>
<p class="legend">{legend}</p>
{_outage_table(outages, incidents)}
{more}
{"".join(parts)}
{extra_html}
</body></html>
"""
