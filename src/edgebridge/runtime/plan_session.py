"""Planning during an episode: the planner off the control path, plan validation, retries, and
re-planning at sub-task boundaries.

A :class:`PlanSession` wraps the episode's planner in an :class:`~edgebridge.runtime.planner.AsyncPlanner`
(a worker thread) whose ``validate`` step lifts the plan (``lift_plan``: depth, camera pose, workspace),
so a plan that points off the table or into a depth hole is never published. The episode's supervisor
calls :meth:`PlanSession.tick` (lock-step: a hook of every loop cycle; real time: the supervising
thread), which never blocks on the model in real time:

- **waiting** for a plan, the session publishes no new guidance: before the first plan the loop holds
  (no chunks yet); at a sub-task boundary the expert keeps tracking the end of the finished sub-task
  (the arm holds there) until the new plan is validated;
- a **rejected** plan (planner error, unparsable answer, lift failure, a sub-task count that does not
  fit the instruction, a planner that does not answer within ``timeout_s``) is re-requested from a fresh
  frame, at most ``max_attempts`` times in all; then the episode stops with ``plan rejected: <reason>``
  or, at a sub-task boundary, falls back to the previous plan's remaining sub-tasks (logged, counted);
- with sub-task boundaries (``Plan.subtasks``) each sub-task gets its own guidance, and when it ends the
  planner is asked again from a fresh frame, so a long task acts on the newest view. The planner plans
  the whole instruction each time; a re-plan with as many sub-tasks as the first plan continues at the
  first unfinished one, a re-plan with exactly the remaining count is taken whole;
- around grasps (``grasp``, a :class:`~edgebridge.runtime.grasp_check.GraspPolicy`): a gripper that closed
  on nothing (read from ``settle_s`` after the guidance closed it) ends the guidance being followed; the arm
  lifts, opens and goes back to the highest point of its approach (a short guidance of its own), then
  the sub-task of that grasp is re-planned from a fresh frame like a sub-task boundary, at most
  ``max_regrasps`` times per episode (``regrasps``). With ``replan_before_grasp`` the arm holds at each
  pre-grasp point and the sub-task is re-planned once (``pregrasp_replans``). Either way a failed re-plan
  falls back to the previous plan from that sub-task.

In lock-step (``blocking=True``) a request waits for its answer at once, in wall time, while simulated
time stands still: deterministic, and the arm holds by construction.

Each rejected attempt is logged once, as one WARNING line (the worker's own report is at debug level).
``stop`` (the run's stop request, e.g. the watchdog's ``StopRequest`` that SIGINT sets) is polled by
every wait and before every retry, at least every 50 ms: ``tick`` then returns ``stop requested...``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..contracts import RGBD, ArmState, Plan, Waypoints
from ..errors import PlanError
from .grasp_check import GraspEvent, GraspPolicy, close_anchors, grasp_events, hold_guidance
from .profiling import Profiler, timer

log = logging.getLogger(__name__)

GUIDANCE_COMPLETE = "guidance complete"
STOP_REQUESTED = "stop requested"
STOP_CLOSE_S = 0.1  # after a stop request, how long close() waits for a plan request still running


@dataclass
class PlanningStats:
    """Per episode: requests, accepted/rejected plans, fall-backs to a previous plan, planner latency
    (request -> answer, wall ms), how long the arm held waiting for a plan (loop clock, s) and the reason
    of every rejected plan (``rejections``, the first ``MAX_KEPT``: "round r attempt k/n: reason")."""

    MAX_KEPT = 20

    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    fallbacks: int = 0
    subtasks_done: int = 0
    latency_ms: list[float] = field(default_factory=list)
    hold_s: float = 0.0
    clamped: int = 0  # anchors moved into the workspace along their camera ray (planner.anchor_out_of_bounds)
    empty_grasps: int = 0  # grasps that closed on nothing (planner.empty_grasp_width)
    regrasps: int = 0  # re-plans after an empty grasp (at most planner.max_regrasps)
    pregrasp_replans: int = 0  # re-plans at a pre-grasp point (planner.replan_before_grasp)
    cloud_yaws: int = 0  # plans whose grasp yaw was measured in the depth image (planner.grasp_yaw)
    centred_grasps: int = 0  # grasp anchors moved onto a round body's axis (planner.grasp_point)
    last_error: str | None = None
    rejections: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(0)
        return {"requests": self.requests, "accepted": self.accepted, "rejected": self.rejected,
                "fallbacks": self.fallbacks, "subtasks_done": self.subtasks_done,
                "latency_p50_ms": round(float(np.median(lat)), 3) if lat.size else None,
                "latency_max_ms": round(float(lat.max()), 3) if lat.size else None,
                "hold_s": round(self.hold_s, 3), "clamped": self.clamped, "empty_grasps": self.empty_grasps,
                "regrasps": self.regrasps, "pregrasp_replans": self.pregrasp_replans, "cloud_yaws": self.cloud_yaws,
                "centred_grasps": self.centred_grasps,
                "last_error": self.last_error,
                "rejections": list(self.rejections)}

    def summary(self) -> str:
        d = self.to_dict()
        lat = f", latency p50 {d['latency_p50_ms']:.1f} ms max {d['latency_max_ms']:.1f} ms" if self.latency_ms else ""
        grasps = (f", {self.empty_grasps} empty grasps, {self.regrasps} re-grasps" if self.empty_grasps else "") + (
            f", {self.pregrasp_replans} pre-grasp re-plans" if self.pregrasp_replans else "")
        return (f"planner {self.requests} requests, {self.accepted} accepted, {self.rejected} rejected"
                f"{', ' + str(self.fallbacks) + ' fall-backs' if self.fallbacks else ''}{grasps}{lat}, arm held "
                f"{self.hold_s:.2f} s waiting")


def subtask_bounds(plan: Plan) -> list[tuple[int, int]]:
    """Anchor index ranges ``[a, b)`` of the plan's sub-tasks (one range when it has no boundaries)."""
    starts = sorted({0, *plan.subtasks})
    ends = starts[1:] + [len(plan.anchors)]
    return list(zip(starts, ends))


