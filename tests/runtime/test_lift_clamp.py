"""Anchors lifted outside the workspace: clamped along their camera ray (planner.anchor_out_of_bounds), and the
simulated anchor-depth error along the ray."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.contracts import RGBD, Anchor, Intrinsics, Plan
from edgebridge.errors import PlanError
from edgebridge.runtime.lift import AnchorBounds, clamp_along_ray, lift_plan

W, H = 64, 48
INTR = Intrinsics(W, H, 60.0, 62.0, 31.5, 23.5)


def _frame(depth_m: float) -> RGBD:
    return RGBD(np.zeros((H, W, 3), np.uint8), np.full((H, W), depth_m, np.float32), INTR)


def _plan(*uv) -> Plan:
    return Plan("pick the cup", tuple(Anchor(u, v, 0.0) for u, v in uv))


# camera at z = 1 m looking straight down (optical z = base -z): depth d lands at base z = 1 - d
T_DOWN = np.array([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, 1.0], [0, 0, 0, 1.0]])
BOUNDS = AnchorBounds((-1, -1, 0.03), (1, 1, 0.9), surface_margin_m=0.03)  # floor at z = 0.0


def test_clamp_along_ray_keeps_inside_points_and_moves_outside_ones_onto_the_box():
    lo, hi = np.zeros(3), np.ones(3)
    np.testing.assert_allclose(clamp_along_ray([0.5, 0.5, 0.5], [0.5, 0.5, 2.0], lo, hi), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(clamp_along_ray([0.5, 0.5, -0.2], [0.5, 0.5, 2.0], lo, hi), [0.5, 0.5, 0.0])
    q = clamp_along_ray([1.0, 0.5, -1.0], [0.0, 0.5, 2.0], lo, hi)  # oblique ray: still on it
    np.testing.assert_allclose(q, [2 / 3, 0.5, 0.0], atol=1e-12)
    assert clamp_along_ray([5.0, 5.0, -1.0], [5.0, 5.0, 2.0], lo, hi) is None  # the ray misses the box


def test_an_anchor_under_the_table_is_clamped_onto_the_floor_bound_on_its_own_ray():
    frame = _frame(1.05)  # 5 cm below the floor bound z = 0
    plan = _plan((31, 23), (40, 30))
    with pytest.raises(PlanError, match="outside the workspace"):
        lift_plan(plan, frame, T_DOWN, BOUNDS)
    moved: list = []
    wp = lift_plan(plan, frame, T_DOWN, BOUNDS, out_of_bounds="clamp", clamped=moved)
    assert [i for i, _ in moved] == [0, 1]
    assert np.all(wp.positions[:, 2] >= 0.0) and np.all(wp.positions[:, 2] < 1e-3)
    # the pixel is kept: the clamped point is on the same camera ray as the unclamped one
    ray = wp.positions[1] - T_DOWN[:3, 3]
    far = lift_plan(plan, _frame(0.5), T_DOWN) .positions[1] - T_DOWN[:3, 3]
    np.testing.assert_allclose(ray / np.linalg.norm(ray), far / np.linalg.norm(far), atol=1e-9)


def test_an_anchor_too_far_outside_is_still_rejected():
    with pytest.raises(PlanError, match="outside the workspace"):
        lift_plan(_plan((31, 23)), _frame(1.3), T_DOWN, BOUNDS, out_of_bounds="clamp", clamp_max_m=0.10)
    wp = lift_plan(_plan((31, 23)), _frame(1.3), T_DOWN, BOUNDS, out_of_bounds="clamp", clamp_max_m=0.5)
    assert 0.0 <= wp.positions[0, 2] < 1e-3


def test_ray_error_moves_each_anchor_along_its_ray_by_that_distance():
    plan = _plan((31, 23), (50, 40))
    base = lift_plan(plan, _frame(0.6), T_DOWN)
    err = np.array([0.03, -0.10])
    wp = lift_plan(plan, _frame(0.6), T_DOWN, ray_error_m=err)
    for i in range(2):
        d0 = base.positions[i] - T_DOWN[:3, 3]
        d1 = wp.positions[i] - T_DOWN[:3, 3]
        assert np.linalg.norm(d1) - np.linalg.norm(d0) == pytest.approx(err[i], abs=1e-9)
        np.testing.assert_allclose(d1 / np.linalg.norm(d1), d0 / np.linalg.norm(d0), atol=1e-9)
    with pytest.raises(ValueError, match="ray_error_m"):
        lift_plan(plan, _frame(0.6), T_DOWN, ray_error_m=np.zeros(3))


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="out_of_bounds"):
        lift_plan(_plan((31, 23)), _frame(0.6), T_DOWN, BOUNDS, out_of_bounds="ignore")


def test_the_sim_anchor_depth_condition_reaches_the_lift_and_counts_clamps():
    """One simulated episode with 10 cm anchor-depth noise: plans are lifted with the error (the
    waypoints differ from the clean run's) and anchors pushed under the table are clamped, not refused."""
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.runtime.devices import RunChoices, build_devices
    from edgebridge.runtime.pipeline import Pipeline

    cfg = load_robot_config("sim_panda")
    lifted = {}
    for sigma in (0.0, 0.10):
        dev, instr = build_devices(cfg, RunChoices(task="put_cup_in_tray", seed=6001, planner="oracle", expert="ik",
                                                   sim_anchor_depth_noise_m=sigma))
        try:
            pipe = Pipeline(cfg, dev)
            frame = pipe.capture(None)
            plan = dev.planner.plan(frame, instr)
            from edgebridge.runtime.plan_session import PlanningStats

            pipe.last_planning = PlanningStats()
            outs = []
            for _ in range(8):  # independent draws per plan
                try:
                    outs.append(pipe.lift(plan, frame).positions)
                except PlanError:
                    pass
            lifted[sigma] = (outs, pipe.last_planning.clamped)
        finally:
            dev.close()
    clean, noisy = lifted[0.0][0], lifted[0.10][0]
    assert len(clean) == 8 and lifted[0.0][1] == 0
    assert noisy and not any(np.allclose(n, clean[0]) for n in noisy)
    assert lifted[0.10][1] > 0  # 10 cm along the ray puts some table-level anchor under the floor bound
