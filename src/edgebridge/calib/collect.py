"""Collecting hand-eye samples (``edge-calib collect``): arm pose + camera frame + board, written as ``samples.toml``.

Two ways to put the board in front of the camera (eye-to-hand: the camera is fixed, the board on the gripper):

- ``auto``: the arm moves itself. It starts where it stands (the camera must see the whole board there), takes
  a few probe poses turned by ``probe_tilt_deg`` about the gripper's own axes, solves a rough hand-eye from
  them (camera pose and board mount, no prior needed), then plans ``poses`` board poses that the camera sees
  whole and nearly face-on, turned far from each other (``collect_poses``). Every target is checked before
  the arm moves: joint limits (with a margin), the workspace box of the setup along the whole joint path,
  the board's corners above the table, no joint swinging more than ``max_joint_swing_rad`` from the start
  posture. The arm goes there slowly (``speed_fraction`` of the setup's joint velocity and acceleration
  limits, a minimum-jerk profile in joint space, one ``Arm.command`` per control period on the setup's
  clock), settles, and the frame is taken with the arm still (the arm state read before and after it).
- ``manual``: the owner moves the arm by hand with torque off (``Arm.torque_disabled()``), pressing Enter at
  each pose; each sample says how far it is turned from the nearest earlier one (aim for 15 deg or more).

Each frame where the board is found becomes ``NNN.png`` plus one ``[[samples]]`` entry (``T_base_ee``, the
joints, the corner count); ``samples.toml`` is rewritten after every sample, so an interrupted session keeps
what it has. ``edge-calib handeye --samples DIR`` solves it. This module drives devices only through the
``Arm`` / ``Camera`` interfaces; ``calib.setup_rig`` opens them from a robot setup.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from ..config import check
from ..contracts import ArmCommand, Pose
from ..errors import EdgebridgeError
from . import toml_io
from .board import BoardConfig, BoardPose, detect_board_pose
from .calib_file import utc_now_iso
from .collect_poses import board_corners, candidate_board_poses, order_by_travel, rotation_deg, spread
from .handeye import _inv, calibrate_hand_eye

log = logging.getLogger(__name__)

PROBE_AXES = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (-1.0, -1.0, 0.0))


class CollectError(EdgebridgeError):
    """The session cannot go on (board not in view, nothing reachable, a check failed)."""


@dataclass(frozen=True)
class CollectConfig:
    """How a session runs. Angles in degrees, distances in metres, ``speed_fraction`` of the setup's joint
    velocity and acceleration limits. ``torque_off`` (manual): turn torque off for the owner's hand."""

    mode: Literal["auto", "manual"] = "auto"
    poses: int = 15
    seed: int = 0
    probe_tilt_deg: float = 8.0
    min_tilt_deg: float = 12.0
    max_tilt_deg: float = 35.0
    max_roll_deg: float = 40.0
    max_offset_m: float = 0.06
    max_view_deg: float = 55.0
    image_margin: float = 0.06
    candidates: int = 400
    speed_fraction: float = 0.15
    settle_s: float = 0.5
    settle_timeout_s: float = 3.0
    joint_margin_rad: float = 0.03
    max_joint_swing_rad: float = 1.6
    board_clearance_m: float = 0.02
    torque_off: bool = True

    def __post_init__(self) -> None:
        check(self.mode in ("auto", "manual"), "mode", f"expected 'auto' or 'manual', got {self.mode!r}")
        check(3 <= self.poses <= 200, "poses", f"must lie in [3, 200] (10-20 is typical), got {self.poses}")
        check(0 < self.probe_tilt_deg <= 20, "probe_tilt_deg", f"must lie in (0, 20], got {self.probe_tilt_deg}")
        check(0 <= self.min_tilt_deg < self.max_tilt_deg <= 60, "min_tilt_deg/max_tilt_deg",
              f"need 0 <= min < max <= 60, got {self.min_tilt_deg}, {self.max_tilt_deg}")
        check(0 < self.speed_fraction <= 0.5, "speed_fraction",
              f"must lie in (0, 0.5] of the joint limits (slow moves), got {self.speed_fraction}")
        check(self.settle_s >= 0 and self.settle_timeout_s > 0, "settle_s/settle_timeout_s", "must be >= 0 / > 0")
        check(0 <= self.image_margin < 0.4, "image_margin", f"must lie in [0, 0.4), got {self.image_margin}")


