"""A chunk: one target's results packed as columns.

This is both the row format of the store (one SQLite row holds one chunk) and the
format the core's outcome log hands out (``IcmpSocket.take_log``), so the engine
moves a target's replies and timeouts from the socket to the disk without building
a Python object per probe: at 10,000 probes/s a row (or a tuple) per probe costs
more CPU than the probing itself.

Layout: ``n`` records, ``RECORD_SIZE * n`` bytes, no header, little-endian, one
column after the other::

    t     float64[n]  Unix seconds when the outcome was known
    rtt   float32[n]  ms; NaN when the outcome has no RTT
    seq   int32[n]    ICMP sequence number; -1 when no probe went out
    code  uint8[n]    OUTCOME_CODE of the outcome (fastping.results.EventKind):
                      0 reply, 1 timeout, 2 unreachable, 3 time exceeded,
                      4 send error, 5 local down, 6 resolve error, 7 duplicate,
                      8 late, 9 closed
    ttl   uint8[n]    TTL / hop limit of the reply; 0 when none

Columns (not records) because queries want one column at a time (the RTTs of the
replies, the codes to count loss), and ``array.frombytes`` reads a column at C
speed. float64 seconds resolve 0.24 us at today's epoch; float32 milliseconds keep
7 significant digits (0.06 us at 1 s).
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from typing import NamedTuple

from .errors import ChunkError as ChunkError  # re-exported: older code imports it from here
from .results import KIND_OF, Outcome

RECORD_SIZE = 18  # 8 + 4 + 4 + 1 + 1

# Outcome <-> the small integer on disk: the one outcome numbering (results.EventKind,
# append only), which is the core's event kinds too, so the core logs a kind as its
# code and writes chunks itself. tests/test_chunk.py pins a chunk's bytes.
OUTCOME_CODE: dict[Outcome, int] = dict(KIND_OF)
OUTCOME_BY_CODE: dict[int, Outcome] = {v: k for k, v in OUTCOME_CODE.items()}

_SWAP = sys.byteorder != "little"


class Columns(NamedTuple):
    t: array[float]  # 'd'
    rtt_ms: array[float]  # 'f', NaN = none
    seq: array[int]  # 'i'
    code: bytes
    ttl: bytes

    def __len__(self) -> int:  # records, not fields
        return len(self.code)


def pack(
    t: Sequence[float],
    rtt_ms: Sequence[float | None],
    seq: Sequence[int],
    code: Sequence[int],
    ttl: Sequence[int | None],
) -> bytes:
    """Columns -> chunk bytes. ``None`` RTT / TTL are stored as NaN / 0."""
    n = len(t)
    if not (len(rtt_ms) == len(seq) == len(code) == len(ttl) == n):
        raise ValueError("pack: the columns must have the same length")
    ta = array("d", t)
    ra = array("f", [math.nan if r is None else r for r in rtt_ms])
    sa = array("i", seq)
    if _SWAP:
        ta.byteswap()
        ra.byteswap()
        sa.byteswap()
    return b"".join(
        (ta.tobytes(), ra.tobytes(), sa.tobytes(), bytes(code), bytes(x or 0 for x in ttl))
    )


def unpack(blob: bytes | memoryview) -> Columns:
    """Chunk bytes -> columns (arrays; the codes and TTLs as bytes)."""
    size = len(blob)
    n, rest = divmod(size, RECORD_SIZE)
    if rest:
        raise ChunkError(
            f"a chunk of {size} bytes is not a whole number of {RECORD_SIZE}-byte records"
        )
    mv = memoryview(blob)
    ta = array("d")
    ta.frombytes(mv[: 8 * n])
    ra = array("f")
    ra.frombytes(mv[8 * n : 12 * n])
    sa = array("i")
    sa.frombytes(mv[12 * n : 16 * n])
    if _SWAP:
        ta.byteswap()
        ra.byteswap()
        sa.byteswap()
    return Columns(ta, ra, sa, bytes(mv[16 * n : 17 * n]), bytes(mv[17 * n : 18 * n]))


def count(blob: bytes | memoryview) -> int:
    """Records in a chunk."""
    return len(blob) // RECORD_SIZE
