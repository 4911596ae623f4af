"""``fastping sweep dns://SERVER/NAME?type=AAAA ...``: DNS queries on the batched core
(DnsSocket), one line per (server, name, type): its outcome (noerror with the answer
count and smallest TTL, nxdomain, servfail, refused, another rcode, truncated,
mismatched, unreachable, timeout) and the kernel-timed resolution time."""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..dnstcp import TcpAnswer

DEFAULT_PORT = 53


@dataclass(frozen=True)
class DnsTarget:
    """One dns:// target: ask ``server``:``port`` for ``name`` ``qtype``."""

    server: str
    port: int
    name: str
    qtype: str
    family: int

    @property
    def url(self) -> str:
        host = f"[{self.server}]" if self.family == socket.AF_INET6 else self.server
        hostport = host if self.port == DEFAULT_PORT else f"{host}:{self.port}"
        return f"dns://{hostport}/{self.name}?type={self.qtype}"


def is_dns_target(text: str) -> bool:
    return text.lower().startswith("dns://")


def wants_dns(args: argparse.Namespace) -> bool:
    """The command line, or the first target line of a -f file, names a dns:// target."""
    if any(is_dns_target(t) for t in args.targets):
        return True
    return any(is_dns_target(_first_line(f)) for f in args.file if f != "-")


def _first_line(path: str) -> str:
    """The first target word of a regular file, from its first 4 KiB (nothing else is
    read ahead: a pipe or device is left whole for the sweep that reads it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return ""  # the ICMP path reports the file it cannot read
    for ln in head.decode("utf-8", "replace").splitlines():
        word = ln.split("#", 1)[0].strip()
        if word:
            return word
    return ""


def _usage(text: str, why: str) -> str:
    return (
        f"{text!r}: {why}; write dns://SERVER/NAME?type=TYPE with SERVER an address "
        "(127.0.0.1, 127.0.0.1:5353, [::1]:5353)"
    )


def parse_dns_target(text: str) -> DnsTarget:
    """``dns://SERVER[:PORT]/NAME[?type=TYPE]`` (TYPE A by default, SERVER numeric)."""
    from .._icmp import DNS_QTYPES, dns_name_wire, dns_qtype
    from ..errors import TargetError

    try:
        u = urlsplit(text)
        port = u.port if u.port is not None else DEFAULT_PORT
    except ValueError as e:
        raise TargetError(_usage(text, str(e))) from None
    server = u.hostname or ""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        socket.inet_pton(family, server)
    except OSError:
        raise TargetError(
            _usage(text, f"the server {server or '(none)'!r} is not a numeric address")
        ) from None
    if not 1 <= port <= 65535:
        raise TargetError(_usage(text, f"port {port} is not 1..65535"))
    name = u.path.lstrip("/")
    if not name:
        raise TargetError(_usage(text, "no name to ask for"))
    qtype = "A"
    for k, v in parse_qsl(u.query, keep_blank_values=True):
        if k.lower() != "type":
            raise TargetError(_usage(text, f"unknown parameter {k!r} (only type=)"))
        qtype = v.upper()
    try:
        dns_name_wire(name)
        number = dns_qtype(qtype)
    except ValueError as e:
        raise TargetError(_usage(text, str(e))) from None
    if qtype not in DNS_QTYPES:
        qtype = f"TYPE{number}"
    name = name if name == "." else name.rstrip(".")
    return DnsTarget(server, port, name, qtype, family)


