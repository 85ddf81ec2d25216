"""The payorch benchmark harness (issue #9): a ramp of offered rates, end to end.

  # the whole run: its own `payorch up` (exactly-once, the default), 60 s of warm-up, the
  # ramp 100..2,000/s, the bare Kafka relay baseline, and the report
  .venv/bin/python perf/bench.py

  # a quick check that it all works (about 10 s at 100/s; what CI runs)
  .venv/bin/python perf/bench.py --smoke

  # a stack that is already running (CPU per process only with its run dir)
  .venv/bin/python perf/bench.py --url http://127.0.0.1:8080 --run-dir var/run --bootstrap 127.0.0.1:PORT

Each step offers pre-built payments open loop from a compiled generator (perf/loadgen),
over every tenant and rail, with many distinct customers and a few rejections, holds and
failures. After the step's sending ends, the harness reads every accepted payment's
timeline (GET /v1/payments/{id}) and reports, per rate: the intake's answers (202, shed
503, any other code), how the payments ended, the sustained end-to-end rate, HdrHistogram
percentiles of end-to-end latency (by the product's timestamps) and of the intake's 202
latency (from each request's due time), each stage's share of the time, and the CPU of
every process from the step's start until its payments ended. It also runs the bare relay
baseline (perf/relay_baseline.py) on the same broker, and writes summary.json and a
self-contained report.html into --out. Every phase has a time limit, and load goes to
loopback only. Nothing here asserts a figure: the figures are for people to compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
from confluent_kafka import KafkaException

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import bench_analysis  # noqa: E402
import bench_report  # noqa: E402
import relay_baseline  # noqa: E402
from bench_loadgen import LoadgenError, build_loadgen, run_loadgen  # noqa: E402
from bench_safety import NotLoopback, require_loopback_bootstrap, require_loopback_url  # noqa: E402
from bench_stack import (CPU_SAMPLE_INTERVAL_S, MAX_TENANT_FILES, CpuSampler, OwnStack, StackInfo,  # noqa: E402
                         read_pids)
from bench_traffic import TrafficMix, load_default_tenants, write_requests  # noqa: E402

DEFAULTS = {"rates": "100,250,500,1000,1500,2000", "step_duration": 20.0, "warmup": 60.0, "idle": 15.0,
            "relay_duration": 15.0}
# --smoke: enough to run every phase once, quickly; the relay only when asked for.
SMOKE = {"rates": "100", "step_duration": 10.0, "warmup": 5.0, "idle": 3.0, "relay_duration": 0.0}
# A moderate rate: enough to warm the JVM's and Python's hot paths. It must be one the
# stack sustains, or the first step of the ramp measures the warm-up's backlog.
WARMUP_RATE_PER_S = 100.0
MAX_RATE_PER_S = 20_000.0
MAX_STEP_S = 600.0
# The last payments sent are the last to end: waiting on these few first keeps the status
# polls of all the others out of the CPU window of the step.
PROBE_PAYMENTS = 64
PROBE_CONCURRENCY = 4
COLLECT_CONCURRENCY = 8
# Reading every timeline takes about one GET per payment; the collection's time limit
# allows at least this many per second, plus a margin for stragglers.
COLLECT_FLOOR_PER_S = 250
COLLECT_MARGIN_S = 30.0
# The generator sends late requests up to SEND_LIMIT_S after the last one was due, and
# gives each request REQUEST_TIMEOUT_S; the phase's own backstop comes after both.
SEND_LIMIT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
BACKSTOP_MARGIN_S = 30.0


@dataclass
class Sent:
    answers: bench_analysis.Answers
    generator: dict
    started_at: float  # wall clock, when the phase's first request was due


class Bench:
    """One run against one stack: warm-up, idle, the ramp, each phase bounded."""

    def __init__(self, args: argparse.Namespace, stack: StackInfo, loadgen: Path, work: Path,
                 sampler: CpuSampler | None) -> None:
        self.args = args
        self.stack = stack
        self.loadgen = loadgen
        self.work = work
        self.sampler = sampler
        self.mix = TrafficMix(load_default_tenants(REPO_ROOT))
        self.key_prefix = f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.next_index = 0
        self.generator_cpu_s = 0.0
        self.generator_requests = 0

    def send(self, label: str, rate: float, duration_s: float) -> Sent:
        count = max(1, round(rate * duration_s))
        requests = self.work / f"{label}.requests.jsonl"
        tenants = write_requests(requests, self.mix, first_index=self.next_index, count=count, rate_per_s=rate,
                                 key_prefix=self.key_prefix)
        self.next_index += count
        results = self.work / f"{label}.results.jsonl"
        started_at = time.time()

        def progress(report: dict) -> None:
            print(f"  [{label}] {time.time() - started_at:5.0f}s  sent {report['sent']:,}/{report['total']:,}  "
                  f"answered {report['answered']:,}  accepted {report['accepted']:,}", flush=True)

        summary = run_loadgen(self.loadgen, "send",
                              {"url": self.stack.url, "keys": str(self.stack.keys_file), "requests": str(requests),
                               "results": str(results),
                               "connections": str(self.args.connections), "send-limit": f"{SEND_LIMIT_S:.0f}s",
                               "timeout": f"{REQUEST_TIMEOUT_S:.0f}s"},
                              time_limit_s=duration_s + SEND_LIMIT_S + REQUEST_TIMEOUT_S + BACKSTOP_MARGIN_S,
                              on_progress=progress)
        generator = bench_analysis.generator_summary(summary)
        self.generator_cpu_s += generator["cpu_s"]
        self.generator_requests += generator["requests"]
        return Sent(bench_analysis.read_answers(results, tenants), generator, started_at)

    def fetch(self, label: str, payments: list[tuple[str, str]], *, deadline_s: float, concurrency: int,
              what: str) -> Path:
        """Ask for each payment until it reached an outcome or the deadline passed."""
        listing = self.work / f"{label}.payments.jsonl"
        listing.write_bytes(b"".join(orjson.dumps({"payment_id": p, "tenant": t}) + b"\n" for p, t in payments))
        records = self.work / f"{label}.records.jsonl"
        began = time.monotonic()

        def progress(report: dict) -> None:
            print(f"  [{label}] {what}: {report['final']:,}/{report['total']:,} reached an outcome "
                  f"({time.monotonic() - began:.0f}s)", flush=True)

        run_loadgen(self.loadgen, "fetch",
                    {"url": self.stack.url, "keys": str(self.stack.keys_file), "payments": str(listing),
                     "results": str(records),
                     "concurrency": str(concurrency), "deadline": f"{deadline_s:.0f}s"},
                    time_limit_s=deadline_s + BACKSTOP_MARGIN_S, on_progress=progress)
        return records

    def wait_for_last(self, label: str, answers: bench_analysis.Answers) -> float:
        """Wait until the last payments sent reached an outcome; returns the seconds left of the drain."""
        began = time.monotonic()
        probe = list(answers.accepted.items())[-PROBE_PAYMENTS:]
        if probe:
            self.fetch(f"{label}.probe", probe, deadline_s=self.args.drain, concurrency=PROBE_CONCURRENCY,
                       what="the last payments sent")
        return max(0.0, self.args.drain - (time.monotonic() - began))

    def warm_up(self) -> dict:
        print(f"warming up: {self.args.warmup_rate:.0f}/s for {self.args.warmup:.0f}s (not measured)", flush=True)
        sent = self.send("warmup", self.args.warmup_rate, self.args.warmup)
        self.wait_for_last("warmup", sent.answers)
        return {"rate": self.args.warmup_rate, "duration_s": self.args.warmup, "offered": sent.answers.offered,
                "by_status": dict(sent.answers.by_status)}

    def measure_idle(self) -> dict | None:
        if self.sampler is None or self.args.idle <= 0:
            return None
        time.sleep(self.args.settle)
        print(f"measuring the idle stack for {self.args.idle:.0f}s", flush=True)
        start = time.time()
        time.sleep(self.args.idle)
        end = time.time()
        time.sleep(2 * CPU_SAMPLE_INTERVAL_S)  # so a sample after `end` exists
        per_process = self.sampler.between(start, end)
        idle = {"window_s": end - start, "per_process_s": per_process,
                "cores_busy": sum(per_process.values()) / (end - start)}
        print(f"  idle: {idle['cores_busy']:.3f} cores busy", flush=True)
        return idle

    def step(self, rate: float) -> dict:
        label = f"step-{rate:g}"
        print(f"step: {rate:g}/s for {self.args.step_duration:.0f}s", flush=True)
        sent = self.send(label, rate, self.args.step_duration)
        drain_left = self.wait_for_last(label, sent.answers)
        accepted = list(sent.answers.accepted.items())
        records = self.fetch(label, accepted, concurrency=COLLECT_CONCURRENCY, what="timelines",
                             deadline_s=COLLECT_MARGIN_S + len(accepted) / COLLECT_FLOOR_PER_S + drain_left)
        outcomes = bench_analysis.read_outcomes(records)
        step = bench_analysis.step_summary(rate=rate, duration_s=self.args.step_duration, answers=sent.answers,
                                           outcomes=outcomes, cpu=self.step_cpu(sent, outcomes),
                                           generator=sent.generator)
        print(f"  {step['accepted']:,} accepted of {step['offered']:,} (answered within "
              f"{bench_report.fmt_number(step['answered_within_s'], 1)}s); outcomes {step['outcomes']}; "
              f"sustained {bench_report.fmt_number(step['sustained_rate'])}/s; e2e p99 "
              f"{bench_report.fmt_ms(step['end_to_end_ms']['p99'])} ms", flush=True)
        return step

    def step_cpu(self, sent: Sent, outcomes: bench_analysis.Outcomes) -> dict | None:
        """CPU from the step's start until its last payment reached its outcome."""
        if self.sampler is None:
            return None
        end = outcomes.last_outcome_us / 1e6 if outcomes.last_outcome_us else time.time()
        return bench_analysis.cpu_summary(self.sampler.between(sent.started_at, end), end - sent.started_at,
                                          len(sent.answers.accepted))

    def ramp(self) -> list[dict]:
        steps = []
        for position, rate in enumerate(self.args.rates):
            if position:
                time.sleep(self.args.settle)
            step = self.step(rate)
            steps.append(step)
            reason = self.overloaded(step)
            if reason:
                print(f"stopping the ramp: {reason}", flush=True)
                break
        return steps

    @staticmethod
    def overloaded(step: dict) -> str | None:
        """Why a higher rate would measure this step's backlog rather than itself, if it would."""
        if not step["accepted"]:
            return f"the intake accepted none of the {step['offered_rate']:g}/s step's requests"
        unfinished = step["outcomes"]["unfinished"]
        if unfinished:
            return f"{unfinished:,} payments of the {step['offered_rate']:g}/s step had no outcome after the drain"
        not_sent = step["not_accepted_by_status"].get(bench_analysis.NOT_SENT, 0)
        if not_sent:
            return (f"{not_sent:,} requests of the {step['offered_rate']:g}/s step could not be sent within "
                    f"{SEND_LIMIT_S:.0f}s of their due time")
        return None

    def load_generator(self) -> dict:
        return {"requests": self.generator_requests, "cpu_s": self.generator_cpu_s,
                "cpu_us_per_request": (self.generator_cpu_s * 1e6 / self.generator_requests
                                       if self.generator_requests else None)}


