"""``numba.cuda`` kernels, same contract and arithmetic order as ``_ref`` (runs in the CUDA simulator
when ``NUMBA_ENABLE_CUDASIM=1``). Functions and arguments (kernels included): the table in ``_backend``'s
docstring.

Elementwise kernels use grid-stride loops and the launch shape from ``_backend.CUDA_CONFIG``; they
write a per-pixel / per-point flag and the host compacts in input order, so the output order matches
the reference exactly. FPS runs in one block (a shared-memory argmax per step, ties to the lowest
index). The fused voxel path (``cloud_voxel``) computes every pixel's box-local coordinates and its
dense-grid cell on the device; the per-voxel sums are then accumulated on the host in pixel order (the
Numba CPU grouping kernel), which keeps them bit-identical to the reference (device atomics would add
in a nondeterministic order). ``voxel_grid`` (no box, unbounded keys) groups on the host likewise.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int64

from . import _ref
from ._backend import CUDA_CONFIG, cuda_simulated

FPS_MAX_THREADS = 1024  # shared-memory size of the FPS reduction; CUDA_CONFIG.fps_threads must not exceed it


if cuda_simulated():
    @cuda.jit(device=True, inline=True)
    def _mul(a, b):
        return a * b
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _mul(a, b):
        """``a * b`` (float64) rounded on its own. NVVM contracts a plain ``a * b + c`` into one FMA (numba.cuda
        has no switch for it short of fastmath), which moves results an ulp off the reference: measured on an
        H100, 1-ulp differences in 0.1-0.2 % of the voxel centroids. ``__dmul_rn`` is never fused."""
        return libdevice.dmul_rn(a, b)


@cuda.jit(device=True, inline=True)
def _inside(px, py, pz, box):
    d0, d1, d2 = px - box[0], py - box[1], pz - box[2]
    for a in range(3):
        loc = _mul(box[6 + a], d0) + _mul(box[9 + a], d1) + _mul(box[12 + a], d2)
        if not abs(loc) <= box[3 + a]:
            return False
    return True


@cuda.jit
def _cloud_kernel(depth, stride, intr, rays, dmin, dmax, T, use_T, box, use_box, out, ok):
    W = depth.shape[1]
    ws = (W + stride - 1) // stride
    P = out.shape[0]
    pinhole = rays.shape[0] == 0
    for k in range(cuda.grid(1), P, cuda.gridsize(1)):
        r, c = k // ws, k % ws
        v, u = r * stride, c * stride
        ok[k] = 0
        d32 = depth[v, u]
        if math.isnan(d32) or math.isinf(d32) or not d32 > 0:
            continue
        z = float64(d32)
        if z < dmin or z > dmax:
            continue
        if pinhole:
            x = float32(((u - intr[2]) / intr[0]) * z)
            y = float32(((v - intr[3]) / intr[1]) * z)
        else:
            x = float32(rays[r, c, 0] * z)
            y = float32(rays[r, c, 1] * z)
        zf = float32(z)
        if use_T:
            px, py, pz = float64(x), float64(y), float64(zf)
            x = float32(_mul(T[0, 0], px) + _mul(T[0, 1], py) + _mul(T[0, 2], pz) + T[0, 3])
            y = float32(_mul(T[1, 0], px) + _mul(T[1, 1], py) + _mul(T[1, 2], pz) + T[1, 3])
            zf = float32(_mul(T[2, 0], px) + _mul(T[2, 1], py) + _mul(T[2, 2], pz) + T[2, 3])
        if use_box and not _inside(float64(x), float64(y), float64(zf), box):
            continue
        out[k, 0] = x
        out[k, 1] = y
        out[k, 2] = zf
        ok[k] = 1


@cuda.jit
def _transform_kernel(xyz, T, out):
    for i in range(cuda.grid(1), xyz.shape[0], cuda.gridsize(1)):
        px, py, pz = float64(xyz[i, 0]), float64(xyz[i, 1]), float64(xyz[i, 2])
        for r in range(3):
            out[i, r] = float32(_mul(T[r, 0], px) + _mul(T[r, 1], py) + _mul(T[r, 2], pz) + T[r, 3])


@cuda.jit
def _crop_kernel(xyz, box, ok):
    for i in range(cuda.grid(1), xyz.shape[0], cuda.gridsize(1)):
        ok[i] = 1 if _inside(float64(xyz[i, 0]), float64(xyz[i, 1]), float64(xyz[i, 2]), box) else 0


@cuda.jit
def _fps_kernel(x, y, z, k, start, mind, idx):
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    N = x.shape[0]
    sval = cuda.shared.array(FPS_MAX_THREADS, float64)
    sidx = cuda.shared.array(FPS_MAX_THREADS, int64)
    last = start
    for i in range(k):
        if tid == 0:
            idx[i] = last
        lx, ly, lz = x[last], y[last], z[last]
        best = -1.0
        arg = 0
        for j in range(tid, N, nt):
            dx, dy, dz = x[j] - lx, y[j] - ly, z[j] - lz
            d = _mul(dx, dx) + _mul(dy, dy) + _mul(dz, dz)
            m = mind[j]
            if d < m:
                m = d
                mind[j] = d
            if m > best:
                best = m
                arg = j
        sval[tid] = best
        sidx[tid] = arg
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                ov, oi = sval[tid + s], sidx[tid + s]
                if ov > sval[tid] or (ov == sval[tid] and oi < sidx[tid]):
                    sval[tid] = ov
                    sidx[tid] = oi
            cuda.syncthreads()
            s //= 2
        last = sidx[0]
        cuda.syncthreads()


@cuda.jit
def _cloud_cell_kernel(depth, stride, colx, rowy, rays, dmin, dmax, A, bl, half, inv_v, dims, loc, cell):
    """Per strided pixel: box-local coordinates and dense-grid cell, or cell -1 (contract: _ref.cloud_voxel)."""
    W = depth.shape[1]
    ws = (W + stride - 1) // stride
    P = cell.shape[0]
    pinhole = rays.shape[0] == 0
    for k in range(cuda.grid(1), P, cuda.gridsize(1)):
        r, c = k // ws, k % ws
        cell[k] = -1
        z = float64(depth[r * stride, c * stride])
        if not (z > 0.0 and z >= dmin and z <= dmax):
            continue
        if pinhole:
            rx, ry = colx[c], rowy[r]
        else:
            rx, ry = rays[r, c, 0], rays[r, c, 1]
        idx = 0
        for a in range(3):
            la = _mul(z, _mul(A[a, 0], rx) + (_mul(A[a, 1], ry) + A[a, 2])) + bl[a]
            if not abs(la) <= half[a]:
                idx = -1
                break
            loc[k, a] = la
            idx = idx * dims[a] + min(int64((la + half[a]) * inv_v), dims[a] - 1)
        cell[k] = idx


# --------------------------------------------------------------------------- module contract (see _ref)

_NO_T = np.eye(4)
_NO_BOX = np.zeros(15)


def _launch(n: int) -> tuple[int, int]:
    return CUDA_CONFIG.blocks(n), CUDA_CONFIG.threads_per_block


def _cloud(depth, intr, T, use_T, box, use_box, dmin, dmax, stride, rgb):
    H, W = depth.shape
    hs, ws = (H + stride - 1) // stride, (W + stride - 1) // stride
    P = hs * ws
    rays = _ref.cached_rays(intr, H, W, stride)
    d_out = cuda.device_array((P, 3), np.float32)
    d_ok = cuda.device_array(P, np.uint8)
    g, b = _launch(P)
    _cloud_kernel[g, b](cuda.to_device(np.ascontiguousarray(depth)), stride, cuda.to_device(intr),
                        cuda.to_device(rays), dmin, dmax, cuda.to_device(T), use_T, cuda.to_device(box),
                        use_box, d_out, d_ok)
    ok = d_ok.copy_to_host().astype(bool)
    xyz = np.ascontiguousarray(d_out.copy_to_host()[ok])
    col = None if rgb is None else np.ascontiguousarray(rgb[::stride, ::stride].reshape(P, 3)[ok])
    return xyz, col


def deproject(depth, intr, dmin, dmax, stride, rgb):
    return _cloud(depth, intr, _NO_T, False, _NO_BOX, False, dmin, dmax, stride, rgb)


def cloud(depth, intr, T, box, dmin, dmax, stride, rgb):
    return _cloud(depth, intr, T, True, box, True, dmin, dmax, stride, rgb)


def transform(xyz, T):
    d_out = cuda.device_array(xyz.shape, np.float32)
    g, b = _launch(xyz.shape[0])
    _transform_kernel[g, b](cuda.to_device(xyz), cuda.to_device(T), d_out)
    return d_out.copy_to_host()


def crop(xyz, box, rgb):
    d_ok = cuda.device_array(xyz.shape[0], np.uint8)
    g, b = _launch(xyz.shape[0])
    _crop_kernel[g, b](cuda.to_device(xyz), cuda.to_device(box), d_ok)
    ok = d_ok.copy_to_host().astype(bool)
    return np.ascontiguousarray(xyz[ok]), None if rgb is None else np.ascontiguousarray(rgb[ok])


def fps(xyz, n, start):
    N = xyz.shape[0]
    k = min(n, N)
    nt = CUDA_CONFIG.fps_threads
    if nt < 1 or nt > FPS_MAX_THREADS or nt & (nt - 1):
        raise ValueError(f"CUDA_CONFIG.fps_threads: expected a power of 2 in [1, {FPS_MAX_THREADS}], got {nt}")
    p = xyz.astype(np.float64)
    d_idx = cuda.device_array(k, np.int64)
    d_mind = cuda.to_device(np.full(N, np.inf))
    _fps_kernel[1, nt](cuda.to_device(np.ascontiguousarray(p[:, 0])), cuda.to_device(np.ascontiguousarray(p[:, 1])),
                       cuda.to_device(np.ascontiguousarray(p[:, 2])), k, start, d_mind, d_idx)
    return d_idx.copy_to_host()


def cloud_voxel(depth, intr, T, box, dmin, dmax, stride, rgb, voxel):
    from . import _cpu

    colx, rowy, rays, A, bl, half, inv_v, dims = _cpu.voxel_args(depth, intr, T, box, stride, voxel)
    H, W = depth.shape
    P = ((H + stride - 1) // stride) * ((W + stride - 1) // stride)
    d_loc = cuda.device_array((P, 3), np.float64)
    d_cell = cuda.device_array(P, np.int64)
    g, b = _launch(P)
    _cloud_cell_kernel[g, b](cuda.to_device(np.ascontiguousarray(depth)), stride, cuda.to_device(colx),
                             cuda.to_device(rowy), cuda.to_device(rays), dmin, dmax, cuda.to_device(A),
                             cuda.to_device(bl), cuda.to_device(half), inv_v, cuda.to_device(dims), d_loc, d_cell)
    cell = d_cell.copy_to_host()
    ok = cell >= 0
    col = None if rgb is None else np.ascontiguousarray(rgb[::stride, ::stride].reshape(P, 3)[ok])
    sums, cnt, csum = _cpu.group_cells(np.ascontiguousarray(cell[ok]), np.ascontiguousarray(d_loc.copy_to_host()[ok]),
                                       col, int(np.prod(dims)))
    return _ref.voxel_finish(sums, cnt, csum, box)


def voxel_grid(xyz, voxel, rgb):
    from . import _cpu

    return _cpu.voxel_grid(xyz, voxel, rgb)
