"""Tenant configuration: one YAML file per regional tenant in `tenants/`.

A new tenant or a new rail of a known message family is a new file or a new block in
one, never new code. Unknown keys are refused so that a typo in a limit cannot silently
leave the default in force.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.domain import MoneyError, to_minor_units
from orchestrator.topology import RegionConfig, name_in_other_region, regions_from_yaml, validate_regions
from orchestrator.webhooks import literal_host_refused

BankCodeScheme = Literal["aba", "sort_code", "bsb", "ispb", "clabe", "transit", "fast_bank_code"]
# Optional payment fields a rail's market practice can make mandatory (dotted paths on the
# canonical payment); anything else in a tenant file is refused as a typo.
MandatoryField = Literal[
    "remittance_information", "purpose_code", "requested_execution_date",
    "debtor.agent.bic", "creditor.agent.bic", "debtor.country", "creditor.country",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClearingConfig(_Strict):
    """How execution reaches the rail's clearing system (locally: its simulator)."""

    # Path on the clearing endpoint; the base URL comes from process settings so the same
    # tenant file works against a local simulator and a real gateway.
    endpoint_path: str
    timeout_ms: int = Field(default=5_000, gt=0, le=60_000)
    clearing_system_code: str = Field(min_length=2, max_length=5)
    service_level: str = "INST"
    local_instrument: str | None = None
    # Where status inquiries (pacs.028) go; by default the submission path with
    # pacs028 in place of pacs008 (/rails/sepa_inst/pacs028 on the simulator).
    inquiry_path: str | None = None

    @property
    def status_inquiry_path(self) -> str:
        if self.inquiry_path:
            return self.inquiry_path
        head, _, tail = self.endpoint_path.rpartition("pacs008")
        return f"{head}pacs028{tail}" if head or tail else self.endpoint_path.rstrip("/") + "/pacs028"


class SimulatorConfig(_Strict):
    """Behaviour of the clearing simulator that stands in for the rail locally."""

    latency_ms_min: int = Field(default=0, ge=0, le=60_000)
    latency_ms_p50: int = Field(default=5, ge=0, le=60_000)
    latency_ms_max: int = Field(default=30, ge=0, le=120_000)
    reject_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Creditor account numbers (or IBANs) the simulated receiving banks do not know:
    # the simulator rejects them with AC03, which makes FAILED paths reproducible.
    unknown_creditor_accounts: tuple[str, ...] = ()
    # Faults for status inquiry tests: the share of pacs.008 messages the rail never
    # receives (lost on the way: no record, no answer in time), and a delay between
    # settling a payment and answering (the rail settles, the answer comes too late).
    loss_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    response_delay_ms: int = Field(default=0, ge=0, le=120_000)
    # The rail answers no status inquiry (503) while this is on.
    inquiry_outage: bool = False


class SettlementConfig(_Strict):
    mode: Literal["rtgs", "deferred_net"] = "rtgs"
    # Deferred net: the netting cycle, 60 s when unset. RTGS settles gross at acceptance,
    # so its cycle only groups payments for reporting and reconciliation: the UTC business
    # day when unset (tests set a few seconds to see cycles close).
    cycle_length_s: int | None = Field(default=None, gt=0, le=86_400)
    # A cycle closes (and is reconciled against the rail's report) this long after its
    # end, so that payments the rail accepted just before the end, whose execution result
    # is still on its way to settlement, are counted in it.
    close_grace_s: float = Field(default=30.0, ge=0, le=3_600)

    @property
    def cycle_seconds(self) -> int:
        if self.cycle_length_s is not None:
            return self.cycle_length_s
        return 60 if self.mode == "deferred_net" else 86_400


class BreakerConfig(_Strict):
    """The circuit breaker around the rail's clearing calls (see orchestrator/circuit_breaker.py)."""

    # Calls counted over a sliding window; the breaker opens only with at least
    # `min_calls` in it, so one failure after a quiet hour does not stop the rail.
    window_s: float = Field(default=30.0, gt=0, le=3_600)
    min_calls: int = Field(default=10, ge=1, le=100_000)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    # A call slower than this counts as slow; too many slow calls open the breaker too.
    slow_call_ms: int = Field(default=3_000, gt=0, le=600_000)
    slow_call_rate_threshold: float = Field(default=0.8, gt=0, le=1)
    # How long it stays open before half-open probes, and how many probes decide.
    open_s: float = Field(default=5.0, gt=0, le=3_600)
    half_open_probes: int = Field(default=3, ge=1, le=1_000)


