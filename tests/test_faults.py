"""Issue #14's rows: bad input refused in one line, faults that must not hang or
miscount. Each test reproduces its row (see the issue's table) with a real failure."""

from __future__ import annotations

import http.server
import socket
import sqlite3
import subprocess
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, child_env, fastping_cmd
from fastping import _icmp_py
from fastping.config import MAX_DEPTH, parse_config_text
from fastping.engine import MonitoringEngine
from fastping.errors import ConfigError, FastpingError, TargetError

V4, V6 = socket.AF_INET, socket.AF_INET6
KEY = bytes(range(16))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastping_cmd(*args), capture_output=True, text=True, env=child_env(), timeout=timeout
    )


# ---- row 8: bad values are one line naming the option and its range, exit 3 ----------

BAD_ARGS = [
    (("sweep", "127.0.0.1", "--ttl", "0"), "--ttl", "1..255"),
    (("sweep", "127.0.0.1", "--ttl", "300"), "--ttl", "1..255"),
    (("sweep", "127.0.0.1", "--tos", "256"), "--tos", "0..255"),
    (("sweep", "127.0.0.1", "-b", "0"), "--size/-b", "16..65000"),
    (("sweep", "127.0.0.1", "-b", "8"), "--size/-b", "16..65000"),
    (("sweep", "127.0.0.1", "-b", "70000"), "--size/-b", "16..65000"),
    (("sweep", "127.0.0.1", "-c", "99999999999999999999"), "-c/--count", "1..1000000"),
    (("sweep", "127.0.0.1", "-p", "nan"), "-p/--period", "at most 86400"),
    (("sweep", "127.0.0.1", "-t", "nan"), "--timeout/-t", "at most 3600"),
    (("sweep", "127.0.0.1", "-t", "inf"), "--timeout/-t", "at most 3600"),
    (("sweep", "127.0.0.1", "-t", "1e300"), "--timeout/-t", "at most 3600"),
    (("sweep", "127.0.0.1", "--rate", "nan"), "--rate/-r", "0..100000000"),
    (("ping", "127.0.0.1", "-i", "nan"), "-i/--interval", "at most 86400"),
    (("ping", "127.0.0.1", "-c", "0"), "-c/--count", "1..1000000"),
    (("monitor", "--duration", "-1"), "--duration/-d", "more than 0"),
    (("monitor", "-i", "1e-8", "--duration", "2"), "--interval/-i", "at least 0.001"),  # row 7
    (("monitor", "-t", "nan"), "--timeout/-t", "at most 3600"),
    (("report", "--since", "99999999999999999999w"), "--since", "before 1970"),
]


@pytest.mark.parametrize(
    ("args", "option", "limit"), BAD_ARGS, ids=[" ".join(a[0]) for a in BAD_ARGS]
)
def test_bad_value_is_a_usage_error(args: tuple[str, ...], option: str, limit: str) -> None:
    r = cli(*args)
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert f"argument {option}:" in last and limit in last, last


# ---- rows 6, 7: configurations that could never probe are refused at start ------------


def test_window_beyond_the_socket_is_refused(tmp_path: Path) -> None:
    """-i 0.01 with a 1 s timeout needs 101 probes in flight per target (the socket
    holds 64): every probe was a send_error, sent=0, exit 0."""
    r = cli("monitor", "127.0.0.1", "-i", "0.01", "--duration", "2", "--db", str(tmp_path / "x.db"))
    assert r.returncode != 0
    assert "101 probes of a target in flight; at most 64" in r.stderr
    assert "interval of at least 0.0159 s" in r.stderr
    assert not (tmp_path / "x.db").exists() or r.stdout == ""


