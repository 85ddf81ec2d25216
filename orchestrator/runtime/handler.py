"""What a stage gives the runtime: the `StageHandler` protocol.

`orchestrator.stages.base.Stage` gives every member a default, so a stage writes only
what it decides, and the runtime calls every member without asking whether it is there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import Message

from orchestrator.effects import Pending
from orchestrator.events import Event
from orchestrator.retries import RetryLater


class StageHandler(Protocol):
    """What a stage gives the runtime: a name, its inputs, and its decisions."""

    name: str
    input_topics: tuple[str, ...]
    # None means every event type on the input topics.
    input_event_types: frozenset[str] | None
    # None: the runtime decodes the stage's messages as payment events, once for all the
    # hosted stages that read them, and hands the stage the payment events that other
    # hosted stages emit (hosting.py). A stage that reads another schema family, or
    # leaves bodies as bytes (tracking), decodes its own messages with this and is never
    # handed an event: it reads them from Kafka.
    decode_message: Callable[[Message], Any] | None

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event | RetryLater | Pending]: ...

    def tick(self, now: datetime) -> list[Event]: ...

    def published(self, outputs: list[Event]) -> None:
        """`outputs` of `tick` are committed to Kafka: the stage may stop re-emitting them."""

    def close(self) -> None: ...
