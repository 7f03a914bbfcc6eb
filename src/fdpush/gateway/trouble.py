"""Switches that make the development gateway misbehave the way real gateways do.

- ``reject_pushkeys``: pushkeys the "push provider" has declared invalid. Each is reported
  **once**, in ``rejected``, on the next request that contains it, and then forgotten — as the
  reference gateway does; a sender must delete the pusher the first time it sees it.
- ``fail_fraction`` (0..1): that share of items comes back ``failed`` with ``fail_error``
  (random, reproducible with ``fail_seed``). Failed items are not delivered.
- ``status`` (400..599), for the next ``status_count`` requests (``None``: until cleared),
  with ``Retry-After: retry_after`` when set, and the spec's error body for that status (or
  ``status_body`` verbatim, e.g. a proxy's HTML page).
- ``delay_ms``: answer every request (or the next ``delay_count``) that much later — a stall.
  ``delay_point`` ``before`` (default) stalls before the request is read: a sender that gives
  up meanwhile has delivered nothing. ``after`` delivers first and stalls the answer: a sender
  that gives up has delivered anyway (and delivers twice if it retries).
- ``result_order``: ``request`` (the spec), ``sorted`` by id (the reference gateway) or
  ``reversed``, to test senders that must match results by ``id``.

The limits (``max_batch_size``, ``max_notification_size_kb``, ``max_request_size_kb``) can be
changed the same way; a ``max_batch_size`` below the spec's floor of 100 is allowed, to test
senders that honour ``details.max_batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MIN_REQUEST_SIZE_KB",
    "DelayPoint",
    "Limits",
    "ResultOrder",
    "Trouble",
    "TroubleUpdate",
]

ResultOrder = Literal["request", "sorted", "reversed"]
DelayPoint = Literal["before", "after"]

# "Push Gateway implementations MUST support request payloads of at least 256 KB."
MIN_REQUEST_SIZE_KB = 256


@dataclass
class Limits:
    """The gateway's request limits."""

    max_batch_size: int = 100
    max_notification_size_kb: int = 64
    max_request_size_kb: int = 1024

    def check(self) -> None:
        """Raise ValueError for a limit the gateway cannot work with or the spec forbids."""
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_notification_size_kb < 1:
            raise ValueError("max_notification_size_kb must be at least 1")
        if self.max_request_size_kb < MIN_REQUEST_SIZE_KB:
            raise ValueError(
                f"max_request_size_kb must be at least {MIN_REQUEST_SIZE_KB} (the spec's floor); "
                "to test a sender's handling of 413, force the status instead"
            )


@dataclass
class Trouble:
    """The current trouble switches (all off by default)."""

    reject_pushkeys: set[str] = field(default_factory=set)
    fail_fraction: float = 0.0
    fail_error: str = "Simulated failure at the push provider"
    status: int | None = None
    status_count: int | None = None  # requests left to answer with ``status``; None: no limit
    retry_after: int | None = None
    status_body: str | None = None
    delay_ms: int = 0
    delay_count: int | None = None  # requests left to delay; None: no limit
    delay_point: DelayPoint = "before"
    result_order: ResultOrder = "request"

    def check(self) -> None:
        """Raise ValueError for a switch value out of range."""
        if not 0.0 <= self.fail_fraction <= 1.0:
            raise ValueError("fail_fraction must be between 0 and 1")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an error status (400..599)")
        if self.status_count is not None and self.status_count < 0:
            raise ValueError("status_count must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        if self.delay_count is not None and self.delay_count < 0:
            raise ValueError("delay_count must not be negative")

    def as_json(self) -> dict[str, Any]:
        """The switches as JSON (``reject_pushkeys`` sorted)."""
        return {
            "reject_pushkeys": sorted(self.reject_pushkeys),
            "fail_fraction": self.fail_fraction,
            "fail_error": self.fail_error,
            "status": self.status,
            "status_count": self.status_count,
            "retry_after": self.retry_after,
            "status_body": self.status_body,
            "delay_ms": self.delay_ms,
            "delay_count": self.delay_count,
            "delay_point": self.delay_point,
            "result_order": self.result_order,
        }


class TroubleUpdate(BaseModel):
    """The body of ``POST /_dev/trouble``: only the named switches change.

    ``reset: true`` first turns every switch off and restores the start-up limits.
    ``reject_pushkeys`` *adds* pushkeys to those waiting to be rejected. ``status: null``
    (or ``delay_ms: 0``) turns that switch off.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    reset: bool = False
    reject_pushkeys: list[str] | None = None
    fail_fraction: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    fail_error: str | None = None
    fail_seed: int | None = None
    status: Annotated[int, Field(ge=400, le=599)] | None = None
    status_count: Annotated[int, Field(ge=1)] | None = None
    retry_after: Annotated[int, Field(ge=0)] | None = None
    status_body: str | None = None
    delay_ms: Annotated[int, Field(ge=0)] | None = None
    delay_count: Annotated[int, Field(ge=1)] | None = None
    delay_point: DelayPoint | None = None
    result_order: ResultOrder | None = None
    max_batch_size: Annotated[int, Field(ge=1)] | None = None
    max_notification_size_kb: Annotated[int, Field(ge=1)] | None = None
    max_request_size_kb: Annotated[int, Field(ge=MIN_REQUEST_SIZE_KB)] | None = None
