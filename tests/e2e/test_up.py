"""End to end, as a new user runs it: `payorch up`, then payments through the public API.

`payorch up` is started with no Kafka configured, so it starts its own local broker,
exactly as the README's run command does on a fresh machine.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.intake.credentials import bearer, read_local_keys
from orchestrator.loadgen import offer_load
from orchestrator.bootstrap import STAGE_NAMES
from orchestrator.topics import process_name
from orchestrator.settings import REPO_ROOT, Settings
from tests.harness import free_port, free_port_block

pytestmark = pytest.mark.e2e

UP_READY_TIMEOUT_S = 240
OFFERED_RATE_PER_S = 300
OFFERED_PAYMENTS = 3000


class Up:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.intake_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.intake_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
        env.update({
            "PAYORCH_DATA_DIR": str(work_dir / "data"),
            "PAYORCH_INTAKE__PORT": str(self.intake_port),
            "PAYORCH_CLEARING__SIMULATOR_PORT": str(sim_port := free_port_block(16)),
            "PAYORCH_CLEARING__BASE_URL": f"http://127.0.0.1:{sim_port}",
            "PYTHONUNBUFFERED": "1",
        })
        self.env = env
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up"], env=env, cwd=REPO_ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, needle: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r} within {timeout_s}s; output so far:\n" + "\n".join(self.output))

    def keys(self) -> dict[str, str]:
        """The local API keys `payorch up` wrote, tenant id -> key."""
        return read_local_keys(self.work_dir / "data")

    def auth(self, tenant: str) -> dict[str, str]:
        return bearer(self.keys()[tenant])

    def pid_of(self, child: str) -> int:
        return int((self.work_dir / "run" / f"{child}.pid").read_text())

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                return self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                return self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    running = Up(tmp_path_factory.mktemp("up"))
    try:
        running.wait_for_line("ready: intake on", UP_READY_TIMEOUT_S)
        yield running
    finally:
        running.stop()


def test_up_prints_ready_and_answers(up):
    assert httpx.get(f"{up.base_url}/readyz").status_code == 200
    assert any("local Kafka ready" in line for line in up.output), up.output
    # One key per tenant, readable by the owner only, named where up says.
    keys_file = up.work_dir / "data" / "api-keys.json"
    assert any(f"API keys: one per tenant in {keys_file}" in line for line in up.output), up.output
    assert sorted(up.keys()) == ["apac", "emea", "latam", "na"]
    assert keys_file.stat().st_mode & 0o077 == 0
    assert httpx.get(f"{up.base_url}/v1/payments/x").status_code == 401


def test_the_intake_bounds_request_heads_and_answers_server_refusals_in_problem_json(up):
    """The running intake serves with the bounded protocol (orchestrator/intake/server.py)."""
    import json
    import socket

    def refusal(raw: bytes) -> tuple[bytes, dict]:
        with socket.create_connection(("127.0.0.1", up.intake_port), timeout=20) as client:
            client.sendall(raw)
            answer = b""
            while chunk := client.recv(65_536):  # the intake closes the connection after it
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/problem+json" in head.lower(), head
        return head.split(b"\r\n")[0], json.loads(body)

    status, body = refusal(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert (status, body["type"]) == (b"HTTP/1.1 431 Request Header Fields Too Large",
                                      "https://payorch.dev/problems/headers-too-large")
    status, body = refusal(b"\x16\x03\x01 not http\r\n\r\n")
    assert (status, body["type"]) == (b"HTTP/1.1 400 Bad Request", "https://payorch.dev/problems/malformed-request")


def test_one_clearing_simulator_process_serves_every_rail(up):
    rails = {"fednow", "rtp", "lynx", "sepa_inst", "fps", "pix", "spei", "npp", "fast"}
    os.kill(up.pid_of("clearing-sim"), 0)  # alive
    health = httpx.get(f"http://127.0.0.1:{up.env['PAYORCH_CLEARING__SIMULATOR_PORT']}/healthz").json()
    assert set(health["rails"]) == rails


def test_demo_runs_every_tenant_to_the_end(up):
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "demo", "--url", up.base_url,
                             "--per-tenant", "2", "--timeout-s", "90"], cwd=REPO_ROOT, env=up.env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 payments sent: SETTLED 8, REJECTED 0, FAILED 0" in result.stdout, result.stdout
    for tenant in ("na", "emea", "latam", "apac"):
        assert f"{tenant} ·" in result.stdout


def test_3000_payments_at_300_per_second_all_end(up):
    # As a client should, it sends again after a 503 (admission control's Retry-After, or
    # an unconfirmed publish) with the same Idempotency-Key.
    result = asyncio.run(offer_load(up.base_url, up.keys(), rate_per_s=OFFERED_RATE_PER_S,
                                    duration_s=OFFERED_PAYMENTS / OFFERED_RATE_PER_S, drain_timeout_s=300,
                                    retry_unavailable_s=120))
    print("\n".join(result.report_lines()))
    assert result.offered == OFFERED_PAYMENTS
    assert result.accepted == OFFERED_PAYMENTS, result.report_lines()
    assert result.unfinished == [], result.report_lines()
    assert result.ended == OFFERED_PAYMENTS
    assert result.statuses.get("SETTLED") == OFFERED_PAYMENTS, result.statuses
    # The ledger posts concurrently with settlement: once it has caught up, every
    # invariant holds and every settled payment is posted exactly once.
    deadline = time.monotonic() + 60
    while True:
        verify = subprocess.run([sys.executable, "-m", "orchestrator.cli", "ledger", "verify"], cwd=REPO_ROOT,
                                env=up.env, capture_output=True, text=True, timeout=120)
        if " 0 in flight" in verify.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all invariants hold" in verify.stdout and " 0 in flight" in verify.stdout, verify.stdout
    summary = httpx.get(f"{up.base_url}/v1/ledger/summary", headers=up.auth("emea")).json()
    assert summary["tenant_id"] == "emea" and summary["transfers"].get("POSTED", 0) > 0
    customer = [row for row in summary["currencies"] if row["kind"] == "customer" and row["currency"] == "EUR"]
    clearing = [row for row in summary["currencies"] if row["kind"] == "clearing" and row["currency"] == "EUR"]
    assert customer[0]["debits_posted_minor"] == clearing[0]["credits_posted_minor"] > 0


def test_up_runs_the_stages_in_the_processes_of_its_plan(up):
    plan = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes
    assert len(plan) < len(STAGE_NAMES), "the default plan hosts some stages together"
    for stages in plan:
        name = process_name(stages)
        os.kill(up.pid_of(name), 0)  # alive
        log_path = up.work_dir / "logs" / f"{name}.log"
        deadline = time.monotonic() + 60
        while f"stage {name} consuming" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{name} never said it was consuming; see {log_path}"
            time.sleep(0.2)


def test_a_dead_stage_process_is_restarted_by_up(up):
    # The process that hosts settlement (with execution, in the default plan).
    (host,) = [process_name(stages) for stages in Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes
               if "settlement" in stages]
    victim = up.pid_of(host)
    os.kill(victim, signal.SIGKILL)
    up.wait_for_line(f"{host} exited with -9", 30)
    deadline = time.monotonic() + 30
    while up.pid_of(host) == victim and time.monotonic() < deadline:
        time.sleep(0.2)
    assert up.pid_of(host) != victim
    body = __import__("orchestrator.samples", fromlist=["sample_body"]).sample_body("na")
    # As a client would: a 503 `overloaded` (admission control, still seeing the end of
    # the load test before this one) is sent again after its Retry-After, same key.
    headers = {**up.auth("na"), "Idempotency-Key": "after-restart-1"}
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(f"{up.base_url}/v1/payments", json=body, headers=headers)
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
        assert answer.json()["type"].endswith("/overloaded"), answer.text
        time.sleep(int(answer.headers["Retry-After"]))
    assert answer.status_code == 202, (answer.status_code, answer.headers, answer.text)
    payment_id = answer.json()["payment_id"]
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline and status != "SETTLED":
        status = httpx.get(f"{up.base_url}/v1/payments/{payment_id}", headers=up.auth("na")).json()["status"]
        time.sleep(0.3)
    assert status == "SETTLED"


def test_ctrl_c_stops_everything_cleanly(up):
    assert up.stop() == 0
    rest = []
    while not up.lines.empty():
        rest.append(up.lines.get())
    assert any(line == "stopped" for line in rest), rest
    for child in ("intake", "ledger", "clearing-sim", "kafka"):
        assert not (up.work_dir / "run" / f"{child}.pid").exists()
