"""What one commit covers, and the two ways of committing it: one interface for both
delivery modes, so the loop is written once.

A checkpoint gathers the records produced, the input offsets consumed and the hosted
stages' store writes of one commit interval (possibly many batches), and `commit` makes
them durable together: state first (`storage.StateUnit`), then records and offsets.
- `TransactionalCheckpoint` (exactly once): records and offsets in one Kafka transaction.
- `AtLeastOnceCheckpoint`: records produced at once, offsets stored only after the broker
  acknowledged every record; also what a sink (tracking) uses in both modes.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial

from confluent_kafka import KafkaException, Message, TopicPartition

from orchestrator import retries
from orchestrator.runtime.clients import StageClients
from orchestrator.runtime.producing import AckTracker, Record, await_acks, produce_record
from orchestrator.runtime.watchdog import HangWatchdog, call_retrying
from orchestrator.settings import RuntimeSettings
from orchestrator.storage import StateUnit

log = logging.getLogger("payorch.runtime")

# A commit that fails with a retriable error (a coordinator moving, a timeout) is retried
# this many times before the process gives up and restarts.
TXN_COMMIT_ATTEMPTS_MAX = 3
# send_offsets_to_transaction's own timeout. It is one round trip to the group
# coordinator (milliseconds, seconds on a starved machine), and it is the call that hangs
# past its timeout after a broker restart (see HangWatchdog): with the 30 s produce
# timeout, a stage sat 40 s after the broker was back before the watchdog replaced it,
# and in the broker-restart drill most payments then missed their rails' time limits.
TXN_OFFSETS_TIMEOUT_S = 10.0


class Checkpoint(ABC):
    """What one commit covers: the records produced since the last commit and the input
    offsets they consumed. Both delivery modes share this shape, so the loop is written
    once; they differ only in how `commit` makes records and offsets durable together.
    """

    def __init__(self) -> None:
        self.record_count = 0
        # (topic, partition) -> next offset, per consumer role ("main" or "retry").
        self.offsets: dict[str, dict[tuple[str, int], int]] = {"main": {}, "retry": {}}
        self.opened_at: float | None = None
        # The hosted stages' store writes of this checkpoint, made durable in `commit`
        # before the offsets (storage.StateUnit: one fsync per store per checkpoint).
        self.state = StateUnit()

    @property
    def empty(self) -> bool:
        return self.record_count == 0 and not any(self.offsets.values()) and not self.state.pending

    def open(self) -> None:
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    def age_s(self) -> float:
        return 0.0 if self.opened_at is None else time.monotonic() - self.opened_at

    def add_offsets(self, offsets: list[TopicPartition]) -> None:
        self.open()
        for partition in offsets:
            role = "retry" if retries.is_retry_topic(partition.topic) else "main"
            key = (partition.topic, partition.partition)
            self.offsets[role][key] = max(self.offsets[role].get(key, 0), partition.offset)

    def offsets_of(self, role: str) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.offsets[role].items()]

    @abstractmethod
    def add_records(self, records: Sequence[Record]) -> None:
        """Produce `records` (topic, key, value, headers) as part of this checkpoint."""

    @abstractmethod
    def commit(self) -> bool:
        """Make this checkpoint's records and offsets durable; False if it was aborted."""


