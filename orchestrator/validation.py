"""Intake validation: is this payment well formed, and can one of the tenant's rails carry it?

`normalise_payment` first puts identifiers in canonical form (what the clearing message
will carry), then `validate_payment` lists every problem it finds, so a client fixes all
of them in one round trip instead of one per attempt. `select_rail` is the routing rule
and is shared with the routing stage so that intake never accepts a payment routing
cannot place.

Everything here is pure and runs per payment at high rate: per-tenant facts and per-value
checks (IBAN, BIC, bank codes, limits) are computed once and cached. Details never carry a
full account identifier or a party name: they end up in logs and client answers.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Callable

from schwifty import BIC, IBAN
from schwifty.exceptions import (
    InvalidBBANChecksum,
    InvalidChecksumDigits,
    InvalidCountryCode,
    InvalidLength,
    SchwiftyException,
)

from orchestrator.domain import Account, Agent, MoneyError, Party, Payment, currency_exponent, to_minor_units
from orchestrator.reasons import ReasonCode
from orchestrator.tenants import BankCodeScheme, RailConfig, TenantConfig, missing_mandatory_fields

# ISO 20022 Max140Text / Max35Text bounds, in characters.
MAX_PARTY_NAME_CHARS = 140
MAX_END_TO_END_ID_CHARS = 35
# ISO 20022 Max34Text for a non-IBAN account identification, in characters.
MAX_ACCOUNT_NUMBER_CHARS = 34
# ISO 20022 amounts have at most 18 digits in total; minor units are all of them.
MAX_AMOUNT_DIGITS = 18
# How far ahead a payment may be scheduled, in days after `today`.
MAX_EXECUTION_DATE_AHEAD_DAYS = 30
# A customer's pain.001 whose requested execution date has passed by at most this many
# days is executed today, as banks treat an instruction that reached them late; an older
# one is refused as stale (invalid_execution_date), since a file sent again weeks later
# must not pay. Interbank messages (pacs.008) and JSON requests get no such grace: their
# senders name a date they can still change, so a past one is refused.
LATE_INSTRUCTION_GRACE_DAYS = 5

# Distinct IBANs / BICs / bank codes whose verdict is kept; bounded so memory stays flat.
_VALUE_CACHE_ENTRIES = 65_536
# Distinct tenant config objects whose derived facts are kept (configs change on reload).
_TENANT_CACHE_ENTRIES = 64

_ACCOUNT_NUMBER_RE = re.compile(rf"[A-Za-z0-9]{{1,{MAX_ACCOUNT_NUMBER_CHARS}}}")
_ELECTRONIC_FORM_RE = re.compile(r"[A-Z0-9]+")
_ISO_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A UK IBAN: GB, check digits, the bank's 4-letter code, the sort code, the account number.
_GB_IBAN_RE = re.compile(r"GB[0-9]{2}[A-Z]{4}([0-9]{6})([0-9]{8})")


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    reason_code: ReasonCode
    # Dotted path of the offending field in the canonical payment ("debtor.account.iban").
    field: str
    detail: str


# --------------------------------------------------------------------------- normalisation


def normalise_payment(payment: Payment) -> Payment:
    """Canonical form of identifiers and names; returns the same object if nothing changes.

    IBANs and BICs lose all whitespace and are uppercased (their electronic form). Bank
    codes lose whitespace and dashes: every supported scheme is all digits, so "20-00-00"
    and "062 000" only ever mean "200000" and "062000". Empty identifiers become absent,
    since JSON clients often send "" for "not given". Names are NFC-normalised with runs of
    whitespace collapsed to one space. The end-to-end id is left exactly as sent: it is the
    client's reference and is echoed back verbatim. A GBP payment to a UK IBAN is addressed
    by the sort code and account number inside it (`_uk_domestic_account`).
    """
    debtor = _normalise_party(payment.debtor)
    creditor = _normalise_party(payment.creditor)
    currency = payment.currency.strip().upper() if isinstance(payment.currency, str) else payment.currency
    if currency == "GBP":
        creditor = _uk_domestic_account(creditor)
    if debtor is payment.debtor and creditor is payment.creditor and currency == payment.currency:
        return payment
    return payment.replace(debtor=debtor, creditor=creditor, currency=currency)


def _normalise_party(party: Party) -> Party:
    name = _normalise_name(party.name)
    account = party.account
    normal_account = Account(
        iban=_compact(account.iban, upper=True),
        number=_stripped(account.number),
        bank_code=_compact(account.bank_code, upper=False, drop="-"),
    )
    bic = _compact(party.agent.bic, upper=True)
    changed_account = normal_account != account
    changed_bic = bic != party.agent.bic
    if name == party.name and not changed_account and not changed_bic:
        return party
    return Party(
        name=name,
        account=normal_account if changed_account else account,
        agent=Agent(bic=bic, member_id=party.agent.member_id) if changed_bic else party.agent,
        country=party.country,
    )


def _uk_domestic_account(party: Party) -> Party:
    """A creditor given by a valid UK IBAN alone, as the sort code and account number it holds.

    Sterling moves on the UK's domestic rails (Faster Payments here), which address an
    account by sort code and account number, not by IBAN; a UK IBAN carries both (its 9th
    to 14th and 15th to 22nd characters), so asking the client for them again would refuse
    a payment that names its account exactly. An invalid IBAN is left alone, to be refused
    as one; an account that already names a number or bank code is the client's own form.
    """
    account = party.account
    if not isinstance(account.iban, str) or account.number is not None or account.bank_code is not None:
        return party
    parts = _GB_IBAN_RE.fullmatch(account.iban)
    if parts is None or iban_problem(account.iban) is not None:
        return party
    sort_code, number = parts.groups()
    return Party(name=party.name, account=Account(number=number, bank_code=sort_code), agent=party.agent,
                 country=party.country)


def _normalise_name(name: str) -> str:
    if not isinstance(name, str):
        return name
    if not unicodedata.is_normalized("NFC", name):
        name = unicodedata.normalize("NFC", name)
    return " ".join(name.split())


def _compact(value: str | None, *, upper: bool, drop: str = "") -> str | None:
    if not isinstance(value, str):
        return value
    compact = "".join(value.split())
    if drop:
        compact = compact.replace(drop, "")
    if upper:
        compact = compact.upper()
    return compact or None


def _stripped(value: str | None) -> str | None:
    if not isinstance(value, str):
        return value
    return value.strip() or None


# --------------------------------------------------------------------------- validation


def validate_payment(payment: Payment, tenant: TenantConfig, *, today: date) -> list[ValidationProblem]:
    """Every problem with `payment` for `tenant`, in field order; empty means valid.

    Expects a payment that went through `normalise_payment`. `today` is the business date
    in the tenant's time zone, passed in so the check is reproducible.
    """
    problems: list[ValidationProblem] = []
    facts = _tenant_facts(tenant)

    amount_ok = _check_amount(payment.amount_minor, problems)
    currency_ok = _check_currency(payment, tenant, problems)
    if amount_ok and currency_ok:
        limit = limit_minor_units(tenant.max_amount, payment.currency)
        if payment.amount_minor > limit:
            problems.append(
                ValidationProblem(
                    ReasonCode.amount_exceeds_tenant_limit,
                    "amount_minor",
                    f"amount {payment.amount} {payment.currency} is above the limit of "
                    f"{tenant.max_amount} {payment.currency} per payment",
                )
            )
            amount_ok = False

    _check_end_to_end_id(payment.end_to_end_id, problems)

    schemes = facts.bank_code_schemes_by_currency.get(payment.currency, facts.all_bank_code_schemes)
    _check_party(payment.debtor, "debtor", schemes, problems)
    _check_party_name(payment.creditor, "creditor", problems)
    before_creditor_account = len(problems)
    _check_account(payment.creditor.account, "creditor.account", schemes, problems)
    creditor_account_ok = len(problems) == before_creditor_account
    _check_bic(payment.creditor, "creditor", problems)

    _check_execution_date(payment.requested_execution_date, today, problems)

    # Only ask for a rail when what the rail rule reads is itself valid: otherwise
    # "no rail" would just restate the problem already reported.
    if amount_ok and currency_ok and creditor_account_ok and select_rail(payment, tenant) is None:
        problems.append(_no_rail_problem(payment, facts))
    return problems


def _check_amount(amount_minor: object, problems: list[ValidationProblem]) -> bool:
    # Minor units are whole by construction, so the currency's exponent cannot be exceeded
    # here; to_minor_units enforced it where the decimal string was parsed.
    if type(amount_minor) is not int:
        problems.append(ValidationProblem(ReasonCode.invalid_amount, "amount_minor", "amount must be a whole number of minor units"))
        return False
    if amount_minor <= 0:
        problems.append(ValidationProblem(ReasonCode.amount_not_positive, "amount_minor", "amount must be greater than zero"))
        return False
    if amount_minor >= 10**MAX_AMOUNT_DIGITS:
        problems.append(
            ValidationProblem(ReasonCode.invalid_amount, "amount_minor", f"amount has more than {MAX_AMOUNT_DIGITS} digits")
        )
        return False
    return True


def _check_currency(payment: Payment, tenant: TenantConfig, problems: list[ValidationProblem]) -> bool:
    currency = payment.currency
    try:
        currency_exponent(currency if isinstance(currency, str) else "")
    except MoneyError as exc:
        problems.append(ValidationProblem(ReasonCode.unsupported_currency, "currency", exc.detail))
        return False
    if currency not in tenant.currencies:
        problems.append(
            ValidationProblem(
                ReasonCode.currency_not_allowed_for_tenant,
                "currency",
                f"currency {currency} is not offered by tenant {tenant.tenant_id} (allowed: {', '.join(tenant.currencies)})",
            )
        )
        return False
    return True


def _check_end_to_end_id(value: object, problems: list[ValidationProblem]) -> None:
    detail = None
    if not isinstance(value, str) or not value:
        detail = "end_to_end_id is required"
    elif len(value) > MAX_END_TO_END_ID_CHARS:
        detail = f"end_to_end_id is longer than {MAX_END_TO_END_ID_CHARS} characters"
    elif value != value.strip():
        detail = "end_to_end_id must not start or end with whitespace"
    elif _has_forbidden_characters(value):
        detail = "end_to_end_id contains control or invisible characters"
    if detail:
        problems.append(ValidationProblem(ReasonCode.invalid_end_to_end_id, "end_to_end_id", detail))


def _check_party(party: Party, role: str, schemes: tuple[BankCodeScheme, ...], problems: list[ValidationProblem]) -> None:
    _check_party_name(party, role, problems)
    _check_account(party.account, f"{role}.account", schemes, problems)
    _check_bic(party, role, problems)


def _check_party_name(party: Party, role: str, problems: list[ValidationProblem]) -> None:
    name = party.name
    detail = None
    if not isinstance(name, str) or not name.strip():
        detail = f"{role} name is required"
    elif len(name.strip()) > MAX_PARTY_NAME_CHARS:
        detail = f"{role} name is longer than {MAX_PARTY_NAME_CHARS} characters"
    elif _has_forbidden_characters(name):
        detail = f"{role} name contains control or invisible characters"
    if detail:
        problems.append(ValidationProblem(ReasonCode.invalid_party_name, f"{role}.name", detail))


def _has_forbidden_characters(text: str) -> bool:
    """Control, format (zero-width, bidi override), private-use or unassigned characters.

    They make a name display as one thing and screen or match as another. str.isprintable
    is the fast C path; it also refuses Unicode spaces, which are harmless, so only
    characters outside the space separators (Zs) count.
    """
    if text.isprintable():
        return False
    return any(not ch.isprintable() and unicodedata.category(ch) != "Zs" for ch in text)


def _check_account(
    account: Account, field: str, schemes: tuple[BankCodeScheme, ...], problems: list[ValidationProblem]
) -> None:
    has_iban = account.iban is not None
    has_local = account.number is not None or account.bank_code is not None
    if has_iban and has_local:
        problems.append(
            ValidationProblem(
                ReasonCode.ambiguous_account_identification,
                field,
                "give either an IBAN or an account number with a bank code, not both",
            )
        )
        return
    if not has_iban and not has_local:
        problems.append(
            ValidationProblem(
                ReasonCode.missing_account_identification,
                field,
                "an IBAN, or an account number with a bank code, is required",
            )
        )
        return
    if has_iban:
        iban_detail = iban_problem(account.iban) if isinstance(account.iban, str) else "IBAN must be text"
        if iban_detail:
            problems.append(
                ValidationProblem(ReasonCode.invalid_iban, f"{field}.iban", f"IBAN {account.masked()}: {iban_detail}")
            )
        return

    number, bank_code = account.number, account.bank_code
    if number is None:
        problems.append(
            ValidationProblem(ReasonCode.missing_account_identification, f"{field}.number", "account number is required with a bank code")
        )
    elif not isinstance(number, str) or not _ACCOUNT_NUMBER_RE.fullmatch(number):
        problems.append(
            ValidationProblem(
                ReasonCode.invalid_account_number,
                f"{field}.number",
                f"account number {account.masked()} must be 1 to {MAX_ACCOUNT_NUMBER_CHARS} letters or digits",
            )
        )
    if bank_code is None:
        problems.append(
            ValidationProblem(ReasonCode.missing_account_identification, f"{field}.bank_code", "bank code is required with an account number")
        )
        return
    scheme = next((s for s in schemes if isinstance(bank_code, str) and bank_code_is_valid(bank_code, s)), None)
    if scheme is None:
        expected = " or ".join(_SCHEME_LABELS[s] for s in schemes) or "bank code of a scheme this tenant uses"
        # The value is not echoed: for CLABE the bank code is the full account identifier.
        problems.append(ValidationProblem(ReasonCode.invalid_bank_code, f"{field}.bank_code", f"bank code is not a valid {expected}"))
    elif scheme == "clabe" and number is not None and number not in (bank_code, bank_code[6:17]):
        # A CLABE embeds the account number; a different one would credit someone else.
        problems.append(
            ValidationProblem(
                ReasonCode.invalid_account_number,
                f"{field}.number",
                f"account number {account.masked()} is neither the CLABE nor the account number within it",
            )
        )


def _check_bic(party: Party, role: str, problems: list[ValidationProblem]) -> None:
    bic = party.agent.bic
    if bic is None:
        return
    detail = bic_problem(bic) if isinstance(bic, str) else "BIC must be text"
    if detail:
        problems.append(ValidationProblem(ReasonCode.invalid_bic, f"{role}.agent.bic", detail))


def execute_late_instruction_today(payment: Payment, today: date) -> Payment:
    """A pain.001 payment whose requested execution date passed within
    LATE_INSTRUCTION_GRACE_DAYS, dated today; any other payment unchanged (the same object)."""
    if not payment.source_format.startswith("pain.001") or not isinstance(payment.requested_execution_date, str):
        return payment
    if not _ISO_DATE_RE.fullmatch(payment.requested_execution_date):
        return payment
    try:
        requested = date.fromisoformat(payment.requested_execution_date)
    except ValueError:
        return payment  # validation names the problem
    if today - timedelta(days=LATE_INSTRUCTION_GRACE_DAYS) <= requested < today:
        return payment.replace(requested_execution_date=today.isoformat())
    return payment


def _check_execution_date(value: str | None, today: date, problems: list[ValidationProblem]) -> None:
    if value is None:
        return
    detail = None
    requested = None
    if isinstance(value, str) and _ISO_DATE_RE.fullmatch(value):
        try:
            requested = date.fromisoformat(value)
        except ValueError:
            pass
    if requested is None:
        detail = f"requested_execution_date {value!r} is not a date in YYYY-MM-DD form"
    elif requested < today:
        detail = f"requested_execution_date {value} is before today ({today.isoformat()})"
    elif requested > today + timedelta(days=MAX_EXECUTION_DATE_AHEAD_DAYS):
        detail = f"requested_execution_date {value} is more than {MAX_EXECUTION_DATE_AHEAD_DAYS} days ahead"
    if detail:
        problems.append(ValidationProblem(ReasonCode.invalid_execution_date, "requested_execution_date", detail))


def _no_rail_problem(payment: Payment, facts: "_TenantFacts") -> ValidationProblem:
    # Name the field that stopped the rails that got furthest, so the client knows what to change.
    by_currency = [rail for rail in facts.rails_in_order if payment.currency in rail.currencies]
    if not by_currency:
        return ValidationProblem(ReasonCode.no_rail_for_payment, "currency", f"no rail carries {payment.currency}")
    by_account = [rail for rail in by_currency if _creditor_account_fits(rail, payment.creditor.account)]
    if not by_account:
        forms = sorted({_rail_account_label(rail) for rail in by_currency})
        return ValidationProblem(
            ReasonCode.no_rail_for_payment,
            "creditor.account",
            f"{payment.currency} rails need the creditor account as {' or '.join(forms)}",
        )
    by_amount = [rail for rail in by_account
                 if payment.amount_minor <= limit_minor_units(rail.max_amount, payment.currency)]
    if by_amount:
        missing = missing_mandatory_fields(by_amount[0], payment)
        return ValidationProblem(
            ReasonCode.no_rail_for_payment,
            missing[0],
            f"{by_amount[0].display_name} requires {', '.join(missing)}",
        )
    return ValidationProblem(
        ReasonCode.no_rail_for_payment,
        "amount_minor",
        f"amount {payment.amount} {payment.currency} is above the limit of every rail for this creditor",
    )


# --------------------------------------------------------------------------- routing rule


def select_rail(payment: Payment, tenant: TenantConfig) -> RailConfig | None:
    """The rail for `payment`: lowest `priority` number, then config order; None if none fits.

    A rail fits when it carries the currency, identifies the creditor account the way the
    payment does (IBAN, or number + a bank code valid under the rail's scheme) and its
    `max_amount` covers the amount.
    """
    for rail in _tenant_facts(tenant).rails_in_order:
        if _rail_fits(rail, payment):
            return rail
    return None


def eligible_rails(payment: Payment, tenant: TenantConfig) -> tuple[RailConfig, ...]:
    """Every fitting rail in `select_rail`'s preference order, for routing to fall back on."""
    return tuple(rail for rail in _tenant_facts(tenant).rails_in_order if _rail_fits(rail, payment))


def _rail_fits(rail: RailConfig, payment: Payment) -> bool:
    return (
        payment.currency in rail.currencies
        and _creditor_account_fits(rail, payment.creditor.account)
        and payment.amount_minor <= limit_minor_units(rail.max_amount, payment.currency)
        and not missing_mandatory_fields(rail, payment)
    )


def _creditor_account_fits(rail: RailConfig, account: Account) -> bool:
    if rail.creditor_account == "iban":
        return account.iban is not None and account.number is None and account.bank_code is None
    return (
        account.iban is None
        and account.number is not None
        and isinstance(account.bank_code, str)
        and bank_code_is_valid(account.bank_code, rail.bank_code_scheme)
    )


def _rail_account_label(rail: RailConfig) -> str:
    if rail.creditor_account == "iban":
        return "an IBAN"
    return f"an account number with a {_SCHEME_LABELS[rail.bank_code_scheme]}"


# --------------------------------------------------------------------------- per-tenant facts


@dataclass(frozen=True, slots=True)
class _TenantFacts:
    rails_in_order: tuple[RailConfig, ...]
    # Bank code schemes of the rails carrying each currency: a debtor or creditor bank code
    # is valid when one of them accepts it.
    bank_code_schemes_by_currency: dict[str, tuple[BankCodeScheme, ...]]
    all_bank_code_schemes: tuple[BankCodeScheme, ...]


# Keyed by id() with the config itself held in the value: the strong reference keeps the id
# from being reused by another object while the entry lives, and an identity check is far
# cheaper than hashing a nested pydantic model on every payment.
_tenant_facts_cache: dict[int, tuple[TenantConfig, _TenantFacts]] = {}


def _tenant_facts(tenant: TenantConfig) -> _TenantFacts:
    cached = _tenant_facts_cache.get(id(tenant))
    if cached is not None and cached[0] is tenant:
        return cached[1]
    facts = _build_tenant_facts(tenant)
    if len(_tenant_facts_cache) >= _TENANT_CACHE_ENTRIES:
        _tenant_facts_cache.pop(next(iter(_tenant_facts_cache)), None)
    _tenant_facts_cache[id(tenant)] = (tenant, facts)
    return facts


def _build_tenant_facts(tenant: TenantConfig) -> _TenantFacts:
    # sorted() is stable, so equal priorities keep config order.
    rails = tuple(sorted(tenant.rails, key=lambda rail: rail.priority))
    by_currency: dict[str, tuple[BankCodeScheme, ...]] = {}
    for currency in tenant.currencies:
        schemes = [r.bank_code_scheme for r in rails if currency in r.currencies and r.bank_code_scheme]
        by_currency[currency] = tuple(dict.fromkeys(schemes))
    every = tuple(dict.fromkeys(r.bank_code_scheme for r in rails if r.bank_code_scheme))
    # A currency whose rails all use IBANs still gets a bank code judged by the tenant's
    # other schemes, so the answer is "not a valid sort code" rather than a vaguer one.
    by_currency = {currency: schemes or every for currency, schemes in by_currency.items()}
    return _TenantFacts(rails_in_order=rails, bank_code_schemes_by_currency=by_currency, all_bank_code_schemes=every)


@lru_cache(maxsize=1024)
def limit_minor_units(limit: Decimal, currency: str) -> int:
    """A configured limit in major units (Decimal) as minor units of `currency`.

    A non-positive limit is 0 (nothing passes). A limit finer than the currency's minor
    unit (0.5 JPY) is rounded down: a limit is a ceiling and must not grow by rounding.
    """
    if limit <= 0:
        return 0
    try:
        return to_minor_units(format(limit, "f"), currency)
    except MoneyError as exc:
        if exc.reason_code != ReasonCode.amount_precision_exceeded:
            raise
    return int(limit.scaleb(currency_exponent(currency)).to_integral_value(rounding=ROUND_FLOOR))


# --------------------------------------------------------------------------- identifiers


@lru_cache(maxsize=_VALUE_CACHE_ENTRIES)
def iban_problem(iban: str) -> str | None:
    """Why `iban` (electronic form) is invalid, or None. Never echoes the IBAN."""
    if not _ELECTRONIC_FORM_RE.fullmatch(iban):
        return "must be uppercase letters and digits without spaces"
    try:
        # validate_bban also checks the national check digits where schwifty knows the
        # algorithm (DE, FR, ES, IT, BE, NL ...); elsewhere it accepts them and warns.
        IBAN(iban, validate_bban=True)
    except InvalidCountryCode:
        return "country does not use IBANs"
    except InvalidLength:
        return "wrong length for its country"
    except InvalidChecksumDigits:
        return "check digits do not match"
    except InvalidBBANChecksum:
        return "national check digits do not match"
    except SchwiftyException:
        return "does not match its country's format"
    return None


@lru_cache(maxsize=_VALUE_CACHE_ENTRIES)
def bic_problem(bic: str) -> str | None:
    """Why `bic` is not a well-formed ISO 9362 BIC, or None. Existence is not checked:
    no registry we could ship is complete, and the clearing system is the authority."""
    if not _ELECTRONIC_FORM_RE.fullmatch(bic):
        return f"BIC {bic!r} must be uppercase letters and digits without spaces"
    try:
        BIC(bic)
    except InvalidLength:
        return f"BIC {bic} must have 8 or 11 characters"
    except InvalidCountryCode:
        return f"BIC {bic} has an unknown country code"
    except SchwiftyException:
        return f"BIC {bic} is not structured as ISO 9362 requires"
    return None


@lru_cache(maxsize=_VALUE_CACHE_ENTRIES)
def bank_code_is_valid(code: str, scheme: BankCodeScheme) -> bool:
    """Whether `code` (digits only, already normalised) is valid under `scheme`."""
    check = _SCHEME_CHECKS.get(scheme)
    return check is not None and code.isascii() and code.isdigit() and check(code)


def _aba_valid(code: str) -> bool:
    # ABA routing number: 9 digits, weights 3-7-1 repeated, sum divisible by 10. All zeros
    # passes the sum trivially, so it is refused explicitly. The first two digits (the Fed
    # routing symbol) are 00-12, 21-32, 61-72 or 80.
    if len(code) != 9 or code == "000000000":
        return False
    prefix = int(code[:2])
    if not (prefix <= 12 or 21 <= prefix <= 32 or 61 <= prefix <= 72 or prefix == 80):
        return False
    d = [int(ch) for ch in code]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])) % 10 == 0


