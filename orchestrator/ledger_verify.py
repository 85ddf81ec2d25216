"""`payorch ledger verify`: the ledger's invariants, checked against its own journal
and against what tracking says happened to each payment.

Read-only: it opens the stores in read-only mode and can run beside a live system. A
payment still in flight (no terminal status yet) is counted, not judged.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.storage import open_sqlite

# How many individual violations a report lists per invariant; the count is always exact.
_EXAMPLES_PER_CHECK = 10


@dataclass
class Verification:
    transfers: int = 0
    entries: int = 0
    payments_checked: int = 0
    in_flight: int = 0
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
        return (f"ledger verify: {verdict}; {self.transfers} transfers, {self.entries} journal entries, "
                f"{self.payments_checked} ended payments checked, {self.in_flight} in flight")

    def report_lines(self) -> list[str]:
        lines = []
        for check, count in sorted(self.violation_counts.items()):
            lines.append(f"FAILED {check}: {count}")
            lines += [f"  - {example}" for example in self.violations[check]]
        return lines


def verify_ledger(data_dir: Path) -> Verification:
    result = Verification()
    ledger_path = data_dir / "ledger.sqlite"
    if not ledger_path.exists():
        result.fail("ledger_store_present", f"no ledger store at {ledger_path}")
        return result
    ledger = open_sqlite(ledger_path, read_only=True)
    tracking_path = data_dir / "tracking.sqlite"
    tracking = open_sqlite(tracking_path, read_only=True) if tracking_path.exists() else None
    try:
        _check_journal(ledger, result)
        _check_balances(ledger, result)
        _check_limits(ledger, result)
        _check_payments(ledger, tracking, result)
    finally:
        ledger.close()
        if tracking is not None:
            tracking.close()
    return result


def _check_journal(ledger: sqlite3.Connection, result: Verification) -> None:
    """Debits equal credits per tenant, currency and phase."""
    result.entries = ledger.execute("SELECT count(*) FROM entries").fetchone()[0]
    rows = ledger.execute(
        "SELECT a.tenant_id, a.currency, e.phase,"
        " sum(CASE e.side WHEN 'D' THEN e.amount_minor ELSE 0 END) AS debits,"
        " sum(CASE e.side WHEN 'C' THEN e.amount_minor ELSE 0 END) AS credits"
        " FROM entries e JOIN accounts a ON a.account_id = e.account_id"
        " GROUP BY a.tenant_id, a.currency, e.phase")
    for row in rows:
        if row["debits"] != row["credits"]:
            result.fail("debits_equal_credits",
                        f"{row['tenant_id']} {row['currency']} {row['phase']}: debits {row['debits']} != "
                        f"credits {row['credits']}")
    orphans = ledger.execute("SELECT count(*) FROM entries e LEFT JOIN accounts a ON a.account_id = e.account_id"
                             " WHERE a.account_id IS NULL").fetchone()[0]
    if orphans:
        result.fail("entries_have_accounts", f"{orphans} entries name no known account")


def _check_balances(ledger: sqlite3.Connection, result: Verification) -> None:
    """Each account's running balances equal the sums of its journal entries."""
    sums = {}
    for row in ledger.execute(
            "SELECT account_id,"
            " sum(CASE WHEN phase='post' AND side='D' THEN amount_minor ELSE 0 END) AS posted_d,"
            " sum(CASE WHEN phase='post' AND side='C' THEN amount_minor ELSE 0 END) AS posted_c,"
            " sum(CASE WHEN phase='reserve' AND side='D' THEN amount_minor"
            "          WHEN phase='reserve_void' AND side='C' THEN -amount_minor ELSE 0 END) AS pending_d,"
            " sum(CASE WHEN phase='reserve' AND side='C' THEN amount_minor"
            "          WHEN phase='reserve_void' AND side='D' THEN -amount_minor ELSE 0 END) AS pending_c"
            " FROM entries GROUP BY account_id"):
        sums[row["account_id"]] = row
    for account in ledger.execute("SELECT * FROM accounts"):
        expected = sums.get(account["account_id"])
        got = (account["debits_posted"], account["credits_posted"], account["debits_pending"],
               account["credits_pending"])
        want = (expected["posted_d"], expected["posted_c"], expected["pending_d"], expected["pending_c"]) \
            if expected else (0, 0, 0, 0)
        if got != want:
            result.fail("balances_match_journal", f"account {account['account_id']}: balances {got} but journal {want}")


def _check_limits(ledger: sqlite3.Connection, result: Verification) -> None:
    for account in ledger.execute("SELECT * FROM accounts WHERE kind='customer'"):
        available = (account["credit_limit_minor"] or 0) + account["credits_posted"] - account["debits_posted"] \
            - account["debits_pending"]
        if available < 0:
            result.fail("no_account_past_its_limit",
                        f"account {account['account_id']} is {-available} minor units past its limit")


# Ledger states each terminal status allows, and how many post entries go with them.
_EXPECTED = {
    "SETTLED": ({"POSTED"}, 2),
    "EXECUTED": ({"POSTED"}, 2),
    "FAILED": ({"RELEASED"}, 0),
    "REJECTED": ({None, "REJECTED", "RELEASED"}, 0),
}


def _check_payments(ledger: sqlite3.Connection, tracking: sqlite3.Connection | None, result: Verification) -> None:
    transfers = {row["payment_id"]: row["state"] for row in ledger.execute("SELECT payment_id, state FROM transfers")}
    result.transfers = len(transfers)
    posts = {row["payment_id"]: row["n"] for row in ledger.execute(
        "SELECT payment_id, count(*) AS n FROM entries WHERE phase='post' GROUP BY payment_id")}
    if tracking is None:
        if transfers:
            result.fail("postings_have_payments", "the tracking store is missing, so no posting can be matched")
        return
    statuses = {row["payment_id"]: row["status"] for row in tracking.execute("SELECT payment_id, status FROM payments")}
    for payment_id, status in statuses.items():
        if status not in _EXPECTED:
            result.in_flight += 1
            continue
        result.payments_checked += 1
        states, post_entries = _EXPECTED[status]
        state = transfers.get(payment_id)
        if state not in states or posts.get(payment_id, 0) != post_entries:
            # A settled payment whose posting is still on its way is in flight, not wrong;
            # the ledger posts concurrently with settlement.
            if status in ("SETTLED", "EXECUTED") and state in (None, "RESERVED") and not posts.get(payment_id):
                result.payments_checked -= 1
                result.in_flight += 1
                continue
            result.fail("postings_match_status",
                        f"payment {payment_id} is {status} but the ledger has state {state} with "
                        f"{posts.get(payment_id, 0)} post entries")
    for payment_id in transfers.keys() - statuses.keys():
        result.fail("postings_have_payments", f"ledger transfer {payment_id} has no payment in tracking")
