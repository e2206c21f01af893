"""ONNX Runtime action-expert backend: one graph with the K DDIM steps unrolled, one call per chunk."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import ExpertError
from .base import INPUT_NAMES, ExpertBackend, ExpertBackendConfig

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], requested: str | tuple | list = "auto") -> list[str]:
    """Providers to use, best first: TensorRT EP > CUDA EP > CPU EP among ``available`` ("auto"), or the
    requested ones (each must be available)."""
    if requested == "auto":
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
        if not chosen:
            raise ExpertError(f"onnxruntime offers none of {PROVIDER_PREFERENCE} (available: {available})")
        return chosen
    missing = [p for p in requested if p not in available]
    if missing:
        raise ExpertError(f"requested ONNX Runtime providers {missing} are not available here "
                          f"(available: {available}); install onnxruntime-gpu ('jetson' extra) or use 'auto'")
    return list(requested)


class OnnxExpert(ExpertBackend):
    """:class:`ActionExpert` on ONNX Runtime. Reads ``<model>.json`` for sizes, K and normalisation."""

    name = "OnnxExpert"

    def __init__(self, config: ExpertBackendConfig) -> None:
        super().__init__(config)
        import onnxruntime as ort  # a base dependency; imported here to keep module import cheap

        path = Path(config.model)
        if not path.is_file():
            raise ExpertError(f"{path}: ONNX model not found; run `make weights` or `edge-export expert`")
        self.providers = choose_providers(ort.get_available_providers(), config.providers)
        so = ort.SessionOptions()
        so.intra_op_num_threads = config.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts = []
        for p in self.providers:
            if p == "TensorrtExecutionProvider":
                cache = config.trt_cache_dir or str(path.parent / "trt_cache")
                opts.append({"trt_fp16_enable": bool(config.trt_fp16), "trt_engine_cache_enable": True,
                             "trt_engine_cache_path": cache})
            else:
                opts.append({})
        try:
            self.session = ort.InferenceSession(str(path), so, providers=self.providers, provider_options=opts)
        except Exception as e:
            raise ExpertError(f"{path}: ONNX Runtime could not load the model ({e}); re-export it with "
                              "`edge-export expert`") from e
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES):
            raise ExpertError(f"{path}: graph inputs {names} do not match the expert's {list(INPUT_NAMES)}")
        for i in self.session.get_inputs():
            want = self.input_shapes(1)[i.name][1:]
            got = tuple(i.shape[1:])
            if got != want:
                raise ExpertError(f"{path}: input {i.name!r} has shape {i.shape}, metadata says (B, *{want})")
        self.output_name = self.session.get_outputs()[0].name
        log.info("OnnxExpert %s: providers %s (available %s), K=%d, N=%d, H=%d, %s graph", path.name,
                 self.session.get_providers(), ort.get_available_providers(), self.k, self.spec.n_points,
                 self.spec.horizon, self.meta.get("graph", "plain"))

    def _infer(self, feeds: dict) -> np.ndarray:
        try:
            return self.session.run([self.output_name], feeds)[0]
        except Exception as e:
            raise ExpertError(f"OnnxExpert: inference failed ({e})") from e

    def close(self) -> None:
        self.session = None
        super().close()


def shipped_model_path() -> Path:
    """The ONNX shipped in ``edgebridge/assets/expert/`` (reproduced by ``make weights``)."""
    return Path(__file__).resolve().parents[2] / "assets" / "expert" / "expert.onnx"


def load_shipped(**overrides) -> OnnxExpert:
    """An :class:`OnnxExpert` on the shipped weights; ``overrides`` go to :class:`ExpertBackendConfig`
    (e.g. ``seed``, ``threads``, ``providers``). A factory for name-based expert registries."""
    return OnnxExpert(ExpertBackendConfig(str(shipped_model_path()), **overrides))
