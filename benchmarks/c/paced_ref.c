/* Paced C reference for the engine benchmark: the kernel's cost of probing N
 * loopback targets every INTERVAL the way a monitor does (a tick every TICK sends
 * the targets due in it), with nothing around it.
 *
 * /work/shared/bench/mmsg_ceiling.c sends everything in one burst, which keeps the
 * kernel's code and data hot; spread over ticks the same probes cost more per probe
 * (each tick starts cold). This program is that burst reference, paced: raw socket,
 * ICMP_FILTER, sendmmsg batches of 64, a recvmmsg drain after every batch, an
 * absolute-time sleep between ticks. Replies are counted, not matched.
 *
 * -T 1: the same kernel timestamping fastping does (SO_TIMESTAMPING TX+RX software
 * stamps, OPT_ID|OPT_TSONLY, each packet keyed with SCM_TS_OPT_ID when the kernel takes
 * it, the error queue drained before the replies after every batch, RX stamps read
 * from the control messages): what the kernel alone charges for timing every probe.
 *
 * usage: paced_ref [-n N] [-a BASE] [-i INTERVAL_MS] [-k TICK_MS] [-d SECONDS] [-T 0|1]
 *   defaults: 10000 targets from 127.2.0.1, 1000 ms interval, 10 ms tick, 10 s
 *   prints: RESULT sent=S replies=R cpu_user_s=U cpu_sys_s=Y wall_s=W
 * Loopback only: BASE must be inside 127.0.0.0/8 (refused otherwise).
 * Build: gcc -O2 -o paced_ref paced_ref.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/icmp.h>
#include <linux/net_tstamp.h>
#include <netinet/ip.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 56
#define B 64
#ifndef SCM_TS_OPT_ID
#define SCM_TS_OPT_ID 81
#endif
#define CTRL 128

static int fd, tstamp;
static long replies, tx_stamps, rx_stamped;
static struct mmsghdr rmsg[256];
static struct iovec riov[256];
static struct sockaddr_in rsrc[256];
static uint8_t rbuf[256][256];
static uint8_t rctl[256][CTRL];

static long count_stamps(int r) {
    long k = 0;
    for (int i = 0; i < r; i++)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg[i].msg_hdr); c; c = CMSG_NXTHDR(&rmsg[i].msg_hdr, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) k++;
    return k;
}

static int recv_batch(int flags) {
    for (int i = 0; i < 256; i++) {
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = sizeof rbuf[i];
        rmsg[i].msg_hdr = (struct msghdr){.msg_name = &rsrc[i], .msg_namelen = sizeof rsrc[i],
                                          .msg_iov = &riov[i], .msg_iovlen = 1,
                                          .msg_control = tstamp ? rctl[i] : NULL,
                                          .msg_controllen = tstamp ? CTRL : 0};
    }
    return recvmmsg(fd, rmsg, 256, MSG_DONTWAIT | flags, NULL);
}

static uint16_t csum(const void *p, int len) {
    const uint16_t *w = p;
    uint32_t s = 0;
    for (; len > 1; len -= 2) s += *w++;
    if (len) s += *(const uint8_t *)w;
    s = (s >> 16) + (s & 0xffff);
    s += s >> 16;
    return (uint16_t)~s;
}

static void drain(void) {
    int r;
    if (tstamp)     /* the TX stamps first, as fastping reads them */
        while ((r = recv_batch(MSG_ERRQUEUE)) > 0) {
            tx_stamps += count_stamps(r);
            if (r < 256) break;
        }
    while ((r = recv_batch(0)) > 0) {
        replies += r;
        if (tstamp) rx_stamped += count_stamps(r);
        if (r < 256) break;
    }
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec * 1e-6; }

