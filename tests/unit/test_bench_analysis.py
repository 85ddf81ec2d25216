"""The benchmark harness's arithmetic and its traffic, on made-up records (no stack)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from orchestrator.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "perf"))

import bench_analysis  # noqa: E402
from bench_safety import NotLoopback, require_loopback_bootstrap, require_loopback_url  # noqa: E402
from bench_traffic import SPECIAL_EVERY, TrafficMix, load_default_tenants  # noqa: E402


def _record(status: str, events: list[tuple[str, str, str]]) -> dict:
    return {"status": status, "reason": None,
            "timeline": [{"stage": stage, "event_type": event, "occurred_at": at} for stage, event, at in events]}


def _write(path: Path, records: list[dict | None]) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"payment_id": str(i), "record": r}) + b"\n" for i, r in enumerate(records)))
    return path


SETTLED = _record("SETTLED", [
    ("intake", "PaymentReceived", "2026-01-01T00:00:00.000+00:00"),
    ("initiation", "PaymentInitiated", "2026-01-01T00:00:00.100+00:00"),
    ("fraud", "FraudScored", "2026-01-01T00:00:00.250+00:00"),
    ("sanctions", "SanctionsScreened", "2026-01-01T00:00:00.200+00:00"),
    ("settlement", "PaymentSettled", "2026-01-01T00:00:00.400+00:00"),
    # After the terminal event: not part of the end-to-end time.
    ("ledger", "FundsPosted", "2026-01-01T00:00:01.000+00:00"),
])


def test_stage_times_add_up_to_the_end_to_end_latency(tmp_path: Path) -> None:
    outcomes = bench_analysis.read_outcomes(_write(tmp_path / "r.jsonl", [SETTLED]))

    assert dict(outcomes.stage_us) == {"initiation": 100_000, "sanctions": 100_000, "fraud": 50_000,
                                       "settlement": 150_000}
    assert outcomes.end_to_end_us.get_max_value() == pytest.approx(400_000, rel=1e-3)
    shares = bench_analysis.stage_shares(outcomes)
    assert sum(s["share"] for s in shares.values()) == pytest.approx(1.0)


def test_held_is_an_outcome_and_a_missing_or_open_payment_is_unfinished(tmp_path: Path) -> None:
    held = _record("HELD", [("intake", "PaymentReceived", "2026-01-01T00:00:00+00:00"),
                            ("fraud", "PaymentHeld", "2026-01-01T00:00:01+00:00")])
    open_payment = _record("ROUTED", [("intake", "PaymentReceived", "2026-01-01T00:00:00+00:00")])

    outcomes = bench_analysis.read_outcomes(_write(tmp_path / "r.jsonl", [SETTLED, held, open_payment, None]))

    assert outcomes.counts == {"settled": 1, "held": 1, "unfinished": 2}
    assert outcomes.ended == 2
    assert outcomes.end_to_end_us.get_total_count() == 1  # a hold has no end-to-end latency


def test_sustained_rate_is_the_pace_of_outcomes() -> None:
    outcomes = bench_analysis.Outcomes(outcome_times_us=[i * 10_000 for i in range(1_001)])  # 100 per second

    assert outcomes.sustained_rate() == pytest.approx(100.0, rel=0.01)


def test_the_knee_is_the_top_of_the_leading_run_of_good_steps() -> None:
    steps = [{"offered_rate": rate, "meets_knee_rule": ok}
             for rate, ok in ((100, True), (250, True), (500, False), (1000, True))]

    assert bench_analysis.knee(steps) == 250
    assert bench_analysis.knee([{"offered_rate": 100, "meets_knee_rule": False}]) is None


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "https://127.0.0.1:8080", "http://example.com"])
def test_load_goes_to_loopback_only(url: str) -> None:
    with pytest.raises(NotLoopback):
        require_loopback_url(url)
    with pytest.raises(NotLoopback):
        require_loopback_bootstrap("127.0.0.1:9092,10.0.0.2:9092")
    assert require_loopback_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_traffic_covers_every_tenant_and_rail_with_some_that_must_not_settle() -> None:
    mix = TrafficMix(load_default_tenants(REPO_ROOT))
    payments = [mix.payment(i) for i in range(4 * SPECIAL_EVERY)]
    tenants = load_default_tenants(REPO_ROOT)
    watchlisted = {entry.name for t in tenants.values() for entry in t.sanctions.watchlist}

    assert {(tenant, body["currency"]) for tenant, body in payments} == {
        (tenant, currency) for tenant, config in tenants.items() for currency in config.currencies}
    assert len({body["debtor"]["name"] for _, body in payments}) > 900
    assert sum(body["debtor"]["name"] in watchlisted for _, body in payments) == 4
    assert sum(body["amount"] == f"{tenants[t].fraud.review_amount + 1:.2f}" for t, body in payments) == 4


def test_tenant_files_for_a_stack_are_the_originals_and_renamed_copies(tmp_path):
    from bench_stack import write_tenant_files

    from orchestrator.tenants import load_tenants

    folder = write_tenant_files(tmp_path / "tenants", 10)
    tenants = load_tenants(folder)  # every copy is a valid tenant file, named after its id
    assert sorted(tenants) == ["apac", "apac2", "apac3", "emea", "emea2", "emea3", "latam", "latam2", "na", "na2"]
    original, copy = tenants["emea"], tenants["emea3"]
    assert copy.currencies == original.currencies and copy.funding == original.funding
    # The same rails under other names: the clearing simulator serves a rail name once.
    assert [rail.name for rail in copy.rails] == [f"{rail.name}3" for rail in original.rails]
    assert [rail.clearing.endpoint_path for rail in copy.rails] == [
        rail.clearing.endpoint_path.replace(f"/{rail.name}/", f"/{rail.name}3/") for rail in original.rails]
    assert [rail.model_copy(update={"name": "x", "clearing": None}) for rail in copy.rails] == [
        rail.model_copy(update={"name": "x", "clearing": None}) for rail in original.rails]
    rail_names = [rail.name for tenant in tenants.values() for rail in tenant.rails]
    assert len(rail_names) == len(set(rail_names))
    assert (folder / "emea.yaml").read_bytes() == (REPO_ROOT / "tenants" / "emea.yaml").read_bytes()


@pytest.mark.parametrize("total", [3, 65])
def test_tenant_files_outside_the_bounds_are_refused(tmp_path, total):
    from bench_stack import write_tenant_files

    with pytest.raises(ValueError, match="tenant files must be between 4 and 64"):
        write_tenant_files(tmp_path / "tenants", total)


def test_the_bench_refuses_tenant_files_for_a_running_stack_or_out_of_bounds(capsys):
    import bench

    with pytest.raises(SystemExit):
        bench.parse_args(["--tenant-files", "16", "--url", "http://127.0.0.1:8080"])
    assert "--tenant-files starts an own stack" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--tenant-files", "2"])
    assert "--tenant-files must be in [4, 64]" in capsys.readouterr().err
    assert bench.parse_args(["--tenant-files", "16", "--out", "/tmp/x"]).tenant_files == 16
