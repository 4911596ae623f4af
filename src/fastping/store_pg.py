"""PgResultStore: the store in PostgreSQL, so many agents keep one history.

    store = PgResultStore("postgresql://fastping@db.example/fastping", agent="site-a")
    # fastping monitor --db postgresql://... --agent site-a   (or store.url / store.agent)

The same data as the SQLite store (``store.py``), in the same shapes: one row per
target per write batch holding a packed chunk (``fastping.chunk``), the side rows
of the few results that carry ICMP error fields, and one rollup row per target per
minute (counts, sums, extremes, jitter sums, p50/p95/p99) for ranges older than the
retention window. The queue in front of it is ResultStore's own, unchanged: batches
that fail (server down, restarting, slow past ``statement_timeout_s``, connection
lost) stay queued and are retried with backoff; a full queue drops and counts, in
``stats()["dropped"]``, exactly as with SQLite. This class only swaps the writer
(``_PgWriter``, a ``store.StoreBackend``) and the queries.

What PostgreSQL changes:

- **Agents.** Every row carries its agent (``fastping_results.agent``, and
  ``fastping_targets`` is keyed by (agent, name), so each agent's view of a target
  is its own series). Agents default to the host name, with the shard appended
  (``host#0/2``). Target labels from the configuration are kept per (agent, target)
  in ``fastping_targets.labels`` (jsonb) for ``fastping report --label``.
- **COPY.** A batch goes in with one binary ``COPY`` for the chunks and one for the
  side rows, in one transaction.
- **Partitions.** ``fastping_results`` and ``fastping_results_extra`` are
  partitioned by range of the chunk's last time ``t1`` (``partition_s``, one hour by
  default; the first agent's choice is kept in ``fastping_meta`` and every other
  agent uses it). Retention folds a whole partition once it is entirely older than
  the cutoff into ``fastping_rollups`` and drops it, in one transaction: no
  ``DELETE`` of rows, no vacuum debt. Agents serialize partition creation and
  rollups with advisory locks, so two agents never fold the same hour twice.

Tables are prefixed ``fastping_`` so a shared database (or schema: give
``?options=-csearch_path%3Dmyschema`` in the URL) can hold them beside others.
Queries are synchronous (the report command), on a connection of their own.
"""

from __future__ import annotations

import contextlib
import math
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .chunk import RECORD_SIZE
from .errors import ConfigError
from .logs import get_logger
from .loss import KIND_LOCAL, KIND_TARGET, Outage
from .results import ProbeResult
from .shard import agent_name
from .store import (
    _ROLLUP_COLS,
    _ROLLUP_TOTAL,
    COUNT_KEYS,
    ROLLUP_S,
    ResultStore,
    _Acc,
    _Chunk,
    _fold,
    _merge_rollups,
    _recent_records,
    _rollup_row,
    _Row,
    _Stream,
    _Writer,
    dns_answer_counts,
    is_postgres_url,
    target_columns,
)
from .timing import N_BUCKETS, SendLateness

log = get_logger("fastping.store")

PG_SCHEMA_VERSION = 1
DEFAULT_PARTITION_S = 3600.0
# records per write transaction unless given: a commit costs PostgreSQL a round trip
# and a WAL flush, so fewer, bigger COPYs (benchmarks/bench_store_pg.py: 10,000
# targets/s, writer 1.05 -> 0.66 us/result, hand-off to commit p99 1.7 -> 0.6 s)
DEFAULT_BATCH_SIZE = 10_000
# advisory lock keys (pg_advisory_xact_lock): schema/partition changes, rollups
_LOCK_DDL = 0x66707064  # "fppd"
_LOCK_ROLLUP = 0x66707072  # "fppr"
_GROUP = 512  # targets per query in the stats and the rollup

