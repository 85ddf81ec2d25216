"""The benchmark harness's smoke run, so the harness cannot rot: `perf/bench.py --smoke`
starts its own stack, offers a short load, and writes its JSON summary and HTML report.

It checks that the run worked and wrote what it should, never a figure: timing belongs to
the benchmark's readers, not to a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

# Start-up of `payorch up`, 5 s of warm-up, 10 s of load and the collection of timelines,
# with room for a slow, shared machine.
SMOKE_TIMEOUT_S = 540
STEP_KEYS = {"offered_rate", "offered", "accepted", "shed", "not_accepted_by_status", "outcomes", "sustained_rate",
             "end_to_end_ms", "end_to_end_cdf", "intake_ms", "stages", "cpu", "generator", "meets_knee_rule"}


def test_smoke_run_writes_its_summary_and_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, str(REPO_ROOT / "perf" / "bench.py"), "--smoke", "--out", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"

    summary = json.loads((out / "summary.json").read_text())
    assert {"run", "warmup", "steps", "knee", "relay_baseline", "load_generator"} <= summary.keys()
    assert len(summary["steps"]) == 1
    step = summary["steps"][0]
    assert STEP_KEYS <= step.keys()
    assert step["accepted"] > 0
    outcomes = step["outcomes"]
    assert outcomes["unfinished"] == 0
    assert sum(outcomes[name] for name in ("settled", "rejected", "failed", "held")) == step["accepted"]
    assert step["cpu"]["per_process_s"], "the own stack's processes were not measured"

    html = (out / "report.html").read_text()
    assert "<svg" in html or "<img" in html
