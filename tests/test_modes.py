"""The same loopback sweep in raw, dgram and subprocess modes gives comparable
results; dgram as a real non-root user; a user who may do nothing gets an error
that names CAP_NET_RAW and the sysctl.

Everything runs inside a network namespace the test creates, so the
namespace's own ``net.ipv4.ping_group_range`` can be opened (and restored)
without touching the host's, and every probe stays on that namespace's
loopback (plus one blackholed and one filtered address inside it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import fastping
from fastping.privilege import find_ping
from privhelpers import User, in_netns, netns, ping_range, run_child, throwaway_user

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, setns, useradd, setpriv"),
]

MISSING = [t for t in ("ip", "useradd", "userdel", "setpriv") if shutil.which(t) is None]
if MISSING:
    pytestmark.append(pytest.mark.skip(reason=f"missing tools: {', '.join(MISSING)}"))

ANSWERING = ["127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"]
FILTERED = "127.0.0.9"  # an nft rule in the namespace drops echo requests to it
UNROUTABLE = "198.51.100.7"  # an `unreachable` route: the kernel refuses the send
SWEEP = dict(count=3, interval_s=0.05, timeout_s=0.5)


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with netns() as name:
        subprocess.run(
            ["ip", "-n", name, "route", "add", "unreachable", "198.51.100.0/24"], check=True
        )
        if shutil.which("nft"):
            nft = ["ip", "netns", "exec", name, "nft"]
            subprocess.run([*nft, "add", "table", "inet", "fp3"], check=True)
            subprocess.run(
                [*nft, "add", "chain", "inet", "fp3", "c",
                 "{ type filter hook input priority 0; }"],
                check=True,
            )  # fmt: skip
            subprocess.run(
                [*nft, "add", "rule", "inet", "fp3", "c", "ip", "daddr", FILTERED,
                 "icmp", "type", "echo-request", "drop"],
                check=True,
            )  # fmt: skip
        yield name


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    with throwaway_user() as u:
        yield u


def targets() -> list[str]:
    extra = [UNROUTABLE] + ([FILTERED] if shutil.which("nft") else [])
    return ANSWERING + extra


def sweep_in(ns: str, mode: str) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        return [h.to_dict() for h in fastping.sweep(targets(), mode=mode, rate_pps=0, **SWEEP)]

    return in_netns(ns, run)


def outcome_kinds(h: dict[str, Any]) -> set[str]:
    kinds = {k for k in ("timeouts", "unreachable", "time_exceeded", "send_errors") if h[k]}
    if h["received"]:
        kinds.add("reply")
    return kinds


def assert_comparable(ref: list[dict[str, Any]], got: list[dict[str, Any]], mode: str) -> None:
    assert [h["target"] for h in got] == [h["target"] for h in ref], mode
    for r, g in zip(ref, got, strict=True):
        where = f"{mode} {g['target']}"
        assert g["sent"] == r["sent"] == SWEEP["count"], where
        assert g["received"] == r["received"], where
        assert outcome_kinds(g) == outcome_kinds(r), (where, g, r)
        for k in ("min_ms", "avg_ms", "max_ms", "stddev_ms"):
            assert (g[k] is None) == (r[k] is None), (where, k)
        if g["received"]:
            assert g["ttl"] == r["ttl"] == 64, where
            # loopback RTTs: well under a few ms in every mode
            assert 0 < g["min_ms"] <= g["avg_ms"] <= g["max_ms"] < 50, where


def check_reference(ref: list[dict[str, Any]]) -> None:
    by = {h["target"]: h for h in ref}
    for t in ANSWERING:
        assert by[t]["received"] == 3 and by[t]["loss"] == 0.0, by[t]
    assert by[UNROUTABLE]["send_errors"] == 3 and by[UNROUTABLE]["received"] == 0
    if FILTERED in by:
        assert by[FILTERED]["timeouts"] == 3 and by[FILTERED]["received"] == 0


def test_same_sweep_in_every_mode_as_root(ns: str) -> None:
    raw = sweep_in(ns, "raw")
    check_reference(raw)
    # root needs ping_group_range too: the kernel checks groups, not capabilities
    with ping_range(ns, "0 0"):
        dgram = sweep_in(ns, "dgram")
    assert_comparable(raw, dgram, "dgram")
    if shutil.which("ping"):
        sub = sweep_in(ns, "subprocess")
        assert_comparable(raw, sub, "subprocess")
    auto = sweep_in(ns, "auto")
    assert_comparable(raw, auto, "auto")


def test_dgram_as_non_root_user(ns: str, user: User) -> None:
    ref = sweep_in(ns, "raw")
    before_range = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ping_group_range"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    with ping_range(ns, f"{user.gid} {user.gid}"):
        job = {"action": "sweep", "mode": "dgram", "targets": targets(),
               "kwargs": {**SWEEP, "rate_pps": 0}}  # fmt: skip
        out = run_child(user, ns, job)
        assert "error" not in out, out
        assert out["uid"] == user.uid and out["cap_eff"] == "0000000000000000"
        assert out["has_extension"] is True
        assert_comparable(ref, out["result"], "dgram(non-root)")
        # auto picks dgram for this user, and says so through the socket kind
        out = run_child(user, ns, {"action": "open", "mode": "auto"})
        assert out.get("result") == "dgram", out
        out = run_child(user, ns, {"action": "open", "mode": "auto", "family": 6})
        assert out.get("result") == "dgram", out
        # forcing raw fails with the diagnosis, naming the capability and the fix
        out = run_child(user, ns, {"action": "open", "mode": "raw"})
        assert out["error"] == "PermissionDenied"
        assert "CAP_NET_RAW missing" in out["message"]
        assert "setcap cap_net_raw+ep" in out["message"]
    # the namespace's range is back to what it was
    after = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ping_group_range"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert after == before_range


def test_non_root_with_nothing_gets_permission_denied(ns: str, user: User) -> None:
    # range closed (a fresh namespace's default is "1 0") and no ping on PATH
    with ping_range(ns, "1 0"):
        job = {"action": "sweep", "mode": "auto", "targets": ["127.0.0.1"], "kwargs": {}}
        out = run_child(user, ns, job, path="/nonexistent")
        assert out["error"] == "PermissionDenied", out
        msg = out["message"]
        assert "CAP_NET_RAW" in msg
        assert "net.ipv4.ping_group_range" in msg
        assert f'sysctl -w net.ipv4.ping_group_range="{user.gid} {user.gid}"' in msg
        assert '"1 0" (closed' in msg
        assert "no ping binary on PATH" in msg
        # forced dgram: same facts, dgram-specific
        out = run_child(user, ns, {"action": "open", "mode": "dgram"}, path="/nonexistent")
        assert out["error"] == "PermissionDenied"
        assert "ping_group_range" in out["message"] and "Permission denied" in out["message"]
        # fastping doctor as that user: exit 4, every mode explained
        out = run_child(
            user, ns, {"action": "cli", "argv": ["doctor", "--json"]}, path="/nonexistent"
        )
        assert out["result"]["rc"] == 4, out
        import json

        d = json.loads(out["result"]["stdout"])
        assert d["auto_mode"] is None
        assert not any(m["ok"] for m in d["modes"].values())
        assert d["modes"]["dgram"]["verified"] and d["modes"]["raw"]["verified"]


def test_non_root_steps_down_to_system_ping(ns: str, user: User) -> None:
    ping = find_ping()
    if ping is None or not ping.privileged:
        pytest.skip("the system ping is not setuid / cap_net_raw: it cannot work for a user")
    with ping_range(ns, "1 0"):
        out = run_child(user, ns, {"action": "open", "mode": "auto"})
        assert out["error"] == "UseSubprocess", out
        assert "PermissionDenied" in out["error_mro"]
        assert "falling back to the system ping" in out["message"]
        job = {"action": "sweep", "mode": "subprocess", "targets": targets(), "kwargs": SWEEP}
        out = run_child(user, ns, job)
        assert "error" not in out, out
    ref = sweep_in(ns, "raw")
    assert_comparable(ref, out["result"], "subprocess(non-root)")


def test_doctor_for_dgram_user(ns: str, user: User) -> None:
    with ping_range(ns, f"0 {user.gid}"):
        out = run_child(user, ns, {"action": "cli", "argv": ["doctor"]}, path="/nonexistent")
    assert out["result"]["rc"] == 0, out
    text = out["result"]["stdout"]
    assert "mode=auto will use: dgram" in text
    assert "CAP_NET_RAW:        missing" in text
    assert f'ping_group_range:   "0 {user.gid}"' in text


def test_family_sockets_are_per_namespace(ns: str) -> None:
    # sanity for in_netns(): a socket made there sees the namespace's routes
    def probe() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((UNROUTABLE, 9))
        except OSError as e:
            return e.errno or 0
        finally:
            s.close()
        return 0

    import errno

    assert in_netns(ns, probe) == errno.EHOSTUNREACH


@pytest.fixture(scope="module")
def routed() -> Iterator[str]:
    """Namespace A (the prober) behind namespace B (a router): B answers probes
    to 10.93.0.0/24 with host-unreachable and forwards 10.92.0.0/24 (so TTL 1
    expires there). ICMP error rate limiting is off in B (a per-namespace sysctl)
    so every probe in every mode gets its error."""
    suffix = os.urandom(3).hex()
    a, b = f"fp3-ra{suffix}", f"fp3-rb{suffix}"
    va, vb = f"fp3va{suffix}", f"fp3vb{suffix}"
    run = lambda *cmd: subprocess.run(cmd, check=True)  # noqa: E731
    run("ip", "netns", "add", a)
    try:
        run("ip", "netns", "add", b)
        for n in (a, b):
            run("ip", "-n", n, "link", "set", "lo", "up")
        run("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        run("ip", "-n", a, "addr", "add", "10.91.0.1/24", "dev", va)
        run("ip", "-n", b, "addr", "add", "10.91.0.2/24", "dev", vb)
        run("ip", "-n", a, "link", "set", va, "up")
        run("ip", "-n", b, "link", "set", vb, "up")
        run("ip", "-n", a, "route", "add", "default", "via", "10.91.0.2")
        run("ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        run("ip", "-n", b, "route", "add", "10.92.0.0/24", "via", "10.91.0.1")
        run("ip", "-n", b, "route", "add", "10.93.0.0/24", "via", "10.91.0.1")
        # host-unreachable from an nft reject, not from an `unreachable` route:
        # ip_error() rate-limits route errors per peer (burst 5, then 1/s, by
        # the host-wide net.ipv4.route.error_cost), icmp_send() obeys the
        # namespace's icmp_ratelimit, which is 0 here.
        nft = ("ip", "netns", "exec", b, "nft")
        run(*nft, "add", "table", "ip", "fp3")
        chain = "{ type filter hook forward priority 0; }"
        run(*nft, "add", "chain", "ip", "fp3", "forward1", chain)
        run(*nft, "add", "rule", "ip", "fp3", "forward1", "ip", "daddr", "10.93.0.0/24",
            "reject", "with", "icmp", "type", "host-unreachable")  # fmt: skip
        yield a
    finally:
        subprocess.run(["ip", "netns", "del", a], check=False)
        subprocess.run(["ip", "netns", "del", b], check=False)


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) not installed")
def test_icmp_errors_in_every_mode(routed: str) -> None:
    from fastping.probe import subprocess_sweep

    kw = dict(count=2, interval_s=0.05, timeout_s=0.5)

    def run(mode: str, target: str, ttl: int | None) -> dict[str, Any]:
        if mode == "subprocess":
            hosts = subprocess_sweep([target], ttl=ttl, **kw)  # type: ignore[arg-type]
        else:
            hosts = list(fastping.sweep([target], mode=mode, ttl=ttl, rate_pps=0, **kw))
        return hosts[0].to_dict()

    modes = ["raw", "dgram"] + (["subprocess"] if shutil.which("ping") else [])
    with ping_range(routed, "0 0"):
        for mode in modes:
            h = in_netns(routed, lambda m=mode: run(m, "10.93.0.5", None))
            assert (h["sent"], h["received"], h["unreachable"]) == (2, 0, 2), (mode, h)
            assert "10.91.0.2" in (h["error"] or ""), (mode, h)
            h = in_netns(routed, lambda m=mode: run(m, "10.92.0.5", 1))
            assert (h["sent"], h["received"], h["time_exceeded"]) == (2, 0, 2), (mode, h)
            assert "10.91.0.2" in (h["error"] or ""), (mode, h)
