"""Subprocess mode: probe with the system ``ping`` when no ICMP socket may be opened.

This is the last step of ``mode="auto"`` (raw -> dgram -> subprocess) and can be
forced with ``mode="subprocess"``. It runs one ``ping`` process per target,
many at once up to a bound, and parses what ping prints (iputils and BusyBox
formats; GNU inetutils prints the same shapes) into the same
:class:`~fastping.results.HostResult` the socket modes return.

Safety: every target is parsed by :func:`fastping.targets.parse_target` and
resolved to a numeric address *before* any process starts; only that numeric
address (re-checked with :mod:`ipaddress`) reaches ping's argument list, after
``--``. The command is an argument list run with ``create_subprocess_exec``;
no shell is ever involved, so ``; rm -rf /`` is just a bad target (TargetError)
and ``-f`` cannot become an option.

Limits (also in ``docs/modes.md``):

* No per-probe kernel timestamps: RTTs are the 3-decimal milliseconds ping
  prints, measured by ping in user space (its own ``SO_TIMESTAMP`` when it has
  one, not ours); our RTTs in the socket modes come from the kernel receive time.
* Slower and heavier: one process per target (fork/exec, a socket each, ~1-2 ms
  of CPU), bounded by ``max_concurrency``; a sweep of thousands of targets
  takes roughly ``ceil(n / max_concurrency)`` ping run times. Use raw or dgram
  mode for large sweeps.
* ICMP errors are reported only as far as ping prints them: iputils prints
  "Destination Host Unreachable" / "Time to live exceeded" lines (counted as
  ``unreachable`` / ``time_exceeded`` with the reporting router); BusyBox ignores
  ICMP errors, so there they count as timeouts. No ICMP type/code numbers.
* Late replies are not seen (ping stops listening after ``-W``); duplicates are
  counted from ping's ``(DUP!)`` marks.
* BusyBox ping cannot set ToS or don't-fragment (a ConfigError says so) and
  takes its reply timeout in whole seconds (rounded up).
* Interval: iputils refuses intervals below 2 ms for non-root users
  ("cannot flood"); that message is reported as the host's error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import re
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import ConfigError, PermissionDenied, TargetError
from .privilege import PingBinary, diagnose, find_ping
from .results import HOST_COUNTS, HostResult, SweepResult, rtt_summary
from .targets import Address, Name, Spec, V4Range, parse_target, resolve

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "MAX_SUBPROCESS_TARGETS",
    "ParsedPing",
    "async_subprocess_sweep",
    "build_ping_argv",
    "hosts_to_sweep_result",
    "parse_ping_output",
    "subprocess_sweep",
]

DEFAULT_MAX_CONCURRENCY = 64
# One process per target: past this a sweep would take minutes and fork storms
# hurt the host; socket modes handle millions. Refuse with a clear message.
MAX_SUBPROCESS_TARGETS = 16384
# Extra seconds we give ping beyond count*interval + timeout before killing it.
KILL_GRACE_S = 5.0
MAX_PAYLOAD_SIZE = 65507

# -- output parsing ------------------------------------------------------------

# iputils: "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.031 ms"
# BusyBox: "64 bytes from 127.0.0.1: seq=0 ttl=64 time=0.030 ms"
# (with -n off iputils prints "from localhost (127.0.0.1):"; old iputils IPv6 "hlim=")
_REPLY = re.compile(
    r"^\d+ bytes from (?P<src>.+?): (?:icmp_)?seq=(?P<seq>\d+)"
    r"(?: (?:ttl|hlim)=(?P<ttl>\d+))?"
    r" time[=<](?P<rtt>[0-9.]+) ?ms(?P<rest>.*)$"
)
# iputils ICMP errors: "From 10.91.0.2 icmp_seq=1 Time to live exceeded"
_ICMP_ERROR = re.compile(
    r"^From (?P<router>\S+?)(?: \((?P<addr>[^)]+)\))?:? icmp_seq=(?P<seq>\d+) (?P<what>.+)$"
)
# "4 packets transmitted, 2 received, +1 duplicates, +2 errors, 50% packet loss, time 608ms"
# "2 packets transmitted, 2 packets received, 1 duplicates, 0% packet loss"
_SUMMARY = re.compile(
    r"^(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received(?P<rest>.*)$"
)
_SUMMARY_PART = re.compile(r"\+?(?P<n>\d+) (?P<what>duplicates|errors|corrupted)")
# "rtt min/avg/max/mdev = 0.033/0.222/0.591/0.260 ms" / "round-trip min/avg/max = a/b/c ms"
_RTT_LINE = re.compile(
    r"^(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = "
    r"(?P<min>[0-9.]+)/(?P<avg>[0-9.]+)/(?P<max>[0-9.]+)(?:/(?P<dev>[0-9.]+))? ?ms"
)
# What ping prints when it may not open its socket (iputils, BusyBox, inetutils).
_PERMISSION_MARKERS = (
    "operation not permitted",
    "permission denied",
    "lacking privilege",
    "missing cap_net_raw",
)
# Local send failures (the probe never left): counted as send_errors, like the core's EV_SEND_ERROR.
_SEND_ERROR = re.compile(r"^(?:\S*ping\S*: )?(?:connect|sendto|sendmsg|send): (?P<msg>.+)$")


@dataclass(slots=True)
class ParsedPing:
    """What one ping run reported, before it becomes a HostResult."""

    transmitted: int | None = None  # from the summary; None when ping printed none
    received: int | None = None
    duplicates: int = 0
    errors: int = 0  # iputils "+N errors" (ICMP errors received)
    rtts_ms: list[float] = field(default_factory=list)  # first answer to each seq, in order
    dup_rtts_ms: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    ttl: int | None = None
    unreachable: int = 0
    time_exceeded: int = 0
    router: str | None = None
    last_error: str | None = None  # the last ICMP error line, in words
    send_errors: int = 0
    send_error_text: str | None = None
    summary_min_ms: float | None = None
    summary_avg_ms: float | None = None
    summary_max_ms: float | None = None
    summary_dev_ms: float | None = None
    header_seen: bool = False  # the "PING host ..." line: ping got as far as sending
    permission_error: str | None = None
    other_errors: list[str] = field(default_factory=list)


def parse_ping_output(text: str) -> ParsedPing:
    """Parse iputils / BusyBox / inetutils ``ping`` output (stdout and stderr merged)."""
    p = ParsedPing()
    seen_seq: set[int] = set()
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        m = _REPLY.match(line)
        if m:
            seq = int(m["seq"])
            rtt = float(m["rtt"])
            if "(DUP!)" in m["rest"] or seq in seen_seq:
                p.dup_rtts_ms.append(rtt)
                continue
            seen_seq.add(seq)
            p.seqs.append(seq)
            p.rtts_ms.append(rtt)
            if m["ttl"] is not None:
                p.ttl = int(m["ttl"])
            continue
        if line.startswith("PING "):
            p.header_seen = True
            continue
        m = _ICMP_ERROR.match(line)
        if m:
            what = m["what"].strip()
            if what.lower().startswith("redirect"):
                continue  # a redirect is advice to our router table, not the probe's fate
            if "exceeded" in what.lower():
                p.time_exceeded += 1
            else:
                p.unreachable += 1
            p.router = m["addr"] or m["router"].rstrip(":")
            p.last_error = f"{what} (from {p.router})"
            continue
        m = _SUMMARY.match(line)
        if m:
            p.transmitted = int(m["tx"])
            p.received = int(m["rx"])
            for part in _SUMMARY_PART.finditer(m["rest"]):
                if part["what"] == "duplicates":
                    p.duplicates = int(part["n"])
                elif part["what"] == "errors":
                    p.errors = int(part["n"])
            continue
        m = _RTT_LINE.match(line)
        if m:
            p.summary_min_ms = float(m["min"])
            p.summary_avg_ms = float(m["avg"])
            p.summary_max_ms = float(m["max"])
            p.summary_dev_ms = float(m["dev"]) if m["dev"] else None
            continue
        if line.startswith("---"):
            continue
        low = line.lower()
        if any(k in low for k in _PERMISSION_MARKERS):
            p.permission_error = (p.permission_error + " | " + line) if p.permission_error else line
            continue
        m = _SEND_ERROR.match(line)
        if m:
            p.send_errors += 1
            p.send_error_text = line
            continue
        if "ping" in low and ":" in line:
            p.other_errors.append(line)
    if p.duplicates == 0 and p.dup_rtts_ms:
        p.duplicates = len(p.dup_rtts_ms)
    return p


def to_host_result(
    parsed: ParsedPing,
    *,
    target: str,
    address: str | None,
    count: int,
    collect_rtts: bool = False,
    killed_after_s: float | None = None,
) -> HostResult:
    """Map a parsed ping run onto the HostResult every mode returns."""
    h = HostResult(target=target, address=address)
    gave_up = parsed.transmitted is None and parsed.send_errors > 0
    if parsed.transmitted is not None:
        h.sent = parsed.transmitted
        # the summary counts unique replies (right even under ping -q)
        h.received = parsed.received if parsed.received is not None else len(parsed.rtts_ms)
    elif parsed.permission_error:
        pass  # ping could not open its socket: nothing was sent
    elif parsed.header_seen or gave_up or killed_after_s is not None:
        # No summary: ping gave up on a local send error (iputils "connect:
        # Network is unreachable", BusyBox "sendto: ...") or was killed after
        # its whole run time: it was asked for ``count`` probes.
        h.sent = count
        h.received = min(len(parsed.rtts_ms), count)
    # else: ping never started probing (usage error): nothing was sent.
    h.duplicates = parsed.duplicates
    h.unreachable = parsed.unreachable
    h.time_exceeded = parsed.time_exceeded
    if gave_up:
        h.send_errors = h.sent - h.received
    else:
        h.send_errors = min(parsed.send_errors, h.sent)
    h.timeouts = max(0, h.sent - h.received - h.unreachable - h.time_exceeded - h.send_errors)
    h.ttl = parsed.ttl
    if parsed.rtts_ms:
        s = rtt_summary(parsed.rtts_ms)
        h.min_ms, h.avg_ms, h.max_ms = s["min_ms"], s["avg_ms"], s["max_ms"]
        h.stddev_ms, h.jitter_ms = s["stddev_ms"], s["jitter_ms"]
    elif parsed.summary_avg_ms is not None and h.received:
        h.min_ms, h.avg_ms, h.max_ms = (
            parsed.summary_min_ms,
            parsed.summary_avg_ms,
            parsed.summary_max_ms,
        )
        h.stddev_ms = parsed.summary_dev_ms
    if collect_rtts:
        h.rtts_ms = list(parsed.rtts_ms)
    errors = []
    if parsed.permission_error:
        errors.append(parsed.permission_error)
    if parsed.last_error:
        errors.append(parsed.last_error)
    if parsed.send_error_text:
        errors.append(parsed.send_error_text)
    errors.extend(parsed.other_errors)
    if killed_after_s is not None:
        errors.append(f"ping did not finish within {killed_after_s:g} s and was killed")
    h.error = "; ".join(errors) if errors else None
    return h


# -- command line --------------------------------------------------------------


def build_ping_argv(
    ping: PingBinary,
    address: str,
    *,
    count: int,
    interval_s: float,
    timeout_s: float,
    payload_size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    dont_fragment: bool = False,
) -> list[str]:
    """The argument list for one ping run. ``address`` must be a numeric IP
    address; anything else raises TargetError (defence in depth: callers have
    already parsed and resolved it)."""
    ip = _numeric(address)
    fam_flag = "-4" if ip.version == 4 else "-6"
    argv = [ping.path]
    if ping.flavor == "busybox":
        if tos is not None or dont_fragment:
            raise ConfigError(
                "BusyBox ping cannot set ToS or don't-fragment: drop --tos/--dont-fragment, "
                "use --mode raw or dgram, or install iputils-ping"
            )
        # BusyBox -W is whole seconds to wait after the last probe.
        argv += [fam_flag, "-c", str(count), "-W", str(max(1, math.ceil(timeout_s)))]
    else:
        # iputils: -n numeric output; -W accepts fractions since 2020 releases.
        # No -w: with -c it would make iputils send *more* than count probes
        # until count replies arrive (ping(8)); we bound run time ourselves.
        argv += ["-n", fam_flag, "-c", str(count), "-W", _secs(timeout_s)]
        if tos is not None:
            argv += ["-Q", str(int(tos))]
        if dont_fragment:
            argv += ["-M", "do"]
    argv += ["-s", str(int(payload_size))]
    if count > 1:
        argv += ["-i", _secs(interval_s)]
    if ttl is not None:
        argv += ["-t", str(int(ttl))]
    # "--" ends options (getopt); the address cannot start with "-" anyway.
    argv += ["--", str(ip)]
    return argv


def _secs(v: float) -> str:
    # ping parses "0.2" regardless of locale (we also force LC_ALL=C)
    return f"{max(v, 0.001):.3f}".rstrip("0").rstrip(".")


def _numeric(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise TargetError(
            f"{address!r} is not a numeric IP address; subprocess mode passes only "
            "parsed, resolved addresses to ping"
        ) from None


# -- targets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    label: str
    address: str | None
    error: str | None = None


def _plan(targets: Iterable[str | Spec] | str, family: int | None) -> list[_Job]:
    """Validate every target, expand ranges and resolve names: all before any
    process starts, so a bad target stops the sweep before it begins."""
    if isinstance(targets, str):
        targets = [targets]
    specs: list[Spec] = []
    for t in targets:
        if isinstance(t, str):
            specs.extend(parse_target(t))  # TargetError for "; rm -rf /", "-f", ...
        elif isinstance(t, (Address, Name, V4Range)):
            specs.append(t)
        else:
            raise TargetError(f"unsupported target {t!r}: give a string or a parsed target")
    total = 0
    for s in specs:
        total += s.count if isinstance(s, V4Range) else 1
    if total > MAX_SUBPROCESS_TARGETS:
        raise TargetError(
            f"{total} targets is too many for subprocess mode (one ping process each; at most "
            f"{MAX_SUBPROCESS_TARGETS}): use raw or dgram mode (see `fastping doctor`)"
        )
    names = [s.name for s in specs if isinstance(s, Name)]
    resolved = resolve(names, family) if names else {}
    jobs: list[_Job] = []
    for s in specs:
        if isinstance(s, Address):
            ip = _numeric(s.address)
            jobs.append(_Job(len(jobs), s.label, str(ip)))
        elif isinstance(s, V4Range):
            for i in range(s.count):
                a = str(ipaddress.IPv4Address(s.first + i))
                jobs.append(_Job(len(jobs), a, a))
        else:
            r = resolved[s.name]
            if isinstance(r, str):
                jobs.append(_Job(len(jobs), s.name, None, r))
            else:
                jobs.append(_Job(len(jobs), s.name, str(_numeric(r[0]))))
    if family is not None:
        want = 4 if family == socket.AF_INET else 6
        for j in jobs:
            if j.address is not None and ipaddress.ip_address(j.address).version != want:
                raise TargetError(
                    f"target {j.label!r} ({j.address}) is not IPv{want}, but family IPv{want} "
                    "was requested"
                )
    return jobs


# -- running -------------------------------------------------------------------


async def async_subprocess_sweep(
    targets: Iterable[str | Spec] | str,
    *,
    count: int = 1,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    payload_size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    dont_fragment: bool = False,
    family: int | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    collect_rtts: bool = False,
    ping: PingBinary | None = None,
) -> list[HostResult]:
    """Ping every target with the system ``ping``, at most ``max_concurrency``
    processes at once; one HostResult per target, in input order (ranges
    expanded). Raises TargetError for a bad target (before anything runs),
    PermissionDenied when there is no usable ping (message: the diagnosis)."""
    _check_args(count, interval_s, timeout_s, payload_size, ttl, max_concurrency)
    jobs = _plan(targets, family)
    if ping is None:
        ping = find_ping()
    if ping is None:
        raise PermissionDenied(diagnose().explain_none())
    # Build every argv now so option errors (BusyBox + ToS) surface before any process runs.
    argvs = {
        j.index: build_ping_argv(
            ping,
            j.address,
            count=count,
            interval_s=interval_s,
            timeout_s=timeout_s,
            payload_size=payload_size,
            ttl=ttl,
            tos=tos,
            dont_fragment=dont_fragment,
        )
        for j in jobs
        if j.address is not None
    }
    limit_s = count * interval_s + timeout_s + KILL_GRACE_S
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}  # parseable, English output
    sem = asyncio.Semaphore(max_concurrency)

    async def one(job: _Job) -> HostResult:
        if job.address is None:
            return HostResult(target=job.label, address=None, error=job.error)
        async with sem:
            text, killed = await _run(argvs[job.index], env, limit_s)
        parsed = parse_ping_output(text)
        if parsed.permission_error and parsed.transmitted is None and not parsed.rtts_ms:
            raise PermissionDenied(
                f"{ping.path} may not open an ICMP socket ({parsed.permission_error}).\n"
                + diagnose().explain("subprocess")
            )
        return to_host_result(
            parsed,
            target=job.label,
            address=job.address,
            count=count,
            collect_rtts=collect_rtts,
            killed_after_s=limit_s if killed else None,
        )

    results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
    out: list[HostResult] = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        out.append(r)
    return out


async def _run(argv: Sequence[str], env: dict[str, str], limit_s: float) -> tuple[str, bool]:
    """Run one ping (argument list, no shell); (merged output, killed?)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    killed = False
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except asyncio.TimeoutError:
        killed = True
        proc.kill()
        out, _ = await proc.communicate()
    except BaseException:  # cancelled: never leave a ping behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return out.decode("utf-8", "replace"), killed


