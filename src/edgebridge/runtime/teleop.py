"""Teleoperated demonstrations (``edge-record``): a teleoperation device drives the follower arm through
the runtime's safety layer at the setup's loop rate, and every episode becomes one episode of a LeRobot
data set with camera, cloud and state.

Per control tick (:class:`TeleopLoop`): read the arm, read the device (a leader arm's joints, or an
end-effector delta that the kinematics' IK turns into joints), shape the joint target with the
:class:`~.safety.JointLimiter`, validate it in the :class:`~.safety.SafetyLayer` and send it. A rejected
command brakes (validated) or holds; ``max_rejections`` within one second end the episode. Waits are
absolute deadlines on the setup's clock (lock-step with the simulator, or the wall clock).

At the expert's rate (``fps = loop rate / expert.every_k_ticks``) a frame is kept: the camera image and
depth, the measured end-effector pose (``observation.state``), the pose and gripper actually sent
(``action``), the joints. When the episode ends, its gripper events (where the commanded gripper crosses
0.5) are known: every frame's cloud is then cropped around the pose at its *next* event, the goal the
expert centres its cloud on, grown by ``cloud_roi_margin_m`` (as ``edge-sim demos`` crops around its
goal), and the episode is written (:class:`TeleopRecorder`). The guidance the expert trains on is built
from the same events when training (``edgebridge.train.hindsight``), so the data set holds no guidance.

Episode control as in LeRobot's ``record``: ``episodes`` episodes of at most ``episode_s``, each
followed by ``reset_s`` of teleoperation that is not recorded (not after the last); keys end an episode
early, record it again, or stop (``drivers.teleop_devices.EpisodeEvents``); without a terminal, the
fixed times alone. In the simulator a :class:`ScriptedLeader` replays the scripted demonstrator as a
leader arm and ends the episode when it has finished.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import check
from ..contracts import RGBD
from ..datasets.edge_features import edge_features, edge_frame, pose_row, write_edge_meta
from ..drivers.teleop_devices import EpisodeEvents
from .config import SafetyLimits
from .episode_record import RecordConfig
from .expert.features import CloudROI
from .teleop_leader import ScriptedLeader  # noqa: F401 - re-exported
from .teleop_loop import TeleopLoop

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- gripper events (shared with training)


def gripper_events(gripper: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Frame indices where the gripper command crosses ``threshold`` (closes or opens)."""
    g = np.asarray(gripper, np.float64) >= threshold
    return np.flatnonzero(g[1:] != g[:-1]) + 1


def next_event(n: int, events: np.ndarray) -> np.ndarray:
    """(n,) for every frame the index of the first event after it (the last frame when none follows):
    the frame whose end-effector pose is the frame's goal."""
    events = np.asarray(events, np.int64)
    if len(events) == 0:
        return np.full(n, n - 1, np.int64)
    j = np.searchsorted(events, np.arange(n), side="right")
    return np.where(j < len(events), events[np.minimum(j, len(events) - 1)], n - 1)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TeleopConfig:
    """``episodes`` of at most ``episode_s`` each, ``reset_s`` of unrecorded teleoperation between them;
    clouds of ``n_points`` cropped to ``cloud_roi`` (around each frame's goal) grown by
    ``cloud_roi_margin_m``; ``max_rejections`` rejected commands within 1 s end an episode; a scripted
    leader's episode ends ``settle_s`` after its path."""

    episodes: int = 1
    episode_s: float = 60.0
    reset_s: float = 10.0
    n_points: int = 1024
    cloud_roi: CloudROI | None = field(default_factory=CloudROI)
    cloud_roi_margin_m: float = 0.05
    max_rejections: int = 50
    settle_s: float = 1.0

    def __post_init__(self) -> None:
        check(self.episodes >= 1, "episodes", f"must be >= 1, got {self.episodes}")
        check(self.episode_s > 0, "episode_time_s", f"must be > 0, got {self.episode_s}")
        check(self.reset_s >= 0, "reset_time_s", f"must be >= 0, got {self.reset_s}")
        check(self.n_points >= 1, "n_points", f"must be >= 1, got {self.n_points}")
        check(0 <= self.cloud_roi_margin_m < 1, "cloud_roi_margin_m", f"must lie in [0, 1) m, got {self.cloud_roi_margin_m}")
        check(self.max_rejections >= 1, "max_rejections", f"must be >= 1, got {self.max_rejections}")


# --------------------------------------------------------------------------- frames


