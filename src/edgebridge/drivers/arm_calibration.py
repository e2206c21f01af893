"""Per-arm joint calibration for servo-bus arms: servo ticks <-> radians, gripper ticks <-> [0, 1].

One file per arm id (TOML or JSON), e.g. ``so101_follower_a.toml``::

    arm_id = "so101_follower_a"
    model = "sts3215"

    [[joints]]            # one per arm joint, in the order the kinematics expects
    name = "shoulder_pan" # joint name in the URDF
    id = 1                # servo id on the bus
    offset = 2048         # ticks at 0 rad
    sign = 1              # +1 if ticks grow with the URDF joint angle, -1 otherwise
    min = 797             # allowed tick range (commands are clipped to it)
    max = 3299

    [gripper]
    id = 6
    closed = 2030         # ticks when fully closed (gripper 0)
    open = 3200           # ticks when fully open (gripper 1)

``rad = sign * (ticks - offset) * 2 pi / resolution``; ``resolution`` comes from the servo model
(4096 ticks per turn on the STS3215 and the Dynamixel X series). ``model`` names the servos' model (any
family: ``sts3215``, ``xl430-w250``, ...); a joint or the gripper may name its own (``model = "xl330-m288"``)
when the arm mixes models of one family, as the Koch arm does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, check, from_dict
from .servo_protocol import model_by_name, protocol_by_name

MAX_ID = 0xFD  # the largest id of any family (Feetech); the arm checks its own protocol's


@dataclass(frozen=True)
class JointCalibration:
    name: str
    id: int
    offset: int
    sign: int = 1
    min: int = 0
    max: int = 4095
    model: str = ""       # this servo's model when it differs from the arm's

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must name the URDF joint")
        check(0 <= self.id <= MAX_ID, "id", f"servo id must be in [0, {MAX_ID}], got {self.id}")
        check(self.sign in (1, -1), "sign", f"must be 1 or -1, got {self.sign}")
        check(0 <= self.min < self.max, "min/max", f"need 0 <= min < max, got min={self.min}, max={self.max}")
        check(self.min <= self.offset <= self.max, "offset",
              f"zero position {self.offset} lies outside the allowed range [{self.min}, {self.max}]")


@dataclass(frozen=True)
class GripperCalibration:
    id: int
    closed: int
    open: int
    model: str = ""

    def __post_init__(self) -> None:
        check(0 <= self.id <= MAX_ID, "id", f"servo id must be in [0, {MAX_ID}], got {self.id}")
        check(self.closed != self.open, "closed/open", f"closed and open ticks must differ, both {self.open}")
        check(min(self.closed, self.open) >= 0, "closed/open", "ticks must be >= 0")


@dataclass(frozen=True)
class ArmCalibration:
    """Calibration of one servo-bus arm (see module docstring)."""

    arm_id: str
    joints: tuple[JointCalibration, ...]
    gripper: GripperCalibration
    model: str = "sts3215"

    def __post_init__(self) -> None:
        check(bool(self.arm_id), "arm_id", "must name the arm")
        check(len(self.joints) > 0, "joints", "need at least one joint")
        try:
            arm_model = model_by_name(self.model)
            models = [model_by_name(j.model or self.model) for j in self.joints]
            grip_model = model_by_name(self.gripper.model or self.model)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e
        mixed = {m.protocol for m in (*models, grip_model)} - {arm_model.protocol}
        check(not mixed, "model", f"{self.model} speaks {arm_model.protocol}; joints or gripper name models of "
                                  f"{sorted(mixed)}: one bus speaks one protocol")
        top = protocol_by_name(arm_model.protocol).max_id
        ids = [j.id for j in self.joints] + [self.gripper.id]
        check(max(ids) <= top, "joints", f"{arm_model.protocol} servo ids must be <= {top}, got {ids}")
        check(len(set(ids)) == len(ids), "joints", f"servo ids must be unique, got {ids}")
        names = [j.name for j in self.joints]
        check(len(set(names)) == len(names), "joints", f"joint names must be unique, got {names}")
        for j, m in zip(self.joints, models):
            check(j.max < m.resolution, f"joints.{j.name}.max",
                  f"must be < {m.resolution} ticks for model {m.name}, got {j.max}")
        object.__setattr__(self, "_models", {j.id: m for j, m in zip(self.joints, models)} | {self.gripper.id: grip_model})
        object.__setattr__(self, "_res", np.array([m.resolution for m in models], dtype=np.float64))
        object.__setattr__(self, "_vel", np.array([m.velocity_unit_rad_s for m in models], dtype=np.float64))
        object.__setattr__(self, "_offset", np.array([j.offset for j in self.joints], dtype=np.float64))
        object.__setattr__(self, "_sign", np.array([j.sign for j in self.joints], dtype=np.float64))
        object.__setattr__(self, "_lo", np.array([j.min for j in self.joints], dtype=np.int64))
        object.__setattr__(self, "_hi", np.array([j.max for j in self.joints], dtype=np.int64))

    # ------------------------------------------------------------------ accessors
    @property
    def resolution(self) -> int:
        """Ticks per turn of the arm's model (``model``)."""
        return model_by_name(self.model).resolution

    @property
    def protocol(self) -> str:
        """The bus protocol of the arm's servos (``feetech``, ``dynamixel2``)."""
        return model_by_name(self.model).protocol

    def models_by_id(self) -> dict[int, str]:
        """Servo id -> model name, every servo of the arm."""
        return {sid: m.name for sid, m in self._models.items()}

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def joint_ids(self) -> tuple[int, ...]:
        return tuple(j.id for j in self.joints)

    @property
    def all_ids(self) -> tuple[int, ...]:
        return self.joint_ids + (self.gripper.id,)

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) joint limits in radians implied by the tick ranges."""
        a, b = self.ticks_to_rad(self._lo), self.ticks_to_rad(self._hi)
        return np.minimum(a, b), np.maximum(a, b)

    # ------------------------------------------------------------------ conversions (inverse pairs)
    def ticks_to_rad(self, ticks) -> np.ndarray:
        t = np.asarray(ticks, dtype=np.float64)
        return self._sign * (t - self._offset) * (2 * math.pi / self._res)

    def rad_to_ticks(self, q) -> np.ndarray:
        """Radians -> integer ticks, clipped to each joint's allowed range."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != self._offset.shape:
            raise ValueError(f"arm {self.arm_id}: expected {len(self.joints)} joint values "
                             f"({', '.join(self.joint_names)}), got shape {q.shape}")
        t = np.rint(self._offset + self._sign * q * (self._res / (2 * math.pi))).astype(np.int64)
        return np.clip(t, self._lo, self._hi)

    def velocity_to_rad(self, ticks_per_s) -> np.ndarray:
        """Present_Velocity (in each model's unit) -> joint velocity (rad/s)."""
        return self._sign * np.asarray(ticks_per_s, dtype=np.float64) * self._vel

    def gripper_to_unit(self, ticks: int) -> float:
        g = self.gripper
        return float(np.clip((ticks - g.closed) / (g.open - g.closed), 0.0, 1.0))

    def unit_to_gripper(self, value: float) -> int:
        g = self.gripper
        return int(round(g.closed + float(np.clip(value, 0.0, 1.0)) * (g.open - g.closed)))

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | Path) -> "ArmCalibration":
        """Load a ``.toml`` or ``.json`` calibration file; errors name the file and the key."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: arm calibration file not found; record one for this arm "
                              f"(see docs/drivers.md, 'Calibrating a servo arm')") from e
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import tomllib

                data = tomllib.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: cannot parse ({e})") from e
        try:
            return from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{path.name}: {e}") from e

    @classmethod
    def for_arm(cls, directory: str | Path, arm_id: str) -> "ArmCalibration":
        """The calibration of ``arm_id`` in ``directory`` (``<arm_id>.toml`` or ``<arm_id>.json``)."""
        d = Path(directory)
        for ext in (".toml", ".json"):
            if (d / f"{arm_id}{ext}").is_file():
                cal = cls.load(d / f"{arm_id}{ext}")
                if cal.arm_id != arm_id:
                    raise ConfigError(f"{d / (arm_id + ext)}: file holds arm_id {cal.arm_id!r}, expected {arm_id!r}")
                return cal
        raise ConfigError(f"no calibration for arm {arm_id!r} in {d} (looked for {arm_id}.toml / .json)")

    def to_dict(self) -> dict:
        def plain(x) -> dict:  # no empty per-servo model: the file stays as the user wrote it
            return {k: v for k, v in asdict(x).items() if not (k == "model" and not v)}

        return {"arm_id": self.arm_id, "model": self.model,
                "joints": [plain(j) for j in self.joints], "gripper": plain(self.gripper)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            return path
        from ..calib.toml_io import write

        return write(path, self.to_dict(), header=f"Joint calibration of servo arm {self.arm_id}")
