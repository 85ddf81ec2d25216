"""Publishing received payments from the async intake, acknowledged before we answer.

confluent-kafka delivers acknowledgements on whichever thread polls the producer. The
event loop polls it itself, without blocking (`poll(0)`), every millisecond while any
event awaits its acknowledgement, and not at all while none does; each acknowledgement
then resolves the waiting request's future on the spot. A poll thread, as before, had
to take the GIL for each acknowledgement and then wake the loop. On our 2-core VMs
waking a sleeping thread costs 50-75 µs of CPU, more than handling the acknowledgement,
and without the poll thread the intake's threads wake 1.5 to 2 fewer times per payment.
A request gets its 202 only after the broker has the event on all in-sync replicas
(acks=all).
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaError, Message, Producer

from orchestrator.events import Event, EventCodec
from orchestrator.wire import event_headers
from orchestrator.topics import TopicNamer

# How often the loop serves acknowledgements while some are awaited. The broker takes a
# few milliseconds to acknowledge (linger, then acks=all): polling more often would
# mostly find nothing, and less often would add latency to every answer.
ACK_POLL_INTERVAL_S = 0.001
# How long a send waits for room when the producer's local queue is full.
QUEUE_FULL_BACKOFF_S = 0.01
# Sends of one event whose acknowledgement carried no offset, before the intake gives up.
UNCONFIRMED_SEND_ATTEMPTS_MAX = 3

log = logging.getLogger("payorch.intake.publisher")


class PublishError(RuntimeError):
    pass


class EventPublisher:
    def __init__(self, producer: Producer, codec: EventCodec, namer: TopicNamer) -> None:
        self.producer = producer
        self.codec = codec
        self.namer = namer
        # Sends whose delivery report has not been served yet; polling stops at zero.
        self._unacknowledged = 0
        self._poll_timer: asyncio.TimerHandle | None = None

    async def publish(self, events: list[Event], stage_topic: str, timeout_s: float) -> list[tuple[int, int]]:
        """Publish and wait for every acknowledgement; (partition, offset) of each event.

        An acknowledgement without an offset is not trusted: in crash drills under CPU
        starvation, librdkafka reported success with no offset for events that were then
        never found in the log. Such events are sent again (same key, same event id, so
        a copy that did land is a harmless duplicate) until the broker names an offset.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        positions: list[tuple[int, int] | None] = [None] * len(events)
        pending = list(range(len(events)))
        timeout_error = PublishError(f"broker did not acknowledge within {timeout_s}s")
        for attempt in range(1, UNCONFIRMED_SEND_ATTEMPTS_MAX + 1):
            acks = [await self._send(loop, events[i], stage_topic, deadline, timeout_error) for i in pending]
            results = await _results_before(loop, deadline, acks, timeout_error)
            unconfirmed = []
            for index, position in zip(pending, results, strict=True):
                if position[1] is None or position[1] < 0:
                    unconfirmed.append(index)
                else:
                    positions[index] = position
            if not unconfirmed:
                return positions  # type: ignore[return-value]
            log.warning("broker acknowledged %d events without an offset; sending them again (attempt %d)",
                        len(unconfirmed), attempt,
                        extra={"correlation_id": events[unconfirmed[0]].correlation_id,
                               "tenant_id": events[unconfirmed[0]].tenant_id})
            pending = unconfirmed
        raise PublishError("broker acknowledged without an offset repeatedly")

    async def _send(self, loop: asyncio.AbstractEventLoop, event: Event, stage_topic: str, deadline: float,
                    timeout_error: PublishError) -> asyncio.Future:
        """Hand the event to the producer; returns the future of its (partition, offset)."""
        ack: asyncio.Future = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._unacknowledged -= 1
            _resolve(ack, err, msg)

        topic = self.namer.topic(event.tenant_id, stage_topic)
        value = self.codec.encode(event)
        headers = event_headers(event, self.codec.writer.version)
        while True:
            try:
                self.producer.produce(topic, key=event.payment_id.encode(), value=value, headers=headers,
                                      on_delivery=on_delivery)
                break
            except BufferError:
                # Local queue full under a burst: back-pressure the request, not the loop
                # (the poll timer keeps serving acknowledgements meanwhile).
                if loop.time() >= deadline:
                    raise timeout_error from None
                await asyncio.sleep(QUEUE_FULL_BACKOFF_S)
        self._unacknowledged += 1
        if self._poll_timer is None:
            self._poll_timer = loop.call_later(ACK_POLL_INTERVAL_S, self._serve_acks, loop)
        return ack

    def _serve_acks(self, loop: asyncio.AbstractEventLoop) -> None:
        self._poll_timer = None
        try:
            self.producer.poll(0)
        finally:
            if self._unacknowledged > 0:
                self._poll_timer = loop.call_later(ACK_POLL_INTERVAL_S, self._serve_acks, loop)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is still queued; its delivery reports are served here."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        self.producer.flush(timeout_s)


async def _results_before(loop: asyncio.AbstractEventLoop, deadline: float, acks: list[asyncio.Future],
                          timeout_error: PublishError) -> list[tuple[int, int]]:
    """The acknowledgements' results in order, or the first error; `timeout_error` for
    those still unanswered at `deadline`. One timer for them all, where wait_for and
    gather cost a task, a timer and callbacks per request."""
    expiry = loop.call_at(max(deadline, loop.time() + 0.001), _fail_unanswered, acks, timeout_error)
    try:
        return [await ack for ack in acks]
    finally:
        expiry.cancel()
        for ack in acks:
            if not ack.done():
                ack.cancel()  # its report, should it still come, is ignored
            elif not ack.cancelled():
                ack.exception()  # seen: the request reports one failure, not one per event


def _fail_unanswered(acks: list[asyncio.Future], error: PublishError) -> None:
    for ack in acks:
        if not ack.done():
            ack.set_exception(error)


def _resolve(ack: asyncio.Future, err: KafkaError | None, msg: Message) -> None:
    if ack.done():  # its request stopped waiting
        return
    if err is None:
        ack.set_result((msg.partition(), msg.offset()))
    else:
        ack.set_exception(PublishError(str(err)))
