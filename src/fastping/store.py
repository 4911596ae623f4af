"""ResultStore: probe results in SQLite, written in batches, kept through bad moments.

Shape of the data:

- ``targets``: one row per target name, so each result row carries a small integer.
- ``results``: raw results (one row per probe, duplicate or late reply) kept for the
  retention window. ``address`` is NULL when it equals the target (the usual case)
  to keep rows small. ICMP type/code, router and errno live in ``results_extra``
  (``rid`` = the results rowid), only for results that carry any of them.
- ``rollups``: one row per target per minute for ranges older than the retention
  window: counts per outcome, min/max, sum and sum of squares (so mean and stddev
  combine exactly), jitter sums plus the minute's first and last RTT (so jitter
  combines exactly across minutes) and p50/p95/p99 computed at rollup time.
- ``meta``: the schema version.

Writing: ``submit()`` only appends to an in-memory queue (the event loop never
touches the disk). A writer task takes up to ``batch_size`` results at a time and
writes them with one ``executemany`` in one transaction, in a worker thread
(``asyncio.to_thread``). A failed write (database locked, disk full, read-only
file system) leaves the batch at the head of the queue; the writer reconnects and
retries with exponential backoff. The queue is bounded (``max_queue``): results
that do not fit are counted in ``stats()["dropped"]`` and logged at ERROR, never
lost silently.

Queries are synchronous and open their own read-only connection, so the report
command can use them on a database a running monitor is writing (WAL mode lets
readers and the writer work at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .logs import get_logger
from .results import Outcome, ProbeResult, percentile, rtt_summary

log = get_logger("fastping.store")

SCHEMA_VERSION = 1
ROLLUP_S = 60  # rollup bucket: one minute

# Outcome <-> small integer stored in the database. Append only: the numbers are on disk.
OUTCOME_CODE: dict[Outcome, int] = {
    Outcome.REPLY: 0,
    Outcome.TIMEOUT: 1,
    Outcome.UNREACHABLE: 2,
    Outcome.TIME_EXCEEDED: 3,
    Outcome.SEND_ERROR: 4,
    Outcome.LOCAL_DOWN: 5,
    Outcome.RESOLVE_ERROR: 6,
    Outcome.DUPLICATE: 7,
    Outcome.LATE: 8,
}
OUTCOME_BY_CODE: dict[int, Outcome] = {v: k for k, v in OUTCOME_CODE.items()}

# The per-outcome counter each outcome increments, in the stats dicts and rollup columns.
COUNT_KEY: dict[Outcome, str] = {
    Outcome.REPLY: "received",
    Outcome.TIMEOUT: "timeouts",
    Outcome.UNREACHABLE: "unreachable",
    Outcome.TIME_EXCEEDED: "time_exceeded",
    Outcome.SEND_ERROR: "send_errors",
    Outcome.LOCAL_DOWN: "local_down",
    Outcome.RESOLVE_ERROR: "resolve_errors",
    Outcome.DUPLICATE: "duplicates",
    Outcome.LATE: "late",
}
COUNT_KEYS: tuple[str, ...] = tuple(COUNT_KEY.values())
_COUNT_BY_CODE: dict[int, str] = {OUTCOME_CODE[o]: k for o, k in COUNT_KEY.items()}

# A probe "was sent" when it left (or tried to leave) towards the target. Duplicates and
# late replies are extra events, not probes. LOCAL_DOWN (our own network was down) and
# RESOLVE_ERROR (no address to send to) are counted apart so they never read as the
# target's packet loss.
SENT_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.REPLY, Outcome.TIMEOUT, Outcome.UNREACHABLE, Outcome.TIME_EXCEEDED, Outcome.SEND_ERROR}
)
_SENT_CODES: frozenset[int] = frozenset(OUTCOME_CODE[o] for o in SENT_OUTCOMES)
_REPLY = OUTCOME_CODE[Outcome.REPLY]

# Share of a minute's replies below each stored quantile; used to rebuild an
# approximate distribution from a rollup row (see _quantiles).
_ROLLUP_SHAPE: tuple[tuple[str, str, float], ...] = (
    ("min_ms", "p50_ms", 0.50),
    ("p50_ms", "p95_ms", 0.45),
    ("p95_ms", "p99_ms", 0.04),
    ("p99_ms", "max_ms", 0.01),
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS results (
    t REAL NOT NULL,            -- Unix seconds when the outcome was known
    tid INTEGER NOT NULL,       -- targets.id
    seq INTEGER NOT NULL,
    outcome INTEGER NOT NULL,   -- OUTCOME_CODE
    rtt_ms REAL,
    ttl INTEGER,
    address TEXT                -- NULL: equal to the target name; '': none (unresolved)
);
-- The fields only ICMP errors and send errors carry, in a row of their own (rid =
-- results.rowid) only for the results that have any: most results are replies and
-- timeouts, and five NULL columns per row cost as much to write as the rest of it.
CREATE TABLE IF NOT EXISTS results_extra (
    rid INTEGER PRIMARY KEY,
    icmp_type INTEGER,
    icmp_code INTEGER,
    router TEXT,
    errno INTEGER
);
CREATE INDEX IF NOT EXISTS results_tid_t ON results (tid, t);
CREATE TABLE IF NOT EXISTS rollups (
    tid INTEGER NOT NULL,
    minute INTEGER NOT NULL,    -- Unix seconds of the minute's start
    address TEXT,
    sent INTEGER NOT NULL,
    {", ".join(f"{k} INTEGER NOT NULL" for k in COUNT_KEYS)},
    min_ms REAL, max_ms REAL, sum_ms REAL NOT NULL, sumsq_ms REAL NOT NULL,
    p50_ms REAL, p95_ms REAL, p99_ms REAL,
    jitter_sum_ms REAL NOT NULL, jitter_n INTEGER NOT NULL,
    first_rtt_ms REAL, last_rtt_ms REAL,
    PRIMARY KEY (tid, minute)
) WITHOUT ROWID;
"""

