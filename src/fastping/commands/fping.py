"""``fastping fping`` / ``fastping-fping``: fping 5.x's command line on fastping's core.

Options, units (milliseconds) and output follow fping 5.1 as Debian ships it (checked
line by line against it by tests/test_fping_compat.py), so SmokePing's FPing probe,
Zabbix's pinger and LibreNMS can point their fping path here unchanged. What differs:
no 65,535-target cap, RTTs from kernel timestamps, and probes leave in sendmmsg
batches (``IcmpSocket.sweep``, GIL released) instead of one sendto each.

How fping's modes map onto the core:

* default mode: one ``sweep(count=1)`` over every target, then one more over the
  targets still silent for each retry (``-r``), the timeout growing by ``-B`` each
  time, as fping's backoff does;
* count / loop modes (``-c``, ``-C``, ``-l``): one ``sweep(count=1)`` per round,
  rounds ``-p`` apart, so lines stream as fping's do; when ``-t`` is longer than
  ``-p`` rounds overlap, so a single multi-round sweep runs instead (``-c``/``-C``).

Options fping has that cannot be honoured here are refused (exit 3) with a message,
never ignored.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import signal
import socket
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

# IcmpSocket's event kinds (the one numbering, fastping.results.EventKind)
from ..results import (
    EV_DUPLICATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
)

PROG = "fping"
EXIT_USAGE = 1  # what fping 5.1 exits with on a usage error (its man page says 3)
EXIT_REFUSED = 3  # an option fping has that fastping-fping cannot honour
EXIT_SYSTEM = 4


# fping.c's icmp_unreach_str: RFC 792 destination-unreachable codes
_UNREACH = (
    "ICMP Network Unreachable",
    "ICMP Host Unreachable",
    "ICMP Protocol Unreachable",
    "ICMP Port Unreachable",
    "ICMP Unreachable (Fragmentation Needed)",
    "ICMP Unreachable (Source Route Failed)",
    "ICMP Unreachable (Destination Network Unknown)",
    "ICMP Unreachable (Destination Host Unknown)",
    "ICMP Unreachable (Source Host Isolated)",
    "ICMP Unreachable (Communication with Network Prohibited)",
    "ICMP Unreachable (Communication with Host Prohibited)",
    "ICMP Unreachable (Network Unreachable For Type Of Service)",
    "ICMP Unreachable (Host Unreachable For Type Of Service)",
    "ICMP Unreachable (Communication Administratively Prohibited)",
    "ICMP Unreachable (Host Precedence Violation)",
    "ICMP Unreachable (Precedence cutoff in effect)",
)

# fping options fastping-fping does not implement, and what to do instead
_REFUSED = {
    "-d": "reverse-DNS names (-d/--rdns)",
    "-n": "reverse-DNS names (-n/--name)",
    "-m": "all addresses of a name (-m/--all)",
    "-R": "random payload (-R/--random)",
    "-N": "netdata output (-N/--netdata)",
    "-o": "outage time (-o/--outage)",
}


class Usage(Exception):
    """A command line fping itself rejects (exit 1, fping's message; ``hint``: fping
    adds "see 'fping -h'" to this one)."""

    def __init__(self, msg: str, hint: bool = True, prefix: bool = True) -> None:
        super().__init__(msg)
        self.hint = hint
        self.prefix = prefix


class Refused(Exception):
    """An fping option fastping-fping cannot honour (exit 3)."""


@dataclass
class Options:
    alive: bool = False
    unreach: bool = False
    addr: bool = False
    count: int = 0
    vcount: bool = False  # -C
    loop: bool = False
    period_ms: float = 1000.0
    interval_ms: float = 10.0
    timeout_ms: float | None = None
    retry: int = 3
    backoff: float = 1.5
    size: int = 56
    quiet: bool = False
    squiet_s: float = 0.0
    stats: bool = False
    elapsed: bool = False
    timestamp: bool = False
    generate: bool = False
    files: list[str] = field(default_factory=list)
    family: int | None = None
    src: str | None = None
    iface: str | None = None
    tos: int | None = None
    ttl: int | None = None
    dontfrag: bool = False
    reachable: int | None = None
    fast_reachable: bool = False
    json: bool = False
    targets: list[str] = field(default_factory=list)


def _int(s: str) -> int:
    return int(s, 0)


def _num(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(s)
    return v


# option letter -> (long name, attribute, value parser or None for a flag)
_SPEC: dict[str, tuple[str, str, Callable[[str], Any] | None]] = {
    "4": ("ipv4", "family", None),
    "6": ("ipv6", "family", None),
    "a": ("alive", "alive", None),
    "A": ("addr", "addr", None),
    "b": ("size", "size", _int),
    "B": ("backoff", "backoff", _num),
    "c": ("count", "count", _int),
    "C": ("vcount", "count", _int),
    "D": ("timestamp", "timestamp", None),
    "e": ("elapsed", "elapsed", None),
    "f": ("file", "files", str),
    "g": ("generate", "generate", None),
    "H": ("ttl", "ttl", _int),
    "i": ("interval", "interval_ms", _num),
    "I": ("iface", "iface", str),
    "J": ("json", "json", None),
    "l": ("loop", "loop", None),
    "M": ("dontfrag", "dontfrag", None),
    "O": ("tos", "tos", _int),
    "p": ("period", "period_ms", _num),
    "q": ("quiet", "quiet", None),
    "Q": ("squiet", "squiet_s", _num),
    "r": ("retry", "retry", _int),
    "s": ("stats", "stats", None),
    "S": ("src", "src", str),
    "t": ("timeout", "timeout_ms", _num),
    "u": ("unreach", "unreach", None),
    "x": ("reachable", "reachable", _int),
    "X": ("fast-reachable", "reachable", _int),
    "h": ("help", "", None),
    "v": ("version", "", None),
}
_LONG = {v[0]: k for k, v in _SPEC.items()}
_LONG.update({"rdns": "d", "name": "n", "all": "m", "random": "R", "netdata": "N", "outage": "o"})


def parse(argv: Sequence[str]) -> Options:
    """fping's getopt: clustered short flags (``-aq``), values attached or not
    (``-C5``, ``-C 5``), long options with ``=`` or a separate value."""
    o = Options()
    seen: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            o.targets.extend(args[i:])
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            letter = _LONG.get(name)
            if letter is None:
                raise Usage(f"invalid option -- '{name}'")
            if letter in _SPEC and _SPEC[letter][2] is not None and not eq:
                if i >= len(args):
                    raise Usage(f"option '--{name}' requires an argument")
                val = args[i]
                i += 1
            _apply(o, letter, val if (eq or _needs_value(letter)) else None, seen)
            continue
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                letter = a[j]
                j += 1
                if letter not in _SPEC and letter not in _REFUSED_LETTERS:
                    raise Usage(f"invalid option -- '{letter}'")
                if _needs_value(letter):
                    if j < len(a):
                        val = a[j:]
                    elif i < len(args):
                        val = args[i]
                        i += 1
                    else:
                        raise Usage(f"option requires an argument -- '{letter}'")
                    _apply(o, letter, val, seen)
                    break
                _apply(o, letter, None, seen)
            continue
        o.targets.append(a)
    _check(o, seen)
    return o


_REFUSED_LETTERS = {k[1] for k in _REFUSED}


def _needs_value(letter: str) -> bool:
    return letter in _SPEC and _SPEC[letter][2] is not None


def _apply(o: Options, letter: str, val: str | None, seen: set[str]) -> None:
    if letter in _REFUSED_LETTERS:
        raise Refused(f"{_REFUSED['-' + letter]} is not supported by fastping-fping: leave it out")
    if letter == "h":
        raise _Help()
    if letter == "v":
        raise _Version()
    seen.add(letter)
    _long, attr, conv = _SPEC[letter]
    if conv is None:
        if letter in "46":
            o.family = socket.AF_INET if letter == "4" else socket.AF_INET6
        else:
            setattr(o, attr, True)
        return
    try:
        v = conv(val or "")
    except ValueError:
        raise Usage(f"invalid value {val!r} for -{letter}") from None
    if attr == "files":
        o.files.append(v)
    else:
        setattr(o, attr, v)
    if letter == "C":
        o.vcount = True
    if letter == "X":
        o.fast_reachable = True


class _Help(Exception):
    pass


class _Version(Exception):
    pass


def _check(o: Options, seen: set[str]) -> None:
    """fping's own consistency checks (its messages), then fastping's limits."""
    if ("c" in seen or "C" in seen) and "l" in seen:
        raise Usage("specify only one of c, l", hint=False)
    if o.alive and o.unreach:
        raise Usage("specify only one of a, u", hint=False)
    if o.count < 0 or (("c" in seen or "C" in seen) and o.count == 0):
        raise Usage("count must be > 0")
    if o.retry < 0 or o.backoff < 1.0 or o.backoff > 5.0:
        raise Usage("backoff factor must be between 1.0 and 5.0" if o.retry >= 0 else "bad -r")
    if o.period_ms < 0 or o.interval_ms < 0 or (o.timeout_ms is not None and o.timeout_ms <= 0):
        raise Usage("-p, -i and -t must be positive")
    if o.squiet_s:
        o.quiet = True
    from .._icmp import PROBE_HEADER_SIZE

    if o.size < PROBE_HEADER_SIZE:
        raise Refused(
            f"-b {o.size}: fastping needs at least {PROBE_HEADER_SIZE} bytes of payload "
            "(it carries the target slot, probe serial and a cookie that match the reply): "
            f"use -b {PROBE_HEADER_SIZE} or more"
        )
    if o.size > 65507:
        raise Usage(f"data size {o.size} not valid, must not be larger than 65507")
    if o.ttl is not None and not 1 <= o.ttl <= 255:
        raise Usage(f"ttl {o.ttl} out of range")
    if o.tos is not None and not 0 <= o.tos <= 255:
        raise Usage(f"tos {o.tos} out of range")
    if o.json and not (o.count or o.loop):
        raise Usage("option -J, --json requires -c, -C, or -l")
    if o.loop and o.timeout_ms is not None and o.timeout_ms > o.period_ms:
        raise Refused(
            f"-l with -t {o.timeout_ms:g} longer than -p {o.period_ms:g}: fastping-fping's "
            "loop mode runs one round per period; use -t no longer than -p"
        )
    if o.reachable is not None and o.reachable < 1:
        raise Usage("-x/-X needs a number of hosts >= 1")


# -- targets ---------------------------------------------------------------


@dataclass
class Target:
    label: str
    family: int  # 0: unresolved
    address: str | None = None  # for single targets
    error: str | None = None


@dataclass
class V4Block:
    """``count`` consecutive IPv4 addresses from ``first`` (fping -g): no object
    per address, loaded into the socket with append_range_v4."""

    first: int
    count: int


Entry = Target | V4Block


_OCTETS = [str(i) for i in range(256)]


def _v4_labels(first: int, count: int) -> list[str]:
    """Dotted quads of ``count`` addresses from ``first``, 256 at a time (a million
    labels in ~0.1 s: one string concatenation each)."""
    out: list[str] = []
    a, end = first, first + count
    while a < end:
        lo = a & 255
        n = min(256 - lo, end - a)
        head = f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}."
        out.extend([head + o for o in _OCTETS[lo : lo + n]])
        a += n
    return out


def _generate(o: Options) -> list[Entry]:
    """fping -g: ``start end`` (inclusive) or one CIDR block without its network
    and broadcast addresses (all of a /31 or /32)."""
    t = o.targets
    try:
        if len(t) == 2:
            lo, hi = ipaddress.ip_address(t[0]), ipaddress.ip_address(t[1])
            if lo.version != hi.version or int(hi) < int(lo):
                raise Usage("-g: give a start and an end address of one family, start <= end")
            if lo.version == 6:
                return [
                    _single(str(ipaddress.ip_address(a)), o) for a in range(int(lo), int(hi) + 1)
                ]
            return [V4Block(int(lo), int(hi) - int(lo) + 1)]
        if len(t) == 1:
            net = ipaddress.ip_network(t[0], strict=False)
            first, n = int(net.network_address), net.num_addresses
            if n > 2:
                first, n = first + 1, n - 2
            if net.version == 6:
                return [_single(str(ipaddress.ip_address(a)), o) for a in range(first, first + n)]
            return [V4Block(first, n)]
    except ValueError as e:
        raise Usage(f"-g: {e}") from None
    raise Usage("-g takes a start and an end address, or one CIDR block")


def _single(text: str, o: Options) -> Target:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return Target(text, 0)  # a name, resolved later
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    if o.family is not None and fam != o.family:
        return Target(text, 0, error="Address family for hostname not supported")
    return Target(text, fam, str(ip))


def _resolve_names(entries: list[Entry], o: Options) -> None:
    names = [e for e in entries if isinstance(e, Target) and e.family == 0 and e.error is None]
    if not names:
        return

    def one(t: Target) -> None:
        try:
            ai = socket.getaddrinfo(t.label, None, o.family or 0, socket.SOCK_RAW)
        except socket.gaierror as e:
            t.error = e.strerror or str(e)
            return
        fam, *_rest, sa = ai[0]
        t.family, t.address = int(fam), str(sa[0])
        if o.addr:
            t.label = t.address

    with ThreadPoolExecutor(max_workers=min(32, len(names))) as ex:
        list(ex.map(one, names))


def read_file(path: str) -> list[str]:
    """fping -f: one target per line (its first word); '#' comments and blank lines
    skipped; '-' is stdin."""
    if path == "-":
        return _words(sys.stdin)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return _words(fh)
    except OSError as e:
        raise Usage(f"fopen: {e.strerror}", hint=False) from None


def _words(lines: Iterable[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        word = line.split("#", 1)[0].split()
        if word:
            out.append(word[0])
    return out


# -- sockets ---------------------------------------------------------------


class Plan:
    """Entries in input order mapped onto one socket per family."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.socks: dict[int, Any] = {}
        # per entry: (family, first slot); unresolved entries have family 0
        self.first_slot: list[int] = []
        self.n_hosts = sum(e.count if isinstance(e, V4Block) else 1 for e in entries)

        self.labels: list[str] = []  # per host, in input order
        self.families = bytearray()  # per host: 4, 6, or 0 for unresolved
        self.index: dict[int, array[int]] = {}  # per family: host index of each slot
        self.width = 0  # fping pads host names to the longest

    def build(self) -> None:
        """Labels, families and the slot -> host map, in one pass (after _open)."""
        labels, fams = self.labels, self.families
        for f in self.socks:
            self.index[f] = array("q")
        for e in self.entries:
            i = len(labels)
            if isinstance(e, V4Block):
                labels.extend(_v4_labels(e.first, e.count))
                fams.extend(b"\x04" * e.count)
                self.index[socket.AF_INET].extend(range(i, i + e.count))
            else:
                labels.append(e.label)
                if e.error is None:
                    fams.append(4 if e.family == socket.AF_INET else 6)
                    self.index[e.family].append(i)
                else:
                    fams.append(0)
        self.width = max((len(x) for x, f in zip(labels, fams, strict=True) if f), default=0)


