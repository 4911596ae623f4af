"""argparse types for the subcommands' numeric options: a value outside its range is a
one-line usage error naming the option and the range (exit 3), never a traceback, a
silently useless run, or an undefined float -> int64 cast in the core."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

PAYLOAD_MIN = 16  # the probe header (slot, serial, cookie) the socket puts in every payload
PAYLOAD_MAX = 65000  # IcmpSocket's limit (an IPv4 datagram holds at most 65507)
TIMEOUT_MAX_S = 3600.0
INTERVAL_MIN_S = 0.001  # the engine's MIN_INTERVAL_S: shorter spins the loop
COUNT_MAX = 1_000_000


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {lo}..{hi}")
        return v

    parse.__name__ = "integer"
    return parse


def seconds(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """Finite seconds in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(text: str) -> float:
        from ..duration import SYNTAX, parse_duration

        try:
            v = parse_duration(text)  # 1.5 or 500ms / 2m, as in the config file
        except ValueError:
            if text.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
                raise argparse.ArgumentTypeError(f"{text!r} is not {SYNTAX}") from None
            v = float(text)  # out of range, said below
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            low = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give {low} and at most {hi:g}"
            )
        return v

    parse.__name__ = "seconds"
    return parse


def rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of probes per second") from None
    if not (math.isfinite(v) and 0 <= v <= 100_000_000):
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 0..100000000 (0 = unpaced)")
    return v


ttl = int_range(1, 255)
tos = int_range(0, 255)
payload = int_range(PAYLOAD_MIN, PAYLOAD_MAX)
count = int_range(1, COUNT_MAX)
timeout = seconds(0.0, TIMEOUT_MAX_S, lo_open=True)
