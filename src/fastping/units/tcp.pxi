# ---------------------------------------------------------------- TcpSocket: stateless SYN
#
# TCP SYN probe (RFC 9293 §3.1), 24 bytes: no data, one option (MSS 1460, as every
# stack sends it: some middleboxes drop option-less SYNs)
#  0               1               2               3
# +-------------------------------+-------------------------------+
# |  Source port = base + serial  |        Destination port       |
# +-------------------------------+-------------------------------+
# |   Sequence number = cookie: SipHash(key, slot << 32 | serial)  |
# +---------------------------------------------------------------+
# |                    Acknowledgment number = 0                  |
# +-------+-------+---------------+-------------------------------+
# |  6    |       |   SYN         |   Window 64240                |
# +-------+-------+---------------+-------------------------------+
# |   Checksum (pseudo-header)    |      Urgent pointer 0         |
# +-------------------------------+-------------------------------+
# |  MSS option: 2, 4, 1460                                       |
# +---------------------------------------------------------------+
#
# The answer names its probe (as zmap's validation does): it comes from the slot's
# address and port, to our source port (base + the serial's low 8 bits), and
# acknowledges cookie + 1: a SYN-ACK says "open", a RST (with ACK) "closed". The
# local kernel answers each SYN-ACK with a RST (no socket owns our source port), so
# no half-open state stays on the target and no TIME_WAIT on us. ICMP errors about a
# probe reach the raw socket's error queue (IP_RECVERR), quoting its first 8 bytes:
# ports and sequence number, enough to attribute them.

DEF TCP_SYN_LEN = 24
DEF TCP_SPORT = 0
DEF TCP_DPORT = 2
DEF TCP_SEQ = 4
DEF TCP_ACK = 8
DEF TCP_OFF = 12
DEF TCP_FLAGS = 13
DEF TCP_WIN = 14
DEF TCP_CSUM = 16
DEF TCP_URG = 18
DEF TH_FIN = 0x01
DEF TH_SYN = 0x02
DEF TH_RST = 0x04
DEF TH_ACK = 0x10
DEF SPORT_SPAN = 256          # source ports per socket: base .. base + 255
DEF SRC_CACHE = 4096          # IPv4 source addresses remembered, by destination /24


cdef inline uint32_t _isn(uint64_t k0, uint64_t k1, uint32_t slot, uint32_t serial) noexcept nogil:
    return <uint32_t>(cookie_of(k0, k1, slot, serial) & 0xFFFFFFFFULL)


