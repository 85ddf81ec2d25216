"""POST /v1/payments end to end through the intake app, on a fake producer (no broker):
answers, problem+json types, idempotency, and what is published and stored."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.events import EventCodec
from orchestrator.intake.app import create_app
from orchestrator.intake.credentials import (
    SCOPE_READ,
    SCOPE_SUBMIT,
    CredentialStore,
    bearer,
    ensure_local_keys,
    open_credential_store,
    read_local_keys,
)
from orchestrator.intake.idempotency import AcceptedAnswer, IdempotencyStore
from orchestrator.intake.publisher import EventPublisher
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.topics import TopicNamer
from tests.unit.conftest import EMULATOR_CREDENTIALS, EMULATOR_REGION
from tests.unit.intake_fakes import FakeProducer, refused
from tests.unit.stage_fixtures import TENANTS

CODEC = EventCodec(REPO_ROOT / "schemas")
PROBLEM = "application/problem+json"


class World:
    def __init__(self, tmp_path, intake: dict | None = None, storage: dict | None = None) -> None:
        self.settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"},
                                 intake={"publish_timeout_s": 0.2, **(intake or {})}, storage=storage or {})
        self.producer = FakeProducer()
        publisher = EventPublisher(self.producer, CODEC, TopicNamer(self.settings.topic_template))
        self.app = create_app(self.settings, TENANTS, publisher=publisher)
        ensure_local_keys(tmp_path, sorted(TENANTS), open_credential_store(self.settings, background=False))
        self.keys = read_local_keys(tmp_path)  # tenant id -> key with every scope

    def auth(self, tenant: str = "emea") -> dict[str, str]:
        return bearer(self.keys[tenant])

    def published(self) -> list:
        return [CODEC.decode(p.value) for p in self.producer.produced]


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        yield world


def post(world: World, body, *, tenant: str | None = "emea", key: str | None = None, headers=None):
    sent = {"Content-Type": "application/json"}
    if tenant is not None:
        sent.update(world.auth(tenant))
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return world.client.post("/v1/payments", content=content, headers=sent)


def assert_problem(answer, status: int, kind: str, instance: str = "/v1/payments") -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["type"] == f"https://payorch.dev/problems/{kind}"
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert problem["instance"] == instance
    return problem


def test_an_accepted_payment_is_published_stored_and_answered_202(world):
    answer = post(world, sample_body("emea"), key="k-1")
    assert answer.status_code == 202, answer.text
    body = answer.json()
    payment_id = body["payment_id"]
    assert body == {"payment_id": payment_id, "status": "RECEIVED", "correlation_id": payment_id,
                    "end_to_end_id": body["end_to_end_id"], "links": {"self": f"/v1/payments/{payment_id}"}}
    assert answer.headers["location"] == f"/v1/payments/{payment_id}"
    assert answer.headers["content-type"] == "application/json"
    [event] = world.published()
    assert (event.event_type, event.payment_id, event.payload) == (
        "PaymentReceived", payment_id, {"channel": "json", "idempotency_key": "k-1"})
    assert world.producer.produced[0].topic == "emea.payments.received.v1"
    # The answer was stored before it was given: another connection sees it.
    db = sqlite3.connect(world.settings.data_dir / "intake.sqlite")
    assert db.execute("SELECT payment_id, event_id FROM accepted_payments").fetchall() == [(payment_id, event.event_id)]
    assert db.execute("SELECT idempotency_key, status_code FROM idempotency_keys").fetchall() == [("k-1", 202)]
    db.close()
    status = world.client.get(f"/v1/payments/{payment_id}", headers=world.auth())
    assert status.status_code == 200 and status.json()["status"] == "RECEIVED"


def test_the_same_key_and_body_give_the_original_answer_again_without_publishing(world):
    body = sample_body("emea")
    first = post(world, body, key="k-1")
    again = post(world, body, key="k-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(world.producer.produced) == 1


def test_the_same_key_with_another_body_is_refused_and_not_published(world):
    body = sample_body("emea")
    post(world, body, key="k-1")
    other = post(world, {**body, "amount": "999.99"}, key="k-1")
    assert_problem(other, 422, "idempotency-key-reused")
    assert len(world.producer.produced) == 1
    # The key belongs to its tenant's client: another tenant may use it for its own payment.
    elsewhere = post(world, sample_body("na"), tenant="na", key="k-1")
    assert elsewhere.status_code == 202 and elsewhere.json()["payment_id"] != post(world, body, key="k-1").json()[
        "payment_id"]


def test_a_key_is_its_clients_own_and_survives_a_rotation(world):
    store = CredentialStore(world.settings.data_dir / "credentials.sqlite")
    mine, my_credential = store.create("emea", (SCOPE_SUBMIT,), "payroll")
    theirs, _ = store.create("emea", (SCOPE_SUBMIT,), "treasury")
    rotated, rotated_credential = store.rotate(my_credential.key_id)
    store.close()
    body = sample_body("emea")
    first = post(world, body, tenant=None, key="k-client", headers=bearer(mine))
    assert first.status_code == 202, first.text
    # Another client of the same tenant can neither replay nor squat the key ...
    other_client = post(world, {**body, "amount": "999.99"}, tenant=None, key="k-client", headers=bearer(theirs))
    assert other_client.status_code == 202, other_client.text
    assert other_client.json()["payment_id"] != first.json()["payment_id"]
    # ... while the client's own retry, sent with its rotated key, is the same request.
    assert rotated_credential.client_id == my_credential.client_id == my_credential.key_id
    retried = post(world, body, tenant=None, key="k-client", headers=bearer(rotated))
    assert retried.json() == first.json() and retried.headers["idempotent-replayed"] == "true"
    assert_problem(post(world, {**body, "amount": "1.00"}, tenant=None, key="k-client", headers=bearer(rotated)),
                   422, "idempotency-key-reused")
    assert len(world.producer.produced) == 2


def test_a_key_another_replica_is_processing_answers_409_with_retry_after(world):
    """Another intake process sharing the store holds a live claim on the key."""
    from orchestrator.intake.app import json_digest

    body = sample_body("emea")
    key_id = world.keys["emea"].split("_")[1]  # a key made by `create` is its own client
    replica = IdempotencyStore(world.settings.data_dir / "intake.sqlite")
    held = replica.claim("emea", key_id, "k-replica", (json_digest(body),), now_s=time.time(), stale_after_s=5.2)
    assert held.kind == "claimed"
    busy = post(world, body, key="k-replica")
    problem = assert_problem(busy, 409, "request-in-progress")
    assert 1 <= int(busy.headers["retry-after"]) <= 6 and "Retry-After" not in problem
    assert_problem(post(world, {**body, "amount": "999.99"}, key="k-replica"), 422, "idempotency-key-reused")
    assert world.producer.produced == []
    # The replica answers; the same request is then replayed from its answer.
    answered = {"payment_id": "p-of-the-replica", "status": "RECEIVED"}
    world.client.portal.call(replica.remember, AcceptedAnswer(
        "emea", "k-replica", json_digest(body), 202, answered, [], client_id=key_id, claim_token=held.claim_token))
    replica.close()
    replayed = post(world, body, key="k-replica")
    assert replayed.status_code == 202 and replayed.json() == answered
    assert world.producer.produced == []


def test_a_body_refused_under_a_claimed_key_leaves_the_key_free_for_the_same_body(world):
    # An unconfirmed publish abandons the claim: the same body may come again at once,
    # another body may not (the broker may yet have the first one's payment).
    world.producer.answers.append(refused())
    body = sample_body("emea")
    assert_problem(post(world, body, key="k-abandoned"), 503, "broker-unavailable")
    assert_problem(post(world, {**body, "amount": "999.99"}, key="k-abandoned"), 422, "idempotency-key-reused")
    assert post(world, body, key="k-abandoned").status_code == 202


def test_on_dynamodb_replicas_on_other_hosts_share_credentials_and_keys_and_an_unreachable_store_accepts_nothing(
        tmp_path, dynamodb_emulator, monkeypatch):
    """Two intakes with their own data directories (two hosts) and one DynamoDB EMULATOR."""
    from botocore.exceptions import EndpointConnectionError

    from orchestrator.intake.idempotency_dynamodb import DynamoDBIdempotencyStore

    opened = []
    open_from_settings = DynamoDBIdempotencyStore.from_settings
    monkeypatch.setattr(DynamoDBIdempotencyStore, "from_settings",
                        lambda settings: opened.append(open_from_settings(settings)) or opened[-1])
    storage = {"backend": "dynamodb", "dynamodb": {"endpoint_url": dynamodb_emulator, "region": EMULATOR_REGION,
                                                   "table_prefix": f"t{uuid.uuid4().hex[:12]}-"}}
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name.upper(), value)
    body = sample_body("emea")
    one, two = World(tmp_path / "host-1", storage=storage), World(tmp_path / "host-2", storage=storage)
    two.keys = one.keys  # the same client calls both; its key is in the shared credential table
    with TestClient(one.app, base_url="http://127.0.0.1:8080") as first_client, \
            TestClient(two.app, base_url="http://127.0.0.1:8080") as second_client:
        one.client, two.client = first_client, second_client
        first = post(one, body, key="k-hosts")
        assert first.status_code == 202, first.text
        again = post(two, body, key="k-hosts")
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert_problem(post(two, {**body, "amount": "999.99"}, key="k-hosts"), 422, "idempotency-key-reused")
        payment_id = first.json()["payment_id"]
        assert two.client.get(f"/v1/payments/{payment_id}", headers=two.auth()).json()["status"] == "RECEIVED"
        assert len(one.producer.produced) == 1 and two.producer.produced == []

        def unreachable(*args, **kwargs):
            raise EndpointConnectionError(endpoint_url=dynamodb_emulator)

        monkeypatch.setattr(opened[0].client, "get_item", unreachable)
        refused = post(one, body, key="k-down")
        problem = assert_problem(refused, 503, "store-unavailable")
        assert refused.headers["retry-after"] == "2" and "nothing was accepted" in problem["detail"]
        assert len(one.producer.produced) == 1


def test_a_key_with_surrounding_whitespace_is_the_same_key(world):
    # Whitespace around a header value is not part of it (RFC 9110): one payment, not three.
    body = sample_body("emea")
    answers = [post(world, body, key=key) for key in ("k-ws", "k-ws ", "k-ws  ", "\tk-ws")]
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["payment_id"] for a in answers}) == 1
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true", "true"]
    assert len(world.producer.produced) == 1
    assert_problem(post(world, body, key="   "), 400, "invalid-idempotency-key")


def test_a_retry_serialised_anew_is_the_same_request(world):
    body = sample_body("emea")
    first = post(world, json.dumps(body).encode(), key="k-layout")
    assert first.status_code == 202, first.text
    # Pretty-printed, members in another order, a trailing newline, an escaped letter.
    reordered = dict(reversed(list(body.items())))
    layouts = [json.dumps(body, indent=2).encode(), json.dumps(reordered).encode(),
               json.dumps(body).encode() + b"\n",
               json.dumps(body).replace('"amount"', '"\\u0061mount"').encode()]
    for layout in layouts:
        again = post(world, layout, key="k-layout")
        assert again.status_code == 202, again.text
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(world.producer.produced) == 1
    # Another value is another request, however it is laid out.
    assert_problem(post(world, json.dumps({**body, "amount": "125.51"}, indent=2).encode(), key="k-layout"),
                   422, "idempotency-key-reused")


def test_an_answer_stored_under_the_raw_body_digest_is_still_recognised(world):
    # Answers stored before content digests identified a request by its raw bytes.
    from orchestrator.intake.app import body_digest

    raw = json.dumps(sample_body("emea")).encode()
    first = post(world, raw, key="k-old")
    db = sqlite3.connect(world.settings.data_dir / "intake.sqlite")
    db.execute("UPDATE idempotency_keys SET body_sha256=? WHERE idempotency_key='k-old'", (body_digest(raw, "json"),))
    db.commit()
    db.close()
    again = post(world, raw, key="k-old")
    assert again.status_code == 202 and again.json() == first.json()
    assert len(world.producer.produced) == 1


def test_a_member_named_twice_is_refused(world):
    body = json.dumps(sample_body("emea"))
    doubled = body[:-1] + ', "amount": "999999.00"}'
    problem = assert_problem(post(world, doubled.encode(), key="k-dup"), 400, "duplicate-json-key")
    assert "'amount'" in problem["detail"]
    nested = body.replace('"debtor": {', '"debtor": {"name": "Mallory", ', 1)
    assert nested != body
    assert_problem(post(world, nested.encode()), 400, "duplicate-json-key")
    assert world.producer.produced == []


def test_a_host_the_intake_does_not_serve_is_refused_and_nothing_redirects(world):
    body = sample_body("emea")
    refused = post(world, body, headers={"Host": "evil.example"})
    assert refused.status_code == 400 and refused.headers["content-type"] == PROBLEM
    assert refused.json()["type"].endswith("/host-not-allowed")
    assert world.client.get("/v1/payments/x", headers={"Host": "evil.example:8080", **world.auth()}
                            ).json()["type"].endswith("/host-not-allowed")
    assert world.producer.produced == []
    # Health checks name the target's address; they answer under any Host.
    assert world.client.get("/healthz", headers={"Host": "10.0.3.7:8080"}).status_code == 200
    # A trailing slash is not redirected to a URL built from the Host.
    slash = world.client.post("/v1/payments/", content=json.dumps(body).encode(), follow_redirects=False,
                              headers={**world.auth(), "Content-Type": "application/json"})
    assert slash.status_code == 404 and "location" not in slash.headers
    assert post(world, body, headers={"Host": "localhost:8080"}).status_code == 202


def test_the_host_check_reads_ports_and_ipv6_literals():
    from orchestrator.intake.asgi import host_of

    def scope(host):
        return {"headers": [(b"host", host.encode())]}

    assert host_of(scope("127.0.0.1:8080")) == "127.0.0.1"
    assert host_of(scope("LocalHost")) == "localhost"
    assert host_of(scope("[::1]:8080")) == "::1"
    assert host_of(scope("[::1]")) == "::1"
    assert host_of({"headers": []}) is None


def test_a_request_without_a_valid_credential_is_401_with_a_bearer_challenge(world):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Token abc"},
                    {"Authorization": "Bearer po_000000000000_unknown"}):
        answer = world.client.post("/v1/payments", content=json.dumps(sample_body("emea")).encode(),
                                   headers={"Content-Type": "application/json", **headers})
        assert_problem(answer, 401, "unauthenticated")
        assert answer.headers["www-authenticate"].startswith('Bearer realm="payorch"')
    assert world.producer.produced == []


def test_the_log_names_the_credential_that_submitted_a_payment_and_never_the_key(world, caplog):
    caplog.set_level("INFO", logger="payorch.intake")
    payment_id = post(world, sample_body("emea")).json()["payment_id"]
    [record] = [r for r in caplog.records if r.getMessage() == "payment received"]
    key = world.keys["emea"]
    assert record.payment_id == payment_id and record.credential == key.split("_")[1]
    assert key.split("_", 2)[2] not in caplog.text


def test_a_credential_acts_only_within_its_tenant(world):
    payment_id = post(world, sample_body("emea"), key="k-bola").json()["payment_id"]
    # Another tenant's key cannot tell the payment from one that does not exist...
    elsewhere = world.client.get(f"/v1/payments/{payment_id}", headers=world.auth("na"))
    assert elsewhere.status_code == 404 and elsewhere.json()["type"].endswith("/payment-not-found")
    notification = world.client.get(f"/v1/payments/{payment_id}/notification", headers=world.auth("na"))
    assert notification.status_code == 404
    # ...and naming the payment's tenant in X-Tenant-Id does not lend it that tenant.
    posing = world.client.get(f"/v1/payments/{payment_id}", headers={**world.auth("na"), "X-Tenant-Id": "emea"})
    assert posing.status_code == 403 and posing.json()["type"].endswith("/forbidden")
    assert world.client.get(f"/v1/payments/{payment_id}", headers=world.auth("emea")).status_code == 200
    assert world.client.get("/v1/ledger/summary", headers=world.auth("na")).json()["tenant_id"] == "na"


def test_each_endpoint_needs_its_scope(world, tmp_path):
    store = CredentialStore(world.settings.data_dir / "credentials.sqlite")
    reader, _ = store.create("emea", (SCOPE_READ,))
    submitter, _ = store.create("emea", (SCOPE_SUBMIT,))
    store.close()
    refused = post(world, sample_body("emea"), tenant=None, headers=bearer(reader))
    assert_problem(refused, 403, "forbidden")
    assert "payments:submit" in refused.json()["detail"]
    accepted = post(world, sample_body("emea"), tenant=None, headers=bearer(submitter))
    assert accepted.status_code == 202
    payment_id = accepted.json()["payment_id"]
    assert world.client.get(f"/v1/payments/{payment_id}", headers=bearer(submitter)).status_code == 403
    assert world.client.get(f"/v1/payments/{payment_id}", headers=bearer(reader)).status_code == 200
    for path in ("/metrics", "/v1/ledger/summary"):
        assert world.client.get(path, headers=bearer(reader)).status_code == 403, path
        assert world.client.get(path, headers=world.auth()).status_code == 200, path
    assert world.client.get("/metrics").status_code == 401
    # Probes stay open: an orchestrator's health checks carry no credential.
    assert world.client.get("/healthz").status_code == 200


def test_a_revoked_key_is_refused(world, monkeypatch):
    from orchestrator.intake import credentials

    monkeypatch.setattr(credentials, "_VERIFIED_CACHE_S", 0.0)
    store = CredentialStore(world.settings.data_dir / "credentials.sqlite")
    key, credential = store.create("emea")
    assert post(world, sample_body("emea"), tenant=None, headers=bearer(key)).status_code == 202
    store.revoke(credential.key_id)
    store.close()
    assert_problem(post(world, sample_body("emea"), tenant=None, headers=bearer(key)), 401, "unauthenticated")


def test_concurrent_requests_with_one_key_publish_once_and_get_one_answer(world):
    body = json.dumps(sample_body("emea")).encode()
    headers = {**world.auth(), "Idempotency-Key": "k-race", "Content-Type": "application/json"}

    async def race():
        transport = httpx.ASGITransport(app=world.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            return await asyncio.gather(*(client.post("/v1/payments", content=body, headers=headers)
                                          for _ in range(5)))

    answers = world.client.portal.call(race)
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["payment_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4
    assert len(world.producer.produced) == 1


BAD_REQUESTS = [
    ("malformed json", dict(body=b'{"amount": '), 400, "malformed-json"),
    ("json array", dict(body=b"[1,2]"), 422, "validation-error"),
    ("schema violation", dict(body={**sample_body("emea"), "amount": 125.5}), 422, "validation-error"),
    ("business rule", dict(body={**sample_body("emea"), "amount": "0"}), 422, "payment-invalid"),
    ("no credential", dict(body=b"{}", tenant=None), 401, "unauthenticated"),
    ("another tenant named", dict(body=b"{}", headers={"X-Tenant-Id": "mars"}), 403, "forbidden"),
    ("not a bearer key", dict(body=b"{}", tenant=None, headers={"Authorization": "Basic dXNlcjpwdw=="}), 401,
     "unauthenticated"),
    ("unknown key", dict(body=b"{}", tenant=None, headers={"Authorization": "Bearer po_0123456789ab_nope"}), 401,
     "unauthenticated"),
    ("wrong media type", dict(body=b"<x/>", headers={"Content-Type": "text/plain"}), 415, "unsupported-media-type"),
    ("oversize body", dict(body=b"{" + b" " * 70_000 + b"}"), 413, "payload-too-large"),
    ("empty key", dict(body=sample_body("emea"), key=""), 400, "invalid-idempotency-key"),
    ("key too long", dict(body=sample_body("emea"), key="k" * 256), 400, "invalid-idempotency-key"),
]


@pytest.mark.parametrize(("case", "request_", "status", "kind"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_answer_problem_json_and_publish_nothing(world, case, request_, status, kind):
    assert_problem(post(world, **request_), status, kind)
    assert world.producer.produced == []


@pytest.mark.parametrize("amount", [" 125.50 ", "125.50 ", ".5", "5.", "+5", "007.00", "1e3", "1,50", "12 5"])
def test_an_amount_not_in_the_canonical_form_is_refused(world, amount):
    problem = assert_problem(post(world, {**sample_body("emea"), "amount": amount}), 422, "payment-invalid")
    assert (problem["reason_code"], problem["field"]) == ("invalid_amount", "amount")
    assert world.producer.produced == []


@pytest.mark.parametrize("amount", ["125.50", "0.5", "5", "125.500"])
def test_canonical_amounts_are_accepted(world, amount):
    assert post(world, {**sample_body("emea"), "amount": amount}).status_code == 202


@pytest.mark.parametrize(("field", "text"), [("remittance_information", "Invoice\u0085 42"),
                                             ("remittance_information", "line\nbreak"),
                                             ("end_to_end_id", "E2E\x00"), ("debtor.name", "Muller\u2028GmbH"),
                                             ("creditor.name", "Tab\there")])
def test_control_characters_in_free_text_are_refused(world, field, text):
    body = json.loads(json.dumps(sample_body("emea")))
    target = body
    *path, name = field.split(".")
    for part in path:
        target = target[part]
    target[name] = text
    problem = assert_problem(post(world, body), 422, "validation-error")
    assert problem["errors"][0]["field"] == field
    assert world.producer.produced == []


def test_problems_carry_their_details(world):
    schema = assert_problem(post(world, {**sample_body("emea"), "amount": 125.5}), 422, "validation-error")
    assert schema["errors"] == [{"field": "amount", "message": "Input should be a valid string", "type": "string_type"}]
    rule = assert_problem(post(world, {**sample_body("emea"), "amount": "0"}), 422, "payment-invalid")
    assert (rule["reason_code"], rule["field"]) == ("amount_not_positive", "amount")
    metrics = world.client.get("/metrics", headers=world.auth()).text
    assert 'payorch_intake_problems_total{type="validation-error"} 1.0' in metrics


def test_other_methods_on_the_payments_path_answer_405(world):
    for method in ("GET", "PUT", "DELETE"):
        answer = world.client.request(method, "/v1/payments", headers=world.auth())
        assert answer.status_code == 405
        assert answer.json()["type"].endswith("/method-not-allowed")
        assert answer.headers["allow"] == "POST"


def test_an_unconfirmed_publish_answers_503_and_a_retry_with_the_key_goes_through(world):
    world.producer.answers.append(refused())
    body = sample_body("emea")
    failed = post(world, body, key="k-1")
    problem = assert_problem(failed, 503, "broker-unavailable")
    retried = post(world, body, key="k-1")
    assert retried.status_code == 202
    assert problem["payment_ids"] == [retried.json()["payment_id"]]
    assert "idempotent-replayed" not in retried.headers


def test_a_broker_that_never_answers_gives_503_within_the_publish_timeout(world):
    world.producer.silent = True
    assert_problem(post(world, sample_body("emea"), key="k-1"), 503, "broker-unavailable")


def test_an_unexpected_error_answers_500_problem_json(world, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(world.producer, "produce", explode)
    answer = post(world, sample_body("emea"), key="k-1")
    assert_problem(answer, 500, "internal-error")
    assert "boom" not in answer.text


def post_scope(body: bytes, auth: dict[str, str]) -> dict:
    """The ASGI scope of a POST /v1/payments, for tests that drive the body by hand."""
    return {"type": "http", "method": "POST", "path": "/v1/payments", "raw_path": b"/v1/payments",
            "root_path": "", "query_string": b"", "scheme": "http", "http_version": "1.1",
            "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5555),
            "headers": [(b"host", b"127.0.0.1:8080"), (b"x-tenant-id", b"emea"),
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *((name.lower().encode(), value.encode()) for name, value in auth.items())]}


def test_a_client_that_leaves_mid_body_is_not_an_internal_error(world, caplog):
    body = json.dumps(sample_body("emea")).encode()
    messages = [{"type": "http.request", "body": body[:40], "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = post_scope(body, world.auth())

    async def call():
        await world.app(scope, receive, send)

    world.client.portal.call(call)
    assert sent[0]["status"] == 400
    assert b"client-disconnected" in sent[1]["body"]
    assert world.producer.produced == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    metrics = world.client.get("/metrics", headers=world.auth()).text
    assert 'payorch_intake_problems_total{type="client-disconnected"} 1.0' in metrics
    assert 'type="internal-error"' not in metrics


def test_a_body_that_does_not_arrive_in_time_is_refused_408(tmp_path):
    world = World(tmp_path, intake={"body_read_timeout_s": 0.2})
    body = json.dumps(sample_body("emea")).encode()
    sent = []

    messages = [{"type": "http.request", "body": body[:40], "more_body": True}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(30)  # the rest never comes
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = post_scope(body, world.auth())
    with TestClient(world.app, base_url="http://127.0.0.1:8080") as client:
        started = time.monotonic()
        client.portal.call(world.app, scope, receive, send)
        assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408
    assert b"request-timeout" in sent[1]["body"]
    assert world.producer.produced == []


def test_health_answers_head(world):
    assert world.client.head("/healthz").status_code == 200


def test_accepted_payments_count_in_the_metrics(world):
    post(world, sample_body("emea"))
    post(world, sample_body("emea"))
    metrics = world.client.get("/metrics", headers=world.auth()).text
    assert 'payorch_intake_payments_received_total{channel="json",tenant="emea"} 2.0' in metrics
    assert "payorch_intake_publish_seconds_count 2.0" in metrics


def overload(world: World, *, in_flight: int = 0, latency_p90_s: float | None = None) -> None:
    """Tracking's flow-health reading, as the tracking stage would write it."""
    import time

    from orchestrator.stages.tracking import TrackingStore

    store = TrackingStore(world.settings.data_dir / "tracking.sqlite")
    store.db.execute("INSERT OR REPLACE INTO flow_health VALUES (1,?,?,?,?)", (in_flight, latency_p90_s, 0.0, time.time()))
    store.close()


