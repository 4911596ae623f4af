"""Type stub of the compiled core ``fastping._icmp`` (and of its pure-Python twin
``fastping._icmp_py``, which implements the codec half with the same signatures).

Codec: checksum, echo-request build, reply/error parse for ICMPv4 and ICMPv6,
with and without the IP header.

IcmpSocket: one socket per family multiplexing any number of target *slots*.
Two ways to drive it:

* ``sweep()`` runs a whole bounded sweep in C with the GIL released and leaves
  per-slot aggregates readable through ``slot_stats()`` / ``totals()``.
* ``send()`` / ``recv()`` / ``expire()`` are the non-blocking pieces the asyncio
  engine uses: send one probe to each given slot, drain whatever replies are
  queued, and time out probes older than a limit. Each returns a list of event
  tuples ``(slot, kind, seq, rtt_ns, ttl, icmp_type, icmp_code, router, errno)``.

Outcome log (``set_log``): in modes 1 and 2 every reply and timeout is appended to
a C buffer and handed out per slot as ``fastping.chunk`` chunks by ``take_log()``,
so results reach the store without a Python object per probe. In quiet mode (1) the
event lists carry only what changes a caller's state: every unreachable /
time-exceeded / send-error / duplicate / late event, and a reply or timeout only
when its kind differs from the slot's previous final outcome (reply, timeout,
unreachable, time exceeded, send error; a slot's first final outcome counts as a
change). Returned events are for state, the log is for storage: in modes 1 and 2
every reply and timeout is logged, returned or not. ``sweep()`` never logs.

Send times (``timestamps``): by default every probe's send time is the kernel's
software TX timestamp (SO_TIMESTAMPING, read back in batches from the error queue
and keyed per packet with SCM_TS_OPT_ID, or by the kernel's send counter before
Linux 6.13) and every reply's receive time the kernel's RX timestamp, one clock
(CLOCK_REALTIME). The error queue is read before the replies, and a reply whose
probe's stamp is still unread makes the core read it again before matching, so a
reply is never timed against a stale stamp. A probe the kernel gave no stamp for
keeps the user-space time read just before its sendmmsg; ``totals()`` counts the
replies timed each way (timed_kernel, timed_user) and ``slot_stats().user_timed``
per slot.
"""

from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final

from typing_extensions import Self, disjoint_base

from .results import CoreEvent, SlotStats

_Buffer = bytes | bytearray | memoryview

PAYLOAD_MAX: Final[int]  # the largest payload_size, bytes

# Event kinds (the ``kind`` field of an event tuple): fastping.results.EventKind's
# numbers, the codes of a chunk too (one numbering, compiled from that table).
EV_REPLY: Final[int]  # 0  echo reply for an outstanding probe
EV_TIMEOUT: Final[int]  # 1  no answer within the timeout
EV_UNREACHABLE: Final[int]  # 2  destination unreachable / packet too big / parameter problem
EV_TIME_EXCEEDED: Final[int]  # 3  TTL / hop limit exceeded (router = reporting hop)
EV_SEND_ERROR: Final[int]  # 4  local errno while sending (errno field set)
EV_LOCAL_DOWN: Final[int]  # 5  engine-made (the network is down): never a core event
EV_RESOLVE_ERROR: Final[int]  # 6  engine-made (a name did not resolve): never a core event
EV_DUPLICATE: Final[int]  # 7  second reply to an already answered probe
EV_LATE: Final[int]  # 8  reply to a probe that had already timed out
EV_CLOSED: Final[int]  # 9  the port answered closed (TCP RST): an answer, with an RTT

ICMP_ECHO_REQUEST: Final[int]
ICMP_ECHO_REPLY: Final[int]
ICMP6_ECHO_REQUEST: Final[int]
ICMP6_ECHO_REPLY: Final[int]
PROBE_HEADER_SIZE: Final[int]  # bytes of payload fastping needs (slot, serial, cookie)

def checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 Internet checksum of ``data`` (the value to store, host order)."""

def build_echo_request(
    family: int,
    ident: int,
    seq: int,
    payload: bytes = b"",
) -> bytes:
    """ICMP (AF_INET) or ICMPv6 (AF_INET6) echo request. For ICMPv4 the checksum is
    filled in; for ICMPv6 it is left 0 (the kernel computes it over the pseudo-header)."""

def build_probe_payload(slot: int, serial: int, key: bytes, size: int) -> bytes:
    """fastping's probe payload: slot, serial and keyed cookie, padded to ``size``."""

def parse_packet(
    data: bytes | bytearray | memoryview,
    family: int,
    has_ip_header: bool,
) -> dict[str, Any] | None:
    """Parse one received packet. ``None`` for anything that is not an echo
    reply / echo request or an ICMP error quoting an echo request (or is
    truncated, or fails its IPv4 checksum). Keys: ``type``, ``code``, ``ident``,
    ``seq``, ``payload`` (bytes), ``ttl`` (IPv4 with header, else None),
    ``src``/``dst`` (IPv4 with header), ``checksum_ok``, ``is_error`` and, for
    errors, ``inner_dst`` (the quoted probe's destination), ``inner_ident``,
    ``inner_seq``, ``inner_payload``, ``mtu`` (packet too big)."""

def parse_probe_payload(payload: bytes, key: bytes) -> tuple[int, int] | None:
    """(slot, serial) if the payload carries a cookie valid under ``key``."""

def build_probes(
    family: int,
    ident: int,
    key: bytes,
    first_slot: int,
    count: int,
    serial: int,
    payload_size: int,
) -> bytes:
    """``count`` probes for slots first_slot.., concatenated (8 + payload_size bytes each):
    the send loop's per-packet work, exposed for tests and the codec benchmark."""

def parse_probes(
    data: bytes, packet_size: int, family: int, has_ip_header: bool, key: bytes
) -> array[int]:
    """Slots of the valid, cookie-carrying echo packets among consecutive packets."""

