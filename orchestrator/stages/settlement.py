"""Settlement: assign each executed payment to its rail's clearing cycle, close each
cycle, reconcile it against the rail's own report, and state it as a camt.053.

Cycles. Instant rails settle gross in real time (RTGS): the payment is final when the
clearing system accepts it, and the cycle (the rail's UTC business day, or
`settlement.cycle_length_s` when set) only groups payments for reporting and
reconciliation. Rails that net settle in cycles of `settlement.cycle_length_s` (60 s when
unset). Cycle windows are aligned to the Unix epoch, so every process computes the same
window for the same acceptance time, and so does the rail's report filter.

Close. The tick closes a cycle `settlement.close_grace_s` after its window ends, so that
execution results of payments accepted just before the end have arrived. A cycle exists
because a payment was assigned to it, or because the clock passed through it (every
rail's cycles are opened one after the other from the stage's first run, so a cycle in
which we sent nothing is still reconciled: the rail may have settled something anyway).
The close reads the rail's report for the window through the `ReportSource` port; if
the report cannot be read, the close is retried on later ticks with backoff: delayed,
never skipped. Then, in one SQLite transaction, it:
- reconciles our settled payments of the cycle against the report (`reconcile`, pure),
  looking up report lines we did not settle in the cycle among our failed payments and
  other cycles;
- computes the net position per participant agent and currency (`net_positions`);
- writes the camt.053 statement to `<data dir>/statements/<tenant>/<cycle>.xml` (a cycle
  may hold tens of thousands of entries, too many for a Kafka message);
- stores one `ReconciliationException` per mismatch and one `CycleClosed` (with the
  statement's id and sha256) as unpublished outputs.

Timer outputs have no input offset that Kafka would redeliver, so every tick re-emits the
stored unpublished outputs (same bytes, same event ids) until the runtime confirms them
through `published`; a crash between closing and publishing therefore cannot lose them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.clearing_report import ReportSource, ReportUnavailable
from adapters.iso20022.camt053 import StatementAccount, StatementEntry, build_camt053
from orchestrator.cycle_events import CycleEvent, CycleEventCodec, cycle_event
from orchestrator.domain import Party
from orchestrator.events import EVENT_ID_NAMESPACE, Event, EventCodec
from orchestrator.reconciliation import (
    BookEntry,
    Mismatch,
    Movement,
    ReportLine,
    currency_totals,
    net_positions,
    reconcile,
)
from orchestrator.stages.base import Stage
from orchestrator.storage import open_sqlite, transaction
from orchestrator.tenants import RailConfig, TenantConfig

log = logging.getLogger("payorch.settlement")

# A close reads a report, builds and validates a statement and may write thousands of
# rows; a few per tick keep the consume loop responsive while a backlog drains.
MAX_CLOSES_PER_TICK = 4
# Cycles the clock opens per rail and tick: after a long outage of the stage (say a day
# of 2 s test cycles) the backlog is opened over several ticks instead of in one.
MAX_CYCLES_OPENED_PER_TICK = 500
MAX_OUTPUTS_PER_TICK = 5_000
REPORT_RETRY_MIN_S = 1.0
REPORT_RETRY_MAX_S = 60.0
_IN_CHUNK = 500
_CYCLE_ID = re.compile(r"^[a-z][a-z0-9_]{1,31}:[0-9T-]{10,15}:(rtgs|net)[0-9]{0,5}$")
_TENANT_ID = re.compile(r"^[a-z][a-z0-9]{1,15}$")


@dataclass(frozen=True, slots=True)
class Cycle:
    cycle_id: str
    rail: str
    mode: str
    start: datetime
    end: datetime  # exclusive
    length_s: int

    @property
    def settlement_date(self) -> str:
        return self.start.date().isoformat()

    @property
    def sequence_number(self) -> int:
        """Consecutive cycles of a rail count up by one (the statement's ElctrncSeqNb)."""
        return int(self.start.timestamp()) // self.length_s


def cycle_at(rail: RailConfig, moment: datetime) -> Cycle:
    """The cycle of `rail` whose window [start, end) holds `moment` (pure)."""
    config = rail.settlement
    length_s = config.cycle_seconds
    # Floor of whole seconds: the clearing side reports times truncated to milliseconds,
    # and truncation never moves a time across a whole-second boundary.
    start_s = int(moment.timestamp()) // length_s * length_s
    start = datetime.fromtimestamp(start_s, UTC)
    if config.mode == "rtgs" and config.cycle_length_s is None:
        cycle_id = f"{rail.name}:{start.date().isoformat()}:rtgs"
    elif config.mode == "rtgs":
        cycle_id = f"{rail.name}:{start:%Y%m%dT%H%M%S}:rtgs{length_s}"
    else:
        cycle_id = f"{rail.name}:{start:%Y%m%dT%H%M%S}:net{length_s}"
    return Cycle(cycle_id, rail.name, config.mode, start, start + timedelta(seconds=length_s), length_s)


def cycle_of(rail: RailConfig, accepted_at: datetime) -> tuple[str, str]:
    """(cycle id, settlement date) of a payment accepted at `accepted_at` (pure)."""
    cycle = cycle_at(rail, accepted_at)
    return cycle.cycle_id, cycle.settlement_date


def agent_of(party: Party) -> str:
    """How a participant bank is named in net positions: BIC, else member id / bank code."""
    return party.agent.bic or party.agent.member_id or party.account.bank_code or "UNKNOWN"


def counterparty_of(event: Event) -> str:
    return agent_of(event.payment.creditor)


def statement_path(data_dir: Path, tenant_id: str, cycle_id: str) -> Path:
    """Where a cycle's camt.053 is stored; ids are checked so no path can escape."""
    if not _TENANT_ID.match(tenant_id) or not _CYCLE_ID.match(cycle_id):
        raise ValueError(f"not a tenant and cycle id: {tenant_id!r} {cycle_id!r}")
    return data_dir / "statements" / tenant_id / (cycle_id.replace(":", "_") + ".xml")


def statement_message_id(tenant_id: str, cycle_id: str) -> str:
    # 29 characters, so the per-currency statement id (+ 3) fits Max35Text.
    return "S" + uuid.uuid5(EVENT_ID_NAMESPACE, f"statement/{tenant_id}/{cycle_id}").hex[:28]


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader sees the old statement or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class SettlementStage(Stage):
    name = "settlement"
    input_topics = ("executed",)
    # PaymentFailed is recorded (no output) so that a payment we failed but the rail
    # settled is reported as such, not as a payment unknown to us.
    input_event_types = frozenset({"PaymentExecuted", "PaymentFailed"})

    def __init__(self, tenants: dict[str, TenantConfig], region: str, data_dir: Path, codec: EventCodec, *,
                 cycle_codec: CycleEventCodec, reports: ReportSource) -> None:
        super().__init__(tenants, region)
        self.codec = codec
        self.cycle_codec = cycle_codec
        self.reports = reports
        self.data_dir = data_dir
        self.db = open_sqlite(data_dir / "settlement.sqlite")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS settled_payments (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL,
              counterparty TEXT NOT NULL, currency TEXT NOT NULL, amount_minor INTEGER NOT NULL,
              event BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS settled_by_cycle ON settled_payments (tenant_id, cycle_id);
            CREATE TABLE IF NOT EXISTS failed_payments (
              payment_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, rail TEXT, currency TEXT NOT NULL,
              amount_minor INTEGER NOT NULL, reason_code TEXT, failed_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS cycles (
              tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL, rail TEXT NOT NULL, mode TEXT NOT NULL,
              window_start_s INTEGER NOT NULL, window_end_s INTEGER NOT NULL, length_s INTEGER NOT NULL,
              state TEXT NOT NULL DEFAULT 'open', attempts INTEGER NOT NULL DEFAULT 0,
              closed_at TEXT, statement_sha256 TEXT, PRIMARY KEY (tenant_id, cycle_id));
            CREATE INDEX IF NOT EXISTS cycles_open ON cycles (tenant_id, rail, state, window_end_s);
            -- Per rail, the start of the next cycle the clock has not opened yet.
            CREATE TABLE IF NOT EXISTS cycle_cursors (
              tenant_id TEXT NOT NULL, rail TEXT NOT NULL, next_start_s INTEGER NOT NULL,
              length_s INTEGER NOT NULL, PRIMARY KEY (tenant_id, rail));
            -- Every event a close emitted, re-emitted until the runtime confirms it.
            CREATE TABLE IF NOT EXISTS cycle_outputs (
              event_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, cycle_id TEXT NOT NULL,
              kind TEXT, payment_id TEXT, event BLOB NOT NULL, unpublished INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS cycle_outputs_unpublished ON cycle_outputs (unpublished) WHERE unpublished=1;
            CREATE INDEX IF NOT EXISTS cycle_outputs_by_payment ON cycle_outputs (payment_id)
              WHERE payment_id IS NOT NULL;
            """
        )
        # Stores created before cycles closed lack the acceptance time (the statement's
        # booking time); their rows fall back to the PaymentSettled time.
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(settled_payments)")}
        if "accepted_at" not in columns:
            self.db.execute("ALTER TABLE settled_payments ADD COLUMN accepted_at TEXT")
        # rail -> (earliest next report read, consecutive failures); in memory, so a
        # restarted stage tries at once.
        self._report_backoff: dict[str, tuple[float, int]] = {}

    # -- payments ---------------------------------------------------------------------

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        with transaction(self.db):
            return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        tenant = self.tenant(event)
        if event.event_type == "PaymentFailed":
            payment = event.payment
            self.db.execute("INSERT OR IGNORE INTO failed_payments VALUES (?,?,?,?,?,?,?)",
                            (payment.payment_id, tenant.tenant_id, event.payload.get("rail"), payment.currency,
                             payment.amount_minor, event.payload.get("reason_code"), event.occurred_at.isoformat()))
            return []
        existing = self.db.execute("SELECT event FROM settled_payments WHERE payment_id=?", (event.payment_id,)).fetchone()
        if existing is not None:
            return [self.codec.decode(existing["event"])]
        rail = tenant.rails_by_name[event.payload["rail"]]
        accepted_at: datetime = event.payload["accepted_at"]
        cycle = cycle_at(rail, accepted_at)
        if self._open_cycle(tenant.tenant_id, cycle) == "closed":
            # Its execution result came after the cycle's grace, so the close did not
            # count it; if the rail's report did, the close reported it `unknown_to_us`.
            log.warning("payment executed after its cycle closed; assigned to the closed cycle", extra={
                **event.log_context(), "cycle_id": cycle.cycle_id, "stage": self.name})
        payment = event.payment
        settled = self.emit(event, "PaymentSettled", {
            "rail": rail.name, "cycle_id": cycle.cycle_id, "settlement_mode": rail.settlement.mode,
            "settlement_date": cycle.settlement_date}, now)
        self.db.execute(
            "INSERT INTO settled_payments (payment_id, tenant_id, cycle_id, counterparty, currency, amount_minor,"
            " event, accepted_at) VALUES (?,?,?,?,?,?,?,?)",
            (payment.payment_id, payment.tenant_id, cycle.cycle_id, counterparty_of(event), payment.currency,
             payment.amount_minor, self.codec.encode(settled), accepted_at.astimezone(UTC).isoformat()))
        return [settled]

    def _open_cycle(self, tenant_id: str, cycle: Cycle) -> str:
        """Record the cycle (if new) and return its state."""
        self.db.execute(
            "INSERT OR IGNORE INTO cycles (tenant_id, cycle_id, rail, mode, window_start_s, window_end_s, length_s)"
            " VALUES (?,?,?,?,?,?,?)",
            (tenant_id, cycle.cycle_id, cycle.rail, cycle.mode, int(cycle.start.timestamp()),
             int(cycle.end.timestamp()), cycle.length_s))
        return self.db.execute("SELECT state FROM cycles WHERE tenant_id=? AND cycle_id=?",
                               (tenant_id, cycle.cycle_id)).fetchone()["state"]

    # -- cycles -----------------------------------------------------------------------

    def tick(self, now: datetime) -> list[CycleEvent]:
        with transaction(self.db):
            self._open_cycles_up_to(now)
        for tenant, rail, cycle, attempts in self._due_cycles(now):
            backoff = self._report_backoff.get(rail.name)
            if backoff is not None and backoff[0] > now.timestamp():
                continue  # its report failed just now: one wait per rail and backoff period
            self._try_close(tenant, rail, cycle, attempts, now)
        return [self.cycle_codec.decode(row["event"]) for row in self.db.execute(
            "SELECT event FROM cycle_outputs WHERE unpublished=1 ORDER BY rowid LIMIT ?", (MAX_OUTPUTS_PER_TICK,))]

    def published(self, outputs: list) -> None:
        """The runtime confirms that the tick's outputs reached the broker."""
        with transaction(self.db):
            self.db.executemany("UPDATE cycle_outputs SET unpublished=0 WHERE event_id=?",
                                [(output.event_id,) for output in outputs if isinstance(output, CycleEvent)])

    def _open_cycles_up_to(self, now: datetime) -> None:
        """Open every rail's cycles one after the other up to the current one."""
        for tenant_id, tenant in self.tenants.items():
            for rail in tenant.rails:
                current = cycle_at(rail, now)
                current_start_s = int(current.start.timestamp())
                cursor = self.db.execute("SELECT next_start_s, length_s FROM cycle_cursors WHERE tenant_id=? AND rail=?",
                                         (tenant_id, rail.name)).fetchone()
                if cursor is None or cursor["length_s"] != current.length_s:
                    # First run, or the cycle length changed: the clock starts at the
                    # current cycle (earlier cycles that hold payments close anyway).
                    next_start_s = current_start_s
                else:
                    next_start_s = cursor["next_start_s"]
                opened = 0
                while next_start_s <= current_start_s and opened < MAX_CYCLES_OPENED_PER_TICK:
                    self._open_cycle(tenant_id, cycle_at(rail, datetime.fromtimestamp(next_start_s, UTC)))
                    next_start_s += current.length_s
                    opened += 1
                if cursor is not None and opened == 0 and cursor["length_s"] == current.length_s:
                    continue  # nothing new: no write, so an idle tick commits nothing
                self.db.execute(
                    "INSERT INTO cycle_cursors VALUES (?,?,?,?) ON CONFLICT (tenant_id, rail) DO UPDATE SET"
                    " next_start_s=excluded.next_start_s, length_s=excluded.length_s",
                    (tenant_id, rail.name, next_start_s, current.length_s))

    def _due_cycles(self, now: datetime) -> list[tuple[TenantConfig, RailConfig, Cycle, int]]:
        """The oldest open cycles whose grace has passed, of the rails this process knows
        (cycles of a rail removed from the tenant file stay open, untouched)."""
        now_s = now.timestamp()
        due = []
        for tenant_id, tenant in self.tenants.items():
            for rail in tenant.rails:
                for row in self.db.execute(
                        "SELECT * FROM cycles WHERE tenant_id=? AND rail=? AND state='open' AND window_end_s<=?"
                        " ORDER BY window_end_s LIMIT ?",
                        (tenant_id, rail.name, now_s - rail.settlement.close_grace_s, MAX_CLOSES_PER_TICK)):
                    cycle = Cycle(row["cycle_id"], row["rail"], row["mode"],
                                  datetime.fromtimestamp(row["window_start_s"], UTC),
                                  datetime.fromtimestamp(row["window_end_s"], UTC), row["length_s"])
                    due.append((tenant, rail, cycle, row["attempts"]))
        # Oldest first across rails, so a backlog drains in time order.
        due.sort(key=lambda item: (item[2].end, item[0].tenant_id, item[2].cycle_id))
        return due[:MAX_CLOSES_PER_TICK]

    def _try_close(self, tenant: TenantConfig, rail: RailConfig, cycle: Cycle, attempts: int, now: datetime) -> None:
        """Close the cycle, or, when the rail's report cannot be read, back off that rail."""
        context = {"tenant_id": tenant.tenant_id, "cycle_id": cycle.cycle_id, "rail": rail.name, "stage": self.name}
        try:
            # Read outside the SQLite transaction: a slow rail must not hold the lock.
            lines = self.reports.fetch(rail, cycle.start, cycle.end)
        except ReportUnavailable as exc:
            # The backoff is per rail, not per cycle: with a backlog of due cycles, each
            # would otherwise cost one timed-out read per tick and stall the stage's loop.
            failures = (self._report_backoff.get(rail.name) or (0.0, 0))[1] + 1
            delay_s = min(REPORT_RETRY_MAX_S, REPORT_RETRY_MIN_S * 2 ** (failures - 1))
            self._report_backoff[rail.name] = (now.timestamp() + delay_s, failures)
            with transaction(self.db):
                self.db.execute("UPDATE cycles SET attempts=attempts+1 WHERE tenant_id=? AND cycle_id=?",
                                (tenant.tenant_id, cycle.cycle_id))
            log.warning("cycle close delayed, the rail's report is unavailable (attempt %d, next in %.0f s): %s",
                        attempts + 1, delay_s, exc, extra=context)
            return
        self._report_backoff.pop(rail.name, None)
        with transaction(self.db):
            state = self.db.execute("SELECT state FROM cycles WHERE tenant_id=? AND cycle_id=?",
                                    (tenant.tenant_id, cycle.cycle_id)).fetchone()
            if state is not None and state["state"] == "open":  # else another instance closed it meanwhile
                self._close(tenant, rail, cycle, lines, now, context)

    def _close(self, tenant: TenantConfig, rail: RailConfig, cycle: Cycle, lines: list[ReportLine], now: datetime,
               context: dict) -> None:
        tenant_id = tenant.tenant_id
        rows = self.db.execute(
            "SELECT payment_id, currency, amount_minor, event, accepted_at FROM settled_payments"
            " WHERE tenant_id=? AND cycle_id=? ORDER BY accepted_at, payment_id", (tenant_id, cycle.cycle_id)).fetchall()
        settled = [self.codec.decode(row["event"]) for row in rows]
        ours = [BookEntry(row["payment_id"], row["amount_minor"], row["currency"], "SETTLED", cycle.cycle_id)
                for row in rows]
        our_ids = {entry.payment_id for entry in ours}
        reported = {line.uetr for line in lines if line.uetr is not None}
        known_elsewhere = self._known_elsewhere(tenant_id, reported - our_ids)
        already_flagged = self._flagged_cycle_differs(our_ids - reported)
        mismatches = reconcile(cycle.cycle_id, ours, lines, known_elsewhere, already_flagged)

        positions = net_positions(
            Movement(agent_of(event.payment.debtor), agent_of(event.payment.creditor), event.payment.currency,
                     event.payment.amount_minor) for event in settled)
        entries: dict[str, list] = {currency: [] for currency in rail.currencies}
        for row, event in zip(rows, settled, strict=True):
            booked_at = datetime.fromisoformat(row["accepted_at"]) if row["accepted_at"] else event.occurred_at
            entries.setdefault(event.payment.currency, []).append(StatementEntry(event.payment, booked_at))
        message_id = statement_message_id(tenant_id, cycle.cycle_id)
        document = build_camt053(
            entries, message_id=message_id, created_at=now, period_start=cycle.start, period_end=cycle.end,
            account=StatementAccount(identifier=rail.name, issuer=tenant_id,
                                     name=f"{rail.display_name} settlement position"),
            value_date=cycle.settlement_date, rail=rail, sequence_number=cycle.sequence_number,
            additional_info=(f"Cycle {cycle.cycle_id} reconciled against the rail's report: {len(ours)} payments"
                             f" settled here, {len(lines)} at the rail, {len(mismatches)} exceptions."))
        digest = hashlib.sha256(document).hexdigest()
        _write_atomically(statement_path(self.data_dir, tenant_id, cycle.cycle_id), document)

        outputs = [self._exception_event(tenant_id, rail, cycle, mismatch, now) for mismatch in mismatches]
        # The close comes last: every exception of a cycle precedes its CycleClosed on
        # the cycle's partition, so a reader that has the close has all its exceptions.
        outputs.append(self.cycle_codec.encode(cycle_event(tenant_id, cycle.cycle_id, "CycleClosed", {
            "cycle_id": cycle.cycle_id, "rail": rail.name, "settlement_mode": cycle.mode,
            "settlement_date": cycle.settlement_date, "window_start": cycle.start, "window_end": cycle.end,
            "payments": len(ours), "rail_transactions": len(lines), "exceptions": len(mismatches),
            "totals": currency_totals((entry.currency, entry.amount_minor) for entry in ours),
            "rail_totals": currency_totals((line.currency, line.amount_minor) for line in lines),
            "net_positions": [{"agent": p.agent, "currency": p.currency, "sent_count": p.sent_count,
                               "sent_minor": p.sent_minor, "received_count": p.received_count,
                               "received_minor": p.received_minor, "net_minor": p.net_minor} for p in positions],
            "statement_id": message_id, "statement_sha256": digest,
        }, discriminator="", occurred_at=now, region=self.region)))
        self.db.executemany(
            "INSERT OR IGNORE INTO cycle_outputs VALUES (?,?,?,?,?,?,1)",
            [(output.event_id, tenant_id, cycle.cycle_id, output.payload.get("kind"), output.payload.get("payment_id"),
              output.encoded) for output in outputs])
        self.db.execute("UPDATE cycles SET state='closed', closed_at=?, statement_sha256=? WHERE tenant_id=? AND cycle_id=?",
                        (now.isoformat(), digest, tenant_id, cycle.cycle_id))
        for mismatch in mismatches:
            log.warning("reconciliation exception %s: %s", mismatch.kind, mismatch.detail, extra={
                **context, "payment_id": mismatch.payment_id, "kind": mismatch.kind})
        log.info("cycle closed: %d payments, %d at the rail, %d exceptions", len(ours), len(lines), len(mismatches),
                 extra={**context, "count": len(ours)})

    def _exception_event(self, tenant_id: str, rail: RailConfig, cycle: Cycle, mismatch: Mismatch,
                         now: datetime) -> CycleEvent:
        return self.cycle_codec.encode(cycle_event(tenant_id, cycle.cycle_id, "ReconciliationException", {
            "cycle_id": cycle.cycle_id, "rail": rail.name, "kind": mismatch.kind, "payment_id": mismatch.payment_id,
            "rail_reference": mismatch.rail_reference, "currency": mismatch.currency,
            "our_amount_minor": mismatch.our_amount_minor, "rail_amount_minor": mismatch.rail_amount_minor,
            "rail_currency": mismatch.rail_currency, "our_status": mismatch.our_status,
            "rail_settled_at": mismatch.rail_settled_at, "detail": mismatch.detail,
        }, discriminator=mismatch.key, occurred_at=now, region=self.region))

    def _known_elsewhere(self, tenant_id: str, payment_ids: Iterable[str]) -> dict[str, BookEntry]:
        """Our records of payments the rail reports in this cycle that we did not settle in it."""
        known: dict[str, BookEntry] = {}
        for chunk in _chunks(sorted(payment_ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    # bandit B608: only '?' placeholders are formatted into this SQL.
                    f"SELECT payment_id, currency, amount_minor, cycle_id FROM settled_payments"  # nosec B608
                    f" WHERE tenant_id=? AND payment_id IN ({marks})", (tenant_id, *chunk)):
                known[row["payment_id"]] = BookEntry(row["payment_id"], row["amount_minor"], row["currency"],
                                                     "SETTLED", row["cycle_id"])
            for row in self.db.execute(
                    # bandit B608: only '?' placeholders are formatted into this SQL.
                    f"SELECT payment_id, currency, amount_minor, reason_code FROM failed_payments"  # nosec B608
                    f" WHERE tenant_id=? AND payment_id IN ({marks})", (tenant_id, *chunk)):
                known.setdefault(row["payment_id"], BookEntry(row["payment_id"], row["amount_minor"], row["currency"],
                                                              "FAILED", None, row["reason_code"]))
        return known

    def _flagged_cycle_differs(self, payment_ids: Iterable[str]) -> set[str]:
        flagged: set[str] = set()
        for chunk in _chunks(sorted(payment_ids)):
            marks = ",".join("?" * len(chunk))
            flagged.update(row["payment_id"] for row in self.db.execute(
                f"SELECT payment_id FROM cycle_outputs WHERE kind='cycle_differs' AND payment_id IN ({marks})",  # nosec B608
                chunk))
        return flagged

    def close(self) -> None:
        try:
            self.reports.close()
        finally:
            self.db.close()


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]
