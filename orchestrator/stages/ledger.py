"""Ledger: double-entry, two-phase transfers, idempotent on the payment id.

A routed payment reserves its amount (a pending debit of the debtor's account and a
pending credit of the rail's clearing account) while execution runs concurrently; the
execution result then posts the pending amounts or releases them. Every change writes
balanced journal entries, so debits equal credits for pending and for posted amounts
separately, at every commit.

The events of a payment arrive on two topics (routed, executed) with no order between
them, so the transfer is a small state machine that accepts either first. Each event it
emits is stored with the transfer and re-emitted unchanged on redelivery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from orchestrator.domain import Payment
from orchestrator.events import Event, EventCodec
from orchestrator.reasons import ReasonCode
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import TenantConfig

RESERVED, POSTED, RELEASED, REJECTED = "RESERVED", "POSTED", "RELEASED", "REJECTED"


class LedgerInvariantError(RuntimeError):
    """An event that contradicts what the ledger already recorded for the payment."""


def customer_account_id(payment: Payment, party: str) -> str:
    account = getattr(payment, party).account
    ident = account.iban or f"{account.bank_code}/{account.number}"
    # Account ids appear in events and logs; a digest keeps account numbers out of both.
    digest = hashlib.sha256(f"{payment.tenant_id}|{ident}".encode()).hexdigest()[:20]
    return f"cust:{payment.tenant_id}:{payment.currency}:{digest}"


def clearing_account_id(tenant_id: str, rail: str, currency: str) -> str:
    return f"clearing:{tenant_id}:{rail}:{currency}"


class LedgerStore:
    """The ledger's tables; every method runs inside the caller's transaction."""

    def __init__(self, path: Path) -> None:
        self.db = open_sqlite(path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS accounts (
              account_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, currency TEXT NOT NULL,
              kind TEXT NOT NULL, credit_limit_minor INTEGER,
              debits_pending INTEGER NOT NULL DEFAULT 0, credits_pending INTEGER NOT NULL DEFAULT 0,
              debits_posted INTEGER NOT NULL DEFAULT 0, credits_posted INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS transfers (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, currency TEXT NOT NULL,
              amount_minor INTEGER NOT NULL, debit_account TEXT NOT NULL, credit_account TEXT NOT NULL,
              state TEXT NOT NULL, reserved_event BLOB, final_event BLOB);
            CREATE TABLE IF NOT EXISTS entries (
              entry_id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, account_id TEXT NOT NULL,
              side TEXT NOT NULL CHECK (side IN ('D','C')), phase TEXT NOT NULL,
              amount_minor INTEGER NOT NULL, at_s REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS entries_by_payment ON entries (payment_id);
            """
        )

    def ensure_account(self, account_id: str, tenant_id: str, currency: str, kind: str, limit: int | None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO accounts (account_id, tenant_id, currency, kind, credit_limit_minor)"
            " VALUES (?,?,?,?,?)", (account_id, tenant_id, currency, kind, limit))

    def account(self, account_id: str):
        return self.db.execute("SELECT * FROM accounts WHERE account_id=?", (account_id,)).fetchone()

    def transfer(self, payment_id: str):
        return self.db.execute("SELECT * FROM transfers WHERE payment_id=?", (payment_id,)).fetchone()

    def journal(self, payment_id: str, phase: str, debit: str, credit: str, amount: int, at_s: float) -> None:
        """Two balanced entries, keyed so a replayed posting cannot write them twice."""
        for side, account_id in (("D", debit), ("C", credit)):
            self.db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?)",
                            (f"{payment_id}:{phase}:{side}", payment_id, account_id, side, phase, amount, at_s))

    def move(self, account_id: str, column: str, delta: int) -> None:
        self.db.execute(f"UPDATE accounts SET {column}={column}+? WHERE account_id=?", (delta, account_id))


