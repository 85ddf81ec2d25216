from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import Account, Agent, Party, Payment
from orchestrator.reasons import ReasonCode
from orchestrator.tenants import load_tenants
from orchestrator.validation import (
    LATE_INSTRUCTION_GRACE_DAYS,
    MAX_EXECUTION_DATE_AHEAD_DAYS,
    ValidationProblem,
    bank_code_is_valid,
    eligible_rails,
    execute_late_instruction_today,
    iban_problem,
    limit_minor_units,
    normalise_payment,
    select_rail,
    validate_payment,
)

TENANTS = load_tenants(Path(__file__).resolve().parents[2] / "tenants")
TODAY = date(2026, 3, 2)

VALID_IBANS = (
    "DE89370400440532013000",
    "FR1420041010050500013M02606",
    "FR7630006000011234567890189",
    "GB29NWBK60161331926819",
    "NL91ABNA0417164300",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "BE68539007547034",
    "AT611904300234573201",
    "PL61109010140000071219812874",
)

# One valid debtor/creditor pair per rail: (tenant, rail, currency, amount_minor, debtor, creditor).
RAIL_SAMPLES = [
    (
        "emea", "sepa_inst", "EUR", 12_550,
        Party("Anna Schmidt", Account(iban="DE89370400440532013000"), Agent(bic="COBADEFFXXX"), "DE"),
        Party("Jeanne Martin", Account(iban="FR1420041010050500013M02606"), Agent(bic="PSSTFRPP"), "FR"),
    ),
    (
        "emea", "fps", "GBP", 250_000,
        Party("Oliver Jones", Account(number="31926819", bank_code="601613"), Agent(bic="NWBKGB2L"), "GB"),
        Party("Amelia Brown", Account(number="55779911", bank_code="200000"), country="GB"),
    ),
    (
        "apac", "npp", "AUD", 99_900,
        Party("Jack Wilson", Account(number="12345678", bank_code="062000"), country="AU"),
        Party("Charlotte Taylor", Account(number="987654321", bank_code="082001"), country="AU"),
    ),
    (
        "apac", "fast", "SGD", 50_000,
        Party("Tan Wei Ming", Account(number="0123456789", bank_code="7171"), country="SG"),
        Party("Lim Hui Min", Account(number="5012345678", bank_code="7339001"), country="SG"),
    ),
    (
        "latam", "pix", "BRL", 1_000_00,
        Party("Joao Silva", Account(number="123456789", bank_code="00000000"), country="BR"),
        Party("Maria Souza", Account(number="98765", bank_code="60701190"), country="BR"),
    ),
    (
        "latam", "spei", "MXN", 2_500_00,
        Party("Luis Hernandez", Account(number="032180000118359719", bank_code="032180000118359719"), country="MX"),
        Party("Sofia Ramirez", Account(number="012180001234567899", bank_code="012180001234567899"), country="MX"),
    ),
    (
        "na", "fednow", "USD", 75_00,
        Party("John Carter", Account(number="123456789012", bank_code="021000021"), country="US"),
        Party("Emily Davis", Account(number="987654321", bank_code="026009593"), country="US"),
    ),
    (
        "na", "lynx", "CAD", 40_000,
        Party("Liam Tremblay", Account(number="1234567", bank_code="000312345"), country="CA"),
        Party("Chloe Roy", Account(number="7654321", bank_code="12345004"), country="CA"),
    ),
]


def make_payment(
    tenant_id: str = "emea",
    currency: str = "EUR",
    amount_minor: int = 12_550,
    debtor: Party | None = None,
    creditor: Party | None = None,
    **changes: object,
) -> Payment:
    payment = Payment(
        payment_id="3f0c2a4e-8d1b-4c55-9a8e-0b6a1f2d7c10",
        tenant_id=tenant_id,
        end_to_end_id="E2E-2026-0001",
        amount_minor=amount_minor,
        currency=currency,
        debtor=debtor or RAIL_SAMPLES[0][4],
        creditor=creditor or RAIL_SAMPLES[0][5],
        # Some rails' market practice requires a reference (Faster Payments, emea.yaml).
        remittance_information="Invoice 2026-0001",
    )
    return payment.replace(**changes) if changes else payment


