"""Lift a planner's 2-D anchors to 3-D waypoints in the robot base frame.

For each anchor ``(u, v)`` of a :class:`~edgebridge.contracts.Plan`:

1. the pixel must lie inside the image, else :class:`PlanError`;
2. its depth is the **median of the valid depth** in a ``window x window`` patch centred on the pixel
   (clipped at the image border). Valid means finite, > 0 and inside ``[depth_min, depth_max]``; a
   patch needs at least ``min_valid`` such samples. The median ignores the odd flying pixel at an
   object edge, where a single-pixel read would jump to the background;
3. the pixel is deprojected with the intrinsics (pinhole + the distortion model in
   :class:`~edgebridge.contracts.Intrinsics`, same conventions as librealsense) to the camera optical
   frame, then mapped to the base frame with ``T_base_cam``;
4. the base-frame point must lie inside the workspace (when one is given), else :class:`PlanError`
   naming the anchor, its pixel, the base-frame point and (with an :class:`AnchorBounds`, what the
   pipeline passes: the setup's workspace limits and the camera's crop) the bound it broke.

Depth policy (decided here, documented in ``docs/planner.md``): the **measured depth always wins**.
An anchor's own ``depth`` (a planner's estimate) is used only when the window holds no valid
measurement *and* the caller passes ``planner_depth_fallback=True``; it must then also lie in
``[depth_min, depth_max]``. By default a depth hole is an error naming the anchor index and pixel: a
point at 0 m (or at a guess) is never produced silently, and the runtime holds the arm instead.

Every waypoint gets ``plan.orientation`` (``Pipeline.lift`` may then replace its yaw with one measured in
the depth image, ``runtime/grasp_yaw.py``); the gripper value comes from its anchor.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from ..calib.undistort import undistort_normalized
from ..contracts import Intrinsics, Plan, RGBD, Waypoints, check_transform
from ..errors import PlanError

log = logging.getLogger(__name__)


class Workspace(Protocol):
    """Anything with ``contains(points (N, 3)) -> (N,) bool`` (e.g. ``edgebridge.kernels.WorkspaceBox``).
    One that also has ``violation(point) -> str | None`` names the bound a point breaks in the error."""

    def contains(self, points: np.ndarray) -> np.ndarray: ...


SURFACE_MARGIN_M = 0.03  # how far below the arm's workspace floor an anchor may lift (a surface point)


class AnchorBounds:
    """Where a lifted anchor may lie: the setup's end-effector workspace (``limits.workspace_min`` /
    ``workspace_max``) intersected with the camera's working volume (the device's workspace box, the
    perception crop) when there is one. Anchors are points on surfaces and the guidance raises every
    contact above them, so the floor is ``SURFACE_MARGIN_M`` below ``limits.workspace_min`` z (depth noise
    at the table top). ``violation(point)`` names the first bound a point breaks."""

    def __init__(self, limits_min, limits_max, region: Any = None, *,
                 surface_margin_m: float = SURFACE_MARGIN_M) -> None:
        lo = np.array(limits_min, dtype=np.float64)
        hi = np.array(limits_max, dtype=np.float64)
        lo[2] -= surface_margin_m
        self.lo_src = ["limits.workspace_min"] * 2 + [f"limits.workspace_min - {surface_margin_m:g} m"]
        self.hi_src = ["limits.workspace_max"] * 3
        self.region = None
        box = _axis_aligned_bounds(region)
        if box is not None:  # an axis-aligned crop: intersect bound by bound, keeping where each comes from
            for i in range(3):
                if box[0][i] > lo[i]:
                    lo[i], self.lo_src[i] = box[0][i], "the camera's workspace crop (min)"
                if box[1][i] < hi[i]:
                    hi[i], self.hi_src[i] = box[1][i], "the camera's workspace crop (max)"
        elif region is not None:
            self.region = region
        self.lo, self.hi = lo, hi

    def contains(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        inside = np.all((p >= self.lo) & (p <= self.hi), axis=1)
        if self.region is not None:
            inside &= np.asarray(self.region.contains(p.astype(np.float32)), dtype=bool).reshape(-1)
        return inside

    def violation(self, point) -> str | None:
        p = np.asarray(point, dtype=np.float64).reshape(3)
        for i, axis in enumerate("xyz"):
            if p[i] < self.lo[i]:
                a, b = _pair(p[i], self.lo[i])
                return f"{axis} {a} m is below {b} m ({self.lo_src[i]})"
            if p[i] > self.hi[i]:
                a, b = _pair(p[i], self.hi[i])
                return f"{axis} {a} m is above {b} m ({self.hi_src[i]})"
        if self.region is not None and not self.region.contains(p[None].astype(np.float32))[0]:
            return "outside the camera's working volume (its rotated crop)"
        return None

    def describe(self) -> str:
        """The bounds for people: ``x 0.05..0.90, y -0.60..0.60, z -0.03..0.60`` (metres)."""
        text = ", ".join(f"{axis} {_m(lo)}..{_m(hi)}" for axis, lo, hi in zip("xyz", self.lo, self.hi))
        return text if self.region is None else f"{text}, within {describe_region(self.region)}"

    def __repr__(self) -> str:
        return f"AnchorBounds(min={np.round(self.lo, 3).tolist()}, max={np.round(self.hi, 3).tolist()})"


def _axis_aligned_bounds(region: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(min, max) corners of an axis-aligned ``WorkspaceBox``-like region, else None."""
    center, half, quat = (getattr(region, k, None) for k in ("center", "half_extents", "quat"))
    if center is None or half is None or quat is None:
        return None
    if not np.allclose(np.abs(np.asarray(quat, dtype=np.float64)), [0, 0, 0, 1], atol=1e-9):
        return None
    c, h = np.asarray(center, dtype=np.float64), np.asarray(half, dtype=np.float64)
    return c - h, c + h


