# One target's results as the core exports them (IcmpSocket.export_rows) and the
# pipeline's formatters and column export read them (_pipeline.pyx): a fixed layout
# shared by both compiled modules, so results cross between them as bytes, not objects.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t


cdef extern from *:
    """
    typedef struct fastping_slot_row {
        int64_t min_ns, max_ns, sum_ns, jit_sum_ns;
        double sumsq;
        uint32_t sent, received, dup, late, timeouts, unreach, texc, senderr, closed;
        uint8_t ttl, err_type, err_code, has_router;
        uint16_t port;
        uint8_t addr[16];
        uint8_t router[16];
        uint8_t proto;
    } fastping_slot_row;
    """
    ctypedef struct SlotRow "fastping_slot_row":
        int64_t min_ns, max_ns, sum_ns, jit_sum_ns
        double sumsq
        uint32_t sent, received, dup, late, timeouts, unreach, texc, senderr, closed
        uint8_t ttl, err_type, err_code, has_router
        uint16_t port                # 0: a kind without ports (ICMP)
        uint8_t addr[16]
        uint8_t router[16]
        uint8_t proto                # 17: UDP ports (silence is open|filtered); else 0
