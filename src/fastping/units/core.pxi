# ---------------------------------------------------------------- ProbeSocket: the loop
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
    uint16_t mtu                 # the MTU the last fragmentation-needed / packet-too-big named
    uint8_t router[16]           # who sent the last ICMP error
    uint32_t closed              # answers that said "port closed" (TCP RST): in received too


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


cdef class ProbeSocket:
    """The loop every probe kind shares: one socket multiplexing any number of target
    slots, batched sendmmsg/recvmmsg with the GIL released, kernel timestamps, pacing,
    the per-slot tables, the outcome log and the counters. A probe kind (IcmpSocket,
    TcpSocket) is a subclass that opens its socket and fills in four hooks: _build
    (one probe into the send batch), _on_packet (one packet from the normal queue),
    _on_errq (one ICMP error from the error queue) and _key_hash (what identifies a
    target in the packets that answer it). See ``_icmp.pyi``."""

    cdef readonly int family
    cdef readonly str kind
    cdef readonly int batch_size
    cdef readonly int window
    cdef readonly bytes key      # the cookie key (tests forge packets with it)
    cdef int fd
    cdef int busy                # a method is using fd with the GIL released (_enter/_leave)
    cdef bint closing            # close() came while busy: the loop winds down, _leave closes
    cdef bint raw
    cdef int addr_len            # 4 or 16
    cdef uint8_t row_proto       # what export_rows says the ports are (SlotRow.proto)
    cdef int plen                # bytes of one probe as handed to the kernel
    cdef uint64_t k0, k1
    cdef int64_t timeout_ns      # replies slower than this count as late (0: no limit)
    # targets
    cdef uint8_t *addrs          # n_cap * addr_len
    cdef uint16_t *ports         # n_cap, NULL for kinds without ports (ICMP)
    cdef SlotStats *stats
    cdef Probe *probes           # n_cap * window
    cdef SlotRare *rare          # rare_n records, each owned by one slot (SlotStats.rare)
    cdef uint32_t rare_n, rare_cap
    cdef SlotRecent *recent      # NULL until needed, then n_cap (see SlotRecent)
    # per-slot RTT histogram (set_rtt_buckets; NULL: off): n_cap rows of hist_n + 2
    # uint64: the replies per bucket (first bound >= RTT; the last one: above all),
    # then the sum of their RTTs in ns. Metrics read it at scrape time (slot_buckets).
    cdef uint64_t *hist
    cdef int64_t *hist_le        # hist_n upper bounds in ns, strictly increasing
    cdef uint32_t hist_n
    cdef bint need_recent        # make `recent` on the next reply (False in sweep(count=1))
    cdef int64_t *slot_tmo_ns    # NULL until a slot gets its own timeout, then n_cap (0: none)
    cdef uint32_t n, n_cap
    cdef uint32_t n_seen         # slots below it were initialised once (their SlotStats.rare is valid)
    cdef list free_slots
    # target key (_key_hash: the address, with the port for kinds that have one) ->
    # slots, built when an answer names its target only by that key; rebuilt after changes
    cdef uint32_t *aidx          # aidx_cap entries: slot + 1, 0 = empty (open addressing)
    cdef uint32_t aidx_cap
    cdef bint aidx_valid
    # batch buffers
    cdef uint8_t *tx_pkts
    cdef uint32_t *tx_slot       # batch_size: the slot and serial of each probe built
    cdef uint32_t *tx_serial
    cdef sockaddr_in6 *tx_names  # big enough for both families
    cdef iovec *tx_iov
    cdef mmsghdr *tx_msgs
    cdef RxSet rx                # the normal queue's batch
    cdef RxSet eq                # the error queue's (TX timestamps, dgram ICMP errors)
    cdef int rx_batch
    # send timestamps
    cdef uint8_t ts_mode         # TS_*
    cdef bint ts_rx_kernel       # receive times come from SCM_TIMESTAMPING (else SCM_TIMESTAMPNS)
    cdef bint ts_id_checked      # a send with SCM_TS_OPT_ID succeeded (the kernel takes it)
    cdef uint8_t *tx_ctrl        # batch_size * tx_cstride: each message's SCM_TS_OPT_ID,
    #                              then tx_cextra bytes of the kind's own control messages
    cdef int tx_cextra           # set by a kind before _setup (TraceSocket: the hop limit)
    cdef int tx_cstride
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
    cdef uint64_t c_closed           # answers that said "port closed" (in c_received too)
    cdef uint64_t c_stats_lost       # per-slot figures not kept: no memory for a SlotRare/SlotRecent
    cdef uint64_t c_tx_stamps, c_tx_unmatched, c_tx_late, c_timed_kernel, c_timed_user, c_rx_user
    cdef int64_t c_outstanding
    cdef int64_t t_send_ns, t_total_ns

    def __cinit__(self, *args, **kwargs):
        self.fd = -1

    cdef int _setup(self, int family, str kind, int plen, int batch_size, int window,
                    Py_ssize_t log_max, str timestamps) except -1:
        """What every kind's constructor does first: check the shared arguments, then
        make the tables and batch buffers for probes of ``plen`` bytes."""
        if self.tx_pkts != NULL:
            raise RuntimeError(f"{type(self).__name__} is already initialised")
        if family != AF_INET and family != AF_INET6:
            raise ValueError(f"family must be socket.AF_INET or socket.AF_INET6, not {family}")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size {batch_size} must be 1..{MAX_BATCH}")
        if not 1 <= window <= 64:
            raise ValueError(f"window {window} must be 1..64 outstanding probes per target")
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
        self.plen = plen
        self.batch_size = batch_size
        self.window = window
        self.addr_len = 4 if family == AF_INET else 16
        self.free_slots = []
        self.need_recent = True
        self.key = _os.urandom(16)
        self.k0, self.k1 = _key_words(self.key)
        self._alloc_buffers()
        return 0

    cdef int _alloc_buffers(self) except -1:
        cdef int B = self.batch_size
        cdef int plen = self.plen
        self.rx_batch = 256 if B < 256 else B
        self.tx_pkts = <uint8_t *>PyMem_RawMalloc(<size_t>B * plen)
        self.tx_slot = <uint32_t *>PyMem_RawCalloc(B, sizeof(uint32_t))
        self.tx_serial = <uint32_t *>PyMem_RawCalloc(B, sizeof(uint32_t))
        self.tx_names = <sockaddr_in6 *>PyMem_RawMalloc(B * sizeof(sockaddr_in6))
        self.tx_iov = <iovec *>PyMem_RawMalloc(B * sizeof(iovec))
        self.tx_msgs = <mmsghdr *>PyMem_RawMalloc(B * sizeof(mmsghdr))
        self.tx_cstride = TX_CTRL + self.tx_cextra
        self.tx_ctrl = <uint8_t *>PyMem_RawCalloc(B, self.tx_cstride)
        self.txr = <TxRec *>PyMem_RawCalloc(TX_RING, sizeof(TxRec))
        self.lat_hist = <uint64_t *>PyMem_RawCalloc(LAT_BUCKETS, sizeof(uint64_t))
        cdef int R = self.rx_batch
        cdef int rxlen = RX_BUF if plen + 100 < RX_BUF else plen + 640
        _alloc_rxset(&self.rx, R, rxlen)
        _alloc_rxset(&self.eq, R, rxlen)
        if (self.tx_pkts == NULL or self.tx_names == NULL or self.tx_iov == NULL or
                self.tx_msgs == NULL or self.tx_ctrl == NULL or self.txr == NULL or
                self.tx_slot == NULL or self.tx_serial == NULL or
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
            self.tx_iov[i].iov_base = self.tx_pkts + <size_t>i * plen
            self.tx_iov[i].iov_len = plen
            self.tx_msgs[i].msg_hdr.msg_name = &self.tx_names[i]
            self.tx_msgs[i].msg_hdr.msg_namelen = (
                sizeof(sockaddr_in) if self.family == AF_INET else sizeof(sockaddr_in6))
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[i]
            self.tx_msgs[i].msg_hdr.msg_iovlen = 1
            # SCM_TS_OPT_ID: the key the kernel reports this message's TX timestamp with
            # (written per probe in _send_slots; attached once timestamping is on)
            c = <cmsghdr *>(self.tx_ctrl + <size_t>i * self.tx_cstride)
            c.cmsg_level = SOL_SOCKET
            c.cmsg_type = SCM_TS_OPT_ID
            c.cmsg_len = CMSG_LEN(4)
        if self.tx_cextra:
            self._tx_control(False)     # the kind's own control messages, always sent
        return 0

    # ------------------------------------------------------------ the kind's hooks
    cdef void _build(self, uint8_t *pk, uint32_t slot, uint32_t serial,
                     sockaddr_in6 *name) noexcept nogil:
        """Write the probe ``serial`` of ``slot`` at ``pk`` (plen bytes) and its
        destination into ``name``."""
        pass

    cdef void _on_packet(self, const uint8_t *buf, Py_ssize_t n, msghdr *h, int64_t t_rx,
                         int ttl) noexcept nogil:
        """One packet from the normal queue (``ttl`` from its control messages, -1
        unknown): attribute it and settle its probe, or count why not."""
        self.c_foreign += 1

    cdef void _on_errq(self, const uint8_t *buf, Py_ssize_t n, msghdr *h,
                       sock_extended_err *ee, int64_t t_rx) noexcept nogil:
        """One message from the error queue that is not a TX timestamp: an ICMP error
        (IP_RECVERR) about a probe, its data the probe as sent."""
        self.c_foreign += 1

    cdef uint32_t _key_hash(self, uint32_t slot) noexcept nogil:
        """Hash of what answers name ``slot`` by (its address; with its port)."""
        return _addr_hash(self.addrs + <size_t>slot * self.addr_len, self.addr_len, 0)

    cdef int _grow_extra(self, uint32_t cap) except -1:
        """Grow the kind's own per-slot columns to ``cap`` slots."""
        return 0

    cdef int _added(self, uint32_t first, uint32_t count) except -1:
        """Slots [first, first + count) were just given their address and port."""
        return 0

    cdef bint _stale_send_error(self, int err, int tries) noexcept nogil:
        """A send failed with ``err`` (``tries`` times for this probe already): True
        when that error may not be the send's own but a pending socket error it
        consumed, so the probe is to be sent again. On a datagram socket (UDP, ICMP
        "ping") with IP_RECVERR each ICMP error also sets sk_err, and the next send
        fails with it once whatever its destination (sock_alloc_send_skb checks it;
        a raw socket's send does not). Reading the error queue clears it; a real
        error of this send comes back every time and counts after a few tries."""
        if self.raw or tries >= STALE_SEND_TRIES:
            return False
        if (err != ECONNREFUSED and err != EHOSTUNREACH and err != ENETUNREACH and
                err != EPROTO and err != EHOSTDOWN and err != ENONET and err != EMSGSIZE and
                err != ENOPROTOOPT and err != EOPNOTSUPP):
            return False
        self._drain_errq()
        return True

    cdef int _check_port(self, long port) except -1:
        """Refuse a port this kind cannot use (ICMP has none: 0 only)."""
        if port != 0:
            raise ValueError(f"{type(self).__name__} targets have no port (got {port})")
        return 0

    cdef void _tx_control(self, bint on) noexcept nogil:
        """Attach (or detach) each message's SCM_TS_OPT_ID control message; the kind's
        own (tx_cextra bytes after it) stay attached either way."""
        cdef int i
        cdef size_t skip = 0 if on else TX_CTRL
        cdef size_t ln = (TX_CTRL if on else 0) + self.tx_cextra
        for i in range(self.batch_size):
            self.tx_msgs[i].msg_hdr.msg_control = (
                (self.tx_ctrl + <size_t>i * self.tx_cstride + skip) if ln else NULL)
            self.tx_msgs[i].msg_hdr.msg_controllen = ln

    cdef inline uint8_t *_kind_ctrl(self, const uint8_t *pk) noexcept nogil:
        """The kind's own control bytes (tx_cextra) of the message whose packet is
        being built at ``pk`` (for _build)."""
        return (self.tx_ctrl + <size_t>((pk - self.tx_pkts) // self.plen) * self.tx_cstride
                + TX_CTRL)

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

    cdef int _flush_queue(self) except -1:
        cdef uint8_t scratch[2048]
        cdef int guard = 0
        while guard < 1000000 and recv(self.fd, scratch, sizeof(scratch), MSG_DONTWAIT) >= 0:
            guard += 1
        return 0

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)
        PyMem_RawFree(self.addrs)
        PyMem_RawFree(self.ports)
        PyMem_RawFree(self.tx_slot)
        PyMem_RawFree(self.tx_serial)
        PyMem_RawFree(self.stats)
        PyMem_RawFree(self.probes)
        PyMem_RawFree(self.rare)
        PyMem_RawFree(self.recent)
        PyMem_RawFree(self.hist)
        PyMem_RawFree(self.hist_le)
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
            raise ValueError(f"I/O on a closed {type(self).__name__}")
        if self.busy:
            raise RuntimeError(f"the {type(self).__name__} is in use by another thread: use one socket "
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
        return f"<{type(self).__name__} {fam} {self.kind} slots={self.n} fd={self.fd}>"

    cdef int _check_open(self) except -1:
        if self.fd < 0:
            raise ValueError(f"I/O on a closed {type(self).__name__}")
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
            "rtt_buckets": n * self._hist_row() * sizeof(uint64_t) if self.hist != NULL else 0,
            "timeouts": n * sizeof(int64_t) if self.slot_tmo_ns != NULL else 0,
            "address_index": <size_t>self.aidx_cap * sizeof(uint32_t),
            "log": <size_t>self.log_cap * sizeof(LogRec),
            "events": <size_t>self.ev_cap * sizeof(Event),
            "buffers": ring + <size_t>self.batch_size * (
                self.plen + sizeof(sockaddr_in6) + sizeof(iovec) + sizeof(mmsghdr)
                + 2 * sizeof(uint32_t)),
            "ports": n * sizeof(uint16_t) if self.ports != NULL else 0,
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
        if self.ports != NULL:
            a = PyMem_RawRealloc(self.ports, <size_t>cap * sizeof(uint16_t))
            if a == NULL:
                raise MemoryError()
            self.ports = <uint16_t *>a
        if self.recent != NULL:
            a = PyMem_RawRealloc(self.recent, <size_t>cap * sizeof(SlotRecent))
            if a == NULL:
                raise MemoryError()
            self.recent = <SlotRecent *>a
        if self.hist != NULL:
            a = PyMem_RawRealloc(self.hist, <size_t>cap * self._hist_row() * sizeof(uint64_t))
            if a == NULL:
                raise MemoryError()
            self.hist = <uint64_t *>a
        self.n_cap = cap
        self._grow_extra(cap)
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
        if self.hist != NULL:
            memset(&self.hist[<size_t>s * self._hist_row()], 0,
                   self._hist_row() * sizeof(uint64_t))

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

    def set_targets(self, addresses, ports=None):
        """Replace all slots with numeric ``addresses`` of this family (and ``ports``,
        for kinds that have them)."""
        self.clear_targets()
        self.append_targets(addresses, ports)

    def append_targets(self, addresses, ports=None):
        """Append slots for numeric ``addresses`` (``ports``: one per address, or one
        int for all, for kinds that have ports); return the first new slot."""
        addrs = list(addresses)
        if ports is None or isinstance(ports, int):
            plist = [ports or 0] * len(addrs)
        else:
            plist = list(ports)
            if len(plist) != len(addrs):
                raise ValueError(f"{len(addrs)} addresses but {len(plist)} ports")
        for pt in set(plist):
            self._check_port(pt)
        cdef uint32_t first = self.n
        self._grow(self.n + len(addrs))
        cdef uint32_t s
        for a, pt in zip(addrs, plist):
            s = self.n
            self._pton(a, self.addrs + <size_t>s * self.addr_len)
            self._init_slot(s)
            self._put_port(s, pt)
            self.n += 1
        self._added(first, self.n - first)
        return first

    def append_range_v4(self, first, count, long port=0):
        """Append ``count`` consecutive IPv4 addresses from ``first`` (host-order int),
        all on ``port`` (kinds with ports), expanded here with no Python object per
        target; return the first new slot."""
        if self.family != AF_INET:
            raise ValueError("append_range_v4 needs an AF_INET socket")
        if count < 0 or first < 0 or first + count > 0x100000000:
            raise ValueError("IPv4 range out of bounds")
        self._check_port(port)
        cdef uint32_t start = self.n, i, a0 = first, cnt = count
        self._grow(self.n + cnt)
        self._need_ports(port)
        with nogil:
            for i in range(cnt):
                wr32(self.addrs + <size_t>(start + i) * 4, a0 + i)
                self._init_slot(start + i)
                if self.ports != NULL:
                    self.ports[start + i] = <uint16_t>port
        self.n += cnt
        self._added(start, cnt)
        return start

    def append_packed(self, const uint8_t[::1] packed, long port=0):
        """Append one slot per address in ``packed`` (network-order addresses of this
        family, 4 or 16 bytes each, back to back: what fastping._pipeline parses a
        targets file into), all on ``port`` (kinds with ports), with no Python object
        per target; return the first new slot."""
        cdef Py_ssize_t nb = packed.shape[0]
        if nb % self.addr_len:
            raise ValueError(f"packed addresses: {nb} bytes is not a multiple of {self.addr_len}")
        self._check_port(port)
        cdef uint32_t start = self.n, i, cnt = <uint32_t>(nb // self.addr_len)
        if nb // self.addr_len + self.n > 0xFFFFFFFF:
            raise ValueError("too many targets for one socket")
        self._grow(self.n + cnt)
        self._need_ports(port)
        if cnt:
            with nogil:
                memcpy(self.addrs + <size_t>start * self.addr_len, &packed[0], <size_t>nb)
                for i in range(cnt):
                    self._init_slot(start + i)
                    if self.ports != NULL:
                        self.ports[start + i] = <uint16_t>port
        self.n += cnt
        self._added(start, cnt)
        return start

    cdef int _need_ports(self, long port) except -1:
        # the port column, made on the first target with a port
        if self.ports == NULL and port != 0 and self.n_cap:
            self.ports = <uint16_t *>PyMem_RawCalloc(self.n_cap, sizeof(uint16_t))
            if self.ports == NULL:
                raise MemoryError()
        return 0

    cdef int _put_port(self, uint32_t s, long port) except -1:
        self._need_ports(port)
        if self.ports != NULL:
            self.ports[s] = <uint16_t>port
        return 0

    def slot_port(self, uint32_t slot):
        """The slot's port (0 for kinds without ports)."""
        if slot >= self.n:
            raise IndexError(slot)
        return self.ports[slot] if self.ports != NULL else 0

    def slot_closed(self, uint32_t slot):
        """Answers of ``slot`` that said its port is closed (TCP RST; counted in
        slot_stats' received too, with their RTTs)."""
        if slot >= self.n:
            raise IndexError(slot)
        return self._rare_ro(slot).closed

    cdef int _pton(self, object a, uint8_t *dst) except -1:
        if not isinstance(a, str):
            raise TypeError(f"address must be a str, not {type(a).__name__}")
        b = (<str>a).split("%", 1)[0].encode("ascii", "replace")
        if inet_pton(self.family, b, dst) != 1:
            fam = "IPv4" if self.family == AF_INET else "IPv6"
            raise ValueError(f"{a!r} is not a numeric {fam} address (resolve names first)")
        return 0

    def add_target(self, str address, long port=0):
        """Add one target (``port``: for kinds with ports), return its slot (a freed
        slot is reused)."""
        cdef uint32_t s
        cdef uint8_t a[16]
        self._check_port(port)
        # parsed before a slot is taken: a bad address leaves no half-made slot behind
        self._pton(address, a)
        if self.free_slots:
            s = self.free_slots.pop()
        else:
            self._grow(self.n + 1)
            s = self.n
            self.n += 1
        memcpy(self.addrs + <size_t>s * self.addr_len, a, self.addr_len)
        self._init_slot(s)
        self._put_port(s, port)
        self._added(s, 1)
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

    def set_rtt_buckets(self, bounds_ns):
        """Keep a histogram of reply RTTs per slot, with these upper bounds in ns
        (strictly increasing, > 0, at most 4096; a reply goes to the first bound >= its
        RTT, or to the last bucket, above them all). Every slot's histogram restarts at
        zero; an empty ``bounds_ns`` turns them off. Closed-port answers (TCP RSTs),
        duplicates and late replies are not in it (slot_buckets)."""
        cdef list b = [int(x) for x in bounds_ns]
        cdef Py_ssize_t i
        if len(b) > 4096:
            raise ValueError(f"{len(b)} RTT buckets: give at most 4096")
        for i in range(len(b)):
            if b[i] <= 0 or (i and b[i] <= b[i - 1]):
                raise ValueError(f"RTT bucket bounds {b!r} must be > 0 ns and strictly increasing")
        if self.busy:
            raise RuntimeError(f"the {type(self).__name__} is in use by another thread: set the "
                               "RTT buckets from the thread that uses it")
        PyMem_RawFree(self.hist)
        PyMem_RawFree(self.hist_le)
        self.hist = NULL
        self.hist_le = NULL
        self.hist_n = 0
        if not b:
            return
        cdef int64_t *le = <int64_t *>PyMem_RawMalloc(len(b) * sizeof(int64_t))
        cdef uint64_t *h = <uint64_t *>PyMem_RawCalloc(
            <size_t>(self.n_cap if self.n_cap else 1) * (len(b) + 2), sizeof(uint64_t))
        if le == NULL or h == NULL:
            PyMem_RawFree(le)
            PyMem_RawFree(h)
            raise MemoryError()
        for i in range(len(b)):
            le[i] = b[i]
        self.hist_le = le
        self.hist_n = <uint32_t>len(b)
        self.hist = h

    @property
    def rtt_bounds_ns(self):
        """The RTT histogram's upper bounds in ns (set_rtt_buckets); () when off."""
        return tuple([self.hist_le[i] for i in range(self.hist_n)])

    def slot_buckets(self, uint32_t slot):
        """(counts, sum_ns) of ``slot``'s RTT histogram: replies per bucket (one more
        than rtt_bounds_ns, the last above every bound, not cumulative) and the sum of
        their RTTs; None when set_rtt_buckets is off."""
        if slot >= self.n:
            raise IndexError(slot)
        if self.hist == NULL:
            return None
        cdef const uint64_t *row = &self.hist[<size_t>slot * self._hist_row()]
        return tuple([row[i] for i in range(self.hist_n + 1)]), row[self.hist_n + 1]

    def slot_stats(self, uint32_t slot):
        """The slot's figures as a ``fastping.results.SlotStats`` (its fields, in
        order: sent, received, duplicates, late, timeouts, unreachable, time_exceeded,
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
        # tuple.__new__ (Cython calls tuple's tp_new), not SlotStats(...): the same
        # NamedTuple without the Python-level __new__ the class makes for keywords
        return tuple.__new__(_SlotStats, (
            r.sent, r.received, r.dup, r.late, r.timeouts, r.unreach, r.texc,
            r.senderr, r.min_ns, r.max_ns, r.sum_ns, r.sumsq, r.jit_sum_ns,
            r.received - 1 if r.received > 1 and self.recent != NULL else 0, r.ttl,
            r.err_type, r.err_code, router, user_timed))

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
        r.closed = rr.closed
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
        if self.ports != NULL:
            r.port = self.ports[s]
        r.proto = self.row_proto
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
            "stats_lost": self.c_stats_lost, "closed": self.c_closed,
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
        self.c_stats_lost = self.c_closed = 0
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
        cdef bint err
        out = []
        for i in range(self.ev_n):
            e = &self.ev[i]
            err = e.kind == C_EV_UNREACHABLE or e.kind == C_EV_TIME_EXCEEDED
            # tuple.__new__: the CoreEvent NamedTuple without its Python-level __new__
            out.append(tuple.__new__(_CoreEvent, (
                e.slot, e.kind, e.seq & 0xFFFF, e.rtt_ns,
                e.ttl if e.ttl >= 0 else None,
                e.icmp_type if err else None,
                e.icmp_code if err else None,
                _ntop(self.family, e.router) if e.has_router else None,
                e.err if e.kind == C_EV_SEND_ERROR else None)))
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
        r.rtt_ms = <float>(<double>rtt / 1e6) if kind == C_EV_REPLY or kind == C_EV_CLOSED else NAN
        r.slot = slot
        r.seq = <uint16_t>(serial & 0xFFFF)
        r.code = kind    # a kind is its chunk code (one numbering: fastping.results.EventKind)
        r.ttl = <uint8_t>ttl if kind != C_EV_TIMEOUT and 0 <= ttl <= 255 else 0

    cdef inline void _set_last(self, uint32_t slot, uint8_t kind, int64_t t) noexcept nogil:
        # final outcomes other than reply/timeout are always returned; only remembered
        cdef SlotRecent *rc = self._recent(slot)
        self.stats[slot].last_kind = kind
        if rc != NULL:
            rc.last_t_ns = t

    cdef int _send_slots(self, const uint32_t *slots, Py_ssize_t count) noexcept nogil:
        """Send one probe to each slot, in batches. Returns 0, or -1 after a fatal errno."""
        cdef int B = self.batch_size
        cdef int plen = self.plen
        cdef Py_ssize_t i = 0, j, k
        cdef int r, tries, etries, err
        cdef uint32_t s, serial
        cdef Probe *pr
        cdef SlotStats *st
        cdef int64_t t
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
                self.tx_slot[built] = s
                self.tx_serial[built] = serial
                self._build(self.tx_pkts + <size_t>built * plen, s, serial, &self.tx_names[built])
                if self.ts_mode == TS_KERNEL_ID:
                    # the key the kernel will report this probe's TX timestamp with
                    key = self.tx_key_next + <uint32_t>built
                    memcpy(CMSG_DATA(<cmsghdr *>(self.tx_ctrl + <size_t>built * self.tx_cstride)),
                           &key, 4)
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
            etries = 0
            while done < built:
                n_try = 1 if self.ts_mode == TS_PACKET else built - done
                t = now_ns()
                for k in range(done, done + n_try):
                    s = self.tx_slot[k]
                    pr = &self.probes[<size_t>s * self.window + self.tx_serial[k] % self.window]
                    pr.send_ns = t
                    pr.tx_kernel = 0
                r = sendmmsg(self.fd, self.tx_msgs + done, n_try, 0)
                if r > 0:
                    if self.ts_mode == TS_KERNEL_ID:
                        self.ts_id_checked = True
                    for k in range(done, done + r):
                        s = self.tx_slot[k]
                        self.stats[s].sent += 1
                        if self.ts_mode == TS_KERNEL_CTR:
                            # the kernel keys each packet it sends with its own counter
                            tr = &self.txr[self.tx_key_next & (TX_RING - 1)]
                            tr.key = self.tx_key_next
                            tr.slot = s
                            tr.serial = self.tx_serial[k]
                            tr.due_ns = self.due_ns
                            self.tx_key_next += 1
                        elif self.ts_mode == TS_BATCH or self.ts_mode == TS_PACKET:
                            self._lateness(self.due_ns, t)
                    self.c_sent += r
                    self.c_outstanding += r
                    done += r
                    etries = 0
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
                if self._stale_send_error(err, etries):
                    self.c_sock_errors += 1
                    etries += 1
                    continue
                # the first message failed (ENETUNREACH, EHOSTUNREACH, EACCES, EPERM...)
                self._fail_one(done, err)
                etries = 0
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
        cdef uint32_t s = self.tx_slot[k]
        cdef uint32_t serial = self.tx_serial[k]
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
            self._on_errq(buf, n, h, ee, t_rx)
            return
        if not have_ts:
            self.c_rx_user += 1
        self._on_packet(buf, n, h, t_rx, ttl)

    cdef const uint8_t *_src_of(self, msghdr *h) noexcept nogil:
        if self.family == AF_INET:
            return <const uint8_t *>&(<sockaddr_in *>h.msg_name).sin_addr
        return <const uint8_t *>&(<sockaddr_in6 *>h.msg_name).sin6_addr

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
            i = self._key_hash(s) & (cap - 1)
            while self.aidx[i] != 0:
                i = (i + 1) & (cap - 1)
            self.aidx[i] = s + 1
        self.aidx_valid = True
        return True

    cdef void _on_reply(self, uint32_t slot, uint32_t serial, int64_t t_rx, int ttl,
                        uint8_t kind) noexcept nogil:
        """An answer to the probe ``serial`` of ``slot`` received at ``t_rx``: kind
        C_EV_REPLY (an echo reply, a SYN-ACK), or C_EV_CLOSED (the host answered that
        the port is closed: an RTT all the same, and counted in SlotRare.closed)."""
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
        if kind == C_EV_CLOSED:
            self.c_closed += 1
            rr = self._rare(slot)
            if rr != NULL:
                rr.closed += 1
        elif self.hist != NULL:
            self._hist_add(slot, rtt)
        self._final(slot, kind, serial, rtt, ttl, t_rx)

    cdef inline size_t _hist_row(self) noexcept nogil:
        return self.hist_n + 2

    cdef void _hist_add(self, uint32_t slot, int64_t rtt) noexcept nogil:
        # the first bucket whose bound is >= rtt (le semantics), by bisection
        cdef uint32_t lo = 0, hi = self.hist_n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.hist_le[mid] < rtt:
                lo = mid + 1
            else:
                hi = mid
        cdef uint64_t *row = &self.hist[<size_t>slot * self._hist_row()]
        row[lo] += 1
        row[self.hist_n + 1] += <uint64_t>rtt

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


cdef inline uint32_t _addr_hash(const uint8_t *a, int alen, uint32_t port) noexcept nogil:
    """Hash of an address (4 or 16 bytes) and a port (0: none) for the target index:
    the words combined, then MurmurHash3's fmix32, so every input bit reaches the low
    bits the index keeps. (A multiply alone leaves the low bits a function of the low
    input bits only: consecutive IPv4 targets, which differ in their high bytes as the
    memory reads them, filled every other bucket and the probing chains grew long.)"""
    cdef uint32_t h = rd32(a) ^ (port * 0xCC9E2D51U)
    if alen == 16:
        h ^= rd32(a + 4) * 0x85EBCA6BU ^ rd32(a + 8) * 0xC2B2AE35U ^ rd32(a + 12) * 0x27D4EB2FU
    h ^= h >> 16
    h *= 0x85EBCA6BU
    h ^= h >> 13
    h *= 0xC2B2AE35U
    return h ^ (h >> 16)


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