@dataclass
class Frame:
    """One recorded step: the camera frame (depth kept in millimetres), measured state, action sent, joints."""

    rgb: np.ndarray
    depth_mm: np.ndarray
    intrinsics: Any
    state: np.ndarray
    action: np.ndarray
    joints: np.ndarray

    def rgbd(self) -> RGBD:
        return RGBD(self.rgb, self.depth_mm.astype(np.float32) / 1000.0, self.intrinsics)


class FrameSampler:
    """Reads the camera (depth-tared when the setup says so) and pairs the frame with the loop's latest
    state and action. Lock-step: :meth:`capture` every k-th tick; real time: :meth:`start` runs it on a
    thread at ``fps`` so the camera never delays a control tick."""

    def __init__(self, camera, loop: TeleopLoop, tare=None) -> None:
        self.camera, self.loop, self.tare = camera, loop, tare
        self.frames: list[Frame] = []
        self.errors = 0
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def capture(self) -> None:
        try:
            frame = self.camera.read()
            if self.tare is not None:
                frame = self.tare.correct(frame)
        except Exception as e:  # noqa: BLE001 - a lost frame is left out, counted and reported
            self.errors += 1
            if self.errors == 1:
                log.warning("camera read failed (%s: %s); that frame is left out", type(e).__name__, e)
            return
        st, action, joints = self.loop.latest
        depth = np.nan_to_num(frame.depth, nan=0.0, posinf=0.0)
        self.frames.append(Frame(np.array(frame.rgb, copy=True), np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16),
                                 frame.intrinsics, pose_row(st.ee_pose.position, st.ee_pose.quat, st.gripper),
                                 action.copy(), joints.astype(np.float32)))

    def start(self, clock, fps: float) -> None:
        def run() -> None:
            t = clock.now_ns()
            while not self._quit.is_set():
                self.capture()
                t += int(1e9 / fps)
                clock.sleep_until(t)

        self._thread = threading.Thread(target=run, name="teleop-frames", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._quit.set()
        if self._thread is not None:
            self._thread.join(2.0)


# --------------------------------------------------------------------------- the data set


class TeleopRecorder:
    """Writes teleoperated episodes under ``root`` (new or empty) as one LeRobotDataset v3.0: camera
    video, ``observation.state`` / ``action`` (end-effector pose + gripper), ``observation.joints``,
    ``observation.cloud`` + ``observation.cloud_n_valid`` (cropped in hindsight around each frame's goal).
    ``workspace``: the (lo, hi) crop bounds the ROI is clipped to. ``meta``: extra ``meta/edgebridge.json``
    entries (the camera pose, the device...)."""

    def __init__(self, root: str | Path, record: RecordConfig, config: TeleopConfig, workspace: tuple,
                 horizon: int = 16, meta: dict | None = None) -> None:
        self.root, self.record, self.config = Path(root), record, config
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root}: not empty; record into a new directory")
        self.workspace = (np.asarray(workspace[0], np.float64), np.asarray(workspace[1], np.float64))
        roi = config.cloud_roi
        self.meta = {"kind": "teleoperation", "action_dt": record.action_dt, "horizon": int(horizon),
                     "n_points": config.n_points, "cloud_roi": roi.to_dict() if roi else None,
                     "cloud_roi_margin_m": config.cloud_roi_margin_m if roi else 0.0,
                     "guidance": "none recorded: built in hindsight from the gripper events when training "
                                 "(edgebridge.train.hindsight)",
                     "workspace_bounds": [self.workspace[0].tolist(), self.workspace[1].tolist()],
                     "episodes": [], **(meta or {})}
        self.writer = None
        self.write_s: list[float] = []

    def clouds(self, frames: list[Frame], T_base_cam) -> tuple[np.ndarray, np.ndarray]:
        """(T, n_points, 3) clouds and (T,) valid counts: each frame's depth cropped to the ROI (plus margin)
        around the pose at its next gripper event."""
        from ..kernels import WorkspaceBox, depth_to_cloud

        c = self.config
        states = np.stack([f.state for f in frames])
        goals = states[next_event(len(frames), gripper_events(np.stack([f.action for f in frames])[:, 7])), :3]
        out = np.zeros((len(frames), c.n_points, 3), np.float32)
        n_valid = np.zeros(len(frames), np.int64)
        for i, f in enumerate(frames):
            box = c.cloud_roi.box(goals[i], self.workspace, margin_m=c.cloud_roi_margin_m) if c.cloud_roi \
                else WorkspaceBox.from_bounds(*self.workspace)
            cloud = depth_to_cloud(f.rgbd(), T_base_cam, box, c.n_points)
            n_valid[i] = int(cloud.n_valid or len(cloud))
            if n_valid[i]:
                out[i] = cloud.xyz[:c.n_points]
        return out, n_valid

    def save(self, frames: list[Frame], T_base_cam, info: dict) -> int | None:
        """Write one episode (``info``: task, instruction, seed, success...); returns its index, or None
        when it has no frame."""
        from ..datasets.lerobot_v3 import LeRobotWriter

        if not frames:
            log.warning("--out %s: episode %r has no frames; not recorded", self.root, info.get("task"))
            return None
        t0 = time.perf_counter()
        clouds, n_valid = self.clouds(frames, T_base_cam)
        r = self.record
        if self.writer is None:
            feats = edge_features(cameras={r.camera: frames[0].rgb.shape[:2]}, n_joints=len(frames[0].joints),
                                  n_points=self.config.n_points, plan=False)
            self.writer = LeRobotWriter(self.root, r.fps, feats, r.robot_type, vcodec=r.vcodec)
        w = self.writer
        for f, cloud, nv in zip(frames, clouds, n_valid):
            w.add_frame(edge_frame(w.features, state=f.state, action=f.action, images={r.camera: f.rgb},
                                   joints=f.joints, cloud=cloud, n_valid=int(nv)))
        info = {**info, "episode_index": w.save_episode(task=info.get("instruction") or info.get("task")),
                "frames": len(frames), "empty_clouds": int(np.sum(n_valid == 0))}
        self.meta["episodes"].append(info)
        self.meta["tasks"] = sorted({str(e["task"]) for e in self.meta["episodes"] if e.get("task")})
        write_edge_meta(self.root, self.meta)
        self.write_s.append(time.perf_counter() - t0)
        return info["episode_index"]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            write_edge_meta(self.root, self.meta)


