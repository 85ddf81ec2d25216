from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.domain import Account, Party, Payment
from orchestrator.fraud_rules import RULE_POINTS, FraudRule, FraudVerdict, score_payment
from orchestrator.reasons import ReasonCode
from orchestrator.tenants import FraudConfig, load_tenants

TENANTS = load_tenants(Path(__file__).resolve().parents[2] / "tenants")
NOW_S = 1_772_000_000.0

# Small numbers keep the arithmetic in the tests readable (EUR, so 2 decimals).
CONFIG = FraudConfig(
    max_amount=Decimal("10000.00"),
    review_amount=Decimal("5000.00"),
    velocity_window_s=60,
    velocity_max_count=3,
    velocity_max_amount=Decimal("12000.00"),
    block_score=80,
    review_score=50,
)


def payment(amount_minor: int, currency: str = "EUR") -> Payment:
    return Payment(
        payment_id="5c7e9a1b-3d2f-4e6a-8b0c-1f2e3d4c5b6a",
        tenant_id="emea",
        end_to_end_id="E2E-FRAUD-1",
        amount_minor=amount_minor,
        currency=currency,
        debtor=Party("Anna Schmidt", Account(iban="DE89370400440532013000")),
        creditor=Party("Jeanne Martin", Account(iban="FR1420041010050500013M02606")),
    )


def score(amount_minor: int, history=(), config: FraudConfig = CONFIG, currency: str = "EUR") -> FraudVerdict:
    return score_payment(payment(amount_minor, currency), config, list(history), NOW_S)


def test_ordinary_payment_is_allowed() -> None:
    assert score(123_45) == FraudVerdict(score=0, outcome="ALLOW", rules_triggered=())
    assert score(123_45).reason_code is None


def test_amount_above_max_blocks_by_itself() -> None:
    verdict = score(10_000_01)
    assert verdict.outcome == "BLOCK"
    assert verdict.score == 100
    assert verdict.rules_triggered == ("amount_above_max", "amount_above_review")
    assert verdict.reason_code is ReasonCode.fraud_score_too_high


def test_amount_above_max_blocks_even_when_block_score_is_out_of_reach() -> None:
    # review_amount above max_amount, so amount_above_max is the only rule that fires.
    lenient = CONFIG.model_copy(update={"block_score": 100, "review_score": 100, "review_amount": Decimal("20000.00")})
    verdict = score(10_000_01, config=lenient)
    assert verdict.rules_triggered == ("amount_above_max",)
    assert verdict.outcome == "BLOCK"


def test_limits_are_inclusive() -> None:
    assert score(10_000_00).rules_triggered == ("amount_above_review",)
    assert score(5_000_00).rules_triggered == ()


def test_amount_above_review_holds_for_review() -> None:
    verdict = score(5_000_01)
    assert (verdict.score, verdict.outcome, verdict.rules_triggered) == (50, "REVIEW", ("amount_above_review",))
    assert verdict.reason_code is ReasonCode.fraud_review_required


def test_velocity_count_counts_this_payment_and_only_the_window() -> None:
    in_window = [(NOW_S - 10, 100), (NOW_S - 30, 100)]
    assert score(100, in_window).rules_triggered == ()  # third payment: at the limit
    third = in_window + [(NOW_S - 59.9, 100)]
    verdict = score(100, third)
    assert (verdict.outcome, verdict.rules_triggered) == ("REVIEW", ("velocity_count_exceeded",))
    # Exactly window-old, older, and future entries are outside (now - 60, now].
    outside = in_window + [(NOW_S - 60, 100), (NOW_S - 3_600, 100), (NOW_S + 1, 100)]
    assert score(100, outside).rules_triggered == ()


def test_velocity_amount_sums_window_and_this_payment() -> None:
    history = [(NOW_S - 5, 5_000_00), (NOW_S - 20, 6_000_00)]
    assert score(1_000_00, history).rules_triggered == ()  # 12000.00 exactly
    verdict = score(1_000_01, history)
    assert verdict.rules_triggered == ("velocity_amount_exceeded",)
    assert verdict.outcome == "REVIEW"
    old = [(NOW_S - 61, 11_500_00)]
    assert score(1_000_00, old).rules_triggered == ()


