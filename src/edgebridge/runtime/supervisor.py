"""The episode's :class:`Supervisor`: what every run mode of the pipeline checks while an episode runs
(a latched stop, the time limit, the setup's abort check, planning), and the reason to stop."""

from __future__ import annotations

from typing import Callable

from ..contracts import ArmState
from .plan_session import PlanSession
from .watchdog import Health, Watchdog


class Supervisor:
    """What every run mode checks while an episode runs, in this order: a stop the watchdog latched
    (only where the loop cannot see it itself: a loop in another process), the time limit, the setup's
    ``abort`` check (at most once per ``abort_every_ns``), then planning (``PlanSession.tick``: the
    first plan, re-plans, the end of the guidance). ``check`` returns the reason to stop (once), or None.
    Real-time modes call it every ``PERIOD_S`` of wall time; lock-step calls it every loop cycle."""

    PERIOD_S = 0.01

    def __init__(self, session: PlanSession, limit_ns: int, abort: Callable[[], str | None] | None,
                 abort_every_ns: int) -> None:
        self.session, self.limit_ns = session, int(limit_ns)
        self.abort, self.abort_every_ns = abort, int(abort_every_ns)
        self._next_abort_ns: int | None = None
        self.reason: str | None = None

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def check(self, now_ns: int, state: ArmState | None, watchdog: Watchdog | None = None) -> str | None:
        if self.reason is not None:
            return None
        why = None
        if watchdog is not None:
            health, stop_why = watchdog.check(now_ns)
            why = stop_why if health is Health.STOP else None
        if why is None and now_ns >= self.limit_ns:
            why = "time limit reached"
        if why is None and self.abort is not None and (self._next_abort_ns is None or now_ns >= self._next_abort_ns):
            self._next_abort_ns = now_ns + self.abort_every_ns
            why = self.abort()
        if why is None:
            why = self.session.tick(now_ns, state)
        self.reason = why or None
        return self.reason
