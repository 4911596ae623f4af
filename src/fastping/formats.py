"""Per-target output lines made from a HostResult, in Python.

This is the reference the compiled formatters (``_pipeline.Formatter``) are
tested against byte for byte, and what ``fastping sweep`` uses for the rows the
core does not hold (a name that did not resolve, the system-ping fallback).
"""

from __future__ import annotations

import csv
import io
import json

from .results import HostResult

CSV_FIELDS = (
    "target",
    "address",
    "sent",
    "received",
    "loss",
    "min_ms",
    "avg_ms",
    "max_ms",
    "stddev_ms",
    "jitter_ms",
    "duplicates",
    "late",
    "timeouts",
    "unreachable",
    "time_exceeded",
    "send_errors",
    "ttl",
    "error",
)
CSV_HEADER = ",".join(CSV_FIELDS) + "\n"


def text_line(h: HostResult, count: int) -> str:
    """The text line of ``fastping sweep`` (fping-like), newline included."""
    name = h.target if h.target == h.address or h.address is None else f"{h.target} ({h.address})"
    if h.address is None:
        return f"{name} : {h.error}\n"
    if count == 1:
        if h.alive:
            return f"{name} is alive ({h.avg_ms:.3f} ms)\n"
        why = f" ({h.error})" if h.error else ""
        return f"{name} is unreachable{why}\n"
    stats = f"xmt/rcv/%loss = {h.sent}/{h.received}/{h.loss * 100:.0f}%"
    if h.alive:
        stats += f", min/avg/max = {h.min_ms:.3f}/{h.avg_ms:.3f}/{h.max_ms:.3f}"
    extra = []
    if h.duplicates:
        extra.append(f"{h.duplicates} dup")
    if h.late:
        extra.append(f"{h.late} late")
    if h.error:
        extra.append(h.error)
    return f"{name} : {stats}" + (f" [{', '.join(extra)}]" if extra else "") + "\n"


def json_line(h: HostResult) -> str:
    """One JSON object, newline included."""
    return json.dumps(h.to_dict()) + "\n"


def csv_line(h: HostResult) -> str:
    """One CSV row (columns CSV_FIELDS, the csv module's minimal quoting, ``\\n``)."""
    buf = io.StringIO()
    d = h.to_dict()
    csv.writer(buf, lineterminator="\n").writerow([d[k] for k in CSV_FIELDS])
    return buf.getvalue()


def target_line(h: HostResult) -> str:
    """The bare target (what -a / -u print, one a line, like fping)."""
    return h.target + "\n"
