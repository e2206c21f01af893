"""The plain-IK executor (the baseline the paper compares against).

``IKExpert`` implements :class:`~edgebridge.interfaces.ActionExpert` but ignores the point cloud: its
chunk is the next ``horizon`` guidance poses from the current time (``runtime.guidance.interpolate``),
i.e. it follows the B-spline through the lifted plan exactly as drawn. The control loop's IK turns the
poses into joints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..config import check
from ..contracts import ActionChunk, ArmState, Guidance, PointCloud
from .guidance import interpolate_guidance


@dataclass(frozen=True)
class IKExpertConfig:
    horizon: int = 16
    dt: float = 0.1
    min_z: float = 0.005

    def __post_init__(self) -> None:
        check(self.horizon >= 1, "ik_expert.horizon", f"must be >= 1, got {self.horizon}")
        check(self.dt > 0, "ik_expert.dt", f"must be > 0, got {self.dt}")


class IKExpert:
    """Follows the guidance: the chunk is the next ``horizon`` guidance poses from the current time.

    The current time on the guidance clock is ``(state.stamp_ns - guidance.stamp_ns) / 1e9``: the
    caller stamps the guidance with the time its ``t = 0`` corresponds to."""

    needs_cloud = False
    name = "ik"

    def __init__(self, config: IKExpertConfig | None = None) -> None:
        self.config = config or IKExpertConfig()

    def act(self, cloud: PointCloud | None, state: ArmState, guidance: Guidance) -> ActionChunk:
        t0 = time.perf_counter()
        if not isinstance(guidance, Guidance):
            raise TypeError(f"IKExpert.act: guidance must be a Guidance, got {type(guidance).__name__}")
        c = self.config
        now = (state.stamp_ns - guidance.stamp_ns) / 1e9
        rows = interpolate_guidance(guidance, now + c.dt * np.arange(c.horizon))
        rows[:, 2] = np.maximum(rows[:, 2], c.min_z)
        start_ns = max(0, guidance.stamp_ns + int(round(now * 1e9)))
        return ActionChunk(rows, start_ns=start_ns, dt=c.dt, inference_ms=(time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        pass

    def __enter__(self) -> "IKExpert":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
