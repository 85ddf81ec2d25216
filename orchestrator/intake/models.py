"""The JSON credit transfer as clients send it, and its mapping to the canonical payment.

Types are strict: an amount must be a decimal string, because a JSON number passes
through binary floating point in most clients before it reaches us.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, StringConstraints, field_validator

from orchestrator.domain import Account, Agent, MoneyError, Party, Payment, to_minor_units
from orchestrator.reviews import COMMENT_MAX_CHARS

# C0 and C1 control characters (U+0085 among them) and the Unicode line and paragraph
# separators: none belongs in a name, a reference or remittance text, and each can break
# a fixed-width or line-based format downstream (camt.054, statements, logs).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The one accepted notation of an amount: digits, optionally a point and more digits. No
# spaces, no plus sign, no leading zeros, nothing before or after the point left empty
# (" 125.50 ", "+5", "007", ".5" and "5." are refused). A leading minus parses, so a
# negative amount is refused for what it is (amount_not_positive).
_CANONICAL_AMOUNT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        if isinstance(value, str) and _CONTROL_CHARACTERS.search(value):
            raise ValueError("control characters and line separators are not allowed")
        return value


class AccountIn(_In):
    iban: StrictStr | None = Field(default=None, max_length=42)
    number: StrictStr | None = Field(default=None, max_length=34)
    bank_code: StrictStr | None = Field(default=None, max_length=35)


class AgentIn(_In):
    bic: StrictStr | None = Field(default=None, max_length=11)
    member_id: StrictStr | None = Field(default=None, max_length=35)


class PartyIn(_In):
    name: StrictStr = Field(min_length=1, max_length=140)
    account: AccountIn
    agent: AgentIn | None = None
    country: StrictStr | None = Field(default=None, pattern=r"^[A-Z]{2}$")


class CreditTransferIn(_In):
    end_to_end_id: StrictStr | None = Field(default=None, min_length=1, max_length=35)
    # Not stripped: an amount with spaces around it is not in the canonical form.
    amount: Annotated[str, Strict(), StringConstraints(strip_whitespace=False)] = Field(
        min_length=1, max_length=32, description="Decimal string, e.g. \"125.50\"")
    currency: StrictStr = Field(pattern=r"^[A-Z]{3}$")
    debtor: PartyIn
    creditor: PartyIn
    remittance_information: StrictStr | None = Field(default=None, max_length=140)
    requested_execution_date: StrictStr | None = None
    purpose_code: StrictStr | None = Field(default=None, pattern=r"^[A-Z0-9]{1,4}$")

    @field_validator("requested_execution_date")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)
        return value

    def to_payment(self, payment_id: str, tenant_id: str) -> Payment:
        """Raises MoneyError (with a reason code) for amounts the currency cannot hold."""
        if not _CANONICAL_AMOUNT.fullmatch(self.amount):
            raise MoneyError("invalid_amount", f"amount {self.amount[:32]!r} is not written as digits with an "
                             "optional point and digits, e.g. \"125.50\" (no spaces, signs or leading zeros)")
        amount_minor = to_minor_units(self.amount, self.currency)
        return Payment(
            payment_id=payment_id,
            tenant_id=tenant_id,
            end_to_end_id=self.end_to_end_id or f"PO{payment_id.replace('-', '')[:26].upper()}",
            amount_minor=amount_minor,
            currency=self.currency,
            debtor=_party(self.debtor),
            creditor=_party(self.creditor),
            remittance_information=self.remittance_information,
            requested_execution_date=self.requested_execution_date,
            source_format="json",
            purpose_code=self.purpose_code,
        )


class ReviewIn(_In):
    """A reviewer's decision on a held payment (POST /v1/payments/{id}/review)."""

    decision: Literal["approve", "reject"]
    # Why, in the reviewer's words: required, so that every release or refusal on the
    # timeline says why; text without control characters, as every text field here.
    comment: StrictStr = Field(min_length=1, max_length=COMMENT_MAX_CHARS)


def _party(party: PartyIn) -> Party:
    agent = party.agent
    return Party(
        name=party.name,
        account=Account(iban=party.account.iban, number=party.account.number, bank_code=party.account.bank_code),
        # Agent() directly: an empty AgentIn was a pydantic model built per missing
        # agent only to be read back, on every payment of a rail without BICs.
        agent=Agent(bic=agent.bic, member_id=agent.member_id) if agent is not None else Agent(),
        country=party.country,
    )
