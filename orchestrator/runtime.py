"""The stage runtime: everything between Kafka and a stage's decision function.

One loop per stage process, for the one or more stages it hosts: consume a batch, hand
each message to the hosted stages that read its topic and event type (by header, before
decoding), decode it once, hand each stage its part of the batch, and produce their
outputs with the idempotent producer into the open checkpoint. A checkpoint (one
Kafka transaction, or in at-least-once mode one wait for every acknowledgement before
the offsets are stored) covers the batches of one commit interval. A crash anywhere
in between redelivers those batches; stages are idempotent and derive output event ids
from their causes, so the redelivery re-emits events with the same ids, which consumers
drop as duplicates.

Hand-over: a hosted stage's output events that another stage of the same process reads
are handed to that stage in the same batch (decoded from the bytes that are produced,
so it sees exactly what a consumer would), and its outputs in turn, until nothing is
left to hand on. Every event is still written to its topic, in the same checkpoint,
with a `payorch.handled_by` header naming the stages that took it here; those stages
skip it when the process reads the topic back, everyone else (tracking, a process of
another plan, a replayed dead letter for a stage not named) reads it as before. A
payment thus pays one commit and one fetch per process on its path, not one per stage.
A stage that fails on or defers an event handed to it takes the retry and dead-letter
paths below as for a consumed message, in the same checkpoint.

In-flight batches: a stage may answer part of a batch with a `Pending` effect
(orchestrator/effects.py: execution's clearing calls) instead of waiting for a remote
system. The batch then waits in a queue, with its outputs and offsets, while the loop
goes on consuming and deciding; once its effects are done their outcomes are decided
(and handed over) and the batch joins the open checkpoint. Batches join checkpoints in
the order they were consumed, so offsets are committed in order and together with every
output of their batch. A rewind or a lost assignment gives the queued batches up: their
events come again from the committed offsets.

Failures take one of four paths:
- a business outcome (rejection, hold) is an ordinary output event of the stage;
- a transient fault (a `RetryLater` answer or an exception `is_transient` recognises)
  sends the event to `<topic>.retry.<level>` with backoff and jitter, so its partition
  moves on; the runner pauses a retry partition until its head event is due (see
  orchestrator/retries.py); transient faults that outlast the levels are dead-lettered;
- a poison message (undecodable bytes, unknown schema, or a stage that raised on it)
  goes to `<topic>.dlq` with its original bytes and headers plus headers that say why;
- a broker that cannot take our outputs stops the process (non-zero exit) without
  committing, so the supervisor restarts it and nothing is lost.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import wait as wait_for_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from orchestrator.effects import Pending
from orchestrator.events import Event, EventCodec, UndecodableEvent
from orchestrator.kafka_clients import make_consumer, make_producer
from orchestrator import retries
from orchestrator.retries import RetryLater
from orchestrator.settings import Settings
from orchestrator.storage import StateUnit
from orchestrator.topics import DLQ_SUFFIX, OUTPUT_TOPIC_OF_STAGE, TopicNamer, process_name
from orchestrator.wire import (HEADER_CORRELATION_ID, HEADER_DLQ_ATTEMPTS, HEADER_DLQ_ERROR_CLASS,
                               HEADER_DLQ_ERROR_MESSAGE, HEADER_DLQ_FAILED_AT, HEADER_DLQ_ORIGIN_OFFSET,
                               HEADER_DLQ_ORIGIN_PARTITION, HEADER_DLQ_ORIGIN_TOPIC, HEADER_DLQ_STAGE,
                               HEADER_EVENT_TYPE, HEADER_HANDLED_BY, HEADER_RETRY_ATTEMPT, HEADER_RETRY_DUE_AT_MS,
                               HEADER_RETRY_FIRST_FAILED_AT, HEADER_RETRY_ORIGIN_TOPIC, HEADER_RETRY_STAGE,
                               HEADER_TENANT_ID, event_headers, header)

log = logging.getLogger("payorch.runtime")

# A commit that fails with a retriable error (a coordinator moving, a timeout) is retried
# this many times before the process gives up and restarts.
TXN_COMMIT_ATTEMPTS_MAX = 3
# Each stage logs one line of throughput figures this often while it has work.
STATS_REPORT_INTERVAL_S = 10.0
# Error messages in DLQ headers are cut so a huge exception text cannot bloat a record.
_DLQ_ERROR_MESSAGE_MAX_CHARS = 2_000
# Rounds of hand-over within one batch. The longest chain is six rounds, with every stage
# but tracking in one process (initiation, the screenings, routing, ledger and
# execution, execution again on the reservation, ledger and settlement); the bound only
# stops a plan with a loop from spinning: what is left is read back from Kafka instead.
HAND_OVER_ROUNDS_MAX = 8
# Batches waiting for their effects at most; past this the loop waits for the oldest
# before it consumes more.
IN_FLIGHT_BATCHES_MAX = 64
# How long a poll waits while batches are in flight: how soon an answered effect is seen.
IN_FLIGHT_POLL_S = 0.002


class StageHandler(Protocol):
    """What a stage gives the runtime: a name, its inputs, and its decisions."""

    name: str
    input_topics: tuple[str, ...]
    # None means every event type on the input topics.
    input_event_types: frozenset[str] | None

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event | RetryLater]: ...

    def tick(self, now: datetime) -> list[Event]: ...

    def close(self) -> None: ...


@dataclass
class RuntimeStats:
    consumed: int = 0
    skipped: int = 0
    handled: int = 0
    produced: int = 0
    dead_lettered: int = 0
    retried: int = 0
    aborted_transactions: int = 0
    batches: int = 0
    commits: int = 0
    reported_commits: int = 0
    last_batch_ms: float = 0.0
    batch_ms_sum: float = 0.0
    batch_ms_max: float = 0.0
    reported_batches: int = 0
    reported_handled: int = 0
    started_at: float = field(default_factory=time.monotonic)


# A transactional call still blocked this long after its own timeout is hung, not slow.
TXN_CALL_HANG_GRACE_S = 10.0
# send_offsets_to_transaction's own timeout. It is one round trip to the group
# coordinator (milliseconds, seconds on a starved machine), and it is the call that hangs
# past its timeout after a broker restart (see HangWatchdog): with the 30 s produce
# timeout, a stage sat 40 s after the broker was back before the watchdog replaced it,
# and in the broker-restart drill most payments then missed their rails' time limits.
TXN_OFFSETS_TIMEOUT_S = 10.0
# A consume loop that has not come round for this long is hung; Kafka's own
# max.poll.interval.ms would take its partitions away at the same point.
LOOP_STALL_MAX_S = 120.0
# A restarted instance's init_transactions meets CONCURRENT_TRANSACTIONS while the
# coordinator aborts its predecessor's open transaction; it is retried this many times.
INIT_TRANSACTIONS_ATTEMPTS_MAX = 5
# Exit status of a process the hang watchdog ended (EX_SOFTWARE): the supervisor restarts it.
HUNG_CLIENT_EXIT_STATUS = 70


class HangWatchdog:
    """Ends the process when a blocking Kafka call outlives its deadline.

    librdkafka's `send_offsets_to_transaction` can block forever, past its timeout, when
    the group coordinator's broker went away and came back (librdkafka issues #5456 and
    #5511, seen here when the broker restarts). Nothing in-process can unblock it; a new
    process with new clients recovers, and transactions make the exit safe: the open
    transaction is aborted when the restarted instance fences it, and the batch is read
    again.
    """

    def __init__(self, stage: str, max_loop_stall_s: float = LOOP_STALL_MAX_S) -> None:
        self.stage = stage
        self.max_loop_stall_s = max_loop_stall_s
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._call = ""
        # The consume loop beats once per iteration; None until it starts.
        self._last_beat: float | None = None
        threading.Thread(target=self._watch, name="kafka-hang-watchdog", daemon=True).start()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    @contextmanager
    def guard(self, call: str, timeout_s: float) -> Iterator[None]:
        with self._lock:
            self._deadline = time.monotonic() + timeout_s + TXN_CALL_HANG_GRACE_S
            self._call = call
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                hung = self._deadline is not None and now > self._deadline
                call = self._call
            if not hung and self._last_beat is not None and now - self._last_beat > self.max_loop_stall_s:
                # Blocked somewhere no guard covers (a rebalance callback's broker call, say).
                hung, call = True, f"the consume loop (no iteration for {self.max_loop_stall_s:.0f} s)"
            if hung:
                log.critical("Kafka call %s is hung past its timeout; exiting so a new process recovers", call,
                             extra={"stage": self.stage})
                logging.shutdown()
                os._exit(HUNG_CLIENT_EXIT_STATUS)


class HandedOver:
    """An event one hosted stage handed to another in this batch, as the message a
    consumer of its topic would read: its retry and dead-letter records are made from it
    like any other. It has no partition or offset yet (the record is produced in the
    same checkpoint), so they read -1."""

    __slots__ = ("_topic", "_key", "_value", "_headers")

    def __init__(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._topic, self._key, self._value, self._headers = topic, key, value, headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return -1

    def offset(self) -> int:
        return -1

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def error(self) -> None:
        return None


@dataclass
class InFlightBatch:
    """A consumed batch waiting for its effects: what it produces and commits once done."""

    records: list[tuple]
    offsets: list[TopicPartition]
    # Per partition, the first offset of the batch: where to read again if it is given up.
    first_offsets: dict[tuple[str, int], int]
    # (stage, effect, the events the stage decided with it, their sources)
    pending: list[tuple["StageHandler", Pending, list[Event], list]]

    def done(self) -> bool:
        return all(effect.future.done() for _, effect, _, _ in self.pending)


class FatalClientError(RuntimeError):
    """A Kafka client reported a fatal error: only a new process (new clients) recovers."""


class RetriesExhausted(RuntimeError):
    """A transient fault that outlasted every retry level: the event is dead-lettered."""


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge every output of a batch in time."""


