"""The benchmark's traffic: pre-built payments over every tenant and rail.

Customers are many and distinct (each debtor account has its own name), so no account
nears the fraud velocity limits and no per-name cache sees only a handful of names. One
payment in every `SPECIAL_EVERY` of each kind below must not settle, so the rejection,
hold and failure paths carry load as well:

- rejected: the debtor's name is on the tenant's sanctions watchlist;
- held:     the amount is just above the tenant's fraud review amount (HELD waits for a
            person, so it never ends: the harness counts it as its own outcome);
- failed:   the creditor account is one the rail's clearing simulator does not know.

The amounts, names and accounts come from tenants/*.yaml, so the mix stays right when a
tenant file changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

from orchestrator.samples import DEBTOR_VARIANTS, TENANTS, sample_body
from orchestrator.tenants import TenantConfig, load_tenants

SPECIAL_EVERY = 500
# Positions inside each block of SPECIAL_EVERY payments; spread out, so every step of a
# ramp (and the short smoke run) has some of each.
SPECIAL_KINDS = {100: "rejected", 250: "held", 400: "failed"}

# 37 x 27 = 999 distinct names: one per debtor account variant of a rail (samples.py has
# 997). No word is on any watchlist, so none of them is screened as a possible match.
_GIVEN_NAMES = (
    "Amara", "Bianca", "Carlos", "Dara", "Elif", "Farah", "Gustavo", "Hana", "Ines", "Jonas",
    "Kenji", "Leila", "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tomas",
    "Uma", "Valeria", "Wen", "Ximena", "Yusuf", "Zofia", "Anders", "Beatriz", "Chen", "Diego",
    "Emeka", "Freya", "Goran", "Hiro", "Ivana", "Jamal", "Kaia",
)  # fmt: skip
_SURNAMES = (
    "Abara", "Becker", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Hoffmann", "Ito",
    "Jansen", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Pereira", "Rossi",
    "Santos", "Tanaka", "Urquhart", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Almeida", "Novak",
)  # fmt: skip


@dataclass(frozen=True)
class UnknownCreditor:
    """A creditor account a rail's clearing simulator refuses, and a sample that routes there."""

    sample_index: int
    account: dict


def customer_name(variant: int) -> str:
    variant %= len(_GIVEN_NAMES) * len(_SURNAMES)
    return f"{_GIVEN_NAMES[variant % len(_GIVEN_NAMES)]} {_SURNAMES[variant // len(_GIVEN_NAMES)]}"


def load_default_tenants(repo_root: Path) -> dict[str, TenantConfig]:
    return load_tenants(repo_root / "tenants")


def _unknown_creditors(tenants: dict[str, TenantConfig]) -> dict[str, UnknownCreditor]:
    """Per tenant, the first rail whose simulator knows an unknown creditor account, with the
    sample of that rail's currency (routing picks the rail by currency and account kind)."""
    found = {}
    for tenant_id in TENANTS:
        for rail in tenants[tenant_id].rails:
            if not rail.simulator.unknown_creditor_accounts:
                continue
            index = next((i for i in range(2) if sample_body(tenant_id, i, unique=False)["currency"]
                          in rail.currencies), None)
            if index is None:
                continue
            account_value = rail.simulator.unknown_creditor_accounts[0]
            creditor_account = sample_body(tenant_id, index, unique=False)["creditor"]["account"]
            account = ({"iban": account_value} if rail.creditor_account == "iban"
                       else {**creditor_account, "number": account_value})
            found[tenant_id] = UnknownCreditor(index, account)
            break
    return found


class TrafficMix:
    """Makes the index-th payment of a run: (tenant, body)."""

    def __init__(self, tenants: dict[str, TenantConfig]) -> None:
        self.tenants = tenants
        self.unknown_creditors = _unknown_creditors(tenants)
        # Failures go only to tenants whose simulators refuse some account.
        self.failing_tenants = [t for t in TENANTS if t in self.unknown_creditors]

    def payment(self, index: int) -> tuple[str, dict]:
        kind = SPECIAL_KINDS.get(index % SPECIAL_EVERY)
        block = index // SPECIAL_EVERY
        if kind == "failed" and self.failing_tenants:
            tenant = self.failing_tenants[block % len(self.failing_tenants)]
        elif kind is not None:
            # A block's position alone would always land on the same tenant.
            tenant = TENANTS[block % len(TENANTS)]
        else:
            tenant = TENANTS[index % len(TENANTS)]
        rail_index = index // len(TENANTS)
        if kind == "held":
            # The first sample of every tenant goes to a rail whose limit is above the
            # review amount, so the payment reaches fraud review and is not refused earlier.
            rail_index = 0
        elif kind == "failed" and tenant in self.unknown_creditors:
            rail_index = self.unknown_creditors[tenant].sample_index
        body = sample_body(tenant, rail_index, debtor_variant=index)
        # The name follows the account, so one customer keeps one name.
        body["debtor"] = {**body["debtor"], "name": customer_name(index % DEBTOR_VARIANTS)}
        config = self.tenants[tenant]
        if kind == "rejected" and config.sanctions.watchlist:
            body["debtor"]["name"] = config.sanctions.watchlist[block % len(config.sanctions.watchlist)].name
        elif kind == "held":
            body["amount"] = format(config.fraud.review_amount + Decimal("1.00"), "f")
        elif kind == "failed" and tenant in self.unknown_creditors:
            body["creditor"] = {**body["creditor"], "account": self.unknown_creditors[tenant].account}
        return tenant, body


def write_requests(path: Path, mix: TrafficMix, *, first_index: int, count: int, rate_per_s: float,
                   key_prefix: str) -> list[str]:
    """A requests file for the load generator: `count` payments due evenly at `rate_per_s`.
    Returns each request's tenant, which the generator's results do not repeat.

    Indices continue across the phases of a run (`first_index`), so the customers and the
    special payments keep rotating instead of starting over in every step.
    """
    tenants = []
    with path.open("wb") as out:
        for offset in range(count):
            index = first_index + offset
            tenant, body = mix.payment(index)
            tenants.append(tenant)
            out.write(orjson.dumps({"tenant": tenant, "key": f"{key_prefix}-{index}", "body": body,
                                    "at_us": round(offset * 1_000_000 / rate_per_s)}))
            out.write(b"\n")
    return tenants
