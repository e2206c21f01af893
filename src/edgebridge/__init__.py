"""edgebridge: an embedded edge runtime for onboard robot compute.

Think (a VLM planner on llama.cpp) then act (a point-cloud diffusion action expert on ONNX Runtime /
TensorRT), bridged by depth-lifted waypoints and a B-spline, driven by a fixed-rate control loop.
"""

from .contracts import (ActionChunk, Anchor, ArmCommand, ArmState, Guidance, Intrinsics, Plan,
                        PointCloud, Pose, RGBD, Waypoints)

__version__ = "0.1.0"

__all__ = ["ActionChunk", "Anchor", "ArmCommand", "ArmState", "Guidance", "Intrinsics", "Plan",
           "PointCloud", "Pose", "RGBD", "Waypoints", "__version__"]
