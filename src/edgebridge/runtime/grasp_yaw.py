"""Grasp yaw from the depth image around a grasp anchor: which way a top-down parallel gripper closes.

A plan carries one gripper orientation (a yaw about the base z axis). A planner that points well may
still not read an object's orientation from the image (a handle is a few pixels), and a wrong yaw is
what knocks a mug over. The depth image shows the orientation directly, so the runtime can measure it
at the grasp anchor instead of trusting the plan's yaw:

1. **The object's points.** The depth pixels in a window around the anchor's pixel are deprojected and
   moved to the base frame; the support surface is the low percentile of their heights; the object is
   the points at least ``min_height_m`` above it and within ``radius_m`` (horizontally) of the anchor,
   without the isolated ones (a stereo camera's flying pixels and speckle).
2. **A round open object** (a mug): its footprint lies on a circle (RANSAC over seeded 3-point circles,
   the largest of the nearly best supported: the outer wall, not the inner wall seen over the rim; then
   least squares), all round (a camera above the table sees the whole rim) and hollow (a box's top face
   would fill it). The points beyond its outer surface, in their densest sector, are the handle: the
   fingers close across it (the yaw is the handle's direction), on the body, clear of the handle. No
   handle in sight: it hides behind the body, along the line of sight, so the yaw is the line of sight's
   direction.
3. **Anything else** (a box): the footprint's width ``w(psi)`` (extent of the points projected on the
   horizontal direction ``psi``, 1-degree steps over 180 degrees); the fingers close along the narrowest
   direction, across a pair of faces (a box's diagonal is wider). A square footprint (a cube) fits the
   fingers across either pair: the yaw is the one within [-45, 45) degrees, the smaller wrist turn (and the
   range the expert's training plans hold).

The estimate is a yaw folded to [-90, 90) degrees (a parallel gripper is symmetric under a half turn; a
cube's to [-45, 45)),
in the convention of the plans' ``orientation`` (:func:`edgebridge.sim.oracle.top_down_quat`: at yaw 0
the fingers open along base -y). ``Pipeline.lift`` applies it per ``planner.grasp_yaw``: ``plan`` keeps the
planner's yaw, ``cloud`` always measures, ``auto`` (default) measures unless the plan is privileged (the
simulator's oracle, which knows the true pose). Design and measurements: ``docs/planner.md``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from ..calib.undistort import undistort_normalized
from ..contracts import RGBD
from .lift import deproject_pixel, window_depth
from .planner.format import yaw_to_quat

log = logging.getLogger(__name__)

POLICIES = ("plan", "cloud", "auto")


@dataclass(frozen=True)
class GraspYawConfig:
    """``radius_m``: how far from the anchor (horizontally) the object's points may lie. ``min_height_m``:
    how far above the support surface (the ``support_percentile`` of the heights around) a point must be
    to count as the object's; a point with fewer than ``min_neighbours`` others within ``neighbour_m`` is
    dropped. ``min_points``: fewer object points than this and the plan's yaw is kept. The round body: a
    circle of radius within ``circle_radius_m`` holding ``circle_min_share`` of the points within
    ``circle_tol_m`` (``circle_trials`` RANSAC draws), RMS under ``circle_rms_frac`` of the radius, around
    ``circle_min_arc_deg`` at least, at most ``circle_max_inside_share`` of the points inside. The handle:
    ``min_handle_points`` in a ``handle_window_deg`` sector, ``handle_margin_m`` to ``handle_reach_m``
    outside the body's outer surface. A footprint whose two face directions differ in width by at most
    ``square_tolerance`` (relative) is square: its yaw is folded to [-45, 45) degrees, the smaller wrist
    turn."""

    radius_m: float = 0.06
    min_height_m: float = 0.012
    min_points: int = 30
    support_percentile: float = 5.0
    neighbour_m: float = 0.008
    min_neighbours: int = 3
    circle_radius_m: tuple[float, float] = (0.01, 0.08)
    circle_tol_m: float = 0.004
    circle_trials: int = 300
    circle_min_share: float = 0.5
    circle_rms_frac: float = 0.15
    circle_min_arc_deg: float = 240.0
    circle_max_inside_share: float = 0.15
    handle_margin_m: float = 0.006
    handle_reach_m: float = 0.04
    handle_window_deg: float = 50.0
    min_handle_points: int = 5
    square_tolerance: float = 0.1

    def __post_init__(self) -> None:
        for name, lo, hi in (("radius_m", 0.005, 0.5), ("min_height_m", 0.0, 0.2), ("support_percentile", 0.0, 50.0),
                             ("neighbour_m", 0.0, 0.1), ("circle_rms_frac", 0.0, 1.0), ("circle_tol_m", 0.0, 0.05),
                             ("circle_min_share", 0.0, 1.0), ("circle_max_inside_share", 0.0, 1.0),
                             ("circle_min_arc_deg", 0.0, 360.0), ("handle_margin_m", 0.0, 0.05),
                             ("handle_reach_m", 0.0, 0.2), ("handle_window_deg", 1.0, 360.0),
                             ("square_tolerance", 0.0, 1.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"GraspYawConfig.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        if not (isinstance(self.min_points, int) and self.min_points >= 3):
            raise ValueError(f"GraspYawConfig.min_points: expected a whole number >= 3, got {self.min_points!r}")


@dataclass(frozen=True)
class YawEstimate:
    """``yaw``: radians in [-pi/2, pi/2), None when nothing could be read. ``how``: ``handle`` (across a
    round object's handle), ``round`` (no handle in sight: the line of sight), ``narrowest`` (a footprint's
    narrowest direction), or why there is no estimate. ``ratio``: the handle's points (``handle``) or the
    narrowest / widest width (``narrowest``); ``points``: the object's points used."""

    yaw: float | None
    how: str
    ratio: float = math.nan
    points: int = 0


