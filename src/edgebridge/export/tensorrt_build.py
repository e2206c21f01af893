"""ONNX -> TensorRT engine through the ``tensorrt`` Python API (TensorRT 10; 8.6 works too).

Networks are explicit-batch; the dynamic batch gets one optimisation profile (min/opt/max). FP16 is a
builder flag; INT8 uses entropy calibration on recorded observations (demonstration clouds featurised
exactly as at run time). Engines are tied to the GPU and the TensorRT version: build on the device.
The engine's metadata (``<engine>.json``) is the ONNX metadata plus an ``engine`` record.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import EdgebridgeError, require

log = logging.getLogger(__name__)

INPUTS = ("cloud", "proprio", "guidance", "noise")


class EngineBuildError(EdgebridgeError):
    """TensorRT could not parse the ONNX or build the engine."""


def calibration_batches(demo_dirs: list[Path], meta: dict, batch: int = 8, max_batches: int = 32,
                        seed: int = 0) -> list[dict]:
    """Normalised network inputs from recorded demonstrations, for INT8 calibration."""
    from ..runtime.expert.features import Normalizer, normalize_inputs
    from ..train.data import load_demos

    norm = Normalizer.from_dict(meta["normalization"])
    ds = load_demos(demo_dirs)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[: batch * max_batches]
    out = []
    for i in range(0, len(idx) - batch + 1, batch):
        j = idx[i:i + batch]
        raw = {"cloud": ds.cloud[j], "proprio": ds.proprio[j], "guidance": ds.guidance[j]}
        feeds = normalize_inputs(norm, raw)
        feeds["noise"] = rng.standard_normal((batch, int(meta["horizon"]), 10)).astype(np.float32)
        out.append(feeds)
    if not out:
        raise EngineBuildError(f"no calibration batches of {batch} from {demo_dirs} ({len(ds)} samples)")
    return out


def _make_calibrator(trt, batches: list[dict], cache: Path):
    from ..runtime.expert.cuda_mem import CudaApi, address

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # TensorRT requires the explicit base init
            self.cuda = CudaApi()
            self.batches = batches
            self.i = 0
            self.bufs = {n: self.cuda.malloc(batches[0][n].nbytes) for n in INPUTS}

        def get_batch_size(self) -> int:
            return int(self.batches[0]["noise"].shape[0])

        def get_batch(self, names):
            if self.i >= len(self.batches):
                return None
            for n in INPUTS:
                self.cuda.htod(self.bufs[n], self.batches[self.i][n])
            self.cuda.synchronize()
            self.i += 1
            return [address(self.bufs[n]) for n in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(onnx_path: Path, engine_path: Path, *, fp16: bool = True, int8: bool = False,
                 calib_batches: list[dict] | None = None, workspace_mb: int = 1024,
                 batch: tuple[int, int, int] = (1, 1, 8)) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path`` (+ ``.json`` metadata).

    ``batch`` = (min, opt, max) of the optimisation profile for the dynamic batch dimension."""
    trt = require("tensorrt", "jetson", "building a TensorRT engine")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # TensorRT 8.x: explicit batch must be requested
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10
            log.warning("this GPU has no fast FP16; building with FP16 allowed anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    bmin, bopt, bmax = batch
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = inp.shape
        rest = tuple(int(dims[j]) for j in range(1, len(dims)))
        if any(d < 0 for d in rest):
            raise EngineBuildError(f"{onnx_path}: input {inp.name!r} has dynamic non-batch dims {tuple(dims)}")
        profile.set_shape(inp.name, (bmin, *rest), (bopt, *rest), (bmax, *rest))
    config.add_optimization_profile(profile)
    if int8:
        if not calib_batches:
            raise EngineBuildError("INT8 needs calibration batches (calibration_batches(demo_dirs, meta))")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, calib_batches, engine_path.with_suffix(".calib"))
        config.set_calibration_profile(profile)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: build_serialized_network returned nothing (see the TensorRT log)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    meta["engine"] = {"file": engine_path.name, "onnx": onnx_path.name, "tensorrt": trt.__version__,
                      "fp16": fp16, "int8": int8, "batch_profile": list(batch), "workspace_mb": workspace_mb,
                      "build_s": round(time.monotonic() - t0, 1)}
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("built TensorRT engine %s in %.1f s (fp16=%s int8=%s)", engine_path, time.monotonic() - t0, fp16, int8)
    return engine_path
