import time

import pytest

from edgebridge.clock import MonotonicClock, SimClock


def test_sim_clock_steps_in_order_and_is_deterministic():
    clock = SimClock()
    calls = []
    clock.add_stepper(lambda: calls.append(("phys", clock.now_ns())), 4_166_666)
    clock.add_stepper(lambda: calls.append(("cam", clock.now_ns())), 100_000_000)
    clock.sleep_until(100_000_000)
    assert clock.now_ns() == 100_000_000
    assert sum(1 for c in calls if c[0] == "phys") == 24
    assert calls[-1] == ("cam", 100_000_000)
    assert [t for _, t in calls] == sorted(t for _, t in calls)


def test_sim_clock_never_goes_back():
    clock = SimClock(start_ns=50)
    clock.sleep_until(10)
    assert clock.now_ns() == 50
    with pytest.raises(ValueError, match="period_ns"):
        clock.add_stepper(lambda: None, 0)


def test_monotonic_clock_reaches_deadline():
    clock = MonotonicClock(spin_ns=200_000)
    deadline = clock.now_ns() + 2_000_000
    clock.sleep_until(deadline)
    assert time.monotonic_ns() >= deadline
