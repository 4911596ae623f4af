"""``fastping sweep``: probe many targets and print one line per target."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add_common(p: argparse.ArgumentParser) -> None:
    from . import argtypes

    p.add_argument(
        "--timeout",
        "-t",
        type=argtypes.timeout,
        default=1.0,
        metavar="S",
        help="seconds to wait for each reply (default 1, at most 3600)",
    )
    p.add_argument(
        "--size",
        "-b",
        type=argtypes.payload,
        default=56,
        metavar="BYTES",
        help="ICMP payload bytes (default 56, 16..65000)",
    )
    p.add_argument("--ttl", type=argtypes.ttl, default=None, help="IP TTL / hop limit (1..255)")
    p.add_argument(
        "--tos", type=argtypes.tos, default=None, help="IP ToS / traffic class byte (0..255)"
    )
    p.add_argument("--dont-fragment", "-M", action="store_true", help="set don't-fragment")
    p.add_argument(
        "--mode",
        choices=("auto", "raw", "dgram", "subprocess"),
        default="auto",
        help="socket mode (default auto: raw, then unprivileged dgram, then ping)",
    )
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes

    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="address, host name, CIDR block (10.0.0.0/24) or range (10.0.0.1-10.0.0.9)",
    )
    p.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="read targets from FILE, one per line ('-' for stdin)",
    )
    p.add_argument(
        "-c", "--count", type=argtypes.count, default=1, metavar="N", help="probes per target"
    )
    p.add_argument(
        "-p",
        "--period",
        type=argtypes.seconds(0.0, 86400.0),
        default=1.0,
        metavar="S",
        help="seconds between rounds when -c > 1 (default 1)",
    )
    p.add_argument(
        "--rate",
        "-r",
        type=argtypes.rate,
        default=None,
        metavar="PPS",
        help="total probes per second (default 1000; 0 = as fast as possible)",
    )
    p.add_argument(
        "--workers",
        "-w",
        type=argtypes.int_range(0, 256),
        default=0,
        metavar="N",
        help="sending threads, each with its own socket (default 0: one per usable core, "
        "at most 8, for sweeps big and fast enough to need them)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.add_argument("-a", "--alive", action="store_true", help="print only targets that answered")
    p.add_argument(
        "-u", "--unreachable", action="store_true", help="print only targets that did not answer"
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN, EXIT_UNRESOLVED
    from ..errors import TargetError
    from ..targets import read_targets_file

    targets: list[str] = list(args.targets)
    for f in args.file:
        targets.extend(read_targets_file(f))
    if not targets:
        raise TargetError("no targets: name some (fastping sweep 127.0.0.1 ::1) or use -f FILE")
    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    if args.timeout <= 0:
        raise TargetError(f"--timeout must be > 0, not {args.timeout}")
    rate = api.DEFAULT_RATE_PPS if args.rate is None else args.rate
    family = {4: 2, 6: 10}.get(args.family or 0)
    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    try:
        res = api.sweep(
            targets,
            count=args.count,
            interval_s=args.period,
            timeout_s=args.timeout,
            rate_pps=rate,
            payload_size=args.size,
            ttl=args.ttl,
            tos=args.tos,
            dont_fragment=args.dont_fragment,
            mode=args.mode,
            workers=args.workers,
            family=family,
            on_progress=progress.update if progress else None,
        )
    finally:
        if progress:
            progress.close()
    out = sys.stdout
    alive = unresolved = 0
    lines: list[str] = []
    write = lines.append
    for h in res:
        if h.alive:
            alive += 1
        if h.error and h.address is None:
            unresolved += 1
        if args.quiet or (args.alive and not h.alive) or (args.unreachable and h.alive):
            continue
        write(json.dumps(h.to_dict()) if args.json else _text_line(h, args.count))
        if len(lines) >= 4096:
            out.write("\n".join(lines) + "\n")
            lines.clear()
    if lines:
        out.write("\n".join(lines) + "\n")
    summary = res.summary_with(alive=alive)
    if args.json:
        if args.quiet:
            out.write(json.dumps(summary) + "\n")
    else:
        stream = out if args.quiet else sys.stderr
        stream.write(_text_summary(summary))
    out.flush()
    if unresolved:
        return EXIT_UNRESOLVED
    return EXIT_ALL_ALIVE if alive == len(res) else EXIT_SOME_DOWN


def _text_line(h: Any, count: int) -> str:
    name = h.target if h.target == h.address or h.address is None else f"{h.target} ({h.address})"
    if h.address is None:
        return f"{name} : {h.error}"
    if count == 1:
        if h.alive:
            return f"{name} is alive ({h.avg_ms:.3f} ms)"
        why = f" ({h.error})" if h.error else ""
        return f"{name} is unreachable{why}"
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
    return f"{name} : {stats}" + (f" [{', '.join(extra)}]" if extra else "")


def _text_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['targets']:>10} targets",
        f"{s['alive']:>10} alive",
        f"{s['down']:>10} unreachable",
        f"{s['sent']:>10} probes sent",
        f"{s['received']:>10} replies",
    ]
    for key, label in (
        ("duplicates", "duplicates"),
        ("late", "late replies"),
        ("send_errors", "send errors"),
        ("rx_drops", "replies dropped by the kernel (receive buffer full)"),
        ("enobufs", "send retries (ENOBUFS)"),
        ("timed_user", "replies timed from a user-space send time (no kernel TX timestamp)"),
        ("unresolved", "names not resolved"),
        ("interrupted", "interrupted (Ctrl-C): statistics of the rounds done"),
    ):
        if s.get(key):
            lines.append(f"{s[key]:>10} {label}")
    lines.append(f"{s['duration_s']:>10.3f} s elapsed, {s['probes_per_s']:.0f} probes/s")
    return "\n".join(lines) + "\n"


class _Progress:
    """A one-line progress bar on stderr (terminals only), fed by the sweep."""

    WIDTH = 30

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._shown = False

    def update(self, sent: int, total: int, received: int) -> None:
        el = time.monotonic() - self._t0
        if el < 0.5 or total <= 0:  # short sweeps: no bar
            return
        frac = min(sent / total, 1.0)
        bar = "#" * int(frac * self.WIDTH)
        sys.stderr.write(
            f"\r[{bar:<{self.WIDTH}}] {frac * 100:5.1f}%  {sent:,}/{total:,} sent, "
            f"{received:,} replies, {el:.1f} s"
        )
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