def _check_args(
    count: int,
    interval_s: float,
    timeout_s: float,
    payload_size: int,
    ttl: int | None,
    max_concurrency: int,
) -> None:
    if count < 1:
        raise ConfigError(f"count must be at least 1, not {count}")
    if interval_s < 0:
        raise ConfigError(f"interval_s must be >= 0, not {interval_s}")
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be > 0, not {timeout_s}")
    if not 0 <= payload_size <= MAX_PAYLOAD_SIZE:
        raise ConfigError(f"payload_size must be 0..{MAX_PAYLOAD_SIZE}, not {payload_size}")
    if ttl is not None and not 1 <= ttl <= 255:
        raise ConfigError(f"ttl must be 1..255, not {ttl}")
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be at least 1, not {max_concurrency}")


def subprocess_sweep(
    targets: Iterable[str | Spec] | str,
    *,
    count: int = 1,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    payload_size: int = 56,
    ttl: int | None = None,
    tos: int | None = None,
    dont_fragment: bool = False,
    family: int | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    collect_rtts: bool = False,
    ping: PingBinary | None = None,
) -> list[HostResult]:
    """Blocking twin of :func:`async_subprocess_sweep` (same arguments). Safe to
    call from inside a running event loop: it then runs on a worker thread."""
    coro = async_subprocess_sweep(
        targets,
        count=count,
        interval_s=interval_s,
        timeout_s=timeout_s,
        payload_size=payload_size,
        ttl=ttl,
        tos=tos,
        dont_fragment=dont_fragment,
        family=family,
        max_concurrency=max_concurrency,
        collect_rtts=collect_rtts,
        ping=ping,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(asyncio.run, coro).result()


def hosts_to_sweep_result(hosts: Sequence[HostResult], duration_s: float) -> SweepResult:
    """Wrap subprocess results in the SweepResult the socket modes return, with
    totals summed from the hosts (there is no socket to ask)."""
    totals = {k: sum(getattr(h, k) for h in hosts) for k in HOST_COUNTS}
    totals["resolve_errors"] = sum(1 for h in hosts if h.address is None)
    items = list(hosts)
    return SweepResult(len(items), items.__getitem__, totals, duration_s)

