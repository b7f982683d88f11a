"""The store's tables. Names in docs/architecture.md §8 are a contract; others may grow.

Timestamps are UTC. ``metrics`` rows are inserted sorted by run, key, step in
each flush so one run's points sit together on disk; ``metric_summary`` keeps
per run and key the count, first/last step, last value and finite min/max so
listing runs never scans ``metrics``. ``runs.info`` holds what the run's
collectors recorded once, by field (``environment``, ``notebook``, ...); git
state and source code have columns of their own (``runs.git``, ``runs.source``).

The control plane (docs/architecture.md, "Control requests"): ``runs.owner_*``
name the scheduler that queued a run (its host, pid, the pid's start time and
the notebook or script it runs), which stays the run's owner while a process
run's ``runs.pid`` is its child; ``runs.queue_seq`` is its place in that
scheduler's submission order and ``runs.queued_at`` when it last entered the
queue. ``requests`` holds what any process asked of a run's owner (``cancel``,
``priority``) and, once the owner acted, its answer.

Versions: ``meta.schema_version`` says which ``SCHEMA_VERSION`` last prepared
the file. ``TABLES`` creates what is missing (a new table reaches an old store
this way) and ``MIGRATIONS`` adds the columns an older store lacks; both are
idempotent and run in the first write session of every process.
"""

from __future__ import annotations

#: Block size (bytes) of the files this package creates: new stores (``Store``, through DuckDB's
#: ``default_block_size``, which applies to files that do not exist yet) and compacted ones.
#: DuckDB 2.0 gives the catalog, each table's rows and each primary-key index blocks of their
#: own: with its default 256 KiB a store pays about 2 MB before its first point, with 64 KiB
#: about 0.5 MB; under 64 KiB it stops bit-packing integers. A store keeps the block size it
#: was created with (older stores: 256 KiB) until compaction rewrites it.
BLOCK_SIZE = 65_536

SCHEMA_VERSION = "2"  # 2: runs.owner_*, queue_seq, queued_at; requests

TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    experiment VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    params JSON,
    tags VARCHAR[],
    created_at TIMESTAMP,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    error VARCHAR,
    host VARCHAR,
    pid INTEGER,
    pid_started DOUBLE,
    executor VARCHAR,
    priority INTEGER,
    attempts INTEGER DEFAULT 0,
    gpus INTEGER[],
    source VARCHAR,
    output VARCHAR,
    dropped BIGINT DEFAULT 0,
    spilled BIGINT DEFAULT 0,
    spec JSON,
    git JSON,
    info JSON,
    owner_host VARCHAR,
    owner_pid INTEGER,
    owner_started DOUBLE,
    owner_program VARCHAR,
    queue_seq BIGINT,
    queued_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    step BIGINT NOT NULL,
    ts TIMESTAMP NOT NULL,
    value DOUBLE
);
CREATE TABLE IF NOT EXISTS metric_summary (
    run_id VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    count BIGINT,
    first_step BIGINT,
    last_step BIGINT,
    last_value DOUBLE,
    min_value DOUBLE,
    max_value DOUBLE,
    last_ts TIMESTAMP,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS events (
    run_id VARCHAR,
    ts TIMESTAMP NOT NULL,
    event VARCHAR NOT NULL,
    detail VARCHAR,
    host VARCHAR,
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS texts (
    run_id VARCHAR NOT NULL, key VARCHAR NOT NULL, step BIGINT, ts TIMESTAMP, text VARCHAR
);
CREATE TABLE IF NOT EXISTS histograms (
    run_id VARCHAR NOT NULL, key VARCHAR NOT NULL, step BIGINT, ts TIMESTAMP,
    bin_edges DOUBLE[], counts BIGINT[]
);
CREATE TABLE IF NOT EXISTS images (
    run_id VARCHAR NOT NULL, key VARCHAR NOT NULL, step BIGINT, ts TIMESTAMP,
    width INTEGER, height INTEGER, png BLOB
);
CREATE TABLE IF NOT EXISTS payloads (
    run_id VARCHAR PRIMARY KEY, payload BLOB
);
CREATE TABLE IF NOT EXISTS spills (
    name VARCHAR PRIMARY KEY, ingested_at TIMESTAMP, points BIGINT, writes BIGINT,
    pid INTEGER, host VARCHAR, reason VARCHAR
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, path VARCHAR, size BIGINT,
    sha256 VARCHAR, ts TIMESTAMP
);
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    value INTEGER,
    requested_by VARCHAR NOT NULL,
    requested_at TIMESTAMP NOT NULL,
    host VARCHAR,
    pid INTEGER,
    handled_at TIMESTAMP,
    outcome VARCHAR,
    detail VARCHAR
);
"""

# Columns added since the first stores were written, then the version that prepared the file (never
# lowered by an older one, which only inserts it). Each statement is idempotent.
MIGRATIONS = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS git JSON;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS spilled BIGINT DEFAULT 0;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS info JSON;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner_host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner_pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner_started DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner_program VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS queue_seq BIGINT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS queued_at TIMESTAMP;
""" + f"""INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}')
    ON CONFLICT (key) DO UPDATE SET
    value = CAST(greatest(TRY_CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS VARCHAR);
"""

# __batch arrives grouped by run and key, steps ascending (store.batches sorts).
INSERT_METRICS = """
INSERT INTO metrics SELECT run_id, key, step, ts, value FROM __batch
"""

# __summary: one row per run and key of each batch in the transaction (store.batches summarises);
# this only merges those rows with each other and with the stored one.
UPSERT_SUMMARY = """
INSERT INTO metric_summary
SELECT run_id, key, sum(count), min(first_step), max(last_step), arg_max(last_value, last_step),
       min(min_value), max(max_value), max(last_ts)
FROM __summary GROUP BY run_id, key
ON CONFLICT (run_id, key) DO UPDATE SET
    count = count + excluded.count,
    first_step = least(first_step, excluded.first_step),
    last_step = greatest(last_step, excluded.last_step),
    last_value = CASE WHEN excluded.last_step >= last_step
                      THEN excluded.last_value ELSE last_value END,
    min_value = least(min_value, excluded.min_value),
    max_value = greatest(max_value, excluded.max_value),
    last_ts = greatest(last_ts, excluded.last_ts)
"""