cdef class TcpSocket(ProbeSocket):
    """Stateless TCP SYN probes (raw ``IPPROTO_TCP``, CAP_NET_RAW) to any number of
    address:port slots on one socket: a SYN-ACK is EV_REPLY ("open"), a RST is
    EV_CLOSED ("closed"), silence EV_TIMEOUT ("filtered"), an ICMP error quoting the
    SYN EV_UNREACHABLE. Same loop, timestamps, log and counters as IcmpSocket; in
    totals(), foreign_ident counts TCP packets to our ports that are neither SYN-ACK
    nor RST, foreign_cookie answers from a target that do not acknowledge its cookie,
    foreign_source answers from an address:port that is no target."""

    cdef readonly int sport_base
    cdef readonly object source   # the source address the SYNs carry (None: the route's)
    cdef uint32_t *psum           # IPv4: per-slot pseudo-header partial checksum
    cdef int route_fd             # IPv4: a UDP socket, connect()ed to learn sources
    cdef uint32_t *src_key        # SRC_CACHE: destination /24 + 1 (0 = empty)
    cdef uint32_t *src_val        # its source address (network order bytes as uint32)
    cdef uint8_t src_fixed[16]
    cdef bint has_src_fixed
    cdef uint32_t bound_src       # IPv4, no source= : the one source every slot has had
    cdef int bind_state           # 0: no slot yet; 1: bound to bound_src; 2: sources differ

    def __init__(self, int family=AF_INET, *, source=None, ttl=None, tos=None,
                 int rcvbuf_bytes=0, int batch_size=64, int window=1, bint bpf=True,
                 Py_ssize_t log_max=4_000_000, str timestamps="kernel", sport_base=None):
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if window > SPORT_SPAN // 4:
            raise ValueError(f"window {window} must be 1..{SPORT_SPAN // 4} for TCP")
        if sport_base is None:
            # inside Linux's ephemeral range, away from its low end where connect()s start
            sport_base = 40000 + int.from_bytes(_os.urandom(2), "big") % 20000
        if not 1024 <= sport_base <= 65535 - SPORT_SPAN:
            raise ValueError(f"sport_base {sport_base} must be 1024..{65535 - SPORT_SPAN}")
        self.route_fd = -1
        self._setup(family, "raw", TCP_SYN_LEN, batch_size, window, log_max, timestamps)
        self.sport_base = sport_base
        if source is not None:
            self._pton(source, self.src_fixed)
            self.has_src_fixed = True
            self.source = source
        elif family == AF_INET:
            self.src_key = <uint32_t *>PyMem_RawCalloc(SRC_CACHE, sizeof(uint32_t))
            self.src_val = <uint32_t *>PyMem_RawCalloc(SRC_CACHE, sizeof(uint32_t))
            if self.src_key == NULL or self.src_val == NULL:
                raise MemoryError()
            self.route_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
            if self.route_fd < 0:
                _raise_oserror("socket(AF_INET, SOCK_DGRAM) for source lookups")
        self._open(ttl, tos, rcvbuf_bytes, bpf)

    def __dealloc__(self):
        PyMem_RawFree(self.psum)
        PyMem_RawFree(self.src_key)
        PyMem_RawFree(self.src_val)
        if self.route_fd >= 0:
            c_close(self.route_fd)

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return (f"<TcpSocket {fam} ports={self.sport_base}..{self.sport_base + SPORT_SPAN - 1} "
                f"slots={self.n} fd={self.fd}>")

    cdef int _open(self, ttl, tos, int rcvbuf_bytes, bint use_bpf) except -1:
        cdef int v
        cdef sockaddr_in6 sa
        self.fd = socket(self.family, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP)
        if self.fd < 0:
            if errno == EPERM or errno == EACCES:
                raise PermissionError(
                    errno, "TCP SYN probes need a raw socket (root or CAP_NET_RAW); without "
                    "it use connect() probes (fastping.tcpconnect), or grant the capability: "
                    "setcap cap_net_raw+ep $(readlink -f $(which python3))")
            _raise_oserror(f"socket({'AF_INET' if self.family == AF_INET else 'AF_INET6'}, "
                           "SOCK_RAW, IPPROTO_TCP)")
        if self.has_src_fixed:
            memset(&sa, 0, sizeof(sa))
            if self.family == AF_INET:
                (<sockaddr_in *>&sa).sin_family = AF_INET
                memcpy(&(<sockaddr_in *>&sa).sin_addr, self.src_fixed, 4)
                v = sizeof(sockaddr_in)
            else:
                sa.sin6_family = AF_INET6
                memcpy(&sa.sin6_addr, self.src_fixed, 16)
                v = sizeof(sockaddr_in6)
            if bind(self.fd, <sockaddr *>&sa, v) != 0:
                _raise_oserror(f"bind(raw TCP socket, {self.source})")
        self._setup_timestamps()
        self._setopt(SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL")
        if self.family == AF_INET:
            self._setopt(IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR")
            if ttl is not None:
                self._setopt(IPPROTO_IP, IP_TTL, ttl, "IP_TTL")
            if tos is not None:
                self._setopt(IPPROTO_IP, IP_TOS, tos, "IP_TOS")
        else:
            self._setopt(IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR")
            self._setopt(IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT")
            # the kernel computes the checksum (over its own choice of source address)
            self._setopt(IPPROTO_IPV6, IPV6_CHECKSUM, TCP_CSUM, "IPV6_CHECKSUM")
            if ttl is not None:
                self._setopt(IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl, "IPV6_UNICAST_HOPS")
            if tos is not None:
                self._setopt(IPPROTO_IPV6, IPV6_TCLASS, tos, "IPV6_TCLASS")
        self.set_rcvbuf(rcvbuf_bytes if rcvbuf_bytes > 0 else 8 * 1024 * 1024)
        v = 4 * 1024 * 1024
        if setsockopt(self.fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) != 0:
            setsockopt(self.fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v))
        if use_bpf:
            self._attach_bpf()
        self._flush_queue()
        return 0

    cdef int _attach_bpf(self) except -1:
        # Pass only TCP segments to our source ports that carry SYN+ACK or RST: a raw
        # TCP socket is otherwise handed every TCP packet the host receives (our own
        # SYNs looped back, the kernel's RSTs, every connection's traffic).
        cdef sock_filter code[16]
        cdef sock_fprog prog
        cdef int i
        cdef unsigned int lo = self.sport_base, hi = self.sport_base + SPORT_SPAN
        if self.family == AF_INET:
            code[0] = _bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, 6)                # flags + fragment offset
            code[1] = _bpf(BPF_JMP | BPF_JSET | BPF_K, 9, 0, 0x1FFF)          # a later fragment: drop
            code[2] = _bpf(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0)                # X = IP header length
            code[3] = _bpf(BPF_LD | BPF_H | BPF_IND, 0, 0, TCP_DPORT)
            code[4] = _bpf(BPF_JMP | BPF_JGE | BPF_K, 0, 7, lo)               # / drop
            code[5] = _bpf(BPF_JMP | BPF_JGE | BPF_K, 6, 0, hi)               # drop /
            code[6] = _bpf(BPF_LD | BPF_B | BPF_IND, 0, 0, TCP_FLAGS)
            code[7] = _bpf(BPF_JMP | BPF_JSET | BPF_K, 2, 0, TH_RST)          # -> accept
            code[8] = _bpf(BPF_ALU | BPF_AND | BPF_K, 0, 0, TH_SYN | TH_ACK)
            code[9] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, TH_SYN | TH_ACK)  # / drop
            code[10] = _bpf(BPF_RET | BPF_K, 0, 0, 0xFFFF)
            code[11] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[12] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            i = 13
        else:
            # IPv6 raw sockets deliver the segment from the TCP header on
            code[0] = _bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, TCP_DPORT)
            code[1] = _bpf(BPF_JMP | BPF_JGE | BPF_K, 0, 7, lo)               # / drop
            code[2] = _bpf(BPF_JMP | BPF_JGE | BPF_K, 6, 0, hi)               # drop /
            code[3] = _bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, TCP_FLAGS)
            code[4] = _bpf(BPF_JMP | BPF_JSET | BPF_K, 2, 0, TH_RST)          # -> accept
            code[5] = _bpf(BPF_ALU | BPF_AND | BPF_K, 0, 0, TH_SYN | TH_ACK)
            code[6] = _bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, TH_SYN | TH_ACK)  # / drop
            code[7] = _bpf(BPF_RET | BPF_K, 0, 0, 0xFFFF)
            code[8] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            code[9] = _bpf(BPF_RET | BPF_K, 0, 0, 0)
            i = 10
        prog.len = i
        prog.filter = code
        if setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0:
            _raise_oserror("setsockopt(SO_ATTACH_FILTER)")
        return 0

    # ------------------------------------------------------------ targets
    cdef int _check_port(self, long port) except -1:
        if not 1 <= port <= 65535:
            raise ValueError(f"TCP port {port} must be 1..65535")
        return 0

    cdef uint32_t _key_hash(self, uint32_t slot) noexcept nogil:
        return _addr_hash(self.addrs + <size_t>slot * self.addr_len, self.addr_len,
                          self.ports[slot])

    cdef int _grow_extra(self, uint32_t cap) except -1:
        if self.family != AF_INET:
            return 0
        cdef void *a = PyMem_RawRealloc(self.psum, <size_t>cap * sizeof(uint32_t))
        if a == NULL:
            raise MemoryError()
        self.psum = <uint32_t *>a
        return 0

    cdef int _added(self, uint32_t first, uint32_t count) except -1:
        # IPv4: the checksum's pseudo-header names the source address the kernel will
        # write, so each slot's is learnt now (connect() on a UDP socket: the kernel's
        # route lookup), remembered per destination /24
        cdef uint32_t s, src
        cdef uint8_t *dst
        cdef int was = self.bind_state
        if self.family != AF_INET:
            return 0
        with nogil:
            for s in range(first, first + count):
                dst = self.addrs + <size_t>s * 4
                if self.has_src_fixed:
                    memcpy(&src, self.src_fixed, 4)
                else:
                    src = self._source_of(dst)
                    if src != 0 and self.bind_state == 0:
                        self.bound_src, self.bind_state = src, 1
                    elif src != 0 and self.bind_state == 1 and src != self.bound_src:
                        self.bind_state = 2
                self.psum[s] = (csum_add(<uint8_t *>&src, 4, 0) + csum_add(dst, 4, 0)
                                + IPPROTO_TCP + TCP_SYN_LEN)
        if self.bind_state != was:
            self._bind_v4(self.bound_src if self.bind_state == 1 else 0)
        return 0

    cdef int _bind_v4(self, uint32_t src) except -1:
        """While every slot has the same source, the socket is bound to it: a raw TCP
        socket is handed a copy of every TCP packet of the host whose destination its
        bound address matches (raw(7)), and on loopback that is our own SYNs and our
        kernel's RSTs too, each cloned and run through the filter only to be dropped.
        Bound, it gets only what is addressed to its source. When a slot needs another
        source the socket goes back to the wildcard (0)."""
        cdef sockaddr_in sin
        memset(&sin, 0, sizeof(sin))
        sin.sin_family = AF_INET
        memcpy(&sin.sin_addr, &src, 4)
        if bind(self.fd, <sockaddr *>&sin, sizeof(sin)) != 0:
            _raise_oserror("bind(raw TCP socket) to its source")
        return 0

    cdef uint32_t _source_of(self, const uint8_t *dst) noexcept nogil:
        cdef uint32_t key = (rd32(dst) >> 8) + 1
        cdef uint32_t i = ((key * 0x9E3779B1U) >> 20) & (SRC_CACHE - 1)
        cdef sockaddr_in sin
        cdef socklen_t sl = sizeof(sin)
        if self.src_key[i] == key:
            return self.src_val[i]
        # dissolve the last lookup's association first: a UDP socket keeps the source
        # its first connect() gave it (the kernel sets the local address only while
        # unset), so without this every later lookup answered the first one's source
        memset(&sin, 0, sizeof(sin))
        sin.sin_family = AF_UNSPEC
        connect(self.route_fd, <sockaddr *>&sin, sizeof(sin))
        sin.sin_family = AF_INET
        sin.sin_port = 0x0900          # discard (9), network order; nothing is sent
        memcpy(&sin.sin_addr, dst, 4)
        if (connect(self.route_fd, <sockaddr *>&sin, sizeof(sin)) != 0 or
                getsockname(self.route_fd, <sockaddr *>&sin, &sl) != 0):
            return 0    # no route: the send fails and says why (EV_SEND_ERROR)
        self.src_key[i] = key
        memcpy(&self.src_val[i], &sin.sin_addr, 4)
        return self.src_val[i]

    # ------------------------------------------------------------ probes
    cdef void _build(self, uint8_t *pk, uint32_t s, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        cdef sockaddr_in *sin
        wr16(pk + TCP_SPORT, <uint16_t>(self.sport_base + (serial & (SPORT_SPAN - 1))))
        wr16(pk + TCP_DPORT, self.ports[s])
        wr32(pk + TCP_SEQ, _isn(self.k0, self.k1, s, serial))
        wr32(pk + TCP_ACK, 0)
        pk[TCP_OFF] = (TCP_SYN_LEN // 4) << 4
        pk[TCP_FLAGS] = TH_SYN
        wr16(pk + TCP_WIN, 64240)
        wr16(pk + TCP_CSUM, 0)
        wr16(pk + TCP_URG, 0)
        pk[20] = 2              # MSS
        pk[21] = 4
        wr16(pk + 22, 1460)
        if self.family == AF_INET:
            wr16(pk + TCP_CSUM, csum_fold(csum_add(pk, TCP_SYN_LEN, self.psum[s])))
            sin = <sockaddr_in *>name
            sin.sin_family = AF_INET
            memcpy(&sin.sin_addr, self.addrs + <size_t>s * 4, 4)
        else:
            name.sin6_family = AF_INET6
            memcpy(&name.sin6_addr, self.addrs + <size_t>s * 16, 16)

    cdef int _find(self, const uint8_t *addr, uint16_t port, uint16_t our_port, uint32_t isn,
                   uint32_t *slot, uint32_t *serial) noexcept nogil:
        """The probe an answer from ``addr``:``port`` to ``our_port`` acknowledging
        (or quoting, for ICMP errors) cookie ``isn`` is for: 1 found; 0 from a target
        but for none of its probes; -1 from no target."""
        cdef uint32_t i, s, ns, low, ser
        cdef int known = -1
        if self.n == 0 or (not self.aidx_valid and not self._build_aidx()):
            return -1
        low = (<uint32_t>our_port - <uint32_t>self.sport_base) & (SPORT_SPAN - 1)
        i = _addr_hash(addr, self.addr_len, port) & (self.aidx_cap - 1)
        while self.aidx[i] != 0:
            s = self.aidx[i] - 1
            i = (i + 1) & (self.aidx_cap - 1)
            if self.ports[s] != port or memcmp(self.addrs + <size_t>s * self.addr_len, addr,
                                               self.addr_len) != 0:
                continue
            known = 0
            ns = self.stats[s].next_serial
            if ns == 0:
                continue
            # the newest serial sent with these low bits (the window is far narrower)
            ser = ns - 1 - ((ns - 1 - low) & (SPORT_SPAN - 1))
            if ser < ns and _isn(self.k0, self.k1, s, ser) == isn:
                slot[0] = s
                serial[0] = ser
                return 1
        return known

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
        cdef const uint8_t *tcp = buf
        cdef const uint8_t *src
        cdef Py_ssize_t ihl = 0
        cdef uint16_t dport
        cdef uint8_t flags
        cdef uint32_t slot, serial
        cdef int found
        if self.family == AF_INET:
            if n < IP4_MIN_HDR or (buf[0] >> 4) != 4:
                self.c_malformed += 1
                return
            ihl = (buf[0] & 0x0F) * 4
            if ihl < IP4_MIN_HDR or buf[IP4_PROTO_OFFSET] != IPPROTO_TCP:
                self.c_malformed += 1
                return
            ttl = buf[IP4_TTL_OFFSET]
            src = buf + IP4_SRC_OFFSET
            tcp = buf + ihl
        else:
            src = self._src_of(h)
        if n - ihl < 20:
            self.c_malformed += 1
            return
        dport = rd16(tcp + TCP_DPORT)
        flags = tcp[TCP_FLAGS]
        if dport < self.sport_base or dport >= self.sport_base + SPORT_SPAN:
            self.c_foreign += 1     # not to our ports (the filter is off, or raced)
            self.c_f_ident += 1
            return
        if not (flags & TH_ACK) or not (flags & (TH_SYN | TH_RST)) or (flags & TH_SYN and flags & TH_RST):
            # not an answer to a SYN: a SYN, a bare RST (it acknowledges nothing, so
            # nothing ties it to a probe), data
            self.c_foreign += 1
            self.c_f_type += 1
            return
        found = self._find(src, rd16(tcp + TCP_SPORT), dport, rd32(tcp + TCP_ACK) - 1,
                           &slot, &serial)
        if found < 0:
            self.c_foreign += 1     # from an address:port that is no target
            self.c_f_source += 1
            return
        if found == 0:
            self.c_foreign += 1     # acknowledges no cookie of that target's
            self.c_f_cookie += 1
            return
        if not self.stats[slot].active:
            self.c_stale += 1
            return
        self._on_reply(slot, serial, t_rx, ttl, C_EV_REPLY if flags & TH_SYN else C_EV_CLOSED)

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                       sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        # IP_RECVERR on a raw socket: the data is the quoted segment from its TCP
        # header on (RFC 792 guarantees its first 8 bytes: ports and sequence number),
        # the name the probe's destination, the offender the router that reported it
        cdef uint32_t slot, serial
        cdef int found
        cdef const uint8_t *router
        cdef void *off
        cdef uint16_t sport
        if ee == NULL or (ee.ee_origin != SO_EE_ORIGIN_ICMP and ee.ee_origin != SO_EE_ORIGIN_ICMP6):
            self.c_foreign += 1     # a local error report (e.g. EMSGSIZE), not from the network
            return
        if n < 8:
            self.c_unattributed += 1
            return
        sport = rd16(buf + TCP_SPORT)
        if sport < self.sport_base or sport >= self.sport_base + SPORT_SPAN:
            self.c_unattributed += 1
            return
        found = self._find(self._src_of(h), rd16(buf + TCP_DPORT), sport, rd32(buf + TCP_SEQ),
                           &slot, &serial)
        if found <= 0:
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


def tcp_isn(key, slot, serial):
    """The initial sequence number a TcpSocket with cookie ``key`` gives probe
    ``serial`` of ``slot`` (its answer acknowledges it + 1; tests forge with it)."""
    k0, k1 = _key_words(key)
    return _isn(k0, k1, <uint32_t>_arg("slot", slot, 0, 0xFFFFFFFF),
                <uint32_t>_arg("serial", serial, 0, 0xFFFFFFFF))


TCP_SPORT_SPAN = SPORT_SPAN
