"""Network state of the monitoring host itself: is *our* network up?

When the host loses its link, its address or its default route every target
looks dead. :class:`NetworkMonitor` tells that apart from real target loss:

* a pyroute2 netlink subscription (asyncio) follows links (admin state,
  carrier, operational state incl. dormant / lower-layer-down), IPv4 and IPv6
  addresses and default routes. The network is *usable* while any considered
  interface (the preferred ones, else every non-loopback one) is up, has a
  global address of some family and a default route of that family through it.
* connectivity checks probe the check hosts the user names (never any by
  default) through fastping's own ICMP core, with a TCP connect to ports 53 /
  443 where ICMP is not permitted or gets no answer. All answer: ``UP``; some:
  ``DEGRADED``; none, or nothing usable: ``DOWN``; before the first
  evaluation: ``UNKNOWN``. Without check hosts the state comes from netlink
  alone and ``verified`` is False.
* a netlink event that makes the network unusable sets ``DOWN`` at once (no
  probing needed to know that); any change of the usable set triggers a
  debounced check; a periodic check every ``check_interval`` is the fallback,
  and the only source where netlink is unavailable (then interfaces and
  routes are read from /proc and psutil).

Subscribers each get an *unbounded* queue: state changes are rare (one per
transition, never per packet), so nothing is ever dropped; a subscriber that
stops reading is reported in the log once its backlog passes
``SUBSCRIBER_BACKLOG_WARN`` and in ``counters["max_subscriber_backlog"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import ipaddress
import json
import logging
import math
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import TracebackType
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from .errors import (
    ConfigError,
    FastpingError,
    MonitorNotRunning,
    NetworkTimeout,
    PermissionDenied,
    SocketError,
)
from .settings import Seconds, Section, WholeNumber

log = logging.getLogger("fastping.netstate")

# --- kernel constants (linux/if.h, linux/rtnetlink.h, linux/if_addr.h) --------
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
RT_SCOPE_LINK = 253  # addresses at link scope or narrower never carry routed traffic
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
RTNH_F_DEAD = 0x1
RTNH_F_LINKDOWN = 0x10
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40  # IPv6 duplicate address detection not finished: not usable yet
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
NETLINK_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)

PUBLIC_CHECK_HOSTS: tuple[str, ...] = ("8.8.8.8", "1.1.1.1", "8.8.4.4")  # the spec's resolvers
PRESET_PUBLIC = "public"
PRESET_GATEWAY = "gateway"
TCP_FALLBACK_PORTS: tuple[int, ...] = (53, 443)
SUBSCRIBER_BACKLOG_WARN = 1000


class NetworkState(str, Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition. ``interfaces`` maps each considered interface to its
    status word (``usable``, ``down``, ``no-carrier``, ``dormant``,
    ``lower-layer-down``, ``no-address``, ``no-default-route``, ...)."""

    previous: NetworkState
    state: NetworkState
    reason: str
    time: float  # Unix seconds
    interfaces: Mapping[str, str] = field(default_factory=dict)
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "previous": self.previous.value,
            "reason": self.reason,
            "time": round(self.time, 6),
            "verified": self.verified,
            "interfaces": dict(self.interfaces),
        }


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    name: str
    up: bool
    running: bool
    operstate: str | None
    mtu: int
    mac: str | None
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    rx_drops: int
    tx_drops: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


# --- configuration ------------------------------------------------------------


# The spec's profiles. Their check hosts are public resolvers, which we never
# probe unless asked: a profile sets the timing only; add `check_hosts: [public]`.
PROFILES: dict[str, dict[str, float]] = {
    "conservative": {"check_interval": 5.0, "check_timeout": 2.0},
    "balanced": {"check_interval": 10.0, "check_timeout": 5.0},
    "patient": {"check_interval": 30.0, "check_timeout": 10.0},
}


