"""The codec, run against the compiled core and its pure-Python twin."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastping import _icmp, _icmp_py

V4, V6 = socket.AF_INET, socket.AF_INET6
KEY = bytes(range(16))


def ip4(src: str, dst: str, payload: bytes, ttl: int = 64, proto: int = 1) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr + payload


def echo_reply_v4(ident: int, seq: int, payload: bytes) -> bytes:
    pkt = bytearray(_icmp_py.build_echo_request(V4, ident, seq, payload))
    pkt[0] = 0
    pkt[2:4] = b"\0\0"
    pkt[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(pkt)))
    return bytes(pkt)


def test_checksum_rfc1071_example(codec) -> None:  # type: ignore[no-untyped-def]
    # RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement)
    assert codec.checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2) & 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\x01", b"\xff\xff", bytes(range(255)), b"\x00" * 3])
def test_checksum_edge_cases(codec, data: bytes) -> None:  # type: ignore[no-untyped-def]
    assert codec.checksum(data) == _icmp_py.checksum(data)


def test_checksum_rejects_non_bytes(codec) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        codec.checksum("abc")


def test_echo_request_v4_roundtrip(codec) -> None:  # type: ignore[no-untyped-def]
    payload = codec.build_probe_payload(7, 9, KEY, 56)
    pkt = codec.build_echo_request(V4, 0x1234, 9, payload)
    assert pkt[0] == 8 and codec.checksum(pkt) == 0
    d = codec.parse_packet(pkt, V4, False)
    assert d is not None
    assert (d["type"], d["ident"], d["seq"], d["checksum_ok"]) == (8, 0x1234, 9, True)
    assert codec.parse_probe_payload(d["payload"], KEY) == (7, 9)


def test_echo_request_v6(codec) -> None:  # type: ignore[no-untyped-def]
    pkt = codec.build_echo_request(V6, 1, 2, b"abcd")
    assert pkt[0] == 128 and pkt[2:4] == b"\0\0"  # the kernel fills the v6 checksum
    d = codec.parse_packet(pkt, V6, False)
    assert d["ident"] == 1 and d["seq"] == 2 and d["payload"] == b"abcd"


@pytest.mark.parametrize("bad", [(-1, 0), (0x10000, 0), (0, -1), (0, 0x10000)])
def test_echo_request_rejects_out_of_range(codec, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        codec.build_echo_request(V4, bad[0], bad[1])


def test_echo_reply_with_ip_header(codec) -> None:  # type: ignore[no-untyped-def]
    pkt = ip4("127.0.0.5", "127.0.0.1", echo_reply_v4(77, 3, b"x" * 20), ttl=61)
    d = codec.parse_packet(pkt, V4, True)
    assert d["type"] == 0 and d["ttl"] == 61 and d["src"] == "127.0.0.5" and d["ident"] == 77


def test_bad_checksum_is_rejected(codec) -> None:  # type: ignore[no-untyped-def]
    good = echo_reply_v4(5, 5, b"y" * 16)
    bad = good[:2] + bytes([good[2] ^ 0xFF]) + good[3:]
    assert codec.parse_packet(bad, V4, False) is None


def test_forged_cookie_is_rejected(codec) -> None:  # type: ignore[no-untyped-def]
    payload = bytearray(codec.build_probe_payload(1, 2, KEY, 32))
    payload[10] ^= 1
    assert codec.parse_probe_payload(bytes(payload), KEY) is None
    assert codec.parse_probe_payload(codec.build_probe_payload(1, 2, KEY, 32), bytes(16)) is None


def _unreach_v4(
    inner_dst: str, ident: int, seq: int, payload: bytes, typ: int = 3, code: int = 1
) -> bytes:
    probe = _icmp_py.build_echo_request(V4, ident, seq, payload)
    quoted = ip4("10.0.0.2", inner_dst, probe)
    icmp = bytearray(struct.pack("!BBHI", typ, code, 0, 0) + quoted)
    icmp[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(icmp)))
    return ip4("10.0.0.1", "10.0.0.2", bytes(icmp))


@pytest.mark.parametrize("typ", [3, 11, 12])
def test_error_attributed_through_quote(codec, typ: int) -> None:  # type: ignore[no-untyped-def]
    payload = codec.build_probe_payload(42, 4, KEY, 56)
    d = codec.parse_packet(_unreach_v4("192.0.2.9", 999, 4, payload, typ=typ), V4, True)
    assert d["is_error"] and d["type"] == typ
    assert d["inner_dst"] == "192.0.2.9" and d["inner_ident"] == 999 and d["inner_seq"] == 4
    assert d["src"] == "10.0.0.1"
    assert codec.parse_probe_payload(d["inner_payload"], KEY) == (42, 4)


def test_frag_needed_carries_mtu(codec) -> None:  # type: ignore[no-untyped-def]
    pkt = bytearray(_unreach_v4("192.0.2.9", 1, 1, b"z" * 16, typ=3, code=4))
    icmp = bytearray(pkt[20:])
    icmp[6:8] = struct.pack("!H", 1400)
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(icmp)))
    d = codec.parse_packet(bytes(pkt[:20]) + bytes(icmp), V4, True)
    assert d["mtu"] == 1400


def _v6_error(
    typ: int, inner_dst: bytes, ident: int, seq: int, payload: bytes, word: int = 0
) -> bytes:
    probe = _icmp_py.build_echo_request(V6, ident, seq, payload)
    inner = (
        struct.pack("!IHBB16s16s", 6 << 28, len(probe), 58, 64, b"\0" * 15 + b"\1", inner_dst)
        + probe
    )
    return struct.pack("!BBHI", typ, 0, 0, word) + inner


@pytest.mark.parametrize("typ", [1, 2, 3, 4])
def test_v6_errors(codec, typ: int) -> None:  # type: ignore[no-untyped-def]
    dst = socket.inet_pton(V6, "2001:db8::7")
    d = codec.parse_packet(_v6_error(typ, dst, 3, 8, b"p" * 20, word=1280), V6, False)
    assert d["is_error"] and d["inner_dst"] == "2001:db8::7" and d["inner_ident"] == 3
    assert d["mtu"] == (1280 if typ == 2 else None)


def test_truncated_packets_are_none(codec) -> None:  # type: ignore[no-untyped-def]
    full = _unreach_v4("192.0.2.9", 1, 1, b"q" * 32)
    for n in range(0, 48):
        assert codec.parse_packet(full[:n], V4, True) is None
    v6 = _v6_error(1, b"\0" * 16, 1, 1, b"")
    for n in range(0, 8 + 40 + 8):
        assert codec.parse_packet(v6[:n], V6, False) is None


def test_other_types_ignored(codec) -> None:  # type: ignore[no-untyped-def]
    redirect = bytearray(struct.pack("!BBHI", 5, 0, 0, 0) + b"\0" * 28)
    redirect[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(redirect)))
    assert codec.parse_packet(bytes(redirect), V4, False) is None
    assert codec.parse_packet(bytes([135, 0, 0, 0]) + b"\0" * 20, V6, False) is None


# ---- the twins agree on everything, hostile input included


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a == b


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([V4, V6]), st.booleans())
def test_twins_agree_on_random_bytes(data: bytes, fam: int, has_ip: bool) -> None:
    _same(_icmp.parse_packet(data, fam, has_ip), _icmp_py.parse_packet(data, fam, has_ip))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 120),
)
def test_twins_agree_on_mutated_packets(ident, seq, payload, flips, cut) -> None:  # type: ignore[no-untyped-def]
    kinds = [
        (ip4("127.0.0.9", "127.0.0.1", echo_reply_v4(ident, seq, payload)), V4, True),
        (_unreach_v4("192.0.2.1", ident, seq, payload), V4, True),
        (_v6_error(3, b"\1" * 16, ident, seq, payload), V6, False),
    ]
    for pkt, fam, has_ip in kinds:
        b = bytearray(pkt)
        for pos, val in flips:
            if pos < len(b):
                b[pos] = val
        b = b[: max(0, len(b) - cut)]
        _same(
            _icmp.parse_packet(bytes(b), fam, has_ip), _icmp_py.parse_packet(bytes(b), fam, has_ip)
        )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=16, max_size=16),
    st.integers(16, 200),
)
def test_twins_agree_on_payloads(slot, serial, key, size) -> None:  # type: ignore[no-untyped-def]
    a = _icmp.build_probe_payload(slot, serial, key, size)
    assert a == _icmp_py.build_probe_payload(slot, serial, key, size)
    assert _icmp.parse_probe_payload(a, key) == (slot, serial)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_twins_agree_on_checksum(data: bytes) -> None:
    assert _icmp.checksum(data) == _icmp_py.checksum(data)


def test_random_payload_never_validates() -> None:
    key = os.urandom(16)
    hits = sum(_icmp.parse_probe_payload(os.urandom(16), key) is not None for _ in range(20000))
    assert hits == 0


def _siphash24(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 of a message of any length, written from the paper (Aumasson and
    Bernstein 2012), independent of both implementations under test."""
    mask = (1 << 64) - 1

    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & mask

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261,
         k1 ^ 0x7465646279746573]  # fmt: skip

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & mask
            v[1] = rotl(v[1], 13) ^ v[0]
            v[0] = rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & mask
            v[3] = rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & mask
            v[3] = rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & mask
            v[1] = rotl(v[1], 17) ^ v[2]
            v[2] = rotl(v[2], 32)

    tail = len(msg) % 8
    words = [int.from_bytes(msg[i : i + 8], "little") for i in range(0, len(msg) - tail, 8)]
    words.append(int.from_bytes(msg[len(msg) - tail :], "little") | ((len(msg) & 0xFF) << 56))
    for m in words:
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_cookie_is_the_reference_siphash_2_4() -> None:
    """The cookie's SipHash-2-4, in C and in the twin, pinned to the paper's test
    vector (key 00..0f, message 00..0e: a129ca6149be45e5) through an implementation
    written from the paper, for the one 8-byte word the probe header hashes."""
    key = bytes(range(16))
    assert _siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5
    for msg in (bytes(range(8)), bytes(8), b"\xff" * 8, bytes([0x5A, 1, 0, 0, 9, 8, 7, 6])):
        want = _siphash24(key, msg)
        word = int.from_bytes(msg, "little")  # slot << 32 | serial
        k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
        assert _icmp_py.siphash_u64(k0, k1, word) == want
        p = _icmp.build_probe_payload(word >> 32, word & 0xFFFFFFFF, key, 16)
        assert int.from_bytes(p[8:16], "big") == want  # written big-endian after slot, serial
