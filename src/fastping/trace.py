"""Traceroute for every target at once: the whole targets x hops space on one
TraceSocket per family (units/trace.pxi), in a keyed random order, paced.

``trace(["10.0.0.1", "2001:db8::1"], max_ttl=16)`` returns one :class:`Trace` per
target: its hops (responder, RTT, what answered), whether it was reached.
:func:`path_changed` says whether two traces of a target took different paths.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import PermissionDenied, TargetError

# what answered a hop (the ICMP type of the answer), by family
TIME_EXCEEDED: dict[int, int] = {socket.AF_INET: 11, socket.AF_INET6: 3}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}

DEFAULT_MAX_TTL = 16
DEFAULT_RATE = 1000.0  # probes/s: polite towards routers that rate-limit ICMP errors
MAX_MAX_TTL = 64


class Hop(NamedTuple):
    """One hop of a trace: ``address`` None when nothing answered (a router that
    sends no time exceeded, or one that rate-limited its answer: never loss at the
    target). ``kind``: "hop" (time exceeded), "target" (the target's echo reply),
    "unreachable" (an ICMP unreachable ended the path here), "none"."""

    ttl: int
    address: str | None
    rtt_ms: float | None
    avg_ms: float | None
    kind: str
    icmp_type: int | None
    icmp_code: int | None
    sent: int
    received: int

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ttl": self.ttl,
            "address": self.address,
            "kind": self.kind,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 6),
            "sent": self.sent,
            "received": self.received,
        }
        if self.received > 1 and self.avg_ms is not None:
            d["avg_ms"] = round(self.avg_ms, 6)
        if self.kind == "unreachable":
            d["icmp_type"], d["icmp_code"] = self.icmp_type, self.icmp_code
        return d


@dataclass(slots=True)
class Trace:
    target: str  # as the user wrote it
    address: str  # what was traced
    hops: list[Hop] = field(default_factory=list)
    error: str | None = None

    @property
    def reached(self) -> bool:
        return bool(self.hops) and self.hops[-1].kind == "target"

    @property
    def hop_count(self) -> int | None:
        """Hops to the target (its TTL distance), None when it was not reached."""
        return self.hops[-1].ttl if self.reached else None

    @property
    def path(self) -> tuple[str | None, ...]:
        """The responders hop by hop (None: no answer)."""
        return tuple(h.address for h in self.hops)

    def json_line(self) -> str:
        """``json.dumps(self.to_json(), separators=(",", ":"))``, written directly: a
        65,536-target trace prints 262,144 hops."""
        if self.error is not None or any(h.kind == "unreachable" or h.received > 1
                                         for h in self.hops):  # fmt: skip
            return json.dumps(self.to_json(), separators=(",", ":"))
        hops = ",".join(
            f'{{"ttl":{h.ttl},"address":{_js(h.address)},"kind":"{h.kind}","rtt_ms":'
            f'{"null" if h.rtt_ms is None else repr(round(h.rtt_ms, 6))},"sent":{h.sent},'
            f'"received":{h.received}}}'
            for h in self.hops
        )
        hc = self.hop_count
        return (
            f'{{"target":{json.dumps(self.target)},"address":"{self.address}","reached":'
            f'{"true" if hc is not None else "false"},"hop_count":'
            f'{"null" if hc is None else hc},"hops":[{hops}]}}'
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "address": self.address}
        if self.error is not None:
            d["error"] = self.error
            return d
        d["reached"] = self.reached
        d["hop_count"] = self.hop_count
        d["hops"] = [h.to_json() for h in self.hops]
        return d


@dataclass(slots=True)
class TraceRun:
    """What one trace() call did: its traces and the sockets' counters summed."""

    traces: list[Trace]
    totals: dict[str, int]
    elapsed_s: float
    mode: str


def _js(a: str | None) -> str:
    return "null" if a is None else f'"{a}"'  # addresses: hex digits, dots and colons


def path_changed(old: Trace, new: Trace) -> bool:
    """True when ``new`` took another path than ``old``: a hop answered by another
    router, or the target reached at another distance. A hop silent in either (no
    answer, or a rate-limited one) says nothing, so it is no change."""
    if old.reached != new.reached or old.hop_count != new.hop_count:
        return True
    for a, b in zip(old.hops, new.hops, strict=False):
        if a.address is not None and b.address is not None and a.address != b.address:
            return True
    return False


def _hop(fam: int, row: tuple[Any, ...]) -> Hop:
    ttl, addr, min_ns, avg_ns, itype, icode, sent, received = row
    if itype is None:
        kind = "none"
    elif itype == TIME_EXCEEDED[fam]:
        kind = "hop"
    elif itype == ECHO_REPLY[fam]:
        kind = "target"
    else:
        kind = "unreachable"
    return Hop(
        ttl,
        addr,
        None if min_ns is None else min_ns / 1e6,
        None if avg_ns is None else avg_ns / 1e6,
        kind,
        itype,
        icode,
        sent,
        received,
    )


def _open(fam: int, mode: str, max_ttl: int, window: int) -> tuple[Any, str]:
    from ._icmp import TraceSocket

    kinds = ("raw", "dgram") if mode == "auto" else (mode,)
    last: OSError | None = None
    for kind in kinds:
        try:
            return TraceSocket(fam, max_ttl=max_ttl, kind=kind, window=window), kind
        except PermissionError as e:
            last = e
        except OSError as e:  # EACCES from a ping_group_range that excludes us
            last = e
    raise PermissionDenied(
        f"cannot open an ICMP socket for tracing ({', '.join(kinds)}): {last}; run as root, "
        "give python CAP_NET_RAW (setcap cap_net_raw+ep), or let your group use unprivileged "
        "ICMP (sysctl net.ipv4.ping_group_range)"
    )


def trace(
    targets: Sequence[str],
    *,
    max_ttl: int = DEFAULT_MAX_TTL,
    queries: int = 1,
    timeout_s: float = 1.0,
    rate_pps: float = DEFAULT_RATE,
    mode: str = "auto",
    family: int | None = None,
    key: bytes | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    workers: int = 0,
    stop: threading.Event | None = None,
) -> TraceRun:
    """Trace every target (addresses or names) at once. ``queries`` probes per hop;
    ``rate_pps`` total probes per second (0: flat out); ``key`` fixes the probe order
    (16 bytes; default random per run); ``workers`` sending threads, each with its
    own socket (0: one per usable core, at most 8, for traces big and fast enough to
    need them); ``stop``, when set from another thread, ends the run within 0.2 s
    with what was answered (``totals["interrupted"]``), as Ctrl-C does."""
    from .api import auto_workers
    from .targets import resolve

    if not 1 <= max_ttl <= MAX_MAX_TTL:
        raise TargetError(f"--max-ttl {max_ttl} must be 1..{MAX_MAX_TTL}")
    if not 1 <= queries <= 64:
        raise TargetError(f"--queries {queries} must be 1..64 probes per hop")
    if mode not in ("auto", "raw", "dgram"):
        raise TargetError(f"mode {mode!r}: tracing uses raw or dgram ICMP sockets (or auto)")
    traces: list[Trace] = []
    by_fam: dict[int, dict[str, list[Trace]]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    numeric: dict[str, tuple[str, int]] = {}
    for t in targets:
        with contextlib.suppress(ValueError):
            numeric[t] = _numeric_family(t)
    names = [t for t in targets if t not in numeric]
    resolved = resolve(names, family) if names else {}
    for t in targets:
        r = numeric[t] if t in numeric else resolved[t]  # every name: resolved or why not
        if isinstance(r, str):
            traces.append(Trace(t, t, error=r))
            continue
        else:
            addr, fam = r
        if family is not None and fam != family:
            fam_name = "IPv4" if family == socket.AF_INET else "IPv6"
            traces.append(Trace(t, addr, error=f"{t!r} is not an {fam_name} address"))
            continue
        tr = Trace(t, addr)
        traces.append(tr)
        by_fam[fam].setdefault(addr, []).append(tr)  # one trace per address
    totals: dict[str, int] = {}
    modes: list[str] = []
    jobs: list[tuple[Any, int, list[str]]] = []
    t0 = time.monotonic()
    try:
        n_slots = sum(len(p) for p in by_fam.values()) * max_ttl
        k_auto = auto_workers(n_slots, rate_pps) if workers == 0 else workers
        for fam, per_addr in by_fam.items():
            if not per_addr:
                continue
            addrs = list(per_addr)
            # each worker a contiguous share of the targets, on a socket of its own
            # (own identifier, BPF filter, buffers) and a thread: on loopback and
            # through veth namespaces the kernel forwards on the sending core
            k = max(1, min(k_auto, len(addrs)))
            for i in range(k):
                share = addrs[len(addrs) * i // k : len(addrs) * (i + 1) // k]
                sock, used = _open(fam, mode, max_ttl, queries)
                modes.append(used)
                jobs.append((sock, fam, share))
                sock.add_traces_packed(b"".join(socket.inet_pton(fam, a) for a in share))
        interrupted = _run(jobs, queries, timeout_s, rate_pps, key, on_progress, stop)
        for sock, fam, addrs in jobs:
            per_addr = by_fam[fam]
            for i, a in enumerate(addrs):
                hops = [_hop(fam, row) for row in sock.path(i)]
                for tr in per_addr[a]:
                    tr.hops = hops
            for k, v in sock.trace_totals().items():
                totals[k] = totals.get(k, 0) + int(v)
    finally:
        for sock, _, _ in jobs:
            sock.close()
    totals["interrupted"] = int(interrupted)
    totals["traces"] = sum(len(a) for _, _, a in jobs)
    totals["max_ttl"] = max_ttl
    totals["workers"] = len(jobs)
    return TraceRun(traces, totals, time.monotonic() - t0, "+".join(dict.fromkeys(modes)))


def _run(
    jobs: list[tuple[Any, int, list[str]]],
    queries: int,
    timeout_s: float,
    rate_pps: float,
    key: bytes | None,
    on_progress: Callable[[int, int, int], None] | None,
    stop: threading.Event | None = None,
) -> bool:
    """Each family's sweep on a thread of its own (the core releases the GIL); the
    rate is shared in proportion to the work. Ctrl-C closes the sockets, which ends
    their loops at once; what was answered by then is kept. Returns whether it was
    interrupted."""
    errors: list[BaseException] = []
    total = sum(s.n_slots for s, _, _ in jobs) * queries

    def run(sock: Any) -> None:
        share = rate_pps * sock.n_slots * queries / total if rate_pps and total else 0.0
        try:
            sock.sweep(queries, 0.0, timeout_s, share, sock.order(key))
        except ValueError:  # closed under it by Ctrl-C
            pass
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s, _, _ in jobs]
    for t in threads:
        t.start()
    interrupted = False
    last = 0.0
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                if on_progress is not None and time.monotonic() - last >= 0.2:
                    last = time.monotonic()
                    _report(jobs, total, on_progress)
    except KeyboardInterrupt:
        interrupted = True
        for s, _, _ in jobs:
            s.close()
        for t in threads:
            t.join()
    if on_progress is not None:
        _report(jobs, total, on_progress)
    if errors:
        raise errors[0]
    return interrupted


def _report(
    jobs: list[tuple[Any, int, list[str]]], total: int, fn: Callable[[int, int, int], None]
) -> None:
    sent = received = 0
    for s, _, _ in jobs:
        t = s.trace_totals()
        sent += int(t["sent"]) + int(t["skipped"])
        received += int(t["received"])
    fn(sent, total, received)


def _numeric_family(t: str) -> tuple[str, int]:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, t)), fam
        except OSError:
            continue
    raise ValueError(t)
