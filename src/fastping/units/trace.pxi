

# ---------------------------------------------------------------- TraceSocket: every hop at once
#
# A trace is one slot per (target, TTL): target t's hop h (1-based) is slot
# t * max_ttl + h - 1, so the whole targets x TTLs space is one slot table and the
# shared loop sends it in any order (order(): a keyed random permutation, as yarrp
# does, so no router near us sees a burst), paced, kernel-timestamped, one socket.
# Each probe is an ICMP echo request whose TTL / hop limit rides in its own control
# message (IP_TTL / IPV6_HOPLIMIT, the kind's part of the core's per-message control):
#
#   type 8 | code 0 | checksum: the same for every probe (Paris traceroute, below)
#   identifier: the socket's | sequence = (hop - 1) << 10 | serial & 0x3FF
#   data: fastping probe header (slot, serial, cookie) | balance word | padding
#
# An answer names its probe two ways. A time-exceeded or unreachable that quotes
# enough of the probe carries the probe header, whose cookie is checked; a router
# that quotes only the 8 bytes RFC 792 asks for still quotes the destination (the
# target, found in an address index) and the sequence number (the hop and the
# serial's low bits), which name one outstanding probe. Echo replies carry the
# header whole.
#
# Paris traceroute (Augustin et al., IMC 2006): per-flow load balancers hash the
# first words of the transport header; for ICMP that includes the checksum. The
# balance word makes every probe's ones-complement sum the socket's flow_sum, so the
# checksum (over a pseudo-header too, for ICMPv6: constant per target) never
# changes while the sequence number and the probe header do, and every probe to a
# target follows one path.
#
# When the target answers (or a hop says unreachable) at hop h, its hops beyond h
# that were not sent yet are dropped (counted in skipped): the path ends there.

DEF TTL_SHIFT = 10
DEF SERIAL_MASK = 0x3FF
DEF TRACE_MAX_TTL = 64
DEF BAL_LEN = 2
DEF RT_NONE = 0xFF            # rtype of a slot nothing has answered


cdef inline uint16_t _ones_add(uint32_t a, uint32_t b) noexcept nogil:
    cdef uint32_t s = a + b
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>((s & 0xFFFF) + (s >> 16))


