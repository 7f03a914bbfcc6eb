"""The domain's plain data: what a pusher is, what a registration asks for, channel states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChannelState", "EncryptionRequest", "Pusher", "PusherRegistration"]


@dataclass(frozen=True, slots=True)
class EncryptionRequest:
    """The ``encryption`` block of a registration. ``iss`` lives only as long as the request."""

    method: str
    iss: bytes
    time_iss_created: str
    key_identifier: str

    def __repr__(self) -> str:
        return (
            f"EncryptionRequest(method={self.method!r}, iss=<redacted>, "
            f"time_iss_created={self.time_iss_created!r}, key_identifier={self.key_identifier!r})"
        )


@dataclass(frozen=True, slots=True)
class PusherRegistration:
    """A validated ``pushers/set`` request with ``kind`` not null."""

    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    append: bool
    encryption: EncryptionRequest | None


@dataclass(frozen=True, slots=True)
class Pusher:
    """A stored pusher as the client sees it (no key material)."""

    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChannelState:
    id: str
    status: str
