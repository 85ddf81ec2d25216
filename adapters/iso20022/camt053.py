"""camt.053.001.08 (bank to customer statement): the statement of one settlement cycle.

Settlement closes each rail's clearing cycle with a statement of the tenant's settlement
position at that rail: what moved through the rail in the cycle's window. One `Stmt` per
currency the rail carries (a statement is of one account in one currency), each with:

* `Id` = the message id followed by the currency; `ElctrncSeqNb` = the cycle's number
  (its window start divided by its length, so consecutive cycles count up by one);
  `FrToDt` = the cycle's window, start inclusive and end exclusive.
* `Acct`: the settlement position, identified as `Othr/Id` = the rail name with
  `Issr` = the tenant id (an internal position has no IBAN), its currency and name.
* Two balances: `OPBD` 0 at the window start (each cycle's position starts flat, that
  is what a cycle settles) and `CLBD` the net of the cycle's entries at its end.
* `TxsSummry` (when there are entries): number and sum of all entries, credits and
  debits, and the net.
* One `Ntry` per payment, booked (`BOOK`) at the rail's acceptance time, value date the
  cycle's settlement date, with the references the payment travelled with (EndToEndId,
  UETR = payment id, TxId = its 32 hex digits, as in the pacs.008 and camt.054) and the
  debtor's and creditor's agents. It deliberately leaves out the customers' names and
  accounts: a settlement statement is about interbank movements, and it is stored and
  served as a whole, so it should not be a second copy of customer data (the camt.054
  notification carries that to the account owner).

Amounts are written from minor units with the currency's exponent, so they are exact.
The document is validated against the official XSD (shipped by the `camt053` package)
before it is returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from orchestrator.domain import Payment, currency_exponent, format_minor_units
from orchestrator.tenants import RailConfig

from adapters.iso20022 import schemas
from adapters.iso20022._common import Xml, format_datetime
from adapters.iso20022.camt054 import CreditDebit, add_report_entry
from adapters.iso20022.errors import IsoDocumentError

__all__ = ["MESSAGE_VERSION", "StatementAccount", "StatementEntry", "build_camt053"]

MESSAGE_VERSION = "camt.053.001.08"
_X = Xml(schemas.namespace_of(MESSAGE_VERSION))
MAX_REFERENCE_CHARS = 35  # Max35Text
MAX_ACCOUNT_ID_CHARS = 34  # Max34Text (GenericAccountIdentification1/Id)
MAX_ACCOUNT_NAME_CHARS = 70  # Max70Text
MAX_ADDITIONAL_INFO_CHARS = 500  # Max500Text


@dataclass(frozen=True, slots=True)
class StatementEntry:
    """One payment that moved through the rail in the cycle."""

    payment: Payment
    booked_at: datetime
    # Our tenant's customers send: every payment leaves the settlement position (DBIT).
    credit_debit: CreditDebit = "DBIT"


@dataclass(frozen=True, slots=True)
class StatementAccount:
    identifier: str
    issuer: str | None = None
    name: str | None = None


def build_camt053(
    entries_by_currency: Mapping[str, Sequence[StatementEntry]],
    *,
    message_id: str,
    created_at: datetime,
    period_start: datetime,
    period_end: datetime,
    account: StatementAccount,
    value_date: str,
    rail: RailConfig | None = None,
    sequence_number: int | None = None,
    additional_info: str | None = None,
    validate: bool = True,
) -> bytes:
    """A camt.053.001.08 with one statement per currency of `entries_by_currency` (a
    currency may have no entries: the statement then says nothing moved). Raises
    ValueError for arguments no statement can carry (naive datetimes, an entry in
    another currency than its statement, ids too long) and IsoDocumentError when the
    document does not validate."""
    _check_arguments(entries_by_currency, message_id, account, created_at, period_start, period_end)
    try:
        root = _X.root()
        statement_message = _X.sub(root, "BkToCstmrStmt")
        header = _X.sub(statement_message, "GrpHdr")
        _X.sub(header, "MsgId", message_id)
        _X.sub(header, "CreDtTm", format_datetime(created_at))
        for currency in sorted(entries_by_currency):
            _add_statement(statement_message, currency, entries_by_currency[currency], message_id=message_id,
                           created_at=created_at, period_start=period_start, period_end=period_end,
                           account=account, value_date=value_date, rail=rail, sequence_number=sequence_number,
                           additional_info=additional_info)
    except ValueError as exc:
        if isinstance(exc, IsoDocumentError):
            raise
        # lxml refuses strings XML cannot carry (control characters in an id, say).
        raise IsoDocumentError("unrepresentable-statement", "Statement cannot be expressed in ISO 20022",
                               str(exc)) from None
    if validate:
        schemas.validate(root, MESSAGE_VERSION)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _check_arguments(entries_by_currency: Mapping[str, Sequence[StatementEntry]], message_id: str,
                     account: StatementAccount, *moments: datetime) -> None:
    if not entries_by_currency:
        raise ValueError("a camt.053 needs at least one statement (one currency)")
    for moment in moments:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("statement times must be timezone-aware")
    if len(message_id) + 3 > MAX_REFERENCE_CHARS:
        raise ValueError(f"message id {message_id!r} leaves no room for the currency in the statement id")
    if len(account.identifier) > MAX_ACCOUNT_ID_CHARS:
        raise ValueError(f"account identifier {account.identifier!r} exceeds {MAX_ACCOUNT_ID_CHARS} characters")
    for currency, entries in entries_by_currency.items():
        currency_exponent(currency)  # MoneyError (a ValueError) for a code that is not ISO 4217
        for index, entry in enumerate(entries):
            if entry.payment.currency != currency:
                raise ValueError(f"{currency} entry {index}: the payment is in {entry.payment.currency}")
            if entry.credit_debit not in ("CRDT", "DBIT"):
                raise ValueError(f"{currency} entry {index}: credit_debit must be CRDT or DBIT")
            if entry.booked_at.tzinfo is None or entry.booked_at.utcoffset() is None:
                raise ValueError(f"{currency} entry {index}: booked_at must be timezone-aware")


def _add_statement(parent: etree._Element, currency: str, entries: Sequence[StatementEntry], *, message_id: str,
                   created_at: datetime, period_start: datetime, period_end: datetime, account: StatementAccount,
                   value_date: str, rail: RailConfig | None, sequence_number: int | None,
                   additional_info: str | None) -> None:
    credits = sum(entry.payment.amount_minor for entry in entries if entry.credit_debit == "CRDT")
    debits = sum(entry.payment.amount_minor for entry in entries if entry.credit_debit == "DBIT")
    statement = _X.sub(parent, "Stmt")
    _X.sub(statement, "Id", message_id + currency)
    if sequence_number is not None:
        _X.sub(statement, "ElctrncSeqNb", str(sequence_number))
    _X.sub(statement, "CreDtTm", format_datetime(created_at))
    period = _X.sub(statement, "FrToDt")
    _X.sub(period, "FrDtTm", format_datetime(period_start))
    _X.sub(period, "ToDtTm", format_datetime(period_end))

    wrapper = _X.sub(statement, "Acct")
    other = _X.sub(_X.sub(wrapper, "Id"), "Othr")
    _X.sub(other, "Id", account.identifier)
    if account.issuer:
        _X.sub(other, "Issr", account.issuer[:MAX_REFERENCE_CHARS])
    _X.sub(wrapper, "Ccy", currency)
    if account.name:
        _X.sub(wrapper, "Nm", account.name[:MAX_ACCOUNT_NAME_CHARS])

    _add_balance(statement, "OPBD", 0, currency, period_start)
    _add_balance(statement, "CLBD", credits - debits, currency, period_end)
    if entries:
        _add_summary(statement, entries, credits, debits, currency)
    for entry in entries:
        _add_entry(statement, entry, value_date, rail)
    if additional_info:
        _X.sub(statement, "AddtlStmtInf", additional_info[:MAX_ADDITIONAL_INFO_CHARS])


def _add_balance(statement: etree._Element, code: str, net_minor: int, currency: str, moment: datetime) -> None:
    balance = _X.sub(statement, "Bal")
    _X.sub(_X.sub(_X.sub(balance, "Tp"), "CdOrPrtry"), "Cd", code)
    _X.sub(balance, "Amt", format_minor_units(abs(net_minor), currency), Ccy=currency)
    _X.sub(balance, "CdtDbtInd", "CRDT" if net_minor >= 0 else "DBIT")
    _X.sub(_X.sub(balance, "Dt"), "DtTm", format_datetime(moment))


def _add_summary(statement: etree._Element, entries: Sequence[StatementEntry], credits: int, debits: int,
                 currency: str) -> None:
    summary = _X.sub(statement, "TxsSummry")
    totals = _X.sub(summary, "TtlNtries")
    _X.sub(totals, "NbOfNtries", str(len(entries)))
    _X.sub(totals, "Sum", format_minor_units(credits + debits, currency))
    net = _X.sub(totals, "TtlNetNtry")
    _X.sub(net, "Amt", format_minor_units(abs(credits - debits), currency))
    _X.sub(net, "CdtDbtInd", "CRDT" if credits >= debits else "DBIT")
    for name, direction, total in (("TtlCdtNtries", "CRDT", credits), ("TtlDbtNtries", "DBIT", debits)):
        block = _X.sub(summary, name)
        _X.sub(block, "NbOfNtries", str(sum(1 for entry in entries if entry.credit_debit == direction)))
        _X.sub(block, "Sum", format_minor_units(total, currency))


def _add_entry(statement: etree._Element, entry: StatementEntry, value_date: str, rail: RailConfig | None) -> None:
    add_report_entry(_X, statement, entry.payment, entry.credit_debit, entry.booked_at, value_date, rail,
                     with_parties=False)
