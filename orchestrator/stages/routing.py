"""Routing: the fan-in of both screening verdicts, then the choice of rail.

Sanctions and fraud screen the same payment concurrently; routing keeps each verdict
in SQLite until the other arrives (so the join survives a restart), then decides once.
A verdict that never comes is a payment that must not move: after the tenant's
`routing.verdict_timeout_s` the payment is rejected with `screening_verdict_timeout`
(fail closed). The decision is stored, and any redelivered verdict re-emits exactly the
stored decision instead of deciding again.

A held payment (`PaymentHeld`) stays routing's until a review ends it. Routing reads the
reviewers' decisions (`ReviewSubmitted`, which the intake writes to the `reviews` topic),
applies the maker-checker rule (`orchestrator/reviews.py`) to the review state it keeps
in SQLite, and emits what each decision did (`PaymentReviewed`), then `PaymentRouted` once
the payment is released or `PaymentRejected` once it is refused. The outputs of every
submission are stored by its event id and re-emitted on redelivery. A hold that nobody
ended within the tenant's `review.time_limit_s` is rejected by the tick
(`review_time_limit_exceeded`), confirmed through `published` like the verdict timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from orchestrator.domain import Payment
from orchestrator.events import Event, EventCodec
from orchestrator.reasons import ReasonCode
from orchestrator.reviews import APPROVED, AWAITING_CHECKER, REJECTED, ReviewState, decide_review, requires_checker
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import TenantConfig
from orchestrator.validation import select_rail

# The timeout sweep reads at most this many expired joins per tick, so a backlog after
# an outage drains over several ticks instead of one huge transaction. The review time
# limit's sweep is bounded the same way.
_TIMEOUT_SWEEP_MAX_ROWS = 1_000


def _reason(code: ReasonCode, detail: str) -> dict:
    return {"reason_code": code.value, "iso_reason_code": code.iso_code, "reason_detail": detail, "field": None}


def decide_route(sanctions: dict, fraud: dict, payment: Payment, tenant: TenantConfig) -> tuple[str, dict]:
    """(event type, payload) for a payment whose two verdicts are both in."""
    if sanctions["outcome"] == "HIT":
        return "PaymentRejected", _reason(
            ReasonCode.sanctions_match,
            f"{sanctions['matched_party']} name matches {sanctions['matched_list']} entry "
            f"{sanctions['matched_entry_id']} (score {sanctions['best_score']:.0f})",
        )
    if fraud["outcome"] == "BLOCK":
        # The rules that fired stay in the FraudScored event for investigators; the
        # rejection reason, which reaches the payer, does not say which control stopped it.
        return "PaymentRejected", _reason(ReasonCode.fraud_score_too_high,
                                          f"refused by fraud controls (score {fraud['score']})")
    if sanctions["outcome"] == "POSSIBLE_MATCH":
        code = ReasonCode.sanctions_possible_match
        return "PaymentHeld", {
            "reason_code": code.value,
            "reason_detail": f"{sanctions['matched_party']} name resembles {sanctions['matched_list']} entry "
            f"{sanctions['matched_entry_id']} (score {sanctions['best_score']:.0f}); awaiting review",
        }
    if fraud["outcome"] == "REVIEW":
        code = ReasonCode.fraud_review_required
        return "PaymentHeld", {
            "reason_code": code.value,
            "reason_detail": f"fraud score {fraud['score']} ({', '.join(fraud['rules_triggered'])}); awaiting review",
        }
    return route_payment(payment, tenant)


def route_payment(payment: Payment, tenant: TenantConfig) -> tuple[str, dict]:
    """(event type, payload) for a payment cleared to move: its rail, or no rail."""
    rail = select_rail(payment, tenant)
    if rail is None:
        return "PaymentRejected", _reason(ReasonCode.no_rail_for_payment, "no rail of the tenant serves this payment")
    return "PaymentRouted", {
        "rail": rail.name,
        "clearing_system_code": rail.clearing.clearing_system_code,
        "settlement_mode": rail.settlement.mode,
    }


class RoutingStage(Stage):
    name = "routing"
    input_topics = ("screened.sanctions", "screened.fraud", "reviews")
    input_event_types = frozenset({"SanctionsScreened", "FraudScored", "ReviewSubmitted"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, codec: EventCodec) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.db = open_sqlite(data_dir / "routing.sqlite")
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS verdict_joins (
                 payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, first_seen_s REAL NOT NULL,
                 sanctions BLOB, fraud BLOB, decision BLOB)"""
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS verdict_joins_open ON verdict_joins (tenant_id, first_seen_s)"
                        " WHERE decision IS NULL")
        # Timeout decisions come from a timer, not from an input the broker would
        # redeliver; until the runtime confirms they were published, every tick
        # re-emits them (same event ids), so a crash between deciding and publishing
        # cannot strand the payment.
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(verdict_joins)")}
        if "timeout_unpublished" not in columns:
            self.db.execute("ALTER TABLE verdict_joins ADD COLUMN timeout_unpublished INTEGER NOT NULL DEFAULT 0")
        # Every tick looks for them; the index holds only those rows, so an idle tick does
        # not scan every payment routing ever joined.
        self.db.execute("CREATE INDEX IF NOT EXISTS verdict_joins_timeout_unpublished ON verdict_joins (payment_id)"
                        " WHERE timeout_unpublished=1")
        self._open_reviews()

    def _open_reviews(self) -> None:
        """The review state of held payments, and the stored outputs of every submission."""
        existed = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='reviews'").fetchone()
        self.db.executescript(
            """
            -- One row per held payment: why it is held, the maker's approval awaiting its
            -- checker, whether the review has ended, and the time limit's rejection until
            -- the runtime confirms it was published.
            CREATE TABLE IF NOT EXISTS reviews (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, held_at_s REAL NOT NULL,
              hold_reason TEXT NOT NULL, maker TEXT, maker_event_id TEXT,
              closed INTEGER NOT NULL DEFAULT 0, expiry BLOB, expiry_unpublished INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS reviews_open ON reviews (tenant_id, held_at_s) WHERE closed=0;
            CREATE INDEX IF NOT EXISTS reviews_expiry_unpublished ON reviews (payment_id) WHERE expiry_unpublished=1;
            -- What each ReviewSubmitted caused, in order, re-emitted on redelivery.
            CREATE TABLE IF NOT EXISTS review_outputs (
              submission_id TEXT NOT NULL, seq INTEGER NOT NULL, event BLOB NOT NULL,
              PRIMARY KEY (submission_id, seq));
            """
        )
        if existed:
            return
        # A store from before reviews existed: its held payments get their review state
        # now, with their hold time, so the time limit applies to them too (a hold older
        # than the limit is rejected on the first tick: it has waited long enough).
        # Only decisions whose bytes name the type are decoded.
        for row in self.db.execute("SELECT decision FROM verdict_joins WHERE decision IS NOT NULL"
                                   " AND instr(decision, ?) > 0", (b"PaymentHeld",)).fetchall():
            held = self.codec.decode(row["decision"])
            if held.event_type == "PaymentHeld":
                self._open_review(held)

    def _open_review(self, held: Event) -> None:
        self.db.execute("INSERT OR IGNORE INTO reviews (payment_id, tenant_id, held_at_s, hold_reason)"
                        " VALUES (?,?,?,?)",
                        (held.payment_id, held.tenant_id, held.occurred_at.timestamp(), held.payload["reason_code"]))

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        if event.event_type == "ReviewSubmitted":
            return self._review(event, now)
        tenant = self.tenant(event)
        column = "sanctions" if event.event_type == "SanctionsScreened" else "fraud"
        row = self.db.execute("SELECT * FROM verdict_joins WHERE payment_id=?", (event.payment_id,)).fetchone()
        if row is not None and row["decision"] is not None:
            return [self.codec.decode(row["decision"])]
        encoded = self.codec.encode(event)
        if row is None:
            self.db.execute(
                # `column` is "sanctions" or "fraud", chosen by the event type in code (hence the nosec).
                f"INSERT INTO verdict_joins (payment_id, tenant_id, first_seen_s, {column}) VALUES (?,?,?,?)",  # nosec B608
                (event.payment_id, event.tenant_id, now.timestamp(), encoded),
            )
            return []
        # bandit B608: see above.
        self.db.execute(f"UPDATE verdict_joins SET {column}=? WHERE payment_id=?",  # nosec B608
                        (encoded, event.payment_id))
        other = row["fraud"] if column == "sanctions" else row["sanctions"]
        if other is None:
            return []
        sanctions_event = event if column == "sanctions" else self.codec.decode(other)
        fraud_event = event if column == "fraud" else self.codec.decode(other)
        event_type, payload = decide_route(sanctions_event.payload, fraud_event.payload, sanctions_event.payment, tenant)
        # The sanctions verdict is always the cause, whichever verdict came last, so the
        # decision's event id does not depend on arrival order.
        decision = self._record_decision(self.emit(sanctions_event, event_type, payload, now))
        if decision.event_type == "PaymentHeld":
            self._open_review(decision)
        return [decision]

    def _record_decision(self, decision: Event) -> Event:
        self.db.execute("UPDATE verdict_joins SET decision=? WHERE payment_id=?",
                        (self.codec.encode(decision), decision.payment_id))
        return decision

    def _held_event(self, payment_id: str) -> Event | None:
        row = self.db.execute("SELECT decision FROM verdict_joins WHERE payment_id=?", (payment_id,)).fetchone()
        return self.codec.decode(row["decision"]) if row is not None and row["decision"] is not None else None

    def _review(self, submission: Event, now: datetime) -> list[Event]:
        """One reviewer's decision on a held payment: what it did (`PaymentReviewed`),
        then the payment's release or rejection once the review ends with it."""
        stored = self.db.execute("SELECT event FROM review_outputs WHERE submission_id=? ORDER BY seq",
                                 (submission.event_id,)).fetchall()
        if stored:
            return [self.codec.decode(row["event"]) for row in stored]
        tenant = self.tenant(submission)
        row = self.db.execute("SELECT * FROM reviews WHERE payment_id=?", (submission.payment_id,)).fetchone()
        held = self._held_event(submission.payment_id) if row is not None else None
        state = None
        if row is not None and held is not None and row["tenant_id"] == submission.tenant_id:
            state = ReviewState(hold_reason=row["hold_reason"], maker=row["maker"], closed=bool(row["closed"]))
        decision, reviewer = submission.payload["decision"], submission.payload["reviewer"]
        result = decide_review(state, decision, reviewer,
                               checker_required=state is None or requires_checker(state.hold_reason, tenant))
        # Routing's own copy of the payment moves on, whatever the intake read it from.
        payment = held.payment if state is not None else submission.payment
        outputs = [self.emit(submission, "PaymentReviewed", {
            "decision": decision, "reviewer": reviewer, "comment": submission.payload["comment"],
            "review_step": result.step, "outcome": result.outcome, "reason_detail": result.detail,
            "refusal_reason": result.refusal_reason, "maker": result.maker,
        }, now, payment=payment)]
        if result.outcome == AWAITING_CHECKER:
            self.db.execute("UPDATE reviews SET maker=?, maker_event_id=? WHERE payment_id=?",
                            (reviewer, submission.event_id, submission.payment_id))
        elif result.outcome in (APPROVED, REJECTED):
            if result.outcome == APPROVED:
                event_type, payload = route_payment(payment, tenant)
            else:
                event_type, payload = "PaymentRejected", _reason(ReasonCode.review_rejected,
                                                                 f"rejected on review by {reviewer}")
            outputs.append(self.emit(submission, event_type, payload, now, payment=payment))
            self.db.execute("UPDATE reviews SET closed=1 WHERE payment_id=?", (submission.payment_id,))
        self.db.executemany("INSERT INTO review_outputs VALUES (?,?,?)",
                            [(submission.event_id, seq, self.codec.encode(out)) for seq, out in enumerate(outputs)])
        return outputs

    def tick(self, now: datetime) -> list[Event]:
        with transaction(self.db):
            outputs = [self.codec.decode(row["decision"]) for row in self.db.execute(
                "SELECT decision FROM verdict_joins WHERE timeout_unpublished=1 LIMIT ?", (_TIMEOUT_SWEEP_MAX_ROWS,))]
            for tenant_id, tenant in self.tenants.items():
                deadline_s = now.timestamp() - tenant.routing.verdict_timeout_s
                rows = self.db.execute(
                    "SELECT * FROM verdict_joins WHERE tenant_id=? AND decision IS NULL AND first_seen_s<? LIMIT ?",
                    (tenant_id, deadline_s, _TIMEOUT_SWEEP_MAX_ROWS),
                ).fetchall()
                for row in rows:
                    present = row["sanctions"] or row["fraud"]
                    missing = "sanctions" if row["sanctions"] is None else "fraud"
                    cause = self.codec.decode(present)
                    payload = _reason(
                        ReasonCode.screening_verdict_timeout,
                        f"no {missing} verdict within {tenant.routing.verdict_timeout_s}s",
                    )
                    decision = self._record_decision(self.emit(cause, "PaymentRejected", payload, now))
                    self.db.execute("UPDATE verdict_joins SET timeout_unpublished=1 WHERE payment_id=?",
                                    (decision.payment_id,))
                    outputs.append(decision)
            outputs += self._expire_reviews(now)
        return outputs

    def _expire_reviews(self, now: datetime) -> list[Event]:
        """Held payments past their tenant's review time limit end REJECTED; like the
        verdict timeout, each rejection is re-emitted until `published` confirms it."""
        outputs = [self.codec.decode(row["expiry"]) for row in self.db.execute(
            "SELECT expiry FROM reviews WHERE expiry_unpublished=1 LIMIT ?", (_TIMEOUT_SWEEP_MAX_ROWS,))]
        for tenant_id, tenant in self.tenants.items():
            limit_s = tenant.review.time_limit_s
            rows = self.db.execute(
                "SELECT payment_id, maker FROM reviews WHERE tenant_id=? AND closed=0 AND held_at_s<? LIMIT ?",
                (tenant_id, now.timestamp() - limit_s, _TIMEOUT_SWEEP_MAX_ROWS)).fetchall()
            for row in rows:
                held = self._held_event(row["payment_id"])
                unconfirmed = f" (approved by {row['maker']}, never confirmed)" if row["maker"] else ""
                rejected = self.emit(held, "PaymentRejected", _reason(
                    ReasonCode.review_time_limit_exceeded,
                    f"not released by a review within {limit_s} s of its hold{unconfirmed}"), now)
                self.db.execute("UPDATE reviews SET closed=1, expiry=?, expiry_unpublished=1 WHERE payment_id=?",
                                (self.codec.encode(rejected), row["payment_id"]))
                outputs.append(rejected)
        return outputs

    def published(self, outputs: list[Event]) -> None:
        """The runtime confirms timer outputs reached the broker."""
        with transaction(self.db):
            confirmed = [(event.payment_id,) for event in outputs]
            self.db.executemany("UPDATE verdict_joins SET timeout_unpublished=0 WHERE payment_id=?", confirmed)
            self.db.executemany("UPDATE reviews SET expiry_unpublished=0 WHERE payment_id=?", confirmed)

    def close(self) -> None:
        self.db.close()
