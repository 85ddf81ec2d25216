"""A tenant's regions as configuration: where each region's Kafka cluster is, how clients
authenticate to it, and how the other region's topics are named once replicated into it.

The schema is the `regions` block of a tenant file (orchestrator/tenants.py reads it).
`resolve_cluster` turns it, with the process's environment, into the one cluster a
process connects to; `name_in_other_region` gives a topic's name across the replication.
Replication itself, ownership and failover are not built yet (issue #11, items 2-4): this
module only says where things are and what they are called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# An AWS Region name (eu-west-1, us-gov-west-1, ap-southeast-2, ...): what MSK IAM signs for.
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"
# A region name: an AWS Region, or any short lower-case label (`local-a`, `dc-2`).
REGION_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
# Process regions named like this are local stand-ins: they connect to the process's own
# PAYORCH_KAFKA__* cluster, as `payorch up` always has (see `resolve_cluster`).
LOCAL_REGION_PREFIX = "local-"
# Characters Kafka allows in a topic name.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


class TopologyError(ValueError):
    """The tenant files and the environment do not name a usable cluster for a region."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaClusterConfig(_Strict):
    """A region's Kafka cluster, as a tenant file gives it."""

    # Comma-separated host:port list. Usually left out of the committed file and given by
    # the environment (PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS, or, for the region the
    # process runs in, PAYORCH_KAFKA__BOOTSTRAP_SERVERS), because an MSK cluster's broker
    # names exist only once it is created. See `bootstrap_for`.
    bootstrap_servers: str | None = Field(default=None, min_length=1)
    # plaintext: no TLS, no authentication (a local cluster on loopback).
    # msk_iam: SASL_SSL with OAUTHBEARER, a token signed by aws-msk-iam-sasl-signer-python
    # with the default AWS credential chain; the brokers' IAM listener is port 9098.
    security: Literal["plaintext", "msk_iam"]
    # msk_iam only: the AWS Region the token is signed for. Defaults to the region's name.
    aws_region: str | None = Field(default=None, pattern=AWS_REGION_PATTERN)

    @model_validator(mode="after")
    def _aws_region_only_for_iam(self) -> "KafkaClusterConfig":
        if self.aws_region is not None and self.security != "msk_iam":
            raise ValueError("kafka.aws_region applies only to security: msk_iam")
        return self


class ReplicationNaming(str, Enum):
    """How a replicator names the other region's topics in this region.

    - msk_replicator_identical: MSK Replicator, TopicNameConfiguration IDENTICAL. Same
      name; MSK stops loops with its own record header (`__mskmr`).
    - msk_replicator_prefixed: MSK Replicator, PREFIXED_WITH_SOURCE_CLUSTER_ALIAS (MSK's
      and deploy/aws/cloudformation/replicator.yaml's default): `<alias>.<topic>`, where MSK
      assigns the alias when the replicator is created (DescribeReplicator,
      SourceKafkaClusterAlias). The separator is always ".".
    - mm2_identity: MirrorMaker 2's IdentityReplicationPolicy. Same name, and MM2 cannot
      detect cycles with it, so it may replicate one way only (refused both ways).
    - mm2_default: MirrorMaker 2's DefaultReplicationPolicy: `<alias><separator><topic>`,
      the alias being the source cluster's name in MM2's `clusters`, the separator
      `replication.policy.separator` ("." unless configured).
    """

    MSK_REPLICATOR_IDENTICAL = "msk_replicator_identical"
    MSK_REPLICATOR_PREFIXED = "msk_replicator_prefixed"
    MM2_IDENTITY = "mm2_identity"
    MM2_DEFAULT = "mm2_default"

    @property
    def replicator(self) -> Literal["msk_replicator", "mirrormaker2"]:
        return "msk_replicator" if self.value.startswith("msk_") else "mirrormaker2"

    @property
    def prefixed(self) -> bool:
        """Whether a replicated topic's name carries the source cluster's alias."""
        return self in (ReplicationNaming.MSK_REPLICATOR_PREFIXED, ReplicationNaming.MM2_DEFAULT)

    @property
    def default_separator(self) -> str | None:
        """The separator between alias and topic (None: names are not prefixed)."""
        return "." if self.prefixed else None

    @property
    def separator_configurable(self) -> bool:
        """MM2's separator is a setting; MSK Replicator's is fixed."""
        return self is ReplicationNaming.MM2_DEFAULT

    @property
    def prevents_cycles(self) -> bool:
        """Whether bidirectional replication with this naming avoids copying copies back."""
        return self is not ReplicationNaming.MM2_IDENTITY

    @property
    def replicator_setting(self) -> str:
        """The value the replicator itself is configured with."""
        return {
            ReplicationNaming.MSK_REPLICATOR_IDENTICAL: "IDENTICAL",
            ReplicationNaming.MSK_REPLICATOR_PREFIXED: "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS",
            ReplicationNaming.MM2_IDENTITY: "org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
            ReplicationNaming.MM2_DEFAULT: "org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
        }[self]


