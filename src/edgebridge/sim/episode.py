"""A lock-step episode in the embedded world: camera -> planner -> lift -> B-spline -> expert chunks ->
IK -> arm, then the task's success check.

Everything runs on the world's :class:`~edgebridge.clock.SimClock`: the expert runs every
``expert_dt`` of simulated time, the arm gets a joint target every ``control_dt``, and physics steps at
240 Hz in between. Before planning, the depth offset is measured against the table top and removed
from every frame (``EpisodeConfig.depth_tare``; ``edgebridge.calib.depth_tare``). An episode always ends: on success, at the end of the guidance (plus a settle
time), at ``max_seconds``, or on the first failure (plan rejected, IK failure, object knocked off the
table), whose reason ends up in :class:`EpisodeResult`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..contracts import ArmCommand, Pose
from ..drivers.kinematics import IKError
from ..errors import EdgebridgeError, PlanError, UnknownNameError
from ..calib.depth_tare import DepthTareConfig, DepthTareError, estimate_depth_bias
from ..runtime.ik_expert import GuidanceConfig, IKExpert, approach_waypoints, fit_guidance
from ..runtime.lift import lift_plan
from .arm import SimArm
from .camera import DepthNoiseConfig, SimCamera, SimCameraConfig
from .oracle import OracleConfig, OraclePlanner
from .tasks import check_success, get_task, jitter_camera, resolve_steps, setup_scene
from .world import SimWorld

log = logging.getLogger(__name__)

WORKSPACE_BOUNDS = ((0.05, -0.6, -0.03), (0.9, 0.6, 0.6))


def workspace():
    from ..kernels import WorkspaceBox

    return WorkspaceBox.from_bounds(*WORKSPACE_BOUNDS)


def _shipped_onnx_expert():
    from ..runtime.expert.onnx import load_shipped  # onnxruntime only when asked for

    return load_shipped()


EXPERTS: dict[str, Callable[[], object]] = {"ik": IKExpert, "onnx": _shipped_onnx_expert}


def register_expert(name: str, factory: Callable[[], object]) -> None:
    """Make ``make_expert(name)`` build an expert with ``factory()`` (e.g. an ONNX expert)."""
    EXPERTS[name] = factory


def make_expert(name: str):
    if name not in EXPERTS:
        raise UnknownNameError(f"unknown expert {name!r}; known: {sorted(EXPERTS)} (register others with "
                       f"edgebridge.sim.episode.register_expert)")
    return EXPERTS[name]()


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    duration: float
    reason: str
    plan_noise_m: float = 0.0
    depth_noise_m: float = 0.0
    wall_s: float = 0.0
    timings_ms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpisodeConfig:
    expert_dt: float = 0.1
    control_dt: float = 0.05
    settle_s: float = 1.5
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    record_every: int = 2
    depth_tare: DepthTareConfig | None = field(default_factory=DepthTareConfig)  # None: frames as read


def build_world(task: str, seed: int, *, depth_noise: float | DepthNoiseConfig = 0.0,
                camera_config: SimCameraConfig | None = None):
    """A fresh world with the task's scene, a jittered camera and the arm at home: (spec, world, camera, arm)."""
    spec = get_task(task)
    world = SimWorld()
    try:
        rng = setup_scene(world, spec, seed)
        noise = depth_noise if isinstance(depth_noise, DepthNoiseConfig) else DepthNoiseConfig.condition(float(depth_noise) * 100)
        cfg = camera_config or SimCameraConfig()
        from dataclasses import replace

        camera = SimCamera(world, replace(cfg, noise=noise, seed=seed))
        jitter_camera(camera, rng, spec.camera_jitter_m)
        arm = SimArm(world)
    except Exception:
        world.close()
        raise
    return spec, world, camera, arm


