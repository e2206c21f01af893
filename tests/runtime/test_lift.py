"""Depth lift of plan anchors to base-frame waypoints."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgebridge.contracts import RGBD, Anchor, Intrinsics, Plan
from edgebridge.errors import PlanError
from edgebridge.calib.undistort import distort_normalized
from edgebridge.runtime.lift import deproject_pixel, lift_plan, window_depth

W, H = 64, 48


def _intr(model="none", coeffs=(0, 0, 0, 0, 0)):
    return Intrinsics(W, H, 60.0, 62.0, 31.5, 23.5, model=model, coeffs=np.array(coeffs, dtype=float))


def _frame(depth, intr=None):
    return RGBD(np.zeros((H, W, 3), np.uint8), depth.astype(np.float32), intr or _intr())


def _plan(*anchors, q=(1.0, 0, 0, 0)):
    return Plan("pick the cup", tuple(anchors), orientation=np.array(q))


class Box:
    """Axis-aligned box with the workspace protocol."""

    def __init__(self, lo, hi):
        self.lo, self.hi = np.asarray(lo), np.asarray(hi)

    def contains(self, pts):
        return np.all((pts >= self.lo) & (pts <= self.hi), axis=1)

    def __repr__(self):
        return f"Box({self.lo.tolist()}, {self.hi.tolist()})"


def test_window_median_ignores_outliers_and_holes():
    d = np.full((H, W), 0.8, np.float32)
    d[10, 10] = 5.0      # flying pixel beyond depth_max
    d[10, 11] = 0.0      # hole
    d[11, 10] = np.nan   # hole
    d[9, 9] = 0.30       # single foreground outlier
    assert window_depth(d, 10, 10, window=5) == pytest.approx(0.8)
    # window clipped at the border
    assert window_depth(d, 0, 0, window=5) == pytest.approx(0.8)


def test_lift_identity_pinhole_matches_formula():
    d = np.full((H, W), 1.5, np.float32)
    wp = lift_plan(_plan(Anchor(40, 30, 1.0), Anchor(31, 23, 0.0)), _frame(d), np.eye(4))
    x = (40 - 31.5) / 60.0 * 1.5
    y = (30 - 23.5) / 62.0 * 1.5
    np.testing.assert_allclose(wp.positions[0], [x, y, 1.5], atol=1e-12)
    np.testing.assert_allclose(wp.gripper, [1.0, 0.0])
    np.testing.assert_allclose(wp.quats, [[1, 0, 0, 0]] * 2)


def test_lift_applies_base_transform():
    d = np.full((H, W), 1.0, np.float32)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    T[:3, 3] = [0.5, -0.2, 0.7]
    plan = _plan(Anchor(50, 10, 1.0))
    p_cam = lift_plan(plan, _frame(d), np.eye(4)).positions[0]
    p_base = lift_plan(plan, _frame(d), T).positions[0]
    np.testing.assert_allclose(p_base, T[:3, :3] @ p_cam + T[:3, 3], atol=1e-12)


def test_hole_names_anchor_and_pixel():
    d = np.full((H, W), 1.0, np.float32)
    d[20:30, 20:30] = 0.0
    plan = _plan(Anchor(5, 5, 1.0), Anchor(25, 24, 0.0))
    with pytest.raises(PlanError, match=r"anchor 1 at pixel \(u=25, v=24\).*no valid depth"):
        lift_plan(plan, _frame(d), np.eye(4))


def test_planner_depth_fallback_only_when_enabled():
    d = np.full((H, W), 1.0, np.float32)
    d[20:30, 20:30] = 0.0
    plan = _plan(Anchor(25, 24, 0.0, depth=0.9))
    with pytest.raises(PlanError):
        lift_plan(plan, _frame(d), np.eye(4))
    wp = lift_plan(plan, _frame(d), np.eye(4), planner_depth_fallback=True)
    assert wp.positions[0, 2] == pytest.approx(0.9)
    # measured depth wins over the planner's estimate
    wp = lift_plan(_plan(Anchor(5, 5, 0.0, depth=0.9)), _frame(d), np.eye(4), planner_depth_fallback=True)
    assert wp.positions[0, 2] == pytest.approx(1.0)


def test_pixel_outside_image_rejected():
    d = np.full((H, W), 1.0, np.float32)
    with pytest.raises(PlanError, match=r"anchor 0 at pixel \(u=64, v=3\).*outside"):
        lift_plan(_plan(Anchor(64, 3, 1.0)), _frame(d), np.eye(4))


def test_workspace_rejection_names_anchor():
    d = np.full((H, W), 1.0, np.float32)
    box = Box([-0.2, -0.2, 0.5], [0.2, 0.2, 1.2])
    ok = lift_plan(_plan(Anchor(32, 24, 1.0)), _frame(d), np.eye(4), box)
    assert len(ok) == 1
    far = d.copy()
    far[:, 50:] = 2.0
    with pytest.raises(PlanError, match=r"anchor 1 at pixel \(u=60, v=24\).*outside the workspace"):
        lift_plan(_plan(Anchor(32, 24, 1.0), Anchor(60, 24, 0.0)), _frame(far), np.eye(4), box)


def test_bad_transform_rejected():
    d = np.full((H, W), 1.0, np.float32)
    T = np.eye(4)
    T[0, 0] = 2.0
    with pytest.raises(PlanError, match="T_base_cam"):
        lift_plan(_plan(Anchor(1, 1, 1.0)), _frame(d), T)


def test_brown_conrady_deproject_round_trip():
    intr = _intr("brown_conrady", (0.1, -0.05, 0.001, -0.002, 0.01))
    # pixel of a known 3-D point, projected with distortion, lifts back to it
    p = np.array([0.12, -0.07, 0.9])
    xd, yd = distort_normalized(p[0] / p[2], p[1] / p[2], intr)
    u, v = xd * intr.fx + intr.cx, yd * intr.fy + intr.cy
    np.testing.assert_allclose(deproject_pixel(intr, u, v, 0.9), p, atol=1e-9)


@pytest.mark.parametrize("model", ["brown_conrady", "inverse_brown_conrady"])
def test_distortion_models_match_librealsense_and_round_trip(model):
    rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (extra 'realsense') not importable here")
    coeffs = (0.08, -0.03, 0.002, 0.001, 0.005)
    intr = _intr(model, coeffs)
    ri = rs.intrinsics()
    ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = W, H, intr.fx, intr.fy, intr.cx, intr.cy
    ri.model = getattr(rs.distortion, model)
    ri.coeffs = list(coeffs)
    for u, v in [(0, 0), (63, 47), (10, 40), (31, 23)]:
        ref = rs.rs2_deproject_pixel_to_point(ri, [float(u), float(v)], 0.75)
        p = deproject_pixel(intr, u, v, 0.75)
        np.testing.assert_allclose(p, ref, atol=1e-5)
        xd, yd = distort_normalized(p[0] / p[2], p[1] / p[2], intr)
        np.testing.assert_allclose([xd * intr.fx + intr.cx, yd * intr.fy + intr.cy], [u, v], atol=1e-6)


def test_workspace_box_from_kernels():
    kernels = pytest.importorskip("edgebridge.kernels")
    WorkspaceBox = getattr(kernels, "WorkspaceBox")
    d = np.full((H, W), 1.0, np.float32)
    s = np.sin(np.pi / 8)
    box = WorkspaceBox(np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.3, 0.2]), np.array([0.0, 0.0, s, np.cos(np.pi / 8)]))
    assert len(lift_plan(_plan(Anchor(31, 23, 1.0)), _frame(d), np.eye(4), box)) == 1
    with pytest.raises(PlanError, match="outside the workspace"):
        lift_plan(_plan(Anchor(31, 23, 1.0), Anchor(63, 23, 1.0)), _frame(d), np.eye(4), box)


def test_a_workspace_box_rejection_reads_as_numbers_not_reprs():
    from edgebridge.kernels import WorkspaceBox
    from edgebridge.runtime.lift import describe_region, format_point

    d = np.full((H, W), 1.0, np.float32)
    plan = _plan(Anchor(31, 23, 1.0), Anchor(63, 23, 1.0))
    flat = WorkspaceBox.from_bounds((-0.1, -0.3, 0.8), (0.1, 0.3, 1.2))
    with pytest.raises(PlanError) as e:
        lift_plan(plan, _frame(d), np.eye(4), flat)
    msg = str(e.value)
    assert re.search(r"anchor 1 at pixel \(u=63, v=23\) lifts to \(0\.53, -0\.01, 1\.00\) m, outside the workspace "
                     r"x -0\.10\.\.0\.10, y -0\.30\.\.0\.30, z 0\.80\.\.1\.20; the plan points off the table", msg), msg
    s = np.sin(np.pi / 8)
    turned = WorkspaceBox(np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.3, 0.2]), np.array([0.0, 0.0, s, np.cos(np.pi / 8)]))
    with pytest.raises(PlanError) as e:
        lift_plan(plan, _frame(d), np.eye(4), turned)
    assert "a box centred at (0.00, 0.00, 1.00) m with half sizes (0.10, 0.30, 0.20) m, turned 45 deg about " \
           "(0.00, 0.00, 1.00)" in str(e.value)
    for m in (msg, str(e.value)):
        assert "array(" not in m and "WorkspaceBox(" not in m
    assert format_point([-0.0004, 1.0, -0.126]) == "(0.00, 1.00, -0.13)"
    assert describe_region(object()) == "(a workspace of type object)"
