"""An HTTP client for the Client-FD Push API, as an app (or an app's test suite) uses it.

It speaks both published layouts — the current one (``/push/v1/pushers``, …) and the seed one
(``/pushers/v1``, …, with the seed spellings ``initial_key_period`` and ``{"name", "value"}``)
— to any Fachdienst that implements the API, fdpush or another. Every answer other than the
documented success comes back as :class:`ApiError` carrying the Matrix ``errcode``::

    with FachdienstClient("https://fd.example", token=access_token) as fd:
        keyring = Keyring.create()
        fd.register_pusher(app_id="de.example.erezept.apns", pushkey=apns_token,
                           url="https://push.example/push/v1/", keyring=keyring,
                           app_display_name="E-Rezept", device_display_name="iPhone")
        fd.set_channels(apns_token, {"erp.communication.new": "enabled"})

Network failures are httpx's own exceptions (``httpx.TransportError``), untouched.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from fdpush.client.keyring import Keyring

__all__ = [
    "ApiError",
    "Channel",
    "FachdienstClient",
    "HistoryPage",
    "Layout",
    "Message",
    "Pusher",
]

Layout = Literal["current", "seed"]

# Each layout's paths: pushers, pushers/set, channels, a device's channels and history, a message.
_PATHS: dict[Layout, tuple[str, str, str, str, str, str]] = {
    "current": (
        "/push/v1/pushers",
        "/push/v1/pushers/set",
        "/push/v1/channels",
        "/push/v1/channels/{pushkey}",
        "/push/v1/history/device/{pushkey}",
        "/push/v1/history/{identifier}",
    ),
    "seed": (
        "/pushers/v1",
        "/pushers/v1/set",
        "/channels/v1",
        "/channels/v1/{pushkey}",
        "/history/v1/device/{pushkey}",
        "/history/v1/{identifier}",
    ),
}


class ApiError(Exception):
    """The Fachdienst refused a request: its HTTP status and Matrix error.

    ``errcode`` is the answer's ``errcode`` (``M_UNKNOWN`` when the answer had none, e.g. a
    proxy's HTML page); ``retry_after_ms`` is set for 429 ``M_LIMIT_EXCEEDED``.
    """

    def __init__(
        self, status: int, errcode: str, error: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True, slots=True)
class Pusher:
    """One of the caller's pushers as ``GET pushers`` lists it (never with key material)."""

    pushkey: str
    kind: str
    app_id: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel and a status: the catalog default, or a device's state."""

    id: str
    status: str


