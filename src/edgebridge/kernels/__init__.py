"""edgebridge.kernels: point-cloud and B-spline kernels with a numpy reference, Numba CPU and
``numba.cuda`` backends (``backend="numpy" | "cpu" | "cuda" | "auto"``).

Importing this package imports numpy only; Numba kernels compile (or load from the on-disk cache) on
the first call that needs them.
"""

from ._backend import CUDA_CONFIG, available_backends
from .cloud import WorkspaceBox, crop_box, deproject, depth_to_cloud, downsample, transform_points
from .spline import GuidanceSpline

__all__ = ["CUDA_CONFIG", "GuidanceSpline", "WorkspaceBox", "available_backends", "crop_box", "deproject",
           "depth_to_cloud", "downsample", "transform_points"]
