"""Producing records and waiting for the broker's acknowledgements.

The runtime's checkpoints and `payorch dlq replay` both produce through these: a record
is acknowledged only with an offset, and a wait for acknowledgements has a deadline.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, Message, Producer

# What the runtime produces: (topic, key, value, headers).
Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge every output of a batch in time."""


class AckTracker:
    """Counts delivery reports of one batch so the runtime can wait for all of them."""

    def __init__(self) -> None:
        self.pending = 0
        self.errors: list[str] = []

    def callback(self, err: KafkaError | None, msg: Message) -> None:
        self.pending -= 1
        if err is not None:
            self.errors.append(str(err))
        elif msg.offset() is None or msg.offset() < 0:
            # A success without an offset is not trusted (see the intake publisher): the
            # batch fails, its offsets are not stored, and the redelivery re-emits it.
            self.errors.append(f"acknowledged without an offset on {msg.topic()}[{msg.partition()}]")


def produce_record(producer: Producer, topic: str, key: bytes, value: bytes, headers: list, tracker: AckTracker) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=tracker.callback)
            tracker.pending += 1
            return
        except BufferError:
            # The local queue is full: serve delivery reports to make room, then retry.
            producer.poll(0.05)


def await_acks(producer: Producer, tracker: AckTracker, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while tracker.pending > 0:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProduceFailed(f"{tracker.pending} outputs not acknowledged within {timeout_s}s")
        producer.flush(min(remaining, 1.0))
    if tracker.errors:
        raise ProduceFailed(f"broker refused outputs: {tracker.errors[:3]}")
