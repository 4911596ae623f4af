"""``fastping sweep``: probe many targets and print one line per target."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def add_common(p: argparse.ArgumentParser) -> None:
    from . import argtypes

    p.add_argument(
        "--timeout",
        "-t",
        type=argtypes.timeout,
        default=1.0,
        metavar="S",
        help="seconds to wait for each reply (default 1, at most 3600)",
    )
    p.add_argument(
        "--size",
        "-b",
        type=argtypes.payload,
        default=56,
        metavar="BYTES",
        help="ICMP payload bytes (default 56, 16..65000)",
    )
    p.add_argument("--ttl", type=argtypes.ttl, default=None, help="IP TTL / hop limit (1..255)")
    p.add_argument(
        "--tos", type=argtypes.tos, default=None, help="IP ToS / traffic class byte (0..255)"
    )
    p.add_argument("--dont-fragment", "-M", action="store_true", help="set don't-fragment")
    p.add_argument(
        "--mode",
        choices=("auto", "raw", "dgram", "subprocess", "connect"),
        default="auto",
        help="socket mode (default auto). ICMP: raw, dgram (unprivileged) or subprocess "
        "(the system ping); auto tries them in that order. TCP: raw (SYNs on a raw socket, "
        "kernel timestamps: root or CAP_NET_RAW) or connect (connect() timing, no "
        "privilege); auto is raw when it may, else connect",
    )
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


class _RateAction(argparse.Action):
    """--rate / -r, remembering which was typed: fping's -r is a retry count."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.rate_flag = option_string


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes

    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="address, host name, CIDR block (10.0.0.0/24) or range (10.0.0.1-10.0.0.9); "
        "or DNS queries, dns://SERVER/NAME?type=AAAA (SERVER 127.0.0.1, 127.0.0.1:5353, "
        "[::1]:5353), each line its outcome and resolution time",
    )
    p.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="read targets from FILE, one per line ('-' for stdin)",
    )
    p.add_argument(
        "-c", "--count", type=argtypes.count, default=1, metavar="N", help="probes per target"
    )
    p.add_argument(
        "--period",
        type=argtypes.seconds(0.0, 86400.0),
        default=None,
        metavar="S",
        help="seconds between rounds when -c > 1 (default 1)",
    )
    p.add_argument(
        "-p",
        dest="p_short",
        default=None,
        metavar="S|PORTS",
        help="seconds between rounds, as --period; with --tcp or --udp the ports, as --port",
    )
    p.add_argument(
        "--tcp",
        action="store_true",
        help="TCP probes to --port instead of ICMP echo: stateless SYNs with root or "
        "CAP_NET_RAW, else connect() timing (--mode); a port is open (SYN-ACK), closed (RST), "
        "filtered (silence) or unreachable (ICMP); targets may also be written tcp://HOST:PORT",
    )
    p.add_argument(
        "--udp",
        action="store_true",
        help="UDP probes to --port, unprivileged: a port is open (a reply), closed (the "
        "host's ICMP port unreachable), open|filtered (silence) or unreachable (another "
        "ICMP error); DNS and NTP get a real query; targets may also be written "
        "udp://HOST:PORT",
    )
    p.add_argument(
        "--port",
        "--ports",
        dest="ports",
        default=None,
        metavar="PORTS",
        help="ports to probe on every target: 22,80,443 or 8000-8010 (needs --tcp or --udp)",
    )
    p.add_argument(
        "--rate",
        "-r",
        type=argtypes.rate,
        default=None,
        action=_RateAction,
        metavar="PPS",
        help="total probes per second (default 1000; 0 = as fast as possible)",
    )
    p.add_argument(
        "--probe-interval",
        "-i",
        type=float,
        default=None,
        metavar="S",
        help="seconds between successive probes, another way to say --rate (-i 0.001 = "
        "--rate 1000)",
    )
    p.add_argument(
        "--csv",
        action="store_true",
        help="one CSV row per target, with a header (the columns of --json)",
    )
    p.add_argument(
        "--workers",
        "-w",
        type=argtypes.int_range(0, 256),
        default=0,
        metavar="N",
        help="sending threads, each with its own socket (default 0: one per usable core, "
        "at most 8, for sweeps big and fast enough to need them)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "-s",
        "--stats",
        action="store_true",
        help="with --json / --csv: the summary as JSON on stderr too (text output always "
        "has it there)",
    )
    p.add_argument(
        "-a",
        "--alive",
        action="store_true",
        help="print only the targets that answered, one a line (as fping -a)",
    )
    p.add_argument(
        "-u",
        "--unreachable",
        action="store_true",
        help="print only the targets that did not answer, one a line (as fping -u)",
    )
    add_common(p)


