"""``fastping mtu``: the path MTU of every target at once, black holes located.

One line per target (``--json``: one object per target per line). Exit 0 when
every target's path MTU was found and no black hole was seen, 1 when a black hole
was, 2 when some target could not be measured (no answer, no route, bad name).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes
    from .pathargs import add_path_arguments

    add_path_arguments(p, "seconds each round waits after its last probe (default 1)")
    p.add_argument(
        "--tries",
        type=argtypes.int_range(1, 16),
        default=2,
        metavar="N",
        help="probes per size and target; any answer passes the size (default 2)",
    )
    p.add_argument(
        "-m",
        "--max-ttl",
        type=argtypes.int_range(1, 64),
        default=30,
        metavar="N",
        help="highest TTL / hop limit used to locate a black hole (default 30)",
    )
    p.add_argument(
        "--max-mtu",
        type=argtypes.int_range(68, 65028),
        default=None,
        metavar="BYTES",
        help="probe no bigger than this (default: the local interface's MTU)",
    )
    p.add_argument(
        "--retries",
        type=argtypes.int_range(0, 10),
        default=3,
        metavar="N",
        help="more rounds of TTL-limited probes for hops that did not answer (default 3)",
    )
    p.add_argument(
        "--retry-pause",
        type=argtypes.seconds(0.0, 60.0),
        default=1.0,
        metavar="S",
        help="seconds between those rounds, for routers that rate-limit their ICMP "
        "errors (default 1)",
    )
    p.add_argument(
        "--no-locate",
        action="store_true",
        help="report black holes without locating them (no TTL-limited probes)",
    )


def run(args: argparse.Namespace) -> int:
    from ..pmtu import path_mtu
    from .pathargs import family_of, path_targets

    targets = path_targets(args, "mtu")
    fam = family_of(args)
    res = path_mtu(
        targets,
        family=fam,
        mode=args.mode,
        tries=args.tries,
        timeout_s=args.timeout,
        rate_pps=args.rate,
        max_ttl=args.max_ttl,
        locate=not args.no_locate,
        retries=args.retries,
        retry_pause_s=args.retry_pause,
        max_mtu=args.max_mtu,
    )
    out = sys.stdout
    for r in res.results:
        text = json.dumps(r.to_json(), separators=(",", ":")) if args.json else _line(r)
        out.write(text + "\n")
    if not args.json:
        sent = int(res.totals.get("sent", 0))
        holes = sum(1 for r in res.results if r.black_hole)
        out.write(
            f"{len(res.results)} targets, {holes} black hole{'s' if holes != 1 else ''}, "
            f"{sent} probes in {res.elapsed_s:.3f} s ({res.mode or 'no'} ICMP socket)\n"
        )
    errors = [r for r in res.results if r.error]
    if errors:
        return 2
    return 1 if any(r.black_hole for r in res.results) else 0


def _line(r: Any) -> str:
    name = r.target if r.target == r.address else f"{r.target} ({r.address})"
    if r.error:
        return f"{name}: {r.error}"
    how = {
        "ptb": f"named by {r.reported_by}",
        "search": "found by probing, no router named it",
        "local": f"the local MTU of {r.interface}",
        "max": "at least: no bigger probe was sent",
    }.get(r.method, r.method or "")
    line = f"{name}: path MTU {r.pmtu} ({how})"
    if r.black_hole:
        big = f"{r.pmtu + 1}-byte probes"
        at = "the source" if r.hole_hop == 0 else f"hop {r.hole_hop} {r.hole_address}"
        nxt = f"hop {r.hole_next_hop} {r.hole_next_address}"
        if r.hole_hop is None:
            line += f"; BLACK HOLE: {big} vanish (not located)"
        elif r.hole_exact:
            line += f"; BLACK HOLE at {at}: {big} pass it and vanish after it ({nxt} answers "
            line += "only small ones)"
        elif r.hole_next_hop is None:
            line += f"; BLACK HOLE after {at}: {big} pass it, nothing past it answered"
        else:
            line += f"; BLACK HOLE between {at} and {nxt}: {big} pass the first, not the last"
        if r.silent_hops:
            hops = ", ".join(map(str, r.silent_hops))
            line += f"; no answer from hop{'s' if len(r.silent_hops) > 1 else ''} {hops} "
            line += "(silent, or rate-limited)"
    return line