_ROLLUP_COLS: tuple[str, ...] = (
    "tid", "minute", "address", "sent", *COUNT_KEYS,
    "min_ms", "max_ms", "sum_ms", "sumsq_ms", "p50_ms", "p95_ms", "p99_ms",
    "jitter_sum_ms", "jitter_n", "first_rtt_ms", "last_rtt_ms",
)  # fmt: skip

# What a malformed ProbeResult raises while being turned into a row or inserted (never
# a disk or lock problem: those are sqlite3.OperationalError and are retried).
_MALFORMED: tuple[type[Exception], ...] = (
    KeyError, TypeError, ValueError, AttributeError, OverflowError,
    sqlite3.InterfaceError, sqlite3.IntegrityError,
    sqlite3.ProgrammingError,  # "Error binding parameter N: type 'list' is not supported"
)  # fmt: skip

_INSERT_RESULT = (
    "INSERT INTO results (t, tid, seq, outcome, rtt_ms, ttl, address) VALUES (?,?,?,?,?,?,?)"
)
_INSERT_EXTRA = (
    "INSERT INTO results_extra (rid, icmp_type, icmp_code, router, errno) VALUES (?,?,?,?,?)"
)


def _connect(
    path: Path, *, readonly: bool = False, busy_timeout_ms: int = 200
) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    else:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction a batch.
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


