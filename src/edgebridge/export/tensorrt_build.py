"""ONNX -> TensorRT engine on the device: ``trtexec`` or the ``tensorrt`` Python builder (TensorRT 8.6 and 10.x).

Both builders make the same engine: explicit shapes (the dynamic batch gets one optimisation profile,
min/opt/max), FP16 unless told otherwise, a workspace memory-pool limit, and a persisted timing cache so
a rebuild on the same device skips the tactic timing. INT8 (Python builder only) uses entropy calibration
on recorded observations (demonstration clouds featurised exactly as at run time).

Engines are tied to the GPU and the TensorRT version: build on the device. The engine's metadata
(``<engine>.json``) is the ONNX metadata plus an ``engine`` record: builder, flags, shapes, TensorRT
version, the device it was built on (``runtime.expert.tensorrt.current_device``), the ONNX's sha256, and,
after :func:`parity_check`, the engine's error against ONNX Runtime on recorded inputs.

trtexec flags used (the same in 8.6 and 10.x): ``--onnx --saveEngine --minShapes/--optShapes/--maxShapes
--fp16 --memPoolSize=workspace:<MiB> --timingCacheFile --skipInference``. Not used: ``--workspace`` and
``--explicitBatch`` (deprecated in 8.x, removed in 10.x).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgebridgeError, require

log = logging.getLogger(__name__)

INPUTS = ("cloud", "proprio", "guidance", "noise")
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)  # JetPack's place; PATH is searched first
MIN_TENSORRT = (8, 6)
PARITY_TOL = {"fp16": 5e-2, "fp32": 1e-3}  # max abs error of the normalised action vs ONNX Runtime


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_shapes(onnx_path: Path, meta: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Each input's shape without its batch dimension, from the metadata's ``inputs`` (or the ONNX)."""
    shapes = (meta or {}).get("inputs")
    if not shapes:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        shapes = {i.name: [d if isinstance(d, int) else -1 for d in i.shape] for i in sess.get_inputs()}
    out = {}
    for name, dims in shapes.items():
        rest = tuple(int(d) for d in dims[1:])
        if any(d < 0 for d in rest):
            raise EngineBuildError(f"{onnx_path}: input {name!r} has dynamic non-batch dims {tuple(dims)}; "
                                   "re-export it with static shapes (edge-export expert)")
        out[name] = rest
    return out


def _record(meta: dict, *, builder: str, onnx_path: Path, engine_path: Path, tensorrt: str, fp16: bool, int8: bool,
            batch: tuple[int, int, int], workspace_mb: int, timing_cache: Path | None, build_s: float,
            flags: list[str], device: dict) -> dict:
    return {"file": engine_path.name, "onnx": onnx_path.name, "onnx_sha256": _sha256(onnx_path),
            "builder": builder, "tensorrt": tensorrt, "fp16": fp16, "int8": int8, "batch_profile": list(batch),
            "shapes": {n: [batch[2], *s] for n, s in input_shapes(onnx_path, meta).items()},
            "workspace_mb": workspace_mb, "timing_cache": timing_cache.name if timing_cache else None,
            "flags": flags, "device": device, "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(build_s, 1)}


def _write_meta(meta: dict, engine_path: Path) -> None:
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def build_engine(onnx_path: Path, engine_path: Path, *, fp16: bool = True, int8: bool = False,
                 calib_batches: list[dict] | None = None, workspace_mb: int = 1024,
                 batch: tuple[int, int, int] = (1, 1, 8), timing_cache: Path | None = None) -> Path:
    """Parse ``onnx_path`` with the Python builder and write a serialized engine to ``engine_path``
    (+ ``.json`` metadata). ``batch`` = (min, opt, max) of the optimisation profile for the dynamic batch
    dimension. ``timing_cache``: read when it exists, written after the build."""
    trt = require("tensorrt", "jetson", "building a TensorRT engine")
    from ..runtime.expert.tensorrt import current_device

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
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        if hasattr(config, "create_timing_cache"):
            cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        else:  # pragma: no cover - every TensorRT >= 8.0 has it
            log.warning("this tensorrt has no timing-cache API; building without %s", timing_cache)
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
    if cache is not None:
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    build_s = time.monotonic() - t0
    used = ["FP16"] * fp16 + ["INT8"] * int8 + [f"workspace={workspace_mb}MiB"]
    meta["engine"] = _record(meta, builder="python", onnx_path=onnx_path, engine_path=engine_path,
                             tensorrt=trt.__version__, fp16=fp16, int8=int8, batch=batch, workspace_mb=workspace_mb,
                             timing_cache=timing_cache, build_s=build_s, flags=used, device=current_device(trt))
    _write_meta(meta, engine_path)
    log.info("built TensorRT engine %s in %.1f s (fp16=%s int8=%s)", engine_path, build_s, fp16, int8)
    return engine_path


# ------------------------------------------------------------------------------------------------ trtexec

def find_trtexec() -> Path | None:
    """``trtexec`` on PATH, else JetPack's ``/usr/src/tensorrt/bin/trtexec``."""
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    return next((Path(p) for p in TRTEXEC_PATHS if Path(p).is_file()), None)


def parse_trtexec_version(text: str) -> str | None:
    """``[TensorRT v100300]`` -> ``10.3.0``; ``[TensorRT v8601]`` -> ``8.6.1`` (trtexec's first line)."""
    m = re.search(r"TensorRT v(\d+)", text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 10000:  # 10.x and later: MMmmpp
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"  # 8.x: Mmpp


def _shape_arg(shapes: dict[str, tuple[int, ...]], batch: int) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in (batch, *s))}" for n, s in shapes.items())


