"""Execution: funds first, then the rail; breakers, deferrals and the rail's time limit.

The clearing system is replaced by `ScriptedRail`, a test double of the HTTP port that
answers with real pacs.002 documents (or the transport errors the real client returns),
so the stage's own decisions are what is tested.
"""

from __future__ import annotations

from concurrent.futures import Future
from datetime import timedelta

import pytest

from adapters.clearing_client import ClearingTimeout, ClearingUnavailable
from adapters.iso20022.pacs002 import TransactionStatus, build_pacs002
from adapters.iso20022.pacs028 import parse_pacs028
from orchestrator.effects import Pending, resolve
from orchestrator.events import EventCodec
from orchestrator.retries import DeadLetter, RetryLater
from orchestrator.settings import REPO_ROOT, RetrySettings
from orchestrator.stages.execution import ExecutionStage, PaymentStatusUnknown, read_breaker_states
from tests.unit.stage_fixtures import T0, TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")
RAIL = TENANTS["emea"].rails_by_name["sepa_inst"]


class ScriptedRail:
    """Answers each call with the next scripted answer: "ACSC", "RJCT", "down" or "slow"."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, float]] = []

    def submit_many_timed(self, requests):
        results = []
        for url, document, timeout_s in requests:
            self.calls.append((url, timeout_s))
            answer = self.script.pop(0) if self.script else "ACSC"
            if answer.startswith("?"):  # a status inquiry: answer its pacs.028 with a pacs.002
                assert url.endswith("/pacs028"), url
                uetr = parse_pacs028(document).requests[0].uetr
                if answer == "?down":
                    results.append((ClearingUnavailable("connection refused"), 0.001))
                    continue
                status, reason = {"?ACSC": ("ACSC", None), "?RJCT": ("RJCT", "AC04"), "?NOOR": ("RJCT", "NOOR"),
                                  "?PDNG": ("PDNG", None)}[answer]
                report = build_pacs002("IQ", "pacs.028.001.05", [TransactionStatus(None, uetr, status, reason)],
                                       message_id="R", created_at=T0)
                results.append((report, 0.01))
                continue
            assert url.endswith("/pacs008"), url
            if answer == "down":
                results.append((ClearingUnavailable("connection refused"), 0.001))
            elif answer == "slow":
                results.append((ClearingTimeout(f"no answer in {timeout_s} s"), timeout_s))
            else:
                uetr = document.split(b"<UETR>")[1].split(b"</UETR>")[0].decode()
                status = TransactionStatus(None, uetr, answer, reason_code="AC03" if answer == "RJCT" else None,
                                           accepted_at=T0 if answer == "ACSC" else None)
                results.append((build_pacs002("M", statuses=[status], message_id="R", created_at=T0), 0.01))
        return results

    def submit_many_async(self, requests):
        answered: Future = Future()
        answered.set_result(self.submit_many_timed(requests))
        return answered

    def close(self) -> None:
        pass


def decided(execution: ExecutionStage, events, now) -> list:
    """The stage's outputs with its clearing calls answered, as the runtime finishes them."""
    return resolve(execution.handle_batch(events, now))


def stage(tmp_path, rail: ScriptedRail) -> ExecutionStage:
    return ExecutionStage(TENANTS, "test", tmp_path, CODEC, rail, lambda name, path: f"http://sim/{name}{path}",
                          retry=RetrySettings(backoff_s=(1.0, 2.0, 4.0), jitter=0.0))


def routed_and_reserved(index: int = 0):
    rec = received("emea", index)
    routed = follow(rec, "PaymentRouted", "routing", {"rail": "sepa_inst", "clearing_system_code": "TGT",
                                                      "settlement_mode": "rtgs"})
    reserved = follow(routed, "FundsReserved", "ledger", {"account_id": "cust:x", "amount_minor": 1,
                                                         "available_after_minor": 0}, seconds=0.1)
    return routed, reserved


def test_nothing_is_sent_before_the_funds_are_reserved(tmp_path):
    rail = ScriptedRail()
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    assert decided(execution, [routed], at(0.2)) == []
    assert rail.calls == []
    (executed,) = decided(execution, [reserved], at(0.3))
    assert executed.event_type == "PaymentExecuted" and executed.causation_id == routed.event_id
    assert len(rail.calls) == 1


def test_reservation_first_then_route_also_executes_once(tmp_path):
    rail = ScriptedRail()
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    assert decided(execution, [reserved], at(0.2)) == []
    (first,) = decided(execution, [routed], at(0.3))
    # Redelivery of either half gives back the same outcome without a second call.
    assert decided(execution, [routed, reserved], at(0.4)) == [first, first]
    assert len(rail.calls) == 1


