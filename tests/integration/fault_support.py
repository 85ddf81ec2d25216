"""What every fault test checks afterwards, and the line of figures each one prints.

After a fault, every accepted payment must be in a terminal status or in a dead-letter
topic (none lost), no payment may have an event recorded twice or a second posting
(none duplicated), and `payorch ledger verify` must pass.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import yaml

from orchestrator.dlq import DeadLetters
from orchestrator.loadgen import LoadResult
from orchestrator.settings import REPO_ROOT
from tests.harness import FAULT_REPORT_LINES, System

# Events a payment may legitimately carry more than once (one per wait).
REPEATABLE_EVENT_TYPES = ("PaymentDeferred",)
LEDGER_CATCH_UP_S = 90.0


def tenants_dir(tmp_path: Path, rail_overrides: dict[str, dict] | None = None, all_rails: dict | None = None) -> Path:
    """A copy of tenants/ with rail settings changed for a test ({"emea.sepa_inst": {...}})."""
    target = tmp_path / "tenants"
    shutil.copytree(REPO_ROOT / "tenants", target)
    for path in target.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        for rail in config["rails"]:
            for key, value in {**(all_rails or {}), **(rail_overrides or {}).get(
                    f"{config['tenant_id']}.{rail['name']}", {})}.items():
                if isinstance(value, dict):
                    rail[key] = {**rail.get(key, {}), **value}
                else:
                    rail[key] = value
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def dead_lettered_payments(system: System) -> dict[str, set[str]]:
    """Payment id -> the stages that dead-lettered one of its messages."""
    found: dict[str, set[str]] = {}
    for message in DeadLetters(system.settings()).messages():
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in message.headers() or []}
        key = (message.key() or b"").decode("utf-8", "replace")
        found.setdefault(key, set()).add(headers.get("payorch.dlq.stage", "?"))
    return found


def check_after_fault(system: System, fault: str, result: LoadResult, *, offered: int) -> dict[str, int]:
    """Assert nothing was lost or duplicated and the ledger verifies; print the figures."""
    print("\n".join(result.report_lines()))
    dead = dead_lettered_payments(system)
    lost = [p for p in result.unfinished if p not in dead]
    never_accepted = offered - result.accepted

    tracking = sqlite3.connect(system.data_dir / "tracking.sqlite")
    placeholders = ",".join("?" * len(REPEATABLE_EVENT_TYPES))
    duplicated = tracking.execute(
        f"SELECT payment_id, event_type, count(*) FROM timeline WHERE event_type NOT IN ({placeholders})"
        " GROUP BY payment_id, event_type HAVING count(*) > 1", REPEATABLE_EVENT_TYPES).fetchall()

    # The ledger posts concurrently with settlement: give it time to catch up.
    deadline = time.monotonic() + LEDGER_CATCH_UP_S
    while True:
        verify = system.cli("ledger", "verify")
        if verify.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)

    counts = {
        "offered": offered,
        "accepted": result.accepted,
        "settled": result.statuses.get("SETTLED", 0),
        "rejected": result.statuses.get("REJECTED", 0),
        "failed": result.statuses.get("FAILED", 0),
        "dead_lettered": len([p for p in result.payments if p in dead]),
        "lost": len(lost) + never_accepted,
        "duplicated": len({payment for payment, _, _ in duplicated}),
    }
    line = f"FAULT {fault}: " + " ".join(f"{name}={value}" for name, value in counts.items())
    print(line)
    FAULT_REPORT_LINES.append(line)
    print(verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr)
    assert counts["lost"] == 0, f"lost payments: {lost[:5]}, never accepted: {never_accepted}"
    assert counts["duplicated"] == 0, f"events recorded twice: {duplicated[:5]}"
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all invariants hold" in verify.stdout
    return counts
