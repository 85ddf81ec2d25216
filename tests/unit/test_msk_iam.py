"""MSK IAM authentication (orchestrator/msk_iam.py): the token that librdkafka's
`oauth_cb` hands the broker, its expiry, its refresh, and the failure paths.

There is no AWS here. The signer (aws-msk-iam-sasl-signer-python) runs for real: it
signs locally, with fake credentials from the environment or from a stubbed botocore
credential provider, and the tests check its token independently (decoding it and
recomputing its SigV4 signature with the fake secret). librdkafka runs for real too: a
producer on a loopback port where nothing listens asks the callback for its first token
while it is constructed and for fresh ones before each expires, with no broker needed.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import logging
import threading
import time
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore.credentials import CredentialProvider, Credentials
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from orchestrator import kafka_clients
from orchestrator.msk_iam import (
    MskIamAuth,
    MskIamError,
    MskIamTokenCallback,
    iam_bootstrap_servers,
    msk_iam_client_config,
)
from orchestrator.settings import KafkaSettings, MskIamSettings, Settings

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE/+token="
# Nothing listens on loopback 9098 here: connections are refused at once, no network.
NOWHERE = "127.0.0.1:9098"
QUIET = logging.getLogger("test.librdkafka")


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials in the environment, and every other source of the default
    credential chain switched off (no profile files, no instance metadata, no container
    credentials, no web identity), so the chain finds exactly these."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    return monkeypatch


@pytest.fixture
def no_aws_credentials(aws_env):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        aws_env.delenv(name)
    return aws_env


@pytest.fixture
def short_tokens(monkeypatch):
    """Tokens valid 3 s instead of 900 s, so librdkafka's refresh (at about 80 % of the
    lifetime) comes within a test. The signer reads this constant at every signing, for
    the presigned URL's X-Amz-Expires and for the expiry it returns alike."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    monkeypatch.setattr(MSKAuthTokenProvider, "DEFAULT_TOKEN_EXPIRY_SECONDS", 3)
    return 3


class RotatingCredentials(CredentialProvider):
    """A botocore credential provider that hands out a new key pair at every load, as
    rotated role credentials do."""

    METHOD = "test-rotating"

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self) -> Credentials:
        self.loads += 1
        return Credentials(f"AKIAROTATING{self.loads:08d}", f"secret-{self.loads}", None, method=self.METHOD)


class FailingCredentials(CredentialProvider):
    METHOD = "test-failing"

    def load(self) -> Credentials:
        raise RuntimeError("the credential endpoint answered 500")


class Recording:
    """The real signer module, with every token it returns recorded."""

    def __init__(self) -> None:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        self._real = MSKAuthTokenProvider
        self.tokens: list[tuple[str, int]] = []
        self.fail_after: int | None = None
        self.lock = threading.Lock()

    def __getattr__(self, name):
        real = getattr(self._real, name)

        def call(*args, **kwargs):
            with self.lock:
                if self.fail_after is not None and len(self.tokens) >= self.fail_after:
                    raise ConnectionError("STS endpoint unreachable")
                result = real(*args, **kwargs)
                self.tokens.append(result)
                return result
        return call