class _Recorder:
    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.frames: list[np.ndarray] = []
        self._log = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self._log = open(out / "steps.jsonl", "w")

    def step(self, row: dict, rgb: np.ndarray | None) -> None:
        if self._log is not None:
            self._log.write(json.dumps(row) + "\n")
        if rgb is not None and self.out is not None:
            self.frames.append(rgb)

    def close(self, result: EpisodeResult) -> None:
        if self.out is None:
            return
        self._log.close()
        (self.out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        if self.frames:
            import imageio.v2 as imageio

            imageio.mimsave(self.out / "camera.gif", self.frames, duration=0.2, loop=0)


def execute(world: SimWorld, arm: SimArm, spline, expert, cfg: EpisodeConfig, limit_s: float, *,
            cloud_fn: Callable[[object, object], object] | None = None, on_step: Callable | None = None,
            timings: dict | None = None) -> str | None:
    """Follow ``spline`` (anything with ``duration`` and ``sample(dt, stamp_ns=)``) with ``expert`` until
    its end plus ``settle_s`` or ``limit_s``: expert every ``expert_dt``, IK + arm command every
    ``control_dt``, lock-step. Returns None, or the reason the execution failed.
    ``on_step(t, state, chunk)`` is called after every expert step."""
    clock = world.clock
    start_ns = clock.now_ns()
    guidance = spline.sample(cfg.expert_dt, stamp_ns=start_ns)
    end_s = min(spline.duration + cfg.settle_s, limit_s)
    q = arm.state().joints
    control_ns = int(round(cfg.control_dt * 1e9))
    per_expert = max(1, int(round(cfg.expert_dt / cfg.control_dt)))
    tick = 0
    chunk = None
    ik_ms: list[float] = []
    while (clock.now_ns() - start_ns) / 1e9 < end_s:
        if tick % per_expert == 0:
            state = arm.state()
            cloud = cloud_fn(state, guidance) if cloud_fn is not None else None
            chunk = expert.act(cloud, state, guidance)
            for name, obj in world.objects.items():
                if not obj.fixed and not world.on_table(name):
                    return f"{name} was knocked off the table"
            if on_step is not None:
                on_step((clock.now_ns() - start_ns) / 1e9, state, chunk)
        k = (clock.now_ns() - chunk.start_ns) / 1e9 / chunk.dt
        i = int(np.clip(np.floor(k), 0, len(chunk) - 1))
        j = min(i + 1, len(chunk) - 1)
        s = float(np.clip(k - i, 0.0, 1.0))
        row = (1 - s) * chunk.poses[i].astype(np.float64) + s * chunk.poses[j].astype(np.float64)
        target = Pose(row[:3], row[3:7] / np.linalg.norm(row[3:7]))
        t1 = time.perf_counter()
        try:
            q = arm.kin.ik(target, q)
        except IKError as e:
            return f"unreachable target: {e}"
        ik_ms.append((time.perf_counter() - t1) * 1e3)
        arm.command(ArmCommand(joints=q, gripper=float(np.clip(row[7], 0, 1)), ee_target=target))
        tick += 1
        clock.sleep_until(start_ns + tick * control_ns)
    if timings is not None and ik_ms:
        timings["ik_median"] = float(np.median(ik_ms))
    return None


_WARNED_TASKS: set[tuple[str, str]] = set()


def _warn_untrained_task(expert, slug: str) -> None:
    """Log once per (expert, task) when a learned expert runs a task its demonstrations did not cover."""
    from ..runtime.expert.base import untrained_task_note

    note = untrained_task_note(expert, slug)
    key = (str(getattr(expert, "config", expert)), slug)
    if note is not None and key not in _WARNED_TASKS:
        _WARNED_TASKS.add(key)
        log.warning("%s", note)


def run_episode(task: str, seed: int, planner: str = "oracle", expert: str | object = "ik", *,
                plan_noise_m: float = 0.0, depth_noise: float | DepthNoiseConfig = 0.0,
                record_dir: str | Path | None = None, max_seconds: float | None = None,
                config: EpisodeConfig | None = None) -> EpisodeResult:
    """Run one episode of ``task`` (slug or instruction) with ``seed``; never raises for a failed
    episode (the reason is in the result), only for bad arguments."""
    cfg = config or EpisodeConfig()
    if planner != "oracle":
        raise ValueError(f"run_episode: planner {planner!r} is not available in the sim runner; use 'oracle' "
                         f"(VLM planners run through edge-run)")
    wall0 = time.perf_counter()
    spec, world, camera, arm = build_world(task, seed, depth_noise=depth_noise)
    bias = depth_noise.depth_bias_m if isinstance(depth_noise, DepthNoiseConfig) else float(depth_noise)
    limit = float(max_seconds if max_seconds is not None else spec.max_seconds)
    rec = _Recorder(Path(record_dir) if record_dir is not None else None)
    exp = make_expert(expert) if isinstance(expert, str) else expert
    _warn_untrained_task(exp, spec.slug)
    clock = world.clock
    timings: dict[str, float] = {}

    def result(success: bool, reason: str) -> EpisodeResult:
        r = EpisodeResult(spec.slug, int(seed), bool(success), clock.now_ns() / 1e9, reason, float(plan_noise_m),
                          bias, time.perf_counter() - wall0, timings)
        rec.close(r)
        (log.info if success else log.warning)("episode %s seed %d: %s (%s)", spec.slug, seed,
                                                "success" if success else "FAILED", reason)
        return r

    try:
        with camera, arm:
            t0 = time.perf_counter()
            frame = camera.read()
            timings["render"] = (time.perf_counter() - t0) * 1e3
            tare = None
            if cfg.depth_tare is not None:
                try:
                    tare = estimate_depth_bias(frame, camera.T_base_cam, cfg.depth_tare)
                except DepthTareError as e:
                    return result(False, f"depth tare failed: {e}")
                log.info("episode %s seed %d: %s", spec.slug, seed, tare.describe())
                frame = tare.correct(frame)

            def read_frame():
                return camera.read() if tare is None else tare.correct(camera.read())
            oracle = OraclePlanner(world, camera, OracleConfig(offset_m=plan_noise_m, seed=seed))
            instruction = spec.instruction if get_task(task) is spec else task
            try:
                plan = oracle.plan(frame, instruction)
                lifted = lift_plan(plan, frame, camera.T_base_cam, workspace())
                state = arm.state()
                path, durations = approach_waypoints(lifted, state, config=cfg.guidance)
                spline = fit_guidance(path, durations, cfg.guidance)
            except (PlanError, ValueError) as e:
                return result(False, f"plan rejected: {e}")
            steps = resolve_steps(world, instruction)

            def on_step(t, state, chunk):
                rgb = camera.render()[0] if rec.out is not None and on_step.n % cfg.record_every == 0 else None
                on_step.n += 1
                rec.step({"t": round(t, 3), "joints": state.joints.round(4).tolist(),
                          "ee": state.ee_pose.position.round(4).tolist(), "gripper": round(state.gripper, 3),
                          "target": chunk.poses[0].round(4).tolist(),
                          "objects": {n: world.pose(n).position.round(4).tolist() for n in world.objects}}, rgb)

            on_step.n = 0
            cloud_fn = None
            if getattr(exp, "needs_cloud", True):
                from ..kernels import depth_to_cloud

                box = workspace()
                box_fn = getattr(exp, "cloud_box", None)  # the expert's region of interest, if it has one

                def cloud_fn(state, guidance):
                    roi = box_fn(state, guidance, WORKSPACE_BOUNDS) if box_fn is not None else None
                    return depth_to_cloud(read_frame(), camera.T_base_cam, roi if roi is not None else box, 512)
            failure = execute(world, arm, spline, exp, cfg, limit, cloud_fn=cloud_fn, on_step=on_step, timings=timings)
            if failure is not None:
                return result(False, failure)
            world.settle(0.3)
            ok, why = check_success(world, steps)
            if not ok and clock.now_ns() / 1e9 >= limit:
                why = f"time limit {limit:.0f} s reached: {why}"
            return result(ok, why)
    except EdgebridgeError as e:
        return result(False, f"{type(e).__name__}: {e}")
    finally:
        world.close()
