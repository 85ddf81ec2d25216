"""Reconciliation of a clearing cycle against the rail's own report (pure functions).

Our side is what settlement recorded: the payments it settled in the cycle, and for
lines the rail reports that are not among them, whatever else we know about that
payment (we failed it, or settled it in another cycle). The rail's side is its report
of settled transactions for the cycle's window. Payments are matched on the UETR, which
is our payment id (execution sends it as the UETR, and the rail echoes it).

Every difference becomes one `Mismatch`:

| kind | meaning | what it usually means for money |
|---|---|---|
| `missing_at_rail` | we settled it in this cycle, the rail's report does not have it | we told the customer SETTLED but the rail did not move the money |
| `unknown_to_us` | the rail settled it, we have no record of the payment at all | money moved that we never sent (or never heard back about) |
| `settled_despite_failure` | the rail settled it, we recorded it FAILED | the ledger released funds the rail did move (a clearing timeout, typically) |
| `amount_differs` | both have it, the amount or currency differs | the rail moved another amount than we booked |
| `cycle_differs` | the rail settled it in this window, we settled it in another cycle | the acceptance times disagree across a cycle boundary |
| `duplicate_at_rail` | the rail's report has the same UETR more than once | the rail settled one payment twice |

Amounts are compared in integer minor units, never as decimals or floats. The output is
sorted, so the same inputs always give the same mismatches in the same order (the close
derives event ids from them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

MismatchKind = Literal["missing_at_rail", "unknown_to_us", "settled_despite_failure", "amount_differs",
                       "cycle_differs", "duplicate_at_rail"]
MISMATCH_KINDS: tuple[str, ...] = ("missing_at_rail", "unknown_to_us", "settled_despite_failure",
                                   "amount_differs", "cycle_differs", "duplicate_at_rail")


@dataclass(frozen=True, slots=True)
class BookEntry:
    """One payment as settlement recorded it."""

    payment_id: str
    amount_minor: int
    currency: str
    status: Literal["SETTLED", "FAILED"]
    # The cycle we settled it in (None for a failed payment), and why it failed.
    cycle_id: str | None = None
    reason_code: str | None = None


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One settled transaction in the rail's report."""

    uetr: str | None
    amount_minor: int
    currency: str
    settled_at: datetime
    end_to_end_id: str | None = None
    transaction_id: str | None = None

    @property
    def reference(self) -> str | None:
        return self.transaction_id or self.end_to_end_id


@dataclass(frozen=True, slots=True)
class Mismatch:
    kind: MismatchKind
    payment_id: str | None
    rail_reference: str | None
    currency: str
    our_amount_minor: int | None
    rail_amount_minor: int | None
    rail_currency: str | None
    our_status: str | None
    rail_settled_at: datetime | None
    detail: str

    @property
    def key(self) -> str:
        """Stable within a cycle: what the exception's event id is derived from."""
        return f"{self.kind}/{self.payment_id or ''}/{self.rail_reference or ''}"


