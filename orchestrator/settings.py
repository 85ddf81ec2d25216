"""One frozen settings object per process, from defaults, `.env`-free environment.

Every field can be overridden with `PAYORCH_<FIELD>`; nested fields use a double
underscore (`PAYORCH_KAFKA__BOOTSTRAP_SERVERS`). Unknown keys in code are refused.
librdkafka options that have no field of their own pass through `kafka.extra`
(`PAYORCH_KAFKA__EXTRA='{"socket.keepalive.enable": "true"}'`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.topics import OPTIONAL_STAGES, STAGE_NAMES, in_flow_order

REPO_ROOT = Path(__file__).resolve().parent.parent


class MskIamSettings(BaseModel):
    """Amazon MSK IAM authentication (orchestrator/msk_iam.py), used when the SASL
    mechanism is OAUTHBEARER and a signing region is known: from the tenant file's region
    (`security: msk_iam`, see orchestrator/topology.py) or set here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The AWS Region tokens are signed for (the cluster's). Filled in from the tenant
    # file's region; set it by hand only for a process outside the tenant topology.
    aws_region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
    # Credentials: the AWS default chain unless one of these is set (not both).
    profile: str | None = Field(default=None, min_length=1)
    role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    session_name: str = Field(default="payorch", pattern=r"^[\w+=,.@-]{2,64}$")

    @model_validator(mode="after")
    def _one_credential_source(self) -> "MskIamSettings":
        if self.profile and self.role_arn:
            raise ValueError("kafka.msk_iam: set profile or role_arn, not both")
        return self


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None means "start a local broker" for `payorch up`; stages refuse to run without it.
    # In a process that runs in one of its tenants' regions (PAYORCH_REGION), these are
    # that region's brokers, unless REGION_BOOTSTRAP_SERVERS names them.
    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["OAUTHBEARER", "PLAIN", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # MSK IAM: the signing region (normally from the tenant file) and the credentials.
    msk_iam: MskIamSettings = MskIamSettings()
    # Bootstrap servers of tenants' regions by "<region>" or "<tenant>/<region>" (the
    # more specific wins), e.g. '{"eu-central-1": "b-1.x.kafka.eu-central-1.amazonaws.com:9098"}':
    # so a container is told its clusters by its environment, not by a committed file
    # (orchestrator/topology.py, `bootstrap_for`).
    region_bootstrap_servers: dict[str, str] = Field(default_factory=dict)
    # Partitions per topic bound the parallelism of one stage: instances beyond the
    # partitions of its input topics idle. The default suits one machine, where each stage
    # runs once: every partition costs the broker a commit marker per transaction that
    # touches it and a slot in every fetch, and 3 instead of 1 cost it about a quarter
    # more CPU per payment (docs/PERFORMANCE.md). A deployment that runs N replicas of a
    # stage sets at least N. Topics that exist keep their count.
    partitions: int = Field(default=1, ge=1, le=1_000)
    replication_factor: int = Field(default=1, ge=1, le=5)
    extra: dict[str, str] = Field(default_factory=dict)

    @property
    def uses_msk_iam(self) -> bool:
        return self.sasl_mechanism == "OAUTHBEARER" and self.msk_iam.aws_region is not None

    def client_config(self) -> dict[str, object]:
        """librdkafka properties for every producer, consumer and admin client.

        With MSK IAM (OAUTHBEARER and a signing region), the properties MSK documents:
        SASL_SSL, OAUTHBEARER, the bootstrap servers on the IAM port (9098 added where
        none is given) and `oauth_cb`, which signs a fresh token whenever librdkafka asks.
        `extra` is applied last, as before: an operator's librdkafka option still wins,
        also over those (a callback cannot be given there: `extra` holds strings).
        """
        if not self.bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers configured (PAYORCH_KAFKA__BOOTSTRAP_SERVERS)")
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.uses_msk_iam:
            from orchestrator.msk_iam import MskIamAuth, msk_iam_client_config

            if self.security_protocol != "SASL_SSL":
                raise ValueError(f"MSK IAM needs security protocol SASL_SSL, not {self.security_protocol}")
            auth = MskIamAuth(aws_region=self.msk_iam.aws_region, profile=self.msk_iam.profile,
                              role_arn=self.msk_iam.role_arn, session_name=self.msk_iam.session_name)
            config.update(msk_iam_client_config(self.bootstrap_servers, auth))
        elif self.sasl_mechanism == "OAUTHBEARER" and not any(key.startswith("sasl.oauthbearer.") or
                                                              key == "enable.sasl.oauthbearer.unsecure.jwt"
                                                              for key in self.extra):
            raise ValueError(
                "SASL mechanism OAUTHBEARER needs a token source: a tenant region with `security: msk_iam` "
                "(PAYORCH_REGION naming it), PAYORCH_KAFKA__MSK_IAM__AWS_REGION, or librdkafka's own "
                "sasl.oauthbearer.* options in PAYORCH_KAFKA__EXTRA")
        else:
            if self.sasl_username:
                config["sasl.username"] = self.sasl_username
            if self.sasl_password:
                config["sasl.password"] = self.sasl_password.get_secret_value()
        config.update(self.extra)
        return config


class RetrySettings(BaseModel):
    """Non-blocking retries: an event that failed transiently waits in
    `<topic>.retry.<level>` while its partition moves on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One retry topic per delay; the attempt after the last one dead-letters the event.
    # Each delay doubles the one before (exponential), each is jittered by +-jitter.
    backoff_s: tuple[float, ...] = (1.0, 4.0, 16.0)
    jitter: float = Field(default=0.2, ge=0, lt=1)

    @property
    def levels(self) -> int:
        return len(self.backoff_s)


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Up to this many messages are decoded, decided and produced as one unit; large
    # enough to amortise the flush and commit, small enough to keep latency in ms.
    batch_max_messages: int = Field(default=500, ge=1, le=10_000)
    poll_timeout_ms: int = Field(default=50, ge=1, le=5_000)
    # A checkpoint (one Kafka transaction) spans the batches consumed within this long
    # from its first message: a loaded stage pays one commit per interval instead of one
    # per event, and a quiet one adds at most the interval to each hop. (Kafka Streams
    # commits exactly-once every 100 ms; instant payments want less per hop.)
    commit_interval_ms: int = Field(default=10, ge=0, le=10_000)
    # How often stages with timers (routing's verdict timeout, settlement cycles) run them.
    tick_interval_ms: int = Field(default=500, ge=10, le=60_000)
    # Bound on waiting for the broker to acknowledge a batch before the batch is retried.
    produce_ack_timeout_s: float = Field(default=30.0, gt=0, le=600)
    producer_linger_ms: int = Field(default=2, ge=0, le=1_000)
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=300)
    # Consume-transform-produce in Kafka transactions: a batch's outputs, dead letters
    # and consumed offsets commit together or not at all. Off means at-least-once with
    # offsets stored after the outputs are acknowledged (stages are idempotent either way).
    exactly_once: bool = True
    retry: RetrySettings = RetrySettings()
    # Failure drills only (0 in production): hold each non-empty transaction open this long
    # before committing it, so a test can SIGKILL a stage inside an open transaction.
    drill_hold_transaction_s: float = Field(default=0.0, ge=0, le=60)


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class JwtSettings(BaseModel):
    """Bearer JWTs from a bank's identity provider (orchestrator/intake/jwt_bearer.py).

    Only asymmetric algorithms can be listed: a shared-secret (HS*) or unsigned token is
    never accepted. Exactly one key set source: a JWKS file, or an https URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = Field(default=None, pattern=r"^https://[^\s]+$")
    tenant_claim: str = Field(default="payorch_tenant", min_length=1)
    scope_claim: str = Field(default="scope", min_length=1)
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256", "PS256", "ES256"), min_length=1)
    # Clock skew allowed on exp, nbf and iat.
    leeway_s: int = Field(default=30, ge=0, le=300)
    # Longer-lived tokens are refused: a stolen one should not work for a day.
    max_lifetime_s: int = Field(default=3_600, ge=60, le=86_400)
    # A JWKS URL is read again this often, and on an unknown kid at most this often.
    jwks_cache_s: float = Field(default=300.0, ge=10, le=86_400)
    jwks_refresh_min_s: float = Field(default=30.0, ge=1, le=3_600)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file and jwks_url")
        return self


class IntakeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65_535)
    # A JSON credit transfer is well under 4 KiB; 64 KiB leaves room for long remittance
    # data while stopping memory abuse. ISO documents may hold many transactions.
    max_json_body_bytes: int = Field(default=65_536, ge=1_024)
    max_xml_body_bytes: int = Field(default=5_242_880, ge=1_024)
    max_transactions_per_document: int = Field(default=1_000, ge=1, le=100_000)
    publish_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Admission control (orchestrator/flow_health.py): refuse new payments with 503 and
    # Retry-After while payments take more than this share of the tenant's tightest rail
    # time limit end to end, or while this many are in flight.
    admission_control: bool = True
    admission_latency_fraction: float = Field(default=0.5, gt=0, le=1)
    admission_max_in_flight: int = Field(default=20_000, ge=1)
    # A reading older than this (tracking stopped) admits: see flow_health.admission.
    admission_stale_after_s: float = Field(default=5.0, gt=0, le=600)
    # The Host header values (without port) the intake answers; others get 400
    # `host-not-allowed`, so a web page cannot reach a local intake through DNS
    # rebinding. Behind a gateway or load balancer, list the names it forwards (an
    # entry "*" allows any). /healthz and /readyz answer any Host: load-balancer health
    # checks name the target's address.
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    # A client must deliver its whole body within this long (408 `request-timeout`
    # otherwise): a slow body holds a connection and its buffer for nothing.
    body_read_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # The request line and headers must arrive within this long, from a connection's (or a
    # request's) first byte (408 `header-timeout`, orchestrator/intake/server.py): against
    # clients that open connections and trickle headers (slowloris) or send nothing.
    header_read_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # The request line and headers together; past it 431 `headers-too-large`.
    max_request_head_bytes: int = Field(default=32_768, ge=1_024, le=1_048_576)
    # Connections and requests served at once by one intake process; past it the server
    # answers 503 at once instead of queueing without bound.
    max_concurrent_connections: int = Field(default=2_048, ge=1, le=100_000)
    # An idle keep-alive connection is closed after this long.
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=300)
    # Payments one API key may submit per second on average, and at once (429
    # `rate-limited` past it; orchestrator/intake/rate_limit.py). Per intake process.
    submit_rate_per_credential_per_s: float = Field(default=5_000.0, gt=0, le=1_000_000)
    submit_burst_per_credential: int = Field(default=10_000, ge=1, le=10_000_000)
    # Bearer JWTs from an identity provider, besides API keys; None accepts API keys only.
    jwt: JwtSettings | None = None


class ClearingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def url_for(self, rail: str, endpoint_path: str) -> str:
        return self.rail_urls.get(rail, self.base_url).rstrip("/") + endpoint_path

    # Where execution reaches the clearing systems; locally the clearing simulator.
    base_url: str = "http://127.0.0.1:8090"
    # Per-rail endpoints override base_url (`payorch up` runs one simulator per rail and
    # sets this, e.g. PAYORCH_CLEARING__RAIL_URLS='{"fednow": "http://127.0.0.1:8090"}').
    rail_urls: dict[str, str] = Field(default_factory=dict)
    simulator_host: str = "127.0.0.1"
    simulator_port: int = Field(default=8090, ge=1, le=65_535)
    max_concurrent_requests: int = Field(default=64, ge=1, le=1_024)


class DynamoDBSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None means AWS's regional endpoint; tests point it at a local DynamoDB EMULATOR.
    endpoint_url: str | None = None
    # None means boto3's own resolution (AWS_REGION, the profile, the task metadata).
    region: str | None = None
    # Tables are "<prefix>ledger-accounts", "-transfers", "-entries"; a prefix per
    # deployment (or per test) keeps several ledgers apart in one account.
    table_prefix: str = Field(default="payorch-", pattern=r"^[A-Za-z0-9_.-]{0,200}$")
    max_attempts: int = Field(default=5, ge=1, le=20)
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class StorageSettings(BaseModel):
    """Where the ledger keeps its state. The other stores are SQLite for now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    dynamodb: DynamoDBSettings = DynamoDBSettings()


class NotificationSettings(BaseModel):
    """How the notifications stage delivers webhooks (adapters/webhook_delivery.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How often the delivery worker looks for due deliveries in the outbox when idle.
    poll_interval_ms: int = Field(default=200, ge=10, le=60_000)
    # Due deliveries claimed per look, and sent at once (each its own HTTP request).
    batch_max_deliveries: int = Field(default=100, ge=1, le=10_000)
    max_concurrent_requests: int = Field(default=16, ge=1, le=256)
    # One attempt's bound: connect, send and read the answer. A receiver should answer at
    # once and do its work afterwards; the spec's senders allow 15 s.
    request_timeout_s: float = Field(default=15.0, gt=0, le=120)
    # Retries: the wait after the n-th failed attempt is backoff_base_s * 2**(n-1), at most
    # backoff_max_s, spread by +-backoff_jitter. With the defaults: 1 s, 2 s, 4 s ... 34 min
    # (the first 12 attempts within the first hour), then hourly, until max_attempts or
    # max_age_s; three days outlast a long weekend's outage of a bank's receiver.
    backoff_base_s: float = Field(default=1.0, gt=0, le=3_600)
    backoff_max_s: float = Field(default=3_600.0, gt=0, le=86_400)
    backoff_jitter: float = Field(default=0.2, ge=0, lt=1)
    # A delivery is dead (kept, shown, redeliverable by `payorch webhooks redeliver`) after
    # this many attempts or this long after it was queued, whichever comes first.
    max_attempts: int = Field(default=100, ge=1, le=1_000)
    max_age_s: float = Field(default=259_200.0, gt=0, le=2_592_000)
    # Delivered webhooks (with their attempts) and the statuses of payments that ended are
    # forgotten this long after; dead deliveries are kept until an operator redelivers
    # them. Longer than any Kafka retention, so a redelivered event still finds its status
    # and queues nothing.
    retention_days: int = Field(default=35, ge=8, le=3_650)
    # A receiver's answer is kept in the attempt log up to this many bytes.
    response_excerpt_max_bytes: int = Field(default=512, ge=0, le=65_536)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> "NotificationSettings":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("notifications.backoff_max_s must not be below backoff_base_s")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PAYORCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    region: str = "local-a"
    topic_template: str = "{tenant}.payments.{stage}.v1"
    # Consumer groups are "<prefix>.<stage>"; two deployments sharing a cluster (or two
    # test systems sharing a broker) use different prefixes so their groups never mix.
    consumer_group_prefix: str = "payorch"
    tenants_dir: Path = REPO_ROOT / "tenants"
    schemas_dir: Path = REPO_ROOT / "schemas"
    data_dir: Path = REPO_ROOT / "var" / "data"
    # Restrict a process to some tenants (comma separated); empty means every tenant file.
    tenants: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    kafka: KafkaSettings = KafkaSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    intake: IntakeSettings = IntakeSettings()
    clearing: ClearingSettings = ClearingSettings()
    storage: StorageSettings = StorageSettings()
    notifications: NotificationSettings = NotificationSettings()
    # `payorch up`'s processes: each entry is the stages one process hosts, with one
    # consumer, one producer and one transaction per commit interval for all of them,
    # and outputs handed straight to the hosted stages that read them (see
    # docs/ARCHITECTURE.md, "Stage processes"). Every stage appears exactly once.
    # Sanctions and fraud sit in different processes so they screen concurrently, in
    # their own consumer groups, as do execution and the ledger's reservation. Within
    # that, stages that follow each other share a process so their hops are handed over:
    # routing's decision reaches the ledger, and execution's result settlement, without
    # a commit and a fetch in between. A container runs one stage (`payorch run STAGE`)
    # whatever this says. An optional stage (topics.py, OPTIONAL_STAGES: notifications) may
    # be left out; `payorch up` then runs it in a process of its own when a tenant file
    # configures it.
    stage_processes: tuple[tuple[str, ...], ...] = (
        ("initiation", "sanctions", "routing", "ledger"),
        ("fraud",),
        ("execution", "settlement"),
        ("tracking",),
    )

    @field_validator("stage_processes")
    @classmethod
    def _every_stage_once(cls, plan: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        named = [stage for process in plan for stage in process]
        missing = [stage for stage in STAGE_NAMES if stage not in named and stage not in OPTIONAL_STAGES]
        if missing:
            raise ValueError(f"stage_processes leaves out {', '.join(missing)}")
        if any(not process for process in plan):
            raise ValueError("stage_processes has an empty process")
        if len(set(named)) != len(named):
            raise ValueError("stage_processes names a stage twice")
        return tuple(tuple(in_flow_order(list(process))) for process in plan)

    def tenant_filter(self) -> set[str] | None:
        names = {name.strip() for name in self.tenants.split(",") if name.strip()}
        return names or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
