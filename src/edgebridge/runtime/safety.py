"""The safety layer between the control loop and the arm.

Every command is validated before it may be sent: finite values, joint count, joint position limits,
joint velocity and acceleration limits (against the last *sent* command, at the loop period), the
workspace box (FK of the commanded joints) and the gripper range. Only :meth:`SafetyLayer.validate`
creates the ``ArmCommand`` a driver receives; a command that fails is never built, the reason is
counted and returned. There is no command without a reference: until :meth:`SafetyLayer.reset` was given
a finite pose (and velocity) of the right size, every command is rejected (``no_reference``), so the
velocity and acceleration checks can never be skipped; a non-finite reference is refused with a
``ValueError`` (and clears the old one).

:class:`JointLimiter` shapes the loop's joint targets so that they respect the velocity and
acceleration limits by construction (it decelerates ahead of the target instead of overshooting);
the safety layer then re-checks them independently. The limits are data (``[limits]`` in the robot
TOML, :class:`edgebridge.runtime.config.SafetyLimits`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..contracts import ArmCommand, Pose
from .config import SafetyLimits

log = logging.getLogger(__name__)

# Rejection reasons (stable strings: counted, logged, reported).
NON_FINITE = "non_finite"
JOINT_COUNT = "joint_count"
JOINT_LIMIT = "joint_limit"
VELOCITY_LIMIT = "velocity_limit"
ACCELERATION_LIMIT = "acceleration_limit"
WORKSPACE = "workspace"
GRIPPER_RANGE = "gripper_range"
FK_FAILED = "fk_failed"
IK_FAILED = "ik_failed"
NO_REFERENCE = "no_reference"
REASONS = (NON_FINITE, JOINT_COUNT, JOINT_LIMIT, VELOCITY_LIMIT, ACCELERATION_LIMIT, WORKSPACE,
           GRIPPER_RANGE, FK_FAILED, IK_FAILED, NO_REFERENCE)


def _period(owner: str, period_s: float) -> float:
    try:
        p = float(period_s)
    except (TypeError, ValueError):
        p = math.nan
    if isinstance(period_s, bool) or not (math.isfinite(p) and p > 0):
        raise ValueError(f"{owner}.period_s: must be a finite number > 0, got {period_s!r}")
    return p


def _joint_vector(owner: str, name: str, value, n: int) -> np.ndarray:
    """``value`` as a finite float64 vector of ``n`` joints, or a ValueError naming ``name``."""
    try:
        x = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{owner}.reset: {name}: expected {n} numbers ({e})") from e
    if x.shape != (n,):
        raise ValueError(f"{owner}.reset: {name}: expected {n} joints, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{owner}.reset: {name}: non-finite reference {x}; reset from a measured state")
    return x


class Kinematics(Protocol):
    """Forward/inverse kinematics of the arm (``edgebridge.drivers.kinematics`` implements it)."""

    def fk(self, q: np.ndarray) -> Pose: ...
    def ik(self, target: Pose, q_seed: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Verdict:
    """The outcome of one validation: ``command`` is set iff ``ok``; otherwise ``reason`` and ``detail``."""

    ok: bool
    command: ArmCommand | None = None
    reason: str = ""
    detail: str = ""


class SafetyLayer:
    """Validates joint commands against :class:`SafetyLimits`.

    ``fk``: joints -> end-effector ``Pose`` for the workspace check (None = skip it, with a warning once).
    ``period_s``: the control period the velocity/acceleration checks use.
    ``reset(q, v)`` sets the reference (last sent joints and velocity), e.g. from the measured state
    after a hold; every accepted command becomes the new reference. Without a reference every command
    is rejected (``no_reference``); ``reset`` refuses a non-finite or wrongly sized reference.
    """

    def __init__(self, limits: SafetyLimits, period_s: float, fk: Callable[[np.ndarray], Pose] | None = None) -> None:
        self.limits = limits
        self.period_s = _period("SafetyLayer", period_s)
        self.fk = fk
        self.lower = np.asarray(limits.joint_lower, dtype=np.float64)
        self.upper = np.asarray(limits.joint_upper, dtype=np.float64)
        slack = 1.0 + limits.tolerance
        self.vmax = np.asarray(limits.joint_velocity, dtype=np.float64) * slack
        self.amax = np.asarray(limits.joint_acceleration, dtype=np.float64) * slack
        self.ws_min = np.asarray(limits.workspace_min, dtype=np.float64)
        self.ws_max = np.asarray(limits.workspace_max, dtype=np.float64)
        self.rejections: Counter[str] = Counter()
        self.accepted = 0
        self._q_ref: np.ndarray | None = None
        self._v_ref = np.zeros(limits.n_joints)
        if fk is None:
            log.warning("safety: no forward kinematics given; the workspace-box check is disabled")

    def reset(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Set the reference to joints ``q`` moving at ``v`` (None: at rest). A non-finite or wrongly
        sized ``q`` or ``v`` raises ``ValueError`` naming it, and leaves no reference (every command is
        then rejected until a good reset)."""
        n = self.limits.n_joints
        self._q_ref = None
        q_ref = _joint_vector("SafetyLayer", "q", q, n)
        self._v_ref = np.zeros(n) if v is None else _joint_vector("SafetyLayer", "v", v, n)
        self._q_ref = q_ref

    @property
    def reference(self) -> np.ndarray | None:
        return None if self._q_ref is None else self._q_ref.copy()

    def reject(self, reason: str, detail: str) -> Verdict:
        self.rejections[reason] += 1
        return Verdict(False, None, reason, detail)

    def validate(self, q: np.ndarray, gripper: float, stamp_ns: int, ee_target: Pose | None = None) -> Verdict:
        """Check ``q`` / ``gripper``; on success return the ``ArmCommand`` to send and update the reference."""
        lim = self.limits
        q = np.asarray(q, dtype=np.float64)
        if q.shape != self.lower.shape:
            return self.reject(JOINT_COUNT, f"expected {lim.n_joints} joints, got shape {q.shape}")
        if not np.all(np.isfinite(q)) or not np.isfinite(gripper):
            return self.reject(NON_FINITE, f"non-finite joints {q} or gripper {gripper}")
        bad = np.flatnonzero((q < self.lower) | (q > self.upper))
        if bad.size:
            j = int(bad[0])
            return self.reject(JOINT_LIMIT, f"joint {j} = {q[j]:.4f} rad outside [{self.lower[j]}, {self.upper[j]}]")
        if not lim.gripper_min <= gripper <= lim.gripper_max:
            return self.reject(GRIPPER_RANGE, f"gripper {gripper:.4f} outside [{lim.gripper_min}, {lim.gripper_max}]")
        if self._q_ref is None:
            return self.reject(NO_REFERENCE, "no reference state to check velocity and acceleration against; "
                                             "reset(measured joints) first")
        v = (q - self._q_ref) / self.period_s
        bad = np.flatnonzero(~(np.abs(v) <= self.vmax))  # NaN fails too
        if bad.size:
            j = int(bad[0])
            return self.reject(VELOCITY_LIMIT, f"joint {j} velocity {v[j]:.3f} rad/s exceeds {self.vmax[j]:.3f}")
        a = (v - self._v_ref) / self.period_s
        bad = np.flatnonzero(~(np.abs(a) <= self.amax))
        if bad.size:
            j = int(bad[0])
            return self.reject(ACCELERATION_LIMIT,
                               f"joint {j} acceleration {a[j]:.2f} rad/s^2 exceeds {self.amax[j]:.2f}")
        if self.fk is not None:
            try:
                ee = self.fk(q).position
            except Exception as e:  # a kinematics failure is a rejection, never a crash of the loop
                return self.reject(FK_FAILED, f"forward kinematics raised {type(e).__name__}: {e}")
            out = np.flatnonzero((ee < self.ws_min) | (ee > self.ws_max))
            if out.size:
                return self.reject(WORKSPACE, f"end effector {np.round(ee, 4)} outside the workspace box "
                                              f"[{self.ws_min}, {self.ws_max}]")
        cmd = ArmCommand(q, float(gripper), ee_target, stamp_ns)
        self._v_ref = v
        self._q_ref = q
        self.accepted += 1
        return Verdict(True, cmd)