def _open(plan: Plan, o: Options, window: int) -> None:
    from ..probe import UseSubprocess, open_icmp_socket

    next_slot: dict[int, int] = {}
    singles: dict[int, list[str]] = {}
    for e in plan.entries:
        fam = socket.AF_INET if isinstance(e, V4Block) else (e.family if e.error is None else 0)
        plan.first_slot.append(next_slot.get(fam, 0))
        if fam:
            next_slot[fam] = next_slot.get(fam, 0) + (e.count if isinstance(e, V4Block) else 1)
    for fam in next_slot:
        if not fam:
            continue
        try:
            sock = open_icmp_socket(
                fam,
                mode="auto",
                payload_size=o.size,
                ttl=o.ttl,
                tos=o.tos,
                dont_fragment=o.dontfrag,
                window=window,
            )
        except UseSubprocess as why:
            raise Refused(
                "fastping-fping needs an ICMP socket (raw, or unprivileged dgram): "
                f"{why.reason.splitlines()[0]}; run `fastping doctor` for the fix"
            ) from None
        plan.socks[fam] = sock
        _bind(sock, o)
        singles[fam] = []
    # load slots in entry order, batching consecutive single addresses
    for e in plan.entries:
        if isinstance(e, V4Block):
            sock = plan.socks[socket.AF_INET]
            if singles[socket.AF_INET]:
                sock.append_targets(singles[socket.AF_INET])
                singles[socket.AF_INET] = []
            sock.append_range_v4(e.first, e.count)
        elif e.error is None:
            singles[e.family].append(e.address or "")
    for fam, batch in singles.items():
        if batch:
            plan.socks[fam].append_targets(batch)


