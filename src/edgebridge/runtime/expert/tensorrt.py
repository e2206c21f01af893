"""TensorRT action-expert backend (TensorRT 10 API: named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). ``tensorrt`` and the CUDA bindings are imported lazily;
build the engine on the target device with ``edge-export expert --trt`` or
:func:`edgebridge.export.tensorrt_build.build_engine`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import ExpertError, require
from .base import INPUT_NAMES, ExpertBackend, ExpertBackendConfig
from .cuda_mem import CudaApi, address

log = logging.getLogger(__name__)


class TensorRTExpert(ExpertBackend):
    """:class:`ActionExpert` on a serialized TensorRT engine; metadata from ``<engine>.json``."""

    name = "TensorRTExpert"

    def __init__(self, config: ExpertBackendConfig, max_batch: int = 1) -> None:
        super().__init__(config)
        trt = require("tensorrt", "jetson", "the TensorRT action expert")
        self.trt = trt
        path = Path(config.model)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as e:
            raise ExpertError(f"{path}: TensorRT engine not found; build it on this device with "
                              "`edge-export expert --run RUN --out DIR --trt ENGINE`") from e
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ExpertError(f"{path}: TensorRT could not deserialize the engine (built with another TensorRT "
                              "version or GPU?); rebuild it on this device")
        self.context = self.engine.create_execution_context()
        self.cuda = None
        self._buffers: dict = {}
        try:
            self._bind(path, trt, max_batch)
        except BaseException:
            self.close()  # nothing allocated on the device outlives a refused engine
            raise
        log.info("TensorRTExpert %s: K=%d, N=%d, H=%d, max batch %d", path.name, self.k, self.spec.n_points,
                 self.spec.horizon, max_batch)

    def _bind(self, path: Path, trt, max_batch: int) -> None:
        """Check the engine's I/O against the expert's and give every tensor a device buffer."""
        self.cuda = CudaApi()
        self.max_batch = max_batch
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(INPUT_NAMES) or len(outputs) != 1:
            raise ExpertError(f"{path}: engine I/O {inputs} -> {outputs} does not match the expert's "
                              f"{list(INPUT_NAMES)} -> ['action']")
        self.output_name = outputs[0]
        shapes = self.input_shapes(max_batch)
        shapes[self.output_name] = (max_batch, self.spec.horizon, shapes["noise"][2])
        for n, shape in shapes.items():
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            if dtype != np.float32:
                raise ExpertError(f"{path}: engine tensor {n!r} is {dtype}; build it with float32 I/O")
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self._buffers[n] = self.cuda.malloc(nbytes)
            self.context.set_tensor_address(n, address(self._buffers[n]))

    def _infer(self, feeds: dict) -> np.ndarray:
        batch = feeds["noise"].shape[0]
        if batch > self.max_batch:
            raise ExpertError(f"TensorRTExpert: batch {batch} > max_batch {self.max_batch} the buffers were made for")
        for n in INPUT_NAMES:
            if not self.context.set_input_shape(n, feeds[n].shape):
                raise ExpertError(f"TensorRTExpert: shape {feeds[n].shape} for {n!r} is outside the engine's "
                                  "optimisation profile; rebuild with a larger max batch")
            self.cuda.htod(self._buffers[n], feeds[n])
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise ExpertError("TensorRTExpert: execute_async_v3 failed (see the TensorRT log)")
        out = np.empty((batch, self.spec.horizon, feeds["noise"].shape[2]), np.float32)
        self.cuda.dtoh(out, self._buffers[self.output_name])
        self.cuda.synchronize()
        return out

    def close(self) -> None:
        for ptr in (getattr(self, "_buffers", None) or {}).values():
            try:
                self.cuda.free(ptr)
            except ExpertError as e:  # pragma: no cover - only on a faulted device
                log.warning("TensorRTExpert: freeing a device buffer failed: %s", e)
        self._buffers = {}
        if getattr(self, "cuda", None) is not None:
            self.cuda.close()
            self.cuda = None
        self.context = None
        self.engine = None
        super().close()
