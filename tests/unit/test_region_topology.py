"""Topology as configuration (issue #11, item 1): each tenant file names its two regions,
each with its Kafka cluster (bootstrap servers, security) and the replication naming in
use; a process finds its cluster from them and its environment (orchestrator/topology.py,
orchestrator/kafka_clients.py `region_kafka`). Replication itself is not built yet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator import kafka_clients
from orchestrator.msk_iam import MskIamTokenCallback
from orchestrator.settings import REPO_ROOT, KafkaSettings, Settings
from orchestrator.tenants import TenantConfig, TenantConfigError, load_tenant_file, load_tenants
from orchestrator.topology import (
    RegionConfig,
    ReplicationConfig,
    ReplicationNaming,
    TopologyError,
    name_in_other_region,
    replicated_names,
)
from orchestrator.topics import TopicNamer

TENANTS = REPO_ROOT / "tenants"
RECEIVED = "emea.payments.received.v1"
ALL_TENANTS = {"na": ("us-east-1", "us-west-2"), "emea": ("eu-west-1", "eu-central-1"),
               "latam": ("sa-east-1", "us-east-1"), "apac": ("ap-southeast-2", "ap-southeast-1")}


def tenant_dir(tmp_path: Path, regions: object, *, tenant: str = "emea", others: bool = False) -> Path:
    """A tenants directory with emea's file (its `regions` replaced) and, if asked, the
    other committed tenant files unchanged."""
    directory = tmp_path / "tenants"
    directory.mkdir(exist_ok=True)
    raw = yaml.safe_load((TENANTS / f"{tenant}.yaml").read_text())
    raw["regions"] = regions
    (directory / f"{tenant}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if others:
        for path in TENANTS.glob("*.yaml"):
            if path.stem != tenant:
                (directory / path.name).write_text(path.read_text())
    return directory


def settings_for(tenants_dir: Path, region: str, **kafka) -> Settings:
    return Settings(tenants_dir=tenants_dir, region=region, kafka=KafkaSettings(**kafka))


def iam(name: str, **extra) -> dict:
    return {"name": name, "kafka": {"security": "msk_iam", **extra}}


# --------------------------------------------------------------------------------------
# The committed tenant files
# --------------------------------------------------------------------------------------

def test_every_tenant_file_names_two_aws_regions_with_msk_iam_clusters_and_msk_replicator_naming():
    tenants = load_tenants(TENANTS)
    assert {tid: cfg.region_names for tid, cfg in tenants.items()} == ALL_TENANTS
    for tenant in tenants.values():
        for region in tenant.regions:
            assert region.kafka is not None and region.kafka.security == "msk_iam"
            assert region.signing_region == region.name
            # No account's broker names in the repository: they come from the environment.
            assert region.kafka.bootstrap_servers is None
            assert region.replication == ReplicationConfig(naming=ReplicationNaming.MSK_REPLICATOR_PREFIXED)


def test_the_tenant_files_naming_is_what_the_replicator_template_deploys():
    # deploy/aws/cloudformation/replicator.yaml: TopicNameConfiguration's default, and the
    # values it allows, are exactly the MSK namings' replicator settings.
    template = (REPO_ROOT / "deploy" / "aws" / "cloudformation" / "replicator.yaml").read_text()
    block = re.search(r"\n  TopicNameConfiguration:\n((?:    .*\n)+)", template).group(1)
    default = re.search(r"Default: (\S+)", block).group(1)
    allowed = set(re.search(r"AllowedValues: \[([^\]]+)\]", block).group(1).replace(" ", "").split(","))
    assert allowed == {n.replicator_setting for n in ReplicationNaming if n.replicator == "msk_replicator"}
    assert default == ReplicationNaming.MSK_REPLICATOR_PREFIXED.replicator_setting


# --------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("regions, where", [
    ([{**iam("eu-west-1"), "cluster": "x"}, iam("eu-central-1")], "regions.0.cluster"),
    ([{"name": "eu-west-1", "kafka": {"security": "msk_iam", "bootstrap_server": "b:9098"}}, iam("eu-central-1")],
     "regions.0.kafka.bootstrap_server"),
    ([iam("eu-west-1"), {**iam("eu-central-1"), "replication": {"naming": "mm2_default", "prefix": "a."}}],
     "regions.1.replication.prefix"),
])
def test_an_unknown_key_is_refused_naming_the_file_and_the_key(tmp_path, regions, where):
    directory = tenant_dir(tmp_path, regions)
    with pytest.raises(TenantConfigError) as raised:
        load_tenant_file(directory / "emea.yaml")
    message = str(raised.value)
    assert message.startswith(str(directory / "emea.yaml") + ": ")
    assert f"{where}: unknown key" in message


@pytest.mark.parametrize("regions, problem", [
    ([{"name": "eu-west-1", "kafka": {"security": "sasl_plain"}}], "regions.0.kafka.security"),
    ([iam("eu-west-1"), iam("eu-west-1")], "names a region twice"),
    ([iam("eu-west-1"), iam("eu-central-1"), iam("eu-west-2")], "regions"),
    ([{**iam("eu-west-1"), "replication": {"naming": "msk_replicator_identical"}}], "needs a second region"),
    ([{"name": "dc-one", "kafka": {"security": "msk_iam"}}], "set kafka.aws_region"),
    ([{"name": "local-a", "kafka": {"security": "plaintext", "aws_region": "eu-west-1"}}],
     "aws_region applies only to security: msk_iam"),
    ([{**iam("eu-west-1"), "replication": {"naming": "mm2_identity"}},
      {**iam("eu-central-1"), "replication": {"naming": "mm2_identity"}}], "cannot detect cycles"),
    ([iam("eu-west-1"), {**iam("eu-central-1"), "replication": {"naming": "msk_replicator_identical",
                                                                 "source_alias": "a"}}], "names are not prefixed"),
    ([iam("eu-west-1"), {**iam("eu-central-1"), "replication": {"naming": "msk_replicator_prefixed",
                                                                 "separator": "_"}}], "always uses '.'"),
    ([iam("eu-west-1"), {**iam("eu-central-1"), "replication": {"naming": "mm2_default",
                                                                 "source_alias": "eu.west"}}], "contains the separator"),
    ([iam("eu-west-1"), {**iam("eu-central-1"), "replication": {"naming": "mm2_default",
                                                                 "source_alias": "a/b"}}], "cannot hold"),
])
def test_inconsistent_regions_are_refused_with_the_reason(tmp_path, regions, problem):
    with pytest.raises(TenantConfigError, match=re.escape(problem)):
        load_tenant_file(tenant_dir(tmp_path, regions) / "emea.yaml")


def test_bare_region_names_still_load_as_regions_without_a_cluster(tmp_path):
    tenant = load_tenant_file(tenant_dir(tmp_path, ["eu-west-1", "eu-central-1"]) / "emea.yaml")
    assert tenant.regions == (RegionConfig(name="eu-west-1"), RegionConfig(name="eu-central-1"))
    assert tenant.region_names == ("eu-west-1", "eu-central-1")


# --------------------------------------------------------------------------------------
# The cluster a process connects to
# --------------------------------------------------------------------------------------

def test_the_local_default_keeps_the_process_kafka_settings_unchanged(tmp_path):
    # PAYORCH_REGION defaults to local-a, which no tenant names: `payorch up` and every
    # hand-run stage connect where PAYORCH_KAFKA__BOOTSTRAP_SERVERS says, PLAINTEXT.
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:40123"))
    assert settings.region == "local-a"
    assert kafka_clients.region_kafka(settings) is settings.kafka
    assert kafka_clients.client_config(settings) == {"bootstrap.servers": "127.0.0.1:40123",
                                                     "security.protocol": "PLAINTEXT"}
    with pytest.raises(RuntimeError, match="PAYORCH_KAFKA__BOOTSTRAP_SERVERS"):
        kafka_clients.client_config(Settings())


def test_a_process_in_an_aws_region_gets_its_msk_cluster_with_iam(tmp_path, monkeypatch):
    # What ECS and EKS give a container: its tenant, its region, its region's brokers.
    monkeypatch.setenv("PAYORCH_TENANTS", "emea")
    monkeypatch.setenv("PAYORCH_REGION", "eu-central-1")
    monkeypatch.setenv("PAYORCH_KAFKA__BOOTSTRAP_SERVERS", "b-1.emea.kafka.eu-central-1.amazonaws.com:9098,"
                                                           "b-2.emea.kafka.eu-central-1.amazonaws.com")
    monkeypatch.setenv("PAYORCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PAYORCH_KAFKA__SASL_MECHANISM", "OAUTHBEARER")
    settings = Settings()
    kafka = kafka_clients.region_kafka(settings)
    assert kafka.msk_iam.aws_region == "eu-central-1" and kafka.uses_msk_iam
    for config in (kafka_clients.producer_config(settings, "p"), kafka_clients.consumer_config(settings, "g", "c"),
                   kafka_clients.client_config(settings)):
        assert config["bootstrap.servers"] == ("b-1.emea.kafka.eu-central-1.amazonaws.com:9098,"
                                               "b-2.emea.kafka.eu-central-1.amazonaws.com:9098")
        assert (config["security.protocol"], config["sasl.mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
        assert isinstance(config["oauth_cb"], MskIamTokenCallback)
        assert config["oauth_cb"].auth.aws_region == "eu-central-1"


def test_the_admin_client_is_built_with_the_regions_config_too(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(kafka_clients, "AdminClient", lambda config: seen.append(config) or object())
    settings = settings_for(TENANTS, "eu-west-1", bootstrap_servers="b-1.x:9098")
    settings = settings.model_copy(update={"tenants": "emea"})
    kafka_clients.make_admin(settings)
    assert seen[0]["security.protocol"] == "SASL_SSL" and isinstance(seen[0]["oauth_cb"], MskIamTokenCallback)


def test_a_region_bootstrap_from_the_environment_and_its_precedence(tmp_path, monkeypatch):
    directory = tenant_dir(tmp_path, [
        {"name": "eu-west-1", "kafka": {"security": "plaintext", "bootstrap_servers": "file-west:9092"}},
        {"name": "eu-central-1", "kafka": {"security": "plaintext", "bootstrap_servers": "file-central:9092"}}])
    monkeypatch.setenv("PAYORCH_TENANTS_DIR", str(directory))
    monkeypatch.setenv("PAYORCH_REGION", "eu-west-1")

    def bootstrap() -> str:
        return kafka_clients.region_kafka(Settings()).bootstrap_servers

    assert bootstrap() == "file-west:9092"
    monkeypatch.setenv("PAYORCH_KAFKA__BOOTSTRAP_SERVERS", "own-env:9092")
    assert bootstrap() == "own-env:9092"
    monkeypatch.setenv("PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS", '{"eu-west-1": "region-env:9092"}')
    assert bootstrap() == "region-env:9092"
    monkeypatch.setenv("PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS",
                       '{"eu-west-1": "region-env:9092", "emea/eu-west-1": "tenant-region-env:9092"}')
    assert bootstrap() == "tenant-region-env:9092"
    # PAYORCH_KAFKA__BOOTSTRAP_SERVERS is the process's own region's: the other region's
    # brokers come from the file or from REGION_BOOTSTRAP_SERVERS.
    monkeypatch.setenv("PAYORCH_REGION", "eu-central-1")
    monkeypatch.delenv("PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS")
    assert bootstrap() == "own-env:9092"
    from orchestrator.topology import resolve_region
    tenant = load_tenant_file(directory / "emea.yaml")
    other = resolve_region("emea", tenant.regions, "eu-west-1", own_region="eu-central-1",
                           own_bootstrap="own-env:9092", region_bootstrap={})
    assert (other.bootstrap_servers, other.source) == ("file-west:9092", "tenants/emea.yaml")


def test_a_region_without_a_cluster_is_a_clear_error_at_start(tmp_path):
    directory = tenant_dir(tmp_path, ["eu-west-1", "eu-central-1"])
    settings = settings_for(directory, "eu-west-1", bootstrap_servers="b:9098")
    with pytest.raises(TopologyError, match=re.escape(
            "tenants/emea.yaml: region eu-west-1 has no Kafka cluster configured: give regions[0] a `kafka:` block")):
        kafka_clients.make_producer(settings, "p")


def test_a_region_whose_brokers_nobody_gave_is_a_clear_error_naming_where_to_give_them(tmp_path):
    settings = settings_for(TENANTS, "eu-central-1").model_copy(update={"tenants": "emea"})
    with pytest.raises(TopologyError) as raised:
        kafka_clients.make_consumer(settings, "g", "c")
    message = str(raised.value)
    assert "tenants/emea.yaml: region eu-central-1 has no bootstrap servers" in message
    assert "regions[1].kafka.bootstrap_servers" in message
    assert 'PAYORCH_KAFKA__REGION_BOOTSTRAP_SERVERS=\'{"emea/eu-central-1"' in message
    assert "PAYORCH_KAFKA__BOOTSTRAP_SERVERS in a process that runs in eu-central-1" in message


def test_a_process_region_its_tenants_do_not_have_is_refused(tmp_path):
    # us-east-1 is na's and latam's region, not emea's or apac's.
    settings = settings_for(TENANTS, "us-east-1", bootstrap_servers="b:9098")
    with pytest.raises(TopologyError, match=r"PAYORCH_REGION=us-east-1 is not a region of tenant\(s\) apac, emea"):
        kafka_clients.client_config(settings)
    with pytest.raises(TopologyError, match="not a region of tenant"):
        kafka_clients.client_config(settings_for(TENANTS, "eu-west-3", bootstrap_servers="b:9098"))


def test_tenants_sharing_a_process_must_share_its_cluster(tmp_path):
    settings = settings_for(TENANTS, "us-east-1").model_copy(update={"tenants": "na,latam"})
    shared = settings.model_copy(update={"kafka": KafkaSettings(region_bootstrap_servers={"us-east-1": "b-1.x:9098"})})
    assert kafka_clients.client_config(shared)["bootstrap.servers"] == "b-1.x:9098"
    apart = settings.model_copy(update={"kafka": KafkaSettings(region_bootstrap_servers={
        "na/us-east-1": "b-1.na:9098", "latam/us-east-1": "b-1.latam:9098"})})
    with pytest.raises(TopologyError, match="different clusters in us-east-1"):
        kafka_clients.client_config(apart)


def test_an_explicit_security_setting_that_contradicts_the_tenant_file_is_refused(monkeypatch):
    monkeypatch.setenv("PAYORCH_TENANTS", "apac")
    monkeypatch.setenv("PAYORCH_REGION", "ap-southeast-1")
    monkeypatch.setenv("PAYORCH_KAFKA__BOOTSTRAP_SERVERS", "b-1.x:9098")
    monkeypatch.setenv("PAYORCH_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT")
    with pytest.raises(TopologyError, match="PAYORCH_KAFKA__SECURITY_PROTOCOL=PLAINTEXT contradicts the tenant file"):
        kafka_clients.client_config(Settings())


def test_a_plaintext_region_in_a_tenant_file_is_used_as_it_says(tmp_path):
    directory = tenant_dir(tmp_path, [{"name": "local-a", "kafka": {"security": "plaintext",
                                                                    "bootstrap_servers": "127.0.0.1:40001"}},
                                      {"name": "local-b", "kafka": {"security": "plaintext",
                                                                    "bootstrap_servers": "127.0.0.1:40002"}}])
    config = kafka_clients.client_config(settings_for(directory, "local-b"))
    assert config == {"bootstrap.servers": "127.0.0.1:40002", "security.protocol": "PLAINTEXT"}


# --------------------------------------------------------------------------------------
# Replication naming
# --------------------------------------------------------------------------------------

def test_each_naming_says_what_it_implies():
    expected = {
        ReplicationNaming.MSK_REPLICATOR_IDENTICAL: ("msk_replicator", False, None, False, True),
        ReplicationNaming.MSK_REPLICATOR_PREFIXED: ("msk_replicator", True, ".", False, True),
        ReplicationNaming.MM2_IDENTITY: ("mirrormaker2", False, None, False, False),
        ReplicationNaming.MM2_DEFAULT: ("mirrormaker2", True, ".", True, True),
    }
    for naming, (replicator, prefixed, separator, configurable, no_cycles) in expected.items():
        assert (naming.replicator, naming.prefixed, naming.default_separator, naming.separator_configurable,
                naming.prevents_cycles) == (replicator, prefixed, separator, configurable, no_cycles)


def regions(west: dict | None, central: dict | None) -> tuple[RegionConfig, ...]:
    tenant = TenantConfig.model_validate({
        **yaml.safe_load((TENANTS / "emea.yaml").read_text()),
        "regions": [{**iam("eu-west-1"), "replication": west}, {**iam("eu-central-1"), "replication": central}]})
    return tenant.regions


def test_msk_replicator_prefixed_names_both_ways():
    # Each region's replicator prefixes the other region's topics with the alias MSK gave
    # that cluster.
    topology = regions({"naming": "msk_replicator_prefixed", "source_alias": "emea-central-2f9a"},
                       {"naming": "msk_replicator_prefixed", "source_alias": "emea-west-7c1d"})
    assert name_in_other_region(topology, "eu-west-1", RECEIVED) == f"emea-west-7c1d.{RECEIVED}"
    assert name_in_other_region(topology, "eu-central-1", RECEIVED) == f"emea-central-2f9a.{RECEIVED}"
    # A copy is the other region's original there: replicators do not copy copies back.
    assert name_in_other_region(topology, "eu-west-1", f"emea-central-2f9a.{RECEIVED}") == RECEIVED
    assert name_in_other_region(topology, "eu-central-1", f"emea-west-7c1d.{RECEIVED}") == RECEIVED
    for region in ("eu-west-1", "eu-central-1"):
        there = name_in_other_region(topology, region, RECEIVED)
        other = "eu-central-1" if region == "eu-west-1" else "eu-west-1"
        assert name_in_other_region(topology, other, there) == RECEIVED


def test_msk_prefixed_without_its_alias_yet_says_where_the_alias_comes_from():
    topology = regions({"naming": "msk_replicator_prefixed"}, {"naming": "msk_replicator_prefixed"})
    with pytest.raises(TopologyError, match="SourceKafkaClusterAlias"):
        name_in_other_region(topology, "eu-west-1", RECEIVED, tenant="emea")


def test_identical_names_both_ways():
    for naming in ("msk_replicator_identical",):
        topology = regions({"naming": naming}, {"naming": naming})
        assert name_in_other_region(topology, "eu-west-1", RECEIVED) == RECEIVED
        assert name_in_other_region(topology, "eu-central-1", RECEIVED) == RECEIVED


def test_mirrormaker2_default_policy_with_its_alias_default_and_a_custom_separator():
    # MM2's aliases are ours to choose: the other region's name unless configured.
    topology = regions({"naming": "mm2_default"}, {"naming": "mm2_default", "source_alias": "west", "separator": "_"})
    assert name_in_other_region(topology, "eu-west-1", RECEIVED) == f"west_{RECEIVED}"
    assert name_in_other_region(topology, "eu-central-1", RECEIVED) == f"eu-central-1.{RECEIVED}"
    assert name_in_other_region(topology, "eu-central-1", f"west_{RECEIVED}") == RECEIVED
    assert name_in_other_region(topology, "eu-west-1", f"eu-central-1.{RECEIVED}") == RECEIVED


def test_mirrormaker2_identity_one_way_only():
    topology = regions(None, {"naming": "mm2_identity"})
    assert name_in_other_region(topology, "eu-west-1", RECEIVED) == RECEIVED
    with pytest.raises(TopologyError, match="region eu-west-1 has no replication configured"):
        name_in_other_region(topology, "eu-central-1", RECEIVED, tenant="emea")


def test_every_topic_of_a_tenant_maps_across_and_back(tmp_path):
    tenant = TenantConfig.model_validate({
        **yaml.safe_load((TENANTS / "emea.yaml").read_text()),
        "regions": [{**iam("eu-west-1"), "replication": {"naming": "mm2_default"}},
                    {**iam("eu-central-1"), "replication": {"naming": "mm2_default"}}]})
    topics = TopicNamer().all_topics(["emea"], retry_levels=3)
    across = replicated_names(tenant.regions, "eu-west-1", topics)
    assert all(name == f"eu-west-1.{topic}" for topic, name in across.items())
    back = replicated_names(tenant.regions, "eu-central-1", across.values())
    assert sorted(back.values()) == sorted(topics)
    assert tenant.topic_in_other_region("eu-west-1", topics[0]) == across[topics[0]]


def test_unknown_regions_and_non_topics_are_refused():
    topology = regions({"naming": "mm2_default"}, {"naming": "mm2_default"})
    with pytest.raises(TopologyError, match="tenant emea has no region 'us-east-1'"):
        name_in_other_region(topology, "us-east-1", RECEIVED, tenant="emea")
    with pytest.raises(TopologyError, match="not a Kafka topic name"):
        name_in_other_region(topology, "eu-west-1", "a topic")
    single = TenantConfig.model_validate({**yaml.safe_load((TENANTS / "emea.yaml").read_text()),
                                          "regions": [iam("eu-west-1")]})
    with pytest.raises(TopologyError, match="only the region eu-west-1"):
        single.topic_in_other_region("eu-west-1", RECEIVED)


def test_payorch_run_refuses_to_start_in_a_region_without_a_cluster_and_says_why(tmp_path):
    import os
    import subprocess
    import sys

    directory = tenant_dir(tmp_path, [iam("eu-west-1"), "eu-central-1"])
    env = {key: value for key, value in os.environ.items() if not key.startswith("PAYORCH_")}
    env.update(PAYORCH_TENANTS_DIR=str(directory), PAYORCH_TENANTS="emea", PAYORCH_REGION="eu-central-1",
               PAYORCH_KAFKA__BOOTSTRAP_SERVERS="b-1.x:9098", PAYORCH_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "initiation"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"payorch: {directory}/emea.yaml: region eu-central-1 has no Kafka cluster "
                                     "configured: give regions[1] a `kafka:` block (security, and bootstrap_servers "
                                     "or the environment's)")
