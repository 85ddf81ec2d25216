"""A transactional checkpoint that holds only offsets waits for the next one with records.

A process reads back every record it handed over and skips it; committing those offsets
in a transaction of their own would double the process's transactions for nothing. Driven
through `run_checkpoint` with a scripted poll and recording checkpoints (no broker).
"""

from __future__ import annotations

from confluent_kafka import TopicPartition

from orchestrator import runtime
from orchestrator.stages.initiation import InitiationStage
from orchestrator.stages.sanctions import SanctionsStage
from orchestrator.wire import HEADER_HANDLED_BY
from tests.unit.runtime_fixtures import RecordingCheckpoint, StandInMessage, runner
from tests.unit.stage_fixtures import TENANTS, follow, received

RECEIVED = "emea.payments.received.v1"
INITIATED = "emea.payments.initiated.v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def scripted(tmp_path, monkeypatch):
    """A transactional runner whose polls return what the test queues, and whose
    checkpoints are recorded (committed ones in `committed`)."""
    run = runner(InitiationStage(TENANTS, "test", tmp_path), SanctionsStage(TENANTS, "test"))
    run.transactional = True
    queue: list[list] = []
    committed: list[RecordingCheckpoint] = []

    class Committing(RecordingCheckpoint):
        def commit(self) -> bool:
            committed.append(self)
            return True

    monkeypatch.setattr(run, "_poll", lambda timeout_s: queue.pop(0) if queue else [])
    monkeypatch.setattr(run, "new_checkpoint", Committing)
    clock = Clock()
    monkeypatch.setattr(runtime.time, "monotonic", clock)
    return run, queue, committed, clock


def read_back(offset: int) -> StandInMessage:
    """An `initiated` record this process wrote and handed to sanctions itself."""
    initiated = follow(received(), "PaymentInitiated", "initiation", {"rail_hint": None})
    return StandInMessage(initiated, topic=INITIATED, offset=offset, extra_headers=[(HEADER_HANDLED_BY, b"sanctions")])


def test_skipped_offsets_ride_with_the_next_checkpoint_that_has_records(tmp_path, monkeypatch):
    run, queue, committed, _ = scripted(tmp_path, monkeypatch)
    queue.append([read_back(offset=40)])
    run.run_checkpoint()
    assert committed == [], "no transaction for offsets alone"
    queue.append([StandInMessage(received(), topic=RECEIVED, offset=9)])
    run.run_checkpoint()
    (checkpoint,) = committed
    assert checkpoint.record_count == 2, "initiated and screened.sanctions"
    assert sorted((p.topic, p.offset) for p in checkpoint.offsets_of("main")) == sorted([(RECEIVED, 10), (INITIATED, 41)])


def test_offsets_alone_are_committed_once_they_have_waited_long_enough(tmp_path, monkeypatch):
    run, queue, committed, clock = scripted(tmp_path, monkeypatch)
    queue.append([read_back(offset=40)])
    run.run_checkpoint()
    clock.now += runtime.OFFSETS_ONLY_COMMIT_DELAY_S / 2
    queue.append([read_back(offset=41)])
    run.run_checkpoint()
    assert committed == []
    clock.now += runtime.OFFSETS_ONLY_COMMIT_DELAY_S / 2
    run.run_checkpoint()  # nothing new: the wait is over all the same
    (checkpoint,) = committed
    assert (checkpoint.record_count, [p.offset for p in checkpoint.offsets_of("main")]) == (0, [42])
    run.run_checkpoint()
    assert len(committed) == 1, "nothing is carried after the commit"


def test_a_lost_partition_is_not_carried_into_a_later_transaction(tmp_path, monkeypatch):
    run, queue, committed, clock = scripted(tmp_path, monkeypatch)
    queue.append([read_back(offset=40)])
    run.run_checkpoint()
    run._on_revoke(run.consumer, [TopicPartition(INITIATED, 2)])
    queue.append([StandInMessage(received(), topic=RECEIVED, offset=9)])
    run.run_checkpoint()
    (checkpoint,) = committed
    assert [(p.topic, p.offset) for p in checkpoint.offsets_of("main")] == [(RECEIVED, 10)]


def test_at_least_once_stores_offsets_at_once(tmp_path, monkeypatch):
    run, queue, committed, _ = scripted(tmp_path, monkeypatch)
    run.transactional = False  # storing offsets is local and cheap: nothing to save
    queue.append([read_back(offset=40)])
    run.run_checkpoint()
    assert len(committed) == 1
