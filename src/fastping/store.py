"""ResultStore: probe results in SQLite, one row per target per write batch.

Shape of the data (schema version 4):

- ``targets``: one row per target name, so each result row carries a small integer,
  with its probe kind and port (schema 3) and a DNS target's question (schema 4).
- ``results``: raw results kept for the retention window, packed: one row holds one
  target's results over a span of time as a chunk (``fastping.chunk``: columns of t,
  RTT, seq, outcome code and TTL, records in time order), with ``t0`` / ``t1`` its
  first and last record's time and ``n`` its record count. At 10,000 probes/s a row
  per probe cost the writer ~3.8 us a result; a row per target per flush window is
  ~1,000 rows/s. ``address`` is NULL when it equals the target (the usual case), ''
  when there was none (unresolved).
- ``results_extra``: the fields only ICMP errors and send errors carry (ICMP type and
  code, router, errno), keyed by ``(tid, t, seq, outcome)`` so a query joins them back
  to their record, only for the results that have any.
- ``rollups``: one row per target per minute for ranges older than the retention
  window: counts per outcome, min/max, sum and sum of squares (so mean and stddev
  combine exactly), jitter sums plus the minute's first and last RTT (so jitter
  combines exactly across minutes) and p50/p95/p99 computed at rollup time. Only
  chunks entirely older than the cutoff are folded; a chunk straddling it waits.
- ``dns_answers``: DNS targets' answers per minute by rcode and TC (schema 4), counted
  as their chunks are written (a DNS reply's ttl byte is its answer code).
- ``meta``: the schema version.

Writing: ``submit()`` (ProbeResults) and ``submit_chunks()`` (chunks the core already
packed) only append to in-memory queues (the event loop never touches the disk). A
writer task takes up to ``batch_size`` records at a time and writes them in one
transaction in a worker thread (``asyncio.to_thread``), packing the ProbeResults of
each (target, address) into one chunk. A failed write (database locked, disk full,
read-only file system) leaves the batch at the head of the queue; the writer
reconnects and retries with exponential backoff. The queue is bounded (``max_queue``
records): what does not fit is counted in ``stats()["dropped"]`` and logged at ERROR,
never lost silently.

Queries are synchronous and open their own read-only connection, so the report
command can use them on a database a running monitor is writing (WAL mode lets
readers and the writer work at once). They decode each chunk once and work on its
columns (``bytes.count`` for outcome counts, ``itertools.compress`` for the RTTs of
replies) rather than record by record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sqlite3
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, mul, sub
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .chunk import OUTCOME_BY_CODE, OUTCOME_CODE, RECORD_SIZE, ChunkError, pack, unpack
from .errors import ConfigError, TargetError
from .logs import get_logger
from .loss import KIND_LOCAL, KIND_TARGET, Outage
from .results import Outcome, ProbeResult, percentile, rtt_summary

log = get_logger("fastping.store")

SCHEMA_VERSION = 4
# Older schemas this version opens: the writer migrates them in place (_MIGRATIONS),
# a reader reads them as they are (_compat_views).
_READABLE_VERSIONS = ("2", "3", str(SCHEMA_VERSION))
ROLLUP_S = 60  # rollup bucket: one minute

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
    Outcome.CLOSED: "closed",  # TCP: the port answered closed (a RST)
}
COUNT_KEYS: tuple[str, ...] = tuple(COUNT_KEY.values())
_COUNT_BY_CODE: dict[int, str] = {OUTCOME_CODE[o]: k for o, k in COUNT_KEY.items()}
_CODES: tuple[int, ...] = tuple(sorted(_COUNT_BY_CODE))
_MAX_CODE = max(_CODES)

# A probe "was sent" when it left (or tried to leave) towards the target. Duplicates and
# late replies are extra events, not probes. LOCAL_DOWN (our own network was down) and
# RESOLVE_ERROR (no address to send to) are counted apart so they never read as the
# target's packet loss.
SENT_OUTCOMES: frozenset[Outcome] = frozenset(
    {
        Outcome.REPLY,
        Outcome.TIMEOUT,
        Outcome.UNREACHABLE,
        Outcome.TIME_EXCEEDED,
        Outcome.SEND_ERROR,
        Outcome.CLOSED,  # sent and answered, but not a reply: in the loss (no service)
    }
)
_SENT_CODES: frozenset[int] = frozenset(OUTCOME_CODE[o] for o in SENT_OUTCOMES)
_REPLY = OUTCOME_CODE[Outcome.REPLY]
_TIMEOUT = OUTCOME_CODE[Outcome.TIMEOUT]
# bytes.translate table: the code column -> 1 for a reply, 0 otherwise (a mask for
# itertools.compress, both at C speed)
_REPLY_MASK = bytes(1 if c == _REPLY else 0 for c in range(256))

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
-- kind: targets.PROBE_KINDS ('icmp', 'tcp', ...); port: 0 for ICMP. Both follow from
-- the name (tcp://host:port) and are kept as columns for queries by kind.
-- qname, qtype: a DNS target's question (NULL for the other kinds; port: its server's)
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'icmp', port INTEGER NOT NULL DEFAULT 0,
    qname TEXT, qtype TEXT
);
CREATE TABLE IF NOT EXISTS results (
    tid INTEGER NOT NULL,       -- targets.id
    t0 REAL NOT NULL,           -- first record's time (Unix seconds)
    t1 REAL NOT NULL,           -- last record's time
    n INTEGER NOT NULL,         -- records in data
    address TEXT,               -- NULL: equal to the target name; '': none (unresolved)
    data BLOB NOT NULL          -- a chunk (fastping.chunk), records in time order
);
-- Window queries and the rollup ask "chunks of tid ending at or after t".
CREATE INDEX IF NOT EXISTS results_tid_t1 ON results (tid, t1);
-- The fields only ICMP errors and send errors carry, in a row of their own only for
-- the results that have any: most results are replies and timeouts.
CREATE TABLE IF NOT EXISTS results_extra (
    tid INTEGER NOT NULL,
    t REAL NOT NULL,
    seq INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    icmp_type INTEGER,
    icmp_code INTEGER,
    router TEXT,
    errno INTEGER
);
CREATE INDEX IF NOT EXISTS results_extra_tid_t ON results_extra (tid, t);
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
-- DNS targets: their answers per minute by rcode (with the OPT RR's extended bits) and
-- TC, counted from the replies as they are written (a reply record's ttl byte is the
-- answer's code, dnscodec.answer_code); kept as long as the rollups
CREATE TABLE IF NOT EXISTS dns_answers (
    tid INTEGER NOT NULL,
    minute INTEGER NOT NULL,
    rcode INTEGER NOT NULL,
    tc INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (tid, minute, rcode, tc)
) WITHOUT ROWID;
"""

_ROLLUP_COLS: tuple[str, ...] = (
    "tid", "minute", "address", "sent", *COUNT_KEYS,
    "min_ms", "max_ms", "sum_ms", "sumsq_ms", "p50_ms", "p95_ms", "p99_ms",
    "jitter_sum_ms", "jitter_n", "first_rtt_ms", "last_rtt_ms",
)  # fmt: skip
_ROLLUP_TOTAL = " + ".join(COUNT_KEYS)  # every record increments exactly one count

# What a malformed ProbeResult raises while being packed or inserted (never a disk or
# lock problem: those are sqlite3.OperationalError and are retried).
_MALFORMED: tuple[type[Exception], ...] = (
    KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError,
    sqlite3.InterfaceError, sqlite3.IntegrityError,
    sqlite3.ProgrammingError,  # "Error binding parameter N: type 'list' is not supported"
)  # fmt: skip

_INSERT_CHUNK = "INSERT INTO results (tid, t0, t1, n, address, data) VALUES (?,?,?,?,?,?)"
_INSERT_EXTRA = (
    "INSERT INTO results_extra (tid, t, seq, outcome, icmp_type, icmp_code, router, errno)"
    " VALUES (?,?,?,?,?,?,?,?)"
)

_TIME = attrgetter("time")
_KEY = attrgetter("target", "address")
_OUTCOME_CODE_OF = OUTCOME_CODE.__getitem__
_F32 = array("f", [0.0])


class _Chunk(NamedTuple):
    """A chunk waiting in the queue (from submit_chunks)."""

    target: str
    address: str | None  # stored form: NULL = the target, '' = none
    data: bytes
    n: int


class _Row(NamedTuple):
    """One results row ready to insert, with its extra rows and where it came from
    (for the malformed-item report)."""

    target: str
    address: str | None
    t0: float
    t1: float
    n: int
    data: bytes
    extras: list[tuple[Any, ...]]  # (t, seq, code, icmp_type, icmp_code, router, errno)
    origin: object


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


def _schema_version(conn: sqlite3.Connection) -> str | None:
    """The database's schema version, None when it has no meta table (new or foreign)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return None if row is None else str(row[0])


SQLITE_HEADER = b"SQLite format 3\x00"  # https://www.sqlite.org/fileformat.html 1.3.1


def _not_ours(path: Path, why: object) -> str:
    return (
        f"{str(path)!r} is not a fastping database ({why}); move it aside or give "
        "another --db / store.path"
    )


def _refuse_foreign(path: Path) -> None:
    """A file that is not SQLite (junk, a truncated copy) would fail every write and be
    retried forever: refuse it before anything starts. Unreadable files pass: the
    writer retries those (permissions can be fixed while it runs)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return
    if head and head != SQLITE_HEADER:
        raise ConfigError(_not_ours(path, "no SQLite header"))


