# C declarations for kernel packet timestamps (Documentation/networking/timestamping.rst):
# <linux/net_tstamp.h> SO_TIMESTAMPING flags, <linux/errqueue.h> the error-queue report
# of a TX timestamp, and SCM_TS_OPT_ID (a per-packet timestamp key, Linux 6.13).
from posix.time cimport timespec


cdef extern from "<linux/net_tstamp.h>" nogil:
    int SOF_TIMESTAMPING_TX_SOFTWARE, SOF_TIMESTAMPING_RX_SOFTWARE, SOF_TIMESTAMPING_SOFTWARE
    int SOF_TIMESTAMPING_OPT_ID, SOF_TIMESTAMPING_OPT_TSONLY


cdef extern from "<linux/errqueue.h>" nogil:
    # SO_EE_ORIGIN_TIMESTAMPING: a sock_extended_err that reports a timestamp; ee_info is
    # the SCM_TSTAMP_* kind, ee_data the key (OPT_ID). The times are in the cmsg
    # SCM_TIMESTAMPING: ts[0] software, ts[2] hardware.
    int SO_EE_ORIGIN_TIMESTAMPING, SCM_TSTAMP_SND

    struct scm_timestamping:
        timespec ts[3]


cdef extern from *:
    """
    #ifndef SCM_TS_OPT_ID
    #define SCM_TS_OPT_ID 81  /* <asm-generic/socket.h> since Linux 6.13 */
    #endif
    """
    int SCM_TS_OPT_ID
