"""A stage process's counters, and the throughput line it logs while it has work."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("payorch.runtime")

# Each stage logs one line of throughput figures this often while it has work.
STATS_REPORT_INTERVAL_S = 10.0


@dataclass
class RuntimeStats:
    consumed: int = 0
    skipped: int = 0
    handled: int = 0
    produced: int = 0
    dead_lettered: int = 0
    retried: int = 0
    aborted_transactions: int = 0
    batches: int = 0
    commits: int = 0
    reported_commits: int = 0
    last_batch_ms: float = 0.0
    batch_ms_sum: float = 0.0
    batch_ms_max: float = 0.0
    reported_batches: int = 0
    reported_handled: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def add_batch(self, handled: int, started: float) -> None:
        """A batch that `handled` events, begun at `time.perf_counter()` `started`."""
        self.handled += handled
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000
        self.batch_ms_sum += self.last_batch_ms
        self.batch_ms_max = max(self.batch_ms_max, self.last_batch_ms)

    def report(self, process: str) -> None:
        """One line per interval with work done, so a slow stage shows itself in the logs."""
        batches = self.batches - self.reported_batches
        if batches == 0:
            return
        handled = self.handled - self.reported_handled
        commits = self.commits - self.reported_commits
        log.info("stage %s: %d events in %d batches and %d commits (mean %.1f per batch, mean %.1f ms, max %.1f ms)",
                 process, handled, batches, commits, handled / batches, self.batch_ms_sum / batches,
                 self.batch_ms_max, extra={"stage": process, "count": handled})
        self.reported_batches, self.reported_handled, self.reported_commits = self.batches, self.handled, self.commits
        self.batch_ms_sum = self.batch_ms_max = 0.0

    def log_stopped(self, process: str) -> None:
        log.info("stage %s stopped: consumed=%d handled=%d produced=%d retried=%d dead_lettered=%d",
                 process, self.consumed, self.handled, self.produced, self.retried, self.dead_lettered,
                 extra={"stage": process})
