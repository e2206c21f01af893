"""Grasps that closed on nothing, and re-plans at the pre-grasp point (runtime/grasp_check.py,
plan_session.py): on the flat-table fakes of test_pipeline (an arm whose gripper closes on nothing at
chosen grasps) and on a PlanSession driven by hand; the new planner settings are validated."""

import dataclasses
import logging
import threading

import numpy as np
import pytest

from edgebridge.clock import SimClock
from edgebridge.config import ConfigError, load_config
from edgebridge.contracts import Anchor, ArmState, Plan, Pose, Waypoints
from edgebridge.errors import PlanError
from edgebridge.runtime.config import PlannerConfig, RobotConfig
from edgebridge.runtime.grasp_check import GraspPolicy, close_anchors, grasp_events, retreat_guidance
from edgebridge.runtime.guidance import approach_waypoints, fit_guidance
from edgebridge.runtime.pipeline import Pipeline
from edgebridge.runtime.plan_session import PlanSession

from runtime_fakes import RecordingArm
from test_pipeline import FAST, setup

DOWN = np.array([0.0, 0.0, 0.0, 1.0])
PICK_PLACE = (Anchor(40, 24, 1.0), Anchor(40, 24, 0.0), Anchor(26, 30, 1.0))   # one sub-task
TWO_STEPS = (Anchor(40, 24, 1.0), Anchor(40, 24, 0.0), Anchor(26, 30, 1.0),
             Anchor(20, 14, 1.0), Anchor(20, 14, 0.0), Anchor(44, 34, 1.0))   # sub-tasks at 0 and 3
TABLE_Z = 0.1  # FlatCamera's table, base frame
CONTACT_Z = TABLE_Z - FAST.grasp_depth_m


class GraspArm(RecordingArm):
    """The gripper closes on nothing at the grasps whose number (0-based) is in ``empty``, on an object
    (reading 0.5) at the others."""

    def __init__(self, clock, empty=()) -> None:
        super().__init__(q0=(0.1, 0.0, 0.3), period_s=0.01, clock=clock)
        self.empty, self.grasps = set(empty), 0

    def command(self, cmd):
        closing = self.gripper >= 0.5 > cmd.gripper
        sent = super().command(cmd)
        if closing:
            self.held_width = 0.0 if self.grasps in self.empty else 0.5
            self.grasps += 1
        return sent


class Planner:
    """Answers ``anchors`` (sub-tasks ``subtasks``); the calls in ``fail`` raise."""

    def __init__(self, anchors=PICK_PLACE, subtasks=(), fail=()) -> None:
        self.anchors, self.subtasks, self.fail, self.calls = anchors, subtasks, set(fail), 0

    def plan(self, rgbd, instruction):
        i = self.calls
        self.calls += 1
        if i in self.fail:
            raise PlanError(f"unparsable answer #{i}")
        return Plan(instruction, self.anchors, orientation=DOWN, subtasks=self.subtasks, source="script")

    def close(self):
        pass


def run(planner, empty=(), max_seconds=None, **planner_cfg):
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, _ = setup(clock)
    arm = GraspArm(clock, empty)
    dev.arm, dev.planner = arm, planner
    cfg = dataclasses.replace(cfg, planner=PlannerConfig(**planner_cfg))
    return Pipeline(cfg, dev, guidance_config=FAST, settle_s=0.3).run("pick and place", max_seconds=max_seconds), arm


def empty_grasp_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "empty grasp" in r.getMessage()]


def test_an_empty_grasp_lifts_opens_and_replans_the_subtask_once(caplog):
    planner = Planner()
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.plan_session"):
        out, arm = run(planner, empty={0})
    assert out.success, out.reason
    p = out.planning
    assert p["empty_grasps"] == 1 and p["regrasps"] == 1
    assert planner.calls == 2 and p["requests"] == 2 and p["accepted"] == 2 and p["subtasks_done"] == 1
    assert arm.grasps == 2 and arm.violations == []
    [line] = empty_grasp_lines(caplog)
    assert "the gripper reads 0.000 < planner.empty_grasp_width 0.050" in line and "re-grasp 1 of 2" in line
    # between the two grasps the arm lifted to the pre-grasp height above the contact, opened there, and went
    # back up to where its approach started (0.3 m) before the re-plan
    g = np.array([c.gripper for c in arm.commands])
    closes = np.flatnonzero((g[:-1] >= 0.5) & (g[1:] < 0.5)) + 1
    between = arm.commands[closes[0]:closes[1]]
    opened = next(i for i, c in enumerate(between) if c.gripper > 0.5)
    assert between[opened].joints[2] >= CONTACT_Z + FAST.approach_m - 0.01
    assert np.allclose(between[opened].joints[:2], between[0].joints[:2], atol=0.01)  # straight up
    assert max(c.joints[2] for c in between[opened:]) > 0.29


