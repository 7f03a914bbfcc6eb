"""The mocks' control API: switches and record over HTTP, for tests in another process.

Each mock answers, on its own HTTP/2 port and without authentication (it is a test tool):

- ``GET /_mock/received``: what it accepted, oldest first;
- ``POST /_mock/<switch>`` with a JSON body: the same switches as its Python methods
  (``kill``, ``fail_next``, ``goaway_next``, ``latency``, ``reset``); answers ``{"ok": true}``,
  or 400 with ``{"error"}`` for a body it cannot use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from fdpush.testing.h2server import H2Request, H2Response

__all__ = ["CONTROL_PREFIX", "Switch", "control_answer"]

CONTROL_PREFIX = "/_mock/"

Switch = Callable[[dict[str, Any]], None]


def _json(status: int, body: Any) -> H2Response:
    return H2Response(status, orjson.dumps(body), {"content-type": "application/json"})


def control_answer(
    request: H2Request,
    switches: Mapping[str, Switch],
    received: Callable[[], list[dict[str, Any]]],
) -> H2Response:
    """The answer to a ``/_mock/…`` request."""
    name = request.path.removeprefix(CONTROL_PREFIX)
    if request.method == "GET" and name == "received":
        return _json(200, {"received": received()})
    switch = switches.get(name)
    if request.method != "POST" or switch is None:
        return _json(404, {"error": f"no such control: {request.method} {request.path}"})
    try:
        body = orjson.loads(request.body or b"{}")
        if not isinstance(body, dict):
            raise TypeError("the body must be a JSON object")
        switch(body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return _json(400, {"error": f"{type(exc).__name__}: {exc}"})
    return _json(200, {"ok": True})
