"""UDP probes (UdpSocket): real UDP servers that answer (echo, DNS, NTP), closed
ports the kernel answers with ICMP port unreachable, ports nftables drops or rejects
inside namespaces the tests create, hostile answers (wrong source, wrong port,
duplicates, forged ICMP errors), v4 and v6, RTTs against a capture. Loopback and
those namespaces only."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.capture import observed_netns, percentile, tcpdump, udp_rtts

from conftest import child_env, fastping_cmd, slot_counts
from fastping import _icmp
from fastping._icmp import EV_CLOSED, EV_REPLY, EV_TIMEOUT, EV_UNREACHABLE
from privhelpers import in_netns, netns, veth_namespaces

# a namespace's kernel answers every closed port at once (per-namespace sysctls)
NO_ICMP_LIMIT = (
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv4.icmp_msgs_per_sec=1000000",
    "net.ipv4.icmp_msgs_burst=1000000",
    "net.ipv6.icmp.ratelimit=0",
)
root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, nft")

Handler = Callable[[bytes], list[bytes]]
IP_PKTINFO = 8  # <linux/in.h> (the socket module of Python 3.11 does not name it)


def _echo(data: bytes) -> list[bytes]:
    return [data]


def _dns(data: bytes) -> list[bytes]:
    """A DNS server's answer: the query's ID and question, QR and RA set, no records."""
    if len(data) < 12:
        return []
    return [data[:2] + b"\x81\x80" + data[4:6] + b"\0\0\0\0\0\0" + data[12:]]


def _dns_wrong_id(data: bytes) -> list[bytes]:
    out = _dns(data)
    return [struct.pack("!H", (struct.unpack_from("!H", d)[0] + 1) & 0xFFFF) + d[2:] for d in out]


def _ntp(data: bytes) -> list[bytes]:
    """An NTP server's reply (mode 4): the client's transmit time as its origin."""
    if len(data) < 48 or data[0] & 7 != 3:
        return []
    return [b"\x24\x02\x00\xe7" + b"\0" * 20 + data[40:48] + b"\0" * 16]


@contextmanager
def _server(
    family: int, host: str, port: int = 0, handler: Handler = _echo, reply_from: int = 0
) -> Iterator[int]:
    """A UDP server on ``host``:``port`` answering each datagram with ``handler``'s
    datagrams (``reply_from``: from another socket bound to that port, 0 = its own);
    yields its port."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, port))
    out = s
    if reply_from:
        out = socket.socket(family, socket.SOCK_DGRAM)
        out.bind((host, reply_from))
    stop = threading.Event()
    any_v4 = family == socket.AF_INET and host == "0.0.0.0"
    if any_v4:  # answer from the address asked, as a multihomed server must
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def serve() -> None:
        while not stop.is_set():
            if not select.select([s], [], [], 0.05)[0]:
                continue
            data, anc, _fl, peer = s.recvmsg(2048, 256)
            for d in handler(data):
                if any_v4:  # struct in_pktinfo: ifindex, spec_dst, addr
                    info = [c for c in anc if c[1] == IP_PKTINFO][0][2]
                    out.sendmsg([d], [(socket.IPPROTO_IP, IP_PKTINFO,
                                       bytes(4) + info[8:12] + bytes(4))], 0, peer)  # fmt: skip
                else:
                    out.sendto(d, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join()
        s.close()
        out.close()


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _odd(totals: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in totals.items() if k.startswith(("foreign", "errors", "unkeyed")) and v}


@contextmanager
def _receive_stamps_on() -> Iterator[None]:
    """The kernel stamps received packets only once some socket asked for it, and turns
    that on from a work queue (net_enable_timestamp is deferred): packets that arrive
    in the first moments after the first such socket opens carry no receive stamp, and
    the core counts them as user-timed (`rx_user`). Tests that assert every receive
    was kernel-timed hold one timestamping socket open a moment first."""
    with _icmp.UdpSocket():
        time.sleep(0.05)
        yield


@pytest.fixture(autouse=True)
def _stamps_on() -> Iterator[None]:
    with _receive_stamps_on():  # every test here counts rx_user; see above
        yield


# ------------------------------------------------------------ loopback, no privilege
@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_open_and_closed_ports_on_loopback(family: int, host: str) -> None:
    with _server(family, host) as open_port, _icmp.UdpSocket(family) as u:
        closed_port = _free_port(family, host)
        a = u.add_target(host, open_port)
        b = u.add_target(host, closed_port)
        assert (u.slot_port(a), u.slot_port(b)) == (open_port, closed_port)
        events = u.sweep(count=3, interval_s=0.05, timeout_s=1.0, events=True)
        assert {(e[0], e[1]) for e in events} == {(a, EV_REPLY), (b, EV_CLOSED)}
        for slot in (a, b):
            st = u.slot_stats(slot)
            assert slot_counts(st) == {"sent": 3, "received": 3}
            assert 0 < st.min_ns <= st.max_ns < 1e9
        assert u.slot_stats(a).last_ttl == 64  # the reply's TTL / hop limit
        assert (u.slot_closed(a), u.slot_closed(b)) == (0, 3)
        tot = u.totals()
        assert tot["received"] == 6 and tot["closed"] == 3 and tot["timeouts"] == 0
        assert not _odd(tot), tot
        # both ends of every RTT are kernel timestamps: the port unreachable's too
        assert tot["timed_kernel"] == 6 and tot["rx_user"] == 0 and tot["send_errors"] == 0


def test_a_pending_icmp_error_does_not_fail_the_next_send() -> None:
    """IP_RECVERR sets the socket's error with each ICMP error, and the next send
    fails with it once (ECONNREFUSED) whatever its destination: that probe is sent
    again, not counted as a send error. Without a drain between sends (as the
    engine sends) the error is still pending when the next send comes."""
    with _icmp.UdpSocket(window=4) as u:
        slot = u.add_target("127.0.0.1", _free_port())
        for _ in range(3):
            u.send([slot], drain=False)
        tot = u.totals()
        assert tot["sent"] == 3 and tot["send_errors"] == 0, tot
        assert tot["socket_errors"] >= 1, tot  # the consumed error, counted
        select.select([u.fileno()], [], [], 0.5)
        u.recv()
        assert u.slot_closed(slot) == 3 and u.totals()["received"] == 3


NFT_HOST_UNREACH = """
table ip fpu {
  chain in {
    type filter hook input priority 0;
    ip daddr 127.0.0.2 icmp type echo-request reject with icmp type host-unreachable
  }
}
"""


def _icmp_dgram_after_an_error() -> tuple[dict[str, int], list[int]]:
    with _icmp.IcmpSocket(kind="dgram", window=4) as s:
        bad, good = s.add_target("127.0.0.2"), s.add_target("127.0.0.1")
        errs = []
        for _ in range(3):
            for slot in (bad, good):
                errs += [e[8] for e in s.send([slot], drain=False) if e[1] == _icmp.EV_SEND_ERROR]
        select.select([s.fileno()], [], [], 0.5)
        s.recv()
        return s.totals(), errs


@root
def test_an_icmp_datagram_socket_too_sends_past_a_pending_error() -> None:
    """The same on an unprivileged ICMP socket: a host unreachable for 127.0.0.2
    failed the next echo request to 127.0.0.1 (EHOSTUNREACH, counted as its send
    error) before the retry; now every probe leaves and each outcome is its own."""
    with observed_netns("fpu", "fd00:fa::/112", sysctls=("net.ipv4.ping_group_range=0 2147483647",),
                        nft_rules=NFT_HOST_UNREACH) as ns:  # fmt: skip
        tot, errs = in_netns(ns, _icmp_dgram_after_an_error)
    assert errs == [] and tot["send_errors"] == 0 and tot["sent"] == 6, tot
    assert tot["unreachable"] == 3 and tot["received"] == 3 and tot["socket_errors"] >= 1, tot


def test_no_privilege_is_needed() -> None:
    code = (
        "import sys, json, socket; sys.path.insert(0, sys.argv[1]); from fastping import _icmp\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))\n"
        "p = s.getsockname()[1]; s.close()\n"
        "u = _icmp.UdpSocket(); u.add_target('127.0.0.1', p); u.sweep(timeout_s=1.0)\n"
        "print(json.dumps([u.slot_closed(0), u.totals()['received']]))\n"
    )
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    if os.geteuid() == 0:  # as nobody, without a capability left
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all", "python3", "-c", code, src]  # fmt: skip
    else:
        cmd = ["python3", "-c", code, src]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == [1, 1]


def test_bad_ports_and_arguments_are_refused_with_what_to_do() -> None:
    with _icmp.UdpSocket() as u:
        with pytest.raises(ValueError, match="UDP port 0 must be 1..65535"):
            u.add_target("127.0.0.1", 0)
        with pytest.raises(ValueError, match="UDP port 70000"):
            u.append_targets(["127.0.0.1"], [70000])
        with pytest.raises(ValueError, match="numeric IPv4"):
            u.add_target("localhost", 53)
        assert u.n_slots == 0
    with pytest.raises(ValueError, match="payloads must be 'auto'"):
        _icmp.UdpSocket(payloads="dns")
    with pytest.raises(ValueError, match="sport 70000"):
        _icmp.UdpSocket(sport=70000)
    with pytest.raises(ValueError, match="ttl 0"):
        _icmp.UdpSocket(ttl=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        with pytest.raises(OSError, match="bind.UDP socket"):
            _icmp.UdpSocket(sport=s.getsockname()[1])


def test_api_udp_sweep_one_result_per_port_over_workers_and_families() -> None:
    from fastping import api

    with _server(socket.AF_INET, "127.0.0.1") as port:
        closed = _free_port()
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]
        res = api.udp_sweep(hosts, [port, closed], count=2, interval_s=0.05, timeout_s=0.5,
                            workers=2, collect_rtts=True)  # fmt: skip
    assert len(res) == 2 and [len(r) for r in res] == [4, 4]
    open_res, closed_res = res
    # only 127.0.0.1 listens on ``port``: the other addresses answer it closed
    assert [(h.target, h.received, len(h.rtts_ms)) for h in open_res] == [
        ("127.0.0.1", 2, 2), ("127.0.0.2", 2, 0), ("127.0.0.3", 2, 0), ("::1", 2, 0),
    ]  # fmt: skip
    assert [(h.target, h.received, len(h.rtts_ms)) for h in closed_res] == [
        (h, 2, 0) for h in hosts
    ]
    # one sweep: the first result has its totals, the others none
    assert open_res.totals["sent"] == 16 and open_res.totals["closed"] == 14
    assert closed_res.totals["sent"] == 0 and closed_res.duration_s == 0.0
    with pytest.raises(ValueError, match="at least one UDP port"):
        api.udp_sweep(hosts, [])
    with pytest.raises(ValueError, match="udp_port 0 must be 1..65535"):
        api.udp_sweep(hosts, [0])


# ------------------------------------------------------------ services and firewalls
def _services(ns: str) -> dict[str, object]:
    """Inside ``ns``: DNS on 53, NTP on 123 (real servers, keyed answers), a DNS
    server answering with the wrong ID on 5353, v4 and v6."""
    out: dict[str, object] = {}
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with (
            _server(family, host, 53, _dns),
            _server(family, host, 123, _ntp),
            _icmp.UdpSocket(family, window=4) as u,
        ):
            for p in (53, 123):
                u.add_target(host, p)
            u.sweep(count=3, interval_s=0.02, timeout_s=0.5)
            out[host] = {
                "stats": [slot_counts(u.slot_stats(s)) for s in range(2)],
                "totals": u.totals(),
            }
            assert u.payloads == "auto"
    with _server(socket.AF_INET, "127.0.0.1", 53, _dns_wrong_id), _icmp.UdpSocket() as u:
        u.add_target("127.0.0.1", 53)
        u.sweep(count=2, interval_s=0.02, timeout_s=0.3)
        out["wrong_id"] = u.totals()
    with _server(socket.AF_INET, "127.0.0.1", 53, _dns), _icmp.UdpSocket(payloads="cookie") as u:
        # payloads="cookie": the probe header goes to 53 too; the server's answer to
        # it does not carry it, so it is an answer all the same, unkeyed
        u.add_target("127.0.0.1", 53)
        u.sweep(count=1, timeout_s=0.3)
        out["cookie_to_dns"] = u.totals()
    return out


@root
def test_dns_and_ntp_get_real_queries_and_keyed_answers() -> None:
    with netns() as ns:
        res = in_netns(ns, lambda: _services(ns))
    for host in ("127.0.0.1", "::1"):
        r = res[host]
        assert isinstance(r, dict)
        assert r["stats"] == [{"sent": 3, "received": 3}] * 2, r
        assert not _odd(r["totals"]), r["totals"]  # every answer named its probe
    wrong = res["wrong_id"]
    assert isinstance(wrong, dict)
    assert wrong["received"] == 0 and wrong["foreign_cookie"] == 2 and wrong["timeouts"] == 2
    cookie = res["cookie_to_dns"]
    assert isinstance(cookie, dict)
    assert cookie["received"] == 1 and cookie["unkeyed"] == 1


DNS_SLOTS, DNS_WINDOW = 256, 64


def _dns_window_run() -> dict[str, object]:
    """Inside a namespace: a DNS-like server on 0.0.0.0:53 that answers (with the
    query's ID, from the address asked) only every second query each target address
    receives, and keeps every ID it saw; a UdpSocket with window 64 keeps 64 queries
    of each of 256 slots in flight at once."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    srv.bind(("0.0.0.0", 53))
    srv.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    seen: dict[str, list[int]] = {}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([srv], [], [], 0.05)[0]:
                continue
            data, anc, _fl, peer = srv.recvmsg(2048, 256)
            info = [c for c in anc if c[1] == IP_PKTINFO][0][2]
            dst = socket.inet_ntoa(info[8:12])
            ids = seen.setdefault(dst, [])
            ids.append(struct.unpack_from("!H", data)[0])
            if len(ids) % 2 == 0:  # the 2nd, 4th, ... query to this address: serial 1, 3, ...
                pktinfo = bytes(4) + info[8:12] + bytes(4)  # answer from the address asked
                for d in _dns(data):
                    srv.sendmsg([d], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, peer)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        with _icmp.UdpSocket(window=DNS_WINDOW, rcvbuf_bytes=8 << 20) as u:
            addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(DNS_SLOTS)]
            slot_of = {u.add_target(a, 53): a for a in addrs}
            events = u.sweep(count=DNS_WINDOW, interval_s=0.005, timeout_s=2.0,
                             rate_pps=50_000, events=True)  # fmt: skip
            totals = u.totals()
            stats = {a: slot_counts(u.slot_stats(s)) for s, a in slot_of.items()}
            ids = {a: [_icmp.udp_payload(u.key, s, ser, 53)[:2] for ser in range(DNS_WINDOW)]
                   for s, a in slot_of.items()}  # fmt: skip
    finally:
        stop.set()
        th.join()
        srv.close()
    return {"events": [(slot_of[e[0]], e[1], e[2]) for e in events], "totals": totals,
            "stats": stats, "seen": seen, "ids": ids}  # fmt: skip


@root
def test_dns_probes_in_flight_have_distinct_ids_and_each_reply_settles_its_own() -> None:
    """Window 64 on port 53: the 64 queries of a slot in flight at once carry 64
    distinct IDs (16 random bits each collided in about 3 slots in 100 at this size:
    a reply then settled another probe), and a reply settles exactly the probe it
    answers: the server answers serials 1, 3, 5, ... of every slot, so exactly
    those are replies and 0, 2, 4, ... time out."""
    with netns() as ns:
        r = in_netns(ns, _dns_window_run)
    seen = r["seen"]
    assert isinstance(seen, dict) and isinstance(r["ids"], dict)
    assert len(seen) == DNS_SLOTS
    for addr, got in seen.items():
        assert len(got) == DNS_WINDOW and len(set(got)) == DNS_WINDOW, (addr, got)
        # in the order sent: the IDs udp_payload says each serial carries
        assert [struct.pack("!H", i) for i in got] == r["ids"][addr], addr
    by_probe: dict[tuple[str, int], list[int]] = {}
    for addr, kind, serial in r["events"]:  # type: ignore[attr-defined]
        by_probe.setdefault((addr, serial), []).append(kind)
    assert len(by_probe) == DNS_SLOTS * DNS_WINDOW
    wrong = {k: v for k, v in by_probe.items() if v != [EV_REPLY if k[1] % 2 else EV_TIMEOUT]}
    assert not wrong, sorted(wrong.items())[:10]
    t = r["totals"]
    assert isinstance(t, dict)
    half = DNS_SLOTS * DNS_WINDOW // 2
    assert (t["sent"], t["received"], t["timeouts"]) == (2 * half, half, half), t
    assert t["duplicates"] == t["late"] == t["rx_drops"] == 0, t
    assert not _odd(t), t  # every answer named its probe: nothing foreign, nothing unkeyed
    half_w = DNS_WINDOW // 2
    assert all(st == {"sent": DNS_WINDOW, "received": half_w, "timeouts": half_w}
               for st in r["stats"].values())  # type: ignore[attr-defined]  # fmt: skip


NFT_UDP = """
table inet fpu {
  chain in {
    type filter hook input priority 0;
    udp dport 1111 drop
    meta nfproto ipv4 udp dport 2222 reject with icmp type admin-prohibited
    meta nfproto ipv6 udp dport 2222 reject with icmpv6 type admin-prohibited
    meta nfproto ipv4 udp dport 4444 reject with icmp type port-unreachable
    meta nfproto ipv6 udp dport 4444 reject with icmpv6 type port-unreachable
  }
}
"""


def _firewalled() -> dict[str, object]:
    out: dict[str, object] = {}
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with _server(family, host) as port, _icmp.UdpSocket(family) as u:
            for p in (port, 1111, 2222, 4444, _free_port(family, host)):
                u.add_target(host, p)
            events = u.sweep(count=2, interval_s=0.05, timeout_s=0.5, events=True)
            out[host] = {
                "events": sorted({(e[0], e[1], e[5], e[6], e[7]) for e in events}),
                "stats": [slot_counts(u.slot_stats(s)) for s in range(5)],
                "closed": [u.slot_closed(s) for s in range(5)],
                "totals": u.totals(),
            }
    return out


@root
def test_open_filtered_unreachable_and_closed_in_a_namespace() -> None:
    with observed_netns("fpu", "fd00:fb::/112", sysctls=NO_ICMP_LIMIT, nft_rules=NFT_UDP) as ns:
        res = in_netns(ns, _firewalled)
    for host, (utype, ucode) in (("127.0.0.1", (3, 13)), ("::1", (1, 1))):
        r = res[host]
        assert isinstance(r, dict)
        assert r["events"] == [
            (0, EV_REPLY, None, None, None),
            (1, EV_TIMEOUT, None, None, None),  # dropped: open|filtered
            (2, EV_UNREACHABLE, utype, ucode, host),  # admin prohibited: unreachable
            (3, EV_CLOSED, None, None, None),  # nft's port unreachable, from the host
            (4, EV_CLOSED, None, None, None),  # the kernel's: no socket there
        ]
        stats = r["stats"]
        assert stats == [
            {"sent": 2, "received": 2},
            {"sent": 2, "timeouts": 2},
            {"sent": 2, "unreachable": 2},
            {"sent": 2, "received": 2},
            {"sent": 2, "received": 2},
        ]
        assert r["closed"] == [0, 0, 0, 2, 2]
        assert not _odd(r["totals"]), r["totals"]


# ------------------------------------------------------------ hostile answers
def _ip_packet(family: int, src: str, dst: str, proto: int, body: bytes) -> bytes:
    """An IPv4 or IPv6 header (for IPPROTO_RAW sockets) before ``body``."""
    s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    if family == socket.AF_INET6:
        return struct.pack("!IHBB", 6 << 28, len(body), proto, 64) + s + d + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0, s, d)
    return ip[:10] + struct.pack("!H", _icmp.checksum(ip)) + ip[12:] + body


def _icmp_error(family: int, src: str, dst: str, code: int, quoted: bytes) -> bytes:
    """An ICMP (v4 type 3) or ICMPv6 (type 1) destination unreachable from ``src``
    to ``dst`` quoting ``quoted``, checksummed (ICMPv6: over its pseudo-header)."""
    v6 = family == socket.AF_INET6
    body = struct.pack("!BBHI", 1 if v6 else 3, code, 0, 0) + quoted
    pseudo = b""
    if v6:
        pseudo = socket.inet_pton(family, src) + socket.inet_pton(family, dst)
        pseudo += struct.pack("!IxxxB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _icmp.checksum(pseudo + body)) + body[4:]
    return _ip_packet(family, src, dst, socket.IPPROTO_ICMPV6 if v6 else 1, body)


def _quote(family: int, us: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """The probe as an ICMP error quotes it: its IP header, UDP header, payload."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _ip_packet(family, us, dst, socket.IPPROTO_UDP, udp)


# (target, another address, a router, our own address) in the hostile namespace
HOSTILE = {
    socket.AF_INET: ("127.0.0.5", "127.0.0.6", "127.0.0.9", "127.0.0.1"),
    socket.AF_INET6: ("fd00:fc::5", "fd00:fc::6", "fd00:fc::9", "::1"),
}
PORT_UNREACH = {socket.AF_INET: 3, socket.AF_INET6: 4}


def _hostile(family: int) -> dict[str, object]:
    """A target whose real probes nft drops (port 3333), then forged answers: what
    each is counted as."""
    target, other, router, us = HOSTILE[family]
    code = PORT_UNREACH[family]
    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out: dict[str, object] = {}
    with raw, _icmp.UdpSocket(family, window=16) as u:
        slot = u.add_target(target, 3333)
        key, sport = u.key, u.sport
        serial = [0]

        def probe() -> int:
            u.send([slot])
            serial[0] += 1
            return serial[0] - 1

        def forge(what: Callable[[], None]) -> dict[str, int]:
            before = u.totals()
            what()
            select.select([u.fileno()], [], [], 0.2)
            u.recv()
            after = u.totals()
            return {k: after[k] - before[k] for k in after if after[k] != before[k]}

        def datagram(src: str, sp: int, payload: bytes) -> Callable[[], None]:
            def send() -> None:
                with socket.socket(family, socket.SOCK_DGRAM) as f:
                    f.bind((src, sp))
                    f.sendto(payload, (us, sport))

            return send

        def icmp(src: str, payload: bytes) -> Callable[[], None]:
            pkt = _icmp_error(family, src, us, code, _quote(family, us, sport, target, 3333,
                                                            payload))  # fmt: skip
            return lambda: raw.sendto(pkt, (us, 0))

        def ours(ser: int, k: bytes = key) -> bytes:
            return _icmp.udp_payload(k, slot, ser, 3333)

        s0 = probe()
        out["wrong_port"] = forge(datagram(target, 3334, ours(s0)))
        out["wrong_address"] = forge(datagram(other, 3333, ours(s0)))
        out["good"] = forge(datagram(target, 3333, ours(s0)))
        out["duplicate"] = forge(datagram(target, 3333, ours(s0)))
        probe()
        out["unsent"] = forge(datagram(target, 3333, ours(9)))
        out["unkeyed"] = forge(datagram(target, 3333, b"a service's own answer"))
        s2 = probe()
        out["icmp_not_our_probe"] = forge(icmp(target, bytes(16)))  # no cookie of ours
        out["icmp_other_key"] = forge(icmp(target, ours(s2, bytes(16))))
        out["icmp_from_a_router"] = forge(icmp(router, ours(s2)))
        s3 = probe()
        out["icmp_closed"] = forge(icmp(target, ours(s3)))
        out["icmp_again"] = forge(icmp(target, ours(s3)))
        probe()
        out["icmp_short_quote"] = forge(icmp(target, b""))
        out["stats"] = slot_counts(u.slot_stats(slot))
        out["closed"] = u.slot_closed(slot)
        out["router"] = u.slot_stats(slot).last_err_router
    return out


NFT_HOSTILE = """
table inet fpu {
  chain in {
    type filter hook input priority 0;
    udp dport 3333 drop
  }
}
"""


@root
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_forged_and_misdirected_answers_are_counted_apart(family: int) -> None:
    with observed_netns("fpu", "fd00:fc::/112", sysctls=NO_ICMP_LIMIT,
                        nft_rules=NFT_HOSTILE) as ns:  # fmt: skip
        for a in HOSTILE[socket.AF_INET6][:3]:  # v6 forgers bind to these: assigned
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{a}/128", "dev", "lo"], check=True)
        r = in_netns(ns, lambda: _hostile(family))

    def d(name: str) -> dict[str, int]:
        v = r[name]
        assert isinstance(v, dict)
        # whether a probe's TX timestamp was read before or with its answer varies
        skip = ("packets_read", "send_ns", "total_ns", "tx_stamps", "timed_kernel", "timed_user")
        return {k: n for k, n in v.items() if k not in skip}

    assert d("wrong_port") == {"foreign": 1, "foreign_source": 1}
    assert d("wrong_address") == {"foreign": 1, "foreign_source": 1}
    assert d("good") == {"received": 1, "outstanding": -1}
    assert d("duplicate") == {"duplicates": 1}
    # a valid cookie of a probe never sent (serial 9)
    assert d("unsent") == {"foreign": 1, "foreign_unsent": 1}
    # from the target's address:port but without our key: an answer, said to be unkeyed
    assert d("unkeyed") == {"received": 1, "unkeyed": 1, "outstanding": -1}
    assert d("icmp_not_our_probe") == {"errors_unattributed": 1}
    assert d("icmp_other_key") == {"errors_unattributed": 1}
    # a port unreachable from somebody else than the target: unreachable, not closed
    assert d("icmp_from_a_router") == {"unreachable": 1, "outstanding": -1}
    assert d("icmp_closed") == {"received": 1, "closed": 1, "outstanding": -1}
    assert d("icmp_again") == {"duplicates": 1}
    # a quote without the payload: the slot's oldest outstanding probe, unkeyed
    assert d("icmp_short_quote") == {"received": 1, "closed": 1, "unkeyed": 1, "outstanding": -1}
    # sent, received, dup, late, timeouts, unreachable, time exceeded, send errors
    assert r["stats"] == {"sent": 5, "received": 4, "duplicates": 2, "unreachable": 1}
    assert r["closed"] == 2 and r["router"] == HOSTILE[family][2]


# ------------------------------------------------------------ truth
def _timed_sweep(n: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    with _server(socket.AF_INET, "0.0.0.0") as port, _icmp.UdpSocket() as u:
        first = int.from_bytes(socket.inet_aton("127.3.0.1"), "big")
        u.append_range_v4(first, n, port)  # open on every 127.x address
        u.append_range_v4(first, n, port + 1 if port < 65535 else port - 1)  # closed
        events = u.sweep(count=3, interval_s=0.05, timeout_s=1.0, events=True)
        return u.sport, [(e[0], e[2], e[1], e[3]) for e in events]


@root
def test_udp_rtts_agree_with_the_wire(tmp_path: Path) -> None:
    """Each probe's RTT (open: the echo; closed: the port unreachable) against a
    nanosecond tcpdump of the same datagram and its answer."""
    n = 128
    pcap = tmp_path / "udp.pcap"
    with observed_netns("fpu", "fd00:fd::/112", sysctls=NO_ICMP_LIMIT) as ns:

        def run() -> tuple[int, list[tuple[int, int, int, int]]]:
            with tcpdump(ns, pcap, udp=True):
                return _timed_sweep(n)

        sport, events = in_netns(ns, run)
    wire = udp_rtts(pcap, sport)
    kinds = [k for _s, _q, k, _r in events]
    assert kinds.count(EV_REPLY) == 3 * n and kinds.count(EV_CLOSED) == 3 * n, kinds
    diffs = sorted(abs(rtt - wire[(slot, seq)]) for slot, seq, _k, rtt in events)
    assert percentile(diffs, 0.5) <= 5_000, diffs[len(diffs) // 2]
    assert percentile(diffs, 0.99) <= 20_000, diffs[-5:]


# ------------------------------------------------------------ the command
def test_sweep_command_udp_ports_text_json_and_urls() -> None:
    with _server(socket.AF_INET, "127.0.0.1") as port, _server(socket.AF_INET6, "::1") as port6:
        closed = _free_port()
        r = subprocess.run(
            fastping_cmd("sweep", "--udp", "-p", f"{port},{closed}", "127.0.0.1"),
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        assert r.returncode == 1, r.stderr  # not every pair open
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"127.0.0.1:{port} is open (")
        assert lines[1].startswith(f"127.0.0.1:{closed} is closed (")
        assert "1 open" in r.stderr and "2 host:port pairs" in r.stderr
        assert "1 of them ICMP port unreachable" in r.stderr
        r = subprocess.run(
            fastping_cmd("sweep", f"udp://[::1]:{port6}", f"udp://127.0.0.1:{port}", "--json"),
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert {(x["address"], x["port"], x["state"]) for x in rows} == {
            ("::1", port6, "open"),
            ("127.0.0.1", port, "open"),
        }
        r = subprocess.run(
            fastping_cmd("sweep", "--udp", "--port", f"{closed},{port}", "127.0.0.1", "-a"),
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        assert r.stdout.splitlines() == [f"127.0.0.1:{port}"]


def test_sweep_udp_host_port_targets_keep_their_port() -> None:
    """Prometheus-style HOST:PORT ([v6]:PORT) targets with --udp: each on its own port,
    beside a portless target on every --port."""
    with _server(socket.AF_INET, "127.0.0.1") as port, _server(socket.AF_INET6, "::1") as p6:
        closed = _free_port()
        r = subprocess.run(
            fastping_cmd("sweep", "--udp", "-p", str(closed), f"127.0.0.1:{port}",
                         f"[::1]:{p6}", "127.0.0.1", "--json"),
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
    assert r.returncode == 1, r.stderr  # one pair closed
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {(x["target"], x["address"], x["port"], x["state"]) for x in rows} == {
        (f"127.0.0.1:{port}", "127.0.0.1", port, "open"), (f"[::1]:{p6}", "::1", p6, "open"),
        (f"127.0.0.1:{closed}", "127.0.0.1", closed, "closed"),
    }  # fmt: skip
    # a name on a port: its JSON target carries the port too
    with _server(socket.AF_INET, "127.0.0.1") as port:
        r = subprocess.run(
            fastping_cmd("sweep", "--udp", "-p", str(port), "localhost", "-4", "--json"),
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert (row["target"], row["address"], row["port"], row["state"]) == (
        f"localhost:{port}", "127.0.0.1", port, "open",
    )  # fmt: skip


NO_NET_RAW = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]


def _ping(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [
        *(NO_NET_RAW if unprivileged and os.geteuid() == 0 else []),
        *fastping_cmd("ping", *args),
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=60)


@pytest.mark.parametrize(
    ("family", "host", "url"),
    [(socket.AF_INET, "127.0.0.1", "udp://127.0.0.1"), (socket.AF_INET6, "::1", "udp://[::1]")],
)
def test_ping_udp_open_and_closed_on_loopback(family: int, host: str, url: str) -> None:
    """``fastping ping udp://HOST:PORT``, no privilege (CAP_NET_RAW dropped when run
    as root): a real echo server's port answers (open, with RTTs), a port nobody has
    is closed (the kernel's ICMP port unreachable, with RTTs too); text and JSON."""
    with _server(family, host) as port:
        closed = _free_port(family, host)
        r = _ping(f"{url}:{port}", "-c", "3", "-i", "0.05", unprivileged=True)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"PING {host} ({host}) UDP port {port}"
        for seq, ln in enumerate(lines[1:4]):
            assert ln.startswith(f"open {host} port {port}: udp_seq={seq} rtt="), ln
        assert lines[4] == f"--- {host} port {port} udp ping statistics ---"
        assert lines[5] == "3 probes sent, 3 answers (3 open, 0 closed), 0.0% loss"
        assert lines[6].startswith("rtt min/avg/max/stddev/jitter = ")
        # the same with --udp -p, in JSON: one object per probe, then the summary
        r = _ping("--udp", "-p", str(port), host, "-c", "2", "-i", "0.05", "--json",
                  unprivileged=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["target"], x["outcome"], x["state"], x["port"]) for x in rows[:2]] == [
            (f"{host}:{port}" if ":" not in host else f"[{host}]:{port}", "reply", "open", port)
        ] * 2
        assert rows[2]["target"] == rows[0]["target"] and rows[2]["port"] == port
        assert all(x["rtt_ms"] > 0 for x in rows[:2])
        assert (rows[2]["sent"], rows[2]["received"], rows[2]["open"], rows[2]["closed"]) == (
            2, 2, 2, 0,
        )  # fmt: skip
        # the closed port: ICMP port unreachable, an answer with an RTT; exit 1 (not open)
        r = _ping(f"{url}:{closed}", "-c", "3", "-i", "0.05", unprivileged=True)
        assert r.returncode == 1, r.stderr
        lines = r.stdout.splitlines()
        for seq, ln in enumerate(lines[1:4]):
            assert ln.startswith(f"closed {host} port {closed}: udp_seq={seq} rtt="), ln
        assert lines[5] == "3 probes sent, 3 answers (0 open, 3 closed), 0.0% loss"
        r = _ping(f"{url}:{closed}", "-c", "2", "-i", "0.05", "--json", unprivileged=True)
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["outcome"], x["state"]) for x in rows[:2]] == [("closed", "closed")] * 2
        assert (rows[2]["closed"], rows[2]["open"], rows[2]["timeouts"]) == (2, 0, 0)


@root
def test_ping_udp_silence_is_open_filtered() -> None:
    """A port nft drops (inside a namespace the test makes): no answer, said as
    open|filtered; exit 1."""
    with netns() as ns:
        subprocess.run(["ip", "netns", "exec", ns, "nft", _drop_range(1100, 1100)], check=True)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *fastping_cmd(
                "ping", "udp://127.0.0.1:1100", "-c", "2", "-i", "0.05", "-t", "0.2")],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1:3] == [
        f"no answer from 127.0.0.1 port 1100: udp_seq={i} (open|filtered: timeout after 0.2 s)"
        for i in range(2)
    ]
    assert lines[4] == "2 probes sent, 0 answers (0 open, 0 closed), 100.0% loss, 2 open|filtered"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["udp://127.0.0.1"], "write udp://HOST:PORT"),
        (["udp://127.0.0.1:0"], "port 1..65535"),
        (["udp://127.0.0.1:53", "-p", "53"], "names its port: drop -p/--port 53"),
        (["udp://127.0.0.1:53", "--tcp"], "is a UDP target: drop --tcp"),
        (["--udp", "127.0.0.1"], "--udp needs the port to probe"),
        (["--udp", "--tcp", "-p", "53", "127.0.0.1"], "one kind at a time"),
        (["udp://127.0.0.1:53", "--mode", "raw"], "--mode raw does not apply"),
        (["udp://127.0.0.0/30:53"], "ping takes one host"),
    ],
)
def test_ping_udp_refuses_bad_input_saying_what_to_write(args: list[str], message: str) -> None:
    r = _ping(*args)
    assert r.returncode != 0 and message in r.stderr, (r.returncode, r.stderr)