def test_max_regrasps_0_disables_the_check(caplog):
    planner = Planner()
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.plan_session"):
        out, arm = run(planner, empty={0}, max_regrasps=0)
    p = out.planning
    assert planner.calls == 1 and p["empty_grasps"] == 0 and p["regrasps"] == 0 and arm.grasps == 1
    assert empty_grasp_lines(caplog) == []


def test_a_grasp_that_holds_an_object_triggers_nothing():
    planner = Planner()
    out, arm = run(planner)
    assert out.success, out.reason
    assert planner.calls == 1 and out.planning["empty_grasps"] == 0 and out.planning["regrasps"] == 0


def test_regrasps_are_bounded_per_episode(caplog):
    planner = Planner()
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.plan_session"):
        out, arm = run(planner, empty=range(10), max_regrasps=2)
    p = out.planning
    assert p["regrasps"] == 2 and p["empty_grasps"] == 3 and planner.calls == 3 and arm.grasps == 3
    lines = empty_grasp_lines(caplog)
    assert len(lines) == 3 and "no re-grasp left (2 used)" in lines[-1]
    assert out.reason.startswith("guidance complete")  # it went on with the plan after the last one


def test_a_failed_replan_after_an_empty_grasp_falls_back_to_the_previous_plan():
    planner = Planner(fail={1, 2})
    out, arm = run(planner, empty={0}, max_attempts=2)
    assert out.success, out.reason
    p = out.planning
    assert p["regrasps"] == 1 and p["fallbacks"] == 1 and p["rejected"] == 2 and arm.grasps == 2


def test_an_empty_grasp_in_the_second_subtask_of_a_whole_plan_replans_from_that_subtask():
    planner = Planner(TWO_STEPS, subtasks=(0, 3))
    out, arm = run(planner, empty={1}, replan_subtasks=False, max_seconds=30.0)  # a slow arm: 20 s is tight
    assert out.success, out.reason
    p = out.planning
    assert planner.calls == 2 and p["regrasps"] == 1 and p["subtasks_done"] == 2
    assert arm.grasps == 3  # the first sub-task is not done again


@pytest.mark.parametrize("anchors, subtasks, grasps", [(PICK_PLACE, (), 1), (TWO_STEPS, (0, 3), 2)])
def test_replan_before_grasp_asks_once_more_per_grasp(anchors, subtasks, grasps):
    plain = Planner(anchors, subtasks)
    out0, _ = run(plain)
    planner = Planner(anchors, subtasks)
    out, arm = run(planner, replan_before_grasp=True)
    assert out0.success and out.success, out.reason
    assert planner.calls == plain.calls + grasps and out.planning["pregrasp_replans"] == grasps
    assert arm.grasps == grasps and arm.violations == []


# ---------------------------------------------------------------------- the session by hand

def _state(p, gripper=1.0, stamp_ns=0) -> ArmState:
    return ArmState(np.asarray(p, float), Pose(np.asarray(p, float)), gripper, stamp_ns=stamp_ns)


class _Lifted:
    """Lifts anchor k of a plan to a fixed base-frame point (u / 100, v / 100, 0.1)."""

    def __call__(self, plan, frame):
        pts = np.array([[a.u / 100.0, a.v / 100.0, TABLE_Z] for a in plan.anchors])
        return Waypoints(pts, np.tile(DOWN, (len(pts), 1)), np.array([a.gripper for a in plan.anchors]))


def _build(wp, state, stamp_ns):
    path, durations = approach_waypoints(wp, state, config=FAST)
    spline = fit_guidance(path, durations, FAST)
    return spline.duration, spline.sample(0.05, stamp_ns=stamp_ns)


def test_grasp_events_find_the_pregrasp_point_the_close_and_its_anchor():
    wp = _Lifted()(Plan("p", PICK_PLACE, orientation=DOWN), None)
    state = _state((0.1, 0.0, 0.3))
    _, guidance = _build(wp, state, 5_000_000_000)
    [ev] = grasp_events(guidance, 0.4, FAST.approach_m, close_anchors(wp, state.gripper))
    assert ev.anchor == 1 and np.allclose(ev.contact, (0.4, 0.24, CONTACT_Z), atol=1e-3)
    t = (np.asarray(guidance.t) * 1e9 + guidance.stamp_ns).astype(np.int64)
    at = lambda ns: guidance.positions[np.searchsorted(t, ns)]  # noqa: E731
    assert abs(at(ev.pre_ns)[2] - (CONTACT_Z + FAST.approach_m)) < 0.012  # the descent starts here
    assert ev.pre_ns < ev.closed_ns and ev.check_ns == ev.closed_ns + int(0.4e9) <= ev.until_ns
    assert np.allclose(ev.back.position, (0.1, 0.0, 0.3), atol=0.005)  # the top of the approach: where it began
    assert guidance.gripper[np.searchsorted(t, ev.closed_ns)] < 1e-3  # closed by then


