"""ISO 20022 adapters: XSD validity, round trips, group header checks, hostile XML."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from orchestrator.domain import Account, Agent, Party, Payment, to_minor_units
from orchestrator.tenants import RailConfig, load_tenants

from adapters.iso20022 import (
    ISO_REASON_DESCRIPTIONS,
    IsoDocumentError,
    TransactionStatus,
    XmlSecurityError,
    XmlSyntaxError,
    build_pacs002,
    build_pacs008,
    parse_iso_document,
    parse_pacs002,
    parse_pacs008,
    parse_pain001,
    parse_untrusted,
    validate,
)
from adapters.iso20022._common import CLEARING_SYSTEM_IDS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "iso20022"
TENANTS = load_tenants(ROOT / "tenants")
RAILS: list[tuple[str, RailConfig]] = [(t.tenant_id, rail) for t in TENANTS.values() for rail in t.rails]
CREATED_AT = datetime(2026, 3, 2, 9, 30, 0, 123000, tzinfo=UTC)
PACS008_NS = "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"
NS = {"d": PACS008_NS}
FAST_S = 1.0

from tests.unit.iso_samples import BANK_CODE_DIGITS, sample_payment  # noqa: E402


def expected_after_round_trip(payment: Payment, message_id: str) -> Payment:
    return payment.replace(
        requested_execution_date=payment.requested_execution_date or CREATED_AT.date().isoformat(),
        source_format="pacs.008.001.08",
        source_message_id=message_id,
    )


def rewrite(document: bytes, xpath: str, text: str | None = None, **attrib: str) -> bytes:
    root = etree.fromstring(document)
    element = root.xpath(xpath, namespaces=NS)[0]
    if text is not None:
        element.text = text
    for key, value in attrib.items():
        element.set(key, value)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def assert_refused_fast(data: bytes, error_type: type[IsoDocumentError], problem_type: str) -> IsoDocumentError:
    started = time.perf_counter()
    with pytest.raises(error_type) as caught:
        parse_iso_document(data, "emea")
    assert time.perf_counter() - started < FAST_S
    assert caught.value.problem_type == problem_type
    return caught.value


# -- pacs.008 / pacs.002 validity for every configured rail -------------------------


@pytest.mark.parametrize(("tenant_id", "rail"), RAILS, ids=[rail.name for _, rail in RAILS])
def test_pacs008_and_pacs002_are_xsd_valid_for_every_rail(tenant_id: str, rail: RailConfig) -> None:
    payment = sample_payment(tenant_id, rail)
    document = build_pacs008([payment], rail, message_id="MSG-" + rail.name, created_at=CREATED_AT, validate=False)
    validate(etree.fromstring(document), "pacs.008.001.08")

    root = etree.fromstring(document)
    clearing = root.find(".//d:GrpHdr/d:SttlmInf/d:ClrSys", NS)
    assert clearing[0].text == rail.clearing.clearing_system_code
    assert root.findtext(".//d:PmtId/d:UETR", namespaces=NS) == payment.payment_id
    assert root.findtext(".//d:ChrgBr", namespaces=NS) == "SLEV"
    assert root.findtext(".//d:PmtTpInf/d:SvcLvl/d:Cd", namespaces=NS) == rail.clearing.service_level
    if rail.clearing.local_instrument:
        assert root.findtext(".//d:PmtTpInf/d:LclInstrm/d:Cd", namespaces=NS) == rail.clearing.local_instrument
    if rail.bank_code_scheme is not None:
        kind, code = CLEARING_SYSTEM_IDS[rail.bank_code_scheme]
        assert root.findtext(f".//d:CdtrAgt//d:ClrSysId/d:{kind}", namespaces=NS) == code
        assert root.findtext(".//d:CdtrAgt//d:MmbId", namespaces=NS) == payment.creditor.account.bank_code
        assert root.find(".//d:CdtrAcct/d:Id/d:Othr/d:Id", NS).text == payment.creditor.account.number
    else:
        assert root.findtext(".//d:CdtrAcct/d:Id/d:IBAN", namespaces=NS) == payment.creditor.account.iban

    parsed = parse_pacs008(document, tenant_id)
    assert parsed.payments == [expected_after_round_trip(payment, "MSG-" + rail.name)]
    assert parsed.clearing_system_code == rail.clearing.clearing_system_code

    statuses = [
        TransactionStatus(payment.end_to_end_id, payment.payment_id, "ACSC"),
        TransactionStatus("E2E-OTHER", str(uuid.uuid4()), "RJCT", "AC03", ISO_REASON_DESCRIPTIONS["AC03"]),
    ]
    report = build_pacs002("MSG-" + rail.name, statuses=statuses, message_id="RPT-1", created_at=CREATED_AT)
    validate(etree.fromstring(report), "pacs.002.001.12")
    parsed_report = parse_pacs002(report)
    assert parsed_report.original_message_id == "MSG-" + rail.name
    assert parsed_report.group_status == "PART"
    assert [(s.original_end_to_end_id, s.original_uetr, s.status, s.reason_code) for s in parsed_report.statuses] == [
        (s.original_end_to_end_id, s.original_uetr, s.status, s.reason_code) for s in statuses
    ]
    assert parsed_report.statuses[0].accepted_at == CREATED_AT
    assert parsed_report.statuses[1].accepted_at is None


def test_multi_payment_pacs008_group_header() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fednow")
    payments = [sample_payment(tenant_id, rail, amount_minor=amount) for amount in (1, 250, 100_000)]
    document = build_pacs008(
        payments, rail, message_id="BATCH-1", created_at=CREATED_AT,
        instructing_agent=Agent(bic="CHASUS33", member_id="021000021"), instructed_agent=Agent(member_id="011000015"),
    )
    parsed = parse_pacs008(document, tenant_id)
    assert parsed.number_of_transactions == 3
    assert str(parsed.control_sum) == "1002.51"
    assert parsed.total_interbank_settlement_amount_minor == 100_251
    assert parsed.total_interbank_settlement_currency == "USD"
    assert parsed.instructing_agent == Agent(bic="CHASUS33", member_id="021000021")
    assert parsed.instructed_agent == Agent(member_id="011000015")
    assert [t.uetr for t in parsed.transactions] == [p.payment_id for p in payments]
    assert [t.transaction_id for t in parsed.transactions] == [uuid.UUID(p.payment_id).hex for p in payments]


# -- round trip property -----------------------------------------------------------

_TEXT = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")


def _digits(count: int) -> st.SearchStrategy[str]:
    return st.from_regex(rf"[0-9]{{{count}}}", fullmatch=True)


@st.composite
def parties(draw: st.DrawFn, rail: RailConfig) -> Party:
    bic = draw(st.none() | st.from_regex(r"[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?", fullmatch=True))
    member_id = draw(st.none() | _digits(9))
    if rail.creditor_account == "iban":
        account = Account(iban=draw(st.from_regex(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", fullmatch=True)))
    else:
        number_digits = 18 if rail.bank_code_scheme == "clabe" else draw(st.integers(4, 17))
        account = Account(
            number=draw(_digits(number_digits)),
            bank_code=draw(_digits(BANK_CODE_DIGITS[rail.bank_code_scheme or "aba"])),
        )
    return Party(
        name=draw(st.text(_TEXT, min_size=1, max_size=140)),
        account=account,
        agent=Agent(bic=bic, member_id=member_id),
        country=draw(st.none() | st.from_regex(r"[A-Z]{2}", fullmatch=True)),
    )


@st.composite
def rail_payments(draw: st.DrawFn) -> tuple[str, RailConfig, Payment]:
    tenant_id, rail = draw(st.sampled_from(RAILS))
    currency = draw(st.sampled_from(rail.currencies))
    max_minor = to_minor_units(format(rail.max_amount, "f"), currency)
    payment = Payment(
        payment_id=str(draw(st.uuids(version=4))),
        tenant_id=tenant_id,
        end_to_end_id=draw(st.text(_TEXT, min_size=1, max_size=35)),
        amount_minor=draw(st.integers(1, max_minor)),
        currency=currency,
        debtor=draw(parties(rail)),
        creditor=draw(parties(rail)),
        remittance_information=draw(st.none() | st.text(_TEXT, min_size=1, max_size=140)),
        requested_execution_date=draw(st.none() | st.dates(min_value=date(1000, 1, 1)).map(date.isoformat)),
        purpose_code=draw(st.none() | st.from_regex(r"[A-Z]{4}", fullmatch=True)),
    )
    return tenant_id, rail, payment


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rail_payments())
def test_round_trip_canonical_pacs008_canonical(case: tuple[str, RailConfig, Payment]) -> None:
    tenant_id, rail, payment = case
    document = build_pacs008([payment], rail, message_id="RT-1", created_at=CREATED_AT)
    parsed = parse_pacs008(document, tenant_id)
    assert parsed.payments == [expected_after_round_trip(payment, "RT-1")]
    assert parse_iso_document(document, tenant_id) == parsed.payments


def test_names_are_truncated_and_cleaned_only_as_the_xsd_demands() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "sepa_inst")
    long_name = "Ä" * 150
    payment = sample_payment(tenant_id, rail)
    payment = payment.replace(
        creditor=Party("Bob\x00 \x07Example", payment.creditor.account, payment.creditor.agent),
        debtor=Party(long_name, payment.debtor.account, payment.debtor.agent),
        remittance_information="R" * 200,
    )
    parsed = parse_pacs008(build_pacs008([payment], rail, message_id="T", created_at=CREATED_AT), tenant_id)
    [result] = parsed.payments
    assert result.debtor.name == "Ä" * 140
    assert result.creditor.name == "Bob Example"
    assert result.remittance_information == "R" * 140


def test_payment_id_that_is_not_uuid4_travels_as_transaction_id_only() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fednow")
    payment = sample_payment(tenant_id, rail, payment_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "x")))
    parsed = parse_pacs008(build_pacs008([payment], rail, message_id="T", created_at=CREATED_AT), tenant_id)
    [transaction] = parsed.transactions
    assert transaction.uetr is None
    assert transaction.transaction_id == uuid.UUID(payment.payment_id).hex
    assert uuid.UUID(transaction.payment.payment_id).version == 4  # a fresh id, as for any UETR-less transfer


def test_build_refuses_what_the_xsd_refuses() -> None:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fednow")
    with pytest.raises(IsoDocumentError) as caught:
        too_long_id = sample_payment(tenant_id, rail, end_to_end_id="X" * 36)
        build_pacs008([too_long_id], rail, message_id="T", created_at=CREATED_AT)
    assert caught.value.problem_type == "schema-violation"
    assert caught.value.path == "/Document/FIToFICstmrCdtTrf/CdtTrfTxInf/PmtId/EndToEndId"
    with pytest.raises(ValueError):
        build_pacs008([sample_payment(tenant_id, rail)], rail, message_id="T", created_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        build_pacs008([], rail, message_id="T", created_at=CREATED_AT)


# -- group header and amount checks ------------------------------------------------


def _two_payment_document() -> tuple[str, bytes]:
    tenant_id, rail = next((t, r) for t, r in RAILS if r.name == "fps")
    payments = [sample_payment(tenant_id, rail, amount_minor=1000), sample_payment(tenant_id, rail, amount_minor=2550)]
    return tenant_id, build_pacs008(payments, rail, message_id="GH-1", created_at=CREATED_AT)


@pytest.mark.parametrize(
    ("xpath", "text", "attrib", "problem_type", "path_end"),
    [
        ("//d:GrpHdr/d:NbOfTxs", "3", {}, "transaction-count-mismatch", "GrpHdr/NbOfTxs"),
        ("//d:GrpHdr/d:CtrlSum", "35.51", {}, "control-sum-mismatch", "GrpHdr/CtrlSum"),
        ("//d:GrpHdr/d:TtlIntrBkSttlmAmt", "35.49", {}, "control-sum-mismatch", "GrpHdr/TtlIntrBkSttlmAmt"),
        ("//d:GrpHdr/d:TtlIntrBkSttlmAmt", None, {"Ccy": "EUR"}, "control-sum-mismatch", "GrpHdr/TtlIntrBkSttlmAmt"),
        ("//d:CdtTrfTxInf[2]/d:IntrBkSttlmAmt", "25.505", {}, "invalid-amount", "CdtTrfTxInf[2]/IntrBkSttlmAmt"),
        ("//d:CdtTrfTxInf[1]/d:IntrBkSttlmAmt", "0", {}, "invalid-amount", "CdtTrfTxInf[1]/IntrBkSttlmAmt"),
        ("//d:GrpHdr/d:NbOfTxs", "two", {}, "schema-violation", "GrpHdr/NbOfTxs"),
    ],
)
def test_group_header_and_amount_checks(
    xpath: str, text: str | None, attrib: dict[str, str], problem_type: str, path_end: str
) -> None:
    tenant_id, document = _two_payment_document()
    assert len(parse_pacs008(document, tenant_id).payments) == 2
    with pytest.raises(IsoDocumentError) as caught:
        parse_pacs008(rewrite(document, xpath, text, **attrib), tenant_id)
    assert caught.value.problem_type == problem_type
    assert caught.value.path is not None and caught.value.path.endswith(path_end)


def test_amount_with_more_decimals_than_the_currency_is_refused() -> None:
    tenant_id, document = _two_payment_document()
    # 12.345 is XSD-valid (five fraction digits) but GBP has two: it must not be rounded.
    bad = rewrite(document, "//d:CdtTrfTxInf[1]/d:IntrBkSttlmAmt", "12.345")
    with pytest.raises(IsoDocumentError, match="decimal places") as caught:
        parse_pacs008(bad, tenant_id)
    assert caught.value.problem_type == "invalid-amount"


def test_ctrl_sum_and_total_are_optional() -> None:
    tenant_id, document = _two_payment_document()
    root = etree.fromstring(document)
    header = root.find(".//d:GrpHdr", NS)
    for name in ("CtrlSum", "TtlIntrBkSttlmAmt"):
        header.remove(header.find(f"d:{name}", NS))
    parsed = parse_pacs008(etree.tostring(root), tenant_id)
    assert parsed.control_sum is None and parsed.total_interbank_settlement_amount_minor is None
    assert [p.amount_minor for p in parsed.payments] == [1000, 2550]


# -- pacs.002 ------------------------------------------------------------------------


def test_pacs002_group_rejection_round_trip() -> None:
    report = build_pacs002(
        "BROKEN-1", "pacs.008.001.08", (), message_id="RPT-2", created_at=CREATED_AT,
        group_status="RJCT", group_reason_code="FF01", group_reason_text="x" * 200,
    )
    parsed = parse_pacs002(report)
    assert (parsed.group_status, parsed.group_reason_code) == ("RJCT", "FF01")
    assert parsed.group_reason_text == "x" * 105
    assert parsed.statuses == ()


def test_pacs002_all_accepted_and_reason_descriptions() -> None:
    uetr = str(uuid.uuid4())
    report = build_pacs002(
        "M", statuses=[TransactionStatus("E", uetr, "ACSC")], message_id="R", created_at=CREATED_AT
    )
    parsed = parse_pacs002(report)
    assert parsed.group_status == "ACSC"
    assert parsed.statuses == (TransactionStatus("E", uetr, "ACSC", accepted_at=CREATED_AT),)
    for code in ("AC01", "AC03", "AC04", "AM02", "AM03", "AM04", "FF01", "RR04", "AB05", "AB06", "AG01", "DUPL"):
        assert ISO_REASON_DESCRIPTIONS[code]
    assert TransactionStatus("E", uetr, "RJCT", "AC03").reason_description == ISO_REASON_DESCRIPTIONS["AC03"]


# -- pain.001 ------------------------------------------------------------------------


def test_pain001_v03_multi_transaction() -> None:
    parsed = parse_pain001((FIXTURES / "pain.001.001.03-multi.xml").read_bytes(), "emea")
    assert (parsed.message_version, parsed.message_id, parsed.number_of_transactions) == (
        "pain.001.001.03", "EMEA-PAIN03-0001", 3,
    )
    assert str(parsed.control_sum) == "1751.25"
    assert parsed.initiating_party_name == "Acme Europe GmbH"
    assert [block.payment_information_id for block in parsed.payment_information] == ["PMTINF-EUR-1", "PMTINF-GBP-1"]
    first, second, third = parsed.payments
    assert (first.amount_minor, first.currency, first.end_to_end_id) == (100_000, "EUR", "E2E-INV-1001")
    assert first.debtor == Party(
        "Acme Europe GmbH", Account(iban="DE89370400440532013000"), Agent(bic="COBADEFFXXX"), "DE"
    )
    assert first.creditor == Party(
        "Fournisseur Général SARL", Account(iban="FR1420041010050500013M02606"), Agent(bic="BNPAFRPPXXX"), "FR"
    )
    assert (first.purpose_code, first.remittance_information, first.requested_execution_date) == (
        "SUPP", "Invoice 1001", "2026-03-02",
    )
    assert second.amount_minor == 25_000 and second.remittance_information == "Invoice 1002 second line"
    assert second.creditor.agent == Agent()
    assert third.debtor == Party("Acme UK Ltd", Account(number="31926819", bank_code="200000"), Agent())
    assert third.creditor.account == Account(number="55779911", bank_code="401276")
    assert (third.amount_minor, third.currency, third.requested_execution_date) == (50_125, "GBP", "2026-03-03")
    assert {(p.source_format, p.source_message_id) for p in parsed.payments} == {
        ("pain.001.001.03", "EMEA-PAIN03-0001")
    }
    assert len({p.payment_id for p in parsed.payments}) == 3
    assert all(uuid.UUID(p.payment_id).version == 4 for p in parsed.payments)


def test_pain001_v09_multi_transaction() -> None:
    data = (FIXTURES / "pain.001.001.09-multi.xml").read_bytes()
    parsed = parse_pain001(data, "na")
    assert parsed.message_version == "pain.001.001.09"
    assert parsed.created_at == datetime.fromisoformat("2026-03-02T14:00:00-05:00")
    payroll_1, payroll_2, vendor = parsed.payments
    assert payroll_1.payment_id == "0f6b5c1e-4a5d-4f8e-9b3a-2c1d0e9f8a7b"  # the UETR is kept
    assert payroll_1.debtor == Party(
        "Contoso Payroll Inc", Account(number="000123456789", bank_code="021000021"), Agent(bic="CHASUS33"), "US"
    )
    assert payroll_1.creditor.account == Account(number="44556677", bank_code="011000015")
    assert (payroll_1.amount_minor, payroll_1.purpose_code) == (160_010, "SALA")
    assert payroll_2.amount_minor == 100_000 and payroll_2.creditor.name == "John R. Worker"
    assert (vendor.currency, vendor.amount_minor, vendor.requested_execution_date) == ("CAD", 12_500, "2026-03-04")
    assert parse_iso_document(data, "na")[0] == payroll_1


V03, V09 = "pain.001.001.03-multi.xml", "pain.001.001.09-multi.xml"


@pytest.mark.parametrize(
    ("fixture", "old", "new", "problem_type"),
    [
        (V03, "<NbOfTxs>3</NbOfTxs>", "<NbOfTxs>4</NbOfTxs>", "transaction-count-mismatch"),
        (V03, "<NbOfTxs>2</NbOfTxs>", "<NbOfTxs>1</NbOfTxs>", "transaction-count-mismatch"),
        (V03, "<CtrlSum>1751.25</CtrlSum>", "<CtrlSum>1751.26</CtrlSum>", "control-sum-mismatch"),
        (V03, "<CtrlSum>1250.00</CtrlSum>", "<CtrlSum>1250.01</CtrlSum>", "control-sum-mismatch"),
        (V09, "<NbOfTxs>3</NbOfTxs>", "<NbOfTxs>2</NbOfTxs>", "transaction-count-mismatch"),
        (V09, "<NbOfTxs>2</NbOfTxs>", "<NbOfTxs>3</NbOfTxs>", "transaction-count-mismatch"),
        (V09, "<CtrlSum>2725.10</CtrlSum>", "<CtrlSum>2725.11</CtrlSum>", "control-sum-mismatch"),
        (V09, "<CtrlSum>2600.10</CtrlSum>", "<CtrlSum>2600</CtrlSum>", "control-sum-mismatch"),
        (V09, '<InstdAmt Ccy="USD">1000.00<', '<InstdAmt Ccy="USD">1000.001<', "invalid-amount"),
    ],
)
def test_pain001_header_mismatches(fixture: str, old: str, new: str, problem_type: str) -> None:
    data = (FIXTURES / fixture).read_text(encoding="utf-8")
    assert old in data
    with pytest.raises(IsoDocumentError) as caught:
        parse_pain001(data.replace(old, new, 1).encode(), "emea")
    assert caught.value.problem_type == problem_type


def test_pain001_equivalent_amount_is_unsupported() -> None:
    data = (FIXTURES / "pain.001.001.09-multi.xml").read_text(encoding="utf-8")
    data = data.replace(
        '<Amt><InstdAmt Ccy="CAD">125.00</InstdAmt></Amt>',
        '<Amt><EqvtAmt><Amt Ccy="USD">125.00</Amt><CcyOfTrf>CAD</CcyOfTrf></EqvtAmt></Amt>',
    )
    with pytest.raises(IsoDocumentError) as caught:
        parse_pain001(data.encode(), "na")
    assert caught.value.problem_type == "unsupported-feature"


def test_pain001_schema_violation_names_the_element() -> None:
    data = (FIXTURES / "pain.001.001.03-multi.xml").read_text(encoding="utf-8")
    data = data.replace("<PmtMtd>TRF</PmtMtd>", "<PmtMtd>CASH</PmtMtd>", 1)
    with pytest.raises(IsoDocumentError) as caught:
        parse_iso_document(data.encode(), "emea")
    assert caught.value.problem_type == "schema-violation"
    assert caught.value.path == "/Document/CstmrCdtTrfInitn/PmtInf[1]/PmtMtd"
    assert re.search(r"line \d+", caught.value.detail)


# -- hostile and unexpected input ------------------------------------------------------

PASSWD_LINE = next(iter(Path("/etc/passwd").read_text().splitlines()), "root:x:0:0")


def test_xxe_is_refused_without_reading_the_file() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"><x>&xxe;</x></Document>'
    )
    error = assert_refused_fast(data, XmlSecurityError, "forbidden-dtd")
    for text in (str(error), error.detail, error.title):
        assert PASSWD_LINE not in text and "root:" not in text


def test_billion_laughs_is_refused() -> None:
    entities = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    text = f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY l0 "lol">{entities}]><lolz>&l9;</lolz>'
    assert_refused_fast(text.encode(), XmlSecurityError, "forbidden-dtd")
    # In UTF-16 the byte pre-check cannot see it; entities are still never expanded.
    utf16 = text.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16")
    assert_refused_fast(utf16, XmlSecurityError, "forbidden-dtd")


def test_external_dtd_is_refused() -> None:
    data = b'<?xml version="1.0"?><!DOCTYPE Document SYSTEM "http://127.0.0.1:9/evil.dtd"><Document/>'
    assert_refused_fast(data, XmlSecurityError, "forbidden-dtd")


def test_doctype_in_utf16_is_refused_after_parsing() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>'
    error = assert_refused_fast(text.encode("utf-16"), XmlSecurityError, "forbidden-dtd")
    assert "root:" not in str(error)


def test_deep_nesting_is_refused() -> None:
    data = b"<a>" * 10_000 + b"</a>" * 10_000
    assert_refused_fast(data, XmlSecurityError, "document-too-deep")
    # Within libxml2's own limit but over ours:
    moderate = b"<a>" * 100 + b"</a>" * 100
    with pytest.raises(XmlSecurityError) as caught:
        parse_untrusted(moderate)
    assert caught.value.problem_type == "document-too-deep"


def test_oversize_document_is_refused_before_parsing() -> None:
    data = b"<Document>" + b" " * (9 * 1024 * 1024) + b"</Document>"
    assert_refused_fast(data, XmlSecurityError, "document-too-large")
    with pytest.raises(XmlSecurityError):
        parse_untrusted(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)


@pytest.mark.parametrize("data", [b"", b"   ", b"not xml at all", b"{\"json\": true}", b"<a><b></a>", b"\xff\xfe\x00<"])
def test_non_xml_is_refused(data: bytes) -> None:
    assert_refused_fast(data, XmlSyntaxError, "malformed-xml")


def test_undeclared_entity_is_a_syntax_error() -> None:
    assert_refused_fast(b"<Document>&xxe;</Document>", XmlSyntaxError, "malformed-xml")


@pytest.mark.parametrize(
    "namespace",
    [
        "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.02",
        "urn:iso:std:iso:20022:tech:xsd:pacs.002.001.12",
        "urn:example:not-iso",
        None,
    ],
)
def test_wrong_namespace_is_unsupported(namespace: str | None) -> None:
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    data = f"<Document{xmlns}><FIToFICstmrCdtTrf/></Document>".encode()
    assert_refused_fast(data, IsoDocumentError, "unsupported-message")
    with pytest.raises(IsoDocumentError) as caught:
        parse_pain001(data, "emea")
    assert caught.value.problem_type == "unsupported-message"


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_untrusted(b'<?xml version="1.0"?><?xml-stylesheet href="x.xsl"?><a><!-- c --><b>1</b></a>')
    assert [child.tag for child in root] == ["b"]


def test_parse_untrusted_requires_bytes() -> None:
    with pytest.raises(TypeError):
        parse_untrusted("<a/>")  # type: ignore[arg-type]


def test_a_required_element_that_is_missing_is_a_refused_document_not_a_crash():
    # The XSD makes these elements required, so validation refuses such a document first;
    # the readers still never dereference a missing element (python -O drops asserts).
    from adapters.iso20022._common import Xml

    xml = Xml("urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10")
    root = xml.root()
    report = xml.sub(root, "FIToFIPmtStsRpt")
    assert xml.require(root, "FIToFIPmtStsRpt") is report
    with pytest.raises(IsoDocumentError) as refused:
        xml.require(report, "GrpHdr", "CreDtTm")
    assert refused.value.problem_type == "schema-violation" and "GrpHdr/CreDtTm" in refused.value.detail
