"""Grasp yaw measured in the depth image: a mug's handle, a box's faces, a hidden handle, the policies."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgebridge.runtime.grasp_yaw import (GraspYawConfig, apply_grasp_yaw, fold_yaw, yaw_from_points,
                                          yaw_of_quat)
from edgebridge.runtime.planner.format import yaw_to_quat

CFG = GraspYawConfig()
VIEW = np.array([-1.0, 0.0])  # camera on +x looking towards -x


def _mug(handle_deg: float, centre=(0.5, -0.1), r=0.0275, height=0.066, handle=True, seed=0) -> np.ndarray:
    """Points of a mug's visible surface: the whole rim, the near half of the side wall, the handle."""
    rng = np.random.default_rng(seed)
    c = np.asarray(centre)
    a = rng.uniform(0, 2 * np.pi, 120)
    rim = np.column_stack([c + r * np.column_stack([np.cos(a), np.sin(a)]), np.full(120, height)])
    b = rng.uniform(-np.pi / 2, np.pi / 2, 150)  # the half facing the camera (+x)
    side = np.column_stack([c + r * np.column_stack([np.cos(b), np.sin(b)]), rng.uniform(0.015, height, 150)])
    pts = [rim, side]
    if handle:
        h = math.radians(handle_deg)
        d, n = np.array([math.cos(h), math.sin(h)]), np.array([-math.sin(h), math.cos(h)])
        s = rng.uniform(0.0, 0.022, 30)
        pts.append(np.column_stack([c + (r + s)[:, None] * d + rng.normal(0, 0.001, 30)[:, None] * n,
                                    rng.uniform(0.02, 0.055, 30)]))
    return np.concatenate(pts) + rng.normal(0, 0.0005, (sum(len(p) for p in pts), 3))


def _box(yaw_deg: float, centre=(0.5, -0.1), half=0.025, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    uv = rng.uniform(-half, half, (300, 2))
    t = math.radians(yaw_deg)
    R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return np.column_stack([np.asarray(centre) + uv @ R.T, np.full(300, 0.05)])


def _err_deg(a: float, b: float, period: float = 180.0) -> float:
    d = math.degrees(a - b)
    return abs((d + period / 2) % period - period / 2)


@pytest.mark.parametrize("handle_deg", [0.0, 37.0, 90.0, 150.0, -120.0])
def test_a_mug_grasp_closes_across_its_handle(handle_deg):
    est = yaw_from_points(_mug(handle_deg), VIEW, CFG)
    assert est.how == "handle"
    # the fingers open along (sin yaw, -cos yaw): perpendicular to the handle when yaw is its direction
    assert _err_deg(est.yaw, math.radians(handle_deg)) < 4.0, math.degrees(est.yaw)
    assert -math.pi / 2 <= est.yaw < math.pi / 2


@pytest.mark.parametrize("handle_deg", [20.0, -100.0, 160.0])
def test_the_handle_is_found_through_stereo_noise_flying_pixels_and_the_inner_wall(handle_deg):
    """What a stereo camera adds: 3 mm of depth noise, isolated flying pixels around the object, and the
    inner wall seen over the rim, a circle 3 mm inside the outer one (which must not be taken for the body)."""
    rng = np.random.default_rng(7)
    c = np.array([0.5, -0.1])
    b = rng.uniform(np.pi / 2, 3 * np.pi / 2, 120)  # the far side's inner wall, seen over the rim
    inner = np.column_stack([c + 0.0245 * np.column_stack([np.cos(b), np.sin(b)]), rng.uniform(0.03, 0.066, 120)])
    fly = np.column_stack([c + rng.uniform(-0.06, 0.06, (15, 2)), rng.uniform(0.015, 0.06, 15)])
    pts = np.concatenate([_mug(handle_deg, seed=3), inner, fly])
    pts[:, :2] += rng.normal(0, 0.002, (len(pts), 2))
    est = yaw_from_points(pts, VIEW, CFG)
    assert est.how == "handle" and _err_deg(est.yaw, math.radians(handle_deg)) < 6.0, (est, handle_deg)


def test_a_mug_whose_handle_is_hidden_is_grasped_across_the_line_of_sight():
    est = yaw_from_points(_mug(0.0, handle=False), np.array([0.3, 0.4]), CFG)
    assert est.how == "round"
    assert _err_deg(est.yaw, math.atan2(0.4, 0.3)) < 1e-6


@pytest.mark.parametrize("yaw_deg", [0.0, 20.0, 44.0, -30.0])
def test_a_box_is_grasped_across_a_pair_of_faces(yaw_deg):
    est = yaw_from_points(_box(yaw_deg), VIEW, CFG)
    assert est.how == "narrowest"
    assert _err_deg(est.yaw, math.radians(yaw_deg), period=90.0) < 4.0, math.degrees(est.yaw)
    assert -math.pi / 4 <= est.yaw < math.pi / 4  # a cube: the smaller wrist turn of the two face pairs


def test_an_oblong_box_is_grasped_across_its_narrow_side_whatever_its_turn():
    rng = np.random.default_rng(1)
    for yaw_deg in (0.0, 60.0, -75.0):
        uv = rng.uniform([-0.04, -0.015], [0.04, 0.015], (300, 2))  # 8 x 3 cm: close along its local y
        t = math.radians(yaw_deg)
        R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        est = yaw_from_points(np.column_stack([uv @ R.T, np.full(300, 0.05)]), VIEW, CFG)
        # closing along the box's local y (angle t + 90 deg): yaw = closing + 90 deg = t + 180 = t (mod 180)
        assert est.how == "narrowest" and _err_deg(est.yaw, t) < 4.0, (yaw_deg, math.degrees(est.yaw))


def test_too_few_points_keep_the_plan_yaw():
    est = yaw_from_points(_box(0.0)[:10], VIEW, CFG)
    assert est.yaw is None and "too few" in est.how


def test_fold_and_quaternion_round_trip():
    for deg in (-170.0, -90.0, -10.0, 0.0, 45.0, 89.0, 135.0):
        y = fold_yaw(math.radians(deg))
        assert -math.pi / 2 <= y < math.pi / 2 and _err_deg(y, math.radians(deg)) < 1e-9
        assert _err_deg(yaw_of_quat(yaw_to_quat(deg)), math.radians(deg), 360.0) < 1e-9


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="GraspYawConfig.radius_m"):
        GraspYawConfig(radius_m=-1.0)
    from edgebridge.config import ConfigError
    from edgebridge.runtime.config import PlannerConfig

    with pytest.raises(ConfigError, match="grasp_yaw"):
        PlannerConfig(grasp_yaw="sideways")


