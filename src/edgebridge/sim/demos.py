"""Demonstrations for the action expert, in the format of ``docs/demos_format.md``.

Per episode (seed ``seed + i``), with a noise level drawn per episode:

1. the *noisy* view: the camera's depth gets a stereo noise model (bias drawn in
   ``[-depth_bias_max_m, depth_bias_max_m]``, or clean with probability ``p_clean_depth``), the oracle
   plan gets a 3-D anchor offset drawn in ``[0, plan_noise_max_m]``; lifted from the noisy frame, it
   gives the guidance the runtime would have computed -> ``guidance``, ``goal``;
2. the *clean* plan (true poses, noise-free depth) drives a scripted privileged demonstrator (the
   plain-IK executor on the clean guidance); its next ``H`` poses at every expert step -> ``action``.
   The clean guidance is timed like the noisy one (same segment durations, so the same phase at the
   same time): ``action`` minus the noisy guidance at the same times is a purely spatial correction;
   The demonstrator's *execution* is perturbed (DART-style: a smooth random offset of
   ``execution_noise_m`` per axis, redrawn every ``execution_noise_hold_s`` and faded to zero around
   every grasp and release) while the recorded ``action`` stays the unperturbed clean chunk. Without it
   the arm's offset from the noisy guidance — visible in the proprio tokens and as the gripper's own
   points in the cloud — would *equal* the correction, and a policy that learned to read it copies its
   own last correction in closed loop and drifts;
3. at every expert step (``expert_dt``, 10 Hz) the noisy frame becomes a base-frame cloud of ``n_points``
   cropped to the expert's region of interest (``cloud_roi``: a box around the noisy guidance's goal,
   clipped to the workspace; ``None``: the whole workspace) -> ``cloud``, and the arm state is logged.

Every episode runs through the runtime's :class:`~edgebridge.runtime.pipeline.Pipeline` (planning,
chunk blending, joint limiter, safety layer, watchdog, control loop) with the demonstrator as its
action expert (:class:`DemoRecorder`; the setup: :func:`demo_setup`). Episodes whose noisy plan
cannot be lifted (e.g. a depth hole under an anchor) are redrawn with new noise up to 3 times, then
skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..contracts import RGBD, Waypoints
from ..errors import PlanError
from ..runtime.expert.features import CloudROI, goal_position
from ..runtime.guidance import GuidanceConfig, PiecewiseGuidance, approach_waypoints
from ..runtime.ik_expert import IKExpert, IKExpertConfig
from ..runtime.lift import lift_plan
from ..runtime.pipeline import Pipeline
from .camera import DepthNoiseConfig
from .episode import WORKSPACE_BOUNDS, workspace
from .oracle import OracleConfig, OraclePlanner
from .tasks import get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    n_points: int = 1024
    horizon: int = 16
    expert_dt: float = 0.1
    plan_noise_max_m: float = 0.03
    depth_bias_max_m: float = 0.01
    p_clean_depth: float = 0.3
    max_seconds: float | None = None
    cloud_roi: CloudROI | None = CloudROI()
    # clouds are recorded in the ROI grown by this margin on every side (with n_points = 1024 about the
    # density the runtime's 512 points have in the ROI itself): training moves the plan by up to a few cm
    # (plan-shift augmentation) and crops to the ROI afterwards, so the crop's edges never give the shift away
    cloud_roi_margin_m: float = 0.05
    execution_noise_m: float = 0.02
    execution_noise_hold_s: float = 1.0
    execution_noise_fade_s: float = 1.0


def fit_with_timing(path: Waypoints, ref):
    """Spline pieces through ``path`` with exactly the segment durations of ``ref`` (a
    ``PiecewiseGuidance`` through a path of the same length and gripper sequence), so both trajectories
    reach each waypoint at the same time."""
    from ..kernels import GuidanceSpline

    seg = [np.diff(p.knots) for p in ref.pieces]
    if sum(len(d) for d in seg) != len(path) - 1:
        raise PlanError(f"clean and noisy plans expand to different paths ({len(path) - 1} segments vs "
                        f"{sum(len(d) for d in seg)}); cannot time them alike")
    pieces, a = [], 0
    for d in seg:
        b = a + len(d)
        wp = Waypoints(path.positions[a:b + 1], path.quats[a:b + 1], path.gripper[a:b + 1], frame=path.frame)
        pieces.append(GuidanceSpline.fit(wp, durations=d))
        a = b
    return PiecewiseGuidance(pieces)


class PerturbedDemonstrator:
    """The privileged demonstrator (``IKExpert`` on the clean guidance) with smooth execution noise: the
    chunk it *executes* is offset by a piecewise-linear random walk (knots every ``hold_s``, std
    ``std_m`` per axis, clipped to 2 std), scaled to zero within 0.3 s of every gripper event and
    ramping back over ``fade_s``; ``last_clean`` is the unperturbed chunk, which is what is recorded."""

    needs_cloud = False

    def __init__(self, ik: IKExpert, std_m: float, hold_s: float, fade_s: float, rng: np.random.Generator) -> None:
        self.ik, self.std_m, self.hold_s, self.fade_s, self.rng = ik, float(std_m), float(hold_s), float(fade_s), rng
        self.last_clean = None
        self._knots: np.ndarray | None = None
        self._events: np.ndarray | None = None

    def offset(self, t: np.ndarray) -> np.ndarray:
        """(len(t), 3) execution offsets at guidance times ``t``."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        i = np.clip(t / self.hold_s, 0.0, len(self._knots) - 1.001)
        k = np.floor(i).astype(int)
        w = (i - k)[:, None]
        eps = (1 - w) * self._knots[k] + w * self._knots[k + 1]
        if self._events.size:
            d = np.min(np.abs(t[:, None] - self._events[None, :]), axis=1)
            eps *= np.clip((d - 0.3) / self.fade_s, 0.0, 1.0)[:, None]
        return eps

    def act(self, cloud, state, guidance):
        from ..contracts import ActionChunk

        chunk = self.ik.act(cloud, state, guidance)
        self.last_clean = chunk
        if self.std_m <= 0:
            return chunk
        if self._knots is None:
            n = int(np.ceil((guidance.t[-1] + 10.0) / self.hold_s)) + 2
            self._knots = np.clip(self.rng.normal(0.0, self.std_m, (n, 3)), -2 * self.std_m, 2 * self.std_m)
            self._knots[0] = 0.0  # start where the arm is
            g = guidance.gripper >= 0.5
            self._events = guidance.t[1:][g[1:] != g[:-1]]
        now = (state.stamp_ns - guidance.stamp_ns) / 1e9
        poses = chunk.poses.astype(np.float64)
        poses[:, :3] += self.offset(now + chunk.dt * np.arange(len(chunk)))
        return ActionChunk(poses, start_ns=chunk.start_ns, dt=chunk.dt, inference_ms=chunk.inference_ms)

    def close(self) -> None:
        pass