# version -> the statements that bring a database of it to the next version
_MIGRATIONS: dict[str, tuple[str, ...]] = {
    "2": (
        "ALTER TABLE targets ADD COLUMN kind TEXT NOT NULL DEFAULT 'icmp'",
        "ALTER TABLE targets ADD COLUMN port INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE rollups ADD COLUMN closed INTEGER NOT NULL DEFAULT 0",
    ),
    # DNS targets (issue #18): the question with the target; dns_answers is new (_SCHEMA)
    "3": (
        "ALTER TABLE targets ADD COLUMN qname TEXT",
        "ALTER TABLE targets ADD COLUMN qtype TEXT",
    ),
}
_NO_DNS_ANSWERS = (
    "CREATE TEMP VIEW dns_answers AS SELECT 0 AS tid, 0 AS minute, 0 AS rcode, 0 AS tc, "
    "0 AS n WHERE 0"
)
# a reader of an older schema sees it through TEMP views of the missing columns
# (names resolve to temp before main, and a read-only connection may create them)
_COMPAT_VIEWS: dict[str, tuple[str, ...]] = {
    "2": (
        "CREATE TEMP VIEW targets AS SELECT id, name, 'icmp' AS kind, 0 AS port, "
        "NULL AS qname, NULL AS qtype FROM main.targets",
        "CREATE TEMP VIEW rollups AS SELECT *, 0 AS closed FROM main.rollups",
        _NO_DNS_ANSWERS,
    ),
    "3": (
        "CREATE TEMP VIEW targets AS SELECT *, NULL AS qname, NULL AS qtype FROM main.targets",
        _NO_DNS_ANSWERS,
    ),
}


def _migrate(conn: sqlite3.Connection, version: str) -> None:
    """Bring a database of an older schema to SCHEMA_VERSION, in one transaction (its
    data stays as it is: ICMP targets, no closed ports)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version != str(SCHEMA_VERSION):
            for sql in _MIGRATIONS[version]:
                conn.execute(sql)
            version = str(int(version) + 1)
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    log.info("store schema migrated", to=SCHEMA_VERSION)


def _compat_views(conn: sqlite3.Connection, version: str | None) -> None:
    for sql in _COMPAT_VIEWS.get(version or "", ()):
        conn.execute(sql)


def _check_version(path: Path, version: str | None) -> None:
    if version is None or version in _READABLE_VERSIONS:
        return
    older = version.isdigit() and int(version) < SCHEMA_VERSION
    raise ConfigError(
        f"{str(path)!r} holds fastping database schema {version} (written by "
        f"{'an older' if older else 'another'} fastping); this version reads and writes "
        f"schema {SCHEMA_VERSION} and does not convert it: move the file aside "
        f"(mv {path} {path}.v{version}) or give a new --db / store.path"
    )


def kind_port(name: str) -> tuple[str, int]:
    """The probe kind and port of a stored target name (icmp, 0 for a plain host)."""
    from .targets import ICMP, split_kind

    try:
        kt = split_kind(name)
    except TargetError:  # a name some other writer stored: not ours to judge
        return ICMP, 0
    return kt.kind, kt.port


def target_columns(name: str) -> tuple[str, int, str | None, str | None]:
    """kind, port, qname, qtype of a stored target name (the question: DNS only)."""
    from .targets import split_kind

    kind, port = kind_port(name)
    if kind != "dns":
        return kind, port, None, None
    kt = split_kind(name)
    return kind, port, kt.qname, kt.qtype


_UPSERT_DNS = (
    "INSERT INTO dns_answers (tid, minute, rcode, tc, n) VALUES (?,?,?,?,?) "
    "ON CONFLICT (tid, minute, rcode, tc) DO UPDATE SET n = n + excluded.n"
)


def dns_answer_counts(data: bytes) -> dict[tuple[int, int, int], int]:
    """(minute, rcode, tc) -> replies of a DNS target's chunk (its ttl column is the
    answer code of each reply)."""
    from .dnscodec import read_answer_code

    cols = unpack(data)
    out: dict[tuple[int, int, int], int] = {}
    for t, code, ttl in zip(cols.t, cols.code, cols.ttl, strict=True):
        if code != _REPLY:
            continue
        rc = read_answer_code(ttl)
        if rc is None:  # a reply recorded without its answer (not written by DnsSocket)
            continue
        key = (int(t // ROLLUP_S) * ROLLUP_S, rc[0], int(rc[1]))
        out[key] = out.get(key, 0) + 1
    return out


def _encode_address(target: str, address: str | None) -> str | None:
    if address == target:
        return None  # the usual case for numeric targets: store nothing
    return "" if address is None else address


def _decode_address(target: str, stored: str | None) -> str | None:
    if stored is None:
        return target
    return stored or None


def _sorted_chunk(data: bytes) -> tuple[float, float, bytes]:
    """(t0, t1, data) of a chunk, its records put in time order if they are not."""
    n = len(data) // RECORD_SIZE
    t = array("d")
    t.frombytes(data[: 8 * n])
    if len(t) > 1:
        tl = t.tolist()
        if tl != sorted(tl):
            c = unpack(data)
            order = sorted(range(n), key=tl.__getitem__)
            data = pack(
                [tl[i] for i in order],
                [c.rtt_ms[i] for i in order],
                [c.seq[i] for i in order],
                bytes(c.code[i] for i in order),
                bytes(c.ttl[i] for i in order),
            )
            t = array("d", sorted(tl))
    return t[0], t[-1], data


def _extra_of(r: ProbeResult, code: int) -> tuple[Any, ...]:
    """The results_extra fields of ``r`` (without tid), checked: a wrong type here would
    fail the INSERT inside the transaction, after its chunk row is in."""
    for name in ("icmp_type", "icmp_code", "errno"):
        v = getattr(r, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise TypeError(f"{name} must be an int or None, not {type(v).__name__}")
    if r.router is not None and not isinstance(r.router, str):
        raise TypeError(f"router must be a str or None, not {type(r.router).__name__}")
    return (float(r.time), int(r.seq), code, r.icmp_type, r.icmp_code, r.router, r.errno)


def _pack_results(group: list[ProbeResult]) -> _Row:
    """One (target, address) group of ProbeResults -> one chunk row (records sorted by
    time) and its extra rows. Raises one of _MALFORMED when any result is bad."""
    cols = list(zip(*group, strict=True))
    t = cols[10]
    if len(group) > 1 and list(t) != sorted(t):
        group = sorted(group, key=_TIME)
        cols = list(zip(*group, strict=True))
        t = cols[10]
    codes = bytes(map(_OUTCOME_CODE_OF, cols[3]))
    data = pack(t, cols[4], cols[2], codes, cols[5])
    n = len(group)
    extras: list[tuple[Any, ...]] = []
    # icmp_type, icmp_code, router, errno: nearly always all None (tuple.count is C)
    if any(cols[k].count(None) != n for k in (6, 7, 8, 9)):
        extras = [
            _extra_of(r, c)
            for r, c in zip(group, codes, strict=True)
            if r.icmp_type is not None
            or r.icmp_code is not None
            or r.router is not None
            or r.errno is not None
        ]
    target = group[0].target
    if not isinstance(target, str):
        raise TypeError(f"target must be a str, not {type(target).__name__}")
    addr = group[0].address
    if addr is not None and not isinstance(addr, str):
        raise TypeError(f"address must be a str or None, not {type(addr).__name__}")
    return _Row(
        target, _encode_address(target, addr), float(t[0]), float(t[-1]), n, data, extras, group
    )


def is_postgres_url(db: str | Path | None) -> bool:
    """``--db`` / ``store.url`` names a PostgreSQL database (``store_pg``), not a file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class StoreBackend(Protocol):
    """The write side of a ResultStore, the seam between its queue (bounded, retried,
    drops counted) and one database engine. Every method runs in a worker thread;
    ``open_locked``, ``write`` and ``rollup`` raise one of ``errors`` when the database
    cannot take it now (locked, full, down, slow): the store keeps the batch queued and
    retries. ``_Writer`` is SQLite's; ``store_pg._PgWriter`` is PostgreSQL's."""

    errors: tuple[type[BaseException], ...]

    def open_locked(self) -> None: ...

    def write(
        self, results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[tuple[object, int, str]], int]:
        """One batch in one transaction: (malformed items (item, records, reason),
        rows written)."""
        ...

    def rollup(self, cutoff: float) -> int:
        """Fold raw results older than ``cutoff`` into minute rollups; records folded."""
        ...

    def shutdown(self) -> None: ...


