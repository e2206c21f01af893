"""The oracle planner: the plan a perfect VLM would give, computed from privileged simulator state.

For every pick-and-place step of the instruction it emits two anchors, as a VLM does: a pixel on the
object with gripper 0 (close there) and a pixel on the destination with gripper 1 (open there); for
an obstacle in the way, a via anchor on top of it (gripper unchanged). The pixel "on the object" is the
one of the object's visible surface (from a clean render and its segmentation) whose 3-D point is
nearest the object's vertical axis, highest first: the middle of a cube's top face, the inside bottom
of a mug. The plan's orientation is a top-down grasp with the fingers across the first object (across
a mug's handle axis). Sub-task boundaries mark each step's first anchor.

Optional plan noise emulates an imperfect VLM: ``pixel_noise_px`` (Gaussian, pixels) and/or
``offset_m`` (a random 3-D offset of that length added to each anchor's surface point, projected back
to a pixel), seeded.

``wrong_first_plan`` makes the episode's first plan wrong, as a VLM may be on its first look; every
later plan (a re-plan from a fresh frame) is the normal one. ``"wrong_object"``: the grasp anchor of the
first step points at another movable object of the scene (a distractor or another task object, drawn
with ``seed``); ``"grasp_8cm"``: it points at the surface 8 cm beside the object (a horizontal offset in
a seeded random direction, projected back to a pixel; directions whose point lies on another object or
off the table are drawn again). The destination anchors are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..config import check
from ..contracts import Anchor, Plan, RGBD, now_ns
from ..errors import PlanError
from .camera import SimCamera
from .tasks import Step, resolve_steps
from .world import SimWorld

log = logging.getLogger(__name__)

_WARNED = False  # the privileged-plan warning is logged once per process
TOP_DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # gripper z axis pointing down, fingers along base y
TRAY_SLOTS = np.array([[0.0, 0.0], [-0.06, -0.05], [0.06, 0.05], [0.06, -0.05], [-0.06, 0.05]])
WRONG_PLANS = ("wrong_object", "grasp_8cm")
WRONG_GRASP_OFFSET_M = 0.08


@dataclass(frozen=True)
class OracleConfig:
    pixel_noise_px: float = 0.0
    offset_m: float = 0.0
    seed: int = 0
    axis_radius_m: float = 0.012
    wrong_first_plan: str | None = None  # None, "wrong_object" or "grasp_8cm" (module docstring)

    def __post_init__(self) -> None:
        check(self.wrong_first_plan is None or self.wrong_first_plan in WRONG_PLANS, "oracle.wrong_first_plan",
              f"expected None or one of {list(WRONG_PLANS)}, got {self.wrong_first_plan!r}")
        check(self.pixel_noise_px >= 0, "oracle.pixel_noise_px", f"must be >= 0, got {self.pixel_noise_px}")
        check(0 <= self.offset_m < 0.5, "oracle.offset_m", f"must lie in [0, 0.5) m, got {self.offset_m}")
        check(self.axis_radius_m > 0, "oracle.axis_radius_m", f"must be > 0, got {self.axis_radius_m}")


def top_down_quat(yaw: float) -> np.ndarray:
    """Top-down gripper orientation (x, y, z, w) rotated by ``yaw`` about the base z axis."""
    half = yaw / 2.0
    qz = np.array([0.0, 0.0, math.sin(half), math.cos(half)])
    x1, y1, z1, w1 = qz
    x2, y2, z2, w2 = TOP_DOWN
    q = np.array([w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2, w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                  w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2, w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2])
    return q / np.linalg.norm(q)


def grasp_yaw(world: SimWorld, name: str) -> float:
    """Gripper yaw putting the fingers across the object: along a mug's body x axis (away from the
    handle), along a cube's face normal. Folded into [-pi/2, pi/2] (the gripper is symmetric)."""
    obj = world.object(name)
    q = world.pose(name).quat
    yaw = math.atan2(2 * (q[3] * q[2] + q[0] * q[1]), 1 - 2 * (q[1] ** 2 + q[2] ** 2))
    # fingers open along the tool's y axis, which is base -y at yaw 0 (TOP_DOWN); mug x axis -> +90 deg
    psi = yaw + math.pi / 2 if obj.kind == "mug" else yaw
    period = math.pi if obj.kind == "mug" else math.pi / 2
    psi = (psi + period / 2) % period - period / 2
    return psi


