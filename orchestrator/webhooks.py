"""Webhooks, the pure parts: Standard Webhooks signatures, secrets, the retry schedule and
the address rule against server-side request forgery. No I/O here: the notifications
stage (orchestrator/stages/notifications.py) decides what to send, the delivery adapter
(adapters/webhook_delivery.py) sends it.

Signatures follow the Standard Webhooks specification (standardwebhooks.com), so a
receiver can verify them with any of its libraries: three headers, `webhook-id` (the
event id, the same on every attempt, for the receiver's deduplication),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space separated when signed with
several secrets). A secret is `whsec_` and the base64 of its key bytes. During a rotation
the sender signs with the new and the old secret, so a receiver holding either accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import random
import secrets as _secrets

# bandit B105: the secret format's prefix, not a secret.
SECRET_PREFIX = "whsec_"  # nosec B105
SIGNATURE_VERSION = "v1"
# Keys shorter than this are refused: HMAC-SHA256 wants at least its output length of
# randomness, and the spec allows 24 to 64 bytes.
SECRET_BYTES_MIN = 24
SECRET_BYTES_MAX = 64
SECRET_BYTES_NEW = 32
# A receiver refuses a timestamp further than this from its clock (replay protection);
# the spec's reference libraries use five minutes.
TIMESTAMP_TOLERANCE_S = 300
# At most this many secrets at once: the new and the old during a rotation, and room for
# one rotation that overlaps another.
SECRETS_MAX = 3

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookSecretError(ValueError):
    pass


class WebhookVerificationError(ValueError):
    pass


def parse_secret(text: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret."""
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise WebhookSecretError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError("a webhook secret is whsec_ followed by base64") from None
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise WebhookSecretError(f"a webhook secret's key has {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes, "
                                 f"not {len(key)}")
    return key


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """The keys of one or more secrets separated by whitespace (the first is the newest;
    all of them sign while a rotation lasts)."""
    words = text.split()
    if not words:
        raise WebhookSecretError("no webhook secret given")
    if len(words) > SECRETS_MAX:
        raise WebhookSecretError(f"at most {SECRETS_MAX} webhook secrets at once, not {len(words)}")
    return tuple(parse_secret(word) for word in words)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES_NEW)).decode()


def signed_content(webhook_id: str, timestamp: int, body: bytes) -> bytes:
    """What is signed: `id.timestamp.body`, the body exactly as sent."""
    return f"{webhook_id}.{timestamp}.".encode() + body


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, signed_content(webhook_id, timestamp, body), hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def sign(keys: tuple[bytes, ...], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, signed with every key."""
    if not keys:
        raise WebhookSecretError("no key to sign with")
    return {HEADER_ID: webhook_id, HEADER_TIMESTAMP: str(timestamp),
            HEADER_SIGNATURE: " ".join(signature(key, webhook_id, timestamp, body) for key in keys)}


def verify(keys: tuple[bytes, ...], headers: dict[str, str], body: bytes, *, now_s: float,
           tolerance_s: int = TIMESTAMP_TOLERANCE_S) -> str:
    """A receiver's check: the webhook id when one of the signatures is one of `keys`'
    and the timestamp is within `tolerance_s` of `now_s`; WebhookVerificationError otherwise.
    `headers` with lower-case names."""
    try:
        webhook_id, raw_timestamp, signatures = (headers[HEADER_ID], headers[HEADER_TIMESTAMP],
                                                 headers[HEADER_SIGNATURE])
        timestamp = int(raw_timestamp)
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook headers") from None
    if abs(now_s - timestamp) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the tolerance")
    offered = signatures.split()
    for key in keys:
        expected = signature(key, webhook_id, timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return webhook_id
    raise WebhookVerificationError("no matching signature")


# -- retries ---------------------------------------------------------------------------


def backoff_delay_s(attempt: int, *, base_s: float, max_s: float, jitter: float,
                    rng: random.Random | None = None) -> float:
    """The wait before attempt `attempt + 1`, after `attempt` failed attempts (1, 2, ...):
    `base_s * 2**(attempt-1)`, capped at `max_s`, then spread by +-`jitter` (a fraction)
    so that the deliveries an outage held back do not all come again in the same second."""
    if attempt < 1:
        raise ValueError("the first attempt is number 1")
    delay = min(max_s, base_s * 2 ** min(attempt - 1, 62))
    if jitter:
        # bandit B311: spreads retries in time; nothing secret depends on it.
        delay *= 1 + (rng or random).uniform(-jitter, jitter)  # nosec B311
    return max(0.0, delay)


# -- server-side request forgery ----------------------------------------------------------

# The cloud instance metadata services (AWS IMDS on IPv4 and on IPv6, ECS task metadata):
# named here although the link-local and private checks cover them, because reaching one
# hands out the task's credentials.
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254"))


def refused_address(address: str) -> str | None:
    """Why an endpoint may not be sent to at `address` (an IP literal), or None: loopback,
    private, link-local, metadata, multicast, reserved and unspecified addresses are inside
    the operator's network, not a tenant's endpoint."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, what in ((ip.is_loopback, "a loopback address"), (ip.is_link_local, "a link-local address"),
                       (ip.is_private, "a private address"), (ip.is_multicast, "a multicast address"),
                       (ip.is_unspecified, "the unspecified address"), (ip.is_reserved, "a reserved address")):
        if test:
            return what
    return None


def literal_host_refused(host: str) -> str | None:
    """Why a url's host is refused before any name is resolved: an IP literal that
    `refused_address` refuses, or `localhost`; None for other names (they are resolved,
    and their addresses checked, on every delivery)."""
    name = host.strip("[]").lower().rstrip(".")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return f"{host} is a loopback name"
    try:
        why = refused_address(name)
    except ValueError:
        return None
    return f"{host} is {why}" if why else None
