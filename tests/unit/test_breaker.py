"""The circuit breaker and the retry budget, on a clock the test moves."""

from __future__ import annotations

from datetime import timedelta

from closeloop.app.breaker import CircuitBreaker, RetryBudget
from tests.conftest import NOW


def test_the_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    breaker = CircuitBreaker(failures=3, open_for=timedelta(seconds=30))
    for _ in range(2):
        assert breaker.allows(NOW) and not breaker.record(False, NOW)
    assert breaker.record(True, NOW) is False  # a success in between starts the count again
    for _ in range(2):
        breaker.record(False, NOW)
    assert breaker.record(False, NOW) and breaker.state == "open" and breaker.openings == 1
    assert not breaker.allows(NOW + timedelta(seconds=29))
    assert breaker.reopens_at(NOW) == NOW + timedelta(seconds=30)
    later = NOW + timedelta(seconds=30)
    assert breaker.allows(later) and breaker.state == "half_open"
    assert not breaker.allows(later)  # one probe at a time
    # A failed probe opens it again, twice as long: the same opening, not a new one.
    assert not breaker.record(False, later) and breaker.state == "open" and breaker.openings == 1
    assert not breaker.allows(later + timedelta(seconds=59))
    again = later + timedelta(seconds=60)
    assert breaker.allows(again)
    breaker.record(True, again)
    assert breaker.state == "closed" and breaker.allows(again) and breaker.allows(again)


def test_the_longest_wait_is_capped() -> None:
    breaker = CircuitBreaker(
        failures=1, open_for=timedelta(minutes=4), longest=timedelta(minutes=5)
    )
    now = NOW
    breaker.record(False, now)
    for _ in range(3):
        now = breaker.reopens_at(now)
        assert breaker.allows(now)
        breaker.record(False, now)
    assert breaker.reopens_at(now) - now == timedelta(minutes=5)


def test_retries_are_held_to_a_share_of_first_attempts() -> None:
    budget = RetryBudget(ratio=0.5, floor=2)
    assert [budget.allows(True, NOW) for _ in range(3)] == [True, True, False]  # the floor
    for _ in range(4):
        assert budget.allows(False, NOW)  # first attempts always go, and earn retries
    assert [budget.allows(True, NOW) for _ in range(3)] == [True, True, False]
    assert budget.allows(True, NOW + timedelta(minutes=1))  # a minute later the window is new
