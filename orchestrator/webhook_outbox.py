"""The webhook outbox: every delivery the notifications stage queued, its state and its
attempts, in SQLite (`<data dir>/notifications.sqlite`).

The stage writes a delivery in the same state unit as the rest of its batch, so it is
durable before the batch's offsets reach Kafka: a crash before that redelivers the
events, and the delivery's id (the event id and the endpoint's name) makes the second
insert a no-op. The delivery worker (adapters/webhook_delivery.py) reads only committed
rows, sends them and writes each attempt here; a delivery stays `pending` until an
attempt succeeded, so a worker killed mid-request sends it again after its restart, with
the same `webhook-id`, which the receiver deduplicates. The operator's tools
(`payorch webhooks ...`) read and redeliver through this module.

States: `pending` (due at `next_attempt_at`), `delivered` (a 2xx answer), `dead` (out of
attempts or age, or its endpoint is gone; kept and redeliverable).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.storage import open_sqlite, transaction

OUTBOX_FILE = "notifications.sqlite"
STATES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class QueuedDelivery:
    """One webhook to one endpoint, as the stage decided it."""

    delivery_id: str
    webhook_id: str
    tenant_id: str
    endpoint: str
    url: str
    payment_id: str
    status: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt met: an HTTP status (any answer), or an error (no answer)."""

    started_at: float
    latency_ms: float
    url: str
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def delivery_id_of(webhook_id: str, endpoint: str) -> str:
    return f"{webhook_id}.{endpoint}"


