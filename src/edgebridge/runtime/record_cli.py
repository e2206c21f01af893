"""``edge-record``: teleoperated demonstrations as a LeRobot data set (LeRobot's ``record``, for edgebridge).

    edge-record --config so101_serial --leader /dev/ttyACM1 --out data/cube --task "put the cube in the tray" \\
        --episodes 20 --episode-time-s 40 --reset-time-s 15
    edge-record --config so101_serial --teleop keyboard --out data/cube --task "put the cube in the tray"
    edge-record --config so101_serial --teleop spacemouse --out data/cube --task "put the cube in the tray"
    edge-record --config sim_panda --teleop scripted --task stack_red_on_blue --episodes 20 --out data/stack

The teleoperation device drives the follower (the setup's arm) through the runtime's joint limiter and
safety layer at the setup's loop rate; every episode is written with its camera video, clouds,
end-effector state and action, and joints (``runtime/teleop.py``, ``docs/teleop.md``). Devices:
``--leader PORT`` (``--teleop leader``): a second servo-bus arm with the follower's joints, torque off,
moved by hand; ``--teleop keyboard``: end-effector steps from this terminal; ``--teleop spacemouse``:
from a 3Dconnexion SpaceMouse (``pyspacemouse``); ``--teleop scripted`` (simulator only): the scripted
demonstrator as a leader, one fresh scene per episode (seeds ``--seed`` ...).

Keys (from the terminal): right arrow ends the episode (or the reset) now, left arrow records the episode
again, Esc stops. ``--no-interactive``: no keys, the fixed times alone (the default when there is no
terminal, and with ``--teleop scripted``). Train on the result with
``python -m edgebridge.train --from-dataset DIR --init shipped``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, from_dict
from ..errors import DeviceFaultError, EdgebridgeError, require
from .config import load_robot_config, with_overrides
from .watchdog import SignalGuard, StopRequest

log = logging.getLogger("edgebridge.record")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DEVICE = 0, 1, 2, 3
TELEOPS = ("leader", "keyboard", "spacemouse", "scripted")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-record", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sim_panda", help="robot setup: a shipped name or a TOML file")
    ap.add_argument("--out", required=True, type=Path, help="the LeRobot data set to write (a new or empty directory)")
    ap.add_argument("--task", default="put_cup_in_tray", help="the task: its instruction (the simulator: a slug "
                                                              "or an instruction naming a scene)")
    ap.add_argument("--teleop", choices=TELEOPS, default=None,
                    help="leader (with --leader PORT), keyboard, spacemouse, scripted (simulator)")
    ap.add_argument("--leader", metavar="PORT", default=None, help="the leader arm's serial port")
    ap.add_argument("--leader-calibration", default=None, metavar="FILE",
                    help="the leader's joint calibration (default: the shipped nominal SO-101 one)")
    ap.add_argument("--leader-protocol", default="feetech", help="the leader's bus protocol (feetech, dynamixel2)")
    ap.add_argument("--port", default=None, help="the follower's serial port (overrides arm.options.port)")
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--episode-time-s", type=float, default=60.0, help="longest episode")
    ap.add_argument("--reset-time-s", type=float, default=None,
                    help="unrecorded teleoperation after each episode to reset the scene (default 10; 0 with "
                         "--teleop scripted, which gets a fresh scene)")
    ap.add_argument("--seed", type=int, default=0, help="simulator: the first episode's scene")
    ap.add_argument("--n-points", type=int, default=1024, help="cloud points per frame (cropped around the goal)")
    ap.add_argument("--vcodec", default=None, help="video codec (libsvtav1, h264, hevc; default LeRobot's)")
    ap.add_argument("--no-interactive", action="store_true", help="no episode keys: the fixed times alone")
    ap.add_argument("--realtime", action="store_true", help="simulator: physics on the wall clock (frames read on "
                    "their own thread, episodes written while the next reset runs, as on a real arm)")
    return ap


def _say(msg: str) -> None:
    print(f"[edge-record] {msg}", flush=True)


def _err(msg: str) -> None:
    print(f"edge-record: {msg}", file=sys.stderr, flush=True)


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, (EdgebridgeError, ConfigError, ImportError, OSError)) else f"{type(e).__name__}: {e}"


def expert_roi():
    """The cloud region of interest of the shipped expert (what fine-tuning it needs), else the default."""
    from .devices import shipped_expert
    from .expert.features import CloudROI

    model = shipped_expert()
    if model is not None and model.with_suffix(".json").is_file():
        roi = CloudROI.from_dict(json.loads(model.with_suffix(".json").read_text()).get("cloud_roi"))
        if roi is not None:
            return roi
    return CloudROI()


def _teleop_device(args, simulated: bool, kin_joints: tuple[str, ...] | None):
    """The persistent teleoperation device (None for the scripted leader, which is built per scene)."""
    from ..drivers import teleop_devices as td

    if args.teleop == "scripted":
        if not simulated:
            raise ConfigError("--teleop scripted replays the simulator's demonstrator; it needs a simulated setup "
                              "(--config sim_panda)")
        return None
    if args.teleop == "keyboard":
        return td.Keyboard(td.KeyboardConfig())
    if args.teleop == "spacemouse":
        return td.SpaceMouse(td.SpaceMouseConfig())
    if simulated:
        raise ConfigError("--leader: a leader arm must have the follower's joints; the simulated Panda has no "
                          "leader arm: use --teleop scripted, keyboard or spacemouse")
    opts = {"port": args.leader, "protocol": args.leader_protocol}
    if args.leader_calibration:
        opts["calibration"] = args.leader_calibration
    leader = td.LeaderArm(from_dict(td.LeaderArmConfig, opts, prefix="leader."))
    if kin_joints is not None and tuple(leader.joint_names) != tuple(kin_joints):
        raise ConfigError(f"--leader: the leader's joints {list(leader.joint_names)} are not the follower's "
                          f"{list(kin_joints)}; give the leader's calibration with --leader-calibration")
    return leader


def _tare(cfg, camera, T):
    if not cfg.camera.depth_tare:
        return None
    from ..calib.depth_tare import DepthTareConfig, estimate_depth_bias

    tare = estimate_depth_bias(camera.read(), T, DepthTareConfig(table_z_m=cfg.camera.table_z_m))
    log.info("depth tare: %s", tare.describe())
    return tare


def _sim_opener(args, cfg, device):
    """Per episode a fresh simulated scene (seed ``--seed + attempt``), with a scripted leader or ``device``."""
    from .devices import RunChoices, build_devices, task_scene
    from .lift import AnchorBounds
    from .teleop import EpisodeSetup, ScriptedLeader

    @contextlib.contextmanager
    def open_episode(index: int, attempt: int):
        seed = args.seed + attempt
        devices, instruction = build_devices(cfg, RunChoices(task=args.task, seed=seed, planner="oracle", expert="ik",
                                                                    sim_realtime=args.realtime))
        try:
            dev = device
            if dev is None:
                bounds = AnchorBounds(cfg.limits.workspace_min, cfg.limits.workspace_max, devices.workspace)
                dev = ScriptedLeader(devices.planner, devices.camera, devices.kinematics, devices.T_base_cam, bounds,
                                     instruction)
            yield EpisodeSetup(devices.arm, devices.camera, devices.kinematics, devices.clock, devices.T_base_cam, dev,
                               instruction, task=task_scene(cfg, args.task) or args.task, seed=seed, success=devices.success,
                               tare=_tare(cfg, devices.camera, devices.T_base_cam))
        finally:
            devices.close()

    return open_episode


def _real_devices(args, cfg, closers: list):
    """The follower, its camera and kinematics, opened once (camera first, the arm last, unpowered)."""
    from ..clock import MonotonicClock
    from .devices import ARM_DRIVERS, CAMERA_DRIVERS, ROBOTS_DIR, _build, nominal_calibration
    from ..drivers.kinematics import Kinematics, KinematicsConfig

    if cfg.arm.driver not in ARM_DRIVERS:
        raise ConfigError(f"arm.driver: unknown driver {cfg.arm.driver!r}; expected sim or one of {sorted(ARM_DRIVERS)}")
    if cfg.camera.driver not in CAMERA_DRIVERS:
        raise ConfigError(f"camera.driver: unknown driver {cfg.camera.driver!r}; expected one of {sorted(CAMERA_DRIVERS)}")
    kin_opts = dict(cfg.kinematics)
    if "urdf" in kin_opts and not Path(kin_opts["urdf"]).is_absolute() and not Path(kin_opts["urdf"]).is_file():
        kin_opts["urdf"] = str(ROBOTS_DIR / kin_opts["urdf"])
    kin = Kinematics(from_dict(KinematicsConfig, kin_opts, prefix="kinematics."))
    if kin.n_joints != cfg.limits.n_joints:
        raise ConfigError(f"limits: {cfg.limits.n_joints} joints, but the kinematics chain has {kin.n_joints}")
    arm = _build(ARM_DRIVERS[cfg.arm.driver], dict(cfg.arm.options), "arm", "dev")
    note = nominal_calibration(getattr(arm, "config", None))
    if note is not None:
        log.warning("%s", note)
    camera = _build(CAMERA_DRIVERS[cfg.camera.driver], dict(cfg.camera.options), "camera", "realsense")
    return kin, arm, camera, MonotonicClock(spin_ns=int(cfg.loop.spin_us * 1e3))


def _open(device, what: str, closers: list) -> None:
    try:
        device.connect()
    except DeviceFaultError:
        raise
    except Exception as e:  # noqa: BLE001 - one line naming the device
        raise DeviceFaultError(f"{what} {getattr(device, 'name', type(device).__name__)}: could not connect: "
                               f"{type(e).__name__}: {e}") from e
    closers.append(device.disconnect)


def _real_opener(args, cfg, device, closers: list):
    """The real setup: devices opened once and kept for every episode (the operator resets the scene)."""
    from .teleop import EpisodeSetup

    kin, arm, camera, clock = _real_devices(args, cfg, closers)
    _open(camera, "camera", closers)
    T = np.asarray(cfg.camera.T_base_cam, np.float64) if cfg.camera.T_base_cam else camera.T_base_cam
    _open(arm, "arm", closers)
    tare = _tare(cfg, camera, T)

    @contextlib.contextmanager
    def open_episode(index: int, attempt: int):
        yield EpisodeSetup(arm, camera, kin, clock, T, device, args.task, task=args.task, seed=index, tare=tare)

    return open_episode, kin


def _interactive(args) -> bool:
    if args.no_interactive or args.teleop == "scripted":
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.teleop is None:
        args.teleop = "leader" if args.leader else None
    if args.teleop is None:
        _err("choose a teleoperation device: --leader PORT, or --teleop keyboard|spacemouse|scripted")
        return EXIT_CONFIG
    if args.teleop == "leader" and not args.leader:
        _err("--teleop leader needs --leader PORT (the leader arm's serial port)")
        return EXIT_CONFIG
    stop = StopRequest()
    with SignalGuard(stop) as guard:
        code = _record(args, stop, guard)
    if stop.is_set() and code in (EXIT_OK, EXIT_FAILED):
        _err(f"stopped by {stop.reason}; the episodes recorded so far are kept")
        return stop.exit_code or 130
    return code


def _record(args, stop: StopRequest, guard: SignalGuard) -> int:
    from ..drivers.teleop_devices import EpisodeEvents, TerminalKeys
    from .episode_record import RecordConfig
    from .teleop import TeleopConfig, TeleopRecorder, record_episodes

    closers: list = []
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        _err(f"--out {args.out}: not an empty directory; record into a new one")
        return EXIT_CONFIG
    try:
        with guard.interrupting():  # nothing moves yet: a signal ends the run at once
            require("pyarrow", "dataset", "edge-record (a LeRobot data set)")
            require("av", "dataset", "edge-record (camera video)")
            cfg = load_robot_config(args.config)
            if args.port:
                cfg = with_overrides(cfg, arm={"options": {**cfg.arm.options, "port": args.port}})
            simulated = cfg.arm.driver == "sim"
            if simulated:  # the oracle plans for the scripted leader; no expert is loaded
                cfg = with_overrides(cfg, planner={"backend": "oracle"}, expert={"backend": "ik"})
            reset = args.reset_time_s if args.reset_time_s is not None else (0.0 if args.teleop == "scripted" else 10.0)
            tcfg = TeleopConfig(episodes=args.episodes, episode_s=args.episode_time_s, reset_s=reset,
                                n_points=args.n_points, cloud_roi=expert_roi(), max_rejections=cfg.loop.max_rejections)
            kw = {"camera": "front"} | ({"vcodec": args.vcodec} if args.vcodec else {})
            record = RecordConfig.from_robot(cfg, **kw)
            every_k = cfg.expert.every_k_ticks
            device = _teleop_device(args, simulated, tuple(cfg.kinematics.get("joint_names", ())) or None)
            if device is not None:
                _open(device, "teleoperation device", closers)
            events = getattr(device, "events", None)
            if events is None:
                if _interactive(args):
                    keys = TerminalKeys()
                    _open(keys, "terminal", closers)
                    events = keys.events
                else:
                    events = EpisodeEvents()
            if simulated:
                opener = _sim_opener(args, cfg, device)
            else:
                opener, _ = _real_opener(args, cfg, device, closers)
            p = cfg.perception
            recorder = TeleopRecorder(args.out, record, tcfg, (p.crop_min, p.crop_max), horizon=cfg.expert.horizon,
                                      meta={"robot": cfg.name, "teleop": args.teleop, "loop_rate_hz": cfg.loop.rate_hz,
                                            "command": "edge-record " + " ".join(sys.argv[1:])})
    except (DeviceFaultError, OSError) as e:
        _close(closers)
        _err(f"could not open the devices: {_describe(e)}")
        return EXIT_DEVICE
    except KeyboardInterrupt:
        _close(closers)
        return stop.exit_code or 130
    except Exception as e:  # configuration, calibration, a missing extra  # noqa: BLE001
        _close(closers)
        _err(f"could not set up the recording: {_describe(e)}")
        return EXIT_CONFIG
    _say(f"{cfg.name}: {args.teleop} teleoperation, loop {cfg.loop.rate_hz:g} Hz, {record.fps:g} frames/s, "
         f"{tcfg.episodes} episode(s) of up to {tcfg.episode_s:g} s, reset {tcfg.reset_s:g} s -> {args.out}")
    t0 = time.perf_counter()
    results = []
    try:
        results = record_episodes(opener, recorder, tcfg, cfg.limits, cfg.loop.rate_hz, every_k, events, stop, say=_say)
    except DeviceFaultError as e:
        _err(f"device fault: {_describe(e)}")
        return EXIT_DEVICE
    finally:
        try:
            recorder.close()
        finally:
            _close(closers)
    kept = [r for r in results if r.index is not None]
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) if args.out.exists() else 0
    ok = [r for r in kept if r.success is not False]
    _say(f"{len(kept)} episode(s) recorded in {time.perf_counter() - t0:.0f} s ({len(ok)} successful), "
         f"{sum(r.frames for r in kept)} frames, {size / 1e6:.1f} MB in {args.out}"
         + (f"; writing took {np.mean(recorder.write_s):.2f} s per episode" if recorder.write_s else ""))
    if kept:
        _say(f"train on it: python -m edgebridge.train --from-dataset {args.out} --init shipped")
    return EXIT_OK if kept else EXIT_FAILED


def _close(closers: list) -> None:
    for fn in reversed(closers):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - close everything
            log.warning("closing a device failed: %s: %s", type(e).__name__, e)
    closers.clear()


if __name__ == "__main__":
    sys.exit(main())
