"""Robot-setup configuration: one TOML file per setup (arm, camera, planner, expert, rates, limits).

``load_robot_config(path)`` returns a validated, frozen :class:`RobotConfig`; any bad value raises
one ``ConfigError`` line naming the file and the dotted key (``sim_panda.toml: limits.joint_upper: ...``).
``loads_robot_config(text)`` / ``robot_config_from_dict(data)`` do the same without a file.
Shipped setups live in ``edgebridge/assets/configs``; ``resolve_config("sim_panda")`` finds them by name.

Every float of every section must be finite (no infinite timeout, rate or limit: ``inf`` would switch a
check off or overflow later); ``camera.T_base_cam`` must be a rigid transform (see :func:`rigid_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import ConfigError, check, check_finite_fields, from_dict, load_config, loads_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"

# |R^T R - I| allowed in a configured rotation (four decimals typed by hand); the loader then replaces R by
# the nearest exact rotation, so the runtime's stricter transform check never sees the difference.
RIGID_TOL = 1e-4
# Outer bounds of what a setup can mean (a larger value is a typo, or a check switched off by the back door).
MAX_JOINT = 1e3          # |joint limit|, rad (or m)
MAX_JOINT_VELOCITY = 1e3  # rad/s
MAX_JOINT_ACCELERATION = 1e6  # rad/s^2
MAX_REACH_M = 100.0      # |workspace, crop box, camera position|, m


def _range_error(v: Any, lo: float, hi: float, unit: str, lo_open: bool) -> str | None:
    u = f" {unit}" if unit else ""
    if not (lo < v if lo_open else lo <= v):
        return f"must be {'>' if lo_open else '>='} {lo:g}{u}, got {v}"
    if not v <= hi:
        return f"must be <= {hi:g}{u}, got {v}"
    return None


def _within(obj: Any, name: str, lo: float, hi: float, unit: str = "", *, lo_open: bool = True) -> None:
    """``check`` that field ``name`` of ``obj`` lies in ``(lo, hi]`` (``[lo, hi]`` when not ``lo_open``)."""
    why = _range_error(getattr(obj, name), lo, hi, unit, lo_open)
    check(why is None, name, why or "")


def _all_within(key: str, values: tuple, lo: float, hi: float, unit: str, *, lo_open: bool = True) -> None:
    for i, v in enumerate(values):
        why = _range_error(v, lo, hi, unit, lo_open)
        check(why is None, f"{key}[{i}]", why or "")


def rigid_transform(key: str, rows: Any) -> tuple[tuple[float, ...], ...]:
    """``rows`` (4 rows of 4 numbers) checked to be a rigid transform: finite, rotation block orthonormal
    within :data:`RIGID_TOL` with determinant +1, last row ``0 0 0 1``. Returns it with the rotation block
    projected onto the nearest rotation (SVD) and the last row exact."""
    check(isinstance(rows, (tuple, list)) and len(rows) == 4
          and all(isinstance(r, (tuple, list)) and len(r) == 4 for r in rows), key,
          "expected a 4x4 matrix as 4 rows of 4 numbers")
    try:
        M = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: expected a 4x4 matrix of numbers ({e})") from e
    check(bool(np.all(np.isfinite(M))), key, "entries must be finite numbers")
    check(bool(np.allclose(M[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9)), f"{key}[3]",
          f"the last row of a rigid transform is [0, 0, 0, 1], got {M[3].tolist()}")
    R = M[:3, :3]
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: err is inf and refused below
        err = float(np.abs(R.T @ R - np.eye(3)).max())
    check(err <= RIGID_TOL, key, f"rotation block (first 3 rows and columns) is not orthonormal: "
          f"|R^T R - I| = {err:.2g} > {RIGID_TOL:g} (rows of unit length, mutually perpendicular; "
          "typed by hand: 4 decimals or more)")
    det = float(np.linalg.det(R))
    check(det > 0, key, f"rotation block has determinant {det:.3f}, a rotation has +1 (a mirrored axis?)")
    if err > 1e-12:  # an exact rotation stays as written (and loading twice changes nothing)
        U, _, Vt = np.linalg.svd(R)
        M[:3, :3] = U @ Vt
    M[3] = (0.0, 0.0, 0.0, 1.0)
    dist = float(np.abs(M[:3, 3]).max())
    check(dist <= MAX_REACH_M, key, f"the camera sits {dist:g} m from the base along an axis (> {MAX_REACH_M:g} m); "
          "the translation is in metres")
    return tuple(tuple(float(x) for x in row) for row in M)


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
        check_finite_fields(self)
        n = len(self.joint_lower)
        check(n > 0, "joint_lower", "needs at least one joint")
        for name in ("joint_upper", "joint_velocity", "joint_acceleration"):
            check(len(getattr(self, name)) == n, name, f"needs {n} entries (one per joint, like joint_lower), "
                                                        f"got {len(getattr(self, name))}")
        for i, (lo, hi) in enumerate(zip(self.joint_lower, self.joint_upper)):
            check(lo < hi, f"joint_upper[{i}]", f"must exceed joint_lower[{i}] = {lo}, got {hi}")
        _all_within("joint_lower", self.joint_lower, -MAX_JOINT, MAX_JOINT, "rad", lo_open=False)
        _all_within("joint_upper", self.joint_upper, -MAX_JOINT, MAX_JOINT, "rad", lo_open=False)
        _all_within("joint_velocity", self.joint_velocity, 0.0, MAX_JOINT_VELOCITY, "rad/s")
        _all_within("joint_acceleration", self.joint_acceleration, 0.0, MAX_JOINT_ACCELERATION, "rad/s^2")
        _all_within("workspace_min", self.workspace_min, -MAX_REACH_M, MAX_REACH_M, "m", lo_open=False)
        _all_within("workspace_max", self.workspace_max, -MAX_REACH_M, MAX_REACH_M, "m", lo_open=False)
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
        check_finite_fields(self)
        check(1.0 <= self.rate_hz <= 5000.0, "rate_hz", f"must lie in [1, 5000] Hz, got {self.rate_hz}")
        _within(self, "spin_us", 0.0, 1e6, "us", lo_open=False)
        check(0 <= self.realtime_priority <= 99, "realtime_priority", f"must lie in [0, 99], got {self.realtime_priority}")
        check(self.cpu >= -1, "cpu", f"must be -1 (no pinning) or a CPU index, got {self.cpu}")
        _within(self, "chunk_timeout_s", 0.0, 60.0, "s")
        _within(self, "blend_s", 0.0, 10.0, "s", lo_open=False)
        _within(self, "max_ee_speed", 0.0, 10.0, "m/s")
        _within(self, "max_ee_angular_speed", 0.0, 100.0, "rad/s")
        _within(self, "max_gripper_speed", 0.0, 1000.0, "1/s")
        _within(self, "max_rejections", 1, 1_000_000, lo_open=False)

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.rate_hz))


@dataclass(frozen=True)
class DeviceConfig:
    """A device: the driver name the factory knows, plus driver-specific options passed through."""

    driver: str = "sim"
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_fields(self)
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
        check_finite_fields(self)
        check(bool(self.driver.strip()), "driver", "must name a driver")
        if self.T_base_cam:
            object.__setattr__(self, "T_base_cam", rigid_transform("T_base_cam", self.T_base_cam))
            check("calibration" not in self.options, "T_base_cam", "the camera pose is given twice (T_base_cam and "
                  "options.calibration); keep one")
        check(not self.calibration, "calibration", "the camera driver reads the calibration file: set "
              "camera.options.calibration instead (or give T_base_cam)")
        _within(self, "rate_hz", 0.0, 1000.0, "Hz")
        _within(self, "max_frame_age_s", 0.0, 60.0, "s")
        check(isinstance(self.depth_tare, bool), "depth_tare", f"expected true or false, got {self.depth_tare!r}")
        check(abs(self.table_z_m) < 2.0, "table_z_m", f"must lie within 2 m of the base, got {self.table_z_m}")


@dataclass(frozen=True)
class PlannerConfig:
    """``backend``: oracle (simulator state; sim only), gguf (local VLM) or remote. ``model``: GGUF path.
    ``max_attempts``: plans tried per planning round (first plan, or a sub-task boundary) before the
    episode fails (first plan) or keeps the previous plan (boundary). ``replan_subtasks``: ask the
    planner again from a fresh frame at each sub-task boundary of the plan. ``timeout_s``: a request
    not answered within this wall time counts as a rejected plan. ``replan_s``: periodic re-planning
    is not implemented; only 0 (re-plan once per sub-task) is accepted. ``anchor_out_of_bounds``: what
    lifting does with an anchor that lands outside the workspace (a depth error along the pixel's ray):
    ``clamp`` moves it along its camera ray to the nearest point inside, when that is at most
    ``anchor_clamp_max_m`` away (else the plan is rejected and re-planned); ``reject`` rejects the plan.

    Grasps (``runtime/grasp_check.py``): from ``grasp_settle_s`` after the guidance has closed the gripper
    until it opens it again, a reading (``ArmState.gripper``, 0 closed, 1 open) below ``empty_grasp_width``
    means it closed on nothing (or lost its object): the arm lifts, opens, and the sub-task is re-planned
    from a fresh frame, at most ``max_regrasps`` times per episode (0: no check). ``replan_before_grasp``: at the pre-grasp point above each object the arm
    holds and the sub-task is re-planned once from a fresh frame (for objects that may have moved).

    ``grasp_yaw`` (``runtime/grasp_yaw.py``): where the gripper's yaw comes from: ``plan`` (the planner's),
    ``cloud`` (measured in the depth image around the plan's first grasp anchor: the fingers close along the
    object's narrowest direction, clear of a mug's handle), ``auto`` (``cloud`` unless the plan is
    privileged, i.e. the simulator's oracle, which knows the true pose).

    ``grasp_point`` (``runtime/grasp_point.py``): a grasp anchor on a round open object (a mug) lifted where
    its pixel lands (``plan``), or moved to the lowest visible surface inside the body nearest its axis,
    measured in the depth image (``cloud``: a pixel either side of a mug's middle sees its inner wall,
    centimetres higher and to the side); ``auto`` (``cloud`` unless the plan is privileged)."""

    backend: Literal["oracle", "gguf", "remote"] = "oracle"
    model: str = ""
    options: dict = field(default_factory=dict)
    replan_s: float = 0.0
    max_attempts: int = 3
    replan_subtasks: bool = True
    timeout_s: float = 60.0
    anchor_out_of_bounds: Literal["clamp", "reject"] = "clamp"
    anchor_clamp_max_m: float = 0.10
    max_regrasps: int = 2
    empty_grasp_width: float = 0.05
    grasp_settle_s: float = 0.4
    replan_before_grasp: bool = False
    grasp_yaw: Literal["plan", "cloud", "auto"] = "auto"
    grasp_point: Literal["plan", "cloud", "auto"] = "auto"

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check(isinstance(self.max_regrasps, int) and not isinstance(self.max_regrasps, bool), "max_regrasps",
              f"expected a whole number, got {self.max_regrasps!r}")
        _within(self, "max_regrasps", 0, 100, lo_open=False)
        check(0.0 <= self.empty_grasp_width < 1.0, "empty_grasp_width",
              f"must lie in [0, 1) (the gripper reading, 0 closed, 1 open), got {self.empty_grasp_width}")
        _within(self, "grasp_settle_s", 0.0, 10.0, "s", lo_open=False)
        check(isinstance(self.replan_before_grasp, bool), "replan_before_grasp",
              f"expected true or false, got {self.replan_before_grasp!r}")
        check(self.grasp_yaw in ("plan", "cloud", "auto"), "grasp_yaw",
              f"expected 'plan', 'cloud' or 'auto', got {self.grasp_yaw!r}")
        check(self.grasp_point in ("plan", "cloud", "auto"), "grasp_point",
              f"expected 'plan', 'cloud' or 'auto', got {self.grasp_point!r}")
        check(self.anchor_out_of_bounds in ("clamp", "reject"), "anchor_out_of_bounds",
              f"expected 'clamp' or 'reject', got {self.anchor_out_of_bounds!r}")
        _within(self, "anchor_clamp_max_m", 0.0, 1.0, "m")
        check(self.replan_s == 0, "replan_s", f"periodic re-planning is not implemented; use 0 (re-plan at each "
              f"sub-task boundary), got {self.replan_s}")
        _within(self, "max_attempts", 1, 1000, lo_open=False)
        check(isinstance(self.replan_subtasks, bool), "replan_subtasks",
              f"expected true or false, got {self.replan_subtasks!r}")
        _within(self, "timeout_s", 0.0, 3600.0, "s")


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
        check_finite_fields(self)
        _within(self, "every_k_ticks", 1, 100_000, "ticks", lo_open=False)
        _within(self, "horizon", 1, 1024, "steps", lo_open=False)
        _within(self, "dt", 0.0, 10.0, "s")


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
        check_finite_fields(self)
        _all_within("crop_min", self.crop_min, -MAX_REACH_M, MAX_REACH_M, "m", lo_open=False)
        _all_within("crop_max", self.crop_max, -MAX_REACH_M, MAX_REACH_M, "m", lo_open=False)
        for i in range(3):
            check(self.crop_min[i] < self.crop_max[i], f"crop_max[{i}]",
                  f"must exceed crop_min[{i}] = {self.crop_min[i]}, got {self.crop_max[i]}")
        check(self.voxel_m == "auto" or (isinstance(self.voxel_m, float) and 0 <= self.voxel_m <= 10.0), "voxel_m",
              f'must be "auto" or a size in [0, 10] metres, got {self.voxel_m!r}')
        _within(self, "n_points", 1, 1_000_000, lo_open=False)
        _within(self, "guidance_dt", 0.0, 10.0, "s")
        _within(self, "guidance_speed", 0.0, 10.0, "m/s")


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
        check_finite_fields(self)
        check(bool(self.name.strip()), "name", "must name the setup")
        _within(self, "task_timeout_s", 0.0, 86400.0, "s")


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
    """The setup in a TOML file, or a shipped setup by name; errors name the file and the key."""
    return load_config(resolve_config(name_or_path), RobotConfig)


def loads_robot_config(text: str, name: str = "<string>") -> RobotConfig:
    """The setup in TOML ``text``; errors start with ``name``."""
    return loads_config(text, RobotConfig, name)


def robot_config_from_dict(data: dict, name: str = "<dict>") -> RobotConfig:
    """The setup in ``data`` (a parsed TOML document); errors start with ``name``."""
    try:
        return from_dict(RobotConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from e


def with_overrides(cfg: RobotConfig, **sections: dict[str, Any]) -> RobotConfig:
    """A copy of ``cfg`` with fields of its sections replaced, e.g. ``loop={"rate_hz": 500}``."""
    import dataclasses

    changes = {}
    for section, values in sections.items():
        if values:
            try:
                changes[section] = dataclasses.replace(getattr(cfg, section), **values)
            except ConfigError as e:
                raise ConfigError(f"{section}.{e}") from e
    return dataclasses.replace(cfg, **changes)
