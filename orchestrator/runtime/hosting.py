"""The stages one process hosts, and how a batch is decided among them.

Each hosted stage still reads only its own input topics and event types, decides on its
own, and writes only its own output topic: hosting changes how many clients and
transactions the stages cost, not how they talk. A message that two hosted stages read
(sanctions' and fraud's `initiated`, say) is decoded once and handed to both (events are
immutable).

Hand-over: a hosted stage's output events that another stage of the same process reads
are handed to that stage in the same batch, decoded from the bytes that are produced (so
it sees exactly what a consumer would), and its outputs in turn, round by round in flow
order, until nothing is left (at most `HAND_OVER_ROUNDS_MAX` rounds). Every event is
still written to its topic, in the same checkpoint, with a `payorch.handled_by` header
naming the stages that took it here; those stages skip it when the process reads the
topic back, everyone else (tracking, a process of another plan, a replayed dead letter)
reads it as before. A stage that fails on or defers an event handed to it takes the
retry and dead-letter paths (failures.py) as for a consumed message, in the same
checkpoint, made from the record it was handed (`HandedOver`).

A stage that raises on a batch is asked again one event at a time, so one bad event
cannot hold back the others; what still raises is retried or dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import Message

from orchestrator.effects import Pending
from orchestrator.events import Event, EventCodec, UndecodableEvent
from orchestrator.retries import DeadLetter, RetryLater
from orchestrator.runtime.failures import Failures, Poison, RetryDue
from orchestrator.runtime.handler import StageHandler
from orchestrator.runtime.in_flight import StartedEffect
from orchestrator.runtime.producing import Record
from orchestrator.topics import OUTPUT_TOPIC_OF_STAGE, TopicNamer
from orchestrator.wire import HEADER_HANDLED_BY, event_headers

log = logging.getLogger("payorch.runtime")

# Rounds of hand-over within one batch. The longest chain is six rounds, with every stage
# but tracking in one process (initiation, the screenings, routing, ledger and
# execution, execution again on the reservation, ledger and settlement); the bound only
# stops a plan with a loop from spinning: what is left is read back from Kafka instead.
HAND_OVER_ROUNDS_MAX = 8

# Per hosted stage (by name): the events it is to decide, and the message each came from.
Work = dict[str, tuple[list[Event], list]]
# Each stage that decided, with its output events, in the order they were decided.
Outputs = list[tuple[StageHandler, list[Event]]]
# Output event id -> the hosted stages it was handed to (its `handled_by` header).
TakenBy = dict[str, list[str]]


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


class HostedStages:
    """The stages of one process, in flow order, and the topics that connect them."""

    def __init__(self, handlers: Sequence[StageHandler], codec: EventCodec, namer: TopicNamer,
                 tenants: Sequence[str]) -> None:
        self.handlers = list(handlers)
        self.by_name = {handler.name: handler for handler in self.handlers}
        if len(self.by_name) != len(self.handlers):
            raise ValueError(f"a stage is named twice in {'+'.join(h.name for h in self.handlers)}")
        self.codec = codec
        self.namer = namer
        self.output_topic_of = {handler.name: OUTPUT_TOPIC_OF_STAGE.get(handler.name) for handler in self.handlers}
        # The stage topics the hosted stages read, each once.
        self.stage_topics = list(dict.fromkeys(s for handler in self.handlers for s in handler.input_topics))
        # Input topic -> the hosted stages that read it, in flow order.
        self.readers: dict[str, tuple[StageHandler, ...]] = {
            namer.topic(t, s): tuple(h for h in self.handlers if s in h.input_topics)
            for t in tenants for s in self.stage_topics}
        # Stage topic -> the hosted stages an output on it is handed to in the batch. A
        # stage that decodes its own messages (tracking: two schema families, bodies
        # mostly left as bytes) always reads from Kafka.
        self._handed_to: dict[str, tuple[StageHandler, ...]] = {
            topic: tuple(h for h in self.handlers if topic in h.input_topics and h.decode_message is None)
            for topic in set(self.output_topic_of.values()) - {None}}

    @property
    def has_outputs(self) -> bool:
        return any(topic is not None for topic in self.output_topic_of.values())

    def new_work(self) -> Work:
        return {handler.name: ([], []) for handler in self.handlers}

    def decode_for(self, message: Message, readers: Sequence[StageHandler], work: Work, failures: Failures) -> None:
        """Decode `message` for each stage in `readers`, into `work` or `failures`.

        A stage that reads more than payment events, or reads them without decoding every
        body (tracking), decodes its messages itself; the others share one decoded payment
        event (events are immutable)."""
        shared: Event | UndecodableEvent | None = None
        for handler in readers:
            decode = handler.decode_message
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
                failures.poison.append(Poison(message, exc, handler.name))
                continue
            events, sources = work[handler.name]
            events.append(event)
            sources.append(message)

    def decide(self, work: Work, failures: Failures, pending: list[StartedEffect]) -> tuple[Outputs, TakenBy, int]:
        """Every hosted stage's outputs for the batch, handing outputs on to the hosted
        stages that read them, round by round in flow order.

        Returns the outputs per stage, the stages that took each output event (by event
        id, for its `handled_by` header) and how many events the stages handled. A stage
        that fails on or defers a handed event fills `failures` as for a consumed one:
        its dead letter or retry is produced in the same checkpoint. Effects the stages
        started go to `pending`.
        """
        outputs_of: Outputs = []
        taken_by: TakenBy = {}
        handled = 0
        inbox = work
        for _ in range(HAND_OVER_ROUNDS_MAX):
            round_outputs = []
            for handler in self.handlers:
                events, sources = inbox[handler.name]
                if events:
                    handled += len(events)
                    round_outputs.append((handler, self._decide(handler, events, sources, failures, pending)))
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

    def finish(self, effects: list[StartedEffect], failures: Failures, pending: list[StartedEffect]
               ) -> tuple[Outputs, TakenBy, int]:
        """The outputs of every done effect of a batch, and of the hosted stages they are
        handed to; the count is of the handed events the stages handled."""
        round_outputs: Outputs = []
        for handler, effect, events, sources in effects:
            try:
                results = effect.finish(effect.future.result())
                outputs = self._split_results(handler, results, events, sources, failures, pending)
            except Exception as exc:
                failures.failed(handler, events, sources, exc)
                outputs = []
            round_outputs.append((handler, outputs))
        taken_by: TakenBy = {}
        inbox = self._hand_over(round_outputs, taken_by)
        if inbox is None:
            return round_outputs, taken_by, 0
        outputs_of, more_taken_by, handled = self.decide(inbox, failures, pending)
        return round_outputs + outputs_of, {**taken_by, **more_taken_by}, handled

    def output_records(self, handler: StageHandler, outputs: list[Event], taken_by: TakenBy | None = None
                       ) -> list[Record]:
        if not outputs:
            return []
        output_topic = self.output_topic_of[handler.name]
        if output_topic is None:
            raise RuntimeError(f"stage {handler.name} produced events but has no output topic")
        records = []
        for event in outputs:
            if not isinstance(event, Event):
                # Another schema family (see `decode_for`): the output names its own record.
                records.append(event.kafka_record(self.namer))
                continue
            headers = event_headers(event, self.codec.writer.version)
            takers = taken_by.get(event.event_id) if taken_by else None
            if takers:
                headers.append((HEADER_HANDLED_BY, ",".join(takers).encode()))
            records.append((self.namer.topic(event.tenant_id, output_topic), event.payment_id.encode(),
                            self.codec.encode(event), headers))
        return records

    def _hand_over(self, round_outputs: Outputs, taken_by: TakenBy) -> Work | None:
        """The next round's inbox: each output event for the hosted stages that read it
        (None when there is none). Each stage gets the event decoded from its wire bytes,
        the same event a consumer of the topic would see."""
        inbox: Work | None = None
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
                    inbox = self.new_work()
                for taker in takers:
                    events, sources = inbox[taker.name]
                    events.append(handed)
                    sources.append(source)
        return inbox

    def _decide(self, handler: StageHandler, events: list[Event], sources: list, failures: Failures,
                pending: list[StartedEffect]) -> list[Event]:
        """The stage's outputs for its events of the batch; fills `failures` and `pending`."""
        now = datetime.now(UTC)
        try:
            return self._split_results(handler, handler.handle_batch(events, now), events, sources, failures,
                                       pending)
        except Exception:
            log.exception("stage %s failed on a batch of %d; isolating the failing events",
                          handler.name, len(events), extra={"stage": handler.name})
        # Handle one by one so one bad event cannot hold back the rest of the batch.
        outputs: list[Event] = []
        for event, message in zip(events, sources, strict=True):
            try:
                outputs.extend(self._split_results(handler, handler.handle_batch([event], now), [event], [message],
                                                   failures, pending))
            except Exception as exc:
                failures.failed(handler, [event], [message], exc)
        return outputs

    @staticmethod
    def _split_results(handler: StageHandler, results: list, events: list[Event], sources: list,
                       failures: Failures, pending: list[StartedEffect]) -> list[Event]:
        """Separate the stage's `RetryLater` and `DeadLetter` answers and `Pending` effects
        from its output events."""
        if not any(isinstance(r, (RetryLater, Pending, DeadLetter)) for r in results):
            return results
        source_of = {}
        for event, message in zip(events, sources, strict=True):
            source_of.setdefault(event.event_id, message)
        outputs = []
        for result in results:
            if isinstance(result, RetryLater):
                failures.retry_due.append(RetryDue(source_of[result.event.event_id], result.error_class,
                                                   result.detail, result.not_before, handler.name))
            elif isinstance(result, DeadLetter):
                failures.poison.append(Poison(source_of[result.event.event_id], result.error, handler.name))
            elif isinstance(result, Pending):
                pending.append(StartedEffect(handler, result, events, sources))
            else:
                outputs.append(result)
        return outputs
