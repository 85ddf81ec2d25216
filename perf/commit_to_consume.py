"""How long a read_committed consumer takes to see a committed transaction, per fetch wait.

  .venv/bin/python perf/commit_to_consume.py                  # its own local broker
  .venv/bin/python perf/commit_to_consume.py --bootstrap HOST:PORT --waits 100,500

One transactional producer commits one record at a time, at moments not aligned with any
fetch wait, and a consumer configured as a payorch stage's (fetch.min.bytes 1,
read_committed) receives it. The figure is commit return to record received. If the broker
held a waiting fetch until `fetch.wait.max.ms` instead of answering it when the commit
marker makes the record readable, each hop of a payment would wait that long.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def measure(bootstrap: str, wait_ms: int, commits: int) -> list[float]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"perf-commit-to-consume-{wait_ms}-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic, "linger.ms": 0,
                         "socket.nagle.disable": True})
    producer.init_transactions(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "isolation.level": "read_committed",
                         "fetch.min.bytes": 1, "fetch.wait.max.ms": wait_ms, "auto.offset.reset": "earliest",
                         "socket.nagle.disable": True})
    consumer.subscribe([topic])
    delays_ms = []
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
        for index in range(commits):
            time.sleep(0.137)  # not a multiple of any fetch wait: commits land mid-wait
            producer.begin_transaction()
            producer.produce(topic, str(index).encode())
            producer.commit_transaction(30)
            committed_at = time.monotonic()
            while True:
                message = consumer.poll(5)
                if message is None:
                    raise RuntimeError(f"record {index} not received within 5 s of its commit")
                if not message.error():
                    delays_ms.append((time.monotonic() - committed_at) * 1000)
                    break
            print(f"\r  fetch.wait.max.ms={wait_ms}: {index + 1}/{commits}", end="", flush=True)
        print()
    finally:
        consumer.close()
        admin.delete_topics([topic])
    return delays_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", help="a running broker; default: start a local one for the run")
    parser.add_argument("--waits", default="100,500", help="fetch.wait.max.ms values to compare (ms)")
    parser.add_argument("--commits", type=int, default=40, help="commits per value")
    args = parser.parse_args()
    waits = [int(value) for value in args.waits.split(",")]
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from orchestrator.kafka_local import LocalKafka, ensure_kafka_jars
        from orchestrator.settings import REPO_ROOT

        ensure_kafka_jars(REPO_ROOT)
        broker = LocalKafka()
        print("starting a local Kafka broker for the run ...", flush=True)
        bootstrap = broker.start()
    try:
        results = {wait: measure(bootstrap, wait, args.commits) for wait in waits}
    finally:
        if broker is not None:
            broker.stop()
    print("fetch.wait.max.ms | commit -> consume p50 | p90 | max (ms)")
    for wait, delays in results.items():
        ordered = sorted(delays)
        print(f"{wait:>17} | {statistics.median(ordered):>21.1f} | {ordered[int(0.9 * (len(ordered) - 1))]:>4.1f} |"
              f" {ordered[-1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
