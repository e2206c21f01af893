"""edge-setup (drivers.setup_cli): find-port, scan, set-id, calibrate and check-arm against the Feetech and
Dynamixel pty bus emulators and a franky-sim FR3; the check's measurements against a scripted arm."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgebridge.contracts import ArmState, Pose
from edgebridge.drivers import setup_cli, setup_ports
from edgebridge.drivers.arm_calibration import ArmCalibration
from edgebridge.drivers.dynamixel_tables import XL430_W250
from edgebridge.drivers.feetech_tables import INST_SYNC_READ, INST_WRITE
from edgebridge.drivers.serial_arm import SO101_DEFAULT_CALIBRATION
from edgebridge.drivers.setup_check import CheckSettings, check_joints
from edgebridge.runtime.config import CONFIG_DIR, load_robot_config
from edgebridge.runtime.safety import JointLimiter, SafetyLayer
from dynamixel_bus_emulator import DynamixelBusEmulator
from feetech_bus_emulator import FeetechBusEmulator
from helpers.waiting import wait_until

KOCH = {1: XL430_W250, 2: XL430_W250}
FAST = ["--speed", "1.0", "--settle", "0.1"]  # a quick check: 0.05 rad in about 0.15 s, 0.1 s held


def _torque(emu, ids=range(1, 7)):
    return [emu.get(i, "Torque_Enable") for i in ids]


def _json(path: Path):
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- find-port


def test_find_port_names_the_port_that_went_away(monkeypatch, tmp_path, capsys):
    acm0 = setup_ports.PortInfo("/dev/ttyACM0", "USB Single Serial", "USB VID:PID=1A86:55D3")
    acm1 = setup_ports.PortInfo("/dev/ttyACM1", "OpenRB-150", "USB VID:PID=2F5D:2202")
    listings = iter([[acm0, acm1], [acm1]])
    monkeypatch.setattr(setup_ports, "list_ports", lambda: next(listings))
    asked = []
    monkeypatch.setattr(setup_cli, "ask", lambda text: asked.append(text) or "")
    out = tmp_path / "port.json"
    assert setup_cli.main(["find-port", "--json", str(out)]) == 0
    assert "Unplug" in asked[0] and _json(out)["port"] == "/dev/ttyACM0"
    assert [p["device"] for p in _json(out)["ports"]] == ["/dev/ttyACM0", "/dev/ttyACM1"]
    assert "/dev/ttyACM0" in capsys.readouterr().out


def test_find_port_yes_waits_and_fails_when_nothing_goes(monkeypatch, tmp_path, capsys):
    acm0 = setup_ports.PortInfo("/dev/ttyACM0", "USB Single Serial")
    usb0 = setup_ports.PortInfo("/dev/ttyUSB0", "FT232R")
    calls = []

    def lister():  # the adapter is unplugged on the third look
        calls.append(1)
        return [acm0, usb0] if len(calls) < 3 else [acm0]

    monkeypatch.setattr(setup_ports, "list_ports", lister)
    assert setup_cli.main(["find-port", "--yes", "--wait", "5", "--json", str(tmp_path / "a.json")]) == 0
    assert _json(tmp_path / "a.json")["port"] == "/dev/ttyUSB0" and len(calls) == 3
    monkeypatch.setattr(setup_ports, "list_ports", lambda: [acm0])
    t0 = time.monotonic()
    assert setup_cli.main(["find-port", "--yes", "--wait", "0.3"]) == 1
    assert time.monotonic() - t0 >= 0.3
    assert "no port went away" in capsys.readouterr().err


# --------------------------------------------------------------------------- scan


def test_scan_finds_each_family_on_its_own_protocol(tmp_path):
    with FeetechBusEmulator(ids=(1, 2, 7)) as emu:
        emu.corrupt = {7}
        out = tmp_path / "feetech.json"
        assert setup_cli.main(["scan", "--port", emu.port, "--baud", "1000000", "--ids", "0-8",
                               "--json", str(out)]) == 0
    (found,) = _json(out)  # the Dynamixel pings went unanswered
    assert (found["protocol"], found["baudrate"]) == ("feetech", 1_000_000)
    assert found["servos"] == {"1": {"model_number": 777, "model": "sts3215"},
                               "2": {"model_number": 777, "model": "sts3215"}}
    assert found["garbled"] == [7]
    with DynamixelBusEmulator(models=KOCH) as emu:
        out = tmp_path / "dxl.json"
        assert setup_cli.main(["scan", "--port", emu.port, "--baud", "1000000", "--ids", "1-6",
                               "--json", str(out)]) == 0
    (found,) = _json(out)
    assert found["protocol"] == "dynamixel2"
    assert {k: v["model"] for k, v in found["servos"].items()} == {
        "1": "xl430-w250", "2": "xl430-w250", "3": "xl330-m288", "4": "xl330-m288", "5": "xl330-m288",
        "6": "xl330-m288"}


def test_scan_reports_silence_and_a_bad_port(capsys):
    with FeetechBusEmulator(ids=(1,)) as emu:
        emu.silent = {1}
        assert setup_cli.main(["scan", "--port", emu.port, "--protocol", "feetech", "--baud", "1000000",
                               "--ids", "1-3"]) == 1
    assert "nothing answered" in capsys.readouterr().err
    assert setup_cli.main(["scan", "--port", "/dev/edgebridge-no-such-port", "--protocol", "feetech",
                           "--baud", "1000000", "--ids", "1"]) == 3
    assert "/dev/edgebridge-no-such-port" in capsys.readouterr().err


# --------------------------------------------------------------------------- set-id


def test_set_id_one_servo_at_a_time(capsys):
    """Every set-id scans all ids (2.5 s at 10 ms a silent id): the only way to know one servo is connected."""
    with FeetechBusEmulator(ids=(1, 2)) as emu:
        rc = setup_cli.main(["set-id", "--port", emu.port, "--id", "5", "--protocol", "feetech", "--baud", "1000000",
                             "--yes"])
        assert rc == 1 and emu.ids == (1, 2)  # refused, nothing written
        err = capsys.readouterr().err
        assert "more than one servo" in err and "id 1 (sts3215" in err and "id 2 (sts3215" in err
    with FeetechBusEmulator(ids=(1,)) as emu:
        assert setup_cli.main(["set-id", "--port", emu.port, "--id", "5", "--from", "1", "--protocol", "feetech",
                               "--baud", "1000000", "--yes"]) == 0
        assert emu.ids == (5,) and emu.get(5, "ID") == 5 and emu.get(5, "Lock") == 1  # EEPROM locked again


def test_set_id_dynamixel_checks_from_and_asks_first(monkeypatch, capsys):
    with DynamixelBusEmulator(ids=(1,), models={1: XL430_W250}) as emu:
        asked = []
        monkeypatch.setattr(setup_cli, "ask", lambda text: asked.append(text) or "y")
        argv = ["set-id", "--port", emu.port, "--id", "4", "--protocol", "dynamixel2", "--baud", "1000000"]
        assert setup_cli.main([*argv, "--from", "3"]) == 1 and emu.ids == (1,) and not asked
        assert "answers at id 1, not at --from 3" in capsys.readouterr().err
        assert setup_cli.main(argv) == 0 and emu.ids == (4,) and emu.get(4, "ID") == 4
        assert asked == ["xl430-w250 servo on %s: id 1 -> 4? [y/N]" % emu.port]


def test_set_mode_writes_a_position_mode_with_torque_off(capsys):
    with DynamixelBusEmulator(models=KOCH) as emu:
        for i in range(1, 7):
            emu.set(i, "Torque_Enable", 1)  # an EEPROM write with torque on is refused by the servo
        argv = ["set-mode", "--port", emu.port, "--protocol", "dynamixel2", "--ids", "1-6"]
        assert setup_cli.main([*argv, "--mode", "1"]) == 1  # velocity mode: the arm could not hold a goal
        assert "mode 1 does not hold a goal position" in capsys.readouterr().err
        assert [emu.get(i, "Operating_Mode") for i in range(1, 7)] == [3] * 6 and _torque(emu) == [1] * 6
        assert setup_cli.main([*argv, "--mode", "4"]) == 0
        assert [emu.get(i, "Operating_Mode") for i in range(1, 7)] == [4] * 6 and _torque(emu) == [0] * 6
    with FeetechBusEmulator(ids=(1,)) as emu:
        emu.set(1, "Operating_Mode", 3)
        assert setup_cli.main(["set-mode", "--port", emu.port, "--protocol", "feetech", "--ids", "1",
                               "--mode", "0"]) == 0
        assert emu.get(1, "Operating_Mode") == 0 and emu.get(1, "Lock") == 1


# --------------------------------------------------------------------------- calibrate


def _so101_setup(tmp_path: Path, calibration: Path | None = None, arm_id: str = "my_so101") -> Path:
    """so101_serial with its own calibration file (a copy of the nominal one under ``arm_id``)."""
    text = (CONFIG_DIR / "so101_serial.toml").read_text()
    if calibration is not None:
        cal = ArmCalibration.load(SO101_DEFAULT_CALIBRATION)
        ArmCalibration(arm_id, cal.joints, cal.gripper, cal.model).save(calibration)
        text = text.replace("[arm.options]\n", f'[arm.options]\ncalibration = "{calibration}"\n', 1)
    path = tmp_path / "so101_test.toml"
    path.write_text(text)
    return path


ZERO = {1: 2000, 2: 2100, 3: 1950, 4: 2050, 5: 2048, 6: 2100}
LOW = {1: 900, 2: 1000, 3: 1000, 4: 1000, 5: 300, 6: 2040}
HIGH = {1: 3200, 2: 3100, 3: 3100, 4: 3100, 5: 3800, 6: 3150}


def _sweep(emu, ids=range(1, 7), hold_s=0.1, steps=25):
    """The owner's hands: every joint to its low end, then its high end, then back to zero (torque off),
    in small steps (a real sweep moves a few ticks between two samples)."""
    now = {i: emu.get(i, "Present_Position") for i in ids}
    for target in (LOW, HIGH, ZERO):
        for k in range(1, steps + 1):
            for i in ids:
                emu.set(i, "Present_Position", round(now[i] + (target[i] - now[i]) * k / steps))
            time.sleep(0.004)
        now = {i: target[i] for i in ids}
        time.sleep(hold_s)  # several 20 ms samples at each end


def test_calibrate_interactive_writes_the_setups_own_file(monkeypatch, tmp_path, capsys):
    own = tmp_path / "my_so101.toml"
    setup = _so101_setup(tmp_path, own)
    with FeetechBusEmulator() as emu:
        asked = []

        def owner(text):
            asked.append(text)
            if "zero pose" in text:
                for i, t in ZERO.items():
                    emu.set(i, "Present_Position", t)
            elif "overwrite" in text:
                return "y"
            else:  # the sweep: Enter once done
                _sweep(emu)
            return ""

        monkeypatch.setattr(setup_cli, "ask", owner)
        assert setup_cli.main(["calibrate", "--config", str(setup), "--port", emu.port]) == 0
        assert _torque(emu) == [0] * 6  # limp, as the owner left it
    cal = ArmCalibration.load(own)
    assert cal.arm_id == "my_so101" and [j.name for j in cal.joints][0] == "shoulder_pan"
    assert {j.id: j.offset for j in cal.joints} == {i: ZERO[i] for i in range(1, 6)}
    assert {j.id: (j.min, j.max) for j in cal.joints} == {i: (LOW[i], HIGH[i]) for i in range(1, 6)}
    assert (cal.gripper.closed, cal.gripper.open) == (LOW[6], HIGH[6])  # the template closes at the low end
    assert (tmp_path / "my_so101.toml.bak").is_file() and any("overwrite" in a for a in asked)
    assert "wrote" in capsys.readouterr().out


def test_calibrate_yes_records_for_a_fixed_time_on_dynamixel(tmp_path):
    koch = load_robot_config("koch_dynamixel")
    out = tmp_path / "cal" / "koch_a.json"
    with DynamixelBusEmulator(models=KOCH) as emu:
        for i, t in ZERO.items():
            emu.set(i, "Present_Position", t)

        def owner():  # starts once the zero pose was read: the first SYNC_READ after torque-off on servo 6
            def zero_read():
                rec = list(emu.received)
                w = [k for k, (sid, inst, _) in enumerate(rec) if sid == 6 and inst == INST_WRITE]
                return w and any(inst == INST_SYNC_READ for _, inst, _ in rec[w[-1]:])
            wait_until(zero_read, 10.0, "the zero pose to be read")
            _sweep(emu)

        t = threading.Thread(target=owner, daemon=True)
        t.start()
        assert setup_cli.main(["calibrate", "--config", "koch_dynamixel", "--port", emu.port, "--out", str(out),
                               "--yes", "--sweep-s", "1.5"]) == 0
        t.join(5)
    cal = ArmCalibration.load(out)
    assert cal.arm_id == "koch_a" and cal.models_by_id() == {1: "xl430-w250", 2: "xl430-w250", 3: "xl330-m288",
                                                             4: "xl330-m288", 5: "xl330-m288", 6: "xl330-m288"}
    assert {j.id: (j.offset, j.min, j.max) for j in cal.joints} == {i: (ZERO[i], LOW[i], HIGH[i]) for i in range(1, 6)}
    assert cal.joint_names == tuple(koch.kinematics["joint_names"])


def test_calibrate_refuses_a_joint_that_was_not_moved(tmp_path, capsys):
    out = tmp_path / "x.toml"
    with FeetechBusEmulator() as emu:
        rc = setup_cli.main(["calibrate", "--config", "so101_serial", "--port", emu.port, "--out", str(out),
                             "--yes", "--sweep-s", "0.2"])
        assert _torque(emu) == [0] * 6
    assert rc == 1 and not out.exists()
    assert "shoulder_pan (servo 1): moved only 0 ticks" in capsys.readouterr().err


def test_live_ranges_redraw_what_was_swept():
    import io

    from rich.console import Console

    from edgebridge.drivers.setup_calibrate import LiveRanges, RangeRecorder

    buf = io.StringIO()
    live = LiveRanges(ArmCalibration.load(SO101_DEFAULT_CALIBRATION), Console(file=buf, force_terminal=True, width=100))
    rec = RangeRecorder({i: 4096 for i in range(1, 7)})
    for ticks in (ZERO, LOW, HIGH):
        rec.add(ticks)
    live(rec)
    live.stop()
    text = buf.getvalue()
    assert "wrist_roll" in text and "gripper" in text and "3800" in text and "300" in text
    rec = RangeRecorder({1: 4096})
    for t in (2000, 3000, 4000, 4090, 5):  # more than half a turn between two samples: across the zero tick
        rec.add({1: t})
    assert rec.wrapped == {1} and (rec.lo[1], rec.hi[1]) == (5, 4090)


# --------------------------------------------------------------------------- check-arm


def test_check_arm_feetech_so101(tmp_path, capsys):
    out = tmp_path / "check.json"
    with FeetechBusEmulator() as emu:  # every joint at 0 rad: the SO-101 hand sits outside its workspace box
        rc = setup_cli.main(["check-arm", "--config", "so101_serial", "--port", emu.port, *FAST])
        assert rc == 1 and "--ignore-workspace" in capsys.readouterr().out
        assert [emu.get(i, "Present_Position") for i in range(1, 7)] == [2048] * 6 and _torque(emu) == [0] * 6
        rc = setup_cli.main(["check-arm", "--config", "so101_serial", "--port", emu.port, "--ignore-workspace",
                             "--json", str(out), *FAST])
        assert rc == 0, capsys.readouterr().out
        assert _torque(emu) == [0] * 6  # disconnected: torque off on every servo
    r = _json(out)
    assert r["passed"] and [j["name"] for j in r["joints"]] == ["shoulder_pan", "shoulder_lift", "elbow_flex",
                                                               "wrist_flex", "wrist_roll"]
    for j in r["joints"]:
        assert j["passed"] and abs(j["step_rad"]) == 0.05
        assert j["final_error_rad"] < 2e-3 and j["others_rad"] < 2e-3  # one tick is 1.5 mrad
        assert 0 < j["lag_s"] < 0.1


def test_check_arm_dynamixel_koch(tmp_path):
    out = tmp_path / "check.json"
    with DynamixelBusEmulator(models=KOCH) as emu:
        assert setup_cli.main(["check-arm", "--config", "koch_dynamixel", "--port", emu.port, "--json", str(out),
                               *FAST]) == 0
        assert _torque(emu) == [0] * 6
    r = _json(out)
    assert r["passed"] and len(r["joints"]) == 5 and all(j["final_error_rad"] < 2e-3 for j in r["joints"])


def test_check_arm_names_a_joint_that_does_not_follow(tmp_path):
    out = tmp_path / "check.json"
    with FeetechBusEmulator() as emu:
        emu.ignore_writes = {3}
        assert setup_cli.main(["check-arm", "--config", "so101_serial", "--port", emu.port, "--ignore-workspace",
                               "--json", str(out), *FAST]) == 1
        assert _torque(emu) == [0] * 6
    joints = {j["name"]: j for j in _json(out)["joints"]}
    assert not joints["elbow_flex"]["passed"] and "did not follow" in joints["elbow_flex"]["faults"][0]
    assert joints["elbow_flex"]["final_error_rad"] > 0.04
    assert all(j["passed"] for n, j in joints.items() if n != "elbow_flex")


def test_check_arm_fault_mid_check_stops_and_turns_torque_off(tmp_path):
    out = tmp_path / "check.json"
    with FeetechBusEmulator() as emu:
        def unplug():  # servo 4 goes silent once shoulder_pan has started to move
            wait_until(lambda: emu.get(1, "Goal_Position") != 2048, 10.0, "shoulder_pan to move")
            emu.silent = {4}

        t = threading.Thread(target=unplug, daemon=True)
        t.start()
        assert setup_cli.main(["check-arm", "--config", "so101_serial", "--port", emu.port, "--ignore-workspace",
                               "--json", str(out), *FAST]) == 1
        t.join(5)
        assert _torque(emu, (1, 2, 3, 5, 6)) == [0] * 5  # every servo that still answers
    r = _json(out)
    assert "servo 4" in r["joints"][0]["faults"][0]
    assert all(j["faults"] == ["not run (the check stopped earlier)"] for j in r["joints"][1:])
    assert any("torque may still be on for servo(s) [4]" in e for e in r["errors"])


class ScriptedArm:
    """Joints that follow the command ``delay_s`` late; ``cross``: joint i's command moves joint j instead."""

    name = "scripted arm"

    def __init__(self, n=2, delay_s=0.03, cross=None):
        self.q0 = np.zeros(n)
        self.delay_s, self.cross = delay_s, cross or {}
        self.sent: list[tuple[float, np.ndarray]] = [(0.0, self.q0)]

    def state(self):
        t = time.monotonic() - self.delay_s
        q = next((q for ts, q in reversed(self.sent) if ts <= t), self.q0).copy()
        for i, j in self.cross.items():
            q[i], q[j] = q[j], q[i]
        return ArmState(joints=q, ee_pose=Pose(np.zeros(3), np.array([0, 0, 0, 1.0])), gripper=0.5, stamp_ns=0)

    def command(self, cmd):
        self.sent.append((time.monotonic(), cmd.joints.copy()))
        return cmd

    def hold(self):
        pass