def decode(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def sigv4_signature_is_valid(url: str, secret: str, region: str) -> bool:
    """Recompute the presigned URL's SigV4 signature from the secret, independently of
    botocore: canonical request (GET, /, the signed query parameters sorted, the host
    header, the empty payload's hash), string to sign, HMAC key chain."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(params)
    # The signer appends User-Agent after signing: it is not part of the signature.
    signed = sorted((k, v) for k, v in params if k not in ("X-Amz-Signature", "User-Agent"))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in signed)
    canonical_request = "\n".join(["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host",
                                   hashlib.sha256(b"").hexdigest()])
    date = query["X-Amz-Date"]
    scope = f"{date[:8]}/{region}/kafka-cluster/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date[:8], region, "kafka-cluster", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), query["X-Amz-Signature"])


def producer(config: dict, errors: list | None = None) -> Producer:
    extra = {"logger": QUIET}
    if errors is not None:
        extra["error_cb"] = errors.append
    return Producer({**config, **extra})


def poll_until(client, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        client.poll(0.1)
    return condition()


# --------------------------------------------------------------------------------------
# The token
# --------------------------------------------------------------------------------------

def test_the_token_is_a_base64url_presigned_url_for_kafka_cluster_connect_in_the_clusters_region(aws_env):
    before = time.time()
    token, expiry = MskIamTokenCallback(MskIamAuth("eu-central-1"))("")
    after = time.time()

    # base64url without padding, as MSK expects.
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    url = decode(token)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "kafka.eu-central-1.amazonaws.com", "/")
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    key, day, region, service, terminal = query["X-Amz-Credential"].split("/")
    assert (key, region, service, terminal) == (ACCESS_KEY, "eu-central-1", "kafka-cluster", "aws4_request")
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Expires"] == "900"
    # Temporary credentials (a role, a container): the session token travels in the URL.
    assert query["X-Amz-Security-Token"] == SESSION_TOKEN
    assert query["User-Agent"].startswith("aws-msk-iam-sasl-signer-python/")
    assert sigv4_signature_is_valid(url, SECRET_KEY, "eu-central-1")
    assert not sigv4_signature_is_valid(url, "another-secret", "eu-central-1")

    # The expiry is in seconds since the epoch (the signer answers milliseconds): the
    # signing time (whole seconds, X-Amz-Date) plus the URL's 900 s.
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    assert isinstance(expiry, float)
    assert expiry == signed_at + 900
    assert before - 1 + 900 <= expiry <= after + 900


def test_the_callback_converts_the_signers_milliseconds_to_seconds():
    class Signer:
        @staticmethod
        def generate_auth_token(region):
            return "dG9rZW4", 4_102_444_800_000  # 2100-01-01 in ms

    token, expiry = MskIamTokenCallback(MskIamAuth("us-east-1"), signer=Signer)("")
    assert (token, expiry) == ("dG9rZW4", 4_102_444_800.0)


def test_each_call_signs_anew_so_rotated_credentials_reach_the_next_token():
    provider = RotatingCredentials()
    callback = MskIamTokenCallback(MskIamAuth("eu-west-1", credentials_provider=provider))
    first, second = decode(callback("")[0]), decode(callback("")[0])
    assert "AKIAROTATING00000001%2F" in first and "AKIAROTATING00000002%2F" in second
    assert sigv4_signature_is_valid(first, "secret-1", "eu-west-1")
    assert sigv4_signature_is_valid(second, "secret-2", "eu-west-1")
    assert provider.loads == 2 and callback.calls == 2


def test_a_profile_or_a_role_uses_the_signers_matching_function():
    calls = []

    class Signer:
        @staticmethod
        def generate_auth_token_from_profile(region, profile):
            calls.append(("profile", region, profile))
            return "dA", 4_102_444_800_000

        @staticmethod
        def generate_auth_token_from_role_arn(region, role_arn, session_name):
            calls.append(("role", region, role_arn, session_name))
            return "dA", 4_102_444_800_000

    MskIamTokenCallback(MskIamAuth("eu-west-1", profile="payments"), signer=Signer)("")
    role = "arn:aws:iam::123456789012:role/payorch-emea-ledger"
    MskIamTokenCallback(MskIamAuth("eu-west-1", role_arn=role, session_name="ledger-0"), signer=Signer)("")
    assert calls == [("profile", "eu-west-1", "payments"), ("role", "eu-west-1", role, "ledger-0")]
    with pytest.raises(MskIamError, match="one credential source"):
        MskIamAuth("eu-west-1", profile="payments", role_arn=role)
    with pytest.raises(MskIamError, match="AWS Region"):
        MskIamAuth("local-a")


# --------------------------------------------------------------------------------------
# Failures inside the callback
# --------------------------------------------------------------------------------------

def test_no_credentials_is_said_plainly_and_logged_since_confluent_kafka_drops_the_exception(
        no_aws_credentials, caplog):
    callback = MskIamTokenCallback(MskIamAuth("eu-west-1"))
    with caplog.at_level(logging.ERROR, logger="payorch.msk_iam"), pytest.raises(MskIamError) as raised:
        callback("")
    assert "eu-west-1" in str(raised.value) and "the default AWS credential chain" in str(raised.value)
    assert "no AWS credentials found" in str(raised.value)
    assert [r.getMessage() for r in caplog.records] == [str(raised.value)]
    assert callback.failures == 1 and callback.last_error == str(raised.value)


@pytest.mark.parametrize("answer, problem", [
    (("", 4_102_444_800_000), "no token"),
    ((None, 4_102_444_800_000), "no token"),
    (("dA", 1_000_000_000_000), "expired"),
])
def test_a_bad_answer_from_the_signer_is_an_error_never_a_malformed_tuple(answer, problem, caplog):
    # confluent-kafka crashes the call that served the callback (not librdkafka's token
    # failure path) when oauth_cb returns anything but (str, float).
    class Signer:
        @staticmethod
        def generate_auth_token(region):
            return answer

    with caplog.at_level(logging.ERROR, logger="payorch.msk_iam"), pytest.raises(MskIamError, match=problem):
        MskIamTokenCallback(MskIamAuth("eu-west-1"), signer=Signer)("")


# --------------------------------------------------------------------------------------
# Through librdkafka: first token, refresh, and the error path
# --------------------------------------------------------------------------------------

def test_librdkafka_asks_again_before_expiry_and_gets_a_fresh_token(aws_env, short_tokens):
    recording = Recording()
    config = msk_iam_client_config(NOWHERE, MskIamAuth("eu-west-1"))
    config["oauth_cb"] = callback = MskIamTokenCallback(MskIamAuth("eu-west-1"), signer=recording)
    errors: list[KafkaError] = []
    client = producer(config, errors)
    # confluent-kafka waits for the first token while it constructs the client.
    assert callback.calls == 1 and len(recording.tokens) == 1
    # A 3 s token is refreshed at about 80 % of its lifetime: two more within 6 s.
    assert poll_until(client, lambda: len(recording.tokens) >= 3, timeout_s=8), recording.tokens
    tokens = [token for token, _ in recording.tokens]
    assert len(set(tokens)) == len(tokens), "each refresh returns a new token"
    expiries = [expiry_ms / 1000 for _, expiry_ms in recording.tokens]
    assert expiries == sorted(expiries) and expiries[-1] > expiries[0]
    for token, expiry_ms in recording.tokens:
        query = dict(parse_qsl(urlsplit(decode(token)).query))
        assert query["X-Amz-Expires"] == str(short_tokens)
        assert sigv4_signature_is_valid(decode(token), SECRET_KEY, "eu-west-1")
    assert callback.failures == 0
    assert not [e for e in errors if e.code() == KafkaError._AUTHENTICATION]


def test_a_refresh_that_fails_reaches_librdkafkas_token_failure_path_with_the_cause_logged(
        aws_env, short_tokens, caplog):
    recording = Recording()
    recording.fail_after = 1  # the first token is signed; every refresh fails
    config = msk_iam_client_config(NOWHERE, MskIamAuth("eu-west-1"))
    config["oauth_cb"] = callback = MskIamTokenCallback(MskIamAuth("eu-west-1"), signer=recording)
    errors: list[KafkaError] = []
    with caplog.at_level(logging.ERROR, logger="payorch.msk_iam"):
        client = producer(config, errors)
        assert poll_until(client, lambda: any(e.code() == KafkaError._AUTHENTICATION for e in errors), timeout_s=8)
    failure = next(e for e in errors if e.code() == KafkaError._AUTHENTICATION)
    # What librdkafka says (confluent-kafka keeps no more of the exception) ...
    assert "Failed to acquire SASL OAUTHBEARER token" in failure.str()
    # ... and what the callback logged and keeps: the cause.
    assert callback.failures >= 1 and "STS endpoint unreachable" in callback.last_error
    assert any("ConnectionError: STS endpoint unreachable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["producer", "consumer", "admin"])
def test_a_client_that_cannot_get_its_first_token_fails_at_start_with_the_cause(kind, aws_env, caplog):
    # confluent-kafka waits 10 s in the constructor for the first token, then raises a
    # generic "OAuth token not set" (a SystemError for a Consumer). The client factories
    # raise the callback's own error instead.
    settings = Settings(kafka=KafkaSettings(
        bootstrap_servers=NOWHERE, security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
        msk_iam=MskIamSettings(aws_region="eu-west-1"), extra={"log_level": "0"}))
    failing = FailingCredentials()
    real = kafka_clients.client_config

    def with_failing_provider(s):
        config = real(s)
        config["oauth_cb"].auth = MskIamAuth("eu-west-1", credentials_provider=failing)
        return config

    aws_env.setattr(kafka_clients, "client_config", with_failing_provider)
    make = {"producer": lambda: kafka_clients.make_producer(settings, "c"),
            "consumer": lambda: kafka_clients.make_consumer(settings, "g", "c"),
            "admin": lambda: kafka_clients.make_admin(settings)}[kind]
    with caplog.at_level(logging.ERROR, logger="payorch.msk_iam"), pytest.raises(KafkaException) as raised:
        make()
    error = raised.value.args[0]
    assert error.code() == KafkaError._AUTHENTICATION
    assert "MSK IAM: cannot sign a token for eu-west-1" in error.str()
    assert "the credential endpoint answered 500" in error.str()


# --------------------------------------------------------------------------------------
# The client configuration
# --------------------------------------------------------------------------------------

def test_the_client_config_is_what_msk_documents_for_librdkafka():
    config = msk_iam_client_config("b-1.payorch-emea.abc123.c2.kafka.eu-west-1.amazonaws.com:9098,"
                                   "b-2.payorch-emea.abc123.c2.kafka.eu-west-1.amazonaws.com:9098",
                                   MskIamAuth("eu-west-1"))
    assert set(config) == {"bootstrap.servers", "security.protocol", "sasl.mechanism", "oauth_cb"}
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert all(entry.endswith(":9098") for entry in config["bootstrap.servers"].split(","))
    assert isinstance(config["oauth_cb"], MskIamTokenCallback)
    assert config["oauth_cb"].auth.aws_region == "eu-west-1"


def test_bootstrap_servers_get_the_iam_port_and_other_msk_listeners_are_refused():
    assert iam_bootstrap_servers("b-1.x:9098, b-2.x") == "b-1.x:9098,b-2.x:9098"
    assert iam_bootstrap_servers("b-1.public.x:9198") == "b-1.public.x:9198"
    with pytest.raises(MskIamError, match="port 9092 is MSK's plaintext listener"):
        iam_bootstrap_servers("b-1.x:9092")
    with pytest.raises(MskIamError, match="SASL/SCRAM"):
        iam_bootstrap_servers("b-1.x:9098,b-2.x:9096")
    with pytest.raises(MskIamError, match="not 1234"):
        iam_bootstrap_servers("b-1.x:1234")
    with pytest.raises(MskIamError, match="needs bootstrap servers"):
        iam_bootstrap_servers(" , ")


def test_kafka_settings_hand_every_client_the_msk_iam_config_and_extra_still_comes_last():
    kafka = KafkaSettings(bootstrap_servers="b-1.x", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                          msk_iam=MskIamSettings(aws_region="ap-southeast-2", role_arn=(
                              "arn:aws:iam::123456789012:role/payorch-apac-intake")),
                          extra={"client.dns.lookup": "use_all_dns_ips", "sasl.oauthbearer.config": "x=1"})
    config = kafka.client_config()
    assert config["bootstrap.servers"] == "b-1.x:9098"
    assert (config["security.protocol"], config["sasl.mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert config["oauth_cb"].auth == MskIamAuth("ap-southeast-2", role_arn=(
        "arn:aws:iam::123456789012:role/payorch-apac-intake"))
    assert config["client.dns.lookup"] == "use_all_dns_ips"
    # extra is applied last, as it always was: an operator's option wins, these too.
    overridden = kafka.model_copy(update={"extra": {"sasl.mechanism": "PLAIN"}}).client_config()
    assert overridden["sasl.mechanism"] == "PLAIN"
    settings = Settings(kafka=kafka)
    for config in (kafka_clients.producer_config(settings, "p"), kafka_clients.consumer_config(settings, "g", "c")):
        assert isinstance(config["oauth_cb"], MskIamTokenCallback)
        assert config["security.protocol"] == "SASL_SSL" and config["bootstrap.servers"] == "b-1.x:9098"


def test_oauthbearer_without_a_token_source_is_refused_and_iam_needs_sasl_ssl():
    with pytest.raises(ValueError, match="OAUTHBEARER needs a token source"):
        KafkaSettings(bootstrap_servers="b:9098", security_protocol="SASL_SSL",
                      sasl_mechanism="OAUTHBEARER").client_config()
    # librdkafka's own OIDC token retrieval is a token source too.
    oidc = KafkaSettings(bootstrap_servers="b:9093", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                         extra={"sasl.oauthbearer.method": "oidc"}).client_config()
    assert "oauth_cb" not in oidc
    with pytest.raises(ValueError, match="needs security protocol SASL_SSL"):
        KafkaSettings(bootstrap_servers="b:9098", security_protocol="SSL", sasl_mechanism="OAUTHBEARER",
                      msk_iam=MskIamSettings(aws_region="eu-west-1")).client_config()
    with pytest.raises(ValueError, match="profile or role_arn"):
        MskIamSettings(profile="p", role_arn="arn:aws:iam::123456789012:role/r")


def test_the_local_default_is_untouched():
    config = KafkaSettings(bootstrap_servers="127.0.0.1:9092").client_config()
    assert config == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize("factory", [Producer, Consumer, AdminClient])
def test_producers_consumers_and_admin_clients_accept_the_config_and_sign_their_first_token(factory, aws_env):
    config = msk_iam_client_config(NOWHERE, MskIamAuth("eu-west-1"))
    extra = {"group.id": "g"} if factory is Consumer else {}
    client = factory({**config, **extra, "logger": QUIET})
    assert config["oauth_cb"].calls >= 1 and config["oauth_cb"].failures == 0
    del client