def test_an_overloaded_flow_is_refused_503_with_retry_after_and_nothing_published(world, monkeypatch):
    import orchestrator.intake.admission as admission

    monkeypatch.setattr(admission, "_READING_CACHE_S", 0.0)
    before = sample_body("emea", 1)
    accepted = post(world, before, key="before-overload")
    assert accepted.status_code == 202
    tightest_s = min(rail.time_limit_s for rail in TENANTS["emea"].rails)
    overload(world, latency_p90_s=0.6 * tightest_s)  # past half of the tightest rail's time limit
    answer = post(world, sample_body("emea", 2), key="during-overload")
    problem = assert_problem(answer, 503, "overloaded")
    assert 1 <= int(answer.headers["retry-after"]) <= 30 and "p90" in problem["detail"]
    assert len(world.producer.produced) == 1, "a refused payment is never published"
    # A retry of a payment accepted before is answered from the store, shedding or not.
    again = post(world, before, key="before-overload")
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    metrics = world.client.get("/metrics", headers=world.auth()).text
    assert 'payorch_intake_payments_shed_total{tenant="emea"} 1.0' in metrics


def test_too_many_payments_in_flight_are_refused_until_the_flow_drains(world, monkeypatch):
    import orchestrator.intake.admission as admission

    monkeypatch.setattr(admission, "_READING_CACHE_S", 0.0)
    overload(world, in_flight=world.settings.intake.admission_max_in_flight)
    body = sample_body("emea", 3)
    assert_problem(post(world, body, key="k-full"), 503, "overloaded")
    overload(world, in_flight=0)
    assert post(world, body, key="k-full").status_code == 202  # the same key is safe to send again


