"""RFC 9457 problem details: one stable `type` per kind of error."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://payorch.dev/problems/"

# kind -> (HTTP status, title). The kinds are part of the public API: never rename one.
PROBLEM_KINDS: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "A valid API key is required"),
    "forbidden": (403, "The credential does not allow this"),
    "unknown-tenant": (400, "The tenant is not known"),
    "malformed-json": (400, "The body is not valid JSON"),
    "unsupported-media-type": (415, "Unsupported content type"),
    "payload-too-large": (413, "The body is too large"),
    "request-timeout": (408, "The body did not arrive in time"),
    "header-timeout": (408, "The request head did not arrive in time"),
    "headers-too-large": (431, "The request head is too large"),
    "malformed-request": (400, "The request is not valid HTTP"),
    "client-disconnected": (400, "The client closed the connection before the body was complete"),
    "validation-error": (422, "The payment is not valid"),
    "payment-invalid": (422, "The payment breaks a business rule"),
    "idempotency-key-reused": (422, "The Idempotency-Key was used with another body"),
    "invalid-idempotency-key": (400, "The Idempotency-Key header is not valid"),
    "request-in-progress": (409, "A request with this Idempotency-Key is being processed; send again after Retry-After"),
    "duplicate-json-key": (400, "A JSON object in the body names the same member twice"),
    "host-not-allowed": (400, "The Host header names a host this intake does not serve"),
    "payment-not-found": (404, "No such payment"),
    "payment-not-settled": (409, "The payment has not settled"),
    "payment-not-held": (409, "The payment is not held for review"),
    "same-reviewer": (409, "The reviewer who approved a held payment cannot also confirm it"),
    "invalid-reviewer": (400, "The X-Reviewer header does not name a reviewer"),
    "cycle-not-found": (404, "No such closed settlement cycle"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "xml-rejected": (400, "The XML document was refused"),
    "schema-violation": (422, "The document does not conform to its ISO 20022 schema"),
    "unsupported-message": (422, "The ISO 20022 message type or version is not supported"),
    "document-invalid": (422, "The ISO 20022 document is not consistent"),
    "rate-limited": (429, "This API key has submitted more payments than its rate allows"),
    "overloaded": (503, "The payment flow cannot take more payments now; send again after Retry-After"),
    "server-busy": (503, "The intake is serving all the connections it can; send again after Retry-After"),
    "store-unavailable": (503, "The intake cannot reach its credential or idempotency store; send again after "
                               "Retry-After"),
    "broker-unavailable": (503, "The broker did not confirm the payment in time; its outcome is unknown"),
    "internal-error": (500, "Internal error"),
}


class JsonResponse(Response):
    """JSON rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Problem(Exception):
    def __init__(self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind}")
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    @property
    def status(self) -> int:
        return PROBLEM_KINDS[self.kind][0]

    def response(self, instance: str | None = None) -> JsonResponse:
        status, title = PROBLEM_KINDS[self.kind]
        body = {"type": PROBLEM_TYPE_BASE + self.kind, "title": title, "status": status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return JsonResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=self.headers)
