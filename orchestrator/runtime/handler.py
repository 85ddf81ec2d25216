"""What a stage gives the runtime: the `StageHandler` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from orchestrator.effects import Pending
from orchestrator.events import Event
from orchestrator.retries import RetryLater


class StageHandler(Protocol):
    """What a stage gives the runtime: a name, its inputs, and its decisions."""

    name: str
    input_topics: tuple[str, ...]
    # None means every event type on the input topics.
    input_event_types: frozenset[str] | None

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event | RetryLater | Pending]: ...

    def tick(self, now: datetime) -> list[Event]: ...

    def close(self) -> None: ...
