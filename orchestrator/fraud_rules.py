"""Rule-based fraud scoring of one payment against its debtor account's recent history.

Each rule that fires adds its points; the total (capped at 100) is compared with the
tenant's review_score and block_score. Points are chosen so that with the default bands
(review 50, block 80) any one strong signal holds the payment for review and two strong
signals together block it:

  amount_above_max            100  amount > max_amount; blocks on its own, whatever the bands
  amount_above_review          50  amount > review_amount
  velocity_count_exceeded      50  this payment is more than velocity_max_count in the window
  velocity_amount_exceeded     50  window total including this payment > velocity_max_amount
  round_amount_under_review    30  a round amount just under review_amount (structuring)
  repeated_under_review        30  several earlier payments in the window were also just
                                   under review_amount (one large sum split to stay under)

The caller keeps each debtor account's history; this module only reads the entries in
the window (now_s - velocity_window_s, now_s]. A payment must have passed validation
(supported currency) before it is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from orchestrator.domain import Payment, currency_exponent
from orchestrator.reasons import ReasonCode
from orchestrator.tenants import FraudConfig
from orchestrator.validation import limit_minor_units

FraudOutcome = Literal["ALLOW", "REVIEW", "BLOCK"]

MAX_SCORE = 100
# "Just under" review_amount: at least this fraction of it, and below it.
UNDER_REVIEW_BAND_FRACTION = Decimal("0.9")
# An amount is round when it is a whole multiple of this many major units.
ROUND_AMOUNT_STEP_MAJOR = 100
# Earlier in-window payments in the just-under band that make a splitting pattern.
REPEATED_UNDER_REVIEW_MIN_PRIOR = 2


class FraudRule(StrEnum):
    amount_above_max = "amount_above_max"
    amount_above_review = "amount_above_review"
    velocity_count_exceeded = "velocity_count_exceeded"
    velocity_amount_exceeded = "velocity_amount_exceeded"
    round_amount_under_review = "round_amount_under_review"
    repeated_under_review = "repeated_under_review"


RULE_POINTS: dict[FraudRule, int] = {
    FraudRule.amount_above_max: 100,
    FraudRule.amount_above_review: 50,
    FraudRule.velocity_count_exceeded: 50,
    FraudRule.velocity_amount_exceeded: 50,
    FraudRule.round_amount_under_review: 30,
    FraudRule.repeated_under_review: 30,
}


@dataclass(frozen=True, slots=True)
class FraudVerdict:
    score: int  # 0..100
    outcome: FraudOutcome
    rules_triggered: tuple[str, ...]

    @property
    def reason_code(self) -> ReasonCode | None:
        if self.outcome == "BLOCK":
            return ReasonCode.fraud_score_too_high
        if self.outcome == "REVIEW":
            return ReasonCode.fraud_review_required
        return None


def score_payment(
    payment: Payment,
    config: FraudConfig,
    history: Sequence[tuple[float, int]],
    now_s: float,
) -> FraudVerdict:
    """Score `payment`; `history` is (epoch seconds, amount_minor) of the same debtor
    account's earlier payments, in any order, possibly reaching beyond the window."""
    currency = payment.currency
    amount = payment.amount_minor
    max_amount = limit_minor_units(config.max_amount, currency)
    review_amount = limit_minor_units(config.review_amount, currency)
    velocity_max_amount = limit_minor_units(config.velocity_max_amount, currency)
    band_low = _under_review_band_low(config.review_amount, currency)

    window_start_s = now_s - config.velocity_window_s
    window_count = 0
    window_sum = 0
    window_under_review = 0
    for at_s, prior_amount in history:
        if window_start_s < at_s <= now_s:
            window_count += 1
            window_sum += prior_amount
            if band_low <= prior_amount < review_amount:
                window_under_review += 1

    in_band = band_low <= amount < review_amount
    triggered: list[FraudRule] = []
    if amount > max_amount:
        triggered.append(FraudRule.amount_above_max)
    if amount > review_amount:
        triggered.append(FraudRule.amount_above_review)
    # Counted with this payment: it is the one that would go over the limit.
    if window_count + 1 > config.velocity_max_count:
        triggered.append(FraudRule.velocity_count_exceeded)
    if window_sum + amount > velocity_max_amount:
        triggered.append(FraudRule.velocity_amount_exceeded)
    if in_band and amount % _round_step_minor(currency) == 0:
        triggered.append(FraudRule.round_amount_under_review)
    if in_band and window_under_review >= REPEATED_UNDER_REVIEW_MIN_PRIOR:
        triggered.append(FraudRule.repeated_under_review)

    score = min(MAX_SCORE, sum(RULE_POINTS[rule] for rule in triggered))
    outcome: FraudOutcome
    # Over max_amount blocks even if a tenant set block_score above what the points reach.
    if FraudRule.amount_above_max in triggered or score >= config.block_score:
        outcome = "BLOCK"
    elif score >= config.review_score:
        outcome = "REVIEW"
    else:
        outcome = "ALLOW"
    return FraudVerdict(score=score, outcome=outcome, rules_triggered=tuple(str(rule) for rule in triggered))


def _under_review_band_low(review_amount: Decimal, currency: str) -> int:
    # Cached through limit_minor_units: the (Decimal, currency) pairs are few.
    return limit_minor_units(review_amount * UNDER_REVIEW_BAND_FRACTION, currency)


def _round_step_minor(currency: str) -> int:
    return ROUND_AMOUNT_STEP_MAJOR * 10 ** currency_exponent(currency)
