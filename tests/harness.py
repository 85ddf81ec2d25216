"""Test harness: the real processes of the product, started the way operators start them.

`System` runs the clearing simulator, the stages and the intake as separate OS
processes (`python -m orchestrator.cli run STAGE...`), one stage per process as
containers run them or grouped as `payorch up` runs them, against the session's real Kafka
broker, each test system with its own topic names and data directory so tests cannot
see each other's payments. Tests may SIGKILL, SIGSTOP and restart any process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from orchestrator.intake.credentials import bearer, ensure_local_keys, read_local_keys
from orchestrator.samples import TENANTS
from orchestrator.topics import REQUIRED_STAGES, process_name
from orchestrator.settings import REPO_ROOT, Settings

PROCESS_READY_TIMEOUT_S = 60.0
# One line of figures per fault test; tests/conftest.py prints them at the end of the run
# (pytest captures a passing test's own output).
FAULT_REPORT_LINES: list[str] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports (`payorch up` gives each rail's
    simulator the next port). Drawn below the kernel's ephemeral range, so a client
    connection of another process cannot take one of them between check and bind."""
    import random

    for _ in range(200):
        base = random.randrange(20_000, 32_000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports found")


class System:
    def __init__(self, bootstrap: str, work_dir: Path, *, extra_env: dict[str, str] | None = None,
                 stage_processes: tuple[tuple[str, ...], ...] | None = None) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.intake_port = free_port()
        self.sim_port = free_port()
        self.env = dict(os.environ)
        self.env.update({
            "PAYORCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "PAYORCH_TOPIC_TEMPLATE": "{tenant}.payments.{stage}.t" + self.run_id,
            "PAYORCH_CONSUMER_GROUP_PREFIX": "payorch-t" + self.run_id,
            "PAYORCH_DATA_DIR": str(self.data_dir),
            "PAYORCH_INTAKE__PORT": str(self.intake_port),
            "PAYORCH_CLEARING__SIMULATOR_PORT": str(self.sim_port),
            "PAYORCH_CLEARING__BASE_URL": f"http://127.0.0.1:{self.sim_port}",
            "PAYORCH_KAFKA__PARTITIONS": "6",
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(extra_env or {})
        self.processes: dict[str, subprocess.Popen] = {}
        # The stage processes by name: one per stage unless a plan groups them; an optional
        # stage (notifications) only when a test's plan names it.
        plan = stage_processes or tuple((stage,) for stage in REQUIRED_STAGES)
        self.stage_processes = {process_name(stages): stages for stages in plan}
        self.api_keys: dict[str, str] = {}  # tenant id -> key, made by start_all
        self.base_url = f"http://127.0.0.1:{self.intake_port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"

    def settings(self) -> Settings:
        """Settings as the child processes see them (built from the same environment)."""
        saved = dict(os.environ)
        try:
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("PAYORCH_")})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s)

    def start(self, name: str) -> None:
        args = {"intake": ["intake"], "clearing-sim": ["clearing-sim"]}.get(
            name, ["run", *self.stage_processes.get(name, (name,))])
        log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args], env=self.env, cwd=REPO_ROOT,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()

    def start_all(self) -> None:
        result = self.cli("topics", "create")
        assert result.returncode == 0, result.stderr
        # One key per tenant, every scope, as `payorch up` makes them.
        ensure_local_keys(self.data_dir, list(TENANTS))
        self.api_keys = read_local_keys(self.data_dir)
        self.prepare_data_dir()
        self.start("clearing-sim")
        for name in self.stage_processes:
            self.start(name)
        self.start("intake")
        self.wait_http(f"{self.sim_url}/healthz")
        self.wait_http(f"{self.base_url}/readyz")
        self.wait_stages_consuming()

    def prepare_data_dir(self) -> None:
        """Made ready for the processes before they start (the processes here are ours)."""

    def wait_stages_consuming(self, timeout_s: float = PROCESS_READY_TIMEOUT_S) -> None:
        """Wait until every stage has its producer and consumer (its "consuming" log line):
        a fault injected before that would hit a stage that has not started yet."""
        deadline = time.monotonic() + timeout_s
        waiting = set(self.stage_processes)
        while waiting and time.monotonic() < deadline:
            for stage in list(waiting):
                path = self.log_dir / f"{stage}.log"
                if path.exists() and f"stage {stage} consuming" in path.read_text(errors="replace"):
                    waiting.discard(stage)
            time.sleep(0.2)
        assert not waiting, f"stages not consuming within {timeout_s}s: {sorted(waiting)}; logs in {self.log_dir}"

    def wait_http(self, url: str, timeout_s: float = PROCESS_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} did not answer within {timeout_s}s; logs in {self.log_dir}")

    def restart_exited(self) -> list[str]:
        """Start again every process that exited, as `payorch up` or a container
        orchestrator would; returns their names."""
        restarted = []
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                self.start(name)
                restarted.append(name)
        return restarted

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.delete_topics()

    def delete_topics(self, timeout_s: float = 10.0) -> None:
        """This system's topics (every name carries its run id), deleted once its processes
        are gone. The session's broker keeps every partition's segment files open; with
        each system's ~1,200 partitions left behind, a session of many systems reached the
        machine's open-files limit (20,000, which this container may not raise) and the
        broker shut down ("all log dirs have failed: Too many open files"). Best effort: a
        test whose broker is down leaves nothing to clean."""
        admin = AdminClient({"bootstrap.servers": self.env["PAYORCH_KAFKA__BOOTSTRAP_SERVERS"]})
        try:
            names = [name for name in admin.list_topics(timeout=timeout_s).topics if f".t{self.run_id}" in name]
        except KafkaException:
            return
        if not names:
            return
        for future in admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s).values():
            try:
                future.result(timeout=timeout_s * 2)
            except (KafkaException, TimeoutError):
                pass  # the broker went away meanwhile

    def process_states(self) -> dict[str, str]:
        """Each process: running, or how it exited (a stage that died is a stuck flow's
        first suspect, since this harness restarts only what a test restarts)."""
        return {name: "running" if process.poll() is None else f"exited {process.returncode}"
                for name, process in self.processes.items()}

    def log_problems(self, name: str, lines: int = 5) -> list[str]:
        """The last WARNING and ERROR lines of a process's log."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return []
        found = [line[:400] for line in path.read_text(errors="replace").splitlines()
                 if '"level":"WARNING"' in line or '"level":"ERROR"' in line or "Traceback" in line]
        return found[-lines:]

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- public API helpers -------------------------------------------------

    def auth(self, tenant: str) -> dict[str, str]:
        """The Authorization header of the tenant's key."""
        return bearer(self.api_keys[tenant])

    def payment_id(self, tenant: str, idempotency_key: str) -> str:
        """The id the intake gives a payment posted with `idempotency_key` by the tenant's
        key, which `ensure_local_keys` made as a client of its own (client id = key id)."""
        from orchestrator.intake.app import payment_id_for

        key_id = self.api_keys[tenant].split("_", 2)[1]
        return payment_id_for(tenant, key_id, idempotency_key)

    def post(self, tenant: str, body: dict, *, key: str | None = None, client: httpx.Client | None = None):
        headers = self.auth(tenant)
        if key:
            headers["Idempotency-Key"] = key
        return (client or httpx).post(f"{self.base_url}/v1/payments", json=body, headers=headers, timeout=30)

    def get(self, tenant: str, payment_id: str, client: httpx.Client | None = None):
        return (client or httpx).get(f"{self.base_url}/v1/payments/{payment_id}", headers=self.auth(tenant),
                                     timeout=30)

    def wait_terminal(self, tenant_of: dict[str, str], timeout_s: float = 60.0) -> dict[str, dict]:
        """Poll until every payment id (-> tenant) has a terminal status; returns the records."""
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        with httpx.Client() as client:
            while time.monotonic() < deadline and len(done) < len(tenant_of):
                for payment_id, tenant in tenant_of.items():
                    if payment_id in done:
                        continue
                    answer = self.get(tenant, payment_id, client)
                    if answer.status_code == 200 and answer.json()["status"] in ("SETTLED", "REJECTED", "FAILED"):
                        done[payment_id] = answer.json()
                if len(done) < len(tenant_of):
                    time.sleep(0.25)
        return done
