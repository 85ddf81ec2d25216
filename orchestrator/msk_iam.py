"""Amazon MSK IAM authentication for librdkafka (confluent-kafka): SASL/OAUTHBEARER with a
token from aws-msk-iam-sasl-signer-python.

What MSK documents for non-Java clients: `security.protocol=SASL_SSL`,
`sasl.mechanism=OAUTHBEARER`, the brokers' IAM listener (port 9098 inside AWS, 9198 with
public access), and a callback that returns the signer's token. The token is a SigV4
presigned URL for the action `kafka-cluster:Connect` (service `kafka-cluster`, the
cluster's Region), base64url-encoded without padding, valid 900 s. It is signed locally
from the process's AWS credentials: no network call, except what the credential chain
itself does (container or instance credentials, STS for a role).

librdkafka asks for a token through `oauth_cb` when a client starts and again before the
current one expires (at about 80 % of its lifetime), and re-authenticates its open broker
connections with the fresh one when the broker's session lifetime requires it (KIP-368,
librdkafka 2.2 and later). confluent-kafka expects `(token, expiry)` with the
expiry in seconds since the epoch; the signer answers milliseconds, hence `/ 1000`.

Errors: when the callback raises, confluent-kafka drops the exception, tells librdkafka
`rd_kafka_oauthbearer_set_token_failure("OAuth callback raised exception")`, and librdkafka
reports an authentication error to the client's `error_cb` and asks again about 10 s
later. So the callback logs the cause itself (the only place it is visible) before it
raises. It never returns anything but a (str, float) pair: another type would make
confluent-kafka crash the call that served the callback.

This module imports nothing of ours (an import contract in pyproject.toml).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("payorch.msk_iam")

# MSK's listener for IAM access control: 9098 from inside AWS, 9198 with public access.
MSK_IAM_PORT = 9098
MSK_IAM_PORTS = (9098, 9198)
# MSK's other listeners (plaintext, TLS, SASL/SCRAM and their public variants): a
# bootstrap string copied from the wrong `get-bootstrap-brokers` field.
_OTHER_MSK_LISTENERS = {9092: "plaintext", 9094: "TLS", 9096: "SASL/SCRAM", 9194: "public TLS",
                        9196: "public SASL/SCRAM"}
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


class MskIamError(RuntimeError):
    """An MSK IAM token could not be made, or an MSK IAM client config is not usable."""


@dataclass(frozen=True)
class MskIamAuth:
    """Whose credentials sign the tokens, for which AWS Region.

    By default the AWS default credential chain (environment, shared files and profile,
    web identity, ECS/EKS container credentials, EC2 instance role), resolved again at
    every token so rotated credentials are picked up. `profile` uses a named profile;
    `role_arn` assumes that role through STS at every token (the signer's behaviour);
    `credentials_provider` (a botocore CredentialProvider) is for embedding and tests.
    """

    aws_region: str
    profile: str | None = None
    role_arn: str | None = None
    session_name: str = "payorch"
    credentials_provider: Any = None

    def __post_init__(self) -> None:
        if not _AWS_REGION.match(self.aws_region or ""):
            raise MskIamError(f"MSK IAM signs for an AWS Region; {self.aws_region!r} is not one")
        chosen = [name for name in ("profile", "role_arn", "credentials_provider") if getattr(self, name)]
        if len(chosen) > 1:
            raise MskIamError(f"MSK IAM takes one credential source, not {' and '.join(chosen)}")

    @property
    def credential_source(self) -> str:
        if self.profile:
            return f"AWS profile {self.profile!r}"
        if self.role_arn:
            return f"role {self.role_arn}"
        if self.credentials_provider is not None:
            return f"credential provider {type(self.credentials_provider).__name__}"
        return "the default AWS credential chain"


class MskIamTokenCallback:
    """librdkafka's `oauth_cb`: a fresh MSK IAM token at every call.

    Stateless apart from counters, so one instance may serve several clients (each client
    calls it for itself, from the thread that polls it).
    """

    def __init__(self, auth: MskIamAuth, *, signer: Any = None, clock: Any = time.time) -> None:
        self.auth = auth
        self._signer = signer
        self._clock = clock
        self.calls = 0
        self.failures = 0
        # The cause of the latest failure (None after a success): confluent-kafka keeps
        # only "OAuth callback raised exception", so the client factory reports this one.
        self.last_error: str | None = None

    def _provider(self):
        if self._signer is None:
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

            self._signer = MSKAuthTokenProvider
        return self._signer

    def _sign(self) -> tuple[str, int]:
        signer, auth = self._provider(), self.auth
        if auth.profile:
            return signer.generate_auth_token_from_profile(auth.aws_region, auth.profile)
        if auth.role_arn:
            return signer.generate_auth_token_from_role_arn(auth.aws_region, auth.role_arn, auth.session_name)
        if auth.credentials_provider is not None:
            return signer.generate_auth_token_from_credentials_provider(auth.aws_region, auth.credentials_provider)
        return signer.generate_auth_token(auth.aws_region)

    def __call__(self, oauthbearer_config: str | None = None) -> tuple[str, float]:
        self.calls += 1
        try:
            token, expiry_ms = self._sign()
            if not isinstance(token, str) or not token:
                raise MskIamError("the signer returned no token")
            expiry_s = float(expiry_ms) / 1000.0
            if expiry_s <= self._clock():
                raise MskIamError(f"the signer returned a token that expired at {expiry_s:.0f} (epoch s)")
        except Exception as exc:
            self.failures += 1
            message = (f"MSK IAM: cannot sign a token for {self.auth.aws_region} with "
                       f"{self.auth.credential_source}: {_describe(exc)}")
            # confluent-kafka drops this exception (librdkafka only hears "OAuth callback
            # raised exception"), so the cause is logged here.
            log.error(message)
            self.last_error = message
            raise MskIamError(message) from exc
        self.last_error = None
        log.debug("MSK IAM token signed for %s, valid until %.0f", self.auth.aws_region, expiry_s)
        return token, expiry_s


def _describe(exc: BaseException) -> str:
    # The signer reads `credentials.access_key` of what the chain found, None when it found
    # nothing: an AttributeError that would not say so.
    if isinstance(exc, AttributeError) and "access_key" in str(exc):
        return ("no AWS credentials found (environment, shared credentials/config files, web identity, "
                "container or instance role)")
    return f"{type(exc).__name__}: {exc}"


def iam_bootstrap_servers(bootstrap_servers: str) -> str:
    """The bootstrap list with MSK's IAM port where none is given; refuses the ports of
    MSK's other listeners and any port but 9098/9198."""
    hosts = [entry.strip() for entry in bootstrap_servers.split(",") if entry.strip()]
    if not hosts:
        raise MskIamError("MSK IAM needs bootstrap servers")
    out = []
    for entry in hosts:
        host, sep, port = entry.rpartition(":")
        if not sep:
            # No port: the IAM listener's.
            out.append(f"{entry}:{MSK_IAM_PORT}")
            continue
        if not host or not port.isdigit():
            raise MskIamError(f"bootstrap server {entry!r} is not host:port")
        number = int(port)
        if number in _OTHER_MSK_LISTENERS:
            raise MskIamError(
                f"bootstrap server {entry}: port {number} is MSK's {_OTHER_MSK_LISTENERS[number]} listener; MSK IAM "
                f"listens on {MSK_IAM_PORT} (BootstrapBrokerStringSaslIam of aws kafka get-bootstrap-brokers)")
        if number not in MSK_IAM_PORTS:
            raise MskIamError(f"bootstrap server {entry}: MSK IAM listens on port {MSK_IAM_PORT} "
                              f"(9198 with public access), not {number}")
        out.append(entry)
    return ",".join(out)


def msk_iam_client_config(bootstrap_servers: str, auth: MskIamAuth) -> dict[str, Any]:
    """The librdkafka properties MSK documents for IAM access control, with the token
    callback: what every producer, consumer and admin client of a region with
    `security: msk_iam` gets."""
    return {
        "bootstrap.servers": iam_bootstrap_servers(bootstrap_servers),
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "oauth_cb": MskIamTokenCallback(auth),
    }