class StatusInquiryConfig(_Strict):
    """Asking the rail (pacs.028 -> pacs.002) what became of a payment whose clearing
    call timed out or was answered unreadably (see orchestrator/status_inquiry.py)."""

    # "Not received" ends a payment FAILED only once the rail's time limit plus this
    # margin has passed: a pacs.008 still on its way cannot settle after that.
    not_found_margin_s: float = Field(default=2.0, ge=0, le=3_600)
    # After the time limit (plus margin), this many unanswered inquiries (the rail
    # unreachable, unreadable or still pending), at these delays, before the payment is
    # dead-lettered for a person; the last delay repeats if there are more rounds.
    rounds_max: int = Field(default=5, ge=1, le=100)
    backoff_s: tuple[float, ...] = Field(default=(1.0, 2.0, 4.0, 8.0, 16.0), min_length=1)
    # Before the time limit, a pending or unanswered inquiry is asked again this soon.
    early_retry_s: float = Field(default=1.0, gt=0, le=3_600)

    @field_validator("backoff_s")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay <= 0 for delay in value):
            raise ValueError("status inquiry delays must be positive")
        return value

    def delay_s(self, round_number: int) -> float:
        """The wait after unanswered round `round_number` (1-based)."""
        return self.backoff_s[min(round_number, len(self.backoff_s)) - 1]

    def longest_wait_after_limit_s(self) -> float:
        """From the time limit to the last possible inquiry: margin plus every delay."""
        return self.not_found_margin_s + sum(self.delay_s(n) for n in range(1, self.rounds_max))


class RailConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")
    display_name: str
    currencies: tuple[str, ...]
    # How the creditor's account is identified on this rail: by IBAN, or by an account
    # number with a bank code of the given scheme.
    creditor_account: Literal["iban", "bank_code"]
    bank_code_scheme: BankCodeScheme | None = None
    max_amount: Decimal
    priority: int = 100
    # Fields this rail's market practice requires on every payment (e.g. UK Faster
    # Payments carries a payment reference); a payment without them does not fit the rail.
    mandatory_fields: tuple[MandatoryField, ...] = ()
    clearing: ClearingConfig
    simulator: SimulatorConfig = SimulatorConfig()
    settlement: SettlementConfig = SettlementConfig()
    # How long after routing a payment may wait for this rail (breaker open, transient
    # faults, slow answers) before it ends FAILED and its reservation is released.
    time_limit_s: float = Field(default=30.0, gt=0, le=86_400)
    breaker: BreakerConfig = BreakerConfig()
    status_inquiry: StatusInquiryConfig = StatusInquiryConfig()

    @model_validator(mode="after")
    def _scheme_matches_identification(self) -> "RailConfig":
        if self.creditor_account == "bank_code" and self.bank_code_scheme is None:
            raise ValueError(f"rail {self.name}: bank_code rails need bank_code_scheme")
        return self


class WatchlistEntry(_Strict):
    name: str = Field(min_length=2)
    list_name: str
    entry_id: str


class SanctionsConfig(_Strict):
    # Scores are rapidfuzz token-set similarities in 0..100 after normalisation; the
    # review band sits below the block threshold so near misses reach a person.
    block_score: float = Field(default=92.0, gt=0, le=100)
    review_score: float = Field(default=85.0, gt=0, le=100)
    watchlist: tuple[WatchlistEntry, ...] = ()

    @model_validator(mode="after")
    def _bands_ordered(self) -> "SanctionsConfig":
        if self.review_score > self.block_score:
            raise ValueError("sanctions.review_score must not exceed block_score")
        return self


class FraudConfig(_Strict):
    max_amount: Decimal
    review_amount: Decimal
    velocity_window_s: int = Field(default=60, gt=0, le=86_400)
    velocity_max_count: int = Field(default=50, gt=0)
    velocity_max_amount: Decimal
    block_score: int = Field(default=80, ge=0, le=100)
    review_score: int = Field(default=50, ge=0, le=100)


class AccountFunding(_Strict):
    """One customer account's own line: an IBAN, or "<bank code>/<account number>"."""

    account: str = Field(min_length=3, max_length=70)
    credit_limit: Decimal = Field(ge=0)


