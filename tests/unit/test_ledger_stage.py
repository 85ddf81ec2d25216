"""Ledger: two-phase transfers under duplicates, reordering, races and crashes, on every
storage backend (the `backend` fixture in tests/unit/conftest.py: SQLite, and DynamoDB on
a local DynamoDB EMULATOR).

The simulation is seeded and builds every input deterministically (payment ids, amounts,
accounts, order, batch sizes, crash points), so a failing case replays exactly with its
test id, e.g. `pytest 'tests/unit/test_ledger_stage.py::test_simulation[dynamodb-1]'`.
Set PAYORCH_LEDGER_SIM_SEED=<n> to run one more seed of your choice on both backends.
"""

from __future__ import annotations

import dataclasses
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from orchestrator.events import Event, EventCodec, received_event
from orchestrator.intake.models import CreditTransferIn
from orchestrator.ledger_store import (
    BalanceMove,
    Entry,
    FundsCheck,
    LedgerChange,
    LedgerConflict,
    LedgerStore,
    SqliteLedgerStore,
    Transfer,
)
from orchestrator.ledger_verify import verify_configured_ledger, verify_ledger
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.ledger import LedgerInvariantError, LedgerStage, customer_account_id
from orchestrator.validation import normalise_payment
from orchestrator.tenants import AccountFunding
from tests.unit.stage_fixtures import T0, TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")
RAILS = {"emea": ["sepa_inst", "fps"], "na": ["fednow", "lynx"]}


def routed_and_result(tenant="emea", index=0, *, success=True, amount=None, cause: Event | None = None):
    rec = cause or received(tenant, index, amount=amount)
    rail = RAILS[tenant][index % 2]
    routed = _follow(rec, "PaymentRouted", "routing", {"rail": rail, "clearing_system_code": "X",
                                                       "settlement_mode": "rtgs"})
    return routed, result_of(routed, success)


def result_of(routed: Event, success: bool) -> Event:
    rail = routed.payload["rail"]
    if success:
        return _follow(routed, "PaymentExecuted", "execution", {
            "rail": rail, "clearing_message_id": "M", "clearing_status": "ACSC",
            "accepted_at": datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)})
    return _follow(routed, "PaymentFailed", "execution", {
        "rail": rail, "reason_code": "clearing_rejected", "iso_reason_code": "AC03",
        "reason_detail": "unknown account", "clearing_message_id": "M"})


def _follow(cause: Event, event_type: str, stage: str, payload: dict) -> Event:
    # The trace context of a derived event gets a random span id; keep the cause's so the
    # simulation's inputs are exactly the same on every run of a seed.
    return dataclasses.replace(follow(cause, event_type, stage, payload), traceparent=cause.traceparent)


def seeded_received(rng: random.Random, tenant: str, index: int, amount: str, debtor_variant: int) -> Event:
    payment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    body = sample_body(tenant, index, amount=amount, unique=False, debtor_variant=debtor_variant)
    body["end_to_end_id"] = f"SIM-{payment_id[:8]}-{index}"
    payment = normalise_payment(CreditTransferIn.model_validate(body).to_payment(payment_id, tenant))
    event = received_event(payment, channel="json", idempotency_key=None, occurred_at=T0, region="test")
    return dataclasses.replace(event, traceparent=f"00-{uuid.UUID(payment_id).hex}-{index + 1:016x}-01")


def with_funding_line(limit: str) -> dict:
    return {tid: tenant.model_copy(update={"funding": tenant.funding.model_copy(
        update={"credit_limit": Decimal(limit)})}) for tid, tenant in TENANTS.items()}


# -- reading the ledger through the port, as an auditor would -------------------------------

@dataclasses.dataclass
class Books:
    accounts: dict
    transfers: dict
    legs: dict  # payment id -> {(phase, side): Entry}

    @classmethod
    def read(cls, store: LedgerStore) -> Books:
        legs: dict = {}
        for entry in store.iter_entries():
            legs.setdefault(entry.payment_id, {})[(entry.phase, entry.side)] = entry
        return cls({a.account_id: a for a in store.iter_accounts()},
                   {t.payment_id: t for t in store.iter_transfers()}, legs)

    def posts(self, payment_id: str) -> int:
        return sum(1 for phase, _ in self.legs.get(payment_id, {}) if phase == "post")


def check_invariants(store: LedgerStore, outcomes: dict[str, bool]) -> Books:
    """Every reservation ended, each payment posted exactly once or not at all, and the
    auditor's verification passes."""
    books = Books.read(store)
    result = verify_ledger(store)
    assert result.ok, result.report_lines()
    assert result.entries == sum(len(legs) for legs in books.legs.values())
    assert sum(a.debits_pending for a in books.accounts.values()) == 0, "every reservation was posted or released"
    assert sum(a.credits_pending for a in books.accounts.values()) == 0
    assert sum(a.debits_posted for a in books.accounts.values()) == sum(a.credits_posted for a in books.accounts.values())
    for payment_id, success in outcomes.items():
        assert books.transfers[payment_id].state == ("POSTED" if success else "RELEASED")
        assert books.posts(payment_id) == (2 if success else 0), "posted exactly once (one debit and one credit entry)"
    return books


def new_ledger(backend, tenants=TENANTS) -> LedgerStage:
    return LedgerStage(tenants, "test", backend.open(), CODEC)


# -- the two-phase state machine ------------------------------------------------------------

