"""Route on what was sent: no percent-encoding in a path's literal part.

The server decodes a path before routing, so ``/%69nternal/v1/events`` and
``/internal%2Fv1/events`` would reach the internal API while a proxy that keeps
``/internal/`` (or ``/metrics``) off the public side by prefix lets them through. A literal
route segment never needs encoding, so a ``%`` before the parameter part of the path is
answered like an unknown path. The parameter parts are those of the routers given (the client
and internal APIs; the other routes have none, so any ``%`` in their paths is refused).
Parameters (pushkeys, notification ids) are percent-encoded by design and stay so.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from fdpush.web.errors import Unrecognized, refusal

__all__ = ["RawPathGuard", "parameter_prefixes"]


def parameter_prefixes(*routers: APIRouter) -> tuple[bytes, ...]:
    """The literal part before the first parameter of every route that has one."""
    prefixes = set()
    for router in routers:
        for route in router.routes:
            path = getattr(route, "path", "")
            if "{" in path:
                prefixes.add(path.split("{", 1)[0].encode("ascii"))
    return tuple(sorted(prefixes, key=len, reverse=True))


class RawPathGuard:
    """Answer 404 ``M_UNRECOGNIZED`` (RS API: ``NOT_FOUND``) to a ``%`` in a path outside its
    parameter part."""

    def __init__(self, app: ASGIApp, prefixes: tuple[bytes, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            first = raw.find(b"%")
            if first >= 0 and not any(raw.startswith(p) and first >= len(p) for p in self.prefixes):
                await refusal(scope, Unrecognized("Unrecognized request"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
