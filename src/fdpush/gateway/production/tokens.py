"""Provider credentials that expire: the APNs provider JWT and the FCM OAuth2 access token.

- :class:`ApnsProviderToken`: an ES256 JWT (``kid`` = key id, ``iss`` = team id, ``iat``),
  reused for ``refresh_after`` seconds (20..55 minutes). APNs refuses a token older than an hour
  (403 ``ExpiredProviderToken``) and one refreshed faster than every 20 minutes (429
  ``TooManyProviderTokenUpdates``), so even a refused token is only replaced when it is at least
  20 minutes old.
- :class:`FcmAccessToken`: a service account's JWT assertion (RS256, signed here with PyJWT)
  exchanged at the account's ``token_uri`` for an access token, cached until shortly before it
  expires; concurrent callers share one exchange.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "FCM_SCOPE",
    "MIN_APNS_REFRESH_SECONDS",
    "ApnsProviderToken",
    "FcmAccessToken",
    "ServiceAccount",
    "TokenError",
]

MIN_APNS_REFRESH_SECONDS = 20 * 60
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_ASSERTION_LIFETIME = 3600
_EXPIRY_MARGIN = 300  # renew an access token this long before it expires


class TokenError(Exception):
    """No access token could be had (the token endpoint failed or refused)."""


class ApnsProviderToken:
    """The provider JWT of one APNs signing key, made anew every ``refresh_after`` seconds."""

    def __init__(
        self,
        key_pem: bytes,
        key_id: str,
        team_id: str,
        *,
        refresh_after: float,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[], None] = lambda: None,
    ) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"APNs key {key_id}: not a PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"APNs key {key_id}: not a P-256 (ES256) key")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._refresh_after = max(refresh_after, MIN_APNS_REFRESH_SECONDS)
        self._clock = clock
        self._on_refresh = on_refresh
        self._token: str | None = None
        self._issued_at = 0.0

    def current(self) -> str:
        """The token to send now (a new one when the current one is due)."""
        now = self._clock()
        if self._token is None or now - self._issued_at >= self._refresh_after:
            self._issued_at = now
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._on_refresh()
        return self._token

    def refused(self, token: str) -> bool:
        """APNs refused ``token`` (403 ``ExpiredProviderToken``/``InvalidProviderToken``).

        Drops it when it is the current one and at least 20 minutes old; True when the next
        :meth:`current` will be a different token.
        """
        if token != self._token:
            return True  # already replaced
        if self._clock() - self._issued_at < MIN_APNS_REFRESH_SECONDS:
            return False
        self._token = None
        return True


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of a Google service-account JSON file that the token exchange needs."""

    client_email: str
    private_key: str
    private_key_id: str
    token_uri: str
    project_id: str

    @classmethod
    def load(cls, path: Path) -> ServiceAccount:
        """Read the JSON file; raises ValueError naming a missing field."""
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        missing = [
            name
            for name in ("client_email", "private_key", "private_key_id", "token_uri")
            if not isinstance(data.get(name), str)
        ]
        if missing:
            raise ValueError(f"{path}: service account without {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: private_key is not a PEM private key ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: private_key is not an RSA key (RS256)")
        return cls(
            client_email=data["client_email"],
            private_key=data["private_key"],
            private_key_id=data["private_key_id"],
            token_uri=data["token_uri"],
            project_id=str(data.get("project_id", "")),
        )


class FcmAccessToken:
    """OAuth2 access tokens for one service account, cached until shortly before expiry."""

    def __init__(
        self,
        account: ServiceAccount,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self._account = account
        self._http = http
        self._clock = clock
        self._on_refresh = on_refresh
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    async def current(self) -> str:
        """A valid access token; raises :class:`TokenError` when none can be had."""
        token = self._token
        if token is not None and self._clock() < self._renew_at:
            return token
        async with self._lock:
            if self._token is not None and self._clock() < self._renew_at:
                return self._token
            self._token, self._renew_at = await self._exchange()
            self._on_refresh()
            return self._token

    def refused(self, token: str) -> bool:
        """FCM refused ``token`` (401): forget it; the next :meth:`current` fetches a new one."""
        if token == self._token:
            self._token = None
        return True

    async def _exchange(self) -> tuple[str, float]:
        now = int(self._clock())
        account = self._account
        assertion = jwt.encode(
            {
                "iss": account.client_email,
                "scope": FCM_SCOPE,
                "aud": account.token_uri,
                "iat": now,
                "exp": now + _ASSERTION_LIFETIME,
            },
            account.private_key,
            algorithm="RS256",
            headers={"kid": account.private_key_id},
        )
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        try:
            response = await self._http.post(account.token_uri, data=form)
        except httpx.HTTPError as exc:
            raise TokenError(f"token endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TokenError(f"token endpoint answered {response.status_code}")
        try:
            body = response.json()
            token, expires_in = str(body["access_token"]), float(body["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("token endpoint answered without access_token/expires_in") from None
        lifetime = max(expires_in - _EXPIRY_MARGIN, expires_in / 2)
        return token, now + lifetime
