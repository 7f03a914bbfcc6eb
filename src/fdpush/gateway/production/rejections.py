"""The rejection memory: pushkeys a provider declared dead, reported again until they expire.

The spec's ``rejected`` "may not necessarily be the notification in the request that failed: it
could be that a previous notification to the same pushkey failed". So a rejection is not said
once and forgotten (as the reference gateway does): every later request naming that
``app_id`` + pushkey gets it in ``rejected`` again, without asking the provider, until the
memory's time runs out.

Entries are SHA-256 digests of ``app_id`` and pushkey, never the pushkeys (pushkeys are long
random tokens: the digest does not give them away). With a file, the memory survives restarts:
one line per rejection (``digest expires_at``), appended as it happens, compacted at start and
every 1024 rejections.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RejectionMemory"]

_PRUNE_EVERY = 1024  # remembers between sweeps of expired entries


def _digest(app_id: str, pushkey: str) -> str:
    return hashlib.sha256(f"fdpush-rejected\x00{app_id}\x00{pushkey}".encode()).hexdigest()


class RejectionMemory:
    """Which (app_id, pushkey) a provider rejected, each for ``ttl_seconds``. Thread-safe."""

    def __init__(
        self,
        ttl_seconds: float,
        *,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._expires: dict[str, float] = {}
        self._since_prune = 0
        self._path = path
        if path is not None:
            self._load(path)

    def remember(self, app_id: str, pushkey: str) -> None:
        """The provider said this pushkey is dead: report it until the memory's time is up."""
        digest = _digest(app_id, pushkey)
        expires = self._clock() + self._ttl
        with self._lock:
            self._expires[digest] = expires
            self._since_prune += 1
            if self._path is not None:
                with self._path.open("a", encoding="ascii") as file:
                    file.write(f"{digest} {expires:.0f}\n")
            if self._since_prune >= _PRUNE_EVERY:
                self._prune()

    def is_rejected(self, app_id: str, pushkey: str) -> bool:
        """True while a rejection of this pushkey is remembered."""
        digest = _digest(app_id, pushkey)
        with self._lock:
            expires = self._expires.get(digest)
            if expires is None:
                return False
            if expires <= self._clock():
                del self._expires[digest]
                return False
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expires)

    def _prune(self) -> None:
        now = self._clock()
        self._expires = {d: e for d, e in self._expires.items() if e > now}
        self._since_prune = 0
        if self._path is not None:
            self._write(self._path)

    def _load(self, path: Path) -> None:
        now = self._clock()
        if path.exists():
            for line in path.read_text(encoding="ascii").splitlines():
                digest, _, expires = line.partition(" ")
                try:
                    when = float(expires)
                except ValueError:
                    continue  # a line cut short by a crash
                if when > now and len(digest) == 64:
                    self._expires[digest] = max(when, self._expires.get(digest, 0.0))
        self._write(path)

    def _write(self, path: Path) -> None:
        """Replace the file by what is remembered now (compacted), atomically."""
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(
            "".join(f"{d} {e:.0f}\n" for d, e in self._expires.items()), encoding="ascii"
        )
        os.replace(scratch, path)
