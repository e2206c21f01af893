"""Numba CPU kernels (``@njit(cache=True)``), same contract and same arithmetic order as ``_ref``.
Functions and arguments (kernels included): the table in ``_backend``'s docstring.

Serial loops: on the 2-core development machine ``parallel=True`` gave nothing for these sizes, and
serial keeps the output order and the float64 sums bit-identical to the reference.
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
    """Same picks as ``_ref.fps`` (same float64 distances, ties to the lowest index), written so LLVM
    vectorises the sweep: the running max is taken over the distances' int64 bit patterns (ordered like
    the floats, all being >= 0), then one short scan finds the first index holding it."""
    N = xyz.shape[0]
    k = min(n, N)
    x = np.empty(N)
    y = np.empty(N)
    z = np.empty(N)
    for j in range(N):
        x[j], y[j], z[j] = xyz[j, 0], xyz[j, 1], xyz[j, 2]
    mind = np.full(N, np.inf)
    bits = mind.view(np.int64)
    idx = np.empty(k, np.int64)
    last = start
    for i in range(k):
        idx[i] = last
        lx, ly, lz = x[last], y[last], z[last]
        best = np.int64(0)
        for j in range(N):
            dx, dy, dz = x[j] - lx, y[j] - ly, z[j] - lz
            d = dx * dx + dy * dy + dz * dz
            mj = mind[j]
            mind[j] = d if d < mj else mj
            b = bits[j]
            best = b if b > best else best
        arg = 0
        for j in range(N):
            if bits[j] == best:
                arg = j
                break
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


@njit(cache=True)
def _cloud_voxel_kernel(depth, stride, colx, rowy, rays, dmin, dmax, A, bl, half, inv_v, dims, rgb):
    """Fused depth -> box-local coordinates -> dense voxel grid (contract: ``_ref.cloud_voxel``)."""
    H, W = depth.shape
    hs, ws = (H + stride - 1) // stride, (W + stride - 1) // stride
    pinhole = rays.shape[0] == 0
    has_rgb = rgb.shape[0] > 0
    n0, n1, n2 = dims[0], dims[1], dims[2]
    ncell = n0 * n1 * n2
    slot = np.full(ncell, -1, np.int32)
    cap = min(ncell, hs * ws)
    sums = np.empty((cap, 3))
    cnt = np.empty(cap, np.int64)
    csum = np.empty((cap if has_rgb else 0, 3), np.int64)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = (A[0, 0], A[0, 1], A[0, 2], A[1, 0], A[1, 1], A[1, 2],
                                                   A[2, 0], A[2, 1], A[2, 2])
    b0, b1, b2 = bl[0], bl[1], bl[2]
    h0, h1, h2 = half[0], half[1], half[2]
    K = 0
    last, vid = -1, -1
    s0, s1, s2, sn, q0, q1, q2 = 0.0, 0.0, 0.0, 0, 0, 0, 0
    for r in range(hs):
        v = r * stride
        ry = rowy[r]
        e0, e1, e2 = a01 * ry + a02, a11 * ry + a12, a21 * ry + a22
        for c in range(ws):
            z = np.float64(depth[v, c * stride])
            if not (z > 0.0 and z >= dmin and z <= dmax):
                continue
            if pinhole:
                rx = colx[c]
            else:
                rx, ryp = rays[r, c, 0], rays[r, c, 1]
                e0, e1, e2 = a01 * ryp + a02, a11 * ryp + a12, a21 * ryp + a22
            l0 = z * (a00 * rx + e0) + b0
            if not abs(l0) <= h0:
                continue
            l1 = z * (a10 * rx + e1) + b1
            if not abs(l1) <= h1:
                continue
            l2 = z * (a20 * rx + e2) + b2
            if not abs(l2) <= h2:
                continue
            i0 = min(np.int64((l0 + h0) * inv_v), n0 - 1)
            i1 = min(np.int64((l1 + h1) * inv_v), n1 - 1)
            i2 = min(np.int64((l2 + h2) * inv_v), n2 - 1)
            cell = (i0 * n1 + i1) * n2 + i2
            if cell != last:
                # runs of pixels share a voxel: keep its sums in registers for the run (loaded from and
                # stored back to the arrays, so the additions happen in pixel order exactly as in _ref)
                if vid >= 0:
                    sums[vid, 0], sums[vid, 1], sums[vid, 2], cnt[vid] = s0, s1, s2, sn
                    if has_rgb:
                        csum[vid, 0], csum[vid, 1], csum[vid, 2] = q0, q1, q2
                last = cell
                vid = slot[cell]
                if vid < 0:
                    vid = K
                    slot[cell] = K
                    K += 1
                    s0, s1, s2, sn, q0, q1, q2 = 0.0, 0.0, 0.0, 0, 0, 0, 0
                else:
                    s0, s1, s2, sn = sums[vid, 0], sums[vid, 1], sums[vid, 2], cnt[vid]
                    if has_rgb:
                        q0, q1, q2 = csum[vid, 0], csum[vid, 1], csum[vid, 2]
            s0 += l0
            s1 += l1
            s2 += l2
            sn += 1
            if has_rgb:
                u = c * stride
                q0 += np.int64(rgb[v, u, 0])
                q1 += np.int64(rgb[v, u, 1])
                q2 += np.int64(rgb[v, u, 2])
    if vid >= 0:
        sums[vid, 0], sums[vid, 1], sums[vid, 2], cnt[vid] = s0, s1, s2, sn
        if has_rgb:
            csum[vid, 0], csum[vid, 1], csum[vid, 2] = q0, q1, q2
    return sums[:K], cnt[:K], csum[:K]


@njit(cache=True)
def _finish_kernel(sums, cnt, csum, box):
    """Contract: ``_ref.voxel_finish`` (same operations in the same order)."""
    K = sums.shape[0]
    has_rgb = csum.shape[0] > 0
    out = np.empty((K, 3), np.float32)
    col = np.empty((K if has_rgb else 0, 3), np.uint8)
    for k in range(K):
        n = cnt[k]
        m0, m1, m2 = sums[k, 0] / n, sums[k, 1] / n, sums[k, 2] / n
        for r in range(3):
            out[k, r] = box[r] + (box[6 + 3 * r] * m0 + box[7 + 3 * r] * m1 + box[8 + 3 * r] * m2)
        if has_rgb:
            for a in range(3):
                col[k, a] = (csum[k, a] + n // 2) // n
    return out, col


@njit(cache=True)
def _group_kernel(cell, loc, rgb, ncell):
    """Ordered grouping of precomputed cell ids (contract: ``_ref.group_cells``)."""
    N = cell.shape[0]
    has_rgb = rgb.shape[0] > 0
    slot = np.full(ncell, -1, np.int32)
    sums = np.empty((N, 3))
    cnt = np.empty(N, np.int64)
    csum = np.empty((N if has_rgb else 0, 3), np.int64)
    K = 0
    for i in range(N):
        vid = slot[cell[i]]
        if vid < 0:
            vid = K
            slot[cell[i]] = K
            sums[K, 0], sums[K, 1], sums[K, 2] = 0.0, 0.0, 0.0
            cnt[K] = 0
            if has_rgb:
                csum[K, 0], csum[K, 1], csum[K, 2] = 0, 0, 0
            K += 1
        for a in range(3):
            sums[vid, a] += loc[i, a]
        cnt[vid] += 1
        if has_rgb:
            for a in range(3):
                csum[vid, a] += rgb[i, a]
    return sums[:K], cnt[:K], csum[:K]


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


def voxel_args(depth, intr, T, box, stride, voxel):
    """Host-side inputs of the fused voxel kernels (shared with the CUDA backend)."""
    H, W = depth.shape
    if int(intr[9]) == _ref.MODEL_NONE:
        colx, rowy = _ref.pinhole_axes(intr, H, W, stride)
        rays = np.zeros((0, 0, 2))
    else:
        rays = _rays(intr, H, W, stride)
        colx, rowy = np.zeros((W + stride - 1) // stride), np.zeros((H + stride - 1) // stride)
    A, bl = _ref.box_frame(T, box)
    return colx, rowy, rays, A, bl, np.ascontiguousarray(box[3:6]), 1.0 / voxel, _ref.grid_dims(box[3:6], voxel)


def group_cells(cell, loc, rgb, ncell):
    sums, cnt, csum = _group_kernel(cell, loc, _EMPTY_COL if rgb is None else rgb, ncell)
    return sums, cnt, None if rgb is None else csum


def cloud_voxel(depth, intr, T, box, dmin, dmax, stride, rgb, voxel):
    colx, rowy, rays, A, bl, half, inv_v, dims = voxel_args(depth, intr, T, box, stride, voxel)
    sums, cnt, csum = _cloud_voxel_kernel(depth, stride, colx, rowy, rays, dmin, dmax, A, bl, half, inv_v, dims,
                                          _rgb_arg(rgb))
    out, col = _finish_kernel(sums, cnt, csum, box)
    return out, None if rgb is None else col