def _bind(sock: Any, o: Options) -> None:
    """-I (SO_BINDTODEVICE) and -S (bind to a source address) on the core's socket."""
    if not (o.iface or o.src):
        return
    s = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        if o.iface:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, o.iface.encode())
            except OSError as e:
                raise Usage(
                    f"binding to specific interface (SO_BINTODEVICE): {e.strerror}",
                    hint=False,
                    prefix=False,
                ) from None
        if o.src:
            try:
                ip = ipaddress.ip_address(o.src)
            except ValueError:
                raise Usage(f"can't parse source address: {o.src}", hint=False) from None
            if (ip.version == 4) == (sock.family == socket.AF_INET):
                try:
                    s.bind((o.src, 0))
                except OSError as e:
                    raise Usage(f"cannot bind source address : {e.strerror}") from None
    finally:
        os.close(s.detach())


# -- formatting ------------------------------------------------------------


def sprint_tm(ms: float) -> str:
    """fping's sprint_tm: three significant-ish digits, as its output shows them."""
    if ms < 0:
        return f"{ms:.3f}"
    if ms < 1.0:
        return f"{ms:.3f}"
    if ms < 10.0:
        return f"{ms:.2f}"
    if ms < 100.0:
        return f"{ms:.1f}"
    if ms < 1e6:
        return f"{ms:.0f}"
    return f"{ms:.3e}"


