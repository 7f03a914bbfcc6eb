"""The request id: on every log line of a request, and in its answer's ``X-Request-ID``.

A caller's ``X-Request-ID`` (a proxy's or a Fachdienst's, to follow one call across services)
is taken when it is short and made of safe characters; anything else is replaced by a fresh id,
so a header can neither forge log lines nor flood them.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fdpush.logs import request_id

__all__ = ["HEADER", "RequestIdMiddleware"]

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
_SANE = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")


def _given_or_new(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == _HEADER_KEY:
            if _SANE.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Set the request id for the request's context and echo it in the response.

    The answer to an unexpected error is sent by Starlette's outermost middleware, outside this
    one: its handler (``fdpush.web.errors``) echoes the id itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current = _given_or_new(scope)
        encoded = current.encode("ascii")
        # Not reset afterwards: each request runs in a task of its own, and the server's own
        # line about an unexpected error, written after this returns, carries the id too.
        request_id.set(current)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k != _HEADER_KEY]
                message = {**message, "headers": [*headers, (_HEADER_KEY, encoded)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
