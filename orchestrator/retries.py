"""Non-blocking retries: what a stage says, how long an event waits, what travels with it.

An event a stage cannot finish now goes to `<origin topic>.retry.<level>` with its
original key, bytes and headers, plus `payorch.retry.*` headers (attempt, first failure,
last error, due time, the stage that will retry it; orchestrator/wire.py names them).
Its partition moves on at once; the stage's runner reads the retry topic, and pauses a
retry partition until its head event is due. Several stages read some topics (tracking reads all), so the `stage` header
names the one stage that retries the event; the others skip it.

Two ways in:
- a stage returns `RetryLater` for an event whose outcome it decides later (execution,
  for a rail whose circuit breaker is open): bounded by the stage's own deadline;
- a stage raises an exception that `is_transient` recognises (a locked database, a
  throttled or unreachable dependency): bounded by the number of retry levels, after
  which the event is dead-lettered with its attempt count.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from orchestrator.events import Event
from orchestrator.settings import RetrySettings
from orchestrator.topics import RETRY_INFIX
from orchestrator.wire import (HEADER_RETRY_ATTEMPT, HEADER_RETRY_DUE_AT_MS, HEADER_RETRY_FIRST_FAILED_AT,
                               HEADER_RETRY_LAST_ERROR, HEADER_RETRY_LAST_ERROR_CLASS, HEADER_RETRY_ORIGIN_TOPIC,
                               HEADER_RETRY_STAGE, RETRY_HEADER_PREFIX)

_ERROR_TEXT_MAX_CHARS = 1_000
# Error codes of AWS services (DynamoDB) that say "try again later".
_TRANSIENT_AWS_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionInProgressException",
})


class TransientError(RuntimeError):
    """A fault that will pass; raise it from a stage to have the event retried later."""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A stage's answer for an event it will finish later, not now."""

    event: Event
    error_class: str
    detail: str
    # The earliest useful retry (a breaker's half-open time); None means the backoff.
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stage's answer for an event it gives up on, with a reason a person can read:
    the runtime dead-letters the event (`payorch dlq` lists and replays it) while the
    rest of the batch goes on. Execution gives up so on a payment whose outcome the
    rail never confirmed (orchestrator/status_inquiry.py)."""

    event: Event
    error: Exception


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    response = getattr(exc, "response", None)
    if type(exc).__name__ == "ClientError" and isinstance(response, dict):
        return response.get("Error", {}).get("Code") in _TRANSIENT_AWS_CODES
    return False


def is_retry_topic(topic: str) -> bool:
    return RETRY_INFIX in topic


def retry_topic(origin_topic: str, level: int) -> str:
    return f"{origin_topic}{RETRY_INFIX}{level}"


def level_of(attempt: int, settings: RetrySettings) -> int:
    """Attempt n waits in level n; deferrals beyond the last level keep using it."""
    return max(1, min(attempt, settings.levels))


def backoff_s(attempt: int, settings: RetrySettings, rng: random.Random | None = None) -> float:
    """The delay before attempt `attempt` (1-based): its level's delay, +-jitter."""
    base = settings.backoff_s[level_of(attempt, settings) - 1]
    spread = base * settings.jitter
    return max(0.0, (rng or random).uniform(base - spread, base + spread))


def retry_headers(
    original: list[tuple[str, bytes]], *, stage: str, origin_topic: str, attempt: int, first_failed_at: str,
    error_class: str, error: str, due_at_ms: int,
) -> list[tuple[str, bytes]]:
    """The original headers, without an earlier attempt's retry headers, plus this attempt's."""
    kept = [(k, v) for k, v in original if not k.startswith(RETRY_HEADER_PREFIX)]
    return kept + [
        (HEADER_RETRY_STAGE, stage.encode()),
        (HEADER_RETRY_ORIGIN_TOPIC, origin_topic.encode()),
        (HEADER_RETRY_ATTEMPT, str(attempt).encode()),
        (HEADER_RETRY_FIRST_FAILED_AT, first_failed_at.encode()),
        (HEADER_RETRY_LAST_ERROR_CLASS, error_class.encode()),
        (HEADER_RETRY_LAST_ERROR, error[:_ERROR_TEXT_MAX_CHARS].encode()),
        (HEADER_RETRY_DUE_AT_MS, str(due_at_ms).encode()),
    ]
