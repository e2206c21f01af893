"""``--record DIR`` as a LeRobotDataset v3.0 (``docs/datasets.md``): :class:`EpisodeRecorder`, an episode
observer.

Episode observers (this recorder, the Rerun view ``runtime/rerun_view.py``) are called by the pipeline:

    begin_episode(instruction, task=, seed=)        before planning starts
    on_plan(plan, frame)                             a plan was accepted (planner worker)
    on_guidance(lifted, state, path, spline, stamp_ns)   its guidance was built (``Pipeline.on_guidance``)
    on_frame(frame, cloud)                           an expert step's camera frame and cropped cloud (or None)
    on_state(state)                                  the arm state the step starts from
    on_chunk(chunk, guidance, state)                 the chunk the expert returned for that step
    end_episode(outcome, profiler=None)              the episode is over (also after a failure)
    close()                                          the run is over

:class:`Observers` fans each call out to several observers; an observer that raises is logged and never
stops the episode. The recorder writes from its own thread, so video encoding never delays an expert step.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contracts import ActionChunk, ArmState, Guidance
from ..datasets.edge_features import edge_features, edge_frame, pose_row, read_edge_meta, write_edge_meta
from ..datasets.lerobot_v3 import LeRobotWriter
from ..datasets.video import DEFAULT_VCODEC
from .expert.features import goal_index
from .guidance import guidance_rows, interpolate_guidance

log = logging.getLogger(__name__)

OBSERVER_METHODS = ("begin_episode", "on_plan", "on_guidance", "on_frame", "on_state", "on_chunk", "end_episode",
                    "close")


def guidance_window(guidance: Guidance, now_s: float, steps: int, dt: float) -> np.ndarray:
    """(steps, 8): the guidance at ``now_s + k * dt`` (held at its ends), as every executor samples it."""
    return interpolate_guidance(guidance, now_s + dt * np.arange(steps))


def guidance_goal(guidance: Guidance, now_s: float) -> np.ndarray:
    """(8,): the guidance sample at its next gripper event after ``now_s``, else its last (the expert's goal)."""
    return guidance_rows(guidance)[goal_index(guidance.t, guidance.gripper, np.array([float(now_s)]))[0]]


class Observers:
    """Several episode observers called as one (see the module docstring); None entries are skipped."""

    def __init__(self, observers=()) -> None:
        self.observers = [o for o in observers if o is not None]
        self._failed: set[tuple[int, str]] = set()

    def __bool__(self) -> bool:
        return bool(self.observers)

    def _call(self, method: str, *args, **kw) -> None:
        for o in self.observers:
            fn = getattr(o, method, None)
            if fn is None:
                continue
            try:
                fn(*args, **kw)
            except Exception as e:  # an observer never stops an episode
                if (id(o), method) not in self._failed:
                    self._failed.add((id(o), method))
                    log.warning("%s.%s failed: %s: %s (further failures not logged)", type(o).__name__, method,
                                type(e).__name__, e)

    def __getattr__(self, method: str):
        if method not in OBSERVER_METHODS:
            raise AttributeError(method)
        return lambda *a, **kw: self._call(method, *a, **kw)


@dataclass(frozen=True)
class RecordConfig:
    """``fps``: frames per second (one frame per expert step); ``action_dt``: the expert's chunk step, also
    the step of the recorded guidance window of ``guidance_steps`` poses; ``camera``: the camera's name in
    ``observation.images.<camera>``."""

    fps: float
    action_dt: float
    guidance_steps: int = 17
    camera: str = "front"
    robot_type: str | None = None
    vcodec: str = DEFAULT_VCODEC

    def __post_init__(self) -> None:
        if not (self.fps > 0 and self.action_dt > 0 and self.guidance_steps >= 1):
            raise ValueError(f"RecordConfig: fps {self.fps}, action_dt {self.action_dt} and guidance_steps "
                             f"{self.guidance_steps} must be > 0")

    @classmethod
    def from_robot(cls, cfg, **kw) -> "RecordConfig":
        """The recording of a robot setup (``runtime.config.RobotConfig``): one frame per expert step."""
        return cls(fps=cfg.loop.rate_hz / cfg.expert.every_k_ticks, action_dt=cfg.expert.dt, robot_type=cfg.name, **kw)


class EpisodeRecorder:
    """Writes every episode it observes as one episode of a LeRobot data set under ``root`` (which must
    not exist or be empty). The data set's features are fixed by the first expert step: the camera frame's
    size, the cloud's size (no cloud features when the expert takes no cloud), the joint count.
    ``meta``: extra entries for ``meta/edgebridge.json`` (e.g. the camera pose)."""

    def __init__(self, root: str | Path, config: RecordConfig, meta: dict | None = None) -> None:
        self.root, self.config = Path(root), config
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"--record {self.root}: not empty; record into a new directory")
        self.meta = {"action_dt": config.action_dt, "guidance_steps": config.guidance_steps,
                     "horizon": config.guidance_steps - 1, "episodes": [], **(meta or {})}
        self.writer: LeRobotWriter | None = None
        self._lock = threading.Lock()
        self._frame = self._cloud = self._state = None
        self._plan = ""
        self._episode: dict | None = None
        self._n = 0
        self._skipped = 0
        self._q: queue.Queue = queue.Queue(maxsize=256)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="episode-recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ observer calls
    def begin_episode(self, instruction: str, task: str = "", seed: int = 0) -> None:
        with self._lock:
            self._episode = {"instruction": instruction, "task": task or instruction, "seed": int(seed)}
            self._plan, self._frame, self._cloud, self._state, self._n, self._skipped = "", None, None, None, 0, 0

    def on_plan(self, plan, frame=None) -> None:
        from .planner.format import plan_to_json

        with self._lock:
            self._plan = plan_to_json(plan)

    def on_guidance(self, lifted, state, path, spline, stamp_ns: int) -> None:
        pass

    def on_frame(self, frame, cloud=None) -> None:
        with self._lock:
            self._frame, self._cloud = frame, cloud

    def on_state(self, state: ArmState) -> None:
        with self._lock:
            self._state = state

    def on_chunk(self, chunk: ActionChunk, guidance: Guidance, state: ArmState | None = None) -> None:
        c = self.config
        with self._lock:
            state = state if state is not None else self._state
            frame, cloud, plan = self._frame, self._cloud, self._plan
            self._frame = self._cloud = None  # a frame belongs to one step
        if state is None or self._episode is None:
            return
        now = (state.stamp_ns - guidance.stamp_ns) / 1e9
        step = {"state": pose_row(state.ee_pose.position, state.ee_pose.quat, state.gripper),
                "action": np.asarray(chunk.poses[0], np.float32), "joints": np.asarray(state.joints, np.float32),
                "guidance": guidance_window(guidance, now, c.guidance_steps, c.action_dt).astype(np.float32),
                "goal": guidance_goal(guidance, now).astype(np.float32), "plan": plan,
                "rgb": None if frame is None else np.array(frame.rgb, copy=True),
                "cloud": None if cloud is None else (np.array(cloud.xyz, np.float32), int(cloud.n_valid or len(cloud)))}
        self._put(("step", step))

    def end_episode(self, outcome=None, profiler=None) -> None:
        if self._episode is None:
            return
        info = dict(self._episode)
        if outcome is not None:
            d = outcome.to_dict() if hasattr(outcome, "to_dict") else dict(outcome)
            info.update({k: d[k] for k in ("success", "reason", "duration") if k in d})
        self._episode = None
        done = threading.Event()
        self._put(("save", info, done))
        done.wait()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            done = threading.Event()
            self._put(("close", done))
            done.wait()
            self._thread.join(5.0)
        self._raise()

    def __enter__(self) -> "EpisodeRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writer thread
    def _put(self, item) -> None:
        if self._error is None:
            self._q.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"--record {self.root}: {type(err).__name__}: {err}") from err

    def _work(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item[0] == "step":
                    self._add(item[1])
                elif item[0] == "save":
                    self._save(item[1])
                elif item[0] == "close":
                    self._finish()
            except Exception as e:  # reported to the next end_episode / close
                log.error("--record %s: %s: %s", self.root, type(e).__name__, e)
                self._error = self._error or e
            finally:
                if item[0] in ("save", "close"):
                    item[-1].set()
            if item[0] == "close":
                return

    def _add(self, step: dict) -> None:
        c = self.config
        if self.writer is None:
            cams = {c.camera: step["rgb"].shape[:2]} if step["rgb"] is not None else {}
            n_points = len(step["cloud"][0]) if step["cloud"] is not None else None
            feats = edge_features(cameras=cams, n_joints=len(step["joints"]), n_points=n_points,
                                  guidance_steps=c.guidance_steps)
            self.writer = LeRobotWriter(self.root, c.fps, feats, c.robot_type, vcodec=c.vcodec)
            self.meta["n_points"] = n_points
        feats = self.writer.features
        if (("observation.images." + c.camera) in feats and step["rgb"] is None) or \
                ("observation.cloud" in feats and step["cloud"] is None):
            self._skipped += 1  # a step whose camera read failed: the data set's frames all have every feature
            return
        cloud, n_valid = step["cloud"] if step["cloud"] is not None else (None, None)
        images = {c.camera: step["rgb"]} if ("observation.images." + c.camera) in feats else {}
        self.writer.add_frame(edge_frame(feats, state=step["state"], action=step["action"], images=images,
                                         joints=step["joints"], cloud=cloud, n_valid=n_valid, guidance=step["guidance"],
                                         goal=step["goal"], plan=step["plan"]))
        self._n += 1

    def _save(self, info: dict) -> None:
        if self.writer is None or self.writer.frames_in_episode == 0:
            log.warning("--record %s: episode %r has no expert steps; not recorded", self.root, info.get("task"))
            return
        if self._skipped:
            log.warning("--record %s: %d expert steps without a camera frame left out", self.root, self._skipped)
        info["episode_index"] = self.writer.save_episode(task=info["instruction"])
        info["frames"] = self._n
        self.meta["episodes"].append(info)
        write_edge_meta(self.root, self.meta)

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            write_edge_meta(self.root, self.meta)


def recorded_episodes(root: str | Path) -> list[dict]:
    """The per-episode entries (task, seed, success, reason, episode_index) a recording kept."""
    return (read_edge_meta(root) or {}).get("episodes", [])
