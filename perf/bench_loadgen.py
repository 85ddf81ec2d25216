"""Building and running the compiled load generator (perf/loadgen, Go).

A Python client costs about 1.4 ms of CPU per request (orchestrator/loadgen.py), which at
1,000-2,000 requests/s would take most of a core from the system it measures on a 2-core
machine; the Go generator costs a small fraction of that.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "perf" / "loadgen"
BUILD_DIR = REPO_ROOT / ".cache" / "perf-loadgen"
# Where the Go tarball installs itself when it is not on PATH.
GO_FALLBACK = Path("/usr/local/go/bin/go")


class LoadgenError(RuntimeError):
    pass


def _go_command() -> str:
    found = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.exists() else None)
    if found is None:
        raise LoadgenError("the load generator is written in Go and Go was not found: install Go 1.26 or newer "
                           "(https://go.dev/doc/install) and put `go` on PATH")
    return found


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.go")) + [SOURCE_DIR / "go.mod"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_loadgen() -> Path:
    """The generator's binary, built again only when its sources changed."""
    binary = BUILD_DIR / f"loadgen-{_sources_digest()}"
    if binary.exists():
        return binary
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    # The generator uses only the standard library, so the build never needs the network.
    built = subprocess.run([_go_command(), "build", "-trimpath", "-o", str(partial), "."], cwd=SOURCE_DIR,
                           # A CI shell may have no HOME, where Go keeps its build cache by default.
                           env={"GOCACHE": str(BUILD_DIR / "gocache"), **os.environ, "CGO_ENABLED": "0"},
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise LoadgenError(f"go build of {SOURCE_DIR} failed:\n{built.stderr}")
    partial.replace(binary)
    for stale in BUILD_DIR.glob("loadgen-*"):
        if stale != binary:
            stale.unlink(missing_ok=True)
    return binary


def run_loadgen(binary: Path, command: str, flags: dict[str, str], *, time_limit_s: float,
                on_progress: Callable[[dict], None]) -> dict:
    """Run `loadgen COMMAND` to its end, pass each progress report on, return its summary.

    The time limit is a backstop (the generator bounds itself): past it the generator is
    killed and the run fails rather than hang.
    """
    argv = [str(binary), command, *(f"-{name}={value}" for name, value in flags.items())]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(time_limit_s, process.kill)
    timer.start()
    summary: dict | None = None
    try:
        for line in process.stdout:
            report = orjson.loads(line)
            if "progress" in report:
                on_progress(report["progress"])
            elif "summary" in report:
                summary = report["summary"]
        stderr = process.stderr.read().decode(errors="replace")
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0 or summary is None:
        raise LoadgenError(f"loadgen {command} ended with code {code} (time limit {time_limit_s:.0f}s): {stderr}")
    return summary
