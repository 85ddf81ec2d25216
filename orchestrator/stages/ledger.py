"""Ledger: double-entry, two-phase transfers, idempotent on the payment id.

A routed payment reserves its amount (a pending debit of the debtor's account and a
pending credit of the rail's clearing account) while execution runs concurrently; the
execution result then posts the pending amounts or releases them. Every change writes
balanced journal entries, so debits equal credits for pending and for posted amounts
separately, at every commit.

The events of a payment arrive on two topics (routed, executed) with no order between
them, so the transfer is a small state machine that accepts either first. Each event it
emits is stored with the transfer and re-emitted unchanged on redelivery.

This module only decides. What it decides for one event is one `LedgerChange`, which the
store (`orchestrator/ledger_store.py`: SQLite or DynamoDB) applies atomically, refusing it
if the transfer's state, the leg's entries or the debtor's available funds moved since the
decision read them. The stage then reads and decides again, so a redelivery that lost a
race re-emits the stored event instead of posting twice, on every backend alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime

from orchestrator.domain import Payment
from orchestrator.events import Event, EventCodec
from orchestrator.ledger_store import (
    POSTED,
    REJECTED,
    RELEASED,
    RESERVED,
    BalanceMove,
    Entry,
    FundsCheck,
    LedgerChange,
    LedgerConflict,
    LedgerStore,
    Transfer,
)
from orchestrator.reasons import ReasonCode
from orchestrator.retries import TransientError
from orchestrator.stages.base import Stage
from orchestrator.tenants import TenantConfig

__all__ = ["LedgerStage", "LedgerInvariantError", "LedgerContention", "customer_account_id",
           "clearing_account_id", "RESERVED", "POSTED", "RELEASED", "REJECTED"]

log = logging.getLogger("payorch.ledger")

# Decisions per event before giving up. A conflict needs another writer to have changed
# the same transfer or account in the few ms between read and write; after a redelivery
# race the second decision is a plain re-emit, so more than a couple of rounds means a
# hot account under heavy contention, not a loop.
_MAX_DECISIONS = 8


class LedgerInvariantError(RuntimeError):
    """An event that contradicts what the ledger already recorded for the payment."""


def account_identifier(account) -> str:
    """An IBAN, or "<bank code>/<number>": how tenant files name a customer account."""
    return account.iban or f"{account.bank_code}/{account.number}"


def customer_account_id(payment: Payment, party: str) -> str:
    ident = account_identifier(getattr(payment, party).account)
    # Account ids appear in events and logs; a digest keeps account numbers out of both.
    digest = hashlib.sha256(f"{payment.tenant_id}|{ident}".encode()).hexdigest()[:20]
    return f"cust:{payment.tenant_id}:{payment.currency}:{digest}"


def clearing_account_id(tenant_id: str, rail: str, currency: str) -> str:
    return f"clearing:{tenant_id}:{rail}:{currency}"


class LedgerContention(TransientError):
    """Every decision for an event lost a race; nothing was written, so the runtime retries
    the event later (retry topics) instead of dead-lettering it."""


Decision = tuple[list[Event], LedgerChange | None]


class LedgerStage(Stage):
    name = "ledger"
    input_topics = ("routed", "executed")
    input_event_types = frozenset({"PaymentRouted", "PaymentExecuted", "PaymentFailed"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, store: LedgerStore, codec: EventCodec) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.store = store

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with self.store.batch():
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        for _ in range(_MAX_DECISIONS):
            transfer = self.store.transfer(event.payment_id)
            if transfer is not None and transfer.amount_minor != event.payment.amount_minor:
                raise LedgerInvariantError(f"payment {event.payment_id} arrived with another amount than recorded")
            outputs, change = self._decide(event, tenant, transfer, now)
            if change is None:
                return outputs
            try:
                self.store.apply(change)
            except LedgerConflict as conflict:
                # Another delivery (or another payment of the same debtor) changed what this
                # decision read; nothing was written, so read again and decide again.
                log.info("ledger decision for %s lost a race, deciding again: %s", event.event_type, conflict,
                         extra={**event.log_context(), "stage": self.name})
                continue
            return outputs
        raise LedgerContention(f"payment {event.payment_id}: {_MAX_DECISIONS} decisions in a row lost a race")

    def _decide(self, event: Event, tenant: TenantConfig, transfer: Transfer | None, now: datetime) -> Decision:
        if event.event_type == "PaymentRouted":
            return self._on_routed(event, tenant, transfer, now)
        if event.event_type == "PaymentExecuted":
            return self._on_executed(event, tenant, transfer, now)
        return self._on_failed(event, tenant, transfer, now)

    def _accounts(self, event: Event, tenant: TenantConfig, rail: str) -> tuple[str, str]:
        payment = event.payment
        debit = customer_account_id(payment, "debtor")
        credit = clearing_account_id(tenant.tenant_id, rail, payment.currency)
        line = tenant.funding.credit_limit_for(account_identifier(payment.debtor.account))
        limit = tenant.limit_minor(line, payment.currency) if line is not None else 0
        self.store.open_account(debit, tenant.tenant_id, payment.currency, "customer", limit)
        self.store.open_account(credit, tenant.tenant_id, payment.currency, "clearing", None)
        return debit, credit

    @staticmethod
    def _new_transfer(event: Event, debit: str, credit: str, state: str) -> Transfer:
        return Transfer(payment_id=event.payment_id, tenant_id=event.tenant_id, currency=event.payment.currency,
                        amount_minor=event.payment.amount_minor, debit_account=debit, credit_account=credit,
                        state=state)

    def _stored(self, data: bytes | None) -> list[Event]:
        return [self.codec.decode(data)] if data is not None else []

    def _on_routed(self, event: Event, tenant: TenantConfig, transfer: Transfer | None, now: datetime) -> Decision:
        if transfer is not None:
            # A redelivery re-emits what this event caused, even when the result has closed
            # the transfer since: a crash between committing and publishing must not lose the
            # reservation's event. Nothing, if the result came first and no reservation was made.
            return self._stored(_routed_outcome(transfer)), None
        amount = event.payment.amount_minor
        debit, credit = self._accounts(event, tenant, event.payload["rail"])
        account = self.store.account(debit)
        if account is None:
            raise LedgerInvariantError(f"account of payment {event.payment_id} vanished after it was opened")
        available = account.available_minor
        if amount > available:
            code = ReasonCode.insufficient_funds
            rejected = self.emit(event, "PaymentRejected", {
                "reason_code": code.value, "iso_reason_code": code.iso_code,
                "reason_detail": "debtor account has insufficient available funds", "field": None}, now)
            # Kept with the routed event's outcome, so a posting the clearing system forces
            # later (final_event) cannot overwrite it.
            return [rejected], LedgerChange(
                payment_id=event.payment_id, expected_state=None, new_state=REJECTED,
                create=self._new_transfer(event, debit, credit, REJECTED), reserved_event=self.codec.encode(rejected))
        reserved = self.emit(event, "FundsReserved", {
            "account_id": debit, "amount_minor": amount, "available_after_minor": available - amount}, now)
        return [reserved], LedgerChange(
            payment_id=event.payment_id, expected_state=None, new_state=RESERVED,
            create=self._new_transfer(event, debit, credit, RESERVED), reserved_event=self.codec.encode(reserved),
            moves=(BalanceMove(debit, "debits_pending", amount), BalanceMove(credit, "credits_pending", amount)),
            entries=_leg(event.payment_id, "reserve", debit, credit, amount, now),
            # The decision saw enough; the store re-checks it as it writes, because another
            # payment of the same debtor may reserve in between (DynamoDB has no write lock).
            funds_check=FundsCheck(debit, amount))

    def _on_executed(self, event: Event, tenant: TenantConfig, transfer: Transfer | None, now: datetime) -> Decision:
        amount = event.payment.amount_minor
        moves: list[BalanceMove] = []
        entries: list[Entry] = []
        if transfer is None:
            debit, credit = self._accounts(event, tenant, event.payload["rail"])
            expected, create = None, self._new_transfer(event, debit, credit, POSTED)
        else:
            state = transfer.state
            if state == POSTED:
                return self._stored(transfer.final_event), None
            if state == RELEASED:
                raise LedgerInvariantError(f"payment {event.payment_id} executed after its funds were released")
            debit, credit = transfer.debit_account, transfer.credit_account
            expected, create = state, None
            if state == RESERVED:
                moves += _void_moves(debit, credit, amount)
                entries += _leg(event.payment_id, "reserve_void", credit, debit, amount, now)
            # state REJECTED: the clearing system moved the money although funds were
            # short; the ledger must record what happened, and the account goes past its line.
        moves += [BalanceMove(debit, "debits_posted", amount), BalanceMove(credit, "credits_posted", amount)]
        entries += _leg(event.payment_id, "post", debit, credit, amount, now)
        posted = self.emit(event, "FundsPosted", {"debit_account_id": debit, "credit_account_id": credit,
                                                  "amount_minor": amount}, now)
        return [posted], LedgerChange(payment_id=event.payment_id, expected_state=expected, new_state=POSTED,
                                      create=create, final_event=self.codec.encode(posted), moves=tuple(moves),
                                      entries=tuple(entries))

    def _on_failed(self, event: Event, tenant: TenantConfig, transfer: Transfer | None, now: datetime) -> Decision:
        amount = event.payment.amount_minor
        released_amount = 0
        moves: tuple[BalanceMove, ...] = ()
        entries: tuple[Entry, ...] = ()
        if transfer is None:
            debit, credit = self._accounts(event, tenant, event.payload["rail"])
            expected, create = None, self._new_transfer(event, debit, credit, RELEASED)
        else:
            state = transfer.state
            if state == RELEASED:
                return self._stored(transfer.final_event), None
            if state == POSTED:
                raise LedgerInvariantError(f"payment {event.payment_id} failed after its funds were posted")
            if state == REJECTED:
                return self._stored(_routed_outcome(transfer)), None  # the rejection stands
            debit, credit = transfer.debit_account, transfer.credit_account
            expected, create = state, None
            moves = _void_moves(debit, credit, amount)
            entries = _leg(event.payment_id, "reserve_void", credit, debit, amount, now)
            released_amount = amount
        released = self.emit(event, "FundsReleased", {"account_id": debit, "amount_minor": released_amount,
                                                      "reason_code": event.payload["reason_code"]}, now)
        return [released], LedgerChange(payment_id=event.payment_id, expected_state=expected, new_state=RELEASED,
                                        create=create, final_event=self.codec.encode(released), moves=moves,
                                        entries=entries)

    def close(self) -> None:
        self.store.close()


def _routed_outcome(transfer: Transfer) -> bytes | None:
    """The event the routed event caused: FundsReserved, or the insufficient-funds rejection.
    Ledgers written before the rejection moved to `reserved_event` kept it in `final_event`."""
    if transfer.reserved_event is not None:
        return transfer.reserved_event
    return transfer.final_event if transfer.state == REJECTED else None


def _leg(payment_id: str, phase: str, debit: str, credit: str, amount: int, now: datetime) -> tuple[Entry, Entry]:
    """Two balanced entries, keyed (payment, leg, side) so a replayed leg cannot write them twice."""
    at_s = now.timestamp()
    return (Entry(payment_id, phase, "D", debit, amount, at_s), Entry(payment_id, phase, "C", credit, amount, at_s))


def _void_moves(debit: str, credit: str, amount: int) -> tuple[BalanceMove, BalanceMove]:
    """Undo the pending amounts (the reverse of the reservation; its entries go credit to debit)."""
    return BalanceMove(debit, "debits_pending", -amount), BalanceMove(credit, "credits_pending", -amount)