def test_reserve_then_post(backend):
    ledger = new_ledger(backend)
    routed, executed = routed_and_result()
    [reserved] = ledger.handle_batch([routed], at(1))
    assert reserved.event_type == "FundsReserved"
    assert reserved.payload["amount_minor"] == routed.payment.amount_minor
    limit = TENANTS["emea"].limit_minor(TENANTS["emea"].funding.credit_limit, "EUR")
    assert reserved.payload["available_after_minor"] == limit - routed.payment.amount_minor
    [posted] = ledger.handle_batch([executed], at(2))
    assert posted.event_type == "FundsPosted"
    assert ledger.handle_batch([executed], at(3)) == [posted]
    # A late routed event re-emits its reservation's event (it may never have been
    # published) and changes nothing.
    assert ledger.handle_batch([routed], at(4)) == [reserved]
    books = check_invariants(ledger.store, {routed.payment_id: True})
    assert set(books.legs[routed.payment_id]) == {("reserve", "D"), ("reserve", "C"), ("reserve_void", "D"),
                                                  ("reserve_void", "C"), ("post", "D"), ("post", "C")}


def test_failure_releases_the_reservation(backend):
    ledger = new_ledger(backend)
    routed, failed = routed_and_result(success=False)
    [reserved] = ledger.handle_batch([routed], at(1))
    [released] = ledger.handle_batch([failed], at(2))
    assert released.event_type == "FundsReleased" and released.payload["amount_minor"] == routed.payment.amount_minor
    assert ledger.handle_batch([routed], at(3)) == [reserved]  # a late duplicate does not reserve again
    assert ledger.handle_batch([failed], at(4)) == [released]
    check_invariants(ledger.store, {routed.payment_id: False})


def test_result_before_reservation_posts_once(backend):
    ledger = new_ledger(backend)
    routed, executed = routed_and_result()
    [posted] = ledger.handle_batch([executed], at(1))
    assert ledger.handle_batch([routed], at(2)) == []
    check_invariants(ledger.store, {routed.payment_id: True})
    assert posted.event_type == "FundsPosted"


def test_failure_before_reservation_releases_nothing(backend):
    ledger = new_ledger(backend)
    routed, failed = routed_and_result(success=False)
    [released] = ledger.handle_batch([failed], at(1))
    assert (released.event_type, released.payload["amount_minor"]) == ("FundsReleased", 0)
    assert ledger.handle_batch([routed, failed], at(2)) == [released]
    books = check_invariants(ledger.store, {routed.payment_id: False})
    assert routed.payment_id not in books.legs


def test_an_account_with_its_own_line_in_the_tenant_file_is_held_to_it(backend):
    rng = random.Random(7)
    routed, other = (_follow(seeded_received(rng, "emea", 0, "150.00", variant), "PaymentRouted", "routing",
                             {"rail": "sepa_inst", "clearing_system_code": "X", "settlement_mode": "rtgs"})
                     for variant in (1, 50))
    debtor = routed.payment.debtor.account.iban
    assert debtor != other.payment.debtor.account.iban
    funding = TENANTS["emea"].funding.model_copy(update={"accounts": (
        AccountFunding(account=" ".join([debtor[:4], debtor[4:]]).lower(), credit_limit=Decimal("100.00")),)})
    tenants = {**TENANTS, "emea": TENANTS["emea"].model_copy(update={"funding": funding})}
    ledger = new_ledger(backend, tenants)
    [refused] = ledger.handle_batch([routed], at(1))
    assert (refused.event_type, refused.payload["iso_reason_code"]) == ("PaymentRejected", "AM04")
    [reserved] = ledger.handle_batch([other], at(2))
    assert reserved.event_type == "FundsReserved", "other accounts keep the tenant's default line"


def test_insufficient_funds_is_a_rejection_event(backend):
    ledger = new_ledger(backend)
    limit = TENANTS["emea"].funding.credit_limit
    big, _ = routed_and_result(amount=format(limit, "f"))
    first = ledger.handle_batch([big], at(1))
    assert first[0].event_type == "FundsReserved" and first[0].payload["available_after_minor"] == 0
    second, second_failed = routed_and_result(amount="0.01", success=False)
    [rejected] = ledger.handle_batch([second], at(2))
    assert (rejected.event_type, rejected.payload["reason_code"]) == ("PaymentRejected", "insufficient_funds")
    assert rejected.payload["iso_reason_code"] == "AM04"
    assert ledger.handle_batch([second], at(3)) == [rejected]
    assert ledger.handle_batch([second_failed], at(4)) == [rejected]  # the rejection stands
    books = Books.read(ledger.store)
    assert books.transfers[second.payment_id].state == "REJECTED" and second.payment_id not in books.legs


def test_rejected_then_executed_posts_past_the_line_and_verify_says_so(backend):
    """The documented gap: the reservation races execution, so the clearing system can move
    money the funds check refused. The ledger records it, and verify fails on the breach."""
    ledger = new_ledger(backend)
    limit = TENANTS["emea"].funding.credit_limit
    big, _ = routed_and_result(amount=format(limit, "f"))
    second, second_executed = routed_and_result(amount="0.01")
    [_, rejected] = ledger.handle_batch([big, second], at(1))
    [posted] = ledger.handle_batch([second_executed], at(2))
    assert posted.event_type == "FundsPosted"
    assert ledger.handle_batch([second, second_executed], at(3)) == [rejected, posted], "neither event is lost"
    result = verify_ledger(ledger.store)
    assert set(result.violation_counts) == {"no_account_past_its_limit"}, result.report_lines()
    [detail] = result.violations["no_account_past_its_limit"]
    assert "is 1 minor units past its limit" in detail and "1 were posted without a reservation" in detail
    # The report names the account by its digest id, never by its number.
    assert "DE89370400440532013000" not in "\n".join(result.report_lines())