def fold_yaw(yaw: float) -> float:
    """``yaw`` folded to [-pi/2, pi/2) (a parallel gripper is symmetric under a half turn)."""
    return (yaw + math.pi / 2) % math.pi - math.pi / 2


def yaw_of_quat(q) -> float:
    """Yaw of a top-down gripper quaternion (x, y, z, w) as plans write it (``planner.format.yaw_to_quat``:
    (cos(yaw/2), sin(yaw/2), 0, 0))."""
    return 2.0 * math.atan2(float(q[1]), float(q[0]))


def object_points(rgbd: RGBD, T_base_cam: np.ndarray, pixel: tuple[int, int], point: np.ndarray,
                  config: GraspYawConfig) -> np.ndarray:
    """Base-frame points of the object at the grasp anchor: pixel ``(u, v)``, lifted to ``point`` (base)."""
    k = rgbd.intrinsics
    depth = rgbd.depth
    T = np.asarray(T_base_cam, dtype=np.float64)
    z_cam = float((T[:3, :3].T @ (point - T[:3, 3]))[2])  # the anchor's optical depth
    half = int(math.ceil(2 * config.radius_m * max(k.fx, k.fy) / max(z_cam, 0.05)))  # covers the support ring
    u, v = int(pixel[0]), int(pixel[1])
    h, w = depth.shape
    v0, v1, u0, u1 = max(v - half, 0), min(v + half + 1, h), max(u - half, 0), min(u + half + 1, w)
    z = depth[v0:v1, u0:u1]
    vs, us = np.mgrid[v0:v1, u0:u1]
    ok = np.isfinite(z) & (z > 0)
    z, us, vs = z[ok].astype(np.float64), us[ok], vs[ok]
    xn, yn = undistort_normalized((us - k.cx) / k.fx, (vs - k.cy) / k.fy, k)
    pc = np.stack([xn * z, yn * z, z], axis=1)
    pb = pc @ T[:3, :3].T + T[:3, 3]
    near = np.linalg.norm(pb[:, :2] - point[:2], axis=1) <= config.radius_m
    if not near.any():
        return pb[:0]
    # the support: the low percentile of the heights in a ring twice as wide (table around the object)
    ring = np.linalg.norm(pb[:, :2] - point[:2], axis=1) <= 2 * config.radius_m
    support = float(np.percentile(pb[ring, 2], config.support_percentile))
    return pb[near & (pb[:, 2] >= support + config.min_height_m)]