def check_plausible(args: argparse.Namespace) -> None:
    """Refuse values that are fping's units or meanings typed into our options,
    naming the likely mistake (fping: -t/-p/-i in ms, -r = retries)."""
    from ..errors import TargetError

    _resolve_p(args)
    if args.count < 1:
        raise TargetError(f"-c/--count must be >= 1, not {args.count}")
    if args.timeout <= 0:
        raise TargetError(f"--timeout must be > 0, not {args.timeout}")
    t = args.timeout
    if t > 60:
        raise TargetError(
            f"-t {t:g}: {t:g} seconds? the timeout is in seconds here; fping's -t is in ms "
            f"(for {t:g} ms: -t {t / 1000:g})"
        )
    p = args.period
    if p < 0:
        raise TargetError(f"-p/--period must be >= 0 seconds, not {p:g}")
    if p > 60:
        raise TargetError(
            f"-p {p:g}: {p:g} seconds between rounds? the period is in seconds here; fping's "
            f"-p is in ms (for {p:g} ms: -p {p / 1000:g}); for rounds minutes apart use "
            "fastping monitor"
        )
    i = args.probe_interval
    if i is not None:
        if args.rate is not None:
            raise TargetError("-i and --rate say the same thing: give one of them")
        if i < 0:
            raise TargetError(f"-i/--probe-interval must be >= 0 seconds, not {i:g}")
        if i >= 1:
            raise TargetError(
                f"-i {i:g}: {i:g} seconds between probes? the interval is in seconds here; "
                f"fping's -i is in ms (for {i:g} ms: -i {i / 1000:g}, i.e. --rate {1000 / i:g})"
            )
        args.rate = 1.0 / i if i > 0 else 0.0
    r = args.rate
    if r is not None and r < 0:
        raise TargetError(f"--rate must be >= 0 probes/s (0 = no limit), not {r:g}")
    if r is not None and getattr(args, "rate_flag", None) == "-r" and 0 < r < 10:
        raise TargetError(
            f"-r {r:g}: {r:g} probes per second? -r is the rate here (probes/s); fping's -r "
            f"is a retry count: for {r:g} more probes per target use -c {int(r) + 1}, for "
            f"this rate say --rate {r:g}"
        )
    if args.json and args.csv:
        raise TargetError("--json and --csv: choose one output format")


def _resolve_p(args: argparse.Namespace) -> None:
    """-p is the period (fping's -p, in seconds here), or with --tcp / --udp the ports
    (nmap's -p); tcp://HOST:PORT targets imply --tcp, udp://HOST:PORT --udp."""
    from ..errors import TargetError
    from . import argtypes

    _resolve_udp(args)
    if any(t.lower().startswith("tcp://") for t in args.targets):
        args.tcp = True
    if args.tcp and args.udp:
        raise TargetError("--tcp and --udp (or tcp:// and udp:// targets): sweep one at a time")
    if args.p_short is not None:
        if args.tcp or args.udp:
            if args.ports is not None:
                raise TargetError("-p and --port both name the ports: give one of them")
            args.ports = args.p_short
        else:
            if args.period is not None:
                raise TargetError("-p and --period say the same thing: give one of them")
            try:
                args.period = argtypes.seconds(0.0, 86400.0)(args.p_short)
            except argparse.ArgumentTypeError as e:
                raise TargetError(f"argument -p/--period: {e}") from None
    if args.period is None:
        args.period = 1.0
    if args.ports is not None and not (args.tcp or args.udp):
        raise TargetError("--port is for TCP or UDP probes: add --tcp or --udp (ICMP has no ports)")
    args.port_list = parse_ports(args.ports) if args.ports is not None else []
    check_mode(args.mode, args.tcp)


