"""numpy reference implementations: the contract the Numba CPU and CUDA kernels are tested against.

Private: inputs are already validated by the public functions in ``cloud.py``. Functions, arguments and
array layouts: the table in ``_backend``'s docstring.
"""

from __future__ import annotations

import numpy as np

MODEL_NONE, MODEL_BROWN_CONRADY, MODEL_INVERSE_BROWN_CONRADY = 0, 1, 2
UNDISTORT_ITERATIONS = 10  # librealsense's rs2_deproject_pixel_to_point uses 10 fixed-point iterations


def pixel_rays(intr: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates (x, y) with z = 1 for pixels (u, v), librealsense semantics."""
    fx, fy, cx, cy, k1, k2, p1, p2, k3, model = intr
    x = (np.asarray(u, np.float64) - cx) / fx
    y = (np.asarray(v, np.float64) - cy) / fy
    xo, yo = x, y
    if int(model) == MODEL_INVERSE_BROWN_CONRADY:
        for _ in range(UNDISTORT_ITERATIONS):
            r2 = x * x + y * y
            icdist = 1.0 / (1.0 + ((k3 * r2 + k2) * r2 + k1) * r2)
            xq, yq = x / icdist, y / icdist
            dx = 2 * p1 * xq * yq + p2 * (r2 + 2 * xq * xq)
            dy = 2 * p2 * xq * yq + p1 * (r2 + 2 * yq * yq)
            x, y = (xo - dx) * icdist, (yo - dy) * icdist
    elif int(model) == MODEL_BROWN_CONRADY:
        for _ in range(UNDISTORT_ITERATIONS):
            r2 = x * x + y * y
            icdist = 1.0 / (1.0 + ((k3 * r2 + k2) * r2 + k1) * r2)
            dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            dy = 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
            x, y = (xo - dx) * icdist, (yo - dy) * icdist
    return x, y


def ray_table(intr: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
    """(h, w, 2) float64 rays for the strided pixel grid (rows 0, s, 2s, ...; columns likewise)."""
    v, u = np.mgrid[0:height:stride, 0:width:stride]
    x, y = pixel_rays(intr, u, v)
    return np.stack([x, y], axis=-1)


_RAY_CACHE: dict = {}
_RAY_CACHE_MAX = 4


def cached_rays(intr: np.ndarray, h: int, w: int, stride: int) -> np.ndarray:
    """``ray_table`` for distorted models, cached per (intrinsics, size, stride); (0, 0, 2) for pinhole,
    where the compiled kernels compute ``(u - cx) / fx`` inline."""
    if int(intr[9]) == MODEL_NONE:
        return np.zeros((0, 0, 2))
    key = (intr.tobytes(), h, w, stride)
    tab = _RAY_CACHE.get(key)
    if tab is None:
        if len(_RAY_CACHE) >= _RAY_CACHE_MAX:
            _RAY_CACHE.pop(next(iter(_RAY_CACHE)))
        tab = np.ascontiguousarray(ray_table(intr, h, w, stride))
        _RAY_CACHE[key] = tab
    return tab


def deproject(depth: np.ndarray, intr: np.ndarray, dmin: float, dmax: float, stride: int,
              rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    d = depth[::stride, ::stride].astype(np.float64)
    ok = np.isfinite(d) & (d > 0) & (d >= dmin) & (d <= dmax)
    rays = ray_table(intr, depth.shape[0], depth.shape[1], stride)
    z = d[ok]
    xyz = np.empty((z.size, 3), np.float32)
    xyz[:, 0] = rays[..., 0][ok] * z
    xyz[:, 1] = rays[..., 1][ok] * z
    xyz[:, 2] = z
    col = None if rgb is None else np.ascontiguousarray(rgb[::stride, ::stride][ok])
    return xyz, col


def transform(xyz: np.ndarray, T: np.ndarray) -> np.ndarray:
    p = xyz.astype(np.float64)
    out = np.empty_like(xyz, dtype=np.float32)
    for r in range(3):
        out[:, r] = T[r, 0] * p[:, 0] + T[r, 1] * p[:, 1] + T[r, 2] * p[:, 2] + T[r, 3]
    return out


def box_mask(xyz: np.ndarray, box: np.ndarray) -> np.ndarray:
    c, h, R = box[0:3], box[3:6], box[6:15].reshape(3, 3)
    p = xyz.astype(np.float64)
    d = [p[:, i] - c[i] for i in range(3)]
    ok = np.ones(xyz.shape[0], bool)
    for a in range(3):  # local coordinate a = R[:, a] . (p - c)
        loc = R[0, a] * d[0] + R[1, a] * d[1] + R[2, a] * d[2]
        ok &= np.abs(loc) <= h[a]
    return ok


def fps(xyz: np.ndarray, n: int, start: int) -> np.ndarray:
    """Farthest point sampling: ``min(n, N)`` indices, first ``start``; ties go to the lowest index.
    Distances in float64 with the operation order the compiled kernels use, so picks are identical."""
    N = xyz.shape[0]
    k = min(n, N)
    p = xyz.astype(np.float64)
    x, y, z = p[:, 0].copy(), p[:, 1].copy(), p[:, 2].copy()
    idx = np.empty(k, np.int64)
    mind = np.full(N, np.inf)
    last = start
    for i in range(k):
        idx[i] = last
        dx, dy, dz = x - x[last], y - y[last], z - z[last]
        np.minimum(mind, dx * dx + dy * dy + dz * dz, out=mind)
        last = int(np.argmax(mind))
    return idx


def voxel_keys(xyz: np.ndarray, voxel: float) -> np.ndarray:
    return np.floor(xyz.astype(np.float64) / voxel).astype(np.int64)


def voxel_grid(xyz: np.ndarray, voxel: float,
               rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One point per occupied voxel: the centroid (float64 sums in input order), colours the rounded
    integer mean. Voxels are ordered by the first input point that falls in them."""
    if xyz.shape[0] == 0:
        return xyz[:0].copy(), None if rgb is None else rgb[:0].copy()
    keys = voxel_keys(xyz, voxel)
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    slot = rank[inv]
    K = order.size
    cnt = np.bincount(slot, minlength=K).astype(np.float64)
    p = xyz.astype(np.float64)
    out = np.empty((K, 3), np.float32)
    for a in range(3):
        out[:, a] = np.bincount(slot, weights=p[:, a], minlength=K) / cnt
    col = None
    if rgb is not None:
        icnt = cnt.astype(np.int64)
        col = np.empty((K, 3), np.uint8)
        for a in range(3):
            s = np.bincount(slot, weights=rgb[:, a].astype(np.float64), minlength=K).astype(np.int64)
            col[:, a] = (s + icnt // 2) // icnt
    return out, col


def crop(xyz: np.ndarray, box: np.ndarray,
         rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    ok = box_mask(xyz, box)
    return xyz[ok], None if rgb is None else rgb[ok]


def cloud(depth: np.ndarray, intr: np.ndarray, T: np.ndarray, box: np.ndarray, dmin: float, dmax: float,
          stride: int, rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """depth -> camera points -> base frame -> inside the box (the fused path's contract)."""
    xyz, col = deproject(depth, intr, dmin, dmax, stride, rgb)
    return crop(transform(xyz, T), box, col)


# --------------------------------------------------------------------------- fused dense-grid voxel path
#
# depth -> box-local coordinates -> dense voxel grid over the crop box, in one pass. The contract every
# backend follows, operation for operation (so float64 results are bit-identical):
#   rays: pinhole rx = colx[c] = (u - cx) / fx, ry = rowy[r] = (v - cy) / fy; distorted: the ray table.
#   box-local l_a = z * (A[a,0] * rx + (A[a,1] * ry + A[a,2])) + bl[a], with A = R^T T_rot and
#   bl = R^T (T_trans - c) (``box_frame``); kept when |l_a| <= h_a on every axis;
#   cell index i_a = min(int((l_a + h_a) * inv_v), dims_a - 1), cell = (i0 * d1 + i1) * d2 + i2.
# Voxels are numbered by the first pixel (row-major) that lands in them; per voxel the float64 sum of
# the box-local coordinates in pixel order, the count and the integer colour sums. ``voxel_finish``
# (shared by all backends) turns those into base-frame centroids and rounded mean colours.


def box_frame(T: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A (3, 3), bl (3,)): camera point p -> box-local coordinates ``A @ p + bl``."""
    R = box[6:15].reshape(3, 3)
    A = np.ascontiguousarray(R.T @ T[:3, :3])
    bl = np.ascontiguousarray(R.T @ (T[:3, 3] - box[0:3]))
    return A, bl


def grid_dims(half: np.ndarray, voxel: float) -> np.ndarray:
    """(3,) int64 voxels per box axis for a dense grid of ``voxel`` metres over the box."""
    return np.maximum(np.ceil(2 * np.asarray(half, np.float64) / voxel - 1e-9), 1).astype(np.int64)


_AXES_CACHE: dict = {}


def pinhole_axes(intr: np.ndarray, h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(colx (ws,), rowy (hs,)) float64 pinhole rays of the strided grid, cached per intrinsics."""
    key = (intr[:4].tobytes(), h, w, stride)
    ax = _AXES_CACHE.get(key)
    if ax is None:
        if len(_AXES_CACHE) >= _RAY_CACHE_MAX:
            _AXES_CACHE.pop(next(iter(_AXES_CACHE)))
        fx, fy, cx, cy = intr[:4]
        ax = ((np.arange(0, w, stride, dtype=np.float64) - cx) / fx,
              (np.arange(0, h, stride, dtype=np.float64) - cy) / fy)
        _AXES_CACHE[key] = ax
    return ax


def voxel_finish(sums: np.ndarray, cnt: np.ndarray, csum: np.ndarray | None,
                 box: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-voxel box-local sums -> base-frame float32 centroids (and rounded mean uint8 colours)."""
    m = sums / cnt[:, None]
    R, c = box[6:15].reshape(3, 3), box[0:3]
    out = np.empty((m.shape[0], 3), np.float32)
    for r in range(3):
        out[:, r] = c[r] + (R[r, 0] * m[:, 0] + R[r, 1] * m[:, 1] + R[r, 2] * m[:, 2])
    col = None
    if csum is not None:
        col = ((csum + (cnt // 2)[:, None]) // cnt[:, None]).astype(np.uint8)
    return out, col


def group_cells(cell: np.ndarray, loc: np.ndarray, rgb: np.ndarray | None):
    """Voxels in first-occurrence order: (sums (K, 3) float64, cnt (K,) int64, csum (K, 3) or None)."""
    _, first, inv = np.unique(cell, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    slot = rank[inv]
    K = order.size
    cnt = np.bincount(slot, minlength=K).astype(np.int64)
    sums = np.empty((K, 3))
    for a in range(3):
        sums[:, a] = np.bincount(slot, weights=loc[:, a], minlength=K)
    csum = None
    if rgb is not None:
        csum = np.empty((K, 3), np.int64)
        for a in range(3):
            csum[:, a] = np.bincount(slot, weights=rgb[:, a].astype(np.float64), minlength=K).astype(np.int64)
    return sums, cnt, csum


def cloud_voxel(depth: np.ndarray, intr: np.ndarray, T: np.ndarray, box: np.ndarray, dmin: float, dmax: float,
                stride: int, rgb: np.ndarray | None, voxel: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The fused hot-loop path: depth -> base-frame voxel centroids of the points inside the box."""
    A, bl = box_frame(T, box)
    half = box[3:6]
    dims = grid_dims(half, voxel)
    d = depth[::stride, ::stride].astype(np.float64)
    ok = (d > 0) & (d >= dmin) & (d <= dmax)  # NaN fails every comparison
    z = d[ok]
    if int(intr[9]) == MODEL_NONE:
        colx, rowy = pinhole_axes(intr, depth.shape[0], depth.shape[1], stride)
        rx = np.broadcast_to(colx[None, :], d.shape)[ok]
        e = [np.broadcast_to((A[a, 1] * rowy + A[a, 2])[:, None], d.shape)[ok] for a in range(3)]
    else:
        rays = cached_rays(intr, depth.shape[0], depth.shape[1], stride)
        rx, ry = rays[..., 0][ok], rays[..., 1][ok]
        e = [A[a, 1] * ry + A[a, 2] for a in range(3)]
    loc = np.empty((z.size, 3))
    inside = np.ones(z.size, bool)
    for a in range(3):
        loc[:, a] = z * (A[a, 0] * rx + e[a]) + bl[a]
        inside &= np.abs(loc[:, a]) <= half[a]
    loc = loc[inside]
    col = None if rgb is None else rgb[::stride, ::stride][ok][inside]
    if loc.shape[0] == 0:
        return np.zeros((0, 3), np.float32), None if rgb is None else np.zeros((0, 3), np.uint8)
    idx = np.minimum(((loc + half) * (1.0 / voxel)).astype(np.int64), dims - 1)
    cell = (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]
    sums, cnt, csum = group_cells(cell, loc, col)
    return voxel_finish(sums, cnt, csum, box)
