"""Action-expert runtime backends (no torch): ONNX Runtime and TensorRT, plus the shared featurisation.

``OnnxExpert`` and ``TensorRTExpert`` implement :class:`edgebridge.interfaces.ActionExpert`.
``tensorrt`` and the CUDA bindings are imported only when a ``TensorRTExpert`` is created.
"""

from .base import ExpertBackend, ExpertBackendConfig, load_metadata
from .features import FeatureSpec, Normalizer
from .onnx import OnnxExpert, choose_providers, load_shipped, shipped_model_path


def __getattr__(name: str):
    if name == "TensorRTExpert":
        from .tensorrt import TensorRTExpert

        return TensorRTExpert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExpertBackend", "ExpertBackendConfig", "FeatureSpec", "Normalizer", "OnnxExpert", "TensorRTExpert",
           "choose_providers", "load_metadata", "load_shipped", "shipped_model_path"]