def _drop_range(lo: int, hi: int) -> str:
    return (
        "table ip fpu {\n chain in {\n  type filter hook input priority 0;\n"
        f"  udp dport {lo}-{hi} drop\n }}\n}}\n"
    )


@root
def test_silence_is_said_as_open_filtered_and_the_ports_share_one_timeout() -> None:
    with observed_netns("fpu", "fd00:fe::/112", nft_rules=_drop_range(1100, 1139)) as ns:

        def sweep(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ip", "netns", "exec", ns, *fastping_cmd("sweep", *args)],
                capture_output=True, text=True, env=child_env(), timeout=60,
            )  # fmt: skip

        r = sweep("--udp", "-p", "1111", "127.0.0.1", "-t", "0.3")
        assert r.stdout == "127.0.0.1:1111 is open|filtered\n", r.stdout
        row = json.loads(sweep("udp://127.0.0.1:1111", "-t", "0.3", "--json").stdout)
        assert row["state"] == "open|filtered" and row["timeouts"] == 1
        # 40 dropped ports and 2 closed, on 2 hosts, 2 rounds: one sweep, so one
        # timeout for them all (1 s), not one per port (40 s)
        r = sweep("--udp", "-p", "1100-1139,2000,2001", "127.0.0.1", "127.0.0.2", "-t", "1",
                  "--json", "-s", "-c", "2", "--period", "0.1")  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["target"], x["state"], x["sent"]) for x in rows] == [
        (f"127.0.0.{h}:{p}", "closed" if p >= 2000 else "open|filtered", 2)
        for p in [*range(1100, 1140), 2000, 2001]
        for h in (1, 2)
    ]
    summary = json.loads(r.stderr.splitlines()[-1])
    assert summary["targets"] == 84 and summary["sent"] == 168 and summary["closed"] == 8
    assert summary["timeouts"] == 160 and summary["ports"] == [*range(1100, 1140), 2000, 2001]
    assert summary["duration_s"] < 5, summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--udp", "127.0.0.1"], "--udp needs the ports to probe"),
        (["--udp", "-p", "80-70", "127.0.0.1"], "within 1..65535, low to high"),
        (["udp://127.0.0.1"], "write udp://HOST:PORT"),
        (["udp://127.0.0.1:0"], "port 1..65535"),
        (["--udp", "--tcp", "-p", "53", "127.0.0.1"], "sweep one at a time"),
        (["udp://127.0.0.1:53", "tcp://127.0.0.1:22"], "sweep one at a time"),
        (["--udp", "-p", "53", "--mode", "raw", "127.0.0.1"], "--mode raw does not apply"),
        (["--port", "53", "127.0.0.1"], "add --tcp or --udp"),
        (["--udp", "-p", "53", "-b", "100", "127.0.0.1"], "UDP probes carry a payload"),
    ],
)
def test_sweep_command_refuses_bad_udp_input_saying_what_to_write(
    args: list[str], message: str
) -> None:
    r = subprocess.run(
        fastping_cmd("sweep", *args), capture_output=True, text=True, env=child_env()
    )
    assert r.returncode == 3 and message in r.stderr, r.stderr


