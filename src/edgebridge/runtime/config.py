"""Robot-setup configuration: one TOML file per setup (arm, camera, planner, expert, rates, limits).

``load_robot_config(path)`` returns a validated, frozen :class:`RobotConfig`; any bad value raises
``ConfigError`` naming the file and the dotted key (``sim_panda.toml: limits.joint_upper: ...``).
Shipped setups live in ``edgebridge/assets/configs``; ``resolve_config("sim_panda")`` finds them by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, check, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"


def _finite(key: str, values: tuple[float, ...] | float) -> None:
    vals = values if isinstance(values, tuple) else (values,)
    check(all(math.isfinite(v) for v in vals), key, f"values must be finite, got {values}")


@dataclass(frozen=True)
class SafetyLimits:
    """Limits every command is validated against. Joint arrays have one entry per arm joint.

    ``workspace_min`` / ``workspace_max``: axis-aligned box in the base frame (metres) the end effector
    (FK of the commanded joints) must stay in. ``tolerance``: relative slack on velocity/acceleration
    checks to absorb float rounding (the loop's limiter already shapes commands inside the limits).
    """

    joint_lower: tuple[float, ...]
    joint_upper: tuple[float, ...]
    joint_velocity: tuple[float, ...]
    joint_acceleration: tuple[float, ...]
    workspace_min: tuple[float, float, float] = (-1.0, -1.0, 0.0)
    workspace_max: tuple[float, float, float] = (1.0, 1.0, 1.2)
    gripper_min: float = 0.0
    gripper_max: float = 1.0
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        n = len(self.joint_lower)
        check(n > 0, "joint_lower", "needs at least one joint")
        for name in ("joint_upper", "joint_velocity", "joint_acceleration"):
            check(len(getattr(self, name)) == n, name, f"needs {n} entries (one per joint, like joint_lower), "
                                                        f"got {len(getattr(self, name))}")
        for name in ("joint_lower", "joint_upper", "joint_velocity", "joint_acceleration",
                     "workspace_min", "workspace_max"):
            _finite(name, getattr(self, name))
        for i, (lo, hi) in enumerate(zip(self.joint_lower, self.joint_upper)):
            check(lo < hi, f"joint_upper[{i}]", f"must exceed joint_lower[{i}] = {lo}, got {hi}")
        check(all(v > 0 for v in self.joint_velocity), "joint_velocity", f"must all be > 0, got {self.joint_velocity}")
        check(all(a > 0 for a in self.joint_acceleration), "joint_acceleration",
              f"must all be > 0, got {self.joint_acceleration}")
        for i in range(3):
            check(self.workspace_min[i] < self.workspace_max[i], f"workspace_max[{i}]",
                  f"must exceed workspace_min[{i}] = {self.workspace_min[i]}, got {self.workspace_max[i]}")
        check(0.0 <= self.gripper_min < self.gripper_max <= 1.0, "gripper_max",
              f"need 0 <= gripper_min < gripper_max <= 1, got [{self.gripper_min}, {self.gripper_max}]")
        check(0.0 <= self.tolerance < 0.1, "tolerance", f"must lie in [0, 0.1), got {self.tolerance}")

    @property
    def n_joints(self) -> int:
        return len(self.joint_lower)


@dataclass(frozen=True)
class LoopConfig:
    """The fixed-rate control loop.

    ``rate_hz``: control rate. ``spin_us``: the last part of each wait is spent spinning, not sleeping.
    ``realtime_priority``: SCHED_FIFO priority (1-99), 0 = leave the scheduler alone. ``cpu``: pin the loop
    to this CPU, -1 = no pinning. ``gc``: "freeze" (gc.freeze() at start), "disable" (no cyclic GC
    while the loop runs) or "default". ``isolation``: "thread" (loop in this process) or "process" (own
    process, chunks in and state out through shared memory: no GIL contention with planner and expert).
    ``chunk_timeout_s``: no fresh chunk for this long -> decelerate and hold. ``blend_s``: cross-fade time
    between overlapping chunks. ``max_ee_speed`` (m/s) / ``max_ee_angular_speed`` (rad/s) /
    ``max_gripper_speed`` (1/s): rate limits of the interpolated target. ``max_rejections``: this many
    rejected commands within one second stop the loop.
    """

    rate_hz: float = 100.0
    spin_us: float = 300.0
    realtime_priority: int = 0
    cpu: int = -1
    gc: Literal["freeze", "disable", "default"] = "freeze"
    isolation: Literal["thread", "process"] = "thread"
    chunk_timeout_s: float = 0.5
    blend_s: float = 0.1
    max_ee_speed: float = 0.5
    max_ee_angular_speed: float = 2.0
    max_gripper_speed: float = 4.0
    max_rejections: int = 50

    def __post_init__(self) -> None:
        check(1.0 <= self.rate_hz <= 5000.0, "rate_hz", f"must lie in [1, 5000] Hz, got {self.rate_hz}")
        check(self.spin_us >= 0, "spin_us", f"must be >= 0, got {self.spin_us}")
        check(0 <= self.realtime_priority <= 99, "realtime_priority", f"must lie in [0, 99], got {self.realtime_priority}")
        check(self.cpu >= -1, "cpu", f"must be -1 (no pinning) or a CPU index, got {self.cpu}")
        check(self.chunk_timeout_s > 0, "chunk_timeout_s", f"must be > 0, got {self.chunk_timeout_s}")
        check(self.blend_s >= 0, "blend_s", f"must be >= 0, got {self.blend_s}")
        for name in ("max_ee_speed", "max_ee_angular_speed", "max_gripper_speed"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.max_rejections >= 1, "max_rejections", f"must be >= 1, got {self.max_rejections}")

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.rate_hz))


@dataclass(frozen=True)
class DeviceConfig:
    """A device: the driver name the factory knows, plus driver-specific options passed through."""

    driver: str = "sim"
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(bool(self.driver.strip()), "driver", "must name a driver")


@dataclass(frozen=True)
class CameraConfig:
    """The camera: driver + options, and its pose in the base frame (``T_base_cam``, 4x4 rows) or a
    calibration file holding it. Empty both -> the driver supplies it (the sim camera knows its pose).
    ``depth_tare``: before each episode, measure the depth offset against the table plane at height
    ``table_z_m`` (base frame) and remove it from every frame (``edgebridge.calib.depth_tare``)."""

    driver: str = "sim"
    options: dict = field(default_factory=dict)
    T_base_cam: tuple[tuple[float, ...], ...] = ()
    calibration: str = ""
    rate_hz: float = 15.0
    max_frame_age_s: float = 1.0
    depth_tare: bool = False
    table_z_m: float = 0.0

    def __post_init__(self) -> None:
        check(bool(self.driver.strip()), "driver", "must name a driver")
        if self.T_base_cam:
            check(len(self.T_base_cam) == 4 and all(len(r) == 4 for r in self.T_base_cam), "T_base_cam",
                  "expected a 4x4 matrix as 4 rows of 4 numbers")
        check(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")
        check(self.max_frame_age_s > 0, "max_frame_age_s", f"must be > 0, got {self.max_frame_age_s}")
        check(isinstance(self.depth_tare, bool), "depth_tare", f"expected true or false, got {self.depth_tare!r}")
        check(abs(self.table_z_m) < 2.0, "table_z_m", f"must lie within 2 m of the base, got {self.table_z_m}")


@dataclass(frozen=True)
class PlannerConfig:
    """``backend``: oracle (simulator state; sim only), gguf (local VLM) or remote. ``model``: GGUF path.
    ``max_attempts``: plans tried per planning round (first plan, or a sub-task boundary) before the
    episode fails (first plan) or keeps the previous plan (boundary). ``replan_subtasks``: ask the
    planner again from a fresh frame at each sub-task boundary of the plan. ``timeout_s``: a request
    not answered within this wall time counts as a rejected plan. ``replan_s``: periodic re-planning
    is not implemented; only 0 (re-plan once per sub-task) is accepted."""

    backend: Literal["oracle", "gguf", "remote"] = "oracle"
    model: str = ""
    options: dict = field(default_factory=dict)
    replan_s: float = 0.0
    max_attempts: int = 3
    replan_subtasks: bool = True
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check(self.replan_s == 0, "replan_s", f"periodic re-planning is not implemented; use 0 (re-plan at each "
              f"sub-task boundary), got {self.replan_s}")
        check(self.max_attempts >= 1, "max_attempts", f"must be >= 1, got {self.max_attempts}")
        check(isinstance(self.replan_subtasks, bool), "replan_subtasks",
              f"expected true or false, got {self.replan_subtasks!r}")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0 s, got {self.timeout_s}")


@dataclass(frozen=True)
class ExpertSettings:
    """``backend``: onnx, trt or ik. ``model``: path (empty = the shipped ONNX). The expert runs every
    ``every_k_ticks`` control ticks in a worker; its chunks have ``horizon`` steps ``dt`` apart."""

    backend: Literal["onnx", "trt", "ik"] = "onnx"
    model: str = ""
    options: dict = field(default_factory=dict)
    every_k_ticks: int = 10
    horizon: int = 16
    dt: float = 0.05

    def __post_init__(self) -> None:
        check(self.every_k_ticks >= 1, "every_k_ticks", f"must be >= 1, got {self.every_k_ticks}")
        check(self.horizon >= 1, "horizon", f"must be >= 1, got {self.horizon}")
        check(self.dt > 0, "dt", f"must be > 0, got {self.dt}")


@dataclass(frozen=True)
class PerceptionConfig:
    """Cloud processing: crop box in the base frame, voxel size, fixed point count for the expert."""

    crop_min: tuple[float, float, float] = (-1.0, -1.0, -0.05)
    crop_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    voxel_m: float | str = "auto"   # "auto": the kernels size the voxel to ~4 x n_points cells (as the demos do)
    n_points: int = 512
    guidance_dt: float = 0.05
    guidance_speed: float = 0.15

    def __post_init__(self) -> None:
        for i in range(3):
            check(self.crop_min[i] < self.crop_max[i], f"crop_max[{i}]", f"must exceed crop_min[{i}]")
        check(self.voxel_m == "auto" or (isinstance(self.voxel_m, float) and self.voxel_m >= 0), "voxel_m",
              f'must be "auto" or a size >= 0 in metres, got {self.voxel_m!r}')
        check(self.n_points >= 1, "n_points", f"must be >= 1, got {self.n_points}")
        check(self.guidance_dt > 0, "guidance_dt", f"must be > 0, got {self.guidance_dt}")
        check(self.guidance_speed > 0, "guidance_speed", f"must be > 0 m/s, got {self.guidance_speed}")


@dataclass(frozen=True)
class RobotConfig:
    """One robot setup."""

    name: str
    limits: SafetyLimits
    arm: DeviceConfig = field(default_factory=DeviceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    expert: ExpertSettings = field(default_factory=ExpertSettings)
    loop: LoopConfig = field(default_factory=LoopConfig)
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    kinematics: dict = field(default_factory=dict)
    task_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "name", "must name the setup")
        check(self.task_timeout_s > 0, "task_timeout_s", f"must be > 0, got {self.task_timeout_s}")


def resolve_config(name_or_path: str | Path) -> Path:
    """A path to an existing TOML file, or the name of a shipped setup (``sim_panda``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.toml"))) or "none"
    raise ConfigError(f"{name_or_path}: no such config file and no shipped setup of that name "
                      f"(shipped: {known}); pass a path to a TOML file")


def load_robot_config(name_or_path: str | Path) -> RobotConfig:
    return load_config(resolve_config(name_or_path), RobotConfig)


def with_overrides(cfg: RobotConfig, **sections: dict[str, Any]) -> RobotConfig:
    """A copy of ``cfg`` with fields of its sections replaced, e.g. ``loop={"rate_hz": 500}``."""
    import dataclasses

    changes = {}
    for section, values in sections.items():
        if values:
            changes[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **changes)
