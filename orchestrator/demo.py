"""`payorch demo`: sample payments of every tenant, and each one's journey."""

from __future__ import annotations

import time
import uuid

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.intake.credentials import bearer
from orchestrator.samples import sample_payments

TERMINAL = ("SETTLED", "REJECTED", "FAILED")


def run_demo(base_url: str, keys: dict[str, str], *, per_tenant: int, timeout_s: float) -> int:
    """`keys`: tenant id -> API key; a tenant without one is reported and skipped."""
    console = Console()
    try:
        httpx.get(f"{base_url}/healthz", timeout=2).raise_for_status()
    except httpx.HTTPError:
        console.print(f"[red]the intake at {base_url} does not answer; start it with ./dev up[/red]")
        return 2
    submitted: list[tuple[str, str, str]] = []  # (tenant, payment id, label)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for tenant, label, body in sample_payments(per_tenant):
            if tenant not in keys:
                console.print(f"[red]{tenant} {label}: no API key for tenant {tenant}; skipped[/red]")
                continue
            answer = client.post("/v1/payments", json=body,
                                 headers={**bearer(keys[tenant]), "Idempotency-Key": f"demo-{uuid.uuid4()}"})
            if answer.status_code != 202:
                console.print(f"[red]{tenant} {label}: {answer.status_code} {answer.text}[/red]")
                continue
            submitted.append((tenant, answer.json()["payment_id"], label))
        records: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        columns = (TextColumn("payments ended"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("ended", total=len(submitted))
            while time.monotonic() < deadline and len(records) < len(submitted):
                for tenant, payment_id, _ in submitted:
                    if payment_id in records:
                        continue
                    answer = client.get(f"/v1/payments/{payment_id}", headers=bearer(keys[tenant]))
                    if answer.status_code == 200 and answer.json()["status"] in TERMINAL:
                        records[payment_id] = answer.json()
                        progress.advance(task)
                time.sleep(0.2)
        for tenant, payment_id, label in submitted:
            record = records.get(payment_id)
            if record is None:
                record = client.get(f"/v1/payments/{payment_id}", headers=bearer(keys[tenant])).json()
            table = Table(title=f"{tenant} · {label} · {payment_id} · {record.get('status')}", title_justify="left")
            for column in ("stage", "event", "at", "details"):
                table.add_column(column)
            for step in record.get("timeline", []):
                details = ", ".join(f"{k}={v}" for k, v in step.items()
                                    if k not in ("stage", "event_type", "occurred_at", "event_id", "correlation_id",
                                                 "causation_id", "region"))
                table.add_row(step["stage"], step["event_type"], step["occurred_at"][11:23], details)
            console.print(table)
    statuses = [r["status"] for r in records.values()]
    console.print(f"{len(submitted)} payments sent: " + ", ".join(f"{s} {statuses.count(s)}" for s in TERMINAL)
                  + f", still running {len(submitted) - len(records)}")
    return 0 if len(records) == len(submitted) else 1
