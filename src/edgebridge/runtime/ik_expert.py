"""The plain-IK executor (the baseline the paper compares against) and the guidance it follows.

``IKExpert`` implements :class:`~edgebridge.interfaces.ActionExpert` but ignores the point cloud: its
chunk is the next ``horizon`` guidance poses from the current time, i.e. it follows the B-spline
through the lifted plan exactly as drawn. The arm driver's IK turns the poses into joints.

The guidance itself is built the same way wherever a plan is executed (episodes, demonstrations, the
runtime pipeline), by :func:`approach_waypoints` then :func:`fit_guidance`:

- a lifted anchor whose gripper value differs from the previous one is a *contact* (grasp or release):
  it becomes approach (``approach_m`` above), contact, the gripper change in place (``dwell_s``) and
  retreat. A grasp contact sits ``grasp_depth_m`` below the measured surface point (not below
  ``min_z``); a release sits ``release_clearance_m`` above it;
- an anchor with an unchanged gripper is a *via* point: passed ``approach_m`` above its surface;
- the spline starts at the current end-effector pose and gets per-segment durations from distance at
  ``speed_m_s`` (then slowed uniformly, if needed, to the speed/acceleration limits).

No simulator imports here: this module is part of the runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..config import check
from ..contracts import ActionChunk, ArmState, Guidance, Pose, PointCloud, Waypoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceConfig:
    approach_m: float = 0.10
    grasp_depth_m: float = 0.025
    release_clearance_m: float = 0.045
    min_z: float = 0.015
    dwell_s: float = 0.6
    speed_m_s: float = 0.18
    min_segment_s: float = 0.4
    v_max: float = 0.4
    a_max: float = 1.0
    w_max: float = 1.5
    alpha_max: float = 4.0

    def __post_init__(self) -> None:
        for name in ("approach_m", "grasp_depth_m", "release_clearance_m", "dwell_s", "speed_m_s",
                     "min_segment_s", "v_max", "a_max", "w_max", "alpha_max"):
            v = getattr(self, name)
            check(v >= 0 if name in ("grasp_depth_m", "release_clearance_m") else v > 0, f"guidance.{name}",
                  f"must be {'>= 0' if name in ('grasp_depth_m', 'release_clearance_m') else '> 0'}, got {v}")


def approach_waypoints(lifted: Waypoints, start: ArmState | Pose, start_gripper: float | None = None,
                       config: GuidanceConfig | None = None) -> tuple[Waypoints, np.ndarray]:
    """Expand lifted surface waypoints into an executable path (module docstring); returns the path
    (starting at the current end-effector pose) and the duration of each of its segments."""
    c = config or GuidanceConfig()
    pose = start.ee_pose if isinstance(start, ArmState) else start
    g_prev = float(start.gripper if isinstance(start, ArmState) and start_gripper is None else
                   (1.0 if start_gripper is None else start_gripper))
    g_prev = 1.0 if g_prev >= 0.5 else 0.0
    up = np.array([0.0, 0.0, c.approach_m])
    P, Q, G, D = [pose.position], [pose.quat], [g_prev], []

    def add(p, q, g, dur=None):
        dist = float(np.linalg.norm(np.asarray(p) - P[-1]))
        D.append(dur if dur is not None else max(dist / c.speed_m_s, c.min_segment_s))
        P.append(np.asarray(p, dtype=np.float64))
        Q.append(q)
        G.append(g)

    for p, q, g in zip(lifted.positions, lifted.quats, lifted.gripper):
        g = 1.0 if g >= 0.5 else 0.0
        if g == g_prev:  # via point: pass over it
            add(p + up, q, g)
            continue
        contact = p.copy()
        if g < 0.5:  # grasp below the visible surface
            contact[2] = max(contact[2] - c.grasp_depth_m, c.min_z)
        else:  # release above it
            contact[2] = max(contact[2] + c.release_clearance_m, c.min_z)
        add(contact + up, q, g_prev)
        add(contact, q, g_prev)
        add(contact, q, g, dur=c.dwell_s)
        add(contact + up, q, g)
        g_prev = g
    wp = Waypoints(np.array(P), np.array(Q), np.array(G), frame=lifted.frame, stamp_ns=lifted.stamp_ns)
    return wp, np.array(D)


class PiecewiseGuidance:
    """Splines joined end to start at every stop (a contact, where the gripper acts): each piece has zero
    velocity at both ends, so the path never overshoots a grasp or release point."""

    def __init__(self, pieces: list) -> None:
        if not pieces:
            raise ValueError("PiecewiseGuidance: need at least one spline piece")
        self.pieces = pieces
        self.offsets = np.concatenate([[0.0], np.cumsum([p.duration for p in pieces])])

    @property
    def duration(self) -> float:
        return float(self.offsets[-1])

    def evaluate_many(self, ts) -> np.ndarray:
        ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        idx = np.clip(np.searchsorted(self.offsets, ts, side="right") - 1, 0, len(self.pieces) - 1)
        out = np.empty((ts.size, 8))
        for k in np.unique(idx):
            m = idx == k
            local = ts[m] - self.offsets[k]
            piece = self.pieces[k]
            out[m, :3] = np.atleast_2d(piece.position(local))
            out[m, 3:7] = np.atleast_2d(piece.orientation(local))
            out[m, 7] = np.atleast_1d(piece.gripper(local))
        return out

    def sample(self, dt: float, t0: float = 0.0, stamp_ns: int | None = None) -> Guidance:
        dt = float(dt)
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"PiecewiseGuidance.sample: dt must be > 0 s, got {dt!r}")
        n = max(1, int(np.floor((self.duration - t0) / dt + 1e-9)) + 1)
        ts = t0 + dt * np.arange(n)
        rows = self.evaluate_many(ts)
        kw = {} if stamp_ns is None else {"stamp_ns": int(stamp_ns)}
        return Guidance(ts, rows[:, :3], rows[:, 3:7], np.clip(rows[:, 7], 0.0, 1.0), **kw)


def fit_guidance(path: Waypoints, durations: np.ndarray, config: GuidanceConfig | None = None) -> PiecewiseGuidance:
    """B-spline pieces through ``path`` with ``durations``, split at every gripper change (a stop),
    each slowed uniformly if it breaks the speed/acceleration limits."""
    from ..kernels import GuidanceSpline

    c = config or GuidanceConfig()
    durations = np.asarray(durations, dtype=np.float64)
    if durations.shape != (len(path) - 1,):
        raise ValueError(f"fit_guidance: need {len(path) - 1} segment durations, got {durations.shape}")
    g = path.gripper
    stops = [0] + [i for i in range(1, len(path) - 1) if g[i] != g[i + 1] or g[i] != g[i - 1]] + [len(path) - 1]
    stops = sorted(set(stops))
    pieces = []
    for a, b in zip(stops[:-1], stops[1:]):
        wp = Waypoints(path.positions[a:b + 1], path.quats[a:b + 1], path.gripper[a:b + 1], frame=path.frame)
        spline = GuidanceSpline.fit(wp, durations=durations[a:b])
        scaled = spline.time_scaled(c.v_max, c.a_max, c.w_max, c.alpha_max)
        pieces.append(scaled if scaled.duration > spline.duration else spline)
    return PiecewiseGuidance(pieces)


@dataclass(frozen=True)
class IKExpertConfig:
    horizon: int = 16
    dt: float = 0.1
    min_z: float = 0.005

    def __post_init__(self) -> None:
        check(self.horizon >= 1, "ik_expert.horizon", f"must be >= 1, got {self.horizon}")
        check(self.dt > 0, "ik_expert.dt", f"must be > 0, got {self.dt}")


def interpolate_guidance(guidance: Guidance, ts: np.ndarray) -> np.ndarray:
    """(len(ts), 8) rows x y z qx qy qz qw gripper at times ``ts`` (held at the ends; quaternions by
    normalised linear interpolation along the shorter arc)."""
    t = guidance.t
    ts = np.clip(np.asarray(ts, dtype=np.float64), t[0], t[-1])
    out = np.empty((ts.size, 8))
    for k in range(3):
        out[:, k] = np.interp(ts, t, guidance.positions[:, k])
    out[:, 7] = np.interp(ts, t, guidance.gripper)
    i = np.clip(np.searchsorted(t, ts, side="right") - 1, 0, len(t) - 1)
    j = np.minimum(i + 1, len(t) - 1)
    span = np.where(t[j] > t[i], t[j] - t[i], 1.0)
    s = np.clip((ts - t[i]) / span, 0.0, 1.0)[:, None]
    qa, qb = guidance.quats[i], guidance.quats[j]
    qb = np.where(np.sum(qa * qb, axis=1, keepdims=True) < 0, -qb, qb)
    q = (1 - s) * qa + s * qb
    out[:, 3:7] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return out


class IKExpert:
    """Follows the guidance: the chunk is the next ``horizon`` guidance poses from the current time.

    The current time on the guidance clock is ``(state.stamp_ns - guidance.stamp_ns) / 1e9``: the
    caller stamps the guidance with the time its ``t = 0`` corresponds to."""

    needs_cloud = False
    name = "ik"

    def __init__(self, config: IKExpertConfig | None = None) -> None:
        self.config = config or IKExpertConfig()

    def act(self, cloud: PointCloud | None, state: ArmState, guidance: Guidance) -> ActionChunk:
        import time

        t0 = time.perf_counter()
        if not isinstance(guidance, Guidance):
            raise TypeError(f"IKExpert.act: guidance must be a Guidance, got {type(guidance).__name__}")
        c = self.config
        now = (state.stamp_ns - guidance.stamp_ns) / 1e9
        rows = interpolate_guidance(guidance, now + c.dt * np.arange(c.horizon))
        rows[:, 2] = np.maximum(rows[:, 2], c.min_z)
        start_ns = max(0, guidance.stamp_ns + int(round(now * 1e9)))
        return ActionChunk(rows, start_ns=start_ns, dt=c.dt, inference_ms=(time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        pass

    def __enter__(self) -> "IKExpert":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