def _icmp_error(
    out: Out, totals: Totals, o: Options, ev: tuple[Any, ...], target: str, family: int
) -> None:
    """An ICMP error for one of our probes: counted as fping's "other ICMP received"
    and reported on stderr unless -q. IPv4 only: fping 5.1's ICMPv6 socket lets only
    echo replies through (ICMP6_FILTER), so it neither reports nor counts the others."""
    if family == socket.AF_INET6:
        return
    totals.other_icmp += 1
    if not o.quiet:
        out.err(_icmp_error_text(ev[1], ev[5], ev[6], ev[7], target))


def _icmp_error_text(
    kind: int, itype: int | None, code: int | None, router: str | None, target: str
) -> str:
    if kind == EV_TIME_EXCEEDED:
        what = "ICMP Time Exceeded"
    elif itype == 3 and code is not None and 0 <= code < len(_UNREACH):
        what = _UNREACH[code]
    else:
        what = f"ICMP type {itype} code {code}"
    return f"{what} from {router} for ICMP Echo sent to {target}"


class Out:
    """Buffered stdout/stderr; flushed at each round so lines stream like fping's."""

    def __init__(self) -> None:
        self.o: list[str] = []
        self.e: list[str] = []

    def out(self, line: str) -> None:
        self.o.append(line)
        if len(self.o) >= 8192:
            self._flush(self.o, sys.stdout)

    def err(self, line: str) -> None:
        self.e.append(line)
        if len(self.e) >= 8192:
            self._flush(self.e, sys.stderr)

    @staticmethod
    def _flush(buf: list[str], stream: TextIO) -> None:
        if buf:
            stream.write("\n".join(buf) + "\n")
            buf.clear()
        stream.flush()

    def flush(self) -> None:
        self._flush(self.o, sys.stdout)
        self._flush(self.e, sys.stderr)


@dataclass
class Totals:
    sent: int = 0
    received: int = 0  # duplicates included, as fping counts them
    timed: int = 0  # replies in the RTT figures (duplicates not)
    timeouts: int = 0
    other_icmp: int = 0
    rtt_min: float = math.inf
    rtt_max: float = 0.0
    rtt_sum: float = 0.0

    def reply(self, ms: float) -> None:
        self.received += 1
        self.timed += 1
        self.rtt_sum += ms
        self.rtt_min = min(self.rtt_min, ms)
        self.rtt_max = max(self.rtt_max, ms)


def _stats_block(
    out: Out, t: Totals, n_hosts: int, alive: int, unknown: int, elapsed_s: float
) -> None:
    """fping's print_global_stats (-s), on stderr."""
    out.err("")
    resolved = n_hosts - unknown  # fping counts only the targets it could ping
    out.err(f" {resolved:7d} targets")
    out.err(f" {alive:7d} alive")
    out.err(f" {resolved - alive:7d} unreachable")
    out.err(f" {unknown:7d} unknown addresses")
    out.err("")
    out.err(f" {t.timeouts:7d} timeouts (waiting for response)")
    out.err(f" {t.sent:7d} ICMP Echos sent")
    out.err(f" {t.received:7d} ICMP Echo Replies received")
    out.err(f" {t.other_icmp:7d} other ICMP received")
    out.err("")
    if t.timed:
        mn, avg, mx = t.rtt_min, t.rtt_sum / t.timed, t.rtt_max
    else:
        mn = avg = mx = 0.0
    out.err(f" {sprint_tm(mn)} ms (min round trip time)")
    out.err(f" {sprint_tm(avg)} ms (avg round trip time)")
    out.err(f" {sprint_tm(mx)} ms (max round trip time)")
    out.err(f" {elapsed_s:12.3f} sec (elapsed real time)")
    out.err("")


