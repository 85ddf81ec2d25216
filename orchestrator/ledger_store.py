"""The ledger's storage port, and its embedded SQLite implementation.

The ledger stage decides; a store only reads and applies. Each input event becomes at
most one `LedgerChange`: the transfer's state transition, the balance moves, the journal
entries, and an optional funds check. `apply` writes all of it or none of it, and refuses
it with `LedgerConflict` when what the decision was based on no longer holds:

- the transfer is not in the state the decision read (`expected_state`; None means
  "no transfer yet"), because another delivery of the same payment's events won;
- a journal entry of this (payment, leg) already exists;
- the funds check fails: the debtor account no longer has the amount available.

The stage then reads again and decides again, which on a redelivery means re-emitting the
stored event and on a lost funds race means a rejection. That rule is what makes the
ledger idempotent on (payment id, leg) on any backend, whether the backend serialises
writers (SQLite, one write lock) or not (DynamoDB, conditional transactions).

Money is integer minor units everywhere. `available_minor` is what a customer account may
still spend: its credit line plus posted credits, minus posted and pending debits (pending
credits are not spendable until posted).

Backends: `SqliteLedgerStore` (this module, the embedded default: `ledger.sqlite` in the data
directory, WAL, one transaction per Kafka batch) and `DynamoDBLedgerStore`
(`orchestrator/ledger_store_dynamodb.py`, one transaction per event). `open_ledger_store`
picks one from `settings.storage.backend`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestrator.storage import open_sqlite, transaction

if TYPE_CHECKING:
    from orchestrator.settings import Settings

RESERVED, POSTED, RELEASED, REJECTED = "RESERVED", "POSTED", "RELEASED", "REJECTED"
TRANSFER_STATES = (RESERVED, POSTED, RELEASED, REJECTED)
BALANCE_COLUMNS = ("debits_pending", "credits_pending", "debits_posted", "credits_posted")
PHASES = ("reserve", "reserve_void", "post")


class LedgerConflict(Exception):
    """A change whose preconditions no longer hold; nothing of it was written."""


class LedgerStoreMissing(LookupError):
    """A read-only open of a ledger store that does not exist (nothing was ever written)."""


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    tenant_id: str
    currency: str
    kind: str  # "customer" or "clearing"
    credit_limit_minor: int | None
    debits_pending: int
    credits_pending: int
    debits_posted: int
    credits_posted: int
    # Stored by DynamoDB (its conditions cannot do arithmetic), derived by SQLite.
    available_minor: int

    def derived_available_minor(self) -> int:
        return (self.credit_limit_minor or 0) + self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class Transfer:
    payment_id: str
    tenant_id: str
    currency: str
    amount_minor: int
    debit_account: str
    credit_account: str
    state: str
    # The Avro bytes of the events the transfer emitted, re-emitted unchanged on redelivery:
    # what the routed event caused (FundsReserved, or PaymentRejected for insufficient funds),
    # and what the execution result caused (FundsPosted, FundsReleased).
    reserved_event: bytes | None = None
    final_event: bytes | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    payment_id: str
    phase: str  # reserve, reserve_void or post: the leg
    side: str  # D or C
    account_id: str
    amount_minor: int
    at_s: float

    @property
    def entry_id(self) -> str:
        # One entry per (payment, leg, side): a replayed leg cannot write it twice.
        return f"{self.payment_id}:{self.phase}:{self.side}"


@dataclass(frozen=True, slots=True)
class BalanceMove:
    account_id: str
    column: str  # one of BALANCE_COLUMNS
    delta: int


@dataclass(frozen=True, slots=True)
class FundsCheck:
    """The account must still have at least `amount_minor` available when the change lands."""

    account_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """One event's whole effect on the ledger, applied atomically or not at all."""

    payment_id: str
    expected_state: str | None  # None: the transfer must not exist yet
    new_state: str
    # The full row to create when expected_state is None; None for a transition.
    create: Transfer | None = None
    reserved_event: bytes | None = None
    final_event: bytes | None = None
    moves: tuple[BalanceMove, ...] = ()
    entries: tuple[Entry, ...] = ()
    funds_check: FundsCheck | None = None

    def __post_init__(self) -> None:
        if (self.expected_state is None) != (self.create is not None):
            raise ValueError("a change creates a transfer exactly when it expects none")
        if self.new_state not in TRANSFER_STATES:
            raise ValueError(f"unknown transfer state {self.new_state!r}")
        for move in self.moves:
            if move.column not in BALANCE_COLUMNS:
                raise ValueError(f"unknown balance column {move.column!r}")
        # Every leg is balanced: its debits equal its credits.
        for phase in {entry.phase for entry in self.entries}:
            debits = sum(e.amount_minor for e in self.entries if e.phase == phase and e.side == "D")
            credits = sum(e.amount_minor for e in self.entries if e.phase == phase and e.side == "C")
            if debits != credits:
                raise ValueError(f"leg {phase} of payment {self.payment_id} is unbalanced")

    def deltas_by_account(self) -> dict[str, dict[str, int]]:
        """The moves summed per account: one write per account, as a DynamoDB transaction
        may touch each item only once."""
        by_account: dict[str, dict[str, int]] = {}
        for move in self.moves:
            columns = by_account.setdefault(move.account_id, {})
            columns[move.column] = columns.get(move.column, 0) + move.delta
        return by_account


