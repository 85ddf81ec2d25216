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

The review queue (`GET /v1/reviews`) is tracking's too: a row per payment whose status is
HELD (written when the status becomes HELD, deleted when it leaves it), with the hold's
event, reason and time, and the maker's approval once routing reports one
(`PaymentReviewed`, outcome `awaiting_checker`). The screening verdicts a reviewer needs
are read from the payment's timeline when the queue is listed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import orjson

from orchestrator.cycle_events import CycleEvent, CycleEventCodec
from orchestrator.domain import Payment, payment_from_record, payment_to_record
from orchestrator.events import Event, EventCodec, UndecodableEvent
from orchestrator.flow_health import FlowHealth, FlowHealthMeter, epoch_s
from orchestrator import wire
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
# A payment in one of these is not in flight: it has ended, or waits for a person.
_OUT_OF_FLOW = TERMINAL_STATUSES | {"HELD"}
# How often tracking writes its flow-health reading for the intake's admission rule.
_FLOW_HEALTH_WRITE_INTERVAL_S = 0.25

# Payload fields shown in the timeline: business facts, never account data.
_TIMELINE_DETAIL_FIELDS = ("reason_code", "iso_reason_code", "reason_detail", "outcome", "best_score", "score",
                           "rules_triggered", "rail", "clearing_status", "cycle_id", "settlement_mode",
                           "amount_minor", "matched_list", "matched_entry_id",
                           "breaker_state", "attempt", "retry_at", "deadline_at",
                           "decision", "reviewer", "comment", "review_step", "refusal_reason", "maker",
                           "credential_id")


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


# Event types whose body tracking needs at once: the payment's facts (received,
# initiated), its rail (routed), the reason of a refusal or hold, and a review's maker
# step (rare: one per reviewed payment). Every other event
# is recorded from its Kafka headers and its bytes; its details are read from the
# bytes when someone asks for the timeline, which is rare next to writing it.
_DECODED_AT_ONCE = frozenset({"PaymentReceived", "PaymentInitiated", "PaymentRouted", "PaymentRejected",
                              "PaymentFailed", "PaymentHeld", "PaymentReviewed"})
# The verdicts a reviewer of a held payment needs, and the facts of each shown with it.
_REVIEW_VERDICT_FIELDS = {
    "SanctionsScreened": ("sanctions", ("outcome", "best_score", "matched_list", "matched_entry_id", "matched_party")),
    "FraudScored": ("fraud", ("outcome", "score", "rules_triggered")),
}
_ENVELOPE_HEADERS = (wire.HEADER_EVENT_ID, wire.HEADER_EVENT_TYPE, wire.HEADER_OCCURRED_AT,
                     wire.HEADER_CORRELATION_ID, wire.HEADER_TENANT_ID, wire.HEADER_STAGE, wire.HEADER_REGION)


