"""The ledger SIGKILLed inside an open Kafka transaction, under load.

The ledger writes its SQLite effects, then produces its events and offsets in a Kafka
transaction. Killed between the two, the broker aborts the transaction when the
restarted instance (same transactional id) fences it: read_committed readers never see
the half-done outputs, the batch is read again, and the ledger, finding the effects
already recorded, re-emits the stored events instead of posting twice. A drill setting
holds each ledger transaction open so the kill lands inside one, and the log proves it.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness import System
from tests.integration.fault_support import check_after_fault
from tests.integration.test_faults import finish_load, start_load

pytestmark = pytest.mark.integration

HOLD_S = 2.0
HOLD_LINE = "drill: holding a transaction of"


def test_ledger_killed_inside_an_open_transaction_posts_every_payment_exactly_once(kafka_bootstrap, tmp_path):
    system = System(kafka_bootstrap, tmp_path)
    try:
        system.start_all()
        system.kill("ledger", signal.SIGTERM)
        system.env["PAYORCH_RUNTIME__DRILL_HOLD_TRANSACTION_S"] = str(HOLD_S)
        system.start("ledger")
        del system.env["PAYORCH_RUNTIME__DRILL_HOLD_TRANSACTION_S"]

        duration_s = 8
        thread, box = start_load(system, duration_s=duration_s)
        log_path = system.log_dir / "ledger.log"
        kills = 0
        for _ in range(2):  # twice: the second kill hits the redelivered, re-held batch
            seen = log_path.read_text(errors="replace").count(HOLD_LINE)
            deadline = time.monotonic() + 60
            while log_path.read_text(errors="replace").count(HOLD_LINE) == seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert log_path.read_text(errors="replace").count(HOLD_LINE) > seen, "the ledger never opened a transaction"
            time.sleep(HOLD_S / 4)  # well inside the hold: the transaction is open, its outputs produced
            system.kill("ledger", signal.SIGKILL)
            kills += 1
            system.env["PAYORCH_RUNTIME__DRILL_HOLD_TRANSACTION_S"] = str(HOLD_S)
            system.start("ledger")
            del system.env["PAYORCH_RUNTIME__DRILL_HOLD_TRANSACTION_S"]
        # Then a ledger without the drill catches up.
        time.sleep(2)
        system.kill("ledger", signal.SIGKILL)
        system.start("ledger")
        result = finish_load(thread, box, system)
        offered = int(duration_s * 60)
        counts = check_after_fault(system, "ledger-killed-in-open-transaction", result, offered=offered)
        assert counts["settled"] == offered and kills == 2
    finally:
        system.stop()