def dns_targets(args: argparse.Namespace) -> list[DnsTarget]:
    """The dns:// targets of the command line and of -f files (one a line, # comments)."""
    from ..errors import TargetError

    words = list(args.targets)
    for f in args.file:
        try:
            fh = sys.stdin if f == "-" else open(f, encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise TargetError(f"cannot read targets file {f!r}: {e.strerror or e}") from None
        with fh:
            words += [ln.split("#", 1)[0].strip() for ln in fh]
    words = [w for w in words if w]
    other = [w for w in words if not is_dns_target(w)]
    if other:
        raise TargetError(
            f"{other[0]!r}: a sweep of dns:// targets takes only dns:// targets (ping "
            "hosts in a sweep of their own)"
        )
    return [parse_dns_target(w) for w in words]


def _check_options(args: argparse.Namespace) -> None:
    from ..errors import TargetError

    if args.tcp or getattr(args, "udp", False) or args.ports is not None:
        raise TargetError(
            "--tcp/--udp/--port are for port probes; a dns:// target names its own port"
        )
    if args.csv:
        raise TargetError("dns:// sweeps print text or --json (no --csv yet)")
    if args.family:
        raise TargetError("-4/-6: a dns:// target's server address says its family")


@dataclass
class DnsResult:
    target: DnsTarget
    sent: int
    received: int
    unreachable: int
    min_ns: int
    max_ns: int
    sum_ns: int
    dns: dict[str, Any]
    icmp: tuple[int, int, str | None] = (0, 0, None)  # the last ICMP error: type, code, from
    tcp: TcpAnswer | None = None  # the TCP retry of a truncated answer

    @property
    def ok(self) -> bool:
        """Answered NOERROR (over TCP, when the UDP answer was truncated)."""
        if self.tcp is not None:
            return self.tcp.outcome == "noerror"
        return self.outcome == "noerror"

    @property
    def outcome(self) -> str:
        last = self.dns["last"]
        if last is not None:
            if last["truncated"]:
                return "truncated"
            return {0: "noerror", 3: "nxdomain", 2: "servfail", 5: "refused"}.get(
                last["rcode"], "rcode"
            )
        if self.dns["mismatched"]:
            return "mismatched"
        if self.unreachable:
            return "unreachable"
        return "timeout"

    def to_dict(self) -> dict[str, Any]:
        from .._icmp import DNS_RCODES

        last = self.dns["last"] or {}
        rc = last.get("rcode")
        return {
            "target": self.target.url,
            "server": self.target.server,
            "port": self.target.port,
            "name": self.target.name,
            "type": self.target.qtype,
            "outcome": self.outcome,
            "rcode": rc,
            "rcode_name": DNS_RCODES.get(rc, f"RCODE{rc}") if rc is not None else None,
            "answers": last.get("answers"),
            "min_ttl": last.get("min_ttl"),
            "truncated": last.get("truncated"),
            "sent": self.sent,
            "received": self.received,
            "mismatched": self.dns["mismatched"],
            "rtt_ms": round(self.sum_ns / self.received / 1e6, 6) if self.received else None,
            "rtt_min_ms": round(self.min_ns / 1e6, 6) if self.received else None,
            "rtt_max_ms": round(self.max_ns / 1e6, 6) if self.received else None,
            "icmp": (
                {"type": self.icmp[0], "code": self.icmp[1], "from": self.icmp[2]}
                if self.outcome == "unreachable"
                else None
            ),
            "tcp": self.tcp.to_dict() if self.tcp is not None else None,
        }

    def text(self) -> str:
        from .._icmp import DNS_RCODES

        d = self.to_dict()
        out = [self.target.url, self.outcome]
        if self.outcome == "rcode":
            out.append(f"{d['rcode']} {DNS_RCODES.get(d['rcode'], '')}".rstrip())
        if self.outcome == "noerror":
            n = d["answers"]
            out.append(f"{n} answer{'' if n == 1 else 's'}")
            if d["min_ttl"] is not None:
                out.append(f"ttl {d['min_ttl']}")
        if self.outcome == "unreachable":
            out.append(f"(ICMP {self.icmp[0]}/{self.icmp[1]} from {self.icmp[2]})")
        if self.received:
            if self.sent > 1:
                out.append(
                    f"({self.received}/{self.sent}, min/avg/max {d['rtt_min_ms']:.3f}/"
                    f"{d['rtt_ms']:.3f}/{d['rtt_max_ms']:.3f} ms)"
                )
            else:
                out.append(f"({d['rtt_ms']:.3f} ms)")
        if self.tcp is not None:
            out[-1] += ";"
            out.append(_tcp_text(self.tcp))
        return " ".join(out)


def _tcp_text(a: TcpAnswer) -> str:
    from .._icmp import DNS_RCODES

    out = ["tcp", a.outcome]
    if a.outcome == "rcode" and a.rcode is not None:
        out.append(f"{a.rcode} {DNS_RCODES.get(a.rcode, '')}".rstrip())
    if a.outcome == "noerror" and a.answers is not None:
        out.append(f"{a.answers} answer{'' if a.answers == 1 else 's'}")
        if a.min_ttl is not None:
            out.append(f"ttl {a.min_ttl}")
    if a.error:
        out[-1] += ":"
        out.append(a.error)
    if a.rtt_ns is not None and a.connect_ns is not None:
        out.append(f"(connect {a.connect_ns / 1e6:.3f} ms, query {a.rtt_ns / 1e6:.3f} ms)")
    return " ".join(out)


def retry_truncated(results: list[DnsResult], timeout_s: float) -> None:
    """Ask each truncated query again over TCP (RFC 7766), timed apart."""
    from ..dnstcp import TcpQuery, tcp_queries

    trunc = [r for r in results if r.outcome == "truncated"]
    if not trunc:
        return
    qs = [TcpQuery(r.target.server, r.target.port, r.target.family, r.target.name,
                   r.target.qtype) for r in trunc]  # fmt: skip
    for r, a in zip(trunc, tcp_queries(qs, timeout_s=timeout_s), strict=True):
        r.tcp = a


def sweep_dns(
    targets: list[DnsTarget], *, count: int, interval_s: float, timeout_s: float, rate_pps: float
) -> tuple[list[DnsResult], dict[str, Any]]:
    """Ask every target ``count`` times on one DnsSocket per family; results in order."""
    from .._icmp import DnsSocket

    results: list[DnsResult | None] = [None] * len(targets)
    totals: dict[str, Any] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        idx = [i for i, t in enumerate(targets) if t.family == family]
        if not idx:
            continue
        with DnsSocket(family, batch_size=256) as s:
            for i in idx:
                t = targets[i]
                s.add_query(t.server, t.port, t.name, t.qtype)
            s.sweep(count=count, interval_s=interval_s, timeout_s=timeout_s, rate_pps=rate_pps)
            for slot, i in enumerate(idx):
                st = s.slot_stats(slot)
                results[i] = DnsResult(
                    targets[i],
                    st.sent,
                    st.received,
                    st.unreachable,
                    st.min_ns,
                    st.max_ns,
                    st.sum_ns,
                    s.slot_dns(slot),
                    (st.last_err_type, st.last_err_code, st.last_err_router),
                )
            _add_totals(totals, s.totals())
    return [r for r in results if r is not None], totals


def _add_totals(into: dict[str, Any], t: dict[str, Any]) -> None:
    for k, v in t.items():
        if isinstance(v, dict):
            sub = into.setdefault(k, {})
            for k2, v2 in v.items():
                sub[k2] = sub.get(k2, 0) + v2
        elif isinstance(v, int):
            into[k] = into.get(k, 0) + v


def _summary(results: list[DnsResult], totals: dict[str, Any], elapsed: float) -> dict[str, Any]:
    by: dict[str, int] = {}
    tcp: dict[str, int] = {}
    for r in results:
        by[r.outcome] = by.get(r.outcome, 0) + 1
        if r.tcp is not None:
            tcp[r.tcp.outcome] = tcp.get(r.tcp.outcome, 0) + 1
    return {
        "tcp_retries": tcp,
        "targets": len(results),
        "outcomes": by,
        "sent": totals.get("sent", 0),
        "received": totals.get("received", 0),
        "mismatched": totals.get("mismatched", 0),
        "foreign": totals.get("foreign", 0),
        "malformed": totals.get("malformed", 0),
        "rx_drops": totals.get("rx_drops", 0),
        "timed_user": totals.get("timed_user", 0),
        "duration_s": round(elapsed, 6),
        "queries_per_s": round(totals.get("sent", 0) / elapsed, 1) if elapsed else 0.0,
    }


def _text_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['targets']:>10} queries (server, name, type)"]
    lines += [f"{n:>10} {k}" for k, n in sorted(s["outcomes"].items())]
    lines += [
        f"{n:>10} truncated, retried over TCP: {k}" for k, n in sorted(s["tcp_retries"].items())
    ]
    lines += [f"{s['sent']:>10} sent", f"{s['received']:>10} answers"]
    for key, label in (
        ("mismatched", "mismatched answers (another question: never counted as answers)"),
        ("foreign", "packets from no server queried, or with a wrong ID"),
        ("malformed", "malformed packets"),
        ("rx_drops", "answers dropped by the kernel (receive buffer full)"),
        ("timed_user", "answers timed from a user-space send time (no kernel TX timestamp)"),
    ):
        if s.get(key):
            lines.append(f"{s[key]:>10} {label}")
    lines.append(f"{s['duration_s']:>10.3f} s elapsed, {s['queries_per_s']:.0f} queries/s")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """The sweep command for dns:// targets: exit 0 when every query was answered
    NOERROR (a truncated one: over TCP), 1 otherwise."""
    import time

    from .. import api
    from ..cli import EXIT_ALL_ALIVE, EXIT_SOME_DOWN
    from .sweep import check_plausible

    _check_options(args)
    check_plausible(args)
    targets = dns_targets(args)
    t0 = time.monotonic()
    results, totals = sweep_dns(
        targets,
        count=args.count,
        interval_s=args.period,
        timeout_s=args.timeout,
        rate_pps=api.DEFAULT_RATE_PPS if args.rate is None else args.rate,
    )
    retry_truncated(results, args.timeout)
    summary = _summary(results, totals, time.monotonic() - t0)
    ok = [r.ok for r in results]
    out = sys.stdout
    for r, good in zip(results, ok, strict=True):
        if args.quiet or (args.alive and not good) or (args.unreachable and good):
            continue
        if args.alive or args.unreachable:
            out.write(r.target.url + "\n")
        else:
            out.write((json.dumps(r.to_dict()) if args.json else r.text()) + "\n")
    if args.json:
        if args.quiet:
            out.write(json.dumps(summary) + "\n")
        elif args.stats:
            sys.stderr.write(json.dumps(summary) + "\n")
    elif args.quiet:
        out.write(_text_summary(summary))
    else:
        sys.stderr.write(_text_summary(summary))
    out.flush()
    return EXIT_ALL_ALIVE if all(ok) else EXIT_SOME_DOWN
