"""DNS targets everywhere a target goes (issue #18): the engine (dns://SERVER/NAME?type=T
slots of a DnsSocket, each answer's rcode and TC kept per probe), the config file (DNS
entries and resolvers x names matrices), the store (the question with the target, the
answers by rcode, a schema 3 file migrated), ``report`` and the metrics. Real servers:
unbound in a namespace the test makes (tests/dnsservers.py), a silent socket for
timeouts, a port nobody has for ICMP unreachable."""

# ruff: noqa: E501  (the tables of expected messages and lines read best one case a line)

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import child_env, fastping_cmd
from dnsservers import free_port, unbound
from fastping import dnscodec
from fastping.config import parse_config_text
from fastping.engine import MonitoringEngine
from fastping.errors import ConfigError, TargetError
from fastping.guard import ResourceGuard
from fastping.metrics import DNS_METRIC_NAMES, MetricsCollector
from fastping.results import Outcome, ProbeResult
from fastping.store import SCHEMA_VERSION, ResultStore
from privhelpers import in_netns, netns
from test_metrics import promtool_check
from test_store_pg import pg_server, pg_url  # noqa: F401 (fixtures: an initdb of our own)

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")

NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5


def _answer(r: ProbeResult) -> tuple[int, bool] | None:
    return dnscodec.read_answer_code(r.ttl)


# ------------------------------------------------------------------ identity, bad input


def test_the_answer_byte_round_trips_and_never_reads_as_no_answer() -> None:
    for rc in (0, 1, 2, 3, 5, 16, 23, 125, 126):
        for tc in (False, True):
            b = dnscodec.answer_code(rc, tc)
            assert 0 < b <= 255 and dnscodec.read_answer_code(b) == (rc, tc)
    assert dnscodec.read_answer_code(dnscodec.answer_code(4000)) == (126, False)  # clamped
    assert dnscodec.read_answer_code(0) is None and dnscodec.read_answer_code(None) is None
    assert dnscodec.rcode_name(3) == "NXDOMAIN" and dnscodec.rcode_name(23) == "RCODE23"


def test_a_dns_targets_identity_is_its_server_port_name_and_type() -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    e.add_target("dns://127.0.0.1:5353/a.test")  # type A by default
    e.add_target("dns://127.0.0.1:5353/a.test?type=aaaa")
    e.add_target("dns://127.0.0.1/a.test.")  # port 53, the root dot dropped
    e.add_target("dns://[::1]:5353/a.test?type=TYPE99")
    assert sorted(i.host for i in e.targets()) == [
        "dns://127.0.0.1/a.test?type=A",
        "dns://127.0.0.1:5353/a.test?type=A",
        "dns://127.0.0.1:5353/a.test?type=AAAA",
        "dns://[::1]:5353/a.test?type=TYPE99",
    ]
    info = e.target("dns://[::1]:5353/a.test?type=TYPE99")
    assert (info.kind, info.port, info.address) == ("dns", 5353, "::1")
    with pytest.raises(TargetError, match="already being watched"):
        e.add_target("dns://127.0.0.1:5353/a.test?type=A")
    e.remove_target("dns://127.0.0.1/a.test?type=A")
    assert "dns://127.0.0.1/a.test?type=A" not in e


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("dns://dns.example/a.test", {}, "not a numeric address"),
        ("dns://127.0.0.1/", {}, "no name to ask for"),
        ("dns://127.0.0.1/a.test?type=BOGUS", {}, "unknown DNS query type"),
        ("dns://127.0.0.1/a.test?class=IN", {}, "unknown parameter"),
        ("dns://127.0.0.1:0/a.test", {}, "port 0 is not 1..65535"),
        ("dns://127.0.0.1/a..test", {}, "empty label"),
        ("127.0.0.1", {"kind": "dns"}, "a DNS target is dns://SERVER"),
        ("dns://127.0.0.1/a.test", {"kind": "tcp", "port": 53}, "a DNS target is dns://"),
        ("dns://127.0.0.1/a.test", {"port": 53}, "a DNS target is dns://"),
    ],
)
def test_bad_dns_targets_say_what_to_write(text: str, kw: dict[str, Any], message: str) -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    with pytest.raises(TargetError, match=message):
        e.add_target(text, **kw)
    assert len(e) == 0


# ------------------------------------------------------------------ the config file


