"""HTTP(S) checks timed phase by phase, with the time split into path and server.

A check (:class:`HttpCheck`) is one URL and what a good answer looks like. The
runner (:class:`HttpRunner`) resolves the name, and then, for every address the
name has (or only the first, ``all_addresses=False``), connects, shakes hands,
sends the request and reads the answer, stamping each step with the monotonic
clock. Each address gives one :class:`HttpResult`, whose ``outcome`` is exactly one
:class:`HttpOutcome`.

Phases (milliseconds, each the time between two stamps; see docs/http.md)::

    dns       getaddrinfo of the URL's host (0 for an address, or a reused connection)
    connect   connect() start -> the TCP handshake completed (SYN -> SYN-ACK: one RTT)
    tls       ClientHello sent -> handshake completed, certificate verified
    send      the request's bytes handed to the kernel
    wait      request sent -> first byte of the response (one RTT + the server's time)
    transfer  first byte -> end of the body
    redirect  every earlier hop of a redirect chain, whole

    total = redirect + dns + connect + tls + send + wait + transfer

The split uses a network RTT of the same address, from ICMP when the caller has it
(``rtt_ms``: the engine's last reply, or echoes sent by ``fastping http`` during the
check), otherwise the TCP handshake itself (``connect``)::

    server_ms = max(0, wait - rtt)        # the server's own time to the first byte
    path_ms   = total - server_ms         # the network, the TLS crypto, the client

The client is asyncio transports with h11 (the HTTP/1.1 state machine httpcore is
built on): measured against aiohttp and httpx/httpcore it costs the least CPU per
check, and each phase boundary is an event we see ourselves (no hidden pool, the
TCP connect and the TLS handshake apart). HTTP/2 is not spoken (HTTP/1.1 and 1.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import heapq
import ipaddress
import json
import re
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import h11

__all__ = [
    "HttpCheck",
    "HttpOutcome",
    "HttpResult",
    "HttpRunner",
    "HttpScheduler",
    "cert_not_after",
    "split_server_time",
]

USER_AGENT = "fastping-http/1"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY = 1 << 20
_READ = 65536
T = TypeVar("T")


class HttpOutcome(str, enum.Enum):
    """How one check of one address ended. Defined once; the store, metrics and
    report import it."""

    OK = "ok"
    STATUS = "status_mismatch"  # the status is not an expected one
    BODY = "body_mismatch"  # body_regex did not match
    JSON = "json_mismatch"  # json_field missing, or not the expected value
    REDIRECTS = "too_many_redirects"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_NAME = "cert_name_mismatch"  # the certificate is not for this host name
    CERT_CHAIN = "cert_chain_error"  # untrusted / self-signed / incomplete chain
    CERT_EXPIRING = "cert_expiring"  # valid, but expires within cert_min_days
    TLS = "tls_error"  # any other TLS failure (protocol, alert)
    RESOLVE = "resolve_error"
    REFUSED = "connection_refused"
    RESET = "connection_reset"  # RST or EOF before a complete answer
    TIMEOUT = "timeout"  # timeout_phase says in which phase
    PROTOCOL = "protocol_error"  # not HTTP, malformed answer
    ERROR = "error"  # any other local error (errno in ``error``)


# OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) -> our outcomes
_VERIFY_CODES = {
    9: HttpOutcome.CERT_NOT_YET_VALID,  # CERT_NOT_YET_VALID
    10: HttpOutcome.CERT_EXPIRED,  # CERT_HAS_EXPIRED
    62: HttpOutcome.CERT_NAME,  # HOSTNAME_MISMATCH
    64: HttpOutcome.CERT_NAME,  # IP_ADDRESS_MISMATCH
}
CERT_OUTCOMES = frozenset(
    {
        HttpOutcome.CERT_EXPIRED,
        HttpOutcome.CERT_NOT_YET_VALID,
        HttpOutcome.CERT_NAME,
        HttpOutcome.CERT_CHAIN,
    }
)

PHASES = ("dns", "connect", "tls", "send", "wait", "transfer")


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """One URL to check and what counts as a good answer."""

    url: str
    method: str = "GET"
    timeout_s: float = DEFAULT_TIMEOUT_S  # the whole check, every phase together
    interval_s: float = 60.0  # the monitor's period
    follow_redirects: bool = True
    max_redirects: int = 10
    expect_status: tuple[int, ...] = ()  # empty: any 2xx (3xx too when not following)
    body_regex: str | None = None  # re.search over the body (decoded as UTF-8, replace)
    json_field: str | None = None  # dotted path into a JSON body: "db.ok", "items.0.id"
    json_value: Any = None  # when set, the field must equal this (else it must exist)
    verify_tls: bool = True
    ca_file: str | None = None  # trust these CAs instead of the system's
    server_name: str | None = None  # SNI and Host when they differ from the URL's host
    cert_min_days: float = 0.0  # a valid certificate expiring sooner is cert_expiring
    source_address: str | None = None  # bind to this local address
    family: int = 0  # socket.AF_INET / AF_INET6 to check one family only, 0 both
    all_addresses: bool = True  # one result per address of the name (else the first)
    reuse_connection: bool = False  # keep the connection open for the next run
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    max_body_bytes: int = DEFAULT_MAX_BODY
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        u = urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{self.url!r}: give an http:// or https:// URL with a host")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s {self.timeout_s!r}: give a positive number of seconds")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if self.body_regex is not None:
            re.compile(self.body_regex)  # re.error (a ValueError) names the problem

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass(slots=True)
class HttpResult:
    """One check of one address. Times in ms; ``None`` for a phase not reached."""

    url: str
    address: str | None
    outcome: HttpOutcome
    ts: float = 0.0  # wall-clock start (Unix seconds)
    status: int | None = None
    http_version: str | None = None
    redirects: int = 0
    final_url: str | None = None
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    send_ms: float | None = None
    wait_ms: float | None = None
    transfer_ms: float | None = None
    redirect_ms: float = 0.0
    total_ms: float | None = None
    body_bytes: int = 0
    tls_version: str | None = None
    cert_not_after: float | None = None  # leaf (or earliest of the chain) expiry, Unix s
    cert_error: str | None = None
    source: str | None = None  # the local address the connection came from
    reused: bool = False  # the connection came from the previous run
    timeout_phase: str | None = None
    error: str | None = None
    rtt_ms: float | None = None  # the network RTT used for the split
    rtt_source: str | None = None  # "icmp", "tcp" (kernel's SYN RTT), "connect" (the phase)
    tcp_rtt_ms: float | None = None  # the kernel's RTT of the TCP handshake (TCP_INFO)
    server_ms: float | None = None
    path_ms: float | None = None
    labels: tuple[tuple[str, str], ...] = ()
    # between the runner's steps only (not part of the result's meaning)
    _location: str | None = None
    _hop_start_ns: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome in (HttpOutcome.OK, HttpOutcome.CERT_EXPIRING)

    @property
    def cert_days_left(self) -> float | None:
        if self.cert_not_after is None:
            return None
        return (self.cert_not_after - time.time()) / 86400.0

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["outcome"] = self.outcome.value
        d["labels"] = dict(self.labels)
        d["cert_days_left"] = self.cert_days_left
        return d


def split_server_time(r: HttpResult, icmp_rtt_ms: float | None) -> HttpResult:
    """Fill ``rtt_ms``, ``rtt_source``, ``server_ms`` and ``path_ms`` (docs/http.md):
    the ICMP RTT of the same address when given, else the kernel's RTT of the TCP
    handshake (TCP_INFO), else the connect phase (a reused connection has neither:
    then no split without ICMP)."""
    rtt: float | None
    if icmp_rtt_ms is not None:
        rtt, src = icmp_rtt_ms, "icmp"
    elif r.tcp_rtt_ms is not None:
        rtt, src = r.tcp_rtt_ms, "tcp"
    else:
        rtt, src = (None if r.reused else r.connect_ms), "connect"
    if rtt is None or r.wait_ms is None or r.total_ms is None:
        r.rtt_ms, r.rtt_source, r.server_ms, r.path_ms = (
            rtt,
            (src if rtt is not None else None),
            None,
            None,
        )
        return r
    r.rtt_ms, r.rtt_source = rtt, src
    r.server_ms = max(0.0, r.wait_ms - rtt)
    r.path_ms = r.total_ms - r.server_ms
    return r


# ---------------------------------------------------------------------------------
# the X.509 validity dates, read from DER (RFC 5280 section 4.1) without a library:
#   Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
#       serialNumber INTEGER, signature SEQUENCE, issuer Name,
#       validity SEQUENCE { notBefore Time, notAfter Time }, ... } ... }
#   Time ::= UTCTime (YYMMDDHHMMSSZ) | GeneralizedTime (YYYYMMDDHHMMSSZ)


def _der_item(b: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``i``."""
    tag = b[i]
    n = b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i : i + k], "big")
        i += k
    return tag, i, i + n


