"""Canonical payments for every rail, shared by the ISO 20022 adapter tests."""

from __future__ import annotations

import uuid

from orchestrator.domain import Account, Agent, Party, Payment, to_minor_units
from orchestrator.tenants import RailConfig

# Digits per bank-code scheme, for realistic sample accounts.
BANK_CODE_DIGITS = {"aba": 9, "sort_code": 6, "bsb": 6, "transit": 9, "ispb": 8, "clabe": 3, "fast_bank_code": 4}


def sample_party(rail: RailConfig, name: str, seed: int) -> Party:
    if rail.creditor_account == "iban":
        return Party(name, Account(iban=f"DE{seed:02d}370400440532013{seed:03d}"), Agent(bic="COBADEFFXXX"), "DE")
    digits = BANK_CODE_DIGITS[rail.bank_code_scheme or "aba"]
    number = ("0" * 18 + str(seed))[-18:] if rail.bank_code_scheme == "clabe" else f"{seed:08d}"
    return Party(name, Account(number=number, bank_code=str(seed % 10) * digits), Agent())


def sample_payment(tenant_id: str, rail: RailConfig, **changes: object) -> Payment:
    payment = Payment(
        payment_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        end_to_end_id="E2E-" + rail.name.upper(),
        amount_minor=to_minor_units("125.50", rail.currencies[0]),
        currency=rail.currencies[0],
        debtor=sample_party(rail, "Alice Example", 11),
        creditor=sample_party(rail, "Bob Example", 22),
        remittance_information="Invoice 42",
        purpose_code="GDDS",
    )
    return payment.replace(**changes)
