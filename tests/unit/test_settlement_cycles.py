"""Settlement cycles: boundaries, the pure reconciliation, the cycle close driven through the
stage with an in-memory rail report, the cycle event codec, and tracking's view of it."""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.clearing_report import ReportUnavailable
from adapters.iso20022 import schemas
from adapters.iso20022.camt053 import MESSAGE_VERSION as CAMT053
from orchestrator.cycle_events import CYCLE_EVENT_TYPES, CycleEvent, CycleEventCodec, cycle_event
from orchestrator.events import EventCodec, UndecodableEvent
from orchestrator.reconciliation import BookEntry, Movement, ReportLine, net_positions, reconcile
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.settlement import SettlementStage, cycle_at, statement_path
from orchestrator.stages.tracking import TrackingStage, TrackingStore
from orchestrator.tenants import TenantConfig
from orchestrator.topics import TopicNamer
from tests.unit.stage_fixtures import TENANTS, T0, at, follow, received

SCHEMAS = REPO_ROOT / "schemas"
CODEC = EventCodec(SCHEMAS)
CYCLE_CODEC = CycleEventCodec(SCHEMAS)
CYCLE_S = 10
GRACE_S = 2.0


def short_cycles(tenant_id: str = "emea", cycle_s: int = CYCLE_S, grace_s: float = GRACE_S) -> dict[str, TenantConfig]:
    """One real tenant file with every rail on short cycles, as the tests' tenant dirs do."""
    raw = TENANTS[tenant_id].model_dump()
    for rail in raw["rails"]:
        rail["settlement"] = {**rail["settlement"], "cycle_length_s": cycle_s, "close_grace_s": grace_s}
    return {tenant_id: TenantConfig.model_validate(raw)}


class FakeReports:
    """The rail's report, in memory: what the rail settled, filtered by window as the simulator does."""

    def __init__(self) -> None:
        self.lines: dict[str, list[ReportLine]] = {}
        self.down = False
        self.calls: list[tuple[str, datetime, datetime]] = []

    def add(self, rail: str, line: ReportLine) -> None:
        self.lines.setdefault(rail, []).append(line)

    def settle(self, executed, **changes) -> ReportLine:
        """The rail's line for an executed payment (optionally falsified by `changes`)."""
        payment = executed.payment
        line = ReportLine(payment.payment_id, payment.amount_minor, payment.currency, executed.payload["accepted_at"],
                          payment.end_to_end_id, payment.payment_id.replace("-", ""))
        line = replace(line, **changes)
        self.add(executed.payload["rail"], line)
        return line

    def fetch(self, rail, start, end):
        self.calls.append((rail.name, start, end))
        if self.down:
            raise ReportUnavailable("simulated: rail report unreachable")
        return [line for line in self.lines.get(rail.name, []) if start <= line.settled_at < end]

    def close(self) -> None:
        pass


def new_stage(tmp_path, reports: FakeReports | None = None, tenants=None) -> SettlementStage:
    return SettlementStage(tenants or short_cycles(), "test", tmp_path, CODEC, cycle_codec=CYCLE_CODEC,
                           reports=reports or FakeReports())


def executed(accepted_s: float, index: int = 0, *, amount: str | None = None):
    """A PaymentExecuted of emea: index 0 is SEPA Instant (EUR), 1 Faster Payments (GBP)."""
    rail = ("sepa_inst", "fps")[index]
    cause = received("emea", index, amount=amount)
    return follow(cause, "PaymentExecuted", "execution", {"rail": rail, "clearing_message_id": "M",
                                                          "clearing_status": "ACSC", "accepted_at": at(accepted_s)},
                  accepted_s)


def failed(index: int = 0):
    cause = received("emea", index)
    return follow(cause, "PaymentFailed", "execution", {
        "rail": ("sepa_inst", "fps")[index], "reason_code": "clearing_timeout", "iso_reason_code": "AB06",
        "reason_detail": "no answer in time", "clearing_message_id": "M"}, 1)


