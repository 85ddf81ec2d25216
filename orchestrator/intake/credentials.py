"""API credentials: each bound to one tenant, with scopes, stored hashed.

A key reads `po_<key id>_<secret>`. The key id names the credential in lists, logs and
revocations; only the secret's SHA-256 is stored. The secret is 32 random bytes, so a plain
digest is as strong as a slow password hash would be, and a lookup costs microseconds.
The store is `credentials.sqlite` in the data directory, written by `payorch apikey` and
read by the intake, which remembers a verified key for `_VERIFIED_CACHE_S`: a revocation
takes effect within that long.

Each key belongs to a client (`client_id`): a new key starts a client of its own, and
`rotate` issues a replacement key of the same client, tenant and scopes. Idempotency keys
are the client's, so a client's retry after a rotation, sent with the new key, is still
recognised as the same request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.storage import open_sqlite

# What a credential may do.
SCOPE_SUBMIT = "payments:submit"  # POST /v1/payments, /v1/payments/iso20022
SCOPE_READ = "payments:read"  # payments, notifications, settlement cycles and statements
SCOPE_OPERATE = "operate"  # ledger summary, /metrics
# GET /v1/reviews, POST /v1/payments/{id}/review: releasing a held payment is a duty of
# its own, never part of submitting or reading payments.
SCOPE_REVIEW = "payments:review"
SCOPES = (SCOPE_SUBMIT, SCOPE_READ, SCOPE_OPERATE, SCOPE_REVIEW)
DEFAULT_SCOPES = (SCOPE_SUBMIT, SCOPE_READ)

# In the data directory, beside the intake's other stores.
CREDENTIALS_FILE = "credentials.sqlite"
_PREFIX = "po"
_VERIFIED_CACHE_S = 2.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, scopes TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
  label TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT, client_id TEXT);
"""
# A client id is named by an operator or derived from a key id or a JWT claim.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


class CredentialError(ValueError):
    """A request to create or revoke a credential that cannot be honoured."""


class CredentialStoreUnavailable(Exception):
    """The store could not be read for long enough that its answer is no longer trusted."""


@dataclass(frozen=True, slots=True)
class Credential:
    key_id: str
    tenant_id: str
    scopes: frozenset[str]
    label: str
    created_at: str
    revoked_at: str | None
    # Who the credential names, where it names someone: a JWT's subject, vouched for by the
    # bank's identity provider. An API key names a system, not a person, so it has none
    # (a review decision then names its reviewer in X-Reviewer).
    subject: str | None = None
    # The client the credential was issued to, the scope of its Idempotency-Keys; it
    # outlives the key (see `CredentialStore.rotate`). Empty means the key id.
    client: str = ""

    @property
    def client_id(self) -> str:
        return self.client or self.key_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_sha256: str) -> bool:
    return hmac.compare_digest(secret_sha256, _digest(secret))


def parse_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a key that reads `po_<key id>_<secret>`, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or not key_id or not secret:
        return None
    return key_id, secret


def mint(tenant_id: str, scopes: tuple[str, ...], label: str, client_id: str | None) -> tuple[str, Credential, str]:
    """A new key, its credential and the digest of its secret (what a store keeps), for
    every store: the rules of scopes and client ids are checked here."""
    if client_id is not None and not _CLIENT_ID.fullmatch(client_id):
        raise CredentialError("a client id is 1 to 128 letters, digits and . _ : @ -, starting with a letter "
                              "or digit")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise CredentialError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise CredentialError("a credential needs at least one scope")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    credential = Credential(key_id, tenant_id, frozenset(scopes), label, created_at, None, client=client_id or key_id)
    return f"{_PREFIX}_{key_id}_{secret}", credential, _digest(secret)


class CredentialStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_sqlite(path)
        self.db.executescript(_SCHEMA)
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(api_keys)")}
        if "client_id" not in columns:  # a store of a release before clients: each key was its own
            self.db.execute("ALTER TABLE api_keys ADD COLUMN client_id TEXT")
        self._verified: dict[str, tuple[float, Credential]] = {}

    def create(self, tenant_id: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, label: str = "",
               client_id: str | None = None) -> tuple[str, Credential]:
        """A new credential and its key; the key is shown once and never stored. Without
        `client_id` the key starts a client of its own, named by its key id."""
        key, credential, secret_sha256 = mint(tenant_id, scopes, label, client_id)
        self.db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,?,NULL,?)",
                        (credential.key_id, tenant_id, ",".join(sorted(credential.scopes)), secret_sha256, label,
                         credential.created_at, credential.client_id))
        return key, credential

    def rotate(self, key_id: str) -> tuple[str, Credential]:
        """A new key for the client of live key `key_id`: same tenant, scopes and label.
        Both keys work until the old one is revoked, so clients can switch over."""
        row = self.db.execute("SELECT * FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        if row is None:
            raise CredentialError(f"no credential {key_id!r}")
        if row["revoked_at"] is not None:
            raise CredentialError(f"credential {key_id} was revoked at {row['revoked_at']}; create a new one")
        old = self._credential(row)
        return self.create(old.tenant_id, tuple(sorted(old.scopes)), old.label, client_id=old.client_id)

    def list(self) -> list[Credential]:
        rows = self.db.execute("SELECT * FROM api_keys ORDER BY tenant_id, created_at").fetchall()
        return [self._credential(row) for row in rows]

    def revoke(self, key_id: str) -> Credential:
        changed = self.db.execute("UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL",
                                  (datetime.now(UTC).isoformat(timespec="seconds"), key_id)).rowcount
        row = self.db.execute("SELECT * FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        if row is None:
            raise CredentialError(f"no credential {key_id!r}")
        if not changed:
            raise CredentialError(f"credential {key_id} was already revoked at {row['revoked_at']}")
        self._verified.clear()
        return self._credential(row)

    def verify(self, key: str) -> Credential | None:
        """The live credential the key belongs to, or None (unknown, wrong or revoked)."""
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and now - cached[0] < _VERIFIED_CACHE_S:
            return cached[1]
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        try:
            row = self.db.execute("SELECT * FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None or row["revoked_at"] is not None:
            self._verified.pop(key, None)
            return None
        if not secret_matches(secret, row["secret_sha256"]):
            return None
        credential = self._credential(row)
        if len(self._verified) > 10_000:  # bounded whatever keys are tried
            self._verified.clear()
        self._verified[key] = (now, credential)
        return credential

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _credential(row: sqlite3.Row) -> Credential:
        return Credential(row["key_id"], row["tenant_id"], frozenset(row["scopes"].split(",")), row["label"],
                          row["created_at"], row["revoked_at"], client=row["client_id"] or row["key_id"])


# Where `payorch up` (and the test harness) keep one local key per tenant, for the demo,
# the load generators and a newcomer's curl. Readable by the owner only.
LOCAL_KEYS_FILE = "api-keys.json"


def local_keys_path(data_dir: Path) -> Path:
    return data_dir / LOCAL_KEYS_FILE


def read_local_keys(data_dir: Path) -> dict[str, str]:
    """tenant id -> key, from the local keys file; {} when there is none."""
    path = local_keys_path(data_dir)
    if not path.exists():
        return {}
    return {str(tenant): str(key) for tenant, key in json.loads(path.read_text()).items()}


def open_credential_store(settings, *, background: bool = True):
    """The deployment's credential store: `credentials.sqlite` in the data directory, or
    DynamoDB where the deployment's state is (`PAYORCH_STORAGE__BACKEND=dynamodb`), which
    every intake replica and `payorch apikey` share. `background=False` for one-shot
    commands: no refresh thread."""
    if settings.storage.backend == "dynamodb":
        from orchestrator.intake.credentials_dynamodb import DynamoDBCredentialStore

        return DynamoDBCredentialStore.from_settings(settings.storage.dynamodb, background=background)
    return CredentialStore(settings.data_dir / CREDENTIALS_FILE)


def ensure_local_keys(data_dir: Path, tenant_ids: list[str], store=None) -> tuple[Path, list[str]]:
    """Make sure the local keys file holds a live key, with every scope, for each tenant.

    Keys already there and still valid are kept (a restart does not rotate them); a
    missing or revoked one is replaced. Returns the file and the tenants given new keys.
    `store` (closed here) defaults to the SQLite store in `data_dir`.
    """
    store = store if store is not None else CredentialStore(data_dir / CREDENTIALS_FILE)
    try:
        keys = read_local_keys(data_dir)
        created = []
        for tenant_id in tenant_ids:
            credential = store.verify(keys[tenant_id]) if tenant_id in keys else None
            if credential is None or credential.tenant_id != tenant_id or set(SCOPES) - credential.scopes:
                keys[tenant_id], _ = store.create(tenant_id, SCOPES, label="local key (payorch up)")
                created.append(tenant_id)
    finally:
        store.close()
    path = local_keys_path(data_dir)
    if created or not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.touch(mode=0o600)
        os.chmod(partial, 0o600)
        partial.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
        partial.replace(path)
    return path, created


def bearer(key: str) -> dict[str, str]:
    """The request header that carries a key."""
    return {"Authorization": f"Bearer {key}"}
