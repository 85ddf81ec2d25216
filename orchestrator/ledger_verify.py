"""`payorch ledger verify`: the ledger's invariants, checked against its own journal
and against what tracking says happened to each payment.

It reads the configured store through the ledger's storage port, so it verifies SQLite
and DynamoDB ledgers alike, and it never writes. It can run beside a live system: a
payment still in flight (no terminal status yet) is counted, not judged.

The invariants, each reported under its own name:

- `debits_equal_credits`: per tenant, currency and leg (reserve, reserve_void, post), the
  journal's debits equal its credits; `entries_have_accounts`: every entry names an account.
- `balances_match_journal`: every account's four running balances equal its entries;
  `available_matches_balances`: the stored `available_minor` (DynamoDB's funds-check
  figure) equals limit + posted credits - posted debits - pending debits.
- `no_account_past_its_limit`: no customer account's posted and pending debits, less its
  posted credits, exceed its credit line. There is no exemption. The ledger does post a
  payment the clearing system executed although the reservation was refused or never
  made (the money moved; the books must say so), and that can break the line; the report
  names how much was posted without a reservation, but it still fails, because an account
  past its line is credit exposure someone must act on, not a bookkeeping detail.
- `entries_have_transfers`: no posting without a payment: every journal entry belongs to
  a transfer; `entries_match_transfer`: a transfer's entries are exactly the legs its state
  implies (RESERVED: reserve; POSTED: post, or reserve + reserve_void + post; RELEASED:
  none, or reserve + reserve_void; REJECTED: none), each of the transfer's amount, on its
  accounts, in its currency.
- With the tracking store: `postings_match_status`: every payment with a terminal status
  has the ledger state and post entries that status implies; `postings_have_payments`:
  every transfer's payment is known to tracking.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ledger_store import (
    BALANCE_COLUMNS,
    POSTED,
    REJECTED,
    RELEASED,
    RESERVED,
    Account,
    LedgerStore,
    LedgerStoreMissing,
    Transfer,
    open_ledger_store,
)
from orchestrator.storage import open_sqlite

if TYPE_CHECKING:
    from orchestrator.settings import Settings

# How many individual violations a report lists per invariant; the count is always exact.
_EXAMPLES_PER_CHECK = 10


@dataclass
class Verification:
    transfers: int = 0
    entries: int = 0
    accounts: int = 0
    payments_checked: int = 0
    in_flight: int = 0
    location: str = ""
    tracking_checked: bool = True
    violations: dict[str, list[str]] = field(default_factory=dict)
    violation_counts: Counter = field(default_factory=Counter)

    def fail(self, check: str, detail: str) -> None:
        self.violation_counts[check] += 1
        examples = self.violations.setdefault(check, [])
        if len(examples) < _EXAMPLES_PER_CHECK:
            examples.append(detail)

    @property
    def ok(self) -> bool:
        return not self.violation_counts

    def summary_line(self) -> str:
        verdict = "all invariants hold" if self.ok else f"{sum(self.violation_counts.values())} violations"
        tracking = "" if self.tracking_checked else " (no tracking store: statuses not checked)"
        return (f"ledger verify: {verdict}; {self.transfers} transfers, {self.entries} journal entries, "
                f"{self.accounts} accounts, {self.payments_checked} ended payments checked, "
                f"{self.in_flight} in flight{tracking}; {self.location}")

    def report_lines(self) -> list[str]:
        lines = []
        for check, count in sorted(self.violation_counts.items()):
            lines.append(f"FAILED {check}: {count}")
            lines += [f"  - {example}" for example in self.violations[check]]
        return lines


def verify_configured_ledger(settings: Settings) -> Verification:
    """What the CLI runs: the configured backend, and tracking's store in the data dir."""
    try:
        store = open_ledger_store(settings, read_only=True)
    except LedgerStoreMissing as exc:
        result = Verification(location=settings.storage.backend)
        result.fail("ledger_store_present", str(exc))
        return result
    try:
        return verify_ledger(store, settings.data_dir / "tracking.sqlite")
    finally:
        store.close()


