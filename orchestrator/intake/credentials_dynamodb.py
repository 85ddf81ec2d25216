"""API credentials on Amazon DynamoDB (`PAYORCH_STORAGE__BACKEND=dynamodb`): one store for
every intake replica and for `payorch apikey`, wherever they run.

Table `<p>intake-api-keys` (created on first use if missing, on-demand capacity; `<p>` is
`PAYORCH_STORAGE__DYNAMODB__TABLE_PREFIX`), partition key `key_id` S, and `tenant_id`,
`scopes` (comma separated), `secret_sha256`, `label`, `created_at`, `client_id` S, and
`revoked_at` S once revoked. As in the SQLite store, only the secret's SHA-256 is kept.

Verifying a key must not cost a network round trip per request, nor block the intake's
event loop: the store keeps a snapshot of the table (a consistent Scan; a deployment has
hundreds of keys, not millions), refreshed on its own thread every `refresh_s`. So a new
key works, and a revoked one stops working, within `refresh_s` on every replica (the
SQLite store's `_VERIFIED_CACHE_S` promises the same). If DynamoDB cannot be read, the
last snapshot serves for `max_stale_s`; after that `verify` raises
CredentialStoreUnavailable, and the intake answers 503 rather than refusing good keys
with 401 or accepting revoked ones indefinitely.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.intake.credentials import (
    DEFAULT_SCOPES,
    Credential,
    CredentialError,
    CredentialStoreUnavailable,
    mint,
    parse_key,
    secret_matches,
)

if TYPE_CHECKING:
    from orchestrator.settings import DynamoDBSettings

log = logging.getLogger("payorch.intake.credentials")

KEYS_TABLE = "intake-api-keys"
REFRESH_S = 2.0
MAX_STALE_S = 30.0


class DynamoDBCredentialStore:
    def __init__(self, client: Any, table_prefix: str, *, refresh_s: float = REFRESH_S,
                 max_stale_s: float = MAX_STALE_S, background: bool = True) -> None:
        """`background=False` (the CLI) reads the table only when asked, never on a thread."""
        self.client = client
        self.table = f"{table_prefix}{KEYS_TABLE}"
        self.refresh_s, self.max_stale_s = refresh_s, max_stale_s
        self._snapshot: dict[str, tuple[Credential, str]] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._create_missing_table()
        self.refresh()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._refresh_loop, name="credential-refresh", daemon=True)
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: DynamoDBSettings, *, background: bool = True) -> DynamoDBCredentialStore:
        from orchestrator.storage import dynamodb_client

        client = dynamodb_client(settings)
        try:
            return cls(client, settings.table_prefix, background=background)
        except BaseException:
            client.close()
            raise

    def _create_missing_table(self) -> None:
        try:
            self.client.describe_table(TableName=self.table)
            return
        except self.client.exceptions.ResourceNotFoundException:
            pass
        try:
            self.client.create_table(TableName=self.table, KeySchema=[{"AttributeName": "key_id", "KeyType": "HASH"}],
                                     AttributeDefinitions=[{"AttributeName": "key_id", "AttributeType": "S"}],
                                     BillingMode="PAY_PER_REQUEST")
            log.info("created DynamoDB table %s", self.table)
        except self.client.exceptions.ResourceInUseException:
            pass  # another process created it first
        self.client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    # -- the snapshot ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the whole table into the snapshot (raises what DynamoDB raised)."""
        snapshot: dict[str, tuple[Credential, str]] = {}
        pages = self.client.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True)
        for page in pages:
            for item in page["Items"]:
                credential = _credential(item)
                snapshot[credential.key_id] = (credential, item["secret_sha256"]["S"])
        with self._lock:
            self._snapshot, self._read_at = snapshot, time.monotonic()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except (BotoCoreError, ClientError) as exc:
                log.warning("credential table %s not read (%s); serving the snapshot of %.0f s ago", self.table,
                            type(exc).__name__, time.monotonic() - self._read_at)
            except Exception:  # an item this release cannot read: keep the thread, say so
                log.exception("credential table %s not read; serving the snapshot of %.0f s ago", self.table,
                              time.monotonic() - self._read_at)

    def verify(self, key: str) -> Credential | None:
        """The live credential the key belongs to, or None (unknown, wrong or revoked)."""
        with self._lock:
            snapshot, age_s = self._snapshot, time.monotonic() - self._read_at
        if age_s > self.max_stale_s:
            raise CredentialStoreUnavailable(f"the credential table {self.table} was last read {age_s:.0f} s ago")
        parsed = parse_key(key)
        if parsed is None:
            return None
        found = snapshot.get(parsed[0])
        if found is None or found[0].revoked_at is not None or not secret_matches(parsed[1], found[1]):
            return None
        return found[0]

    # -- what the CLI does ----------------------------------------------------------------

    def create(self, tenant_id: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, label: str = "",
               client_id: str | None = None) -> tuple[str, Credential]:
        key, credential, secret_sha256 = mint(tenant_id, scopes, label, client_id)
        self.client.put_item(TableName=self.table, ConditionExpression="attribute_not_exists(key_id)", Item={
            "key_id": {"S": credential.key_id}, "tenant_id": {"S": tenant_id},
            "scopes": {"S": ",".join(sorted(credential.scopes))}, "secret_sha256": {"S": secret_sha256},
            "label": {"S": label}, "created_at": {"S": credential.created_at},
            "client_id": {"S": credential.client_id}})
        self._remember(credential, secret_sha256)  # this process knows it at once, the others within refresh_s
        return key, credential

    def rotate(self, key_id: str) -> tuple[str, Credential]:
        old = self._get(key_id)
        if old.revoked_at is not None:
            raise CredentialError(f"credential {key_id} was revoked at {old.revoked_at}; create a new one")
        return self.create(old.tenant_id, tuple(sorted(old.scopes)), old.label, client_id=old.client_id)

    def list(self) -> list[Credential]:
        self.refresh()
        with self._lock:
            credentials = [credential for credential, _ in self._snapshot.values()]
        return sorted(credentials, key=lambda c: (c.tenant_id, c.created_at, c.key_id))

    def revoke(self, key_id: str) -> Credential:
        try:
            item = self.client.update_item(
                TableName=self.table, Key={"key_id": {"S": key_id}}, UpdateExpression="SET revoked_at = :at",
                ConditionExpression="attribute_exists(key_id) AND attribute_not_exists(revoked_at)",
                ExpressionAttributeValues={":at": {"S": datetime.now(UTC).isoformat(timespec="seconds")}},
                ReturnValues="ALL_NEW")["Attributes"]
        except self.client.exceptions.ConditionalCheckFailedException:
            old = self._get(key_id)  # raises for an unknown key
            raise CredentialError(f"credential {key_id} was already revoked at {old.revoked_at}") from None
        revoked = _credential(item)
        self._remember(revoked, item["secret_sha256"]["S"])
        return revoked

    def _remember(self, credential: Credential, secret_sha256: str) -> None:
        with self._lock:
            self._snapshot = {**self._snapshot, credential.key_id: (credential, secret_sha256)}

    def _get(self, key_id: str) -> Credential:
        item = self.client.get_item(TableName=self.table, Key={"key_id": {"S": key_id}}, ConsistentRead=True).get("Item")
        if item is None:
            raise CredentialError(f"no credential {key_id!r}")
        return _credential(item)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.client.close()


def _credential(item: dict) -> Credential:
    return Credential(item["key_id"]["S"], item["tenant_id"]["S"], frozenset(item["scopes"]["S"].split(",")),
                      item["label"]["S"], item["created_at"]["S"],
                      item["revoked_at"]["S"] if "revoked_at" in item else None, client=item["client_id"]["S"])
