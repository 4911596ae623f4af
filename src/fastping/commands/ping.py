"""``fastping ping``: ping one host, one line per reply, like ping(8)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import HostResult, ProbeResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .sweep import add_common

    p.add_argument("host", metavar="HOST", help="address or host name")
    p.add_argument("-c", "--count", type=int, default=4, metavar="N", help="probes (default 4)")
    p.add_argument(
        "-i",
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between probes (default 1)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..cli import EXIT_UNRESOLVED
    from ..errors import TargetError
    from ..probe import UseSubprocess
    from ..targets import Address, Name, parse_target

    specs = parse_target(args.host)
    if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
        raise TargetError(f"ping takes one host, not a block: {args.host!r} (use fastping sweep)")
    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    family = {4: 2, 6: 10}.get(args.family or 0)
    opts: dict[str, Any] = dict(
        count=args.count,
        interval_s=args.interval,
        timeout_s=args.timeout,
        payload_size=args.size,
        ttl=args.ttl,
        tos=args.tos,
        dont_fragment=args.dont_fragment,
        family=family,
    )
    try:
        pinger = api.Pinger(args.host, mode=args.mode, **opts)
    except UseSubprocess:
        return _run_batch(args, opts)  # the system ping: its results come at the end
    if pinger.address is None:
        print(f"fastping: {pinger.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if not args.json:
        print(f"PING {pinger.target} ({pinger.address}): {args.size} data bytes", flush=True)
    try:
        for r in pinger:
            if args.json:
                print(json.dumps(r.to_dict()), flush=True)
            else:
                print(_probe_line(r, args.timeout), flush=True)
    except KeyboardInterrupt:
        pass  # like ping(8): Ctrl-C ends the run and prints the statistics so far
    finally:
        pinger.close()
    return _summary(args, pinger.stats())


def _probe_line(r: ProbeResult, timeout_s: float) -> str:
    from ..results import Outcome

    seq = f"icmp_seq={r.seq}"
    if r.outcome in (Outcome.REPLY, Outcome.DUPLICATE, Outcome.LATE):
        tail = {Outcome.DUPLICATE: " (DUP!)", Outcome.LATE: " (late)"}.get(r.outcome, "")
        ttl = f" ttl={r.ttl}" if r.ttl else ""
        rtt = f" rtt={r.rtt_ms:.3f} ms" if r.rtt_ms is not None else ""
        return f"reply from {r.address}: {seq}{rtt}{ttl}{tail}"
    if r.outcome is Outcome.TIMEOUT:
        return f"no reply from {r.address}: {seq} (timeout after {timeout_s:g} s)"
    if r.outcome is Outcome.SEND_ERROR:
        why = os.strerror(r.errno) if r.errno else "send failed"
        return f"send to {r.address} failed: {seq}: {why}"
    kind = "time exceeded" if r.outcome is Outcome.TIME_EXCEEDED else "unreachable"
    return f"{kind} from {r.router or '?'}: {seq} (type {r.icmp_type} code {r.icmp_code})"


def _summary(args: argparse.Namespace, h: HostResult) -> int:
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN

    if args.json:
        d = h.to_dict()
        d["rtts_ms"] = [round(x, 4) for x in h.rtts_ms]
        print(json.dumps(d), flush=True)
    else:
        print(f"--- {h.target} ping statistics ---")
        print(
            f"{h.sent} probes sent, {h.received} replies, {h.loss * 100:.1f}% loss"
            + (f", {h.duplicates} duplicates" if h.duplicates else "")
            + (f", {h.late} late" if h.late else "")
        )
        if h.alive:
            print(
                f"rtt min/avg/max/stddev/jitter = {h.min_ms:.3f}/{h.avg_ms:.3f}/{h.max_ms:.3f}/"
                f"{h.stddev_ms:.3f}/{(h.jitter_ms or 0):.3f} ms",
                flush=True,
            )
        elif h.error:
            print(h.error, flush=True)
    return EXIT_ALL_ALIVE if h.alive else EXIT_SOME_DOWN


def _run_batch(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    """The system ping (subprocess mode): every line comes when it has finished."""
    from .. import api
    from ..cli import EXIT_UNRESOLVED

    res = api.sweep([args.host], rate_pps=0.0, mode="subprocess", collect_rtts=True, **opts)
    h = res[0]
    if h.address is None:
        print(f"fastping: {h.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if not args.json:
        print(f"PING {h.target} ({h.address}): {args.size} data bytes")
        for rtt in h.rtts_ms:
            print(f"reply from {h.address}: rtt={rtt:.3f} ms ttl={h.ttl}")
    return _summary(args, h)