def verify_ledger(store: LedgerStore, tracking_path: Path | None = None) -> Verification:
    """Check every invariant. `tracking_path=None` skips the checks against tracking (and
    says so in the summary); a path that does not exist is a failure, because then no
    posting can be matched to a payment."""
    result = Verification(location=store.location)
    accounts = {account.account_id: account for account in store.iter_accounts()}
    transfers = {transfer.payment_id: transfer for transfer in store.iter_transfers()}
    result.accounts, result.transfers = len(accounts), len(transfers)
    # payment id -> {(phase, side): (account, amount)}; the journal grouped by transfer.
    legs: dict[str, dict[tuple[str, str], tuple[str, int]]] = defaultdict(dict)
    totals: Counter = Counter()  # (tenant, currency, phase, side) -> sum
    by_account: dict[str, Counter] = defaultdict(Counter)  # account -> balance column -> sum
    for entry in store.iter_entries():
        result.entries += 1
        legs[entry.payment_id][(entry.phase, entry.side)] = (entry.account_id, entry.amount_minor)
        account = accounts.get(entry.account_id)
        if account is None:
            result.fail("entries_have_accounts", f"entry {entry.entry_id} names no known account")
        else:
            totals[(account.tenant_id, account.currency, entry.phase, entry.side)] += entry.amount_minor
        column, sign = _BALANCE_EFFECT.get((entry.phase, entry.side), (None, 0))
        if column is not None:
            by_account[entry.account_id][column] += sign * entry.amount_minor
    _check_journal(totals, result)
    _check_balances(accounts, by_account, result)
    _check_limits(accounts, transfers, legs, result)
    _check_entries(transfers, legs, accounts, result)
    if tracking_path is None:
        result.tracking_checked = False
    else:
        _check_payments(transfers, legs, tracking_path, result)
    return result


# How each (leg, side) moves a balance: a reservation adds pending amounts, its void takes
# them back (the void's entries run credit to debit), a posting adds posted amounts.
_BALANCE_EFFECT = {
    ("reserve", "D"): ("debits_pending", 1), ("reserve", "C"): ("credits_pending", 1),
    ("reserve_void", "C"): ("debits_pending", -1), ("reserve_void", "D"): ("credits_pending", -1),
    ("post", "D"): ("debits_posted", 1), ("post", "C"): ("credits_posted", 1),
}


def _check_journal(totals: Counter, result: Verification) -> None:
    """Debits equal credits per tenant, currency and leg."""
    for tenant, currency, phase in sorted({key[:3] for key in totals}):
        debits, credits = totals[(tenant, currency, phase, "D")], totals[(tenant, currency, phase, "C")]
        if debits != credits:
            result.fail("debits_equal_credits",
                        f"{tenant} {currency} {phase}: debits {debits} != credits {credits}")


def _check_balances(accounts: dict[str, Account], by_account: dict[str, Counter], result: Verification) -> None:
    """Each account's running balances equal the sums of its journal entries."""
    for account_id, account in sorted(accounts.items()):
        sums = by_account.get(account_id, Counter())
        got = tuple(getattr(account, column) for column in BALANCE_COLUMNS)
        want = tuple(sums[column] for column in BALANCE_COLUMNS)
        if got != want:
            result.fail("balances_match_journal",
                        f"account {account_id}: balances {dict(zip(BALANCE_COLUMNS, got, strict=True))} but journal "
                        f"{dict(zip(BALANCE_COLUMNS, want, strict=True))}")
        if account.available_minor != account.derived_available_minor():
            result.fail("available_matches_balances",
                        f"account {account_id}: available {account.available_minor} but its line and balances "
                        f"give {account.derived_available_minor()}")


def _check_limits(accounts: dict[str, Account], transfers: dict[str, Transfer], legs: dict, result: Verification) -> None:
    # Posted without a reservation: executed before routed reached the ledger, or after the
    # reservation was refused. These are the only postings that skip the funds check.
    unreserved: Counter = Counter()
    for payment_id, transfer in transfers.items():
        if transfer.state == POSTED and ("reserve", "D") not in legs.get(payment_id, {}):
            unreserved[transfer.debit_account] += transfer.amount_minor
    for account_id, account in sorted(accounts.items()):
        if account.kind != "customer":
            continue
        exposure = account.debits_posted + account.debits_pending - account.credits_posted
        past = exposure - (account.credit_limit_minor or 0)
        if past > 0:
            result.fail("no_account_past_its_limit",
                        f"account {account_id} is {past} minor units past its limit of "
                        f"{account.credit_limit_minor or 0}; {unreserved[account_id]} were posted without a "
                        f"reservation (the clearing system moved money the funds check did not see or refused)")


