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

# The event kinds (C_EV_* for C, EV_* for Python) are in units/kinds.pxi, written by
# setup.py from fastping.results.EventKind: the one outcome numbering, the same numbers
# as a chunk's codes (fastping.chunk.OUTCOME_CODE), so the log stores a kind as it is.
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
DEF STALE_SEND_TRIES = 4      # sends retried after a consumed sk_err before one counts failed
DEF NS = 1000000000


