"""A small synthetic demonstration writer in the format of docs/demos_format.md.

A pick-and-place in miniature: the plan (and so the guidance) goes through a *noisy* cup position, the
demonstrated actions through the true one, which the cloud shows. Enough structure for the expert to
learn something, small enough for fast tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down (x, y, z, w)


def _path(points: np.ndarray, grips: np.ndarray, seg_steps: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear path through ``points`` -> (t, poses (T, 8))."""
    rows = []
    for a, b, g in zip(points[:-1], points[1:], grips[1:]):
        for s in range(seg_steps):
            w = s / seg_steps
            rows.append(np.concatenate([(1 - w) * a + w * b, DOWN, [g]]))
    rows.append(np.concatenate([points[-1], DOWN, [grips[-1]]]))
    poses = np.asarray(rows)
    return np.arange(len(poses)) * dt, poses


def make_episode(rng: np.random.Generator, *, horizon: int = 16, n_points: int = 512, dt: float = 0.1,
                 seg_steps: int = 6, plan_noise: float = 0.02) -> dict:
    cup = np.array([rng.uniform(0.35, 0.55), rng.uniform(-0.15, 0.15), 0.05])
    tray = np.array([0.45, 0.3, 0.05])
    start = np.array([0.3, 0.0, 0.35]) + rng.normal(0, 0.02, 3)
    up = np.array([0, 0, 0.12])
    grips = np.array([1.0, 1.0, 0.0, 0.0, 1.0])

    def waypoints(c):
        return np.stack([start, c + up, c, tray + up, tray + np.array([0, 0, 0.03])])

    cup_hat = cup + np.r_[rng.normal(0, plan_noise, 2), 0.0]
    guidance_t, guidance = _path(waypoints(cup_hat), grips, seg_steps, dt)
    t, true = _path(waypoints(cup), grips, seg_steps, dt)
    T = len(t)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(horizon)[None, :], T - 1)  # step k at t + k dt
    action = true[idx]
    # cloud: a cup (cylinder side) and the table plane; padded by repetition after n_valid real points
    n_cup, n_table = n_points // 2, n_points // 2
    clouds = np.empty((T, n_points, 3), np.float32)
    n_valid = np.full(T, n_points - 7, np.int32)
    for i in range(T):
        held = true[i, 7] < 0.5 and i > 2 * seg_steps
        c = true[i, :3] - np.array([0, 0, 0.05]) if held else cup
        ang = rng.uniform(0, 2 * np.pi, n_cup)
        cup_pts = np.stack([c[0] + 0.03 * np.cos(ang), c[1] + 0.03 * np.sin(ang),
                            c[2] + rng.uniform(-0.05, 0.05, n_cup)], axis=1)
        table = np.stack([rng.uniform(0.2, 0.7, n_table), rng.uniform(-0.3, 0.4, n_table), np.zeros(n_table)], axis=1)
        pts = np.concatenate([cup_pts, table]).astype(np.float32)
        nv = n_valid[i]
        pts[nv:] = pts[: n_points - nv]
        clouds[i] = pts
    goal = np.repeat(guidance[-1:], T, axis=0)
    return {"t": t, "cloud": clouds, "cloud_n_valid": n_valid, "ee_pose": true[:, :7], "gripper": true[:, 7],
            "joints": np.zeros((T, 7)), "guidance_t": guidance_t, "guidance": guidance, "goal": goal,
            "action": action, "success": np.array(True)}


def write_demos(out: Path, episodes: int = 4, seed: int = 0, **kw) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        np.savez(out / f"episode_{e:06d}.npz", **make_episode(rng, **kw))
    meta = {"tasks": ["synthetic_pick_place"], "seed": seed, "episodes": episodes, "expert_dt": kw.get("dt", 0.1),
            "action_dt": kw.get("dt", 0.1), "n_points": kw.get("n_points", 512), "horizon": kw.get("horizon", 16)}
    (out / "meta.json").write_text(json.dumps(meta))
    return out
