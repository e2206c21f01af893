"""Fakes for the runtime tests: a fake clock, point-mass kinematics, a recording arm that checks
every command it receives against the limits on its own, and scripted experts/cameras."""

from __future__ import annotations

import numpy as np

from edgebridge.contracts import ActionChunk, ArmCommand, ArmState, Pose
from edgebridge.interfaces import DeviceBase
from edgebridge.runtime.config import LoopConfig, SafetyLimits

PERIOD_S = 0.01

LIMITS = SafetyLimits(
    joint_lower=(-0.5, -0.5, 0.0), joint_upper=(0.5, 0.5, 0.8),
    joint_velocity=(0.5, 0.5, 0.5), joint_acceleration=(5.0, 5.0, 5.0),
    workspace_min=(-0.4, -0.4, 0.05), workspace_max=(0.4, 0.4, 0.7))


class FakeClock:
    """Deterministic time: ``sleep_until`` jumps; ``tick`` simulates compute time."""

    realtime = False

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.t = int(start_ns)
        self.slow: dict[int, int] = {}  # cycle index -> extra ns a call to now_ns adds once

    def now_ns(self) -> int:
        return self.t

    def sleep_until(self, deadline_ns: int) -> None:
        self.t = max(self.t, int(deadline_ns))

    def advance(self, ns: int) -> None:
        self.t += int(ns)


class PointKinematics:
    """Three prismatic joints: q = end-effector xyz. Orientation is ignored (always identity)."""

    def fk(self, q) -> Pose:
        return Pose(np.asarray(q, dtype=np.float64))

    def ik(self, target: Pose, q_seed) -> np.ndarray:
        return target.position.copy()


class RecordingArm(DeviceBase):
    """Records every command; independently checks each one against ``limits`` at ``period_s`` and
    lists any violation (the tests assert there are none). The arm follows commands exactly. Its gripper
    reads the commanded opening, but never less than ``held_width``: a grasp closes on an object of that
    width (0: on nothing, an empty grasp)."""

    name = "recording arm"

    def __init__(self, q0=(0.0, 0.0, 0.3), limits: SafetyLimits = LIMITS, period_s: float = PERIOD_S,
                 fail_state_after: int | None = None, fail_command_after: int | None = None, clock=None,
                 held_width: float = 0.5) -> None:
        super().__init__()
        self.clock = clock  # stamps states with this clock (the loop's) when given
        self.q = np.asarray(q0, dtype=np.float64)
        self.gripper = 1.0
        self.held_width = float(held_width)
        self.limits, self.period_s = limits, period_s
        self.commands: list[ArmCommand] = []
        self.violations: list[str] = []
        self.holds = 0
        self.estops = 0
        self.n_state = 0
        self.fail_state_after = fail_state_after
        self.fail_command_after = fail_command_after
        self._v = np.zeros(3)
        self._held = False
        self.connect()

    def state(self) -> ArmState:
        self.n_state += 1
        if self.fail_state_after is not None and self.n_state > self.fail_state_after:
            raise ConnectionError("bus timeout on /dev/ttyFAKE")
        kw = {} if self.clock is None else {"stamp_ns": self.clock.now_ns()}
        return ArmState(self.q.copy(), Pose(self.q.copy()), max(self.gripper, self.held_width), **kw)

    def command(self, cmd: ArmCommand) -> ArmCommand:
        if self.fail_command_after is not None and len(self.commands) >= self.fail_command_after:
            raise ConnectionError("CRC error on /dev/ttyFAKE")
        lim, q = self.limits, np.asarray(cmd.joints)
        tol = 1e-6
        if not np.all(np.isfinite(q)):
            self.violations.append("non-finite")
        if np.any(q < np.array(lim.joint_lower) - tol) or np.any(q > np.array(lim.joint_upper) + tol):
            self.violations.append(f"joint limit {q}")
        if np.any(q < np.array(lim.workspace_min) - tol) or np.any(q > np.array(lim.workspace_max) + tol):
            self.violations.append(f"workspace {q}")
        v = (q - self.q) / self.period_s
        v0 = np.zeros(3) if self._held else self._v
        if np.any(np.abs(v) > np.array(lim.joint_velocity) * (1 + 1e-3)):
            self.violations.append(f"velocity {v}")
        if np.any(np.abs(v - v0) / self.period_s > np.array(lim.joint_acceleration) * (1 + 1e-3)):
            self.violations.append(f"acceleration {(v - v0) / self.period_s}")
        if not lim.gripper_min <= cmd.gripper <= lim.gripper_max:
            self.violations.append(f"gripper {cmd.gripper}")
        self._v, self._held = v, False
        self.q = q.copy()
        self.gripper = cmd.gripper
        self.commands.append(cmd)
        return cmd

    def hold(self) -> None:
        self.holds += 1
        self._held = True
        self._v = np.zeros(3)

    def estop(self) -> None:
        self.estops += 1


def chunk_line(start_ns: int, p0, p1, n: int = 10, dt: float = 0.05, gripper: float = 1.0) -> ActionChunk:
    """A chunk moving linearly from p0 to p1 over n steps, identity orientation."""
    pos = np.linspace(np.asarray(p0, float), np.asarray(p1, float), n)
    poses = np.zeros((n, 8), dtype=np.float32)
    poses[:, :3] = pos
    poses[:, 6] = 1.0
    poses[:, 7] = gripper
    return ActionChunk(poses, start_ns, dt)


def loop_cfg(**kw) -> LoopConfig:
    base = dict(rate_hz=1.0 / PERIOD_S, gc="default", chunk_timeout_s=0.3, blend_s=0.1, max_ee_speed=0.4,
                max_rejections=20)
    base.update(kw)
    return LoopConfig(**base)
