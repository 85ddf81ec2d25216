"""The wire contract of payment events besides their Avro body: the Kafka headers.

Every payment event is keyed by its payment id and carries these headers. Consumers
filter on `event_type` before decoding anything, log with the ids without decoding,
and tracking records most events from the headers alone.
"""

from __future__ import annotations

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
# orchestrator/runtime.py, "Hand-over"). Those stages skip it when they read the topic;
# every other reader (tracking, another plan's process, a replay for a stage that failed
# on it) reads it as usual.
HEADER_HANDLED_BY = "payorch.handled_by"


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
