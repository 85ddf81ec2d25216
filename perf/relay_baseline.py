"""The bare relay baseline: what the broker and plain Python confluent-kafka carry through
as many hops as a payment takes, with nothing of payorch in between.

  # on a running broker (the benchmark harness passes the one its stack uses)
  .venv/bin/python perf/relay_baseline.py --bootstrap 127.0.0.1:PORT

  # alone: starts a local Kafka broker of its own for the run
  .venv/bin/python perf/relay_baseline.py

A source topic is filled first, then nine relay processes each consume one topic and
produce every message to the next, and a sink counts what comes out of the last one. Each
relay is built as a payorch stage is: idempotent producer, acks=all, read_committed
consumer, consumed offsets stored only after the outputs are acknowledged. Two variants:
at least once (the broker acknowledges each batch's outputs, then offsets are stored and
committed in the background), and transactional (each batch's outputs and its offsets in
one Kafka transaction, send_offsets_to_transaction). The figure is messages per second
out of the last hop. Filling the source first keeps the filling producer's CPU out of the
measured window.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench_safety import require_loopback_bootstrap

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from orchestrator.kafka_local import LocalKafka  # noqa: E402

HOPS = 9
PARTITIONS = 1  # payorch's default partitions per topic (orchestrator/settings.py)
MESSAGE_BYTES = 400  # about a payorch event's Avro size
BATCH_MAX_MESSAGES = 500  # payorch's batch_max_messages
POLL_TIMEOUT_S = 0.05  # payorch's poll_timeout_ms
LINGER_MS = 2  # payorch's producer_linger_ms
# The source holds more than the relay is expected to carry in the measured window; if the
# relay carries it all sooner, the window ends then (and the result says so).
SOURCE_MESSAGES_PER_S = 20_000
STARTUP_TIMEOUT_S = 60
WATCH_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 20
# A fresh broker's transaction coordinator answers "not coordinator" for a moment, which
# librdkafka retries and logs as a warning; only errors are worth printing here.
LOG_LEVEL_ERRORS = 3
VARIANTS = {"at_least_once": False, "transactional": True}


def _producer_config(bootstrap: str, client_id: str) -> dict:
    return {"bootstrap.servers": bootstrap, "client.id": client_id, "enable.idempotence": True, "acks": "all",
            "linger.ms": LINGER_MS, "log_level": LOG_LEVEL_ERRORS}


def _consumer_config(bootstrap: str, group: str, *, commits_in_background: bool) -> dict:
    return {"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest", "enable.auto.commit": commits_in_background,
            "enable.auto.offset.store": False, "auto.commit.interval.ms": 200, "log_level": LOG_LEVEL_ERRORS}


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            # The local queue is full: let deliveries drain it.
            producer.poll(0.05)


def relay_hop(bootstrap: str, source: str, target: str, transactional: bool, stop) -> None:
    """One hop: consume a batch, produce it on, then commit (in a transaction or after acks)."""
    group = f"{source}.relay"
    consumer = Consumer(_consumer_config(bootstrap, group, commits_in_background=not transactional))
    producer_config = _producer_config(bootstrap, group)
    if transactional:
        producer_config["transactional.id"] = group
    producer = Producer(producer_config)
    if transactional:
        producer.init_transactions()
    consumer.subscribe([source])
    try:
        while not stop.is_set():
            batch = [message for message in consumer.consume(BATCH_MAX_MESSAGES, POLL_TIMEOUT_S)
                     if message.error() is None]
            if not batch:
                continue
            if transactional:
                producer.begin_transaction()
            for message in batch:
                _produce(producer, target, message.value(), message.key())
            positions = consumer.position(consumer.assignment())
            if transactional:
                producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
                producer.commit_transaction()
            else:
                producer.flush()
                consumer.store_offsets(offsets=positions)
    finally:
        consumer.close()
        producer.flush(5)


def count_sink(bootstrap: str, source: str, counter, stop) -> None:
    """Counts what comes out of the last hop (read_committed, so aborted outputs never count)."""
    consumer = Consumer(_consumer_config(bootstrap, f"{source}.sink", commits_in_background=False))
    consumer.subscribe([source])
    try:
        while not stop.is_set():
            arrived = sum(1 for message in consumer.consume(BATCH_MAX_MESSAGES, POLL_TIMEOUT_S)
                          if message.error() is None)
            if arrived:
                with counter.get_lock():
                    counter.value += arrived
    finally:
        consumer.close()


def _create_topics(admin: AdminClient, topics: list[str]) -> None:
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        future.result(30)


def _delete_topics(admin: AdminClient, topics: list[str]) -> None:
    for future in admin.delete_topics(topics).values():
        try:
            future.result(30)
        except KafkaException:
            pass  # a topic left behind costs disk only, and the broker of a run is temporary


def _fill_source(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({**_producer_config(bootstrap, "relay-source"), "linger.ms": 20})
    payload = os.urandom(MESSAGE_BYTES)
    for index in range(count):
        # Distinct keys spread the messages over the partitions as payment ids do.
        _produce(producer, topic, payload, index.to_bytes(8, "big"))
    if producer.flush(120) != 0:
        raise RuntimeError("the relay's source topic could not be filled")


def run_relay(bootstrap: str, *, transactional: bool, duration_s: float,
              on_progress: Callable[[float, int, float], None]) -> dict:
    """Run one variant for `duration_s` after the first message came out of the last hop."""
    run_id = uuid.uuid4().hex[:8]
    topics = [f"bench.relay.{run_id}.{index}" for index in range(HOPS + 1)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _create_topics(admin, topics)
    try:
        source_messages = int(SOURCE_MESSAGES_PER_S * duration_s)
        _fill_source(bootstrap, topics[0], source_messages)
        return _measure(bootstrap, topics, transactional, duration_s, source_messages, on_progress)
    finally:
        _delete_topics(admin, topics)


def _measure(bootstrap: str, topics: list[str], transactional: bool, duration_s: float, source_messages: int,
             on_progress: Callable[[float, int, float], None]) -> dict:
    # spawn, not fork: librdkafka's threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    counter = context.Value("q", 0)
    processes = [context.Process(target=relay_hop, args=(bootstrap, topics[i], topics[i + 1], transactional, stop),
                                 daemon=True) for i in range(HOPS)]
    processes.append(context.Process(target=count_sink, args=(bootstrap, topics[-1], counter, stop), daemon=True))
    for process in processes:
        process.start()
    try:
        started = _wait_for_first(counter)
        # The measured window starts when messages flow out of the last hop: every hop
        # has joined its group and the pipeline is full.
        window_start, count_at_start = time.monotonic(), counter.value
        next_report = window_start + 1.0
        while True:
            # Checked often: when the source is all carried early, the window ends right then.
            time.sleep(WATCH_INTERVAL_S)
            now, total = time.monotonic(), counter.value
            window, carried = now - window_start, total - count_at_start
            if window >= duration_s or total >= source_messages:
                break
            if now >= next_report:
                on_progress(window, carried, carried / window)
                next_report += 1.0
    finally:
        stop.set()
        for process in processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
    return {"hops": HOPS, "partitions": PARTITIONS, "message_bytes": MESSAGE_BYTES,
            "transactional": transactional, "window_s": window, "messages": carried,
            "messages_per_s": carried / window if window > 0 else 0.0,
            "startup_s": started, "source_ran_dry": total >= source_messages}


def _wait_for_first(counter) -> float:
    begun = time.monotonic()
    while counter.value == 0:
        if time.monotonic() - begun > STARTUP_TIMEOUT_S:
            raise RuntimeError(f"nothing came out of the relay's last hop within {STARTUP_TIMEOUT_S}s")
        time.sleep(0.1)
    return time.monotonic() - begun


def describe(result: dict) -> str:
    window = f"over {result['window_s']:.1f}s" + (", until the source ran out" if result["source_ran_dry"] else "")
    return f"{result['messages_per_s']:,.0f} messages/s through {result['hops']} hops ({window})"


def run_both(bootstrap: str, duration_s: float) -> dict[str, dict]:
    results = {}
    for name, transactional in VARIANTS.items():
        label = name.replace("_", "-")
        print(f"relay baseline, {label}: {HOPS} hops, {duration_s:.0f}s", flush=True)

        def progress(elapsed: float, carried: int, rate: float, label: str = label) -> None:
            print(f"  [relay {label}] {elapsed:4.0f}s  {carried:,} out of the last hop ({rate:,.0f}/s)", flush=True)

        results[name] = run_relay(bootstrap, transactional=transactional, duration_s=duration_s,
                                  on_progress=progress)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="a loopback Kafka bootstrap address; without it a local broker is started")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per variant")
    args = parser.parse_args()
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    if args.bootstrap is not None:
        require_loopback_bootstrap(args.bootstrap)
    broker = None
    if args.bootstrap is None:
        print("starting a local Kafka broker for the relay ...", flush=True)
        broker = LocalKafka()
    try:
        bootstrap = broker.start() if broker is not None else args.bootstrap
        for name, result in run_both(bootstrap, args.duration).items():
            print(f"{name.replace('_', '-')}: {describe(result)}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
