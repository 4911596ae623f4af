"""connect_sweep vs a one-socket-at-a-time loop, 10,000 loopback host:port pairs.

PYTHONPATH=src python3 benchmarks/bench_tcpconnect.py [N]
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

from fastping.tcpconnect import OPEN, connect_sweep

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen(4096)
port = srv.getsockname()[1]


def drain() -> None:  # empty the accept queue so neither side stalls on backlog
    while True:
        try:
            srv.accept()[0].close()
        except OSError:
            return


threading.Thread(target=drain, daemon=True).start()
targets = [(f"127.{1 + i // 62500}.{i // 250 % 250}.{1 + i % 250}", port) for i in range(N)]

t = time.perf_counter()
res = connect_sweep(targets, timeout_s=2.0, concurrency=1024)
sweep = time.perf_counter() - t
opened = sum(r.outcome == OPEN for r in res)

linger = struct.pack("ii", 1, 0)
t = time.perf_counter()
for addr, p in targets:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(2.0)
    s.connect((addr, p))
    s.close()
loop = time.perf_counter() - t
srv.close()
print(f"connect_sweep: {N / sweep:,.0f} connects/s ({opened}/{N} open)")
print(f"serial loop:   {N / loop:,.0f} connects/s")