def _m(x: float) -> str:
    """Metres for people: two decimals, no negative zero."""
    text = f"{float(x):.2f}"
    return "0.00" if text == "-0.00" else text


def _pair(a: float, b: float) -> tuple[str, str]:
    """Two lengths to compare, in two decimals unless that makes them look equal (then three)."""
    x, y = _m(a), _m(b)
    return (x, y) if x != y else (f"{float(a):.3f}", f"{float(b):.3f}")


def format_point(p) -> str:
    """A 3-D point for people: ``(-0.12, -0.40, 0.00)``."""
    return "(" + ", ".join(_m(v) for v in np.asarray(p, dtype=np.float64).reshape(-1)) + ")"


def describe_region(region: Any) -> str:
    """A workspace for a log line, never a repr full of arrays: an :class:`AnchorBounds` or an
    axis-aligned ``WorkspaceBox`` as per-axis ranges (``x 0.05..0.90, y -0.60..0.60, z 0.00..0.60``), a
    rotated box by centre, half sizes and turn, anything else by its type."""
    if isinstance(region, AnchorBounds):
        return region.describe()
    box = _axis_aligned_bounds(region)
    if box is not None:
        return ", ".join(f"{axis} {_m(lo)}..{_m(hi)}" for axis, lo, hi in zip("xyz", *box))
    center, half, quat = (getattr(region, k, None) for k in ("center", "half_extents", "quat"))
    if center is not None and half is not None and quat is not None:
        q = np.asarray(quat, dtype=np.float64)
        angle = float(np.degrees(2 * np.arccos(np.clip(abs(q[3]), 0.0, 1.0))))
        axis = q[:3] * np.sign(q[3] or 1.0)
        axis = axis / (np.linalg.norm(axis) or 1.0)
        return (f"a box centred at {format_point(center)} m with half sizes {format_point(half)} m, turned "
                f"{angle:.0f} deg about {format_point(axis)}")
    return f"(a workspace of type {type(region).__name__})"


def window_depth(depth: np.ndarray, u: int, v: int, *, window: int = 5, depth_min: float = 0.05,
                 depth_max: float = 3.0, min_valid: int = 1) -> float | None:
    """Median of the valid depth in the ``window x window`` patch centred on ``(u, v)``.

    Returns ``None`` when fewer than ``min_valid`` valid samples are found (a depth hole).
    """
    h, w = depth.shape
    r = window // 2
    patch = depth[max(0, v - r):min(h, v + r + 1), max(0, u - r):min(w, u + r + 1)]
    vals = patch[np.isfinite(patch)]
    vals = vals[(vals > 0) & (vals >= depth_min) & (vals <= depth_max)]
    if vals.size < max(1, min_valid):
        return None
    return float(np.median(vals))


