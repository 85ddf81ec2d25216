"""Several stages in one process: each still reads its own inputs and writes its own topic.

Driven through `process_batch` with stand-in messages (tests/unit/runtime_fixtures.py),
so what is checked is what the process would produce and commit.
"""

from __future__ import annotations

import pydantic
import pytest

from orchestrator.bootstrap import STAGE_NAMES, in_flow_order
from orchestrator.topics import REQUIRED_STAGES
from orchestrator.settings import KafkaSettings, Settings
from orchestrator.stages.base import Stage
from orchestrator.topics import process_name
from orchestrator.wire import (HEADER_DLQ_ERROR_CLASS, HEADER_DLQ_STAGE, HEADER_RETRY_ATTEMPT,
                               HEADER_RETRY_ORIGIN_TOPIC, HEADER_RETRY_STAGE)
from tests.unit.runtime_fixtures import CODEC, StandInMessage, headers_of, produced, runner
from tests.unit.stage_fixtures import follow, received

INITIATED = "emea.payments.initiated.v1"


class RecordingStage(Stage):
    """A stage that answers each event with one event of its own, and remembers what it saw."""

    def __init__(self, name: str, input_topics: tuple[str, ...], *, event_types: frozenset[str] | None = None,
                 fail: bool = False) -> None:
        self.name = name
        self.input_topics = input_topics
        self.input_event_types = event_types
        self.fail = fail
        self.seen: list = []
        self.closed = False

    def handle_batch(self, events, now):
        self.seen.extend(events)
        if self.fail:
            raise KeyError("a bug in " + self.name)
        return [follow(event, "SanctionsScreened" if self.name == "sanctions" else "FraudScored", self.name,
                       {"outcome": "CLEAR", "best_score": 0.0, "matched_list": None, "matched_entry_id": None,
                        "matched_party": None} if self.name == "sanctions" else
                       {"outcome": "ALLOW", "score": 0, "rules_triggered": []}) for event in events]

    def close(self):
        self.closed = True


def initiated_message(offset: int = 3, **kwargs) -> StandInMessage:
    event = follow(received(), "PaymentInitiated", "initiation", {})
    return StandInMessage(event, topic=INITIATED, offset=offset, **kwargs)


def screening_pair(**fraud_options):
    return RecordingStage("sanctions", ("initiated",)), RecordingStage("fraud", ("initiated",), **fraud_options)


def test_two_stages_reading_one_topic_each_decide_and_write_their_own_topic():
    sanctions, fraud = screening_pair()
    run = runner(sanctions, fraud)
    assert run.name == "sanctions+fraud"
    assert run.input_topics == [INITIATED], "a topic two hosted stages read is consumed once"
    outputs, retry, dead = produced(run, initiated_message())
    assert retry == [] and dead == []
    assert sorted(record[0] for record in outputs) == ["emea.payments.screened.fraud.v1",
                                                      "emea.payments.screened.sanctions.v1"]
    assert len(sanctions.seen) == len(fraud.seen) == 1
    assert sanctions.seen[0] is fraud.seen[0], "the message is decoded once for both"
    run.close()
    assert sanctions.closed and fraud.closed


def test_a_retry_goes_back_only_to_the_stage_that_asked_for_it():
    sanctions, fraud = screening_pair()
    message = initiated_message()
    retry_message = StandInMessage(CODEC.decode(message.value()), topic=INITIATED + ".retry.1", extra_headers=[
        (HEADER_RETRY_ATTEMPT, b"1"), (HEADER_RETRY_ORIGIN_TOPIC, INITIATED.encode()), (HEADER_RETRY_STAGE, b"fraud")])
    outputs, _, _ = produced(runner(sanctions, fraud), retry_message)
    assert (len(sanctions.seen), len(fraud.seen)) == (0, 1)
    assert [record[0] for record in outputs] == ["emea.payments.screened.fraud.v1"]


