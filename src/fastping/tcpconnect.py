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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

# the core's event kinds (one numbering: results.EventKind) and its slot_stats row
from .results import (
    EV_CLOSED,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIMEOUT,
    EV_UNREACHABLE,
    CoreEvent,
    SlotStats,
)

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


# ---------------------------------------------------------------- the engine's socket
# (issue 17: ``fastping monitor`` / MonitoringEngine with TCP targets and no
# CAP_NET_RAW, or mode="connect") -- the core's engine contract (the methods
# engine.IcmpSocketLike names) on connect() probes: one non-blocking socket per probe
# in flight, all on one epoll whose descriptor the event loop watches.

_LOGGED_KINDS = (EV_REPLY, EV_TIMEOUT, EV_CLOSED)  # what the core logs (and quiet mode hides)
_CONNECT_OPTIONS = ("source", "ttl", "tos", "log_max")


def _raise_nofile() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every probe in flight is a
    descriptor (a monitor of N targets with window W may hold N x W)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and soft != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Slot:
    __slots__ = (
        "address", "port", "sent", "received", "late", "timeouts", "unreachable",
        "send_errors", "closed", "min_ns", "max_ns", "sum_ns", "sumsq", "jit_ns",
        "last_rtt_ns", "last_kind", "last_t_ns", "next_serial", "timeout_ns", "out",
        "last_errno", "hist", "hist_sum",
    )  # fmt: skip

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        # SlotStats' counts (a connect() probe has no duplicate, no time exceeded)
        self.sent = self.received = self.late = self.timeouts = 0
        self.unreachable = self.send_errors = 0
        self.closed = 0
        self.min_ns = self.max_ns = self.sum_ns = self.jit_ns = 0
        self.sumsq = 0.0
        self.last_rtt_ns = 0
        self.last_kind = -1
        self.last_t_ns = 0
        self.next_serial = 0
        self.timeout_ns = 0  # 0: none of its own
        self.out: list[int] = []  # fds of its probes in flight, oldest first
        self.last_errno = 0
        self.hist: list[int] | None = None  # open answers per RTT bucket (set_rtt_buckets)
        self.hist_sum = 0