def test_the_retreat_lifts_above_the_contact_opens_then_goes_back():
    state, contact = _state((0.3, 0.1, CONTACT_Z + 0.01), gripper=0.0), np.array([0.3, 0.1, CONTACT_Z])
    top = CONTACT_Z + FAST.approach_m
    _, g = retreat_guidance(state, contact, FAST, 0.05, 0)
    z, grip = np.asarray(g.positions)[:, 2], np.asarray(g.gripper)
    assert grip[0] == 0.0 and grip[-1] == 1.0 and z[-1] == pytest.approx(top, abs=1e-6)
    assert np.all(z[grip > 0.01] > top - 1e-6)  # it opens only at the top
    assert np.allclose(np.asarray(g.positions)[:, :2], (0.3, 0.1), atol=1e-6)
    _, g = retreat_guidance(state, contact, FAST, 0.05, 0, back=Pose(np.array([0.1, 0.0, 0.3])))
    pos, grip = np.asarray(g.positions), np.asarray(g.gripper)
    assert np.allclose(pos[-1], (0.1, 0.0, 0.3), atol=1e-3) and grip[-1] == 1.0
    away = np.linalg.norm(pos[:, :2] - (0.3, 0.1), axis=1) > 1e-3
    assert np.all(grip[away] == 1.0)  # open before it moves away


def test_the_session_holds_at_the_pregrasp_point_while_a_slow_replan_runs():
    release = threading.Event()

    class Slow(Planner):
        def plan(self, rgbd, instruction):
            if self.calls == 1:
                release.wait(10.0)
            return super().plan(rgbd, instruction)

    from edgebridge.runtime.planner.gguf import blank_frame

    planner = Slow()
    policy = GraspPolicy(guidance=FAST, replan_before_grasp=True)
    session = PlanSession(planner, "pick", capture=lambda: blank_frame(64, 48), lift=_Lifted(), build=_build,
                          blocking=False, grasp=policy)
    try:
        now, p = 1_000_000_000, (0.1, 0.0, 0.3)
        assert session.tick(now, _state(p, stamp_ns=now)) is None
        while session.waiting:  # the first plan
            threading.Event().wait(0.005)
            session.tick(now, _state(p, stamp_ns=now))
        first = session.guidance
        [ev] = session._events
        now = ev.pre_ns
        assert session.tick(now, _state(p, stamp_ns=now)) is None and session.waiting  # asked again, not blocked
        hold = session.guidance
        assert hold is not first and len(hold.t) == 2 and np.allclose(hold.positions, p)  # holds where it is
        assert session.stats.pregrasp_replans == 1 and session.stats.requests == 2
        release.set()
        for _ in range(500):
            if session.tick(now, _state(p, stamp_ns=now)) is None and not session.waiting:
                break
            threading.Event().wait(0.01)
        assert session.guidance is not hold and session.stats.accepted == 2
        [ev2] = session._events
        assert session.tick(ev2.pre_ns, _state(p, stamp_ns=ev2.pre_ns)) is None and not session.waiting  # once
        assert session.stats.requests == 2
    finally:
        release.set()
        session.close()


# ---------------------------------------------------------------------- settings

@pytest.mark.parametrize("field, value, msg", [
    ("max_regrasps", -1, "max_regrasps: must be >= 0, got -1"),
    ("max_regrasps", 1.5, "max_regrasps: expected a whole number"),
    ("empty_grasp_width", 1.0, "empty_grasp_width: must lie in \\[0, 1\\)"),
    ("empty_grasp_width", -0.1, "empty_grasp_width: must lie in \\[0, 1\\)"),
    ("grasp_settle_s", -0.5, "grasp_settle_s: must be >= 0"),
    ("grasp_settle_s", 60.0, "grasp_settle_s: must be <= 10"),
    ("replan_before_grasp", 1, "replan_before_grasp: expected true or false"),
])
def test_grasp_settings_are_validated(field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        PlannerConfig(**{field: value})


def test_grasp_settings_load_from_a_setup_file(tmp_path):
    base = ('name = "t"\n[limits]\njoint_lower = [0.0]\njoint_upper = [1.0]\njoint_velocity = [1.0]\n'
            'joint_acceleration = [1.0]\n[planner]\n')
    toml = tmp_path / "robot.toml"
    toml.write_text(base + "max_regrasps = 0\nempty_grasp_width = 0.08\ngrasp_settle_s = 0.8\n"
                           "replan_before_grasp = true\n")
    pc = load_config(toml, RobotConfig).planner
    assert (pc.max_regrasps, pc.empty_grasp_width, pc.grasp_settle_s, pc.replan_before_grasp) == (0, 0.08, 0.8, True)
    toml.write_text(base + "max_regrasps = -2\n")
    with pytest.raises(ConfigError, match=r"robot.toml: planner.max_regrasps: must be >= 0, got -2"):
        load_config(toml, RobotConfig)
    assert PlannerConfig().max_regrasps == 2 and PlannerConfig().replan_before_grasp is False
