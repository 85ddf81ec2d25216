"""Tracking: every event of every payment, as a status and a timeline.

The tracking stage is the only writer of the tracking store; the intake reads it to
answer `GET /v1/payments/{id}`. Events are keyed by event id, so redeliveries and
re-emitted events leave the timeline unchanged. Status only moves forward, and a
terminal status (SETTLED, REJECTED, FAILED) is never replaced, whatever order the
topics deliver in.

Tracking also reads settlement's cycle events (`cycles` topic, their own schema family):
each `CycleClosed` becomes a row of the tenant's cycles, and each
`ReconciliationException` a row of the cycle's exceptions, shown with the payment it
names (`exceptions` in `GET /v1/payments/{id}`). Exceptions are deliberately not timeline
entries: the timeline is the payment's own events, all correlated by its payment id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import orjson

from orchestrator.cycle_events import CycleEvent, CycleEventCodec
from orchestrator.domain import Payment, payment_from_record, payment_to_record
from orchestrator.events import Event, EventCodec
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.topics import STAGE_TOPICS

STATUS_OF_EVENT = {
    "PaymentReceived": "RECEIVED",
    "PaymentInitiated": "INITIATED",
    "SanctionsScreened": "SCREENED",
    "FraudScored": "SCREENED",
    "PaymentHeld": "HELD",
    "PaymentRouted": "ROUTED",
    "PaymentExecuted": "EXECUTED",
    "PaymentSettled": "SETTLED",
    "PaymentRejected": "REJECTED",
    "PaymentFailed": "FAILED",
}
STATUS_RANK = {"RECEIVED": 0, "INITIATED": 1, "SCREENED": 2, "HELD": 3, "ROUTED": 4, "EXECUTED": 5,
               "SETTLED": 6, "REJECTED": 6, "FAILED": 6}
TERMINAL_STATUSES = frozenset({"SETTLED", "REJECTED", "FAILED"})

# Payload fields shown in the timeline: business facts, never account data.
_TIMELINE_DETAIL_FIELDS = ("reason_code", "iso_reason_code", "reason_detail", "outcome", "best_score", "score",
                           "rules_triggered", "rail", "clearing_status", "cycle_id", "settlement_mode",
                           "amount_minor", "matched_list", "matched_entry_id",
                           "breaker_state", "attempt", "retry_at", "deadline_at")


def next_status(current: str | None, event_type: str) -> str | None:
    """The status after `event_type`, or None when the event does not change it (pure)."""
    new = STATUS_OF_EVENT.get(event_type)
    if new is None:
        return None
    if current is None:
        return new
    if current in TERMINAL_STATUSES:
        return None
    if new in TERMINAL_STATUSES or STATUS_RANK[new] > STATUS_RANK[current]:
        return new
    return None


class TrackingStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if not read_only:
            self.db = open_sqlite(path)
            self.db.executescript(
                """
                CREATE TABLE IF NOT EXISTS payments (
                  payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, status TEXT NOT NULL,
                  reason_code TEXT, iso_reason_code TEXT, reason_detail TEXT,
                  end_to_end_id TEXT, amount_minor INTEGER, currency TEXT,
                  updated_at TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS timeline (
                  event_id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, stage TEXT NOT NULL,
                  event_type TEXT NOT NULL, occurred_at TEXT NOT NULL, correlation_id TEXT NOT NULL,
                  causation_id TEXT, region TEXT NOT NULL, details TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS timeline_by_payment ON timeline (payment_id, occurred_at);
                -- The payment as its latest event carried it, for statements and
                -- notifications (camt.054); served only to the payment's own tenant.
                CREATE TABLE IF NOT EXISTS payment_snapshots (
                  payment_id TEXT PRIMARY KEY, payment TEXT NOT NULL, rail TEXT, settled_at TEXT);
                CREATE INDEX IF NOT EXISTS payments_by_status ON payments (tenant_id, status);
                -- Closed settlement cycles and their reconciliation exceptions.
                CREATE TABLE IF NOT EXISTS settlement_cycles (
                  tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL, rail TEXT NOT NULL,
                  settlement_mode TEXT NOT NULL, settlement_date TEXT NOT NULL,
                  window_start TEXT NOT NULL, window_end TEXT NOT NULL, closed_at TEXT NOT NULL,
                  payments INTEGER NOT NULL, rail_transactions INTEGER NOT NULL, exceptions INTEGER NOT NULL,
                  statement_id TEXT NOT NULL, statement_sha256 TEXT NOT NULL, summary TEXT NOT NULL,
                  event_id TEXT NOT NULL, PRIMARY KEY (tenant_id, cycle_id));
                CREATE INDEX IF NOT EXISTS settlement_cycles_by_window ON settlement_cycles (tenant_id, window_start);
                CREATE TABLE IF NOT EXISTS reconciliation_exceptions (
                  event_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL,
                  payment_id TEXT, kind TEXT NOT NULL, occurred_at TEXT NOT NULL, details TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS reconciliation_exceptions_by_payment
                  ON reconciliation_exceptions (payment_id) WHERE payment_id IS NOT NULL;
                CREATE INDEX IF NOT EXISTS reconciliation_exceptions_by_cycle
                  ON reconciliation_exceptions (tenant_id, cycle_id);
                """
            )
        else:
            self.db = open_sqlite(path, read_only=True)

    def record(self, events: Sequence[Event]) -> None:
        with transaction(self.db):
            for event in events:
                details = {k: event.payload[k] for k in _TIMELINE_DETAIL_FIELDS if event.payload.get(k) is not None}
                inserted = self.db.execute(
                    "INSERT OR IGNORE INTO timeline VALUES (?,?,?,?,?,?,?,?,?)",
                    (event.event_id, event.payment_id, event.stage, event.event_type,
                     event.occurred_at.isoformat(), event.correlation_id, event.causation_id, event.region,
                     orjson.dumps(details, default=str).decode()),
                ).rowcount
                if not inserted:
                    continue
                self._snapshot(event)
                row = self.db.execute("SELECT status FROM payments WHERE payment_id=?", (event.payment_id,)).fetchone()
                status = next_status(row["status"] if row else None, event.event_type)
                if status is None:
                    continue
                reason = (event.payload.get("reason_code"), event.payload.get("iso_reason_code"),
                          event.payload.get("reason_detail")) if status in ("REJECTED", "FAILED", "HELD") else (None, None, None)
                payment = event.payment
                self.db.execute(
                    "INSERT INTO payments VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (payment_id) DO UPDATE SET"
                    " status=excluded.status, reason_code=excluded.reason_code,"
                    " iso_reason_code=excluded.iso_reason_code, reason_detail=excluded.reason_detail,"
                    " updated_at=excluded.updated_at",
                    (event.payment_id, event.tenant_id, status, *reason, payment.end_to_end_id,
                     payment.amount_minor, payment.currency, event.occurred_at.isoformat()),
                )

    def _snapshot(self, event: Event) -> None:
        # The payment only changes at initiation (normalisation); every later event
        # carries that same payment, so it is serialised on first sight and on
        # PaymentInitiated, not on each of a payment's ~9 events.
        rail = event.payload.get("rail")
        settled_at = event.occurred_at.isoformat() if event.event_type == "PaymentSettled" else None
        if event.event_type == "PaymentInitiated" or not self.db.execute(
                "SELECT 1 FROM payment_snapshots WHERE payment_id=?", (event.payment_id,)).fetchone():
            self.db.execute(
                "INSERT INTO payment_snapshots VALUES (?,?,?,?) ON CONFLICT (payment_id) DO UPDATE SET"
                " payment=excluded.payment, rail=coalesce(excluded.rail, rail),"
                " settled_at=coalesce(excluded.settled_at, settled_at)",
                (event.payment_id, orjson.dumps(payment_to_record(event.payment)).decode(), rail, settled_at))
        elif rail is not None or settled_at is not None:
            self.db.execute("UPDATE payment_snapshots SET rail=coalesce(?, rail), settled_at=coalesce(?, settled_at)"
                            " WHERE payment_id=?", (rail, settled_at, event.payment_id))

    def snapshot(self, payment_id: str) -> tuple[Payment, str | None, str | None] | None:
        """(payment, rail, settled_at) as last seen, or None."""
        row = self.db.execute("SELECT * FROM payment_snapshots WHERE payment_id=?", (payment_id,)).fetchone()
        if row is None:
            return None
        return payment_from_record(orjson.loads(row["payment"])), row["rail"], row["settled_at"]

    def get(self, payment_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM payments WHERE payment_id=?", (payment_id,)).fetchone()
        if row is None:
            return None
        timeline = [
            {
                "stage": t["stage"], "event_type": t["event_type"], "occurred_at": t["occurred_at"],
                "event_id": t["event_id"], "correlation_id": t["correlation_id"], "causation_id": t["causation_id"],
                "region": t["region"], **orjson.loads(t["details"]),
            }
            for t in self.db.execute("SELECT * FROM timeline WHERE payment_id=? ORDER BY occurred_at, rowid",
                                     (payment_id,))
        ]
        reason = None
        if row["reason_code"]:
            reason = {"code": row["reason_code"], "iso_code": row["iso_reason_code"], "detail": row["reason_detail"]}
        return {"payment_id": row["payment_id"], "tenant_id": row["tenant_id"], "status": row["status"],
                "reason": reason, "end_to_end_id": row["end_to_end_id"], "timeline": timeline,
                "exceptions": self.payment_exceptions(row["tenant_id"], payment_id)}

    # -- settlement cycles --------------------------------------------------------------

    def record_cycle_events(self, events: Sequence[CycleEvent]) -> None:
        """Closed cycles and reconciliation exceptions, each kept once (by cycle / event id)."""
        with transaction(self.db):
            for event in events:
                payload = event.payload
                if event.event_type == "CycleClosed":
                    summary = {k: payload[k] for k in ("totals", "rail_totals", "net_positions")}
                    self.db.execute(
                        "INSERT OR IGNORE INTO settlement_cycles VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (event.tenant_id, payload["cycle_id"], payload["rail"], payload["settlement_mode"],
                         payload["settlement_date"], payload["window_start"].isoformat(),
                         payload["window_end"].isoformat(), event.occurred_at.isoformat(), payload["payments"],
                         payload["rail_transactions"], payload["exceptions"], payload["statement_id"],
                         payload["statement_sha256"], orjson.dumps(summary).decode(), event.event_id))
                elif event.event_type == "ReconciliationException":
                    details = {k: v for k, v in payload.items() if k not in ("cycle_id", "kind", "payment_id")}
                    self.db.execute(
                        "INSERT OR IGNORE INTO reconciliation_exceptions VALUES (?,?,?,?,?,?,?)",
                        (event.event_id, event.tenant_id, payload["cycle_id"], payload["payment_id"], payload["kind"],
                         event.occurred_at.isoformat(), orjson.dumps(details, default=str).decode()))

    @staticmethod
    def _exception(row) -> dict:
        return {"event_id": row["event_id"], "cycle_id": row["cycle_id"], "kind": row["kind"],
                "payment_id": row["payment_id"], "occurred_at": row["occurred_at"], **orjson.loads(row["details"])}

    def payment_exceptions(self, tenant_id: str, payment_id: str) -> list[dict]:
        try:
            rows = self.db.execute("SELECT * FROM reconciliation_exceptions WHERE payment_id=? AND tenant_id=?"
                                   " ORDER BY occurred_at, event_id", (payment_id, tenant_id)).fetchall()
        except sqlite3.OperationalError:
            return []  # a store the tracking stage has not upgraded yet has no exceptions
        return [self._exception(row) for row in rows]

    @staticmethod
    def _cycle(row) -> dict:
        return {"cycle_id": row["cycle_id"], "tenant_id": row["tenant_id"], "rail": row["rail"],
                "settlement_mode": row["settlement_mode"], "settlement_date": row["settlement_date"],
                "window_start": row["window_start"], "window_end": row["window_end"], "closed_at": row["closed_at"],
                "payment_count": row["payments"], "rail_transaction_count": row["rail_transactions"],
                "exception_count": row["exceptions"], "statement_id": row["statement_id"],
                "statement_sha256": row["statement_sha256"], **orjson.loads(row["summary"])}

    def cycles(self, tenant_id: str, *, rail: str | None = None, limit: int = 100) -> list[dict]:
        """The tenant's closed cycles, newest window first."""
        query = "SELECT * FROM settlement_cycles WHERE tenant_id=?"
        args: list = [tenant_id]
        if rail is not None:
            query += " AND rail=?"
            args.append(rail)
        query += " ORDER BY window_start DESC, cycle_id LIMIT ?"
        return [self._cycle(row) for row in self.db.execute(query, (*args, limit))]

    def cycle(self, tenant_id: str, cycle_id: str) -> dict | None:
        """One closed cycle of the tenant with its exceptions, or None."""
        row = self.db.execute("SELECT * FROM settlement_cycles WHERE tenant_id=? AND cycle_id=?",
                              (tenant_id, cycle_id)).fetchone()
        if row is None:
            return None
        exceptions = [self._exception(r) for r in self.db.execute(
            "SELECT * FROM reconciliation_exceptions WHERE tenant_id=? AND cycle_id=? ORDER BY kind, payment_id, event_id",
            (tenant_id, cycle_id))]
        return {**self._cycle(row), "exceptions": exceptions}

    def status_counts(self, payment_ids: Sequence[str] | None = None) -> dict[str, int]:
        if payment_ids is None:
            rows = self.db.execute("SELECT status, count(*) AS n FROM payments GROUP BY status")
            return {r["status"]: r["n"] for r in rows}
        counts: dict[str, int] = {}
        ids = list(payment_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.db.execute(f"SELECT status, count(*) AS n FROM payments WHERE payment_id IN ({marks})"
                                     " GROUP BY status", chunk):
                counts[r["status"]] = counts.get(r["status"], 0) + r["n"]
        return counts

    def close(self) -> None:
        self.db.close()


class TrackingStage(Stage):
    name = "tracking"
    input_topics = STAGE_TOPICS
    input_event_types = None

    def __init__(self, tenants, region: str, data_dir: Path, *, codec: EventCodec, cycle_codec: CycleEventCodec) -> None:
        super().__init__(tenants, region)
        self.store = TrackingStore(data_dir / "tracking.sqlite")
        self.codec = codec
        self.cycle_codec = cycle_codec

    def decode(self, value: bytes, event_type: str | None) -> Event | CycleEvent:
        """Payment events and cycle events arrive on the same consumer. The writer
        schema's fingerprint says which family wrote the bytes, so a cycle event is
        recognised even with a missing or wrong `event_type` header (whose mismatch
        with the payload the codec then refuses)."""
        if self.cycle_codec.knows(value):
            return self.cycle_codec.decode(value)
        return self.codec.decode(value)

    def handle_batch(self, events: Sequence[Event | CycleEvent], now: datetime) -> list[Event]:
        payment_events = [event for event in events if isinstance(event, Event)]
        cycle_events = [event for event in events if isinstance(event, CycleEvent)]
        if payment_events:
            self.store.record(payment_events)
        if cycle_events:
            self.store.record_cycle_events(cycle_events)
        return []

    def close(self) -> None:
        self.store.close()
