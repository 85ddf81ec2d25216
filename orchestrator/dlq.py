"""Operator tooling for dead-letter topics: summarise, inspect, replay.

Dead letters are read with a private consumer that assigns partitions from their low to
high watermark and never commits, so looking at a DLQ cannot move anything. A replay
sends the original key, bytes and headers (less the dead-letter headers) back to the
origin topic. It is idempotent twice over: each replayed dead letter is recorded (a
second replay skips it and says so), and a payment that has since reached a terminal
status is skipped; below that, every stage is idempotent on the payment id anyway.
"""

from __future__ import annotations

import contextlib

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from orchestrator.bootstrap import make_codec
from orchestrator.events import UndecodableEvent
from orchestrator.kafka_clients import client_config, make_admin, make_producer
from orchestrator.runtime.producing import AckTracker, ProduceFailed, await_acks
from orchestrator.settings import Settings
from orchestrator.stages.tracking import TERMINAL_STATUSES, TrackingStore
from orchestrator.storage import open_sqlite
from orchestrator.wire import (DLQ_HEADER_PREFIX, HEADER_CORRELATION_ID, HEADER_DLQ_ERROR_CLASS, HEADER_DLQ_FAILED_AT,
                               HEADER_DLQ_ORIGIN_TOPIC, HEADER_DLQ_STAGE, HEADER_TENANT_ID)
from orchestrator.topics import STAGE_TOPICS, TopicNamer


def _headers(message: Message) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])}


@dataclass(frozen=True)
class ReplayFilter:
    tenant: str | None = None
    stage: str | None = None
    error_class: str | None = None
    payment_ids: set[str] = field(default_factory=set)
    since: str | None = None
    until: str | None = None

    def matches(self, headers: dict[str, str], payment_id: str) -> bool:
        if self.tenant and headers.get(HEADER_TENANT_ID) != self.tenant:
            return False
        if self.stage and headers.get(HEADER_DLQ_STAGE) != self.stage:
            return False
        if self.error_class and headers.get(HEADER_DLQ_ERROR_CLASS) != self.error_class:
            return False
        if self.payment_ids and payment_id not in self.payment_ids:
            return False
        failed_at = headers.get(HEADER_DLQ_FAILED_AT, "")
        if self.since and failed_at < datetime.fromisoformat(self.since).isoformat():
            return False
        if self.until and failed_at >= datetime.fromisoformat(self.until).isoformat():
            return False
        return True


@dataclass
class ReplayResult:
    matched: int = 0
    replayed: int = 0
    skipped_already_replayed: int = 0
    skipped_terminal: int = 0
    failed: int = 0

    def summary_line(self, dry_run: bool) -> str:
        verb = "would replay" if dry_run else "replayed"
        return (f"{self.matched} dead letters matched: {verb} {self.replayed}, skipped "
                f"{self.skipped_already_replayed} already replayed and {self.skipped_terminal} whose payment "
                f"had already ended" + (f"; {self.failed} FAILED (run it again)" if self.failed else ""))


# A broker that is moving a partition's leadership (just after topic creation, or a
# restart) answers NOT_LEADER for a moment; the operator's command rides that out.
_WATERMARK_ATTEMPTS = 40
_WATERMARK_RETRY_S = 0.5
_PASSING_ERRORS = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                             KafkaError._TIMED_OUT, KafkaError._TRANSPORT})


def _watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    for attempt in range(1, _WATERMARK_ATTEMPTS + 1):
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)
        except KafkaException as exc:
            error = exc.args[0]
            passing = error.retriable() or error.code() in _PASSING_ERRORS
            if not passing or attempt == _WATERMARK_ATTEMPTS:
                raise
            time.sleep(_WATERMARK_RETRY_S)
            # A stale leader in the client's metadata answers NOT_LEADER until refreshed.
            with contextlib.suppress(KafkaException):
                consumer.list_topics(partition.topic, timeout=5)
    raise AssertionError("unreachable")


