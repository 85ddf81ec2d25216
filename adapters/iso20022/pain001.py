"""pain.001 (customer credit transfer initiation), versions .03 and .09: parse to `Payment`.

One canonical payment per CdtTrfTxInf; the debtor, its account and its agent come from
the enclosing PmtInf, and the requested execution date from its ReqdExctnDt. Party,
account and agent mapping follows `adapters.iso20022._common`.

Identity: a .09 transaction's UETR, when present, becomes the payment id (as for
pacs.008: a UETR must not change along the chain); otherwise, and always for .03,
which has no UETR, each payment gets a fresh uuid4. The document's MsgId becomes the
payments' `source_message_id`.

Checks beyond the XSD: the group header's NbOfTxs and CtrlSum (if present), and each
PmtInf's own NbOfTxs and CtrlSum (if present), must match the transactions; amounts
must be exact in their currency. Equivalent amounts (EqvtAmt, which ask the bank to
convert currencies) are refused as unsupported-feature.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from lxml import etree

from orchestrator.domain import Party, Payment

from adapters.iso20022 import schemas
from adapters.iso20022._common import (
    Xml,
    check_control_sum,
    check_transaction_count,
    parse_amount,
    parse_date,
    parse_datetime,
)
from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022.schemas import element_path
from adapters.iso20022.secure_xml import DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = ["MESSAGE_VERSIONS", "Pain001PaymentInformation", "ParsedPain001", "parse_pain001"]

MESSAGE_VERSIONS = ("pain.001.001.03", "pain.001.001.09")
_XML = {version: Xml(schemas.namespace_of(version)) for version in MESSAGE_VERSIONS}


@dataclass(frozen=True, slots=True)
class Pain001PaymentInformation:
    """One PmtInf block: a debtor account and the transfers debited from it."""

    payment_information_id: str
    requested_execution_date: str | None
    debtor: Party
    payments: tuple[Payment, ...]


@dataclass(frozen=True, slots=True)
class ParsedPain001:
    message_version: str
    message_id: str
    created_at: datetime
    number_of_transactions: int
    control_sum: Decimal | None
    initiating_party_name: str | None
    payment_information: tuple[Pain001PaymentInformation, ...]

    @property
    def payments(self) -> list[Payment]:
        return [payment for block in self.payment_information for payment in block.payments]


def parse_pain001(data: bytes, tenant_id: str, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> ParsedPain001:
    """Securely parse, XSD-validate and check a pain.001.001.03 or .09 document."""
    root = parse_untrusted(data, max_bytes=max_bytes)
    return parse_pain001_root(root, tenant_id)


def parse_pain001_root(root: etree._Element, tenant_id: str) -> ParsedPain001:
    """As parse_pain001, for a root already produced by `parse_untrusted`."""
    version = schemas.message_version_of(root)
    if version is None or version not in _XML:
        raise IsoDocumentError(
            "unsupported-message", "Unsupported message",
            f"expected a pain.001.001.03 or pain.001.001.09 document, got "
            f"{version or etree.QName(root).namespace or 'no namespace'}",
            path=element_path(root),
        )
    schemas.validate(root, version)
    x = _XML[version]

    initiation = x.require(root, "CstmrCdtTrfInitn")
    header = x.require(initiation, "GrpHdr")
    message_id = x.text(header, "MsgId") or ""
    created_element = x.require(header, "CreDtTm")
    created_at = parse_datetime(created_element.text, created_element)
    blocks = x.findall(initiation, "PmtInf")
    transaction_total = sum(len(x.findall(block, "CdtTrfTxInf")) for block in blocks)
    count = check_transaction_count(x.text(header, "NbOfTxs"), transaction_total, x.find(header, "NbOfTxs"))

    information: list[Pain001PaymentInformation] = []
    grand_total = Decimal(0)
    for block in blocks:
        parsed_block, block_total = _read_block(x, block, tenant_id, message_id, version)
        information.append(parsed_block)
        grand_total += block_total
    control_sum = check_control_sum(x.find(header, "CtrlSum"), grand_total)

    return ParsedPain001(
        message_version=version,
        message_id=message_id,
        created_at=created_at,
        number_of_transactions=count,
        control_sum=control_sum,
        initiating_party_name=x.text(header, "InitgPty", "Nm"),
        payment_information=tuple(information),
    )


def _read_block(
    x: Xml, block: etree._Element, tenant_id: str, message_id: str, version: str
) -> tuple[Pain001PaymentInformation, Decimal]:
    transactions = x.findall(block, "CdtTrfTxInf")
    declared_count = x.find(block, "NbOfTxs")
    if declared_count is not None:
        check_transaction_count(declared_count.text, len(transactions), declared_count)

    # .03: ReqdExctnDt is an ISODate; .09: a choice of Dt or DtTm.
    date_element = x.find(block, "ReqdExctnDt")
    if date_element is not None and len(date_element):
        date_element = date_element[0]
    execution_date = parse_date(date_element.text, date_element) if date_element is not None else None

    debtor = x.read_party(
        x.find(block, "Dbtr"), x.find(block, "DbtrAcct"), x.find(block, "DbtrAgt"), role="debtor", context=block
    )
    payments: list[Payment] = []
    total = Decimal(0)
    for tx in transactions:
        amount_element = x.find(tx, "Amt", "InstdAmt")
        if amount_element is None:
            raise IsoDocumentError(
                "unsupported-feature", "Unsupported feature",
                "only instructed amounts (InstdAmt) are supported; equivalent amounts need a currency conversion",
                path=element_path(tx),
            )
        amount_minor, currency, value = parse_amount(amount_element)
        total += value
        uetr = x.text(tx, "PmtId", "UETR")
        payments.append(
            Payment(
                payment_id=uetr or str(uuid.uuid4()),
                tenant_id=tenant_id,
                end_to_end_id=x.text(tx, "PmtId", "EndToEndId") or "",
                amount_minor=amount_minor,
                currency=currency,
                debtor=debtor,
                creditor=x.read_party(
                    x.find(tx, "Cdtr"), x.find(tx, "CdtrAcct"), x.find(tx, "CdtrAgt"), role="creditor", context=tx
                ),
                remittance_information=x.read_remittance(tx),
                requested_execution_date=execution_date,
                source_format=version,
                source_message_id=message_id,
                purpose_code=x.code_or_proprietary(tx, "Purp"),
            )
        )
    check_control_sum(x.find(block, "CtrlSum"), total)
    parsed = Pain001PaymentInformation(
        payment_information_id=x.text(block, "PmtInfId") or "",
        requested_execution_date=execution_date,
        debtor=debtor,
        payments=tuple(payments),
    )
    return parsed, total