def close_all(stage: SettlementStage, now: datetime) -> list[CycleEvent]:
    """Tick until no cycle is due any more, confirming each tick's outputs like the runtime."""
    outputs: list[CycleEvent] = []
    for _ in range(50):
        emitted = stage.tick(now)
        if not emitted:
            return outputs
        stage.published(emitted)
        outputs.extend(emitted)
    raise AssertionError("cycles kept closing")


def exceptions(outputs) -> list[CycleEvent]:
    return [o for o in outputs if o.event_type == "ReconciliationException"]


def closes(outputs) -> dict[str, CycleEvent]:
    return {o.cycle_id: o for o in outputs if o.event_type == "CycleClosed"}


# -- cycle boundaries ------------------------------------------------------------------

def test_cycles_gross_per_business_day_and_net_per_window():
    sepa, fps = TENANTS["emea"].rails_by_name["sepa_inst"], TENANTS["emea"].rails_by_name["fps"]
    moment = datetime(2026, 11, 27, 10, 0, 59, 999_999, tzinfo=UTC)
    day = cycle_at(sepa, moment)
    assert (day.cycle_id, day.start, day.end) == (
        "sepa_inst:2026-11-27:rtgs", datetime(2026, 11, 27, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC))
    assert cycle_at(fps, moment).cycle_id == "fps:20261127T100000:net60"
    # The end is exclusive: the first instant of the next window belongs to the next cycle.
    assert cycle_at(fps, datetime(2026, 11, 27, 10, 1, tzinfo=UTC)).cycle_id == "fps:20261127T100100:net60"
    assert cycle_at(sepa, datetime(2026, 11, 28, tzinfo=UTC)).cycle_id == "sepa_inst:2026-11-28:rtgs"
    short = short_cycles()["emea"].rails_by_name
    assert cycle_at(short["sepa_inst"], moment).cycle_id == "sepa_inst:20261127T100050:rtgs10"
    assert cycle_at(short["fps"], moment).cycle_id == "fps:20261127T100050:net10"
    # Times in another zone are the same instants.
    assert cycle_at(fps, moment.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+05:30").tzinfo)) == \
        cycle_at(fps, moment)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       st.sampled_from([1, 2, 7, 10, 60, 300, 3_600, 86_400]), st.sampled_from(["rtgs", "deferred_net"]))
def test_windows_tile_time_and_millisecond_truncation_never_changes_the_cycle(moment, length_s, mode):
    raw = TENANTS["emea"].rails_by_name["fps"].model_dump()
    raw["settlement"] = {"mode": mode, "cycle_length_s": length_s}
    rail = type(TENANTS["emea"].rails_by_name["fps"]).model_validate(raw)
    cycle = cycle_at(rail, moment)
    assert cycle.start <= moment < cycle.end
    assert (cycle.end - cycle.start).total_seconds() == length_s
    assert cycle_at(rail, cycle.start) == cycle
    following = cycle_at(rail, cycle.end)
    assert following.start == cycle.end and following.cycle_id != cycle.cycle_id
    assert following.sequence_number == cycle.sequence_number + 1
    # The rail reports acceptance times truncated to milliseconds (pacs.002 CreDtTm):
    # that must never move a payment into another cycle than the report's window.
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert cycle_at(rail, truncated) == cycle


# -- reconciliation (pure) ---------------------------------------------------------------

def book(n: int, seed: int = 1) -> list[BookEntry]:
    rng = random.Random(seed)
    return [BookEntry(f"00000000-0000-4000-8000-{i:012d}", rng.randint(1, 10**9), rng.choice(["EUR", "GBP"]),
                      "SETTLED", "c") for i in range(n)]


def report_of(entries: list[BookEntry]) -> list[ReportLine]:
    return [ReportLine(e.payment_id, e.amount_minor, e.currency, at(i % 10), f"E2E-{i}", e.payment_id[-12:])
            for i, e in enumerate(entries)]


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.randoms(use_true_random=False))
def test_a_report_that_agrees_gives_no_exception_whatever_its_order(n, rng):
    ours = book(n, seed=n)
    lines = report_of(ours)
    rng.shuffle(lines)
    assert reconcile("c", ours, lines) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=10**6),
       st.sampled_from(["omit", "amount", "currency", "extra", "duplicate", "failed", "other_cycle"]))