@disjoint_base
class ProbeSocket:
    """The loop every probe kind shares (see IcmpSocket, TcpSocket): slots, batched
    sends and reads with the GIL released, kernel timestamps, pacing, the outcome
    log and the counters. Not made directly."""

    family: int  # socket.AF_INET or socket.AF_INET6
    kind: str  # "raw" or "dgram"
    batch_size: int
    window: int
    def __new__(cls, *args: Any, **kwargs: Any) -> ProbeSocket: ...
    @property
    def timestamps(self) -> str:
        """The send-time mode in force: 'kernel', 'kernel-counter' (keyed by the
        kernel's send counter: kernels before 6.13), 'packet' or 'batch'."""
    def lateness(self) -> tuple[int, int, int, tuple[int, ...]]:
        """(count, sum_ns, max_ns, histogram) of how late the probes sent with a
        ``due_ns`` left (kernel TX timestamp, else user-space send time) against it;
        histogram: counts over ``lateness_bucket_bounds()``."""
    def reset_lateness(self) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...

    # -- targets ---------------------------------------------------------
    @property
    def n_slots(self) -> int: ...
    def memory(self) -> dict[str, Any]:
        """Bytes held per purpose: addresses, slots (48-byte SlotStats), probes (16
        bytes per slot and window entry), rare (64-byte records made on a slot's
        first duplicate, late reply, ICMP error, send error, user-timed reply or RTT
        of 4.3 s or more), recent (24 bytes per slot, made on the first reply unless
        only sweep(count=1) runs), timeouts (8 bytes per slot, made by the first
        set_slot_timeout), address_index, log, events, buffers; per_slot_size."""
    def set_targets(
        self, addresses: Sequence[str], ports: Sequence[int] | int | None = None
    ) -> None:
        """Replace all slots with ``addresses`` (numeric, of this family; ``ports``
        for kinds with ports); resets stats."""
    def clear_targets(self) -> None:
        """Drop every slot and reset stats."""
    def append_targets(
        self, addresses: Sequence[str], ports: Sequence[int] | int | None = None
    ) -> int:
        """Append slots for numeric ``addresses`` (``ports``: one per address or one
        for all, for kinds with ports); return the first new slot."""
    def append_range_v4(self, first: int, count: int, port: int = 0) -> int:
        """Append ``count`` consecutive IPv4 addresses from ``first`` (host-order
        integer), expanded in C with no Python object per target; return the first
        new slot."""
    def append_packed(self, packed: _Buffer, port: int = 0) -> int:
        """Append one slot per address in ``packed`` (network-order addresses of
        this family, 4 or 16 bytes each, back to back: what fastping._pipeline
        parses a targets file into), with no Python object per target; return the
        first new slot."""
    def add_target(self, address: str, port: int = 0) -> int:
        """Add one target (``port``: for kinds with ports), return its slot (a freed
        slot is reused)."""
    def remove_target(self, slot: int) -> None:
        """Free ``slot``: later replies for it are ignored (counted as stale)."""
    def slot_address(self, slot: int) -> str: ...
    def slot_port(self, slot: int) -> int:
        """The slot's port (0 for kinds without ports)."""
    def slot_closed(self, slot: int) -> int:
        """Answers of the slot that said its port is closed (TCP RST): in
        slot_stats' received too, with their RTTs."""

    # -- bounded sweep, all in C with the GIL released ---------------------
    def sweep(
        self,
        count: int = 1,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        rate_pps: float = 0.0,
        slots: Sequence[int] | None = None,
        events: bool = False,
    ) -> list[CoreEvent] | None:
        """Send ``count`` rounds to every slot (rounds ``interval_s`` apart,
        probes paced at ``rate_pps``, 0 = flat out), drain replies interleaved,
        wait ``timeout_s`` after the last send. With ``events`` the per-probe
        events are returned too (meant for small target lists)."""
    def set_rtt_buckets(self, bounds_ns: Iterable[int]) -> None:
        """Per-slot RTT histograms with these upper bounds in ns (empty: off)."""
    @property
    def rtt_bounds_ns(self) -> tuple[int, ...]: ...
    def slot_buckets(self, slot: int) -> tuple[tuple[int, ...], int] | None:
        """(replies per bucket, the last above every bound; their RTT sum in ns)."""
    def slot_stats(self, slot: int) -> SlotStats:
        """The slot's figures (fastping.results.SlotStats); user_timed: replies timed
        from a user-space send time (no kernel TX stamp)"""
    def export_rows(self, start: int, count: int, out: bytearray | memoryview) -> int:
        """Copy the results of slots [start, start + count) into the writable
        ``out`` as packed rows (``includes/slotrow.pxd``; ``_pipeline.ROW_SIZE``
        bytes each), GIL released; return the rows written (fewer when ``out`` or
        the slots run out)."""
    def totals(self) -> dict[str, int]:
        """Socket counters: sent, received, duplicates, late, timeouts, unreachable,
        time_exceeded, send_errors, enobufs, rx_drops (kernel, SO_RXQ_OVFL),
        foreign (not ours), malformed, stale, errors_unattributed, packets_read,
        send_ns, total_ns, log_dropped (replies/timeouts the outcome log had no room
        for: log_max reached), log_pending (records in the log now); timed_kernel /
        timed_user (replies whose send time is the kernel's TX timestamp / a
        user-space clock read), tx_stamps (TX timestamps applied), tx_unmatched (TX
        timestamps naming no probe in flight), tx_late (stamps read after their
        probe was settled), rx_user (replies without a kernel RX timestamp),
        stats_lost (per-slot figures not kept for lack of memory)."""
    def reset_stats(self) -> None:
        """Zero the counters and per-slot stats (and last outcomes); targets, slot
        timeouts and the outcome log stay."""

    # -- non-blocking pieces for the asyncio engine ------------------------
    def send(
        self, slots: Iterable[int], drain: bool = True, due_ns: int = 0
    ) -> list[CoreEvent]:
        """Send one probe to each slot now (sendmmsg batches). With ``drain`` the
        socket is drained after every batch. ``due_ns`` (CLOCK_REALTIME ns): when
        these probes were scheduled; how late each left is counted in lateness().
        Returns every event seen: EV_SEND_ERROR for probes the kernel refused
        (ENETUNREACH, ...), EV_TIMEOUT for probes pushed out of a full window, and
        the replies drained meanwhile."""
    def recv(
        self, max_packets: int = 0
    ) -> list[CoreEvent]:
        """Drain queued packets without blocking (0 = until empty)."""
    def wait(self, timeout_s: float) -> bool:
        """Block (GIL released) until readable or ``timeout_s`` passes."""
    @property
    def key(self) -> bytes: ...
    timeout_s: float  # replies slower than this count as late (0: no limit)
    @property
    def rcvbuf_bytes(self) -> int: ...
    def set_rcvbuf(self, nbytes: int) -> None: ...
    def expire(
        self, timeout_s: float
    ) -> list[CoreEvent]:
        """EV_TIMEOUT for every outstanding probe older than ``timeout_s`` (or than
        its slot's own timeout, set_slot_timeout, when that is shorter); in quiet mode
        only the timeouts that change a slot's last outcome are returned."""

    # -- outcome log -------------------------------------------------------
    def set_log(self, mode: int) -> None:
        """0 (default): nothing logged, every event returned. 1 quiet: every reply
        and timeout logged; send/recv/expire return the other kinds and only those
        replies/timeouts whose kind differs from the slot's last final outcome.
        2: every reply and timeout logged AND every event returned."""
    @property
    def log_mode(self) -> int: ...
    log_max: int  # records the log holds at most; more are counted in totals()["log_dropped"]
    def take_log(self, slot: int = -1) -> list[tuple[int, bytes]]:
        """Empty the log: one ``(slot, chunk)`` per slot with records, slots ascending,
        each chunk in ``fastping.chunk``'s layout (t = when the outcome was known,
        Unix s; rtt ms, NaN for timeouts; seq; code 0 reply / 1 timeout; TTL or 0),
        records in the order they were logged. With ``slot``: only that slot's
        records (``[]`` or one tuple), the others stay. Records outlive their slot
        (remove_target, clear_targets) and the socket (close): drain a slot before
        add_target reuses it, or its records join the new target's."""
    def forget_last(self, slot: int = -1) -> None:
        """Forget the last final outcome of ``slot`` (-1: every slot) so its next
        reply or timeout is returned in quiet mode too (e.g. after the local network
        was down and the caller's idea of the target's state changed)."""
    def slot_last(self, slot: int) -> tuple[int, int, int]:
        """``(last_kind, last_rtt_ns, last_t_ns)``: the kind (EV_*) of the slot's last
        final outcome and when it was known (CLOCK_REALTIME ns), and the RTT of its
        last reply; ``(-1, 0, 0)`` before the first. Tracked in every log mode; after
        only sweep(count=1) (which keeps no times) the RTT and time read 0."""
    def set_slot_timeout(self, slot: int, timeout_s: float) -> None:
        """The slot's own timeout (0: none; add_target / remove_target reset it). A
        reply slower than min(timeout_s, this) times its probe out (EV_TIMEOUT) and
        is EV_LATE; ``expire(t)`` uses min(t, this) for the slot. sweep() ignores it."""

