"""The review queue as the intake answers it: pages of held payments, and their cursor.

The queue is tracking's read model (`TrackingStore.held_for_review`); this module turns
its rows into the public shape, with what only the tenant's configuration knows: when
each hold's time limit ends and whether its approval needs a checker.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta

import orjson

from orchestrator.domain import format_minor_units
from orchestrator.intake.problems import Problem
from orchestrator.reasons import ReasonCode
from orchestrator.reviews import requires_checker
from orchestrator.tenants import TenantConfig

# A page of the queue: a reviewer's screen holds tens of payments; the maximum bounds
# the verdicts decoded for one request (two per payment).
REVIEWS_PAGE_DEFAULT = 50
REVIEWS_PAGE_MAX = 200
# A cursor is the last payment's hold time and id, base64url-encoded; far below this.
REVIEWS_CURSOR_MAX_CHARS = 200


def encode_cursor(held: dict) -> str:
    """The cursor after `held`: the page that follows starts with the next hold."""
    raw = orjson.dumps([held["held_at_s"], held["payment_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(held_at_s, payment_id) of a cursor this intake gave out; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        held_at_s, payment_id = orjson.loads(raw)
        if isinstance(held_at_s, bool) or not isinstance(held_at_s, (int, float)) or not isinstance(payment_id, str):
            raise ValueError("not a cursor")
        return float(held_at_s), payment_id[:64]
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise Problem("validation-error", "the after parameter is not a cursor this API gave out",
                      errors=[{"field": "after", "message": "not a cursor from links.next", "type": "value_error"}]
                      ) from None


def review_item(held: dict, tenant: TenantConfig) -> dict:
    """One held payment as `GET /v1/reviews` lists it."""
    payment_id = held["payment_id"]
    code = held["reason_code"]
    try:
        iso_code = ReasonCode(code).iso_code if code else None
    except ValueError:
        iso_code = None  # a reason this release does not know
    held_at = datetime.fromisoformat(held["held_at"])
    amount = (format_minor_units(held["amount_minor"], held["currency"])
              if held["amount_minor"] is not None and held["currency"] else None)
    return {
        "payment_id": payment_id,
        "end_to_end_id": held["end_to_end_id"],
        "amount": amount,
        "currency": held["currency"],
        "held_at": held["held_at"],
        "expires_at": (held_at + timedelta(seconds=tenant.review.time_limit_s)).isoformat(),
        "reason": {"code": code, "iso_code": iso_code, "detail": held["reason_detail"]},
        "sanctions": held["sanctions"],
        "fraud": held["fraud"],
        "parties": held["parties"],
        "review": {
            "state": "awaiting_checker" if held["maker"] else "awaiting_review",
            "maker": held["maker"],
            "maker_approved_at": held["maker_at"],
            "requires_checker": requires_checker(code or "", tenant),
        },
        "links": {"payment": f"/v1/payments/{payment_id}", "review": f"/v1/payments/{payment_id}/review"},
    }
