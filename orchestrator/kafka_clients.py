"""Kafka client construction and topic administration, in one place.

Every producer is idempotent with acks=all: a retried send never duplicates or
reorders a payment's events within a partition. Every consumer reads committed data
only. Offsets are committed inside each output transaction (exactly-once mode), or
stored after the outputs are acknowledged and committed in the background
(at-least-once mode); never before a batch's outputs are safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from orchestrator.settings import KafkaSettings, Settings
from orchestrator.tenants import load_selected_tenants
from orchestrator.topics import TopicNamer
from orchestrator.topology import TopologyError, resolve_process_cluster

log = logging.getLogger("payorch.kafka")

# Payment events are small (~350 bytes) and mostly unique; on loopback, compressing them
# measured as pure CPU cost (broker and clients) with nothing saved. Set
# PAYORCH_KAFKA__EXTRA='{"compression.type": "lz4"}' where the network is the bottleneck.
_COMPRESSION = "none"
# A dead-lettered or replayed message keeps the retention of its topic; 7 days lets
# operators act on a weekend incident.
_DLQ_RETENTION_MS = 7 * 24 * 3600 * 1000
# (fetch.min.bytes, fetch.wait.max.ms) per consumer role: what the broker waits for
# before it answers a fetch. A fetch is answered as soon as min bytes are there (for
# read_committed, once a transaction's commit marker makes them visible), so the wait
# only bounds how often a consumer with nothing to read asks again: idle fetches, and
# their expiry in the broker's purgatory, were most of an idle broker's work.
# - main: a stage on a payment's path. One byte, so a hop never waits for data already
#   committed; 500 ms between idle fetches (100 ms cost the broker twice as much idle, for
#   no latency: see docs/PERFORMANCE.md). Withdrawn once because the clearing-outage fault
#   test failed with it in CI; that test assumed how fast breakers open, and ran while
#   the broker was still creating its partitions (both fixed in f86c423).
# - sink: tracking, a read model of every topic (40 partitions for four tenants). Woken
#   by every commit of every stage, its fetches were a third of the broker's CPU at
#   100/s; it now asks for 64 KiB or 100 ms, whichever comes first, so its view trails
#   the flow by at most about 100 ms. (No payment's timestamps pass through it.)
# - retry: nearly always empty topics whose events wait seconds anyway.
_FETCH_BATCHING = {"main": (1, 500), "sink": (64 * 1024, 100), "retry": (1, 1000)}


# The first retry of a failed producer request (see producer_config).
_RETRY_BACKOFF_MS = 5

# librdkafka enables Nagle's algorithm by default; on small requests it holds each
# produce, fetch and transaction call for the peer's delayed ACK.
_LOW_LATENCY_SOCKETS = {"socket.nagle.disable": True}


# The cluster of a process, resolved once per distinct configuration (see region_kafka).
_REGION_KAFKA: dict[tuple, KafkaSettings] = {}


def region_kafka(settings: Settings) -> KafkaSettings:
    """The Kafka settings of the cluster this process connects to.

    In a local region (`PAYORCH_REGION=local-*`, the default `local-a`) that no tenant
    names: `settings.kafka` as it is (`payorch up`, the tests, a hand-run stage). In one of
    its tenants' regions: that region's cluster from the tenant files (orchestrator/
    topology.py), with its bootstrap servers from the environment where given, and its
    security: `msk_iam` makes the clients SASL_SSL/OAUTHBEARER with an MSK IAM token.
    Raises TopologyError, naming the file and what is missing, when a region has no
    cluster, and when an explicit PAYORCH_KAFKA__SECURITY_PROTOCOL or __SASL_MECHANISM
    contradicts the tenant file.
    """
    kafka = settings.kafka
    # (model_dump_json masks the SASL password, so it is part of the key on its own.)
    key = (str(settings.tenants_dir), settings.tenants, settings.region, kafka.model_dump_json(),
           kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    cached = _REGION_KAFKA.get(key)
    if cached is not None:
        return cached
    tenants = load_selected_tenants(settings.tenants_dir, settings.tenant_filter())
    cluster = resolve_process_cluster({tid: cfg.regions for tid, cfg in tenants.items()}, settings.region,
                                      own_bootstrap=kafka.bootstrap_servers,
                                      region_bootstrap=kafka.region_bootstrap_servers,
                                      tenants_dir=str(settings.tenants_dir))
    if cluster is None:
        resolved = kafka
    else:
        protocol, mechanism = ("SASL_SSL", "OAUTHBEARER") if cluster.security == "msk_iam" else ("PLAINTEXT", None)
        explicit = kafka.model_fields_set
        for field, wanted, variable in (("security_protocol", protocol, "SECURITY_PROTOCOL"),
                                        ("sasl_mechanism", mechanism, "SASL_MECHANISM")):
            given = getattr(kafka, field)
            if field in explicit and given != wanted:
                raise TopologyError(
                    f"PAYORCH_KAFKA__{variable}={given} contradicts the tenant file: region {settings.region} has "
                    f"security {cluster.security} ({variable.lower()} {wanted}); unset it or fix the tenant file")
        resolved = kafka.model_copy(update={
            "bootstrap_servers": cluster.bootstrap_servers,
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "msk_iam": kafka.msk_iam.model_copy(update={"aws_region": cluster.signing_region}),
        })
        log.info("Kafka cluster of region %s: %s, %s (bootstrap servers from %s)", settings.region,
                 cluster.bootstrap_servers, cluster.security, cluster.source)
    _REGION_KAFKA[key] = resolved
    return resolved


def client_config(settings: Settings) -> dict:
    """The connection part of every client's configuration: the process's cluster and
    its security (`region_kafka`), then PAYORCH_KAFKA__EXTRA."""
    return region_kafka(settings).client_config()


def _construct(factory, config: dict):
    """A client from its config. With MSK IAM, confluent-kafka waits up to 10 s in the
    constructor for the first token and then fails with "OAuth token not set" (a
    SystemError for a Consumer); the callback knows why, so its error is raised instead."""
    try:
        return factory(config)
    except (KafkaException, SystemError) as exc:
        last_error = getattr(config.get("oauth_cb"), "last_error", None)
        if last_error:
            raise KafkaException(KafkaError(KafkaError._AUTHENTICATION, last_error)) from exc
        raise


def producer_config(settings: Settings, client_id: str) -> dict:
    config = dict(_LOW_LATENCY_SOCKETS)
    config.update(
        {
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.runtime.producer_linger_ms,
            "compression.type": _COMPRESSION,
            # Delivery is bounded so a dead broker surfaces as an error, not a hang.
            "delivery.timeout.ms": int(settings.runtime.produce_ack_timeout_s * 1000),
            # A transaction begun right after the previous commit meets
            # CONCURRENT_TRANSACTIONS until the coordinator has written the previous
            # one's markers (a few ms), and librdkafka retries after `retry.backoff.ms`:
            # at its default of 100 ms a busy stage managed about 12 transactions a
            # second (80 ms each, measured on the local broker) and every hop of a
            # payment could wait that long. The Java client retries that case after
            # 20 ms (KAFKA-5477). Retries still back off exponentially, up to
            # `retry.backoff.max.ms` (1 s), so a broker in real trouble is not hammered.
            "retry.backoff.ms": _RETRY_BACKOFF_MS,
        }
    )
    # Operators' librdkafka options (PAYORCH_KAFKA__EXTRA) win over our defaults.
    config.update(client_config(settings))
    return config


def consumer_config(settings: Settings, group_id: str, client_id: str, *, role: str = "main") -> dict:
    config = dict(_LOW_LATENCY_SOCKETS)
    config.update(
        {
            "group.id": group_id,
            "client.id": client_id,
            # Offsets are *stored* by the runtime only after a batch's outputs are
            # acknowledged; librdkafka then commits the stored offsets in the background
            # (and on rebalance and close). A per-batch synchronous commit would add a
            # broker round trip to every hop of every payment for no extra safety, since
            # stages are idempotent and a redelivered batch re-emits identical events.
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 200,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # A stage that stops polling for this long is presumed dead and its
            # partitions move; a batch never takes near this long.
            "max.poll.interval.ms": 120_000,
            # A member that really died (not restarted) gives its partitions up after this.
            "session.timeout.ms": 10_000,
            # Long polling (see _FETCH_BATCHING): a quiet system costs each consumer a
            # few fetches a second; under load the batches grow on their own (see the
            # runtime's checkpoints).
            "fetch.min.bytes": _FETCH_BATCHING[role][0],
            "fetch.wait.max.ms": _FETCH_BATCHING[role][1],
        }
    )
    # Operators' librdkafka options (PAYORCH_KAFKA__EXTRA) win over our defaults.
    config.update(client_config(settings))
    return config


def make_producer(settings: Settings, client_id: str, *, transactional_id: str | None = None,
                  overrides: dict | None = None) -> Producer:
    config = producer_config(settings, client_id)
    config.update(overrides or {})
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    return _construct(Producer, config)


def make_consumer(settings: Settings, group_id: str, client_id: str, *, instance_id: str | None = None,
                  transactional: bool = False, role: str = "main", overrides: dict | None = None) -> Consumer:
    config = consumer_config(settings, group_id, client_id, role=role)
    config.update(overrides or {})
    if transactional:
        # Offsets are committed inside each output transaction, never on their own.
        config["enable.auto.commit"] = False
    if instance_id is not None:
        # Static membership (KIP-345): a stage process restarted after a crash rejoins as
        # the same member and gets its partitions back at once, instead of the group
        # waiting for the dead member's session to expire and then rebalancing. Each
        # replica of a stage needs its own instance id (`payorch run STAGE --instance N`).
        config["group.instance.id"] = f"{group_id}.{instance_id}"
    return _construct(Consumer, config)


def make_admin(settings: Settings) -> AdminClient:
    return _construct(AdminClient, client_config(settings))


def create_topics(settings: Settings, tenants: Iterable[str], *, timeout_s: float = 120.0) -> tuple[list[str], list[str]]:
    """Create every stage, retry and dead-letter topic of the tenants; (created, existing)."""
    namer = TopicNamer(settings.topic_template)
    admin = make_admin(settings)
    wanted = namer.all_topics(sorted(tenants), retry_levels=settings.runtime.retry.levels)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new_topics = []
    for name in wanted:
        if name in existing:
            continue
        config = {"min.insync.replicas": str(min(2, settings.kafka.replication_factor))}
        if name.endswith(".dlq"):
            config["retention.ms"] = str(_DLQ_RETENTION_MS)
        new_topics.append(
            NewTopic(
                name,
                num_partitions=settings.kafka.partitions,
                replication_factor=settings.kafka.replication_factor,
                config=config,
            )
        )
    created = []
    if new_topics:
        for name, future in admin.create_topics(new_topics, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    _wait_for_leaders(admin, wanted, timeout_s)
    _wait_for_logs(admin, wanted, timeout_s)
    return created, sorted(set(wanted) - set(created))


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Return once every partition of `topics` has a leader.

    CreateTopics answers when the controller has recorded the topics, before the broker
    serves them; producers and consumers that start in that gap see errors and, worse,
    consumers may compute their start offsets against partitions that are not ready.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        not_ready = [name for name in topics
                     if name not in metadata.topics or metadata.topics[name].error is not None
                     or any(p.leader < 0 or p.error is not None for p in metadata.topics[name].partitions.values())]
        if not not_ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(not_ready)} topics have partitions without a leader, e.g. {not_ready[:3]}")
        time.sleep(0.2)


def _wait_for_logs(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Return once the leader of every partition of `topics` serves it.

    A leader in the metadata is not yet a partition that serves: the broker creates each
    new partition's log afterwards, one at a time, with a directory sync each (1,080
    partitions took 5 to 14 s on an idle two-core machine and 47 s under load, while
    CreateTopics had answered in half a second). Until then produce and fetch calls on
    the partition fail and are retried, so a flow started early ran for its first tens of
    seconds against a broker busy creating logs. ListOffsets answers for a partition only
    once its log exists.
    """
    deadline = time.monotonic() + timeout_s
    metadata = admin.list_topics(timeout=timeout_s)
    pending = [TopicPartition(name, partition) for name in topics for partition in metadata.topics[name].partitions]
    first_round = True
    while pending:
        answers = admin.list_offsets({partition: OffsetSpec.latest() for partition in pending},
                                     request_timeout=max(1.0, deadline - time.monotonic()))
        failed = []
        for partition, future in answers.items():
            try:
                future.result()
            except KafkaException as exc:
                failed.append((partition, exc))
        if not failed:
            return
        if first_round:
            log.info("waiting for the broker to serve %d of %d partitions", len(failed), len(answers))
            first_round = False
        if time.monotonic() > deadline:
            example, error = failed[0]
            raise TimeoutError(f"{len(failed)} partitions are not served yet, e.g. {example.topic}-"
                               f"{example.partition}: {error}")
        pending = [partition for partition, _ in failed]
        time.sleep(0.2)


def broker_reachable(settings: Settings, timeout_s: float = 2.0) -> bool:
    try:
        make_admin(settings).list_topics(timeout=timeout_s)
        return True
    except KafkaException:
        return False