_COUNTS_DDL = ", ".join(f"{k} integer NOT NULL" for k in COUNT_KEYS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS fastping_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS fastping_targets (
    id serial PRIMARY KEY,
    agent text NOT NULL,
    name text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{{}}',
    UNIQUE (agent, name)
);
CREATE TABLE IF NOT EXISTS fastping_results (
    agent text NOT NULL,
    tid integer NOT NULL,       -- fastping_targets.id
    t0 double precision NOT NULL,
    t1 double precision NOT NULL,
    n integer NOT NULL,
    address text,               -- NULL: the target name; '': none (unresolved)
    data bytea NOT NULL,        -- a chunk (fastping.chunk)
    rowid bigserial
) PARTITION BY RANGE (t1);
CREATE INDEX IF NOT EXISTS fastping_results_tid_t1 ON fastping_results (tid, t1);
CREATE TABLE IF NOT EXISTS fastping_results_extra (
    tid integer NOT NULL,
    t1 double precision NOT NULL,  -- its chunk's t1: it lives and goes with its chunk
    t double precision NOT NULL,
    seq integer NOT NULL,
    outcome smallint NOT NULL,
    icmp_type bigint, icmp_code bigint, router text, errno bigint  -- SQLite's 64 bits
) PARTITION BY RANGE (t1);
CREATE INDEX IF NOT EXISTS fastping_results_extra_tid_t ON fastping_results_extra (tid, t);
CREATE TABLE IF NOT EXISTS fastping_rollups (
    agent text NOT NULL,
    tid integer NOT NULL,
    minute bigint NOT NULL,
    address text,
    sent integer NOT NULL,
    {_COUNTS_DDL},
    min_ms double precision, max_ms double precision,
    sum_ms double precision NOT NULL, sumsq_ms double precision NOT NULL,
    p50_ms double precision, p95_ms double precision, p99_ms double precision,
    jitter_sum_ms double precision NOT NULL, jitter_n integer NOT NULL,
    first_rtt_ms double precision, last_rtt_ms double precision,
    PRIMARY KEY (tid, minute)
);
-- the prober's own send timing, one row per agent per window (timing.py's send_timing)
CREATE TABLE IF NOT EXISTS fastping_send_timing (
    agent text NOT NULL,
    t0 double precision NOT NULL,
    t1 double precision NOT NULL,
    probes bigint NOT NULL,
    sum_ns bigint NOT NULL,
    max_ns bigint NOT NULL,
    hist bytea NOT NULL,
    interval_factor double precision NOT NULL DEFAULT 1.0
);
CREATE INDEX IF NOT EXISTS fastping_send_timing_t1 ON fastping_send_timing (t1);
-- added with TCP targets (issue #17): a database made before gets them here, in place
-- (kind: targets.PROBE_KINDS, port 0 for ICMP; closed: TCP RSTs per rollup minute)
ALTER TABLE fastping_targets ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'icmp';
ALTER TABLE fastping_targets ADD COLUMN IF NOT EXISTS port integer NOT NULL DEFAULT 0;
ALTER TABLE fastping_rollups ADD COLUMN IF NOT EXISTS closed integer NOT NULL DEFAULT 0;
-- added with DNS targets (issue #18): a DNS target's question (NULL for other kinds)
ALTER TABLE fastping_targets ADD COLUMN IF NOT EXISTS qname text;
ALTER TABLE fastping_targets ADD COLUMN IF NOT EXISTS qtype text;
-- and their answers per minute by rcode and TC (as SQLite's dns_answers), per agent
CREATE TABLE IF NOT EXISTS fastping_dns_answers (
    agent text NOT NULL,
    tid integer NOT NULL,
    minute bigint NOT NULL,
    rcode integer NOT NULL,
    tc smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (tid, minute, rcode, tc)
);
"""

_UPSERT_DNS_PG = (
    "INSERT INTO fastping_dns_answers (agent, tid, minute, rcode, tc, n) VALUES "
    "(%s, %s, %s, %s, %s, %s) ON CONFLICT (tid, minute, rcode, tc) DO UPDATE SET "
    "n = fastping_dns_answers.n + EXCLUDED.n"
)
_COPY_RESULTS = (
    "COPY fastping_results (agent, tid, t0, t1, n, address, data) FROM STDIN (FORMAT BINARY)"
)
_COPY_RESULTS_TYPES = ["text", "int4", "float8", "float8", "int4", "text", "bytea"]
_COPY_EXTRA = (
    "COPY fastping_results_extra (tid, t1, t, seq, outcome, icmp_type, icmp_code, router, errno)"
    " FROM STDIN (FORMAT BINARY)"
)
_COPY_EXTRA_TYPES = ["int4", "float8", "float8", "int4", "int2", "int8", "int8", "text", "int8"]
_INT8 = range(-(2**63), 2**63)
_INSERT_RESULT = (
    "INSERT INTO fastping_results (agent, tid, t0, t1, n, address, data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_EXTRA = (
    "INSERT INTO fastping_results_extra (tid, t1, t, seq, outcome, icmp_type, icmp_code, "
    "router, errno) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_ROLLUP_UPSERT = (
    f"INSERT INTO fastping_rollups (agent, {', '.join(_ROLLUP_COLS)}) "
    f"VALUES ({', '.join(['%s'] * (len(_ROLLUP_COLS) + 1))})"
    " ON CONFLICT (tid, minute) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ROLLUP_COLS if c not in ("tid", "minute"))
)
# a value PostgreSQL cannot hold (a NUL in a text, an integer out of range): the row is
# bad, the server is fine
_PG_MALFORMED: tuple[type[Exception], ...] = (psycopg.DataError,)


def redact(url: str) -> str:
    """The URL without its password (for logs and the report's header)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        u = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if u.password is None:
        return url
    netloc = u.netloc.rsplit("@", 1)[1]
    user = u.username or ""
    return urlunsplit((u.scheme, f"{user}:***@{netloc}", u.path, u.query, u.fragment))


def _partition_start(t1: float, partition_s: float) -> int:
    return int(math.floor(t1 / partition_s) * partition_s)


class _PgWriter:
    """The write side on PostgreSQL (a ``store.StoreBackend``): one connection, used by
    one worker thread at a time."""

    errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)

    def __init__(
        self,
        url: str,
        agent: str,
        partition_s: float,
        connect_timeout_s: float,
        statement_timeout_s: float,
    ) -> None:
        self.url = url
        self.agent = agent
        self.partition_s = float(partition_s)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.conn: psycopg.Connection[Any] | None = None
        self.tids: dict[str, int] = {}
        self.parts: set[int] = set()  # partition starts known to exist
        self.lock = threading.Lock()
        self._labels_lock = threading.Lock()
        self._labels: dict[str, dict[str, str]] = {}  # waiting to be written

    # ---- connection -------------------------------------------------------------------

    def open(self) -> psycopg.Connection[Any]:
        if self.conn is None:
            conn = connect(self.url, self.connect_timeout_s, self.statement_timeout_s)
            try:
                self.partition_s = ensure_schema(conn, self.partition_s)
                self._write_labels(conn)
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
            with contextlib.suppress(psycopg.Error, OSError):
                self.conn.close()
            self.conn = None
            # what another agent did meanwhile (a partition dropped) is read again
            self.parts.clear()

    def set_labels(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        with self._labels_lock:
            for name, lab in labels.items():
                self._labels[name] = dict(lab)

    def write_outages(self, outages: Sequence[Outage]) -> None:
        """Upsert outage starts and ends (fastping.loss) with this agent, one
        transaction (the SQLite store's outages table, with an agent column)."""
        with self.lock:
            try:
                conn = self.open()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_OUTAGE_SCHEMA)
                    cur.executemany(
                        _UPSERT_OUTAGE,
                        [(self.agent, o.kind, o.target or "", o.start, o.end, o.lost, o.rule)
                         for o in outages],
                    )  # fmt: skip
            except BaseException:
                self.close()
                raise

    def write_traces(
        self, traces: Sequence[Any], changes: Sequence[Any], keep_after: float
    ) -> None:
        """One round of traces and path changes (fastping.pathwatch) with this agent, one
        transaction (the SQLite store's traces / path_changes, with an agent column);
        this agent's rows older than ``keep_after`` are deleted."""
        from .store import _json_path

        with self.lock:
            try:
                conn = self.open()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_TRACE_SCHEMA)
                    cur.executemany(
                        "INSERT INTO fastping_traces VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(self.agent, r.target, r.time, r.address, r.hop_count, bool(r.reached),
                          _json_path(r.path)) for r in traces],
                    )  # fmt: skip
                    cur.executemany(
                        "INSERT INTO fastping_path_changes VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [(self.agent, c.target, c.time, c.address, c.old_hops, c.new_hops,
                          _json_path(c.old), _json_path(c.new)) for c in changes],
                    )  # fmt: skip
                    for table in ("fastping_traces", "fastping_path_changes"):
                        cur.execute(
                            f"DELETE FROM {table} WHERE agent = %s AND time < %s",
                            (self.agent, keep_after),
                        )
            except BaseException:
                self.close()
                raise

    # ---- writes -----------------------------------------------------------------------

    def write(
        self, results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[tuple[object, int, str]], int]:
        with self.lock:
            try:
                return self._write(results, chunks)
            except BaseException:
                self.close()
                raise

    def _write(
        self, results: Sequence[ProbeResult], chunks: Sequence[_Chunk]
    ) -> tuple[list[tuple[object, int, str]], int]:
        conn = self.open()
        rows, bad = _Writer._pack(results, chunks)
        self._write_labels(conn)
        rows = self._with_tids(conn, rows, bad)
        if not rows:
            return bad, 0
        self._ensure_partitions(conn, {_partition_start(r.t1, self.partition_s) for r in rows})
        try:
            with conn.transaction():
                self._copy(conn, rows)
            return bad, len(rows)
        except psycopg.errors.CheckViolation:
            # "no partition of relation found for row": another agent's rollup dropped
            # a partition we thought was there; the retry makes it again
            self.parts.clear()
            raise
        except _PG_MALFORMED:
            pass
        # Something in the batch cannot be stored as it is (a caller bug, not the
        # server): row by row, each in a savepoint, and the bad ones set aside.
        written = 0
        with conn.transaction():
            for row in rows:
                try:
                    with conn.transaction():
                        self._insert_one(conn, row)
                    written += 1
                except _PG_MALFORMED as e:
                    bad.append((row.origin, row.n, f"{type(e).__name__}: {e}"))
        return bad, written

    def _dns_answers(self, conn: psycopg.Connection[Any], rows: Sequence[_Row]) -> None:
        """DNS targets' answers by rcode (store.dns_answer_counts), in the transaction
        of their chunks."""
        counts = [
            (self.agent, self.tids[r.target], *k, n)
            for r in rows if r.target.startswith("dns://")
            for k, n in dns_answer_counts(r.data).items()
        ]  # fmt: skip
        if counts:
            with conn.cursor() as cur:
                cur.executemany(_UPSERT_DNS_PG, counts)

    def _copy(self, conn: psycopg.Connection[Any], rows: Sequence[_Row]) -> None:
        self._dns_answers(conn, rows)
        agent, tids = self.agent, self.tids
        extras: list[tuple[Any, ...]] = []
        with conn.cursor() as cur:
            with cur.copy(_COPY_RESULTS) as cp:
                cp.set_types(_COPY_RESULTS_TYPES)
                write_row = cp.write_row
                for r in rows:
                    tid = tids[r.target]
                    write_row((agent, tid, r.t0, r.t1, r.n, r.address, r.data))
                    if r.extras:
                        extras.extend((tid, r.t1, *e) for e in r.extras)
            if extras:
                for e in extras:
                    # binary COPY keeps the low bytes of a wider int: refuse it here
                    for v in (e[5], e[6], e[8]):
                        if v is not None and v not in _INT8:
                            raise psycopg.DataError(f"{v} is out of the range of bigint")
                with cur.copy(_COPY_EXTRA) as cp:
                    cp.set_types(_COPY_EXTRA_TYPES)
                    for e in extras:
                        cp.write_row(e)

    def _insert_one(self, conn: psycopg.Connection[Any], r: _Row) -> None:
        self._dns_answers(conn, [r])
        tid = self.tids[r.target]
        conn.execute(_INSERT_RESULT, (self.agent, tid, r.t0, r.t1, r.n, r.address, r.data))
        for e in r.extras:
            conn.execute(_INSERT_EXTRA, (tid, r.t1, *e))

    def _with_tids(
        self, conn: psycopg.Connection[Any], rows: list[_Row], bad: list[tuple[object, int, str]]
    ) -> list[_Row]:
        """Make sure each row's (agent, target) has its id; rows whose target name the
        server refuses (a NUL) go to ``bad``."""
        missing = sorted({r.target for r in rows if r.target not in self.tids})
        refused: set[str] = set()
        if missing:
            try:
                self._fetch_tids(conn, missing)
            except _PG_MALFORMED:
                for name in missing:
                    try:
                        self._fetch_tids(conn, [name])
                    except _PG_MALFORMED as e:
                        refused.add(name)
                        why = f"{type(e).__name__}: {e}"
                        bad.extend((r.origin, r.n, why) for r in rows if r.target == name)
        return [r for r in rows if r.target not in refused] if refused else rows

    def _fetch_tids(self, conn: psycopg.Connection[Any], names: Sequence[str]) -> None:
        with conn.transaction():
            cols = [target_columns(n) for n in names]
            conn.execute(
                "INSERT INTO fastping_targets (agent, name, kind, port, qname, qtype)"
                " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[],"
                " %s::text[]) ON CONFLICT (agent, name) DO NOTHING",
                (self.agent, list(names), *(list(c) for c in zip(*cols, strict=True))),
            )
            for tid, name in conn.execute(
                "SELECT id, name FROM fastping_targets WHERE agent = %s AND name = ANY(%s)",
                (self.agent, list(names)),
            ):
                self.tids[name] = int(tid)

    def _write_labels(self, conn: psycopg.Connection[Any]) -> None:
        with self._labels_lock:
            pending, self._labels = self._labels, {}
        if not pending:
            return
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO fastping_targets (agent, name, labels, kind, port, qname, qtype)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (agent, name) DO UPDATE SET labels = EXCLUDED.labels",
                    [(self.agent, n, Jsonb(lab), *target_columns(n)) for n, lab in pending.items()],
                )
        except _PG_MALFORMED as e:
            log.error("store: target labels refused", error=str(e), db=redact(self.url))
        except BaseException:
            with self._labels_lock:  # again with the next batch
                self._labels = {**pending, **self._labels}
            raise

    def _ensure_partitions(self, conn: psycopg.Connection[Any], starts: Iterable[int]) -> None:
        missing = sorted(set(starts) - self.parts)
        if not missing:
            return
        with conn.transaction():
            # one agent at a time: two CREATE ... IF NOT EXISTS at once can still collide
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_DDL,))
            for start in missing:
                end = start + int(self.partition_s)
                for table in ("fastping_results", "fastping_results_extra"):
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} "
                            "FOR VALUES FROM ({}) TO ({})"
                        ).format(
                            sql.Identifier(f"{table}_p{start}"),
                            sql.Identifier(table),
                            sql.Literal(start),
                            sql.Literal(end),
                        )
                    )
        self.parts.update(missing)

    # ---- retention --------------------------------------------------------------------

    def rollup(self, cutoff: float) -> int:
        with self.lock:
            try:
                return self._rollup(cutoff)
            except BaseException:
                self.close()
                raise

    def _rollup(self, cutoff: float) -> int:
        conn = self.open()
        folded = 0
        for start in partitions(conn):
            if start + self.partition_s > cutoff:
                break
            folded += self._fold_partition(conn, start)
        return folded

    def _fold_partition(self, conn: psycopg.Connection[Any], start: int) -> int:
        """Fold every chunk of one partition (all agents') into minute rollups and drop
        it (and its side rows), in one transaction."""
        part = f"fastping_results_p{start}"
        folded = 0
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ROLLUP,))
            if conn.execute("SELECT to_regclass(%s)", (part,)).fetchone()[0] is None:  # type: ignore[index]
                self.parts.discard(start)
                return 0  # another agent folded it
            # a late write into this hour waits until it is gone (then makes it anew)
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(part)))
            tids = [
                int(r[0])
                for r in conn.execute(
                    sql.SQL("SELECT DISTINCT tid FROM {} ORDER BY tid").format(sql.Identifier(part))
                )
            ]
            agents = dict(
                conn.execute(
                    "SELECT id, agent FROM fastping_targets WHERE id = ANY(%s)", (tids,)
                ).fetchall()
            )
            for g in range(0, len(tids), _GROUP):
                group = tids[g : g + _GROUP]
                chunks: dict[int, list[tuple[str | None, bytes]]] = {}
                for tid, addr, data in conn.execute(
                    sql.SQL(
                        "SELECT tid, address, data FROM {} WHERE tid = ANY(%s)"
                        " ORDER BY tid, t0, rowid"
                    ).format(sql.Identifier(part)),
                    (group,),
                ):
                    chunks.setdefault(int(tid), []).append((addr, bytes(data)))
                new_rows: dict[tuple[int, int], dict[str, Any]] = {}
                for tid, cs in chunks.items():
                    st = _Stream.of(cs, full=False, where=f"{part} tid {tid}")
                    t = st.t
                    i, end = 0, len(t)
                    folded += end
                    while i < end:
                        minute = int(t[i] // ROLLUP_S) * ROLLUP_S
                        j = max(i + 1, bisect_left(t, minute + ROLLUP_S, i, end))
                        new_rows[(tid, minute)] = _rollup_row(tid, minute, st, i, j)
                        i = j
                if not new_rows:
                    continue
                # minutes folded before (a chunk of the previous hour reached into them)
                for r in conn.execute(
                    f"SELECT {', '.join(_ROLLUP_COLS)} FROM fastping_rollups WHERE tid = ANY(%s)"
                    " AND minute >= %s AND minute <= %s",
                    (group, min(m for _, m in new_rows), max(m for _, m in new_rows)),
                ):
                    old = dict(zip(_ROLLUP_COLS, r, strict=True))
                    key = (old["tid"], old["minute"])
                    if key in new_rows:
                        new_rows[key] = _merge_rollups(old, new_rows[key])
                with conn.cursor() as cur:
                    cur.executemany(
                        _ROLLUP_UPSERT,
                        [
                            (agents.get(tid, self.agent), *(row[c] for c in _ROLLUP_COLS))
                            for (tid, _), row in new_rows.items()
                        ],
                    )
            for table in (part, f"fastping_results_extra_p{start}"):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        self.parts.discard(start)
        if folded:
            log.info("store dropped a partition after rolling it up", partition=part,
                     records=folded, db=redact(self.url))  # fmt: skip
        return folded


def connect(
    url: str,
    connect_timeout_s: float = 5.0,
    statement_timeout_s: float = 30.0,
    *,
    read: bool = False,
) -> psycopg.Connection[Any]:
    """A connection that gives up instead of hanging on a server that is down or slow:
    ``connect_timeout``, TCP keepalives, and ``statement_timeout`` on every statement."""
    conn = psycopg.connect(
        url,
        connect_timeout=max(1, math.ceil(connect_timeout_s)),
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        application_name="fastping",
        autocommit=True,
    )
    try:
        conn.execute(
            sql.SQL("SET statement_timeout = {}").format(
                sql.Literal(f"{int(statement_timeout_s * 1000)}ms")
            )
        )
        if read:
            conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: psycopg.Connection[Any], partition_s: float) -> float:
    """Create the tables (once, whoever comes first) and return the database's
    partition length. A database of another schema version is a ConfigError."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_DDL,))
        conn.execute(_SCHEMA)
        conn.execute(
            "INSERT INTO fastping_meta (key, value) VALUES ('schema_version', %s), "
            "('partition_s', %s) ON CONFLICT (key) DO NOTHING",
            (str(PG_SCHEMA_VERSION), repr(float(partition_s))),
        )
        meta = dict(conn.execute("SELECT key, value FROM fastping_meta").fetchall())
    if meta.get("schema_version") != str(PG_SCHEMA_VERSION):
        raise ConfigError(
            f"the PostgreSQL database holds fastping schema {meta.get('schema_version')!r}; "
            f"this version writes schema {PG_SCHEMA_VERSION}: give another database or schema"
        )
    return float(meta.get("partition_s", partition_s))


def partitions(conn: psycopg.Connection[Any]) -> list[int]:
    """The starts of the results partitions, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('fastping_results')"
    ).fetchall()
    out = []
    for (name,) in rows:
        tail = str(name).rpartition("_p")[2]
        if tail.lstrip("-").isdigit():
            out.append(int(tail))
    return sorted(out)


