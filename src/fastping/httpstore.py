"""HTTP check results in the store's SQLite file, in a table of their own.

``http_results``: one row per check of one address (``fastping.http.HttpResult``):
the time, URL, address, outcome, status, the phases in ms, the network RTT used
for the split and where it came from, ``server_ms`` / ``path_ms``, the certificate's
expiry. Rows older than ``retention_s`` are deleted as new ones are written.

It shares the database of :class:`fastping.store.ResultStore` (opened after it, so
the file is known to be a fastping database) but uses a connection of its own and
touches no other table: the ICMP store's schema is unchanged. Writes are queued by
``submit`` (event loop, never the disk) and written in one transaction per flush in
a worker thread; a failed write keeps the rows queued and is retried at the next
flush, up to ``max_queue`` rows (the rest are counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .http import PHASES, HttpOutcome, HttpResult
from .logs import get_logger

log = get_logger("fastping.httpstore")

COLUMNS = (
    "t", "url", "address", "outcome", "status", "http_version", "redirects",
    "dns_ms", "connect_ms", "tls_ms", "send_ms", "wait_ms", "transfer_ms", "redirect_ms",
    "total_ms", "rtt_ms", "rtt_source", "tcp_rtt_ms", "server_ms", "path_ms", "cert_not_after",
    "body_bytes", "source", "reused", "timeout_phase", "error",
)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS http_results (
    t REAL NOT NULL, url TEXT NOT NULL, address TEXT, outcome TEXT NOT NULL,
    status INTEGER, http_version TEXT, redirects INTEGER NOT NULL DEFAULT 0,
    dns_ms REAL, connect_ms REAL, tls_ms REAL, send_ms REAL, wait_ms REAL,
    transfer_ms REAL, redirect_ms REAL, total_ms REAL, rtt_ms REAL, rtt_source TEXT,
    tcp_rtt_ms REAL,
    server_ms REAL, path_ms REAL, cert_not_after REAL, body_bytes INTEGER,
    source TEXT, reused INTEGER, timeout_phase TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS http_results_url_t ON http_results (url, t);
"""


