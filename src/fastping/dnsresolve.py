"""Resolving host-name targets through a DnsSocket (issue #18): ``DnsResolver`` is a
``MonitoringEngine(resolver=...)`` that asks one configured DNS server for a name's A
(or AAAA) record on the batched core (one unprivileged datagram socket, any number of
questions in flight, each attributed by server, ID and question) instead of calling
``getaddrinfo`` in a thread pool. Its answers carry the record's TTL, so the engine
re-resolves a name when its record expires (``Resolved.ttl_s``), not every
``resolve_interval_s``.

A name that does not resolve (NXDOMAIN, SERVFAIL, REFUSED, no address of the type
asked, no answer within ``timeout_s`` after ``attempts`` tries, the server
unreachable) raises ``ResolveError`` saying which: the engine records a
``resolve_error`` result for a name never resolved, and keeps probing the last address
of one that was.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ._icmp import EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE, DnsSocket
from .dnscodec import rcode_name
from .errors import ConfigError

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_ATTEMPTS = 2
# a TTL of 0 (do not cache) would re-resolve at every resolve-loop step: at least this
MIN_TTL_S = 1.0
MAX_TTL_S = 86400.0


class ResolveError(OSError):
    """A name the configured server did not resolve; the message says why."""


class Resolved(list[tuple[int, str]]):
    """[(family, address)] as the engine's resolvers return, with the answer's TTL."""

    ttl_s: float | None = None


def parse_server(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT``, ``[V6]:PORT`` or a bare IPv6 address -> (address, port);
    ConfigError saying what to write otherwise (a host name is refused: the resolver
    of names cannot be found by name)."""
    from .commands.dnssweep import parse_dns_target
    from .errors import TargetError

    t = text.strip()
    try:
        if ":" in t and not t.startswith("[") and t.count(":") > 1:
            t = f"[{t}]"  # a bare IPv6 address
        d = parse_dns_target(f"dns://{t}/a.test")
    except TargetError:
        raise ConfigError(
            f"resolver {text!r}: write the DNS server as an address, ADDR:PORT or [V6]:PORT "
            "(a host name is refused: names are what it resolves)"
        ) from None
    return d.server, d.port


