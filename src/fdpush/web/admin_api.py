"""The admin API for data-subject requests, beside the internal API and authenticated like it
(``Authorization: Bearer <FDPUSH_INTERNAL_API_KEY>``), on the internal listener.

``GET /internal/v1/users/{user_id}`` (what a support desk sees), ``GET
/internal/v1/users/{user_id}/export`` (everything stored, GDPR Art. 15) and ``DELETE
/internal/v1/users/{user_id}`` (erasure, Art. 17). The same as ``fdpush user show|export|delete``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fdpush.domain.users import UserRequests
from fdpush.web.internal_api import Caller, internal_api
from fdpush.web.responses import JsonResponse
from fdpush.web.schemas import ErrorBody

__all__ = ["admin_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong internal API key"},
}


def _users(request: Request) -> UserRequests:
    return internal_api(request).users


async def show_user(request: Request, _caller: Caller, user_id: str) -> JsonResponse:
    return JsonResponse(await _users(request).show(user_id))


async def export_user(request: Request, _caller: Caller, user_id: str) -> JsonResponse:
    return JsonResponse(await _users(request).export(user_id))


async def erase_user(request: Request, _caller: Caller, user_id: str) -> JsonResponse:
    return JsonResponse({"erased": await _users(request).erase(user_id, actor="admin-api")})


def admin_router() -> APIRouter:
    router = APIRouter(tags=["Admin API (data-subject requests)"])
    for path, endpoint, method, summary in (
        ("/internal/v1/users/{user_id}", show_user, "GET", "A user's devices, channels and "
         "recent notification outcomes (no key material)"),
        ("/internal/v1/users/{user_id}/export", export_user, "GET", "Everything stored about "
         "a user (GDPR Art. 15), key material excluded"),
        ("/internal/v1/users/{user_id}", erase_user, "DELETE", "Erase a user completely "
         "(GDPR Art. 17); an audit record without personal data remains"),
    ):  # fmt: skip
        router.add_api_route(path, endpoint, methods=[method], summary=summary, responses=_ERRORS)
    return router
