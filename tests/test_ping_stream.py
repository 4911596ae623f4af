"""``fastping ping`` streams like ping(8): a line per probe as it is known (losses
included), and Ctrl-C ends the run with the statistics so far. Run on a real
pseudo-terminal, where a buffered stdout would show nothing until the end."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time

import pytest

import fastping
from conftest import child_env, fastping_cmd, needs_root
from fastping.errors import TargetError


class PtyReader:
    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def line(self, deadline: float) -> str | None:
        """The next line, or None when ``deadline`` (monotonic) passes first."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return raw.decode().rstrip("\r")

    def rest(self, deadline: float) -> list[str]:
        out = []
        while (ln := self.line(deadline)) is not None:
            out.append(ln)
        return out


@needs_root
def test_ping_prints_each_reply_as_it_comes_and_ctrl_c_prints_statistics() -> None:
    interval = 3.0
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        fastping_cmd("ping", "127.0.0.1", "-c", "20", "-i", str(interval)),
        stdin=slave, stdout=slave, stderr=slave, env=child_env(), close_fds=True,
    )  # fmt: skip
    os.close(slave)
    rd = PtyReader(master)
    try:
        header = rd.line(time.monotonic() + 30)  # start-up (imports) is not timed
        assert header is not None and header.startswith("PING 127.0.0.1"), header
        t_header = time.monotonic()
        first = rd.line(t_header + interval * 0.8)  # before the second probe is due
        assert first is not None, "no line before the second probe was due"
        assert first.startswith("reply from 127.0.0.1: icmp_seq=0 ") and "ttl=64" in first
        second = rd.line(time.monotonic() + interval + 2)
        assert second is not None and "icmp_seq=1 " in second, second
        proc.send_signal(signal.SIGINT)  # mid-run: 18 probes still to go
        rc = proc.wait(timeout=5)
        tail = rd.rest(time.monotonic() + 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert rc == 0, tail
    assert "--- 127.0.0.1 ping statistics ---" in tail
    assert "2 probes sent, 2 replies, 0.0% loss" in tail, tail
    assert any(x.startswith("rtt min/avg/max") for x in tail)
    assert not any("Traceback" in x for x in tail)


@needs_root
def test_ping_prints_a_line_per_lost_probe_with_its_seq(netns) -> None:  # type: ignore[no-untyped-def]
    # the router (inside the test's own namespaces) drops every echo request
    netns.exec_r("nft", "add table ip fpd; add chain ip fpd in { type filter hook input "
                 "priority 0; }; add rule ip fpd in icmp type echo-request drop")  # fmt: skip
    args = ("ping", "10.201.0.1", "-c", "2", "-i", "0.1", "-t", "0.3")
    r = netns.exec_h(*fastping_cmd(*args), check=False)
    lines = r.stdout.splitlines()
    assert [x for x in lines if x.startswith("no reply")] == [
        "no reply from 10.201.0.1: icmp_seq=0 (timeout after 0.3 s)",
        "no reply from 10.201.0.1: icmp_seq=1 (timeout after 0.3 s)",
    ], r.stdout
    assert "2 probes sent, 0 replies, 100.0% loss" in r.stdout
    assert r.returncode == 1
    j = netns.exec_h(*fastping_cmd(*args, "--json"), check=False)
    rows = [json.loads(x) for x in j.stdout.splitlines()]
    assert [(x["seq"], x["outcome"]) for x in rows[:2]] == [(0, "timeout"), (1, "timeout")]
    assert rows[2]["sent"] == 2 and rows[2]["received"] == 0


@needs_root
def test_each_reply_line_has_its_own_ttl() -> None:
    seen: list[fastping.ProbeResult] = []
    h = fastping.ping("127.0.0.1", count=2, interval_s=0.05, on_probe=seen.append)
    assert [(r.seq, r.outcome.value, r.ttl) for r in seen] == [(0, "reply", 64), (1, "reply", 64)]
    assert h.received == 2 and len(h.rtts_ms) == 2


def test_library_ping_refuses_a_block_as_the_command_does() -> None:
    with pytest.raises(TargetError, match="one host"):
        fastping.ping("127.0.0.0/30", count=1)


@needs_root
def test_sweep_ctrl_c_prints_partial_statistics() -> None:
    proc = subprocess.Popen(
        fastping_cmd("sweep", "127.0.0.1", "127.0.0.2", "-c", "10", "-p", "1", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    time.sleep(3.5)  # start-up and a few rounds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["target"] for r in rows] == ["127.0.0.1", "127.0.0.2"], out
    for r in rows:
        assert 1 <= r["sent"] < 10 and r["received"] == r["sent"], r  # partial, no false loss
    assert "Traceback" not in err


@needs_root
def test_sweep_result_is_looked_up_by_target() -> None:
    res = fastping.sweep(["127.0.0.1", "::1", "127.0.3.0/30"], rate_pps=0)
    assert res["127.0.0.1"].address == "127.0.0.1" and res["127.0.0.1"].received == 1
    assert res["::1"].target == "::1"
    assert res["127.0.3.2"].address == "127.0.3.2"
    assert res[0].target == "127.0.0.1" and len(res[1:3]) == 2  # positions still work
    assert "127.0.3.3" in res and "127.0.3.4" not in res
    assert res.get("127.9.9.9") is None
    with pytest.raises(KeyError, match="not a target of this sweep"):
        res["127.9.9.9"]