def sample_for(rail_name: str) -> Payment:
    for tenant_id, rail, currency, amount, debtor, creditor in RAIL_SAMPLES:
        if rail == rail_name:
            return make_payment(tenant_id, currency, amount, debtor, creditor)
    raise KeyError(rail_name)


def with_account(party: Party, **account: str | None) -> Party:
    return Party(party.name, Account(**account), party.agent, party.country)


def problems_of(payment: Payment, tenant_id: str | None = None) -> list[tuple[ReasonCode, str]]:
    tenant = TENANTS[tenant_id or payment.tenant_id]
    return [(p.reason_code, p.field) for p in validate_payment(payment, tenant, today=TODAY)]


# --------------------------------------------------------------------------- valid payments


@pytest.mark.parametrize("sample", RAIL_SAMPLES, ids=[s[1] for s in RAIL_SAMPLES])
def test_valid_sample_for_every_rail_passes_and_selects_that_rail(sample) -> None:
    tenant_id, rail_name, currency, amount, debtor, creditor = sample
    payment = make_payment(tenant_id, currency, amount, debtor, creditor)
    tenant = TENANTS[tenant_id]

    assert validate_payment(payment, tenant, today=TODAY) == []
    rail = select_rail(payment, tenant)
    assert rail is not None and rail.name == rail_name


def test_samples_cover_every_rail_of_every_tenant_except_rtp() -> None:
    configured = {(t.tenant_id, r.name) for t in TENANTS.values() for r in t.rails}
    sampled = {(s[0], s[1]) for s in RAIL_SAMPLES}
    # RTP carries the same payments as FedNow at a lower preference; tested separately.
    assert configured - sampled == {("na", "rtp")}


def test_rtp_is_the_fallback_after_fednow_and_takes_amounts_above_fednow_limit() -> None:
    payment = sample_for("fednow")
    na = TENANTS["na"]
    assert [r.name for r in eligible_rails(payment, na)] == ["fednow", "rtp"]

    # FedNow's limit equals the tenant's, so only a raised tenant limit can send a payment
    # past FedNow to RTP.
    raised = na.model_copy(update={"max_amount": Decimal("1000000.00")})
    big = payment.replace(amount_minor=750_000_00)
    assert validate_payment(big, raised, today=TODAY) == []
    assert select_rail(big, raised).name == "rtp"


def test_equal_priorities_keep_config_order_and_lower_number_wins() -> None:
    na = TENANTS["na"]
    fednow, rtp, lynx = na.rails
    same = na.model_copy(update={"rails": (rtp.model_copy(update={"priority": 5}), fednow.model_copy(update={"priority": 5}), lynx)})
    assert select_rail(sample_for("fednow"), same).name == "rtp"
    swapped = na.model_copy(update={"rails": (fednow.model_copy(update={"priority": 30}), rtp, lynx)})
    assert select_rail(sample_for("fednow"), swapped).name == "rtp"


def test_rail_limit_is_inclusive() -> None:
    fast_limit_minor = 200_000_00
    payment = sample_for("fast").replace(amount_minor=fast_limit_minor)
    assert select_rail(payment, TENANTS["apac"]).name == "fast"
    assert select_rail(payment.replace(amount_minor=fast_limit_minor + 1), TENANTS["apac"]) is None


def test_names_at_the_limits_are_valid() -> None:
    debtor = RAIL_SAMPLES[0][4]
    long_name = Party("x" * 140, debtor.account, debtor.agent)
    accented = Party("José Müller-Łukasiewicz & Søn", debtor.account, debtor.agent)
    assert problems_of(make_payment(debtor=long_name)) == []
    assert problems_of(make_payment(debtor=accented)) == []
    assert problems_of(make_payment(end_to_end_id="A" * 35)) == []


