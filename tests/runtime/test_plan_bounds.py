"""Plans that cannot be right: an anchor off the image, or one that lifts (depth + T_base_cam) outside
the setup's workspace (``limits.workspace_min/max``, within the camera's crop) is rejected, logged with
its reason (anchor, pixel, lifted point, the bound it broke) and re-planned while the arm holds, at most
``planner.max_attempts`` times; then the episode ends with the reason. Scripted fake planners on the
flat-table fakes of test_pipeline."""

import dataclasses
import logging
import re

import numpy as np
import pytest

from edgebridge.clock import SimClock
from edgebridge.config import ConfigError, load_config
from edgebridge.contracts import Anchor, Plan
from edgebridge.kernels import WorkspaceBox
from edgebridge.runtime.config import PlannerConfig, RobotConfig
from edgebridge.runtime.lift import AnchorBounds
from edgebridge.runtime.pipeline import Pipeline

from test_pipeline import FAST, setup

DOWN = np.array([0.0, 0.0, 0.0, 1.0])
GOOD = (Anchor(40, 24, 1.0), Anchor(40, 24, 0.0), Anchor(26, 30, 1.0))
OFF_IMAGE = (Anchor(40, 24, 1.0), Anchor(500, 24, 0.0))                 # the image is 64 x 48
# FlatCamera: x = (u - 32) / 50 * 0.9 on the table (z = 0.1); LIMITS allow x <= 0.4: u = 63 -> x = 0.558
OFF_WORKSPACE = (Anchor(40, 24, 1.0), Anchor(63, 24, 0.0), Anchor(26, 30, 1.0))


class ScriptPlanner:
    """Answers the scripted anchors in turn (the last one again once the script is used up)."""

    def __init__(self, *script) -> None:
        self.script, self.calls = list(script), 0

    def plan(self, rgbd, instruction):
        anchors = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return Plan(instruction, anchors, orientation=DOWN, source="script")

    def close(self):
        pass


def run(planner, workspace=None, **planner_cfg):
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    if planner_cfg:
        cfg = dataclasses.replace(cfg, planner=PlannerConfig(**planner_cfg))
    dev.planner = planner
    dev.workspace = workspace
    return Pipeline(cfg, dev, guidance_config=FAST, settle_s=0.3).run("pick and place"), arm


def test_a_plan_off_the_image_is_rejected_logged_and_replanned(caplog):
    planner = ScriptPlanner(OFF_IMAGE, GOOD)
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.plan_session"):
        out, arm = run(planner)
    assert out.success, out.reason
    p = out.planning
    assert planner.calls == 2 and p["rejected"] == 1 and p["accepted"] == 1
    assert len(p["rejections"]) == 1 and "round 1 attempt 1/3" in p["rejections"][0]
    assert "anchor 1 at pixel (u=500, v=24) lies outside the 64x48 image" in p["rejections"][0]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 1 and "plan rejected, attempt 1/3" in logged[0] and "the arm holds" in logged[0]
    assert "u=500" in logged[0]
    assert arm.violations == []


def test_a_plan_outside_the_workspace_is_rejected_with_the_bound_it_broke(caplog):
    planner = ScriptPlanner(OFF_WORKSPACE, GOOD)
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.plan_session"):
        out, arm = run(planner)
    assert out.success, out.reason
    why = out.planning["rejections"][0]
    assert "anchor 1 at pixel (u=63, v=24) lifts to (0.56, 0.00, 0.10) m, outside the workspace x -0.40..0.40" in why
    assert "x 0.56 m is above 0.40 m (limits.workspace_max)" in why
    assert any("x 0.56 m is above" in r.getMessage() for r in caplog.records)
    # nothing was sent towards the rejected point: the arm stayed inside x <= 0.4
    assert max(c.joints[0] for c in arm.commands) <= 0.4 + 1e-9 and arm.violations == []


def test_the_camera_crop_narrows_the_workspace():
    crop = WorkspaceBox.from_bounds((-0.3, -0.3, -0.1), (0.3, 0.3, 0.5))
    # u = 52 -> x = 0.36: inside the limits (0.4), outside the crop (0.3)
    planner = ScriptPlanner((Anchor(52, 24, 1.0), Anchor(52, 24, 0.0)), GOOD)
    out, _ = run(planner, workspace=crop)
    assert out.success, out.reason
    assert "x 0.36 m is above 0.30 m (the camera's workspace crop (max))" in out.planning["rejections"][0]


def test_after_the_last_attempt_the_episode_ends_with_the_reason_and_the_arm_never_moved():
    planner = ScriptPlanner(OFF_WORKSPACE)
    out, arm = run(planner, max_attempts=2)
    assert not out.success
    assert out.reason.startswith("plan rejected: PlanError: anchor 1 at pixel (u=63, v=24)")
    assert "(limits.workspace_max)" in out.reason and out.reason.endswith("(2 attempts)")
    assert planner.calls == 2 and out.planning["rejected"] == 2 and len(out.planning["rejections"]) == 2
    assert arm.commands == []


