"""The ledger store on Amazon DynamoDB (boto3): `PAYORCH_STORAGE__BACKEND=dynamodb`.

Tables (created on first use if missing, on-demand capacity; `<p>` is
`PAYORCH_STORAGE__DYNAMODB__TABLE_PREFIX`):

| Table | Partition key | Sort key | Other attributes |
|---|---|---|---|
| `<p>ledger-accounts` | `account_id` S | - | `tenant_id`, `currency`, `kind` S; `credit_limit_minor` N (absent: no line); `debits_pending`, `credits_pending`, `debits_posted`, `credits_posted`, `available_minor` N |
| `<p>ledger-transfers` | `payment_id` S | - | `tenant_id`, `currency`, `debit_account`, `credit_account`, `state` S; `amount_minor` N; `reserved_event`, `final_event` B (Avro bytes) |
| `<p>ledger-entries` | `payment_id` S | `leg` S (`<phase>:<side>`, e.g. `post:D`) | `account_id` S; `amount_minor` N; `at_s` N |

A payment's journal shares its partition key with its transfer, so one Query reads it all,
and the (payment id, leg, side) key is what makes an entry impossible to write twice.

Every event's change is one `TransactWriteItems` call (at most 7 items: the transfer, two
accounts, four entries; the limit is 100, which is why a whole Kafka batch is never one
transaction, and it need not be: every change is idempotent on its own):

- the transfer: `Put` with `attribute_not_exists(payment_id)` when the decision saw no
  transfer, otherwise `Update` of `state` conditional on `state = <the state the decision
  read>`. Two deliveries of the same event (a redelivery racing the original, two ledger
  instances during a rebalance) cannot both pass it;
- the accounts: `Update ... ADD` of the balance deltas, so concurrent changes to one
  account (different payments of one debtor, on different partitions) commute;
- the funds check: the debtor account's `Update` carries `available_minor >= :amount`.
  Condition expressions compare attributes with values but cannot compute
  `limit + credits_posted - debits_posted - debits_pending`, so the account keeps that sum
  as its own attribute, `available_minor`, moved by `ADD` in the same transaction as the
  balances it is derived from (`payorch ledger verify` checks that it still equals them);
- the entries: `Put` with `attribute_not_exists(payment_id)` (on a composite key: "this
  (payment, leg) item does not exist").

If any condition fails, DynamoDB writes nothing and raises `TransactionCanceledException`;
this store turns it into `LedgerConflict`, and the stage reads the state again and decides
again: a redelivered event then re-emits the event stored with the transfer, a reservation
that lost a funds race becomes an insufficient-funds rejection. botocore's own retry of a
transaction whose answer was lost ends the same way (its conditions fail against its own
write), so no client request token is needed for safety.

Reads are strongly consistent (`ConsistentRead`), because a decision must see the last
committed change of its payment and account. Nothing here uses a float: amounts are N
values converted to `int` on the way in and out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError

from orchestrator.ledger_store import (
    BALANCE_COLUMNS,
    Account,
    Entry,
    LedgerChange,
    LedgerConflict,
    LedgerStoreMissing,
    Transfer,
    available_delta,
)
from orchestrator.retries import TransientError

if TYPE_CHECKING:
    from orchestrator.settings import DynamoDBSettings

log = logging.getLogger("payorch.ledger.dynamodb")

# TransactWriteItems refuses more than this many items; a change has at most 7.
MAX_TRANSACTION_ITEMS = 100
# Cancellation codes that mean "the state moved under the decision": read and decide again.
_RETRY_DECISION_CODES = {"ConditionalCheckFailed", "TransactionConflict"}
# Cancellation codes that mean "DynamoDB is busy": the event is retried later, not dead-lettered.
_THROTTLED_CODES = {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}


@contextmanager
def _transient_faults(operation: str) -> Iterator[None]:
    """botocore's network errors (after its own retries) are not the builtin ConnectionError
    or TimeoutError the runtime's retry rule knows; as TransientError the event waits in the
    retry topics instead of being dead-lettered while DynamoDB is unreachable."""
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as exc:
        raise TransientError(f"DynamoDB {operation} failed: {exc}") from exc


def _n(value: int) -> dict[str, str]:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ledger amounts are integers, not {type(value).__name__}")
    return {"N": str(value)}


def _int(item: dict, name: str, default: int | None = None) -> int | None:
    value = item.get(name)
    return int(value["N"]) if value is not None else default


class DynamoDBLedgerStore:
    def __init__(self, client: Any, table_prefix: str, *, read_only: bool = False,
                 endpoint_url: str | None = None) -> None:
        self.client = client
        self.accounts_table = f"{table_prefix}ledger-accounts"
        self.transfers_table = f"{table_prefix}ledger-transfers"
        self.entries_table = f"{table_prefix}ledger-entries"
        self.location = f"dynamodb tables {table_prefix}ledger-* at {endpoint_url or 'the AWS regional endpoint'}"
        # Accounts are never deleted, so once seen they need no second conditional put.
        self._known_accounts: set[str] = set()
        if read_only:
            self._require_tables()
        else:
            self._create_missing_tables()

    @classmethod
    def from_settings(cls, settings: DynamoDBSettings, *, read_only: bool = False) -> DynamoDBLedgerStore:
        from orchestrator.storage import dynamodb_client

        client = dynamodb_client(settings)
        try:
            return cls(client, settings.table_prefix, read_only=read_only, endpoint_url=settings.endpoint_url)
        except BaseException:
            client.close()  # e.g. LedgerStoreMissing: do not leave its connections open
            raise

    # -- tables ---------------------------------------------------------------------------

    def _table_specs(self) -> dict[str, tuple[list, list]]:
        string = "S"
        return {
            self.accounts_table: ([{"AttributeName": "account_id", "KeyType": "HASH"}],
                                  [{"AttributeName": "account_id", "AttributeType": string}]),
            self.transfers_table: ([{"AttributeName": "payment_id", "KeyType": "HASH"}],
                                   [{"AttributeName": "payment_id", "AttributeType": string}]),
            self.entries_table: ([{"AttributeName": "payment_id", "KeyType": "HASH"},
                                  {"AttributeName": "leg", "KeyType": "RANGE"}],
                                 [{"AttributeName": "payment_id", "AttributeType": string},
                                  {"AttributeName": "leg", "AttributeType": string}]),
        }

    def _table_exists(self, name: str) -> bool:
        try:
            self.client.describe_table(TableName=name)
        except self.client.exceptions.ResourceNotFoundException:
            return False
        return True

    def _require_tables(self) -> None:
        missing = [name for name in self._table_specs() if not self._table_exists(name)]
        if missing:
            raise LedgerStoreMissing(f"no ledger tables {', '.join(missing)} ({self.location})")

    def _create_missing_tables(self) -> None:
        for name, (key_schema, attributes) in self._table_specs().items():
            if self._table_exists(name):
                continue
            try:
                self.client.create_table(TableName=name, KeySchema=key_schema, AttributeDefinitions=attributes,
                                         BillingMode="PAY_PER_REQUEST")
                log.info("created DynamoDB table %s", name)
            except self.client.exceptions.ResourceInUseException:
                pass  # another ledger instance created it first
            self.client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    # -- the stage's reads and writes -----------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        # Each change is its own transaction; a crash mid-batch leaves whole changes only,
        # and the redelivered batch finds them applied and re-emits their stored events.
        yield

    def transfer(self, payment_id: str) -> Transfer | None:
        with _transient_faults("read"):
            item = self.client.get_item(TableName=self.transfers_table, Key={"payment_id": {"S": payment_id}},
                                        ConsistentRead=True).get("Item")
        return _transfer(item) if item else None

    def account(self, account_id: str) -> Account | None:
        with _transient_faults("read"):
            item = self.client.get_item(TableName=self.accounts_table, Key={"account_id": {"S": account_id}},
                                        ConsistentRead=True).get("Item")
        if item:
            self._known_accounts.add(account_id)
        return _account(item) if item else None

    def open_account(self, account_id: str, tenant_id: str, currency: str, kind: str,
                     credit_limit_minor: int | None) -> None:
        if account_id in self._known_accounts:
            return
        item: dict[str, Any] = {"account_id": {"S": account_id}, "tenant_id": {"S": tenant_id},
                                "currency": {"S": currency}, "kind": {"S": kind},
                                "available_minor": _n(credit_limit_minor or 0)}
        for column in BALANCE_COLUMNS:
            item[column] = _n(0)
        if credit_limit_minor is not None:
            item["credit_limit_minor"] = _n(credit_limit_minor)
        try:
            # Outside the change's transaction on purpose: opening is idempotent, and an
            # opened account with zero balances is a state the ledger may always be in.
            with _transient_faults("account opening"):
                self.client.put_item(TableName=self.accounts_table, Item=item,
                                     ConditionExpression="attribute_not_exists(account_id)")
        except self.client.exceptions.ConditionalCheckFailedException:
            pass  # already open: its balances must not be reset
        self._known_accounts.add(account_id)

    def apply(self, change: LedgerChange) -> None:
        items, what = self._transaction_items(change)
        if len(items) > MAX_TRANSACTION_ITEMS:
            raise ValueError(f"a ledger change of {len(items)} items exceeds one DynamoDB transaction")
        try:
            with _transient_faults("transaction"):
                self.client.transact_write_items(TransactItems=items)
        except self.client.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons") or []
            codes = [reason.get("Code") for reason in reasons]
            failed = [f"{what[i] if i < len(what) else i}: {code}" for i, code in enumerate(codes)
                      if code not in (None, "None")]
            if any(code in _RETRY_DECISION_CODES for code in codes):
                raise LedgerConflict(f"payment {change.payment_id}: {'; '.join(failed)}") from None
            if any(code in _THROTTLED_CODES for code in codes):
                raise TransientError(f"payment {change.payment_id}: throttled ({'; '.join(failed)})") from exc
            raise

    def _transaction_items(self, change: LedgerChange) -> tuple[list[dict], list[str]]:
        items: list[dict] = []
        what: list[str] = []
        if change.create is not None:
            row = change.create
            item = {"payment_id": {"S": row.payment_id}, "tenant_id": {"S": row.tenant_id},
                    "currency": {"S": row.currency}, "amount_minor": _n(row.amount_minor),
                    "debit_account": {"S": row.debit_account}, "credit_account": {"S": row.credit_account},
                    "state": {"S": change.new_state}}
            for name, value in (("reserved_event", change.reserved_event), ("final_event", change.final_event)):
                if value is not None:
                    item[name] = {"B": value}
            items.append({"Put": {"TableName": self.transfers_table, "Item": item,
                                  "ConditionExpression": "attribute_not_exists(payment_id)"}})
            what.append("transfer already exists")
        else:
            sets, values = ["#state = :new_state"], {":new_state": {"S": change.new_state},
                                                     ":expected": {"S": change.expected_state}}
            for name, value in (("reserved_event", change.reserved_event), ("final_event", change.final_event)):
                if value is not None:
                    sets.append(f"{name} = :{name}")
                    values[f":{name}"] = {"B": value}
            items.append({"Update": {
                "TableName": self.transfers_table, "Key": {"payment_id": {"S": change.payment_id}},
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": "#state = :expected",
                "ExpressionAttributeNames": {"#state": "state"}, "ExpressionAttributeValues": values}})
            what.append(f"transfer no longer {change.expected_state}")
        for account_id, deltas in change.deltas_by_account().items():
            adds = {column: delta for column, delta in deltas.items() if delta}
            moved_available = available_delta(deltas)
            if moved_available:
                adds["available_minor"] = moved_available
            if not adds:
                continue
            values = {f":{column}": _n(delta) for column, delta in adds.items()}
            check = change.funds_check
            if check is not None and check.account_id == account_id:
                condition = "available_minor >= :needed"
                values[":needed"] = _n(check.amount_minor)
                what.append(f"account {account_id} short of funds")
            else:
                condition = "attribute_exists(account_id)"
                what.append(f"account {account_id} missing")
            items.append({"Update": {
                "TableName": self.accounts_table, "Key": {"account_id": {"S": account_id}},
                "UpdateExpression": "ADD " + ", ".join(f"{column} :{column}" for column in adds),
                "ConditionExpression": condition, "ExpressionAttributeValues": values}})
        for entry in change.entries:
            items.append({"Put": {
                "TableName": self.entries_table,
                "Item": {"payment_id": {"S": entry.payment_id}, "leg": {"S": f"{entry.phase}:{entry.side}"},
                         "account_id": {"S": entry.account_id}, "amount_minor": _n(entry.amount_minor),
                         # repr round-trips a float exactly through DynamoDB's decimal numbers.
                         "at_s": {"N": repr(float(entry.at_s))}},
                "ConditionExpression": "attribute_not_exists(payment_id)"}})
            what.append(f"entry {entry.entry_id} exists")
        return items, what

    # -- audit reads ----------------------------------------------------------------------

    def _scan(self, table: str, **kwargs: Any) -> Iterator[dict]:
        for page in self.client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True, **kwargs):
            yield from page.get("Items", [])

    def iter_accounts(self) -> Iterator[Account]:
        for item in self._scan(self.accounts_table):
            yield _account(item)

    def iter_transfers(self) -> Iterator[Transfer]:
        projection = "payment_id, tenant_id, currency, amount_minor, debit_account, credit_account, #state"
        for item in self._scan(self.transfers_table, ProjectionExpression=projection,
                               ExpressionAttributeNames={"#state": "state"}):
            yield _transfer(item)

    def iter_entries(self) -> Iterator[Entry]:
        for item in self._scan(self.entries_table):
            phase, side = item["leg"]["S"].rsplit(":", 1)
            yield Entry(payment_id=item["payment_id"]["S"], phase=phase, side=side,
                        account_id=item["account_id"]["S"], amount_minor=_int(item, "amount_minor"),
                        at_s=float(item["at_s"]["N"]))

    def summary(self, tenant_id: str) -> dict:
        # A full scan filtered by tenant: fine for an operator's summary, not for a hot path.
        totals: dict[tuple[str, str], dict] = {}
        for item in self._scan(self.accounts_table, FilterExpression="tenant_id = :t",
                               ExpressionAttributeValues={":t": {"S": tenant_id}}):
            account = _account(item)
            row = totals.setdefault((account.currency, account.kind), {
                "currency": account.currency, "kind": account.kind, "accounts": 0, "debits_posted_minor": 0,
                "credits_posted_minor": 0, "debits_pending_minor": 0, "credits_pending_minor": 0})
            row["accounts"] += 1
            for column in BALANCE_COLUMNS:
                row[f"{column}_minor"] += getattr(account, column)
        transfers: dict[str, int] = {}
        for item in self._scan(self.transfers_table, FilterExpression="tenant_id = :t",
                               ProjectionExpression="#state", ExpressionAttributeNames={"#state": "state"},
                               ExpressionAttributeValues={":t": {"S": tenant_id}}):
            transfers[item["state"]["S"]] = transfers.get(item["state"]["S"], 0) + 1
        return {"currencies": [totals[key] for key in sorted(totals)], "transfers": transfers}

    def close(self) -> None:
        self.client.close()


def _account(item: dict) -> Account:
    return Account(account_id=item["account_id"]["S"], tenant_id=item["tenant_id"]["S"],
                   currency=item["currency"]["S"], kind=item["kind"]["S"],
                   credit_limit_minor=_int(item, "credit_limit_minor"),
                   debits_pending=_int(item, "debits_pending", 0), credits_pending=_int(item, "credits_pending", 0),
                   debits_posted=_int(item, "debits_posted", 0), credits_posted=_int(item, "credits_posted", 0),
                   available_minor=_int(item, "available_minor", 0))


def _transfer(item: dict) -> Transfer:
    return Transfer(payment_id=item["payment_id"]["S"], tenant_id=item["tenant_id"]["S"],
                    currency=item["currency"]["S"], amount_minor=_int(item, "amount_minor"),
                    debit_account=item["debit_account"]["S"], credit_account=item["credit_account"]["S"],
                    state=item["state"]["S"],
                    reserved_event=item["reserved_event"]["B"] if "reserved_event" in item else None,
                    final_event=item["final_event"]["B"] if "final_event" in item else None)
