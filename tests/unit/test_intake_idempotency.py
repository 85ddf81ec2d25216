"""The intake's stored answers: group commit, checkpoints, and what the store keeps."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from orchestrator.intake.idempotency import AcceptedAnswer, GroupCommit, IdempotencyStore
from tests.unit.conftest import emulator_client
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


STALE_AFTER_S = 15.0


@pytest.fixture(params=["sqlite", "dynamodb"])
def open_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], object]]:
    """Opens a store on one shared set of data, as each intake replica does."""
    opened = []
    if request.param == "sqlite":
        def make():
            return IdempotencyStore(tmp_path / "intake.sqlite")
    else:
        from orchestrator.intake.idempotency_dynamodb import DynamoDBIdempotencyStore

        endpoint = request.getfixturevalue("dynamodb_emulator")
        prefix = f"t{uuid.uuid4().hex[:12]}-"

        def make():
            return DynamoDBIdempotencyStore(emulator_client(endpoint), prefix, endpoint_url=endpoint)

    def tracked():
        store = make()
        opened.append(store)
        return store

    yield tracked
    for store in opened:
        store.close()


def answer(event, key: str | None, digest: str = "d" * 64, *, client: str = "client-a",
           token: str | None = None) -> AcceptedAnswer:
    payment = event.payment
    response = {"payment_id": payment.payment_id, "status": "RECEIVED"}
    return AcceptedAnswer(payment.tenant_id, key, digest, 202, response,
                          [(payment, "2026-11-27T10:00:00+00:00", event.event_id)], client_id=client,
                          claim_token=token)


def claim(store: IdempotencyStore, key: str, digest: str = "d" * 64, *, client: str = "client-a",
          now_s: float = 1_000.0, earlier: str | None = None):
    digests = (digest, earlier) if earlier else (digest,)
    return store.claim("emea", client, key, digests, now_s=now_s, stale_after_s=STALE_AFTER_S)


def test_a_remembered_answer_is_committed_before_remember_returns(tmp_path):
    keyed, unkeyed = received("emea"), received("na")

    async def run():
        store = IdempotencyStore(tmp_path / "intake.sqlite")
        token = claim(store, "key-1").claim_token
        await asyncio.gather(store.remember(answer(keyed, "key-1", token=token)), store.remember(answer(unkeyed, None)))
        # Another connection, as after a crash: the rows are committed, not just queued.
        other = sqlite3.connect(tmp_path / "intake.sqlite")
        rows = other.execute("SELECT tenant_id, client_id, idempotency_key, status_code FROM idempotency_keys"
                             ).fetchall()
        accepted = {r[0] for r in other.execute("SELECT payment_id FROM accepted_payments")}
        other.close()
        found = claim(store, "key-1")
        store.close()
        return rows, accepted, found

    rows, accepted, found = asyncio.run(run())
    assert rows == [("emea", "client-a", "key-1", 202)]
    assert accepted == {keyed.payment_id, unkeyed.payment_id}
    assert found.kind == "answered" and found.status_code == 202
    assert found.response == {"payment_id": keyed.payment_id, "status": "RECEIVED"}


def test_the_first_answer_under_a_key_is_the_one_kept(open_store):
    first, second = received("emea"), received("emea")

    async def run():
        store = open_store()
        token = claim(store, "key-1").claim_token
        await store.remember(answer(first, "key-1", token=token))
        # A request that had taken over the claim answers second: the first answer stays.
        await store.remember(answer(second, "key-1", token="taken-over"))
        found = claim(store, "key-1")
        accepted = store.accepted(first.payment_id)
        return found, accepted

    found, accepted = asyncio.run(run())
    assert found.response["payment_id"] == first.payment_id
    assert accepted["event_id"] == first.event_id and accepted["end_to_end_id"] == first.payment.end_to_end_id


def test_a_key_is_claimed_once_and_a_live_claim_is_in_progress_for_the_same_body(open_store):
    store = open_store()
    first = claim(store, "key-1", now_s=1_000.0)
    again = claim(store, "key-1", now_s=1_003.2)
    assert first.kind == "claimed" and first.claim_token
    # Until the claim could be a crashed holder's: 15 s from the claim, 11.8 s left, rounded up.
    assert (again.kind, again.retry_after_s, again.claim_token) == ("in-progress", 12, None)


def test_another_body_under_a_claimed_or_answered_key_is_reused(open_store):
    async def run():
        store = open_store()
        claim(store, "claimed", "1" * 64)
        token = claim(store, "answered", "1" * 64).claim_token
        await store.remember(answer(received("emea"), "answered", "1" * 64, token=token))
        outcomes = [claim(store, "claimed", "2" * 64).kind, claim(store, "answered", "2" * 64).kind,
                    # How an earlier release identified the same body counts as the same body.
                    claim(store, "answered", "2" * 64, earlier="1" * 64).kind]
        return outcomes

    assert asyncio.run(run()) == ["reused", "reused", "answered"]


def test_a_stale_claim_is_taken_over_by_the_same_body_only(open_store):
    store = open_store()
    first = claim(store, "key-1", now_s=1_000.0)
    other_body = claim(store, "key-1", "e" * 64, now_s=1_000.0 + STALE_AFTER_S)
    taken = claim(store, "key-1", now_s=1_000.0 + STALE_AFTER_S)
    after = claim(store, "key-1", now_s=1_001.0 + STALE_AFTER_S)
    assert other_body.kind == "reused"
    assert taken.kind == "claimed" and taken.claim_token != first.claim_token
    assert after.kind == "in-progress"


def test_an_abandoned_claim_is_taken_over_at_once_but_keeps_its_body(open_store):
    store = open_store()
    first = claim(store, "key-1", now_s=1_000.0)
    store.abandon("emea", "client-a", "key-1", "not-the-holder")  # only the holder can abandon
    still = claim(store, "key-1", now_s=1_001.0)
    store.abandon("emea", "client-a", "key-1", first.claim_token)
    other_body = claim(store, "key-1", "e" * 64, now_s=1_001.0)
    same_body = claim(store, "key-1", now_s=1_001.0)
    assert still.kind == "in-progress"
    assert other_body.kind == "reused"
    assert same_body.kind == "claimed"


def test_keys_are_a_clients_own(open_store):
    store = open_store()
    mine = claim(store, "key-1", client="client-a")
    theirs = claim(store, "key-1", "e" * 64, client="client-b")
    assert (mine.kind, theirs.kind) == ("claimed", "claimed")


def test_two_processes_sharing_the_store_agree_on_who_holds_a_key(open_store):
    """Two intake replicas are two connections to one store: the first claim wins."""
    one, two = open_store(), open_store()
    first = claim(one, "key-1", "1" * 64)
    second_same, second_other = claim(two, "key-1", "1" * 64), claim(two, "key-1", "2" * 64)
    assert first.kind == "claimed"
    assert (second_same.kind, second_other.kind) == ("in-progress", "reused")


def test_replicas_racing_for_one_key_leave_exactly_one_holder(open_store):
    from concurrent.futures import ThreadPoolExecutor

    replicas = [open_store() for _ in range(6)]
    start = threading.Barrier(len(replicas))

    def race(store):
        start.wait()
        return claim(store, "key-race", now_s=1_000.0).kind

    with ThreadPoolExecutor(len(replicas)) as pool:
        kinds = list(pool.map(race, replicas))
    assert sorted(kinds) == ["claimed"] + ["in-progress"] * (len(replicas) - 1)


def test_answers_stored_before_claims_existed_are_still_replayed(tmp_path):
    path = tmp_path / "intake.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE idempotency (tenant_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, body_sha256 TEXT NOT NULL,
          status_code INTEGER NOT NULL, response BLOB NOT NULL, created_at TEXT NOT NULL,
          PRIMARY KEY (tenant_id, idempotency_key));
        INSERT INTO idempotency VALUES ('emea', 'old-key', '1111', 202, '{"payment_id": "p-old"}', '2026-11-01');
    """)
    old.commit()
    old.close()
    store = IdempotencyStore(path)
    try:
        replayed = claim(store, "old-key", "1111")
        other = claim(store, "old-key", "2222")
        fresh = claim(store, "new-key", "1111")
    finally:
        store.close()
    assert (replayed.kind, replayed.response) == ("answered", {"payment_id": "p-old"})
    assert (other.kind, fresh.kind) == ("reused", "claimed")


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