def test_one_discrepancy_gives_exactly_one_exception_of_its_kind(n, pick, change):
    ours = book(n, seed=n)
    lines = report_of(ours)
    target = ours[pick % n]
    index = next(i for i, line in enumerate(lines) if line.uetr == target.payment_id)
    elsewhere: dict[str, BookEntry] = {}
    stranger = "11111111-1111-4111-8111-111111111111"
    if change == "omit":
        del lines[index]
        expected = ("missing_at_rail", target.payment_id)
    elif change == "amount":
        lines[index] = replace(lines[index], amount_minor=target.amount_minor + 1)
        expected = ("amount_differs", target.payment_id)
    elif change == "currency":
        lines[index] = replace(lines[index], currency="USD")
        expected = ("amount_differs", target.payment_id)
    elif change == "duplicate":
        lines.append(lines[index])
        expected = ("duplicate_at_rail", target.payment_id)
    else:
        lines.append(ReportLine(stranger, 500, "EUR", at(3), "X", "X"))
        if change == "failed":
            elsewhere[stranger] = BookEntry(stranger, 500, "EUR", "FAILED", None, "clearing_timeout")
            expected = ("settled_despite_failure", stranger)
        elif change == "other_cycle":
            elsewhere[stranger] = BookEntry(stranger, 500, "EUR", "SETTLED", "c-before")
            expected = ("cycle_differs", stranger)
        else:
            expected = ("unknown_to_us", stranger)
    [mismatch] = reconcile("c", ours, lines, elsewhere)
    assert (mismatch.kind, mismatch.payment_id) == expected


def test_mismatches_carry_both_sides_exactly():
    ours = [BookEntry("a", 12_550, "EUR", "SETTLED", "c"), BookEntry("b", 700, "EUR", "SETTLED", "c")]
    lines = [ReportLine("a", 12_551, "EUR", at(1), "E2E-A", "TXA"),
             ReportLine(None, 42, "EUR", at(2), "E2E-Z", None),
             ReportLine("f", 90, "EUR", at(3), "E2E-F", "TXF")]
    found = reconcile("c", ours, lines, {"f": BookEntry("f", 90, "EUR", "FAILED", None, "clearing_timeout")})
    assert [(m.kind, m.payment_id) for m in found] == [
        ("missing_at_rail", "b"), ("unknown_to_us", None), ("settled_despite_failure", "f"), ("amount_differs", "a")]
    missing, unknown, despite, differs = found
    assert (missing.our_amount_minor, missing.rail_amount_minor, missing.our_status) == (700, None, "SETTLED")
    assert (unknown.rail_reference, unknown.rail_amount_minor, unknown.our_amount_minor) == ("E2E-Z", 42, None)
    assert (despite.our_status, despite.rail_settled_at) == ("FAILED", at(3)) and "clearing_timeout" in despite.detail
    assert (differs.our_amount_minor, differs.rail_amount_minor, differs.rail_reference) == (12_550, 12_551, "TXA")
    # A cycle disagreement reported by an earlier close is not reported again as missing.
    assert reconcile("c", ours[1:], [], already_flagged={"b"}) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["AAA", "BBB", "CCC", "DDD"]), st.sampled_from(["AAA", "BBB", "CCC"]),
                          st.sampled_from(["EUR", "GBP"]), st.integers(min_value=1, max_value=10**12)), max_size=40))
def test_net_positions_add_up_to_zero_per_currency_and_keep_every_unit(moves):
    positions = net_positions(Movement(*move) for move in moves)
    for currency in ("EUR", "GBP"):
        of_currency = [p for p in positions if p.currency == currency]
        assert sum(p.net_minor for p in of_currency) == 0
        sent = sum(m[3] for m in moves if m[2] == currency)
        assert sum(p.sent_minor for p in of_currency) == sum(p.received_minor for p in of_currency) == sent
        assert sum(p.sent_count for p in of_currency) == sum(1 for m in moves if m[2] == currency)


