"""``edge-setup``: what an arm's owner runs once, before ``edge-run`` (LeRobot's find-port, setup-motors and
calibrate are the model).

    edge-setup find-port                                   # unplug the adapter when asked: its port is named
    edge-setup scan --port /dev/ttyACM0 [--protocol feetech|dynamixel2|all] [--baud 1000000] [--json scan.json]
    edge-setup set-id --port /dev/ttyACM0 --id 3 [--from 1] [--baud 1000000] [--to-baud 1000000]
    edge-setup set-mode --port /dev/ttyACM0 --protocol dynamixel2 --ids 1-6 --mode 4 [--baud 1000000]
    edge-setup calibrate --config so101_serial [--port P] [--arm-id my_arm] [--out my_arm.toml]
    edge-setup check-arm --config so101_serial [--port P | --host H] [--json check.json]

``--yes`` asks nothing (find-port: waits up to ``--wait`` s for a port to go; calibrate: reads the zero
pose at once, then records the ranges for ``--sweep-s`` s). ``check-arm`` opens the arm through the
runtime's driver registry, as ``edge-run`` does, enables it, moves each joint a small step and back
through the setup's safety limits and reports per joint tracking error, command-to-state lag and faults
(``drivers.setup_check``); torque is off and the arm disconnected at the end, whatever failed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..errors import DeviceFaultError, EdgebridgeError
from . import setup_ports
from .servo_protocol import PROTOCOLS
from .servo_setup import COMMON_BAUDRATES
from .setup_args import build_parser
from .setup_servos import SetupRefused

log = logging.getLogger("edgebridge.setup")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DEVICE = 0, 1, 2, 3
MAX_DEFAULT_RATE_HZ = 100.0  # check-arm's default rate: the setup's, at most this (a slow step needs no more,
# and a 500 Hz Python loop on a shared CPU starves libfranka's own 1 kHz thread: measured on franky-sim)
WORKSPACE_HINT = ("move the arm by hand (torque off) until the end effector is inside the box, or pass "
                  "--ignore-workspace to check the joints from where they are")


def ask(text: str) -> str:
    """Ask the owner (the tests replace this)."""
    return input(f"{text} ")


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("y", "yes")


def _console():
    from rich.console import Console

    return Console()


def _err(msg: str) -> None:
    print(" ".join(f"edge-setup: {msg}".split()), file=sys.stderr, flush=True)


def _write_json(path: str | None, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- find-port


def cmd_find_port(args) -> int:
    con = _console()
    before = setup_ports.list_ports()
    setup_ports.render_ports(before, con)
    result = {"ports": [p.to_dict() for p in before], "removed": [], "port": None}
    if args.list:
        _write_json(args.json, result)
        return EXIT_OK
    if not before:
        _err("no serial ports to tell apart: plug in the arm's USB adapter (and check dmesg for it), then run "
             "find-port again")
        _write_json(args.json, result)
        return EXIT_FAILED
    if args.yes:
        con.print(f"waiting up to {args.wait:g} s for a port to go away (unplug the arm's USB adapter)")
        gone = setup_ports.find_removed(setup_ports.list_ports, before, args.wait)
    else:
        ask("Unplug the arm's USB adapter from this computer, then press Enter")
        gone = setup_ports.find_removed(setup_ports.list_ports, before, 2.0)  # udev may take a moment
    result["removed"] = [p.to_dict() for p in gone]
    if len(gone) == 1:
        result["port"] = gone[0].device
        con.print(f"The arm's port is [bold]{gone[0].device}[/bold] ({gone[0].description}). Plug the adapter "
                  f"back in; set it as arm.options.port, or pass --port {gone[0].device}.")
        _write_json(args.json, result)
        return EXIT_OK
    _write_json(args.json, result)
    if gone:
        _err(f"{len(gone)} ports went away ({', '.join(p.device for p in gone)}): unplug only the arm's adapter "
             f"and run find-port again")
    else:
        _err("no port went away: unplug the arm's USB adapter (not the servo power), wait a second, and run "
             "find-port again")
    return EXIT_FAILED


# --------------------------------------------------------------------------- scan / set-id


def _protocols(name: str) -> list[str]:
    return list(PROTOCOLS) if name == "all" else [name]


def cmd_scan(args) -> int:
    from .setup_servos import parse_ids, render_scans, scan_port, scans_to_dict

    con = _console()
    ids = parse_ids(args.ids)
    with con.status("scanning") as status:
        scans = scan_port(args.port, _protocols(args.protocol), args.baud or COMMON_BAUDRATES, ids,
                          progress=lambda p, b: status.update(f"scanning {args.port}: {p} at {b} baud"))
    _write_json(args.json, scans_to_dict(scans))
    if not any(s.servos or s.garbled for s in scans):
        _err(f"nothing answered on {args.port} ({args.protocol}, {args.baud or 'every common baud rate'}); check "
             f"the servo power supply (the USB cable alone does not power the servos), the bus cable and the port")
        return EXIT_FAILED
    render_scans(scans, args.port, con)
    return EXIT_OK


def cmd_set_id(args) -> int:
    from .setup_servos import assign_id, only_servo, scan_port

    con = _console()
    with con.status("scanning") as status:
        scans = scan_port(args.port, _protocols(args.protocol), args.baud or COMMON_BAUDRATES,
                          progress=lambda p, b: status.update(f"looking for the servo on {args.port}: {p} at {b} baud"))
    scan, old = only_servo(scans, args.port)
    if args.from_id is not None and old != args.from_id:
        raise SetupRefused(f"the servo on {args.port} answers at id {old}, not at --from {args.from_id}; connect the "
                       f"servo you mean, or leave --from out")
    to_baud = args.to_baud if args.to_baud != scan.baudrate else None
    if old == args.id and to_baud is None:
        con.print(f"servo {old} ({scan.model_name(old)}) already has id {args.id}")
        return EXIT_OK
    what = f"id {old} -> {args.id}" + (f", {scan.baudrate} -> {to_baud} baud" if to_baud else "")
    if not args.yes and not _yes(ask(f"{scan.model_name(old)} servo on {args.port}: {what}? [y/N]")):
        con.print("nothing changed")
        return EXIT_FAILED
    assign_id(args.port, scan, old, args.id, to_baud)
    con.print(f"servo {scan.model_name(old)} on {args.port}: {what} (stored in its EEPROM). Label it, then "
              f"connect the next one.")
    return EXIT_OK


def cmd_set_mode(args) -> int:
    from .setup_servos import parse_ids, set_operating_mode

    ids = parse_ids(args.ids)
    if ids is None:
        raise ValueError("--ids: name the servos, e.g. 1-6")
    done = set_operating_mode(args.port, args.protocol, args.baud, ids, args.mode)
    _console().print(f"Operating_Mode {args.mode} on {args.port}: " +
                     ", ".join(f"servo {sid} ({m})" for sid, m in done.items()))
    return EXIT_OK


# --------------------------------------------------------------------------- setup, arm


def _setup(args):
    """The robot setup with --port / --host applied; the driver's class and validated config."""
    from ..runtime import devices
    from ..runtime.config import load_robot_config

    cfg = load_robot_config(args.config)
    if cfg.arm.driver not in devices.ARM_DRIVERS:
        raise ConfigError(f"{cfg.name}: arm.driver {cfg.arm.driver!r} is not a real arm (known: "
                          f"{', '.join(sorted(devices.ARM_DRIVERS))}); edge-setup sets up real arms")
    opts = dict(cfg.arm.options)
    for key in ("port", "host"):
        if getattr(args, key, None):
            opts[key] = getattr(args, key)
    spec = devices.ARM_DRIVERS[cfg.arm.driver]
    cls, arm_cfg = devices._driver_config(spec, opts, "arm", "dev")
    return cfg, spec, cls, arm_cfg


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _open_arm(cls, arm_cfg):
    from ..runtime.devices import _open

    arm = cls(arm_cfg)
    _open(arm, "arm")
    return arm