@disjoint_base
class IcmpSocket(ProbeSocket):
    """ICMP/ICMPv6 echo on one raw or unprivileged datagram socket."""

    ident: int  # ICMP identifier (kernel-assigned for dgram sockets)
    payload_size: int
    def __init__(
        self,
        family: int = ...,
        *,
        kind: str = "raw",
        payload_size: int = 56,
        ttl: int | None = None,
        tos: int | None = None,
        # True: DF with the kernel's path MTU (sends above a learned PMTU fail with
        # EMSGSIZE); "probe": DF whatever the kernel learned (IP_PMTUDISC_PROBE /
        # IPV6_PMTUDISC_PROBE), as a path MTU search needs
        dont_fragment: bool | str = False,
        rcvbuf_bytes: int = 0,  # 0 = sized automatically to the in-flight burst
        batch_size: int = 64,
        window: int = 1,  # probes per slot that may be outstanding at once
        bpf: bool = True,  # classic BPF filter on raw sockets (identifier)
        log_max: int = 4_000_000,  # outcome-log records held at most (see take_log)
        # send times: "kernel" (TX timestamps; falls back to "packet" without
        # SO_TIMESTAMPING), "packet" (one sendmsg and clock read per probe, as fping),
        # "batch" (one clock read per sendmmsg batch: fastest, RTTs include batching)
        timestamps: str = "kernel",
    ) -> None: ...
    def slot_mtu(self, slot: int) -> int:
        """The MTU the slot's last fragmentation-needed (IPv4) / packet-too-big
        (IPv6) named; 0 when none did."""

