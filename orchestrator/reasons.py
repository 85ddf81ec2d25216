"""Every business reason for which a payment is rejected or held, in one place.

Members are ordered by the stage that raises them (intake validation, duplicate check,
screening, fraud, funding, clearing) so that a listing reads like the pipeline. Values
equal the member names, which are also the `reason_code` strings `MoneyError` carries,
so `ReasonCode(exc.reason_code)` works.

Each code maps to the closest ISO 20022 ExternalStatusReason1Code for pacs.002 and
pain.002 answers. "NARR" means no code fits and the description goes in the narrative.
Fraud, screening timeouts and the outcomes of a review map to MS03 (reason not specified by the agent) on purpose:
telling a fraudster which control stopped them helps them get around it.
"""

from __future__ import annotations

from enum import StrEnum, auto


class ReasonCode(StrEnum):
    # Intake validation: amount and currency.
    invalid_amount = auto()
    amount_not_positive = auto()
    amount_precision_exceeded = auto()
    unsupported_currency = auto()
    currency_not_allowed_for_tenant = auto()
    amount_exceeds_tenant_limit = auto()
    # Intake validation: parties and accounts.
    invalid_party_name = auto()
    missing_account_identification = auto()
    ambiguous_account_identification = auto()
    invalid_iban = auto()
    invalid_account_number = auto()
    invalid_bank_code = auto()
    invalid_bic = auto()
    # Intake validation: references, dates and routing.
    invalid_end_to_end_id = auto()
    invalid_execution_date = auto()
    no_rail_for_payment = auto()
    # Duplicate check.
    duplicate_payment = auto()
    # Sanctions screening.
    sanctions_match = auto()
    sanctions_possible_match = auto()
    screening_verdict_timeout = auto()
    # Fraud scoring.
    fraud_score_too_high = auto()
    fraud_review_required = auto()
    # Review of a held payment (routing).
    review_rejected = auto()
    review_time_limit_exceeded = auto()
    # Funding.
    insufficient_funds = auto()
    # Clearing.
    clearing_rejected = auto()
    clearing_timeout = auto()
    clearing_unavailable = auto()
    rail_circuit_open = auto()
    rail_time_limit_exceeded = auto()
    # Status inquiry (pacs.028) after a timeout or an unreadable answer.
    status_inquiry_pending = auto()
    clearing_status_unknown = auto()

    @property
    def iso_code(self) -> str:
        """Closest ISO 20022 external status reason code ("NARR" when none fits)."""
        return _ISO_CODE_AND_DESCRIPTION[self][0]

    @property
    def description(self) -> str:
        """Short human explanation, safe to show to the payer."""
        return _ISO_CODE_AND_DESCRIPTION[self][1]


_ISO_CODE_AND_DESCRIPTION: dict[ReasonCode, tuple[str, str]] = {
    ReasonCode.invalid_amount: ("AM12", "The amount is not a valid number."),
    ReasonCode.amount_not_positive: ("AM12", "The amount must be greater than zero."),
    ReasonCode.amount_precision_exceeded: ("AM12", "The amount has more decimal places than the currency allows."),
    ReasonCode.unsupported_currency: ("AM03", "The currency is not an ISO 4217 currency that can be transferred."),
    ReasonCode.currency_not_allowed_for_tenant: ("AM03", "The currency is not offered in this region."),
    ReasonCode.amount_exceeds_tenant_limit: ("AM02", "The amount is above the maximum allowed for a single payment."),
    ReasonCode.invalid_party_name: ("FF01", "A party name is empty, too long or contains control characters."),
    ReasonCode.missing_account_identification: ("AC01", "An account needs an IBAN, or an account number with a bank code."),
    ReasonCode.ambiguous_account_identification: ("AC01", "An account has both an IBAN and an account number; give one."),
    ReasonCode.invalid_iban: ("AC01", "The IBAN is not valid (format or check digits)."),
    ReasonCode.invalid_account_number: ("AC01", "The account number is not valid."),
    ReasonCode.invalid_bank_code: ("RC01", "The bank code (routing number, sort code ...) is not valid."),
    ReasonCode.invalid_bic: ("RC01", "The BIC is not a well-formed ISO 9362 code."),
    ReasonCode.invalid_end_to_end_id: ("FF01", "The end-to-end id must be 1 to 35 printable characters."),
    ReasonCode.invalid_execution_date: ("DT01", "The requested execution date is invalid, past or too far ahead."),
    ReasonCode.no_rail_for_payment: ("NARR", "No payment rail can carry this payment to this creditor account."),
    ReasonCode.duplicate_payment: ("DUPL", "A payment with the same end-to-end id was already received."),
    ReasonCode.sanctions_match: ("RR04", "A party matches a sanctions list entry."),
    ReasonCode.sanctions_possible_match: ("RR04", "A party may match a sanctions list entry and is held for review."),
    ReasonCode.screening_verdict_timeout: ("MS03", "Screening did not reach a verdict in time."),
    ReasonCode.fraud_score_too_high: ("MS03", "The payment was refused by risk controls."),
    ReasonCode.fraud_review_required: ("MS03", "The payment is held for a risk review."),
    # MS03 for both, as for the screening outcomes they follow: the payer learns that the
    # payment was refused, not which control held it.
    ReasonCode.review_rejected: ("MS03", "A reviewer refused the held payment."),
    ReasonCode.review_time_limit_exceeded: ("MS03", "The held payment was not reviewed within the time limit."),
    ReasonCode.insufficient_funds: ("AM04", "The debtor account does not have sufficient funds."),
    ReasonCode.clearing_rejected: ("NARR", "The clearing system or the creditor's bank rejected the payment."),
    ReasonCode.clearing_timeout: ("AB06", "The clearing system did not answer in time."),
    ReasonCode.clearing_unavailable: ("AB07", "The clearing system is not reachable."),
    ReasonCode.rail_circuit_open: ("AB07", "The payment waits: calls to the clearing system are paused after failures."),
    ReasonCode.rail_time_limit_exceeded: ("AB05", "The clearing system did not settle the payment within the rail's time limit."),
    ReasonCode.status_inquiry_pending: ("NARR", "The payment waits while the clearing system is asked what became of it."),
    ReasonCode.clearing_status_unknown: ("NARR", "The clearing system did not confirm the payment's outcome; an operator resolves it."),
}

# Fail at import rather than at the first rejection that lacks a description.
_undescribed = set(ReasonCode) - set(_ISO_CODE_AND_DESCRIPTION)
if _undescribed:
    raise RuntimeError(f"reason codes without ISO code and description: {sorted(_undescribed)}")
