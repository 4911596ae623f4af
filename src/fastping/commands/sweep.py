"""``fastping sweep``: probe many targets and print one line per target."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
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


class _RateAction(argparse.Action):
    """--rate / -r, remembering which was typed: fping's -r is a retry count."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.rate_flag = option_string


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
        action=_RateAction,
        metavar="PPS",
        help="total probes per second (default 1000; 0 = as fast as possible)",
    )
    p.add_argument(
        "--probe-interval",
        "-i",
        type=float,
        default=None,
        metavar="S",
        help="seconds between successive probes, another way to say --rate (-i 0.001 = "
        "--rate 1000)",
    )
    p.add_argument(
        "--csv",
        action="store_true",
        help="one CSV row per target, with a header (the columns of --json)",
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
    p.add_argument(
        "-s",
        "--stats",
        action="store_true",
        help="with --json / --csv: the summary as JSON on stderr too (text output always "
        "has it there)",
    )
    p.add_argument(
        "-a",
        "--alive",
        action="store_true",
        help="print only the targets that answered, one a line (as fping -a)",
    )
    p.add_argument(
        "-u",
        "--unreachable",
        action="store_true",
        help="print only the targets that did not answer, one a line (as fping -u)",
    )
    add_common(p)


def check_plausible(args: argparse.Namespace) -> None:
    """Refuse values that are fping's units or meanings typed into our options,
    naming the likely mistake (fping: -t/-p/-i in ms, -r = retries)."""
    from ..errors import TargetError

    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    if args.timeout <= 0:
        raise TargetError(f"--timeout must be > 0, not {args.timeout}")
    t = args.timeout
    if t > 60:
        raise TargetError(
            f"-t {t:g}: {t:g} seconds? the timeout is in seconds here; fping's -t is in ms "
            f"(for {t:g} ms: -t {t / 1000:g})"
        )
    p = args.period
    if p < 0:
        raise TargetError(f"-p/--period must be >= 0 seconds, not {p:g}")
    if p > 60:
        raise TargetError(
            f"-p {p:g}: {p:g} seconds between rounds? the period is in seconds here; fping's "
            f"-p is in ms (for {p:g} ms: -p {p / 1000:g}); for rounds minutes apart use "
            "fastping monitor"
        )
    i = args.probe_interval
    if i is not None:
        if args.rate is not None:
            raise TargetError("-i and --rate say the same thing: give one of them")
        if i < 0:
            raise TargetError(f"-i/--probe-interval must be >= 0 seconds, not {i:g}")
        if i >= 1:
            raise TargetError(
                f"-i {i:g}: {i:g} seconds between probes? the interval is in seconds here; "
                f"fping's -i is in ms (for {i:g} ms: -i {i / 1000:g}, i.e. --rate {1000 / i:g})"
            )
        args.rate = 1.0 / i if i > 0 else 0.0
    r = args.rate
    if r is not None and r < 0:
        raise TargetError(f"--rate must be >= 0 probes/s (0 = no limit), not {r:g}")
    if r is not None and getattr(args, "rate_flag", None) == "-r" and 0 < r < 10:
        raise TargetError(
            f"-r {r:g}: {r:g} probes per second? -r is the rate here (probes/s); fping's -r "
            f"is a retry count: for {r:g} more probes per target use -c {int(r) + 1}, for "
            f"this rate say --rate {r:g}"
        )
    if args.json and args.csv:
        raise TargetError("--json and --csv: choose one output format")


def read_targets(args: argparse.Namespace) -> Any:
    """The command line's targets and -f files as one _pipeline.TargetSet (files
    streamed); every bad line is reported, with its line number."""
    from .. import api
    from .._pipeline import TargetSet
    from ..errors import TargetError

    ts = TargetSet()
    ts.add_arguments(list(args.targets))
    for f in args.file:
        try:
            if f == "-":
                ts.add_file(sys.stdin.buffer, "<stdin>")
            else:
                with open(f, "rb", buffering=0) as fh:
                    ts.add_file(fh, f)
        except OSError as e:
            raise TargetError(f"cannot read targets file {f!r}: {e.strerror or e}") from None
        if ts.fatal:
            break
    api.check_target_set(ts)
    if ts.n_hosts == 0:
        raise TargetError("no targets: name some (fastping sweep 127.0.0.1 ::1) or use -f FILE")
    return ts


def run(args: argparse.Namespace) -> int:
    from .. import api, formats
    from .._pipeline import (
        FMT_CSV,
        FMT_JSON,
        FMT_NONE,
        FMT_TARGET,
        FMT_TEXT,
        SEL_ALIVE,
        SEL_ALL,
        SEL_DOWN,
        Formatter,
    )
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN, EXIT_UNRESOLVED

    check_plausible(args)
    targets = read_targets(args)
    rate = api.DEFAULT_RATE_PPS if args.rate is None else args.rate
    family = {4: 2, 6: 10}.get(args.family or 0)
    progress = _Progress() if sys.stderr.isatty() and not (args.json or args.csv) else None
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
    del targets
    select = SEL_ALIVE if args.alive else SEL_DOWN if args.unreachable else SEL_ALL
    if args.quiet:
        fmt_code, line = FMT_NONE, formats.target_line
    elif args.json:
        fmt_code, line = FMT_JSON, formats.json_line
    elif args.csv:
        fmt_code, line = FMT_CSV, formats.csv_line
    elif args.alive or args.unreachable:
        fmt_code, line = FMT_TARGET, formats.target_line
    else:
        fmt_code = FMT_TEXT

        def line(h: Any) -> str:
            return formats.text_line(h, args.count)

    sys.stdout.flush()
    out = sys.stdout.buffer
    fmt = Formatter(fmt_code, select, args.count, out)
    if fmt_code == FMT_CSV:
        fmt.write_text(formats.CSV_HEADER)
    res.write_rows(fmt, args.count, line)
    fmt.flush()
    alive = fmt.alive
    unresolved = int(res.totals.get("unresolved", 0))
    summary = res.summary_with(alive=alive)
    if args.json or args.csv:
        if args.quiet:
            out.write((json.dumps(summary) + "\n").encode())
        elif args.stats:
            sys.stderr.write(json.dumps(summary) + "\n")
    elif args.quiet:
        out.write(_text_summary(summary).encode())
    else:
        sys.stderr.write(_text_summary(summary))
    out.flush()
    if unresolved:
        return EXIT_UNRESOLVED
    return EXIT_ALL_ALIVE if alive == len(res) else EXIT_SOME_DOWN


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
