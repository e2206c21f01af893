"""Backend selection and the CUDA launch configuration (one place; tests patch it small).

Backends: ``"numpy"`` (reference), ``"cpu"`` (Numba ``@njit``), ``"cuda"`` (``numba.cuda``; the
simulator when ``NUMBA_ENABLE_CUDASIM=1``). ``"auto"`` picks ``"cuda"`` only on a real GPU, else ``"cpu"``.
Numba modules are imported on first use, never at ``import edgebridge`` time.
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