def available_delta(deltas: dict[str, int]) -> int:
    """How a set of balance moves changes `available_minor`."""
    return deltas.get("credits_posted", 0) - deltas.get("debits_posted", 0) - deltas.get("debits_pending", 0)


class LedgerStore(Protocol):
    """What the ledger stage, `payorch ledger verify` and the intake's summary need."""

    location: str  # where the data is, for reports (never credentials)

    def batch(self) -> AbstractContextManager[None]:
        """Group one Kafka batch's changes. SQLite commits them together (one fsync per batch);
        DynamoDB commits each change by itself, which is safe because each is idempotent."""

    def transfer(self, payment_id: str) -> Transfer | None: ...

    def account(self, account_id: str) -> Account | None: ...

    def open_account(self, account_id: str, tenant_id: str, currency: str, kind: str,
                     credit_limit_minor: int | None) -> None:
        """Create the account with zero balances if it does not exist; otherwise nothing."""

    def apply(self, change: LedgerChange) -> None:
        """Write the whole change or nothing; `LedgerConflict` if a precondition failed."""

    def iter_accounts(self) -> Iterator[Account]: ...

    def iter_transfers(self) -> Iterator[Transfer]:
        """Every transfer, without its stored event bytes (verify does not need them)."""

    def iter_entries(self) -> Iterator[Entry]: ...

    def summary(self, tenant_id: str) -> dict:
        """`{"currencies": [...], "transfers": {state: count}}` for one tenant."""

    def close(self) -> None: ...


