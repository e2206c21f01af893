"""Episodes in the embedded world, run through the runtime's own :class:`~edgebridge.runtime.pipeline.Pipeline`.

There is one episode path: ``edge-run``, ``edge-sim run``, the success benchmark, the demonstration
writer and the tests all build the setup's devices (``runtime.devices.build_devices``) and run
``Pipeline.run`` — planning and re-planning, the depth tare, guidance, the expert worker, chunk
blending, the joint limiter, the safety layer, the watchdog and the fixed-rate control loop — in
lock-step with the simulator (or on the wall clock with ``realtime=True``). This module only adds the
experimental conditions of an episode (plan noise on the oracle's anchors, depth noise and bias on the
camera, the depth tare on or off) and builds the world they apply to.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..clock import Clock
from .arm import SimArm
from .camera import DepthNoiseConfig, SimCamera, SimCameraConfig
from .tasks import jitter_camera, match_task, setup_scene
from .world import SimWorld

log = logging.getLogger(__name__)

WORKSPACE_BOUNDS = ((0.05, -0.6, -0.03), (0.9, 0.6, 0.6))  # the sim setup's perception crop (sim_panda.toml)
EXPERTS = ("ik", "onnx")
PLANNERS = ("oracle", "gguf")


def workspace():
    from ..kernels import WorkspaceBox

    return WorkspaceBox.from_bounds(*WORKSPACE_BOUNDS)


def depth_noise_config(depth_noise: float | DepthNoiseConfig) -> DepthNoiseConfig:
    """A depth condition: a :class:`DepthNoiseConfig` as given, or a bias in metres (stereo noise plus
    that bias when > 0, ``DepthNoiseConfig.condition``)."""
    if isinstance(depth_noise, DepthNoiseConfig):
        return depth_noise
    return DepthNoiseConfig.condition(float(depth_noise) * 100)


def build_world(task: str, seed: int, *, depth_noise: float | DepthNoiseConfig = 0.0,
                camera_config: SimCameraConfig | None = None, clock: Clock | None = None):
    """A fresh world with the scene of ``task`` (a slug, a phrasing or free text: ``match_task``), a
    jittered camera and the arm at home: (spec, world, camera, arm). ``clock``: None for lock-step
    simulated time, a ``MonotonicClock`` for real time."""
    spec = match_task(task)
    world = SimWorld(clock=clock)
    try:
        rng = setup_scene(world, spec, seed)
        cfg = camera_config or SimCameraConfig()
        camera = SimCamera(world, replace(cfg, noise=depth_noise_config(depth_noise), seed=seed))
        jitter_camera(camera, rng, spec.camera_jitter_m)
        arm = SimArm(world)
    except Exception:
        world.close()
        raise
    return spec, world, camera, arm


def run_episode(task: str, seed: int, expert: str | object = "ik", *, plan_noise_m: float = 0.0,
                depth_noise: float | DepthNoiseConfig = 0.0, depth_tare: bool = True,
                record_dir: str | Path | None = None, max_seconds: float | None = None, realtime: bool = False,
                setup: str = "sim_panda", expert_model: str | None = None, expert_threads: int | None = None,
                profiler=None, planner: str = "oracle", vlm: str | None = None, mmproj: str | None = None,
                planner_options: dict | None = None, observers=(), anchor_depth_noise_m: float = 0.0,
                wrong_plan: str | None = None, push_cup: bool = False, config_overrides: dict | None = None):
    """Run one episode of ``task`` (slug or instruction) with ``seed`` through the runtime pipeline and
    return its :class:`~edgebridge.runtime.pipeline.EpisodeOutcome`; never raises for a failed episode
    (the reason is in the outcome), only for bad arguments.

    ``expert``: ``"ik"`` (plain IK along the guidance), ``"onnx"`` (the shipped action expert, or
    ``expert_model``) or an ActionExpert instance (e.g. a scripted demonstrator). ``plan_noise_m``: a
    random 3-D offset of that size on every oracle anchor. ``depth_noise``: a depth bias in m (with
    stereo noise when > 0) or a :class:`DepthNoiseConfig`. ``depth_tare``: measure the depth offset
    against the table top before the episode (the setup's default) or use the frames as read.

    ``planner``: ``"oracle"`` (the simulator's privileged planner, the default) or ``"gguf"`` (the VLM:
    ``vlm`` + ``mmproj``, or the shipped planner when both are None); ``plan_noise_m`` applies to the oracle
    only. ``planner_options`` are merged into the setup's ``planner.options`` (e.g. ``n_threads``,
    ``chat_handler``). The planner is built with the other devices (``runtime.devices.build_devices``), as
    ``edge-run`` builds it.

    ``anchor_depth_noise_m``: Gaussian error (std, m) along the camera ray in the depth at which each anchor
    is lifted, independent per anchor and per plan; the cloud the expert sees stays as sensed.
    ``wrong_plan``: the first plan is wrong (``"wrong_object"``: it names another object; ``"grasp_8cm"``:
    its grasp point lies 8 cm off the object); re-plans are the planner's own. ``push_cup``: after the
    first plan, at a random moment before the grasp, the cup is pushed 3-6 cm across the table.
    ``config_overrides``: sections merged into the setup (``runtime.config.with_overrides``), e.g.
    ``{"planner": {...}}``.

    ``observers``: episode observers (``runtime/episode_record.py``: an ``EpisodeRecorder``, a ``RerunView``)
    that see this episode; the caller closes them. ``record_dir``: record this one episode as a LeRobot
    data set in that (new or empty) directory; for several episodes in one data set pass one
    ``EpisodeRecorder`` as an observer instead."""
    from ..runtime.config import load_robot_config, with_overrides
    from ..runtime.devices import RunChoices, build_devices
    from ..runtime.pipeline import Pipeline

    if isinstance(expert, str) and expert not in EXPERTS:
        from ..errors import UnknownNameError

        raise UnknownNameError(f"unknown expert {expert!r}; known: {list(EXPERTS)} (or pass an ActionExpert "
                               f"instance)")
    cfg = load_robot_config(setup)
    expert_section = {}
    if expert_model is not None:
        expert_section["model"] = str(expert_model)
    if expert_threads is not None:
        expert_section["options"] = {**cfg.expert.options, "threads": int(expert_threads)}
    if planner not in PLANNERS:
        from ..errors import UnknownNameError

        raise UnknownNameError(f"unknown planner {planner!r}; known: {list(PLANNERS)}")
    if planner != "oracle" and plan_noise_m:
        raise ValueError(f"plan_noise_m offsets the oracle's anchors; it does not apply to planner {planner!r}")
    planner_section = {"options": {**cfg.planner.options, **planner_options}} if planner_options else {}
    cfg = with_overrides(cfg, camera={"depth_tare": bool(depth_tare)}, expert=expert_section, planner=planner_section)
    if config_overrides:
        cfg = with_overrides(cfg, **config_overrides)
    choices = RunChoices(task=task, seed=int(seed), planner=planner, vlm=vlm, mmproj=mmproj,
                         expert=expert if isinstance(expert, str) else "ik",
                         expert_instance=None if isinstance(expert, str) else expert,
                         sim_plan_noise_m=float(plan_noise_m), sim_depth_noise=depth_noise, sim_realtime=realtime,
                         sim_anchor_depth_noise_m=float(anchor_depth_noise_m), sim_wrong_plan=wrong_plan,
                         sim_push_cup=bool(push_cup))
    devices, instruction = build_devices(cfg, choices)
    recorder = None
    try:
        if record_dir is not None:
            from ..runtime.episode_record import EpisodeRecorder, RecordConfig

            recorder = EpisodeRecorder(record_dir, RecordConfig.from_robot(cfg),
                                       meta={"T_base_cam": devices.T_base_cam.tolist()})
        pipe = Pipeline(cfg, devices, profiler=profiler, observers=(*observers, recorder))
        outcome = pipe.run(instruction, task=match_task(task).slug, seed=int(seed), max_seconds=max_seconds)
    finally:
        try:
            if recorder is not None:
                recorder.close()
        finally:
            devices.close()
    (log.info if outcome.success else log.warning)("episode %s seed %d: %s (%s)", outcome.task, seed,
                                                   "success" if outcome.success else "FAILED", outcome.reason)
    return outcome
