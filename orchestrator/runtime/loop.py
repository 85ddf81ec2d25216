"""The stage loop: `StageRunner` runs the one or more stages a process hosts.

Each turn of the loop fills one checkpoint (checkpoint.py) and commits it: consume a
batch (waiting for the first message, then taking only what is queued, plus whatever
the retry consumer has fetched), pick each message's hosted readers by its headers
before decoding anything, decode it once, let the stages decide with hand-over
(hosting.py) inside the checkpoint's state unit, and put the outputs, retries, dead
letters (failures.py) and offsets into the checkpoint, or into the in-flight queue
behind a batch still waiting for its effects (in_flight.py). Batches go on joining the
checkpoint until the commit interval has passed since its first message; then it is
committed. A crash anywhere in between redelivers those batches; stages are idempotent
and derive output event ids from their causes, so the redelivery re-emits events with
the same ids, which consumers drop as duplicates.

Besides the batches, the loop resumes retry partitions that are due (pausing.py), runs
the stages' timers (`tick`, in a checkpoint of their own) and logs its figures
(stats.py). A broker that cannot take the outputs, or a fatal client error, ends the
process without committing, and its supervisor restarts it.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from orchestrator import retries
from orchestrator.events import EventCodec
from orchestrator.runtime.checkpoint import AtLeastOnceCheckpoint, Checkpoint, TransactionalCheckpoint, next_offsets
from orchestrator.runtime.clients import ClientErrors, FatalClientError, StageClients, connect
from orchestrator.runtime.failures import Failures
from orchestrator.runtime.handler import StageHandler
from orchestrator.runtime.hosting import HostedStages, Outputs, TakenBy
from orchestrator.runtime.in_flight import IN_FLIGHT_POLL_S, InFlightBatch, InFlightQueue, StartedEffect, first_offsets
from orchestrator.runtime.pausing import RetryPauses
from orchestrator.runtime.producing import Record
from orchestrator.runtime.stats import STATS_REPORT_INTERVAL_S, RuntimeStats
from orchestrator.runtime.watchdog import HangWatchdog, call_retrying
from orchestrator.settings import Settings
from orchestrator.topics import TopicNamer, process_name
from orchestrator.wire import HEADER_EVENT_TYPE, HEADER_HANDLED_BY, HEADER_RETRY_DUE_AT_MS, HEADER_RETRY_STAGE, header

log = logging.getLogger("payorch.runtime")

# A restarted instance's init_transactions meets CONCURRENT_TRANSACTIONS while the
# coordinator aborts its predecessor's open transaction; it is retried this many times.
INIT_TRANSACTIONS_ATTEMPTS_MAX = 5


class StageRunner:
    """Runs one or more stages in one process, with one consumer, one producer and one
    checkpoint (one Kafka transaction) per commit interval for all of them.

    Each hosted stage still reads only its own input topics and writes only its own
    output topic: hosting changes how many clients and transactions the stages cost,
    not how they talk. A message read by two hosted stages (sanctions' and fraud's
    `initiated`, say) is decoded once and handed to both; each decides on its own.

    `clients` are the process's Kafka clients; by default they are built from
    `settings` (clients.py). A test passes its own.
    """

    def __init__(
        self,
        handlers: Sequence[StageHandler],
        settings: Settings,
        tenants: Sequence[str],
        codec: EventCodec,
        *,
        instance_id: str = "0",
        clients: StageClients | None = None,
    ) -> None:
        self.name = process_name([handler.name for handler in handlers])
        self.settings = settings
        self.codec = codec
        self.namer = TopicNamer(settings.topic_template)
        self.tenants = list(tenants)
        self.hosted = HostedStages(handlers, codec, self.namer, self.tenants)
        self.handlers = self.hosted.handlers
        self.stats = RuntimeStats()
        self._stop = threading.Event()
        # A process with outputs runs consume-transform-produce in transactions; a sink
        # (tracking) writes only its own store and commits offsets after it (see
        # AtLeastOnceCheckpoint), which gives it the same guarantee for less.
        self.transactional = settings.runtime.exactly_once and self.hosted.has_outputs
        retry_levels = settings.runtime.retry.levels
        stage_topics = self.hosted.stage_topics
        self.input_topics = [self.namer.topic(t, s) for t in self.tenants for s in stage_topics]
        self.retry_topics = [self.namer.retry(t, s, level) for t in self.tenants for s in stage_topics
                             for level in range(1, retry_levels + 1)]
        # Every client's error callback: a fatal error ends the loop (see ClientErrors).
        self.client_errors = ClientErrors(self.name)
        if clients is None:
            clients = connect(settings, self.name, instance_id, transactional=self.transactional,
                              sink=not self.hosted.has_outputs, reads_retries=bool(self.retry_topics),
                              errors=self.client_errors)
        self.clients = clients
        self.watchdog = HangWatchdog(self.name)
        if self.transactional:
            call_retrying(self.watchdog, "init_transactions", clients.producer.init_transactions,
                          settings.runtime.produce_ack_timeout_s, INIT_TRANSACTIONS_ATTEMPTS_MAX, self.name)
        # Retry partitions paused until their head event is due.
        self.pauses = RetryPauses(clients.retry_consumer or clients.consumer)
        # Consumed batches waiting for their effects, oldest first (see in_flight.py).
        self.in_flight = InFlightQueue()
        # bandit B311: retry jitter, not a secret.
        self._rng = random.Random()  # nosec B311

    def new_checkpoint(self) -> Checkpoint:
        runtime = self.settings.runtime
        if self.transactional:
            return TransactionalCheckpoint(self.clients, runtime, self.watchdog, self.name, self._aborted)
        return AtLeastOnceCheckpoint(self.clients, runtime, self.name)

    def _aborted(self) -> None:
        """A checkpoint's transaction was aborted: read its batches again."""
        self.rewind()
        self.stats.aborted_transactions += 1

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
        self.pauses.forget(committed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.pauses.forget(partitions)
        # Their offsets may no longer be committed by this process: give the waiting
        # batches up, and read what is still ours again from where they began.
        self._give_up_in_flight(seek=True)

    def run(self) -> None:
        clients = self.clients
        clients.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        if clients.retry_consumer is not None:
            clients.retry_consumer.subscribe(self.retry_topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("stage %s consuming %d topics and %d retry topics", self.name, len(self.input_topics),
                 len(self.retry_topics), extra={"stage": self.name})
        tick_interval_s = self.settings.runtime.tick_interval_ms / 1000
        next_tick = time.monotonic() + tick_interval_s
        next_report = time.monotonic() + STATS_REPORT_INTERVAL_S
        try:
            while not self._stop.is_set():
                self.run_checkpoint()
                self.pauses.resume_due()
                if time.monotonic() >= next_tick:
                    self._run_tick()
                    next_tick = time.monotonic() + tick_interval_s
                if time.monotonic() >= next_report:
                    self.stats.report(self.name)
                    next_report = time.monotonic() + STATS_REPORT_INTERVAL_S
            self._drain_in_flight(self.settings.runtime.shutdown_timeout_s)
        finally:
            self.close()

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
        self.complete_in_flight(checkpoint)
        messages = self.next_messages(runtime.poll_timeout_ms / 1000, checkpoint)
        # Batches whose effects are out do not open the checkpoint; they join it when done.
        while messages or not checkpoint.empty:
            if messages:
                self.process_batch(messages, checkpoint)
            self.complete_in_flight(checkpoint)
            remaining_s = interval_s - checkpoint.age_s()
            if remaining_s <= 0:
                break
            messages = self.next_messages(remaining_s, checkpoint)
        if checkpoint.empty:
            return
        if checkpoint.commit():
            self.stats.commits += 1

    def next_messages(self, wait_s: float, checkpoint: Checkpoint) -> list[Message]:
        """The next batch to decide, waiting up to `wait_s`; none while the in-flight
        queue is full (the oldest batch is waited for instead, into `checkpoint`)."""
        if self.in_flight.full():
            self.watchdog.beat()
            self.complete_in_flight(checkpoint, wait_s=wait_s)
            return []
        # With batches in flight, poll briefly: an answered effect is noticed between polls.
        return self._poll(min(wait_s, IN_FLIGHT_POLL_S) if self.in_flight else wait_s)

    def _poll(self, timeout_s: float) -> list[Message]:
        """The next batch: input messages (waiting up to `timeout_s`) plus any retry
        messages the retry consumer has already fetched (never waiting for those)."""
        self.watchdog.beat()
        self.client_errors.raise_if_fatal()
        batch_max = self.settings.runtime.batch_max_messages
        consumer = self.clients.consumer
        # librdkafka's batch consume waits out its whole timeout unless `num_messages`
        # arrive, which held every hop for the full poll timeout at low load. poll()
        # returns with the first message; consume(timeout=0) then takes what is queued.
        first = consumer.poll(timeout_s)
        if first is None:
            messages = []
        elif batch_max > 1:
            messages = [first, *consumer.consume(num_messages=batch_max - 1, timeout=0)]
        else:
            messages = [first]
        if self.clients.retry_consumer is not None:
            messages += self.clients.retry_consumer.consume(num_messages=batch_max, timeout=0)
        return messages

    def _run_tick(self) -> None:
        now = datetime.now(UTC)
        ticked = [(handler, outputs) for handler in self.handlers if (outputs := handler.tick(now))]
        if not ticked:
            return
        # Timer outputs have no input offsets to redeliver them: the stage keeps them
        # until `published` confirms them, and re-emits them on the next tick.
        checkpoint = self.new_checkpoint()
        for handler, outputs in ticked:
            checkpoint.add_records(self.hosted.output_records(handler, outputs))
        if not checkpoint.commit():
            return
        for handler, outputs in ticked:
            self.stats.produced += len(outputs)
            handler.published(outputs)

    def process_batch(self, messages: list[Message], checkpoint: Checkpoint | None = None) -> None:
        """Handle one consumed batch into `checkpoint` (or into its own, committed at once)."""
        own_checkpoint = checkpoint is None
        if own_checkpoint:
            checkpoint = self.new_checkpoint()
        started = time.perf_counter()
        hosted = self.hosted
        work = hosted.new_work()
        failures = Failures()
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
                retrying = hosted.by_name.get(header(headers, HEADER_RETRY_STAGE) or "")
                if retrying is None:
                    self.stats.skipped += 1  # another stage's retry
                    continue
                due_at_ms = int(header(headers, HEADER_RETRY_DUE_AT_MS) or 0)
                if due_at_ms > now_ms:
                    held[where] = message.offset()
                    self.pauses.hold_until_due(message, due_at_ms)
                    continue
                readers: tuple[StageHandler, ...] = (retrying,)
            else:
                readers = hosted.readers.get(message.topic(), ())
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
            hosted.decode_for(message, readers, work, failures)

        pending: list[StartedEffect] = []
        with checkpoint.state.active():
            outputs_of, taken_by, handled = hosted.decide(work, failures, pending)
        records = self._batch_records(outputs_of, taken_by, failures)
        offsets = next_offsets(messages, held)
        if pending or self.in_flight:
            # Behind a batch in flight, a batch waits too: offsets are committed in order.
            self.in_flight.append(InFlightBatch(records, offsets, first_offsets(messages), pending))
        else:
            checkpoint.add_records(records)
            checkpoint.add_offsets(offsets)
        if own_checkpoint and not checkpoint.commit():
            return  # aborted and rewound: the batch is consumed again
        self.stats.add_batch(handled, started)

    def _batch_records(self, outputs_of: Outputs, taken_by: TakenBy, failures: Failures) -> list[Record]:
        """Every record a batch (or the finish of its effects) produces, counted in the stats."""
        dead_letters, retry_records = failures.records(self.settings.runtime.retry, self._rng)
        records = dead_letters + retry_records
        for handler, outputs in outputs_of:
            records += self.hosted.output_records(handler, outputs, taken_by)
        self.stats.dead_lettered += len(failures.poison)
        self.stats.retried += len(retry_records)
        self.stats.produced += sum(len(outputs) for _, outputs in outputs_of)
        return records

    def complete_in_flight(self, checkpoint: Checkpoint, wait_s: float = 0.0) -> None:
        """Move the batches whose effects are done into `checkpoint`, oldest first,
        finishing their effects: each stage decides with its effect's result, and what
        it decides is handed over as a batch's outputs are. `wait_s` waits that long for
        the oldest batch first."""
        self.in_flight.complete_into(checkpoint, self._finish_effects, wait_s)

    def _finish_effects(self, effects: list[StartedEffect], checkpoint: Checkpoint
                        ) -> tuple[list[Record], list[StartedEffect]]:
        """The records of a batch's done effects, decided in `checkpoint`'s state unit,
        and the effects those decisions started in turn."""
        failures = Failures()
        pending: list[StartedEffect] = []
        with checkpoint.state.active():
            outputs_of, taken_by, handled = self.hosted.finish(effects, failures, pending)
            self.stats.handled += handled
        return self._batch_records(outputs_of, taken_by, failures), pending

    def _give_up_in_flight(self, *, seek: bool) -> None:
        """Give up every batch in flight; with `seek`, read their partitions again from
        where the first of them began (a rewind seeks to the committed offsets itself)."""
        given_up, first = self.in_flight.give_up()
        if not given_up:
            return
        log.warning("gave up %d batches waiting for effects; their events are read again", given_up,
                    extra={"stage": self.name})
        if not seek:
            return
        for (topic, partition), offset in first.items():
            try:
                self.clients.consumer_of(topic).seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                pass  # no longer assigned here: its new owner starts from the committed offset

    def _drain_in_flight(self, timeout_s: float) -> None:
        """On stop: commit the batches whose effects answer within `timeout_s`; the rest
        are read again by the next owner of their partitions."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            checkpoint = self.new_checkpoint()
            self.complete_in_flight(checkpoint, wait_s=max(0.0, deadline - time.monotonic()))
            if not checkpoint.empty and checkpoint.commit():
                self.stats.commits += 1
        self._give_up_in_flight(seek=False)

    def rewind(self) -> None:
        """Give up the batches in flight, and seek every assigned partition of both
        consumers back to its committed offset."""
        self._give_up_in_flight(seek=False)
        for consumer in self.clients.by_role().values():
            assignment = consumer.assignment()
            if not assignment:
                continue
            for partition in consumer.committed(assignment, timeout=self.settings.runtime.produce_ack_timeout_s):
                if partition.offset < 0:
                    partition.offset = OFFSET_BEGINNING
                consumer.seek(partition)

    def close(self) -> None:
        try:
            self.clients.producer.flush(self.settings.runtime.shutdown_timeout_s)
        finally:
            try:
                for consumer in self.clients.by_role().values():
                    consumer.close()
            finally:
                for handler in self.handlers:
                    handler.close()
        self.stats.log_stopped(self.name)
