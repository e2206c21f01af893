"""The arm and camera of a robot setup, opened for a calibration session (``edge-calib collect``).

Built with the runtime's own device factory (``runtime.devices``), so the drivers, options and start-up
checks are the ones ``edge-run`` uses, but without a planner or an expert:

- the simulated setup (``arm.driver = "sim"``): the world of ``task`` and ``seed`` exactly as an episode
  builds it (same scene, same jittered camera), with a ChArUco board mounted on the gripper
  (``SimArm.attach_board``: a textured plane the camera renders);
- a real setup: the camera first, then the arm (connected, unpowered until the session moves it).

``capture_size`` (width, height) asks for a larger colour stream while calibrating: the sim camera renders at
that size; a driver whose options have ``width`` / ``height`` (RealSense) is opened with them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..clock import MonotonicClock
from ..config import ConfigError
from .board import BoardConfig
from .collect import Rig


def open_rig(setup: str | Path, board: BoardConfig, *, seed: int = 0, task: str = "put_cup_in_tray",
             capture_size: tuple[int, int] | None = None) -> Rig:
    """Open the arm and camera of ``setup`` (a file or a shipped setup name); close with ``Rig.close()``."""
    from ..runtime.config import load_robot_config

    cfg = load_robot_config(setup)
    if cfg.arm.driver == "sim":
        return _sim_rig(cfg, board, seed, task, capture_size)
    return _real_rig(cfg, capture_size)


def _sim_rig(cfg, board: BoardConfig, seed: int, task: str, capture_size) -> Rig:
    from ..runtime.devices import RunChoices, build_devices

    dev, _ = build_devices(cfg, RunChoices(task=task, seed=seed, planner="oracle", expert="ik"))
    rig = Rig(arm=dev.arm, camera=dev.camera, kinematics=dev.kinematics, limits=cfg.limits, clock=dev.clock,
              rate_hz=cfg.loop.rate_hz, camera_name=f"sim:{task}:seed{seed}", setup=cfg.name,
              notes=[f"simulated world of {task}, seed {seed}; board on the gripper"], closers=[dev.close])
    try:
        dev.arm.attach_board(board)
        if capture_size is not None:
            dev.camera.set_resolution(*capture_size)
    except BaseException:
        rig.close()
        raise
    return rig


def _real_rig(cfg, capture_size) -> Rig:
    from ..runtime import devices as dv

    if cfg.arm.driver not in dv.ARM_DRIVERS:
        raise ConfigError(f"arm.driver: unknown driver {cfg.arm.driver!r}; expected sim or one of {sorted(dv.ARM_DRIVERS)}")
    if cfg.camera.driver not in dv.CAMERA_DRIVERS:
        raise ConfigError(f"camera.driver: unknown driver {cfg.camera.driver!r}; expected one of "
                          f"{sorted(dv.CAMERA_DRIVERS)}")
    kin_opts = dict(cfg.kinematics)
    if "urdf" in kin_opts and not Path(kin_opts["urdf"]).is_absolute() and not Path(kin_opts["urdf"]).is_file():
        kin_opts["urdf"] = str(dv.ROBOTS_DIR / kin_opts["urdf"])  # shipped robot descriptions by relative name
    kin = dv._make_kinematics(kin_opts)
    if kin.n_joints != cfg.limits.n_joints:
        raise ConfigError(f"limits: {cfg.limits.n_joints} joints, but the kinematics chain has {kin.n_joints}")
    cam_spec = dv.CAMERA_DRIVERS[cfg.camera.driver]
    cam_opts = dict(cfg.camera.options)
    if capture_size is not None:
        cam_cls, cam_cfg = dv._driver_config(cam_spec, cam_opts, "camera", "realsense")
        names = {f.name for f in dataclasses.fields(cam_cfg)}
        if not {"width", "height"} <= names:
            raise ConfigError(f"--capture-size: camera driver {cfg.camera.driver!r} has no width/height options; "
                              f"drop --capture-size")
        cam_opts.update(width=int(capture_size[0]), height=int(capture_size[1]))
    camera = dv._build(cam_spec, cam_opts, "camera", "realsense")
    arm = dv._build(dv.ARM_DRIVERS[cfg.arm.driver], dict(cfg.arm.options), "arm", "dev")
    serial = cam_opts.get("serial")
    rig = Rig(arm=arm, camera=camera, kinematics=kin, limits=cfg.limits,
              clock=MonotonicClock(spin_ns=int(cfg.loop.spin_us * 1e3)), rate_hz=cfg.loop.rate_hz,
              camera_name=f"{cfg.camera.driver}:{serial}" if serial else cfg.camera.driver, setup=cfg.name)
    try:
        dv._open(camera, "camera")
        rig.closers.append(camera.disconnect)
        dv._open(arm, "arm")
        rig.closers.append(arm.disconnect)
    except BaseException:
        rig.close()
        raise
    return rig
