"""Builders shared by the stage unit tests: real tenant files, real events, no broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from orchestrator.events import Event, derive_event, received_event
from orchestrator.intake.models import CreditTransferIn
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from orchestrator.tenants import load_tenants
from orchestrator.validation import normalise_payment

TENANTS = load_tenants(REPO_ROOT / "tenants")
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def received(tenant: str = "emea", index: int = 0, *, amount: str | None = None, **overrides) -> Event:
    body = {**sample_body(tenant, index, amount=amount), **overrides}
    payment = normalise_payment(CreditTransferIn.model_validate(body).to_payment(str(uuid.uuid4()), tenant))
    return received_event(payment, channel="json", idempotency_key=None, occurred_at=T0, region="test")


def follow(cause: Event, event_type: str, stage: str, payload: dict, seconds: float = 0.0) -> Event:
    return derive_event(cause, event_type, stage, payload, occurred_at=at(seconds), region="test")


CLEAR = {"outcome": "CLEAR", "best_score": 10.0, "matched_list": None, "matched_entry_id": None, "matched_party": None}
ALLOW = {"outcome": "ALLOW", "score": 0, "rules_triggered": []}