class TargetKey(NamedTuple):
    """One agent's view of one target."""

    tid: int
    agent: str
    name: str
    labels: dict[str, str]


_OUTAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS fastping_outages (
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    "end" DOUBLE PRECISION,
    lost BIGINT NOT NULL,
    rule TEXT NOT NULL,
    PRIMARY KEY (agent, kind, target, start)
)"""
_UPSERT_OUTAGE = (
    'INSERT INTO fastping_outages (agent, kind, target, start, "end", lost, rule) '
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (agent, kind, target, start) "
    'DO UPDATE SET "end" = EXCLUDED."end", lost = EXCLUDED.lost, rule = EXCLUDED.rule'
)


_TRACE_SCHEMA = """
CREATE TABLE IF NOT EXISTS fastping_traces (
    agent TEXT NOT NULL,
    target TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    address TEXT NOT NULL,
    hop_count INTEGER,
    reached BOOLEAN NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fastping_traces_target_time ON fastping_traces (target, time);
CREATE TABLE IF NOT EXISTS fastping_path_changes (
    agent TEXT NOT NULL,
    target TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    address TEXT,
    old_hops INTEGER,
    new_hops INTEGER,
    old_path TEXT NOT NULL,
    new_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fastping_path_changes_time ON fastping_path_changes (time)"""


class PgResultStore(ResultStore):
    """Probe results in PostgreSQL (see the module docstring). Writes go through
    ResultStore's queue; the queries take ``agent`` / ``agents`` and ``labels``
    filters, and every stats dict has ``agent`` and ``labels``."""

    def __init__(
        self,
        url: str,
        *,
        agent: str | None = None,
        partition_s: float = DEFAULT_PARTITION_S,
        connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        **options: Any,
    ) -> None:
        if not is_postgres_url(url):
            raise ConfigError(f"{url!r} is not a postgresql:// URL")
        if not partition_s >= 60 or partition_s % 60:
            raise ConfigError(
                f"store partition_s {partition_s!r}: give whole minutes of at least 60 s"
            )
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise ConfigError(f"store URL {redact(url)!r}: {e}") from None
        self.url = url
        self.agent = agent or agent_name()
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        options.pop("busy_timeout_ms", None)
        options.setdefault("batch_size", DEFAULT_BATCH_SIZE)
        self._pg = _PgWriter(url, self.agent, partition_s, connect_timeout_s, statement_timeout_s)
        super().__init__(url, backend=self._pg, **options)
        self.db = redact(url)
        self._rconn: psycopg.Connection[Any] | None = None
        self._tconn: psycopg.Connection[Any] | None = None
        self._tlock = threading.Lock()

    def write_timing(
        self, t0: float, t1: float, lat: SendLateness, interval_factor: float = 1.0
    ) -> None:
        """Append one window of the prober's send lateness (``timing.write_window``'s
        row, with this agent), on a connection of its own bounded to 2 s; raises
        psycopg.Error / OSError, which the monitor logs and counts."""
        import struct

        blob = struct.pack(f"<{N_BUCKETS}Q", *lat.hist)
        with self._tlock:
            try:
                if self._tconn is None or self._tconn.closed:
                    self._tconn = connect(self.url, 2.0, 2.0)
                self._tconn.execute(
                    "INSERT INTO fastping_send_timing VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (self.agent, t0, t1, lat.probes, lat.sum_ns, lat.max_ns, blob,
                     interval_factor),
                )  # fmt: skip
            except BaseException:
                if self._tconn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        self._tconn.close()
                    self._tconn = None
                raise

    def read_timing(
        self, since: float | None, until: float | None, agents: Sequence[str] | None = None
    ) -> tuple[SendLateness, float, float]:
        """``timing.read_windows_with_guard`` over the agents' windows (None: all)."""
        import struct

        with self._read() as conn:
            rows = conn.execute(
                "SELECT probes, sum_ns, max_ns, hist, interval_factor, t1 - t0"
                " FROM fastping_send_timing WHERE t1 >= %s AND t1 <= %s"
                " AND (%s::text[] IS NULL OR agent = ANY(%s))",
                (-math.inf if since is None else since, math.inf if until is None else until,
                 None if agents is None else list(agents),
                 None if agents is None else list(agents)),
            ).fetchall()  # fmt: skip
        parts = []
        top, slowed_s = 1.0, 0.0
        for probes, sum_ns, max_ns, blob, factor, span_s in rows:
            if len(blob) != 8 * N_BUCKETS:
                continue
            parts.append((int(probes), int(sum_ns), int(max_ns),
                          struct.unpack(f"<{N_BUCKETS}Q", bytes(blob))))  # fmt: skip
            top = max(top, float(factor))
            if factor > 1.0:
                slowed_s += float(span_s)
        return SendLateness.of(parts), top, slowed_s

    def _check_place(self) -> None:
        pass  # a server may be down now and up later: the writer retries

    def outages(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
        kind: str | None = None,
        agents: Sequence[str] | None = None,
    ) -> list[Outage]:
        """ResultStore.outages over every agent's (or ``agents``') outages."""
        with self._read() as conn:
            if not conn.execute("SELECT to_regclass('fastping_outages') IS NOT NULL").fetchone()[0]:
                return []
            rows = conn.execute(
                'SELECT kind, target, start, "end", lost, rule FROM fastping_outages'
                " WHERE NOT (kind = %s AND lost = 0)"
                ' AND ("end" IS NULL OR "end" >= %s) AND start <= %s'
                " AND (%s::text IS NULL OR kind = %s)"
                " AND (%s::text[] IS NULL OR agent = ANY(%s)) ORDER BY start, target",
                (KIND_TARGET, -math.inf if since is None else since,
                 math.inf if until is None else until, kind, kind,
                 None if agents is None else list(agents),
                 None if agents is None else list(agents)),
            ).fetchall()  # fmt: skip
        out = [
            Outage(None if k == KIND_LOCAL else tg, float(st), None if en is None else float(en),
                   int(lost), k, rule)
            for k, tg, st, en, lost, rule in rows
        ]  # fmt: skip
        if targets is not None:
            keep = set(targets)
            out = [o for o in out if o.target is None or o.target in keep]
        return out

    def latest_traces(
        self,
        until: float | None = None,
        targets: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """ResultStore.latest_traces over the agents' traces (the latest of any agent
        per target, with its ``agent``)."""
        import json

        with self._read() as conn:
            if not conn.execute("SELECT to_regclass('fastping_traces') IS NOT NULL").fetchone()[0]:
                return {}
            rows = conn.execute(
                "SELECT DISTINCT ON (target) target, time, address, hop_count, reached, path,"
                " agent FROM fastping_traces WHERE time <= %s"
                " AND (%s::text[] IS NULL OR target = ANY(%s))"
                " AND (%s::text[] IS NULL OR agent = ANY(%s)) ORDER BY target, time DESC",
                (math.inf if until is None else until,
                 None if targets is None else list(targets),
                 None if targets is None else list(targets),
                 None if agents is None else list(agents),
                 None if agents is None else list(agents)),
            ).fetchall()  # fmt: skip
        return {
            tg: {"target": tg, "time": float(t), "address": a, "hop_count": hc,
                 "reached": bool(r), "path": json.loads(p), "agent": ag}
            for tg, t, a, hc, r, p, ag in rows
        }  # fmt: skip

    def path_changes(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """ResultStore.path_changes over every agent's (or ``agents``') changes."""
        import json

        with self._read() as conn:
            if not conn.execute(
                "SELECT to_regclass('fastping_path_changes') IS NOT NULL"
            ).fetchone()[0]:
                return []
            rows = conn.execute(
                "SELECT target, time, address, old_hops, new_hops, old_path, new_path, agent"
                " FROM fastping_path_changes WHERE time >= %s AND time <= %s"
                " AND (%s::text[] IS NULL OR target = ANY(%s))"
                " AND (%s::text[] IS NULL OR agent = ANY(%s)) ORDER BY time, target",
                (-math.inf if since is None else since, math.inf if until is None else until,
                 None if targets is None else list(targets),
                 None if targets is None else list(targets),
                 None if agents is None else list(agents),
                 None if agents is None else list(agents)),
            ).fetchall()  # fmt: skip
        return [
            {"target": tg, "time": float(t), "address": a, "old_hops": oh, "new_hops": nh,
             "old": json.loads(op), "new": json.loads(np), "agent": ag}
            for tg, t, a, oh, nh, op, np, ag in rows
        ]  # fmt: skip

    def probe_log(
        self,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] | None = None,
    ) -> dict[str, tuple[array[float], array[float], array[int], bytes]]:
        """Loss patterns are read from SQLite stores only so far: none here (the report
        says so by showing no pattern; the outages are shown)."""
        return {}

    def set_labels(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        """Record the configured labels of targets (written with the next batch)."""
        self._pg.set_labels(labels)

    async def close(self, timeout_s: float = 30.0) -> None:
        await super().close(timeout_s)
        self.close_reader()
        with self._tlock:
            if self._tconn is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    self._tconn.close()
                self._tconn = None

    def close_reader(self) -> None:
        if self._rconn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                self._rconn.close()
            self._rconn = None

    # ---- queries ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        if self._rconn is None or self._rconn.closed:
            try:
                self._rconn = connect(
                    self.url, self.connect_timeout_s, self.statement_timeout_s, read=True
                )
                exists = self._rconn.execute(
                    "SELECT to_regclass('fastping_meta') IS NOT NULL"
                ).fetchone()
            except psycopg.OperationalError as e:
                self.close_reader()
                raise ConfigError(f"cannot read {self.db}: {str(e).strip()}") from None
            if not exists or not exists[0]:
                self.close_reader()
                raise ConfigError(
                    f"no fastping tables in {self.db}: run `fastping monitor --db URL` first"
                )
        yield self._rconn

    def keys(
        self,
        targets: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[TargetKey]:
        """Every (agent, target) the database has, filtered, by id."""
        with self._read() as conn:
            return self._keys(conn, targets, agents, labels)

    def _keys(
        self,
        conn: Any,
        targets: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[TargetKey]:
        rows = conn.execute(
            "SELECT id, agent, name, labels FROM fastping_targets"
            " WHERE (%(a)s::text[] IS NULL OR agent = ANY(%(a)s))"
            " AND (%(t)s::text[] IS NULL OR name = ANY(%(t)s))"
            " AND labels @> %(l)s ORDER BY id",
            {
                "a": None if agents is None else list(agents),
                "t": None if targets is None else list(targets),
                "l": Jsonb(dict(labels or {})),
            },
        ).fetchall()
        return [TargetKey(int(i), a, n, dict(lab or {})) for i, a, n, lab in rows]

    def agents(self) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT agent FROM fastping_targets ORDER BY agent"
            )]  # fmt: skip

    def target_kinds(self) -> dict[str, tuple[str, int]]:
        """Every target's probe kind and port (as ResultStore.target_kinds)."""
        with self._read() as conn:
            return {
                str(n): (str(k), int(p))
                for n, k, p in conn.execute(
                    "SELECT DISTINCT name, kind, port FROM fastping_targets"
                )
            }

    def dns_answers(
        self, since: float | None = None, until: float | None = None
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """ResultStore.dns_answers per (target, agent): each agent's view apart."""
        from .dnscodec import rcode_name

        out: dict[tuple[str, str], dict[str, Any]] = {}
        with self._read() as conn:
            rows = conn.execute(
                "SELECT t.name, d.agent, d.rcode, d.tc, sum(d.n) FROM fastping_dns_answers d"
                " JOIN fastping_targets t ON t.id = d.tid"
                " WHERE (%(s)s::float8 IS NULL OR d.minute >= floor(%(s)s / 60) * 60)"
                " AND (%(u)s::float8 IS NULL OR d.minute <= %(u)s)"
                " GROUP BY t.name, d.agent, d.rcode, d.tc ORDER BY t.name, d.rcode",
                {"s": since, "u": until},
            ).fetchall()
        for name, agent, rcode, tc, n in rows:
            d = out.setdefault(
                (str(name), str(agent)), {"answers": 0, "truncated": 0, "rcodes": {}}
            )
            rn = rcode_name(int(rcode))
            d["rcodes"][rn] = d["rcodes"].get(rn, 0) + int(n)
            d["answers"] += int(n)
            if tc:
                d["truncated"] += int(n)
        return out

    def targets(self) -> list[str]:
        """Every target name any agent has, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT name FROM fastping_targets ORDER BY name"
            )]  # fmt: skip

    def _accumulate(
        self,
        conn: Any,
        keys: Sequence[TargetKey],
        since: float | None,
        until: float | None,
        bucket_s: float | None = None,
    ) -> Iterator[tuple[TargetKey, dict[int, _Acc]]]:
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        for g in range(0, len(keys), _GROUP):
            group = keys[g : g + _GROUP]
            ids = [k.tid for k in group]
            chunks: dict[int, list[tuple[str | None, bytes]]] = {}
            for tid, addr, data in conn.execute(
                "SELECT tid, address, data FROM fastping_results WHERE tid = ANY(%s)"
                " AND t1 >= %s AND t0 <= %s ORDER BY tid, t0, rowid",
                (ids, lo, hi),
            ):
                chunks.setdefault(tid, []).append((addr, bytes(data)))
            rolls: dict[int, list[dict[str, Any]]] = {}
            for r in conn.execute(
                f"SELECT {', '.join(_ROLLUP_COLS)} FROM fastping_rollups WHERE tid = ANY(%s)"
                " AND minute > %s AND minute <= %s ORDER BY tid, minute",
                (ids, lo - ROLLUP_S, hi),
            ):
                rolls.setdefault(r[0], []).append(dict(zip(_ROLLUP_COLS, r, strict=True)))
            for k in group:
                c = chunks.get(k.tid)
                rl = rolls.get(k.tid, [])
                if c is None and not rl:
                    continue
                st = _Stream.of(c or [], full=False, where=f"{self.db} {k.agent} {k.name!r}")
                yield k, _fold(k.name, st, rl, lo, hi, bucket_s)

    def all_stats(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        targets: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Stats (``ResultStore.target_stats``' keys plus ``agent`` and ``labels``) of
        every (agent, target) with results in the window, by target, then agent."""
        out = []
        with self._read() as conn:
            for k, accs in self._accumulate(
                conn, self._keys(conn, targets, agents, labels), since, until
            ):
                a = accs.get(0)
                if a is not None and not a.empty():
                    d = a.result(k.name)
                    d["agent"], d["labels"] = k.agent, k.labels
                    out.append(d)
        out.sort(key=lambda s: (s["target"], s["agent"]))
        return out

    def target_stats(
        self,
        target: str,
        since: float | None = None,
        until: float | None = None,
        agent: str | None = None,
    ) -> dict[str, Any] | None:
        """One agent's stats of ``target`` (the first agent by name when none is
        given); see ``all_stats`` for all of them."""
        got = self.all_stats(since, until, targets=[target],
                             agents=None if agent is None else [agent])  # fmt: skip
        return got[0] if got else None

    def series(
        self,
        target: str,
        since: float | None,
        until: float | None,
        bucket_s: float,
        agent: str | None = None,
    ) -> list[dict[str, Any]]:
        """``ResultStore.series`` of one agent's view of ``target``."""
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
        with self._read() as conn:
            keys = self._keys(conn, [target], None if agent is None else [agent])
            keys = sorted(keys, key=lambda k: k.agent)[:1]
            accs: dict[int, _Acc] = {}
            for _, by_bucket in self._accumulate(conn, keys, since, until, bucket_s):
                accs = by_bucket
        out = []
        for b in sorted(accs):
            d = accs[b].result(target)
            d.update(accs[b].spread())
            d["time"] = b * bucket_s
            out.append(d)
        return out

    def recent(self, target: str, limit: int = 100, agent: str | None = None) -> list[ProbeResult]:
        """``ResultStore.recent`` of one agent's view of ``target``."""
        limit = int(limit)
        with self._read() as conn:
            keys = sorted(
                self._keys(conn, [target], None if agent is None else [agent]),
                key=lambda k: k.agent,
            )
            if not keys or limit <= 0:
                return []
            return _recent_records(
                conn, target, keys[0].tid, limit, self.db,
                "SELECT t0, t1, rowid, address, data FROM fastping_results WHERE tid = %s"
                " ORDER BY t1 DESC, rowid DESC",
                "SELECT t, seq, outcome, icmp_type, icmp_code, router, errno"
                " FROM fastping_results_extra WHERE tid = %s AND t >= %s AND t <= %s",
            )  # fmt: skip

    def count_results(
        self,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        agent: str | None = None,
    ) -> int:
        """Records stored in [since, until] (``ResultStore.count_results``), of one
        target and / or one agent (None: all)."""
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        with self._read() as conn:
            ids = None
            if target is not None or agent is not None:
                ids = [k.tid for k in self._keys(
                    conn, None if target is None else [target],
                    None if agent is None else [agent],
                )]  # fmt: skip
            where, args = ("tid = ANY(%s) AND ", (ids,)) if ids is not None else ("", ())
            whole = conn.execute(
                f"SELECT sum(n) FROM fastping_results WHERE {where}t0 >= %s AND t1 <= %s",
                (*args, lo, hi),
            ).fetchone()[0]
            total = int(whole or 0)
            for (data,) in conn.execute(
                f"SELECT data FROM fastping_results WHERE {where}t1 >= %s AND t0 <= %s"
                " AND (t0 < %s OR t1 > %s)",
                (*args, lo, hi, lo, hi),
            ):
                n = len(data) // RECORD_SIZE
                t = array("d")
                t.frombytes(bytes(data[: 8 * n]))
                total += bisect_right(t, hi) - bisect_left(t, lo)
            rolled = conn.execute(
                f"SELECT sum({_ROLLUP_TOTAL}) FROM fastping_rollups WHERE {where}"
                "minute > %s AND minute <= %s",
                (*args, lo - ROLLUP_S, hi),
            ).fetchone()[0]
            return total + int(rolled or 0)

    def time_range(self) -> tuple[float, float] | None:
        with self._read() as conn:
            r = conn.execute("SELECT min(t0), max(t1) FROM fastping_results").fetchone()
            m = conn.execute("SELECT min(minute), max(minute) FROM fastping_rollups").fetchone()
        lows = [v for v in (r[0], m[0]) if v is not None]
        highs = [v for v in (r[1], None if m[1] is None else m[1] + ROLLUP_S) if v is not None]
        if not lows:
            return None
        return float(min(lows)), float(max(highs))

    def partitions(self) -> list[int]:
        """Starts (Unix seconds) of the raw-results partitions, oldest first."""
        with self._read() as conn:
            return partitions(conn)


__all__ = [
    "DEFAULT_PARTITION_S",
    "PgResultStore",
    "TargetKey",
    "is_postgres_url",
    "redact",
]
