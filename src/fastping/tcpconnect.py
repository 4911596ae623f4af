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
import math
import os
import resource
import select
import socket
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import HostResult

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


def _set_ip_options(sock: socket.socket, fam: int, ttl: int | None, tos: int | None) -> None:
    if fam == socket.AF_INET6:
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        if tos is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        return
    if ttl is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    if tos is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)


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
    ttl: int | None = None,
    tos: int | None = None,
) -> list[ConnectResult]:
    """Time a TCP handshake to each (address, port); results in target order.

    RTT is connect() timing, includes user-space scheduling. Outcomes: open
    (SO_ERROR 0), closed (ECONNREFUSED), unreachable (EHOSTUNREACH /
    ENETUNREACH, EACCES from ICMPv6 admin-prohibited), filtered (no answer
    within ``timeout_s``), error (other errno). At most ``concurrency``
    sockets are open at once, lowered with a logged warning to fit
    RLIMIT_NOFILE. The sweep ends within about ``timeout_s`` after the last
    connect(). ``ttl`` / ``tos``: the SYN's IP TTL (hop limit) and ToS (traffic
    class).
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
                _set_ip_options(sock, fam, ttl, tos)
                fd = sock.fileno()
                t0 = time.perf_counter_ns()
                rc = sock.connect_ex((addr, port))
                live[fd] = (sock, nxt, t0)
                nxt += 1
                if rc in (0, _errno.EINPROGRESS):
                    ep.register(fd, select.EPOLLOUT)
                else:  # failed within connect() itself (refused, no route)
                    outcome = _classify(rc)
                    rtt = time.perf_counter_ns() - t0 if outcome == CLOSED else None
                    finish(fd, outcome, rtt, rc)
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


# ---------------------------------------------------------------- a sweep's worth
# (issue 17: ``fastping sweep --tcp`` without CAP_NET_RAW) -- several rounds of
# connect_sweep over the same pairs, tallied per pair, read back as the raw
# TcpSocket's results are: HostResults, core rows for the compiled formatters.

# _pipeline's SlotRow (includes/slotrow.pxd), native layout: 4 int64, a double,
# 9 uint32, 4 uint8, a uint16, two 16-byte addresses, padding to 8
_ROW = struct.Struct("@4qd9I4BH16s16s6x")
# what the formatters write for an ICMP error without type, code or router; a
# connect() error has none of them, so its errno is written in their place
_NO_ICMP = "unreachable (type 0 code 0) from None"


def unreachable_text(err: int | None) -> str:
    """The error of a pair connect() found unreachable, as HostResult.error says it."""
    why = os.strerror(err) if err else "unreachable"
    return f"unreachable (connect(): {why})"


class Tally:
    """Per pair: what its connect() attempts said over the rounds (the counters of
    the core's slot statistics, same meanings)."""

    def __init__(self, n: int, collect_rtts: bool = False) -> None:
        zero = [0] * n
        self.n = n
        self.sent = array("I", zero)  # attempts made (not counting local errors)
        self.received = array("I", zero)  # open + closed
        self.closed = array("I", zero)
        self.timeouts = array("I", zero)
        self.unreach = array("I", zero)
        self.senderr = array("I", zero)  # connect() failed locally (errno kept)
        self.min_ns = array("q", zero)
        self.max_ns = array("q", zero)
        self.sum_ns = array("q", zero)
        self.jit_ns = array("q", zero)
        self.last_ns = array("q", zero)
        self.sumsq = array("d", zero)
        self.errno = array("i", zero)  # the last error's errno
        self.rtts: list[list[float]] | None = [[] for _ in range(n)] if collect_rtts else None

    def add(self, i: int, r: ConnectResult) -> None:
        if r.outcome == ERROR:
            self.senderr[i] += 1
            self.errno[i] = r.errno or 0
            return
        self.sent[i] += 1
        if r.outcome == FILTERED:
            self.timeouts[i] += 1
        elif r.outcome == UNREACHABLE:
            self.unreach[i] += 1
            self.errno[i] = r.errno or 0
        elif r.rtt_ns is not None:  # open or closed
            self._answer(i, r.rtt_ns, r.outcome == CLOSED)

    def _answer(self, i: int, rtt: int, closed: bool) -> None:
        k = self.received[i]
        self.received[i] = k + 1
        if closed:
            self.closed[i] += 1
        if k == 0 or rtt < self.min_ns[i]:
            self.min_ns[i] = rtt
        if rtt > self.max_ns[i]:
            self.max_ns[i] = rtt
        if k:
            self.jit_ns[i] += abs(rtt - self.last_ns[i])
        self.last_ns[i] = rtt
        self.sum_ns[i] += rtt
        self.sumsq[i] += float(rtt) * float(rtt)
        if self.rtts is not None and not closed:  # as sweep(): the open answers' RTTs
            self.rtts[i].append(rtt / 1e6)

    def error_text(self, i: int) -> str | None:
        if self.unreach[i]:
            return unreachable_text(self.errno[i])
        if self.senderr[i] and not self.received[i]:
            return f"connect() failed: {os.strerror(self.errno[i])}"
        return None

    def host(self, i: int, target: str, address: str) -> HostResult:
        from .results import HostResult

        recv = self.received[i]
        h = HostResult(
            target=target,
            address=address,
            sent=self.sent[i] + self.senderr[i],
            received=recv,
            timeouts=self.timeouts[i],
            unreachable=self.unreach[i],
            send_errors=self.senderr[i],
            user_timed=recv,
            error=self.error_text(i),
        )
        if recv:
            avg = self.sum_ns[i] / recv
            h.min_ms = self.min_ns[i] / 1e6
            h.max_ms = self.max_ns[i] / 1e6
            h.avg_ms = avg / 1e6
            h.stddev_ms = math.sqrt(max(self.sumsq[i] / recv - avg * avg, 0.0)) / 1e6
            h.jitter_ms = self.jit_ns[i] / (recv - 1) / 1e6 if recv > 1 else None
        if self.rtts is not None:
            h.rtts_ms = list(self.rtts[i])
        return h

    def row(self, i: int, packed: bytes, port: int) -> bytes:
        """Pair ``i`` as a core row (SlotRow)."""
        return _ROW.pack(
            self.min_ns[i], self.max_ns[i], self.sum_ns[i], self.jit_ns[i], self.sumsq[i],
            self.sent[i], self.received[i], 0, 0, self.timeouts[i], self.unreach[i], 0,
            self.senderr[i], self.closed[i],
            0, 0, 0, 0, port, packed.ljust(16, b"\0"), bytes(16),
        )  # fmt: skip

    def totals(self) -> dict[str, int]:
        out = {
            "sent": sum(self.sent) + sum(self.senderr),
            "received": sum(self.received),
            "closed": sum(self.closed),
            "timeouts": sum(self.timeouts),
            "unreachable": sum(self.unreach),
            "send_errors": sum(self.senderr),
            "duplicates": 0,
            "late": 0,
            "time_exceeded": 0,
            "timed_kernel": 0,
        }
        out["timed_user"] = out["received"]  # every RTT is connect() timing
        return out


def sweep_rounds(
    pairs: Sequence[tuple[str, int]],
    *,
    count: int = 1,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    rate_pps: float = 0.0,
    concurrency: int = 1024,
    ttl: int | None = None,
    tos: int | None = None,
    collect_rtts: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[Tally, bool]:
    """``count`` rounds of connect_sweep over ``pairs``, a round every
    ``interval_s`` (start to start; a round that takes longer is followed at once).
    Returns the tally and whether Ctrl-C ended it early (the rounds done are kept,
    the round in flight is lost; Ctrl-C in the first round is re-raised).
    ``progress(done, total, answers)``: at most five times a second, and once at
    the end."""
    tally = Tally(len(pairs), collect_rtts)
    total = len(pairs) * count
    shown = [0.0, 0, 0]  # last call's time, attempts done before this round, answers

    def each(done: int, _n: int) -> None:
        now = time.monotonic()
        if progress is not None and now - shown[0] >= 0.2:
            shown[0] = now
            progress(int(shown[1]) + done, total, int(shown[2]))

    t0 = time.monotonic()
    interrupted = False
    for r in range(count):
        try:
            if r:
                time.sleep(max(0.0, t0 + r * interval_s - time.monotonic()))
            res = connect_sweep(
                pairs, timeout_s=timeout_s, concurrency=concurrency, rate_pps=rate_pps,
                progress=each if progress is not None else None, ttl=ttl, tos=tos,
            )  # fmt: skip
        except KeyboardInterrupt:
            if r == 0:  # nothing to report: no pair was probed to the end
                raise
            interrupted = True
            break
        for i, x in enumerate(res):
            tally.add(i, x)
        shown[1] = (r + 1) * len(pairs)
        shown[2] = sum(tally.received)
    if progress is not None:
        progress(int(shown[1]), total, int(shown[2]))
    return tally, interrupted
