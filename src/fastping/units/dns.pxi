# ---------------------------------------------------------------- DnsSocket: DNS queries
#
# One unprivileged SOCK_DGRAM socket per family, bound to one local port; a slot is a
# (server address, port, name, qtype) question, and each probe is one query (RFC 1035
# §4.1) to its server:
#
#  0               1               2               3
# +-------------------------------+-------------------------------+
# |  ID = 16 bits of SipHash(key, slot << 32 | serial)           |  flags: RD (rd=True)
# +-------------------------------+-------------------------------+
# |  QDCOUNT = 1                  |  ANCOUNT = 0                  |
# +-------------------------------+-------------------------------+
# |  NSCOUNT = 0                  |  ARCOUNT = 1 with EDNS0, or 0 |
# +-------------------------------+-------------------------------+
# |  QNAME (labels, no compression) | QTYPE | QCLASS = IN          |
# +---------------------------------------------------------------+
# |  EDNS0 OPT RR (RFC 6891), 11 bytes: ".", 41, UDP size, 0, 0   |
# +---------------------------------------------------------------+
#
# An answer names its probe by all of: its source address:port is the slot's server,
# its question (name case-insensitively, type, class IN) is the slot's, and its ID is
# the keyed ID of one of the slot's probes in its window. A well-formed response from
# a server we query whose question is none we asked it is counted `mismatched` (on the
# slot too when its ID names one of that server's probes) and never settles a probe.
# ICMP errors (IP_RECVERR: the quoted query, its destination as the name) settle the
# probe as unreachable. The response parser (dq_parse) reads the header, the question,
# and walks every RR of the three sections, so a garbled message is malformed as a
# whole; a TC response is read as far as it goes. fastping.dnscodec is its Python twin.


DEF DQ_HDR = 12
DEF DQ_NAME_MAX = 255             # wire length of a name, root label included
DEF DQ_OPT_LEN = 11
DEF DQ_QUERY_MAX = 282            # 12 + 255 + 4 + 11
DEF DQ_FLAG_QR = 0x8000
DEF DQ_FLAG_TC = 0x0200
DEF DQ_FLAG_RD = 0x0100
DEF DQ_TYPE_A = 1
DEF DQ_TYPE_AAAA = 28
DEF DQ_TYPE_OPT = 41
DEF DQ_CLASS_IN = 1
DEF DQ_MISMATCH_WALK = 64         # slots of one server a mismatched answer's ID is tried on

# dq_parse results (fastping.dnscodec.PARSE_* are the same numbers)
DEF DQ_OK = 0
DEF DQ_SHORT = 1                  # shorter than a header
DEF DQ_NOT_RESPONSE = 2           # QR clear, or an opcode other than QUERY
DEF DQ_QDCOUNT = 3                # not exactly one question
DEF DQ_BAD_QUESTION = 4           # a question name that is no plain label sequence, or cut
DEF DQ_BAD_RECORDS = 5            # an RR cut or garbled (without TC), or bytes after the last

# per-slot answer kinds (DnsStat.rc): what dns outcome a settled answer had
DEF DQ_NOERROR = 0
DEF DQ_NXDOMAIN = 1
DEF DQ_SERVFAIL = 2
DEF DQ_REFUSED = 3
DEF DQ_OTHER = 4
DEF DQ_TRUNCATED = 5
DEF DQ_KINDS = 6


cdef struct DqParsed:
    uint16_t id, flags
    uint16_t rcode                # with the OPT RR's extended bits (RFC 6891 §6.1.3)
    uint16_t qtype, qclass
    const uint8_t *qname
    int qname_len                 # wire bytes, root label included
    uint16_t answers              # complete RRs read from the answer section
    uint32_t min_ttl              # smallest TTL among them (when answers > 0)
    uint8_t tc
    const uint8_t *addr           # the first IN A / AAAA answer of the question's type
    uint8_t addr_len              # 4, 16, or 0 (none)


cdef struct DnsStat:
    uint32_t rc[DQ_KINDS]         # settled answers by kind (TC counted as truncated only)
    uint32_t mismatched           # answers from the server naming a probe of this slot's
    #                               by ID but carrying another question
    uint32_t last_min_ttl
    uint16_t last_rcode, last_answers
    uint8_t last_tc, has_last
    uint8_t last_addr_len         # the last answer's first address (A / AAAA questions)
    uint8_t last_addr[16]


cdef inline uint16_t _dq_id(uint64_t k0, uint64_t k1, uint32_t slot, uint32_t serial) noexcept nogil:
    return <uint16_t>(cookie_of(k0, k1, slot, serial) >> 48)