class JointLimiter:
    """Second-order shaping of joint targets: per tick, velocity within ``vmax`` and its change within
    ``amax * dt``, braking early (the speed from which discrete braking still stops at the target) so targets are approached without overshoot.
    ``margin`` (< 1) keeps the shaped command strictly inside the safety layer's limits.
    """

    def __init__(self, limits: SafetyLimits, period_s: float, margin: float = 0.98) -> None:
        self.dt = _period("JointLimiter", period_s)
        self.vmax = np.asarray(limits.joint_velocity, dtype=np.float64) * margin
        self.amax = np.asarray(limits.joint_acceleration, dtype=np.float64) * margin
        self.q: np.ndarray | None = None
        self.v = np.zeros(limits.n_joints)

    def reset(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Start from joints ``q`` moving at ``v`` (None: at rest); non-finite or wrongly sized: ValueError."""
        n = len(self.vmax)
        self.q = None
        q = _joint_vector("JointLimiter", "q", q, n)
        self.v = np.zeros(n) if v is None else _joint_vector("JointLimiter", "v", v, n)
        self.q = q

    def step(self, q_target: np.ndarray) -> np.ndarray:
        """The next command towards ``q_target`` (does not commit: call :meth:`commit` once it was sent)."""
        if self.q is None:
            raise RuntimeError("JointLimiter.step: call reset(measured_joints) first")
        dt, amax = self.dt, self.amax
        err = q_target - self.q
        # Fastest speed from which discrete braking (dv = amax * dt per tick) still stops within |err|:
        # v dt + v^2 / (2 amax) + v dt / 2 <= |err|.
        v_brake = amax * (np.sqrt(2.25 * dt * dt + 2.0 * np.abs(err) / amax) - 1.5 * dt)
        v_des = np.clip(err / dt, -np.minimum(self.vmax, v_brake), np.minimum(self.vmax, v_brake))
        dv = np.clip(v_des - self.v, -amax * dt, amax * dt)
        v = self.v + dv
        return self.q + v * dt

    def decelerate(self) -> np.ndarray:
        """The next command when stopping: velocity reduced by ``amax * dt`` towards zero."""
        if self.q is None:
            raise RuntimeError("JointLimiter.decelerate: call reset(measured_joints) first")
        dv = np.clip(-self.v, -self.amax * self.dt, self.amax * self.dt)
        return self.q + (self.v + dv) * self.dt

    def commit(self, q_sent: np.ndarray) -> None:
        q_sent = np.asarray(q_sent, dtype=np.float64)
        self.v = (q_sent - self.q) / self.dt
        self.q = q_sent.copy()

    @property
    def stopped(self) -> bool:
        return bool(np.all(np.abs(self.v) < 1e-9))