def test_two_strong_signals_block() -> None:
    history = [(NOW_S - 1, 1_000_00), (NOW_S - 2, 1_000_00), (NOW_S - 3, 1_000_00)]
    verdict = score(6_000_00, history)
    assert verdict.rules_triggered == ("amount_above_review", "velocity_count_exceeded")
    assert (verdict.score, verdict.outcome) == (100, "BLOCK")


def test_round_amount_just_under_review_scores_but_alone_is_allowed() -> None:
    verdict = score(4_900_00)
    assert verdict.rules_triggered == ("round_amount_under_review",)
    assert (verdict.score, verdict.outcome) == (RULE_POINTS[FraudRule.round_amount_under_review], "ALLOW")
    assert score(4_950_00).rules_triggered == ()  # not a multiple of 100.00
    assert score(4_400_00).rules_triggered == ()  # below the 90 % band
    assert score(4_500_00).rules_triggered == ("round_amount_under_review",)  # band is inclusive at 90 %


def test_repeated_payments_just_under_review_look_like_splitting() -> None:
    history = [(NOW_S - 10, 4_990_00), (NOW_S - 20, 4_985_00)]
    verdict = score(4_900_00, history, config=CONFIG.model_copy(update={"velocity_max_amount": Decimal("100000.00")}))
    assert verdict.rules_triggered == ("round_amount_under_review", "repeated_under_review")
    assert (verdict.score, verdict.outcome) == (60, "REVIEW")
    # One earlier near-threshold payment is not yet a pattern.
    relaxed = CONFIG.model_copy(update={"velocity_max_amount": Decimal("100000.00")})
    assert score(4_950_00, history[:1], config=relaxed).rules_triggered == ()


def test_outcome_bands_come_from_config() -> None:
    strict = CONFIG.model_copy(update={"review_score": 30, "block_score": 50})
    assert score(4_900_00, config=strict).outcome == "REVIEW"
    assert score(5_000_01, config=strict).outcome == "BLOCK"


def test_limits_use_the_currency_exponent() -> None:
    # JPY has no minor unit: review_amount 5000 means 5000 yen, not 50.00.
    assert score(5_000, currency="JPY").rules_triggered == ()
    assert score(5_001, currency="JPY").rules_triggered == ("amount_above_review",)
    # BHD has three decimals: 5000.000 BHD is 5_000_000 minor units.
    assert score(5_000_001, currency="BHD").rules_triggered == ("amount_above_review",)
    assert score(5_000_000, currency="BHD").rules_triggered == ()


@pytest.mark.parametrize("tenant_id", sorted(TENANTS))
def test_tenant_configs_allow_an_ordinary_payment_and_block_above_max(tenant_id: str) -> None:
    tenant = TENANTS[tenant_id]
    config = tenant.fraud
    currency = tenant.currencies[0]
    ordinary = payment(100_00, currency)
    assert score_payment(ordinary, config, [], NOW_S).outcome == "ALLOW"
    above_max = payment(tenant.limit_minor(config.max_amount, currency) + 1, currency)
    assert score_payment(above_max, config, [], NOW_S).outcome == "BLOCK"


def test_verdict_is_immutable() -> None:
    verdict = score(100)
    with pytest.raises(AttributeError):
        verdict.score = 5  # type: ignore[misc]


def test_draining_an_account_quickly_blocks() -> None:
    history = [(NOW_S - 1, 4_000_00), (NOW_S - 2, 4_000_00), (NOW_S - 3, 3_000_00)]
    verdict = score(2_000_00, history)
    assert verdict.rules_triggered == ("velocity_count_exceeded", "velocity_amount_exceeded")
    assert (verdict.score, verdict.outcome) == (100, "BLOCK")
