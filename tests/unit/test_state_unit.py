"""Group commit of stage state (storage.StateUnit): the writes of a checkpoint become
durable together when the checkpoint commits, a failed batch still rolls back alone, and
a unit never waits for a store while holding another (the replica deadlock)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from orchestrator.stages.initiation import InitiationStage
from orchestrator.storage import StateUnit, open_sqlite, transaction
from tests.unit.runtime_fixtures import RecordingCheckpoint, StandInMessage, runner
from tests.unit.stage_fixtures import TENANTS, received


def store(path):
    conn = open_sqlite(path)
    conn.execute("CREATE TABLE IF NOT EXISTS rows (k TEXT PRIMARY KEY)")
    return conn


def keys(path) -> list[str]:
    reader = open_sqlite(path, read_only=True)
    try:
        return [row["k"] for row in reader.execute("SELECT k FROM rows ORDER BY k")]
    finally:
        reader.close()


def insert(conn, key: str) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO rows VALUES (?)", (key,))


def test_outside_a_unit_each_transaction_commits_at_once(tmp_path):
    insert(store(tmp_path / "a.sqlite"), "one")
    assert keys(tmp_path / "a.sqlite") == ["one"]


def test_a_units_writes_on_every_store_appear_only_when_it_commits(tmp_path):
    a, b = store(tmp_path / "a.sqlite"), store(tmp_path / "b.sqlite")
    unit = StateUnit()
    with unit.active():
        insert(a, "first batch")
        insert(b, "first batch")
        insert(a, "second batch")
    assert unit.pending
    assert keys(tmp_path / "a.sqlite") == [] and keys(tmp_path / "b.sqlite") == []
    unit.commit()
    assert not unit.pending
    assert keys(tmp_path / "a.sqlite") == ["first batch", "second batch"]
    assert keys(tmp_path / "b.sqlite") == ["first batch"]


def test_a_failed_batch_in_a_unit_rolls_back_alone(tmp_path):
    a = store(tmp_path / "a.sqlite")
    unit = StateUnit()
    with unit.active():
        insert(a, "kept")
        with pytest.raises(RuntimeError), transaction(a):
            a.execute("INSERT INTO rows VALUES ('undone')")
            raise RuntimeError("the stage failed on this batch")
        insert(a, "after")
    unit.commit()
    assert keys(tmp_path / "a.sqlite") == ["after", "kept"]


def test_a_unit_commits_what_it_holds_before_waiting_for_a_store_another_writer_holds(tmp_path):
    a, b = store(tmp_path / "a.sqlite"), store(tmp_path / "b.sqlite")
    replica = sqlite3.connect(tmp_path / "b.sqlite", isolation_level=None)
    replica.execute("BEGIN IMMEDIATE")  # a replica mid-batch on b, which may next want a
    unit = StateUnit()
    failures: list[BaseException] = []

    def batch() -> None:
        try:
            with unit.active():
                insert(a, "ours")
                insert(b, "ours")
            unit.commit()
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    worker = threading.Thread(target=batch)
    worker.start()
    deadline = time.monotonic() + 5
    while keys(tmp_path / "a.sqlite") != ["ours"]:
        assert time.monotonic() < deadline, "the unit kept a's lock while it waited for b"
        time.sleep(0.01)
    # a's lock is free again, so the replica could take it now without a deadlock.
    free = sqlite3.connect(tmp_path / "a.sqlite", isolation_level=None, timeout=1)
    free.execute("BEGIN IMMEDIATE")
    free.execute("ROLLBACK")
    replica.execute("COMMIT")
    worker.join(10)
    assert not worker.is_alive() and failures == []
    assert keys(tmp_path / "b.sqlite") == ["ours"]


def test_a_stage_state_written_in_a_checkpoint_is_durable_only_once_the_checkpoint_commits(tmp_path):
    initiation = InitiationStage(TENANTS, "test", tmp_path)
    checkpoint = RecordingCheckpoint()
    runner(initiation).process_batch([StandInMessage(received(), topic="emea.payments.received.v1")], checkpoint)
    assert [r[0] for r in checkpoint.records] == ["emea.payments.initiated.v1"]

    def claimed() -> int:
        reader = open_sqlite(tmp_path / "initiation.sqlite", read_only=True)
        try:
            return reader.execute("SELECT count(*) FROM seen_instructions").fetchone()[0]
        finally:
            reader.close()

    assert claimed() == 0, "state became durable before its checkpoint"
    checkpoint.commit()
    assert claimed() == 1
