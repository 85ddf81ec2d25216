"""A stand-in for the intake's Kafka producer: the tests script what the broker answers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from confluent_kafka import KafkaError


@dataclass
class FakeMessage:
    _partition: int
    _offset: int | None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int | None:
        return self._offset


@dataclass
class Produced:
    topic: str
    key: bytes
    value: bytes
    headers: list


@dataclass
class FakeProducer:
    """Acknowledges each produced event at the next poll, the n-th at offset 10 n, unless a
    scripted answer is queued in `answers` ((error, offset) per delivery), or `silent`
    holds every delivery report back (a broker that never answers)."""

    partition: int = 3
    silent: bool = False
    # How many produce calls still fail with a full local queue.
    full_queue_rejections: int = 0
    answers: deque = field(default_factory=deque)
    produced: list[Produced] = field(default_factory=list)
    polls: int = 0
    flushed: bool = False
    _awaiting_report: list = field(default_factory=list)

    def produce(self, topic, key, value, headers, on_delivery) -> None:
        if self.full_queue_rejections:
            self.full_queue_rejections -= 1
            raise BufferError("Local: Queue full")
        self.produced.append(Produced(topic, key, value, headers))
        self._awaiting_report.append((on_delivery, len(self.produced) * 10))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        if self.silent:
            return 0
        reports, self._awaiting_report = self._awaiting_report, []
        for on_delivery, offset in reports:
            err, offset = self.answers.popleft() if self.answers else (None, offset)
            on_delivery(err, FakeMessage(self.partition, offset))
        return len(reports)

    def flush(self, timeout: float) -> int:
        self.flushed = True
        self.poll(0)
        return len(self._awaiting_report)

    def list_topics(self, timeout: float):
        return None


def refused(reason: str = "Broker: Not enough in-sync replicas") -> tuple[KafkaError, None]:
    return KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, reason), None