# Outages (fastping.loss): one row per outage, written when it starts (end NULL) and
# updated when it ends. Kept apart from the results schema (CREATE IF NOT EXISTS at
# the first outage write, no schema version change): a database without the table
# simply has no outages. target '' is our own network (kind 'local'). A target's row
# with lost = 0 was withdrawn (the losses turned out to be our own network's).
_OUTAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outages (
    kind TEXT NOT NULL,         -- 'target' or 'local' (our own network)
    target TEXT NOT NULL,       -- '' for kind 'local'
    start REAL NOT NULL,        -- Unix seconds: send time of the first lost probe
    end REAL,                   -- send time of the first answered probe; NULL: ongoing
    lost INTEGER NOT NULL,      -- probes lost in it (local: recorded as local_down)
    rule TEXT NOT NULL,
    PRIMARY KEY (kind, target, start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outages_start ON outages (start);
"""
_UPSERT_OUTAGE = (
    "INSERT INTO outages (kind, target, start, end, lost, rule) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT (kind, target, start) DO UPDATE SET end = excluded.end, "
    "lost = excluded.lost, rule = excluded.rule"
)


@contextlib.contextmanager
def _side_transaction(writer: _Writer, schema: str) -> Iterator[sqlite3.Connection]:
    """One transaction on the writer's connection (worker thread), beside the probe
    rows' own: its tables made if missing, rolled back on any error, and the
    connection closed then (the next write opens a fresh one)."""
    with writer.lock:
        try:
            conn = writer.open()
            conn.executescript(schema)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            writer.close()
            raise


def _write_outages(writer: _Writer, outages: Sequence[Outage]) -> None:
    """One transaction of outage upserts on the writer's connection (worker thread)."""
    with _side_transaction(writer, _OUTAGE_SCHEMA) as conn:
        conn.executemany(
            _UPSERT_OUTAGE,
            [(o.kind, o.target or "", o.start, o.end, o.lost, o.rule) for o in outages],
        )


def _read_outages(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    targets: Sequence[str] | None,
    kind: str | None,
) -> list[Outage]:
    if (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outages'"
        ).fetchone()
        is None
    ):
        return []
    sql = (
        "SELECT kind, target, start, end, lost, rule FROM outages WHERE "
        f"NOT (kind = '{KIND_TARGET}' AND lost = 0)"
    )
    args: list[Any] = []
    if since is not None:
        sql += " AND (end IS NULL OR end >= ?)"
        args.append(since)
    if until is not None:
        sql += " AND start <= ?"
        args.append(until)
    if kind is not None:
        sql += " AND kind = ?"
        args.append(kind)
    out = [
        Outage(None if k == KIND_LOCAL else tg, st, en, lost, k, rule)
        for k, tg, st, en, lost, rule in conn.execute(sql + " ORDER BY start, target", args)
    ]
    if targets is not None:
        keep = set(targets)
        out = [o for o in out if o.target is None or o.target in keep]
    return out


# Paths (fastping.pathwatch, the engine's trace_every_s): one row per target per trace
# round, and one per path change. Like the outages, apart from the results schema
# (CREATE IF NOT EXISTS at the first write, no schema version change): a database
# without them simply has no traces. path / old_path / new_path: JSON lists of the
# responders hop by hop (null: no answer). Rows older than the retention are deleted
# as new ones are written.
_TRACE_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    target TEXT NOT NULL,
    time REAL NOT NULL,         -- Unix seconds the round ended
    address TEXT NOT NULL,      -- what was traced
    hop_count INTEGER,          -- hops to the target; NULL: not reached
    reached INTEGER NOT NULL,
    path TEXT NOT NULL          -- JSON list of responders (null: no answer)
);
CREATE INDEX IF NOT EXISTS traces_target_time ON traces (target, time);
CREATE INDEX IF NOT EXISTS traces_time ON traces (time);
CREATE TABLE IF NOT EXISTS path_changes (
    target TEXT NOT NULL,
    time REAL NOT NULL,
    address TEXT,
    old_hops INTEGER,
    new_hops INTEGER,
    old_path TEXT NOT NULL,
    new_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS path_changes_time ON path_changes (time);
"""


def _json_path(path: Sequence[str | None]) -> str:
    import json

    return json.dumps(list(path), separators=(",", ":"))


def _write_traces(
    writer: _Writer, traces: Sequence[Any], changes: Sequence[Any], keep_after: float
) -> None:
    """One transaction: trace rows and path changes (``pathwatch.TraceRecord`` /
    ``PathChange``), and the traces older than ``keep_after`` deleted."""
    with _side_transaction(writer, _TRACE_SCHEMA) as conn:
        conn.executemany(
            "INSERT INTO traces (target, time, address, hop_count, reached, path) "
            "VALUES (?,?,?,?,?,?)",
            [(r.target, r.time, r.address, r.hop_count, int(r.reached),
              _json_path(r.path)) for r in traces],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO path_changes (target, time, address, old_hops, new_hops, "
            "old_path, new_path) VALUES (?,?,?,?,?,?,?)",
            [(c.target, c.time, c.address, c.old_hops, c.new_hops,
              _json_path(c.old), _json_path(c.new)) for c in changes],
        )  # fmt: skip
        conn.execute("DELETE FROM traces WHERE time < ?", (keep_after,))
        conn.execute("DELETE FROM path_changes WHERE time < ?", (keep_after,))


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        is not None
    )


def _in_window(
    sql: str, since: float | None, until: float | None, targets: Sequence[str] | None
) -> tuple[str, list[Any]]:
    args: list[Any] = []
    if since is not None:
        sql += " AND time >= ?"
        args.append(since)
    if until is not None:
        sql += " AND time <= ?"
        args.append(until)
    if targets is not None:
        sql += f" AND target IN ({','.join('?' * len(targets))})"
        args.extend(targets)
    return sql, args


def _read_latest_traces(
    conn: sqlite3.Connection, until: float | None, targets: Sequence[str] | None
) -> dict[str, dict[str, Any]]:
    import json

    if not _has_table(conn, "traces"):
        return {}
    sql, args = _in_window("SELECT target, max(time) FROM traces WHERE 1", None, until, targets)
    out: dict[str, dict[str, Any]] = {}
    for target, t in conn.execute(sql + " GROUP BY target", args).fetchall():
        row = conn.execute(
            "SELECT address, hop_count, reached, path FROM traces WHERE target = ? AND time = ?",
            (target, t),
        ).fetchone()
        out[target] = {"target": target, "time": t, "address": row[0], "hop_count": row[1],
                       "reached": bool(row[2]), "path": json.loads(row[3])}  # fmt: skip
    return out


def _read_path_changes(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    targets: Sequence[str] | None,
) -> list[dict[str, Any]]:
    import json

    if not _has_table(conn, "path_changes"):
        return []
    sql, args = _in_window(
        "SELECT target, time, address, old_hops, new_hops, old_path, new_path FROM "
        "path_changes WHERE 1", since, until, targets,
    )  # fmt: skip
    return [
        {"target": tg, "time": t, "address": a, "old_hops": oh, "new_hops": nh,
         "old": json.loads(op), "new": json.loads(np)}
        for tg, t, a, oh, nh, op, np in conn.execute(sql + " ORDER BY time, target", args)
    ]  # fmt: skip


class _Writer:
    """The write side: one connection, used by one worker thread at a time."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

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
                # An older layout must not get half of the new tables added to it.
                version = _schema_version(conn)
                # tables, none of them ours (meta is created first): another program's file
                if (
                    version is None
                    and conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name != 'meta' "
                        "LIMIT 1"
                    ).fetchone()
                    and not conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'meta'"
                    ).fetchone()
                ):
                    raise ConfigError(_not_ours(self.path, "another program's tables"))
                _check_version(self.path, version)
                if version is not None and version != str(SCHEMA_VERSION):
                    _migrate(conn, version)
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
            conn.execute(
                "INSERT OR IGNORE INTO targets (name, kind, port, qname, qtype) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, *target_columns(name)),
            )
            tid = int(conn.execute("SELECT id FROM targets WHERE name = ?", (name,)).fetchone()[0])
            new[name] = tid
        return tid

    def write(
        self, results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[tuple[object, int, str]], int]:
        """Write one batch in one transaction (runs in a worker thread). Returns the
        items that can never be written (malformed: the item, its record count, the
        reason) and the number of rows written; everything else is committed. On a
        failure of the database (locked, full, read-only) nothing is committed, the
        error propagates, and the connection is closed: after a read-only or I/O error
        it can stay unusable even when the cause is gone, so the retry starts on a
        fresh one."""
        with self.lock:
            try:
                return self._write(results, chunks)
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _pack(
        results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[_Row], list[tuple[object, int, str]]]:
        """Rows to insert (no database work). The per-result Python of the writer is here:
        grouping by (target, address) and the column transposition in _pack_results."""
        rows: list[_Row] = []
        bad: list[tuple[object, int, str]] = []
        for c in chunks:
            t0, t1, data = _sorted_chunk(c.data)
            rows.append(_Row(c.target, c.address, t0, t1, c.n, data, [], c))
        groups: dict[Any, list[ProbeResult]] = {}
        try:
            for key, r in zip(map(_KEY, results), results, strict=True):
                g = groups.get(key)
                if g is None:
                    groups[key] = [r]
                else:
                    g.append(r)
        except _MALFORMED:
            # something that is not a ProbeResult, or an unhashable field: one at a time
            groups = {}
            for r in results:
                try:
                    groups.setdefault(_KEY(r), []).append(r)
                except _MALFORMED as e:
                    bad.append((r, 1, f"{type(e).__name__}: {e}"))
        for group in groups.values():
            try:
                rows.append(_pack_results(group))
            except _MALFORMED:
                # Set the bad results aside; the others of the group still go in.
                good = []
                for r in group:
                    try:
                        _pack_results([r])
                    except _MALFORMED as e:
                        bad.append((r, 1, f"{type(e).__name__}: {e}"))
                    else:
                        good.append(r)
                if good:
                    rows.append(_pack_results(good))
        return rows, bad

    def _insert(self, conn: sqlite3.Connection, rows: Sequence[_Row], new: dict[str, int]) -> None:
        tids = self.tids
        out = []
        extras: list[tuple[Any, ...]] = []
        dns: list[tuple[int, ...]] = []
        for row in rows:
            target = row.target
            tid = tids.get(target) or new.get(target) or self._tid(conn, target, new)
            out.append((tid, row.t0, row.t1, row.n, row.address, row.data))
            if row.extras:
                extras.extend((tid, *e) for e in row.extras)
            if target.startswith("dns://"):
                dns.extend((tid, *k, n) for k, n in dns_answer_counts(row.data).items())
        conn.executemany(_INSERT_CHUNK, out)
        if dns:
            conn.executemany(_UPSERT_DNS, dns)
        if extras:
            conn.executemany(_INSERT_EXTRA, extras)

    def _write(
        self, results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[tuple[object, int, str]], int]:
        conn = self.open()
        rows, bad = self._pack(results, chunks)
        new: dict[str, int] = {}
        written = len(rows)
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                self._insert(conn, rows, new)
            except _MALFORMED:
                # Something cannot be stored as it is (a caller bug, not a disk problem).
                # Retrying would fail forever and block everything behind it, so write
                # the rows one at a time and set the bad ones aside.
                conn.execute("ROLLBACK")
                new.clear()
                conn.execute("BEGIN IMMEDIATE")
                written = 0
                for row in rows:
                    known = dict(new)
                    try:
                        conn.execute("SAVEPOINT one")
                        self._insert(conn, (row,), new)
                        conn.execute("RELEASE one")
                        written += 1
                    except _MALFORMED as e2:
                        # the chunk row may be in without its extra rows: undo both
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        new.clear()  # a target row made inside the savepoint is gone too
                        new.update(known)
                        bad.append((row.origin, row.n, f"{type(e2).__name__}: {e2}"))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        # only ids that were committed are remembered
        self.tids.update(new)
        return bad, written

    def rollup(self, cutoff: float, chunk_targets: int = 200) -> int:
        """Fold chunks entirely older than ``cutoff`` (a minute boundary) into
        per-minute rollups and delete them. One transaction per group of targets keeps
        each write lock short. Returns the number of records folded."""
        with self.lock:
            try:
                return self._rollup(cutoff, chunk_targets)
            except BaseException:
                self.close()
                raise

    def _rollup(self, cutoff: float, chunk_targets: int) -> int:
        conn = self.open()
        # One index seek per target ((tid, t1) index), not a scan of every row.
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
            "SELECT rowid, address, data FROM results WHERE tid = ? AND t1 < ? ORDER BY t0, rowid",
            (tid, cutoff),
        ).fetchall()
        if not rows:
            return 0
        st = _Stream.of([(r[1], r[2]) for r in rows], full=False, where=f"{self.path} tid {tid}")
        t = st.t
        placeholders = ",".join("?" * len(_ROLLUP_COLS))
        i, end = 0, len(t)
        while i < end:
            minute = int(t[i] // ROLLUP_S) * ROLLUP_S
            j = max(i + 1, bisect_left(t, minute + ROLLUP_S, i, end))
            new = _rollup_row(tid, minute, st, i, j)
            old = conn.execute(
                f"SELECT {', '.join(_ROLLUP_COLS)} FROM rollups WHERE tid = ? AND minute = ?",
                (tid, minute),
            ).fetchone()
            if old is not None:  # the rest of a minute whose first part was folded before
                new = _merge_rollups(dict(zip(_ROLLUP_COLS, old, strict=True)), new)
            conn.execute(
                f"INSERT OR REPLACE INTO rollups ({', '.join(_ROLLUP_COLS)}) "
                f"VALUES ({placeholders})",
                [new[c] for c in _ROLLUP_COLS],
            )
            i = j
        # Extra rows go with their records; those of chunks still raw (one straddling
        # the cutoff) must stay, so only what is older than every remaining chunk goes.
        left = conn.execute(
            "SELECT min(t0) FROM results WHERE tid = ? AND t1 >= ?", (tid, cutoff)
        ).fetchone()[0]
        bound = cutoff if left is None else min(cutoff, float(left))
        conn.execute("DELETE FROM results_extra WHERE tid = ? AND t < ?", (tid, bound))
        conn.executemany("DELETE FROM results WHERE rowid = ?", [(r[0],) for r in rows])
        return end


class _Stream:
    """One target's records from several chunks, merged in time order (ties keep the
    order of the chunks, which is (t0, rowid)): the columns, and per record the index of
    its chunk's stored address when the chunks' addresses differ."""

    __slots__ = ("addrs", "aid", "code", "rtt", "seq", "t", "ttl")

    def __init__(self) -> None:
        self.t: array[float] = array("d")
        self.rtt: array[float] = array("f")
        self.code: bytes = b""
        self.seq: array[int] = array("i")
        self.ttl: bytes = b""
        self.addrs: list[str | None] = []
        self.aid: array[int] | None = None

    @classmethod
    def of(cls, chunks: Sequence[tuple[str | None, bytes]], *, full: bool, where: str) -> _Stream:
        """``chunks``: (stored address, data) ordered by (t0, rowid). ``full``: also the
        seq and TTL columns (recent() needs them; stats do not)."""
        st = cls()
        cols = []
        for addr, data in chunks:
            try:
                c = unpack(data)
            except ChunkError as e:
                raise ChunkError(
                    f"{where}: a damaged results row: {e}; the database file is damaged: "
                    "`sqlite3 FILE .recover` may save the rest, or start a new --db"
                ) from None
            if len(c):
                cols.append(c)
                st.addrs.append(addr)
        if not cols:
            return st
        if len(cols) == 1:
            c = cols[0]
            st.t, st.rtt, st.code = c.t, c.rtt_ms, c.code
            if full:
                st.seq, st.ttl = c.seq, c.ttl
            return st
        overlap = False
        hi = -math.inf
        for c in cols:
            if c.t[0] < hi:
                overlap = True
            hi = max(hi, c.t[-1])
        for c in cols:
            st.t.extend(c.t)
            st.rtt.extend(c.rtt_ms)
            if full:
                st.seq.extend(c.seq)
        st.code = b"".join(c.code for c in cols)
        if full:
            st.ttl = b"".join(c.ttl for c in cols)
        if len(set(st.addrs)) > 1:
            aid = array("I")
            for k, c in enumerate(cols):
                aid.extend(array("I", [k]) * len(c))
            st.aid = aid
        if overlap:
            # Chunks of one target overlap when results came both ways (submit and
            # submit_chunks): sort the records (a stable sort, at C speed).
            tl = st.t
            order = sorted(range(len(tl)), key=tl.__getitem__)
            st.t = array("d", map(tl.__getitem__, order))
            st.rtt = array("f", map(st.rtt.__getitem__, order))
            st.code = bytes(map(st.code.__getitem__, order))
            if full:
                st.seq = array("i", map(st.seq.__getitem__, order))
                st.ttl = bytes(map(st.ttl.__getitem__, order))
            if st.aid is not None:
                st.aid = array("I", map(st.aid.__getitem__, order))
        return st

    def address_at(self, k: int) -> str | None:
        return self.addrs[0] if self.aid is None else self.addrs[self.aid[k]]

    def last_address(self, i: int, j: int, skip: str | None) -> str | None:
        """The stored address of the last record in [i, j) whose address is not
        ``skip``, or ``skip`` when there is none."""
        if self.aid is None:
            return self.addrs[0] if self.addrs else skip
        for k in range(j - 1, i - 1, -1):
            a = self.addrs[self.aid[k]]
            if a != skip:
                return a
        return skip


def _tally(code: bytes) -> list[tuple[int, int]]:
    """(outcome code, count) of a code column, by bytes.count (C speed). Replies and
    timeouts are nearly everything, so they are counted first."""
    n = len(code)
    rep = code.count(_REPLY)
    if rep == n:
        return [(_REPLY, n)]
    tmo = code.count(_TIMEOUT)
    if rep + tmo == n:
        return [(_REPLY, rep), (_TIMEOUT, tmo)]
    return [(c, k) for c in _CODES if (k := code.count(c))]


def _reply_rtts(code: bytes, rtt: array[float], replies: int) -> list[float]:
    """The RTTs of the replies, in record order (replies without an RTT left out)."""
    if replies == 0:
        return []
    if replies == len(code):
        out = rtt.tolist()
    else:
        out = list(itertools.compress(rtt, code.translate(_REPLY_MASK)))
    s = sum(out)
    if s != s:  # a NaN: a reply without an RTT (rare)
        out = [x for x in out if x == x]
    return out


def _rollup_row(tid: int, minute: int, st: _Stream, i: int, j: int) -> dict[str, Any]:
    code = st.code[i:j]
    counts = dict.fromkeys(COUNT_KEYS, 0)
    sent = 0
    replies = 0
    for c, k in _tally(code):
        counts[_COUNT_BY_CODE[c]] += k
        if c in _SENT_CODES:
            sent += k
        if c == _REPLY:
            replies = k
    rtts = _reply_rtts(code, st.rtt[i:j], replies)
    s = sorted(rtts)
    return {
        "tid": tid, "minute": minute, "address": st.last_address(i, j, None), "sent": sent,
        **counts,
        "min_ms": s[0] if s else None, "max_ms": s[-1] if s else None,
        "sum_ms": math.fsum(rtts), "sumsq_ms": math.fsum(map(mul, rtts, rtts)),
        "p50_ms": percentile(s, 50), "p95_ms": percentile(s, 95), "p99_ms": percentile(s, 99),
        "jitter_sum_ms": math.fsum(map(abs, map(sub, rtts[1:], rtts[:-1]))),
        "jitter_n": max(0, len(rtts) - 1),
        "first_rtt_ms": rtts[0] if rtts else None, "last_rtt_ms": rtts[-1] if rtts else None,
    }  # fmt: skip


def _merge_rollups(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two rollups of the same minute, ``b`` folded after ``a`` (the rest of a minute
    whose chunk straddled the cutoff, or stragglers written late). Counts, sums and
    extremes merge exactly; so does jitter when ``b``'s replies came after ``a``'s (the
    usual case: one more pair, a's last RTT to b's first). The quantiles become the
    reply-weighted mean of both, which is approximate."""
    out = dict(a)
    for k in ("sent", *COUNT_KEYS, "sum_ms", "sumsq_ms", "jitter_sum_ms", "jitter_n"):
        out[k] = a[k] + b[k]
    if a["last_rtt_ms"] is not None and b["first_rtt_ms"] is not None:
        out["jitter_sum_ms"] += abs(b["first_rtt_ms"] - a["last_rtt_ms"])
        out["jitter_n"] += 1
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
    """Accumulates blocks of raw records and rollup rows (in time order) into one stats
    dict. Counts are added as they come; the RTT figures are worked out in result(),
    from the parts in order (jitter pairs successive RTTs across part boundaries)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    sent: int = 0
    raw_rtts: list[float] = field(default_factory=list)
    parts: list[list[float] | dict[str, Any]] = field(default_factory=list)
    address: str | None = None
    first_time: float | None = None
    last_time: float | None = None
    rolled: bool = False

    def _seen(self, t: float, end: float) -> None:
        if self.first_time is None:
            self.first_time = t
        self.last_time = end

    def add_block(self, target: str, st: _Stream, i: int, j: int) -> None:
        """Raw records [i, j) of ``st`` (j > i)."""
        code = st.code[i:j]
        replies = 0
        counts = self.counts
        for c, k in _tally(code):
            counts[_COUNT_BY_CODE[c]] += k
            if c in _SENT_CODES:
                self.sent += k
            if c == _REPLY:
                replies = k
        rtts = _reply_rtts(code, st.rtt[i:j], replies)
        if rtts:
            self.raw_rtts.extend(rtts)
            self.parts.append(rtts)
        address = _decode_address(target, st.last_address(i, j, ""))
        if address is not None:
            self.address = address
        self._seen(st.t[i], st.t[j - 1])

    def add_rollup(self, r: dict[str, Any]) -> None:
        self.rolled = True
        for k in COUNT_KEYS:
            self.counts[k] += r[k]
        self.sent += r["sent"]
        self.parts.append(r)
        if r["address"] is not None:
            self.address = r["address"]
        self._seen(float(r["minute"]), float(r["minute"] + ROLLUP_S))

    def empty(self) -> bool:
        return self.first_time is None

    def _rolled_figures(self) -> tuple[dict[str, float | None], list[tuple[float, float, float]]]:
        """The RTT figures when part of the window is rollups, and the mixture of
        pieces for the quantiles."""
        n = 0
        sum_ms = sumsq_ms = jit_sum = 0.0
        jit_n = 0
        min_ms: float | None = None
        max_ms: float | None = None
        prev: float | None = None
        pieces: list[tuple[float, float, float]] = []
        for p in self.parts:
            if isinstance(p, list):
                n += len(p)
                sum_ms += sum(p)
                sumsq_ms += sum(map(mul, p, p))
                lo, hi = min(p), max(p)
                min_ms = lo if min_ms is None else min(min_ms, lo)
                max_ms = hi if max_ms is None else max(max_ms, hi)
                if prev is not None:
                    jit_sum += abs(p[0] - prev)
                    jit_n += 1
                jit_sum += sum(map(abs, map(sub, p[1:], p[:-1])))
                jit_n += len(p) - 1
                prev = p[-1]
                pieces.extend((x, x, 1.0) for x in p)
                continue
            k = p["received"]
            if p["min_ms"] is None or k <= 0:
                continue
            n += k
            sum_ms += p["sum_ms"]
            sumsq_ms += p["sumsq_ms"]
            min_ms = p["min_ms"] if min_ms is None else min(min_ms, p["min_ms"])
            max_ms = p["max_ms"] if max_ms is None else max(max_ms, p["max_ms"])
            for lo_k, hi_k, share in _ROLLUP_SHAPE:
                pieces.append((p[lo_k], p[hi_k], share * k))
            jit_sum += p["jitter_sum_ms"]
            jit_n += p["jitter_n"]
            if prev is not None and p["first_rtt_ms"] is not None:
                # the pair across the boundary between the previous data and this minute
                jit_sum += abs(p["first_rtt_ms"] - prev)
                jit_n += 1
            if p["last_rtt_ms"] is not None:
                prev = p["last_rtt_ms"]
        if n == 0:
            return rtt_summary([]), pieces
        avg = sum_ms / n
        p50, p95, p99 = _quantiles(pieces, (0.50, 0.95, 0.99))
        return {
            "min_ms": min_ms,
            "avg_ms": avg,
            "max_ms": max_ms,
            "stddev_ms": math.sqrt(max(0.0, sumsq_ms / n - avg * avg)),
            "jitter_ms": jit_sum / jit_n if jit_n else None,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
        }, pieces

    def spread(self) -> dict[str, float | None]:
        """p5, p25 and p75 (for the chart's smoke bands)."""
        qs = (5.0, 25.0, 75.0)
        vals: list[float | None]
        if not self.rolled:
            s = sorted(self.raw_rtts)
            vals = [percentile(s, q) for q in qs]
        else:
            _, pieces = self._rolled_figures()
            vals = list(_quantiles(pieces, [q / 100 for q in qs])) if pieces else [None] * 3
        return dict(zip(("p5_ms", "p25_ms", "p75_ms"), vals, strict=True))

    def result(self, target: str) -> dict[str, Any]:
        if not self.rolled:
            # Raw results only: exactly the numbers rtt_summary gives for the same RTTs.
            summ = rtt_summary(self.raw_rtts)
        else:
            summ, _ = self._rolled_figures()
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


def _f32_to_float(x: float) -> float:
    """The shortest decimal that is the same float32: 0.21 stored comes back as 0.21,
    not 0.20999999344348907 (what recent() hands out should read like what went in)."""
    f = _F32
    for digits in (6, 7, 8):
        y = float(f"{x:.{digits}g}")
        f[0] = y
        if f[0] == x:
            return y
    return x


# Targets per query in all_stats: one query (and one index range) per group rather
# than per target, while holding only a group's chunks in memory at once.
_TID_GROUP = 512


def _recent_records(
    conn: Any, target: str, tid: int, limit: int, where: str, chunks_sql: str, extra_sql: str
) -> list[ProbeResult]:
    """The newest ``limit`` records of target ``tid`` as ProbeResults, oldest first, in
    either store: ``chunks_sql`` selects its chunks (t0, t1, rowid, address, data) newest
    first, ``extra_sql`` the side rows (t, seq, outcome, icmp_type, icmp_code, router,
    errno) of a time range; both take the store's own parameter style. Chunks of one
    target may overlap in time, so chunks are taken until the next one ends before
    everything taken."""
    taken: list[tuple[float, int, str | None, bytes]] = []
    have = 0
    oldest = math.inf
    for t0, t1, rowid, addr, data in conn.execute(chunks_sql, (tid,)):
        if have >= limit and t1 < oldest:
            break
        taken.append((t0, rowid, addr, bytes(data)))
        have += len(data) // RECORD_SIZE
        oldest = min(oldest, t0)
    taken.sort(key=lambda x: (x[0], x[1]))
    st = _Stream.of([(a, d) for _, _, a, d in taken], full=True, where=where)
    end = len(st.t)
    start = max(0, end - limit)
    if start == end:
        return []
    extras: dict[tuple[float, int, int], tuple[Any, ...]] = {
        (t, seq, code): tuple(rest)
        for t, seq, code, *rest in conn.execute(extra_sql, (tid, st.t[start], st.t[end - 1]))
    }
    none4 = (None, None, None, None)
    out = []
    for k in range(start, end):
        t, seq, code, rtt, ttl = st.t[k], st.seq[k], st.code[k], st.rtt[k], st.ttl[k]
        it, ic, router, errno = extras.get((t, seq, code), none4)
        out.append(
            ProbeResult(
                target=target,
                address=_decode_address(target, st.address_at(k)),
                seq=seq,
                outcome=OUTCOME_BY_CODE[code],
                rtt_ms=None if rtt != rtt else _f32_to_float(rtt),
                ttl=ttl or None,
                icmp_type=it,
                icmp_code=ic,
                router=router,
                errno=errno,
                time=t,
            )  # fmt: skip
        )
    return out


def _check_positive(**settings: float) -> None:
    """ConfigError naming the first store setting that is not > 0."""
    for name, value in settings.items():
        if not value > 0:
            raise ConfigError(f"store {name}: {value!r} is not allowed: must be > 0")


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
        chunk_window_s: float = 10.0,
        backend: StoreBackend | None = None,
    ) -> None:
        _check_positive(
            retention_s=retention_s,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            max_queue=max_queue,
            rollup_interval_s=rollup_interval_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            chunk_window_s=chunk_window_s,
        )
        self.path = Path(path)
        self.db = str(self.path)  # how logs and summaries name the database
        self.retention_s = float(retention_s)
        self.batch_size = int(batch_size)  # records per write transaction
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)  # records
        self.rollup_interval_s = float(rollup_interval_s)
        self.retry_initial_s = float(retry_initial_s)
        self.retry_max_s = float(retry_max_s)
        # ProbeResults wait this long in the queue (unless a flush, close or a full
        # queue asks sooner), so the writer packs many results of a target into one
        # row: written as they come, 10,000 targets at 1 probe/s give ~1 result per
        # target per write batch and a row each, 8 us a result.
        self.chunk_window_s = float(chunk_window_s)
        self._hold_max = max(self.batch_size, self.max_queue // 2)
        self._queue_since = 0.0  # monotonic time the oldest queued ProbeResult came
        self._flush_goal = 0  # a flush() waits for _done to reach this
        self._writer: StoreBackend = backend or _Writer(self.path, busy_timeout_ms)
        self._init_state()

    def _init_state(self) -> None:
        """The queues, counters and writer-task handles of a store not yet started."""
        self._queue: deque[ProbeResult] = deque()
        self._chunks: deque[_Chunk] = deque()
        self._chunk_records = 0  # records in self._chunks
        self._lock = threading.Lock()  # submit() may be called from other threads
        self._written = 0
        self._rows_written = 0
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
        self._submitted_total = 0  # records accepted into the queue, ever
        self._done = 0  # records accepted and since written or dropped
        self._progress: asyncio.Condition | None = None
        self._outage_q: list[Outage] = []  # submit_outages(), written by the writer task
        self._outages_written = 0
        self._outages_dropped = 0

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (WAL) and start the writer task. A database that cannot be
        written right now (locked, read-only, full) is retried by the writer; only a
        path that can never work (its directory is missing, it is a directory, it holds
        another schema version) raises."""
        if self._task is not None:
            return
        self._check_place()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._closing = False
        self._closed = False
        try:
            await asyncio.to_thread(self._writer.open_locked)
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                # retrying would never help: refuse at start, as `report` does
                raise ConfigError(_not_ours(self.path, e)) from None
            self._note_failure(e, "open")
        except Exception as e:
            if not isinstance(e, (OSError, *self._writer.errors)) or isinstance(e, ConfigError):
                raise
            self._note_failure(e, "open")  # the writer retries (a server down, a lock)
        self._next_rollup = time.monotonic() + self.rollup_interval_s
        self._task = asyncio.create_task(self._run(), name="fastping-store-writer")

    def _check_place(self) -> None:
        """Refuse, before anything starts, a place that can never work."""
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
        _refuse_foreign(self.path)

    def _queued(self) -> int:
        return len(self._queue) + self._chunk_records

    def submit(self, results: Iterable[ProbeResult]) -> None:
        """Queue results for writing. Never blocks, never raises for a full queue:
        what does not fit is counted in ``stats()["dropped"]`` and logged at ERROR."""
        with self._lock:
            # after close() nothing would ever write them: count them, do not hold them
            room = 0 if self._closed else self.max_queue - self._queued()
            n = 0
            dropped = 0
            if not self._queue:
                self._queue_since = time.monotonic()
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
        if self._wake is not None and len(self._queue) >= self._hold_max:
            self._set_wake()

    def submit_chunks(self, items: Iterable[tuple[str, str | None, bytes]]) -> None:
        """Queue chunks for writing: ``(target, address, chunk)``, the chunk as
        ``fastping.chunk.pack`` or the core's outcome log makes it, ``address`` the
        probed address (None: there was none). Each is written as one row. Never
        blocks: the queue counts records, and a chunk that does not fit is dropped
        whole and its records counted in ``stats()["dropped"]``.

        Raises ChunkError (a ValueError) for a chunk whose length is not a whole number
        of records or that holds an unknown outcome code, TypeError for a target or
        address that is not a str; then nothing of ``items`` is queued."""
        staged: list[_Chunk] = []
        for target, address, data in items:
            if not isinstance(target, str):
                raise TypeError(f"submit_chunks: target must be a str, not {target!r}")
            if address is not None and not isinstance(address, str):
                raise TypeError(
                    f"submit_chunks: address of {target!r} must be a str or None, not {address!r}"
                )
            if not isinstance(data, bytes):
                data = bytes(data)  # a buffer the caller may reuse: keep a copy
            n, rest = divmod(len(data), RECORD_SIZE)
            if rest:
                raise ChunkError(
                    f"submit_chunks: the chunk for {target!r} has {len(data)} bytes, not a "
                    f"whole number of {RECORD_SIZE}-byte records; pass what chunk.pack() or "
                    "the core's outcome log returns, unchanged"
                )
            if n == 0:
                continue
            if max(data[16 * n : 17 * n]) > _MAX_CODE:
                raise ChunkError(
                    f"submit_chunks: the chunk for {target!r} holds an unknown outcome code "
                    f"(known: 0..{_MAX_CODE}, fastping.chunk.OUTCOME_CODE); is it a chunk?"
                )
            staged.append(_Chunk(target, _encode_address(target, address), data, n))
        if not staged:
            return
        with self._lock:
            room = 0 if self._closed else self.max_queue - self._queued()
            accepted = 0
            dropped = 0
            for c in staged:
                if c.n <= room:
                    self._chunks.append(c)
                    room -= c.n
                    accepted += c.n
                else:
                    dropped += c.n
            self._chunk_records += accepted
            self._submitted_total += accepted
            if dropped:
                self._dropped += dropped
                self._dropped_unlogged += dropped
        if dropped:
            self._log_drops()
        if self._wake is not None and self._chunk_records >= self.batch_size:
            self._set_wake()

    def submit_outages(self, outages: Iterable[Outage]) -> None:
        """Queue outage starts and ends (``fastping.loss.Outage``) for the outages
        table; the same outage again (same kind, target and start) updates its row.
        Never blocks; written by the writer task, retried like results."""
        items = list(outages)
        if not items:
            return
        with self._lock:
            if self._closed:
                self._outages_dropped += len(items)
                return
            self._outage_q.extend(items)
        if self._wake is not None:
            self._set_wake()

    async def _write_outage_q(self) -> bool:
        """Write what submit_outages() queued; False (kept queued) on a failure."""
        with self._lock:
            batch = self._outage_q
            self._outage_q = []
        if not batch:
            return True
        try:
            # a backend with its own outages table (PostgreSQL) writes them itself
            own = getattr(self._writer, "write_outages", None)
            if own is not None:
                await asyncio.to_thread(own, batch)
            else:
                await asyncio.to_thread(_write_outages, self._writer, batch)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - locked, full, read-only, ...: retried
            with self._lock:
                self._outage_q[:0] = batch
            self._note_failure(e, "write outages")
            return False
        self._outages_written += len(batch)
        return True

    def outages(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
        kind: str | None = None,
    ) -> list[Outage]:
        """Outages overlapping [since, until] (None: no bound), oldest first; ours
        (kind 'local', target None) are included unless ``kind`` says otherwise."""
        with self._read() as conn:
            return _read_outages(conn, since, until, targets, kind)

    def write_traces(self, traces: Sequence[Any], changes: Sequence[Any] = ()) -> None:
        """Write one round of traces and path changes (``fastping.pathwatch``) at once,
        in the calling thread (the engine's path watcher calls it in a worker thread;
        a round is one transaction). Raises the database's error; the watcher keeps
        the rows for its next round."""
        if not traces and not changes:
            return
        keep_after = time.time() - self.retention_s
        own = getattr(self._writer, "write_traces", None)  # PostgreSQL: its own tables
        if own is not None:
            own(traces, changes, keep_after)
        else:
            _write_traces(self._writer, traces, changes, keep_after)  # type: ignore[arg-type]

    def latest_traces(
        self, until: float | None = None, targets: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each target's latest trace up to ``until``: target, time, address,
        hop_count (None: not reached), reached, path (responders, None: no answer)."""
        with self._read() as conn:
            return _read_latest_traces(conn, until, targets)

    def path_changes(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Path changes in [since, until], oldest first: target, time, address,
        old_hops, new_hops, old, new (paths as lists of responders)."""
        with self._read() as conn:
            return _read_path_changes(conn, since, until, targets)

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
                queued=self._queued(),
                max_queue=self.max_queue,
                last_error=self._last_error,
                db=self.db,
            )
            self._dropped_unlogged = 0
            self._last_drop_log = now

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or was counted as dropped).
        Returns False if ``timeout_s`` passed first; the results stay queued."""
        if self._outage_q and self._task is not None:
            await self._write_outage_q()
        goal = self._submitted_total
        if self._done >= goal:
            return True
        if self._task is None or self._progress is None:
            raise RuntimeError("ResultStore.flush() before start(): nothing writes the queue")
        assert self._wake is not None
        self._flush_goal = max(self._flush_goal, goal)  # write held results now
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
        if self._outage_q and not await self._write_outage_q():
            with self._lock:
                lost_outages = len(self._outage_q)
                self._outage_q = []
            self._outages_dropped += lost_outages
            log.error("store closed with unwritten outages", unwritten=lost_outages,
                      last_error=self._last_error, db=str(self.path))  # fmt: skip
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
            left = self._queued()
            self._queue.clear()
            self._chunks.clear()
            self._chunk_records = 0
            if left:
                self._dropped += left  # logged just below, in words of its own
                self._done += left
        if left:
            log.error(
                "store closed with unwritten results",
                unwritten=left,
                last_error=self._last_error,
                db=self.db,
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
        """Counters, in records (one probe result each): queued (accepted, not yet
        written), written, dropped, write_failures (failed write attempts), retries
        (writes attempted again after a failure), rolled_up (folded into rollups);
        rows_written counts the chunk rows the records went into."""
        return {
            "queued": self._queued(),
            "written": self._written,
            "rows_written": self._rows_written,
            "dropped": self._dropped,
            "write_failures": self._write_failures,
            "retries": self._retries,
            "rolled_up": self._rollup_rows,
            "last_error": self._last_error,
            "outages_written": self._outages_written,
            "outages_dropped": self._outages_dropped,
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
                queued=self._queued(),
                failures=self._write_failures,
                db=self.db,
            )

    async def _notify(self) -> None:
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    def _results_due(self) -> bool:
        """Write the queued ProbeResults now (else they wait to be packed with more)."""
        return bool(self._queue) and (
            self._closing
            or self._done < self._flush_goal
            or len(self._queue) >= self._hold_max
            or time.monotonic() - self._queue_since >= self.chunk_window_s
        )

    def _urgent(self) -> bool:
        """Write without waiting for the next flush interval."""
        return (
            self._closing
            or self._chunk_records >= self.batch_size
            or (bool(self._queue) and self._done < self._flush_goal)
            or len(self._queue) >= self._hold_max
        )

    def _take_batch(self, results_due: bool) -> tuple[list[ProbeResult], list[_Chunk], int]:
        """The head of the queues: the ProbeResults when they are due (all of them: a
        target's results held together go into one row) and chunks holding up to
        batch_size records (at least one)."""
        with self._lock:
            results = list(self._queue) if results_due else []
            chunks: list[_Chunk] = []
            records = 0
            for c in self._chunks:
                if chunks and records + c.n > self.batch_size:
                    break
                chunks.append(c)
                records += c.n
        return results, chunks, records

    def _drop_batch(self, results: int, chunks: int, chunk_records: int) -> None:
        """Remove a written batch from the head of the queues (lock held)."""
        if results == len(self._queue):
            self._queue.clear()
        else:
            for _ in range(results):
                self._queue.popleft()
            self._queue_since = time.monotonic()  # the rest: as if they came now
        for _ in range(chunks):
            self._chunks.popleft()
        self._chunk_records -= chunk_records

    async def _run(self) -> None:
        assert self._wake is not None
        delay = 0.0  # backoff after a failure
        failing = False
        while True:
            if not self._queued() and self._closing:
                return
            if failing:
                with contextlib.suppress(asyncio.TimeoutError):
                    # close() wakes us to give up sooner; a flush() does not skip the backoff
                    await asyncio.wait_for(self._wait_closing(), delay)
                self._retries += 1
            elif not self._urgent():
                # wait for a full batch, a flush, or the interval
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                self._wake.clear()
            results_due = self._results_due()
            if self._chunks or results_due:
                results, chunks, chunk_records = self._take_batch(results_due)
                try:
                    bad, rows = await asyncio.to_thread(self._writer.write, results, chunks)
                except Exception as e:  # noqa: BLE001 - locked, full, read-only, I/O, ...
                    # Whatever went wrong, the batch stays queued: a writer task that
                    # died here would lose everything after it without a word.
                    self._note_failure(e, "write")
                    delay = min(self.retry_max_s, max(self.retry_initial_s, delay * 2))
                    failing = True
                    if self._closing:
                        return  # close() counts what is left
                    continue
                records = len(results) + chunk_records
                bad_records = sum(k for _, k, _ in bad)
                with self._lock:
                    self._drop_batch(len(results), len(chunks), chunk_records)
                    self._written += records - bad_records
                    self._rows_written += rows
                    self._dropped += bad_records
                    self._done += records
                if bad:
                    log.error(
                        "store dropped malformed results",
                        dropped=bad_records,
                        first=repr(bad[0][0])[:300],
                        reason=bad[0][2],
                        db=self.db,
                    )
                if failing:
                    self._last_failure_log = 0.0
                    log.info("store writes recovered", queued=self._queued(), db=self.db)
                failing = False
                delay = 0.0
                await self._notify()
            if self._outage_q and not failing:
                await self._write_outage_q()
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
        except Exception as e:
            if not isinstance(e, (*self._writer.errors, OSError, ChunkError)):
                raise
            # raw rows stay in place; the next round folds them
            log.warning("store rollup failed; will retry", error=f"{e}", db=self.db)

    async def rollup(self, now: float | None = None) -> int:
        """Fold raw results older than the retention window (whole minutes) into
        per-minute rollups and delete them; a chunk reaching past the cutoff waits for
        a later round. The writer does this every ``rollup_interval_s``; call it to
        force one. Returns the records folded."""
        cutoff = _minute_floor((time.time() if now is None else now) - self.retention_s)
        n = await asyncio.to_thread(self._writer.rollup, cutoff)
        self._rollup_rows += n
        if n:
            log.info("store rolled up old results", records=n, before=cutoff, db=self.db)
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
            version = _schema_version(conn)
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{str(self.path)!r} is not a fastping database ({e}); give the file "
                "`fastping monitor --db` writes"
            ) from None
        try:
            _check_version(self.path, version)
            _compat_views(conn, version)
            yield conn
        finally:
            conn.close()

    def _where(self, target: str) -> str:
        return f"{self.path} target {target!r}"

    def targets(self) -> list[str]:
        """Every target name the store has seen, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM targets ORDER BY name")]

    def target_kinds(self) -> dict[str, tuple[str, int]]:
        """Every target's probe kind and port (targets.kind / port: 'icmp', 0 for a
        plain host; 'tcp', 22 for tcp://host:22)."""
        with self._read() as conn:
            return {
                str(n): (str(k), int(p))
                for n, k, p in conn.execute("SELECT name, kind, port FROM targets")
            }

    def dns_answers(
        self, since: float | None = None, until: float | None = None
    ) -> dict[Any, dict[str, Any]]:
        """DNS targets' answers in [since, until] (whole minutes: the minutes that start
        in it): per target (per (target, agent) from PostgreSQL), ``rcodes`` (rcode
        name -> answers: NOERROR, NXDOMAIN, ...), ``truncated`` (answers with TC) and
        ``answers`` (all)."""
        from .dnscodec import rcode_name

        sql = (
            "SELECT t.name, d.rcode, d.tc, sum(d.n) FROM dns_answers d "
            "JOIN targets t ON t.id = d.tid WHERE 1"
        )
        args: list[float] = []
        if since is not None:
            sql += " AND d.minute >= ?"
            args.append(_minute_floor(since))
        if until is not None:
            sql += " AND d.minute <= ?"
            args.append(until)
        sql += " GROUP BY t.name, d.rcode, d.tc ORDER BY t.name, d.rcode"
        out: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for name, rcode, tc, n in conn.execute(sql, args):
                d = out.setdefault(str(name), {"answers": 0, "truncated": 0, "rcodes": {}})
                rn = rcode_name(int(rcode))
                d["rcodes"][rn] = d["rcodes"].get(rn, 0) + int(n)
                d["answers"] += int(n)
                if tc:
                    d["truncated"] += int(n)
        return out

    def recent(self, target: str, limit: int = 100) -> list[ProbeResult]:
        """The latest raw results of ``target`` (at most ``limit``), oldest first. RTTs
        come back as the shortest decimal of their stored float32 (7 digits)."""
        limit = int(limit)
        with self._read() as conn:
            row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
            if row is None or limit <= 0:
                return []
            return _recent_records(
                conn, target, int(row[0]), limit, self._where(target),
                "SELECT t0, t1, rowid, address, data FROM results WHERE tid = ?"
                " ORDER BY t1 DESC, rowid DESC",
                "SELECT t, seq, outcome, icmp_type, icmp_code, router, errno"
                " FROM results_extra WHERE tid = ? AND t >= ? AND t <= ?",
            )  # fmt: skip

    def probe_log(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
    ) -> dict[str, tuple[array[float], array[float], array[int], bytes]]:
        """Each target's replies and timeouts in [since, until] as columns (record
        time, RTT ms / NaN, ICMP sequence, outcome code), in stored order: what
        ``fastping.loss`` reads to tell loss patterns apart. Raw rows only (the
        retention window): rollups keep counts, not the order of losses."""
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        keep = None if targets is None else set(targets)
        out: dict[str, tuple[array[float], array[float], array[int], bytes]] = {}
        parts: dict[str, list[tuple[array[float], array[float], array[int], bytearray]]] = {}
        with self._read() as conn:
            names = dict(conn.execute("SELECT id, name FROM targets"))
            for tid, data in conn.execute(
                "SELECT tid, data FROM results WHERE t1 >= ? AND t0 <= ? ORDER BY tid, t0, rowid",
                (lo, hi),
            ):
                name = names.get(tid)
                if name is None or (keep is not None and name not in keep):
                    continue
                cols = unpack(data)
                code = cols.code
                if code.count(_REPLY) + code.count(_TIMEOUT) == len(code) and (
                    not cols.t or (cols.t[0] >= lo and cols.t[-1] <= hi)
                ):
                    parts.setdefault(name, []).append(
                        (cols.t, cols.rtt_ms, cols.seq, bytearray(code))
                    )
                    continue
                sel = [
                    i for i, c in enumerate(code)
                    if c in (_REPLY, _TIMEOUT) and lo <= cols.t[i] <= hi
                ]  # fmt: skip
                parts.setdefault(name, []).append((
                    array("d", [cols.t[i] for i in sel]),
                    array("f", [cols.rtt_ms[i] for i in sel]),
                    array("i", [cols.seq[i] for i in sel]),
                    bytearray(code[i] for i in sel),
                ))  # fmt: skip
        for name, ps in parts.items():
            t: array[float] = array("d")
            r: array[float] = array("f")
            q: array[int] = array("i")
            c = bytearray()
            for a, b, d, e in ps:
                t.extend(a)
                r.extend(b)
                q.extend(d)
                c += e
            out[name] = (t, r, q, bytes(c))
        return out

    def _accumulate_many(
        self,
        conn: sqlite3.Connection,
        targets: Sequence[tuple[int, str]],
        since: float | None,
        until: float | None,
        bucket_s: float | None = None,
    ) -> Iterator[tuple[str, dict[int, _Acc]]]:
        """(name, accumulators by bucket) of each of ``targets`` ((tid, name), by tid),
        one query for the chunks and one for the rollups of each group of targets."""
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        for g in range(0, len(targets), _TID_GROUP):
            group = targets[g : g + _TID_GROUP]
            first, last = group[0][0], group[-1][0]
            chunks: dict[int, list[tuple[str | None, bytes]]] = {}
            for tid, addr, data in conn.execute(
                "SELECT tid, address, data FROM results WHERE tid >= ? AND tid <= ?"
                " AND t1 >= ? AND t0 <= ? ORDER BY tid, t0, rowid",
                (first, last, lo, hi),
            ):
                chunks.setdefault(tid, []).append((addr, data))
            rolls: dict[int, list[dict[str, Any]]] = {}
            # A rollup minute is in the window when it overlaps it.
            for r in conn.execute(
                f"SELECT {', '.join(_ROLLUP_COLS)} FROM rollups WHERE tid >= ? AND tid <= ?"
                " AND minute > ? AND minute <= ? ORDER BY tid, minute",
                (first, last, lo - ROLLUP_S, hi),
            ):
                rolls.setdefault(r[0], []).append(dict(zip(_ROLLUP_COLS, r, strict=True)))
            for tid, name in group:
                c = chunks.get(tid)
                rl = rolls.get(tid, [])
                if c is None and not rl:
                    continue
                st = _Stream.of(c or [], full=False, where=self._where(name))
                yield name, _fold(name, st, rl, lo, hi, bucket_s)

    def _target_ids(self, conn: sqlite3.Connection, target: str | None) -> list[tuple[int, str]]:
        if target is None:
            return [
                (int(r[0]), r[1]) for r in conn.execute("SELECT id, name FROM targets ORDER BY id")
            ]
        row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
        return [] if row is None else [(int(row[0]), target)]

    def target_stats(
        self, target: str, since: float | None = None, until: float | None = None
    ) -> dict[str, Any] | None:
        """Stats of ``target`` over [since, until] (Unix seconds; None = open end), or
        None when it has no results there. Keys: those of ``fastping sweep --json``
        (target, address, sent, received, loss, min_ms, avg_ms, max_ms) plus stddev_ms,
        jitter_ms, p50_ms, p95_ms, p99_ms, one count per other outcome, first_time,
        last_time and ``approximate`` (percentiles estimated from minute rollups)."""
        with self._read() as conn:
            for _, accs in self._accumulate_many(
                conn, self._target_ids(conn, target), since, until
            ):
                a = accs.get(0)
                if a is not None and not a.empty():
                    return a.result(target)
        return None

    def all_stats(
        self, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """``target_stats`` of every target with results in the window, by target name."""
        out = []
        with self._read() as conn:
            for name, accs in self._accumulate_many(
                conn, self._target_ids(conn, None), since, until
            ):
                a = accs.get(0)
                if a is not None and not a.empty():
                    out.append(a.result(name))
        out.sort(key=lambda s: s["target"])
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
        accs: dict[int, _Acc] = {}
        with self._read() as conn:
            for _, by_bucket in self._accumulate_many(
                conn, self._target_ids(conn, target), since, until, bucket_s
            ):
                accs = by_bucket
        out = []
        for k in sorted(accs):
            d = accs[k].result(target)
            d.update(accs[k].spread())
            d["time"] = k * bucket_s
            out.append(d)
        return out

    def count_results(
        self, target: str | None = None, since: float | None = None, until: float | None = None
    ) -> int:
        """Records stored for ``target`` (None: every target) in [since, until]: raw
        records inside the window (a chunk reaching over an edge counts only its records
        inside) plus the results of rollup minutes that overlap it, the same records
        target_stats counts."""
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        total = 0
        args: tuple[int, ...] = ()
        where = ""
        with self._read() as conn:
            if target is not None:
                row = conn.execute("SELECT id FROM targets WHERE name = ?", (target,)).fetchone()
                if row is None:
                    return 0
                where, args = "tid = ? AND ", (int(row[0]),)
            # chunks wholly inside: their n; the ones over an edge: count their times
            whole = conn.execute(
                f"SELECT sum(n) FROM results WHERE {where}t0 >= ? AND t1 <= ?", (*args, lo, hi)
            ).fetchone()[0]
            total += int(whole or 0)
            for (data,) in conn.execute(
                f"SELECT data FROM results WHERE {where}t1 >= ? AND t0 <= ? AND (t0 < ? OR t1 > ?)",
                (*args, lo, hi, lo, hi),
            ):
                n = len(data) // RECORD_SIZE
                t = array("d")
                t.frombytes(data[: 8 * n])
                total += bisect_right(t, hi) - bisect_left(t, lo)
            rolled = conn.execute(
                f"SELECT sum({_ROLLUP_TOTAL}) FROM rollups WHERE {where}minute > ? AND minute <= ?",
                (*args, lo - ROLLUP_S, hi),
            ).fetchone()[0]
            total += int(rolled or 0)
        return total

    def time_range(self) -> tuple[float, float] | None:
        """(oldest, newest) result time in the store, or None when it is empty."""
        with self._read() as conn:
            r = conn.execute("SELECT min(t0), max(t1) FROM results").fetchone()
            m = conn.execute("SELECT min(minute), max(minute) FROM rollups").fetchone()
        lows = [v for v in (r[0], m[0]) if v is not None]
        highs = [v for v in (r[1], None if m[1] is None else m[1] + ROLLUP_S) if v is not None]
        if not lows:
            return None
        return float(min(lows)), float(max(highs))


def _fold(
    target: str,
    st: _Stream,
    rolls: Sequence[dict[str, Any]],
    lo: float,
    hi: float,
    bucket_s: float | None,
) -> dict[int, _Acc]:
    """The records of ``st`` inside [lo, hi] and the rollup rows (by minute), merged in
    time order into one accumulator per bucket (key 0 without buckets)."""
    accs: dict[int, _Acc] = {}
    t = st.t

    def acc(k: int) -> _Acc:
        a = accs.get(k)
        if a is None:
            a = accs[k] = _Acc()
        return a

    def raw(i: int, j: int) -> None:
        if bucket_s is None:
            if j > i:
                acc(0).add_block(target, st, i, j)
            return
        while i < j:
            k = int(t[i] // bucket_s)
            e = max(i + 1, bisect_left(t, (k + 1) * bucket_s, i, j))
            acc(k).add_block(target, st, i, e)
            i = e

    i = bisect_left(t, lo)
    end = bisect_right(t, hi)
    for r in rolls:
        r["address"] = _decode_address(target, r["address"])
        j = bisect_left(t, r["minute"], i, end)
        raw(i, j)
        i = j
        acc(0 if bucket_s is None else int(r["minute"] // bucket_s)).add_rollup(r)
    raw(i, max(i, end))
    return accs


def _minute_floor(t: float) -> float:
    return float(math.floor(t / ROLLUP_S) * ROLLUP_S)


__all__ = [
    "COUNT_KEYS",
    "OUTCOME_BY_CODE",
    "OUTCOME_CODE",
    "SENT_OUTCOMES",
    "ChunkError",
    "ResultStore",
]