def fit_circle(xy: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares circle through 2-D points (Kasa's algebraic fit): (centre, radius, RMS residual)."""
    A = np.column_stack([2 * xy, np.ones(len(xy))])
    b = (xy ** 2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    c = sol[:2]
    r = float(math.sqrt(max(sol[2] + c @ c, 0.0)))
    res = np.linalg.norm(xy - c, axis=1) - r
    return c, r, float(np.sqrt(np.mean(res ** 2)))


def dense_points(points: np.ndarray, config: GraspYawConfig) -> np.ndarray:
    """``points`` without the isolated ones (fewer than ``min_neighbours`` others within ``neighbour_m``
    horizontally): a stereo camera's flying pixels at depth edges and speckle."""
    xy = points[:, :2]
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=-1)
    return points[(d2 <= config.neighbour_m ** 2).sum(axis=1) - 1 >= config.min_neighbours]


def round_body(points: np.ndarray, config: GraspYawConfig) -> tuple[np.ndarray, float] | None:
    """The circle of a round object's body (a mug, a cup, a bowl) seen from above: the circle through the
    most footprint points within ``circle_tol_m`` (RANSAC over ``circle_trials`` seeded 3-point circles,
    then least squares on its inliers, so a handle does not pull it), when at least ``circle_min_share`` of
    the points are on it with an RMS under ``circle_rms_frac`` of the radius, all round (at least
    ``circle_min_arc_deg``: a camera above the table sees the whole rim, the far side included) and hollow
    (at most ``circle_max_inside_share`` of the points inside it: a box's top face fills the circle its
    outline suggests). None for anything else."""
    xy = points[:, :2].astype(np.float64)
    n = len(xy)
    if n < 8:
        return None
    idx = np.random.default_rng(0).integers(0, n, (config.circle_trials, 3))
    (ax, ay), (bx, by), (cx, cy) = (xy[idx[:, k]].T for k in range(3))
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    ok = np.abs(d) > 1e-12
    d = np.where(ok, d, 1.0)
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    centres = np.stack([(a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d,
                        (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d], axis=1)
    radii = np.hypot(ax - centres[:, 0], ay - centres[:, 1])
    ok &= (radii >= config.circle_radius_m[0]) & (radii <= config.circle_radius_m[1])
    if not ok.any():
        return None
    res = np.abs(np.linalg.norm(xy[None, :, :] - centres[:, None, :], axis=2) - radii[:, None])
    counts = np.where(ok, (res <= config.circle_tol_m).sum(axis=1), -1)
    # of the circles nearly as well supported as the best, the largest: a mug's outer wall, not its inner
    # wall seen over the rim a few millimetres inside
    good = counts >= 0.8 * counts.max()
    keep = res[int(np.argmax(np.where(good, radii, -1.0)))] <= config.circle_tol_m
    for _ in range(2):  # least squares on the inliers, then the inliers of that circle
        if keep.sum() < 8:
            return None
        c, r, rms = fit_circle(xy[keep])
        keep = np.abs(np.linalg.norm(xy - c, axis=1) - r) <= config.circle_tol_m
    inside = np.linalg.norm(xy - c, axis=1) < r - 2 * config.circle_tol_m
    if (keep.mean() < config.circle_min_share or rms > config.circle_rms_frac * r
            or not config.circle_radius_m[0] <= r <= config.circle_radius_m[1]
            or inside.mean() > config.circle_max_inside_share):  # a box's top face fills its circle
        return None
    ang = np.sort(np.degrees(np.arctan2(*(xy[keep] - c).T[::-1])))
    gap = float(np.max(np.diff(np.concatenate([ang, ang[:1] + 360.0]))))
    return (c, r) if 360.0 - gap >= config.circle_min_arc_deg else None


def handle_direction(points: np.ndarray, centre: np.ndarray, radius: float, config: GraspYawConfig) -> float | None:
    """Direction (radians) of a round body's handle: the points ``handle_margin_m`` to ``handle_reach_m``
    outside its outer surface (the 90th percentile of the distances to the circle up to twice the margin), gathered in the densest ``handle_window_deg`` sector (their mean direction); None
    when fewer than ``min_handle_points`` points lie there."""
    off = points[:, :2] - centre
    dist = np.linalg.norm(off, axis=1) - radius
    # the body's outer surface: the circle may be the inner wall's (seen over the rim), a few mm inside it
    near = dist <= 2 * config.handle_margin_m
    dist = dist - max(float(np.percentile(dist[near], 90)), 0.0) if near.any() else dist
    out = off[(dist > config.handle_margin_m) & (dist <= config.handle_reach_m)]
    if len(out) < config.min_handle_points:
        return None
    ang = np.arctan2(out[:, 1], out[:, 0])
    half = math.radians(config.handle_window_deg) / 2
    near = np.abs((ang[:, None] - ang[None, :] + math.pi) % (2 * math.pi) - math.pi) <= half
    best = near[int(np.argmax(near.sum(axis=1)))]
    if best.sum() < config.min_handle_points:
        return None
    d = out[best].mean(axis=0)
    return math.atan2(float(d[1]), float(d[0]))


def yaw_from_points(points: np.ndarray, view_xy: np.ndarray, config: GraspYawConfig) -> YawEstimate:
    """The gripper yaw for the object's base-frame ``points`` (see the module docstring); ``view_xy``: the
    horizontal direction from the camera to the object."""
    if len(points) < config.min_points:
        return YawEstimate(None, f"too few object points ({len(points)} < {config.min_points})", points=len(points))
    points = dense_points(points, config)
    if len(points) < config.min_points:
        return YawEstimate(None, f"too few object points once isolated ones are dropped ({len(points)})",
                           points=len(points))
    body = round_body(points, config)
    if body is not None:
        c, r = body
        h = handle_direction(points, c, r, config)
        if h is not None:  # a handle: the fingers close across it (the yaw is its direction)
            return YawEstimate(fold_yaw(h), "handle", r, len(points))
        # round and no handle in sight: one hidden behind the body lies along the line of sight
        return YawEstimate(fold_yaw(math.atan2(float(view_xy[1]), float(view_xy[0]))), "round", r, len(points))
    xy = points[:, :2] - points[:, :2].mean(axis=0)
    psi = np.radians(np.arange(180.0))
    d = np.stack([np.cos(psi), np.sin(psi)], axis=1)  # (180, 2) closing directions
    # robust extents: the 2nd..98th percentile (a flying pixel at an edge must not set the width)
    lo, hi = np.percentile(xy @ d.T, [2.0, 98.0], axis=0)
    width = hi - lo
    i = int(np.argmin(width))
    # the fingers open (and close) along the tool's y axis, base -y at yaw 0: direction (sin yaw, -cos yaw)
    yaw = float(psi[i]) + math.pi / 2
    if width[(i + 90) % 180] <= width[i] * (1.0 + config.square_tolerance):
        # a square footprint (a cube): the other pair of faces fits as well; take the smaller wrist turn
        yaw = (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
    else:
        yaw = fold_yaw(yaw)
    return YawEstimate(yaw, "narrowest", float(width[i] / width.max()), len(points))


def estimate_grasp_yaw(rgbd: RGBD, T_base_cam: np.ndarray, pixel: tuple[int, int],
                       config: GraspYawConfig | None = None) -> YawEstimate:
    """The grasp yaw at the anchor pixel ``(u, v)`` of ``rgbd``. The anchor's point is read from the depth
    image here (the window median, as lifting reads it), so an error added to a lifted anchor, or its
    clamp into the workspace, does not move the neighbourhood."""
    cfg = config or GraspYawConfig()
    T = np.asarray(T_base_cam, dtype=np.float64)
    u, v = int(pixel[0]), int(pixel[1])
    z = window_depth(rgbd.depth, u, v)
    if z is None:
        return YawEstimate(None, "a depth hole at the anchor")
    point = T[:3, :3] @ deproject_pixel(rgbd.intrinsics, u, v, z) + T[:3, 3]
    pts = object_points(rgbd, T, (u, v), point, cfg)
    return yaw_from_points(pts, point[:2] - T[:2, 3], cfg)


def is_top_down(q, tol_deg: float = 10.0) -> bool:
    """Whether the gripper quaternion (x, y, z, w) points the tool's z axis down within ``tol_deg``."""
    x, y, z, w = (float(c) for c in q)
    tool_z_down = 1.0 - 2.0 * (x * x + y * y)  # base z component of the tool z axis, negated below
    return -tool_z_down >= math.cos(math.radians(tol_deg))


def apply_grasp_yaw(plan, lifted, rgbd: RGBD, T_base_cam: np.ndarray, policy: str,
                    config: GraspYawConfig | None = None):
    """``lifted`` (the plan's waypoints) with the yaw measured at the plan's first grasp anchor, per
    ``policy`` (``plan``, ``cloud``, ``auto``: see the module docstring); returns ``(waypoints, estimate)``,
    the estimate None when the policy keeps the plan's yaw. The plan's yaw stays when nothing can be read
    (too few points), when the plan has no grasp, or when its orientation is not top-down."""
    if policy not in POLICIES:
        raise ValueError(f"grasp_yaw: expected one of {POLICIES}, got {policy!r}")
    if policy == "plan" or (policy == "auto" and plan.privileged):
        return lifted, None
    grasps = [i for i, a in enumerate(plan.anchors) if a.gripper < 0.5]
    if not grasps:
        return lifted, YawEstimate(None, "the plan has no grasp")
    if not is_top_down(plan.orientation):
        return lifted, YawEstimate(None, "the plan's orientation is not top-down")
    # one orientation per plan: a round object's (a mug's handle decides it) if the plan grasps one, else
    # the first grasp's (a box fits the fingers across either pair of faces)
    ests = []
    for i in grasps:
        a = plan.anchors[i]
        ests.append((i, estimate_grasp_yaw(rgbd, T_base_cam, (a.u, a.v), config)))
        if ests[-1][1].how in ("handle", "round"):
            break
    i, est = next(((i, e) for i, e in ests if e.how in ("handle", "round")), ests[0])
    if est.yaw is None:
        log.info("grasp yaw: kept the plan's %.0f deg (%s at anchor %d)", math.degrees(yaw_of_quat(plan.orientation)),
                 est.how, i)
        return lifted, est
    log.info("grasp yaw: %.0f deg from the depth at anchor %d (%s footprint, ratio %.2f, %d points); the plan "
             "said %.0f deg", math.degrees(est.yaw), i, est.how, est.ratio, est.points,
             math.degrees(yaw_of_quat(plan.orientation)))
    q = yaw_to_quat(math.degrees(est.yaw))
    return replace(lifted, quats=np.tile(q, (len(lifted.positions), 1))), est
