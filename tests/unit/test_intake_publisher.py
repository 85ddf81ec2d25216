"""The intake's publisher: acknowledgements served by the event loop, on a fake producer."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.events import EventCodec
from orchestrator.intake.publisher import (
    ACK_POLL_INTERVAL_S,
    UNCONFIRMED_SEND_ATTEMPTS_MAX,
    EventPublisher,
    PublishError,
)
from orchestrator.settings import REPO_ROOT
from orchestrator.topics import TopicNamer
from tests.unit.intake_fakes import FakeProducer, refused
from tests.unit.stage_fixtures import received

CODEC = EventCodec(REPO_ROOT / "schemas")
NAMER = TopicNamer("{tenant}.payments.{stage}.v1")


def publish(producer: FakeProducer, events, timeout_s: float = 2.0):
    async def run():
        publisher = EventPublisher(producer, CODEC, NAMER)
        try:
            return await publisher.publish(events, "received", timeout_s)
        finally:
            publisher.close()

    return asyncio.run(run())


def test_each_event_is_acknowledged_with_where_the_broker_stored_it():
    producer = FakeProducer(partition=4)
    events = [received("emea"), received("na")]
    assert publish(producer, events) == [(4, 10), (4, 20)]
    assert [p.topic for p in producer.produced] == ["emea.payments.received.v1", "na.payments.received.v1"]
    assert producer.produced[0].key == events[0].payment_id.encode()
    assert CODEC.decode(producer.produced[0].value) == events[0]
    assert ("event_type", b"PaymentReceived") in producer.produced[0].headers


def test_the_loop_polls_only_while_an_acknowledgement_is_awaited():
    async def run():
        producer = FakeProducer()
        publisher = EventPublisher(producer, CODEC, NAMER)
        await publisher.publish([received()], "received", 2.0)
        polls_when_answered = producer.polls
        await asyncio.sleep(ACK_POLL_INTERVAL_S * 20)
        return polls_when_answered, producer.polls

    when_answered, later = asyncio.run(run())
    assert when_answered >= 1
    assert later == when_answered


def test_a_refused_event_raises_publish_error():
    producer = FakeProducer()
    producer.answers.append(refused("Broker: Not enough in-sync replicas"))
    with pytest.raises(PublishError, match="in-sync replicas"):
        publish(producer, [received()])


def test_no_acknowledgement_in_time_raises_publish_error_and_a_late_one_is_harmless():
    async def run():
        producer = FakeProducer(silent=True)
        publisher = EventPublisher(producer, CODEC, NAMER)
        with pytest.raises(PublishError, match="did not acknowledge within"):
            await publisher.publish([received()], "received", 0.05)
        producer.silent = False
        await asyncio.sleep(ACK_POLL_INTERVAL_S * 5)  # the late report is served, and ignored
        return producer

    producer = asyncio.run(run())
    assert not producer._awaiting_report


def test_an_acknowledgement_without_an_offset_is_sent_again():
    producer = FakeProducer()
    producer.answers.extend([(None, None), (None, -1), (None, 77)])
    event = received()
    assert publish(producer, [event]) == [(3, 77)]
    assert len(producer.produced) == 3
    assert {p.value for p in producer.produced} == {CODEC.encode(event)}


def test_only_the_unconfirmed_events_of_a_batch_are_sent_again():
    producer = FakeProducer()
    producer.answers.extend([(None, 5), (None, None), (None, 9)])
    events = [received("emea"), received("na")]
    assert publish(producer, events) == [(3, 5), (3, 9)]
    assert [p.key for p in producer.produced] == [e.payment_id.encode() for e in (events[0], events[1], events[1])]


def test_offsetless_acknowledgements_give_up_after_the_attempts_allowed():
    producer = FakeProducer()
    producer.answers.extend([(None, None)] * UNCONFIRMED_SEND_ATTEMPTS_MAX)
    with pytest.raises(PublishError, match="without an offset"):
        publish(producer, [received()])
    assert len(producer.produced) == UNCONFIRMED_SEND_ATTEMPTS_MAX


def test_a_full_local_queue_holds_the_send_back_until_there_is_room():
    producer = FakeProducer(full_queue_rejections=2)
    assert publish(producer, [received()]) == [(3, 10)]
    assert len(producer.produced) == 1


def test_close_flushes_the_producer():
    producer = FakeProducer()
    publish(producer, [received()])
    assert producer.flushed


def test_a_queue_that_stays_full_gives_up_at_the_publish_timeout():
    producer = FakeProducer(full_queue_rejections=10**6)
    with pytest.raises(PublishError, match="did not acknowledge within"):
        publish(producer, [received()], timeout_s=0.05)
    assert producer.produced == []
