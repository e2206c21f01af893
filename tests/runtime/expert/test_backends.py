"""Runtime backends: OnnxExpert end to end, error handling, provider choice, no torch at run time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgebridge.contracts import ActionChunk, PointCloud
from edgebridge.errors import ExpertError
from edgebridge.interfaces import ActionExpert
from edgebridge.runtime.expert import ExpertBackendConfig, OnnxExpert, choose_providers

from observations import observation


def test_act_returns_an_absolute_chunk(tiny_onnx):
    cloud, state, guidance, ep = observation()
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), seed=3)) as ex:
        assert isinstance(ex, ActionExpert)
        chunk = ex.act(cloud, state, guidance)
        assert isinstance(chunk, ActionChunk) and chunk.poses.shape == (16, 8)
        assert chunk.inference_ms > 0 and chunk.dt == pytest.approx(0.1)
        assert chunk.start_ns == state.stamp_ns  # step k for stamp + k * dt, as the demonstrations
        assert np.max(np.linalg.norm(chunk.poses[:, :3] - state.ee_pose.position, axis=1)) < 1.0
    # the initial noise is seeded: a second backend with the same seed gives the same chunk
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), seed=3)) as ex2:
        np.testing.assert_allclose(ex2.act(cloud, state, guidance).poses, chunk.poses, atol=1e-6)


def test_wrong_shapes_and_types_are_rejected(tiny_onnx):
    cloud, state, guidance, _ = observation()
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx))) as ex:
        feeds = ex.features(cloud, state, guidance)
        feeds["noise"] = np.zeros((1, 16, 10), np.float32)
        assert ex.run(feeds).shape == (1, 16, 10)
        bad = dict(feeds, cloud=np.zeros((1, 100, 3), np.float32))
        with pytest.raises(ExpertError, match=r"'cloud' has shape \(1, 100, 3\), expected \(1, 512, 3\)"):
            ex.run(bad)
        with pytest.raises(ExpertError, match="dtype float64"):
            ex.run(dict(feeds, proprio=feeds["proprio"].astype(np.float64)))
        with pytest.raises(ExpertError, match="missing network inputs"):
            ex.run({k: v for k, v in feeds.items() if k != "guidance"})
        with pytest.raises(ExpertError, match="must be a PointCloud"):
            ex.act(np.zeros((512, 3)), state, guidance)
        with pytest.raises(ExpertError, match="frame 'cam'"):
            ex.act(PointCloud(cloud.xyz, frame="cam"), state, guidance)
        with pytest.raises(ExpertError, match="no valid points"):
            ex.act(PointCloud(cloud.xyz, n_valid=0), state, guidance)
    with pytest.raises(ExpertError, match="closed"):
        ex.run(feeds)


def _nan_model(path, meta_src):
    """An ONNX graph with the expert's I/O whose output is noise * NaN."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", *s])
           for n, s in (("cloud", [512, 3]), ("proprio", [10]), ("guidance", [17, 10]), ("noise", [16, 10]))]
    out = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", 16, 10])
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
    graph = helper.make_graph([helper.make_node("Mul", ["noise", "nan"], ["action"])], "nan", ins, [out], [nan])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    shutil.copy(meta_src, path.with_suffix(".json"))
    return path


def test_nan_output_is_an_expert_error(tiny_onnx, tmp_path):
    pytest.importorskip("onnx")
    path = _nan_model(tmp_path / "nan.onnx", tiny_onnx.with_suffix(".json"))
    cloud, state, guidance, _ = observation()
    with OnnxExpert(ExpertBackendConfig(str(path))) as ex:
        with pytest.raises(ExpertError, match="non-finite"):
            ex.act(cloud, state, guidance)


def test_implausible_chunk_is_rejected(tiny_onnx):
    cloud, state, guidance, _ = observation()
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), max_offset_m=1e-4)) as ex:
        with pytest.raises(ExpertError, match="max_offset_m"):
            ex.act(cloud, state, guidance)


def test_missing_or_bad_metadata(tiny_onnx, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(tiny_onnx, lone)
    with pytest.raises(ExpertError, match="metadata not found"):
        OnnxExpert(ExpertBackendConfig(str(lone)))
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    meta["n_points"] = 256
    lone.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ExpertError, match="metadata says"):
        OnnxExpert(ExpertBackendConfig(str(lone)))
    del meta["normalization"]
    lone.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ExpertError, match="normalization"):
        OnnxExpert(ExpertBackendConfig(str(lone)))
    with pytest.raises(ExpertError, match="not found"):
        OnnxExpert(ExpertBackendConfig(str(tmp_path / "absent.onnx"), metadata=str(tiny_onnx.with_suffix(".json"))))


