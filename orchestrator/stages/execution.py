"""Execution: send a routed, funded payment to its rail's clearing system; record the answer.

A payment goes to the clearing system only once the ledger has reserved its funds
(`FundsReserved`), never before: a payment the ledger refuses (AM04) is never executed.
Execution reads `routed` and `posted` concurrently with the ledger and joins the two
events of a payment in its own store, so the reservation and the preparation of the
clearing call overlap instead of queueing behind each other.

Every rail has a circuit breaker (orchestrator/circuit_breaker.py, configured per rail in
the tenant file). While it is open, or when a call fails transiently, the payment is not
failed at once: it waits in the runtime's retry topics (`RetryLater`) and a
`PaymentDeferred` event puts the wait, the breaker state and the next attempt in the
timeline. When the rail's `time_limit_s` since routing has passed and the payment was
never sent, it ends `FAILED rail_time_limit_exceeded` and the ledger releases its funds.

A pacs.008 whose answer never came (a timeout, a connection reset after sending) or
could not be read may have settled at the rail: such a payment is not failed but
asked about with a status inquiry (pacs.028, answered by a pacs.002), through the same
clearing client and the same retry topics. orchestrator/status_inquiry.py decides on the
answer: settled continues as executed, rejected or "not received" after the time limit
(plus a margin) fails, "not received" before it sends the pacs.008 again, and a rail
that stays unreachable or pending after the time limit is asked a bounded number of
times, after which the payment is dead-lettered (`PaymentStatusUnknown`) for a person.

The pure parts are translation (canonical payment to pacs.008, pacs.002 to an outcome
event, both in `adapters.iso20022`); the one I/O is the clearing call, made through the
`ClearingBatchClient` port so tests and the runtime can point it at the clearing simulator.
A batch's payments are sent concurrently (bounded by the settings) because each call
waits on a remote system and the batch must not be as slow as the sum of its calls.
Nor does the stage wait for the answers: it returns them as an effect in flight
(`orchestrator.effects.Pending`), and the runtime consumes and decides the next batches
while the clearing system answers. A payment whose call is in flight is not sent again
by a second copy of its events meanwhile.

The message id sent to the clearing system is derived from the payment id, and the
clearing systems (and the simulator) deduplicate on the UETR, so re-sending after a
crash or a timeout returns the original answer instead of paying twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from adapters.clearing_batch import ClearingBatchClient
from adapters.clearing_client import ClearingError, ClearingTimeout, ClearingUnavailable
from adapters.iso20022 import IsoDocumentError
from adapters.iso20022.pacs002 import ISO_REASON_DESCRIPTIONS, TransactionStatus, parse_pacs002
from adapters.iso20022.pacs008 import build_pacs008
from adapters.iso20022.pacs028 import StatusRequest, build_pacs028
from orchestrator.circuit_breaker import CircuitBreaker
from orchestrator.effects import Pending
from orchestrator.events import Event, EventCodec
from orchestrator.reasons import ReasonCode
from orchestrator.retries import DeadLetter, RetryLater, backoff_s
from orchestrator.status_inquiry import SETTLED_STATUSES, Action, AnswerKind, decide, read_answer
from orchestrator.settings import RetrySettings
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import RailConfig, TenantConfig

log = logging.getLogger("payorch.execution")

# A call is never given less time than this, even just before the rail's time limit.
_MIN_CALL_TIMEOUT_S = 0.05
_SETTLED_STATUSES = SETTLED_STATUSES
_SEND, _INQUIRE = "send", "inquire"


class PaymentStatusUnknown(RuntimeError):
    """The rail never confirmed what became of a payment, within the inquiry rounds: the
    event is dead-lettered for a person (`payorch dlq`); a replay asks again."""


def clearing_message_id(payment_id: str) -> str:
    """A Max35Text message id that is the same every time the payment is sent."""
    return "PO" + payment_id.replace("-", "")[:32]


def inquiry_message_id(payment_id: str, attempt: int) -> str:
    """A Max35Text message id for one status inquiry about the payment."""
    return "IQ" + payment_id.replace("-", "")[:30] + f"{attempt % 1000:03d}"


def outcome_payload(rail: RailConfig, status: TransactionStatus, message_id: str, now: datetime) -> tuple[str, dict]:
    """Map one pacs.002 transaction status to our event (pure)."""
    if status.status in _SETTLED_STATUSES:
        return "PaymentExecuted", {
            "rail": rail.name,
            "clearing_message_id": message_id,
            "clearing_status": status.status,
            "accepted_at": status.accepted_at or now,
        }
    iso = status.reason_code or "NARR"
    detail = status.reason_text or ISO_REASON_DESCRIPTIONS.get(iso, "rejected by the clearing system")
    return "PaymentFailed", {
        "rail": rail.name,
        "reason_code": ReasonCode.clearing_rejected.value,
        "iso_reason_code": iso,
        "reason_detail": f"{rail.display_name} rejected the payment: {iso} {detail}",
        "clearing_message_id": message_id,
    }


class ExecutionStore:
    """The join of each payment's route and reservation, its attempts and its outcome,
    and the last known state of every rail's breaker (read by the intake's /metrics)."""

    def __init__(self, path: Path) -> None:
        self.db = open_sqlite(path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS executions (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, routed_event BLOB,
              reserved INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, outcome_event BLOB,
              sent INTEGER NOT NULL DEFAULT 0, next_step TEXT NOT NULL DEFAULT 'send',
              inquiry_rounds INTEGER NOT NULL DEFAULT 0, calling INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS breakers (
              tenant_id TEXT NOT NULL, rail TEXT NOT NULL, state TEXT NOT NULL, since_s REAL NOT NULL,
              retry_at_s REAL, calls INTEGER NOT NULL, failure_rate REAL NOT NULL, slow_rate REAL NOT NULL,
              trips INTEGER NOT NULL, updated_s REAL NOT NULL, PRIMARY KEY (tenant_id, rail));
            """
        )
        # Stores made before status inquiries lack their columns.
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(executions)")}
        for name, definition in (("sent", "INTEGER NOT NULL DEFAULT 0"),
                                 ("next_step", "TEXT NOT NULL DEFAULT 'send'"),
                                 ("inquiry_rounds", "INTEGER NOT NULL DEFAULT 0"),
                                 ("calling", "INTEGER NOT NULL DEFAULT 0")):
            if name not in columns:
                self.db.execute(f"ALTER TABLE executions ADD COLUMN {name} {definition}")

    def row(self, payment_id: str):
        return self.db.execute("SELECT * FROM executions WHERE payment_id=?", (payment_id,)).fetchone()

    def note_routed(self, payment_id: str, tenant_id: str, routed: bytes) -> None:
        self.db.execute("INSERT INTO executions (payment_id, tenant_id, routed_event) VALUES (?,?,?)"
                        " ON CONFLICT DO UPDATE SET routed_event=coalesce(routed_event, excluded.routed_event)",
                        (payment_id, tenant_id, routed))

    def note_reserved(self, payment_id: str, tenant_id: str) -> None:
        self.db.execute("INSERT INTO executions (payment_id, tenant_id, reserved) VALUES (?,?,1)"
                        " ON CONFLICT DO UPDATE SET reserved=1", (payment_id, tenant_id))

    def count_attempt(self, payment_id: str) -> int:
        self.db.execute("UPDATE executions SET attempts=attempts+1 WHERE payment_id=?", (payment_id,))
        return self.row(payment_id)["attempts"]

    def note_calling(self, payment_id: str) -> None:
        """A pacs.008 is about to leave. The mark is committed with the checkpoint that
        starts the call (the runtime commits a batch's state while its effect is in flight),
        so a process that dies before the answer, once that commit is done, leaves a trace
        of it and the payment is asked about; one that dies earlier loses the mark with the
        batch's offsets, and the redelivered event sends the pacs.008 again, which the rail
        deduplicates on the UETR."""
        self.db.execute("UPDATE executions SET calling=1 WHERE payment_id=?", (payment_id,))

    def note_not_delivered(self, payment_id: str) -> None:
        self.db.execute("UPDATE executions SET calling=0 WHERE payment_id=?", (payment_id,))

    def note_uncertain(self, payment_id: str) -> None:
        """A pacs.008 may have reached the rail: ask before sending or failing it."""
        self.db.execute("UPDATE executions SET sent=1, calling=0, next_step=? WHERE payment_id=?",
                        (_INQUIRE, payment_id))

    def note_next_step(self, payment_id: str, step: str, inquiry_rounds: int) -> None:
        self.db.execute("UPDATE executions SET next_step=?, inquiry_rounds=? WHERE payment_id=?",
                        (step, inquiry_rounds, payment_id))

    def record_outcome(self, payment_id: str, outcome: bytes) -> None:
        self.db.execute("UPDATE executions SET outcome_event=? WHERE payment_id=?", (outcome, payment_id))

    def save_breaker(self, tenant_id: str, rail: str, snapshot, now_s: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO breakers VALUES (?,?,?,?,?,?,?,?,?,?)",
            (tenant_id, rail, snapshot.state, snapshot.since_s, snapshot.retry_at_s, snapshot.calls,
             snapshot.failure_rate, snapshot.slow_rate, snapshot.trips, now_s))


