/* C reference for fastping's stateless TCP SYN sweep (issue #17): the speed limit of the
 * sweep, the same kernel work with no library around it. The loop is
 * /work/shared/bench/mmsg_ceiling.c's (sendmmsg batches, a recvmmsg drain after every
 * batch, -m inter) on a raw TCP socket, with -T 1 every probe timed by the kernel as
 * benchmarks/c/ts_ref.c (and fastping's core) does it.
 *
 *   socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_TCP), no IP_HDRINCL: we write the
 *   TCP header, the kernel the IP header (raw(7)). The socket is bound to 127.0.0.1, so
 *   the kernel uses it as source and the socket receives only packets addressed to it.
 *
 *   probe i goes to BASE+i : PORT, a 20-byte SYN without options (as Debian's zmap 2.1.1
 *   tcp_synscan sends it: 40-byte IP packets), window 65535. As zmap does, the probe
 *   carries its own validation, no per-probe state is needed to check an answer:
 *       h     = SipHash-2-4(key, dst << 32 | dport << 16), key random per run
 *       sport = SPORT_BASE + (h >> 32) % SPORT_COUNT
 *       ISN   = h & 0xffffffff
 *   (one keyed hash of (dst, dport) gives both, so the ISN is a keyed function of
 *   (dst, dport, sport) too; fastping's ICMP cookies are the same SipHash-2-4.)
 *   An answer from A:P to 127.0.0.1:S is valid when A is a target, P == PORT,
 *   S == sport(A) and ack == ISN(A) + 1 (RFC 9293 3.10.7.1: a SYN takes one sequence
 *   number, so both the SYN-ACK and the RST of a closed port acknowledge ISN + 1).
 *   SYN-ACK = open, RST = closed; a second valid answer of a target is a duplicate.
 *
 *   A raw TCP socket receives a copy of every TCP packet of the host (raw(7)): our own
 *   SYNs looped back, the kernel's RSTs to the SYN-ACKs (127.0.0.1 has no socket on the
 *   source port, so the local kernel resets each half-open connection at once), every
 *   other connection. bind() keeps only packets to 127.0.0.1, and a classic BPF filter
 *   (SO_ATTACH_FILTER) keeps only those to our source-port range with SYN+ACK or RST.
 *
 * It prints one RESULT line: sent, open, closed, duplicates, invalid answers, kernel
 * receive-buffer drops (SO_MEMINFO SK_MEMINFO_DROPS), send time, wall time, and
 * pps = answered targets / wall; with -T 1 also RTT median/p99 from kernel stamps.
 *
 * usage: syn_ref [-n N] [-a BASE] [-p PORT] [-b BATCH] [-T 0|1] [-t TIMEOUT_MS]
 *                [-s SPORT_BASE] [-S SPORT_COUNT]
 *   -T 1  SO_TIMESTAMPING TX+RX software stamps, OPT_ID | OPT_TSONLY, each message
 *         keyed by SCM_TS_OPT_ID = its probe's index (Linux >= 6.13); the error queue is
 *         drained before the normal queue. -T 0 (default): the plain loop.
 *   -t    the final wait for stragglers after the last send (default 1000 ms)
 * Loopback only: every target must be inside 127.0.0.0/8 (refused otherwise).
 * Root (CAP_NET_RAW, and CAP_NET_ADMIN for SO_RCVBUFFORCE).
 * Build: gcc -O2 -o syn_ref syn_ref.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/filter.h>
#include <linux/net_tstamp.h>
#include <linux/sock_diag.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SCM_TS_OPT_ID
#define SCM_TS_OPT_ID 81 /* <asm-generic/socket.h>, Linux 6.13 */
#endif

/* TCP header, RFC 9293 section 3.1 (no options: data offset 5)
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-------------------------------+-------------------------------+
 * |          Source Port          |       Destination Port        |
 * +-------------------------------+-------------------------------+
 * |                        Sequence Number                        |
 * +---------------------------------------------------------------+
 * |                    Acknowledgment Number                      |
 * +-------+-------+-+-+-+-+-+-+-+-+-------------------------------+
 * |  Data |       |C|E|U|A|P|R|S|F|                               |
 * | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
 * +-------+-------+-+-+-+-+-+-+-+-+-------------------------------+
 * |           Checksum            |         Urgent Pointer        |
 * +-------------------------------+-------------------------------+ */
#define TCP_SPORT_OFFSET 0
#define TCP_DPORT_OFFSET 2
#define TCP_SEQ_OFFSET 4
#define TCP_ACK_OFFSET 8
#define TCP_DOFF_OFFSET 12
#define TCP_FLAGS_OFFSET 13
#define TCP_WINDOW_OFFSET 14
#define TCP_CSUM_OFFSET 16
#define TCP_HDR_LEN 20
#define TH_RST 0x04
#define TH_SYN 0x02
#define TH_ACK 0x10
#define IP_SRC_OFFSET 12
#define IPPROTO_TCP_NUM 6

