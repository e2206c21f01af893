"""Grasp point on a round open object: a grasp anchor near a mug's middle moves onto its inner bottom."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgebridge.runtime.grasp_point import GraspPointConfig, apply_grasp_point, centre_grasp

pytest.importorskip("pybullet")


def _scene(task: str, seed: int, stereo: bool = False):
    from edgebridge.sim.camera import DepthNoiseConfig
    from edgebridge.sim.episode import build_world
    from edgebridge.sim.oracle import OracleConfig, OraclePlanner

    spec, world, cam, _ = build_world(task, seed, depth_noise=DepthNoiseConfig.stereo() if stereo else 0.0)
    try:
        cam.connect()
        rgbd = cam.read()
        oracle = OraclePlanner(world, cam, OracleConfig(seed=seed)).plan(rgbd, spec.instruction)
        seg = world.segmentation(cam) if hasattr(world, "segmentation") else None
        return rgbd, oracle, cam.T_base_cam, seg
    finally:
        world.close()


def _true_points(plan, rgbd, T):
    """The oracle's own 3-D points (its anchors carry their optical depth), not a window median."""
    from edgebridge.runtime.lift import deproject_pixel

    return np.stack([T[:3, :3] @ deproject_pixel(rgbd.intrinsics, a.u, a.v, a.depth) + T[:3, 3]
                     for a in plan.anchors])


def _around(plan, i: int, r: int = 2):
    """The plan with anchor ``i`` moved to each pixel within ``r`` of it (not privileged: a VLM's plan)."""
    a = plan.anchors[i]
    for du in range(-r, r + 1):
        for dv in range(-r, r + 1):
            anchors = list(plan.anchors)
            anchors[i] = replace(a, u=a.u + du, v=a.v + dv)
            yield (du, dv), replace(plan, anchors=tuple(anchors), privileged=False)


@pytest.mark.parametrize("seed", [7000, 7011, 7023])
def test_pixels_around_a_mug_grasp_lift_onto_its_inner_bottom(seed):
    """The 25 pixels within 2 of the oracle's mug grasp: lifted where they land, several sit on the inner
    wall, centimetres from the oracle's point; moved by the grasp point, every one lands within 1 cm of it
    (the oracle's point is itself the visible point nearest the mug's axis)."""
    rgbd, oracle, T, _ = _scene("put_cup_in_tray", seed)
    true = _true_points(oracle, rgbd, T)
    g = next(i for i, a in enumerate(oracle.anchors) if a.gripper < 0.5)
    raw_far, moved = 0, []
    from edgebridge.runtime.lift import lift_plan

    for _, plan in _around(oracle, g):
        lifted = lift_plan(plan, rgbd, T)
        raw_far += np.linalg.norm(lifted.positions[g] - true[g]) > 0.02
        out, found = apply_grasp_point(plan, lifted, rgbd, T, "cloud")
        assert [i for i, _ in found] == [g] and found[0][1].how == "nearest_axis", found
        moved.append(float(np.linalg.norm(out.positions[g] - true[g])))
        others = [i for i in range(len(plan.anchors)) if i != g]
        assert np.array_equal(out.positions[others], lifted.positions[others])  # the place anchor stays
    assert raw_far >= 3, raw_far  # the problem is there: pixels near the middle that see the wall
    assert max(moved) < 0.01, moved


def test_through_stereo_noise_the_grasp_point_stays_within_two_centimetres():
    """The simulated D435-like depth (3 mm noise at 1 m, dropout, holes, flying pixels)."""
    from edgebridge.runtime.lift import lift_plan

    for seed in (7004, 7030):
        rgbd, oracle, T, _ = _scene("put_cup_in_tray", seed, stereo=True)
        clean, oracle_clean, _, _ = _scene("put_cup_in_tray", seed)
        true = _true_points(oracle_clean, clean, T)
        g = next(i for i, a in enumerate(oracle.anchors) if a.gripper < 0.5)
        errs = []
        for _, plan in _around(oracle, g, r=1):
            out, found = apply_grasp_point(plan, lift_plan(plan, rgbd, T), rgbd, T, "cloud")
            errs.append(float(np.linalg.norm(out.positions[g] - true[g])))
        assert np.median(errs) < 0.01 and max(errs) < 0.02, errs


def test_a_cube_grasp_is_not_moved_and_the_policies_hold():
    from edgebridge.runtime.lift import lift_plan

    rgbd, oracle, T, _ = _scene("stack_red_on_blue", 7002)
    vlm = replace(oracle, privileged=False)
    lifted = lift_plan(vlm, rgbd, T)
    out, found = apply_grasp_point(vlm, lifted, rgbd, T, "cloud")
    assert out is lifted and found and all(e.point is None for _, e in found)
    assert "not a round" in found[0][1].how or "too few" in found[0][1].how
    rgbd, oracle, T, _ = _scene("put_cup_in_tray", 7000)
    lifted = lift_plan(oracle, rgbd, T)
    for policy, plan in (("plan", replace(oracle, privileged=False)), ("auto", oracle)):
        kept, none = apply_grasp_point(plan, lifted, rgbd, T, policy)
        assert kept is lifted and none == []
    with pytest.raises(ValueError, match="grasp_point"):
        apply_grasp_point(oracle, lifted, rgbd, T, "sometimes")


def test_a_pixel_off_the_mug_or_in_a_hole_is_not_moved():
    rgbd, oracle, T, _ = _scene("put_cup_in_tray", 7000)
    assert centre_grasp(rgbd, T, (2, 2)).point is None  # the table's corner: nothing round there
    holed = replace(rgbd, depth=np.zeros_like(rgbd.depth))
    a = next(a for a in oracle.anchors if a.gripper < 0.5)
    assert centre_grasp(holed, T, (a.u, a.v)).how == "a depth hole at the anchor"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="GraspPointConfig.axis_tolerance_m"):
        GraspPointConfig(axis_tolerance_m=-1.0)
    from edgebridge.config import ConfigError
    from edgebridge.runtime.config import PlannerConfig

    with pytest.raises(ConfigError, match="grasp_point"):
        PlannerConfig(grasp_point="middle")


@pytest.mark.slow
def test_an_episode_counts_its_centred_grasps_and_succeeds():
    """Through ``run_episode``: ``grasp_point = "cloud"`` on the oracle's (privileged) plans moves each mug
    grasp (onto the point the oracle chose itself, within a few mm) and the cup still goes into the tray;
    ``auto`` leaves privileged plans alone."""
    from edgebridge.sim.episode import run_episode

    out = run_episode("put_cup_in_tray", 7001, "ik", config_overrides={"planner": {"grasp_point": "cloud"}})
    assert out.success, out.reason
    assert out.planning["centred_grasps"] >= out.planning["accepted"] >= 1
    auto = run_episode("put_cup_in_tray", 7001, "ik")
    assert auto.planning["centred_grasps"] == 0 and auto.success