# -- the stage: assignment, close, statement, exceptions ----------------------------------

def test_settlement_is_idempotent_per_payment(tmp_path):
    stage = new_stage(tmp_path)
    event = executed(1)
    [settled] = stage.handle_batch([event], at(2))
    assert stage.handle_batch([event], at(3)) == [settled]
    assert settled.payload["cycle_id"] == "sepa_inst:20261127T100000:rtgs10"
    assert stage.handle_batch([failed()], at(3)) == []  # recorded, no output


def test_a_cycle_closes_after_its_grace_with_totals_net_positions_and_a_valid_statement(tmp_path):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    assert stage.tick(at(0)) == []
    events = [executed(1), executed(2, amount="10.01"), executed(3, index=1)]
    stage.handle_batch(events, at(4))
    for event in events:
        reports.settle(event)
    assert stage.tick(at(CYCLE_S + GRACE_S - 0.5)) == []  # the grace has not passed yet
    outputs = close_all(stage, at(CYCLE_S + GRACE_S))
    assert exceptions(outputs) == []
    closed = closes(outputs)
    assert set(closed) == {"sepa_inst:20261127T100000:rtgs10", "fps:20261127T100000:net10"}
    sepa = closed["sepa_inst:20261127T100000:rtgs10"].payload
    amounts = [events[0].payment.amount_minor, 1001]
    assert (sepa["payments"], sepa["rail_transactions"], sepa["exceptions"]) == (2, 2, 0)
    assert sepa["totals"] == [{"currency": "EUR", "count": 2, "amount_minor": sum(amounts)}]
    assert sepa["totals"] == sepa["rail_totals"]
    assert (sepa["window_start"], sepa["window_end"]) == (T0, at(CYCLE_S))
    positions = {(p["agent"], p["currency"]): p for p in sepa["net_positions"]}
    assert positions[("COBADEFFXXX", "EUR")]["net_minor"] == -sum(amounts)
    assert positions[("PSSTFRPPXXX", "EUR")]["net_minor"] == sum(amounts)
    assert positions[("PSSTFRPPXXX", "EUR")]["received_count"] == 2

    path = statement_path(tmp_path, "emea", "sepa_inst:20261127T100000:rtgs10")
    document = path.read_bytes()
    assert hashlib.sha256(document).hexdigest() == sepa["statement_sha256"]
    root = etree.fromstring(document)
    schemas.validate(root, CAMT053)
    ns = {"d": schemas.namespace_of(CAMT053)}
    assert root.xpath("//d:Stmt/d:Id/text()", namespaces=ns) == [sepa["statement_id"] + "EUR"]
    assert sorted(root.xpath("//d:UETR/text()", namespaces=ns)) == sorted(e.payment_id for e in events[:2])
    # Confirmed outputs are not emitted again; nothing else is due.
    assert stage.tick(at(CYCLE_S + GRACE_S + 1)) == []


def test_unconfirmed_close_outputs_are_re_emitted_byte_for_byte_even_after_a_restart(tmp_path):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    event = executed(1)
    stage.handle_batch([event], at(2))
    reports.settle(event, amount_minor=event.payment.amount_minor + 5)
    first = stage.tick(at(CYCLE_S + GRACE_S))
    assert {o.event_type for o in first} == {"CycleClosed", "ReconciliationException"}
    calls = len(reports.calls)
    again = stage.tick(at(CYCLE_S + GRACE_S + 0.5))  # not confirmed: same events again
    assert [(o.event_id, o.encoded) for o in again] == [(o.event_id, o.encoded) for o in first]
    assert len(reports.calls) == calls  # re-emitted from the store, not closed again
    stage.close()
    restarted = new_stage(tmp_path, reports)
    after_restart = restarted.tick(at(CYCLE_S + GRACE_S + 1))
    assert [(o.event_id, o.encoded) for o in after_restart] == [(o.event_id, o.encoded) for o in first]
    restarted.published(after_restart)
    assert restarted.tick(at(CYCLE_S + GRACE_S + 2)) == []


