"""Execution: send a routed payment to its rail's clearing system and record the answer.

The pure parts are translation (canonical payment to pacs.008, pacs.002 to an outcome
event, both in `adapters.iso20022`); the one I/O is the clearing call, made through the
`ClearingBatchClient` port so tests and the runtime can point it at the clearing simulator.
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from adapters.clearing_batch import ClearingBatchClient
from adapters.clearing_client import ClearingError, ClearingTimeout, ClearingUnavailable
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

    def __init__(self, tenants: dict[str, TenantConfig], region: str, client: ClearingBatchClient,
                 url_for: Callable[[str, str], str]) -> None:
        super().__init__(tenants, region)
        self.client = client
        self.url_for = url_for

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        """Send the batch's payments concurrently; retry transient failures in place."""
        work = []
        for event in events:
            tenant = self.tenant(event)
            rail = tenant.rails_by_name.get(event.payload["rail"])
            if rail is None:
                raise LookupError(f"tenant {tenant.tenant_id} has no rail {event.payload['rail']!r}")
            message_id = clearing_message_id(event.payment_id)
            document = build_pacs008([event.payment], rail, message_id=message_id, created_at=event.occurred_at)
            work.append((event, rail, message_id, document))
        outcomes: dict[int, Event] = {}
        failures: dict[int, tuple[ReasonCode, str]] = {}
        pending = list(range(len(work)))
        for attempt in range(1, CLEARING_ATTEMPTS_MAX + 1):
            answers = self.client.submit_many([
                (self.url_for(work[i][1].name, work[i][1].clearing.endpoint_path), work[i][3],
                 work[i][1].clearing.timeout_ms / 1000) for i in pending])
            retry = []
            for i, answer in zip(pending, answers, strict=True):
                event, rail, message_id, _ = work[i]
                result = self._interpret(event, rail, message_id, answer)
                if isinstance(result, Event):
                    outcomes[i] = result
                    continue
                failures[i] = result
                log.warning("clearing attempt %d/%d failed: %s", attempt, CLEARING_ATTEMPTS_MAX, result[1],
                            extra=event.log_context())
                retry.append(i)
            pending = retry
            if not pending:
                break
            if attempt < CLEARING_ATTEMPTS_MAX:
                delay_ms = min(CLEARING_RETRY_DELAY_MS_MAX, CLEARING_RETRY_DELAY_MS_BASE * 2 ** (attempt - 1))
                time.sleep(random.uniform(delay_ms / 2, delay_ms) / 1000)
        for i in pending:
            event, rail, message_id, _ = work[i]
            code, detail = failures[i]
            outcomes[i] = self.emit(event, "PaymentFailed", {
                "rail": rail.name, "reason_code": code.value, "iso_reason_code": code.iso_code,
                "reason_detail": detail, "clearing_message_id": message_id}, datetime.now(UTC))
        return [outcomes[i] for i in range(len(work))]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        return self.handle_batch([event], now)

    def _interpret(self, event: Event, rail: RailConfig, message_id: str, answer) -> Event | tuple[ReasonCode, str]:
        """The outcome event of one clearing answer, or the transient failure to retry."""
        if isinstance(answer, ClearingTimeout):
            return ReasonCode.clearing_timeout, f"{rail.display_name} did not answer in time: {answer}"
        if isinstance(answer, ClearingUnavailable):
            return ReasonCode.clearing_unavailable, f"{rail.display_name} unavailable: {answer}"
        if isinstance(answer, ClearingError):
            return ReasonCode.clearing_unavailable, f"{rail.display_name} answered unreadably: {answer}"
        try:
            report = parse_pacs002(answer)
        except IsoDocumentError as exc:
            return ReasonCode.clearing_unavailable, f"{rail.display_name} answered unreadably: {exc}"
        status = next((s for s in report.statuses if s.original_uetr in (None, event.payment_id)), None)
        if status is None and report.group_status == "RJCT":
            # The whole message was refused (e.g. FF01): the payment is refused with it.
            status = TransactionStatus(original_end_to_end_id=event.payment.end_to_end_id,
                                       original_uetr=event.payment_id, status="RJCT",
                                       reason_code=report.group_reason_code, reason_text=report.group_reason_text)
        if status is None:
            return ReasonCode.clearing_unavailable, f"{rail.display_name} answered without mentioning the payment"
        now = datetime.now(UTC)
        event_type, payload = outcome_payload(rail, status, message_id, now)
        return self.emit(event, event_type, payload, now)

    def close(self) -> None:
        self.client.close()
