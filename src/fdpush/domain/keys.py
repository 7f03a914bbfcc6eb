"""The service's hold on key material: month generations sealed under the master key.

Concept: after the first derivation the FD deletes the iss; only generations are kept, and
only sealed (``crypto.seal_at_rest``), each bound to its pusher and month so that a blob moved
to another row does not open.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from fdpush import crypto

__all__ = ["BERLIN", "KeyVault", "current_period"]

BERLIN = ZoneInfo("Europe/Berlin")


def current_period(now: datetime | None = None) -> str:
    """The month a key is used for, in Europe/Berlin time (concept: the FD's month)."""
    moment = (now or datetime.now(BERLIN)).astimezone(BERLIN)
    return f"{moment.year:04d}-{moment.month:02d}"


class KeyVault:
    """Seals and opens key generations under the master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._master_key = master_key

    def __repr__(self) -> str:
        return "KeyVault(<master key redacted>)"

    @staticmethod
    def _context(user_id: str, app_id: str, pushkey: str, period: str) -> bytes:
        return "\x00".join(("fdpush/key-generation/v1", user_id, app_id, pushkey, period)).encode()

    def seal(
        self, user_id: str, app_id: str, pushkey: str, generation: crypto.KeyGeneration
    ) -> bytes:
        context = self._context(user_id, app_id, pushkey, generation.period)
        return crypto.seal_at_rest(self._master_key, generation.secret + generation.key, context)

    def open(
        self, user_id: str, app_id: str, pushkey: str, period: str, material: bytes
    ) -> crypto.KeyGeneration:
        context = self._context(user_id, app_id, pushkey, period)
        plain = crypto.unseal_at_rest(self._master_key, material, context)
        return crypto.KeyGeneration(period=period, secret=plain[:32], key=plain[32:])

    def seal_record(self, kind: str, record_id: str, plaintext: bytes) -> bytes:
        """Seal a stored record (a notification body, an event payload) bound to its id."""
        context = f"fdpush/{kind}/v1\x00{record_id}".encode()
        return crypto.seal_at_rest(self._master_key, plaintext, context)

    def open_record(self, kind: str, record_id: str, blob: bytes) -> bytes:
        context = f"fdpush/{kind}/v1\x00{record_id}".encode()
        return crypto.unseal_at_rest(self._master_key, blob, context)
