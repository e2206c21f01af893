"""The think-then-act pipeline: camera -> planner -> lift -> guidance spline -> cloud -> action expert ->
chunk queue -> control loop -> arm. Stages talk through the contract types only.

The devices (arm, camera, kinematics, planner, expert, clock) come from a factory (``devices.py``);
this module never imports the simulator. Two ways to run, picked by the clock:

- **real time** (``MonotonicClock``): the control loop runs in its own thread at its fixed rate; the
  expert runs in a worker thread every ``every_k_ticks`` loop periods (capture -> cloud -> act -> chunk
  queue); the planner runs in its own worker (:class:`~edgebridge.runtime.plan_session.PlanSession`
  around an ``AsyncPlanner``); the caller's thread supervises the episode. Neither the planner nor the
  expert can stall the loop: a late chunk is only late (the loop interpolates at *now*), a missing one
  makes the loop decelerate and hold; while a plan is awaited the arm holds.
- **lock-step** (``SimClock``): the same loop and the same stages, but planning and the expert step are
  a hook of the loop's cycle (a planning request is waited for in wall time while simulated time stands
  still), so simulated physics, the planner, the expert and the loop advance deterministically together.

Planning: the first plan, a re-plan at each sub-task boundary from a fresh frame, a bounded number of
retries after a rejected plan, a bounded number of re-grasps after a grasp that closed on nothing, and
optionally a re-plan at each pre-grasp point (see ``plan_session.py`` and ``grasp_check.py``).

Episode observers (``observers``: the ``--record`` LeRobot recorder, the ``--rerun`` view; their calls are
listed in ``episode_record.py``) see each accepted plan, each guidance and each expert step (frame, cloud,
state, chunk) in every run mode; an observer that fails is logged and never stops the episode.

Faults: the expert raising or returning an unusable chunk ``max_expert_failures`` times in a row, the
newest camera frame older than ``camera.max_frame_age_s`` (no frame, or the same old one again), an arm
driver fault, SIGINT/SIGTERM -> a controlled stop with the reason in the :class:`EpisodeOutcome`. A stop
request (``stop``, a :class:`~edgebridge.runtime.watchdog.StopRequest` that SIGINT/SIGTERM set during
``run``) ends whatever the episode waits on: planning, the loop process's start, the loop itself.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..clock import Clock
from ..contracts import RGBD, ArmState
from ..errors import EdgebridgeError
from ..interfaces import ActionExpert, Arm, Camera, Planner
from .config import RobotConfig
from .episode_record import Observers
from .expert_worker import _ExpertWorker, _LoopProxy, _join_worker
from .grasp_check import GraspPolicy
from .grasp_point import apply_grasp_point
from .grasp_yaw import apply_grasp_yaw
from .lift import AnchorBounds, lift_plan
from .loop import ControlLoop, LoopResult
from .plan_session import GUIDANCE_COMPLETE, PlanSession
from .profiling import Profiler, timer
from .safety import Kinematics
from .supervisor import Supervisor
from .watchdog import SignalGuard, StopRequest, Watchdog

if TYPE_CHECKING:
    from ..kernels import WorkspaceBox

log = logging.getLogger(__name__)

__all__ = ["GUIDANCE_COMPLETE", "Devices", "EpisodeOutcome", "Pipeline", "Supervisor"]


@dataclass
class Devices:
    """Everything the pipeline drives, built by a device factory. ``success`` (optional) is the task's
    success check (the simulator has one; a real cell may not); ``abort`` (optional) is checked by the
    episode's supervisor at the expert's rate and returns a reason to stop early (the simulator: an
    object knocked off the table) or None. ``on_guidance`` (optional) sees every guidance the pipeline
    builds, as ``Pipeline.on_guidance`` does (the simulator's disturbances time themselves by it);
    ``events`` is what such hooks did, copied into the outcome. ``closers`` run on ``close()``."""

    arm: Arm | None
    camera: Camera
    kinematics: Kinematics
    planner: Planner
    expert: ActionExpert
    clock: Clock
    T_base_cam: np.ndarray
    workspace: WorkspaceBox | None = None
    success: Callable[[], tuple[bool, str]] | None = None
    abort: Callable[[], str | None] | None = None
    time_limit_s: float | None = None  # the task's own limit (simulator tasks); else the setup's task_timeout_s
    notes: list[str] = field(default_factory=list)
    # loop isolation "process": the arm is opened in the loop's own process from these picklable
    # factories (``arm`` is then None in this process)
    arm_factory: Callable[[], Any] | None = None
    kin_factory: Callable[[], Any] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    on_guidance: Callable | None = None
    events: dict = field(default_factory=dict)
    # simulated experiments only: n -> n errors (m) added along the camera ray to the anchors' lifted depth
    # (sim_success's anchor-depth conditions); the cloud the expert sees is unchanged
    anchor_depth_error: Callable[[int], np.ndarray] | None = None

    def close(self) -> None:
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as e:  # close everything even if one fails
                log.warning("closing a device failed: %s: %s", type(e).__name__, e)
        self.closers.clear()


@dataclass
class EpisodeOutcome:
    task: str
    seed: int
    success: bool
    duration: float
    reason: str
    loop: dict = field(default_factory=dict)
    timings_ms: dict = field(default_factory=dict)
    planning: dict = field(default_factory=dict)
    wall_s: float = 0.0
    events: dict = field(default_factory=dict)  # what the devices' hooks did (Devices.events)

    def to_dict(self) -> dict:
        return {"task": self.task, "seed": self.seed, "success": self.success, "duration": round(self.duration, 3),
                "reason": self.reason, "loop": self.loop, "timings_ms": self.timings_ms, "planning": self.planning,
                "wall_s": round(self.wall_s, 3), "events": self.events}


class Pipeline:
    """Runs episodes on ``devices`` with the setup ``cfg``. ``settle_s``: time after the guidance ends
    for the arm to finish before the success check. ``max_expert_failures``: consecutive failed expert
    steps that stop the episode. ``stop``: the caller's :class:`StopRequest` (``edge-run``: one for
    the whole run, so a signal in one episode also ends the run); default: a new one per episode."""

    def __init__(self, cfg: RobotConfig, devices: Devices, *, dry_run: bool = False,
                 profiler: Profiler | None = None, settle_s: float = 1.5, max_expert_failures: int = 3,
                 guidance_config=None, stop: StopRequest | None = None, observers=()) -> None:
        self.cfg, self.dev = cfg, devices
        self.stop = stop
        self.dry_run = dry_run
        self.profiler = profiler
        self.obs = Observers(observers)  # episode observers (--record, --rerun): runtime/episode_record.py
        self.settle_s = settle_s
        self.max_expert_failures = max_expert_failures
        self.guidance_config = guidance_config
        # optional observer of every guidance built: (lifted, state, path, spline, stamp_ns), e.g. the
        # simulator's scripted demonstrator, which times its own clean path like the runtime's
        self.on_guidance: Callable | None = None
        self.needs_cloud = bool(getattr(devices.expert, "needs_cloud", True))
        self.last_loop: ControlLoop | None = None
        self.last_period_stats = None  # the last episode's loop timing (PeriodStats), in either isolation mode
        self.last_planning = None  # PlanningStats of the last episode
        self._camera_lock = threading.Lock()
        self.depth_tare = None  # the DepthTare measured before each episode (camera.depth_tare)
        # where a lifted plan anchor may lie: the setup's workspace limits within the camera's crop
        self.anchor_bounds = AnchorBounds(cfg.limits.workspace_min, cfg.limits.workspace_max, devices.workspace)

    # ------------------------------------------------------------------ stages
    def capture(self, watchdog: Watchdog | None) -> RGBD:
        with self._camera_lock, timer(self.profiler, "capture"):  # the planner and the expert both read
            frame = self.dev.camera.read()
            if not isinstance(frame, RGBD):
                raise EdgebridgeError(f"camera returned {type(frame).__name__}, not an RGBD frame")
            if watchdog is not None:  # the frame's own stamp and number: an old or repeated frame is not fresh
                watchdog.feed_camera(frame.stamp_ns, frame.seq, read_ns=self.dev.clock.now_ns())
        if self.depth_tare is not None:
            frame = self.depth_tare.correct(frame)
        return frame

    def tare_depth(self) -> None:
        """Measure the camera's depth offset against the table plane (``camera.depth_tare``) from one
        frame; later frames are corrected. Raises ``DepthTareError`` when it cannot be measured."""
        from ..calib.depth_tare import DepthTareConfig, estimate_depth_bias

        self.depth_tare = None
        with self._camera_lock:
            frame = self.dev.camera.read()
        tare = estimate_depth_bias(frame, self.dev.T_base_cam, DepthTareConfig(table_z_m=self.cfg.camera.table_z_m))
        log.info("depth tare: %s", tare.describe())
        self.depth_tare = tare

    def warm_up(self, state: ArmState) -> None:
        """Before a real-time episode's expert worker starts: one frame through ``capture``, the cloud
        kernels and the expert (on a guidance that holds ``state``'s pose), so Numba's compilation or
        cache load and the inference session's first run do not land inside the episode's first expert
        steps. Nothing is sent, and nothing is recorded in the profile."""
        from ..contracts import Guidance

        t0 = time.perf_counter()
        pose = state.ee_pose
        hold = Guidance(np.array([0.0, 1.0]), np.stack([pose.position] * 2), np.stack([pose.quat] * 2),
                        np.full(2, state.gripper), stamp_ns=state.stamp_ns)
        profiler, self.profiler = self.profiler, None  # warm-up times are not the episode's stage times
        try:
            frame = self.capture(None)
            box_fn = getattr(self.dev.expert, "cloud_box", None)
            cloud = self.cloud(frame, box_fn(state, hold, self.workspace_bounds) if box_fn else None)
            if cloud.n_valid:
                self.dev.expert.act(cloud, state, hold)
        except Exception as e:  # the episode's own steps report real failures
            log.warning("warm-up before the episode failed: %s: %s", type(e).__name__, e)
        finally:
            self.profiler = profiler
        log.info("warm-up (cloud kernels + expert) took %.2f s", time.perf_counter() - t0)

    def lift(self, plan, frame: RGBD):
        """Plan validation (runs in the planner worker): anchors -> base-frame waypoints, or PlanError (an
        anchor off the image, in a depth hole, or lifted outside ``anchor_bounds``)."""
        pc = self.cfg.planner
        err = self.dev.anchor_depth_error(len(plan.anchors)) if self.dev.anchor_depth_error is not None else None
        clamped: list = []
        with timer(self.profiler, "lift"):
            lifted = lift_plan(plan, frame, self.dev.T_base_cam, self.anchor_bounds, ray_error_m=err,
                               out_of_bounds=pc.anchor_out_of_bounds, clamp_max_m=pc.anchor_clamp_max_m,
                               clamped=clamped)
            lifted, yaw = apply_grasp_yaw(plan, lifted, frame, self.dev.T_base_cam, pc.grasp_yaw)
            lifted, centred = apply_grasp_point(plan, lifted, frame, self.dev.T_base_cam, pc.grasp_point)
        if clamped and self.last_planning is not None:
            self.last_planning.clamped += len(clamped)
        if yaw is not None and yaw.yaw is not None and self.last_planning is not None:
            self.last_planning.cloud_yaws += 1
        if self.last_planning is not None:
            self.last_planning.centred_grasps += sum(e.point is not None for _, e in centred)
        self.obs.on_plan(plan, frame)
        return lifted

    def build_guidance(self, lifted, state: ArmState, stamp_ns: int):
        """Lifted waypoints -> approach path -> spline from the arm's state; returns (duration_s, guidance
        sampled at ``perception.guidance_dt`` and stamped ``stamp_ns`` for its t = 0)."""
        from .guidance import GuidanceConfig, approach_waypoints, fit_guidance

        with timer(self.profiler, "spline"):
            gcfg = self.guidance_config or GuidanceConfig()
            path, durations = approach_waypoints(lifted, state, config=gcfg)
            spline = fit_guidance(path, durations, gcfg)
            for hook in (self.on_guidance, self.dev.on_guidance):
                if hook is not None:
                    hook(lifted, state, path, spline, stamp_ns)
            self.obs.on_guidance(lifted, state, path, spline, stamp_ns)
            return spline.duration, spline.sample(self.cfg.perception.guidance_dt, stamp_ns=stamp_ns)

    def plan_session(self, instruction: str, watchdog: Watchdog | None, *, blocking: bool) -> PlanSession:
        pc = self.cfg.planner
        return PlanSession(self.dev.planner, instruction, capture=lambda: self.capture(watchdog), lift=self.lift,
                           build=self.build_guidance, max_attempts=pc.max_attempts,
                           replan_subtasks=pc.replan_subtasks, timeout_s=pc.timeout_s, settle_s=self.settle_s,
                           blocking=blocking, profiler=self.profiler,
                           stop=None if watchdog is None else watchdog.signals,  # waits and retries end on a signal
                           grasp=GraspPolicy.from_config(self.cfg, self.guidance_config))

    @property
    def workspace_bounds(self) -> tuple:
        p = self.cfg.perception
        return (np.asarray(p.crop_min, np.float64), np.asarray(p.crop_max, np.float64))

    def cloud(self, frame: RGBD, box=None):
        """The frame as ``perception.n_points`` base-frame points cropped to ``box`` (default: the
        workspace crop; the expert may ask for a region around its goal, ``cloud_box``)."""
        from ..kernels import WorkspaceBox, depth_to_cloud

        p = self.cfg.perception
        if box is None:
            box = WorkspaceBox.from_bounds(p.crop_min, p.crop_max)
        with timer(self.profiler, "cloud"):
            return depth_to_cloud(frame, self.dev.T_base_cam, box, p.n_points, voxel_size=p.voxel_m)

    # ------------------------------------------------------------------ one episode
    def run(self, instruction: str, *, task: str = "", seed: int = 0, max_seconds: float | None = None) -> EpisodeOutcome:
        cfg, dev = self.cfg, self.dev
        clock = dev.clock
        wall0 = time.perf_counter()
        limit = float(max_seconds if max_seconds is not None else
                      dev.time_limit_s if dev.time_limit_s is not None else cfg.task_timeout_s)
        cam_timeout = cfg.camera.max_frame_age_s if self.needs_cloud else None
        watchdog = Watchdog(cfg.loop.chunk_timeout_s, camera_timeout_s=cam_timeout, stop=self.stop)
        t_start = clock.now_ns()
        outcome: EpisodeOutcome | None = None
        self.obs.begin_episode(instruction, task=task, seed=seed)
        session = self.plan_session(instruction, watchdog, blocking=not clock.realtime)
        self.last_planning = session.stats
        sup = Supervisor(session, t_start + int(limit * 1e9), dev.abort,
                         int(cfg.expert.every_k_ticks * cfg.loop.period_ns))

        def finish(success: bool, reason: str, res: LoopResult | None) -> EpisodeOutcome:
            nonlocal outcome
            loop_info = {} if res is None else {"cycles": res.cycles, "sent": res.sent, "holds": res.holds,
                                                 "rejections": res.rejections, **res.stats}
            timings = {k: round(v["p50_ms"], 3) for k, v in self.profiler.stage_table().items()} if self.profiler else {}
            outcome = EpisodeOutcome(task or instruction, seed, success, (clock.now_ns() - t_start) / 1e9, reason,
                                     loop_info, timings, session.stats.to_dict(), time.perf_counter() - wall0,
                                     dict(dev.events))
            return outcome

        try:
            with SignalGuard(watchdog):  # SIGINT/SIGTERM: a controlled stop, whatever the episode waits on
                if cfg.camera.depth_tare:  # every episode: the camera may have been moved or re-calibrated
                    try:
                        self.tare_depth()
                    except EdgebridgeError as e:  # before the arm moves: nothing to stop
                        return finish(False, f"depth tare failed: {e}", None)
                if clock.realtime and self.needs_cloud and dev.arm is not None and not watchdog.stop_requested():
                    self.warm_up(dev.arm.state())
                if dev.arm is None:
                    if dev.arm_factory is None or dev.kin_factory is None or not clock.realtime:
                        raise ValueError("Pipeline: devices have no arm; a loop in its own process needs "
                                         "arm_factory, kin_factory and a real-time clock")
                    res = self._run_process(sup, watchdog)
                    if res is None:
                        res = LoopResult("the control-loop process did not report a result (killed or wedged)",
                                         0, 0, {}, 0, fault=True)
                    return finish(*self._judge(res), res)
                loop = ControlLoop(dev.arm, cfg.limits, cfg.loop, dev.kinematics, clock=clock, watchdog=watchdog,
                                   profiler=self.profiler, dry_run=self.dry_run)
                self.last_loop = loop
                self.last_period_stats = loop.stats
                loop.prepare()
                worker = _ExpertWorker(self, loop, watchdog, session)
                if clock.realtime:
                    loop.start()  # the loop runs (holding) while the planner thinks
                    res = self._run_realtime(loop, worker, sup)
                else:
                    res = self._run_lockstep(loop, worker, sup)
                return finish(*self._judge(res), res)
        finally:
            session.close()
            self.obs.end_episode(outcome, self.profiler)

    def _run_process(self, sup: "Supervisor", watchdog: Watchdog) -> LoopResult:
        """Real time with the loop in its own process (``loop.isolation = "process"``): no GIL shared with
        the planner and the expert. The parent supervises: planning, camera/expert faults and signals
        become a stop request through shared memory."""
        from .loop_process import LoopProcess

        cfg, dev, clock = self.cfg, self.dev, self.dev.clock
        lp = LoopProcess(dev.arm_factory, dev.kin_factory, cfg.limits, cfg.loop, dry_run=self.dry_run,
                         profile=self.profiler is not None, stop=watchdog.stop_requested)
        stop = threading.Event()
        t = None
        try:
            try:
                lp.start()
            except InterruptedError:  # a stop request while the child started: nothing moved
                return LoopResult(watchdog.stop_reason or "stop requested", 0, 0, {}, 0)
            if not lp.wait_first_state(10.0):
                lp.request_stop(watchdog.stop_reason or "no arm state from the control-loop process within 10 s")
                return lp.join(15.0)
            if self.needs_cloud and not watchdog.stop_requested():
                self.warm_up(lp.latest_state())
            worker = _ExpertWorker(self, _LoopProxy(lp, self.profiler), watchdog, sup.session)
            t = threading.Thread(target=worker.run_periodic, name="expert-worker", daemon=True,
                                 args=(self.cfg.expert.every_k_ticks / cfg.loop.rate_hz, stop))
            t.start()
            stopping = None  # monotonic time of the stop request
            # supervise until the loop process exits; it reports its result through the pipe
            while lp.join(sup.PERIOD_S) is None and (stopping is None or time.monotonic() - stopping < 15.0):
                if stopping is None:
                    why = sup.check(clock.now_ns(), lp.latest_state(), watchdog)
                    if why:
                        lp.request_stop(why)
                        stopping = time.monotonic()
            res = lp.join(15.0)
            if res is not None:
                self.last_period_stats = res.period_stats
                if self.profiler is not None and res.profile:
                    self.profiler.merge_samples(res.profile)  # loop_compute, driver_io, end_to_end (+ trace events)
            return res
        finally:
            stop.set()
            if t is not None:
                _join_worker(t, watchdog)
            lp.close()

    def _judge(self, res: LoopResult) -> tuple[bool, str]:
        if res.reason != GUIDANCE_COMPLETE:
            return False, res.reason
        if self.dev.success is None:
            return not res.fault, "guidance complete (no success check for this setup)"
        ok, why = self.dev.success()
        return bool(ok), why

    def _run_lockstep(self, loop: ControlLoop, worker: "_ExpertWorker", sup: "Supervisor") -> LoopResult:
        """Lock-step: supervision and the expert step are a hook of every loop cycle."""
        k = self.cfg.expert.every_k_ticks
        clock = self.dev.clock

        def hook(cycle: int) -> None:
            if sup.stopping:
                return
            why = sup.check(clock.now_ns(), loop.states.latest())
            if why:
                loop.request_stop(why)
            elif (cycle - 1) % k == 0:
                worker.step()

        loop.hooks.append(hook)
        return loop.run()

    def _run_realtime(self, loop: ControlLoop, worker: "_ExpertWorker", sup: "Supervisor") -> LoopResult:
        """Real time, loop in a thread: the expert in its own worker thread, supervision here."""
        clock = self.dev.clock
        period_s = self.cfg.expert.every_k_ticks / self.cfg.loop.rate_hz
        stop = threading.Event()
        t = threading.Thread(target=worker.run_periodic, args=(period_s, stop), name="expert-worker", daemon=True)
        t.start()
        try:
            while loop.join(sup.PERIOD_S) is None:
                if not sup.stopping:
                    why = sup.check(clock.now_ns(), loop.states.latest())
                    if why:
                        loop.request_stop(why)
        except BaseException:  # a second SIGINT: the loop thread still brakes and holds before we leave
            loop.request_stop("interrupted")
            loop.join(1.0)
            raise
        finally:
            stop.set()
            _join_worker(t, loop.watchdog)
        return loop.join()