def check_mode(mode: str, tcp: bool) -> None:
    """--mode names a way to probe that the probe kind has."""
    from ..errors import TargetError

    if tcp and mode in ("dgram", "subprocess"):
        raise TargetError(
            f"--mode {mode} is for ICMP: TCP probes use --mode raw (CAP_NET_RAW), connect "
            "(no privilege) or auto"
        )
    if not tcp and mode == "connect":
        raise TargetError(
            "--mode connect is for TCP probes (--tcp -p PORTS, or tcp://HOST:PORT): ICMP uses "
            "raw, dgram, subprocess or auto"
        )


CONNECT_NOTE = (
    "fastping: no CAP_NET_RAW: TCP timed by connect() (SYN-ACK seen by the kernel, then "
    "a RST, no data sent; RTT includes user-space scheduling). Raw SYN timing needs root or "
    "CAP_NET_RAW\n"
)


def parse_tcp_url(text: str, scheme: str = "tcp") -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``udp://``, with ``scheme``; IPv6 in brackets) ->
    (HOST, PORT)."""
    from ..errors import TargetError

    host, sep, port_s = text[len(scheme) + 3 :].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        example = f"{scheme}://[::1]:{22 if scheme == 'tcp' else 53}"
        raise TargetError(
            f"{text!r}: write {scheme}://HOST:PORT (IPv6 in brackets: {example}), port 1..65535"
        )
    return host, int(port_s)


def _resolve_udp(args: argparse.Namespace) -> None:
    """udp://HOST:PORT targets imply --udp; --udp is no ICMP socket mode."""
    from ..errors import TargetError

    if not hasattr(args, "udp"):
        args.udp = False
    if any(t.lower().startswith("udp://") for t in args.targets):
        args.udp = True
    if args.udp and (args.size != 56 or args.dont_fragment):
        raise TargetError(
            "--size and --dont-fragment shape ICMP echoes: UDP probes carry a payload of "
            "their own per port (a DNS query to 53, NTP to 123, a 16-byte cookie elsewhere)"
        )
    if args.udp and args.mode not in ("auto", "dgram"):
        raise TargetError(
            f"--udp uses an unprivileged UDP socket: --mode {args.mode} does not apply"
        )


def parse_ports(text: str) -> list[int]:
    """``22,80,443`` / ``8000-8010`` / a mix, in the order given, each port once."""
    from ..errors import TargetError

    out: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        lo_s, _, hi_s = part.partition("-")
        try:
            lo, hi = int(lo_s), int(hi_s) if hi_s else int(lo_s)
        except ValueError:
            raise TargetError(
                f"port {part!r} in {text!r} is not a number or a range: write 22,80,443 or "
                "8000-8010"
            ) from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535) or lo > hi:
            raise TargetError(f"port range {part!r} must be within 1..65535, low to high")
        for port in range(lo, hi + 1):
            out[port] = None
    if not out:
        raise TargetError("no ports: name some (--port 22,80,443)")
    return list(out)


def tcp_targets(args: argparse.Namespace, scheme: str = "tcp") -> list[tuple[int, list[str]]]:
    """(port, target words) for each port to sweep: the tcp://HOST:PORT (or with
    ``scheme`` "udp", udp://HOST:PORT) and HOST:PORT ([v6]:PORT) targets by their
    own port, the others on every --port."""
    from ..errors import TargetError
    from ..targets import split_host_port

    by_port: dict[int, list[str]] = {}
    plain = []
    words = list(args.targets)
    if args.file:
        # a file of HOST:PORT lines (Prometheus style) is read here, each line a word
        # as on the command line; the compiled reader (plain addresses) gets none
        words.extend(_port_file_words(args.file, scheme))
        args.file = []
    for t in words:
        hp = split_host_port(t)
        if hp is not None:
            by_port.setdefault(hp[1], []).append(hp[0])
            continue
        if not t.lower().startswith(f"{scheme}://"):
            plain.append(t)
            continue
        host, port = parse_tcp_url(t, scheme)
        by_port.setdefault(port, []).append(host)
    if plain and not args.port_list:
        raise TargetError(
            f"--{scheme} needs the ports to probe: --port "
            f"{'22,80,443' if scheme == 'tcp' else '53,123'} (or {scheme}://HOST:PORT)"
        )
    for port in args.port_list:
        by_port.setdefault(port, []).extend(plain)
    return [(port, words) for port, words in by_port.items()]


