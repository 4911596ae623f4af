# cython: language_level=3
"""fastping's compiled core: the ICMP/ICMPv6 codec and IcmpSocket.

ICMPv4 echo (RFC 792)                     ICMPv6 echo (RFC 4443 §4.1, §4.2)
 0               1               2               3
 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
+---------------+---------------+-------------------------------+
|     Type      |     Code      |           Checksum            |
+---------------+---------------+-------------------------------+
|          Identifier           |        Sequence Number        |
+-------------------------------+-------------------------------+
|     Data: fastping probe header, then padding ...
+-------------------------------------------------------------

fastping probe header (first PROBE_HEADER_SIZE bytes of the data, big-endian):
    slot   (4)  index of the target in its IcmpSocket
    serial (4)  per-slot probe counter; sequence number = serial & 0xffff
    cookie (8)  SipHash-2-4(key, slot << 32 | serial), key random per socket

ICMP errors (RFC 792 / RFC 4443 §3) quote the offending packet after their
8-byte header: the quoted IP header + our echo request, whose identifier and
probe header attribute the error to one probe.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.errno cimport (
    EACCES, EAGAIN, ECONNREFUSED, EHOSTDOWN, EHOSTUNREACH, EINTR, EINVAL, EMSGSIZE, ENETUNREACH,
    ENOBUFS, ENONET, ENOPROTOOPT, EOPNOTSUPP, EPERM, EPROTO, errno,
)
from libc.math cimport NAN
from libc.stdint cimport INT64_MAX, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, nanosleep, timespec
from posix.uio cimport iovec
from posix.unistd cimport close as c_close

from includes.poll cimport POLLERR, POLLIN, poll, pollfd
from includes.errqueue cimport (
    ICMP_FILTER, SO_EE_OFFENDER, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, icmp_filter,
    sock_extended_err,
)
from includes.filter cimport (
    BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K,
    BPF_LD, BPF_LDX, BPF_MSH, BPF_RET,
    sock_filter, sock_fprog,
)
from includes.slotrow cimport SlotRow
from includes.sockdiag cimport SK_MEMINFO_DROPS, SO_MEMINFO
from includes.socket cimport (
    AF_INET, AF_INET6, AF_UNSPEC, CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, IP_MTU_DISCOVER,
    IP_PMTUDISC_DO, IP_RECVERR, IP_RECVTTL, IP_TOS, IP_TTL, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_CHECKSUM, IPV6_DONTFRAG, IPV6_V6ONLY,
    IPV6_HOPLIMIT, IPV6_RECVERR, IPV6_RECVHOPLIMIT,
    IPV6_TCLASS, IPV6_UNICAST_HOPS, MSG_DONTWAIT, MSG_ERRQUEUE, MSG_TRUNC, SCM_TIMESTAMPING, SCM_TIMESTAMPNS,
    SO_ATTACH_FILTER, SO_RCVBUF, SO_RCVBUFFORCE, SO_RXQ_OVFL, SO_SNDBUF, SO_SNDBUFFORCE,
    SO_TIMESTAMPING, SO_TIMESTAMPNS, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_RAW, SOL_SOCKET,
    CMSG_LEN, bind, cmsghdr, connect, getsockname, getsockopt, inet_ntop, inet_pton, mmsghdr,
    msghdr, recv, recvmmsg, sendmmsg, setsockopt, sockaddr, sockaddr_in, sockaddr_in6, socket,
    socklen_t,
)
from includes.tstamp cimport (
    SCM_TS_OPT_ID, SCM_TSTAMP_SND, SO_EE_ORIGIN_TIMESTAMPING, SOF_TIMESTAMPING_OPT_ID,
    SOF_TIMESTAMPING_OPT_TSONLY, SOF_TIMESTAMPING_RX_SOFTWARE, SOF_TIMESTAMPING_SOFTWARE,
    SOF_TIMESTAMPING_TX_SOFTWARE,
)

import operator
from array import array
import os as _os

from fastping import results as _results

# what slot_stats() returns (the C struct SlotStats is the slot's own record); a C
# global, so no module-dict lookup per call
cdef type _SlotStats = _results.SlotStats
cdef type _CoreEvent = _results.CoreEvent     # what send / recv / expire return

include "units/kinds.pxi"      # the outcome numbering (generated from fastping.results)
include "units/defs.pxi"       # constants: header offsets, probe states, log modes
include "units/codec.pxi"      # checksum, SipHash cookies, the ICMP codec
include "units/core.pxi"       # ProbeSocket: the loop every probe kind shares
include "units/icmp.pxi"       # IcmpSocket: ICMP/ICMPv6 echo
include "units/tcp.pxi"        # TcpSocket: stateless TCP SYN
include "units/udp.pxi"        # UdpSocket: UDP probes on a datagram socket
include "units/dns.pxi"        # DnsSocket: DNS queries on a datagram socket
include "units/trace.pxi"      # TraceSocket: TTL-limited echo, every hop of every target
