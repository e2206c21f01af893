"""Forward and inverse kinematics from a URDF through pinocchio, independent of any simulator.

``Kinematics(KinematicsConfig(urdf=..., ee_frame=...))`` builds a pinocchio model of the arm joints
(the joints not named in ``joint_names`` -- fingers, say -- are locked at their neutral value), then

- ``fk(q) -> Pose``: the end-effector frame in the URDF root (robot base) frame;
- ``ik(target, q0) -> q``: damped least-squares IK on the SE(3) error, clamped to the joint limits,
  with a small pull towards ``q0`` in the null space; it raises ``IKError`` naming the target and the
  residual when it does not converge.

Used by the simulated arm and by real arm drivers alike. Never imports a simulator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import check
from ..contracts import Pose
from ..errors import EdgebridgeError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "robots"
PANDA_URDF = ASSETS / "panda" / "panda.urdf"
PANDA_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_HOME = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785)


class IKError(EdgebridgeError, ValueError):
    """Inverse kinematics found no joint configuration reaching the target within tolerance."""


@dataclass(frozen=True)
class KinematicsConfig:
    """A kinematic chain: URDF file, end-effector frame, the actuated joints (in command order) and
    the IK solver settings. Defaults describe the Franka Panda shipped in ``assets/robots``."""

    urdf: str = str(PANDA_URDF)
    ee_frame: str = "panda_grasptarget"
    joint_names: tuple[str, ...] = PANDA_JOINTS
    damping: float = 1e-4
    max_iters: int = 200
    step: float = 1.0
    tol_pos_m: float = 1e-3
    tol_rot_rad: float = 1e-2
    posture_weight: float = 1e-3
    limit_margin_rad: float = 1e-3

    def __post_init__(self) -> None:
        check(Path(self.urdf).is_file(), "kinematics.urdf", f"file not found: {self.urdf}")
        check(bool(self.ee_frame), "kinematics.ee_frame", "must name a frame of the URDF")
        check(len(self.joint_names) > 0, "kinematics.joint_names", "need at least one joint")
        check(self.damping > 0, "kinematics.damping", f"must be > 0, got {self.damping}")
        check(self.max_iters > 0, "kinematics.max_iters", f"must be > 0, got {self.max_iters}")
        check(0 < self.step <= 1, "kinematics.step", f"must lie in (0, 1], got {self.step}")
        check(self.tol_pos_m > 0 and self.tol_rot_rad > 0, "kinematics.tol_pos_m/tol_rot_rad",
              f"must be > 0, got {self.tol_pos_m}, {self.tol_rot_rad}")
        check(self.posture_weight >= 0, "kinematics.posture_weight", f"must be >= 0, got {self.posture_weight}")


class Kinematics:
    """FK/IK for one chain of a URDF (see module docstring)."""

    def __init__(self, config: KinematicsConfig | None = None) -> None:
        import pinocchio as pin

        self._pin = pin
        self.config = config = config or KinematicsConfig()
        try:
            full = pin.buildModelFromUrdf(config.urdf)
        except Exception as e:  # pinocchio raises ValueError/RuntimeError for bad files
            raise ValueError(f"Kinematics: could not load URDF {config.urdf!r} ({e}); check the file") from e
        names = [full.names[i] for i in range(full.njoints)]
        missing = [n for n in config.joint_names if n not in names]
        if missing:
            raise ValueError(f"Kinematics: joints {missing} not in {config.urdf}; it has {names[1:]}")
        lock = [full.getJointId(n) for n in names[1:] if n not in config.joint_names]
        model = pin.buildReducedModel(full, lock, pin.neutral(full)) if lock else full
        if not model.existFrame(config.ee_frame):
            frames = [f.name for f in model.frames]
            raise ValueError(f"Kinematics: end-effector frame {config.ee_frame!r} not in {config.urdf}; "
                             f"frames: {frames}")
        order = [model.names[i] for i in range(1, model.njoints)]
        if tuple(order) != tuple(config.joint_names):
            raise ValueError(f"Kinematics: joint_names must follow the URDF chain order {order}, "
                             f"got {list(config.joint_names)}")
        if model.nq != len(config.joint_names):
            raise ValueError(f"Kinematics: only 1-DoF joints are supported, model has nq={model.nq} "
                             f"for {len(config.joint_names)} joints")
        self.model = model
        self.data = model.createData()
        self.ee_id = model.getFrameId(config.ee_frame)
        self.lower = np.array(model.lowerPositionLimit, dtype=np.float64)
        self.upper = np.array(model.upperPositionLimit, dtype=np.float64)
        self.velocity_limit = np.array(model.velocityLimit, dtype=np.float64)

    @property
    def n_joints(self) -> int:
        return int(self.model.nq)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.config.joint_names)

    def _q(self, q, what: str) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape != (self.n_joints,) or not np.all(np.isfinite(q)):
            raise ValueError(f"Kinematics.{what}: expected {self.n_joints} finite joint values, got {q}")
        return q

    def fk_matrix(self, q) -> np.ndarray:
        """4x4 pose of the end-effector frame in the base frame."""
        pin = self._pin
        q = self._q(q, "fk")
        pin.framesForwardKinematics(self.model, self.data, q)
        return np.array(self.data.oMf[self.ee_id].homogeneous)

    def fk(self, q) -> Pose:
        return Pose.from_matrix(self.fk_matrix(q))

    def within_limits(self, q, margin: float = 0.0) -> bool:
        q = np.asarray(q, dtype=np.float64)
        return bool(np.all(q >= self.lower - margin) and np.all(q <= self.upper + margin))

    def clip(self, q) -> np.ndarray:
        return np.clip(np.asarray(q, dtype=np.float64), self.lower, self.upper)

    def ik(self, target: Pose, q0, *, max_iters: int | None = None) -> np.ndarray:
        """Joint positions putting the end-effector frame at ``target`` (base frame), starting at ``q0``.

        Raises ``IKError`` naming the target when the residual stays above tolerance (unreachable
        target, or a joint limit in the way)."""
        pin = self._pin
        cfg = self.config
        if not isinstance(target, Pose):
            raise TypeError(f"Kinematics.ik: target must be a Pose, got {type(target).__name__}")
        q0 = self.clip(self._q(q0, "ik"))
        goal = pin.SE3(target.rotation, target.position)
        q = q0.copy()
        n = self.n_joints
        lo = self.lower + cfg.limit_margin_rad
        hi = self.upper - cfg.limit_margin_rad
        err_p = err_r = np.inf
        for _ in range(max_iters or cfg.max_iters):
            pin.framesForwardKinematics(self.model, self.data, q)
            cur = self.data.oMf[self.ee_id]
            dM = cur.actInv(goal)  # goal seen from the current end-effector frame
            err = pin.log6(dM).vector  # [linear, angular] in the end-effector frame
            err_p = float(np.linalg.norm(goal.translation - cur.translation))
            err_r = float(np.linalg.norm(err[3:]))
            if err_p < cfg.tol_pos_m and err_r < cfg.tol_rot_rad:
                return q
            J = pin.computeFrameJacobian(self.model, self.data, q, self.ee_id, pin.LOCAL)
            J = -pin.Jlog6(dM.inverse()) @ J
            J_pinv = J.T @ np.linalg.inv(J @ J.T + cfg.damping * np.eye(6))
            dq = -J_pinv @ err
            if cfg.posture_weight > 0:
                dq += (np.eye(n) - J_pinv @ J) @ (cfg.posture_weight * (q0 - q))
            q = np.clip(q + cfg.step * dq, lo, hi)
        raise IKError(
            f"IK failed for target position {np.round(target.position, 4).tolist()} quat "
            f"{np.round(target.quat, 4).tolist()} (frame {cfg.ee_frame!r}): residual {err_p * 100:.1f} cm, "
            f"{np.degrees(err_r):.1f} deg after {max_iters or cfg.max_iters} iterations; the target is out of "
            f"reach or blocked by joint limits -- move it closer to the robot or change the orientation")