@functools.lru_cache(maxsize=4096)  # a server shows the same certificate every check
def cert_not_after(der: bytes) -> float | None:
    """The notAfter of a DER certificate as Unix seconds (None if unreadable)."""
    try:
        _, c, _ = _der_item(der, 0)  # Certificate
        _, c, _ = _der_item(der, c)  # tbsCertificate
        tag, s, e = _der_item(der, c)
        if tag == 0xA0:  # [0] version
            c = e
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, c = _der_item(der, c)
        _, v, _ = _der_item(der, c)  # validity
        _, _, v = _der_item(der, v)  # notBefore
        tag, s, e = _der_item(der, v)  # notAfter
        text = der[s:e].decode("ascii")
        fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
        return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp()
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _chain_earliest(obj: ssl.SSLObject) -> float | None:
    """The earliest notAfter over the verified chain (Python >= 3.13), else the leaf's."""
    chain = getattr(obj, "get_verified_chain", None)
    if chain is not None:
        try:
            ders = [c.public_bytes(ssl.Encoding.DER) for c in chain()]  # type: ignore[attr-defined]
            times = [t for t in map(cert_not_after, ders) if t is not None]
            if times:
                return min(times)
        except (ssl.SSLError, ValueError, AttributeError):
            pass
    der = obj.getpeercert(binary_form=True)
    return cert_not_after(der) if der else None