class _TimedPlanner:
    """The episode's planner as the AsyncPlanner sees it: times ``plan`` as the ``planner`` stage; its
    ``close`` does nothing (the device factory owns and closes the real planner)."""

    def __init__(self, planner: Any, profiler: Profiler | None) -> None:
        self.planner, self.profiler = planner, profiler

    def plan(self, rgbd: RGBD, instruction: str) -> Plan:
        with timer(self.profiler, "planner"):
            return self.planner.plan(rgbd, instruction)

    def close(self) -> None:
        pass


class PlanSession:
    """One episode's planning. ``capture()`` returns a fresh frame; ``lift(plan, frame)`` validates a
    plan into base-frame waypoints (one per anchor); ``build(waypoints, state, stamp_ns)`` makes the
    guidance ``(duration_s, Guidance)`` starting at the arm state. ``guidance`` is what the expert follows
    (None until the first plan is accepted)."""

    def __init__(self, planner: Any, instruction: str, *, capture: Callable[[], RGBD],
                 lift: Callable[[Plan, RGBD], Waypoints], build: Callable[[Waypoints, ArmState, int], tuple],
                 max_attempts: int = 3, replan_subtasks: bool = True, timeout_s: float = 60.0,
                 settle_s: float = 1.5, blocking: bool = False, profiler: Profiler | None = None,
                 stop: Callable[[], bool] | None = None, grasp: GraspPolicy | None = None) -> None:
        from .planner.asynchronous import AsyncPlanner

        self.instruction = instruction
        self.capture, self.build = capture, build
        self.max_attempts = int(max_attempts)
        self.replan_subtasks = bool(replan_subtasks)
        self.timeout_s = float(timeout_s)
        self.settle_s = float(settle_s)
        self.blocking = blocking
        self.profiler = profiler
        self.stop = stop
        self.grasp = grasp if grasp is not None and grasp.active else None
        self.stats = PlanningStats()
        self.guidance = None
        # the session reports each failure itself (one line per rejected attempt): the worker's at debug level
        self._ap = AsyncPlanner(_TimedPlanner(planner, profiler), validate=lift, name="episode-planner",
                                failure_level=logging.DEBUG)
        self._rid: int | None = None          # request in flight
        self._t_req = 0.0                     # its wall start (perf_counter)
        self._attempts = 0                    # attempts for the current planning round
        self._round = 0                       # planning rounds so far (1: the first plan, then one per re-plan)
        self._wait_since: int | None = None   # loop-clock ns the arm started waiting for a plan
        self._total: int | None = None        # sub-tasks of the instruction (from the first plan)
        # (waypoints, sub-tasks they cover, index of each sub-task's first waypoint) still to run
        self._segments: list[tuple[Waypoints, int, tuple[int, ...]]] = []
        self._seg_end_ns: int | None = None   # end of the guidance being followed
        self._seg_n = 0
        self._current: tuple[Waypoints, int, tuple[int, ...]] | None = None  # the segment being followed
        self._events: list[GraspEvent] = []   # its grasps still ahead (grasp_check.grasp_events)
        self._replan_reason: str | None = None  # at the end of the guidance: re-plan (even without replan_subtasks)
        self._pregrasp_done: set[tuple[int, int]] = set()  # (sub-task, re-grasps so far) re-planned at pre-grasp

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the planner worker; after a stop request a request still running is not waited for."""
        self._ap.close(STOP_CLOSE_S if self._stop_reason() else 30.0)

    def _stop_reason(self) -> str | None:
        if self.stop is None or not self.stop():
            return None
        why = getattr(self.stop, "reason", None)  # a StopRequest says why
        return f"{STOP_REQUESTED}: {why}" if why else STOP_REQUESTED

    @property
    def waiting(self) -> bool:
        return self._rid is not None

    # ------------------------------------------------------------------ supervisor side
    def tick(self, now_ns: int, state: ArmState | None) -> str | None:
        """Advance planning at loop-clock time ``now_ns``; returns a stop reason (``GUIDANCE_COMPLETE`` or
        ``plan rejected: ...``, or ``stop requested...`` once ``stop()`` is true) or None to go on."""
        why = self._stop_reason()
        if why:
            return why
        if state is None:
            return None
        if self._total is None and self._rid is None and self._attempts == 0:
            self._wait_since = now_ns
            return self._request(now_ns, state, "new instruction")
        if self._rid is not None:
            return self._poll(now_ns, state)
        if self._events:
            acted, why = self._watch_grasp(now_ns, state)
            if acted:
                return why
        if self._seg_end_ns is None or now_ns < self._seg_end_ns:
            return None
        # the guidance being followed has ended
        if self._seg_n:
            self.stats.subtasks_done += self._seg_n
            self._seg_n = 0
        if self._total is not None and self.stats.subtasks_done < self._total:
            self._wait_since = now_ns
            if self.replan_subtasks or self._replan_reason:
                reason = self._replan_reason or f"sub-task {self.stats.subtasks_done} of {self._total} done"
                self._replan_reason = None
                self._attempts = 0
                return self._request(now_ns, state, reason)
            return self._start_segment(now_ns, state)
        if now_ns >= self._seg_end_ns + int(self.settle_s * 1e9):
            return GUIDANCE_COMPLETE
        return None

    def _request(self, now_ns: int, state: ArmState, reason: str) -> str | None:
        why = self._stop_reason()
        if why:
            return why
        if self._attempts == 0:
            self._round += 1
        self._attempts += 1
        self.stats.requests += 1
        try:
            frame = self.capture()
        except Exception as e:  # a camera failure is a failed attempt (the watchdog supervises the camera)
            return self._failed(now_ns, state, f"camera read failed: {type(e).__name__}: {e}")
        self._rid = self._ap.request(frame, self.instruction, reason)
        self._t_req = time.perf_counter()
        log.info("planning (%s), attempt %d/%d", reason, self._attempts, self.max_attempts)
        if self.blocking:
            self._ap.wait(self._rid, self.timeout_s, stop=self.stop)
            return self._stop_reason() or self._poll(now_ns, state)
        return None

    def _poll(self, now_ns: int, state: ArmState) -> str | None:
        rid = self._rid
        waited = time.perf_counter() - self._t_req
        if not self._ap.wait(rid, 0.0):
            if waited < self.timeout_s:
                return None
            self._rid = None
            return self._failed(now_ns, state, f"the planner did not answer within {self.timeout_s:g} s")
        self._rid = None
        self.stats.latency_ms.append(waited * 1e3)
        if self.profiler is not None:
            self.profiler.record_ns("planner_wait", int(waited * 1e9))
        st = self._ap.status()
        res = self._ap.latest_result()
        if st.latest_request != rid or res is None:
            return self._failed(now_ns, state, st.last_error or "the planner gave no plan")
        plan, lifted = res
        try:
            self._adopt(plan, lifted)
            stop = self._start_segment(now_ns, state)
        except (PlanError, ValueError) as e:
            return self._failed(now_ns, state, f"{type(e).__name__}: {e}")
        self.stats.accepted += 1
        return stop

    def _failed(self, now_ns: int, state: ArmState, why: str) -> str | None:
        self.stats.rejected += 1
        self.stats.last_error = why
        if len(self.stats.rejections) < self.stats.MAX_KEPT:
            self.stats.rejections.append(f"round {self._round} attempt {self._attempts}/{self.max_attempts}: {why}")
        log.warning("plan rejected, attempt %d/%d (planning round %d; the arm holds): %s", self._attempts,
                    self.max_attempts, self._round, why)
        if self._attempts < self.max_attempts:
            return self._request(now_ns, state, "retry after a rejected plan")
        if self._segments:  # a sub-task boundary: keep the previous plan's remaining sub-tasks
            self.stats.fallbacks += 1
            log.warning("re-planning failed %d times; continuing with the previous plan's remaining %d sub-task(s)",
                        self._attempts, sum(seg[1] for seg in self._segments))
            return self._start_segment(now_ns, state)
        return f"plan rejected: {why} ({self._attempts} attempt{'s' if self._attempts > 1 else ''})"

    def _adopt(self, plan: Plan, lifted: Waypoints) -> None:
        if not isinstance(lifted, Waypoints) or len(lifted) != len(plan.anchors):
            raise PlanError(f"lifting gave {type(lifted).__name__} for a plan of {len(plan.anchors)} anchors")
        bounds = subtask_bounds(plan)
        n = len(bounds)
        done = self.stats.subtasks_done
        if self._total is None:
            self._total, skip = n, 0
        elif n == self._total:
            skip = done
        elif n == self._total - done:
            skip = 0
        else:
            raise PlanError(f"the re-plan has {n} sub-tasks, but the instruction has {self._total} "
                            f"({self._total - done} left); expected {self._total} or {self._total - done}")
        segs = [(_slice(lifted, a, b), 1, (0,)) for a, b in bounds[skip:]]
        if not self.replan_subtasks and len(segs) > 1:  # one guidance for all of it
            a = bounds[skip][0]
            segs = [(_slice(lifted, a, len(lifted)), len(segs), tuple(b0 - a for b0, _ in bounds[skip:]))]
        self._segments = segs
        log.info("plan accepted: %d anchors, %d sub-task(s), taking %d; base-frame waypoints [m]: %s", len(plan.anchors),
                 n, len(segs), np.round(lifted.positions, 3).tolist())

    def _start_segment(self, now_ns: int, state: ArmState) -> str | None:
        seg = self._segments.pop(0)
        wp, n, _ = seg
        duration_s, guidance = self.build(wp, state, now_ns)
        self.guidance = guidance
        self._seg_end_ns = now_ns + int(duration_s * 1e9)
        self._seg_n = n
        self._current = seg
        self._events = [] if self.grasp is None else grasp_events(
            guidance, self.grasp.settle_s, self.grasp.guidance.approach_m, close_anchors(wp, state.gripper))
        self._attempts = 0
        if self._wait_since is not None:
            held = now_ns - self._wait_since
            self.stats.hold_s += held / 1e9
            if self.profiler is not None:
                self.profiler.record_ns("planner_hold", held)
            self._wait_since = None
        return None

    # ------------------------------------------------------------------ grasps (grasp_check.py)
    def _watch_grasp(self, now_ns: int, state: ArmState) -> tuple[bool, str | None]:
        """The next grasp of the guidance being followed: re-plan at its pre-grasp point
        (``replan_before_grasp``, once per grasp attempt), then check the gripper once it has settled.
        Returns (whether the session acted, a stop reason or None)."""
        g, ev = self.grasp, self._events[0]
        sub = self._subtask_of(ev)
        if g.replan_before_grasp and now_ns >= ev.pre_ns and (sub, self.stats.regrasps) not in self._pregrasp_done:
            self._pregrasp_done.add((sub, self.stats.regrasps))
            self.stats.pregrasp_replans += 1
            self._interrupt(ev)
            self.guidance = hold_guidance(state, 1.0, now_ns)  # hold above the object while the planner looks
            self._wait_since = now_ns
            self._attempts = 0
            return True, self._request(now_ns, state, f"pre-grasp point of sub-task {sub + 1} of {self._total}")
        if now_ns < ev.check_ns:
            return False, None
        if g.max_regrasps <= 0 or not g.is_empty(state.gripper):
            if now_ns >= ev.until_ns or g.max_regrasps <= 0:  # held until the guidance opens the gripper
                self._events.pop(0)
            return False, None
        self._events.pop(0)
        self.stats.empty_grasps += 1
        left = self.stats.regrasps < g.max_regrasps
        log.warning("empty grasp: the gripper reads %.3f < planner.empty_grasp_width %.3f %.2f s after closing "
                    "(sub-task %d of %d); %s", state.gripper, g.empty_width, (now_ns - ev.closed_ns) / 1e9, sub + 1,
                    self._total,
                    f"lifting, opening and re-planning the sub-task (re-grasp {self.stats.regrasps + 1} of "
                    f"{g.max_regrasps})" if left else f"no re-grasp left ({g.max_regrasps} used), going on")
        if not left:
            return False, None
        self.stats.regrasps += 1
        self._interrupt(ev)
        duration_s, self.guidance = g.retreat(state, ev.contact, now_ns, ev.back)  # back: a clear view to re-plan
        self._seg_end_ns = now_ns + int((duration_s + g.settle_s) * 1e9)  # the gripper has opened by then
        self._replan_reason = f"empty grasp in sub-task {sub + 1} of {self._total}"
        return True, None

    def _subtask_of(self, ev: GraspEvent) -> int:
        """The sub-task (0-based, of the whole instruction) a grasp of the current guidance belongs to."""
        _, _, starts = self._current
        j = max(0, int(np.searchsorted(starts, ev.anchor, side="right")) - 1) if ev.anchor >= 0 else 0
        return self.stats.subtasks_done + j

    def _interrupt(self, ev: GraspEvent) -> None:
        """Stop following the current guidance at a grasp: the sub-tasks before the grasp's count as done,
        the rest of the current segment (from the grasp's sub-task on) goes back to the front of the
        segments to run (what a failed re-plan falls back to)."""
        wp, n, starts = self._current
        j = self._subtask_of(ev) - self.stats.subtasks_done
        self.stats.subtasks_done += j
        a = starts[j]
        self._segments.insert(0, (_slice(wp, a, len(wp)), n - j, tuple(s - a for s in starts[j:])))
        self._seg_n = 0
        self._events = []


def _slice(wp: Waypoints, a: int, b: int) -> Waypoints:
    return Waypoints(wp.positions[a:b], wp.quats[a:b], wp.gripper[a:b], frame=wp.frame, stamp_ns=wp.stamp_ns)