int main(int argc, char **argv) {
    int n = 10000, interval_ms = 1000, tick_ms = 10, c;
    double duration_s = 10;
    const char *basestr = "127.2.0.1";
    while ((c = getopt(argc, argv, "n:a:i:k:d:T:")) != -1) {
        switch (c) {
        case 'n': n = atoi(optarg); break;
        case 'a': basestr = optarg; break;
        case 'i': interval_ms = atoi(optarg); break;
        case 'k': tick_ms = atoi(optarg); break;
        case 'd': duration_s = atof(optarg); break;
        case 'T': tstamp = atoi(optarg); break;
        default: fprintf(stderr, "usage: paced_ref [-n N] [-a BASE] [-i MS] [-k MS] [-d S] [-T 0|1]\n"); return 2;
        }
    }
    struct in_addr a;
    if (inet_pton(AF_INET, basestr, &a) != 1) { fprintf(stderr, "bad address %s\n", basestr); return 2; }
    uint32_t base = ntohl(a.s_addr);
    if (n < 1 || (base >> 24) != 127 || ((base + (uint32_t)n - 1) >> 24) != 127 || tick_ms < 1 ||
        interval_ms < tick_ms || duration_s <= 0 || duration_s > 600) {
        fprintf(stderr, "loopback targets only (127.0.0.0/8), 1 <= tick <= interval, 0 < d <= 600\n");
        return 2;
    }
    fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd < 0) { perror("socket (needs root)"); return 1; }
    struct icmp_filter f = {.data = ~(1U << ICMP_ECHOREPLY)};
    setsockopt(fd, SOL_RAW, ICMP_FILTER, &f, sizeof f);
    int rb = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb);
    if (tstamp) {
        int fl = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_RX_SOFTWARE |
                 SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY;
        if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &fl, sizeof fl) != 0) {
            perror("SO_TIMESTAMPING");
            return 1;
        }
    }
    static uint8_t sctl[B][CMSG_SPACE(sizeof(uint32_t))];
    uint32_t key = 0;

    static uint8_t pkt[B][8 + PAYLOAD];
    static struct sockaddr_in dst[B];
    static struct iovec iov[B];
    static struct mmsghdr msg[B];
    uint16_t ident = (uint16_t)getpid();
    int ticks_per_round = interval_ms / tick_ms;
    long sent = 0;
    uint16_t seq = 0;
    struct timespec next, start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    next = start;
    long total_ticks = (long)(duration_s * 1000 / tick_ms);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    for (long k = 0; k < total_ticks; k++) {
        /* the targets of this tick: slot i is due when i % ticks_per_round == k % ticks_per_round
         * (spread evenly, as the engine's phases are) */
        int phase = (int)(k % ticks_per_round), built = 0;
        for (int i = phase; i < n; i += ticks_per_round) {
            uint8_t *p = pkt[built];
            struct icmphdr *h = (struct icmphdr *)p;
            memset(p, 0, sizeof pkt[0]);
            h->type = ICMP_ECHO;
            h->un.echo.id = htons(ident);
            h->un.echo.sequence = htons(seq++);
            memcpy(p + 8, &i, sizeof i);
            h->checksum = csum(p, sizeof pkt[0]);
            dst[built] = (struct sockaddr_in){.sin_family = AF_INET,
                                              .sin_addr.s_addr = htonl(base + (uint32_t)i)};
            iov[built] = (struct iovec){.iov_base = p, .iov_len = sizeof pkt[0]};
            msg[built].msg_hdr = (struct msghdr){.msg_name = &dst[built], .msg_namelen = sizeof dst[0],
                                                 .msg_iov = &iov[built], .msg_iovlen = 1};
            if (tstamp) {   /* the packet's own key for its TX stamp (Linux 6.13+) */
                struct cmsghdr *cm = (struct cmsghdr *)sctl[built];
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_TS_OPT_ID;
                cm->cmsg_len = CMSG_LEN(sizeof key);
                memcpy(CMSG_DATA(cm), &key, sizeof key);
                key++;
                msg[built].msg_hdr.msg_control = sctl[built];
                msg[built].msg_hdr.msg_controllen = sizeof sctl[built];
            }
            if (++built == B || i + ticks_per_round >= n) {
                int off = 0;
                while (off < built) {
                    int r = sendmmsg(fd, msg + off, built - off, 0);
                    if (r < 0) {
                        if (errno == EINTR) continue;
                        perror("sendmmsg");
                        return 1;
                    }
                    off += r;
                }
                sent += built;
                built = 0;
                drain();
            }
        }
        next.tv_nsec += (long)tick_ms * 1000000L;
        while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        drain();
    }
    getrusage(RUSAGE_SELF, &r1);
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("RESULT tstamp=%d sent=%ld replies=%ld tx_stamps=%ld rx_stamped=%ld cpu_user_s=%.3f "
           "cpu_sys_s=%.3f wall_s=%.3f\n", tstamp, sent, replies, tx_stamps, rx_stamped,
           tv(r1.ru_utime) - tv(r0.ru_utime), tv(r1.ru_stime) - tv(r0.ru_stime),
           (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) * 1e-9);
    return 0;
}
