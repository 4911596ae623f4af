"""What the engine accepts from the layers around it, as Protocols: a socket of the
core (``IcmpSocketLike``: ``_icmp.IcmpSocket`` and its TCP, UDP and DNS siblings,
``tcpconnect.ConnectSocket``, the tests' fake), the store it hands results to
(``ResultStoreLike``: ``store.ResultStore``), the network monitor it reads
(``NetworkMonitorLike``: ``netstate.NetworkMonitor``), and the one answer to "is
our own network down" (``network_is_down``) every module asks.

Only what the engine really calls is here: a fake needs nothing more, and a new
method the engine starts to call shows up in ``mypy --strict`` at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..results import CoreEvent as CoreEvent  # what a socket's send / recv / expire return
from ..results import ProbeResult, SlotStats


class IcmpSocketLike(Protocol):
    """What the engine needs from ``_icmp.IcmpSocket`` (tests use a fake)."""

    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def add_target(self, address: str, port: int = 0) -> int: ...
    def remove_target(self, slot: int) -> None: ...
    def send(
        self, slots: Iterable[int], drain: bool = True, due_ns: int = 0
    ) -> list[CoreEvent]: ...
    def lateness(self) -> tuple[int, int, int, tuple[int, ...]]: ...
    def recv(self, max_packets: int = 0) -> list[CoreEvent]: ...
    def expire(self, timeout_s: float) -> list[CoreEvent]: ...
    def totals(self) -> dict[str, int]: ...
    def set_log(self, mode: int) -> None: ...
    def take_log(self, slot: int = -1) -> list[tuple[int, bytes]]: ...
    def forget_last(self, slot: int = -1) -> None: ...
    def set_slot_timeout(self, slot: int, timeout_s: float) -> None: ...
    def slot_stats(self, slot: int) -> SlotStats: ...
    def set_rtt_buckets(self, bounds_ns: Iterable[int]) -> None: ...
    def slot_buckets(self, slot: int) -> tuple[tuple[int, ...], int] | None: ...
    def slot_closed(self, slot: int) -> int: ...  # kinds with ports (TCP) only
    def slot_last(self, slot: int) -> tuple[int, int, int]: ...
    def slot_address(self, slot: int) -> str: ...


SocketFactory = Callable[[int, int], IcmpSocketLike]  # (family, window) -> socket
# a socket of the engine: (probe kind, family); targets.PROBE_KINDS are the kinds
SockKey = tuple[str, int]
Resolver = Callable[[str, int], Awaitable[list[tuple[int, str]]]]  # -> [(family, address)]
# Called with every batch of results, in the event loop, before the store gets them.
Observer = Callable[[Sequence[ProbeResult]], None]
# One item of the outcome log handed to the store: (target, address, packed records)
ChunkItem = tuple[str, "str | None", bytes]


class ResultStoreLike(Protocol):
    """What the engine calls on its ``store`` (``store.ResultStore``): results it made
    itself, the core's outcome log as chunks, a flush at stop and, for ``stats()``,
    its counters. A store may also have ``submit_outages(outages)`` (the engine
    looks for it: outages are kept only where there is a table for them)."""

    def submit(self, results: Iterable[ProbeResult]) -> None: ...
    def submit_chunks(self, items: Iterable[ChunkItem]) -> None: ...
    async def flush(self, timeout_s: float | None = None) -> bool: ...
    def stats(self) -> Mapping[str, Any]: ...


class NetworkMonitorLike(Protocol):
    """What the engine reads of its ``network`` (``netstate.NetworkMonitor``): its
    ``state``, a ``netstate.NetworkState`` (or anything whose ``name``, or the
    thing itself, reads ``DOWN`` when our own network is down)."""

    @property
    def state(self) -> object: ...


def network_state(network: NetworkMonitorLike | None) -> str:
    """What ``network`` says of our own network, lower case ("up", "degraded",
    "down", "unknown", ...: a ``NetworkState``'s name or a plain string); "unknown"
    without a monitor."""
    if network is None:
        return "unknown"
    st = getattr(network, "state", None)
    return str(getattr(st, "name", st)).lower()


def network_is_down(network: NetworkMonitorLike | None) -> bool:
    """True when ``network`` says our own network is down (``state`` DOWN); False
    without a monitor, or in any other state (unknown, degraded, up)."""
    return network_state(network) == "down"
