"""Franka joint tracking through ``FrankaArm`` against franky-sim (a simulated FR3 speaking libfranka's protocol).

Streams a 0.3 Hz joint sinusoid (amplitude ``--amp`` rad on every joint, eased in over 1 s) through
``FrankaArm.command`` at 100 and 500 Hz on absolute deadlines, reading ``FrankaArm.state`` each tick, in both
command modes: ``impedance`` (a JointImpedanceTracker gets each target and its velocity) and ``motion``
(an asynchronous JointMotion aimed 0.1 s ahead, re-issued at most every 20 ms; ``motion_every_tick``:
re-issued on every command). The error is measured minus reference joints at the time of the state read,
RMS over all joints after the ease-in.

Baseline, measured in the same run: ``motion`` without lookahead or target velocity (each JointMotion aims
to stop at the latest target: what re-issuing motions naively does); ratios are baseline RMS / mode RMS. A fault
(a reflex, or franky's motion planner refusing a target) is counted, recovered with ``resume()`` and the
stream goes on. The simulator's own pacing is
reported too (its real-time factor and ticks run over 1 ms late): the figures are only as good as its clock.

The server runs in a child process (tests/drivers/franka_sim_server.py) on a free loopback address and is
ended, ports freed, before the script exits.

    python benchmarks/arm_tracking.py --seconds 10 --json benchmarks/results/arm_tracking.json
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

os.environ.setdefault("COLUMNS", "160")  # the table is wide; rich reads COLUMNS when not on a terminal
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "drivers"))
from _common import add_json_arg, fmt_ratio, machine_line, print_table, ratio, write_json  # noqa: E402

from edgebridge.contracts import ArmCommand  # noqa: E402
from edgebridge.errors import DeviceFaultError  # noqa: E402
from edgebridge.drivers.franka import FrankaArm, FrankaArmConfig  # noqa: E402

RUNTIME_PATHS = ["edgebridge.drivers.franka:FrankaArm.command", "edgebridge.drivers.franka:FrankaArm.state"]
FREQ_HZ = 0.3
EASE_S = 1.0
CHOSEN = "impedance"  # FrankaArmConfig's default command mode
CASES = {  # name -> FrankaArmConfig overrides
    "impedance": {"command_mode": "impedance"},
    "motion": {"command_mode": "motion"},
    "motion_every_tick": {"command_mode": "motion", "motion_reissue_s": 0.0},  # why motion_reissue_s exists
    "baseline": {"command_mode": "motion", "lookahead_s": 0.0, "velocity_feedforward": False},  # every 20 ms
}


def reference(q0: np.ndarray, t: float, amp: float) -> np.ndarray:
    ease = 0.5 - 0.5 * np.cos(np.pi * min(t / EASE_S, 1.0))
    return q0 + ease * amp * np.sin(2 * np.pi * FREQ_HZ * t)


def track(host: str, case: str, rate_hz: float, seconds: float, amp: float) -> dict:
    """One streaming run on a fresh connection; errors in mrad, call times in ms."""
    cfg = FrankaArmConfig(host=host, realtime=False, gripper=False, **CASES[case])
    period = 1.0 / rate_hz
    errs, t_state, t_cmd, late, faults, measure_from = [], [], [], 0, [], EASE_S
    with FrankaArm(cfg) as arm:
        q0 = arm.state().joints.copy()
        t0 = t_next = time.monotonic()
        while (t := time.monotonic() - t0) < seconds:
            q_cmd = reference(q0, t + period, amp)
            try:
                a = time.perf_counter()
                st = arm.state()
                b = time.perf_counter()
                arm.command(ArmCommand(q_cmd, 1.0))
                c = time.perf_counter()
            except DeviceFaultError as e:  # counted, recovered, and the stream goes on
                faults.append(str(e))
                logging.warning("%s at %.0f Hz, t = %.2f s: %s", case, rate_hz, t, e)
                arm.resume()
                t_next, measure_from = time.monotonic(), t + 1.0  # the recovery's transient is not tracking
                continue
            if t > measure_from:
                errs.append(st.joints - reference(q0, t, amp))
            t_state.append(b - a)
            t_cmd.append(c - b)
            t_next += period
            wait = t_next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -period / 2:
                late += 1
        q_end = q_cmd
        for k in range(1, int(rate_hz) + 1):  # back to the start over 1 s, eased: the next run starts there
            s = 0.5 - 0.5 * np.cos(np.pi * k / rate_hz)
            arm.command(ArmCommand(q_end + s * (q0 - q_end), 1.0))
            time.sleep(period)
        arm.hold()
    e = np.asarray(errs) * 1e3
    return {"rms_mrad": float(np.sqrt(np.mean(e ** 2))), "max_mrad": float(np.abs(e).max()),
            "state_p50_ms": float(np.median(t_state) * 1e3), "state_p99_ms": float(np.percentile(t_state, 99) * 1e3),
            "command_p50_ms": float(np.median(t_cmd) * 1e3), "command_p99_ms": float(np.percentile(t_cmd, 99) * 1e3),
            "late_ticks": late, "ticks": len(t_cmd), "faults": len(faults)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per run, ease-in included (default 10)")
    ap.add_argument("--amp", type=float, default=0.2, help="sinusoid amplitude per joint, rad (default 0.2)")
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.seconds <= EASE_S + 1:
        ap.error(f"--seconds must exceed {EASE_S + 1:g} (ease-in plus at least 1 s measured)")
    logging.basicConfig(level=logging.WARNING)
    try:
        importlib.import_module("franky_sim")  # the server's simulator: fail here, not in its child
        from franka_sim_server import SimServer
    except ImportError as e:
        print(f"arm_tracking: needs franky-control and franky-sim ({e}); pip install 'edgebridge[franka,dev]'")
        return 2

    results: dict[tuple[str, float], dict] = {}
    srv = SimServer()
    srv.start()
    try:
        for rate in args.rates:
            for case in CASES:
                results[case, rate] = r = track(srv.host, case, rate, args.seconds, args.amp)
                print(f"{case:17s} {rate:5.0f} Hz: {r['rms_mrad']:.2f} mrad RMS", flush=True)
    finally:
        sim = srv.stop() or {}

    flat: dict = {"franka_mode": CHOSEN, "franka_amp_rad": args.amp, "franka_freq_hz": FREQ_HZ,
                  "franka_seconds": args.seconds, "franka_sim_realtime_factor": sim.get("realtime_factor"),
                  "franka_sim_late_tick_fraction": sim["late_ticks"] / sim["ticks"] if sim.get("ticks") else None}
    rows = []
    for (case, rate), r in results.items():
        hz = f"{rate:.0f}hz"
        base = results[("baseline", rate)]["rms_mrad"]
        flat[f"franka_track_rms_mrad_{case}_{hz}"] = r["rms_mrad"]
        flat[f"franka_track_max_mrad_{case}_{hz}"] = r["max_mrad"]
        flat[f"franka_state_p50_ms_{case}_{hz}"] = r["state_p50_ms"]
        flat[f"franka_command_p50_ms_{case}_{hz}"] = r["command_p50_ms"]
        flat[f"franka_command_p99_ms_{case}_{hz}"] = r["command_p99_ms"]
        flat[f"franka_late_ticks_{case}_{hz}"] = r["late_ticks"]
        flat[f"franka_faults_{case}_{hz}"] = r["faults"]
        if case == CHOSEN:
            flat[f"franka_track_rms_mrad_{hz}"] = r["rms_mrad"]
            flat[f"franka_track_vs_baseline_{hz}"] = ratio(base, r["rms_mrad"])
        rows.append([case, f"{rate:.0f}", f"{r['rms_mrad']:.2f}", f"{r['max_mrad']:.1f}",
                     fmt_ratio(ratio(base, r["rms_mrad"])),
                     f"{r['state_p50_ms']:.3f}", f"{r['command_p50_ms']:.3f}", f"{r['command_p99_ms']:.3f}",
                     f"{r['late_ticks']}/{r['ticks']}", r["faults"]])
    late = 100 * (flat["franka_sim_late_tick_fraction"] or 0)
    caption = (f"{machine_line()}; {args.seconds:g} s per run, {args.amp:g} rad at {FREQ_HZ:g} Hz on all 7 joints; "
               f"vs baseline = baseline RMS / RMS (re-issued motions to stop at each target); franky-sim "
               f"real-time factor {sim.get('realtime_factor', float('nan')):.3f}, {late:.1f} % of its 1 ms ticks late")
    print_table("Franka joint tracking through FrankaArm (franky-sim FR3)",
                ["mode", "Hz", "RMS mrad", "max mrad", "vs baseline", "state p50 ms", "command p50 ms",
                 "command p99 ms", "late ticks", "faults"], rows, caption)
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
