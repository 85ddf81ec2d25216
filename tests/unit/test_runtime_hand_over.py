"""Hand-over inside a stage process: a hosted stage's outputs go straight to the hosted
stages that read them, in the same batch and checkpoint, and are still written to their
topics; the process skips them when it reads them back, and reads everything else.

Driven through `process_batch` with the real decision stages (no broker): what is checked
is what the process would produce, and what it does with those records read back.
"""

from __future__ import annotations

from orchestrator.retries import RetryLater
from orchestrator.runtime.hosting import HAND_OVER_ROUNDS_MAX
from orchestrator.stages.base import Stage
from orchestrator.stages.fraud import FraudStage
from orchestrator.stages.initiation import InitiationStage
from orchestrator.stages.routing import RoutingStage
from orchestrator.stages.sanctions import SanctionsStage
from orchestrator.wire import (HEADER_DLQ_ORIGIN_OFFSET, HEADER_DLQ_ORIGIN_TOPIC, HEADER_DLQ_STAGE, HEADER_HANDLED_BY,
                               HEADER_RETRY_DUE_AT_MS, HEADER_RETRY_ORIGIN_TOPIC, HEADER_RETRY_STAGE)
from tests.unit.runtime_fixtures import (CODEC, RecordingCheckpoint, RecordMessage, StandInMessage, headers_of,
                                         produced, runner)
from tests.unit.stage_fixtures import ALLOW, CLEAR, TENANTS, follow, received

RECEIVED = "emea.payments.received.v1"
INITIATED = "emea.payments.initiated.v1"


def decision_stages(tmp_path):
    return (InitiationStage(TENANTS, "test", tmp_path), SanctionsStage(TENANTS, "test"),
            FraudStage(TENANTS, "test", tmp_path), RoutingStage(TENANTS, "test", tmp_path, CODEC))


def by_topic(records) -> dict[str, tuple]:
    assert len({record[0] for record in records}) == len(records), "one record per topic for one payment"
    return {record[0].split(".payments.")[1].removesuffix(".v1"): record for record in records}


def test_a_received_payment_is_decided_through_to_routed_in_one_batch(tmp_path):
    run = runner(*decision_stages(tmp_path))
    payment = received()
    outputs, retry, dead = produced(run, StandInMessage(payment, topic=RECEIVED))
    assert retry == [] and dead == []
    records = by_topic(outputs)
    assert sorted(records) == ["initiated", "routed", "screened.fraud", "screened.sanctions"], \
        "every stage's output is still written to its own topic"
    taken = {topic: headers_of(record).get(HEADER_HANDLED_BY) for topic, record in records.items()}
    assert taken == {"initiated": "sanctions,fraud", "screened.sanctions": "routing", "screened.fraud": "routing",
                     "routed": None}, "each record names the hosted stages that took it"
    routed = CODEC.decode(records["routed"][2])
    assert (routed.event_type, routed.payment_id, routed.payload["rail"]) == ("PaymentRouted", payment.payment_id,
                                                                             "sepa_inst")
    screened = {CODEC.decode(records[t][2]).event_id for t in ("screened.sanctions", "screened.fraud")}
    assert routed.causation_id in screened, "routing joined the two verdicts it was handed"


def test_records_read_back_are_skipped_by_the_stages_that_took_them_and_only_by_them(tmp_path):
    run = runner(*decision_stages(tmp_path))
    outputs, _, _ = produced(run, StandInMessage(received(), topic=RECEIVED))
    records = by_topic(outputs)
    read_back = [RecordMessage(records[topic], offset=offset)
                 for offset, topic in enumerate(("initiated", "screened.sanctions", "screened.fraud"))]
    checkpoint = RecordingCheckpoint()
    run.process_batch(read_back, checkpoint)
    assert checkpoint.records == [], "nothing is decided twice"
    assert sorted(p.topic for p in checkpoint.offsets_of("main")) == sorted(m.topic() for m in read_back), \
        "the skipped records' offsets are still committed"
    assert run.stats.skipped == 3


def test_an_event_another_writer_handed_to_some_stages_is_read_by_the_rest(tmp_path):
    # Written by a process that hosts sanctions but not fraud (another plan, say).
    initiated = follow(received(), "PaymentInitiated", "initiation", {"rail_hint": None})
    message = StandInMessage(initiated, topic=INITIATED, extra_headers=[(HEADER_HANDLED_BY, b"sanctions")])
    outputs, _, _ = produced(runner(*decision_stages(tmp_path)), message)
    assert sorted(by_topic(outputs)) == ["screened.fraud"], "fraud reads it; sanctions and routing wait"


def test_an_event_without_the_header_is_read_by_every_stage_that_reads_the_topic(tmp_path):
    # A replayed dead letter, or an event from a process that hands nothing over.
    initiated = follow(received(), "PaymentInitiated", "initiation", {"rail_hint": None})
    outputs, _, _ = produced(runner(*decision_stages(tmp_path)), StandInMessage(initiated, topic=INITIATED))
    assert sorted(by_topic(outputs)) == ["routed", "screened.fraud", "screened.sanctions"]


