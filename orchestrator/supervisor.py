"""`payorch up`: the whole product on one machine, in a handful of OS processes.

The supervisor starts a local Kafka broker when none is configured, creates the topics,
starts the clearing simulator, the stages and the intake as child processes (the same
`payorch run STAGE...` command a container runs, with the stages grouped into processes
as `Settings.stage_processes` says), restarts a child that dies (with a
growing delay, so a crash loop cannot spin the CPU), and on Ctrl-C or SIGTERM stops the
intake first, then the stages, then the broker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
# bandit B404: starts payorch's own processes with argument lists.
import subprocess  # nosec B404
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orchestrator.bootstrap import load_configured_tenants
from orchestrator.intake.credentials import ensure_local_keys, open_credential_store
from orchestrator.kafka_clients import create_topics
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.topics import OPTIONAL_STAGES, process_name

log = logging.getLogger("payorch.supervisor")

RESTART_DELAY_S_MIN = 1.0
RESTART_DELAY_S_MAX = 30.0
# A child that stayed up this long is considered healthy again: its next crash restarts fast.
HEALTHY_UPTIME_S = 60.0
INTAKE_READY_TIMEOUT_S = 120.0
CHILD_STOP_TIMEOUT_S = 20.0


def write_pid_file(path: Path, pid: int) -> None:
    """Write then rename, so a reader never sees an empty or half-written pid file."""
    partial = path.with_suffix(".pid.tmp")
    partial.write_text(f"{pid}\n")
    partial.replace(path)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_delay_s: float = RESTART_DELAY_S_MIN
    next_start_at: float = 0.0
    log_file: object = field(default=None, repr=False)


class Supervisor:
    def __init__(self, settings: Settings, *, echo=print) -> None:
        self.settings = settings
        self.echo = echo
        self.children: list[Child] = []
        self.local_kafka = None
        self.stopping = False
        self.plan: tuple[tuple[str, ...], ...] = tuple(settings.stage_processes)
        self.log_dir = settings.data_dir.parent / "logs"
        # One pid file per child, so operators (and fault tests) can signal a stage.
        self.run_dir = settings.data_dir.parent / "run"

    def _env(self, bootstrap: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PAYORCH_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
        env["PAYORCH_DATA_DIR"] = str(self.settings.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_broker(self) -> str:
        if self.settings.kafka.bootstrap_servers:
            self.echo(f"using Kafka at {self.settings.kafka.bootstrap_servers}")
            return self.settings.kafka.bootstrap_servers
        from orchestrator.kafka_local import LocalKafka, ensure_kafka_jars

        self.echo("no Kafka configured: starting a local Apache Kafka broker (KRaft) ...")
        ensure_kafka_jars(REPO_ROOT)
        self.local_kafka = LocalKafka(data_dir=self.settings.data_dir.parent / "kafka",
                                      log_dir=self.log_dir)
        bootstrap = self.local_kafka.start()
        write_pid_file(self.run_dir / "kafka.pid", self.local_kafka.pid)
        self.echo(f"local Kafka ready at {bootstrap}")
        return bootstrap

    def rail_urls(self, tenants) -> dict[str, str]:
        """Every rail on the one clearing simulator (its paths name the rail)."""
        host, port = self.settings.clearing.simulator_host, self.settings.clearing.simulator_port
        return {rail.name: f"http://{host}:{port}" for tenant in tenants.values() for rail in tenant.rails}

    def stage_plan(self, tenants) -> tuple[tuple[str, ...], ...]:
        """The configured processes, plus one for each optional stage the plan leaves out
        but a tenant file configures (notifications: a tenant with webhook endpoints)."""
        plan = tuple(self.settings.stage_processes)
        planned = {stage for process in plan for stage in process}
        wanted = {"notifications": any(tenant.notifications.endpoints for tenant in tenants.values())}
        return plan + tuple((stage,) for stage in OPTIONAL_STAGES if stage not in planned and wanted.get(stage))

    def plan_children(self, rail_urls: dict[str, str], plan: tuple[tuple[str, ...], ...] | None = None) -> None:
        python = sys.executable
        cli = [python, "-m", "orchestrator.cli"]
        # One simulator process for all rails: it waits on asyncio timers, not threads, so
        # a slow rail does not hold up another, and one process idles for nine.
        port = str(self.settings.clearing.simulator_port)
        self.children = [Child("clearing-sim", [*cli, "clearing-sim", "--port", port], self.log_dir / "clearing-sim.log")]
        self.plan = plan if plan is not None else tuple(self.settings.stage_processes)
        for stages in self.plan:
            name = process_name(stages)
            self.children.append(Child(name, [*cli, "run", *stages], self.log_dir / f"{name}.log"))
        self.children.append(Child("intake", [*cli, "intake"], self.log_dir / "intake.log"))

    def _spawn(self, child: Child, env: dict[str, str]) -> None:
        if child.log_file is None:
            child.log_file = open(child.log_path, "ab", buffering=0)  # noqa: SIM115 - lives with the child
        child.process = subprocess.Popen(child.argv, env=env, stdout=child.log_file, stderr=subprocess.STDOUT,  # nosec B603
                                         cwd=REPO_ROOT, start_new_session=True)
        child.started_at = time.monotonic()
        write_pid_file(self.run_dir / f"{child.name}.pid", child.process.pid)

    def run(self) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            bootstrap = self.start_broker()
            settings = self.settings.model_copy(update={"kafka": self.settings.kafka.model_copy(
                update={"bootstrap_servers": bootstrap})})
            tenants = load_configured_tenants(settings)
            created, existing = create_topics(settings, tenants)
            self.echo(f"topics: {len(created)} created, {len(existing)} already there, for tenants "
                      f"{', '.join(sorted(tenants))}")
            keys_file, new_keys = ensure_local_keys(settings.data_dir, sorted(tenants),
                                                    open_credential_store(settings, background=False))
            self.echo(f"API keys: one per tenant in {keys_file}"
                      + (f" (new for {', '.join(new_keys)})" if new_keys else " (kept from the last run)"))
            rail_urls = self.rail_urls(tenants)
            env = self._env(bootstrap)
            env["PAYORCH_CLEARING__RAIL_URLS"] = json.dumps(rail_urls)
            self.plan_children(rail_urls, self.stage_plan(tenants))
            for child in self.children:
                self._spawn(child, env)
            self.echo(f"started {len(self.children)} processes; logs in {self.log_dir}")
            self._wait_for_intake()
            intake_url = f"http://{settings.intake.host}:{settings.intake.port}"
            self.echo(f"ready: intake on {intake_url} (POST /v1/payments with Authorization: Bearer <key from "
                      f"{keys_file.name}>), Ctrl-C to stop")
            self._monitor(env)
        finally:
            self.shutdown()
        return 0

    def _on_signal(self, *_args: object) -> None:
        self.stopping = True

    def _wait_for_intake(self) -> None:
        url = f"http://{self.settings.intake.host}:{self.settings.intake.port}/readyz"
        deadline = time.monotonic() + INTAKE_READY_TIMEOUT_S
        while not self.stopping:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            intake = self.children[-1]
            if intake.process and intake.process.poll() is not None and intake.restarts == 0:
                self.echo(f"intake exited with {intake.process.returncode}; see {intake.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"intake did not become ready within {INTAKE_READY_TIMEOUT_S}s; see {self.log_dir}")
            time.sleep(0.2)

    def _monitor(self, env: dict[str, str]) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                process = child.process
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    code = process.returncode
                    uptime = now - child.started_at
                    if uptime > HEALTHY_UPTIME_S:
                        child.restart_delay_s = RESTART_DELAY_S_MIN
                    child.next_start_at = now + child.restart_delay_s
                    self.echo(f"{child.name} exited with {code} after {uptime:.1f}s; restarting in "
                              f"{child.restart_delay_s:.0f}s (log: {child.log_path})")
                    child.restart_delay_s = min(RESTART_DELAY_S_MAX, child.restart_delay_s * 2)
                    child.process = None
                if now >= child.next_start_at:
                    child.restarts += 1
                    self._spawn(child, env)
            time.sleep(0.25)

    def shutdown(self) -> None:
        self.stopping = True
        # Intake first (no new payments), then the stages drain and commit, then the broker.
        simulators = [c.name for c in self.children if c.name.startswith("clearing-sim")]
        stage_processes = [process_name(stages) for stages in self.plan]
        for group in (["intake"], stage_processes, simulators):
            members = [c for c in self.children if c.name in group and c.process and c.process.poll() is None]
            for child in members:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
            for child in members:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        for child in self.children:
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None
            (self.run_dir / f"{child.name}.pid").unlink(missing_ok=True)
        if self.local_kafka is not None:
            self.echo("stopping local Kafka ...")
            self.local_kafka.stop()
            self.local_kafka = None
            (self.run_dir / "kafka.pid").unlink(missing_ok=True)
        self.echo("stopped")
