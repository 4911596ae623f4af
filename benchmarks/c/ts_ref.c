/* Truthful C reference for the sweep: /work/shared/bench/mmsg_ceiling.c's loop (raw
 * socket, sendmmsg batches, a recvmmsg drain after every batch) with every probe timed
 * by the kernel, as fastping's core does it:
 *
 *   SO_TIMESTAMPING = TX_SOFTWARE | RX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY
 *   each message of a sendmmsg batch carries SCM_TS_OPT_ID = its probe's index
 *   (Linux >= 6.13), so the TX timestamp read back from the error queue
 *   (recvmmsg(MSG_ERRQUEUE), ee_data) names its probe whatever else was sent;
 *   -I 0: no per-packet ID, the kernel's own counter (sk_tskey) is trusted instead.
 *   the reply's RX timestamp is SCM_TIMESTAMPING's ts[0] (CLOCK_REALTIME, same clock)
 *   the error queue is drained before the normal queue, so a reply's TX stamp is read
 *   before the reply is matched.
 *
 * It prints one RESULT line: send rate, replies, replies timed by the kernel at both
 * ends, RTT median/p99, and with -T 0 the same loop without any timestamping
 * (mmsg_ceiling's loop, for the cost of timestamping in the same binary).
 *
 * usage: ts_ref [-n N] [-a BASE] [-b BATCH] [-T 0|1] [-I 0|1] [-t TIMEOUT_MS] [-F]
 * Loopback only: BASE must be inside 127.0.0.0/8 (refused otherwise).
 * Build: gcc -O2 -o ts_ref ts_ref.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/filter.h>
#include <linux/icmp.h>
#include <linux/net_tstamp.h>
#include <linux/sock_diag.h>
#include <netinet/ip.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SCM_TS_OPT_ID
#define SCM_TS_OPT_ID 81 /* <asm-generic/socket.h>, Linux 6.13 */
#endif
#define PAYLOAD 56
#define MAXB 1024
#define CTRL 128

static int fd, N, B = 64, timeout_ms = 1000, tstamp = 1, perpkt = 1;
static uint32_t base;
static uint16_t ident;
static int64_t *tx_ns, *rtt_ns;
static uint8_t *seen;
static long got, tx_stamps, tx_unknown, rx_stamped, timed;

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

