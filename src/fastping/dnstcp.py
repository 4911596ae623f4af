"""DNS over TCP (RFC 7766) for the queries whose UDP answer was truncated: one
non-blocking connection per query, many at once (selectors), each query framed with
its two-byte length, the answer parsed by the C parser and attributed by its ID and
question. Timed apart from the UDP query, in user space (time.perf_counter_ns): the
connect, and the query from its send to the last byte of its answer.

Connections are closed with SO_LINGER 0 (a RST): nothing stays in TIME_WAIT here.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import dnscodec

MAX_ANSWER = 65535 + 2
LINGER_0 = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class TcpQuery:
    server: str
    port: int
    family: int
    name: str
    qtype: str


@dataclass
class TcpAnswer:
    """What the TCP query got: outcome noerror / nxdomain / servfail / refused / rcode /
    truncated (as for UDP), or mismatched (another ID or question), malformed, error
    (``error`` says which: connection refused...), timeout."""

    outcome: str
    rcode: int | None = None
    answers: int | None = None
    min_ttl: int | None = None
    connect_ns: int | None = None
    rtt_ns: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "rcode": self.rcode,
            "answers": self.answers,
            "min_ttl": self.min_ttl,
            "connect_ms": round(self.connect_ns / 1e6, 6) if self.connect_ns is not None else None,
            "rtt_ms": round(self.rtt_ns / 1e6, 6) if self.rtt_ns is not None else None,
            "error": self.error,
        }


@dataclass
class _Conn:
    q: TcpQuery
    sock: socket.socket
    qid: int
    wire: bytes
    t0: int
    deadline: int
    t_sent: int = 0
    connect_ns: int | None = None
    buf: bytearray = field(default_factory=bytearray)


def tcp_queries(
    queries: Sequence[TcpQuery], timeout_s: float = 2.0, concurrency: int = 256
) -> list[TcpAnswer]:
    """Ask each query over TCP, up to ``concurrency`` connections at once; answers in
    order."""
    out: list[TcpAnswer | None] = [None] * len(queries)
    sel = selectors.DefaultSelector()
    pending = list(enumerate(queries))[::-1]
    live: dict[int, tuple[int, _Conn]] = {}
    try:
        while pending or live:
            while pending and len(live) < concurrency:
                i, q = pending.pop()
                c = _open(q, timeout_s)
                if isinstance(c, TcpAnswer):
                    out[i] = c
                    continue
                live[c.sock.fileno()] = (i, c)
                sel.register(c.sock, selectors.EVENT_WRITE)
            _step(sel, live, out)
    finally:
        for _i, c in live.values():
            c.sock.close()
        sel.close()
    return [a if a is not None else TcpAnswer("timeout") for a in out]


def _open(q: TcpQuery, timeout_s: float) -> _Conn | TcpAnswer:
    qid = int.from_bytes(os.urandom(2), "big")
    wire = dnscodec.build_query(qid, q.name, q.qtype, edns=1232)
    s = socket.socket(q.family, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    t0 = time.perf_counter_ns()
    err = s.connect_ex((q.server, q.port))
    if err not in (0, errno.EINPROGRESS):
        s.close()
        return TcpAnswer("error", error=os.strerror(err))
    return _Conn(q, s, qid, wire, t0, t0 + int(timeout_s * 1e9))


def _step(
    sel: selectors.BaseSelector, live: dict[int, tuple[int, _Conn]], out: list[TcpAnswer | None]
) -> None:
    now = time.perf_counter_ns()
    soonest = min((c.deadline for _i, c in live.values()), default=now)
    for key, _mask in sel.select(max(0.0, (soonest - now) / 1e9)):
        i, c = live[key.fd]
        a = _ready(sel, c)
        if a is not None:
            _done(sel, live, out, key.fd, a)
    now = time.perf_counter_ns()
    for fd, (_i, c) in list(live.items()):
        if now >= c.deadline:
            _done(sel, live, out, fd, TcpAnswer("timeout", connect_ns=c.connect_ns))


def _done(
    sel: selectors.BaseSelector,
    live: dict[int, tuple[int, _Conn]],
    out: list[TcpAnswer | None],
    fd: int,
    a: TcpAnswer,
) -> None:
    i, c = live.pop(fd)
    sel.unregister(c.sock)
    c.sock.close()
    out[i] = a


def _ready(sel: selectors.BaseSelector, c: _Conn) -> TcpAnswer | None:
    """Advance one connection: send the query once connected, read the answer."""
    if c.connect_ns is None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return TcpAnswer("error", error=os.strerror(err))
        c.connect_ns = time.perf_counter_ns() - c.t0
        c.t_sent = time.perf_counter_ns()
        try:
            c.sock.sendall(struct.pack("!H", len(c.wire)) + c.wire)  # small: fits the buffer
        except OSError as e:
            return TcpAnswer("error", connect_ns=c.connect_ns, error=e.strerror or str(e))
        sel.modify(c.sock, selectors.EVENT_READ)
        return None
    try:
        chunk = c.sock.recv(MAX_ANSWER - len(c.buf))
    except BlockingIOError:
        return None
    except OSError as e:
        return TcpAnswer("error", connect_ns=c.connect_ns, error=e.strerror or str(e))
    if not chunk:
        return TcpAnswer("error", connect_ns=c.connect_ns, error="closed before the answer")
    c.buf += chunk
    if len(c.buf) < 2 or len(c.buf) < 2 + struct.unpack_from("!H", c.buf)[0]:
        return None
    rtt = time.perf_counter_ns() - c.t_sent
    return _answer(c, bytes(c.buf[2 : 2 + struct.unpack_from("!H", c.buf)[0]]), rtt)


def _answer(c: _Conn, msg: bytes, rtt: int) -> TcpAnswer:
    from ._icmp import dns_parse

    status, f = dns_parse(msg)
    if status != 0 or f is None:
        return TcpAnswer("malformed", connect_ns=c.connect_ns, rtt_ns=rtt)
    qid, _flags, rcode, qname, qtype, qclass, answers, min_ttl, tc = f
    ours = dnscodec.name_wire(c.q.name).lower()
    if (qid != c.qid or qname.lower() != ours or qclass != dnscodec.CLASS_IN
            or qtype != dnscodec.qtype_number(c.q.qtype)):  # fmt: skip
        return TcpAnswer("mismatched", connect_ns=c.connect_ns, rtt_ns=rtt)
    resp = dnscodec.Response(qid, _flags, rcode, qname, qtype, qclass, answers, min_ttl, tc)
    return TcpAnswer(
        dnscodec.outcome(resp), rcode, answers, min_ttl, connect_ns=c.connect_ns, rtt_ns=rtt
    )