def test_config_dns_entries_and_a_resolvers_by_names_matrix() -> None:
    cfg = parse_config_text(
        "defaults: {interval_s: 0.5}\n"
        "targets:\n"
        "  - dns://127.0.0.1:5353/a.test\n"
        "  - {kind: dns, server: '::1', name: a.test, type: aaaa, labels: {site: lab}}\n"
        "dns:\n"
        "  servers: [127.0.0.1:5353, '[::1]:5353', 127.0.0.2]\n"
        "  names: [two.test, nx.test]\n"
        "  type: [A, MX]\n"
        "  interval_s: 2\n"
        "  labels: {role: resolver}\n"
    )
    got = [(t.label, cfg.target_settings(t)[0], t.labels) for t in cfg.targets]
    assert got[:2] == [
        ("dns://127.0.0.1:5353/a.test?type=A", 0.5, {}),
        ("dns://[::1]/a.test?type=AAAA", 0.5, {"site": "lab"}),
    ]
    matrix = [
        f"dns://{s}/{n}?type={t}"
        for s in ("127.0.0.1:5353", "[::1]:5353", "127.0.0.2")
        for n in ("two.test", "nx.test")
        for t in ("A", "MX")
    ]
    assert [g[0] for g in got[2:]] == matrix  # every server x name x type, in order
    assert all(g[1] == 2.0 and g[2] == {"role": "resolver"} for g in got[2:])
    # a list of matrices, each a mapping; one type as a string
    two = parse_config_text(
        "dns:\n  - {servers: [127.0.0.1], names: [a.test]}\n"
        "  - {servers: [127.0.0.2], names: [a.test, b.test], type: NS}\n"
    )
    assert [t.label for t in two.targets] == [
        "dns://127.0.0.1/a.test?type=A", "dns://127.0.0.2/a.test?type=NS",
        "dns://127.0.0.2/b.test?type=NS",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dns: {servers: [], names: [a.test]}", "dns[0].servers: [] is not allowed: List should have at least 1 item"),
        ("dns: {servers: [127.0.0.1], names: []}", "dns[0].names: [] is not allowed"),
        ("dns: {names: [a.test]}", "dns[0].servers: missing: required"),
        ("dns: {servers: [127.0.0.1, dns.example], names: [a.test]}",
         "dns[0].servers[1]: 'dns.example' is not allowed: not a DNS server: write an address, ADDR:PORT or [V6]:PORT"),
        ("dns: {servers: ['127.0.0.1:99999'], names: [a.test]}", "dns[0].servers[0]: '127.0.0.1:99999' is not allowed: not a DNS server"),
        ("dns: {servers: [127.0.0.1], names: [a.test, 'a..b']}", "dns[0].names[1]: 'a..b' is not allowed: not a DNS name: DNS name 'a..b' has an empty label"),
        ("dns: {servers: [127.0.0.1], names: [a.test], type: BOGUS}", "dns[0].type: 'BOGUS' is not allowed: unknown DNS query type 'BOGUS'"),
        ("dns: {servers: [127.0.0.1], names: [a.test], type: []}", "dns[0].type: [] is not allowed: give at least one type"),
        ("dns: {servers: [127.0.0.1], names: [a.test], port: 53}", "dns[0].port: unknown key; allowed keys here: servers, names, type"),
        ("dns: {servers: [127.0.0.1], names: [a.test], interval_s: 0}", "dns[0].interval_s: 0 is not allowed"),
        ("targets: [{kind: dns, server: 127.0.0.1}]", "targets[0]: {'kind': 'dns', 'server': '127.0.0.1'} is not allowed: a DNS target needs name"),
        ("targets: [{server: 127.0.0.1, name: a.test}]", "server, name and type are the keys of a DNS target: add kind: dns"),
        ("targets: [{kind: dns, host: 'dns://127.0.0.1/a', server: 127.0.0.1, name: a}]", "either host: dns://... or server/name/type, not both"),
        ("targets: [{host: 127.0.0.1, kind: dns}]", "a DNS target is dns://SERVER[:PORT]/NAME?type=T"),
        ("targets: [{kind: dns, server: dns.example, name: a.test}]", "the server 'dns.example' is not a numeric address"),
        ("targets: [dns://127.0.0.1/a.test]\ndns: {servers: [127.0.0.1], names: [a.test]}",
         "dns[0]: 'dns://127.0.0.1/a.test?type=A' is not allowed: asked already by targets[0] (<config>, line 2)"),
        ("dns:\n  - {servers: [127.0.0.1], names: [a.test]}\n  - {servers: [127.0.0.1], names: [a.test.]}",
         "dns[1]: 'dns://127.0.0.1/a.test?type=A' is not allowed: asked already by dns[0]"),
    ],
)  # fmt: skip
def test_bad_dns_config_is_refused_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config_text(text)
    assert expected in str(e.value), str(e.value)


# ------------------------------------------------------------------ the engine, for real


