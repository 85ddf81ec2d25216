"""The intake's stored answers: one row per Idempotency-Key, one row per accepted payment.

Rows are written by group commit: the requests that get their broker acknowledgement
in the same turn of the event loop have their rows committed together, in one
transaction, at the end of that turn, and each gets its answer only once that commit
is done. Durability is as before (WAL, synchronous=NORMAL: a commit is in the OS's
hands when it returns, so a process crash loses nothing committed), and the commit
itself never waits for the disk: in this mode only checkpoints fsync, and they run on
a thread of their own.

Why commit on the loop and not on a writer thread: committing a turn's few rows costs
less CPU than the hand-offs a writer thread needs per batch (wake the writer, wake the
loop when it is done, and the GIL passed back and forth in between). At 1,000
payments/s, the intake's threads woke about 4 times per payment with a writer thread
and 1.7 times without.

Keys are scoped to the caller's client (`Credential.client_id`: an API key's client stays
the same when the key is rotated; a JWT's is its `azp`/`client_id` claim), so another
credential of the same tenant can neither replay nor squat a client's keys.

The store, not a lock in one process, decides who processes a key (`claim`), so intake
replicas that share it agree. A request first claims its key in a row of its own
(committed before anything is published); a second request with the key then finds:
the answer (replayed), another body (422 `idempotency-key-reused`), or a claim still in
progress (409 `request-in-progress`). A claim whose holder crashed goes stale after
`stale_after_s` and the next request with the same body takes it over: its payment id is
derived from the key, so publishing it again is recognised by every stage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

import orjson

from orchestrator.domain import Payment
from orchestrator.storage import open_sqlite

log = logging.getLogger("payorch.intake.idempotency")

# `idempotency` (per tenant, answers only) is the table of releases before keys were
# scoped to a client and claimed; it is only read, so that a retry of a request answered
# before an upgrade still gets its answer.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
  tenant_id TEXT NOT NULL, client_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
  body_sha256 TEXT NOT NULL, claim_token TEXT NOT NULL, claimed_at REAL NOT NULL,
  status_code INTEGER, response BLOB, answered_at TEXT,
  PRIMARY KEY (tenant_id, client_id, idempotency_key));
CREATE TABLE IF NOT EXISTS accepted_payments (
  payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, end_to_end_id TEXT NOT NULL,
  received_at TEXT NOT NULL, event_id TEXT NOT NULL);
"""
# How often the checkpoint thread moves committed pages from the WAL into the database.
# Between checkpoints the WAL holds what was committed since, so this bounds its size.
CHECKPOINT_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class AcceptedAnswer:
    """What one accepted request leaves behind: its answer (under its key, if it had one)
    and the payments it accepted, each with when it was received and its event id."""

    tenant_id: str
    key: str | None
    body_sha256: str
    status_code: int
    response: dict
    accepted: list[tuple[Payment, str, str]]
    client_id: str = ""
    # The claim the answer completes (see IdempotencyStore.claim); None without a key.
    claim_token: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """What `claim` found. `kind` is one of:
    - "claimed": the key is this request's to process; `claim_token` completes or abandons it;
    - "answered": an earlier request with the same body was answered: `status_code`, `response`;
    - "reused": the key was claimed or answered for another body;
    - "in-progress": a request with the same body holds a live claim: send again in
      `retry_after_s`.
    """

    kind: str
    claim_token: str | None = None
    status_code: int | None = None
    response: dict | None = None
    retry_after_s: int | None = None


T = TypeVar("T")


class GroupCommit(Generic[T]):
    """The items of every caller that reaches `write` in the same turn of the event loop,
    written by one call of `write_batch` at the end of that turn.

    A caller's `write` returns once its batch has been written, or raises what
    `write_batch` raised for that batch.
    """

    def __init__(self, write_batch: Callable[[list[T]], None]) -> None:
        self._write_batch = write_batch
        self._queued: list[tuple[T, asyncio.Future]] = []
        self._scheduled = False

    async def write(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._write_queued)
        await future

    def _write_queued(self) -> None:
        self._scheduled = False
        batch, self._queued = self._queued, []
        try:
            self._write_batch([item for item, _ in batch])
        except Exception as exc:  # every caller of the batch gets the error, as its own commit would
            error: Exception | None = exc
        else:
            error = None
        for _, future in batch:
            if future.done():  # its request was cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a store holds under one key: the claim, and the answer once there is one."""

    body_sha256: str
    claimed_at: float
    status_code: int | None = None
    response: dict | None = None


def decide_claim(record: KeyRecord | None, digests: tuple[str, ...], *, now_s: float,
                 stale_after_s: float) -> ClaimOutcome:
    """The rule every store applies (a pure function of what it read). A "claimed" outcome
    without a token means: write this request's claim, new or taken over, conditional on
    the record still being what was read."""
    if record is None:
        return ClaimOutcome("claimed")
    if record.body_sha256 not in digests:
        return ClaimOutcome("reused")
    if record.status_code is not None:
        return ClaimOutcome("answered", status_code=record.status_code, response=record.response)
    held_for_s = now_s - record.claimed_at
    if held_for_s < stale_after_s:
        return ClaimOutcome("in-progress", retry_after_s=max(1, math.ceil(stale_after_s - held_for_s)))
    # Its holder crashed, or gave up without knowing whether the broker has the payment:
    # the same body is the same payment, so this request takes the claim over.
    return ClaimOutcome("claimed")


class IdempotencyStoreUnavailable(Exception):
    """The store could not be reached: nothing can be decided about a key."""