@dataclass
class Rig:
    """An arm and a camera opened from a setup, with what moving them safely needs: ``kinematics``
    (``fk_matrix(q)``, ``ik(Pose, q0)``), ``limits`` (the setup's ``[limits]``: joint ranges, velocity,
    acceleration, workspace box), the setup's ``clock`` and control ``rate_hz``. ``close()`` releases all."""

    arm: Any
    camera: Any
    kinematics: Any
    limits: Any
    clock: Any
    rate_hz: float
    camera_name: str = ""
    setup: str = ""
    notes: list[str] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as e:  # close everything even if one fails
                log.warning("closing after edge-calib collect: %s: %s", type(e).__name__, e)
        self.closers.clear()


@dataclass
class CollectResult:
    directory: Path
    samples: int
    skipped: list[str]
    mode: str


class Collector:
    """One session: ``Collector(rig, board, config, out_dir).run()``. ``say`` prints progress for people;
    ``prompt(text) -> str`` asks the owner (manual mode; "q" ends the session)."""

    def __init__(self, rig: Rig, board: BoardConfig, config: CollectConfig, out_dir: str | Path, *,
                 say: Callable[[str], None] | None = None, prompt: Callable[[str], str] | None = None) -> None:
        self.rig, self.board, self.cfg = rig, board, config
        self.out = Path(out_dir)
        self.say = say or log.info
        self.prompt = prompt or (lambda text: "")
        self.samples: list[dict] = []
        self.A: list[np.ndarray] = []          # T_base_ee of the kept samples
        self.B: list[np.ndarray] = []          # their T_cam_board (PnP)
        self.skipped: list[str] = []
        self.intrinsics = None
        lim = rig.limits
        self.lower = np.asarray(lim.joint_lower, dtype=np.float64)
        self.upper = np.asarray(lim.joint_upper, dtype=np.float64)
        self.vmax = np.asarray(lim.joint_velocity, dtype=np.float64)
        self.amax = np.asarray(lim.joint_acceleration, dtype=np.float64)
        self.ws_min = np.asarray(lim.workspace_min, dtype=np.float64)
        self.ws_max = np.asarray(lim.workspace_max, dtype=np.float64)
        self.period_ns = int(round(1e9 / rig.rate_hz))

    # ------------------------------------------------------------------ session
    def run(self) -> CollectResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.mode == "auto":
            self._auto()
        else:
            self._manual()
        if len(self.samples) < 3:
            raise CollectError(f"only {len(self.samples)} sample(s) with the board in view; hand-eye needs at least 3 "
                               f"(10-20 with varied rotations): keep the whole board in the camera's view")
        return CollectResult(self.out, len(self.samples), self.skipped, self.cfg.mode)

    # ------------------------------------------------------------------ capture
    def capture(self, label: str) -> BoardPose | None:
        """Read the arm, a frame and the arm again; keep the sample if the board is found and the arm
        stood still."""
        arm, cam = self.rig.arm, self.rig.camera
        s0 = arm.state()
        frame = cam.read()
        s1 = arm.state()
        moved = float(np.max(np.abs(s1.joints - s0.joints)))
        if moved > 2e-3:
            self.skipped.append(f"{label}: the arm moved {moved:.4f} rad during the frame")
            self.say(f"  {label}: skipped, the arm moved during the frame")
            return None
        pose = detect_board_pose(np.ascontiguousarray(frame.rgb), frame.intrinsics, self.board)
        if pose is None:
            self.skipped.append(f"{label}: board not found")
            self.say(f"  {label}: board not found in the frame; skipped")
            return None
        q = (s0.joints + s1.joints) / 2
        T_base_ee = np.asarray(self.rig.kinematics.fk_matrix(q), dtype=np.float64)
        i = len(self.samples)
        name = f"{i:03d}.png"
        import imageio.v3 as iio

        iio.imwrite(self.out / name, frame.rgb)
        turn = min((rotation_deg(b[:3, :3], pose.T_cam_target[:3, :3]) for b in self.B), default=float("nan"))
        self.A.append(T_base_ee)
        self.B.append(pose.T_cam_target)
        self.intrinsics = frame.intrinsics
        self.samples.append({"image": name, "T_base_ee": T_base_ee.tolist(), "joints": q.tolist(),
                             "corners": pose.n_points, "label": label})
        self.write_manifest()
        self.say(f"  sample {i}: {label}, {pose.n_points} corners, {pose.reprojection_rms_px:.2f} px"
                 + (f", turned {turn:.1f} deg from the nearest earlier sample" if i else ""))
        return pose

    def write_manifest(self) -> Path:
        i = self.intrinsics
        data = {"mount": "fixed", "camera": self.rig.camera_name,
                "collect": {"mode": self.cfg.mode, "setup": self.rig.setup, "date": utc_now_iso(),
                            "tool": "edge-calib collect"},
                "board": {k: getattr(self.board, k) for k in ("kind", "squares_x", "squares_y", "square_length",
                                                               "marker_length", "dictionary")},
                "intrinsics": {"width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "cx": i.cx, "cy": i.cy,
                               "model": i.model, "coeffs": np.asarray(i.coeffs).tolist()},
                "samples": self.samples}
        return toml_io.write(self.out / "samples.toml", data,
                             header="hand-eye samples (edge-calib collect); solve: edge-calib handeye --samples DIR")

    # ------------------------------------------------------------------ motion
    def check_target(self, q: np.ndarray, q_from: np.ndarray, T_ee_board: np.ndarray | None = None) -> str | None:
        """Why the arm must not go to ``q`` from ``q_from`` (None: it may)."""
        m = self.cfg.joint_margin_rad
        bad = np.flatnonzero((q < self.lower + m) | (q > self.upper - m))
        if bad.size:
            j = int(bad[0])
            return f"joint {j} = {q[j]:.3f} rad within {m} rad of its limits [{self.lower[j]}, {self.upper[j]}]"
        fk = self.rig.kinematics.fk_matrix
        corners = board_corners(self.board)[:4] if T_ee_board is not None else None
        for s in np.linspace(0.0, 1.0, 21):
            T = np.asarray(fk(q_from + s * (q - q_from)))
            p = T[:3, 3]
            if np.any(p < self.ws_min) or np.any(p > self.ws_max):
                return f"the gripper would pass {np.round(p, 3).tolist()}, outside the workspace box " \
                       f"[{self.ws_min.tolist()}, {self.ws_max.tolist()}]"
            if corners is not None:
                Tb = T @ T_ee_board
                z = (corners @ Tb[:3, :3].T + Tb[:3, 3])[:, 2]
                if z.min() < self.ws_min[2] + self.cfg.board_clearance_m:
                    return f"the board would come within {self.cfg.board_clearance_m} m of the table (z {z.min():.3f})"
        return None

    def move_to(self, q_target: np.ndarray) -> None:
        """Go to ``q_target`` slowly: minimum-jerk in joint space, every command checked against the joint
        limits and the setup's velocity limits, one command per control period; then settle."""
        arm, clock = self.rig.arm, self.rig.clock
        st = arm.state()
        q0, grip = np.asarray(st.joints, dtype=np.float64), float(st.gripper)
        d = np.abs(q_target - q0)
        f = self.cfg.speed_fraction
        duration = float(np.max(np.maximum(1.875 * d / (f * self.vmax), np.sqrt(5.7735 * d / (f * self.amax)))))
        n = max(1, int(math.ceil(max(duration, 0.2) * self.rig.rate_hz)))
        t0 = clock.now_ns()
        q_prev = q0
        for k in range(1, n + 1):
            s = k / n
            q = q0 + (10 * s**3 - 15 * s**4 + 6 * s**5) * (q_target - q0)
            v = np.abs(q - q_prev) * self.rig.rate_hz
            if np.any(q < self.lower) or np.any(q > self.upper) or np.any(v > self.vmax):
                arm.hold()
                raise CollectError(f"move to {np.round(q_target, 3).tolist()}: command {k} of {n} left the joint or "
                                   f"velocity limits; the arm holds where it is")
            arm.command(ArmCommand(joints=q, gripper=grip, stamp_ns=clock.now_ns()))
            q_prev = q
            clock.sleep_until(t0 + k * self.period_ns)
        self._settle()

    def _settle(self) -> None:
        """Wait until the joints stop (velocity under 0.01 rad/s, or no change, three reads running), then
        ``settle_s`` more (vibration, exposure)."""
        arm, clock = self.rig.arm, self.rig.clock
        step = 50_000_000
        t = clock.now_ns()
        end = t + int(self.cfg.settle_timeout_s * 1e9)
        still, q_prev = 0, None
        while t < end and still < 3:
            st = arm.state()
            v = st.joint_velocities
            slow = (v is not None and float(np.max(np.abs(v))) < 0.01) or \
                   (q_prev is not None and float(np.max(np.abs(st.joints - q_prev))) < 5e-4)
            still = still + 1 if slow else 0
            q_prev = st.joints
            t += step
            clock.sleep_until(t)
        clock.sleep_until(clock.now_ns() + int(self.cfg.settle_s * 1e9))

    # ------------------------------------------------------------------ auto
    def _auto(self) -> None:
        arm, cfg = self.rig.arm, self.cfg
        enable = getattr(arm, "enable", None)
        if enable is not None:
            enable()
        q_start = np.asarray(arm.state().joints, dtype=np.float64)
        self.say(f"auto: {cfg.poses} poses, moving at {cfg.speed_fraction:.0%} of the joint limits")
        start = self.capture("start")
        if start is None:
            raise CollectError("the camera does not see the whole board at the start pose; move the arm so that it "
                               "does (or use --mode manual)")
        T_ee0 = self.A[0]
        for k, axis in enumerate(PROBE_AXES):  # rough hand-eye from small turns about the gripper's own axes
            turn = np.eye(4)
            turn[:3, :3] = Pose(np.zeros(3), _axis_angle_quat(axis, math.radians(cfg.probe_tilt_deg))).rotation
            self._go(T_ee0 @ turn, q_start, f"probe {k + 1}", None)
        if len(self.samples) < 3:
            raise CollectError(f"only {len(self.samples)} of the first {len(PROBE_AXES) + 1} poses gave a sample "
                               f"({'; '.join(self.skipped)}); start nearer the middle of the workspace with the board "
                               f"in the middle of the image")
        rough = calibrate_hand_eye(np.array(self.A), np.array(self.B), mount="fixed", method="park")
        T_base_cam, T_ee_board = rough.T, rough.T_target
        self.say(f"rough camera position from {len(self.A)} samples: {np.round(T_base_cam[:3, 3], 3).tolist()} m")
        rng = np.random.default_rng(cfg.seed)
        cands = candidate_board_poses(start.T_cam_target, self.board, self.intrinsics, rng, n=cfg.candidates,
                                      min_tilt_deg=cfg.min_tilt_deg, max_tilt_deg=cfg.max_tilt_deg,
                                      max_roll_deg=cfg.max_roll_deg, max_offset_m=cfg.max_offset_m,
                                      margin=cfg.image_margin, max_view_deg=cfg.max_view_deg)
        want = cfg.poses - len(self.samples)
        plan: list[np.ndarray] = []
        refused: dict[str, int] = {}
        for i in spread([c[:3, :3] for c in cands], [b[:3, :3] for b in self.B]):
            if len(plan) >= want:
                break
            T_base_ee = T_base_cam @ cands[i] @ _inv(T_ee_board)
            q, why = self._solve(T_base_ee, q_start, T_ee_board)
            if q is None:
                refused[why.split(" ")[0]] = refused.get(why.split(" ")[0], 0) + 1
                continue
            plan.append(q)
        self.say(f"planned {len(plan)} poses from {len(cands)} candidates the camera would see"
                 + (f" (refused: {refused})" if refused else ""))
        if not plan:
            raise CollectError("no planned pose is reachable within the setup's limits; start nearer the middle of "
                               "the workspace or lower --max-tilt")
        q_now = np.asarray(arm.state().joints, dtype=np.float64)
        for k, j in enumerate(order_by_travel(q_now, plan)):
            q_now = np.asarray(arm.state().joints, dtype=np.float64)
            why = self.check_target(plan[j], q_now, T_ee_board)
            if why is not None:
                self.skipped.append(f"pose {k + 1}: {why}")
                continue
            self.move_to(plan[j])
            self.capture(f"pose {k + 1}/{len(plan)}")

    def _solve(self, T_base_ee: np.ndarray, q_start: np.ndarray, T_ee_board: np.ndarray | None):
        """(joints, None) reaching ``T_base_ee`` that pass the checks from ``q_start``, or (None, why)."""
        try:
            q = np.asarray(self.rig.kinematics.ik(Pose.from_matrix(T_base_ee), q_start), dtype=np.float64)
        except ValueError as e:
            return None, f"ik: {e}"
        if float(np.max(np.abs(q - q_start))) > self.cfg.max_joint_swing_rad:
            return None, "swing: a joint would swing more than max_joint_swing_rad from the start posture"
        why = self.check_target(q, q_start, T_ee_board)
        return (None, f"limits: {why}") if why else (q, None)

    def _go(self, T_base_ee: np.ndarray, q_start: np.ndarray, label: str, T_ee_board) -> None:
        q, why = self._solve(T_base_ee, q_start, T_ee_board)
        if q is None:
            self.skipped.append(f"{label}: {why}")
            self.say(f"  {label}: not reachable ({why}); skipped")
            return
        self.move_to(q)
        self.capture(label)

    # ------------------------------------------------------------------ manual
    def _manual(self) -> None:
        arm, cfg = self.rig.arm, self.cfg
        torque_off = getattr(arm, "torque_disabled", None)
        if torque_off is None and cfg.torque_off:
            raise CollectError(f"arm {getattr(arm, 'name', type(arm).__name__)} has no torque-off mode here; put it in "
                               f"its own hand-guiding mode and pass --no-torque-off, or use --mode auto")
        self.say(f"manual: torque {'off' if cfg.torque_off else 'as it is'}; move the arm by hand to {cfg.poses} poses "
                 f"with the whole board in view, turned 15-40 deg from each other")
        with (torque_off() if cfg.torque_off else contextlib.nullcontext()):
            tries = 0
            while len(self.samples) < cfg.poses and tries < 3 * cfg.poses:
                tries += 1
                answer = self.prompt(f"pose {len(self.samples) + 1}/{cfg.poses}: move the arm, then Enter "
                                     f"(q + Enter to finish)")
                if answer.strip().lower() in ("q", "quit"):
                    break
                self.rig.clock.sleep_until(self.rig.clock.now_ns() + int(cfg.settle_s * 1e9))
                self.capture(f"pose {len(self.samples) + 1}")


def _axis_angle_quat(axis, angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return np.r_[a * math.sin(angle / 2), math.cos(angle / 2)]
