"""API credentials: created, verified, revoked; stored hashed; and the CLI around them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from orchestrator.intake import credentials
from orchestrator.intake.credentials import (
    SCOPE_OPERATE,
    SCOPE_READ,
    SCOPE_SUBMIT,
    SCOPES,
    CredentialError,
    CredentialStore,
    ensure_local_keys,
    read_local_keys,
)
from orchestrator.settings import REPO_ROOT


@pytest.fixture
def store(tmp_path):
    opened = CredentialStore(tmp_path / "credentials.sqlite")
    yield opened
    opened.close()


def test_a_key_verifies_to_its_tenant_and_scopes_and_only_its_digest_is_stored(store, tmp_path):
    key, credential = store.create("emea", (SCOPE_SUBMIT,), label="bank A's payment hub")
    verified = store.verify(key)
    assert verified is not None
    assert (verified.tenant_id, verified.scopes, verified.key_id) == ("emea", frozenset({SCOPE_SUBMIT}),
                                                                      credential.key_id)
    secret = key.split("_", 2)[2]
    rows = sqlite3.connect(tmp_path / "credentials.sqlite").execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) == 1 and not any(secret in str(value) for value in rows[0])


def test_a_wrong_or_malformed_key_verifies_to_nothing(store):
    key, credential = store.create("emea")
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), f"po_{credential.key_id}_", "po__x", "nonsense",
                  key.replace("po_", "xx_", 1), f"po_ffffffffffff_{key.rsplit('_', 1)[1]}", ""):
        assert store.verify(wrong) is None, wrong


def test_a_revoked_key_stops_verifying_and_cannot_be_revoked_twice(store, monkeypatch):
    key, credential = store.create("na")
    assert store.verify(key) is not None
    other = CredentialStore(store.path)  # the CLI's connection, beside the intake's
    other.revoke(credential.key_id)
    # The intake's cache holds a verified key for at most _VERIFIED_CACHE_S.
    monkeypatch.setattr(credentials, "_VERIFIED_CACHE_S", 0.0)
    assert store.verify(key) is None
    with pytest.raises(CredentialError, match="already revoked"):
        other.revoke(credential.key_id)
    with pytest.raises(CredentialError, match="no credential"):
        other.revoke("000000000000")
    listed = {c.key_id: c for c in other.list()}
    assert listed[credential.key_id].revoked_at is not None
    other.close()


def test_unknown_or_no_scopes_are_refused(store):
    with pytest.raises(CredentialError, match="unknown scope"):
        store.create("emea", ("payments:everything",))
    with pytest.raises(CredentialError, match="at least one scope"):
        store.create("emea", ())


def test_local_keys_are_kept_across_runs_and_a_revoked_one_is_replaced(tmp_path):
    path, created = ensure_local_keys(tmp_path, ["emea", "na"])
    assert created == ["emea", "na"] and path.stat().st_mode & 0o077 == 0
    first = read_local_keys(tmp_path)
    assert ensure_local_keys(tmp_path, ["emea", "na"])[1] == []
    assert read_local_keys(tmp_path) == first
    store = CredentialStore(tmp_path / "credentials.sqlite")
    assert store.verify(first["emea"]).scopes == frozenset(SCOPES)
    store.revoke(store.verify(first["na"]).key_id)
    store.close()
    assert ensure_local_keys(tmp_path, ["emea", "na"])[1] == ["na"]
    again = read_local_keys(tmp_path)
    assert again["emea"] == first["emea"] and again["na"] != first["na"]


def cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env["PAYORCH_DATA_DIR"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "apikey", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_creates_lists_and_revokes_keys(tmp_path):
    created = cli(tmp_path, "create", "--tenant", "emea", "--scope", SCOPE_READ, "--scope", SCOPE_OPERATE,
                  "--label", "ops dashboard")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]  # the key is the last token
    store = CredentialStore(tmp_path / "credentials.sqlite")
    credential = store.verify(key)
    store.close()
    assert credential.tenant_id == "emea" and credential.scopes == frozenset({SCOPE_READ, SCOPE_OPERATE})
    listed = cli(tmp_path, "list")
    assert listed.returncode == 0 and credential.key_id in listed.stdout and "live" in listed.stdout
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout
    assert "1 keys, 1 live" in listed.stdout
    revoked = cli(tmp_path, "revoke", credential.key_id)
    assert revoked.returncode == 0 and f"revoked {credential.key_id}" in revoked.stdout
    assert "1 keys, 0 live" in cli(tmp_path, "list").stdout
    again = cli(tmp_path, "revoke", credential.key_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    unknown_tenant = cli(tmp_path, "create", "--tenant", "mars")
    assert unknown_tenant.returncode == 2 and "not configured" in unknown_tenant.stderr
    bad_scope = cli(tmp_path, "create", "--tenant", "emea", "--scope", "root")
    assert bad_scope.returncode == 2 and "unknown scope" in bad_scope.stderr


def test_a_rotated_key_keeps_its_client_tenant_and_scopes_and_both_work_until_revoked(store):
    old_key, old = store.create("emea", (SCOPE_READ,), "ops")
    new_key, new = store.rotate(old.key_id)
    assert new.key_id != old.key_id and new_key != old_key
    assert (new.client_id, new.tenant_id, new.scopes, new.label) == (old.key_id, "emea", {SCOPE_READ}, "ops")
    assert store.verify(old_key).client_id == store.verify(new_key).client_id == old.key_id
    store.revoke(old.key_id)
    with pytest.raises(CredentialError, match="was revoked"):
        store.rotate(old.key_id)
    with pytest.raises(CredentialError, match="no credential"):
        store.rotate("nope")
    # A client named at creation; names that could not be a client are refused.
    _, named = store.create("emea", client_id="payroll-batch")
    assert named.client_id == "payroll-batch"
    with pytest.raises(CredentialError, match="client id"):
        store.create("emea", client_id="has space")


def test_keys_of_a_store_made_before_clients_are_each_their_own_client(tmp_path):
    path = tmp_path / "credentials.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, scopes TEXT NOT NULL, "
                "secret_sha256 TEXT NOT NULL, label TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)")
    old.commit()
    old.close()
    store = CredentialStore(path)
    try:
        store.db.execute("INSERT INTO api_keys (key_id, tenant_id, scopes, secret_sha256, label, created_at) "
                         "VALUES ('abc123', 'emea', 'payments:read', 'x', '', '2026-11-01')")
        [listed] = store.list()
        key, created = store.create("emea")
    finally:
        store.close()
    assert listed.client_id == "abc123" and created.client_id == created.key_id


def test_the_cli_rotates_a_key_for_the_same_client(tmp_path):
    created = cli(tmp_path, "create", "--tenant", "emea", "--client", "payroll")
    assert created.returncode == 0, created.stderr
    assert "client payroll" in created.stdout
    rotated = cli(tmp_path, "rotate", created.stdout.split()[-1].split("_")[1])
    assert rotated.returncode == 0, rotated.stderr
    store = CredentialStore(tmp_path / "credentials.sqlite")
    old, new = store.verify(created.stdout.split()[-1]), store.verify(rotated.stdout.split()[-1])
    store.close()
    assert old.client_id == new.client_id == "payroll" and old.key_id != new.key_id
    assert f"revoke {old.key_id}" in rotated.stdout
    listed = cli(tmp_path, "list").stdout
    assert listed.count("client payroll") == 2 and "2 keys, 2 live" in listed
    gone = cli(tmp_path, "rotate", "nope")
    assert gone.returncode == 1 and "no credential" in gone.stderr