class FundingConfig(_Strict):
    """Customer accounts open on first use with `credit_limit` (the local default set-up),
    or with their own line from `accounts`. A line is set when the ledger opens the account."""

    open_on_first_use: bool = True
    credit_limit: Decimal
    accounts: tuple[AccountFunding, ...] = ()

    def credit_limit_for(self, account_identifier: str) -> Decimal | None:
        """The account's line; None when it may not open on first use and has none.
        (Looked up each time: an account opens once, and a cached map would survive a
        `model_copy` with other accounts.)"""
        wanted = account_identifier.replace(" ", "").upper()
        for entry in self.accounts:
            if entry.account.replace(" ", "").upper() == wanted:
                return entry.credit_limit
        return self.credit_limit if self.open_on_first_use else None


class RoutingConfig(_Strict):
    verdict_timeout_s: int = Field(default=30, gt=0, le=3_600)


class ReviewConfig(_Strict):
    """How a HELD payment is reviewed (POST /v1/payments/{id}/review; routing decides)."""

    # Maker-checker: an approval releases the payment only once a second reviewer, not
    # the first, confirms it. A possible sanctions match always needs the checker, even
    # with this off (orchestrator/reviews.py, `requires_checker`).
    maker_checker: bool = True
    # A held payment nobody released within this long after its hold ends REJECTED
    # (`review_time_limit_exceeded`): a hold must end, and failing closed is the safe
    # end. A day by default, so a hold survives a night; at most a week, after which the
    # payment's requested date and the payer's patience are long gone.
    time_limit_s: int = Field(default=86_400, gt=0, le=604_800)


# The statuses a webhook can report: the terminal ones and HELD, the one that waits for a
# person (tracking's statuses, orchestrator/stages/tracking.py).
NotifiedStatus = Literal["HELD", "SETTLED", "REJECTED", "FAILED"]
NOTIFIED_STATUSES: tuple[str, ...] = ("HELD", "SETTLED", "REJECTED", "FAILED")


class WebhookEndpointConfig(_Strict):
    """One receiver of the tenant's status webhooks (orchestrator/stages/notifications.py).

    The signing secret is never in this file: `secret_env` names the environment variable
    that holds it (ECS: injected from Secrets Manager; EKS: from a Kubernetes Secret), or
    `secret_file` a file that does. Either holds one `whsec_...` secret, or several
    separated by spaces while a rotation lasts (all of them sign)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    url: str = Field(min_length=8, max_length=2_048)
    statuses: tuple[NotifiedStatus, ...] = NOTIFIED_STATUSES
    secret_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")
    secret_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("a webhook url is http:// or https://")
        if not parts.hostname:
            raise ValueError("a webhook url names a host")
        if parts.username or parts.password:
            raise ValueError("a webhook url carries no user or password (the signature authenticates)")
        if parts.fragment:
            raise ValueError("a webhook url has no #fragment")
        return value

    @field_validator("statuses")
    @classmethod
    def _some_statuses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("statuses lists each notified status at most once, and at least one")
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> "WebhookEndpointConfig":
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError(f"webhook endpoint {self.name}: give exactly one of secret_env and secret_file")
        return self


class NotificationsConfig(_Strict):
    """The tenant's status webhooks: where they go, and whether a receiver may sit on an
    internal address."""

    endpoints: tuple[WebhookEndpointConfig, ...] = Field(default=(), max_length=10)
    # Off: an endpoint whose host resolves to a loopback, private, link-local or metadata
    # address is refused (server-side request forgery into the operator's network). On
    # only for a receiver on this machine or in the bank's own network (tests, `payorch up`).
    allow_private_addresses: bool = False

    @model_validator(mode="after")
    def _names_unique(self) -> "NotificationsConfig":
        names = [endpoint.name for endpoint in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError("notifications.endpoints: each endpoint has its own name")
        if not self.allow_private_addresses:
            for endpoint in self.endpoints:
                why = literal_host_refused(urlsplit(endpoint.url).hostname or "")
                if why is not None:
                    raise ValueError(f"webhook endpoint {endpoint.name}: {why}; set notifications."
                                     "allow_private_addresses only for a receiver in your own network")
        return self


class TenantConfig(_Strict):
    tenant_id: str = Field(pattern=r"^[a-z][a-z0-9]{1,15}$")
    display_name: str
    # The tenant's regions (two for active/active), each with its Kafka cluster and the
    # replication naming in use (orchestrator/topology.py). A bare name is a region
    # without a cluster configured.
    # (How many, one or two, is checked with the rest in `validate_regions`, so that a
    # typo in one region is reported alone.)
    regions: tuple[RegionConfig, ...]
    currencies: tuple[str, ...] = Field(min_length=1)
    max_amount: Decimal
    duplicate_window_s: int = Field(default=86_400, gt=0)
    rails: tuple[RailConfig, ...] = Field(min_length=1)
    sanctions: SanctionsConfig = SanctionsConfig()
    fraud: FraudConfig
    funding: FundingConfig
    routing: RoutingConfig = RoutingConfig()
    review: ReviewConfig = ReviewConfig()
    notifications: NotificationsConfig = NotificationsConfig()

    @field_validator("regions", mode="before")
    @classmethod
    def _bare_region_names(cls, value: object) -> object:
        return regions_from_yaml(value)

    @field_validator("regions")
    @classmethod
    def _regions_agree(cls, value: tuple[RegionConfig, ...]) -> tuple[RegionConfig, ...]:
        validate_regions(value)
        return value

    @field_validator("currencies")
    @classmethod
    def _currencies_are_iso(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            try:
                to_minor_units("1", code)
            except MoneyError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _rails_cover_currencies(self) -> "TenantConfig":
        for rail in self.rails:
            unknown = set(rail.currencies) - set(self.currencies)
            if unknown:
                raise ValueError(f"rail {rail.name} uses currencies {sorted(unknown)} the tenant does not allow")
        return self

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(region.name for region in self.regions)

    def topic_in_other_region(self, region: str, topic: str) -> str:
        """`topic`'s name, as it exists in `region`, in this tenant's other region
        (orchestrator/topology.py, `name_in_other_region`)."""
        return name_in_other_region(self.regions, region, topic, tenant=self.tenant_id)

    @cached_property
    def rails_by_name(self) -> dict[str, RailConfig]:
        return {rail.name: rail for rail in self.rails}

    def limit_minor(self, amount: Decimal, currency: str) -> int:
        """A configured decimal limit expressed in the currency's minor units."""
        return to_minor_units(format(amount, "f"), currency) if amount > 0 else 0