@pytest.mark.parametrize(
    ("yaml_text", "where", "limit"),
    [
        ("defaults: {payload_size: 8}\n", "defaults.payload_size", "16"),
        ("defaults: {payload_size: 65507}\n", "defaults.payload_size", "65000"),
        ("targets: [{host: 127.0.0.1, payload_size: 0}]\n", "targets[0].payload_size", "16"),
        ("defaults: {interval_s: 0.00000001}\n", "defaults.interval_s", "0.001"),
        ("targets: [{host: 127.0.0.1, interval_s: 1e-8}]\n", "targets[0].interval_s", "0.001"),
        ("defaults: {timeout_s: .inf}\n", "defaults.timeout_s", "3600"),
    ],
)
def test_config_limits_are_named(yaml_text: str, where: str, limit: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config_text(yaml_text, "f.yaml")
    assert str(e.value).startswith(where) and limit in str(e.value), str(e.value)


def test_example_config_states_the_payload_range() -> None:
    text = (Path(__file__).resolve().parent.parent / "examples" / "fastping.yaml").read_text()
    line = next(x for x in text.splitlines() if "payload_size:" in x and "defaults" not in x)
    assert "16..65000" in line and "65507" not in line, line


@pytest.mark.parametrize("iv", [1e-8, 0.0, float("nan"), float("inf")])
def test_engine_refuses_an_interval_it_cannot_keep(iv: float) -> None:
    with pytest.raises(ConfigError, match="give seconds between 0.001 and 86400"):
        MonitoringEngine(interval_s=iv)
    with pytest.raises(ConfigError, match="give seconds between 0.001 and 86400"):
        MonitoringEngine(interval_s=1.0, min_interval_s=iv)


@pytest.mark.parametrize("to", [float("nan"), float("inf"), 1e300, -1.0])
def test_engine_refuses_a_timeout_the_core_cannot_hold(to: float) -> None:
    with pytest.raises(ConfigError, match="at most 3600"):
        MonitoringEngine(timeout_s=to)


# ---- rows 8, 10: hostile YAML ---------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    text = 'targets:\n  - &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels + 1):
        text += f"  - &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


def test_alias_bomb_is_refused_before_it_expands() -> None:
    """9 levels of 9 aliases: 387 million values. Was 47 s and 666 MB to reject (the
    error message repr()ed it all); now refused from the composed graph."""
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="aliases expand to more than 2000000 values"):
            parse_config_text(alias_bomb(), "bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"{peak / 2**20:.0f} MB to reject a 1 KB file"


def test_a_few_aliases_still_work() -> None:
    cfg = parse_config_text(
        "targets:\n  - {host: 127.0.0.1, labels: &l {site: a}}\n"
        "  - {host: 127.0.0.2, labels: *l }\n",
        "ok.yaml",
    )
    assert [dict(t.labels) for t in cfg.targets] == [{"site": "a"}, {"site": "a"}]


def test_an_alias_bomb_under_a_wrong_key_is_shown_bounded() -> None:
    """A value under a bad key is quoted in the error: bounded, not repr()ed whole."""
    text = "defaults:\n  interval_s: &a [" + ",".join(["x"] * 50) + "]\n"
    with pytest.raises(ConfigError) as e:
        parse_config_text(text, "f.yaml")
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    with pytest.raises(ConfigError, match="nested"):
        parse_config_text("targets: " + "[" * depth + "]" * depth + "\n", "deep.yaml")


def test_brackets_in_quotes_and_comments_are_not_nesting() -> None:
    """The pre-scan that refuses deep flow nesting before PyYAML's (quadratic) scanner
    counts no bracket inside quotes or a comment."""
    many = "[" * (MAX_DEPTH + 5)
    cfg = parse_config_text(
        f"targets:  # {many}\n  - host: 127.0.0.1\n    labels: {{a: '{many}', b: \"{many}\"}}\n",
        "q.yaml",
    )
    assert cfg.targets[0].labels == {"a": many, "b": many}
    with pytest.raises(ConfigError, match="line 2: nested deeper than 64"):
        parse_config_text("targets:\n  - " + many + "]" * len(many) + "\n", "deep2.yaml")


def test_huge_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="too big for a config file"):
        parse_config_text("#" * (17 << 20), "big.yaml")


# ---- row 1: a file that is not a fastping database is refused at start -------------


def test_monitor_refuses_junk_db_at_start(tmp_path: Path) -> None:
    """Was: retried SQLITE_NOTADB every 5 s and never exited (ignoring SIGINT)."""
    db = tmp_path / "f.db"
    junk = bytes(range(256)) * 400
    db.write_bytes(junk)
    r = cli("monitor", "127.0.0.1", "--duration", "3", "--db", str(db), timeout=30)
    assert r.returncode == 3  # a ConfigError: the file given is wrong
    assert r.stderr.strip().splitlines()[-1] == (
        f"fastping: {str(db)!r} is not a fastping database (no SQLite header); move it "
        "aside or give another --db / store.path"
    )
    assert db.read_bytes() == junk  # untouched


