"""Sample credit transfers that settle in the default set-up, one pair per rail.

Used by `payorch demo`, the benchmark and the tests. Account values are well-formed
public test values (check digits valid); the names are made up.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

# tenant -> list of (label, body without amount/end_to_end_id, amount)
_TEMPLATES: dict[str, list[tuple[str, dict, str]]] = {
    "na": [
        ("FedNow USD", {
            "currency": "USD",
            "debtor": {"name": "Harbor Lane Coffee LLC", "account": {"number": "987654321", "bank_code": "011000015"}},
            "creditor": {"name": "Maple Street Bakery Inc", "account": {"number": "12345678", "bank_code": "021000021"}},
        }, "125.50"),
        ("Lynx CAD", {
            "currency": "CAD",
            "debtor": {"name": "Northern Timber Ltd", "account": {"number": "5551234", "bank_code": "000412345"}},
            "creditor": {"name": "Lakeshore Outfitters", "account": {"number": "7654321", "bank_code": "000387654"}},
        }, "980.00"),
    ],
    "emea": [
        ("SEPA Instant EUR", {
            "currency": "EUR",
            "debtor": {"name": "Muller GmbH", "account": {"iban": "DE89370400440532013000"},
                       "agent": {"bic": "COBADEFFXXX"}},
            "creditor": {"name": "Dupont SA", "account": {"iban": "FR1420041010050500013M02606"},
                         "agent": {"bic": "PSSTFRPPXXX"}},
            "remittance_information": "Invoice 42",
        }, "125.50"),
        ("Faster Payments GBP", {
            "currency": "GBP",
            "debtor": {"name": "Thames Valley Joinery Ltd", "account": {"iban": "GB29NWBK60161331926819"},
                       "agent": {"bic": "NWBKGB2LXXX"}},
            "creditor": {"name": "Pennine Wool Co", "account": {"number": "31926819", "bank_code": "601613"}},
        }, "75.20"),
    ],
    "latam": [
        ("PIX BRL", {
            "currency": "BRL",
            "debtor": {"name": "Padaria Sao Jorge Ltda", "account": {"number": "123456", "bank_code": "60701190"}},
            "creditor": {"name": "Mercado Boa Vista", "account": {"number": "654321", "bank_code": "00000000"}},
        }, "310.00"),
        ("SPEI MXN", {
            "currency": "MXN",
            "debtor": {"name": "Taller Mecanico Reyes", "account": {"number": "002010077777777771",
                                                                    "bank_code": "002010077777777771"}},
            "creditor": {"name": "Ferreteria El Sol", "account": {"number": "002010077777777771",
                                                                  "bank_code": "002010077777777771"}},
        }, "1500.00"),
    ],
    "apac": [
        ("NPP AUD", {
            "currency": "AUD",
            "debtor": {"name": "Bondi Surf Supplies Pty Ltd", "account": {"number": "12345678", "bank_code": "062000"}},
            "creditor": {"name": "Harbourside Florist", "account": {"number": "87654321", "bank_code": "032001"}},
        }, "89.95"),
        ("FAST SGD", {
            "currency": "SGD",
            "debtor": {"name": "Marina Bay Trading Pte Ltd", "account": {"number": "0123456789", "bank_code": "7171"}},
            "creditor": {"name": "Orchard Road Tailors", "account": {"number": "9876543210", "bank_code": "7339"}},
        }, "240.00"),
    ],
}

TENANTS = tuple(_TEMPLATES)


def sample_body(tenant: str, index: int = 0, *, amount: str | None = None, unique: bool = True) -> dict:
    """One JSON credit transfer for the tenant; `index` picks the rail round-robin."""
    label, template, default_amount = _TEMPLATES[tenant][index % len(_TEMPLATES[tenant])]
    body = {**template, "amount": amount or default_amount}
    if unique:
        body["end_to_end_id"] = f"E2E-{uuid.uuid4().hex[:24].upper()}"
    return body


def sample_label(tenant: str, index: int) -> str:
    return _TEMPLATES[tenant][index % len(_TEMPLATES[tenant])][0]


def sample_payments(per_tenant: int) -> Iterator[tuple[str, str, dict]]:
    """(tenant, label, body) for `per_tenant` payments of every tenant, rails alternating."""
    for tenant in TENANTS:
        for index in range(per_tenant):
            yield tenant, sample_label(tenant, index), sample_body(tenant, index)


def round_robin_bodies() -> Iterator[tuple[str, dict]]:
    """An endless mix of (tenant, body) across every tenant and rail, for load tests."""
    for index in itertools.count():
        tenant = TENANTS[index % len(TENANTS)]
        yield tenant, sample_body(tenant, index // len(TENANTS))
