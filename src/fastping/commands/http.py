"""``fastping http URL...``: check URLs once (or -c N times), phase by phase.

Each URL's host is resolved and every address checked (``--first`` for only the
first). Just before each round, three ICMP echoes go to every address (``--no-icmp``
turns them off), so ``server`` is the wait for the first byte minus the network RTT,
not minus a guess. Text (one line per address) or ``--json`` (one object per line).
Exit status: 0 when every check is ok, 1 when some failed, 2 when a name did not
resolve.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import argtypes

    p.add_argument("urls", nargs="+", metavar="URL", help="http:// or https:// URLs")
    p.add_argument("-c", "--count", type=argtypes.count, default=1, metavar="N",
                   help="check each URL N times (default 1)")  # fmt: skip
    p.add_argument("-t", "--timeout", type=argtypes.seconds(0.001, 3600.0), default=10.0,
                   metavar="S", help="seconds for a whole check (default 10)")  # fmt: skip
    p.add_argument("--no-follow", action="store_true", help="do not follow redirects")
    p.add_argument("--max-redirects", type=int, default=10, metavar="N")
    p.add_argument("--status", action="append", type=int, default=[], metavar="CODE",
                   help="expected status (repeat for several; default any 2xx)")  # fmt: skip
    p.add_argument("--body-regex", metavar="RE", help="the body must match this regex")
    p.add_argument("--json-field", metavar="PATH", help="the JSON body must have this field "
                   "(dotted: db.ok, items.0.id)")  # fmt: skip
    p.add_argument("--json-value", metavar="JSON",
                   help="... equal to this value (JSON text: true, 3, \"up\")")  # fmt: skip
    p.add_argument("--ca-file", metavar="FILE", help="trust these CA certificates (PEM)")
    p.add_argument("--insecure", action="store_true", help="do not verify certificates")
    p.add_argument("--server-name", metavar="NAME", help="TLS SNI and Host header")
    p.add_argument("--cert-min-days", type=float, default=0.0, metavar="D",
                   help="a certificate expiring within D days is cert_expiring")  # fmt: skip
    p.add_argument("--source", metavar="ADDR", help="connect from this local address")
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument(
        "--first",
        action="store_true",
        help="check only the first address of a name (default: every address)",
    )
    p.add_argument("--reuse", action="store_true",
                   help="with -c: keep the connection for the next check")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=64, metavar="N",
                   help="connections in flight at most (default 64)")  # fmt: skip
    p.add_argument("-H", "--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument(
        "--no-icmp",
        dest="icmp",
        action="store_false",
        help="no ICMP echoes: the split uses the TCP connect time as the RTT",
    )
    p.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "raw", "dgram"],
        help="ICMP socket mode for --icmp (default auto)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per result line")


def _checks(args: argparse.Namespace) -> list[Any]:
    from ..errors import ConfigError
    from ..http import HttpCheck

    headers = []
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            raise ConfigError(f"--header {h!r}: give NAME:VALUE")
        headers.append((k.strip(), v.strip()))
    json_value = None
    if args.json_value is not None:
        try:
            json_value = json.loads(args.json_value)
        except ValueError:
            json_value = args.json_value  # a bare word: compare as text
    fam = {4: socket.AF_INET, 6: socket.AF_INET6}.get(args.family or 0, 0)
    out = []
    for url in args.urls:
        try:
            out.append(
                HttpCheck(
                    url,
                    timeout_s=args.timeout,
                    follow_redirects=not args.no_follow,
                    max_redirects=args.max_redirects,
                    expect_status=tuple(args.status),
                    body_regex=args.body_regex,
                    json_field=args.json_field,
                    json_value=json_value,
                    verify_tls=not args.insecure,
                    ca_file=args.ca_file,
                    server_name=args.server_name,
                    cert_min_days=args.cert_min_days,
                    source_address=args.source,
                    family=fam,
                    all_addresses=not args.first,
                    reuse_connection=args.reuse,
                    headers=tuple(headers),
                )  # fmt: skip
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return out


def _f(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def format_line(r: Any) -> str:
    """One result as text: outcome, status, then every phase and the split."""
    addr = r.address or "-"
    head = f"{r.url} [{addr}] {r.outcome.value}"
    if r.status is not None:
        head += f" {r.status} {r.http_version or ''}".rstrip()
    if r.redirects:
        head += f" after {r.redirects} redirect{'s' if r.redirects != 1 else ''}"
    parts = [
        f"dns {_f(r.dns_ms)}", f"connect {_f(r.connect_ms)}", f"tls {_f(r.tls_ms)}",
        f"send {_f(r.send_ms)}", f"wait {_f(r.wait_ms)}", f"transfer {_f(r.transfer_ms)}",
    ]  # fmt: skip
    if r.redirect_ms:
        parts.insert(0, f"redirects {_f(r.redirect_ms)}")
    line = f"{head}  {' '.join(parts)}  total {_f(r.total_ms)} ms"
    if r.server_ms is not None:
        line += (f"  | rtt {_f(r.rtt_ms)} ({r.rtt_source}) server {_f(r.server_ms)}"
                 f" path {_f(r.path_ms)} ms")  # fmt: skip
    days = r.cert_days_left
    if days is not None:
        line += f"  | cert {days:.1f} days left"
    if r.timeout_phase:
        line += f"  | timed out in {r.timeout_phase}"
    if r.error and r.outcome.value != "ok":
        line += f"  | {r.error}"
    return line


async def _icmp_rtts(addresses: list[str], mode: str, timeout_s: float) -> dict[str, float]:
    """Average RTT of 3 echoes per address (none for an address that did not answer,
    or when no ICMP socket may be opened: then the split falls back to TCP)."""
    from .. import api
    from ..errors import FastpingError

    if not addresses:
        return {}
    try:
        res = await api.async_sweep(addresses, count=3, interval_s=0.1,
                                    timeout_s=min(1.0, timeout_s), mode=mode)  # fmt: skip
    except (FastpingError, OSError):
        return {}
    return {h.address or h.target: h.avg_ms for h in res if h.avg_ms is not None}


async def _main(args: argparse.Namespace) -> int:
    import asyncio

    from ..cli import EXIT_UNRESOLVED
    from ..http import HttpOutcome, HttpRunner, system_resolver

    checks = _checks(args)
    rtts: dict[str, float] = {}
    runner = HttpRunner(max_concurrency=max(1, args.concurrency), rtt_of=rtts.get)
    worst = 0
    try:
        for _ in range(args.count):
            if args.icmp:
                addrs: list[str] = []
                for c in checks:
                    try:
                        found = await system_resolver(c.host, 0, c.family)
                    except OSError:
                        continue
                    for _fam, a in found[: None if c.all_addresses else 1]:
                        if a not in addrs:
                            addrs.append(a)
                # just before the checks, not during them: the sweep's thread would
                # share the CPU with the handshakes and stretch every phase
                rtts.clear()
                rtts.update(await _icmp_rtts(addrs, args.mode, args.timeout))
            results = await asyncio.gather(*(runner.run(c) for c in checks))
            from ..http import split_server_time

            for rs in results:
                for r in rs:
                    split_server_time(r, rtts.get(r.address or ""))
                    if args.json:
                        print(json.dumps(r.as_dict()), flush=True)
                    else:
                        print(format_line(r), flush=True)
                    if r.outcome is HttpOutcome.RESOLVE:
                        worst = max(worst, EXIT_UNRESOLVED)
                    elif not r.ok:
                        worst = max(worst, 1)
    finally:
        await runner.close()
    return worst


def run(args: argparse.Namespace) -> int:
    import asyncio

    if args.concurrency < 1:
        from ..errors import ConfigError

        raise ConfigError("--concurrency must be >= 1")
    try:
        return asyncio.run(_main(args))
    finally:
        sys.stdout.flush()
