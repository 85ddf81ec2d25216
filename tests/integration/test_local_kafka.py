"""The local Kafka launcher really starts, serves, survives bounces and cleans up.

Deliberately no skip-if-unavailable: every other integration test depends on this
broker, so "could not start Kafka" must show up as a failure, not as a quiet skip.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from orchestrator.kafka_local import LocalKafka, LocalKafkaError

pytestmark = pytest.mark.integration

consume_timeout_s = 30.0


@pytest.fixture(scope="module")
def kafka() -> Iterator[LocalKafka]:
    with LocalKafka(heap_mb=512) as broker:
        yield broker


def _create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new_topic = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    admin.create_topics([new_topic])[topic].result(timeout=30)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    errors: list[object] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(
        topic, value, key=key, on_delivery=lambda err, _m: errors.append(err) if err else None
    )
    assert producer.flush(30) == 0
    assert not errors


def _consume_one(bootstrap: str, topic: str) -> tuple[bytes, bytes]:
    # A fresh group each time, so "still readable" means read from the log, not
    # from a committed position.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-local-kafka-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + consume_timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            return msg.key(), msg.value()
        pytest.fail(f"no message on {topic} within {consume_timeout_s}s")
    finally:
        consumer.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is not a running broker.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _java_processes_mentioning(path: Path) -> list[int]:
    needle = str(path).encode()
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if b"java" in cmdline and needle in cmdline:
            pids.append(int(proc_dir.name))
    return pids


def test_produce_and_consume_roundtrip(kafka: LocalKafka) -> None:
    bootstrap = kafka.bootstrap_servers
    assert bootstrap == f"127.0.0.1:{kafka.port}"
    topic = f"it.roundtrip.{uuid.uuid4().hex[:8]}"
    _create_topic(bootstrap, topic)

    _produce(bootstrap, topic, b"pay-1", b"hello kafka")

    assert _consume_one(bootstrap, topic) == (b"pay-1", b"hello kafka")


def test_auto_topic_creation_is_disabled(kafka: LocalKafka) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    topic = f"it.never-created.{uuid.uuid4().hex[:8]}"
    # Asking for metadata of a specific topic would auto-create it if enabled.
    admin.list_topics(topic=topic, timeout=10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_restart_keeps_data_and_address(kafka: LocalKafka) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = f"it.restart.{uuid.uuid4().hex[:8]}"
    _create_topic(bootstrap, topic)
    _produce(bootstrap, topic, b"pay-2", b"survives restart")
    old_pid = kafka.pid
    assert old_pid is not None

    assert kafka.restart() == bootstrap

    assert kafka.pid != old_pid
    assert not _pid_alive(old_pid)
    assert _consume_one(bootstrap, topic) == (b"pay-2", b"survives restart")


def test_kill_restart_then_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    broker = LocalKafka(heap_mb=512, log_dir=tmp_path / "logs")
    try:
        bootstrap = broker.start()
        data_dir = broker.data_dir
        assert data_dir is not None and data_dir.is_dir()
        topic = f"it.kill.{uuid.uuid4().hex[:8]}"
        _create_topic(bootstrap, topic)
        _produce(bootstrap, topic, b"pay-3", b"survives SIGKILL")

        killed_pid = broker.pid
        broker.kill()
        assert not broker.is_running()
        assert not _pid_alive(killed_pid)

        assert broker.restart() == bootstrap
        assert _consume_one(bootstrap, topic) == (b"pay-3", b"survives SIGKILL")
        last_pid = broker.pid
    finally:
        broker.stop()

    assert not _pid_alive(last_pid)
    assert _java_processes_mentioning(data_dir) == []
    # The temp data dir was ours, so stop() removes it; the caller's log dir stays.
    assert not data_dir.exists()
    assert (tmp_path / "logs" / "broker.log").is_file()


def test_start_failure_raises_with_broker_log(tmp_path: Path) -> None:
    # Occupy the broker port so the JVM dies binding it: start() must report that
    # promptly with the broker's own log, not hang until the timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy_port = blocker.getsockname()[1]
        broker = LocalKafka(port=busy_port, heap_mb=512, data_dir=tmp_path / "data")
        started = time.monotonic()
        try:
            with pytest.raises(LocalKafkaError) as excinfo:
                broker.start(timeout_s=60)
        finally:
            broker.stop()

    assert time.monotonic() - started < 45
    message = str(excinfo.value)
    assert "exited" in message
    assert str(busy_port) in message
    assert not broker.is_running()
