"""The REST intake: credit transfers in, durable `PaymentReceived` events out.

The intake validates synchronously what a client must fix (shape, amount, currency,
account formats, the tenant's limits) and answers problem+json; everything that needs
state or other systems (duplicates, screening, funds, clearing) happens in the stages
and shows up in the payment's status.

Idempotency: with an `Idempotency-Key`, the payment id is derived from the tenant, the
caller's client and the key, so even a retry that reaches us after a crash (before the
answer was stored) publishes the same payment again, which every stage recognises. The
idempotency store arbitrates a key between concurrent requests and intake replicas, and
detects a key reused with another body (422); see `orchestrator/intake/idempotency.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from orchestrator.domain import MoneyError, Payment
from orchestrator.events import EventCodec, deterministic_uuid4, received_event, review_submitted_event
from orchestrator.flow_health import FlowHealth
from orchestrator.intake.admission import AdmissionGate
from orchestrator.intake.asgi import IntakeApp
from orchestrator.intake.credentials import (
    SCOPE_OPERATE,
    SCOPE_READ,
    SCOPE_REVIEW,
    SCOPE_SUBMIT,
    Credential,
    CredentialStoreUnavailable,
    open_credential_store,
)
from orchestrator.intake.idempotency import AcceptedAnswer, IdempotencyStoreUnavailable, open_idempotency_store
from orchestrator.intake.jwt_bearer import JwtRejected, JwtVerifier, looks_like_jwt
from orchestrator.intake.models import CreditTransferIn, ReviewIn
from orchestrator.intake.openapi import install as install_openapi
from orchestrator.intake.problems import JsonResponse, Problem
from orchestrator.intake.publisher import EventPublisher, PublishError
from orchestrator.intake.rate_limit import SubmissionRateLimit
from orchestrator.intake.reviews import (
    REVIEWS_CURSOR_MAX_CHARS,
    REVIEWS_PAGE_DEFAULT,
    REVIEWS_PAGE_MAX,
    decode_cursor,
    encode_cursor,
    review_item,
)
from orchestrator.kafka_clients import make_producer
from orchestrator.reviews import reviewer_problem, same_reviewer
from orchestrator.settings import Settings
from orchestrator.stages.tracking import TrackingStore
from orchestrator.tenants import TenantConfig
from orchestrator.topics import TopicNamer
from orchestrator.validation import normalise_payment, validate_payment

log = logging.getLogger("payorch.intake")

_IDEMPOTENCY_KEY_MAX_CHARS = 255
# A claim whose holder neither answered nor gave up within the publish timeout and this
# margin is taken to be a crashed holder's (see IdempotencyStore.claim).
_CLAIM_MARGIN_S = 5.0
_STORE_RETRY_AFTER_S = 2
# A review decision is a word and a comment of at most 500 characters (up to 4 bytes each
# in UTF-8, escaped in JSON at most 6): this holds any valid one.
_REVIEW_BODY_MAX_BYTES = 4_096
_BEARER_CHALLENGE = 'Bearer realm="payorch"'
# Readiness asks the broker for metadata at most this often, so probes cannot load it.
_READINESS_CACHE_S = 1.0


class BreakerCollector:
    """Every rail's circuit breaker, as the execution stage last saved it, read at scrape time."""

    def __init__(self, execution_store: Path) -> None:
        self.execution_store = execution_store

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from orchestrator.circuit_breaker import STATE_VALUES
        from orchestrator.stages.execution import read_breaker_states

        state = GaugeMetricFamily("payorch_circuit_breaker_state",
                                  "Rail circuit breaker: 0 closed, 1 half-open, 2 open", labels=["tenant", "rail", "state"])
        trips = GaugeMetricFamily("payorch_circuit_breaker_trips", "Times the breaker opened since execution started",
                                  labels=["tenant", "rail"])
        failure_rate = GaugeMetricFamily("payorch_circuit_breaker_failure_rate",
                                         "Failed share of the calls in the breaker's window", labels=["tenant", "rail"])
        for row in read_breaker_states(self.execution_store):
            labels = [row["tenant_id"], row["rail"]]
            state.add_metric([*labels, row["state"]], STATE_VALUES.get(row["state"], -1))
            trips.add_metric(labels, row["trips"])
            failure_rate.add_metric(labels, row["failure_rate"])
        return [state, trips, failure_rate]


