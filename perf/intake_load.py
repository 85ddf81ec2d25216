"""Benchmark: payments offered at a fixed rate through the public intake, end to end.

Two ways to run it:

  # against a system you started with ./dev up (or anywhere else)
  .venv/bin/python perf/intake_load.py --url http://127.0.0.1:8080 --rate 300 --duration 10

  # self-contained: starts `payorch up` (with its own local Kafka) in a temporary
  # folder, warms it up, measures, prints CPU seconds per process, stops it
  .venv/bin/python perf/intake_load.py --self-contained --rate 300 --duration 10

It prints the offered and accepted counts, how every payment ended, the sustained
end-to-end throughput (first PaymentReceived to last terminal event, both stamped by
the product) and latency percentiles. Nothing here asserts a number: figures are for
people to read and compare. The generator runs on the same machine as the system, so
its own CPU (printed in self-contained mode) is part of what the machine spends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from orchestrator.intake.credentials import read_local_keys  # noqa: E402
from orchestrator.loadgen import offer_load  # noqa: E402
from orchestrator.settings import get_settings  # noqa: E402

# The JVM compiles its hot paths during the first minute; measuring a cold broker
# reports the JIT, not the product.
WARMUP_RATE_PER_S = 150
WARMUP_DURATION_S_DEFAULT = 15.0
UP_READY_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _progress(what: str, done: int, total: int) -> None:
    if done == total or done % 500 == 0:
        print(f"  {what} {done}/{total}", flush=True)


def run_load(url: str, keys: dict[str, str], rate: float, duration: float, drain: float) -> None:
    result = asyncio.run(offer_load(url, keys, rate_per_s=rate, duration_s=duration, drain_timeout_s=drain,
                                    progress=_progress))
    print("\n".join(result.report_lines()))


def self_contained(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="payorch-perf-"))
    port = _free_port()
    sim_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    env.update({"PAYORCH_DATA_DIR": str(work / "data"), "PAYORCH_INTAKE__PORT": str(port),
                "PAYORCH_CLEARING__SIMULATOR_PORT": str(sim_port),
                "PAYORCH_CLEARING__BASE_URL": f"http://127.0.0.1:{sim_port}",
                "PAYORCH_LOG_LEVEL": "WARNING",
                "PAYORCH_RUNTIME__EXACTLY_ONCE": "false" if args.at_least_once else "true"})
    env.update(dict(setting.split("=", 1) for setting in args.set))
    mode = "at-least-once" if args.at_least_once else "exactly-once (Kafka transactions)"
    print(f"starting payorch up in {work}, stages {mode} ...", flush=True)
    up = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up"], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + UP_READY_TIMEOUT_S
        for line in up.stdout:
            if line.startswith("ready:"):
                break
            if time.monotonic() > deadline:
                raise SystemExit("payorch up did not become ready")
        else:
            raise SystemExit("payorch up exited before it was ready")
        url = f"http://127.0.0.1:{port}"
        keys = read_local_keys(work / "data")
        if args.warmup > 0:
            print(f"warming up: {WARMUP_RATE_PER_S}/s for {args.warmup:.0f}s (not measured)", flush=True)
            asyncio.run(offer_load(url, keys, rate_per_s=WARMUP_RATE_PER_S, duration_s=args.warmup,
                                   drain_timeout_s=60))
        pids = {path.stem: int(path.read_text()) for path in (work / "run").glob("*.pid")}
        pids["load generator"] = os.getpid()
        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        print(f"measuring: {args.rate:.0f}/s for {args.duration:.0f}s", flush=True)
        run_load(url, keys, args.rate, args.duration, args.drain)
        window = time.monotonic() - started
        spent = {name: _cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        total = sum(spent.values())
        print(f"CPU seconds over the {window:.1f}s window ({total / window:.2f} of {os.cpu_count()} cores busy): "
              + ", ".join(f"{name} {value:.1f}" for name, value in sorted(spent.items(), key=lambda kv: -kv[1])))
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="intake base URL")
    parser.add_argument("--rate", type=float, default=300.0, help="payments offered per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of offered load")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for payments to end")
    parser.add_argument("--self-contained", action="store_true", help="start payorch up for the run")
    parser.add_argument("--at-least-once", action="store_true",
                        help="self-contained mode: stages without Kafka transactions (idempotent, at least once)")
    parser.add_argument("--warmup", type=float, default=WARMUP_DURATION_S_DEFAULT,
                        help="seconds of unmeasured load first (self-contained mode)")
    parser.add_argument("--set", action="append", default=[], metavar="PAYORCH_X=VALUE",
                        help="self-contained mode: a setting for the stack, e.g. PAYORCH_RUNTIME__COMMIT_INTERVAL_MS=25")
    args = parser.parse_args()
    if any(not s.startswith("PAYORCH_") or "=" not in s for s in args.set):
        parser.error("--set takes PAYORCH_NAME=VALUE")
    if not 0 < args.rate <= 20_000 or not 0 < args.duration <= 3_600:
        parser.error("rate must be in (0, 20000] and duration in (0, 3600]")
    if args.self_contained:
        self_contained(args)
    else:
        run_load(args.url, read_local_keys(get_settings().data_dir), args.rate, args.duration, args.drain)


if __name__ == "__main__":
    main()