@dataclass(frozen=True, slots=True)
class Message:
    """A notification from the history: its ``identifier`` and use-case ``payload``."""

    identifier: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Messages newest first; ``next_batch`` continues with older ones (None: no more)."""

    messages: list[Message]
    next_batch: str | None


class FachdienstClient:
    """The Client-FD Push API of one Fachdienst for one user (see the module docstring).

    ``token`` is the bearer token, or a function giving the current one (called per request,
    so an app can refresh it). ``base_path`` goes in front of every path (e.g. ``/client/v1``).
    ``verify`` is httpx's: True (system store), a CA file path, or an ``ssl.SSLContext``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | Callable[[], str],
        layout: Layout = "current",
        base_path: str = "",
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 10.0,
    ) -> None:
        if layout not in _PATHS:
            raise ValueError("layout is 'current' or 'seed'")
        self.layout: Layout = layout
        self._token = token
        self._prefix = base_path.rstrip("/")
        self._http = httpx.Client(base_url=base_url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- pushers ---------------------------------------------------------------------------

    def register_pusher(
        self,
        *,
        app_id: str,
        pushkey: str,
        url: str,
        app_display_name: str,
        device_display_name: str,
        lang: str = "de",
        keyring: Keyring | None = None,
        data: Mapping[str, Any] | None = None,
        profile_tag: str | None = None,
        append: bool = False,
    ) -> None:
        """Create or update the pusher (``app_id``, ``pushkey``) pointing at gateway ``url``.

        With a ``keyring`` its encryption block goes along (in this layout's spelling) and,
        once the Fachdienst has accepted it, the keyring forgets its iss. ``data`` adds custom
        keys beside ``url`` (the Fachdienst forwards them to the gateway).
        """
        body: dict[str, Any] = {
            "kind": "http",
            "app_id": app_id,
            "pushkey": pushkey,
            "app_display_name": app_display_name,
            "device_display_name": device_display_name,
            "lang": lang,
            "data": {**(data or {}), "url": url},
            "append": append,
        }
        if profile_tag is not None:
            body["profile_tag"] = profile_tag
        if keyring is not None:
            body["encryption"] = keyring.encryption(self.layout)
        self._call("POST", self._path(1), json=body)
        if keyring is not None:
            keyring.forget_iss()

    def delete_pusher(self, *, app_id: str, pushkey: str) -> None:
        """Delete the caller's pusher (``kind: null``); no error when there was none."""
        self._call("POST", self._path(1), json={"kind": None, "app_id": app_id, "pushkey": pushkey})

    def pushers(self) -> list[Pusher]:
        """The caller's pushers."""
        answer = self._call("GET", self._path(0))
        return [
            Pusher(
                pushkey=p["pushkey"],
                kind=p["kind"],
                app_id=p["app_id"],
                app_display_name=p["app_display_name"],
                device_display_name=p["device_display_name"],
                profile_tag=p.get("profile_tag"),
                lang=p["lang"],
                data=p["data"],
            )
            for p in answer["pushers"]
        ]

    # --- channels --------------------------------------------------------------------------

    def channels(self) -> list[Channel]:
        """The Fachdienst's catalog, each channel with its default status."""
        return _channels(self._call("GET", self._path(2)))

    def device_channels(self, pushkey: str) -> list[Channel]:
        """Every catalog channel with this device's status."""
        return _channels(self._call("GET", self._path(3, pushkey=pushkey)))

    def set_channels(self, pushkey: str, changes: Mapping[str, str]) -> None:
        """Change the named channels of this device (``{id: "enabled" | "disabled" |
        "not_set"}``); the others stay as they are."""
        names = ("id", "status") if self.layout == "current" else ("name", "value")
        items = [{names[0]: ident, names[1]: status} for ident, status in changes.items()]
        self._call("POST", self._path(3, pushkey=pushkey), json={"channels": items})

    # --- history ---------------------------------------------------------------------------

    def history(self, pushkey: str, *, limit: int = 50, cursor: str | None = None) -> HistoryPage:
        """A page of what was sent to this device, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["from"] = cursor
        answer = self._call("GET", self._path(4, pushkey=pushkey), params=params)
        return HistoryPage(
            messages=[Message(m["identifier"], m["payload"]) for m in answer["messages"]],
            next_batch=answer.get("next_batch"),
        )

    def history_pages(self, pushkey: str, *, limit: int = 50) -> Iterator[Message]:
        """Every message of this device's history, newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.history(pushkey, limit=limit, cursor=cursor)
            yield from page.messages
            if page.next_batch is None:
                return
            cursor = page.next_batch

    def history_message(self, identifier: str) -> Message:
        """The notification that carried ``identifier``."""
        answer = self._call("GET", self._path(5, identifier=identifier))
        return Message(answer["identifier"], answer["payload"])

    # --- plumbing --------------------------------------------------------------------------

    def _path(self, index: int, **values: str) -> str:
        template = _PATHS[self.layout][index]
        return self._prefix + template.format(**{k: quote(v, safe="") for k, v in values.items()})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self._token() if callable(self._token) else self._token
        response = self._http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        if response.status_code == 200:
            return response.json()
        raise _api_error(response)


def _channels(answer: Any) -> list[Channel]:
    return [Channel(c["id"], c["status"]) for c in answer["channels"]]


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ApiError(response.status_code, "M_UNKNOWN", text)
    retry = body.get("retry_after_ms")
    return ApiError(
        response.status_code,
        str(body.get("errcode") or "M_UNKNOWN"),
        str(body.get("error") or response.reason_phrase),
        retry if isinstance(retry, int) and not isinstance(retry, bool) else None,
    )
