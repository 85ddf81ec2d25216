"""The intake's stored answers on Amazon DynamoDB (`PAYORCH_STORAGE__BACKEND=dynamodb`):
the store that intake replicas on several hosts share.

Tables (created on first use if missing, on-demand capacity; `<p>` is
`PAYORCH_STORAGE__DYNAMODB__TABLE_PREFIX`, as for the ledger):

| Table | Partition key | Other attributes |
|---|---|---|
| `<p>intake-idempotency-keys` | `scope` S: JSON `[tenant, client, key]` | `tenant_id`, `body_sha256`, `claim_token` S; `claimed_at` N; `status_code` N, `response` B, `answered_at` S once answered |
| `<p>intake-accepted-payments` | `payment_id` S | `tenant_id`, `end_to_end_id`, `received_at`, `event_id` S |

The same rule as the SQLite store (`decide_claim`), made exclusive by conditional writes
instead of a file lock:
- a new claim is a `PutItem` with `attribute_not_exists(scope)`: of two replicas claiming
  one key at once, exactly one succeeds, and the other reads the winner's claim;
- a stale claim is taken over by an `UpdateItem` conditional on the claim token that was
  read and on there being no answer, so two requests cannot both take it over;
- the answer is an `UpdateItem` conditional on there being none yet: the first is kept.
Reads are strongly consistent. A failed condition is not an error: the store reads again
and decides again (a few rounds at most, since each failed condition means another
request made progress).

Within one region only: a global table would replicate claims asynchronously, last
writer wins, so a key must be arbitrated in one region (issue #11's tenant ownership).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.intake.idempotency import (
    AcceptedAnswer,
    ClaimOutcome,
    IdempotencyStoreUnavailable,
    KeyRecord,
    decide_claim,
)

if TYPE_CHECKING:
    from orchestrator.settings import DynamoDBSettings

log = logging.getLogger("payorch.intake.idempotency")

KEYS_TABLE = "intake-idempotency-keys"
ACCEPTED_TABLE = "intake-accepted-payments"
# Each failed condition means another request claimed, took over or answered the key in
# between; more rounds than this means something else is wrong.
_MAX_CLAIM_ROUNDS = 4


def scope_of(tenant_id: str, client_id: str, key: str) -> str:
    # JSON, so no client id or key can make two scopes collide (a separator could).
    return orjson.dumps([tenant_id, client_id, key]).decode()


class DynamoDBIdempotencyStore:
    # Every call is a network round trip: the intake makes them on a worker thread.
    blocking_io = True

    def __init__(self, client: Any, table_prefix: str, *, endpoint_url: str | None = None) -> None:
        self.client = client
        self.keys_table = f"{table_prefix}{KEYS_TABLE}"
        self.accepted_table = f"{table_prefix}{ACCEPTED_TABLE}"
        self.location = f"dynamodb tables {self.keys_table}, {self.accepted_table} at " \
                        f"{endpoint_url or 'the AWS regional endpoint'}"
        with self._reachable("table set-up"):
            self._create_missing_tables()

    @classmethod
    def from_settings(cls, settings: DynamoDBSettings) -> DynamoDBIdempotencyStore:
        from orchestrator.storage import dynamodb_client

        client = dynamodb_client(settings)
        try:
            return cls(client, settings.table_prefix, endpoint_url=settings.endpoint_url)
        except BaseException:
            client.close()
            raise

    @contextmanager
    def _reachable(self, operation: str) -> Iterator[None]:
        """botocore's network and service errors (after its own retries) as
        IdempotencyStoreUnavailable: the intake answers 503 and accepts nothing."""
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise IdempotencyStoreUnavailable(f"DynamoDB {operation} failed ({self.location}): {exc}") from exc

    def _create_missing_tables(self) -> None:
        for name, key in ((self.keys_table, "scope"), (self.accepted_table, "payment_id")):
            try:
                self.client.describe_table(TableName=name)
                continue
            except self.client.exceptions.ResourceNotFoundException:
                pass
            try:
                self.client.create_table(TableName=name, KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                                         AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                                         BillingMode="PAY_PER_REQUEST")
                log.info("created DynamoDB table %s", name)
            except self.client.exceptions.ResourceInUseException:
                pass  # another intake created it first
            self.client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    # -- the claim ------------------------------------------------------------------------

    def claim(self, tenant_id: str, client_id: str, key: str, digests: tuple[str, ...], *,
              now_s: float, stale_after_s: float) -> ClaimOutcome:
        scope = scope_of(tenant_id, client_id, key)
        token = secrets.token_hex(8)
        with self._reachable("claim"):
            for _ in range(_MAX_CLAIM_ROUNDS):
                item = self.client.get_item(TableName=self.keys_table, Key={"scope": {"S": scope}},
                                            ConsistentRead=True).get("Item")
                outcome = decide_claim(_record(item), digests, now_s=now_s, stale_after_s=stale_after_s)
                if outcome.kind != "claimed":
                    return outcome
                try:
                    if item is None:
                        self.client.put_item(
                            TableName=self.keys_table, ConditionExpression="attribute_not_exists(#scope)",
                            ExpressionAttributeNames={"#scope": "scope"},
                            Item={"scope": {"S": scope}, "tenant_id": {"S": tenant_id},
                                  "body_sha256": {"S": digests[0]}, "claim_token": {"S": token},
                                  "claimed_at": {"N": repr(now_s)}})
                    else:
                        self.client.update_item(
                            TableName=self.keys_table, Key={"scope": {"S": scope}},
                            UpdateExpression="SET claim_token = :new, claimed_at = :now",
                            ConditionExpression="claim_token = :read AND attribute_not_exists(status_code)",
                            ExpressionAttributeValues={":new": {"S": token}, ":now": {"N": repr(now_s)},
                                                       ":read": item["claim_token"]})
                except self.client.exceptions.ConditionalCheckFailedException:
                    continue  # another request got there first: read what it wrote
                return ClaimOutcome("claimed", claim_token=token)
        raise IdempotencyStoreUnavailable(f"the claim of an Idempotency-Key did not settle in {_MAX_CLAIM_ROUNDS} "
                                          f"rounds ({self.location})")

    def abandon(self, tenant_id: str, client_id: str, key: str, claim_token: str) -> None:
        with self._reachable("abandon"):
            try:
                self.client.update_item(
                    TableName=self.keys_table, Key={"scope": {"S": scope_of(tenant_id, client_id, key)}},
                    UpdateExpression="SET claimed_at = :zero",
                    ConditionExpression="claim_token = :token AND attribute_not_exists(status_code)",
                    ExpressionAttributeValues={":zero": {"N": "0"}, ":token": {"S": claim_token}})
            except self.client.exceptions.ConditionalCheckFailedException:
                pass  # taken over or answered meanwhile: nothing of ours to give up

    # -- answers --------------------------------------------------------------------------

    async def remember(self, answer: AcceptedAnswer) -> None:
        """Returns once the answer is written."""
        await asyncio.to_thread(self._write, answer)

    def _write(self, answer: AcceptedAnswer) -> None:
        with self._reachable("answer"):
            # The payments first: once the answer is visible, GET finds each payment.
            for payment, received_at, event_id in answer.accepted:
                try:
                    self.client.put_item(
                        TableName=self.accepted_table, ConditionExpression="attribute_not_exists(payment_id)",
                        Item={"payment_id": {"S": payment.payment_id}, "tenant_id": {"S": payment.tenant_id},
                              "end_to_end_id": {"S": payment.end_to_end_id}, "received_at": {"S": received_at},
                              "event_id": {"S": event_id}})
                except self.client.exceptions.ConditionalCheckFailedException:
                    pass  # accepted before (a request that took a stale claim over): the first is kept
            if answer.key is None:
                return
            try:
                self.client.update_item(
                    TableName=self.keys_table,
                    Key={"scope": {"S": scope_of(answer.tenant_id, answer.client_id, answer.key)}},
                    UpdateExpression="SET status_code = :code, #response = :response, answered_at = :at",
                    ConditionExpression="attribute_exists(#scope) AND attribute_not_exists(status_code)",
                    ExpressionAttributeNames={"#response": "response", "#scope": "scope"},
                    ExpressionAttributeValues={":code": {"N": str(answer.status_code)},
                                               ":response": {"B": orjson.dumps(answer.response)},
                                               ":at": {"S": datetime.now(UTC).isoformat()}})
            except self.client.exceptions.ConditionalCheckFailedException:
                pass  # answered first by the request it took the claim over from: that answer stays

    def accepted(self, payment_id: str) -> dict | None:
        with self._reachable("read"):
            item = self.client.get_item(TableName=self.accepted_table, Key={"payment_id": {"S": payment_id}},
                                        ConsistentRead=True).get("Item")
        return {name: value["S"] for name, value in item.items()} if item else None

    def close(self) -> None:
        self.client.close()


def _record(item: dict | None) -> KeyRecord | None:
    if item is None:
        return None
    answered = "status_code" in item
    return KeyRecord(item["body_sha256"]["S"], float(item["claimed_at"]["N"]),
                     int(item["status_code"]["N"]) if answered else None,
                     orjson.loads(item["response"]["B"]) if answered else None)