class _Writer:
    """The write side: one connection, used by one worker thread at a time."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None
        self.tids: dict[str, int] = {}
        # The writer task and an explicit rollup() may run in two worker threads; one
        # connection must see one transaction at a time.
        self.lock = threading.Lock()

    def open(self) -> sqlite3.Connection:
        if self.conn is None:
            conn = _connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
            try:
                # WAL: readers (the report command) never block the writer, and a commit
                # is one sequential append. synchronous=NORMAL in WAL mode is still
                # corruption-safe; a power cut can only lose the last commits.
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"could not switch to WAL (mode is {mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def open_locked(self) -> None:
        with self.lock:
            try:
                self.open()
            except BaseException:
                self.close()
                raise

    def shutdown(self) -> None:
        with self.lock:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def _tid(self, conn: sqlite3.Connection, name: str, new: dict[str, int]) -> int:
        tid = self.tids.get(name) or new.get(name)
        if tid is None:
            conn.execute("INSERT OR IGNORE INTO targets (name) VALUES (?)", (name,))
            tid = int(conn.execute("SELECT id FROM targets WHERE name = ?", (name,)).fetchone()[0])
            new[name] = tid
        return tid

    def write(self, batch: Sequence[ProbeResult]) -> list[tuple[ProbeResult, str]]:
        """Write one batch in one transaction (runs in a worker thread). Returns the
        results that can never be written (malformed), with the reason; everything else
        is committed. On a failure of the database (locked, full, read-only) nothing is
        committed, the error propagates, and the connection is closed: after a
        read-only or I/O error it can stay unusable even when the cause is gone, so the
        retry starts on a fresh one."""
        with self.lock:
            try:
                return self._write(batch)
            except BaseException:
                self.close()
                raise

    def _insert(
        self, conn: sqlite3.Connection, batch: Sequence[ProbeResult], new: dict[str, int]
    ) -> None:
        """INSERT ``batch`` in order: plain results (no ICMP error / errno fields, nearly
        all of them) with one executemany per run, the others one at a time with their
        results_extra row. This loop is the writer's per-result Python work (10,000 a
        second at the issue-4 benchmark): keep it to tuple building."""
        tids = self.tids
        codes = OUTCOME_CODE
        rows: list[tuple[Any, ...]] = []
        for r in batch:
            target = r.target
            tid = tids.get(target) or new.get(target) or self._tid(conn, target, new)
            address = r.address
            row = (
                float(r.time), tid, int(r.seq), codes[r.outcome], r.rtt_ms, r.ttl,
                None if address == target else ("" if address is None else address),
            )  # fmt: skip
            plain = r.errno is None and r.router is None
            if plain and r.icmp_type is None and r.icmp_code is None:
                rows.append(row)
                continue
            if rows:
                conn.executemany(_INSERT_RESULT, rows)
                rows = []
            rid = conn.execute(_INSERT_RESULT, row).lastrowid
            conn.execute(_INSERT_EXTRA, (rid, r.icmp_type, r.icmp_code, r.router, r.errno))
        if rows:
            conn.executemany(_INSERT_RESULT, rows)

    def _write(self, batch: Sequence[ProbeResult]) -> list[tuple[ProbeResult, str]]:
        conn = self.open()
        new: dict[str, int] = {}
        bad: list[tuple[ProbeResult, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                self._insert(conn, batch, new)
            except _MALFORMED as e:
                # Something in the batch cannot be stored as it is (a caller bug, not a
                # disk problem). Retrying would fail forever and block everything behind
                # it, so write the rows one at a time and set the bad ones aside.
                del e
                conn.execute("ROLLBACK")
                new.clear()
                conn.execute("BEGIN IMMEDIATE")
                for r in batch:
                    known = dict(new)
                    try:
                        conn.execute("SAVEPOINT one")
                        self._insert(conn, (r,), new)
                        conn.execute("RELEASE one")
                    except _MALFORMED as e2:
                        # the results row may be in without its extra row: undo both
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        new.clear()  # a target row made inside the savepoint is gone too
                        new.update(known)
                        bad.append((r, f"{type(e2).__name__}: {e2}"))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        # only ids that were committed are remembered
        self.tids.update(new)
        return bad

    def rollup(self, cutoff: float, chunk_targets: int = 200) -> int:
        """Fold raw results older than ``cutoff`` (a minute boundary) into per-minute
        rollups and delete them. One transaction per chunk of targets keeps each
        write lock short. Returns the number of raw rows folded."""
        with self.lock:
            try:
                return self._rollup(cutoff, chunk_targets)
            except BaseException:
                self.close()
                raise

    def _rollup(self, cutoff: float, chunk_targets: int) -> int:
        conn = self.open()
        # One index seek per target ((tid, t) index), not a scan of every raw row.
        tids = [int(r[0]) for r in conn.execute("SELECT id FROM targets ORDER BY id")]
        folded = 0
        for i in range(0, len(tids), chunk_targets):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for tid in tids[i : i + chunk_targets]:
                    folded += self._rollup_target(conn, tid, cutoff)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return folded

    def _rollup_target(self, conn: sqlite3.Connection, tid: int, cutoff: float) -> int:
        rows = conn.execute(
            "SELECT t, outcome, rtt_ms, address FROM results WHERE tid = ? AND t < ? ORDER BY t",
            (tid, cutoff),
        ).fetchall()
        minutes: dict[int, list[tuple[float, int, float | None, str | None]]] = {}
        for row in rows:
            minutes.setdefault(int(row[0] // ROLLUP_S) * ROLLUP_S, []).append(row)
        placeholders = ",".join("?" * len(_ROLLUP_COLS))
        for minute, mrows in minutes.items():
            new = _rollup_row(tid, minute, mrows)
            old = conn.execute(
                f"SELECT {', '.join(_ROLLUP_COLS)} FROM rollups WHERE tid = ? AND minute = ?",
                (tid, minute),
            ).fetchone()
            if old is not None:  # late-written stragglers for a minute already folded
                new = _merge_rollups(dict(zip(_ROLLUP_COLS, old, strict=True)), new)
            conn.execute(
                f"INSERT OR REPLACE INTO rollups ({', '.join(_ROLLUP_COLS)}) "
                f"VALUES ({placeholders})",
                [new[c] for c in _ROLLUP_COLS],
            )
        conn.execute(
            "DELETE FROM results_extra WHERE rid IN "
            "(SELECT rowid FROM results WHERE tid = ? AND t < ?)",
            (tid, cutoff),
        )
        conn.execute("DELETE FROM results WHERE tid = ? AND t < ?", (tid, cutoff))
        return len(rows)


def _encode_address(r: ProbeResult) -> str | None:
    if r.address == r.target:
        return None  # the usual case for numeric targets: store nothing
    return "" if r.address is None else r.address


def _decode_address(target: str, stored: str | None) -> str | None:
    if stored is None:
        return target
    return stored or None


def _rollup_row(
    tid: int, minute: int, rows: Sequence[tuple[float, int, float | None, str | None]]
) -> dict[str, Any]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    sent = 0
    rtts: list[float] = []
    address: str | None = None
    for _t, code, rtt, addr in rows:
        counts[_COUNT_BY_CODE[code]] += 1
        if code in _SENT_CODES:
            sent += 1
        if code == _REPLY and rtt is not None:
            rtts.append(rtt)
        if addr is not None:
            address = addr
    s = sorted(rtts)
    jit = [abs(rtts[i] - rtts[i - 1]) for i in range(1, len(rtts))]
    return {
        "tid": tid, "minute": minute, "address": address, "sent": sent, **counts,
        "min_ms": s[0] if s else None, "max_ms": s[-1] if s else None,
        "sum_ms": math.fsum(rtts), "sumsq_ms": math.fsum(x * x for x in rtts),
        "p50_ms": percentile(s, 50), "p95_ms": percentile(s, 95), "p99_ms": percentile(s, 99),
        "jitter_sum_ms": math.fsum(jit), "jitter_n": len(jit),
        "first_rtt_ms": rtts[0] if rtts else None, "last_rtt_ms": rtts[-1] if rtts else None,
    }  # fmt: skip


def _merge_rollups(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two rollups of the same minute (stragglers written after the minute was folded).
    Counts, sums and extremes merge exactly; the quantiles become the reply-weighted
    mean of both, which is approximate (and rare)."""
    out = dict(a)
    for k in ("sent", *COUNT_KEYS, "sum_ms", "sumsq_ms", "jitter_sum_ms", "jitter_n"):
        out[k] = a[k] + b[k]
    for k, f in (("min_ms", min), ("max_ms", max)):
        vals = [v for v in (a[k], b[k]) if v is not None]
        out[k] = f(vals) if vals else None
    na, nb = a["received"], b["received"]
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        if a[k] is None or b[k] is None:
            out[k] = a[k] if b[k] is None else b[k]
        else:
            out[k] = (a[k] * na + b[k] * nb) / (na + nb)
    out["first_rtt_ms"] = a["first_rtt_ms"] if a["first_rtt_ms"] is not None else b["first_rtt_ms"]
    out["last_rtt_ms"] = b["last_rtt_ms"] if b["last_rtt_ms"] is not None else a["last_rtt_ms"]
    out["address"] = b["address"] or a["address"]
    return out


