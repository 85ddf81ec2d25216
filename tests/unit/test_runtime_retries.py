"""The runtime's retry and dead-letter routing, without a broker.

The runner is built with real (unconnected) Kafka clients. Stand-in messages that carry
exactly what a consumed message carries go through `process_batch` into a checkpoint
that records what would be produced.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.retries import DeadLetter, RetryLater, TransientError, backoff_s, is_transient
from orchestrator.settings import REPO_ROOT, RetrySettings
from orchestrator.stages.base import Stage
from orchestrator.wire import (HEADER_DLQ_ATTEMPTS, HEADER_DLQ_ERROR_CLASS, HEADER_DLQ_ORIGIN_TOPIC, HEADER_DLQ_STAGE,
                               HEADER_RETRY_ATTEMPT, HEADER_RETRY_DUE_AT_MS, HEADER_RETRY_FIRST_FAILED_AT,
                               HEADER_RETRY_LAST_ERROR_CLASS, HEADER_RETRY_ORIGIN_TOPIC, HEADER_RETRY_STAGE)
from tests.unit.runtime_fixtures import CODEC, ORIGIN, StandInMessage, headers_of, produced, runner
from tests.unit.stage_fixtures import received


class ScriptedStage(Stage):
    name = "execution"
    input_topics = ("routed",)

    def __init__(self, answer):
        self.answer = answer

    def handle_batch(self, events, now):
        return self.answer(events)


def route(stage, message):
    """(output events, retry records, dead-letter records) of a one-message batch."""
    outputs, retry, dead = produced(runner(stage), message)
    return [CODEC.decode(record[2]) for record in outputs], retry, dead


def test_runner_subscribes_to_the_retry_levels_of_its_inputs_with_a_consumer_of_their_own():
    run = runner(ScriptedStage(lambda e: []))
    assert run.input_topics == [ORIGIN]
    assert run.retry_topics == [ORIGIN + ".retry.1", ORIGIN + ".retry.2"]
    assert set(run.clients.by_role()) == {"main", "retry"}


def test_a_transient_exception_goes_to_retry_level_1_with_its_headers_and_original_bytes():
    def locked(events):
        raise sqlite3.OperationalError("database is locked")
    message = StandInMessage(received())
    outputs, records, dead = route(ScriptedStage(locked), message)
    assert outputs == [] and dead == []
    (record,) = records
    topic, key, value, _ = record
    headers = headers_of(record)
    assert (topic, key, value) == (ORIGIN + ".retry.1", message.key(), message.value())
    assert headers[HEADER_RETRY_ATTEMPT] == "1" and headers[HEADER_RETRY_STAGE] == "execution"
    assert headers[HEADER_RETRY_ORIGIN_TOPIC] == ORIGIN
    assert headers[HEADER_RETRY_LAST_ERROR_CLASS] == "OperationalError"
    due_in_s = int(headers[HEADER_RETRY_DUE_AT_MS]) / 1000 - datetime.now(UTC).timestamp()
    assert 0.5 < due_in_s <= 1.0
    assert headers["event_type"] == "PaymentReceived", "the original headers travel too"


def test_the_next_attempt_goes_one_level_up_and_keeps_the_first_failure_time():
    def busy(events):
        raise TransientError("dependency throttled")
    first = "2026-11-27T10:00:00+00:00"
    message = StandInMessage(received(), topic=ORIGIN + ".retry.1", extra_headers=[
        (HEADER_RETRY_ATTEMPT, b"1"), (HEADER_RETRY_ORIGIN_TOPIC, ORIGIN.encode()),
        (HEADER_RETRY_FIRST_FAILED_AT, first.encode()), (HEADER_RETRY_STAGE, b"execution")])
    _, (record,), _ = route(ScriptedStage(busy), message)
    headers = headers_of(record)
    assert record[0] == ORIGIN + ".retry.2"
    assert (headers[HEADER_RETRY_ATTEMPT], headers[HEADER_RETRY_FIRST_FAILED_AT]) == ("2", first)
    assert list(headers).count(HEADER_RETRY_ATTEMPT) == 1, "earlier retry headers are replaced, not repeated"


def test_past_the_last_level_a_transient_fault_is_dead_lettered_with_its_attempts():
    def busy(events):
        raise TransientError("still down")
    message = StandInMessage(received(), topic=ORIGIN + ".retry.2", extra_headers=[
        (HEADER_RETRY_ATTEMPT, b"2"), (HEADER_RETRY_ORIGIN_TOPIC, ORIGIN.encode()), (HEADER_RETRY_STAGE, b"execution")])
    _, retry, (dead,) = route(ScriptedStage(busy), message)
    assert retry == []
    headers = headers_of(dead)
    assert dead[0] == ORIGIN + ".dlq", "dead letters belong to the origin topic, not the retry topic"
    assert headers[HEADER_DLQ_ATTEMPTS] == "3"
    assert headers[HEADER_DLQ_ERROR_CLASS] == "RetriesExhausted"
    assert headers[HEADER_DLQ_ORIGIN_TOPIC] == ORIGIN


def test_a_bug_is_dead_lettered_at_once_never_retried():
    def bug(events):
        raise KeyError("rail")
    outputs, records, (dead,) = route(ScriptedStage(bug), StandInMessage(received()))
    assert outputs == [] and records == []
    assert headers_of(dead)[HEADER_DLQ_ERROR_CLASS] == "KeyError"
    assert headers_of(dead)[HEADER_DLQ_STAGE] == "execution"


def test_a_stage_deferral_waits_until_its_time_and_other_outputs_still_go_out():
    event = received()
    when = datetime.now(UTC) + timedelta(seconds=30)
    marker = received()

    def defer(events):
        return [marker, RetryLater(events[0], "rail_circuit_open", "breaker open", not_before=when)]
    outputs, (record,), dead = route(ScriptedStage(defer), StandInMessage(event))
    assert [event.event_id for event in outputs] == [marker.event_id] and dead == []
    due_s = int(headers_of(record)[HEADER_RETRY_DUE_AT_MS]) / 1000
    assert when.timestamp() - 0.001 <= due_s <= when.timestamp() + 0.5  # due times are whole ms


def test_stage_deferrals_are_bounded_by_the_stage_not_by_the_levels():
    event = received()
    message = StandInMessage(event, topic=ORIGIN + ".retry.2", extra_headers=[
        (HEADER_RETRY_ATTEMPT, b"9"), (HEADER_RETRY_ORIGIN_TOPIC, ORIGIN.encode()), (HEADER_RETRY_STAGE, b"execution")])
    _, (record,), dead = route(ScriptedStage(
        lambda events: [RetryLater(events[0], "rail_circuit_open", "open", not_before=datetime.now(UTC))]), message)
    assert dead == [] and record[0] == ORIGIN + ".retry.2"


class PaymentStatusUnknown(RuntimeError):
    pass


def test_a_stage_that_gives_up_on_one_event_dead_letters_it_and_the_rest_goes_out():
    given_up, marker = received(), received()

    def give_up(events):
        return [marker, DeadLetter(events[0], PaymentStatusUnknown("no confirmed outcome"))]
    outputs, retry, (dead,) = route(ScriptedStage(give_up), StandInMessage(given_up))
    assert [event.event_id for event in outputs] == [marker.event_id] and retry == []
    headers = headers_of(dead)
    assert dead[0] == ORIGIN + ".dlq" and dead[2] == StandInMessage(given_up).value()
    assert (headers[HEADER_DLQ_ERROR_CLASS], headers[HEADER_DLQ_STAGE]) == ("PaymentStatusUnknown", "execution")


@pytest.mark.parametrize("exc, transient", [
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.OperationalError("no such table: x"), False),
    (TimeoutError(), True), (ConnectionResetError(), True), (TransientError("x"), True),
    (ValueError("x"), False), (LookupError("no tenant"), False),
])
def test_transient_faults_are_told_from_bugs(exc, transient):
    assert is_transient(exc) is transient


def test_backoff_grows_per_level_with_bounded_jitter():
    settings = RetrySettings(backoff_s=(1.0, 4.0, 16.0), jitter=0.25)
    for attempt, base in ((1, 1.0), (2, 4.0), (3, 16.0), (7, 16.0)):
        delays = [backoff_s(attempt, settings) for _ in range(200)]
        assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
        assert len({round(d, 6) for d in delays}) > 1, "jitter spreads retries out"


def test_a_fatal_client_error_ends_the_loop_so_the_process_restarts():
    from confluent_kafka import KafkaError

    from orchestrator.runtime.clients import FatalClientError

    run = runner(ScriptedStage(lambda events: []))
    # What librdkafka calls on every client of the process (their error_cb).
    run.client_errors(KafkaError(KafkaError._TRANSPORT, "broker down"))  # transient: keeps going
    assert run.client_errors.fatal is None
    run.client_errors(KafkaError(KafkaError._FENCED, "static member fenced", fatal=True))
    with pytest.raises(FatalClientError, match="fenced"):
        run.run()


def test_a_kafka_call_hung_past_its_timeout_ends_the_process():
    """librdkafka can block in send_offsets_to_transaction forever; the watchdog exits."""
    import subprocess
    import sys

    code = (
        "import time, orchestrator.runtime.watchdog as r\n"
        "r.TXN_CALL_HANG_GRACE_S = 0.5\n"
        "dog = r.HangWatchdog('test')\n"
        "with dog.guard('fine', 0.1):\n"
        "    pass\n"
        "time.sleep(2)\n"  # a finished call never trips it
        "with dog.guard('send_offsets_to_transaction', 0.5):\n"
        "    time.sleep(30)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 70, done.stderr
    assert 2.5 < time.monotonic() - started < 10


def test_a_retriable_transaction_call_is_retried_in_place_and_anything_else_propagates(monkeypatch):
    # send_offsets_to_transaction failed with a transport error just after a broker came
    # back; the stage process died of it and lost ten seconds to its restart.
    from confluent_kafka import KafkaError, KafkaException

    from orchestrator.runtime import watchdog

    monkeypatch.setattr(watchdog.time, "sleep", lambda _s: None)
    dog = watchdog.HangWatchdog("test")
    calls = []

    def flaky(timeout_s):
        calls.append(timeout_s)
        if len(calls) == 1:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure", retriable=True))

    watchdog.call_retrying(dog, "send_offsets_to_transaction", flaky, 10.0, 3, "test")
    assert calls == [10.0, 10.0]

    def abortable(_timeout_s):
        raise KafkaException(KafkaError(KafkaError._STATE, "abort it", txn_requires_abort=True))

    with pytest.raises(KafkaException, match="abort it"):
        watchdog.call_retrying(dog, "send_offsets_to_transaction", abortable, 10.0, 3, "test")

    def always_down(_timeout_s):
        calls.append("down")
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "still down", retriable=True))

    calls.clear()
    with pytest.raises(KafkaException, match="still down"):
        watchdog.call_retrying(dog, "send_offsets_to_transaction", always_down, 10.0, 3, "test")
    assert calls == ["down"] * 3


def test_dlq_tools_ride_out_a_moving_partition_leader(monkeypatch):
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    import orchestrator.dlq as dlq

    monkeypatch.setattr(dlq, "_WATERMARK_RETRY_S", 0.0)
    answers = [KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)), (3, 9)]

    class Consumer:
        refreshed = 0

        def list_topics(self, topic, timeout):
            Consumer.refreshed += 1  # a NOT_LEADER refreshes the client's metadata

        def get_watermark_offsets(self, partition, timeout):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert dlq._watermarks(Consumer(), TopicPartition("t", 0)) == (3, 9)
    assert Consumer.refreshed == 1
    broken = [KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))]
    answers[:] = broken
    with pytest.raises(KafkaException):
        dlq._watermarks(Consumer(), TopicPartition("t", 0))
