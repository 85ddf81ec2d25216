"""Shared fixtures. The Kafka broker is real and session-wide; if it cannot start, every
test that needs it fails (never skips), locally and in CI alike."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.settings import REPO_ROOT


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from orchestrator.kafka_local import LocalKafka, ensure_kafka_jars

    external = os.environ.get("PAYORCH_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    ensure_kafka_jars(REPO_ROOT)
    broker = LocalKafka(log_dir=tmp_path_factory.mktemp("kafka-logs"))
    try:
        bootstrap = broker.start()
    except Exception as exc:  # a broker that cannot start is a failure, not a skip
        pytest.fail(f"the local Kafka broker could not start: {exc}", pytrace=False)
    yield bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def pytest_terminal_summary(terminalreporter) -> None:
    """The figures of every fault test that ran: offered, settled, ..., lost, duplicated."""
    from tests.harness import FAULT_REPORT_LINES

    if FAULT_REPORT_LINES:
        terminalreporter.section("fault tests: payments offered and where they ended")
        for line in FAULT_REPORT_LINES:
            terminalreporter.write_line(line)