@dataclass
class _Acc:
    """Accumulates raw results and rollup rows (in time order) into one stats dict."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    sent: int = 0
    raw_rtts: list[float] = field(default_factory=list)
    pieces: list[tuple[float, float, float]] = field(default_factory=list)  # (lo, hi, mass)
    n: int = 0
    sum_ms: float = 0.0
    sumsq_ms: float = 0.0
    min_ms: float | None = None
    max_ms: float | None = None
    jit_sum: float = 0.0
    jit_n: int = 0
    prev_rtt: float | None = None
    address: str | None = None
    first_time: float | None = None
    last_time: float | None = None
    rolled: bool = False

    def _rtt(self, rtt: float) -> None:
        self.n += 1
        self.sum_ms += rtt
        self.sumsq_ms += rtt * rtt
        self.min_ms = rtt if self.min_ms is None else min(self.min_ms, rtt)
        self.max_ms = rtt if self.max_ms is None else max(self.max_ms, rtt)

    def _seen(self, t: float, end: float) -> None:
        if self.first_time is None:
            self.first_time = t
        self.last_time = end

    def add_raw(self, t: float, code: int, rtt: float | None, address: str | None) -> None:
        self.counts[_COUNT_BY_CODE[code]] += 1
        if code in _SENT_CODES:
            self.sent += 1
        if code == _REPLY and rtt is not None:
            self._rtt(rtt)
            self.raw_rtts.append(rtt)
            self.pieces.append((rtt, rtt, 1.0))
            if self.prev_rtt is not None:
                self.jit_sum += abs(rtt - self.prev_rtt)
                self.jit_n += 1
            self.prev_rtt = rtt
        if address is not None:
            self.address = address
        self._seen(t, t)

    def add_rollup(self, r: dict[str, Any]) -> None:
        self.rolled = True
        for k in COUNT_KEYS:
            self.counts[k] += r[k]
        self.sent += r["sent"]
        n = r["received"]
        if r["min_ms"] is not None and n > 0:
            self.n += n
            self.sum_ms += r["sum_ms"]
            self.sumsq_ms += r["sumsq_ms"]
            self.min_ms = r["min_ms"] if self.min_ms is None else min(self.min_ms, r["min_ms"])
            self.max_ms = r["max_ms"] if self.max_ms is None else max(self.max_ms, r["max_ms"])
            for lo_k, hi_k, share in _ROLLUP_SHAPE:
                self.pieces.append((r[lo_k], r[hi_k], share * n))
            self.jit_sum += r["jitter_sum_ms"]
            self.jit_n += r["jitter_n"]
            if self.prev_rtt is not None and r["first_rtt_ms"] is not None:
                # the pair across the boundary between the previous data and this minute
                self.jit_sum += abs(r["first_rtt_ms"] - self.prev_rtt)
                self.jit_n += 1
            if r["last_rtt_ms"] is not None:
                self.prev_rtt = r["last_rtt_ms"]
        if r["address"] is not None:
            self.address = r["address"]
        self._seen(float(r["minute"]), float(r["minute"] + ROLLUP_S))

    def empty(self) -> bool:
        return self.first_time is None

    def spread(self) -> dict[str, float | None]:
        """p5, p25 and p75 (for the chart's smoke bands)."""
        qs = (5.0, 25.0, 75.0)
        if not self.rolled:
            s = sorted(self.raw_rtts)
            vals = [percentile(s, q) for q in qs]
        elif self.n == 0:
            vals = [None, None, None]
        else:
            vals = list(_quantiles(self.pieces, [q / 100 for q in qs]))
        return dict(zip(("p5_ms", "p25_ms", "p75_ms"), vals, strict=True))

    def result(self, target: str) -> dict[str, Any]:
        if not self.rolled:
            # Raw results only: exactly the numbers rtt_summary gives for the same RTTs.
            summ = rtt_summary(self.raw_rtts)
        elif self.n == 0:
            summ = rtt_summary([])
        else:
            avg = self.sum_ms / self.n
            p50, p95, p99 = _quantiles(self.pieces, (0.50, 0.95, 0.99))
            summ = {
                "min_ms": self.min_ms,
                "avg_ms": avg,
                "max_ms": self.max_ms,
                "stddev_ms": math.sqrt(max(0.0, self.sumsq_ms / self.n - avg * avg)),
                "jitter_ms": self.jit_sum / self.jit_n if self.jit_n else None,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
            }
        received = self.counts["received"]
        out: dict[str, Any] = {
            "target": target,
            "address": self.address or target,
            "sent": self.sent,
            "received": received,
            # like HostResult.loss: 1.0 when nothing was sent
            "loss": (self.sent - received) / self.sent if self.sent else 1.0,
            **summ,
            **{k: v for k, v in self.counts.items() if k != "received"},
            "first_time": self.first_time,
            "last_time": self.last_time,
            # True when part of the window came from minute rollups: percentiles are
            # then estimates (everything else is exact).
            "approximate": self.rolled,
        }
        return out


def _quantiles(pieces: Sequence[tuple[float, float, float]], qs: Sequence[float]) -> list[float]:
    """Quantiles of a mixture of point masses (lo == hi) and uniform pieces (lo < hi).

    Rollup minutes are rebuilt as uniform pieces between their stored quantiles
    (min..p50 holds half of the replies, p50..p95 45 %, ...), raw RTTs are points.
    A line sweep over the sorted piece ends finds where the cumulative mass crosses
    each requested share."""
    total = sum(m for _, _, m in pieces)
    events: dict[float, list[float]] = {}  # x -> [point mass, density change]
    for lo, hi, m in pieces:
        if m <= 0:
            continue
        if hi <= lo:
            events.setdefault(lo, [0.0, 0.0])[0] += m
        else:
            d = m / (hi - lo)
            events.setdefault(lo, [0.0, 0.0])[1] += d
            events.setdefault(hi, [0.0, 0.0])[1] -= d
    xs = sorted(events)
    out: list[float] = []
    for q in qs:
        goal = q * total
        cum = 0.0
        dens = 0.0
        ans = xs[-1] if xs else math.nan
        for i, x in enumerate(xs):
            point, dd = events[x]
            cum += point
            if cum >= goal and point > 0:
                ans = x
                break
            dens += dd
            if i + 1 < len(xs) and dens > 1e-12:
                seg = dens * (xs[i + 1] - x)
                if cum + seg >= goal:
                    ans = x + (goal - cum) / dens
                    break
                cum += seg
        out.append(ans)
    return out


class ResultStore:
    """Probe results in a SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_s: float = 7 * 86400,
        batch_size: int = 1000,
        flush_interval_s: float = 0.5,
        max_queue: int = 1_000_000,
        rollup_interval_s: float = 60.0,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        busy_timeout_ms: int = 200,
    ) -> None:
        for name, value in (
            ("retention_s", retention_s),
            ("batch_size", batch_size),
            ("flush_interval_s", flush_interval_s),
            ("max_queue", max_queue),
            ("rollup_interval_s", rollup_interval_s),
            ("retry_initial_s", retry_initial_s),
            ("retry_max_s", retry_max_s),
        ):
            if not value > 0:
                raise ConfigError(f"store {name}: {value!r} is not allowed: must be > 0")
        self.path = Path(path)
        self.retention_s = float(retention_s)
        self.batch_size = int(batch_size)
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)
        self.rollup_interval_s = float(rollup_interval_s)
        self.retry_initial_s = float(retry_initial_s)
        self.retry_max_s = float(retry_max_s)
        self._writer = _Writer(self.path, busy_timeout_ms)
        self._queue: deque[ProbeResult] = deque()
        self._lock = threading.Lock()  # submit() may be called from other threads
        self._written = 0
        self._dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        self._last_failure_log = 0.0
        self._write_failures = 0
        self._retries = 0
        self._rollup_rows = 0
        self._last_error: str | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._next_rollup = 0.0
        self._submitted_total = 0  # results accepted into the queue, ever
        self._done = 0  # results accepted and since written or dropped at close
        self._progress: asyncio.Condition | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (WAL) and start the writer task. A database that cannot be
        written right now (locked, read-only, full) is retried by the writer; only a
        path that can never work (its directory is missing, it is a directory) raises."""
        if self._task is not None:
            return
        parent = self.path.resolve().parent
        if not parent.is_dir():
            raise ConfigError(
                f"store path {str(self.path)!r}: directory {str(parent)!r} does not exist; "
                "create it or choose another --db / store.path"
            )
        if self.path.is_dir():
            raise ConfigError(
                f"store path {str(self.path)!r} is a directory; give a file name such as "
                f"{str(self.path / 'fastping.db')!r}"
            )
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._closing = False
        self._closed = False
        try:
            await asyncio.to_thread(self._writer.open_locked)
        except (sqlite3.Error, OSError) as e:
            self._note_failure(e, "open")
        self._next_rollup = time.monotonic() + self.rollup_interval_s
        self._task = asyncio.create_task(self._run(), name="fastping-store-writer")

    def submit(self, results: Iterable[ProbeResult]) -> None:
        """Queue results for writing. Never blocks, never raises for a full queue:
        what does not fit is counted in ``stats()["dropped"]`` and logged at ERROR."""
        with self._lock:
            # after close() nothing would ever write them: count them, do not hold them
            room = 0 if self._closed else self.max_queue - len(self._queue)
            n = 0
            dropped = 0
            for r in results:
                if n < room:
                    self._queue.append(r)
                    n += 1
                else:
                    dropped += 1
            self._submitted_total += n
            if dropped:
                self._dropped += dropped
                self._dropped_unlogged += dropped
        if dropped:
            self._log_drops()
        if self._wake is not None and len(self._queue) >= self.batch_size:
            self._set_wake()

    def _set_wake(self) -> None:
        assert self._wake is not None and self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:  # submitted from another thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: close() counted all
                self._loop.call_soon_threadsafe(self._wake.set)

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        # First drop at once, then at most one line every 5 s (a stuck disk at 10k
        # results/s must not also flood the log), and always at close.
        if self._dropped_unlogged and (
            force or self._last_drop_log == 0.0 or now - self._last_drop_log >= 5.0
        ):
            log.error(
                "store queue full: results dropped",
                dropped=self._dropped_unlogged,
                dropped_total=self._dropped,
                queued=len(self._queue),
                max_queue=self.max_queue,
                last_error=self._last_error,
                db=str(self.path),
            )
            self._dropped_unlogged = 0
            self._last_drop_log = now

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or was counted as dropped).
        Returns False if ``timeout_s`` passed first; the results stay queued."""
        goal = self._submitted_total
        if self._done >= goal:
            return True
        if self._task is None or self._progress is None:
            raise RuntimeError("ResultStore.flush() before start(): nothing writes the queue")
        assert self._wake is not None
        self._wake.set()

        async def wait() -> None:
            assert self._progress is not None
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self._done >= goal or self._task is None or self._task.done()
                )

        try:
            await asyncio.wait_for(wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return self._done >= goal

    async def close(self, timeout_s: float = 30.0) -> None:
        """Flush (waiting at most ``timeout_s`` for a failing database) and stop. Results
        still unwritten then are counted as dropped and logged at ERROR."""
        if self._task is None:
            return
        await self.flush(timeout_s)
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        # No cancel: a write in its worker thread cannot be interrupted, and counting its
        # batch as dropped while it commits would count it twice. The writer makes at
        # most one more attempt once it sees _closing.
        await self._task
        self._task = None
        with self._lock:
            self._closed = True
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._dropped += left  # logged just below, in words of its own
                self._done += left
        if left:
            log.error(
                "store closed with unwritten results",
                unwritten=left,
                last_error=self._last_error,
                db=str(self.path),
            )
        self._log_drops(force=True)
        await self._notify()  # wake flush() callers waiting elsewhere
        await asyncio.to_thread(self._writer.shutdown)

    async def __aenter__(self) -> ResultStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> dict[str, Any]:
        """Counters: queued (accepted, not yet written), written, dropped, write_failures
        (failed write attempts), retries (writes attempted again after a failure)."""
        return {
            "queued": len(self._queue),
            "written": self._written,
            "dropped": self._dropped,
            "write_failures": self._write_failures,
            "retries": self._retries,
            "rolled_up": self._rollup_rows,
            "last_error": self._last_error,
        }

    # ---- writer task -----------------------------------------------------------------

    def _note_failure(self, e: BaseException, what: str) -> None:
        self._write_failures += 1
        name = getattr(e, "sqlite_errorname", type(e).__name__)
        self._last_error = f"{name}: {e}"
        now = time.monotonic()
        # the first failure at once, then one line every 5 s while it lasts
        if self._last_failure_log == 0.0 or now - self._last_failure_log >= 5.0:
            self._last_failure_log = now
            log.warning(
                "store write failed; results kept in the queue for retry",
                op=what,
                error=self._last_error,
                queued=len(self._queue),
                failures=self._write_failures,
                db=str(self.path),
            )

    async def _notify(self) -> None:
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        assert self._wake is not None
        delay = 0.0  # backoff after a failure
        failing = False
        while True:
            if not self._queue and self._closing:
                return
            if not failing and len(self._queue) < self.batch_size and not self._closing:
                # wait for a full batch, a flush, or the interval
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                self._wake.clear()
            elif failing:
                with contextlib.suppress(asyncio.TimeoutError):
                    # close() wakes us to give up sooner; a flush() does not skip the backoff
                    await asyncio.wait_for(self._wait_closing(), delay)
                self._retries += 1
            if self._queue:
                with self._lock:
                    batch = list(itertools.islice(self._queue, self.batch_size))
                try:
                    bad = await asyncio.to_thread(self._writer.write, batch)
                except Exception as e:  # noqa: BLE001 - locked, full, read-only, I/O, ...
                    # Whatever went wrong, the batch stays queued: a writer task that
                    # died here would lose everything after it without a word.
                    self._note_failure(e, "write")
                    delay = min(self.retry_max_s, max(self.retry_initial_s, delay * 2))
                    failing = True
                    if self._closing:
                        return  # close() counts what is left
                    continue
                with self._lock:
                    for _ in range(len(batch)):
                        self._queue.popleft()
                    self._written += len(batch) - len(bad)
                    self._dropped += len(bad)
                    self._done += len(batch)
                if bad:
                    log.error(
                        "store dropped malformed results",
                        dropped=len(bad),
                        first=repr(bad[0][0]),
                        reason=bad[0][1],
                        db=str(self.path),
                    )
                if failing:
                    self._last_failure_log = 0.0
                    log.info("store writes recovered", queued=len(self._queue), db=str(self.path))
                failing = False
                delay = 0.0
                await self._notify()
            if time.monotonic() >= self._next_rollup and not self._closing:
                await self._maybe_rollup()

    async def _wait_closing(self) -> None:
        while not self._closing:
            assert self._wake is not None
            await self._wake.wait()
            self._wake.clear()

    async def _maybe_rollup(self) -> None:
        self._next_rollup = time.monotonic() + self.rollup_interval_s
        try:
            await self.rollup()
        except (sqlite3.Error, OSError) as e:
            # raw rows stay in place; the next round folds them
            log.warning("store rollup failed; will retry", error=f"{e}", db=str(self.path))

    async def rollup(self, now: float | None = None) -> int:
        """Fold raw results older than the retention window (whole minutes) into
        per-minute rollups and delete them. The writer does this every
        ``rollup_interval_s``; call it to force one. Returns rows folded."""
        cutoff = _minute_floor((time.time() if now is None else now) - self.retention_s)
        n = await asyncio.to_thread(self._writer.rollup, cutoff)
        self._rollup_rows += n
        if n:
            log.info("store rolled up old results", rows=n, before=cutoff, db=str(self.path))
        return n

    # ---- queries (sync; own read-only connection) -------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            raise ConfigError(
                f"no fastping database at {str(self.path)!r}: run "
                f"`fastping monitor --db {self.path}` first, or give the right --db"
            )
        try:
            conn = _connect(self.path, readonly=True, busy_timeout_ms=5000)
            conn.execute("SELECT 1 FROM targets LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{str(self.path)!r} is not a fastping database ({e}); give the file "
                "`fastping monitor --db` writes"
            ) from None
        try:
            yield conn
        finally:
            conn.close()

    def targets(self) -> list[str]:
        """Every target name the store has seen, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM targets ORDER BY name")]

    def recent(self, target: str, limit: int = 100) -> list[ProbeResult]:
        """The latest raw results of ``target``, oldest first."""
        with self._read() as conn:
            row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
            if row is None:
                return []
            rows = conn.execute(
                "SELECT r.t, r.seq, r.outcome, r.rtt_ms, r.ttl, e.icmp_type, e.icmp_code,"
                " e.router, e.errno, r.address FROM results r"
                " LEFT JOIN results_extra e ON e.rid = r.rowid"
                " WHERE r.tid = ? ORDER BY r.t DESC, r.rowid DESC LIMIT ?",
                (row[0], int(limit)),
            ).fetchall()
        return [
            ProbeResult(
                target=target,
                address=_decode_address(target, r[9]),
                seq=r[1],
                outcome=OUTCOME_BY_CODE[r[2]],
                rtt_ms=r[3],
                ttl=r[4],
                icmp_type=r[5],
                icmp_code=r[6],
                router=r[7],
                errno=r[8],
                time=r[0],
            )  # fmt: skip
            for r in reversed(rows)
        ]

    def _accumulate(
        self,
        conn: sqlite3.Connection,
        target: str,
        tid: int,
        since: float | None,
        until: float | None,
        bucket_s: float | None = None,
    ) -> dict[int, _Acc]:
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        # A rollup minute is in the window when it overlaps it.
        rolls = conn.execute(
            f"SELECT {', '.join(_ROLLUP_COLS)} FROM rollups WHERE tid = ? AND minute > ? "
            "AND minute <= ? ORDER BY minute",
            (tid, lo - ROLLUP_S, hi),
        ).fetchall()
        raws = conn.execute(
            "SELECT t, outcome, rtt_ms, address FROM results WHERE tid = ? AND t >= ? AND t <= ?"
            " ORDER BY t, rowid",
            (tid, lo, hi),
        ).fetchall()
        accs: dict[int, _Acc] = {}

        def acc(t: float) -> _Acc:
            k = 0 if bucket_s is None else int(t // bucket_s)
            a = accs.get(k)
            if a is None:
                a = accs[k] = _Acc()
            return a

        # Merge both streams in time order (jitter pairs successive RTTs).
        i = 0
        for r in rolls:
            rd = dict(zip(_ROLLUP_COLS, r, strict=True))
            rd["address"] = _decode_address(target, rd["address"])
            while i < len(raws) and raws[i][0] < rd["minute"]:
                t, code, rtt, addr = raws[i]
                acc(t).add_raw(t, code, rtt, _decode_address(target, addr))
                i += 1
            acc(float(rd["minute"])).add_rollup(rd)
        for t, code, rtt, addr in raws[i:]:
            acc(t).add_raw(t, code, rtt, _decode_address(target, addr))
        return accs

    def target_stats(
        self, target: str, since: float | None = None, until: float | None = None
    ) -> dict[str, Any] | None:
        """Stats of ``target`` over [since, until] (Unix seconds; None = open end), or
        None when it has no results there. Keys: those of ``fastping sweep --json``
        (target, address, sent, received, loss, min_ms, avg_ms, max_ms) plus stddev_ms,
        jitter_ms, p50_ms, p95_ms, p99_ms, one count per other outcome, first_time,
        last_time and ``approximate`` (percentiles estimated from minute rollups)."""
        with self._read() as conn:
            row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
            if row is None:
                return None
            a = self._accumulate(conn, target, int(row[0]), since, until).get(0)
        return None if a is None or a.empty() else a.result(target)

    def all_stats(
        self, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """``target_stats`` of every target with results in the window, by target name."""
        out = []
        with self._read() as conn:
            for tid, name in conn.execute("SELECT id, name FROM targets ORDER BY name").fetchall():
                a = self._accumulate(conn, name, int(tid), since, until).get(0)
                if a is not None and not a.empty():
                    out.append(a.result(name))
        return out

    def series(
        self, target: str, since: float | None, until: float | None, bucket_s: float
    ) -> list[dict[str, Any]]:
        """Stats of ``target`` per time bucket (for charts): one dict per bucket that has
        results, oldest first, each a ``target_stats`` dict plus ``time`` (bucket start).
        Buckets shorter than a minute only split raw results (rollups are per minute).
        Each bucket also has p5_ms, p25_ms and p75_ms for the chart's spread bands."""
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
        with self._read() as conn:
            row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
            if row is None:
                return []
            accs = self._accumulate(conn, target, int(row[0]), since, until, bucket_s)
        out = []
        for k in sorted(accs):
            d = accs[k].result(target)
            d.update(accs[k].spread())
            d["time"] = k * bucket_s
            out.append(d)
        return out

    def time_range(self) -> tuple[float, float] | None:
        """(oldest, newest) result time in the store, or None when it is empty."""
        with self._read() as conn:
            r = conn.execute("SELECT min(t), max(t) FROM results").fetchone()
            m = conn.execute("SELECT min(minute), max(minute) FROM rollups").fetchone()
        lows = [v for v in (r[0], m[0]) if v is not None]
        highs = [v for v in (r[1], None if m[1] is None else m[1] + ROLLUP_S) if v is not None]
        if not lows:
            return None
        return float(min(lows)), float(max(highs))


def _minute_floor(t: float) -> float:
    return float(math.floor(t / ROLLUP_S) * ROLLUP_S)


__all__ = ["COUNT_KEYS", "SENT_OUTCOMES", "ResultStore"]
