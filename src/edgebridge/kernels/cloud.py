"""Point-cloud kernels: deproject, transform, crop, downsample, and the fused depth -> cloud path.

Each public function validates its inputs (a ``ValueError`` names the argument, the value and what is
expected) and dispatches to a private kernel module: ``_ref`` (numpy), ``_cpu`` (Numba) or ``_cuda``
(``numba.cuda``), whose functions and arguments are tabled in ``_backend``'s docstring. All backends
return the same points in the same order; the tests hold them to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..contracts import RGBD, Intrinsics, PointCloud, check_transform, quat_to_matrix
from . import _backend, _ref

DOWNSAMPLE_METHODS = ("fps", "voxel", "random")
AUTO_VOXELS_PER_POINT = 4.0  # voxel_size="auto": aim for ~4 occupied voxels per output point before FPS
MAX_DENSE_CELLS = 1 << 22  # the fused path's dense grid over the box; larger grids use the hash grid


def auto_voxel_size(box: "WorkspaceBox", n_points: int) -> float:
    """The voxel edge ``voxel_size="auto"`` uses: a seen surface as large as the box's largest face,
    covered by ``AUTO_VOXELS_PER_POINT * n_points`` voxels (so FPS runs over a few thousand centroids,
    each already a local average), grown if needed to keep the dense grid within ``MAX_DENSE_CELLS``."""
    h = 2 * np.asarray(box.half_extents, np.float64)
    area = max(h[0] * h[1], h[0] * h[2], h[1] * h[2])
    v = float(np.sqrt(area / (AUTO_VOXELS_PER_POINT * int(n_points))))
    cells = float(np.prod(np.ceil(h / v)))
    if cells > MAX_DENSE_CELLS:
        v *= float(np.cbrt(cells / MAX_DENSE_CELLS)) * 1.01
    return v


# --------------------------------------------------------------------------- validation helpers


def _points(name: str, xyz) -> np.ndarray:
    arr = np.asarray(xyz)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name}: expected an (N, 3) array of points, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise ValueError(f"{name}: {bad} point(s) with NaN/Inf coordinates; drop them first "
                         f"(e.g. xyz[np.isfinite(xyz).all(axis=1)])")
    return arr


def _colours(name: str, rgb, n: int, shape: tuple | None = None) -> np.ndarray | None:
    if rgb is None:
        return None
    arr = np.asarray(rgb)
    want = shape if shape is not None else (n, 3)
    if arr.shape != want or arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 array of shape {want}, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _depth_range(depth_min, depth_max) -> tuple[float, float]:
    lo, hi = float(depth_min), float(depth_max)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
        raise ValueError(f"depth_min/depth_max: need finite 0 <= depth_min < depth_max, got "
                         f"{depth_min!r}, {depth_max!r}")
    return lo, hi


def _stride(stride) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected an int >= 1, got {stride!r}")
    return int(stride)


def _depth(depth, intrinsics: Intrinsics) -> np.ndarray:
    if not isinstance(intrinsics, Intrinsics):
        raise ValueError(f"intrinsics: expected edgebridge.contracts.Intrinsics, got {type(intrinsics).__name__}")
    d = np.asarray(depth)
    want = (intrinsics.height, intrinsics.width)
    if d.shape != want:
        raise ValueError(f"depth: expected shape {want} (intrinsics height, width), got {d.shape}")
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"depth: expected float metres (float32), got dtype {d.dtype}; "
                         f"convert raw z16 with depth_units (e.g. z16 * 0.001)")
    return np.ascontiguousarray(d, dtype=np.float32)


# --------------------------------------------------------------------------- workspace box


@dataclass(frozen=True)
class WorkspaceBox:
    """An oriented box in the base frame: ``center`` (3,) m, ``half_extents`` (3,) m > 0 along the box
    axes, ``quat`` (x, y, z, w) rotating box axes into the base frame. A point is inside when its
    box-frame coordinates are within the half extents on every axis (boundary included)."""

    center: np.ndarray
    half_extents: np.ndarray
    quat: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))

    def __post_init__(self) -> None:
        for name in ("center", "half_extents", "quat"):
            n = 4 if name == "quat" else 3
            try:
                a = np.asarray(getattr(self, name), dtype=np.float64).copy()
            except (TypeError, ValueError) as e:
                raise ValueError(f"WorkspaceBox.{name}: expected {n} numbers, got {getattr(self, name)!r}") from e
            if a.shape != (n,) or not np.all(np.isfinite(a)):
                raise ValueError(f"WorkspaceBox.{name}: expected {n} finite numbers, got {getattr(self, name)!r}")
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        if np.any(self.half_extents <= 0):
            raise ValueError(f"WorkspaceBox.half_extents: must all be > 0 metres, got {self.half_extents}")
        qn = float(np.linalg.norm(self.quat))
        if abs(qn - 1.0) > 1e-3:
            raise ValueError(f"WorkspaceBox.quat: expected a unit quaternion (x, y, z, w), norm is {qn:.4f}")
        q = self.quat / qn
        q.flags.writeable = False
        object.__setattr__(self, "quat", q)

    @classmethod
    def from_bounds(cls, lo, hi) -> "WorkspaceBox":
        """Axis-aligned box from its min and max corners (base frame)."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
            raise ValueError(f"WorkspaceBox.from_bounds: need 3-vectors with hi > lo, got lo={lo}, hi={hi}")
        return cls((lo + hi) / 2, (hi - lo) / 2)

    @property
    def rotation(self) -> np.ndarray:
        return quat_to_matrix(self.quat)

    def as_array(self) -> np.ndarray:
        """(15,) float64: center, half extents, row-major rotation; the layout the kernels take."""
        return np.concatenate([self.center, self.half_extents, self.rotation.reshape(-1)])

    def contains(self, xyz) -> np.ndarray:
        """(N,) bool: which points lie inside (numpy reference semantics)."""
        return _ref.box_mask(_points("xyz", xyz), self.as_array())


