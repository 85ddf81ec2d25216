"""The Kafka clients of one stage process, and what their error callback makes of errors.

A process has one consumer for its input topics, one for its retry topics (own group,
long-polling: nearly always empty), and one producer. `connect` builds them from the
settings; a test hands `StageRunner` its own `StageClients` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer

from orchestrator import retries
from orchestrator.kafka_clients import make_consumer, make_producer
from orchestrator.settings import Settings

log = logging.getLogger("payorch.runtime")


class FatalClientError(RuntimeError):
    """A Kafka client reported a fatal error: only a new process (new clients) recovers."""


class ClientErrors:
    """The `error_cb` of every client of a process.

    A fatal client error (a static member fenced after the broker came back, a fenced
    transactional producer) is reported only through this callback; a client in that
    state never recovers, so the loop ends the process (`raise_if_fatal`) and its
    supervisor restarts it with fresh clients.
    """

    def __init__(self, process: str) -> None:
        self.process = process
        self.fatal: str | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._FATAL:
            self.fatal = str(error)
        elif error.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("Kafka client error: %s", error, extra={"stage": self.process})

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise FatalClientError(f"fatal Kafka client error, restarting the process: {self.fatal}")


@dataclass
class StageClients:
    """The Kafka clients of one stage process."""

    consumer: Consumer
    producer: Producer
    # None when the process reads no retry topics (no retry levels configured).
    retry_consumer: Consumer | None = None

    def by_role(self) -> dict[str, Consumer]:
        """The consumers by the role their offsets have in a checkpoint ("main", "retry")."""
        consumers = {"main": self.consumer}
        if self.retry_consumer is not None:
            consumers["retry"] = self.retry_consumer
        return consumers

    def consumer_of(self, topic: str) -> Consumer:
        """The consumer that reads `topic`."""
        return (self.retry_consumer or self.consumer) if retries.is_retry_topic(topic) else self.consumer


def connect(settings: Settings, process: str, instance_id: str, *, transactional: bool, sink: bool,
            reads_retries: bool, errors: ClientErrors) -> StageClients:
    """The clients of instance `instance_id` of process `process`, built from `settings`."""
    client_id = f"payorch-{process}-{instance_id}"
    group_id = f"{settings.consumer_group_prefix}.{process}"
    consumer = make_consumer(settings, group_id, client_id, instance_id=instance_id, transactional=transactional,
                             role="sink" if sink else "main", overrides={"error_cb": errors})
    # Retry topics are nearly always empty. Their own consumer (own group) long-polls
    # them, so the main consumer's fetches carry only the input partitions: librdkafka
    # has no incremental fetch sessions, and every fetch lists every partition.
    retry_consumer = None
    if reads_retries:
        retry_consumer = make_consumer(
            settings, f"{group_id}.retry", f"{client_id}-retry", instance_id=instance_id,
            transactional=transactional, role="retry", overrides={"error_cb": errors})
    # One transactional id per process instance: a restarted instance fences its own
    # zombie, and consumer-group metadata fences one that lost its partitions.
    producer = make_producer(settings, client_id,
                             transactional_id=f"{group_id}.{instance_id}" if transactional else None,
                             overrides={"error_cb": errors})
    return StageClients(consumer, producer, retry_consumer)