def _silent(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    """A bound UDP socket that never reads: queries to it time out."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


OUTCOMES_Q = {  # name, type -> what unbound answers (tests/dnsservers.py)
    ("a.test", "A"): (NOERROR, False),
    ("a.test", "AAAA"): (NOERROR, False),
    ("nx.test", "A"): (NXDOMAIN, False),
    ("x.lame", "A"): (SERVFAIL, False),
    ("x.refused.test", "A"): (REFUSED, False),
    ("big.test", "TXT"): (NOERROR, True),
}


async def _engine_run(port: int, closed: int, silent: int) -> tuple[Any, ...]:
    e = MonitoringEngine(interval_s=0.1, timeout_s=0.3, guard=ResourceGuard(None, None))
    want = {}
    for i, ((name, qtype), answer) in enumerate(OUTCOMES_Q.items()):
        server = "[::1]" if i % 2 else "127.0.0.1"  # both families, one socket each
        want[f"dns://{server}:{port}/{name}?type={qtype}"] = answer
    for t in want:
        e.add_target(t)
    unreach = f"dns://127.0.0.1:{closed}/a.test?type=A"
    timeout = f"dns://127.0.0.1:{silent}/a.test?type=A"
    e.add_target(unreach)
    e.add_target(timeout, timeout_s=0.2)
    e.add_target("127.0.0.1")  # pinged beside them
    metrics = MetricsCollector(e)
    sub = e.subscribe(100_000)
    await e.run(1.5, handle_signals=False)
    results = [ev.result for ev in sub.drain() if hasattr(ev, "result")]
    return e, want, unreach, timeout, results, metrics, metrics.render().decode()


@root
def test_engine_monitors_dns_targets_with_every_outcome_from_a_real_unbound() -> None:
    with netns() as ns:
        port = in_netns(ns, free_port)
        closed = in_netns(ns, free_port)
        with unbound(ns, port):

            def run() -> tuple[Any, ...]:
                with _silent() as quiet:
                    return asyncio.run(_engine_run(port, closed, quiet.getsockname()[1]))

            e, want, unreach, timeout, results, metrics, text = in_netns(ns, run)
    by: dict[str, Counter[Any]] = {}
    for r in results:
        dns = r.target.startswith("dns://") and r.outcome is Outcome.REPLY
        key = (r.outcome.value, _answer(r) if dns else None)
        by.setdefault(r.target, Counter())[key] += 1
    # every probe of each target has exactly its outcome, a reply its exact rcode / TC
    for t, answer in want.items():
        assert set(by[t]) == {("reply", answer)}, (t, by[t])
        assert by[t][("reply", answer)] >= 10
    assert set(by[unreach]) == {("unreachable", None)}
    assert set(by[timeout]) == {("timeout", None)}
    assert set(by["127.0.0.1"]) == {("reply", None)}  # ICMP keeps its TTL
    assert all(r.ttl == 64 for r in results if r.target == "127.0.0.1")
    # replies of any rcode carry an RTT; the target is up (it answers), state per target
    assert all(r.rtt_ms is not None and r.rtt_ms > 0 for r in results if r.target in want)
    info = {i.host: i for i in e.targets()}
    assert all(info[t].status == "up" and info[t].received == info[t].probes for t in want)
    assert info[timeout].status == "down" and info[timeout].received == 0
    assert info[unreach].status == "down" and info[unreach].last_outcome == "unreachable"
    st = e.stats()
    assert st["results"] == st["sent"] == len(results)
    # the metrics: kind, port, server, name and type labels; answers by rcode; TC apart
    promtool_check(text)
    lines = text.splitlines()
    for t, (rc, tc) in want.items():
        kt_host, _, rest = t[len("dns://"):].partition("/")
        name, qtype = rest.split("?type=")
        host = kt_host.rsplit(":", 1)[0].strip("[]")
        lab = (
            f'ip="{host}",host="{host}",source="",tos="0",kind="dns",port="{port}",'
            f'server="{kt_host}",name="{name}",type="{qtype}"'
        )
        n = by[t][("reply", (rc, tc))]
        assert f'fastping_dns_answers_total{{{lab},rcode="{dnscodec.rcode_name(rc)}"}} {n}' in lines
        assert f"fastping_dns_truncated_total{{{lab}}} {n if tc else 0}" in lines
        assert f"smokeping_response_duration_seconds_count{{{lab}}} {n}" in lines
        assert f"smokeping_response_ttl{{{lab}}} 0" in lines  # not the answer byte
    assert (
        'smokeping_requests_total{ip="127.0.0.1",host="127.0.0.1",source="",tos="0",'
        f'kind="icmp",port="",server="",name="",type=""}} {by["127.0.0.1"][("reply", None)]}'
    ) in lines
    assert f'port="{closed}",server="127.0.0.1:{closed}",name="a.test",type="A",outcome="unreachable"}} ' in text
    assert all(any(ln.startswith(n + "{") for ln in lines) for n in DNS_METRIC_NAMES)
    # the generic prometheus_client path gives the same samples
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    reg = CollectorRegistry()
    reg.register(metrics)

    def samples(t: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(t)
            if f.name.startswith(("smokeping_requests", "fastping_dns", "fastping_results"))
            for s in f.samples
        }

    assert samples(generate_latest(reg).decode()) == samples(text)


def test_a_dns_target_added_to_a_run_without_dns_labels_keeps_its_whole_url_as_host() -> None:
    e = MonitoringEngine(guard=ResourceGuard(None, None))
    e.add_target("tcp://127.0.0.1:22")
    m = MetricsCollector(e, attach=False)
    e.add_target("dns://127.0.0.1:5353/a.test")
    e.add_target("dns://127.0.0.1:5353/b.test")
    m.observe([ProbeResult("dns://127.0.0.1:5353/a.test?type=A", "127.0.0.1", 0, Outcome.REPLY,
                           0.1, dnscodec.answer_code(3))])  # fmt: skip
    text = m.render().decode()
    assert (
        'fastping_dns_answers_total{ip="127.0.0.1",host="dns://127.0.0.1:5353/a.test?type=A",'
        'source="",tos="0",kind="dns",port="5353",rcode="NXDOMAIN"} 1'
    ) in text.splitlines()
    with pytest.raises(ConfigError, match="'name' cannot be a Prometheus label"):
        e2 = MonitoringEngine(guard=ResourceGuard(None, None))
        e2.add_target("dns://127.0.0.1/a.test", labels={"name": "x"})
        MetricsCollector(e2, attach=False)


# ------------------------------------------------------------------ monitor, store, report


def _scrape_in(ns: str, port: int, want: str) -> str:
    deadline = time.monotonic() + 20
    text = ""
    while want not in text:
        assert time.monotonic() < deadline, text

        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        try:
            text = in_netns(ns, get)
        except OSError:
            time.sleep(0.2)
    return text


@root
def test_monitor_a_resolver_matrix_into_the_store_report_and_metrics(tmp_path: Path) -> None:
    db = tmp_path / "dns.db"
    cfg = tmp_path / "dns.yaml"
    with netns() as ns:
        port = in_netns(ns, free_port)
        closed = in_netns(ns, free_port)
        mport = in_netns(ns, free_port)
        cfg.write_text(
            "defaults: {interval_s: 0.2, timeout_s: 0.5}\nstore: {chunk_s: 1}\n"
            "targets:\n"
            f"  - {{kind: dns, server: '127.0.0.1:{port}', name: big.test, type: TXT}}\n"
            f"  - dns://127.0.0.1:{closed}/a.test\n"
            "dns:\n"
            f"  servers: ['127.0.0.1:{port}', '[::1]:{port}']\n"
            "  names: [a.test, nx.test, x.refused.test]\n"
        )
        with unbound(ns, port):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *fastping_cmd(
                    "monitor", "-C", str(cfg), "--db", str(db), "--table", "never",
                    "--log-level", "ERROR", "--metrics", f"127.0.0.1:{mport}", "-d", "4",
                )],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
            )  # fmt: skip
            try:
                scraped = _scrape_in(ns, mport, 'rcode="NXDOMAIN"} ')
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    matrix = [f"dns://{s}:{port}/{n}?type=A" for s in ("127.0.0.1", "[::1]")
              for n in ("a.test", "nx.test", "x.refused.test")]  # fmt: skip
    big, down = f"dns://127.0.0.1:{port}/big.test?type=TXT", f"dns://127.0.0.1:{closed}/a.test?type=A"
    store = ResultStore(db)
    assert sorted(store.targets()) == sorted([*matrix, big, down])
    want = {t: (NOERROR if "/a.test" in t else NXDOMAIN if "/nx." in t else REFUSED, False)
            for t in matrix}  # fmt: skip
    want[big] = (NOERROR, True)
    got: dict[str, Counter[Any]] = {
        t: Counter((r.outcome.value, _answer(r)) for r in store.recent(t, 1000))
        for t in store.targets()
    }
    for t, answer in want.items():
        assert set(got[t]) == {("reply", answer)}, (t, got[t])
        assert got[t][("reply", answer)] >= 8
    assert set(got[down]) == {("unreachable", None)}
    assert summary["stored"] == summary["results"] == sum(sum(c.values()) for c in got.values())
    # the store: kind, the server's port and the question with each target
    with sqlite3.connect(db) as c:
        rows = {n: rest for n, *rest in c.execute("SELECT name, kind, port, qname, qtype FROM targets")}
        version = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(SCHEMA_VERSION) == "4"
    assert rows[big] == ["dns", port, "big.test", "TXT"]
    assert rows[down] == ["dns", closed, "a.test", "A"]
    assert rows[matrix[4]] == ["dns", port, "nx.test", "A"]
    answers = store.dns_answers()
    for t, (rc, tc) in want.items():
        n = got[t][("reply", (rc, tc))]
        assert answers[t] == {"answers": n, "truncated": n if tc else 0,
                              "rcodes": {dnscodec.rcode_name(rc): n}}  # fmt: skip
    assert down not in answers
    # the endpoint, scraped while it ran: the matrix's series with their rcodes
    promtool_check(scraped)
    assert f'server="[::1]:{port}",name="nx.test",type="A",rcode="NXDOMAIN"}} ' in scraped
    assert f'server="127.0.0.1:{port}",name="x.refused.test",type="A",rcode="REFUSED"}} ' in scraped
    # report: a DNS table with its rcode columns; JSON with the question and rcodes
    html = tmp_path / "dns.html"
    rep = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--html", str(html)),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert f"<h2>{big}</h2>".replace("&", "&amp;") in html.read_text()
    lines = rep.stdout.splitlines()
    from fastping.commands.report import KIND_TITLES

    head = lines.index(f"{KIND_TITLES['dns']}: {len(want) + 1} targets")
    assert lines[head + 1].split() == [
        "SERVER", "NAME", "TYPE", "SENT", "RECV", "NOERRO", "NXDOMA", "SERVFA", "REFUSE",
        "OTHER", "TC", "TIMEOUT", "UNREACH", "LOSS", "MIN", "AVG", "MAX", "P50", "P95", "P99",
    ]  # fmt: skip
    rows_txt = {tuple(ln.split()[:3]): ln.split() for ln in lines[head + 2 : head + 3 + len(want)]}
    nx = got[matrix[4]][("reply", (NXDOMAIN, False))]
    assert rows_txt[(f"[::1]:{port}", "nx.test", "A")][3:14] == [
        str(nx), str(nx), "0", str(nx), "0", "0", "0", "0", "0", "0", "0.0%"]  # fmt: skip
    nb = got[big][("reply", (NOERROR, True))]
    assert rows_txt[(f"127.0.0.1:{port}", "big.test", "TXT")][3:11] == [
        str(nb), str(nb), str(nb), "0", "0", "0", "0", str(nb)]  # fmt: skip
    nd = got[down][("unreachable", None)]
    assert rows_txt[(f"127.0.0.1:{closed}", "a.test", "A")][3:14] == [
        str(nd), "0", "0", "0", "0", "0", "0", "0", "0", str(nd), "100.0%"]  # fmt: skip
    js = subprocess.run(
        fastping_cmd("report", "--db", str(db), "--since", "all", "--json"),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    recs = {d["target"]: d for d in map(json.loads, js.stdout.splitlines())}
    r = recs[matrix[5]]
    assert (r["kind"], r["port"], r["server"], r["name"], r["type"]) == (
        "dns", port, f"[::1]:{port}", "x.refused.test", "A")  # fmt: skip
    assert r["rcodes"] == {"REFUSED": r["received"]} and r["truncated"] == 0
    assert recs[big]["truncated"] == recs[big]["received"] == nb
    assert "rcodes" not in recs[down]  # no answers, no rcodes


@root
def test_monitor_takes_dns_targets_from_the_command_line_and_a_file(tmp_path: Path) -> None:
    db, listed = tmp_path / "c.db", tmp_path / "targets.txt"
    with netns() as ns:
        port = in_netns(ns, free_port)
        listed.write_text(f"# resolvers\ndns://[::1]:{port}/nx.test?type=AAAA  127.0.0.1\n")
        with unbound(ns, port):
            r = subprocess.run(
                ["ip", "netns", "exec", ns, *fastping_cmd(
                    "monitor", "--table", "never", "--log-level", "ERROR", "--db", str(db),
                    "-i", "0.2", "-t", "0.5", "-d", "1.5", "-f", str(listed),
                    f"dns://127.0.0.1:{port}/a.test?type=AAAA",
                )],
                capture_output=True, text=True, env=child_env(), timeout=120,
            )  # fmt: skip
    assert r.returncode == 0, r.stderr
    store = ResultStore(db)
    got = {t: {(x.outcome.value, _answer(x) if t.startswith("dns") else None)
               for x in store.recent(t, 1000)} for t in store.targets()}  # fmt: skip
    assert got == {
        f"dns://127.0.0.1:{port}/a.test?type=AAAA": {("reply", (NOERROR, False))},
        f"dns://[::1]:{port}/nx.test?type=AAAA": {("reply", (NXDOMAIN, False))},
        "127.0.0.1": {("reply", None)},
    }


@root
def test_sighup_reloads_the_dns_matrix_and_the_endpoint_follows(tmp_path: Path) -> None:
    import signal

    db, cfg = tmp_path / "h.db", tmp_path / "h.yaml"
    head = "defaults: {interval_s: 0.2, timeout_s: 0.5}\nstore: {chunk_s: 1}\n"
    with netns() as ns:
        port = in_netns(ns, free_port)
        mport = in_netns(ns, free_port)
        matrix = f"dns: {{servers: ['127.0.0.1:{port}'], names: [{{names}}]}}\n"
        cfg.write_text(head + matrix.replace("{names}", "a.test"))
        with unbound(ns, port):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *fastping_cmd(
                    "monitor", "-C", str(cfg), "--db", str(db), "--table", "never",
                    "--log-level", "ERROR", "--metrics", f"127.0.0.1:{mport}", "-d", "30",
                )],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
            )  # fmt: skip
            try:
                _scrape_in(ns, mport, 'name="a.test",type="A",rcode="NOERROR"}')
                cfg.write_text(head + matrix.replace("{names}", "nx.test, x.refused.test"))
                proc.send_signal(signal.SIGHUP)
                after = _scrape_in(ns, mport, 'name="x.refused.test",type="A",rcode="REFUSED"}')
                after = _scrape_in(ns, mport, 'name="nx.test",type="A",rcode="NXDOMAIN"}')
                assert 'name="a.test"' not in after  # removed: its series gone
                proc.send_signal(signal.SIGINT)
                _out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert proc.returncode == 0, err
    got = {t: {(r.outcome.value, _answer(r)) for r in ResultStore(db).recent(t, 1000)}
           for t in ResultStore(db).targets()}  # fmt: skip
    assert got == {
        f"dns://127.0.0.1:{port}/a.test?type=A": {("reply", (NOERROR, False))},
        f"dns://127.0.0.1:{port}/nx.test?type=A": {("reply", (NXDOMAIN, False))},
        f"dns://127.0.0.1:{port}/x.refused.test?type=A": {("reply", (REFUSED, False))},
    }


# ------------------------------------------------------------------ schema 3 -> 4


def _schema3_db(db: Path) -> None:
    """A schema 3 file: today's layout without what schema 4 added."""

    async def make() -> None:
        s = ResultStore(db)
        await s.start()
        now = time.time()
        s.submit([ProbeResult("127.0.0.1", "127.0.0.1", i, Outcome.REPLY, 0.1, 64, time=now + i)
                  for i in range(3)])  # fmt: skip
        s.submit([ProbeResult("tcp://127.0.0.1:22", "127.0.0.1", 0, Outcome.CLOSED, 0.05, 64,
                              time=now)])  # fmt: skip
        await s.close()

    asyncio.run(make())
    with sqlite3.connect(db) as c:
        c.execute("ALTER TABLE targets DROP COLUMN qname")
        c.execute("ALTER TABLE targets DROP COLUMN qtype")
        c.execute("DROP TABLE dns_answers")
        c.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def test_a_schema_3_database_stays_readable_and_is_migrated_by_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    _schema3_db(db)
    os.chmod(db, 0o444)
    before = ResultStore(db).all_stats(None, None)
    assert [(s["target"], s["sent"], s["received"]) for s in before] == [
        ("127.0.0.1", 3, 3), ("tcp://127.0.0.1:22", 1, 0)]  # fmt: skip
    assert ResultStore(db).target_kinds() == {"127.0.0.1": ("icmp", 0),
                                              "tcp://127.0.0.1:22": ("tcp", 22)}  # fmt: skip
    assert ResultStore(db).dns_answers() == {}  # read through the views
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone()[0] == "3"  # untouched
    os.chmod(db, 0o644)
    t = "dns://127.0.0.1:5353/a.test?type=AAAA"

    async def write() -> None:
        s = ResultStore(db)
        await s.start()
        now = time.time()
        s.submit([
            ProbeResult(t, "127.0.0.1", 0, Outcome.REPLY, 0.2, dnscodec.answer_code(0), time=now),
            ProbeResult(t, "127.0.0.1", 1, Outcome.REPLY, 0.3, dnscodec.answer_code(2), time=now),
            ProbeResult(t, "127.0.0.1", 2, Outcome.TIMEOUT, None, None, time=now),
        ])  # fmt: skip
        await s.close()

    asyncio.run(write())
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
        cols = c.execute("SELECT name, kind, port, qname, qtype FROM targets ORDER BY id").fetchall()
    assert cols == [("127.0.0.1", "icmp", 0, None, None), ("tcp://127.0.0.1:22", "tcp", 22, None, None),
                    (t, "dns", 5353, "a.test", "AAAA")]  # fmt: skip
    after = {s["target"]: s for s in ResultStore(db).all_stats(None, None)}
    for s in before:
        assert {k: after[s["target"]][k] for k in s} == s
    assert (after[t]["sent"], after[t]["received"], after[t]["timeouts"]) == (3, 2, 1)
    assert ResultStore(db).dns_answers() == {
        t: {"answers": 2, "truncated": 0, "rcodes": {"NOERROR": 1, "SERVFAIL": 1}}}  # fmt: skip


# ------------------------------------------------------------------ names through DnsResolver


def _resolve_all(port: int, closed: int, silent: int) -> dict[str, Any]:
    from fastping.dnsresolve import DnsResolver, ResolveError

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        r4 = DnsResolver("127.0.0.1", port, timeout_s=0.5)
        r6 = DnsResolver("::1", port, timeout_s=0.5)
        for key, res, name, fam in (
            ("a", r4, "a.test", 0), ("a6", r6, "a.test", socket.AF_INET6),
            ("two", r4, "two.test", socket.AF_INET), ("nx", r4, "nx.test", 0),
            ("refused", r6, "x.refused.test", 0), ("txt_only", r4, "big.test", 0),
            ("closed", DnsResolver("127.0.0.1", closed, timeout_s=0.5), "a.test", 0),
            ("silent", DnsResolver("127.0.0.1", silent, timeout_s=0.2), "a.test", 0),
        ):  # fmt: skip
            try:
                got = await res(name, fam)
                out[key] = (list(got), got.ttl_s)
            except ResolveError as e:
                out[key] = str(e)
        # many at once on the one socket
        many = await asyncio.gather(*(r4("A.Test", socket.AF_INET) for _ in range(300)))
        out["many"] = {(tuple(m), m.ttl_s) for m in many}
        out["stats"] = r4.stats()
        for r in (r4, r6):
            r.close()
        return out

    with _silent() as quiet:
        del silent
        silent = quiet.getsockname()[1]
        res = asyncio.run(main())
        res["silent_port"] = silent
        return res


@root
def test_dns_resolver_answers_names_from_a_real_unbound_with_their_ttl() -> None:
    with netns() as ns:
        port = in_netns(ns, free_port)
        closed = in_netns(ns, free_port)
        with unbound(ns, port):
            got = in_netns(ns, lambda: _resolve_all(port, closed, 0))
    # A first when the family is open; AAAA asked for AF_INET6; the record's TTL
    assert got["a"] == ([(socket.AF_INET, "192.0.2.1")], 300.0)
    assert got["a6"] == ([(socket.AF_INET6, "2001:db8::1")], 300.0)
    assert got["two"][1] == 60.0  # the smaller TTL of its two records
    assert got["two"][0][0] in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET, "192.0.2.2"))
    assert got["nx"] == f"cannot resolve 'nx.test': NXDOMAIN from 127.0.0.1:{port}"
    assert got["refused"] == f"cannot resolve 'x.refused.test': REFUSED from [::1]:{port}"
    assert got["txt_only"] == f"cannot resolve 'big.test': no AAAA record for 'big.test' at 127.0.0.1:{port}"
    assert got["closed"].startswith(f"cannot resolve 'a.test': 127.0.0.1:{closed} is unreachable (ICMP 3/3 from 127.0.0.1)")
    assert got["silent"] == (
        f"cannot resolve 'a.test': no answer from 127.0.0.1:{got['silent_port']} within 0.2 s (2 tries)"
    )
    assert got["many"] == {(((socket.AF_INET, "192.0.2.1"),), 300.0)}
    st = got["stats"]
    # every question answered at its first try (300 slots asking one question: IDs
    # shared by chance never hand an answer to the wrong slot, test_dns)
    assert st["answers"] == st["queries"] == 300 + 5 and st["timeouts"] == 0, st
    assert st["failures"] == 2  # nx.test and big.test (no address of either type)