@pytest.mark.parametrize("discrepancy", ["omit", "amount", "extra", "duplicate", "failed_but_settled"])
def test_a_cycle_with_one_injected_rail_discrepancy_gives_exactly_that_exception(tmp_path, discrepancy):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    events = [executed(1 + i) for i in range(4)]
    stage.handle_batch(events, at(6))
    target = events[2]
    for event in events:
        if event is target and discrepancy == "omit":
            continue
        if event is target and discrepancy == "amount":
            reports.settle(event, amount_minor=event.payment.amount_minor - 1)
            continue
        reports.settle(event)
    if discrepancy == "duplicate":
        reports.settle(target)
    stranger = failed()
    if discrepancy == "failed_but_settled":
        stage.handle_batch([stranger], at(6))
    if discrepancy in ("extra", "failed_but_settled"):
        reports.add("sepa_inst", ReportLine(stranger.payment_id, 777, "EUR", at(5), "E2E-X", "TX-X"))
    outputs = close_all(stage, at(CYCLE_S + GRACE_S))
    [exception] = exceptions(outputs)
    expected = {"omit": ("missing_at_rail", target.payment_id), "amount": ("amount_differs", target.payment_id),
                "extra": ("unknown_to_us", stranger.payment_id),
                "duplicate": ("duplicate_at_rail", target.payment_id),
                "failed_but_settled": ("settled_despite_failure", stranger.payment_id)}[discrepancy]
    assert (exception.payload["kind"], exception.payload["payment_id"]) == expected
    assert exception.cycle_id == "sepa_inst:20261127T100000:rtgs10" == exception.payload["cycle_id"]
    assert exception.tenant_id == "emea"
    assert closes(outputs)["sepa_inst:20261127T100000:rtgs10"].payload["exceptions"] == 1
    # The exception precedes its cycle's close in the output order (and so on the partition).
    order = [o.event_type for o in outputs if o.cycle_id == exception.cycle_id]
    assert order == ["ReconciliationException", "CycleClosed"]


def test_an_unreachable_report_delays_the_close_with_backoff_and_never_skips_it(tmp_path, caplog):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    event = executed(1)
    stage.handle_batch([event], at(2))
    reports.settle(event)
    reports.down = True
    due = at(CYCLE_S + GRACE_S)
    assert stage.tick(due) == []
    # One failed read per rail and tick, even with two rails' cycles due.
    assert sorted(rail for rail, _, _ in reports.calls) == ["fps", "sepa_inst"]
    assert "report is unavailable" in caplog.text and "sepa_inst:20261127T100000:rtgs10" in str(
        [getattr(r, "cycle_id", None) for r in caplog.records])
    assert stage.tick(due + timedelta(seconds=0.5)) == []  # backing off: not asked again yet
    assert len(reports.calls) == 2
    assert stage.tick(due + timedelta(seconds=1.1)) == []  # asked again, still down
    assert len(reports.calls) == 4
    reports.down = False
    assert stage.tick(due + timedelta(seconds=2.5)) == []  # second backoff is 2 s
    outputs = close_all(stage, due + timedelta(seconds=3.2))
    assert set(closes(outputs)) == {"sepa_inst:20261127T100000:rtgs10", "fps:20261127T100000:net10"}
    assert exceptions(outputs) == []


def test_a_backlog_on_a_down_rail_costs_one_read_per_rail_and_backoff_period(tmp_path):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    reports.down = True
    late = at(6 * CYCLE_S + GRACE_S)  # six cycles of each rail are due
    assert stage.tick(late) == []
    assert sorted(rail for rail, _, _ in reports.calls) == ["fps", "sepa_inst"]
    assert stage.tick(late + timedelta(seconds=0.5)) == []
    assert len(reports.calls) == 2
    reports.down = False
    outputs = close_all(stage, late + timedelta(seconds=1.1))
    assert len(closes(outputs)) == 12  # all of them, oldest first, none skipped
    assert [o.payload["window_start"] for o in outputs if o.payload["rail"] == "fps"] == [
        at(s) for s in range(0, 6 * CYCLE_S, CYCLE_S)]


