cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)   # same clock as SO_TIMESTAMPNS
    return <int64_t>ts.tv_sec * NS + ts.tv_nsec


# ---------------------------------------------------------------- checksum
cdef inline uint32_t csum_add(const uint8_t *p, Py_ssize_t n, uint32_t s) noexcept nogil:
    """Add 16-bit big-endian words of p to the running sum (RFC 1071 §4.1)."""
    cdef Py_ssize_t i = 0
    while i + 1 < n:
        s += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint32_t>p[i] << 8
    return s


cdef inline uint16_t csum_fold(uint32_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


def checksum(data):
    """RFC 1071 Internet checksum of ``data`` (the value to store, host order)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes-like data, got {type(data).__name__}")
    cdef bytes b = bytes(data)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = len(b)
    cdef uint16_t r
    with nogil:
        r = csum_fold(csum_add(p, n, 0))
    return r


# ---------------------------------------------------------------- SipHash-2-4
cdef inline uint64_t rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t siphash_u64(uint64_t k0, uint64_t k1, uint64_t m) noexcept nogil:
    """SipHash-2-4 of one 8-byte message (Aumasson & Bernstein 2012)."""
    cdef uint64_t v0 = k0 ^ 0x736f6d6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646f72616e646f6dULL
    cdef uint64_t v2 = k0 ^ 0x6c7967656e657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef uint64_t b = (<uint64_t>8) << 56
    cdef int _i
    v3 ^= m
    for _i in range(2):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    v0 ^= m
    v3 ^= b
    for _i in range(2):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    v0 ^= b
    v2 ^= 0xff
    for _i in range(4):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3


cdef inline uint64_t le64(const uint8_t *p) noexcept nogil:
    cdef uint64_t r = 0
    cdef int i
    for i in range(8):
        r |= (<uint64_t>p[i]) << (8 * i)
    return r


cdef inline uint64_t cookie_of(uint64_t k0, uint64_t k1, uint32_t slot, uint32_t serial) noexcept nogil:
    return siphash_u64(k0, k1, ((<uint64_t>slot) << 32) | serial)


cdef inline void write_probe_header(uint8_t *p, uint64_t k0, uint64_t k1,
                                    uint32_t slot, uint32_t serial) noexcept nogil:
    cdef uint64_t c = cookie_of(k0, k1, slot, serial)
    wr32(p, slot)
    wr32(p + 4, serial)
    wr32(p + 8, <uint32_t>(c >> 32))
    wr32(p + 12, <uint32_t>(c & 0xFFFFFFFFULL))


cdef inline bint read_probe_header(const uint8_t *p, Py_ssize_t n, uint64_t k0, uint64_t k1,
                                   uint32_t *slot, uint32_t *serial) noexcept nogil:
    """True if p holds a probe header whose cookie is valid under the key."""
    if n < PROBE_HDR:
        return False
    slot[0] = rd32(p)
    serial[0] = rd32(p + 4)
    cdef uint64_t c = ((<uint64_t>rd32(p + 8)) << 32) | rd32(p + 12)
    return c == cookie_of(k0, k1, slot[0], serial[0])


def _key_words(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
        raise ValueError("key must be 16 bytes")
    kb = bytes(key)
    return le64(<const uint8_t *>PyBytes_AS_STRING(kb)), le64(<const uint8_t *>PyBytes_AS_STRING(kb) + 8)


PAYLOAD_MAX = 65000  # IcmpSocket's limit; a probe of 8 + 65000 bytes fits any datagram


# The argument contract, the same as the twin's (_icmp_py._arg): a value that is not an
# integer is a TypeError, an integer out of range a ValueError naming the argument,
# whatever its size. Arguments are taken as Python objects and checked here before
# any C conversion, so 2**40 is "out of range", never an OverflowError or SystemError.
def _arg(name, value, lo, hi):
    v = operator.index(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} {v} is not {lo}..{hi}")
    return v


def _family(value):
    v = operator.index(value)
    if v != AF_INET and v != AF_INET6:
        raise ValueError(f"family must be AF_INET or AF_INET6, not {v}")
    return v


def build_probe_payload(slot, serial, key, size):
    """fastping's probe payload: slot, serial and keyed cookie, padded to ``size``."""
    size = _arg("payload size", size, PROBE_HDR, PAYLOAD_MAX)
    slot = _arg("slot", slot, 0, 0xFFFFFFFF)
    serial = _arg("serial", serial, 0, 0xFFFFFFFF)
    k0, k1 = _key_words(key)
    out = bytearray(size)
    cdef uint8_t *p = <uint8_t *>(<char *>out)
    write_probe_header(p, k0, k1, slot, serial)
    _fill_pattern(p + PROBE_HDR, size - PROBE_HDR)
    return bytes(out)


cdef inline void _fill_pattern(uint8_t *p, Py_ssize_t n) noexcept nogil:
    # A recognisable, incompressible-enough pattern (like ping's 0x10, 0x11, ...).
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = <uint8_t>((i + 0x10) & 0xFF)


def parse_probe_payload(payload, key):
    """(slot, serial) if the payload carries a cookie valid under ``key``, else None."""
    k0, k1 = _key_words(key)
    pb = bytes(payload)
    cdef uint32_t slot = 0, serial = 0
    if read_probe_header(<const uint8_t *>PyBytes_AS_STRING(pb), len(pb), k0, k1, &slot, &serial):
        return (slot, serial)
    return None


# ---------------------------------------------------------------- codec
def build_echo_request(family, ident, seq, payload=b""):
    """ICMP (AF_INET) or ICMPv6 (AF_INET6) echo request. For ICMPv4 the checksum is
    filled in; for ICMPv6 it is left 0 (the kernel computes it over the pseudo-header,
    RFC 4443 §2.3)."""
    cdef int fam = _family(family)
    ident = _arg("identifier", ident, 0, 0xFFFF)
    seq = _arg("sequence", seq, 0, 0xFFFF)
    pb = bytes(payload)
    cdef Py_ssize_t n = ICMP_HDR_LEN + len(pb)
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    p[ICMP_TYPE_OFFSET] = ICMP_ECHO_REQUEST if fam == AF_INET else ICMP6_ECHO_REQUEST
    p[ICMP_CODE_OFFSET] = 0
    wr16(p + ICMP_CSUM_OFFSET, 0)
    wr16(p + ICMP_ID_OFFSET, ident)
    wr16(p + ICMP_SEQ_OFFSET, seq)
    if len(pb):
        memcpy(p + ICMP_HDR_LEN, PyBytes_AS_STRING(pb), len(pb))
    if fam == AF_INET:
        wr16(p + ICMP_CSUM_OFFSET, csum_fold(csum_add(p, n, 0)))
    return out


cdef struct Parsed:
    int is_error          # 1 if an ICMP error quoting an echo request
    int type, code
    int ttl               # -1 unknown
    int checksum_ok       # -1 not checked (v6)
    uint16_t ident, seq   # of the echo (or of the quoted echo, for errors)
    const uint8_t *payload
    Py_ssize_t payload_len
    const uint8_t *src    # outer source (IPv4 with header), else NULL
    const uint8_t *dst
    const uint8_t *inner_dst   # errors: destination of the quoted probe
    uint32_t mtu


cdef int parse_c(const uint8_t *p, Py_ssize_t n, int family, bint has_ip, Parsed *out) noexcept nogil:
    """Parse one packet into *out. Returns 1 if it is an echo reply/request or an
    error quoting an echo request, 0 if not ours to consider, -1 if malformed."""
    cdef Py_ssize_t ihl = 0, iihl
    cdef const uint8_t *q
    cdef Py_ssize_t qn
    memset(out, 0, sizeof(Parsed))
    out.ttl = -1
    out.checksum_ok = -1
    if family == AF_INET:
        if has_ip:
            if n < IP4_MIN_HDR or (p[0] >> 4) != 4:
                return -1
            ihl = (p[0] & 0x0F) * 4
            if ihl < IP4_MIN_HDR or n < ihl + ICMP_HDR_LEN:
                return -1
            if p[IP4_PROTO_OFFSET] != IPPROTO_ICMP:
                return 0
            out.ttl = p[IP4_TTL_OFFSET]
            out.src = p + IP4_SRC_OFFSET
            out.dst = p + IP4_DST_OFFSET
        elif n < ICMP_HDR_LEN:
            return -1
        q = p + ihl
        qn = n - ihl
        out.type = q[ICMP_TYPE_OFFSET]
        out.code = q[ICMP_CODE_OFFSET]
        out.checksum_ok = csum_fold(csum_add(q, qn, 0)) == 0
        if out.type == ICMP_ECHO_REPLY or out.type == ICMP_ECHO_REQUEST:
            out.ident = rd16(q + ICMP_ID_OFFSET)
            out.seq = rd16(q + ICMP_SEQ_OFFSET)
            out.payload = q + ICMP_HDR_LEN
            out.payload_len = qn - ICMP_HDR_LEN
            return 1 if out.checksum_ok else -1
        if out.type == ICMP_DEST_UNREACH or out.type == ICMP_TIME_EXCEEDED or out.type == ICMP_PARAMETERPROB:
            # quoted original: IP header + at least 8 bytes of our ICMP (RFC 792)
            q = q + ICMP_HDR_LEN
            qn = qn - ICMP_HDR_LEN
            if qn < IP4_MIN_HDR or (q[0] >> 4) != 4:
                return -1
            iihl = (q[0] & 0x0F) * 4
            if iihl < IP4_MIN_HDR or qn < iihl + ICMP_HDR_LEN or q[IP4_PROTO_OFFSET] != IPPROTO_ICMP:
                return 0 if qn >= iihl + ICMP_HDR_LEN else -1
            out.inner_dst = q + IP4_DST_OFFSET
            q = q + iihl
            qn = qn - iihl
            if q[ICMP_TYPE_OFFSET] != ICMP_ECHO_REQUEST:
                return 0
            out.is_error = 1
            out.ident = rd16(q + ICMP_ID_OFFSET)
            out.seq = rd16(q + ICMP_SEQ_OFFSET)
            out.payload = q + ICMP_HDR_LEN
            out.payload_len = qn - ICMP_HDR_LEN
            if out.type == ICMP_DEST_UNREACH and out.code == 4:   # frag needed: next-hop MTU
                out.mtu = rd16(p + ihl + 6)
            return 1 if out.checksum_ok else -1
        return 0
    # ICMPv6: raw and datagram sockets deliver no IPv6 header (RFC 3542 §3);
    # has_ip means a captured packet that starts with one.
    if has_ip:
        if n < IP6_HDR_LEN + ICMP_HDR_LEN or (p[0] >> 4) != 6:
            return -1
        if p[IP6_NEXT_OFFSET] != IPPROTO_ICMPV6:
            return 0
        out.ttl = p[IP6_HOPS_OFFSET]
        out.src = p + IP6_SRC_OFFSET
        out.dst = p + IP6_DST_OFFSET
        p = p + IP6_HDR_LEN
        n = n - IP6_HDR_LEN
    if n < ICMP_HDR_LEN:
        return -1
    out.type = p[ICMP_TYPE_OFFSET]
    out.code = p[ICMP_CODE_OFFSET]
    if out.type == ICMP6_ECHO_REPLY or out.type == ICMP6_ECHO_REQUEST:
        out.ident = rd16(p + ICMP_ID_OFFSET)
        out.seq = rd16(p + ICMP_SEQ_OFFSET)
        out.payload = p + ICMP_HDR_LEN
        out.payload_len = n - ICMP_HDR_LEN
        return 1
    if out.type >= ICMP6_DST_UNREACH and out.type <= ICMP6_PARAM_PROB:
        q = p + ICMP_HDR_LEN
        qn = n - ICMP_HDR_LEN
        if qn < IP6_HDR_LEN + ICMP_HDR_LEN or (q[0] >> 4) != 6:
            return -1
        if q[IP6_NEXT_OFFSET] != IPPROTO_ICMPV6 or q[IP6_HDR_LEN] != ICMP6_ECHO_REQUEST:
            return 0
        out.inner_dst = q + IP6_DST_OFFSET
        out.is_error = 1
        if out.type == ICMP6_PACKET_TOO_BIG:
            out.mtu = rd32(p + ICMP_MTU_OFFSET)
        q = q + IP6_HDR_LEN
        qn = qn - IP6_HDR_LEN
        out.ident = rd16(q + ICMP_ID_OFFSET)
        out.seq = rd16(q + ICMP_SEQ_OFFSET)
        out.payload = q + ICMP_HDR_LEN
        out.payload_len = qn - ICMP_HDR_LEN
        return 1
    return 0


cdef str _ntop(int family, const uint8_t *a):
    cdef char buf[64]
    if a == NULL:
        return None
    if inet_ntop(family, a, buf, sizeof(buf)) == NULL:
        return None
    return buf.decode("ascii")


def parse_packet(data, family, bint has_ip_header):
    """Parse one received packet; None if it is not an echo reply/request or an ICMP
    error quoting an echo request, or if it is truncated or fails its checksum."""
    cdef int fam = _family(family)
    pb = bytes(data)
    cdef Parsed r
    cdef int rc
    rc = parse_c(<const uint8_t *>PyBytes_AS_STRING(pb), len(pb), fam, has_ip_header, &r)
    if rc != 1:
        return None
    d = {
        "type": r.type,
        "code": r.code,
        "ident": r.ident,
        "seq": r.seq,
        "payload": PyBytes_FromStringAndSize(<const char *>r.payload, r.payload_len) if r.payload_len > 0 else b"",
        "ttl": r.ttl if r.ttl >= 0 else None,
        "src": _ntop(fam, r.src),
        "dst": _ntop(fam, r.dst),
        "checksum_ok": None if r.checksum_ok < 0 else bool(r.checksum_ok),
        "is_error": bool(r.is_error),
    }
    if r.is_error:
        d["inner_dst"] = _ntop(fam, r.inner_dst)
        d["inner_ident"] = r.ident
        d["inner_seq"] = r.seq
        d["inner_payload"] = d["payload"]
        d["mtu"] = r.mtu if r.mtu else None
    return d


# ---------------------------------------------------------------- batch codec
def build_probes(family, ident, key, first_slot, count, serial, payload_size):
    """``count`` echo requests for slots first_slot.., concatenated (each
    8 + payload_size bytes): the per-packet work of the send loop, exposed so
    the codec can be measured and checked per packet against its twin."""
    cdef int fam = _family(family)
    ident = _arg("identifier", ident, 0, 0xFFFF)
    cdef Py_ssize_t psize = _arg("payload_size", payload_size, PROBE_HDR, PAYLOAD_MAX)
    first_slot = _arg("first_slot", first_slot, 0, 0xFFFFFFFF)
    cdef Py_ssize_t n = _arg("count", count, 0, 0x100000000 - first_slot)
    serial = _arg("serial", serial, 0, 0xFFFFFFFF)
    k0, k1 = _key_words(key)
    cdef uint64_t c0 = k0, c1 = k1
    cdef Py_ssize_t plen = ICMP_HDR_LEN + psize, i
    out = PyBytes_FromStringAndSize(NULL, plen * n)
    cdef uint8_t *base = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint8_t *pk
    cdef uint32_t slot0 = first_slot, ser = serial
    cdef uint16_t idn = ident
    cdef uint32_t pad_sum
    cdef uint8_t t = ICMP_ECHO_REQUEST if fam == AF_INET else ICMP6_ECHO_REQUEST
    cdef bint v4 = fam == AF_INET
    if n == 0:
        return out
    with nogil:
        _fill_pattern(base + ICMP_HDR_LEN + PROBE_HDR, psize - PROBE_HDR)
        pad_sum = csum_add(base + ICMP_HDR_LEN + PROBE_HDR, psize - PROBE_HDR, 0)
        for i in range(n):
            pk = base + i * plen
            if i:
                memcpy(pk + ICMP_HDR_LEN + PROBE_HDR, base + ICMP_HDR_LEN + PROBE_HDR,
                       psize - PROBE_HDR)
            pk[ICMP_TYPE_OFFSET] = t
            pk[ICMP_CODE_OFFSET] = 0
            wr16(pk + ICMP_CSUM_OFFSET, 0)
            wr16(pk + ICMP_ID_OFFSET, idn)
            wr16(pk + ICMP_SEQ_OFFSET, <uint16_t>(ser & 0xFFFF))
            write_probe_header(pk + ICMP_HDR_LEN, c0, c1, slot0 + <uint32_t>i, ser)
            if v4:
                wr16(pk + ICMP_CSUM_OFFSET, csum_fold(csum_add(pk, ICMP_HDR_LEN + PROBE_HDR, pad_sum)))
    return out


def parse_probes(data, packet_size, family, bint has_ip_header, key):
    """Parse consecutive packets of ``packet_size`` bytes; return the slots of
    those that are valid echo replies/requests carrying a cookie valid under ``key``."""
    import array
    cdef Py_ssize_t psize = _arg("packet_size", packet_size, 1, 0x7FFFFFFF)
    cdef int fam = _family(family)
    k0, k1 = _key_words(key)
    cdef uint64_t c0 = k0, c1 = k1
    cdef bytes b = bytes(data)
    cdef const uint8_t *base = <const uint8_t *>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = len(b) // psize
    out = array.array("I", bytes(4 * n))
    cdef Py_ssize_t found = _parse_probes_into(out, base, n, psize, fam, has_ip_header, c0, c1)
    del out[found:]
    return out


cdef Py_ssize_t _parse_probes_into(uint32_t[::1] slots, const uint8_t *base, Py_ssize_t n,
                                   Py_ssize_t packet_size, int family, bint has_ip,
                                   uint64_t c0, uint64_t c1):
    cdef Py_ssize_t i, found = 0
    cdef Parsed p
    cdef uint32_t slot, ser
    with nogil:
        for i in range(n):
            if parse_c(base + i * packet_size, packet_size, family, has_ip, &p) != 1 or p.is_error:
                continue
            if read_probe_header(p.payload, p.payload_len, c0, c1, &slot, &ser):
                slots[found] = slot
                found += 1
    return found