def test_same_payment_with_another_amount_is_refused(backend):
    ledger = new_ledger(backend)
    routed, _ = routed_and_result()
    ledger.handle_batch([routed], at(1))
    tampered = dataclasses.replace(routed, payment=routed.payment.replace(amount_minor=routed.payment.amount_minor + 1))
    with pytest.raises(LedgerInvariantError):
        ledger.handle_batch([tampered], at(2))


@pytest.mark.parametrize("first_success", [True, False])
def test_a_result_contradicting_the_closed_transfer_is_an_invariant_error(backend, first_success):
    ledger = new_ledger(backend)
    routed, result = routed_and_result(success=first_success)
    contrary = result_of(routed, not first_success)
    ledger.handle_batch([routed, result], at(1))
    before = Books.read(ledger.store)
    with pytest.raises(LedgerInvariantError):
        ledger.handle_batch([contrary], at(2))
    assert Books.read(ledger.store) == before


# -- races and crashes ----------------------------------------------------------------------

def _race_before_first_apply(store: LedgerStore, racer) -> list[Exception]:
    """Run `racer` just before the store applies its first change, as another ledger
    instance (after a rebalance) or another payment of the same debtor would."""
    real_apply, conflicts, raced = store.apply, [], []

    def apply(change: LedgerChange) -> None:
        if not raced:
            raced.append(True)
            racer()
        try:
            real_apply(change)
        except LedgerConflict as exc:
            conflicts.append(exc)
            raise

    store.apply = apply
    return conflicts


def _second_instance(backend, ledger: LedgerStage) -> LedgerStage:
    # SQLite serialises writers with one lock, so a second connection would wait for the
    # first; the race is then staged on the same connection, inside the same transaction.
    store = ledger.store if backend.name == "sqlite" else backend.open()
    return LedgerStage(TENANTS, "test", store, CODEC)


def test_a_redelivery_that_loses_the_race_re_emits_the_stored_event(backend):
    ledger = new_ledger(backend)
    other = _second_instance(backend, ledger)
    routed, executed = routed_and_result()
    ledger.handle_batch([routed], at(1))
    winner: list[Event] = []
    conflicts = _race_before_first_apply(ledger.store, lambda: winner.extend(other.handle(executed, at(2))))
    [posted] = ledger.handle_batch([executed], at(2))
    assert len(conflicts) == 1, "the loser's conditional write was refused"
    assert [posted] == winner, "the loser re-emits the winner's stored event"
    check_invariants(ledger.store, {routed.payment_id: True})


def test_a_reservation_that_loses_a_funds_race_is_rejected(backend):
    ledger = new_ledger(backend)
    other = _second_instance(backend, ledger)
    limit = TENANTS["emea"].funding.credit_limit
    first, _ = routed_and_result(amount=format(limit - 1, "f"))
    rival, _ = routed_and_result(amount="2.00")
    assert customer_account_id(first.payment, "debtor") == customer_account_id(rival.payment, "debtor")
    rival_out: list[Event] = []
    conflicts = _race_before_first_apply(ledger.store, lambda: rival_out.extend(other.handle(rival, at(1))))
    [outcome] = ledger.handle_batch([first], at(1))
    assert [e.event_type for e in rival_out] == ["FundsReserved"]
    assert len(conflicts) == 1, "the funds condition refused the stale decision"
    assert (outcome.event_type, outcome.payload["reason_code"]) == ("PaymentRejected", "insufficient_funds")
    books = Books.read(ledger.store)
    account = books.accounts[customer_account_id(first.payment, "debtor")]
    assert account.debits_pending == 200 and account.available_minor == limit * 100 - 200
    assert verify_ledger(ledger.store).ok


class SimulatedCrash(Exception):
    """The process dies here: nothing after this point is written or published."""


def crash_after(store: LedgerStore, applies: int) -> None:
    """The store's process dies before its next `applies + 1`-th write (then stays dead)."""
    real_apply, done = store.apply, []

    def apply(change: LedgerChange) -> None:
        if len(done) >= applies:
            raise SimulatedCrash
        done.append(change)
        real_apply(change)

    store.apply = apply


def test_a_crash_mid_batch_leaves_whole_changes_and_redelivery_completes_them(backend):
    ledger = new_ledger(backend)
    pairs = [routed_and_result(index=i, success=i % 3 != 0) for i in range(6)]
    batch = [event for pair in pairs for event in pair]
    crash_after(ledger.store, 5)
    with pytest.raises(SimulatedCrash):
        ledger.handle_batch(batch, at(1))
    ledger.close()
    ledger = new_ledger(backend)
    books = Books.read(ledger.store)
    # SQLite rolls the batch back; DynamoDB keeps the five changes that committed, whole.
    assert len(books.transfers) == (0 if backend.name == "sqlite" else 3)
    assert verify_ledger(ledger.store).ok
    outputs = ledger.handle_batch(batch, at(1))
    assert [e.event_type for e in outputs].count("FundsPosted") == 4
    assert ledger.handle_batch(batch, at(2)) == outputs, "a second redelivery re-emits the same events"
    check_invariants(ledger.store, {routed.payment_id: i % 3 != 0 for i, (routed, _) in enumerate(pairs)})


