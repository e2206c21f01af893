"""One clock abstraction for the whole runtime.

``MonotonicClock`` is wall time (``time.monotonic_ns``) with a hybrid sleep-then-spin wait for absolute
deadlines; ``SimClock`` is lock-step simulated time: ``sleep_until`` advances time to the deadline and
calls the registered steppers (e.g. the physics engine) so that the world catches up. Drivers never
sleep on their own; whoever owns the loop owns the clock.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...
    def sleep_until(self, deadline_ns: int) -> None: ...
    @property
    def realtime(self) -> bool: ...


class MonotonicClock:
    """Wall-clock time. ``sleep_until`` sleeps until ``spin_ns`` before the deadline, then spins."""

    realtime = True

    def __init__(self, spin_ns: int = 300_000) -> None:
        if spin_ns < 0:
            raise ValueError(f"MonotonicClock.spin_ns: must be >= 0, got {spin_ns}")
        self.spin_ns = int(spin_ns)

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, deadline_ns: int) -> None:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while time.monotonic_ns() < deadline_ns:
            pass


class SimClock:
    """Lock-step simulated time, starting at ``start_ns``.

    Steppers registered with ``add_stepper(fn, period_ns)`` are called once per ``period_ns`` of
    simulated time as ``sleep_until`` advances it (a physics engine at 240 Hz, say). Deterministic:
    the same calls give the same sequence of steps.
    """

    realtime = False

    def __init__(self, start_ns: int = 0) -> None:
        self._now = int(start_ns)
        self._steppers: list[list] = []  # [fn, period_ns, next_due_ns]

    def now_ns(self) -> int:
        return self._now

    def add_stepper(self, fn: Callable[[], None], period_ns: int) -> None:
        if period_ns <= 0:
            raise ValueError(f"SimClock.add_stepper: period_ns must be > 0, got {period_ns}")
        self._steppers.append([fn, int(period_ns), self._now + int(period_ns)])

    def sleep_until(self, deadline_ns: int) -> None:
        deadline_ns = int(deadline_ns)
        while True:
            due = [s for s in self._steppers if s[2] <= deadline_ns]
            if not due:
                break
            nxt = min(due, key=lambda s: s[2])
            self._now = max(self._now, nxt[2])
            nxt[0]()
            nxt[2] += nxt[1]
        self._now = max(self._now, deadline_ns)

    def advance(self, seconds: float) -> None:
        self.sleep_until(self._now + int(round(seconds * 1e9)))
