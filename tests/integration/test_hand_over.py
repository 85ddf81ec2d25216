"""Hand-over on the real broker, in `payorch up`'s default plan of stage processes.

A hosted stage's outputs reach the hosted stages that read them in the same transaction,
and every event is still on its topic with a `payorch.handled_by` header naming those
stages. A record without the header on such a topic (a replayed dead letter, or one
written by another plan's process) is still read by every stage that reads the topic.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from orchestrator.samples import sample_body
from orchestrator.settings import Settings
from orchestrator.topics import TopicNamer
from orchestrator.wire import HEADER_EVENT_ID, HEADER_HANDLED_BY
from tests.harness import System

pytestmark = pytest.mark.integration

TENANT = "emea"
ONE_OF_EACH = ("PaymentReceived", "PaymentInitiated", "SanctionsScreened", "FraudScored", "PaymentRouted",
               "PaymentExecuted", "FundsPosted", "PaymentSettled")


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    plan = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes
    running = System(kafka_bootstrap, tmp_path_factory.mktemp("hand-over"), stage_processes=plan)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def records_of(system: System, stage_topic: str, payment_id: str, *, at_least: int = 1,
               timeout_s: float = 30) -> list:
    """The committed records of one payment on one of the tenant's topics, from the start."""
    settings = system.settings()
    topic = TopicNamer(settings.topic_template).topic(TENANT, stage_topic)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"test-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        found, deadline = [], time.monotonic() + timeout_s
        while len(found) < at_least and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and message.key() == payment_id.encode():
                found.append(message)
        return found
    finally:
        consumer.close()


def headers(message) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in message.headers() or ()}


def settle_one(system: System) -> str:
    answer = system.post(TENANT, sample_body(TENANT))
    assert answer.status_code == 202, answer.text
    payment_id = answer.json()["payment_id"]
    record = system.wait_terminal({payment_id: TENANT}, timeout_s=60)[payment_id]
    assert record["status"] == "SETTLED", record
    return payment_id


def timeline_types(system: System, payment_id: str) -> list[str]:
    return [step["event_type"] for step in system.get(TENANT, payment_id).json()["timeline"]]


def test_every_event_is_on_its_topic_and_names_the_hosted_stages_that_took_it(system):
    payment_id = settle_one(system)
    expected = {"initiated": "sanctions", "screened.sanctions": "routing", "routed": "ledger",
                "executed": "settlement", "screened.fraud": None, "settled": None}
    for stage_topic, taken_by in expected.items():
        (message,) = records_of(system, stage_topic, payment_id)
        assert headers(message).get(HEADER_HANDLED_BY) == taken_by, (stage_topic, headers(message))
    deadline = time.monotonic() + 20
    while "FundsPosted" not in (types := timeline_types(system, payment_id)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the ledger posts concurrently with settlement
    for event_type in ONE_OF_EACH:
        assert types.count(event_type) == 1, (event_type, types)


def test_a_record_without_the_header_is_read_again_by_the_stages_that_had_it_handed(system):
    payment_id = settle_one(system)
    (initiated,) = records_of(system, "initiated", payment_id)
    replay = [(k, v) for k, v in initiated.headers() if k != HEADER_HANDLED_BY] + [("payorch.replayed_from", b"test")]
    producer = Producer({"bootstrap.servers": system.settings().kafka.bootstrap_servers})
    producer.produce(initiated.topic(), key=initiated.key(), value=initiated.value(), headers=replay)
    producer.flush(10)
    # Sanctions (hosted with initiation) reads it from Kafka this time and decides again:
    # the same verdict, with the same event id, is written a second time.
    first, again = records_of(system, "screened.sanctions", payment_id, at_least=2)
    assert headers(first)[HEADER_EVENT_ID] == headers(again)[HEADER_EVENT_ID]
    assert HEADER_HANDLED_BY in headers(again), "and handed to routing in its own process again"
    # Routing decides again from the same verdicts and execution answers with the outcome it
    # recorded: the same events travel the flow once more, with the same ids...
    first, again = records_of(system, "executed", payment_id, at_least=2)
    assert headers(first)[HEADER_EVENT_ID] == headers(again)[HEADER_EVENT_ID]
    # ...and nothing doubles: the payment stays settled, each event once on its timeline
    # (tracking trails the flow by its 100 ms fetch wait).
    time.sleep(1)
    assert system.get(TENANT, payment_id).json()["status"] == "SETTLED"
    types = timeline_types(system, payment_id)
    for event_type in ONE_OF_EACH:
        assert types.count(event_type) == 1, (event_type, types)
    verify = system.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