def test_the_clock_closes_cycles_without_payments_and_finds_what_the_rail_settled_alone(tmp_path):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    stray = "22222222-2222-4222-8222-222222222222"
    reports.add("fps", ReportLine(stray, 1_000, "GBP", at(25), "E2E-S", "TX-S"))
    outputs = close_all(stage, at(4 * CYCLE_S + GRACE_S))
    closed = closes(outputs)
    assert sorted(closed) == sorted(f"{rail}:20261127T1000{s:02d}:{kind}10"
                                    for rail, kind in (("sepa_inst", "rtgs"), ("fps", "net")) for s in (0, 10, 20, 30))
    [exception] = exceptions(outputs)
    assert (exception.cycle_id, exception.payload["kind"], exception.payload["payment_id"]) == (
        "fps:20261127T100020:net10", "unknown_to_us", stray)
    assert exception.payload["rail_amount_minor"] == 1_000 and exception.payload["our_amount_minor"] is None


def test_a_rail_settling_in_another_window_is_one_cycle_differs_not_two_exceptions(tmp_path):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    event = executed(12)  # we say cycle 10..20
    stage.handle_batch([event], at(13))
    reports.settle(event, settled_at=at(9))  # the rail says cycle 0..10
    outputs = close_all(stage, at(3 * CYCLE_S + GRACE_S))
    [exception] = exceptions(outputs)
    assert (exception.payload["kind"], exception.cycle_id) == ("cycle_differs", "sepa_inst:20261127T100000:rtgs10")


def test_an_execution_after_its_cycle_closed_still_settles_and_is_logged(tmp_path, caplog):
    stage = new_stage(tmp_path)
    stage.tick(at(0))
    close_all(stage, at(CYCLE_S + GRACE_S))
    late = executed(5)
    [settled] = stage.handle_batch([late], at(CYCLE_S + GRACE_S + 1))
    assert settled.payload["cycle_id"] == "sepa_inst:20261127T100000:rtgs10"
    assert "after its cycle closed" in caplog.text
    assert stage.tick(at(CYCLE_S + GRACE_S + 2)) == []  # a closed cycle is never closed again


def test_logs_of_a_close_carry_tenant_and_cycle_but_no_account_data(tmp_path, caplog):
    reports = FakeReports()
    stage = new_stage(tmp_path, reports)
    stage.tick(at(0))
    event = executed(1)
    stage.handle_batch([event], at(2))
    caplog.set_level("INFO", logger="payorch.settlement")
    close_all(stage, at(CYCLE_S + GRACE_S))  # the rail never settled it: missing_at_rail
    records = [r for r in caplog.records if r.name == "payorch.settlement"]
    assert {getattr(r, "tenant_id", None) for r in records} == {"emea"}
    assert all(getattr(r, "cycle_id", None) for r in records)
    text = caplog.text + str([r.__dict__ for r in records])
    for secret in (event.payment.debtor.account.iban, event.payment.creditor.account.iban,
                   event.payment.debtor.name, event.payment.creditor.name):
        assert secret not in text


# -- cycle events on the wire ------------------------------------------------------------

def sample_cycle_events() -> list[CycleEvent]:
    closed = cycle_event("emea", "fps:20261127T100000:net10", "CycleClosed", {
        "cycle_id": "fps:20261127T100000:net10", "rail": "fps", "settlement_mode": "deferred_net",
        "settlement_date": "2026-11-27", "window_start": T0, "window_end": at(10), "payments": 2,
        "rail_transactions": 2, "exceptions": 1,
        "totals": [{"currency": "GBP", "count": 2, "amount_minor": 9_007_199_254_740_993}],
        "rail_totals": [{"currency": "GBP", "count": 2, "amount_minor": 9_007_199_254_740_993}],
        "net_positions": [{"agent": "NWBKGB2LXXX", "currency": "GBP", "sent_count": 2,
                           "sent_minor": 9_007_199_254_740_993, "received_count": 0, "received_minor": 0,
                           "net_minor": -9_007_199_254_740_993}],
        "statement_id": "S" + "0" * 28, "statement_sha256": "ab" * 32}, discriminator="", occurred_at=at(12),
        region="eu-west-1")
    exception = cycle_event("emea", "fps:20261127T100000:net10", "ReconciliationException", {
        "cycle_id": "fps:20261127T100000:net10", "rail": "fps", "kind": "amount_differs",
        "payment_id": "00000000-0000-4000-8000-000000000001", "rail_reference": "TX1", "currency": "GBP",
        "our_amount_minor": 7520, "rail_amount_minor": 7521, "rail_currency": "GBP", "our_status": "SETTLED",
        "rail_settled_at": at(3), "detail": "differs"}, discriminator="k", occurred_at=at(12), region="eu-west-1")
    return [closed, exception]


