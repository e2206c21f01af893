"""The simulated world: one PyBullet client (DIRECT mode, CPU only), a table, a Franka Panda and objects.

``SimWorld`` owns the physics client and the clock. Time is driven one of two ways:

- lock-step (default): a :class:`~edgebridge.clock.SimClock`; the world registers its physics step at
  ``physics_hz`` with the clock, so ``clock.sleep_until(t)`` runs exactly the physics steps up to ``t``.
  Deterministic; what the tests, demos and benchmarks use.
- real time: a :class:`~edgebridge.clock.MonotonicClock`; nothing steps in the background. Every device
  read (``SimArm.state``, ``SimCamera.read``) calls :meth:`SimWorld.sync`, which runs the physics steps
  that wall time owes since the last sync (at most ``max_catchup_steps`` at once, the rest is dropped and
  counted in ``dropped_steps``). The control loop and the expert worker read from different threads:
  ``sync`` holds a lock, so wall time is stepped once. PyBullet holds the GIL inside each call, so a
  render (tens of ms) delays the loop thread as a slow driver would.

The world knows nothing of tasks or episodes: a task places objects with :meth:`add_object`.
Base frame = world frame: the robot base sits at the origin, the table top is the plane z = 0.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..clock import Clock, SimClock
from ..config import check
from ..contracts import Pose
from ..errors import UnknownNameError, require

log = logging.getLogger(__name__)

OBJECT_KINDS = ("mug", "cube", "tray", "block")
COLORS = {
    "red": (0.85, 0.1, 0.1, 1.0), "blue": (0.1, 0.25, 0.85, 1.0), "green": (0.1, 0.7, 0.2, 1.0),
    "yellow": (0.9, 0.8, 0.1, 1.0), "white": (0.9, 0.9, 0.9, 1.0), "orange": (0.95, 0.5, 0.1, 1.0),
    "purple": (0.5, 0.2, 0.7, 1.0), "grey": (0.5, 0.5, 0.5, 1.0), "brown": (0.45, 0.3, 0.15, 1.0),
}


@dataclass(frozen=True)
class SimWorldConfig:
    """Physics and scene constants. ``table_*`` describe the table box whose top is z = 0."""

    physics_hz: float = 240.0
    gravity: float = -9.81
    table_center_xy: tuple[float, float] = (0.45, 0.0)
    table_half_xy: tuple[float, float] = (0.6, 0.75)
    table_thickness: float = 0.04
    floor_z: float = -0.7
    object_friction: float = 1.5
    finger_friction: float = 1.5
    max_catchup_steps: int = 240

    def __post_init__(self) -> None:
        check(10 <= self.physics_hz <= 10_000, "world.physics_hz", f"must lie in [10, 10000], got {self.physics_hz}")
        check(all(h > 0 for h in self.table_half_xy), "world.table_half_xy", f"must be > 0, got {self.table_half_xy}")
        check(self.table_thickness > 0, "world.table_thickness", f"must be > 0, got {self.table_thickness}")
        check(self.floor_z < -self.table_thickness, "world.floor_z", "must lie below the table")
        check(self.max_catchup_steps >= 1, "world.max_catchup_steps", f"must be >= 1, got {self.max_catchup_steps}")


@dataclass
class SimObject:
    """A body in the scene. ``size`` is the (x, y, z) extent of its axis-aligned box at rest."""

    name: str
    kind: str
    body: int
    color: str
    size: tuple[float, float, float]
    fixed: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Attachment:
    """A visual-only body carried rigidly by a robot link: its pose is ``link pose @ T_link_body``."""

    body: int
    link: int
    T_link_body: np.ndarray


class SimWorld:
    """A PyBullet world with a table and a Panda. Use as a context manager or call ``close()``."""

    def __init__(self, config: SimWorldConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SimWorldConfig()
        self.clock: Clock = clock if clock is not None else SimClock()
        pb = require("pybullet", "sim", "the simulator")
        pbd = require("pybullet_data", "sim", "the simulator's robot and object models")
        from pybullet_utils import bullet_client

        self._pb = pb
        self.p = bullet_client.BulletClient(connection_mode=pb.DIRECT)
        self.p.setAdditionalSearchPath(pbd.getDataPath())
        self.dt = 1.0 / self.config.physics_hz
        self.period_ns = int(round(1e9 / self.config.physics_hz))
        self.p.setTimeStep(self.dt)
        self.p.setGravity(0, 0, self.config.gravity)
        self.steps = 0
        self.dropped_steps = 0
        self.objects: dict[str, SimObject] = {}
        self.attachments: list[Attachment] = []
        self._texture_dir: str | None = None
        self._closed = False
        self._build_static()
        self.robot = self.p.loadURDF("franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True,
                                     flags=self.p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES)
        for link in (9, 10):
            self.p.changeDynamics(self.robot, link, lateralFriction=self.config.finger_friction)
        self._last_sync_ns = self.clock.now_ns()
        self._sync_lock = threading.Lock()
        if isinstance(self.clock, SimClock):
            self.clock.add_stepper(self.step, self.period_ns)

    # ------------------------------------------------------------------ scene
    def _build_static(self) -> None:
        c = self.config
        p = self.p
        hx, hy = c.table_half_xy
        half = [hx, hy, c.table_thickness / 2]
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=[0.72, 0.6, 0.45, 1])
        self.table = p.createMultiBody(0, col, vis, [c.table_center_xy[0], c.table_center_xy[1], -c.table_thickness / 2])
        p.changeDynamics(self.table, -1, lateralFriction=1.0)
        self.floor = p.loadURDF("plane.urdf", [0, 0, c.floor_z])

    def add_object(self, name: str, kind: str, position, yaw: float = 0.0, color: str = "white",
                   *, size: tuple[float, float, float] | None = None, aliases: tuple[str, ...] = ()) -> SimObject:
        """Place an object resting on the table at ``position`` (x, y; z is the table top unless given).

        kinds: ``mug`` (pybullet_data mug, scale 0.6, 0.1 kg), ``cube`` (5 cm), ``tray`` (30 cm box tray,
        static), ``block`` (a static box obstacle of ``size``)."""
        if name in self.objects:
            raise ValueError(f"SimWorld.add_object: an object named {name!r} already exists ({sorted(self.objects)})")
        if kind not in OBJECT_KINDS:
            raise ValueError(f"SimWorld.add_object: unknown kind {kind!r}; known kinds: {OBJECT_KINDS}")
        if color not in COLORS:
            raise ValueError(f"SimWorld.add_object: unknown colour {color!r}; known: {sorted(COLORS)}")
        p = self.p
        pos = np.asarray(position, dtype=np.float64).reshape(-1)
        x, y = float(pos[0]), float(pos[1])
        z0 = float(pos[2]) if pos.size > 2 else 0.0
        quat = p.getQuaternionFromEuler([0, 0, yaw])
        fixed = False
        if kind == "mug":
            body = p.loadURDF("objects/mug.urdf", [x, y, z0 + 0.004], quat, globalScaling=0.6)
            p.changeDynamics(body, -1, mass=0.1, lateralFriction=self.config.object_friction)
            ext = (0.055, 0.079, 0.066)
        elif kind == "cube":
            body = p.loadURDF("cube_small.urdf", [x, y, z0 + 0.0251], quat)
            p.changeDynamics(body, -1, lateralFriction=self.config.object_friction)
            ext = (0.05, 0.05, 0.05)
        elif kind == "tray":
            body = p.loadURDF("tray/traybox.urdf", [x, y, z0 + 0.0052], quat, globalScaling=0.5, useFixedBase=True)
            ext = (0.30, 0.30, 0.07)
            fixed = True
        else:
            ext = tuple(float(s) for s in (size or (0.04, 0.2, 0.15)))
            half = [e / 2 for e in ext]
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=list(COLORS[color]))
            body = p.createMultiBody(0, col, vis, [x, y, z0 + half[2]], quat)
            fixed = True
        p.changeVisualShape(body, -1, rgbaColor=list(COLORS[color]))
        obj = SimObject(name, kind, body, color, ext, fixed, tuple(aliases))
        self.objects[name] = obj
        return obj

    def object(self, name: str) -> SimObject:
        try:
            return self.objects[name]
        except KeyError:
            raise UnknownNameError(f"no object {name!r} in the scene; it has: {', '.join(sorted(self.objects)) or 'nothing'}") from None

    def pose(self, name: str) -> Pose:
        pos, quat = self.p.getBasePositionAndOrientation(self.object(name).body)
        return Pose(np.array(pos), np.array(quat))

    def set_pose(self, name: str, pose: Pose) -> None:
        """Teleport an object (velocity reset to zero)."""
        body = self.object(name).body
        self.p.resetBasePositionAndOrientation(body, pose.position.tolist(), pose.quat.tolist())
        self.p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0])

    def aabb(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.p.getAABB(self.object(name).body)
        return np.array(lo), np.array(hi)

    def on_table(self, name: str) -> bool:
        """Whether the object still rests on (or above) the table top, i.e. was not knocked off."""
        lo, hi = self.aabb(name)
        c = self.config
        cx, cy = c.table_center_xy
        hx, hy = c.table_half_xy
        centre = (lo + hi) / 2
        return bool(lo[2] > -0.02 and abs(centre[0] - cx) <= hx and abs(centre[1] - cy) <= hy)

    def in_contact(self, a: str, b: str) -> bool:
        return len(self.p.getContactPoints(self.object(a).body, self.object(b).body)) > 0

    def gripper_holds(self, name: str) -> bool:
        body = self.object(name).body
        return all(len(self.p.getContactPoints(self.robot, body, linkIndexA=f)) > 0 for f in (9, 10))

    # ------------------------------------------------------------------ carried visuals
    def attach_board(self, board, T_link_board, link: int = 11, *, px_per_square: int = 100,
                     margin_m: float = 0.01) -> Attachment:
        """Carry a printed calibration board (``calib.board.BoardConfig``) on robot ``link`` (11: the
        Panda's ``panda_grasptarget``, the kinematics' end-effector frame) at ``T_link_board`` (board frame:
        origin at the pattern's top-left corner, z into the board). A textured quad (the pattern of
        ``CharucoBoard.generateImage`` plus a white margin of ``margin_m``) that the camera renders; it has
        no mass and no collision shape, and follows the link exactly (:meth:`update_attachments`)."""
        from ..calib.board import board_size_m, render_board

        T = np.asarray(T_link_board, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"SimWorld.attach_board: T_link_board must be a finite 4x4 transform, got {T.shape}")
        w, h = board_size_m(board)
        ppm = px_per_square / board.square_length
        margin_px = int(round(margin_m * ppm))
        m = margin_px / ppm
        image = render_board(board, px_per_m=ppm, margin_px=margin_px)
        if self._texture_dir is None:
            self._texture_dir = tempfile.mkdtemp(prefix="edgebridge-sim-textures-")
        path = Path(self._texture_dir) / f"board_{len(self.attachments)}.png"
        import imageio.v3 as iio

        iio.imwrite(path, np.dstack([image] * 3))
        p = self.p
        # the quad in the board frame; texture v runs bottom-up (OpenGL), the image rows top-down
        verts = [[-m, -m, 0.0], [w + m, -m, 0.0], [w + m, h + m, 0.0], [-m, h + m, 0.0]]
        uvs = [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
        vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, uvs=uvs, normals=[[0.0, 0.0, -1.0]] * 4,
                                  indices=[0, 1, 2, 0, 2, 3, 0, 2, 1, 0, 3, 2])
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, basePosition=[0, 0, -5])
        p.changeVisualShape(body, -1, textureUniqueId=p.loadTexture(str(path)), rgbaColor=[1, 1, 1, 1])
        att = Attachment(body=body, link=int(link), T_link_body=T.copy())
        self.attachments.append(att)
        self.update_attachments()
        return att

    def link_pose(self, link: int) -> np.ndarray:
        """T_base_link (4x4) of a robot link, as the simulator holds it now."""
        from ..rotations import quat_to_matrix

        st = self.p.getLinkState(self.robot, link, computeForwardKinematics=True)
        T = np.eye(4)
        T[:3, :3] = quat_to_matrix(np.asarray(st[5], dtype=np.float64))
        T[:3, 3] = st[4]
        return T

    def attachment_pose(self, att: Attachment) -> np.ndarray:
        """T_base_body of an attachment: its link's pose now @ T_link_body (the ground truth)."""
        return self.link_pose(att.link) @ att.T_link_body

    def update_attachments(self) -> None:
        """Move every carried visual to its link's present pose (the camera calls it before rendering)."""
        from ..rotations import matrix_to_quat

        for att in self.attachments:
            T = self.attachment_pose(att)
            self.p.resetBasePositionAndOrientation(att.body, T[:3, 3].tolist(),
                                                   matrix_to_quat(T[:3, :3]).tolist())

    def detach(self, att: Attachment) -> None:
        self.attachments.remove(att)
        self.p.removeBody(att.body)

    # ------------------------------------------------------------------ time
    def step(self) -> None:
        """One physics step of ``1 / physics_hz`` seconds."""
        self.p.stepSimulation()
        self.steps += 1

    def settle(self, seconds: float = 0.5) -> None:
        """Advance the clock (lock-step) or step directly (real time) to let objects come to rest."""
        if isinstance(self.clock, SimClock):
            self.clock.advance(seconds)
        else:
            for _ in range(int(round(seconds * self.config.physics_hz))):
                self.step()
            self._last_sync_ns = self.clock.now_ns()

    def sync(self) -> None:
        """Real-time mode: run the physics steps wall time owes since the last call. Lock-step: no-op."""
        if isinstance(self.clock, SimClock):
            return
        with self._sync_lock:
            now = self.clock.now_ns()
            owed = (now - self._last_sync_ns) // self.period_ns
            if owed <= 0:
                return
            run = min(int(owed), self.config.max_catchup_steps)
            for _ in range(run):
                self.step()
            self.dropped_steps += int(owed) - run
            self._last_sync_ns += int(owed) * self.period_ns

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.p.disconnect()
        except Exception:  # already gone (interpreter shutdown)
            pass
        if self._texture_dir is not None:
            shutil.rmtree(self._texture_dir, ignore_errors=True)

    def __enter__(self) -> "SimWorld":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