# -- running ---------------------------------------------------------------


def _rate(o: Options) -> float:
    """fping's -i is the gap between any two packets sent, in ms: a total rate."""
    return 0.0 if o.interval_ms <= 0 else 1000.0 / o.interval_ms


def run_fping(o: Options) -> int:
    t_start = time.perf_counter()
    out = Out()
    targets = list(o.targets)
    for f in o.files:
        targets.extend(read_file(f))
    if o.generate:
        if o.files:
            raise Usage("specify only one of -g, -f")
        entries: list[Entry] = _generate(o)
    else:
        entries = [_single(t, o) for t in targets]
    if not entries:
        raise Usage(_HELP.rstrip("\n"), hint=False, prefix=False)  # fping: its usage
    _resolve_names(entries, o)
    unknown = 0
    for e in entries:
        if isinstance(e, Target) and e.error is not None:
            unknown += 1
            if not o.quiet:  # fping -q keeps even these to itself (the exit status says 2)
                sys.stderr.write(f"{e.label}: {e.error}\n")
    sys.stderr.flush()
    plan = Plan(entries)
    counting = bool(o.count) or o.loop
    period_s = o.period_ms / 1000.0
    if o.timeout_ms is None:
        timeout_s = min(period_s, 2.0) if counting else 0.5
    else:
        timeout_s = o.timeout_ms / 1000.0
    overlap = counting and not o.loop and timeout_s > period_s and o.count > 1
    window = min(o.count, math.ceil(timeout_s / period_s) + 1, 64) if overlap and period_s else 1
    if overlap and not period_s:
        window = min(o.count, 64)
    _open(plan, o, max(1, window))
    plan.build()
    totals = Totals()
    try:
        if counting:
            alive = _run_count(plan, o, out, totals, timeout_s, overlap)
        else:
            alive = _run_default(plan, o, out, totals, timeout_s)
    finally:
        for s in plan.socks.values():
            s.close()
    if o.stats:
        _stats_block(out, totals, plan.n_hosts, alive, unknown, time.perf_counter() - t_start)
    out.flush()
    if o.reachable is not None:
        return 0 if alive >= o.reachable else 1
    if unknown:
        return 2
    return 0 if alive == plan.n_hosts else 1


def _gather(
    plan: Plan,
    totals: Totals,
    slots: dict[int, list[int] | None],
    count: int,
    interval_s: float,
    timeout_s: float,
    rate: float,
    events: bool = True,
) -> list[tuple[int, list[Any]]]:
    """One ``IcmpSocket.sweep`` per family (side by side: the core releases the GIL),
    returning each family's events (none with ``events=False``: read slot_stats).
    ``slots[fam]``: None for all, or the ones to probe."""
    import threading

    work = {
        f: (sock.n_slots if slots.get(f) is None else len(slots[f] or []))
        for f, sock in plan.socks.items()
    }
    total = sum(work.values())
    res: list[tuple[int, list[Any]]] = []
    errors: list[BaseException] = []

    def one(fam: int) -> None:
        # -i is a gap between any two packets: a global budget, shared by the work
        share = rate * work[fam] / total if rate else 0.0
        try:
            ev = plan.socks[fam].sweep(count, interval_s, timeout_s, share, slots.get(fam), events)
            res.append((fam, ev or []))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    jobs = [f for f in plan.socks if work[f]]
    if len(jobs) == 1:
        one(jobs[0])
    else:
        ths = [threading.Thread(target=one, args=(f,)) for f in jobs]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    if errors:
        raise errors[0]
    totals.sent += total * count
    return res


def _run_default(plan: Plan, o: Options, out: Out, totals: Totals, timeout_s: float) -> int:
    """fping's default mode: each host until it answers, -r retries, -B backoff."""
    rate = _rate(o)
    idx = plan.index
    labels = plan.labels
    n = plan.n_hosts
    rtt = array("d", [math.nan]) * n
    pending: dict[int, list[int] | None] = {f: None for f in plan.socks}
    verbose = not (o.quiet or o.alive or o.unreach or o.reachable is not None)
    alive = 0
    tmo = timeout_s
    for attempt in range(o.retry + 1):
        if attempt:
            tmo *= o.backoff
        evs = _gather(plan, totals, pending, 1, 0.0, tmo, rate)
        answered: dict[int, set[int]] = {f: set() for f in plan.socks}
        for fam, events in evs:
            gi = idx[fam]
            for ev in events:
                kind = ev[1]
                if kind == EV_REPLY:
                    i = gi[ev[0]]
                    if math.isnan(rtt[i]):
                        rtt[i] = ev[3] / 1e6
                        answered[fam].add(ev[0])
                        alive += 1
                    totals.reply(ev[3] / 1e6)
                elif kind in (EV_UNREACHABLE, EV_TIME_EXCEEDED):
                    totals.timeouts += 1
                    _icmp_error(out, totals, o, ev, labels[gi[ev[0]]], fam)
                elif kind in (EV_TIMEOUT, EV_SEND_ERROR):
                    totals.timeouts += 1
                elif kind == EV_DUPLICATE:
                    totals.received += 1  # fping counts them among the replies
                    out.err(_dup_line(labels[gi[ev[0]]], ev[2], o.size, ev[3]))
        for fam in plan.socks:
            prev = pending[fam]
            rest = [
                s
                for s in (range(plan.socks[fam].n_slots) if prev is None else prev)
                if s not in answered[fam]
            ]
            pending[fam] = rest
        if o.fast_reachable and o.reachable is not None and alive >= o.reachable:
            break
        if not any(pending.values()):
            break
    if verbose or o.alive or o.unreach:
        for i, label in enumerate(labels):
            if not plan.families[i]:
                continue
            up = not math.isnan(rtt[i])
            if o.alive and up or o.unreach and not up:
                out.out(label)
            elif verbose:
                if up:
                    out.out(
                        f"{label} is alive ({sprint_tm(rtt[i])} ms)"
                        if o.elapsed
                        else f"{label} is alive"
                    )
                else:
                    out.out(f"{label} is unreachable")
    _reachable_line(o, out, alive)
    return alive


