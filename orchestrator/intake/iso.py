"""ISO 20022 documents at the intake: one payment per transaction, all or nothing.

A document is accepted whole or refused whole: a pain.001 or pacs.008 batch is one
instruction from the sender, and half-accepting it would leave them reconciling which
half moved. A pacs.008 transaction's UETR stays its payment id (a UETR is passed
unchanged along the payment chain); every other transaction gets an id derived from
the document's message id and its position, so the same document sent twice yields
the same payments and moves money once.
"""

from __future__ import annotations

import logging
from datetime import date

from lxml import etree

from adapters.iso20022 import (
    INBOUND_MESSAGE_VERSIONS,
    IsoDocumentError,
    XmlSecurityError,
    XmlSyntaxError,
    parse_pacs008_root,
    parse_pain001_root,
    parse_untrusted,
    schemas,
)
from orchestrator.domain import Payment
from orchestrator.events import deterministic_uuid4
from orchestrator.intake.problems import Problem
from orchestrator.tenants import TenantConfig
from orchestrator.validation import execute_late_instruction_today, normalise_payment, validate_payment

log = logging.getLogger("payorch.intake.iso")

_PROBLEM_KIND_OF_ISO_TYPE = {
    "schema-violation": "schema-violation",
    "unsupported-message": "unsupported-message",
    "document-too-large": "payload-too-large",
}


def _problem_kind(exc: IsoDocumentError) -> str:
    if exc.problem_type in _PROBLEM_KIND_OF_ISO_TYPE:
        return _PROBLEM_KIND_OF_ISO_TYPE[exc.problem_type]
    if isinstance(exc, (XmlSecurityError, XmlSyntaxError)):
        return "xml-rejected"
    return "document-invalid"


def _parse(body: bytes, tenant: TenantConfig, max_bytes: int) -> list[Payment]:
    root = parse_untrusted(body, max_bytes=max_bytes)
    version = schemas.message_version_of(root)
    if version == "pacs.008.001.08":
        parsed = parse_pacs008_root(root, tenant.tenant_id)
        return [tx.payment if tx.uetr else _derived_id(tx.payment, parsed.message_id, index, tenant)
                for index, tx in enumerate(parsed.transactions)]
    if version in ("pain.001.001.03", "pain.001.001.09"):
        parsed = parse_pain001_root(root, tenant.tenant_id)
        return [_derived_id(p, parsed.message_id, index, tenant) for index, p in enumerate(parsed.payments)]
    found = version or etree.QName(root).namespace or f"<{etree.QName(root).localname}> without a namespace"
    raise IsoDocumentError("unsupported-message", "Unsupported message",
                           f"{found} is not accepted; send one of {', '.join(INBOUND_MESSAGE_VERSIONS)}")


def _derived_id(payment: Payment, message_id: str, index: int, tenant: TenantConfig) -> Payment:
    return payment.replace(payment_id=deterministic_uuid4(
        f"iso/{tenant.tenant_id}/{message_id}/{index}/{payment.end_to_end_id}"))


def canonical_document(body: bytes, max_bytes: int) -> bytes | None:
    """The document's content in one canonical form, or None when it is not a well-formed,
    safe document (its refusal then comes from `build_iso_payments`). Canonical XML 2.0
    with whitespace around text stripped and namespace prefixes rewritten: the encoding,
    the XML declaration, attribute order and quoting, empty-element form, comments,
    indentation and the prefixes a serialiser picked do not change it, so a client that
    serialises its retry anew sends the same request. Text values are compared as they
    are: another amount or name is another request."""
    try:
        root = parse_untrusted(body, max_bytes=max_bytes)
        return etree.canonicalize(root, with_comments=False, strip_text=True, rewrite_prefixes=True).encode()
    except IsoDocumentError:  # hostile or malformed: refused by build_iso_payments
        return None


def build_iso_payments(body: bytes, tenant: TenantConfig, max_transactions: int, max_bytes: int) -> list[Payment]:
    try:
        parsed = _parse(body, tenant, max_bytes)
    except IsoDocumentError as exc:
        extensions = {"iso_problem": exc.problem_type}
        if exc.path:
            extensions["path"] = exc.path
        raise Problem(_problem_kind(exc), exc.detail, **extensions) from None
    if not parsed:
        raise Problem("document-invalid", "the document holds no transaction")
    if len(parsed) > max_transactions:
        raise Problem("payload-too-large", f"the document holds {len(parsed)} transactions; "
                      f"at most {max_transactions} are accepted per document")
    payments, failures = [], []
    today = date.today()
    for index, payment in enumerate(parsed):
        payment = normalise_payment(payment.replace(tenant_id=tenant.tenant_id))
        dated = execute_late_instruction_today(payment, today)
        if dated is not payment:
            log.info("requested execution date %s has passed: executing the instruction today, %s",
                     payment.requested_execution_date, dated.requested_execution_date,
                     extra={"payment_id": payment.payment_id, "correlation_id": payment.payment_id,
                            "tenant_id": tenant.tenant_id})
            payment = dated
        problems = validate_payment(payment, tenant, today=today)
        if problems:
            failures.append({"transaction_index": index, "end_to_end_id": payment.end_to_end_id,
                             "reason_code": problems[0].reason_code.value, "field": problems[0].field,
                             "detail": problems[0].detail})
        payments.append(payment)
    if failures:
        raise Problem("payment-invalid", f"{len(failures)} of {len(payments)} transactions break a business rule; "
                      "the document was not accepted", errors=failures)
    return payments