static uint16_t csum(const void *p, int len) {
    const uint16_t *w = p; uint32_t s = 0;
    for (; len > 1; len -= 2) s += *w++;
    if (len) s += *(const uint8_t *)w;
    s = (s >> 16) + (s & 0xffff); s += s >> 16;
    return (uint16_t)~s;
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

static int recv_batch(int flags) {
    for (int i = 0; i < B; i++) {
        riov[i].iov_base = rbuf[i]; riov[i].iov_len = sizeof rbuf[i];
        rmsg[i].msg_hdr = (struct msghdr){ .msg_name = &rsrc[i], .msg_namelen = sizeof rsrc[i],
            .msg_iov = &riov[i], .msg_iovlen = 1, .msg_control = rctl[i], .msg_controllen = CTRL };
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
        uint8_t *p = rbuf[i]; int ihl = (p[0] & 15) * 4;
        if ((int)rmsg[i].msg_len < ihl + 8) continue;
        struct icmphdr *ic = (struct icmphdr *)(p + ihl);
        if (ic->type != ICMP_ECHOREPLY || ic->un.echo.id != ident) continue;
        uint32_t k = ntohl(rsrc[i].sin_addr.s_addr) - base;
        if (k >= (uint32_t)N || seen[k]) continue;
        seen[k] = 1; got++;
        if (tstamp) {
            int64_t t = cmsg_ts(h, NULL);
            if (t >= 0) rx_stamped++;
            if (t >= 0 && tx_ns[k] > 0) { rtt_ns[k] = t - tx_ns[k]; timed++; }
        }
    }
    return r;
}

/* the error queue first: every TX stamp queued so far is read before the replies */
static void drain(void) {
    if (tstamp) while (recv_batch(MSG_DONTWAIT | MSG_ERRQUEUE) > 0) ;
    while (recv_batch(MSG_DONTWAIT) > 0) ;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int opt, bpf = 0; const char *basestr = "127.1.0.0";
    N = 65536;
    while ((opt = getopt(argc, argv, "n:a:b:T:I:t:F")) != -1) switch (opt) {
        case 'n': N = atoi(optarg); break;
        case 'a': basestr = optarg; break;
        case 'b': B = atoi(optarg); if (B > MAXB) B = MAXB; break;
        case 'T': tstamp = atoi(optarg); break;
        case 'I': perpkt = atoi(optarg); break;
        case 't': timeout_ms = atoi(optarg); break;
        case 'F': bpf = 1; break;
        default: fprintf(stderr, "bad args\n"); return 2;
    }
    base = ntohl(inet_addr(basestr));
    if ((base >> 24) != 127 || ((base + (uint32_t)N - 1) >> 24) != 127) {
        fprintf(stderr, "refusing targets outside 127.0.0.0/8\n"); return 2;
    }
    seen = calloc(N, 1); tx_ns = calloc(N, 8); rtt_ns = calloc(N, 8);
    fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_ICMP);
    if (fd < 0) { perror("socket"); return 1; }
    int rb = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb);
    struct icmp_filter f = { .data = ~(1u << ICMP_ECHOREPLY) };
    setsockopt(fd, SOL_RAW, ICMP_FILTER, &f, sizeof f);
    ident = htons(getpid() & 0xffff);
    if (bpf) {
        struct sock_filter code[] = {
            BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
            BPF_STMT(BPF_LD | BPF_B | BPF_IND, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ICMP_ECHOREPLY, 0, 3),
            BPF_STMT(BPF_LD | BPF_H | BPF_IND, 4),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohs(ident), 0, 1),
            BPF_STMT(BPF_RET | BPF_K, 0xffff),
            BPF_STMT(BPF_RET | BPF_K, 0),
        };
        struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
        setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
    }
    if (tstamp) {
        int flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_RX_SOFTWARE |
                    SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY;
        if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof flags)) { perror("SO_TIMESTAMPING"); return 1; }
    }
    int plen = sizeof(struct icmphdr) + PAYLOAD;
    uint8_t *pk = calloc(N, plen);
    struct sockaddr_in *dst = calloc(N, sizeof *dst);
    for (int i = 0; i < N; i++) {
        struct icmphdr *ic = (struct icmphdr *)(pk + (size_t)i * plen);
        ic->type = ICMP_ECHO; ic->un.echo.id = ident; ic->un.echo.sequence = htons(i & 0xffff);
        ic->checksum = csum(ic, plen);
        dst[i].sin_family = AF_INET; dst[i].sin_addr.s_addr = htonl(base + i);
    }
    struct mmsghdr *sm = calloc(B, sizeof *sm); struct iovec *siov = calloc(B, sizeof *siov);
    uint8_t (*sctl)[CMSG_SPACE(4)] = calloc(B, CMSG_SPACE(4));
    long sent = 0, eagain = 0;
    double t0 = now();
    for (int i = 0; i < N; ) {
        int k = N - i < B ? N - i : B;
        for (int j = 0; j < k; j++) {
            siov[j].iov_base = pk + (size_t)(i + j) * plen; siov[j].iov_len = plen;
            sm[j].msg_hdr = (struct msghdr){ .msg_name = &dst[i + j], .msg_namelen = sizeof dst[0],
                .msg_iov = &siov[j], .msg_iovlen = 1 };
            if (tstamp && perpkt) {
                struct cmsghdr *c = (struct cmsghdr *)sctl[j];
                c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_TS_OPT_ID; c->cmsg_len = CMSG_LEN(4);
                uint32_t id = (uint32_t)(i + j);
                memcpy(CMSG_DATA(c), &id, 4);
                sm[j].msg_hdr.msg_control = sctl[j]; sm[j].msg_hdr.msg_controllen = CMSG_SPACE(4);
            }
        }
        int r = sendmmsg(fd, sm, k, 0);
        if (r < 0) { if (errno == EAGAIN || errno == ENOBUFS) { eagain++; drain(); continue; } perror("sendmmsg"); return 1; }
        i += r; sent += r;
        drain();
    }
    double t1 = now();
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    for (;;) { drain(); if (got >= N) break; if (poll(&pf, 1, timeout_ms) == 0) break; }
    double t2 = now();
    int64_t *v = malloc(sizeof *v * (timed ? timed : 1)); long m = 0;
    for (int i = 0; i < N; i++) if (seen[i] && rtt_ns[i] > 0) v[m++] = rtt_ns[i];
    qsort(v, m, sizeof *v, cmp64);
    uint32_t mi[SK_MEMINFO_VARS] = {0}; socklen_t ml = sizeof mi;
    getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mi, &ml);
    printf("RESULT tool=c-ts tstamp=%d perpkt_id=%d n=%d batch=%d sent=%ld send_s=%.4f send_pps=%.0f "
           "replies=%ld loss=%.2f%% tx_stamps=%ld tx_unknown=%ld rx_stamped=%ld timed=%ld "
           "rtt_med_us=%.2f rtt_p99_us=%.2f total_s=%.4f pps=%.0f retries=%ld sock_drops=%u\n",
           tstamp, perpkt, N, B, sent, t1 - t0, sent / (t1 - t0), got, 100.0 * (N - got) / N,
           tx_stamps, tx_unknown, rx_stamped, timed, m ? v[m / 2] / 1e3 : 0.0,
           m ? v[(long)(m * 0.99)] / 1e3 : 0.0, t2 - t0, got / (t2 - t0), eagain, mi[SK_MEMINFO_DROPS]);
    return 0;
}