cdef inline uint8_t _dq_lower(uint8_t c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline uint32_t _dq_name_hash(const uint8_t *p, int n) noexcept nogil:
    # FNV-1a over the wire name, ASCII case folded (RFC 4343): answers may echo 0x20 case
    cdef uint32_t h = 2166136261U
    cdef int i
    for i in range(n):
        h = (h ^ _dq_lower(p[i])) * 16777619U
    return h


cdef inline bint _dq_name_eq(const uint8_t *a, const uint8_t *b, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        if _dq_lower(a[i]) != _dq_lower(b[i]):
            return False
    return True


cdef int dq_build(uint8_t *pk, uint16_t qid, uint16_t flags, const uint8_t *qname, int qlen,
                  uint16_t qtype, uint16_t edns) noexcept nogil:
    """Write one query at ``pk`` (DQ_QUERY_MAX bytes of room); return its length."""
    cdef int off = DQ_HDR + qlen
    wr16(pk, qid)
    wr16(pk + 2, flags)
    wr16(pk + 4, 1)
    wr16(pk + 6, 0)
    wr16(pk + 8, 0)
    wr16(pk + 10, 1 if edns else 0)
    memcpy(pk + DQ_HDR, qname, qlen)
    wr16(pk + off, qtype)
    wr16(pk + off + 2, DQ_CLASS_IN)
    off += 4
    if edns:
        pk[off] = 0                       # owner: the root
        wr16(pk + off + 1, DQ_TYPE_OPT)
        wr16(pk + off + 3, edns)          # the UDP payload size we take
        wr32(pk + off + 5, 0)             # extended rcode, version 0, no DO
        wr16(pk + off + 9, 0)             # no options
        off += DQ_OPT_LEN
    return off


cdef int _dq_question(const uint8_t *p, Py_ssize_t n, Py_ssize_t *off) noexcept nogil:
    """The question name at off[0]: plain labels only (a name compressed against the
    12-byte header cannot be one); moves off past it. Its wire length, or -1."""
    cdef Py_ssize_t o = off[0], start = off[0]
    cdef uint8_t ln
    while True:
        if o >= n:
            return -1
        ln = p[o]
        if ln == 0:
            o += 1
            break
        if ln > 63:
            return -1                     # a pointer, or an extended label type
        o += 1 + ln
        if o - start > DQ_NAME_MAX - 1:
            return -1
    off[0] = o
    return <int>(o - start)


cdef int _dq_skip_name(const uint8_t *p, Py_ssize_t n, Py_ssize_t *off) noexcept nogil:
    """Skip an RR owner name at off[0] (labels, ending in the root or a pointer that
    points back before the name); 0, or -1 when garbled or cut."""
    cdef Py_ssize_t o = off[0], start = off[0]
    cdef uint8_t ln
    cdef uint32_t ptr
    while True:
        if o >= n:
            return -1
        ln = p[o]
        if ln == 0:
            o += 1
            break
        if (ln & 0xC0) == 0xC0:
            if o + 2 > n:
                return -1
            ptr = ((<uint32_t>ln & 0x3F) << 8) | p[o + 1]
            if ptr >= <uint32_t>start:
                return -1                 # forward or self pointer: never valid
            o += 2
            break
        if ln > 63:
            return -1
        o += 1 + ln
        if o - start > DQ_NAME_MAX - 1:
            return -1
    off[0] = o
    return 0


cdef int _dq_rr(const uint8_t *p, Py_ssize_t n, Py_ssize_t *off, uint16_t *rtype,
                uint32_t *ttl, uint16_t *rclass_out) noexcept nogil:
    """Read one RR at off[0] (name, type, class, TTL, rdata); 0, or -1 when cut or
    garbled (an IN A that is not 4 bytes, an IN AAAA that is not 16)."""
    cdef uint16_t rclass, rdlen
    if _dq_skip_name(p, n, off) < 0 or off[0] + 10 > n:
        return -1
    rtype[0] = rd16(p + off[0])
    rclass = rd16(p + off[0] + 2)
    ttl[0] = rd32(p + off[0] + 4)
    rdlen = rd16(p + off[0] + 8)
    rclass_out[0] = rclass
    off[0] += 10
    if off[0] + rdlen > n:
        return -1
    if rclass == DQ_CLASS_IN and ((rtype[0] == DQ_TYPE_A and rdlen != 4) or
                                  (rtype[0] == DQ_TYPE_AAAA and rdlen != 16)):
        return -1
    off[0] += rdlen
    return 0


cdef int dq_parse(const uint8_t *p, Py_ssize_t n, DqParsed *o) noexcept nogil:
    """Parse a response: DQ_OK with ``o`` filled, or the DQ_* reason it is not one."""
    cdef uint16_t qd, an, au, ad, rtype, rclass
    cdef uint32_t i, ttl
    cdef Py_ssize_t off = DQ_HDR
    cdef bint opt_seen = False
    memset(o, 0, sizeof(DqParsed))
    if n < DQ_HDR:
        return DQ_SHORT
    o.id = rd16(p)
    o.flags = rd16(p + 2)
    if not (o.flags & DQ_FLAG_QR) or (o.flags >> 11) & 0xF:
        return DQ_NOT_RESPONSE
    o.tc = 1 if o.flags & DQ_FLAG_TC else 0
    o.rcode = o.flags & 0xF
    qd = rd16(p + 4)
    an = rd16(p + 6)
    au = rd16(p + 8)
    ad = rd16(p + 10)
    if qd != 1:
        return DQ_QDCOUNT
    o.qname = p + DQ_HDR
    o.qname_len = _dq_question(p, n, &off)
    if o.qname_len < 0 or off + 4 > n:
        return DQ_BAD_QUESTION
    o.qtype = rd16(p + off)
    o.qclass = rd16(p + off + 2)
    off += 4
    for i in range(<uint32_t>an + au + ad):
        if _dq_rr(p, n, &off, &rtype, &ttl, &rclass) < 0:
            # a truncated response ends where it ends: what came whole stands
            return DQ_OK if o.tc else DQ_BAD_RECORDS
        if i < an:
            o.answers += 1
            if o.answers == 1 or ttl < o.min_ttl:
                o.min_ttl = ttl
            if (o.addr_len == 0 and rclass == DQ_CLASS_IN and rtype == o.qtype and
                    (rtype == DQ_TYPE_A or rtype == DQ_TYPE_AAAA)):
                # _dq_rr checked the length: the rdata is the last 4 / 16 bytes read
                o.addr_len = 4 if rtype == DQ_TYPE_A else 16
                o.addr = p + off - o.addr_len
        elif i >= <uint32_t>an + au and rtype == DQ_TYPE_OPT and not opt_seen:
            # the OPT RR's TTL field: extended rcode (upper 8 bits of 12), version, flags
            opt_seen = True
            o.rcode |= <uint16_t>((ttl >> 24) << 4)
    if off != n:
        return DQ_OK if o.tc else DQ_BAD_RECORDS
    return DQ_OK


cdef int _dq_query_question(const uint8_t *p, Py_ssize_t n, DqParsed *o) noexcept nogil:
    """The ID and question of one of our own queries, as an ICMP error quotes it; 0,
    or -1 when the quote is too short to hold them."""
    cdef Py_ssize_t off = DQ_HDR
    memset(o, 0, sizeof(DqParsed))
    if n < DQ_HDR or rd16(p + 4) != 1:
        return -1
    o.id = rd16(p)
    o.qname = p + DQ_HDR
    o.qname_len = _dq_question(p, n, &off)
    if o.qname_len < 0 or off + 4 > n:
        return -1
    o.qtype = rd16(p + off)
    o.qclass = rd16(p + off + 2)
    return 0


# ---------------------------------------------------------------- names and types
DNS_QTYPES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16,
    "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "RRSIG": 46, "DNSKEY": 48, "SVCB": 64,
    "HTTPS": 65, "CAA": 257, "ANY": 255,
}
DNS_RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
}


