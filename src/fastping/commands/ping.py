"""``fastping ping``: ping one host, one line per reply, like ping(8)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import HostResult, ProbeResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes
    from .sweep import add_common

    p.add_argument(
        "host", metavar="HOST",
        help="address or host name; tcp://HOST:PORT or udp://HOST:PORT for TCP or UDP probes",
    )  # fmt: skip
    p.add_argument(
        "-c", "--count", type=argtypes.count, default=4, metavar="N", help="probes (default 4)"
    )
    p.add_argument(
        "-i",
        "--interval",
        type=argtypes.seconds(0.0, 86400.0),
        default=1.0,
        metavar="S",
        help="seconds between probes (default 1)",
    )
    p.add_argument(
        "--tcp",
        action="store_true",
        help="TCP probes to --port instead of ICMP echo: open (SYN-ACK), closed (RST), "
        "filtered (silence) or unreachable (ICMP); raw SYNs with CAP_NET_RAW, else "
        "connect() (see --mode)",
    )
    p.add_argument(
        "--udp",
        action="store_true",
        help="UDP probes to --port instead of ICMP echo: open (an answer), closed (ICMP port "
        "unreachable), open|filtered (silence); no privilege needed",
    )
    p.add_argument(
        "-p", "--port", type=argtypes.int_range(1, 65535), default=None, metavar="PORT",
        help="the TCP or UDP port (with --tcp or --udp)",
    )  # fmt: skip
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..cli import EXIT_UNRESOLVED
    from ..errors import TargetError
    from ..probe import UseSubprocess

    port = _tcp_port(args)
    if port and args.udp:
        return _run_udp(args, port)
    if port:
        return _run_tcp(args, port)
    from .sweep import check_mode

    check_mode(args.mode, False)
    _check_one_host(args.host)
    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    family = {4: 2, 6: 10}.get(args.family or 0)
    opts: dict[str, Any] = dict(
        count=args.count,
        interval_s=args.interval,
        timeout_s=args.timeout,
        payload_size=args.size,
        ttl=args.ttl,
        tos=args.tos,
        dont_fragment=args.dont_fragment,
        family=family,
    )
    try:
        pinger = api.Pinger(args.host, mode=args.mode, **opts)
    except UseSubprocess:
        return _run_batch(args, opts)  # the system ping: its results come at the end
    if pinger.address is None:
        print(f"fastping: {pinger.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if not args.json:
        print(f"PING {pinger.target} ({pinger.address}): {args.size} data bytes", flush=True)
    try:
        for r in pinger:
            if args.json:
                print(json.dumps(r.to_dict()), flush=True)
            else:
                print(_probe_line(r, args.timeout), flush=True)
    except KeyboardInterrupt:
        pass  # like ping(8): Ctrl-C ends the run and prints the statistics so far
    finally:
        pinger.close()
    return _summary(args, pinger.stats())


def _tcp_port(args: argparse.Namespace) -> int:
    """The TCP or UDP port to probe (0: ICMP): from tcp://HOST:PORT or udp://HOST:PORT
    (HOST kept in args.host; args.tcp / args.udp set) or --tcp / --udp --port."""
    from ..errors import TargetError
    from .sweep import parse_tcp_url

    args.udp = getattr(args, "udp", False)
    if args.tcp and args.udp:
        raise TargetError("--tcp and --udp: probe one kind at a time")
    scheme = args.host.lower().partition("://")[0] if "://" in args.host else ""
    if scheme in ("tcp", "udp"):
        if args.port is not None:
            raise TargetError(f"{args.host!r} names its port: drop -p/--port {args.port}")
        other = "udp" if scheme == "tcp" else "tcp"
        if getattr(args, other):
            raise TargetError(f"{args.host!r} is a {scheme.upper()} target: drop --{other}")
        args.host, port = parse_tcp_url(args.host, scheme)
        args.tcp, args.udp = scheme == "tcp", scheme == "udp"
        return port
    if args.port is not None and not (args.tcp or args.udp):
        raise TargetError(
            "-p/--port is for TCP or UDP probes: add --tcp or --udp (ICMP has no ports)"
        )
    if (args.tcp or args.udp) and args.port is None:
        flag, ex = ("--tcp", "tcp://HOST:PORT") if args.tcp else ("--udp", "udp://HOST:PORT")
        raise TargetError(f"{flag} needs the port to probe: -p 22 (or {ex})")
    return int(args.port or 0)


def _check_one_host(host: str) -> None:
    from ..errors import TargetError
    from ..targets import Address, Name, parse_target

    specs = parse_target(host)
    if len(specs) != 1 or not isinstance(specs[0], (Address, Name)):
        raise TargetError(f"ping takes one host, not a block: {host!r} (use fastping sweep)")


def _run_udp(args: argparse.Namespace, port: int) -> int:
    """``fastping ping udp://HOST:PORT``: one line per probe, then the statistics."""
    from .. import api
    from ..errors import TargetError

    if args.mode not in ("auto", "dgram"):
        raise TargetError(
            f"UDP probes use an unprivileged socket: --mode {args.mode} does not apply"
        )
    _check_one_host(args.host)
    pinger = api.UdpPinger(
        args.host,
        port,
        count=args.count,
        interval_s=args.interval,
        timeout_s=args.timeout,
        ttl=args.ttl,
        tos=args.tos,
        family={4: 2, 6: 10}.get(args.family or 0),
    )
    return _ping_port(args, pinger, port, "udp", "", _UDP_STATE, {})


