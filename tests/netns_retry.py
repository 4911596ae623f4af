"""Outage scenario for the retry layer in network namespaces (used by
tests/test_retry_netns.py and benchmarks/bench_retry.py).

Topology, all created here and always removed:

    netns fp6c-<rand>                         netns fp6s-<rand>
    fp6c<rand> 10.254.6.1/24  <---- veth ---->  fp6s<rand> 10.254.6.2/24
    default via 10.254.6.2                      tiny TCP line server :7007

The client (this file run as a script under `ip netns exec`) runs one operation
through `Retryer.run`: TCP connect + `exchanges` request/response round trips.
The controller cuts the client's link (`ip link set ... down`, which also makes
the kernel flush the default route) while the operation is in flight and
restores link and route after `outage_s`. The client reports JSON lines on
stdout: attempts (monotonic times; CLOCK_MONOTONIC is shared by all processes
and namespaces on the host), exchanges, state changes and the result. Its
fastping's log records go to stderr as JSON, so tests can assert on them.

Only addresses inside these namespaces are ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIENT_IP = "10.254.6.1"
SERVER_IP = "10.254.6.2"
PORT = 7007
SRC = str(Path(__file__).resolve().parents[1] / "src")

SERVER_CODE = r"""
import socket, sys, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(64)
def serve(conn):
    with conn, conn.makefile("rb") as rf:
        for line in rf:
            conn.sendall(b"pong " + line)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def can_run() -> str | None:
    """Why the scenario cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


@dataclass
class Topo:
    client_ns: str
    server_ns: str
    client_if: str
    server_if: str

    def cut(self) -> tuple[float, float]:
        """Take the client's link down. Returns (monotonic before, after)."""
        t0 = time.monotonic()
        _ip("-n", self.client_ns, "link", "set", self.client_if, "down")
        return t0, time.monotonic()

    def restore(self) -> tuple[float, float]:
        """Link up again and the default route back (the kernel flushed it when the
        link went down; DHCP/NetworkManager would re-add it the same way)."""
        t0 = time.monotonic()
        subprocess.run(
            ["ip", "-n", self.client_ns, "-batch", "-"],
            input=(
                f"link set {self.client_if} up\n"
                f"route replace default via {SERVER_IP} dev {self.client_if}\n"
            ),
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return t0, time.monotonic()


@contextlib.contextmanager
def topology() -> Iterator[Topo]:
    rand = secrets.token_hex(3)
    topo = Topo(f"fp6c-{rand}", f"fp6s-{rand}", f"fp6c{rand}", f"fp6s{rand}")
    try:
        _ip("netns", "add", topo.client_ns)
        _ip("netns", "add", topo.server_ns)
        _ip(
            "link", "add", topo.client_if, "netns", topo.client_ns,
            "type", "veth", "peer", "name", topo.server_if, "netns", topo.server_ns,
        )  # fmt: skip
        for ns, ifname, addr in (
            (topo.client_ns, topo.client_if, CLIENT_IP),
            (topo.server_ns, topo.server_if, SERVER_IP),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", topo.client_ns, "route", "add", "default", "via", SERVER_IP)
        yield topo
    finally:
        # Deleting a namespace destroys the veth end inside it (and so its peer).
        _ip("netns", "del", topo.client_ns, check=False)
        _ip("netns", "del", topo.server_ns, check=False)


@contextlib.contextmanager
def tcp_server(topo: Topo) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", topo.server_ns, sys.executable, "-c", SERVER_CODE,
         SERVER_IP, str(PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()!r}")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=5)


# ------------------------------------------------------------------ controller side


@dataclass
class Outcome:
    events: list[dict[str, Any]]
    stderr: str
    t_cut: float = 0.0
    t_restore_begin: float = 0.0
    t_restore_end: float = 0.0
    logs: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def result(self) -> dict[str, Any]:
        (res,) = self.of("result")
        return res

    @property
    def attempt_starts(self) -> list[dict[str, Any]]:
        return self.of("attempt")


class Client:
    """The client process under `ip netns exec`, its stdout read by a thread."""

    def __init__(self, topo: Topo, args: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=SRC, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.client_ns, sys.executable, __file__, "client",
             "--server", f"{SERVER_IP}:{PORT}", "--iface", topo.client_if, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._q.put(json.loads(line))
        self._q.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                ev = self._q.get(timeout=max(left, 0.001))
            except queue.Empty:
                ev = None
                left = -1
            if ev is None:
                if left <= 0:
                    raise TimeoutError(f"no matching event in {timeout_s}s; got {self.events}")
                self.proc.wait(timeout=5)
                raise RuntimeError(
                    f"client exited ({self.proc.returncode}) before the event; "
                    f"events {self.events}; stderr:\n{''.join(self._stderr)[-4000:]}"
                )
            self.events.append(ev)
            if pred(ev):
                return ev

    def finish(self, timeout_s: float) -> Outcome:
        self.wait_for(lambda e: e["event"] == "result", timeout_s)
        self.proc.wait(timeout=10)
        time.sleep(0.05)  # let the stderr thread drain
        err = "".join(self._stderr)
        logs = []
        for line in err.splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    logs.append(doc)
        return Outcome(self.events, err, logs=logs)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def run_outage(
    topo: Topo,
    *,
    monitor: bool,
    outage_s: float,
    client_args: list[str] = (),  # type: ignore[assignment]
    restore: bool = True,
    finish_timeout_s: float = 30.0,
) -> Outcome:
    """Start the client, cut the link once the operation is exchanging data,
    restore it `outage_s` later (unless restore=False) and collect the outcome."""
    args = [*client_args, "--monitor" if monitor else "--no-monitor"]
    client = Client(topo, args)
    try:
        client.wait_for(lambda e: e["event"] == "ready", 20)
        client.wait_for(lambda e: e["event"] == "exchange" and e["i"] >= 2, 10)
        t_cut, _ = topo.cut()
        t_rb = t_re = 0.0
        if restore:
            time.sleep(outage_s)
            t_rb, t_re = topo.restore()
        out = client.finish(finish_timeout_s)
        out.t_cut, out.t_restore_begin, out.t_restore_end = t_cut, t_rb, t_re
        return out
    finally:
        client.kill()


# ---------------------------------------------------------------------- client side


def _client_main(argv: list[str]) -> int:
    import asyncio

    from fastping.retry import RetryConfig, Retryer, RetryError

    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--check-host", action="append", default=[])
    ap.add_argument("--max-attempts", type=int, default=4)
    ap.add_argument("--initial-delay", type=float, default=0.05)
    ap.add_argument("--max-delay", type=float, default=0.2)
    ap.add_argument("--jitter", action="store_true")
    ap.add_argument("--exchanges", type=int, default=15)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--io-timeout", type=float, default=0.3)
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--sync", action="store_true",
                    help="blocking Retryer.call here, the monitor in a thread")  # fmt: skip
    ap.add_argument("--cancel-after-down", type=float, default=None,
                    help="cancel the run this long after the monitor reports DOWN")  # fmt: skip
    a = ap.parse_args(argv)

    # fastping logs through stdlib logging: its JSON console format, on stderr
    from fastping.logs import configure_logging

    configure_logging(level="DEBUG", fmt="json")
    host, port = a.server.rsplit(":", 1)

    def emit(event: str, **kw: Any) -> None:
        print(json.dumps({"event": event, "t": time.monotonic(), **kw}), flush=True)

    async def op(attempt: int) -> int:
        emit("attempt", attempt=attempt)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), a.io_timeout
        )
        try:
            for i in range(a.exchanges):
                msg = f"{attempt}:{i}\n".encode()
                writer.write(msg)
                await asyncio.wait_for(writer.drain(), a.io_timeout)
                line = await asyncio.wait_for(reader.readline(), a.io_timeout)
                if line != b"pong " + msg:
                    raise ConnectionResetError(f"bad or no reply {line!r}")
                emit("exchange", attempt=attempt, i=i)
                await asyncio.sleep(a.gap)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 0.2)
        return attempt

    cfg = RetryConfig(
        max_attempts=a.max_attempts,
        initial_delay=a.initial_delay,
        max_delay=a.max_delay,
        jitter=a.jitter,
        wait_for_network=True,
    )

    def result_doc(e: RetryError) -> dict[str, Any]:
        return {
            "ok": False,
            "error": type(e).__name__,
            "message": str(e),
            "cause": repr(e.__cause__),
            "history": [
                {
                    "attempt": h.attempt,
                    "error": repr(h.error),
                    "delay": h.delay,
                    "network_wait": h.network_wait,
                    "counted": h.counted,
                }
                for h in e.attempts
            ],
        }

    def make_monitor() -> Any:
        from fastping.netstate import NetworkMonitor

        return NetworkMonitor(
            preferred_ifaces=[a.iface],
            check_hosts=a.check_host,
            check_interval=5.0,
            check_timeout=1.0,
        )

    async def watch(mon: Any) -> None:
        async for ch in mon.subscribe():
            emit("state", state=ch.state.value, reason=ch.reason)

    if a.sync:
        _run_sync(a, cfg, emit, make_monitor, watch, result_doc)
        return 0

    async def main() -> None:
        mon_cm: Any = contextlib.nullcontext(None)
        if a.monitor:
            mon_cm = make_monitor()
        async with mon_cm as mon:
            watcher = None
            if mon is not None:
                await mon.wait_for_network(timeout=10)
                watcher = asyncio.ensure_future(watch(mon))
            emit("ready", monitor=mon is not None)
            retryer = Retryer(cfg, network=mon)
            task = asyncio.ensure_future(retryer.run(op, name="exchange", timeout_s=a.deadline))
            if a.cancel_after_down is not None and mon is not None:
                while mon.state != "down":
                    await asyncio.sleep(0.005)
                await asyncio.sleep(a.cancel_after_down)
                emit("cancelling")
                task.cancel()
            res: dict[str, Any] = {}
            try:
                res = {"ok": True, "value": await task}
            except asyncio.CancelledError:
                res = {"ok": False, "cancelled": True}
            except RetryError as e:
                res = result_doc(e)
            emit("result", **res)
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    asyncio.run(main())
    return 0


