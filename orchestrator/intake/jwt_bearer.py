"""JWT bearer tokens from a bank's identity provider, verified against its JWKS.

A bank that runs its own identity provider sends `Authorization: Bearer <JWT>` instead of
a payorch API key. The intake accepts such a token only when it is configured to
(`PAYORCH_INTAKE__JWT__*`), and then only a token that:

- is signed with an asymmetric algorithm from the configured list (RS*, PS*, ES*,
  EdDSA); `none` and the HMAC algorithms are never accepted, so a public key can never
  be used as a shared secret (the classic algorithm-confusion attack);
- names in its header a `kid` found in the JWKS (a key set file, or an HTTPS URL);
- carries `iss`, `aud`, `sub`, `exp` and `iat`, with the configured issuer and audience,
  is not expired or not yet valid (with the configured leeway for clock skew), and lives
  at most `max_lifetime_s` from `iat` to `exp`;
- names its tenant in the configured claim (`payorch_tenant` by default), a tenant
  configured here; and its scopes in the `scope` claim (space-separated, RFC 8693 §4.2,
  or a list), of which only payorch's own scopes count.

The token's subject becomes the credential's id (`jwt:<sub>`), which the logs, the rate
limits and the audit trail name as they name an API key's id. Nothing else of the token
is logged. Keys rotate at the identity provider: a JWKS file is read again when it
changes, a JWKS URL when a token names a `kid` it does not hold (at most once per
`jwks_refresh_min_s`) and every `jwks_cache_s`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import jwt
import orjson

from orchestrator.intake.credentials import SCOPES, Credential
from orchestrator.settings import JwtSettings

log = logging.getLogger("payorch.intake.jwt")

# A subject is printed in logs and used as a rate-limit bucket: printable ASCII only.
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,128}$")
# Verified tokens are remembered this long (bounded), so a busy client does not pay a
# signature check per request; a token is never trusted past its own expiry.
_VERIFIED_CACHE_S = 2.0
_VERIFIED_CACHE_MAX = 10_000


class JwtRejected(ValueError):
    """A token that does not authenticate its caller; the message says why (no secrets)."""


class JwksUnavailable(JwtRejected):
    """The key set cannot be read: at start a configuration error, later a refused token."""


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments (JWS compact serialisation); an API key never is."""
    return token.count(".") == 2 and not token.startswith("po_")


