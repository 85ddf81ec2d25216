"""Routing: the fan-in of both screening verdicts, then the choice of rail.

Sanctions and fraud screen the same payment concurrently; routing keeps each verdict
in SQLite until the other arrives (so the join survives a restart), then decides once.
A verdict that never comes is a payment that must not move: after the tenant's
`routing.verdict_timeout_s` the payment is rejected with `screening_verdict_timeout`
(fail closed). The decision is stored, and any redelivered verdict re-emits exactly the
stored decision instead of deciding again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from orchestrator.domain import Payment
from orchestrator.events import Event, EventCodec
from orchestrator.reasons import ReasonCode
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import TenantConfig
from orchestrator.validation import select_rail

# The timeout sweep reads at most this many expired joins per tick, so a backlog after
# an outage drains over several ticks instead of one huge transaction.
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
    input_topics = ("screened.sanctions", "screened.fraud")
    input_event_types = frozenset({"SanctionsScreened", "FraudScored"})

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

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
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
        return [self._record_decision(self.emit(sanctions_event, event_type, payload, now))]

    def _record_decision(self, decision: Event) -> Event:
        self.db.execute("UPDATE verdict_joins SET decision=? WHERE payment_id=?",
                        (self.codec.encode(decision), decision.payment_id))
        return decision

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
        return outputs

    def published(self, outputs: list[Event]) -> None:
        """The runtime confirms timer outputs reached the broker."""
        with transaction(self.db):
            self.db.executemany("UPDATE verdict_joins SET timeout_unpublished=0 WHERE payment_id=?",
                                [(event.payment_id,) for event in outputs])

    def close(self) -> None:
        self.db.close()
