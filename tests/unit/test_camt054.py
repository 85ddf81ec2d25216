"""camt.054.001.08 notifications: official-XSD validity for every rail, exact amounts and sums."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from orchestrator.domain import Account, Agent, Party, Payment, currency_exponent, to_minor_units
from orchestrator.tenants import RailConfig, load_tenants

from adapters.iso20022 import Camt054Entry, IsoDocumentError, build_camt054, schemas, validate
from adapters.iso20022._common import CLEARING_SYSTEM_IDS
from adapters.iso20022.camt054 import MESSAGE_VERSION, bank_transaction_code
from tests.unit.iso_samples import sample_party
from tests.unit.iso_samples import sample_payment as _sample_payment

ROOT = Path(__file__).resolve().parents[2]
TENANTS = load_tenants(ROOT / "tenants")
RAILS: list[tuple[str, RailConfig]] = [(t.tenant_id, rail) for t in TENANTS.values() for rail in t.rails]
CREATED_AT = datetime(2026, 3, 2, 9, 30, 0, 123000, tzinfo=UTC)
BOOKED_AT = datetime(2026, 3, 2, 9, 29, 58, 500000, tzinfo=UTC)
NS = {"d": schemas.namespace_of(MESSAGE_VERSION)}

def sample_payment(tenant_id: str, rail: RailConfig, **changes: object) -> Payment:
    return _sample_payment(tenant_id, rail, source_message_id="MSG-SOURCE-1").replace(**changes)


def build(entries: list[Camt054Entry], account: Account, currency: str, **kwargs: object) -> bytes:
    return build_camt054(
        entries, message_id="NTF-1", created_at=CREATED_AT, account=account, account_owner="Bob Example",
        currency=currency, **kwargs,
    )


def texts(root: etree._Element, xpath: str) -> list[str]:
    return [element.text for element in root.xpath(xpath, namespaces=NS)]


def amount_in_minor(text: str, currency: str) -> int:
    """Minor units of an amount string, refusing any rounding."""
    scaled = Decimal(text).scaleb(currency_exponent(currency))
    assert scaled == scaled.to_integral_value(), text
    return int(scaled)


@pytest.fixture(scope="module")
def xmlschema_validator():
    """The same official XSD, compiled by a second, independent validator (xmlschema)."""
    import xmlschema

    return xmlschema.XMLSchema(schemas._xsd_bytes(MESSAGE_VERSION).decode())


# -- validity for every configured rail ---------------------------------------------


@pytest.mark.parametrize(("tenant_id", "rail"), RAILS, ids=[rail.name for _, rail in RAILS])
def test_credit_and_debit_notifications_are_xsd_valid_for_every_rail(tenant_id, rail, xmlschema_validator):
    credit = sample_payment(tenant_id, rail)
    seven = to_minor_units("7", rail.currencies[0])
    debit = sample_payment(tenant_id, rail, end_to_end_id="E2E-OUT-1", amount_minor=seven)
    owner = credit.creditor
    entries = [
        Camt054Entry(credit, "CRDT", BOOKED_AT, rail=rail),
        Camt054Entry(debit.replace(debtor=owner, creditor=credit.debtor), "DBIT", BOOKED_AT, rail=rail),
    ]
    document = build(entries, owner.account, rail.currencies[0], validate=False,
                     bank_code_scheme=rail.bank_code_scheme)
    root = etree.fromstring(document)
    validate(root, MESSAGE_VERSION)  # libxml2, the official XSD
    assert xmlschema_validator.is_valid(document.decode())  # a second validator agrees

    assert etree.QName(root).namespace == "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08"
    assert texts(root, "//d:GrpHdr/d:MsgId") == ["NTF-1"]
    assert texts(root, "//d:GrpHdr/d:CreDtTm") == ["2026-03-02T09:30:00.123Z"]
    assert texts(root, "//d:Ntfctn/d:Acct/d:Ccy") == [rail.currencies[0]]
    assert texts(root, "//d:Ntfctn/d:Acct/d:Ownr/d:Nm") == ["Bob Example"]
    if owner.account.iban:
        assert texts(root, "//d:Ntfctn/d:Acct/d:Id/d:IBAN") == [owner.account.iban]
    else:
        assert texts(root, "//d:Ntfctn/d:Acct/d:Id/d:Othr/d:Id") == [owner.account.number]
        kind, code = CLEARING_SYSTEM_IDS[rail.bank_code_scheme]
        assert texts(root, f"//d:Ntfctn/d:Acct/d:Svcr//d:ClrSysId/d:{kind}") == [code]
        assert texts(root, "//d:Ntfctn/d:Acct/d:Svcr//d:MmbId") == [owner.account.bank_code]

    ntries = root.findall(".//d:Ntry", NS)
    assert len(ntries) == 2
    for ntry, entry in zip(ntries, entries, strict=True):
        payment = entry.payment
        assert ntry.findtext("d:Amt", namespaces=NS) == payment.amount
        assert ntry.find("d:Amt", NS).get("Ccy") == payment.currency
        assert ntry.findtext("d:CdtDbtInd", namespaces=NS) == entry.credit_debit
        assert ntry.findtext("d:Sts/d:Cd", namespaces=NS) == "BOOK"
        assert ntry.findtext("d:BookgDt/d:DtTm", namespaces=NS) == "2026-03-02T09:29:58.500Z"
        assert ntry.findtext("d:ValDt/d:Dt", namespaces=NS) == "2026-03-02"
        domain, family, sub_family = bank_transaction_code(entry.credit_debit, rail)
        assert ntry.findtext("d:BkTxCd/d:Domn/d:Cd", namespaces=NS) == domain == "PMNT"
        assert ntry.findtext("d:BkTxCd/d:Domn/d:Fmly/d:Cd", namespaces=NS) == family
        assert ntry.findtext("d:BkTxCd/d:Domn/d:Fmly/d:SubFmlyCd", namespaces=NS) == sub_family
        assert sub_family == ("ESCT" if rail.clearing.service_level == "SEPA" else "DMCT")

        [tx] = ntry.findall("d:NtryDtls/d:TxDtls", NS)
        assert tx.findtext("d:Refs/d:EndToEndId", namespaces=NS) == payment.end_to_end_id
        assert tx.findtext("d:Refs/d:UETR", namespaces=NS) == payment.payment_id
        assert tx.findtext("d:Refs/d:TxId", namespaces=NS) == uuid.UUID(payment.payment_id).hex
        assert tx.findtext("d:Refs/d:MsgId", namespaces=NS) == "MSG-SOURCE-1"
        assert tx.findtext("d:Amt", namespaces=NS) == payment.amount
        assert tx.findtext("d:CdtDbtInd", namespaces=NS) == entry.credit_debit
        # The counterparty: the debtor of a credit, the creditor of a debit; both are written.
        counterparty = payment.debtor if entry.credit_debit == "CRDT" else payment.creditor
        side = "Dbtr" if entry.credit_debit == "CRDT" else "Cdtr"
        assert tx.findtext(f"d:RltdPties/d:{side}/d:Pty/d:Nm", namespaces=NS) == counterparty.name
        account_path = f"d:RltdPties/d:{side}Acct/d:Id/" + ("d:IBAN" if counterparty.account.iban else "d:Othr/d:Id")
        assert tx.findtext(account_path, namespaces=NS) == (counterparty.account.iban or counterparty.account.number)
        if rail.bank_code_scheme is not None:
            assert tx.findtext(f"d:RltdAgts/d:{side}Agt//d:MmbId", namespaces=NS) == counterparty.account.bank_code
        else:
            assert tx.findtext(f"d:RltdAgts/d:{side}Agt//d:BICFI", namespaces=NS) == counterparty.agent.bic
        assert tx.findtext("d:Purp/d:Cd", namespaces=NS) == "GDDS"
        assert tx.findtext("d:RmtInf/d:Ustrd", namespaces=NS) == "Invoice 42"
        if rail.clearing.local_instrument:
            assert tx.findtext("d:LclInstrm/d:Cd", namespaces=NS) == rail.clearing.local_instrument


# -- exact amounts and sums ------------------------------------------------------------


def test_summary_counts_and_sums_are_exact() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fednow")
    amounts = [("CRDT", 1), ("CRDT", 10), ("DBIT", 999_999), ("CRDT", 100_000_000_01), ("DBIT", 3)]
    entries = [
        Camt054Entry(sample_payment(tenant_id, rail, amount_minor=minor, end_to_end_id=f"E2E-{i}"), direction,
                     BOOKED_AT, rail=rail)
        for i, (direction, minor) in enumerate(amounts)
    ]
    root = etree.fromstring(build(entries, Account(number="00000022", bank_code="222222222"), "USD"))
    summary = root.find(".//d:TxsSummry", NS)
    assert summary.findtext("d:TtlNtries/d:NbOfNtries", namespaces=NS) == "5"
    assert summary.findtext("d:TtlNtries/d:Sum", namespaces=NS) == "100010000.14"
    assert summary.findtext("d:TtlNtries/d:TtlNetNtry/d:Amt", namespaces=NS) == "99990000.10"
    assert summary.findtext("d:TtlNtries/d:TtlNetNtry/d:CdtDbtInd", namespaces=NS) == "CRDT"
    assert summary.findtext("d:TtlCdtNtries/d:NbOfNtries", namespaces=NS) == "3"
    assert summary.findtext("d:TtlCdtNtries/d:Sum", namespaces=NS) == "100000000.12"
    assert summary.findtext("d:TtlDbtNtries/d:NbOfNtries", namespaces=NS) == "2"
    assert summary.findtext("d:TtlDbtNtries/d:Sum", namespaces=NS) == "10000.02"
    assert texts(root, "//d:Ntry/d:Amt") == ["0.01", "0.10", "9999.99", "100000000.01", "0.03"]


def test_net_debit_and_a_side_without_entries() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "sepa_inst")
    entries = [Camt054Entry(sample_payment(tenant_id, rail, amount_minor=5_00), "DBIT", BOOKED_AT, rail=rail)]
    root = etree.fromstring(build(entries, Account(iban="DE22370400440532013022"), "EUR"))
    assert texts(root, "//d:TtlNetNtry/d:Amt") == ["5.00"]
    assert texts(root, "//d:TtlNetNtry/d:CdtDbtInd") == ["DBIT"]
    assert texts(root, "//d:TtlCdtNtries/d:NbOfNtries") == ["0"]
    assert texts(root, "//d:TtlCdtNtries/d:Sum") == ["0.00"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(RAILS),
    st.lists(st.tuples(st.sampled_from(["CRDT", "DBIT"]), st.integers(1, 10**15)), min_size=1, max_size=8),
)
def test_amounts_and_sums_equal_the_minor_units_exactly(case, bookings) -> None:
    tenant_id, rail = case
    currency = rail.currencies[0]
    entries = [
        Camt054Entry(sample_payment(tenant_id, rail, amount_minor=minor), direction, BOOKED_AT, rail=rail)
        for direction, minor in bookings
    ]
    root = etree.fromstring(build(entries, sample_party(rail, "Bob Example", 22).account, currency))
    assert [amount_in_minor(text, currency) for text in texts(root, "//d:Ntry/d:Amt")] == [m for _, m in bookings]
    assert [amount_in_minor(text, currency) for text in texts(root, "//d:TxDtls/d:Amt")] == [m for _, m in bookings]
    credits = sum(m for d, m in bookings if d == "CRDT")
    debits = sum(m for d, m in bookings if d == "DBIT")
    assert amount_in_minor(texts(root, "//d:TtlNtries/d:Sum")[0], currency) == credits + debits
    assert amount_in_minor(texts(root, "//d:TtlCdtNtries/d:Sum")[0], currency) == credits
    assert amount_in_minor(texts(root, "//d:TtlDbtNtries/d:Sum")[0], currency) == debits
    net = amount_in_minor(texts(root, "//d:TtlNetNtry/d:Amt")[0], currency)
    sign = 1 if texts(root, "//d:TtlNetNtry/d:CdtDbtInd")[0] == "CRDT" else -1
    assert sign * net == credits - debits


# -- details -------------------------------------------------------------------------


def test_booking_times_are_written_in_utc_and_value_date_can_be_given() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "npp")
    sydney = timezone(timedelta(hours=11))
    entries = [
        Camt054Entry(sample_payment(tenant_id, rail), "CRDT", datetime(2026, 3, 3, 8, 0, tzinfo=sydney), rail=rail),
        Camt054Entry(sample_payment(tenant_id, rail), "CRDT", BOOKED_AT, value_date="2026-03-03", rail=rail),
    ]
    root = etree.fromstring(build(entries, sample_party(rail, "Bob", 22).account, "AUD"))
    assert texts(root, "//d:Ntry/d:BookgDt/d:DtTm") == ["2026-03-02T21:00:00.000Z", "2026-03-02T09:29:58.500Z"]
    assert texts(root, "//d:Ntry/d:ValDt/d:Dt") == ["2026-03-02", "2026-03-03"]


def test_an_entry_without_rail_or_uetr_and_an_owner_without_name() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "sepa_inst")
    payment = sample_payment(tenant_id, rail, payment_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "x")),
                             source_message_id=None, purpose_code=None, remittance_information=None)
    document = build_camt054(
        [Camt054Entry(payment, "CRDT", BOOKED_AT)], message_id="NTF-2", created_at=CREATED_AT,
        account=Account(iban="DE22370400440532013022"), account_owner=None, currency="EUR",
        notification_id="NTF-2/1", account_servicer=Agent(bic="COBADEFFXXX"),
    )
    root = etree.fromstring(document)
    assert texts(root, "//d:Ntfctn/d:Id") == ["NTF-2/1"]
    assert root.find(".//d:Acct/d:Ownr", NS) is None
    assert texts(root, "//d:Acct/d:Svcr/d:FinInstnId/d:BICFI") == ["COBADEFFXXX"]
    assert root.find(".//d:Refs/d:UETR", NS) is None  # a version-5 UUID is no UETR
    assert texts(root, "//d:Refs/d:TxId") == [uuid.UUID(payment.payment_id).hex]
    assert root.find(".//d:Refs/d:MsgId", NS) is None
    assert root.find(".//d:TxDtls/d:Purp", NS) is None and root.find(".//d:TxDtls/d:RmtInf", NS) is None
    assert texts(root, "//d:Ntry/d:BkTxCd/d:Domn/d:Fmly/d:SubFmlyCd") == ["OTHR"]


def test_names_and_remittance_are_cleaned_and_truncated_as_the_xsd_demands() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "sepa_inst")
    payment = sample_payment(tenant_id, rail, remittance_information="R" * 200)
    payment = payment.replace(debtor=Party("Ali\x00ce\x07 " + "Ä" * 200, payment.debtor.account, payment.debtor.agent))
    root = etree.fromstring(build([Camt054Entry(payment, "CRDT", BOOKED_AT, rail=rail)],
                                  Account(iban="DE22370400440532013022"), "EUR"))
    assert texts(root, "//d:RltdPties/d:Dbtr/d:Pty/d:Nm") == [("Alice " + "Ä" * 200)[:140]]
    assert texts(root, "//d:RmtInf/d:Ustrd") == ["R" * 140]


def test_arguments_that_make_no_notification_are_refused() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fps")
    payment = sample_payment(tenant_id, rail)
    account = sample_party(rail, "Bob", 22).account
    with pytest.raises(ValueError, match="at least one entry"):
        build([], account, "GBP")
    with pytest.raises(ValueError, match="payment is in GBP"):
        build([Camt054Entry(payment, "CRDT", BOOKED_AT)], account, "EUR")
    with pytest.raises(ValueError, match="CRDT or DBIT"):
        build([Camt054Entry(payment, "CREDIT", BOOKED_AT)], account, "GBP")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        build([Camt054Entry(payment, "CRDT", datetime(2026, 3, 2, 9, 0))], account, "GBP")
    with pytest.raises(ValueError):
        build([Camt054Entry(payment, "CRDT", BOOKED_AT)], account, "ZZZ")
    with pytest.raises(IsoDocumentError) as caught:
        build([Camt054Entry(payment, "CRDT", BOOKED_AT)], Account(), "GBP")
    assert caught.value.problem_type == "unrepresentable-payment"


def test_what_the_xsd_refuses_is_refused_at_build_time() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fps")
    account = sample_party(rail, "Bob", 22).account
    too_long = sample_payment(tenant_id, rail, end_to_end_id="X" * 36)
    with pytest.raises(IsoDocumentError) as caught:
        build([Camt054Entry(too_long, "CRDT", BOOKED_AT, rail=rail)], account, "GBP")
    assert caught.value.problem_type == "schema-violation"
    assert "EndToEndId" in caught.value.detail
    control = sample_payment(tenant_id, rail, end_to_end_id="E2E\x01")
    with pytest.raises(IsoDocumentError) as caught:
        build([Camt054Entry(control, "CRDT", BOOKED_AT, rail=rail)], account, "GBP")
    assert caught.value.problem_type == "unrepresentable-payment"
