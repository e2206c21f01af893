"""Servo-bus control cycle: ``SerialArm.state()`` + ``command()`` on 6 servos, wire time emulated.

The arm talks to the byte-level bus emulators of the tests (``tests/drivers/feetech_bus_emulator.py``:
SO-101 on Feetech STS3215; ``tests/drivers/dynamixel_bus_emulator.py``: Koch v1.1 on Dynamixel 2.0) over
a pseudo-terminal; the emulator holds every packet on the line for ``bytes * 10 / baud`` seconds, as a
1 Mbaud bus does (no USB-adapter latency, no servo return delay). One cycle = ``state()`` then
``command()`` with ``max_relative_target_rad`` set, as ``edge-run`` drives a serial arm.

Rows: the driver's cycle (one SYNC_READ + one SYNC_WRITE); the baseline, measured in the same run on the
same emulator: the former command path, which read the present position once per joint (``state()`` +
5 SYNC_READs + 1 SYNC_WRITE); and the floor, the wire time of one SYNC_READ + answers + SYNC_WRITE alone.

    python benchmarks/servo_bus.py --json benchmarks/results/servo_bus.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "drivers"))
from _common import add_json_arg, fmt_ms, fmt_ratio, machine_line, print_table, ratio, time_call, write_json  # noqa: E402

from edgebridge.contracts import ArmCommand  # noqa: E402
from edgebridge.drivers.serial_arm import SerialArm, SerialArmConfig  # noqa: E402

RUNTIME_PATHS = ["edgebridge.drivers.serial_arm:SerialArm.state", "edgebridge.drivers.serial_arm:SerialArm.command"]
BAUD = 1_000_000


def wire_floor_ms(arm: SerialArm) -> float:
    """Wire time of one cycle's packets: SYNC_READ request + one answer per servo + SYNC_WRITE."""
    p, ids = arm.bus.protocol, arm.calibration.all_ids
    addr, size = arm.bus.model.register("Present_Position")
    read = len(p.instruction(p.broadcast_id, p.INST_SYNC_READ, p.sync_read_params(addr, size, list(ids))))
    answers = len(ids) * p.status_size(size)
    write = len(p.instruction(p.broadcast_id, p.INST_SYNC_WRITE,
                              p.sync_write_params(addr, size, [(i, bytes(size)) for i in ids])))
    return (read + answers + write) * 10 / BAUD * 1e3


def measure(emulator_cls, cycles: int, label: str, **arm_kw) -> dict:
    with emulator_cls(baudrate=BAUD, speed=0.0) as emu:
        # a generous timeout: on a loaded machine the emulator thread may be descheduled for tens of ms
        arm = SerialArm(SerialArmConfig(port=emu.port, timeout_s=0.5, retries=1, max_relative_target_rad=0.2,
                                        **arm_kw))
        with arm:
            arm.hold()
            cal = arm.calibration
            cmd = ArmCommand(joints=np.zeros(arm.n_joints), gripper=0.5)

            def cycle():
                arm.state()
                arm.command(cmd)

            def per_joint_reads():  # the former command(): one SYNC_READ of all servos per joint
                arm.state()
                [arm.bus.sync_read("Present_Position", cal.all_ids)[i] for i in cal.joint_ids]
                arm.bus.sync_write("Goal_Position", {i: 2048 for i in cal.all_ids})

            new = time_call(cycle, repeats=cycles, warmup=50)
            old = time_call(per_joint_reads, repeats=max(cycles // 4, 50), warmup=10)
            floor = wire_floor_ms(arm)
            faults = sum(arm.bus.stats.faults.values())
    return {"label": label, "new_ms": new["median_ms"], "new_p90_ms": new["p90_ms"], "old_ms": old["median_ms"],
            "floor_ms": floor, "faults": faults}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=2000, help="timed cycles of the driver's path")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    from dynamixel_bus_emulator import DynamixelBusEmulator
    from feetech_bus_emulator import FeetechBusEmulator

    from edgebridge.drivers.dynamixel_tables import XL430_W250

    koch = functools.partial(DynamixelBusEmulator, models={1: XL430_W250, 2: XL430_W250})
    runs = [(measure(FeetechBusEmulator, args.cycles, "SO-101, feetech"), ""),
            (measure(koch, args.cycles, "Koch, dynamixel 2.0", protocol="dynamixel2", urdf="koch/koch.urdf",
                     calibration="koch/calibration/koch_default.toml"), "_dynamixel")]
    rows, out = [], {}
    for r, key in runs:
        hz, old_hz, floor_hz = 1e3 / r["new_ms"], 1e3 / r["old_ms"], 1e3 / r["floor_ms"]
        rows.append([f"{r['label']}: state + command", fmt_ms(r["new_ms"]), f"{hz:.0f}",
                     fmt_ratio(ratio(r["old_ms"], r["new_ms"])), f"{r['floor_ms'] / r['new_ms']:.0%}"])
        rows.append([f"{r['label']}: baseline, one read per joint", fmt_ms(r["old_ms"]), f"{old_hz:.0f}", "1.0x", ""])
        rows.append([f"{r['label']}: wire-time floor", fmt_ms(r["floor_ms"]), f"{floor_hz:.0f}", "", "100%"])
        out.update({f"bus_loop_hz_1mbaud{key}": hz, f"bus_loop_p90_ms_1mbaud{key}": r["new_p90_ms"],
                    f"bus_loop_hz_1mbaud_per_joint_reads{key}": old_hz, f"wire_floor_hz_1mbaud{key}": floor_hz,
                    f"speedup_vs_per_joint_reads{key}": ratio(r["old_ms"], r["new_ms"]),
                    f"bus_faults{key}": r["faults"]})
    print_table("servo bus: one control cycle, 6 servos, 1 Mbaud wire time emulated",
                ["path", "median ms", "Hz", "vs per-joint reads", "of wire floor"], rows, caption=machine_line())
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
