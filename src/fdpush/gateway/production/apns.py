"""The APNs client of one app: HTTP/2 ``POST /3/device/{pushkey}``, and what APNs' answers mean.

One long-lived HTTP/2 connection pool per app (httpx with h2): APNs treats connection churn as
abuse. Token authentication sends the provider JWT of :class:`ApnsProviderToken`; certificate
authentication presents the app's client certificate in the TLS handshake instead.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from fdpush.gateway.production.config import ApnsApp, ProviderConfig
from fdpush.gateway.production.push import Attempt, Provider, Push
from fdpush.gateway.production.tokens import ApnsProviderToken
from fdpush.gateway.render import render

__all__ = ["MAX_APNS_PAYLOAD", "ApnsSender", "classify_apns", "parse_retry_after"]

MAX_APNS_PAYLOAD = 4096

# A definitive answer that the device token is dead: only these reject a pushkey.
_DEAD = {(410, "Unregistered"), (410, "ExpiredToken"), (400, "BadDeviceToken")}
_AUTH_REFUSED = {"ExpiredProviderToken", "InvalidProviderToken"}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delta form; an HTTP date is read as absent)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def classify_apns(status: int, reason: str, retry_after: float | None = None) -> Attempt:
    """What an APNs answer means for the pushkey and for retrying.

    200 accepted; 410 ``Unregistered``/``ExpiredToken`` and 400 ``BadDeviceToken`` reject the
    pushkey; 403 ``ExpiredProviderToken``/``InvalidProviderToken`` retry with a new token;
    429 (``TooManyRequests`` is per device token, ``TooManyProviderTokenUpdates`` ours), 500 and
    503 are transient; every other answer is a permanent failure of this notification — never
    a rejection.
    """
    if status == 200:
        return Attempt("accepted", status, "")
    if (status, reason) in _DEAD:
        return Attempt("rejected", status, reason)
    if status == 403 and reason in _AUTH_REFUSED:
        return Attempt("retry", status, reason, retry_after, refresh_auth=True)
    if status == 429 or status >= 500:
        return Attempt("retry", status, reason or "provider error", retry_after)
    return Attempt("failed", status, reason or "refused")


def _ssl_context(app: ApnsApp, provider: ProviderConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(provider.ca_file) if provider.ca_file is not None else None
    )
    if app.certificate is not None:
        key = str(app.certificate_key) if app.certificate_key is not None else None
        context.load_cert_chain(str(app.certificate), key)
    return context


class ApnsSender:
    """Sends one app's pushes to APNs (see the module docstring)."""

    provider: Provider = "apns"

    def __init__(
        self,
        app: ApnsApp,
        settings: ProviderConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_token_refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self._app = app
        self._token: ApnsProviderToken | None = None
        self._last_refused = ""
        if app.key_file is not None and app.key_id is not None and app.team_id is not None:
            self._token = ApnsProviderToken(
                app.key_file.read_bytes(),
                app.key_id,
                app.team_id,
                refresh_after=app.token_refresh_minutes * 60,
                clock=clock,
                on_refresh=on_token_refresh,
            )
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            http1=False,
            http2=True,
            verify=_ssl_context(app, settings),
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(
                max_connections=settings.connections_per_app,
                max_keepalive_connections=settings.connections_per_app,
                keepalive_expiry=None,  # long-lived: APNs treats churn as abuse
            ),
        )

    @staticmethod
    def check(app: ApnsApp, settings: ProviderConfig) -> None:
        """Raise ValueError when the app's key or certificate cannot be used."""
        if app.key_file is not None and app.key_id is not None and app.team_id is not None:
            ApnsProviderToken(app.key_file.read_bytes(), app.key_id, app.team_id, refresh_after=0)
        try:
            _ssl_context(app, settings)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{app.app_id}: certificate or CA file: {exc}") from None

    async def send(self, push: Push) -> Attempt:
        """One ``POST /3/device/{pushkey}``; connection trouble and timeouts come back as retry."""
        message = render(push.app_id, push.pushkey, push.prio, push.fields, push.counts)
        assert message is not None  # routed here by the .apns suffix
        headers: dict[str, str] = dict(message["headers"])
        payload: dict[str, Any] = message["payload"]
        if self._app.push_type == "background":
            # Alert-less: the app wakes, decrypts and shows the notification itself. APNs takes
            # background pushes at priority 5 only.
            headers["apns-push-type"] = "background"
            headers["apns-priority"] = "5"
            payload = {**payload, "aps": {"content-available": 1}}
        token = None
        if self._token is not None:
            token = self._token.current()
            headers["authorization"] = f"bearer {token}"
        body = orjson.dumps(payload)
        if len(body) > MAX_APNS_PAYLOAD:
            return Attempt("failed", None, f"payload over {MAX_APNS_PAYLOAD} bytes")
        try:
            response = await self._client.post(
                f"/3/device/{quote(push.pushkey, safe='')}", content=body, headers=headers
            )
        except httpx.TimeoutException:
            return Attempt("retry", None, "timeout")
        except httpx.HTTPError as exc:
            return Attempt("retry", None, f"connection: {type(exc).__name__}")
        reason = ""
        if response.status_code != 200:
            try:
                reason = str(orjson.loads(response.content).get("reason", ""))
            except (orjson.JSONDecodeError, AttributeError):
                reason = ""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        attempt = classify_apns(response.status_code, reason, retry_after)
        if attempt.refresh_auth and token is not None:
            self._last_refused = token
        return attempt

    def auth_refused(self, attempt: Attempt) -> bool:
        """Drop the refused provider token if it may be replaced (not faster than 20 minutes)."""
        if self._token is None:
            return False
        return self._token.refused(self._last_refused)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()
