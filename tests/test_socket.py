"""IcmpSocket on real raw sockets against loopback (and namespaces for errors)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest

import fastping
from conftest import child_env, fastping_cmd, needs_root
from fastping import _icmp, _icmp_py
from fastping._icmp import (
    EV_DUPLICATE,
    EV_LATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
    IcmpSocket,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
pytestmark = needs_root


def test_bad_socket_options() -> None:
    with pytest.raises(ValueError, match="payload_size"):
        IcmpSocket(V4, payload_size=8)
    with pytest.raises(ValueError, match="kind"):
        IcmpSocket(V4, kind="stream")
    with pytest.raises(ValueError, match="ttl"):
        IcmpSocket(V4, ttl=0)
    with pytest.raises(ValueError, match="family"):
        IcmpSocket(12345)
    with IcmpSocket(V4) as s, pytest.raises(ValueError, match="not a numeric IPv4"):
        s.add_target("example.com")


def test_closed_socket_refuses_io() -> None:
    s = IcmpSocket(V4)
    s.add_target("127.0.0.1")
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(ValueError, match="closed"):
        s.send([0])


def test_65536_loopback_targets_every_reply() -> None:
    res = fastping.sweep("127.1.0.0/16", rate_pps=0, timeout_s=2.0)
    assert len(res) == 65536
    assert res.received == 65536 and res.sent == 65536
    assert res.totals["rx_drops"] == 0 and res.totals["late"] == 0
    assert res.totals["duplicates"] == 0 and res.totals["foreign"] == 0
    first, last = res[0], res[-1]
    assert first.address == "127.1.0.0" and last.address == "127.1.255.255"
    assert all(h.received == 1 and h.min_ms is not None for h in res[:1000])


def test_ipv6_loopback_and_mixed_order() -> None:
    res = fastping.sweep(["::1", "127.0.0.1", "::1"], rate_pps=0, count=2, interval_s=0.01)
    assert [h.target for h in res] == ["::1", "127.0.0.1", "::1"]
    assert all(h.sent == 2 and h.received == 2 for h in res)
    assert res[0].ttl == 64 and res[1].ttl == 64


def test_ping_collects_rtts_and_stats() -> None:
    h = fastping.ping("127.0.0.1", count=5, interval_s=0.01)
    assert h.sent == 5 and h.received == 5 and len(h.rtts_ms) == 5
    assert h.min_ms <= h.avg_ms <= h.max_ms
    assert h.min_ms == pytest.approx(min(h.rtts_ms), abs=1e-6)
    assert h.jitter_ms is not None and h.stddev_ms is not None


def test_unresolvable_name_is_a_result() -> None:
    res = fastping.sweep(["127.0.0.1", "no-such-host.invalid"], rate_pps=0)
    assert res[0].received == 1
    assert res[1].address is None and "cannot resolve" in res[1].error
    assert res.totals["unresolved"] == 1


def test_rate_limit_is_respected() -> None:
    n, rate = 400, 2000.0
    t0 = time.perf_counter()
    res = fastping.sweep(f"127.3.0.0-127.3.{(n - 1) // 256}.{(n - 1) % 256}", rate_pps=rate)
    elapsed = res.totals["send_ns"] / 1e9
    assert res.received == n
    # n probes at 2000/s take ~0.2 s; never much faster than the rate allows
    assert elapsed >= (n - 1) / rate * 0.95
    assert time.perf_counter() - t0 < 5


def _forge_reply(src_sock: socket.socket, dst: str, ident: int, seq: int, payload: bytes) -> None:
    pkt = bytearray(_icmp_py.build_echo_request(V4, ident, seq, payload))
    pkt[0] = 0
    pkt[2:4] = b"\0\0"
    pkt[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(pkt)))
    src_sock.sendto(bytes(pkt), (dst, 0))


def test_forged_duplicate_late_and_foreign_packets_are_counted_apart() -> None:
    with (
        IcmpSocket(V4, window=2) as s,
        socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw,
    ):
        slot = s.add_target("127.0.0.1")
        evs = s.send([slot])  # send drains after each batch: on loopback the reply is there
        time.sleep(0.05)
        evs += s.recv()
        assert [e[1] for e in evs] == [EV_REPLY]
        good = _icmp.build_probe_payload(slot, 0, s.key, s.payload_size)
        # the same reply again: a duplicate, not a second answer
        _forge_reply(raw, "127.0.0.1", s.ident, 0, good)
        # a valid cookie for a probe never sent, a forged cookie, a foreign identifier
        _forge_reply(raw, "127.0.0.1", s.ident, 5, _icmp.build_probe_payload(slot, 5, s.key, 56))
        bad = bytearray(good)
        bad[12] ^= 0xFF
        _forge_reply(raw, "127.0.0.1", s.ident, 0, bytes(bad))
        _forge_reply(raw, "127.0.0.1", (s.ident + 1) & 0xFFFF, 0, good)
        # truncated: too short to carry the probe header
        _forge_reply(raw, "127.0.0.1", s.ident, 0, good[:10])
        time.sleep(0.05)
        evs = s.recv()
        assert [e[1] for e in evs] == [EV_DUPLICATE]
        t = s.totals()
        assert t["received"] == 1 and t["duplicates"] == 1
        # BPF drops the foreign identifier in the kernel; the others reach us and are refused
        assert t["foreign"] == 3
        # a reply arriving after its probe timed out is late, never an answer
        s.send([slot], drain=False)
        tmo = s.expire(0.0)
        assert [e[1] for e in tmo] == [EV_TIMEOUT]
        time.sleep(0.05)
        assert [e[1] for e in s.recv()] == [EV_LATE]
        t = s.totals()
        assert (t["received"], t["timeouts"], t["late"]) == (1, 1, 1)


def test_wrong_source_address_is_not_a_reply() -> None:
    with IcmpSocket(V4) as s, socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        slot = s.add_target("127.0.0.7")
        s.send([slot])
        time.sleep(0.05)
        s.recv()
        s.reset_stats()
        # a valid cookie for slot 0 but coming from 127.0.0.1 (the kernel picks
        # the source of a packet sent to 127.0.0.1)
        s2 = s.add_target("127.0.0.8")
        kinds = [e[1] for e in s.send([s2], drain=False)]
        _forge_reply(raw, "127.0.0.1", s.ident, 0, _icmp.build_probe_payload(s2, 0, s.key, 56))
        time.sleep(0.05)
        kinds += [e[1] for e in s.recv()]
        assert kinds == [EV_REPLY]  # only 127.0.0.8's real reply
        assert s.totals()["foreign"] == 1


def test_removed_target_replies_are_stale() -> None:
    with IcmpSocket(V4) as s:
        a = s.add_target("127.0.0.1")
        s.send([a], drain=False)
        s.remove_target(a)
        time.sleep(0.05)
        assert s.recv() == []
        assert s.totals()["stale"] == 1
        b = s.add_target("127.0.0.2")
        assert b == a  # the freed slot is reused
        with pytest.raises(KeyError):
            s.remove_target(99)


def test_two_processes_each_see_only_their_own_replies() -> None:
    code = (
        "import fastping, json;"
        "r = fastping.sweep('{blk}', rate_pps=0, timeout_s=2);"
        "print(json.dumps(dict(r.totals)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code.format(blk=blk)],
            stdout=subprocess.PIPE,
            env=child_env(),
            text=True,
        )
        for blk in ("127.4.0.0/17", "127.5.0.0/17")
    ]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    for t in outs:
        assert t["received"] == 32768 and t["sent"] == 32768
        # the BPF filter keeps the other process's replies out of our socket
        assert t["foreign"] == 0 and t["packets_read"] == 32768, {k: v for k, v in t.items() if v}


def test_ttl_option_and_time_exceeded_attributed(netns) -> None:  # type: ignore[no-untyped-def]
    # 10.201.9.9 lies beyond the router; with TTL 1 the router answers time exceeded
    # the router rejects 10.201.8.0/24 with host unreachable
    netns.reject_beyond_router("10.201.8.0/24")
    netns.exec_r("ip", "route", "add", "10.201.9.0/24", "via", "10.201.0.2")

    def sweep(*args: str) -> tuple[int, dict[str, dict]]:  # type: ignore[type-arg]
        out = netns.exec_h(
            *fastping_cmd("sweep", "--json", "--rate", "0", "--timeout", "0.5", *args), check=False
        )
        rows = {json.loads(x)["target"]: json.loads(x) for x in out.stdout.splitlines()}
        return out.returncode, rows

    # TTL 1: the router answers time exceeded (before its forward hook runs)
    rc, rows = sweep("--ttl", "1", "10.201.9.9")
    assert rc == 1
    assert rows["10.201.9.9"]["time_exceeded"] == 1 and rows["10.201.9.9"]["received"] == 0
    assert "time exceeded" in rows["10.201.9.9"]["error"]
    assert "from 10.201.0.1" in rows["10.201.9.9"]["error"]
    rc, rows = sweep("10.201.8.8", "10.201.0.1")
    assert rc == 1
    assert rows["10.201.8.8"]["unreachable"] == 1 and rows["10.201.8.8"]["timeouts"] == 0
    assert "type 3 code 1" in rows["10.201.8.8"]["error"]
    assert rows["10.201.0.1"]["received"] == 1


def test_send_error_is_counted_not_loss(netns) -> None:  # type: ignore[no-untyped-def]
    # no route to 10.202.0.0/16 from the host once its default route is gone
    netns.exec_h("ip", "route", "del", "default")
    out = netns.exec_h(
        *fastping_cmd("sweep", "--json", "--rate", "0", "--timeout", "0.3", "10.202.0.1"),
        check=False,
    )
    row = json.loads(out.stdout.splitlines()[0])
    assert row["send_errors"] == 1 and row["received"] == 0 and row["timeouts"] == 0


def test_events_for_the_engine_api() -> None:
    with IcmpSocket(V6) as s:
        a = s.add_target("::1")
        # window 1: the second probe to the same slot retires the first as a timeout
        evs = s.send([a, a], drain=False)
        time.sleep(0.05)
        evs += s.recv()
        kinds = sorted(e[1] for e in evs)
        assert kinds == [EV_REPLY, EV_TIMEOUT, EV_LATE] or kinds == sorted(
            [EV_REPLY, EV_TIMEOUT, EV_LATE]
        )
        assert s.totals()["received"] == 1
    assert EV_SEND_ERROR == 4 and EV_UNREACHABLE == 2 and EV_TIME_EXCEEDED == 3


def test_workers_give_identical_per_target_results() -> None:
    one = fastping.sweep("127.1.0.0/16", rate_pps=0, workers=1, timeout_s=2.0)
    two = fastping.sweep("127.1.0.0/16", rate_pps=0, workers=2, timeout_s=2.0)
    assert two.totals["workers"] == 2 and one.totals["workers"] == 1
    assert one.received == two.received == 65536
    # no reply counted twice or by the wrong worker: every target exactly once
    assert sum(h.received for h in two) == 65536
    assert all(h.received == 1 and h.duplicates == 0 for h in two)
    assert [h.address for h in one] == [h.address for h in two]
    assert two.totals["foreign"] == 0 and two.totals["stale"] == 0


def test_workers_share_one_global_rate_budget() -> None:
    n, rate = 16384, 20000.0
    res = fastping.sweep(f"127.7.0.0/{32 - (n - 1).bit_length()}", rate_pps=rate, workers=2)
    assert res.received == n
    achieved = n / (res.totals["send_window_ns"] / 1e9)
    # the sum of both workers stays within 5% of the one budget (not 2x it)
    assert achieved == pytest.approx(rate, rel=0.05)


def test_workers_mixed_families_and_rtts() -> None:
    r = fastping.sweep(
        ["::1", "127.0.0.1", "127.0.0.2-9"],
        rate_pps=0,
        workers=3,
        count=2,
        interval_s=0.01,
        collect_rtts=True,
    )
    assert [h.target for h in r][:3] == ["::1", "127.0.0.1", "127.0.0.2"]
    assert all(h.received == 2 and len(h.rtts_ms) == 2 for h in r)


def test_async_twins_do_not_block_the_loop() -> None:
    import asyncio

    async def main() -> tuple[object, object, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        res, h = await asyncio.gather(
            fastping.async_sweep(["127.0.0.1", "::1"], rate_pps=0, count=3, interval_s=0.05),
            fastping.async_ping("127.0.0.1", count=3, interval_s=0.05),
        )
        t.cancel()
        return res, h, ticks

    res, h, ticks = asyncio.run(main())
    assert [x.received for x in res] == [3, 3]  # type: ignore[attr-defined]
    assert h.received == 3 and len(h.rtts_ms) == 3  # type: ignore[attr-defined]
    assert ticks >= 10  # the loop kept running while the sweeps waited between rounds


def test_progress_callback_sees_the_sweep_advance() -> None:
    seen: list[tuple[int, int, int]] = []
    res = fastping.sweep("127.8.0.0/18", rate_pps=40000, workers=2,
                         on_progress=lambda s, t, r: seen.append((s, t, r)))  # fmt: skip
    assert res.received == 16384
    assert seen[-1] == (16384, 16384, 16384)  # the final call: everything sent and answered
    assert len(seen) >= 2  # ~0.4 s at 40,000/s: at least one call while sweeping
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))  # never goes back


def test_reply_with_a_sequence_number_not_its_probes_is_not_a_reply() -> None:
    """A reply carrying the right cookie for serial 0 but sequence number 7 (altered
    in flight, or spliced by an attacker) is foreign, never a reply or a duplicate."""
    with IcmpSocket(V4) as s, socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        slot = s.add_target("127.0.0.1")
        evs = s.send([slot])
        good = _icmp.build_probe_payload(slot, 0, s.key, s.payload_size)
        _forge_reply(raw, "127.0.0.1", s.ident, 7, good)
        time.sleep(0.05)
        evs += s.recv()
        assert [e[1] for e in evs] == [EV_REPLY]
        t = s.totals()
        assert (t["received"], t["duplicates"], t["foreign_seq"]) == (1, 0, 1)


def _forge_unreachable(
    raw: socket.socket, probe_dst: str, ident: int, seq: int, payload: bytes
) -> None:
    """Destination unreachable (type 3 code 1) quoting our echo request to probe_dst,
    sent to us from 127.0.0.1 as a router would."""
    echo = _icmp_py.build_echo_request(V4, ident, seq, payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(echo), 0, 0, 64, socket.IPPROTO_ICMP, 0,
        socket.inet_aton("127.0.0.1"), socket.inet_aton(probe_dst),
    )  # fmt: skip
    err = bytearray(struct.pack("!BBHI", 3, 1, 0, 0) + ip + echo)
    err[2:4] = struct.pack("!H", _icmp_py.checksum(bytes(err)))
    raw.sendto(bytes(err), ("127.0.0.1", 0))


def test_valid_reply_after_an_icmp_error_is_the_outcome() -> None:
    """Unreachable first, then the real reply for the same probe: the reply counts
    (fping counts 3/3 there), the error stays an event and is no longer final. The
    namespace's kernel does not answer echoes, so both packets are the test's."""
    from tests.privhelpers import in_netns, netns

    def body() -> tuple[list[int], dict[str, int], tuple[int, ...]]:
        subprocess.run(["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"], check=True)
        with (
            IcmpSocket(V4) as s,
            socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw,
        ):
            raw.bind(("127.0.0.5", 0))  # its replies come from the target's address
            slot = s.add_target("127.0.0.5")
            kinds = [e[1] for e in s.send([slot])]
            good = _icmp.build_probe_payload(slot, 0, s.key, s.payload_size)
            _forge_unreachable(raw, "127.0.0.5", s.ident, 0, good)
            time.sleep(0.05)
            kinds += [e[1] for e in s.recv()]
            _forge_reply(raw, "127.0.0.5", s.ident, 0, good)
            time.sleep(0.05)
            kinds += [e[1] for e in s.recv()]
            # and one more copy: now a duplicate
            _forge_reply(raw, "127.0.0.5", s.ident, 0, good)
            time.sleep(0.05)
            kinds += [e[1] for e in s.recv()]
            return kinds, s.totals(), s.slot_stats(slot)

    with netns() as ns:
        kinds, t, st = in_netns(ns, body)
    assert kinds == [EV_UNREACHABLE, EV_REPLY, EV_DUPLICATE]
    assert (t["received"], t["unreachable"], t["duplicates"], t["outstanding"]) == (1, 0, 1, 0)
    assert (st.sent, st.received, st.unreachable) == (1, 1, 0)


def test_icmp_error_quoting_only_8_bytes_is_attributed() -> None:
    """Many routers quote only the RFC 792 minimum (IP header + 8 bytes): no room for
    the cookie. Such an error is attributed by identifier, sequence number and quoted
    destination to the probe still outstanding, and reported as unreachable; one that
    names no outstanding probe (wrong sequence, wrong destination) is not."""
    from tests.privhelpers import in_netns, netns

    def body() -> tuple[list[int], dict[str, int], tuple[int, ...]]:
        subprocess.run(["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"], check=True)
        with (
            IcmpSocket(V4) as s,
            socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw,
        ):
            s.set_targets(["127.0.0.4", "127.0.0.5", "127.0.0.6"])
            kinds = [e[1] for e in s.send([0, 1, 2])]
            minimal = b""  # the quoted echo request ends after its 8-byte header
            _forge_unreachable(raw, "127.0.0.5", s.ident, 1, minimal)  # seq 1: never sent
            _forge_unreachable(raw, "127.0.0.9", s.ident, 0, minimal)  # not a target
            _forge_unreachable(raw, "127.0.0.5", s.ident, 0, minimal)  # slot 1's probe
            time.sleep(0.05)
            kinds += [e[1] for e in s.recv()]
            return kinds, s.totals(), s.slot_stats(1)

    with netns() as ns:
        kinds, t, st = in_netns(ns, body)
    assert kinds == [EV_UNREACHABLE]
    assert (t["unreachable"], t["errors_unattributed"], t["outstanding"]) == (1, 2, 2)
    assert st.unreachable == 1
    assert (st.last_err_type, st.last_err_code, st.last_err_router) == (3, 1, "127.0.0.1")


def test_ping_counts_a_late_duplicate_of_its_last_probe() -> None:
    """A copy of the last probe's reply arriving 50 ms after it (within its window) is
    counted as a duplicate: ping does not stop at the last reply. The namespace's
    kernel answers the echoes; the copy is the test's."""
    import threading

    from tests.privhelpers import in_netns, netns

    from fastping.api import Pinger
    from fastping.results import Outcome

    def body() -> tuple[list[Outcome], int, int]:
        p = Pinger("127.0.0.6", count=2, interval_s=0.2, timeout_s=1.0)
        got: list[Outcome] = []
        raw = socket.socket(V4, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw.bind(("127.0.0.6", 0))
        try:
            for r in p:
                got.append(r.outcome)
                if r.outcome is Outcome.REPLY and r.seq == 1:
                    sock = p._sock
                    payload = _icmp.build_probe_payload(p._slot, 1, sock.key, sock.payload_size)
                    threading.Timer(
                        0.05, _forge_reply, (raw, "127.0.0.6", sock.ident, 1, payload)
                    ).start()
            st = p.stats()
            return got, st.received, st.duplicates
        finally:
            raw.close()

    with netns() as ns:
        got, received, dups = in_netns(ns, body)
    assert got == [Outcome.REPLY, Outcome.REPLY, Outcome.DUPLICATE]
    assert (received, dups) == (2, 1)


def test_close_from_another_thread_stops_a_sweep_without_pulling_the_fd() -> None:
    """close() while a paced sweep runs with the GIL released: the sweep stops at its
    next batch and returns what it has, the socket is closed as it returns; another
    thread's I/O on the busy socket is refused rather than run beside it."""
    import threading

    n = 2000
    s = IcmpSocket(V4)
    s.append_packed(b"".join(socket.inet_aton(f"127.9.8.{i % 250}") for i in range(n)))
    box: dict[str, object] = {}

    def run() -> None:
        t = time.monotonic()
        s.sweep(count=1, timeout_s=0.5, rate_pps=1000.0)  # 2 s of sending when let be
        box["took"] = time.monotonic() - t

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.3)
    try:
        s.recv()
        box["recv"] = "ran"
    except RuntimeError as e:
        box["recv"] = str(e)
    s.close()
    assert not s.closed  # still in use: closed when the sweep returns
    th.join(10)
    assert not th.is_alive()
    assert "in use by another thread" in str(box["recv"])
    assert float(box["took"]) < 1.5  # type: ignore[arg-type]
    assert s.closed
    t = s.totals()
    assert 100 < t["sent"] < n and t["received"] == t["sent"]
    with pytest.raises(ValueError, match="closed"):
        s.send([0])
