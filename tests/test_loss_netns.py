"""Loss patterns and outages, end to end: `fastping monitor` in a namespace probes
targets in another, where a responder of our own answers and drops replies in
known patterns (tests/netns_loss.py); `fastping report` then reads the patterns
and the outages back from the store.

Time is scaled by the probe interval: 20 ms instead of 1 s, so "a 30 s outage"
is 30 probes (0.6 s) here, and a 150-probe one (3 s) is there too.

Tolerances: the measured drop sequence must equal the responder's exactly (both
are keyed by ICMP sequence number), so the parameters measured equal those of the
realised sequence exactly; against the generating model's parameters the
tolerance is about 3 standard errors for ~1,000 probes (stated at each assert).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netns_loss as scenario
from conftest import child_env
from fastping.loss import LossTracker
from fastping.store import ResultStore

pytestmark = [pytest.mark.privileged]

INTERVAL = 0.02
TIMEOUT = 0.2
DURATION = 20.0
MIN_LOST = 3


@pytest.fixture
def topo() -> Iterator[scenario.Topo]:
    why = scenario.can_run()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the namespace tests: {why}")
        pytest.skip(why)
    with scenario.topology() as t:
        yield t
    assert t.mon_ns not in scenario._ip("netns", "list").stdout


def monitor(t: scenario.Topo, db: Path, targets: list[str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        t.mon(sys.executable, "-m", "fastping.cli", "monitor", "--table", "never",
              *targets, "--interval", str(INTERVAL), "--timeout", str(TIMEOUT),
              "--db", str(db), "--mode", "raw", "--max-cpu-percent", "0",
              "--outage-after", str(MIN_LOST), *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip


def report(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastping.cli", "report", "--db", str(db), "--since", "all", *args],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip


def truth_stats(recs: list[tuple[int, float, bool]]) -> dict[str, Any]:
    """The loss pattern of the responder's own drop sequence, by the same definitions."""
    tr = LossTracker()
    codes = bytes(1 if d else 0 for _, _, d in recs)
    tr.feed("x", [a for _, a, _ in recs], [0.1] * len(recs), [q for q, _, _ in recs], codes, 0.0)
    tr.settle()
    st = tr.stats("x")
    assert st is not None
    return st.to_dict()