# ---------------------------------------------------------------------------------
# one connection: an asyncio protocol feeding h11, stamping the first byte


class _Conn(asyncio.Protocol):
    """A TCP (then TLS) connection speaking HTTP/1.1 through h11."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.buf: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.fed_eof = False  # h11 was told of the EOF
        self.exc: BaseException | None = None
        self.first_byte_ns = 0
        self.key: tuple[str, int, str, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.first_byte_ns:
            self.first_byte_ns = time.perf_counter_ns()
        self.buf.append(data)
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_event(self) -> Any:
        """The next h11 event, reading as needed. At EOF h11 decides: a body that
        runs to the close (HTTP/1.0 style) ends there; anything cut short raises
        ConnectionResetError (or the socket's own error, e.g. ECONNRESET)."""
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                if self.fed_eof:
                    if isinstance(self.exc, OSError):
                        raise self.exc from None
                    raise ConnectionResetError(f"the server closed the connection: {e}") from None
                raise
            if ev is not h11.NEED_DATA:
                return ev
            if not self.buf and not self.eof:
                self.waiter = self.loop.create_future()
                await self.waiter
                self.waiter = None
            if self.buf:
                data = b"".join(self.buf)
                self.buf.clear()
                self.h11.receive_data(data)
            elif self.eof and not self.fed_eof:
                self.fed_eof = True
                self.h11.receive_data(b"")
            elif self.eof:
                if isinstance(self.exc, OSError):
                    raise self.exc
                raise ConnectionResetError("the server closed the connection before answering")

    def reusable(self) -> bool:
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and not self.eof
            and self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 tcpi_rto, ato, snd_mss,
# rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent, last_ack_sent,
# last_data_recv, last_ack_recv, pmtu, rcv_ssthresh, rtt (us), rttvar, ...
TCPI_RTT_OFFSET = 68
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def _tcp_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT of a connection just made: after the handshake its
    one sample is SYN -> SYN-ACK, timed by the kernel, so no event-loop delay of ours
    is in it (the connect phase has that delay)."""
    if _TCP_INFO is None:
        return None
    try:
        ti = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:
        return None
    if len(ti) < TCPI_RTT_OFFSET + 4:
        return None
    us = int.from_bytes(ti[TCPI_RTT_OFFSET : TCPI_RTT_OFFSET + 4], sys.byteorder)
    return us / 1000.0 if us else None


def _ms(a_ns: int, b_ns: int) -> float:
    return (b_ns - a_ns) / 1e6


class _Timeout(Exception):
    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


def _fire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


async def _within(aw: Awaitable[T], deadline: float, phase: str) -> T:
    left = deadline - time.monotonic()
    if left <= 0:
        if asyncio.iscoroutine(aw):
            aw.close()
        raise _Timeout(phase)
    try:
        return await asyncio.wait_for(aw, left)
    except asyncio.TimeoutError:
        raise _Timeout(phase) from None


Resolver = Callable[[str, int, int], Awaitable[list[tuple[int, str]]]]


async def system_resolver(host: str, port: int, family: int) -> list[tuple[int, str]]:
    """getaddrinfo through the loop: [(family, address)], in the resolver's order,
    each address once."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    out: list[tuple[int, str]] = []
    for fam, _, _, _, sa in infos:
        a = (int(fam), str(sa[0]))
        if a not in out:
            out.append(a)
    return out


# ---------------------------------------------------------------------------------
# the runner


class HttpRunner:
    """Runs checks with at most ``max_concurrency`` connections in flight.

    ``resolver(host, port, family)`` returns ``[(family, address)]``; tests give
    their own to make a name with several loopback addresses. ``rtt_of(address)``
    returns the ICMP RTT in ms the caller has for that address (or None), used for
    the path/server split. Connections of checks with ``reuse_connection`` are kept
    per (check URL, address) until ``close()``.
    """

    def __init__(
        self,
        max_concurrency: int = 256,
        resolver: Resolver | None = None,
        rtt_of: Callable[[str], float | None] | None = None,
        resolve_cache_s: float = 0.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if resolve_cache_s < 0:
            raise ValueError("resolve_cache_s must be >= 0")
        # a name's addresses are reused for this long by every check of that name
        # (0: resolved at every check); concurrent resolutions of one name are one
        self.resolve_cache_s = resolve_cache_s
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}
        self._dns_flight: dict[tuple[str, int], asyncio.Future[list[tuple[int, str]]]] = {}
        self.resolutions = 0
        self.max_concurrency = max_concurrency
        self._sem = asyncio.Semaphore(max_concurrency)
        self._resolver = resolver or system_resolver
        self.rtt_of = rtt_of
        self._pool: dict[tuple[str, str, str], _Conn] = {}
        self._ctx: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self.in_flight = 0
        self.checks_done = 0

    def _ssl_context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        key = (verify, ca_file)
        ctx = self._ctx.get(key)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context(cafile=ca_file)
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._ctx[key] = ctx
        return ctx

    async def close(self) -> None:
        for c in self._pool.values():
            c.close()
        self._pool.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    async def run(self, check: HttpCheck) -> list[HttpResult]:
        """Check every address of the URL's host (concurrently); one result each."""
        wall = time.time()
        t0 = time.perf_counter_ns()
        u = urlsplit(check.url)
        host = u.hostname or ""
        port = u.port or (443 if u.scheme == "https" else 80)
        deadline = time.monotonic() + check.timeout_s
        try:
            addrs = await self._addresses(check, host, port, deadline)
        except _Timeout:
            return [
                self._final(
                    check,
                    HttpResult(
                        check.url,
                        None,
                        HttpOutcome.TIMEOUT,
                        wall,
                        timeout_phase="dns",
                        labels=check.labels,
                    ),
                )
            ]
        except (OSError, UnicodeError) as e:
            return [
                self._final(
                    check,
                    HttpResult(
                        check.url,
                        None,
                        HttpOutcome.RESOLVE,
                        wall,
                        error=str(e),
                        labels=check.labels,
                    ),
                )
            ]
        dns_ms = _ms(t0, time.perf_counter_ns())
        if not addrs:
            return [
                self._final(
                    check,
                    HttpResult(
                        check.url,
                        None,
                        HttpOutcome.RESOLVE,
                        wall,
                        error="no address of the asked family",
                        labels=check.labels,
                    ),
                )
            ]
        if not check.all_addresses:
            addrs = addrs[:1]
        return list(
            await asyncio.gather(
                *(self._run_address(check, fam, a, dns_ms, wall, deadline) for fam, a in addrs)
            )
        )

    async def _addresses(
        self, check: HttpCheck, host: str, port: int, deadline: float
    ) -> list[tuple[int, str]]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            hit = self._dns.get((host.lower(), check.family))
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]  # no task, no wait_for: a cached answer costs no loop turn
            return await _within(self._resolve(host, port, check.family), deadline, "dns")
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        if check.family and check.family != fam:
            return []
        return [(fam, str(ip))]

    async def _resolve(self, host: str, port: int, family: int) -> list[tuple[int, str]]:
        if self.resolve_cache_s <= 0:
            self.resolutions += 1
            return await self._resolver(host, port, family)
        key = (host.lower(), family)
        now = time.monotonic()
        hit = self._dns.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        fut = self._dns_flight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._dns_flight[key] = fut
        try:
            self.resolutions += 1
            addrs = await self._resolver(host, port, family)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # retrieved here: no "never retrieved" warning
            raise
        finally:
            self._dns_flight.pop(key, None)
        self._dns[key] = (now + self.resolve_cache_s, addrs)
        if len(self._dns) > 100_000:  # bounded: drop the expired
            self._dns = {k: v for k, v in self._dns.items() if v[0] > now}
        fut.set_result(addrs)
        return addrs

    def _final(self, check: HttpCheck, r: HttpResult) -> HttpResult:
        self.checks_done += 1
        if r.total_ms is None and r.dns_ms is not None:
            r.total_ms = r.dns_ms
        icmp = self.rtt_of(r.address) if (self.rtt_of is not None and r.address) else None
        return split_server_time(r, icmp)

    async def _run_address(
        self,
        check: HttpCheck,
        family: int,
        address: str,
        dns_ms: float,
        wall: float,
        deadline: float,
    ) -> HttpResult:
        async with self._sem:
            self.in_flight += 1
            try:
                r = await self._follow(check, family, address, dns_ms, wall, deadline)
            finally:
                self.in_flight -= 1
        return self._final(check, r)

    async def _follow(
        self,
        check: HttpCheck,
        family: int,
        address: str,
        dns_ms: float,
        wall: float,
        deadline: float,
    ) -> HttpResult:
        """The request, and the redirect chain when following; the result holds the
        last hop's phases and the earlier hops' time as ``redirect_ms``."""
        url, hops, first_dns_ms = check.url, 0, dns_ms
        t_start = time.perf_counter_ns()
        origin = _origin(url)
        while True:
            r = await self._one(check, url, family, address, dns_ms, wall, deadline)
            if r.reused and r.outcome is HttpOutcome.RESET and r.status is None:
                # the kept connection had gone stale (the server's keep-alive ended):
                # once more on a new one, which is what the check is about
                r = await self._one(check, url, family, address, dns_ms, wall, deadline)
            r.redirects = hops
            r.url = check.url
            r.final_url = url
            if hops:
                r.redirect_ms = first_dns_ms + _ms(t_start, r._hop_start_ns)
            if r.total_ms is not None:
                r.total_ms += r.redirect_ms
            loc = r._location
            if not (check.follow_redirects and r.outcome is HttpOutcome.OK and loc):
                return r
            if hops >= check.max_redirects:
                r.outcome = HttpOutcome.REDIRECTS
                r.error = f"more than {check.max_redirects} redirects (last to {loc})"
                return r
            hops += 1
            url = urljoin(url, loc)
            dns_ms = 0.0
            if _origin(url) != origin:
                # another host: its own resolution, first address
                nu = urlsplit(url)
                nport = nu.port or (443 if nu.scheme == "https" else 80)
                t_dns = time.perf_counter_ns()
                try:
                    addrs = await self._addresses(check, nu.hostname or "", nport, deadline)
                except _Timeout:
                    return HttpResult(
                        check.url,
                        address,
                        HttpOutcome.TIMEOUT,
                        wall,
                        redirects=hops,
                        final_url=url,
                        timeout_phase="dns",
                        labels=check.labels,
                    )
                except (OSError, UnicodeError) as e:
                    return HttpResult(
                        check.url,
                        address,
                        HttpOutcome.RESOLVE,
                        wall,
                        redirects=hops,
                        final_url=url,
                        error=str(e),
                        labels=check.labels,
                    )
                if not addrs:
                    return HttpResult(
                        check.url,
                        address,
                        HttpOutcome.RESOLVE,
                        wall,
                        redirects=hops,
                        final_url=url,
                        labels=check.labels,
                    )
                family, address = addrs[0]
                dns_ms = _ms(t_dns, time.perf_counter_ns())
                origin = _origin(url)

    async def _one(
        self,
        check: HttpCheck,
        url: str,
        family: int,
        address: str,
        dns_ms: float,
        wall: float,
        deadline: float,
    ) -> HttpResult:
        """One request to one address; never raises (every failure is an outcome)."""
        loop = asyncio.get_running_loop()
        u = urlsplit(url)
        https = u.scheme == "https"
        port = u.port or (443 if https else 80)
        name = check.server_name or u.hostname or address
        r = HttpResult(check.url, address, HttpOutcome.OK, wall, dns_ms=dns_ms, labels=check.labels)
        hop_start = time.perf_counter_ns()
        r._hop_start_ns = hop_start
        pool_key = (check.url, url, address)
        conn: _Conn | None = None
        tls_obj: Any = None
        phase = "connect"
        # one timer for the whole request (not a wait_for task per phase): at the
        # deadline it cancels this task, and the phase we were in is the outcome
        task = asyncio.current_task()
        fired: list[bool] = []
        timer = None
        if task is not None:
            timer = loop.call_at(
                loop.time() + max(0.0, deadline - time.monotonic()), _fire, task, fired
            )
        try:
            if deadline <= time.monotonic():
                raise _Timeout(phase)
            conn = self._pool.pop(pool_key, None) if check.reuse_connection else None
            if conn is not None and not conn.reusable():
                conn.close()
                conn = None
            if conn is not None:
                r.reused = True
                r.connect_ms = 0.0
                r.tls_ms = 0.0 if https else None
                conn.h11.start_next_cycle()
                conn.first_byte_ns = 0
                t_ready = hop_start
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if check.source_address:
                        sock.bind((check.source_address, 0))
                    # phases are contiguous: each starts where the one before ended
                    t_c = hop_start
                    await loop.sock_connect(sock, (address, port))
                    t_connected = time.perf_counter_ns()
                except BaseException:
                    sock.close()
                    raise
                r.connect_ms = _ms(t_c, t_connected)
                r.tcp_rtt_ms = _tcp_rtt_ms(sock)
                _, proto = await loop.create_connection(lambda: _Conn(loop), sock=sock)
                conn = proto
                if https:
                    phase = "tls"
                    ctx = self._ssl_context(check.verify_tls, check.ca_file)
                    t_tls = t_connected
                    assert conn.transport is not None  # set by connection_made
                    # asyncio's own handshake timeout a second after ours, so a slow
                    # handshake is our timeout in "tls", not its ConnectionAbortedError
                    left = max(0.001, deadline - time.monotonic()) + 1.0
                    tr = await loop.start_tls(
                        conn.transport, conn, ctx, server_hostname=name, ssl_handshake_timeout=left
                    )
                    if tr is None:
                        raise ConnectionResetError("the connection closed during the TLS handshake")
                    conn.transport = tr
                    t_ready = time.perf_counter_ns()
                    r.tls_ms = _ms(t_tls, t_ready)
                    tls_obj = tr.get_extra_info("ssl_object")
                else:
                    t_ready = t_connected
            assert conn.transport is not None
            sn = conn.transport.get_extra_info("sockname")
            r.source = str(sn[0]) if sn else None
            # -- request
            phase = "send"
            hostport = name if (port == (443 if https else 80)) else f"{name}:{port}"
            if ":" in name and not name.startswith("["):
                hostport = f"[{name}]" if port == (443 if https else 80) else f"[{name}]:{port}"
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            headers = [("Host", hostport), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
            headers += list(check.headers)
            if check.body:
                headers.append(("Content-Length", str(len(check.body))))
            if not check.reuse_connection:
                headers.append(("Connection", "close"))
            data = conn.h11.send(h11.Request(method=check.method, target=target, headers=headers))
            if check.body:
                data += conn.h11.send(h11.Data(data=check.body))
            data += conn.h11.send(h11.EndOfMessage())
            conn.transport.write(data)
            t_sent = time.perf_counter_ns()
            r.send_ms = _ms(t_ready, t_sent)
            # -- response
            phase = "wait"
            resp = await conn.next_event()
            while isinstance(resp, h11.InformationalResponse):
                resp = await conn.next_event()
            if not isinstance(resp, h11.Response):
                raise h11.RemoteProtocolError(f"unexpected {type(resp).__name__}")
            t_first = conn.first_byte_ns or time.perf_counter_ns()
            r.wait_ms = _ms(t_sent, t_first)
            r.status = resp.status_code
            r.http_version = "HTTP/" + resp.http_version.decode()
            location = None
            for k, v in resp.headers:
                if k == b"location":
                    location = v.decode("latin-1")
            phase = "transfer"
            body = bytearray()
            truncated = False
            while True:
                ev = await conn.next_event()
                if isinstance(ev, h11.Data):
                    r.body_bytes += len(ev.data)
                    if len(body) < check.max_body_bytes:
                        body += ev.data[: check.max_body_bytes - len(body)]
                    else:
                        truncated = True
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            t_end = time.perf_counter_ns()
            r.transfer_ms = _ms(t_first, t_end)
            r.total_ms = _ms(hop_start, t_end) + dns_ms
            if tls_obj is not None:  # after the clock stopped: not in any phase
                r.tls_version = tls_obj.version()
                r.cert_not_after = _chain_earliest(tls_obj)
            _judge(check, r, bytes(body), truncated, location)
            if check.reuse_connection and conn.reusable():
                self._pool[pool_key] = conn
                conn = None
        except asyncio.CancelledError:
            if not fired:
                raise  # cancelled from outside: not ours to turn into a result
            uncancel = getattr(task, "uncancel", None)  # Python >= 3.11
            if uncancel is not None:
                uncancel()
            r.outcome, r.timeout_phase = HttpOutcome.TIMEOUT, phase
            r.error = f"no answer within {check.timeout_s:g} s ({phase})"
        except _Timeout as e:
            r.outcome, r.timeout_phase = HttpOutcome.TIMEOUT, e.phase
            r.error = f"no answer within {check.timeout_s:g} s ({e.phase})"
        except ssl.SSLCertVerificationError as e:
            code = getattr(e, "verify_code", 0)
            r.outcome = _VERIFY_CODES.get(code, HttpOutcome.CERT_CHAIN)
            r.cert_error = getattr(e, "verify_message", None) or str(e)
            r.error = r.cert_error
        except ssl.SSLError as e:
            r.outcome, r.error = HttpOutcome.TLS, f"{e.reason or e}"
        except ConnectionRefusedError as e:
            r.outcome, r.error = HttpOutcome.REFUSED, str(e) or "connection refused"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            r.outcome, r.error = HttpOutcome.RESET, f"{phase}: {e}" if str(e) else phase
        except h11.ProtocolError as e:
            r.outcome, r.error = HttpOutcome.PROTOCOL, str(e)
        except OSError as e:
            r.outcome, r.error = HttpOutcome.ERROR, f"{phase}: {e}"
        finally:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                conn.close()
        if fired and r.outcome is not HttpOutcome.TIMEOUT:
            # the timer fired just as the request ended: take its cancel here
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            uncancel = getattr(task, "uncancel", None)
            cancelling = getattr(task, "cancelling", None)
            if uncancel is not None and cancelling is not None and cancelling():
                uncancel()
        if r.outcome in CERT_OUTCOMES:
            # read the certificate anyway, without verifying, for its expiry
            r.cert_not_after = await self._peek_cert(family, address, port, name, deadline)
        if r.total_ms is None:  # failed: the time it took to fail
            r.total_ms = _ms(hop_start, time.perf_counter_ns()) + dns_ms
        return r

    async def _peek_cert(
        self, family: int, address: str, port: int, name: str, deadline: float
    ) -> float | None:
        loop = asyncio.get_running_loop()
        ctx = self._ssl_context(False, None)
        tr = None
        try:
            tr, _ = await _within(
                loop.create_connection(
                    lambda: _Conn(loop), address, port, ssl=ctx, server_hostname=name, family=family
                ),
                deadline,
                "tls",
            )
            obj = tr.get_extra_info("ssl_object")
            der = obj.getpeercert(binary_form=True) if obj is not None else None
            return cert_not_after(der) if der else None
        except (_Timeout, OSError):
            return None
        finally:
            if tr is not None:
                tr.close()


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    return (u.scheme, (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80))


_MISSING = object()


def _json_get(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif (
            isinstance(cur, list)
            and part.lstrip("-").isdigit()
            and -len(cur) <= int(part) < len(cur)
        ):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _judge(
    check: HttpCheck, r: HttpResult, body: bytes, truncated: bool, location: str | None
) -> None:
    """Set the outcome of a complete answer (redirect Location kept for _follow)."""
    st = r.status or 0
    is_redirect = st in (301, 302, 303, 307, 308) and location is not None
    if is_redirect and check.follow_redirects:
        r._location = location
        return
    if check.expect_status:
        good = st in check.expect_status
    else:
        good = 200 <= st < 300 or (300 <= st < 400 and not check.follow_redirects)
    if not good:
        r.outcome = HttpOutcome.STATUS
        want = ",".join(map(str, check.expect_status)) or "2xx"
        r.error = f"status {st}, expected {want}"
        return
    if check.body_regex is not None:
        text = body.decode("utf-8", "replace")
        if re.search(check.body_regex, text) is None:
            r.outcome = HttpOutcome.BODY
            more = f" (first {check.max_body_bytes} bytes searched)" if truncated else ""
            r.error = f"body does not match {check.body_regex!r}{more}"
            return
    if check.json_field is not None:
        try:
            doc = json.loads(body)
        except ValueError as e:
            r.outcome, r.error = HttpOutcome.JSON, f"body is not JSON: {e}"
            return
        v = _json_get(doc, check.json_field)
        if v is _MISSING:
            r.outcome, r.error = HttpOutcome.JSON, f"no field {check.json_field!r}"
            return
        if check.json_value is not None and v != check.json_value:
            r.outcome = HttpOutcome.JSON
            r.error = f"{check.json_field} is {v!r}, expected {check.json_value!r}"
            return
    if r.cert_not_after is not None and check.cert_min_days > 0:
        left = (r.cert_not_after - time.time()) / 86400.0
        if left < check.cert_min_days:
            r.outcome = HttpOutcome.CERT_EXPIRING
            r.error = f"certificate expires in {left:.1f} days (< {check.cert_min_days:g})"


# ---------------------------------------------------------------------------------
# periodic checks beside the ICMP engine


@dataclass(slots=True)
class _Sched:
    check: HttpCheck
    next_at: float
    running: bool = False
    latest: list[HttpResult] = field(default_factory=list)
    removed: bool = False


class HttpScheduler:
    """Runs every check every ``interval_s``, spread over the interval (a stable
    offset per URL, so 1,000 checks of 10 s start 10 ms apart, not at once). A check
    still running when it is due again is skipped that round (counted), never run
    twice at once. Results go to ``sinks`` (each called with the list of one run)
    and ``latest`` (per URL, for metrics)."""

    def __init__(
        self,
        checks: Iterable[HttpCheck],
        runner: HttpRunner,
        sinks: Sequence[Callable[[list[HttpResult]], None]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.sinks = list(sinks)
        self.clock = clock
        self._items: dict[str, _Sched] = {}
        # (next_at, seq, item): due() pops only what is due, O(log n) each, so 10,000
        # checks cost nothing between their turns
        self._heap: list[tuple[float, int, _Sched]] = []
        self._seq = 0
        self.skipped = 0
        self.runs = 0
        self.errors = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        now = clock()
        for c in checks:
            self.add(c, now)

    def add(self, check: HttpCheck, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        offset = (hash_stable(check.url) % 10_000) / 10_000 * check.interval_s
        self.remove(check.url)
        s = self._items[check.url] = _Sched(check, now + offset)
        self._push(s)
        self._wake.set()  # a running loop recomputes its next wake-up

    def _push(self, s: _Sched) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (s.next_at, self._seq, s))

    def remove(self, url: str) -> None:
        s = self._items.pop(url, None)
        if s is not None:
            s.removed = True  # its heap entry is dropped when it comes up

    def replace(self, checks: Iterable[HttpCheck]) -> tuple[int, int]:
        """Make the checks these (a reload): new or changed ones added, gone ones
        removed, unchanged ones keep their schedule. Returns (added, removed)."""
        want = {c.url: c for c in checks}
        gone = [u for u, s in self._items.items() if want.get(u) != s.check]
        for u in gone:
            self.remove(u)
        new = [c for u, c in want.items() if u not in self._items]
        for c in new:
            self.add(c)
        return len(new), len(gone)

    @property
    def checks(self) -> list[HttpCheck]:
        return [s.check for s in self._items.values()]

    def latest(self) -> dict[str, list[HttpResult]]:
        return {u: s.latest for u, s in self._items.items() if s.latest}

    def due(self, now: float) -> list[_Sched]:
        """The checks due at ``now``, their next time advanced (pure: no I/O)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, s = heapq.heappop(heap)
            if s.removed:
                continue
            iv = s.check.interval_s
            # the next slot on the grid after now (a late wake-up skips, not bursts)
            s.next_at += iv * max(1, int((now - s.next_at) // iv) + 1)
            self._push(s)
            if s.running:
                self.skipped += 1
            else:
                out.append(s)
        return out

    def next_wake(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].removed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    async def _run_one(self, s: _Sched) -> None:
        s.running = True
        try:
            res = await self.runner.run(s.check)
        except Exception as e:  # a bug of ours must not end the checks: said, counted
            self.errors += 1
            _log().error("HTTP check failed unexpectedly", url=s.check.url, error=repr(e))
            return
        finally:
            s.running = False
        s.latest = res
        self.runs += 1
        for sink in self.sinks:
            try:
                sink(res)
            except Exception as e:
                self.errors += 1
                _log().error("HTTP results sink failed", url=s.check.url, error=repr(e))

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self, duration_s: float | None = None) -> None:
        end = None if duration_s is None else self.clock() + duration_s
        try:
            while not self._stopping:
                self._wake.clear()  # set by request_stop, and by add() to wake us
                now = self.clock()
                if end is not None and now >= end:
                    break
                for s in self.due(now):
                    t = asyncio.create_task(self._run_one(s))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
                nw = self.next_wake()
                sleep = 1.0 if nw is None else max(0.0, nw - self.clock())
                if end is not None:
                    sleep = min(sleep, max(0.0, end - self.clock()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(sleep, 1.0))
        finally:
            if self._tasks:
                # running checks end within their own timeout; wait for them
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.runner.close()


def _log() -> Any:
    from .logs import get_logger

    return get_logger("fastping.http")


def hash_stable(text: str) -> int:
    """A hash that is the same in every process (str hash is salted per process)."""
    import zlib

    return zlib.crc32(text.encode())
