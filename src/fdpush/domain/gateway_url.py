"""Which Push Gateway URLs a pusher may name (``data.url``): the operator's allow-list.

A pusher's URL is where the service will later send notifications, with its client certificate,
so an arbitrary URL would be a server-side request forgery. The rules, each with its own error:
https only (http only when the operator allows it, for tests), no credentials, no query or
fragment, ``host[:port]`` on the allow-list, and a path that is the gateway API's base
(``…/push/v1/``) or a seed-era full notify URL (``…/push/v1/notify``,
``…/_matrix/push/v1/notify``).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from fdpush.config import GatewayHost
from fdpush.domain.errors import InvalidParam

__all__ = ["MAX_URL_LENGTH", "GatewayUrlPolicy", "gateway_base_url"]

MAX_URL_LENGTH = 1024
_NOTIFY_SUFFIXES = ("/_matrix/push/v1/notify", "/push/v1/notify")
_BASE_SUFFIX = "/push/v1/"


class GatewayUrlPolicy:
    """Checks a ``data.url`` against the allow-list; raises ``InvalidParam`` naming the rule."""

    def __init__(self, allowlist: Iterable[GatewayHost], *, allow_http: bool = False) -> None:
        self._allowed = {(entry.host, entry.port) for entry in allowlist}
        self._allow_http = allow_http

    def check(self, url: str) -> None:
        if len(url) > MAX_URL_LENGTH:
            raise InvalidParam(f"data.url is longer than {MAX_URL_LENGTH} characters")
        if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
            raise InvalidParam("data.url must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidParam(f"data.url is not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and self._allow_http):
            raise InvalidParam("data.url must be an https URL")
        if parts.username is not None or parts.password is not None:
            raise InvalidParam("data.url must not contain credentials")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise InvalidParam("data.url must not have a query or fragment")
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidParam("data.url has no host")
        if ":" in host:  # IPv6 literal: the allow-list writes it in brackets
            host = f"[{host}]"
        if port is None:
            port = 443 if scheme == "https" else 80
        if not self._allowed:
            raise InvalidParam(
                "data.url: no Push Gateway is allowed by this service "
                "(the operator has not set FDPUSH_GATEWAY_ALLOWLIST)"
            )
        if (host, port) not in self._allowed:
            raise InvalidParam(f"data.url: gateway {host}:{port} is not on the allow-list")
        path = parts.path
        if "/./" in path or "/../" in path or "//" in path or "%" in path:
            raise InvalidParam("data.url path must be plain (no dot segments or escapes)")
        if not (path.endswith(_BASE_SUFFIX) or path.endswith(_NOTIFY_SUFFIXES)):
            raise InvalidParam(
                "data.url path must end in /push/v1/ (or be a full .../push/v1/notify URL)"
            )


def gateway_base_url(url: str) -> str:
    """The gateway API base (ending in ``/push/v1/``) of a stored, already checked ``data.url``.

    A seed-era ``…/_matrix/push/v1/notify`` URL maps to the same host's ``…/push/v1/``: the
    current gateway API lives there (concept: "for a seed-era …/notify URL, the same base").
    """
    for suffix in _NOTIFY_SUFFIXES:
        if url.endswith(suffix):
            return url[: -len(suffix)] + _BASE_SUFFIX
    return url
