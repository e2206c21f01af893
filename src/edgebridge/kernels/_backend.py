"""Backend selection, the CUDA launch configuration (one place; tests patch it small), and the argument
table of the backend modules.

Backends: ``"numpy"`` (``_ref``, the reference), ``"cpu"`` (``_cpu``, Numba ``@njit``), ``"cuda"``
(``_cuda``, ``numba.cuda``; the simulator when ``NUMBA_ENABLE_CUDASIM=1``). ``"auto"`` is ``"cpu"``
unless ``EDGEBRIDGE_KERNELS=cuda`` (see :func:`resolve`). Numba modules are imported on first use, never at
``import edgebridge`` time.

Backend module contract. Each of ``_ref``, ``_cpu`` and ``_cuda`` provides these functions; the public
functions in ``cloud.py`` validate the inputs and call them positionally in this order. Every backend
returns the same arrays, bit for bit (``tests/kernels``)::

    deproject(depth, intr, dmin, dmax, stride, rgb)               -> (xyz, col)  camera frame
    transform(xyz, T)                                              -> xyz
    crop(xyz, box, rgb)                                            -> (xyz, col)
    fps(xyz, n, start)                                             -> (min(n, N),) int64 indices
    voxel_grid(xyz, voxel, rgb)                                    -> (xyz, col)  world-anchored cells
    cloud(depth, intr, T, box, dmin, dmax, stride, rgb)            -> (xyz, col)  deproject+transform+crop
    cloud_voxel(depth, intr, T, box, dmin, dmax, stride, rgb, voxel) -> (xyz, col)  + box-grid centroids

Arguments (the same name means the same thing in every module, kernels included):

==========  ==========================  ==============================================================
name        type                        meaning
==========  ==========================  ==============================================================
depth       (H, W) float32, C order     metres; 0, NaN or Inf = no reading
intr        (10,) float64               ``Intrinsics.as_array()``: fx fy cx cy k1 k2 p1 p2 k3 model id
                                        (0 pinhole, 1 Brown-Conrady, 2 inverse Brown-Conrady)
T           (4, 4) float64              camera -> base frame (``T_base_cam``)
box         (15,) float64               ``WorkspaceBox.as_array()``: center (3), half extents (3),
                                        row-major R (9) with box axes -> base frame
dmin, dmax  float                       depth range kept, metres, both ends included
stride      int >= 1                    pixel step: rows and columns 0, s, 2s, ...
rgb         uint8 or None               (H, W, 3) with a depth image, (N, 3) with a cloud
voxel       float > 0                   voxel edge, metres
xyz         (N, 3) float32              points; results are float32 too
col         (N, 3) uint8 or None        colours of the returned points (None when rgb is None)
n, start    int                         FPS: number of picks, index of the first pick
==========  ==========================  ==============================================================

Derived inputs of the compiled kernels (computed on the host: ``_ref.cached_rays``,
``_ref.pinhole_axes``, ``_ref.box_frame``, ``_ref.grid_dims``, gathered by ``_cpu.voxel_args``):

==========  ==========================  ==============================================================
rays        (hs, ws, 2) float64         undistorted normalised rays of the strided pixels; (0, 0, 2)
                                        for a pinhole model (kernels compute ``(u - cx) / fx`` inline)
colx, rowy  (ws,), (hs,) float64        pinhole rays per strided column / row (zeros when distorted)
A, bl       (3, 3), (3,) float64        camera point p -> box-local coordinates ``A @ p + bl``
half        (3,) float64                the box's half extents
inv_v       float                       ``1 / voxel``
dims        (3,) int64                  voxels per box axis over the box
use_T       bool                        apply T (False for ``deproject``, with T the identity)
use_box     bool                        apply the box test (False for ``deproject``)
out, ok     device outputs (CUDA)       per-pixel / per-point values and keep flags, compacted on
loc, cell                               the host in input order (cell -1 = not kept)
==========  ==========================  ==============================================================

``hs, ws`` are the strided image's rows and columns: ``ceil(H / stride)``, ``ceil(W / stride)``.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)

BACKENDS = ("numpy", "cpu", "cuda")


@dataclass
class CudaConfig:
    """CUDA launch tunables. ``threads_per_block`` for the elementwise kernels; ``max_blocks`` caps the
    grid (grid-stride loops cover the rest); ``fps_threads`` is the single block FPS runs in (a power of 2)."""

    threads_per_block: int = 256
    max_blocks: int = 1024
    fps_threads: int = 512

    def blocks(self, n: int) -> int:
        return max(1, min(self.max_blocks, (n + self.threads_per_block - 1) // self.threads_per_block))


CUDA_CONFIG = CudaConfig()

_cuda_ok: bool | None = None


def cuda_simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_usable() -> bool:
    """True when ``numba.cuda`` imports and reports a device (the simulator counts). Cached."""
    global _cuda_ok
    if _cuda_ok is None:
        import ctypes.util

        if not cuda_simulated() and ctypes.util.find_library("cuda") is None:
            _cuda_ok = False  # no driver library: skip the (slow) numba.cuda import
            return _cuda_ok
        try:
            from numba import cuda

            _cuda_ok = bool(cuda.is_available())
        except Exception as e:  # no driver, no toolkit, broken install: CUDA is just not available
            log.debug("numba.cuda unusable: %s", e)
            _cuda_ok = False
    return _cuda_ok


def available_backends() -> tuple[str, ...]:
    """The backends usable in this process (``"cuda"`` includes the simulator)."""
    out = ["numpy"]
    try:
        importlib.import_module("numba")
        out.append("cpu")
    except ImportError:
        return tuple(out)
    if cuda_usable():
        out.append("cuda")
    return tuple(out)


def resolve(backend: str) -> str:
    """Map ``backend`` (one of BACKENDS or ``"auto"``) to a concrete backend, or raise ValueError."""
    if backend == "auto":
        # The Numba CPU twin unless EDGEBRIDGE_KERNELS=cuda asks for the GPU: on an H100 host the numba.cuda
        # depth -> 512-point path took 20 ms against 6 ms on the CPU (per-pixel coordinates travel back to
        # the host, where the voxel sums are added in pixel order to stay bit-identical), see
        # benchmarks/results/kernels.md. Measure on the target (a Jetson shares its memory) before switching.
        choice = os.environ.get("EDGEBRIDGE_KERNELS", "cpu") or "cpu"
        if choice not in ("cpu", "cuda"):
            raise ValueError(f"EDGEBRIDGE_KERNELS: expected 'cpu' or 'cuda', got {choice!r}")
        if choice == "cuda" and not cuda_usable():
            raise ValueError("EDGEBRIDGE_KERNELS=cuda: numba.cuda reports no GPU; unset it to use the CPU kernels")
        return choice
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {backend!r}")
    if backend == "cuda" and not cuda_usable():
        raise ValueError("backend='cuda': numba.cuda reports no GPU; use backend='cpu', or set "
                         "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in the simulator")
    return backend


def module(backend: str) -> ModuleType:
    """The private kernel module for a concrete backend (imported lazily)."""
    name = {"numpy": "_ref", "cpu": "_cpu", "cuda": "_cuda"}[backend]
    return importlib.import_module(f"edgebridge.kernels.{name}")