def test_max_attempts_is_a_validated_setup_option(tmp_path):
    with pytest.raises(ConfigError, match="max_attempts: must be >= 1"):
        PlannerConfig(max_attempts=0)
    toml = tmp_path / "robot.toml"
    toml.write_text('name = "t"\n[planner]\nmax_attempts = 0\n[limits]\njoint_lower = [0.0]\njoint_upper = [1.0]\n'
                    'joint_velocity = [1.0]\njoint_acceleration = [1.0]\n')
    with pytest.raises(ConfigError, match=r"robot.toml: planner.max_attempts: must be >= 1, got 0"):
        load_config(toml, RobotConfig)


def test_anchor_bounds_intersect_limits_and_crop_and_name_each_bound():
    b = AnchorBounds((0.05, -0.65, 0.0), (0.9, 0.65, 0.75),
                     WorkspaceBox.from_bounds((0.05, -0.6, -0.03), (0.9, 0.6, 0.6)))
    assert np.allclose(b.lo, [0.05, -0.6, -0.03]) and np.allclose(b.hi, [0.9, 0.6, 0.6])
    assert b.contains(np.array([[0.5, 0.0, -0.02], [0.5, 0.0, 0.1]])).tolist() == [True, True]
    assert b.violation([0.5, 0.0, 0.1]) is None
    assert b.violation([0.95, 0.0, 0.1]) == "x 0.95 m is above 0.90 m (limits.workspace_max)"
    assert b.violation([0.5, 0.62, 0.1]) == "y 0.62 m is above 0.60 m (the camera's workspace crop (max))"
    assert b.violation([0.902, 0.0, 0.1]) == "x 0.902 m is above 0.900 m (limits.workspace_max)"  # 3 digits to differ
    assert b.describe() == "x 0.05..0.90, y -0.60..0.60, z -0.03..0.60"
    # the floor: limits.workspace_min z less the surface margin (here the same as the crop's)
    assert b.violation([0.5, 0.0, -0.05]).startswith("z -0.05 m is below -0.03 m (limits.workspace_min - 0.03 m)")
    # a rotated crop is checked as a region
    rot = WorkspaceBox(np.array([0.5, 0.0, 0.2]), np.array([0.1, 0.1, 0.3]), np.array([0.0, 0.0, 0.3826834, 0.9238795]))
    b2 = AnchorBounds((0.0, -1.0, 0.0), (1.0, 1.0, 1.0), rot)
    assert b2.contains(np.array([[0.5, 0.0, 0.2], [0.9, 0.0, 0.2]])).tolist() == [True, False]
    assert b2.violation([0.9, 0.0, 0.2]) == "outside the camera's working volume (its rotated crop)"
    assert b2.describe() == ("x 0.00..1.00, y -1.00..1.00, z -0.03..1.00, within a box centred at (0.50, 0.00, 0.20) m "
                             "with half sizes (0.10, 0.10, 0.30) m, turned 45 deg about (0.00, 0.00, 1.00)")


def test_each_rejected_attempt_is_one_readable_warning(caplog):
    """One WARNING per rejected attempt (none from the planner worker), naming what and why in metres with
    two decimals and the attempt count; no array or WorkspaceBox reprs. A rotated crop is the case that
    used to print ``WorkspaceBox(center=array([...]), ...)``."""
    rot = WorkspaceBox(np.array([0.0, 0.0, 0.2]), np.array([0.2, 0.2, 0.3]), np.array([0.0, 0.0, 0.3826834, 0.9238795]))
    planner = ScriptPlanner((Anchor(45, 12, 1.0), Anchor(40, 24, 0.0)))  # (0.23, 0.22): inside limits, off the crop
    with caplog.at_level(logging.DEBUG):
        out, arm = run(planner, workspace=rot, max_attempts=2)
    assert not out.success and out.planning["rejected"] == 2 and arm.commands == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    for k, msg in enumerate(warnings, 1):
        assert msg.startswith(f"plan rejected, attempt {k}/2 (planning round 1; the arm holds): PlanError: anchor 0 "
                              f"at pixel (u=45, v=12) lifts to (0.23, 0.22, 0.10) m, outside the workspace x -0.40..0.40")
        assert "within a box centred at (0.00, 0.00, 0.20) m" in msg and msg.count("box centred") == 1
        assert "outside the camera's working volume" in msg
        assert "array(" not in msg and "WorkspaceBox(" not in msg and "\n" not in msg
        numbers = re.findall(r"-?\d+\.\d+", msg)
        assert numbers and all(re.fullmatch(r"-?\d+\.\d\d", n) for n in numbers), numbers
    # the details are there under -v (debug), from the worker and the lift
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("planner request 0 (new instruction) failed" in m for m in debug)
    assert any("plan rejected by the workspace" in m for m in debug)
