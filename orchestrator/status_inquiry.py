"""Status inquiry: what to make of the rail's answer to a pacs.028 (pure, no I/O, no clock).

A payment whose pacs.008 went out but whose answer never came (a timeout) or could not
be read may have settled at the rail. Execution does not fail it at the time limit
then: it asks the rail (pacs.028) and reads the pacs.002 it answers. This module reads
that answer and decides; the execution stage makes the call and passes `now` in.

The decision table, with `final_at` = routing time + the rail's `time_limit_s` +
`status_inquiry.not_found_margin_s`:

  answer                                       decision
  settled (ACSC, ACCC, ACSP, ACCP)             settled: PaymentExecuted, the ledger posts
  rejected (RJCT, any reason but NOOR)         failed: PaymentFailed clearing_rejected, funds released
  not received (RJCT NOOR), now >= final_at    failed: PaymentFailed rail_time_limit_exceeded, released
  not received, now < deadline                 send the pacs.008 again (same UETR: never paid twice)
  not received, deadline <= now < final_at     ask again at final_at (no round counted)
  pending / unreachable / unreadable,
      now < final_at                           ask again after early_retry_s, at most at final_at
                                               (no round counted)
      now >= final_at                          a round is counted; ask again after the round's delay,
                                               or after `rounds_max` rounds give up: dead letter

Rounds are counted only once `final_at` has passed, so waiting for the time limit never
uses up the budget of unanswered inquiries, and a rail that says "not received" ends the
payment at its first inquiry after `final_at`. The longest a payment can wait after its
time limit is `StatusInquiryConfig.longest_wait_after_limit_s()` (plus the runtime's
retry jitter and each inquiry's own timeout).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from adapters.clearing_client import ClearingTimeout, ClearingUnavailable
from adapters.iso20022 import IsoDocumentError
from adapters.iso20022.pacs002 import TransactionStatus, parse_pacs002
from orchestrator.tenants import StatusInquiryConfig

SETTLED_STATUSES = frozenset({"ACSC", "ACCC", "ACSP", "ACCP"})
# ExternalStatusReason1Code NOOR: "original transaction never received".
NOT_RECEIVED_REASON = "NOOR"


class AnswerKind(StrEnum):
    settled = "settled"
    rejected = "rejected"
    not_received = "not_received"
    pending = "pending"
    unreachable = "unreachable"
    unreadable = "unreadable"


class Action(StrEnum):
    settled = "settled"
    failed = "failed"
    ask_again = "ask_again"
    give_up = "give_up"
    resend = "resend"


@dataclass(frozen=True, slots=True)
class InquiryAnswer:
    kind: AnswerKind
    detail: str
    status: TransactionStatus | None = None


@dataclass(frozen=True, slots=True)
class InquiryDecision:
    action: Action
    # Unanswered rounds counted so far, this one included.
    rounds: int
    retry_at: datetime | None = None


def read_answer(answer: bytes | Exception, payment_id: str) -> InquiryAnswer:
    """Classify the rail's answer to an inquiry about `payment_id` (bytes: a pacs.002)."""
    if isinstance(answer, ClearingTimeout):
        return InquiryAnswer(AnswerKind.unreachable, f"no answer to the status inquiry: {answer}")
    if isinstance(answer, ClearingUnavailable):
        return InquiryAnswer(AnswerKind.unreachable, f"status inquiry not answered: {answer}")
    if isinstance(answer, Exception):  # a ClearingProtocolError, or anything else
        return InquiryAnswer(AnswerKind.unreadable, f"status inquiry answered unreadably: {answer}")
    try:
        report = parse_pacs002(answer)
    except IsoDocumentError as exc:
        return InquiryAnswer(AnswerKind.unreadable, f"status inquiry answered unreadably: {exc}")
    status = next((s for s in report.statuses if s.original_uetr == payment_id), None)
    if status is None:
        if report.group_status == "RJCT":
            return InquiryAnswer(AnswerKind.unreadable, "the rail refused the status inquiry: "
                                 f"{report.group_reason_code or ''} {report.group_reason_text or ''}".strip())
        return InquiryAnswer(AnswerKind.unreadable, "the answer to the status inquiry does not mention the payment")
    if status.status in SETTLED_STATUSES:
        return InquiryAnswer(AnswerKind.settled, f"the rail reports it settled ({status.status})", status)
    if status.status == "RJCT" and status.reason_code == NOT_RECEIVED_REASON:
        return InquiryAnswer(AnswerKind.not_received, "the rail never received the payment (NOOR)", status)
    if status.status == "RJCT":
        return InquiryAnswer(AnswerKind.rejected, f"the rail reports it rejected ({status.reason_code or 'NARR'})",
                             status)
    return InquiryAnswer(AnswerKind.pending, f"the rail reports it still in process ({status.status or '?'})", status)


def decide(kind: AnswerKind, *, now: datetime, deadline: datetime, config: StatusInquiryConfig,
           rounds: int) -> InquiryDecision:
    """The next step after an answer of `kind` to an inquiry sent at `now` (module docstring).

    `deadline` is the rail's time limit for the payment (routing time + time_limit_s),
    `rounds` the unanswered rounds counted before this answer.
    """
    final_at = deadline + timedelta(seconds=config.not_found_margin_s)
    if kind is AnswerKind.settled:
        return InquiryDecision(Action.settled, rounds)
    if kind is AnswerKind.rejected:
        return InquiryDecision(Action.failed, rounds)
    if kind is AnswerKind.not_received:
        if now >= final_at:
            return InquiryDecision(Action.failed, rounds)
        if now < deadline:
            return InquiryDecision(Action.resend, rounds, now)
        return InquiryDecision(Action.ask_again, rounds, final_at)
    if now < final_at:
        return InquiryDecision(Action.ask_again, rounds,
                               min(now + timedelta(seconds=config.early_retry_s), final_at))
    counted = rounds + 1
    if counted >= config.rounds_max:
        return InquiryDecision(Action.give_up, counted)
    return InquiryDecision(Action.ask_again, counted, now + timedelta(seconds=config.delay_s(counted)))
