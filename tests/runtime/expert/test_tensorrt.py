"""TensorRT engine build and backend: run only where tensorrt and an NVIDIA GPU are present."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.errors import MissingExtraError

from observations import observation


def _need_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # the registry stub raises more than ImportError
        pytest.skip(f"TensorRT is not usable here ({type(e).__name__}: {e}); it needs an NVIDIA GPU and "
                    "NVIDIA's TensorRT bindings (Jetson: python3-libnvinfer)")


def test_missing_tensorrt_names_the_extra(tiny_onnx, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is importable here; the missing-extra path cannot be exercised")
    except ImportError:
        pass
    from edgebridge.export.tensorrt_build import build_engine
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert
    from edgebridge.runtime.expert import ExpertBackendConfig

    with pytest.raises(MissingExtraError, match=r"edgebridge\[jetson\]"):
        build_engine(tiny_onnx, tmp_path / "e.engine")
    with pytest.raises(MissingExtraError, match=r"edgebridge\[jetson\]"):
        TensorRTExpert(ExpertBackendConfig(str(tmp_path / "e.engine"), metadata=str(tiny_onnx.with_suffix(".json"))))


@pytest.mark.gpu
def test_engine_matches_onnx_runtime(tiny_onnx, tmp_path, demo_dir):
    _need_tensorrt()
    from edgebridge.export.tensorrt_build import build_engine, calibration_batches
    from edgebridge.runtime.expert import ExpertBackendConfig, OnnxExpert
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = build_engine(tiny_onnx, tmp_path / "expert.engine", fp16=False)
    cloud, state, guidance, _ = observation()
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), seed=1)) as ref, TensorRTExpert(ExpertBackendConfig(str(engine), seed=1)) as trt:
        a, b = ref.act(cloud, state, guidance), trt.act(cloud, state, guidance)
        assert np.max(np.abs(a.poses[:, :3] - b.poses[:, :3])) < 1e-3
    import json
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    int8 = build_engine(tiny_onnx, tmp_path / "expert_int8.engine", fp16=True, int8=True,
                        calib_batches=calibration_batches([demo_dir], meta, batch=4, max_batches=4))
    with TensorRTExpert(ExpertBackendConfig(str(int8))) as trt8:
        assert trt8.act(cloud, state, guidance).poses.shape == (16, 8)


# ------------------------------------------------------------------------------------------------------------
# Build records and refusals, on the stand-ins of fake_tensorrt.py (they run everywhere). The shipped expert ONNX
# is the model: no torch needed.

import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import fake_tensorrt  # noqa: E402

from edgebridge.errors import ExpertError  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[3] / "src" / "edgebridge" / "assets" / "expert" / "expert.onnx"


@pytest.fixture
def shipped_onnx(tmp_path):
    dst = tmp_path / "onnx" / "expert.onnx"
    dst.parent.mkdir()
    shutil.copy(SHIPPED, dst)
    shutil.copy(SHIPPED.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _properties(monkeypatch, gpu: str, sm: tuple[int, int]) -> None:
    """Give the fake cudart a cudaGetDeviceProperties answering ``gpu`` / ``sm``."""
    import sys
    import types

    cudart = sys.modules["cuda.bindings.runtime"]
    prop = types.SimpleNamespace(name=gpu.encode(), major=sm[0], minor=sm[1])
    monkeypatch.setattr(cudart, "cudaGetDeviceProperties", lambda i: (cudart.cudaError_t.cudaSuccess, prop),
                        raising=False)


def test_python_builder_records_device_flags_shapes_and_a_timing_cache(shipped_onnx, tmp_path, monkeypatch):
    trt, dev = fake_tensorrt.install(monkeypatch)
    _properties(monkeypatch, "Orin", (8, 7))
    cfg_cls = type(trt.Builder(None).create_builder_config())
    made = {}

    class Cache:
        def __init__(self, blob):
            made["read"] = bytes(blob)

        def serialize(self):
            return b"timings"

    monkeypatch.setattr(cfg_cls, "create_timing_cache", lambda self, blob: Cache(blob), raising=False)
    monkeypatch.setattr(cfg_cls, "set_timing_cache", lambda self, c, ignore_mismatch: made.update(set=c), raising=False)
    monkeypatch.setattr(cfg_cls, "get_timing_cache", lambda self: made["set"], raising=False)
    from edgebridge.export.tensorrt_build import build_engine

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    engine = build_engine(shipped_onnx, tmp_path / "e" / "expert.engine", batch=(1, 1, 2), timing_cache=cache)
    rec = json.loads(engine.with_suffix(".json").read_text())["engine"]
    assert rec["builder"] == "python" and rec["tensorrt"] == "10.3.0" and rec["fp16"] is True
    assert rec["device"] == {"tensorrt": "10.3.0", "gpu": "Orin", "sm": "8.7"}
    assert rec["shapes"]["cloud"] == [2, 512, 3] and rec["timing_cache"] == "timing.cache"
    assert made["read"] == b"old" and cache.read_bytes() == b"timings"  # read, then written back
    assert len(rec["onnx_sha256"]) == 64


@pytest.mark.parametrize("field, built, message", [
    ("tensorrt", {"tensorrt": "8.6.1"}, r"TensorRT 8\.6\.1 \(engine\) vs 10\.3\.0 \(here\)"),
    ("sm", {"sm": "9.0", "gpu": "NVIDIA H200"}, r"compute capability 9\.0 \(engine\) vs 8\.7 \(here\).*GPU NVIDIA H200"),
])
def test_an_engine_built_elsewhere_is_refused_before_it_is_loaded(shipped_onnx, tmp_path, monkeypatch, field, built,
                                                                   message):
    trt, dev = fake_tensorrt.install(monkeypatch)
    _properties(monkeypatch, "Orin", (8, 7))
    from edgebridge.export.tensorrt_build import build_engine
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = build_engine(shipped_onnx, tmp_path / "expert.engine")
    meta = json.loads(engine.with_suffix(".json").read_text())
    meta["engine"]["device"].update(built)
    if field == "tensorrt":
        meta["engine"]["tensorrt"] = built["tensorrt"]
    engine.with_suffix(".json").write_text(json.dumps(meta))
    loads = []
    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", lambda self, blob: loads.append(1))
    with pytest.raises(ExpertError, match=message) as e:
        TensorRTExpert(ExpertBackendConfig(str(engine)))
    assert "rebuild it here with edge-export engine" in str(e.value)
    assert loads == [] and dev.blocks == {} and dev.streams == set()  # refused before anything was loaded


def test_an_engine_without_a_build_record_loads_with_a_warning(shipped_onnx, tmp_path, monkeypatch, caplog):
    fake_tensorrt.install(monkeypatch)
    from edgebridge.export.tensorrt_build import build_engine
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = build_engine(shipped_onnx, tmp_path / "expert.engine")
    meta = json.loads(engine.with_suffix(".json").read_text())
    del meta["engine"]
    engine.with_suffix(".json").write_text(json.dumps(meta))
    with TensorRTExpert(ExpertBackendConfig(str(engine))) as ex:
        assert ex.k == 10
    assert "does not say where it was built" in caplog.text


def test_engine_mismatch_compares_only_what_both_sides_know():
    from edgebridge.runtime.expert.tensorrt import engine_mismatch

    assert engine_mismatch({"tensorrt": "10.3.0", "sm": "8.7", "gpu": "Orin"}, {"tensorrt": "10.3.0", "sm": "8.7"}) == []
    assert engine_mismatch({"tensorrt": "10.3.0"}, {"tensorrt": "10.3.1"}) == ["TensorRT 10.3.0 (engine) vs 10.3.1 (here)"]
    assert engine_mismatch({}, {"tensorrt": "8.6.2", "gpu": "Orin"}) == []


def test_parity_check_records_the_error_and_refuses_above_the_tolerance(shipped_onnx, tmp_path, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    from edgebridge.export.tensorrt_build import EngineBuildError, build_engine, parity_check, record_parity_inputs

    inputs = record_parity_inputs(shipped_onnx, tmp_path / "parity.npz", n=3)
    engine = build_engine(shipped_onnx, tmp_path / "expert.engine", fp16=False)
    rep = parity_check(engine, shipped_onnx, inputs)
    assert rep["samples"] == 3 and rep["precision"] == "fp32" and rep["tol"] == 1e-3
    assert rep["max_abs_err"] < 1e-5 and rep["max_abs_err_vs_recorded"] < 1e-5 and rep["passed"]
    assert json.loads(engine.with_suffix(".json").read_text())["engine"]["parity"]["samples"] == 3
    with pytest.raises(EngineBuildError, match=r"differs from ONNX Runtime by .* on 3 recorded inputs; rebuild"):
        parity_check(engine, shipped_onnx, inputs, tol=-1.0)


def test_edge_export_engine_builds_and_checks_parity(shipped_onnx, tmp_path, monkeypatch, capsys):
    fake_tensorrt.install(monkeypatch)
    from edgebridge.export.cli import main
    from edgebridge.export.tensorrt_build import record_parity_inputs

    inputs = record_parity_inputs(shipped_onnx, tmp_path / "parity.npz", n=2)
    out = tmp_path / "engines" / "expert.engine"
    assert main(["engine", str(shipped_onnx), "--out", str(out), "--parity", str(inputs)]) == 0
    text = capsys.readouterr().out
    assert "(python builder)" in text and "parity vs ONNX Runtime on 2 recorded inputs" in text
    assert json.loads(out.with_suffix(".json").read_text())["engine"]["parity"]["passed"] is True
    assert main(["engine", str(tmp_path / "none.onnx"), "--out", str(out)]) == 1


def test_benchmark_backend_trt_reports_chunk_latency(shipped_onnx, tmp_path, monkeypatch, capsys):
    fake_tensorrt.install(monkeypatch)
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "expert.py"
    spec = importlib.util.spec_from_file_location("bench_expert_trt", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "trt.json"
    assert bench.main(["--backend", "trt", "--onnx", str(shipped_onnx), "--repeats", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["chunk_ms_trt"] > 0 and res["chunk_ms_ort"] > 0 and res["act_ms_trt"] > 0
    assert res["max_abs_diff_trt_vs_ort"] < 1e-5 and res["engine_tensorrt"] == "10.3.0"
    assert res["power"] == "not a Jetson (no power mode)" and "tensorrt 10.3.0" in res["device"]
    assert "TensorRT engine vs ONNX Runtime" in capsys.readouterr().out


def test_benchmark_backend_trt_without_tensorrt_says_where_to_run_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "expert.py"
    spec = importlib.util.spec_from_file_location("bench_expert_trt2", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--backend", "trt"]) == 2
    assert "TensorRT is not usable here" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_device_engine_build_record_and_parity(shipped_onnx, tmp_path, builder):
    """On the Orin (or any NVIDIA GPU with TensorRT): both builders, the build record and FP16 parity."""
    _need_tensorrt()
    from edgebridge.export.tensorrt_build import build, find_trtexec, parity_check, record_parity_inputs
    from edgebridge.runtime.expert.tensorrt import current_device, engine_mismatch

    if builder == "trtexec" and find_trtexec() is None:
        pytest.skip("trtexec not found (JetPack: /usr/src/tensorrt/bin/trtexec)")
    engine, used = build(shipped_onnx, tmp_path / "expert.engine", builder=builder, timing_cache=tmp_path / "t.cache")
    rec = json.loads(engine.with_suffix(".json").read_text())["engine"]
    assert used == builder and (tmp_path / "t.cache").stat().st_size > 0
    assert engine_mismatch(rec["device"], current_device()) == []
    rep = parity_check(engine, shipped_onnx, record_parity_inputs(shipped_onnx, tmp_path / "p.npz", n=4))
    assert rep["passed"] and rep["max_abs_err"] < 5e-2
