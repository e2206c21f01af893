"""The Franka driver's settings: :class:`FrankaArmConfig` (``[arm.options]`` of a robot setup with
``driver = "franka"``), its ranges, and the arm's joint count and default impedance gains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check

N_JOINTS = 7
# libfranka's joint impedance example gains (Nm/rad).
DEFAULT_STIFFNESS = (600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0)


@dataclass(frozen=True)
class FrankaArmConfig:
    """A Franka arm through its FCI (``[arm.options]`` of the robot setup, ``driver = "franka"``).

    ``host``: the robot's FCI address (the Control box's LAN port). ``realtime``: require a realtime
    kernel (libfranka's ``RealtimeConfig.Enforce``); false only for simulators. ``stiffness`` / ``damping``
    (impedance mode; damping unset = critical). ``lookahead_s``, ``motion_reissue_s`` (motion mode).
    ``gripper``: a Franka Hand is attached. ``state_timeout_s``: the robot clock must advance within it."""

    host: str
    command_mode: Literal["impedance", "motion"] = "impedance"
    realtime: bool = True
    stiffness: tuple[float, ...] = DEFAULT_STIFFNESS
    damping: tuple[float, ...] | None = None
    velocity_feedforward: bool = True
    lookahead_s: float = 0.1
    motion_reissue_s: float = 0.02
    relative_dynamics_factor: float = 1.0
    gripper: bool = True
    gripper_speed_mps: float = 0.1
    grasp_force_n: float = 20.0
    grasp_below: float = 0.5
    gripper_deadband: float = 0.05
    gripper_max_width_m: float = 0.08
    gripper_poll_s: float = 0.02
    gripper_timeout_s: float = 1.0
    connect_timeout_s: float = 3.0
    call_timeout_s: float = 0.5
    state_timeout_s: float = 0.25

    def __post_init__(self) -> None:
        check(isinstance(self.host, str) and bool(self.host), "host",
              f"expected the robot's IP address, got {self.host!r}")
        check(self.command_mode in ("impedance", "motion"), "command_mode",
              f"must be 'impedance' or 'motion', got {self.command_mode!r}")
        for key in ("stiffness", "damping"):
            v = getattr(self, key)
            check(v is None or (len(v) == N_JOINTS and all(0 <= x <= 5000 for x in v)), key,
                  f"expected {N_JOINTS} values in [0, 5000], got {v}")
        for key, (lo, hi) in _RANGES.items():
            v = getattr(self, key)
            check((lo <= v if key in ("lookahead_s", "motion_reissue_s") else lo < v) and v <= hi, key,
                  f"must be in ({lo}, {hi}], got {v}")


# FrankaArmConfig's numeric ranges (low exclusive, except for the two that may be 0)
_RANGES = {"lookahead_s": (0, 0.5), "motion_reissue_s": (0, 0.1), "relative_dynamics_factor": (0, 1),
           "gripper_speed_mps": (0, 0.2), "grasp_force_n": (0, 140), "grasp_below": (0, 1), "gripper_deadband": (0, 1),
           "gripper_max_width_m": (0, 0.2), "gripper_poll_s": (0, 60), "gripper_timeout_s": (0, 60),
           "connect_timeout_s": (0, 60), "call_timeout_s": (0, 60), "state_timeout_s": (0, 60)}