# --------------------------------------------------------------------------- calibrate


def cmd_calibrate(args) -> int:
    from .arm_calibration import ArmCalibration
    from .serial_arm import ROBOTS_DIR, SerialArm
    from .setup_calibrate import LiveRanges, calibrate, render_calibration

    cfg, _, cls, arm_cfg = _setup(args)
    if not issubclass(cls, SerialArm):
        raise ConfigError(f"{cfg.name}: calibrate records servo-arm calibrations; arm.driver {cfg.arm.driver!r} "
                          f"calibrates itself (its controller knows its joint angles): run check-arm instead")
    template_path = Path(arm_cfg.calibration)
    shipped = template_path.resolve().is_relative_to(ROBOTS_DIR.resolve())
    template = ArmCalibration.load(template_path)
    if args.out:
        target = Path(args.out)
    elif not shipped:
        target = template_path
    else:
        target = Path.cwd() / "calibration" / f"{args.arm_id or cfg.name}.toml"
    arm_id = args.arm_id or (template.arm_id if target == template_path else target.stem)
    con = _console()
    con.print(f"calibrating arm {arm_id!r} ({cfg.name}, {template.protocol} servos {list(template.all_ids)} on "
              f"{arm_cfg.port}); template {template_path.name}; writing {target}")
    if target.exists() and not args.yes and not _yes(ask(f"{target} exists; overwrite it (the old one is kept as "
                                                         f".bak)? [y/N]")):
        con.print("nothing written")
        return EXIT_FAILED
    live = LiveRanges(template, con) if con.is_terminal and not args.yes else None
    with _open_arm(cls, arm_cfg) as arm:  # disconnecting turns torque off on every servo, whatever failed
        try:
            cal = calibrate(arm, arm_id, prompt=None if args.yes else ask, sweep_s=args.sweep_s,
                            say=lambda m: con.print(m), on_sample=live)
        except ConfigError as e:  # a joint not swept, a range across the zero tick: do it again
            raise SetupRefused(str(e)) from e
        finally:
            if live is not None:
                live.stop()
    if target.exists():
        target.with_name(target.name + ".bak").write_bytes(target.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    cal.save(target)
    render_calibration(cal, con)
    con.print(f"wrote {target}")
    if target.resolve() != template_path.resolve():
        con.print(f'set arm.options.calibration = "{target.resolve()}" in the setup {cfg.name} to use it')
    return EXIT_OK


# --------------------------------------------------------------------------- check-arm


def cmd_check_arm(args) -> int:
    from ..runtime import devices
    from ..runtime.safety import JointLimiter, SafetyLayer
    from .setup_check import CheckSettings, check_joints, render

    cfg, _, cls, arm_cfg = _setup(args)
    notes = []
    fields = {f.name for f in dataclasses.fields(arm_cfg)}
    if "host" in fields and getattr(arm_cfg, "realtime", False) and _is_loopback(arm_cfg.host):
        arm_cfg = dataclasses.replace(arm_cfg, realtime=False)
        notes.append(f"{arm_cfg.host} is this machine, so a simulator: realtime = false for this check")
    if "disable_torque_on_disconnect" in fields:
        arm_cfg = dataclasses.replace(arm_cfg, disable_torque_on_disconnect=True)
    nominal = devices.nominal_calibration(arm_cfg)
    if nominal:
        notes.append(nominal)
    kin_opts = dict(cfg.kinematics)
    if "urdf" in kin_opts and not Path(kin_opts["urdf"]).is_absolute() and not Path(kin_opts["urdf"]).is_file():
        kin_opts["urdf"] = str(devices.ROBOTS_DIR / kin_opts["urdf"])
    kin = devices._make_kinematics(kin_opts)
    rate = args.rate or min(cfg.loop.rate_hz, MAX_DEFAULT_RATE_HZ)
    settings = CheckSettings(step_rad=args.step, speed_rad_s=args.speed, settle_s=args.settle,
                             tolerance_rad=args.tolerance, rate_hz=rate)
    lim = cfg.limits
    slow = dataclasses.replace(lim, joint_velocity=tuple(min(v, args.speed) for v in lim.joint_velocity),
                               joint_acceleration=tuple(min(a, 10.0 * args.speed) for a in lim.joint_acceleration))
    if args.ignore_workspace:
        notes.append("--ignore-workspace: the workspace box is not checked")
    safety = SafetyLayer(lim, 1.0 / rate, fk=None if args.ignore_workspace else kin.fk)
    limiter = JointLimiter(slow, 1.0 / rate)
    arm = _open_arm(cls, arm_cfg)
    lower, upper = np.asarray(lim.joint_lower), np.asarray(lim.joint_upper)
    calib = getattr(arm, "calibration", None)
    if calib is not None and hasattr(calib, "joint_limits"):  # a servo arm clips to its calibrated range too
        lo, hi = calib.joint_limits()
        lower, upper = np.maximum(lower, lo), np.minimum(upper, hi)
    names = tuple(cfg.kinematics.get("joint_names") or getattr(arm, "joint_names", ())) or \
        tuple(f"joint{i + 1}" for i in range(lim.n_joints))
    report = None
    errors = []
    try:
        enable = getattr(arm, "enable", None)
        if enable is not None:
            enable()
        report = check_joints(arm, names, lower, upper, safety, limiter, settings,
                              label=f"{cfg.name} ({getattr(arm, 'name', cfg.arm.driver)})",
                              hints={"workspace": WORKSPACE_HINT})
    except (DeviceFaultError, EdgebridgeError, OSError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        try:
            arm.hold()
        except Exception as e:  # noqa: BLE001 - reported; the disconnect below still runs
            errors.append(f"hold at the end: {e}")
        try:
            arm.disconnect()  # a servo arm: torque off on every servo; Franka: the motion ends, the robot holds
        except Exception as e:  # noqa: BLE001
            errors.append(f"disconnect: {e}")
    if report is None:
        from .setup_check import CheckReport

        report = CheckReport(cfg.name, settings)
    report.errors += errors
    report.notes += notes
    render(report, _console())
    _write_json(args.json, {"config": cfg.name, "driver": cfg.arm.driver, **report.to_dict()})
    return EXIT_OK if report.passed else EXIT_FAILED


# --------------------------------------------------------------------------- main


COMMANDS = {"find-port": cmd_find_port, "scan": cmd_scan, "set-id": cmd_set_id, "set-mode": cmd_set_mode,
            "calibrate": cmd_calibrate, "check-arm": cmd_check_arm}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError) as e:
        _err(str(e))
        return EXIT_CONFIG
    except SetupRefused as e:
        _err(str(e))
        return EXIT_FAILED
    except DeviceFaultError as e:
        _err(str(e))
        return EXIT_DEVICE
    except EdgebridgeError as e:  # a missing extra, and the like
        _err(f"{type(e).__name__}: {e}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
