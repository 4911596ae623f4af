# C declarations from <linux/filter.h> (classic BPF socket filters).

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        unsigned short code
        unsigned char jt
        unsigned char jf
        unsigned int k

    struct sock_fprog:
        unsigned short len
        sock_filter *filter

    int BPF_LD, BPF_LDX, BPF_JMP, BPF_RET
    int BPF_B, BPF_H, BPF_W, BPF_ABS, BPF_IND, BPF_MSH, BPF_K, BPF_JEQ
    int BPF_JGE, BPF_JSET, BPF_ALU, BPF_AND