def test_cycle_events_round_trip_exactly_and_name_their_writer_schema():
    for event in sample_cycle_events():
        encoded = CYCLE_CODEC.encode(event)
        assert encoded.encoded[:2] == b"\xc3\x01" and CYCLE_CODEC.knows(encoded.encoded)
        decoded = CYCLE_CODEC.decode(encoded.encoded)
        assert decoded == event  # payload included: money as exact integers, times aware
        assert decoded.schema_version == CYCLE_CODEC.writer.version and decoded.encoded == encoded.encoded
        # The payment codec refuses the other family cleanly (a poison message, not a crash).
        with pytest.raises(UndecodableEvent):
            CODEC.decode(encoded.encoded)
    payment_bytes = CODEC.encode(executed(1))
    assert not CYCLE_CODEC.knows(payment_bytes)
    with pytest.raises(UndecodableEvent):
        CYCLE_CODEC.decode(payment_bytes)


def test_cycle_event_ids_are_derived_so_a_repeated_close_duplicates_harmlessly():
    first, second = sample_cycle_events(), sample_cycle_events()
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert first[0].event_id != first[1].event_id
    other = cycle_event("na", first[0].cycle_id, "CycleClosed", first[0].payload, discriminator="",
                        occurred_at=at(12), region="x")
    assert other.event_id != first[0].event_id  # tenants never share an event id
    with pytest.raises(ValueError):
        cycle_event("emea", "c", "PaymentSettled", {}, discriminator="", occurred_at=at(1), region="x")


@pytest.mark.parametrize("data", [b"", b"junk", b"\xc3\x01" + b"\x00" * 8, b"\xc3\x01" + b"\x00" * 8 + b"\xff" * 5])
def test_garbage_is_an_undecodable_cycle_event(data):
    with pytest.raises(UndecodableEvent):
        CYCLE_CODEC.decode(data)


def test_a_payload_that_does_not_match_its_event_type_is_refused():
    event = CYCLE_CODEC.encode(sample_cycle_events()[1])
    header, writer = event.encoded[:10], CYCLE_CODEC.schema(CYCLE_CODEC.writer.version)
    record = fastavro.schemaless_reader(io.BytesIO(event.encoded[10:]), writer, writer,
                                        return_record_name=True)
    record["event_type"] = "CycleClosed"
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    with pytest.raises(UndecodableEvent, match="does not match"):
        CYCLE_CODEC.decode(header + buffer.getvalue())


def test_kafka_record_goes_to_the_cycles_topic_keyed_by_cycle_with_runtime_headers():
    event = CYCLE_CODEC.encode(sample_cycle_events()[1])
    topic, key, value, headers = event.kafka_record(TopicNamer())
    assert (topic, key, value) == ("emea.payments.cycles.v1", b"fps:20261127T100000:net10", event.encoded)
    assert dict(headers) == {"event_type": b"ReconciliationException", "schema_version": b"1",
                             "correlation_id": b"fps:20261127T100000:net10", "tenant_id": b"emea",
                             "traceparent": event.traceparent.encode()}
    assert event.log_context()["payment_id"] == "00000000-0000-4000-8000-000000000001"
    with pytest.raises(ValueError):
        sample_cycle_events()[0].kafka_record(TopicNamer())  # never encoded


