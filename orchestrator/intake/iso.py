"""ISO 20022 documents at the intake: one payment per transaction, all or nothing.

A document is accepted whole or refused whole: a pain.001 or pacs.008 batch is one
instruction from the sender, and half-accepting it would leave them reconciling which
half moved. Payment ids derive from the document's message id and the transaction's
position, so the same document sent twice yields the same payments.
"""

from __future__ import annotations

import uuid
from datetime import date

from adapters.iso20022 import IsoDocumentError, parse_iso_document
from orchestrator.domain import Payment
from orchestrator.events import EVENT_ID_NAMESPACE
from orchestrator.intake.problems import Problem
from orchestrator.tenants import TenantConfig
from orchestrator.validation import normalise_payment, validate_payment

_PROBLEM_KIND_OF_ISO_TYPE = {
    "schema-violation": "schema-violation",
    "unsupported-message": "unsupported-message",
    "xml-security": "xml-rejected",
    "xml-syntax": "xml-rejected",
    "xml-too-large": "payload-too-large",
}


def build_iso_payments(body: bytes, tenant: TenantConfig, max_transactions: int) -> list[Payment]:
    try:
        parsed = parse_iso_document(body, tenant.tenant_id)
    except IsoDocumentError as exc:
        kind = _PROBLEM_KIND_OF_ISO_TYPE.get(exc.problem_type, "document-invalid")
        extensions = {"iso_problem": exc.problem_type}
        if exc.path:
            extensions["path"] = exc.path
        raise Problem(kind, exc.detail, **extensions) from None
    if not parsed:
        raise Problem("document-invalid", "the document holds no transaction")
    if len(parsed) > max_transactions:
        raise Problem("payload-too-large", f"the document holds {len(parsed)} transactions; "
                      f"at most {max_transactions} are accepted per document")
    payments, failures = [], []
    today = date.today()
    for index, payment in enumerate(parsed):
        payment_id = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"iso/{tenant.tenant_id}/{payment.source_message_id}/"
                                                        f"{index}/{payment.end_to_end_id}"))
        payment = normalise_payment(payment.replace(payment_id=payment_id, tenant_id=tenant.tenant_id))
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
