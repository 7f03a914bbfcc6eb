"""The per-gateway circuit: closed while the gateway answers, open for a growing, jittered,
capped wait after trouble, then one probe at a time. Time is an injected clock: no sleeping."""

from __future__ import annotations

import random

import pytest

from fdpush.delivery.circuit import Circuit, Circuits


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Highest(random.Random):
    """Jitter that always draws the top of its range (to see the ceiling)."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_new_circuit_is_closed_and_allows_everything(clock: Clock) -> None:
    """Closed: every request may go."""
    circuit = Circuit(clock=clock)

    assert circuit.state == "closed"
    assert all(circuit.allows() for _ in range(5))
    assert circuit.reopens_in() == 0.0


def test_trouble_opens_it_until_the_wait_has_passed(clock: Clock) -> None:
    """After trouble nothing may go until the returned wait has passed; then it is half-open."""
    circuit = Circuit(clock=clock, rng=Highest())

    wait = circuit.record_trouble()

    assert wait == 1.0
    assert circuit.state == "open"
    assert not circuit.allows()
    assert circuit.reopens_in() == pytest.approx(1.0)
    clock.advance(0.999)
    assert not circuit.allows()
    assert circuit.reopens_in() == pytest.approx(0.001)
    clock.advance(0.001)
    assert circuit.state == "half_open"
    assert circuit.reopens_in() == 0.0
    assert circuit.allows()


def test_the_wait_doubles_with_each_failure_up_to_the_cap(clock: Clock) -> None:
    """Exponential backoff on the failure count: 1, 2, 4 … seconds at most, capped."""
    circuit = Circuit(base_seconds=1.0, max_seconds=30.0, clock=clock, rng=Highest())
    ceilings = []
    for _ in range(8):
        ceilings.append(circuit.record_trouble())
        clock.advance(ceilings[-1])
        assert circuit.allows()  # the probe, which fails again

    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert circuit.failures == 8


def test_the_wait_is_fully_jittered(clock: Clock) -> None:
    """Full jitter: anywhere between 0 and the ceiling, so many senders do not retry at once."""
    rng = random.Random(7)
    waits = []
    for _ in range(200):
        circuit = Circuit(base_seconds=1.0, clock=clock, rng=rng)
        for _ in range(3):  # ceiling 4 s on the third failure
            wait = circuit.record_trouble()
            clock.advance(wait)
            circuit.allows()
        waits.append(wait)

    assert all(0.0 <= w <= 4.0 for w in waits)
    assert min(waits) < 0.5
    assert max(waits) > 3.5


def test_retry_after_is_a_floor_and_the_cap_still_holds(clock: Clock) -> None:
    """The wait is at least the gateway's ``Retry-After``, but never longer than the cap."""
    circuit = Circuit(max_seconds=60.0, clock=clock, rng=Highest())

    assert circuit.record_trouble(retry_after_seconds=20.0) == 20.0
    clock.advance(20.0)
    assert circuit.allows()
    assert circuit.record_trouble(retry_after_seconds=3600.0) == 60.0
    assert circuit.reopens_in() == pytest.approx(60.0)


def test_half_open_lets_one_probe_through_at_a_time(clock: Clock) -> None:
    """Half-open: the first ``allows`` takes the probe; others wait for its outcome."""
    circuit = Circuit(clock=clock, rng=Highest())
    clock.advance(circuit.record_trouble())

    assert circuit.allows()
    assert not circuit.allows()
    assert not circuit.allows()
    assert circuit.reopens_in() > 0


def test_a_successful_probe_closes_it_and_forgets_the_failures(clock: Clock) -> None:
    """Success closes the circuit; the next trouble starts from the base wait again."""
    circuit = Circuit(clock=clock, rng=Highest())
    for _ in range(4):
        clock.advance(circuit.record_trouble())
        circuit.allows()

    circuit.record_success()

    assert circuit.state == "closed"
    assert circuit.failures == 0
    assert circuit.allows() and circuit.allows()
    assert circuit.record_trouble() == 1.0


def test_a_failed_probe_opens_it_for_longer(clock: Clock) -> None:
    """Trouble on the probe opens the circuit again, with the next, longer wait."""
    circuit = Circuit(clock=clock, rng=Highest())
    clock.advance(circuit.record_trouble())
    assert circuit.allows()

    assert circuit.record_trouble() == 2.0
    assert circuit.state == "open"
    assert not circuit.allows()


def test_a_probe_that_never_reports_back_is_given_up(clock: Clock) -> None:
    """A probe whose sender died does not keep the circuit shut for ever."""
    circuit = Circuit(clock=clock, rng=Highest())
    clock.advance(circuit.record_trouble())
    assert circuit.allows()

    clock.advance(circuit.probe_timeout_seconds - 1)
    assert not circuit.allows()
    clock.advance(1)
    assert circuit.allows()


def test_trouble_from_requests_already_under_way_does_not_stack_up(clock: Clock) -> None:
    """Eight batches in flight failing together count as one failure, not eight (a circuit,
    not a storm): the wait does not grow, though a longer ``Retry-After`` is honoured."""
    circuit = Circuit(clock=clock, rng=Highest())

    first = circuit.record_trouble()
    later = [circuit.record_trouble() for _ in range(7)]

    assert first == 1.0
    assert later == [1.0] * 7
    assert circuit.failures == 1
    assert circuit.record_trouble(retry_after_seconds=9.0) == 9.0
    assert circuit.reopens_in() == pytest.approx(9.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Circuit(base_seconds=0)
    with pytest.raises(ValueError):
        Circuit(base_seconds=10, max_seconds=5)
    with pytest.raises(ValueError):
        Circuits(base_seconds=-1)


def test_circuits_keep_one_circuit_per_gateway(clock: Clock) -> None:
    """One circuit per base URL, made on demand; trouble at one gateway blocks only that one."""
    circuits = Circuits(clock=clock, rng=Highest())
    down, up = "https://down.test/push/v1/", "https://up.test/push/v1/"

    assert down not in circuits
    circuits.get(down).record_trouble(retry_after_seconds=5.0)

    assert circuits.get(down) is circuits[down]
    assert circuits.get(up).allows()
    assert circuits.blocked() == [down]
    assert circuits.states() == {down: "open", up: "closed"}
    assert sorted(circuits) == [down, up]
    assert len(circuits) == 2


def test_blocked_does_not_take_the_probe(clock: Clock) -> None:
    """Asking which gateways are blocked leaves the half-open probe to the sender."""
    circuits = Circuits(clock=clock, rng=Highest())
    url = "https://gw.test/push/v1/"
    clock.advance(circuits.get(url).record_trouble())

    assert circuits.blocked() == []
    assert circuits.blocked() == []
    assert circuits.get(url).allows()
    assert circuits.blocked() == [url]
    assert circuits.states() == {url: "half_open"}