def trtexec_command(trtexec: Path, onnx_path: Path, engine_path: Path, shapes: dict[str, tuple[int, ...]], *,
                    fp16: bool = True, workspace_mb: int = 1024, timing_cache: Path | None = None,
                    batch: tuple[int, int, int] = (1, 1, 8)) -> list[str]:
    """The trtexec command line; valid for TensorRT 8.6 and 10.x alike."""
    cmd = [str(trtexec), f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--minShapes={_shape_arg(shapes, batch[0])}", f"--optShapes={_shape_arg(shapes, batch[1])}",
           f"--maxShapes={_shape_arg(shapes, batch[2])}", f"--memPoolSize=workspace:{int(workspace_mb)}",
           "--skipInference"]
    if fp16:
        cmd.append("--fp16")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def build_engine_trtexec(onnx_path: Path, engine_path: Path, *, fp16: bool = True, workspace_mb: int = 1024,
                         batch: tuple[int, int, int] = (1, 1, 8), timing_cache: Path | None = None,
                         trtexec: Path | None = None, run: Callable = subprocess.run,
                         device: dict | None = None) -> Path:
    """Build with ``trtexec`` (JetPack's command-line builder); same engine and metadata as
    :func:`build_engine`. ``device``: the build device record (default: ``current_device()``)."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trtexec = Path(trtexec) if trtexec else find_trtexec()
    if trtexec is None:
        raise EngineBuildError("trtexec not found on PATH or at /usr/src/tensorrt/bin/trtexec; install JetPack's "
                               "TensorRT (sudo apt install tensorrt) or build with --builder python")
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    shapes = input_shapes(onnx_path, meta)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = trtexec_command(trtexec, onnx_path, engine_path, shapes, fp16=fp16, workspace_mb=workspace_mb,
                          timing_cache=timing_cache, batch=batch)
    log.info("building %s: %s", engine_path, " ".join(cmd))
    t0 = time.monotonic()
    try:
        res = run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise EngineBuildError(f"{trtexec}: could not run trtexec ({e})") from e
    text = (res.stdout or "") + (res.stderr or "")
    version = parse_trtexec_version(text)
    if res.returncode != 0 or not engine_path.is_file():
        tail = " | ".join(ln.strip() for ln in text.strip().splitlines()[-5:])
        raise EngineBuildError(f"{onnx_path}: trtexec failed (exit {res.returncode}): {tail}")
    if version is None:
        raise EngineBuildError(f"{trtexec}: no 'TensorRT vNNNN' in its output; is this NVIDIA's trtexec?")
    if tuple(int(x) for x in version.split(".")[:2]) < MIN_TENSORRT:
        raise EngineBuildError(f"{trtexec}: TensorRT {version} is too old; edgebridge needs TensorRT 8.6 "
                               "(JetPack 6.0) or 10.x (JetPack 6.1+)")
    if device is None:
        from ..runtime.expert.tensorrt import current_device

        device = current_device()
    device = {**device, "tensorrt": version}  # what built the engine, whatever the Python bindings say
    meta["engine"] = _record(meta, builder="trtexec", onnx_path=onnx_path, engine_path=engine_path, tensorrt=version,
                             fp16=fp16, int8=False, batch=batch, workspace_mb=workspace_mb, timing_cache=timing_cache,
                             build_s=time.monotonic() - t0, flags=cmd[1:], device=device)
    _write_meta(meta, engine_path)
    log.info("built TensorRT %s engine %s with trtexec", version, engine_path)
    return engine_path


def build(onnx_path: Path, engine_path: Path, builder: str = "auto", **kw) -> tuple[Path, str]:
    """Build with ``builder`` = "python", "trtexec" or "auto" (the Python builder when ``tensorrt``
    imports, else trtexec). Returns the engine path and the builder used."""
    if builder not in ("auto", "python", "trtexec"):
        raise EngineBuildError(f"builder {builder!r}: expected auto, python or trtexec")
    if builder == "auto":
        try:
            importlib.import_module("tensorrt")
            builder = "python"
        except Exception:  # the registry stub raises more than ImportError
            if find_trtexec() is None:
                raise EngineBuildError("no TensorRT here: neither the Python bindings (JetPack: sudo apt install "
                                       "python3-libnvinfer) nor trtexec (/usr/src/tensorrt/bin/trtexec); build the "
                                       "engine on the Jetson") from None
            builder = "trtexec"
    if builder == "trtexec":
        kw.pop("int8", None), kw.pop("calib_batches", None)
        return build_engine_trtexec(onnx_path, engine_path, **kw), builder
    return build_engine(onnx_path, engine_path, **kw), builder


# ------------------------------------------------------------------------------------------------ parity

def record_parity_inputs(onnx_path: Path, out: Path, n: int = 8, seed: int = 0) -> Path:
    """Write ``n`` seeded batch-1 network inputs and ONNX Runtime's outputs on them to ``out`` (.npz),
    for :func:`parity_check` on the device. The inputs are normalised network inputs (standard normal:
    the normaliser maps recorded data to about that range)."""
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    shapes = input_shapes(onnx_path, meta)
    rng = np.random.default_rng(seed)
    feeds = {name: rng.standard_normal((n, *s)).astype(np.float32) for name, s in shapes.items()}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out_name = sess.get_outputs()[0].name
    action = np.concatenate([sess.run([out_name], {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(n)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **feeds, action=action.astype(np.float32), onnx_sha256=np.array(_sha256(onnx_path)))
    return out


def parity_check(engine_path: Path, onnx_path: Path, inputs: Path, tol: float | None = None) -> dict:
    """Run the engine and ONNX Runtime (CPU) on the recorded inputs one sample at a time; record the max
    abs error in the engine's metadata (``engine.parity``) and raise :class:`EngineBuildError` above ``tol``
    (default by precision: ``PARITY_TOL``). Also compares against the outputs recorded with the inputs."""
    from ..runtime.expert.base import ExpertBackendConfig
    from ..runtime.expert.onnx import OnnxExpert
    from ..runtime.expert.tensorrt import TensorRTExpert

    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    meta = json.loads(engine_path.with_suffix(".json").read_text())
    precision = "fp16" if (meta.get("engine") or {}).get("fp16", True) else "fp32"
    tol = PARITY_TOL[precision] if tol is None else float(tol)
    data = np.load(inputs)
    n = int(data["noise"].shape[0])
    errs, errs_recorded, times = [], [], []
    with OnnxExpert(ExpertBackendConfig(str(onnx_path), providers=("CPUExecutionProvider",))) as ref, \
            TensorRTExpert(ExpertBackendConfig(str(engine_path))) as eng:
        for i in range(n):
            feeds = {k: np.ascontiguousarray(data[k][i:i + 1]) for k in INPUTS}
            t0 = time.perf_counter()
            got = eng.run(feeds)
            times.append((time.perf_counter() - t0) * 1e3)
            errs.append(float(np.max(np.abs(got - ref.run(feeds)))))
            if "action" in data:
                errs_recorded.append(float(np.max(np.abs(got - data["action"][i:i + 1]))))
    rep = {"samples": n, "inputs": Path(inputs).name, "max_abs_err": max(errs), "tol": tol, "precision": precision,
           "max_abs_err_vs_recorded": max(errs_recorded) if errs_recorded else None,
           "engine_ms_median": float(np.median(times)), "passed": max(errs) <= tol}
    meta.setdefault("engine", {})["parity"] = rep
    _write_meta(meta, engine_path)
    if not rep["passed"]:
        raise EngineBuildError(f"{engine_path}: engine differs from ONNX Runtime by {rep['max_abs_err']:.3g} "
                               f"(> {tol:g}, {precision}) on {n} recorded inputs; rebuild with --fp32 or check "
                               "the ONNX export")
    return rep
