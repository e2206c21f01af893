"""The teleoperation control loop: one arm driven by one teleoperation device through the safety layer
(:class:`TeleopLoop`, used by ``runtime.teleop``), with the position-only IK fallback for targets whose
full pose is out of reach."""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from ..contracts import ArmState, Pose
from ..datasets.edge_features import pose_row
from ..drivers.teleop_devices import EEDelta, JointTarget
from .config import SafetyLimits
from .loop import PeriodStats
from .safety import JointLimiter, SafetyLayer

log = logging.getLogger(__name__)


def _position_ik(kin, target: np.ndarray, q0: np.ndarray, lower, upper, iters: int = 30) -> np.ndarray:
    """Joints putting the end effector at ``target`` (3,) whatever its orientation: damped least squares
    on a finite-difference position Jacobian (for arms with fewer than six joints, where the full pose
    of a translated target may not be reachable)."""
    q = np.array(q0, np.float64)
    for _ in range(iters):
        p = kin.fk(q).position
        err = target - p
        if np.linalg.norm(err) < 5e-4:
            break
        J = np.empty((3, len(q)))
        for i in range(len(q)):
            dq = np.zeros(len(q))
            dq[i] = 1e-5
            J[:, i] = (kin.fk(q + dq).position - p) / 1e-5
        q = np.clip(q + J.T @ np.linalg.solve(J @ J.T + 1e-4 * np.eye(3), err), lower, upper)
    return q


class TeleopLoop:
    """One arm driven by one teleoperation device through the safety layer (module docstring).
    ``latest`` is (state, action row (8,), joints sent) of the last tick, for the frame sampler."""

    def __init__(self, arm, kinematics, limits: SafetyLimits, period_s: float, device, *,
                 max_rejections: int = 50) -> None:
        self.arm, self.kin, self.device, self.limits = arm, kinematics, device, limits
        self.period_s = float(period_s)
        self.period_ns = int(round(period_s * 1e9))
        self.safety = SafetyLayer(limits, self.period_s, fk=kinematics.fk)
        self.limiter = JointLimiter(limits, self.period_s)
        self.lower = np.asarray(limits.joint_lower, np.float64)
        self.upper = np.asarray(limits.joint_upper, np.float64)
        self.max_rejections = max_rejections
        self.stats = PeriodStats(self.period_ns)
        self.sent = self.holds = self.ik_failures = 0
        self.fault: str | None = None
        self.latest: tuple[ArmState, np.ndarray, np.ndarray] | None = None
        self._recent: deque[int] = deque()
        self._holding = False

    def prepare(self) -> ArmState:
        """Power the arm holding where it is (``enable``), read it, and start every target there."""
        enable = getattr(self.arm, "enable", None)
        if callable(enable):
            enable()
        st = self.arm.state()
        self.limiter.reset(st.joints)
        self.safety.reset(st.joints)
        self.q_target = st.joints.copy()
        self.gripper = float(np.clip(st.gripper, self.limits.gripper_min, self.limits.gripper_max))
        self.ee_target = st.ee_pose
        self.latest = (st, pose_row(st.ee_pose.position, st.ee_pose.quat, self.gripper), st.joints.copy())
        return st

    def step(self, now_ns: int, dt_s: float | None = None) -> bool:
        """One control tick (``dt_s``: the time since the last one, default one period); False once the arm
        faulted or too many commands were rejected (``fault``)."""
        if self.fault is not None:
            return False
        try:
            st = self.arm.state()
        except Exception as e:  # noqa: BLE001 - a driver fault ends the episode, the arm is held
            return self._fail(f"arm driver fault in state(): {type(e).__name__}: {e}")
        self._target(self.device.read(self.period_s if dt_s is None else dt_s))
        verdict = self.safety.validate(self.limiter.step(self.q_target), self.gripper, now_ns, ee_target=None)
        if verdict.ok:
            self._send(verdict.command, st)
        else:
            self._rejected(now_ns, f"{verdict.reason}: {verdict.detail}", st)
        return self.fault is None

    def _target(self, cmd) -> None:
        lim = self.limits
        if isinstance(cmd, JointTarget):
            q = np.asarray(cmd.joints, np.float64)
            if q.shape != self.q_target.shape or not np.all(np.isfinite(q)):
                self.fault = (f"the teleoperation device gave joints of shape {q.shape} (non-finite or not "
                              f"{len(self.q_target)} joints); its joints must be the follower's")
                return
            self.q_target = np.clip(q, self.lower, self.upper)
            self.gripper = float(np.clip(cmd.gripper, lim.gripper_min, lim.gripper_max))
            return
        if not isinstance(cmd, EEDelta):
            raise TypeError(f"teleoperation device returned {type(cmd).__name__}, not a JointTarget or EEDelta")
        if cmd.gripper is not None:
            self.gripper = float(np.clip(cmd.gripper, lim.gripper_min, lim.gripper_max))
        if not (np.any(cmd.translation) or np.any(cmd.rotation)):
            return
        from scipy.spatial.transform import Rotation

        from ..rotations import matrix_to_quat

        pos = np.clip(self.ee_target.position + np.asarray(cmd.translation, np.float64), lim.workspace_min,
                      lim.workspace_max)
        rot = Rotation.from_rotvec(np.asarray(cmd.rotation, np.float64)).as_matrix() @ self.ee_target.rotation
        target = Pose(pos, matrix_to_quat(rot))
        try:
            self.q_target = np.asarray(self.kin.ik(target, self.q_target), np.float64)
            self.ee_target = target
        except ValueError:  # IKError: the full pose is out of reach; keep the position, let the orientation go
            self.ik_failures += 1
            self.q_target = _position_ik(self.kin, pos, self.q_target, self.lower, self.upper)
            self.ee_target = self.kin.fk(self.q_target)

    def _send(self, cmd, st: ArmState) -> None:
        try:
            sent = self.arm.command(cmd)
        except Exception as e:  # noqa: BLE001
            self._fail(f"arm driver fault in command(): {type(e).__name__}: {e}")
            return
        sent = sent if sent is not None else cmd
        self.limiter.commit(cmd.joints)
        self._holding = False
        self.sent += 1
        ee = self.kin.fk(sent.joints)
        self.latest = (st, pose_row(ee.position, ee.quat, sent.gripper), np.asarray(sent.joints, np.float64))

    def _rejected(self, now_ns: int, why: str, st: ArmState) -> None:
        recent = self._recent
        recent.append(now_ns)
        while recent and now_ns - recent[0] > 1_000_000_000:
            recent.popleft()
        if len(recent) == 1:
            log.warning("command rejected (%s); braking", why)
        if len(recent) >= self.max_rejections:
            self._fail(f"{len(recent)} commands rejected within 1 s, last: {why}; bring the leader (or the target) "
                       f"back within the follower's limits")
            return
        verdict = self.safety.validate(self.limiter.decelerate(), self.latest[1][7], now_ns)
        if verdict.ok and not self.limiter.stopped:
            self._send(verdict.command, st)
        else:
            self.hold()

    def hold(self) -> None:
        """``Arm.hold()`` once; the limiter and the safety reference restart from rest."""
        if not self._holding:
            try:
                self.arm.hold()
            except Exception as e:  # noqa: BLE001
                self.fault = self.fault or f"arm driver fault in hold(): {type(e).__name__}: {e}"
                return
            self.holds += 1
            self._holding = True
        self.limiter.reset(self.limiter.q)
        self.safety.reset(self.limiter.q)

    def _fail(self, why: str) -> bool:
        self.fault = self.fault or why
        log.error("%s", why)
        self.hold()
        return False
