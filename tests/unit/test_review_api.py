"""GET /v1/reviews and POST /v1/payments/{id}/review through the intake app, reading a
real tracking store, publishing to a fake producer (no broker)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from orchestrator.events import EventCodec
from orchestrator.intake.app import create_app
from orchestrator.intake.credentials import SCOPE_READ, CredentialStore, bearer, ensure_local_keys, read_local_keys
from orchestrator.intake.publisher import EventPublisher
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.stages.routing import RoutingStage
from orchestrator.stages.tracking import TrackingStore
from orchestrator.topics import TopicNamer
from tests.openapi_check import assert_answer_matches
from tests.unit.intake_fakes import FakeProducer
from tests.unit.stage_fixtures import ALLOW, TENANTS, at
from tests.unit.test_intake_api import assert_problem
from tests.unit.test_review_routing import POSSIBLE_MATCH, submit
from tests.unit.test_review_tracking import from_wire, held_journey

CODEC = EventCodec(REPO_ROOT / "schemas")


class World:
    def __init__(self, tmp_path, intake: dict | None = None) -> None:
        self.settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"},
                                 intake={"publish_timeout_s": 0.2, **(intake or {})})
        self.routing = RoutingStage(TENANTS, "test", tmp_path, CODEC)
        self.tracking = TrackingStore(tmp_path / "tracking.sqlite", codec=CODEC)
        self.producer = FakeProducer()
        publisher = EventPublisher(self.producer, CODEC, TopicNamer(self.settings.topic_template))
        self.app = create_app(self.settings, TENANTS, publisher=publisher)
        ensure_local_keys(tmp_path, sorted(TENANTS))
        self.keys = read_local_keys(tmp_path)

    def hold(self, tenant: str = "emea", **kwargs):
        journey = held_journey(self.routing, tenant, **kwargs)
        self.tracking.record(from_wire(journey))
        return journey

    def track(self, events) -> None:
        self.tracking.record(from_wire(events))

    def published(self) -> list:
        return [CODEC.decode(p.value) for p in self.producer.produced]


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        yield world
    world.routing.close()
    world.tracking.close()


def review(world: World, payment_id: str, body, *, reviewer: str | None = "alice", tenant: str = "emea",
           headers: dict | None = None):
    sent = {"Content-Type": "application/json", **bearer(world.keys[tenant])}
    if reviewer is not None:
        sent["X-Reviewer"] = reviewer
    sent.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return world.client.post(f"/v1/payments/{payment_id}/review", content=content, headers=sent)


def reviews(world: World, query: str = "", tenant: str = "emea"):
    return world.client.get(f"/v1/reviews{query}", headers=bearer(world.keys[tenant]))


APPROVE = {"decision": "approve", "comment": "invoice seen, payer called back"}


def test_the_queue_lists_held_payments_oldest_first_with_the_hit_and_a_next_page(world):
    late = world.hold(seconds=30)
    early = world.hold(sanctions=POSSIBLE_MATCH, fraud=ALLOW, seconds=10)
    world.hold("na")
    answer = reviews(world)
    assert answer.status_code == 200, answer.text
    document = world.client.get("/openapi.json").json()
    assert_answer_matches(document, "/v1/reviews", answer)
    body = answer.json()
    assert body["tenant_id"] == "emea" and "next" not in body["links"]
    assert [r["payment_id"] for r in body["reviews"]] == [early[0].payment_id, late[0].payment_id]
    first = body["reviews"][0]
    assert first["reason"] == {"code": "sanctions_possible_match", "iso_code": "RR04",
                               "detail": early[-1].payload["reason_detail"]}
    assert first["sanctions"]["matched_list"] == "SAMPLE-EU-CFSP" and first["sanctions"]["best_score"] == 88.0
    assert first["sanctions"]["matched_entry_id"] == "EU-2001"
    assert first["held_at"] == at(10).isoformat() and first["expires_at"] == at(10 + 86_400).isoformat()
    assert first["review"] == {"state": "awaiting_review", "maker": None, "maker_approved_at": None,
                               "requires_checker": True}
    assert first["amount"] == "125.50" and first["currency"] == "EUR"
    assert first["links"]["review"] == f"/v1/payments/{early[0].payment_id}/review"
    assert body["reviews"][1]["fraud"] == {"outcome": "REVIEW", "score": 50, "rules_triggered": ["amount_above_review"]}
    assert_answer_matches(document, "/v1/reviews", reviews(world, "?limit=1"))
    held = world.client.get(f"/v1/payments/{early[0].payment_id}", headers=bearer(world.keys["emea"]))
    assert held.json()["status"] == "HELD"
    assert_answer_matches(document, "/v1/payments/{payment_id}", held)
    page = reviews(world, "?limit=1").json()
    assert [r["payment_id"] for r in page["reviews"]] == [early[0].payment_id]
    following = world.client.get(page["links"]["next"], headers=bearer(world.keys["emea"])).json()
    assert [r["payment_id"] for r in following["reviews"]] == [late[0].payment_id]
    assert "next" not in following["links"]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=201", "?limit=many", "?after=not-a-cursor", "?after="])
def test_bad_queue_parameters_answer_problem_json(world, query):
    assert_problem(reviews(world, query), 422, "validation-error", "/v1/reviews")


def test_reviewing_needs_the_review_scope(world):
    store = CredentialStore(world.settings.data_dir / "credentials.sqlite")
    reader, _ = store.create("emea", (SCOPE_READ,))
    store.close()
    assert_problem(world.client.get("/v1/reviews", headers=bearer(reader)), 403, "forbidden", "/v1/reviews")
    journey = world.hold()
    path = f"/v1/payments/{journey[0].payment_id}/review"
    answer = world.client.post(path, json=APPROVE, headers={**bearer(reader), "X-Reviewer": "alice"})
    assert_problem(answer, 403, "forbidden", path)
    assert world.producer.produced == []


def test_a_decision_is_published_for_routing_and_answered_202(world):
    journey = world.hold()
    payment_id = journey[0].payment_id
    answer = review(world, payment_id, APPROVE)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    [event] = world.published()
    assert body == {"payment_id": payment_id, "status": "HELD",
                    "review": {"event_id": event.event_id, "decision": "approve", "reviewer": "alice",
                               "submitted_at": event.occurred_at.isoformat(), "state": "submitted"},
                    "detail": body["detail"], "links": {"self": f"/v1/payments/{payment_id}", "reviews": "/v1/reviews"}}
    assert answer.headers["location"] == f"/v1/payments/{payment_id}"
    assert world.producer.produced[0].topic == "emea.payments.reviews.v1"
    assert world.producer.produced[0].key == payment_id.encode()
    assert (event.event_type, event.stage, event.causation_id, event.correlation_id) == (
        "ReviewSubmitted", "intake", journey[-1].event_id, payment_id)
    assert event.payload == {"decision": "approve", "reviewer": "alice", "comment": APPROVE["comment"],
                             "credential_id": world.keys["emea"].split("_")[1]}
    assert event.payment == journey[1].payment  # the payment as initiation left it


BAD_DECISIONS = [
    ("no comment", {"decision": "approve"}),
    ("empty comment", {"decision": "approve", "comment": "   "}),
    ("comment too long", {"decision": "approve", "comment": "x" * 501}),
    ("control character", {"decision": "reject", "comment": "line one\nline two"}),
    ("line separator", {"decision": "reject", "comment": "one\u2028two"}),
    ("unknown decision", {"decision": "maybe", "comment": "hmm"}),
    ("decision not a string", {"decision": True, "comment": "hmm"}),
    ("unknown member", {**APPROVE, "reviewer": "someone else"}),
    ("not an object", ["approve"]),
]


@pytest.mark.parametrize(("case", "body"), BAD_DECISIONS, ids=[c[0] for c in BAD_DECISIONS])
def test_a_decision_that_breaks_the_schema_is_refused_422(world, case, body):
    journey = world.hold()
    path = f"/v1/payments/{journey[0].payment_id}/review"
    assert_problem(review(world, journey[0].payment_id, body), 422, "validation-error", path)
    assert world.producer.produced == []


@pytest.mark.parametrize(("case", "reviewer"), [("missing", None), ("blank", "  "), ("too long", "a" * 65),
                                                ("not ASCII", "jos\u00e9"), ("control", "al\tice")])
def test_the_reviewer_must_be_named_in_the_header(world, case, reviewer):
    journey = world.hold()
    path = f"/v1/payments/{journey[0].payment_id}/review"
    headers = {}
    if reviewer is not None and not reviewer.isascii():
        # Sent as UTF-8 bytes, as a client that does not know better sends them.
        headers, reviewer = {"X-Reviewer": reviewer.encode()}, None
    answer = review(world, journey[0].payment_id, APPROVE, reviewer=reviewer, headers=headers)
    assert_problem(answer, 400, "invalid-reviewer", path)


@pytest.mark.parametrize(("case", "content", "headers", "status", "kind"), [
    ("malformed json", b'{"decision": ', {}, 400, "malformed-json"),
    ("duplicate member", b'{"decision": "reject", "decision": "approve", "comment": "x"}', {}, 400,
     "duplicate-json-key"),
    ("wrong media type", b"decision=approve", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported-media-type"),
    ("oversize body", b'{"comment": "' + b"x" * 5_000 + b'"}', {}, 413, "payload-too-large"),
])
def test_bad_request_bodies_answer_problem_json(world, case, content, headers, status, kind):
    journey = world.hold()
    path = f"/v1/payments/{journey[0].payment_id}/review"
    assert_problem(review(world, journey[0].payment_id, content, headers=headers), status, kind, path)


def test_an_unknown_or_another_tenants_payment_is_404_and_one_not_held_409(world):
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_problem(review(world, unknown, APPROVE), 404, "payment-not-found", f"/v1/payments/{unknown}/review")
    theirs = world.hold("na")[0].payment_id
    assert_problem(review(world, theirs, APPROVE), 404, "payment-not-found", f"/v1/payments/{theirs}/review")
    journey = world.hold()
    outputs = world.routing.handle_batch([submit(journey[-1], "reject", "bob", "payer denies it")], at(1))
    world.track(outputs)
    path = f"/v1/payments/{journey[0].payment_id}/review"
    problem = assert_problem(review(world, journey[0].payment_id, APPROVE), 409, "payment-not-held", path)
    assert problem["payment_status"] == "REJECTED"
    assert world.producer.produced == []


def test_the_maker_confirming_is_refused_409_but_may_reject(world):
    journey = world.hold()
    payment_id = journey[0].payment_id
    maker = submit(journey[-1], "approve", "alice")
    world.track([maker, *world.routing.handle_batch([maker], at(1))])
    listed = reviews(world).json()["reviews"][0]["review"]
    assert (listed["state"], listed["maker"]) == ("awaiting_checker", "alice")
    problem = assert_problem(review(world, payment_id, APPROVE, reviewer="ALICE"), 409, "same-reviewer",
                             f"/v1/payments/{payment_id}/review")
    assert problem["maker"] == "alice"
    assert world.producer.produced == []
    assert review(world, payment_id, {"decision": "reject", "comment": "wrong payee"}, reviewer="alice"
                  ).status_code == 202
    assert review(world, payment_id, APPROVE, reviewer="bob").status_code == 202
    assert [e.payload["reviewer"] for e in world.published()] == ["alice", "bob"]


@pytest.fixture
def jwt_world(tmp_path):
    from tests.unit.test_jwt_bearer import AUDIENCE, ISSUER, RSA_KEY, public_jwk, write_jwks

    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, public_jwk(RSA_KEY, "rsa-1", alg="RS256"))
    (tmp_path / "data").mkdir()
    world = World(tmp_path / "data", intake={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                                     "jwks_file": str(jwks)}})
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        yield world
    world.routing.close()
    world.tracking.close()


def test_with_a_token_the_reviewer_is_its_subject(jwt_world):
    from tests.unit.test_jwt_bearer import token

    def as_subject(subject: str, payment_id: str, body: dict, headers: dict | None = None):
        bearer_token = token(sub=subject, scope="payments:review")
        return jwt_world.client.post(f"/v1/payments/{payment_id}/review", json=body,
                                     headers={"Authorization": f"Bearer {bearer_token}", **(headers or {})})

    journey = jwt_world.hold()
    payment_id = journey[0].payment_id
    path = f"/v1/payments/{payment_id}/review"
    # The token names the reviewer: a header naming someone else is refused.
    assert_problem(as_subject("alice.ops", payment_id, APPROVE, {"X-Reviewer": "bob"}), 400, "invalid-reviewer", path)
    answer = as_subject("alice.ops", payment_id, APPROVE)
    assert answer.status_code == 202, answer.text
    [event] = jwt_world.published()
    assert (event.payload["reviewer"], event.payload["credential_id"]) == ("alice.ops", "jwt:alice.ops")
    jwt_world.track([event, *jwt_world.routing.handle_batch([event], at(1))])
    # The same subject cannot confirm, whatever header it sends; another subject can.
    assert_problem(as_subject("alice.ops", payment_id, APPROVE, {"X-Reviewer": "Alice.Ops"}), 409, "same-reviewer",
                   path)
    assert as_subject("bob.ops", payment_id, APPROVE, {"X-Reviewer": "bob.ops"}).status_code == 202
