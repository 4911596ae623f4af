"""Pure-Python twin of the codec half of ``fastping._icmp``.

Same functions, same results: the tests run every case against both, and
Hypothesis compares them on random and mutated packets. It is the oracle, not
a fallback: fastping refuses to run its socket loop without the extension.
"""

from __future__ import annotations

import array
import operator
import socket
import struct
from typing import Any

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMP6_DST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROB = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
PROBE_HEADER_SIZE = 16

ICMP_ID_OFFSET = 4
ICMP_SEQ_OFFSET = 6
ICMP_HDR_LEN = 8
IP4_MIN_HDR = 20
IP6_HDR_LEN = 40
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
_M64 = (1 << 64) - 1


def checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 Internet checksum."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes-like data, got {type(data).__name__}")
    b = bytes(data)
    if len(b) % 2:
        b += b"\0"
    s: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash_u64(k0: int, k1: int, m: int) -> int:
    """SipHash-2-4 of one 8-byte little-endian message word."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    b = 8 << 56
    v3 ^= m
    for _ in range(2):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= m
    v3 ^= b
    for _ in range(2):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


PAYLOAD_MAX = 65000  # IcmpSocket's limit; a probe of 8 + 65000 bytes fits any datagram


# The argument contract the compiled codec follows too (tests check both): a value
# that is not an integer is a TypeError, an integer out of range a ValueError naming
# the argument, whatever its size (no OverflowError, no SystemError, no silent []).
def _arg(name: str, value: int, lo: int, hi: int) -> int:
    v = operator.index(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} {v} is not {lo}..{hi}")
    return v


def _family(value: int) -> int:
    v = operator.index(value)
    if v != socket.AF_INET and v != socket.AF_INET6:
        raise ValueError(f"family must be AF_INET or AF_INET6, not {v}")
    return v


def _key_words(key: bytes) -> tuple[int, int]:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
        raise ValueError("key must be 16 bytes")
    k0, k1 = struct.unpack("<QQ", bytes(key))
    return k0, k1


def build_probe_payload(slot: int, serial: int, key: bytes, size: int) -> bytes:
    size = _arg("payload size", size, PROBE_HEADER_SIZE, PAYLOAD_MAX)
    slot = _arg("slot", slot, 0, 0xFFFFFFFF)
    serial = _arg("serial", serial, 0, 0xFFFFFFFF)
    k0, k1 = _key_words(key)
    cookie = siphash_u64(k0, k1, (slot << 32) | serial)
    pad = bytes((i + 0x10) & 0xFF for i in range(size - PROBE_HEADER_SIZE))
    return struct.pack("!IIQ", slot, serial, cookie) + pad


def parse_probe_payload(payload: bytes, key: bytes) -> tuple[int, int] | None:
    k0, k1 = _key_words(key)
    pb = bytes(payload)
    if len(pb) < PROBE_HEADER_SIZE:
        return None
    slot, serial, cookie = struct.unpack_from("!IIQ", pb)
    if cookie != siphash_u64(k0, k1, (slot << 32) | serial):
        return None
    return slot, serial


def build_echo_request(family: int, ident: int, seq: int, payload: bytes = b"") -> bytes:
    family = _family(family)
    ident = _arg("identifier", ident, 0, 0xFFFF)
    seq = _arg("sequence", seq, 0, 0xFFFF)
    t = ICMP_ECHO_REQUEST if family == socket.AF_INET else ICMP6_ECHO_REQUEST
    pkt = struct.pack("!BBHHH", t, 0, 0, ident, seq) + bytes(payload)
    if family == socket.AF_INET:
        pkt = pkt[:2] + struct.pack("!H", checksum(pkt)) + pkt[4:]
    return pkt


def _ntop(family: int, b: bytes | None) -> str | None:
    return None if b is None else socket.inet_ntop(family, b)


def parse_packet(
    data: bytes | bytearray | memoryview, family: int, has_ip_header: bool
) -> dict[str, Any] | None:
    family = _family(family)
    p = bytes(data)
    ttl = src = dst = None
    if family == socket.AF_INET:
        ihl = 0
        if has_ip_header:
            if len(p) < IP4_MIN_HDR or p[0] >> 4 != 4:
                return None
            ihl = (p[0] & 0x0F) * 4
            if ihl < IP4_MIN_HDR or len(p) < ihl + ICMP_HDR_LEN:
                return None
            if p[9] != IPPROTO_ICMP:
                return None
            ttl, src, dst = p[8], p[12:16], p[16:20]
        elif len(p) < ICMP_HDR_LEN:
            return None
        q = p[ihl:]
        typ, code = q[0], q[1]
        ok = checksum(q) == 0
        if typ in (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST):
            if not ok:
                return None
            ident, seq = struct.unpack_from("!HH", q, 4)
            return _result(family, typ, code, ident, seq, q[8:], ttl, src, dst, ok)
        if typ in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB):
            inner = q[8:]
            if len(inner) < IP4_MIN_HDR or inner[0] >> 4 != 4:
                return None
            iihl = (inner[0] & 0x0F) * 4
            if iihl < IP4_MIN_HDR or len(inner) < iihl + ICMP_HDR_LEN or inner[9] != IPPROTO_ICMP:
                return None
            inner_dst = inner[16:20]
            iq = inner[iihl:]
            if iq[0] != ICMP_ECHO_REQUEST or not ok:
                return None
            ident, seq = struct.unpack_from("!HH", iq, 4)
            mtu = struct.unpack_from("!H", q, 6)[0] if typ == ICMP_DEST_UNREACH and code == 4 else 0
            d = _result(family, typ, code, ident, seq, iq[8:], ttl, src, dst, ok, is_error=True)
            d.update(
                inner_dst=_ntop(family, inner_dst),
                inner_ident=ident,
                inner_seq=seq,
                inner_payload=d["payload"],
                mtu=mtu or None,
            )
            return d
        return None
    if has_ip_header:
        if len(p) < IP6_HDR_LEN + ICMP_HDR_LEN or p[0] >> 4 != 6:
            return None
        if p[6] != IPPROTO_ICMPV6:
            return None
        ttl, src, dst = p[7], p[8:24], p[24:40]
        p = p[IP6_HDR_LEN:]
    if len(p) < ICMP_HDR_LEN:
        return None
    typ, code = p[0], p[1]
    if typ in (ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST):
        ident, seq = struct.unpack_from("!HH", p, 4)
        return _result(family, typ, code, ident, seq, p[8:], ttl, src, dst, None)
    if ICMP6_DST_UNREACH <= typ <= ICMP6_PARAM_PROB:
        inner = p[8:]
        if len(inner) < IP6_HDR_LEN + ICMP_HDR_LEN or inner[0] >> 4 != 6:
            return None
        if inner[6] != IPPROTO_ICMPV6 or inner[IP6_HDR_LEN] != ICMP6_ECHO_REQUEST:
            return None
        mtu = struct.unpack_from("!I", p, 4)[0] if typ == ICMP6_PACKET_TOO_BIG else 0
        iq = inner[IP6_HDR_LEN:]
        ident, seq = struct.unpack_from("!HH", iq, 4)
        d = _result(family, typ, code, ident, seq, iq[8:], ttl, src, dst, None, is_error=True)
        d.update(
            inner_dst=_ntop(family, inner[24:40]),
            inner_ident=ident,
            inner_seq=seq,
            inner_payload=d["payload"],
            mtu=mtu or None,
        )
        return d
    return None


def _result(
    family: int,
    typ: int,
    code: int,
    ident: int,
    seq: int,
    payload: bytes,
    ttl: int | None,
    src: bytes | None,
    dst: bytes | None,
    ok: bool | None,
    is_error: bool = False,
) -> dict[str, Any]:
    return {
        "type": typ,
        "code": code,
        "ident": ident,
        "seq": seq,
        "payload": payload,
        "ttl": ttl,
        "src": _ntop(family, src),
        "dst": _ntop(family, dst),
        "checksum_ok": ok,
        "is_error": is_error,
    }


def build_probes(
    family: int, ident: int, key: bytes, first_slot: int, count: int, serial: int, payload_size: int
) -> bytes:
    """``count`` echo requests for slots first_slot.., concatenated."""
    family = _family(family)
    ident = _arg("identifier", ident, 0, 0xFFFF)
    payload_size = _arg("payload_size", payload_size, PROBE_HEADER_SIZE, PAYLOAD_MAX)
    first_slot = _arg("first_slot", first_slot, 0, 0xFFFFFFFF)
    count = _arg("count", count, 0, 0x100000000 - first_slot)
    serial = _arg("serial", serial, 0, 0xFFFFFFFF)
    _key_words(key)
    return b"".join(
        build_echo_request(
            family,
            ident,
            serial & 0xFFFF,
            build_probe_payload(first_slot + i, serial, key, payload_size),
        )
        for i in range(count)
    )


def parse_probes(
    data: bytes, packet_size: int, family: int, has_ip_header: bool, key: bytes
) -> array.array[int]:
    """Slots of the valid, cookie-carrying echo packets among consecutive packets."""
    packet_size = _arg("packet_size", packet_size, 1, 0x7FFFFFFF)
    family = _family(family)
    _key_words(key)
    out = array.array("I")
    b = bytes(data)
    for i in range(len(b) // packet_size):
        d = parse_packet(b[i * packet_size : (i + 1) * packet_size], family, has_ip_header)
        if d is None or d["is_error"]:
            continue
        r = parse_probe_payload(d["payload"], key)
        if r is not None:
            out.append(r[0])
    return out
