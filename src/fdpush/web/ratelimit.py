"""Per-user rate limit on the write endpoints (``FDPUSH_RATE_LIMIT = N/S``).

A moving window kept in the process (the ``limits`` library): each process of a deployment
counts on its own, so N processes admit at most N times the limit.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from fdpush.config import RateLimit
from fdpush.domain.errors import LimitExceeded

__all__ = ["UserRateLimiter"]


class UserRateLimiter:
    def __init__(self, limit: RateLimit | None) -> None:
        self._item = (
            None if limit is None else RateLimitItemPerSecond(limit.requests, limit.seconds)
        )
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, user_id: str) -> None:
        """Count one write by ``user_id``; raise ``LimitExceeded`` past the limit."""
        if self._item is None:
            return
        if await self._limiter.hit(self._item, "write", user_id):
            return
        stats = await self._limiter.get_window_stats(self._item, "write", user_id)
        retry_after_ms = max(1, math.ceil((stats.reset_time - time.time()) * 1000))
        raise LimitExceeded(retry_after_ms)