class UpFlag:
    """A truth value that may also be called: ``NetworkMonitor.is_up`` was a method
    beside the properties ``state`` and ``verified``, so ``if mon.is_up:`` was always
    true. Now both ``if mon.is_up:`` and the older ``if mon.is_up():`` are right."""

    __slots__ = ("_value",)

    def __init__(self, value: bool) -> None:
        self._value = bool(value)

    def __bool__(self) -> bool:
        return self._value

    def __call__(self) -> bool:
        return self._value

    def __eq__(self, other: object) -> bool:
        return bool(other) == self._value if isinstance(other, (bool, UpFlag)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return repr(self._value)


def _names(v: Any) -> Any:
    return [v] if isinstance(v, str) else v  # one name is a list of one


def _host_name(v: str) -> str:
    if not v.strip():
        raise ValueError("must be a host name or address")
    return v


def _iface_name(v: str) -> str:
    if not v:
        raise ValueError("must be an interface name or pattern (eth0, wlan*)")
    return v


HostNames = Annotated[
    tuple[Annotated[str, AfterValidator(_host_name)], ...], BeforeValidator(_names)
]
IfaceNames = Annotated[
    tuple[Annotated[str, AfterValidator(_iface_name)], ...], BeforeValidator(_names)
]


class NetworkConfig(Section):
    """Settings of :class:`NetworkMonitor` (YAML section ``network:``): a mapping of
    these keys, optionally with ``profile:`` (whose timing they override). A bad
    value, from the file, ``from_mapping`` or the constructor, raises ConfigError
    naming the key."""

    SECTION: ClassVar[str] = "network"
    KEYS: ClassVar[tuple[str, ...]] = (
        "check_interval",
        "check_timeout",
        "check_hosts",
        "notify_on_change",
        "enable_netlink",
        "preferred_ifaces",
        "degraded_counts_as_up",
        "debounce",
        "webhook_timeout",
        "webhook_retries",
    )

    # periodic check (and re-sync) period
    check_interval: Seconds = Field(default=10.0, gt=0, allow_inf_nan=False)
    check_timeout: Seconds = Field(default=5.0, gt=0, allow_inf_nan=False)  # per check round
    check_hosts: HostNames = ()  # names/addresses, or presets "gateway", "public"
    notify_on_change: str | None = None  # webhook URL POSTed on every state change
    enable_netlink: bool = True
    preferred_ifaces: IfaceNames = ()  # names or fnmatch patterns; empty = all non-loopback
    degraded_counts_as_up: bool = True  # is_up() / wait_for_network() accept DEGRADED
    # gathers one burst of netlink events before checking
    debounce: Seconds = Field(default=0.005, gt=0, allow_inf_nan=False)
    webhook_timeout: Seconds = Field(default=5.0, gt=0, allow_inf_nan=False)  # per POST attempt
    webhook_retries: WholeNumber = Field(default=3, ge=0)  # extra attempts, doubling delay

    @field_validator("notify_on_change", mode="before")
    @classmethod
    def _no_webhook(cls, v: Any) -> Any:
        # The spec's boolean ("notify only on change") is what we always do; a
        # webhook needs a URL.
        return None if isinstance(v, bool) else v

    @field_validator("notify_on_change")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        why = None if v is None else _webhook_url_problem(v)
        if why:
            raise ValueError(
                f"{why}: give an http:// or https:// webhook URL with a host "
                "(http://127.0.0.1:8080/hook)"
            )
        return v

    @classmethod
    def profile_values(cls) -> Mapping[str, Mapping[str, Any]]:
        return PROFILES

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> NetworkConfig:
        """``conservative`` / ``balanced`` (the default) / ``patient`` timing from the spec."""
        if name not in PROFILES:
            raise ConfigError(
                f"network.profile: unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
            )
        return cls(**{**PROFILES[name], **overrides})


# --- the netlink view -----------------------------------------------------------


@dataclass(slots=True)
class _Link:
    index: int
    name: str
    flags: int
    operstate: str
    carrier: int | None
    mtu: int
    mac: str | None


@dataclass(frozen=True, slots=True)
class _Route:
    family: int
    table: int
    priority: int
    gateway: str | None
    oifs: tuple[int, ...]  # nexthops that are not dead / link-down


@dataclass(frozen=True, slots=True)
class _Usability:
    usable: bool
    interfaces: dict[str, str]
    reason: str
    gateways: tuple[str, ...]
    key: tuple[Any, ...]  # what a connectivity check result depends on


class _Topology:
    """Links, addresses and default routes as netlink reports them."""

    def __init__(self) -> None:
        self.links: dict[int, _Link] = {}
        self.addrs: dict[int, set[tuple[int, str]]] = {}  # index -> {(family, address)}
        self.routes: set[_Route] = set()

    # The apply_* methods take plain dicts (decoded by _msg_* below) so they can
    # be fed recorded messages in unprivileged unit tests.
    def apply_link(self, new: bool, link: _Link) -> None:
        if not new:
            self.links.pop(link.index, None)
            self.addrs.pop(link.index, None)
            self._drop_routes_via(link.index, socket.AF_UNSPEC)
            return
        old = self.links.get(link.index)
        self.links[link.index] = link
        if old is not None and old.flags & IFF_UP and not link.flags & IFF_UP:
            # Taking a link down flushes its IPv4 routes without RTM_DELROUTE
            # (fib_disable_ip in net/ipv4/fib_frontend.c); IPv6 does notify.
            self._drop_routes_via(link.index, socket.AF_INET)

    def apply_addr(self, new: bool, index: int, family: int, address: str) -> None:
        entries = self.addrs.setdefault(index, set())
        if new:
            entries.add((family, address))
            return
        entries.discard((family, address))
        if family == socket.AF_INET and not any(f == socket.AF_INET for f, _ in entries):
            # Removing the last IPv4 address silently flushes the link's IPv4
            # routes too (fib_inetaddr_event -> fib_disable_ip).
            self._drop_routes_via(index, socket.AF_INET)

    def apply_route(self, new: bool, route: _Route) -> None:
        if new:
            # A replace arrives as one RTM_NEWROUTE: drop the entry with the same identity.
            self.routes = {
                r
                for r in self.routes
                if (r.family, r.table, r.priority, r.gateway)
                != (
                    route.family,
                    route.table,
                    route.priority,
                    route.gateway,
                )
            }
            if route.oifs:
                self.routes.add(route)
            return
        match = {
            r
            for r in self.routes
            if (r.family, r.table, r.priority) == (route.family, route.table, route.priority)
            and (route.gateway is None or r.gateway == route.gateway)
            and (not route.oifs or set(route.oifs) & set(r.oifs))
        }
        self.routes -= match

    def _drop_routes_via(self, index: int, family: int) -> None:
        kept: set[_Route] = set()
        for r in self.routes:
            if family not in (socket.AF_UNSPEC, r.family) or index not in r.oifs:
                kept.add(r)
                continue
            rest = tuple(o for o in r.oifs if o != index)
            if rest:
                kept.add(replace(r, oifs=rest))
        self.routes = kept

    def evaluate(self, preferred: tuple[str, ...]) -> _Usability:
        statuses: dict[str, str] = {}
        usable: list[str] = []
        gateways: list[str] = []
        key: list[Any] = []
        for link in sorted(self.links.values(), key=lambda lk: lk.index):
            if preferred:
                if not any(fnmatch.fnmatchcase(link.name, p) for p in preferred):
                    continue
            elif link.flags & IFF_LOOPBACK:
                continue
            status = _link_status(link)
            if status is None:
                fams = {f for f, _ in self.addrs.get(link.index, ())}
                routed = [r for r in self.routes if link.index in r.oifs and r.family in fams]
                if not fams:
                    status = "no-address"
                elif not routed:
                    status = "no-default-route"
                else:
                    status = "usable"
                    usable.append(link.name)
                    for r in sorted(routed, key=lambda r: (r.family, r.priority)):
                        if r.gateway is None:
                            continue
                        gw = r.gateway
                        if r.family == socket.AF_INET6 and gw.lower().startswith("fe80"):
                            gw = f"{gw}%{link.name}"  # link-local needs its scope
                        if gw not in gateways:
                            gateways.append(gw)
                    key.append((link.index, tuple(sorted(fams)), tuple(sorted(routed, key=str))))
            statuses[link.name] = status
        if usable:
            reason = f"usable: {', '.join(usable)}"
        elif statuses:
            reason = (
                "no usable interface (" + ", ".join(f"{n}: {s}" for n, s in statuses.items()) + ")"
            )
        else:
            what = "preferred interface" if preferred else "non-loopback interface"
            reason = f"no {what} present"
        return _Usability(bool(usable), statuses, reason, tuple(gateways), tuple(key))


def _link_status(link: _Link) -> str | None:
    """None when the link itself can carry traffic, else why not (RFC 2863 operstates)."""
    if not link.flags & IFF_UP:
        return "down"
    oper = link.operstate.upper()
    if oper == "DORMANT":
        return "dormant"
    if oper == "LOWERLAYERDOWN":
        return "lower-layer-down"
    if oper == "NOTPRESENT":
        return "not-present"
    if link.carrier == 0 or not link.flags & (IFF_LOWER_UP | IFF_RUNNING):
        return "no-carrier"
    if oper not in ("UP", "UNKNOWN"):  # UNKNOWN: drivers (tun, dummy) that never set it
        return oper.lower() or "down"
    return None


def _usable_addr(family: int, scope: int, flags: int) -> bool:
    return (
        family in (socket.AF_INET, socket.AF_INET6)
        and scope < RT_SCOPE_LINK
        and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    )


def _msg_link(msg: Any) -> _Link:
    return _Link(
        index=int(msg["index"]),
        name=str(msg.get("IFLA_IFNAME") or f"if{msg['index']}"),
        flags=int(msg["flags"]),
        operstate=str(msg.get("IFLA_OPERSTATE") or "UNKNOWN"),
        carrier=msg.get("IFLA_CARRIER"),
        mtu=int(msg.get("IFLA_MTU") or 0),
        mac=msg.get("IFLA_ADDRESS"),
    )


def _msg_route(msg: Any) -> _Route | None:
    """A default route as (family, table, metric, gateway, live nexthops); None otherwise."""
    if msg["dst_len"] != 0 or msg["type"] != RTN_UNICAST:
        return None
    table = int(msg.get("RTA_TABLE") or msg["table"])
    if table == RT_TABLE_LOCAL:
        return None
    dead = RTNH_F_DEAD | RTNH_F_LINKDOWN
    oifs: list[int] = []
    gateway = msg.get("RTA_GATEWAY")
    oif = msg.get("RTA_OIF")
    if oif is not None and not msg["flags"] & dead:
        oifs.append(int(oif))
    for nh in msg.get("RTA_MULTIPATH") or ():
        if not nh.get("flags", 0) & dead:
            oifs.append(int(nh.get("oif")))
        gateway = gateway or nh.get("RTA_GATEWAY")
    return _Route(
        family=int(msg["family"]),
        table=table,
        priority=int(msg.get("RTA_PRIORITY") or 0),
        gateway=gateway,
        oifs=tuple(oifs),
    )


# --- fallback without netlink: /proc and psutil -----------------------------------


def _proc_topology() -> _Topology:
    """The same view from /proc/net/{route,ipv6_route} and psutil, for hosts where
    netlink is unavailable (operstate is then inferred from the flags)."""
    topo = _Topology()
    index_of = _psutil_links(topo)
    _proc_routes_v4(topo, index_of)
    _proc_routes_v6(topo, index_of)
    return topo


def _psutil_links(topo: _Topology) -> dict[str, int]:
    """Links and their global addresses from psutil into ``topo``; the interface
    index of each name (``if_nametoindex``, else its place in sorted order)."""
    import psutil

    stats = psutil.net_if_stats()
    addrs = psutil.net_if_addrs()
    index_of: dict[str, int] = {}
    for i, (name, st) in enumerate(sorted(stats.items()), start=1):
        with contextlib.suppress(OSError):
            i = socket.if_nametoindex(name)
        index_of[name] = i
        flags = 0
        words = set(getattr(st, "flags", "").split(","))
        flags |= IFF_UP if "up" in words or st.isup else 0
        flags |= IFF_RUNNING if "running" in words or st.isup else 0
        flags |= IFF_LOOPBACK if "loopback" in words or name == "lo" else 0
        mac = next((a.address for a in addrs.get(name, ()) if a.family == psutil.AF_LINK), None)
        topo.links[i] = _Link(i, name, flags, "UNKNOWN", None, int(st.mtu), mac)
        for a in addrs.get(name, ()):
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if not (ip.is_link_local or ip.is_loopback):
                topo.addrs.setdefault(i, set()).add((int(a.family), str(ip)))
    return index_of


def _proc_routes_v4(topo: _Topology, index_of: Mapping[str, int]) -> None:
    """IPv4 default routes of /proc/net/route (main table) into ``topo``."""
    with contextlib.suppress(OSError), open("/proc/net/route") as f:
        for line in f.read().splitlines()[1:]:
            p = line.split()
            # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; RTF_UP = 1
            if len(p) >= 8 and p[1] == "00000000" and p[7] == "00000000" and int(p[3], 16) & 1:
                gw = socket.inet_ntop(socket.AF_INET, bytes.fromhex(p[2])[::-1])
                if p[0] in index_of:
                    topo.routes.add(
                        _Route(
                            socket.AF_INET,
                            254,
                            int(p[6]),
                            None if gw == "0.0.0.0" else gw,
                            (index_of[p[0]],),
                        )
                    )


def _proc_routes_v6(topo: _Topology, index_of: Mapping[str, int]) -> None:
    """IPv6 default routes of /proc/net/ipv6_route (not RTF_REJECT) into ``topo``."""
    with contextlib.suppress(OSError), open("/proc/net/ipv6_route") as f:
        for line in f.read().splitlines():
            p = line.split()
            # dst dst_len src src_len gateway metric refcnt use flags iface
            if len(p) >= 10 and p[1] == "00" and int(p[0], 16) == 0 and p[9] in index_of:
                rtf_reject = 0x0200
                if int(p[8], 16) & rtf_reject:
                    continue
                gw = str(ipaddress.IPv6Address(bytes.fromhex(p[4])))
                topo.routes.add(
                    _Route(
                        socket.AF_INET6,
                        254,
                        int(p[5], 16),
                        None if gw == "::" else gw,
                        (index_of[p[9]],),
                    )
                )


# --- connectivity checks --------------------------------------------------------------

HostProber = Callable[[str, float], Awaitable[bool]]


async def tcp_reachable(
    host: str, timeout_s: float, ports: Iterable[int] = TCP_FALLBACK_PORTS
) -> bool:
    """True when a TCP connect to any port gets an answer: an accepted connection
    or a reset (ECONNREFUSED) both prove the host is there and reachable."""

    async def one(port: int) -> bool:
        try:
            _r, w = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return True

    tasks = [asyncio.ensure_future(one(p)) for p in ports]
    try:
        for fut in asyncio.as_completed(tasks, timeout=timeout_s):
            if await fut:
                return True
    except (TimeoutError, asyncio.TimeoutError):
        return False
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return False


class DefaultProber:
    """ICMP echo through fastping's core; a TCP connect (53/443) where ICMP is not
    permitted, or as a late second try when the echo got no answer (ICMP is often
    filtered where TCP is not). Happy-eyeballs style: TCP starts after
    ``tcp_delay_s`` or at once when ICMP fails locally."""

    def __init__(self, tcp_delay_s: float = 0.2) -> None:
        self.tcp_delay_s = tcp_delay_s
        self.icmp_unavailable: str | None = None
        self.via: dict[str, str] = {}  # host -> "icmp" | "tcp" of its last answer

    async def _icmp(self, host: str, timeout_s: float) -> bool:
        if self.icmp_unavailable is not None:
            return False
        try:
            from . import api
        except ImportError as e:  # the core is not built: TCP only, said once
            self._no_icmp(f"fastping's ICMP core is not available ({e})")
            return False
        stop = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._echo_until_answered, api, host, timeout_s, stop
            )
        except (PermissionDenied, SocketError) as e:
            self._no_icmp(str(e))
            return False
        except FastpingError:  # e.g. ResolveError: the host is not reachable by name
            return False
        finally:
            stop.set()  # cancelled (TCP answered first, the monitor stops): end the thread

    # (interval, how long) of the echoes of one check: fast at first, because an echo
    # sent while the path is not back yet (a link that just came up, its queue not yet
    # attached; the neighbour not yet resolved) is lost without a trace, and one echo
    # per check would leave the state DOWN until the timeout: within the first second
    # an answer comes at most ~15 ms after the path works again. Then slower, to the
    # end of check_timeout: ~110 echoes in a 5 s check of a host that is really down.
    ECHO_PHASES_S: tuple[tuple[float, float], ...] = ((0.005, 0.2), (0.015, 0.8), (0.25, 3600.0))

    def _echo_until_answered(
        self, api: Any, host: str, timeout_s: float, stop: threading.Event
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        for interval_s, span_s in self.ECHO_PHASES_S:
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                return False
            span = min(span_s, left)
            pinger = api.Pinger(
                host,
                count=max(1, int(span / interval_s)),
                interval_s=interval_s,
                # the last phase waits for the last echo's reply to the deadline; the
                # earlier ones only a little past their last echo (the next phase goes on)
                timeout_s=left if span >= left else min(left, max(interval_s * 4, 0.05)),
            )
            try:
                for r in pinger:
                    if r.outcome.value == "reply":
                        return True
                    if stop.is_set():
                        return False
            finally:
                pinger.close()
        return False

    def _no_icmp(self, why: str) -> None:
        self.icmp_unavailable = why
        log.warning("ICMP checks not possible, using TCP connect to ports 53/443: %s", why)

    async def __call__(self, host: str, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        icmp: asyncio.Future[bool] = asyncio.ensure_future(self._icmp(host, timeout_s))
        tcp: asyncio.Future[bool] | None = None
        try:
            first, _ = await asyncio.wait({icmp}, timeout=min(self.tcp_delay_s, timeout_s))
            if icmp in first and icmp.result():
                self.via[host] = "icmp"
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            tcp = asyncio.ensure_future(tcp_reachable(host, remaining))
            pending: set[asyncio.Future[bool]] = {tcp} if icmp.done() else {icmp, tcp}
            while pending:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(deadline - loop.time(), 0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    return False
                for fut in done:
                    if fut.result():
                        self.via[host] = "icmp" if fut is icmp else "tcp"
                        return True
            return False
        finally:
            for f in (icmp, tcp):
                if f is not None and not f.done():
                    f.cancel()
            await asyncio.gather(*(f for f in (icmp, tcp) if f is not None), return_exceptions=True)


# --- webhook ----------------------------------------------------------------------------


def _webhook_url_problem(url: object) -> str | None:
    """What is wrong with a webhook URL, None when nothing is: checked at load, so a
    bad one fails at start, not at the first state change hours later."""
    import urllib.parse

    if not isinstance(url, str):
        return "not a string"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "it holds a space or a control character (CR, LF, NUL, ...)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as e:
        return f"malformed ({e})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or 'missing'!r} is not http or https"
    if not parts.hostname:
        return "no host"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook goes where it was configured, nowhere else: a 3xx is a failed delivery
    (urllib would otherwise follow it, and a redirect may point anywhere)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_WEBHOOK_OPENER = urllib.request.build_opener(_NoRedirect)


class _Webhook:
    """POSTs each change from one worker thread, in order, with retries; the
    monitor only appends to a list, so a slow or dead endpoint never blocks it."""

    def __init__(self, url: str, timeout_s: float, retries: int) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = math.inf
        self._thread = threading.Thread(
            target=self._run, name="fastping-netstate-webhook", daemon=True
        )
        self._thread.start()

    def post(self, doc: dict[str, Any]) -> None:
        with self._cond:
            self._pending.append(doc)
            self._cond.notify()

    def close(self, wait_s: float) -> None:
        """Deliver what is queued (retries included) for up to ``wait_s``, then give up."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + wait_s
            self._cond.notify()
        self._thread.join(wait_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                if self._closing and time.monotonic() > self._deadline:
                    # Stopped and out of time: count what is left, say so, and end.
                    self.failed += len(self._pending)
                    log.warning(
                        "webhook %s: %d notifications not delivered before stop",
                        self.url,
                        len(self._pending),
                    )
                    self._pending.clear()
                    return
                doc = self._pending.pop(0)
            self._deliver(doc)

    def _deliver(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        delay_s = 0.1
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "fastping-netstate"},
            )
            try:
                with _WEBHOOK_OPENER.open(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as e:
                err = e
            if attempt < self.retries:
                with self._cond:
                    if self._closing and time.monotonic() + delay_s > self._deadline:
                        break
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        self.failed += 1
        log.warning(
            "webhook %s: giving up on %s -> %s after %d attempts: %s",
            self.url,
            doc.get("previous"),
            doc.get("state"),
            attempt + 1,
            err,
        )


# --- subscriptions ------------------------------------------------------------------------

_CLOSED = object()


class Subscription:
    """Async iterator over every state change after subscribe(), in order.
    Ends when the monitor stops or :meth:`close` is called."""

    def __init__(self, monitor: NetworkMonitor) -> None:
        self._monitor = monitor
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # unbounded: nothing dropped
        self._closed = False

    def _put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StateChange:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            self._closed = True
            raise StopAsyncIteration
        assert isinstance(item, StateChange)  # noqa: S101 - internal invariant
        return item

    def close(self) -> None:
        self._monitor._subscribers.discard(self)
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)


# --- the monitor ---------------------------------------------------------------------------


class NetworkMonitor:
    """Watches the host's own network; see the module docstring.

    >>> async with NetworkMonitor(check_hosts=["10.0.0.1"]) as mon:   # doctest: +SKIP
    ...     await mon.wait_for_network(timeout=30)
    """

    def __init__(
        self,
        config: NetworkConfig | None = None,
        *,
        prober: HostProber | None = None,
        **overrides: Any,
    ) -> None:
        base = config or NetworkConfig()
        if overrides:
            unknown = set(overrides) - set(NetworkConfig.KEYS)
            if unknown:
                raise ConfigError(
                    f"NetworkMonitor: unknown setting(s) {', '.join(sorted(unknown))}; "
                    f"known: {', '.join(NetworkConfig.KEYS)}"
                )
            base = NetworkConfig(**{**base.model_dump(), **overrides})
        self.config = base
        self._prober: HostProber = prober or DefaultProber()
        self._state = NetworkState.UNKNOWN
        self._reason = "not started"
        self._verified = False
        self._interfaces: dict[str, str] = {}
        self._topology = _Topology()
        self._usability: _Usability | None = None
        self._checked_key: tuple[Any, ...] | None = None
        self._subscribers: set[Subscription] = set()
        self._waiters: set[asyncio.Future[NetworkState]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._running = False
        self._netlink: Any = None  # pyroute2 AsyncIPRoute bound to our groups
        self._netlink_error: str | None = None
        self._webhook: _Webhook | None = None
        self.host_results: dict[str, bool] = {}
        self.counters: dict[str, int] = {
            "netlink_messages": 0,
            "netlink_overruns": 0,
            "checks": 0,
            "changes": 0,
            "max_subscriber_backlog": 0,
        }
        self._backlog_warned = False

    # --- public read side ---
    @property
    def state(self) -> NetworkState:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def verified(self) -> bool:
        """True when the state was confirmed by probing check hosts."""
        return self._verified

    @property
    def prober(self) -> HostProber:
        return self._prober

    @property
    def netlink_active(self) -> bool:
        return self._netlink is not None

    @property
    def interfaces(self) -> dict[str, str]:
        return dict(self._interfaces)

    @property
    def is_up(self) -> UpFlag:
        """Whether the network counts as up (UP, or DEGRADED when
        ``degraded_counts_as_up``): a property like ``state`` and ``verified``, so
        ``if mon.is_up:`` means what it says; ``mon.is_up()`` still works."""
        return UpFlag(
            self._state is NetworkState.UP
            or (self._state is NetworkState.DEGRADED and self.config.degraded_counts_as_up)
        )

    def subscribe(self) -> Subscription:
        """Every change from now on, in order; registered at once (before the
        first ``await``), so no change between subscribe() and iteration is lost."""
        sub = Subscription(self)
        if not self._running:
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    async def wait_for_network(self, timeout: float | None = None) -> NetworkState:
        """Return the state as soon as it is UP (or DEGRADED when
        ``degraded_counts_as_up``); raise :class:`NetworkTimeout` after
        ``timeout`` seconds. Cancelling the caller leaves no waiter behind."""
        if self.is_up:
            return self._state
        if not self._running:
            raise MonitorNotRunning("NetworkMonitor is not running: call `await mon.start()` first")
        fut: asyncio.Future[NetworkState] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise NetworkTimeout(
                    f"network still {self._state.value} after {timeout:g} s ({self._reason}); "
                    "pass a longer timeout, or check the interface, address and default route"
                ) from None
        finally:
            self._waiters.discard(fut)
            if not fut.done():
                fut.cancel()

    def interface_stats(self) -> dict[str, InterfaceStats]:
        """Counters and flags of every interface, read now (psutil: /proc/net/dev and
        SIOCGIF* ioctls in the calling thread's network namespace)."""
        import psutil

        counters = psutil.net_io_counters(pernic=True)
        stats = psutil.net_if_stats()
        addrs = psutil.net_if_addrs()
        by_name = {lk.name: lk for lk in self._topology.links.values()}
        out: dict[str, InterfaceStats] = {}
        for name in sorted(set(stats) | set(counters)):
            st = stats.get(name)
            c = counters.get(name)
            words = set(getattr(st, "flags", "").split(",")) if st else set()
            lk = by_name.get(name)
            mac = (
                lk.mac
                if lk and lk.mac
                else next(
                    (a.address for a in addrs.get(name, ()) if a.family == psutil.AF_LINK), None
                )
            )
            out[name] = InterfaceStats(
                name=name,
                up=bool(lk.flags & IFF_UP) if lk else "up" in words,
                running=bool(lk.flags & IFF_RUNNING) if lk else "running" in words,
                operstate=lk.operstate if lk else None,
                mtu=lk.mtu if lk and lk.mtu else int(st.mtu if st else 0),
                mac=mac,
                rx_bytes=c.bytes_recv if c else 0,
                tx_bytes=c.bytes_sent if c else 0,
                rx_packets=c.packets_recv if c else 0,
                tx_packets=c.packets_sent if c else 0,
                rx_errors=c.errin if c else 0,
                tx_errors=c.errout if c else 0,
                rx_drops=c.dropin if c else 0,
                tx_drops=c.dropout if c else 0,
            )
        return out

    # --- life cycle ---
    async def __aenter__(self) -> NetworkMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Read the current interfaces and routes, subscribe to netlink, run the
        first check (bounded by ``check_timeout``) and keep watching."""
        if self._running:
            return
        self._running = True
        self._wake = asyncio.Event()
        if self.config.notify_on_change:
            self._webhook = _Webhook(
                self.config.notify_on_change,
                self.config.webhook_timeout,
                self.config.webhook_retries,
            )
        try:
            if self.config.enable_netlink and sys.platform.startswith("linux"):
                try:
                    await self._open_netlink()
                except Exception as e:  # noqa: BLE001 - any failure means: no netlink
                    self._close_netlink()
                    self._netlink_error = f"{type(e).__name__}: {e}"
            elif not self.config.enable_netlink:
                self._netlink_error = "disabled by enable_netlink: false"
            else:
                self._netlink_error = f"not available on {sys.platform}"
            if self._netlink is None:
                log.warning(
                    "netlink unavailable (%s): network state comes from periodic checks "
                    "every %gs only (interfaces from /proc, slower to notice changes)",
                    self._netlink_error,
                    self.config.check_interval,
                )
                self._topology = await asyncio.to_thread(_proc_topology)
            await self._check()
            if self._netlink is not None:
                self._tasks.append(
                    asyncio.create_task(self._netlink_loop(), name="netstate-netlink")
                )
            self._tasks.append(asyncio.create_task(self._check_loop(), name="netstate-check"))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_netlink()
        for sub in list(self._subscribers):
            sub.close()
        self._subscribers.clear()
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(MonitorNotRunning("NetworkMonitor stopped while waiting"))
        self._waiters.clear()
        if self._webhook is not None:
            hook, self._webhook = self._webhook, None
            # Give in-flight notifications a moment, without blocking the loop.
            await asyncio.to_thread(hook.close, self.config.webhook_timeout)

    # --- netlink ---
    async def _open_netlink(self) -> None:
        from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped,unused-ignore]

        events = AsyncIPRoute()
        self._netlink = events
        # Subscribe before dumping, so nothing between dump and subscription is missed.
        await events.bind(groups=NETLINK_GROUPS)
        await self._resync()

    def _close_netlink(self) -> None:
        if self._netlink is not None:
            sock, self._netlink = self._netlink, None
            with contextlib.suppress(Exception):
                sock.close()

    async def _resync(self) -> None:
        """Full dump of links, addresses and routes on a separate socket."""
        from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped,unused-ignore]

        topo = _Topology()
        async with AsyncIPRoute() as ipr:
            async for msg in await ipr.get_links():
                link = _msg_link(msg)
                topo.links[link.index] = link
            async for msg in await ipr.get_addr():
                address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                if address and _usable_addr(
                    msg["family"], msg["scope"], msg.get("IFA_FLAGS") or msg["flags"]
                ):
                    topo.addrs.setdefault(int(msg["index"]), set()).add((msg["family"], address))
            async for msg in await ipr.get_routes():
                route = _msg_route(msg)
                if route is not None and route.oifs:
                    topo.routes.add(route)
        self._topology = topo

    async def _netlink_loop(self) -> None:
        while self._running:
            sock = self._netlink
            if sock is None:
                return
            try:
                got = False
                async for msg in sock.get():
                    got = True
                    self._on_netlink(msg)
                if not got and self._netlink is None:
                    return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - degrade, never die silently
                if not (isinstance(e, OSError) and e.errno == errno.ENOBUFS):
                    self._close_netlink()
                    self._netlink_error = f"{type(e).__name__}: {e}"
                    log.warning(
                        "netlink subscription failed (%s): network state comes from periodic "
                        "checks every %gs only from now on",
                        self._netlink_error,
                        self.config.check_interval,
                    )
                    return
                # The kernel dropped events: our picture may be stale. pyroute2's
                # socket is unusable after ENOBUFS, so reopen and re-dump.
                self.counters["netlink_overruns"] += 1
                log.warning("netlink receive buffer overrun: re-reading interfaces and routes")
                self._close_netlink()
                try:
                    await self._open_netlink()
                except Exception as e2:  # noqa: BLE001
                    self._close_netlink()
                    self._netlink_error = f"reopen after overrun: {e2}"
                    log.warning(
                        "netlink unavailable (%s): periodic checks only from now on",
                        self._netlink_error,
                    )
                    return
                self._after_topology_change()

    def _on_netlink(self, msg: Any) -> None:
        self.counters["netlink_messages"] += 1
        event = msg.get("event") or ""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("netlink %s index=%s", event, msg.get("index"))
        new = event.startswith("RTM_NEW")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            self._topology.apply_link(new, _msg_link(msg))
        elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if not address:
                return
            usable = _usable_addr(msg["family"], msg["scope"], msg.get("IFA_FLAGS") or msg["flags"])
            if new and not usable:
                # e.g. DAD still running: drop it until it is confirmed.
                self._topology.apply_addr(False, int(msg["index"]), msg["family"], address)
            elif usable or not new:
                self._topology.apply_addr(new, int(msg["index"]), msg["family"], address)
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            route = _msg_route(msg)
            if route is None:
                return
            self._topology.apply_route(new, route)
        else:
            return
        self._after_topology_change()

    def _after_topology_change(self) -> None:
        u = self._topology.evaluate(self.config.preferred_ifaces)
        self._usability = u
        self._interfaces = u.interfaces
        if not u.usable:
            # No probing needed to know this: say DOWN at once.
            self._checked_key = None
            self._set_state(NetworkState.DOWN, u.reason, verified=False)
        elif u.key != self._checked_key:
            self._wake.set()  # debounced check in _check_loop

    # --- checks ---
    async def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_periodic = loop.time() + self.config.check_interval
        while self._running:
            try:
                await asyncio.wait_for(self._wake.wait(), max(next_periodic - loop.time(), 0))
                # Let the rest of the burst (link, address, routes) arrive first.
                await asyncio.sleep(self.config.debounce)
            except (TimeoutError, asyncio.TimeoutError):
                next_periodic = loop.time() + self.config.check_interval
                try:
                    if self._netlink is not None:
                        await self._resync()
                    else:
                        self._topology = await asyncio.to_thread(_proc_topology)
                except Exception as e:  # noqa: BLE001 - keep the previous picture
                    log.warning("periodic re-read of interfaces failed: %s", e)
            self._wake.clear()
            await self._check()

    async def _check(self) -> None:
        """Evaluate netlink's picture, then probe the check hosts if it is usable."""
        self.counters["checks"] += 1
        u = self._topology.evaluate(self.config.preferred_ifaces)
        self._usability = u
        self._interfaces = u.interfaces
        if not u.usable:
            self._checked_key = None
            self._set_state(NetworkState.DOWN, u.reason, verified=False)
            return
        hosts = self._expand_hosts(u.gateways)
        if not hosts:
            self._checked_key = u.key
            note = "no check hosts" if not self.config.check_hosts else "no gateway to check"
            self._set_state(NetworkState.UP, f"{u.reason} (unverified: {note})", verified=False)
            return
        timeout_s = self.config.check_timeout
        log.debug("checking %s", hosts)
        results = await asyncio.gather(*(self._probe(h, timeout_s) for h in hosts))
        log.debug("check results %s", results)
        if self._usability is not None and self._usability.key != u.key:
            # The topology changed while we probed; the next round decides.
            self._wake.set()
            return
        self.host_results = dict(zip(hosts, results, strict=True))
        self._checked_key = u.key
        ok = [h for h, r in self.host_results.items() if r]
        bad = [h for h, r in self.host_results.items() if not r]
        # say how they answered: a host that drops ICMP but accepts (or refuses) a TCP
        # connect is reachable, and not what `ping` would say
        via: dict[str, str] = getattr(self._prober, "via", {})
        by_tcp = [h for h in ok if via.get(h) == "tcp"]
        how = f" ({', '.join(by_tcp)} by TCP connect only: no ICMP echo reply)" if by_tcp else ""
        if not bad:
            self._set_state(
                NetworkState.UP,
                f"{u.reason}; all {len(ok)} check hosts answered{how}",
                verified=True,
            )
        elif ok:
            self._set_state(
                NetworkState.DEGRADED,
                f"{u.reason}; {len(ok)} of {len(hosts)} check hosts answered, "
                f"no answer from {', '.join(bad)}{how}",
                verified=True,
            )
        else:
            self._set_state(
                NetworkState.DOWN,
                f"{u.reason}, but no check host answered ({', '.join(bad)})",
                verified=True,
            )

    async def _probe(self, host: str, timeout_s: float) -> bool:
        try:
            return bool(await asyncio.wait_for(self._prober(host, timeout_s), timeout_s + 1.0))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken probe is a failed probe, said why
            log.warning("check host %s: probe failed: %s", host, e)
            return False

    def _expand_hosts(self, gateways: tuple[str, ...]) -> list[str]:
        hosts: list[str] = []
        for h in self.config.check_hosts:
            names: Iterable[str]
            if h == PRESET_PUBLIC:
                names = PUBLIC_CHECK_HOSTS
            elif h == PRESET_GATEWAY:
                names = gateways
            else:
                names = (h,)
            for n in names:
                if n not in hosts:
                    hosts.append(n)
        return hosts

    # --- state changes ---
    def _set_state(self, state: NetworkState, reason: str, *, verified: bool) -> None:
        self._reason = reason
        self._verified = verified
        if state is self._state:
            return
        change = StateChange(
            previous=self._state,
            state=state,
            reason=reason,
            time=time.time(),
            interfaces=dict(self._interfaces),
            verified=verified,
        )
        self._state = state
        self.counters["changes"] += 1
        log.info("network %s -> %s: %s", change.previous.value, state.value, reason)
        for sub in self._subscribers:
            sub._put(change)
            backlog = sub.backlog
            if backlog > self.counters["max_subscriber_backlog"]:
                self.counters["max_subscriber_backlog"] = backlog
                if backlog >= SUBSCRIBER_BACKLOG_WARN and not self._backlog_warned:
                    self._backlog_warned = True
                    log.warning(
                        "a network-state subscriber is not reading: %d changes queued", backlog
                    )
        if self.is_up:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(state)
        if self._webhook is not None:
            self._webhook.post(change.to_dict())
