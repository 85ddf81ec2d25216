"""The intake's stored answers: group commit, checkpoints, and what the store keeps."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time

from orchestrator.intake.idempotency import AcceptedAnswer, GroupCommit, IdempotencyStore
from tests.unit.stage_fixtures import received


class RecordingWriter:
    """A write_batch that records its batches, and fails them while told to."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.fail_with: Exception | None = None

    def __call__(self, batch: list) -> None:
        self.batches.append(batch)
        if self.fail_with is not None:
            raise self.fail_with


def test_the_callers_of_one_turn_of_the_loop_are_written_together():
    async def run():
        writer = RecordingWriter()
        commits = GroupCommit(writer)
        await asyncio.gather(*(commits.write(name) for name in ("a", "b", "c")))
        await commits.write("d")
        return writer.batches

    assert asyncio.run(run()) == [["a", "b", "c"], ["d"]]


def test_a_caller_returns_only_once_its_batch_is_written():
    async def run():
        writer = RecordingWriter()
        commits = GroupCommit(writer)
        writing = asyncio.ensure_future(commits.write("a"))
        while not writer.batches:
            assert not writing.done()
            await asyncio.sleep(0)
        await writing
        return writer.batches

    assert asyncio.run(run()) == [["a"]]


def test_a_failed_write_fails_every_caller_of_its_batch_and_the_next_batch_goes_on():
    async def run():
        writer = RecordingWriter()
        commits = GroupCommit(writer)
        writer.fail_with = sqlite3.OperationalError("disk I/O error")
        results = await asyncio.gather(commits.write("a"), commits.write("b"), return_exceptions=True)
        writer.fail_with = None
        await commits.write("c")
        return results, writer.batches

    results, batches = asyncio.run(run())
    assert [type(r) for r in results] == [sqlite3.OperationalError, sqlite3.OperationalError]
    assert batches == [["a", "b"], ["c"]]


def test_a_caller_that_stops_waiting_does_not_disturb_its_batch():
    async def run():
        writer = RecordingWriter()
        commits = GroupCommit(writer)
        leaving = asyncio.ensure_future(commits.write("leaving"))
        staying = asyncio.ensure_future(commits.write("staying"))
        await asyncio.sleep(0)
        leaving.cancel()
        await staying
        return writer.batches, leaving.cancelled()

    assert asyncio.run(run()) == ([["leaving", "staying"]], True)


def answer(event, key: str | None, digest: str = "d" * 64) -> AcceptedAnswer:
    payment = event.payment
    response = {"payment_id": payment.payment_id, "status": "RECEIVED"}
    return AcceptedAnswer(payment.tenant_id, key, digest, 202, response,
                          [(payment, "2026-11-27T10:00:00+00:00", event.event_id)])


def test_a_remembered_answer_is_committed_before_remember_returns(tmp_path):
    keyed, unkeyed = received("emea"), received("na")

    async def run():
        store = IdempotencyStore(tmp_path / "intake.sqlite")
        await asyncio.gather(store.remember(answer(keyed, "key-1")), store.remember(answer(unkeyed, None)))
        # Another connection, as after a crash: the rows are committed, not just queued.
        other = sqlite3.connect(tmp_path / "intake.sqlite")
        rows = other.execute("SELECT tenant_id, idempotency_key, status_code FROM idempotency").fetchall()
        accepted = {r[0] for r in other.execute("SELECT payment_id FROM accepted_payments")}
        other.close()
        found = store.lookup("emea", "key-1")
        store.close()
        return rows, accepted, found

    rows, accepted, found = asyncio.run(run())
    assert rows == [("emea", "key-1", 202)]
    assert accepted == {keyed.payment_id, unkeyed.payment_id}
    assert found["body_sha256"] == "d" * 64 and found["status_code"] == 202


def test_the_first_answer_under_a_key_is_the_one_kept(tmp_path):
    first, second = received("emea"), received("emea")

    async def run():
        store = IdempotencyStore(tmp_path / "intake.sqlite")
        await store.remember(answer(first, "key-1", digest="1" * 64))
        await store.remember(answer(second, "key-1", digest="2" * 64))
        row = store.lookup("emea", "key-1")
        accepted = store.accepted(first.payment_id)
        store.close()
        return row, accepted

    row, accepted = asyncio.run(run())
    assert row["body_sha256"] == "1" * 64
    assert accepted["event_id"] == first.event_id and accepted["end_to_end_id"] == first.payment.end_to_end_id


def test_commits_leave_checkpoints_to_the_checkpoint_thread(tmp_path):
    path = tmp_path / "intake.sqlite"

    def rows_in_database_file() -> int:
        # A copy of the database file without its WAL holds only what was checkpointed.
        copy = tmp_path / "copy.sqlite"
        shutil.copyfile(path, copy)
        db = sqlite3.connect(copy)
        try:
            return db.execute("SELECT count(*) FROM accepted_payments").fetchone()[0]
        except sqlite3.OperationalError:  # not even the table has been checkpointed yet
            return 0
        finally:
            db.close()

    async def run():
        store = IdempotencyStore(path, checkpoint_interval_s=0.05)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        await store.remember(answer(received("emea"), None))
        deadline = time.monotonic() + 5
        while rows_in_database_file() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        checkpointed = rows_in_database_file()
        store.close()
        return checkpointed

    assert asyncio.run(run()) == 1