class TransactionalCheckpoint(Checkpoint):
    """Exactly once: records and offsets in one Kafka transaction, begun on first use.

    A transaction may span several consumed batches (up to the commit interval): one
    commit then pays for many events, which is what keeps the broker's transaction
    overhead per payment small under load. read_committed consumers downstream see the
    records only once the transaction commits, so the interval bounds the added latency.
    """

    def __init__(self, clients: StageClients, settings: RuntimeSettings, watchdog: HangWatchdog, process: str,
                 on_abort: Callable[[], None]) -> None:
        super().__init__()
        self.clients = clients
        self.producer = clients.producer
        self.settings = settings
        self.watchdog = watchdog
        self.process = process
        # Called after an abort: the runner seeks its consumers back to their committed
        # offsets, so the batches are read again.
        self.on_abort = on_abort
        self.tracker = AckTracker()
        self._begun = False

    def _begin(self) -> None:
        if not self._begun:
            self.producer.begin_transaction()
            self._begun = True
        self.open()

    def add_records(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._begin()
        for topic, key, value, headers in records:
            produce_record(self.producer, topic, key, value, headers, self.tracker)
        self.record_count += len(records)

    def commit(self) -> bool:
        """Commit; on an abortable error abort, rewind the consumers and return False.

        The consumer is rewound to the last committed offsets and the batches are handled
        again (stages are idempotent, and read_committed consumers never saw the aborted
        outputs). Retriable commit errors are retried; fatal ones (a fenced zombie
        instance, say) propagate and end the process, as librdkafka's transaction docs
        require.
        """
        if self.empty:
            return True
        timeout_s = self.settings.produce_ack_timeout_s
        self.state.commit()
        if self.record_count == 0 and not any(self.offsets.values()):
            return True
        try:
            self._begin()
            for role, consumer in self.clients.by_role().items():
                offsets = self.offsets_of(role)
                if offsets:
                    # A retriable error (the coordinator's connection lost, typically just
                    # after a broker came back) is retried in place rather than ending the
                    # process: the transaction is still open and the offsets still apply.
                    metadata = consumer.consumer_group_metadata()
                    call_retrying(self.watchdog, "send_offsets_to_transaction",
                                  partial(self.producer.send_offsets_to_transaction, offsets, metadata),
                                  min(timeout_s, TXN_OFFSETS_TIMEOUT_S), TXN_COMMIT_ATTEMPTS_MAX, self.process)
            hold_s = self.settings.drill_hold_transaction_s
            if hold_s and self.record_count:
                log.warning("drill: holding a transaction of %d records open for %.1f s", self.record_count, hold_s,
                            extra={"stage": self.process})
                time.sleep(hold_s)
            call_retrying(self.watchdog, "commit_transaction", self.producer.commit_transaction, timeout_s,
                          TXN_COMMIT_ATTEMPTS_MAX, self.process)
            return True
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise
            log.warning("aborting transaction and re-reading the batch: %s", error,
                        extra={"stage": self.process})
            with self.watchdog.guard("abort_transaction", timeout_s):
                self.producer.abort_transaction(timeout_s)
            self.on_abort()
            return False


class AtLeastOnceCheckpoint(Checkpoint):
    """At least once: records are produced at once; `commit` waits until the broker
    acknowledged every one of them and only then stores the consumed offsets, which
    librdkafka commits in the background. A crash in between redelivers the batches,
    which idempotent stages absorb. Sink stages (no output topic: tracking) use this in
    both modes: their effect is their own store, written before the offsets move, and a
    transaction would only commit offsets at a higher price."""

    def __init__(self, clients: StageClients, settings: RuntimeSettings, process: str) -> None:
        super().__init__()
        self.clients = clients
        self.settings = settings
        self.process = process
        self.tracker = AckTracker()

    def add_records(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self.open()
        for topic, key, value, headers in records:
            produce_record(self.clients.producer, topic, key, value, headers, self.tracker)
        self.record_count += len(records)

    def commit(self) -> bool:
        self.state.commit()
        if self.record_count:
            await_acks(self.clients.producer, self.tracker, self.settings.produce_ack_timeout_s)
        for role, consumer in self.clients.by_role().items():
            offsets = self.offsets_of(role)
            if not offsets:
                continue
            try:
                consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:
                # Typically a rebalance took the partitions away: the new owner re-reads
                # the batch and, stages being idempotent, re-emits events with the same ids.
                log.warning("storing offsets failed: %s", exc, extra={"stage": self.process})
        return True


def next_offsets(messages: list[Message], held: dict[tuple[str, int], int] | None = None) -> list[TopicPartition]:
    """The offsets to commit for a batch: past every message handled, never past a held
    retry head (`held`: (topic, partition) -> the first offset left unread)."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is None:
            key = (message.topic(), message.partition())
            if held and key in held and message.offset() >= held[key]:
                continue
            offsets[key] = max(offsets.get(key, 0), message.offset() + 1)
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
