"""ISO 20022 adapters: hardened XML intake, XSD validation, pacs.008/pacs.002/pain.001/camt.054.

`parse_iso_document` is the single entry point for inbound payment documents: it
parses the bytes once with the hardened parser, reads the message from the root
element's namespace, and dispatches to the matching parser (each of which validates
against the official XSD and checks the group header's counts and sums).
"""

from __future__ import annotations

from lxml import etree

from orchestrator.domain import Payment

from adapters.iso20022 import schemas
from adapters.iso20022.camt054 import Camt054Entry, build_camt054
from adapters.iso20022.errors import IsoDocumentError, XmlSecurityError, XmlSyntaxError
from adapters.iso20022.pacs002 import (
    ISO_REASON_DESCRIPTIONS,
    ParsedPacs002,
    TransactionStatus,
    build_pacs002,
    parse_pacs002,
)
from adapters.iso20022.pacs008 import (
    Pacs008Transaction,
    ParsedPacs008,
    build_pacs008,
    parse_pacs008,
    parse_pacs008_root,
)
from adapters.iso20022.pain001 import Pain001PaymentInformation, ParsedPain001, parse_pain001, parse_pain001_root
from adapters.iso20022.schemas import validate
from adapters.iso20022.secure_xml import DEFAULT_MAX_DEPTH_LEVELS, DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = [
    "Camt054Entry",
    "DEFAULT_MAX_DEPTH_LEVELS",
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "INBOUND_MESSAGE_VERSIONS",
    "ISO_REASON_DESCRIPTIONS",
    "IsoDocumentError",
    "Pacs008Transaction",
    "ParsedPacs002",
    "ParsedPacs008",
    "ParsedPain001",
    "Pain001PaymentInformation",
    "TransactionStatus",
    "XmlSecurityError",
    "XmlSyntaxError",
    "build_camt054",
    "build_pacs002",
    "build_pacs008",
    "parse_iso_document",
    "parse_pacs002",
    "parse_pacs008",
    "parse_pain001",
    "parse_untrusted",
    "validate",
]

# Payment documents accepted at intake, by the namespace of their <Document>.
INBOUND_MESSAGE_VERSIONS = ("pacs.008.001.08", "pain.001.001.03", "pain.001.001.09")


def parse_iso_document(
    data: bytes, tenant_id: str, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> list[Payment]:
    """The canonical payments of an inbound pacs.008.001.08 or pain.001.001.03/.09."""
    root = parse_untrusted(data, max_bytes=max_bytes)
    version = schemas.message_version_of(root)
    if version == "pacs.008.001.08":
        return parse_pacs008_root(root, tenant_id).payments
    if version in ("pain.001.001.03", "pain.001.001.09"):
        return parse_pain001_root(root, tenant_id).payments
    found = version or etree.QName(root).namespace or f"<{etree.QName(root).localname}> without a namespace"
    raise IsoDocumentError(
        "unsupported-message",
        "Unsupported message",
        f"{found} is not accepted; send one of {', '.join(INBOUND_MESSAGE_VERSIONS)}",
        path=schemas.element_path(root),
    )
