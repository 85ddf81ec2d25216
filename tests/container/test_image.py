"""The one OCI image, built by `./dev image` and run here with podman: the intake and every
stage as containers of it against the session's real Kafka broker (host network), with a
read-only root filesystem, a tmpfs /tmp and the data directory a host bind mount.

A payment goes in through the containerised intake's public API and settles; then, under
load, the ledger and the execution containers are SIGKILLed and started again on the same
data directory, and nothing is lost: every payment of the batch ends exactly once, the
ledger holds one debit and one credit per payment, and `payorch ledger verify` (run in a
container of the image too) passes. The clearing simulator stands in for the clearing
systems (outside the product): it runs as a plain process, as in the rest of the suite.

Under CI=true a podman that cannot be installed or run fails the test; elsewhere the test
skips only when podman is missing and `./dev image` cannot install it (not root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator.loadgen import offer_load
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from tests.harness import FAULT_REPORT_LINES, PROCESS_READY_TIMEOUT_S, System

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
# `./dev image` on a fresh machine: apt-get installs podman, debootstrap makes the base,
# PyPI serves the locked wheels. Measured at 7 minutes here on a busy machine (debootstrap
# 4 of them); a reused image, seconds.
IMAGE_BUILD_TIMEOUT_S = 1200
# The first test builds the image in its fixture: its limit is the build's plus the
# suite's usual 600 s for the test itself (pyproject.toml).
pytestmark = [pytest.mark.container, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT_S + 600)]
CONTAINER_UID = 10001  # the image's USER, as in the ECS task definitions and the pods
IN_CONTAINER_DATA_DIR = "/var/lib/payorch"
OFFERED_RATE_PER_S = 20
LOAD_DURATION_S = 6


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def image() -> str:
    """The image's tag, from `./dev image` (which reuses an image whose inputs are unchanged)."""
    if shutil.which("podman") is None and os.geteuid() != 0 and not _in_ci():
        pytest.skip("podman is not installed and ./dev image needs root to install it with apt-get")
    started = time.monotonic()
    result = subprocess.run([str(REPO_ROOT / "dev"), "image"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=IMAGE_BUILD_TIMEOUT_S)
    output = result.stdout.strip().splitlines()
    assert result.returncode == 0 and output, (
        f"./dev image failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    FAULT_REPORT_LINES.append(f"container image {output[-1]}: {' / '.join(output[:-1])}; "
                              f"./dev image took {time.monotonic() - started:.0f}s in this run")
    return output[-1]


class ContainerSystem(System):
    """tests.harness.System with the intake and the stages as containers of the image; the
    clearing simulator stays a plain process. The podman client of each container runs
    attached, so its output lands in the same log files the harness reads."""

    def __init__(self, image: str, bootstrap: str, work_dir: Path) -> None:
        super().__init__(bootstrap, work_dir, extra_env={"PAYORCH_INTAKE__HOST": "127.0.0.1"})
        self.image = image
        self.containers: set[str] = set()

    def container_name(self, name: str) -> str:
        return f"payorch-t{self.run_id}-{name}"

    def podman_run(self, name: str, args: list[str], *, interactive: bool = False) -> list[str]:
        env = [f"--env={key}={value}" for key, value in sorted(self.env.items())
               if key.startswith("PAYORCH_") and key not in ("PAYORCH_DATA_DIR", "PAYORCH_TENANTS_DIR",
                                                             "PAYORCH_SCHEMAS_DIR")]
        return [*PODMAN, "run", "--rm", "--replace", "--name", name, "--network", "host",
                # Read-only root, and only /tmp writable besides the data volume (not
                # podman's default extra tmpfs on /run and /var/tmp).
                "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                # No healthcheck timer (this host has no systemd); `podman healthcheck run` checks by hand.
                "--health-interval", "disable",
                "--volume", f"{self.data_dir}:{IN_CONTAINER_DATA_DIR}",
                *env, f"--env=PAYORCH_DATA_DIR={IN_CONTAINER_DATA_DIR}",
                *(["--interactive"] if interactive else []), self.image, *args]

    def start(self, name: str) -> None:
        if name == "clearing-sim":
            super().start(name)
            return
        args = ["intake"] if name == "intake" else ["run", *self.stage_processes.get(name, (name,))]
        container = self.container_name(name)
        self.containers.add(container)
        log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(self.podman_run(container, args), stdout=log_file,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()

    def prepare_data_dir(self) -> None:
        # The containers run as uid 10001: the bind-mounted data directory is theirs.
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """The signal to the container's PID 1 (payorch), as the kernel's OOM killer or a
        lost node would; then the attached podman client ends."""
        result = subprocess.run([*PODMAN, "kill", "--signal", signal.Signals(sig).name, self.container_name(name)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        self.processes[name].wait(timeout=60)

    def healthcheck(self, name: str) -> subprocess.CompletedProcess:
        return subprocess.run([*PODMAN, "healthcheck", "run", self.container_name(name)],
                              capture_output=True, text=True, timeout=60)

    def run_once(self, *args: str) -> subprocess.CompletedProcess:
        """A one-off command of the image on the same data directory (an operator's task)."""
        name = self.container_name("task")
        return subprocess.run(self.podman_run(name, list(args)), capture_output=True, text=True, timeout=300)

    def stop(self) -> None:
        if self.containers:
            subprocess.run([*PODMAN, "stop", "--ignore", "--time", "20", *sorted(self.containers)],
                           capture_output=True, timeout=120)
        super().stop()
        if self.containers:
            subprocess.run([*PODMAN, "rm", "--force", "--ignore", *sorted(self.containers)],
                           capture_output=True, timeout=120)


def test_the_image_is_non_root_read_only_ready_and_starts_payorch(image):
    inspected = subprocess.run([*PODMAN, "image", "inspect", image], capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert config["Entrypoint"] == ["payorch"]
    assert IN_CONTAINER_DATA_DIR in config["Volumes"]
    health = json.loads(inspected.stdout)[0].get("Healthcheck") or config.get("Healthcheck")
    assert health and "/opt/payorch/healthcheck.py" in " ".join(health["Test"]), health
    # The entry point answers, with the root filesystem read-only and no writable /tmp at all.
    version = subprocess.run([*PODMAN, "run", "--rm", "--read-only", "--read-only-tmpfs=false", "--network", "none",
                              image, "--help"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "intake" in version.stdout and "run" in version.stdout, (
        version.stdout + version.stderr)


@pytest.fixture
def system(image, kafka_bootstrap, tmp_path):
    running = ContainerSystem(image, kafka_bootstrap, tmp_path)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def test_containers_settle_a_payment_and_a_killed_container_loses_nothing(system):
    started = time.monotonic()
    # Every container is healthy by the image's own HEALTHCHECK.
    for name in ("intake", "ledger"):
        check = system.healthcheck(name)
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"

    answer = system.post("emea", sample_body("emea"), key="container-first")
    assert answer.status_code == 202, answer.text
    payment_id = answer.json()["payment_id"]
    ended = system.wait_terminal({payment_id: "emea"}, timeout_s=PROCESS_READY_TIMEOUT_S)
    assert ended.get(payment_id, {}).get("status") == "SETTLED", (ended, system.process_states())

    outcome = {}

    def load() -> None:
        # A 503 means "outcome unknown": the client sends again with the same key.
        outcome["result"] = asyncio.run(offer_load(system.base_url, system.api_keys, rate_per_s=OFFERED_RATE_PER_S,
                                                   duration_s=LOAD_DURATION_S, drain_timeout_s=180,
                                                   retry_unavailable_s=60))

    loader = threading.Thread(target=load)
    loader.start()
    for victim, after_s in (("ledger", 1.5), ("execution", 1.5)):
        time.sleep(after_s)
        system.kill(victim, signal.SIGKILL)
        system.start(victim)
    loader.join(timeout=400)
    assert "result" in outcome, "the load did not finish"
    result = outcome["result"]
    offered = OFFERED_RATE_PER_S * LOAD_DURATION_S
    assert result.accepted == offered, result.report_lines()
    assert not result.unfinished, (result.unfinished[:5], system.process_states(),
                                   {name: system.log_problems(name) for name in system.processes})
    assert result.statuses == {"SETTLED": offered}, result.report_lines()

    # SETTLED does not wait for the ledger (it posts concurrently): let the restarted one catch up.
    ledger = sqlite3.connect(f"file:{system.data_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    query = "SELECT payment_id, count(*) FROM entries WHERE phase='post' GROUP BY payment_id"
    deadline = time.monotonic() + PROCESS_READY_TIMEOUT_S
    while len(ledger.execute(query).fetchall()) < offered + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    posts = ledger.execute(query).fetchall()
    assert len(posts) == offered + 1 and all(count == 2 for _, count in posts), "one debit and one credit per payment"
    ledger.close()

    tracking = sqlite3.connect(f"file:{system.data_dir / 'tracking.sqlite'}?mode=ro", uri=True)
    duplicated = tracking.execute(
        "SELECT payment_id, event_type, count(*) FROM timeline GROUP BY payment_id, event_type HAVING count(*) > 1"
    ).fetchall()
    tracking.close()
    assert duplicated == [], f"events recorded twice: {duplicated[:5]}"

    verify = system.run_once("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all invariants hold" in verify.stdout and f"{offered + 1} ended payments checked" in verify.stdout, (
        verify.stdout)
    FAULT_REPORT_LINES.append(
        f"container test: {offered + 1} payments through the image's containers, ledger and execution "
        f"SIGKILLed and restarted: {result.statuses}, lost 0, duplicated 0 "
        f"({time.monotonic() - started:.0f}s after the containers were up)")