class JwksSource:
    """The identity provider's public keys by key id, from a file or an HTTPS URL."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, the alg it declares)
        self._loaded_at = float("-inf")
        self._file_stamp: tuple[int, int] | None = None
        self._client = (jwt.PyJWKClient(str(settings.jwks_url), cache_jwk_set=False, timeout=5)
                        if settings.jwks_url is not None else None)
        if settings.jwks_file is not None:
            # A file is read at start, so a wrong path or a broken file stops the intake
            # with its reason instead of refusing every token later.
            self._load(time.monotonic())
            if not self._keys:
                raise JwksUnavailable(f"the JWKS file {settings.jwks_file} holds no signing key for "
                                      f"{', '.join(settings.algorithms)}")

    def key(self, kid: str, algorithm: str) -> jwt.PyJWK:
        """The signing key `kid`, if the key set holds it for `algorithm`."""
        with self._lock:
            now = time.monotonic()
            if self._stale(now):
                self._load(now)
            elif kid not in self._keys and self._client is not None \
                    and now - self._loaded_at >= self._settings.jwks_refresh_min_s:
                self._load(now)  # a key the provider rotated in since the last read
            found = self._keys.get(kid)
        if found is None:
            raise JwtRejected(f"no key {kid[:64]!r} in the identity provider's key set")
        key, declared = found
        if declared is not None and declared != algorithm:
            raise JwtRejected(f"key {kid[:64]!r} is for {declared}, not {algorithm[:16]}")
        return key

    def _stale(self, now: float) -> bool:
        if self._settings.jwks_file is not None:
            try:
                stat = self._settings.jwks_file.stat()
            except OSError:
                return False  # gone mid-rotation: keep the keys read last
            return (stat.st_mtime_ns, stat.st_size) != self._file_stamp
        return now - self._loaded_at >= self._settings.jwks_cache_s

    def _load(self, now: float) -> None:
        if self._settings.jwks_file is not None:
            path: Path = self._settings.jwks_file
            try:
                stat = path.stat()
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                if self._keys:  # a file half-written by a rotation: keep the keys read last
                    log.warning("the JWKS file %s cannot be read (%s); keeping the keys read before", path, exc)
                    return
                raise JwksUnavailable(f"the JWKS file {path} cannot be read: {exc}") from None
            self._file_stamp = (stat.st_mtime_ns, stat.st_size)
        else:
            try:
                data = self._client.fetch_data()
            except jwt.PyJWKClientError as exc:
                if self._keys:  # keep serving with the keys we have while the provider is down
                    self._loaded_at = now
                    return
                raise JwksUnavailable(f"the identity provider's key set cannot be fetched: {exc}") from None
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            if not isinstance(entry, dict) or not entry.get("kid") or entry.get("use", "sig") != "sig":
                continue  # a key without an id cannot be chosen; an encryption key signs nothing
            declared = entry.get("alg")
            if declared is not None and declared not in self._settings.algorithms:
                continue
            try:
                keys[str(entry["kid"])] = (jwt.PyJWK(entry), declared)
            except jwt.PyJWTError:
                continue  # a key type or curve this library cannot use
        self._keys = keys
        self._loaded_at = now


class JwtVerifier:
    def __init__(self, settings: JwtSettings, tenant_ids: Collection[str]) -> None:
        self._settings = settings
        self._tenant_ids = frozenset(tenant_ids)
        self._jwks = JwksSource(settings)
        self._verified: dict[str, tuple[float, float, Credential]] = {}

    def verify(self, token: str) -> Credential:
        """The credential the token stands for, or JwtRejected saying why."""
        now = time.monotonic()
        cached = self._verified.get(token)
        if cached is not None and now - cached[0] < _VERIFIED_CACHE_S and time.time() < cached[1]:
            return cached[2]
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise JwtRejected("the token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in settings.algorithms:
            raise JwtRejected(f"the token's algorithm {str(algorithm)[:16]!r} is not accepted; "
                              f"accepted: {', '.join(settings.algorithms)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JwtRejected("the token's header names no key (kid)")
        key = self._jwks.key(kid, algorithm)
        try:
            # The key object, not the PyJWK: the header's algorithm (one we accept) decides,
            # and a key of another family fails the check instead of being reinterpreted.
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=settings.audience, issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_signature": True})
        except jwt.ExpiredSignatureError:
            raise JwtRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtRejected("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise JwtRejected(f"the token is not for this audience ({settings.audience})") from None
        except jwt.InvalidIssuerError:
            raise JwtRejected(f"the token was not issued by {settings.issuer}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise JwtRejected("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:  # malformed claims, a key of another type, ...
            raise JwtRejected(f"the token is not valid: {type(exc).__name__}") from None
        credential = self._credential(claims)
        if len(self._verified) >= _VERIFIED_CACHE_MAX:  # bounded whatever tokens are tried
            self._verified.clear()
        self._verified[token] = (now, float(claims["exp"]), credential)
        return credential

    def _credential(self, claims: dict) -> Credential:
        settings = self._settings
        issued_at, expires_at = claims["iat"], claims["exp"]
        if not isinstance(issued_at, (int, float)) or not isinstance(expires_at, (int, float)):
            raise JwtRejected("the token's iat and exp must be numbers")
        if expires_at - issued_at > settings.max_lifetime_s:
            raise JwtRejected(f"the token lives longer than {settings.max_lifetime_s} s from iat to exp")
        subject = claims["sub"]
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            raise JwtRejected("the token's subject must be 1 to 128 printable ASCII characters")
        tenant_id = claims.get(settings.tenant_claim)
        if not isinstance(tenant_id, str) or tenant_id not in self._tenant_ids:
            raise JwtRejected(f"the token's {settings.tenant_claim!r} claim names no tenant configured here")
        raw_scopes = claims.get(settings.scope_claim, "")
        if isinstance(raw_scopes, str):
            scopes = raw_scopes.split()
        elif isinstance(raw_scopes, list) and all(isinstance(scope, str) for scope in raw_scopes):
            scopes = raw_scopes
        else:
            raise JwtRejected(f"the token's {settings.scope_claim!r} claim must be a string or a list of strings")
        # The OAuth client the token was issued to (RFC 9068 `client_id`, OIDC `azp`) owns
        # its Idempotency-Keys; a token naming none is its subject's own client.
        client = claims.get("client_id", claims.get("azp", subject))
        if not isinstance(client, str) or not _SUBJECT.match(client):
            raise JwtRejected("the token's client_id (or azp) must be 1 to 128 printable ASCII characters")
        issued = datetime.fromtimestamp(issued_at, UTC).isoformat(timespec="seconds")
        return Credential(key_id=f"jwt:{subject}", tenant_id=tenant_id, scopes=frozenset(scopes) & frozenset(SCOPES),
                          label=f"JWT issued by {settings.issuer}", created_at=issued, revoked_at=None,
                          subject=subject, client=f"jwt:{client}")
