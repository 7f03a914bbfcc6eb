"""fdpush: the push part of a Fachdienst of Germany's telematics infrastructure.

The Client-FD Push API for the apps (pushers, channels), the concept's key schedule and
sealing (:mod:`fdpush.crypto`), and storage on SQLite or PostgreSQL.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fdpush")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
