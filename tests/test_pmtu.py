"""Path MTU (fastping.pmtu, ``fastping mtu``) through routed namespaces the tests make
(tests/pathlab.py: src -> r1 -> r2 -> r3 -> tgt): a narrow middle link whose router
says so (fragmentation needed / packet too big), the same with those messages
dropped by nft (a black hole) found and located hop by hop, silent and
rate-limiting routers, a path with no MTU problem, the socket option the search
rests on (DF whatever the kernel learned), v4 and v6, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import child_env, fastping_cmd
from tests.pathlab import PathLab, target4, target6

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")

V4, V6 = socket.AF_INET, socket.AF_INET6


def _targets(fam: int, n: int, first: int = 1) -> list[str]:
    return [target4(i) if fam == V4 else target6(i) for i in range(first, first + n)]


def _mtu(lab: PathLab, targets: list[str], **kw: Any) -> Any:
    from fastping.pmtu import path_mtu

    kw.setdefault("rate_pps", 0)
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("retry_pause_s", 0.2)
    return lab.run(lambda: path_mtu(targets, **kw))


def _accounted(res: Any) -> None:
    # every probe sent is some target's (nothing sent that no result counts)
    assert sum(r.probes for r in res.results) == res.totals["sent"]
    assert res.totals.get("send_errors", 0) == 0


@pytest.fixture
def lab() -> Iterator[PathLab]:
    with PathLab(3) as lb:
        yield lb


@pytest.mark.parametrize("fam", [V4, V6])
def test_narrow_middle_link_is_named_by_its_router(lab: PathLab, fam: int) -> None:
    lab.set_mtu(1, 1400)  # r1 - r2: r1 says "fragmentation needed" / "packet too big"
    f = 4 if fam == V4 else 6
    res = _mtu(lab, _targets(fam, 40))
    for r in res.results:
        assert r.error is None, r.to_json()
        assert r.pmtu == 1400 and r.method == "ptb", r.to_json()
        assert r.reported_mtu == 1400 and r.reported_by == lab.hop_address(1, f)
        assert r.local_mtu == 1500 and not r.black_hole
    _accounted(res)


@pytest.mark.parametrize("fam", [V4, V6])
def test_odd_mtu_named_by_router_is_exact(lab: PathLab, fam: int) -> None:
    lab.set_mtu(2, 1333)  # not a ladder rung: the router's word, then one probe
    res = _mtu(lab, _targets(fam, 5))
    assert [(r.pmtu, r.method) for r in res.results] == [(1333, "ptb")] * 5


@pytest.mark.parametrize("fam", [V4, V6])
def test_black_hole_found_to_the_byte_and_located(lab: PathLab, fam: int) -> None:
    lab.set_mtu(2, 1337)  # r2 - r3, and r2 drops its own frag-needed / PTB
    lab.black_hole(2)
    f = 4 if fam == V4 else 6
    res = _mtu(lab, _targets(fam, 20))
    for r in res.results:
        assert r.error is None, r.to_json()
        assert r.pmtu == 1337 and r.method == "search" and r.black_hole, r.to_json()
        assert r.reported_mtu is None
        assert r.hole_hop == 2 and r.hole_address == lab.hop_address(2, f), r.to_json()
        assert r.hole_next_hop == 3 and r.hole_next_address == lab.hop_address(3, f)
        assert r.hops == 4 and r.silent_hops == [] and r.hole_exact
    _accounted(res)


def test_hole_is_located_when_the_reply_ttl_misleads(lab: PathLab) -> None:
    # the target starts its replies at 35: they arrive with 32, which reads as one
    # hop from 32; the first TTL-limited round stops short, the next ones go on
    for setting in ("net.ipv4.ip_default_ttl=35", "net.ipv6.conf.all.hop_limit=35",
                    f"net.ipv6.conf.{lab.dev(3, True)}.hop_limit=35"):  # fmt: skip
        lab.exec(lab.tgt, "sysctl", "-qw", setting)
    lab.set_mtu(2, 1337)
    lab.black_hole(2)
    for r in _mtu(lab, [target4(2), target6(2)]).results:
        assert r.pmtu == 1337 and r.black_hole and r.hole_exact, r.to_json()
        assert r.hole_hop == 2 and r.hole_address == lab.hop_address(2, r.family)
        assert r.silent_hops == [], r.to_json()  # hops never asked are not "silent"


def test_black_hole_without_location_is_still_reported(lab: PathLab) -> None:
    lab.set_mtu(1, 1400)
    lab.black_hole(1)
    res = _mtu(lab, [target4(7), target6(7)], locate=False)
    for r in res.results:
        assert r.pmtu == 1400 and r.black_hole and r.hole_hop is None, r.to_json()


@pytest.mark.parametrize("fam", [V4, V6])
def test_path_without_mtu_problem_gives_the_local_mtu(lab: PathLab, fam: int) -> None:
    res = _mtu(lab, _targets(fam, 10))
    for r in res.results:
        assert (r.pmtu, r.method, r.black_hole) == (1500, "local", False), r.to_json()
        assert r.interface == lab.dev(0, False)
    # the local interface is read, not assumed: narrower here, narrower answer
    lab.set_mtu(0, 1450)
    res = _mtu(lab, _targets(fam, 3))
    assert [(r.local_mtu, r.pmtu, r.method) for r in res.results] == [(1450, 1450, "local")] * 3


def test_max_mtu_caps_the_probes(lab: PathLab) -> None:
    res = _mtu(lab, [target4(1), target6(1)], max_mtu=1300)
    assert [(r.pmtu, r.method) for r in res.results] == [(1300, "max")] * 2


@pytest.mark.parametrize("fam", [V4, V6])
def test_silent_hop_is_no_answer_not_the_hole(lab: PathLab, fam: int) -> None:
    lab.set_mtu(2, 1400)
    lab.black_hole(2)
    lab.silence(1)  # r1 forwards but never says time exceeded
    f = 4 if fam == V4 else 6
    (r,) = _mtu(lab, _targets(fam, 1)).results
    assert r.black_hole and r.hole_hop == 2 and r.hole_address == lab.hop_address(2, f)
    assert r.silent_hops == [1], r.to_json()


def test_silent_hole_router_gives_the_honest_range(lab: PathLab) -> None:
    lab.set_mtu(2, 1400)
    lab.black_hole(2)
    lab.silence(2)  # the router that drops big probes answers nothing at all
    for r in _mtu(lab, [target4(1), target6(1)]).results:
        f = r.family
        # big probes reach hop 1; hop 2 answers neither size; hop 3 answers small only
        assert r.black_hole and r.hole_hop == 1 and r.hole_address == lab.hop_address(1, f)
        assert r.hole_next_hop == 3 and r.silent_hops == [2], r.to_json()
        assert not r.hole_exact


def test_rate_limited_routers_read_as_no_answer_not_loss() -> None:
    # Linux's own ICMP error limits (about 6 at once, then 1/s per source): the
    # TTL-limited rounds ask again; a limited hop never moves the hole
    with PathLab(3, ratelimit=True) as lab:
        lab.set_mtu(2, 1400)
        lab.black_hole(2)
        targets = _targets(V4, 6) + _targets(V6, 6)
        res = _mtu(lab, targets, retry_pause_s=1.0)
        for r in res.results:
            f = r.family
            assert r.pmtu == 1400 and r.black_hole, r.to_json()
            assert r.hole_hop == 2 and r.hole_address == lab.hop_address(2, f), r.to_json()
            assert r.hole_exact and r.hops == 4
        # five times the targets behind the same limited routers: some hops stay
        # silent, but a reported range always holds the hole and "exact" is true
        targets = _targets(V4, 30, 100) + _targets(V6, 30, 100)
        res = _mtu(lab, targets, retry_pause_s=1.0)
        for r in res.results:
            assert r.pmtu == 1400 and r.black_hole and r.hops == 4, r.to_json()
            assert r.hole_hop is not None and r.hole_hop <= 2, r.to_json()
            assert r.hole_next_hop is not None and r.hole_next_hop >= 3, r.to_json()
            assert r.hole_exact == (r.hole_next_hop == r.hole_hop + 1)
            if r.hole_exact:
                assert r.hole_hop == 2 and r.hole_address == lab.hop_address(2, r.family)
            # the hops in between that said nothing are named, not blamed
            assert set(range(r.hole_hop + 1, r.hole_next_hop)) <= set(r.silent_hops)


def test_dgram_sockets_hear_the_router_through_the_error_queue(lab: PathLab) -> None:
    # unprivileged ICMP sockets get the router's word by IP_RECVERR (ee_info: the MTU)
    lab.exec(lab.src, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    lab.set_mtu(1, 1400)
    res = _mtu(lab, [target4(1), target6(1)], mode="dgram")
    assert res.mode == "dgram"
    assert [(r.pmtu, r.method, r.reported_by) for r in res.results] == [
        (1400, "ptb", lab.hop_address(1, 4)),
        (1400, "ptb", lab.hop_address(1, 6)),
    ]
    lab.set_mtu(1, 1500)
    lab.set_mtu(2, 1337)
    lab.black_hole(2)
    for r in _mtu(lab, [target4(2), target6(2)], mode="dgram").results:
        assert r.pmtu == 1337 and r.black_hole and r.hole_exact, r.to_json()
        assert r.hole_hop == 2 and r.hole_address == lab.hop_address(2, r.family)


def test_probe_mode_sends_past_a_learned_pmtu(lab: PathLab) -> None:
    from fastping._icmp import IcmpSocket

    lab.set_mtu(1, 1400)

    def go() -> list[tuple[int, int, int, int]]:
        out = []
        for df in ("probe", True, "probe"):
            s = IcmpSocket(V4, payload_size=1401 - 28, dont_fragment=df)
            try:
                s.set_targets([target4(9)])
                s.sweep(1, 0.0, 0.3)
                st = s.slot_stats(0)
                out.append((st.received, st.unreachable, st.send_errors, s.slot_mtu(0)))
            finally:
                s.close()
        return out

    first, do, probe = lab.run(go)
    assert first == (0, 1, 0, 1400)  # sent with DF, the router named its MTU
    # the kernel learned 1400 from that: DF "the kernel's way" refuses to send ...
    assert do[2] == 1 and do[1] == 0
    # ... "probe" sends anyway and hears the router again
    assert probe == (0, 1, 0, 1400)
    with pytest.raises(ValueError, match="dont_fragment"):
        IcmpSocket(V4, dont_fragment="maybe")


def _cli(lab: PathLab, *argv: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(lab.src, *fastping_cmd("mtu", *argv), check=False)


def test_cli_text_and_json(lab: PathLab) -> None:
    lab.set_mtu(1, 1400)
    r = _cli(lab, "-t", "0.3", target4(1), target6(1))
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0] == f"{target4(1)}: path MTU 1400 (named by {lab.hop_address(1)})"
    assert lines[1] == f"{target6(1)}: path MTU 1400 (named by {lab.hop_address(1, 6)})"
    assert lines[2].startswith("2 targets, 0 black holes")
    lab.set_mtu(1, 1500)
    lab.set_mtu(2, 1400)
    lab.black_hole(2)
    r = _cli(lab, "--json", "-t", "0.3", "10.200.0.1-10.200.0.3")
    assert r.returncode == 1, (r.stdout, r.stderr)  # a black hole was seen
    docs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [d["target"] for d in docs] == [target4(i) for i in (1, 2, 3)]
    for d in docs:
        assert d["pmtu"] == 1400 and d["black_hole"] and d["method"] == "search"
        assert d["hole_hop"] == 2 and d["hole_address"] == lab.hop_address(2)
    r = _cli(lab, "-6", "-t", "0.3", target6(4))
    assert r.returncode == 1
    assert f"BLACK HOLE at hop 2 {lab.hop_address(2, 6)}: 1401-byte probes pass it" in r.stdout


@contextlib.contextmanager
def _empty_ns() -> Iterator[str]:
    name = f"fpm-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize(
    "argv, code, message",
    [
        ([], 3, "no targets"),
        (["--max-mtu", "20", "127.0.0.1"], 3, "out of range"),
        (["--tries", "0", "127.0.0.1"], 3, "out of range"),
        (["http://127.0.0.1/"], 3, "follows ICMP echo paths to hosts"),
        (["-f", "/nonexistent/targets"], 3, "cannot read targets file"),
        (["-6", "127.0.0.1"], 2, "is not an IPv6 address"),
        (["10.1.2.3"], 2, "no route: Network is unreachable"),
    ],
)
def test_bad_input_is_a_clear_error(argv: list[str], code: int, message: str) -> None:
    with _empty_ns() as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, *fastping_cmd("mtu", *argv)],
                           capture_output=True, text=True, env=child_env(), timeout=60)  # fmt: skip
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert message in r.stderr + r.stdout


def test_bad_arguments_to_the_api() -> None:
    from fastping.errors import TargetError
    from fastping.pmtu import path_mtu

    for kw in ({"tries": 0}, {"max_ttl": 0}, {"timeout_s": 0}, {"mode": "tcp"}, {"max_mtu": 10}):
        with pytest.raises(TargetError):
            path_mtu(["127.0.0.1"], **kw)  # type: ignore[arg-type]


def test_loopback_answers_to_the_largest_probe() -> None:
    with _empty_ns() as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, *fastping_cmd("mtu", "--json", "-t", "0.3",
                            "127.0.0.1", "::1")], capture_output=True, text=True, env=child_env(),
                           timeout=60)  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    v4, v6 = (json.loads(x) for x in r.stdout.splitlines())
    # lo's 65536 is more than one ICMP echo holds: the largest probe passes
    assert v4["local_mtu"] == 65536 and v4["pmtu"] == 65028 and v4["method"] == "max"
    assert v6["pmtu"] == 65048 and not v6["black_hole"]
