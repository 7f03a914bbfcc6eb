"""Authentication: who is calling, decided from a verified bearer token, in every mode.

Each mode runs in a real service process. Keys are generated here, as an identity provider
would hold them; the service only sees the public half (a PEM file or a JWKS file).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import DEV_SECRET, Service, dev_token, new_user, registration

PUSHERS = "/push/v1/pushers"
ISSUER = "https://idp.test/realms/insured"
AUDIENCE = "fdpush-test"
INSURED_OID = "1.2.276.0.76.4.49"  # professionOID of an insured person in the TI


# --- keys and tokens, as the identity provider makes them ---------------------------------------


@dataclass(frozen=True)
class Keys:
    ec: ec.EllipticCurvePrivateKey
    ec_other: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec_pem: Path
    rsa_pem: Path
    jwks: Path


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("idp")
    ec_key, rsa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    (folder / "ec.pem").write_bytes(public_pem(ec_key))
    (folder / "rsa.pem").write_bytes(public_pem(rsa_key))
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    # As identity providers publish them: one key without "alg", one with.
    jwks = {
        "keys": [
            {**ec_jwk, "kid": "ec-1", "use": "sig"},
            {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
        ]
    }
    (folder / "jwks.json").write_text(json.dumps(jwks))
    return Keys(
        ec=ec_key,
        ec_other=ec.generate_private_key(ec.SECP256R1()),
        rsa=rsa_key,
        rsa_other=rsa.generate_private_key(65537, 2048),
        ec_pem=folder / "ec.pem",
        rsa_pem=folder / "rsa.pem",
        jwks=folder / "jwks.json",
    )


def claims_for(user: str | None = None, **claims: Any) -> dict[str, Any]:
    """A token's claims: ``sub`` and a future ``exp`` unless given (``None`` leaves one out)."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": user or new_user(), "iat": now, "exp": now + 300}
    base.update(claims)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(alg: str, claims: dict[str, Any], secret: bytes = b"", kid: str | None = None) -> str:
    """A token built by hand: HS256 with any bytes as the secret, or ``alg: none`` unsigned."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    if alg == "none":
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def call(service: Service, token: str | None, path: str = PUSHERS) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(service.base_url + path, headers=headers, timeout=30)


def stored(service: Service, pushkey: str) -> int:
    """How many pushers with this pushkey the service's database holds."""
    index = service.pushkey_index(pushkey)
    return int(service.query("SELECT COUNT(*) FROM pushers WHERE pushkey = ?", (index,))[0][0])


