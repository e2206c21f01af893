"""Device factory: a robot setup (TOML) + command-line choices -> :class:`~edgebridge.runtime.pipeline.Devices`.

The only place in the runtime that knows driver names, and the only one allowed to import the
simulator (``arm.driver = "sim"``). Every driver module is imported lazily, so a setup only needs the
extras its own devices use; a missing one raises a one-line error naming the extra.

Arm drivers: ``sim`` (edgebridge.sim, PyBullet Panda), ``servo_serial`` (drivers.serial_arm.SerialArm: a
servo bus of any protocol the setup names, Feetech or Dynamixel 2.0; ``so101_serial`` is the same driver), ``franka`` (drivers.franka.FrankaArm, libfranka through franky).
Cameras: ``sim`` (with the sim arm), ``realsense`` (drivers.realsense.RealSenseCamera).
Planners: ``oracle`` (sim only: privileged simulator state), ``gguf`` (runtime.planner.gguf.GGUFPlanner),
``remote`` (runtime.planner.remote.RemotePlanner). Experts: ``onnx`` (runtime.expert.onnx.OnnxExpert,
default: the shipped model in ``assets/expert``), ``trt`` (runtime.expert.tensorrt), ``ik`` (IKExpert).

Start-up order on a real setup: everything that can fail without hardware comes first (driver names,
option tables, kinematics, calibration files, then the planner and the expert load), then the camera
connects, then the arm, last. Connecting does not power the arm: the control loop enables it when it is
ready (``Arm.enable``). A device that fails to open raises ``DeviceFaultError`` naming it; whatever was
opened is closed again.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, from_dict
from ..errors import DeviceFaultError, MissingExtraError, PlanError
from .config import RobotConfig
from .pipeline import Devices

log = logging.getLogger(__name__)

EXPERT_DIR = Path(__file__).resolve().parent.parent / "assets" / "expert"
ROBOTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "robots"
ARM_DRIVERS = {"servo_serial": ("edgebridge.drivers.serial_arm", "SerialArm", "SerialArmConfig"),
               "so101_serial": ("edgebridge.drivers.serial_arm", "SerialArm", "SerialArmConfig"),
               "franka": ("edgebridge.drivers.franka", "FrankaArm", "FrankaArmConfig")}
CAMERA_DRIVERS = {"realsense": ("edgebridge.drivers.realsense", "RealSenseCamera", "RealSenseConfig")}
# the extra each driver module needs, for the one-line error when it is not importable
DRIVER_EXTRAS = {"edgebridge.drivers.franka": "franka", "edgebridge.drivers.realsense": "realsense"}


@dataclass(frozen=True)
class RunChoices:
    """What the command line picks on top of the setup file. The ``sim_*`` fields only apply to the
    simulated world (``arm.driver = "sim"``): the experimental conditions of an episode and its clock."""

    task: str = "put_cup_in_tray"
    seed: int = 0
    planner: str | None = None   # None: the setup's planner.backend
    vlm: str | None = None       # GGUF model path (planner gguf)
    mmproj: str | None = None    # its vision projector GGUF
    expert: str | None = None    # None: the setup's expert.backend
    expert_instance: Any = None  # an already built ActionExpert (sim experiments, scripted demonstrators)
    sim_plan_noise_m: float = 0.0  # oracle plans: a random 3-D offset of this size on every anchor
    sim_depth_noise: Any = 0.0   # camera depth: a bias in m (+ stereo noise when > 0), or a sim DepthNoiseConfig
    sim_realtime: bool = False   # the simulator steps on the wall clock (default: lock-step with the loop)
    sim_anchor_depth_noise_m: float = 0.0  # lifting: Gaussian error (std, m) along the camera ray, per anchor
    sim_wrong_plan: str | None = None  # the first plan is wrong: "wrong_object" or "grasp_8cm" (sim/oracle.py)
    sim_push_cup: bool = False  # the cup is pushed 3-6 cm at a random moment after the plan, before the grasp


def shipped_expert() -> Path | None:
    models = sorted(EXPERT_DIR.glob("*.onnx"))
    return models[0] if models else None


def _driver_config(spec: tuple[str, str, str], options: dict, what: str, extra: str) -> tuple[type, Any]:
    """The driver class and its validated config (option names, values, files it names); no I/O."""
    mod_name, cls_name, cfg_name = spec
    extra = DRIVER_EXTRAS.get(mod_name, extra)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise MissingExtraError(f"{what} needs {mod_name}, which is not importable ({e}); "
                                f"install it with: pip install 'edgebridge[{extra}]'") from e
    cfg_cls = getattr(mod, cfg_name)
    try:
        cfg = from_dict(cfg_cls, dict(options), prefix=f"{what}.options.")
    except ConfigError as e:
        raise ConfigError(f"{e} (driver {mod_name}.{cls_name})") from e
    return getattr(mod, cls_name), cfg


def _build(spec: tuple[str, str, str], options: dict, what: str, extra: str):
    """Construct a driver from its options (picklable: the loop process builds its arm with it)."""
    cls, cfg = _driver_config(spec, options, what, extra)
    return cls(cfg)


def _open(device, what: str) -> None:
    """``device.connect()``; any failure becomes one ``DeviceFaultError`` naming the device."""
    try:
        device.connect()
    except DeviceFaultError:
        raise
    except Exception as e:
        name = getattr(device, "name", type(device).__name__)
        raise DeviceFaultError(f"{what} {name}: could not connect: {type(e).__name__}: {e}") from e


def nominal_calibration(arm_cfg: Any) -> str | None:
    """The warning for an arm whose joint calibration is the shipped nominal one (not measured on this
    arm), else None. Loads the calibration file the arm config names, so a bad file fails here, before
    any device opens. An arm config without a ``calibration`` file (the arm calibrates itself) -> None."""
    path = getattr(arm_cfg, "calibration", None)
    if not path:
        return None
    from ..drivers.arm_calibration import ArmCalibration

    cal = ArmCalibration.load(path)
    shipped = Path(path).resolve().is_relative_to(ROBOTS_DIR.resolve())
    if not (getattr(cal, "nominal", False) or shipped):
        return None
    return (f"arm {cal.arm_id!r} runs on the nominal calibration {Path(path).name} (not measured on this arm: "
            f"joint angles may be off); record this arm's own with edge-setup and set arm.options.calibration")


def make_planner(cfg: RobotConfig, backend: str, vlm: str | None, sim_ctx: dict | None, *,
                 mmproj: str | None = None, notes: list[str] | None = None, simulated: bool | None = None):
    """The planner ``backend`` names. ``sim_ctx`` (world, camera, seed, plan offset, wrong first plan) is
    what the oracle reads; ``simulated`` says whether the setup is the simulator (default: ``sim_ctx is not None``).

    GGUF: the model is ``--vlm`` or ``planner.model``; without either, the shipped planner (``vlm.gguf``
    + ``vlm-mmproj.gguf`` in ``assets/planner``, chat handler ``mtmd``; ``runtime/planner/shipped.py``),
    and when that is missing a one-line error naming ``make planner``. A GGUF model without a vision
    projector (no ``--mmproj`` and no ``planner.options.mmproj_path``) cannot see the camera image: in the
    simulator it then plans from the instruction alone (``text_only``, stated in the notes and the log);
    on a real setup that is a configuration error unless ``planner.options.text_only = true`` says so."""
    simulated = sim_ctx is not None if simulated is None else simulated
    if backend == "oracle":
        if sim_ctx is None:
            raise ConfigError("planner oracle: reads the simulator's state, so it only works with arm.driver = "
                              "'sim'; use --planner gguf (the shipped VLM, or --vlm MODEL.gguf) or --planner "
                              "remote on real hardware")
        from ..sim.oracle import OracleConfig, OraclePlanner

        return OraclePlanner(sim_ctx["world"], sim_ctx["camera"],
                             OracleConfig(offset_m=sim_ctx.get("offset_m", 0.0), seed=sim_ctx["seed"],
                                          wrong_first_plan=sim_ctx.get("wrong_plan")), events=sim_ctx.get("events"))
    if backend == "gguf":
        from .planner.gguf import GGUFPlanner, GGUFPlannerConfig

        from .planner import shipped

        opts = dict(cfg.planner.options)
        model = vlm or cfg.planner.model
        if not model:
            files = shipped.shipped_vlm()
            if files is None:
                raise ConfigError(shipped.missing_message())
            model = str(files[0])
            if not mmproj and not opts.get("mmproj_path"):
                opts["mmproj_path"] = str(files[1])
            opts.setdefault("chat_handler", shipped.CHAT_HANDLER)
            opts.setdefault("n_ctx", shipped.N_CTX)
            if notes is not None:
                notes.append(f"planner: the shipped VLM {files[0].name} + {Path(opts['mmproj_path']).name} "
                             f"({opts['chat_handler']}) from {files[0].parent}")
        opts["model_path"] = model
        if mmproj:
            opts["mmproj_path"] = mmproj
        if not opts.get("mmproj_path") and not opts.get("text_only"):
            if not simulated:
                raise ConfigError(f"planner gguf: {Path(model).name} has no vision projector, so it cannot see the "
                                  f"camera; pass --mmproj PATH (or set planner.options.mmproj_path), or set "
                                  f"planner.options.text_only = true to plan blind from the instruction alone")
            opts["text_only"] = True
            blind = (f"planner: GGUF {Path(model).name} has no vision projector (--mmproj): it plans from the "
                     f"instruction alone (text-only, blind to the camera image)")
        else:
            blind = None
        gcfg = from_dict(GGUFPlannerConfig, opts, prefix="planner.options.")
        try:
            planner = GGUFPlanner(gcfg)
        except PlanError as e:  # the shipped files are there but do not load: rebuild them
            if vlm or cfg.planner.model:
                raise
            raise PlanError(f"{e} (the shipped planner: rebuild it with '{shipped.BUILD_COMMAND}', or use "
                            f"--planner oracle)") from e
        if blind is not None:  # said once the model has loaded: a file that does not load is the one message
            log.warning(blind)
            if notes is not None:
                notes.append(blind)
        return planner
    if backend == "remote":
        from .planner.remote import RemotePlanner, RemotePlannerConfig

        return RemotePlanner(from_dict(RemotePlannerConfig, dict(cfg.planner.options), prefix="planner.options."))
    raise ConfigError(f"planner: unknown backend {backend!r}; expected oracle, gguf or remote")


def make_expert(cfg: RobotConfig, backend: str, notes: list[str], instance: Any = None):
    if instance is not None:
        notes.append(f"expert: {getattr(instance, 'name', type(instance).__name__)} (given by the caller)")
        return instance
    e = cfg.expert
    if backend == "onnx":
        model = e.model or (str(shipped_expert()) if shipped_expert() else "")
        if not model:
            notes.append(f"expert: no ONNX model shipped yet in {EXPERT_DIR} (make weights writes it); "
                         f"falling back to the plain-IK expert (--expert ik)")
            backend = "ik"
        else:
            from .expert.base import ExpertBackendConfig
            from .expert.onnx import OnnxExpert

            notes.append(f"expert: ONNX {model}")
            return OnnxExpert(from_dict(ExpertBackendConfig, {**e.options, "model": model}, prefix="expert.options."))
    if backend == "trt":
        try:
            mod = importlib.import_module("edgebridge.runtime.expert.tensorrt")
        except ImportError as err:
            raise MissingExtraError(f"expert trt needs the TensorRT backend ({err}); install the 'jetson' extra "
                                    f"on the device, or use --expert onnx") from err
        from .expert.base import ExpertBackendConfig

        if not e.model:
            raise ConfigError("expert trt: set expert.model to the .engine file built on this device (edge-export)")
        notes.append(f"expert: TensorRT engine {e.model}")
        return mod.TensorRTExpert(from_dict(ExpertBackendConfig, {**e.options, "model": e.model}, prefix="expert.options."))
    if backend == "ik":
        from .ik_expert import IKExpert, IKExpertConfig

        notes.append("expert: plain IK (follows the guidance spline; ignores the point cloud)")
        return IKExpert(IKExpertConfig(horizon=e.horizon, dt=e.dt))
    raise ConfigError(f"expert: unknown backend {backend!r}; expected onnx, trt or ik")


def task_scene(cfg: RobotConfig, task: str) -> str | None:
    """The slug of the simulated task whose scene ``task`` (a slug, a phrasing or free text) names, for a
    simulated setup (None on a real one, where the task text goes to the planner as it is); text that
    names no task raises ``UnknownNameError`` (a ``KeyError``) listing the tasks."""
    if cfg.arm.driver != "sim":
        return None
    from ..sim.tasks import match_task

    return match_task(task).slug


def build_devices(cfg: RobotConfig, choices: RunChoices) -> tuple[Devices, str]:
    """Open every device of the setup; returns the devices and the instruction to run. On any error the
    devices opened so far are closed again."""
    planner_name = choices.planner or cfg.planner.backend
    expert_name = choices.expert or cfg.expert.backend
    notes: list[str] = []
    closers: list = []
    try:
        if cfg.arm.driver == "sim":
            dev, instruction = _sim_devices(cfg, choices, planner_name, expert_name, notes, closers)
        else:
            dev, instruction = _real_devices(cfg, choices, planner_name, expert_name, notes, closers)
    except BaseException:
        for fn in reversed(closers):
            try:
                fn()
            except Exception as e:  # pragma: no cover - best effort
                log.warning("closing after a failed start: %s", e)
        raise
    return dev, instruction


_WARNED_TASKS: set[tuple[str, str]] = set()


def warn_untrained_task(expert, slug: str) -> str | None:
    """The note when a learned expert runs a task its demonstrations did not cover (else None); logged
    as a warning once per (expert, task) in this process."""
    from .expert.base import untrained_task_note

    note = untrained_task_note(expert, slug)
    key = (str(getattr(expert, "config", expert)), slug)
    if note is not None and key not in _WARNED_TASKS:
        _WARNED_TASKS.add(key)
        log.warning("%s", note)
    return note


def _sim_devices(cfg, choices, planner_name, expert_name, notes, closers):
    from ..clock import MonotonicClock
    from ..sim.tasks import TASKS, check_success, match_task, resolve_steps

    # the task names the scene: a slug, a registered phrasing or free text matched by its objects and verbs;
    # the planner gets the user's text word for word (a slug: the task's first phrasing)
    spec = match_task(choices.task)
    instruction = spec.instruction if choices.task in TASKS else choices.task
    planner = None
    if choices.sim_wrong_plan is not None and planner_name != "oracle":
        raise ConfigError(f"a wrong first plan ({choices.sim_wrong_plan!r}) is made by the oracle planner; it does "
                          f"not apply to planner {planner_name!r}")
    if planner_name != "oracle":  # a model that does not load fails before the world is built
        planner = make_planner(cfg, planner_name, choices.vlm, None, mmproj=choices.mmproj, notes=notes,
                               simulated=True)
        closers.append(planner.close)
    expert = make_expert(cfg, expert_name, notes, choices.expert_instance)
    if choices.expert_instance is None:
        closers.append(expert.close)
    from ..sim.episode import build_world, workspace

    clock = MonotonicClock(spin_ns=int(cfg.loop.spin_us * 1e3)) if choices.sim_realtime else None
    spec, world, camera, arm = build_world(spec.slug, choices.seed, depth_noise=choices.sim_depth_noise,
                                           clock=clock)
    closers.append(world.close)
    camera.connect()
    closers.append(camera.disconnect)
    arm.connect()
    closers.append(arm.disconnect)
    events: dict = {}  # what the simulated conditions did (a wrong first plan, a push), in the outcome
    anchor_depth_error = None
    if choices.sim_anchor_depth_noise_m > 0:  # independent per anchor and per plan, seeded by the episode
        rng = np.random.default_rng([choices.seed, 7919])
        sigma = float(choices.sim_anchor_depth_noise_m)

        def anchor_depth_error(n: int) -> np.ndarray:
            return rng.normal(0.0, sigma, int(n))
    if planner is None:
        planner = make_planner(cfg, planner_name, choices.vlm, {"world": world, "camera": camera, "seed": choices.seed,
                                                                "offset_m": choices.sim_plan_noise_m,
                                                                "wrong_plan": choices.sim_wrong_plan, "events": events},
                               mmproj=choices.mmproj, notes=notes)
        closers.append(planner.close)
        notes.append("planner: oracle (privileged simulator state, not a VLM); run the VLM planner with "
                     "--planner gguf (the shipped model, or --vlm MODEL.gguf --mmproj MMPROJ.gguf)")
    outside = warn_untrained_task(expert, spec.slug)
    if outside is not None:
        notes.append(f"expert: {outside}")

    def success():
        return check_success(world, resolve_steps(world, instruction))

    movable = [name for name, obj in world.objects.items() if not obj.fixed]
    push = None
    if choices.sim_push_cup:  # the cup is pushed once before the grasp (sim/disturb.py)
        from ..sim.disturb import CupPush

        push = CupPush(world, choices.seed, events)
        notes.append("world: the cup is pushed 3-6 cm across the table at a random moment before the grasp")

    def abort():
        if push is not None:
            push.tick()
        for name in movable:
            if not world.on_table(name):
                return f"{name} was knocked off the table"
        return None

    if cfg.loop.isolation == "process":
        notes.append("loop: isolation 'process' does not apply to the simulator; the loop runs in-process")
    matched = "" if choices.task in TASKS else f" (the scene of {choices.task!r})"
    mode = "real time (physics on the wall clock)" if choices.sim_realtime else "lock-step"
    notes.insert(0, f"world: simulated Panda + RGB-D camera (PyBullet), task {spec.slug}{matched}, seed "
                    f"{choices.seed}, {mode}")
    return Devices(arm=arm, camera=camera, kinematics=arm.kin, planner=planner, expert=expert, clock=world.clock,
                   T_base_cam=camera.T_base_cam, workspace=workspace(), success=success, abort=abort, notes=notes,
                   closers=closers, time_limit_s=spec.max_seconds,
                   anchor_depth_error=anchor_depth_error, on_guidance=None if push is None else push.on_guidance,
                   events=events), instruction


def _real_devices(cfg, choices, planner_name, expert_name, notes, closers):
    from ..clock import MonotonicClock
    from ..kernels import WorkspaceBox

    # 1. without hardware: names, options, kinematics, calibration, then the planner and the expert load
    if cfg.arm.driver not in ARM_DRIVERS:
        raise ConfigError(f"arm.driver: unknown driver {cfg.arm.driver!r}; expected sim or one of {sorted(ARM_DRIVERS)}")
    if cfg.camera.driver not in CAMERA_DRIVERS:
        raise ConfigError(f"camera.driver: unknown driver {cfg.camera.driver!r}; expected one of {sorted(CAMERA_DRIVERS)}")
    kin_opts = dict(cfg.kinematics)
    if "urdf" in kin_opts and not Path(kin_opts["urdf"]).is_absolute() and not Path(kin_opts["urdf"]).is_file():
        kin_opts["urdf"] = str(ROBOTS_DIR / kin_opts["urdf"])  # shipped robot descriptions by relative name
    kin = _make_kinematics(kin_opts)
    if kin.n_joints != cfg.limits.n_joints:
        raise ConfigError(f"limits: {cfg.limits.n_joints} joints, but the kinematics chain has {kin.n_joints}")
    arm_spec, arm_opts = ARM_DRIVERS[cfg.arm.driver], dict(cfg.arm.options)
    arm_cls, arm_cfg = _driver_config(arm_spec, arm_opts, "arm", "dev")
    nominal = nominal_calibration(arm_cfg)
    if nominal is not None:
        log.warning("%s", nominal)
    camera = _build(CAMERA_DRIVERS[cfg.camera.driver], cfg.camera.options, "camera", "realsense")  # no I/O yet
    planner = make_planner(cfg, planner_name, choices.vlm, None, mmproj=choices.mmproj, notes=notes)
    closers.append(planner.close)
    expert = make_expert(cfg, expert_name, notes)
    closers.append(expert.close)
    # 2. the camera (a missing one fails fast, naming the fix), 3. the arm, unpowered until the loop is ready
    _open(camera, "camera")
    closers.append(camera.disconnect)
    T = np.asarray(cfg.camera.T_base_cam, dtype=np.float64) if cfg.camera.T_base_cam else camera.T_base_cam
    arm_factory = kin_factory = None
    if cfg.loop.isolation == "process":  # the arm is opened in the loop's own process, not here
        arm = None
        arm_factory = functools.partial(_build, arm_spec, arm_opts, "arm", "dev")
        kin_factory = functools.partial(_make_kinematics, kin_opts)
        notes.append("loop: in its own process (arm opened there; chunks and state through shared memory)")
    else:
        arm = arm_cls(arm_cfg)
        _open(arm, "arm")
        closers.append(arm.disconnect)
    p = cfg.perception
    notes.insert(0, f"robot: {cfg.name} ({cfg.arm.driver} arm, {cfg.camera.driver} camera)")
    return Devices(arm=arm, camera=camera, kinematics=kin, planner=planner, expert=expert, clock=MonotonicClock(
        spin_ns=int(cfg.loop.spin_us * 1e3)), T_base_cam=T, workspace=WorkspaceBox.from_bounds(p.crop_min, p.crop_max),
        success=None, notes=notes, closers=closers, arm_factory=arm_factory, kin_factory=kin_factory), choices.task


def _make_kinematics(options: dict):
    from ..drivers.kinematics import Kinematics, KinematicsConfig

    return Kinematics(from_dict(KinematicsConfig, dict(options), prefix="kinematics."))
