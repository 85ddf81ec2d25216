"""Notifications: a tenant's webhooks for the statuses a bank acts on, HELD and the
terminal ones (SETTLED, REJECTED, FAILED), each sent once per payment.

An optional stage (topics.py, OPTIONAL_STAGES): a payment ends without it. It reads the
events that set those statuses (tracking's table, `STATUS_OF_EVENT`): `PaymentHeld` and
`PaymentRejected` from routing, `PaymentRejected` from initiation and the ledger,
`PaymentFailed` from execution, `PaymentSettled` from settlement. The decision is
tracking's status rule (`next_status`) applied to the last status this stage notified:
a status is notified once, and nothing after a terminal status, so a redelivered event,
a re-emitted one or a second refusal of the same payment queues nothing.

What the stage decides is pure: which endpoints get which payload. It writes the
deliveries into its outbox (orchestrator/webhook_outbox.py) in the batch's state unit and
emits no event. The delivery worker (adapters/webhook_delivery.py, started by the
composition root in the same process) signs and sends them, with retries.

The webhook's id is the event's id: the same on every attempt and every redelivery, so a
receiver keeps each status once by deduplicating on `webhook-id` (Standard Webhooks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from orchestrator.domain import format_minor_units
from orchestrator.events import Event
from orchestrator.stages.base import Stage
from orchestrator.stages.tracking import STATUS_OF_EVENT, next_status
from orchestrator.storage import transaction
from orchestrator.tenants import NOTIFIED_STATUSES, TenantConfig
from orchestrator.webhook_outbox import OUTBOX_FILE, QueuedDelivery, WebhookOutbox, delivery_id_of

# The event type of each notified status, as a webhook `type` (dotted, lower case, as
# the Standard Webhooks examples name theirs).
WEBHOOK_TYPE_OF_STATUS = {status: f"payment.{status.lower()}" for status in NOTIFIED_STATUSES}
NOTIFYING_EVENT_TYPES = frozenset(t for t, status in STATUS_OF_EVENT.items() if status in NOTIFIED_STATUSES)
# Payload fields of the notifying events a bank needs to act: why, and what rail.
_REASON_FIELDS = ("reason_code", "iso_reason_code", "reason_detail")


def webhook_payload(event: Event, status: str) -> dict[str, Any]:
    """The webhook body for `event` (pure): what happened to which payment, the amount
    exact as a decimal string, the reason of a refusal or a hold; never account data."""
    payment = event.payment
    payload = event.payload
    reason = None
    if payload.get("reason_code"):
        reason = {"code": payload["reason_code"], "iso_code": payload.get("iso_reason_code"),
                  "detail": payload.get("reason_detail")}
    data = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "payment_id": event.payment_id,
        "tenant_id": event.tenant_id,
        "status": status,
        "correlation_id": event.correlation_id,
        "end_to_end_id": payment.end_to_end_id,
        "amount": format_minor_units(payment.amount_minor, payment.currency),
        "currency": payment.currency,
        "occurred_at": event.occurred_at.isoformat(),
        "reason": reason,
        "rail": payload.get("rail"),
        "links": {"self": f"/v1/payments/{event.payment_id}"},
    }
    return {"type": WEBHOOK_TYPE_OF_STATUS[status], "timestamp": event.occurred_at.isoformat(), "data": data}


def deliveries_for(event: Event, tenant: TenantConfig, notified: str | None) -> tuple[str | None, list[QueuedDelivery]]:
    """(the payment's status after `event`, or None if it does not move; the deliveries
    to queue), given the last status notified for the payment (pure)."""
    status = next_status(notified, event.event_type)
    if status is None or status not in WEBHOOK_TYPE_OF_STATUS:
        return None, []
    endpoints = [endpoint for endpoint in tenant.notifications.endpoints if status in endpoint.statuses]
    if not endpoints:
        return status, []
    body = orjson.dumps(webhook_payload(event, status))
    return status, [QueuedDelivery(delivery_id=delivery_id_of(event.event_id, endpoint.name),
                                   webhook_id=event.event_id, tenant_id=event.tenant_id, endpoint=endpoint.name,
                                   url=endpoint.url, payment_id=event.payment_id, status=status,
                                   event_type=WEBHOOK_TYPE_OF_STATUS[status], body=body)
                    for endpoint in endpoints]


class NotificationsStage(Stage):
    name = "notifications"
    input_topics = ("initiated", "routed", "executed", "posted", "settled")
    input_event_types = NOTIFYING_EVENT_TYPES

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, *, worker=None) -> None:
        super().__init__(tenants, region)
        self.outbox = WebhookOutbox(data_dir / OUTBOX_FILE)
        # The delivery worker (adapters/webhook_delivery.py), given by the composition
        # root; None in tests that look at the outbox alone.
        self.worker = worker
        if worker is not None:
            worker.start()

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        now_s = time.time()
        with transaction(self.outbox.db):
            notified = self.outbox.notified_statuses(event.payment_id for event in events)
            for event in events:
                status, deliveries = deliveries_for(event, self.tenant(event), notified.get(event.payment_id))
                if status is None:
                    continue
                notified[event.payment_id] = status
                self.outbox.set_status(event.payment_id, event.tenant_id, status, event.event_id, now_s)
                for delivery in deliveries:
                    self.outbox.enqueue(delivery, now_s)
        return []

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.outbox.close()