def _run_sync(
    a: argparse.Namespace,
    cfg: Any,
    emit: Callable[..., None],
    make_monitor: Callable[[], Any],
    watch: Callable[[Any], Any],
    result_doc: Callable[[Any], dict[str, Any]],
) -> None:
    """The blocking flavour: the monitor lives in its own thread's event loop and
    Retryer.call polls its state from the main thread."""
    import asyncio
    import socket

    from fastping.retry import Retryer, RetryError

    host, port = a.server.rsplit(":", 1)
    started = threading.Event()
    holder: dict[str, Any] = {}

    def monitor_thread() -> None:
        async def amain() -> None:
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = stop = asyncio.Event()
            async with make_monitor() as mon:
                await mon.wait_for_network(timeout=10)
                holder["mon"] = mon
                watcher = asyncio.ensure_future(watch(mon))
                started.set()
                await stop.wait()
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

        try:
            asyncio.run(amain())
        finally:
            started.set()

    mon = None
    thread = None
    if a.monitor:
        thread = threading.Thread(target=monitor_thread, daemon=True)
        thread.start()
        started.wait(20)
        mon = holder["mon"]
    emit("ready", monitor=mon is not None, sync=True)

    def op(attempt: int) -> int:
        emit("attempt", attempt=attempt)
        with socket.create_connection((host, int(port)), timeout=a.io_timeout) as sock:
            f = sock.makefile("rwb")
            for i in range(a.exchanges):
                msg = f"{attempt}:{i}\n".encode()
                f.write(msg)
                f.flush()
                line = f.readline()
                if line != b"pong " + msg:
                    raise ConnectionResetError(f"bad or no reply {line!r}")
                emit("exchange", attempt=attempt, i=i)
                time.sleep(a.gap)
        return attempt

    retryer = Retryer(cfg, network=mon, poll_interval_s=0.01)
    try:
        res: dict[str, Any] = {"ok": True, "value": retryer.call(op, name="exchange")}
    except RetryError as e:
        res = result_doc(e)
    emit("result", **res)
    if thread is not None:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(5)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(_client_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} client --server IP:PORT --iface NAME [...]")