# Payments per seed. The emulator copies every table a transaction touches (its rollback),
# so its cost grows with the square of the payments: DynamoDB runs fewer, on fewer seeds.
SIM_PAYMENTS = {"sqlite": 2_000, "dynamodb": 300}
SIM_SEEDS = {"sqlite": [0, 1, 2, 3], "dynamodb": [0]}
_EXTRA_SEED = os.environ.get("PAYORCH_LEDGER_SIM_SEED")
SIM_CASES = [pytest.param(name, seed, order, id=f"{name}-{order}-{seed}")
             for name, seeds in SIM_SEEDS.items() for order in ("gated", "unordered")
             for seed in seeds + ([int(_EXTRA_SEED)] if _EXTRA_SEED else [])]


@dataclasses.dataclass
class SimulationRun:
    ledger: LedgerStage
    outcomes: dict[str, bool]  # payment id -> executed (True) or failed
    published: dict[str, Event]  # event id -> event: what reached Kafka
    crashes: Counter


def simulate(open_store, seed: int, payments: int, order: str = "unordered") -> SimulationRun:
    """Everything comes from `seed`: payments, amounts, debtors, outcomes, duplicates, order,
    batch sizes and crash points.

    `unordered`: every routed event and execution result is in the delivery sequence from
    the start, shuffled, so results often come before their reservation (the ledger must
    accept any order). `gated`: what execution does now: a payment's result is delivered
    only after its `FundsReserved` was published (a crash before publishing delays it), at a
    random later point, and a payment the ledger rejected is never executed."""
    rng = random.Random(seed)
    tenants = with_funding_line("40000.00")
    outcomes, queue, results = {}, [], {}
    for i in range(payments):
        tenant, success = rng.choice(["emea", "na"]), rng.random() < 0.8
        amount = f"{rng.randrange(1, 3_000)}.{rng.randrange(100):02d}"
        cause = seeded_received(rng, tenant, i, amount, debtor_variant=rng.randrange(12))
        routed, result = routed_and_result(tenant, i, success=success, cause=cause)
        outcomes[routed.payment_id] = success
        if order == "gated":
            results[routed.payment_id] = result
            queue += [routed] * (1 + rng.randrange(2))
        else:
            queue += [routed, result] + [rng.choice([routed, result]) for _ in range(rng.randrange(3))]
    rng.shuffle(queue)

    ledger = LedgerStage(tenants, "test", open_store(), CODEC)
    published: dict[str, Event] = {}
    crashes = Counter()

    def publish(events: list[Event], after: int) -> None:
        for event in events:
            first_time = event.event_id not in published
            published[event.event_id] = event
            if order == "gated" and first_time and event.event_type == "FundsReserved":
                # Execution saw the reservation: its result (once or twice) comes later.
                for _ in range(1 + (rng.random() < 0.2)):
                    queue.insert(rng.randint(after, len(queue)), results[event.payment_id])

    position = 0
    while position < len(queue):
        size = rng.randrange(1, 40)
        batch = queue[position:position + size]
        roll = rng.random()
        crash = "mid-batch" if roll < 0.1 else "before publish" if roll < 0.2 else "after publish" if roll < 0.3 else None
        real_apply = ledger.store.apply
        if crash == "mid-batch":
            # The process dies before its k-th write of the batch (if the batch has that many).
            crash_after(ledger.store, rng.randrange(len(batch)))
        try:
            outputs = ledger.handle_batch(batch, at(position))
        except SimulatedCrash:
            outputs = None
            crashes["mid-batch"] += 1  # nothing of this batch is published
        finally:
            ledger.store.apply = real_apply  # a crash that did not happen in this batch never will
        if outputs is not None:
            if crash in (None, "mid-batch"):  # no crash, or the batch ended before its crash point
                publish(outputs, position + len(batch))
                position += len(batch)
                continue
            crashes[crash] += 1
            if crash == "after publish":  # published; the offsets were not committed
                publish(outputs, position + len(batch))
            # "before publish": committed to the store, never sent to Kafka.
        # Restart: a new process on the same store gets the same batch again.
        ledger.close()
        ledger = LedgerStage(tenants, "test", open_store(), CODEC)
        redelivered = ledger.handle_batch(batch, at(position))
        if outputs is not None:
            decided, again = {e.event_id for e in outputs}, {e.event_id for e in redelivered}
            assert decided <= again, "a redelivered batch re-emits every event it decided before"
            assert again <= decided | published.keys(), "a committed batch decides nothing new"
        publish(redelivered, position + len(batch))
        position += len(batch)
    return SimulationRun(ledger, outcomes, published, crashes)


