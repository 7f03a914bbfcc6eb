"""fdpush: the push part of a Fachdienst of Germany's telematics infrastructure.

The Client-FD Push API for the apps (pushers, channels), the concept's key schedule and
sealing (:mod:`fdpush.crypto`), delivery to the Push Gateways, and storage on SQLite or
PostgreSQL. A Fachdienst written in Python emits events with :class:`Notifier`.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fdpush")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from fdpush.notifier import EmitResult, EventRequest, EventStatus, Notifier

__all__ = ["EmitResult", "EventRequest", "EventStatus", "Notifier", "__version__"]
_NOTIFIER_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """The Python API, imported on first use: the command line (``fdpush --help``, a
    configuration check) starts without loading the storage and delivery stack."""
    if name in _NOTIFIER_API:
        from fdpush import notifier

        return getattr(notifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
