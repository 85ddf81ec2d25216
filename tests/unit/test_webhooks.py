"""Webhooks without a broker: Standard Webhooks signatures, secrets, the retry schedule,
the SSRF rule, tenant configuration, the notifications stage's decisions and outbox, and
the delivery worker against a real HTTP receiver on loopback."""

from __future__ import annotations

import base64
import http.server
import json
import random
import threading
from concurrent.futures import wait
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.webhook_delivery import WebhookDeliveryWorker, pinned_request_target
from orchestrator.settings import NotificationSettings
from orchestrator.stages.notifications import NotificationsStage, deliveries_for, webhook_payload
from orchestrator.tenants import NotificationsConfig, TenantConfigError, WebhookEndpointConfig, load_tenant_file
from orchestrator.webhook_outbox import OUTBOX_FILE, WebhookOutbox
from orchestrator.webhooks import (
    WebhookSecretError,
    WebhookVerificationError,
    backoff_delay_s,
    new_secret,
    parse_secret,
    parse_secrets,
    refused_address,
    sign,
    signature,
    verify,
)
from tests.unit.stage_fixtures import TENANTS, follow, received

# The Standard Webhooks reference test vector (the spec's reference libraries' tests,
# e.g. standard-webhooks/libraries python/tests): this secret, id, timestamp and payload
# sign to this signature.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# -- signatures and secrets --------------------------------------------------------------


def test_the_signature_is_the_standard_webhooks_reference_vector():
    key = parse_secret(VECTOR_SECRET)
    assert signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = sign((key,), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
                       "webhook-signature": VECTOR_SIGNATURE}
    assert verify((key,), headers, VECTOR_BODY, now_s=VECTOR_TIMESTAMP + 10) == VECTOR_ID


def test_during_a_rotation_both_secrets_sign_and_either_verifies():
    new, old = new_secret(), new_secret()
    keys = parse_secrets(f"{new} {old}")
    headers = sign(keys, "evt-1", 1_000, b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    assert verify((parse_secret(old),), headers, b"{}", now_s=1_000) == "evt-1"
    assert verify((parse_secret(new),), headers, b"{}", now_s=1_000) == "evt-1"


@pytest.mark.parametrize("change", ["body", "key", "timestamp", "id"])
def test_a_changed_message_or_a_stale_timestamp_does_not_verify(change):
    key = parse_secret(new_secret())
    headers = sign((key,), "evt-1", 1_000, b'{"a":1}')
    body, keys, now = b'{"a":1}', (key,), 1_000.0
    if change == "body":
        body = b'{"a":2}'
    elif change == "key":
        keys = (parse_secret(new_secret()),)
    elif change == "timestamp":
        now = 1_000 + 301
    else:
        headers = {**headers, "webhook-id": "evt-2"}
    with pytest.raises(WebhookVerificationError):
        verify(keys, headers, body, now_s=now)


@pytest.mark.parametrize("text", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_" +
                                  base64.b64encode(b"short").decode(), ""])
def test_a_malformed_secret_is_refused(text):
    with pytest.raises(WebhookSecretError):
        parse_secrets(text)


def test_new_secrets_are_random_whsec_secrets():
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_") and len(parse_secret(first)) == 32


