"""HTTP(S) checks against real servers started here on loopback: Debian's nginx with
certificates made in the test (good, expired, wrong name, an untrusted CA),
redirects, a slow endpoint with a known delay, a server that resets connections,
one that never answers; IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, child_env, fastping_cmd
from fastping.http import HttpCheck, HttpOutcome, HttpResult, HttpRunner, HttpScheduler
from httpservers import Nginx, SpecialServer, free_port

HOSTS = ["127.0.0.1", "::1"]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    ng = Nginx(tmp_path_factory.mktemp("nginx")).start()
    try:
        yield ng
    finally:
        ng.stop()


@pytest.fixture
def special(request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[SpecialServer] = []

    def make(mode: str, delay_s: float = 0.0) -> SpecialServer:
        s = SpecialServer(mode, delay_s).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def check(*checks: HttpCheck, **runner: Any) -> list[HttpResult]:
    async def go() -> list[HttpResult]:
        r = HttpRunner(**runner)
        try:
            out: list[HttpResult] = []
            for c in checks:
                out += await r.run(c)
            return out
        finally:
            await r.close()

    return asyncio.run(go())


def one(c: HttpCheck, **runner: Any) -> HttpResult:
    (r,) = check(c, **runner)
    return r


def phases_add_up(r: HttpResult) -> None:
    parts = [r.redirect_ms, r.dns_ms, r.connect_ms, r.tls_ms or 0.0, r.send_ms, r.wait_ms,
             r.transfer_ms]  # fmt: skip
    assert all(p is not None and p >= 0 for p in parts), r
    assert r.total_ms == pytest.approx(sum(parts), abs=0.05)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# TLS


@pytest.mark.parametrize("host", HOSTS)
def test_https_with_the_tests_own_ca_is_ok_with_every_phase_and_the_cert_expiry(
    nginx: Nginx, host: str
) -> None:
    r = one(HttpCheck(nginx.url("https", host=host), ca_file=str(nginx.certs["ca"])))
    assert r.outcome is HttpOutcome.OK, r.error
    assert (r.status, r.http_version, r.address) == (200, "HTTP/1.1", host)
    assert r.tls_version in ("TLSv1.2", "TLSv1.3")
    assert r.cert_not_after == nginx.not_after["good"]  # read from the DER by hand
    assert 44 < (r.cert_days_left or 0) < 46
    assert r.body_bytes == len(b"fastping ok\n")
    assert r.source == host
    assert r.tls_ms is not None and r.tls_ms > 0
    phases_add_up(r)
    # without ICMP the split uses the kernel's RTT of the TCP handshake (TCP_INFO),
    # which holds no event-loop delay, so it is within the connect phase
    assert r.rtt_source == "tcp" and r.rtt_ms == r.tcp_rtt_ms
    assert r.tcp_rtt_ms is not None and r.connect_ms is not None
    assert 0 < r.tcp_rtt_ms <= r.connect_ms + 0.001
    assert r.server_ms == pytest.approx(max(0.0, r.wait_ms - r.tcp_rtt_ms))  # type: ignore[operator]
    assert r.path_ms == pytest.approx(r.total_ms - r.server_ms)  # type: ignore[operator]


def test_untrusted_ca_is_a_chain_error_and_the_expiry_is_still_known(nginx: Nginx) -> None:
    r = one(HttpCheck(nginx.url("https")))  # the system's CAs do not know ours
    assert r.outcome is HttpOutcome.CERT_CHAIN
    assert "issuer" in (r.cert_error or "")
    assert r.cert_not_after == nginx.not_after["good"]
    assert r.status is None and r.tls_ms is None


@pytest.mark.parametrize("host", HOSTS)
def test_expired_certificate_is_its_own_outcome(nginx: Nginx, host: str) -> None:
    ca = str(nginx.certs["ca"])
    r = one(HttpCheck(nginx.url("expired", host=host), ca_file=ca))
    assert r.outcome is HttpOutcome.CERT_EXPIRED, r.error
    assert r.cert_not_after == nginx.not_after["expired"] and r.cert_not_after < time.time()
    assert not r.ok
    # verification off: the same server answers
    r2 = one(HttpCheck(nginx.url("expired", host=host), verify_tls=False))
    assert r2.outcome is HttpOutcome.OK and r2.status == 200


def test_wrong_host_name_is_a_name_mismatch_by_address_and_by_name(nginx: Nginx) -> None:
    ca = str(nginx.certs["ca"])
    by_ip = one(HttpCheck(nginx.url("wrongname"), ca_file=ca))
    assert by_ip.outcome is HttpOutcome.CERT_NAME, by_ip.error
    by_name = one(HttpCheck(nginx.url("wrongname"), ca_file=ca, server_name="localhost"))
    assert by_name.outcome is HttpOutcome.CERT_NAME
    assert "localhost" in (by_name.cert_error or "")
    # and the right name for that certificate passes
    ok = one(HttpCheck(nginx.url("wrongname"), ca_file=ca, server_name="wrong.invalid"))
    assert ok.outcome is HttpOutcome.OK, ok.error


def test_a_certificate_expiring_soon_is_flagged_but_still_ok(nginx: Nginx) -> None:
    ca = str(nginx.certs["ca"])
    r = one(HttpCheck(nginx.url("https"), ca_file=ca, cert_min_days=60))
    assert r.outcome is HttpOutcome.CERT_EXPIRING and r.ok
    assert "expires in 4" in (r.error or "")
    assert (
        one(HttpCheck(nginx.url("https"), ca_file=ca, cert_min_days=30)).outcome is HttpOutcome.OK
    )


# ---------------------------------------------------------------------------------
# HTTP answers


@pytest.mark.parametrize("host", HOSTS)
def test_redirects_followed_counted_and_timed(nginx: Nginx, host: str) -> None:
    r = one(HttpCheck(nginx.url("http", "/redirect2", host=host)))
    assert r.outcome is HttpOutcome.OK and r.status == 200
    assert r.redirects == 2
    assert r.final_url == nginx.url("http", "/", host=host)
    assert r.redirect_ms > 0
    phases_add_up(r)
    # not followed: the 301 itself is the answer
    r2 = one(HttpCheck(nginx.url("http", "/redirect2", host=host), follow_redirects=False))
    assert (r2.outcome, r2.status, r2.redirects) == (HttpOutcome.OK, 301, 0)
    # a limit below the chain
    r3 = one(HttpCheck(nginx.url("http", "/redirect2", host=host), max_redirects=1))
    assert r3.outcome is HttpOutcome.REDIRECTS and r3.redirects == 1


def test_a_redirect_loop_stops_at_the_limit(nginx: Nginx) -> None:
    r = one(HttpCheck(nginx.url("http", "/loop"), max_redirects=4))
    assert r.outcome is HttpOutcome.REDIRECTS and r.redirects == 4 and r.status == 302


def test_status_expectations(nginx: Nginx) -> None:
    down = one(HttpCheck(nginx.url("http", "/down")))
    assert (down.outcome, down.status) == (HttpOutcome.STATUS, 503)
    assert (
        one(HttpCheck(nginx.url("http", "/down"), expect_status=(503,))).outcome is HttpOutcome.OK
    )
    assert one(HttpCheck(nginx.url("http", "/missing"))).status == 404
    assert (
        one(HttpCheck(nginx.url("http", "/"), expect_status=(204,))).outcome is HttpOutcome.STATUS
    )


def test_body_regex_and_json_field(nginx: Nginx) -> None:
    u = nginx.url("https", "/json")
    ca = str(nginx.certs["ca"])
    res = check(
        HttpCheck(u, ca_file=ca, body_regex=r'"status": "up"'),
        HttpCheck(u, ca_file=ca, body_regex=r'"status": "down"'),
        HttpCheck(u, ca_file=ca, json_field="db.lag", json_value=3),
        HttpCheck(u, ca_file=ca, json_field="db.ok"),
        HttpCheck(u, ca_file=ca, json_field="db.lag", json_value=0),
        HttpCheck(u, ca_file=ca, json_field="db.missing"),
        HttpCheck(nginx.url("https", "/"), ca_file=ca, json_field="status"),
    )
    assert [r.outcome for r in res] == [
        HttpOutcome.OK, HttpOutcome.BODY, HttpOutcome.OK, HttpOutcome.OK, HttpOutcome.JSON,
        HttpOutcome.JSON, HttpOutcome.JSON,
    ]  # fmt: skip
    assert "is 3, expected 0" in (res[4].error or "")
    assert "not JSON" in (res[6].error or "")


def test_a_large_body_is_transferred_whole(nginx: Nginx) -> None:
    r = one(HttpCheck(nginx.url("https", "/big"), ca_file=str(nginx.certs["ca"])))
    assert r.outcome is HttpOutcome.OK and r.body_bytes == nginx.big_kb * 1024
    assert r.transfer_ms is not None and r.transfer_ms > 0


# ---------------------------------------------------------------------------------
# misbehaving servers


@pytest.mark.parametrize("host", HOSTS)
def test_slow_endpoint_the_delay_is_server_time(special: Any, host: str) -> None:
    delay_s = 0.3
    s = special("slow", delay_s)
    r = one(HttpCheck(s.url(host=host)))
    assert r.outcome is HttpOutcome.OK and r.status == 200
    # the server sleeps delay_s after reading the request: it is in wait, not elsewhere
    assert r.wait_ms is not None and r.wait_ms >= delay_s * 1000 - 1
    assert r.server_ms is not None and r.server_ms >= delay_s * 1000 - 2
    assert r.connect_ms is not None and r.connect_ms < r.wait_ms
    # with an ICMP RTT given, the split uses it
    r2 = one(HttpCheck(s.url(host=host)), rtt_of=lambda a: 0.05 if a == host else None)
    assert r2.rtt_source == "icmp" and r2.rtt_ms == 0.05
    assert r2.server_ms == pytest.approx(r2.wait_ms - 0.05)  # type: ignore[operator]


@pytest.mark.parametrize("host", HOSTS)
def test_a_server_that_resets_connections(special: Any, host: str) -> None:
    s = special("reset")
    r = one(HttpCheck(s.url(host=host)))
    assert r.outcome is HttpOutcome.RESET, (r.outcome, r.error)
    # the RST can beat asyncio's check of the connect (SO_ERROR is then ECONNRESET):
    # either way it is a reset, and the error names the phase
    assert r.status is None and r.error and r.error.split(":")[0] in ("connect", "wait", "send")


@pytest.mark.parametrize("host", HOSTS)
def test_a_server_that_never_answers_times_out_in_wait(special: Any, host: str) -> None:
    s = special("silent")
    r = one(HttpCheck(s.url(host=host), timeout_s=0.5))
    assert r.outcome is HttpOutcome.TIMEOUT and r.timeout_phase == "wait"
    assert r.total_ms is not None and r.total_ms >= 499
    assert r.wait_ms is None and r.connect_ms is not None


def test_a_body_that_ends_at_the_close_and_one_cut_short(special: Any) -> None:
    whole = one(HttpCheck(special("http10").url()))
    assert (whole.outcome, whole.http_version, whole.body_bytes) == (HttpOutcome.OK, "HTTP/1.0",
                                                                     5000)  # fmt: skip
    cut = one(HttpCheck(special("cut").url()))
    # the head came whole (status known), the body did not: a reset in transfer
    assert cut.outcome is HttpOutcome.RESET and cut.status == 200
    assert (cut.error or "").startswith("transfer: ") and "closed" in (cut.error or "")
    assert cut.transfer_ms is None and cut.wait_ms is not None


def test_a_closed_port_is_refused() -> None:
    port = free_port()  # nothing listens there
    res = check(HttpCheck(f"http://127.0.0.1:{port}/"), HttpCheck(f"https://[::1]:{port}/"))
    assert [r.outcome for r in res] == [HttpOutcome.REFUSED, HttpOutcome.REFUSED]


def test_the_runner_survives_timeouts_and_keeps_working(special: Any, nginx: Nginx) -> None:
    s = special("silent")

    async def go() -> list[HttpResult]:
        r = HttpRunner()
        out = await asyncio.gather(
            r.run(HttpCheck(s.url(), timeout_s=0.3)), r.run(HttpCheck(nginx.url("http")))
        )
        after = await r.run(HttpCheck(nginx.url("http")))
        await r.close()
        return [*out[0], *out[1], *after]

    a, b, c = asyncio.run(go())
    assert (a.outcome, b.outcome, c.outcome) == (
        HttpOutcome.TIMEOUT,
        HttpOutcome.OK,
        HttpOutcome.OK,
    )


# ---------------------------------------------------------------------------------
# addresses, reuse, concurrency, source


def test_a_name_with_several_addresses_gives_one_result_per_address(nginx: Nginx) -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int, family: int) -> list[tuple[int, str]]:
        asked.append((host, family))
        # 127.0.0.2 is loopback too, but nginx listens on 127.0.0.1 only: refused
        addrs = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"),
                 (socket.AF_INET, "127.0.0.2")]  # fmt: skip
        return [a for a in addrs if family in (0, a[0])]

    url = f"https://multi.test:{nginx.ports['https']}/"
    ca = str(nginx.certs["ca"])
    res = one_name = check(HttpCheck(url, ca_file=ca, server_name="localhost"), resolver=resolver)
    assert [(r.address, r.outcome) for r in res] == [
        ("127.0.0.1", HttpOutcome.OK), ("::1", HttpOutcome.OK), ("127.0.0.2", HttpOutcome.REFUSED)
    ]  # fmt: skip
    assert all(r.url == url for r in one_name)
    v6 = check(HttpCheck(url, ca_file=ca, server_name="localhost", family=socket.AF_INET6),
               resolver=resolver)  # fmt: skip
    assert [r.address for r in v6] == ["::1"]
    first = check(HttpCheck(url, ca_file=ca, server_name="localhost", all_addresses=False),
                  resolver=resolver)  # fmt: skip
    assert [r.address for r in first] == ["127.0.0.1"]
    assert asked[0] == ("multi.test", 0)


def test_resolve_cache_shares_one_resolution_between_checks_of_a_name(nginx: Nginx) -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int, family: int) -> list[tuple[int, str]]:
        calls.append(host)
        await asyncio.sleep(0.01)  # concurrent checks wait for this one answer
        return [(socket.AF_INET, "127.0.0.1")]

    port = nginx.ports["http"]
    checks = [HttpCheck(f"http://cached.test:{port}/?i={i}") for i in range(5)]

    async def go(cache_s: float) -> list[HttpResult]:
        r = HttpRunner(resolver=resolver, resolve_cache_s=cache_s)
        first = await asyncio.gather(*(r.run(c) for c in checks))
        again = await r.run(checks[0])
        await r.close()
        return [x for rs in first for x in rs] + again

    res = asyncio.run(go(60.0))
    assert len(calls) == 1 and all(r.outcome is HttpOutcome.OK for r in res)
    calls.clear()
    asyncio.run(go(0.0))
    assert len(calls) == 6


def test_a_name_that_does_not_resolve_is_a_result() -> None:
    async def resolver(host: str, port: int, family: int) -> list[tuple[int, str]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    (r,) = check(HttpCheck("https://nowhere.test/"), resolver=resolver)
    assert r.outcome is HttpOutcome.RESOLVE and r.address is None
    assert "not known" in (r.error or "")


def test_connection_reuse_is_per_check(special: Any) -> None:
    s = special("slow", 0.0)

    async def go(reuse: bool) -> list[HttpResult]:
        r = HttpRunner()
        c = HttpCheck(s.url(), reuse_connection=reuse)
        out = [*(await r.run(c)), *(await r.run(c)), *(await r.run(c))]
        await r.close()
        return out

    before = s.connections
    kept = asyncio.run(go(True))
    assert s.connections - before == 1
    assert [r.reused for r in kept] == [False, True, True]
    assert kept[1].connect_ms == 0.0 and kept[1].outcome is HttpOutcome.OK
    assert kept[1].server_ms is None and kept[0].rtt_source == "tcp"  # no handshake, no RTT
    before = s.connections
    fresh = asyncio.run(go(False))
    assert s.connections - before == 3 and not any(r.reused for r in fresh)


def test_a_kept_connection_the_server_closed_is_not_reused(special: Any) -> None:
    s = special("oneshot")

    async def go() -> list[HttpResult]:
        r = HttpRunner()
        c = HttpCheck(s.url(), reuse_connection=True)
        first = await r.run(c)
        await asyncio.sleep(0.05)  # the server's FIN arrives
        out = [*first, *(await r.run(c))]
        await r.close()
        return out

    a, b = asyncio.run(go())
    assert (a.outcome, b.outcome) == (HttpOutcome.OK, HttpOutcome.OK)
    assert not b.reused and s.connections == 2


def test_concurrency_is_bounded(special: Any) -> None:
    s = special("slow", 0.1)

    async def go() -> list[HttpResult]:
        r = HttpRunner(max_concurrency=3)
        res = await asyncio.gather(*(r.run(HttpCheck(s.url(f"/{i}"))) for i in range(10)))
        await r.close()
        return [x for rs in res for x in rs]

    res = asyncio.run(go())
    assert all(r.outcome is HttpOutcome.OK for r in res) and len(res) == 10
    assert s.max_active == 3


def test_source_address_is_bound_and_reported(nginx: Nginx) -> None:
    r = one(HttpCheck(nginx.url("http"), source_address="127.0.0.3"))
    assert r.outcome is HttpOutcome.OK and r.source == "127.0.0.3"


# ---------------------------------------------------------------------------------
# scheduling (no clock, no loop)


def test_scheduler_spreads_checks_and_skips_one_still_running() -> None:
    now = [1000.0]
    checks = [HttpCheck(f"http://127.0.0.1/{i}", interval_s=10) for i in range(200)]
    sched = HttpScheduler(checks, runner=None, clock=lambda: now[0])  # type: ignore[arg-type]
    firsts = sorted(s.next_at for s in sched._items.values())
    assert firsts[0] >= 1000.0 and firsts[-1] < 1010.0
    assert firsts[-1] - firsts[0] > 8  # spread over the interval, not a burst
    due = sched.due(1010.0)
    assert len(due) == 200 and all(1010.0 < s.next_at <= 1020.0 for s in due)
    due[0].running = True
    again = sched.due(1020.0)
    assert len(again) == 199 and sched.skipped == 1
    # a late wake-up moves to the next slot on the grid, no burst of catch-up runs
    nxt = {id(s): s.next_at for s in again}
    due[0].running = False
    assert len(sched.due(1065.0)) == 200
    for s in again:
        steps = (s.next_at - nxt[id(s)]) / 10
        assert s.next_at > 1065.0 and steps == pytest.approx(round(steps))


def test_scheduler_runs_checks_periodically_into_sinks(nginx: Nginx) -> None:
    got: list[HttpResult] = []

    async def go() -> HttpScheduler:
        checks = [HttpCheck(nginx.url("http", f"/?i={i}"), interval_s=0.5) for i in range(5)]
        sched = HttpScheduler(checks, HttpRunner(), sinks=[got.extend])
        await sched.run(1.6)
        return sched

    sched = asyncio.run(go())
    assert 10 <= len(got) <= 20 and all(r.outcome is HttpOutcome.OK for r in got)
    assert set(sched.latest()) == {c.url for c in sched.checks}


# ---------------------------------------------------------------------------------
# store, metrics, config, command line


def test_store_table_round_trip_and_summaries(tmp_path: Path, nginx: Nginx) -> None:
    from fastping.httpstore import HttpStore

    db = tmp_path / "h.db"
    ca = str(nginx.certs["ca"])
    res = check(*[HttpCheck(nginx.url("https", "/"), ca_file=ca)] * 3,
                HttpCheck(nginx.url("expired"), ca_file=ca))  # fmt: skip

    async def go() -> None:
        st = HttpStore(db, flush_interval_s=0.1)
        await st.start()
        st.submit(res)
        await st.close()
        assert st.stats()["written"] == 4

    asyncio.run(go())
    st = HttpStore(db)
    rows = st.recent()
    assert len(rows) == 4 and {r["outcome"] for r in rows} == {"ok", "cert_expired"}
    assert sqlite3.connect(db).execute("SELECT count(*) FROM http_results").fetchone()[0] == 4
    sums = {s.url: s for s in st.summaries()}
    good = sums[nginx.url("https", "/")]
    assert (good.checks, good.ok, good.last_status) == (3, 3, 200)
    oks = [r for r in res if r.ok]
    tls = sorted(r.tls_ms for r in oks)  # type: ignore[type-var]
    assert good.phases_ms["tls"] == pytest.approx(tls[1])
    bad = sums[nginx.url("expired")]
    assert bad.outcomes == {"cert_expired": 1} and bad.cert_not_after == nginx.not_after["expired"]


def test_metrics_use_blackbox_exporter_names(nginx: Nginx) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from fastping.metrics import HTTP_METRIC_NAMES, HttpMetricsCollector

    ca = str(nginx.certs["ca"])
    res = check(HttpCheck(nginx.url("https", host="::1"), ca_file=ca),
                HttpCheck(nginx.url("http", "/down")))  # fmt: skip
    hm = HttpMetricsCollector()
    hm.observe(res)
    reg = CollectorRegistry()
    reg.register(hm)
    text = generate_latest(reg).decode()
    u6 = nginx.url("https", host="::1")
    for name in HTTP_METRIC_NAMES:
        assert f"\n{name}" in "\n" + text, name
    for phase in ("resolve", "connect", "tls", "processing", "transfer"):
        assert f'probe_http_duration_seconds{{ip="::1",phase="{phase}",url="{u6}"}}' in text
    assert f'probe_http_status_code{{ip="::1",url="{u6}"}} 200.0' in text
    assert f'probe_success{{ip="127.0.0.1",url="{nginx.url("http", "/down")}"}} 0.0' in text
    exp = nginx.not_after["good"]
    key = f'probe_ssl_earliest_cert_expiry{{ip="::1",url="{u6}"}} '
    line = next(ln for ln in text.splitlines() if ln.startswith(key))
    assert float(line[len(key) :]) == exp
    assert 'fastping_http_checks_total{ip="127.0.0.1",outcome="status_mismatch"' in text
    assert f'probe_ip_protocol{{ip="::1",url="{u6}"}} 6.0' in text
    from test_metrics import promtool_check

    promtool_check(text)  # valid exposition, and promtool's lint of names and help


def test_config_http_section_and_url_targets() -> None:
    from fastping.config import parse_config_text
    from fastping.errors import ConfigError

    cfg = parse_config_text(
        "targets: [127.0.0.1, 'https://localhost:8443/health']\n"
        "http:\n  defaults: {interval_s: 30s, ca_file: /x/ca.pem}\n"
        "  checks:\n    - http://127.0.0.1:8080/\n"
        "    - {url: 'http://[::1]:8080/j', json_field: a.b, json_value: 3, family: 6,"
        " expect_status: [200, 204], labels: {team: web}}\n"
    )
    checks = {c.url: c for c in cfg.http_checks(["http://127.0.0.1:9000/"])}
    assert set(checks) == {"http://127.0.0.1:8080/", "http://[::1]:8080/j",
                           "https://localhost:8443/health", "http://127.0.0.1:9000/"}  # fmt: skip
    j = checks["http://[::1]:8080/j"]
    assert (j.family, j.expect_status, j.json_value, j.interval_s, j.ca_file, j.labels) == (
        socket.AF_INET6,
        (200, 204),
        3,
        30.0,
        "/x/ca.pem",
        (("team", "web"),),
    )
    with pytest.raises(ConfigError, match="http.checks"):
        parse_config_text("http:\n  checks: ['ftp://x/']\n")
    with pytest.raises(ConfigError, match="body_regex"):
        parse_config_text("http:\n  checks: [{url: 'http://127.0.0.1/', body_regex: '('}]\n")


def test_command_line_text_and_json(nginx: Nginx) -> None:
    ca = str(nginx.certs["ca"])
    p = subprocess.run(
        fastping_cmd("http", "--no-icmp", "--ca-file", ca, nginx.url("https"),
                     nginx.url("https", host="::1"), nginx.url("http", "/redirect")),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and all(" ok 200 HTTP/1.1" in ln for ln in lines)
    assert "after 1 redirect " in lines[2] and "cert 45.0 days left" in lines[0]
    assert "server " in lines[0] and "(tcp)" in lines[0]
    p = subprocess.run(
        fastping_cmd("http", "--json", "--no-icmp", "--ca-file", ca, "-c", "2", "--reuse",
                     nginx.url("https"), nginx.url("expired")),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert p.returncode == 1, p.stderr  # the expired certificate
    rows = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert [(r["outcome"], r["reused"]) for r in rows] == [
        ("ok", False),
        ("cert_expired", False),
        ("ok", True),
        ("cert_expired", False),
    ]
    assert rows[1]["cert_days_left"] < 0


@pytest.mark.skipif(not ROOT, reason="needs root for raw ICMP sockets")
def test_command_line_splits_with_icmp_echoes_of_the_same_addresses(nginx: Nginx) -> None:
    p = subprocess.run(
        fastping_cmd("http", "--json", "--mode", "raw", nginx.url("http", host="127.0.0.1"),
                     nginx.url("http", host="::1")),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert [(r["address"], r["rtt_source"]) for r in rows] == [("127.0.0.1", "icmp"),
                                                               ("::1", "icmp")]  # fmt: skip
    for r in rows:
        assert 0 < r["rtt_ms"] < r["connect_ms"] + 50
        assert r["server_ms"] == pytest.approx(max(0.0, r["wait_ms"] - r["rtt_ms"]))


@pytest.mark.skipif(not ROOT, reason="needs root for the engine's raw ICMP socket")
def test_monitor_runs_http_checks_beside_icmp_with_the_split_store_and_metrics(
    tmp_path: Path, nginx: Nginx
) -> None:
    mp = free_port()
    db = tmp_path / "m.db"
    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        f"targets: ['{nginx.url('https', host='::1')}']\n"
        f"http:\n  defaults: {{interval_s: 0.5, ca_file: {nginx.certs['ca']}}}\n"
        f"  checks: ['{nginx.url('http', '/json')}', '{nginx.url('expired')}']\n"
        f"metrics: {{listen: '127.0.0.1:{mp}'}}\nstore: {{path: {db}}}\n"
        "defaults: {interval_s: 0.2}\n"
    )
    p = subprocess.Popen(
        fastping_cmd("monitor", "--config", str(cfg), "--duration", "4", "--table", "never"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        text = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "fastping_http_server_seconds" not in text:
            time.sleep(0.5)
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            except OSError:
                continue
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["http"]["checks"] == 3 and summary["http"]["stored"] >= 9
    assert summary["http"]["icmp_addresses"] == 2  # 127.0.0.1 and ::1 became ICMP targets
    assert "probe_http_duration_seconds" in text and "probe_ssl_earliest_cert_expiry" in text
    rows = (
        sqlite3.connect(db)
        .execute(
            "SELECT url, address, outcome, rtt_source, rtt_ms, wait_ms, server_ms FROM http_results"
        )
        .fetchall()
    )
    assert {r[2] for r in rows if "expired" not in r[0] and r[0].endswith("/json")} == {"ok"}
    # after the engine's first replies the split uses the ICMP RTT of the same address
    icmp = [r for r in rows if r[3] == "icmp" and r[2] == "ok"]
    assert icmp, rows
    assert {r[1] for r in icmp} == {"127.0.0.1", "::1"}
    for r in icmp:
        assert r[6] == pytest.approx(max(0.0, r[5] - r[4]))
    # the ICMP results of those addresses are in the ICMP store too
    names = {n for (n,) in sqlite3.connect(db).execute("SELECT name FROM targets")}
    assert {"127.0.0.1", "::1"} <= names
    # report: the HTTP table in text, a stacked phase chart per URL and address in HTML
    page = tmp_path / "r.html"
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--html", str(page)),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert "HTTP checks: 3 URL/address pairs" in rep.stdout
    assert "cert_expired" in rep.stdout
    doc = page.read_text()
    assert doc.count('aria-label="phases of ') == 3
    from fastping.htmlreport import HTTP_PARTS

    colours = dict((k, c) for k, c, _ in HTTP_PARTS)
    for part in ("connect", "tls", "wait_network", "server", "transfer"):
        assert f'fill="{colours[part]}"' in doc, part
    assert "failed: cert_expired" in doc


@pytest.mark.parametrize("workers", [1, 2])
def test_monitor_with_only_http_checks_reloads_them_on_sighup(
    tmp_path: Path, nginx: Nginx, workers: int
) -> None:
    import signal

    db = tmp_path / "r.db"
    cfg = tmp_path / "f.yaml"
    a, b, c = (nginx.url("http", f"/?{x}") for x in "abc")

    def write(urls: list[str]) -> None:
        cfg.write_text(
            f"http:\n  icmp: false\n  workers: {workers}\n  defaults: {{interval_s: 0.3}}\n"
            f"  checks: {urls!r}\n"
            f"store: {{path: {db}}}\n"
        )

    write([a, b])
    p = subprocess.Popen(
        fastping_cmd("monitor", "--config", str(cfg), "--duration", "7", "--table", "never"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        # reload once both first checks are stored (start-up time varies: workers)
        deadline = time.monotonic() + 5
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != {a, b}:
            time.sleep(0.2)
            with contextlib.suppress(sqlite3.Error):
                q = sqlite3.connect(db).execute("SELECT DISTINCT url FROM http_results")
                seen = {u for (u,) in q}
        write([a, c])
        reload_at = time.time()
        p.send_signal(signal.SIGHUP)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "reloaded HTTP checks" in err
    rows = sqlite3.connect(db).execute("SELECT url, t FROM http_results").fetchall()
    by = {u: [t for uu, t in rows if uu == u] for u in (a, b, c)}
    assert by[a] and by[b] and by[c], (err[-2000:], {u: len(v) for u, v in by.items()})
    assert max(by[b]) < reload_at + 0.5  # b stopped at the reload (one may be in flight)
    assert min(by[c]) > reload_at - 0.1  # c started with it
    assert json.loads(out.splitlines()[-1])["targets"] == 0  # no ICMP target at all


def test_a_tls_handshake_that_never_comes_times_out_in_tls(special: Any) -> None:
    s = special("silent")  # accepts and reads the ClientHello, never answers it
    r = one(HttpCheck(s.url().replace("http://", "https://"), timeout_s=0.5))
    assert r.outcome is HttpOutcome.TIMEOUT and r.timeout_phase == "tls", (r.outcome, r.error)
    assert r.connect_ms is not None and r.tls_ms is None


def test_worker_processes_run_the_checks_and_the_parent_splits(nginx: Nginx) -> None:
    from fastping.httpworkers import HttpWorkerPool, check_from_json, check_to_json

    ca = str(nginx.certs["ca"])
    checks = [
        HttpCheck(nginx.url("https", f"/?w={i}", host=HOSTS[i % 2]), ca_file=ca, interval_s=0.5,
                  headers=(("X-Test", "1"),), labels=(("team", "web"),), body=b"")
        for i in range(8)
    ]  # fmt: skip
    assert check_from_json(check_to_json(checks[0])) == checks[0]
    got: list[HttpResult] = []

    async def go() -> HttpWorkerPool:
        pool = HttpWorkerPool(checks, 2, sinks=[got.extend], rtt_of=lambda a: 0.01)
        await pool.run(2.2)
        return pool

    pool = asyncio.run(go())
    assert {r.url for r in got} == {c.url for c in checks}
    assert all(r.outcome is HttpOutcome.OK and r.status == 200 for r in got)
    assert all(r.rtt_source == "icmp" and r.rtt_ms == 0.01 for r in got)  # the parent's RTT
    assert got[0].labels == (("team", "web"),) and got[0].cert_not_after == nginx.not_after["good"]
    assert pool.runs == len(got) >= 24  # 8 checks, every 0.5 s, over 2 s