def dns_qtype(qtype):
    """The QTYPE number of ``qtype``: a name (A, AAAA, NS, MX, TXT, SOA, ANY...), TYPEnnn
    (RFC 3597) or an int 1..65535."""
    if isinstance(qtype, str):
        q = qtype.strip().upper()
        if q in DNS_QTYPES:
            return DNS_QTYPES[q]
        if q.startswith("TYPE") and q[4:].isdigit() and 1 <= int(q[4:]) <= 65535:
            return int(q[4:])
        raise ValueError(f"unknown DNS query type {qtype!r}: use one of "
                         f"{', '.join(sorted(DNS_QTYPES))}, or TYPEnnn")
    return _arg("qtype", qtype, 1, 65535)


def dns_name_wire(name):
    """``name`` (a str: "example.com", "example.com." or "." for the root) as wire-format
    labels ending in the root label. Letters, digits and the ASCII punctuation DNS
    names carry; an internationalised name must be given in its A-label (xn--) form."""
    if not isinstance(name, str):
        raise TypeError(f"a DNS name must be a str, not {type(name).__name__}")
    s = name.strip()
    if s in ("", "."):
        return b"\x00"
    if s.endswith("."):
        s = s[:-1]
    if not s.isascii():
        raise ValueError(f"DNS name {name!r} is not ASCII: give its A-label (xn--) form")
    out = bytearray()
    for label in s.split("."):
        if not label:
            raise ValueError(f"DNS name {name!r} has an empty label")
        if len(label) > 63:
            raise ValueError(f"DNS name {name!r}: label {label[:20]!r}... is over 63 bytes")
        if any(c <= " " or c == "\x7f" for c in label):
            raise ValueError(f"DNS name {name!r} holds a space or control character")
        out.append(len(label))
        out += label.encode("ascii")
    out.append(0)
    if len(out) > DQ_NAME_MAX:
        raise ValueError(f"DNS name {name!r} is {len(out)} bytes on the wire, over 255")
    return bytes(out)


def dns_name_text(wire):
    """The text form ("example.com." / ".") of a wire-format name of plain labels."""
    b = bytes(wire)
    parts = []
    i = 0
    while i < len(b) and b[i]:
        parts.append(b[i + 1:i + 1 + b[i]].decode("ascii", "backslashreplace"))
        i += 1 + b[i]
    return ".".join(parts) + "."


cdef inline int _dq_answer_code(uint16_t rcode, bint tc) noexcept nogil:
    """One byte for an answer: 1 + rcode (up to 127: NOERROR is 1, never 0, which means
    no answer), 0x80 set for TC. fastping.dnscodec.answer_code reads it back."""
    return (1 + (rcode if rcode < 126 else 126)) | (0x80 if tc else 0)


