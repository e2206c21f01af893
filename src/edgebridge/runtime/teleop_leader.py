"""The scripted leader (simulator): a leader arm that replays the scripted demonstrator along the
runtime's guidance spline, for ``edge-record`` in the simulator (:class:`ScriptedLeader`)."""

from __future__ import annotations

import logging

import numpy as np

from ..contracts import ArmState, Pose
from ..drivers.teleop_devices import JointTarget

log = logging.getLogger(__name__)


class ScriptedLeader:
    """A leader arm that replays the simulator's scripted demonstrator: at :meth:`start` it plans the
    scene (the setup's planner: the oracle's privileged plan in the simulator), lifts the plan with the
    camera's depth and builds the guidance spline exactly as the runtime does (``approach_waypoints`` +
    ``fit_guidance``); each :meth:`read` advances along it and returns the IK joints of that pose, as a
    human moving a leader arm along the path would. ``done`` once the path is over."""

    name = "scripted leader"

    def __init__(self, planner, camera, kinematics, T_base_cam, bounds, instruction: str, guidance_config=None) -> None:
        self.planner, self.camera, self.kin = planner, camera, kinematics
        self.T_base_cam, self.bounds, self.instruction = T_base_cam, bounds, instruction
        self.guidance_config = guidance_config
        self.spline = None
        self.t = 0.0

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def start(self, state: ArmState) -> None:
        from .guidance import approach_waypoints, fit_guidance
        from .lift import lift_plan

        frame = self.camera.read()
        lifted = lift_plan(self.planner.plan(frame, self.instruction), frame, self.T_base_cam, self.bounds)
        path, durations = approach_waypoints(lifted, state, config=self.guidance_config)
        self.spline = fit_guidance(path, durations, self.guidance_config)
        self.t, self.q = 0.0, state.joints.copy()

    @property
    def duration(self) -> float:
        return 0.0 if self.spline is None else float(self.spline.duration)

    @property
    def done(self) -> bool:
        return self.spline is not None and self.t >= self.spline.duration

    def read(self, dt_s: float) -> JointTarget:
        if self.spline is None:
            raise RuntimeError("ScriptedLeader.read: call start(state) first")
        self.t += dt_s
        row = self.spline.evaluate_many([min(self.t, self.spline.duration)])[0]
        pose = Pose(row[:3], row[3:7] / np.linalg.norm(row[3:7]))
        try:
            self.q = np.asarray(self.kin.ik(pose, self.q), np.float64)
        except ValueError as e:  # IKError: keep the last joints
            log.debug("scripted leader: %s", e)
        return JointTarget(self.q.copy(), float(np.clip(row[7], 0.0, 1.0)))
