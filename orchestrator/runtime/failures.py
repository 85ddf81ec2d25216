"""Where an event goes that a stage could not decide now: a retry topic or the dead-letter
topic, with its original key, bytes and headers and headers that say why.

- A transient fault (an exception `retries.is_transient` knows) or a stage's `RetryLater`
  goes to `<origin topic>.retry.<level>`, due after the level's backoff (with jitter) or
  at the time the stage named. Transient faults are bounded by the levels: the attempt
  after the last one is dead-lettered as `RetriesExhausted`. Deferrals are bounded by
  the stage itself (execution's rail time limit).
- A poison message (undecodable, or a stage raised something that is not transient: a
  bug or a failed invariant) goes to `<origin topic>.dlq` at once, where `payorch dlq`
  lists and replays it.
An event that fails in a retry topic belongs to the topic it first came from. Neither
kind of record carries `handled_by`: a retried event goes to its one stage by its retry
header, and a replayed dead letter to every stage that reads its topic, as the original
did (they drop what they already decided).
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from confluent_kafka import Message

from orchestrator import retries
from orchestrator.events import Event
from orchestrator.runtime.producing import Record
from orchestrator.settings import RetrySettings
from orchestrator.topics import DLQ_SUFFIX
from orchestrator.wire import (HEADER_CORRELATION_ID, HEADER_DLQ_ATTEMPTS, HEADER_DLQ_ERROR_CLASS,
                               HEADER_DLQ_ERROR_MESSAGE, HEADER_DLQ_FAILED_AT, HEADER_DLQ_ORIGIN_OFFSET,
                               HEADER_DLQ_ORIGIN_PARTITION, HEADER_DLQ_ORIGIN_TOPIC, HEADER_DLQ_STAGE,
                               HEADER_HANDLED_BY, HEADER_RETRY_ATTEMPT, HEADER_RETRY_FIRST_FAILED_AT,
                               HEADER_RETRY_ORIGIN_TOPIC, HEADER_TENANT_ID, header)

if TYPE_CHECKING:
    from orchestrator.runtime.handler import StageHandler

log = logging.getLogger("payorch.runtime")

# Error messages in DLQ headers are cut so a huge exception text cannot bloat a record.
DLQ_ERROR_MESSAGE_MAX_CHARS = 2_000


class RetriesExhausted(RuntimeError):
    """A transient fault that outlasted every retry level: the event is dead-lettered."""


class Poison(NamedTuple):
    """A message to dead-letter: why, and the stage that could not handle it."""

    message: Message
    error: Exception
    stage: str


class RetryDue(NamedTuple):
    """A message to retry later, for the one stage that will retry it."""

    message: Message
    error_class: str
    detail: str
    # The earliest useful retry (a breaker's half-open time); None means the level's backoff.
    not_before: datetime | None
    stage: str


class Failures:
    """The poison messages and retries of one batch, filled while its stages decide."""

    __slots__ = ("poison", "retry_due")

    def __init__(self) -> None:
        self.poison: list[Poison] = []
        self.retry_due: list[RetryDue] = []

    def failed(self, handler: StageHandler, events: list[Event], sources: list, exc: Exception) -> None:
        """Events a stage raised on: retried after a transient fault, dead-lettered otherwise."""
        for event, message in zip(events, sources, strict=True):
            context = {**event.log_context(), "stage": handler.name, "error_class": type(exc).__name__}
            if retries.is_transient(exc):
                log.warning("stage %s will retry event after a transient fault: %r", handler.name, exc,
                            extra=context)
                self.retry_due.append(RetryDue(message, type(exc).__name__, str(exc), None, handler.name))
            else:  # a failed invariant or a bug: dead-letter, loudly
                log.error("stage %s cannot handle event: %r", handler.name, exc, extra=context)
                self.poison.append(Poison(message, exc, handler.name))

    def records(self, settings: RetrySettings, rng: random.Random) -> tuple[list[Record], list[Record]]:
        """(dead-letter records, retry records); transient faults past the last retry level
        are dead-lettered (stage deferrals are bounded by the stage)."""
        retry = retry_records(self.retry_due, self.poison, settings, rng)
        return dead_letter_records(self.poison), retry


def _header_of(message: Message, name: str) -> str | None:
    return header(message.headers() or (), name)


def _without_handled_by(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    return [(key, value) for key, value in headers or () if key != HEADER_HANDLED_BY]


def retry_records(retry_due: list[RetryDue], poison: list[Poison], settings: RetrySettings,
                  rng: random.Random) -> list[Record]:
    """The record of each event to retry later; transient faults past the last level join
    `poison` instead (stage deferrals are bounded by the stage)."""
    records = []
    now = datetime.now(UTC)
    for message, error_class, detail, not_before, stage in retry_due:
        attempt = int(_header_of(message, HEADER_RETRY_ATTEMPT) or 0) + 1
        if not_before is None and attempt > settings.levels:
            poison.append(Poison(message, RetriesExhausted(f"{error_class} after {attempt - 1} retries: {detail}"),
                                 stage))
            continue
        delay_s = retries.backoff_s(attempt, settings, rng)
        if not_before is not None:
            # Waiting for a known time (a breaker's half-open): a little jitter so the
            # waiting payments do not all arrive in the same instant.
            delay_s = max(0.0, (not_before - now).total_seconds()) + rng.uniform(0, settings.jitter)
        origin = _header_of(message, HEADER_RETRY_ORIGIN_TOPIC) or message.topic()
        headers = retries.retry_headers(
            _without_handled_by(message.headers()), stage=stage, origin_topic=origin, attempt=attempt,
            first_failed_at=_header_of(message, HEADER_RETRY_FIRST_FAILED_AT) or now.isoformat(),
            error_class=error_class, error=detail, due_at_ms=int((now.timestamp() + delay_s) * 1000))
        records.append((retries.retry_topic(origin, retries.level_of(attempt, settings)), message.key(),
                        message.value(), headers))
        log.info("retry %d of event in %.1f s: %s", attempt, delay_s, detail, extra={
            "stage": stage, "error_class": error_class, "attempt": attempt,
            "correlation_id": _header_of(message, HEADER_CORRELATION_ID),
            "tenant_id": _header_of(message, HEADER_TENANT_ID)})
    return records


def dead_letter_records(poison: list[Poison]) -> list[Record]:
    """The record of each poison message: original key and bytes, headers plus why."""
    failed_at = datetime.now(UTC).isoformat()
    records = []
    for message, exc, stage in poison:
        # Without `handled_by`: a replay goes to every stage that reads the topic, as
        # the original did (they drop what they already decided).
        headers = _without_handled_by(message.headers())
        # An event that failed in a retry topic belongs to the topic it first came from.
        origin = _header_of(message, HEADER_RETRY_ORIGIN_TOPIC) or message.topic()
        attempts = int(_header_of(message, HEADER_RETRY_ATTEMPT) or 0) + 1
        headers += [
            (HEADER_DLQ_ORIGIN_TOPIC, origin.encode()),
            (HEADER_DLQ_ORIGIN_PARTITION, str(message.partition()).encode()),
            (HEADER_DLQ_ORIGIN_OFFSET, str(message.offset()).encode()),
            (HEADER_DLQ_STAGE, stage.encode()),
            (HEADER_DLQ_ERROR_CLASS, type(exc).__name__.encode()),
            (HEADER_DLQ_ERROR_MESSAGE, str(exc)[:DLQ_ERROR_MESSAGE_MAX_CHARS].encode()),
            (HEADER_DLQ_ATTEMPTS, str(attempts).encode()),
            (HEADER_DLQ_FAILED_AT, failed_at.encode()),
        ]
        log.error("dead-lettering message: %s", exc, extra={
            "stage": stage, "topic": message.topic(), "partition": message.partition(),
            "offset": message.offset(), "error_class": type(exc).__name__,
            "correlation_id": _header_of(message, HEADER_CORRELATION_ID),
            "tenant_id": _header_of(message, HEADER_TENANT_ID),
        })
        # Original key and bytes go untouched so a replay is the same message.
        records.append((origin + DLQ_SUFFIX, message.key(), message.value(), headers))
    return records
