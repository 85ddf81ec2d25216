"""The benchmark's outputs: tables on the terminal, summary.json and a self-contained report.html."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import bench_svg
import relay_baseline
from bench_analysis import KNEE_MAX_P99_MS, KNEE_MIN_SHARE_OF_OFFERED

STAGE_ORDER = ("intake", "initiation", "sanctions", "fraud", "routing", "execution", "ledger", "settlement")
SIMULATOR_PREFIX = "clearing-sim-"
LOADGEN = "loadgen"


def fmt_number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def grouped_cpu(per_process_s: dict[str, float]) -> dict[str, float]:
    """Per-process CPU with the clearing simulators (one process per rail) as one line."""
    grouped: dict[str, float] = {}
    simulators = [name for name in per_process_s if name.startswith(SIMULATOR_PREFIX)]
    for name, seconds in sorted(per_process_s.items(), key=lambda item: -item[1]):
        if name not in simulators:
            grouped[name] = seconds
    if simulators:
        grouped[f"clearing-sim (x{len(simulators)})"] = sum(per_process_s[name] for name in simulators)
    return grouped


def _stages_in_order(steps: list[dict]) -> list[str]:
    seen = {stage for step in steps for stage in step["stages"]}
    return [s for s in STAGE_ORDER if s in seen] + sorted(seen - set(STAGE_ORDER))


# -- tables, as (title, headers, rows), shared by the terminal and the HTML report -----------

def outcome_table(steps: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    headers = ["rate/s", "offered", "202", "202/s", "shed 503", "other non-202", "settled", "rejected", "failed",
               "held", "unfinished", "e2e rate/s", "of offered"]
    rows = []
    for step in steps:
        other = " ".join(f"{code}:{n}" for code, n in step["not_accepted_by_status"].items() if code != "503")
        outcomes = step["outcomes"]
        sustained = step["sustained_rate"]
        rows.append([fmt_number(step["offered_rate"]), fmt_number(step["offered"]), fmt_number(step["accepted"]),
                     fmt_number(step["accepted_rate"]), fmt_number(step["shed"]), other or "0",
                     *(fmt_number(outcomes[name]) for name in ("settled", "rejected", "failed", "held", "unfinished")),
                     fmt_number(sustained), "-" if sustained is None else f"{sustained / step['offered_rate']:.0%}"])
    return "Throughput and outcomes", headers, rows


def latency_table(steps: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    headers = ["rate/s", "e2e p50", "p90", "p99", "p99.9", "max", "intake 202 p50", "p99", "p99.9", "max",
               "client lag p99"]
    rows = []
    for step in steps:
        e2e, intake = step["end_to_end_ms"], step["intake_ms"]
        rows.append([fmt_number(step["offered_rate"]), *(fmt_ms(e2e[k]) for k in ("p50", "p90", "p99", "p99_9", "max")),
                     *(fmt_ms(intake[k]) for k in ("p50", "p99", "p99_9", "max")), fmt_ms(step["generator_lag_ms"]["p99"])])
    return "Latency, ms (end to end by the product's timestamps; intake from each request's due time)", headers, rows


def stage_table(steps: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    stages = _stages_in_order(steps)
    rows = []
    for step in steps:
        cells = []
        for stage in stages:
            share = step["stages"].get(stage)
            cells.append("-" if share is None else f"{share['share']:.0%} {fmt_ms(share['mean_ms'])}ms")
        rows.append([fmt_number(step["offered_rate"]), *cells])
    return "Share of end-to-end time per stage (and mean ms per payment)", ["rate/s", *stages], rows


def cpu_table(steps: list[dict]) -> tuple[str, list[str], list[list[str]]] | None:
    measured = [step for step in steps if step["cpu"]]
    if not measured:
        return None
    per_step = [grouped_cpu(step["cpu"]["per_process_s"]) for step in measured]
    names = list(dict.fromkeys(name for grouped in per_step for name in grouped))
    rows = []
    for name in names:
        cells = []
        for step, grouped in zip(measured, per_step):
            seconds = grouped.get(name, 0.0)
            cells.append(f"{seconds:.1f}s {seconds * 1000 / max(step['accepted'], 1):.2f}ms")
        rows.append([name, *cells])
    rows.append(["all of payorch", *(f"{s['cpu']['total_s']:.1f}s {fmt_number(s['cpu']['ms_per_payment'], 2)}ms"
                                     for s in measured)])
    rows.append(["cores busy (window)", *(f"{fmt_number(s['cpu']['cores_busy'], 2)} ({s['cpu']['window_s']:.0f}s)"
                                          for s in measured)])
    rows.append([LOADGEN, *(f"{s['generator']['cpu_s']:.1f}s {fmt_number(s['generator']['cpu_us_per_request'])}us/req"
                            for s in measured)])
    headers = ["CPU seconds (per payment)", *(f"{fmt_number(s['offered_rate'])}/s" for s in measured)]
    return "CPU per process, from each step's start until its payments ended", headers, rows


def all_tables(steps: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = [outcome_table(steps), latency_table(steps), stage_table(steps)]
    cpu = cpu_table(steps)
    return tables + [cpu] if cpu else tables


def text_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def headline_lines(summary: dict) -> list[str]:
    lines = []
    knee = summary["knee"]
    rule = (f"carries >= {KNEE_MIN_SHARE_OF_OFFERED:.0%} of the offered rate end to end, none unfinished, "
            f"p99 <= {KNEE_MAX_P99_MS:,.0f} ms")
    lines.append(f"knee: {fmt_number(knee['rate'])}/s" if knee["rate"] is not None
                 else "knee: none (the lowest rate already missed the rule)")
    lines.append(f"  (the highest rate of the ramp, from the bottom, that {rule})")
    idle = summary.get("idle")
    if idle:
        lines.append(f"idle: the stack spent {idle['cores_busy']:.3f} cores over {idle['window_s']:.0f}s with no load")
    relay = summary.get("relay_baseline")
    if relay:
        best = summary["best_sustained_rate"]
        for name, result in relay.items():
            ratio = (f"; payorch's best sustained rate ({best:,.0f}/s) is {best / result['messages_per_s']:.1%} of it"
                     if best and result["messages_per_s"] else "")
            lines.append(f"relay baseline, {name.replace('_', '-')}: {relay_baseline.describe(result)}{ratio}")
    generator = summary["load_generator"]
    if generator["cpu_us_per_request"] is not None:
        lines.append(f"load generator: {generator['cpu_us_per_request']:.0f} us CPU per request "
                     f"({generator['requests']:,} requests, {generator['cpu_s']:.1f}s)")
    return lines


def print_report(summary: dict) -> None:
    for table in all_tables(summary["steps"]):
        print()
        print(text_table(*table))
    print()
    print("\n".join(headline_lines(summary)))


def write_json(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


# -- HTML ------------------------------------------------------------------------------------

def _html_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h3>{escape(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(steps: list[dict]) -> list[str]:
    rates = [step["offered_rate"] for step in steps]
    charts = [
        bench_svg.line_chart(
            "Throughput against offered rate",
            {"accepted (202)/s": [(s["offered_rate"], s["accepted_rate"]) for s in steps if s["accepted_rate"]],
             "sustained end to end/s": [(s["offered_rate"], s["sustained_rate"]) for s in steps
                                        if s["sustained_rate"] is not None]},
            x_label="offered payments/s", y_label="payments/s", diagonal=True),
        bench_svg.line_chart(
            "End-to-end latency against offered rate",
            {name: [(s["offered_rate"], s["end_to_end_ms"][key]) for s in steps if s["end_to_end_ms"][key]]
             for name, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9"), ("max", "max"))},
            x_label="offered payments/s", y_label="ms (log)", log_y=True),
        bench_svg.line_chart(
            "End-to-end latency CDF per offered rate",
            {f"{fmt_number(s['offered_rate'])}/s": [(ms, fraction) for ms, fraction in s["end_to_end_cdf"]]
             for s in steps if s["end_to_end_cdf"]},
            x_label="ms (log)", y_label="fraction of payments", log_x=True),
    ]
    stages = _stages_in_order(steps)
    categories = [f"{fmt_number(rate)}/s" for rate in rates]
    charts.append(bench_svg.stacked_bars(
        "Where the end-to-end time goes (mean per payment)", categories,
        {stage: [s["stages"].get(stage, {}).get("mean_ms", 0.0) for s in steps] for stage in stages},
        x_label="offered rate", y_label="ms per payment"))
    measured = [s for s in steps if s["cpu"]]
    if measured:
        per_step = [grouped_cpu(s["cpu"]["per_process_s"]) for s in measured]
        names = list(dict.fromkeys(name for grouped in per_step for name in grouped))
        segments = {name: [grouped.get(name, 0.0) * 1000 / max(s["accepted"], 1) for s, grouped in
                           zip(measured, per_step)] for name in names}
        segments[LOADGEN] = [s["generator"]["cpu_s"] * 1000 / max(s["accepted"], 1) for s in measured]
        charts.append(bench_svg.stacked_bars(
            "CPU per payment, per process", [f"{fmt_number(s['offered_rate'])}/s" for s in measured], segments,
            x_label="offered rate", y_label="CPU ms per payment"))
    return charts


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#f4f4f4}
.charts{display:flex;flex-wrap:wrap;gap:16px}pre{background:#f8f8f8;padding:8px}"""


def write_html(path: Path, summary: dict) -> None:
    run = summary["run"]
    steps = summary["steps"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>payorch benchmark</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>payorch benchmark, {escape(run['started_at'])}</h1>",
        f"<p>commit {escape(run['commit'] or 'unknown')}, {escape(run['delivery'])}, "
        f"{run['cpu_count']} cores, stack: {escape(run['stack'])}.</p>",
        "<pre>" + escape("\n".join(headline_lines(summary))) + "</pre>",
        "<div class='charts'>", *_charts(steps), "</div>",
        *(_html_table(*table) for table in all_tables(steps)),
        "<p>The JSON summary beside this file has every figure.</p></body></html>",
    ]
    path.write_text("\n".join(parts))
