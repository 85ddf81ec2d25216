"""The one error type every ISO 20022 adapter raises for a document it cannot accept.

Each error carries an RFC 7807-style `problem_type` slug, a short `title`, a `detail`
written for the sender of the document, and where known the `path` of the offending
element ("/Document/FIToFICstmrCdtTrf/GrpHdr/NbOfTxs"). Details never quote anything
the parser could have fetched from outside the document (no entity is ever resolved),
so an error cannot leak a local file.

Problem types used:
    document-too-large, document-too-deep, forbidden-dtd   (XmlSecurityError)
    malformed-xml                                          (XmlSyntaxError)
    schema-violation, unsupported-message,
    transaction-count-mismatch, control-sum-mismatch,
    invalid-amount, invalid-value, incomplete-transaction,
    unsupported-feature, unrepresentable-payment           (IsoDocumentError)
"""

from __future__ import annotations

from typing import Any

# Longest detail kept from a libxml2 message: enough to locate the fault, short enough
# that a hostile document cannot make our answers or logs arbitrarily large.
MAX_DETAIL_CHARS = 500


class IsoDocumentError(ValueError):
    """An ISO 20022 document that is refused, with a problem-details description."""

    def __init__(self, problem_type: str, title: str, detail: str, path: str | None = None) -> None:
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(f"{problem_type}: {detail}" + (f" (at {path})" if path else ""))
        self.problem_type = problem_type
        self.title = title
        self.detail = detail
        self.path = path

    def problem_details(self) -> dict[str, Any]:
        """The RFC 7807 body members (the caller adds `status` and `instance`)."""
        body: dict[str, Any] = {"type": self.problem_type, "title": self.title, "detail": self.detail}
        if self.path is not None:
            body["path"] = self.path
        return body


class XmlSecurityError(IsoDocumentError):
    """A document refused because it is hostile or exceeds a resource limit."""


class XmlSyntaxError(IsoDocumentError):
    """Bytes that are not a well-formed XML document."""