def _reachable_line(o: Options, out: Out, alive: int) -> None:
    if o.reachable is None:
        return
    word = "Enough" if alive >= o.reachable else "Not enough"
    out.out(f"{word} hosts reachable (required: {o.reachable}, reachable: {alive})")


class _Stop:
    def __init__(self) -> None:
        self.stop = False

    def __call__(self, *_a: object) -> None:
        self.stop = True


def _run_count(
    plan: Plan, o: Options, out: Out, totals: Totals, timeout_s: float, overlap: bool
) -> int:
    """-c / -C / -l: per-probe lines, then per-host summaries."""
    rate = _rate(o)
    idx = plan.index
    labels = plan.labels
    fams = plan.families
    n = plan.n_hosts
    width = plan.width
    sent = array("q", [0]) * n
    recv = array("q", [0]) * n
    mn = array("d", [math.inf]) * n
    mx = array("d", [0.0]) * n
    sm = array("d", [0.0]) * n
    keep_rtts = o.vcount or o.json
    # one row of RTTs per round (NaN: lost), for -C and -J
    rtts: list[array[float]] = []
    verbose = not (o.quiet or o.alive or o.unreach or o.reachable is not None or o.json)
    stop = _Stop()
    old = signal.signal(signal.SIGINT, stop) if o.loop else None
    period_s = o.period_ms / 1000.0
    t0 = time.time()
    next_q = time.monotonic() + o.squiet_s
    # -Q: each interval summary covers that interval only (fping resets them)
    q = _interval(n) if o.squiet_s else []
    rounds = 1 if overlap else (o.count if o.count else -1)
    count_per_sweep = o.count if overlap else 1
    # nothing printed per probe (-q, and -q hides ICMP errors too) and one round per
    # sweep: the round's outcome is read from the core's per-slot counters instead of
    # one event tuple per probe (a million targets: ~130 MB and seconds less)
    from_stats = o.quiet and not overlap and not o.squiet_s
    other = array("q", [0]) * n if from_stats else array("q")
    dups = array("q", [0]) * n if from_stats else array("q")
    r = 0
    try:
        while (rounds < 0 or r < rounds) and not stop.stop:
            if not overlap and r:
                while True:  # until this round is due, with -Q's summaries on time
                    delay = t0 + r * period_s - time.time()
                    q_delay = next_q - time.monotonic() if q else math.inf
                    if q and q_delay <= 0:
                        next_q += o.squiet_s
                        out.err(time.strftime("[%H:%M:%S]"))
                        _summaries(
                            out,
                            o,
                            labels,
                            fams,
                            width,
                            q[0],
                            q[1],
                            q[2],
                            q[3],
                            q[4],
                            rtts,
                            interim=True,
                        )
                        out.flush()
                        q = _interval(n)
                        continue
                    if delay <= 0 or stop.stop:
                        break
                    time.sleep(min(delay, q_delay))
                if stop.stop:
                    break
            t_round = time.time()
            evs = _gather(
                plan,
                totals,
                {f: None for f in plan.socks},
                count_per_sweep,
                period_s,
                timeout_s,
                rate,
                events=not from_stats,
            )
            if keep_rtts:
                rtts.extend(array("d", [math.nan]) * n for _ in range(count_per_sweep))
            if from_stats:
                for i in _round_from_stats(
                    plan,
                    totals,
                    sent,
                    recv,
                    mn,
                    mx,
                    sm,
                    other,
                    dups,
                    rtts[r] if keep_rtts else None,
                ):
                    out.err(_dup_line(labels[i], r, o.size, 0))
            lines: list[tuple[int, int, str]] = []
            for fam, events in evs:
                gi = idx[fam]
                for ev in events:
                    kind = ev[1]
                    i = gi[ev[0]]
                    seq = ev[2] if overlap else r
                    if kind == EV_REPLY:
                        ms = ev[3] / 1e6
                        sent[i] += 1
                        recv[i] += 1
                        sm[i] += ms
                        mn[i] = min(mn[i], ms)
                        mx[i] = max(mx[i], ms)
                        totals.reply(ms)
                        if keep_rtts:
                            rtts[seq][i] = ms
                        if q:
                            q[0][i] += 1
                            q[1][i] += 1
                            q[2][i] = min(q[2][i], ms)
                            q[3][i] = max(q[3][i], ms)
                            q[4][i] += ms
                        if verbose:
                            loss = (sent[i] - recv[i]) * 100 // sent[i]
                            ts = _ts(o, t_round + seq * period_s * overlap + ms / 1000)
                            lines.append(
                                (
                                    seq,
                                    i,
                                    f"{ts}{labels[i]:<{width}} : [{seq}], "
                                    f"{o.size + 8} bytes, {sprint_tm(ms)} ms "
                                    f"({sprint_tm(sm[i] / recv[i])} avg, {loss}% loss)",
                                )
                            )
                    elif kind in (EV_TIMEOUT, EV_UNREACHABLE, EV_TIME_EXCEEDED, EV_SEND_ERROR):
                        sent[i] += 1
                        totals.timeouts += 1
                        if q:
                            q[0][i] += 1
                        if kind in (EV_UNREACHABLE, EV_TIME_EXCEEDED):
                            _icmp_error(out, totals, o, ev, labels[i], fam)
                        if verbose:
                            loss = (sent[i] - recv[i]) * 100 // sent[i]
                            avg = sprint_tm(sm[i] / recv[i]) if recv[i] else "NaN"
                            ts = _ts(o, time.time())
                            lines.append(
                                (
                                    seq,
                                    i,
                                    f"{ts}{labels[i]:<{width}} : [{seq}], timed out "
                                    f"({avg} avg, {loss}% loss)",
                                )
                            )
                    elif kind == EV_DUPLICATE:
                        totals.received += 1
                        # fping 5.1 reports duplicates only where it prints no line per
                        # reply (-q, -a, -u, -x)
                        if not verbose:
                            out.err(_dup_line(labels[i], seq, o.size, ev[3]))
            lines.sort()
            for _s, _i, text in lines:
                out.out(text)
            r += 1
            out.flush()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    alive = sum(1 for i in range(n) if recv[i])
    if o.json:
        _json(out, o, labels, fams, sent, recv, mn, mx, sm, rtts)
    else:
        if verbose:
            out.err("")
        _reachable_line(o, out, alive)
        _summaries(out, o, labels, fams, width, sent, recv, mn, mx, sm, rtts, interim=False)
    return alive


