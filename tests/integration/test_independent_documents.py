"""Documents written by independent ISO 20022 generators are accepted by our intake.

Our own builder and parser agree with each other by construction; these tests feed the
running system documents that other people's code produced, offline, from PyPI:

* `sepaxml` (python-sepaxml, by Raphael Michel) writes pain.001.001.03 and .09 SEPA
  credit transfer initiations, validated against its own copy of the XSD;
* `pyiso20022` (by Peter Houghton) has xsdata dataclasses generated from the official
  XSDs, serialised here with `xsdata` into a pacs.008.001.08.

Each document goes to `POST /v1/payments/iso20022`; every transaction must become one
payment that settles with its end-to-end id kept.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import httpx
import pytest
from lxml import etree

from adapters.iso20022 import schemas, validate
from tests.harness import System

pytestmark = pytest.mark.integration

DEBTOR = {"name": "Muller Maschinenbau GmbH", "IBAN": "DE89370400440532013000", "BIC": "COBADEFFXXX"}
# (name, IBAN, BIC, amount in cents): public test IBANs with valid check digits.
SEPA_CREDITORS = [
    ("Dupont et Fils SA", "FR1420041010050500013M02606", "PSSTFRPPLIL", 125_50),
    ("Van der Berg BV", "NL91ABNA0417164300", "ABNANL2AXXX", 9_99),
    ("Rossi Costruzioni Srl", "IT60X0542811101000000123456", "BPMOIT22XXX", 1_000_00),
]
ISO_HEADERS = {"Content-Type": "application/xml"}
TERMINAL_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    running = System(kafka_bootstrap, tmp_path_factory.mktemp("independent"))
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def unique_end_to_end_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20].upper()}"  # well under Max35Text


def post_document(system: System, tenant: str, document: bytes) -> list[str]:
    answer = httpx.post(f"{system.base_url}/v1/payments/iso20022", content=document,
                        headers={**ISO_HEADERS, **system.auth(tenant)}, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["payment_ids"]


def assert_settled_with_end_to_end_ids(system: System, tenant: str, payment_ids: list[str],
                                       end_to_end_ids: list[str]) -> None:
    assert len(payment_ids) == len(end_to_end_ids) == len(set(payment_ids))
    records = system.wait_terminal({pid: tenant for pid in payment_ids}, timeout_s=TERMINAL_TIMEOUT_S)
    assert len(records) == len(payment_ids), f"unfinished; execution log:\n{system.log_tail('execution')}"
    for payment_id, end_to_end_id in zip(payment_ids, end_to_end_ids, strict=True):
        record = system.get(tenant, payment_id).json()
        assert record["end_to_end_id"] == end_to_end_id, record
        assert record["status"] == "SETTLED", record


# -- sepaxml: pain.001 --------------------------------------------------------------


def sepaxml_pain001(schema: str, end_to_end_ids: list[str] | None, execution_date: date | None = None) -> bytes:
    """A batch pain.001 from one debtor to SEPA_CREDITORS, executed today (or on
    `execution_date`); without end-to-end ids sepaxml writes the SEPA placeholder NOTPROVIDED."""
    from sepaxml import SepaTransfer

    transfer = SepaTransfer({**DEBTOR, "batch": True, "currency": "EUR"}, schema=schema, clean=True)
    for index, (name, iban, bic, cents) in enumerate(SEPA_CREDITORS):
        payment = {"name": name, "IBAN": iban, "BIC": bic, "amount": cents,
                   "execution_date": execution_date or date.today(),
                   "description": f"Invoice {index + 1}"}
        if end_to_end_ids is not None:
            payment["endtoend_id"] = end_to_end_ids[index]
        transfer.add_payment(payment)
    return transfer.export(validate=True)  # sepaxml checks its output against its own XSD copy


@pytest.mark.parametrize("schema", ["pain.001.001.03", "pain.001.001.09"])
def test_sepaxml_pain001_batch_settles_every_transaction(system, schema):
    end_to_end_ids = [unique_end_to_end_id("SEPAXML") for _ in SEPA_CREDITORS]
    document = sepaxml_pain001(schema, end_to_end_ids)
    root = etree.fromstring(document)
    assert schemas.message_version_of(root) == schema
    validate(root, schema)  # the official XSD agrees before the intake sees it

    payment_ids = post_document(system, "emea", document)
    assert_settled_with_end_to_end_ids(system, "emea", payment_ids, end_to_end_ids)


def test_a_pain001_that_reached_us_after_its_execution_date_is_executed_today(system):
    from datetime import timedelta

    from orchestrator.validation import LATE_INSTRUCTION_GRACE_DAYS

    end_to_end_ids = [unique_end_to_end_id("LATE") for _ in SEPA_CREDITORS]
    late = sepaxml_pain001("pain.001.001.09", end_to_end_ids, execution_date=date.today() - timedelta(days=2))
    payment_ids = post_document(system, "emea", late)
    assert_settled_with_end_to_end_ids(system, "emea", payment_ids, end_to_end_ids)
    # Past the grace, the instruction is stale: refused whole, nothing accepted.
    stale = sepaxml_pain001("pain.001.001.09", [unique_end_to_end_id("STALE") for _ in SEPA_CREDITORS],
                            execution_date=date.today() - timedelta(days=LATE_INSTRUCTION_GRACE_DAYS + 1))
    answer = httpx.post(f"{system.base_url}/v1/payments/iso20022", content=stale,
                        headers={**ISO_HEADERS, **system.auth("emea")}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert {e["reason_code"] for e in answer.json()["errors"]} == {"invalid_execution_date"}


def test_sepaxml_pain001_batch_without_end_to_end_ids_settles_every_transaction(system):
    document = sepaxml_pain001("pain.001.001.03", None)
    payment_ids = post_document(system, "emea", document)
    assert_settled_with_end_to_end_ids(system, "emea", payment_ids, ["NOTPROVIDED"] * len(SEPA_CREDITORS))


# -- pyiso20022 + xsdata: pacs.008.001.08 --------------------------------------------


def pyiso20022_pacs008(transactions: list[dict], *, clearing_system: str, service_level: str,
                       local_instrument: str | None, currency: str) -> bytes:
    """A pacs.008.001.08 built from pyiso20022's dataclasses and serialised by xsdata.

    Each transaction dict has end_to_end_id, amount (a decimal string) and debtor /
    creditor dicts with name, and either iban + bic or account + bank_code (an ABA
    routing number, sent as ClrSysMmbId with ClrSysId USABA).
    """
    import pyiso20022.pacs.pacs_008_001_08 as p8
    from xsdata.formats.dataclass.serializers import XmlSerializer
    from xsdata.models.datatype import XmlDate, XmlDateTime

    def agent(side: dict):
        if "bic" in side:
            return p8.BranchAndFinancialInstitutionIdentification6(
                fin_instn_id=p8.FinancialInstitutionIdentification18(bicfi=side["bic"]))
        member = p8.ClearingSystemMemberIdentification2(
            clr_sys_id=p8.ClearingSystemIdentification2Choice(cd="USABA"), mmb_id=side["bank_code"])
        return p8.BranchAndFinancialInstitutionIdentification6(
            fin_instn_id=p8.FinancialInstitutionIdentification18(clr_sys_mmb_id=member))

    def account(side: dict):
        if "iban" in side:
            return p8.CashAccount38(id=p8.AccountIdentification4Choice(iban=side["iban"]))
        return p8.CashAccount38(id=p8.AccountIdentification4Choice(
            othr=p8.GenericAccountIdentification1(id=side["account"])))

    today = XmlDate.from_date(date.today())
    entries = []
    for tx in transactions:
        debtor, creditor = tx["debtor"], tx["creditor"]
        entries.append(p8.CreditTransferTransaction39(
            pmt_id=p8.PaymentIdentification7(instr_id=tx["end_to_end_id"], end_to_end_id=tx["end_to_end_id"],
                                             tx_id=tx["end_to_end_id"], uetr=str(uuid.uuid4())),
            pmt_tp_inf=p8.PaymentTypeInformation28(
                svc_lvl=[p8.ServiceLevel8Choice(cd=service_level)],
                lcl_instrm=p8.LocalInstrument2Choice(cd=local_instrument) if local_instrument else None),
            intr_bk_sttlm_amt=p8.ActiveCurrencyAndAmount(value=Decimal(tx["amount"]), ccy=currency),
            intr_bk_sttlm_dt=today,
            chrg_br=p8.ChargeBearerType1Code.SLEV,
            dbtr=p8.PartyIdentification135(nm=debtor["name"]),
            dbtr_acct=account(debtor),
            dbtr_agt=agent(debtor),
            cdtr_agt=agent(creditor),
            cdtr=p8.PartyIdentification135(nm=creditor["name"]),
            cdtr_acct=account(creditor),
            rmt_inf=p8.RemittanceInformation16(ustrd=[f"Invoice {tx['end_to_end_id'][-6:]}"]),
        ))
    total = sum((Decimal(tx["amount"]) for tx in transactions), Decimal(0))
    document = p8.Document(fito_ficstmr_cdt_trf=p8.FitoFicustomerCreditTransferV08(
        grp_hdr=p8.GroupHeader93(
            msg_id=f"PYISO{uuid.uuid4().hex[:24].upper()}",
            cre_dt_tm=XmlDateTime.from_datetime(datetime.now(UTC).replace(microsecond=0)),
            nb_of_txs=str(len(entries)),
            ctrl_sum=total,
            ttl_intr_bk_sttlm_amt=p8.ActiveCurrencyAndAmount(value=total, ccy=currency),
            intr_bk_sttlm_dt=today,
            sttlm_inf=p8.SettlementInstruction7(sttlm_mtd=p8.SettlementMethod1Code.CLRG,
                                                clr_sys=p8.ClearingSystemIdentification3Choice(cd=clearing_system)),
        ),
        cdt_trf_tx_inf=entries,
    ))
    namespace = schemas.namespace_of("pacs.008.001.08")
    return XmlSerializer().render(document, ns_map={None: namespace}).encode()


PACS008_CASES = {
    "sepa_inst": dict(
        tenant="emea", currency="EUR", clearing_system="TGT", service_level="SEPA", local_instrument="INST",
        parties=[({"name": DEBTOR["name"], "iban": DEBTOR["IBAN"], "bic": DEBTOR["BIC"]},
                  {"name": name, "iban": iban, "bic": bic}) for name, iban, bic, _ in SEPA_CREDITORS[:2]],
        amounts=["250.00", "0.01"],
    ),
    "fednow": dict(
        tenant="na", currency="USD", clearing_system="FDN", service_level="INST", local_instrument=None,
        parties=[({"name": "Harbor Lane Coffee LLC", "account": "987654321", "bank_code": "011000015"},
                  {"name": "Maple Street Bakery Inc", "account": "12345678", "bank_code": "021000021"}),
                 ({"name": "Harbor Lane Coffee LLC", "account": "987654321", "bank_code": "011000015"},
                  {"name": "Prairie Seed Cooperative", "account": "44556677", "bank_code": "011000015"})],
        amounts=["1234.56", "7.00"],
    ),
}


@pytest.mark.parametrize("case", list(PACS008_CASES))
def test_pyiso20022_pacs008_settles_every_transaction_and_keeps_its_uetr(system, case):
    spec = PACS008_CASES[case]
    transactions = [
        {"end_to_end_id": unique_end_to_end_id("PYISO"), "amount": amount, "debtor": debtor, "creditor": creditor}
        for (debtor, creditor), amount in zip(spec["parties"], spec["amounts"], strict=True)
    ]
    document = pyiso20022_pacs008(transactions, clearing_system=spec["clearing_system"],
                                  service_level=spec["service_level"], local_instrument=spec["local_instrument"],
                                  currency=spec["currency"])
    root = etree.fromstring(document)
    validate(root, "pacs.008.001.08")  # the official XSD agrees before the intake sees it
    uetrs = [element.text for element in root.iter("{%s}UETR" % schemas.namespace_of("pacs.008.001.08"))]

    payment_ids = post_document(system, spec["tenant"], document)
    assert payment_ids == uetrs, "a pacs.008 transaction's UETR is its payment id"
    assert_settled_with_end_to_end_ids(system, spec["tenant"], payment_ids,
                                       [tx["end_to_end_id"] for tx in transactions])