def test_cycle_schema_family_keeps_money_exact_and_evolves_only_by_defaulted_additions():
    def walk(node, path=""):
        if isinstance(node, dict):
            if "name" in node and "type" in node:
                yield path + node["name"], node
            for value in node.values():
                yield from walk(value, path)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, path)

    versions = CYCLE_CODEC.versions
    documents = {v: json.loads((SCHEMAS / f"settlement_cycle_event.v{v}.avsc").read_text()) for v in versions}
    for version, document in documents.items():
        assert "float" not in json.dumps(document) and "double" not in json.dumps(document)
        money = [(name, field["type"]) for name, field in walk(document) if name.endswith("_minor")]
        assert money, "the schema has amount fields"
        for name, avro_type in money:
            assert avro_type in ("long", ["null", "long"]), f"v{version} {name} is {avro_type}"
    for older, newer in zip(versions, versions[1:]):
        old_fields = dict(walk(documents[older]))
        new_fields = dict(walk(documents[newer]))
        assert not set(old_fields) - set(new_fields), f"v{newer} removed fields"
        for name in set(new_fields) - set(old_fields):
            assert "default" in new_fields[name], f"v{newer} added {name} without a default"
    assert {b["name"] for b in documents[versions[-1]]["fields"][-1]["type"]} == CYCLE_EVENT_TYPES


# -- tracking: cycles and exceptions -------------------------------------------------------

def test_tracking_decodes_both_families_and_shows_exceptions_with_the_payment(tmp_path):
    stage = TrackingStage(TENANTS, "test", tmp_path, codec=CODEC, cycle_codec=CYCLE_CODEC)
    reports = FakeReports()
    settlement = new_stage(tmp_path / "settlement", reports)
    settlement.tick(at(0))
    good, bad = executed(1), executed(2)
    settled = settlement.handle_batch([good, bad], at(3))
    reports.settle(good)
    reports.settle(bad, amount_minor=bad.payment.amount_minor * 10)
    outputs = close_all(settlement, at(CYCLE_S + GRACE_S))

    # The runtime hands tracking raw bytes with whatever header; tracking picks the codec.
    wire = [CODEC.encode(e) for e in [good, bad, *settled]] + [o.encoded for o in outputs]
    decoded = [stage.decode(value, None) for value in wire]
    assert [type(d).__name__ for d in decoded].count("CycleEvent") == len(outputs)
    stage.handle_batch(decoded, at(20))
    stage.handle_batch(decoded, at(21))  # a redelivery changes nothing

    store = stage.store
    record = store.get(bad.payment_id)
    [exception] = record["exceptions"]
    assert (exception["kind"], exception["cycle_id"]) == ("amount_differs", "sepa_inst:20261127T100000:rtgs10")
    assert (exception["our_amount_minor"], exception["rail_amount_minor"]) == (
        bad.payment.amount_minor, bad.payment.amount_minor * 10)
    assert store.get(good.payment_id)["exceptions"] == []
    # Exceptions are not timeline entries: the timeline stays the payment's own events.
    assert {t["correlation_id"] for t in record["timeline"]} == {bad.payment_id}
    assert record["status"] == "SETTLED"

    cycle = store.cycle("emea", "sepa_inst:20261127T100000:rtgs10")
    assert (cycle["payment_count"], cycle["exception_count"]) == (2, 1)
    assert [e["payment_id"] for e in cycle["exceptions"]] == [bad.payment_id]
    assert {c["cycle_id"] for c in store.cycles("emea")} == set(closes(outputs))
    assert store.cycles("emea", rail="fps")[0]["rail"] == "fps"
    # Another tenant sees none of it.
    assert store.cycle("na", "sepa_inst:20261127T100000:rtgs10") is None and store.cycles("na") == []
    assert store.payment_exceptions("na", bad.payment_id) == []


def test_a_read_only_store_of_an_older_tracking_version_answers_without_exceptions(tmp_path):
    store = TrackingStore(tmp_path / "tracking.sqlite")
    event = received("emea")
    store.record([event])
    store.db.execute("DROP TABLE reconciliation_exceptions")
    reader = TrackingStore(tmp_path / "tracking.sqlite", read_only=True)
    assert reader.get(event.payment_id)["exceptions"] == []
