"""The FCM HTTP v1 client of one app: ``POST /v1/projects/{project}/messages:send``.

Messages are FCM ``data`` messages (string values only) with ``android.priority`` ``HIGH`` or
``NORMAL``; the app's messaging service decrypts them. The Bearer token is the service
account's OAuth2 access token (:class:`FcmAccessToken`). One long-lived HTTP/2 connection pool
per app.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from fdpush.gateway.production.apns import parse_retry_after
from fdpush.gateway.production.config import FcmApp, ProviderConfig
from fdpush.gateway.production.push import Attempt, Provider, Push
from fdpush.gateway.production.tokens import FcmAccessToken, ServiceAccount, TokenError
from fdpush.gateway.render import render

__all__ = ["MAX_FCM_MESSAGE", "FcmSender", "classify_fcm", "fcm_error_code"]

MAX_FCM_MESSAGE = 4096
_TRANSIENT = {"UNAVAILABLE", "INTERNAL"}


def fcm_error_code(body: bytes) -> str:
    """The FCM ``errorCode`` of an error answer (else its ``error.status``; "" when neither)."""
    try:
        error: dict[str, Any] = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    status = error.get("status")
    return status if isinstance(status, str) else ""


def classify_fcm(
    status: int, code: str, retry_after: float | None = None, *, quota_backoff: float = 60.0
) -> Attempt:
    """What an FCM answer means for the pushkey and for retrying.

    200 accepted; 404 ``UNREGISTERED`` rejects the pushkey; 429 ``QUOTA_EXCEEDED`` throttles the
    whole app for at least ``quota_backoff`` seconds (FCM: "at least one minute"); 503
    ``UNAVAILABLE`` and 500 ``INTERNAL`` are transient; 401 retries with a new access token;
    ``INVALID_ARGUMENT``, ``SENDER_ID_MISMATCH`` and anything else are permanent failures of
    this notification — never a rejection.
    """
    if status == 200:
        return Attempt("accepted", status, "")
    if code == "UNREGISTERED":
        return Attempt("rejected", status, code)
    if code == "QUOTA_EXCEEDED" or status == 429:
        wait = max(retry_after or 0.0, quota_backoff)
        return Attempt("retry", status, code or "throttled", wait, app_wide=True)
    if code in _TRANSIENT or status >= 500:
        return Attempt("retry", status, code or "provider error", retry_after)
    if status == 401 and code in ("UNAUTHENTICATED", ""):
        return Attempt("retry", status, code or "UNAUTHENTICATED", refresh_auth=True)
    return Attempt("failed", status, code or "refused")


class FcmSender:
    """Sends one app's pushes to FCM (see the module docstring)."""

    provider: Provider = "fcm"

    def __init__(
        self,
        app: FcmApp,
        settings: ProviderConfig,
        *,
        quota_backoff: float = 60.0,
        clock: Callable[[], float] = time.time,
        on_token_refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self._account = ServiceAccount.load(app.service_account)
        self._path = f"/v1/projects/{app.project_id}/messages:send"
        self._quota_backoff = quota_backoff
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file is not None else None
        )
        pool = httpx.Limits(
            max_connections=settings.connections_per_app,
            max_keepalive_connections=settings.connections_per_app,
            keepalive_expiry=None,
        )
        timeout = httpx.Timeout(settings.timeout_seconds)
        self._client = httpx.AsyncClient(
            base_url=settings.url, http2=True, verify=context, timeout=timeout, limits=pool
        )
        self._token_client = httpx.AsyncClient(http2=True, verify=context, timeout=timeout)
        self._token = FcmAccessToken(
            self._account, self._token_client, clock=clock, on_refresh=on_token_refresh
        )
        self._last_refused = ""

    @staticmethod
    def check(app: FcmApp) -> None:
        """Raise ValueError when the app's service account cannot be used."""
        ServiceAccount.load(app.service_account)

    async def send(self, push: Push) -> Attempt:
        """One ``messages:send``; connection trouble, timeouts and token trouble come back as
        retry."""
        message = render(push.app_id, push.pushkey, push.prio, push.fields, push.counts)
        assert message is not None  # routed here by the .firebase suffix
        body = orjson.dumps(message)
        if len(orjson.dumps(message["message"]["data"])) > MAX_FCM_MESSAGE:
            return Attempt("failed", None, f"data over {MAX_FCM_MESSAGE} bytes")
        try:
            token = await self._token.current()
        except TokenError as exc:
            return Attempt("retry", None, str(exc))
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            response = await self._client.post(self._path, content=body, headers=headers)
        except httpx.TimeoutException:
            return Attempt("retry", None, "timeout")
        except httpx.HTTPError as exc:
            return Attempt("retry", None, f"connection: {type(exc).__name__}")
        code = "" if response.status_code == 200 else fcm_error_code(response.content)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        attempt = classify_fcm(
            response.status_code, code, retry_after, quota_backoff=self._quota_backoff
        )
        if attempt.refresh_auth:
            self._last_refused = token
        return attempt

    def auth_refused(self, attempt: Attempt) -> bool:
        """Forget the refused access token; the next attempt fetches a new one."""
        return self._token.refused(self._last_refused)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()
        await self._token_client.aclose()
