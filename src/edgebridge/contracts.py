"""Contract types: the only things stages hand to each other.

Every type is a frozen dataclass that validates itself on construction: shape, dtype and finiteness.
A bad value raises ``ValueError`` naming the type, the field and what was expected, so a fault is
caught where it is made, not three stages later in the control loop.

Conventions (see docs/design.md): metres, seconds, radians; quaternions ``(x, y, z, w)``; gripper in
[0, 1] with 0 closed; ``T_a_b`` maps points in frame b to frame a; stamps are ``time.monotonic_ns()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rotations import matrix_to_quat, quat_to_matrix

DISTORTION_MODELS = ("none", "brown_conrady", "inverse_brown_conrady")


def now_ns() -> int:
    """Monotonic stamp in nanoseconds, the stamp every contract type carries."""
    return time.monotonic_ns()


# --------------------------------------------------------------------------- validation helpers


def _fail(owner: str, name: str, why: str) -> ValueError:
    return ValueError(f"{owner}.{name}: {why}")


def _array(owner: str, name: str, value: Any, *, shape: tuple, dtype: Any | None = None,
           finite: bool = True, cast: Any | None = None) -> np.ndarray:
    """Check ``value`` against ``shape`` (None = any length) and dtype; return a read-only array.

    ``dtype`` demands an exact dtype; ``cast`` converts any real-valued input to that dtype instead.
    """
    try:
        arr = np.asarray(value)
    except Exception as e:  # pragma: no cover - numpy accepts nearly everything
        raise _fail(owner, name, f"not convertible to an array ({e})") from e
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise _fail(owner, name, f"expected shape {want}, got {arr.shape}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise _fail(owner, name, f"expected dtype {np.dtype(dtype)}, got {arr.dtype}")
    if cast is not None:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise _fail(owner, name, f"expected numbers, got dtype {arr.dtype}")
        arr = arr.astype(cast, copy=True)
    elif arr.base is not None or arr.flags.writeable:
        arr = arr.copy()
    if finite and arr.size and np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise _fail(owner, name, f"{bad} non-finite value(s) (NaN/Inf)")
    arr.flags.writeable = False
    return arr


def _scalar(owner: str, name: str, value: Any, *, lo: float | None = None, hi: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise _fail(owner, name, f"expected a number, got {value!r}") from e
    if not np.isfinite(x):
        raise _fail(owner, name, f"must be finite, got {x}")
    if lo is not None and x < lo:
        raise _fail(owner, name, f"must be >= {lo}, got {x}")
    if hi is not None and x > hi:
        raise _fail(owner, name, f"must be <= {hi}, got {x}")
    return x


def _stamp(owner: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise _fail(owner, "stamp_ns", f"expected a non-negative int (time.monotonic_ns()), got {value!r}")
    return int(value)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _unit_quats(owner: str, name: str, q: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1)
    if np.any(np.abs(n - 1.0) > tol):
        raise _fail(owner, name, f"quaternions (x, y, z, w) must be unit length, norms {np.round(n, 4)}")
    out = (q / n[..., None]).astype(q.dtype)
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------- poses


@dataclass(frozen=True)
class Pose:
    """A rigid transform: position (3,) in metres and unit quaternion (4,) ``(x, y, z, w)``."""

    position: np.ndarray
    quat: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))

    def __post_init__(self) -> None:
        _set(self, "position", _array("Pose", "position", self.position, shape=(3,), cast=np.float64))
        q = _array("Pose", "quat", self.quat, shape=(4,), cast=np.float64)
        _set(self, "quat", _unit_quats("Pose", "quat", q))

    @classmethod
    def identity(cls) -> "Pose":
        return cls(np.zeros(3))

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> "Pose":
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"Pose.from_matrix: expected a finite 4x4 matrix, got shape {T.shape}")
        return cls(T[:3, 3].copy(), matrix_to_quat(T[:3, :3]))

    @property
    def rotation(self) -> np.ndarray:
        return quat_to_matrix(self.quat)

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.rotation
        T[:3, 3] = self.position
        return T

    def inverse(self) -> "Pose":
        return Pose.from_matrix(np.linalg.inv(self.matrix()))

    def __matmul__(self, other: "Pose") -> "Pose":
        return Pose.from_matrix(self.matrix() @ other.matrix())

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) points from this pose's child frame to its parent frame."""
        pts = np.asarray(points, dtype=np.float64)
        return pts @ self.rotation.T + self.position


