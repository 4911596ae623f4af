"""HTTP checks over several processes, one event loop each.

One asyncio loop does every handshake of its checks: past a few hundred HTTPS checks
a second it is busy, and a busy loop stretches the measured phases (docs/http.md).
``HttpWorkerPool`` spreads the checks over ``workers`` processes, each
``python -m fastping.httpworkers`` with its own ``HttpScheduler`` and ``HttpRunner``.
A check belongs to one worker (CRC-32 of its URL modulo the number of workers, so
the same URL stays on the same worker across reloads and connections can be kept).

The parent speaks JSON lines on the worker's stdin (``{"add": check}``,
``{"remove": url}``); the worker writes one JSON line per run of a check on stdout
(the list of that run's results, one per address). The parent makes the
path/server split with its own RTTs (the engine's ICMP, which the workers do not
have) and hands the results to its sinks. Closing a worker's stdin stops it: it
finishes the checks in flight, writes them, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields
from typing import Any

from .http import HttpCheck, HttpOutcome, HttpResult, HttpRunner, HttpScheduler, hash_stable
from .http import split_server_time as _split

_RESULT_FIELDS = [f.name for f in fields(HttpResult) if not f.name.startswith("_")]


def check_to_json(c: HttpCheck) -> dict[str, Any]:
    d = asdict(c)
    d["body"] = c.body.decode("latin-1")
    return d


def check_from_json(d: dict[str, Any]) -> HttpCheck:
    kw = dict(d)
    kw["body"] = str(kw.get("body", "")).encode("latin-1")
    for k in ("headers", "labels"):
        kw[k] = tuple(tuple(x) for x in kw.get(k, ()))
    kw["expect_status"] = tuple(kw.get("expect_status", ()))
    return HttpCheck(**kw)


def result_to_json(r: HttpResult) -> dict[str, Any]:
    d = {k: getattr(r, k) for k in _RESULT_FIELDS}
    d["outcome"] = r.outcome.value
    return d


def result_from_json(d: dict[str, Any]) -> HttpResult:
    kw = {k: d[k] for k in _RESULT_FIELDS if k in d}
    kw["outcome"] = HttpOutcome(kw["outcome"])
    kw["labels"] = tuple(tuple(x) for x in kw.get("labels", ()))
    return HttpResult(**kw)


class HttpWorkerPool:
    """``HttpScheduler``'s interface (``run``, ``request_stop``, ``replace``,
    ``checks``, ``latest``, ``runs``, ``skipped``, ``errors``) over worker processes."""

    def __init__(
        self,
        checks: Iterable[HttpCheck],
        workers: int,
        *,
        max_concurrency: int = 256,
        resolve_cache_s: float = 0.0,
        sinks: Sequence[Callable[[list[HttpResult]], None]] = (),
        rtt_of: Callable[[str], float | None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n = workers
        self.per_worker = max(1, max_concurrency // workers)
        self.resolve_cache_s = resolve_cache_s
        self.sinks = list(sinks)
        self.rtt_of = rtt_of
        self._checks: dict[str, HttpCheck] = {c.url: c for c in checks}
        self._latest: dict[str, list[HttpResult]] = {}
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.runs = 0
        self.skipped = 0  # workers skip a check still running; not reported back
        self.errors = 0
        self.results = 0

    def _worker_of(self, url: str) -> int:
        return hash_stable(url) % self.n

    def _send(self, i: int, msg: dict[str, Any]) -> None:
        stdin = self._procs[i].stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(json.dumps(msg).encode() + b"\n")

    @property
    def checks(self) -> list[HttpCheck]:
        return list(self._checks.values())

    def latest(self) -> dict[str, list[HttpResult]]:
        return {u: rs for u, rs in self._latest.items() if u in self._checks}

    def replace(self, checks: Iterable[HttpCheck]) -> tuple[int, int]:
        want = {c.url: c for c in checks}
        gone = [u for u, c in self._checks.items() if want.get(u) != c]
        for u in gone:
            del self._checks[u]
            if self._procs:
                self._send(self._worker_of(u), {"remove": u})
        new = [c for u, c in want.items() if u not in self._checks]
        for c in new:
            self._checks[c.url] = c
            if self._procs:
                self._send(self._worker_of(c.url), {"add": check_to_json(c)})
        return len(new), len(gone)

    async def start(self) -> None:
        for _ in range(self.n):
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fastping.httpworkers",
                "--max-concurrency", str(self.per_worker),
                "--resolve-cache", repr(self.resolve_cache_s),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )  # fmt: skip
            self._procs.append(p)
        for c in self._checks.values():
            self._send(self._worker_of(c.url), {"add": check_to_json(c)})
        self._readers = [asyncio.create_task(self._read(p)) for p in self._procs]

    async def _read(self, p: asyncio.subprocess.Process) -> None:
        assert p.stdout is not None
        async for line in p.stdout:
            try:
                rs = [result_from_json(d) for d in json.loads(line)]
            except (ValueError, KeyError, TypeError):
                self.errors += 1
                continue
            for r in rs:
                icmp = self.rtt_of(r.address) if (self.rtt_of and r.address) else None
                _split(r, icmp)
            if rs:
                self._latest[rs[0].url] = rs
            self.runs += 1
            self.results += len(rs)
            for sink in self.sinks:
                try:
                    sink(rs)
                except Exception:
                    self.errors += 1

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> None:
        await self.start()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), duration_s)
        finally:
            for p in self._procs:
                if p.stdin is not None:
                    p.stdin.close()  # EOF: finish what is in flight, write it, exit
            for p in self._procs:
                try:
                    await asyncio.wait_for(p.wait(), 30)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()
            await asyncio.gather(*self._readers, return_exceptions=True)


# ---------------------------------------------------------------------------------
# the worker process


async def _worker(max_concurrency: int, resolve_cache_s: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def emit(rs: list[HttpResult]) -> None:
        out.write(json.dumps([result_to_json(r) for r in rs]) + "\n")
        out.flush()

    runner = HttpRunner(max_concurrency=max_concurrency, resolve_cache_s=resolve_cache_s)
    sched = HttpScheduler([], runner, sinks=[emit])
    task = asyncio.create_task(sched.run())
    async for line in reader:
        msg = json.loads(line)
        if "add" in msg:
            sched.add(check_from_json(msg["add"]))
        elif "remove" in msg:
            sched.remove(msg["remove"])
    sched.request_stop()
    await task


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastping.httpworkers")
    ap.add_argument("--max-concurrency", type=int, default=256)
    ap.add_argument("--resolve-cache", type=float, default=0.0)
    a = ap.parse_args(argv)
    import signal

    # Ctrl-C reaches the whole process group: the parent decides when we stop (EOF on
    # stdin), so the checks in flight are finished and written, not cut with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker(a.max_concurrency, a.resolve_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