def _row(r: HttpResult) -> tuple[Any, ...]:
    return (
        r.ts, r.url, r.address, r.outcome.value, r.status, r.http_version, r.redirects,
        r.dns_ms, r.connect_ms, r.tls_ms, r.send_ms, r.wait_ms, r.transfer_ms, r.redirect_ms,
        r.total_ms, r.rtt_ms, r.rtt_source, r.tcp_rtt_ms, r.server_ms, r.path_ms,
        r.cert_not_after,
        r.body_bytes, r.source, int(r.reused), r.timeout_phase, r.error,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class UrlSummary:
    """One URL (and address) over a time range: medians of each phase, for the
    report's stacked chart."""

    url: str
    address: str | None
    checks: int
    ok: int
    outcomes: dict[str, int]
    phases_ms: dict[str, float | None]  # median of each phase over the checks that had it
    redirect_ms: float | None
    total_ms: float | None
    rtt_ms: float | None
    server_ms: float | None
    path_ms: float | None
    last_status: int | None
    cert_not_after: float | None


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs.sort()
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class HttpStore:
    def __init__(
        self,
        path: str | Path,
        retention_s: float = 7 * 86400.0,
        flush_interval_s: float = 1.0,
        max_queue: int = 1_000_000,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._queue: deque[tuple[Any, ...]] = deque()
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None

    # -- writing ---------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="fastping-http-store")

    def submit(self, results: Iterable[HttpResult]) -> None:
        for r in results:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                continue
            self._queue.append(_row(r))

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._open()
        ph = ",".join("?" * len(COLUMNS))
        with conn:
            conn.executemany(f"INSERT INTO http_results ({','.join(COLUMNS)}) VALUES ({ph})", rows)
            conn.execute("DELETE FROM http_results WHERE t < ?", (time.time() - self.retention_s,))

    async def flush(self) -> None:
        if not self._queue:
            return
        rows = list(self._queue)
        try:
            await asyncio.to_thread(self._write, rows)
        except sqlite3.Error as e:
            self.last_error = str(e)
            log.warning("http results not written yet, retrying", db=str(self.path), error=str(e),
                        queued=len(self._queue))  # fmt: skip
            with contextlib.suppress(sqlite3.Error):
                if self._conn is not None:
                    self._conn.close()
            self._conn = None
            return
        for _ in range(len(rows)):
            self._queue.popleft()
        self.written += len(rows)

    async def _run(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.flush_interval_s)
            await self.flush()

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self._queue), "written": self.written, "dropped": self.dropped,
                "last_error": self.last_error}  # fmt: skip

    # -- reading (a read-only connection of its own) -----------------------------

    def _read(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise ConfigError(f"no fastping database at {str(self.path)!r}")
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        conn.row_factory = sqlite3.Row
        return conn

    def has_results(self) -> bool:
        try:
            conn = self._read()
        except (ConfigError, sqlite3.Error):
            return False
        try:
            return (
                conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'http_results'").fetchone()
                is not None
            )
        finally:
            conn.close()

    def recent(self, url: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest rows (of ``url``, or every URL), newest first, as dicts."""
        conn = self._read()
        try:
            if url is None:
                cur = conn.execute("SELECT * FROM http_results ORDER BY t DESC LIMIT ?", (limit,))
            else:
                cur = conn.execute(
                    "SELECT * FROM http_results WHERE url = ? ORDER BY t DESC LIMIT ?", (url, limit)
                )
            return [dict(r) for r in cur]
        finally:
            conn.close()

    def summaries(self, since: float | None = None, until: float | None = None) -> list[UrlSummary]:
        """Per (URL, address) over [since, until]: check counts and phase medians."""
        if not self.has_results():
            return []
        conn = self._read()
        try:
            cur = conn.execute(
                "SELECT * FROM http_results WHERE t >= ? AND t <= ? ORDER BY url, address, t",
                (since if since is not None else 0.0, until if until is not None else 1e18),
            )
            groups: dict[tuple[str, str | None], list[sqlite3.Row]] = {}
            for row in cur:
                groups.setdefault((row["url"], row["address"]), []).append(row)
        finally:
            conn.close()
        out = []
        ok_values = {HttpOutcome.OK.value, HttpOutcome.CERT_EXPIRING.value}
        for (url, addr), rows in groups.items():
            outcomes: dict[str, int] = {}
            for row in rows:
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
            good = [row for row in rows if row["outcome"] in ok_values]

            def med(col: str, rs: list[sqlite3.Row] = good) -> float | None:
                return _median([row[col] for row in rs if row[col] is not None])

            out.append(
                UrlSummary(
                    url,
                    addr,
                    len(rows),
                    len(good),
                    outcomes,
                    {p: med(f"{p}_ms") for p in PHASES},
                    med("redirect_ms"),
                    med("total_ms"),
                    med("rtt_ms"),
                    med("server_ms"),
                    med("path_ms"),
                    rows[-1]["status"],
                    rows[-1]["cert_not_after"],
                )  # fmt: skip
            )
        return out

    def series(
        self, url: str, address: str | None, since: float, until: float, bucket_s: float
    ) -> list[dict[str, Any]]:
        """Per time bucket of one URL and address: check counts and the medians of
        each stacked part (redirect, dns, connect, tls, send, wait split into its
        network RTT share and the server's, transfer), for the report's chart."""
        conn = self._read()
        try:
            cur = conn.execute(
                "SELECT * FROM http_results WHERE url = ? AND address IS ? AND t >= ? AND t <= ?"
                " ORDER BY t",
                (url, address, since, until),
            )
            buckets: dict[int, list[sqlite3.Row]] = {}
            for row in cur:
                buckets.setdefault(int((row["t"] - since) // bucket_s), []).append(row)
        finally:
            conn.close()
        ok_values = {HttpOutcome.OK.value, HttpOutcome.CERT_EXPIRING.value}
        out = []
        for k in sorted(buckets):
            rows = buckets[k]
            good = [r for r in rows if r["outcome"] in ok_values]
            parts: dict[str, float | None] = {}
            for key in STACK:
                xs: list[float] = []
                for r in good:
                    v = _stack_value(r, key)
                    if v is not None:
                        xs.append(v)
                parts[key] = _median(xs)
            out.append({"time": since + k * bucket_s, "checks": len(rows), "ok": len(good),
                        "parts": parts,
                        "failed": sorted({r["outcome"] for r in rows} - ok_values)})  # fmt: skip
        return out


# the report's stacked parts, bottom to top; wait is split at the network RTT
STACK = ("redirect", "dns", "connect", "tls", "send", "wait_network", "server", "transfer")


def _stack_value(r: sqlite3.Row, key: str) -> float | None:
    wait, server = r["wait_ms"], r["server_ms"]
    if key == "server":
        v = server if server is not None else wait
        return None if v is None else float(v)
    if key == "wait_network":
        if wait is None:
            return None
        return 0.0 if server is None else float(wait) - float(server)
    v = r[f"{key}_ms"]
    return None if v is None else float(v)
