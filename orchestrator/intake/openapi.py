"""The intake's OpenAPI document: what FastAPI derives, completed with what it cannot see.

The busiest endpoints read their bodies by hand (for the size limit, the duplicate-member
check and the content digest), so FastAPI knows neither their request bodies nor their
headers, and every error is problem+json rather than FastAPI's validation shape. This
module adds the security scheme, the request bodies, the headers and every problem
response, so the document describes what a client really meets.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from orchestrator.intake.models import CreditTransferIn, ReviewIn
from orchestrator.intake.openapi_responses import OK_SCHEMA_OF_PATH, SCHEMAS, json_content
from orchestrator.intake.problems import PROBLEM_CONTENT_TYPE, PROBLEM_KINDS, PROBLEM_TYPE_BASE
from orchestrator.reviews import REVIEWER_MAX_CHARS

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `type` is one of the kinds in the README's table.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "enum": [PROBLEM_TYPE_BASE + kind for kind in PROBLEM_KINDS]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "reason_code": {"type": "string"},
        "field": {"type": "string"},
        "payment_ids": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": True,
}
_ACCEPTED_SCHEMA = {
    "type": "object",
    "required": ["payment_id", "status", "correlation_id", "end_to_end_id", "links"],
    "properties": {
        "payment_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["RECEIVED"]},
        "correlation_id": {"type": "string"},
        "end_to_end_id": {"type": "string"},
        "links": {"type": "object", "properties": {"self": {"type": "string"}}},
    },
}
_ACCEPTED_DOCUMENT_SCHEMA = {
    "type": "object",
    "required": ["payment_ids", "status", "payments", "links"],
    "properties": {
        "payment_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        "status": {"type": "string", "enum": ["RECEIVED"]},
        "payments": {"type": "array", "items": {"$ref": "#/components/schemas/PaymentAccepted"}},
        "links": {"type": "object", "properties": {"self": {"type": "string"}}},
    },
}
_REVIEW_SUBMITTED_SCHEMA = {
    "type": "object",
    "required": ["payment_id", "status", "review", "detail", "links"],
    "properties": {
        "payment_id": {"type": "string"},
        "status": {"type": "string", "enum": ["HELD"]},
        "review": {"type": "object", "required": ["event_id", "decision", "reviewer", "submitted_at", "state"],
                   "properties": {"event_id": {"type": "string", "format": "uuid"},
                                  "decision": {"type": "string", "enum": ["approve", "reject"]},
                                  "reviewer": {"type": "string"}, "submitted_at": {"type": "string"},
                                  "state": {"type": "string", "enum": ["submitted"]}}},
        "detail": {"type": "string"},
        "links": {"type": "object", "properties": {"self": {"type": "string"}, "reviews": {"type": "string"}}},
    },
}
_REASON_SCHEMA = {"type": ["object", "null"], "required": ["code"],
                  "properties": {"code": {"type": "string", "description": "The reason code (README, reason codes)"},
                                 "iso_code": {"type": ["string", "null"],
                                              "description": "The ISO 20022 status reason code"},
                                 "detail": {"type": ["string", "null"]}}}
# The body of a status webhook (orchestrator/stages/notifications.py, `webhook_payload`).
_STATUS_WEBHOOK_SCHEMA = {
    "type": "object",
    "description": "One status of one payment, sent once per status to each of the tenant's endpoints that "
                   "lists it; signed per Standard Webhooks (webhook-id is the event id: deduplicate on it).",
    "required": ["type", "timestamp", "data"],
    "properties": {
        "type": {"type": "string", "enum": ["payment.held", "payment.settled", "payment.rejected", "payment.failed"]},
        "timestamp": {"type": "string", "format": "date-time", "description": "When the status was reached"},
        "data": {
            "type": "object",
            "required": ["event_id", "event_type", "payment_id", "tenant_id", "status", "correlation_id",
                         "end_to_end_id", "amount", "currency", "occurred_at", "reason", "links"],
            "properties": {
                "event_id": {"type": "string", "format": "uuid", "description": "Also the webhook-id header"},
                "event_type": {"type": "string", "enum": ["PaymentHeld", "PaymentSettled", "PaymentRejected",
                                                          "PaymentFailed"]},
                "payment_id": {"type": "string", "format": "uuid"},
                "tenant_id": {"type": "string"},
                "status": {"type": "string", "enum": ["HELD", "SETTLED", "REJECTED", "FAILED"]},
                "correlation_id": {"type": "string"},
                "end_to_end_id": {"type": "string"},
                "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$",
                           "description": "Exact decimal in the currency's minor-unit precision"},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "occurred_at": {"type": "string", "format": "date-time"},
                "reason": _REASON_SCHEMA,
                "rail": {"type": ["string", "null"]},
                "links": {"type": "object", "properties": {"self": {"type": "string"}}},
            },
        },
    },
}
_WEBHOOK_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "The event id: the same on every attempt and redelivery; a receiver keeps one copy per id."},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "Unix seconds of this attempt; refuse one more than five minutes from your clock."},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "Space-separated `v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` "
                    "with the key of the endpoint's `whsec_` secret; two during a secret rotation."},
]
_HEADERS = {
    "idempotency": {"name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "Makes a retry safe: the same key with the same content answers the first answer "
                                   "again; surrounding spaces are not part of the key.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
    "reviewer": {"name": "X-Reviewer", "in": "header", "required": False,
                 "description": "The person deciding, required with an API key (a key names a system, not a "
                                "person); with a JWT the token's subject is the reviewer, and this header, if "
                                "sent, must name the same. Recorded on the payment's timeline with the decision.",
                 "schema": {"type": "string", "minLength": 1, "maxLength": REVIEWER_MAX_CHARS,
                            "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$"}},
    "tenant": {"name": "X-Tenant-Id", "in": "header", "required": False,
               "description": "Optional; if sent, it must name the tenant of the API key (403 otherwise).",
               "schema": {"type": "string"}},
}
_DESCRIPTIONS = {400: "Bad request", 401: "No valid API key", 403: "The key does not allow this", 404: "Not found",
                 405: "Method not allowed", 408: "The request head or body did not arrive in time", 409: "Conflict",
                 431: "The request head is too large",
                 413: "Too large", 415: "Unsupported media type", 422: "Not valid",
                 429: "The key is over its submission rate; send again after Retry-After", 500: "Internal error",
                 503: "Overloaded, or the outcome is unknown; send again after Retry-After"}
_SUBMIT_STATUSES = (400, 401, 403, 408, 409, 413, 415, 422, 429, 431, 500, 503)
_READ_STATUSES = (401, 403, 404, 422, 500)
_REVIEW_STATUSES = (400, 401, 403, 404, 408, 409, 413, 415, 422, 431, 500, 503)
# Answered by the HTTP server itself on any path (orchestrator/intake/server.py).
_SERVER_STATUSES = (400, 408, 431, 503)


def _problems(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {str(status): {"description": _DESCRIPTIONS[status],
                          "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status in statuses}


_XML_DOCUMENT = {"application/xml": {"schema": {"type": "string"}}}
# What each GET answers with 200: FastAPI declares an untyped return as a string.
_OK_CONTENT = {
    "/metrics": {"text/plain": {"schema": {"type": "string"}}},
    "/v1/payments/{payment_id}/notification": _XML_DOCUMENT,
    "/v1/settlement/cycles/{cycle_id}/statement": _XML_DOCUMENT,
}


def describe(app: FastAPI) -> dict[str, Any]:
    """The completed document (FastAPI's own, then the additions)."""
    document = FastAPI.openapi(app)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    transfer = CreditTransferIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(transfer.pop("$defs", {}))
    schemas["CreditTransfer"] = transfer
    schemas["Problem"] = _PROBLEM_SCHEMA
    schemas["PaymentAccepted"] = _ACCEPTED_SCHEMA
    schemas["DocumentAccepted"] = _ACCEPTED_DOCUMENT_SCHEMA
    schemas["ReviewDecision"] = ReviewIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["ReviewSubmitted"] = _REVIEW_SUBMITTED_SCHEMA
    schemas.update(SCHEMAS)
    components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                "description": "An API key of one tenant (`payorch apikey create`), or, where the "
                                                               "intake is configured for it, a JWT from the bank's "
                                                               "identity provider naming the tenant and scopes"}}
    document["security"] = [{"apiKey": []}]
    paths = document["paths"]
    for path in ("/healthz", "/readyz"):
        for operation in paths.get(path, {}).values():
            operation["security"] = []
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation shape; ours is problem+json
            responses.update({code: answer for code, answer in _problems(_SERVER_STATUSES).items()
                              if code not in responses})
            if method == "get":
                content = json_content(OK_SCHEMA_OF_PATH[path]) if path in OK_SCHEMA_OF_PATH else _OK_CONTENT[path]
                responses["200"] = {"description": "OK", "content": content}
            if path.startswith("/v1/") and method == "get":
                operation.setdefault("parameters", []).append(_HEADERS["tenant"])
                responses.update(_problems(_READ_STATUSES))
            for parameter in operation.get("parameters", []):
                if path.endswith("/notification") and parameter["name"] == "party":
                    parameter["schema"] = {"type": "string", "enum": ["debtor", "creditor"], "default": "debtor"}
    paths["/metrics"]["get"]["responses"].update(_problems((401, 403)))
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "The broker does not answer",
                                                   "content": json_content("Readiness")}
    payments = paths["/v1/payments"]["post"]
    payments["parameters"] = [_HEADERS["idempotency"], _HEADERS["tenant"]]
    payments["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/CreditTransfer"}}}}
    payments["responses"] = {"202": {"description": "Accepted: the broker has the payment",
                                     "content": {"application/json": {
                                         "schema": {"$ref": "#/components/schemas/PaymentAccepted"}}}},
                             **_problems(_SUBMIT_STATUSES)}
    documents = paths["/v1/payments/iso20022"]["post"]
    documents["parameters"] = [_HEADERS["idempotency"], _HEADERS["tenant"]]
    documents["requestBody"] = {"required": True, "description": "pacs.008.001.08, pain.001.001.03 or "
                                "pain.001.001.09", "content": {media: {"schema": {"type": "string"}}
                                                               for media in ("application/xml", "text/xml")}}
    documents["responses"] = {"202": {"description": "Accepted: the broker has every payment of the document",
                                      "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/DocumentAccepted"}}}},
                              **_problems(_SUBMIT_STATUSES)}
    review = paths["/v1/payments/{payment_id}/review"]["post"]
    review["parameters"] = [*(p for p in review.get("parameters", []) if p["in"] == "path"),
                            _HEADERS["reviewer"], _HEADERS["tenant"]]
    review["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ReviewDecision"}}}}
    review["responses"] = {"202": {"description": "Submitted: the broker has the decision, which routing applies "
                                                  "asynchronously (see the payment's timeline)",
                                   "content": {"application/json": {
                                       "schema": {"$ref": "#/components/schemas/ReviewSubmitted"}}}},
                           **_problems(_REVIEW_STATUSES)}
    schemas["PaymentStatusWebhook"] = _STATUS_WEBHOOK_SCHEMA
    document["webhooks"] = {"paymentStatus": {"post": {
        "summary": "A payment reached HELD, SETTLED, REJECTED or FAILED",
        "description": "Sent by the notifications stage to each endpoint in the tenant file's "
                       "`notifications.endpoints` that lists the status. Retried with exponential backoff and jitter "
                       "until a 2xx answer (redirects are not followed), for up to three days by default; then dead, "
                       "and redeliverable with `payorch webhooks redeliver`. Delivery is at least once: deduplicate "
                       "on webhook-id. Order between statuses of one payment is not guaranteed; use `timestamp`.",
        "operationId": "paymentStatusWebhook",
        "security": [],
        "parameters": _WEBHOOK_HEADERS,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PaymentStatusWebhook"}}}},
        "responses": {"2XX": {"description": "Received (any 2xx ends the retries)"},
                      "default": {"description": "Not received: the delivery is retried after its backoff"}},
    }}}
    return document


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi
