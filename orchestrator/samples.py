"""Sample credit transfers that settle in the default set-up, one pair per rail.

Used by `payorch demo`, the benchmark and the tests. Account values are well-formed
public test values (check digits valid); the names are made up.
"""

from __future__ import annotations

import itertools
import uuid
from functools import lru_cache
from collections.abc import Iterator

from schwifty import IBAN

from orchestrator.validation import iban_problem

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
            "remittance_information": "PO 7781",
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


def sample_body(tenant: str, index: int = 0, *, amount: str | None = None, unique: bool = True,
                debtor_variant: int | None = None) -> dict:
    """One JSON credit transfer for the tenant; `index` picks the rail round-robin.

    `debtor_variant` gives the payment another (valid) debtor account, so load spread
    over many debtors does not trip the fraud velocity rules the way one busy account
    rightly does.
    """
    label, template, default_amount = _TEMPLATES[tenant][index % len(_TEMPLATES[tenant])]
    body = {**template, "amount": amount or default_amount}
    if debtor_variant is not None:
        account = dict(_debtor_account(tuple(sorted(template["debtor"]["account"].items())),
                                       debtor_variant % DEBTOR_VARIANTS))
        body["debtor"] = {**template["debtor"], "account": account}
    if unique:
        body["end_to_end_id"] = f"E2E-{uuid.uuid4().hex[:24].upper()}"
    return body


# Distinct debtor accounts per rail in generated load: enough that no account nears the
# fraud velocity limits at thousands of payments per second, few enough to cache.
DEBTOR_VARIANTS = 997
IBAN_DEBTOR_VARIANTS = 101


@lru_cache(maxsize=16 * DEBTOR_VARIANTS)
def _debtor_account(account_items: tuple, variant: int) -> tuple:
    return tuple(sorted(_vary_account(dict(account_items), variant).items()))


def _vary_account(account: dict, variant: int) -> dict:
    if "iban" in account:
        # Generating a German IBAN with valid national check digits costs ~1 ms a try,
        # so IBAN debtors cycle through fewer variants; still far below the velocity limits.
        variant %= IBAN_DEBTOR_VARIANTS
        iban = IBAN(account["iban"])
        code = iban.account_code
        # Same bank, another account: vary the last digits until the national check digits
        # (Germany has them) hold as well; about one number in ten passes.
        for attempt in range(variant * 16 % 1_000_000, variant * 16 % 1_000_000 + 1_000):
            candidate = str(IBAN.generate(iban.country_code, bank_code=iban.bank_code + iban.branch_code,
                                          account_code=code[: len(code) - 6] + f"{attempt % 1_000_000:06d}"))
            if iban_problem(candidate) is None:
                return {"iban": candidate}
        return account
    number = account["number"]
    if number == account.get("bank_code") and len(number) == 18:
        # A CLABE is both the account and its bank code: vary it and recompute its check digit.
        body = number[:11] + f"{variant % 1_000_000:06d}"
        total = sum((int(ch) * weight) % 10 for ch, weight in zip(body, (3, 7, 1) * 6))
        clabe = body + str((10 - total % 10) % 10)
        return {"number": clabe, "bank_code": clabe}
    return {**account, "number": number[: max(1, len(number) - 6)] + f"{variant % 1_000_000:06d}"}


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
        yield tenant, sample_body(tenant, index // len(TENANTS), debtor_variant=index)