cdef class DnsSocket(ProbeSocket):
    """DNS queries to any number of (server, port, name, qtype) slots on one
    unprivileged datagram socket: a response naming its probe (server address:port,
    ID, question) is EV_REPLY whatever its rcode (slot_dns() says which: noerror,
    nxdomain, servfail, refused, another rcode, truncated), an ICMP error quoting the
    query EV_UNREACHABLE (a closed port: the server is down), silence EV_TIMEOUT. Same
    loop, kernel timestamps, log and counters as the other kinds; totals() adds
    mismatched (well-formed responses from a server we query carrying a question we
    did not ask it) and the answers by kind."""

    cdef readonly int sport       # the local port the queries leave from
    cdef readonly object source   # the local address bound (None: any)
    cdef readonly bint rd         # recursion desired
    cdef readonly int edns        # EDNS0 UDP size offered (0: no OPT RR)
    cdef uint16_t qflags
    # per slot
    cdef uint32_t *qname_idx
    cdef uint16_t *qtypes
    cdef DnsStat *dstat
    # interned question names: the wire bytes back to back, by index
    cdef uint8_t *nblob
    cdef uint32_t *noff
    cdef uint32_t *nhash
    cdef uint8_t *nlen
    cdef uint32_t n_names, names_cap, nblob_len, nblob_cap
    cdef dict name_ids            # lowercased wire name -> index
    cdef uint32_t pend_name       # the question of the slots added next (set_question)
    cdef uint16_t pend_qtype
    # server index (address:port -> slots), for attributing mismatched answers
    cdef uint32_t *sidx
    cdef uint32_t sidx_cap
    cdef uint64_t c_mismatched
    cdef uint64_t c_kind[DQ_KINDS]

    def __init__(self, int family=AF_INET, *, source=None, int sport=0, bint rd=True,
                 int edns=1232, ttl=None, tos=None, int rcvbuf_bytes=0, int batch_size=64,
                 int window=1, Py_ssize_t log_max=4_000_000, str timestamps="kernel"):
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if not 0 <= sport <= 65535:
            raise ValueError(f"sport {sport} must be 0..65535 (0: a free port the kernel picks)")
        if edns != 0 and not 512 <= edns <= 1400:
            # answers are read into 1536-byte buffers: a bigger offer would be cut
            raise ValueError(f"edns {edns} must be 512..1400 bytes, or 0 for no EDNS0")
        self._setup(family, "dgram", DQ_QUERY_MAX, batch_size, window, log_max, timestamps)
        self.source = source
        self.rd = rd
        self.edns = edns
        self.qflags = DQ_FLAG_RD if rd else 0
        self.name_ids = {}
        self.set_question(".", "NS")
        self._open(ttl, tos, rcvbuf_bytes, sport)

    def __dealloc__(self):
        PyMem_RawFree(self.qname_idx)
        PyMem_RawFree(self.qtypes)
        PyMem_RawFree(self.dstat)
        PyMem_RawFree(self.nblob)
        PyMem_RawFree(self.noff)
        PyMem_RawFree(self.nhash)
        PyMem_RawFree(self.nlen)
        PyMem_RawFree(self.sidx)

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return f"<DnsSocket {fam} port={self.sport} slots={self.n} fd={self.fd}>"

    cdef int _open(self, ttl, tos, int rcvbuf_bytes, int sport) except -1:
        cdef int v
        cdef sockaddr_in6 sa
        cdef socklen_t sl
        cdef uint8_t a[16]
        self.fd = socket(self.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP)
        if self.fd < 0:
            _raise_oserror(f"socket({'AF_INET' if self.family == AF_INET else 'AF_INET6'}, "
                           "SOCK_DGRAM, IPPROTO_UDP)")
        if self.family == AF_INET6:
            self._setopt(IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY")
        memset(&sa, 0, sizeof(sa))
        if self.source is not None:
            self._pton(self.source, a)
        if self.family == AF_INET:
            (<sockaddr_in *>&sa).sin_family = AF_INET
            wr16(<uint8_t *>&(<sockaddr_in *>&sa).sin_port, <uint16_t>sport)
            if self.source is not None:
                memcpy(&(<sockaddr_in *>&sa).sin_addr, a, 4)
            sl = sizeof(sockaddr_in)
        else:
            sa.sin6_family = AF_INET6
            wr16(<uint8_t *>&sa.sin6_port, <uint16_t>sport)
            if self.source is not None:
                memcpy(&sa.sin6_addr, a, 16)
            sl = sizeof(sockaddr_in6)
        if bind(self.fd, <sockaddr *>&sa, sl) != 0:
            _raise_oserror(f"bind(DNS socket, {self.source or 'any'} port {sport})")
        sl = sizeof(sa)
        if getsockname(self.fd, <sockaddr *>&sa, &sl) != 0:
            _raise_oserror("getsockname")
        self.sport = rd16(<const uint8_t *>&sa.sin6_port)   # same offset in sockaddr_in
        self._setup_timestamps()
        self._setopt(SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL")
        if self.family == AF_INET:
            self._setopt(IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR")
            self._setopt(IPPROTO_IP, IP_RECVTTL, 1, "IP_RECVTTL")
            if ttl is not None:
                self._setopt(IPPROTO_IP, IP_TTL, ttl, "IP_TTL")
            if tos is not None:
                self._setopt(IPPROTO_IP, IP_TOS, tos, "IP_TOS")
        else:
            self._setopt(IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR")
            self._setopt(IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT")
            if ttl is not None:
                self._setopt(IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl, "IPV6_UNICAST_HOPS")
            if tos is not None:
                self._setopt(IPPROTO_IPV6, IPV6_TCLASS, tos, "IPV6_TCLASS")
        self.set_rcvbuf(rcvbuf_bytes if rcvbuf_bytes > 0 else 8 * 1024 * 1024)
        v = 4 * 1024 * 1024
        if setsockopt(self.fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) != 0:
            setsockopt(self.fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v))
        self._flush_queue()
        return 0

    # ------------------------------------------------------------ questions
    cdef uint32_t _intern(self, bytes wire) except 0xFFFFFFFF:
        """The index of question name ``wire`` (interned case-insensitively: the first
        spelling given is the one sent)."""
        key = wire.lower()
        idx = self.name_ids.get(key)
        if idx is not None:
            return idx
        cdef uint32_t n = self.n_names, ln = len(wire), cap
        cdef void *a
        if n == self.names_cap:
            cap = self.names_cap * 2 + 16
            a = PyMem_RawRealloc(self.noff, cap * sizeof(uint32_t))
            if a == NULL:
                raise MemoryError()
            self.noff = <uint32_t *>a
            a = PyMem_RawRealloc(self.nhash, cap * sizeof(uint32_t))
            if a == NULL:
                raise MemoryError()
            self.nhash = <uint32_t *>a
            a = PyMem_RawRealloc(self.nlen, cap)
            if a == NULL:
                raise MemoryError()
            self.nlen = <uint8_t *>a
            self.names_cap = cap
        if self.nblob_len + ln > self.nblob_cap:
            cap = (self.nblob_cap + ln) * 2 + 256
            a = PyMem_RawRealloc(self.nblob, cap)
            if a == NULL:
                raise MemoryError()
            self.nblob = <uint8_t *>a
            self.nblob_cap = cap
        memcpy(self.nblob + self.nblob_len, PyBytes_AS_STRING(wire), ln)
        self.noff[n] = self.nblob_len
        self.nlen[n] = <uint8_t>ln
        self.nhash[n] = _dq_name_hash(self.nblob + self.nblob_len, ln)
        self.nblob_len += ln
        self.n_names += 1
        self.name_ids[key] = n
        return n

    def set_question(self, name, qtype="A"):
        """The question (``name``, ``qtype``) of the slots added next by add_target,
        append_targets, append_range_v4 and append_packed (". NS" until set)."""
        cdef bytes wire = dns_name_wire(name)
        cdef uint16_t qt = <uint16_t>dns_qtype(qtype)
        self.pend_name = self._intern(wire)
        self.pend_qtype = qt

    def add_query(self, str address, long port, name, qtype="A"):
        """Add one slot asking ``address``:``port`` for ``name`` ``qtype``; return it."""
        cdef uint32_t keep_name = self.pend_name
        cdef uint16_t keep_qt = self.pend_qtype
        self.set_question(name, qtype)
        try:
            return self.add_target(address, port)
        finally:
            self.pend_name = keep_name
            self.pend_qtype = keep_qt

    def append_queries(self, addresses, ports, names, qtypes):
        """Append one slot per (address, port, name, qtype) of the four sequences (equal
        lengths); return the first new slot."""
        a, p, nm, qt = list(addresses), list(ports), list(names), list(qtypes)
        if not len(a) == len(p) == len(nm) == len(qt):
            raise ValueError(f"{len(a)} addresses, {len(p)} ports, {len(nm)} names and "
                             f"{len(qt)} qtypes: give one of each per query")
        first = self.n
        for i in range(len(a)):
            s = self.add_query(a[i], p[i], nm[i], qt[i])
            if i == 0:
                first = s
        return first

    def slot_question(self, uint32_t slot):
        """(name, qtype) the slot asks, the name in text form ("example.com.")."""
        if slot >= self.n:
            raise IndexError(slot)
        cdef uint32_t i = self.qname_idx[slot]
        return (dns_name_text(PyBytes_FromStringAndSize(<char *>self.nblob + self.noff[i],
                                                        self.nlen[i])),
                self.qtypes[slot])

    def slot_dns(self, uint32_t slot):
        """The slot's DNS figures: answers settled by kind (noerror, nxdomain, servfail,
        refused, other, truncated), mismatched answers, and the last settled answer
        (rcode, answers, min_ttl (None: no answer RR), truncated; None before one)."""
        if slot >= self.n:
            raise IndexError(slot)
        cdef DnsStat *d = &self.dstat[slot]
        out = {k: d.rc[i] for i, k in enumerate(DNS_KINDS)}
        out["mismatched"] = d.mismatched
        if d.has_last:
            out["last"] = {
                "rcode": d.last_rcode, "answers": d.last_answers,
                "min_ttl": d.last_min_ttl if d.last_answers else None,
                "truncated": bool(d.last_tc),
                # the first address answered to an A / AAAA question (None: none)
                "address": (_ntop(AF_INET if d.last_addr_len == 4 else AF_INET6, d.last_addr)
                            if d.last_addr_len else None),
            }
        else:
            out["last"] = None
        return out

    # ------------------------------------------------------------ slot columns
    cdef int _check_port(self, long port) except -1:
        if not 1 <= port <= 65535:
            raise ValueError(f"DNS server port {port} must be 1..65535")
        return 0

    cdef inline uint32_t _qhash(self, const uint8_t *addr, uint16_t port, uint32_t nh,
                                uint16_t qtype) noexcept nogil:
        return _addr_hash(addr, self.addr_len, port) ^ (nh * 0x85EBCA6BU) ^ (qtype * 0xC2B2AE35U)

    cdef uint32_t _key_hash(self, uint32_t slot) noexcept nogil:
        return self._qhash(self.addrs + <size_t>slot * self.addr_len, self.ports[slot],
                           self.nhash[self.qname_idx[slot]], self.qtypes[slot])

    cdef int _grow_extra(self, uint32_t cap) except -1:
        cdef void *a = PyMem_RawRealloc(self.qname_idx, <size_t>cap * sizeof(uint32_t))
        if a == NULL:
            raise MemoryError()
        self.qname_idx = <uint32_t *>a
        a = PyMem_RawRealloc(self.qtypes, <size_t>cap * sizeof(uint16_t))
        if a == NULL:
            raise MemoryError()
        self.qtypes = <uint16_t *>a
        a = PyMem_RawRealloc(self.dstat, <size_t>cap * sizeof(DnsStat))
        if a == NULL:
            raise MemoryError()
        self.dstat = <DnsStat *>a
        return 0

    cdef int _added(self, uint32_t first, uint32_t count) except -1:
        cdef uint32_t s
        for s in range(first, first + count):
            self.qname_idx[s] = self.pend_name
            self.qtypes[s] = self.pend_qtype
            memset(&self.dstat[s], 0, sizeof(DnsStat))
        self.aidx_valid = False
        return 0

    cdef bint _indexes(self) noexcept nogil:
        """The question index (core's aidx, by _key_hash) and the server index (sidx,
        by address:port), rebuilt together after any change of slots."""
        cdef uint32_t cap, s, i
        if self.aidx_valid and self.sidx != NULL:
            return True
        if not self._build_aidx():
            return False
        cap = self.aidx_cap
        if cap != self.sidx_cap:
            PyMem_RawFree(self.sidx)
            self.sidx = <uint32_t *>PyMem_RawMalloc(<size_t>cap * sizeof(uint32_t))
            self.sidx_cap = cap if self.sidx != NULL else 0
            if self.sidx == NULL:
                self.aidx_valid = False
                return False
        memset(self.sidx, 0, <size_t>cap * sizeof(uint32_t))
        for s in range(self.n):
            if not self.stats[s].active:
                continue
            i = _addr_hash(self.addrs + <size_t>s * self.addr_len, self.addr_len,
                           self.ports[s]) & (cap - 1)
            while self.sidx[i] != 0:
                i = (i + 1) & (cap - 1)
            self.sidx[i] = s + 1
        return True

    # ------------------------------------------------------------ probes
    cdef void _build(self, uint8_t *pk, uint32_t s, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        cdef size_t k = <size_t>(pk - self.tx_pkts) // DQ_QUERY_MAX
        cdef uint32_t ni = self.qname_idx[s]
        cdef sockaddr_in *sin
        self.tx_iov[k].iov_len = dq_build(pk, _dq_id(self.k0, self.k1, s, serial), self.qflags,
                                          self.nblob + self.noff[ni], self.nlen[ni],
                                          self.qtypes[s], <uint16_t>self.edns)
        if self.family == AF_INET:
            sin = <sockaddr_in *>name
            sin.sin_family = AF_INET
            wr16(<uint8_t *>&sin.sin_port, self.ports[s])
            memcpy(&sin.sin_addr, self.addrs + <size_t>s * 4, 4)
        else:
            name.sin6_family = AF_INET6
            wr16(<uint8_t *>&name.sin6_port, self.ports[s])
            memcpy(&name.sin6_addr, self.addrs + <size_t>s * 16, 16)

    # ------------------------------------------------------------ answers
    cdef inline uint16_t _port_of(self, msghdr *h) noexcept nogil:
        return rd16(<const uint8_t *>&(<sockaddr_in6 *>h.msg_name).sin6_port)

    cdef int _find(self, const uint8_t *addr, uint16_t port, const DqParsed *q,
                   uint32_t *slot, uint32_t *serial) noexcept nogil:
        """The probe an answer from ``addr``:``port`` with ID and question ``q`` is for:
        1 found; 0 the question is one we ask that server, the ID none of its probes';
        -1 the question is none we ask that server. Slots asking the same question of
        the same server (a resolver asking one name twice at once) may share an ID by
        chance: a probe still awaiting its answer wins over a settled one of another
        slot, as within a slot's window."""
        cdef uint32_t i, s, ni, w_serial
        cdef int known = -1, got
        cdef uint32_t settled_slot = 0, settled_serial = 0
        cdef bint have_settled = False
        if q.qclass != DQ_CLASS_IN or self.n == 0 or not self._indexes():
            return -1
        i = self._qhash(addr, port, _dq_name_hash(q.qname, q.qname_len), q.qtype) & (self.aidx_cap - 1)
        while self.aidx[i] != 0:
            s = self.aidx[i] - 1
            i = (i + 1) & (self.aidx_cap - 1)
            ni = self.qname_idx[s]
            if (self.ports[s] != port or self.qtypes[s] != q.qtype or
                    self.nlen[ni] != q.qname_len or
                    memcmp(self.addrs + <size_t>s * self.addr_len, addr, self.addr_len) != 0 or
                    not _dq_name_eq(self.nblob + self.noff[ni], q.qname, q.qname_len)):
                continue
            known = 0
            got = self._window_id(s, q.id, &w_serial)
            if got == 2:
                slot[0] = s
                serial[0] = w_serial
                return 1
            if got == 1 and not have_settled:
                have_settled = True
                settled_slot, settled_serial = s, w_serial
        if have_settled:  # a duplicate or late answer of that settled probe
            slot[0] = settled_slot
            serial[0] = settled_serial
            return 1
        return known

    cdef int _window_id(self, uint32_t s, uint16_t qid, uint32_t *serial) noexcept nogil:
        """The probe in the slot's window whose ID is ``qid``: one still awaiting its
        answer first (a 16-bit ID is shared with a settled probe of the window now and
        then, and the answer is the outstanding one's), else the newest settled one
        (then a duplicate or late answer): 2 outstanding, 1 settled, 0 none."""
        cdef Probe *pr = &self.probes[<size_t>s * self.window]
        cdef uint32_t w, ns = self.stats[s].next_serial
        cdef bint settled = False
        for w in range(self.window):
            if (pr[w].state == ST_EMPTY or pr[w].serial >= ns or
                    _dq_id(self.k0, self.k1, s, pr[w].serial) != qid):
                continue
            if pr[w].state == ST_OUT or pr[w].state == ST_ERR_UNREACH or pr[w].state == ST_ERR_TEXC:
                serial[0] = pr[w].serial
                return 2
            if not settled or pr[w].serial > serial[0]:
                serial[0] = pr[w].serial
                settled = True
        return settled

    cdef int _mismatched(self, const uint8_t *addr, uint16_t port, uint16_t qid) noexcept nogil:
        """A response from ``addr``:``port`` that asks none of our questions to it:
        1 the server is one we query (counted mismatched, on the first of its slots,
        among up to DQ_MISMATCH_WALK, whose probe the ID names); 0 it is not."""
        cdef uint32_t i, s, w, tried = 0
        cdef bint known = False
        cdef Probe *pr
        if self.n == 0 or not self._indexes():
            return 0
        i = _addr_hash(addr, self.addr_len, port) & (self.sidx_cap - 1)
        while self.sidx[i] != 0 and tried < DQ_MISMATCH_WALK:
            s = self.sidx[i] - 1
            i = (i + 1) & (self.sidx_cap - 1)
            if self.ports[s] != port or memcmp(self.addrs + <size_t>s * self.addr_len, addr,
                                               self.addr_len) != 0:
                continue
            known = True
            tried += 1
            pr = &self.probes[<size_t>s * self.window]
            for w in range(self.window):
                if (pr[w].state == ST_OUT and
                        _dq_id(self.k0, self.k1, s, pr[w].serial) == qid):
                    self.dstat[s].mismatched += 1
                    tried = DQ_MISMATCH_WALK
                    break
        if known:
            self.c_mismatched += 1
        return 1 if known else 0

    cdef void _settled(self, uint32_t slot, const DqParsed *q) noexcept nogil:
        """Record the DNS figures of an answer that settled a probe of ``slot``."""
        cdef DnsStat *d = &self.dstat[slot]
        cdef int k
        if q.tc:
            k = DQ_TRUNCATED
        elif q.rcode == 0:
            k = DQ_NOERROR
        elif q.rcode == 3:
            k = DQ_NXDOMAIN
        elif q.rcode == 2:
            k = DQ_SERVFAIL
        elif q.rcode == 5:
            k = DQ_REFUSED
        else:
            k = DQ_OTHER
        d.rc[k] += 1
        self.c_kind[k] += 1
        d.has_last = 1
        d.last_rcode = q.rcode
        d.last_answers = q.answers
        d.last_min_ttl = q.min_ttl
        d.last_tc = q.tc
        d.last_addr_len = q.addr_len
        if q.addr_len:
            memcpy(d.last_addr, q.addr, q.addr_len)

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
        cdef DqParsed q
        cdef uint32_t slot, serial
        cdef uint64_t before
        cdef const uint8_t *src = self._src_of(h)
        cdef uint16_t port = self._port_of(h)
        cdef int found
        if (h.msg_flags & MSG_TRUNC) or dq_parse(buf, n, &q) != DQ_OK:
            self.c_malformed += 1       # no DNS response, or one cut by our buffer
            return
        found = self._find(src, port, &q, &slot, &serial)
        if found < 0:
            if not self._mismatched(src, port, q.id):
                self.c_foreign += 1     # from an address:port we query nothing of
                self.c_f_source += 1
            return
        if found == 0:
            self.c_foreign += 1         # our question, but an ID of none of its probes
            self.c_f_cookie += 1
            return
        if not self.stats[slot].active:
            self.c_stale += 1
            return
        before = self.c_received
        # the event's and the log's TTL byte carries the answer (dns_answer_code): the
        # engine and the store get each probe's rcode and TC bit, not the IP TTL
        self._on_reply(slot, serial, t_rx, _dq_answer_code(q.rcode, q.tc), C_EV_REPLY)
        if self.c_received != before:
            self._settled(slot, &q)

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                       sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        # IP_RECVERR on a UDP socket (ip(7)): the data is our query as quoted, the name
        # its destination, the offender who sent the error
        cdef DqParsed q
        cdef uint32_t slot, serial
        cdef const uint8_t *router
        cdef void *off
        if ee == NULL or (ee.ee_origin != SO_EE_ORIGIN_ICMP and ee.ee_origin != SO_EE_ORIGIN_ICMP6):
            self.c_foreign += 1         # a local error report, not from the network
            return
        if (_dq_query_question(buf, n, &q) < 0 or
                self._find(self._src_of(h), self._port_of(h), &q, &slot, &serial) != 1):
            self.c_unattributed += 1
            return
        if not self.stats[slot].active:
            self.c_stale += 1
            return
        off = SO_EE_OFFENDER(ee)
        if self.family == AF_INET:
            router = <const uint8_t *>&(<sockaddr_in *>off).sin_addr
        else:
            router = <const uint8_t *>&(<sockaddr_in6 *>off).sin6_addr
        self._on_error(slot, serial, ee.ee_type, ee.ee_code, router, t_rx)

    def memory(self):
        """ProbeSocket.memory() and the DNS columns: dns_slots (question and DnsStat per
        slot), dns_names (the interned question names), server_index."""
        m = ProbeSocket.memory(self)
        m["dns_slots"] = <size_t>self.n_cap * (sizeof(uint32_t) + sizeof(uint16_t) + sizeof(DnsStat))
        m["dns_names"] = <size_t>self.nblob_cap + <size_t>self.names_cap * (2 * sizeof(uint32_t) + 1)
        m["server_index"] = <size_t>self.sidx_cap * sizeof(uint32_t)
        m["per_slot_size"]["DnsStat"] = sizeof(DnsStat)
        return m

    # ------------------------------------------------------------ counters
    def totals(self):
        """ProbeSocket.totals(), ``mismatched`` (well-formed responses from a server we
        query with a question we did not ask it: never answers) and ``dns``, the settled
        answers by kind."""
        t = ProbeSocket.totals(self)
        t["mismatched"] = self.c_mismatched
        t["dns"] = {k: self.c_kind[i] for i, k in enumerate(DNS_KINDS)}
        return t

    def reset_stats(self):
        ProbeSocket.reset_stats(self)
        self.c_mismatched = 0
        memset(self.c_kind, 0, sizeof(self.c_kind))
        if self.dstat != NULL and self.n:
            memset(self.dstat, 0, <size_t>self.n * sizeof(DnsStat))


DNS_KINDS = ("noerror", "nxdomain", "servfail", "refused", "other", "truncated")
DNS_PARSE_OK = DQ_OK


def dns_query(key, slot, serial, name, qtype="A", bint rd=True, int edns=1232):
    """The query a DnsSocket with cookie ``key`` sends as probe ``serial`` of ``slot``
    (tests forge answers with it)."""
    k0, k1 = _key_words(key)
    cdef bytes wire = dns_name_wire(name)
    cdef uint8_t pk[DQ_QUERY_MAX]
    cdef uint16_t qt = <uint16_t>dns_qtype(qtype)
    cdef uint16_t qid = _dq_id(k0, k1, <uint32_t>_arg("slot", slot, 0, 0xFFFFFFFF),
                               <uint32_t>_arg("serial", serial, 0, 0xFFFFFFFF))
    _arg("edns", edns, 0, 65535)
    cdef int n = dq_build(pk, qid, DQ_FLAG_RD if rd else 0,
                          <const uint8_t *>PyBytes_AS_STRING(wire), len(wire), qt, <uint16_t>edns)
    return PyBytes_FromStringAndSize(<char *>pk, n)


def dns_parse(data):
    """Parse a DNS response with the C parser: (status, fields) where status is 0 for
    a response and fields (id, flags, rcode, qname wire, qtype, qclass, answers,
    min_ttl or None, truncated), else the reason (1 short, 2 not a response, 3 not
    one question, 4 bad question, 5 bad records) and None."""
    cdef const uint8_t[::1] mv = memoryview(bytes(data)).cast("B")
    cdef DqParsed q
    cdef int r
    cdef Py_ssize_t n = mv.shape[0]
    cdef uint8_t empty = 0
    with nogil:
        r = dq_parse(&mv[0] if n else &empty, n, &q)
    if r != DQ_OK:
        return (r, None)
    return (0, (q.id, q.flags, q.rcode, PyBytes_FromStringAndSize(<char *>q.qname, q.qname_len),
                q.qtype, q.qclass, q.answers, q.min_ttl if q.answers else None,
                bool(q.tc)))