def run_relay(args: argparse.Namespace, bootstrap: str | None) -> dict | None:
    if args.relay_duration <= 0:
        return None
    if bootstrap is None:
        print("relay baseline skipped: the broker's address is not known (give --bootstrap)", flush=True)
        return None
    try:
        return relay_baseline.run_both(bootstrap, args.relay_duration)
    except (KafkaException, RuntimeError, TimeoutError) as exc:
        # The ramp's figures are worth writing even when the broker let the relay down.
        print(f"relay baseline failed: {exc!r}", flush=True)
        return None


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+uncommitted changes" if dirty else head


def _run_info(args: argparse.Namespace, started_at: datetime) -> dict:
    if args.url:
        stack, delivery = args.url, "as the running stack is configured"
    else:
        stack = "its own payorch up"
        if args.stage_processes is not None:
            stack += " with stage processes " + ",".join("+".join(stages) for stages in args.stage_processes)
        if args.tenant_files is not None:
            stack += f" with {args.tenant_files} tenant files (traffic to the four sample tenants)"
        delivery = "at least once" if args.at_least_once else "exactly once (Kafka transactions)"
    return {"started_at": started_at.isoformat(timespec="seconds"), "commit": _commit(), "stack": stack,
            "delivery": delivery, "cpu_count": os.cpu_count(), "rates": args.rates,
            "step_duration_s": args.step_duration, "warmup_s": args.warmup, "warmup_rate": args.warmup_rate,
            "settle_s": args.settle, "drain_s": args.drain, "connections": args.connections, "smoke": args.smoke}


