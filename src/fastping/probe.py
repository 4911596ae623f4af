"""Privilege modes: which kind of ICMP socket this process may open.

raw (root or CAP_NET_RAW) -> dgram (unprivileged ICMP sockets, allowed for the
groups in net.ipv4.ping_group_range) -> subprocess (the system ``ping``).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from .errors import PermissionDenied

MODES = ("auto", "raw", "dgram", "subprocess")


def open_icmp_socket(family: int = socket.AF_INET, mode: str = "auto", **options: Any) -> Any:
    """Open an IcmpSocket of ``family`` in ``mode`` ("auto" tries raw, then dgram).

    Raises PermissionDenied, saying what to grant, when no socket mode is allowed.
    """
    from ._icmp import IcmpSocket

    if mode not in MODES or mode == "subprocess":
        raise ValueError(f"mode {mode!r} is not a socket mode: use auto, raw or dgram")
    kinds = ("raw", "dgram") if mode == "auto" else (mode,)
    last: OSError | None = None
    for kind in kinds:
        try:
            return IcmpSocket(family, kind=kind, **options)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES):
                raise
            last = e
    raise PermissionDenied(
        f"cannot open an ICMP socket ({last}): run as root, grant CAP_NET_RAW "
        "(setcap cap_net_raw+ep <python>), or allow unprivileged ICMP with "
        "sysctl -w net.ipv4.ping_group_range='0 2147483647'"
    )
