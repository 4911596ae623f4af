# ---------------------------------------------------------------- UdpSocket: UDP probes
#
# One unprivileged SOCK_DGRAM socket, unconnected, bound to one local port: each probe
# is a datagram to its slot's address:port (sendmmsg with a destination per message).
# What answers it:
#   - an application reply: a datagram from that address:port (normal queue) -> open
#   - the host's ICMP port unreachable (v4 3/3, v6 1/4) from the target's own address
#     -> closed (an answer: the host is up, with an RTT); IP_RECVERR puts it on the
#     error queue with the probe's destination as msg_name and the probe's payload as
#     the data, so it names its probe exactly
#   - any other ICMP error (or a port unreachable from a router / firewall in the
#     path) -> unreachable; silence -> open|filtered (a UDP service need not answer)
#
# The payload is keyed per probe, in the form the port's service answers to and
# echoes back (payloads="auto"; payloads="cookie": the probe header everywhere):
#   53  DNS query for "." NS, no recursion (17 bytes): ID = the slot's keyed base (16
#       bits of its cookie) + the serial, mod 2^16, so the probes of a slot in flight
#       (at most 64 consecutive serials) never share an ID and a reply names exactly
#       one of them; a reply must be a response (QR) with the ID of a probe in the
#       slot's window
#   123 NTP client packet, mode 3 (48 bytes): transmit timestamp = serial, 32 bits of
#       the cookie; the server returns it as its reply's origin timestamp
#   any other port: the 16-byte probe header (slot, serial, SipHash cookie), which an
#       echo service returns; a reply that does not carry it is still an answer from
#       the port, attributed to the slot's oldest outstanding probe and counted in
#       totals()["unkeyed"] (as is an ICMP error quoting too little of the probe)

DEF UDP_PAY_MAX = 48          # the longest payload (NTP); every message slot is this big
DEF PAY_COOKIE = 0
DEF PAY_DNS = 1
DEF PAY_NTP = 2
DEF DNS_LEN = 17              # header (12) + root name (1) + type (2) + class (2)
DEF DNS_HDR = 12
DEF DNS_QR = 0x80             # in the flags' first byte
DEF NTP_LEN = 48
DEF NTP_ORIGIN = 24           # a server reply's copy of the client's transmit timestamp
DEF NTP_TRANSMIT = 40
DEF NTP_CLIENT = 0x23         # LI 0, version 4, mode 3 (client)
DEF NTP_MODE_SERVER = 4


cdef inline uint16_t _dns_base(uint64_t k0, uint64_t k1, uint32_t slot) noexcept nogil:
    return <uint16_t>(cookie_of(k0, k1, slot, 0) >> 48)


cdef inline uint16_t _dns_id(uint64_t k0, uint64_t k1, uint32_t slot, uint32_t serial) noexcept nogil:
    # keyed per slot, sequential per probe: 16 bits of the cookie would let two probes
    # in flight share an ID (a birthday collision, ~1 in 1,000 sweeps at window 4), and
    # a reply to one would settle the other
    return <uint16_t>(_dns_base(k0, k1, slot) + (serial & 0xFFFF))


cdef inline uint32_t _ntp_key(uint64_t k0, uint64_t k1, uint32_t slot, uint32_t serial) noexcept nogil:
    return <uint32_t>(cookie_of(k0, k1, slot, serial) & 0xFFFFFFFFULL)


cdef int _udp_payload(uint8_t *pk, uint64_t k0, uint64_t k1, int kind, uint32_t s,
                      uint32_t serial) noexcept nogil:
    """Write the payload of probe ``serial`` of slot ``s`` (a PAY_* ``kind``) at
    ``pk``; return its length."""
    if kind == PAY_DNS:
        memset(pk, 0, DNS_LEN)
        wr16(pk, _dns_id(k0, k1, s, serial))
        # flags 0: a standard query, recursion not desired (no resolver is asked to go
        # out on our behalf); one question: ". IN NS"
        wr16(pk + 4, 1)
        pk[DNS_HDR] = 0
        wr16(pk + DNS_HDR + 1, 2)
        wr16(pk + DNS_HDR + 3, 1)
        return DNS_LEN
    if kind == PAY_NTP:
        memset(pk, 0, NTP_LEN)
        pk[0] = NTP_CLIENT
        wr32(pk + NTP_TRANSMIT, serial)
        wr32(pk + NTP_TRANSMIT + 4, _ntp_key(k0, k1, s, serial))
        return NTP_LEN
    write_probe_header(pk, k0, k1, s, serial)
    return PROBE_HDR


