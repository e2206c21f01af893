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
