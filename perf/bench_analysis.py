"""What one step of load did: answers, outcomes, latencies, where the time went, CPU.

End-to-end latency is by the product's own timestamps: from the `PaymentReceived` event
to the event that ended the payment, read from its timeline. Intake latency is by the
generator's clock, from the time a request was due (not when it could be sent), so a
request that waited for the client or the server counts its wait.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from hdrh.histogram import HdrHistogram

TERMINAL_EVENTS = ("PaymentSettled", "PaymentRejected", "PaymentFailed")
OUTCOMES = {"SETTLED": "settled", "REJECTED": "rejected", "FAILED": "failed", "HELD": "held"}
# Latencies are recorded in microseconds, from 1 us to one hour, to 3 significant digits.
HISTOGRAM_RANGE_US = (1, 3_600_000_000)
HISTOGRAM_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
# The latency CDF is drawn through these percentiles (denser in the tail, where it matters).
CDF_PERCENTILES = [*range(0, 90, 5), *range(90, 99), 99.0, 99.5, 99.9, 99.99, 100.0]

# The sustained rate is measured over this middle share of a step's outcomes.
SUSTAINED_MIDDLE = 0.9

# The knee: the highest rate that still carries >= this share of the offered rate end to
# end, with end-to-end p99 within the bound (the bound is issue #9's target at 1,000/s).
KNEE_MIN_SHARE_OF_OFFERED = 0.95
KNEE_MAX_P99_MS = 2_000.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(*HISTOGRAM_RANGE_US, HISTOGRAM_DIGITS)


def latency_summary(histogram: HdrHistogram) -> dict:
    """Percentiles, max and mean in milliseconds (None when nothing was recorded)."""
    if histogram.get_total_count() == 0:
        return {"count": 0, **{name: None for name in PERCENTILES}, "max": None, "mean": None}
    return {"count": histogram.get_total_count(),
            **{name: histogram.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()},
            "max": histogram.get_max_value() / 1000, "mean": histogram.get_mean_value() / 1000}


def cdf_points(histogram: HdrHistogram) -> list[list[float]]:
    """[latency ms, fraction of payments at or below it] along CDF_PERCENTILES."""
    if histogram.get_total_count() == 0:
        return []
    return [[histogram.get_value_at_percentile(p) / 1000, p / 100] for p in CDF_PERCENTILES]


@dataclass
class Answers:
    """The intake's answers to one step's requests, by the generator's clock."""

    offered: int = 0
    by_status: Counter = field(default_factory=Counter)  # "202", "503", ..., "error", "not sent"
    retry_after: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)  # "i/o timeout", "connection refused", ...
    accepted: dict[str, str] = field(default_factory=dict)  # payment id -> tenant
    intake_us: HdrHistogram = field(default_factory=new_histogram)  # due -> answered, 202 only
    service_us: HdrHistogram = field(default_factory=new_histogram)  # sent -> answered, 202 only
    lag_us: HdrHistogram = field(default_factory=new_histogram)  # due -> sent, every request
    first_due_us: int | None = None
    last_answer_us: int | None = None

    def answered_within_s(self) -> float | None:
        """From the first request's due time to the last answer: the step's length when
        the intake keeps up, longer when it does not."""
        if self.first_due_us is None or self.last_answer_us is None:
            return None
        return (self.last_answer_us - self.first_due_us) / 1e6


NOT_SENT = "not sent"
TRANSPORT_ERROR = "error"


def _status_key(result: dict) -> str:
    """The HTTP status as text; or why there is none."""
    if result["status"]:
        return str(result["status"])
    return TRANSPORT_ERROR if result["sent_us"] else NOT_SENT


def read_answers(results_path: Path, tenants: list[str]) -> Answers:
    """`tenants[i]` is the tenant of request i (the results do not repeat it)."""
    answers = Answers()
    with results_path.open("rb") as lines:
        for line in lines:
            result = orjson.loads(line)
            answers.offered += 1
            answers.by_status[_status_key(result)] += 1
            if result.get("error") and result["sent_us"]:
                # Go's messages end with the cause, after the addresses: "read tcp A->B: i/o timeout".
                answers.transport_errors[result["error"].rsplit(": ", 1)[-1]] += 1
            if not result["sent_us"]:
                continue
            answers.lag_us.record_value(max(1, result["sent_us"] - result["scheduled_us"]))
            answers.first_due_us = min(answers.first_due_us or result["scheduled_us"], result["scheduled_us"])
            answers.last_answer_us = max(answers.last_answer_us or 0, result["answered_us"])
            if result.get("retry_after"):
                answers.retry_after[result["retry_after"]] += 1
            if result["status"] == 202 and result.get("payment_id"):
                answers.accepted[result["payment_id"]] = tenants[result["i"]]
                answers.intake_us.record_value(max(1, result["answered_us"] - result["scheduled_us"]))
                answers.service_us.record_value(max(1, result["answered_us"] - result["sent_us"]))
    return answers


@dataclass
class Outcomes:
    """How the accepted payments of one step ended, from their timelines."""

    counts: Counter = field(default_factory=Counter)  # settled/rejected/failed/held/unfinished
    reasons: Counter = field(default_factory=Counter)  # "FAILED rail_time_limit_exceeded", ...
    end_to_end_us: HdrHistogram = field(default_factory=new_histogram)
    stage_us: defaultdict = field(default_factory=lambda: defaultdict(int))  # stage -> summed time
    stage_payments: int = 0
    outcome_times_us: list[int] = field(default_factory=list)

    @property
    def last_outcome_us(self) -> int | None:
        return max(self.outcome_times_us, default=None)

    @property
    def ended(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome != "unfinished")

    def sustained_rate(self) -> float | None:
        """Payments that reached an outcome per second, over the middle of them.

        While the system keeps up, outcomes come as fast as payments were offered; when it
        falls behind, its backlog spreads them out and the rate shows what it carried. The
        first and last few are left out (SUSTAINED_MIDDLE), so that a few payments slower
        or faster than the others at either end cannot stretch or shrink the span.
        """
        times = sorted(self.outcome_times_us)
        low, high = _middle_positions(len(times))
        if high <= low or times[high] <= times[low]:
            return None
        return (high - low) / ((times[high] - times[low]) / 1e6)