def test_business_rejection_is_an_outcome_not_a_retry(tmp_path):
    execution = stage(tmp_path, ScriptedRail("RJCT"))
    routed, reserved = routed_and_reserved()
    (failed,) = decided(execution, [routed, reserved], at(0.3))
    assert failed.event_type == "PaymentFailed" and failed.payload["iso_reason_code"] == "AC03"


def test_a_transient_fault_defers_the_payment_with_backoff_and_a_timeline_event(tmp_path):
    rail = ScriptedRail("down", "ACSC")
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    deferred, retry = decided(execution, [routed, reserved], at(0.3))
    assert deferred.event_type == "PaymentDeferred"
    assert deferred.payload["reason_code"] == "clearing_unavailable" and deferred.payload["attempt"] == 1
    assert deferred.payload["retry_at"] == at(1.3)
    assert deferred.payload["deadline_at"] == routed.occurred_at + timedelta(seconds=RAIL.time_limit_s)
    assert isinstance(retry, RetryLater) and retry.event == reserved and retry.not_before == at(1.3)
    # The retry topic hands the same event back: now the rail answers.
    (executed,) = decided(execution, [reserved], at(1.4))
    assert executed.event_type == "PaymentExecuted"


def test_past_the_rail_time_limit_the_payment_fails_and_is_not_sent(tmp_path):
    rail = ScriptedRail("down")
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    decided(execution, [routed, reserved], at(0.3))
    late = routed.occurred_at + timedelta(seconds=RAIL.time_limit_s + 0.1)
    (failed,) = decided(execution, [reserved], late)
    assert failed.event_type == "PaymentFailed"
    assert (failed.payload["reason_code"], failed.payload["iso_reason_code"]) == ("rail_time_limit_exceeded", "AB05")
    assert len(rail.calls) == 1
    assert decided(execution, [reserved], late) == [failed]


def test_a_call_never_outlives_the_time_limit(tmp_path):
    rail = ScriptedRail("ACSC")
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    near_end = routed.occurred_at + timedelta(seconds=RAIL.time_limit_s - 0.5)
    decided(execution, [routed, reserved], near_end)
    assert rail.calls[0][1] == pytest.approx(0.5)


def test_an_open_breaker_parks_payments_until_half_open_and_shows_in_the_store(tmp_path):
    config = RAIL.breaker
    rail = ScriptedRail(*["down"] * config.min_calls)
    execution = stage(tmp_path, rail)
    pairs = [routed_and_reserved(i) for i in range(config.min_calls + 3)]
    batch = [e for pair in pairs[:config.min_calls] for e in pair]
    outputs = decided(execution, batch, at(0.5))
    assert len(rail.calls) == config.min_calls
    assert sum(isinstance(o, RetryLater) for o in outputs) == config.min_calls
    (saved,) = read_breaker_states(tmp_path / "execution.sqlite")
    assert (saved["tenant_id"], saved["rail"], saved["state"], saved["trips"]) == ("emea", "sepa_inst", "open", 1)

    # New payments are not sent while it is open; they wait for the half-open time.
    late_batch = [e for pair in pairs[config.min_calls:] for e in pair]
    outputs = decided(execution, late_batch, at(1.0))
    assert len(rail.calls) == config.min_calls, "no call while the breaker is open"
    deferred = [o for o in outputs if not isinstance(o, RetryLater)]
    assert {d.payload["breaker_state"] for d in deferred} == {"open"}
    assert {d.payload["reason_code"] for d in deferred} == {"rail_circuit_open"}
    retries = [o for o in outputs if isinstance(o, RetryLater)]
    opened_at = 0.5 + 0.001  # the failing call's duration: the breaker opened when it answered
    assert {r.not_before for r in retries} == {at(opened_at + config.open_s)}

    # Half-open: only the configured probes go; when they succeed the breaker closes.
    reserved_events = [pair[1] for pair in pairs[config.min_calls:]]
    outputs = decided(execution, reserved_events, at(opened_at + config.open_s))
    executed = [o for o in outputs if not isinstance(o, RetryLater) and o.event_type == "PaymentExecuted"]
    assert len(executed) == config.half_open_probes
    assert read_breaker_states(tmp_path / "execution.sqlite")[0]["state"] == "closed"


def test_an_unknown_rail_is_a_configuration_fault(tmp_path):
    execution = stage(tmp_path, ScriptedRail())
    rec = received("emea", 0)
    routed = follow(rec, "PaymentRouted", "routing", {"rail": "nope", "clearing_system_code": "X",
                                                      "settlement_mode": "rtgs"})
    reserved = follow(routed, "FundsReserved", "ledger", {"account_id": "a", "amount_minor": 1,
                                                         "available_after_minor": 0})
    with pytest.raises(LookupError):
        decided(execution, [routed, reserved], at(0.1))


