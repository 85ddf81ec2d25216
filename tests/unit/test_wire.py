"""The header names are part of the wire contract: records already on the topics (dead
letters waiting for a replay, retries waiting to be due) and every other reader of them
(`payorch dlq`, tracking, another version of a stage) depend on the exact strings, so a
rename is a wire change, not a refactor."""

from __future__ import annotations

from orchestrator import wire

NAMES = {
    "HEADER_EVENT_TYPE": "event_type",
    "HEADER_SCHEMA_VERSION": "schema_version",
    "HEADER_CORRELATION_ID": "correlation_id",
    "HEADER_TENANT_ID": "tenant_id",
    "HEADER_TRACEPARENT": "traceparent",
    "HEADER_EVENT_ID": "event_id",
    "HEADER_CAUSATION_ID": "causation_id",
    "HEADER_OCCURRED_AT": "occurred_at",
    "HEADER_STAGE": "stage",
    "HEADER_REGION": "region",
    "HEADER_HANDLED_BY": "payorch.handled_by",
    "RETRY_HEADER_PREFIX": "payorch.retry.",
    "HEADER_RETRY_STAGE": "payorch.retry.stage",
    "HEADER_RETRY_ATTEMPT": "payorch.retry.attempt",
    "HEADER_RETRY_FIRST_FAILED_AT": "payorch.retry.first_failed_at",
    "HEADER_RETRY_LAST_ERROR_CLASS": "payorch.retry.last_error_class",
    "HEADER_RETRY_LAST_ERROR": "payorch.retry.last_error",
    "HEADER_RETRY_DUE_AT_MS": "payorch.retry.due_at_ms",
    "HEADER_RETRY_ORIGIN_TOPIC": "payorch.retry.origin_topic",
    "DLQ_HEADER_PREFIX": "payorch.dlq.",
    "HEADER_DLQ_ORIGIN_TOPIC": "payorch.dlq.origin_topic",
    "HEADER_DLQ_ORIGIN_PARTITION": "payorch.dlq.origin_partition",
    "HEADER_DLQ_ORIGIN_OFFSET": "payorch.dlq.origin_offset",
    "HEADER_DLQ_STAGE": "payorch.dlq.stage",
    "HEADER_DLQ_ERROR_CLASS": "payorch.dlq.error_class",
    "HEADER_DLQ_ERROR_MESSAGE": "payorch.dlq.error_message",
    "HEADER_DLQ_ATTEMPTS": "payorch.dlq.attempts",
    "HEADER_DLQ_FAILED_AT": "payorch.dlq.failed_at",
}


def test_every_header_name_is_the_one_on_the_wire():
    defined = {name: getattr(wire, name) for name in dir(wire) if name.startswith("HEADER_") or
               name.endswith("_HEADER_PREFIX")}
    assert defined == NAMES


def test_a_header_is_read_by_its_name_and_a_missing_or_empty_one_is_none():
    headers = [("event_type", b"PaymentRouted"), ("payorch.retry.attempt", None), ("tenant_id", b"emea")]
    assert wire.header(headers, wire.HEADER_TENANT_ID) == "emea"
    assert wire.header(headers, wire.HEADER_RETRY_ATTEMPT) is None
    assert wire.header(headers, wire.HEADER_CORRELATION_ID) is None
