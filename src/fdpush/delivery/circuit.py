"""Per-gateway backoff: a gateway in trouble is left alone for a while, the others keep flowing.

A :class:`Circuit` belongs to one gateway base URL. It is **closed** while the gateway answers;
gateway trouble (5xx, 429, timeouts, connection errors …) **opens** it for an exponentially
growing, fully jittered wait (at least the gateway's ``Retry-After``, at most ``max_seconds``);
when the wait has passed it is **half-open**: one request at a time may probe the gateway, and
its outcome closes the circuit again or opens it for longer. So a gateway that is down gets a
trickle of probes, not a storm of retries: the backoff is kept per gateway.

:class:`Circuits` keeps one circuit per base URL, made on first use.

Use from the delivery worker::

    circuit = circuits.get(base_url)
    if circuit.allows():            # right before sending: in half-open this takes the probe
        outcome = await client.send(base_url, items)
        if outcome.gateway_trouble:
            circuit.record_trouble(outcome.retry_after_seconds)
        else:
            circuit.record_success()

Every ``True`` from :meth:`Circuit.allows` in the half-open state should be followed by
:meth:`~Circuit.record_success` or :meth:`~Circuit.record_trouble`; a probe that never reports
back (its sender died) is given up after :attr:`Circuit.probe_timeout_seconds`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Literal

__all__ = ["Circuit", "CircuitState", "Circuits"]

CircuitState = Literal["closed", "open", "half_open"]

# 2**60 seconds is beyond any sensible cap: stop doubling there (and never overflow a float).
_MAX_EXPONENT = 60


class Circuit:
    """The backoff state of one gateway (see the module docstring).

    ``clock`` gives seconds (monotonic); ``rng`` draws the jitter. Both are injectable, so
    tests need no sleeping.
    """

    probe_timeout_seconds: float = 60.0
    """How long a half-open probe may stay unanswered before another one is allowed."""

    def __init__(
        self,
        *,
        base_seconds: float = 1.0,
        max_seconds: float = 300.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A closed circuit. Raises ValueError unless ``0 < base_seconds <= max_seconds``."""
        if not 0 < base_seconds <= max_seconds:
            raise ValueError("need 0 < base_seconds <= max_seconds")
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        # Jitter, not a secret.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None  # None: closed
        self._probe_since: float | None = None  # when the half-open probe was let through

    @property
    def failures(self) -> int:
        """Gateway trouble reported since the circuit was last closed (what the wait grows on)."""
        return self._failures

    @property
    def state(self) -> CircuitState:
        """``closed``; ``open`` while its wait lasts; ``half_open`` once the wait has passed."""
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def allows(self) -> bool:
        """Whether a request may go to the gateway now.

        Closed: always. Open: not until its wait has passed. Half-open: one probe at a time —
        this call lets it through (and says False to others) until the probe reports back.
        """
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        if self._probe_since is not None and now - self._probe_since < self.probe_timeout_seconds:
            return False
        self._probe_since = now
        return True

    def record_success(self) -> None:
        """The gateway answered: close the circuit and forget the failures."""
        self._failures = 0
        self._open_until = None
        self._probe_since = None

    def record_trouble(self, retry_after_seconds: float | None = None) -> float:
        """The gateway is in trouble: open the circuit; returns seconds until it may be tried.

        The wait is drawn uniformly from ``[0, base * 2**(failures - 1)]`` (full jitter), is
        at least ``retry_after_seconds`` and at most ``max_seconds``. Trouble reported while
        the circuit is already open (requests that were under way when it opened) does not
        make the wait grow, though a ``Retry-After`` can make it longer.
        """
        now = self._clock()
        retry_after = min(max(retry_after_seconds or 0.0, 0.0), self.max_seconds)
        if self._open_until is not None and now < self._open_until:
            self._open_until = max(self._open_until, now + retry_after)
            return self._open_until - now
        self._failures += 1
        ceiling = min(
            self.max_seconds,
            self.base_seconds * 2.0 ** min(self._failures - 1, _MAX_EXPONENT),
        )
        wait = min(max(self._rng.uniform(0.0, ceiling), retry_after), self.max_seconds)
        self._open_until = now + wait
        self._probe_since = None
        return wait

    def reopens_in(self) -> float:
        """Seconds until :meth:`allows` would say True (0 when it would now)."""
        if self._open_until is None:
            return 0.0
        now = self._clock()
        if now < self._open_until:
            return self._open_until - now
        if self._probe_since is not None:
            return max(0.0, self._probe_since + self.probe_timeout_seconds - now)
        return 0.0

    def __repr__(self) -> str:
        return (
            f"<Circuit {self.state} failures={self._failures} reopens_in={self.reopens_in():.3f}>"
        )


class Circuits:
    """One :class:`Circuit` per gateway base URL, made on demand with these settings."""

    def __init__(
        self,
        *,
        base_seconds: float = 1.0,
        max_seconds: float = 300.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """An empty registry; its circuits get these settings (see :class:`Circuit`)."""
        if not 0 < base_seconds <= max_seconds:
            raise ValueError("need 0 < base_seconds <= max_seconds")
        self._base_seconds = base_seconds
        self._max_seconds = max_seconds
        self._rng = rng
        self._clock = clock
        self._circuits: dict[str, Circuit] = {}

    def get(self, base_url: str) -> Circuit:
        """The circuit of ``base_url`` (a new, closed one on first use)."""
        circuit = self._circuits.get(base_url)
        if circuit is None:
            circuit = Circuit(
                base_seconds=self._base_seconds,
                max_seconds=self._max_seconds,
                rng=self._rng,
                clock=self._clock,
            )
            self._circuits[base_url] = circuit
        return circuit

    __getitem__ = get

    def blocked(self) -> list[str]:
        """The base URLs whose circuits do not allow a request now (without taking a probe)."""
        return [url for url, circuit in self._circuits.items() if circuit.reopens_in() > 0]

    def states(self) -> dict[str, CircuitState]:
        """Each known base URL's circuit state (for metrics)."""
        return {url: circuit.state for url, circuit in self._circuits.items()}

    def __contains__(self, base_url: object) -> bool:
        return base_url in self._circuits

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._circuits))

    def __len__(self) -> int:
        return len(self._circuits)