def assert_error(response: httpx.Response, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errcode"] == errcode


# --- jwt mode with an EC P-256 public key (ES256) ---------------------------------------------


@pytest.fixture(scope="module")
def ec_service(start_service: Callable[..., Service], keys: Keys) -> Service:
    return start_service(FDPUSH_AUTH_MODE="jwt", FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(keys.ec_pem))


def test_es256_token_is_accepted(ec_service: Service, keys: Keys) -> None:
    """A valid ES256 token authenticates its ``sub``: what it registers, it lists."""
    user = new_user()
    token = sign(keys.ec, "ES256", claims_for(user))
    body = registration()
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        ec_service.base_url + PUSHERS + "/set", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    listed = call(ec_service, token).json()["pushers"]
    assert [p["pushkey"] for p in listed] == [body["pushkey"]]
    again = call(ec_service, sign(keys.ec, "ES256", claims_for(user, iat=None)))
    assert [p["pushkey"] for p in again.json()["pushers"]] == [body["pushkey"]]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Token abc"],
    ids=["absent", "empty", "bearer-alone", "basic", "other-scheme"],
)
def test_missing_token(ec_service: Service, authorization: str | None) -> None:
    """No bearer token at all is 401 M_MISSING_TOKEN."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.get(ec_service.base_url + PUSHERS, headers=headers, timeout=30)
    assert_error(response, 401, "M_MISSING_TOKEN")


def _tampered(keys: Keys) -> str:
    header, _payload, signature = sign(keys.ec, "ES256", claims_for("alice")).split(".")
    return ".".join([header, b64url(json.dumps(claims_for("mallory")).encode()), signature])


BAD_EC_TOKENS: dict[str, Callable[[Keys], str]] = {
    "garbage": lambda k: "not-a-token",
    "three-garbage-parts": lambda k: "a.b.c",
    "wrong-key": lambda k: sign(k.ec_other, "ES256", claims_for()),
    "tampered-payload": _tampered,
    "expired": lambda k: sign(k.ec, "ES256", claims_for(exp=int(time.time()) - 3600)),
    "no-exp": lambda k: sign(k.ec, "ES256", claims_for(exp=None)),
    "exp-not-a-number": lambda k: sign(k.ec, "ES256", claims_for(exp="tomorrow")),
    "not-yet-valid": lambda k: sign(k.ec, "ES256", claims_for(nbf=int(time.time()) + 3600)),
    "alg-none": lambda k: forged("none", claims_for()),
    "hs256-with-public-pem": lambda k: forged("HS256", claims_for(), k.ec_pem.read_bytes()),
    "dev-token": lambda k: dev_token(new_user()),
    "rs256-other-key-type": lambda k: sign(k.rsa, "RS256", claims_for()),
    "huge": lambda k: sign(k.ec, "ES256", claims_for(padding="x" * 20_000)),
}


@pytest.mark.parametrize("make", BAD_EC_TOKENS.values(), ids=BAD_EC_TOKENS.keys())
def test_bad_tokens_are_refused(
    ec_service: Service, keys: Keys, make: Callable[[Keys], str]
) -> None:
    """Anything but a valid, unexpired ES256 token of the configured key is 401 M_UNKNOWN_TOKEN."""
    assert_error(call(ec_service, make(keys)), 401, "M_UNKNOWN_TOKEN")


def test_refused_token_changes_nothing(ec_service: Service, keys: Keys) -> None:
    """A write with a refused token stores nothing, even when its body is valid."""
    body = registration()
    expired = sign(keys.ec, "ES256", claims_for(exp=int(time.time()) - 3600))
    response = httpx.post(
        ec_service.base_url + PUSHERS + "/set",
        json=body,
        headers={"Authorization": f"Bearer {expired}"},
        timeout=30,
    )
    assert_error(response, 401, "M_UNKNOWN_TOKEN")
    assert stored(ec_service, body["pushkey"]) == 0


def test_no_issuer_or_audience_check_unless_configured(ec_service: Service, keys: Keys) -> None:
    """Without FDPUSH_AUTH_JWT_ISSUER/AUDIENCE any ``iss``/``aud`` of a valid token is fine."""
    token = sign(keys.ec, "ES256", claims_for(iss="https://elsewhere.test", aud="someone"))
    assert call(ec_service, token).status_code == 200


# --- jwt mode with an RSA public key (RS256, PS256), issuer and audience ------------------------


@pytest.fixture(scope="module")
def rsa_service(start_service: Callable[..., Service], keys: Keys) -> Service:
    return start_service(
        FDPUSH_AUTH_MODE="jwt",
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(keys.rsa_pem),
        FDPUSH_AUTH_JWT_ISSUER=ISSUER,
        FDPUSH_AUTH_JWT_AUDIENCE=AUDIENCE,
    )


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_tokens_are_accepted(rsa_service: Service, keys: Keys, alg: str) -> None:
    token = sign(keys.rsa, alg, claims_for(iss=ISSUER, aud=AUDIENCE))
    response = call(rsa_service, token)
    assert response.status_code == 200, response.text
    assert response.json() == {"pushers": []}


def test_audience_may_be_a_list(rsa_service: Service, keys: Keys) -> None:
    token = sign(keys.rsa, "RS256", claims_for(iss=ISSUER, aud=["other", AUDIENCE]))
    assert call(rsa_service, token).status_code == 200


BAD_RSA_TOKENS: dict[str, Callable[[Keys], str]] = {
    "no-iss": lambda k: sign(k.rsa, "RS256", claims_for(aud=AUDIENCE)),
    "wrong-iss": lambda k: sign(k.rsa, "RS256", claims_for(iss=ISSUER + "x", aud=AUDIENCE)),
    "no-aud": lambda k: sign(k.rsa, "RS256", claims_for(iss=ISSUER)),
    "wrong-aud": lambda k: sign(k.rsa, "RS256", claims_for(iss=ISSUER, aud="other")),
    "wrong-aud-list": lambda k: sign(k.rsa, "RS256", claims_for(iss=ISSUER, aud=["a", "b"])),
    "wrong-key": lambda k: sign(k.rsa_other, "RS256", claims_for(iss=ISSUER, aud=AUDIENCE)),
    "expired": lambda k: sign(
        k.rsa, "PS256", claims_for(iss=ISSUER, aud=AUDIENCE, exp=int(time.time()) - 3600)
    ),
    "no-exp": lambda k: sign(k.rsa, "RS256", claims_for(iss=ISSUER, aud=AUDIENCE, exp=None)),
    # Algorithm confusion: the public key, which everyone has, used as an HMAC secret.
    "hs256-with-public-pem": lambda k: forged(
        "HS256", claims_for(iss=ISSUER, aud=AUDIENCE), k.rsa_pem.read_bytes()
    ),
    "alg-none": lambda k: forged("none", claims_for(iss=ISSUER, aud=AUDIENCE)),
    "es256": lambda k: sign(k.ec, "ES256", claims_for(iss=ISSUER, aud=AUDIENCE)),
}


@pytest.mark.parametrize("make", BAD_RSA_TOKENS.values(), ids=BAD_RSA_TOKENS.keys())
def test_bad_rsa_tokens_are_refused(
    rsa_service: Service, keys: Keys, make: Callable[[Keys], str]
) -> None:
    """Issuer and audience are enforced when set; foreign keys and algorithms never pass."""
    assert_error(call(rsa_service, make(keys)), 401, "M_UNKNOWN_TOKEN")


# --- jwt mode with a JWKS file (two keys, chosen by kid) ----------------------------------------


@pytest.fixture(scope="module")
def jwks_service(start_service: Callable[..., Service], keys: Keys) -> Service:
    return start_service(FDPUSH_AUTH_MODE="jwt", FDPUSH_AUTH_JWKS_FILE=str(keys.jwks))


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [("ec", "ES256", "ec-1"), ("rsa", "RS256", "rsa-1")]
)
def test_jwks_keys_are_chosen_by_kid(
    jwks_service: Service, keys: Keys, key: str, alg: str, kid: str
) -> None:
    user = new_user()
    token = sign(getattr(keys, key), alg, claims_for(user), kid=kid)
    response = call(jwks_service, token)
    assert response.status_code == 200, response.text


BAD_JWKS_TOKENS: dict[str, Callable[[Keys], str]] = {
    "no-kid": lambda k: sign(k.ec, "ES256", claims_for()),
    "unknown-kid": lambda k: sign(k.ec, "ES256", claims_for(), kid="ec-2"),
    "kid-of-the-other-key": lambda k: sign(k.ec, "ES256", claims_for(), kid="rsa-1"),
    "wrong-key-right-kid": lambda k: sign(k.ec_other, "ES256", claims_for(), kid="ec-1"),
    "expired": lambda k: sign(k.rsa, "RS256", claims_for(exp=int(time.time()) - 3600), kid="rsa-1"),
    "no-exp": lambda k: sign(k.ec, "ES256", claims_for(exp=None), kid="ec-1"),
    "hs256-with-public-pem": lambda k: forged(
        "HS256", claims_for(), k.rsa_pem.read_bytes(), kid="rsa-1"
    ),
    "hs256-with-jwks": lambda k: forged("HS256", claims_for(), k.jwks.read_bytes(), kid="ec-1"),
    "alg-none": lambda k: forged("none", claims_for(), kid="ec-1"),
    "garbage": lambda k: "eyJhbGciOi.garbage.x",
}


@pytest.mark.parametrize("make", BAD_JWKS_TOKENS.values(), ids=BAD_JWKS_TOKENS.keys())
def test_bad_jwks_tokens_are_refused(
    jwks_service: Service, keys: Keys, make: Callable[[Keys], str]
) -> None:
    assert_error(call(jwks_service, make(keys)), 401, "M_UNKNOWN_TOKEN")


# --- the user claim and a required claim ------------------------------------------------------


@pytest.fixture(scope="module")
def claims_service(start_service: Callable[..., Service], keys: Keys) -> Service:
    return start_service(
        FDPUSH_AUTH_MODE="jwt",
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(keys.ec_pem),
        FDPUSH_AUTH_USER_CLAIM="idNummer",
        FDPUSH_AUTH_REQUIRE_CLAIM=f"professionOID={INSURED_OID}",
    )


def insured(keys: Keys, kvnr: str | None, sub: str | None = None, **claims: Any) -> str:
    claims.setdefault("professionOID", INSURED_OID)
    return sign(keys.ec, "ES256", claims_for(sub, idNummer=kvnr, **claims))


def test_user_claim_picks_the_user(claims_service: Service, keys: Keys) -> None:
    """With FDPUSH_AUTH_USER_CLAIM=idNummer the user is ``idNummer``, whatever ``sub`` says."""
    kvnr, other_kvnr, sub = new_user(), new_user(), new_user()
    body = registration()
    response = httpx.post(
        claims_service.base_url + PUSHERS + "/set",
        json=body,
        headers={"Authorization": f"Bearer {insured(keys, kvnr, sub)}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text

    same_user = call(claims_service, insured(keys, kvnr, new_user())).json()["pushers"]
    assert [p["pushkey"] for p in same_user] == [body["pushkey"]]
    same_sub = call(claims_service, insured(keys, other_kvnr, sub)).json()["pushers"]
    assert same_sub == []


@pytest.mark.parametrize("kvnr", [None, 4711, "", ["X123"]], ids=["absent", "int", "empty", "list"])
def test_token_without_a_usable_user_claim_is_forbidden(
    claims_service: Service, keys: Keys, kvnr: Any
) -> None:
    assert_error(call(claims_service, insured(keys, kvnr)), 403, "M_FORBIDDEN")


@pytest.mark.parametrize(
    "value",
    [INSURED_OID, ["1.2.276.0.76.4.30", INSURED_OID], [INSURED_OID]],
    ids=["exact", "in-list", "single-list"],
)
def test_required_claim_present(claims_service: Service, keys: Keys, value: Any) -> None:
    """FDPUSH_AUTH_REQUIRE_CLAIM passes when the claim equals the value or is a list holding it."""
    response = call(claims_service, insured(keys, new_user(), professionOID=value))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "value",
    [
        None,
        "1.2.276.0.76.4.30",
        INSURED_OID + ".1",
        "x " + INSURED_OID,
        ["1.2.276.0.76.4.30"],
        [],
        {"oid": INSURED_OID},
        49,
    ],
    ids=["absent", "other", "longer", "substring", "list-without", "empty-list", "object", "int"],
)
def test_required_claim_missing_or_wrong_is_forbidden(
    claims_service: Service, keys: Keys, value: Any
) -> None:
    """A valid token without the required claim value is 403 M_FORBIDDEN, on reads and writes."""
    token = insured(keys, new_user(), professionOID=value)
    assert_error(call(claims_service, token), 403, "M_FORBIDDEN")
    body = registration()
    response = httpx.post(
        claims_service.base_url + PUSHERS + "/set",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert_error(response, 403, "M_FORBIDDEN")
    assert stored(claims_service, body["pushkey"]) == 0


def test_claims_are_checked_after_the_signature(claims_service: Service, keys: Keys) -> None:
    """A forged token with all the right claims is still 401, not 403 or 200."""
    token = sign(keys.ec_other, "ES256", claims_for(idNummer=new_user(), professionOID=INSURED_OID))
    assert_error(call(claims_service, token), 401, "M_UNKNOWN_TOKEN")


# --- dev mode ---------------------------------------------------------------------------------


def test_dev_mode_is_announced_loudly(service: Service) -> None:
    """A service with dev authentication says so in its log, as a warning."""
    warnings = [
        line
        for line in service.logs().splitlines()
        if "WARNING" in line and "DEV AUTHENTICATION" in line
    ]
    assert warnings, service.logs()


def test_jwt_services_do_not_announce_dev_mode(ec_service: Service) -> None:
    assert "DEV AUTHENTICATION" not in ec_service.logs()


def test_cli_token_works_against_the_service(service: Service) -> None:
    """``fdpush token USER`` (same settings) prints a token the service accepts as USER."""
    user = new_user()
    result = subprocess.run(
        [sys.executable, "-m", "fdpush", "token", user],
        env=service.env,
        cwd=service.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = result.stdout.strip()
    body = registration()
    response = httpx.post(
        service.base_url + "/pushers/v1/set",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    with service.client(user) as http:
        assert [p["pushkey"] for p in http.get(PUSHERS).json()["pushers"]] == [body["pushkey"]]


BAD_DEV_TOKENS: dict[str, Callable[[Keys], str]] = {
    "wrong-secret": lambda k: dev_token(new_user(), secret=DEV_SECRET + "x"),
    "expired": lambda k: dev_token(new_user(), ttl=-3600),
    "no-exp": lambda k: jwt.encode({"sub": new_user()}, DEV_SECRET, "HS256"),
    "alg-none": lambda k: forged("none", claims_for()),
    "es256": lambda k: sign(k.ec, "ES256", claims_for()),
    "hs512-same-secret": lambda k: jwt.encode(claims_for(), DEV_SECRET, "HS512"),
}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("make", BAD_DEV_TOKENS.values(), ids=BAD_DEV_TOKENS.keys())
def test_bad_dev_tokens_are_refused(
    service: Service, keys: Keys, make: Callable[[Keys], str]
) -> None:
    assert_error(call(service, make(keys)), 401, "M_UNKNOWN_TOKEN")


# --- every client endpoint needs a token ------------------------------------------------------

CHANNEL_CHANGE = {"channels": [{"id": "erp.communication.new", "status": "enabled"}]}


def client_endpoints(pushkey: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, body) of every client endpoint, seed and current layout."""
    encoded = quote(pushkey, safe="")
    return [
        ("GET", "/pushers/v1", None),
        ("POST", "/pushers/v1/set", registration()),
        ("GET", "/channels/v1", None),
        ("GET", f"/channels/v1/{encoded}", None),
        ("POST", f"/channels/v1/{encoded}", CHANNEL_CHANGE),
        ("GET", "/push/v1/pushers", None),
        ("POST", "/push/v1/pushers/set", registration()),
        ("GET", "/push/v1/channels", None),
        ("GET", f"/push/v1/channels/{encoded}", None),
        ("POST", f"/push/v1/channels/{encoded}", CHANNEL_CHANGE),
    ]


