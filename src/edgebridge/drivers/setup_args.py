"""The command line of ``edge-setup`` (``setup_cli``): subcommands, options and their help."""

from __future__ import annotations

import argparse

from .servo_protocol import PROTOCOLS

EXIT_CODES = """exit codes:
  0    done (check-arm: every joint passed)
  1    not done: no port went away, no servo or several answered, a joint failed its check
  2    bad arguments or configuration (setup file, calibration, a missing extra)
  3    a device could not be opened or faulted (port busy or gone, servo silent)"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-setup", description="Set up a robot arm once: find its port, scan "
                                 "and number its servos, calibrate it, check it.", epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("find-port", help="which serial port is the arm's (unplug it when asked)")
    p.add_argument("--list", action="store_true", help="only list the ports")
    p.add_argument("--yes", action="store_true", help="ask nothing: wait up to --wait s for a port to go away")
    p.add_argument("--wait", type=float, default=10.0, help="--yes: seconds to wait (default 10)")
    p.add_argument("--json", default=None, help="write the ports and the one that went away to this file")

    protocols = ["all", *PROTOCOLS]
    p = sub.add_parser("scan", help="what servos answer on a port: ids, models, baud rate, protocol")
    p.add_argument("--port", required=True)
    p.add_argument("--protocol", choices=protocols, default="all")
    p.add_argument("--baud", type=int, nargs="+", default=None, help="baud rate(s) to try (default: the common ones)")
    p.add_argument("--ids", default=None, help="ids to ping, e.g. 1-6,10 (default: every id)")
    p.add_argument("--json", default=None, help="write what answered to this file")

    p = sub.add_parser("set-id", help="give the one connected servo a new id (one servo at a time)")
    p.add_argument("--port", required=True)
    p.add_argument("--id", type=int, required=True, help="the new id")
    p.add_argument("--from", dest="from_id", type=int, default=None, help="refuse unless the servo answers at this id")
    p.add_argument("--protocol", choices=protocols, default="all")
    p.add_argument("--baud", type=int, nargs="+", default=None,
                   help="baud rate(s) to look at (default: the common ones)")
    p.add_argument("--to-baud", type=int, default=None, help="also switch the servo to this baud rate")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("set-mode", help="set the servos' Operating_Mode (a position mode; torque off first)")
    p.add_argument("--port", required=True)
    p.add_argument("--protocol", choices=list(PROTOCOLS), required=True)
    p.add_argument("--ids", required=True, help="servo ids, e.g. 1-6")
    p.add_argument("--mode", type=int, required=True, help="Dynamixel X: 3 position, 4 extended position, 5 "
                   "current-based position; Feetech: 0")
    p.add_argument("--baud", type=int, default=1_000_000, help="the servos' baud rate (default 1000000)")

    p = sub.add_parser("calibrate", help="record a servo arm's calibration file (torque off, by hand)")
    p.add_argument("--config", required=True, help="robot setup: a TOML file or a shipped name")
    p.add_argument("--port", default=None, help="the arm's serial port (default: arm.options.port)")
    p.add_argument("--arm-id", default=None, help="the arm's name in the file (default: the file's or the setup's)")
    p.add_argument("--out", default=None, help="calibration file to write (default: the setup's own calibration "
                   "file, or ./calibration/<arm-id>.toml when the setup uses a shipped one)")
    p.add_argument("--yes", action="store_true", help="ask nothing: zero pose read at once, ranges for --sweep-s")
    p.add_argument("--sweep-s", type=float, default=10.0, help="--yes: seconds to record the ranges (default 10)")

    p = sub.add_parser("check-arm", help="move each joint a small step and back; report tracking, lag, faults")
    p.add_argument("--config", required=True, help="robot setup: a TOML file or a shipped name")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", default=None, help="a servo arm's serial port (arm.options.port)")
    where.add_argument("--host", default=None, help="a Franka's controller address (arm.options.host)")
    p.add_argument("--step", type=float, default=0.05, help="rad each joint moves (default 0.05)")
    p.add_argument("--speed", type=float, default=0.2, help="top joint speed, rad/s (default 0.2)")
    p.add_argument("--settle", type=float, default=0.3, help="seconds held at each end (default 0.3)")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest final error that passes, rad (default 0.02)")
    p.add_argument("--rate", type=float, default=None, help="control rate, Hz (default: the setup's "
                   "loop.rate_hz, at most 100)")
    p.add_argument("--ignore-workspace", action="store_true", help="do not check the workspace box (joint, velocity "
                   "and acceleration limits still hold)")
    p.add_argument("--json", default=None, help="write the per-joint results to this file")
    return ap