def test_the_openapi_document_describes_bodies_headers_security_and_problems(world):
    spec = world.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["apiKey"]["description"]}
    assert spec["security"] == [{"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    post_ = spec["paths"]["/v1/payments"]["post"]
    assert post_["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CreditTransfer"}
    assert {p["name"] for p in post_["parameters"]} == {"Idempotency-Key", "X-Tenant-Id"}
    assert {"202", "400", "401", "403", "408", "413", "415", "422", "503"} <= set(post_["responses"])
    assert set(post_["responses"]["422"]["content"]) == {PROBLEM}
    transfer = spec["components"]["schemas"]["CreditTransfer"]
    assert {"amount", "currency", "debtor", "creditor"} <= set(transfer["required"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    # Every reference resolves.
    text = json.dumps(spec)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in spec["components"]["schemas"], ref
    # Every problem kind the intake can send is named in the document.
    kinds = spec["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert "https://payorch.dev/problems/unauthenticated" in kinds


def test_a_key_over_its_submission_rate_gets_429_and_other_keys_do_not(tmp_path):
    from orchestrator.intake.rate_limit import SubmissionRateLimit

    world = World(tmp_path, intake={"submit_rate_per_credential_per_s": 0.01, "submit_burst_per_credential": 2})
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        body = sample_body("emea")
        assert post(world, body, key="r-1").status_code == 202
        assert post(world, body, key="r-1").status_code == 202  # a replay is not a new payment
        assert post(world, sample_body("emea"), key="r-2").status_code == 202
        refused = post(world, sample_body("emea"), key="r-3")
        assert_problem(refused, 429, "rate-limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert len(world.producer.produced) == 2
        assert post(world, sample_body("na"), tenant="na").status_code == 202  # another key, its own bucket
        metrics = client.get("/metrics", headers=world.auth()).text
        assert 'payorch_intake_payments_rate_limited_total{tenant="emea"} 1.0' in metrics
    # The bucket refills at its rate and never holds more than the burst.
    limit = SubmissionRateLimit(rate_per_s=10, burst=5)
    assert limit.take("k", 5, now=0.0) is None
    assert limit.take("k", 1, now=0.0) == 1
    assert limit.take("k", 1, now=0.1) is None
    assert limit.take("k", 5, now=100.0) is None and limit.take("k", 1, now=100.0) == 1
    assert limit.take("k", 50, now=200.0) is None  # a document larger than the burst, once the bucket is full


def _pacs008(amount: str = "125.50") -> bytes:
    import uuid as _uuid
    from datetime import UTC, datetime

    from adapters.iso20022.pacs008 import build_pacs008
    from orchestrator.intake.models import CreditTransferIn
    from orchestrator.validation import normalise_payment

    body = {**sample_body("emea"), "amount": amount}
    payment = normalise_payment(CreditTransferIn.model_validate(body).to_payment(
        "6d1b0f9e-2c4a-4b8e-9f3d-7a5c1e0b2d44", "emea"))
    # Created now: the interbank settlement date follows the creation date, and a past one is refused.
    return build_pacs008([payment], TENANTS["emea"].rails_by_name["sepa_inst"], message_id="MSG-LAYOUT-1",
                         created_at=datetime.now(UTC))


def post_xml(world: World, document: bytes, key: str):
    return world.client.post("/v1/payments/iso20022", content=document,
                             headers={**world.auth("emea"), "Content-Type": "application/xml", "Idempotency-Key": key})


def test_an_iso_document_serialised_anew_is_the_same_request(world):
    from lxml import etree

    document = _pacs008()
    first = post_xml(world, document, "k-xml")
    assert first.status_code == 202, first.text
    root = etree.fromstring(document)
    namespace = etree.QName(root).namespace
    prefixed = etree.tostring(root).replace(f'xmlns="{namespace}"'.encode(), f'xmlns:p="{namespace}"'.encode())
    prefixed = re.sub(rb"<(/?)([A-Za-z])", rb"<\1p:\2", prefixed)
    layouts = [etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8"),
               b"<!-- sent again by the client's retry job -->\n" + etree.tostring(root),
               etree.tostring(root, encoding="UTF-16"),
               prefixed]
    for layout in layouts:
        assert etree.QName(etree.fromstring(layout)).namespace == namespace  # the same document ...
        again = post_xml(world, layout, "k-xml")
        assert again.status_code == 202, again.text  # ... recognised, not refused as another body
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(world.producer.produced) == 1
    # Another amount is another request, however it is laid out.
    assert_problem(post_xml(world, etree.tostring(etree.fromstring(_pacs008("125.51")), pretty_print=True),
                            "k-xml"), 422, "idempotency-key-reused", instance="/v1/payments/iso20022")


def test_an_iso_answer_stored_under_the_raw_document_digest_is_still_recognised(world):
    # Answers stored before canonical digests identified a document by its raw bytes.
    from orchestrator.intake.app import body_digest

    document = _pacs008()
    first = post_xml(world, document, "k-raw")
    assert first.status_code == 202, first.text
    db = sqlite3.connect(world.settings.data_dir / "intake.sqlite")
    db.execute("UPDATE idempotency_keys SET body_sha256=? WHERE idempotency_key='k-raw'", (body_digest(document, "xml"),))
    db.commit()
    db.close()
    again = post_xml(world, document, "k-raw")
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(world.producer.produced) == 1


def test_the_openapi_document_describes_the_status_webhook(world):
    """OpenAPI 3.1 `webhooks`: the status webhook's headers and body, which a real payload meets."""
    import jsonschema

    from orchestrator.stages.notifications import webhook_payload
    from tests.unit.stage_fixtures import follow, received

    spec = world.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    hook = spec["webhooks"]["paymentStatus"]["post"]
    assert [p["name"] for p in hook["parameters"]] == ["webhook-id", "webhook-timestamp", "webhook-signature"]
    schema = {**spec["components"]["schemas"]["PaymentStatusWebhook"], "components": spec["components"]}
    failed = follow(received("emea"), "PaymentFailed", "execution", {
        "reason_code": "creditor_account_unknown", "iso_reason_code": "AC03", "reason_detail": "unknown account",
        "rail": "sepa_inst"})
    jsonschema.validate(json.loads(json.dumps(webhook_payload(failed, "FAILED"))), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "payment.routed", "timestamp": "x", "data": {}}, schema)
