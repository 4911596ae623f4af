-- A schema 2 database as fastping 872a900 (main before TCP targets) wrote it: ResultStore
-- with retention_s=3600, replies and a timeout folded into rollups, then raw replies and an
-- unreachable (results_extra). `sqlite3 FILE < this` remakes it; tests/test_tcp_engine.py.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES('schema_version','2');
CREATE TABLE targets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
INSERT INTO targets VALUES(1,'127.0.0.1');
INSERT INTO targets VALUES(2,'127.0.0.2');
CREATE TABLE results (
    tid INTEGER NOT NULL,       -- targets.id
    t0 REAL NOT NULL,           -- first record's time (Unix seconds)
    t1 REAL NOT NULL,           -- last record's time
    n INTEGER NOT NULL,         -- records in data
    address TEXT,               -- NULL: equal to the target name; '': none (unresolved)
    data BLOB NOT NULL          -- a chunk (fastping.chunk), records in time order
);
INSERT INTO results VALUES(1,1700007200.0,1700007202.0,3,NULL,X'000000480355d941000040480355d941000080480355d9410000004000000040000000400a0000000b0000000c000000000000404040');
INSERT INTO results VALUES(2,1700007200.0,1700007200.0,1,NULL,X'000000480355d9410000c07f010000000200');
CREATE TABLE results_extra (
    tid INTEGER NOT NULL,
    t REAL NOT NULL,
    seq INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    icmp_type INTEGER,
    icmp_code INTEGER,
    router TEXT,
    errno INTEGER
);
INSERT INTO results_extra VALUES(2,1700007200.0,1,2,3,1,'127.0.0.9',NULL);
CREATE TABLE rollups (
    tid INTEGER NOT NULL,
    minute INTEGER NOT NULL,    -- Unix seconds of the minute's start
    address TEXT,
    sent INTEGER NOT NULL,
    received INTEGER NOT NULL, timeouts INTEGER NOT NULL, unreachable INTEGER NOT NULL, time_exceeded INTEGER NOT NULL, send_errors INTEGER NOT NULL, local_down INTEGER NOT NULL, resolve_errors INTEGER NOT NULL, duplicates INTEGER NOT NULL, late INTEGER NOT NULL,
    min_ms REAL, max_ms REAL, sum_ms REAL NOT NULL, sumsq_ms REAL NOT NULL,
    p50_ms REAL, p95_ms REAL, p99_ms REAL,
    jitter_sum_ms REAL NOT NULL, jitter_n INTEGER NOT NULL,
    first_rtt_ms REAL, last_rtt_ms REAL,
    PRIMARY KEY (tid, minute)
) WITHOUT ROWID;
INSERT INTO rollups VALUES(1,1699999980,NULL,5,5,0,0,0,0,0,0,0,0,1.0,5.0,15.0,55.0,3.0,4.7999999999999998223,4.9599999999999999644,4.0,4,1.0,5.0);
INSERT INTO rollups VALUES(2,1699999980,NULL,1,0,1,0,0,0,0,0,0,0,NULL,NULL,0.0,0.0,NULL,NULL,NULL,0.0,0,NULL,NULL);
CREATE INDEX results_tid_t1 ON results (tid, t1);
CREATE INDEX results_extra_tid_t ON results_extra (tid, t);
COMMIT;