def check_transform(name: str, T: Any) -> np.ndarray:
    """Validate a 4x4 rigid transform (orthonormal rotation, last row 0 0 0 1); return float64 copy."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{name}: expected a 4x4 transform, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name}: transform has non-finite entries")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {T[3]}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise ValueError(f"{name}: rotation block is not a proper rotation (R R^T != I or det < 0)")
    return T


# --------------------------------------------------------------------------- sensing


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics plus the distortion model librealsense reports.

    ``model``: "none", "brown_conrady" (forward distortion, as for colour streams) or
    "inverse_brown_conrady" (the coefficients undistort, as for many depth streams).
    ``coeffs``: k1, k2, p1, p2, k3.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "none"
    coeffs: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise _fail("Intrinsics", name, f"expected a positive int, got {v!r}")
            _set(self, name, int(v))
        for name in ("fx", "fy"):
            _set(self, name, _scalar("Intrinsics", name, getattr(self, name), lo=1e-6))
        for name in ("cx", "cy"):
            _set(self, name, _scalar("Intrinsics", name, getattr(self, name)))
        if self.model not in DISTORTION_MODELS:
            raise _fail("Intrinsics", "model", f"expected one of {DISTORTION_MODELS}, got {self.model!r}")
        _set(self, "coeffs", _array("Intrinsics", "coeffs", self.coeffs, shape=(5,), cast=np.float64))

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def as_array(self) -> np.ndarray:
        """(10,) float64: fx fy cx cy k1 k2 p1 p2 k3 model_id, the layout the kernels take."""
        return np.array([self.fx, self.fy, self.cx, self.cy, *self.coeffs,
                         float(DISTORTION_MODELS.index(self.model))])


@dataclass(frozen=True)
class RGBD:
    """An aligned colour + depth frame. Depth in metres; 0 or non-finite means no measurement.

    ``stamp_ns``: when the frame was captured, on the monotonic clock (a driver that only knows when
    it arrived stamps that). ``seq``: the camera's own frame number when it has one (None: unknown);
    a camera that keeps returning one frame repeats it, which the watchdog counts as a stale frame."""

    rgb: np.ndarray
    depth: np.ndarray
    intrinsics: Intrinsics
    stamp_ns: int = field(default_factory=now_ns)
    seq: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.intrinsics, Intrinsics):
            raise _fail("RGBD", "intrinsics", f"expected Intrinsics, got {type(self.intrinsics).__name__}")
        h, w = self.intrinsics.height, self.intrinsics.width
        _set(self, "rgb", _array("RGBD", "rgb", self.rgb, shape=(h, w, 3), dtype=np.uint8))
        depth = _array("RGBD", "depth", self.depth, shape=(h, w), dtype=np.float32, finite=False)
        if np.any(depth < 0):
            raise _fail("RGBD", "depth", "negative depth values (metres expected; 0 marks no measurement)")
        _set(self, "depth", depth)
        _set(self, "stamp_ns", _stamp("RGBD", self.stamp_ns))
        if self.seq is not None:
            if not isinstance(self.seq, (int, np.integer)) or isinstance(self.seq, bool) or self.seq < 0:
                raise _fail("RGBD", "seq", f"expected a non-negative int frame number or None, got {self.seq!r}")
            _set(self, "seq", int(self.seq))


@dataclass(frozen=True)
class PointCloud:
    """Points in ``frame`` (normally ``base``). ``n_valid`` of them are real; the rest repeat real ones
    to pad to a fixed count (a network wants exactly N)."""

    xyz: np.ndarray
    rgb: np.ndarray | None = None
    stamp_ns: int = field(default_factory=now_ns)
    frame: str = "base"
    n_valid: int | None = None

    def __post_init__(self) -> None:
        xyz = _array("PointCloud", "xyz", self.xyz, shape=(None, 3), dtype=np.float32)
        _set(self, "xyz", xyz)
        if self.rgb is not None:
            _set(self, "rgb", _array("PointCloud", "rgb", self.rgb, shape=(xyz.shape[0], 3), dtype=np.uint8))
        n_valid = xyz.shape[0] if self.n_valid is None else self.n_valid
        if not isinstance(n_valid, (int, np.integer)) or not 0 <= n_valid <= xyz.shape[0]:
            raise _fail("PointCloud", "n_valid", f"expected an int in [0, {xyz.shape[0]}], got {n_valid!r}")
        _set(self, "n_valid", int(n_valid))
        _set(self, "stamp_ns", _stamp("PointCloud", self.stamp_ns))

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Anchor:
    """A 2-D anchor point from the planner: pixel (u column, v row), the gripper state to reach there
    (0 closed, 1 open) and optionally a depth the planner itself estimated (metres)."""

    u: int
    v: int
    gripper: float
    depth: float | None = None

    def __post_init__(self) -> None:
        for name in ("u", "v"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
                raise _fail("Anchor", name, f"expected a non-negative int pixel, got {val!r}")
            _set(self, name, int(val))
        _set(self, "gripper", _scalar("Anchor", "gripper", self.gripper, lo=0.0, hi=1.0))
        if self.depth is not None:
            _set(self, "depth", _scalar("Anchor", "depth", self.depth, lo=1e-6))


@dataclass(frozen=True)
class Plan:
    """The planner's sparse answer: anchors in image space, the gripper orientation to hold
    (base frame, quaternion x y z w), and optional sub-task boundaries (anchor indices where a new
    sub-task starts). ``source`` names the planner; ``privileged`` marks plans made from simulator state."""

    instruction: str
    anchors: tuple[Anchor, ...]
    orientation: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))
    subtasks: tuple[int, ...] = ()
    source: str = "unknown"
    privileged: bool = False
    stamp_ns: int = field(default_factory=now_ns)
    timings_ms: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise _fail("Plan", "instruction", "expected a non-empty string")
        anchors = tuple(self.anchors)
        if not anchors:
            raise _fail("Plan", "anchors", "a plan needs at least one anchor")
        for i, a in enumerate(anchors):
            if not isinstance(a, Anchor):
                raise _fail("Plan", f"anchors[{i}]", f"expected Anchor, got {type(a).__name__}")
        _set(self, "anchors", anchors)
        q = _array("Plan", "orientation", self.orientation, shape=(4,), cast=np.float64)
        _set(self, "orientation", _unit_quats("Plan", "orientation", q))
        subtasks = tuple(int(s) for s in self.subtasks)
        if any(not 0 <= s < len(anchors) for s in subtasks) or list(subtasks) != sorted(set(subtasks)):
            raise _fail("Plan", "subtasks", f"expected increasing anchor indices < {len(anchors)}, got {subtasks}")
        _set(self, "subtasks", subtasks)
        _set(self, "stamp_ns", _stamp("Plan", self.stamp_ns))


@dataclass(frozen=True)
class Waypoints:
    """Sparse 3-D waypoints in the base frame: positions (M, 3), quaternions (M, 4), gripper (M,)."""

    positions: np.ndarray
    quats: np.ndarray
    gripper: np.ndarray
    frame: str = "base"
    stamp_ns: int = field(default_factory=now_ns)

    def __post_init__(self) -> None:
        p = _array("Waypoints", "positions", self.positions, shape=(None, 3), cast=np.float64)
        m = p.shape[0]
        if m == 0:
            raise _fail("Waypoints", "positions", "need at least one waypoint")
        q = _array("Waypoints", "quats", self.quats, shape=(m, 4), cast=np.float64)
        g = _array("Waypoints", "gripper", self.gripper, shape=(m,), cast=np.float64)
        if np.any((g < 0) | (g > 1)):
            raise _fail("Waypoints", "gripper", "values must lie in [0, 1]")
        _set(self, "positions", p)
        _set(self, "quats", _unit_quats("Waypoints", "quats", q))
        _set(self, "gripper", g)
        _set(self, "stamp_ns", _stamp("Waypoints", self.stamp_ns))

    def __len__(self) -> int:
        return int(self.positions.shape[0])


@dataclass(frozen=True)
class Guidance:
    """A dense trajectory sampled from the B-spline: times (T,) in seconds from the spline start,
    positions (T, 3), quaternions (T, 4), gripper (T,), all in the base frame."""

    t: np.ndarray
    positions: np.ndarray
    quats: np.ndarray
    gripper: np.ndarray
    stamp_ns: int = field(default_factory=now_ns)

    def __post_init__(self) -> None:
        t = _array("Guidance", "t", self.t, shape=(None,), cast=np.float64)
        n = t.shape[0]
        if n == 0:
            raise _fail("Guidance", "t", "need at least one sample")
        if n > 1 and np.any(np.diff(t) < 0):
            raise _fail("Guidance", "t", "sample times must be non-decreasing")
        _set(self, "t", t)
        _set(self, "positions", _array("Guidance", "positions", self.positions, shape=(n, 3), cast=np.float64))
        q = _array("Guidance", "quats", self.quats, shape=(n, 4), cast=np.float64)
        _set(self, "quats", _unit_quats("Guidance", "quats", q))
        g = _array("Guidance", "gripper", self.gripper, shape=(n,), cast=np.float64)
        if np.any((g < 0) | (g > 1)):
            raise _fail("Guidance", "gripper", "values must lie in [0, 1]")
        _set(self, "gripper", g)
        _set(self, "stamp_ns", _stamp("Guidance", self.stamp_ns))

    def __len__(self) -> int:
        return int(self.t.shape[0])


# --------------------------------------------------------------------------- acting


@dataclass(frozen=True)
class ActionChunk:
    """H target end-effector poses + gripper, absolute in the base frame: (H, 8) =
    x y z qx qy qz qw gripper. Step k is meant for time ``start_ns + k * dt``."""

    poses: np.ndarray
    start_ns: int
    dt: float
    inference_ms: float = 0.0

    def __post_init__(self) -> None:
        p = _array("ActionChunk", "poses", self.poses, shape=(None, 8), cast=np.float32)
        if p.shape[0] == 0:
            raise _fail("ActionChunk", "poses", "a chunk needs at least one step")
        qn = np.linalg.norm(p[:, 3:7].astype(np.float64), axis=1)
        if np.any(np.abs(qn - 1.0) > 1e-2):
            raise _fail("ActionChunk", "poses", f"quaternion columns 3:7 must be unit length, norms {np.round(qn, 3)}")
        if np.any((p[:, 7] < -1e-6) | (p[:, 7] > 1 + 1e-6)):
            raise _fail("ActionChunk", "poses", "gripper column 7 must lie in [0, 1]")
        _set(self, "poses", p)
        _set(self, "start_ns", _stamp("ActionChunk", self.start_ns))
        _set(self, "dt", _scalar("ActionChunk", "dt", self.dt, lo=1e-6))
        _set(self, "inference_ms", _scalar("ActionChunk", "inference_ms", self.inference_ms, lo=0.0))

    def __len__(self) -> int:
        return int(self.poses.shape[0])


@dataclass(frozen=True)
class ArmState:
    """Measured arm state: joint positions (J,) rad, optional joint velocities, end-effector pose in
    the base frame, gripper opening in [0, 1]."""

    joints: np.ndarray
    ee_pose: Pose
    gripper: float
    joint_velocities: np.ndarray | None = None
    stamp_ns: int = field(default_factory=now_ns)

    def __post_init__(self) -> None:
        j = _array("ArmState", "joints", self.joints, shape=(None,), cast=np.float64)
        _set(self, "joints", j)
        if self.joint_velocities is not None:
            _set(self, "joint_velocities", _array("ArmState", "joint_velocities", self.joint_velocities,
                                                   shape=j.shape, cast=np.float64))
        if not isinstance(self.ee_pose, Pose):
            raise _fail("ArmState", "ee_pose", f"expected Pose, got {type(self.ee_pose).__name__}")
        _set(self, "gripper", _scalar("ArmState", "gripper", self.gripper, lo=-0.05, hi=1.05))
        _set(self, "stamp_ns", _stamp("ArmState", self.stamp_ns))


@dataclass(frozen=True)
class ArmCommand:
    """A target for the arm: joint positions (J,) rad (what a driver sends), optionally the end-effector
    target it came from, and the gripper target in [0, 1]. Only the safety layer creates the commands a
    driver receives."""

    joints: np.ndarray
    gripper: float
    ee_target: Pose | None = None
    stamp_ns: int = field(default_factory=now_ns)

    def __post_init__(self) -> None:
        _set(self, "joints", _array("ArmCommand", "joints", self.joints, shape=(None,), cast=np.float64))
        _set(self, "gripper", _scalar("ArmCommand", "gripper", self.gripper, lo=0.0, hi=1.0))
        if self.ee_target is not None and not isinstance(self.ee_target, Pose):
            raise _fail("ArmCommand", "ee_target", f"expected Pose or None, got {type(self.ee_target).__name__}")
        _set(self, "stamp_ns", _stamp("ArmCommand", self.stamp_ns))