# --------------------------------------------------------------------------- episodes


@dataclass
class EpisodeSetup:
    """What one episode drives: the follower, its camera and kinematics, the clock, the device, and
    for the record the task, instruction and seed; ``success`` (the simulator's check) or None; ``tare``:
    depth correction for the episode's frames or None."""

    arm: Any
    camera: Any
    kinematics: Any
    clock: Any
    T_base_cam: np.ndarray
    device: Any
    instruction: str
    task: str = ""
    seed: int = 0
    success: Callable[[], tuple[bool, str]] | None = None
    tare: Any = None


@dataclass
class EpisodeResult:
    index: int | None
    reason: str
    frames: int
    duration_s: float
    success: bool | None = None
    redo: bool = False
    loop: dict = field(default_factory=dict)


def drive(loop: TeleopLoop, setup: EpisodeSetup, seconds: float, every_k: int, fps: float, events: EpisodeEvents,
          stop: Callable[[], bool], sampler: FrameSampler | None, settle_s: float = 1.0) -> str:
    """Run ``loop`` for up to ``seconds`` (frames every ``every_k`` ticks when ``sampler`` is given);
    returns why it ended."""
    clock = setup.clock
    t_next = clock.now_ns()
    t_end = t_next + int(seconds * 1e9)
    realtime = bool(getattr(clock, "realtime", False))
    if sampler is not None and realtime:
        sampler.start(clock, fps)
    tick, done_at, skipped = 0, None, 0
    try:
        while True:
            if stop() or events.stop:
                return "stopped"
            if events.redo:
                return "redo"
            if events.end:
                return "ended by the operator"
            if getattr(setup.device, "done", False):
                done_at = t_next if done_at is None else done_at
                if t_next - done_at >= settle_s * 1e9:
                    return "the leader finished"
            woke = clock.now_ns()
            loop.stats.wake(woke, t_next)
            if not loop.step(woke, loop.period_s * (1 + skipped)):
                return loop.fault
            if sampler is not None and not realtime and tick % every_k == 0:
                sampler.capture()
            loop.stats.done(clock.now_ns() - woke)
            tick += 1
            t_next += loop.period_ns
            late = clock.now_ns() - t_next
            skipped = 0
            if late > loop.stats.miss_ns:  # overran the next tick: skip the ticks already gone (no burst)
                skipped = int(late // loop.period_ns + 1)
                t_next += skipped * loop.period_ns
                loop.stats.skipped += skipped
                loop.stats.misses += skipped
            if t_next >= t_end:
                return "time"
            clock.sleep_until(t_next)
    finally:
        if sampler is not None and realtime:
            sampler.stop()


def _wait(clock, seconds: float, events: EpisodeEvents, stop: Callable[[], bool]) -> None:
    events.clear_episode()
    t_end = clock.now_ns() + int(seconds * 1e9)
    while clock.now_ns() < t_end and not (stop() or events.stop or events.end):
        clock.sleep_until(min(t_end, clock.now_ns() + 50_000_000))


def record_episodes(open_episode: Callable[[int, int], AbstractContextManager], recorder: TeleopRecorder,
                    config: TeleopConfig, limits: SafetyLimits, rate_hz: float, every_k: int,
                    events: EpisodeEvents, stop: Callable[[], bool], say: Callable[[str], None] = log.info) -> list[EpisodeResult]:
    """Record ``config.episodes`` episodes. ``open_episode(index, attempt)`` is a context manager giving the
    :class:`EpisodeSetup` (the simulator builds a fresh scene per call; a real setup keeps its devices).
    Each episode: prepare the loop at the arm's pose, ``start`` the device if it has one, drive and record,
    write it (a background thread in real time, while the reset runs), then ``reset_s`` unrecorded."""
    fps = rate_hz / every_k
    results: list[EpisodeResult] = []
    pending: list[threading.Thread] = []
    errors: list[BaseException] = []
    i = attempt = 0

    def write(frames, T, info, res: EpisodeResult) -> None:
        try:
            res.index = recorder.save(frames, T, info)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    try:
        while i < config.episodes and not (stop() or events.stop):
            with open_episode(i, attempt) as setup:
                loop = TeleopLoop(setup.arm, setup.kinematics, limits, 1.0 / rate_hz, setup.device,
                                  max_rejections=config.max_rejections)
                state = loop.prepare()
                if hasattr(setup.device, "start"):
                    setup.device.start(state)
                events.clear_episode()
                sampler = FrameSampler(setup.camera, loop, setup.tare)
                say(f"episode {i + 1}/{config.episodes}: recording {setup.instruction!r} (up to {config.episode_s:g} s)")
                t0 = setup.clock.now_ns()
                reason = drive(loop, setup, config.episode_s, every_k, fps, events, stop, sampler, config.settle_s)
                duration = (setup.clock.now_ns() - t0) / 1e9
                loop.hold()
                success = None
                if setup.success is not None:
                    success, why = setup.success()
                    reason = f"{reason}; {'success' if success else why}"
                res = EpisodeResult(None, reason, len(sampler.frames), duration, success, loop=loop.stats.summary())
                if reason == "redo":
                    say(f"episode {i + 1}: recording it again")
                    res.redo = True
                    results.append(res)
                    attempt += 1
                    continue
                info = {"task": setup.task or setup.instruction, "instruction": setup.instruction, "seed": setup.seed,
                        "reason": reason, "duration": round(duration, 3), "camera_errors": sampler.errors,
                        "rejections": dict(loop.safety.rejections), "ik_failures": loop.ik_failures}
                if success is not None:
                    info["success"] = bool(success)
                for th in pending:
                    th.join()
                pending.clear()
                if errors:
                    raise errors[0]
                if getattr(setup.clock, "realtime", False):
                    th = threading.Thread(target=write, args=(sampler.frames, setup.T_base_cam, info, res), daemon=True)
                    th.start()
                    pending.append(th)
                else:
                    write(sampler.frames, setup.T_base_cam, info, res)
                    if errors:
                        raise errors[0]
                results.append(res)
                say(f"episode {i + 1}: {len(sampler.frames)} frames, {duration:.1f} s ({reason})")
                i += 1
                attempt += 1
                if i < config.episodes and config.reset_s > 0 and not (stop() or events.stop):
                    if loop.fault is not None:  # the next episode starts a fresh loop from the arm's pose
                        say(f"reset: {config.reset_s:g} s, the arm holding (the episode ended on: {loop.fault})")
                        _wait(setup.clock, config.reset_s, events, stop)
                    else:
                        say(f"reset: {config.reset_s:g} s (not recorded; right arrow skips)")
                        events.clear_episode()
                        drive(loop, setup, config.reset_s, every_k, fps, events, stop, None)
                        loop.hold()
    finally:
        for th in pending:
            th.join()
    if errors:
        raise errors[0]
    return results