class DeadLetters:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def topics(self) -> list[str]:
        """This deployment's dead-letter topics: from its own topic template, so two
        deployments (or test systems) sharing a cluster never see each other's."""
        from orchestrator.bootstrap import load_configured_tenants

        namer = TopicNamer(self.settings.topic_template)
        wanted = {namer.dlq(tenant, stage_topic) for tenant in load_configured_tenants(self.settings)
                  for stage_topic in STAGE_TOPICS}
        metadata = make_admin(self.settings).list_topics(timeout=10)
        return sorted(name for name in metadata.topics if name in wanted)

    def messages(self) -> Iterator[Message]:
        """Every dead letter currently stored, oldest first per partition."""
        # The deployment's own prefix, so its access policy (a tenant's groups) covers it; it
        # never commits, it only names the reader.
        consumer = Consumer({**client_config(self.settings),
                             "group.id": f"{self.settings.consumer_group_prefix}.dlq-inspector",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            assignments = []
            metadata = consumer.list_topics(timeout=10)
            for topic in self.topics():
                for partition in metadata.topics[topic].partitions:
                    low, high = _watermarks(consumer, TopicPartition(topic, partition))
                    if high > low:
                        assignments.append((TopicPartition(topic, partition, low), high))
            if not assignments:
                return
            consumer.assign([tp for tp, _ in assignments])
            remaining = {(tp.topic, tp.partition): high for tp, high in assignments}
            idle_deadline = time.monotonic() + 30
            while remaining and time.monotonic() < idle_deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                key = (message.topic(), message.partition())
                if message.error():
                    # End of partition. Offsets alone cannot tell: a DLQ written in
                    # transactions ends with a commit marker that takes an offset too.
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        remaining.pop(key, None)
                    continue
                idle_deadline = time.monotonic() + 30
                yield message
                if message.offset() + 1 >= remaining.get(key, 0):
                    remaining.pop(key, None)
        finally:
            consumer.close()

    def summary(self) -> Counter:
        counts: Counter = Counter()
        for message in self.messages():
            headers = _headers(message)
            counts[(headers.get(HEADER_TENANT_ID, "?"), headers.get(HEADER_DLQ_STAGE, "?"),
                    headers.get(HEADER_DLQ_ERROR_CLASS, "?"))] += 1
        return counts

    def show(self, ref: str, echo: Callable[[str], None]) -> int:
        codec = make_codec(self.settings)
        shown = 0
        for message in self.messages():
            location = f"{message.topic()}:{message.partition()}:{message.offset()}"
            payment_id = (message.key() or b"").decode("utf-8", "replace")
            if ref not in (location, payment_id):
                continue
            shown += 1
            echo(f"== {location}  key={payment_id}")
            for name, value in _headers(message).items():
                echo(f"  {name}: {value}")
            try:
                event = codec.decode(message.value() or b"")
                echo(f"  decoded: {event.event_type} v{event.schema_version} from stage {event.stage} at "
                     f"{event.occurred_at.isoformat()} payload={event.payload}")
            except UndecodableEvent as exc:
                raw = message.value() or b""
                echo(f"  undecodable ({exc}); {len(raw)} bytes, first 32: {raw[:32].hex()}")
        return shown

    def replay(self, selector: ReplayFilter, *, rate_per_s: float, dry_run: bool,
               echo: Callable[[str], None]) -> ReplayResult:
        from rich.progress import Progress

        result = ReplayResult()
        ledger = open_sqlite(self.settings.data_dir / "dlq-replays.sqlite")
        ledger.execute("CREATE TABLE IF NOT EXISTS replayed (location TEXT PRIMARY KEY, replayed_at TEXT NOT NULL)")
        tracking_path = self.settings.data_dir / "tracking.sqlite"
        tracking = TrackingStore(tracking_path, read_only=True) if tracking_path.exists() else None
        producer = make_producer(self.settings, "payorch-dlq-replay")
        tracker = AckTracker()
        interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        candidates = [m for m in self.messages()
                      if selector.matches(_headers(m), (m.key() or b"").decode("utf-8", "replace"))]
        with Progress(transient=True) as progress:
            task = progress.add_task("replaying" if not dry_run else "checking", total=len(candidates))
            for message in candidates:
                progress.advance(task)
                result.matched += 1
                headers = _headers(message)
                location = f"{message.topic()}:{message.partition()}:{message.offset()}"
                payment_id = (message.key() or b"").decode("utf-8", "replace")
                if ledger.execute("SELECT 1 FROM replayed WHERE location=?", (location,)).fetchone():
                    result.skipped_already_replayed += 1
                    echo(f"skip {location}: already replayed")
                    continue
                record = tracking.get(payment_id) if tracking else None
                if record is not None and record["status"] in TERMINAL_STATUSES:
                    result.skipped_terminal += 1
                    echo(f"skip {location}: payment {payment_id} is already {record['status']}")
                    continue
                result.replayed += 1
                if dry_run:
                    echo(f"would replay {location} -> {headers.get(HEADER_DLQ_ORIGIN_TOPIC)}")
                    continue
                origin = headers[HEADER_DLQ_ORIGIN_TOPIC]
                original_headers = [(k, v) for k, v in (message.headers() or []) if not k.startswith(DLQ_HEADER_PREFIX)]
                original_headers.append(("payorch.replayed_from", location.encode()))
                producer.produce(origin, key=message.key(), value=message.value(), headers=original_headers,
                                 on_delivery=tracker.callback)
                tracker.pending += 1
                try:
                    await_acks(producer, tracker, self.settings.runtime.produce_ack_timeout_s)
                except ProduceFailed as exc:
                    # Not recorded as replayed: running the same replay again retries it.
                    result.replayed -= 1
                    result.failed += 1
                    echo(f"FAILED {location}: the broker did not confirm the replay ({exc}); stopping")
                    break
                ledger.execute("INSERT INTO replayed VALUES (?, datetime('now'))", (location,))
                echo(f"replayed {location} -> {origin} (correlation {headers.get(HEADER_CORRELATION_ID, '?')})")
                if interval_s:
                    time.sleep(interval_s)
        producer.flush(10)
        ledger.close()
        return result
