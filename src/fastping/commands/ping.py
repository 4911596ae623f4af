"""``fastping ping``: ping one host, one line per reply, like ping(8)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes
    from .sweep import add_common

    p.add_argument("host", metavar="HOST", help="address or host name")
    p.add_argument(
        "-c", "--count", type=argtypes.count, default=4, metavar="N", help="probes (default 4)"
    )
    p.add_argument(
        "-i",
        "--interval",
        type=argtypes.seconds(0.0, 86400.0),
        default=1.0,
        metavar="S",
        help="seconds between probes (default 1)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN, EXIT_UNRESOLVED
    from ..errors import TargetError
    from ..targets import Address, Name, parse_target

    specs = parse_target(args.host)
    if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
        raise TargetError(f"ping takes one host, not a block: {args.host!r} (use fastping sweep)")
    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    family = {4: 2, 6: 10}.get(args.family or 0)
    res = api.sweep(
        [args.host],
        count=args.count,
        interval_s=args.interval,
        timeout_s=args.timeout,
        rate_pps=0.0,
        payload_size=args.size,
        ttl=args.ttl,
        tos=args.tos,
        dont_fragment=args.dont_fragment,
        mode=args.mode,
        family=family,
        collect_rtts=True,
    )
    h = res[0]
    if h.address is None:
        print(f"fastping: {h.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if args.json:
        d = h.to_dict()
        d["rtts_ms"] = [round(x, 4) for x in h.rtts_ms]
        print(json.dumps(d))
    else:
        print(f"PING {h.target} ({h.address}): {args.size} data bytes")
        for rtt in h.rtts_ms:
            print(f"reply from {h.address}: rtt={rtt:.3f} ms ttl={h.ttl}")
        print(f"--- {h.target} ping statistics ---")
        print(
            f"{h.sent} probes sent, {h.received} replies, {h.loss * 100:.1f}% loss"
            + (f", {h.duplicates} duplicates" if h.duplicates else "")
            + (f", {h.late} late" if h.late else "")
        )
        if h.alive:
            print(
                f"rtt min/avg/max/stddev/jitter = {h.min_ms:.3f}/{h.avg_ms:.3f}/{h.max_ms:.3f}/"
                f"{h.stddev_ms:.3f}/{(h.jitter_ms or 0):.3f} ms"
            )
        elif h.error:
            print(h.error)
    return EXIT_ALL_ALIVE if h.alive else EXIT_SOME_DOWN
