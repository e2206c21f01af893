"""Planning during an episode, on fakes: the planner in its worker, retries after rejected plans,
re-planning at sub-task boundaries from a fresh frame, fall-back to the previous plan, planner timeouts,
and (real time) the arm holding while a slow planner thinks."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from edgebridge.clock import MonotonicClock, SimClock
from edgebridge.config import ConfigError
from edgebridge.contracts import Anchor, Plan
from edgebridge.errors import PlanError
from edgebridge.runtime.config import PlannerConfig
from edgebridge.runtime.guidance import GuidanceConfig
from edgebridge.runtime.pipeline import Pipeline

from test_pipeline import FAST, setup

TWO_STEPS = (Anchor(40, 24, 1.0), Anchor(40, 24, 0.0), Anchor(26, 30, 1.0),   # sub-task 0: pick, place
             Anchor(20, 14, 1.0), Anchor(20, 14, 0.0), Anchor(44, 34, 1.0))   # sub-task 1
DOWN = np.array([0.0, 0.0, 0.0, 1.0])


class CountingPlanner:
    """Plans two sub-tasks; ``fail``: call indices (0-based) that raise; ``rest_only``: calls that plan
    only the remaining sub-task; ``bad``: calls that answer with a plan pointing off the image; ``sleep_s``."""

    def __init__(self, fail=(), rest_only=(), bad=(), sleep_s=0.0, subtasks=(0, 3), anchors=TWO_STEPS) -> None:
        self.fail, self.rest_only, self.bad, self.sleep_s, self.subtasks = set(fail), set(rest_only), set(bad), sleep_s, subtasks
        self.anchors = anchors
        self.calls, self.frame_stamps = 0, []

    def plan(self, rgbd, instruction):
        i = self.calls
        self.calls += 1
        self.frame_stamps.append(rgbd.stamp_ns)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if i in self.fail:
            raise PlanError(f"unparsable answer #{i}")
        if i in self.bad:
            return Plan(instruction, (Anchor(500, 24, 1.0),), source="counting")  # off the 64-px image
        if i in self.rest_only:
            return Plan(instruction, self.anchors[3:], orientation=DOWN, subtasks=(0,), source="counting")
        return Plan(instruction, self.anchors, orientation=DOWN, subtasks=self.subtasks, source="counting")

    def close(self):
        pass


QUICK = GuidanceConfig(speed_m_s=1.0, v_max=1.0, a_max=4.0, dwell_s=0.05, min_segment_s=0.05, approach_m=0.05)


def run(planner, clock=None, planner_cfg=None, guidance=FAST, **kw):
    clock = clock or SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    if planner_cfg:
        cfg = dataclasses.replace(cfg, planner=PlannerConfig(**planner_cfg))
    dev.planner = planner
    out = Pipeline(cfg, dev, guidance_config=guidance, settle_s=0.3).run("two steps", **kw)
    return out, arm, dev


def placed(arm, anchor_xy):
    """Commands with the gripper opening at the place point: the x, y of the anchor on the 0.1 m table."""
    return any(np.linalg.norm(c.joints[:2] - anchor_xy) < 0.02 and c.gripper > 0.5 for c in arm.commands)


def anchor_xy(u, v):  # FlatCamera: camera 1 m above, looking down, fx = fy = 50, c = (32, 24), depth 0.9
    return np.array([(u - 32.0) / 50.0 * 0.9, -(v - 24.0) / 50.0 * 0.9])


def test_replans_at_each_subtask_boundary_from_a_fresh_frame():
    planner = CountingPlanner()
    out, arm, dev = run(planner)
    assert out.success, out.reason
    p = out.planning
    assert planner.calls == 2 and p["requests"] == 2 and p["accepted"] == 2 and p["subtasks_done"] == 2
    assert planner.frame_stamps[1] > planner.frame_stamps[0] + int(1e9)  # the second frame is newer
    assert arm.violations == []
    assert placed(arm, anchor_xy(26, 30)) and placed(arm, anchor_xy(44, 34))  # both sub-tasks ran
    assert p["latency_p50_ms"] is not None and p["hold_s"] >= 0.0


def test_without_subtask_replanning_the_plan_runs_whole():
    planner = CountingPlanner()
    out, arm, _ = run(planner, planner_cfg={"replan_subtasks": False})
    assert out.success, out.reason
    assert planner.calls == 1 and out.planning["subtasks_done"] == 2
    assert placed(arm, anchor_xy(44, 34))


def test_replan_with_only_the_remaining_subtask_is_taken_whole():
    planner = CountingPlanner(rest_only={1})
    out, arm, _ = run(planner)
    assert out.success, out.reason
    assert out.planning["accepted"] == 2 and out.planning["rejected"] == 0
    assert placed(arm, anchor_xy(44, 34))


def test_rejected_first_plans_are_retried_then_executed():
    planner = CountingPlanner(fail={0}, bad={1})  # a parse error, then a plan off the image, then a good one
    out, arm, _ = run(planner)
    assert out.success, out.reason
    assert out.planning["rejected"] == 2 and out.planning["accepted"] == 2 and planner.calls == 4
    assert arm.violations == []


def test_first_plan_rejected_every_time_fails_the_episode_with_the_reason():
    planner = CountingPlanner(fail=set(range(10)))
    out, arm, _ = run(planner, planner_cfg={"max_attempts": 4})
    assert not out.success
    assert out.reason.startswith("plan rejected:") and "unparsable answer #3" in out.reason and "4 attempts" in out.reason
    assert planner.calls == 4 and arm.commands == []  # the arm never moved


def test_failed_replan_at_a_boundary_keeps_the_previous_plan():
    planner = CountingPlanner(fail={1, 2, 3})  # every re-plan at the boundary fails
    out, arm, _ = run(planner)
    assert out.success, out.reason
    p = out.planning
    assert p["fallbacks"] == 1 and p["rejected"] == 3 and p["subtasks_done"] == 2
    assert "unparsable answer #3" in p["last_error"]
    assert placed(arm, anchor_xy(44, 34))  # the previous plan's second sub-task ran


def test_replan_with_a_subtask_count_that_does_not_fit_is_rejected():
    class Shifty(CountingPlanner):
        def plan(self, rgbd, instruction):
            p = super().plan(rgbd, instruction)
            return p if self.calls == 1 else dataclasses.replace(p, subtasks=(0, 2, 4))  # 3 sub-tasks now

    out, _, _ = run(Shifty(), planner_cfg={"max_attempts": 2})
    assert out.success, out.reason  # falls back to the first plan
    assert out.planning["fallbacks"] == 1 and "3 sub-tasks" in out.planning["last_error"]


def test_lockstep_planner_timeout_is_a_rejected_plan():
    planner = CountingPlanner(sleep_s=0.3)
    out, arm, _ = run(planner, planner_cfg={"timeout_s": 0.1, "max_attempts": 2})
    assert not out.success and "did not answer within 0.1 s" in out.reason
    assert arm.commands == []


def test_lockstep_runs_are_deterministic():
    a, arm_a, _ = run(CountingPlanner())
    b, arm_b, _ = run(CountingPlanner())
    assert a.success and b.success and len(arm_a.commands) == len(arm_b.commands)
    assert np.array_equal(np.array([c.joints for c in arm_a.commands]), np.array([c.joints for c in arm_b.commands]))


def test_realtime_slow_planner_holds_the_arm_and_the_loop_keeps_running():
    """A planner taking 0.4 s per plan runs off the control path: the loop keeps cycling (holding) while
    it thinks, the hold time and the planner latency are measured, and the episode completes."""
    near = (Anchor(34, 24, 1.0), Anchor(34, 24, 0.0), Anchor(31, 26, 1.0),
            Anchor(31, 24, 1.0), Anchor(31, 24, 0.0), Anchor(34, 26, 1.0))  # short moves: a quick test
    planner = CountingPlanner(sleep_s=0.4, anchors=near)
    t0 = time.monotonic()
    out, arm, _ = run(planner, clock=MonotonicClock(), guidance=QUICK, max_seconds=15.0)
    assert out.success, out.reason
    assert time.monotonic() - t0 < 15.0
    p = out.planning
    assert p["latency_p50_ms"] >= 390 and p["hold_s"] >= 0.7  # two plans, each held for ~0.4 s
    assert arm.violations == [] and out.loop["cycles"] > 100


def test_periodic_replanning_is_refused_with_a_clear_message():
    with pytest.raises(ConfigError, match="periodic re-planning is not implemented"):
        PlannerConfig(replan_s=2.0)


class _Hanging:
    """A planner whose server never answers: plan() blocks until released."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), 0

    def plan(self, rgbd, instruction):
        self.calls += 1
        self.release.wait()
        raise PlanError("released")


