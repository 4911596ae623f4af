"""Past one machine, end to end with real servers the tests start on loopback:

- two agents (``--shard 0/2`` and ``1/2``) write into one PostgreSQL; ``fastping
  report`` shows every target exactly once with every probe;
- the PostgreSQL server stopped for 20 s under two running agents: the one with room
  in its queue loses nothing, the one with a small queue counts exactly what it
  dropped;
- Prometheus remote write into VictoriaMetrics: its query API returns the same
  counters as the scrape endpoint.

Every probe goes to 127.x.y.z."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, child_env, fastping_cmd
from fastping.shard import shard_of
from servers import PgServer, VictoriaMetrics, need

try:
    import psycopg  # noqa: F401

    from fastping.store_pg import PgResultStore
except ImportError:  # pragma: no cover - CI installs the extra
    PgResultStore = None  # type: ignore[assignment,misc]

pytestmark = [pytest.mark.timeout(120)]


def need_root() -> None:
    if not ROOT:
        need("root", "the monitor's raw ICMP sockets (CI runs as root)")


def new_server() -> PgServer:
    if PgResultStore is None:
        need("psycopg", "pip install 'psycopg[binary]' (the extra 'postgresql')")
    try:
        return PgServer().init().start()
    except FileNotFoundError as e:
        need("PostgreSQL", str(e))
        raise


@pytest.fixture
def pg() -> Iterator[PgServer]:
    need_root()
    srv = new_server()
    try:
        yield srv
    finally:
        srv.cleanup()


def monitor(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        fastping_cmd("monitor", "--table", "never", *args),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    out, err = p.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no summary (exit {p.returncode}): {out[-500:]} {err[-2000:]}"
    return p.returncode, json.loads(lines[-1]), err


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fastping_cmd("report", *args), env=child_env(), capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_two_shards_into_one_postgres_report_every_target_once(
    pg: PgServer, tmp_path: Path
) -> None:
    targets = [f"127.0.7.{i}" for i in range(1, 31)]
    agents = [monitor(*targets, "--db", pg.url, "--shard", f"{i}/2", "--interval", "0.2",
                      "--duration", "4") for i in range(2)]  # fmt: skip
    done = [finish(p) for p in agents]
    for rc, summary, err in done:
        assert rc == 0, err[-2000:]
        assert summary["store_dropped"] == 0 and summary["stored"] == summary["results"]
    names = [s["agent"] for _, s, _ in done]
    assert len(set(names)) == 2 and all(n.endswith(("#0/2", "#1/2")) for n in names)
    r = report("--db", pg.url, "--since", "all", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    # every target exactly once, from the agent whose shard holds it
    assert sorted(s["target"] for s in rows) == sorted(targets)
    for s in rows:
        assert s["agent"] == names[shard_of(s["target"], 2)]
    # every probe: each agent's rows add up to what it sent, and nothing is lost
    for _, summary, _ in done:
        mine = [s for s in rows if s["agent"] == summary["agent"]]
        assert len(mine) == summary["targets"] > 0
        assert sum(s["sent"] for s in mine) == summary["sent"]
        assert sum(s["received"] for s in mine) == summary["received"]
    store = PgResultStore(pg.url)
    assert store.count_results() == sum(s["results"] for _, s, _ in done)
    store.close_reader()
    # text: one line per target (plus the header lines)
    t = report("--db", pg.url, "--since", "all")
    assert t.returncode == 0 and "30 targets from 2 agents" in t.stdout
    assert sum(1 for line in t.stdout.splitlines() if line.startswith("127.0.7.")) == 30
    # the prober's own timing, every agent's windows together
    timing = [ln for ln in t.stdout.splitlines() if ln.startswith("prober timing:")]
    assert timing and f"{sum(s['sent'] for _, s, _ in done):,} probes" in timing[0]
    # a third agent watching one of the targets: that target shows both views side
    # by side; the filters pick agents and labels
    cfg = tmp_path / "extra.yaml"
    cfg.write_text("targets:\n  - host: 127.0.7.1\n    labels: {site: lab}\n")
    rc, _, err = finish(monitor("--config", str(cfg), "--db", pg.url, "--agent", "extra",
                                "--interval", "0.2", "--duration", "1.5"))  # fmt: skip
    assert rc == 0, err[-2000:]
    html = tmp_path / "r.html"
    r = report("--db", pg.url, "--since", "all", "--target", "127.0.7.1", "--html", str(html))
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    side = page[page.index('<div class="side">') :]
    assert side.count("<h3>from ") == 2 and "from extra" in side
    assert names[shard_of("127.0.7.1", 2)] in side
    j = report("--db", pg.url, "--since", "all", "--json", "--label", "site=lab")
    picked = [json.loads(x) for x in j.stdout.splitlines()]
    assert [(x["target"], x["agent"], x["labels"]) for x in picked] == [
        ("127.0.7.1", "extra", {"site": "lab"})
    ]
    j = report("--db", pg.url, "--since", "all", "--json", "--agent", names[1])
    assert {json.loads(x)["agent"] for x in j.stdout.splitlines()} == {names[1]}


def test_postgres_down_20s_loses_nothing_or_counts_exactly(tmp_path: Path) -> None:
    """Two agents write while the server is stopped for 20 s: ``keep`` (room in its
    queue) writes everything once the server is back; ``tight`` (store.max_queue 600,
    less than 20 s of its results) drops, and says exactly how many."""
    need_root()
    srv = new_server()
    try:
        common = "store: {chunk_s: 1, flush_interval_s: 0.2}\n"
        (tmp_path / "keep.yaml").write_text(common)
        (tmp_path / "tight.yaml").write_text(
            "store: {chunk_s: 1, flush_interval_s: 0.2, max_queue: 600}\n"
        )
        keep_t = [f"127.0.8.{i}" for i in range(1, 11)]
        tight_t = [f"127.0.9.{i}" for i in range(1, 11)]
        run = ("--interval", "0.1", "--duration", "30", "--stop-timeout", "20")
        keep = monitor(*keep_t, "--config", str(tmp_path / "keep.yaml"), "--db", srv.url,
                       "--agent", "keep", *run)  # fmt: skip
        tight = monitor(*tight_t, "--config", str(tmp_path / "tight.yaml"), "--db", srv.url,
                        "--agent", "tight", *run)  # fmt: skip
        time.sleep(6)
        before = PgResultStore(srv.url)
        assert before.count_results(agent="keep") > 0  # writing before the outage
        before.close_reader()
        t_stop = time.monotonic()
        srv.stop()
        time.sleep(20 - (time.monotonic() - t_stop))
        srv.start()
        rc_k, sk, err_k = finish(keep, 60)
        rc_t, st, err_t = finish(tight, 60)
        # the outage was seen and retried through
        assert "store write failed" in err_k and "store writes recovered" in err_k
        assert rc_k == 0 and sk["store_dropped"] == 0 and sk["stored"] == sk["results"] > 2500
        # 20 s of 100 results/s do not fit in 600: dropped, counted, said (exit 4)
        assert rc_t == 4 and st["store_dropped"] > 1000
        assert st["stored"] + st["store_dropped"] == st["results"]
        assert "results were not written" in err_t
        store = PgResultStore(srv.url)
        assert store.count_results(agent="keep") == sk["results"]
        assert store.count_results(agent="tight") == st["stored"]
        assert sum(s["sent"] for s in store.all_stats(agents=["keep"])) == sk["sent"]
        store.close_reader()
    finally:
        srv.cleanup()


def settled(read: Any, want: Any = None, wait_s: float = 15.0) -> Any:
    """What ``read()`` gives once VictoriaMetrics has made the last push searchable
    (it buffers ingested rows for about a second): read again until it is ``want``
    (or, without one, not empty), at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        got = read()
        ok = got == want if want is not None else bool(got)
        if ok or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.fixture