@disjoint_base
class TcpSocket(ProbeSocket):
    """Stateless TCP SYN probes on one raw IPPROTO_TCP socket (CAP_NET_RAW): a
    SYN-ACK is EV_REPLY (open), a RST EV_CLOSED (closed), silence EV_TIMEOUT
    (filtered), an ICMP error quoting the SYN EV_UNREACHABLE. The cookie is in the
    initial sequence number, the serial's low 8 bits in the source port
    (sport_base .. sport_base + TCP_SPORT_SPAN - 1)."""

    sport_base: int
    source: str | None  # the source address the SYNs carry (None: the route's)
    def __init__(
        self,
        family: int = ...,
        *,
        source: str | None = None,
        ttl: int | None = None,
        tos: int | None = None,
        rcvbuf_bytes: int = 0,
        batch_size: int = 64,
        window: int = 1,  # 1..64
        bpf: bool = True,  # classic BPF: SYN-ACKs and RSTs to our ports only
        log_max: int = 4_000_000,
        timestamps: str = "kernel",
        sport_base: int | None = None,  # random in 40000..59999 by default
    ) -> None: ...

@disjoint_base
class TraceSocket(IcmpSocket):
    """TTL-limited ICMP echo for every (target, hop) at once: target ``t``'s hop ``h``
    is slot ``t * max_ttl + h - 1``; each probe's TTL rides in its own control
    message, its checksum is the same for all (Paris traceroute), its sequence number
    (hop - 1) << 10 | serial & 0x3FF (an 8-byte quote still attributes). An answer
    (time exceeded, the target's echo reply, an unreachable) is the slot's reply: its
    RTT in slot_stats, its responder in path(). See units/trace.pxi."""

    max_ttl: int
    flow_sum: int  # every probe's ICMP ones-complement sum (Paris)
    def __init__(
        self,
        family: int = ...,
        *,
        max_ttl: int = 16,  # 1..64
        kind: str = "raw",  # or "dgram": unprivileged, errors via IP_RECVERR
        payload_size: int = 56,  # >= 18: the probe header and the balance word
        tos: int | None = None,
        rcvbuf_bytes: int = 0,
        batch_size: int = 64,
        window: int = 1,  # probes per hop outstanding at once (queries)
        bpf: bool = True,
        timestamps: str = "kernel",
    ) -> None: ...
    @property
    def n_traces(self) -> int: ...
    def add_traces(self, addresses: Iterable[str]) -> int:
        """One trace per numeric address (max_ttl slots each); the first's index."""
    def add_traces_packed(self, packed: bytes | bytearray | memoryview) -> int: ...
    def order(self, key: bytes | None = None) -> array[int]:
        """Every slot once in a keyed random order (Fisher-Yates on SipHash-2-4)."""
    def path(
        self, target: int
    ) -> list[
        tuple[int, str | None, int | None, int | None, int | None, int | None, int, int]
    ]:
        """(hop, responder, min RTT ns, mean RTT ns, ICMP type, ICMP code, sent,
        received) for hops 1 up to the first that ended the path."""
    def trace_totals(self) -> dict[str, int]: ...

