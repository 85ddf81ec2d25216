"""Bearer JWTs from a bank's identity provider: what the intake accepts, and everything it
refuses (no broker: the intake app on a fake producer, real keys and real signatures)."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient

from orchestrator.intake.credentials import SCOPE_OPERATE, SCOPE_READ, SCOPE_SUBMIT
from orchestrator.intake.jwt_bearer import JwksUnavailable, JwtRejected, JwtVerifier, looks_like_jwt
from orchestrator.samples import sample_body
from orchestrator.settings import JwtSettings
from tests.unit.test_intake_api import PROBLEM, World

ISSUER = "https://idp.bank.example"
AUDIENCE = "payorch-intake"
TENANT_IDS = ("emea", "na", "latam", "apac")

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid: str, **extra) -> dict:
    rsa_key = isinstance(private_key, rsa.RSAPrivateKey)
    algorithm = jwt.algorithms.RSAAlgorithm if rsa_key else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", **extra}


def write_jwks(path, *keys: dict) -> None:
    # A new file, so a reader sees a new modification stamp even within one clock tick.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"keys": list(keys)}))
    os.replace(partial, path)


def token(private_key=RSA_KEY, *, kid="rsa-1", algorithm="RS256", lifetime_s=300, iat_offset_s=0,
          headers: dict | None = None, **claims) -> str:
    now = int(time.time()) + iat_offset_s
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "treasury-gateway", "iat": now, "exp": now + lifetime_s,
            "payorch_tenant": "emea", "scope": f"{SCOPE_SUBMIT} {SCOPE_READ}", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    header = {"kid": kid, **(headers or {})} if kid is not None else dict(headers or {})
    return jwt.encode(body, private_key, algorithm=algorithm, headers=header)


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(RSA_KEY, "rsa-1", alg="RS256"), public_jwk(EC_KEY, "ec-1"))
    return path


@pytest.fixture
def settings(jwks_file) -> JwtSettings:
    return JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file)


@pytest.fixture
def verifier(settings) -> JwtVerifier:
    return JwtVerifier(settings, TENANT_IDS)


def test_a_valid_token_is_a_credential_of_its_tenant_with_its_known_scopes(verifier):
    credential = verifier.verify(token(scope=f"{SCOPE_SUBMIT} {SCOPE_OPERATE} admin:everything"))
    assert credential.tenant_id == "emea" and credential.key_id == "jwt:treasury-gateway"
    assert credential.scopes == {SCOPE_SUBMIT, SCOPE_OPERATE}  # a scope payorch does not know grants nothing
    assert credential.revoked_at is None and ISSUER in credential.label
    # Other key types and algorithms the settings list; scopes as a list.
    ec_credential = verifier.verify(token(EC_KEY, kid="ec-1", algorithm="ES256", scope=[SCOPE_READ]))
    assert ec_credential.scopes == {SCOPE_READ}


def test_a_tokens_client_owns_its_idempotency_keys_whoever_its_subject(verifier):
    # RFC 9068's client_id, else OIDC's azp, else the subject is its own client.
    assert verifier.verify(token(client_id="bank-gw", azp="other")).client_id == "jwt:bank-gw"
    assert verifier.verify(token(sub="alice", azp="bank-gw")).client_id == "jwt:bank-gw"
    assert verifier.verify(token(sub="bob")).client_id == "jwt:bob"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: token(lifetime_s=-120, iat_offset_s=-200), "expired"),
    (lambda: token(iat_offset_s=0, nbf=int(time.time()) + 600), "not valid yet"),
    (lambda: token(aud="someone-else"), "audience"),
    (lambda: token(iss="https://evil.example"), "not issued by"),
    (lambda: token(sub=None), "'sub'"),
    (lambda: token(exp=None), "'exp'"),
    (lambda: token(payorch_tenant=None), "names no tenant"),
    (lambda: token(payorch_tenant="mars"), "names no tenant"),
    (lambda: token(sub="a b"), "printable ASCII"),
    (lambda: token(client_id=["x"]), "client_id"),
    (lambda: token(lifetime_s=86_400), "lives longer than 3600 s"),
    (lambda: token(scope=7), "string or a list"),
    (lambda: token(OTHER_RSA_KEY), "signature does not verify"),
    (lambda: token(kid="rsa-9"), "no key 'rsa-9'"),
    (lambda: token(kid=None), "names no key"),
    (lambda: token(EC_KEY, kid="rsa-1", algorithm="ES256"), "is for RS256, not ES256"),
    (lambda: "eyJhbGciOiJSUzI1NiJ9.not-base64.x", "not a well-formed JWT"),
])
def test_tokens_that_do_not_authenticate_are_refused_with_the_reason(verifier, make, reason):
    with pytest.raises(JwtRejected, match=reason):
        verifier.verify(make())


def test_unsigned_and_shared_secret_tokens_are_refused_whatever_the_key_set_holds(verifier, jwks_file):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60, "payorch_tenant": "emea"}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})
    with pytest.raises(JwtRejected, match="algorithm 'none' is not accepted"):
        verifier.verify(unsigned)
    # Algorithm confusion: HMAC keyed with the published RSA public key.
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest())
    forged = (header + b"." + payload + b"." + signature.rstrip(b"=")).decode()
    with pytest.raises(JwtRejected, match="algorithm 'HS256' is not accepted"):
        verifier.verify(forged)


def test_a_key_rotated_into_the_file_is_used_and_one_rotated_out_is_not(tmp_path, jwks_file, settings):
    verifier = JwtVerifier(settings, TENANT_IDS)
    assert verifier.verify(token()).tenant_id == "emea"
    with pytest.raises(JwtRejected, match="no key 'rsa-2'"):
        verifier.verify(token(OTHER_RSA_KEY, kid="rsa-2"))
    write_jwks(jwks_file, public_jwk(OTHER_RSA_KEY, "rsa-2"))  # the provider rotated
    assert verifier.verify(token(OTHER_RSA_KEY, kid="rsa-2", sub="after-rotation")).key_id == "jwt:after-rotation"
    with pytest.raises(JwtRejected, match="no key 'rsa-1'"):
        verifier.verify(token(sub="a-new-token-with-the-old-key"))
    # A half-written rotation keeps the keys read last.
    jwks_file.write_text("{not json")
    assert verifier.verify(token(OTHER_RSA_KEY, kid="rsa-2", sub="still")).key_id == "jwt:still"


def test_a_key_set_file_that_cannot_serve_stops_the_intake_at_start(tmp_path):
    missing = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "nowhere.json")
    with pytest.raises(JwksUnavailable, match="cannot be read"):
        JwtVerifier(missing, TENANT_IDS)
    encryption_only = tmp_path / "enc.json"
    write_jwks(encryption_only, public_jwk(RSA_KEY, "rsa-1", use="enc"), public_jwk(EC_KEY, "hs", alg="HS256"))
    with pytest.raises(JwksUnavailable, match="holds no signing key"):
        JwtVerifier(JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=encryption_only), TENANT_IDS)


def test_settings_take_one_key_source_and_asymmetric_algorithms_only(tmp_path):
    with pytest.raises(ValueError, match="exactly one of jwks_file and jwks_url"):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="exactly one of jwks_file and jwks_url"):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "k", jwks_url="https://idp/jwks")
    with pytest.raises(ValueError):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://idp.example/jwks")  # not https
    with pytest.raises(ValueError):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "k", algorithms=("HS256",))


def test_api_keys_are_never_taken_for_tokens():
    assert looks_like_jwt(token())
    assert not looks_like_jwt("po_0123456789ab_secret")
    assert not looks_like_jwt("po_ab.cd.ef")


@pytest.fixture
def jwt_world(tmp_path, jwks_file):
    world = World(tmp_path / "data", intake={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                                     "jwks_file": str(jwks_file)}})
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        yield world


def _submit(world, bearer_token: str, headers: dict | None = None):
    return world.client.post("/v1/payments", json=sample_body("emea"),
                             headers={"Authorization": f"Bearer {bearer_token}", "Idempotency-Key": str(uuid.uuid4()),
                                      **(headers or {})})


def test_the_intake_accepts_a_token_and_acts_within_its_tenant_only(jwt_world):
    accepted = _submit(jwt_world, token())
    assert accepted.status_code == 202, accepted.text
    payment_id = accepted.json()["payment_id"]
    read = jwt_world.client.get(f"/v1/payments/{payment_id}", headers={"Authorization": f"Bearer {token()}"})
    assert read.status_code in (200, 404)  # 404 until tracking has it; never another tenant's
    # Another tenant's token does not see it, and a disagreeing X-Tenant-Id is refused.
    other = jwt_world.client.get(f"/v1/payments/{payment_id}",
                                 headers={"Authorization": f"Bearer {token(payorch_tenant='na')}"})
    assert other.status_code == 404
    disagreeing = _submit(jwt_world, token(), headers={"X-Tenant-Id": "na"})
    assert disagreeing.status_code == 403 and disagreeing.headers["content-type"] == PROBLEM
    # API keys keep working beside tokens.
    assert jwt_world.client.post("/v1/payments", json=sample_body("emea"),
                                 headers={**jwt_world.auth("emea"), "Idempotency-Key": "k-1"}).status_code == 202


def test_the_intake_refuses_a_bad_token_with_401_and_a_missing_scope_with_403(jwt_world):
    expired = _submit(jwt_world, token(lifetime_s=-120, iat_offset_s=-200))
    assert expired.status_code == 401 and expired.headers["content-type"] == PROBLEM
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert "has expired" in expired.json()["detail"]
    read_only = _submit(jwt_world, token(scope=SCOPE_READ))
    assert read_only.status_code == 403 and f"does not have the {SCOPE_SUBMIT} scope" in read_only.json()["detail"]
    assert read_only.json()["detail"].startswith("credential jwt:treasury-gateway")


def test_without_jwt_settings_a_token_is_an_unknown_api_key(tmp_path):
    world = World(tmp_path)
    with TestClient(world.app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080") as client:
        world.client = client
        refused = _submit(world, token())
    assert refused.status_code == 401 and "API key is not valid" in refused.json()["detail"]


def test_ed25519_is_accepted_where_listed(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())), "kid": "ed-1", "use": "sig"}
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk)
    verifier = JwtVerifier(JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, algorithms=("EdDSA",)),
                           TENANT_IDS)
    assert verifier.verify(token(key, kid="ed-1", algorithm="EdDSA")).tenant_id == "emea"
    with pytest.raises(JwtRejected, match="algorithm 'RS256' is not accepted"):
        verifier.verify(token())


class IdentityProviderStandIn:
    """The bank's JWKS endpoint (outside the product): the key set it serves, whether it
    is up, and how often it was asked."""

    def __init__(self, *keys: dict) -> None:
        self.keys, self.up, self.fetches = list(keys), True, 0

    def fetch_data(self):
        self.fetches += 1
        if not self.up:
            raise jwt.PyJWKClientConnectionError("Fail to fetch data from the url, err: connection refused")
        return {"keys": self.keys}


def test_a_jwks_url_is_read_on_an_unknown_kid_at_most_so_often_and_survives_the_provider_down(monkeypatch):
    provider = IdentityProviderStandIn(public_jwk(RSA_KEY, "rsa-1"))
    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", lambda self: provider.fetch_data())
    clock = [1_000.0]
    monkeypatch.setattr("orchestrator.intake.jwt_bearer.time.monotonic", lambda: clock[0])
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.bank.example/jwks",
                           jwks_cache_s=300, jwks_refresh_min_s=30)
    verifier = JwtVerifier(settings, TENANT_IDS)
    assert provider.fetches == 0  # a URL is not read at start: the provider may be down then
    assert verifier.verify(token()).tenant_id == "emea" and provider.fetches == 1
    provider.keys.append(public_jwk(OTHER_RSA_KEY, "rsa-2"))
    clock[0] += 5
    with pytest.raises(JwtRejected, match="no key 'rsa-2'"):  # too soon to ask again
        verifier.verify(token(OTHER_RSA_KEY, kid="rsa-2"))
    clock[0] += 30
    assert verifier.verify(token(OTHER_RSA_KEY, kid="rsa-2")).tenant_id == "emea" and provider.fetches == 2
    provider.up = False
    clock[0] += 600  # the cache is stale and the provider down: the keys held go on serving
    assert verifier.verify(token(sub="while-down")).key_id == "jwt:while-down"
    fresh = JwtVerifier(settings, TENANT_IDS)
    with pytest.raises(JwksUnavailable, match="cannot be fetched"):
        fresh.verify(token())