def _box(box) -> np.ndarray:
    if not isinstance(box, WorkspaceBox):
        raise ValueError(f"box: expected a WorkspaceBox, got {type(box).__name__}")
    return box.as_array()


# --------------------------------------------------------------------------- public kernels


def deproject(depth, intrinsics: Intrinsics, *, depth_min: float = 0.05, depth_max: float = 3.0,
              rgb=None, stride: int = 1, backend: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:
    """Depth image (H, W) float32 metres -> (N, 3) float32 points in the camera optical frame.

    Pixels with depth 0, non-finite, or outside [depth_min, depth_max] give no point. Pixel (u, v) is
    lifted with librealsense's ``rs2_deproject_pixel_to_point`` semantics for the intrinsics' model.
    Points come in row-major pixel order over the strided grid; ``rgb`` (H, W, 3) uint8 gives colours.
    """
    d = _depth(depth, intrinsics)
    lo, hi = _depth_range(depth_min, depth_max)
    s = _stride(stride)
    col = _colours("rgb", rgb, 0, shape=d.shape + (3,))
    be = _backend.resolve(backend)
    return _backend.module(be).deproject(d, intrinsics.as_array(), lo, hi, s, col)


def transform_points(xyz, T_a_b, backend: str = "auto") -> np.ndarray:
    """Map (N, 3) points from frame b to frame a: ``p_a = R p_b + t``. Returns float32."""
    p = _points("xyz", xyz)
    T = check_transform("T_a_b", T_a_b)
    be = _backend.resolve(backend)
    if p.shape[0] == 0:
        return p.copy()
    return _backend.module(be).transform(p, T)


def crop_box(xyz, box: WorkspaceBox, rgb=None,
             backend: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the points inside ``box`` (same frame as the points); order is preserved."""
    p = _points("xyz", xyz)
    b = _box(box)
    col = _colours("rgb", rgb, p.shape[0])
    be = _backend.resolve(backend)
    if p.shape[0] == 0:
        return p.copy(), None if col is None else col.copy()
    return _backend.module(be).crop(p, b, col)


def _pad(xyz: np.ndarray, col: np.ndarray | None, n: int):
    """Repeat the first rows cyclically up to exactly n rows (nothing to repeat when empty)."""
    k = xyz.shape[0]
    if k == 0 or k == n:
        return xyz, col
    rep = np.arange(n) % k
    return xyz[rep], None if col is None else col[rep]


def downsample(xyz, n: int, method: str = "fps", *, seed: int = 0, voxel_size: float = 0.01,
               start_index: int | None = None, rgb=None, backend: str = "auto"):
    """Reduce a cloud to exactly ``n`` points.

    ``method``: ``"fps"`` farthest point sampling starting at ``start_index`` (default: drawn from
    ``seed``); ``"voxel"`` voxel-grid centroids (size ``voxel_size`` m), then a seeded random subset of
    ``n`` voxels if more remain; ``"random"`` a seeded random subset. With fewer than ``n`` candidates
    the result is padded by repeating them cyclically. An empty input gives an empty (0, 3) result.

    Returns ``(xyz (n, 3) float32, n_valid)``, where ``n_valid`` rows are distinct picks; with ``rgb``
    given returns ``(xyz, n_valid, rgb (n, 3) uint8)``.
    """
    p = _points("xyz", xyz)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    n = int(n)
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"method: expected one of {DOWNSAMPLE_METHODS}, got {method!r}")
    vs = float(voxel_size)
    if method == "voxel" and not (np.isfinite(vs) and vs > 0):
        raise ValueError(f"voxel_size: expected a positive length in metres, got {voxel_size!r}")
    col = _colours("rgb", rgb, p.shape[0])
    N = p.shape[0]
    if start_index is not None and (isinstance(start_index, bool) or not isinstance(start_index, (int, np.integer))
                                    or not 0 <= start_index < max(N, 1)):
        raise ValueError(f"start_index: expected an int in [0, {N}), got {start_index!r}")
    be = _backend.resolve(backend)
    out, ocol, k = _downsample(p, col, n, method, seed, vs, start_index, be)
    return (out, k) if rgb is None else (out, k, ocol)


def _downsample(p, col, n, method, seed, vs, start_index, be):
    N = p.shape[0]
    if N == 0:
        return p[:0].copy(), None if col is None else col[:0].copy(), 0
    rng = np.random.default_rng(seed)
    mod = _backend.module(be)
    if method == "fps":
        start = int(rng.integers(N)) if start_index is None else int(start_index)
        idx = mod.fps(p, n, start)
        sel, scol = p[idx], None if col is None else col[idx]
    else:
        if method == "voxel":  # ("subset": already voxelised, take the seeded subset only)
            p, col = mod.voxel_grid(p, vs, col)
        k = p.shape[0]
        if k > n:
            idx = np.sort(rng.choice(k, size=n, replace=False))
            sel, scol = p[idx], None if col is None else col[idx]
        else:
            sel, scol = p, col
    k = sel.shape[0]
    sel, scol = _pad(np.ascontiguousarray(sel), scol, n)
    return sel, scol, k


def depth_to_cloud(rgbd: RGBD, T_base_cam, box: WorkspaceBox, n_points: int = 512, *, method: str = "fps",
                   voxel_size: float | str = "auto", depth_min: float = 0.05, depth_max: float = 3.0, stride: int = 1,
                   seed: int = 0, backend: str = "auto") -> PointCloud:
    """The hot-loop path: RGB-D frame -> exactly ``n_points`` coloured points in the base frame.

    With ``method="fps"`` or ``"voxel"`` one fused pass deprojects, transforms by ``T_base_cam``, crops
    to ``box`` and averages the points into a dense voxel grid laid over the box (box-aligned cells of
    ``voxel_size`` m; centroids and mean colours, ordered by first pixel); then ``"fps"`` runs farthest
    point sampling over the centroids and ``"voxel"`` takes a seeded subset. ``voxel_size="auto"`` (the
    default) picks the cell from the box and ``n_points`` (:func:`auto_voxel_size`); ``0`` with ``"fps"``
    skips the grid (FPS over every cropped point). ``"random"``: a seeded subset of the cropped points.
    An empty crop gives an empty cloud (``len == 0``, ``n_valid == 0``); the caller decides.
    """
    if not isinstance(rgbd, RGBD):
        raise ValueError(f"rgbd: expected edgebridge.contracts.RGBD, got {type(rgbd).__name__}")
    T = check_transform("T_base_cam", T_base_cam)
    b = _box(box)
    lo, hi = _depth_range(depth_min, depth_max)
    s = _stride(stride)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points: expected an int >= 1, got {n_points!r}")
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"method: expected one of {DOWNSAMPLE_METHODS}, got {method!r}")
    if isinstance(voxel_size, str):
        if voxel_size != "auto":
            raise ValueError(f"voxel_size: expected a length in metres or 'auto', got {voxel_size!r}")
        vs = auto_voxel_size(box, int(n_points))
    else:
        vs = float(voxel_size)
        if not (np.isfinite(vs) and vs >= 0) or (method == "voxel" and vs == 0):
            raise ValueError(f"voxel_size: expected a length >= 0 m (> 0 for method='voxel') or 'auto', "
                             f"got {voxel_size!r}")
    be = _backend.resolve(backend)
    mod = _backend.module(be)
    intr = rgbd.intrinsics.as_array()
    if method != "random" and vs > 0:
        if float(np.prod(_ref.grid_dims(b[3:6], vs).astype(np.float64))) <= MAX_DENSE_CELLS:
            xyz, col = mod.cloud_voxel(rgbd.depth, intr, T, b, lo, hi, s, rgbd.rgb, vs)
        else:  # grid too fine for a dense array over this box: crop, then the hash grid
            xyz, col = mod.cloud(rgbd.depth, intr, T, b, lo, hi, s, rgbd.rgb)
            if xyz.shape[0]:
                xyz, col = mod.voxel_grid(xyz, vs, col)
        if method == "voxel":
            method, vs = "subset", 0.0
    else:
        xyz, col = mod.cloud(rgbd.depth, intr, T, b, lo, hi, s, rgbd.rgb)
    out, ocol, k = _downsample(xyz, col, int(n_points), method, seed, vs, None, be)
    return PointCloud(out, ocol, stamp_ns=rgbd.stamp_ns, frame="base", n_valid=k)
