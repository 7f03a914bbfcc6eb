"""What the dispatcher hands a provider client, and what one attempt comes back as.

The seam where providers plug in (:class:`Sender`): a provider client turns one :class:`Push`
into one HTTP/2 request and classifies the provider's answer into an :class:`Attempt`. Retrying,
remembering rejections and answering the Fachdienst are the dispatcher's job, not the client's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fdpush.gateway_api import Counts, Priority

__all__ = ["Attempt", "AttemptKind", "Provider", "Push", "Sender"]

Provider = Literal["apns", "fcm"]

# accepted: the provider took it. rejected: the provider says the pushkey is dead for good.
# retry: a transient failure (throttling, 5xx, connection loss, timeout). failed: permanent.
AttemptKind = Literal["accepted", "rejected", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Push:
    """One notification for one device, as the Fachdienst sent it (validated)."""

    app_id: str
    pushkey: str
    prio: Priority
    fields: dict[str, Any] = field(hash=False)  # the custom keys: encrypted or Matrix-style
    counts: Counts | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one request to the provider ended."""

    kind: AttemptKind
    status: int | None  # the provider's HTTP status; None when there was no answer
    reason: str  # APNs ``reason``, FCM ``errorCode``, or what went wrong locally; "" on success
    retry_after: float | None = None  # seconds, from ``Retry-After`` or the provider's guidance
    app_wide: bool = False  # the provider throttles the whole app (FCM quota), not one pushkey
    refresh_auth: bool = False  # the credentials were refused: a new token may help

    def describe(self) -> str:
        """A short text for logs and ``error`` (no pushkey, no payload)."""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.reason}".strip() or "no answer"


class Sender(Protocol):
    """A provider client for one app: one attempt per call, never raises for provider trouble."""

    provider: Provider

    async def send(self, push: Push) -> Attempt:
        """Send ``push`` once and classify the answer."""
        ...

    def auth_refused(self, attempt: Attempt) -> bool:
        """The credentials were refused in ``attempt``: drop them if allowed; True if a retry
        with new ones makes sense."""
        ...

    async def aclose(self) -> None:
        """Close the connections."""
        ...