def test_provider_preference():
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]) == \
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ExpertError, match="not available"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_config_validation():
    with pytest.raises(ValueError, match="threads"):
        ExpertBackendConfig("m.onnx", threads=0)
    with pytest.raises(ValueError, match="providers"):
        ExpertBackendConfig("m.onnx", providers=())


def test_runtime_expert_does_not_import_torch():
    code = ("import sys, edgebridge.runtime.expert as e, edgebridge.runtime.expert.tensorrt; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _constant_model(path, meta_src, value):
    """An ONNX graph with the expert's I/O whose output is ``value`` (16, 10) whatever the input."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", *s])
           for n, s in (("cloud", [512, 3]), ("proprio", [10]), ("guidance", [17, 10]), ("noise", [16, 10]))]
    out = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", 16, 10])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    c = helper.make_tensor("c", TensorProto.FLOAT, [16, 10], np.asarray(value, np.float32).ravel().tolist())
    nodes = [helper.make_node("Mul", ["noise", "zero"], ["z"]), helper.make_node("Add", ["z", "c"], ["action"])]
    graph = helper.make_graph(nodes, "const", ins, [out], [zero, c])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    shutil.copy(meta_src, path.with_suffix(".json"))
    return path


def test_zero_correction_reproduces_the_ik_expert(tiny_onnx, tmp_path):
    pytest.importorskip("onnx")
    from edgebridge.runtime.ik_expert import IKExpert

    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    assert meta["output"] == "guidance_residual"
    norm = meta["normalization"]["action"]
    zero = -np.asarray(norm["mean"]) / np.asarray(norm["std"])  # normalised "no correction"
    path = _constant_model(tmp_path / "zero.onnx", tiny_onnx.with_suffix(".json"), np.tile(zero, (16, 1)))
    with OnnxExpert(ExpertBackendConfig(str(path))) as ex:
        for step in (0, 5, 20):
            cloud, state, guidance, _ = observation(step=step)
            ik = IKExpert().act(cloud, state, guidance)
            chunk = ex.act(cloud, state, guidance)
            assert chunk.start_ns == ik.start_ns and chunk.dt == pytest.approx(ik.dt)
            np.testing.assert_allclose(chunk.poses, ik.poses, atol=1e-5)
    # a large constant correction is bounded by the metadata's correction limit
    big = zero.copy()
    big[0] += 1.0 / norm["std"][0]  # +1 m in x
    path = _constant_model(tmp_path / "big.onnx", tiny_onnx.with_suffix(".json"), np.tile(big, (16, 1)))
    with OnnxExpert(ExpertBackendConfig(str(path))) as ex:
        cloud, state, guidance, _ = observation(step=5)
        d = ex.act(cloud, state, guidance).poses[:, :3] - IKExpert().act(cloud, state, guidance).poses[:, :3]
        np.testing.assert_allclose(d, np.tile([meta["correction_limit"]["position_m"], 0, 0], (16, 1)), atol=1e-5)
        assert ex.last_correction_m == pytest.approx(1.0, rel=1e-4) and ex.last_trust == 1.0
        assert ex.correction_summary() == "1 chunks, largest correction asked 1000 mm (bound 20 mm)"


def test_a_correction_far_beyond_the_bound_is_faded_out_when_the_metadata_asks(tiny_onnx, tmp_path):
    pytest.importorskip("onnx")
    from edgebridge.runtime.ik_expert import IKExpert

    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    assert meta["correction_limit"] == {"position_m": 0.02, "rotation_rad": 0.1, "distrust_from_m": None,
                                        "distrust_full_m": None}  # what export writes: off
    meta["correction_limit"].update(distrust_from_m=0.045, distrust_full_m=0.065)
    src = tmp_path / "meta.json"
    src.write_text(json.dumps(meta))
    norm = meta["normalization"]["action"]
    zero = -np.asarray(norm["mean"]) / np.asarray(norm["std"])
    # clipped to the bound below 45 mm; weighted 0.25 at 60 mm (15 mm, inside the bound); ignored from 65 mm
    for request_m, applied_m, trust in ((0.03, 0.02, 1.0), (0.06, 0.015, 0.25), (1.0, 0.0, 0.0)):
        big = zero.copy()
        big[1] += request_m / norm["std"][1]  # in y
        path = _constant_model(tmp_path / "big.onnx", src, np.tile(big, (16, 1)))
        with OnnxExpert(ExpertBackendConfig(str(path))) as ex:
            cloud, state, guidance, _ = observation(step=5)
            d = ex.act(cloud, state, guidance).poses[:, :3] - IKExpert().act(cloud, state, guidance).poses[:, :3]
            np.testing.assert_allclose(d, np.tile([0, applied_m, 0], (16, 1)), atol=1e-5)
            assert ex.last_correction_m == pytest.approx(request_m, rel=1e-4)
            assert ex.last_trust == pytest.approx(trust, abs=1e-4)
            assert ex.distrusted_chunks == (trust < 1)
            assert ex.correction_summary().endswith(f"{int(trust < 1)} faded out (asked >= 45 mm)")


def test_noise_scale_zero_is_deterministic_and_validated(tiny_onnx):
    cloud, state, guidance, _ = observation()
    chunks = []
    for seed, scale in ((1, 0.0), (2, 0.0), (1, 1.0), (2, 1.0)):
        with OnnxExpert(ExpertBackendConfig(str(tiny_onnx), seed=seed, noise_scale=scale)) as ex:
            chunks.append(ex.act(cloud, state, guidance).poses)
    np.testing.assert_array_equal(chunks[0], chunks[1])  # default: DDIM from zero noise, seed irrelevant
    assert not np.allclose(chunks[2], chunks[3])  # sampled noise: the seed matters
    assert ExpertBackendConfig(str(tiny_onnx)).noise_scale == 0.0
    with pytest.raises(ValueError, match="noise_scale"):
        ExpertBackendConfig(str(tiny_onnx), noise_scale=2.0)


def test_cloud_box_follows_the_metadata_roi(tiny_onnx, tmp_path):
    from edgebridge.runtime.expert.features import goal_position

    cloud, state, guidance, _ = observation(step=5)
    with OnnxExpert(ExpertBackendConfig(str(tiny_onnx))) as ex:
        no_roi = json.loads(tiny_onnx.with_suffix(".json").read_text()).get("cloud_roi") is None
        assert (ex.cloud_box(state, guidance) is None) == no_roi
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    meta["cloud_roi"] = {"half_xy_m": 0.1, "below_m": 0.05, "above_m": 0.1}
    model = tmp_path / "roi.onnx"
    shutil.copy(tiny_onnx, model)
    model.with_suffix(".json").write_text(json.dumps(meta))
    with OnnxExpert(ExpertBackendConfig(str(model))) as ex:
        box = ex.cloud_box(state, guidance)
        goal = goal_position(guidance, (state.stamp_ns - guidance.stamp_ns) * 1e-9)
        np.testing.assert_allclose(box.center, goal + [0.0, 0.0, 0.025], atol=1e-9)
        np.testing.assert_allclose(box.half_extents, [0.1, 0.1, 0.075], atol=1e-9)
    meta["cloud_roi"] = {"half_xy_m": -1}
    model.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ExpertError, match="cloud_roi"):
        OnnxExpert(ExpertBackendConfig(str(model)))


def test_trained_tasks_come_from_the_metadata_and_outside_tasks_are_warned(tiny_onnx, tmp_path, caplog):
    from edgebridge.runtime.devices import warn_untrained_task

    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    meta["data"] = {**(meta.get("data") or {}), "tasks": ["put_cup_in_tray"]}
    model = tmp_path / "tasks.onnx"
    shutil.copy(tiny_onnx, model)
    model.with_suffix(".json").write_text(json.dumps(meta))
    with OnnxExpert(ExpertBackendConfig(str(model))) as ex:
        assert ex.trained_tasks == ("put_cup_in_tray",)
        with caplog.at_level("WARNING", logger="edgebridge.runtime.devices"):
            assert warn_untrained_task(ex, "put_cup_in_tray") is None
            assert not caplog.records
            assert "stack_red_on_blue is outside" in warn_untrained_task(ex, "stack_red_on_blue")
            warn_untrained_task(ex, "stack_red_on_blue")  # logged once per expert and task
        assert len(caplog.records) == 1 and "stack_red_on_blue is outside" in caplog.text
    del meta["data"]["tasks"]
    model.with_suffix(".json").write_text(json.dumps(meta))
    with OnnxExpert(ExpertBackendConfig(str(model))) as ex:
        assert ex.trained_tasks is None