class TrackedEvent:
    """A payment event as tracking records it: the envelope facts, the bytes, and the
    decoded event, which is decoded only when something reads it."""

    __slots__ = ("event_id", "event_type", "occurred_at", "correlation_id", "causation_id", "tenant_id",
                 "stage", "region", "body", "_event", "_codec")

    def __init__(self, *, event_id: str, event_type: str, occurred_at: str, correlation_id: str,
                 causation_id: str | None, tenant_id: str, stage: str, region: str, body: bytes | None,
                 event: Event | None = None, codec: EventCodec | None = None) -> None:
        self.event_id, self.event_type, self.occurred_at = event_id, event_type, occurred_at
        self.correlation_id, self.causation_id, self.tenant_id = correlation_id, causation_id, tenant_id
        self.stage, self.region, self.body = stage, region, body
        self._event, self._codec = event, codec

    @classmethod
    def of(cls, event: Event, body: bytes | None = None) -> "TrackedEvent":
        return cls(event_id=event.event_id, event_type=event.event_type, occurred_at=event.occurred_at.isoformat(),
                   correlation_id=event.correlation_id, causation_id=event.causation_id, tenant_id=event.tenant_id,
                   stage=event.stage, region=event.region, body=body, event=event)

    @classmethod
    def from_message(cls, value: bytes, headers: dict[str, str], codec: EventCodec) -> "TrackedEvent":
        """From the headers alone where the producer wrote the whole envelope into them
        (and the type needs no payload now); otherwise by decoding the body at once."""
        if (headers.get(wire.HEADER_EVENT_TYPE) in _DECODED_AT_ONCE
                or any(h not in headers for h in _ENVELOPE_HEADERS)):
            # Older producers wrote fewer headers; decoding also checks the bytes.
            return cls.of(codec.decode(value), value)
        codec.writer_version_of(value)  # an unknown schema is a poison message now, not at query time
        return cls(event_id=headers[wire.HEADER_EVENT_ID], event_type=headers[wire.HEADER_EVENT_TYPE],
                   occurred_at=headers[wire.HEADER_OCCURRED_AT], correlation_id=headers[wire.HEADER_CORRELATION_ID],
                   causation_id=headers.get(wire.HEADER_CAUSATION_ID), tenant_id=headers[wire.HEADER_TENANT_ID],
                   stage=headers[wire.HEADER_STAGE], region=headers[wire.HEADER_REGION], body=value, codec=codec)

    @property
    def payment_id(self) -> str:
        # The correlation id is the payment id for the payment's whole life.
        return self.correlation_id

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = self._codec.decode(self.body)
        return self._event

    @property
    def decoded(self) -> bool:
        return self._event is not None

    def log_context(self) -> dict[str, str]:
        return {"payment_id": self.payment_id, "correlation_id": self.correlation_id, "tenant_id": self.tenant_id,
                "event_id": self.event_id, "event_type": self.event_type}


def timeline_details(payload: dict) -> dict:
    """The business facts of an event shown in its timeline entry (never account data)."""
    return {k: payload[k] for k in _TIMELINE_DETAIL_FIELDS if payload.get(k) is not None}


# Payments whose current status tracking remembers in memory, so recording an event
# needs no read; past this many the memory is emptied and refilled from the store.
_STATUS_CACHE_MAX = 200_000


