"""Disturbances of a simulated episode: a target that moves while the arm reaches for it.

:class:`CupPush` (``run_episode(push_cup=True)``, sim_success's ``push_cup`` conditions) pushes the cup
once, 3-6 cm across the table in a random horizontal direction, at a random moment between the start of
the first guidance that grasps it and the moment that guidance starts closing the gripper on it (both
drawn with the episode's seed). It sees every guidance the pipeline builds (``Devices.on_guidance``) and
is ticked by the episode's supervisor (``Devices.abort``, every expert period), so the push happens
between physics steps of the same lock-step episode. The cup keeps its orientation and height (upright
on the table); a direction that would put it into another object, the arm or off the table is drawn
again, and after ``TRIES`` such directions the push is skipped. What happened is recorded in
``events["push_cup"]`` (the episode outcome's ``events``): when (simulated time, time after the
guidance started, time left before the close), how far, in which direction, from where to where.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import ConfigError
from ..contracts import Pose
from .world import SimWorld

log = logging.getLogger(__name__)

PUSH_M = (0.03, 0.06)  # push distance, uniform
WHEN = (0.1, 0.9)      # push moment as a fraction of the time from the guidance's start to the close's start
TRIES = 24
CLEARANCE_M = 0.005
NEAR_M = 0.06          # a close whose contact lies this near the cup (horizontally) is a grasp of the cup


class CupPush:
    """Pushes ``obj`` (default the cup) once before it is grasped; see the module docstring."""

    def __init__(self, world: SimWorld, seed: int, events: dict | None = None, obj: str = "cup") -> None:
        if obj not in world.objects:
            raise ConfigError(f"push_cup: the scene has no {obj} to push (it has {sorted(world.objects)}); use a "
                              f"task with a cup")
        self.world, self.obj = world, obj
        self.rng = np.random.default_rng([int(seed), 5113])
        self.events = events if events is not None else {}
        self.at_ns: int | None = None
        self.done = False
        self._plan: dict = {}
        self.events["push_cup"] = {"pushed": False, "why": "no guidance grasped the cup"}

    def on_guidance(self, lifted, state, path, spline, stamp_ns: int) -> None:
        """A guidance was built: the first one that closes the gripper near the cup fixes the push moment."""
        if self.at_ns is not None or self.done:
            return
        t_close = self._close_start(path, spline)
        if t_close is None:
            return
        u = float(self.rng.uniform(*WHEN))
        self.at_ns = int(stamp_ns) + int(u * t_close * 1e9)
        self._plan = {"t_after_guidance_s": round(u * t_close, 3), "before_close_s": round((1 - u) * t_close, 3)}
        self.events["push_cup"] = {"pushed": False, "why": "the episode ended before the push", **self._plan}

    def _close_start(self, path, spline) -> float | None:
        """Seconds from the guidance's start to where it starts closing the gripper on the cup, or None."""
        g = np.asarray(path.gripper, np.float64)
        cup = self.world.pose(self.obj).position
        closes = [i for i in range(len(g) - 1) if g[i] >= 0.5 > g[i + 1]]
        near = [k for k, i in enumerate(closes) if np.linalg.norm(path.positions[i][:2] - cup[:2]) <= NEAR_M]
        if not near:
            return None
        ts = np.arange(0.0, spline.duration, 0.01)
        grip = spline.evaluate_many(ts)[:, 7]
        starts = [j for j in range(1, ts.size) if grip[j - 1] >= 0.999 > grip[j]]
        k = near[0]
        return float(ts[starts[k] - 1]) if k < len(starts) else None

    def tick(self) -> None:
        """Called at the expert's rate: push once the moment has come."""
        if self.done or self.at_ns is None or self.world.clock.now_ns() < self.at_ns:
            return
        self.done = True
        self.events["push_cup"] = self.push()

    def push(self) -> dict:
        """Push the cup now (a random distance, directions drawn until one is clear); returns the record."""
        w = self.world
        start = w.pose(self.obj)
        dist = float(self.rng.uniform(*PUSH_M))
        rec = {"at_s": round(w.clock.now_ns() / 1e9, 3), **self._plan, "distance_m": round(dist, 4),
               "from": np.round(start.position, 4).tolist()}
        for k in range(TRIES):
            a = float(self.rng.uniform(0.0, 2 * math.pi))
            to = start.position + dist * np.array([math.cos(a), math.sin(a), 0.0])
            w.set_pose(self.obj, Pose(to, start.quat))
            if self._clear():
                rec.update(pushed=True, direction_deg=round(math.degrees(a), 1), to=np.round(to, 4).tolist(),
                           tries=k + 1)
                log.info("pushed the %s %.3f m at %.0f deg (at %.2f s)", self.obj, dist, math.degrees(a), rec["at_s"])
                return rec
        w.set_pose(self.obj, start)
        rec.update(pushed=False, why=f"no clear direction in {TRIES} tries")
        log.info("push of the %s skipped: %s", self.obj, rec["why"])
        return rec

    def _clear(self) -> bool:
        w = self.world
        if not w.on_table(self.obj):
            return False
        body = w.object(self.obj).body
        others = [o.body for n, o in w.objects.items() if n != self.obj] + [w.robot]
        return all(not w.p.getClosestPoints(body, other, CLEARANCE_M) for other in others)
