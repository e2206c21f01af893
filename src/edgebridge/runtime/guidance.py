"""Guidance: lifted waypoints -> the executable path -> a time-parametrised trajectory, and its
interpolation. Built the same way wherever a plan is executed (the runtime pipeline, episodes in the
simulator, demonstrations), by :func:`approach_waypoints` then :func:`fit_guidance`:

- a lifted anchor whose gripper value differs from the previous one is a *contact* (grasp or release):
  it becomes approach (``approach_m`` above), contact, the gripper change in place (``dwell_s``) and
  retreat. A grasp contact sits ``grasp_depth_m`` below the measured surface point (not below
  ``min_z``); a release sits ``release_clearance_m`` above it;
- an anchor with an unchanged gripper is a *via* point: passed ``approach_m`` above its surface;
- the spline starts at the current end-effector pose and gets per-segment durations from distance at
  ``speed_m_s`` (then slowed uniformly, if needed, to the speed/acceleration limits).

A sampled :class:`~edgebridge.contracts.Guidance` is read between its samples by :func:`interpolate`
(the one interpolation every executor and the expert's features use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import check
from ..contracts import ArmState, Guidance, Pose, Waypoints


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
            out[m] = piece.evaluate_many(local)  # one compiled call per piece (kernels/_spline_jit.py)
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


def interpolate(t: np.ndarray, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Rows ``x y z qx qy qz qw gripper`` of a sampled trajectory (``t`` (T,), ``rows`` (T, 8)) at
    ``times`` (any shape) -> ``times.shape + (8,)``, held at the ends. Positions and gripper are
    interpolated linearly, quaternions by normalised linear interpolation along the shorter arc (the
    guidance is dense, so this matches slerp to well under a milliradian)."""
    t = np.asarray(t, np.float64)
    rows = np.asarray(rows, np.float64)
    times = np.clip(np.asarray(times, np.float64), t[0], t[-1])
    if t.shape[0] == 1:
        return np.broadcast_to(rows[0], times.shape + (8,)).copy()
    i = np.clip(np.searchsorted(t, times, side="right") - 1, 0, t.shape[0] - 2)
    span = t[i + 1] - t[i]
    w = np.where(span > 0, (times - t[i]) / np.where(span > 0, span, 1.0), 0.0)[..., None]
    a, b = rows[i], rows[i + 1]
    qa, qb = a[..., 3:7], b[..., 3:7]
    qb = np.where(np.sum(qa * qb, axis=-1, keepdims=True) < 0, -qb, qb)
    q = (1 - w) * qa + w * qb
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    out = (1 - w) * a + w * b
    out[..., 3:7] = q
    return out


def guidance_rows(guidance: Guidance) -> np.ndarray:
    """(T, 8) rows ``x y z qx qy qz qw gripper`` of a sampled guidance."""
    return np.concatenate([guidance.positions, guidance.quats, guidance.gripper[:, None]], axis=1)


def interpolate_guidance(guidance: Guidance, ts: np.ndarray) -> np.ndarray:
    """:func:`interpolate` on a :class:`~edgebridge.contracts.Guidance`."""
    return interpolate(guidance.t, guidance_rows(guidance), ts)