def reconcile(
    cycle_id: str,
    ours: Sequence[BookEntry],
    report: Sequence[ReportLine],
    known_elsewhere: Mapping[str, BookEntry] | None = None,
    already_flagged: Collection[str] = (),
) -> list[Mismatch]:
    """The mismatches between our settled payments of `cycle_id` and the rail's report.

    `known_elsewhere` holds what we know of report UETRs that are not among `ours` (a
    failed payment, or one settled in another cycle). `already_flagged` names payments
    whose cycle disagreement an earlier close reported (`cycle_differs`): their absence
    from this cycle's report is the same fact, so it is not reported twice.
    """
    known_elsewhere = known_elsewhere or {}
    mismatches: list[Mismatch] = []
    lines_by_uetr: dict[str, list[ReportLine]] = defaultdict(list)
    for line in report:
        if line.uetr is None:
            mismatches.append(Mismatch(
                "unknown_to_us", None, line.reference, line.currency, None, line.amount_minor, line.currency,
                None, line.settled_at,
                f"the rail settled {line.amount_minor} {line.currency} minor units without a UETR"
                f" (reference {line.reference or 'none'}); nothing of ours can match it"))
            continue
        lines_by_uetr[line.uetr].append(line)

    for uetr, lines in lines_by_uetr.items():
        if len(lines) > 1:
            total = sum(line.amount_minor for line in lines)
            mismatches.append(Mismatch(
                "duplicate_at_rail", uetr, lines[0].reference, lines[0].currency,
                None, total, lines[0].currency, None, lines[1].settled_at,
                f"the rail reports this UETR {len(lines)} times in the cycle"))

    ours_by_id = {entry.payment_id: entry for entry in ours}
    for entry in ours:
        lines = lines_by_uetr.get(entry.payment_id)
        if not lines:
            if entry.payment_id not in already_flagged:
                mismatches.append(Mismatch(
                    "missing_at_rail", entry.payment_id, None, entry.currency, entry.amount_minor, None, None,
                    entry.status, None, f"we settled it in {cycle_id}; the rail's report for the cycle does not list it"))
            continue
        line = lines[0]
        if line.amount_minor != entry.amount_minor or line.currency != entry.currency:
            mismatches.append(Mismatch(
                "amount_differs", entry.payment_id, line.reference, entry.currency, entry.amount_minor,
                line.amount_minor, line.currency, entry.status, line.settled_at,
                f"we settled {entry.amount_minor} {entry.currency}, the rail {line.amount_minor} {line.currency}"
                " (minor units)"))

    for uetr, lines in lines_by_uetr.items():
        if uetr in ours_by_id:
            continue
        line = lines[0]
        other = known_elsewhere.get(uetr)
        if other is None:
            mismatches.append(Mismatch(
                "unknown_to_us", uetr, line.reference, line.currency, None, line.amount_minor, line.currency,
                None, line.settled_at, "the rail settled a payment we have no record of"))
        elif other.status == "FAILED":
            mismatches.append(Mismatch(
                "settled_despite_failure", uetr, line.reference, other.currency, other.amount_minor,
                line.amount_minor, line.currency, "FAILED", line.settled_at,
                f"we recorded it FAILED ({other.reason_code or 'no reason'}); the rail settled it"))
        else:
            mismatches.append(Mismatch(
                "cycle_differs", uetr, line.reference, other.currency, other.amount_minor, line.amount_minor,
                line.currency, other.status, line.settled_at,
                f"we settled it in {other.cycle_id}; the rail settled it in the window of {cycle_id}"))

    mismatches.sort(key=lambda m: (MISMATCH_KINDS.index(m.kind), m.payment_id or "", m.rail_reference or ""))
    return mismatches


@dataclass(frozen=True, slots=True)
class Movement:
    """One settled payment as the net positions see it: who sent, who received."""

    debtor_agent: str
    creditor_agent: str
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class NetPosition:
    agent: str
    currency: str
    sent_count: int
    sent_minor: int
    received_count: int
    received_minor: int

    @property
    def net_minor(self) -> int:
        """Positive: the agent is owed money at settlement; negative: it owes."""
        return self.received_minor - self.sent_minor


def net_positions(movements: Iterable[Movement]) -> list[NetPosition]:
    """Multilateral net position per (participant agent, currency) of a cycle: each
    payment debits its debtor's agent and credits its creditor's agent. Over all agents
    of a currency the nets add up to zero, which is what a netting rail settles."""
    sent: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    received: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for move in movements:
        out = sent[(move.debtor_agent, move.currency)]
        out[0] += 1
        out[1] += move.amount_minor
        into = received[(move.creditor_agent, move.currency)]
        into[0] += 1
        into[1] += move.amount_minor
    positions = []
    for agent, currency in sorted(set(sent) | set(received), key=lambda k: (k[1], k[0])):
        sent_count, sent_minor = sent.get((agent, currency), (0, 0))
        received_count, received_minor = received.get((agent, currency), (0, 0))
        positions.append(NetPosition(agent, currency, sent_count, sent_minor, received_count, received_minor))
    return positions


def currency_totals(amounts: Iterable[tuple[str, int]]) -> list[dict]:
    """[{currency, count, amount_minor}] sorted by currency."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for currency, amount_minor in amounts:
        totals[currency][0] += 1
        totals[currency][1] += amount_minor
    return [{"currency": c, "count": n, "amount_minor": s} for c, (n, s) in sorted(totals.items())]