class TenantConfigError(ValueError):
    pass


def load_tenant_file(path: Path) -> TenantConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TenantConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TenantConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = TenantConfig.model_validate(raw)
    except ValidationError as exc:
        raise TenantConfigError(f"{path}: " + "; ".join(_describe_error(error) for error in exc.errors())) from exc
    except ValueError as exc:
        raise TenantConfigError(f"{path}: {exc}") from exc
    if config.tenant_id != path.stem:
        raise TenantConfigError(f"{path}: tenant_id {config.tenant_id!r} must match the file name")
    return config


def _describe_error(error: dict) -> str:
    """One validation error as `key.path: what is wrong`; an unknown key says so."""
    where = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
    if error.get("type") == "extra_forbidden":
        return f"{where}: unknown key (not in the tenant schema; a typo?)"
    message = error.get("msg", "invalid")
    return f"{where}: {message.removeprefix('Value error, ')}"


def load_tenants(directory: Path) -> dict[str, TenantConfig]:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise TenantConfigError(f"no tenant files (*.yaml) in {directory}")
    return {cfg.tenant_id: cfg for cfg in (load_tenant_file(path) for path in files)}


def load_selected_tenants(directory: Path, wanted: set[str] | None) -> dict[str, TenantConfig]:
    """The tenant files of `directory`, restricted to `wanted` (PAYORCH_TENANTS) if given."""
    tenants = load_tenants(directory)
    if wanted:
        unknown = wanted - set(tenants)
        if unknown:
            raise ValueError(f"PAYORCH_TENANTS names unknown tenants: {sorted(unknown)}")
        tenants = {tid: cfg for tid, cfg in tenants.items() if tid in wanted}
    return tenants


def missing_mandatory_fields(rail: RailConfig, payment) -> list[str]:
    """The rail's mandatory fields that `payment` leaves empty (pure; shared by routing
    and the clearing simulator, so both read the same market-practice rule)."""
    missing = []
    for path in rail.mandatory_fields:
        value = payment
        for part in path.split("."):
            value = getattr(value, part, None)
        if value is None or (isinstance(value, str) and not value.strip()):
            missing.append(path)
    return missing
