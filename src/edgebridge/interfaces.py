"""The device and model interfaces every stage speaks (docs/design.md, "Contracts").

Each is a context manager that releases its device on exit, also on error. Implementations live in
``drivers`` (real hardware), ``sim`` (the embedded default world) and ``runtime`` (planners, experts).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .contracts import ActionChunk, ArmCommand, ArmState, Guidance, Plan, PointCloud, RGBD


@runtime_checkable
class Camera(Protocol):
    """An RGB-D camera. ``T_base_cam`` is the calibrated camera pose in the robot base frame."""

    T_base_cam: np.ndarray

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    @property
    def is_connected(self) -> bool: ...
    def read(self) -> RGBD: ...
    def __enter__(self) -> "Camera": ...
    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class Arm(Protocol):
    """A robot arm. ``command`` sends a validated target and returns what was actually sent.

    ``connect`` opens the link and checks the arm but does not power or move it (no torque, no
    motion), so a failure elsewhere at start-up leaves the arm as it was. Optional, looked up with
    ``getattr``: ``enable()`` powers the arm holding its present pose (goal = present, then torque on;
    idempotent); the control loop calls it once it is ready to command (``ControlLoop.prepare``)."""

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    @property
    def is_connected(self) -> bool: ...
    def state(self) -> ArmState: ...
    def command(self, cmd: ArmCommand) -> ArmCommand: ...
    def hold(self) -> None: ...
    def estop(self) -> None: ...
    def __enter__(self) -> "Arm": ...
    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class Planner(Protocol):
    """Image + instruction -> sparse plan (anchor pixels + gripper events + orientation)."""

    def plan(self, rgbd: RGBD, instruction: str) -> Plan: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Planner": ...
    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class ActionExpert(Protocol):
    """Cloud + arm state + guidance -> a chunk of refined end-effector targets.

    Optional, looked up with ``getattr``: ``needs_cloud`` (False: ``act`` gets ``cloud=None`` and no frame
    is processed for it) and ``cloud_box(state, guidance, workspace)`` -> the ``kernels.WorkspaceBox`` the
    expert wants its cloud cropped to (a region around the goal), or None for the whole workspace
    (``workspace`` = the setup's (lo, hi) crop bounds)."""

    def act(self, cloud: PointCloud, state: ArmState, guidance: Guidance) -> ActionChunk: ...
    def close(self) -> None: ...
    def __enter__(self) -> "ActionExpert": ...
    def __exit__(self, *exc) -> None: ...


class DeviceBase:
    """Shared connect/disconnect/context-manager plumbing for devices."""

    name = "device"

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _require_connected(self) -> None:
        from .errors import DeviceNotConnectedError

        if not self._connected:
            raise DeviceNotConnectedError(f"{self.name} is not connected; call connect() or use it in a 'with' block")

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
