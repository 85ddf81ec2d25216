"""Retry partitions paused at a head event that is not due yet.

A retry topic is read in order, so an event that is not due holds its partition: the
consumer seeks back to it and pauses the partition until it is due, and nothing past it
is committed. The main partitions, and every other retry partition, keep moving.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, Message, TopicPartition


class RetryPauses:
    """The retry consumer's paused partitions, each with the time it is due again."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        # (topic, partition) -> monotonic time at which the partition is resumed.
        self._paused: dict[tuple[str, int], float] = {}

    def hold_until_due(self, message: Message, due_at_ms: int) -> None:
        """Park a retry partition at its head event until that event is due."""
        partition = TopicPartition(message.topic(), message.partition(), message.offset())
        self.consumer.seek(partition)
        self.consumer.pause([TopicPartition(message.topic(), message.partition())])
        wait_s = max(0.0, due_at_ms / 1000 - time.time())
        self._paused[(message.topic(), message.partition())] = time.monotonic() + wait_s

    def resume_due(self) -> None:
        if not self._paused:
            return
        now = time.monotonic()
        due = [key for key, resume_at in self._paused.items() if resume_at <= now]
        if due:
            self.consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._paused[key]

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions (re)assigned or revoked: an assigned partition starts unpaused, and a
        retry partition whose head is not due yet is paused again when that head is read."""
        for partition in partitions:
            self._paused.pop((partition.topic, partition.partition), None)