def test_known_patterns_measured(topo: scenario.Topo, tmp_path: Path) -> None:
    db = tmp_path / "loss.db"
    truth_file = tmp_path / "truth.json"
    addrs = list(scenario.TARGETS.values())
    hooks = tmp_path / "hooks.jsonl"
    with scenario.responder(topo, truth_file), scenario.webhook_sink(topo, 18021, hooks):
        proc = monitor(topo, db, addrs, "--duration", str(DURATION),
                       "--outage-webhook", "http://127.0.0.1:18021/outage")  # fmt: skip
        out, err = proc.communicate(timeout=DURATION + 60)
    assert proc.returncode == 0, err[-3000:]
    truth = scenario.read_truth(truth_file)
    name_of = {a: n for n, a in scenario.TARGETS.items()}

    # 1. the measured drop sequence is the responder's, probe by probe
    logs = ResultStore(db).probe_log()
    for addr in addrs:
        t, rtt, seq, code = logs[addr]
        lost = {q for q, c in zip(seq, code, strict=True) if c == 1}
        got = {q for q, c in zip(seq, code, strict=True) if c == 0}
        want_lost = {q for q, _, d in truth[addr] if d}
        assert len(truth[addr]) >= 0.9 * DURATION / INTERVAL, (addr, len(truth[addr]))
        assert lost == want_lost, (name_of[addr], sorted(lost ^ want_lost)[:20])
        assert got | lost == {q for q, _, _ in truth[addr]}

    # 2. the report's loss patterns
    r = report(db, "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["target"]: d for d in map(json.loads, r.stdout.splitlines())}
    lp = {name_of[a]: rows[a]["loss_pattern"] for a in addrs}
    for name, addr in scenario.TARGETS.items():
        want = truth_stats(truth[addr])
        for k in ("lost", "bursts", "burst_hist", "max_burst", "rfc3611_bursts"):
            assert lp[name][k] == want[k], (name, k, lp[name][k], want[k])
        for k in ("gilbert_p", "gilbert_r", "burst_density", "gap_density"):
            a, b = lp[name][k], want[k]
            assert (a is None and b is None) or math.isclose(a, b, abs_tol=1e-9), (name, k, a, b)

    # random 5 %: ~1,000 probes, standard error 0.7 points -> +-2.5 points
    rnd = lp["random"]
    assert abs(rnd["loss"] - scenario.RANDOM_LOSS) < 0.025, rnd
    assert abs(rnd["gilbert_p"] - scenario.RANDOM_LOSS) < 0.025, rnd  # independent: p = L
    assert abs(rnd["gilbert_r"] - (1 - scenario.RANDOM_LOSS)) < 0.1, rnd  # r = 1 - L
    # bursts of exactly 10, once per 100 probes (the run may stop inside the last one)
    b = lp["bursts"]
    others = sum(v for k, v in b["burst_hist"].items() if k != str(scenario.BURST_LEN))
    assert others <= 1 and b["max_burst"] == scenario.BURST_LEN, b
    assert b["bursts"] >= 8 and b["burst_density"] == 1.0 and b["gap_density"] == 0.0, b
    # Gilbert p = 0.10, r = 0.40: ~80 transitions each way, standard error ~11 % -> +-40 %
    g = lp["gilbert"]
    assert abs(g["gilbert_p"] - scenario.GILBERT_P) < 0.4 * scenario.GILBERT_P, g
    assert abs(g["gilbert_r"] - scenario.GILBERT_R) < 0.4 * scenario.GILBERT_R, g
    assert abs(g["mean_burst"] - 1 / scenario.GILBERT_R) < 0.4 / scenario.GILBERT_R, g
    # Gilbert-Elliott (K = 1 % in good, H = 60 % in bad): RFC 3611 densities; few bad
    # periods in 1,000 probes, so wide bounds: bursts dense, gaps near K
    ge = lp["ge"]
    assert ge["burst_density"] is not None and 0.3 < ge["burst_density"] <= 1.0, ge
    assert ge["gap_density"] is not None and ge["gap_density"] < 4 * scenario.GE_K + 0.01, ge
    c = lp["clean"]
    assert c["lost"] == 0 and c["bursts"] == 0, c

    # 3. outages: every one found, start and end within one interval, none invented.
    # A lost probe's send time is not logged (its record is written at expiry): the
    # start is the last reply's send + the interval, early by as much as the prober
    # was late to send the lost one; so the start may also be off by the prober's own
    # lateness in this run (it records it: kernel TX timestamps against the schedule;
    # a busy CI machine makes it tens of ms at a 20 ms interval). The end is a reply's
    # kernel send time.
    from fastping.timing import read_windows_with_guard

    late_s = (read_windows_with_guard(str(db), None, None)[0].max_ns or 0) / 1e9
    stored = ResultStore(db).outages()
    assert all(o.kind == "target" for o in stored), stored  # our network stayed up
    for addr in addrs:
        want = scenario.truth_outages(truth[addr], MIN_LOST)
        got = sorted((o for o in stored if o.target == addr), key=lambda o: o.start)
        assert len(got) == len(want), (name_of[addr], got, want)
        for o, (a, b, n) in zip(got, want, strict=True):
            assert o.lost == n, (o, n)
            assert abs(o.start - a) < INTERVAL + late_s, (name_of[addr], o.start - a, late_s)
            if b is None:  # still going on when the monitor stopped
                assert o.end is None, o
            else:
                assert o.end is not None and abs(o.end - b) < INTERVAL, (o, b)
    outs = [o for o in stored if o.target == scenario.TARGETS["outages"]]
    # the two windows: 30 probes (0.6 s) and 150 (3 s); the two lone drops are not one
    assert [round(o.duration_s, 1) for o in outs] == [0.6, 3.0], outs
    assert not any(o.target == scenario.TARGETS["clean"] for o in stored)
    assert "outage started" in err and "outage ended" in err
    # and the webhook got each start and each end, the same as the table
    posted = [json.loads(x) for x in hooks.read_text().splitlines()]
    ends = {(d["target"], d["start"]) for d in posted if d["event"] == "outage_end"}
    starts = {(d["target"], d["start"]) for d in posted if d["event"] == "outage_start"}
    assert starts == {(o.target, round(o.start, 3)) for o in stored}
    assert ends == {(o.target, round(o.start, 3)) for o in stored if o.end is not None}

    # 4. shown: the text report lists them, the HTML marks them on the charts
    html = tmp_path / "r.html"
    r = report(db, "--html", str(html))
    assert r.returncode == 0, r.stderr
    assert "GILBERT_P" in r.stdout and "outages: " in r.stdout
    big = max(outs, key=lambda o: o.lost)
    listed = report(db, "--outages").stdout.splitlines()
    assert any(ln.startswith(f"  {big.target} ") and f"lost {big.lost} " in ln for ln in listed)
    assert len([ln for ln in listed if ln.startswith("  10.")]) == len(stored)
    page = html.read_text()
    # each outage a band on its target's chart (all six are charted), none of ours
    assert page.count('<rect class="outage"') == len(stored) and "<h2>Outages</h2>" in page
    assert page.count('<rect class="ouroutage"') == 0
    r = report(db, "--outages", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len([x for x in lines if x.get("target") == scenario.TARGETS["outages"]]) == 2
    # the lossy targets share 10.213.1.0/24: outages starting together are incidents
    inc = [x["incident"] for x in lines if "incident" in x]
    assert inc and all(i["network"] == "10.213.1.0/24" and len(i["targets"]) >= 2 for i in inc)


def test_local_link_drop_is_our_outage(topo: scenario.Topo, tmp_path: Path) -> None:
    db = tmp_path / "local.db"
    truth_file = tmp_path / "truth.json"
    clean = scenario.TARGETS["clean"]
    with scenario.responder(topo, truth_file):
        proc = monitor(topo, db, [clean], "--netstate", "--duration", "7")
        try:
            time.sleep(2.5)
            down_at = time.time()
            topo.link(up=False)
            time.sleep(2.0)
            up_at = time.time()
            topo.link(up=True)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode in (0, 1), err[-3000:]
    stored = ResultStore(db).outages()
    ours = [o for o in stored if o.kind == "local"]
    theirs = [o for o in stored if o.kind == "target"]
    assert theirs == [], theirs  # the target never lost a probe of its own
    assert len(ours) == 1, stored
    o = ours[0]
    assert o.target is None and o.end is not None
    assert abs(o.start - down_at) < 0.5 and abs(o.end - up_at) < 1.0, (o, down_at, up_at)
    assert o.lost >= 0.5 * 2.0 / INTERVAL  # the probes not sent meanwhile: local_down
    r = report(db)
    assert r.returncode == 0, r.stderr
    assert "OUR NETWORK" in r.stdout and "0 of targets, 1 of our own network" in r.stdout
    lp = json.loads(report(db, "--json").stdout.splitlines()[0])
    assert lp["loss_pattern"]["lost"] == 0 and lp["outages"] == []
