# C declarations from <linux/errqueue.h> and <linux/icmp.h> (IP_RECVERR, ICMP_FILTER).

cdef extern from "<linux/errqueue.h>" nogil:
    struct sock_extended_err:
        unsigned int ee_errno
        unsigned char ee_origin
        unsigned char ee_type
        unsigned char ee_code
        unsigned char ee_pad
        unsigned int ee_info
        unsigned int ee_data

    int SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6
    void *SO_EE_OFFENDER(sock_extended_err *ee)


cdef extern from "<linux/icmp.h>" nogil:
    struct icmp_filter:
        unsigned int data

    int ICMP_FILTER