class LedgerStage(Stage):
    name = "ledger"
    input_topics = ("routed", "executed")
    input_event_types = frozenset({"PaymentRouted", "PaymentExecuted", "PaymentFailed"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, codec: EventCodec) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.store = LedgerStore(data_dir / "ledger.sqlite")

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.store.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        transfer = self.store.transfer(event.payment_id)
        if transfer is not None and transfer["amount_minor"] != event.payment.amount_minor:
            raise LedgerInvariantError(f"payment {event.payment_id} arrived with another amount than recorded")
        if event.event_type == "PaymentRouted":
            return self._on_routed(event, tenant, transfer, now)
        if event.event_type == "PaymentExecuted":
            return self._on_executed(event, tenant, transfer, now)
        return self._on_failed(event, tenant, transfer, now)

    def _accounts(self, event: Event, tenant: TenantConfig, rail: str) -> tuple[str, str]:
        payment = event.payment
        debit = customer_account_id(payment, "debtor")
        credit = clearing_account_id(tenant.tenant_id, rail, payment.currency)
        limit = tenant.limit_minor(tenant.funding.credit_limit, payment.currency) if tenant.funding.open_on_first_use else 0
        self.store.ensure_account(debit, tenant.tenant_id, payment.currency, "customer", limit)
        self.store.ensure_account(credit, tenant.tenant_id, payment.currency, "clearing", None)
        return debit, credit

    def _create_transfer(self, event: Event, debit: str, credit: str, state: str) -> None:
        self.store.db.execute(
            "INSERT INTO transfers (payment_id, tenant_id, currency, amount_minor, debit_account, credit_account, state)"
            " VALUES (?,?,?,?,?,?,?)",
            (event.payment_id, event.tenant_id, event.payment.currency, event.payment.amount_minor, debit, credit, state))

    def _store_event(self, payment_id: str, column: str, emitted: Event, state: str) -> Event:
        self.store.db.execute(f"UPDATE transfers SET {column}=?, state=? WHERE payment_id=?",
                              (self.codec.encode(emitted), state, payment_id))
        return emitted

    def _on_routed(self, event: Event, tenant: TenantConfig, transfer, now: datetime) -> list[Event]:
        if transfer is not None:
            if transfer["state"] == RESERVED:
                return [self.codec.decode(transfer["reserved_event"])]
            if transfer["state"] == REJECTED:
                return [self.codec.decode(transfer["final_event"])]
            return []  # the execution result came first and already settled the transfer
        amount = event.payment.amount_minor
        debit, credit = self._accounts(event, tenant, event.payload["rail"])
        account = self.store.account(debit)
        available = (account["credit_limit_minor"] or 0) + account["credits_posted"] - account["debits_posted"] \
            - account["debits_pending"]
        if amount > available:
            self._create_transfer(event, debit, credit, REJECTED)
            code = ReasonCode.insufficient_funds
            rejected = self.emit(event, "PaymentRejected", {
                "reason_code": code.value, "iso_reason_code": code.iso_code,
                "reason_detail": "debtor account has insufficient available funds", "field": None}, now)
            return [self._store_event(event.payment_id, "final_event", rejected, REJECTED)]
        self._create_transfer(event, debit, credit, RESERVED)
        self.store.move(debit, "debits_pending", amount)
        self.store.move(credit, "credits_pending", amount)
        self.store.journal(event.payment_id, "reserve", debit, credit, amount, now.timestamp())
        reserved = self.emit(event, "FundsReserved", {
            "account_id": debit, "amount_minor": amount, "available_after_minor": available - amount}, now)
        return [self._store_event(event.payment_id, "reserved_event", reserved, RESERVED)]

    def _on_executed(self, event: Event, tenant: TenantConfig, transfer, now: datetime) -> list[Event]:
        amount = event.payment.amount_minor
        if transfer is None:
            debit, credit = self._accounts(event, tenant, event.payload["rail"])
            self._create_transfer(event, debit, credit, POSTED)
        else:
            state = transfer["state"]
            if state == POSTED:
                return [self.codec.decode(transfer["final_event"])]
            if state == RELEASED:
                raise LedgerInvariantError(f"payment {event.payment_id} executed after its funds were released")
            debit, credit = transfer["debit_account"], transfer["credit_account"]
            if state == RESERVED:
                self._void_reservation(event.payment_id, debit, credit, amount, now)
            # state REJECTED: the clearing system moved the money although funds were
            # short; the ledger must record what happened, and the account goes past its line.
        self.store.move(debit, "debits_posted", amount)
        self.store.move(credit, "credits_posted", amount)
        self.store.journal(event.payment_id, "post", debit, credit, amount, now.timestamp())
        posted = self.emit(event, "FundsPosted", {"debit_account_id": debit, "credit_account_id": credit,
                                                  "amount_minor": amount}, now)
        return [self._store_event(event.payment_id, "final_event", posted, POSTED)]

    def _on_failed(self, event: Event, tenant: TenantConfig, transfer, now: datetime) -> list[Event]:
        amount = event.payment.amount_minor
        released_amount = 0
        if transfer is None:
            debit, credit = self._accounts(event, tenant, event.payload["rail"])
            self._create_transfer(event, debit, credit, RELEASED)
        else:
            state = transfer["state"]
            if state == RELEASED:
                return [self.codec.decode(transfer["final_event"])]
            if state == POSTED:
                raise LedgerInvariantError(f"payment {event.payment_id} failed after its funds were posted")
            if state == REJECTED:
                return [self.codec.decode(transfer["final_event"])]
            debit, credit = transfer["debit_account"], transfer["credit_account"]
            self._void_reservation(event.payment_id, debit, credit, amount, now)
            released_amount = amount
        released = self.emit(event, "FundsReleased", {"account_id": debit, "amount_minor": released_amount,
                                                      "reason_code": event.payload["reason_code"]}, now)
        return [self._store_event(event.payment_id, "final_event", released, RELEASED)]

    def _void_reservation(self, payment_id: str, debit: str, credit: str, amount: int, now: datetime) -> None:
        """Undo the pending amounts with balanced entries (the reverse of the reservation)."""
        self.store.move(debit, "debits_pending", -amount)
        self.store.move(credit, "credits_pending", -amount)
        self.store.journal(payment_id, "reserve_void", credit, debit, amount, now.timestamp())

    def close(self) -> None:
        self.store.db.close()