#define MAXB 1024
#define CTRL 128
#define MAX_SEND_RETRIES 1000000L /* ENOBUFS/EAGAIN retries before giving up */
#define MAX_SEND_S 120.0           /* the send loop stops after this, whatever is left */

static int fd, N, B = 64, timeout_ms = 1000, tstamp = 0;
static uint32_t base, src_addr;
static uint16_t port, sport_base = 32768, sport_count = 16384;
static uint64_t k0, k1;
static uint8_t *seen;
static int64_t *tx_ns, *rtt_ns;
static long n_open, n_closed, n_dup, n_invalid, tx_stamps, tx_unknown, timed;

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
#define SIPROUND do { \
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32); \
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32); } while (0)

/* SipHash-2-4 of one 8-byte message (Aumasson & Bernstein 2012), as fastping's core */
static uint64_t siphash_u64(uint64_t m) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)8 << 56;
    v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
    v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* the cookie of target address dst (host order): source port and ISN */
static void cookie(uint32_t dst, uint16_t *sport, uint32_t *isn) {
    uint64_t h = siphash_u64(((uint64_t)dst << 32) | ((uint64_t)port << 16));
    *sport = (uint16_t)(sport_base + (h >> 32) % sport_count);
    *isn = (uint32_t)h;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xffff); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

/* TCP checksum over the IPv4 pseudo-header (RFC 9293 3.1: source, destination, zero,
 * protocol, TCP length) and the segment, in 16-bit big-endian words read byte by byte */
static uint16_t tcp_csum(uint32_t s, uint32_t d, const uint8_t *seg, int len) {
    uint32_t sum = (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + IPPROTO_TCP_NUM + (uint32_t)len;
    int i;
    for (i = 0; i + 1 < len; i += 2) sum += get16(seg + i);
    if (i < len) sum += (uint32_t)seg[i] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void build_syn(uint8_t *p, uint32_t dst) {
    uint16_t sp; uint32_t isn;
    cookie(dst, &sp, &isn);
    memset(p, 0, TCP_HDR_LEN);
    put16(p + TCP_SPORT_OFFSET, sp);
    put16(p + TCP_DPORT_OFFSET, port);
    put32(p + TCP_SEQ_OFFSET, isn);
    p[TCP_DOFF_OFFSET] = (TCP_HDR_LEN / 4) << 4;
    p[TCP_FLAGS_OFFSET] = TH_SYN;
    put16(p + TCP_WINDOW_OFFSET, 65535);
    put16(p + TCP_CSUM_OFFSET, tcp_csum(src_addr, dst, p, TCP_HDR_LEN));
}

static struct mmsghdr rmsg[MAXB];
static struct iovec riov[MAXB];
static struct sockaddr_in rsrc[MAXB];
static uint8_t rbuf[MAXB][256];
static uint8_t rctl[MAXB][CTRL];

static int64_t cmsg_ts(struct msghdr *h, struct sock_extended_err **ee) {
    int64_t t = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) {
            struct timespec ts[3];
            memcpy(ts, CMSG_DATA(c), sizeof ts);
            t = (int64_t)ts[0].tv_sec * 1000000000LL + ts[0].tv_nsec;
        } else if (ee && c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) {
            *ee = (struct sock_extended_err *)CMSG_DATA(c);
        }
    }
    return t;
}

/* one answer (an IPv4 packet with its header, as raw(7) delivers it) */
static void answer(const uint8_t *p, int len, struct msghdr *h) {
    int ihl = (p[0] & 15) * 4;
    if (len < ihl + TCP_HDR_LEN) { n_invalid++; return; }
    const uint8_t *t = p + ihl;
    uint32_t from = get32(p + IP_SRC_OFFSET), k = from - base;
    if (k >= (uint32_t)N || get16(t + TCP_SPORT_OFFSET) != port) { n_invalid++; return; }
    uint16_t sp; uint32_t isn;
    cookie(from, &sp, &isn);
    if (get16(t + TCP_DPORT_OFFSET) != sp || get32(t + TCP_ACK_OFFSET) != isn + 1) { n_invalid++; return; }
    if (seen[k]) { n_dup++; return; }
    seen[k] = 1;
    uint8_t fl = t[TCP_FLAGS_OFFSET];
    if (fl & TH_RST) n_closed++;
    else if ((fl & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)) n_open++;
    else { seen[k] = 0; n_invalid++; return; }  /* the filter passes no other kind */
    if (tstamp) {
        int64_t rx = cmsg_ts(h, NULL);
        if (rx >= 0 && tx_ns[k] > 0) { rtt_ns[k] = rx - tx_ns[k]; timed++; }
    }
}