cdef class TraceSocket(IcmpSocket):
    """TTL-limited ICMP echo probes for every (target, hop) at once: the slots of
    target ``t`` are ``t * max_ttl .. t * max_ttl + max_ttl - 1`` (hops 1..max_ttl).
    Each slot's answer (time exceeded from a router, echo reply from the target, or
    an unreachable) is its RTT (slot_stats) and its responder (path()). See the
    header of units/trace.pxi and ``_icmp.pyi``."""

    cdef readonly int max_ttl
    cdef readonly int flow_sum       # Paris: every probe's ICMP ones-complement sum
    cdef uint32_t bal_pad_sum        # checksum partial of the padding after the balance word
    cdef uint8_t *resp               # n_cap * addr_len: who answered the slot
    cdef uint8_t *rtype              # n_cap: its ICMP type (RT_NONE: no answer yet)
    cdef uint8_t *rcode
    cdef uint32_t *tidx              # address index of the targets (first slot + 1)
    cdef uint32_t tidx_cap
    cdef bint tidx_valid
    cdef uint64_t c_hops, c_reached, c_unreach_hops, c_skipped, c_short_quote
    cdef uint64_t c_resp_changed     # a hop answered from another address than before

    def __init__(self, int family=AF_INET, *, int max_ttl=16, str kind="raw",
                 int payload_size=56, tos=None, int rcvbuf_bytes=0, int batch_size=64,
                 int window=1, bint bpf=True, str timestamps="kernel"):
        if not 1 <= max_ttl <= TRACE_MAX_TTL:
            raise ValueError(f"max_ttl {max_ttl} must be 1..{TRACE_MAX_TTL}")
        if payload_size < PROBE_HDR + BAL_LEN:
            raise ValueError(f"payload_size {payload_size} must be >= {PROBE_HDR + BAL_LEN} "
                             f"bytes for a trace probe (probe header and balance word)")
        if window > SERIAL_MASK + 1:
            raise ValueError(f"window {window} must be 1..{SERIAL_MASK + 1}")
        self.max_ttl = max_ttl
        self.tx_cextra = TX_CTRL      # CMSG_SPACE(sizeof(int)): the probe's TTL
        IcmpSocket.__init__(self, family, kind=kind, payload_size=payload_size, tos=tos,
                            rcvbuf_bytes=rcvbuf_bytes, batch_size=batch_size, window=window,
                            bpf=bpf, log_max=0, timestamps=timestamps)
        cdef int i
        cdef cmsghdr *c
        for i in range(self.batch_size):
            c = <cmsghdr *>(self.tx_ctrl + <size_t>i * self.tx_cstride + TX_CTRL)
            c.cmsg_level = IPPROTO_IP if family == AF_INET else IPPROTO_IPV6
            c.cmsg_type = IP_TTL if family == AF_INET else IPV6_HOPLIMIT
            c.cmsg_len = CMSG_LEN(sizeof(int))
        # the template's balance word is 0; the padding after it is the same in every probe
        for i in range(self.batch_size):
            wr16(self.tx_pkts + <size_t>i * self.plen + ICMP_HDR_LEN + PROBE_HDR, 0)
        self.bal_pad_sum = csum_add(self.tx_pkts + ICMP_HDR_LEN + PROBE_HDR + BAL_LEN,
                                    payload_size - PROBE_HDR - BAL_LEN, 0)
        # any sum but the two zeros of ones-complement arithmetic
        self.flow_sum = 1 + (rd16(<const uint8_t *>PyBytes_AS_STRING(self.key)) % 0xFFFD)

    def __dealloc__(self):
        PyMem_RawFree(self.resp)
        PyMem_RawFree(self.rtype)
        PyMem_RawFree(self.rcode)
        PyMem_RawFree(self.tidx)

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return (f"<TraceSocket {fam} {self.kind} targets={self.n // self.max_ttl} "
                f"max_ttl={self.max_ttl} fd={self.fd}>")

    # ------------------------------------------------------------ the kind's hooks
    cdef void _build(self, uint8_t *pk, uint32_t s, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        cdef int ttl = <int>(s % <uint32_t>self.max_ttl) + 1
        cdef uint32_t part
        cdef sockaddr_in *sin
        pk[ICMP_TYPE_OFFSET] = ICMP_ECHO_REQUEST if self.family == AF_INET else ICMP6_ECHO_REQUEST
        pk[ICMP_CODE_OFFSET] = 0
        wr16(pk + ICMP_ID_OFFSET, <uint16_t>self.ident)
        wr16(pk + ICMP_SEQ_OFFSET, <uint16_t>(((ttl - 1) << TTL_SHIFT) | (serial & SERIAL_MASK)))
        write_probe_header(pk + ICMP_HDR_LEN, self.k0, self.k1, s, serial)
        wr16(pk + ICMP_CSUM_OFFSET, 0)
        wr16(pk + ICMP_HDR_LEN + PROBE_HDR, 0)
        part = csum_add(pk, ICMP_HDR_LEN + PROBE_HDR + BAL_LEN, self.bal_pad_sum)
        # sum + balance = flow_sum (ones complement): balance = flow_sum - sum
        wr16(pk + ICMP_HDR_LEN + PROBE_HDR,
             _ones_add(<uint32_t>self.flow_sum, <uint32_t>csum_fold(part)))
        if self.family == AF_INET:
            # the message now sums to flow_sum (never 0 nor 0xFFFF: one representation),
            # so its checksum is flow_sum's complement, the same for every probe
            wr16(pk + ICMP_CSUM_OFFSET, <uint16_t>(~self.flow_sum & 0xFFFF))
            sin = <sockaddr_in *>name
            sin.sin_family = AF_INET
            memcpy(&sin.sin_addr, self.addrs + <size_t>s * 4, 4)
        else:
            name.sin6_family = AF_INET6
            memcpy(&name.sin6_addr, self.addrs + <size_t>s * 16, 16)
        memcpy(CMSG_DATA(<cmsghdr *>self._kind_ctrl(pk)), &ttl, sizeof(int))

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
        cdef Parsed p
        cdef int rc = parse_c(buf, n, self.family, self.raw and self.family == AF_INET, &p)
        cdef uint32_t slot, serial
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
        if read_probe_header(p.payload, p.payload_len, self.k0, self.k1, &slot, &serial):
            if slot >= self.n or not self.stats[slot].active:
                self.c_stale += 1
                return
            if p.seq != <uint16_t>((((slot % <uint32_t>self.max_ttl)) << TTL_SHIFT) |
                                   (serial & SERIAL_MASK)):
                self.c_foreign += 1     # a valid header spliced onto another sequence number
                self.c_f_seq += 1
                return
        elif p.is_error and p.payload_len < PROBE_HDR:
            # an 8-byte quote: the destination and the sequence number name the probe
            if not self._slot_of_seq(p.inner_dst, p.seq, &slot, &serial):
                self.c_unattributed += 1
                return
            self.c_short_quote += 1
        elif p.is_error:
            self.c_unattributed += 1
            return
        else:
            self.c_foreign += 1
            self.c_f_cookie += 1
            return
        cdef const uint8_t *want = self.addrs + <size_t>slot * self.addr_len
        cdef const uint8_t *src = self._src_of(h)
        if p.is_error:
            if memcmp(p.inner_dst, want, self.addr_len) != 0:
                self.c_foreign += 1
                self.c_f_source += 1
                return
            self._answer(slot, serial, p.type, p.code, src, t_rx, ttl)
            return
        if memcmp(src, want, self.addr_len) != 0:
            self.c_foreign += 1
            self.c_f_source += 1
            return
        self._answer(slot, serial, p.type, 0, src, t_rx, ttl)

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                       sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        # datagram ("ping") sockets: ICMP errors arrive here (IP_RECVERR), the data our
        # echo request as sent, the offender in the control message
        cdef uint32_t slot, serial
        cdef void *off
        if ee == NULL or (ee.ee_origin != SO_EE_ORIGIN_ICMP and ee.ee_origin != SO_EE_ORIGIN_ICMP6):
            self.c_foreign += 1
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
            self._answer(slot, serial, ee.ee_type, ee.ee_code,
                         <const uint8_t *>&(<sockaddr_in *>off).sin_addr, t_rx, -1)
        else:
            self._answer(slot, serial, ee.ee_type, ee.ee_code,
                         <const uint8_t *>&(<sockaddr_in6 *>off).sin6_addr, t_rx, -1)

    cdef void _answer(self, uint32_t slot, uint32_t serial, int itype, int icode,
                      const uint8_t *who, int64_t t_rx, int ttl) noexcept nogil:
        """Slot ``slot``'s probe ``serial`` was answered by ``who``: an RTT like any
        reply (the core's accounting: duplicates, late answers), and its responder."""
        cdef uint32_t before = self.stats[slot].received
        self._on_reply(slot, serial, t_rx, ttl, C_EV_REPLY)
        if self.stats[slot].received == before:
            return      # a duplicate, a late answer, or a probe never sent: counted there
        cdef uint8_t *r = self.resp + <size_t>slot * self.addr_len
        if self.rtype[slot] != RT_NONE and memcmp(r, who, self.addr_len) != 0:
            # the same (target, hop) answered by two routers: the path moved between
            # its probes (or a balancer hashes on what Paris keeps constant): counted
            self.c_resp_changed += 1
        memcpy(r, who, self.addr_len)
        self.rtype[slot] = <uint8_t>itype
        self.rcode[slot] = <uint8_t>icode
        cdef bint v4 = self.family == AF_INET
        if itype == (ICMP_TIME_EXCEEDED if v4 else ICMP6_TIME_EXCEEDED):
            self.c_hops += 1
            return
        if itype == (ICMP_ECHO_REPLY if v4 else ICMP6_ECHO_REPLY):
            self.c_reached += 1
        else:
            self.c_unreach_hops += 1
        self._stop_beyond(slot)

    cdef void _stop_beyond(self, uint32_t slot) noexcept nogil:
        # the path ends at this hop: its target's later hops not sent yet never will be
        cdef uint32_t end = slot - slot % <uint32_t>self.max_ttl + <uint32_t>self.max_ttl
        cdef uint32_t s
        for s in range(slot + 1, end):
            if self.stats[s].active and self.stats[s].next_serial == 0:
                self.stats[s].active = 0
                self.c_skipped += 1

    cdef bint _slot_of_seq(self, const uint8_t *dst, uint16_t seq, uint32_t *slot,
                           uint32_t *serial) noexcept nogil:
        cdef uint32_t hop = seq >> TTL_SHIFT, i, s, w
        cdef Probe *pr
        if dst == NULL or hop >= <uint32_t>self.max_ttl or self.n == 0:
            return False
        if not self.tidx_valid and not self._build_tidx():
            return False
        i = _addr_hash(dst, self.addr_len, 0) & (self.tidx_cap - 1)
        while self.tidx[i] != 0:
            s = self.tidx[i] - 1 + hop
            if memcmp(self.addrs + <size_t>s * self.addr_len, dst, self.addr_len) == 0:
                pr = &self.probes[<size_t>s * self.window]
                for w in range(self.window):
                    # any probe sent, settled or not: _on_reply tells a duplicate or a
                    # late answer from the first
                    if (pr[w].state != ST_EMPTY and pr[w].state != ST_SENDFAIL and
                            (pr[w].serial & SERIAL_MASK) == (seq & SERIAL_MASK)):
                        slot[0] = s
                        serial[0] = pr[w].serial
                        return True
            i = (i + 1) & (self.tidx_cap - 1)
        return False

    cdef bint _build_tidx(self) noexcept nogil:
        cdef uint32_t nt = self.n // <uint32_t>self.max_ttl, cap = 16, t, i
        while cap < 2 * nt + 1:
            cap *= 2
        if cap != self.tidx_cap:
            PyMem_RawFree(self.tidx)
            self.tidx = <uint32_t *>PyMem_RawMalloc(<size_t>cap * sizeof(uint32_t))
            self.tidx_cap = cap if self.tidx != NULL else 0
            if self.tidx == NULL:
                return False
        memset(self.tidx, 0, <size_t>cap * sizeof(uint32_t))
        for t in range(nt):
            i = _addr_hash(self.addrs + <size_t>t * self.max_ttl * self.addr_len,
                           self.addr_len, 0) & (cap - 1)
            while self.tidx[i] != 0:
                i = (i + 1) & (cap - 1)
            self.tidx[i] = t * <uint32_t>self.max_ttl + 1
        self.tidx_valid = True
        return True

    cdef int _grow_extra(self, uint32_t cap) except -1:
        cdef void *a = PyMem_RawRealloc(self.resp, <size_t>cap * self.addr_len)
        if a == NULL:
            raise MemoryError()
        self.resp = <uint8_t *>a
        a = PyMem_RawRealloc(self.rtype, cap)
        if a == NULL:
            raise MemoryError()
        self.rtype = <uint8_t *>a
        a = PyMem_RawRealloc(self.rcode, cap)
        if a == NULL:
            raise MemoryError()
        self.rcode = <uint8_t *>a
        return 0

    cdef int _added(self, uint32_t first, uint32_t count) except -1:
        memset(self.rtype + first, RT_NONE, count)
        memset(self.rcode + first, 0, count)
        memset(self.resp + <size_t>first * self.addr_len, 0, <size_t>count * self.addr_len)
        self.tidx_valid = False
        return 0

    # ------------------------------------------------------------ targets
    def add_traces(self, addresses):
        """Append one trace per numeric address (``max_ttl`` slots each); return the
        index of the first new target."""
        cdef list addrs = list(addresses)
        cdef bytearray packed = bytearray(len(addrs) * self.addr_len)
        cdef uint8_t *pb = <uint8_t *>packed if len(addrs) else NULL
        cdef Py_ssize_t i
        for i in range(len(addrs)):
            self._pton(addrs[i], pb + i * self.addr_len)
        return self.add_traces_packed(packed)

    def add_traces_packed(self, const uint8_t[::1] packed):
        """``add_traces`` for network-order addresses back to back (4 or 16 bytes each)."""
        cdef Py_ssize_t nb = packed.shape[0]
        if nb % self.addr_len:
            raise ValueError(f"packed addresses: {nb} bytes is not a multiple of {self.addr_len}")
        cdef uint32_t nt = <uint32_t>(nb // self.addr_len), t, h, s
        cdef uint32_t M = <uint32_t>self.max_ttl
        if (<uint64_t>nt + self.n // M) * M > 0xFFFFFFFF:
            raise ValueError("too many traces for one socket")
        cdef uint32_t first = self.n
        self._grow(self.n + nt * M)
        with nogil:
            for t in range(nt):
                for h in range(M):
                    s = first + t * M + h
                    memcpy(self.addrs + <size_t>s * self.addr_len, &packed[t * self.addr_len],
                           self.addr_len)
                    self._init_slot(s)
        self.n += nt * M
        self._added(first, nt * M)
        return first // M

    def set_targets(self, addresses, ports=None):
        if ports is not None:
            raise ValueError("trace targets have no port")
        self.clear_targets()
        self.add_traces(addresses)

    def append_targets(self, addresses, ports=None):
        raise TypeError("a TraceSocket's slots are (target, hop) pairs: use add_traces()")

    def append_packed(self, packed, long port=0):
        raise TypeError("a TraceSocket's slots are (target, hop) pairs: use add_traces_packed()")

    def append_range_v4(self, first, count, long port=0):
        raise TypeError("a TraceSocket's slots are (target, hop) pairs: use add_traces()")

    def add_target(self, str address, long port=0):
        raise TypeError("a TraceSocket's slots are (target, hop) pairs: use add_traces()")

    def remove_target(self, uint32_t slot):
        raise TypeError("a TraceSocket's traces are not removed one by one: use clear_targets()")

    @property
    def n_traces(self):
        return self.n // <uint32_t>self.max_ttl

    def order(self, key=None):
        """Every slot once, in a random order keyed by ``key`` (16 bytes; default the
        socket's own): Fisher-Yates driven by SipHash-2-4 of the position, so the
        same key gives the same order. An ``array('I')`` for sweep(slots=...)."""
        cdef uint64_t k0 = self.k1, k1 = self.k0
        if key is not None:
            k0, k1 = _key_words(key)
        out = array("I", bytes(4 * self.n))
        cdef uint32_t[::1] v = out
        cdef uint32_t i, j, tmp, nn = self.n
        with nogil:
            for i in range(nn):
                v[i] = i
            i = nn
            while i > 1:
                j = <uint32_t>(cookie_of(k0, k1, i, 0x7472) % i)
                i -= 1
                tmp = v[i]
                v[i] = v[j]
                v[j] = tmp
        return out

    # ------------------------------------------------------------ results
    def path(self, uint32_t target):
        """Target ``target``'s hops, 1 up to the first that ended the path (the
        target's echo reply or an unreachable; all of them when none did): tuples
        (hop, responder or None, min RTT ns or None, mean RTT ns or None, ICMP type or
        None, ICMP code or None, probes sent, answers received)."""
        if target >= self.n // <uint32_t>self.max_ttl:
            raise IndexError(f"target {target} out of range")
        cdef uint32_t M = <uint32_t>self.max_ttl, base = target * M, h, s, last = M
        cdef SlotStats *st
        cdef int t
        for h in range(M):
            t = self.rtype[base + h]
            if t == RT_NONE or t == (ICMP_TIME_EXCEEDED if self.family == AF_INET else ICMP6_TIME_EXCEEDED):
                continue
            last = h + 1
            break
        out = []
        for h in range(last):
            s = base + h
            st = &self.stats[s]
            t = self.rtype[s]
            if t == RT_NONE:
                out.append((h + 1, None, None, None, None, None, st.sent, st.received))
            else:
                out.append((h + 1, _ntop(self.family, self.resp + <size_t>s * self.addr_len),
                            self._min_rtt(s), st.sum_ns // st.received if st.received else None,
                            t, self.rcode[s], st.sent, st.received))
        return out

    cdef object _min_rtt(self, uint32_t s):
        cdef SlotStats *st = &self.stats[s]
        cdef const SlotRare *rr
        if st.received == 0:
            return None
        if st.flags & SF_WIDE:
            rr = self._rare_ro(s)
            return rr.min_ns
        return st.min_rtt

    def trace_totals(self):
        """The core's totals() and the trace's own: hops (time exceeded answers),
        reached (targets' echo replies), unreachable (hops that said so), skipped
        (probes not sent past the end of a path), short_quotes (answers attributed
        from an 8-byte quote), responder_changes (a hop answered by another address
        than its earlier probes: the last is kept)."""
        d = self.totals()
        d.update(hops=self.c_hops, reached=self.c_reached, unreachable_hops=self.c_unreach_hops,
                 skipped=self.c_skipped, short_quotes=self.c_short_quote,
                 responder_changes=self.c_resp_changed)
        return d
