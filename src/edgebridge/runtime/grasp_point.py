"""Grasp point on a round open object: the grasp anchor moved onto the object's axis, measured in depth.

A planner points at a mug's middle; the pixel it picks is a few pixels either side of the axis. Seen from a
camera above the table, the middle of an open round object (a mug, a cup, a bowl) is a small patch of its
inner bottom surrounded by its inner wall: one pixel off the axis, the depth at the anchor is the far inner
wall's, centimetres higher and to the side. In the simulated scenes a VLM grasp anchor 1-2 pixels from the
oracle's (at 320x240) lifts 4-5 cm higher and 2-3 cm towards the far wall in about half of the mug grasps;
the grasp then closes off-centre, and the action expert spends its bounded correction pulling it back.

The object's geometry is in the same depth image. At each grasp anchor the runtime gathers the object's
points and fits its body circle exactly as the grasp yaw does (``runtime/grasp_yaw.py``: the outer wall by
RANSAC, all round, hollow). When the anchor is on such a body, the grasp point moves to the lowest visible
surface inside the circle, at its point nearest the body's axis (``GraspPointConfig``): through the opening,
the part of the inner bottom the near rim does not hide. That is where the simulator's oracle places a mug grasp (the visible point nearest the
mug's axis), so the expert's training plans and a VLM's plans agree. The planner's pixel still chooses
the object; the depth places the grasp on it. Anything that is not a round hollow body (a box, a cube, a
place anchor) keeps its lifted point.

The move is applied as a correction to the lifted waypoint (the centred point minus the clean lift of the
same pixel), so whatever lifting did to that waypoint (a clamp into the workspace, the simulated anchor-depth
error of ``ray_error_m``) stays in it. A move longer than ``max_move_m`` is not made (the circle is then
someone else's, a neighbour's or the tray's). ``Pipeline.lift`` applies it per ``planner.grasp_point``:
``plan`` keeps every lifted anchor, ``cloud`` centres round bodies, ``auto`` (default) centres them unless
the plan is privileged (the simulator's oracle, which places its anchors on the axis from the true pose).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..calib.undistort import undistort_normalized
from ..contracts import RGBD
from .grasp_yaw import GraspYawConfig, dense_points, object_points, round_body
from .lift import deproject_pixel, window_depth

log = logging.getLogger(__name__)

POLICIES = ("plan", "cloud", "auto")


@dataclass(frozen=True)
class GraspPointConfig:
    """The grasp point: of the visible points at least ``wall_margin_m`` inside the body's circle, those
    within ``low_band_m`` of the lowest (the 5th percentile: the inner bottom seen through the opening),
    the median of those at most ``axis_tolerance_m`` farther from the axis than the nearest one.
    ``max_move_m``: a longer move is not made. ``body``: the object-point and circle
    parameters (shared with the grasp yaw)."""

    axis_tolerance_m: float = 0.003
    low_band_m: float = 0.008
    wall_margin_m: float = 0.003
    max_move_m: float = 0.08
    body: GraspYawConfig = GraspYawConfig()

    def __post_init__(self) -> None:
        for name, lo, hi in (("axis_tolerance_m", 0.0, 0.05), ("low_band_m", 0.0, 0.1), ("wall_margin_m", 0.0, 0.05), ("max_move_m", 0.0, 0.5)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"GraspPointConfig.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        if not isinstance(self.body, GraspYawConfig):
            raise ValueError(f"GraspPointConfig.body: expected a GraspYawConfig, got {type(self.body).__name__}")


@dataclass(frozen=True)
class GraspCentre:
    """``point``: the grasp point nearest the body's axis (base frame, m), None when the anchor is not on a
    round hollow body; ``how``: ``nearest_axis``, or why nothing moved; ``radius``: the body's (m);
    ``move_m``: the distance from the pixel's own lift."""

    point: np.ndarray | None
    how: str
    radius: float = float("nan")
    move_m: float = 0.0