def _session(planner, stop, **kw):
    from edgebridge.runtime.planner.gguf import blank_frame
    from edgebridge.runtime.plan_session import PlanSession

    return PlanSession(planner, "pick", capture=lambda: blank_frame(64, 48), lift=lambda plan, frame: None,
                       build=lambda wp, state, stamp: (1.0, None), blocking=True, stop=stop, **kw)


def test_lockstep_planning_ends_promptly_on_a_stop_request():
    planner, flag = _Hanging(), threading.Event()
    session = _session(planner, flag.is_set, timeout_s=60.0, max_attempts=3)
    result = []
    t = threading.Thread(target=lambda: result.append(session.tick(1, object())), daemon=True)
    try:
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and planner.calls == 1  # waiting on the planner, as lock-step does
        t_stop = time.monotonic()
        flag.set()
        t.join(1.0)
        assert time.monotonic() - t_stop < 0.3 and result == ["stop requested"]
        assert session.stats.rejected == 0  # a stop is not a rejected plan
        t0 = time.monotonic()
        session.close()  # does not wait out the hanging request
        assert time.monotonic() - t0 < 1.0
    finally:
        planner.release.set()


def test_retries_stop_and_the_reason_says_why():
    class Request:  # what the pipeline passes: a StopRequest-like callable with a reason; set after a rejection
        reason = "SIGINT received"

        def __call__(self):
            return session.stats.rejected >= 1

    class Failing:
        calls = 0

        def plan(self, rgbd, instruction):
            Failing.calls += 1
            raise PlanError("garbage")

    session = _session(Failing(), Request(), max_attempts=5)
    try:
        assert session.tick(1, object()) == "stop requested: SIGINT received"
        assert Failing.calls == 1 and session.stats.rejected == 1  # no retry after the stop request
        assert session.tick(2, object()) == "stop requested: SIGINT received"
    finally:
        session.close()