# The legs each transfer state implies; every leg has both sides.
_LEGS_BY_STATE = {
    RESERVED: ({"reserve"},),
    POSTED: ({"post"}, {"reserve", "reserve_void", "post"}),
    RELEASED: (set(), {"reserve", "reserve_void"}),
    REJECTED: (set(),),
}


def _check_entries(transfers: dict[str, Transfer], legs: dict, accounts: dict[str, Account],
                   result: Verification) -> None:
    for payment_id in sorted(legs.keys() - transfers.keys()):
        result.fail("entries_have_transfers",
                    f"{len(legs[payment_id])} journal entries of payment {payment_id} belong to no transfer")
    for payment_id, transfer in transfers.items():
        entries = legs.get(payment_id, {})
        phases = {phase for phase, _ in entries}
        allowed = _LEGS_BY_STATE.get(transfer.state)
        if allowed is None:
            result.fail("entries_match_transfer", f"transfer {payment_id} has unknown state {transfer.state}")
            continue
        problems = []
        if phases not in allowed or len(entries) != 2 * len(phases):
            problems.append(f"legs {sorted(f'{p}:{s}' for p, s in entries)} do not fit state {transfer.state}")
        for (phase, side), (account_id, amount) in sorted(entries.items()):
            forward = (side == "D") == (phase != "reserve_void")
            expected_account = transfer.debit_account if forward else transfer.credit_account
            if account_id != expected_account:
                problems.append(f"{phase}:{side} is on account {account_id}, not {expected_account}")
            if amount != transfer.amount_minor:
                problems.append(f"{phase}:{side} is {amount}, not the transfer's {transfer.amount_minor}")
            account = accounts.get(account_id)
            if account is not None and account.currency != transfer.currency:
                problems.append(f"{phase}:{side} is on a {account.currency} account for a {transfer.currency} transfer")
        if problems:
            result.fail("entries_match_transfer", f"transfer {payment_id}: {'; '.join(problems)}")


# Ledger states each terminal status allows, and how many post entries go with them.
_EXPECTED = {
    "SETTLED": ({POSTED}, 2),
    "EXECUTED": ({POSTED}, 2),
    "FAILED": ({RELEASED}, 0),
    "REJECTED": ({None, REJECTED, RELEASED}, 0),
}


def _check_payments(transfers: dict[str, Transfer], legs: dict, tracking_path: Path, result: Verification) -> None:
    if not tracking_path.exists():
        if transfers:
            result.fail("postings_have_payments",
                        f"the tracking store {tracking_path} is missing, so no posting can be matched to a payment")
        return
    tracking = open_sqlite(tracking_path, read_only=True)
    try:
        statuses = {row["payment_id"]: row["status"]
                    for row in tracking.execute("SELECT payment_id, status FROM payments")}
    except sqlite3.OperationalError as exc:  # a tracking file that never got its tables
        result.fail("postings_have_payments", f"the tracking store {tracking_path} cannot be read: {exc}")
        return
    finally:
        tracking.close()
    for payment_id, status in statuses.items():
        if status not in _EXPECTED:
            result.in_flight += 1
            continue
        states, post_entries = _EXPECTED[status]
        transfer = transfers.get(payment_id)
        state = transfer.state if transfer is not None else None
        posts = sum(1 for phase, _ in legs.get(payment_id, {}) if phase == "post")
        if state not in states or posts != post_entries:
            # A settled payment whose posting is still on its way is in flight, not wrong;
            # the ledger posts concurrently with settlement.
            if status in ("SETTLED", "EXECUTED") and state in (None, RESERVED) and not posts:
                result.in_flight += 1
                continue
            result.fail("postings_match_status",
                        f"payment {payment_id} is {status} but the ledger has state {state} with {posts} post entries")
        result.payments_checked += 1
    for payment_id in sorted(transfers.keys() - statuses.keys()):
        result.fail("postings_have_payments", f"ledger transfer {payment_id} has no payment in tracking")