class WebhookOutbox:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        # The worker's sender threads record attempts through the one connection.
        self._lock = threading.Lock()
        self.db = open_sqlite(path, read_only=read_only)
        if read_only:
            return
        self.db.executescript(
            """
            -- The last status each payment was notified with: a status is notified once,
            -- and never after a terminal one (tracking's rule).
            CREATE TABLE IF NOT EXISTS payment_status (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, status TEXT NOT NULL,
              event_id TEXT NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS deliveries (
              delivery_id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
              endpoint TEXT NOT NULL, url TEXT NOT NULL, payment_id TEXT NOT NULL, status TEXT NOT NULL,
              event_type TEXT NOT NULL, body BLOB NOT NULL, queued_at REAL NOT NULL,
              state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
              attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
              last_status_code INTEGER, last_error TEXT, finished_at REAL,
              -- A redelivery starts a new round: its limits count from here.
              round_started_at REAL NOT NULL, round_attempts_before INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
            CREATE INDEX IF NOT EXISTS deliveries_by_tenant ON deliveries (tenant_id, queued_at);
            CREATE INDEX IF NOT EXISTS deliveries_by_payment ON deliveries (payment_id);
            CREATE TABLE IF NOT EXISTS attempts (
              delivery_id TEXT NOT NULL, attempt INTEGER NOT NULL, started_at REAL NOT NULL,
              latency_ms REAL NOT NULL, url TEXT NOT NULL, status_code INTEGER, error TEXT, response TEXT,
              PRIMARY KEY (delivery_id, attempt));
            """
        )

    # -- the stage's side (inside its batch's transaction) ---------------------------------

    def notified_statuses(self, payment_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(payment_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            # bandit B608: only '?' placeholders are formatted into this SQL.
            for row in self.db.execute(f"SELECT payment_id, status FROM payment_status"  # nosec B608
                                       f" WHERE payment_id IN ({marks})", chunk):
                found[row["payment_id"]] = row["status"]
        return found

    def set_status(self, payment_id: str, tenant_id: str, status: str, event_id: str, now_s: float) -> None:
        self.db.execute("INSERT INTO payment_status VALUES (?,?,?,?,?) ON CONFLICT (payment_id) DO UPDATE SET"
                        " status=excluded.status, event_id=excluded.event_id, updated_at=excluded.updated_at",
                        (payment_id, tenant_id, status, event_id, now_s))

    def enqueue(self, delivery: QueuedDelivery, now_s: float) -> bool:
        """Queue a delivery due now; False when it was queued before (a redelivered event)."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO deliveries (delivery_id, webhook_id, tenant_id, endpoint, url, payment_id, status,"
            " event_type, body, queued_at, state, next_attempt_at, round_started_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?)",
            (delivery.delivery_id, delivery.webhook_id, delivery.tenant_id, delivery.endpoint, delivery.url,
             delivery.payment_id, delivery.status, delivery.event_type, delivery.body, now_s, now_s, now_s))
        return cursor.rowcount == 1

    # -- the delivery worker's side --------------------------------------------------------

    def due(self, now_s: float, limit: int, *, excluding: set[str] = frozenset()) -> list[sqlite3.Row]:
        """Pending deliveries due by `now_s`, oldest due first, except those in `excluding`
        (in flight)."""
        with self._lock:
            rows = self.db.execute("SELECT * FROM deliveries WHERE state='pending' AND next_attempt_at <= ?"
                                   " ORDER BY next_attempt_at, delivery_id LIMIT ?",
                                   (now_s, limit + len(excluding))).fetchall()
        return [row for row in rows if row["delivery_id"] not in excluding][:limit]

    def record_attempt(self, delivery_id: str, result: AttemptResult, *, next_attempt_at: float | None,
                       dead: bool = False) -> int:
        """Log an attempt and move the delivery on: delivered on success, otherwise due
        again at `next_attempt_at`, or dead. Returns the attempt's number."""
        with self._lock, transaction(self.db):
            row = self.db.execute("SELECT attempts, state FROM deliveries WHERE delivery_id=?",
                                  (delivery_id,)).fetchone()
            if row is None:
                raise LookupError(f"no delivery {delivery_id}")
            attempt = row["attempts"] + 1
            self.db.execute("INSERT INTO attempts VALUES (?,?,?,?,?,?,?,?)",
                            (delivery_id, attempt, result.started_at, result.latency_ms, result.url,
                             result.status_code, result.error, result.response_excerpt))
            if result.succeeded:
                state, due_at, finished = "delivered", result.started_at, result.started_at
            elif dead or next_attempt_at is None:
                state, due_at, finished = "dead", result.started_at, result.started_at
            else:
                state, due_at, finished = "pending", next_attempt_at, None
            self.db.execute("UPDATE deliveries SET attempts=?, state=?, next_attempt_at=?, last_status_code=?,"
                            " last_error=?, finished_at=?, url=? WHERE delivery_id=?",
                            (attempt, state, due_at, result.status_code, result.error, finished, result.url,
                             delivery_id))
        return attempt

    def mark_dead(self, delivery_id: str, error: str, now_s: float) -> None:
        """A delivery that cannot be attempted at all (its endpoint is no longer configured)."""
        with self._lock, transaction(self.db):
            self.db.execute("UPDATE deliveries SET state='dead', last_error=?, finished_at=? WHERE delivery_id=?"
                            " AND state='pending'", (error, now_s, delivery_id))

    def forget_before(self, cutoff_s: float, *, terminal_statuses: tuple[str, ...]) -> tuple[int, int]:
        """Forget deliveries delivered before `cutoff_s` with their attempts, and the
        notified statuses of payments that ended before it; returns (deliveries, statuses).
        Pending and dead deliveries are kept."""
        marks = ",".join("?" * len(terminal_statuses))
        with self._lock, transaction(self.db):
            self.db.execute("DELETE FROM attempts WHERE delivery_id IN (SELECT delivery_id FROM deliveries"
                            " WHERE state='delivered' AND finished_at < ?)", (cutoff_s,))
            deliveries = self.db.execute("DELETE FROM deliveries WHERE state='delivered' AND finished_at < ?",
                                         (cutoff_s,)).rowcount
            # bandit B608: only '?' placeholders are formatted into this SQL.
            statuses = self.db.execute(f"DELETE FROM payment_status WHERE updated_at < ?"  # nosec B608
                                       f" AND status IN ({marks})", (cutoff_s, *terminal_statuses)).rowcount
        return deliveries, statuses

    # -- the operator's side ---------------------------------------------------------------

    def deliveries(self, *, tenant_id: str | None = None, state: str | None = None, payment_id: str | None = None,
                   limit: int = 100) -> list[dict]:
        """Deliveries, newest queued first."""
        query, args = "SELECT * FROM deliveries WHERE 1=1", []
        for column, value in (("tenant_id", tenant_id), ("state", state), ("payment_id", payment_id)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        query += " ORDER BY queued_at DESC, delivery_id LIMIT ?"
        with self._lock:
            return [self._delivery(row) for row in self.db.execute(query, (*args, limit)).fetchall()]

    def delivery(self, delivery_id: str) -> dict | None:
        with self._lock:
            row = self.db.execute("SELECT * FROM deliveries WHERE delivery_id=?", (delivery_id,)).fetchone()
        return self._delivery(row) if row is not None else None

    def attempts(self, delivery_id: str) -> list[dict]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM attempts WHERE delivery_id=? ORDER BY attempt",
                                   (delivery_id,)).fetchall()
        return [{key: row[key] for key in row.keys()} for row in rows]

    def redeliver(self, delivery_id: str, now_s: float) -> str | None:
        """Queue a delivery again, due now, with the same webhook id and body (the receiver
        deduplicates a copy it already has); returns its previous state, None if unknown.
        Its attempt numbers go on; the attempt and age limits count from now."""
        with self._lock, transaction(self.db):
            row = self.db.execute("SELECT state FROM deliveries WHERE delivery_id=?", (delivery_id,)).fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE deliveries SET state='pending', next_attempt_at=?, round_started_at=?,"
                            " round_attempts_before=attempts, finished_at=NULL WHERE delivery_id=?",
                            (now_s, now_s, delivery_id))
        return row["state"]

    @staticmethod
    def _delivery(row: sqlite3.Row) -> dict:
        return {key: row[key] for key in row.keys() if key != "body"} | {"body": bytes(row["body"]).decode()}

    def close(self) -> None:
        self.db.close()
