"""Known loss patterns from a responder of our own, in network namespaces the test
makes (used by tests/test_loss_netns.py and benchmarks/bench_loss.py).

Topology, all created here and always removed:

    netns fp-loss-m-<rand>                        netns fp-loss-r-<rand>
    fplm<rand> 10.213.0.1/24  <---- veth ---->    fplr<rand> 10.213.0.2/24
    default via 10.213.0.2                        lo: 10.213.1.11 ... 10.213.1.16
    fastping monitor                              icmp_echo_ignore_all=1: the kernel
                                                  stays silent, RESPONDER answers

The responder (this file run as a script under ``ip netns exec``) reads every echo
request on a raw socket and answers it itself (IP_HDRINCL, the target address as
source), except those its pattern drops; each target address has its pattern:

    .11  random: each reply dropped with probability 5 %
    .12  bursts: 10 dropped in every 100 (probes 90..99 of each hundred)
    .13  outages: everything dropped in two windows of time (OUTAGES, seconds
         after the first request to it), plus probes 50 and 51 alone (two in a
         row: not an outage with the rule "3 consecutive")
    .14  Gilbert: a two-state chain, good -> bad with P, bad -> good with R,
         all dropped in bad, none in good
    .15  Gilbert-Elliott: the same chain with loss K in good and H in bad
    .16  nothing dropped

On SIGTERM it writes the ground truth (per target: each request's sequence number,
arrival time, dropped or not, in arrival order) as JSON to the file it was given.
Only addresses inside these namespaces are ever contacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MON_IP = "10.213.0.1"
RESP_IP = "10.213.0.2"
TARGETS = {
    "random": "10.213.1.11",
    "bursts": "10.213.1.12",
    "outages": "10.213.1.13",
    "gilbert": "10.213.1.14",
    "ge": "10.213.1.15",
    "clean": "10.213.1.16",
}
RANDOM_LOSS = 0.05
BURST_EVERY, BURST_LEN = 100, 10
OUTAGES = ((6.0, 6.6), (12.0, 15.0))  # s after the first request: 30 and 150 probes at 20 ms
GILBERT_P, GILBERT_R = 0.10, 0.40
GE_P, GE_R, GE_K, GE_H = 0.02, 0.10, 0.01, 0.60
SRC = str(Path(__file__).resolve().parents[1] / "src")


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


@dataclass
class Topo:
    mon_ns: str
    resp_ns: str
    mon_if: str
    resp_if: str

    def mon(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.mon_ns, *cmd]

    def resp(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.resp_ns, *cmd]

    def link(self, up: bool) -> None:
        """Our own link (the monitor's side of the veth) down or up; up puts the
        default route back (a link going down flushes it)."""
        _ip("-n", self.mon_ns, "link", "set", self.mon_if, "up" if up else "down")
        if up:
            _ip("-n", self.mon_ns, "route", "replace", "default", "via", RESP_IP)


@contextlib.contextmanager
def topology() -> Iterator[Topo]:
    tag = secrets.token_hex(3)
    t = Topo(f"fp-loss-m-{tag}", f"fp-loss-r-{tag}", f"fplm{tag}", f"fplr{tag}")
    try:
        _ip("netns", "add", t.mon_ns)
        _ip("netns", "add", t.resp_ns)
        _ip("link", "add", t.mon_if, "type", "veth", "peer", "name", t.resp_if)
        _ip("link", "set", t.mon_if, "netns", t.mon_ns)
        _ip("link", "set", t.resp_if, "netns", t.resp_ns)
        _ip("-n", t.mon_ns, "addr", "add", f"{MON_IP}/24", "dev", t.mon_if)
        _ip("-n", t.resp_ns, "addr", "add", f"{RESP_IP}/24", "dev", t.resp_if)
        for ns, dev in ((t.mon_ns, t.mon_if), (t.resp_ns, t.resp_if)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        for addr in TARGETS.values():
            _ip("-n", t.resp_ns, "addr", "add", f"{addr}/32", "dev", "lo")
        _ip("-n", t.mon_ns, "route", "add", "default", "via", RESP_IP)
        # the responder, not the kernel, answers echo requests in its namespace
        subprocess.run(t.resp("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"), check=True)
        yield t
    finally:
        _ip("netns", "del", t.mon_ns, check=False)
        _ip("netns", "del", t.resp_ns, check=False)


@contextlib.contextmanager
def responder(t: Topo, truth_path: Path, seed: int = 1) -> Iterator[subprocess.Popen[str]]:
    """The responder running in the responder namespace; its truth is written to
    ``truth_path`` when the context ends."""
    p = subprocess.Popen(
        t.resp(sys.executable, __file__, str(truth_path), str(seed)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(
                f"responder did not start: {line!r} {p.stderr.read() if p.stderr else ''}"
            )
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def read_truth(path: Path) -> dict[str, list[tuple[int, float, bool]]]:
    raw = json.loads(path.read_text())
    return {addr: [(int(q), float(a), bool(d)) for q, a, d in recs] for addr, recs in raw.items()}


def truth_outages(
    recs: list[tuple[int, float, bool]], min_lost: int
) -> list[tuple[float, float | None, int]]:
    """Runs of >= min_lost consecutive drops in arrival order: (first dropped
    request's arrival, first answered one's arrival after it, dropped)."""
    out = []
    i = 0
    while i < len(recs):
        if recs[i][2]:
            j = i
            while j < len(recs) and recs[j][2]:
                j += 1
            if j - i >= min_lost:
                out.append((recs[i][1], recs[j][1] if j < len(recs) else None, j - i))
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------------------------
# the responder


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class _Pattern:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rnd = random.Random(f"{seed}-{name}")
        self.n = 0
        self.t0: float | None = None
        self.bad = False

    def drop(self, now: float) -> bool:
        n = self.n
        self.n += 1
        if self.t0 is None:
            self.t0 = now
        name = self.name
        if name == "random":
            return self.rnd.random() < RANDOM_LOSS
        if name == "bursts":
            return n % BURST_EVERY >= BURST_EVERY - BURST_LEN
        if name == "outages":
            rel = now - self.t0
            return n in (50, 51) or any(a <= rel < b for a, b in OUTAGES)
        if name in ("gilbert", "ge"):
            p, r, k, h = (GILBERT_P, GILBERT_R, 0.0, 1.0) if name == "gilbert" else (
                GE_P, GE_R, GE_K, GE_H)  # fmt: skip
            lost = self.rnd.random() < (h if self.bad else k)
            self.bad = (self.rnd.random() >= r) if self.bad else (self.rnd.random() < p)
            return lost
        return False


def serve(truth_path: str, seed: int) -> None:
    by_addr = {a: _Pattern(n, seed) for n, a in TARGETS.items()}
    truth: dict[str, list[tuple[int, float, bool]]] = {a: [] for a in TARGETS.values()}
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rx.settimeout(0.2)
    print("ready", flush=True)
    deadline = time.monotonic() + 600  # bounded whatever happens to the test
    while not stop and time.monotonic() < deadline:
        try:
            pkt = rx.recv(65535)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        now = time.time()
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) < ihl + 8 or pkt[ihl] != 8 or pkt[ihl + 1] != 0:
            continue  # only echo requests
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        pat = by_addr.get(dst)
        if pat is None:
            continue
        seq = struct.unpack("!H", pkt[ihl + 6 : ihl + 8])[0]
        dropped = pat.drop(now)
        truth[dst].append((seq, now, dropped))
        if dropped:
            continue
        icmp = bytearray(pkt[ihl:])
        icmp[0] = 0  # echo reply
        icmp[2:4] = b"\0\0"
        icmp[2:4] = struct.pack("!H", _checksum(bytes(icmp)))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                         socket.inet_aton(dst), socket.inet_aton(src))  # fmt: skip
        with contextlib.suppress(OSError):
            tx.sendto(ip + bytes(icmp), (src, 0))
    Path(truth_path).write_text(json.dumps(truth))


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))


HOOK_CODE = r"""
import http.server, json, sys
out = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out.write(json.dumps(json.loads(body)) + "\n"); out.flush()
        self.send_response(204); self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.timeout = 0.5
import time
end = time.monotonic() + 600  # bounded whatever happens to the test
while time.monotonic() < end:
    srv.handle_request()
"""


@contextlib.contextmanager
def webhook_sink(t: Topo, port: int, path: Path) -> Iterator[subprocess.Popen[str]]:
    """An HTTP server on 127.0.0.1 inside the monitor's namespace; every POSTed JSON
    document becomes a line of ``path``."""
    p = subprocess.Popen(
        t.mon(sys.executable, "-c", HOOK_CODE, str(port), str(path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("webhook sink did not start")
        yield p
    finally:
        p.kill()
        p.wait()
