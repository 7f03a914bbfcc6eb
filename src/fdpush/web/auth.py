"""Who is calling: the user id from a verified bearer token, or from the ZETA PEP.

``jwt`` mode verifies the identity provider's tokens against a PEM public key (EC P-256 → ES256,
RSA → RS256/PS256) or a JWKS file; ``dev`` mode takes HS256 tokens signed with a shared secret
(``fdpush token USER_ID`` prints one). ``exp`` is always required. ``zeta`` mode takes the
``ZETA-User-Info`` header (Base64URL of JSON; the user id is ``identifier``) that the ZETA PEP
sets after validating the app's token — only from the PEP: from one of
``FDPUSH_AUTH_ZETA_TRUSTED_PROXIES``, or over the client listener's required client certificates.

A token that passed every check is remembered (by its SHA-256, for at most a minute and never
past its ``exp``), so an app's requests in a row cost one signature check, not one each.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections import OrderedDict
from ipaddress import ip_address
from typing import Any

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fdpush.config import ConfigError, Settings
from fdpush.domain.errors import Forbidden
from fdpush.web.errors import MissingToken, UnknownToken

__all__ = ["Authenticator", "issue_dev_token"]

log = logging.getLogger(__name__)

_ASYMMETRIC = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_USER_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
MAX_TOKEN_LENGTH = 16 * 1024
VERIFIED_TOKENS_KEPT = 10_000
VERIFIED_TOKEN_SECONDS = 60.0


def _load_public_key(pem: bytes) -> tuple[Any, list[str]]:
    try:
        key: Any = load_pem_public_key(pem)
    except ValueError:
        key = x509.load_pem_x509_certificate(pem).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, ["ES256"]
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256", "PS256"]
    raise ConfigError(
        "FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE: the key must be EC P-256 (ES256) or RSA (RS256/PS256)"
    )


class Authenticator:
    """Turns an ``Authorization`` header into a user id, or raises the matching Matrix error."""

    def __init__(self, settings: Settings) -> None:
        settings.check_auth()
        self._mode = settings.auth_mode
        self._issuer = settings.auth_jwt_issuer
        self._audience = settings.auth_jwt_audience
        self._leeway = settings.auth_jwt_leeway_seconds
        self._user_claim = settings.auth_user_claim
        self._require = settings.auth_require_claim
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: jwt.PyJWKSet | None = None
        # SHA-256 of a verified token -> (user id, until when it may be taken without checks)
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._trusted_proxies = settings.auth_zeta_trusted_proxies
        if self._mode == "zeta":
            return
        if self._mode == "dev":
            assert settings.auth_dev_secret is not None
            self._key = settings.auth_dev_secret.get_secret_value().encode()
            self._algorithms = ["HS256"]
        elif settings.auth_jwks_file is not None:
            try:
                self._jwks = jwt.PyJWKSet.from_json(settings.auth_jwks_file.read_text())
            except (jwt.PyJWKSetError, ValueError) as exc:
                raise ConfigError(f"FDPUSH_AUTH_JWKS_FILE: not a usable JWKS ({exc})") from None
            if any(k.algorithm_name not in _ASYMMETRIC for k in self._jwks.keys):
                raise ConfigError("FDPUSH_AUTH_JWKS_FILE: only asymmetric keys are accepted")
        else:
            assert settings.auth_jwt_public_key_file is not None
            try:
                self._key, self._algorithms = _load_public_key(
                    settings.auth_jwt_public_key_file.read_bytes()
                )
            except ValueError:
                raise ConfigError(
                    "FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE: not a PEM public key or certificate"
                ) from None

    @property
    def mode(self) -> str:
        return self._mode

    def authenticate_zeta(self, user_info: str | None, peer: str | None) -> str:
        """The ``identifier`` of the PEP's ``ZETA-User-Info`` header, from the PEP only."""
        if self._trusted_proxies and not self._from_pep(peer):
            log.info("ZETA-User-Info refused: the request did not come from a trusted proxy")
            raise UnknownToken("This service accepts requests only through the ZETA PEP")
        if not user_info:
            raise MissingToken("Missing ZETA-User-Info")
        text = user_info.strip()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            info = orjson.loads(raw)
        except (binascii.Error, ValueError):
            raise UnknownToken("Unrecognised ZETA-User-Info") from None
        user_id = info.get("identifier") if isinstance(info, dict) else None
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise UnknownToken("ZETA-User-Info carries no usable identifier")
        return user_id

    def _from_pep(self, peer: str | None) -> bool:
        try:
            address = ip_address(peer or "")
        except ValueError:
            return False
        return any(address in network for network in self._trusted_proxies)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            return self._key, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._jwks.keys
        if kid is None and len(keys) == 1:
            chosen = keys[0]
        else:
            matching = [k for k in keys if k.key_id == kid]
            if not matching:
                raise UnknownToken("Token signed by an unknown key")
            chosen = matching[0]
        return chosen.key, [chosen.algorithm_name]

    def authenticate(self, authorization: str | None) -> str:
        if not authorization:
            raise MissingToken("Missing access token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise MissingToken("Missing access token (expected 'Authorization: Bearer <token>')")
        if len(token) > MAX_TOKEN_LENGTH:
            raise UnknownToken("Unrecognised access token")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = time.time()
        known = self._verified.get(digest)
        if known is not None:
            if known[1] > now:
                return known[0]
            del self._verified[digest]
        user_id, expires = self._verify(token)
        self._remember(digest, user_id, min(expires, now + VERIFIED_TOKEN_SECONDS))
        return user_id

    def _remember(self, digest: bytes, user_id: str, until: float) -> None:
        self._verified[digest] = (user_id, until)
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)  # the oldest

    def _verify(self, token: str) -> tuple[str, float]:
        """The user id of a token that passes every check, and its ``exp``."""
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            log.info("token refused: %s", type(exc).__name__)
            raise UnknownToken("Unrecognised access token") from None
        if self._require is not None:
            name, expected = self._require
            value = claims.get(name)
            if not (value == expected or (isinstance(value, list) and expected in value)):
                raise Forbidden("This token's holder may not use this service")
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise Forbidden(f"Token carries no usable {self._user_claim!r} claim")
        return user_id, float(claims["exp"])


def issue_dev_token(secret: str, user_id: str, ttl_seconds: int = 86400, claim: str = "sub") -> str:
    """An HS256 token for dev authentication (never for production)."""
    now = int(time.time())
    claims = {claim: user_id, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")
