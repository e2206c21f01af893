"""Stand-ins for NVIDIA's ``tensorrt`` (the TensorRT 10 calls edgebridge makes), cuda-python's ``cudart``
and ``pycuda.driver``, so the TensorRT build and runtime code runs on a machine without a GPU.

"Device memory" is host memory (ctypes buffers); every copy is checked to lie inside one allocation.
A "serialized engine" is a header (the optimisation profile and builder flags) followed by the ONNX bytes,
and "executing" it runs that ONNX with ONNX Runtime on the tensors read from the bound addresses. The
builder drives an INT8 calibrator the way TensorRT does (``get_batch`` until None, then the cache).
What this cannot check is TensorRT itself: kernels, precision, the real parser (tests/runtime/expert/test_tensorrt.py).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np

MAGIC = b"FAKE-TRT-ENGINE\n"


class Device:
    """Allocations by address; ``fail`` names a call to make fail with a CUDA error."""

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.fail: str | None = None

    def malloc(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        self.blocks[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def span(self, addr: int, nbytes: int) -> None:
        for start, buf in self.blocks.items():
            if start <= addr and addr + nbytes <= start + len(buf):
                return
        raise AssertionError(f"device range {addr:#x}+{nbytes} lies in no allocation")

    def read(self, addr: int, shape: tuple, dtype=np.float32) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.span(addr, out.nbytes)
        ctypes.memmove(out.ctypes.data, addr, out.nbytes)
        return out

    def write(self, addr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self.span(addr, host.nbytes)
        ctypes.memmove(addr, host.ctypes.data, host.nbytes)


# ---------------------------------------------------------------------------------------------- cudart

def make_cudart(dev: Device) -> types.ModuleType:
    """cuda-python's runtime module: every call returns a tuple whose first item is a cudaError_t."""
    m = types.ModuleType("cuda.bindings.runtime")
    m.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                                 "cudaErrorMemoryAllocation": 2})
    m.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    ok, bad = m.cudaError_t.cudaSuccess, m.cudaError_t.cudaErrorInvalidValue

    def cudaMalloc(nbytes):
        if dev.fail == "cudaMalloc":
            return (m.cudaError_t.cudaErrorMemoryAllocation, 0)
        return (ok, dev.malloc(nbytes))

    def cudaFree(ptr):
        return (ok,) if dev.blocks.pop(int(ptr), None) is not None else (bad,)

    def cudaStreamCreate():
        handle = 0x5000 + len(dev.streams) + 1
        dev.streams.add(handle)
        return (ok, handle)

    def cudaStreamDestroy(stream):
        dev.streams.discard(int(stream))
        return (ok,)

    def cudaStreamSynchronize(stream):
        return (ok,) if int(stream) in dev.streams else (bad,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        if int(stream) not in dev.streams:
            return (bad,)
        dev.span(int(dst) if kind == m.cudaMemcpyKind.cudaMemcpyHostToDevice else int(src), int(count))
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    for f in (cudaMalloc, cudaFree, cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize, cudaMemcpyAsync):
        setattr(m, f.__name__, f)
    return m


def make_pycuda_driver(dev: Device) -> types.ModuleType:
    """pycuda.driver: allocations with ``int()`` and ``free()``, streams with ``handle``."""
    m = types.ModuleType("pycuda.driver")

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.ptr = dev.malloc(nbytes)

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            dev.blocks.pop(self.ptr)

    class Stream:
        def __init__(self) -> None:
            self.handle = 0x6000 + len(dev.streams) + 1
            dev.streams.add(self.handle)

        def synchronize(self) -> None:
            pass

    def memcpy_htod_async(dst, src: np.ndarray, stream=None) -> None:
        dev.write(int(dst), src)

    def memcpy_dtoh_async(dst: np.ndarray, src, stream=None) -> None:
        dst[...] = dev.read(int(src), dst.shape, dst.dtype)

    m.DeviceAllocation, m.Stream, m.mem_alloc = DeviceAllocation, Stream, DeviceAllocation
    m.memcpy_htod_async, m.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return m


# -------------------------------------------------------------------------------------------- tensorrt

def make_tensorrt(dev: Device) -> types.ModuleType:
    """The TensorRT 10 Python API surface that ``tensorrt_build`` and ``TensorRTExpert`` use.
    ``m.options``: ``io_dtype`` (DataType of every tensor), ``rename`` ({onnx name: engine name}),
    ``poison`` (write NaN into the output), ``execute_ok`` (False: execute_async_v3 fails)."""
    import onnxruntime as ort

    m = types.ModuleType("tensorrt")
    m.__version__ = "10.3.0"
    m.options = {"io_dtype": None, "rename": {}, "poison": False, "execute_ok": True}
    m.DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32")
    m.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    m.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8")
    m.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    m.nptype = lambda t: {m.DataType.FLOAT: np.float32, m.DataType.HALF: np.float16,
                          m.DataType.INT8: np.int8, m.DataType.INT32: np.int32}[t]

    class Logger:
        WARNING, INFO = 2, 3

        def __init__(self, severity=WARNING) -> None:
            self.severity = severity

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class _Tensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class _Network:
        def __init__(self) -> None:
            self.inputs: list = []
            self.onnx: bytes | None = None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

        def parse(self, blob: bytes) -> bool:
            try:
                sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            except Exception as e:
                self.errors.append(f"ModelImporter: {e}")
                return False
            self.network.onnx = bytes(blob)
            self.network.inputs = [_Tensor(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape))
                                   for i in sess.get_inputs()]
            return True

    class _Profile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class _BuilderConfig:
        def __init__(self) -> None:
            self.flags, self.profiles, self.pool = set(), [], {}
            self.int8_calibrator = None
            self.calibration_profile = None

        def set_memory_pool_limit(self, pool, nbytes) -> None:
            self.pool[pool.name] = nbytes

        def set_flag(self, flag) -> None:
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile) -> None:
            self.calibration_profile = profile

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0):
            return _Network()

        def create_builder_config(self):
            return _BuilderConfig()

        def create_optimization_profile(self):
            return _Profile()

        def build_serialized_network(self, network, config):
            if network.onnx is None or not config.profiles:
                return None
            calibrated = 0
            if "INT8" in config.flags:  # TensorRT pulls batches until None, then stores the cache
                cal = config.int8_calibrator
                names = [t.name for t in network.inputs]
                while (ptrs := cal.get_batch(names)) is not None:
                    b = cal.get_batch_size()
                    for t, p in zip(names, ptrs):
                        hi = config.profiles[0].shapes[t][2]
                        if not np.all(np.isfinite(dev.read(p, (b, *hi[1:])))):
                            return None
                    calibrated += 1
                cal.write_calibration_cache(json.dumps({"batches": calibrated}).encode())
            head = {"profile": {k: v[2] for k, v in config.profiles[0].shapes.items()},
                    "flags": sorted(config.flags), "calibration_batches": calibrated}
            return MAGIC + json.dumps(head).encode() + b"\n" + network.onnx

    class _Context:
        def __init__(self, engine) -> None:
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape) -> bool:
            hi = self.engine.head["profile"].get(name)
            if hi is None or len(shape) != len(hi) or tuple(shape[1:]) != tuple(hi[1:]) or shape[0] > hi[0]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, addr) -> bool:
            self.addr[name] = int(addr)
            return True

        def execute_async_v3(self, stream_handle) -> bool:
            e = self.engine
            if not m.options["execute_ok"] or int(stream_handle) not in dev.streams:
                return False
            if any(n not in self.shapes or n not in self.addr for n in e.inputs) or e.output not in self.addr:
                return False
            feeds = {e.onnx_name[n]: dev.read(self.addr[n], self.shapes[n]) for n in e.inputs}
            out = e.session.run(None, feeds)[0].astype(np.float32)
            if m.options["poison"]:
                out[..., 0] = np.nan
            dev.write(self.addr[e.output], out)
            return True

    class _Engine:
        def __init__(self, head: dict, onnx: bytes) -> None:
            self.head = head
            self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
            ren = m.options["rename"]
            self.onnx_name = {ren.get(i.name, i.name): i.name for i in self.session.get_inputs()}
            self.inputs = list(self.onnx_name)
            self.output = self.session.get_outputs()[0].name
            self.head["profile"] = {ren.get(k, k): v for k, v in head["profile"].items()}

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + 1

        def get_tensor_name(self, i: int) -> str:
            return (self.inputs + [self.output])[i]

        def get_tensor_mode(self, name: str):
            return m.TensorIOMode.INPUT if name in self.inputs else m.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return m.options["io_dtype"] or m.DataType.FLOAT

        def create_execution_context(self):
            return _Context(self)

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes):
            if not blob.startswith(MAGIC):
                return None  # TensorRT logs the error and returns None
            head, onnx = blob[len(MAGIC):].split(b"\n", 1)
            return _Engine(json.loads(head), onnx)

    for c in (Logger, IInt8EntropyCalibrator2, OnnxParser, Builder, Runtime):
        setattr(m, c.__name__, c)
    return m