def vm() -> Iterator[VictoriaMetrics]:
    try:
        v = VictoriaMetrics()
    except FileNotFoundError as e:
        need("VictoriaMetrics", str(e))
    v.start()
    try:
        yield v
    finally:
        v.cleanup()


def _parse_scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            # as Prometheus stores it: a label with an empty value is no label
            labels = {k: v for k, v in s.labels.items() if v != ""}
            out[(s.name, tuple(sorted(labels.items())))] = float(s.value)
    return out


def test_remote_write_into_victoriametrics_same_counters_as_scrape(
    vm: VictoriaMetrics,
) -> None:
    need_root()
    from fastping.engine import MonitoringEngine
    from fastping.metrics import serve_metrics
    from fastping.remote_write import RemoteWriter

    async def go() -> tuple[str, RemoteWriter]:
        engine = MonitoringEngine(interval_s=0.1, timeout_s=0.5)
        for i in range(1, 9):
            engine.add_target(f"127.0.10.{i}", labels={"site": "lab"})
        srv = serve_metrics(engine, "127.0.0.1:0", label_names={"site"})
        rw = RemoteWriter(srv.collector, vm.write_url, interval_s=0.5,
                          labels={"job": "fastping", "instance": "agent-1"})  # fmt: skip
        rw.start()
        await engine.run(3.0, handle_signals=False)
        await asyncio.sleep(1.2)  # past the endpoint's 1 s render cache
        with urllib.request.urlopen(srv.url, timeout=10) as r:
            text = r.read().decode()
        rw.close()  # the last push: the counters as they ended
        srv.close()
        return text, rw

    text, rw = asyncio.run(go())
    assert rw.failures == 0 and rw.pushes >= 4, rw.stats()
    scraped = _parse_scrape(text)
    counters = {k: v for k, v in scraped.items()
                if k[0].startswith(("smokeping_", "fastping_results_", "fastping_probes_"))
                and k[0].endswith(("_total", "_bucket", "_count", "_sum"))}  # fmt: skip
    assert len(counters) > 100
    assert sum(v for k, v in counters.items() if k[0] == "smokeping_requests_total") >= 8 * 25
    want_pushes = rw.pushes

    def exported() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        got = {}
        for series in vm.export('{__name__=~"smokeping_.*|fastping_.*"}'):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            assert labels.pop("job") == "fastping" and labels.pop("instance") == "agent-1"
            if len(series["values"]) < want_pushes:
                return {}  # the last push is not searchable yet
            last = max(zip(series["timestamps"], series["values"], strict=True))[1]
            got[(name, tuple(sorted(labels.items())))] = float(last)
        return got

    got = settled(exported)
    missing = [k for k in counters if k not in got]
    assert not missing, missing[:5]
    # counts exactly; the RTT sums (floats) to VictoriaMetrics' 12 significant digits
    differ = {
        k: (v, got[k])
        for k, v in counters.items()
        if (got[k] != v if v == int(v) else got[k] != pytest.approx(v, rel=1e-11, abs=0))
    }
    assert not differ, list(differ.items())[:5]
    assert sum(1 for k, v in counters.items() if v == int(v) and v > 0) > 50
    # and through the query API, as a dashboard asks
    res = vm.query('sum(smokeping_requests_total{job="fastping"})')
    assert float(res[0]["value"][1]) == sum(
        v for k, v in counters.items() if k[0] == "smokeping_requests_total"
    )


