"""fdpush: the push part of a Fachdienst of Germany's telematics infrastructure.

The Client-FD Push API for the apps (pushers, channels), the concept's key schedule and
sealing (:mod:`fdpush.crypto`), delivery to the Push Gateways, and storage on SQLite or
PostgreSQL. A Fachdienst written in Python emits events with :class:`Notifier`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fdpush")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from fdpush.notifier import EmitResult, EventRequest, EventStatus, Notifier

__all__ = ["EmitResult", "EventRequest", "EventStatus", "Notifier", "__version__"]
