"""Open-loop load through the public intake: a fixed offered rate for a fixed time.

Open loop (requests are sent on a schedule, not when the previous answer arrives), so a
slow system shows up as latency and backlog instead of silently lowering the rate it
is offered. Each payment's end-to-end latency is read from its own timeline: from the
intake's `PaymentReceived` to the event that ended it, both stamped by the product.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import orjson

from orchestrator.intake.credentials import bearer
from orchestrator.samples import TENANTS, round_robin_bodies

TERMINAL = ("SETTLED", "REJECTED", "FAILED")
# Requests in flight at once; above the offered rate times the intake's latency, so the
# schedule, not the client, sets the pace. aiohttp, not httpx: the generator shares the
# machine's two cores with the system it measures, and costs several times less CPU.
MAX_IN_FLIGHT_REQUESTS = 128
STATUS_POLL_CONCURRENCY = 16
STATUS_POLL_INTERVAL_S = 1.0


@dataclass
class LoadResult:
    offered: int = 0
    accepted: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    retried_requests: int = 0
    # 503 answers with Retry-After (admission control), whether sent again or not.
    shed: int = 0
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    accept_latencies_ms: list[float] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    # Every accepted payment id -> its tenant.
    payments: dict[str, str] = field(default_factory=dict)
    first_received_at: datetime | None = None
    last_ended_at: datetime | None = None

    @property
    def ended(self) -> int:
        return sum(self.statuses.values())

    def throughput_per_s(self) -> float:
        if not self.first_received_at or not self.last_ended_at:
            return 0.0
        span = (self.last_ended_at - self.first_received_at).total_seconds()
        return self.ended / span if span > 0 else 0.0

    def report_lines(self) -> list[str]:
        def pct(values: list[float], q: float) -> float:
            if not values:
                return float("nan")
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        lines = [
            f"offered {self.offered} in {self.send_seconds:.1f}s ({self.offered / max(self.send_seconds, 1e-9):.0f}/s), "
            f"accepted {self.accepted}, refused {sum(self.refused.values())} {self.refused or ''}, "
            f"transport errors {self.errors}, shed (503 Retry-After) {self.shed}",
            f"ended {self.ended}: " + ", ".join(f"{s} {self.statuses.get(s, 0)}" for s in TERMINAL)
            + f"; unfinished {len(self.unfinished)}; drain took {self.drain_seconds:.1f}s after the last send",
            f"sustained end-to-end throughput {self.throughput_per_s():.0f} payments/s "
            "(first received to last ended)",
        ]
        if self.latencies_ms:
            lines.append(
                "end-to-end latency ms (received -> terminal): "
                f"p50 {pct(self.latencies_ms, 0.5):.0f}  p90 {pct(self.latencies_ms, 0.9):.0f}  "
                f"p99 {pct(self.latencies_ms, 0.99):.0f}  max {max(self.latencies_ms):.0f}  "
                f"mean {statistics.fmean(self.latencies_ms):.0f}")
        if self.accept_latencies_ms:
            lines.append(
                "intake 202 latency ms: "
                f"p50 {pct(self.accept_latencies_ms, 0.5):.1f}  p99 {pct(self.accept_latencies_ms, 0.99):.1f}  "
                f"max {max(self.accept_latencies_ms):.1f}")
        return lines


async def offer_load(base_url: str, api_keys: Mapping[str, str], *, rate_per_s: float, duration_s: float,
                     drain_timeout_s: float, progress=None, retry_unavailable_s: float = 0.0) -> LoadResult:
    """Offer the load, each tenant's payments under its API key (`api_keys`: tenant id ->
    key, one for every tenant of the traffic). With `retry_unavailable_s`, a request
    answered 503 (or lost in transport) is sent again with the same Idempotency-Key for up
    to that long, as a well-behaved client does when the intake says the outcome is unknown."""
    missing = sorted(set(TENANTS) - set(api_keys))
    if missing:
        raise ValueError(f"no API key for tenants {', '.join(missing)}")
    auth = {tenant: bearer(key) for tenant, key in api_keys.items()}
    result = LoadResult()
    submitted: dict[str, str] = {}  # payment id -> tenant
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT_REQUESTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector, timeout=timeout,
                                     json_serialize=lambda obj: orjson.dumps(obj).decode()) as client:
        total = int(rate_per_s * duration_s)
        # Bodies are made before the clock starts, so making them cannot slow the schedule.
        generator = round_robin_bodies()
        bodies = iter([next(generator) for _ in range(total)])
        semaphore = asyncio.Semaphore(MAX_IN_FLIGHT_REQUESTS)

        async def send(tenant: str, body: dict) -> None:
            key = f"load-{uuid.uuid4()}"
            give_up_at = time.monotonic() + retry_unavailable_s
            while True:
                async with semaphore:
                    started = time.perf_counter()
                    try:
                        async with client.post("/v1/payments", json=body, headers={
                                **auth[tenant], "Idempotency-Key": key}) as answer:
                            payload = await answer.read()
                            status = answer.status
                            retry_after_s = _retry_after_s(answer.headers.get("Retry-After"))
                    except (aiohttp.ClientError, TimeoutError):
                        status, retry_after_s = None, None
                if status == 503 and retry_after_s is not None:
                    result.shed += 1
                if status in (None, 503) and time.monotonic() < give_up_at:
                    result.retried_requests += 1
                    # Admission control says when to come back; an unknown outcome, soon.
                    await asyncio.sleep(min(retry_after_s or 0.5, max(0.0, give_up_at - time.monotonic())))
                    continue
                break
            if status is None:
                result.errors += 1
                return
            result.accept_latencies_ms.append((time.perf_counter() - started) * 1000)
            if status == 202:
                result.accepted += 1
                submitted[orjson.loads(payload)["payment_id"]] = tenant
            else:
                result.refused[status] = result.refused.get(status, 0) + 1

        start = time.perf_counter()
        tasks = []
        for index in range(total):
            # Open loop: each request leaves at its scheduled time, whatever came back before.
            delay = start + index / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tenant, body = next(bodies)
            tasks.append(asyncio.create_task(send(tenant, body)))
            result.offered += 1
            if progress:
                progress("sent", result.offered, total)
        await asyncio.gather(*tasks)
        result.send_seconds = time.perf_counter() - start
        drain_started = time.perf_counter()
        records = await _wait_terminal(client, submitted, drain_timeout_s, progress, auth)
        result.drain_seconds = time.perf_counter() - drain_started
    for payment_id, record in records.items():
        result.statuses[record["status"]] = result.statuses.get(record["status"], 0) + 1
        timeline = record["timeline"]
        received = next((datetime.fromisoformat(t["occurred_at"]) for t in timeline
                         if t["event_type"] == "PaymentReceived"), None)
        ended = max((datetime.fromisoformat(t["occurred_at"]) for t in timeline
                     if t["event_type"] in ("PaymentSettled", "PaymentRejected", "PaymentFailed")), default=None)
        if received and ended:
            result.latencies_ms.append((ended - received).total_seconds() * 1000)
            result.first_received_at = min(filter(None, (result.first_received_at, received)))
            result.last_ended_at = max(filter(None, (result.last_ended_at, ended)))
    result.unfinished = sorted(set(submitted) - set(records))
    result.payments = dict(submitted)
    return result


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delay-seconds form (what the intake sends)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def _wait_terminal(client: aiohttp.ClientSession, submitted: dict[str, str], timeout_s: float,
                         progress, auth: Mapping[str, dict[str, str]]) -> dict[str, dict]:
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    semaphore = asyncio.Semaphore(STATUS_POLL_CONCURRENCY)

    async def check(payment_id: str, tenant: str) -> None:
        async with semaphore:
            try:
                async with client.get(f"/v1/payments/{payment_id}", headers=auth[tenant]) as answer:
                    if answer.status != 200:
                        return
                    record = orjson.loads(await answer.read())
            except (aiohttp.ClientError, TimeoutError):
                return
            if record["status"] in TERMINAL:
                done[payment_id] = record

    while time.monotonic() < deadline and len(done) < len(submitted):
        pending = [(p, t) for p, t in submitted.items() if p not in done]
        await asyncio.gather(*(check(p, t) for p, t in pending))
        if progress:
            progress("ended", len(done), len(submitted))
        if len(done) < len(submitted):
            await asyncio.sleep(STATUS_POLL_INTERVAL_S)
    return done
