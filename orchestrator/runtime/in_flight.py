"""Batches waiting for their effects, in the order they were consumed.

A stage may answer part of a batch with a `Pending` effect (orchestrator/effects.py:
execution's clearing calls) instead of waiting for a remote system. The batch then waits
here with the records it already produced and its offsets, while the loop goes on
consuming and deciding. Batches leave the queue strictly in consumption order, also
those without effects that came after one, so offsets are committed in order and always
with every output of their batch: a commit never covers a batch whose outcome is still
unknown. A batch leaves once its effects are done and finished (the runner decides with
their results, which may start further effects), or when it is given up (a rewind, a
lost assignment): its events are then read again from the committed offsets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from confluent_kafka import Message, TopicPartition

from orchestrator.effects import Pending
from orchestrator.events import Event
from orchestrator.runtime.producing import Record

if TYPE_CHECKING:
    from orchestrator.runtime.checkpoint import Checkpoint
    from orchestrator.runtime.handler import StageHandler

# Batches waiting for their effects at most; past this the loop waits for the oldest
# before it consumes more.
IN_FLIGHT_BATCHES_MAX = 64
# How long a poll waits while batches are in flight: how soon an answered effect is seen.
IN_FLIGHT_POLL_S = 0.002


class StartedEffect(NamedTuple):
    """An effect a stage started for some of a batch's events."""

    handler: StageHandler
    effect: Pending
    # The events the stage decided with the effect, and the message each came from.
    events: list[Event]
    sources: list


@dataclass
class InFlightBatch:
    """A consumed batch waiting for its effects: what it produces and commits once done."""

    records: list[Record]
    offsets: list[TopicPartition]
    # Per partition, the first offset of the batch: where to read again if it is given up.
    first_offsets: dict[tuple[str, int], int]
    pending: list[StartedEffect]

    def done(self) -> bool:
        return all(started.effect.future.done() for started in self.pending)


# Finishes a batch's done effects into a checkpoint's state unit: the records their
# outcomes produce, and the effects those outcomes started in turn.
Finish = Callable[[list[StartedEffect], "Checkpoint"], tuple[list[Record], list[StartedEffect]]]


class InFlightQueue:
    """The batches waiting for their effects, oldest first, at most `IN_FLIGHT_BATCHES_MAX`
    (the loop waits for the oldest instead of consuming while it is full)."""

    def __init__(self) -> None:
        self._batches: deque[InFlightBatch] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def full(self) -> bool:
        return len(self._batches) >= IN_FLIGHT_BATCHES_MAX

    def append(self, batch: InFlightBatch) -> None:
        self._batches.append(batch)

    def complete_into(self, checkpoint: Checkpoint, finish: Finish, wait_s: float = 0.0) -> None:
        """Move the batches whose effects are done into `checkpoint`, oldest first,
        finishing their effects with `finish`. `wait_s` waits that long for the oldest
        batch first."""
        batches = self._batches
        if wait_s > 0 and batches and not batches[0].done():
            wait_for_futures([started.effect.future for started in batches[0].pending], timeout=wait_s)
        while batches and batches[0].done():
            batch = batches[0]
            if batch.pending:
                records, batch.pending = finish(batch.pending, checkpoint)
                batch.records += records
                if batch.pending:
                    continue  # a finish started another effect: the batch waits again
            batches.popleft()
            checkpoint.add_records(batch.records)
            checkpoint.add_offsets(batch.offsets)

    def give_up(self) -> tuple[int, dict[tuple[str, int], int]]:
        """Abandon every waiting batch's effects and empty the queue: how many batches
        there were, and per partition the first offset of them, where to read again."""
        batches, self._batches = list(self._batches), deque()
        first: dict[tuple[str, int], int] = {}
        for batch in batches:
            for started in batch.pending:
                started.effect.abandon()
            for key, offset in batch.first_offsets.items():
                first[key] = min(first.get(key, offset), offset)
        return len(batches), first


def first_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
    """Per partition, the first offset of a consumed batch."""
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is None:
            key = (message.topic(), message.partition())
            first[key] = min(first.get(key, message.offset()), message.offset())
    return first
