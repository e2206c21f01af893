"""Grasps during an episode: a gripper that closed on nothing, and the pre-grasp point.

:class:`~edgebridge.runtime.plan_session.PlanSession` reads each guidance it starts with
:func:`grasp_events`: per gripper close (the guidance's gripper crossing 0.5 downwards, as
``guidance.approach_waypoints`` builds a grasp contact) the time the arm passes the pre-grasp point
(``approach_m`` above the contact), the time the close ends and the contact point, and which anchor of
the guidance's waypoints the close belongs to (:func:`close_anchors`, so the session knows the sub-task).

- **empty grasp**: from ``grasp_settle_s`` after a close has ended until the guidance starts opening the
  gripper again, ``ArmState.gripper`` (0 closed, 1 open, the measured opening on every driver) below
  ``empty_grasp_width`` means the gripper closed on nothing, or lost what it held (an object caught by its
  rim slips out within a second). The session then follows :func:`retreat_guidance` (straight up to
  ``approach_m`` above the contact, open there, then back to the highest point of its approach to the
  grasp, out of the camera's view of the object) and re-plans the sub-task from a fresh frame, at most
  ``max_regrasps`` times per episode.
- **pre-grasp re-plan** (``replan_before_grasp``): when the arm reaches the pre-grasp point the session
  holds there (:func:`hold_guidance`) and re-plans the sub-task once from a fresh frame.

Every guidance here is an ordinary :class:`~edgebridge.contracts.Guidance`: the expert follows it and the
loop's limiter and safety layer check every command it yields, as for any plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts import ArmState, Guidance, Pose, Waypoints
from .guidance import GuidanceConfig, fit_guidance

CLOSED = 0.5  # the gripper value below which a guidance sample is closed (guidance.approach_waypoints)


@dataclass(frozen=True)
class GraspPolicy:
    """What the session does around grasps (``planner.*`` of the setup, the guidance's geometry)."""

    max_regrasps: int = 2
    empty_width: float = 0.05
    settle_s: float = 0.4
    replan_before_grasp: bool = False
    guidance: GuidanceConfig = GuidanceConfig()
    dt: float = 0.05  # the sampling step of the guidance (perception.guidance_dt)

    @classmethod
    def from_config(cls, cfg, guidance: GuidanceConfig | None = None) -> "GraspPolicy":
        """The policy of a setup (``runtime.config.RobotConfig``) with the pipeline's guidance settings."""
        pc = cfg.planner
        return cls(max_regrasps=pc.max_regrasps, empty_width=pc.empty_grasp_width, settle_s=pc.grasp_settle_s,
                   replan_before_grasp=pc.replan_before_grasp, guidance=guidance or GuidanceConfig(),
                   dt=cfg.perception.guidance_dt)

    @property
    def active(self) -> bool:
        return self.max_regrasps > 0 or self.replan_before_grasp

    def is_empty(self, gripper: float) -> bool:
        return float(gripper) < self.empty_width

    def retreat(self, state: ArmState, contact: np.ndarray, stamp_ns: int,
                back: Pose | None = None) -> tuple[float, Guidance]:
        """:func:`retreat_guidance` with this policy's guidance settings."""
        return retreat_guidance(state, contact, self.guidance, self.dt, stamp_ns, back)


@dataclass
class GraspEvent:
    """One gripper close of a guidance: loop-clock times (ns) of the pre-grasp point, the end of the close,
    the start of the gripper checks (end + settle) and their end (the guidance starts opening again, or
    ends), the contact point, where to go back to before a re-plan (``back``: the highest pose of the
    approach to this grasp since the guidance's previous gripper event or its start), and the index of its
    anchor in the waypoints the guidance was built from (-1 if unknown)."""

    pre_ns: int
    closed_ns: int
    check_ns: int
    until_ns: int
    contact: np.ndarray
    back: Pose | None = None
    anchor: int = -1


def close_anchors(wp: Waypoints, start_gripper: float) -> list[int]:
    """Indices of the waypoints that become a grasp contact in ``guidance.approach_waypoints`` (the
    gripper going from open to closed there), starting from a gripper at ``start_gripper``."""
    g_prev = 1.0 if start_gripper >= CLOSED else 0.0
    out = []
    for i, g in enumerate(np.asarray(wp.gripper, np.float64)):
        g = 1.0 if g >= CLOSED else 0.0
        if g != g_prev and g == 0.0:
            out.append(i)
        g_prev = g
    return out


def grasp_events(guidance: Guidance, settle_s: float, approach_m: float, anchors: list[int] | None = None,
                 tol_m: float = 0.01) -> list[GraspEvent]:
    """The closes of a sampled ``guidance`` (stamped with the loop time of its ``t = 0``), in order. The
    pre-grasp point is the last sample before the close at least ``approach_m - tol_m`` above the contact
    (the highest one when the guidance never gets that high)."""
    t = np.asarray(guidance.t, np.float64)
    g = np.asarray(guidance.gripper, np.float64)
    pos = np.asarray(guidance.positions, np.float64)
    closes = [int(i) for i in np.flatnonzero((g[:-1] >= CLOSED) & (g[1:] < CLOSED)) + 1]
    out = []
    for k, c in enumerate(closes):
        contact = pos[c].copy()  # the gripper closes in place (guidance.approach_waypoints' dwell)
        ramp = c - 1  # where this close starts: back along the falling gripper
        while ramp > 0 and g[ramp - 1] > g[ramp] + 1e-6:
            ramp -= 1
        moving = np.flatnonzero(np.abs(np.diff(g[:ramp + 1])) > 1e-6)  # an earlier gripper event (a release)
        start = int(moving[-1]) + 1 if moving.size else 0
        top = start + int(np.argmax(pos[start:ramp + 1, 2]))
        above = np.flatnonzero(pos[:c, 2] >= contact[2] + approach_m - tol_m)
        pre = int(above[-1]) if above.size else int(np.argmax(pos[:c + 1, 2]))
        low = np.flatnonzero(g[c:] <= g[c:].min() + 1e-3)
        end = c + int(low[0])
        rising = np.flatnonzero(g[end:] > g[end] + 1e-3)
        until = t[end + int(rising[0]) - 1] if rising.size else t[-1]
        base = int(guidance.stamp_ns)
        check = t[end] + settle_s
        out.append(GraspEvent(pre_ns=base + int(t[pre] * 1e9), closed_ns=base + int(t[end] * 1e9),
                              check_ns=base + int(check * 1e9), until_ns=base + int(max(until, check) * 1e9),
                              contact=contact, back=Pose(pos[top], np.asarray(guidance.quats)[top]),
                              anchor=anchors[k] if anchors is not None and k < len(anchors) else -1))
    return out


def retreat_guidance(state: ArmState, contact: np.ndarray, config: GuidanceConfig, dt: float,
                     stamp_ns: int, back: Pose | None = None) -> tuple[float, Guidance]:
    """From the arm's pose with the gripper closed (on nothing): straight up to ``approach_m`` above the
    ``contact`` point (or stay at the present height when already above it), open there, then move to
    ``back`` (default: stay); returns (duration_s, guidance stamped ``stamp_ns``). Lifting first keeps the
    opening fingers off the object; going back (``GraspEvent.back``: the highest point of the approach to
    the grasp) takes the arm out of the camera's view of the object for the re-plan."""
    pose = state.ee_pose
    p0 = np.asarray(pose.position, np.float64)
    top = p0.copy()
    top[2] = max(p0[2], float(contact[2]) + config.approach_m)
    end = top if back is None else np.asarray(back.position, np.float64)
    q_end = pose.quat if back is None else back.quat
    path = Waypoints(np.stack([p0, top, top, end]), np.stack([pose.quat, pose.quat, pose.quat, q_end]),
                     np.array([0.0, 0.0, 1.0, 1.0]))
    lift = max(float(np.linalg.norm(top - p0)) / config.speed_m_s, config.min_segment_s)
    # the last piece keeps the gripper open throughout, so the sampled guidance ends fully open
    move = max(float(np.linalg.norm(end - top)) / config.speed_m_s, config.min_segment_s, 2 * dt)
    spline = fit_guidance(path, np.array([lift, config.dwell_s, move]), config)
    return spline.duration, spline.sample(dt, stamp_ns=stamp_ns)


def hold_guidance(state: ArmState, gripper: float, stamp_ns: int) -> Guidance:
    """A guidance that holds the arm's present pose with the gripper at ``gripper`` (while re-planning)."""
    pose = state.ee_pose
    return Guidance(np.array([0.0, 1.0]), np.stack([pose.position] * 2), np.stack([pose.quat] * 2),
                    np.full(2, float(np.clip(gripper, 0.0, 1.0))), stamp_ns=int(stamp_ns))