def test_monitor_refuses_another_programs_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    r = cli("monitor", "127.0.0.1", "--duration", "3", "--db", str(db), timeout=30)
    assert r.returncode == 3
    assert "is not a fastping database (another program's tables)" in r.stderr
    names = {row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert names == {"customers"}


# ---- row 15: a damaged row in `report` -------------------------------------------------


def test_report_on_damaged_row_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    r = cli("monitor", "127.0.0.1", "-i", "0.2", "--duration", "1", "--db", str(db))
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(db)
    conn.execute("UPDATE results SET data = CAST(data || x'00' AS BLOB)")
    conn.commit()
    conn.close()
    r = cli("report", "--db", str(db), "--since", "all")
    assert r.returncode == 4
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "'127.0.0.1'" in line and "damaged results row" in line and ".recover" in line


def test_chunk_error_is_a_fastping_error() -> None:
    from fastping.chunk import ChunkError

    assert issubclass(ChunkError, FastpingError) and issubclass(ChunkError, ValueError)


# ---- row 12: webhook URLs --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http://[::1",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1/a\r\nX-Evil: 1",
        "http://127.0.0.1/\x00",
        "http://127.0.0.1/a b",
        "ftp://127.0.0.1/",
        "127.0.0.1:8080/hook",
        "https:///path",
    ],
)
def test_malformed_webhook_url_refused_at_load(url: str) -> None:
    from fastping.netstate import NetworkConfig

    with pytest.raises(ConfigError, match="network.notify_on_change: .*webhook URL") as e:
        NetworkConfig.from_mapping({"notify_on_change": url})
    assert "\n" not in str(e.value).replace("\\n", "")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "https://[::1]/h", "http://h.example/"]
)
def test_good_webhook_url_accepted(url: str) -> None:
    from fastping.netstate import NetworkConfig

    assert NetworkConfig.from_mapping({"notify_on_change": url}).notify_on_change == url


@pytest.fixture
def http_pair() -> Iterator[tuple[str, list[str], list[str]]]:
    """Two loopback HTTP servers: the first answers every POST with a 302 to the
    second; each records the paths it was asked for."""
    hits_a: list[str] = []
    hits_b: list[str] = []
    servers: list[http.server.HTTPServer] = []

    def handler(
        hits: list[str], redirect_to: str | None
    ) -> type[http.server.BaseHTTPRequestHandler]:
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hits.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # noqa: N815

            def log_message(self, *a: object) -> None:
                pass

        return H

    b = http.server.HTTPServer(("127.0.0.1", 0), handler(hits_b, None))
    a = http.server.HTTPServer(
        ("127.0.0.1", 0), handler(hits_a, f"http://127.0.0.1:{b.server_port}/elsewhere")
    )
    servers = [a, b]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield f"http://127.0.0.1:{a.server_port}/hook", hits_a, hits_b
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_webhook_does_not_follow_redirects(http_pair: tuple[str, list[str], list[str]]) -> None:
    """A 302 (to anywhere: ftp://, another host) is a failed delivery, not followed."""
    from fastping.netstate import _Webhook

    url, hits_a, hits_b = http_pair
    hook = _Webhook(url, timeout_s=2.0, retries=0)
    hook.post({"previous": "up", "state": "down"})
    hook.close(5.0)
    assert hits_a == ["/hook"] and hits_b == []
    assert (hook.sent, hook.failed) == (0, 1)


# ---- row 13: one argument contract for the core and its twin --------------------------

