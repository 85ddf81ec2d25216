"""pacs.008.001.08 (FI to FI customer credit transfer): build from and parse to `Payment`.

Identity. A payment's `payment_id` is a UUID4 and is the UETR: `build_pacs008` sends it
as `PmtId/UETR`, and its 32 hex digits as `InstrId` and `TxId` (a hyphenated UUID is
36 characters, one more than Max35Text), so a pacs.002 that only echoes `OrgnlTxId`
still names the payment. `parse_pacs008` keeps the sender's UETR as the payment id: a
UETR is by definition passed unchanged along the whole payment chain, so minting a new
id would break tracking and make a re-submitted document look like a new payment.
Only a transaction without a UETR (it is optional in .08) gets a fresh uuid4. The
document's `MsgId` becomes the payment's `source_message_id`.

A payment id that is a UUID but not version 4 cannot be a UETR (the XSD pattern
demands version 4); it then travels in `InstrId`/`TxId` only.

Group header checks on parse: `NbOfTxs` must equal the number of transactions,
`CtrlSum` (if present) the sum of the amounts, and `TtlIntrBkSttlmAmt` (if present)
the sum of the amounts in its currency, which every transaction must use.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from lxml import etree

from orchestrator.domain import Agent, Payment, format_minor_units
from orchestrator.tenants import RailConfig

from adapters.iso20022 import schemas
from adapters.iso20022._common import (
    require_message_version,
    MAX_CASH_CLEARING_SYSTEM_CODE_CHARS,
    MAX_PURPOSE_CODE_CHARS,
    MAX_REMITTANCE_CHARS,
    MAX_SERVICE_LEVEL_CODE_CHARS,
    Xml,
    check_control_sum,
    check_transaction_count,
    clean_text,
    format_datetime,
    minor_to_decimal,
    parse_amount,
    parse_date,
    parse_datetime,
    transaction_id_of,
    uetr_of,
    utc_date,
)
from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022.schemas import element_path
from adapters.iso20022.secure_xml import DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = ["MESSAGE_VERSION", "Pacs008Transaction", "ParsedPacs008", "build_pacs008", "parse_pacs008"]

MESSAGE_VERSION = "pacs.008.001.08"
_X = Xml(schemas.namespace_of(MESSAGE_VERSION))


@dataclass(frozen=True, slots=True)
class Pacs008Transaction:
    """One CdtTrfTxInf: the canonical payment plus the wire-level identifiers."""

    payment: Payment
    instruction_id: str | None
    end_to_end_id: str
    transaction_id: str | None
    uetr: str | None
    interbank_settlement_date: str | None
    service_level: str | None
    local_instrument: str | None


@dataclass(frozen=True, slots=True)
class ParsedPacs008:
    message_id: str
    created_at: datetime
    number_of_transactions: int
    control_sum: Decimal | None
    total_interbank_settlement_amount_minor: int | None
    total_interbank_settlement_currency: str | None
    settlement_method: str
    clearing_system_code: str | None
    instructing_agent: Agent | None
    instructed_agent: Agent | None
    transactions: tuple[Pacs008Transaction, ...]

    @property
    def payments(self) -> list[Payment]:
        return [transaction.payment for transaction in self.transactions]


# -- building -------------------------------------------------------------------------


def build_pacs008(
    payments: Sequence[Payment],
    rail: RailConfig,
    *,
    message_id: str,
    created_at: datetime,
    instructing_agent: Agent | None = None,
    instructed_agent: Agent | None = None,
    validate: bool = True,
) -> bytes:
    """A pacs.008.001.08 document for `payments` on `rail` (UTF-8 bytes).

    With `validate` (the default) the document is checked against the XSD before it is
    returned, so a payment that cannot be expressed (an over-long end-to-end id, a
    malformed IBAN or BIC) raises IsoDocumentError("schema-violation") here rather than
    being rejected by the clearing system.
    """
    if not payments:
        raise ValueError("a pacs.008 needs at least one payment")
    scheme = rail.bank_code_scheme
    try:
        root = _X.root()
        transfer = _X.sub(root, "FIToFICstmrCdtTrf")
        _add_group_header(
            transfer, payments, rail,
            message_id=message_id, created_at=created_at,
            instructing_agent=instructing_agent, instructed_agent=instructed_agent,
        )
        default_settlement_date = utc_date(created_at)
        for payment in payments:
            _add_transaction(transfer, payment, rail, scheme, default_settlement_date)
    except ValueError as exc:
        if isinstance(exc, IsoDocumentError):
            raise
        # lxml refuses strings XML cannot carry (control characters in an id, say).
        raise IsoDocumentError(
            "unrepresentable-payment", "Payment cannot be expressed in ISO 20022", str(exc)
        ) from None
    if validate:
        schemas.validate(root, MESSAGE_VERSION)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _add_group_header(
    transfer: etree._Element,
    payments: Sequence[Payment],
    rail: RailConfig,
    *,
    message_id: str,
    created_at: datetime,
    instructing_agent: Agent | None,
    instructed_agent: Agent | None,
) -> None:
    header = _X.sub(transfer, "GrpHdr")
    _X.sub(header, "MsgId", message_id)
    _X.sub(header, "CreDtTm", format_datetime(created_at))
    _X.sub(header, "NbOfTxs", str(len(payments)))
    total = sum((minor_to_decimal(p.amount_minor, p.currency) for p in payments), Decimal(0))
    _X.sub(header, "CtrlSum", format(total, "f"))
    currencies = {payment.currency for payment in payments}
    if len(currencies) == 1:
        # A total in one currency only means something when every transaction uses it.
        currency = currencies.pop()
        total_minor = sum(payment.amount_minor for payment in payments)
        _X.sub(header, "TtlIntrBkSttlmAmt", format_minor_units(total_minor, currency), Ccy=currency)
    settlement = _X.sub(header, "SttlmInf")
    _X.sub(settlement, "SttlmMtd", "CLRG")
    _X.add_code_or_proprietary(
        settlement, "ClrSys", rail.clearing.clearing_system_code, MAX_CASH_CLEARING_SYSTEM_CODE_CHARS
    )
    for name, agent in (("InstgAgt", instructing_agent), ("InstdAgt", instructed_agent)):
        if agent is not None:
            _X.add_agent(header, name, agent, bank_code=None, bank_code_scheme=rail.bank_code_scheme)


def _add_transaction(
    transfer: etree._Element, payment: Payment, rail: RailConfig, scheme: str | None, default_settlement_date: str
) -> None:
    tx = _X.sub(transfer, "CdtTrfTxInf")
    ids = _X.sub(tx, "PmtId")
    transaction_id = transaction_id_of(payment.payment_id)
    _X.sub(ids, "InstrId", transaction_id)
    _X.sub(ids, "EndToEndId", payment.end_to_end_id)
    _X.sub(ids, "TxId", transaction_id)
    uetr = uetr_of(payment.payment_id)
    if uetr is not None:
        _X.sub(ids, "UETR", uetr)

    type_info = _X.sub(tx, "PmtTpInf")
    _X.add_code_or_proprietary(type_info, "SvcLvl", rail.clearing.service_level, MAX_SERVICE_LEVEL_CODE_CHARS)
    if rail.clearing.local_instrument:
        _X.sub(_X.sub(type_info, "LclInstrm"), "Cd", rail.clearing.local_instrument)

    _X.sub(tx, "IntrBkSttlmAmt", payment.amount, Ccy=payment.currency)
    _X.sub(tx, "IntrBkSttlmDt", payment.requested_execution_date or default_settlement_date)
    # Instant rails settle the full amount: each side bears its own bank's charges.
    _X.sub(tx, "ChrgBr", "SLEV")

    debtor, creditor = payment.debtor, payment.creditor
    _X.add_party(tx, "Dbtr", debtor)
    _X.add_account(tx, "DbtrAcct", debtor)
    _X.add_agent(tx, "DbtrAgt", debtor.agent, bank_code=debtor.account.bank_code, bank_code_scheme=scheme)
    _X.add_agent(tx, "CdtrAgt", creditor.agent, bank_code=creditor.account.bank_code, bank_code_scheme=scheme)
    _X.add_party(tx, "Cdtr", creditor)
    _X.add_account(tx, "CdtrAcct", creditor)
    if payment.purpose_code:
        _X.add_code_or_proprietary(tx, "Purp", payment.purpose_code, MAX_PURPOSE_CODE_CHARS)
    remittance = clean_text(payment.remittance_information, MAX_REMITTANCE_CHARS)
    if remittance:
        _X.sub(_X.sub(tx, "RmtInf"), "Ustrd", remittance)


# -- parsing --------------------------------------------------------------------------


def parse_pacs008(data: bytes, tenant_id: str, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> ParsedPacs008:
    """Securely parse, XSD-validate and check a pacs.008.001.08 document."""
    root = parse_untrusted(data, max_bytes=max_bytes)
    return parse_pacs008_root(root, tenant_id)


def parse_pacs008_root(root: etree._Element, tenant_id: str) -> ParsedPacs008:
    """As parse_pacs008, for a root already produced by `parse_untrusted`."""
    require_message_version(root, MESSAGE_VERSION)

    transfer = _X.require(root, "FIToFICstmrCdtTrf")
    header = _X.require(transfer, "GrpHdr")
    message_id = _X.text(header, "MsgId") or ""
    created_element = _X.require(header, "CreDtTm")
    created_at = parse_datetime(created_element.text, created_element)
    tx_elements = _X.findall(transfer, "CdtTrfTxInf")
    count = check_transaction_count(_X.text(header, "NbOfTxs"), len(tx_elements), _X.find(header, "NbOfTxs"))
    group_date_element = _X.find(header, "IntrBkSttlmDt")
    group_date = parse_date(group_date_element.text, group_date_element) if group_date_element is not None else None

    transactions: list[Pacs008Transaction] = []
    amounts: list[Decimal] = []
    for tx in tx_elements:
        transaction, value = _read_transaction(tx, tenant_id, message_id, group_date)
        transactions.append(transaction)
        amounts.append(value)

    total = sum(amounts, Decimal(0))
    control_sum = check_control_sum(_X.find(header, "CtrlSum"), total)
    total_minor, total_currency = _check_total(_X.find(header, "TtlIntrBkSttlmAmt"), transactions, total)

    return ParsedPacs008(
        message_id=message_id,
        created_at=created_at,
        number_of_transactions=count,
        control_sum=control_sum,
        total_interbank_settlement_amount_minor=total_minor,
        total_interbank_settlement_currency=total_currency,
        settlement_method=_X.text(header, "SttlmInf", "SttlmMtd") or "",
        clearing_system_code=_X.code_or_proprietary(header, "SttlmInf", "ClrSys"),
        instructing_agent=_group_agent(_X.find(header, "InstgAgt")),
        instructed_agent=_group_agent(_X.find(header, "InstdAgt")),
        transactions=tuple(transactions),
    )


def _group_agent(wrapper: etree._Element | None) -> Agent | None:
    if wrapper is None:
        return None
    agent, member_id = _X.read_agent(wrapper)
    return Agent(bic=agent.bic, member_id=member_id)


def _check_total(
    element: etree._Element | None, transactions: list[Pacs008Transaction], total: Decimal
) -> tuple[int | None, str | None]:
    if element is None:
        return None, None
    total_minor, currency, value = parse_amount(element)
    other = sorted({t.payment.currency for t in transactions} - {currency})
    if other:
        raise IsoDocumentError(
            "control-sum-mismatch", "Total amount does not match",
            f"TtlIntrBkSttlmAmt is in {currency} but transactions are also in {', '.join(other)}",
            path=element_path(element),
        )
    if value != total:
        raise IsoDocumentError(
            "control-sum-mismatch", "Total amount does not match",
            f"TtlIntrBkSttlmAmt declares {value} {currency} but the transactions add up to {total} {currency}",
            path=element_path(element),
        )
    return total_minor, currency


def _read_transaction(
    tx: etree._Element, tenant_id: str, message_id: str, group_date: str | None
) -> tuple[Pacs008Transaction, Decimal]:
    amount_element = _X.require(tx, "IntrBkSttlmAmt")
    amount_minor, currency, value = parse_amount(amount_element)
    date_element = _X.find(tx, "IntrBkSttlmDt")
    settlement_date = parse_date(date_element.text, date_element) if date_element is not None else group_date

    end_to_end_id = _X.text(tx, "PmtId", "EndToEndId") or ""
    uetr = _X.text(tx, "PmtId", "UETR")
    payment = Payment(
        payment_id=uetr or str(uuid.uuid4()),
        tenant_id=tenant_id,
        end_to_end_id=end_to_end_id,
        amount_minor=amount_minor,
        currency=currency,
        debtor=_X.read_party(
            _X.find(tx, "Dbtr"), _X.find(tx, "DbtrAcct"), _X.find(tx, "DbtrAgt"), role="debtor", context=tx
        ),
        creditor=_X.read_party(
            _X.find(tx, "Cdtr"), _X.find(tx, "CdtrAcct"), _X.find(tx, "CdtrAgt"), role="creditor", context=tx
        ),
        remittance_information=_X.read_remittance(tx),
        requested_execution_date=settlement_date,
        source_format=MESSAGE_VERSION,
        source_message_id=message_id,
        purpose_code=_X.code_or_proprietary(tx, "Purp"),
    )
    transaction = Pacs008Transaction(
        payment=payment,
        instruction_id=_X.text(tx, "PmtId", "InstrId"),
        end_to_end_id=end_to_end_id,
        transaction_id=_X.text(tx, "PmtId", "TxId"),
        uetr=uetr,
        interbank_settlement_date=settlement_date,
        service_level=_X.code_or_proprietary(tx, "PmtTpInf", "SvcLvl"),
        local_instrument=_X.code_or_proprietary(tx, "PmtTpInf", "LclInstrm"),
    )
    return transaction, value
