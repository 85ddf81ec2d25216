"""`create_topics` returns only when the broker serves every partition it made.

CreateTopics answers once the controller has recorded the topics; the broker creates
each partition's log afterwards. A flow started in that gap ran against partitions that
did not exist yet (produce and fetch errors, retried, for tens of seconds under load).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from orchestrator.kafka_clients import create_topics, make_admin
from orchestrator.settings import Settings

pytestmark = pytest.mark.integration

TENANTS = ["na", "emea", "latam", "apac"]


def test_every_partition_is_served_when_create_topics_returns(kafka_bootstrap, monkeypatch):
    monkeypatch.setenv("PAYORCH_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("PAYORCH_KAFKA__PARTITIONS", "6")
    monkeypatch.setenv("PAYORCH_TOPIC_TEMPLATE", "{tenant}.payments.{stage}.topics" + uuid.uuid4().hex[:8])
    settings = Settings()

    created, existing = create_topics(settings, TENANTS)

    # Ten stage topics, each with a dead-letter topic and three retry topics, per tenant.
    assert len(created) == 200 and existing == []
    admin = make_admin(settings)
    metadata = admin.list_topics(timeout=30)
    partitions = [TopicPartition(name, p) for name in created for p in metadata.topics[name].partitions]
    assert len(partitions) == 200 * 6
    # One round, no retry: every partition answers at once.
    answers = admin.list_offsets({p: OffsetSpec.latest() for p in partitions}, request_timeout=30)
    errors = {}
    for partition, future in answers.items():
        try:
            assert future.result().offset == 0
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors[f"{partition.topic}-{partition.partition}"] = str(exc)
    assert errors == {}

    again_created, again_existing = create_topics(settings, TENANTS)
    assert again_created == [] and sorted(again_existing) == sorted(created)


def test_a_stopped_test_system_leaves_no_topics_on_the_session_broker(kafka_bootstrap, tmp_path):
    """The suite's systems share one broker, which keeps every partition's files open:
    each system deletes its own topics when it stops, and only its own."""
    from tests.harness import System

    first, second = System(kafka_bootstrap, tmp_path / "first"), System(kafka_bootstrap, tmp_path / "second")
    for system in (first, second):
        created = system.cli("topics", "create")
        assert created.returncode == 0, created.stderr
    admin = make_admin(first.settings())

    def topics_of(system: System) -> set[str]:
        return {name for name in admin.list_topics(timeout=30).topics if f".t{system.run_id}" in name}

    def gone(system: System) -> bool:
        # Deletion is accepted at once; the broker's metadata says so moments later.
        deadline = time.monotonic() + 60
        while topics_of(system) and time.monotonic() < deadline:
            time.sleep(0.5)
        return topics_of(system) == set()

    theirs = topics_of(second)
    assert topics_of(first) and theirs
    first.stop()
    assert gone(first)
    assert topics_of(second) == theirs
    second.stop()
    assert gone(second)
