"""Fraud scoring: amount rules and velocity per debtor account.

The velocity history lives in SQLite so a restart does not forget the last minute of
a debtor's activity. History is read as of the initiated event's time, so a
redelivered event sees the same history and gets the same score.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from orchestrator.events import Event
from orchestrator.fraud_rules import score_payment
from orchestrator.stages.base import Stage
from orchestrator.stages.initiation import debtor_key
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import TenantConfig

# History older than the longest velocity window of any tenant is useless; pruning runs
# on the stage's tick, in bounded deletes, so it never stalls a batch.
_PRUNE_BATCH_ROWS = 10_000


class FraudStage(Stage):
    name = "fraud"
    input_topics = ("initiated",)
    input_event_types = frozenset({"PaymentInitiated"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path) -> None:
        super().__init__(tenants, region)
        self.db = open_sqlite(data_dir / "fraud.sqlite")
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS debtor_activity (
                 payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, debtor_key TEXT NOT NULL,
                 at_s REAL NOT NULL, amount_minor INTEGER NOT NULL)"""
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS debtor_activity_by_key ON debtor_activity (tenant_id, debtor_key, at_s)")
        # The pruning tick (twice a second) finds the expired rows by time; without this
        # index it scanned the whole window's activity on every tick, idle or not.
        self.db.execute("CREATE INDEX IF NOT EXISTS debtor_activity_by_time ON debtor_activity (at_s)")
        self.max_window_s = max(cfg.fraud.velocity_window_s for cfg in tenants.values())

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        payment = event.payment
        key = debtor_key(payment)
        # The initiated event's time, not the clock, so the same event is judged
        # against the same window whenever it is delivered.
        at_s = event.occurred_at.timestamp()
        window_start_s = at_s - tenant.fraud.velocity_window_s
        history = [
            (row["at_s"], row["amount_minor"])
            for row in self.db.execute(
                "SELECT at_s, amount_minor FROM debtor_activity WHERE tenant_id=? AND debtor_key=?"
                " AND at_s>=? AND at_s<=? AND payment_id<>?",
                (payment.tenant_id, key, window_start_s, at_s, payment.payment_id),
            )
        ]
        verdict = score_payment(payment, tenant.fraud, history, at_s)
        self.db.execute(
            "INSERT OR IGNORE INTO debtor_activity VALUES (?,?,?,?,?)",
            (payment.payment_id, payment.tenant_id, key, at_s, payment.amount_minor),
        )
        payload = {"outcome": verdict.outcome, "score": int(verdict.score), "rules_triggered": list(verdict.rules_triggered)}
        return [self.emit(event, "FraudScored", payload, now)]

    def tick(self, now: datetime) -> list[Event]:
        cutoff_s = now.timestamp() - self.max_window_s - 60
        with transaction(self.db):
            self.db.execute(
                "DELETE FROM debtor_activity WHERE rowid IN"
                " (SELECT rowid FROM debtor_activity WHERE at_s < ? LIMIT ?)",
                (cutoff_s, _PRUNE_BATCH_ROWS),
            )
        return []

    def close(self) -> None:
        self.db.close()
