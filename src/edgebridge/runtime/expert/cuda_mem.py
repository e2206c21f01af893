"""Device buffers and a stream for the TensorRT paths, through cuda-python (preferred, as NVIDIA's
TensorRT samples do) or pycuda. Imported lazily: nothing here loads unless a TensorRT path runs."""

from __future__ import annotations

import numpy as np

from ...errors import ExpertError, MissingExtraError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python
        return cudart
    except ImportError:
        return None


class CudaApi:
    """The few CUDA runtime calls TensorRT needs: malloc/free, async copies, a stream, synchronise."""

    def __init__(self) -> None:
        self.cudart = _cudart()
        self.pycuda = None
        if self.cudart is None:
            try:
                import pycuda.autoinit  # noqa: F401  (creates a context on device 0)
                import pycuda.driver as drv
            except ImportError as e:
                raise MissingExtraError("TensorRT needs cuda-python ('pip install cuda-python') or pycuda for "
                                        "device buffers; install the 'jetson' extra: pip install 'edgebridge[jetson]'") from e
            self.pycuda = drv
        self.stream = self._stream()

    def _check(self, ret, what: str):
        err = ret[0] if isinstance(ret, tuple) else ret
        if int(err) != 0:
            raise ExpertError(f"CUDA {what} failed: {err}")
        return ret[1] if isinstance(ret, tuple) and len(ret) > 1 else None

    def _stream(self):
        if self.cudart is not None:
            return self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        return self.pycuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream) if self.cudart is not None else self.stream.handle

    def malloc(self, nbytes: int):
        if self.cudart is not None:
            return self._check(self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        return self.pycuda.mem_alloc(nbytes)

    def free(self, ptr) -> None:
        if self.cudart is not None:
            self._check(self.cudart.cudaFree(ptr), "cudaFree")
        else:
            ptr.free()

    def htod(self, ptr, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        if self.cudart is not None:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream),
                        "cudaMemcpyAsync(host->device)")
        else:
            self.pycuda.memcpy_htod_async(ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, ptr) -> None:
        if self.cudart is not None:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream),
                        "cudaMemcpyAsync(device->host)")
        else:
            self.pycuda.memcpy_dtoh_async(host, ptr, self.stream)

    def synchronize(self) -> None:
        if self.cudart is not None:
            self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        else:
            self.stream.synchronize()

    def close(self) -> None:
        if self.cudart is not None and self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
        self.stream = None


def address(ptr) -> int:
    """Integer device address of a cuda-python pointer or a pycuda allocation."""
    return int(ptr)