CODEC_CASES = [
    ("parse_probes", (b"\0" * 64, 64, 99, False, KEY), ValueError, "family must be"),
    ("parse_probes", (b"", 0, V4, False, KEY), ValueError, "packet_size 0 is not"),
    ("parse_probes", (b"", 2**40, V4, False, KEY), ValueError, "packet_size"),
    ("parse_probes", (b"", 64, 2**40, False, KEY), ValueError, "family must be"),
    ("build_probes", (V4, 1, KEY, 0, -1, 0, 56), ValueError, "count -1 is not"),
    ("build_probes", (V4, 1, KEY, 0, 1, 0, 2**31 - 1), ValueError, "payload_size"),
    ("build_probes", (V4, 1, KEY, 0, 1, 0, 2**64), ValueError, "payload_size"),
    ("build_probes", (V4, 1, KEY, 0, 1, 0, 8), ValueError, "payload_size 8 is not"),
    ("build_probes", (V4, 2**16, KEY, 0, 1, 0, 56), ValueError, "identifier"),
    ("build_probes", (V4, 1, KEY, -1, 1, 0, 56), ValueError, "first_slot"),
    ("build_probes", (V4, 1, KEY, 2**32 - 1, 2, 0, 56), ValueError, "count 2 is not"),
    ("build_probes", (V4, 1, KEY, 0, 1, 2**32, 56), ValueError, "serial"),
    ("build_probes", (2**40, 1, KEY, 0, 1, 0, 56), ValueError, "family must be"),
    ("build_probes", (V4, 1, KEY, 0, 1.5, 0, 56), TypeError, ""),
    ("build_probes", (V4, 1, b"short", 0, 1, 0, 56), ValueError, "key must be 16 bytes"),
    ("parse_packet", (b"", 2**40, False), ValueError, "family must be"),
    ("parse_packet", (b"", 99, False), ValueError, "family must be"),
    ("parse_packet", (b"", "2", False), TypeError, ""),
    ("build_echo_request", (2**40, 0, 0), ValueError, "family must be"),
    ("build_echo_request", (V4, 2**70, 0), ValueError, "identifier"),
    ("build_echo_request", (V4, 0, -(2**70)), ValueError, "sequence"),
    ("build_probe_payload", (0, 0, KEY, 2**40), ValueError, "payload size"),
    ("build_probe_payload", (2**32, 0, KEY, 16), ValueError, "slot"),
]


@pytest.mark.parametrize(("fn", "args", "exc", "msg"), CODEC_CASES)
def test_codec_argument_contract(codec, fn: str, args: tuple, exc: type, msg: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as e:
        getattr(codec, fn)(*args)
    assert msg in str(e.value)
    # the same exception and words from the twin
    with pytest.raises(exc) as twin:
        getattr(_icmp_py, fn)(*args)
    assert str(twin.value) == str(e.value)


def test_codec_accepts_the_edges(codec) -> None:  # type: ignore[no-untyped-def]
    assert codec.build_probes(V4, 1, KEY, 2**32 - 1, 1, 2**32 - 1, 65000) == _icmp_py.build_probes(
        V4, 1, KEY, 2**32 - 1, 1, 2**32 - 1, 65000
    )
    assert codec.build_probes(V6, 0, KEY, 0, 0, 0, 16) == b""


# ---- row 14: an unscoped link-local target is refused ----------------------------------


@pytest.mark.parametrize("target", ["fe80::1", "FE80::abcd", "fe80::/120", "fe80::1-fe80::5"])
def test_unscoped_link_local_is_a_target_error(target: str) -> None:
    from fastping import api
    from fastping.targets import parse_target

    with pytest.raises(TargetError, match="link-local"):
        parse_target(target)
    with pytest.raises(TargetError, match="link-local"):
        api.sweep([target], timeout_s=0.1)
    if "/" not in target and "-" not in target:
        with pytest.raises(TargetError, match="link-local address needs a scope"):
            MonitoringEngine().add_target(target)


def test_scoped_link_local_parses() -> None:
    from fastping.targets import Address, parse_target

    (spec,) = parse_target("fe80::1%lo")
    assert isinstance(spec, Address) and spec.label == "fe80::1%lo"


@pytest.mark.skipif(not ROOT, reason="needs root to create a network namespace")
@pytest.mark.parametrize("command", ["sweep", "ping", "monitor"])
def test_cli_refuses_unscoped_link_local_in_an_empty_namespace(
    command: str, tmp_path: Path
) -> None:
    """Inside a namespace of its own with only lo: were it sent, it could go nowhere."""
    from privhelpers import netns

    extra = ["--duration", "1", "--db", str(tmp_path / "x.db")] if command == "monitor" else []
    with netns() as ns:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *fastping_cmd(command, "fe80::1", *extra)],
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "fastping: link-local address needs a scope: fe80::1%eth0 (the interface it is on; "
        "`ip -6 addr` lists them)"
    )
    assert r.stdout == ""  # refused before any socket or summary