def test_monitor_remote_write_cli_ends_with_the_runs_counters(
    vm: VictoriaMetrics, tmp_path: Path
) -> None:
    need_root()
    targets = [f"127.0.11.{i}" for i in range(1, 6)]
    agent = monitor(*targets, "--db", str(tmp_path / "rw.db"), "--interval", "0.2",
                    "--duration", "2", "--remote-write", vm.write_url,
                    "--remote-write-interval", "0.5", "--agent", "cli")  # fmt: skip
    rc, summary, err = finish(agent)
    assert rc == 0, err[-2000:]
    assert summary["remote_write"]["failures"] == 0 and summary["remote_write"]["pushes"] >= 2

    def total() -> float:
        res = vm.query('sum(smokeping_requests_total{instance="cli"})')
        return float(res[0]["value"][1]) if res else -1.0

    assert settled(total, want=summary["sent"]) == summary["sent"] > 0
    res = vm.query('count(smokeping_requests_total{instance="cli"})')
    assert float(res[0]["value"][1]) == len(targets)


def test_remote_write_encoding_bytes() -> None:
    """The hand-made protobuf, byte for byte against the proto3 wire format."""
    from fastping.remote_write import (
        decode_write_request,
        encode_label,
        encode_sample,
        encode_write_request,
        snappy_compress,
        snappy_decompress,
    )

    assert encode_label("a", "b") == b"\x0a\x01a\x12\x01b"
    # 1.0 as a little-endian double; 300 ms as the varint ac 02
    assert encode_sample(1.0, 300) == b"\x09" + b"\x00" * 6 + b"\xf0\x3f" + b"\x10\xac\x02"
    body = encode_write_request([([("z", "1"), ("__name__", "m_total")], [(2.5, 1700000000123)])])
    ((labels, samples),) = decode_write_request(body)
    assert list(labels) == ["__name__", "z"]  # sorted by name on the wire
    assert samples == [(2.5, 1700000000123)]
    assert snappy_decompress(snappy_compress(body * 50)) == body * 50


