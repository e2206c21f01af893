"""The simulated Panda, behind the same ``Arm`` interface as a real arm driver.

``command`` sets PyBullet joint position targets (after clipping to the joint limits) and the finger
targets, and returns the command actually sent. ``state`` reads joint positions/velocities from the
simulator and computes the end-effector pose with the simulator-independent kinematics
(:mod:`edgebridge.drivers.kinematics`), as a real driver would. No sleeps here: the world's clock
advances time.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..config import check
from ..contracts import ArmCommand, ArmState, now_ns
from ..drivers.kinematics import PANDA_HOME, Kinematics
from ..errors import SafetyViolation
from ..interfaces import DeviceBase
from .world import SimWorld

log = logging.getLogger(__name__)

ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
FINGER_MAX_M = 0.04
EE_LINK = 11  # panda_grasptarget: the kinematics' end-effector frame
# The calibration board's bracket: the board's centre 15 cm in front of the fingers (end-effector x) and 3 cm
# below the grasp point, its face tilted 29 deg from the approach axis so that at the home pose it faces the
# default camera (eye (1, 0, 1), looking at (0.45, 0, 0)).
BOARD_CENTER_EE = (0.15, 0.0, 0.03)
BOARD_TILT_DEG = 29.0


def board_mount(board) -> np.ndarray:
    """T_ee_board of the simulated board bracket for ``board`` (``calib.board.BoardConfig``)."""
    from ..calib.board import board_size_m

    a = math.radians(BOARD_TILT_DEG)
    z = np.array([-math.sin(a), 0.0, math.cos(a)])  # into the board, away from the camera
    x = np.array([0.0, -1.0, 0.0])
    R = np.column_stack([x, np.cross(z, x), z])
    w, h = board_size_m(board)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(BOARD_CENTER_EE) - R @ np.array([w / 2, h / 2, 0.0])
    return T


@dataclass(frozen=True)
class SimArmConfig:
    """Position-control settings of the simulated Panda (see docs/sim.md: gain 0.05, 40 N fingers)."""

    home: tuple[float, ...] = PANDA_HOME
    position_gain: float = 0.05
    max_joint_velocity: float = 2.0
    joint_forces: tuple[float, ...] = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
    finger_force: float = 40.0
    finger_gain: float = 0.03

    def __post_init__(self) -> None:
        check(len(self.home) == 7, "arm.home", f"expected 7 joint values, got {len(self.home)}")
        check(0 < self.position_gain <= 1, "arm.position_gain", f"must lie in (0, 1], got {self.position_gain}")
        check(self.max_joint_velocity > 0, "arm.max_joint_velocity", f"must be > 0, got {self.max_joint_velocity}")
        check(len(self.joint_forces) == 7 and all(f > 0 for f in self.joint_forces), "arm.joint_forces",
              f"expected 7 positive forces, got {self.joint_forces}")
        check(self.finger_force > 0, "arm.finger_force", f"must be > 0, got {self.finger_force}")


class SimArm(DeviceBase):
    """A Franka Panda in a :class:`SimWorld`; implements :class:`~edgebridge.interfaces.Arm`."""

    name = "sim arm (panda)"

    def __init__(self, world: SimWorld, config: SimArmConfig | None = None,
                 kinematics: Kinematics | None = None) -> None:
        super().__init__()
        self.world = world
        self.config = config or SimArmConfig()
        self.kin = kinematics or Kinematics()
        if self.kin.n_joints != len(ARM_JOINTS):
            raise ValueError(f"SimArm: kinematics has {self.kin.n_joints} joints, the Panda has {len(ARM_JOINTS)}")
        self._estopped = False
        self._guided = False
        self._last: ArmCommand | None = None
        self.board = None  # the attached calibration board (world.Attachment), if any
        self.reset(self.config.home, gripper=1.0)

    # ------------------------------------------------------------------ lifetime
    def connect(self) -> None:
        self._estopped = False
        super().connect()

    def disconnect(self) -> None:
        if self._connected:
            self.hold()
        super().disconnect()

    def reset(self, joints, gripper: float = 1.0) -> None:
        """Teleport the arm to ``joints`` and hold there (scene setup; not a command)."""
        q = self.kin.clip(joints)
        p = self.world.p
        for j, v in zip(ARM_JOINTS, q):
            p.resetJointState(self.world.robot, j, float(v))
        for j in FINGER_JOINTS:
            p.resetJointState(self.world.robot, j, float(gripper) * FINGER_MAX_M)
        self._send(q, float(gripper))

    # ------------------------------------------------------------------ Arm interface
    def state(self) -> ArmState:
        self._require_connected()
        self.world.sync()
        js = self.world.p.getJointStates(self.world.robot, list(ARM_JOINTS) + list(FINGER_JOINTS))
        q = np.array([s[0] for s in js[:7]])
        dq = np.array([s[1] for s in js[:7]])
        fingers = sum(s[0] for s in js[7:]) / (2 * FINGER_MAX_M)
        return ArmState(joints=q, ee_pose=self.kin.fk(q), gripper=float(np.clip(fingers, 0.0, 1.0)),
                        joint_velocities=dq, stamp_ns=self._stamp())

    def command(self, cmd: ArmCommand) -> ArmCommand:
        """Send joint position targets (clipped to the limits) and the gripper; return what was sent."""
        self._require_connected()
        if self._estopped:
            raise SafetyViolation(f"{self.name}: emergency stop is latched; reconnect to clear it before commanding")
        if self._guided:
            raise SafetyViolation(f"{self.name}: torque is off (moved by hand); leave torque_disabled() first")
        if not isinstance(cmd, ArmCommand):
            raise TypeError(f"{self.name}.command: expected an ArmCommand, got {type(cmd).__name__}")
        if cmd.joints.shape != (7,):
            raise SafetyViolation(f"{self.name}.command: expected 7 joint targets, got {cmd.joints.shape[0]}; "
                                  f"command not sent")
        q = self.kin.clip(cmd.joints)
        if not np.allclose(q, cmd.joints):
            log.debug("%s: clipped joint targets to the limits (%s)", self.name, np.round(cmd.joints - q, 4))
        sent = ArmCommand(joints=q, gripper=cmd.gripper, ee_target=cmd.ee_target, stamp_ns=self._stamp())
        self._send(q, sent.gripper)
        self._last = sent
        return sent

    def hold(self) -> None:
        """Hold the current joint positions and gripper target."""
        p = self.world.p
        js = p.getJointStates(self.world.robot, list(ARM_JOINTS))
        grip = self._last.gripper if self._last is not None else 1.0
        self._send(np.array([s[0] for s in js]), grip)

    def estop(self) -> None:
        """Hold position and refuse further commands until reconnected."""
        self.hold()
        self._estopped = True
        log.warning("%s: emergency stop", self.name)

    # ------------------------------------------------------------------ calibration
    def attach_board(self, board, T_ee_board: np.ndarray | None = None) -> np.ndarray:
        """Mount a calibration board (``calib.board.BoardConfig``) on the gripper at ``T_ee_board``
        (default: :func:`board_mount`), rendered by the camera; returns T_ee_board."""
        T = board_mount(board) if T_ee_board is None else np.asarray(T_ee_board, dtype=np.float64)
        if self.board is not None:
            self.world.detach(self.board)
        self.board = self.world.attach_board(board, T, link=EE_LINK)
        return T.copy()

    @contextlib.contextmanager
    def torque_disabled(self) -> Iterator[None]:
        """Torque off for the block: the arm goes where a hand puts it (:meth:`guide`; gravity is
        compensated, as in a Franka's guiding mode) and ``command`` refuses; afterwards it holds there."""
        self._require_connected()
        self._guided = True
        try:
            yield
        finally:
            self._guided = False
            self.hold()

    def guide(self, joints) -> None:
        """The owner's hand moves the arm to ``joints`` (only while torque is off)."""
        if not self._guided:
            raise SafetyViolation(f"{self.name}: guide() moves the arm by hand; call it inside torque_disabled()")
        q = self.kin.clip(joints)
        for j, v in zip(ARM_JOINTS, q):
            self.world.p.resetJointState(self.world.robot, j, float(v))
        self._send(q, self._last.gripper if self._last is not None else 1.0)

    @property
    def last_command(self) -> ArmCommand | None:
        return self._last

    # ------------------------------------------------------------------ internals
    def _stamp(self) -> int:
        return int(self.world.clock.now_ns()) if not self.world.clock.realtime else now_ns()

    def _send(self, q: np.ndarray, gripper: float) -> None:
        p = self.world.p
        c = self.config
        for j, v, f in zip(ARM_JOINTS, q, c.joint_forces):
            p.setJointMotorControl2(self.world.robot, j, p.POSITION_CONTROL, targetPosition=float(v), force=f,
                                    positionGain=c.position_gain, maxVelocity=c.max_joint_velocity)
        for j in FINGER_JOINTS:
            p.setJointMotorControl2(self.world.robot, j, p.POSITION_CONTROL, targetPosition=gripper * FINGER_MAX_M,
                                    force=c.finger_force, positionGain=c.finger_gain)
