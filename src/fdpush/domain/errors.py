"""The errors of the domain, each with the Matrix ``errcode`` and HTTP status it answers with.

The web layer turns them into ``{"errcode", "error"}`` bodies; the domain raises them without
knowing about HTTP beyond the status number each carries.
"""

from __future__ import annotations

__all__ = [
    "FdPushError",
    "Forbidden",
    "InvalidParam",
    "LimitExceeded",
    "MissingParam",
    "NotFound",
    "PayloadTooLarge",
    "ResourceLimitExceeded",
]


class FdPushError(Exception):
    """Base of every error a client may see. ``message`` must never carry secrets."""

    errcode = "M_UNKNOWN"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingParam(FdPushError):
    errcode = "M_MISSING_PARAM"
    status = 400

    def __init__(self, names: list[str]) -> None:
        super().__init__("Missing parameters: " + ", ".join(names))
        self.names = names


class InvalidParam(FdPushError):
    errcode = "M_INVALID_PARAM"
    status = 400


class PayloadTooLarge(InvalidParam):
    """An event's payload is larger than what can reach its devices; ``limit`` is the bound in
    bytes of compact JSON. (The events API answers it as a bad parameter, the RS API as 413.)"""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class ResourceLimitExceeded(FdPushError):
    errcode = "M_RESOURCE_LIMIT_EXCEEDED"
    status = 400


class NotFound(FdPushError):
    errcode = "M_NOT_FOUND"
    status = 404


class Forbidden(FdPushError):
    errcode = "M_FORBIDDEN"
    status = 403


class LimitExceeded(FdPushError):
    errcode = "M_LIMIT_EXCEEDED"
    status = 429

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("Too many requests")
        self.retry_after_ms = retry_after_ms