_UDP_STATE = {
    "reply": "open", "closed": "closed", "timeout": "open|filtered",
    "unreachable": "unreachable", "time_exceeded": "unreachable",
}  # fmt: skip


def _run_tcp(args: argparse.Namespace, port: int) -> int:
    """``fastping ping tcp://HOST:PORT``: one line per probe, then the statistics."""
    from .. import api
    from .sweep import CONNECT_NOTE, check_mode

    check_mode(args.mode, True)
    _check_one_host(args.host)
    pinger = api.TcpPinger(
        args.host,
        port,
        count=args.count,
        interval_s=args.interval,
        timeout_s=args.timeout,
        ttl=args.ttl,
        tos=args.tos,
        mode=args.mode,
        family={4: 2, 6: 10}.get(args.family or 0),
    )
    if pinger.address is not None and pinger.timing == "connect" and args.mode == "auto":
        sys.stderr.write(CONNECT_NOTE)
    how = "SYNs on a raw socket" if pinger.timing == "raw" else "connect()"
    return _ping_port(args, pinger, port, "tcp", f": {how}", _STATE, {"timing": pinger.timing})


def _ping_port(
    args: argparse.Namespace,
    pinger: Any,
    port: int,
    proto: str,
    how: str,
    states: dict[str, str],
    extra: dict[str, Any],
) -> int:
    """A TCP or UDP ping's run: the banner, one line (or JSON object) per probe as it
    ends, then the statistics; ``extra`` goes into every JSON object."""
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN, EXIT_UNRESOLVED

    if pinger.address is None:
        print(f"fastping: {pinger.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if not args.json:
        print(f"PING {pinger.target} ({pinger.address}) {proto.upper()} port {port}{how}",
              flush=True)  # fmt: skip
    try:
        for r in pinger:
            if args.json:
                d = r.to_dict()
                d.update(target=_pair(r.target, port), port=port,
                         state=states.get(r.outcome.value), **extra)  # fmt: skip
                print(json.dumps(d), flush=True)
            else:
                print(_port_line(r, port, args.timeout, proto), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        pinger.close()
    h = pinger.stats()
    closed = pinger.closed
    if args.json:
        _print_json(h, target=_pair(h.target, port), port=port, closed=closed,
                    open=h.received - closed, **extra)  # fmt: skip
    else:
        silence = "filtered" if proto == "tcp" else "open|filtered"
        print(f"--- {h.target} port {port} {proto} ping statistics ---")
        print(
            f"{h.sent} probes sent, {h.received} answers ({h.received - closed} open, "
            f"{closed} closed), {h.loss * 100:.1f}% loss"
            + (f", {h.timeouts} {silence}" if h.timeouts else "")
            + (f", {h.unreachable} unreachable" if h.unreachable else "")
            + (f", {h.duplicates} duplicates" if h.duplicates else "")
        )
        _print_rtts_or_error(h, bool(h.received))
    return EXIT_ALL_ALIVE if h.received > closed else EXIT_SOME_DOWN


def _pair(host: str, port: int) -> str:
    """A host:port pair's target as sweep's JSON writes it: ``127.0.0.1:22``,
    ``[::1]:22``, ``localhost:22``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_STATE = {"reply": "open", "closed": "closed", "timeout": "filtered", "unreachable": "unreachable"}


def _port_line(r: ProbeResult, port: int, timeout_s: float, proto: str = "tcp") -> str:
    """ICMP ping's line, for a TCP or UDP probe: what the port said, seq, rtt, ttl
    (silence is "filtered" for TCP, "open|filtered" for UDP)."""
    from ..results import Outcome

    seq = f"{proto}_seq={r.seq}"
    where = f"{r.address} port {port}"
    if r.outcome in (Outcome.REPLY, Outcome.CLOSED, Outcome.DUPLICATE, Outcome.LATE):
        state = "closed" if r.outcome is Outcome.CLOSED else "open"
        tail = {Outcome.DUPLICATE: " (DUP!)", Outcome.LATE: " (late)"}.get(r.outcome, "")
        ttl = f" ttl={r.ttl}" if r.ttl else ""
        rtt = f" rtt={r.rtt_ms:.3f} ms" if r.rtt_ms is not None else ""
        return f"{state} {where}: {seq}{rtt}{ttl}{tail}"
    if r.outcome is Outcome.TIMEOUT:
        silence = "filtered" if proto == "tcp" else "open|filtered"
        return f"no answer from {where}: {seq} ({silence}: timeout after {timeout_s:g} s)"
    if r.outcome is Outcome.SEND_ERROR:
        why = os.strerror(r.errno) if r.errno else "send failed"
        return f"probe to {where} failed: {seq}: {why}"
    if r.icmp_type is None:  # connect(): the kernel's errno, no ICMP details
        why = os.strerror(r.errno) if r.errno else "unreachable"
        return f"unreachable {where}: {seq} (connect(): {why})"
    kind = "time exceeded" if r.outcome is Outcome.TIME_EXCEEDED else "unreachable"
    return f"{kind} from {r.router or '?'}: {seq} (type {r.icmp_type} code {r.icmp_code})"


def _print_json(h: HostResult, **extra: Any) -> None:
    """The summary as one JSON object: the host's figures, its RTTs, and ``extra``."""
    d = h.to_dict()
    d["rtts_ms"] = [round(x, 4) for x in h.rtts_ms]
    d.update(extra)
    print(json.dumps(d), flush=True)


def _print_rtts_or_error(h: HostResult, answered: bool) -> None:
    """The rtt line of a host that answered, else its error (if it has one)."""
    if answered:
        print(
            f"rtt min/avg/max/stddev/jitter = {h.min_ms:.3f}/{h.avg_ms:.3f}/{h.max_ms:.3f}/"
            f"{h.stddev_ms:.3f}/{(h.jitter_ms or 0):.3f} ms",
            flush=True,
        )
    elif h.error:
        print(h.error, flush=True)


def _probe_line(r: ProbeResult, timeout_s: float) -> str:
    from ..results import Outcome

    seq = f"icmp_seq={r.seq}"
    if r.outcome in (Outcome.REPLY, Outcome.DUPLICATE, Outcome.LATE):
        tail = {Outcome.DUPLICATE: " (DUP!)", Outcome.LATE: " (late)"}.get(r.outcome, "")
        ttl = f" ttl={r.ttl}" if r.ttl else ""
        rtt = f" rtt={r.rtt_ms:.3f} ms" if r.rtt_ms is not None else ""
        return f"reply from {r.address}: {seq}{rtt}{ttl}{tail}"
    if r.outcome is Outcome.TIMEOUT:
        return f"no reply from {r.address}: {seq} (timeout after {timeout_s:g} s)"
    if r.outcome is Outcome.SEND_ERROR:
        why = os.strerror(r.errno) if r.errno else "send failed"
        return f"send to {r.address} failed: {seq}: {why}"
    kind = "time exceeded" if r.outcome is Outcome.TIME_EXCEEDED else "unreachable"
    return f"{kind} from {r.router or '?'}: {seq} (type {r.icmp_type} code {r.icmp_code})"


def _summary(args: argparse.Namespace, h: HostResult) -> int:
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN

    if args.json:
        _print_json(h)
    else:
        print(f"--- {h.target} ping statistics ---")
        print(
            f"{h.sent} probes sent, {h.received} replies, {h.loss * 100:.1f}% loss"
            + (f", {h.duplicates} duplicates" if h.duplicates else "")
            + (f", {h.late} late" if h.late else "")
        )
        _print_rtts_or_error(h, h.alive)
    return EXIT_ALL_ALIVE if h.alive else EXIT_SOME_DOWN


def _run_batch(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    """The system ping (subprocess mode): every line comes when it has finished."""
    from .. import api
    from ..cli import EXIT_UNRESOLVED

    res = api.sweep([args.host], rate_pps=0.0, mode="subprocess", collect_rtts=True, **opts)
    h = res[0]
    if h.address is None:
        print(f"fastping: {h.error}", file=sys.stderr)
        return EXIT_UNRESOLVED
    if not args.json:
        print(f"PING {h.target} ({h.address}): {args.size} data bytes")
        for rtt in h.rtts_ms:
            print(f"reply from {h.address}: rtt={rtt:.3f} ms ttl={h.ttl}")
    return _summary(args, h)