static int recv_batch(int flags) {
    for (int i = 0; i < B; i++) {
        riov[i].iov_base = rbuf[i]; riov[i].iov_len = sizeof rbuf[i];
        rmsg[i].msg_hdr = (struct msghdr){ .msg_name = &rsrc[i], .msg_namelen = sizeof rsrc[i],
            .msg_iov = &riov[i], .msg_iovlen = 1, .msg_control = rctl[i],
            .msg_controllen = tstamp ? CTRL : 0 };
    }
    int r = recvmmsg(fd, rmsg, B, flags, NULL);
    if (r <= 0) return r;
    for (int i = 0; i < r; i++) {
        struct msghdr *h = &rmsg[i].msg_hdr;
        if (flags & MSG_ERRQUEUE) {           /* a TX timestamp: ee_data names the probe */
            struct sock_extended_err *ee = NULL;
            int64_t t = cmsg_ts(h, &ee);
            if (!ee || ee->ee_origin != SO_EE_ORIGIN_TIMESTAMPING || t < 0) { tx_unknown++; continue; }
            if (ee->ee_data < (uint32_t)N) { tx_ns[ee->ee_data] = t; tx_stamps++; } else tx_unknown++;
            continue;
        }
        answer(rbuf[i], (int)rmsg[i].msg_len, h);
    }
    return r;
}

