"""Sanctions screening of debtor and creditor names against the tenant's watchlist.

Stateless: the verdict depends only on the payment and the list, so a redelivered
event gets the same verdict. Routing, not this stage, turns a hit into a rejection,
because only routing sees both screening verdicts together.
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.events import Event
from orchestrator.screening import Watchlist, screen_payment
from orchestrator.stages.base import Stage
from orchestrator.tenants import TenantConfig


class SanctionsStage(Stage):
    name = "sanctions"
    input_topics = ("initiated",)
    input_event_types = frozenset({"PaymentInitiated"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str) -> None:
        super().__init__(tenants, region)
        # Built once per process: normalising the list per payment would dominate the cost.
        self.watchlists = {tid: Watchlist(cfg.sanctions) for tid, cfg in tenants.items()}

    def handle(self, event: Event, now: datetime) -> list[Event]:
        self.tenant(event)
        verdict = screen_payment(event.payment, self.watchlists[event.tenant_id])
        payload = {
            "outcome": verdict.outcome,
            "best_score": float(verdict.best_score),
            "matched_list": verdict.matched_list,
            "matched_entry_id": verdict.matched_entry_id,
            "matched_party": verdict.matched_party,
        }
        return [self.emit(event, "SanctionsScreened", payload, now)]