def window_points(rgbd: RGBD, T_base_cam: np.ndarray, point: np.ndarray, pixel: tuple[int, int],
                  reach_m: float, radius_m: float) -> np.ndarray:
    """Every valid depth pixel within ``radius_m`` (horizontally) of ``point``, in the base frame, whatever
    its height (``object_points`` keeps only those above the support); searched around ``pixel``, which
    lies at most ``reach_m`` from ``point``."""
    k = rgbd.intrinsics
    T = np.asarray(T_base_cam, dtype=np.float64)
    z_cam = float((T[:3, :3].T @ (point - T[:3, 3]))[2])
    half = int(np.ceil((reach_m + radius_m) * max(k.fx, k.fy) / max(z_cam, 0.05))) + 1
    u, v = int(pixel[0]), int(pixel[1])
    h, w = rgbd.depth.shape
    v0, v1, u0, u1 = max(v - half, 0), min(v + half + 1, h), max(u - half, 0), min(u + half + 1, w)
    z = rgbd.depth[v0:v1, u0:u1].astype(np.float64)
    vs, us = np.mgrid[v0:v1, u0:u1]
    ok = np.isfinite(z) & (z > 0)
    z, us, vs = z[ok], us[ok], vs[ok]
    xn, yn = undistort_normalized((us - k.cx) / k.fx, (vs - k.cy) / k.fy, k)
    pts = np.stack([xn * z, yn * z, z], axis=1)
    pb = pts @ T[:3, :3].T + T[:3, 3]
    return pb[np.linalg.norm(pb[:, :2] - point[:2], axis=1) <= radius_m]


def centre_grasp(rgbd: RGBD, T_base_cam: np.ndarray, pixel: tuple[int, int],
                 config: GraspPointConfig | None = None) -> GraspCentre:
    """The grasp point on the axis of the round hollow body at anchor pixel ``(u, v)`` (module docstring)."""
    cfg = config or GraspPointConfig()
    T = np.asarray(T_base_cam, dtype=np.float64)
    u, v = int(pixel[0]), int(pixel[1])
    z = window_depth(rgbd.depth, u, v)
    if z is None:
        return GraspCentre(None, "a depth hole at the anchor")
    anchor = T[:3, :3] @ deproject_pixel(rgbd.intrinsics, u, v, z) + T[:3, 3]
    pts = object_points(rgbd, T, (u, v), anchor, cfg.body)
    if len(pts) < cfg.body.min_points:
        return GraspCentre(None, f"too few object points ({len(pts)})")
    pts = dense_points(pts, cfg.body)
    body = round_body(pts, cfg.body) if len(pts) >= cfg.body.min_points else None
    if body is None:
        return GraspCentre(None, "not a round hollow body")
    c, r = body
    if np.linalg.norm(anchor[:2] - c) > r:
        return GraspCentre(None, "the anchor lies outside the body's circle", r)
    axis = np.array([c[0], c[1], anchor[2]])
    inside = window_points(rgbd, T, axis, (u, v), float(np.linalg.norm(anchor[:2] - c)), r - cfg.wall_margin_m)
    if not len(inside):
        return GraspCentre(None, "no visible point inside the body's circle", r)
    # through the opening, the lowest surface (the inner bottom; the table lies outside the circle)
    low = inside[inside[:, 2] <= np.percentile(inside[:, 2], 5) + cfg.low_band_m]
    radial = np.linalg.norm(low[:, :2] - c, axis=1)
    axis = np.median(low[radial <= radial.min() + cfg.axis_tolerance_m], axis=0)
    how = "nearest_axis"
    move = float(np.linalg.norm(axis - anchor))
    if move > cfg.max_move_m:
        return GraspCentre(None, f"the axis is {move * 100:.1f} cm from the anchor (more than max_move_m)", r, move)
    return GraspCentre(axis, how, r, move)


def apply_grasp_point(plan, lifted, rgbd: RGBD, T_base_cam: np.ndarray, policy: str,
                      config: GraspPointConfig | None = None):
    """``lifted`` with each grasp waypoint on a round hollow body moved onto its axis, per ``policy``
    (``plan``, ``cloud``, ``auto``: module docstring); returns ``(waypoints, [(anchor index, GraspCentre)])``
    for the grasp anchors looked at (empty when the policy keeps the plan)."""
    if policy not in POLICIES:
        raise ValueError(f"grasp_point: expected one of {POLICIES}, got {policy!r}")
    if policy == "plan" or (policy == "auto" and plan.privileged):
        return lifted, []
    T = np.asarray(T_base_cam, dtype=np.float64)
    positions = np.array(lifted.positions, dtype=np.float64, copy=True)
    found = []
    for i, a in enumerate(plan.anchors):
        if a.gripper >= 0.5:
            continue
        est = centre_grasp(rgbd, T, (a.u, a.v), config)
        found.append((i, est))
        if est.point is None:
            continue
        z = window_depth(rgbd.depth, a.u, a.v)  # the pixel's clean lift (not None: centre_grasp read it)
        clean = T[:3, :3] @ deproject_pixel(rgbd.intrinsics, a.u, a.v, z) + T[:3, 3]
        positions[i] = positions[i] + (est.point - clean)
        log.info("grasp point: anchor %d moved %.1f cm onto the axis of a round body (radius %.1f cm, %s)",
                 i, est.move_m * 100, est.radius * 100, est.how)
    if not any(e.point is not None for _, e in found):
        return lifted, found
    return replace(lifted, positions=positions), found