@pytest.mark.parametrize(
    ("authorization", "errcode"),
    [
        (None, "M_MISSING_TOKEN"),
        ("Bearer not-a-token", "M_UNKNOWN_TOKEN"),
        (f"Bearer {dev_token('someone', ttl=-3600)}", "M_UNKNOWN_TOKEN"),
    ],
    ids=["no-token", "garbage-token", "expired-token"],
)
def test_every_client_endpoint_requires_a_token(
    service: Service, authorization: str | None, errcode: str
) -> None:
    """No client endpoint of either layout answers 2xx without a valid token, nor changes state."""
    user = new_user()
    own = registration(pushkey=f"pk/{new_user()}+x==")
    with service.client(user) as http:
        assert http.post("/push/v1/pushers/set", json=own).status_code == 200
        before = http.get("/push/v1/channels/" + quote(own["pushkey"], safe="")).json()
    headers = {"Authorization": authorization} if authorization else {}
    endpoints = client_endpoints(own["pushkey"])
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as anonymous:
        for method, path, body in endpoints:
            response = anonymous.request(method, path, json=body)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["errcode"] == errcode, (method, path)
    written = [body["pushkey"] for _, _, body in endpoints if body and "pushkey" in body]
    for pushkey in written:
        assert stored(service, pushkey) == 0
    with service.client(user) as http:
        assert http.get("/push/v1/channels/" + quote(own["pushkey"], safe="")).json() == before
        # The same requests with the owner's token succeed: it was the token that failed.
        for method, path, body in endpoints:
            response = http.request(method, path, json=body)
            assert 200 <= response.status_code < 300, (method, path, response.text)


def test_authentication_comes_before_parsing(service: Service) -> None:
    """Without a token, even a body that is not JSON gets 401, not 400."""
    response = httpx.post(
        service.base_url + "/push/v1/pushers/set", content=b"{not json", timeout=30
    )
    assert_error(response, 401, "M_MISSING_TOKEN")


def test_a_remembered_token_still_expires(start_service: Callable[..., Service]) -> None:
    """Verified tokens are remembered for a while, but never past their ``exp``."""
    service = start_service(FDPUSH_AUTH_JWT_LEEWAY_SECONDS="0")
    expires = int(time.time()) + 2
    token = jwt.encode({"sub": new_user(), "exp": expires}, DEV_SECRET, "HS256")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=10) as client:
        assert client.get(PUSHERS).status_code == 200
        assert client.get(PUSHERS).status_code == 200  # the remembered token
        while time.time() < expires + 1:  # past exp (whole seconds) by a margin
            time.sleep(0.1)
        response = client.get(PUSHERS)
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"
