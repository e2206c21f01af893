"""Depth tare: measure a depth camera's constant depth offset against the table plane, and remove it.

A stereo depth camera whose calibration drifted (temperature, a knock, a replaced lens) reads every
depth a few millimetres to centimetres off. librealsense's own fix is the *tare calibration* against a
flat target at a known distance; this is the same idea with the target the robot already has: the
table, whose height in the base frame is known (``table_z_m``) and which fills much of the view.

For every pixel the ray through it (intrinsics, distortion, ``T_base_cam``) meets the plane
``z = table_z_m`` at a predicted depth ``s``; a pixel that sees the table reads ``depth = s + bias``.
The bias is the densest cluster of ``depth - s`` within ``[-max_bias_m, max_bias_m]``, refined by the
median of the residuals within ``band_m`` of it. Objects on the table read closer than the plane and
the floor beyond it reads farther, so neither shifts the cluster as long as the table shows in at least
``min_table_fraction`` of the pixels whose rays meet the plane; otherwise the tare fails with
:class:`DepthTareError` (the table is hidden, the camera pose is wrong, or the offset exceeds the
search range) and nothing is corrected.

The correction subtracts the bias from every valid depth (``0`` stays "no measurement"). Offsets inside
``deadband_m`` are reported but not applied: they are within the sensor's own accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..config import check
from ..contracts import RGBD, check_transform
from ..errors import EdgebridgeError
from .undistort import undistort_normalized

log = logging.getLogger(__name__)


class DepthTareError(EdgebridgeError):
    """The depth offset could not be measured against the table plane."""


@dataclass(frozen=True)
class DepthTareConfig:
    """``table_z_m``: the table surface height in the base frame. ``max_bias_m``: the largest offset
    searched. ``band_m``: a pixel within this of the (offset) plane counts as table.
    ``min_table_fraction``: the share of plane-hitting pixels that must be table. ``deadband_m``: smaller
    offsets are not corrected."""

    table_z_m: float = 0.0
    max_bias_m: float = 0.2
    band_m: float = 0.01
    min_table_fraction: float = 0.15
    deadband_m: float = 0.003

    def __post_init__(self) -> None:
        check(0 < self.max_bias_m < 1.0, "depth_tare.max_bias_m", f"must lie in (0, 1) m, got {self.max_bias_m}")
        check(0 < self.band_m < self.max_bias_m, "depth_tare.band_m",
              f"must lie in (0, max_bias_m={self.max_bias_m}) m, got {self.band_m}")
        check(0 < self.min_table_fraction <= 1, "depth_tare.min_table_fraction",
              f"must lie in (0, 1], got {self.min_table_fraction}")
        check(0 <= self.deadband_m < self.max_bias_m, "depth_tare.deadband_m",
              f"must lie in [0, max_bias_m) m, got {self.deadband_m}")


@dataclass(frozen=True)
class DepthTare:
    """A measured depth offset: ``bias_m`` (measured - true), the table pixels it rests on, their share
    of the plane-hitting pixels, their robust spread (1.4826 MAD) and whether ``correct`` applies it."""

    bias_m: float
    table_pixels: int
    table_fraction: float
    spread_m: float
    applied: bool

    def correct(self, frame: RGBD) -> RGBD:
        """``frame`` with the offset removed from every valid depth (a new frame; the same one when the
        offset is inside the deadband)."""
        if not self.applied:
            return frame
        depth = frame.depth.astype(np.float32, copy=True)
        valid = np.isfinite(depth) & (depth > 0)
        depth[valid] -= np.float32(self.bias_m)
        depth[valid & (depth <= 0)] = 0.0
        return replace(frame, depth=depth)

    def describe(self) -> str:
        action = "corrected" if self.applied else "within the deadband, not corrected"
        return (f"depth offset {self.bias_m * 1000:+.1f} mm ({action}; {self.table_pixels} table pixels, "
                f"{self.table_fraction:.0%} of the plane, spread {self.spread_m * 1000:.1f} mm)")


def plane_depth(frame: RGBD, T_base_cam: np.ndarray, table_z_m: float = 0.0) -> np.ndarray:
    """(H, W) depth (optical-axis z, metres) at which each pixel's ray meets the plane ``z = table_z_m``
    of the base frame; NaN where the ray misses it (parallel, or the plane lies behind the camera)."""
    T = check_transform("T_base_cam", T_base_cam)
    k = frame.intrinsics
    v, u = np.mgrid[0:k.height, 0:k.width].astype(np.float64)
    x, y = undistort_normalized((u - k.cx) / k.fx, (v - k.cy) / k.fy, k)
    # ray p(s) = t + s * R @ (x, y, 1) in the base frame; its z meets table_z at s
    R, t = T[:3, :3], T[:3, 3]
    dz = R[2, 0] * x + R[2, 1] * y + R[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (table_z_m - t[2]) / dz
    s[~(s > 0)] = np.nan
    return s


def estimate_depth_bias(frame: RGBD, T_base_cam: np.ndarray, config: DepthTareConfig | None = None) -> DepthTare:
    """Measure the depth offset of ``frame`` against the table plane (see the module doc)."""
    cfg = config or DepthTareConfig()
    if not isinstance(frame, RGBD):
        raise DepthTareError(f"depth tare: expected an RGBD frame, got {type(frame).__name__}")
    s = plane_depth(frame, T_base_cam, cfg.table_z_m)
    depth = frame.depth.astype(np.float64)
    hits = np.isfinite(s) & np.isfinite(depth) & (depth > 0)
    n_hits = int(hits.sum())
    if n_hits == 0:
        raise DepthTareError(f"depth tare: no valid depth pixel looks at the table plane z = {cfg.table_z_m} m; "
                             f"check the camera pose (T_base_cam) and that the camera sees the table")
    r = (depth - s)[hits]
    r = r[np.abs(r) <= cfg.max_bias_m]
    if r.size == 0:
        raise DepthTareError(f"depth tare: no pixel reads within {cfg.max_bias_m * 100:.0f} cm of the table plane; "
                             f"the offset is larger than max_bias_m or the camera pose is wrong")
    edges = np.arange(-cfg.max_bias_m, cfg.max_bias_m + cfg.band_m, cfg.band_m)
    counts, edges = np.histogram(r, bins=edges)
    k = int(np.argmax(counts))
    centre = 0.5 * (edges[k] + edges[k + 1])
    table = r
    for _ in range(4):  # refine: median of the residuals in the band around the current estimate
        table = r[np.abs(r - centre) <= cfg.band_m]
        centre = float(np.median(table))
    fraction = table.size / n_hits
    if fraction < cfg.min_table_fraction:
        raise DepthTareError(
            f"depth tare: only {fraction:.0%} of the {n_hits} pixels looking at the table plane fit one depth "
            f"offset (need {cfg.min_table_fraction:.0%}); clear the table or point the camera at it, or turn the "
            f"tare off (camera.depth_tare = false)")
    spread = 1.4826 * float(np.median(np.abs(table - centre)))
    return DepthTare(bias_m=centre, table_pixels=int(table.size), table_fraction=float(fraction),
                     spread_m=spread, applied=abs(centre) > cfg.deadband_m)