class DemoRecorder:
    """The scripted demonstrator as the pipeline's action expert, recording as it goes.

    Before the episode (:meth:`attach`) it plans the *clean* view: the oracle on a noise-free render,
    lifted with the true depth. When the pipeline builds its guidance from the *noisy* plan
    (:meth:`on_guidance`), it times the clean path like the noisy one (:func:`fit_with_timing`) and from
    then on follows it with :class:`PerturbedDemonstrator`; its chunks go through the pipeline's chunk
    blending, joint limiter, safety layer and control loop like any expert's. At every expert step it
    records the cloud (a fresh noisy frame cropped to the region of interest), the arm state, the goal
    and the unperturbed clean chunk."""

    needs_cloud = False
    name = "scripted demonstrator"

    def __init__(self, cfg: DemoConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.rows: dict[str, list] = {k: [] for k in ("t", "cloud", "cloud_n_valid", "ee_pose", "gripper", "joints",
                                                      "goal", "action")}
        self.error: str | None = None
        self.guidance = None        # the noisy guidance, sampled at expert_dt (recorded)
        self._clean = None          # the clean guidance the demonstrator follows, sampled at expert_dt
        self._events = 0
        self._policy = PerturbedDemonstrator(IKExpert(IKExpertConfig(horizon=cfg.horizon, dt=cfg.expert_dt)),
                                             cfg.execution_noise_m, cfg.execution_noise_hold_s,
                                             cfg.execution_noise_fade_s, np.random.default_rng(seed + 104729))

    def attach(self, world, camera, instruction: str) -> None:
        """Plan the clean view of the scene (before the arm moves)."""
        self.world, self.camera = world, camera
        rgb, depth, _ = camera.render()
        clean = RGBD(rgb, depth, camera.intrinsics, stamp_ns=world.clock.now_ns())
        plan = OraclePlanner(world, camera, OracleConfig(offset_m=0.0, seed=self.seed)).plan(clean, instruction)
        self._clean_lifted = lift_plan(plan, clean, camera.T_base_cam, workspace())

    def on_guidance(self, noisy_lifted: Waypoints, state, noisy_path: Waypoints, noisy_g, stamp_ns: int) -> None:
        """``Pipeline.on_guidance``: the pipeline built ``noisy_g`` through ``noisy_path`` from
        ``noisy_lifted`` at ``state``; time the clean path alike."""
        clean_path, _ = approach_waypoints(self._clean_lifted, state, config=GuidanceConfig())
        if not np.array_equal(clean_path.gripper, noisy_path.gripper):
            raise PlanError(f"demo seed {self.seed}: clean and noisy plans differ in gripper events")
        clean_g = fit_with_timing(clean_path, noisy_g)  # same phase at the same time as the noisy guidance
        self.guidance = noisy_g.sample(self.cfg.expert_dt, stamp_ns=stamp_ns)
        self._clean = clean_g.sample(self.cfg.expert_dt, stamp_ns=stamp_ns)
        self._contacts = [i for i in range(len(noisy_lifted)) if i == 0 and noisy_lifted.gripper[0] < 0.5
                          or i > 0 and noisy_lifted.gripper[i] != noisy_lifted.gripper[i - 1]]
        self._goals = np.concatenate([noisy_lifted.positions, noisy_lifted.quats, noisy_lifted.gripper[:, None]], axis=1)

    def act(self, cloud, state, guidance):
        from ..kernels import depth_to_cloud

        if self._clean is None:
            raise PlanError("the demonstrator has no clean guidance (on_guidance was not called)")
        cfg = self.cfg
        chunk = self._policy.act(None, state, self._clean)
        clean_chunk = self._policy.last_clean  # record what the demonstrator meant, not the perturbed execution
        t = (state.stamp_ns - self._clean.stamp_ns) / 1e9
        roi = cfg.cloud_roi.box(goal_position(self.guidance, t), WORKSPACE_BOUNDS,
                                margin_m=cfg.cloud_roi_margin_m) if cfg.cloud_roi else workspace()
        frame = depth_to_cloud(self.camera.read(), self.camera.T_base_cam, roi, cfg.n_points)
        if len(frame) == 0:
            self.error = f"demo seed {self.seed}: empty workspace crop at t={t:.1f} s"
            raise PlanError(self.error)
        rows = self.rows
        prev = rows["action"][-1][0, 7] if rows["action"] else 1.0
        if (prev >= 0.5) != (clean_chunk.poses[0, 7] >= 0.5):
            self._events += 1
        k = self._contacts[min(self._events, len(self._contacts) - 1)] if self._contacts else 0
        rows["t"].append(t)
        rows["cloud"].append(frame.xyz)
        rows["cloud_n_valid"].append(frame.n_valid)
        rows["ee_pose"].append(np.concatenate([state.ee_pose.position, state.ee_pose.quat]))
        rows["gripper"].append(state.gripper)
        rows["joints"].append(state.joints)
        rows["goal"].append(self._goals[k])
        rows["action"].append(clean_chunk.poses.astype(np.float64))
        return chunk

    def arrays(self, success: bool) -> dict:
        r, g = self.rows, self.guidance
        return {
            "t": np.asarray(r["t"], np.float64),
            "cloud": np.asarray(r["cloud"], np.float32),
            "cloud_n_valid": np.asarray(r["cloud_n_valid"], np.int32),
            "ee_pose": np.asarray(r["ee_pose"], np.float64),
            "gripper": np.asarray(r["gripper"], np.float64),
            "joints": np.asarray(r["joints"], np.float64),
            "guidance_t": g.t,
            "guidance": np.concatenate([g.positions, g.quats, g.gripper[:, None]], axis=1),
            "goal": np.asarray(r["goal"], np.float64),
            "action": np.asarray(r["action"], np.float64),
            "success": np.array(bool(success)),
        }

    def close(self) -> None:
        pass


def demo_setup(cfg: DemoConfig):
    """The embedded setup as the demonstrations run it: one plan for the whole instruction (no re-plan
    at sub-task boundaries, so the clean and noisy paths pair up anchor by anchor), frames as read (the
    depth bias stays in the guidance for the expert to learn to correct), the expert every ``expert_dt``."""
    from ..runtime.config import load_robot_config, with_overrides

    rcfg = load_robot_config("sim_panda")
    k = int(round(cfg.expert_dt * rcfg.loop.rate_hz))
    if k < 1 or abs(k / rcfg.loop.rate_hz - cfg.expert_dt) > 1e-9:
        raise ValueError(f"DemoConfig.expert_dt: {cfg.expert_dt} s is not a whole number of "
                         f"{rcfg.loop.rate_hz:g} Hz control ticks")
    return with_overrides(rcfg, camera={"depth_tare": False}, planner={"replan_subtasks": False},
                          expert={"every_k_ticks": k, "horizon": cfg.horizon, "dt": cfg.expert_dt})


def record_episode(task: str, seed: int, cfg: DemoConfig, *, plan_noise_m: float, depth_noise: DepthNoiseConfig):
    """One demonstration through the runtime pipeline: (dict of arrays, info dict), or raises PlanError
    when the noisy plan cannot be executed."""
    from ..runtime.devices import RunChoices, build_devices

    rcfg = demo_setup(cfg)
    demo = DemoRecorder(cfg, seed)
    devices, instruction = build_devices(rcfg, RunChoices(task=task, seed=seed, planner="oracle", expert_instance=demo,
                                                          sim_plan_noise_m=plan_noise_m, sim_depth_noise=depth_noise))
    try:
        demo.attach(devices.camera.world, devices.camera, instruction)
        spec_slug = get_task(task).slug
        pipe = Pipeline(rcfg, devices)
        pipe.on_guidance = demo.on_guidance
        out = pipe.run(instruction, task=spec_slug, seed=seed, max_seconds=cfg.max_seconds)
        T_base_cam = devices.camera.T_base_cam.tolist()
    finally:
        devices.close()
    if demo.error is not None:
        raise PlanError(demo.error)
    if demo.guidance is None or out.reason.startswith("plan rejected"):
        raise PlanError(f"demo {spec_slug} seed {seed}: {out.reason}")
    info = {"task": spec_slug, "seed": int(seed), "success": bool(out.success), "reason": out.reason,
            "steps": len(demo.rows["t"]), "plan_noise_m": float(plan_noise_m), "depth_noise": asdict(depth_noise),
            "T_base_cam": T_base_cam}
    return demo.arrays(out.success), info


def write_demos(task: str, episodes: int, out: str | Path, seed: int = 0, cfg: DemoConfig | None = None) -> dict:
    """Write ``episodes`` demonstrations of ``task`` into ``out`` (npz per episode + meta.json)."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    infos = []
    t0 = time.perf_counter()
    for i in range(episodes):
        ep_seed = seed + i
        for attempt in range(3):
            plan_noise = float(rng.uniform(0.0, cfg.plan_noise_max_m))
            depth = DepthNoiseConfig() if rng.random() < cfg.p_clean_depth else DepthNoiseConfig.stereo(
                float(rng.uniform(-cfg.depth_bias_max_m, cfg.depth_bias_max_m)))
            try:
                arrays, info = record_episode(task, ep_seed, cfg, plan_noise_m=plan_noise, depth_noise=depth)
                break
            except PlanError as e:
                log.warning("demo %s seed %d attempt %d: %s; redrawing the noise", task, ep_seed, attempt + 1, e)
        else:
            log.warning("demo %s seed %d skipped after 3 failed noise draws", task, ep_seed)
            continue
        name = f"episode_{len(infos):06d}.npz"
        np.savez(out / name, **arrays)
        info["file"] = name
        infos.append(info)
        log.info("demo %s: %s seed %d, %d steps, success=%s", name, task, ep_seed, info["steps"], info["success"])
    from .camera import SimCameraConfig

    cam = SimCameraConfig()
    meta = {
        "format": "edgebridge-demos/1", "software_version": __version__, "tasks": sorted({i["task"] for i in infos}),
        "seed": seed, "episodes": infos, "n_points": cfg.n_points, "horizon": cfg.horizon,
        "expert_dt": cfg.expert_dt, "action_dt": cfg.expert_dt, "render_hz": 1.0 / cfg.expert_dt,
        "camera": {"width": cam.width, "height": cam.height, "vfov_deg": cam.vfov_deg},
        "workspace_bounds": [list(b) for b in WORKSPACE_BOUNDS], "config": asdict(replace(cfg)),
        "cloud_roi": cfg.cloud_roi.to_dict() if cfg.cloud_roi else None,
        "cloud_roi_margin_m": cfg.cloud_roi_margin_m if cfg.cloud_roi else 0.0,
        "wall_s": time.perf_counter() - t0,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_episode(path: str | Path) -> dict:
    """Read one episode back (numpy only, no simulator)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
