"""Benchmark: CPU per event of every stage's own work, with no broker and no HTTP.

Payments flow through the real stages in this one process, batch by batch, as the
runtime would hand them over: the bytes are decoded, the stage decides (with its real
SQLite store in a temporary folder), and the outputs are encoded, each stage's share
timed with the process's CPU clock. The clearing system is a stand-in that answers every
pacs.008 with an accepting pacs.002 (its cost is printed on its own line and belongs to
the clearing simulator, not to execution). Kafka's own cost is not here: see
perf/bench.py for the whole system.

  .venv/bin/python perf/stage_cpu.py --payments 4000 --batch 50

Nothing here asserts a number; it prints microseconds of CPU per payment per stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from adapters.iso20022.pacs002 import TransactionStatus, build_pacs002  # noqa: E402
from orchestrator.bootstrap import build_stage  # noqa: E402
from orchestrator.effects import resolve  # noqa: E402
from orchestrator.events import EventCodec, received_event  # noqa: E402
from orchestrator.intake.models import CreditTransferIn  # noqa: E402
from orchestrator.samples import round_robin_bodies  # noqa: E402
from orchestrator.settings import KafkaSettings, Settings  # noqa: E402
from orchestrator.stages.tracking import TrackedEvent  # noqa: E402
from orchestrator.tenants import load_tenants  # noqa: E402
from orchestrator.topics import OUTPUT_TOPIC_OF_STAGE  # noqa: E402
from orchestrator.validation import normalise_payment  # noqa: E402
from orchestrator.wire import event_headers  # noqa: E402

ORDER = ("initiation", "sanctions", "fraud", "routing", "ledger", "execution", "settlement", "tracking")


class AcceptingClearingStandIn:
    """Answers every pacs.008 with an accepting pacs.002 (ACSC), timing itself apart."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def submit_many_timed(self, requests):
        started = time.process_time()
        results = []
        for _url, document, _timeout in requests:
            uetr = document.split(b"<UETR>")[1].split(b"</UETR>")[0].decode()
            status = TransactionStatus(None, uetr, "ACSC", accepted_at=datetime.now(UTC))
            answer = build_pacs002("M", statuses=[status], message_id="R" + uuid.uuid4().hex[:20],
                                   created_at=datetime.now(UTC))
            results.append((answer, 0.001))
        self.cpu_s += time.process_time() - started
        return results

    def submit_many_async(self, requests):
        answered: Future = Future()
        answered.set_result(self.submit_many_timed(requests))
        return answered

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=50, help="events per handed-over batch")
    args = parser.parse_args()
    if not 1 <= args.payments <= 200_000 or not 1 <= args.batch <= 10_000:
        parser.error("payments must be in [1, 200000] and batch in [1, 10000]")

    work = Path(tempfile.mkdtemp(prefix="payorch-stage-cpu-"))
    settings = Settings(data_dir=work, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    tenants = load_tenants(settings.tenants_dir)
    codec = EventCodec(settings.schemas_dir)
    clearing = AcceptingClearingStandIn()
    stages = {}
    for name in ORDER:
        if name == "execution":
            from orchestrator.stages.execution import ExecutionStage
            stages[name] = ExecutionStage(tenants, settings.region, work, codec, clearing,
                                          settings.clearing.url_for, retry=settings.runtime.retry)
        else:
            stages[name] = build_stage(name, settings, tenants, codec)

    bodies = round_robin_bodies()
    topics: dict[str, list[tuple[bytes, list]]] = defaultdict(list)
    for _ in range(args.payments):
        tenant, body = next(bodies)
        payment = normalise_payment(CreditTransferIn.model_validate(body).to_payment(str(uuid.uuid4()), tenant))
        event = received_event(payment, channel="json", idempotency_key=None, occurred_at=datetime.now(UTC),
                               region=settings.region)
        topics["received"].append((codec.encode(event), event_headers(event, codec.writer.version)))

    cpu = defaultdict(float)
    counts = defaultdict(int)
    consumed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # stage -> topic -> read up to
    for _round in range(12):  # each round moves every payment one hop further
        for name in ORDER:
            stage = stages[name]
            for topic in stage.input_topics:
                pending = topics[topic][consumed[name][topic]:]
                consumed[name][topic] = len(topics[topic])
                for start in range(0, len(pending), args.batch):
                    chunk = pending[start:start + args.batch]
                    began = time.process_time()
                    events = []
                    for value, headers in chunk:
                        event_type = next(v for k, v in headers if k == "event_type").decode()
                        if stage.input_event_types is not None and event_type not in stage.input_event_types:
                            continue
                        if name == "tracking":
                            events.append(TrackedEvent.from_message(
                                value, {k: v.decode() for k, v in headers}, codec))
                        else:
                            events.append(codec.decode(value))
                    outputs = resolve(stage.handle_batch(events, datetime.now(UTC))) if events else []
                    encoded = [(codec.encode(out), event_headers(out, codec.writer.version)) for out in outputs
                               if not isinstance(out, tuple) and hasattr(out, "payment")]
                    cpu[name] += time.process_time() - began
                    counts[name] += len(events)
                    if encoded:
                        topics[OUTPUT_TOPIC_OF_STAGE[name]].extend(encoded)
    settled = sum(1 for _, headers in topics["settled"])
    print(f"{args.payments} payments, batches of {args.batch}; {settled} settled in-process")
    total = 0.0
    for name in ORDER:
        per_payment_us = cpu[name] / args.payments * 1e6
        total += per_payment_us
        print(f"  {name:11s} {per_payment_us:8.0f} us CPU per payment  ({counts[name]} events handled)")
    print(f"  {'all stages':11s} {total:8.0f} us CPU per payment")
    print(f"  (clearing stand-in, not a stage: {clearing.cpu_s / args.payments * 1e6:.0f} us per payment)")


if __name__ == "__main__":
    main()
