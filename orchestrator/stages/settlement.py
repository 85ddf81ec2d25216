"""Settlement: assign each executed payment to its rail's clearing cycle.

Instant rails settle gross in real time (RTGS): the payment is final when the clearing
system accepts it, and the cycle is the rail's business day, kept for reporting. Rails
that net settle in cycles of `settlement.cycle_length_s`; the stage keeps each cycle's
net position per counterparty agent, which the cycle close and reconciliation read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.events import Event, EventCodec
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import RailConfig, TenantConfig


def cycle_of(rail: RailConfig, accepted_at: datetime) -> tuple[str, str]:
    """(cycle id, settlement date) of a payment accepted at `accepted_at` (pure)."""
    accepted_at = accepted_at.astimezone(UTC)
    settlement_date = accepted_at.date().isoformat()
    if rail.settlement.mode == "rtgs":
        return f"{rail.name}:{settlement_date}:rtgs", settlement_date
    length_s = rail.settlement.cycle_length_s
    start_s = int(accepted_at.timestamp()) // length_s * length_s
    start = datetime.fromtimestamp(start_s, UTC)
    return f"{rail.name}:{start.strftime('%Y%m%dT%H%M%S')}:net{length_s}", settlement_date


def counterparty_of(event: Event) -> str:
    agent = event.payment.creditor.agent
    return agent.bic or agent.member_id or event.payment.creditor.account.bank_code or "UNKNOWN"


class SettlementStage(Stage):
    name = "settlement"
    input_topics = ("executed",)
    input_event_types = frozenset({"PaymentExecuted"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, codec: EventCodec) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.db = open_sqlite(data_dir / "settlement.sqlite")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS settled_payments (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL,
              counterparty TEXT NOT NULL, currency TEXT NOT NULL, amount_minor INTEGER NOT NULL,
              event BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS net_positions (
              tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL, counterparty TEXT NOT NULL,
              currency TEXT NOT NULL, payments INTEGER NOT NULL, sent_minor INTEGER NOT NULL,
              PRIMARY KEY (tenant_id, cycle_id, counterparty, currency));
            """
        )

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        existing = self.db.execute("SELECT event FROM settled_payments WHERE payment_id=?", (event.payment_id,)).fetchone()
        if existing is not None:
            return [self.codec.decode(existing["event"])]
        rail = tenant.rails_by_name[event.payload["rail"]]
        cycle_id, settlement_date = cycle_of(rail, event.payload["accepted_at"])
        counterparty = counterparty_of(event)
        payment = event.payment
        settled = self.emit(event, "PaymentSettled", {
            "rail": rail.name, "cycle_id": cycle_id, "settlement_mode": rail.settlement.mode,
            "settlement_date": settlement_date}, now)
        self.db.execute("INSERT INTO settled_payments VALUES (?,?,?,?,?,?,?)",
                        (payment.payment_id, payment.tenant_id, cycle_id, counterparty, payment.currency,
                         payment.amount_minor, self.codec.encode(settled)))
        self.db.execute(
            "INSERT INTO net_positions VALUES (?,?,?,?,1,?) ON CONFLICT DO UPDATE SET"
            " payments=payments+1, sent_minor=sent_minor+excluded.sent_minor",
            (payment.tenant_id, cycle_id, counterparty, payment.currency, payment.amount_minor))
        return [settled]

    def close(self) -> None:
        self.db.close()