_CLABE_WEIGHTS = (3, 7, 1) * 6


def _clabe_valid(code: str) -> bool:
    # CLABE: 3-digit bank, 3-digit plaza, 11-digit account, 1 check digit. Each of the first
    # 17 digits times its weight (3, 7, 1 repeating) is taken mod 10; the check digit tops
    # the sum up to a multiple of 10. All zeros passes trivially and names no bank.
    if len(code) != 18 or code == "0" * 18:
        return False
    total = sum((int(ch) * weight) % 10 for ch, weight in zip(code[:17], _CLABE_WEIGHTS))
    return (10 - total % 10) % 10 == int(code[17])


def _transit_valid(code: str) -> bool:
    # Canadian routing: electronic form 0YYYXXXXX (institution YYY, transit XXXXX), or the
    # cheque (MICR) form XXXXXYYY with the dash already removed by normalisation.
    return (len(code) == 9 and code[0] == "0") or len(code) == 8


_SCHEME_CHECKS: dict[str, Callable[[str], bool]] = {
    "aba": _aba_valid,
    "sort_code": lambda code: len(code) == 6,
    "bsb": lambda code: len(code) == 6,
    # ISPB: 8 digits; 00000000 is real (Banco do Brasil), so no all-zeros rule here.
    "ispb": lambda code: len(code) == 8,
    "clabe": _clabe_valid,
    "transit": _transit_valid,
    # Singapore: 4-digit bank code, optionally followed by a 3-digit branch code.
    "fast_bank_code": lambda code: len(code) in (4, 7),
}

_SCHEME_LABELS: dict[str, str] = {
    "aba": "ABA routing number (9 digits)",
    "sort_code": "UK sort code (6 digits)",
    "bsb": "BSB number (6 digits)",
    "ispb": "ISPB code (8 digits)",
    "clabe": "CLABE (18 digits)",
    "transit": "Canadian routing number (0 + institution + transit, or transit + institution)",
    "fast_bank_code": "Singapore bank code (4 digits, or 7 with branch)",
}