@disjoint_base
class UdpSocket(ProbeSocket):
    """UDP probes on one unprivileged SOCK_DGRAM socket bound to ``sport``: an
    application reply is EV_REPLY (open), the host's ICMP port unreachable EV_CLOSED
    (closed), another ICMP error EV_UNREACHABLE / EV_TIME_EXCEEDED (unreachable),
    silence EV_TIMEOUT (open|filtered). Payloads are keyed per probe: a DNS query to
    53 (its ID), an NTP client packet to 123 (its transmit timestamp), the probe
    header elsewhere (``payloads="cookie"``: the header everywhere). totals() adds
    ``unkeyed``: answers without a key, given to the slot's oldest outstanding probe."""

    sport: int
    source: str | None  # the local address bound (None: any)
    payloads: str
    def __init__(
        self,
        family: int = ...,
        *,
        source: str | None = None,
        ttl: int | None = None,
        tos: int | None = None,
        rcvbuf_bytes: int = 0,
        batch_size: int = 64,
        window: int = 1,  # 1..64
        log_max: int = 4_000_000,
        timestamps: str = "kernel",
        sport: int = 0,  # 0: a free port the kernel picks
        payloads: str = "auto",  # "auto" (per port) or "cookie"
    ) -> None: ...

TCP_SPORT_SPAN: Final[int]  # source ports per TcpSocket (256)

def tcp_isn(key: bytes, slot: int, serial: int) -> int:
    """The initial sequence number a TcpSocket with cookie ``key`` gives probe
    ``serial`` of ``slot``; its answer acknowledges it + 1."""

def udp_payload(key: bytes, slot: int, serial: int, port: int, payloads: str = "auto") -> bytes:
    """The datagram a UdpSocket with cookie ``key`` sends as probe ``serial`` of
    ``slot`` to ``port``."""

def lateness_bucket_bounds() -> list[int]:
    """Lower bounds (us) of the send-lateness histogram's buckets: whole us below
    16, then 8 per octave; the last bucket is open-ended."""

@disjoint_base
class DnsSocket(ProbeSocket):
    """DNS queries on one unprivileged UDP socket: a slot is a (server address, port,
    name, qtype) question. A response from the server's address:port whose ID is the
    keyed ID of one of the slot's probes and whose question is the slot's is EV_REPLY
    whatever its rcode (slot_dns says which); an ICMP error quoting the query
    EV_UNREACHABLE; silence EV_TIMEOUT. Responses from a queried server that carry
    another question count as mismatched and never settle a probe."""

    sport: int  # the local port the queries leave from
    source: str | None
    rd: bool  # recursion desired
    edns: int  # EDNS0 UDP payload size offered (0: no OPT RR)
    def __init__(
        self,
        family: int = ...,
        *,
        source: str | None = None,
        sport: int = 0,
        rd: bool = True,
        edns: int = 1232,  # 512..1400, or 0
        ttl: int | None = None,
        tos: int | None = None,
        rcvbuf_bytes: int = 0,
        batch_size: int = 64,
        window: int = 1,
        log_max: int = 4_000_000,
        timestamps: str = "kernel",
    ) -> None: ...
    def set_question(self, name: str, qtype: str | int = "A") -> None: ...
    def add_query(self, address: str, port: int, name: str, qtype: str | int = "A") -> int: ...
    def append_queries(
        self,
        addresses: Iterable[str],
        ports: Iterable[int],
        names: Iterable[str],
        qtypes: Iterable[str | int],
    ) -> int: ...
    def slot_question(self, slot: int) -> tuple[str, int]: ...
    def slot_dns(self, slot: int) -> dict[str, Any]: ...
    def totals(self) -> dict[str, Any]: ...  # with mismatched and dns (answers by kind)

DNS_QTYPES: dict[str, int]
DNS_RCODES: dict[int, str]
DNS_KINDS: tuple[str, ...]  # noerror, nxdomain, servfail, refused, other, truncated
DNS_PARSE_OK: Final[int]

def dns_qtype(qtype: str | int) -> int: ...
def dns_name_wire(name: str) -> bytes: ...
def dns_name_text(wire: _Buffer) -> str: ...
def dns_query(
    key: bytes,
    slot: int,
    serial: int,
    name: str,
    qtype: str | int = "A",
    rd: bool = True,
    edns: int = 1232,
) -> bytes: ...
def dns_parse(
    data: _Buffer,
) -> tuple[int, tuple[int, int, int, bytes, int, int, int, int | None, bool] | None]: ...