def _interval(n: int) -> list[Any]:
    """Per-host sent, received, min, max and RTT sum of one -Q interval."""
    return [
        array("q", [0]) * n,
        array("q", [0]) * n,
        array("d", [math.inf]) * n,
        array("d", [0.0]) * n,
        array("d", [0.0]) * n,
    ]


def _round_from_stats(
    plan: Plan,
    totals: Totals,
    sent: array[int],
    recv: array[int],
    mn: array[float],
    mx: array[float],
    sm: array[float],
    other: array[int],
    dups: array[int],
    row: array[float] | None,
) -> list[int]:
    """Fold one single-probe round into the per-host arrays from the core's cumulative
    per-slot counters: a host whose reply count grew answered, with the RTT by which
    its RTT sum grew. Returns the hosts that got a duplicate reply."""
    dup_hosts: list[int] = []
    got, rsum, rmin, rmax = 0, 0.0, math.inf, 0.0
    for fam, sock in plan.socks.items():
        gi = plan.index[fam]
        stats = sock.slot_stats
        for slot in range(sock.n_slots):
            st = stats(slot)
            i = gi[slot]
            sent[i] += 1
            if st.duplicates != dups[i]:
                totals.received += st.duplicates - dups[i]
                dups[i] = st.duplicates
                dup_hosts.append(i)
            # see _icmp_error
            bad = st.unreachable + st.time_exceeded if fam == socket.AF_INET else 0
            if bad != other[i]:
                totals.other_icmp += bad - other[i]
                other[i] = bad
            if st.received > recv[i]:
                total_ms = st.sum_ns / 1e6
                ms = total_ms - sm[i]
                recv[i] = st.received
                sm[i] = total_ms
                mn[i] = st.min_ns / 1e6
                mx[i] = st.max_ns / 1e6
                got += 1
                rsum += ms
                if ms < rmin:
                    rmin = ms
                if ms > rmax:
                    rmax = ms
                if row is not None:
                    row[i] = ms
            else:
                totals.timeouts += 1
    totals.received += got
    totals.timed += got
    totals.rtt_sum += rsum
    totals.rtt_min = min(totals.rtt_min, rmin)
    totals.rtt_max = max(totals.rtt_max, rmax)
    return sorted(dup_hosts)


def _dup_line(label: str, seq: int, size: int, rtt_ns: int) -> str:
    # the core reports no RTT for a duplicate (rtt_ns 0): printed as 0.000
    return f"{label} : duplicate for [{seq}], {size + 8} bytes, {sprint_tm(rtt_ns / 1e6)} ms"


def _ts(o: Options, t: float) -> str:
    return f"[{t:.5f}] " if o.timestamp else ""


def _summaries(
    out: Out,
    o: Options,
    labels: list[str],
    fams: bytearray,
    width: int,
    sent: array[int],
    recv: array[int],
    mn: array[float],
    mx: array[float],
    sm: array[float],
    rtts: list[array[float]],
    interim: bool,
) -> None:
    if o.vcount and not interim and len(rtts) == 1:
        # -C 1 (SmokePing's shape at a million targets): one comprehension, no call per host
        row = rtts[0]
        out.flush()
        for lo in range(0, len(labels), 65536):
            hi = min(lo + 65536, len(labels))
            out.e.extend(
                [
                    f"{labels[i]:<{width}} : "
                    + (
                        "-"
                        if row[i] != row[i]
                        else f"{row[i]:.3f}"
                        if row[i] < 1.0
                        else sprint_tm(row[i])
                    )
                    for i in range(lo, hi)
                    if fams[i]
                ]
            )
            out.flush()
        return
    for i, label in enumerate(labels):
        if not fams[i]:
            continue
        if o.vcount and not interim:
            vals = " ".join("-" if math.isnan(row[i]) else sprint_tm(row[i]) for row in rtts)
            out.err(f"{label:<{width}} : {vals}")
            continue
        s, rc = sent[i], recv[i]
        loss = (s - rc) * 100 // s if s else 0
        line = f"{label:<{width}} : xmt/rcv/%loss = {s}/{rc}/{loss}%"
        if rc:
            line += f", min/avg/max = {sprint_tm(mn[i])}/{sprint_tm(sm[i] / rc)}/{sprint_tm(mx[i])}"
        out.err(line)


