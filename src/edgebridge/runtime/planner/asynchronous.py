"""Run any planner in a worker thread, off the control path.

The control loop calls :meth:`AsyncPlanner.request` (a new instruction, a finished sub-task, a
rejected plan) and reads :meth:`AsyncPlanner.latest` every cycle; neither blocks on the model.
llama.cpp releases the GIL while it evaluates, so a generation in the worker leaves the main thread
running (``benchmarks/planner.py`` measures how much). Requests coalesce: while one is planned, only
the newest waiting request is kept. A failure (any exception, including a plan the ``validate``
callback rejects, e.g. a waypoint off the table) is stored as :attr:`PlannerStatus.last_error` and
logged, never raised into the caller; ``latest()`` then keeps the last valid plan (or None after a
request with ``clear=True``), and the runtime holds the arm.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ...contracts import RGBD, Plan
from ...errors import PlanError

log = logging.getLogger(__name__)

STOP_POLL_S = 0.02  # how often a wait polls its stop callback


@dataclass(frozen=True)
class PlannerStatus:
    busy: bool
    pending: bool
    n_requests: int
    n_ok: int
    n_failed: int
    last_error: str | None
    last_reason: str | None
    latest_request: int | None


class AsyncPlanner:
    """Wraps a ``Planner``; owns it (``close`` closes it). ``validate(plan, rgbd)`` runs in the worker
    after planning (e.g. ``lift_plan`` with the camera pose and workspace); its return value is kept
    next to the plan (:meth:`latest_result`) and an exception from it marks the plan as rejected."""

    def __init__(self, planner: Any, validate: Callable[[Plan, RGBD], Any] | None = None, *,
                 name: str = "planner-worker", failure_level: int = logging.WARNING) -> None:
        self.planner = planner
        self.validate = validate
        self.failure_level = failure_level  # DEBUG where the caller reports failures itself (PlanSession)
        self._cv = threading.Condition()
        self._pending: tuple[int, RGBD, str, str] | None = None
        self._busy = False
        self._stop = False
        self._next_id = 0
        self._done_id = -1
        self._latest: tuple[int, Plan, Any] | None = None
        self._min_publish = 0  # results of requests older than this are dropped (after clear=True)
        self._n_ok = 0
        self._n_failed = 0
        self._last_error: str | None = None
        self._last_reason: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side (never blocks long)
    def request(self, rgbd: RGBD, instruction: str, reason: str = "", *, clear: bool = False) -> int:
        """Queue a planning request (replacing any waiting one); returns its id. ``clear`` drops the
        current plan at once (a new instruction: never act on the old one meanwhile)."""
        with self._cv:
            if self._stop:
                raise PlanError("AsyncPlanner is closed; create a new one")
            rid = self._next_id
            self._next_id += 1
            if self._pending is not None:
                log.debug("planner request %d superseded by %d", self._pending[0], rid)
                self._done_id = max(self._done_id, self._pending[0])
            self._pending = (rid, rgbd, instruction, reason)
            if clear:
                self._latest = None
                self._min_publish = rid
            self._cv.notify_all()
            return rid

    def latest(self) -> Plan | None:
        """The newest valid plan, or None."""
        with self._cv:
            return None if self._latest is None else self._latest[1]

    def latest_result(self) -> tuple[Plan, Any] | None:
        """``(plan, validate(plan, rgbd))`` of the newest valid plan, or None."""
        with self._cv:
            return None if self._latest is None else (self._latest[1], self._latest[2])

    def reject(self, reason: str) -> None:
        """Mark the current plan unusable (e.g. the controller could not reach it); latest() -> None."""
        with self._cv:
            self._latest = None
            self._last_error = f"rejected by caller: {reason}"
            log.warning("plan rejected: %s", reason)

    def status(self) -> PlannerStatus:
        with self._cv:
            return PlannerStatus(busy=self._busy, pending=self._pending is not None, n_requests=self._next_id,
                                 n_ok=self._n_ok, n_failed=self._n_failed, last_error=self._last_error,
                                 last_reason=self._last_reason,
                                 latest_request=None if self._latest is None else self._latest[0])

    def wait(self, request_id: int, timeout: float | None = None, *,
             stop: Callable[[], bool] | None = None) -> bool:
        """Block until ``request_id`` is done (planned, failed or superseded); False when ``timeout``
        passes first, or ``stop()`` turns true (polled every :data:`STOP_POLL_S`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._done_id < request_id:
                if stop is not None and stop():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if stop is not None:
                    left = STOP_POLL_S if left is None else min(left, STOP_POLL_S)
                self._cv.wait(left)
            return True

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stop = True
            self._pending = None
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("planner worker still busy after %.1f s (a plan request running); it is left to "
                            "finish in the background", timeout)
                return
        close = getattr(self.planner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "AsyncPlanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                rid, rgbd, instruction, reason = self._pending
                self._pending = None
                self._busy = True
            result: Any = None
            error: str | None = None
            plan = None
            try:
                plan = self.planner.plan(rgbd, instruction)
                if self.validate is not None:
                    result = self.validate(plan, rgbd)
            except Exception as e:  # noqa: BLE001 - a worker must never die; the reason is kept
                error = f"{type(e).__name__}: {e}"
                log.log(self.failure_level, "planner request %d (%s) failed: %s", rid, reason or "no reason given",
                        error)
            with self._cv:
                self._busy = False
                self._done_id = max(self._done_id, rid)
                self._last_reason = reason or None
                if error is None:
                    self._n_ok += 1
                    self._last_error = None
                    if rid >= self._min_publish and (self._latest is None or rid > self._latest[0]):
                        self._latest = (rid, plan, result)
                else:
                    self._n_failed += 1
                    self._last_error = error
                self._cv.notify_all()
