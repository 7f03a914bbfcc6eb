"""The internal API: the Fachdienst's business logic tells fdpush that something happened.

``POST /internal/v1/events`` (one event), ``POST /internal/v1/events/batch`` (several, all or
none) → 202 once the events and their notifications are durable; ``GET
/internal/v1/events/{event_id}`` → where each notification stands. Authenticated with
``Authorization: Bearer <FDPUSH_INTERNAL_API_KEY>``; apart from the client API, and optionally
on a listener of its own.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fdpush.domain.errors import InvalidParam
from fdpush.domain.events import EventRequest, EventService
from fdpush.domain.users import UserRequests
from fdpush.web.errors import MissingToken, UnknownToken
from fdpush.web.responses import JsonResponse
from fdpush.web.schemas import (
    ErrorBody,
    documented_body,
    parse_json_object,
    plain_text,
    validate_body,
)

__all__ = ["EventBody", "InternalApi", "internal_api", "internal_router"]

_bearer = HTTPBearer(auto_error=False, description="FDPUSH_INTERNAL_API_KEY")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


@dataclass(frozen=True, slots=True)
class InternalApi:
    """What the internal and admin APIs' handlers need, kept on ``app.state.internal_api``."""

    events: EventService
    users: UserRequests
    pseudonym: Callable[[str], str]  # a user id as it is stored (KeyVault.pseudonym)
    api_key: str | None  # FDPUSH_INTERNAL_API_KEY; None: every call is refused
    max_events_per_batch: int


def internal_api(request: Request) -> InternalApi:
    """The internal API's services, for a handler of ``request``."""
    api: InternalApi = request.app.state.internal_api
    return api


class EventBody(BaseModel):
    """One event: ``payload`` is what the user's app receives: at most 1018 bytes of JSON for an
    encrypted device (the frame), 3072 for a plain one."""

    model_config = ConfigDict(strict=True, extra="forbid")
    user_id: Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_control)]
    channel: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control)]
    payload: dict[str, Any]
    prio: Literal["high", "low"] = "high"
    identifier: (
        Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_control)] | None
    ) = None


class EventBatchBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    events: list[EventBody]


class EmitAnswer(BaseModel):
    event_id: str
    notifications: int


class EmitBatchAnswer(BaseModel):
    results: list[EmitAnswer]


class EventCounts(BaseModel):
    pending: int
    delivered: int
    rejected: int
    failed: int


class EventStatusAnswer(BaseModel):
    event_id: str
    channel: str
    created: str
    counts: EventCounts


async def _internal_caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    expected = internal_api(request).api_key
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise MissingToken("Missing internal API key")
    if expected is None:
        raise UnknownToken("The internal API is disabled: FDPUSH_INTERNAL_API_KEY is not set")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnknownToken("Unrecognised internal API key")


Caller = Annotated[None, Depends(_internal_caller)]


def _event(pseudonym: Callable[[str], str], body: EventBody) -> EventRequest:
    return EventRequest(
        # Only the pseudonym is stored (ZETA A_29957).
        user_id=pseudonym(body.user_id),
        channel=body.channel,
        payload=body.payload,
        prio=body.prio,
        identifier=body.identifier,
    )


async def post_event(request: Request, _caller: Caller) -> JsonResponse:
    body: EventBody = validate_body(EventBody, parse_json_object(await request.body()))
    api = internal_api(request)
    (result,) = await api.events.emit([_event(api.pseudonym, body)])
    return JsonResponse(
        {"event_id": result.event_id, "notifications": result.notifications}, status_code=202
    )


async def post_event_batch(request: Request, _caller: Caller) -> JsonResponse:
    raw = parse_json_object(await request.body())
    api = internal_api(request)  # once, not once per event
    limit = api.max_events_per_batch
    if isinstance(raw.get("events"), list) and not 1 <= len(raw["events"]) <= limit:
        raise InvalidParam(f"events: 1 to {limit} events per batch")
    body: EventBatchBody = validate_body(EventBatchBody, raw)
    results = await api.events.emit([_event(api.pseudonym, e) for e in body.events])
    return JsonResponse(
        {"results": [{"event_id": r.event_id, "notifications": r.notifications} for r in results]},
        status_code=202,
    )


async def get_event(request: Request, _caller: Caller, event_id: str) -> JsonResponse:
    status = await internal_api(request).events.status(plain_text("event_id", event_id))
    return JsonResponse(
        {
            "event_id": status.event_id,
            "channel": status.channel,
            "created": status.created,
            "counts": status.counts,
        }
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid event"},
    401: {"model": ErrorBody, "description": "Missing or wrong internal API key"},
}


def internal_router() -> APIRouter:
    router = APIRouter(tags=["Internal API (the Fachdienst's business logic)"])
    router.add_api_route(
        "/internal/v1/events",
        post_event,
        methods=["POST"],
        status_code=202,
        summary="Emit one event",
        response_model=EmitAnswer,
        responses=_ERRORS,
        openapi_extra=documented_body(EventBody),
    )
    router.add_api_route(
        "/internal/v1/events/batch",
        post_event_batch,
        methods=["POST"],
        status_code=202,
        summary="Emit several events at once (all or none)",
        response_model=EmitBatchAnswer,
        responses=_ERRORS,
        openapi_extra=documented_body(EventBatchBody),
    )
    router.add_api_route(
        "/internal/v1/events/{event_id}",
        get_event,
        methods=["GET"],
        summary="Where an event's notifications stand",
        response_model=EventStatusAnswer,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No such event"}},
    )
    return router


def internal_body_models() -> list[type[BaseModel]]:
    return [EventBody, EventBatchBody]