class OraclePlanner:
    """Implements :class:`~edgebridge.interfaces.Planner` from privileged simulator state."""

    def __init__(self, world: SimWorld, camera: SimCamera, config: OracleConfig | None = None,
                 events: dict | None = None) -> None:
        self.world = world
        self.events = events  # where a wrong first plan is recorded ("wrong_plan"), e.g. the episode's events
        self.camera = camera
        self.config = config or OracleConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self._wrong_rng = np.random.default_rng([self.config.seed, 7321])  # the wrong plan's own draws
        self.plans = 0  # plans made so far
        self.wrong: dict | None = None  # what the wrong first plan pointed at (wrong_first_plan)

    def close(self) -> None:
        pass

    def __enter__(self) -> "OraclePlanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ planning
    def plan(self, rgbd: RGBD, instruction: str) -> Plan:
        global _WARNED
        if not _WARNED:
            log.warning("OraclePlanner: plans come from privileged simulator state (true object poses), "
                        "not from the image; use it for demonstrations and baselines only")
            _WARNED = True
        t0 = now_ns()
        steps = resolve_steps(self.world, instruction)
        _, depth, seg = self.camera.render()
        if seg is None:
            raise PlanError("OraclePlanner: the sim camera must render segmentation (camera.segmentation=True)")
        targets, subtasks = self.anchor_targets(steps)
        wrong = self.config.wrong_first_plan if self.plans == 0 else None
        self.plans += 1
        if wrong == "wrong_object":  # the first step's grasp names another movable object
            name = self._other_object(steps[0].obj)
            targets[0] = (name, targets[0][1], None)
            self.wrong = {"mode": wrong, "object": name, "instead_of": steps[0].obj}
        anchors = [self._anchor(name, g, depth, seg, rgbd, aim=aim) for name, g, aim in targets]
        if wrong == "grasp_8cm":  # the first step's grasp lies 8 cm beside the object
            anchors[0] = self._beside(steps[0].obj, anchors[0], depth, seg, rgbd)
        if wrong is not None:
            log.info("OraclePlanner: a wrong first plan: %s", self.wrong)
            if self.events is not None:
                self.events["wrong_plan"] = dict(self.wrong)
        # one orientation per plan: across the mug if there is one (cubes fit the gripper at any yaw)
        mugs = [s.obj for s in steps if self.world.object(s.obj).kind == "mug"]
        yaw = grasp_yaw(self.world, mugs[0] if mugs else steps[0].obj)
        ms = (now_ns() - t0) / 1e6
        return Plan(instruction=instruction, anchors=tuple(anchors), orientation=top_down_quat(yaw),
                    subtasks=subtasks, source="oracle", privileged=True, stamp_ns=rgbd.stamp_ns,
                    timings_ms={"plan": ms})

    def anchor_targets(self, steps: tuple[Step, ...]) -> tuple[list[tuple[str, float, np.ndarray | None]], tuple[int, ...]]:
        """What each anchor of the plan points at, in order: (object name, gripper, aim (x, y) or None),
        and the sub-task starts. Per step: the object (close), a via anchor on each obstacle in the way,
        the destination (open; into a tray at the next of its slots)."""
        targets: list[tuple[str, float, np.ndarray | None]] = []
        subtasks: list[int] = []
        n_into: dict[str, int] = {}
        for step in steps:
            subtasks.append(len(targets))
            targets.append((step.obj, 0.0, None))
            for via in self._obstacles_between(step):
                targets.append((via, 0.0, None))
            aim = None
            if self.world.object(step.target).kind == "tray":  # spread the objects over the tray
                k = n_into[step.target] = n_into.get(step.target, -1) + 1
                aim = self.world.pose(step.target).position[:2] + TRAY_SLOTS[k % len(TRAY_SLOTS)]
            targets.append((step.target, 1.0, aim))
        return targets, tuple(subtasks)

    def anchor_points(self, instruction: str, depth: np.ndarray, seg: np.ndarray) -> list[tuple[str, float, int, int, np.ndarray]]:
        """The clean plan's anchors with what they point at: (object name, gripper, u, v, 3-D surface
        point in the base frame) each, from a clean ``depth`` and ``seg`` of the current camera pose
        (the anchors of :meth:`plan` without plan noise)."""
        targets, _ = self.anchor_targets(resolve_steps(self.world, instruction))
        out = []
        for name, g, aim in targets:
            u, v, p = self.surface_point(name, depth, seg, aim)
            out.append((name, g, u, v, p))
        return out

    def _obstacles_between(self, step: Step) -> list[str]:
        """Fixed obstacles (kind ``block``) whose footprint the straight path object -> target crosses."""
        a = self.world.pose(step.obj).position[:2]
        b = self.world.pose(step.target).position[:2]
        out = []
        for name, obj in self.world.objects.items():
            if obj.kind != "block":
                continue
            lo, hi = self.world.aabb(name)
            s = np.linspace(0.0, 1.0, 50)[:, None]
            path = a + s * (b - a)
            if np.any(np.all((path >= lo[:2] - 0.02) & (path <= hi[:2] + 0.02), axis=1)):
                out.append(name)
        return out

    def surface_point(self, name: str, depth: np.ndarray, seg: np.ndarray,
                      aim: np.ndarray | None = None) -> tuple[int, int, np.ndarray]:
        """The visible pixel of ``name`` whose 3-D point is nearest its vertical axis (or the vertical
        line through ``aim`` (x, y)), then highest for boxes."""
        obj = self.world.object(name)
        vs, us = np.nonzero((seg == obj.body) & (depth > 0))
        if us.size == 0:
            raise PlanError(f"OraclePlanner: {name} is not visible from the camera (occluded or out of view); "
                            f"move the camera so that it sees the workspace")
        k = self.camera.intrinsics
        z = depth[vs, us].astype(np.float64)
        pc = np.stack([(us - k.cx) / k.fx * z, (vs - k.cy) / k.fy * z, z], axis=1)
        T = self.camera.T_base_cam
        pb = pc @ T[:3, :3].T + T[:3, 3]
        lo, hi = self.world.aabb(name)
        centre = (lo + hi) / 2
        if obj.kind == "mug":  # the body's axis, not the bounding-box centre pulled towards the handle
            centre = self.world.pose(name).position
        if aim is not None:
            centre = np.array([aim[0], aim[1], centre[2]])
        radial = np.linalg.norm(pb[:, :2] - centre[:2], axis=1)
        near = radial <= max(self.config.axis_radius_m, radial.min() + 0.003)
        idx = np.flatnonzero(near)
        i = idx[np.argmax(pb[idx, 2])] if obj.kind in ("cube", "block") else idx[np.argmin(radial[idx])]
        return int(us[i]), int(vs[i]), pb[i]

    def _anchor(self, name: str, gripper: float, depth: np.ndarray, seg: np.ndarray, rgbd: RGBD,
                aim: np.ndarray | None = None) -> Anchor:
        u, v, p = self.surface_point(name, depth, seg, aim)
        c = self.config
        if c.offset_m > 0:
            d = self._rng.standard_normal(3)
            p = p + c.offset_m * d / np.linalg.norm(d)
            uv, _ = self.camera.project(p[None])
            u, v = int(round(uv[0, 0])), int(round(uv[0, 1]))
        if c.pixel_noise_px > 0:
            du, dv = self._rng.normal(0.0, c.pixel_noise_px, 2)
            u, v = int(round(u + du)), int(round(v + dv))
        w, h = rgbd.intrinsics.width, rgbd.intrinsics.height
        u, v = int(np.clip(u, 0, w - 1)), int(np.clip(v, 0, h - 1))
        cam_z = float(self.camera.project(p[None])[1][0])
        return Anchor(u=u, v=v, gripper=gripper, depth=cam_z if cam_z > 0 else None)

    # ------------------------------------------------------------------ wrong first plans
    def _other_object(self, name: str) -> str:
        """A movable object of the scene other than ``name``, drawn with the wrong plan's generator."""
        others = sorted(n for n, o in self.world.objects.items() if not o.fixed and n != name)
        if not others:
            raise PlanError(f"OraclePlanner: wrong_first_plan 'wrong_object' needs another movable object than "
                            f"{name}; the scene has {sorted(self.world.objects)}")
        return others[int(self._wrong_rng.integers(len(others)))]

    def _beside(self, name: str, anchor: Anchor, depth: np.ndarray, seg: np.ndarray, rgbd: RGBD,
                tries: int = 32) -> Anchor:
        """``anchor`` moved to the table surface ``WRONG_GRASP_OFFSET_M`` beside ``name``'s grasp point in a
        random horizontal direction: one whose point lies on the table, clear (by 2 cm) of every object."""
        _, _, p = self.surface_point(name, depth, seg)
        boxes = [self.world.aabb(n) for n in self.world.objects]
        c = self.world.config
        lo_t = np.asarray(c.table_center_xy) - np.asarray(c.table_half_xy) + 0.05
        hi_t = np.asarray(c.table_center_xy) + np.asarray(c.table_half_xy) - 0.05
        for k in range(tries):
            a = float(self._wrong_rng.uniform(0.0, 2 * math.pi))
            q = np.array([p[0] + WRONG_GRASP_OFFSET_M * math.cos(a), p[1] + WRONG_GRASP_OFFSET_M * math.sin(a), 0.0])
            clear = all(np.any(q[:2] < lo[:2] - 0.02) or np.any(q[:2] > hi[:2] + 0.02) for lo, hi in boxes)
            if (clear and np.all(q[:2] >= lo_t) and np.all(q[:2] <= hi_t)) or k == tries - 1:
                break
        uv, z = self.camera.project(q[None])
        w, h = rgbd.intrinsics.width, rgbd.intrinsics.height
        u, v = int(np.clip(round(uv[0, 0]), 0, w - 1)), int(np.clip(round(uv[0, 1]), 0, h - 1))
        self.wrong = {"mode": "grasp_8cm", "object": name, "point": np.round(q, 4).tolist(),
                      "offset_m": WRONG_GRASP_OFFSET_M, "direction_deg": round(math.degrees(a), 1),
                      "clear": bool(clear)}
        return Anchor(u=u, v=v, gripper=anchor.gripper, depth=float(z[0]) if z[0] > 0 else None)
