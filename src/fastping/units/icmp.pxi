# ---------------------------------------------------------------- IcmpSocket: ICMP echo
cdef class IcmpSocket(ProbeSocket):
    """One ICMP socket (raw or unprivileged datagram) multiplexing any number of
    target slots: echo requests carrying fastping's probe header, attributed by
    identifier, sequence number and cookie. See the module docstring and ``_icmp.pyi``."""

    cdef readonly int ident
    cdef readonly int payload_size
    cdef uint32_t pad_sum        # checksum partial of the constant padding

    def __init__(self, int family=AF_INET, *, str kind="raw", int payload_size=56, ttl=None,
                 tos=None, dont_fragment=False, int rcvbuf_bytes=0, int batch_size=64,
                 int window=1, bint bpf=True, Py_ssize_t log_max=4_000_000,
                 str timestamps="kernel"):
        if kind not in ("raw", "dgram"):
            raise ValueError(f"kind must be 'raw' or 'dgram', not {kind!r}")
        if payload_size < PROBE_HDR or payload_size > 65000:
            raise ValueError(f"payload_size {payload_size} must be {PROBE_HDR}..65000 bytes "
                             f"(fastping needs {PROBE_HDR} bytes for its probe header)")
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if dont_fragment not in (False, True, "probe"):
            raise ValueError(f"dont_fragment must be False, True or 'probe', not {dont_fragment!r}")
        self._setup(family, kind, ICMP_HDR_LEN + payload_size, batch_size, window, log_max,
                    timestamps)
        self.payload_size = payload_size
        cdef int i
        for i in range(self.batch_size):
            _fill_pattern(self.tx_pkts + <size_t>i * self.plen + ICMP_HDR_LEN + PROBE_HDR,
                          payload_size - PROBE_HDR)
        self.pad_sum = csum_add(self.tx_pkts + ICMP_HDR_LEN + PROBE_HDR, payload_size - PROBE_HDR, 0)
        self._open(ttl, tos, 2 if dont_fragment == "probe" else 1 if dont_fragment else 0,
                   rcvbuf_bytes, bpf)

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return f"<IcmpSocket {fam} {self.kind} ident={self.ident} slots={self.n} fd={self.fd}>"

    cdef void _build(self, uint8_t *pk, uint32_t s, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        cdef sockaddr_in *sin
        pk[ICMP_TYPE_OFFSET] = ICMP_ECHO_REQUEST if self.family == AF_INET else ICMP6_ECHO_REQUEST
        pk[ICMP_CODE_OFFSET] = 0
        wr16(pk + ICMP_ID_OFFSET, <uint16_t>self.ident)
        wr16(pk + ICMP_SEQ_OFFSET, <uint16_t>(serial & 0xFFFF))
        write_probe_header(pk + ICMP_HDR_LEN, self.k0, self.k1, s, serial)
        wr16(pk + ICMP_CSUM_OFFSET, 0)
        if self.family == AF_INET:
            # ICMPv6's checksum covers a pseudo-header: the kernel fills it in
            wr16(pk + ICMP_CSUM_OFFSET,
                 csum_fold(csum_add(pk, ICMP_HDR_LEN + PROBE_HDR, self.pad_sum)))
            sin = <sockaddr_in *>name
            sin.sin_family = AF_INET
            memcpy(&sin.sin_addr, self.addrs + <size_t>s * 4, 4)
        else:
            name.sin6_family = AF_INET6
            memcpy(&name.sin6_addr, self.addrs + <size_t>s * 16, 16)

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
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
                    self._note_mtu(slot, p.mtu)
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
            self._note_mtu(slot, p.mtu)
            return
        if memcmp(src, want, self.addr_len) != 0:
            self.c_foreign += 1     # a valid cookie from the wrong address: spoofed or misrouted
            self.c_f_source += 1
            return
        self._on_reply(slot, serial, t_rx, ttl, C_EV_REPLY)

    cdef int _open(self, ttl, tos, int dont_fragment, int rcvbuf_bytes, bint use_bpf) except -1:
        # dont_fragment: 0 off, 1 DF with the kernel's path MTU (a learned PMTU makes
        # bigger sends fail locally with EMSGSIZE), 2 DF whatever the kernel learned
        # (IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE: what a path MTU search sends)
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
                self._setopt(IPPROTO_IP, IP_MTU_DISCOVER,
                             IP_PMTUDISC_DO if dont_fragment == 1 else 3, "IP_MTU_DISCOVER")
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
            if dont_fragment == 2:   # IPV6_MTU_DISCOVER (23) = IPV6_PMTUDISC_PROBE (3)
                self._setopt(IPPROTO_IPV6, 23, 3, "IPV6_MTU_DISCOVER")
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

    cdef inline void _note_mtu(self, uint32_t slot, uint32_t mtu) noexcept nogil:
        # the MTU a fragmentation-needed / packet-too-big named, kept with the slot's
        # last ICMP error (only an error _on_error took: one that made the SlotRare)
        cdef SlotStats *st = &self.stats[slot]
        if mtu and st.rare:
            self.rare[st.rare - 1].mtu = <uint16_t>(mtu if mtu < 0xFFFF else 0xFFFF)

    def slot_mtu(self, uint32_t slot):
        """The MTU named by the slot's last fragmentation-needed (IPv4) / packet-too-big
        (IPv6), 0 when none named one (reset with the slot's stats)."""
        if slot >= self.n:
            raise IndexError(slot)
        return self._rare_ro(slot).mtu

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

    cdef int _set_icmp_filter(self) except -1:
        # Without BPF, at least keep looped-back echo requests and other ICMP noise
        # out (raw(7): ICMP_FILTER is a bit mask of types to drop).
        cdef icmp_filter f
        f.data = ~((1u << ICMP_ECHO_REPLY) | (1u << ICMP_DEST_UNREACH) |
                   (1u << ICMP_TIME_EXCEEDED) | (1u << ICMP_PARAMETERPROB))
        if setsockopt(self.fd, IPPROTO_ICMP + 254, ICMP_FILTER, &f, sizeof(f)) != 0:  # SOL_RAW = 255
            _raise_oserror("setsockopt(ICMP_FILTER)")
        return 0

    cdef bint _slot_of_quote(self, const uint8_t *dst, uint16_t seq, uint32_t *slot,
                             uint32_t *serial) noexcept nogil:
        """The outstanding probe to ``dst`` whose sequence number is ``seq`` (the
        identifier was checked by the caller). Several targets may share an address:
        each is looked at."""
        cdef uint32_t i, s, w
        cdef Probe *pr
        if dst == NULL or self.n == 0 or (not self.aidx_valid and not self._build_aidx()):
            return False
        i = _addr_hash(dst, self.addr_len, 0) & (self.aidx_cap - 1)
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

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
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
        if (ee.ee_type == ICMP_DEST_UNREACH and ee.ee_code == 4 and self.family == AF_INET) or \
                (ee.ee_type == ICMP6_PACKET_TOO_BIG and self.family == AF_INET6):
            self._note_mtu(slot, ee.ee_info)   # ip(7): ee_info is the reported MTU