# ------------------------------------------------------------ a host's ICMP rate limit
def _sweep_closed(prober: str, n: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", prober, *fastping_cmd(
            "sweep", "--udp", "-p", f"1001-{1000 + n}", "10.77.0.1", "--rate", "0",
            "-t", "0.2", "-q", *extra)],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip


@root
def test_a_hosts_icmp_rate_limit_makes_closed_ports_look_open_filtered() -> None:
    """Across a veth pair the target's kernel rate-limits its port unreachables (per
    peer: net.ipv4.icmp_ratelimit, a burst of 6 then 1 a second; loopback is exempt):
    most closed ports go silent, and the summary says why. Lifted, every one is
    answered."""
    n = 40
    with veth_namespaces() as (prober, target):
        text = _sweep_closed(prober, n).stdout
        limited = json.loads(_sweep_closed(prober, n, "--json").stdout)
        for kv in NO_ICMP_LIMIT:
            subprocess.run(["ip", "netns", "exec", target, "sysctl", "-qw", kv], check=True)
        lifted = json.loads(_sweep_closed(prober, n, "--json").stdout)
    assert limited["closed"] <= n // 2 and limited["closed"] + limited["timeouts"] == n, limited
    assert "ICMP rate limit makes closed ports" in text, text
    assert lifted["closed"] == n and lifted["timeouts"] == 0, lifted