cdef class UdpSocket(ProbeSocket):
    """UDP probes to any number of address:port slots on one unprivileged datagram
    socket: an application reply is EV_REPLY ("open"), the host's ICMP port
    unreachable EV_CLOSED ("closed"), any other ICMP error EV_UNREACHABLE /
    EV_TIME_EXCEEDED ("unreachable"), silence EV_TIMEOUT ("open|filtered"). Same loop,
    kernel timestamps, log and counters as IcmpSocket and TcpSocket; in totals(),
    unkeyed counts answers attributed to a slot's oldest outstanding probe because
    they carry no key, foreign_cookie replies from a target whose key is wrong,
    foreign_source replies from an address:port that is no target (or with another
    target's cookie), errors_unattributed ICMP errors quoting no probe of ours."""

    cdef readonly int sport       # the local port the probes leave from
    cdef readonly object source   # the local address bound (None: any)
    cdef readonly str payloads    # "auto" (per port) or "cookie"
    cdef bint auto_payloads
    cdef uint64_t c_unkeyed

    def __init__(self, int family=AF_INET, *, source=None, ttl=None, tos=None,
                 int rcvbuf_bytes=0, int batch_size=64, int window=1,
                 Py_ssize_t log_max=4_000_000, str timestamps="kernel", int sport=0,
                 str payloads="auto"):
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if not 0 <= sport <= 65535:
            raise ValueError(f"sport {sport} must be 0..65535 (0: a free port the kernel picks)")
        if payloads not in ("auto", "cookie"):
            raise ValueError(f"payloads must be 'auto' (per port: DNS to 53, NTP to 123) "
                             f"or 'cookie', not {payloads!r}")
        self._setup(family, "dgram", UDP_PAY_MAX, batch_size, window, log_max, timestamps)
        self.row_proto = IPPROTO_UDP
        self.payloads = payloads
        self.auto_payloads = payloads == "auto"
        self.source = source
        self._open(ttl, tos, rcvbuf_bytes, sport)

    def __repr__(self):
        fam = "IPv4" if self.family == AF_INET else "IPv6"
        return f"<UdpSocket {fam} port={self.sport} slots={self.n} fd={self.fd}>"

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
            # IPv6 targets only: no v4-mapped traffic reaches this socket
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
            _raise_oserror(f"bind(UDP socket, {self.source or 'any'} port {sport})")
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
        self._flush_queue()     # nothing was sent: nothing queued can be an answer
        return 0

    # ------------------------------------------------------------ targets
    cdef int _check_port(self, long port) except -1:
        if not 1 <= port <= 65535:
            raise ValueError(f"UDP port {port} must be 1..65535")
        return 0

    cdef uint32_t _key_hash(self, uint32_t slot) noexcept nogil:
        return _addr_hash(self.addrs + <size_t>slot * self.addr_len, self.addr_len,
                          self.ports[slot])

    cdef inline int _pay_kind(self, uint16_t port) noexcept nogil:
        if self.auto_payloads:
            if port == 53:
                return PAY_DNS
            if port == 123:
                return PAY_NTP
        return PAY_COOKIE

    # ------------------------------------------------------------ probes
    cdef void _build(self, uint8_t *pk, uint32_t s, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        cdef size_t i = <size_t>(pk - self.tx_pkts) // UDP_PAY_MAX
        cdef sockaddr_in *sin
        self.tx_iov[i].iov_len = _udp_payload(pk, self.k0, self.k1,
                                              self._pay_kind(self.ports[s]), s, serial)
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
        # sin_port and sin6_port sit at the same offset
        return rd16(<const uint8_t *>&(<sockaddr_in6 *>h.msg_name).sin6_port)

    cdef uint32_t _oldest(self, uint32_t s) noexcept nogil:
        """The slot's oldest outstanding probe; none: its newest (a second answer)."""
        cdef Probe *pr = &self.probes[<size_t>s * self.window]
        cdef uint32_t w, best = 0, ns = self.stats[s].next_serial
        cdef bint any_out = False
        for w in range(self.window):
            if pr[w].state == ST_OUT and (not any_out or pr[w].serial < best):
                best = pr[w].serial
                any_out = True
        if any_out:
            return best
        return ns - 1 if ns else 0

    cdef int _window_dns(self, uint32_t s, uint16_t qid, uint32_t *serial) noexcept nogil:
        """The probe of slot ``s`` in its window (its last ``window`` serials) whose
        query had ID ``qid``: 1 found (at most one can be: their IDs are consecutive
        serials plus the slot's base), -1 none (a foreign ID)."""
        cdef Probe *pr = &self.probes[<size_t>s * self.window]
        cdef uint32_t w, ns = self.stats[s].next_serial
        cdef uint16_t low = <uint16_t>(qid - _dns_base(self.k0, self.k1, s))
        for w in range(self.window):
            if (pr[w].state != ST_EMPTY and pr[w].serial < ns and
                    <uint16_t>(pr[w].serial & 0xFFFF) == low):
                serial[0] = pr[w].serial
                return 1
        return -1

    cdef int _keyed(self, uint32_t s, const uint8_t *buf, Py_ssize_t n, bint quoted,
                    uint32_t *serial) noexcept nogil:
        """Which probe of slot ``s`` a reply (or, ``quoted``, an ICMP error's quote of
        the probe) names: 1 found; 0 it carries no key (unkeyed); -1 its key is not
        one of ours. The probe header itself was checked by the caller."""
        cdef int kind = self._pay_kind(self.ports[s])
        cdef const uint8_t *p
        cdef uint32_t ser
        if kind == PAY_DNS:
            if quoted:
                if n < 2:
                    return 0
            elif n < DNS_HDR or not (buf[2] & DNS_QR):
                return -1       # port 53 answered, but not as DNS to our query
            return self._window_dns(s, rd16(buf), serial)
        if kind == PAY_NTP:
            if quoted:
                if n < NTP_LEN:
                    return 0
                p = buf + NTP_TRANSMIT
            elif n < NTP_LEN or (buf[0] & 7) != NTP_MODE_SERVER:
                return -1
            else:
                p = buf + NTP_ORIGIN
            ser = rd32(p)
            if ser < self.stats[s].next_serial and rd32(p + 4) == _ntp_key(self.k0, self.k1, s, ser):
                serial[0] = ser
                return 1
            return -1
        # the probe header: a quote long enough to hold it must be it (our own
        # datagram); a service's own reply is an answer all the same, unkeyed
        if quoted and n >= PROBE_HDR:
            return -1
        return 0

    cdef int _attribute(self, const uint8_t *addr, uint16_t port, const uint8_t *buf,
                        Py_ssize_t n, bint quoted, uint32_t *slot,
                        uint32_t *serial) noexcept nogil:
        """The probe a datagram from (or an ICMP error about a probe to) ``addr``:
        ``port`` answers: 1 named by its key; 2 unkeyed (the slot's oldest
        outstanding probe); 0 from a target, but with a key of none of its probes;
        -1 from no target, or carrying another target's cookie."""
        cdef uint32_t i, s, hs, hser, unkeyed = 0
        cdef bint any_unkeyed = False
        cdef int known = -1, r
        if self.n == 0 or (not self.aidx_valid and not self._build_aidx()):
            return -1
        if read_probe_header(buf, n, self.k0, self.k1, &hs, &hser):
            # the cookie names its slot outright: it must be the slot of this address:port
            if (hs < self.n and self.stats[hs].active and self.ports[hs] == port and
                    self._pay_kind(port) == PAY_COOKIE and
                    memcmp(self.addrs + <size_t>hs * self.addr_len, addr, self.addr_len) == 0):
                slot[0] = hs
                serial[0] = hser
                return 1
            return -1
        i = _addr_hash(addr, self.addr_len, port) & (self.aidx_cap - 1)
        while self.aidx[i] != 0:
            s = self.aidx[i] - 1
            i = (i + 1) & (self.aidx_cap - 1)
            if self.ports[s] != port or memcmp(self.addrs + <size_t>s * self.addr_len, addr,
                                               self.addr_len) != 0:
                continue
            known = 0
            r = self._keyed(s, buf, n, quoted, serial)
            if r == 1:
                slot[0] = s
                return 1
            if r == 0 and not any_unkeyed:
                unkeyed = s
                any_unkeyed = True
        if any_unkeyed:
            slot[0] = unkeyed
            serial[0] = self._oldest(unkeyed)
            return 2
        return known

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
        cdef uint32_t slot, serial
        cdef int found = self._attribute(self._src_of(h), self._port_of(h), buf, n, False,
                                         &slot, &serial)
        if found < 0:
            self.c_foreign += 1     # from an address:port that is no target
            self.c_f_source += 1
            return
        if found == 0:
            self.c_foreign += 1     # from a target, keyed for none of its probes
            self.c_f_cookie += 1
            return
        if not self.stats[slot].active:
            self.c_stale += 1
            return
        if found == 2:
            self.c_unkeyed += 1
        self._on_reply(slot, serial, t_rx, ttl, C_EV_REPLY)

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                       sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        # IP_RECVERR on a UDP socket (ip(7)): the data is the probe's payload as
        # quoted, the name its destination address and port, the offender who sent
        # the error; the RX timestamp is the ICMP error's arrival
        cdef uint32_t slot, serial
        cdef int found
        cdef const uint8_t *router
        cdef void *off
        cdef bint port_unreach
        if ee == NULL or (ee.ee_origin != SO_EE_ORIGIN_ICMP and ee.ee_origin != SO_EE_ORIGIN_ICMP6):
            self.c_foreign += 1     # a local error report (e.g. EMSGSIZE), not from the network
            return
        found = self._attribute(self._src_of(h), self._port_of(h), buf, n, True, &slot, &serial)
        if found <= 0:
            self.c_unattributed += 1
            return
        if not self.stats[slot].active:
            self.c_stale += 1
            return
        if found == 2:
            self.c_unkeyed += 1
        off = SO_EE_OFFENDER(ee)
        if self.family == AF_INET:
            router = <const uint8_t *>&(<sockaddr_in *>off).sin_addr
            port_unreach = ee.ee_type == ICMP_DEST_UNREACH and ee.ee_code == 3
        else:
            router = <const uint8_t *>&(<sockaddr_in6 *>off).sin6_addr
            port_unreach = ee.ee_type == ICMP6_DST_UNREACH and ee.ee_code == 4
        if port_unreach and memcmp(router, self.addrs + <size_t>slot * self.addr_len,
                                   self.addr_len) == 0:
            # the host itself says no socket has that port: it is up, the port closed
            self._on_reply(slot, serial, t_rx, -1, C_EV_CLOSED)
        else:
            # a router or firewall on the way (or another ICMP error): unreachable
            self._on_error(slot, serial, ee.ee_type, ee.ee_code, router, t_rx)

    # ------------------------------------------------------------ counters
    def totals(self):
        """ProbeSocket.totals() and ``unkeyed``: answers without a key of ours (a
        service's own reply, an ICMP error quoting too little), each attributed to
        its slot's oldest outstanding probe."""
        t = ProbeSocket.totals(self)
        t["unkeyed"] = self.c_unkeyed
        return t

    def reset_stats(self):
        ProbeSocket.reset_stats(self)
        self.c_unkeyed = 0


def udp_payload(key, slot, serial, port, payloads="auto"):
    """The payload a UdpSocket with cookie ``key`` sends as probe ``serial`` of
    ``slot`` to ``port`` (tests forge answers with it)."""
    if payloads not in ("auto", "cookie"):
        raise ValueError(f"payloads must be 'auto' or 'cookie', not {payloads!r}")
    k0, k1 = _key_words(key)
    cdef uint8_t pk[UDP_PAY_MAX]
    cdef int p = _arg("port", port, 1, 65535)
    cdef int kind = (PAY_DNS if payloads == "auto" and p == 53 else
                     PAY_NTP if payloads == "auto" and p == 123 else PAY_COOKIE)
    cdef int n = _udp_payload(pk, k0, k1, kind, <uint32_t>_arg("slot", slot, 0, 0xFFFFFFFF),
                              <uint32_t>_arg("serial", serial, 0, 0xFFFFFFFF))
    return PyBytes_FromStringAndSize(<char *>pk, n)
