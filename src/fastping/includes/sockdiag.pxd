# C declarations from <linux/sock_diag.h> (SO_MEMINFO counters).

cdef extern from "<linux/sock_diag.h>" nogil:
    int SK_MEMINFO_VARS, SK_MEMINFO_DROPS

cdef extern from "<sys/socket.h>" nogil:
    int SO_MEMINFO