def _json(
    out: Out,
    o: Options,
    labels: list[str],
    fams: bytearray,
    sent: array[int],
    recv: array[int],
    mn: array[float],
    mx: array[float],
    sm: array[float],
    rtts: list[array[float]],
) -> None:
    """-J: one JSON document on stdout, ``{"hosts": {label: ...}}``: with -C each
    host's RTT list (null for a lost probe), otherwise its xmt/rcv/loss/min/avg/max."""
    import json

    hosts: dict[str, Any] = {}
    for i, label in enumerate(labels):
        if not fams[i]:
            continue
        if o.vcount:
            hosts[label] = [None if math.isnan(row[i]) else round(row[i], 3) for row in rtts]
        else:
            s, rc = sent[i], recv[i]
            d: dict[str, Any] = {
                "xmt": s,
                "rcv": rc,
                "loss_percentage": (s - rc) * 100 // s if s else 0,
            }
            if rc:
                d.update(min=round(mn[i], 3), avg=round(sm[i] / rc, 3), max=round(mx[i], 3))
            hosts[label] = d
    out.out(json.dumps({"hosts": hosts}, indent=2))


# -- entry points ----------------------------------------------------------


def _die(msg: str, code: int, hint: bool = False, prefix: bool = True) -> NoReturn:
    sys.stderr.write(f"{PROG}: {msg}\n" if prefix else f"{msg}\n")
    if hint:
        sys.stderr.write(f"see '{PROG} -h' for usage information\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``fastping-fping``: fping's command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        o = parse(argv)
        return run_fping(o)
    except _Help:
        sys.stdout.write(_HELP)
        return 0
    except _Version:
        from .. import __version__

        sys.stdout.write(f"{PROG}: Version 5.1 (fastping-fping {__version__})\n")
        return 0
    except Usage as e:
        _die(str(e), EXIT_USAGE, e.hint, e.prefix)
    except Refused as e:
        _die(str(e), EXIT_REFUSED)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        _die(f"system error: {e}", EXIT_SYSTEM)
    except Exception as e:  # the core's own errors (PermissionDenied, SocketError)
        from ..errors import FastpingError

        if isinstance(e, FastpingError):
            _die(str(e), EXIT_SYSTEM)
        raise


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``fastping fping ARGS...``: everything after ``fping`` is fping's command line."""
    p.add_argument(
        "fping_args",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="fping 5.x options and targets (fastping fping -h lists them)",
    )
    p.prefix_chars = "\0"  # no option of ours: fping's parser reads them all


def run(args: argparse.Namespace) -> int:
    return main(list(args.fping_args))


_HELP = """Usage: fastping-fping [options] [targets...]   (fping 5.x's options, fastping's core)

Probing options:
   -4, --ipv4         only ping IPv4 addresses
   -6, --ipv6         only ping IPv6 addresses
   -b, --size=BYTES   amount of ping data to send, in bytes (default: 56, at least 16)
   -B, --backoff=N    set exponential backoff factor to N (default: 1.5)
   -c, --count=N      count mode: send N pings to each target
   -f, --file=FILE    read list of targets from a file ( - means stdin)
   -g, --generate     generate target list (start and end IP, or a CIDR address)
   -H, --ttl=N        set the IP TTL value (Time To Live hops)
   -I, --iface=IFACE  bind to a particular interface
   -l, --loop         loop mode: send pings forever
   -M, --dontfrag     set the Don't Fragment flag
   -O, --tos=N        set the type of service (tos) flag on the ICMP packets
   -p, --period=MSEC  interval between ping packets to one target (in ms)
   -r, --retry=N      number of retries (default: 3)
   -S, --src=IP       set source address
   -t, --timeout=MSEC individual target initial timeout (default: 500 ms,
                      except with -l/-c/-C, where it's the -p period up to 2000 ms)

Output options:
   -a, --alive        show targets that are alive
   -A, --addr         show targets by address
   -C, --vcount=N     same as -c, report results in verbose format
   -D, --timestamp    print timestamp before each output line
   -e, --elapsed      show elapsed time on return packets
   -i, --interval=MSEC  interval between sending ping packets (default: 10 ms)
   -J, --json         output in JSON format (-c, -C, or -l required)
   -q, --quiet        quiet (don't show per-target/per-ping results)
   -Q, --squiet=SECS  same as -q, but add interval summary every SECS seconds
   -s, --stats        print final stats
   -u, --unreach      show targets that are unreachable
   -v, --version      show version
   -x, --reachable=N  shows if >=N hosts are reachable or not
   -X, --fast-reachable=N  exits true immediately when N hosts are found

Refused (fastping-fping says so and exits 3): -d -n -m -R -N -o
"""


if __name__ == "__main__":
    sys.exit(main())
