"""The TensorRT build and backend code on stand-ins for tensorrt and the CUDA bindings (fake_tensorrt.py).

These run everywhere: engine build (profile, flags, INT8 calibration through device buffers), the
backend's tensor binding and copies, and every error it raises. TensorRT's own numerics are tested
only on a GPU (test_tensorrt.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgebridge.errors import ExpertError, MissingExtraError

import fake_tensorrt
from observations import observation


@pytest.fixture
def fake(monkeypatch):
    return fake_tensorrt.install(monkeypatch)


def _engine(tiny_onnx, tmp_path, **kw):
    from edgebridge.export.tensorrt_build import build_engine

    return build_engine(tiny_onnx, tmp_path / "expert.engine", **kw)


def _feeds(expert, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in expert.input_shapes(batch).items()}


@pytest.mark.parametrize("cuda", ["cuda-python", "pycuda"])
def test_engine_from_build_engine_acts_like_onnx_runtime(tiny_onnx, tmp_path, monkeypatch, cuda):
    trt, dev = fake_tensorrt.install(monkeypatch, cuda=cuda)
    from edgebridge.runtime.expert import ExpertBackendConfig, OnnxExpert
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = _engine(tiny_onnx, tmp_path, fp16=True, batch=(1, 2, 4))
    meta = json.loads(engine.with_suffix(".json").read_text())
    assert meta["engine"]["fp16"] is True and meta["engine"]["batch_profile"] == [1, 2, 4]
    assert meta["horizon"] == json.loads(tiny_onnx.with_suffix(".json").read_text())["horizon"]
    cloud, state, guidance, _ = observation()
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), seed=1)) as ref, \
            TensorRTExpert(ExpertBackendConfig(str(engine), seed=1), max_batch=4) as trt_ex:
        a, b = ref.act(cloud, state, guidance), trt_ex.act(cloud, state, guidance)
        np.testing.assert_array_equal(a.poses, b.poses)
        assert b.start_ns == a.start_ns and b.dt == a.dt
        feeds = _feeds(trt_ex, 3)  # a batch below max_batch uses the front of each buffer
        np.testing.assert_allclose(trt_ex.run(feeds), ref.run(feeds), atol=1e-6)
        assert len(dev.blocks) == 5  # four inputs + the output, allocated once
    assert dev.blocks == {}  # close() freed every buffer
    if cuda == "cuda-python":
        assert dev.streams == set()


def test_int8_build_feeds_every_calibration_batch_through_device_buffers(tiny_onnx, tmp_path, fake, demo_dir):
    from edgebridge.export.tensorrt_build import calibration_batches

    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    batches = calibration_batches([demo_dir], meta, batch=4, max_batches=3)
    engine = _engine(tiny_onnx, tmp_path, fp16=True, int8=True, calib_batches=batches)
    head = json.loads(engine.read_bytes()[len(fake_tensorrt.MAGIC):].split(b"\n", 1)[0])
    assert head["calibration_batches"] == len(batches) == 3
    assert sorted(head["flags"]) == ["FP16", "INT8"]
    assert json.loads(engine.with_suffix(".calib").read_text()) == {"batches": 3}
    assert json.loads(engine.with_suffix(".json").read_text())["engine"]["int8"] is True


def test_build_errors_are_named(tiny_onnx, tmp_path, fake):
    from edgebridge.export.tensorrt_build import EngineBuildError, build_engine

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    bad.with_suffix(".json").write_text(tiny_onnx.with_suffix(".json").read_text())
    with pytest.raises(EngineBuildError, match="ONNX parser failed"):
        build_engine(bad, tmp_path / "bad.engine")
    with pytest.raises(EngineBuildError, match="INT8 needs calibration batches"):
        _engine(tiny_onnx, tmp_path, int8=True)


def test_missing_or_foreign_engine_is_an_expert_error(tiny_onnx, tmp_path, fake):
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    meta = str(tiny_onnx.with_suffix(".json"))
    with pytest.raises(ExpertError, match="TensorRT engine not found; build it on this device"):
        TensorRTExpert(ExpertBackendConfig(str(tmp_path / "none.engine"), metadata=meta))
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(b"an engine from another TensorRT")
    with pytest.raises(ExpertError, match="could not deserialize the engine.*rebuild it on this device"):
        TensorRTExpert(ExpertBackendConfig(str(foreign), metadata=meta))


@pytest.mark.parametrize("option, value, message", [
    ("rename", {"cloud": "points"}, r"engine I/O .*points.* does not match"),
    ("io_dtype", "HALF", r"engine tensor .* is float16; build it with float32 I/O"),
])
def test_engine_that_does_not_fit_the_expert_is_refused_and_nothing_leaks(tiny_onnx, tmp_path, fake, option,
                                                                           value, message):
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    trt, dev = fake
    engine = _engine(tiny_onnx, tmp_path)
    trt.options[option] = getattr(trt.DataType, value) if option == "io_dtype" else value
    with pytest.raises(ExpertError, match=message):
        TensorRTExpert(ExpertBackendConfig(str(engine)))
    assert dev.blocks == {} and dev.streams == set()


def test_failed_device_allocation_names_the_cuda_call(tiny_onnx, tmp_path, fake):
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    trt, dev = fake
    engine = _engine(tiny_onnx, tmp_path)
    dev.fail = "cudaMalloc"
    with pytest.raises(ExpertError, match=r"CUDA cudaMalloc\(\d+\) failed"):
        TensorRTExpert(ExpertBackendConfig(str(engine)))
    assert dev.streams == set()


def test_run_time_failures_are_expert_errors(tiny_onnx, tmp_path, fake):
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    trt, dev = fake
    engine = _engine(tiny_onnx, tmp_path, batch=(1, 1, 2))
    cloud, state, guidance, _ = observation()
    with TensorRTExpert(ExpertBackendConfig(str(engine)), max_batch=4) as ex:
        with pytest.raises(ExpertError, match="batch 5 > max_batch 4"):
            ex.run(_feeds(ex, 5))
        with pytest.raises(ExpertError, match="outside the engine's optimisation profile"):
            ex.run(_feeds(ex, 3))  # the buffers take 4, the engine's profile only 2
        trt.options["poison"] = True
        with pytest.raises(ExpertError, match=r"non-finite value\(s\).*chunk rejected"):
            ex.act(cloud, state, guidance)
        trt.options["poison"], trt.options["execute_ok"] = False, False
        with pytest.raises(ExpertError, match="execute_async_v3 failed"):
            ex.act(cloud, state, guidance)
        trt.options["execute_ok"] = True
        bad = _feeds(ex, 1)
        bad["cloud"][0, 0, 0] = np.nan
        with pytest.raises(ExpertError, match="input 'cloud' holds non-finite values"):
            ex.run(bad)
        assert ex.act(cloud, state, guidance).poses.shape[1] == 8  # still usable after each refusal
    with pytest.raises(ExpertError, match="is closed"):
        ex.act(cloud, state, guidance)
    assert dev.blocks == {} and dev.streams == set()


def test_no_cuda_bindings_names_the_jetson_extra(tiny_onnx, tmp_path, monkeypatch):
    fake_tensorrt.install(monkeypatch, cuda="none")
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = _engine(tiny_onnx, tmp_path)
    with pytest.raises(MissingExtraError, match=r"cuda-python .* or pycuda.*edgebridge\[jetson\]"):
        TensorRTExpert(ExpertBackendConfig(str(engine)))


def test_robot_config_with_backend_trt_makes_the_tensorrt_expert(tiny_onnx, tmp_path, fake):
    from edgebridge.config import ConfigError
    from edgebridge.runtime.config import load_robot_config, with_overrides
    from edgebridge.runtime.devices import make_expert

    cfg, notes = load_robot_config("sim_panda"), []
    with pytest.raises(ConfigError, match=r"set expert.model to the \.engine file"):
        make_expert(with_overrides(cfg, expert={"backend": "trt", "model": ""}), "trt", notes)
    engine = _engine(tiny_onnx, tmp_path)
    ex = make_expert(with_overrides(cfg, expert={"backend": "trt", "model": str(engine), "options": {"seed": 2}}),
                     "trt", notes)
    try:
        assert type(ex).__name__ == "TensorRTExpert" and ex.config.seed == 2
        assert notes == [f"expert: TensorRT engine {engine}"]
        cloud, state, guidance, _ = observation()
        assert np.all(np.isfinite(ex.act(cloud, state, guidance).poses))
    finally:
        ex.close()


def test_edge_export_expert_trt_writes_an_engine_next_to_the_onnx(tiny_run, tmp_path, fake, capsys):
    from edgebridge.export.cli import main
    from edgebridge.runtime.expert import ExpertBackendConfig
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert

    engine = tmp_path / "trt" / "expert.engine"
    assert main(["expert", "--run", str(tiny_run), "--out", str(tmp_path), "--k", "2", "--trt", str(engine)]) == 0
    assert f"wrote TensorRT engine {engine}" in capsys.readouterr().out
    meta = json.loads(engine.with_suffix(".json").read_text())
    assert meta["engine"]["onnx"] == "expert.onnx" and meta["engine"]["tensorrt"] == "10.3.0"
    with TensorRTExpert(ExpertBackendConfig(str(engine))) as ex:
        assert ex.k == 2
