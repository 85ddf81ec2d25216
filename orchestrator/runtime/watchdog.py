"""The hang watchdog, and Kafka calls retried under it.

librdkafka's `send_offsets_to_transaction` can block forever, past its timeout, once the
group coordinator's broker went away and came back (librdkafka issues #5456 and #5511;
the broker-restart fault test hit it in every stage). Nothing in-process unblocks it, so
every transactional call runs under `HangWatchdog.guard`, and the consume loop beats
once per iteration: a call or a loop stuck past its bound ends the process, and its
supervisor starts a new one with new clients.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from confluent_kafka import KafkaException

log = logging.getLogger("payorch.runtime")

# A transactional call still blocked this long after its own timeout is hung, not slow.
TXN_CALL_HANG_GRACE_S = 10.0
# A consume loop that has not come round for this long is hung; Kafka's own
# max.poll.interval.ms would take its partitions away at the same point.
LOOP_STALL_MAX_S = 120.0
# Exit status of a process the hang watchdog ended (EX_SOFTWARE): the supervisor restarts it.
HUNG_CLIENT_EXIT_STATUS = 70


class HangWatchdog:
    """Ends the process when a blocking Kafka call outlives its deadline.

    librdkafka's `send_offsets_to_transaction` can block forever, past its timeout, when
    the group coordinator's broker went away and came back (librdkafka issues #5456 and
    #5511, seen here when the broker restarts). Nothing in-process can unblock it; a new
    process with new clients recovers, and transactions make the exit safe: the open
    transaction is aborted when the restarted instance fences it, and the batch is read
    again.
    """

    def __init__(self, stage: str, max_loop_stall_s: float = LOOP_STALL_MAX_S) -> None:
        self.stage = stage
        self.max_loop_stall_s = max_loop_stall_s
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._call = ""
        # The consume loop beats once per iteration; None until it starts.
        self._last_beat: float | None = None
        threading.Thread(target=self._watch, name="kafka-hang-watchdog", daemon=True).start()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    @contextmanager
    def guard(self, call: str, timeout_s: float) -> Iterator[None]:
        with self._lock:
            self._deadline = time.monotonic() + timeout_s + TXN_CALL_HANG_GRACE_S
            self._call = call
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                hung = self._deadline is not None and now > self._deadline
                call = self._call
            if not hung and self._last_beat is not None and now - self._last_beat > self.max_loop_stall_s:
                # Blocked somewhere no guard covers (a rebalance callback's broker call, say).
                hung, call = True, f"the consume loop (no iteration for {self.max_loop_stall_s:.0f} s)"
            if hung:
                log.critical("Kafka call %s is hung past its timeout; exiting so a new process recovers", call,
                             extra={"stage": self.stage})
                logging.shutdown()
                os._exit(HUNG_CLIENT_EXIT_STATUS)


def call_retrying(watchdog: HangWatchdog, name: str, call: Callable[[float], object], timeout_s: float,
                  attempts: int, stage: str) -> None:
    """`call(timeout_s)` under the hang watchdog, again on a retriable Kafka error, at most
    `attempts` times; anything else, or the last failure, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            with watchdog.guard(name, timeout_s):
                call(timeout_s)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == attempts:
                raise
            log.warning("retrying %s (%d/%d): %s", name, attempt, attempts, exc.args[0], extra={"stage": stage})
            # A transport failure is reported at once ("after 0ms"); give the client a
            # moment to reconnect before the next attempt.
            time.sleep(min(1.0, 0.1 * 2 ** attempt))