def _middle_positions(count: int) -> tuple[int, int]:
    cut = int(count * (1 - SUSTAINED_MIDDLE) / 2)
    return cut, count - 1 - cut


def _micros(timestamp: str) -> int:
    return round(datetime.fromisoformat(timestamp).timestamp() * 1e6)


def _add_timeline(outcomes: Outcomes, record: dict, outcome: str) -> None:
    events = sorted((_micros(entry["occurred_at"]), entry["stage"], entry["event_type"])
                    for entry in record["timeline"])
    if not events:
        return
    received = next((at for at, _stage, event in events if event == "PaymentReceived"), None)
    ended = next((at for at, _stage, event in events if event in TERMINAL_EVENTS), None)
    # A held payment never ends; for the throughput it counts from when it was held.
    outcome_at = ended if ended is not None else events[-1][0]
    outcomes.outcome_times_us.append(outcome_at)
    if outcome == "held" or received is None or ended is None:
        return
    outcomes.end_to_end_us.record_value(max(1, ended - received))
    # Each gap between consecutive events is the time of the stage that wrote the later one,
    # up to the terminal event, so a payment's stage times add up to its end-to-end latency.
    outcomes.stage_payments += 1
    previous = received
    for at, stage, _event in events:
        if at <= received:
            continue
        if at > ended:
            break
        outcomes.stage_us[stage] += at - previous
        previous = at


def read_outcomes(records_path: Path) -> Outcomes:
    outcomes = Outcomes()
    with records_path.open("rb") as lines:
        for line in lines:
            record = orjson.loads(line)["record"]
            outcome = OUTCOMES.get(record["status"]) if record else None
            if outcome is None:
                outcomes.counts["unfinished"] += 1
                continue
            outcomes.counts[outcome] += 1
            if record.get("reason"):
                outcomes.reasons[f"{record['status']} {record['reason']['code']}"] += 1
            _add_timeline(outcomes, record, outcome)
    return outcomes


def stage_shares(outcomes: Outcomes) -> dict[str, dict]:
    """Per stage: its share of all end-to-end time, and its mean milliseconds per payment."""
    total = sum(outcomes.stage_us.values())
    return {stage: {"share": spent / total if total else 0.0,
                    "mean_ms": spent / outcomes.stage_payments / 1000 if outcomes.stage_payments else 0.0}
            for stage, spent in sorted(outcomes.stage_us.items(), key=lambda item: -item[1])}


def cpu_summary(per_process_s: dict[str, float], window_s: float, accepted: int) -> dict:
    total = sum(per_process_s.values())
    return {"window_s": window_s, "per_process_s": per_process_s, "total_s": total,
            "cores_busy": total / window_s if window_s > 0 else None,
            "ms_per_payment": total * 1000 / accepted if accepted else None}


def generator_summary(summary: dict) -> dict:
    cpu_s = summary["cpu_user_s"] + summary["cpu_system_s"]
    return {"requests": summary["requests"], "cpu_s": cpu_s,
            "cpu_us_per_request": cpu_s * 1e6 / summary["requests"] if summary["requests"] else None}


def step_summary(*, rate: float, duration_s: float, answers: Answers, outcomes: Outcomes,
                 cpu: dict | None, generator: dict) -> dict:
    sustained = outcomes.sustained_rate()
    e2e = latency_summary(outcomes.end_to_end_us)
    unfinished = outcomes.counts.get("unfinished", 0)
    meets = (sustained is not None and sustained >= KNEE_MIN_SHARE_OF_OFFERED * rate and unfinished == 0
             and e2e["p99"] is not None and e2e["p99"] <= KNEE_MAX_P99_MS)
    non_accepted = {status: n for status, n in sorted(answers.by_status.items()) if status != "202"}
    within = answers.answered_within_s()
    return {
        "offered_rate": rate, "duration_s": duration_s, "offered": answers.offered,
        "answered_within_s": answers.answered_within_s(),
        "accepted": answers.by_status.get("202", 0), "shed": answers.by_status.get("503", 0),
        "accepted_rate": answers.by_status.get("202", 0) / within if within else None,
        "not_accepted_by_status": non_accepted, "retry_after": dict(answers.retry_after),
        "transport_errors": dict(answers.transport_errors.most_common()),
        "outcomes": {name: outcomes.counts.get(name, 0) for name in (*OUTCOMES.values(), "unfinished")},
        "reasons": dict(outcomes.reasons.most_common()),
        "sustained_rate": sustained,
        "end_to_end_ms": e2e, "end_to_end_cdf": cdf_points(outcomes.end_to_end_us),
        "intake_ms": latency_summary(answers.intake_us), "intake_service_ms": latency_summary(answers.service_us),
        "generator_lag_ms": latency_summary(answers.lag_us),
        "stages": stage_shares(outcomes), "cpu": cpu, "generator": generator,
        "meets_knee_rule": meets,
    }


def knee(steps: list[dict]) -> float | None:
    """The highest rate of the ramp's leading run of steps that meet the knee rule."""
    best = None
    for step in sorted(steps, key=lambda s: s["offered_rate"]):
        if not step["meets_knee_rule"]:
            break
        best = step["offered_rate"]
    return best
