"""``fastping sweep --tcp`` over N open loopback host:port pairs: raw SYNs against
the connect() fallback (issue 17), the command as a user runs it (wall time of
the process, targets from a file, -q --json), and auto without CAP_NET_RAW
(setpriv drops it) to show it is the same path as --mode connect.

PYTHONPATH=src python3 benchmarks/bench_tcp_fallback.py [N ...] [--repeat R]
(root: raw sockets; every address is in 127.0.0.0/8, one listener on 0.0.0.0)
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

args = [a for a in sys.argv[1:] if not a.startswith("--")]
REPEAT = 3
if "--repeat" in sys.argv:
    REPEAT = int(sys.argv[sys.argv.index("--repeat") + 1])
    args.remove(str(REPEAT))
SIZES = [int(a) for a in args] or [1_000, 10_000]

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 0))
srv.listen(4096)
port = srv.getsockname()[1]


def drain() -> None:  # empty the accept queue (connect() completes the handshake)
    while True:
        try:
            srv.accept()[0].close()
        except OSError:
            return


threading.Thread(target=drain, daemon=True).start()
env = dict(os.environ)
env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..", "src")
NO_NET_RAW = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]


def run(path: str, mode: str, unprivileged: bool = False) -> tuple[float, dict[str, object]]:
    argv = [sys.executable, "-m", "fastping.cli", "sweep", "--tcp", "-p", str(port), "-f", path,
            "--rate", "0", "-q", "--json", "--mode", mode]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run([*(NO_NET_RAW if unprivileged else []), *argv], capture_output=True,
                       text=True, env=env, timeout=600)  # fmt: skip
    wall = time.perf_counter() - t
    if not r.stdout.strip():
        raise SystemExit(f"sweep failed (rc {r.returncode}): {r.stderr}")
    return wall, json.loads(r.stdout)


print(f"{'pairs':>7} {'how':<22} {'wall s':>7} {'pairs/s':>9} {'sweep s':>8} {'open':>7}")
for n in SIZES:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for i in range(n):
            f.write(f"127.{1 + i // 62500}.{i // 250 % 250}.{1 + i % 250}\n")
    try:
        for label, mode, unpriv in (
            ("raw SYN (root)", "raw", False),
            ("connect (--mode)", "connect", False),
            ("auto, no CAP_NET_RAW", "auto", True),
        ):
            walls, sweeps, opened = [], [], set()
            for _ in range(REPEAT):
                wall, s = run(f.name, mode, unpriv)
                walls.append(wall)
                sweeps.append(float(s["duration_s"]))  # type: ignore[arg-type]
                opened.add(int(s["alive"]))  # type: ignore[call-overload]
                assert s["timing"] == ("raw" if mode == "raw" else "connect"), s
            w = statistics.median(walls)
            print(f"{n:>7} {label:<22} {w:>7.3f} {n / w:>9,.0f} {statistics.median(sweeps):>8.3f} "
                  f"{'/'.join(map(str, sorted(opened))):>7}")  # fmt: skip
    finally:
        os.unlink(f.name)
srv.close()
