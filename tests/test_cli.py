"""The fastping command: output formats, exit statuses, bad input."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import child_env, fastping_cmd, needs_root


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastping_cmd(*args),
        capture_output=True,
        text=True,
        env=child_env(),
        input=input,
        timeout=120,
    )


@needs_root
def test_sweep_json_lines_have_the_documented_keys() -> None:
    r = run("sweep", "--json", "--rate", "0", "127.0.0.1", "::1", "127.0.0.2-3")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["target"] for x in rows] == ["127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"]
    for x in rows:
        for k in ("target", "address", "sent", "received", "loss", "min_ms", "avg_ms", "max_ms"):
            assert k in x
        assert x["received"] == 1 and x["loss"] == 0.0 and x["min_ms"] > 0


@needs_root
def test_sweep_a_slash_16_prints_one_line_per_target() -> None:
    r = run("sweep", "127.1.0.0/16", "--rate", "0", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 65536
    assert all('"received": 1,' in line for line in lines)


@needs_root
def test_quiet_json_summary() -> None:
    r = run("sweep", "-q", "--json", "--rate", "0", "127.0.0.1", "127.0.0.2")
    rows = r.stdout.splitlines()
    assert len(rows) == 1
    s = json.loads(rows[0])
    assert s["targets"] == 2 and s["sent"] == 2 and s["received"] == 2 and s["duration_s"] > 0


@needs_root
def test_text_output_and_quiet_text() -> None:
    r = run("sweep", "--rate", "0", "127.0.0.1", "-c", "2", "-p", "0.01")
    assert "127.0.0.1 : xmt/rcv/%loss = 2/2/0%" in r.stdout
    assert "probes sent" in r.stderr
    q = run("sweep", "-q", "--rate", "0", "127.0.0.1")
    assert "1 alive" in q.stdout.replace("  ", " ") and "127.0.0.1 is alive" not in q.stdout


@needs_root
def test_exit_status_2_for_unresolved_names() -> None:
    r = run("sweep", "--rate", "0", "127.0.0.1", "no-such-host.invalid")
    assert r.returncode == 2
    assert "cannot resolve" in r.stdout


@needs_root
def test_targets_file_and_stdin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.txt"
    f.write_text("# loopback\n127.0.0.1\n\n127.0.0.2  # second\n")
    r = run("sweep", "--json", "--rate", "0", "-f", str(f))
    assert [json.loads(x)["target"] for x in r.stdout.splitlines()] == ["127.0.0.1", "127.0.0.2"]
    r = run("sweep", "--json", "--rate", "0", "-f", "-", input="::1\n")
    assert json.loads(r.stdout)["address"] == "::1"


@needs_root
def test_ping_command() -> None:
    r = run("ping", "127.0.0.1", "-c", "3", "-i", "0.01")
    assert r.returncode == 0
    assert r.stdout.count("reply from 127.0.0.1") == 3
    assert "3 probes sent, 3 replies, 0.0% loss" in r.stdout
    j = run("ping", "::1", "-c", "2", "-i", "0.01", "--json")
    *probes, d = [json.loads(x) for x in j.stdout.splitlines()]
    assert d["received"] == 2 and len(d["rtts_ms"]) == 2
    assert [(p["seq"], p["outcome"]) for p in probes] == [(0, "reply"), (1, "reply")]


@pytest.mark.parametrize(
    "args, message",
    [
        (("sweep",), "no targets"),
        (("sweep", "300.1.2.3"), "is not an IPv4/IPv6 address"),
        (("sweep", "10.0.0.0/33"), "bad CIDR block"),
        (("sweep", "::/64"), "too large"),
        (("sweep", "-c", "0", "127.0.0.1"), "--count must be >= 1"),
        (("sweep", "--bogus"), ""),
        (("ping", "127.0.0.0/24"), "one host"),
        (("sweep", "-f", "/nonexistent/targets.txt"), "cannot read targets file"),
    ],
)
def test_bad_arguments_exit_3_with_a_message(args: tuple[str, ...], message: str) -> None:
    r = run(*args)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert message in r.stderr


def test_bad_line_in_targets_file_names_the_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.txt"
    f.write_text("127.0.0.1\n1.2.3.999\n")
    r = run("sweep", "-f", str(f))
    assert r.returncode == 3 and f"{f}:2:" in r.stderr


def test_lean_startup_imports() -> None:
    code = (
        "import sys, fastping.cli as c; c.main(['--version']);"
        "print(sorted(m for m in ('asyncio','pydantic','structlog','psutil','pyroute2','yaml',"
        "'prometheus_client','sqlite3') if m in sys.modules))"
    )
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, env=child_env())
    assert r.stdout.strip().endswith("[]"), r.stdout
