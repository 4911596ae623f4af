"""Unprivileged TCP probes: non-blocking ``connect()`` timing on many sockets.

Fallback for hosts without CAP_NET_RAW (issue 17). Each target gets a
non-blocking socket with SO_LINGER {on, 0}, so close() sends a RST and leaves
no TIME_WAIT here and no half-open connection there. No data is ever sent.

RTT is connect() timing, includes user-space scheduling: from just before
``connect_ex`` to the EPOLLOUT wakeup that reports the handshake result.

On KeyboardInterrupt every open socket is closed and the interrupt is
re-raised (partial results are not returned).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import resource
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OPEN, CLOSED, FILTERED, UNREACHABLE, ERROR = "open", "closed", "filtered", "unreachable", "error"
log = logging.getLogger(__name__)
_LINGER_RST = struct.pack("ii", 1, 0)
# ICMP(v6) unreachable as the kernel reports it: host/net unreachable, and for
# ICMPv6 administratively prohibited, EACCES. Non-fatal ICMP codes (v4 host
# unreachable, v6 address unreachable) only set a soft error in SYN_SENT: the
# kernel keeps retrying, so those targets end as filtered.
_UNREACH = {_errno.EHOSTUNREACH, _errno.ENETUNREACH, _errno.EACCES}
_FD_RESERVE = 32  # descriptors left for the process itself
_IPV6_RECVERR = 25  # <linux/in6.h>; not exported by the socket module


@dataclass(frozen=True, slots=True)
class ConnectResult:
    address: str
    port: int
    outcome: str
    rtt_ns: int | None
    errno: int | None


def can_raw_tcp() -> bool:
    """Whether a raw IPPROTO_TCP socket can be opened here (CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError:
        return False
    return True


def _fit_concurrency(concurrency: int) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return concurrency
    room = max(1, soft - _FD_RESERVE)
    if room < concurrency:
        log.warning("RLIMIT_NOFILE=%d: concurrency lowered from %d to %d", soft, concurrency, room)
        return room
    return concurrency


def _classify(err: int) -> str:
    if err == 0:
        return OPEN
    if err == _errno.ECONNREFUSED:
        return CLOSED
    if err in _UNREACH:
        return UNREACHABLE
    if err == _errno.ETIMEDOUT:
        return FILTERED
    return ERROR


def connect_sweep(
    targets: Sequence[tuple[str, int]],
    *,
    timeout_s: float = 1.0,
    concurrency: int = 1024,
    rate_pps: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[ConnectResult]:
    """Time a TCP handshake to each (address, port); results in target order.

    RTT is connect() timing, includes user-space scheduling. Outcomes: open
    (SO_ERROR 0), closed (ECONNREFUSED), unreachable (EHOSTUNREACH /
    ENETUNREACH, EACCES from ICMPv6 admin-prohibited), filtered (no answer
    within ``timeout_s``), error (other errno). At most ``concurrency``
    sockets are open at once, lowered with a logged warning to fit
    RLIMIT_NOFILE. The sweep ends within about ``timeout_s`` after the last
    connect().
    """
    if timeout_s <= 0 or concurrency < 1:
        raise ValueError("timeout_s must be > 0 and concurrency >= 1")
    concurrency = _fit_concurrency(concurrency)
    total = len(targets)
    results: list[ConnectResult | None] = [None] * total
    timeout_ns = int(timeout_s * 1e9)
    gap_ns = int(1e9 / rate_pps) if rate_pps > 0 else 0
    ep = select.epoll()
    # fd -> (sock, index, t0); insertion order is connect order, so oldest first
    live: dict[int, tuple[socket.socket, int, int]] = {}
    nxt = 0
    done = 0
    next_send = time.monotonic_ns()

    def finish(fd: int, outcome: str, rtt: int | None, err: int | None) -> None:
        nonlocal done
        sock, i, _ = live.pop(fd)
        with contextlib.suppress(OSError):
            ep.unregister(fd)
        sock.close()
        addr, port = targets[i]
        results[i] = ConnectResult(addr, port, outcome, rtt, err)
        done += 1
        if progress is not None:
            progress(done, total)

    try:
        while done < total:
            now = time.monotonic_ns()
            while nxt < total and len(live) < concurrency and (gap_ns == 0 or now >= next_send):
                addr, port = targets[nxt]
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                sock = socket.socket(fam, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                if fam == socket.AF_INET6:  # let ICMPv6 errors abort SYN_SENT
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                fd = sock.fileno()
                t0 = time.perf_counter_ns()
                rc = sock.connect_ex((addr, port))
                live[fd] = (sock, nxt, t0)
                nxt += 1
                if rc in (0, _errno.EINPROGRESS):
                    ep.register(fd, select.EPOLLOUT)
                else:
                    finish(fd, _classify(rc), None, rc)
                if gap_ns:
                    next_send += gap_ns
                    now = time.monotonic_ns()
            if not live:
                if nxt < total:
                    time.sleep(max(0, next_send - time.monotonic_ns()) / 1e9)
                continue
            oldest = next(iter(live.values()))[2]
            wait_ns = max(0, oldest + timeout_ns - time.perf_counter_ns())
            if nxt < total and gap_ns:
                wait_ns = min(wait_ns, max(0, next_send - time.monotonic_ns()))
            for fd, _ev in ep.poll(wait_ns / 1e9, maxevents=1024):
                t1 = time.perf_counter_ns()
                sock, _, t0 = live[fd]
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                outcome = _classify(err)
                finish(fd, outcome, t1 - t0 if outcome != ERROR else None, err or None)
            t = time.perf_counter_ns()
            while live:
                fd, (_, _, t0) = next(iter(live.items()))
                if t - t0 < timeout_ns:
                    break
                finish(fd, FILTERED, None, None)
    finally:
        for sock, _, _ in live.values():
            sock.close()
        ep.close()
    return [r for r in results if r is not None]