class HeldRail(ScriptedRail):
    """Answers only when the test says so, as a slow clearing system would."""

    def __init__(self, *script: str) -> None:
        super().__init__(*script)
        self.out: list[tuple[Future, list]] = []

    def submit_many_async(self, requests):
        answered: Future = Future()
        self.out.append((answered, list(requests)))
        return answered

    def answer_all(self) -> None:
        for answered, requests in self.out:
            if not answered.done():
                answered.set_result(self.submit_many_timed(requests))


def test_the_stage_does_not_wait_for_the_clearing_system_and_sends_a_payment_once_while_its_call_is_out(tmp_path):
    rail = HeldRail()
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    (pending,) = execution.handle_batch([routed, reserved], at(0.3))
    assert isinstance(pending, Pending) and not pending.future.done()
    # A copy of both events (a redelivery, say) while the call is out sends nothing more.
    assert execution.handle_batch([routed, reserved], at(0.35)) == []
    assert len(rail.out) == 1
    rail.answer_all()
    (executed,) = pending.finish(pending.future.result())
    assert executed.event_type == "PaymentExecuted"
    # Once answered, a copy gets the recorded outcome, still without a call.
    assert decided(execution, [reserved], at(0.4)) == [executed]
    assert len(rail.out) == 1


def test_an_abandoned_call_is_taken_up_again_by_asking_the_rail(tmp_path):
    rail = HeldRail()
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    (pending,) = execution.handle_batch([routed, reserved], at(0.3))
    pending.abandon()
    # The pacs.008 may have reached the rail: the events coming again ask (pacs.028) first.
    (again,) = execution.handle_batch([routed, reserved], at(0.4))
    assert isinstance(again, Pending) and len(rail.out) == 2
    assert [requests[0][0].rsplit("/", 1)[1] for _, requests in rail.out] == ["pacs008", "pacs028"]
    rail.script = ["ACSC", "?ACSC"]  # the abandoned call's answer comes too, and is not read
    rail.answer_all()
    (executed,) = again.finish(again.future.result())
    assert executed.event_type == "PaymentExecuted"


def test_a_process_that_died_during_a_call_asks_the_rail_after_its_restart(tmp_path):
    routed, reserved = routed_and_reserved()
    dying = stage(tmp_path, ScriptedRail())
    (pending,) = dying.handle_batch([routed, reserved], at(0.3))  # the call is out; the process dies
    rail = ScriptedRail("?NOOR", "ACSC")
    restarted = stage(tmp_path, rail)
    deferred, retry = decided(restarted, [routed, reserved], at(1))
    assert deferred.payload["reason_code"] == "status_inquiry_pending"  # not received: send again
    (executed,) = decided(restarted, [reserved], retry.not_before)
    assert executed.event_type == "PaymentExecuted"
    assert [url.rsplit("/", 1)[1] for url, _ in rail.calls] == ["pacs028", "pacs008"]
    # Past the time limit, a payment that was sent is asked about, never failed unasked.
    routed2, reserved2 = routed_and_reserved(1)
    (pending,) = stage(tmp_path, ScriptedRail()).handle_batch([routed2, reserved2], at(0.3))
    rail = ScriptedRail("?ACSC")
    (executed,) = decided(stage(tmp_path, rail), [routed2, reserved2], at(RAIL.time_limit_s + 5))
    assert executed.event_type == "PaymentExecuted" and rail.calls[0][0].endswith("/pacs028")


def test_an_abandoned_half_open_probe_gives_its_permit_back(tmp_path):
    config = RAIL.breaker
    rail = HeldRail(*["down"] * config.min_calls)
    execution = stage(tmp_path, rail)
    pairs = [routed_and_reserved(i) for i in range(config.min_calls + config.half_open_probes)]
    (opening,) = [o for o in execution.handle_batch([e for p in pairs[:config.min_calls] for e in p], at(0.5))
                  if isinstance(o, Pending)]
    rail.answer_all()
    opening.finish(opening.future.result())
    assert read_breaker_states(tmp_path / "execution.sqlite")[0]["state"] == "open"

    half_open_at = at(0.5 + 0.001 + config.open_s)
    probes = [e for p in pairs[config.min_calls:] for e in p]
    (probing,) = [o for o in execution.handle_batch(probes, half_open_at) if isinstance(o, Pending)]
    probing.abandon()
    # With the permits back, the same probes may go again at once instead of waiting.
    outputs = execution.handle_batch([p[1] for p in pairs[config.min_calls:]], half_open_at)
    assert [type(o) for o in outputs] == [Pending], "the probes were still counted as out"


# -- status inquiry after a timeout (orchestrator/status_inquiry.py decides) ------------

DEADLINE_S = RAIL.time_limit_s
FINAL_S = RAIL.time_limit_s + RAIL.status_inquiry.not_found_margin_s


