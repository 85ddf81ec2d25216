"""SQLite, the embedded default store of stage state, set up the one safe way.

WAL lets the intake read the tracking store while the tracking stage writes it.
`synchronous=FULL` because offsets are committed to Kafka after a batch's state is
committed here: a state write lost on power failure after its offset commit would be
a payment effect lost for good.

Group commit: inside a `StateUnit` (the runtime opens one per checkpoint), a stage's
`transaction` is a savepoint of one SQLite transaction per store that stays open until
the unit commits, just before the checkpoint's offsets go to Kafka. A process hosting
several stateful stages then pays one fsync per store per checkpoint, the stores in
parallel, instead of one per store per batch in a row; the fsyncs were a third of the
busiest stage process's time (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
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


class StateUnit:
    """The stage state written during one checkpoint, committed together.

    While the unit is active (`with unit.active():`), `transaction` joins each store it
    is given to the unit: the first use begins that store's transaction, and each batch
    is a savepoint in it, so a failed batch still rolls back alone. `commit` makes every
    joined store durable, the stores in parallel (SQLite releases the GIL while it
    syncs). A process that dies before `commit` loses the unit's writes together with
    the checkpoint's offsets, so the batches come again to a store that never saw them.
    Across stores the commit is atomic per store only, as it was without the unit.
    """

    def __init__(self) -> None:
        self._open: list[sqlite3.Connection] = []

    @property
    def pending(self) -> bool:
        return bool(self._open)

    @contextmanager
    def active(self) -> Iterator[StateUnit]:
        token = _active_unit.set(self)
        try:
            yield self
        finally:
            _active_unit.reset(token)

    def join(self, conn: sqlite3.Connection) -> None:
        if any(joined is conn for joined in self._open):
            return
        if not self._open:
            conn.execute("BEGIN IMMEDIATE")
        else:
            # Waiting for this store's lock while holding others' could deadlock with a
            # replica that holds this one and waits for ours. So try without waiting, and
            # if it is taken, commit what the unit holds first (state may always become
            # durable ahead of its offsets), then wait as usual.
            conn.execute("PRAGMA busy_timeout=0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                self.commit()
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        self._open.append(conn)

    def commit(self) -> None:
        stores, self._open = self._open, []
        if len(stores) == 1:
            stores[0].execute("COMMIT")
        elif stores:
            # Every commit is waited for before the first error (if any) is raised, so no
            # store is left mid-commit; the process then ends and its batches come again.
            for result in [_committer().submit(conn.execute, "COMMIT") for conn in stores]:
                result.result()


_active_unit: ContextVar[StateUnit | None] = ContextVar("payorch_state_unit", default=None)
_committer_pool: ThreadPoolExecutor | None = None


def _committer() -> ThreadPoolExecutor:
    global _committer_pool
    if _committer_pool is None:
        _committer_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="state-commit")
    return _committer_pool


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic unit: a whole batch of a stage commits or none of it does.

    Outside a `StateUnit` it is a transaction of its own; inside one, a savepoint of the
    unit's transaction on this store, made durable when the unit commits."""
    unit = _active_unit.get()
    if unit is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return
    unit.join(conn)
    conn.execute("SAVEPOINT batch")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        raise
    conn.execute("RELEASE batch")


def dynamodb_client(settings):
    """A boto3 DynamoDB client as every DynamoDB store of payorch makes it, from
    `DynamoDBSettings`: the endpoint and region given (None: boto3's own resolution), the
    standard retry mode, and the timeouts. Credentials come from boto3's default chain
    (task role, environment, profile), never from payorch's settings."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "dynamodb", endpoint_url=settings.endpoint_url, region_name=settings.region,
        config=Config(retries={"mode": "standard", "max_attempts": settings.max_attempts},
                      connect_timeout=settings.timeout_s, read_timeout=settings.timeout_s))