def header_value(message: Message, name: str) -> str | None:
    return header(message.headers() or (), name)


def _without_handled_by(headers: Sequence[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes | None]]:
    return [(key, value) for key, value in headers or () if key != HEADER_HANDLED_BY]


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


def call_retrying(watchdog: HangWatchdog, name: str, call, timeout_s: float, attempts: int, stage: str) -> None:
    """`call(timeout_s)` under the hang watchdog, again on a retriable Kafka error, at most
    `attempts` times; anything else, or the last failure, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            with watchdog.guard(name, timeout_s):
                call(timeout_s)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == attempts:
                raise
            log.warning("retrying %s (%d/%d): %s", name, attempt, attempts, exc.args[0], extra={"stage": stage})
            # A transport failure is reported at once ("after 0ms"); give the client a
            # moment to reconnect before the next attempt.
            time.sleep(min(1.0, 0.1 * 2 ** attempt))


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
    def add_records(self, records: Sequence[tuple]) -> None:
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

    def __init__(self, runner: "StageRunner") -> None:
        super().__init__()
        self.runner = runner
        self.producer = runner.producer
        self.tracker = AckTracker()
        self._begun = False

    def _begin(self) -> None:
        if not self._begun:
            self.producer.begin_transaction()
            self._begun = True
        self.open()

    def add_records(self, records: Sequence[tuple]) -> None:
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
        runner = self.runner
        timeout_s = runner.settings.runtime.produce_ack_timeout_s
        self.state.commit()
        if self.record_count == 0 and not any(self.offsets.values()):
            return True
        try:
            self._begin()
            for role, consumer in runner.consumers_by_role().items():
                offsets = self.offsets_of(role)
                if offsets:
                    # A retriable error (the coordinator's connection lost, typically just
                    # after a broker came back) is retried in place rather than ending the
                    # process: the transaction is still open and the offsets still apply.
                    metadata = consumer.consumer_group_metadata()
                    call_retrying(runner.watchdog, "send_offsets_to_transaction",
                                  partial(self.producer.send_offsets_to_transaction, offsets, metadata),
                                  min(timeout_s, TXN_OFFSETS_TIMEOUT_S), TXN_COMMIT_ATTEMPTS_MAX, runner.name)
            hold_s = runner.settings.runtime.drill_hold_transaction_s
            if hold_s and self.record_count:
                log.warning("drill: holding a transaction of %d records open for %.1f s", self.record_count, hold_s,
                            extra={"stage": runner.name})
                time.sleep(hold_s)
            call_retrying(runner.watchdog, "commit_transaction", self.producer.commit_transaction, timeout_s,
                          TXN_COMMIT_ATTEMPTS_MAX, runner.name)
            return True
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise
            log.warning("aborting transaction and re-reading the batch: %s", error,
                        extra={"stage": runner.name})
            with runner.watchdog.guard("abort_transaction", timeout_s):
                self.producer.abort_transaction(timeout_s)
            runner.rewind()
            runner.stats.aborted_transactions += 1
            return False


class AtLeastOnceCheckpoint(Checkpoint):
    """At least once: records are produced at once; `commit` waits until the broker
    acknowledged every one of them and only then stores the consumed offsets, which
    librdkafka commits in the background. A crash in between redelivers the batches,
    which idempotent stages absorb. Sink stages (no output topic: tracking) use this in
    both modes: their effect is their own store, written before the offsets move, and a
    transaction would only commit offsets at a higher price."""

    def __init__(self, runner: "StageRunner") -> None:
        super().__init__()
        self.runner = runner
        self.tracker = AckTracker()

    def add_records(self, records: Sequence[tuple]) -> None:
        if not records:
            return
        self.open()
        for topic, key, value, headers in records:
            produce_record(self.runner.producer, topic, key, value, headers, self.tracker)
        self.record_count += len(records)

    def commit(self) -> bool:
        self.state.commit()
        if self.record_count:
            await_acks(self.runner.producer, self.tracker, self.runner.settings.runtime.produce_ack_timeout_s)
        for role, consumer in self.runner.consumers_by_role().items():
            offsets = self.offsets_of(role)
            if not offsets:
                continue
            try:
                consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:
                # Typically a rebalance took the partitions away: the new owner re-reads
                # the batch and, stages being idempotent, re-emits events with the same ids.
                log.warning("storing offsets failed: %s", exc, extra={"stage": self.runner.name})
        return True


class StageRunner:
    """Runs one or more stages in one process, with one consumer, one producer and one
    checkpoint (one Kafka transaction) per commit interval for all of them.

    Each hosted stage still reads only its own input topics and writes only its own
    output topic: hosting changes how many clients and transactions the stages cost,
    not how they talk. A message read by two hosted stages (sanctions' and fraud's
    `initiated`, say) is decoded once and handed to both; each decides on its own.
    """

    def __init__(
        self,
        handlers: Sequence[StageHandler],
        settings: Settings,
        tenants: Sequence[str],
        codec: EventCodec,
        *,
        instance_id: str = "0",
    ) -> None:
        self.handlers = list(handlers)
        self.name = process_name([handler.name for handler in self.handlers])
        if len({handler.name for handler in self.handlers}) != len(self.handlers):
            raise ValueError(f"a stage is named twice in {self.name}")
        self._handler_by_name = {handler.name: handler for handler in self.handlers}
        self.settings = settings
        self.codec = codec
        self.namer = TopicNamer(settings.topic_template)
        self.tenants = list(tenants)
        self.output_topic_of = {handler.name: OUTPUT_TOPIC_OF_STAGE.get(handler.name) for handler in self.handlers}
        has_outputs = any(topic is not None for topic in self.output_topic_of.values())
        self.stats = RuntimeStats()
        self._stop = threading.Event()
        client_id = f"payorch-{self.name}-{instance_id}"
        group_id = f"{settings.consumer_group_prefix}.{self.name}"
        # A process with outputs runs consume-transform-produce in transactions; a sink
        # (tracking) writes only its own store and commits offsets after it (see
        # AtLeastOnceCheckpoint), which gives it the same guarantee for less.
        self.transactional = settings.runtime.exactly_once and has_outputs
        # A fatal client error (a static member fenced after the broker came back, a
        # fenced transactional producer) is reported only through this callback; a client
        # in that state never recovers, so the loop ends the process and its supervisor
        # restarts it with fresh clients.
        self._fatal_error: str | None = None
        self.consumer: Consumer = make_consumer(settings, group_id, client_id, instance_id=instance_id,
                                                transactional=self.transactional,
                                                role="main" if has_outputs else "sink",
                                                overrides={"error_cb": self._on_client_error})
        retry_levels = settings.runtime.retry.levels
        stage_topics = list(dict.fromkeys(s for handler in self.handlers for s in handler.input_topics))
        self.input_topics = [self.namer.topic(t, s) for t in self.tenants for s in stage_topics]
        self.retry_topics = [self.namer.retry(t, s, level) for t in self.tenants for s in stage_topics
                             for level in range(1, retry_levels + 1)]
        # Input topic -> the hosted stages that read it, in flow order.
        self._readers: dict[str, tuple[StageHandler, ...]] = {
            self.namer.topic(t, s): tuple(h for h in self.handlers if s in h.input_topics)
            for t in self.tenants for s in stage_topics}
        # Stage topic -> the hosted stages an output on it is handed to in the batch. A
        # stage that decodes its own messages (tracking: two schema families, bodies
        # mostly left as bytes) always reads from Kafka.
        self._handed_to: dict[str, tuple[StageHandler, ...]] = {
            topic: tuple(h for h in self.handlers if topic in h.input_topics and not hasattr(h, "decode_message"))
            for topic in set(self.output_topic_of.values()) - {None}}
        # Retry topics are nearly always empty. Their own consumer (own group) long-polls
        # them, so the main consumer's fetches carry only the input partitions: librdkafka
        # has no incremental fetch sessions, and every fetch lists every partition.
        self.retry_consumer: Consumer | None = None
        if self.retry_topics:
            self.retry_consumer = make_consumer(
                settings, f"{group_id}.retry", f"{client_id}-retry", instance_id=instance_id,
                transactional=self.transactional, role="retry", overrides={"error_cb": self._on_client_error})
        # One transactional id per process instance: a restarted instance fences its own
        # zombie, and consumer-group metadata fences one that lost its partitions.
        self.producer: Producer = make_producer(
            settings, client_id, transactional_id=f"{group_id}.{instance_id}" if self.transactional else None,
            overrides={"error_cb": self._on_client_error})
        self.watchdog = HangWatchdog(self.name)
        if self.transactional:
            self._init_transactions(settings.runtime.produce_ack_timeout_s)
        # Retry partitions paused until their head event is due: (topic, partition) -> monotonic time.
        self._paused: dict[tuple[str, int], float] = {}
        # Consumed batches waiting for their effects, oldest first (see "In-flight batches").
        self._in_flight: deque[InFlightBatch] = deque()
        # bandit B311: retry jitter, not a secret.
        self._rng = random.Random()  # nosec B311

    def consumers_by_role(self) -> dict[str, Consumer]:
        consumers = {"main": self.consumer}
        if self.retry_consumer is not None:
            consumers["retry"] = self.retry_consumer
        return consumers

    def new_checkpoint(self) -> Checkpoint:
        return TransactionalCheckpoint(self) if self.transactional else AtLeastOnceCheckpoint(self)

    def _init_transactions(self, timeout_s: float) -> None:
        call_retrying(self.watchdog, "init_transactions", self.producer.init_transactions, timeout_s,
                      INIT_TRANSACTIONS_ATTEMPTS_MAX, self.name)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._fatal_error = str(error)
        elif error.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("Kafka client error: %s", error, extra={"stage": self.name})

    def request_stop(self, *_args: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start partitions without a committed offset at their beginning, explicitly.

        Relying on auto.offset.reset alone lost the first events of a brand-new topic in
        our crash drills (twice in a handful of runs under CPU starvation): the reset
        landed at the log end after events had been written. A stage must never skip an
        event it has not handled, so the start position is spelled out.
        """
        committed = consumer.committed(partitions, timeout=self.settings.runtime.produce_ack_timeout_s)
        for partition in committed:
            if partition.offset < 0:
                partition.offset = OFFSET_BEGINNING
        consumer.assign(committed)
        # A (re)assigned partition starts unpaused; a retry partition whose head is not
        # due yet is paused again when that head is read.
        for partition in committed:
            self._paused.pop((partition.topic, partition.partition), None)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self._paused.pop((partition.topic, partition.partition), None)
        # Their offsets may no longer be committed by this process: give the waiting
        # batches up, and read what is still ours again from where they began.
        self._abandon_in_flight(seek=True)

    def _hold_until_due(self, message: Message, due_at_ms: int) -> None:
        """Park a retry partition at its head event until that event is due."""
        consumer = self.retry_consumer or self.consumer
        partition = TopicPartition(message.topic(), message.partition(), message.offset())
        consumer.seek(partition)
        consumer.pause([TopicPartition(message.topic(), message.partition())])
        wait_s = max(0.0, due_at_ms / 1000 - time.time())
        self._paused[(message.topic(), message.partition())] = time.monotonic() + wait_s

    def _resume_due(self) -> None:
        if not self._paused:
            return
        now = time.monotonic()
        due = [key for key, resume_at in self._paused.items() if resume_at <= now]
        if due:
            (self.retry_consumer or self.consumer).resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._paused[key]

    def run(self) -> None:
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        if self.retry_consumer is not None:
            self.retry_consumer.subscribe(self.retry_topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("stage %s consuming %d topics and %d retry topics", self.name, len(self.input_topics),
                 len(self.retry_topics), extra={"stage": self.name})
        tick_interval_s = self.settings.runtime.tick_interval_ms / 1000
        next_tick = time.monotonic() + tick_interval_s
        next_report = time.monotonic() + STATS_REPORT_INTERVAL_S
        try:
            while not self._stop.is_set():
                self.run_checkpoint()
                self._resume_due()
                if time.monotonic() >= next_tick:
                    self._run_tick()
                    next_tick = time.monotonic() + tick_interval_s
                if time.monotonic() >= next_report:
                    self._report()
                    next_report = time.monotonic() + STATS_REPORT_INTERVAL_S
            self._drain_in_flight(self.settings.runtime.shutdown_timeout_s)
        finally:
            self.close()

    def _next_messages(self, wait_s: float, checkpoint: Checkpoint) -> list[Message]:
        """The next batch to decide, waiting up to `wait_s`; none while the in-flight
        queue is full (the oldest batch is waited for instead, into `checkpoint`)."""
        if len(self._in_flight) >= IN_FLIGHT_BATCHES_MAX:
            self.watchdog.beat()
            self._complete_in_flight(checkpoint, wait_s=wait_s)
            return []
        # With batches in flight, poll briefly: an answered effect is noticed between polls.
        return self._poll(min(wait_s, IN_FLIGHT_POLL_S) if self._in_flight else wait_s)

    def _poll(self, timeout_s: float) -> list[Message]:
        """The next batch: input messages (waiting up to `timeout_s`) plus any retry
        messages the retry consumer has already fetched (never waiting for those)."""
        self.watchdog.beat()
        if self._fatal_error is not None:
            raise FatalClientError(f"fatal Kafka client error, restarting the process: {self._fatal_error}")
        batch_max = self.settings.runtime.batch_max_messages
        # librdkafka's batch consume waits out its whole timeout unless `num_messages`
        # arrive, which held every hop for the full poll timeout at low load. poll()
        # returns with the first message; consume(timeout=0) then takes what is queued.
        first = self.consumer.poll(timeout_s)
        if first is None:
            messages = []
        elif batch_max > 1:
            messages = [first, *self.consumer.consume(num_messages=batch_max - 1, timeout=0)]
        else:
            messages = [first]
        if self.retry_consumer is not None:
            messages += self.retry_consumer.consume(num_messages=batch_max, timeout=0)
        return messages

    def run_checkpoint(self) -> None:
        """Consume and handle batches into one checkpoint for one commit interval, then commit.

        The interval starts with the checkpoint's first message, so a quiet system adds at
        most the interval to each hop, and a loaded one pays one commit (one transaction)
        per interval per stage instead of one per event: the broker's cost of a
        transaction (coordinator writes, a marker per partition) is what made each event
        expensive.
        """
        runtime = self.settings.runtime
        interval_s = runtime.commit_interval_ms / 1000
        checkpoint = self.new_checkpoint()
        self._complete_in_flight(checkpoint)
        messages = self._next_messages(runtime.poll_timeout_ms / 1000, checkpoint)
        # Batches whose effects are out do not open the checkpoint; they join it when done.
        while messages or not checkpoint.empty:
            if messages:
                self.process_batch(messages, checkpoint)
            self._complete_in_flight(checkpoint)
            remaining_s = interval_s - checkpoint.age_s()
            if remaining_s <= 0:
                break
            messages = self._next_messages(remaining_s, checkpoint)
        if checkpoint.empty:
            return
        if checkpoint.commit():
            self.stats.commits += 1

    def _report(self) -> None:
        """One line per interval with work done, so a slow stage shows itself in the logs."""
        stats = self.stats
        batches = stats.batches - stats.reported_batches
        if batches == 0:
            return
        handled = stats.handled - stats.reported_handled
        commits = stats.commits - stats.reported_commits
        log.info("stage %s: %d events in %d batches and %d commits (mean %.1f per batch, mean %.1f ms, max %.1f ms)",
                 self.name, handled, batches, commits, handled / batches, stats.batch_ms_sum / batches,
                 stats.batch_ms_max, extra={"stage": self.name, "count": handled})
        stats.reported_batches, stats.reported_handled, stats.reported_commits = stats.batches, stats.handled, stats.commits
        stats.batch_ms_sum = stats.batch_ms_max = 0.0

    def _run_tick(self) -> None:
        now = datetime.now(UTC)
        ticked = [(handler, outputs) for handler in self.handlers if (outputs := handler.tick(now))]
        if not ticked:
            return
        # Timer outputs have no input offsets to redeliver them: the stage keeps them
        # until `published` confirms them, and re-emits them on the next tick.
        checkpoint = self.new_checkpoint()
        for handler, outputs in ticked:
            checkpoint.add_records(self._output_records(handler, outputs))
        if not checkpoint.commit():
            return
        for handler, outputs in ticked:
            self.stats.produced += len(outputs)
            confirm = getattr(handler, "published", None)
            if confirm is not None:
                confirm(outputs)

    def process_batch(self, messages: list[Message], checkpoint: Checkpoint | None = None) -> None:
        """Handle one consumed batch into `checkpoint` (or into its own, committed at once)."""
        own_checkpoint = checkpoint is None
        if own_checkpoint:
            checkpoint = self.new_checkpoint()
        started = time.perf_counter()
        # Per hosted stage: the events it reads from this batch and the message of each.
        work: dict[str, tuple[list[Event], list[Message]]] = {handler.name: ([], []) for handler in self.handlers}
        # (message, why, the stage that could not read it)
        poison: list[tuple[Message, Exception, str]] = []
        # Retry partitions whose head is not due: (topic, partition) -> first offset left unread.
        held: dict[tuple[str, int], int] = {}
        now_ms = int(time.time() * 1000)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise FatalClientError(f"fatal consumer error: {error}")
                log.warning("consumer error: %s", error, extra={"stage": self.name})
                continue
            where = (message.topic(), message.partition())
            if where in held:
                continue
            headers = message.headers() or ()
            if retries.is_retry_topic(message.topic()):
                # A retry is meant for the one stage that asked for it.
                retrying = self._handler_by_name.get(header(headers, HEADER_RETRY_STAGE) or "")
                if retrying is None:
                    self.stats.skipped += 1  # another stage's retry
                    continue
                due_at_ms = int(header(headers, HEADER_RETRY_DUE_AT_MS) or 0)
                if due_at_ms > now_ms:
                    held[where] = message.offset()
                    self._hold_until_due(message, due_at_ms)
                    continue
                readers: tuple[StageHandler, ...] = (retrying,)
            else:
                readers = self._readers.get(message.topic(), ())
                handled_by = header(headers, HEADER_HANDLED_BY)
                if handled_by is not None:
                    # Taken by these stages in the process (and transaction) that wrote it.
                    taken = handled_by.split(",")
                    readers = tuple(h for h in readers if h.name not in taken)
            self.stats.consumed += 1
            event_type = header(headers, HEADER_EVENT_TYPE)
            readers = tuple(h for h in readers if h.input_event_types is None or event_type in h.input_event_types)
            if not readers:
                self.stats.skipped += 1
                continue
            self._decode_for(message, readers, work, poison)

        retry_due: list[tuple[Message, str, str, datetime | None, str]] = []
        pending: list[tuple[StageHandler, Pending, list[Event], list]] = []
        with checkpoint.state.active():
            outputs_of, taken_by, handled = self._decide_and_hand_over(work, poison, retry_due, pending)
        records = self._batch_records(outputs_of, taken_by, poison, retry_due)
        offsets = self._next_offsets(messages, held)
        if pending or self._in_flight:
            # Behind a batch in flight, a batch waits too: offsets are committed in order.
            self._in_flight.append(InFlightBatch(records, offsets, self._first_offsets(messages), pending))
        else:
            checkpoint.add_records(records)
            checkpoint.add_offsets(offsets)
        if own_checkpoint and not checkpoint.commit():
            return  # aborted and rewound: the batch is consumed again
        self.stats.handled += handled
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000
        self.stats.batch_ms_sum += self.stats.last_batch_ms
        self.stats.batch_ms_max = max(self.stats.batch_ms_max, self.stats.last_batch_ms)

    def _batch_records(self, outputs_of: list[tuple[StageHandler, list[Event]]], taken_by: dict[str, list[str]],
                       poison: list, retry_due: list) -> list[tuple]:
        """Every record a batch (or the finish of its effects) produces, counted in the stats."""
        retry_records = self._retry_records(retry_due, poison)
        records = self._dead_letter_records(poison) + retry_records
        for handler, outputs in outputs_of:
            records += self._output_records(handler, outputs, taken_by)
        self.stats.dead_lettered += len(poison)
        self.stats.retried += len(retry_records)
        self.stats.produced += sum(len(outputs) for _, outputs in outputs_of)
        return records

    def _complete_in_flight(self, checkpoint: Checkpoint, wait_s: float = 0.0) -> None:
        """Move the batches whose effects are done into `checkpoint`, oldest first,
        finishing their effects: each stage decides with its effect's result, and what
        it decides is handed over as a batch's outputs are. `wait_s` waits that long for
        the oldest batch first."""
        if wait_s > 0 and self._in_flight and not self._in_flight[0].done():
            wait_for_futures([effect.future for _, effect, _, _ in self._in_flight[0].pending], timeout=wait_s)
        while self._in_flight and self._in_flight[0].done():
            batch = self._in_flight[0]
            if batch.pending:
                poison: list = []
                retry_due: list = []
                pending: list = []
                with checkpoint.state.active():
                    outputs_of, taken_by = self._finish_effects(batch.pending, poison, retry_due, pending)
                batch.records += self._batch_records(outputs_of, taken_by, poison, retry_due)
                batch.pending = pending
                if pending:
                    continue  # a finish started another effect: the batch waits again
            self._in_flight.popleft()
            checkpoint.add_records(batch.records)
            checkpoint.add_offsets(batch.offsets)

    def _finish_effects(self, effects: list[tuple[StageHandler, Pending, list[Event], list]], poison: list,
                        retry_due: list, pending: list
                        ) -> tuple[list[tuple[StageHandler, list[Event]]], dict[str, list[str]]]:
        """The outputs of every done effect of a batch, and of the hosted stages they are handed to."""
        round_outputs: list[tuple[StageHandler, list[Event]]] = []
        for handler, effect, events, sources in effects:
            try:
                results = effect.finish(effect.future.result())
                outputs = self._split_retries(handler, results, events, sources, retry_due, pending)
            except Exception as exc:
                self._failed_events(handler, events, sources, exc, poison, retry_due)
                outputs = []
            round_outputs.append((handler, outputs))
        taken_by: dict[str, list[str]] = {}
        inbox = self._hand_over(round_outputs, taken_by)
        if inbox is None:
            return round_outputs, taken_by
        outputs_of, more_taken_by, handled = self._decide_and_hand_over(inbox, poison, retry_due, pending)
        self.stats.handled += handled
        return round_outputs + outputs_of, {**taken_by, **more_taken_by}

    def _abandon_in_flight(self, *, seek: bool) -> None:
        """Give up every batch in flight; with `seek`, read their partitions again from
        where the first of them began (a rewind seeks to the committed offsets itself)."""
        batches, self._in_flight = list(self._in_flight), deque()
        if not batches:
            return
        first: dict[tuple[str, int], int] = {}
        for batch in batches:
            for _, effect, _, _ in batch.pending:
                effect.abandon()
            for key, offset in batch.first_offsets.items():
                first[key] = min(first.get(key, offset), offset)
        log.warning("gave up %d batches waiting for effects; their events are read again", len(batches),
                    extra={"stage": self.name})
        if not seek:
            return
        for (topic, partition), offset in first.items():
            consumer = (self.retry_consumer or self.consumer) if retries.is_retry_topic(topic) else self.consumer
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                pass  # no longer assigned here: its new owner starts from the committed offset

    def _drain_in_flight(self, timeout_s: float) -> None:
        """On stop: commit the batches whose effects answer within `timeout_s`; the rest
        are read again by the next owner of their partitions."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:
            checkpoint = self.new_checkpoint()
            self._complete_in_flight(checkpoint, wait_s=max(0.0, deadline - time.monotonic()))
            if not checkpoint.empty and checkpoint.commit():
                self.stats.commits += 1
        self._abandon_in_flight(seek=False)

    def _decide_and_hand_over(self, work: dict[str, tuple[list[Event], list]], poison: list, retry_due: list,
                              pending: list
                              ) -> tuple[list[tuple[StageHandler, list[Event]]], dict[str, list[str]], int]:
        """Every hosted stage's outputs for the batch, handing outputs on to the hosted
        stages that read them (see "Hand-over" above), round by round in flow order.

        Returns the outputs per stage, the stages that took each output event (by event
        id, for its `handled_by` header) and how many events the stages handled. A stage
        that fails on or defers a handed event fills `poison` or `retry_due` as for a
        consumed one: its dead letter or retry is produced in the same checkpoint. Effects
        the stages started go to `pending`.
        """
        outputs_of: list[tuple[StageHandler, list[Event]]] = []
        taken_by: dict[str, list[str]] = {}
        handled = 0
        inbox = work
        for _ in range(HAND_OVER_ROUNDS_MAX):
            round_outputs = []
            for handler in self.handlers:
                events, sources = inbox[handler.name]
                if events:
                    handled += len(events)
                    round_outputs.append((handler, self._decide(handler, events, sources, poison, retry_due,
                                                                pending)))
            outputs_of += round_outputs
            inbox = self._hand_over(round_outputs, taken_by)
            if inbox is None:
                break
        else:
            # A loop in the plan: what is still to hand over is left to be read back from Kafka.
            for name, (events, _) in inbox.items():
                for event in events:
                    stages = taken_by[event.event_id]
                    if name in stages:  # an event id twice in the batch (a redelivery) is removed once
                        stages.remove(name)
        return outputs_of, taken_by, handled

    def _hand_over(self, round_outputs: list[tuple[StageHandler, list[Event]]], taken_by: dict[str, list[str]]
                   ) -> dict[str, tuple[list[Event], list]] | None:
        """The next round's inbox: each output event for the hosted stages that read it
        (None when there is none). Each stage gets the event decoded from its wire bytes,
        the same event a consumer of the topic would see."""
        inbox: dict[str, tuple[list[Event], list]] | None = None
        for handler, outputs in round_outputs:
            output_topic = self.output_topic_of[handler.name]
            readers = self._handed_to.get(output_topic or "", ())
            if not readers:
                continue
            for event in outputs:
                if not isinstance(event, Event):
                    continue  # another schema family, read only by stages that decode their own
                takers = [h for h in readers if h.input_event_types is None or event.event_type in h.input_event_types]
                if not takers:
                    continue
                value = self.codec.encode(event)
                source = HandedOver(self.namer.topic(event.tenant_id, output_topic), event.payment_id.encode(), value,
                                    event_headers(event, self.codec.writer.version))
                handed = self.codec.as_read(event)
                taken_by[event.event_id] = [h.name for h in takers]
                if inbox is None:
                    inbox = {h.name: ([], []) for h in self.handlers}
                for taker in takers:
                    events, sources = inbox[taker.name]
                    events.append(handed)
                    sources.append(source)
        return inbox

    def _decode_for(self, message: Message, readers: Sequence[StageHandler],
                    work: dict[str, tuple[list[Event], list[Message]]], poison: list) -> None:
        """Decode `message` for each stage in `readers`, into `work` or `poison`.

        A stage that reads more than payment events, or reads them without decoding every
        body (tracking), decodes its messages itself; the others share one decoded payment
        event (events are immutable)."""
        shared: Event | UndecodableEvent | None = None
        for handler in readers:
            decode = getattr(handler, "decode_message", None)
            try:
                if decode is not None:
                    event = decode(message)
                else:
                    if shared is None:
                        try:
                            shared = self.codec.decode(message.value() or b"")
                        except UndecodableEvent as exc:
                            shared = exc
                    if isinstance(shared, UndecodableEvent):
                        raise shared
                    event = shared
            except UndecodableEvent as exc:
                poison.append((message, exc, handler.name))
                continue
            events, sources = work[handler.name]
            events.append(event)
            sources.append(message)

    def _decide(self, handler: StageHandler, events: list[Event], sources: list[Message], poison: list,
                retry_due: list, pending: list) -> list[Event]:
        """The stage's outputs for its events of the batch; fills `poison`, `retry_due` and `pending`."""
        now = datetime.now(UTC)
        try:
            return self._split_retries(handler, handler.handle_batch(events, now), events, sources, retry_due,
                                       pending)
        except Exception:
            log.exception("stage %s failed on a batch of %d; isolating the failing events",
                          handler.name, len(events), extra={"stage": handler.name})
        # Handle one by one so one bad event cannot hold back the rest of the batch.
        outputs: list[Event] = []
        for event, message in zip(events, sources, strict=True):
            try:
                outputs.extend(self._split_retries(handler, handler.handle_batch([event], now), [event], [message],
                                                   retry_due, pending))
            except Exception as exc:
                self._failed_events(handler, [event], [message], exc, poison, retry_due)
        return outputs

    @staticmethod
    def _failed_events(handler: StageHandler, events: list[Event], sources: list, exc: Exception, poison: list,
                       retry_due: list) -> None:
        """Events a stage raised on: retried after a transient fault, dead-lettered otherwise."""
        for event, message in zip(events, sources, strict=True):
            context = {**event.log_context(), "stage": handler.name, "error_class": type(exc).__name__}
            if retries.is_transient(exc):
                log.warning("stage %s will retry event after a transient fault: %r", handler.name, exc,
                            extra=context)
                retry_due.append((message, type(exc).__name__, str(exc), None, handler.name))
            else:  # a failed invariant or a bug: dead-letter, loudly
                log.error("stage %s cannot handle event: %r", handler.name, exc, extra=context)
                poison.append((message, exc, handler.name))

    @staticmethod
    def _split_retries(handler: StageHandler, results: list, events: list[Event], sources: list[Message],
                       retry_due: list, pending: list) -> list[Event]:
        """Separate the stage's `RetryLater` answers and `Pending` effects from its output events."""
        if not any(isinstance(r, (RetryLater, Pending)) for r in results):
            return results
        source_of = {}
        for event, message in zip(events, sources, strict=True):
            source_of.setdefault(event.event_id, message)
        outputs = []
        for result in results:
            if isinstance(result, RetryLater):
                retry_due.append((source_of[result.event.event_id], result.error_class, result.detail,
                                  result.not_before, handler.name))
            elif isinstance(result, Pending):
                pending.append((handler, result, events, sources))
            else:
                outputs.append(result)
        return outputs

    def _retry_records(self, retry_due: list, poison: list) -> list[tuple]:
        """(topic, key, value, headers) of each event to retry later; transient faults past
        the last level join `poison` instead (stage deferrals are bounded by the stage)."""
        settings = self.settings.runtime.retry
        records = []
        now = datetime.now(UTC)
        for message, error_class, detail, not_before, stage in retry_due:
            attempt = int(header_value(message, HEADER_RETRY_ATTEMPT) or 0) + 1
            if not_before is None and attempt > settings.levels:
                poison.append((message, RetriesExhausted(f"{error_class} after {attempt - 1} retries: {detail}"),
                               stage))
                continue
            delay_s = retries.backoff_s(attempt, settings, self._rng)
            if not_before is not None:
                # Waiting for a known time (a breaker's half-open): a little jitter so the
                # waiting payments do not all arrive in the same instant.
                delay_s = max(0.0, (not_before - now).total_seconds()) + self._rng.uniform(0, settings.jitter)
            origin = header_value(message, HEADER_RETRY_ORIGIN_TOPIC) or message.topic()
            headers = retries.retry_headers(
                _without_handled_by(message.headers()), stage=stage, origin_topic=origin, attempt=attempt,
                first_failed_at=header_value(message, HEADER_RETRY_FIRST_FAILED_AT) or now.isoformat(),
                error_class=error_class, error=detail, due_at_ms=int((now.timestamp() + delay_s) * 1000))
            records.append((retries.retry_topic(origin, retries.level_of(attempt, settings)), message.key(),
                            message.value(), headers))
            log.info("retry %d of event in %.1f s: %s", attempt, delay_s, detail, extra={
                "stage": stage, "error_class": error_class, "attempt": attempt,
                "correlation_id": header_value(message, HEADER_CORRELATION_ID),
                "tenant_id": header_value(message, HEADER_TENANT_ID)})
        return records

    def _dead_letter_records(self, poison: list[tuple[Message, Exception, str]]) -> list[tuple]:
        """(topic, key, value, headers) for each poison message: original bytes plus why."""
        failed_at = datetime.now(UTC).isoformat()
        records = []
        for message, exc, stage in poison:
            # Without `handled_by`: a replay goes to every stage that reads the topic, as
            # the original did (they drop what they already decided).
            headers = _without_handled_by(message.headers())
            # An event that failed in a retry topic belongs to the topic it first came from.
            origin = header_value(message, HEADER_RETRY_ORIGIN_TOPIC) or message.topic()
            attempts = int(header_value(message, HEADER_RETRY_ATTEMPT) or 0) + 1
            headers += [
                (HEADER_DLQ_ORIGIN_TOPIC, origin.encode()),
                (HEADER_DLQ_ORIGIN_PARTITION, str(message.partition()).encode()),
                (HEADER_DLQ_ORIGIN_OFFSET, str(message.offset()).encode()),
                (HEADER_DLQ_STAGE, stage.encode()),
                (HEADER_DLQ_ERROR_CLASS, type(exc).__name__.encode()),
                (HEADER_DLQ_ERROR_MESSAGE, str(exc)[:_DLQ_ERROR_MESSAGE_MAX_CHARS].encode()),
                (HEADER_DLQ_ATTEMPTS, str(attempts).encode()),
                (HEADER_DLQ_FAILED_AT, failed_at.encode()),
            ]
            log.error("dead-lettering message: %s", exc, extra={
                "stage": stage, "topic": message.topic(), "partition": message.partition(),
                "offset": message.offset(), "error_class": type(exc).__name__,
                "correlation_id": header_value(message, HEADER_CORRELATION_ID),
                "tenant_id": header_value(message, HEADER_TENANT_ID),
            })
            # Original key and bytes go untouched so a replay is the same message.
            records.append((origin + DLQ_SUFFIX, message.key(), message.value(), headers))
        return records

    def _output_records(self, handler: StageHandler, outputs: list[Event],
                        taken_by: dict[str, list[str]] | None = None) -> list[tuple]:
        if not outputs:
            return []
        output_topic = self.output_topic_of[handler.name]
        if output_topic is None:
            raise RuntimeError(f"stage {handler.name} produced events but has no output topic")
        records = []
        for event in outputs:
            if not isinstance(event, Event):
                # Another schema family (see `_decode_for`): the output names its own record.
                records.append(event.kafka_record(self.namer))
                continue
            headers = event_headers(event, self.codec.writer.version)
            takers = taken_by.get(event.event_id) if taken_by else None
            if takers:
                headers.append((HEADER_HANDLED_BY, ",".join(takers).encode()))
            records.append((self.namer.topic(event.tenant_id, output_topic), event.payment_id.encode(),
                            self.codec.encode(event), headers))
        return records

    def rewind(self) -> None:
        """Seek every assigned partition of both consumers back to its committed offset."""
        self._abandon_in_flight(seek=False)
        for consumer in self.consumers_by_role().values():
            assignment = consumer.assignment()
            if not assignment:
                continue
            for partition in consumer.committed(assignment, timeout=self.settings.runtime.produce_ack_timeout_s):
                if partition.offset < 0:
                    partition.offset = OFFSET_BEGINNING
                consumer.seek(partition)

    @staticmethod
    def _first_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                key = (message.topic(), message.partition())
                first[key] = min(first.get(key, message.offset()), message.offset())
        return first

    @staticmethod
    def _next_offsets(messages: list[Message], held: dict[tuple[str, int], int] | None = None) -> list[TopicPartition]:
        """The offsets to commit: past every message handled, never past a held retry head."""
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                key = (message.topic(), message.partition())
                if held and key in held and message.offset() >= held[key]:
                    continue
                next_offsets[key] = max(next_offsets.get(key, 0), message.offset() + 1)
        return [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]

    def close(self) -> None:
        try:
            self.producer.flush(self.settings.runtime.shutdown_timeout_s)
        finally:
            try:
                for consumer in self.consumers_by_role().values():
                    consumer.close()
            finally:
                for handler in self.handlers:
                    handler.close()
        log.info("stage %s stopped: consumed=%d handled=%d produced=%d retried=%d dead_lettered=%d",
                 self.name, self.stats.consumed, self.stats.handled, self.stats.produced,
                 self.stats.retried, self.stats.dead_lettered, extra={"stage": self.name})
