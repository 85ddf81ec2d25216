"""The import contracts in pyproject.toml ([tool.importlinter]) hold: the domain imports
nothing of ours, the stages and the runtime stay out of each other and of the entry
points, the runtime's modules are layered, and only the CLI, the supervisor and the
composition root import local tooling (docs/ARCHITECTURE.md, "Import contracts").
A broken contract fails the suite, and so CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.settings import REPO_ROOT

# The installed console script, next to this interpreter.
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages under `root`, with `root`'s pyproject.toml, uncached."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_every_import_contract_is_kept():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, f"lint-imports:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout


def test_a_stage_that_imports_the_runtime_breaks_its_contract(tmp_path):
    # The contracts are not vacuous: the same check on a copy of the tree with one bad
    # import fails, naming the contract and the import.
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("orchestrator", "adapters"):
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    sanctions = tmp_path / "orchestrator" / "stages" / "sanctions.py"
    sanctions.write_text(sanctions.read_text() + "\nfrom orchestrator.runtime import loop  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Stages do not import the runtime" in result.stdout and "BROKEN" in result.stdout
    assert "orchestrator.stages.sanctions -> orchestrator.runtime.loop" in result.stdout
