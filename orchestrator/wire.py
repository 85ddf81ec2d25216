"""The wire contract of payment events besides their Avro body: the Kafka headers.

Every payment event is keyed by its payment id and carries the event headers below.
Consumers filter on `event_type` before decoding anything, log with the ids without
decoding, and tracking records most events from the headers alone. A record the runtime
sends to a retry topic or a dead-letter topic keeps the original key, bytes and headers
and adds the retry or dead-letter headers below, which say where it came from and why.
Every header name the product writes is defined here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.events import Event

HEADER_EVENT_TYPE = "event_type"
HEADER_SCHEMA_VERSION = "schema_version"
HEADER_CORRELATION_ID = "correlation_id"
HEADER_TENANT_ID = "tenant_id"
HEADER_TRACEPARENT = "traceparent"
HEADER_EVENT_ID = "event_id"
HEADER_CAUSATION_ID = "causation_id"
HEADER_OCCURRED_AT = "occurred_at"
HEADER_STAGE = "stage"
HEADER_REGION = "region"
# The hosted stages that already took this event from the stage that wrote it, inside the
# process and transaction that wrote it (comma-separated stage names; see
# orchestrator/runtime/hosting.py). Those stages skip it when they read the topic;
# every other reader (tracking, another plan's process, a replay for a stage that failed
# on it) reads it as usual.
HEADER_HANDLED_BY = "payorch.handled_by"

# A retried event: `<origin topic>.retry.<level>` (orchestrator/retries.py). Each attempt
# replaces the previous attempt's retry headers.
RETRY_HEADER_PREFIX = "payorch.retry."
# The one stage that retries the event (several stages read most topics).
HEADER_RETRY_STAGE = RETRY_HEADER_PREFIX + "stage"
HEADER_RETRY_ATTEMPT = RETRY_HEADER_PREFIX + "attempt"
HEADER_RETRY_FIRST_FAILED_AT = RETRY_HEADER_PREFIX + "first_failed_at"
HEADER_RETRY_LAST_ERROR_CLASS = RETRY_HEADER_PREFIX + "last_error_class"
HEADER_RETRY_LAST_ERROR = RETRY_HEADER_PREFIX + "last_error"
# Epoch milliseconds before which the retry partition stays paused at this event.
HEADER_RETRY_DUE_AT_MS = RETRY_HEADER_PREFIX + "due_at_ms"
HEADER_RETRY_ORIGIN_TOPIC = RETRY_HEADER_PREFIX + "origin_topic"

# A dead letter: `<origin topic>.dlq`, read and replayed by `payorch dlq`. A replay sends
# the record back without these.
DLQ_HEADER_PREFIX = "payorch.dlq."
HEADER_DLQ_ORIGIN_TOPIC = DLQ_HEADER_PREFIX + "origin_topic"
# -1 for an event handed over inside a process: it had no offset yet when it failed.
HEADER_DLQ_ORIGIN_PARTITION = DLQ_HEADER_PREFIX + "origin_partition"
HEADER_DLQ_ORIGIN_OFFSET = DLQ_HEADER_PREFIX + "origin_offset"
# The stage that could not handle the record (several stages read most topics).
HEADER_DLQ_STAGE = DLQ_HEADER_PREFIX + "stage"
HEADER_DLQ_ERROR_CLASS = DLQ_HEADER_PREFIX + "error_class"
HEADER_DLQ_ERROR_MESSAGE = DLQ_HEADER_PREFIX + "error_message"
HEADER_DLQ_ATTEMPTS = DLQ_HEADER_PREFIX + "attempts"
HEADER_DLQ_FAILED_AT = DLQ_HEADER_PREFIX + "failed_at"


def event_headers(event: Event, schema_version: int) -> list[tuple[str, bytes]]:
    headers = [
        (HEADER_EVENT_TYPE, event.event_type.encode()),
        (HEADER_SCHEMA_VERSION, str(schema_version).encode()),
        (HEADER_CORRELATION_ID, event.correlation_id.encode()),
        (HEADER_TENANT_ID, event.tenant_id.encode()),
        # The rest of the envelope a reader may need without decoding the body: tracking
        # records most events from these alone (the body stays as bytes until a query).
        (HEADER_EVENT_ID, event.event_id.encode()),
        (HEADER_OCCURRED_AT, event.occurred_at.isoformat().encode()),
        (HEADER_STAGE, event.stage.encode()),
        (HEADER_REGION, event.region.encode()),
    ]
    if event.causation_id:
        headers.append((HEADER_CAUSATION_ID, event.causation_id.encode()))
    if event.traceparent:
        headers.append((HEADER_TRACEPARENT, event.traceparent.encode()))
    return headers


def header(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """The value of header `name` in `headers` (a message's `headers()`), or None."""
    # confluent-kafka builds a new list on every `headers()` call: the hot loop reads it once.
    for key, value in headers:
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None
