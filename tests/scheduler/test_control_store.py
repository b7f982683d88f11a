"""The control plane's part of the store: a schema-1 store is read as it is, then migrated
by the first process that writes it; the queue of a machine with no store is empty."""

from __future__ import annotations

import json
import os

import duckdb

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.store import get_store, queries, schema
from notebook_exp.store._host import HOST, pid_started

NEW_COLUMNS = ("owner_host", "owner_pid", "owner_started", "owner_program", "queue_seq", "queued_at")


def schema_1_store(path) -> None:
    """A store as schema 1 wrote it (no owner columns, no requests), with two queued runs of this process."""
    con = duckdb.connect(str(path))
    con.execute(schema.TABLES)
    for column in NEW_COLUMNS:
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    con.execute("DROP TABLE requests")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    for run_id, priority, after in (("old-a", 3, []), ("old-b", 8, ["old-a"])):
        spec = json.dumps({"after": after, "gpus": 0, "retries": 1, "priority": priority})
        con.execute("INSERT INTO runs (run_id, experiment, name, status, created_at, host, pid, pid_started, executor, "
                    "priority, attempts, spec) VALUES (?, 'old', ?, 'queued', now()::TIMESTAMP, ?, ?, ?, 'thread', ?, "
                    "0, ?)", [run_id, run_id, HOST, os.getpid(), pid_started(), priority, spec])
    con.close()


def test_a_schema_1_store_is_read_then_migrated_by_its_first_writer(store_path, read_only):
    schema_1_store(store_path)
    machine = nx.queue()  # read-only: the store stays as it is
    assert [(e.run_id, e.position, e.after, e.retries) for e in machine.queued] == [
        ("old-b", 0, ("old-a",), 1), ("old-a", 1, (), 1)]
    owner = machine.queued[0].owner
    assert (owner.host, owner.pid, owner.program, owner.alive) == (HOST, os.getpid(), None, True)
    found = queries.read(lambda conn: queries.find_runs(conn, "old-"))
    assert [t.run_id for t in found] == ["old-a", "old-b"] and found[0].status == RunStatus.QUEUED
    assert read_only(store_path, "SELECT value FROM meta") == [("1",)]
    get_store(store_path).ensure()  # the first write session of a new version
    columns = {name for (name,) in read_only(store_path, "SELECT column_name FROM duckdb_columns() "
                                                         "WHERE table_name = 'runs'")}
    assert set(NEW_COLUMNS) <= columns
    assert read_only(store_path, "SELECT count(*) FROM requests") == [(0,)]
    assert read_only(store_path, "SELECT value FROM meta") == [(schema.SCHEMA_VERSION,)]
    assert [(e.run_id, e.position, e.pending) for e in nx.queue().queued] == [("old-b", 0, ()), ("old-a", 1, ())]


def test_a_newer_version_is_never_lowered(store_path, read_only):
    get_store(store_path).ensure()
    con = duckdb.connect(str(store_path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    store = get_store(store_path)
    store.close()
    store.ensure()
    assert read_only(store_path, "SELECT value FROM meta") == [("99",)]


def test_the_queue_of_a_machine_without_a_store_is_empty(store_path, fake_gpus):
    fake_gpus(2, reserved=[1])
    machine = nx.queue()
    assert machine.runs == () and not store_path.exists()
    assert [(g.index, g.reserved, g.holders) for g in machine.gpus] == [(0, False, ()), (1, True, ())]
    assert machine.to_dict()["gpus"][1]["reserved"] is True
