"""The ZETA Notification Service's RS API, ``/notification-service/v1``, on the internal listener.

``GET /users/{userId}/channels`` and ``POST /notifications`` for the Fachdienst's backend (a
technical user), over the same fan-out, outbox and delivery as ``/internal/v1``. A sub-app of
its own, so that every answer — also 404 and 405 — has ZETA's error shape
``{"errorCode", "errorDetail"}``. Checks run in the order 401, 400, 422, 403, 404.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fdpush import __version__
from fdpush.config import RsClient
from fdpush.domain.errors import FdPushError
from fdpush.domain.zeta import ALL_CHANNELS, NotificationRequest, RsError, RsService
from fdpush.web.ratelimit import UserRateLimiter
from fdpush.web.responses import JsonResponse
from fdpush.web.schemas import parse_json_object, validate_body
from fdpush.web.zeta_errors import RS_BASE_PATH, rs_error_response, to_rs_error

__all__ = ["RS_BASE_PATH", "RsAccess", "create_rs_app"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,64}")  # visible ASCII, 1-64 characters

log = logging.getLogger(__name__)


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


class UserBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    id_type: Literal["kvnr", "telematik-id"]
    value: Annotated[str, Field(min_length=1, max_length=128)]


class NotificationBody(BaseModel):
    """``POST /notifications``: ``additionalProperties: false`` as in the spec."""

    model_config = ConfigDict(strict=True, extra="forbid")
    user: UserBody
    channel: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control)]
    payload: dict[str, Any]
    prio: Literal["high", "normal"] = "normal"
    reference: (
        Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control)] | None
    ) = None


@dataclass(frozen=True, slots=True)
class RsAccess:
    """Who may call: technical users by client certificate, or the internal API key."""

    clients: tuple[RsClient, ...]
    tls: bool  # the listener requires client certificates: the certificate names the user
    api_key: str | None  # without TLS: this key is one technical user allowed every channel


@dataclass(frozen=True, slots=True)
class _RsApi:
    """What the RS API's handlers need, kept on its app's ``state.rs_api``."""

    service: RsService
    access: RsAccess
    limiter: UserRateLimiter


async def _on_error(request: Request, exc: Exception) -> JsonResponse:
    error = to_rs_error(exc)
    if error.status >= 500 and error.code == "INTERNAL_ERROR":
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path.split("/users/")[0],  # never the user id
            type(exc).__name__,
            exc_info=exc,
        )
    return rs_error_response(error)


def _peer_names(request: Request) -> list[str] | None:
    """The CN and DNS SANs of the client certificate, or None without one."""
    tls = request.scope.get("extensions", {}).get("tls")
    cert = tls.get("client_cert") if isinstance(tls, dict) else None
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return names


async def _technical_user(request: Request) -> RsClient:
    access = _rs_api(request).access
    if access.tls:
        names = _peer_names(request)
        if names is None:
            raise RsError(401, "UNAUTHENTICATED", "A client certificate is required")
        for client in access.clients:
            if client.name in names:
                return client
        raise RsError(403, "FORBIDDEN", "This certificate is not a technical user of this service")
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip() or access.api_key is None:
        raise RsError(401, "UNAUTHENTICATED", "Missing or unrecognised credentials")
    if not hmac.compare_digest(given.strip().encode(), access.api_key.encode()):
        raise RsError(401, "UNAUTHENTICATED", "Missing or unrecognised credentials")
    return ALL_CHANNELS


def _rs_api(request: Request) -> _RsApi:
    api: _RsApi = request.app.state.rs_api
    return api


async def get_channels(request: Request, userId: str) -> JsonResponse:
    client = await _technical_user(request)
    query = request.query_params
    id_type = query.get("id_type")
    if id_type is None:
        raise RsError(400, "INVALID_PARAM", "The parameter 'id_type' is required.")
    include = query.get("include_inactive", "false")
    if include not in ("true", "false"):
        raise RsError(400, "INVALID_PARAM", "include_inactive must be true or false")
    found = await _rs_api(request).service.channels(
        client, id_type, userId, include_inactive=include == "true"
    )
    return JsonResponse(
        {
            "user": {"id_type": id_type, "value": userId},
            "has_registered_devices": True,
            "registered_device_count": found.device_count,
            "channels": [{"id": c, "status": s} for c, s in found.channels],
        }
    )


async def post_notification(request: Request) -> JsonResponse:
    client = await _technical_user(request)
    await _rs_api(request).limiter.hit(client.name)
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise RsError(400, "INVALID_PARAM", "Idempotency-Key must be 1 to 64 visible characters")
    body: NotificationBody = validate_body(
        NotificationBody, parse_json_object(await request.body())
    )
    parsed = NotificationRequest(
        id_type=body.user.id_type,
        value=body.user.value,
        channel=body.channel,
        payload=body.payload,
        prio=body.prio,
        reference=body.reference,
    )
    accepted = await _rs_api(request).service.submit(client, parsed, key)
    return JsonResponse(
        {
            "notification_id": accepted.notification_id,
            "status": accepted.status,
            "channel": accepted.channel,
            "accepted_at": accepted.accepted_at,
        },
        status_code=202,
    )


def create_rs_app(
    service: RsService, access: RsAccess, limiter: UserRateLimiter, *, api_docs: bool
) -> FastAPI:
    """The RS API as an app to mount at :data:`RS_BASE_PATH`."""
    app = FastAPI(
        title="fdpush: ZETA Notification Service RS API",
        version=__version__,
        default_response_class=JsonResponse,
        redirect_slashes=False,
        openapi_url="/openapi.json" if api_docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.rs_api = _RsApi(service, access, limiter)
    handled = (RsError, FdPushError, StarletteHTTPException, RequestValidationError, Exception)
    for exc_class in handled:
        app.add_exception_handler(exc_class, _on_error)
    app.add_api_route(
        "/users/{userId}/channels",
        get_channels,
        methods=["GET"],
        summary="The channels of a user, aggregated over their devices",
        tags=["Channels"],
    )
    app.add_api_route(
        "/notifications",
        post_notification,
        methods=["POST"],
        status_code=202,
        summary="Send a notification to a user's channel",
        tags=["Notifications"],
    )
    return app
