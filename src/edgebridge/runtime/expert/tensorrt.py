"""TensorRT action-expert backend (the named-tensor API of TensorRT 8.6 and 10.x: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). ``tensorrt`` and the CUDA bindings are imported lazily;
build the engine on the target device with ``edge-export engine`` (or ``install.sh engines``).

An engine only runs on the GPU model and the TensorRT version that built it. The build records both in
the engine's metadata (``<engine>.json``, key ``engine.device``); :class:`TensorRTExpert` compares that
record with :func:`current_device` before it deserializes anything, and refuses a foreign engine with a
message naming both sides and the command that rebuilds it here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import ExpertError, require
from .base import INPUT_NAMES, ExpertBackend, ExpertBackendConfig
from .cuda_mem import CudaApi, _cudart, address

log = logging.getLogger(__name__)

REBUILD = "edge-export engine ONNX --out ENGINE (or ./install.sh engines)"


def _gpu_properties() -> dict:
    """Name and compute capability of CUDA device 0, through cuda-python or pycuda; {} when neither answers."""
    cudart = _cudart()
    if cudart is not None and hasattr(cudart, "cudaGetDeviceProperties"):
        try:
            err, prop = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
                return {"gpu": name.rstrip("\x00").strip(), "sm": f"{int(prop.major)}.{int(prop.minor)}"}
        except Exception as e:  # a driver without a device: the caller reports "unknown"
            log.debug("cudaGetDeviceProperties: %s", e)
    try:
        import pycuda.driver as drv

        drv.init()
        dev = drv.Device(0)
        major, minor = dev.compute_capability()
        return {"gpu": dev.name(), "sm": f"{major}.{minor}"}
    except Exception as e:
        log.debug("pycuda device query: %s", e)
    return {}


def current_device(trt=None, root: Path | str = "/") -> dict:
    """What an engine built here would be tied to: ``tensorrt`` (version, when ``trt`` is given or
    importable), ``gpu`` and ``sm`` (device 0), ``l4t`` (Jetson only). Unknown fields are left out."""
    from ..power import jetson_release

    out: dict = {}
    if trt is None:
        try:
            import tensorrt as trt  # noqa: F811
        except Exception:  # the registry stub raises more than ImportError
            trt = None
    if trt is not None:
        out["tensorrt"] = str(trt.__version__)
    out.update(_gpu_properties())
    rel = jetson_release(root)
    if rel.get("l4t"):
        out["l4t"] = rel["l4t"]
    return out


def describe_device(d: dict) -> str:
    return ", ".join(f"{k} {d[k]}" for k in ("gpu", "sm", "tensorrt", "l4t") if d.get(k)) or "unknown device"


def engine_mismatch(built: dict, here: dict) -> list[str]:
    """The ways an engine built on ``built`` cannot run ``here`` (both :func:`current_device` records):
    another TensorRT version, another GPU model or compute capability. A field unknown on either side is
    not compared. The L4T release is not compared: the same TensorRT on a newer L4T loads the engine."""
    out = []
    for key, what in (("tensorrt", "TensorRT"), ("sm", "compute capability"), ("gpu", "GPU")):
        a, b = built.get(key), here.get(key)
        if a and b and str(a) != str(b):
            out.append(f"{what} {a} (engine) vs {b} (here)")
    return out


def check_engine_record(meta: dict, path: Path, trt=None) -> None:
    """Refuse an engine whose recorded build device differs from this one (:class:`ExpertError`)."""
    rec = (meta.get("engine") or {})
    built = dict(rec.get("device") or {})
    if rec.get("tensorrt") and "tensorrt" not in built:
        built["tensorrt"] = rec["tensorrt"]
    if not built:
        log.warning("%s: the engine's metadata does not say where it was built; if it fails to load, rebuild "
                    "it on this device with %s", path, REBUILD)
        return
    here = current_device(trt)
    diffs = engine_mismatch(built, here)
    if diffs:
        raise ExpertError(f"{path}: engine built for {describe_device(built)}, this device is {describe_device(here)} "
                          f"({'; '.join(diffs)}); engines only run where they were built: rebuild it here with "
                          f"{REBUILD}")


class TensorRTExpert(ExpertBackend):
    """:class:`ActionExpert` on a serialized TensorRT engine; metadata from ``<engine>.json``."""

    name = "TensorRTExpert"

    def __init__(self, config: ExpertBackendConfig, max_batch: int = 1) -> None:
        super().__init__(config)
        trt = require("tensorrt", "jetson", "the TensorRT action expert")
        self.trt = trt
        path = Path(config.model)
        check_engine_record(self.meta, path, trt)
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