def _run_scripted(arm, n=2, rate=200.0):
    lim = load_robot_config("so101_serial").limits
    from dataclasses import replace

    lim = replace(lim, joint_lower=lim.joint_lower[:n], joint_upper=lim.joint_upper[:n],
                  joint_velocity=(1.0,) * n, joint_acceleration=(10.0,) * n)
    s = CheckSettings(speed_rad_s=1.0, settle_s=0.1, rate_hz=rate)
    return check_joints(arm, [f"j{i}" for i in range(n)], lim.joint_lower, lim.joint_upper,
                        SafetyLayer(lim, 1 / rate, fk=None), JointLimiter(lim, 1 / rate), s)


def test_check_measures_the_lag_and_catches_swapped_joints():
    r = _run_scripted(ScriptedArm(delay_s=0.03))
    assert r.passed, r.to_dict()
    for j in r.joints:  # the state is read once a tick, before the command: up to one period (5 ms) more
        assert 0.028 <= j.lag_s <= 0.045 and j.others_rad < 1e-9
    r = _run_scripted(ScriptedArm(delay_s=0.0, cross={0: 1}))
    assert not r.passed
    assert "j1 moved 0.050 rad with it" in r.joints[0].faults[-1]


# --------------------------------------------------------------------------- Franka FR3 (franky-sim)


@pytest.fixture(scope="module")
def franka_host():
    pytest.importorskip("franky", reason="franky-control (extra 'franka') not installed")
    pytest.importorskip("franky_sim", reason="franky-sim (extra 'dev') not installed: no simulated FR3")
    from franka_sim_server import SimServer, ports_free

    srv = SimServer()
    srv.start()
    try:
        yield srv.host
    finally:
        srv.stop() if srv.alive else srv.kill()
        assert ports_free(srv.host), "the franky-sim server left its ports bound"


def test_check_arm_fr3_franky_against_the_simulator(franka_host, tmp_path):
    out = tmp_path / "fr3.json"
    assert setup_cli.main(["check-arm", "--config", "fr3_franky", "--host", franka_host, "--json", str(out),
                           "--speed", "0.5", "--settle", "0.2"]) == 0
    r = _json(out)
    assert r["driver"] == "franka" and len(r["joints"]) == 7 and r["passed"]
    assert any("realtime = false" in n for n in r["notes"])
    for j in r["joints"]:
        assert j["final_error_rad"] < 0.02 and j["others_rad"] < 0.025