def test_one_hosted_stage_failing_dead_letters_for_that_stage_only():
    sanctions, fraud = screening_pair(fail=True)
    outputs, retry, (dead,) = produced(runner(sanctions, fraud), initiated_message())
    assert [record[0] for record in outputs] == ["emea.payments.screened.sanctions.v1"], "sanctions still decides"
    headers = headers_of(dead)
    assert dead[0] == INITIATED + ".dlq" and retry == []
    assert (headers[HEADER_DLQ_STAGE], headers[HEADER_DLQ_ERROR_CLASS]) == ("fraud", "KeyError")


def test_an_undecodable_message_is_dead_lettered_once_per_stage_that_reads_it():
    sanctions, fraud = screening_pair()
    message = initiated_message()
    message._value = b"\xc3\x01" + b"\x00" * 8 + b"garbage"
    outputs, _, dead = produced(runner(sanctions, fraud), message)
    assert outputs == [] and sanctions.seen == fraud.seen == []
    assert sorted(headers_of(record)[HEADER_DLQ_STAGE] for record in dead) == ["fraud", "sanctions"]
    assert all(record[2] == message.value() for record in dead), "the original bytes, for replay"


def test_each_hosted_stage_gets_only_the_event_types_it_reads():
    sanctions = RecordingStage("sanctions", ("initiated",), event_types=frozenset({"PaymentInitiated"}))
    fraud = RecordingStage("fraud", ("initiated",), event_types=frozenset({"SomethingElse"}))
    outputs, _, _ = produced(runner(sanctions, fraud), initiated_message())
    assert (len(sanctions.seen), len(fraud.seen)) == (1, 0)
    assert len(outputs) == 1


def test_the_offsets_of_a_batch_cover_every_message_once_whoever_read_it():
    from tests.unit.runtime_fixtures import RecordingCheckpoint

    sanctions, fraud = screening_pair()
    checkpoint = RecordingCheckpoint()
    runner(sanctions, fraud).process_batch([initiated_message(offset=3), initiated_message(offset=4)], checkpoint)
    assert checkpoint.offsets_of("main")[0].offset == 5 and len(checkpoint.offsets_of("main")) == 1


def test_a_process_is_named_by_its_stages_in_flow_order():
    assert process_name(["ledger"]) == "ledger", "one stage keeps its own name, group and transactional id"
    assert process_name(in_flow_order(["routing", "fraud"])) == "fraud+routing"
    with pytest.raises(ValueError, match="unknown stage 'screening'"):
        in_flow_order(["screening"])
    with pytest.raises(ValueError, match="twice"):
        in_flow_order(["fraud", "fraud"])


def kafka() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="127.0.0.1:1")


def test_up_plans_every_stage_exactly_once_and_keeps_parallel_stages_apart():
    plan = Settings(kafka=kafka()).stage_processes
    assert sorted(stage for process in plan for stage in process) == sorted(REQUIRED_STAGES)
    home = {stage: index for index, process in enumerate(plan) for stage in process}
    assert home["sanctions"] != home["fraud"], "the screenings run concurrently, in their own groups"
    assert home["execution"] != home["ledger"], "the reservation runs concurrently with execution"
    # Hand-over shortens a payment's path to settled: the stages that follow each other
    # without a concurrency rule between them share a process.
    assert home["routing"] == home["ledger"], "routing's decision reserves the funds in its own checkpoint"
    assert home["execution"] == home["settlement"], "execution's result is settled in its own checkpoint"


@pytest.mark.parametrize("plan, message", [
    ((("initiation", "sanctions", "fraud", "routing"), ("execution", "ledger", "settlement")), "leaves out tracking"),
    ((("initiation", "sanctions", "fraud", "routing", "tracking"), ("execution", "ledger", "settlement", "fraud")),
     "twice"),
    (((), tuple(STAGE_NAMES)), "empty"),
    ((("screening",), tuple(STAGE_NAMES)), "unknown stage"),
])
def test_a_plan_that_loses_or_doubles_a_stage_is_refused(plan, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        Settings(kafka=kafka(), stage_processes=plan)


def test_a_plan_is_put_in_flow_order():
    plan = Settings(kafka=kafka(), stage_processes=(("tracking",), ("settlement", "execution", "ledger", "routing",
                                                                    "fraud", "sanctions", "initiation"))).stage_processes
    assert plan[1] == ("initiation", "sanctions", "fraud", "routing", "execution", "ledger", "settlement")