class ReplicationConfig(_Strict):
    """How the tenant's other region's topics arrive in this region (the replicator that
    writes into this region's cluster, as MSK Replicator and MM2 are both configured on
    their target side)."""

    naming: ReplicationNaming
    # Prefixed namings only: the alias of the other region's cluster as this region's
    # replicator knows it. MM2: defaults to the other region's name (MM2's aliases are
    # ours to choose). MSK Replicator: assigned by MSK at creation, so it may be unset
    # until the replicator exists; naming a replicated topic then fails clearly.
    source_alias: str | None = Field(default=None, min_length=1, max_length=200)
    # mm2_default only: MM2's `replication.policy.separator`.
    separator: str | None = Field(default=None, min_length=1, max_length=10)

    @model_validator(mode="after")
    def _fits_the_naming(self) -> "ReplicationConfig":
        naming = self.naming
        if not naming.prefixed and self.source_alias is not None:
            raise ValueError(f"replication.source_alias does not apply to {naming.value}: names are not prefixed")
        if self.separator is not None and not naming.separator_configurable:
            raise ValueError(f"replication.separator does not apply to {naming.value}"
                             + (" (MSK Replicator always uses '.')" if naming.prefixed else ""))
        if self.separator is not None and not _TOPIC_CHARS.match(self.separator):
            raise ValueError(f"replication.separator {self.separator!r} has characters a topic name cannot hold")
        if self.source_alias is not None:
            if not _TOPIC_CHARS.match(self.source_alias):
                raise ValueError(f"replication.source_alias {self.source_alias!r} has characters a topic name "
                                 "cannot hold")
            if self.effective_separator in self.source_alias:
                raise ValueError(f"replication.source_alias {self.source_alias!r} contains the separator "
                                 f"{self.effective_separator!r}: a replicated name could not be read back")
        return self

    @property
    def effective_separator(self) -> str:
        return self.separator or self.naming.default_separator or ""


class RegionConfig(_Strict):
    """One of a tenant's regions. Without `kafka` the region is named but has no cluster:
    a process that runs in it refuses to start (`resolve_cluster`)."""

    name: str = Field(pattern=REGION_NAME_PATTERN)
    kafka: KafkaClusterConfig | None = None
    # How the other region's topics arrive here; None: nothing is replicated into it.
    replication: ReplicationConfig | None = None

    @model_validator(mode="after")
    def _iam_signs_for_an_aws_region(self) -> "RegionConfig":
        if (self.kafka is not None and self.kafka.security == "msk_iam" and self.kafka.aws_region is None
                and not re.match(AWS_REGION_PATTERN, self.name)):
            raise ValueError(f"region {self.name}: security msk_iam signs for an AWS Region, and {self.name!r} "
                             "is not one; set kafka.aws_region")
        return self

    @property
    def signing_region(self) -> str | None:
        """The AWS Region an MSK IAM token for this cluster is signed for."""
        if self.kafka is None or self.kafka.security != "msk_iam":
            return None
        return self.kafka.aws_region or self.name


def regions_from_yaml(value: object) -> object:
    """A tenant file's `regions`, where a bare name stands for a region with no cluster
    configured (the form tenant files had before regions had clusters)."""
    if isinstance(value, (list, tuple)):
        return [{"name": item} if isinstance(item, str) else item for item in value]
    return value


