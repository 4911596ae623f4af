"""The stateless TCP SYN sweep (#17) against zmap and the C SYN reference, interleaved
in one run, inside a namespace this script makes (and deletes).

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_syn.py                    # 65,536 and 1,048,576
    PYTHONPATH=src python benchmarks/bench_syn.py --sizes 65536 --runs 3

Every tool probes the same host:port pairs, 127.16.0.0/16 or /12 on one port, where a
listening socket (bound to 0.0.0.0, backlog 65535) answers every SYN with a SYN-ACK and
our kernel resets each half-open connection. Figures, per tool, pairs/s:

* ``zmap -M tcp_synscan -r 0`` (Debian's zmap): pairs / (wall - its cooldown), with the
  unique answers it wrote. zmap writes Ethernet frames on ``lo``, so the namespace has
  ``route_localnet=1`` and ``accept_local=1`` (the kernel drops a frame from 127.0.0.1
  arriving on lo otherwise: IP_LOCAL_SOURCE) and zmap a source MAC of its own
  (``02:00:00:00:00:01``: its capture filter drops frames from its own MAC, and every
  frame on lo is from 00:00:00:00:00:00);
* ``benchmarks/c/syn_ref.c`` with ``-T 1`` (every probe timed by the kernel, as
  fastping does) and ``-T 0`` (the plain loop): answered pairs / wall;
* ``fastping sweep --tcp -p PORT CIDR --rate 0 -q --json``, with one worker (``-w 1``:
  one loop, as syn_ref) and with the default (``--workers`` auto: two on two cores, as
  zmap's send and receive threads): pairs / wall of the whole process (start-up,
  target expansion, output), its core rate, and its peak RSS
  (GNU time, Debian's ``time`` package).

Loopback inside the namespace only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SYN_REF = HERE / "c" / "syn_ref.c"
CIDR = {65536: "127.16.0.0/16", 1048576: "127.16.0.0/12"}
PORT = 8080
NS = "fpb-syn"
ZMAP_COOLDOWN_S = 1
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen(65535); print('ready', flush=True)\n"
    "time.sleep(3600)\n"
)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextmanager
def namespace() -> Iterator[None]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    listener = None
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        for k in ("all", "lo"):
            conf = f"net.ipv4.conf.{k}"
            sh("ip", "netns", "exec", NS, "sysctl", "-qw",
               f"{conf}.route_localnet=1", f"{conf}.accept_local=1")  # fmt: skip
        listener = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def in_ns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *cmd]


def run_zmap(n: int, d: Path) -> tuple[float, int]:
    base = CIDR[n].split("/")[0]
    empty = d / "blocklist.txt"
    empty.write_text("")
    out, meta = d / "zmap.csv", d / "zmap.json"
    cmd = in_ns("zmap", "-M", "tcp_synscan", "-p", str(PORT), "-i", "lo", "-S", "127.0.0.1",
                "-G", "00:00:00:00:00:00", "--source-mac=02:00:00:00:00:01", "-r", "0",
                "-c", str(ZMAP_COOLDOWN_S), "-b", str(empty), "-q", "-o", str(out),
                "-m", str(meta), CIDR[n])  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    wall = time.perf_counter() - t0 - ZMAP_COOLDOWN_S
    m = json.loads(meta.read_text())
    assert int(m["total_sent"]) == n, (m["total_sent"], base)
    hits = len(set(out.read_text().split()))
    return n / wall, hits


def run_syn_ref(binary: Path, n: int, tstamp: int) -> tuple[float, int, dict[str, str]]:
    r = subprocess.run(
        in_ns(str(binary), "-n", str(n), "-a", CIDR[n].split("/")[0], "-p", str(PORT),
              "-T", str(tstamp)),
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))
    res = dict(re.findall(r"(\w+)=(\S+)", line))
    return float(res["pps"]), int(res["open"]), res


def run_fastping(n: int, workers: str) -> tuple[float, float, int, float]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # GNU time's %M: the peak RSS of fastping's own process (`ip netns exec` execs it)
    cmd = in_ns("/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m", "fastping.cli",
                "sweep", "--tcp", "-p", str(PORT), CIDR[n], "--rate", "0", "-q", "--json",
                "--timeout", "1", *(("-w", workers) if workers != "auto" else ()))  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    rss_mb = int(re.findall(r"maxrss_kb=(\d+)", r.stderr)[-1]) / 1024
    s = json.loads(r.stdout.strip().splitlines()[-1])
    return n / wall, float(s["probes_per_s"]), int(s["received"]), rss_mb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="65536,1048576")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, namespace():
        d = Path(tmp)
        ref = d / "syn_ref"
        subprocess.run(["gcc", "-O2", "-o", str(ref), str(SYN_REF)], check=True)
        for n in (int(x) for x in a.sizes.split(",")):
            rate: dict[str, list[float]] = {}
            got: dict[str, list[int]] = {}
            rss: list[float] = []
            for _ in range(a.runs):
                z, zh = run_zmap(n, d)
                rate.setdefault("zmap", []).append(z)
                got.setdefault("zmap", []).append(zh)
                for t in (1, 0):
                    p, o, _ = run_syn_ref(ref, n, t)
                    rate.setdefault(f"syn_ref -T {t}", []).append(p)
                    got.setdefault(f"syn_ref -T {t}", []).append(o)
                for w in ("1", "auto"):
                    whole, core, rcv, mb = run_fastping(n, w)
                    for what, v in (("process", whole), ("core", core)):
                        rate.setdefault(f"fastping -w {w} {what}", []).append(v)
                        got.setdefault(f"fastping -w {w} {what}", []).append(rcv)
                    rss.append(mb)
            med = {k: statistics.median(v) for k, v in rate.items()}
            print(f"\n{n:,} host:port pairs, medians of {a.runs} interleaved runs (pairs/s):")
            for k, v in med.items():
                print(f"  {k:<26} {v:>10,.0f}  x zmap {v / med['zmap']:.2f}"
                      f"  x syn_ref -T 1 {v / med['syn_ref -T 1']:.2f}"
                      f"  x -T 0 {v / med['syn_ref -T 0']:.2f}"
                      f"  answered min {min(got[k]):,} of {n:,}")  # fmt: skip
            print(f"  fastping peak RSS {max(rss):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
