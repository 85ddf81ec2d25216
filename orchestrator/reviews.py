"""The review of a HELD payment: the maker-checker rule, pure, shared by routing (which
decides) and the intake (which refuses at once what its read model already shows).

A payment is held for a possible sanctions match or a fraud score in the review band
(`decide_route`). A person then decides, through `POST /v1/payments/{id}/review`; the
intake publishes each decision as a `ReviewSubmitted` event, and routing, which owns
the held payment, applies this rule to it:

- a reject ends the review at once (`PaymentRejected review_rejected`), whoever sends it,
  the maker too: refusing is the safe direction, and the time limit would end the hold
  the same way without anyone;
- an approval releases the payment (`PaymentRouted`) only once two different people
  approved it, when the tenant has maker-checker on (the default) or whenever the hold
  is a possible sanctions match (never released on one person's word); otherwise one
  approval releases it;
- the maker confirming their own approval is refused, never acted on, and so is any
  decision on a payment whose review has ended or that routing does not hold.

Every decision, refused or not, becomes a `PaymentReviewed` on the payment's timeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.reasons import ReasonCode
from orchestrator.tenants import TenantConfig

DECISIONS = ("approve", "reject")
# A comment says why; longer than this it is a document, which belongs in a case system.
COMMENT_MAX_CHARS = 500
# A person's name or login as the reviewer header carries it (ASCII: HTTP headers carry
# no reliable character set), printable, no spaces at either end.
REVIEWER_MAX_CHARS = 64
_REVIEWER = re.compile(rf"[\x21-\x7e](?:[\x20-\x7e]{{0,{REVIEWER_MAX_CHARS - 2}}}[\x21-\x7e])?")

# Steps and outcomes of a decision (PaymentReviewed).
STEP_MAKER = "maker"
STEP_CHECKER = "checker"
AWAITING_CHECKER = "awaiting_checker"
APPROVED = "approved"
REJECTED = "rejected"
REFUSED = "refused"
# Why a decision was refused.
SAME_REVIEWER = "same_reviewer"
REVIEW_CLOSED = "review_closed"
NOT_HELD = "not_held"


def reviewer_problem(value: str | None) -> str | None:
    """Why `value` cannot name a reviewer, or None."""
    if value is None or not value.strip():
        return "name the reviewer in the X-Reviewer header"
    if not _REVIEWER.fullmatch(value.strip()):
        return f"X-Reviewer must be 1 to {REVIEWER_MAX_CHARS} printable ASCII characters"
    return None


def same_reviewer(first: str | None, second: str) -> bool:
    """Whether two reviewer names name one person: case and runs of spaces do not count,
    so "Alice  Smith" cannot confirm "alice smith"."""
    if first is None:
        return False
    return " ".join(first.split()).casefold() == " ".join(second.split()).casefold()


def requires_checker(hold_reason: str, tenant: TenantConfig) -> bool:
    """Whether an approval needs a second reviewer: maker-checker on, or a possible
    sanctions match, which is never released on one person's word."""
    return tenant.review.maker_checker or hold_reason == ReasonCode.sanctions_possible_match.value


@dataclass(frozen=True)
class ReviewState:
    """What routing keeps of a held payment's review."""

    hold_reason: str
    maker: str | None  # who made the first approval, awaiting its checker
    closed: bool  # released, rejected or expired


@dataclass(frozen=True)
class ReviewOutcome:
    step: str
    outcome: str
    detail: str
    refusal_reason: str | None = None
    maker: str | None = None


def decide_review(state: ReviewState | None, decision: str, reviewer: str, *, checker_required: bool) -> ReviewOutcome:
    """What one reviewer's decision does to a held payment (pure)."""
    step = STEP_CHECKER if state is not None and state.maker is not None else STEP_MAKER
    maker = state.maker if state is not None else None
    if state is None:
        return ReviewOutcome(step, REFUSED, "the payment is not held for review; the decision was not acted on",
                             NOT_HELD)
    if state.closed:
        return ReviewOutcome(step, REFUSED, "the payment's review has already ended; the decision was not acted on",
                             REVIEW_CLOSED, maker)
    if decision not in DECISIONS:
        # The intake accepts only the two: anything else is a producer's bug, which the
        # runtime dead-letters rather than guess what was meant.
        raise ValueError(f"unknown review decision {decision[:16]!r}")
    if decision == "reject":
        # The maker withdrawing their own approval is still the maker's step.
        step = STEP_MAKER if maker is None or same_reviewer(maker, reviewer) else STEP_CHECKER
        return ReviewOutcome(step, REJECTED, f"rejected by {reviewer}", maker=maker)
    if state.maker is None:
        if checker_required:
            why = (" (a possible sanctions match always needs one)"
                   if state.hold_reason == ReasonCode.sanctions_possible_match.value else "")
            return ReviewOutcome(STEP_MAKER, AWAITING_CHECKER,
                                 f"approved by {reviewer}; a second reviewer must confirm{why}")
        return ReviewOutcome(STEP_MAKER, APPROVED, f"approved by {reviewer}")
    if same_reviewer(state.maker, reviewer):
        return ReviewOutcome(STEP_CHECKER, REFUSED,
                             f"{reviewer} made the first approval; another reviewer must confirm it",
                             SAME_REVIEWER, state.maker)
    return ReviewOutcome(STEP_CHECKER, APPROVED, f"approved by {state.maker}, confirmed by {reviewer}",
                         maker=state.maker)
