"""Demonstrations for the action expert, written as a LeRobotDataset v3.0 (``docs/demos_format.md``).

Per episode (seed ``seed + i``), with a noise level drawn per episode:

1. the *noisy* view: the camera's depth gets a stereo noise model (bias drawn in
   ``[-depth_bias_max_m, depth_bias_max_m]``, or clean with probability ``p_clean_depth``), the oracle
   plan gets a 3-D anchor offset drawn in ``[0, plan_noise_max_m]``; lifted from the noisy frame, it
   gives the guidance the runtime would have computed -> ``observation.guidance``, ``observation.goal``;
2. the *clean* plan (true poses, noise-free depth) drives a scripted privileged demonstrator (the
   plain-IK executor on the clean guidance); its next ``H`` poses at every expert step are the chunk
   (``action`` holds its first row; the chunk is the next ``H`` steps' ``action``).
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
   clipped to the workspace; ``None``: the whole workspace) -> ``observation.cloud``; the arm state, the
   camera image, the noisy guidance's window and goal at that step are recorded with it.

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
from ..runtime.episode_record import guidance_goal, guidance_window
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

CAMERA = "front"  # observation.images.front: the scene camera


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
    records the camera image and the cloud (a fresh noisy frame, cropped to the region of interest), the
    arm state, the noisy guidance's window and goal, and the unperturbed clean chunk."""

    needs_cloud = False
    name = "scripted demonstrator"

    def __init__(self, cfg: DemoConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.rows: dict[str, list] = {k: [] for k in ("t", "cloud", "cloud_n_valid", "ee_pose", "gripper", "joints",
                                                      "goal", "action", "rgb", "window")}
        self.error: str | None = None
        self.guidance = None        # the noisy guidance, sampled at expert_dt (recorded)
        self._clean = None          # the clean guidance the demonstrator follows, sampled at expert_dt
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
        rgbd = self.camera.read()
        frame = depth_to_cloud(rgbd, self.camera.T_base_cam, roi, cfg.n_points)
        if len(frame) == 0:
            self.error = f"demo seed {self.seed}: empty workspace crop at t={t:.1f} s"
            raise PlanError(self.error)
        rows = self.rows
        rows["t"].append(t)
        rows["rgb"].append(rgbd.rgb)
        rows["window"].append(guidance_window(self.guidance, t, cfg.horizon + 1, cfg.expert_dt))
        rows["goal"].append(guidance_goal(self.guidance, t))
        rows["cloud"].append(frame.xyz)
        rows["cloud_n_valid"].append(frame.n_valid)
        rows["ee_pose"].append(np.concatenate([state.ee_pose.position, state.ee_pose.quat]))
        rows["gripper"].append(state.gripper)
        rows["joints"].append(state.joints)
        rows["action"].append(clean_chunk.poses.astype(np.float64))
        return chunk

    def arrays(self, success: bool) -> dict:
        """The episode, one row per expert step: ``t``, ``cloud`` (T, N, 3) + ``cloud_n_valid``, ``ee_pose``
        (T, 7), ``gripper``, ``joints``, ``rgb`` (T, H, W, 3), ``window`` (T, H + 1, 8) and ``goal`` (T, 8) of
        the noisy guidance, ``action`` (T, H, 8) the clean chunk, ``success``."""
        r = self.rows
        return {
            "t": np.asarray(r["t"], np.float64),
            "cloud": np.asarray(r["cloud"], np.float32),
            "cloud_n_valid": np.asarray(r["cloud_n_valid"], np.int32),
            "ee_pose": np.asarray(r["ee_pose"], np.float64),
            "gripper": np.asarray(r["gripper"], np.float64),
            "joints": np.asarray(r["joints"], np.float64),
            "rgb": np.asarray(r["rgb"], np.uint8),
            "window": np.asarray(r["window"], np.float64),
            "goal": np.asarray(r["goal"], np.float64),
            "action": np.asarray(r["action"], np.float64),
            "success": np.array(bool(success)),
        }

    def close(self) -> None:
        pass


def demo_setup(cfg: DemoConfig):
    """The embedded setup as the demonstrations run it: one plan for the whole instruction (no re-plan
    at sub-task boundaries and no re-grasp, so the clean and noisy paths pair up anchor by anchor), frames as
    read (the depth bias stays in the guidance for the expert to learn to correct), the expert every
    ``expert_dt``."""
    from ..runtime.config import load_robot_config, with_overrides

    rcfg = load_robot_config("sim_panda")
    k = int(round(cfg.expert_dt * rcfg.loop.rate_hz))
    if k < 1 or abs(k / rcfg.loop.rate_hz - cfg.expert_dt) > 1e-9:
        raise ValueError(f"DemoConfig.expert_dt: {cfg.expert_dt} s is not a whole number of "
                         f"{rcfg.loop.rate_hz:g} Hz control ticks")
    return with_overrides(rcfg, camera={"depth_tare": False}, planner={"replan_subtasks": False, "max_regrasps": 0},
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
    info = {"task": spec_slug, "instruction": instruction, "seed": int(seed), "success": bool(out.success),
            "reason": out.reason,
            "steps": len(demo.rows["t"]), "plan_noise_m": float(plan_noise_m), "depth_noise": asdict(depth_noise),
            "T_base_cam": T_base_cam}
    return demo.arrays(out.success), info


def write_demos(task: str, episodes: int, out: str | Path, seed: int = 0, cfg: DemoConfig | None = None) -> dict:
    """Write ``episodes`` demonstrations of ``task`` into ``out`` as one LeRobot data set (replacing an
    earlier demonstration set there; any other non-empty directory is refused). Returns the data set's
    edgebridge record (``meta/edgebridge.json``)."""
    from ..datasets.edge_features import write_edge_meta
    from ..datasets.lerobot_v3 import LeRobotWriter

    cfg = cfg or DemoConfig()
    out = Path(out)
    clear_demos(out)
    rng = np.random.default_rng(seed)
    infos, writer = [], None
    t0 = time.perf_counter()
    try:
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
            if writer is None:
                writer = LeRobotWriter(out, round(1.0 / cfg.expert_dt, 9), demo_features(arrays, cfg), "sim_panda")
            info["episode_index"] = add_episode(writer, arrays, info["instruction"])
            infos.append(info)
            log.info("demo %d: %s seed %d, %d steps, success=%s", info["episode_index"], task, ep_seed, info["steps"],
                     info["success"])
    finally:
        if writer is not None:
            writer.finalize()
    from .camera import SimCameraConfig

    cam = SimCameraConfig()
    meta = {
        "kind": "demonstrations", "software_version": __version__, "tasks": sorted({i["task"] for i in infos}),
        "seed": seed, "episodes": infos, "n_points": cfg.n_points, "horizon": cfg.horizon,
        "guidance_steps": cfg.horizon + 1, "expert_dt": cfg.expert_dt, "action_dt": cfg.expert_dt,
        "camera": {"width": cam.width, "height": cam.height, "vfov_deg": cam.vfov_deg},
        "workspace_bounds": [list(b) for b in WORKSPACE_BOUNDS], "config": asdict(replace(cfg)),
        "cloud_roi": cfg.cloud_roi.to_dict() if cfg.cloud_roi else None,
        "cloud_roi_margin_m": cfg.cloud_roi_margin_m if cfg.cloud_roi else 0.0,
        "wall_s": time.perf_counter() - t0,
    }
    if writer is not None:
        write_edge_meta(out, meta)
    return meta


def demo_features(arrays: dict, cfg: DemoConfig) -> dict:
    """The LeRobot features of a demonstration set (``docs/datasets.md``)."""
    from ..datasets.edge_features import edge_features

    return edge_features(cameras={CAMERA: arrays["rgb"].shape[1:3]}, n_joints=arrays["joints"].shape[1],
                         n_points=cfg.n_points, guidance_steps=cfg.horizon + 1)


def add_episode(writer, arrays: dict, instruction: str) -> int:
    """One demonstration (:meth:`DemoRecorder.arrays`) as one episode of ``writer``; returns its index.
    ``action`` is the first row of each step's clean chunk: the chunk itself is the next H steps' actions."""
    from ..datasets.edge_features import edge_frame, pose_row

    a = arrays
    for k in range(len(a["t"])):
        writer.add_frame(edge_frame(
            writer.features, state=pose_row(a["ee_pose"][k, :3], a["ee_pose"][k, 3:7], a["gripper"][k]),
            action=a["action"][k, 0], images={CAMERA: a["rgb"][k]}, joints=a["joints"][k], cloud=a["cloud"][k],
            n_valid=int(a["cloud_n_valid"][k]), guidance=a["window"][k], goal=a["goal"][k]))
    return writer.save_episode(task=instruction)


def clear_demos(out: Path) -> None:
    """Make ``out`` ready for a new demonstration set: remove an earlier one (LeRobot, or the former
    ``episode_*.npz`` + ``meta.json``); refuse a directory holding anything else."""
    from ..datasets.lerobot_v3 import remove_dataset

    if not out.exists() or not any(out.iterdir()):
        return
    if (out / "meta" / "info.json").exists():
        log.info("%s: replacing the demonstration set there", out)
        remove_dataset(out)
        return
    old = sorted(out.glob("episode_*.npz"))
    if (out / "meta.json").exists() and {p.name for p in out.iterdir()} == {"meta.json", *(p.name for p in old)}:
        log.info("%s: replacing the npz demonstrations there", out)
        for p in [*old, out / "meta.json"]:
            p.unlink()
        return
    raise FileExistsError(f"{out}: not empty and not a demonstration set; write demonstrations to a new directory")


def npz_to_lerobot(src: str | Path, dst: str | Path) -> dict:
    """Convert a demonstration set of the former format (``episode_*.npz`` + ``meta.json``) into a LeRobot
    data set (no camera: those files hold none). ``action`` keeps each chunk's first row; a chunk that is not
    the next steps' actions (it always is for ``edge-sim demos``) is reported, as the conversion loses it."""
    from ..contracts import Guidance
    from ..datasets.edge_features import edge_features, edge_frame, pose_row, write_edge_meta
    from ..datasets.lerobot_v3 import LeRobotWriter

    src, dst = Path(src), Path(dst)
    meta = json.loads((src / "meta.json").read_text())
    files = sorted(src.glob("episode_*.npz"))
    if not files:
        raise FileNotFoundError(f"{src}: no episode_*.npz files")
    dt = float(meta.get("action_dt", meta.get("expert_dt", 0.1)))
    horizon = int(meta.get("horizon", 16))
    infos = list(meta["episodes"]) if isinstance(meta.get("episodes"), list) else [{} for _ in files]
    writer = None
    try:
        for i, f in enumerate(files):
            with np.load(f, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            g = a["guidance"]
            gd = Guidance(a["guidance_t"], g[:, :3], g[:, 3:7], np.clip(g[:, 7], 0.0, 1.0))
            t_len = len(a["t"])
            future = a["action"][np.minimum(np.arange(t_len)[:, None] + np.arange(a["action"].shape[1]), t_len - 1), 0]
            if np.max(np.abs(future - a["action"]), initial=0.0) > 1e-5:
                log.warning("%s: its chunks are not the next steps' actions; only their first rows are kept", f)
            if writer is None:
                feats = edge_features(n_joints=a["joints"].shape[1], n_points=a["cloud"].shape[1],
                                      guidance_steps=horizon + 1)
                writer = LeRobotWriter(dst, round(1.0 / dt, 9), feats, "sim_panda")
            for k in range(t_len):
                writer.add_frame(edge_frame(
                    writer.features, state=pose_row(a["ee_pose"][k, :3], a["ee_pose"][k, 3:7], a["gripper"][k]),
                    action=a["action"][k, 0], joints=a["joints"][k], cloud=a["cloud"][k],
                    n_valid=int(a["cloud_n_valid"][k]), guidance=guidance_window(gd, a["t"][k], horizon + 1, dt),
                    goal=guidance_goal(gd, a["t"][k])))
            info = infos[i] if i < len(infos) else {}
            ep = writer.save_episode(task=str(info.get("task") or (meta.get("tasks") or ["demonstration"])[0]))
            infos[i] = {**info, "episode_index": ep, "success": bool(a.get("success", info.get("success", True)))}
    finally:
        if writer is not None:
            writer.finalize()
    out = {k: v for k, v in meta.items() if k not in ("format", "episodes")}
    out.update({"kind": "demonstrations", "converted_from": str(src), "episodes": infos[:len(files)],
                "horizon": horizon, "guidance_steps": horizon + 1, "action_dt": dt})
    write_edge_meta(dst, out)
    return out
