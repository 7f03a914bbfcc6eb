"""Helpers for the delivery tests: notifications to send, and a scripted peer.

Most tests send to the development Push Gateway (``fdpush.gateway``). For the answers it never
gives — a 200 that is not the batch result, a redirect, a ``Retry-After`` date, results with odd
``error`` values — :class:`ScriptedGateway` is a small HTTPS server over the same mutual TLS
that answers what the test tells it and records what it was sent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn

from fdpush.delivery.gateway import EncodedItem
from fdpush.gateway import TestPki
from fdpush.gateway.runner import bind_socket
from fdpush.gateway_api import (
    BatchNotificationResponse,
    Device,
    EncryptedNotification,
    NotificationResult,
    PlainNotification,
    encode,
)

APNS_APP = "de.gematik.erezept.apns"


# --- notifications -----------------------------------------------------------------------------


def new_pushkey() -> str:
    """A fresh pushkey, with the characters real ones contain."""
    return f"pk/{uuid.uuid4().hex}+="


def ciphertext() -> str:
    """A ciphertext of the spec's shape: Base64 of 12 + 1024 + 16 random bytes (1404 chars)."""
    return base64.b64encode(os.urandom(1052)).decode()


def device(pushkey: str | None = None, **data: Any) -> Device:
    """A ``Device`` (fresh pushkey unless given); ``data`` are custom ``data`` keys."""
    return {
        "app_id": APNS_APP,
        "pushkey": pushkey or new_pushkey(),
        "pushkey_ts": 1750000000,
        "data": {"format": "event_id_only", **data},
        "tweaks": {},
    }


def encrypted(
    pushkey: str | None = None,
    *,
    item_id: str | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> EncodedItem:
    """An encrypted notification to one device, as fdpush sends one (``fields`` replace or
    add fields, whether the spec allows the result or not; ``data``: custom ``data`` keys)."""
    notification: EncryptedNotification = {
        "ciphertext": ciphertext(),
        "time_message_encrypted": "2025-06",
        "key_identifier": str(uuid.uuid4()),
        "prio": "high",
        "device": device(pushkey, **(data or {})),
    }
    notification.update(fields)
    return EncodedItem.of({"id": item_id or uuid.uuid4().hex, "notification": notification})


def plain(pushkey: str | None = None, *, item_id: str | None = None) -> EncodedItem:
    """A plain notification to one device, as fdpush sends one."""
    item_id = item_id or uuid.uuid4().hex
    notification: PlainNotification = {
        "event_id": item_id,
        "prio": "high",
        "content": {"channel": "erp.task.activate", "id": "160.000.000.000.001.02"},
        "devices": [device(pushkey)],
    }
    return EncodedItem.of({"id": item_id, "notification": notification})


def sent(item: EncodedItem) -> dict[str, Any]:
    """The item's notification: what the gateway receives."""
    return dict(item.item["notification"])


def pushkey_of(item: EncodedItem) -> str:
    """The one device's pushkey of an item."""
    note: dict[str, Any] = sent(item)
    return str(note["device"]["pushkey"] if item.encrypted else note["devices"][0]["pushkey"])


# --- a scripted peer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the scripted gateway received."""

    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int  # tells connections apart

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Answer:
    """What the scripted gateway answers."""

    status: int = 200
    body: bytes | None = None  # None: success for every item of a batch
    headers: tuple[tuple[str, str], ...] = ()


def all_succeed(request: Seen) -> bytes:
    """The spec's batch answer with ``success`` for every item of ``request``."""
    ids = [item["id"] for item in request.json()["notifications"]]
    results: list[NotificationResult] = [
        {"id": item_id, "status": "success", "rejected": []} for item_id in ids
    ]
    answer: BatchNotificationResponse = {
        "results": results,
        "summary": {"total": len(ids), "successful": len(ids), "failed": 0, "partial": 0},
    }
    return encode(answer)


class ScriptedGateway:
    """An HTTPS peer requiring the PKI's client certificate; answers :attr:`answer`.

    ``answer`` is an :class:`Answer` or a function of the request giving one. ``delay`` stalls
    each answer (seconds). :attr:`seen` lists the requests; :attr:`most_in_flight` is the most
    requests it was handling at once.
    """

    def __init__(self, pki: TestPki) -> None:
        self.answer: Answer | Callable[[Seen], Answer] = Answer()
        self.delay = 0.0
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._socket = bind_socket("127.0.0.1", 0)
        self.url = f"https://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            interface="asgi3",
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key),
            ssl_ca_certs=str(pki.ca_cert),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the scripted gateway did not start")
            time.sleep(0.005)

    @property
    def push_url(self) -> str:
        return f"{self.url}/push/v1/"

    def reset(self) -> None:
        self.answer = Answer()
        self.delay = 0.0
        self.seen.clear()
        self.most_in_flight = 0

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Seen(
            path=scope["path"],
            headers={k.decode(): v.decode() for k, v in scope["headers"]},
            body=body,
            client_port=scope["client"][1],
        )
        self.seen.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.answer(request) if callable(self.answer) else self.answer
        finally:
            self.in_flight -= 1
        content = answer.body if answer.body is not None else all_succeed(request)
        headers = [(b"content-length", str(len(content)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