def read_breaker_states(path: Path) -> list[dict]:
    """Every rail breaker's last saved state, for /metrics (empty before execution ran)."""
    if not path.exists():
        return []
    db = open_sqlite(path, read_only=True)
    try:
        return [dict(row) for row in db.execute("SELECT * FROM breakers ORDER BY tenant_id, rail")]
    except Exception:  # the table appears with the first execution process
        return []
    finally:
        db.close()


class ExecutionStage(Stage):
    name = "execution"
    input_topics = ("routed", "posted")
    input_event_types = frozenset({"PaymentRouted", "FundsReserved"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, codec: EventCodec,
                 client: ClearingBatchClient, url_for: Callable[[str, str], str],
                 retry: RetrySettings = RetrySettings(), rng: random.Random | None = None) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.client = client
        self.url_for = url_for
        self.retry = retry
        # bandit B311: backoff jitter, not a secret.
        self.rng = rng or random.Random()  # nosec B311
        self.store = ExecutionStore(data_dir / "execution.sqlite")
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        # Payments whose clearing call is out, answered by a `Pending` not yet finished.
        self._calling: set[str] = set()

    def breaker(self, tenant_id: str, rail: RailConfig, now_s: float) -> CircuitBreaker:
        key = (tenant_id, rail.name)
        if key not in self.breakers:
            self.breakers[key] = CircuitBreaker(rail.breaker, now_s)
        return self.breakers[key]

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list:
        with transaction(self.store.db):
            outputs: list = []
            ready: dict[str, tuple[Event, Event]] = {}  # payment id -> (routed event, the event to retry)
            for event in events:
                outputs.extend(self._join(event, ready))
            outputs.extend(self._execute(list(ready.values()), now))
            return outputs

    def handle(self, event: Event, now: datetime) -> list:
        return self.handle_batch([event], now)

    def _join(self, event: Event, ready: dict[str, tuple[Event, Event]]) -> list[Event]:
        """Record one half of the join; a payment with both halves and no outcome is ready."""
        self.tenant(event)  # an unknown tenant is a configuration fault (dead letter)
        row = self.store.row(event.payment_id)
        if row is not None and row["outcome_event"] is not None:
            return [self.codec.decode(row["outcome_event"])]  # redelivery: the same outcome again
        if event.event_type == "PaymentRouted":
            self.store.note_routed(event.payment_id, event.tenant_id, self.codec.encode(event))
        else:
            self.store.note_reserved(event.payment_id, event.tenant_id)
        row = self.store.row(event.payment_id)
        if event.payment_id in self._calling:
            return []  # a copy of an event whose call is out: that call's answer decides
        if row["routed_event"] is not None and row["reserved"]:
            routed = event if event.event_type == "PaymentRouted" else self.codec.decode(row["routed_event"])
            ready[event.payment_id] = (routed, event)
        return []

    def _execute(self, ready: list[tuple[Event, Event]], now: datetime) -> list:
        """Call the clearing system for every ready payment its rail's breaker lets through,
        and ask the rail about every payment whose earlier call's outcome is unknown."""
        now_s = now.timestamp()
        outputs: list = []
        calls = []  # (kind, routed, trigger, rail, message id, document, timeout)
        touched: set[tuple[str, str]] = set()
        for routed, trigger in ready:
            tenant = self.tenant(routed)
            rail = tenant.rails_by_name.get(routed.payload["rail"])
            if rail is None:
                raise LookupError(f"tenant {tenant.tenant_id} has no rail {routed.payload['rail']!r}")
            deadline = routed.occurred_at + timedelta(seconds=rail.time_limit_s)
            row = self.store.row(routed.payment_id)
            if row["calling"]:
                # A call left and its answer was never read (the process died, or the
                # runtime gave the batch up): the rail may have it.
                self.store.note_uncertain(routed.payment_id)
                row = self.store.row(routed.payment_id)
            if row["next_step"] == _INQUIRE or (now >= deadline and row["sent"]):
                # The rail may have it: ask (never fail it unasked, never send it blindly).
                attempt = row["attempts"]
                document = build_pacs028([StatusRequest(routed.payment.end_to_end_id, routed.payment_id)],
                                         message_id=inquiry_message_id(routed.payment_id, attempt),
                                         created_at=now, original_message_id=clearing_message_id(routed.payment_id))
                calls.append(("inquiry", routed, trigger, rail, clearing_message_id(routed.payment_id), document,
                              rail.clearing.timeout_ms / 1000))
                continue
            if now >= deadline:
                outputs.append(self._time_limit_failure(routed, rail, now))
                continue
            breaker = self.breaker(tenant.tenant_id, rail, now_s)
            touched.add((tenant.tenant_id, rail.name))
            if not breaker.acquire(now_s):
                retry_at = datetime.fromtimestamp(breaker.retry_at(now_s), UTC)
                outputs += self._defer(routed, trigger, rail, ReasonCode.rail_circuit_open,
                                       f"{rail.display_name}: circuit breaker {breaker.state}, calls paused",
                                       breaker.state, min(retry_at, deadline), deadline, now)
                continue
            message_id = clearing_message_id(routed.payment_id)
            document = build_pacs008([routed.payment], rail, message_id=message_id, created_at=routed.occurred_at)
            timeout_s = max(_MIN_CALL_TIMEOUT_S, min(rail.clearing.timeout_ms / 1000,
                                                     (deadline - now).total_seconds()))
            self.store.note_calling(routed.payment_id)
            calls.append(("submit", routed, trigger, rail, message_id, document, timeout_s))
        if not calls:
            self._save_breakers(touched, now_s)
            return outputs
        future = self.client.submit_many_async([
            (self.url_for(rail.name, rail.clearing.endpoint_path if kind == "submit"
                          else rail.clearing.status_inquiry_path), document, timeout_s)
            for kind, _, _, rail, _, document, timeout_s in calls])
        self._calling.update(routed.payment_id for _, routed, *_ in calls)
        return [*outputs, Pending(future, finish=partial(self._answered, calls, touched, now),
                                  abandon=partial(self._abandoned, calls, now_s))]

    def _answered(self, calls: list, touched: set[tuple[str, str]], now: datetime,
                  answers: list[tuple[bytes | Exception, float]]) -> list:
        """The outcomes of a batch's clearing calls, once they all answered (or timed out)."""
        now_s = now.timestamp()
        outputs: list = []
        with transaction(self.store.db):
            self._calling.difference_update(routed.payment_id for _, routed, *_ in calls)
            # The breaker's clock is the batch's `now` plus each call's own duration, so the
            # stage's decisions depend on its inputs only (and replay exactly in tests).
            answered_s = now_s + max((duration for _, duration in answers), default=0.0)
            for (kind, routed, trigger, rail, message_id, _, _), (answer, duration_s) in zip(calls, answers,
                                                                                            strict=True):
                answered_at = now + timedelta(seconds=duration_s)
                if kind == "inquiry":
                    outputs += self._inquiry_answered(routed, trigger, rail, message_id, answer, now, answered_at)
                    continue
                result = self._interpret(routed, rail, message_id, answer, answered_at)
                breaker = self.breaker(routed.tenant_id, rail, now_s)
                changed = breaker.record(now_s + duration_s, failed=not isinstance(result, Event),
                                         duration_s=duration_s)
                if changed:
                    log.warning("circuit breaker of rail %s is now %s", rail.name, changed,
                                extra={"tenant_id": routed.tenant_id, "rail": rail.name, "breaker_state": changed})
                if isinstance(result, Event):
                    self.store.record_outcome(routed.payment_id, self.codec.encode(result))
                    outputs.append(result)
                    continue
                code, detail, outcome_unknown = result
                if outcome_unknown:
                    self.store.note_uncertain(routed.payment_id)
                    detail += "; the rail will be asked what became of it (status inquiry)"
                else:
                    self.store.note_not_delivered(routed.payment_id)
                log.warning("clearing call failed, the payment waits: %s", detail, extra=routed.log_context())
                deadline = routed.occurred_at + timedelta(seconds=rail.time_limit_s)
                outputs += self._defer(routed, trigger, rail, code, detail, breaker.state, None, deadline, now)
            self._save_breakers(touched, answered_s)
        return outputs

    def _inquiry_answered(self, routed: Event, trigger: Event, rail: RailConfig, message_id: str,
                          raw: bytes | Exception, now: datetime, answered_at: datetime) -> list:
        """What the rail's answer to a status inquiry sent at `now` makes of the payment."""
        answer = read_answer(raw, routed.payment_id)
        deadline = routed.occurred_at + timedelta(seconds=rail.time_limit_s)
        config = rail.status_inquiry
        row = self.store.row(routed.payment_id)
        decision = decide(answer.kind, now=now, deadline=deadline, config=config, rounds=row["inquiry_rounds"])
        context = {**routed.log_context(), "rail": rail.name, "inquiry_answer": answer.kind.value,
                   "inquiry_decision": decision.action.value, "inquiry_rounds": decision.rounds}
        detail = f"{rail.display_name} status inquiry: {answer.detail}"
        if decision.action is Action.settled or (decision.action is Action.failed
                                                 and answer.kind is AnswerKind.rejected):
            event_type, payload = outcome_payload(rail, answer.status, message_id, answered_at)
            outcome = self.emit(routed, event_type, payload, answered_at)
            self.store.record_outcome(routed.payment_id, self.codec.encode(outcome))
            log.warning("status inquiry: %s", answer.detail, extra=context)
            return [outcome]
        if decision.action is Action.failed:  # not received, and the time limit plus margin has passed
            return [self._time_limit_failure(
                routed, rail, now, f"{rail.display_name} did not settle the payment within {rail.time_limit_s:g} s;"
                                   " a status inquiry confirmed it never received it")]
        final_at = deadline + timedelta(seconds=config.not_found_margin_s)
        if decision.action is Action.give_up:
            self.store.note_next_step(routed.payment_id, _INQUIRE, 0)  # a replay asks again, afresh
            detail = (f"{detail}; no confirmed outcome after {decision.rounds} inquiries past the time limit:"
                      " dead-lettered for an operator (payorch dlq)")
            log.error("payment outcome unknown, dead-lettered: %s", detail, extra=context)
            attempt = self.store.count_attempt(routed.payment_id)
            unknown = self.emit(routed, "PaymentDeferred", {
                "rail": rail.name, "reason_code": ReasonCode.clearing_status_unknown.value, "reason_detail": detail,
                "breaker_state": None, "attempt": attempt, "retry_at": now, "deadline_at": now},
                now, discriminator=str(attempt))
            return [unknown, DeadLetter(trigger, PaymentStatusUnknown(detail))]
        if decision.action is Action.resend:
            self.store.note_next_step(routed.payment_id, _SEND, decision.rounds)
            detail += "; sent again (same UETR, never paid twice)"
        else:
            self.store.note_next_step(routed.payment_id, _INQUIRE, decision.rounds)
            detail += "; asked again later"
        log.warning("%s", detail, extra=context)
        # The payment waits at most until its last possible inquiry.
        last_at = deadline + timedelta(seconds=config.longest_wait_after_limit_s())
        return self._defer(routed, trigger, rail, ReasonCode.status_inquiry_pending, detail, None,
                           decision.retry_at, max(last_at, decision.retry_at), now, clamp=False)

    def _abandoned(self, calls: list, now_s: float) -> None:
        """The runtime gave the batch up before its answers: its events come again (and
        the `calling` mark left in the store makes them ask the rail first)."""
        for kind, routed, _, rail, *_ in calls:
            self._calling.discard(routed.payment_id)
            if kind == "submit":
                self.breaker(routed.tenant_id, rail, now_s).release()

    def _save_breakers(self, touched: set[tuple[str, str]], at_s: float) -> None:
        for tenant_id, rail_name in touched:
            snapshot = self.breakers[(tenant_id, rail_name)].snapshot(at_s)
            self.store.save_breaker(tenant_id, rail_name, snapshot, at_s)

    def _defer(self, routed: Event, trigger: Event, rail: RailConfig, code: ReasonCode, detail: str,
               breaker_state: str | None, retry_at: datetime | None, deadline: datetime, now: datetime,
               clamp: bool = True) -> list:
        """Park the payment until `retry_at` (or its backoff), never past its deadline
        when `clamp` (a status inquiry waits past the time limit on purpose)."""
        attempt = self.store.count_attempt(routed.payment_id)
        if retry_at is None:
            retry_at = now + timedelta(seconds=backoff_s(attempt, self.retry, self.rng))
        if clamp:
            retry_at = min(retry_at, deadline)
        deferred = self.emit(routed, "PaymentDeferred", {
            "rail": rail.name, "reason_code": code.value, "reason_detail": detail, "breaker_state": breaker_state,
            "attempt": attempt, "retry_at": retry_at, "deadline_at": deadline}, now, discriminator=str(attempt))
        return [deferred, RetryLater(trigger, code.value, detail, not_before=retry_at)]

    def _time_limit_failure(self, routed: Event, rail: RailConfig, now: datetime, detail: str | None = None) -> Event:
        code = ReasonCode.rail_time_limit_exceeded
        failed = self.emit(routed, "PaymentFailed", {
            "rail": rail.name, "reason_code": code.value, "iso_reason_code": code.iso_code,
            "reason_detail": detail or f"{rail.display_name} did not settle the payment within {rail.time_limit_s:g} s",
            "clearing_message_id": clearing_message_id(routed.payment_id)}, now)
        self.store.record_outcome(routed.payment_id, self.codec.encode(failed))
        log.warning("payment failed: rail time limit of %g s passed", rail.time_limit_s, extra=routed.log_context())
        return failed

    def _interpret(self, event: Event, rail: RailConfig, message_id: str, answer,
                   answered_at: datetime) -> Event | tuple[ReasonCode, str, bool]:
        """The outcome event of one clearing answer, or the transient failure to retry and
        whether the rail may have acted on the payment (then it is asked, not sent again)."""
        if isinstance(answer, ClearingTimeout):
            return ReasonCode.clearing_timeout, f"{rail.display_name} did not answer in time: {answer}", True
        if isinstance(answer, ClearingUnavailable):
            return (ReasonCode.clearing_unavailable, f"{rail.display_name} unavailable: {answer}",
                    answer.outcome_unknown)
        if isinstance(answer, ClearingError):
            return ReasonCode.clearing_unavailable, f"{rail.display_name} answered unreadably: {answer}", True
        try:
            report = parse_pacs002(answer)
        except IsoDocumentError as exc:
            return ReasonCode.clearing_unavailable, f"{rail.display_name} answered unreadably: {exc}", True
        status = next((s for s in report.statuses if s.original_uetr in (None, event.payment_id)), None)
        if status is None and report.group_status == "RJCT":
            # The whole message was refused (e.g. FF01): the payment is refused with it.
            status = TransactionStatus(original_end_to_end_id=event.payment.end_to_end_id,
                                       original_uetr=event.payment_id, status="RJCT",
                                       reason_code=report.group_reason_code, reason_text=report.group_reason_text)
        if status is None:
            return (ReasonCode.clearing_unavailable, f"{rail.display_name} answered without mentioning the payment",
                    True)
        event_type, payload = outcome_payload(rail, status, message_id, answered_at)
        return self.emit(event, event_type, payload, answered_at)

    def close(self) -> None:
        self.client.close()
