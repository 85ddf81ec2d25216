"""The bad days, on the real broker: each fault during load, then the same checks.

Each test offers load through the public intake while one fault happens, then checks
(tests/integration/fault_support.py) that every payment ended SETTLED, REJECTED or
FAILED with a reason, or sits in a dead-letter topic; that none was lost or recorded
twice; and that `payorch ledger verify` passes. Each prints a line
`FAULT <name>: offered=... settled=... rejected=... failed=... dead_lettered=... lost=0 duplicated=0`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from confluent_kafka import Producer

from orchestrator.kafka_local import LocalKafka, ensure_kafka_jars
from orchestrator.loadgen import LoadResult, offer_load
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.topics import TopicNamer
from tests.harness import FAULT_REPORT_LINES, System
from tests.integration.fault_support import check_after_fault, dead_lettered_payments, tenants_dir

pytestmark = pytest.mark.integration

RATE_PER_S = 60
# Breakers that react within a short test: a handful of calls, a short open time.
FAST_BREAKERS = {"breaker": {"min_calls": 3, "window_s": 10, "open_s": 1.5, "half_open_probes": 2}}


def start_load(system: System, *, duration_s: float, rate_per_s: float = RATE_PER_S,
               retry_unavailable_s: float = 60.0, drain_timeout_s: float = 150) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def load() -> None:
        box["result"] = asyncio.run(offer_load(system.base_url, system.api_keys, rate_per_s=rate_per_s, duration_s=duration_s,
                                               drain_timeout_s=drain_timeout_s,
                                               retry_unavailable_s=retry_unavailable_s))

    thread = threading.Thread(target=load)
    thread.start()
    return thread, box


def finish_load(thread: threading.Thread, box: dict, system: System | None = None) -> LoadResult:
    """Wait for the load to drain. With `system`, do what `payorch up` (or ECS) does
    meanwhile: start again any process that exited (a stage that hit a fatal client
    error or a hung Kafka call ends itself so that a new process recovers)."""
    deadline = time.monotonic() + 400
    restarted: list[str] = []
    while thread.is_alive() and time.monotonic() < deadline:
        if system is not None:
            restarted += system.restart_exited()
        thread.join(timeout=1)
    assert "result" in box, "the load generator did not finish"
    if restarted:
        print(f"processes that exited and were restarted: {sorted(restarted)}")
    return box["result"]


def wait_for_first_settled(system: System, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        system.restart_exited()  # as payorch up would, if a stage ended itself while starting
        path = system.data_dir / "tracking.sqlite"
        if path.exists():
            with sqlite3.connect(path) as db:
                try:
                    if db.execute("SELECT 1 FROM payments WHERE status='SETTLED' LIMIT 1").fetchone():
                        return
                except sqlite3.OperationalError:
                    pass  # the tracking stage has not created its tables yet
        time.sleep(0.2)
    raise AssertionError(f"no payment settled within {timeout_s}s; logs in {system.log_dir}")


def make_system(kafka_bootstrap: str, tmp_path, stage_processes=None, **tenant_changes) -> System:
    env = {"PAYORCH_TENANTS_DIR": str(tenants_dir(tmp_path, **tenant_changes))} if tenant_changes else {}
    system = System(kafka_bootstrap, tmp_path, extra_env=env, stage_processes=stage_processes)
    system.start_all()
    return system


# One stage per process, as containers run them; and `payorch up`'s plan, where one
# process hosts several stages in one transaction per commit interval.
PLANS = {"one-stage-per-process": None, "up-plan": Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes}


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_stage_process_sigkilled_during_load(kafka_bootstrap, tmp_path, plan):
    system = make_system(kafka_bootstrap, tmp_path, stage_processes=PLANS[plan])
    try:
        duration_s = 10
        thread, box = start_load(system, duration_s=duration_s)
        time.sleep(1.0)
        for victim in system.stage_processes:  # each stage process dies once, mid-load, without warning
            system.kill(victim, signal.SIGKILL)
            time.sleep(0.3)
            system.start(victim)
            time.sleep(0.7)
        result = finish_load(thread, box, system)
        offered = int(RATE_PER_S * duration_s)
        counts = check_after_fault(system, f"sigkill-each-stage-process-{plan}", result, offered=offered)
        assert counts["settled"] == offered
    finally:
        system.stop()


def test_broker_stopped_and_restarted_during_load(tmp_path):
    ensure_kafka_jars(REPO_ROOT)
    broker = LocalKafka(log_dir=tmp_path / "kafka-logs")
    try:
        bootstrap = broker.start()
    except Exception as exc:  # a broker that cannot start is a failure, not a skip
        pytest.fail(f"the local Kafka broker could not start: {exc}", pytrace=False)
    system = System(bootstrap, tmp_path / "system", extra_env={"PAYORCH_INTAKE__PUBLISH_TIMEOUT_S": "3"})
    try:
        system.start_all()
        duration_s = 12
        # A client that gets 503 "outcome unknown" sends again with the same key.
        thread, box = start_load(system, duration_s=duration_s, retry_unavailable_s=120)
        time.sleep(3)
        broker.restart(downtime_s=6)  # a clean stop, six seconds without a broker, then back
        # Stages that gave up while it was away exit non-zero (a fatal client error, or the
        # hang watchdog); restart them as `payorch up` would, until the load has drained.
        restarted: list[str] = []
        while thread.is_alive():
            restarted += system.restart_exited()
            time.sleep(1)
        result = finish_load(thread, box)
        restarted += system.restart_exited()
        print(f"processes restarted after the outage: {sorted(restarted) or 'none'}; "
              f"requests sent again after 503: {result.retried_requests}")
        offered = int(RATE_PER_S * duration_s)
        counts = check_after_fault(system, "broker-stop-restart", result, offered=offered)
        # Stages stalled by the outage (and a hung client, until the watchdog restarts it)
        # can outlast the screening verdict timeout and the rails' time limit: such
        # payments must end with exactly those reasons, never silently.
        with httpx.Client() as client:
            records = [system.get(t, p, client).json() for p, t in result.payments.items()]
        reasons = {r["reason"]["code"] for r in records if r["status"] != "SETTLED"}
        print(f"reasons of the payments that did not settle: {sorted(reasons) or 'none'}")
        assert reasons <= {"screening_verdict_timeout", "rail_time_limit_exceeded"}, reasons
        assert counts["settled"] + counts["rejected"] + counts["failed"] == offered
    finally:
        system.stop()
        broker.stop()


# The clearing outage lasts until a breaker opens, up to this; the rails' time limit (60 s
# in that test) is longer, so waiting payments still settle.
OUTAGE_MAX_S = 40


def _breaker_lines(metrics: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith("payorch_circuit_breaker_state{")]


def _a_breaker_is_open(metrics: str) -> bool:
    """Open is state 2, half-open 1 (orchestrator/circuit_breaker.py)."""
    lines = _breaker_lines(metrics)
    return any('state="open"' in line and line.endswith(" 2.0") for line in lines) or \
        any('state="half_open"' in line and line.endswith(" 1.0") for line in lines)


def test_clearing_simulator_down_then_back(kafka_bootstrap, tmp_path):
    system = make_system(kafka_bootstrap, tmp_path, all_rails={**FAST_BREAKERS, "time_limit_s": 60})
    try:
        duration_s = 12
        thread, box = start_load(system, duration_s=duration_s)
        wait_for_first_settled(system)  # the flow runs end to end before the rails go away
        system.kill("clearing-sim", signal.SIGKILL)
        # Every rail unreachable for at least six seconds, and until a breaker shows it:
        # how soon one opens depends on how fast execution reaches the rails on this
        # machine, not on a fixed sleep. A breaker that never opens fails below.
        down_at = time.monotonic()
        while True:
            time.sleep(0.5)
            metrics_while_down = httpx.get(f"{system.base_url}/metrics", headers=system.auth("emea"), timeout=10).text
            outage_s = time.monotonic() - down_at
            if outage_s >= OUTAGE_MAX_S or (outage_s >= 6 and _a_breaker_is_open(metrics_while_down)):
                break
        print(f"rails down for {outage_s:.1f} s")
        system.start("clearing-sim")
        result = finish_load(thread, box, system)
        offered = int(RATE_PER_S * duration_s)
        counts = check_after_fault(system, "clearing-down-then-back", result, offered=offered)
        assert counts["settled"] == offered, "payments wait for the rail instead of failing"

        # The wait is visible: breakers opened (metrics) and timelines show the deferrals.
        breaker_lines = _breaker_lines(metrics_while_down)
        print("breakers while the rails were down:", *breaker_lines, sep="\n  ")
        assert breaker_lines
        assert _a_breaker_is_open(metrics_while_down), breaker_lines
        trips = [line for line in httpx.get(f"{system.base_url}/metrics", headers=system.auth("emea"),
                                             timeout=10).text.splitlines()
                 if line.startswith("payorch_circuit_breaker_trips{")]
        assert any(float(line.rsplit(" ", 1)[1]) >= 1 for line in trips), trips
        deferred = 0
        with httpx.Client() as client:
            for payment_id, tenant in list(result.payments.items())[:300]:
                timeline = system.get(tenant, payment_id, client).json()["timeline"]
                waits = [t for t in timeline if t["event_type"] == "PaymentDeferred"]
                if waits:
                    deferred += 1
                    assert waits[0]["stage"] == "execution" and waits[0]["breaker_state"] in ("closed", "open",
                                                                                             "half_open")
                    assert timeline[-1]["event_type"] in ("PaymentSettled", "FundsPosted")
        assert deferred > 0, "no payment recorded its wait for the rail"
    finally:
        system.stop()


def test_rail_slower_than_its_time_limit(kafka_bootstrap, tmp_path):
    """Every call to the slow rail times out. A payment the rail did receive is asked
    about (status inquiry) instead of being failed: the rail settles it late, and it
    ends SETTLED. Only a payment never sent (held by the open breaker until its time
    limit) ends FAILED rail_time_limit_exceeded, its funds released. No payment ends
    FAILED that the rail settled: its report and our statuses agree."""
    slow = {"emea.sepa_inst": {"time_limit_s": 2, "simulator": {"latency_ms_min": 3000, "latency_ms_p50": 3200,
                                                                           "latency_ms_max": 3500}}}
    system = make_system(kafka_bootstrap, tmp_path, rail_overrides=slow, all_rails=FAST_BREAKERS)
    try:
        duration_s = 6
        result = finish_load(*start_load(system, duration_s=duration_s), system)
        offered = int(RATE_PER_S * duration_s)
        counts = check_after_fault(system, "rail-slower-than-time-limit", result, offered=offered)
        with httpx.Client() as client:
            records = [system.get(t, p, client).json() for p, t in result.payments.items()]
        failed = [r for r in records if r["status"] == "FAILED"]
        on_slow_rail = [r for r in records if any(t.get("rail") == "sepa_inst" for t in r["timeline"])]
        assert on_slow_rail, "the load must use the slow rail"
        assert {r["payment_id"] for r in failed} <= {r["payment_id"] for r in on_slow_rail}
        assert {(r["reason"]["code"], r["reason"]["iso_code"]) for r in failed} <= {("rail_time_limit_exceeded", "AB05")}
        for record in failed:  # the reservation is released, not left pending
            released = [t for t in record["timeline"] if t["event_type"] == "FundsReleased"]
            assert released, f"payment {record['payment_id']} failed without releasing its funds"
        settled_late = [r for r in on_slow_rail if r["status"] == "SETTLED"]
        assert settled_late, "the rail settles what it received, and the inquiry finds it"
        for record in settled_late:
            waits = [t["reason_code"] for t in record["timeline"] if t["event_type"] == "PaymentDeferred"]
            assert "clearing_timeout" in waits, record["timeline"]
        reported = {row["uetr"] for row in httpx.get(f"{system.sim_url}/rails/sepa_inst/report",
                                                     timeout=30).json()["transactions"]}
        assert {r["payment_id"] for r in settled_late} <= reported
        assert not {r["payment_id"] for r in failed} & reported, "FAILED, though the rail settled it"
        assert counts["settled"] == offered - len(failed)
    finally:
        system.stop()


def test_poison_burst_goes_to_dead_letters_and_the_rest_settles(kafka_bootstrap, tmp_path):
    system = make_system(kafka_bootstrap, tmp_path)
    try:
        duration_s = 6
        thread, box = start_load(system, duration_s=duration_s)
        time.sleep(1.5)
        namer = TopicNamer(system.settings().topic_template)
        producer = Producer({"bootstrap.servers": system.settings().kafka.bootstrap_servers})
        burst = {"received": ("PaymentReceived", {"initiation", "tracking"}),
                 "routed": ("PaymentRouted", {"execution", "ledger", "tracking"})}
        per_topic = 50
        for stage_topic, (event_type, _) in burst.items():
            for i in range(per_topic):
                producer.produce(namer.topic("emea", stage_topic), key=f"poison-{stage_topic}-{i}".encode(),
                                 value=os.urandom(40),
                                 headers=[("event_type", event_type.encode()), ("tenant_id", b"emea"),
                                          ("correlation_id", f"poison-{stage_topic}-{i}".encode())])
        assert producer.flush(30) == 0
        result = finish_load(thread, box, system)
        offered = int(RATE_PER_S * duration_s)
        counts = check_after_fault(system, "poison-burst", result, offered=offered)
        assert counts["settled"] == offered

        # Every poison message is dead-lettered once by every stage that reads its topic.
        deadline = time.monotonic() + 60
        while True:
            dead = dead_lettered_payments(system)
            complete = all(dead.get(f"poison-{t}-{i}") == readers for t, (_, readers) in burst.items()
                           for i in range(per_topic))
            if complete or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert complete, {k: v for k, v in dead.items() if k.startswith("poison")}
        listing = system.cli("dlq", "list")
        assert listing.returncode == 0, listing.stderr
        print(listing.stdout)
        rows = [line.split() for line in listing.stdout.splitlines() if line.startswith("emea")]
        by_stage = {(row[1], row[2]): int(row[3]) for row in rows}
        assert by_stage[("initiation", "UndecodableEvent")] == per_topic
        assert by_stage[("execution", "UndecodableEvent")] == per_topic
        assert by_stage[("ledger", "UndecodableEvent")] == per_topic
        assert by_stage[("tracking", "UndecodableEvent")] == 2 * per_topic
        line = f"FAULT poison-burst: poison={per_topic * len(burst)} dead_letters={sum(by_stage.values())} {by_stage}"
        print(line)
        FAULT_REPORT_LINES.append(line)
    finally:
        system.stop()