def install(monkeypatch, cuda: str = "cuda-python") -> tuple[types.ModuleType, Device]:
    """Put the fakes into ``sys.modules`` for one test: ``cuda`` is "cuda-python", "pycuda" or "none"."""
    dev = Device()
    trt = make_tensorrt(dev)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cudart = make_cudart(dev) if cuda == "cuda-python" else None
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    pkg = types.ModuleType("cuda")
    pkg.bindings = bindings
    for name, mod in (("cuda", pkg if cudart else None), ("cuda.bindings", bindings if cudart else None),
                      ("cuda.bindings.runtime", cudart), ("cuda.cudart", None)):
        monkeypatch.setitem(sys.modules, name, mod)
    pycuda = make_pycuda_driver(dev) if cuda == "pycuda" else None
    pkg_pycuda = types.ModuleType("pycuda") if pycuda else None
    if pkg_pycuda:
        pkg_pycuda.driver, pkg_pycuda.autoinit = pycuda, types.ModuleType("pycuda.autoinit")
    for name, mod in (("pycuda", pkg_pycuda), ("pycuda.driver", pycuda),
                      ("pycuda.autoinit", pkg_pycuda.autoinit if pkg_pycuda else None)):
        monkeypatch.setitem(sys.modules, name, mod)
    return trt, dev