def test_config_and_command_line_choices(tmp_path: Path) -> None:
    """store.url / remote_write in the config are checked when loaded; the SQLite
    report refuses the shared store's filters with words saying why."""
    from fastping.config import load_config
    from fastping.errors import ConfigError

    good = tmp_path / "good.yaml"
    good.write_text(
        "store: {url: 'postgresql://u@127.0.0.1/db', agent: a1, partition_s: 600}\n"
        "remote_write: {url: 'http://127.0.0.1:1/api/v1/write', interval_s: 5,"
        " labels: {job: j}}\n"
    )
    cfg = load_config(str(good))
    assert cfg.store.url == "postgresql://u@127.0.0.1/db" and cfg.store.agent == "a1"
    assert cfg.store.partition_s == 600 and cfg.remote_write.labels == {"job": "j"}
    for bad in ("store: {url: 'mysql://x'}\n", "remote_write: {url: 'ftp://x'}\n",
                "store: {partition_s: 10}\n"):  # fmt: skip
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(ConfigError):
            load_config(str(tmp_path / "bad.yaml"))
    r = report("--db", str(tmp_path / "x.db"), "--agent", "a1")
    assert r.returncode == 3 and "shared PostgreSQL store" in r.stderr
    r = report("--db", str(tmp_path / "x.db"), "--label", "nokey")
    assert r.returncode == 3 and "KEY=VALUE" in r.stderr


def test_remote_write_receiver_down_is_counted_then_recovers(vm: VictoriaMetrics) -> None:
    """A receiver that is not there: the push fails, is counted and said; counters are
    cumulative, so the next push that gets through carries them all."""
    from prometheus_client.core import CounterMetricFamily

    from fastping.remote_write import RemoteWriter
    from servers import free_port

    class Counters:
        n = 0

        def collect(self) -> Any:
            fam = CounterMetricFamily("fastping_test_pushes", "test", labels=["k"])
            fam.add_metric(["a"], self.n)
            yield fam

    c = Counters()
    rw = RemoteWriter(c, f"http://127.0.0.1:{free_port()}/api/v1/write", timeout_s=2,
                      labels={"job": "t"})  # fmt: skip
    c.n = 5
    assert not rw.push() and rw.failures == 1 and "Error" in str(rw.last_error)
    rw.url = vm.write_url
    c.n = 7
    assert rw.push() and rw.pushes == 1 and rw.last_error is None
    res = settled(lambda: vm.query('fastping_test_pushes_total{job="t",k="a"}'))
    assert float(res[0]["value"][1]) == 7
    bad = RemoteWriter(c, f"{vm.url}/no/such/path", timeout_s=2)
    assert not bad.push() and "HTTP 4" in str(bad.last_error)
