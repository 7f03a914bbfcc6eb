"""The Client-FD Push API: one set of handlers, mounted in both published layouts.

Handlers are thin: authenticate, parse, call one method of the domain layer, shape the answer.
Most of them take the request and the path's parameters straight (``_DirectRoute``) and
authenticate first thing; those with query parameters have FastAPI check them, and
authenticate through a dependency, so that a caller without a token learns nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from fdpush.domain.channels import ChannelService
from fdpush.domain.errors import NotFound
from fdpush.domain.history import HistoryService
from fdpush.domain.pushers import PusherService
from fdpush.web.auth import Authenticator
from fdpush.web.errors import Unrecognized
from fdpush.web.ratelimit import UserRateLimiter
from fdpush.web.responses import JsonResponse
from fdpush.web.schemas import (
    ChannelsBody,
    ChannelsResponse,
    EmptyResponse,
    ErrorBody,
    MessageResponse,
    MessagesResponse,
    PusherSetBody,
    PushersResponse,
    RateLimitedBody,
    documented_body,
    parse_channel_changes,
    parse_json_object,
    parse_pusher_set,
    plain_text,
)

__all__ = [
    "LAYOUTS",
    "SECURITY_SCHEME",
    "SECURITY_SCHEME_OBJECT",
    "ClientApi",
    "client_router",
    "request_body_models",
]


@dataclass(frozen=True, slots=True)
class ClientApi:
    """What the client API's handlers need, kept on ``app.state.client_api``."""

    pushers: PusherService
    channels: ChannelService
    authenticator: Authenticator
    limiter: UserRateLimiter
    encryption_required: bool
    history: HistoryService
    pseudonym: Callable[[str], str]  # a user id as it is stored (KeyVault.pseudonym)
    pushkey_index: Callable[[str], str]  # a pushkey as it is looked up (KeyVault.pushkey_index)


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    pushers: str
    pushers_set: str
    channels: str
    device_channels: str
    device_history: str
    history_message: str


# The seed API (Client-FD Push API 1.0.0 as first published) and the current one.
# ``{notification_id:path}``: an identifier may contain "/" (a FHIR reference such as
# "Task/160.000.000.001.01"); the device history route comes first, so "device/…" is a device.
LAYOUTS = (
    Layout(
        "seed",
        "/pushers/v1",
        "/pushers/v1/set",
        "/channels/v1",
        "/channels/v1/{pushkey:path}",
        "/history/v1/device/{pushkey:path}",
        "/history/v1/{notification_id:path}",
    ),
    Layout(
        "current",
        "/push/v1/pushers",
        "/push/v1/pushers/set",
        "/push/v1/channels",
        "/push/v1/channels/{pushkey:path}",
        "/push/v1/history/device/{pushkey:path}",
        "/push/v1/history/{notification_id:path}",
    ),
)

# The bearer scheme, documented in the OpenAPI document only: as a FastAPI ``Security``
# dependency it cost every request a dependency (and a scope check) more than it needs.
SECURITY_SCHEME = "AccessToken"
SECURITY_SCHEME_OBJECT = {
    "type": "http",
    "scheme": "bearer",
    "description": "The identity provider's access token",
}
_PUSHKEY = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _api(request: Request) -> ClientApi:
    api: ClientApi = request.app.state.client_api
    return api


def _user(request: Request) -> str:
    """The caller's stored user id (its pseudonym), or the Matrix error of a failed check."""
    api = _api(request)
    if api.authenticator.mode == "zeta":
        user_id = api.authenticator.authenticate_zeta(
            request.headers.get("zeta-user-info"),
            request.client.host if request.client is not None else None,
        )
    else:
        user_id = api.authenticator.authenticate(request.headers.get("authorization"))
    return api.pseudonym(user_id)  # from here on only the pseudonym (ZETA A_29957)


async def _writing_user(request: Request) -> str:
    """The caller, counted against the per-user rate limit of writes."""
    user = _user(request)
    await _api(request).limiter.hit(user)
    return user


async def current_user(request: Request) -> str:
    return _user(request)


User = Annotated[str, Depends(current_user)]