class ConnectSocket:
    """TCP probes timed by non-blocking ``connect()``, with the engine's socket API
    (``TcpSocket``'s, so the engine needs no branch for it): ``send(slots)`` starts
    one connect() per slot, the handshake's end is its outcome. SYN-ACK (SO_ERROR
    0) = EV_REPLY, ECONNREFUSED = EV_CLOSED (with its RTT), EHOSTUNREACH /
    ENETUNREACH / EACCES = EV_UNREACHABLE (errno kept, no ICMP type, code or router),
    no answer = EV_TIMEOUT at ``expire``. Every socket is closed with SO_LINGER 0 (a
    RST: no data, no TIME_WAIT, nothing half-open). A connect() that fails at once
    (no route, no descriptor left: EMFILE) is EV_SEND_ERROR with its errno. RTTs are
    user-space timing (from just before connect() to the epoll wakeup that reports
    it) and carry no TTL. ``timing`` is "connect" (TcpSocket has none: raw)."""

    timing = "connect"
    kind = "tcp"

    def __init__(
        self,
        family: int = socket.AF_INET,
        *,
        window: int = 1,
        source: str | None = None,
        ttl: int | None = None,
        tos: int | None = None,
        log_max: int = 4_000_000,
    ) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family {family!r}: AF_INET or AF_INET6")
        if not 1 <= window <= 64:
            raise ValueError(f"window {window} must be 1..64 probes in flight per slot")
        if ttl is not None and not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl} must be 1..255")
        if tos is not None and not 0 <= tos <= 255:
            raise ValueError(f"tos {tos} must be 0..255")
        if source is not None:
            socket.inet_pton(family, source)  # a numeric address of the family, or OSError
        _raise_nofile()
        self.family = family
        self.window = window
        self.source = source
        self.ttl, self.tos = ttl, tos
        self.log_max = log_max
        self._bounds: list[int] = []  # set_rtt_buckets' bounds in ns ([]: off)
        self._ep = select.epoll()
        self._slots: list[_Slot | None] = []
        self._free: list[int] = []
        # fd -> (socket, slot, serial, t0 perf_counter ns)
        self._live: dict[int, tuple[socket.socket, int, int, int]] = {}
        self._log_mode = 0
        self._log: list[tuple[int, float, float | None, int, int]] = []  # slot, t, rtt, seq, code
        self._c = dict.fromkeys(
            ("sent", "received", "duplicates", "late", "timeouts", "unreachable",
             "time_exceeded", "send_errors", "closed", "log_dropped", "socket_errors"),
            0,
        )  # fmt: skip
        self._lat_n = self._lat_sum = self._lat_max = 0
        self._lat_hist = [0] * 240
        self._closed = False

    # -- the socket --------------------------------------------------------------
    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock, *_ in self._live.values():
            sock.close()
        self._live.clear()
        self._ep.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ConnectSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots -------------------------------------------------------------------
    def add_target(self, address: str, port: int = 0) -> int:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} must be 1..65535 (a TCP probe needs a port)")
        try:
            socket.inet_pton(self.family, address.split("%", 1)[0])
        except OSError:
            fam = "IPv4" if self.family == socket.AF_INET else "IPv6"
            raise ValueError(
                f"{address!r} is not a numeric {fam} address (resolve names first)"
            ) from None
        st = _Slot(address, port)
        if self._bounds:
            st.hist = [0] * (len(self._bounds) + 1)
        if self._free:
            slot = self._free.pop()
            self._slots[slot] = st
        else:
            slot = len(self._slots)
            self._slots.append(st)
        return slot

    def _slot(self, slot: int) -> _Slot:
        st = self._slots[slot] if 0 <= slot < len(self._slots) else None
        if st is None:
            raise KeyError(f"slot {slot} is not in use")
        return st

    def remove_target(self, slot: int) -> None:
        st = self._slot(slot)
        for fd in st.out:  # forgotten, as the core does (the engine expires first)
            self._drop(fd)
        self._slots[slot] = None
        self._free.append(slot)

    def set_slot_timeout(self, slot: int, timeout_s: float) -> None:
        if not timeout_s >= 0:
            raise ValueError(f"timeout_s {timeout_s} must be >= 0 seconds (0: none)")
        self._slot(slot).timeout_ns = int(timeout_s * 1e9)

    def slot_address(self, slot: int) -> str:
        return self._slot(slot).address

    def slot_port(self, slot: int) -> int:
        return self._slot(slot).port

    def slot_closed(self, slot: int) -> int:
        return self._slot(slot).closed

    def slot_stats(self, slot: int) -> SlotStats:
        st = self._slot(slot)
        recv = st.received
        return SlotStats(
            st.sent, recv, 0, st.late, st.timeouts, st.unreachable, 0, st.send_errors,
            st.min_ns, st.max_ns, st.sum_ns, st.sumsq, st.jit_ns, recv - 1 if recv > 1 else 0,
            0, 0, 0, None, recv,
        )  # fmt: skip

    def set_rtt_buckets(self, bounds_ns: Iterable[int]) -> None:
        """Per-slot histograms of open answers' RTTs (the core's set_rtt_buckets)."""
        b = [int(x) for x in bounds_ns]
        if len(b) > 4096:
            raise ValueError(f"{len(b)} RTT buckets: give at most 4096")
        if any(x <= 0 for x in b) or any(y <= x for x, y in zip(b, b[1:], strict=False)):
            raise ValueError(f"RTT bucket bounds {b!r} must be > 0 ns and strictly increasing")
        self._bounds = b
        for st in self._slots:
            if st is not None:
                st.hist = [0] * (len(b) + 1) if b else None
                st.hist_sum = 0

    @property
    def rtt_bounds_ns(self) -> tuple[int, ...]:
        return tuple(self._bounds)

    def slot_buckets(self, slot: int) -> tuple[tuple[int, ...], int] | None:
        st = self._slot(slot)
        return None if st.hist is None else (tuple(st.hist), st.hist_sum)

    def slot_last(self, slot: int) -> tuple[int, int, int]:
        st = self._slot(slot)
        return (-1, 0, 0) if st.last_kind < 0 else (st.last_kind, st.last_rtt_ns, st.last_t_ns)

    # -- the outcome log -----------------------------------------------------------
    def set_log(self, mode: int) -> None:
        if mode not in (0, 1, 2):
            raise ValueError(
                f"log mode {mode} must be 0 (off), 1 (quiet) or 2 (log and return all)"
            )
        self._log_mode = mode

    def forget_last(self, slot: int = -1) -> None:
        for st in self._slots if slot < 0 else [self._slot(slot)]:
            if st is not None:
                st.last_kind = -1

    def take_log(self, slot: int = -1) -> list[tuple[int, bytes]]:
        from .chunk import pack

        if not self._log:
            return []
        take = [r for r in self._log if slot < 0 or r[0] == slot]
        if slot >= 0:
            self._log = [r for r in self._log if r[0] != slot]
        else:
            self._log = []
        by: dict[int, list[tuple[int, float, float | None, int, int]]] = {}
        for r in take:
            by.setdefault(r[0], []).append(r)
        return [
            (s, pack([r[1] for r in rs], [r[2] for r in rs], [r[3] for r in rs],
                     [r[4] for r in rs], [0] * len(rs)))
            for s, rs in sorted(by.items())
        ]  # fmt: skip

    # -- probing ------------------------------------------------------------------
    def send(self, slots: Iterable[int], drain: bool = True, due_ns: int = 0) -> list[CoreEvent]:
        """One connect() per slot now; returns send errors, timeouts of probes pushed
        out of a full window and (with ``drain``) the answers already in."""
        out: list[CoreEvent] = []
        for s in slots:
            st = self._slot(s)
            if len(st.out) >= self.window:  # the oldest gives its place: a timeout
                fd = st.out[0]
                self._drop(fd, lambda sl, se: self._final(out, sl, EV_TIMEOUT, se, 0))
            serial = st.next_serial
            st.next_serial += 1
            if due_ns > 0:
                self._late(time.time_ns() - due_ns)
            self._start(out, s, st, serial)
        if drain:
            out.extend(self.recv())
        return out

    def _start(self, out: list[CoreEvent], s: int, st: _Slot, serial: int) -> None:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:  # EMFILE / ENFILE / ENOBUFS: nothing left the host
            self._send_error(out, s, st, serial, e.errno or 0)
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            if self.family == socket.AF_INET6:  # let ICMPv6 errors abort SYN_SENT
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            _set_ip_options(sock, self.family, self.ttl, self.tos)
            if self.source is not None:
                sock.bind((self.source, 0))
        except OSError as e:
            sock.close()
            self._send_error(out, s, st, serial, e.errno or 0)
            return
        fd = sock.fileno()
        t0 = time.perf_counter_ns()
        rc = sock.connect_ex((st.address, st.port))
        if rc in (0, _errno.EINPROGRESS):
            self._c["sent"] += 1
            st.sent += 1
            self._live[fd] = (sock, s, serial, t0)
            st.out.append(fd)
            self._ep.register(fd, select.EPOLLOUT)
            return
        if rc == _errno.ECONNREFUSED:  # refused within connect() itself: an answer
            self._c["sent"] += 1
            st.sent += 1
            rtt = time.perf_counter_ns() - t0
            sock.close()
            self._answer(out, s, st, serial, rtt, closed=True)
            return
        sock.close()  # no route, no source address...: the SYN never left
        self._send_error(out, s, st, serial, rc)

    def _send_error(self, out: list[CoreEvent], s: int, st: _Slot, serial: int, err: int) -> None:
        self._c["send_errors"] += 1
        st.send_errors += 1
        st.last_errno = err
        st.last_kind = EV_SEND_ERROR
        st.last_t_ns = time.time_ns()
        out.append(CoreEvent(s, EV_SEND_ERROR, serial & 0xFFFF, 0, None, None, None, None, err))

    def recv(self, max_packets: int = 0) -> list[CoreEvent]:
        """The handshakes that ended since the last call (0 = all of them)."""
        out: list[CoreEvent] = []
        if self._closed:
            return out
        for fd, _ev in self._ep.poll(0, maxevents=max_packets if max_packets > 0 else -1):
            t1 = time.perf_counter_ns()
            entry = self._live.get(fd)
            if entry is None:
                continue
            sock, s, serial, t0 = entry
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._drop(fd)
            st = self._slots[s]
            if st is None:
                continue
            outcome = _classify(err)
            if outcome in (OPEN, CLOSED):
                self._answer(out, s, st, serial, t1 - t0, closed=outcome == CLOSED)
            elif outcome == UNREACHABLE:
                self._c["unreachable"] += 1
                st.unreachable += 1
                st.last_errno = err
                st.last_kind = EV_UNREACHABLE
                st.last_t_ns = time.time_ns()
                seq = serial & 0xFFFF
                out.append(CoreEvent(s, EV_UNREACHABLE, seq, 0, None, None, None, None, err))
            elif outcome == FILTERED:  # the kernel gave up first (ETIMEDOUT)
                self._final(out, s, EV_TIMEOUT, serial, 0)
            else:  # another local error
                self._send_error(out, s, st, serial, err)
        return out

    def _answer(
        self, out: list[CoreEvent], s: int, st: _Slot, serial: int, rtt: int, closed: bool
    ) -> None:
        tmo = st.timeout_ns
        if tmo > 0 and rtt > tmo:  # slower than its target's timeout: a timeout, then late
            self._final(out, s, EV_TIMEOUT, serial, 0)
            self._c["late"] += 1
            st.late += 1
            out.append(CoreEvent(s, EV_LATE, serial & 0xFFFF, rtt, None, None, None, None, None))
            return
        recv = st.received
        st.received = recv + 1
        self._c["received"] += 1
        if recv == 0 or rtt < st.min_ns:
            st.min_ns = rtt
        st.max_ns = max(st.max_ns, rtt)
        if recv:
            st.jit_ns += abs(rtt - st.last_rtt_ns)
        st.last_rtt_ns = rtt
        st.sum_ns += rtt
        st.sumsq += float(rtt) * float(rtt)
        if closed:
            self._c["closed"] += 1
            st.closed += 1
        elif st.hist is not None:
            st.hist[bisect_left(self._bounds, rtt)] += 1
            st.hist_sum += rtt
        self._final(out, s, EV_CLOSED if closed else EV_REPLY, serial, rtt)

    def _final(self, out: list[CoreEvent], s: int, kind: int, serial: int, rtt: int) -> None:
        """A reply, closed port or timeout: counted, logged, returned unless quiet mode
        hides it (same kind as the slot's last final outcome), as the core does."""
        st = self._slots[s]
        assert st is not None
        if kind == EV_TIMEOUT:
            self._c["timeouts"] += 1
            st.timeouts += 1
        same = st.last_kind == kind
        st.last_kind = kind
        st.last_t_ns = time.time_ns()
        if self._log_mode:
            if len(self._log) >= self.log_max:
                self._c["log_dropped"] += 1
            else:
                rtt_ms = rtt / 1e6 if kind != EV_TIMEOUT else None
                # a kind is its chunk code (one numbering: results.EventKind)
                self._log.append((s, st.last_t_ns / 1e9, rtt_ms, serial & 0xFFFF, kind))
            if same and self._log_mode == 1:
                return
        out.append(CoreEvent(s, kind, serial & 0xFFFF, rtt, None, None, None, None, None))

    def _drop(self, fd: int, then: Callable[[int, int], None] | None = None) -> None:
        """Close probe ``fd`` (a RST if it got so far) and forget it; ``then(slot,
        serial)`` after."""
        entry = self._live.pop(fd, None)
        if entry is None:
            return
        sock, s, serial, _ = entry
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)
        sock.close()
        st = self._slots[s]
        if st is not None:
            with contextlib.suppress(ValueError):
                st.out.remove(fd)
        if then is not None:
            then(s, serial)

    def expire(self, timeout_s: float) -> list[CoreEvent]:
        """EV_TIMEOUT for every probe in flight longer than ``timeout_s``, or than its
        slot's own timeout when that is shorter; its socket is closed."""
        out: list[CoreEvent] = []
        now = time.perf_counter_ns()
        limit = int(timeout_s * 1e9)
        for fd, (_, s, _serial, t0) in list(self._live.items()):
            st = self._slots[s]
            lim = limit if st is None or not 0 < st.timeout_ns < limit else st.timeout_ns
            if now - t0 >= lim:
                self._drop(fd, lambda sl, se: self._final(out, sl, EV_TIMEOUT, se, 0))
        return out

    def _late(self, ns: int) -> None:
        import bisect

        from .timing import BOUNDS_US

        ns = max(0, ns)
        self._lat_n += 1
        self._lat_sum += ns
        self._lat_max = max(self._lat_max, ns)
        self._lat_hist[bisect.bisect_right(BOUNDS_US, ns // 1000) - 1] += 1

    def lateness(self) -> tuple[int, int, int, tuple[int, ...]]:
        return (self._lat_n, self._lat_sum, self._lat_max, tuple(self._lat_hist))

    def totals(self) -> dict[str, int]:
        c = self._c
        return {
            **c,
            "outstanding": len(self._live),
            "log_pending": len(self._log),
            "rx_drops": 0, "enobufs": 0, "foreign": 0, "malformed": 0, "stale": 0,
            "events_lost": 0,
            "timed_kernel": 0, "timed_user": c["received"],
        }  # fmt: skip
