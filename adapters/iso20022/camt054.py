"""camt.054.001.08 (bank to customer debit/credit notification): build from `Payment`s.

A camt.054 tells an account owner that money was booked on their account: one
`Ntfctn` for the account, one `Ntry` per booking, and inside it one `TxDtls` with the
payment's references, parties, agents, purpose and remittance information. This
module builds the notification of booked instant payments; it never parses one.

Entries. Each `Camt054Entry` is one payment booked on the notified account, as a credit
(`CRDT`, money in: the counterparty is the debtor) or a debit (`DBIT`, money out: the
counterparty is the creditor). Both parties are always written, as in the pacs.008 the
payment travelled in, with the same party/account/agent mapping (see `_common`). Every
entry has status `BOOK`, a booking date and time, and a value date (the booking date in
UTC unless given). Amounts are written from minor units with the currency's exponent,
so they are exact; every entry must be in the account's currency.

References. `Refs` carries the payment's `EndToEndId`, its UETR (the payment id, when it
is a UUID version 4), and `TxId` = the UUID's 32 hex digits, exactly as `build_pacs008`
sends them, plus the source document's `MsgId` when the payment came from one. The
entry's `AcctSvcrRef` is the same 32-digit id: the account servicer's (our) reference.

Bank transaction code. `PMNT` / `RCDT` (received credit transfers) for credits and
`PMNT` / `ICDT` (issued credit transfers) for debits, with the sub-family `ESCT` for a
SEPA rail (service level SEPA), `DMCT` (domestic credit transfer) for the other rails
of our tenants, which are all domestic schemes, and `OTHR` when the entry names no rail.

Summary. `TxsSummry` gives the number and sum of all entries, of the credits and of the
debits, and the net (credits minus debits, as an amount and a direction), all exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from lxml import etree

from orchestrator.domain import Account, Agent, Party, Payment, currency_exponent, format_minor_units
from orchestrator.tenants import RailConfig

from adapters.iso20022 import schemas
from adapters.iso20022._common import (
    MAX_NAME_CHARS,
    MAX_PURPOSE_CODE_CHARS,
    MAX_REMITTANCE_CHARS,
    Xml,
    clean_text,
    format_datetime,
    transaction_id_of,
    uetr_of,
    utc_date,
)
from adapters.iso20022.errors import IsoDocumentError

__all__ = [
    "BOOKED",
    "MESSAGE_VERSION",
    "Camt054Entry",
    "CreditDebit",
    "bank_transaction_code",
    "build_camt054",
]

MESSAGE_VERSION = "camt.054.001.08"
_X = Xml(schemas.namespace_of(MESSAGE_VERSION))

CreditDebit = Literal["CRDT", "DBIT"]
# ExternalEntryStatus1Code: the entry is posted to the account.
BOOKED = "BOOK"
# Max35Text: MsgId and the other references.
MAX_REFERENCE_CHARS = 35
# ExternalLocalInstrument1Code.
MAX_LOCAL_INSTRUMENT_CODE_CHARS = 35

# ISO 20022 Bank Transaction Code (external code list): domain, family per direction.
_BTC_DOMAIN = "PMNT"
_BTC_FAMILY: dict[str, str] = {"CRDT": "RCDT", "DBIT": "ICDT"}


@dataclass(frozen=True, slots=True)
class Camt054Entry:
    """One payment booked on the notified account."""

    payment: Payment
    credit_debit: CreditDebit
    booked_at: datetime
    # ISODate ("2026-03-02"); the booking date in UTC when None.
    value_date: str | None = None
    # The rail the payment went over: gives the bank transaction sub-family, the local
    # instrument and the bank-code scheme of the agents' clearing member ids.
    rail: RailConfig | None = None


def bank_transaction_code(credit_debit: CreditDebit, rail: RailConfig | None) -> tuple[str, str, str]:
    """(domain, family, sub-family) of the ISO Bank Transaction Code of a booking."""
    if rail is None:
        sub_family = "OTHR"
    elif rail.clearing.service_level == "SEPA":
        sub_family = "ESCT"
    else:
        sub_family = "DMCT"
    return _BTC_DOMAIN, _BTC_FAMILY[credit_debit], sub_family


def build_camt054(
    entries: Sequence[Camt054Entry],
    *,
    message_id: str,
    created_at: datetime,
    account: Account,
    account_owner: str | None,
    currency: str,
    notification_id: str | None = None,
    account_servicer: Agent | None = None,
    bank_code_scheme: str | None = None,
    validate: bool = True,
) -> bytes:
    """A camt.054.001.08 notification of `entries` booked on `account` (UTF-8 bytes).

    `account` is identified by its IBAN, else by its number; its `bank_code` travels as
    the servicer's clearing member id (with `bank_code_scheme`, a key of
    `_common.CLEARING_SYSTEM_IDS`, naming the scheme), or as `Othr/Issr` when
    `account_servicer` has a member id of its own. `notification_id` defaults to the
    message id. With `validate` (the default) the document is checked against the
    official XSD before it is returned; anything it cannot carry raises
    IsoDocumentError. Entries in another currency than `currency`, an unknown
    direction, a naive datetime or no entries at all raise ValueError.
    """
    _check_arguments(entries, created_at, currency)
    try:
        root = _X.root()
        notification_message = _X.sub(root, "BkToCstmrDbtCdtNtfctn")
        header = _X.sub(notification_message, "GrpHdr")
        _X.sub(header, "MsgId", message_id)
        _X.sub(header, "CreDtTm", format_datetime(created_at))

        notification = _X.sub(notification_message, "Ntfctn")
        _X.sub(notification, "Id", notification_id or message_id)
        _X.sub(notification, "CreDtTm", format_datetime(created_at))
        _add_notified_account(notification, account, account_owner, currency, account_servicer, bank_code_scheme)
        _add_summary(notification, entries, currency)
        for entry in entries:
            _add_entry(notification, entry)
    except ValueError as exc:
        if isinstance(exc, IsoDocumentError):
            raise
        # lxml refuses strings XML cannot carry (control characters in an id, say).
        raise IsoDocumentError(
            "unrepresentable-payment", "Notification cannot be expressed in ISO 20022", str(exc)
        ) from None
    if validate:
        schemas.validate(root, MESSAGE_VERSION)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _check_arguments(entries: Sequence[Camt054Entry], created_at: datetime, currency: str) -> None:
    if not entries:
        raise ValueError("a camt.054 needs at least one entry")
    currency_exponent(currency)  # MoneyError (a ValueError) for a code that is not ISO 4217
    _require_aware(created_at, "created_at")
    for index, entry in enumerate(entries):
        if entry.credit_debit not in _BTC_FAMILY:
            raise ValueError(f"entry {index}: credit_debit must be CRDT or DBIT, not {entry.credit_debit!r}")
        if entry.payment.currency != currency:
            raise ValueError(
                f"entry {index}: the payment is in {entry.payment.currency}, the notified account in {currency}"
            )
        _require_aware(entry.booked_at, f"entry {index}: booked_at")


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")


def _add_notified_account(
    notification: etree._Element,
    account: Account,
    owner: str | None,
    currency: str,
    servicer: Agent | None,
    bank_code_scheme: str | None,
) -> None:
    servicer = servicer or Agent()
    # add_account reads only the account and the agent's member id, never the name.
    holder = Party(name=owner or "", account=account, agent=servicer)
    wrapper = _X.add_account(notification, "Acct", holder)
    _X.sub(wrapper, "Ccy", currency)
    owner_name = clean_text(owner, MAX_NAME_CHARS)
    if owner_name:
        _X.sub(_X.sub(wrapper, "Ownr"), "Nm", owner_name)
    if _has_agent(servicer, account.bank_code):
        _X.add_agent(wrapper, "Svcr", servicer, bank_code=account.bank_code, bank_code_scheme=bank_code_scheme)


def _add_summary(notification: etree._Element, entries: Sequence[Camt054Entry], currency: str) -> None:
    credits = [entry.payment.amount_minor for entry in entries if entry.credit_debit == "CRDT"]
    debits = [entry.payment.amount_minor for entry in entries if entry.credit_debit == "DBIT"]
    credit_total, debit_total = sum(credits), sum(debits)
    summary = _X.sub(notification, "TxsSummry")
    totals = _X.sub(summary, "TtlNtries")
    _X.sub(totals, "NbOfNtries", str(len(entries)))
    _X.sub(totals, "Sum", format_minor_units(credit_total + debit_total, currency))
    net = _X.sub(totals, "TtlNetNtry")
    _X.sub(net, "Amt", format_minor_units(abs(credit_total - debit_total), currency))
    _X.sub(net, "CdtDbtInd", "CRDT" if credit_total >= debit_total else "DBIT")
    for name, amounts in (("TtlCdtNtries", credits), ("TtlDbtNtries", debits)):
        block = _X.sub(summary, name)
        _X.sub(block, "NbOfNtries", str(len(amounts)))
        _X.sub(block, "Sum", format_minor_units(sum(amounts), currency))


def _add_entry(notification: etree._Element, entry: Camt054Entry) -> None:
    payment = entry.payment
    tx = add_report_entry(_X, notification, payment, entry.credit_debit, entry.booked_at,
                          entry.value_date or utc_date(entry.booked_at), entry.rail, with_parties=True)
    if payment.purpose_code:
        _X.add_code_or_proprietary(tx, "Purp", payment.purpose_code, MAX_PURPOSE_CODE_CHARS)
    remittance = clean_text(payment.remittance_information, MAX_REMITTANCE_CHARS)
    if remittance:
        _X.sub(_X.sub(tx, "RmtInf"), "Ustrd", remittance)


def add_report_entry(
    xml: Xml, parent: etree._Element, payment: Payment, credit_debit: CreditDebit, booked_at: datetime,
    value_date: str, rail: RailConfig | None, *, with_parties: bool,
) -> etree._Element:
    """One booked `Ntry` with its transaction details (the ReportEntry shape camt.052,
    camt.053 and camt.054 share), in `xml`'s namespace; returns the `TxDtls` element.
    `with_parties=False` leaves names and account numbers out (a statement of the
    clearing account needs the references and agents, not the customers' data)."""
    reference = transaction_id_of(payment.payment_id)
    ntry = xml.sub(parent, "Ntry")
    xml.sub(ntry, "NtryRef", reference)
    xml.sub(ntry, "Amt", payment.amount, Ccy=payment.currency)
    xml.sub(ntry, "CdtDbtInd", credit_debit)
    xml.sub(xml.sub(ntry, "Sts"), "Cd", BOOKED)
    xml.sub(xml.sub(ntry, "BookgDt"), "DtTm", format_datetime(booked_at))
    xml.sub(xml.sub(ntry, "ValDt"), "Dt", value_date)
    xml.sub(ntry, "AcctSvcrRef", reference)
    _add_bank_transaction_code(xml, ntry, credit_debit, rail)

    tx = xml.sub(xml.sub(ntry, "NtryDtls"), "TxDtls")
    refs = xml.sub(tx, "Refs")
    source_message_id = payment.source_message_id
    if source_message_id and len(source_message_id) <= MAX_REFERENCE_CHARS:
        xml.sub(refs, "MsgId", source_message_id)
    xml.sub(refs, "AcctSvcrRef", reference)
    xml.sub(refs, "EndToEndId", payment.end_to_end_id)
    uetr = uetr_of(payment.payment_id)
    if uetr is not None:
        xml.sub(refs, "UETR", uetr)
    xml.sub(refs, "TxId", reference)
    xml.sub(tx, "Amt", payment.amount, Ccy=payment.currency)
    xml.sub(tx, "CdtDbtInd", credit_debit)
    _add_bank_transaction_code(xml, tx, credit_debit, rail)

    scheme = rail.bank_code_scheme if rail is not None else None
    debtor, creditor = payment.debtor, payment.creditor
    if with_parties:
        parties = xml.sub(tx, "RltdPties")
        xml.add_party(xml.sub(parties, "Dbtr"), "Pty", debtor)
        xml.add_account(parties, "DbtrAcct", debtor)
        xml.add_party(xml.sub(parties, "Cdtr"), "Pty", creditor)
        xml.add_account(parties, "CdtrAcct", creditor)
    debtor_agent = _has_agent(debtor.agent, debtor.account.bank_code)
    creditor_agent = _has_agent(creditor.agent, creditor.account.bank_code)
    if debtor_agent or creditor_agent:
        agents = xml.sub(tx, "RltdAgts")
        if debtor_agent:
            xml.add_agent(agents, "DbtrAgt", debtor.agent, bank_code=debtor.account.bank_code, bank_code_scheme=scheme)
        if creditor_agent:
            xml.add_agent(agents, "CdtrAgt", creditor.agent, bank_code=creditor.account.bank_code,
                          bank_code_scheme=scheme)
    if rail is not None and rail.clearing.local_instrument:
        xml.add_code_or_proprietary(tx, "LclInstrm", rail.clearing.local_instrument, MAX_LOCAL_INSTRUMENT_CODE_CHARS)
    return tx


def _add_bank_transaction_code(xml: Xml, parent: etree._Element, credit_debit: CreditDebit,
                               rail: RailConfig | None) -> None:
    domain_code, family_code, sub_family_code = bank_transaction_code(credit_debit, rail)
    domain = xml.sub(xml.sub(parent, "BkTxCd"), "Domn")
    xml.sub(domain, "Cd", domain_code)
    family = xml.sub(domain, "Fmly")
    xml.sub(family, "Cd", family_code)
    xml.sub(family, "SubFmlyCd", sub_family_code)


def _has_agent(agent: Agent, bank_code: str | None) -> bool:
    """Whether an agent block would say anything (a BIC or a clearing member id)."""
    return bool(agent.bic or agent.member_id or bank_code)