def timed_out(tmp_path, *script: str):
    rail = ScriptedRail("slow", *script)
    execution = stage(tmp_path, rail)
    routed, reserved = routed_and_reserved()
    deferred, retry = decided(execution, [routed, reserved], at(0.3))
    assert deferred.payload["reason_code"] == "clearing_timeout"
    assert "status inquiry" in deferred.payload["reason_detail"]
    return rail, execution, routed, reserved


def test_a_timed_out_payment_the_rail_settled_is_executed_through_the_inquiry(tmp_path):
    rail, execution, routed, reserved = timed_out(tmp_path, "?ACSC")
    (executed,) = decided(execution, [reserved], at(2))
    assert executed.event_type == "PaymentExecuted" and executed.payload["clearing_status"] == "ACSC"
    assert [url.rsplit("/", 1)[1] for url, _ in rail.calls] == ["pacs008", "pacs028"]  # asked, never re-sent
    assert decided(execution, [reserved], at(3)) == [executed]  # redelivery: the same outcome


def test_a_timed_out_payment_the_rail_rejected_fails_with_the_rails_reason(tmp_path):
    _, execution, _, reserved = timed_out(tmp_path, "?RJCT")
    (failed,) = decided(execution, [reserved], at(2))
    assert failed.event_type == "PaymentFailed"
    assert (failed.payload["reason_code"], failed.payload["iso_reason_code"]) == ("clearing_rejected", "AC04")


def test_at_the_time_limit_a_payment_sent_once_is_asked_about_never_failed_unasked(tmp_path):
    rail, execution, routed, reserved = timed_out(tmp_path, "?NOOR", "slow")
    # Not received before the time limit: sent again (same UETR), and that times out too.
    deferred, retry = decided(execution, [reserved], at(2))
    assert deferred.payload["reason_code"] == "status_inquiry_pending" and retry.not_before == at(2)
    deferred, _ = decided(execution, [reserved], at(3))
    assert deferred.payload["reason_code"] == "clearing_timeout"
    # Past the limit, "not received" waits for the limit plus margin: no round counted ...
    rail.script = ["?NOOR", "?NOOR"]
    deferred, retry = decided(execution, [reserved], at(DEADLINE_S + 0.1))
    assert retry.not_before == at(FINAL_S) and deferred.payload["reason_code"] == "status_inquiry_pending"
    # ... and then ends FAILED, released by the ledger on PaymentFailed.
    (failed,) = decided(execution, [reserved], at(FINAL_S))
    assert failed.event_type == "PaymentFailed" and failed.payload["reason_code"] == "rail_time_limit_exceeded"
    assert "never received" in failed.payload["reason_detail"]
    assert [url.rsplit("/", 1)[1] for url, _ in rail.calls] == ["pacs008", "pacs028", "pacs008", "pacs028",
                                                                 "pacs028"]


def test_a_rail_that_never_confirms_is_dead_lettered_after_the_bounded_rounds(tmp_path):
    config = RAIL.status_inquiry
    rail, execution, routed, reserved = timed_out(tmp_path)
    rail.script = ["?down"] * 50
    now = at(FINAL_S)
    results = []
    for _ in range(config.rounds_max):
        results = decided(execution, [reserved], now)
        retry = next((r for r in results if isinstance(r, RetryLater)), None)
        if retry is None:
            break
        now = retry.not_before
    deferred, dead = results
    assert deferred.payload["reason_code"] == "clearing_status_unknown"
    assert isinstance(dead, DeadLetter) and dead.event == reserved and isinstance(dead.error, PaymentStatusUnknown)
    assert now <= routed.occurred_at + timedelta(seconds=RAIL.time_limit_s + config.longest_wait_after_limit_s())
    assert len([url for url, _ in rail.calls if url.endswith("pacs028")]) == config.rounds_max
    # A replay of the dead letter asks again, with a fresh budget.
    rail.script = ["?ACSC"]
    (executed,) = decided(execution, [reserved], now + timedelta(seconds=60))
    assert executed.event_type == "PaymentExecuted"


def test_a_store_from_before_status_inquiries_gets_their_columns(tmp_path):
    import sqlite3

    from orchestrator.stages.execution import ExecutionStore
    with sqlite3.connect(tmp_path / "execution.sqlite") as db:
        db.executescript("CREATE TABLE executions (payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL,"
                         " routed_event BLOB, reserved INTEGER NOT NULL DEFAULT 0,"
                         " attempts INTEGER NOT NULL DEFAULT 0, outcome_event BLOB);"
                         "INSERT INTO executions (payment_id, tenant_id) VALUES ('p', 'emea');")
    row = ExecutionStore(tmp_path / "execution.sqlite").row("p")
    assert (row["sent"], row["next_step"], row["inquiry_rounds"]) == (0, "send", 0)