# -- the retry schedule --------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_without_jitter():
    delays = [backoff_delay_s(n, base_s=1.0, max_s=60.0, jitter=0.0) for n in range(1, 10)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_jitter_stays_within_its_fraction():
    rng = random.Random(7)
    delays = [backoff_delay_s(3, base_s=1.0, max_s=60.0, jitter=0.2, rng=rng) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert len(set(delays)) > 100, "jitter spreads the retries"


def test_default_settings_retry_for_three_days():
    settings = NotificationSettings()
    total, n = 0.0, 0
    while n < settings.max_attempts and total < settings.max_age_s:
        n += 1
        total += backoff_delay_s(n, base_s=settings.backoff_base_s, max_s=settings.backoff_max_s, jitter=0)
    assert total >= settings.max_age_s, "the age limit, not the attempt limit, ends a delivery at the defaults"


# -- the SSRF rule -------------------------------------------------------------------------


@pytest.mark.parametrize("address, refused", [
    ("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("172.16.0.9", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("169.254.170.2", True), ("fd00:ec2::254", True), ("fe80::1", True),
    ("0.0.0.0", True), ("224.0.0.1", True), ("::ffff:127.0.0.1", True), ("100.64.0.1", False),
    ("93.184.215.14", False), ("2606:4700::6810:84e5", False),
])
def test_internal_addresses_are_refused(address, refused):
    assert (refused_address(address) is not None) == refused


def test_a_name_resolving_to_an_internal_address_is_refused_and_the_request_pinned():
    from adapters.webhook_delivery import DeliveryRefused

    with pytest.raises(DeliveryRefused, match="169.254.169.254"):
        pinned_request_target("https://hooks.example.com/x", allow_private=False,
                              resolver=lambda host, port: ["93.184.215.14", "169.254.169.254"])
    target, host, server_name = pinned_request_target(
        "https://hooks.example.com:8443/in?x=1", allow_private=False, resolver=lambda host, port: ["93.184.215.14"])
    assert (target, host, server_name) == ("https://93.184.215.14:8443/in?x=1", "hooks.example.com:8443",
                                           "hooks.example.com")
    target, _, _ = pinned_request_target("http://localhost:9/", allow_private=True, resolver=lambda h, p: ["::1"])
    assert target == "http://[::1]:9/"


# -- tenant configuration ------------------------------------------------------------------


def _tenant_file(tmp_path: Path, notifications: dict) -> Path:
    import yaml

    from orchestrator.settings import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "tenants" / "emea.yaml").read_text())
    config["notifications"] = notifications
    path = tmp_path / "emea.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


ENDPOINT = {"name": "core", "url": "https://hooks.example.com/payorch", "secret_env": "PAYORCH_WEBHOOK_SECRET"}


@pytest.mark.parametrize("endpoint, message", [
    ({**ENDPOINT, "url": "ftp://hooks.example.com/"}, "http:// or https://"),
    ({**ENDPOINT, "url": "https://user:pw@hooks.example.com/"}, "no user or password"),
    ({**ENDPOINT, "url": "http://127.0.0.1:9000/"}, "loopback"),
    ({**ENDPOINT, "url": "http://169.254.169.254/latest"}, "metadata"),
    ({**ENDPOINT, "url": "http://localhost:9000/"}, "loopback name"),
    ({**ENDPOINT, "secret_file": "/run/secret"}, "exactly one of secret_env and secret_file"),
    ({k: v for k, v in ENDPOINT.items() if k != "secret_env"}, "exactly one of secret_env and secret_file"),
    ({**ENDPOINT, "statuses": ["ROUTED"]}, "statuses"),
    ({**ENDPOINT, "secret": "whsec_abc"}, "unknown key"),
])
def test_a_bad_endpoint_is_refused_with_its_reason(tmp_path, endpoint, message):
    with pytest.raises(TenantConfigError, match=message):
        load_tenant_file(_tenant_file(tmp_path, {"endpoints": [endpoint]}))


def test_a_loopback_receiver_needs_the_tenant_to_allow_private_addresses(tmp_path):
    config = load_tenant_file(_tenant_file(tmp_path, {"allow_private_addresses": True, "endpoints": [
        {**ENDPOINT, "url": "http://127.0.0.1:9000/hooks", "statuses": ["SETTLED"]}]}))
    assert config.notifications.endpoints[0].statuses == ("SETTLED",)


# -- the stage's decisions -------------------------------------------------------------------


def _tenants_with(endpoints, *, allow_private=False, tenant="emea"):
    config = TENANTS[tenant].model_copy(update={"notifications": NotificationsConfig(
        endpoints=tuple(WebhookEndpointConfig(**e) for e in endpoints), allow_private_addresses=allow_private)})
    return {**TENANTS, tenant: config}


HELD = {"reason_code": "fraud_review_required", "reason_detail": "fraud score 60 (amount); awaiting review"}
REJECTED = {"reason_code": "review_rejected", "iso_reason_code": "AG01", "reason_detail": "refused by a reviewer",
            "field": None}


def test_the_payload_carries_the_status_the_exact_amount_and_no_account_data():
    payment = received("emea", amount="1234.56")
    held = follow(payment, "PaymentHeld", "routing", HELD, 1.0)
    body = webhook_payload(held, "HELD")
    assert body["type"] == "payment.held" and body["timestamp"] == held.occurred_at.isoformat()
    data = body["data"]
    assert data["status"] == "HELD" and data["event_id"] == held.event_id and data["payment_id"] == held.payment_id
    assert data["amount"] == "1234.56" and Decimal(data["amount"]) == Decimal("1234.56")
    assert data["reason"]["code"] == "fraud_review_required"
    text = json.dumps(body)
    for account in (payment.payment.debtor.account, payment.payment.creditor.account):
        for value in (account.iban, account.number):
            assert value is None or value not in text


def test_each_status_is_queued_once_and_nothing_after_a_terminal_one():
    tenants = _tenants_with([ENDPOINT])
    payment = received("emea")
    held = follow(payment, "PaymentHeld", "routing", HELD, 1)
    rejected = follow(held, "PaymentRejected", "routing", REJECTED, 2)
    status, queued = deliveries_for(held, tenants["emea"], None)
    assert status == "HELD" and [d.webhook_id for d in queued] == [held.event_id]
    assert deliveries_for(held, tenants["emea"], "HELD") == (None, [])  # redelivered
    status, queued = deliveries_for(rejected, tenants["emea"], "HELD")
    assert status == "REJECTED" and queued[0].delivery_id == f"{rejected.event_id}.core"
    settled = follow(rejected, "PaymentSettled", "settlement", {"rail": "sepa_inst"}, 3)
    assert deliveries_for(settled, tenants["emea"], "REJECTED") == (None, [])


def test_an_endpoint_gets_only_the_statuses_it_lists():
    tenants = _tenants_with([{**ENDPOINT, "statuses": ["SETTLED"]},
                             {**ENDPOINT, "name": "risk", "statuses": ["HELD", "REJECTED"]}])
    held = follow(received("emea"), "PaymentHeld", "routing", HELD, 1)
    status, queued = deliveries_for(held, tenants["emea"], None)
    assert status == "HELD" and [d.endpoint for d in queued] == ["risk"]


def test_the_stage_queues_once_despite_redelivery(tmp_path):
    tenants = _tenants_with([ENDPOINT])
    stage = NotificationsStage(tenants, "test", tmp_path)
    payment = received("emea")
    held = follow(payment, "PaymentHeld", "routing", HELD, 1)
    rejected = follow(held, "PaymentRejected", "routing", REJECTED, 2)
    other = follow(received("emea", 1), "PaymentSettled", "settlement", {"rail": "sepa_inst"}, 3)
    try:
        for _ in range(3):  # Kafka redelivers the batch after a crash, twice
            assert stage.handle_batch([held, rejected, other], held.occurred_at) == []
        rows = stage.outbox.deliveries(limit=10)
        assert sorted((r["payment_id"], r["status"]) for r in rows) == sorted(
            [(held.payment_id, "HELD"), (held.payment_id, "REJECTED"), (other.payment_id, "SETTLED")])
        assert {r["state"] for r in rows} == {"pending"}
    finally:
        stage.close()


# -- the delivery worker, against a real receiver on loopback ---------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers from a script of status codes (then
    200) and verifies every signature it gets."""

    def __init__(self, keys, script=(), clock=None):
        import time

        self.keys = keys
        self.clock = clock or time.time
        self.script = list(script)
        self.got: list[tuple[str, dict]] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.headers.append(headers)
                code = receiver.script.pop(0) if receiver.script else 200
                if code == 200:
                    webhook_id = verify(receiver.keys, headers, body, now_s=receiver.clock())
                    receiver.got.append((webhook_id, json.loads(body)))
                self.send_response(code)
                if code in (301, 302):
                    self.send_header("location", "http://127.0.0.1:9/elsewhere")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def secret():
    return new_secret()


def _worker(tmp_path, tenants, secret, clock, **settings):
    return WebhookDeliveryWorker(tmp_path / OUTBOX_FILE, tenants, NotificationSettings(
        backoff_jitter=0, **settings), environ={"PAYORCH_WEBHOOK_SECRET": secret}, clock=clock)


def _queue_one(tmp_path, tenants, now_s):
    stage = NotificationsStage(tenants, "test", tmp_path)
    settled = follow(received("emea"), "PaymentSettled", "settlement", {"rail": "sepa_inst"}, 3)
    stage.handle_batch([settled], settled.occurred_at)
    stage.outbox.db.execute("UPDATE deliveries SET next_attempt_at=?, queued_at=?, round_started_at=?",
                            (now_s, now_s, now_s))
    stage.close()
    return settled


def _round(worker):
    wait(worker.dispatch_due(), timeout=30)


def test_a_failed_delivery_is_retried_after_its_backoff_and_delivered_once(tmp_path, secret):
    clock = Clock()
    receiver = Receiver((parse_secret(secret),), script=[503, 500], clock=clock)
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url}], allow_private=True)
    settled = _queue_one(tmp_path, tenants, clock.now)
    worker = _worker(tmp_path, tenants, secret, clock, backoff_base_s=10, backoff_max_s=100)
    try:
        _round(worker)  # 503
        _round(worker)  # not due yet: nothing is sent
        assert len(receiver.headers) == 1
        clock.now += 10
        _round(worker)  # 500
        clock.now += 19
        _round(worker)  # not due: the second wait is 20 s
        assert len(receiver.headers) == 2
        clock.now += 1
        _round(worker)  # 200
        clock.now += 1_000
        _round(worker)  # delivered: never again
        assert [webhook_id for webhook_id, _ in receiver.got] == [settled.event_id]
        assert receiver.got[0][1]["data"]["status"] == "SETTLED"
        assert {h["webhook-id"] for h in receiver.headers} == {settled.event_id}, "the same id on every attempt"
        delivery = worker.outbox.deliveries()[0]
        assert delivery["state"] == "delivered" and delivery["attempts"] == 3
        attempts = worker.outbox.attempts(delivery["delivery_id"])
        assert [a["status_code"] for a in attempts] == [503, 500, 200]
        assert [a["error"] for a in attempts] == ["HTTP 503", "HTTP 500", None]
        assert all(a["latency_ms"] >= 0 for a in attempts)
    finally:
        worker.stop()
        receiver.close()


def test_a_receiver_that_is_down_is_retried_until_it_comes_up(tmp_path, secret):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tenants = _tenants_with([{**ENDPOINT, "url": f"http://127.0.0.1:{port}/hooks"}], allow_private=True)
    clock = Clock()
    _queue_one(tmp_path, tenants, clock.now)
    worker = _worker(tmp_path, tenants, secret, clock, backoff_base_s=1, backoff_max_s=1)
    try:
        _round(worker)
        delivery = worker.outbox.deliveries()[0]
        assert delivery["state"] == "pending" and "ConnectError" in delivery["last_error"]
        assert delivery["next_attempt_at"] == clock.now + 1
    finally:
        worker.stop()


def test_a_delivery_out_of_attempts_is_dead_and_redeliverable(tmp_path, secret):
    clock = Clock()
    receiver = Receiver((parse_secret(secret),), script=[500, 500, 302], clock=clock)
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url}], allow_private=True)
    _queue_one(tmp_path, tenants, clock.now)
    worker = _worker(tmp_path, tenants, secret, clock, backoff_base_s=1, backoff_max_s=1, max_attempts=3)
    try:
        for _ in range(4):
            _round(worker)
            clock.now += 1
        delivery = worker.outbox.deliveries()[0]
        assert delivery["state"] == "dead" and delivery["attempts"] == 3
        assert "redirect" in worker.outbox.attempts(delivery["delivery_id"])[-1]["error"], "a redirect is not followed"
        assert receiver.got == []
        assert worker.outbox.redeliver(delivery["delivery_id"], clock.now) == "dead"
        _round(worker)
        assert worker.outbox.deliveries()[0]["state"] == "delivered" and len(receiver.got) == 1
    finally:
        worker.stop()
        receiver.close()


def test_a_loopback_receiver_is_refused_unless_the_tenant_allows_it(tmp_path, secret):
    receiver = Receiver((parse_secret(secret),))
    # The file's check sees no literal address here: the name is resolved at delivery.
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url.replace("127.0.0.1", "loopback.test")}])
    clock = Clock()
    _queue_one(tmp_path, tenants, clock.now)
    worker = WebhookDeliveryWorker(tmp_path / OUTBOX_FILE, tenants, NotificationSettings(backoff_jitter=0),
                                   environ={"PAYORCH_WEBHOOK_SECRET": secret}, clock=clock,
                                   resolver=lambda host, port: ["127.0.0.1"])
    try:
        _round(worker)
        delivery = worker.outbox.deliveries()[0]
        assert delivery["state"] == "pending" and "a loopback address" in delivery["last_error"]
        assert receiver.headers == [], "nothing was sent"
    finally:
        worker.stop()
        receiver.close()


def test_a_missing_secret_is_an_attempt_error_not_an_unsigned_request(tmp_path, secret):
    receiver = Receiver((parse_secret(secret),))
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url}], allow_private=True)
    clock = Clock()
    _queue_one(tmp_path, tenants, clock.now)
    worker = WebhookDeliveryWorker(tmp_path / OUTBOX_FILE, tenants, NotificationSettings(), environ={}, clock=clock)
    try:
        _round(worker)
        assert "PAYORCH_WEBHOOK_SECRET is not set" in worker.outbox.deliveries()[0]["last_error"]
        assert receiver.headers == []
    finally:
        worker.stop()
        receiver.close()


def test_a_delivery_whose_endpoint_was_removed_is_dead(tmp_path, secret):
    tenants = _tenants_with([ENDPOINT])
    clock = Clock()
    _queue_one(tmp_path, tenants, clock.now)
    worker = _worker(tmp_path, _tenants_with([]), secret, clock)
    try:
        _round(worker)
        delivery = worker.outbox.deliveries()[0]
        assert delivery["state"] == "dead" and "no longer configured" in delivery["last_error"]
    finally:
        worker.stop()


def test_the_outbox_reads_back_read_only(tmp_path):
    WebhookOutbox(tmp_path / OUTBOX_FILE).close()
    outbox = WebhookOutbox(tmp_path / OUTBOX_FILE, read_only=True)
    try:
        assert outbox.deliveries() == []
    finally:
        outbox.close()


def test_payorch_up_runs_the_notifications_stage_only_when_a_tenant_configures_webhooks():
    from orchestrator.settings import Settings
    from orchestrator.supervisor import Supervisor

    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"})
    supervisor = Supervisor(settings, echo=lambda line: None)
    assert supervisor.stage_plan(TENANTS) == settings.stage_processes
    assert supervisor.stage_plan(_tenants_with([ENDPOINT])) == (*settings.stage_processes, ("notifications",))
    planned = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"},
                       stage_processes=(*settings.stage_processes[:-1], ("tracking", "notifications")))
    assert Supervisor(planned, echo=lambda line: None).stage_plan(_tenants_with([ENDPOINT])) == \
        planned.stage_processes, "a plan that hosts it already is kept"


def _self_signed(tmp_path: Path, host: str) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("certificate_host, delivered", [("hooks.test", True), ("other.test", False)])
def test_https_to_the_checked_address_verifies_the_certificate_of_the_urls_host(tmp_path, secret, certificate_host,
                                                                                delivered):
    """The request goes to the address that was checked, yet TLS still names and verifies
    the URL's host (SNI and the certificate), and the Host header is the URL's."""
    import ssl

    cert_file, key_file = _self_signed(tmp_path, certificate_host)
    clock = Clock()
    receiver = Receiver((parse_secret(secret),), clock=clock)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    names: list[str] = []
    server_tls.sni_callback = lambda sock, name, context: names.append(name)
    receiver.server.socket = server_tls.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    tenants = _tenants_with([{**ENDPOINT, "url": f"https://hooks.test:{port}/hooks"}], allow_private=True)
    _queue_one(tmp_path, tenants, clock.now)
    worker = WebhookDeliveryWorker(tmp_path / OUTBOX_FILE, tenants, NotificationSettings(backoff_jitter=0),
                                   environ={"PAYORCH_WEBHOOK_SECRET": secret}, clock=clock,
                                   resolver=lambda host, port: ["127.0.0.1"],
                                   tls_verify=ssl.create_default_context(cafile=str(cert_file)))
    try:
        _round(worker)
        delivery = worker.outbox.deliveries()[0]
        assert names and names[0] == "hooks.test"
        if delivered:
            assert delivery["state"] == "delivered", delivery["last_error"]
            assert receiver.headers[0]["host"] == f"hooks.test:{port}"
        else:
            assert delivery["state"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in delivery["last_error"]
            assert receiver.got == []
    finally:
        worker.stop()
        receiver.close()


def test_the_webhooks_cli_lists_shows_and_redelivers(tmp_path, secret, monkeypatch):
    from typer.testing import CliRunner

    from orchestrator import cli
    from orchestrator.settings import Settings

    monkeypatch.setattr(cli, "get_settings", lambda: Settings(data_dir=tmp_path))
    runner = CliRunner()
    assert runner.invoke(cli.app, ["webhooks", "deliveries"]).exit_code == 1  # no outbox yet
    receiver = Receiver((parse_secret(secret),), script=[500])
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url}], allow_private=True)
    import time

    clock = Clock(time.time())  # the CLI's redelivery is due from the real clock
    receiver.clock = clock
    settled = _queue_one(tmp_path, tenants, clock.now)
    worker = _worker(tmp_path, tenants, secret, clock, max_attempts=1)
    try:
        _round(worker)
        listed = runner.invoke(cli.app, ["webhooks", "deliveries", "--state", "dead"])
        assert listed.exit_code == 0 and f"{settled.event_id}.core" in listed.stdout and "1 deliveries" in listed.stdout
        assert runner.invoke(cli.app, ["webhooks", "deliveries", "--state", "lost"]).exit_code == 2
        shown = runner.invoke(cli.app, ["webhooks", "attempts", f"{settled.event_id}.core"])
        assert shown.exit_code == 0 and "HTTP 500" in shown.stdout and "1 attempts" in shown.stdout
        assert runner.invoke(cli.app, ["webhooks", "attempts", "nope.core"]).exit_code == 1
        again = runner.invoke(cli.app, ["webhooks", "redeliver", f"{settled.event_id}.core"])
        assert again.exit_code == 0 and "it was dead" in again.stdout
        assert runner.invoke(cli.app, ["webhooks", "redeliver", "nope.core"]).exit_code == 1
        clock.now = time.time() + 1
        _round(worker)
        assert worker.outbox.deliveries()[0]["state"] == "delivered" and len(receiver.got) == 1
        secret_out = runner.invoke(cli.app, ["webhooks", "new-secret"])
        assert parse_secret(secret_out.stdout.strip().splitlines()[-1])
    finally:
        worker.stop()
        receiver.close()


def test_delivered_webhooks_and_ended_payments_are_forgotten_after_the_retention_dead_ones_kept(tmp_path, secret):
    clock = Clock(1_800_000_000.0)
    receiver = Receiver((parse_secret(secret),), script=[500], clock=clock)
    tenants = _tenants_with([{**ENDPOINT, "url": receiver.url}], allow_private=True)
    stage = NotificationsStage(tenants, "test", tmp_path)
    first = follow(received("emea"), "PaymentSettled", "settlement", {"rail": "sepa_inst"}, 3)
    second = follow(received("emea", 1), "PaymentSettled", "settlement", {"rail": "sepa_inst"}, 3)
    stage.handle_batch([first, second], first.occurred_at)
    stage.outbox.db.execute("UPDATE deliveries SET next_attempt_at=?, round_started_at=?", (clock.now, clock.now))
    stage.outbox.db.execute("UPDATE payment_status SET updated_at=?", (clock.now,))
    worker = _worker(tmp_path, tenants, secret, clock, max_attempts=1, retention_days=10)
    try:
        _round(worker)  # one answered 500 (dead at once), the other delivered
        assert sorted(r["state"] for r in worker.outbox.deliveries()) == ["dead", "delivered"]
        clock.now += 9 * 86_400
        assert worker.forget_expired() == (0, 0)
        clock.now += 2 * 86_400
        assert worker.forget_expired() == (1, 2)
        assert [r["state"] for r in worker.outbox.deliveries()] == ["dead"], "a dead one waits for its operator"
        assert worker.outbox.attempts(worker.outbox.deliveries()[0]["delivery_id"]), "with its attempts"
    finally:
        stage.close()
        worker.stop()
        receiver.close()