/* the error queue first: every TX stamp queued so far is read before the answers */
static void drain(void) {
    if (tstamp) while (recv_batch(MSG_DONTWAIT | MSG_ERRQUEUE) > 0) ;
    while (recv_batch(MSG_DONTWAIT) > 0) ;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int opt; const char *basestr = "127.16.0.0";
    long p = 8080, sb = sport_base, sc = sport_count;
    N = 65536;
    while ((opt = getopt(argc, argv, "n:a:p:b:T:t:s:S:")) != -1) switch (opt) {
        case 'n': N = atoi(optarg); break;
        case 'a': basestr = optarg; break;
        case 'p': p = atol(optarg); break;
        case 'b': B = atoi(optarg); break;
        case 'T': tstamp = atoi(optarg); break;
        case 't': timeout_ms = atoi(optarg); break;
        case 's': sb = atol(optarg); break;
        case 'S': sc = atol(optarg); break;
        default: fprintf(stderr, "bad args\n"); return 2;
    }
    if (N < 1 || N > (1 << 24) || B < 1 || B > MAXB || timeout_ms < 0 || timeout_ms > 60000 ||
        p < 1 || p > 65535 || sc < 1 || sb < 1 || sb + sc > 65536) {
        fprintf(stderr, "bad args: -n 1..16777216, -b 1..%d, -t 0..60000, -p 1..65535, "
                "-s/-S a port range inside 1..65535\n", MAXB);
        return 2;
    }
    port = (uint16_t)p; sport_base = (uint16_t)sb; sport_count = (uint16_t)sc;
    if (port >= sport_base && port < sport_base + sport_count) {
        /* the kernel's RSTs to our SYN-ACKs go to PORT: they would pass the filter */
        fprintf(stderr, "-p %u is inside the source-port range %u..%u\n", port, sport_base,
                sport_base + sport_count - 1);
        return 2;
    }
    struct in_addr ba;
    if (!inet_aton(basestr, &ba)) { fprintf(stderr, "bad address %s\n", basestr); return 2; }
    base = ntohl(ba.s_addr);
    if ((base >> 24) != 127 || (uint64_t)base + (uint64_t)N - 1 > 0x7fffffffULL) {
        fprintf(stderr, "refusing targets outside 127.0.0.0/8\n"); return 2;
    }
    src_addr = 0x7f000001; /* 127.0.0.1 */
    if (getrandom(&k0, sizeof k0, 0) != sizeof k0 || getrandom(&k1, sizeof k1, 0) != sizeof k1) {
        perror("getrandom"); return 1;
    }
    seen = calloc(N, 1); tx_ns = calloc(N, 8); rtt_ns = calloc(N, 8);
    if (!seen || !tx_ns || !rtt_ns) { perror("calloc"); return 1; }

    fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_TCP);
    if (fd < 0) { perror("socket"); return 1; }
    struct sockaddr_in me = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(src_addr) };
    if (bind(fd, (struct sockaddr *)&me, sizeof me)) { perror("bind 127.0.0.1"); return 1; }
    int rb = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb)) perror("SO_RCVBUFFORCE");
    /* raw IPv4: the packet starts at the IP header; X = its length. Accept destination
     * port in [sport_base, sport_base + sport_count) with RST, or with SYN and ACK. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),                           /* 0 X = 4*(ihl) */
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, TCP_DPORT_OFFSET),             /* 1 A = dport */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, sport_base, 0, 6),            /* 2 < base: 9 */
        BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, sport_base + sport_count - 1u, 5, 0), /* 3 */
        BPF_STMT(BPF_LD | BPF_B | BPF_IND, TCP_FLAGS_OFFSET),             /* 4 A = flags */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, TH_RST, 2, 0),               /* 5 RST: 8 */
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, TH_SYN | TH_ACK),             /* 6 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TH_SYN | TH_ACK, 0, 1),       /* 7 */
        BPF_STMT(BPF_RET | BPF_K, 0xffff),                                /* 8 accept */
        BPF_STMT(BPF_RET | BPF_K, 0),                                     /* 9 drop */
    };
    struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) { perror("SO_ATTACH_FILTER"); return 1; }
    if (tstamp) {
        int flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_RX_SOFTWARE |
                    SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY;
        if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof flags)) { perror("SO_TIMESTAMPING"); return 1; }
    }
    /* anything queued between socket() and the filter is not ours */
    while (recv(fd, rbuf[0], sizeof rbuf[0], MSG_DONTWAIT) > 0) ;

    static struct mmsghdr sm[MAXB]; static struct iovec siov[MAXB];
    static struct sockaddr_in dst[MAXB]; static uint8_t spk[MAXB][TCP_HDR_LEN];
    static uint8_t sctl[MAXB][CMSG_SPACE(4)];
    long sent = 0, retries = 0;
    double t0 = now();
    /* packets are built batch by batch inside the timed loop, as a scanner must */
    for (int i = 0; i < N; ) {
        int k = N - i < B ? N - i : B;
        for (int j = 0; j < k; j++) {
            uint32_t d = base + (uint32_t)(i + j);
            build_syn(spk[j], d);
            dst[j] = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(d) };
            siov[j].iov_base = spk[j]; siov[j].iov_len = TCP_HDR_LEN;
            sm[j].msg_hdr = (struct msghdr){ .msg_name = &dst[j], .msg_namelen = sizeof dst[0],
                .msg_iov = &siov[j], .msg_iovlen = 1 };
            if (tstamp) {
                struct cmsghdr *c = (struct cmsghdr *)sctl[j];
                c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_TS_OPT_ID; c->cmsg_len = CMSG_LEN(4);
                uint32_t id = (uint32_t)(i + j);
                memcpy(CMSG_DATA(c), &id, 4);
                sm[j].msg_hdr.msg_control = sctl[j]; sm[j].msg_hdr.msg_controllen = CMSG_SPACE(4);
            }
        }
        int r = sendmmsg(fd, sm, k, 0);
        if (r < 0) {
            if ((errno == EAGAIN || errno == ENOBUFS) && ++retries < MAX_SEND_RETRIES && now() - t0 < MAX_SEND_S) {
                drain(); continue;
            }
            perror("sendmmsg"); break;
        }
        i += r; sent += r;  /* a partial batch: the rest is rebuilt and sent next */
        drain();
        if (now() - t0 > MAX_SEND_S) { fprintf(stderr, "send loop stopped after %.0f s\n", MAX_SEND_S); break; }
    }
    double t1 = now(), deadline = t1 + timeout_ms / 1e3;
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    for (;;) {
        drain();
        double left = deadline - now();
        if (n_open + n_closed >= sent || left <= 0) break;
        poll(&pf, 1, (int)(left * 1e3) + 1);
    }
    double t2 = now();
    uint32_t mi[SK_MEMINFO_VARS] = {0}; socklen_t ml = sizeof mi;
    getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mi, &ml);
    long answered = n_open + n_closed;
    printf("RESULT sent=%ld open=%ld closed=%ld dup=%ld invalid=%ld drops=%u send_s=%.4f wall_s=%.4f "
           "pps=%.0f send_pps=%.0f n=%d batch=%d port=%u tstamp=%d retries=%ld",
           sent, n_open, n_closed, n_dup, n_invalid, mi[SK_MEMINFO_DROPS], t1 - t0, t2 - t0,
           answered / (t2 - t0), sent / (t1 - t0), N, B, port, tstamp, retries);
    if (tstamp) {
        int64_t *v = malloc(sizeof *v * (timed ? timed : 1)); long m = 0;
        for (int i = 0; i < N && v; i++) if (seen[i] && rtt_ns[i] > 0) v[m++] = rtt_ns[i];
        qsort(v, m, sizeof *v, cmp64);
        printf(" tx_stamps=%ld tx_unknown=%ld timed=%ld rtt_med_us=%.2f rtt_p99_us=%.2f",
               tx_stamps, tx_unknown, timed, m ? v[m / 2] / 1e3 : 0.0,
               m ? v[(long)(m * 0.99)] / 1e3 : 0.0);
        free(v);
    }
    printf("\n");
    close(fd);
    return 0;
}
