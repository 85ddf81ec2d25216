"""API credentials on DynamoDB, one store for every intake replica and the CLI: on the
local DynamoDB EMULATOR (moto server, tests/unit/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from orchestrator.intake.credentials import SCOPE_READ, SCOPE_SUBMIT, CredentialError, CredentialStoreUnavailable
from orchestrator.intake.credentials_dynamodb import DynamoDBCredentialStore
from orchestrator.settings import REPO_ROOT
from tests.unit.conftest import EMULATOR_CREDENTIALS, EMULATOR_REGION, emulator_client


@pytest.fixture
def open_store(dynamodb_emulator):
    prefix = f"t{uuid.uuid4().hex[:12]}-"
    opened = []

    def make(**kwargs) -> DynamoDBCredentialStore:
        store = DynamoDBCredentialStore(emulator_client(dynamodb_emulator), prefix, **kwargs)
        opened.append(store)
        return store

    make.prefix = prefix
    yield make
    for store in opened:
        store.close()


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_key_verifies_to_its_credential_and_only_its_digest_is_stored(open_store):
    store = open_store(background=False)
    key, credential = store.create("emea", (SCOPE_SUBMIT,), label="bank A's payment hub")
    verified = store.verify(key)
    assert (verified.tenant_id, verified.scopes, verified.key_id, verified.client_id) == (
        "emea", frozenset({SCOPE_SUBMIT}), credential.key_id, credential.key_id)
    [item] = store.client.scan(TableName=store.table)["Items"]
    secret = key.split("_", 2)[2]
    assert not any(secret in str(value) for value in item.values())
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), f"po_{credential.key_id}_", "nonsense", ""):
        assert store.verify(wrong) is None, wrong


def test_replicas_see_a_new_key_and_a_revocation_within_the_refresh_interval(open_store):
    intake = open_store(refresh_s=0.1)  # a replica, refreshing on its thread
    cli = open_store(background=False)  # `payorch apikey` elsewhere
    key, credential = cli.create("na", (SCOPE_READ,))
    assert wait_until(lambda: intake.verify(key) is not None)
    rotated_key, rotated = cli.rotate(credential.key_id)
    assert rotated.client_id == credential.client_id and rotated.scopes == {SCOPE_READ}
    cli.revoke(credential.key_id)
    assert wait_until(lambda: intake.verify(key) is None)
    assert intake.verify(rotated_key).client_id == credential.key_id
    with pytest.raises(CredentialError, match="already revoked"):
        cli.revoke(credential.key_id)
    with pytest.raises(CredentialError, match="no credential"):
        cli.revoke("000000000000")
    with pytest.raises(CredentialError, match="was revoked"):
        cli.rotate(credential.key_id)
    listed = {c.key_id: c for c in cli.list()}
    assert listed[credential.key_id].revoked_at is not None and listed[rotated.key_id].revoked_at is None


def test_an_unreadable_table_serves_the_last_snapshot_then_refuses_to_vouch(open_store):
    store = open_store(refresh_s=0.05, max_stale_s=0.5)
    key, _ = store.create("emea")
    from botocore.exceptions import EndpointConnectionError

    def unreachable(*args, **kwargs):
        raise EndpointConnectionError(endpoint_url="http://dynamodb.invalid")

    store.client.get_paginator = unreachable
    assert store.verify(key) is not None  # the snapshot still serves
    assert wait_until(lambda: _raises_unavailable(store, key), timeout_s=5)


def _raises_unavailable(store, key) -> bool:
    try:
        store.verify(key)
    except CredentialStoreUnavailable:
        return True
    return False


def test_the_cli_manages_keys_in_the_shared_table(open_store, dynamodb_emulator, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env.update({"PAYORCH_DATA_DIR": str(tmp_path), "PAYORCH_STORAGE__BACKEND": "dynamodb",
                "PAYORCH_STORAGE__DYNAMODB__ENDPOINT_URL": dynamodb_emulator,
                "PAYORCH_STORAGE__DYNAMODB__REGION": EMULATOR_REGION,
                "PAYORCH_STORAGE__DYNAMODB__TABLE_PREFIX": open_store.prefix,
                **{name.upper(): value for name, value in EMULATOR_CREDENTIALS.items()}})

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", "apikey", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    created = cli("create", "--tenant", "latam", "--client", "pix-gateway")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]
    intake = open_store(background=False)
    assert intake.verify(key).client_id == "pix-gateway"
    listed = cli("list")
    assert listed.returncode == 0 and "client pix-gateway" in listed.stdout and "1 keys, 1 live" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    assert not (tmp_path / "credentials.sqlite").exists()  # nothing went to the local file