class DnsResolver:
    """Ask ``server``:``port`` for the names the engine resolves (see the module doc).

    One DnsSocket (the server's family), opened at the first call; a question is one
    slot for as long as it is asked, and ``window`` questions may be in flight at once
    (more wait their turn). ``close()`` closes the socket."""

    def __init__(
        self,
        server: str,
        port: int = 53,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        min_ttl_s: float = MIN_TTL_S,
        max_ttl_s: float = MAX_TTL_S,
        concurrency: int = 256,
    ) -> None:
        try:
            fam = socket.AF_INET6 if ":" in server else socket.AF_INET
            socket.inet_pton(fam, server)
        except OSError:
            raise ConfigError(f"resolver {server!r} is not a numeric address") from None
        if not 1 <= port <= 65535:
            raise ConfigError(f"resolver port {port} is not 1..65535")
        if not 0 < timeout_s <= 60:
            raise ConfigError(f"resolver timeout_s={timeout_s!r}: give 0 < seconds <= 60")
        if not 1 <= attempts <= 10:
            raise ConfigError(f"resolver attempts={attempts!r}: give 1..10")
        if not 0 < min_ttl_s <= max_ttl_s:
            raise ConfigError("resolver TTL bounds: give 0 < min_ttl_s <= max_ttl_s")
        self.server, self.port, self.family = server, int(port), fam
        self.timeout_s, self.attempts = float(timeout_s), int(attempts)
        self.min_ttl_s, self.max_ttl_s = float(min_ttl_s), float(max_ttl_s)
        self._sock: DnsSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self.concurrency = int(concurrency)
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self.queries = 0  # questions sent (retries included)
        self.answers = 0
        self.timeouts = 0
        self.failures = 0  # names not resolved (any reason)

    def __repr__(self) -> str:
        return f"<DnsResolver {self.server}:{self.port}>"

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def stats(self) -> dict[str, int]:
        return {"queries": self.queries, "answers": self.answers, "timeouts": self.timeouts,
                "failures": self.failures}  # fmt: skip

    # -- the engine's resolver ------------------------------------------------------

    async def __call__(self, host: str, family: int) -> Resolved:
        """[(family, address)] of ``host`` (A for AF_INET and for 0 first, then AAAA for
        0 when there is no A; AAAA for AF_INET6), with the record's TTL."""
        types: tuple[str, ...] = ("A", "AAAA")
        if family == socket.AF_INET:
            types = ("A",)
        elif family == socket.AF_INET6:
            types = ("AAAA",)
        why = ""
        for qtype in types:
            last = await self._ask(host, qtype)
            if last is None:
                why = f"no answer from {self._where()} within {self.timeout_s:g} s"
                if self.attempts > 1:
                    why += f" ({self.attempts} tries)"
                continue
            if isinstance(last, str):
                why = last
                break
            rcode, address, ttl = last["rcode"], last["address"], last["min_ttl"]
            if rcode != 0:
                why = f"{rcode_name(rcode)} from {self._where()}"
                if rcode == 3:
                    break  # no such name: no other type has it
                continue
            if address is None:
                why = f"no {qtype} record for {host!r} at {self._where()}"
                continue
            out = Resolved([(socket.AF_INET if qtype == "A" else socket.AF_INET6, address)])
            out.ttl_s = min(self.max_ttl_s, max(self.min_ttl_s, float(ttl or 0)))
            return out
        self.failures += 1
        raise ResolveError(f"cannot resolve {host!r}: {why}")

    def _where(self) -> str:
        h = f"[{self.server}]" if ":" in self.server else self.server
        return f"{h}:{self.port}"

    def _socket(self) -> DnsSocket:
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._sock = DnsSocket(self.family, window=1)
        if self._loop is not loop:  # a new event loop (asyncio.run again): read from it
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._readable)
        return self._sock

    async def _ask(self, host: str, qtype: str) -> dict[str, Any] | str | None:
        """The answer (slot_dns()["last"]), a reason it cannot come (str), or None when
        every try timed out."""
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(self.concurrency), loop
        async with self._gate:
            sock = self._socket()
            slot = sock.add_query(self.server, self.port, host, qtype)
            sock.set_slot_timeout(slot, self.timeout_s)
            try:
                for _ in range(self.attempts):
                    assert self._loop is not None
                    fut: asyncio.Future[tuple[int, Any]] = self._loop.create_future()
                    self._waiting[slot] = fut
                    self.queries += 1
                    timer = self._loop.call_later(self.timeout_s, self._expire, slot)
                    try:
                        self._events(sock.send([slot]))
                        kind, info = await fut
                    finally:
                        timer.cancel()
                        self._waiting.pop(slot, None)
                    if kind == EV_REPLY:
                        self.answers += 1
                        return dict(info)
                    if kind == EV_UNREACHABLE:
                        return f"{self._where()} is unreachable ({info})"
                    if kind != EV_TIMEOUT:
                        return f"query to {self._where()} failed ({info})"
                    self.timeouts += 1
                return None
            finally:
                sock.remove_target(slot)

    def _readable(self) -> None:
        if self._sock is not None:
            self._events(self._sock.recv())

    def _expire(self, slot: int) -> None:
        """The question's time is up: the core expires it (a timeout event); until it
        has (the loop's timer may run a hair early), look again shortly."""
        if self._sock is not None:
            self._events(self._sock.expire(self.timeout_s))
        fut = self._waiting.get(slot)
        if fut is not None and not fut.done() and self._loop is not None:
            self._loop.call_later(0.01, self._expire, slot)

    def _events(self, events: list[Any]) -> None:
        sock = self._sock
        for slot, kind, _seq, _rtt, _ttl, itype, icode, router, err in events:
            fut = self._waiting.get(slot)
            if fut is None or fut.done() or sock is None:
                continue  # a late or duplicate answer to a question already settled
            if kind == EV_REPLY:
                fut.set_result((kind, sock.slot_dns(slot)["last"]))
            elif kind == EV_UNREACHABLE:
                fut.set_result((kind, f"ICMP {itype}/{icode} from {router}"))
            elif kind == EV_TIMEOUT:
                fut.set_result((kind, None))
            elif err:
                fut.set_result((kind, f"errno {err}"))
