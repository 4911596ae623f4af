# C declarations from <sys/socket.h>, <netinet/in.h>, <arpa/inet.h> (Linux).
from posix.uio cimport iovec
from posix.time cimport timespec


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)

    int AF_UNSPEC, AF_INET, AF_INET6
    int SOCK_RAW, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_CLOEXEC
    int SOL_SOCKET
    int SO_RCVBUF, SO_RCVBUFFORCE, SO_SNDBUF, SO_SNDBUFFORCE
    int SO_TIMESTAMPNS, SCM_TIMESTAMPNS, SO_RXQ_OVFL, SO_ATTACH_FILTER
    int SO_TIMESTAMPING, SCM_TIMESTAMPING
    int MSG_DONTWAIT, MSG_ERRQUEUE, MSG_TRUNC, MSG_CTRUNC

    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    int sendmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)


cdef extern from "<netinet/in.h>" nogil:
    ctypedef unsigned int in_addr_t

    struct in_addr:
        in_addr_t s_addr

    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr

    struct in6_addr:
        unsigned char s6_addr[16]

    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id

    int IPPROTO_IP, IPPROTO_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_RAW, IPPROTO_TCP, IPPROTO_UDP
    int IP_TTL, IP_TOS, IP_RECVTTL, IP_RECVERR, IP_MTU_DISCOVER, IP_PMTUDISC_DO
    int IPV6_UNICAST_HOPS, IPV6_TCLASS, IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT
    int IPV6_RECVERR, IPV6_DONTFRAG, IPV6_CHECKSUM, IPV6_V6ONLY

    unsigned int htonl(unsigned int)
    unsigned short htons(unsigned short)
    unsigned int ntohl(unsigned int)
    unsigned short ntohs(unsigned short)


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int INET6_ADDRSTRLEN
