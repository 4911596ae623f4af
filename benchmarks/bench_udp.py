"""The UDP sweep (#17) against zmap's UDP module, interleaved in one run, inside a
namespace this script makes (and deletes).

    python setup.py build_ext --inplace -q
    PYTHONPATH=src python benchmarks/bench_udp.py                 # 65,536 pairs, 3 runs
    PYTHONPATH=src python benchmarks/bench_udp.py --runs 5

Every tool probes the same host:port pairs, 127.16.0.0/16 on UDP port 9, all closed:
each is answered by the namespace's kernel with an ICMP port unreachable (its ICMP
rate limit lifted). Figures, per tool, pairs/s:

* ``zmap -M udp -r 0`` (Debian's zmap, raw sockets, one send thread): pairs / (wall -
  its cooldown), with the answers its metadata counts (``failure_total``: ICMP
  unreachables; ``success_total``: UDP replies). It writes Ethernet frames on ``lo``:
  ``route_localnet=1``, ``accept_local=1`` and a source MAC of its own, as in
  bench_syn.py;
* ``fastping sweep --udp -p 9 CIDR --rate 0 -q --json`` (an unprivileged UDP
  socket, every probe timed by the kernel at both ends) with one worker and with two:
  pairs / wall of the whole process, and its core rate.

Loopback inside the namespace only.
"""

from __future__ import annotations

import argparse
import json
import os
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
CIDR = "127.16.0.0/16"
N = 65536
PORT = 9
NS = "fpb-udp"
ZMAP_COOLDOWN_S = 1
SYSCTLS = (
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv4.icmp_msgs_per_sec=1000000",
    "net.ipv4.icmp_msgs_burst=1000000",
    *(
        f"net.ipv4.conf.{k}.{opt}=1"
        for k in ("all", "lo")
        for opt in ("route_localnet", "accept_local")
    ),
)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextmanager
def namespace() -> Iterator[None]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", NS, "sysctl", "-qw", *SYSCTLS)
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def in_ns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *cmd]


def run_zmap(d: Path) -> tuple[float, int]:
    empty = d / "blocklist.txt"
    empty.write_text("")
    out, meta = d / "zmap.csv", d / "zmap.json"
    cmd = in_ns("zmap", "-M", "udp", "-p", str(PORT), "-i", "lo", "-S", "127.0.0.1",
                "-G", "00:00:00:00:00:00", "--source-mac=02:00:00:00:00:01", "-r", "0",
                "-c", str(ZMAP_COOLDOWN_S), "-b", str(empty), "-q", "-o", str(out),
                "-m", str(meta), CIDR)  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    wall = time.perf_counter() - t0 - ZMAP_COOLDOWN_S
    m = json.loads(meta.read_text())
    assert int(m["total_sent"]) == N, m["total_sent"]
    return N / wall, int(m["failure_total"]) + int(m["success_total"])


def run_fastping(workers: int) -> tuple[float, float, int]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = in_ns(sys.executable, "-m", "fastping.cli", "sweep", "--udp", "-p", str(PORT), CIDR,
                "--rate", "0", "-q", "--json", "--timeout", "1", "-w", str(workers))  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    assert r.returncode == 1, r.stderr  # no pair open: every one closed
    s = json.loads(r.stdout.strip().splitlines()[-1])
    return N / wall, float(s["probes_per_s"]), int(s["received"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    rate: dict[str, list[float]] = {}
    got: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp, namespace():
        for _ in range(a.runs):
            z, zh = run_zmap(Path(tmp))
            rate.setdefault("zmap", []).append(z)
            got.setdefault("zmap", []).append(zh)
            for w in (1, 2):
                whole, core, rcv = run_fastping(w)
                rate.setdefault(f"fastping -w {w}", []).append(whole)
                rate.setdefault(f"fastping -w {w} core", []).append(core)
                got.setdefault(f"fastping -w {w}", []).append(rcv)
                got.setdefault(f"fastping -w {w} core", []).append(rcv)
    med = {k: statistics.median(v) for k, v in rate.items()}
    print(f"\n{N:,} closed host:port pairs, medians of {a.runs} interleaved runs (pairs/s):")
    for k, v in med.items():
        print(f"  {k:<20} {v:>10,.0f}  x zmap {v / med['zmap']:.2f}"
              f"  answered min {min(got[k]):,} of {N:,}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
