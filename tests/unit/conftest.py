"""Unit-test fixtures: the ledger's storage backends.

`backend` runs a test once per ledger backend: SQLite in the test's temporary directory,
and DynamoDB on a local DynamoDB EMULATOR, moto's server mode (`moto[server]`,
Apache-2.0), which this file starts as a subprocess on a free loopback port, once per test
session. It is an emulator, not DynamoDB: it implements the API (conditional writes,
TransactWriteItems with cancellation reasons, consistent reads) in memory, which is what
these tests exercise; throttling, partitions and latency are AWS's own. Every test gets
its own table prefix, so tests share the emulator but never each other's tables.

If the emulator cannot start, every test that needs it FAILS (never skips), in CI
(`CI=true`) and locally alike, as the Kafka broker fixture does: a skipped backend would
let a green run claim what was never tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ledger_store import LedgerStore, SqliteLedgerStore
from orchestrator.settings import DynamoDBSettings, Settings, StorageSettings

EMULATOR_REGION = "eu-west-1"
# The emulator accepts any credentials; these exist only so botocore can sign requests.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "emulator", "aws_secret_access_key": "emulator"}
_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emulator_client(endpoint_url: str):
    import boto3
    from botocore.config import Config

    # One attempt and a long read timeout: moto serves requests on threads and rolls a
    # failed transaction back by swapping whole tables, so a client retry that overtakes a
    # slow original on a busy machine could interleave two copies of one transaction; real
    # DynamoDB transactions are atomic and the production client keeps its retries.
    return boto3.session.Session(region_name=EMULATOR_REGION, **EMULATOR_CREDENTIALS).client(
        "dynamodb", endpoint_url=endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=300))


def _start_emulator(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    client = emulator_client(endpoint)
    deadline = time.monotonic() + _START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the emulator exited with code {process.returncode}")
            try:
                client.list_tables(Limit=1)
                return process, endpoint
            except Exception as exc:  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not answer within {_START_TIMEOUT_S:.0f} s: {exc}") from exc
                time.sleep(0.1)
    except BaseException:
        _stop(process)
        raise
    finally:
        client.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            # In-memory only, nothing to flush: it gets a moment (freeing a big state at exit
            # can take seconds), then it is killed.
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def dynamodb_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a DynamoDB EMULATOR (moto server) for this test session."""
    log_path = tmp_path_factory.mktemp("dynamodb-emulator") / "moto_server.log"
    errors = []
    for _ in range(3):  # the free port can be taken between choosing it and binding it
        try:
            process, endpoint = _start_emulator(log_path)
            break
        except Exception as exc:
            errors.append(str(exc))
    else:
        tail = log_path.read_text(errors="replace")[-2_000:] if log_path.exists() else ""
        where = "in CI" if os.environ.get("CI") == "true" else "locally"
        pytest.fail(f"the DynamoDB emulator (moto server) could not start {where}: {errors}; is `moto[server]` "
                    f"installed (pip install -e '.[test]')? Its log ends:\n{tail}", pytrace=False)
    yield endpoint
    _stop(process)


@dataclass
class LedgerBackend:
    """One ledger backend for one test: `open()` gives a new store on the same data, as a
    restarted process would get."""

    name: str
    open: Callable[[], LedgerStore]
    settings: Callable[[Path], Settings]  # process settings that select this ledger


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerBackend]:
    opened: list[LedgerStore] = []

    def track(store: LedgerStore) -> LedgerStore:
        opened.append(store)
        return store

    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite"
        yield LedgerBackend("sqlite", lambda: track(SqliteLedgerStore(path)),
                            lambda data_dir: Settings(data_dir=data_dir))
    else:
        from orchestrator.ledger_store_dynamodb import DynamoDBLedgerStore

        endpoint = request.getfixturevalue("dynamodb_emulator")
        prefix = f"t{uuid.uuid4().hex[:12]}-"
        dynamodb = DynamoDBSettings(endpoint_url=endpoint, region=EMULATOR_REGION, table_prefix=prefix)
        yield LedgerBackend(
            "dynamodb",
            lambda: track(DynamoDBLedgerStore(emulator_client(endpoint), prefix, endpoint_url=endpoint)),
            lambda data_dir: Settings(data_dir=data_dir,
                                      storage=StorageSettings(backend="dynamodb", dynamodb=dynamodb)))
    for store in opened:
        try:
            store.close()
        except Exception:  # already closed by the test (a simulated crash)
            pass
