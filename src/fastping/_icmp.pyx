# cython: language_level=3
"""fastping's compiled core: the ICMP/ICMPv6 codec and IcmpSocket.

ICMPv4 echo (RFC 792)                     ICMPv6 echo (RFC 4443 §4.1, §4.2)
 0               1               2               3
 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
+---------------+---------------+-------------------------------+
|     Type      |     Code      |           Checksum            |
+---------------+---------------+-------------------------------+
|          Identifier           |        Sequence Number        |
+-------------------------------+-------------------------------+
|     Data: fastping probe header, then padding ...
+-------------------------------------------------------------

fastping probe header (first PROBE_HEADER_SIZE bytes of the data, big-endian):
    slot   (4)  index of the target in its IcmpSocket
    serial (4)  per-slot probe counter; sequence number = serial & 0xffff
    cookie (8)  SipHash-2-4(key, slot << 32 | serial), key random per socket

ICMP errors (RFC 792 / RFC 4443 §3) quote the offending packet after their
8-byte header: the quoted IP header + our echo request, whose identifier and
probe header attribute the error to one probe.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.errno cimport EAGAIN, EINTR, EINVAL, ENOBUFS, errno
from libc.math cimport NAN
from libc.stdint cimport INT64_MAX, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, nanosleep, timespec
from posix.uio cimport iovec
from posix.unistd cimport close as c_close

from includes.poll cimport POLLERR, POLLIN, poll, pollfd
from includes.errqueue cimport (
    ICMP_FILTER, SO_EE_OFFENDER, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, icmp_filter,
    sock_extended_err,
)
from includes.filter cimport (
    BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX, BPF_MSH, BPF_RET,
    sock_filter, sock_fprog,
)
from includes.slotrow cimport SlotRow
from includes.sockdiag cimport SK_MEMINFO_DROPS, SO_MEMINFO
from includes.socket cimport (
    AF_INET, AF_INET6, CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, IP_MTU_DISCOVER,
    IP_PMTUDISC_DO, IP_RECVERR, IP_RECVTTL, IP_TOS, IP_TTL, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_IP, IPPROTO_IPV6, IPV6_DONTFRAG, IPV6_HOPLIMIT, IPV6_RECVERR, IPV6_RECVHOPLIMIT,
    IPV6_TCLASS, IPV6_UNICAST_HOPS, MSG_DONTWAIT, MSG_ERRQUEUE, SCM_TIMESTAMPING, SCM_TIMESTAMPNS,
    SO_ATTACH_FILTER, SO_RCVBUF, SO_RCVBUFFORCE, SO_RXQ_OVFL, SO_SNDBUF, SO_SNDBUFFORCE,
    SO_TIMESTAMPING, SO_TIMESTAMPNS, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_RAW, SOL_SOCKET,
    CMSG_LEN, bind, cmsghdr, getsockname, getsockopt, inet_ntop, inet_pton, mmsghdr,
    msghdr, recv, recvmmsg, sendmmsg, setsockopt, sockaddr, sockaddr_in, sockaddr_in6, socket,
    socklen_t,
)
from includes.tstamp cimport (
    SCM_TS_OPT_ID, SCM_TSTAMP_SND, SO_EE_ORIGIN_TIMESTAMPING, SOF_TIMESTAMPING_OPT_ID,
    SOF_TIMESTAMPING_OPT_TSONLY, SOF_TIMESTAMPING_RX_SOFTWARE, SOF_TIMESTAMPING_SOFTWARE,
    SOF_TIMESTAMPING_TX_SOFTWARE,
)

import operator
import os as _os

# ---------------------------------------------------------------- constants
cdef enum:
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

EV_REPLY = 0
EV_TIMEOUT = 1
EV_UNREACHABLE = 2
EV_TIME_EXCEEDED = 3
EV_SEND_ERROR = 4
EV_DUPLICATE = 5
EV_LATE = 6

DEF C_EV_REPLY = 0
DEF C_EV_TIMEOUT = 1
DEF C_EV_UNREACHABLE = 2
DEF C_EV_TIME_EXCEEDED = 3
DEF C_EV_SEND_ERROR = 4
DEF C_EV_DUPLICATE = 5
DEF C_EV_LATE = 6
DEF LAST_NONE = 0xFF         # SlotStats.last_kind before a slot's first final outcome
DEF SF_WIDE = 1              # SlotStats.flags: the slot's RTT range is in its SlotRare
DEF RTT_NARROW_MAX = 0xFFFFFFFF  # the widest RTT (ns) SlotStats.min_rtt/max_rtt hold

# Outcome-log modes (set_log)
DEF LOG_OFF = 0              # nothing logged, every event returned
DEF LOG_QUIET = 1            # replies/timeouts logged; returned only when the kind changes
DEF LOG_ALL = 2              # replies/timeouts logged and every event returned
DEF CHUNK_RECORD = 18        # bytes per record of a chunk (fastping.chunk.RECORD_SIZE)

# Offsets inside the ICMP header (RFC 792 / RFC 4443 figure above).
DEF ICMP_TYPE_OFFSET = 0
DEF ICMP_CODE_OFFSET = 1
DEF ICMP_CSUM_OFFSET = 2
DEF ICMP_ID_OFFSET = 4
DEF ICMP_SEQ_OFFSET = 6
DEF ICMP_HDR_LEN = 8
DEF ICMP_MTU_OFFSET = 4      # packet too big (v6): MTU in the "unused" word
DEF IP4_TTL_OFFSET = 8
DEF IP4_PROTO_OFFSET = 9
DEF IP4_SRC_OFFSET = 12
DEF IP4_DST_OFFSET = 16
DEF IP4_MIN_HDR = 20
DEF IP6_HDR_LEN = 40
DEF IP6_NEXT_OFFSET = 6
DEF IP6_HOPS_OFFSET = 7
DEF IP6_SRC_OFFSET = 8
DEF IP6_DST_OFFSET = 24
DEF PROBE_HDR = 16           # slot(4) serial(4) cookie(8)

PROBE_HEADER_SIZE = PROBE_HDR
globals().update({
    "ICMP_ECHO_REPLY": ICMP_ECHO_REPLY, "ICMP_ECHO_REQUEST": ICMP_ECHO_REQUEST,
    "ICMP6_ECHO_REPLY": ICMP6_ECHO_REPLY, "ICMP6_ECHO_REQUEST": ICMP6_ECHO_REQUEST,
})

# Probe slot states
DEF ST_EMPTY = 0
DEF ST_OUT = 1               # outstanding
DEF ST_DONE = 2              # answered (reply or ICMP error)
DEF ST_EXPIRED = 3           # timed out
DEF ST_SENDFAIL = 4          # the kernel refused the send
DEF ST_ERR_UNREACH = 5       # answered by an ICMP unreachable (a real reply may still follow)
DEF ST_ERR_TEXC = 6          # answered by an ICMP time exceeded (likewise)

# How a probe's send time is taken (IcmpSocket(timestamps=...)).
DEF TS_BATCH = 0             # one user-space clock read before each sendmmsg (the whole batch)
DEF TS_PACKET = 1            # one sendmsg per probe, a user-space clock read before each
DEF TS_KERNEL_ID = 2         # the kernel's TX timestamp, keyed per packet (SCM_TS_OPT_ID)
DEF TS_KERNEL_CTR = 3        # the kernel's TX timestamp, keyed by its own send counter
DEF TX_RING = 65536          # sent probes whose TX timestamp may still be queued (power of 2)
DEF TX_CTRL = 24             # CMSG_SPACE(4): one SCM_TS_OPT_ID per message
DEF LAT_BUCKETS = 240        # send-lateness histogram: log-linear, 8 buckets per octave of us

DEF RX_BUF = 1536            # a reply, or an ICMP error quoting up to 576+ bytes
DEF CTRL_BUF = 256
DEF MAX_BATCH = 1024
DEF NS = 1000000000


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


# ---------------------------------------------------------------- IcmpSocket
cdef struct SlotStats:
    # what every slot needs on every probe, 48 bytes: the rarely moved counters, RTTs
    # too wide for 32 bits and ICMP error details are in the slot's SlotRare (made on
    # its first such event), the engine's last-outcome record and the jitter state in
    # SlotRecent (a column made only for the sockets that need it): a million-target
    # sweep keeps 48 + 16 (Probe) + 4 (address) bytes per target
    uint32_t sent, received, timeouts
    uint32_t next_serial         # jitter is averaged over received - 1 successive pairs
    uint32_t min_rtt, max_rtt    # ns; the slot's SlotRare holds them once one did not fit
    #                              (flags & SF_WIDE: an RTT of 2**32 ns, 4.3 s, or more)
    int64_t sum_ns
    double sumsq
    uint32_t rare                # 1 + the index of the slot's SlotRare; 0: none yet
    uint8_t active, last_ttl
    # kind of the last final outcome (reply, timeout, unreachable, time exceeded, send
    # error), LAST_NONE before the first: quiet mode returns a reply/timeout only when
    # it differs, so the engine sees changes of state without an event per probe
    uint8_t last_kind
    uint8_t flags                # SF_*


cdef struct SlotRare:
    # what few slots ever need: made on a slot's first duplicate, late reply, ICMP
    # error, send error, user-timed reply or RTT too wide for SlotStats, and kept with
    # the slot (zeroed, not freed, when the slot is reset or reused)
    uint32_t dup, late, unreach, texc, senderr
    uint32_t user_timed          # replies whose send time is a user-space clock read
    int64_t min_ns, max_ns       # the RTT range once SF_WIDE is set
    uint8_t err_type, err_code
    uint8_t router[16]           # who sent the last ICMP error


cdef SlotRare NO_RARE           # all zero: what a slot without a SlotRare reads


cdef struct SlotRecent:
    # the engine's per-slot record of its last outcome, and the jitter state: a column
    # made on the first reply of a socket that is not sweeping once (sweep(count=1)
    # reports no jitter and no last outcome, so a million-target sweep does without)
    int64_t last_rtt_ns
    int64_t last_t_ns            # when the last final outcome was known (CLOCK_REALTIME ns)
    int64_t jit_sum_ns


cdef struct Probe:
    int64_t send_ns              # a user-space clock read, replaced by the kernel's TX stamp
    uint32_t serial
    uint8_t state
    uint8_t tx_kernel            # send_ns is the kernel's TX timestamp


cdef struct TxRec:
    # a sent probe whose TX timestamp is awaited: the key the kernel reports it with
    # (SCM_TS_OPT_ID, or the kernel's counter), the probe, and when it was due
    uint32_t key
    uint32_t slot
    uint32_t serial
    int64_t due_ns


cdef struct RxSet:
    # one recvmmsg batch's buffers: the normal queue and the error queue have their own,
    # so the error queue can be drained while a batch of replies is being handled
    mmsghdr *msgs
    iovec *iov
    uint8_t *bufs
    uint8_t *ctrl
    sockaddr_in6 *names
    int n


cdef struct Event:
    uint32_t slot
    uint32_t seq
    int64_t rtt_ns
    int32_t err
    int16_t ttl
    uint8_t kind, icmp_type, icmp_code, has_router
    uint8_t router[16]


cdef struct LogRec:
    # one reply or timeout in the outcome log (see take_log / fastping.chunk)
    int64_t t_ns
    float rtt_ms
    uint32_t slot
    uint16_t seq
    uint8_t code, ttl


cdef struct SlotOut:
    # take_log's per-slot destination: the chunk's buffer, its records, the next one
    uint8_t *base
    Py_ssize_t cnt, cur


cdef class IcmpSocket:
    """One ICMP socket (raw or unprivileged datagram) multiplexing any number of
    target slots. See the module docstring and ``_icmp.pyi``."""

    cdef readonly int family
    cdef readonly str kind
    cdef readonly int ident
    cdef readonly int payload_size
    cdef readonly int batch_size
    cdef readonly int window
    cdef readonly bytes key      # the cookie key (tests forge packets with it)
    cdef int fd
    cdef int busy                # a method is using fd with the GIL released (_enter/_leave)
    cdef bint closing            # close() came while busy: the loop winds down, _leave closes
    cdef bint raw
    cdef int addr_len            # 4 or 16
    cdef uint64_t k0, k1
    cdef int64_t timeout_ns      # replies slower than this count as late (0: no limit)
    # targets
    cdef uint8_t *addrs          # n_cap * addr_len
    cdef SlotStats *stats
    cdef Probe *probes           # n_cap * window
    cdef SlotRare *rare          # rare_n records, each owned by one slot (SlotStats.rare)
    cdef uint32_t rare_n, rare_cap
    cdef SlotRecent *recent      # NULL until needed, then n_cap (see SlotRecent)
    cdef bint need_recent        # make `recent` on the next reply (False in sweep(count=1))
    cdef int64_t *slot_tmo_ns    # NULL until a slot gets its own timeout, then n_cap (0: none)
    cdef uint32_t n, n_cap
    cdef uint32_t n_seen         # slots below it were initialised once (their SlotStats.rare is valid)
    cdef list free_slots
    # address -> slots, built only when an ICMP error quotes too little of a probe to
    # carry its cookie (RFC 792's minimum: IP header + 8 bytes); rebuilt after changes
    cdef uint32_t *aidx          # aidx_cap entries: slot + 1, 0 = empty (open addressing)
    cdef uint32_t aidx_cap
    cdef bint aidx_valid
    # batch buffers
    cdef uint8_t *tx_pkts
    cdef sockaddr_in6 *tx_names  # big enough for both families
    cdef iovec *tx_iov
    cdef mmsghdr *tx_msgs
    cdef uint32_t pad_sum        # checksum partial of the constant padding
    cdef RxSet rx                # the normal queue's batch
    cdef RxSet eq                # the error queue's (TX timestamps, dgram ICMP errors)
    cdef int rx_batch
    # send timestamps
    cdef uint8_t ts_mode         # TS_*
    cdef bint ts_rx_kernel       # receive times come from SCM_TIMESTAMPING (else SCM_TIMESTAMPNS)
    cdef bint ts_id_checked      # a send with SCM_TS_OPT_ID succeeded (the kernel takes it)
    cdef uint8_t *tx_ctrl        # batch_size * TX_CTRL: each message's SCM_TS_OPT_ID
    cdef TxRec *txr              # TX_RING
    cdef uint32_t tx_key_next    # the key of the next probe sent
    cdef bint eq_rechecked       # this reply batch already drained the error queue again
    cdef int64_t due_ns          # when the probes of the current send() were due (0: unknown)
    cdef uint64_t *lat_hist      # LAT_BUCKETS: probes by how late they left (kernel TX - due)
    cdef uint64_t c_lat_n, c_lat_sum_ns
    cdef int64_t c_lat_max_ns
    # events
    cdef Event *ev
    cdef Py_ssize_t ev_n, ev_cap
    cdef bint collect
    cdef bint no_drain           # send() without draining (tests, callers that drain themselves)
    cdef bint sweeping           # inside sweep(): no outcome log, no quiet filtering
    # outcome log
    cdef LogRec *log
    cdef Py_ssize_t log_n, log_cap, log_max_
    cdef uint8_t log_mode_
    # counters
    cdef uint64_t c_sent, c_received, c_dup, c_late, c_timeouts, c_unreach, c_texc, c_senderr
    cdef uint64_t c_enobufs, c_foreign, c_malformed, c_stale, c_unattributed, c_pkts
    cdef uint64_t c_f_type, c_f_ident, c_f_cookie, c_f_source, c_f_unsent, c_f_seq
    cdef uint64_t c_rxq_ovfl, c_events_lost, c_sock_errors, c_log_dropped
    cdef uint64_t c_stats_lost       # per-slot figures not kept: no memory for a SlotRare/SlotRecent
    cdef uint64_t c_tx_stamps, c_tx_unmatched, c_tx_late, c_timed_kernel, c_timed_user, c_rx_user
    cdef int64_t c_outstanding
    cdef int64_t t_send_ns, t_total_ns

    def __cinit__(self, int family=AF_INET, *, str kind="raw", int payload_size=56, ttl=None,
                  tos=None, bint dont_fragment=False, int rcvbuf_bytes=0, int batch_size=64,
                  int window=1, bint bpf=True, Py_ssize_t log_max=4_000_000,
                  str timestamps="kernel"):
        self.fd = -1
        if family != AF_INET and family != AF_INET6:
            raise ValueError(f"family must be socket.AF_INET or socket.AF_INET6, not {family}")
        if kind not in ("raw", "dgram"):
            raise ValueError(f"kind must be 'raw' or 'dgram', not {kind!r}")
        if payload_size < PROBE_HDR or payload_size > 65000:
            raise ValueError(f"payload_size {payload_size} must be {PROBE_HDR}..65000 bytes "
                             f"(fastping needs {PROBE_HDR} bytes for its probe header)")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size {batch_size} must be 1..{MAX_BATCH}")
        if not 1 <= window <= 64:
            raise ValueError(f"window {window} must be 1..64 outstanding probes per target")
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if log_max < 0:
            raise ValueError(f"log_max {log_max} must be >= 0 records (0: log nothing)")
        if timestamps not in ("kernel", "packet", "batch"):
            raise ValueError(f"timestamps must be 'kernel', 'packet' or 'batch', not {timestamps!r}")
        self.ts_mode = (TS_KERNEL_ID if timestamps == "kernel" else
                        TS_PACKET if timestamps == "packet" else TS_BATCH)
        self.log_max_ = log_max
        self.family = family
        self.kind = kind
        self.raw = kind == "raw"
        self.payload_size = payload_size
        self.batch_size = batch_size
        self.window = window
        self.addr_len = 4 if family == AF_INET else 16
        self.free_slots = []
        self.need_recent = True
        self.key = _os.urandom(16)
        self.k0, self.k1 = _key_words(self.key)
        self._alloc_buffers()
        self._open(ttl, tos, dont_fragment, rcvbuf_bytes, bpf)

    cdef int _alloc_buffers(self) except -1:
        cdef int B = self.batch_size
        cdef int plen = ICMP_HDR_LEN + self.payload_size
        self.rx_batch = 256 if B < 256 else B
        self.tx_pkts = <uint8_t *>PyMem_RawMalloc(<size_t>B * plen)
        self.tx_names = <sockaddr_in6 *>PyMem_RawMalloc(B * sizeof(sockaddr_in6))
        self.tx_iov = <iovec *>PyMem_RawMalloc(B * sizeof(iovec))
        self.tx_msgs = <mmsghdr *>PyMem_RawMalloc(B * sizeof(mmsghdr))
        self.tx_ctrl = <uint8_t *>PyMem_RawCalloc(B, TX_CTRL)
        self.txr = <TxRec *>PyMem_RawCalloc(TX_RING, sizeof(TxRec))
        self.lat_hist = <uint64_t *>PyMem_RawCalloc(LAT_BUCKETS, sizeof(uint64_t))
        cdef int R = self.rx_batch
        cdef int rxlen = RX_BUF if plen + 100 < RX_BUF else plen + 640
        _alloc_rxset(&self.rx, R, rxlen)
        _alloc_rxset(&self.eq, R, rxlen)
        if (self.tx_pkts == NULL or self.tx_names == NULL or self.tx_iov == NULL or
                self.tx_msgs == NULL or self.tx_ctrl == NULL or self.txr == NULL or
                self.lat_hist == NULL or self.rx.msgs == NULL or self.eq.msgs == NULL):
            raise MemoryError()
        memset(self.tx_pkts, 0, <size_t>B * plen)
        memset(self.tx_names, 0, B * sizeof(sockaddr_in6))
        memset(self.tx_msgs, 0, B * sizeof(mmsghdr))
        cdef int i
        cdef cmsghdr *c
        # every TxRec.key starts as a key no probe has yet (0 is the first probe's)
        for i in range(TX_RING):
            self.txr[i].key = 0xFFFFFFFF
        for i in range(B):
            _fill_pattern(self.tx_pkts + <size_t>i * plen + ICMP_HDR_LEN + PROBE_HDR,
                          self.payload_size - PROBE_HDR)
            self.tx_iov[i].iov_base = self.tx_pkts + <size_t>i * plen
            self.tx_iov[i].iov_len = plen
            self.tx_msgs[i].msg_hdr.msg_name = &self.tx_names[i]
            self.tx_msgs[i].msg_hdr.msg_namelen = (
                sizeof(sockaddr_in) if self.family == AF_INET else sizeof(sockaddr_in6))
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[i]
            self.tx_msgs[i].msg_hdr.msg_iovlen = 1
            # SCM_TS_OPT_ID: the key the kernel reports this message's TX timestamp with
            # (written per probe in _send_slots; attached once timestamping is on)
            c = <cmsghdr *>(self.tx_ctrl + <size_t>i * TX_CTRL)
            c.cmsg_level = SOL_SOCKET
            c.cmsg_type = SCM_TS_OPT_ID
            c.cmsg_len = CMSG_LEN(4)
        self.pad_sum = csum_add(self.tx_pkts + ICMP_HDR_LEN + PROBE_HDR, self.payload_size - PROBE_HDR, 0)
        return 0

    cdef void _tx_control(self, bint on) noexcept nogil:
        """Attach (or detach) each message's SCM_TS_OPT_ID control buffer."""
        cdef int i
        for i in range(self.batch_size):
            self.tx_msgs[i].msg_hdr.msg_control = (self.tx_ctrl + <size_t>i * TX_CTRL) if on else NULL
            self.tx_msgs[i].msg_hdr.msg_controllen = TX_CTRL if on else 0

    cdef int _setup_timestamps(self) except -1:
        """Kernel timestamps (Documentation/networking/timestamping.rst): a software TX
        timestamp of every probe, read back from the error queue without the packet
        (OPT_TSONLY) and keyed (OPT_ID), and software RX timestamps of every reply, both
        CLOCK_REALTIME. Without them (old kernel, timestamps='packet'/'batch'), receive
        times come from SO_TIMESTAMPNS and send times from user space."""
        cdef int flags = (SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_RX_SOFTWARE |
                          SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID |
                          SOF_TIMESTAMPING_OPT_TSONLY)
        if self.ts_mode == TS_KERNEL_ID:
            if setsockopt(self.fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) == 0:
                self.ts_rx_kernel = True
                self._tx_control(True)
                return 0
            self.ts_mode = TS_PACKET      # no kernel timestamping: one clock read per packet
        self._setopt(SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS")
        return 0

    @property
    def timestamps(self):
        """How send times are taken: 'kernel' (TX timestamps keyed per packet),
        'kernel-counter' (keyed by the kernel's send counter: kernels before 6.13),
        'packet' (a user-space clock read before each packet's own sendmsg) or
        'batch' (one clock read per sendmmsg batch)."""
        return ("batch", "packet", "kernel", "kernel-counter")[self.ts_mode]

    cdef int _open(self, ttl, tos, bint dont_fragment, int rcvbuf_bytes, bint use_bpf) except -1:
        cdef int proto = IPPROTO_ICMP if self.family == AF_INET else IPPROTO_ICMPV6
        cdef int stype = (SOCK_RAW if self.raw else SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC
        cdef int v
        cdef sockaddr_in6 sa
        cdef socklen_t sl
        self.fd = socket(self.family, stype, proto)
        if self.fd < 0:
            _raise_oserror(f"socket({'AF_INET' if self.family == AF_INET else 'AF_INET6'}, "
                           f"{'SOCK_RAW' if self.raw else 'SOCK_DGRAM'}, ICMP)")
        if self.raw:
            self.ident = int.from_bytes(_os.urandom(2), "big")
        else:
            # Unprivileged ICMP sockets: the kernel owns the identifier (it is the
            # socket's "port"); bind to learn it (net/ipv4/ping.c).
            memset(&sa, 0, sizeof(sa))
            sa.sin6_family = self.family
            sl = sizeof(sockaddr_in) if self.family == AF_INET else sizeof(sockaddr_in6)
            if bind(self.fd, <sockaddr *>&sa, sl) != 0:
                _raise_oserror("bind(ICMP datagram socket)")
            sl = sizeof(sa)
            if getsockname(self.fd, <sockaddr *>&sa, &sl) != 0:
                _raise_oserror("getsockname")
            self.ident = (<uint16_t>(sa.sin6_port >> 8)) | (<uint16_t>((sa.sin6_port & 0xFF) << 8))
        self._setup_timestamps()
        self._setopt(SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL")
        if self.family == AF_INET:
            if not self.raw:
                self._setopt(IPPROTO_IP, IP_RECVTTL, 1, "IP_RECVTTL")
                self._setopt(IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR")
            if ttl is not None:
                self._setopt(IPPROTO_IP, IP_TTL, ttl, "IP_TTL")
            if tos is not None:
                self._setopt(IPPROTO_IP, IP_TOS, tos, "IP_TOS")
            if dont_fragment:
                self._setopt(IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO, "IP_MTU_DISCOVER")
        else:
            self._setopt(IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT")
            if not self.raw:
                self._setopt(IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR")
            if ttl is not None:
                self._setopt(IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl, "IPV6_UNICAST_HOPS")
            if tos is not None:
                self._setopt(IPPROTO_IPV6, IPV6_TCLASS, tos, "IPV6_TCLASS")
            if dont_fragment:
                self._setopt(IPPROTO_IPV6, IPV6_DONTFRAG, 1, "IPV6_DONTFRAG")
        self.set_rcvbuf(rcvbuf_bytes if rcvbuf_bytes > 0 else 8 * 1024 * 1024)
        # A send burst of a whole batch must fit the send buffer too.
        v = 4 * 1024 * 1024
        if setsockopt(self.fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) != 0:
            setsockopt(self.fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v))
        if self.raw:
            if self.family == AF_INET:
                # ICMP_FILTER drops other types before the raw socket clones the
                # packet (raw_v4_input), which BPF cannot: on loopback every echo
                # request we send would otherwise be cloned and queued back to us.
                self._set_icmp_filter()
            if use_bpf:
                self._attach_bpf()
            # Packets queued between socket() and the filters skipped them; none can
            # be ours yet (nothing was sent), so discard them (socket(7), SO_ATTACH_FILTER).
            self._flush_queue()
        return 0

    cdef int _poll(self, int timeout_ms) noexcept nogil:
        """Wait until the socket has something to read (a reply, or on its error queue)
        or ``timeout_ms`` passes; > 0 when it has. poll(2), so the socket is watched only
        while someone waits (see includes/poll.pxd)."""
        cdef pollfd pf
        pf.fd = self.fd
        pf.events = POLLIN | POLLERR
        pf.revents = 0
        return poll(&pf, 1, timeout_ms)

    cdef int _setopt(self, int level, int name, int value, str what) except -1:
        if setsockopt(self.fd, level, name, &value, sizeof(value)) != 0:
            _raise_oserror(f"setsockopt({what}={value})")
        return 0

    def set_rcvbuf(self, int nbytes):
        """Size the receive buffer (the kernel doubles it). As root SO_RCVBUFFORCE
        passes net.core.rmem_max; otherwise the kernel caps it there."""
        if setsockopt(self.fd, SOL_SOCKET, SO_RCVBUFFORCE, &nbytes, sizeof(nbytes)) != 0:
            setsockopt(self.fd, SOL_SOCKET, SO_RCVBUF, &nbytes, sizeof(nbytes))

    @property
    def rcvbuf_bytes(self):
        cdef int v = 0
        cdef socklen_t sl = sizeof(v)
        getsockopt(self.fd, SOL_SOCKET, SO_RCVBUF, &v, &sl)
        return v

    cdef int _attach_bpf(self) except -1:
        # Classic BPF (Documentation/networking/filter.rst): pass echo replies and
        # ICMP errors that carry our identifier, drop the rest in the kernel, so
        # several fastping sockets never wake or flood each other.
        cdef sock_filter code[24]
        cdef sock_fprog prog
        cdef int i = 0
        cdef unsigned int ident = self.ident
        if self.family == AF_INET:
            # X = IPv4 header length; A = ICMP type. Jumps are relative (pc+1+jt/jf).
            code[0] = _bpf(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0)
            code[1] = _bpf(BPF_LD | BPF_B | BPF_IND, 0, 0, ICMP_TYPE_OFFSET)
            code[2] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, ICMP_ECHO_REPLY)       # -> 7
            code[3] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 7, 0, ICMP_DEST_UNREACH)     # -> 11
            code[4] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 6, 0, ICMP_TIME_EXCEEDED)    # -> 11
            code[5] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 5, 0, ICMP_PARAMETERPROB)    # -> 11
            code[6] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[7] = _bpf(BPF_LD | BPF_H | BPF_IND, 0, 0, ICMP_ID_OFFSET)         # echo id
            code[8] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, ident)                 # -> 10 / 9
            code[9] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[10] = _bpf(BPF_RET | BPF_K, 0, 0, 0xFFFF)
            # errors: the quoted probe (its IP header has no options: 20 bytes)
            code[11] = _bpf(BPF_LD | BPF_B | BPF_IND, 0, 0, ICMP_HDR_LEN + IP4_PROTO_OFFSET)
            code[12] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 4, IPPROTO_ICMP)         # / 17
            code[13] = _bpf(BPF_LD | BPF_B | BPF_IND, 0, 0, ICMP_HDR_LEN + IP4_MIN_HDR)
            code[14] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, ICMP_ECHO_REQUEST)    # / 17
            code[15] = _bpf(BPF_LD | BPF_H | BPF_IND, 0, 0, ICMP_HDR_LEN + IP4_MIN_HDR + ICMP_ID_OFFSET)
            code[16] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, ident)                # -> 18 / 17
            code[17] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[18] = _bpf(BPF_RET | BPF_K, 0, 0, 0xFFFF)
            i = 19
        else:
            # IPv6 raw sockets deliver the packet from the ICMPv6 header on.
            code[0] = _bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, ICMP_TYPE_OFFSET)
            code[1] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, ICMP6_ECHO_REPLY)      # -> 6
            code[2] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 6, 0, ICMP6_DST_UNREACH)     # -> 9
            code[3] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 5, 0, ICMP6_PACKET_TOO_BIG)  # -> 9
            code[4] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, ICMP6_TIME_EXCEEDED)   # -> 9
            code[5] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 3, 8, ICMP6_PARAM_PROB)      # -> 9 / drop 14
            code[6] = _bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, ICMP_ID_OFFSET)
            code[7] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 7, 6, ident)                 # -> 15 / 14
            code[8] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[9] = _bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, ICMP_HDR_LEN + IP6_NEXT_OFFSET)
            code[10] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, IPPROTO_ICMPV6)       # / 14
            code[11] = _bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, ICMP_HDR_LEN + IP6_HDR_LEN + ICMP_ID_OFFSET)
            code[12] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 2, 1, ident)                # -> 15 / 14
            code[13] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[14] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[15] = _bpf(BPF_RET | BPF_K, 0, 0, 0xFFFF)
            i = 16
        prog.len = i
        prog.filter = code
        if setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0:
            _raise_oserror("setsockopt(SO_ATTACH_FILTER)")
        return 0

    cdef int _flush_queue(self) except -1:
        cdef uint8_t scratch[2048]
        cdef int guard = 0
        while guard < 1000000 and recv(self.fd, scratch, sizeof(scratch), MSG_DONTWAIT) >= 0:
            guard += 1
        return 0

    cdef int _set_icmp_filter(self) except -1:
        # Without BPF, at least keep looped-back echo requests and other ICMP noise
        # out (raw(7): ICMP_FILTER is a bit mask of types to drop).
        cdef icmp_filter f
        f.data = ~((1u << ICMP_ECHO_REPLY) | (1u << ICMP_DEST_UNREACH) |
                   (1u << ICMP_TIME_EXCEEDED) | (1u << ICMP_PARAMETERPROB))
        if setsockopt(self.fd, IPPROTO_ICMP + 254, ICMP_FILTER, &f, sizeof(f)) != 0:  # SOL_RAW = 255
            _raise_oserror("setsockopt(ICMP_FILTER)")
        return 0

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)
        PyMem_RawFree(self.addrs)
        PyMem_RawFree(self.stats)
        PyMem_RawFree(self.probes)
        PyMem_RawFree(self.rare)
        PyMem_RawFree(self.recent)
        PyMem_RawFree(self.slot_tmo_ns)
        PyMem_RawFree(self.log)
        PyMem_RawFree(self.tx_pkts)
        PyMem_RawFree(self.tx_names)
        PyMem_RawFree(self.tx_iov)
        PyMem_RawFree(self.tx_msgs)
        PyMem_RawFree(self.aidx)
        PyMem_RawFree(self.tx_ctrl)
        PyMem_RawFree(self.txr)
        PyMem_RawFree(self.lat_hist)
        _free_rxset(&self.rx)
        _free_rxset(&self.eq)
        PyMem_RawFree(self.ev)

    def fileno(self):
        return self.fd

    def close(self):
        """Close the socket (idempotent). From another thread while a sweep, send,
        recv or wait runs with the GIL released: that call stops at its next batch and
        the socket is closed as it returns (the fd is never pulled from under it)."""
        if self.busy:
            self.closing = True
            return
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    cdef int _enter(self) except -1:
        # before an operation that uses fd with the GIL released: one at a time
        self._check_open()
        if self.closing:
            raise ValueError("I/O on a closed IcmpSocket")
        if self.busy:
            raise RuntimeError("the IcmpSocket is in use by another thread: use one socket "
                               "from one thread at a time")
        self.busy = 1
        return 0

    cdef void _leave(self) noexcept:
        self.busy = 0
        if self.closing and self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    @property
    def closed(self):
        return self.fd < 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return f"<IcmpSocket {fam} {self.kind} ident={self.ident} slots={self.n} fd={self.fd}>"

    cdef int _check_open(self) except -1:
        if self.fd < 0:
            raise ValueError("I/O on a closed IcmpSocket")
        return 0

    @property
    def timeout_s(self):
        """Replies slower than this are counted as late (0: no limit)."""
        return self.timeout_ns / 1e9

    @timeout_s.setter
    def timeout_s(self, double v):
        if v < 0:
            raise ValueError("timeout_s must be >= 0")
        self.timeout_ns = <int64_t>(v * 1e9)

    # ------------------------------------------------------------ targets
    @property
    def n_slots(self):
        return self.n

    def memory(self):
        """Bytes held per purpose: addresses, slots (SlotStats), probes (the window
        of each slot), rare (SlotRare records), recent (SlotRecent column), timeouts
        (per-slot timeouts), log (outcome log), events, buffers (batch and TX ring);
        "per_slot_size" gives the record sizes."""
        cdef size_t n = self.n_cap
        cdef size_t ring = TX_RING * sizeof(TxRec) if self.txr != NULL else 0
        return {
            "addresses": n * self.addr_len,
            "slots": n * sizeof(SlotStats),
            "probes": n * self.window * sizeof(Probe),
            "rare": <size_t>self.rare_cap * sizeof(SlotRare),
            "recent": n * sizeof(SlotRecent) if self.recent != NULL else 0,
            "timeouts": n * sizeof(int64_t) if self.slot_tmo_ns != NULL else 0,
            "address_index": <size_t>self.aidx_cap * sizeof(uint32_t),
            "log": <size_t>self.log_cap * sizeof(LogRec),
            "events": <size_t>self.ev_cap * sizeof(Event),
            "buffers": ring + <size_t>self.batch_size * (
                ICMP_HDR_LEN + self.payload_size + sizeof(sockaddr_in6) + sizeof(iovec)
                + sizeof(mmsghdr)),
            "per_slot_size": {"SlotStats": sizeof(SlotStats), "Probe": sizeof(Probe),
                              "SlotRare": sizeof(SlotRare), "SlotRecent": sizeof(SlotRecent)},
        }

    cdef int _grow(self, uint32_t need) except -1:
        cdef uint32_t cap = self.n_cap if self.n_cap else 16
        if need <= self.n_cap:
            return 0
        while cap < need:
            cap = cap * 2 if cap < 0x40000000 else need
        cdef void *a = PyMem_RawRealloc(self.addrs, <size_t>cap * self.addr_len)
        if a == NULL:
            raise MemoryError()
        self.addrs = <uint8_t *>a
        a = PyMem_RawRealloc(self.stats, <size_t>cap * sizeof(SlotStats))
        if a == NULL:
            raise MemoryError()
        self.stats = <SlotStats *>a
        a = PyMem_RawRealloc(self.probes, <size_t>cap * self.window * sizeof(Probe))
        if a == NULL:
            raise MemoryError()
        self.probes = <Probe *>a
        if self.slot_tmo_ns != NULL:
            a = PyMem_RawRealloc(self.slot_tmo_ns, <size_t>cap * sizeof(int64_t))
            if a == NULL:
                raise MemoryError()
            self.slot_tmo_ns = <int64_t *>a
        if self.recent != NULL:
            a = PyMem_RawRealloc(self.recent, <size_t>cap * sizeof(SlotRecent))
            if a == NULL:
                raise MemoryError()
            self.recent = <SlotRecent *>a
        self.n_cap = cap
        return 0

    cdef SlotRare *_rare(self, uint32_t slot) noexcept nogil:
        """The slot's SlotRare, made on first use; NULL (counted in stats_lost) when
        there is no memory for it."""
        cdef SlotStats *st = &self.stats[slot]
        cdef uint32_t cap
        cdef void *a
        if st.rare:
            return &self.rare[st.rare - 1]
        if self.rare_n == self.rare_cap:
            # at most one record a slot: rare_n < n_seen <= n_cap here, so n_cap is room
            cap = self.rare_cap * 2 + 256
            if cap > self.n_cap:
                cap = self.n_cap
            a = PyMem_RawRealloc(self.rare, <size_t>cap * sizeof(SlotRare))
            if a == NULL:
                self.c_stats_lost += 1
                return NULL
            self.rare = <SlotRare *>a
            self.rare_cap = cap
        memset(&self.rare[self.rare_n], 0, sizeof(SlotRare))
        self.rare_n += 1
        st.rare = self.rare_n
        return &self.rare[st.rare - 1]

    cdef inline void _count_late(self, uint32_t slot) noexcept nogil:
        cdef SlotRare *rr = self._rare(slot)
        if rr != NULL:
            rr.late += 1

    cdef inline const SlotRare *_rare_ro(self, uint32_t slot) noexcept nogil:
        # for reading: the slot's SlotRare, or an all-zero one
        cdef uint32_t r = self.stats[slot].rare
        return &self.rare[r - 1] if r else &NO_RARE

    cdef SlotRecent *_recent(self, uint32_t slot) noexcept nogil:
        """The slot's SlotRecent, or NULL when the socket keeps none (sweep(count=1)) or
        there is no memory for the column (counted in stats_lost)."""
        if self.recent == NULL:
            if not self.need_recent or self.n_cap == 0:
                return NULL
            self.recent = <SlotRecent *>PyMem_RawCalloc(self.n_cap, sizeof(SlotRecent))
            if self.recent == NULL:
                self.c_stats_lost += 1
                return NULL
        return &self.recent[slot]

    cdef inline void _wide_rtt(self, uint32_t slot, int64_t rtt) noexcept nogil:
        """Take ``rtt`` into the slot's RTT range when it (or an earlier one) does not
        fit SlotStats' 32 bits: the range moves to the slot's SlotRare for good."""
        cdef SlotStats *st = &self.stats[slot]
        cdef SlotRare *rr = self._rare(slot)
        if rr == NULL:
            return
        if not (st.flags & SF_WIDE):
            st.flags |= SF_WIDE
            if st.received == 1:
                rr.min_ns = rr.max_ns = rtt
                return
            rr.min_ns = st.min_rtt
            rr.max_ns = st.max_rtt
        if rtt < rr.min_ns:
            rr.min_ns = rtt
        if rtt > rr.max_ns:
            rr.max_ns = rtt

    cdef void _clear_slot(self, uint32_t s) noexcept nogil:
        # zero the slot's figures; its SlotRare stays its own, zeroed
        cdef uint32_t r = self.stats[s].rare
        cdef uint8_t act = self.stats[s].active
        memset(&self.stats[s], 0, sizeof(SlotStats))
        self.stats[s].active = act
        self.stats[s].last_kind = LAST_NONE
        self.stats[s].rare = r
        if r:
            memset(&self.rare[r - 1], 0, sizeof(SlotRare))
        if self.recent != NULL:
            memset(&self.recent[s], 0, sizeof(SlotRecent))

    cdef void _init_slot(self, uint32_t s) noexcept nogil:
        self.aidx_valid = False
        if s >= self.n_seen:
            # a slot never used before: its memory holds nothing to keep
            self.stats[s].rare = 0
            self.n_seen = s + 1
        self.stats[s].active = 1
        self._clear_slot(s)
        if self.slot_tmo_ns != NULL:
            self.slot_tmo_ns[s] = 0
        memset(&self.probes[<size_t>s * self.window], 0, self.window * sizeof(Probe))

    def clear_targets(self):
        """Drop every slot and reset stats."""
        self.n = 0
        self.free_slots = []
        self.reset_stats()

    def set_targets(self, addresses):
        """Replace all slots with numeric ``addresses`` of this family."""
        self.clear_targets()
        self.append_targets(addresses)

    def append_targets(self, addresses):
        """Append slots for numeric ``addresses``; return the first new slot."""
        addrs = list(addresses)
        cdef uint32_t first = self.n
        self._grow(self.n + len(addrs))
        cdef uint32_t s
        for a in addrs:
            s = self.n
            self._pton(a, self.addrs + <size_t>s * self.addr_len)
            self._init_slot(s)
            self.n += 1
        return first

    def append_range_v4(self, first, count):
        """Append ``count`` consecutive IPv4 addresses from ``first`` (host-order int),
        expanded here with no Python object per target; return the first new slot."""
        if self.family != AF_INET:
            raise ValueError("append_range_v4 needs an AF_INET socket")
        if count < 0 or first < 0 or first + count > 0x100000000:
            raise ValueError("IPv4 range out of bounds")
        cdef uint32_t start = self.n, i, a0 = first, cnt = count
        self._grow(self.n + cnt)
        with nogil:
            for i in range(cnt):
                wr32(self.addrs + <size_t>(start + i) * 4, a0 + i)
                self._init_slot(start + i)
        self.n += cnt
        return start

    def append_packed(self, const uint8_t[::1] packed):
        """Append one slot per address in ``packed`` (network-order addresses of this
        family, 4 or 16 bytes each, back to back: what fastping._pipeline parses a
        targets file into), with no Python object per target; return the first new slot."""
        cdef Py_ssize_t nb = packed.shape[0]
        if nb % self.addr_len:
            raise ValueError(f"packed addresses: {nb} bytes is not a multiple of {self.addr_len}")
        cdef uint32_t start = self.n, i, cnt = <uint32_t>(nb // self.addr_len)
        if nb // self.addr_len + self.n > 0xFFFFFFFF:
            raise ValueError("too many targets for one socket")
        self._grow(self.n + cnt)
        if cnt:
            with nogil:
                memcpy(self.addrs + <size_t>start * self.addr_len, &packed[0], <size_t>nb)
                for i in range(cnt):
                    self._init_slot(start + i)
        self.n += cnt
        return start

    cdef int _pton(self, object a, uint8_t *dst) except -1:
        if not isinstance(a, str):
            raise TypeError(f"address must be a str, not {type(a).__name__}")
        b = (<str>a).split("%", 1)[0].encode("ascii", "replace")
        if inet_pton(self.family, b, dst) != 1:
            fam = "IPv4" if self.family == AF_INET else "IPv6"
            raise ValueError(f"{a!r} is not a numeric {fam} address (resolve names first)")
        return 0

    def add_target(self, str address):
        """Add one target, return its slot (a freed slot is reused)."""
        cdef uint32_t s
        if self.free_slots:
            s = self.free_slots.pop()
        else:
            self._grow(self.n + 1)
            s = self.n
            self.n += 1
        try:
            self._pton(address, self.addrs + <size_t>s * self.addr_len)
        except BaseException:
            self.free_slots.append(s)
            raise
        self._init_slot(s)
        return s

    def remove_target(self, uint32_t slot):
        """Free ``slot``: later replies for it are ignored and counted as stale."""
        if slot >= self.n or not self.stats[slot].active:
            raise KeyError(f"slot {slot} is not in use")
        cdef uint32_t w
        cdef Probe *pr
        for w in range(self.window):
            pr = &self.probes[<size_t>slot * self.window + w]
            if pr.state == ST_OUT:
                self.c_outstanding -= 1
            pr.state = ST_EMPTY
        self.stats[slot].active = 0
        self.aidx_valid = False
        self.stats[slot].last_kind = LAST_NONE
        if self.slot_tmo_ns != NULL:
            self.slot_tmo_ns[slot] = 0
        self.free_slots.append(slot)

    def slot_address(self, uint32_t slot):
        if slot >= self.n:
            raise IndexError(slot)
        return _ntop(self.family, self.addrs + <size_t>slot * self.addr_len)

    def slot_stats(self, uint32_t slot):
        """(sent, received, duplicates, late, timeouts, unreachable, time_exceeded,
        send_errors, min_ns, max_ns, sum_ns, sumsq_ns2, jitter_sum_ns, jitter_n,
        last_ttl, last_err_type, last_err_code, last_err_router, user_timed): user_timed
        counts the replies whose RTT starts at a user-space send time (no kernel TX
        timestamp for that probe)."""
        if slot >= self.n:
            raise IndexError(slot)
        cdef SlotRow r
        self._row(slot, &r)
        cdef const SlotRare *rr = self._rare_ro(slot)
        router = _ntop(self.family, r.router) if r.has_router else None
        # without kernel TX timestamps every reply is timed from user space
        user_timed = rr.user_timed if self.ts_mode >= TS_KERNEL_ID else r.received
        return (r.sent, r.received, r.dup, r.late, r.timeouts, r.unreach, r.texc,
                r.senderr, r.min_ns, r.max_ns, r.sum_ns, r.sumsq, r.jit_sum_ns,
                r.received - 1 if r.received > 1 and self.recent != NULL else 0, r.ttl,
                r.err_type, r.err_code, router, user_timed)

    cdef void _row(self, uint32_t s, SlotRow *r) noexcept nogil:
        # slot s's figures gathered from its columns into one exported row
        cdef const SlotStats *st = &self.stats[s]
        cdef const SlotRare *rr = self._rare_ro(s)
        memset(r, 0, sizeof(SlotRow))
        r.sent = st.sent
        r.received = st.received
        r.timeouts = st.timeouts
        r.dup = rr.dup
        r.late = rr.late
        r.unreach = rr.unreach
        r.texc = rr.texc
        r.senderr = rr.senderr
        if st.flags & SF_WIDE:
            r.min_ns = rr.min_ns
            r.max_ns = rr.max_ns
        else:
            r.min_ns = st.min_rtt
            r.max_ns = st.max_rtt
        r.sum_ns = st.sum_ns
        if self.recent != NULL:
            r.jit_sum_ns = self.recent[s].jit_sum_ns
        r.sumsq = st.sumsq
        r.ttl = st.last_ttl
        r.err_type = rr.err_type
        r.err_code = rr.err_code
        memcpy(r.addr, self.addrs + <size_t>s * self.addr_len, self.addr_len)
        if rr.err_type or rr.unreach or rr.texc:
            r.has_router = 1
            memcpy(r.router, rr.router, self.addr_len)

    def export_rows(self, uint32_t start, uint32_t count, uint8_t[::1] out):
        """Copy the results of slots [start, start + count) into ``out`` as packed
        rows (``includes/slotrow.pxd``), GIL released: the pipeline formats and
        exports columns from them without a Python object per target. Returns the
        number of rows written (fewer when ``out`` or the slots run out)."""
        cdef Py_ssize_t cap = out.shape[0] // sizeof(SlotRow), k
        cdef uint32_t end
        if start > self.n:
            raise IndexError(start)
        if count > self.n - start:
            count = self.n - start
        if count > cap:
            count = <uint32_t>cap
        end = start + count
        if count == 0:
            return 0
        cdef SlotRow *rows = <SlotRow *>&out[0]
        cdef uint32_t s
        with nogil:
            k = 0
            for s in range(start, end):
                self._row(s, &rows[k])
                k += 1
        return count

    def totals(self):
        """Socket counters (see the stub). rx_drops is the kernel's count of replies
        dropped for lack of receive-buffer room (SO_MEMINFO / SO_RXQ_OVFL)."""
        cdef uint32_t mi[16]
        cdef socklen_t ml = sizeof(mi)
        cdef uint64_t drops = self.c_rxq_ovfl
        memset(mi, 0, sizeof(mi))
        if self.fd >= 0 and getsockopt(self.fd, SOL_SOCKET, SO_MEMINFO, mi, &ml) == 0:
            if mi[SK_MEMINFO_DROPS] > drops:
                drops = mi[SK_MEMINFO_DROPS]
        return {
            "sent": self.c_sent, "received": self.c_received, "duplicates": self.c_dup,
            "late": self.c_late, "timeouts": self.c_timeouts, "unreachable": self.c_unreach,
            "time_exceeded": self.c_texc, "send_errors": self.c_senderr,
            "enobufs": self.c_enobufs, "rx_drops": drops, "foreign": self.c_foreign,
            "malformed": self.c_malformed,
            "foreign_type": self.c_f_type, "foreign_ident": self.c_f_ident,
            "foreign_cookie": self.c_f_cookie, "foreign_source": self.c_f_source,
            "foreign_unsent": self.c_f_unsent, "foreign_seq": self.c_f_seq, "stale": self.c_stale,
            "errors_unattributed": self.c_unattributed, "packets_read": self.c_pkts,
            "outstanding": self.c_outstanding, "events_lost": self.c_events_lost,
            "socket_errors": self.c_sock_errors,
            "log_dropped": self.c_log_dropped, "log_pending": self.log_n,
            "send_ns": self.t_send_ns, "total_ns": self.t_total_ns,
            "timed_kernel": self.c_timed_kernel, "timed_user": self.c_timed_user,
            "tx_stamps": self.c_tx_stamps, "tx_unmatched": self.c_tx_unmatched,
            "tx_late": self.c_tx_late, "rx_user": self.c_rx_user,
            "stats_lost": self.c_stats_lost,
        }

    def reset_stats(self):
        """Zero the counters and per-slot stats (targets stay)."""
        cdef uint32_t s
        self.c_sent = self.c_received = self.c_dup = self.c_late = self.c_timeouts = 0
        self.c_unreach = self.c_texc = self.c_senderr = self.c_enobufs = self.c_foreign = 0
        self.c_malformed = self.c_stale = self.c_unattributed = self.c_pkts = 0
        self.c_f_type = self.c_f_ident = self.c_f_cookie = self.c_f_source = self.c_f_unsent = 0
        self.c_f_seq = 0
        self.c_outstanding = 0
        self.c_rxq_ovfl = self.c_events_lost = self.c_sock_errors = self.c_log_dropped = 0
        self.c_stats_lost = 0
        self.c_tx_stamps = self.c_tx_unmatched = self.c_tx_late = 0
        self.c_timed_kernel = self.c_timed_user = self.c_rx_user = 0
        self.t_send_ns = self.t_total_ns = 0
        for s in range(self.n):
            self._clear_slot(s)
            memset(&self.probes[<size_t>s * self.window], 0, self.window * sizeof(Probe))

    # ------------------------------------------------------------ events
    cdef inline void _event(self, uint32_t slot, uint8_t kind, uint32_t seq, int64_t rtt,
                            int ttl, int itype, int icode, const uint8_t *router,
                            int err) noexcept nogil:
        cdef Event *e
        cdef void *p
        if not self.collect:
            return
        if self.ev_n == self.ev_cap:
            p = PyMem_RawRealloc(self.ev, (self.ev_cap * 2 + 256) * sizeof(Event))
            if p == NULL:
                self.c_events_lost += 1   # out of memory: counters stay exact, the event is counted lost
                return
            self.ev = <Event *>p
            self.ev_cap = self.ev_cap * 2 + 256
        e = &self.ev[self.ev_n]
        self.ev_n += 1
        e.slot = slot
        e.kind = kind
        e.seq = seq
        e.rtt_ns = rtt
        e.ttl = ttl
        e.icmp_type = itype
        e.icmp_code = icode
        e.err = err
        e.has_router = router != NULL
        if router != NULL:
            memcpy(e.router, router, self.addr_len)

    cdef list _take_events(self):
        cdef Py_ssize_t i
        cdef Event *e
        out = []
        for i in range(self.ev_n):
            e = &self.ev[i]
            out.append((e.slot, e.kind, e.seq & 0xFFFF, e.rtt_ns,
                        e.ttl if e.ttl >= 0 else None,
                        e.icmp_type if e.kind == C_EV_UNREACHABLE or e.kind == C_EV_TIME_EXCEEDED else None,
                        e.icmp_code if e.kind == C_EV_UNREACHABLE or e.kind == C_EV_TIME_EXCEEDED else None,
                        _ntop(self.family, e.router) if e.has_router else None,
                        e.err if e.kind == C_EV_SEND_ERROR else None))
        self.ev_n = 0
        return out

    # ------------------------------------------------------------ sending
    cdef inline void _expire_probe(self, uint32_t slot, Probe *pr, int64_t t) noexcept nogil:
        pr.state = ST_EXPIRED
        self.stats[slot].timeouts += 1
        self.c_timeouts += 1
        self.c_outstanding -= 1
        self._final(slot, C_EV_TIMEOUT, pr.serial, 0, -1, t)

    cdef inline void _final(self, uint32_t slot, uint8_t kind, uint32_t serial, int64_t rtt,
                            int ttl, int64_t t) noexcept nogil:
        """A reply or timeout (known at ``t``): remember it as the slot's last final
        outcome, log it (modes 1, 2) and make its event unless quiet mode hides it
        (same kind as the slot's previous final outcome). Not while sweeping: sweep()
        keeps its own aggregates and must not fill the log."""
        cdef SlotStats *st = &self.stats[slot]
        cdef bint same = st.last_kind == kind
        cdef SlotRecent *rc = self._recent(slot)
        st.last_kind = kind
        if rc != NULL:
            rc.last_t_ns = t
        if self.log_mode_ != LOG_OFF and not self.sweeping:
            self._log(slot, kind, serial, rtt, ttl, t)
            if same and self.log_mode_ == LOG_QUIET:
                return
        self._event(slot, kind, serial, rtt, ttl, 0, 0, NULL, 0)

    cdef inline void _log(self, uint32_t slot, uint8_t kind, uint32_t serial, int64_t rtt,
                          int ttl, int64_t t) noexcept nogil:
        """Append one record to the outcome log; a record that does not fit (log_max,
        or no memory) is counted in log_dropped."""
        cdef LogRec *r
        cdef void *p
        cdef Py_ssize_t cap
        if self.log_n >= self.log_max_:
            self.c_log_dropped += 1
            return
        if self.log_n == self.log_cap:
            cap = self.log_cap * 2 + 4096
            if cap > self.log_max_:
                cap = self.log_max_
            p = PyMem_RawRealloc(self.log, <size_t>cap * sizeof(LogRec))
            if p == NULL:
                self.c_log_dropped += 1
                return
            self.log = <LogRec *>p
            self.log_cap = cap
        r = &self.log[self.log_n]
        self.log_n += 1
        r.t_ns = t
        r.rtt_ms = <float>(<double>rtt / 1e6) if kind == C_EV_REPLY else NAN
        r.slot = slot
        r.seq = <uint16_t>(serial & 0xFFFF)
        r.code = kind               # EV_REPLY / EV_TIMEOUT are chunk.OUTCOME_CODE's numbers
        r.ttl = <uint8_t>ttl if kind == C_EV_REPLY and 0 <= ttl <= 255 else 0

    cdef inline void _set_last(self, uint32_t slot, uint8_t kind, int64_t t) noexcept nogil:
        # final outcomes other than reply/timeout are always returned; only remembered
        cdef SlotRecent *rc = self._recent(slot)
        self.stats[slot].last_kind = kind
        if rc != NULL:
            rc.last_t_ns = t

    cdef int _send_slots(self, const uint32_t *slots, Py_ssize_t count) noexcept nogil:
        """Send one probe to each slot, in batches. Returns 0, or -1 after a fatal errno."""
        cdef int B = self.batch_size
        cdef int plen = ICMP_HDR_LEN + self.payload_size
        cdef Py_ssize_t i = 0, j, k
        cdef int r, tries, err
        cdef uint32_t s, serial
        cdef uint8_t *pk
        cdef Probe *pr
        cdef SlotStats *st
        cdef sockaddr_in *sin
        cdef sockaddr_in6 *sin6
        cdef int64_t t
        cdef uint8_t icmp_type = ICMP_ECHO_REQUEST if self.family == AF_INET else ICMP6_ECHO_REQUEST
        cdef Py_ssize_t built, done, n_try
        cdef uint32_t key
        cdef TxRec *tr
        while i < count:
            # build up to B probes
            built = 0
            j = i
            while j < count and built < B:
                s = slots[j]
                j += 1
                if s >= self.n or not self.stats[s].active:
                    continue
                st = &self.stats[s]
                serial = st.next_serial
                st.next_serial += 1
                pr = &self.probes[<size_t>s * self.window + serial % self.window]
                if pr.state == ST_OUT:
                    # the window is full: the oldest probe has outlived its timeout
                    self._expire_probe(s, pr, now_ns())
                pr.serial = serial
                pr.state = ST_OUT
                pk = self.tx_pkts + <size_t>built * plen
                pk[ICMP_TYPE_OFFSET] = icmp_type
                pk[ICMP_CODE_OFFSET] = 0
                wr16(pk + ICMP_ID_OFFSET, <uint16_t>self.ident)
                wr16(pk + ICMP_SEQ_OFFSET, <uint16_t>(serial & 0xFFFF))
                write_probe_header(pk + ICMP_HDR_LEN, self.k0, self.k1, s, serial)
                wr16(pk + ICMP_CSUM_OFFSET, 0)
                if self.family == AF_INET:
                    wr16(pk + ICMP_CSUM_OFFSET,
                         csum_fold(csum_add(pk, ICMP_HDR_LEN + PROBE_HDR, self.pad_sum)))
                    sin = <sockaddr_in *>&self.tx_names[built]
                    sin.sin_family = AF_INET
                    memcpy(&sin.sin_addr, self.addrs + <size_t>s * 4, 4)
                else:
                    sin6 = &self.tx_names[built]
                    sin6.sin6_family = AF_INET6
                    memcpy(&sin6.sin6_addr, self.addrs + <size_t>s * 16, 16)
                if self.ts_mode == TS_KERNEL_ID:
                    # the key the kernel will report this probe's TX timestamp with
                    key = self.tx_key_next + <uint32_t>built
                    memcpy(CMSG_DATA(<cmsghdr *>(self.tx_ctrl + <size_t>built * TX_CTRL)), &key, 4)
                    tr = &self.txr[key & (TX_RING - 1)]
                    tr.key = key
                    tr.slot = s
                    tr.serial = serial
                    tr.due_ns = self.due_ns
                built += 1
            i = j
            # send them. A user-space send time is taken just before each sendmmsg (one
            # packet per call in TS_PACKET mode); in the kernel modes it is replaced by
            # the probe's TX timestamp when the error queue is read (_on_tx_stamp).
            done = 0
            tries = 0
            while done < built:
                n_try = 1 if self.ts_mode == TS_PACKET else built - done
                t = now_ns()
                for k in range(done, done + n_try):
                    # slot and serial are read back from the probe header just built
                    s = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN)
                    serial = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN + 4)
                    pr = &self.probes[<size_t>s * self.window + serial % self.window]
                    pr.send_ns = t
                    pr.tx_kernel = 0
                r = sendmmsg(self.fd, self.tx_msgs + done, n_try, 0)
                if r > 0:
                    if self.ts_mode == TS_KERNEL_ID:
                        self.ts_id_checked = True
                    for k in range(done, done + r):
                        s = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN)
                        self.stats[s].sent += 1
                        if self.ts_mode == TS_KERNEL_CTR:
                            # the kernel keys each packet it sends with its own counter
                            tr = &self.txr[self.tx_key_next & (TX_RING - 1)]
                            tr.key = self.tx_key_next
                            tr.slot = s
                            tr.serial = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN + 4)
                            tr.due_ns = self.due_ns
                            self.tx_key_next += 1
                        elif self.ts_mode == TS_BATCH or self.ts_mode == TS_PACKET:
                            self._lateness(self.due_ns, t)
                    self.c_sent += r
                    self.c_outstanding += r
                    done += r
                    continue
                err = errno
                if err == EINTR:
                    continue
                if err == EINVAL and self.ts_mode == TS_KERNEL_ID and not self.ts_id_checked:
                    # the kernel refuses per-packet keys (SCM_TS_OPT_ID is Linux 6.13+):
                    # use its own send counter, which nothing has moved yet
                    self.ts_mode = TS_KERNEL_CTR
                    self._tx_control(False)
                    self.tx_key_next = 0
                    continue
                if err == EAGAIN or err == ENOBUFS:
                    # the device or socket queue is full: make room and retry
                    self.c_enobufs += 1
                    tries += 1
                    if tries > 2000:
                        return self._fail_rest(done, built, err)
                    self._drain(0)   # always: room in our buffer may be what is missing
                    _sleep_ns(20000)
                    continue
                # the first message failed (ENETUNREACH, EHOSTUNREACH, EACCES, EPERM...)
                self._fail_one(done, err)
                done += 1
            if self.ts_mode == TS_KERNEL_ID:
                self.tx_key_next += <uint32_t>built
            if not self.no_drain:
                self._drain(0)
        return 0

    cdef inline void _lateness(self, int64_t due, int64_t t) noexcept nogil:
        """Count one probe that was due at ``due`` and left at ``t`` (0: not scheduled)."""
        if due <= 0:
            return
        cdef int64_t d = t - due
        if d < 0:
            d = 0
        self.lat_hist[_lat_bucket(d)] += 1
        self.c_lat_n += 1
        self.c_lat_sum_ns += <uint64_t>d
        if d > self.c_lat_max_ns:
            self.c_lat_max_ns = d

    cdef void _on_tx_stamp(self, uint32_t key, int64_t t) noexcept nogil:
        """The kernel's TX timestamp ``t`` of the probe sent with ``key``: it becomes
        that probe's send time, unless the probe is not the one the key was given to
        (the ring wrapped, the slot was freed) or its reply was already matched."""
        cdef TxRec *tr = &self.txr[key & (TX_RING - 1)]
        cdef Probe *pr
        if tr.key != key or tr.slot >= self.n or not self.stats[tr.slot].active:
            self.c_tx_unmatched += 1
            return
        tr.key = key + TX_RING      # consumed: valid again only once re-registered
        pr = &self.probes[<size_t>tr.slot * self.window + tr.serial % self.window]
        if (pr.serial != tr.serial or pr.tx_kernel or pr.state == ST_EMPTY or
                pr.state == ST_SENDFAIL or t + 1000000 < pr.send_ns):
            # not this probe any more; or stamped before it was handed to the kernel,
            # which only a wrong key can do
            self.c_tx_unmatched += 1
            return
        self._lateness(tr.due_ns, t)
        if pr.state != ST_OUT:
            self.c_tx_late += 1     # its reply or timeout was settled on the user-space time
            return
        pr.send_ns = t
        pr.tx_kernel = 1
        self.c_tx_stamps += 1

    cdef int _fail_one(self, Py_ssize_t k, int err) noexcept nogil:
        cdef int plen = ICMP_HDR_LEN + self.payload_size
        cdef uint32_t s = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN)
        cdef uint32_t serial = rd32(self.tx_pkts + <size_t>k * plen + ICMP_HDR_LEN + 4)
        cdef Probe *pr = &self.probes[<size_t>s * self.window + serial % self.window]
        cdef SlotRare *rr = self._rare(s)
        pr.state = ST_SENDFAIL
        if rr != NULL:
            rr.senderr += 1
        self.c_senderr += 1
        self._set_last(s, C_EV_SEND_ERROR, now_ns())
        self._event(s, C_EV_SEND_ERROR, serial, 0, -1, 0, 0, NULL, err)
        return 0

    cdef int _fail_rest(self, Py_ssize_t done, Py_ssize_t built, int err) noexcept nogil:
        cdef Py_ssize_t k
        for k in range(done, built):
            self._fail_one(k, err)
        return 0

    # ------------------------------------------------------------ receiving
    cdef int _drain(self, int max_packets) noexcept nogil:
        """recvmmsg until the queue is empty (or max_packets). Returns packets read.
        The error queue is read first: it holds the TX timestamps of the probes whose
        replies may be waiting, so each reply is matched against its kernel send time."""
        cdef int total = 0, r, retries = 0
        # unprivileged sockets also get ICMP errors on the error queue (IP_RECVERR)
        cdef bint errq = self.ts_rx_kernel or not self.raw
        if errq:
            total += self._drain_errq()
        while True:
            r = self._recv_batch(&self.rx, 0)
            if r < 0 and retries < 8:
                retries += 1
                continue
            if r <= 0:
                break
            total += r
            if r < self.rx.n or (max_packets > 0 and total >= max_packets):
                # fewer than asked for: the queue was empty (no call just to hear EAGAIN)
                break
        if not self.raw:
            # ICMP errors that came in meanwhile (a raw socket gets them as packets; its
            # TX timestamps are only made by sends, and were read above)
            total += self._drain_errq()
        return total

    cdef int _drain_errq(self) noexcept nogil:
        cdef int total = 0, r
        while True:
            r = self._recv_batch(&self.eq, MSG_ERRQUEUE)
            if r <= 0:
                break
            total += r
            if r < self.eq.n:
                break       # the queue was empty
        return total

    cdef int _recv_batch(self, RxSet *rs, int extra_flags) noexcept nogil:
        cdef int R = rs.n, i, r
        cdef msghdr *h
        for i in range(R):
            # recvmmsg writes back only these (the buffers themselves stay put)
            h = &rs.msgs[i].msg_hdr
            h.msg_namelen = sizeof(sockaddr_in6)
            h.msg_controllen = CTRL_BUF
            h.msg_flags = 0
        r = recvmmsg(self.fd, rs.msgs, R, MSG_DONTWAIT | extra_flags, NULL)
        if r < 0:
            if errno == EAGAIN:
                return 0
            # a pending socket error (sk_err, e.g. from an ICMP error on a datagram
            # socket) fails one call and is consumed by it: tell the caller to retry
            self.c_sock_errors += 1
            return -1
        if r == 0:
            return 0
        cdef int64_t t_now = now_ns()
        if extra_flags == 0:
            self.c_pkts += r
            self.eq_rechecked = False
        for i in range(r):
            self._handle(rs, i, t_now, extra_flags != 0)
        return r

    cdef void _handle(self, RxSet *rs, int i, int64_t t_now, bint errqueue) noexcept nogil:
        cdef msghdr *h = &rs.msgs[i].msg_hdr
        cdef const uint8_t *buf = <const uint8_t *>rs.iov[i].iov_base
        cdef Py_ssize_t n = rs.msgs[i].msg_len
        cdef int64_t t_rx = t_now
        cdef bint have_ts = False
        cdef int ttl = -1
        cdef cmsghdr *c = CMSG_FIRSTHDR(h)
        cdef timespec *ts
        cdef sock_extended_err *ee = NULL
        cdef uint32_t ovfl
        while c != NULL:
            if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPING:
                # struct scm_timestamping: ts[0] is the software stamp
                ts = <timespec *>CMSG_DATA(c)
                if ts.tv_sec or ts.tv_nsec:
                    t_rx = <int64_t>ts.tv_sec * NS + ts.tv_nsec
                    have_ts = True
            elif c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                ts = <timespec *>CMSG_DATA(c)
                t_rx = <int64_t>ts.tv_sec * NS + ts.tv_nsec
                have_ts = True
            elif c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
                memcpy(&ovfl, CMSG_DATA(c), 4)
                if ovfl > self.c_rxq_ovfl:
                    self.c_rxq_ovfl = ovfl
            elif c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_TTL:
                memcpy(&ttl, CMSG_DATA(c), sizeof(int))
            elif c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_HOPLIMIT:
                memcpy(&ttl, CMSG_DATA(c), sizeof(int))
            elif errqueue and ((c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_RECVERR) or
                               (c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_RECVERR)):
                ee = <sock_extended_err *>CMSG_DATA(c)
            c = CMSG_NXTHDR(h, c)
        if errqueue:
            if ee != NULL and ee.ee_origin == SO_EE_ORIGIN_TIMESTAMPING:
                if ee.ee_info == SCM_TSTAMP_SND and have_ts:
                    self._on_tx_stamp(ee.ee_data, t_rx)
                else:
                    self.c_tx_unmatched += 1
                return
            self.c_pkts += 1
            self._handle_errqueue(buf, n, h, ee, t_rx)
            return
        if not have_ts:
            self.c_rx_user += 1
        cdef Parsed p
        cdef int rc = parse_c(buf, n, self.family, self.raw and self.family == AF_INET, &p)
        if rc < 0:
            self.c_malformed += 1
            return
        if rc == 0 or (p.type == ICMP_ECHO_REQUEST or p.type == ICMP6_ECHO_REQUEST):
            self.c_foreign += 1
            self.c_f_type += 1
            return
        if self.raw and p.ident != self.ident:
            self.c_foreign += 1
            self.c_f_ident += 1
            return
        if p.ttl >= 0:
            ttl = p.ttl
        cdef uint32_t slot, serial
        if not read_probe_header(p.payload, p.payload_len, self.k0, self.k1, &slot, &serial):
            if p.is_error and p.payload_len < PROBE_HDR:
                # the quote ends before our cookie (many routers quote only 8 bytes):
                # attribute it by identifier (checked above), sequence number and the
                # quoted destination, to a probe still outstanding
                if self._slot_of_quote(p.inner_dst, p.seq, &slot, &serial):
                    self._on_error(slot, serial, p.type, p.code, self._src_of(h), t_rx)
                else:
                    self.c_unattributed += 1
            elif p.is_error:
                self.c_unattributed += 1   # a quote that is long enough but not ours
            else:
                self.c_foreign += 1
                self.c_f_cookie += 1
            return
        if slot >= self.n or not self.stats[slot].active:
            self.c_stale += 1
            return
        if p.seq != (serial & 0xFFFF):
            # the cookie names serial N but the echo's sequence number is not N's: an
            # altered or spliced packet, not this probe's answer
            self.c_foreign += 1
            self.c_f_seq += 1
            return
        cdef const uint8_t *want = self.addrs + <size_t>slot * self.addr_len
        cdef const uint8_t *src = self._src_of(h)
        if p.is_error:
            # the quoted probe must have gone to this slot's address; the reporter
            # is the router that sent the error
            if memcmp(p.inner_dst, want, self.addr_len) != 0:
                self.c_foreign += 1
                self.c_f_source += 1
                return
            self._on_error(slot, serial, p.type, p.code, src, t_rx)
            return
        if memcmp(src, want, self.addr_len) != 0:
            self.c_foreign += 1     # a valid cookie from the wrong address: spoofed or misrouted
            self.c_f_source += 1
            return
        self._on_reply(slot, serial, t_rx, ttl)

    cdef const uint8_t *_src_of(self, msghdr *h) noexcept nogil:
        if self.family == AF_INET:
            return <const uint8_t *>&(<sockaddr_in *>h.msg_name).sin_addr
        return <const uint8_t *>&(<sockaddr_in6 *>h.msg_name).sin6_addr

    cdef inline uint32_t _addr_hash(self, const uint8_t *a) noexcept nogil:
        cdef uint32_t h = rd32(a)
        if self.addr_len == 16:
            h ^= rd32(a + 4) * 0x85EBCA6BU ^ rd32(a + 8) * 0xC2B2AE35U ^ rd32(a + 12) * 0x27D4EB2FU
        return (h * 0x9E3779B1U) ^ (h >> 15)

    cdef bint _build_aidx(self) noexcept nogil:
        cdef uint32_t cap = 16, s, i
        while cap < 2 * self.n + 1:
            cap *= 2
        if cap != self.aidx_cap:
            PyMem_RawFree(self.aidx)
            self.aidx = <uint32_t *>PyMem_RawMalloc(<size_t>cap * sizeof(uint32_t))
            self.aidx_cap = cap if self.aidx != NULL else 0
            if self.aidx == NULL:
                return False
        memset(self.aidx, 0, <size_t>cap * sizeof(uint32_t))
        for s in range(self.n):
            if not self.stats[s].active:
                continue
            i = self._addr_hash(self.addrs + <size_t>s * self.addr_len) & (cap - 1)
            while self.aidx[i] != 0:
                i = (i + 1) & (cap - 1)
            self.aidx[i] = s + 1
        self.aidx_valid = True
        return True

    cdef bint _slot_of_quote(self, const uint8_t *dst, uint16_t seq, uint32_t *slot,
                             uint32_t *serial) noexcept nogil:
        """The outstanding probe to ``dst`` whose sequence number is ``seq`` (the
        identifier was checked by the caller). Several targets may share an address:
        each is looked at."""
        cdef uint32_t i, s, w
        cdef Probe *pr
        if dst == NULL or self.n == 0 or (not self.aidx_valid and not self._build_aidx()):
            return False
        i = self._addr_hash(dst) & (self.aidx_cap - 1)
        while self.aidx[i] != 0:
            s = self.aidx[i] - 1
            if memcmp(self.addrs + <size_t>s * self.addr_len, dst, self.addr_len) == 0:
                pr = &self.probes[<size_t>s * self.window]
                for w in range(self.window):
                    if pr[w].state == ST_OUT and (pr[w].serial & 0xFFFF) == seq:
                        slot[0] = s
                        serial[0] = pr[w].serial
                        return True
            i = (i + 1) & (self.aidx_cap - 1)
        return False

    cdef void _on_reply(self, uint32_t slot, uint32_t serial, int64_t t_rx, int ttl) noexcept nogil:
        cdef SlotStats *st = &self.stats[slot]
        if serial >= st.next_serial:
            self.c_foreign += 1     # never sent: a forged or foreign cookie collision
            self.c_f_unsent += 1
            return
        cdef Probe *pr = &self.probes[<size_t>slot * self.window + serial % self.window]
        cdef int64_t rtt, tmo, slot_tmo
        cdef SlotRare *rr
        cdef SlotRecent *rc
        if (pr.state == ST_OUT and not pr.tx_kernel and pr.serial == serial and
                self.ts_mode >= TS_KERNEL_ID and not self.eq_rechecked):
            # its TX timestamp may have been queued after the error queue was last read
            # (the probe left while this batch was being read): read it now, once a batch
            self.eq_rechecked = True
            self._drain_errq()
        if pr.serial != serial or pr.state == ST_EMPTY or pr.state == ST_SENDFAIL:
            # its window entry was reused: the probe had timed out long ago
            self._count_late(slot)
            self.c_late += 1
            self._event(slot, C_EV_LATE, serial, 0, ttl, 0, 0, NULL, 0)
            return
        if pr.state == ST_DONE:
            rr = self._rare(slot)
            if rr != NULL:
                rr.dup += 1
            self.c_dup += 1
            self._event(slot, C_EV_DUPLICATE, serial, 0, ttl, 0, 0, NULL, 0)
            return
        rtt = t_rx - pr.send_ns
        if rtt < 0:
            rtt = 0
        # the socket's timeout, or the slot's own when shorter (sweep() has its own)
        tmo = self.timeout_ns
        if not self.sweeping and self.slot_tmo_ns != NULL:
            slot_tmo = self.slot_tmo_ns[slot]
            if slot_tmo > 0 and (tmo <= 0 or slot_tmo < tmo):
                tmo = slot_tmo
        if pr.state == ST_EXPIRED or (tmo > 0 and rtt > tmo):
            if pr.state == ST_OUT:
                self._expire_probe(slot, pr, t_rx)
            self._count_late(slot)
            self.c_late += 1
            self._event(slot, C_EV_LATE, serial, rtt, ttl, 0, 0, NULL, 0)
            return
        if pr.state == ST_ERR_UNREACH or pr.state == ST_ERR_TEXC:
            # a valid reply after an ICMP error for the same probe: the host answered,
            # so the reply is the probe's outcome (fping counts it too); the error was
            # returned as an event and stays one, it is no longer counted as final
            rr = self._rare(slot)       # made by _on_error (or NULL, counted there)
            if pr.state == ST_ERR_TEXC:
                if rr != NULL:
                    rr.texc -= 1
                self.c_texc -= 1
            else:
                if rr != NULL:
                    rr.unreach -= 1
                self.c_unreach -= 1
            self.c_outstanding += 1     # taken again just below
        pr.state = ST_DONE
        self.c_outstanding -= 1
        st.received += 1
        self.c_received += 1
        if pr.tx_kernel:
            self.c_timed_kernel += 1
        else:
            self.c_timed_user += 1
            if self.ts_mode >= TS_KERNEL_ID:
                # only counted per slot where it is the exception (slot_stats)
                rr = self._rare(slot)
                if rr != NULL:
                    rr.user_timed += 1
        if rtt <= <int64_t>RTT_NARROW_MAX and not (st.flags & SF_WIDE):
            if st.received == 1 or rtt < st.min_rtt:
                st.min_rtt = <uint32_t>rtt
            if rtt > st.max_rtt:
                st.max_rtt = <uint32_t>rtt
        else:
            self._wide_rtt(slot, rtt)
        st.sum_ns += rtt
        st.sumsq += <double>rtt * <double>rtt
        rc = self._recent(slot)
        if rc != NULL:
            if st.received > 1:
                rc.jit_sum_ns += rtt - rc.last_rtt_ns if rtt > rc.last_rtt_ns else rc.last_rtt_ns - rtt
            rc.last_rtt_ns = rtt
        if ttl >= 0:
            st.last_ttl = <uint8_t>ttl
        self._final(slot, C_EV_REPLY, serial, rtt, ttl, t_rx)

    cdef void _on_error(self, uint32_t slot, uint32_t serial, int itype, int icode,
                        const uint8_t *router, int64_t t) noexcept nogil:
        cdef SlotStats *st = &self.stats[slot]
        if serial >= st.next_serial:
            self.c_foreign += 1
            self.c_f_unsent += 1
            return
        cdef Probe *pr = &self.probes[<size_t>slot * self.window + serial % self.window]
        if pr.serial != serial or pr.state != ST_OUT:
            self.c_stale += 1       # an error for a probe already settled
            return
        cdef bint texc = (itype == ICMP_TIME_EXCEEDED) if self.family == AF_INET else (itype == ICMP6_TIME_EXCEEDED)
        # the error settles the probe, but a real reply may still follow (the error
        # raced the answer, or was forged): _on_reply lets that reply take its place
        pr.state = ST_ERR_TEXC if texc else ST_ERR_UNREACH
        self.c_outstanding -= 1
        cdef SlotRare *rr = self._rare(slot)
        if texc:
            self.c_texc += 1
        else:
            self.c_unreach += 1
        if rr != NULL:
            if texc:
                rr.texc += 1
            else:
                rr.unreach += 1
            rr.err_type = itype
            rr.err_code = icode
            memcpy(rr.router, router, self.addr_len)
        self._set_last(slot, C_EV_TIME_EXCEEDED if texc else C_EV_UNREACHABLE, t)
        self._event(slot, C_EV_TIME_EXCEEDED if texc else C_EV_UNREACHABLE, serial, 0, -1,
                    itype, icode, router, 0)

    cdef void _handle_errqueue(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                               sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        # IP_RECVERR (ip(7)): the data is our own echo request as sent; the cmsg
        # names the ICMP type/code and the offending router.
        cdef uint32_t slot, serial
        cdef const uint8_t *router = NULL
        cdef sockaddr_in *sin
        cdef sockaddr_in6 *sin6
        cdef void *off
        if ee == NULL or (ee.ee_origin != SO_EE_ORIGIN_ICMP and ee.ee_origin != SO_EE_ORIGIN_ICMP6):
            self.c_foreign += 1     # a local error report (e.g. EMSGSIZE), not from the network
            return
        if n < ICMP_HDR_LEN or not read_probe_header(buf + ICMP_HDR_LEN, n - ICMP_HDR_LEN,
                                                     self.k0, self.k1, &slot, &serial):
            self.c_unattributed += 1
            return
        if slot >= self.n or not self.stats[slot].active:
            self.c_stale += 1
            return
        off = SO_EE_OFFENDER(ee)
        if self.family == AF_INET:
            sin = <sockaddr_in *>off
            router = <const uint8_t *>&sin.sin_addr
        else:
            sin6 = <sockaddr_in6 *>off
            router = <const uint8_t *>&sin6.sin6_addr
        self._on_error(slot, serial, ee.ee_type, ee.ee_code, router, t_rx)

    # ------------------------------------------------------------ engine API
    def send(self, slots, bint drain=True, long long due_ns=0):
        """Send one probe to each slot now (sendmmsg batches, GIL released). With
        ``drain`` the socket is drained after every batch (replies do not pile up in
        the receive buffer during a large send). ``due_ns`` (CLOCK_REALTIME ns) is when
        these probes were scheduled: how late each one left is counted in lateness().
        Returns every event seen: send errors, timeouts of probes pushed out of a full
        window, and drained replies."""
        cdef uint32_t[::1] arr = _slots_array(slots)
        cdef Py_ssize_t cnt = arr.shape[0]
        self._enter()
        try:
            self.collect = True
            self.no_drain = not drain
            self.due_ns = due_ns if due_ns > 0 else 0
            if cnt:
                with nogil:
                    self._send_slots(&arr[0], cnt)
        finally:
            self.no_drain = False
            self.due_ns = 0
            self._leave()
        return self._take_events()

    def lateness(self):
        """How late probes sent with a ``due_ns`` left against it: (count, sum_ns,
        max_ns, histogram) with the histogram a tuple of counts over
        lateness_bucket_bounds(). The time a probe left is its kernel TX timestamp
        (timestamps='kernel'), else the user-space send time."""
        return (self.c_lat_n, self.c_lat_sum_ns, self.c_lat_max_ns,
                tuple([self.lat_hist[i] for i in range(LAT_BUCKETS)]))

    def reset_lateness(self):
        self.c_lat_n = self.c_lat_sum_ns = 0
        self.c_lat_max_ns = 0
        memset(self.lat_hist, 0, LAT_BUCKETS * sizeof(uint64_t))

    def recv(self, int max_packets=0):
        """Drain queued packets without blocking (0 = until empty); return events."""
        self._enter()
        try:
            self.collect = True
            with nogil:
                self._drain(max_packets)
        finally:
            self._leave()
        return self._take_events()

    def expire(self, double timeout_s):
        """EV_TIMEOUT for every outstanding probe older than ``timeout_s``, or than
        its slot's own timeout (set_slot_timeout) when that is shorter."""
        self._check_open()
        cdef int64_t t = now_ns()
        cdef int64_t limit = t - <int64_t>(timeout_s * 1e9)
        self.collect = True
        with nogil:
            self._expire_sent_before(t, limit)
        return self._take_events()

    cdef void _expire_sent_before(self, int64_t t, int64_t limit) noexcept nogil:
        """Time out every outstanding probe sent at or before ``limit`` (or before
        ``t`` minus its slot's timeout, when later); ``t`` is now (freed slots hold
        none: remove_target clears them)."""
        cdef uint32_t s, w
        cdef int64_t lim, slot_tmo
        cdef Probe *pr
        for s in range(self.n):
            lim = limit
            if self.slot_tmo_ns != NULL:
                slot_tmo = self.slot_tmo_ns[s]
                if slot_tmo > 0 and t - slot_tmo > lim:
                    lim = t - slot_tmo
            pr = &self.probes[<size_t>s * self.window]
            for w in range(self.window):
                if pr[w].state == ST_OUT and pr[w].send_ns <= lim:
                    self._expire_probe(s, &pr[w], t)

    # ------------------------------------------------------------ outcome log
    def set_log(self, int mode):
        """Outcome-log mode: 0 nothing logged, every event returned; 1 quiet: every
        reply and timeout logged, and returned only when its kind differs from the
        slot's previous final outcome (other kinds always returned); 2: logged and
        every event returned."""
        if mode != LOG_OFF and mode != LOG_QUIET and mode != LOG_ALL:
            raise ValueError(f"log mode {mode} must be 0 (off), 1 (quiet) or 2 (log and return all)")
        self.log_mode_ = mode

    @property
    def log_mode(self):
        return self.log_mode_

    @property
    def log_max(self):
        """Records the outcome log holds at most; more are counted in log_dropped."""
        return self.log_max_

    @log_max.setter
    def log_max(self, Py_ssize_t v):
        if v < 0:
            raise ValueError(f"log_max {v} must be >= 0 records (0: log nothing)")
        self.log_max_ = v

    def forget_last(self, long long slot=-1):
        """Forget the last final outcome of ``slot`` (-1: of every slot), so its next
        reply or timeout is returned even in quiet mode."""
        cdef uint32_t s
        if slot == -1:
            for s in range(self.n):
                self.stats[s].last_kind = LAST_NONE
            return
        if slot < 0 or slot >= self.n:
            raise IndexError(f"slot {slot} does not exist (0..{self.n - 1}, or -1 for all)")
        self.stats[slot].last_kind = LAST_NONE

    def slot_last(self, long long slot):
        """(last_kind, last_rtt_ns, last_t_ns): kind of the slot's last final outcome
        and when it was known (CLOCK_REALTIME ns), and the RTT of its last reply;
        (-1, 0, 0) before the first."""
        if slot < 0 or slot >= self.n:
            raise IndexError(f"slot {slot} does not exist")
        cdef SlotStats *st = &self.stats[slot]
        if st.last_kind == LAST_NONE:
            return (-1, 0, 0)
        if self.recent == NULL:
            return (st.last_kind, 0, 0)     # only sweep(count=1) ran: it keeps no times
        return (st.last_kind, self.recent[slot].last_rtt_ns, self.recent[slot].last_t_ns)

    def set_slot_timeout(self, long long slot, double timeout_s):
        """Give ``slot`` its own timeout (0: none). A reply slower than it (or than
        the socket's timeout_s, when shorter) times the probe out and is EV_LATE;
        expire(t) uses min(t, it) for this slot. add_target / remove_target reset it."""
        if slot < 0 or slot >= self.n or not self.stats[slot].active:
            raise KeyError(f"slot {slot} is not in use")
        if not timeout_s >= 0:      # also refuses NaN
            raise ValueError(f"timeout_s {timeout_s} must be >= 0 seconds (0: none)")
        if self.slot_tmo_ns == NULL:
            self.slot_tmo_ns = <int64_t *>PyMem_RawCalloc(self.n_cap, sizeof(int64_t))
            if self.slot_tmo_ns == NULL:
                raise MemoryError()
        self.slot_tmo_ns[slot] = <int64_t>(timeout_s * 1e9)

    def take_log(self, long long slot=-1):
        """Empty the outcome log into one (slot, chunk) per slot with records (slots
        ascending; each chunk in fastping.chunk's layout, records in logged order).
        With ``slot``: take only that slot's records, keep the others."""
        if slot < -1 or slot > 0xFFFFFFFF:
            raise ValueError(f"slot {slot} must be 0..2**32-1, or -1 for all")
        if self.log_n == 0:
            return []
        if slot == -1:
            return self._take_all()
        return self._take_one(<uint32_t>slot)

    cdef list _take_all(self):
        cdef Py_ssize_t i, s, n = self.log_n
        cdef uint32_t top = 0
        cdef SlotOut *so
        cdef LogRec *r
        with nogil:
            for i in range(n):
                if self.log[i].slot > top:
                    top = self.log[i].slot
        # counting sort over the slots seen: O(records + slots), one bytes per slot
        so = <SlotOut *>PyMem_RawCalloc(<size_t>top + 1, sizeof(SlotOut))
        if so == NULL:
            raise MemoryError()
        out = []
        try:
            with nogil:
                for i in range(n):
                    so[self.log[i].slot].cnt += 1
            for s in range(<Py_ssize_t>top + 1):
                if so[s].cnt:
                    b = PyBytes_FromStringAndSize(NULL, so[s].cnt * CHUNK_RECORD)
                    so[s].base = <uint8_t *>PyBytes_AS_STRING(b)
                    out.append((s, b))
            with nogil:
                for i in range(n):
                    r = &self.log[i]
                    _chunk_put(so[r.slot].base, so[r.slot].cnt, so[r.slot].cur, r)
                    so[r.slot].cur += 1
                self.log_n = 0
                # a burst's buffer is not kept for ever: shrink when far too big
                if self.log_cap > 65536 and self.log_cap > 4 * n:
                    self._shrink_log(2 * n)
        finally:
            PyMem_RawFree(so)
        return out

    cdef list _take_one(self, uint32_t slot):
        cdef Py_ssize_t i, j = 0, k = 0, n = self.log_n, cnt = 0
        cdef uint8_t *base
        with nogil:
            for i in range(n):
                if self.log[i].slot == slot:
                    cnt += 1
        if cnt == 0:
            return []
        b = PyBytes_FromStringAndSize(NULL, cnt * CHUNK_RECORD)
        base = <uint8_t *>PyBytes_AS_STRING(b)
        with nogil:
            # one pass: write this slot's records out, close the gaps they leave
            for i in range(n):
                if self.log[i].slot == slot:
                    _chunk_put(base, cnt, k, &self.log[i])
                    k += 1
                else:
                    if j != i:
                        self.log[j] = self.log[i]
                    j += 1
            self.log_n = j
        return [(slot, b)]

    cdef void _shrink_log(self, Py_ssize_t cap) noexcept nogil:
        if cap < 4096:
            cap = 4096
        cdef void *p = PyMem_RawRealloc(self.log, <size_t>cap * sizeof(LogRec))
        if p != NULL:               # keeping the bigger buffer is harmless
            self.log = <LogRec *>p
            self.log_cap = cap

    def wait(self, double timeout_s):
        """Block (GIL released) until the socket is readable or ``timeout_s`` passes."""
        cdef int ms = <int>(timeout_s * 1000)
        cdef int r
        self._enter()
        try:
            with nogil:
                r = self._poll(ms)
        finally:
            self._leave()
        return r > 0

    # ------------------------------------------------------------ bounded sweep
    def sweep(self, int count=1, double interval_s=1.0, double timeout_s=1.0,
              double rate_pps=0.0, slots=None, bint events=False):
        """Send ``count`` rounds to every slot (or to ``slots``), rounds ``interval_s``
        apart, probes paced at ``rate_pps`` (0 = flat out); drain replies interleaved;
        wait up to ``timeout_s`` after the last send. All in C, GIL released."""
        self._check_open()
        if count < 1:
            raise ValueError(f"count {count} must be >= 1")
        if interval_s < 0 or timeout_s <= 0 or rate_pps < 0:
            raise ValueError("interval_s >= 0, timeout_s > 0 and rate_pps >= 0 are required")
        cdef uint32_t[::1] arr
        cdef uint32_t *sl = NULL
        cdef Py_ssize_t ns
        if slots is None:
            ns = self.n
        else:
            arr = _slots_array(slots)
            ns = arr.shape[0]
            if ns:
                sl = &arr[0]
        self.collect = events
        self.timeout_ns = <int64_t>(timeout_s * 1e9)
        cdef int64_t interval_ns = <int64_t>(interval_s * 1e9)
        cdef int rc
        if rate_pps > 0:
            # size the receive buffer for what can be in flight (~1 KiB per queued reply)
            inflight = min(rate_pps * (timeout_s + 0.1), float(self.n) * count)
            if inflight * 1024 > self.rcvbuf_bytes // 2:
                self.set_rcvbuf(<int>min(inflight * 1024, 256 * 1024 * 1024))
        self._enter()
        self.sweeping = True     # no outcome log / quiet filtering: sweep has its own results
        # one round: no jitter, and nobody asks for the last outcome's time
        self.need_recent = count > 1
        try:
            with nogil:
                rc = self._sweep(sl, ns, count, interval_ns, rate_pps)
        finally:
            self.sweeping = False
            self.need_recent = True
            self._leave()
        if rc < 0:
            _raise_oserror("sweep")
        if events:
            return self._take_events()
        self.ev_n = 0
        return None

    cdef int _sweep(self, const uint32_t *sl, Py_ssize_t ns, int count, int64_t interval_ns,
                    double rate_pps) noexcept nogil:
        cdef int64_t t0 = now_ns(), t, round_start, deadline, last_send = t0
        cdef int64_t t_send = 0
        cdef Py_ssize_t i, j, k, chunk
        cdef uint32_t tmpbuf[MAX_BATCH]
        cdef int r
        cdef double per_probe_ns = 1e9 / rate_pps if rate_pps > 0 else 0.0
        cdef int64_t sent_total = 0
        cdef int B = self.batch_size
        # at low rates send smaller batches so the pace stays smooth (<= ~1 ms a batch)
        chunk = B
        if rate_pps > 0 and rate_pps < B * 1000.0:
            chunk = <Py_ssize_t>(rate_pps / 1000.0)
            if chunk < 1:
                chunk = 1
        for r in range(count):
            if self.closing:
                break               # close() from another thread: stop sending
            round_start = t0 + r * interval_ns
            t = now_ns()
            if t < round_start:
                self._wait_until(round_start)
            i = 0
            while i < ns and not self.closing:
                k = chunk if ns - i > chunk else ns - i
                if per_probe_ns > 0:
                    self._wait_until(t0 + <int64_t>(sent_total * per_probe_ns))
                if sl != NULL:
                    self._send_slots(sl + i, k)
                else:
                    for j in range(k):
                        tmpbuf[j] = <uint32_t>(i + j)
                    self._send_slots(tmpbuf, k)
                i += k
                sent_total += k
            last_send = now_ns()
        t_send = last_send - t0
        # wait for the stragglers, up to the timeout after the last send
        deadline = last_send + self.timeout_ns
        while self.c_outstanding > 0 and not self.closing:
            t = now_ns()
            if t >= deadline:
                break
            r = self._poll(<int>((deadline - t) // 1000000) + 1)
            self._drain(0)
        self._drain(0)
        # what is still outstanding has timed out
        self._expire_sent_before(now_ns(), INT64_MAX)
        self.t_send_ns += t_send
        self.t_total_ns += now_ns() - t0
        return 0

    cdef void _wait_until(self, int64_t t_target) noexcept nogil:
        """Drain replies while waiting for t_target (pacing / next round)."""
        cdef int64_t t = now_ns()
        cdef int ms
        while t < t_target and not self.closing:
            if t_target - t > 1500000:
                ms = <int>((t_target - t) // 1000000) - 1
                # at most 100 ms at a time: a close() from another thread is seen soon
                self._poll(1 if ms < 1 else 100 if ms > 100 else ms)
            else:
                _sleep_ns(t_target - t)
            self._drain(0)
            t = now_ns()


cdef void _alloc_rxset(RxSet *rs, int R, int rxlen) noexcept:
    """R messages of rxlen bytes each; rs.msgs stays NULL when out of memory (the
    caller raises MemoryError after freeing nothing: __dealloc__ frees what exists)."""
    cdef int i
    rs.n = R
    rs.bufs = <uint8_t *>PyMem_RawMalloc(<size_t>R * rxlen)
    rs.ctrl = <uint8_t *>PyMem_RawMalloc(<size_t>R * CTRL_BUF)
    rs.names = <sockaddr_in6 *>PyMem_RawMalloc(R * sizeof(sockaddr_in6))
    rs.iov = <iovec *>PyMem_RawMalloc(R * sizeof(iovec))
    rs.msgs = <mmsghdr *>PyMem_RawCalloc(R, sizeof(mmsghdr))
    if rs.bufs == NULL or rs.ctrl == NULL or rs.names == NULL or rs.iov == NULL or rs.msgs == NULL:
        PyMem_RawFree(rs.msgs)
        rs.msgs = NULL
        return
    for i in range(R):
        rs.iov[i].iov_base = rs.bufs + <size_t>i * rxlen
        rs.iov[i].iov_len = rxlen
        rs.msgs[i].msg_hdr.msg_name = &rs.names[i]
        rs.msgs[i].msg_hdr.msg_iov = &rs.iov[i]
        rs.msgs[i].msg_hdr.msg_iovlen = 1
        rs.msgs[i].msg_hdr.msg_control = rs.ctrl + <size_t>i * CTRL_BUF


cdef void _free_rxset(RxSet *rs) noexcept:
    PyMem_RawFree(rs.bufs)
    PyMem_RawFree(rs.ctrl)
    PyMem_RawFree(rs.names)
    PyMem_RawFree(rs.iov)
    PyMem_RawFree(rs.msgs)


cdef inline int _lat_bucket(int64_t ns) noexcept nogil:
    """Send-lateness bucket of ``ns``: whole microseconds below 16 us, then 8 buckets
    per octave (within 12.5%), the last one open-ended."""
    cdef uint64_t u = <uint64_t>(ns // 1000) if ns > 0 else 0
    cdef int e = 0, b
    if u < 16:
        return <int>u
    while (u >> e) > 1:
        e += 1
    b = 16 + (e - 4) * 8 + <int>((u >> (e - 3)) & 7)
    return b if b < LAT_BUCKETS else LAT_BUCKETS - 1


def lateness_bucket_bounds():
    """The send-lateness histogram's bucket lower bounds in microseconds (bucket i
    holds lateness in [bounds[i], bounds[i + 1]) us; the last is open-ended)."""
    out = []
    for i in range(LAT_BUCKETS):      # Python ints: the top bounds pass 2**31
        if i < 16:
            out.append(i)
        else:
            e = 4 + (i - 16) // 8
            out.append((1 << e) + ((i - 16) % 8) * (1 << (e - 3)))
    return out


cdef inline void _put_le32(uint8_t *p, uint32_t v) noexcept nogil:
    # explicit little-endian stores: the chunk layout is little-endian on any host
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24


cdef inline void _put_le64(uint8_t *p, uint64_t v) noexcept nogil:
    _put_le32(p, <uint32_t>(v & 0xFFFFFFFFULL))
    _put_le32(p + 4, <uint32_t>(v >> 32))


cdef inline void _chunk_put(uint8_t *base, Py_ssize_t cnt, Py_ssize_t i, const LogRec *r) noexcept nogil:
    """Record ``i`` of a ``cnt``-record chunk at ``base``: the columns t f64, rtt f32,
    seq i32, code u8, ttl u8 one after the other (fastping.chunk)."""
    cdef uint64_t u64
    cdef uint32_t u32
    # whole seconds and the nanoseconds apart: t_ns itself does not fit a double exactly
    cdef double t_s = <double>(r.t_ns // NS) + <double>(r.t_ns % NS) * 1e-9
    memcpy(&u64, &t_s, 8)
    _put_le64(base + 8 * i, u64)
    memcpy(&u32, &r.rtt_ms, 4)
    _put_le32(base + 8 * cnt + 4 * i, u32)
    _put_le32(base + 12 * cnt + 4 * i, r.seq)
    base[16 * cnt + i] = r.code
    base[17 * cnt + i] = r.ttl


cdef inline sock_filter _bpf(unsigned short code, unsigned char jt, unsigned char jf, unsigned int k) noexcept nogil:
    cdef sock_filter f
    f.code = code
    f.jt = jt
    f.jf = jf
    f.k = k
    return f


cdef inline void _sleep_ns(int64_t ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ns // NS
    ts.tv_nsec = ns % NS
    nanosleep(&ts, NULL)


cdef uint32_t[::1] _slots_array(object slots):
    import array
    if isinstance(slots, array.array) and slots.typecode == "I":
        return slots
    try:
        return array.array("I", slots)
    except OverflowError:
        raise ValueError("slots must be 0..2**32-1") from None


cdef int _raise_oserror(str what) except -1:
    cdef int e = errno
    raise OSError(e, f"{what}: {_os.strerror(e)}")
