"""Numba CPU kernels (``@njit(cache=True)``), same contract and same arithmetic order as ``_ref``.

Serial loops: on the 2-core development machine ``parallel=True`` gave nothing for these sizes
(NOTES.md), and serial keeps the output order and the float64 sums bit-identical to the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _ref

_EMPTY_RGB = np.zeros((0, 0, 3), np.uint8)
_EMPTY_COL = np.zeros((0, 3), np.uint8)
_NO_T = np.eye(4)
_NO_BOX = np.zeros(15)
_rays = _ref.cached_rays


@njit(cache=True)
def _cloud_kernel(depth, stride, intr, rays, dmin, dmax, T, use_T, box, use_box, rgb):
    H, W = depth.shape
    hs, ws = (H + stride - 1) // stride, (W + stride - 1) // stride
    fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
    pinhole = rays.shape[0] == 0
    has_rgb = rgb.shape[0] > 0
    out = np.empty((hs * ws, 3), np.float32)
    col = np.empty((hs * ws if has_rgb else 0, 3), np.uint8)
    n = 0
    for r in range(hs):
        v = r * stride
        for c in range(ws):
            u = c * stride
            d32 = depth[v, u]
            if not (np.isfinite(d32) and d32 > 0):
                continue
            z = np.float64(d32)
            if z < dmin or z > dmax:
                continue
            if pinhole:
                x = np.float32(((u - cx) / fx) * z)
                y = np.float32(((v - cy) / fy) * z)
            else:
                x = np.float32(rays[r, c, 0] * z)
                y = np.float32(rays[r, c, 1] * z)
            zf = np.float32(z)
            if use_T:
                px, py, pz = np.float64(x), np.float64(y), np.float64(zf)
                x = np.float32(T[0, 0] * px + T[0, 1] * py + T[0, 2] * pz + T[0, 3])
                y = np.float32(T[1, 0] * px + T[1, 1] * py + T[1, 2] * pz + T[1, 3])
                zf = np.float32(T[2, 0] * px + T[2, 1] * py + T[2, 2] * pz + T[2, 3])
            if use_box and not _inside(np.float64(x), np.float64(y), np.float64(zf), box):
                continue
            out[n, 0], out[n, 1], out[n, 2] = x, y, zf
            if has_rgb:
                for a in range(3):
                    col[n, a] = rgb[v, u, a]
            n += 1
    return out[:n].copy(), col[:n].copy()


@njit(cache=True, inline="always")
def _inside(px, py, pz, box):
    d0, d1, d2 = px - box[0], py - box[1], pz - box[2]
    for a in range(3):
        loc = box[6 + a] * d0 + box[9 + a] * d1 + box[12 + a] * d2
        if not abs(loc) <= box[3 + a]:
            return False
    return True


@njit(cache=True)
def _transform_kernel(xyz, T):
    out = np.empty_like(xyz)
    for i in range(xyz.shape[0]):
        px, py, pz = np.float64(xyz[i, 0]), np.float64(xyz[i, 1]), np.float64(xyz[i, 2])
        for r in range(3):
            out[i, r] = T[r, 0] * px + T[r, 1] * py + T[r, 2] * pz + T[r, 3]
    return out


@njit(cache=True)
def _crop_kernel(xyz, box, rgb):
    has_rgb = rgb.shape[0] > 0
    keep = np.empty(xyz.shape[0], np.int64)
    n = 0
    for i in range(xyz.shape[0]):
        if _inside(np.float64(xyz[i, 0]), np.float64(xyz[i, 1]), np.float64(xyz[i, 2]), box):
            keep[n] = i
            n += 1
    out = np.empty((n, 3), np.float32)
    col = np.empty((n if has_rgb else 0, 3), np.uint8)
    for j in range(n):
        for a in range(3):
            out[j, a] = xyz[keep[j], a]
            if has_rgb:
                col[j, a] = rgb[keep[j], a]
    return out, col


@njit(cache=True)
def _fps_kernel(xyz, n, start):
    N = xyz.shape[0]
    k = min(n, N)
    x = np.empty(N)
    y = np.empty(N)
    z = np.empty(N)
    for j in range(N):
        x[j], y[j], z[j] = xyz[j, 0], xyz[j, 1], xyz[j, 2]
    mind = np.full(N, np.inf)
    idx = np.empty(k, np.int64)
    last = start
    for i in range(k):
        idx[i] = last
        lx, ly, lz = x[last], y[last], z[last]
        best, arg = -1.0, 0
        for j in range(N):
            dx, dy, dz = x[j] - lx, y[j] - ly, z[j] - lz
            d = dx * dx + dy * dy + dz * dz
            m = mind[j]
            if d < m:
                m = d
                mind[j] = d
            if m > best:
                best, arg = m, j
        last = arg
    return idx


@njit(cache=True, inline="always")
def _voxel_slot(table, mask, shift, kx, ky, kz, a, b, c, K):
    """Voxel id of key (a, b, c) in the open-addressing table; a new key gets id K."""
    hsh = np.uint64(a * 73856093 + b * 19349663 + c * 83492791) * np.uint64(0x9E3779B97F4A7C15)
    s = np.int64(hsh >> shift) & mask  # Fibonacci hashing: the high bits mix all key bits
    while True:
        vid = table[s]
        if vid < 0:
            table[s] = K
            kx[K], ky[K], kz[K] = a, b, c
            return K
        if kx[vid] == a and ky[vid] == b and kz[vid] == c:
            return vid
        s = (s + 1) & mask


@njit(cache=True)
def _voxel_kernel(xyz, voxel, rgb):
    N = xyz.shape[0]
    has_rgb = rgb.shape[0] > 0
    cap, bits = 1, 0
    while cap < 2 * N:
        cap *= 2
        bits += 1
    mask = cap - 1
    shift = np.uint64(64 - max(bits, 1))
    table = np.full(cap, -1, np.int64)
    kx = np.empty(N, np.int64)
    ky = np.empty(N, np.int64)
    kz = np.empty(N, np.int64)
    sums = np.zeros((N, 3))
    csum = np.zeros((N if has_rgb else 0, 3), np.int64)
    cnt = np.zeros(N, np.int64)
    K = 0
    vid = -1  # neighbouring pixels mostly share a voxel: try the previous point's voxel first
    for i in range(N):
        px, py, pz = np.float64(xyz[i, 0]), np.float64(xyz[i, 1]), np.float64(xyz[i, 2])
        a, b, c = np.int64(np.floor(px / voxel)), np.int64(np.floor(py / voxel)), np.int64(np.floor(pz / voxel))
        if vid >= 0 and kx[vid] == a and ky[vid] == b and kz[vid] == c:
            pass
        else:
            vid = _voxel_slot(table, mask, shift, kx, ky, kz, a, b, c, K)
            if vid == K:
                K += 1
        sums[vid, 0] += px
        sums[vid, 1] += py
        sums[vid, 2] += pz
        cnt[vid] += 1
        if has_rgb:
            for ch in range(3):
                csum[vid, ch] += rgb[i, ch]
    out = np.empty((K, 3), np.float32)
    col = np.empty((K if has_rgb else 0, 3), np.uint8)
    for v in range(K):
        for ch in range(3):
            out[v, ch] = sums[v, ch] / cnt[v]
            if has_rgb:
                col[v, ch] = (csum[v, ch] + cnt[v] // 2) // cnt[v]
    return out, col


# --------------------------------------------------------------------------- module contract (see _ref)


def _rgb_arg(rgb):
    return _EMPTY_RGB if rgb is None else rgb


def deproject(depth, intr, dmin, dmax, stride, rgb):
    rays = _rays(intr, depth.shape[0], depth.shape[1], stride)
    xyz, col = _cloud_kernel(depth, stride, intr, rays, dmin, dmax, _NO_T, False, _NO_BOX, False,
                             _EMPTY_RGB if rgb is None else rgb.reshape(rgb.shape[0], rgb.shape[1], 3))
    return xyz, None if rgb is None else col


def transform(xyz, T):
    return _transform_kernel(xyz, T)


def crop(xyz, box, rgb):
    out, col = _crop_kernel(xyz, box, _EMPTY_COL if rgb is None else rgb)
    return out, None if rgb is None else col


def fps(xyz, n, start):
    return _fps_kernel(xyz, n, start)


def voxel_grid(xyz, voxel, rgb):
    out, col = _voxel_kernel(xyz, voxel, _EMPTY_COL if rgb is None else rgb)
    return out, None if rgb is None else col


def cloud(depth, intr, T, box, dmin, dmax, stride, rgb):
    rays = _rays(intr, depth.shape[0], depth.shape[1], stride)
    xyz, col = _cloud_kernel(depth, stride, intr, rays, dmin, dmax, T, True, box, True, _rgb_arg(rgb))
    return xyz, None if rgb is None else col
