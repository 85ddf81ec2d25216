"""Initiation: validate, deduplicate and enrich a received payment.

The decision (`decide_initiation`) is pure. The stage keeps one piece of state: which
end-to-end ids each debtor account has already used within the tenant's duplicate
window, so a client that sends the same instruction twice under two idempotency keys
still moves money once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from orchestrator.domain import Payment
from orchestrator.events import Event
from orchestrator.reasons import ReasonCode
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import TenantConfig
from orchestrator.validation import ValidationProblem, normalise_payment, select_rail, validate_payment


# End-to-end ids that mean "no reference" (ISO 20022 / EPC usage), never a duplicate key.
NO_REFERENCE_END_TO_END_IDS = frozenset({"NOTPROVIDED"})


def debtor_key(payment: Payment) -> str:
    account = payment.debtor.account
    return account.iban or f"{account.bank_code or ''}/{account.number or ''}"


def decide_initiation(
    payment: Payment, tenant: TenantConfig, *, today, duplicate_of: str | None
) -> tuple[Payment, list[ValidationProblem], str | None]:
    """(normalised payment, problems, rail hint). No problems means initiated."""
    normalised = normalise_payment(payment)
    problems = validate_payment(normalised, tenant, today=today)
    if not problems and duplicate_of is not None:
        problems = [ValidationProblem(ReasonCode.duplicate_payment, "end_to_end_id",
                                      f"end-to-end id already used by payment {duplicate_of}")]
    rail = select_rail(normalised, tenant) if not problems else None
    return normalised, problems, rail.name if rail else None


def rejection_payload(problem: ValidationProblem) -> dict:
    return {
        "reason_code": problem.reason_code.value,
        "iso_reason_code": problem.reason_code.iso_code,
        "reason_detail": problem.detail,
        "field": problem.field,
    }


class InitiationStage(Stage):
    name = "initiation"
    input_topics = ("received",)
    input_event_types = frozenset({"PaymentReceived"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path) -> None:
        super().__init__(tenants, region)
        self.db = open_sqlite(data_dir / "initiation.sqlite")
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS seen_instructions (
                 tenant_id TEXT NOT NULL, debtor_key TEXT NOT NULL, end_to_end_id TEXT NOT NULL,
                 payment_id TEXT NOT NULL, first_seen_s REAL NOT NULL,
                 PRIMARY KEY (tenant_id, debtor_key, end_to_end_id))"""
        )

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        outputs = []
        with transaction(self.db):
            for event in events:
                outputs.extend(self.handle(event, now))
        return outputs

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        payment = normalise_payment(event.payment)
        today = event.occurred_at.date()
        normalised, problems, rail_hint = decide_initiation(payment, tenant, today=today, duplicate_of=None)
        if not problems:
            # Only a valid instruction claims its end-to-end id: a rejected one must not
            # block the corrected payment that follows it.
            duplicate_of = self._claim_instruction(payment, tenant, event.occurred_at.timestamp())
            if duplicate_of is not None:
                normalised, problems, rail_hint = decide_initiation(payment, tenant, today=today,
                                                                    duplicate_of=duplicate_of)
        if problems:
            return [self.emit(event, "PaymentRejected", rejection_payload(problems[0]), now, payment=normalised)]
        return [self.emit(event, "PaymentInitiated", {"rail_hint": rail_hint}, now, payment=normalised)]

    def _claim_instruction(self, payment: Payment, tenant: TenantConfig, at_s: float) -> str | None:
        """Record the instruction; return the other payment id that already holds it.

        "NOTPROVIDED" is ISO 20022's placeholder for "the payer gave no reference": it
        identifies nothing, so it cannot make two payments duplicates of each other.
        """
        if payment.end_to_end_id.strip().upper() in NO_REFERENCE_END_TO_END_IDS:
            return None
        key = (payment.tenant_id, debtor_key(payment), payment.end_to_end_id)
        row = self.db.execute(
            "SELECT payment_id, first_seen_s FROM seen_instructions"
            " WHERE tenant_id=? AND debtor_key=? AND end_to_end_id=?", key
        ).fetchone()
        if row is not None:
            if row["payment_id"] == payment.payment_id:
                return None  # a redelivery of the same payment, not a duplicate
            if at_s - row["first_seen_s"] < tenant.duplicate_window_s:
                return row["payment_id"]
        self.db.execute(
            "INSERT OR REPLACE INTO seen_instructions VALUES (?,?,?,?,?)",
            (*key, payment.payment_id, at_s),
        )
        return None

    def close(self) -> None:
        self.db.close()
