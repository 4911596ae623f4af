"""What ``fastping trace`` and ``fastping mtu`` share: ICMP echo paths to hosts given
on the command line or in files, at a polite default rate, on a raw or unprivileged
socket."""

from __future__ import annotations

import argparse


def add_path_arguments(p: argparse.ArgumentParser, timeout_help: str) -> None:
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
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument("--json", action="store_true", help="one JSON object per target per line")
    p.add_argument(
        "--timeout", "-t", type=argtypes.timeout, default=1.0, metavar="S", help=timeout_help
    )
    p.add_argument(
        "--rate",
        "-r",
        type=argtypes.rate,
        default=1000.0,
        metavar="PPS",
        help="total probes per second (default 1000, polite to routers that rate-limit "
        "their ICMP errors; 0 = as fast as possible)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "raw", "dgram"),
        default="auto",
        help="ICMP socket: raw (root or CAP_NET_RAW) or dgram (unprivileged, "
        "net.ipv4.ping_group_range); auto tries raw, then dgram",
    )


def path_targets(args: argparse.Namespace, command: str) -> list[str]:
    """The targets of the command line and the -f files, blocks and ranges expanded,
    each once; no URL (these commands follow ICMP echo paths)."""
    from ..errors import TargetError
    from ..targets import expand_target, read_targets_file

    words = list(args.targets)
    for path in args.file:
        words.extend(read_targets_file(path))
    if not words:
        raise TargetError(f"no targets: name some (fastping {command} 10.0.0.1) or give -f FILE")
    out: list[str] = []
    for w in words:
        if "://" in w:
            raise TargetError(
                f"{w!r}: fastping {command} follows ICMP echo paths to hosts; write the host"
            )
        out.extend(expand_target(w))
    return list(dict.fromkeys(out))


def family_of(args: argparse.Namespace) -> int | None:
    import socket

    return {4: socket.AF_INET, 6: socket.AF_INET6}.get(args.family or 0)