class TrackingStore:
    def __init__(self, path: Path, *, read_only: bool = False, codec: EventCodec | None = None) -> None:
        # Reads a timeline row's bytes for its details; the default knows every schema in schemas/.
        self._codec = codec
        self._statuses: dict[str, str] = {}
        self._snapshotted: set[str] = set()
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
                  causation_id TEXT, region TEXT NOT NULL, details TEXT NOT NULL, body BLOB);
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
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS flow_health (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " in_flight INTEGER NOT NULL, latency_p90_s REAL, tracking_lag_s REAL NOT NULL,"
                " measured_at REAL NOT NULL)")
            marks = ",".join("?" * len(_OUT_OF_FLOW))
            self.meter = FlowHealthMeter(in_flight=self.db.execute(
                # bandit B608: only '?' placeholders are formatted into this SQL.
                f"SELECT count(*) FROM payments WHERE status NOT IN ({marks})",  # nosec B608
                sorted(_OUT_OF_FLOW)).fetchone()[0])
            self._flow_health_written_at = 0.0
            # A store written before timeline rows kept their event's bytes.
            columns = {row["name"] for row in self.db.execute("PRAGMA table_info(timeline)")}
            if "body" not in columns:
                self.db.execute("ALTER TABLE timeline ADD COLUMN body BLOB")
            self._open_review_queue()
        else:
            self.db = open_sqlite(path, read_only=True)

    def _open_review_queue(self) -> None:
        existed = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='review_queue'").fetchone()
        self.db.executescript(
            """
            -- The payments whose status is HELD, oldest hold first (GET /v1/reviews).
            CREATE TABLE IF NOT EXISTS review_queue (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, held_at TEXT NOT NULL, held_at_s REAL NOT NULL,
              hold_event_id TEXT NOT NULL, reason_code TEXT, reason_detail TEXT, maker TEXT, maker_at TEXT);
            CREATE INDEX IF NOT EXISTS review_queue_by_age ON review_queue (tenant_id, held_at_s, payment_id);
            """
        )
        if existed:
            return
        # A store from before the queue: its held payments join it with their hold event.
        for row in self.db.execute(
                "SELECT p.payment_id, p.tenant_id, p.reason_code, p.reason_detail, t.event_id, t.occurred_at"
                " FROM payments p JOIN timeline t ON t.payment_id = p.payment_id AND t.event_type = 'PaymentHeld'"
                " WHERE p.status = 'HELD'").fetchall():
            self.db.execute("INSERT OR IGNORE INTO review_queue VALUES (?,?,?,?,?,?,?,NULL,NULL)",
                            (row["payment_id"], row["tenant_id"], row["occurred_at"], epoch_s(row["occurred_at"]),
                             row["event_id"], row["reason_code"], row["reason_detail"]))

    def record(self, events: Sequence[Event | TrackedEvent]) -> None:
        """Record a batch in one transaction: one timeline row per new event, and each
        payment's status row written once per batch, only when the batch moved it."""
        tracked = [e if isinstance(e, TrackedEvent) else TrackedEvent.of(e) for e in events]
        changes: dict[str, dict] = {}  # payment id -> its status row as this batch leaves it
        makers: dict[str, tuple[str, str]] = {}  # payment id -> (maker, when): approvals awaiting a checker
        recorded_at = time.time()
        with transaction(self.db):
            for event in tracked:
                details = "{}" if event.body is not None else orjson.dumps(
                    timeline_details(event.event.payload), default=str).decode()
                inserted = self.db.execute(
                    "INSERT OR IGNORE INTO timeline VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (event.event_id, event.payment_id, event.stage, event.event_type, event.occurred_at,
                     event.correlation_id, event.causation_id, event.region, details, event.body),
                ).rowcount
                if not inserted:
                    continue
                at_s = epoch_s(event.occurred_at)
                self.meter.saw(at_s, recorded_at)
                if event.event_type == "PaymentReceived":
                    self.meter.received(event.payment_id, at_s)
                self._snapshot(event)
                self._note_status(event, changes)
                if event.event_type == "PaymentReviewed" and event.event.payload["outcome"] == "awaiting_checker":
                    makers[event.payment_id] = (event.event.payload["reviewer"], event.occurred_at)
            for payment_id, row in changes.items():
                self._write_status(payment_id, row)
            for payment_id, (maker, maker_at) in makers.items():
                self.db.execute("UPDATE review_queue SET maker=?, maker_at=? WHERE payment_id=?",
                                (maker, maker_at, payment_id))
            self._write_flow_health()

    def _write_flow_health(self) -> None:
        now = time.time()
        if now - self._flow_health_written_at < _FLOW_HEALTH_WRITE_INTERVAL_S:
            return
        health = self.meter.reading(now)
        self.db.execute("INSERT OR REPLACE INTO flow_health VALUES (1,?,?,?,?)",
                        (health.in_flight, health.latency_p90_s, health.tracking_lag_s, health.measured_at))
        self._flow_health_written_at = now

    def flow_health(self) -> FlowHealth | None:
        """The latest reading tracking wrote, or None before its first."""
        try:
            row = self.db.execute("SELECT * FROM flow_health WHERE id = 1").fetchone()
        except sqlite3.OperationalError:
            return None  # a store of a tracking version that wrote none
        if row is None:
            return None
        return FlowHealth(in_flight=row["in_flight"], latency_p90_s=row["latency_p90_s"],
                          tracking_lag_s=row["tracking_lag_s"], measured_at=row["measured_at"])

    def _current_status(self, payment_id: str) -> str | None:
        if payment_id in self._statuses:
            return self._statuses[payment_id]
        row = self.db.execute("SELECT status FROM payments WHERE payment_id=?", (payment_id,)).fetchone()
        return row["status"] if row else None

    def _note_status(self, event: TrackedEvent, changes: dict[str, dict]) -> None:
        current = changes[event.payment_id]["status"] if event.payment_id in changes else \
            self._current_status(event.payment_id)
        facts = None
        if event.decoded or event.event_type in _DECODED_AT_ONCE:
            payment = event.event.payment
            facts = (payment.end_to_end_id, payment.amount_minor, payment.currency)
        status = next_status(current, event.event_type)
        if status is None and facts is None:
            return
        row = changes.setdefault(event.payment_id, {"status": current, "initial": current, "tenant_id": event.tenant_id,
                                                    "reason": (None, None, None), "facts": None,
                                                    "updated_at": event.occurred_at, "moved": False, "hold": None})
        row["facts"] = row["facts"] or facts
        if status is not None:
            payload = event.event.payload if status in ("REJECTED", "FAILED", "HELD") else {}
            row.update(status=status, updated_at=event.occurred_at, moved=True,
                       reason=(payload.get("reason_code"), payload.get("iso_reason_code"), payload.get("reason_detail")))
            if status == "HELD":
                row["hold"] = (event.event_id, event.occurred_at)

    def _write_status(self, payment_id: str, row: dict) -> None:
        facts = row["facts"] or (None, None, None)
        if row["moved"]:
            self.db.execute(
                "INSERT INTO payments VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (payment_id) DO UPDATE SET"
                " status=excluded.status, reason_code=excluded.reason_code,"
                " iso_reason_code=excluded.iso_reason_code, reason_detail=excluded.reason_detail,"
                " updated_at=excluded.updated_at, end_to_end_id=coalesce(end_to_end_id, excluded.end_to_end_id),"
                " amount_minor=coalesce(amount_minor, excluded.amount_minor),"
                " currency=coalesce(currency, excluded.currency)",
                (payment_id, row["tenant_id"], row["status"], *row["reason"], *facts, row["updated_at"]),
            )
            if len(self._statuses) >= _STATUS_CACHE_MAX:
                self._statuses.clear()
            self._statuses[payment_id] = row["status"]
            if row["status"] == "HELD" and row["hold"] is not None:
                event_id, held_at = row["hold"]
                self.db.execute("INSERT OR REPLACE INTO review_queue VALUES (?,?,?,?,?,?,?,NULL,NULL)",
                                (payment_id, row["tenant_id"], held_at, epoch_s(held_at), event_id,
                                 row["reason"][0], row["reason"][2]))
            elif row["initial"] == "HELD":
                self.db.execute("DELETE FROM review_queue WHERE payment_id=?", (payment_id,))
            was_in_flight = row["initial"] is not None and row["initial"] not in _OUT_OF_FLOW
            in_flight = row["status"] not in _OUT_OF_FLOW
            # A released hold is in flight again, from its release (the wait for a person
            # is not the flow's latency).
            if row["initial"] in (None, "HELD") and in_flight:
                self.meter.entered(payment_id, epoch_s(row["updated_at"]))
            elif was_in_flight and not in_flight:
                self.meter.left(payment_id, epoch_s(row["updated_at"]))
        elif row["facts"]:
            # An event that carries the payment's facts reached us after one that
            # created its row from headers alone.
            self.db.execute("UPDATE payments SET end_to_end_id=coalesce(end_to_end_id, ?),"
                            " amount_minor=coalesce(amount_minor, ?), currency=coalesce(currency, ?)"
                            " WHERE payment_id=? AND end_to_end_id IS NULL", (*facts, payment_id))

    def _has_snapshot(self, payment_id: str) -> bool:
        if payment_id in self._snapshotted:
            return True
        if self.db.execute("SELECT 1 FROM payment_snapshots WHERE payment_id=?", (payment_id,)).fetchone():
            self._remember_snapshot(payment_id)
            return True
        return False

    def _remember_snapshot(self, payment_id: str) -> None:
        if len(self._snapshotted) >= _STATUS_CACHE_MAX:
            self._snapshotted.clear()
        self._snapshotted.add(payment_id)

    def _snapshot(self, event: TrackedEvent) -> None:
        # The payment only changes at initiation (normalisation); every later event
        # carries that same payment, so it is serialised on first sight and on
        # PaymentInitiated, not on each of a payment's ~9 events.
        settled_at = event.occurred_at if event.event_type == "PaymentSettled" else None
        rail = event.event.payload.get("rail") if event.decoded else None
        if event.event_type == "PaymentInitiated" or (
                (event.decoded or settled_at) and not self._has_snapshot(event.payment_id)):
            self.db.execute(
                "INSERT INTO payment_snapshots VALUES (?,?,?,?) ON CONFLICT (payment_id) DO UPDATE SET"
                " payment=excluded.payment, rail=coalesce(excluded.rail, rail),"
                " settled_at=coalesce(excluded.settled_at, settled_at)",
                (event.payment_id, orjson.dumps(payment_to_record(event.event.payment)).decode(), rail, settled_at))
            self._remember_snapshot(event.payment_id)
        elif rail is not None or settled_at is not None:
            self.db.execute("UPDATE payment_snapshots SET rail=coalesce(?, rail), settled_at=coalesce(?, settled_at)"
                            " WHERE payment_id=?", (rail, settled_at, event.payment_id))

    def _decode(self, body: bytes) -> Event:
        if self._codec is None:
            from orchestrator.settings import get_settings
            self._codec = EventCodec(get_settings().schemas_dir)
        return self._codec.decode(body)

    def _details(self, row) -> dict:
        """A timeline row's details: from its event's bytes where it kept them."""
        body = row["body"] if "body" in row.keys() else None
        if body is None:
            return orjson.loads(row["details"])
        try:
            return timeline_details(self._decode(body).payload)
        except UndecodableEvent:
            # Written by a newer schema than this reader knows (a rolling upgrade that
            # reached tracking first): the entry is shown without its business facts
            # until this process runs the release that knows the schema.
            return {"details_unavailable": "written by a newer event schema than this reader knows"}

    def snapshot(self, payment_id: str) -> tuple[Payment, str | None, str | None] | None:
        """(payment, rail, settled_at) as last seen, or None."""
        row = self.db.execute("SELECT * FROM payment_snapshots WHERE payment_id=?", (payment_id,)).fetchone()
        if row is None:
            return None
        return payment_from_record(orjson.loads(row["payment"])), row["rail"], row["settled_at"]

    def status_of(self, payment_id: str) -> tuple[str, str] | None:
        """(tenant id, status) of a payment tracking has seen, or None."""
        row = self.db.execute("SELECT tenant_id, status FROM payments WHERE payment_id=?", (payment_id,)).fetchone()
        return (row["tenant_id"], row["status"]) if row is not None else None

    def get(self, payment_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM payments WHERE payment_id=?", (payment_id,)).fetchone()
        if row is None:
            return None
        timeline = [
            {
                "stage": t["stage"], "event_type": t["event_type"], "occurred_at": t["occurred_at"],
                "event_id": t["event_id"], "correlation_id": t["correlation_id"], "causation_id": t["causation_id"],
                "region": t["region"], **self._details(t),
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

    # -- the review queue ---------------------------------------------------------------

    def held_for_review(self, tenant_id: str, *, limit: int, after: tuple[float, str] | None = None) -> list[dict]:
        """The tenant's HELD payments, oldest hold first, from after `after` (the
        (held_at_s, payment_id) of the last one a caller saw): each with its hold, the
        maker's approval if one awaits its checker, the screening verdicts and the
        parties' names (never their accounts)."""
        query = ("SELECT q.*, p.end_to_end_id, p.amount_minor, p.currency FROM review_queue q"
                 " JOIN payments p ON p.payment_id = q.payment_id WHERE q.tenant_id=? AND p.status='HELD'")
        args: list = [tenant_id]
        if after is not None:
            query += " AND (q.held_at_s, q.payment_id) > (?, ?)"
            args += list(after)
        query += " ORDER BY q.held_at_s, q.payment_id LIMIT ?"
        return [self._held(row) for row in self.db.execute(query, (*args, limit)).fetchall()]

    def held_review(self, payment_id: str) -> dict | None:
        """One payment's place in the review queue, or None when it is not HELD."""
        row = self.db.execute("SELECT * FROM review_queue WHERE payment_id=?", (payment_id,)).fetchone()
        if row is None:
            return None
        return {key: row[key] for key in ("payment_id", "tenant_id", "held_at", "held_at_s", "hold_event_id",
                                          "reason_code", "reason_detail", "maker", "maker_at")}

    def _held(self, row) -> dict:
        held = {"payment_id": row["payment_id"], "end_to_end_id": row["end_to_end_id"],
                "amount_minor": row["amount_minor"], "currency": row["currency"], "held_at": row["held_at"],
                "held_at_s": row["held_at_s"], "hold_event_id": row["hold_event_id"],
                "reason_code": row["reason_code"], "reason_detail": row["reason_detail"],
                "maker": row["maker"], "maker_at": row["maker_at"], "sanctions": None, "fraud": None,
                "parties": None}
        for verdict in self.db.execute(
                "SELECT event_type, body, details FROM timeline WHERE payment_id=?"
                " AND event_type IN ('SanctionsScreened', 'FraudScored') ORDER BY occurred_at, rowid",
                (row["payment_id"],)):
            name, fields = _REVIEW_VERDICT_FIELDS[verdict["event_type"]]
            try:
                payload = self._decode(verdict["body"]).payload if verdict["body"] else orjson.loads(verdict["details"])
            except UndecodableEvent:
                continue
            held[name] = {field: payload.get(field) for field in fields}
        snapshot = self.snapshot(row["payment_id"])
        if snapshot is not None:
            payment = snapshot[0]
            held["parties"] = {"debtor": {"name": payment.debtor.name}, "creditor": {"name": payment.creditor.name}}
        return held

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
            for r in self.db.execute(f"SELECT status, count(*) AS n FROM payments WHERE payment_id IN ({marks})"  # nosec B608
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
        self.store = TrackingStore(data_dir / "tracking.sqlite", codec=codec)
        self.codec = codec
        self.cycle_codec = cycle_codec

    def decode_message(self, message) -> TrackedEvent | CycleEvent:
        """Payment events and cycle events arrive on the same consumer. The writer
        schema's fingerprint says which family wrote the bytes, so a cycle event is
        recognised even with a missing or wrong `event_type` header (whose mismatch
        with the payload the codec then refuses)."""
        value = message.value() or b""
        if self.cycle_codec.knows(value):
            return self.cycle_codec.decode(value)
        headers = {key: raw.decode("utf-8", "replace") for key, raw in message.headers() or () if raw is not None}
        return TrackedEvent.from_message(value, headers, self.codec)

    def decode(self, value: bytes, event_type: str | None = None) -> Event | CycleEvent:
        """Bytes alone (no headers): a cycle event, or a fully decoded payment event."""
        if self.cycle_codec.knows(value):
            return self.cycle_codec.decode(value)
        return self.codec.decode(value)

    def handle_batch(self, events: Sequence[Event | TrackedEvent | CycleEvent], now: datetime) -> list[Event]:
        payment_events = [event for event in events if isinstance(event, (Event, TrackedEvent))]
        cycle_events = [event for event in events if isinstance(event, CycleEvent)]
        if payment_events:
            self.store.record(payment_events)
        if cycle_events:
            self.store.record_cycle_events(cycle_events)
        return []

    def close(self) -> None:
        self.store.close()
