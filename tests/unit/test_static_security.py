"""bandit, a static security linter, finds nothing in the code that ships (orchestrator/
and adapters/). Every finding it would make is either fixed (asserts that `python -O`
removes became explicit checks) or marked at its line with `# nosec <test>` and why
(SQL built only from `?` placeholders or column names in code, jitter that is not a
secret, subprocesses run with argument lists of our own). A new finding fails the suite."""

from __future__ import annotations

import subprocess
import sys

from orchestrator.settings import REPO_ROOT


def test_bandit_finds_nothing_in_the_shipped_code():
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "--quiet", "--recursive", "orchestrator", "adapters",
         "--format", "custom", "--msg-template", "{relpath}:{line} {test_id} {severity} {msg}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"bandit:\n{result.stdout}{result.stderr}"
