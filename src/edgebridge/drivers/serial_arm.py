"""A servo-bus arm (SO-100 / SO-101 on Feetech STS3215, Koch and other Dynamixel X arms) implementing ``Arm``.

- ``state()``: one SYNC_READ of Present_Position (with Present_Velocity in the same read when asked)
  -> joints (rad) and gripper [0, 1]; the end-effector pose comes from forward kinematics of the URDF.
- ``command(cmd)``: one SYNC_WRITE of Goal_Position; targets are clipped to the calibrated tick
  ranges (and optionally to ``max_relative_target_rad`` from the present position, taken from the last
  ``state()`` when it is fresh, else one SYNC_READ); returns the command that was actually sent, in radians.
- The arm never moves on its own. ``connect()`` pings every servo, checks its model and operating mode,
  writes goal = present (read back) and leaves torque as it found it. ``enable()`` turns torque on after
  goal = present has been written and read back; the first ``command()`` or ``hold()`` calls it when
  nobody has. ``hold()``: goal = present. ``estop()``: torque off on every servo; ``command`` then
  refuses until ``resume()``. ``disconnect()`` holds, turns torque off on every servo whatever else failed
  (unless configured otherwise), closes the port, and then reports what failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from ..config import ConfigError, check
from ..contracts import ArmCommand, ArmState, Pose, now_ns
from ..errors import DeviceFaultError
from ..interfaces import DeviceBase
from .arm_calibration import ArmCalibration
from .servo_bus import ServoBus, ServoBusConfig
from .servo_protocol import PROTOCOLS

log = logging.getLogger(__name__)

ROBOTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "robots"
SO101_DIR = ROBOTS_DIR / "so101"
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
    """A servo-bus arm (``[arm.options]`` of the robot setup).

    ``protocol``: ``feetech`` (default) or ``dynamixel2``; the calibration's servo models must speak it.
    ``calibration``: the joint calibration file of this arm (one per arm id, see ``arm_calibration``);
    ``calibration`` and ``urdf`` may name shipped files relative to ``assets/robots``.
    ``max_relative_target_rad``: if set, each command moves a joint at most this far from its present
    position (the rest is clipped, and the returned command says so); the present position is the last
    ``state()`` if it is at most ``present_max_age_s`` old, else a fresh read.
    ``acceleration``: if set, written to every servo's profile acceleration on connect (Feetech
    Acceleration 0-254, Dynamixel Profile_Acceleration 0-32767).
    """

    port: str
    calibration: str = str(SO101_DEFAULT_CALIBRATION)
    urdf: str = str(SO101_URDF)
    ee_frame: str = "gripper_frame"
    protocol: str = "feetech"
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 1
    max_relative_target_rad: float | None = None
    present_max_age_s: float = 0.02
    acceleration: int | None = None
    read_velocity: bool = False
    disable_torque_on_disconnect: bool = True

    def __post_init__(self) -> None:
        check(isinstance(self.port, str) and bool(self.port), "port", f"expected a serial device path, got {self.port!r}")
        for name in ("calibration", "urdf"):  # shipped files by relative name, as the kinematics section does
            path = Path(getattr(self, name))
            if not path.is_absolute() and not path.is_file() and (ROBOTS_DIR / path).is_file():
                object.__setattr__(self, name, str(ROBOTS_DIR / path))
        check(self.protocol in PROTOCOLS, "protocol", f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        check(Path(self.calibration).is_file(), "calibration", f"file not found: {self.calibration}")
        check(Path(self.urdf).is_file(), "urdf", f"file not found: {self.urdf}")
        check(self.max_relative_target_rad is None or self.max_relative_target_rad > 0, "max_relative_target_rad",
              f"must be > 0 or unset, got {self.max_relative_target_rad}")
        check(0 <= self.present_max_age_s <= 1.0, "present_max_age_s", f"must be in [0, 1] s, got {self.present_max_age_s}")
        top = 254 if self.protocol == "feetech" else 32767
        check(self.acceleration is None or 0 <= self.acceleration <= top, "acceleration",
              f"must be in [0, {top}] for {self.protocol} servos or unset, got {self.acceleration}")
        ServoBusConfig(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, retries=self.retries)


class SerialArm(DeviceBase):
    """Servo-bus arm (see module docstring)."""

    def __init__(self, config: SerialArmConfig, kinematics: ForwardKinematics | None = None) -> None:
        super().__init__()
        self.config = config
        self.calibration = cal = ArmCalibration.load(config.calibration)
        if cal.protocol != config.protocol:
            raise ConfigError(f"arm.options.protocol = {config.protocol!r}, but the calibration {config.calibration} "
                              f"names {cal.model} servos, which speak {cal.protocol!r}; set protocol = "
                              f"{cal.protocol!r} or use this arm's calibration file")
        self.name = f"serial arm {cal.arm_id!r} on {config.port}"
        self.bus = ServoBus(ServoBusConfig(config.port, model=cal.model, baudrate=config.baudrate,
                                           timeout_s=config.timeout_s, retries=config.retries,
                                           protocol=config.protocol), models=cal.models_by_id())
        self._kin = kinematics
        self._estopped = False
        self._torque_on = False
        self._present: tuple[float, dict[int, int]] | None = None  # (monotonic s, ticks) of the last read
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

    @property
    def torque_enabled(self) -> bool:
        return self._torque_on

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Open the bus and check the servos; the arm does not move and its torque stays as found."""
        if self._connected:
            return
        if self._kin is None:
            self._kin = make_kinematics(self.config.urdf, self.config.ee_frame, self.calibration.joint_names)
        ids = self.calibration.all_ids
        self.bus.open()
        try:
            self._check_servos()
            if self.config.acceleration is not None:
                self._write_acceleration(self.config.acceleration)
            found = self.bus.sync_read("Torque_Enable", ids)
            self._hold_verified()  # a servo found with torque on stops where it is
        except BaseException:
            self.bus.close()
            raise
        self._torque_on = all(found.values())
        self._estopped = False
        self._connected = True
        on = [i for i in ids if found[i]]
        log.info("%s connected (%d joints + gripper), torque %s", self.name, self.n_joints,
                 "on" if self._torque_on else f"on for servos {on}" if on else "off (enable() turns it on)")

    def enable(self) -> None:
        """Torque on, after goal = present has been written and read back on every servo: the arm does
        not move. Idempotent (nothing to do when torque is on). The control loop calls it when it is ready;
        the first ``command()`` / ``hold()`` does when nobody has."""
        self._require_connected()
        if self._estopped:
            raise DeviceFaultError(f"{self.name}: emergency stop is active; call resume() once the arm is safe")
        if not self._torque_on:
            self._enable()

    def _enable(self) -> None:
        ticks = self.bus.hold_and_enable(self.calibration.all_ids)
        self._present = (time.monotonic(), ticks)
        self._torque_on = True
        log.info("%s: torque on, holding where it is", self.name)

    def disconnect(self) -> None:
        """Hold, torque off on every servo (unless ``disable_torque_on_disconnect = false``), close the port;
        then raise one error naming what failed (torque-off is tried on every servo whatever failed)."""
        if not self._connected:
            self.bus.close()
            return
        problems: list[str] = []
        released: dict = {}
        try:
            if self._torque_on and not self._estopped:
                try:
                    self._hold_goals()
                except DeviceFaultError as e:
                    problems.append(f"hold failed ({e})")
            if self.config.disable_torque_on_disconnect:
                try:
                    released = self.bus.torque_off(self.calibration.all_ids)
                except Exception as e:  # noqa: BLE001 - whatever it is, report it after closing
                    released = {i: e for i in self.calibration.all_ids}
                if released:
                    problems.append(f"torque may still be on for servo(s) {sorted(released)} "
                                    f"({'; '.join(str(e) for e in released.values())})")
                else:
                    self._torque_on = False
        finally:
            self.bus.close()
            self._connected = False
        if problems:
            cut = "; cut the servo power supply" if released else ""
            raise DeviceFaultError(f"{self.name}: while disconnecting, {'; '.join(problems)}{cut}")

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.disconnect()
        except DeviceFaultError as e:
            if exc_type is None:
                raise
            log.error("%s", e)  # do not hide the error that ended the block

    def _check_servos(self) -> None:
        ids = self.calibration.all_ids
        models = self.calibration.models_by_id()
        numbers = {i: self.bus.ping_model(i) for i in ids}
        missing = [i for i in ids if numbers[i] is None]
        if missing:
            raise DeviceFaultError(
                f"{self.name}: servo id(s) {missing} did not answer a ping (expected ids {list(ids)}); check the "
                f"power supply (the USB cable alone does not power the servos), the baud rate "
                f"({self.config.baudrate}) and the ids written to each servo")
        for i in ids:
            want = self.bus.model_of(i)
            if numbers[i] != want.model_number:
                raise DeviceFaultError(f"{self.name}: servo {i} reports model number {numbers[i]}, the calibration "
                                       f"says {models[i]} ({want.model_number}); fix the calibration file's 'model'")
        if all("Operating_Mode" in self.bus.model_of(i).table for i in ids):
            modes = self.bus.sync_read("Operating_Mode", ids)
            for i in ids:
                allowed = self.bus.model_of(i).position_modes
                if modes[i] not in allowed:
                    raise DeviceFaultError(
                        f"{self.name}: servo {i} is in operating mode {modes[i]}, which does not hold a goal "
                        f"position (allowed: {list(allowed)}); set its Operating_Mode with torque off "
                        f"(edge-setup) before using the arm")

    def _write_acceleration(self, value: int) -> None:
        ids = self.calibration.all_ids
        register, top = self.bus.model_of(ids[0]).acceleration or (None, 0)
        if register is None:
            raise DeviceFaultError(f"{self.name}: {self.bus.model.name} servos have no acceleration register; "
                                   f"unset arm.options.acceleration")
        self.bus.sync_write(register, {i: min(value, top) for i in ids})

    # ------------------------------------------------------------------ torque helpers
    def _release_torque(self) -> None:
        failed = self.bus.torque_off(self.calibration.all_ids)
        self._torque_on = False
        if failed:
            raise DeviceFaultError(f"{self.name}: torque off not acknowledged by servo(s) {sorted(failed)} "
                                   f"({'; '.join(str(e) for e in failed.values())}); cut the servo power supply")

    @contextlib.contextmanager
    def torque_disabled(self) -> Iterator[None]:
        """Torque off for the duration of the block (to move the arm by hand); afterwards, if it was on,
        goal = present (read back) and torque on again, so the arm stays where it was left."""
        self._require_connected()
        was_on = self._torque_on
        self._release_torque()
        try:
            yield
        finally:
            if was_on and not self._estopped:
                self._enable()

    # ------------------------------------------------------------------ Arm interface
    def _read_ticks(self) -> dict[int, int]:
        ticks = self.bus.sync_read("Present_Position", self.calibration.all_ids)
        self._present = (time.monotonic(), ticks)
        return ticks

    def state(self) -> ArmState:
        self._require_connected()
        cal = self.calibration
        qd = None
        if self.config.read_velocity:
            both = self.bus.sync_read_span(("Present_Velocity", "Present_Position"), cal.all_ids)
            ticks = {i: v["Present_Position"] for i, v in both.items()}
            self._present = (time.monotonic(), ticks)
            qd = cal.velocity_to_rad([both[i]["Present_Velocity"] for i in cal.joint_ids])
        else:
            ticks = self._read_ticks()
        stamp = now_ns()
        q = cal.ticks_to_rad([ticks[i] for i in cal.joint_ids])
        return ArmState(joints=q, ee_pose=self._kin.fk(q), gripper=cal.gripper_to_unit(ticks[cal.gripper.id]),
                        joint_velocities=qd, stamp_ns=stamp)

    def _present_ticks(self) -> dict[int, int]:
        """The last read positions when fresh enough (the state() of this cycle), else one SYNC_READ."""
        if self._present is not None and time.monotonic() - self._present[0] <= self.config.present_max_age_s:
            return self._present[1]
        return self._read_ticks()

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
        if not self._torque_on:
            self._enable()
        q = cmd.joints
        if self.config.max_relative_target_rad is not None:
            now_ticks = self._present_ticks()
            present = cal.ticks_to_rad([now_ticks[i] for i in cal.joint_ids])
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

    def _hold_verified(self) -> None:
        """Goal = present, read back (torque untouched)."""
        ids = self.calibration.all_ids
        ticks = self._hold_goals()
        back = self.bus.sync_read("Goal_Position", ids)
        wrong = [i for i in ids if back[i] != ticks[i]]
        if wrong:
            raise DeviceFaultError(f"{self.name}: servo(s) {wrong} did not take goal = present (wrote "
                                   f"{[ticks[i] for i in wrong]}, read back {[back[i] for i in wrong]}); check their "
                                   f"cable and that no other program writes to the bus")

    def hold(self) -> None:
        """Stop where the arm is: goal = present position on every servo (torque on, unless e-stopped)."""
        self._require_connected()
        if self._torque_on or self._estopped:
            self._hold_goals()
        else:
            self._enable()

    def estop(self) -> None:
        """Torque off on every servo, immediately (no read first): a SYNC_WRITE sent twice, then a WRITE
        to each servo, which acknowledges it."""
        self._require_connected()
        self._estopped = True
        self._torque_on = False
        err: Exception | None = None
        for _ in range(2):
            try:
                self.bus.sync_write("Torque_Enable", {i: 0 for i in self.calibration.all_ids})
            except DeviceFaultError as e:
                err = e
        try:
            self._release_torque()
        except DeviceFaultError as e:
            raise DeviceFaultError(f"{self.name}: emergency stop{' could not be written to the bus' if err else ''}: "
                                   f"{e}") from e
        log.warning("%s: emergency stop, torque disabled", self.name)

    def resume(self) -> None:
        """Leave the emergency stop: goal = present (read back), then torque on."""
        self._require_connected()
        self._enable()
        self._estopped = False