class _Responder:
    """A scripted DNS server: ``h.test`` A answers with TTL 1, 127.0.0.2 for the first
    ``switch_after`` queries and 127.0.0.3 after; any other name NXDOMAIN."""

    def __init__(self, switch_after: int) -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.switch_after = switch_after
        self.asked: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import dns.message

        from dnsservers import respond

        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text()
            self.asked[name] += 1
            if name == "h.test.":
                addr = "127.0.0.2" if self.asked[name] <= self.switch_after else "127.0.0.3"
                self.sock.sendto(respond(data, answers=[(name, 1, "A", addr)]), peer)
            else:
                self.sock.sendto(respond(data, rcode=3), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _ttl_run() -> tuple[Any, ...]:
    from fastping.dnsresolve import DnsResolver

    srv = _Responder(switch_after=2)
    try:
        resolver = DnsResolver("127.0.0.1", srv.port, timeout_s=0.5)

        async def main() -> tuple[Any, ...]:
            # the default interval (300 s) would not re-resolve within the run: the TTL does
            e = MonitoringEngine(interval_s=0.1, timeout_s=0.3, guard=ResourceGuard(None, None),
                                 resolver=resolver)  # fmt: skip
            e.add_target("h.test")
            e.add_target("nope.test")
            sub = e.subscribe(100_000)
            await e.run(3.6, handle_signals=False)
            res = [ev.result for ev in sub.drain() if hasattr(ev, "result")]
            return res, e.target("h.test"), e.target("nope.test"), resolver.stats()

        out = asyncio.run(main())
        resolver.close()
    finally:
        srv.close()
    return (*out, dict(srv.asked))


@root
def test_engine_re_resolves_a_name_through_the_resolver_when_its_ttl_runs_out() -> None:
    with netns() as ns:
        results, h, nope, stats, asked = in_netns(ns, _ttl_run)
    # TTL 1 s over a 3.6 s run: asked about every second (not every 300 s)
    assert 3 <= asked["h.test."] <= 6, asked
    by_addr = Counter((r.address, r.outcome.value) for r in results if r.target == "h.test")
    assert set(by_addr) == {("127.0.0.2", "reply"), ("127.0.0.3", "reply")}, by_addr
    assert by_addr[("127.0.0.3", "reply")] >= 5
    assert h.address == "127.0.0.3" and h.status == "up"
    # a name the server says does not exist: resolve_error results, never a crash
    nx = Counter(r.outcome.value for r in results if r.target == "nope.test")
    assert set(nx) == {"resolve_error"} and nope.status == "error"
    assert asked["nope.test."] == sum(nx.values()) and stats["failures"] >= 1
    assert stats["queries"] == sum(asked.values())


@root
def test_monitor_resolves_names_through_the_configured_resolver(tmp_path: Path) -> None:
    db, cfg = tmp_path / "r.db", tmp_path / "r.yaml"
    with netns() as ns:
        srv = in_netns(ns, lambda: _Responder(switch_after=1))
        try:
            cfg.write_text(
                f"defaults: {{interval_s: 0.2, timeout_s: 0.5}}\nresolver: '127.0.0.1:{srv.port}'\n"
                "targets: [h.test]\n"
            )
            r = subprocess.run(
                ["ip", "netns", "exec", ns, *fastping_cmd(
                    "monitor", "-C", str(cfg), "--db", str(db), "--table", "never",
                    "--log-level", "ERROR", "-d", "2.5",
                )],
                capture_output=True, text=True, env=child_env(), timeout=120,
            )  # fmt: skip
        finally:
            srv.close()
    assert r.returncode == 0, r.stderr
    got = Counter((x.address, x.outcome.value) for x in ResultStore(db).recent("h.test", 1000))
    # h.test is no name the system resolves: every address came from the responder
    assert set(got) == {("127.0.0.2", "reply"), ("127.0.0.3", "reply")}, got
    assert srv.asked["h.test."] >= 2


def test_resolver_settings_are_checked() -> None:
    from fastping.dnsresolve import DnsResolver, parse_server

    assert parse_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    assert parse_server("::1") == ("::1", 53)
    with pytest.raises(ConfigError, match="a host name is refused"):
        parse_server("dns.example")
    with pytest.raises(ConfigError, match="not a numeric address"):
        DnsResolver("dns.example")
    with pytest.raises(ConfigError, match="timeout_s"):
        DnsResolver("127.0.0.1", timeout_s=0)
    assert parse_config_text("resolver: '127.0.0.1:5353'").resolver == "127.0.0.1:5353"
    with pytest.raises(ConfigError, match="resolver: 'dns.example' is not allowed: resolver"):
        parse_config_text("resolver: dns.example")


def test_postgresql_store_keeps_the_question_and_each_agents_answers_by_rcode(
    pg_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    import psycopg

    from fastping.store_pg import PgResultStore

    t = "dns://127.0.0.1:5353/a.test?type=AAAA"
    now = time.time()

    async def write(agent: str, codes: list[int | None]) -> None:
        store = PgResultStore(pg_url, agent=agent)
        await store.start()
        store.submit([
            ProbeResult(t, "127.0.0.1", i, Outcome.REPLY if c is not None else Outcome.TIMEOUT,
                        0.2 if c is not None else None, c, time=now + i * 0.01)
            for i, c in enumerate(codes)
        ])  # fmt: skip
        assert await store.flush(30)
        await store.close()

    ok, nx, tc = dnscodec.answer_code(0), dnscodec.answer_code(3), dnscodec.answer_code(0, True)
    asyncio.run(write("a1", [ok, ok, nx, None]))
    asyncio.run(write("a2", [tc, nx]))
    with psycopg.connect(pg_url) as c:
        cols = c.execute("SELECT DISTINCT kind, port, qname, qtype FROM fastping_targets").fetchall()
    assert cols == [("dns", 5353, "a.test", "AAAA")]
    reader = PgResultStore(pg_url)
    try:
        assert reader.dns_answers() == {
            (t, "a1"): {"answers": 3, "truncated": 0, "rcodes": {"NOERROR": 2, "NXDOMAIN": 1}},
            (t, "a2"): {"answers": 2, "truncated": 1, "rcodes": {"NOERROR": 1, "NXDOMAIN": 1}},
        }
    finally:
        reader.close_reader()
    js = subprocess.run(
        fastping_cmd("report", "--db", pg_url, "--since", "all", "--json"),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert js.returncode == 0, js.stderr
    recs = {d["agent"]: d for d in map(json.loads, js.stdout.splitlines())}
    assert (recs["a1"]["rcodes"], recs["a1"]["timeouts"]) == ({"NOERROR": 2, "NXDOMAIN": 1}, 1)
    assert (recs["a2"]["rcodes"], recs["a2"]["truncated"]) == ({"NOERROR": 1, "NXDOMAIN": 1}, 1)
    txt = subprocess.run(
        fastping_cmd("report", "--db", pg_url, "--since", "all"),
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert txt.returncode == 0, txt.stderr
    rows = [ln.split() for ln in txt.stdout.splitlines() if ln.startswith("127.0.0.1:5353")]
    assert [r[:12] for r in rows] == [
        ["127.0.0.1:5353", "a1", "a.test", "AAAA", "4", "3", "2", "1", "0", "0", "0", "0"],
        ["127.0.0.1:5353", "a2", "a.test", "AAAA", "2", "2", "1", "1", "0", "0", "0", "1"],
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
