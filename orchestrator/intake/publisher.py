"""Publishing received payments from the async intake, acknowledged before we answer.

confluent-kafka delivers acknowledgements on whichever thread polls the producer; one
background thread polls, and each acknowledgement resolves the asyncio future of the
request waiting for it. A request gets its 202 only after the broker has the event
on all in-sync replicas (acks=all).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from confluent_kafka import KafkaError, Message, Producer

from orchestrator.events import Event, EventCodec
from orchestrator.runtime import event_headers
from orchestrator.topics import TopicNamer

# How long the poll thread blocks per call; it only bounds shutdown latency.
_POLL_INTERVAL_S = 0.05
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(_POLL_INTERVAL_S)

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
        for attempt in range(1, UNCONFIRMED_SEND_ATTEMPTS_MAX + 1):
            futures = [self._send(loop, events[i], stage_topic) for i in pending]
            remaining_s = deadline - loop.time()
            try:
                results = await asyncio.wait_for(asyncio.gather(*futures), max(remaining_s, 0.001))
            except TimeoutError:
                raise PublishError(f"broker did not acknowledge within {timeout_s}s") from None
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

    async def _send(self, loop: asyncio.AbstractEventLoop, event: Event, stage_topic: str) -> tuple[int, int]:
        future: asyncio.Future = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_resolve, future, err, (msg.partition(), msg.offset()))

        topic = self.namer.topic(event.tenant_id, stage_topic)
        value = self.codec.encode(event)
        headers = event_headers(event, self.codec.writer.version)
        while True:
            try:
                self.producer.produce(topic, key=event.payment_id.encode(), value=value, headers=headers,
                                      on_delivery=on_delivery)
                return await future
            except BufferError:
                # Local queue full under a burst: back-pressure the request, not the loop.
                await asyncio.sleep(0.01)

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.producer.flush(timeout_s)


def _resolve(future: asyncio.Future, err: KafkaError | None, position: tuple[int, int]) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(position)
    else:
        future.set_exception(PublishError(str(err)))