class SqliteLedgerStore:
    """The embedded default: one `ledger.sqlite` file, WAL, `synchronous=FULL`."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if read_only and not path.exists():
            raise LedgerStoreMissing(f"no ledger store at {path}")
        self.location = f"sqlite {path}"
        self.db = open_sqlite(path, read_only=read_only)
        if read_only:
            return
        # Unchanged since the first release, so existing ledger files open as they are.
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS accounts (
              account_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, currency TEXT NOT NULL,
              kind TEXT NOT NULL, credit_limit_minor INTEGER,
              debits_pending INTEGER NOT NULL DEFAULT 0, credits_pending INTEGER NOT NULL DEFAULT 0,
              debits_posted INTEGER NOT NULL DEFAULT 0, credits_posted INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS transfers (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, currency TEXT NOT NULL,
              amount_minor INTEGER NOT NULL, debit_account TEXT NOT NULL, credit_account TEXT NOT NULL,
              state TEXT NOT NULL, reserved_event BLOB, final_event BLOB);
            CREATE TABLE IF NOT EXISTS entries (
              entry_id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, account_id TEXT NOT NULL,
              side TEXT NOT NULL CHECK (side IN ('D','C')), phase TEXT NOT NULL,
              amount_minor INTEGER NOT NULL, at_s REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS entries_by_payment ON entries (payment_id);
            """
        )

    @contextmanager
    def batch(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front, so replicas sharing the file
        # serialise whole batches and every read inside a batch is current.
        with transaction(self.db):
            yield

    def transfer(self, payment_id: str) -> Transfer | None:
        row = self.db.execute("SELECT * FROM transfers WHERE payment_id=?", (payment_id,)).fetchone()
        return _transfer(row, with_events=True) if row is not None else None

    def account(self, account_id: str) -> Account | None:
        row = self.db.execute("SELECT * FROM accounts WHERE account_id=?", (account_id,)).fetchone()
        return _account(row) if row is not None else None

    def open_account(self, account_id: str, tenant_id: str, currency: str, kind: str,
                     credit_limit_minor: int | None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO accounts (account_id, tenant_id, currency, kind, credit_limit_minor)"
            " VALUES (?,?,?,?,?)", (account_id, tenant_id, currency, kind, credit_limit_minor))

    def apply(self, change: LedgerChange) -> None:
        # A savepoint makes one event's change atomic inside the batch's transaction: a
        # refused change leaves nothing behind, and the stage may decide again.
        self.db.execute("SAVEPOINT ledger_change")
        try:
            self._apply(change)
        except BaseException:
            self.db.execute("ROLLBACK TO ledger_change")
            self.db.execute("RELEASE ledger_change")
            raise
        self.db.execute("RELEASE ledger_change")

    def _apply(self, change: LedgerChange) -> None:
        if change.create is not None:
            row = change.create
            try:
                self.db.execute(
                    "INSERT INTO transfers (payment_id, tenant_id, currency, amount_minor, debit_account,"
                    " credit_account, state, reserved_event, final_event) VALUES (?,?,?,?,?,?,?,?,?)",
                    (row.payment_id, row.tenant_id, row.currency, row.amount_minor, row.debit_account,
                     row.credit_account, change.new_state, change.reserved_event, change.final_event))
            except sqlite3.IntegrityError:
                raise LedgerConflict(f"transfer {change.payment_id} already exists") from None
        else:
            sets, params = ["state=?"], [change.new_state]
            for column, value in (("reserved_event", change.reserved_event), ("final_event", change.final_event)):
                if value is not None:
                    sets.append(f"{column}=?")
                    params.append(value)
            # The columns are LedgerChange's own field names, the values ? placeholders (hence the nosec).
            cursor = self.db.execute(f"UPDATE transfers SET {', '.join(sets)} WHERE payment_id=? AND state=?",  # nosec B608
                                     (*params, change.payment_id, change.expected_state))
            if cursor.rowcount != 1:
                raise LedgerConflict(f"transfer {change.payment_id} is no longer {change.expected_state}")
        for account_id, deltas in change.deltas_by_account().items():
            sets = ", ".join(f"{column}={column}+?" for column in deltas)
            sql, params = f"UPDATE accounts SET {sets} WHERE account_id=?", [*deltas.values(), account_id]  # nosec B608
            check = change.funds_check
            if check is not None and check.account_id == account_id:
                sql += (" AND coalesce(credit_limit_minor,0)+credits_posted-debits_posted-debits_pending >= ?")
                params.append(check.amount_minor)
            if self.db.execute(sql, params).rowcount != 1:
                raise LedgerConflict(f"account {account_id} is missing or short of funds for {change.payment_id}")
        for entry in change.entries:
            try:
                self.db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?)",
                                (entry.entry_id, entry.payment_id, entry.account_id, entry.side, entry.phase,
                                 entry.amount_minor, entry.at_s))
            except sqlite3.IntegrityError:
                raise LedgerConflict(f"entry {entry.entry_id} already exists") from None

    def iter_accounts(self) -> Iterator[Account]:
        for row in self.db.execute("SELECT * FROM accounts ORDER BY account_id"):
            yield _account(row)

    def iter_transfers(self) -> Iterator[Transfer]:
        for row in self.db.execute(
                "SELECT payment_id, tenant_id, currency, amount_minor, debit_account, credit_account, state"
                " FROM transfers ORDER BY payment_id"):
            yield _transfer(row, with_events=False)

    def iter_entries(self) -> Iterator[Entry]:
        for row in self.db.execute("SELECT * FROM entries ORDER BY entry_id"):
            yield Entry(payment_id=row["payment_id"], phase=row["phase"], side=row["side"],
                        account_id=row["account_id"], amount_minor=row["amount_minor"], at_s=row["at_s"])

    def summary(self, tenant_id: str) -> dict:
        currencies = [dict(row) for row in self.db.execute(
            "SELECT currency, kind, count(*) AS accounts, sum(debits_posted) AS debits_posted_minor,"
            " sum(credits_posted) AS credits_posted_minor, sum(debits_pending) AS debits_pending_minor,"
            " sum(credits_pending) AS credits_pending_minor FROM accounts WHERE tenant_id=?"
            " GROUP BY currency, kind ORDER BY currency, kind", (tenant_id,))]
        transfers = {row["state"]: row["n"] for row in self.db.execute(
            "SELECT state, count(*) AS n FROM transfers WHERE tenant_id=? GROUP BY state", (tenant_id,))}
        return {"currencies": currencies, "transfers": transfers}

    def close(self) -> None:
        self.db.close()


def _account(row: sqlite3.Row) -> Account:
    limit, credits_posted = row["credit_limit_minor"], row["credits_posted"]
    debits_posted, debits_pending = row["debits_posted"], row["debits_pending"]
    return Account(account_id=row["account_id"], tenant_id=row["tenant_id"], currency=row["currency"],
                   kind=row["kind"], credit_limit_minor=limit, debits_pending=debits_pending,
                   credits_pending=row["credits_pending"], debits_posted=debits_posted, credits_posted=credits_posted,
                   # SQLite checks funds with arithmetic in the UPDATE, so it derives the figure.
                   available_minor=(limit or 0) + credits_posted - debits_posted - debits_pending)


def _transfer(row: sqlite3.Row, *, with_events: bool) -> Transfer:
    return Transfer(payment_id=row["payment_id"], tenant_id=row["tenant_id"], currency=row["currency"],
                    amount_minor=row["amount_minor"], debit_account=row["debit_account"],
                    credit_account=row["credit_account"], state=row["state"],
                    reserved_event=row["reserved_event"] if with_events else None,
                    final_event=row["final_event"] if with_events else None)


def open_ledger_store(settings: Settings, *, read_only: bool = False) -> LedgerStore:
    """The configured backend (`PAYORCH_STORAGE__BACKEND`). Read-only opens create nothing:
    they raise `LedgerStoreMissing` where no ledger was ever written."""
    if settings.storage.backend == "dynamodb":
        from orchestrator.ledger_store_dynamodb import DynamoDBLedgerStore

        return DynamoDBLedgerStore.from_settings(settings.storage.dynamodb, read_only=read_only)
    return SqliteLedgerStore(settings.data_dir / "ledger.sqlite", read_only=read_only)
