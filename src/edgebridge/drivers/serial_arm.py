"""A servo-bus arm (SO-100 / SO-101 with Feetech STS3215 servos) implementing the ``Arm`` interface.

- ``state()``: one SYNC_READ of Present_Position over all servos -> joints (rad) and gripper [0, 1];
  the end-effector pose comes from forward kinematics of the URDF.
- ``command(cmd)``: one SYNC_WRITE of Goal_Position; targets are clipped to the calibrated tick
  ranges (and optionally to ``max_relative_target_rad`` from the present position); returns the
  command that was actually sent, in radians.
- ``hold()``: goal = present. ``estop()``: torque off on every servo; ``command`` then refuses until
  ``resume()``.
- ``connect()`` pings every servo and checks its model, sets goal = present before enabling torque
  (the arm never jumps); ``disconnect()`` holds and, unless configured otherwise, disables torque,
  always closing the port.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from ..config import check
from ..contracts import ArmCommand, ArmState, Pose, now_ns
from ..errors import DeviceFaultError
from ..interfaces import DeviceBase
from .arm_calibration import ArmCalibration
from .servo_bus import ServoBus, ServoBusConfig

log = logging.getLogger(__name__)

SO101_DIR = Path(__file__).resolve().parent.parent / "assets" / "robots" / "so101"
SO101_URDF = SO101_DIR / "so101.urdf"
SO101_DEFAULT_CALIBRATION = SO101_DIR / "calibration" / "so101_default.toml"


class ForwardKinematics(Protocol):
    """What the arm needs from a kinematics model: joints (rad) -> end-effector pose in the base frame."""

    def fk(self, q: np.ndarray) -> Pose: ...


def make_kinematics(urdf: str, ee_frame: str, joint_names: tuple[str, ...]) -> ForwardKinematics:
    """Pinocchio forward kinematics for the calibrated joints of ``urdf``."""
    from .kinematics import Kinematics, KinematicsConfig

    return Kinematics(KinematicsConfig(urdf=urdf, ee_frame=ee_frame, joint_names=joint_names))


@dataclass(frozen=True)
class SerialArmConfig:
    """A Feetech servo-bus arm (``[arm]`` table of the robot setup, with ``kind = "serial"`` upstream).

    ``calibration``: the joint calibration file of this arm (one per arm id, see ``arm_calibration``).
    ``max_relative_target_rad``: if set, each command moves a joint at most this far from its present
    position (the rest is clipped, and the returned command says so).
    ``acceleration``: if set, written to every servo's Acceleration register on connect (0-254).
    """

    port: str
    calibration: str = str(SO101_DEFAULT_CALIBRATION)
    urdf: str = str(SO101_URDF)
    ee_frame: str = "gripper_frame"
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 1
    max_relative_target_rad: float | None = None
    acceleration: int | None = None
    read_velocity: bool = False
    disable_torque_on_disconnect: bool = True

    def __post_init__(self) -> None:
        check(isinstance(self.port, str) and bool(self.port), "port", f"expected a serial device path, got {self.port!r}")
        check(Path(self.calibration).is_file(), "calibration", f"file not found: {self.calibration}")
        check(Path(self.urdf).is_file(), "urdf", f"file not found: {self.urdf}")
        check(self.max_relative_target_rad is None or self.max_relative_target_rad > 0, "max_relative_target_rad",
              f"must be > 0 or unset, got {self.max_relative_target_rad}")
        check(self.acceleration is None or 0 <= self.acceleration <= 254, "acceleration",
              f"must be in [0, 254] or unset, got {self.acceleration}")
        ServoBusConfig(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, retries=self.retries)


class SerialArm(DeviceBase):
    """Feetech servo-bus arm (see module docstring)."""

    def __init__(self, config: SerialArmConfig, kinematics: ForwardKinematics | None = None) -> None:
        super().__init__()
        self.config = config
        self.calibration = ArmCalibration.load(config.calibration)
        self.name = f"serial arm {self.calibration.arm_id!r} on {config.port}"
        self.bus = ServoBus(ServoBusConfig(config.port, model=self.calibration.model, baudrate=config.baudrate,
                                           timeout_s=config.timeout_s, retries=config.retries))
        self._kin = kinematics
        self._estopped = False
        self.last_sent: ArmCommand | None = None

    @property
    def n_joints(self) -> int:
        return len(self.calibration.joints)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.calibration.joint_names

    @property
    def estopped(self) -> bool:
        return self._estopped

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self._connected:
            return
        if self._kin is None:
            self._kin = make_kinematics(self.config.urdf, self.config.ee_frame, self.calibration.joint_names)
        self.bus.open()
        try:
            self._check_servos()
            if self.config.acceleration is not None:
                with self._torque_off():
                    self.bus.sync_write("Acceleration", {i: self.config.acceleration for i in self.calibration.all_ids})
            self._hold_goals()
            self._set_torque(True)
        except BaseException:
            self.bus.close()
            raise
        self._estopped = False
        self._connected = True
        log.info("%s connected (%d joints + gripper)", self.name, self.n_joints)

    def disconnect(self) -> None:
        if not self._connected:
            self.bus.close()
            return
        try:
            if not self._estopped:
                self._hold_goals()
            if self.config.disable_torque_on_disconnect:
                self._set_torque(False)
        except DeviceFaultError as e:
            log.error("%s: could not hold / release torque while disconnecting: %s", self.name, e)
        finally:
            self.bus.close()
            self._connected = False

    def _check_servos(self) -> None:
        ids = self.calibration.all_ids
        missing = [i for i in ids if not self.bus.ping(i)]
        if missing:
            raise DeviceFaultError(
                f"{self.name}: servo id(s) {missing} did not answer a ping (expected ids {list(ids)}); check the "
                f"power supply (the USB cable alone does not power the servos), the baud rate "
                f"({self.config.baudrate}) and the ids written to each servo")
        want = self.bus.model.model_number
        for i in ids:
            got = self.bus.read(i, "Model_Number")
            if got != want:
                raise DeviceFaultError(f"{self.name}: servo {i} reports model number {got}, calibration says "
                                       f"{self.calibration.model} ({want}); fix the calibration file's 'model'")

    # ------------------------------------------------------------------ torque helpers
    def _set_torque(self, on: bool) -> None:
        self.bus.sync_write("Torque_Enable", {i: int(on) for i in self.calibration.all_ids})

    @contextlib.contextmanager
    def _torque_off(self) -> Iterator[None]:
        self._set_torque(False)
        try:
            yield
        finally:
            self._set_torque(True)

    @contextlib.contextmanager
    def torque_disabled(self) -> Iterator[None]:
        """Torque off for the duration of the block (to move the arm by hand); restored afterwards with
        goal = present, so the arm stays where it was left."""
        self._require_connected()
        self._set_torque(False)
        try:
            yield
        finally:
            if not self._estopped:
                self._hold_goals()
                self._set_torque(True)

    # ------------------------------------------------------------------ Arm interface
    def _read_ticks(self) -> dict[int, int]:
        return self.bus.sync_read("Present_Position", self.calibration.all_ids)

    def state(self) -> ArmState:
        self._require_connected()
        ticks = self._read_ticks()
        stamp = now_ns()
        cal = self.calibration
        q = cal.ticks_to_rad([ticks[i] for i in cal.joint_ids])
        qd = None
        if self.config.read_velocity:
            v = self.bus.sync_read("Present_Velocity", cal.joint_ids)
            qd = cal.velocity_to_rad([v[i] for i in cal.joint_ids])
        return ArmState(joints=q, ee_pose=self._kin.fk(q), gripper=cal.gripper_to_unit(ticks[cal.gripper.id]),
                        joint_velocities=qd, stamp_ns=stamp)

    def command(self, cmd: ArmCommand) -> ArmCommand:
        """Send ``cmd`` (clipped to the calibrated ranges); returns what was actually sent."""
        self._require_connected()
        if self._estopped:
            raise DeviceFaultError(f"{self.name}: emergency stop is active (torque off); call resume() "
                                   f"once the arm is safe, then command again")
        if not isinstance(cmd, ArmCommand):
            raise TypeError(f"{self.name}: command() takes an ArmCommand, got {type(cmd).__name__}")
        cal = self.calibration
        if cmd.joints.shape != (self.n_joints,):
            raise ValueError(f"{self.name}: command has {cmd.joints.shape[0]} joints, the arm has {self.n_joints} "
                             f"({', '.join(cal.joint_names)})")
        q = cmd.joints
        if self.config.max_relative_target_rad is not None:
            present = cal.ticks_to_rad([self._read_ticks()[i] for i in cal.joint_ids])
            d = self.config.max_relative_target_rad
            q = np.clip(q, present - d, present + d)
        ticks = cal.rad_to_ticks(q)
        grip = cal.unit_to_gripper(cmd.gripper)
        goals = {jid: int(t) for jid, t in zip(cal.joint_ids, ticks)}
        goals[cal.gripper.id] = grip
        self.bus.sync_write("Goal_Position", goals)
        sent = ArmCommand(joints=cal.ticks_to_rad(ticks), gripper=cal.gripper_to_unit(grip),
                          ee_target=cmd.ee_target, stamp_ns=now_ns())
        self.last_sent = sent
        return sent

    def _hold_goals(self) -> dict[int, int]:
        ticks = self._read_ticks()
        self.bus.sync_write("Goal_Position", ticks)
        return ticks

    def hold(self) -> None:
        """Stop where the arm is: goal = present position on every servo."""
        self._require_connected()
        self._hold_goals()

    def estop(self) -> None:
        """Torque off on every servo, immediately (no read first). Sent twice: a SYNC_WRITE gets no answer."""
        self._require_connected()
        self._estopped = True
        err: Exception | None = None
        for _ in range(2):
            try:
                self._set_torque(False)
            except DeviceFaultError as e:
                err = e
        if err is not None:
            raise DeviceFaultError(f"{self.name}: emergency stop could not be written to the bus ({err}); "
                                   f"cut the servo power supply") from err
        log.warning("%s: emergency stop, torque disabled", self.name)

    def resume(self) -> None:
        """Leave the emergency stop: goal = present, then torque on."""
        self._require_connected()
        self._hold_goals()
        self._set_torque(True)
        self._estopped = False