@pytest.mark.parametrize(("backend", "seed", "order"), SIM_CASES, indirect=["backend"])
def test_simulation(backend, seed, order):
    """Thousands of payments (SIM_PAYMENTS per seed and backend) on 48 debtor accounts
    whose line is tight enough that reservations are refused: every event delivered at
    least once, some two or three times, in random order, in random batches, with crashes
    in the middle of a batch (the rest of it is lost), after a batch committed but before
    its events were published, and after they were published but before the offsets were
    committed; each time the batch is redelivered to a new process."""
    run = simulate(backend.open, seed, SIM_PAYMENTS[backend.name], order)
    ledger, outcomes, published, crashes = run.ledger, run.outcomes, run.published, run.crashes
    books = Books.read(ledger.store)
    result = verify_ledger(ledger.store)
    if order == "gated":
        # No payment is executed without a reservation, so every invariant holds, the
        # limit included: the funds check held under every race, duplicate and crash.
        assert result.ok, result.report_lines()
    else:
        # The only violation allowed here is the gap gating closes: postings a result
        # forced past a line (see test_rejected_then_executed_...); anything else is a bug.
        assert set(result.violation_counts) <= {"no_account_past_its_limit"}, result.report_lines()
    unreserved = Counter()
    for payment_id, transfer in books.transfers.items():
        if transfer.state == "POSTED" and ("reserve", "D") not in books.legs.get(payment_id, {}):
            unreserved[transfer.debit_account] += transfer.amount_minor
    for account in books.accounts.values():
        assert account.debits_pending == account.credits_pending == 0, "every reservation was posted or released"
        if account.kind == "customer":
            # Only unreserved postings can take an account past its line, and never by more
            # than they add up to: every reservation passed the funds check.
            past = account.debits_posted - account.credits_posted - account.credit_limit_minor
            assert past <= unreserved[account.account_id], account.account_id
    assert sum(a.debits_posted for a in books.accounts.values()) == sum(a.credits_posted for a in books.accounts.values())
    states = Counter()
    for payment_id, success in outcomes.items():
        transfer = ledger.store.transfer(payment_id)
        states[transfer.state] += 1
        assert transfer.state in ({"POSTED"} if success else {"RELEASED"}) | {"REJECTED"}, payment_id
        if transfer.state == "REJECTED":
            assert order == "unordered" or payment_id not in books.legs, "a rejected payment is never executed"
        else:
            assert transfer.state == ("POSTED" if success else "RELEASED"), payment_id
        assert books.posts(payment_id) == (2 if transfer.state == "POSTED" else 0), "posted exactly once, or never"
        # Nothing lost: every event the ledger stored for the payment reached Kafka.
        for stored in (transfer.reserved_event, transfer.final_event):
            if stored is not None:
                assert CODEC.decode(stored).event_id in published, payment_id
    by_payment = Counter((e.correlation_id, e.event_type) for e in published.values())
    assert max(by_payment.values()) == 1, "one event id per payment and event type"
    if order == "gated":
        assert not unreserved, "gated: nothing is posted without a reservation"
    # The run exercised what it claims to: rejections, releases, postings, every crash kind.
    assert states["REJECTED"] and states["RELEASED"] and states["POSTED"], states
    assert crashes["mid-batch"] and crashes["before publish"] and crashes["after publish"], crashes


@pytest.mark.parametrize("order", ["gated", "unordered"])
def test_a_seed_replays_exactly(tmp_path, order):
    """What makes a failing seed worth its id: the same seed gives the same books and the
    same published events, run after run."""
    runs = []
    for attempt in range(2):
        path = tmp_path / f"run{attempt}" / "ledger.sqlite"
        run = simulate(lambda path=path: SqliteLedgerStore(path), seed=11, payments=300, order=order)
        runs.append((Books.read(run.ledger.store), sorted(run.published), sorted(run.crashes.items())))
        run.ledger.close()
    assert runs[0] == runs[1]
    assert len(runs[0][1]) > 300 and runs[0][2], "a run with events and crashes"


def test_both_backends_decide_alike(tmp_path, dynamodb_emulator):
    """The decision logic does not depend on the backend: the same deliveries give the same
    events (byte for byte, but for the trace span id, which is random by design)."""
    from orchestrator.ledger_store_dynamodb import DynamoDBLedgerStore
    from tests.unit.conftest import emulator_client

    rng = random.Random(7)
    tenants = with_funding_line("3000.00")
    deliveries = []
    for i in range(120):
        cause = seeded_received(rng, "emea", i, f"{rng.randrange(1, 900)}.00", debtor_variant=rng.randrange(4))
        routed, result = routed_and_result("emea", i, success=rng.random() < 0.8, cause=cause)
        deliveries += [routed, result, rng.choice([routed, result])]
    rng.shuffle(deliveries)
    stores = [SqliteLedgerStore(tmp_path / "ledger.sqlite"),
              DynamoDBLedgerStore(emulator_client(dynamodb_emulator), f"alike{uuid.uuid4().hex[:8]}-")]
    ledgers = [LedgerStage(tenants, "test", store, CODEC) for store in stores]
    kinds = Counter()
    for start in range(0, len(deliveries), 25):
        outputs = [[CODEC.encode(dataclasses.replace(e, traceparent=None))
                    for e in ledger.handle_batch(deliveries[start:start + 25], at(start))] for ledger in ledgers]
        assert outputs[0] == outputs[1]
        kinds.update(CODEC.decode(b).event_type for b in outputs[0])
    assert kinds["PaymentRejected"] and kinds["FundsPosted"] and kinds["FundsReleased"], kinds
    books = [Books.read(store) for store in stores]
    assert books[0].accounts == books[1].accounts and books[0].transfers == books[1].transfers
    for ledger in ledgers:
        ledger.close()