def deproject_pixel(intr: Intrinsics, u: float, v: float, depth: float) -> np.ndarray:
    """Pixel ``(u, v)`` (column, row) at ``depth`` metres -> (3,) point in the camera optical frame."""
    x = (float(u) - intr.cx) / intr.fx
    y = (float(v) - intr.cy) / intr.fy
    xu, yu = undistort_normalized(np.float64(x), np.float64(y), intr)
    return np.array([float(xu) * depth, float(yu) * depth, float(depth)])


def lift_plan(plan: Plan, rgbd: RGBD, T_base_cam: np.ndarray, workspace: Workspace | Any | None = None, *,
              window: int = 5, depth_min: float = 0.05, depth_max: float = 3.0, min_valid: int = 1,
              planner_depth_fallback: bool = False, out_of_bounds: str = "reject", clamp_max_m: float = 0.10,
              ray_error_m: np.ndarray | None = None, clamped: list | None = None) -> Waypoints:
    """Lift every anchor of ``plan`` to a base-frame waypoint; any bad anchor raises :class:`PlanError`.

    ``window`` (odd, >= 1) is the side of the depth patch; ``min_valid`` the valid samples it needs.
    The returned waypoints carry ``rgbd.stamp_ns`` (the frame they were measured in).

    ``out_of_bounds``: ``"reject"`` (a :class:`PlanError` for any anchor outside ``workspace``) or
    ``"clamp"``: an anchor outside is moved along its own camera ray to the nearest point inside the
    workspace's bounds (:func:`clamp_along_ray`), when that is at most ``clamp_max_m`` away and inside
    ``workspace``; else the plan is rejected as with ``"reject"``. The pixel the planner chose is kept, only
    its depth changes: a depth error is what puts a pixel's point off the table. ``clamped`` (a list)
    receives ``(anchor index, metres moved)`` for each clamped anchor.

    ``ray_error_m`` (simulated experiments): one error (m) per anchor added to the distance of its lifted
    point along the camera ray, before the workspace check.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"lift_plan: expected a Plan, got {type(plan).__name__}")
    if not isinstance(rgbd, RGBD):
        raise PlanError(f"lift_plan: expected an RGBD frame, got {type(rgbd).__name__}")
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"lift_plan: window must be an odd int >= 1, got {window!r}")
    if not 0 < depth_min < depth_max:
        raise ValueError(f"lift_plan: need 0 < depth_min < depth_max, got {depth_min}, {depth_max}")
    try:
        T = check_transform("T_base_cam", T_base_cam)
    except ValueError as e:
        raise PlanError(f"lift_plan: invalid camera pose ({e}); check the hand-eye calibration file") from e
    intr = rgbd.intrinsics
    cam_pts = np.empty((len(plan.anchors), 3))
    for i, a in enumerate(plan.anchors):
        if not (0 <= a.u < intr.width and 0 <= a.v < intr.height):
            raise PlanError(f"anchor {i} at pixel (u={a.u}, v={a.v}) lies outside the "
                            f"{intr.width}x{intr.height} image; the plan is rejected")
        z = window_depth(rgbd.depth, a.u, a.v, window=window, depth_min=depth_min, depth_max=depth_max,
                         min_valid=min_valid)
        if z is None:
            if planner_depth_fallback and a.depth is not None and depth_min <= a.depth <= depth_max:
                log.warning("anchor %d at (%d, %d): depth hole, using the planner's depth %.3f m", i, a.u, a.v, a.depth)
                z = float(a.depth)
            else:
                raise PlanError(
                    f"anchor {i} at pixel (u={a.u}, v={a.v}): no valid depth in the {window}x{window} window "
                    f"(need >= {min_valid} samples in [{depth_min}, {depth_max}] m); a depth hole - "
                    f"re-plan, move the camera or widen the window")
        cam_pts[i] = deproject_pixel(intr, a.u, a.v, z)
    if ray_error_m is not None:
        err = np.asarray(ray_error_m, dtype=np.float64).reshape(-1)
        if err.shape != (len(cam_pts),) or not np.all(np.isfinite(err)):
            raise ValueError(f"lift_plan: ray_error_m must hold {len(cam_pts)} finite values, got {err.shape}")
        dist = np.linalg.norm(cam_pts, axis=1)
        cam_pts = cam_pts * (np.maximum(dist + err, 1e-3) / dist)[:, None]  # never behind the camera
    base_pts = cam_pts @ T[:3, :3].T + T[:3, 3]
    if out_of_bounds not in ("reject", "clamp"):
        raise ValueError(f"lift_plan: out_of_bounds must be 'reject' or 'clamp', got {out_of_bounds!r}")
    if workspace is not None and out_of_bounds == "clamp":
        base_pts = _clamp_outside(base_pts, T, workspace, clamp_max_m, clamped)
    if workspace is not None:
        try:
            inside = np.asarray(workspace.contains(base_pts.astype(np.float32)), dtype=bool).reshape(-1)
        except AttributeError as e:
            raise TypeError(f"lift_plan: workspace must have contains(points) -> bool array, "
                            f"got {type(workspace).__name__}") from e
        if inside.shape != (len(base_pts),):
            raise TypeError(f"lift_plan: workspace.contains returned shape {inside.shape}, "
                            f"expected ({len(base_pts)},)")
        if not inside.all():
            i = int(np.flatnonzero(~inside)[0])
            a = plan.anchors[i]
            why = workspace.violation(base_pts[i]) if hasattr(workspace, "violation") else None
            n_out = int((~inside).sum())
            log.debug("plan rejected by the workspace %r: anchors (u, v) %s lift to base-frame points %s m; "
                      "outside: %s", workspace, [(b.u, b.v) for b in plan.anchors],
                      np.round(base_pts, 4).tolist(), np.flatnonzero(~inside).tolist())
            raise PlanError(f"anchor {i} at pixel (u={a.u}, v={a.v}) lifts to {format_point(base_pts[i])} m, outside "
                            f"the workspace {describe_region(workspace)}{f': {why}' if why else ''}"
                            f"{f' ({n_out} of {len(base_pts)} anchors outside)' if n_out > 1 else ''}; "
                            f"the plan points off the table")
    m = len(plan.anchors)
    return Waypoints(
        positions=base_pts,
        quats=np.tile(plan.orientation, (m, 1)),
        gripper=np.array([a.gripper for a in plan.anchors]),
        stamp_ns=rgbd.stamp_ns,
    )


def clamp_along_ray(point: np.ndarray, origin: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """The point of the ray from ``origin`` through ``point`` that lies inside the box ``[lo, hi]`` nearest
    ``point`` (``point`` itself when inside), or None when the ray misses the box (slab method)."""
    p, o = np.asarray(point, np.float64), np.asarray(origin, np.float64)
    d = p - o
    t_lo, t_hi = 0.0, np.inf
    for i in range(3):
        if abs(d[i]) < 1e-12:
            if not lo[i] <= o[i] <= hi[i]:
                return None
            continue
        a, b = (lo[i] - o[i]) / d[i], (hi[i] - o[i]) / d[i]
        t_lo, t_hi = max(t_lo, min(a, b)), min(t_hi, max(a, b))
    if t_lo > t_hi:
        return None
    return o + float(np.clip(1.0, t_lo, t_hi)) * d


def _clamp_outside(base_pts: np.ndarray, T: np.ndarray, workspace: Any, clamp_max_m: float,
                   clamped: list | None) -> np.ndarray:
    """``base_pts`` with each point outside ``workspace`` moved along its camera ray into the workspace's
    axis-aligned bounds (``lo``/``hi`` of an :class:`AnchorBounds`, or an axis-aligned box) when that moves
    it at most ``clamp_max_m``; points it cannot clamp are left for the workspace check to reject."""
    if isinstance(workspace, AnchorBounds):
        lo, hi = workspace.lo, workspace.hi
    else:
        box = _axis_aligned_bounds(workspace)
        if box is None:
            return base_pts
        lo, hi = box
    inside = np.asarray(workspace.contains(base_pts.astype(np.float32)), dtype=bool).reshape(-1)
    out = base_pts.copy()
    origin = T[:3, 3]
    shrink = 1e-4  # land strictly inside, clear of float32 rounding at the bound
    for i in np.flatnonzero(~inside):
        q = clamp_along_ray(base_pts[i], origin, lo + shrink, hi - shrink)
        if q is None:
            continue
        moved = float(np.linalg.norm(q - base_pts[i]))
        if moved > clamp_max_m or not workspace.contains(q[None].astype(np.float32))[0]:
            continue
        log.info("anchor %d lifted to %s m, outside the workspace; clamped along its camera ray by %.3f m to %s m",
                 i, format_point(base_pts[i]), moved, format_point(q))
        out[i] = q
        if clamped is not None:
            clamped.append((int(i), moved))
    return out
