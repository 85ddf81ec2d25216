"""The flow-health meter tracking keeps, and the intake's admission rule (pure, no broker)."""

from __future__ import annotations

import time

from orchestrator.flow_health import FlowHealth, FlowHealthMeter, admission
from orchestrator.stages import tracking
from orchestrator.stages.tracking import TrackingStore
from tests.unit.stage_fixtures import follow, received

RULE = {"max_in_flight": 100, "latency_fraction": 0.5, "stale_after_s": 5.0}


def health(in_flight=0, latency=None, lag=0.0, at=1000.0) -> FlowHealth:
    return FlowHealth(in_flight=in_flight, latency_p90_s=latency, tracking_lag_s=lag, measured_at=at)


def test_a_healthy_flow_admits():
    assert admission(health(10, 0.2), accepted_since_reading=5, time_limit_s=10, now=1000.2, **RULE) is None


def test_too_many_in_flight_sheds_counting_what_the_intake_accepted_since_the_reading():
    assert admission(health(90), accepted_since_reading=9, time_limit_s=10, now=1000.1, **RULE) is None
    shed = admission(health(90), accepted_since_reading=10, time_limit_s=10, now=1000.1, **RULE)
    assert shed is not None and "100 payments in flight" in shed.reason and shed.retry_after_s >= 1


def test_latency_past_the_share_of_the_rail_time_limit_sheds_with_a_retry_after():
    assert admission(health(latency=4.9), accepted_since_reading=0, time_limit_s=10, now=1000, **RULE) is None
    shed = admission(health(latency=5.1), accepted_since_reading=0, time_limit_s=10, now=1000, **RULE)
    assert shed is not None and "p90" in shed.reason and 1 <= shed.retry_after_s <= 30
    # A slower rail's tenant tolerates more before it refuses.
    assert admission(health(latency=5.1), accepted_since_reading=0, time_limit_s=20, now=1000, **RULE) is None


def test_tracking_that_is_far_behind_sheds_and_a_stale_reading_admits():
    assert admission(health(lag=6.0), accepted_since_reading=0, time_limit_s=10, now=1000, **RULE) is not None
    assert admission(health(in_flight=10_000, at=990.0), accepted_since_reading=0, time_limit_s=10, now=1000,
                     **RULE) is None
    assert admission(None, accepted_since_reading=0, time_limit_s=10, now=1000, **RULE) is None


def test_the_meter_counts_payments_in_flight_and_the_latency_of_those_that_ended():
    meter = FlowHealthMeter()
    for index in range(10):
        meter.received(f"p{index}", 100.0)
        meter.entered(f"p{index}", 100.5)  # the received time wins over the first-seen time
    for index in range(9):
        meter.left(f"p{index}", 101.0 + index / 10)
    meter.saw(101.8, recorded_at=102.0)
    reading = meter.reading(102.0)
    assert reading.in_flight == 1
    assert 1.7 <= reading.latency_p90_s <= 1.8
    assert abs(reading.tracking_lag_s - 0.2) < 1e-9
    assert meter.reading(200.0).latency_p90_s is None  # nothing ended in the window


def test_a_quiet_flow_is_not_behind_and_a_backlog_is():
    meter = FlowHealthMeter()
    meter.saw(100.0, recorded_at=100.1)
    # A minute without events: tracking is not a minute behind, it has nothing to record.
    assert abs(meter.reading(160.0).tracking_lag_s - 0.1) < 1e-9
    assert admission(meter.reading(160.0), accepted_since_reading=0, time_limit_s=10, now=160.0, **RULE) is None
    # An older event recorded late (a replayed dead letter) does not move the figure...
    meter.saw(40.0, recorded_at=160.0)
    assert abs(meter.reading(160.0).tracking_lag_s - 0.1) < 1e-9
    # ...but newer events that reach tracking 8 s after they occurred do, and shed.
    meter.saw(152.0, recorded_at=160.0)
    assert meter.reading(160.0).tracking_lag_s == 8.0
    assert admission(meter.reading(160.0), accepted_since_reading=0, time_limit_s=10, now=160.0, **RULE) is not None


def test_tracking_does_not_report_a_quiet_flow_as_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_FLOW_HEALTH_WRITE_INTERVAL_S", 0.0)  # a reading per batch
    store = TrackingStore(tmp_path / "tracking.sqlite")
    rec = received("emea")
    initiated = follow(rec, "PaymentInitiated", "initiation", {"rail_hint": "sepa_inst"}, 1)
    store.record([rec])
    lag_after_first = store.flow_health().tracking_lag_s
    # The same event again (a redelivery), as the only event of a batch, after the flow went quiet.
    time.sleep(0.05)
    store.record([rec])
    assert store.flow_health().tracking_lag_s == lag_after_first
    # A new event: its age when recorded (it occurred 1 s after the first).
    store.record([initiated])
    assert abs(lag_after_first - store.flow_health().tracking_lag_s - 1.0) < 0.5


def test_tracking_writes_a_reading_the_intake_can_read(tmp_path):
    store = TrackingStore(tmp_path / "tracking.sqlite")
    rec = received("emea")
    store.record([rec, follow(rec, "PaymentInitiated", "initiation", {"rail_hint": "sepa_inst"}, 1)])
    reader = TrackingStore(tmp_path / "tracking.sqlite", read_only=True)
    assert reader.flow_health().in_flight == 1
    # A restarted tracking starts from what its store says is in flight.
    assert TrackingStore(tmp_path / "tracking.sqlite").meter.in_flight == 1


def test_the_gate_reads_tracking_at_most_every_200_ms_and_counts_its_own_accepts():
    from orchestrator.intake.admission import AdmissionGate
    from orchestrator.settings import IntakeSettings
    from tests.unit.stage_fixtures import TENANTS

    clock = [1000.0]
    readings = []

    def read():
        readings.append(clock[0])
        return health(in_flight=95, at=clock[0])

    gate = AdmissionGate(IntakeSettings(admission_max_in_flight=100), read, clock=lambda: clock[0])
    assert gate.check(TENANTS["emea"]) is None
    gate.accepted(5)
    assert gate.check(TENANTS["emea"]) is not None  # 95 + 5 in flight: this one would be the 101st
    clock[0] += 0.25  # a new reading (which includes those accepts) starts the count again
    assert gate.check(TENANTS["emea"]) is None and len(readings) == 2 and gate.shed_total == 1
    assert AdmissionGate(IntakeSettings(admission_control=False), read).check(TENANTS["emea"], payments=500) is None
