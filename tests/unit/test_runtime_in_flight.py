"""In-flight batches: a batch whose clearing calls are out waits, with every batch
consumed after it, and joins the checkpoint in consumption order once the calls answer;
its outcomes are handed over like any output; a failed effect dead-letters its events;
a batch given up is read again."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime

from orchestrator.effects import Pending
from orchestrator.runtime import in_flight
from orchestrator.runtime.clients import StageClients
from orchestrator.stages.base import Stage
from orchestrator.wire import HEADER_HANDLED_BY
from tests.unit.runtime_fixtures import (RecordingCheckpoint, StandInConsumer, StandInMessage, StandInProducer,
                                         headers_of, runner)
from tests.unit.test_execution_stage import HeldRail, routed_and_reserved, stage

ROUTED = "emea.payments.routed.v1"
POSTED = "emea.payments.posted.v1"
EXECUTED = "emea.payments.executed.v1"


class SeesExecuted(Stage):
    """A hosted reader of execution's outcomes (as settlement is in the default plan)."""

    name = "settlement"
    input_topics = ("executed",)

    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle_batch(self, events, now):
        self.seen += [event.event_type for event in events]
        return []


def fresh_routed_and_reserved(index: int = 0):
    """A payment routed and funded just now: the runtime decides with the wall clock,
    and a payment routed longer ago than its rail's time limit is failed, not sent."""
    routed, reserved = routed_and_reserved(index)
    now = datetime.now(UTC)
    return replace(routed, occurred_at=now), replace(reserved, occurred_at=now)


def both_halves(index: int = 0, offsets=(3, 5)):
    routed, reserved = fresh_routed_and_reserved(index)
    return [StandInMessage(routed, topic=ROUTED, offset=offsets[0]),
            StandInMessage(reserved, topic=POSTED, offset=offsets[1])]


def test_a_batch_waits_for_its_calls_and_the_batches_after_it_wait_behind_it(tmp_path):
    rail = HeldRail()
    settles = SeesExecuted()
    run = runner(stage(tmp_path, rail), settles)
    checkpoint = RecordingCheckpoint()
    run.process_batch(both_halves(), checkpoint)
    assert len(rail.out) == 1, "the call went out without waiting for the loop"
    # A later batch that starts no call still waits: offsets are committed in order.
    later_routed, _ = fresh_routed_and_reserved(1)
    run.process_batch([StandInMessage(later_routed, topic=ROUTED, offset=4)], checkpoint)
    run.complete_in_flight(checkpoint)
    assert checkpoint.records == [] and checkpoint.offsets == {"main": {}, "retry": {}}

    rail.answer_all()
    run.complete_in_flight(checkpoint)
    (executed,) = checkpoint.records
    assert executed[0] == EXECUTED
    assert headers_of(executed)[HEADER_HANDLED_BY] == "settlement" and settles.seen == ["PaymentExecuted"]
    assert checkpoint.offsets["main"] == {(ROUTED, 2): 5, (POSTED, 2): 6}


def test_a_batch_without_effects_goes_straight_into_the_checkpoint(tmp_path):
    run = runner(stage(tmp_path, HeldRail()), SeesExecuted())
    checkpoint = RecordingCheckpoint()
    routed, _ = fresh_routed_and_reserved()
    run.process_batch([StandInMessage(routed, topic=ROUTED, offset=3)], checkpoint)
    assert checkpoint.offsets["main"] == {(ROUTED, 2): 4}


class BrokenRail(HeldRail):
    def submit_many_async(self, requests):
        failed: Future = Future()
        failed.set_exception(RuntimeError("the clearing client broke"))
        return failed


def test_an_effect_that_fails_dead_letters_the_events_of_the_batch_that_started_it(tmp_path):
    run = runner(stage(tmp_path, BrokenRail()), SeesExecuted())
    checkpoint = RecordingCheckpoint()
    run.process_batch(both_halves(), checkpoint)
    run.complete_in_flight(checkpoint)
    assert sorted(r[0] for r in checkpoint.records) == [POSTED + ".dlq", ROUTED + ".dlq"]
    assert {headers_of(r)["payorch.dlq.error_class"] for r in checkpoint.records} == {"RuntimeError"}
    assert checkpoint.offsets["main"] == {(ROUTED, 2): 4, (POSTED, 2): 6}


def test_a_batch_given_up_leaves_nothing_and_its_events_start_the_call_again(tmp_path):
    rail = HeldRail()
    execution = stage(tmp_path, rail)
    run = runner(execution, SeesExecuted())
    checkpoint = RecordingCheckpoint()
    run.process_batch(both_halves(), checkpoint)
    run.rewind()  # an aborted transaction; a revoked assignment gives the batches up too
    rail.answer_all()
    run.complete_in_flight(checkpoint)
    assert checkpoint.records == [] and checkpoint.offsets == {"main": {}, "retry": {}}

    run.process_batch(both_halves(), checkpoint)  # read again from the committed offsets
    assert len(rail.out) == 2
    rail.answer_all()
    run.complete_in_flight(checkpoint)
    assert [r[0] for r in checkpoint.records] == [EXECUTED]


def test_the_effect_a_stage_returns_is_not_an_output(tmp_path):
    rail = HeldRail()
    routed, reserved = routed_and_reserved()
    (effect,) = stage(tmp_path, rail).handle_batch([routed, reserved], routed.occurred_at)
    assert isinstance(effect, Pending)


def test_with_the_queue_full_the_loop_waits_for_the_oldest_batch_instead_of_consuming(tmp_path, monkeypatch):
    monkeypatch.setattr(in_flight, "IN_FLIGHT_BATCHES_MAX", 1)
    rail = HeldRail()
    consumer = StandInConsumer()
    run = runner(stage(tmp_path, rail), SeesExecuted(), clients=StageClients(consumer, StandInProducer()))
    checkpoint = RecordingCheckpoint()
    run.process_batch(both_halves(), checkpoint)
    assert run.next_messages(0.01, checkpoint) == [] and consumer.polls == []
    rail.answer_all()
    assert run.next_messages(0.01, checkpoint) == [] and consumer.polls == []
    assert [r[0] for r in checkpoint.records] == [EXECUTED], "the oldest batch was waited for"
    run.next_messages(0.01, checkpoint)
    assert consumer.polls == [0.01], "with room in the queue the loop consumes again"
