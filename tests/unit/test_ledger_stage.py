"""Ledger: two-phase transfers under duplicates, reordering and restarts.

The simulation is seeded; a failing seed replays exactly with
`pytest tests/unit/test_ledger_stage.py -k simulation --seed-value`-style
parametrisation (the seed is in the test id).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from orchestrator.events import EventCodec
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.ledger import LedgerInvariantError, LedgerStage
from tests.unit.stage_fixtures import TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")


def routed_and_result(tenant="emea", index=0, *, success=True, amount=None):
    rec = received(tenant, index, amount=amount)
    rail = {"emea": ["sepa_inst", "fps"], "na": ["fednow", "lynx"]}[tenant][index % 2]
    routed = follow(rec, "PaymentRouted", "routing", {"rail": rail, "clearing_system_code": "X",
                                                      "settlement_mode": "rtgs"})
    if success:
        result = follow(routed, "PaymentExecuted", "execution", {
            "rail": rail, "clearing_message_id": "M", "clearing_status": "ACSC",
            "accepted_at": datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)})
    else:
        result = follow(routed, "PaymentFailed", "execution", {
            "rail": rail, "reason_code": "clearing_rejected", "iso_reason_code": "AC03",
            "reason_detail": "unknown account", "clearing_message_id": "M"})
    return routed, result


def check_invariants(ledger: LedgerStage, outcomes: dict[str, bool]) -> None:
    db = ledger.store.db
    for phase_row in db.execute("SELECT phase, sum(CASE side WHEN 'D' THEN amount_minor ELSE 0 END) AS d,"
                                " sum(CASE side WHEN 'C' THEN amount_minor ELSE 0 END) AS c FROM entries GROUP BY phase"):
        assert phase_row["d"] == phase_row["c"], f"phase {phase_row['phase']} unbalanced"
    totals = db.execute("SELECT sum(debits_pending) dp, sum(credits_pending) cp, sum(debits_posted) d,"
                        " sum(credits_posted) c FROM accounts").fetchone()
    assert totals["dp"] == totals["cp"] == 0, "every reservation was posted or released"
    assert totals["d"] == totals["c"]
    for payment_id, success in outcomes.items():
        transfer = db.execute("SELECT * FROM transfers WHERE payment_id=?", (payment_id,)).fetchone()
        posts = db.execute("SELECT count(*) FROM entries WHERE payment_id=? AND phase='post'", (payment_id,)).fetchone()[0]
        assert transfer["state"] == ("POSTED" if success else "RELEASED")
        assert posts == (2 if success else 0), "posted exactly once (one debit and one credit entry)"
    # Account balances are exactly the sum of their posted entries.
    for account in db.execute("SELECT * FROM accounts"):
        debits = db.execute("SELECT coalesce(sum(amount_minor),0) FROM entries WHERE account_id=? AND side='D'"
                            " AND phase='post'", (account["account_id"],)).fetchone()[0]
        assert account["debits_posted"] == debits


def test_reserve_then_post(tmp_path):
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    routed, executed = routed_and_result()
    [reserved] = ledger.handle_batch([routed], at(1))
    assert reserved.event_type == "FundsReserved"
    assert reserved.payload["amount_minor"] == routed.payment.amount_minor
    [posted] = ledger.handle_batch([executed], at(2))
    assert posted.event_type == "FundsPosted"
    assert ledger.handle_batch([executed], at(3)) == [posted]
    check_invariants(ledger, {routed.payment_id: True})


def test_failure_releases_the_reservation(tmp_path):
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    routed, failed = routed_and_result(success=False)
    ledger.handle_batch([routed], at(1))
    [released] = ledger.handle_batch([failed], at(2))
    assert released.event_type == "FundsReleased" and released.payload["amount_minor"] == routed.payment.amount_minor
    assert ledger.handle_batch([routed], at(3)) == []  # a late duplicate does not reserve again
    check_invariants(ledger, {routed.payment_id: False})


def test_result_before_reservation_posts_once(tmp_path):
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    routed, executed = routed_and_result()
    [posted] = ledger.handle_batch([executed], at(1))
    assert ledger.handle_batch([routed], at(2)) == []
    check_invariants(ledger, {routed.payment_id: True})
    assert posted.event_type == "FundsPosted"


def test_insufficient_funds_is_a_rejection_event(tmp_path):
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    limit = TENANTS["emea"].funding.credit_limit
    big, _ = routed_and_result(amount=format(limit, "f"))
    first = ledger.handle_batch([big], at(1))
    assert first[0].event_type == "FundsReserved"
    second, _ = routed_and_result(amount="0.01")
    [rejected] = ledger.handle_batch([second], at(2))
    assert (rejected.event_type, rejected.payload["reason_code"]) == ("PaymentRejected", "insufficient_funds")
    assert ledger.handle_batch([second], at(3)) == [rejected]


def test_same_payment_with_another_amount_is_refused(tmp_path):
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    routed, _ = routed_and_result()
    ledger.handle_batch([routed], at(1))
    tampered = routed.__class__(**{**{f: getattr(routed, f) for f in routed.__dataclass_fields__},
                                   "payment": routed.payment.replace(amount_minor=routed.payment.amount_minor + 1)})
    with pytest.raises(LedgerInvariantError):
        ledger.handle_batch([tampered], at(2))


@pytest.mark.parametrize("seed", range(8))
def test_simulation_duplicates_reordering_and_restarts(tmp_path, seed):
    rng = random.Random(seed)
    outcomes, deliveries = {}, []
    for i in range(150):
        success = rng.random() < 0.8
        routed, result = routed_and_result(rng.choice(["emea", "na"]), i, success=success)
        outcomes[routed.payment_id] = success
        deliveries += [routed, result] + [rng.choice([routed, result]) for _ in range(rng.randrange(3))]
    rng.shuffle(deliveries)
    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    position = 0
    while position < len(deliveries):
        size = rng.randrange(1, 40)
        batch = deliveries[position:position + size]
        ledger.handle_batch(batch, at(position))
        if rng.random() < 0.15:
            # A crash after the batch committed: the same batch is redelivered to a new process.
            ledger.close()
            ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
            ledger.handle_batch(batch, at(position))
        position += size
    check_invariants(ledger, outcomes)


def test_verify_finds_a_broken_journal_and_passes_a_good_one(tmp_path):
    from orchestrator.ledger_verify import verify_ledger
    from orchestrator.stages.tracking import TrackingStore

    ledger = LedgerStage(TENANTS, "test", tmp_path, CODEC)
    tracking = TrackingStore(tmp_path / "tracking.sqlite")
    routed, executed = routed_and_result()
    outputs = ledger.handle_batch([routed], at(1)) + ledger.handle_batch([executed], at(2))
    settled = follow(executed, "PaymentSettled", "settlement", {"rail": "sepa_inst", "cycle_id": "c",
                                                                 "settlement_mode": "rtgs", "settlement_date": "d"})
    tracking.record([routed, executed, settled, *outputs])
    good = verify_ledger(tmp_path)
    assert good.ok, good.report_lines()
    assert good.payments_checked == 1
    # Tamper: a posting without its balancing entry, and a payment tracking never saw.
    ledger.store.db.execute("DELETE FROM entries WHERE phase='post' AND side='C'")
    ledger.store.db.execute("INSERT INTO transfers (payment_id, tenant_id, currency, amount_minor, debit_account,"
                            " credit_account, state) VALUES ('ghost', 'emea', 'EUR', 1, 'a', 'b', 'POSTED')")
    bad = verify_ledger(tmp_path)
    assert not bad.ok
    assert {"debits_equal_credits", "balances_match_journal", "postings_match_status",
            "postings_have_payments"} <= set(bad.violation_counts)
