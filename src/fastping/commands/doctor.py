"""``fastping doctor``: which ICMP modes work for the current user, why, and how to fix;
and how TCP probes are timed (raw SYNs with CAP_NET_RAW, else connect()).

By default each verdict is observed, not guessed: a raw and a dgram ICMP socket
and a raw TCP socket are opened and closed (no packet is sent) and the system ``ping`` is run once
against 127.0.0.1 (or ::1 with ``-6``). Exit 0 when some mode works, 4 when none does.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..privilege import Diagnosis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    fam = parser.add_mutually_exclusive_group()
    fam.add_argument(
        "-4", dest="family", action="store_const", const=4, help="check IPv4 sockets (default)"
    )
    fam.add_argument("-6", dest="family", action="store_const", const=6, help="check IPv6 sockets")
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="infer from capabilities, sysctl and ping's file mode only: open no socket, "
        "run no ping",
    )
    parser.set_defaults(family=4)


def run(args: argparse.Namespace) -> int:
    import socket

    from ..cli import EXIT_SYSTEM_ERROR
    from ..privilege import diagnose

    family = socket.AF_INET6 if args.family == 6 else socket.AF_INET
    diag = diagnose(
        verify=args.verify, family=family, ping_target="::1" if args.family == 6 else "127.0.0.1"
    )
    best = diag.best_mode()
    if args.json:
        out = diag.to_dict()
        out["family"] = f"IPv{args.family}"
        out["verified"] = bool(args.verify)
        print(json.dumps(out, indent=2))
    else:
        print(format_text(diag, args.family, args.verify))
    return 0 if best is not None else EXIT_SYSTEM_ERROR


def format_text(d: Diagnosis, family_version: int, verified: bool) -> str:
    """The human-readable diagnosis: facts, one line per mode, the fixes."""
    groups = ", ".join(str(g) for g in d.all_gids)
    lines = [
        f"fastping doctor (IPv{family_version}, {'verified' if verified else 'inferred'})",
        f"  user:               {d.user} (uid {d.uid}, euid {d.euid}, egid {d.egid}; "
        f"groups {groups})",
        f"  python:             {d.python}",
        f"  CAP_NET_RAW:        {'present' if d.cap_net_raw else 'missing'}"
        + (f" (CapEff {d.cap_eff:016x})" if d.cap_eff is not None else " (CapEff unreadable)"),
        f"  ping_group_range:   {d.range_text}",
    ]
    if d.ping is None:
        lines.append("  ping binary:        none on PATH")
    else:
        p = d.ping
        how = [
            x
            for x, on in (("setuid root", p.setuid_root), ("cap_net_raw", p.file_cap_net_raw))
            if on
        ]
        lines.append(
            f"  ping binary:        {p.path} -> {p.realpath} ({p.flavor}"
            + (f", {p.version}" if p.version else "")
            + (f"; {', '.join(how)}" if how else "")
            + ")"
        )
    lines.append("")
    for st in d.statuses():
        lines.append(f"  {st.mode:<11} {'works' if st.ok else 'NO':<6} {st.reason}")
        for fix in st.fixes:
            lines.append(f"  {'':<11} {'fix:':<6} {fix}")
    tcp = d.tcp_status()
    lines.append("")
    lines.append(f"  TCP timing: {tcp.label}: {tcp.reason}")
    for fix in tcp.fixes:
        lines.append(f"  {'':<11} {'fix:':<6} {fix}")
    lines.append("")
    best = d.best_mode()
    if best is None:
        lines.append(
            "No mode works: fastping cannot send ICMP as this user. Grant CAP_NET_RAW, open "
            "net.ipv4.ping_group_range to your group, or install a usable ping (fixes above)."
        )
    else:
        lines.append(f"mode=auto will use: {best}")
    lines.append(f"TCP (--tcp, tcp://) mode=auto will use: {tcp.timing}")
    return "\n".join(lines)