def test_on_a_rendered_scene_the_depth_yaw_matches_the_true_pose_and_the_policies_hold():
    """One simulated put-cup-in-tray scene: the yaw read at the grasp anchor against the mug's true pose
    (what the oracle's privileged plan holds); ``plan`` and ``auto`` with a privileged plan keep its yaw."""
    pytest.importorskip("pybullet")
    from edgebridge.runtime.lift import lift_plan
    from edgebridge.sim.episode import build_world
    from edgebridge.sim.oracle import OracleConfig, OraclePlanner

    for seed in (7000, 7017):
        spec, world, cam, _ = build_world("put_cup_in_tray", seed)
        try:
            cam.connect()
            rgbd = cam.read()
            oracle = OraclePlanner(world, cam, OracleConfig(seed=seed)).plan(rgbd, spec.instruction)
            T = cam.T_base_cam
        finally:
            world.close()
        lifted = lift_plan(oracle, rgbd, T)
        bad = replace(oracle, orientation=yaw_to_quat(math.degrees(yaw_of_quat(oracle.orientation)) + 60.0),
                      privileged=False)
        out, est = apply_grasp_yaw(bad, lifted, rgbd, T, "auto")
        assert est.how == "handle" and _err_deg(est.yaw, yaw_of_quat(oracle.orientation)) < 3.0
        assert _err_deg(yaw_of_quat(out.quats[0]), yaw_of_quat(oracle.orientation)) < 3.0
        assert np.array_equal(out.positions, lifted.positions)
        for policy, plan in (("plan", bad), ("auto", oracle)):
            kept, none = apply_grasp_yaw(plan, lifted, rgbd, T, policy)
            assert none is None and kept is lifted
    with pytest.raises(ValueError, match="grasp_yaw"):
        apply_grasp_yaw(oracle, lifted, rgbd, T, "sometimes")


@pytest.mark.slow
def test_an_episode_measures_the_yaw_of_every_accepted_plan_and_succeeds():
    """Through the episode path ``edge-run`` takes: ``grasp_yaw = "cloud"`` on the oracle's plans (privileged,
    so ``auto`` would keep theirs) measures every plan's yaw and the cup still goes into the tray."""
    pytest.importorskip("pybullet")
    from edgebridge.sim.episode import run_episode

    out = run_episode("put_cup_in_tray", 7001, "ik", config_overrides={"planner": {"grasp_yaw": "cloud"}})
    assert out.success, out.reason
    assert out.planning["cloud_yaws"] == out.planning["accepted"] >= 1
    auto = run_episode("put_cup_in_tray", 7001, "ik")
    assert auto.planning["cloud_yaws"] == 0 and auto.success