def run(args: argparse.Namespace) -> dict:
    started_at = datetime.now(timezone.utc)
    loadgen = build_loadgen()
    with ExitStack() as cleanup:
        work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="payorch-bench-work-")))
        if args.url:
            stack = StackInfo(url=args.url, bootstrap=args.bootstrap, run_dir=args.run_dir, keys_file=args.keys_file)
        else:
            stack = cleanup.enter_context(OwnStack(exactly_once=not args.at_least_once,
                                                   keep_logs_in=args.out / "logs",
                                                   stage_processes=args.stage_processes,
                                                   tenant_files=args.tenant_files))
        pids = read_pids(stack.run_dir) if stack.run_dir else {}
        sampler = cleanup.enter_context(CpuSampler(pids) if pids else nullcontext())
        bench = Bench(args, stack, loadgen, work, sampler)
        warmup = bench.warm_up()
        idle = bench.measure_idle()
        steps = bench.ramp()
        relay = run_relay(args, stack.bootstrap)
        restarted = sorted(sampler.restarted) if sampler else []
    sustained = [s["sustained_rate"] for s in steps if s["sustained_rate"] is not None]
    return {"run": _run_info(args, started_at), "warmup": warmup, "idle": idle, "steps": steps,
            "knee": {"rate": bench_analysis.knee(steps), "min_share_of_offered": bench_analysis.KNEE_MIN_SHARE_OF_OFFERED,
                     "max_p99_ms": bench_analysis.KNEE_MAX_P99_MS},
            "best_sustained_rate": max(sustained, default=None), "relay_baseline": relay,
            "load_generator": bench.load_generator(), "restarted_processes": restarted}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run: 10 s at 100/s after 5 s of warm-up, no relay baseline unless asked")
    parser.add_argument("--rates", help=f"offered payments/s of the ramp, comma-separated (default {DEFAULTS['rates']})")
    parser.add_argument("--step-duration", type=float, help="seconds of load per rate (default 20)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load first (default 60)")
    parser.add_argument("--warmup-rate", type=float, default=WARMUP_RATE_PER_S,
                        help=f"payments/s of the warm-up (default {WARMUP_RATE_PER_S:.0f}); one the stack sustains")
    parser.add_argument("--idle", type=float, help="seconds the idle stack is measured after the warm-up (default 15)")
    parser.add_argument("--relay-duration", type=float,
                        help="measured seconds per relay-baseline variant; 0 skips it (default 15, smoke 0)")
    parser.add_argument("--settle", type=float, default=5.0, help="pause between phases, seconds")
    parser.add_argument("--drain", type=float, default=120.0,
                        help="seconds a step's payments may take to end after its sending ended")
    parser.add_argument("--connections", type=int, default=512, help="the generator's requests in flight at most")
    parser.add_argument("--at-least-once", action="store_true",
                        help="own stack with PAYORCH_RUNTIME__EXACTLY_ONCE=false (the default is exactly once)")
    parser.add_argument("--stage-processes",
                        help="own stack with these stage processes instead of payorch up's default plan: "
                             "processes separated by commas, a process's stages joined by '+', e.g. "
                             "initiation+sanctions+fraud+routing,execution+ledger+settlement,tracking")
    parser.add_argument("--tenant-files", type=int,
                        help="own stack configured with this many tenant files: the project's four and copies "
                             "of them under other ids, which get no traffic (issue #9: cost grows with work, "
                             f"not with configuration); at most {MAX_TENANT_FILES}")
    parser.add_argument("--url", help="benchmark a running stack at this loopback URL instead of starting one")
    parser.add_argument("--run-dir", type=Path, help="with --url: its pid files' folder, for CPU per process")
    parser.add_argument("--bootstrap", help="with --url: its Kafka bootstrap address, for the relay baseline")
    parser.add_argument("--keys-file", type=Path,
                        help="with --url: its API keys, {tenant: key} (default: api-keys.json in PAYORCH_DATA_DIR)")
    parser.add_argument("--out", type=Path, help="folder for summary.json, report.html and the stack's logs "
                                                 "(default perf/results/<timestamp>/)")
    args = parser.parse_args(argv)
    for name, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
        if args.url:
            args.url = require_loopback_url(args.url)
        if args.bootstrap:
            require_loopback_bootstrap(args.bootstrap)
    except (ValueError, NotLoopback) as exc:
        parser.error(str(exc))
    if not args.rates or not all(0 < rate <= MAX_RATE_PER_S for rate in [*args.rates, args.warmup_rate]):
        parser.error(f"--rates and --warmup-rate must be in (0, {MAX_RATE_PER_S:.0f}]")
    if not 0 < args.step_duration <= MAX_STEP_S or not 0 <= args.warmup <= 3_600 or not 0 < args.drain <= 3_600:
        parser.error(f"--step-duration must be in (0, {MAX_STEP_S:.0f}], --warmup and --drain in [0, 3600]")
    if not 1 <= args.connections <= 10_000:
        parser.error("--connections must be in [1, 10000]")
    if args.tenant_files is not None:
        if args.url:
            parser.error("--tenant-files starts an own stack; a running stack keeps its own tenants")
        if not 4 <= args.tenant_files <= MAX_TENANT_FILES:
            parser.error(f"--tenant-files must be in [4, {MAX_TENANT_FILES}]")
    if not args.url and (args.run_dir or args.bootstrap or args.keys_file):
        parser.error("--run-dir, --bootstrap and --keys-file go with --url (the own stack's are known)")
    if args.url and args.keys_file is None:
        from orchestrator.intake.credentials import local_keys_path
        from orchestrator.settings import get_settings

        args.keys_file = local_keys_path(get_settings().data_dir)
    if args.url and not args.keys_file.exists():
        parser.error(f"no API keys at {args.keys_file}: give --keys-file, a JSON object of tenant -> key")
    if args.stage_processes is not None:
        if args.url:
            parser.error("--stage-processes starts an own stack; a running stack keeps its own processes")
        from orchestrator.settings import KafkaSettings, Settings

        plan = [tuple(process.split("+")) for process in args.stage_processes.split(",") if process.strip()]
        try:  # the same check payorch up makes, before anything starts
            args.stage_processes = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                                            stage_processes=plan).stage_processes
        except ValueError as exc:
            parser.error(f"--stage-processes: {exc}")
    if args.url and args.at_least_once:
        parser.error("--at-least-once starts an own stack; a running stack keeps its own mode")
    if args.out is None:
        args.out = REPO_ROOT / "perf" / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        summary = run(args)
    except LoadgenError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    bench_report.write_json(args.out / "summary.json", summary)
    bench_report.write_html(args.out / "report.html", summary)
    bench_report.print_report(summary)
    if summary["restarted_processes"]:
        print(f"note: these processes restarted during the run, their CPU is counted only up to then: "
              f"{', '.join(summary['restarted_processes'])}")
    print(f"\nwrote {args.out / 'summary.json'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
