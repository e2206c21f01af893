"""Teleoperation devices for ``edge-record``: a leader arm on a servo bus, a keyboard, a SpaceMouse.

Each is a config dataclass plus one class that takes only that config (``connect`` / ``disconnect`` /
context manager; a method called while not connected raises ``DeviceNotConnectedError``).
``read(dt_s)`` returns what the operator asks for in one control tick of ``dt_s`` seconds:

- :class:`JointTarget` (absolute joint positions in rad, gripper in [0, 1]): :class:`LeaderArm`, a second
  servo-bus arm of the same kinematics with torque off, moved by hand (LeRobot's leader / follower);
- :class:`EEDelta` (a translation in metres and a rotation vector in radians, both in the base frame, and
  the gripper or None to keep it): :class:`Keyboard` and :class:`SpaceMouse`; the recording loop adds it
  to the end-effector target and goes through the kinematics' IK.

Episode control comes from the terminal (:class:`TerminalKeys`, cbreak mode on ``/dev/tty``, read on a
thread), as in LeRobot's ``record``: right arrow ends the episode early, left arrow records it again,
Esc stops the recording. :class:`EpisodeEvents` carries these to the recording loop.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, check
from ..errors import DeviceFaultError, MissingExtraError
from ..interfaces import DeviceBase
from .arm_calibration import ArmCalibration
from .servo_bus import ServoBus, ServoBusConfig
from .servo_protocol import PROTOCOLS

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- what a device returns


@dataclass(frozen=True)
class JointTarget:
    """Absolute joint positions (rad, the follower's joint order) and gripper (0 closed, 1 open)."""

    joints: np.ndarray
    gripper: float


@dataclass(frozen=True)
class EEDelta:
    """A change of the end-effector target for one tick: ``translation`` (3,) metres and ``rotation`` (3,)
    a rotation vector (rad), both in the base frame; ``gripper`` the new gripper target or None (keep)."""

    translation: np.ndarray
    rotation: np.ndarray
    gripper: float | None = None

    @classmethod
    def zero(cls, gripper: float | None = None) -> "EEDelta":
        return cls(np.zeros(3), np.zeros(3), gripper)


@dataclass
class EpisodeEvents:
    """What the operator asked of the recording: end the episode now, record it again, stop everything."""

    end: bool = False
    redo: bool = False
    stop: bool = False

    def clear_episode(self) -> None:
        """Forget ``end`` / ``redo`` (a new episode starts); ``stop`` stays."""
        self.end = self.redo = False


# --------------------------------------------------------------------------- terminal keys

CONTROL_KEYS = {"right": "end", "left": "redo", "esc": "stop"}
_SEQUENCES = {b"\x1b[C": "right", b"\x1b[D": "left", b"\x1b[A": "up", b"\x1b[B": "down",
              b"\x1bOC": "right", b"\x1bOD": "left", b"\x1bOA": "up", b"\x1bOB": "down"}


def parse_keys(data: bytes) -> list[str]:
    """Key names in a chunk of terminal input: printable characters as themselves (lower case), ``space``,
    ``enter``, arrows as ``right`` / ``left`` / ``up`` / ``down``, a lone Esc as ``esc``."""
    out, i = [], 0
    while i < len(data):
        for seq, name in _SEQUENCES.items():
            if data.startswith(seq, i):
                out.append(name)
                i += len(seq)
                break
        else:
            b = data[i:i + 1]
            i += 1
            if b == b"\x1b":
                if data[i:i + 1] == b"[":  # another escape sequence (function keys...): skip it
                    while i < len(data) and not (0x40 <= data[i] <= 0x7E and data[i] != ord("[")):
                        i += 1
                    i += 1
                    continue
                out.append("esc")
            elif b == b" ":
                out.append("space")
            elif b in (b"\r", b"\n"):
                out.append("enter")
            elif 0x21 <= b[0] <= 0x7E:
                out.append(b.decode().lower())
    return out


@dataclass(frozen=True)
class TerminalKeysConfig:
    """``tty``: the terminal to read (``/dev/tty``: the controlling terminal)."""

    tty: str = "/dev/tty"

    def __post_init__(self) -> None:
        check(isinstance(self.tty, str) and bool(self.tty), "tty", f"expected a terminal device path, got {self.tty!r}")


class TerminalKeys(DeviceBase):
    """Key presses from a terminal in cbreak mode (no echo, no line buffering), read on a thread.
    ``events`` gets the episode-control keys (:data:`CONTROL_KEYS`); :meth:`pop` returns the other keys
    pressed since the last call. The terminal's settings are restored on ``disconnect``."""

    def __init__(self, config: TerminalKeysConfig | None = None) -> None:
        super().__init__()
        self.config = config or TerminalKeysConfig()
        self.name = f"terminal keys on {self.config.tty}"
        self.events = EpisodeEvents()
        self._keys: deque[str] = deque(maxlen=256)
        self._fd: int | None = None
        self._saved = None
        self._thread: threading.Thread | None = None
        self._quit = threading.Event()

    def connect(self) -> None:
        import termios
        import tty

        if self._connected:
            return
        try:
            fd = os.open(self.config.tty, os.O_RDONLY | os.O_NOCTTY)
        except OSError as e:
            raise DeviceFaultError(f"{self.name}: cannot open the terminal ({e}); run edge-record in a terminal, or "
                                   f"pass --no-interactive (fixed episode and reset times)") from e
        try:
            if not os.isatty(fd):
                raise DeviceFaultError(f"{self.name}: not a terminal; pass --no-interactive")
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._quit.clear()
        self._thread = threading.Thread(target=self._read, name="terminal-keys", daemon=True)
        self._thread.start()
        self._connected = True

    def disconnect(self) -> None:
        import termios

        if not self._connected:
            return
        self._quit.set()
        if self._thread is not None:
            self._thread.join(1.0)
        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        finally:
            os.close(self._fd)
            self._fd = None
            self._connected = False

    def _read(self) -> None:
        while not self._quit.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 64)
            except OSError:
                return
            if data.endswith(b"\x1b") or data.endswith(b"\x1b["):  # an escape sequence cut in two
                more, _, _ = select.select([self._fd], [], [], 0.03)
                if more:
                    data += os.read(self._fd, 64)
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Handle terminal input (the reader thread calls it; tests may too)."""
        for key in parse_keys(data):
            what = CONTROL_KEYS.get(key)
            if what is not None:
                setattr(self.events, what, True)
                log.info("key %s: %s", key, {"end": "end the episode", "redo": "record the episode again",
                                            "stop": "stop recording"}[what])
            else:
                self._keys.append(key)

    def pop(self) -> list[str]:
        """Keys pressed since the last call (control keys excluded)."""
        self._require_connected()
        out = []
        while self._keys:
            out.append(self._keys.popleft())
        return out


# --------------------------------------------------------------------------- leader arm


@dataclass(frozen=True)
class LeaderArmConfig:
    """A leader arm on its own servo bus (``port``), read with torque off. ``calibration``: this arm's
    joint calibration (joint order and names as the follower's; a relative path names a shipped file under
    ``assets/robots``). ``protocol`` and the bus settings as for ``SerialArmConfig``."""

    port: str
    calibration: str = "so101/calibration/so101_default.toml"
    protocol: str = "feetech"
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 1

    def __post_init__(self) -> None:
        from .serial_arm import ROBOTS_DIR

        check(isinstance(self.port, str) and bool(self.port), "port", f"expected a serial device path, got {self.port!r}")
        path = Path(self.calibration)
        if not path.is_absolute() and not path.is_file() and (ROBOTS_DIR / path).is_file():
            object.__setattr__(self, "calibration", str(ROBOTS_DIR / path))
        check(Path(self.calibration).is_file(), "calibration", f"file not found: {self.calibration}")
        check(self.protocol in PROTOCOLS, "protocol", f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        ServoBusConfig(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, retries=self.retries)


class LeaderArm(DeviceBase):
    """The leader: ``connect`` pings every servo and turns torque off (it never moves on its own);
    ``read`` is one SYNC_READ of Present_Position -> :class:`JointTarget` through the calibration."""

    def __init__(self, config: LeaderArmConfig) -> None:
        super().__init__()
        self.config = config
        self.calibration = cal = ArmCalibration.load(config.calibration)
        if cal.protocol != config.protocol:
            raise ConfigError(f"leader protocol = {config.protocol!r}, but the calibration {config.calibration} names "
                              f"{cal.model} servos, which speak {cal.protocol!r}")
        self.name = f"leader arm {cal.arm_id!r} on {config.port}"
        self.bus = ServoBus(ServoBusConfig(config.port, model=cal.model, baudrate=config.baudrate,
                                           timeout_s=config.timeout_s, retries=config.retries,
                                           protocol=config.protocol), models=cal.models_by_id())

    @property
    def n_joints(self) -> int:
        return len(self.calibration.joints)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.calibration.joint_names

    def connect(self) -> None:
        if self._connected:
            return
        ids = self.calibration.all_ids
        self.bus.open()
        try:
            missing = [i for i in ids if not self.bus.ping(i)]
            if missing:
                raise DeviceFaultError(f"{self.name}: servo id(s) {missing} did not answer a ping (expected {list(ids)}); "
                                       f"check the leader's power supply, cable, baud rate ({self.config.baudrate}) and ids")
            failed = self.bus.torque_off(ids)
            if failed:
                raise DeviceFaultError(f"{self.name}: torque off not acknowledged by servo(s) {sorted(failed)}; a "
                                       f"leader must move freely by hand: check those servos")
        except BaseException:
            self.bus.close()
            raise
        self._connected = True
        log.info("%s connected (%d joints + gripper), torque off", self.name, self.n_joints)

    def disconnect(self) -> None:
        self.bus.close()
        self._connected = False

    def read(self, dt_s: float = 0.0) -> JointTarget:
        self._require_connected()
        cal = self.calibration
        ticks = self.bus.read_positions(cal.all_ids)
        return JointTarget(cal.ticks_to_rad([ticks[i] for i in cal.joint_ids]),
                           cal.gripper_to_unit(ticks[cal.gripper.id]))


# --------------------------------------------------------------------------- keyboard

# key -> (axis, sign): axes 0-2 translate along base x, y, z; 3-5 rotate about them
KEYMAP = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
          "q": (5, 1), "e": (5, -1), "up": (0, 1), "down": (0, -1)}
GRIPPER_KEY = "space"


@dataclass(frozen=True)
class KeyboardConfig:
    """End-effector teleoperation from the terminal: ``w``/``s`` +-x, ``a``/``d`` +-y, ``r``/``f`` +-z,
    ``q``/``e`` yaw, space toggles the gripper. A key moves the target at ``linear_speed_m_s`` (or
    ``angular_speed_rad_s``) for ``hold_s`` after each press; the terminal's key repeat keeps it moving
    while the key is held."""

    tty: str = "/dev/tty"
    linear_speed_m_s: float = 0.05
    angular_speed_rad_s: float = 0.6
    hold_s: float = 0.12

    def __post_init__(self) -> None:
        TerminalKeysConfig(self.tty)
        for name in ("linear_speed_m_s", "angular_speed_rad_s", "hold_s"):
            v = getattr(self, name)
            check(v > 0, name, f"must be > 0, got {v}")


class Keyboard(DeviceBase):
    """Keyboard teleoperation (:class:`KeyboardConfig`); ``events`` holds the episode-control keys."""

    def __init__(self, config: KeyboardConfig | None = None, clock=time.monotonic) -> None:
        super().__init__()
        self.config = config = config or KeyboardConfig()
        self.keys = TerminalKeys(TerminalKeysConfig(config.tty))
        self.name = f"keyboard on {config.tty}"
        self._clock = clock
        self._until = np.full((6, 2), -np.inf)  # per axis and sign: pressed until this time
        self._gripper = 1.0

    @property
    def events(self) -> EpisodeEvents:
        return self.keys.events

    def connect(self) -> None:
        self.keys.connect()
        self._connected = True

    def disconnect(self) -> None:
        self.keys.disconnect()
        self._connected = False

    def read(self, dt_s: float) -> EEDelta:
        self._require_connected()
        return self.apply(self.keys.pop(), dt_s)

    def apply(self, keys: list[str], dt_s: float) -> EEDelta:
        """The delta for one tick after ``keys`` were pressed (``read`` without the terminal)."""
        now = self._clock()
        grip = None
        for k in keys:
            if k == GRIPPER_KEY:
                self._gripper = 0.0 if self._gripper >= 0.5 else 1.0
                grip = self._gripper
            elif k in KEYMAP:
                axis, sign = KEYMAP[k]
                self._until[axis, 0 if sign > 0 else 1] = now + self.config.hold_s
        active = (self._until > now).astype(np.float64)
        v = active[:, 0] - active[:, 1]
        c = self.config
        return EEDelta(v[:3] * c.linear_speed_m_s * dt_s, v[3:] * c.angular_speed_rad_s * dt_s, grip)


# --------------------------------------------------------------------------- SpaceMouse


def _pyspacemouse():
    try:
        import pyspacemouse
    except ImportError as e:
        raise MissingExtraError(f"--teleop spacemouse needs the 'pyspacemouse' package (and the hidapi library): "
                                f"pip install pyspacemouse ({e})") from e
    return pyspacemouse


@dataclass(frozen=True)
class SpaceMouseConfig:
    """A 3Dconnexion SpaceMouse through ``pyspacemouse`` (raw HID). Each axis in [-1, 1], after a
    ``deadzone``, scales to ``linear_speed_m_s`` / ``angular_speed_rad_s``; the left button closes the
    gripper, the right one opens it. ``device``: the model name pyspacemouse knows (None: the first found).
    ``axis_signs``: flips for x y z roll pitch yaw (the device's axes onto the base frame's)."""

    linear_speed_m_s: float = 0.08
    angular_speed_rad_s: float = 0.8
    deadzone: float = 0.08
    device: str | None = None
    axis_signs: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("linear_speed_m_s", "angular_speed_rad_s"):
            v = getattr(self, name)
            check(v > 0, name, f"must be > 0, got {v}")
        check(0 <= self.deadzone < 1, "deadzone", f"must lie in [0, 1), got {self.deadzone}")
        check(len(self.axis_signs) == 6 and all(s in (1.0, -1.0) for s in self.axis_signs), "axis_signs",
              f"expected six values of +1 or -1, got {self.axis_signs}")


class SpaceMouse(DeviceBase):
    """SpaceMouse teleoperation (:class:`SpaceMouseConfig`)."""

    def __init__(self, config: SpaceMouseConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpaceMouseConfig()
        self.name = f"SpaceMouse {self.config.device or '(first found)'}"
        self._lib = None
        self._dev = None
        self._buttons: tuple = ()

    def connect(self) -> None:
        if self._connected:
            return
        lib = _pyspacemouse()
        try:
            dev = lib.open(device=self.config.device) if self.config.device else lib.open()
        except Exception as e:  # noqa: BLE001 - hidapi errors come in many types
            raise DeviceFaultError(f"{self.name}: could not open ({type(e).__name__}: {e}); check the USB cable and "
                                   f"read access to /dev/hidraw* (a udev rule)") from e
        if not dev:
            raise DeviceFaultError(f"{self.name}: no SpaceMouse found; plug it in and check read access to "
                                   f"/dev/hidraw* (a udev rule)")
        self._lib, self._dev = lib, dev
        self._connected = True

    def disconnect(self) -> None:
        if self._connected:
            try:
                close = getattr(self._dev, "close", None) or self._lib.close
                close()
            finally:
                self._connected = False

    def read(self, dt_s: float) -> EEDelta:
        self._require_connected()
        st = self._lib.read()
        c = self.config
        axes = np.array([st.x, st.y, st.z, st.roll, st.pitch, st.yaw], np.float64) * np.asarray(c.axis_signs)
        axes = np.where(np.abs(axes) < c.deadzone, 0.0, np.clip(axes, -1.0, 1.0))
        buttons = tuple(getattr(st, "buttons", None) or getattr(st, "button", None) or ())
        grip = None
        if len(buttons) >= 1 and buttons[0] and not (self._buttons[:1] and self._buttons[0]):
            grip = 0.0
        if len(buttons) >= 2 and buttons[1] and not (len(self._buttons) >= 2 and self._buttons[1]):
            grip = 1.0
        self._buttons = buttons
        return EEDelta(axes[:3] * c.linear_speed_m_s * dt_s, axes[3:] * c.angular_speed_rad_s * dt_s, grip)


__all__ = ["CONTROL_KEYS", "EEDelta", "EpisodeEvents", "JointTarget", "Keyboard", "KeyboardConfig", "LeaderArm",
           "LeaderArmConfig", "SpaceMouse", "SpaceMouseConfig", "TerminalKeys", "TerminalKeysConfig", "parse_keys"]