class Metrics:
    def __init__(self, execution_store: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        if execution_store is not None:
            self.registry.register(BreakerCollector(execution_store))
        self.received = Counter("payorch_intake_payments_received_total", "Payments accepted (202)",
                                ["tenant", "channel"], registry=self.registry)
        self.problems = Counter("payorch_intake_problems_total", "Problem answers by type",
                                ["type"], registry=self.registry)
        self.idempotent_replays = Counter("payorch_intake_idempotent_replays_total",
                                          "Requests answered from the idempotency store", ["tenant"],
                                          registry=self.registry)
        self.shed = Counter("payorch_intake_payments_shed_total",
                            "Payments refused with 503 by admission control", ["tenant"], registry=self.registry)
        self.rate_limited = Counter("payorch_intake_payments_rate_limited_total",
                                    "Payments refused with 429: their API key was over its rate", ["tenant"],
                                    registry=self.registry)
        self.publish_seconds = Histogram("payorch_intake_publish_seconds", "Time until the broker acknowledged",
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                         registry=self.registry)


def body_digest(body: bytes, content_type: str) -> str:
    return hashlib.sha256(content_type.encode() + b"\0" + body).hexdigest()


def json_digest(document: dict) -> str:
    """The digest of a JSON body's content, whatever its layout: member order,
    whitespace and escapes do not change it, so a client that serialises its retry anew
    is recognised as the same request. (Values are compared as parsed: amounts are
    strings, so "125.5" and "125.50" stay different requests.)"""
    return body_digest(orjson.dumps(document, option=orjson.OPT_SORT_KEYS), "json-canonical")


def _no_duplicate_members(pairs: list[tuple[str, object]]) -> dict:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise Problem("duplicate-json-key", f"the member {duplicate[:64]!r} appears twice in one object; "
                      "send each member once")
    return dict(pairs)


def refuse_duplicate_members(body: bytes) -> None:
    """A JSON object that names a member twice is refused: parsers disagree on which one
    wins (ours took the last), so the payment a client meant is not certain. The body
    has already parsed as JSON, so only duplicates can fail here."""
    json.loads(body, object_pairs_hook=_no_duplicate_members)


def payment_id_for(tenant_id: str, client_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    return deterministic_uuid4(f"idempotency/{tenant_id}/{client_id}/{idempotency_key}")


def create_app(settings: Settings, tenants: dict[str, TenantConfig], *, publisher: EventPublisher | None = None) -> FastAPI:
    metrics = Metrics(settings.data_dir / "execution.sqlite")
    namer = TopicNamer(settings.topic_template)
    state: dict = {"ready_checked_at": 0.0, "ready": False}
    key_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The producer gives up on a message when the intake gives up waiting, so an
        # unconfirmed payment is not delivered long after its 503.
        producer = make_producer(settings, "payorch-intake", overrides={
            "delivery.timeout.ms": int(settings.intake.publish_timeout_s * 1000)})
        # Every payment is new here and none is read back, so the codec keeps no payment bytes.
        codec = EventCodec(settings.schemas_dir, keep_payments=False)
        state["publisher"] = publisher or EventPublisher(producer, codec, namer)
        state["idempotency"] = open_idempotency_store(settings)
        state["credentials"] = open_credential_store(settings)
        state["jwt"] = JwtVerifier(settings.intake.jwt, tenants) if settings.intake.jwt is not None else None
        state["tracking"] = None
        state["admission"] = AdmissionGate(settings.intake, flow_health)
        state["rate_limit"] = SubmissionRateLimit(settings.intake.submit_rate_per_credential_per_s,
                                                  settings.intake.submit_burst_per_credential)
        yield
        state["publisher"].close()
        state["idempotency"].close()
        state["credentials"].close()

    app = IntakeApp(title="payorch intake", version="1", lifespan=lifespan, default_response_class=JsonResponse,
                    allowed_hosts=settings.intake.allowed_hosts)

    async def idempotency(method: str, *args, **kwargs):
        """A call of the idempotency store: on the loop for a local file, on a worker thread
        for a network store; an unreachable store refuses the request, accepting nothing."""
        store = state["idempotency"]
        call = getattr(store, method)
        try:
            if store.blocking_io:
                return await asyncio.to_thread(call, *args, **kwargs)
            return call(*args, **kwargs)
        except IdempotencyStoreUnavailable as exc:
            log.error("idempotency store unavailable: %s", exc)
            raise Problem("store-unavailable", "the intake cannot reach its idempotency store; nothing was "
                          f"accepted, send again after {_STORE_RETRY_AFTER_S} s",
                          headers={"Retry-After": str(_STORE_RETRY_AFTER_S)}) from None

    def tracking() -> TrackingStore | None:
        if state["tracking"] is None:
            path = settings.data_dir / "tracking.sqlite"
            if not path.exists():
                return None
            try:
                state["tracking"] = TrackingStore(path, read_only=True)
            except Exception:  # the tracking stage has not created its tables yet
                return None
        return state["tracking"]

    def flow_health() -> FlowHealth | None:
        store = tracking()
        return store.flow_health() if store is not None else None

    def problem_response(problem: Problem, request: Request) -> Response:
        metrics.problems.labels(problem.kind).inc()
        return problem.response(instance=str(request.url.path))

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return problem_response(Problem("validation-error", "request parameters are invalid",
                                        errors=_errors(exc.errors())), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "internal-error")
        # A 405 carries the methods the path takes (`Allow`, RFC 9110 15.5.6).
        return problem_response(Problem(kind, str(exc.detail), headers=dict(exc.headers or {})), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return problem_response(Problem("internal-error", "an unexpected error occurred; it has been logged"), request)

    def credential_of(request: Request, scope: str) -> Credential:
        """The caller's credential, if it is live and has `scope`: 401 or 403 otherwise."""
        header = request.headers.get("authorization")
        if not header:
            raise Problem("unauthenticated", "send an API key: Authorization: Bearer <key>",
                          headers={"WWW-Authenticate": _BEARER_CHALLENGE})
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Problem("unauthenticated", "the Authorization header must read: Bearer <key>",
                          headers={"WWW-Authenticate": _BEARER_CHALLENGE + ', error="invalid_request"'})
        key = key.strip()
        if state["jwt"] is not None and looks_like_jwt(key):
            try:
                credential = state["jwt"].verify(key)
            except JwtRejected as rejected:
                raise Problem("unauthenticated", f"the bearer token is not valid: {rejected}",
                              headers={"WWW-Authenticate": _BEARER_CHALLENGE + ', error="invalid_token"'}) from None
        else:
            try:
                credential = state["credentials"].verify(key)
            except CredentialStoreUnavailable as exc:
                log.error("credential store unavailable: %s", exc)
                raise Problem("store-unavailable", "the intake cannot read its credential store; send again "
                              f"after {_STORE_RETRY_AFTER_S} s", headers={"Retry-After": str(_STORE_RETRY_AFTER_S)}
                              ) from None
            if credential is None:
                raise Problem("unauthenticated", "the API key is not valid (unknown, mistyped or revoked)",
                              headers={"WWW-Authenticate": _BEARER_CHALLENGE + ', error="invalid_token"'})
        if scope not in credential.scopes:
            raise Problem("forbidden", f"credential {credential.key_id} does not have the {scope} scope")
        request.state.credential = credential
        return credential

    def tenant_of(request: Request, scope: str) -> TenantConfig:
        """The tenant of the caller's credential: a request acts only within it."""
        credential = credential_of(request, scope)
        named = request.headers.get("x-tenant-id")
        if named is not None and named.strip().lower() != credential.tenant_id:
            raise Problem("forbidden", f"credential {credential.key_id} belongs to tenant {credential.tenant_id}, "
                          f"not {named.strip()[:32]!r}")
        tenant = tenants.get(credential.tenant_id)
        if tenant is None:
            raise Problem("unknown-tenant", f"tenant {credential.tenant_id!r} of credential {credential.key_id} "
                          "is not configured here")
        return tenant

    def idempotency_key_of(request: Request) -> str | None:
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        # Whitespace around a field value is not part of it (RFC 9110 5.5): "k" and "k "
        # are one key, or a client's retry would pay twice.
        key = key.strip(" \t")
        if not key or len(key) > _IDEMPOTENCY_KEY_MAX_CHARS or not key.isprintable():
            raise Problem("invalid-idempotency-key",
                          f"Idempotency-Key must be 1..{_IDEMPOTENCY_KEY_MAX_CHARS} printable characters")
        return key

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise Problem("payload-too-large", f"the body exceeds {limit} bytes")
        chunks, size = [], 0
        timeout_s = settings.intake.body_read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise Problem("payload-too-large", f"the body exceeds {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Problem("request-timeout", f"the body did not arrive within {timeout_s:g} s ({size} bytes came)",
                          headers={"Connection": "close"}) from None
        except ClientDisconnect:
            # The client went away mid-body: nothing was accepted and nobody reads the
            # answer. Counted as its own kind, not logged as an internal error.
            raise Problem("client-disconnected", f"the client closed the connection after {size} bytes") from None
        return b"".join(chunks)

    async def read_json_body(request: Request, limit: int, model, *, media_hint: str, schema_hint: str):
        """(body bytes, parsed object, the validated `model`) of a JSON request: its media
        type, size and read time, well-formed JSON, an object, no duplicate members, the schema."""
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", ""):
            raise Problem("unsupported-media-type", media_hint)
        body = await read_body(request, limit)
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem("malformed-json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise Problem("validation-error", "the body must be a JSON object", errors=[])
        refuse_duplicate_members(body)
        try:
            return body, raw, model.model_validate(raw)
        except ValidationError as exc:
            raise Problem("validation-error", schema_hint, errors=_errors(exc.errors())) from None

    async def accept(tenant: TenantConfig, key: str | None, digest: str, build, *, credential: Credential,
                     earlier_digest: str | None = None) -> Response:
        """Shared idempotent acceptance: build payments, publish, remember the answer.

        `digest` identifies the request's content; an answer stored under the key
        with `earlier_digest` (how an earlier version identified the same content) is the
        same request too. Keys are the credential's client's (see idempotency.py).
        """
        digests = (digest, earlier_digest) if earlier_digest is not None else (digest,)
        if key is None:
            return await _accept_locked(tenant, key, digests, build, credential)
        # Requests with the same key in this process wait for each other, so the second
        # gets the first's answer instead of a 409; the store arbitrates between processes.
        lock_key = (tenant.tenant_id, credential.client_id, key)
        lock = key_locks.setdefault(lock_key, asyncio.Lock())
        try:
            async with lock:
                return await _accept_locked(tenant, key, digests, build, credential)
        finally:
            if not lock.locked() and key_locks.get(lock_key) is lock:
                del key_locks[lock_key]

    async def _accept_locked(tenant: TenantConfig, key: str | None, digests: tuple[str, ...],
                             build, credential: Credential) -> Response:
        claim_token = None
        if key is not None:
            outcome = await idempotency(
                "claim", tenant.tenant_id, credential.client_id, key, digests, now_s=time.time(),
                stale_after_s=settings.intake.publish_timeout_s + _CLAIM_MARGIN_S)
            if outcome.kind == "reused":
                raise Problem("idempotency-key-reused",
                              "this Idempotency-Key was already used with a different body")
            if outcome.kind == "answered":
                metrics.idempotent_replays.labels(tenant.tenant_id).inc()
                return JsonResponse(outcome.response, status_code=outcome.status_code,
                                    headers={"Idempotent-Replayed": "true"})
            if outcome.kind == "in-progress":
                raise Problem("request-in-progress", "a request with this Idempotency-Key and the same body is "
                              f"being processed; send it again after {outcome.retry_after_s} s to get its answer",
                              headers={"Retry-After": str(outcome.retry_after_s)})
            claim_token = outcome.claim_token
        try:
            return await _accept_claimed(tenant, key, digests[0], build, credential, claim_token)
        except BaseException:
            if claim_token is not None:
                # Refused, or the broker's answer is unknown: nothing was answered under the
                # key, so the same body may come again at once (and another body may not).
                # If this fails too, the claim goes stale on its own.
                try:
                    await idempotency("abandon", tenant.tenant_id, credential.client_id, key, claim_token)
                except Problem:
                    pass
            raise

    async def _accept_claimed(tenant: TenantConfig, key: str | None, digest: str, build, credential: Credential,
                              claim_token: str | None) -> Response:
        caller = credential.key_id
        payments, channel, response_of = build()
        # After the replay lookup (a known key gets its answer even while shedding) and
        # before anything is published: a refused payment never exists.
        shed = state["admission"].check(tenant, len(payments))
        if shed is not None:
            metrics.shed.labels(tenant.tenant_id).inc(len(payments))
            log.warning("admission control refused %d payments: %s", len(payments), shed.reason,
                        extra={"tenant_id": tenant.tenant_id})
            raise Problem("overloaded", f"{shed.reason}; nothing was accepted, send again after "
                          f"{shed.retry_after_s} s (the same Idempotency-Key is safe)",
                          headers={"Retry-After": str(shed.retry_after_s)})
        # Last of the refusals, so a payment shed for the flow's sake does not use up its
        # key's rate as well.
        wait_s = state["rate_limit"].take(caller, len(payments), time.monotonic())
        if wait_s is not None:
            metrics.rate_limited.labels(tenant.tenant_id).inc(len(payments))
            raise Problem("rate-limited", f"credential {caller} is over its rate of "
                          f"{settings.intake.submit_rate_per_credential_per_s:g} payments/s; nothing was accepted, "
                          f"send again after {wait_s} s", headers={"Retry-After": str(wait_s)})
        now = datetime.now(UTC)
        events = [received_event(p, channel=channel, idempotency_key=key, occurred_at=now, region=settings.region)
                  for p in payments]
        started = time.perf_counter()
        try:
            positions = await state["publisher"].publish(events, "received", settings.intake.publish_timeout_s)
        except PublishError as exc:
            # Unconfirmed is not refused: the broker may still have written the event, so
            # the payment may go on. The ids let the client look it up, and a retry with
            # the same Idempotency-Key maps to the same payment, so it can never pay twice.
            log.error("publish not confirmed: %s", exc, extra={"tenant_id": tenant.tenant_id})
            raise Problem("broker-unavailable",
                          "the payment was not confirmed by the broker in time and may or may not go ahead; "
                          "retry with the same Idempotency-Key, or look it up by payment id",
                          payment_ids=[p.payment_id for p in payments]) from None
        metrics.publish_seconds.observe(time.perf_counter() - started)
        response = response_of(payments)
        try:
            await state["idempotency"].remember(AcceptedAnswer(
                tenant.tenant_id, key, digest, 202, response,
                [(p, now.isoformat(), e.event_id) for p, e in zip(payments, events)],
                client_id=credential.client_id, claim_token=claim_token))
        except IdempotencyStoreUnavailable as exc:
            # The broker has the payments: a retry with the same key and body publishes the
            # same payments again, which every stage recognises.
            log.error("answer not stored: %s", exc, extra={"tenant_id": tenant.tenant_id})
            raise Problem("store-unavailable",
                          "the payment was published but its answer could not be stored; retry with the same "
                          "Idempotency-Key", headers={"Retry-After": str(_STORE_RETRY_AFTER_S)},
                          payment_ids=[p.payment_id for p in payments]) from None
        state["admission"].accepted(len(payments))
        for event, (partition, offset) in zip(events, positions, strict=True):
            metrics.received.labels(tenant.tenant_id, channel).inc()
            # Where the broker says it stored the event: the first thing to check if a
            # payment is ever reported lost (see ARCHITECTURE, known gaps).
            log.info("payment received", extra={**event.log_context(), "partition": partition, "offset": offset,
                                                "credential": caller})
        return JsonResponse(response, status_code=202, headers={"Location": response.get("links", {}).get("self", "")})

    async def post_payment(request: Request) -> Response:
        try:
            return await accept_json_payment(request)
        except Problem as problem:
            # Answered here, not by the exception handler: as a direct route, this
            # endpoint runs outside FastAPI's exception middleware.
            return problem_response(problem, request)

    async def accept_json_payment(request: Request) -> Response:
        tenant = tenant_of(request, SCOPE_SUBMIT)
        key = idempotency_key_of(request)
        body, raw, transfer = await read_json_body(
            request, settings.intake.max_json_body_bytes, CreditTransferIn,
            media_hint="send the payment as application/json (ISO 20022 documents go to /v1/payments/iso20022)",
            schema_hint="the payment does not match the credit transfer schema")

        def build():
            payment_id = payment_id_for(tenant.tenant_id, request.state.credential.client_id, key)
            try:
                payment = transfer.to_payment(payment_id, tenant.tenant_id)
            except MoneyError as exc:
                raise Problem("payment-invalid", exc.detail, reason_code=exc.reason_code, field="amount") from None
            payment = normalise_payment(payment)
            problems = validate_payment(payment, tenant, today=date.today())
            if problems:
                first = problems[0]
                raise Problem("payment-invalid", first.detail, reason_code=first.reason_code.value,
                              field=first.field,
                              errors=[{"reason_code": p.reason_code.value, "field": p.field, "detail": p.detail}
                                      for p in problems])
            return [payment], "json", lambda ps: _accepted_body(ps[0])

        return await accept(tenant, key, json_digest(raw), build, credential=request.state.credential,
                            earlier_digest=body_digest(body, "json"))

    # The hot path: every payment comes this way (see IntakeApp).
    app.add_api_route("/v1/payments", post_payment, methods=["POST"], status_code=202)
    app.add_direct_route("POST", "/v1/payments", post_payment)

    @app.post("/v1/payments/iso20022", status_code=202)
    async def post_iso20022(request: Request):
        from orchestrator.intake.iso import build_iso_payments, canonical_document

        tenant = tenant_of(request, SCOPE_SUBMIT)
        key = idempotency_key_of(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/xml", "text/xml"):
            raise Problem("unsupported-media-type", "send the ISO 20022 document as application/xml")
        body = await read_body(request, settings.intake.max_xml_body_bytes)

        def build():
            payments = build_iso_payments(body, tenant, settings.intake.max_transactions_per_document,
                                          settings.intake.max_xml_body_bytes)
            return payments, payments[0].source_format, _accepted_document_body

        # The same document however it is serialised (see canonical_document); answers
        # stored before this identified a document by its raw bytes.
        canonical = canonical_document(body, settings.intake.max_xml_body_bytes) if key is not None else None
        digest = body_digest(canonical, "xml-c14n2") if canonical is not None else body_digest(body, "xml")
        return await accept(tenant, key, digest, build, credential=request.state.credential,
                            earlier_digest=body_digest(body, "xml"))

    @app.get("/v1/payments/{payment_id}")
    async def get_payment(payment_id: str, request: Request):
        tenant = tenant_of(request, SCOPE_READ)
        if len(payment_id) > 64:
            raise Problem("payment-not-found", "no such payment")
        store = tracking()
        try:
            record = store.get(payment_id) if store else None
        except sqlite3.OperationalError:
            record = None  # the tracking stage has not created its tables yet
        if record is None:
            accepted = await idempotency("accepted", payment_id)
            if accepted is not None:
                record = {"payment_id": payment_id, "tenant_id": accepted["tenant_id"], "status": "RECEIVED",
                          "reason": None, "end_to_end_id": accepted["end_to_end_id"],
                          "timeline": [{"stage": "intake", "event_type": "PaymentReceived",
                                        "occurred_at": accepted["received_at"], "event_id": accepted["event_id"],
                                        "correlation_id": payment_id}],
                          "exceptions": []}
        # Another tenant's payment is indistinguishable from a missing one.
        if record is None or record["tenant_id"] != tenant.tenant_id:
            raise Problem("payment-not-found", f"no payment {payment_id} for tenant {tenant.tenant_id}")
        record["links"] = {"self": f"/v1/payments/{payment_id}"}
        return record

    # -- the review queue (tracking's read model; routing decides) ------------------------

    @app.get("/v1/reviews")
    async def list_reviews(request: Request,
                           limit: int = Query(default=REVIEWS_PAGE_DEFAULT, ge=1, le=REVIEWS_PAGE_MAX),
                           after: str | None = Query(default=None, min_length=1, max_length=REVIEWS_CURSOR_MAX_CHARS)):
        """The tenant's HELD payments, oldest hold first, a page at a time."""
        tenant = tenant_of(request, SCOPE_REVIEW)
        cursor = decode_cursor(after) if after is not None else None
        store = tracking()
        try:
            held = store.held_for_review(tenant.tenant_id, limit=limit + 1, after=cursor) if store else []
        except sqlite3.OperationalError:
            held = []  # the tracking stage has not created its tables yet
        page = held[:limit]
        links = {"self": f"/v1/reviews?limit={limit}" + (f"&after={after}" if after is not None else "")}
        if len(held) > limit:
            links["next"] = f"/v1/reviews?limit={limit}&after={encode_cursor(page[-1])}"
        return {"tenant_id": tenant.tenant_id, "reviews": [review_item(h, tenant) for h in page], "links": links}

    @app.post("/v1/payments/{payment_id}/review", status_code=202)
    async def review_payment(payment_id: str, request: Request):
        """A reviewer's decision on a held payment, published for routing to apply."""
        tenant = tenant_of(request, SCOPE_REVIEW)
        credential: Credential = request.state.credential
        named = request.headers.get("x-reviewer")
        if credential.subject is not None:
            # A token from the bank's identity provider names who calls: that is the
            # reviewer, and a header cannot name someone else.
            if named is not None and not same_reviewer(named.strip(), credential.subject):
                raise Problem("invalid-reviewer", "the bearer token names the reviewer (its subject); leave "
                              "X-Reviewer out or name the same")
            reviewer = credential.subject
        else:
            # An API key names a system, not a person: the person deciding is named in
            # the header, and the key's id is recorded beside the name.
            problem = reviewer_problem(named)
            if problem is not None:
                raise Problem("invalid-reviewer", problem)
            reviewer = named.strip()
        *_, decision = await read_json_body(request, _REVIEW_BODY_MAX_BYTES, ReviewIn,
                                            media_hint="send the decision as application/json",
                                            schema_hint="the decision does not match the review schema")
        store = tracking()
        try:
            seen = store.status_of(payment_id) if store and len(payment_id) <= 64 else None
        except sqlite3.OperationalError:
            seen = None  # the tracking stage has not created its tables yet
        try:
            held = store.held_review(payment_id) if seen is not None and seen[1] == "HELD" else None
            snapshot = store.snapshot(payment_id) if held is not None else None
        except sqlite3.OperationalError:
            held = snapshot = None  # a tracking stage of a release before the review queue
        if seen is None and len(payment_id) <= 64:
            accepted = await idempotency("accepted", payment_id)
            if accepted is not None:
                seen = (accepted["tenant_id"], "RECEIVED")
        # Another tenant's payment is indistinguishable from a missing one.
        if seen is None or seen[0] != tenant.tenant_id:
            raise Problem("payment-not-found", f"no payment {payment_id[:64]} for tenant {tenant.tenant_id}")
        if seen[1] != "HELD" or held is None or snapshot is None:
            raise Problem("payment-not-held", f"payment {payment_id} is {seen[1]}; only a HELD payment is reviewed",
                          payment_status=seen[1])
        if decision.decision == "approve" and same_reviewer(held["maker"], reviewer):
            raise Problem("same-reviewer", f"{reviewer} approved this payment first; another reviewer must confirm "
                          "it", maker=held["maker"])
        event = review_submitted_event(
            snapshot[0], hold_event_id=held["hold_event_id"], decision=decision.decision, reviewer=reviewer,
            comment=decision.comment, credential_id=credential.key_id, occurred_at=datetime.now(UTC),
            region=settings.region)
        try:
            await state["publisher"].publish([event], "reviews", settings.intake.publish_timeout_s)
        except PublishError as exc:
            log.error("review not confirmed: %s", exc, extra=event.log_context())
            raise Problem("broker-unavailable", "the decision was not confirmed by the broker in time and may or "
                          "may not be applied; look at the payment's timeline before sending it again",
                          payment_ids=[payment_id]) from None
        # Who decided what, never the comment: it is free text and may hold anything.
        log.info("review submitted", extra={**event.log_context(), "decision": decision.decision,
                                            "reviewer": reviewer, "credential": credential.key_id})
        answer = {
            "payment_id": payment_id,
            "status": "HELD",
            "review": {"event_id": event.event_id, "decision": decision.decision, "reviewer": reviewer,
                       "submitted_at": event.occurred_at.isoformat(), "state": "submitted"},
            "detail": "the decision was submitted; routing applies it shortly, and the payment's timeline shows "
                      "what it did (PaymentReviewed)",
            "links": {"self": f"/v1/payments/{payment_id}", "reviews": "/v1/reviews"},
        }
        return JsonResponse(answer, status_code=202, headers={"Location": f"/v1/payments/{payment_id}"})

    @app.get("/v1/payments/{payment_id}/notification")
    async def payment_notification(payment_id: str, request: Request, party: str = "debtor"):
        """A camt.054 debit (debtor side) or credit (creditor side) notification of a
        settled payment, for the tenant's account-holding systems and analytics."""
        from adapters.iso20022.camt054 import Camt054Entry, build_camt054

        tenant = tenant_of(request, SCOPE_READ)
        if party not in ("debtor", "creditor"):
            raise Problem("validation-error", "party must be debtor or creditor", errors=[])
        store = tracking()
        try:
            snapshot = store.snapshot(payment_id) if store and len(payment_id) <= 64 else None
        except sqlite3.OperationalError:
            snapshot = None
        if snapshot is None or snapshot[0].tenant_id != tenant.tenant_id:
            raise Problem("payment-not-found", f"no payment {payment_id[:64]} for tenant {tenant.tenant_id}")
        payment, rail_name, settled_at = snapshot
        if settled_at is None:
            raise Problem("payment-not-settled", "a notification exists only once the payment has settled")
        rail = tenant.rails_by_name.get(rail_name or "")
        holder = payment.debtor if party == "debtor" else payment.creditor
        booked_at = datetime.fromisoformat(settled_at)
        document = build_camt054(
            [Camt054Entry(payment=payment, credit_debit="DBIT" if party == "debtor" else "CRDT",
                          booked_at=booked_at, rail=rail)],
            message_id=("N" + payment_id.replace("-", ""))[:35], created_at=datetime.now(UTC),
            account=holder.account, account_owner=holder.name, currency=payment.currency,
            account_servicer=holder.agent, bank_code_scheme=rail.bank_code_scheme if rail else None)
        return Response(document, media_type="application/xml")

    # -- settlement cycles (closed ones, as tracking recorded their CycleClosed) ----------

    def closed_cycle(tenant: TenantConfig, cycle_id: str) -> dict:
        store = tracking()
        try:
            cycle = store.cycle(tenant.tenant_id, cycle_id) if store and len(cycle_id) <= 64 else None
        except sqlite3.OperationalError:
            cycle = None  # the tracking stage has not created its tables yet
        # Another tenant's cycle is indistinguishable from a missing one.
        if cycle is None:
            raise Problem("cycle-not-found", f"no closed cycle {cycle_id[:64]} for tenant {tenant.tenant_id}")
        return cycle

    @app.get("/v1/settlement/cycles")
    async def settlement_cycles(request: Request, rail: str | None = Query(default=None, max_length=32),
                                limit: int = Query(default=100, ge=1, le=1_000)):
        tenant = tenant_of(request, SCOPE_READ)
        store = tracking()
        try:
            cycles = store.cycles(tenant.tenant_id, rail=rail, limit=limit) if store else []
        except sqlite3.OperationalError:
            cycles = []
        for cycle in cycles:
            cycle["links"] = _cycle_links(cycle["cycle_id"])
        return {"tenant_id": tenant.tenant_id, "cycles": cycles}

    @app.get("/v1/settlement/cycles/{cycle_id}")
    async def settlement_cycle(cycle_id: str, request: Request):
        cycle = closed_cycle(tenant_of(request, SCOPE_READ), cycle_id)
        cycle["links"] = _cycle_links(cycle["cycle_id"])
        return cycle

    @app.get("/v1/settlement/cycles/{cycle_id}/statement")
    async def settlement_statement(cycle_id: str, request: Request):
        """The cycle's camt.053, exactly as settlement stored it (checked against the
        sha256 its CycleClosed event carried)."""
        from orchestrator.stages.settlement import statement_path

        tenant = tenant_of(request, SCOPE_READ)
        cycle = closed_cycle(tenant, cycle_id)
        path = statement_path(settings.data_dir, tenant.tenant_id, cycle["cycle_id"])
        try:
            document = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.error("statement of a closed cycle is unreadable: %r", exc,
                      extra={"tenant_id": tenant.tenant_id, "cycle_id": cycle["cycle_id"]})
            raise Problem("internal-error", "the cycle's statement is not available on this host") from None
        if hashlib.sha256(document).hexdigest() != cycle["statement_sha256"]:
            log.error("statement does not match the digest of its cycle close",
                      extra={"tenant_id": tenant.tenant_id, "cycle_id": cycle["cycle_id"]})
            raise Problem("internal-error", "the cycle's stored statement does not match its recorded digest")
        return Response(document, media_type="application/xml",
                        headers={"ETag": f'"{cycle["statement_sha256"]}"'})

    @app.get("/v1/ledger/summary")
    async def ledger_summary(request: Request):
        tenant = tenant_of(request, SCOPE_OPERATE)
        # Off the event loop: with DynamoDB this is a network scan, not a local file read.
        summary = await asyncio.to_thread(_ledger_summary, settings, tenant.tenant_id)
        return {"tenant_id": tenant.tenant_id, **summary}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        now = time.monotonic()
        if now - state["ready_checked_at"] > _READINESS_CACHE_S:
            state["ready"] = await asyncio.to_thread(_broker_answers, state["publisher"])
            state["ready_checked_at"] = now
        if not state["ready"]:
            return JsonResponse({"status": "unavailable", "broker": "unreachable"}, status_code=503)
        return {"status": "ready", "broker": "reachable"}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request):
        credential_of(request, SCOPE_OPERATE)  # process-wide figures: operators only
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Probes answer HEAD too (load balancers use it); one operation each in the document.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
    install_openapi(app)

    return app


def _ledger_summary(settings: Settings, tenant_id: str) -> dict:
    """The tenant's ledger totals, read through the ledger's storage port (either backend)."""
    from orchestrator.ledger_store import LedgerStoreMissing, open_ledger_store

    empty = {"currencies": [], "transfers": {}}
    try:
        store = open_ledger_store(settings, read_only=True)
    except LedgerStoreMissing:
        return empty  # the ledger has not written anything yet
    try:
        return store.summary(tenant_id)
    except sqlite3.OperationalError:
        return empty  # the file exists but the ledger has not created its tables yet
    finally:
        store.close()


def _broker_answers(publisher: EventPublisher) -> bool:
    try:
        publisher.producer.list_topics(timeout=1.0)
        return True
    except Exception:
        return False


def _cycle_links(cycle_id: str) -> dict:
    return {"self": f"/v1/settlement/cycles/{cycle_id}", "statement": f"/v1/settlement/cycles/{cycle_id}/statement"}


def _accepted_body(payment: Payment) -> dict:
    return {
        "payment_id": payment.payment_id,
        "status": "RECEIVED",
        "correlation_id": payment.payment_id,
        "end_to_end_id": payment.end_to_end_id,
        "links": {"self": f"/v1/payments/{payment.payment_id}"},
    }


def _accepted_document_body(payments: list[Payment]) -> dict:
    return {
        "payment_ids": [p.payment_id for p in payments],
        "status": "RECEIVED",
        "payments": [_accepted_body(p) for p in payments],
        "links": {"self": f"/v1/payments/{payments[0].payment_id}"},
    }


def _errors(errors) -> list[dict]:
    """Pydantic errors without the offending input values (they may hold account data)."""
    return [{"field": ".".join(str(part) for part in e.get("loc", ()) if part != "body"),
             "message": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
