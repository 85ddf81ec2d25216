"""The settlement report port: what a rail says it settled in a time window.

Settlement reconciles each closed cycle against the rail's own report. The port is one
method, `fetch(rail, start, end)`; `HttpReportSource` reads the JSON report the clearing
simulator serves (`GET /rails/{rail}/report?since=..&until=..`, lines whose settlement
time is in [since, until)). A real rail delivers its report differently (a camt.053 or a
file over its own channel); that is another implementation of the same port. Unit tests
use an in-memory source.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import httpx

from orchestrator.reconciliation import ReportLine
from orchestrator.tenants import RailConfig

__all__ = ["HttpReportSource", "ReportSource", "ReportUnavailable", "parse_report"]


class ReportUnavailable(RuntimeError):
    """The rail's report could not be read now; the close is tried again later."""


class ReportSource(Protocol):
    def fetch(self, rail: RailConfig, start: datetime, end: datetime) -> list[ReportLine]: ...

    def close(self) -> None: ...


def parse_report(body: object, rail_name: str) -> list[ReportLine]:
    """Report lines from the simulator's JSON answer; anything unexpected is
    ReportUnavailable (an unreadable report must delay the close, not empty it)."""
    if not isinstance(body, dict) or body.get("rail") != rail_name or not isinstance(body.get("transactions"), list):
        raise ReportUnavailable(f"the {rail_name} report is not a report of that rail")
    lines = []
    for index, row in enumerate(body["transactions"]):
        try:
            amount_minor = row["amount_minor"]
            if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
                raise TypeError("amount_minor is not an integer")
            settled_at = datetime.fromisoformat(row["settled_at"])
            lines.append(ReportLine(
                uetr=row.get("uetr"), amount_minor=amount_minor, currency=str(row["currency"]),
                settled_at=settled_at if settled_at.tzinfo else settled_at.replace(tzinfo=UTC),
                end_to_end_id=row.get("end_to_end_id"), transaction_id=row.get("transaction_id")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportUnavailable(f"the {rail_name} report line {index} is unreadable: {exc!r}") from None
    return lines


class HttpReportSource:
    """Reads the report over HTTP from each rail's clearing endpoint."""

    def __init__(self, url_for: Callable[[str, str], str], *, timeout_s: float = 5.0,
                 client: httpx.Client | None = None) -> None:
        self.url_for = url_for
        # A bounded timeout: the close runs on the stage's loop, which a hung rail must not stall.
        self.client = client or httpx.Client(timeout=timeout_s)

    def fetch(self, rail: RailConfig, start: datetime, end: datetime) -> list[ReportLine]:
        url = self.url_for(rail.name, f"/rails/{rail.name}/report")
        try:
            answer = self.client.get(url, params={"since": start.astimezone(UTC).isoformat(),
                                                  "until": end.astimezone(UTC).isoformat()})
        except httpx.HTTPError as exc:
            raise ReportUnavailable(f"{rail.name} report not reachable: {exc!r}") from None
        if answer.status_code != 200:
            raise ReportUnavailable(f"{rail.name} report answered {answer.status_code}")
        try:
            body = answer.json()
        except ValueError:
            raise ReportUnavailable(f"{rail.name} report is not JSON") from None
        return parse_report(body, rail.name)

    def close(self) -> None:
        self.client.close()