def _port_file_words(files: list[str], scheme: str) -> list[str]:
    """The words of targets files for a sweep with ports: HOST:PORT, [v6]:PORT,
    SCHEME://HOST:PORT or a plain target (probed on every --port); every bad word is
    reported with its file and line number."""
    from ..errors import TargetError
    from ..targets import parse_target, split_host_port

    out: list[str] = []
    bad: list[str] = []
    for path in files:
        try:
            if path == "-":
                text = sys.stdin.buffer.read().decode("utf-8")
            else:
                with open(path, "rb") as fh:
                    text = fh.read().decode("utf-8")
        except OSError as e:
            raise TargetError(f"cannot read targets file {path!r}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise TargetError(f"targets file {path!r} is not UTF-8 text: {e}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            for word in line.split("#", 1)[0].split():
                try:
                    if word.lower().startswith(f"{scheme}://"):
                        parse_tcp_url(word, scheme)
                    elif split_host_port(word) is None:
                        parse_target(word)
                except TargetError as e:
                    bad.append(f"{path}:{lineno}: {e}")
                    continue
                out.append(word)
    if bad:
        more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise TargetError("bad targets:\n" + "\n".join(bad[:20]) + more)
    return out


def read_targets(
    args: argparse.Namespace, words: list[str] | None = None, files: list[str] | None = None
) -> Any:
    """The command line's targets and -f files (or ``words`` and ``files``) as one
    _pipeline.TargetSet (files streamed); every bad line is reported, with its line
    number."""
    from .. import api
    from .._pipeline import TargetSet
    from ..errors import TargetError

    ts = TargetSet()
    ts.add_arguments(list(args.targets if words is None else words))
    for f in args.file if files is None else files:
        try:
            if f == "-":
                ts.add_file(sys.stdin.buffer, "<stdin>")
            else:
                with open(f, "rb", buffering=0) as fh:
                    ts.add_file(fh, f)
        except OSError as e:
            raise TargetError(f"cannot read targets file {f!r}: {e.strerror or e}") from None
        if ts.fatal:
            break
    api.check_target_set(ts)
    if ts.n_hosts == 0:
        raise TargetError("no targets: name some (fastping sweep 127.0.0.1 ::1) or use -f FILE")
    return ts


def _sweep(args: argparse.Namespace, targets: Any, tcp_port: int) -> Any:
    from .. import api

    rate = api.DEFAULT_RATE_PPS if args.rate is None else args.rate
    family = {4: 2, 6: 10}.get(args.family or 0)
    progress = _Progress() if sys.stderr.isatty() and not (args.json or args.csv) else None
    try:
        return api.sweep(
            targets,
            count=args.count,
            interval_s=args.period,
            timeout_s=args.timeout,
            rate_pps=rate,
            payload_size=args.size,
            ttl=args.ttl,
            tos=args.tos,
            dont_fragment=args.dont_fragment,
            mode=args.mode,
            workers=args.workers,
            family=family,
            on_progress=progress.update if progress else None,
            tcp_port=tcp_port,
        )
    finally:
        if progress:
            progress.close()


def _formatter(args: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    from .. import formats
    from .._pipeline import (
        FMT_CSV,
        FMT_JSON,
        FMT_NONE,
        FMT_TARGET,
        FMT_TEXT,
        SEL_ALIVE,
        SEL_ALL,
        SEL_DOWN,
        Formatter,
    )

    select = SEL_ALIVE if args.alive else SEL_DOWN if args.unreachable else SEL_ALL
    line: Callable[[Any], str]
    if args.quiet:
        fmt_code, line = FMT_NONE, formats.target_line
    elif args.json:
        fmt_code, line = FMT_JSON, formats.json_line
    elif args.csv:
        fmt_code, line = FMT_CSV, formats.csv_line
    elif args.alive or args.unreachable:
        fmt_code, line = FMT_TARGET, formats.target_line
    else:
        fmt_code = FMT_TEXT

        def line(h: Any) -> str:
            return formats.text_line(h, args.count)

    sys.stdout.flush()
    fmt = Formatter(fmt_code, select, args.count, sys.stdout.buffer)
    if fmt_code == FMT_CSV:
        fmt.write_text(formats.CSV_HEADER)
    return fmt, line


def _sweeps(args: argparse.Namespace) -> Iterator[tuple[Any, int]]:
    """Each sweep of the run and its port (0: ICMP): one, or one per TCP / UDP port."""
    if args.udp:
        yield from _udp_sweeps(args)
        return
    if not args.tcp:
        targets = read_targets(args)
        yield _sweep(args, targets, 0), 0
        return
    pairs = tcp_targets(args)  # reads the -f files itself
    files = args.file
    _choose_tcp_timing(args)
    for port, words in pairs:
        targets = read_targets(args, words, files if port in args.port_list else [])
        yield _sweep(args, targets, port), port


def _udp_sweeps(args: argparse.Namespace) -> Iterator[tuple[Any, int]]:
    """UDP: every port of the same targets in one sweep (one timeout for all the
    pairs, not one per port), a result per port in the order given."""
    from .. import api

    groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
    for port, ws in tcp_targets(args, "udp"):
        groups.setdefault((tuple(ws), port in args.port_list), []).append(port)
    rate = api.DEFAULT_RATE_PPS if args.rate is None else args.rate
    family = {4: 2, 6: 10}.get(args.family or 0)
    for (words, with_files), ports in groups.items():
        targets = read_targets(args, list(words), args.file if with_files else [])
        progress = _Progress() if sys.stderr.isatty() and not (args.json or args.csv) else None
        try:
            results = api.udp_sweep(
                targets,
                ports,
                count=args.count,
                interval_s=args.period,
                timeout_s=args.timeout,
                rate_pps=rate,
                ttl=args.ttl,
                tos=args.tos,
                workers=args.workers,
                family=family,
                on_progress=progress.update if progress else None,
            )
        finally:
            if progress:
                progress.close()
        yield from zip(results, ports, strict=True)


def _choose_tcp_timing(args: argparse.Namespace) -> None:
    """Raw SYNs or connect() for every port of the run, said on stderr when auto
    falls back to connect()."""
    from .. import api

    timing = api.tcp_timing(args.mode)
    if timing == "connect" and args.mode == "auto":
        sys.stderr.write(CONNECT_NOTE)
        sys.stderr.flush()
    args.mode = timing


def _merged(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for several sweeps (TCP ports, swept one after another)."""
    if len(summaries) == 1:
        return summaries[0]
    out: dict[str, Any] = {}
    for s in summaries:
        for k, v in s.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    for k in ("send_window_ns", "sweep_window_ns", "workers"):
        if k in out:
            out[k] = max(s.get(k, 0) for s in summaries)
    out["duration_s"] = round(out["duration_s"], 6)
    out["probes_per_s"] = round(out["sent"] / out["duration_s"], 1) if out["duration_s"] else 0.0
    return out


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN, EXIT_UNRESOLVED
    from . import dnssweep

    if dnssweep.wants_dns(args):
        return dnssweep.run(args)
    check_plausible(args)
    out = sys.stdout.buffer
    fmt, line = _formatter(args)
    summaries, ports, unresolved, hosts = [], [], 0, 0
    for res, port in _sweeps(args):
        alive0 = fmt.alive
        res.write_rows(fmt, args.count, line)
        fmt.flush()
        unresolved += int(res.totals.get("unresolved", 0))
        hosts += len(res)
        summaries.append(res.summary_with(alive=fmt.alive - alive0))
        ports.append(port)
        del res
    summary = _merged(summaries)
    if args.tcp or args.udp:
        summary["ports"] = ports
    if args.json or args.csv:
        if args.quiet:
            out.write((json.dumps(summary) + "\n").encode())
        elif args.stats:
            sys.stderr.write(json.dumps(summary) + "\n")
    elif args.quiet:
        out.write(_summary_text(summary, args).encode())
    else:
        sys.stderr.write(_summary_text(summary, args))
    out.flush()
    if unresolved:
        return EXIT_UNRESOLVED
    return EXIT_ALL_ALIVE if fmt.alive == hosts else EXIT_SOME_DOWN


def _summary_text(s: dict[str, Any], args: argparse.Namespace) -> str:
    if args.udp:
        return _udp_summary(s)
    return _text_summary(s, tcp=args.tcp)


def _udp_summary(s: dict[str, Any]) -> str:
    """The UDP sweep's summary: what the ports said, then the counters as for ICMP."""
    lines = [
        f"{s['targets']:>10} host:port pairs",
        f"{s['alive']:>10} open (an application answered)",
        f"{s['down']:>10} not open (closed, open|filtered or unreachable)",
        f"{s['sent']:>10} datagrams sent",
        f"{s['received']:>10} answers",
        f"{s.get('closed', 0):>10} of them ICMP port unreachable (port closed)",
    ]
    if s.get("unkeyed"):
        lines.append(f"{s['unkeyed']:>10} of them unkeyed (given to the pair's oldest probe)")
    if s.get("timeouts") and s.get("closed"):
        lines.append(
            f"{s['timeouts']:>10} unanswered: a host's ICMP rate limit makes closed ports "
            "look open|filtered (docs/udp.md)"
        )
    return "\n".join(lines + _counter_lines(s)) + "\n"


def _text_summary(s: dict[str, Any], tcp: bool = False) -> str:
    if tcp:
        connect = s.get("timing") == "connect"
        lines = [
            f"{s['targets']:>10} host:port pairs",
            f"{s['alive']:>10} open",
            f"{s['down']:>10} not open (closed, filtered or unreachable)",
            f"{s['sent']:>10} " + ("connect() attempts" if connect else "SYNs sent"),
            f"{s['received']:>10} answers",
            f"{s.get('closed', 0):>10} of them RSTs (port closed)",
        ]
        if connect:  # every RTT is connect()'s: the timed_user line would say it again
            s = {k: v for k, v in s.items() if k != "timed_user"}
            lines.append(f"{'connect':>10} timing (non-blocking connect(), RTT from user space)")
        elif "timing" in s:
            lines.append(f"{'raw':>10} timing (SYNs on a raw socket, kernel timestamps)")
    else:
        lines = [
            f"{s['targets']:>10} targets",
            f"{s['alive']:>10} alive",
            f"{s['down']:>10} unreachable",
            f"{s['sent']:>10} probes sent",
            f"{s['received']:>10} replies",
        ]
    return "\n".join(lines + _counter_lines(s)) + "\n"


def _counter_lines(s: dict[str, Any]) -> list[str]:
    """The summary's lines after what the targets said: the counters that moved and
    the time taken."""
    lines = []
    for key, label in (
        ("duplicates", "duplicates"),
        ("late", "late replies"),
        ("send_errors", "send errors"),
        ("rx_drops", "replies dropped by the kernel (receive buffer full)"),
        ("enobufs", "send retries (ENOBUFS)"),
        ("timed_user", "replies timed from a user-space send time (no kernel TX timestamp)"),
        ("unresolved", "names not resolved"),
        ("interrupted", "interrupted (Ctrl-C): statistics of the rounds done"),
    ):
        if s.get(key):
            lines.append(f"{s[key]:>10} {label}")
    lines.append(f"{s['duration_s']:>10.3f} s elapsed, {s['probes_per_s']:.0f} probes/s")
    return lines


class _Progress:
    """A one-line progress bar on stderr (terminals only), fed by the sweep."""

    WIDTH = 30

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._shown = False

    def update(self, sent: int, total: int, received: int) -> None:
        el = time.monotonic() - self._t0
        if el < 0.5 or total <= 0:  # short sweeps: no bar
            return
        frac = min(sent / total, 1.0)
        bar = "#" * int(frac * self.WIDTH)
        sys.stderr.write(
            f"\r[{bar:<{self.WIDTH}}] {frac * 100:5.1f}%  {sent:,}/{total:,} sent, "
            f"{received:,} replies, {el:.1f} s"
        )
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
