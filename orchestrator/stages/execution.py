"""Execution: send a routed payment to its rail's clearing system and record the answer.

The pure parts are translation (canonical payment to pacs.008, pacs.002 to an outcome
event, both in `adapters.iso20022`); the one I/O is the clearing call, made through the
`ClearingClient` port so tests and the runtime can point it at the clearing simulator.
A batch's payments are sent concurrently (bounded by the settings) because each call
waits on a remote system and the batch must not be as slow as the sum of its calls.

The message id sent to the clearing system is derived from the payment id, and the
clearing systems (and the simulator) deduplicate on the UETR, so re-sending after a
crash or a timeout returns the original answer instead of paying twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from adapters.clearing_client import ClearingClient, ClearingProtocolError, ClearingTimeout, ClearingUnavailable
from adapters.iso20022 import IsoDocumentError
from adapters.iso20022.pacs002 import ISO_REASON_DESCRIPTIONS, TransactionStatus, parse_pacs002
from adapters.iso20022.pacs008 import build_pacs008
from orchestrator.events import Event
from orchestrator.reasons import ReasonCode
from orchestrator.stages.base import Stage
from orchestrator.tenants import RailConfig, TenantConfig

log = logging.getLogger("payorch.execution")

# Transient clearing faults are retried in place this many times with jittered
# exponential backoff; beyond that the payment fails with a reason a person can act on.
# (Non-blocking retry topics replace this in-place loop for long outages.)
CLEARING_ATTEMPTS_MAX = 3
CLEARING_RETRY_DELAY_MS_BASE = 100
CLEARING_RETRY_DELAY_MS_MAX = 1_000
_SETTLED_STATUSES = frozenset({"ACSC", "ACCC", "ACSP", "ACCP"})


def clearing_message_id(payment_id: str) -> str:
    """A Max35Text message id that is the same every time the payment is sent."""
    return "PO" + payment_id.replace("-", "")[:32]


def outcome_payload(rail: RailConfig, status: TransactionStatus, message_id: str, now: datetime) -> tuple[str, dict]:
    """Map one pacs.002 transaction status to our event (pure)."""
    if status.status in _SETTLED_STATUSES:
        return "PaymentExecuted", {
            "rail": rail.name,
            "clearing_message_id": message_id,
            "clearing_status": status.status,
            "accepted_at": status.accepted_at or now,
        }
    iso = status.reason_code or "NARR"
    detail = status.reason_text or ISO_REASON_DESCRIPTIONS.get(iso, "rejected by the clearing system")
    return "PaymentFailed", {
        "rail": rail.name,
        "reason_code": ReasonCode.clearing_rejected.value,
        "iso_reason_code": iso,
        "reason_detail": f"{rail.display_name} rejected the payment: {iso} {detail}",
        "clearing_message_id": message_id,
    }


class ExecutionStage(Stage):
    name = "execution"
    input_topics = ("routed",)
    input_event_types = frozenset({"PaymentRouted"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, client: ClearingClient, *,
                 max_concurrent_requests: int = 64) -> None:
        super().__init__(tenants, region)
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=max_concurrent_requests, thread_name_prefix="clearing")

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        return list(self.pool.map(lambda event: self.handle(event, now)[0], events))

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        rail = tenant.rails_by_name.get(event.payload["rail"])
        if rail is None:
            raise LookupError(f"tenant {tenant.tenant_id} has no rail {event.payload['rail']!r}")
        message_id = clearing_message_id(event.payment_id)
        document = build_pacs008([event.payment], rail, message_id=message_id, created_at=event.occurred_at)
        failure: tuple[ReasonCode, str] | None = None
        for attempt in range(1, CLEARING_ATTEMPTS_MAX + 1):
            try:
                answer = self.client.submit(rail.clearing.endpoint_path, document, rail.clearing.timeout_ms / 1000)
                report = parse_pacs002(answer)
                status = next((s for s in report.statuses if s.original_uetr in (None, event.payment_id)), None)
                if status is None and report.group_status == "RJCT":
                    # The whole message was refused (e.g. FF01): the payment is refused with it.
                    status = TransactionStatus(original_end_to_end_id=event.payment.end_to_end_id,
                                               original_uetr=event.payment_id, status="RJCT",
                                               reason_code=report.group_reason_code,
                                               reason_text=report.group_reason_text)
                if status is None:
                    raise ClearingProtocolError("pacs.002 answer does not mention the payment")
                event_type, payload = outcome_payload(rail, status, message_id, datetime.now(UTC))
                return [self.emit(event, event_type, payload, datetime.now(UTC))]
            except ClearingTimeout as exc:
                failure = (ReasonCode.clearing_timeout, f"{rail.display_name} did not answer in time: {exc}")
            except ClearingUnavailable as exc:
                failure = (ReasonCode.clearing_unavailable, f"{rail.display_name} unavailable: {exc}")
            except (ClearingProtocolError, IsoDocumentError) as exc:
                failure = (ReasonCode.clearing_unavailable, f"{rail.display_name} answered unreadably: {exc}")
            log.warning("clearing attempt %d/%d failed: %s", attempt, CLEARING_ATTEMPTS_MAX, failure[1],
                        extra=event.log_context())
            if attempt < CLEARING_ATTEMPTS_MAX:
                delay_ms = min(CLEARING_RETRY_DELAY_MS_MAX, CLEARING_RETRY_DELAY_MS_BASE * 2 ** (attempt - 1))
                time.sleep(random.uniform(delay_ms / 2, delay_ms) / 1000)
        code, detail = failure
        payload = {
            "rail": rail.name,
            "reason_code": code.value,
            "iso_reason_code": code.iso_code,
            "reason_detail": detail,
            "clearing_message_id": message_id,
        }
        return [self.emit(event, "PaymentFailed", payload, datetime.now(UTC))]

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()
