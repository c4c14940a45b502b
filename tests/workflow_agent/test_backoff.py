"""The agent's reconnect backoff: a jittered wait under a doubling, capped ceiling."""

from __future__ import annotations

import pytest

from workflow_agent import agent
from workflow_agent.agent import Backoff


def test_default_backoff_starts_at_half_a_second_and_caps_at_thirty():
    """By default the first wait is at most 0.5 s and no wait ever exceeds 30 s."""
    backoff = Backoff()

    first = backoff.next_delay_s()
    later = [backoff.next_delay_s() for _ in range(20)]

    assert 0.25 <= first <= 0.5
    assert all(15.0 <= delay <= 30.0 for delay in later[-10:])


def test_ceiling_doubles_up_to_the_maximum(monkeypatch):
    """Each failure doubles the ceiling up to maximum_s; the wait is drawn from its upper half."""
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(agent.random, "uniform", uniform)
    backoff = Backoff(initial_s=1.0, maximum_s=10.0)

    delays = [backoff.next_delay_s() for _ in range(6)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert drawn == [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (5.0, 10.0), (5.0, 10.0)]


def test_delays_stay_within_half_and_full_ceiling():
    """Every jittered wait lies between half the ceiling and the ceiling."""
    backoff = Backoff(initial_s=0.5, maximum_s=8.0)

    for failures in range(30):
        ceiling = min(8.0, 0.5 * 2**failures)
        assert ceiling / 2 <= backoff.next_delay_s() <= ceiling


def test_delays_are_jittered():
    """Waits at the same ceiling are not all the same, so agents do not reconnect in step."""
    backoff = Backoff(initial_s=1.0, maximum_s=1.0)

    delays = {backoff.next_delay_s() for _ in range(50)}

    assert len(delays) > 1


def test_reset_returns_to_the_initial_wait():
    """After a successful connection the next wait starts from the initial ceiling again."""
    backoff = Backoff(initial_s=1.0, maximum_s=60.0)
    for _ in range(5):
        backoff.next_delay_s()

    backoff.reset()

    assert backoff.failures == 0
    assert 0.5 <= backoff.next_delay_s() <= 1.0


@pytest.mark.parametrize("failures", [64, 2000])
def test_many_failures_do_not_overflow(failures):
    """After very many failures the wait is still capped at maximum_s."""
    backoff = Backoff(initial_s=0.5, maximum_s=30.0)
    backoff.failures = failures

    assert 15.0 <= backoff.next_delay_s() <= 30.0
