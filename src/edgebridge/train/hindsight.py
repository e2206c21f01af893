"""Guidance built in hindsight from a demonstration: any recorded episode becomes training data without
a planner.

A teleoperated episode (``edge-record``) holds the end-effector state and the action sent at every frame,
but no plan. Its gripper events (where the commanded gripper crosses 0.5) say where a planner *should*
have pointed: the end-effector pose at each close and open event is an anchor, as the planner's anchors
are after lifting. :class:`Hindsight` turns them into the guidance the runtime would have built:

1. each anchor's contact point back to the surface point a planner names (a grasp is executed
   ``grasp_depth_m`` below the surface, a release ``release_clearance_m`` above it:
   :func:`~edgebridge.runtime.guidance.approach_waypoints` adds these again);
2. the paper's goal noise: every anchor position moves by Gaussian noise of ``goal_noise`` (0.1, as APPF
   training uses) in normalised units, i.e. times ``noise_scale_m`` per axis (fine-tuning passes the
   expert's own normalisation of the guidance positions; by default the episode's spread of goal minus
   end-effector position, which is what that normalisation measures), drawn once per anchor and episode:
   an imprecise plan the demonstrated actions correct;
3. :func:`~edgebridge.runtime.guidance.approach_waypoints` + :func:`~edgebridge.runtime.guidance.fit_guidance`
   from the first frame's pose, with the segment times taken from the demonstration (contacts reached
   half a dwell before each event, the descent and retreat timed where the arm left and reached
   ``approach_m`` from the contact), so the guidance and the demonstration are in phase;
4. every frame's guidance window (``guidance_steps`` poses at ``now + k * action_dt``) and goal (the
   guidance at its next gripper event), as ``runtime.episode_record`` records them.

``load_demos(dirs, hindsight=Hindsight(...))`` (``train/data.py``) calls it on each episode that has no
guidance. Numpy only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from ..contracts import Pose, Waypoints
from ..runtime.expert.features import goal_index
from ..runtime.guidance import GuidanceConfig, approach_waypoints, fit_guidance, guidance_rows, interpolate
from ..runtime.teleop import gripper_events, next_event

STATE, ACTION = "observation.state", "action"
UNLIMITED = 1e6  # speed and acceleration limits that never slow the hindsight spline


@dataclass(frozen=True)
class HindsightConfig:
    """``goal_noise``: std of the anchor noise in normalised units (APPF's ``goal_noise``); ``noise_scale_m``:
    metres per unit for x, y, z (None: from each episode, at least ``min_scale_m``); ``guidance_steps``: K of
    the window; ``action_dt``: its step (the frame period); ``sample_dt``: the guidance's sampling step
    (``perception.guidance_dt``); ``seed``: the noise's seed (with each episode's own data)."""

    goal_noise: float = 0.1
    noise_scale_m: tuple[float, float, float] | None = None
    min_scale_m: float = 0.01
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    guidance_steps: int = 17
    action_dt: float = 0.1
    sample_dt: float = 0.05
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.goal_noise >= 0:
            raise ValueError(f"HindsightConfig.goal_noise: must be >= 0, got {self.goal_noise}")
        if self.noise_scale_m is not None and (len(self.noise_scale_m) != 3 or min(self.noise_scale_m) <= 0):
            raise ValueError(f"HindsightConfig.noise_scale_m: three positive metres or None, got {self.noise_scale_m}")
        if not (self.action_dt > 0 and self.sample_dt > 0 and self.guidance_steps >= 1):
            raise ValueError(f"HindsightConfig: action_dt {self.action_dt}, sample_dt {self.sample_dt} and "
                             f"guidance_steps {self.guidance_steps} must be > 0")


@dataclass(frozen=True)
class Anchors:
    """The lifted anchors of one episode (as a planner's, after lifting), before and after the noise."""

    frames: np.ndarray      # (A,) the event frames
    clean: Waypoints        # surface points at the events, the gripper value after each
    noisy: Waypoints        # the same moved by the goal noise
    scale_m: np.ndarray     # (3,) metres per normalised unit used


class Hindsight:
    """``hindsight(episode) -> (window (T, K, 8), goal (T, 8))`` for ``load_demos`` (module docstring)."""

    def __init__(self, config: HindsightConfig | None = None) -> None:
        self.config = config or HindsightConfig()

    def anchors(self, state: np.ndarray, action: np.ndarray, rng: np.random.Generator) -> Anchors:
        c, g = self.config, self.config.guidance
        state, action = np.asarray(state, np.float64), np.asarray(action, np.float64)
        ev = gripper_events(action[:, 7], c.threshold)
        if len(ev) == 0:  # no grasp or release: the last pose is the only anchor (a via point)
            ev = np.array([len(state) - 1])
        grip = (action[ev, 7] >= c.threshold).astype(np.float64)
        pos = state[ev, :3].copy()
        pos[:, 2] += np.where(grip < 0.5, g.grasp_depth_m, -g.release_clearance_m)  # contact -> surface point
        quats = state[ev, 3:7].copy()
        for i in range(1, len(quats)):  # one hemisphere, so the spline takes the short way
            if np.dot(quats[i], quats[i - 1]) < 0:
                quats[i] = -quats[i]
        if c.noise_scale_m is not None:
            scale = np.asarray(c.noise_scale_m, np.float64)
        else:
            goals = state[next_event(len(state), ev), :3]
            scale = np.maximum(np.std(goals - state[:, :3], axis=0), c.min_scale_m)
        noisy = pos + rng.normal(0.0, 1.0, pos.shape) * c.goal_noise * scale
        return Anchors(ev, Waypoints(pos, quats, grip), Waypoints(noisy, quats, grip), scale)

    def guidance(self, state: np.ndarray, action: np.ndarray, rng: np.random.Generator):
        """The sampled guidance of one episode (time 0 = its first frame) and its anchors."""
        c, g = self.config, self.config.guidance
        state, action = np.asarray(state, np.float64), np.asarray(action, np.float64)
        a = self.anchors(state, action, rng)
        start = Pose(state[0, :3], state[0, 3:7])
        path, nominal = approach_waypoints(a.noisy, start, start_gripper=float(action[0, 7] >= c.threshold), config=g)
        durations = self._timing(action, a, path, nominal)
        # the demonstration kept the arm's limits already: its timing is taken as it is, never slowed
        spline = fit_guidance(path, durations, replace(g, v_max=UNLIMITED, a_max=UNLIMITED, w_max=UNLIMITED,
                                                       alpha_max=UNLIMITED))
        return spline.sample(c.sample_dt, stamp_ns=0), a

    def _timing(self, action: np.ndarray, a: Anchors, path: Waypoints, nominal: np.ndarray) -> np.ndarray:
        """Segment durations putting each contact where the demonstration made it and each approach and
        retreat point where the commanded path passed closest to it (module docstring)."""
        c, g = self.config, self.config.guidance
        dt, n = c.action_dt, len(action)
        n_anchor = len(a.frames)
        if len(path) - 1 != 4 * n_anchor or any(path.gripper[2 + 4 * k] == path.gripper[3 + 4 * k] for k in range(n_anchor)):
            return nominal  # a via point only (no event): the nominal timing
        pos = action[:, :3]

        def closest(point: np.ndarray, lo: float, hi: float) -> float | None:
            i = np.arange(max(int(np.ceil(lo / dt)), 0), min(int(np.floor(hi / dt)), n - 1) + 1)
            return None if len(i) == 0 else float(i[np.argmin(np.linalg.norm(pos[i] - point, axis=1))] * dt)

        d = np.array(nominal, np.float64)
        floor = 0.2
        t_prev = 0.0  # when the previous retreat point (or the start) is reached
        for k, e in enumerate(a.frames):
            t_contact = max(e * dt - g.dwell_s / 2, t_prev + 2 * floor)
            t_app = closest(path.positions[4 * k + 1], t_prev + floor, t_contact - floor)
            t_app = t_contact - nominal[4 * k + 1] if t_app is None else t_app
            t_app = float(np.clip(t_app, t_prev + floor, t_contact - floor))
            t_dwell = t_contact + g.dwell_s
            t_next = a.frames[k + 1] * dt - g.dwell_s / 2 - 2 * floor if k + 1 < n_anchor else (n - 1) * dt
            t_ret = closest(path.positions[4 * k + 4], t_dwell + floor, t_next)
            t_ret = t_dwell + nominal[4 * k + 3] if t_ret is None else max(t_ret, t_dwell + floor)
            d[4 * k:4 * k + 4] = (t_app - t_prev, t_contact - t_app, g.dwell_s, t_ret - t_dwell)
            t_prev = t_ret
        return d

    def window_goal(self, state: np.ndarray, action: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        gd, _ = self.guidance(state, action, rng)
        t = np.arange(len(state)) * c.action_dt
        rows = guidance_rows(gd)
        window = interpolate(gd.t, rows, t[:, None] + c.action_dt * np.arange(c.guidance_steps)[None, :])
        goal = rows[goal_index(gd.t, gd.gripper, t)]
        return window, goal

    def rng_for(self, state: np.ndarray) -> np.random.Generator:
        """The episode's noise generator: the seed and the episode's own data (the same episode gets the
        same noise whatever order it is read in)."""
        key = zlib.crc32(np.ascontiguousarray(state, np.float32).tobytes())
        return np.random.default_rng([self.config.seed, key])

    def __call__(self, episode: dict) -> tuple[np.ndarray, np.ndarray]:
        state = np.asarray(episode[STATE], np.float64)
        action = np.asarray(episode[ACTION], np.float64)
        if state.ndim != 2 or state.shape[1] != 8 or action.shape != state.shape or len(state) < 2:
            raise ValueError(f"hindsight guidance: need {STATE} and {ACTION} of shape (T >= 2, 8), got "
                             f"{state.shape} and {action.shape}")
        window, goal = self.window_goal(state, action, self.rng_for(state))
        return window.astype(np.float32), goal.astype(np.float32)


__all__ = ["Anchors", "Hindsight", "HindsightConfig"]