class Checkpointer:
    """PASSIVE WAL checkpoints of one database, every `interval_s`, on a daemon thread:
    a checkpoint fsyncs, and whoever commits must not wait for that."""

    def __init__(self, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._db = open_sqlite(path, fsync_each_commit=False)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next round tries again; the WAL keeps the data
            log.warning("idempotency store checkpoint failed: %r", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.checkpoint()
        self._db.close()


class IdempotencyStore:
    """The SQLite store: `intake.sqlite` in the data directory, shared by the intake
    processes of one host (SQLite's file locks make their claims exclusive)."""

    # Its calls are microseconds on a local file: made on the event loop, not a thread.
    blocking_io = False

    def __init__(self, path: Path, *, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.db = open_sqlite(path, fsync_each_commit=False)
        self.db.executescript(_SCHEMA)
        self._legacy = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='idempotency'").fetchone() is not None
        # Checkpoints are the Checkpointer's: a commit on the loop never runs one.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = Checkpointer(path, checkpoint_interval_s)
        self._commits: GroupCommit[AcceptedAnswer] = GroupCommit(self._write)

    def claim(self, tenant_id: str, client_id: str, key: str, digests: tuple[str, ...], *,
              now_s: float, stale_after_s: float) -> ClaimOutcome:
        """Claim `key` for a request whose content is identified by any of `digests` (the
        first is how this release identifies it), or say who has it. Committed before it
        returns, so another process sharing the store sees the claim."""
        token = secrets.token_hex(8)
        # One write transaction: the read and the decision cannot interleave with another
        # replica's claim of the same key.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            outcome = self._claim_locked(tenant_id, client_id, key, digests, token, now_s, stale_after_s)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return outcome

    def _claim_locked(self, tenant_id: str, client_id: str, key: str, digests: tuple[str, ...], token: str,
                      now_s: float, stale_after_s: float) -> ClaimOutcome:
        row = self.db.execute("SELECT * FROM idempotency_keys WHERE tenant_id=? AND client_id=? AND "
                              "idempotency_key=?", (tenant_id, client_id, key)).fetchone()
        if row is None and self._legacy:
            legacy = self.db.execute("SELECT * FROM idempotency WHERE tenant_id=? AND idempotency_key=?",
                                     (tenant_id, key)).fetchone()
            if legacy is not None:
                return decide_claim(KeyRecord(legacy["body_sha256"], 0.0, legacy["status_code"],
                                              orjson.loads(legacy["response"])),
                                    digests, now_s=now_s, stale_after_s=stale_after_s)
        record = None if row is None else KeyRecord(
            row["body_sha256"], row["claimed_at"], row["status_code"],
            orjson.loads(row["response"]) if row["response"] is not None else None)
        outcome = decide_claim(record, digests, now_s=now_s, stale_after_s=stale_after_s)
        if outcome.kind != "claimed":
            return outcome
        if row is None:
            self.db.execute("INSERT INTO idempotency_keys (tenant_id, client_id, idempotency_key, body_sha256, "
                            "claim_token, claimed_at) VALUES (?,?,?,?,?,?)",
                            (tenant_id, client_id, key, digests[0], token, now_s))
        else:
            self.db.execute("UPDATE idempotency_keys SET claim_token=?, claimed_at=? WHERE tenant_id=? AND "
                            "client_id=? AND idempotency_key=?", (token, now_s, tenant_id, client_id, key))
        return ClaimOutcome("claimed", claim_token=token)

    def abandon(self, tenant_id: str, client_id: str, key: str, claim_token: str) -> None:
        """Give up a claim without an answer (the broker did not confirm in time): the
        next request with the same body may take it over at once, another body is still
        refused, since the broker may yet have the first one's payment."""
        self.db.execute("UPDATE idempotency_keys SET claimed_at=0 WHERE tenant_id=? AND client_id=? AND "
                        "idempotency_key=? AND claim_token=? AND status_code IS NULL",
                        (tenant_id, client_id, key, claim_token))

    async def remember(self, answer: AcceptedAnswer) -> None:
        """Returns once the answer is committed."""
        await self._commits.write(answer)

    def accepted(self, payment_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM accepted_payments WHERE payment_id=?", (payment_id,)).fetchone()

    def close(self) -> None:
        self._checkpointer.close()
        self.db.close()

    def _write(self, answers: list[AcceptedAnswer]) -> None:
        answered_at = datetime.now(UTC).isoformat()
        with self.db:
            self.db.execute("BEGIN")
            # The first answer under a claim is the one kept: a request that took over a
            # stale claim answers with the same payments as the one it took it from.
            self.db.executemany(
                "UPDATE idempotency_keys SET status_code=?, response=?, answered_at=? WHERE tenant_id=? AND "
                "client_id=? AND idempotency_key=? AND status_code IS NULL",
                [(a.status_code, orjson.dumps(a.response), answered_at, a.tenant_id, a.client_id, a.key)
                 for a in answers if a.key is not None])
            self.db.executemany(
                "INSERT OR IGNORE INTO accepted_payments VALUES (?,?,?,?,?)",
                [(p.payment_id, p.tenant_id, p.end_to_end_id, received_at, event_id)
                 for a in answers for p, received_at, event_id in a.accepted])


def open_idempotency_store(settings) -> IdempotencyStore:
    """The intake's store: SQLite in the data directory, or DynamoDB where the deployment's
    state is (`PAYORCH_STORAGE__BACKEND=dynamodb`), which replicas on several hosts share."""
    if settings.storage.backend == "dynamodb":
        from orchestrator.intake.idempotency_dynamodb import DynamoDBIdempotencyStore

        return DynamoDBIdempotencyStore.from_settings(settings.storage.dynamodb)
    return IdempotencyStore(settings.data_dir / "intake.sqlite")
