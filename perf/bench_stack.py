"""The system under test: a `payorch up` of the harness's own, and CPU per process.

The harness's stack runs in a temporary folder with free ports, so it never meets a
stack someone else has running. CPU comes from /proc/PID/stat of the processes named by
the pid files `payorch up` writes into `<work>/run/`.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The test harness's loopback port pickers: one implementation for both.
from tests.harness import free_port, free_port_block  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
UP_READY_TIMEOUT_S = 240
UP_STOP_TIMEOUT_S = 90
# `payorch up` gives each rail's simulator the port after the previous one.
SIMULATOR_PORTS = 16
BOOTSTRAP_LINE = "local Kafka ready at "
# The tenant files a stack may be given at most (--tenant-files); each adds 50 topics (topics.py).
MAX_TENANT_FILES = 64
CPU_SAMPLE_INTERVAL_S = 0.25


@dataclass
class StackInfo:
    url: str
    bootstrap: str | None
    run_dir: Path | None
    keys_file: Path  # {tenant: API key}, as `payorch up` writes it


class OwnStack:
    """`payorch up` in a temporary folder; a context manager that always stops it."""

    def __init__(self, *, exactly_once: bool, keep_logs_in: Path,
                 stage_processes: tuple[tuple[str, ...], ...] | None = None, tenant_files: int | None = None) -> None:
        self.exactly_once = exactly_once
        self.stage_processes = stage_processes
        self.keep_logs_in = keep_logs_in
        self.work = Path(tempfile.mkdtemp(prefix="payorch-bench-"))
        self.tenants_dir = (write_tenant_files(self.work / "tenants", tenant_files)
                            if tenant_files is not None else None)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> StackInfo:
        port = free_port()
        simulator_port = free_port_block(SIMULATOR_PORTS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
        env.update({"PAYORCH_DATA_DIR": str(self.work / "data"), "PAYORCH_INTAKE__PORT": str(port),
                    "PAYORCH_CLEARING__SIMULATOR_PORT": str(simulator_port),
                    "PAYORCH_CLEARING__BASE_URL": f"http://127.0.0.1:{simulator_port}",
                    "PAYORCH_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
                    "PAYORCH_RUNTIME__EXACTLY_ONCE": "true" if self.exactly_once else "false"})
        if self.tenants_dir is not None:
            env["PAYORCH_TENANTS_DIR"] = str(self.tenants_dir)
        if self.stage_processes is not None:
            env["PAYORCH_STAGE_PROCESSES"] = json.dumps([list(stages) for stages in self.stage_processes])
        print(f"starting payorch up in {self.work} ...", flush=True)
        self.process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up"], cwd=REPO_ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        try:
            bootstrap = self._wait_until_ready()
        except BaseException:
            self._stop()
            raise
        # Keep reading its output: a full pipe would block `payorch up`, and a line about a
        # restarted process is something the person reading the figures must see.
        threading.Thread(target=self._echo_output, daemon=True).start()
        return StackInfo(url=f"http://127.0.0.1:{port}", bootstrap=bootstrap, run_dir=self.work / "run",
                         keys_file=self.work / "data" / "api-keys.json")

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def _wait_until_ready(self) -> str | None:
        bootstrap = None
        timer = threading.Timer(UP_READY_TIMEOUT_S, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                if line.startswith(BOOTSTRAP_LINE):
                    bootstrap = line[len(BOOTSTRAP_LINE):].strip()
                if line.startswith("ready:"):
                    print(f"  {line.strip()}", flush=True)
                    return bootstrap
        finally:
            timer.cancel()
        raise RuntimeError(f"payorch up ended (or took over {UP_READY_TIMEOUT_S}s) before it was ready; "
                           f"logs in {self.work / 'logs'}")

    def _echo_output(self) -> None:
        for line in self.process.stdout:
            print(f"  [payorch up] {line.rstrip()}", flush=True)

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            print("stopping payorch up ...", flush=True)
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=UP_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if (self.work / "logs").is_dir():
            shutil.copytree(self.work / "logs", self.keep_logs_in, dirs_exist_ok=True)
        # The broker's data of a full ramp is hundreds of megabytes; the logs are kept.
        shutil.rmtree(self.work, ignore_errors=True)


def write_tenant_files(folder: Path, total: int) -> Path:
    """The project's tenant files and copies of them, `total` files in all, into `folder`.

    A copy is its original under another id (`emea2`, `na2`, ... then `emea3`, ...),
    with its rails renamed the same way (`sepa_inst2`: the clearing simulator serves each
    rail name once): the same rails, limits and watch lists, and its own 50 topics. The harness sends
    traffic to the original tenants only, so the copies are configuration without work,
    which is what issue #9's "cost grows with work, not with configuration" compares.
    """
    originals = sorted((REPO_ROOT / "tenants").glob("*.yaml"))
    if not len(originals) <= total <= MAX_TENANT_FILES:
        raise ValueError(f"tenant files must be between {len(originals)} and {MAX_TENANT_FILES}, not {total}")
    folder.mkdir(parents=True, exist_ok=True)
    for original in originals:
        shutil.copyfile(original, folder / original.name)
    for index in range(total - len(originals)):
        original = originals[index % len(originals)]
        suffix = str(index // len(originals) + 2)
        copy_id = f"{original.stem}{suffix}"
        text, replaced = re.subn(rf"^tenant_id: {original.stem}$", f"tenant_id: {copy_id}",
                                 original.read_text(encoding="utf-8"), count=1, flags=re.MULTILINE)
        if replaced != 1:
            raise ValueError(f"{original}: no 'tenant_id: {original.stem}' line to rename")
        # Rail names, and so the clearing simulator's endpoints, are unique across tenants.
        rails = re.findall(r"^  - name: ([a-z0-9_]+)$", text, flags=re.MULTILINE)
        for rail in rails:
            text = re.sub(rf"^  - name: {rail}$", f"  - name: {rail}{suffix}", text, flags=re.MULTILINE)
            text = text.replace(f"/rails/{rail}/", f"/rails/{rail}{suffix}/")
        (folder / f"{copy_id}.yaml").write_text(text, encoding="utf-8")
    return folder


def read_pids(run_dir: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in sorted(run_dir.glob("*.pid"))}


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a live process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples every process's CPU seconds in the background, stamped with the wall clock.

    The end of a step's CPU window is known only afterwards (when its last payment ended,
    by the product's own timestamps), so the window is read from the samples later.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.times: list[float] = []
        self.samples: list[dict[str, float]] = []
        self.restarted: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_INTERVAL_S):
            self._take()

    def _take(self) -> None:
        now = time.time()
        sample = {}
        for name, pid in self.pids.items():
            seconds = cpu_seconds(pid)
            if seconds is None:
                # A process `payorch up` restarted has another pid: its CPU is lost from here on.
                self.restarted.add(name)
                seconds = self.samples[-1].get(name, 0.0) if self.samples else 0.0
            sample[name] = seconds
        with self._lock:
            self.times.append(now)
            self.samples.append(sample)

    def _at(self, when: float) -> dict[str, float]:
        """Each process's CPU seconds at a wall-clock time, interpolated between samples."""
        with self._lock:
            times, samples = list(self.times), list(self.samples)
        after = bisect.bisect_left(times, when)
        if after == 0:
            return dict(samples[0])
        if after == len(times):
            return dict(samples[-1])
        t0, t1 = times[after - 1], times[after]
        weight = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return {name: samples[after - 1][name] + weight * (samples[after][name] - samples[after - 1][name])
                for name in samples[after]}

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each process spent from `start` to `end` (wall clock)."""
        first, last = self._at(start), self._at(end)
        return {name: max(0.0, last[name] - first[name]) for name in last}
