"""The shapes of the intake's JSON answers to GET, field by field, for the OpenAPI document.

Each schema names every field the intake writes, its type and whether it can be null.
Objects are closed (`additionalProperties: false`) where the intake fixes their fields;
a timeline entry is open because its business facts depend on the event type (the fields
tracking shows are listed, `orchestrator/stages/tracking.py` _TIMELINE_DETAIL_FIELDS), and
so are the screening verdicts of a held payment, which are the screening event's own. The
tests validate real answers against these schemas (tests/openapi_check.py), so a field
added to an answer without its schema fails there.
"""

from __future__ import annotations

from typing import Any

from orchestrator.stages.tracking import STATUS_RANK


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _closed(required: list[str], properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False,
            **extra}


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_TIME = {"type": "string", "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}
_STATUS = {"type": "string", "enum": sorted(STATUS_RANK)}
_REASON = _nullable(_closed(["code", "iso_code", "detail"], {
    "code": {"type": "string", "description": "payorch's reason code (the README's list)"},
    "iso_code": _nullable({"type": "string", "description": "the ISO 20022 status reason code"}),
    "detail": _nullable(_STRING)}))

TIMELINE_ENTRY = {
    "type": "object",
    "description": "One event of the payment. Beside the fields every entry has, an entry shows its event's "
                   "business facts (never account data): reason_code, iso_reason_code, reason_detail, outcome, "
                   "best_score, score, rules_triggered, rail, clearing_status, cycle_id, settlement_mode, "
                   "amount_minor, matched_list, matched_entry_id, breaker_state, attempt, retry_at, deadline_at, "
                   "decision, reviewer, comment, review_step, refusal_reason, maker, credential_id, as the event "
                   "carries them.",
    "required": ["stage", "event_type", "occurred_at", "event_id", "correlation_id"],
    "properties": {
        "stage": _STRING, "event_type": _STRING, "occurred_at": _TIME, "event_id": _UUID,
        "correlation_id": _STRING, "causation_id": _nullable(_STRING), "region": _nullable(_STRING),
        "details_unavailable": {"type": "string", "description": "set instead of the facts when the event was "
                                                                 "written by a newer schema than this reader knows"},
    },
    "additionalProperties": True,
}
RECONCILIATION_EXCEPTION = _closed(
    ["event_id", "cycle_id", "kind", "payment_id", "occurred_at", "rail", "rail_reference", "currency",
     "our_amount_minor", "rail_amount_minor", "rail_currency", "our_status", "rail_settled_at", "detail"], {
        "event_id": _UUID, "cycle_id": _STRING,
        "kind": {"type": "string", "description": "what disagrees: the README's reconciliation section lists the kinds"},
        "payment_id": _nullable(_STRING), "occurred_at": _TIME, "rail": _STRING, "rail_reference": _nullable(_STRING),
        "currency": _STRING, "our_amount_minor": _nullable(_INT), "rail_amount_minor": _nullable(_INT),
        "rail_currency": _nullable(_STRING), "our_status": _nullable(_STRING),
        "rail_settled_at": _nullable({"type": "string", "description": "when the rail says it settled"}),
        "detail": _STRING,
    }, description="A discrepancy between the rail's report and payorch's records, found when a cycle closed.")
PAYMENT_STATUS = _closed(
    ["payment_id", "tenant_id", "status", "reason", "end_to_end_id", "timeline", "exceptions", "links"], {
        "payment_id": _UUID, "tenant_id": _STRING, "status": _STATUS, "reason": _REASON,
        "end_to_end_id": _STRING,
        "timeline": {"type": "array", "items": {"$ref": "#/components/schemas/TimelineEntry"}},
        "exceptions": {"type": "array", "items": {"$ref": "#/components/schemas/ReconciliationException"}},
        "links": _closed(["self"], {"self": _STRING}),
    })
_VERDICT = _nullable({"type": "object", "description": "the screening event's own verdict fields",
                      "additionalProperties": True})
_PARTY = _closed(["name"], {"name": _STRING})
HELD_PAYMENT = _closed(
    ["payment_id", "end_to_end_id", "amount", "currency", "held_at", "expires_at", "reason", "sanctions", "fraud",
     "parties", "review", "links"], {
        "payment_id": _UUID, "end_to_end_id": _STRING,
        "amount": _nullable({"type": "string", "description": "a decimal string in the currency's units"}),
        "currency": _nullable(_STRING), "held_at": _TIME,
        "expires_at": {**_TIME, "description": "when the hold ends REJECTED unless decided"},
        "reason": _REASON, "sanctions": _VERDICT, "fraud": _VERDICT,
        "parties": _nullable(_closed(["debtor", "creditor"], {"debtor": _PARTY, "creditor": _PARTY})),
        "review": _closed(["state", "maker", "maker_approved_at", "requires_checker"], {
            "state": {"type": "string", "enum": ["awaiting_review", "awaiting_checker"]},
            "maker": _nullable(_STRING), "maker_approved_at": _nullable(_TIME), "requires_checker": {"type": "boolean"}}),
        "links": _closed(["payment", "review"], {"payment": _STRING, "review": _STRING}),
    })
REVIEW_QUEUE = _closed(["tenant_id", "reviews", "links"], {
    "tenant_id": _STRING,
    "reviews": {"type": "array", "items": {"$ref": "#/components/schemas/HeldPayment"}},
    "links": _closed(["self"], {"self": _STRING, "next": _STRING}),
})
_CURRENCY_TOTAL = _closed(["currency", "count", "amount_minor"], {"currency": _STRING, "count": _INT,
                                                                  "amount_minor": _INT})
_CYCLE_PROPERTIES = {
    "cycle_id": _STRING, "tenant_id": _STRING, "rail": _STRING, "settlement_mode": _STRING,
    "settlement_date": {"type": "string", "format": "date"}, "window_start": _TIME, "window_end": _TIME,
    "closed_at": _TIME, "payment_count": _INT, "rail_transaction_count": _INT, "exception_count": _INT,
    "statement_id": _STRING, "statement_sha256": _STRING,
    "totals": {"type": "array", "description": "payorch's totals per currency", "items": _CURRENCY_TOTAL},
    "rail_totals": {"type": "array", "description": "the rail's report's totals per currency",
                    "items": _CURRENCY_TOTAL},
    "net_positions": {"type": "array", "description": "the net position of each participant agent and currency",
                      "items": _closed(["agent", "currency", "sent_count", "sent_minor", "received_count",
                                        "received_minor", "net_minor"], {
                          "agent": {"type": "string", "description": "BIC, else clearing member id or bank code"},
                          "currency": _STRING, "sent_count": _INT, "sent_minor": _INT, "received_count": _INT,
                          "received_minor": _INT, "net_minor": _INT})},
    "links": _closed(["self", "statement"], {"self": _STRING, "statement": _STRING}),
}
_CYCLE_REQUIRED = ["cycle_id", "tenant_id", "rail", "settlement_mode", "settlement_date", "window_start", "window_end",
                   "closed_at", "payment_count", "rail_transaction_count", "exception_count", "statement_id",
                   "statement_sha256", "totals", "rail_totals", "net_positions", "links"]
SETTLEMENT_CYCLE_SUMMARY = _closed(_CYCLE_REQUIRED, _CYCLE_PROPERTIES)
SETTLEMENT_CYCLE = _closed(_CYCLE_REQUIRED + ["exceptions"], {
    **_CYCLE_PROPERTIES,
    "exceptions": {"type": "array", "items": {"$ref": "#/components/schemas/ReconciliationException"}}})
SETTLEMENT_CYCLES = _closed(["tenant_id", "cycles"], {
    "tenant_id": _STRING,
    "cycles": {"type": "array", "items": {"$ref": "#/components/schemas/SettlementCycleSummary"}}})
LEDGER_SUMMARY = _closed(["tenant_id", "currencies", "transfers"], {
    "tenant_id": _STRING,
    "currencies": {"type": "array", "items": _closed(
        ["currency", "kind", "accounts", "debits_posted_minor", "credits_posted_minor", "debits_pending_minor",
         "credits_pending_minor"], {
            "currency": _STRING, "kind": _STRING, "accounts": _INT, "debits_posted_minor": _INT,
            "credits_posted_minor": _INT, "debits_pending_minor": _INT, "credits_pending_minor": _INT})},
    "transfers": {"type": "object", "description": "the number of ledger transfers in each state",
                  "additionalProperties": _INT},
})
HEALTH = _closed(["status"], {"status": {"type": "string", "enum": ["ok"]}})
READINESS = _closed(["status", "broker"], {"status": {"type": "string", "enum": ["ready", "unavailable"]},
                                           "broker": {"type": "string", "enum": ["reachable", "unreachable"]}})

SCHEMAS = {
    "TimelineEntry": TIMELINE_ENTRY, "ReconciliationException": RECONCILIATION_EXCEPTION,
    "PaymentStatus": PAYMENT_STATUS, "HeldPayment": HELD_PAYMENT, "ReviewQueue": REVIEW_QUEUE,
    "SettlementCycleSummary": SETTLEMENT_CYCLE_SUMMARY, "SettlementCycle": SETTLEMENT_CYCLE,
    "SettlementCycles": SETTLEMENT_CYCLES, "LedgerSummary": LEDGER_SUMMARY, "Health": HEALTH,
    "Readiness": READINESS,
}
# GET path -> the schema of its 200 answer.
OK_SCHEMA_OF_PATH = {
    "/v1/payments/{payment_id}": "PaymentStatus",
    "/v1/reviews": "ReviewQueue",
    "/v1/settlement/cycles": "SettlementCycles",
    "/v1/settlement/cycles/{cycle_id}": "SettlementCycle",
    "/v1/ledger/summary": "LedgerSummary",
    "/healthz": "Health",
    "/readyz": "Readiness",
}


def json_content(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}