def test_a_decision_that_keeps_losing_races_is_retried_later_not_dead_lettered(backend):
    from orchestrator.retries import is_transient
    from orchestrator.stages.ledger import LedgerContention

    ledger = new_ledger(backend)
    routed, _ = routed_and_result()

    def always_conflicts(change: LedgerChange) -> None:
        raise LedgerConflict("another writer won")

    ledger.store.apply = always_conflicts
    with pytest.raises(LedgerContention) as caught:
        ledger.handle_batch([routed], at(1))
    assert is_transient(caught.value)
    assert ledger.store.transfer(routed.payment_id) is None


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_dynamodb_outages_and_throttling_are_transient(backend):
    from botocore.exceptions import ClientError

    from orchestrator.retries import TransientError, is_transient
    from tests.unit.conftest import _free_port, emulator_client

    store = backend.open()
    routed, _ = routed_and_result()
    change = _reservation(routed.payment_id, "cust:a", "clr:b", 1)
    good_client, store.client = store.client, emulator_client(f"http://127.0.0.1:{_free_port()}")  # nobody there
    try:
        for call in (lambda: store.transfer("p"), lambda: store.account("a"), lambda: store.apply(change)):
            with pytest.raises(TransientError) as caught:
                call()
            assert is_transient(caught.value)
    finally:
        store.client.close()
        store.client = good_client

    def throttled(**_):
        raise good_client.exceptions.TransactionCanceledException(
            {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
             "CancellationReasons": [{"Code": "None"}, {"Code": "ThrottlingError"}]}, "TransactWriteItems")

    store.client.transact_write_items = throttled
    with pytest.raises(TransientError, match="throttled"):
        store.apply(change)

    def invalid(**_):
        raise good_client.exceptions.TransactionCanceledException(
            {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
             "CancellationReasons": [{"Code": "ValidationError"}]}, "TransactWriteItems")

    store.client.transact_write_items = invalid
    with pytest.raises(ClientError) as caught:  # a bug, not weather: dead-lettered, loudly
        store.apply(change)
    assert not is_transient(caught.value)


# -- the storage port -----------------------------------------------------------------------

def _reservation(payment_id: str, debit: str, credit: str, amount: int) -> LedgerChange:
    return LedgerChange(
        payment_id=payment_id, expected_state=None, new_state="RESERVED",
        create=Transfer(payment_id, "emea", "EUR", amount, debit, credit, "RESERVED"), reserved_event=b"r",
        moves=(BalanceMove(debit, "debits_pending", amount), BalanceMove(credit, "credits_pending", amount)),
        entries=(Entry(payment_id, "reserve", "D", debit, amount, 1.5), Entry(payment_id, "reserve", "C", credit, amount, 1.5)),
        funds_check=FundsCheck(debit, amount))


def test_the_store_applies_a_change_whole_or_not_at_all(backend):
    store = backend.open()
    store.open_account("cust:a", "emea", "EUR", "customer", 1_000)
    store.open_account("cust:a", "emea", "EUR", "customer", 5)  # opening again changes nothing
    store.open_account("clr:b", "emea", "EUR", "clearing", None)
    empty = Books.read(store)
    assert empty.accounts["cust:a"].available_minor == 1_000 and empty.accounts["clr:b"].credit_limit_minor is None
    with pytest.raises(LedgerConflict):
        store.apply(_reservation("p1", "cust:a", "clr:b", 1_001))  # beyond the line
    assert Books.read(store) == empty, "a refused change writes nothing"
    store.apply(_reservation("p1", "cust:a", "clr:b", 1_000))  # exactly the line is allowed
    reserved = Books.read(store)
    assert reserved.accounts["cust:a"].available_minor == 0 and reserved.accounts["clr:b"].credits_pending == 1_000
    assert store.transfer("p1").reserved_event == b"r"
    with pytest.raises(LedgerConflict):
        store.apply(_reservation("p1", "cust:a", "clr:b", 1))  # the transfer exists
    # A transition whose transfer condition holds but whose entry already exists: nothing
    # of it may land, not even the state change or the balance moves.
    clash = LedgerChange(payment_id="p1", expected_state="RESERVED", new_state="POSTED", final_event=b"f",
                         moves=(BalanceMove("cust:a", "debits_posted", 1_000),
                                BalanceMove("clr:b", "credits_posted", 1_000)),
                         entries=(Entry("p1", "reserve", "D", "cust:a", 1_000, 2.0),
                                  Entry("p1", "reserve", "C", "clr:b", 1_000, 2.0)))
    with pytest.raises(LedgerConflict):
        store.apply(clash)
    assert Books.read(store) == reserved and store.transfer("p1").final_event is None
    stale = dataclasses.replace(clash, expected_state="REJECTED", entries=())
    with pytest.raises(LedgerConflict):
        store.apply(stale)
    assert Books.read(store) == reserved


def test_a_change_must_balance_each_leg():
    with pytest.raises(ValueError, match="unbalanced"):
        LedgerChange(payment_id="p", expected_state="RESERVED", new_state="POSTED",
                     entries=(Entry("p", "post", "D", "a", 2, 0.0), Entry("p", "post", "C", "b", 1, 0.0)))


def test_bootstrap_builds_the_configured_backend(backend, tmp_path, monkeypatch):
    from orchestrator.bootstrap import build_stage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")  # the emulator ignores them; botocore signs
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    stage = build_stage("ledger", backend.settings(tmp_path), TENANTS, CODEC)
    try:
        assert type(stage.store).__name__ == {"sqlite": "SqliteLedgerStore", "dynamodb": "DynamoDBLedgerStore"}[backend.name]
        routed, executed = routed_and_result()
        stage.handle_batch([routed, executed], at(1))
        # What the stage wrote is what a store opened separately (the fixture's) reads.
        assert backend.open().transfer(routed.payment_id).state == "POSTED"
    finally:
        stage.close()


# -- payorch ledger verify ------------------------------------------------------------------

def _settled_ledger(backend, tmp_path):
    from orchestrator.stages.tracking import TrackingStore

    ledger = new_ledger(backend)
    tracking = TrackingStore(tmp_path / "tracking.sqlite")
    settled_pair = routed_and_result(index=0)
    failed_pair = routed_and_result(index=1, success=False)
    outputs = ledger.handle_batch([*settled_pair, *failed_pair], at(1))
    settled = _follow(settled_pair[1], "PaymentSettled", "settlement", {
        "rail": "sepa_inst", "cycle_id": "c", "settlement_mode": "rtgs", "settlement_date": "d"})
    tracking.record([*settled_pair, *failed_pair, settled, *outputs])
    return ledger, tracking, settled_pair[0], failed_pair[0]


def _corrupt(store: LedgerStore, how: str, **kw) -> None:
    """Write past the port, as a bug or a hand edit would."""
    if isinstance(store, SqliteLedgerStore):
        db = store.db
        if how == "delete_entry":
            db.execute("DELETE FROM entries WHERE entry_id=?", (f"{kw['payment_id']}:{kw['leg']}",))
        elif how == "put_entry":
            e = kw["entry"]
            db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?)",
                       (e.entry_id, e.payment_id, e.account_id, e.side, e.phase, e.amount_minor, e.at_s))
        elif how == "set_account":
            for column, value in kw["values"].items():
                if column == "available_minor":
                    continue  # SQLite derives it on every read; there is nothing stored to corrupt
                db.execute(f"UPDATE accounts SET {column}=? WHERE account_id=?", (value, kw["account_id"]))
        elif how == "put_transfer":
            t = kw["transfer"]
            db.execute("INSERT INTO transfers (payment_id, tenant_id, currency, amount_minor, debit_account,"
                       " credit_account, state) VALUES (?,?,?,?,?,?,?)", dataclasses.astuple(t)[:7])
        return
    client = store.client
    if how == "delete_entry":
        client.delete_item(TableName=store.entries_table,
                           Key={"payment_id": {"S": kw["payment_id"]}, "leg": {"S": kw["leg"]}})
    elif how == "put_entry":
        e = kw["entry"]
        client.put_item(TableName=store.entries_table, Item={
            "payment_id": {"S": e.payment_id}, "leg": {"S": f"{e.phase}:{e.side}"}, "account_id": {"S": e.account_id},
            "amount_minor": {"N": str(e.amount_minor)}, "at_s": {"N": repr(e.at_s)}})
    elif how == "set_account":
        names = {f"#c{i}": column for i, column in enumerate(kw["values"])}
        values = {f":v{i}": {"N": str(value)} for i, value in enumerate(kw["values"].values())}
        client.update_item(TableName=store.accounts_table, Key={"account_id": {"S": kw["account_id"]}},
                           UpdateExpression="SET " + ", ".join(f"#c{i} = :v{i}" for i in range(len(names))),
                           ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    elif how == "put_transfer":
        t = kw["transfer"]
        client.put_item(TableName=store.transfers_table, Item={
            "payment_id": {"S": t.payment_id}, "tenant_id": {"S": t.tenant_id}, "currency": {"S": t.currency},
            "amount_minor": {"N": str(t.amount_minor)}, "debit_account": {"S": t.debit_account},
            "credit_account": {"S": t.credit_account}, "state": {"S": t.state}})


def test_verify_passes_a_good_ledger_with_a_one_line_summary(backend, tmp_path):
    ledger, _, _, _ = _settled_ledger(backend, tmp_path)
    result = verify_ledger(ledger.store, tmp_path / "tracking.sqlite")
    assert result.ok, result.report_lines()
    assert result.report_lines() == []
    assert (result.transfers, result.entries, result.payments_checked, result.in_flight) == (2, 10, 2, 0)
    line = result.summary_line()
    assert "\n" not in line and line.startswith("ledger verify: all invariants hold; 2 transfers, 10 journal entries")
    assert backend.name in line


def _entry_of(store: LedgerStore, payment_id: str, leg: str) -> Entry:
    return next(e for e in store.iter_entries() if e.payment_id == payment_id and f"{e.phase}:{e.side}" == leg)


CORRUPTIONS = {
    # name: (how to corrupt, the checks that must fail, a phrase of the report)
    "a posting lost its balancing entry": (
        lambda s, p, f: _corrupt(s, "delete_entry", payment_id=p, leg="post:C"),
        {"debits_equal_credits", "balances_match_journal", "entries_match_transfer"}, "debits"),
    "a balance drifted from its journal": (
        lambda s, p, f: _corrupt(s, "set_account", account_id=s.transfer(p).credit_account,
                                 values={"credits_posted": s.account(s.transfer(p).credit_account).credits_posted + 7}),
        {"balances_match_journal"}, "credits_posted"),
    "a customer account past its line": (
        lambda s, p, f: _corrupt(s, "set_account", account_id=s.transfer(p).debit_account,
                                 values={"credit_limit_minor": 1, "available_minor": 1 - s.transfer(p).amount_minor}),
        {"no_account_past_its_limit"}, "past its limit of 1"),
    "an entry without a payment": (
        lambda s, p, f: [_corrupt(s, "put_entry", entry=dataclasses.replace(_entry_of(s, p, f"post:{side}"),
                                                                             payment_id="ghost-payment"))
                         for side in "DC"],
        {"entries_have_transfers", "balances_match_journal"}, "ghost-payment"),
    "an entry on another account": (
        lambda s, p, f: [_corrupt(s, "delete_entry", payment_id=f, leg=leg) for leg in ("reserve:D", "reserve_void:C")]
        and [_corrupt(s, "put_entry", entry=dataclasses.replace(_entry_of(s, p, leg), payment_id=f))
             for leg in ("reserve:D", "reserve_void:C")],
        {"entries_match_transfer"}, "is on account"),
    "a transfer tracking never saw": (
        lambda s, p, f: _corrupt(s, "put_transfer", transfer=Transfer("ghost-payment", "emea", "EUR", 1,
                                                                      s.transfer(p).debit_account,
                                                                      s.transfer(p).credit_account, "REJECTED")),
        {"postings_have_payments"}, "has no payment in tracking"),
    "a settled payment without its posting": (
        lambda s, p, f: [_corrupt(s, "delete_entry", payment_id=p, leg=leg) for leg in ("post:D", "post:C")],
        {"postings_match_status", "entries_match_transfer"},
        "is SETTLED but the ledger has state POSTED with 0 post entries"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_verify_reports_a_corrupted_ledger(backend, tmp_path, corruption):
    ledger, _, settled, failed = _settled_ledger(backend, tmp_path)
    corrupt, checks, phrase = CORRUPTIONS[corruption]
    corrupt(ledger.store, settled.payment_id, failed.payment_id)
    result = verify_ledger(backend.open(), tmp_path / "tracking.sqlite")
    assert not result.ok
    assert checks <= set(result.violation_counts), result.report_lines()
    report = "\n".join(result.report_lines())
    assert phrase in report, report
    assert result.summary_line().startswith(f"ledger verify: {sum(result.violation_counts.values())} violations")


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_verify_reports_a_stale_available_figure(backend, tmp_path):
    """DynamoDB keeps available_minor for its funds condition; it must equal the line and
    balances it is derived from (SQLite derives it on every read, so it cannot drift)."""
    ledger, _, settled, _ = _settled_ledger(backend, tmp_path)
    debit = ledger.store.transfer(settled.payment_id).debit_account
    _corrupt(ledger.store, "set_account", account_id=debit,
             values={"available_minor": ledger.store.account(debit).available_minor + 1})
    result = verify_ledger(ledger.store, tmp_path / "tracking.sqlite")
    assert set(result.violation_counts) == {"available_matches_balances"}, result.report_lines()


def test_verify_without_a_tracking_store(backend, tmp_path):
    ledger, _, _, _ = _settled_ledger(backend, tmp_path)
    missing = verify_ledger(ledger.store, tmp_path / "elsewhere" / "tracking.sqlite")
    assert set(missing.violation_counts) == {"postings_have_payments"} and "is missing" in missing.report_lines()[1]
    unchecked = verify_ledger(ledger.store, None)
    assert unchecked.ok and "statuses not checked" in unchecked.summary_line()


def test_ledger_verify_command_follows_the_settings(backend, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import orchestrator.cli as cli

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    monkeypatch.setattr(cli, "get_settings", lambda: backend.settings(tmp_path))
    runner = CliRunner()
    nothing = runner.invoke(cli.app, ["ledger", "verify"])
    assert nothing.exit_code == 1 and "FAILED ledger_store_present" in nothing.output, nothing.output

    ledger, _, settled, _ = _settled_ledger(backend, tmp_path)
    good = runner.invoke(cli.app, ["ledger", "verify"])
    assert good.exit_code == 0, good.output
    assert good.output.count("\n") == 1 and "all invariants hold" in good.output and backend.name in good.output

    _corrupt(ledger.store, "delete_entry", payment_id=settled.payment_id, leg="post:C")
    bad = runner.invoke(cli.app, ["ledger", "verify"])
    assert bad.exit_code == 1
    assert "FAILED debits_equal_credits: 1" in bad.output and bad.output.splitlines()[-1].startswith("ledger verify: ")


def test_ledger_summary_reads_either_backend(backend, tmp_path, monkeypatch):
    from orchestrator.intake.app import _ledger_summary

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    settings = backend.settings(tmp_path)
    assert _ledger_summary(settings, "emea") == {"currencies": [], "transfers": {}}
    _, _, settled, failed = _settled_ledger(backend, tmp_path)
    summary = _ledger_summary(settings, "emea")
    assert summary["transfers"] == {"POSTED": 1, "RELEASED": 1}
    posted = settled.payment.amount_minor
    rows = {(row["currency"], row["kind"]): row for row in summary["currencies"]}
    customer = rows[("EUR", "customer")]
    assert (customer["accounts"], customer["debits_posted_minor"], customer["debits_pending_minor"]) == (1, posted, 0)
    assert _ledger_summary(settings, "na") == {"currencies": [], "transfers": {}}


def test_verify_configured_ledger_reports_a_missing_store(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    result = verify_configured_ledger(backend.settings(tmp_path))
    assert set(result.violation_counts) == {"ledger_store_present"}
