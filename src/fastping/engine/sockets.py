"""The engine's sockets by probe kind: ``SOCKET_KINDS`` maps a kind (``icmp``,
``tcp``, ``udp``, ``dns``) to the opener of its socket class (each with
``IcmpSocket``'s API, ``contracts.IcmpSocketLike``), so a kind is a row here and
not a branch in the engine; ``socket_factories`` turns the engine's options into one
``SocketFactory`` per kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .contracts import IcmpSocketLike, SocketFactory

# kind -> (mode, options) -> SocketFactory: the socket class of each probe kind. A
# kind is a row here (each class has IcmpSocket's API), not a branch elsewhere.
KindOpener = Callable[[str, dict[str, Any]], SocketFactory]


def _icmp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from ..probe import open_icmp_socket

        # "connect" is TCP's alone: ICMP then takes what it can get (auto)
        icmp_mode = "auto" if mode == "connect" else mode
        sock: IcmpSocketLike = open_icmp_socket(family, mode=icmp_mode, window=window, **options)
        return sock

    return open_socket


def _tcp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from .._icmp import TcpSocket
        from ..tcpconnect import ConnectSocket

        # stateless SYNs on a raw socket (mode raw: PermissionError names CAP_NET_RAW);
        # mode connect, or auto without CAP_NET_RAW: connect() timing (its ``timing``
        # says "connect"), as ``fastping sweep --tcp`` falls back
        if mode != "connect":
            try:
                sock: IcmpSocketLike = TcpSocket(family, window=window, **options)
                return sock
            except PermissionError:
                if mode == "raw":
                    raise
        return ConnectSocket(family, window=window, **options)

    return open_socket


def _udp_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from .._icmp import UdpSocket

        # unprivileged (SOCK_DGRAM): an answer = open, ICMP port unreachable = closed,
        # silence = timeout (open|filtered: a UDP service need not answer)
        sock: IcmpSocketLike = UdpSocket(family, window=window, **options)
        return sock

    return open_socket


def _dns_opener(mode: str, options: dict[str, Any]) -> SocketFactory:
    def open_socket(family: int, window: int) -> IcmpSocketLike:
        from .._icmp import DnsSocket

        # unprivileged (SOCK_DGRAM): any answer = reply (its rcode and TC in the reply's
        # TTL byte, dnscodec.read_answer_code), ICMP port unreachable = unreachable
        sock: IcmpSocketLike = DnsSocket(family, window=window, **options)
        return sock

    return open_socket


SOCKET_KINDS: dict[str, KindOpener] = {
    "icmp": _icmp_opener,
    "tcp": _tcp_opener,
    "udp": _udp_opener,
    "dns": _dns_opener,
}


def socket_factories(
    mode: str,
    socket_options: dict[str, Any] | None,
    socket_factory: SocketFactory | None,
    given_factories: dict[str, SocketFactory] | None,
    kind_options: dict[str, dict[str, Any]] | None,
) -> dict[str, SocketFactory]:
    """The socket factory of each probe kind: ``socket_factory`` (ICMP) and
    ``given_factories`` (the engine's ``kind_factories``) as given, the others from
    SOCKET_KINDS with their ``kind_options`` (``socket_options`` are ICMP's)."""
    given = dict(given_factories or {})
    opts = dict(kind_options or {})
    for k in (*given, *opts):
        if k not in SOCKET_KINDS:
            raise ConfigError(f"probe kind {k!r}: this engine knows {', '.join(SOCKET_KINDS)}")
    if socket_factory is not None:
        given["icmp"] = socket_factory
    opts.setdefault("icmp", dict(socket_options or {}))
    out: dict[str, SocketFactory] = {}
    for k, opener in SOCKET_KINDS.items():
        out[k] = given[k] if k in given else opener(mode, dict(opts.get(k, {})))
    return out