@pytest.mark.parametrize("days_ahead", [0, 1, MAX_EXECUTION_DATE_AHEAD_DAYS])
def test_execution_dates_from_today_to_the_horizon_are_valid(days_ahead: int) -> None:
    when = (TODAY + timedelta(days=days_ahead)).isoformat()
    assert problems_of(make_payment(requested_execution_date=when)) == []


# --------------------------------------------------------------------------- invalid payments


def debtor_with(**account: str | None) -> Party:
    return with_account(RAIL_SAMPLES[0][4], **account)


def creditor_with(**account: str | None) -> Party:
    return with_account(RAIL_SAMPLES[0][5], **account)


def named(name: str, role: str = "debtor") -> dict[str, Party]:
    base = RAIL_SAMPLES[0][4] if role == "debtor" else RAIL_SAMPLES[0][5]
    return {role: Party(name, base.account, base.agent, base.country)}


FEDNOW_DEBTOR = RAIL_SAMPLES[6][4]
FEDNOW_CREDITOR = RAIL_SAMPLES[6][5]
SPEI_CREDITOR = RAIL_SAMPLES[5][5]

INVALID_CASES = [
    # (id, payment, expected (reason, field))
    ("zero amount", make_payment(amount_minor=0), (ReasonCode.amount_not_positive, "amount_minor")),
    ("negative amount", make_payment(amount_minor=-100), (ReasonCode.amount_not_positive, "amount_minor")),
    ("float amount", make_payment(amount_minor=125.5), (ReasonCode.invalid_amount, "amount_minor")),
    ("19-digit amount", make_payment(amount_minor=10**18), (ReasonCode.invalid_amount, "amount_minor")),
    ("unknown currency", make_payment(currency="XYZ"), (ReasonCode.unsupported_currency, "currency")),
    ("metal currency", make_payment(currency="XAU"), (ReasonCode.unsupported_currency, "currency")),
    ("other tenant currency", make_payment(currency="USD"), (ReasonCode.currency_not_allowed_for_tenant, "currency")),
    ("above tenant limit", make_payment(amount_minor=100_000_01), (ReasonCode.amount_exceeds_tenant_limit, "amount_minor")),
    ("empty debtor name", make_payment(**named("")), (ReasonCode.invalid_party_name, "debtor.name")),
    ("blank creditor name", make_payment(**named("   ", "creditor")), (ReasonCode.invalid_party_name, "creditor.name")),
    ("141-char name", make_payment(**named("x" * 141)), (ReasonCode.invalid_party_name, "debtor.name")),
    ("NUL in name", make_payment(**named("Anna\x00Schmidt")), (ReasonCode.invalid_party_name, "debtor.name")),
    ("zero-width in name", make_payment(**named("Crimson\u200bHarbor", "creditor")), (ReasonCode.invalid_party_name, "creditor.name")),
    ("bidi override in name", make_payment(**named("Anna \u202eSchmidt")), (ReasonCode.invalid_party_name, "debtor.name")),
    ("empty e2e id", make_payment(end_to_end_id=""), (ReasonCode.invalid_end_to_end_id, "end_to_end_id")),
    ("36-char e2e id", make_payment(end_to_end_id="A" * 36), (ReasonCode.invalid_end_to_end_id, "end_to_end_id")),
    ("leading space e2e id", make_payment(end_to_end_id=" E2E-1"), (ReasonCode.invalid_end_to_end_id, "end_to_end_id")),
    ("trailing space e2e id", make_payment(end_to_end_id="E2E-1 "), (ReasonCode.invalid_end_to_end_id, "end_to_end_id")),
    ("tab in e2e id", make_payment(end_to_end_id="E2E\t1"), (ReasonCode.invalid_end_to_end_id, "end_to_end_id")),
    ("no debtor account", make_payment(debtor=debtor_with()), (ReasonCode.missing_account_identification, "debtor.account")),
    (
        "iban and number",
        make_payment(creditor=creditor_with(iban="FR1420041010050500013M02606", number="1234")),
        (ReasonCode.ambiguous_account_identification, "creditor.account"),
    ),
    (
        "number without bank code",
        make_payment("na", "USD", 100, FEDNOW_DEBTOR, with_account(FEDNOW_CREDITOR, number="987654321")),
        (ReasonCode.missing_account_identification, "creditor.account.bank_code"),
    ),
    (
        "bank code without number",
        make_payment("na", "USD", 100, with_account(FEDNOW_DEBTOR, bank_code="021000021"), FEDNOW_CREDITOR),
        (ReasonCode.missing_account_identification, "debtor.account.number"),
    ),
    ("bad IBAN checksum", make_payment(debtor=debtor_with(iban="DE89370400440532013001")), (ReasonCode.invalid_iban, "debtor.account.iban")),
    ("bad IBAN check digits", make_payment(creditor=creditor_with(iban="FR0020041010050500013M02606")), (ReasonCode.invalid_iban, "creditor.account.iban")),
    ("bad national check digits", make_payment(debtor=debtor_with(iban="FR7630006000011234567890188")), (ReasonCode.invalid_iban, "debtor.account.iban")),
    ("short IBAN", make_payment(debtor=debtor_with(iban="DE8937040044053201300")), (ReasonCode.invalid_iban, "debtor.account.iban")),
    ("non-IBAN country", make_payment(debtor=debtor_with(iban="US12345678901234567890")), (ReasonCode.invalid_iban, "debtor.account.iban")),
    ("IBAN with spaces", make_payment(debtor=debtor_with(iban="DE89 3704 0044 0532 0130 00")), (ReasonCode.invalid_iban, "debtor.account.iban")),
    ("7-char BIC", make_payment(debtor=Party("Anna Schmidt", Account(iban="DE89370400440532013000"), Agent(bic="COBADEF"))), (ReasonCode.invalid_bic, "debtor.agent.bic")),
    ("BIC bad country", make_payment(creditor=Party("Jeanne Martin", Account(iban="FR1420041010050500013M02606"), Agent(bic="PSSTZZPP"))), (ReasonCode.invalid_bic, "creditor.agent.bic")),
    ("lowercase BIC", make_payment(creditor=Party("Jeanne Martin", Account(iban="FR1420041010050500013M02606"), Agent(bic="psstfrpp"))), (ReasonCode.invalid_bic, "creditor.agent.bic")),
    (
        "ABA bad check digit",
        make_payment("na", "USD", 100, FEDNOW_DEBTOR, with_account(FEDNOW_CREDITOR, number="987654321", bank_code="026009594")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "ABA all zeros",
        make_payment("na", "USD", 100, with_account(FEDNOW_DEBTOR, number="1", bank_code="000000000"), FEDNOW_CREDITOR),
        (ReasonCode.invalid_bank_code, "debtor.account.bank_code"),
    ),
    (
        "CLABE bad check digit",
        make_payment("latam", "MXN", 100, RAIL_SAMPLES[5][4], with_account(SPEI_CREDITOR, number="012180001234567898", bank_code="012180001234567898")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "CLABE number mismatch",
        make_payment("latam", "MXN", 100, RAIL_SAMPLES[5][4], with_account(SPEI_CREDITOR, number="99999999999", bank_code="012180001234567899")),
        (ReasonCode.invalid_account_number, "creditor.account.number"),
    ),
    (
        "5-digit sort code",
        make_payment("emea", "GBP", 100, RAIL_SAMPLES[1][4], with_account(RAIL_SAMPLES[1][5], number="55779911", bank_code="20000")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "letters in BSB",
        make_payment("apac", "AUD", 100, RAIL_SAMPLES[2][4], with_account(RAIL_SAMPLES[2][5], number="1", bank_code="08200A")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "7-digit ISPB",
        make_payment("latam", "BRL", 100, RAIL_SAMPLES[4][4], with_account(RAIL_SAMPLES[4][5], number="1", bank_code="6070119")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "9-digit transit not starting with 0",
        make_payment("na", "CAD", 100, RAIL_SAMPLES[7][4], with_account(RAIL_SAMPLES[7][5], number="1", bank_code="100312345")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "5-digit FAST code",
        make_payment("apac", "SGD", 100, RAIL_SAMPLES[3][4], with_account(RAIL_SAMPLES[3][5], number="1", bank_code="73390")),
        (ReasonCode.invalid_bank_code, "creditor.account.bank_code"),
    ),
    (
        "punctuation in account number",
        make_payment("na", "USD", 100, with_account(FEDNOW_DEBTOR, number="1234-5678", bank_code="021000021"), FEDNOW_CREDITOR),
        (ReasonCode.invalid_account_number, "debtor.account.number"),
    ),
    (
        "35-char account number",
        make_payment("na", "USD", 100, with_account(FEDNOW_DEBTOR, number="1" * 35, bank_code="021000021"), FEDNOW_CREDITOR),
        (ReasonCode.invalid_account_number, "debtor.account.number"),
    ),
    ("yesterday", make_payment(requested_execution_date=(TODAY - timedelta(days=1)).isoformat()), (ReasonCode.invalid_execution_date, "requested_execution_date")),
    ("beyond horizon", make_payment(requested_execution_date=(TODAY + timedelta(days=31)).isoformat()), (ReasonCode.invalid_execution_date, "requested_execution_date")),
    ("impossible date", make_payment(requested_execution_date="2026-02-30"), (ReasonCode.invalid_execution_date, "requested_execution_date")),
    ("basic ISO date", make_payment(requested_execution_date="20260310"), (ReasonCode.invalid_execution_date, "requested_execution_date")),
    ("datetime", make_payment(requested_execution_date="2026-03-10T10:00:00"), (ReasonCode.invalid_execution_date, "requested_execution_date")),
    (
        "EUR to a sort-code account",
        make_payment(creditor=with_account(RAIL_SAMPLES[1][5], number="55779911", bank_code="200000")),
        (ReasonCode.no_rail_for_payment, "creditor.account"),
    ),
    (
        "USD to an IBAN",
        make_payment("na", "USD", 100, FEDNOW_DEBTOR, creditor_with(iban="DE89370400440532013000")),
        (ReasonCode.no_rail_for_payment, "creditor.account"),
    ),
    (
        "SGD above FAST limit",
        make_payment("apac", "SGD", 200_000_01, RAIL_SAMPLES[3][4], RAIL_SAMPLES[3][5]),
        (ReasonCode.no_rail_for_payment, "amount_minor"),
    ),
]


@pytest.mark.parametrize(("payment", "expected"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_payment_gives_exactly_the_expected_problem(payment: Payment, expected: tuple[ReasonCode, str]) -> None:
    assert problems_of(payment) == [expected]


@pytest.mark.parametrize(("payment", "expected"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_details_never_carry_a_full_account_identifier(payment: Payment, expected) -> None:
    identifiers = {
        value
        for party in (payment.debtor, payment.creditor)
        for value in (party.account.iban, party.account.number, party.account.bank_code)
        if isinstance(value, str) and len(value) > 4
    }
    for problem in validate_payment(payment, TENANTS[payment.tenant_id], today=TODAY):
        assert isinstance(problem, ValidationProblem)
        assert problem.detail
        compact_detail = problem.detail.replace(" ", "")
        assert not any(ident.replace(" ", "") in compact_detail for ident in identifiers), problem.detail


def test_currency_without_any_rail_points_at_currency() -> None:
    emea = TENANTS["emea"]
    with_chf = emea.model_copy(update={"currencies": ("EUR", "GBP", "CHF")})
    payment = make_payment(currency="CHF", creditor=creditor_with(iban="CH9300762011623852957"))
    assert [(p.reason_code, p.field) for p in validate_payment(payment, with_chf, today=TODAY)] == [
        (ReasonCode.no_rail_for_payment, "currency")
    ]


def test_all_problems_are_reported_in_one_pass() -> None:
    payment = make_payment(
        amount_minor=0,
        end_to_end_id="",
        debtor=Party("", Account(iban="DE89370400440532013001"), Agent(bic="BAD")),
        creditor=Party("Jeanne Martin", Account()),
        requested_execution_date="yesterday",
    )
    assert problems_of(payment) == [
        (ReasonCode.amount_not_positive, "amount_minor"),
        (ReasonCode.invalid_end_to_end_id, "end_to_end_id"),
        (ReasonCode.invalid_party_name, "debtor.name"),
        (ReasonCode.invalid_iban, "debtor.account.iban"),
        (ReasonCode.invalid_bic, "debtor.agent.bic"),
        (ReasonCode.missing_account_identification, "creditor.account"),
        (ReasonCode.invalid_execution_date, "requested_execution_date"),
    ]


def test_invalid_iban_detail_is_masked() -> None:
    [problem] = validate_payment(make_payment(debtor=debtor_with(iban="DE89370400440532013001")), TENANTS["emea"], today=TODAY)
    assert problem.detail == "IBAN ******************3001: check digits do not match"


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("code", ["021000021", "011000015", "026009593", "121000358", "322271627"])
def test_real_aba_routing_numbers_are_valid(code: str) -> None:
    assert bank_code_is_valid(code, "aba")


def single_digit_mutations(code: str):
    for position, original in enumerate(code):
        if original.isdigit():
            for digit in "0123456789":
                if digit != original:
                    yield code[:position] + digit + code[position + 1 :]


def test_every_single_digit_change_of_an_aba_number_is_refused() -> None:
    mutations = list(single_digit_mutations("026009593"))
    assert len(mutations) == 81
    assert [m for m in mutations if bank_code_is_valid(m, "aba")] == []


def test_every_single_digit_change_of_a_clabe_is_refused() -> None:
    assert bank_code_is_valid("032180000118359719", "clabe")
    mutations = list(single_digit_mutations("032180000118359719"))
    assert len(mutations) == 162
    assert [m for m in mutations if bank_code_is_valid(m, "clabe")] == []


@pytest.mark.parametrize(
    ("code", "scheme", "valid"),
    [
        ("601613", "sort_code", True),
        ("60161", "sort_code", False),
        ("062000", "bsb", True),
        ("0620000", "bsb", False),
        ("00000000", "ispb", True),
        ("000312345", "transit", True),
        ("12345004", "transit", True),
        ("0003123456", "transit", False),
        ("7171", "fast_bank_code", True),
        ("7339001", "fast_bank_code", True),
        ("73390", "fast_bank_code", False),
        ("０６２０００", "bsb", False),  # full-width digits are digits to Python, not to a rail
        ("021000021", "unknown_scheme", False),
    ],
)
def test_bank_code_schemes(code: str, scheme: str, valid: bool) -> None:
    assert bank_code_is_valid(code, scheme) is valid


def test_iban_with_bad_checksum_is_refused() -> None:
    assert iban_problem("DE89370400440532013000") is None
    assert iban_problem("DE89370400440532013001") == "check digits do not match"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_IBANS), st.data())
def test_changing_one_digit_of_a_valid_iban_is_always_refused(iban: str, data: st.DataObject) -> None:
    positions = [i for i, ch in enumerate(iban) if ch.isdigit()]
    position = data.draw(st.sampled_from(positions))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != iban[position]]))
    mutated = iban[:position] + digit + iban[position + 1 :]

    assert iban_problem(mutated) is not None
    payment = make_payment(debtor=debtor_with(iban=mutated))
    assert problems_of(payment) == [(ReasonCode.invalid_iban, "debtor.account.iban")]


_text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    name=_text,
    iban=st.one_of(st.none(), _text),
    number=st.one_of(st.none(), _text),
    bank_code=st.one_of(st.none(), _text),
    bic=st.one_of(st.none(), _text),
    e2e=_text,
    when=st.one_of(st.none(), _text),
)
def test_arbitrary_text_never_crashes_validation(name, iban, number, bank_code, bic, e2e, when) -> None:
    party = Party(name, Account(iban=iban, number=number, bank_code=bank_code), Agent(bic=bic))
    for tenant in TENANTS.values():
        payment = make_payment(tenant.tenant_id, tenant.currencies[0], 100, party, party, end_to_end_id=e2e, requested_execution_date=when)
        for candidate in (payment, normalise_payment(payment)):
            problems = validate_payment(candidate, tenant, today=TODAY)
            assert all(isinstance(p.reason_code, ReasonCode) and p.field for p in problems)


# --------------------------------------------------------------------------- normalisation


def test_normalise_payment_puts_identifiers_in_canonical_form() -> None:
    raw = make_payment(
        currency=" eur ",
        debtor=Party(
            "  Anna \t Schmidt\u00a0 GmbH ",
            Account(iban=" de89 3704 0044 0532 0130 00 "),
            Agent(bic="coba de ff xxx"),
        ),
        creditor=Party("Chloe Roy", Account(iban="", number=" 7654321 ", bank_code="12345-004"), Agent(bic="")),
    )
    normal = normalise_payment(raw)
    assert normal.currency == "EUR"
    assert normal.debtor.name == "Anna Schmidt GmbH"
    assert normal.debtor.account == Account(iban="DE89370400440532013000")
    assert normal.debtor.agent == Agent(bic="COBADEFFXXX")
    assert normal.creditor.account == Account(number="7654321", bank_code="12345004")
    assert normal.creditor.agent == Agent(bic=None)
    assert normal.end_to_end_id == raw.end_to_end_id


@pytest.mark.parametrize(("raw", "normal"), [("60-16-13", "601613"), ("062-000", "062000"), ("0213 0001 7", "021300017")])
def test_normalise_strips_dashes_and_spaces_from_bank_codes(raw: str, normal: str) -> None:
    payment = make_payment(creditor=creditor_with(number="1", bank_code=raw))
    assert normalise_payment(payment).creditor.account.bank_code == normal


def test_normalise_composes_names_to_nfc() -> None:
    decomposed = "Jose\u0301"
    assert normalise_payment(make_payment(**named(decomposed))).debtor.name == "Jos\u00e9"


def test_normalise_returns_the_same_object_when_already_canonical() -> None:
    payment = sample_for("sepa_inst")
    assert normalise_payment(payment) is payment


def test_normalised_sloppy_input_validates() -> None:
    sloppy = make_payment(
        "emea", "gbp", 250_000,
        Party(" Oliver   Jones ", Account(number="31926819", bank_code="60-16-13"), Agent(bic="nwbk gb 2l")),
        Party("Amelia Brown", Account(number="55779911", bank_code="20-00-00")),
    )
    assert problems_of(sloppy) != []
    normal = normalise_payment(sloppy)
    assert problems_of(normal) == []
    assert select_rail(normal, TENANTS["emea"]).name == "fps"


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("limit", "currency", "minor"),
    [
        (Decimal("100000.00"), "EUR", 10_000_000),
        (Decimal("500000"), "JPY", 500_000),
        (Decimal("1.5"), "JPY", 1),  # finer than a yen: rounded down, never up
        (Decimal("12.345"), "BHD", 12_345),
        (Decimal("0"), "EUR", 0),
        (Decimal("-1"), "EUR", 0),
    ],
)
def test_limit_minor_units(limit: Decimal, currency: str, minor: int) -> None:
    assert limit_minor_units(limit, currency) == minor


def test_a_rails_mandatory_fields_come_from_its_tenant_file():
    """Faster Payments (emea.yaml) requires a payment reference; without one no rail fits."""
    from orchestrator.intake.models import CreditTransferIn
    from orchestrator.samples import sample_body
    from orchestrator.tenants import missing_mandatory_fields

    from orchestrator.settings import REPO_ROOT

    tenant = load_tenants(REPO_ROOT / "tenants")["emea"]
    body = sample_body("emea", 1)
    with_reference = normalise_payment(CreditTransferIn.model_validate(body).to_payment(
        "0b6f2a4e-7d3c-4f7a-9a51-3e8d2c1b0a99", "emea"))
    without = with_reference.replace(remittance_information=None)
    fps = tenant.rails_by_name["fps"]
    assert missing_mandatory_fields(fps, with_reference) == []
    assert missing_mandatory_fields(fps, without) == ["remittance_information"]
    assert select_rail(with_reference, tenant).name == "fps"
    assert select_rail(without, tenant) is None
    [problem] = validate_payment(without, tenant, today=date(2026, 11, 27))
    assert (problem.reason_code, problem.field) == (ReasonCode.no_rail_for_payment, "remittance_information")
    assert "requires remittance_information" in problem.detail


# --------------------------------------------------------------------------- UK IBANs in sterling

UK_IBAN = "GB29NWBK60161331926819"  # NWBK, sort code 601613, account 31926819


def to_uk_iban(payment: Payment, iban: str = UK_IBAN, currency: str = "GBP") -> Payment:
    creditor = payment.creditor
    return payment.replace(currency=currency, creditor=Party(creditor.name, Account(iban=iban), creditor.agent, "GB"))


def test_a_gbp_payment_to_a_uk_iban_goes_by_faster_payments_with_the_sort_code_and_number_inside_it():
    payment = normalise_payment(to_uk_iban(sample_for("fps")))
    assert payment.creditor.account == Account(number="31926819", bank_code="601613")
    assert problems_of(payment) == []
    assert select_rail(payment, TENANTS["emea"]).name == "fps"
    assert normalise_payment(payment) is payment, "the domestic form is already canonical"


def test_a_uk_iban_in_spaced_print_form_is_converted_too():
    payment = normalise_payment(to_uk_iban(sample_for("fps"), iban="gb29 nwbk 6016 1331 9268 19"))
    assert payment.creditor.account == Account(number="31926819", bank_code="601613")


def test_the_uk_iban_is_kept_outside_sterling_and_an_invalid_one_is_refused_as_such():
    euros = normalise_payment(to_uk_iban(sample_for("sepa_inst"), currency="EUR"))
    assert euros.creditor.account == Account(iban=UK_IBAN)
    broken = normalise_payment(to_uk_iban(sample_for("fps"), iban="GB28NWBK60161331926819"))
    assert broken.creditor.account == Account(iban="GB28NWBK60161331926819")
    assert (ReasonCode.invalid_iban, "creditor.account.iban") in problems_of(broken)


def test_a_non_uk_iban_in_sterling_still_needs_a_uk_account():
    payment = normalise_payment(to_uk_iban(sample_for("fps"), iban="DE89370400440532013000"))
    assert payment.creditor.account == Account(iban="DE89370400440532013000")
    assert [code for code, _ in problems_of(payment)] == [ReasonCode.no_rail_for_payment]


# --------------------------------------------------------------------------- late instructions


@pytest.mark.parametrize("days_late", [1, LATE_INSTRUCTION_GRACE_DAYS])
def test_a_late_pain001_instruction_is_executed_today(days_late: int) -> None:
    late = make_payment(requested_execution_date=(TODAY - timedelta(days=days_late)).isoformat(),
                        source_format="pain.001.001.09")
    dated = execute_late_instruction_today(late, TODAY)
    assert dated.requested_execution_date == TODAY.isoformat()
    assert dated.replace(requested_execution_date=late.requested_execution_date) == late  # nothing else moved
    assert problems_of(dated) == []


@pytest.mark.parametrize("source_format, when", [
    ("pain.001.001.03", TODAY - timedelta(days=LATE_INSTRUCTION_GRACE_DAYS + 1)),  # stale: refused, not executed
    ("json", TODAY - timedelta(days=1)),  # the sender can change the date: refused
    ("pacs.008.001.08", TODAY - timedelta(days=1)),  # an interbank settlement date: refused
])
def test_only_a_recent_late_pain001_is_dated_today_the_rest_stays_refused(source_format: str, when: date) -> None:
    payment = make_payment(requested_execution_date=when.isoformat(), source_format=source_format)
    assert execute_late_instruction_today(payment, TODAY) is payment
    assert problems_of(payment) == [(ReasonCode.invalid_execution_date, "requested_execution_date")]


def test_today_a_future_date_or_none_is_left_as_it_is() -> None:
    for when in (TODAY.isoformat(), (TODAY + timedelta(days=3)).isoformat(), None, "2026-02-30", "soon"):
        payment = make_payment(requested_execution_date=when, source_format="pain.001.001.09")
        assert execute_late_instruction_today(payment, TODAY) is payment
