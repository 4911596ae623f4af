"""Privilege modes: which kind of ICMP socket this process may open.

``raw`` (root or CAP_NET_RAW) -> ``dgram`` (unprivileged ICMP sockets, allowed for
the groups in ``net.ipv4.ping_group_range``) -> ``subprocess`` (the system
``ping``). Every mode returns the same result types; see ``docs/modes.md``.

Contract for callers (``api.sweep``, the engine, netstate checks)::

    try:
        sock = open_icmp_socket(family, mode=mode, window=2)
    except UseSubprocess:
        hosts = subprocess_sweep(targets, count=..., interval_s=..., timeout_s=...)

* ``open_icmp_socket`` returns an :class:`~fastping._icmp.IcmpSocket` of kind
  ``raw`` or ``dgram``.
* The subprocess mode is not a socket. When ``mode="subprocess"`` is asked for,
  or ``mode="auto"`` has to step down to it, :class:`UseSubprocess` is raised:
  the caller runs :func:`subprocess_sweep` / :func:`async_subprocess_sweep`
  instead. ``UseSubprocess`` subclasses ``PermissionDenied`` so a caller that
  does not know subprocess mode still fails with a message that explains.
* A forced mode that cannot work raises ``PermissionDenied`` whose message is
  the diagnosis of this host with the commands that fix it; ``auto`` with no
  usable mode at all raises ``PermissionDenied`` naming CAP_NET_RAW, the sysctl
  and the missing ``ping``.
* ``auto`` logs (logger ``fastping.probe``) why it stepped down: INFO for
  raw -> dgram (the normal case for a non-root user), WARNING for -> subprocess
  (much slower).
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, PermissionDenied, SocketError, UseSubprocess
from .privilege import ALL_MODES, MODES, Diagnosis, Mode, diagnose

if TYPE_CHECKING:
    from ._icmp import IcmpSocket
    from .subproc import async_subprocess_sweep, subprocess_sweep

__all__ = [
    "ALL_MODES",
    "MODES",
    "UseSubprocess",
    "async_subprocess_sweep",
    "check_mode",
    "open_icmp_socket",
    "resolve_mode",
    "subprocess_sweep",
]

log = logging.getLogger("fastping.probe")


def __getattr__(name: str) -> Any:
    # the system-ping fallback (and asyncio with it) is imported only when used: a
    # sweep on an ICMP socket starts ~20 ms sooner without it
    if name in ("subprocess_sweep", "async_subprocess_sweep"):
        from . import subproc

        return getattr(subproc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PERMISSION_ERRNOS = (errno.EPERM, errno.EACCES)


def check_mode(mode: str) -> str:
    """Validate a mode name; ConfigError lists the choices."""
    if mode not in ALL_MODES:
        raise ConfigError(f"unknown mode {mode!r}: use one of {', '.join(ALL_MODES)}")
    return mode


def _family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


def _open(family: int, kind: Mode, options: dict[str, Any]) -> IcmpSocket:
    from ._icmp import IcmpSocket

    try:
        return IcmpSocket(family, kind=kind, **options)
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            raise SocketError(
                f"{_family_name(family)} is not available on this host ({e.strerror}): "
                f"leave out {_family_name(family)} targets or enable it"
            ) from e
        raise


def open_icmp_socket(
    family: int = socket.AF_INET, mode: str = "auto", **options: Any
) -> IcmpSocket:
    """Open an IcmpSocket of ``family`` in ``mode`` ("auto", "raw", "dgram").

    ``options`` go to ``IcmpSocket`` (payload_size, ttl, tos, dont_fragment,
    window, batch_size, rcvbuf_bytes, bpf). Raises :class:`UseSubprocess` for
    ``mode="subprocess"`` and when ``auto`` must step down to the system ping;
    :class:`PermissionDenied` (with the diagnosis and the fix) when the mode asked
    for cannot work.
    """
    check_mode(mode)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ConfigError(f"family must be socket.AF_INET or socket.AF_INET6, not {family}")
    if mode == "subprocess":
        facts = diagnose(family=family)
        if not facts.status("subprocess").ok:
            raise PermissionDenied(facts.explain("subprocess"))
        raise UseSubprocess("subprocess mode asked for: run the system ping", facts)
    if mode in ("raw", "dgram"):
        kind: Mode = "raw" if mode == "raw" else "dgram"
        try:
            return _open(family, kind, options)
        except OSError as e:
            if e.errno not in _PERMISSION_ERRNOS:
                raise
            facts = diagnose(family=family)
            raise PermissionDenied(
                f"cannot open a {mode} ICMP socket ({e.strerror}).\n{facts.explain(kind)}"
            ) from e
    # auto: raw -> dgram -> subprocess
    failures: list[str] = []
    diag_cache: list[Diagnosis] = []

    def diag() -> Diagnosis:
        if not diag_cache:
            diag_cache.append(diagnose(family=family))
        return diag_cache[0]

    for kind in ("raw", "dgram"):
        try:
            sock = _open(family, kind, options)
        except OSError as e:
            if e.errno not in _PERMISSION_ERRNOS:
                raise
            failures.append(kind)
            continue
        if failures:
            log.info(
                "fastping: %s ICMP: raw mode unavailable, using dgram. %s",
                _family_name(family),
                diag().explain("raw"),
                extra={"mode": "dgram", "family": _family_name(family)},
            )
        return sock
    d = diag()
    if d.status("subprocess").ok:
        reason = (
            f"no ICMP socket may be opened for {_family_name(family)}; falling back to the "
            f"system ping (slower, no kernel timestamps).\n{d.explain('raw')}\n"
            f"{d.explain('dgram')}"
        )
        log.warning("fastping: %s", reason, extra={"mode": "subprocess"})
        raise UseSubprocess(reason, d)
    raise PermissionDenied(d.explain_none())


def resolve_mode(family: int = socket.AF_INET, mode: str = "auto") -> Mode:
    """The mode ``open_icmp_socket`` would end up in (opens and closes a socket;
    no packet is sent). Raises PermissionDenied like it when nothing works."""
    try:
        sock = open_icmp_socket(family, mode)
    except UseSubprocess:
        return "subprocess"
    kind: Mode = "raw" if sock.kind == "raw" else "dgram"
    sock.close()
    return kind