def validate_regions(regions: Sequence[RegionConfig]) -> None:
    """Rules across a tenant's regions (raises ValueError)."""
    names = [region.name for region in regions]
    if not 1 <= len(names) <= 2:
        raise ValueError(f"a tenant has one or two regions, not {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"regions names a region twice: {names}")
    if len(regions) == 1 and regions[0].replication is not None:
        raise ValueError(f"region {names[0]}: replication needs a second region to replicate from")
    if len(regions) == 2:
        namings = [region.replication.naming for region in regions if region.replication is not None]
        if len(namings) == 2 and not all(naming.prevents_cycles for naming in namings):
            raise ValueError("mm2_identity in both regions would replicate every record back and forth forever "
                             "(MirrorMaker 2 cannot detect cycles with IdentityReplicationPolicy): use "
                             "mm2_default, or replicate one way only")


# --------------------------------------------------------------------------------------
# Topic names across the replication
# --------------------------------------------------------------------------------------

def _region(regions: Sequence[RegionConfig], name: str, tenant: str) -> RegionConfig:
    for region in regions:
        if region.name == name:
            return region
    raise TopologyError(f"tenant {tenant} has no region {name!r} (its regions: "
                        f"{', '.join(r.name for r in regions)})")


def other_region(regions: Sequence[RegionConfig], name: str, tenant: str = "?") -> RegionConfig:
    _region(regions, name, tenant)
    others = [region for region in regions if region.name != name]
    if not others:
        raise TopologyError(f"tenant {tenant} has only the region {name}: there is no other region")
    return others[0]


def _prefix(replication: ReplicationConfig, source: RegionConfig, target: RegionConfig, tenant: str) -> str:
    """What the target's replicator puts in front of the source's topic names."""
    if not replication.naming.prefixed:
        return ""
    alias = replication.source_alias
    if alias is None and replication.naming is ReplicationNaming.MM2_DEFAULT:
        alias = source.name
    if alias is None:
        raise TopologyError(
            f"tenant {tenant}: region {target.name} replicates {source.name} with MSK Replicator's prefixed "
            f"names, but its source cluster alias is not configured: set regions[{target.name}]"
            ".replication.source_alias to the replicator's SourceKafkaClusterAlias (aws kafka "
            "describe-replicator), which MSK assigns when it creates the replicator")
    return alias + replication.effective_separator


def name_in_other_region(regions: Sequence[RegionConfig], region: str, topic: str, *, tenant: str = "?") -> str:
    """The name under which `topic`, as it exists in `region`, is seen in the tenant's
    other region.

    A topic of `region` itself is seen there under the other region's replication naming
    (`<alias><separator><topic>` when prefixed, the same name otherwise). A topic that is
    already a copy of the other region's (it carries this region's prefix) is the other
    region's original, whose name there is the name without the prefix: replicators do
    not copy a copy back.
    """
    if not topic or not _TOPIC_CHARS.match(topic):
        raise TopologyError(f"{topic!r} is not a Kafka topic name")
    here = _region(regions, region, tenant)
    there = other_region(regions, region, tenant)
    if here.replication is not None and here.replication.naming.prefixed:
        prefix = _prefix(here.replication, there, here, tenant)
        if topic.startswith(prefix) and len(topic) > len(prefix):
            return topic[len(prefix):]
    if there.replication is None:
        raise TopologyError(f"tenant {tenant}: region {there.name} has no replication configured, so the "
                            f"topics of {region} are not seen there")
    return _prefix(there.replication, here, there, tenant) + topic


def replicated_names(regions: Sequence[RegionConfig], region: str, topics: Iterable[str], *,
                     tenant: str = "?") -> dict[str, str]:
    """`name_in_other_region` for several topics: {name in `region`: name in the other}."""
    return {topic: name_in_other_region(regions, region, topic, tenant=tenant) for topic in topics}


# --------------------------------------------------------------------------------------
# The cluster a process connects to
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedCluster:
    """One region's cluster with its bootstrap servers found."""

    bootstrap_servers: str
    security: Literal["plaintext", "msk_iam"]
    # The AWS Region MSK IAM tokens are signed for (None for plaintext).
    signing_region: str | None
    # Where the bootstrap servers came from, for error messages and logs.
    source: str


def region_env_keys(tenant: str, region: str) -> tuple[str, str]:
    """The keys of PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS that can name a region's
    brokers, the more specific first."""
    return f"{tenant}/{region}", region


def bootstrap_for(tenant: str, region: RegionConfig, *, own_region: str, own_bootstrap: str | None,
                  region_bootstrap: Mapping[str, str], file: str | None = None) -> tuple[str | None, str]:
    """A region's bootstrap servers and where they came from: the first of
    PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS["<tenant>/<region>"], ["<region>"];
    PAYORCH_KAFKA__BOOTSTRAP_SERVERS if the process runs in that region; the tenant file."""
    for key in region_env_keys(tenant, region.name):
        if region_bootstrap.get(key):
            return region_bootstrap[key], f'PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS["{key}"]'
    if region.name == own_region and own_bootstrap:
        return own_bootstrap, "PAYORCH_KAFKA__BOOTSTRAP_SERVERS"
    if region.kafka is not None and region.kafka.bootstrap_servers:
        return region.kafka.bootstrap_servers, file or f"tenants/{tenant}.yaml"
    return None, ""


def resolve_region(tenant: str, regions: Sequence[RegionConfig], region: str, *, own_region: str,
                   own_bootstrap: str | None, region_bootstrap: Mapping[str, str],
                   tenants_dir: str = "tenants") -> ResolvedCluster:
    """The cluster of one tenant's region, or a TopologyError that says what is missing."""
    config = _region(regions, region, tenant)
    file = f"{tenants_dir}/{tenant}.yaml"
    index = [r.name for r in regions].index(region)
    if config.kafka is None:
        raise TopologyError(
            f"{file}: region {region} has no Kafka cluster configured: give regions[{index}] a "
            "`kafka:` block (security, and bootstrap_servers or the environment's)")
    bootstrap, source = bootstrap_for(tenant, config, own_region=own_region, own_bootstrap=own_bootstrap,
                                      region_bootstrap=region_bootstrap, file=file)
    if not bootstrap:
        own = f", or PAYORCH_KAFKA__BOOTSTRAP_SERVERS in a process that runs in {region}" if region == own_region else ""
        raise TopologyError(
            f"{file}: region {region} has no bootstrap servers: set regions[{index}].kafka."
            f"bootstrap_servers, or PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS="
            f"'{{\"{tenant}/{region}\": \"host:port,...\"}}' (or the key \"{region}\"){own}")
    return ResolvedCluster(bootstrap_servers=bootstrap, security=config.kafka.security,
                           signing_region=config.signing_region, source=source)


def is_local_region(name: str) -> bool:
    return name.startswith(LOCAL_REGION_PREFIX)


def resolve_process_cluster(tenants: Mapping[str, Sequence[RegionConfig]], region: str, *,
                            own_bootstrap: str | None, region_bootstrap: Mapping[str, str],
                            tenants_dir: str = "tenants") -> ResolvedCluster | None:
    """The one cluster a process in `region` hosting `tenants` ({tenant: its regions})
    connects to; None for a local region (`local-*`, the default `local-a`), which keeps
    the process's own PAYORCH_KAFKA__* settings (`payorch up`, tests)."""
    if not tenants:
        raise TopologyError("no tenants to resolve a cluster for")
    if is_local_region(region) and not any(region in {r.name for r in regs} for regs in tenants.values()):
        return None
    outside = sorted(tenant for tenant, regs in tenants.items() if region not in {r.name for r in regs})
    if outside:
        listed = "; ".join(f"{t}: {', '.join(r.name for r in tenants[t])}" for t in outside)
        raise TopologyError(
            f"PAYORCH_REGION={region} is not a region of tenant(s) {', '.join(outside)} ({listed}). A process "
            f"runs in one region of the tenants it hosts (PAYORCH_TENANTS), or in a local region "
            f"({LOCAL_REGION_PREFIX}*) with PAYORCH_KAFKA__BOOTSTRAP_SERVERS")
    resolved = {tenant: resolve_region(tenant, regs, region, own_region=region, own_bootstrap=own_bootstrap,
                                       region_bootstrap=region_bootstrap, tenants_dir=tenants_dir)
                for tenant, regs in sorted(tenants.items())}
    clusters = {(c.bootstrap_servers, c.security, c.signing_region) for c in resolved.values()}
    if len(clusters) > 1:
        described = "; ".join(f"{t}: {c.security} at {c.bootstrap_servers} ({c.source})" for t, c in resolved.items())
        raise TopologyError(
            f"the tenants of this process have different clusters in {region} ({described}); a process connects "
            "to one cluster: run each tenant's processes separately (PAYORCH_TENANTS)")
    return next(iter(resolved.values()))
