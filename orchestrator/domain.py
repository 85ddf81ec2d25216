"""The canonical payment: the one shape every stage and adapter agrees on.

Money is held as an integer count of the currency's minor units (cents, yen, fils) so
that no arithmetic anywhere can round; the decimal string form exists only at the edges
(the REST intake and ISO 20022 documents), converted by `to_minor_units` and
`format_minor_units` with the currency's ISO 4217 exponent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

import iso4217


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in its currency."""

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(detail)
        self.reason_code = reason_code
        self.detail = detail


@lru_cache(maxsize=512)
def currency_exponent(currency: str) -> int:
    """ISO 4217 minor-unit exponent (2 for EUR, 0 for JPY, 3 for BHD).

    Raises MoneyError for a code that is not an active ISO 4217 currency, or for one
    without minor units defined (XAU, XDR ...), which no credit transfer may use.
    """
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise MoneyError("unsupported_currency", f"currency {currency!r} is not an ISO 4217 code")
    try:
        entry = iso4217.Currency(currency)
    except (ValueError, KeyError):
        raise MoneyError("unsupported_currency", f"currency {currency!r} is not an ISO 4217 code") from None
    exponent = entry.exponent
    if exponent is None:
        raise MoneyError("unsupported_currency", f"currency {currency} has no minor unit and cannot be transferred")
    return int(exponent)


def to_minor_units(amount: str, currency: str) -> int:
    """Parse a decimal string into minor units, refusing anything inexact.

    Only plain decimal notation is accepted ("125.50"); exponents, signs other than a
    leading minus, NaN and infinities are refused so that what a client sends is what
    it means.
    """
    exponent = currency_exponent(currency)
    text = amount.strip()
    if not text or any(ch not in "0123456789.-" for ch in text) or text.count(".") > 1:
        raise MoneyError("invalid_amount", f"amount {amount!r} is not a decimal number")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise MoneyError("invalid_amount", f"amount {amount!r} is not a decimal number") from None
    if not value.is_finite():
        raise MoneyError("invalid_amount", f"amount {amount!r} is not a finite number")
    if value <= 0:
        raise MoneyError("amount_not_positive", f"amount {amount} must be greater than zero")
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise MoneyError(
            "amount_precision_exceeded",
            f"amount {amount} has more than {exponent} decimal places allowed for {currency}",
        )
    return int(scaled)


def format_minor_units(amount_minor: int, currency: str) -> str:
    """Render minor units as the currency's canonical decimal string ("125.50")."""
    exponent = currency_exponent(currency)
    value = Decimal(amount_minor).scaleb(-exponent)
    return f"{value:.{exponent}f}"


@dataclass(frozen=True, slots=True)
class Account:
    """An IBAN, or a local account number with the bank code its rail needs."""

    iban: str | None = None
    number: str | None = None
    bank_code: str | None = None

    def masked(self) -> str:
        """A form safe for logs and answers: never the full account number."""
        ident = self.iban or self.number or ""
        return ("*" * max(0, len(ident) - 4)) + ident[-4:]


@dataclass(frozen=True, slots=True)
class Agent:
    """The party's bank: a BIC, and/or its member id in a clearing system."""

    bic: str | None = None
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    account: Account
    agent: Agent = Agent()
    country: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """One credit transfer, as every stage sees it.

    `payment_id` is a UUID and doubles as the ISO 20022 UETR, so a payment keeps one
    identity across our topics and the clearing system.
    """

    payment_id: str
    tenant_id: str
    end_to_end_id: str
    amount_minor: int
    currency: str
    debtor: Party
    creditor: Party
    remittance_information: str | None = None
    requested_execution_date: str | None = None
    source_format: str = "json"
    source_message_id: str | None = None
    purpose_code: str | None = None

    @property
    def amount(self) -> str:
        return format_minor_units(self.amount_minor, self.currency)

    def replace(self, **changes: object) -> "Payment":
        return dataclasses.replace(self, **changes)


def payment_to_record(payment: Payment) -> dict:
    """The Avro record form (see schemas/payment_event.*.avsc)."""
    return {
        "payment_id": payment.payment_id,
        "tenant_id": payment.tenant_id,
        "end_to_end_id": payment.end_to_end_id,
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "debtor": _party_to_record(payment.debtor),
        "creditor": _party_to_record(payment.creditor),
        "remittance_information": payment.remittance_information,
        "requested_execution_date": payment.requested_execution_date,
        "source_format": payment.source_format,
        "source_message_id": payment.source_message_id,
        "purpose_code": payment.purpose_code,
    }


def payment_from_record(record: dict) -> Payment:
    return Payment(
        payment_id=record["payment_id"],
        tenant_id=record["tenant_id"],
        end_to_end_id=record["end_to_end_id"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        debtor=_party_from_record(record["debtor"]),
        creditor=_party_from_record(record["creditor"]),
        remittance_information=record.get("remittance_information"),
        requested_execution_date=record.get("requested_execution_date"),
        source_format=record.get("source_format") or "json",
        source_message_id=record.get("source_message_id"),
        # Absent when the event was written by schema v1; Avro resolution fills None.
        purpose_code=record.get("purpose_code"),
    )


def _party_to_record(party: Party) -> dict:
    return {
        "name": party.name,
        "account": {
            "iban": party.account.iban,
            "number": party.account.number,
            "bank_code": party.account.bank_code,
        },
        "agent": {"bic": party.agent.bic, "member_id": party.agent.member_id},
        "country": party.country,
    }


def _party_from_record(record: dict) -> Party:
    account = record["account"]
    agent = record.get("agent") or {}
    return Party(
        name=record["name"],
        account=Account(iban=account.get("iban"), number=account.get("number"), bank_code=account.get("bank_code")),
        agent=Agent(bic=agent.get("bic"), member_id=agent.get("member_id")),
        country=record.get("country"),
    )