class _DirectRoute(APIRoute):
    """A route whose endpoint is called with the request and the path's parameters (strings),
    past FastAPI's per-request dependency solving and parameter checks: the endpoint reads and
    checks everything itself. The OpenAPI document still comes from its signature. (On the
    API's hottest reads that solving was about a sixth of the process's CPU.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle


def _device(request: Request, pushkey: str) -> str:
    """The device a pushkey from the path names, as its keyed index (only the index is stored);
    a pushkey that could name no device is not found."""
    if not _PUSHKEY.fullmatch(pushkey) or len(pushkey.encode("utf-8", "replace")) > 512:
        raise NotFound("No pusher with this pushkey")
    return _api(request).pushkey_index(pushkey)


async def get_pushers(request: Request) -> JsonResponse:
    pushers = await _api(request).pushers.list(_user(request))
    return JsonResponse(
        {
            "pushers": [
                {
                    "pushkey": p.pushkey,
                    "kind": p.kind,
                    "app_id": p.app_id,
                    "app_display_name": p.app_display_name,
                    "device_display_name": p.device_display_name,
                    # The spec types profile_tag as a string: omitted when unset, never null.
                    **({} if p.profile_tag is None else {"profile_tag": p.profile_tag}),
                    "lang": p.lang,
                    "data": p.data,
                }
                for p in pushers
            ]
        }
    )


async def set_pusher(request: Request) -> JsonResponse:
    user = await _writing_user(request)
    api = _api(request)
    raw = parse_json_object(await request.body())
    parsed = parse_pusher_set(raw, encryption_required=api.encryption_required)
    if isinstance(parsed, tuple):
        await api.pushers.delete(user, *parsed)
    else:
        await api.pushers.register(user, parsed)
    return JsonResponse({})


async def get_channels(request: Request) -> JsonResponse:
    _user(request)
    catalog = _api(request).channels.catalog()
    return JsonResponse({"channels": [{"id": c.id, "status": c.status} for c in catalog]})


async def get_device_channels(request: Request, pushkey: str) -> JsonResponse:
    user = _user(request)
    states = await _api(request).channels.device_channels(user, _device(request, pushkey))
    return JsonResponse({"channels": [{"id": c.id, "status": c.status} for c in states]})


async def set_device_channels(request: Request, pushkey: str) -> JsonResponse:
    user = await _writing_user(request)
    device = _device(request, pushkey)
    changes = parse_channel_changes(parse_json_object(await request.body()))
    await _api(request).channels.update(user, device, changes)
    return JsonResponse({})


def _history(request: Request) -> HistoryService:
    history = _api(request).history
    if not history.enabled:
        raise Unrecognized("This service keeps no notification history")
    return history


async def get_device_history(
    request: Request,
    user: User,
    pushkey: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(alias="from", max_length=80)] = None,
) -> JsonResponse:
    page = await _history(request).device(
        user,
        _device(request, pushkey),
        limit=limit,
        cursor=None if cursor is None else plain_text("from", cursor),
    )
    body: dict[str, Any] = {
        "messages": [{"identifier": m.identifier, "payload": m.payload} for m in page.messages]
    }
    if page.next_batch is not None:
        body["next_batch"] = page.next_batch
    return JsonResponse(body)


async def get_history_message(request: Request, notification_id: str) -> JsonResponse:
    user = _user(request)
    message = await _history(request).message(user, plain_text("notification_id", notification_id))
    return JsonResponse({"identifier": message.identifier, "payload": message.payload})


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    401: {"model": ErrorBody, "description": "Missing or unrecognised access token"},
    403: {"model": ErrorBody, "description": "The token's holder may not use this service"},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    413: {"model": ErrorBody, "description": "Body too large"},
    429: {"model": RateLimitedBody, "description": "Rate limited"},
}
_DEVICE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No pusher of the caller has this pushkey"}
}


def request_body_models() -> list[type[BaseModel]]:
    """Models referenced by the handlers' documented request bodies."""
    return [PusherSetBody, ChannelsBody]


@dataclass(frozen=True, slots=True)
class _Operation:
    path: Callable[[Layout], str]
    method: str
    endpoint: Callable[..., Awaitable[JsonResponse]]
    operation_id: str
    summary: str
    response_model: type[BaseModel]
    responses: dict[int | str, dict[str, Any]]
    body: type[BaseModel] | None = None
    direct: bool = True  # False: FastAPI checks its query parameters (see _DirectRoute)


_OPERATIONS = (
    _Operation(
        lambda lay: lay.pushers, "GET", get_pushers, "getPushers",
        "The caller's pushers", PushersResponse, _ERRORS,
    ),
    _Operation(
        lambda lay: lay.pushers_set, "POST", set_pusher, "postPusher",
        "Create, update (kind 'http') or delete (kind null) a pusher",
        EmptyResponse, _WRITE_ERRORS, PusherSetBody,
    ),
    _Operation(
        lambda lay: lay.channels, "GET", get_channels, "getChannels",
        "The channel catalog with each channel's default status", ChannelsResponse, _ERRORS,
    ),
    _Operation(
        lambda lay: lay.device_channels, "GET", get_device_channels, "getChannelsOfDevice",
        "Every catalog channel with this device's status", ChannelsResponse,
        {**_ERRORS, **_DEVICE_ERRORS},
    ),
    _Operation(
        lambda lay: lay.device_channels, "POST", set_device_channels, "postChannelsOfDevice",
        "Change the named channels of this device", EmptyResponse,
        {**_WRITE_ERRORS, **_DEVICE_ERRORS}, ChannelsBody,
    ),
    _Operation(
        lambda lay: lay.device_history, "GET", get_device_history, "getNotifications",
        "What was sent to this device, newest first (paged with next_batch / from)",
        MessagesResponse, {**_ERRORS, **_DEVICE_ERRORS}, direct=False,
    ),
    _Operation(
        lambda lay: lay.history_message, "GET", get_history_message, "getNotification",
        "One sent notification, by the identifier it carried", MessageResponse,
        {**_ERRORS, 404: {"model": ErrorBody, "description": "No such notification"}},
    ),
)  # fmt: skip


def client_router(base_path: str) -> APIRouter:
    """Both layouts, each under ``base_path``."""
    router = APIRouter()
    for layout in LAYOUTS:
        tags: list[str | Enum] = [f"Client-FD Push API ({layout.name} layout)"]
        for op in _OPERATIONS:
            router.add_api_route(
                base_path + op.path(layout),
                op.endpoint,
                methods=[op.method],
                tags=tags,
                summary=op.summary,
                operation_id=op.operation_id + ("" if layout.name == "current" else "_seed"),
                response_model=op.response_model,
                responses=op.responses,
                openapi_extra={
                    "security": [{SECURITY_SCHEME: []}],
                    **({} if op.body is None else documented_body(op.body)),
                },
                route_class_override=_DirectRoute if op.direct else APIRoute,
            )
    return router
