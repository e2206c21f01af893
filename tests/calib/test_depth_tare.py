"""Depth tare against the table plane: synthetic frames with a known offset, the failure modes, and the
simulator (a 10 cm depth bias is measured and removed, so the plan is no longer rejected)."""

import numpy as np
import pytest

from edgebridge.calib.depth_tare import DepthTareConfig, DepthTareError, estimate_depth_bias, plane_depth
from edgebridge.config import ConfigError
from edgebridge.contracts import RGBD, Intrinsics

INTR = Intrinsics(160, 120, 140.0, 140.0, 80.0, 60.0)


def look_at(eye, target) -> np.ndarray:
    """T_base_cam of an optical frame (z forward, y down) at ``eye`` looking at ``target``."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


T_CAM = look_at((0.9, 0.0, 0.8), (0.4, 0.0, 0.0))


def table_depth(T, table_z=0.0) -> np.ndarray:
    """Ground truth by intersecting each pixel ray with the plane (written independently of the module)."""
    v, u = np.mgrid[0:INTR.height, 0:INTR.width]
    rays = np.stack([(u - INTR.cx) / INTR.fx, (v - INTR.cy) / INTR.fy, np.ones(u.shape)], axis=-1)
    d_base = rays @ T[:3, :3].T
    return (table_z - T[2, 3]) / d_base[..., 2]


def frame(depth) -> RGBD:
    return RGBD(np.zeros((INTR.height, INTR.width, 3), np.uint8), depth.astype(np.float32), INTR, stamp_ns=1)


def noisy_scene(bias, seed=0, table_z=0.0):
    rng = np.random.default_rng(seed)
    d = table_depth(T_CAM, table_z)
    d[40:70, 60:100] -= 0.12  # a box on the table: reads closer than the plane
    d[:15] = 2.5               # the far wall above the table's far edge
    d = d + bias + rng.normal(0.0, 0.004, d.shape)
    d[rng.random(d.shape) < 0.03] = 0.0  # dropouts
    return d


@pytest.mark.parametrize("bias", [-0.08, 0.012, 0.10])
def test_offset_is_measured_and_removed(bias):
    f = frame(noisy_scene(bias))
    tare = estimate_depth_bias(f, T_CAM)
    assert tare.applied and abs(tare.bias_m - bias) < 0.002, tare.describe()
    assert 0.5 < tare.table_fraction < 0.95 and 0.002 < tare.spread_m < 0.008
    fixed = tare.correct(f)
    assert fixed is not f and np.all(fixed.depth[f.depth == 0] == 0)  # holes stay holes
    again = estimate_depth_bias(fixed, T_CAM)
    assert abs(again.bias_m) < 0.002 and not again.applied
    assert again.correct(fixed) is fixed


def test_plane_depth_matches_ray_intersection_and_table_height():
    np.testing.assert_allclose(plane_depth(frame(np.ones((120, 160))), T_CAM), table_depth(T_CAM), rtol=1e-9)
    f = frame(noisy_scene(0.03, table_z=0.05))
    assert abs(estimate_depth_bias(f, T_CAM, DepthTareConfig(table_z_m=0.05)).bias_m - 0.03) < 0.002
    # the wrong table height shows up as an offset of about the height difference along the view
    assert estimate_depth_bias(f, T_CAM).bias_m < 0.0


def test_small_offset_is_within_the_deadband():
    tare = estimate_depth_bias(frame(noisy_scene(0.001)), T_CAM)
    assert not tare.applied and "not corrected" in tare.describe()


def test_camera_not_looking_at_the_table_is_an_error():
    up = look_at((0.9, 0.0, 0.8), (0.4, 0.0, 1.6))  # every ray climbs: none meets the table plane
    with pytest.raises(DepthTareError, match="no valid depth pixel looks at the table plane"):
        estimate_depth_bias(frame(np.full((120, 160), 1.0)), up)


def test_hidden_table_or_huge_offset_is_an_error():
    rng = np.random.default_rng(1)
    clutter = frame(table_depth(T_CAM) + rng.uniform(-0.19, 0.19, (120, 160)))  # no plane anywhere
    with pytest.raises(DepthTareError, match="fit one depth offset"):
        estimate_depth_bias(clutter, T_CAM)
    with pytest.raises(DepthTareError, match="larger than max_bias_m"):
        estimate_depth_bias(frame(table_depth(T_CAM) + 0.35), T_CAM)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="depth_tare.band_m"):
        DepthTareConfig(band_m=0.5)
    with pytest.raises(ConfigError, match="depth_tare.min_table_fraction"):
        DepthTareConfig(min_table_fraction=0.0)


def test_sim_episode_with_a_10cm_depth_bias():
    pytest.importorskip("pybullet")
    from edgebridge.sim.episode import run_episode

    # untared, the bias lifts the anchors under the table: refused when out-of-workspace anchors are rejected
    # (the default clamps them back along their rays, docs/planner.md)
    raw = run_episode("put_cup_in_tray", seed=1, depth_noise=0.10, depth_tare=False,
                      config_overrides={"planner": {"anchor_out_of_bounds": "reject"}})
    assert not raw.success and raw.reason.startswith("plan rejected")
    tared = run_episode("put_cup_in_tray", seed=1, depth_noise=0.10)
    assert tared.success, tared.reason
