"""camt.053.001.08 cycle statements: official-XSD validity (two validators), exact sums, balances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from orchestrator.domain import currency_exponent
from orchestrator.tenants import RailConfig, load_tenants

from adapters.iso20022 import IsoDocumentError, schemas
from adapters.iso20022.camt053 import MESSAGE_VERSION, StatementAccount, StatementEntry, build_camt053
from tests.unit.iso_samples import sample_payment

ROOT = Path(__file__).resolve().parents[2]
TENANTS = load_tenants(ROOT / "tenants")
RAILS: list[tuple[str, RailConfig]] = [(t.tenant_id, rail) for t in TENANTS.values() for rail in t.rails]
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
END = START + timedelta(seconds=60)
NS = {"d": schemas.namespace_of(MESSAGE_VERSION)}


@pytest.fixture(scope="module")
def xmlschema_validator():
    """The same official XSD, compiled by a second, independent validator (xmlschema)."""
    import xmlschema

    return xmlschema.XMLSchema(schemas._xsd_bytes(MESSAGE_VERSION).decode())


def build(entries_by_currency, rail: RailConfig | None = None, **kwargs) -> bytes:
    arguments = dict(message_id="S0123456789abcdef0123456789ab", created_at=END + timedelta(seconds=31),
                     period_start=START, period_end=END,
                     account=StatementAccount("sepa_inst", "emea", "SEPA Instant settlement position"),
                     value_date="2026-03-02", rail=rail, sequence_number=29_530_000)
    arguments.update(kwargs)
    return build_camt053(entries_by_currency, **arguments)


def texts(root, xpath: str) -> list[str]:
    return [element.text for element in root.xpath(xpath, namespaces=NS)]


def minor(text: str, currency: str) -> int:
    scaled = Decimal(text).scaleb(currency_exponent(currency))
    assert scaled == scaled.to_integral_value(), text
    return int(scaled)


@pytest.mark.parametrize(("tenant_id", "rail"), RAILS, ids=[f"{t}-{r.name}" for t, r in RAILS])
def test_a_statement_of_every_rail_is_valid_against_the_official_xsd(tenant_id, rail, xmlschema_validator):
    payments = [sample_payment(tenant_id, rail, amount_minor=100 + i) for i in range(3)]
    document = build({rail.currencies[0]: [StatementEntry(p, START + timedelta(seconds=i))
                                           for i, p in enumerate(payments)]}, rail)
    root = etree.fromstring(document)
    schemas.validate(root, MESSAGE_VERSION)  # raises on the first violation
    assert xmlschema_validator.is_valid(document.decode())
    assert texts(root, "//d:Ntry/d:NtryDtls/d:TxDtls/d:Refs/d:UETR") == [p.payment_id for p in payments]


def test_sums_balances_and_references_are_exact():
    rail = TENANTS["emea"].rails_by_name["sepa_inst"]
    amounts = [12_550, 1, 99_999_999]
    payments = [sample_payment("emea", rail, amount_minor=a) for a in amounts]
    root = etree.fromstring(build({"EUR": [StatementEntry(p, START) for p in payments]}, rail))
    [statement] = root.xpath("//d:Stmt", namespaces=NS)
    assert texts(statement, "d:Id") == ["S0123456789abcdef0123456789abEUR"]
    assert texts(statement, "d:ElctrncSeqNb") == ["29530000"]
    assert texts(statement, "d:FrToDt/d:FrDtTm") == ["2026-03-02T09:30:00.000Z"]
    assert texts(statement, "d:FrToDt/d:ToDtTm") == ["2026-03-02T09:31:00.000Z"]
    assert texts(statement, "d:Acct/d:Id/d:Othr/d:Id") == ["sepa_inst"]
    assert texts(statement, "d:Acct/d:Id/d:Othr/d:Issr") == ["emea"]
    assert texts(statement, "d:Bal/d:Tp/d:CdOrPrtry/d:Cd") == ["OPBD", "CLBD"]
    assert [minor(t, "EUR") for t in texts(statement, "d:Bal/d:Amt")] == [0, sum(amounts)]
    assert texts(statement, "d:Bal/d:CdtDbtInd") == ["CRDT", "DBIT"]
    assert texts(statement, "d:TxsSummry/d:TtlNtries/d:NbOfNtries") == ["3"]
    assert minor(texts(statement, "d:TxsSummry/d:TtlNtries/d:Sum")[0], "EUR") == sum(amounts)
    assert minor(texts(statement, "d:TxsSummry/d:TtlDbtNtries/d:Sum")[0], "EUR") == sum(amounts)
    assert texts(statement, "d:TxsSummry/d:TtlCdtNtries/d:NbOfNtries") == ["0"]
    assert [minor(t, "EUR") for t in texts(statement, "d:Ntry/d:Amt")] == amounts
    assert set(texts(statement, "d:Ntry/d:CdtDbtInd")) == {"DBIT"}
    assert set(texts(statement, "d:Ntry/d:ValDt/d:Dt")) == {"2026-03-02"}
    assert texts(statement, "d:Ntry/d:BkTxCd/d:Domn/d:Fmly/d:SubFmlyCd") == ["ESCT"] * 3
    assert texts(statement, "d:Ntry/d:NtryDtls/d:TxDtls/d:RltdAgts/d:CdtrAgt/d:FinInstnId/d:BICFI") == [
        "COBADEFFXXX"] * 3


def test_customer_names_and_accounts_are_not_in_a_settlement_statement():
    rail = TENANTS["emea"].rails_by_name["sepa_inst"]
    payment = sample_payment("emea", rail)
    document = build({"EUR": [StatementEntry(payment, START)]}, rail).decode()
    assert payment.debtor.name not in document and payment.creditor.name not in document
    assert payment.debtor.account.iban not in document and payment.creditor.account.iban not in document


def test_a_currency_without_entries_states_a_flat_position():
    rail = TENANTS["emea"].rails_by_name["sepa_inst"]
    root = etree.fromstring(build({"EUR": [], "GBP": []}, rail))
    schemas.validate(root, MESSAGE_VERSION)
    assert texts(root, "//d:Stmt/d:Acct/d:Ccy") == ["EUR", "GBP"]
    assert root.xpath("//d:Ntry | //d:TxsSummry", namespaces=NS) == []
    assert [minor(t, "EUR") for t in texts(root, "//d:Stmt[1]/d:Bal/d:Amt")] == [0, 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(RAILS), st.lists(st.integers(min_value=1, max_value=10**15), min_size=1, max_size=20))
def test_summary_equals_the_minor_units_exactly(case, amounts):
    tenant_id, rail = case
    currency = rail.currencies[0]
    entries = [StatementEntry(sample_payment(tenant_id, rail, amount_minor=a), START) for a in amounts]
    root = etree.fromstring(build({currency: entries}, rail))
    assert sum(minor(t, currency) for t in texts(root, "//d:Ntry/d:Amt")) == sum(amounts)
    assert minor(texts(root, "//d:TtlNtries/d:Sum")[0], currency) == sum(amounts)
    assert minor(texts(root, "//d:Bal[2]/d:Amt")[0], currency) == sum(amounts)


def test_arguments_that_make_no_statement_are_refused():
    rail = TENANTS["emea"].rails_by_name["sepa_inst"]
    eur = sample_payment("emea", rail)
    with pytest.raises(ValueError, match="at least one statement"):
        build({}, rail)
    with pytest.raises(ValueError, match="is in EUR"):
        build({"GBP": [StatementEntry(eur, START)]}, rail)
    with pytest.raises(ValueError, match="timezone-aware"):
        build({"EUR": [StatementEntry(eur, START.replace(tzinfo=None))]}, rail)
    with pytest.raises(ValueError, match="timezone-aware"):
        build({"EUR": []}, rail, period_start=START.replace(tzinfo=None))
    with pytest.raises(ValueError, match="no room"):
        build({"EUR": []}, rail, message_id="X" * 33)
    with pytest.raises(ValueError, match="exceeds 34"):
        build({"EUR": []}, rail, account=StatementAccount("x" * 35))


def test_what_the_xsd_refuses_is_refused_at_build_time():
    rail = TENANTS["emea"].rails_by_name["sepa_inst"]
    # An end-to-end id longer than Max35Text cannot be stated.
    payment = sample_payment("emea", rail, end_to_end_id="E" * 36)
    with pytest.raises(IsoDocumentError) as caught:
        build({"EUR": [StatementEntry(payment, START)]}, rail)
    assert caught.value.problem_type == "schema-violation"