class FailingFraud(FraudStage):
    """Fraud with a bug (or a transient fault) on every event."""

    def __init__(self, tmp_path, *, defer: bool = False) -> None:
        super().__init__(TENANTS, "test", tmp_path)
        self.defer = defer
        self.calls = 0

    def handle_batch(self, events, now):
        self.calls += 1
        if self.defer:
            return [RetryLater(event, "TransientError", "rule store unavailable") for event in events]
        raise KeyError("a bug in fraud")


def test_a_stage_failing_on_a_handed_event_dead_letters_it_in_the_same_checkpoint(tmp_path):
    initiation, sanctions, _, routing = decision_stages(tmp_path)
    run = runner(initiation, sanctions, FailingFraud(tmp_path), routing)
    outputs, retry, (dead,) = produced(run, StandInMessage(received(), topic=RECEIVED))
    assert retry == []
    records = by_topic(outputs)
    assert sorted(records) == ["initiated", "screened.sanctions"], "sanctions still decides"
    assert headers_of(records["initiated"])[HEADER_HANDLED_BY] == "sanctions,fraud", \
        "fraud's outcome (the dead letter) is in this checkpoint: it must not meet the event again"
    headers = headers_of(dead)
    assert (dead[0], headers[HEADER_DLQ_STAGE], headers[HEADER_DLQ_ORIGIN_TOPIC]) == (
        INITIATED + ".dlq", "fraud", INITIATED)
    assert headers[HEADER_DLQ_ORIGIN_OFFSET] == "-1", "not produced yet when it failed"
    assert dead[1:3] == records["initiated"][1:3], "the event's own key and bytes, for replay"
    assert HEADER_HANDLED_BY not in headers, "a replay reaches every stage that reads the topic"


def test_a_stage_deferring_a_handed_event_retries_it_in_the_same_checkpoint(tmp_path):
    initiation, sanctions, _, routing = decision_stages(tmp_path)
    run = runner(initiation, sanctions, FailingFraud(tmp_path, defer=True), routing)
    outputs, (retry,), dead = produced(run, StandInMessage(received(), topic=RECEIVED))
    assert dead == []
    initiated = by_topic(outputs)["initiated"]
    headers = headers_of(retry)
    assert (retry[0], headers[HEADER_RETRY_STAGE], headers[HEADER_RETRY_ORIGIN_TOPIC]) == (
        INITIATED + ".retry.1", "fraud", INITIATED)
    assert retry[2] == initiated[2] and HEADER_HANDLED_BY not in headers

    # The retry, once due, goes to fraud alone, as any retry does.
    fraud = FraudStage(TENANTS, "test", tmp_path)
    outputs, _, _ = produced(runner(initiation, sanctions, fraud, routing),
                             RecordMessage(retry, headers=[*retry[3][:-1], (HEADER_RETRY_DUE_AT_MS, b"0")]))
    assert sorted(by_topic(outputs)) == ["routed", "screened.fraud"], "routing joins the late verdict"


class Echo(Stage):
    """A stage that answers every event with a verdict of its own: two of them, each
    reading the other's topic, make a loop no real plan has."""

    def __init__(self, name: str, reads: str) -> None:
        self.name, self.input_topics = name, (reads,)
        self.seen = 0

    def handle_batch(self, events, now):
        self.seen += len(events)
        if self.name == "sanctions":
            return [follow(event, "SanctionsScreened", self.name, CLEAR) for event in events]
        return [follow(event, "FraudScored", self.name, ALLOW) for event in events]


def test_a_loop_in_the_plan_stops_handing_over_after_a_bound_and_leaves_the_rest_to_kafka():
    sanctions, fraud = Echo("sanctions", "screened.fraud"), Echo("fraud", "screened.sanctions")
    verdict = follow(received(), "FraudScored", "fraud", ALLOW)
    outputs, _, _ = produced(runner(sanctions, fraud), StandInMessage(verdict, topic="emea.payments.screened.fraud.v1"))
    assert (sanctions.seen, fraud.seen) == (HAND_OVER_ROUNDS_MAX // 2, HAND_OVER_ROUNDS_MAX // 2)
    assert len(outputs) == HAND_OVER_ROUNDS_MAX, "every output is still written"
    assert all(HEADER_HANDLED_BY in headers_of(record) for record in outputs[:-1])
    assert HEADER_HANDLED_BY not in headers_of(outputs[-1]), "the event not handed over is read back from Kafka"


def test_the_handed_event_is_the_one_a_consumer_would_decode(tmp_path):
    seen = []

    class Watching(SanctionsStage):
        def handle_batch(self, events, now):
            seen.extend(events)
            return super().handle_batch(events, now)

    run = runner(InitiationStage(TENANTS, "test", tmp_path), Watching(TENANTS, "test"))
    outputs, _, _ = produced(run, StandInMessage(received(), topic=RECEIVED))
    (handed,) = seen
    assert handed == CODEC.decode(by_topic(outputs)["initiated"][2])
    assert handed.schema_version == CODEC.writer.version, "decoded from the produced bytes, not the object"
