"""SQLite, the embedded default store of stage state, set up the one safe way.

WAL lets the intake read the tracking store while the tracking stage writes it.
`synchronous=FULL` because offsets are committed to Kafka after a batch's state is
committed here: a state write lost on power failure after its offset commit would be
a payment effect lost for good. Batching makes the fsync cost per batch, not per event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A writer holding the lock (the tracking stage, mid-batch) delays readers at most
# this long before SQLite reports "database is locked".
_BUSY_TIMEOUT_MS = 10_000


def open_sqlite(path: Path, *, read_only: bool = False, fsync_each_commit: bool = True) -> sqlite3.Connection:
    """Open a store. `fsync_each_commit=False` (WAL, synchronous=NORMAL) survives a
    process crash but may lose the last commits on power loss; only for state that can
    be rebuilt, such as the intake's idempotency answers (payment ids are derived from
    the idempotency key, so a lost answer is recomputed identically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if read_only:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync_each_commit else 'NORMAL'}")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic unit: a whole batch of a stage commits or none of it does."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
