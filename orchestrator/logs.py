"""Structured logs: one JSON object per line, with the payment's identifiers.

Callers pass `extra=event.log_context()` (payment id, correlation id, tenant, event
id); account numbers and names never go into a log line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

_CONTEXT_KEYS = (
    "payment_id",
    "correlation_id",
    "tenant_id",
    "event_id",
    "event_type",
    "stage",
    "topic",
    "partition",
    "offset",
    "reason_code",
    "error_class",
    "count",
    # Settlement cycles: which cycle of which rail, and a reconciliation exception's kind.
    "cycle_id",
    "rail",
    "kind",
    # The intake: the key id of the credential that submitted a payment (never the key).
    "credential",
    # Notifications: one webhook delivery (`payorch webhooks attempts DELIVERY_ID`).
    "delivery_id",
)


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self._process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {process_name} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = " ".join(f"{k}={record.__dict__[k]}" for k in _CONTEXT_KEYS if record.__dict__.get(k) is not None)
        return f"{base} {context}" if context else base


def configure_logging(process_name: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else TextFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs of every request would drown the payment logs; the intake logs its own.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
