"""fastping.chunk: the packed columns the store's rows and the core's outcome log share."""

from __future__ import annotations

import math
import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastping.chunk import (
    OUTCOME_BY_CODE,
    OUTCOME_CODE,
    RECORD_SIZE,
    ChunkError,
    count,
    pack,
    unpack,
)
from fastping.results import Outcome


def test_round_trip_with_missing_rtt_and_ttl() -> None:
    t = [1_700_000_000.123456, 1_700_000_001.5, 1_700_000_002.0]
    rtt = [0.25, None, math.nan]
    seq = [0, -1, 2**31 - 1]
    code = [OUTCOME_CODE[Outcome.REPLY], OUTCOME_CODE[Outcome.TIMEOUT], 8]
    ttl = [64, None, 255]
    blob = pack(t, rtt, seq, code, ttl)
    assert len(blob) == 3 * RECORD_SIZE and count(blob) == 3
    c = unpack(blob)
    assert len(c) == 3
    assert list(c.t) == t  # float64 seconds: exact
    assert c.rtt_ms[0] == 0.25 and math.isnan(c.rtt_ms[1]) and math.isnan(c.rtt_ms[2])
    assert list(c.seq) == seq
    assert list(c.code) == code and [OUTCOME_BY_CODE[x] for x in c.code][1] is Outcome.TIMEOUT
    assert list(c.ttl) == [64, 0, 255]  # None -> 0
    # the layout: columns one after the other, little-endian
    assert struct.unpack_from("<d", blob, 0)[0] == t[0]
    assert struct.unpack_from("<f", blob, 3 * 8)[0] == 0.25
    assert struct.unpack_from("<i", blob, 3 * 12 + 4)[0] == -1
    assert blob[3 * 16 :] == bytes(code) + bytes([64, 0, 255])


def test_empty_chunk() -> None:
    assert pack([], [], [], [], []) == b""
    assert len(unpack(b"")) == 0


@pytest.mark.parametrize("size", [1, 17, 19, 35, 1000 * RECORD_SIZE + 5])
def test_wrong_length_is_a_clear_error(size: int) -> None:
    with pytest.raises(ChunkError, match=f"a chunk of {size} bytes is not a whole number of 18"):
        unpack(b"\x00" * size)
    assert issubclass(ChunkError, ValueError)


def test_columns_of_different_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        pack([1.0, 2.0], [0.1], [1, 2], [0, 0], [64, 64])


@pytest.mark.parametrize(
    ("seq", "ttl", "exc"),
    [([2**31], [64], OverflowError), ([1], [256], ValueError), ([1.5], [64], TypeError)],
)
def test_values_out_of_range_rejected(seq: list[int], ttl: list[int], exc: type) -> None:
    with pytest.raises(exc):
        pack([1.0], [0.1], seq, [0], ttl)


@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.one_of(st.none(), st.floats(allow_nan=False, width=32)),
            st.integers(-(2**31), 2**31 - 1),
            st.sampled_from(sorted(OUTCOME_BY_CODE)),
            st.one_of(st.none(), st.integers(1, 255)),
        ),
        max_size=50,
    )
)
def test_round_trip_random(records: list[tuple[float, float | None, int, int, int | None]]) -> None:
    cols = list(zip(*records, strict=True)) if records else [[], [], [], [], []]
    c = unpack(pack(*cols))  # type: ignore[arg-type]
    assert list(c.t) == list(cols[0])
    want_rtt = array("f", [math.nan if r is None else r for r in cols[1]])
    assert [(x if x == x else None) for x in c.rtt_ms] == [
        (x if x == x else None) for x in want_rtt
    ]
    assert list(c.seq) == list(cols[2]) and list(c.code) == list(cols[3])
    assert list(c.ttl) == [x or 0 for x in cols[4]]


@given(st.binary(max_size=200))
def test_hostile_blobs_decode_or_raise_chunk_error(blob: bytes) -> None:
    """Any bytes either decode to columns of one length or raise ChunkError, nothing
    else (a damaged row must not crash a query with an IndexError)."""
    try:
        c = unpack(blob)
    except ChunkError:
        assert len(blob) % RECORD_SIZE
        return
    n = len(blob) // RECORD_SIZE
    assert len(c.t) == len(c.rtt_ms) == len(c.seq) == len(c.code) == len(c.ttl) == n