# ------------------------------------------------------------ scale
@root
def test_a_sweep_of_65536_closed_pairs_answers_every_one() -> None:
    """256 addresses x 256 ports, every one closed, in a namespace whose kernel
    answers each with a port unreachable: every pair is said closed, and the
    counters add up (sent = answered + timed out; nothing lost unsaid)."""
    with observed_netns("fpu", "fd00:ff::/112", sysctls=NO_ICMP_LIMIT) as ns:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *fastping_cmd(
                "sweep", "--udp", "-p", "1-256", "127.2.0.0/24", "--rate", "0", "-t", "2",
                "--json", "-q")],
            capture_output=True, text=True, env=child_env(), timeout=300,
        )  # fmt: skip
    assert r.returncode == 1, r.stderr  # none open
    s = json.loads(r.stdout)
    assert s["targets"] == 65536 and s["alive"] == 0, s
    assert s["sent"] == 65536 and s["received"] == 65536 and s["closed"] == 65536, s
    assert s["sent"] == s["received"] + s["timeouts"] + s["unreachable"], s
    assert s["timeouts"] == 0 and s["send_errors"] == 0 and s["rx_drops"] == 0, s
    assert s["foreign"] == 0 and s["errors_unattributed"] == 0 and s["unkeyed"] == 0, s
    assert s["timed_kernel"] == 65536, s
