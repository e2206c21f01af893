"""SerialArm (SO-101, 5 joints + gripper) against the pty bus emulator."""

import math
import time

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.contracts import ArmCommand, Pose
from edgebridge.drivers.arm_calibration import ArmCalibration, GripperCalibration, JointCalibration
from edgebridge.drivers.feetech_tables import INST_SYNC_WRITE
from edgebridge.drivers.serial_arm import SO101_DEFAULT_CALIBRATION, SerialArm, SerialArmConfig
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError
from edgebridge.interfaces import Arm
from feetech_bus_emulator import FeetechBusEmulator
from helpers.waiting import wait_until

TICK = 2 * math.pi / 4096


@pytest.fixture
def emu():
    with FeetechBusEmulator() as e:
        yield e


def _arm(emu, **kw) -> SerialArm:
    return SerialArm(SerialArmConfig(port=emu.port, **{"timeout_s": 0.25, "retries": 0, **kw}))


def _barrier(arm):
    """SYNC_WRITE gets no answer: a ping round trip proves the emulator has handled what came before."""
    assert arm.bus.ping(1)


def _torque(emu):
    return [emu.get(i, "Torque_Enable") for i in range(1, 7)]


def test_calibration_inverse_pair_and_files(tmp_path):
    cal = ArmCalibration.load(SO101_DEFAULT_CALIBRATION)
    assert cal.joint_names[0] == "shoulder_pan" and cal.all_ids == (1, 2, 3, 4, 5, 6)
    q = np.array([0.3, -0.5, 1.0, -1.2, 2.0])
    np.testing.assert_allclose(cal.ticks_to_rad(cal.rad_to_ticks(q)), q, atol=TICK / 2 + 1e-12)
    lo, hi = cal.joint_limits()
    np.testing.assert_allclose(cal.ticks_to_rad(cal.rad_to_ticks(hi + 1.0)), hi)  # clipped
    assert cal.gripper_to_unit(cal.unit_to_gripper(0.25)) == pytest.approx(0.25, abs=1e-3)
    for ext in (".toml", ".json"):
        p = cal.save(tmp_path / f"{cal.arm_id}{ext}")
        assert ArmCalibration.load(p) == cal
    assert ArmCalibration.for_arm(tmp_path, cal.arm_id) == cal
    flipped = ArmCalibration("a", (JointCalibration("j", 1, 1000, -1, 0, 4095),), GripperCalibration(2, 0, 10))
    assert flipped.ticks_to_rad([1000 + 512])[0] == pytest.approx(-math.pi / 4)


def test_calibration_errors_name_the_key(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text('arm_id = "x"\n[[joints]]\nname = "j"\nid = 1\noffset = 5000\n[gripper]\nid = 2\nclosed = 0\nopen = 9\n')
    with pytest.raises(ConfigError, match=r"x.toml: joints\[0\]\.offset"):
        ArmCalibration.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        ArmCalibration.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unique"):
        ArmCalibration("a", (JointCalibration("j", 1, 10),), GripperCalibration(1, 0, 10))


def test_config_validation():
    with pytest.raises(ConfigError, match="max_relative_target_rad"):
        SerialArmConfig(port="/dev/ttyACM0", max_relative_target_rad=-1)
    with pytest.raises(ConfigError, match="calibration"):
        SerialArmConfig(port="/dev/ttyACM0", calibration="/nope.toml")


def test_connect_state_command_hold(emu):
    emu.set(3, "Present_Position", 2048 + 512)  # elbow at +pi/4, torque off
    arm = _arm(emu)
    assert isinstance(arm, Arm)
    with pytest.raises(DeviceNotConnectedError):
        arm.state()
    with arm:
        # Goal = present on connect, torque left as found (off): the arm does not move.
        _barrier(arm)
        assert emu.get(3, "Goal_Position") == 2048 + 512
        assert _torque(emu) == [0] * 6 and not arm.torque_enabled
        s = arm.state()
        np.testing.assert_allclose(s.joints, [0, 0, math.pi / 4, 0, 0], atol=1e-12)
        assert isinstance(s.ee_pose, Pose)
        np.testing.assert_allclose(s.ee_pose.position, arm._kin.fk(s.joints).position)
        target = np.array([0.2, -0.3, 0.4, 0.1, -0.5])
        sent = arm.command(ArmCommand(joints=target, gripper=1.0))  # the first command turns torque on
        np.testing.assert_allclose(sent.joints, target, atol=TICK)
        _barrier(arm)
        assert _torque(emu) == [1] * 6 and arm.torque_enabled
        assert sent.gripper == 1.0 and emu.get(6, "Goal_Position") == 3200
        wait_until(lambda: np.allclose(arm.state().joints, sent.joints, atol=1e-9)
                   and arm.state().gripper == pytest.approx(1.0), 2.0, "the servos to reach the commanded joints")
    # Disconnect releases torque and the port.
    wait_until(lambda: _torque(emu) == [0] * 6, 2.0, "torque off on every servo after disconnect")
    assert not arm.is_connected and not arm.bus.is_open


def test_hold_mid_motion_stops_where_the_arm_is():
    with FeetechBusEmulator(speed=2000.0) as emu, _arm(emu) as arm:
        arm.command(ArmCommand(joints=np.full(5, 0.5), gripper=0.0))
        wait_until(lambda: all(emu.get(i, "Present_Position") > 2048 for i in range(1, 6)), 2.0,
                   "servos 1-5 to start moving toward the 0.5 rad target")
        arm.hold()
        _barrier(arm)
        held = [emu.get(i, "Goal_Position") for i in range(1, 6)]
        assert all(2048 < h < 2048 + 326 for h in held)  # stopped short of the 0.5 rad target
        wait_until(lambda: [emu.get(i, "Present_Position") for i in range(1, 6)] == held, 2.0,
                   "servos 1-5 to settle at the held positions")


def test_command_clips_to_range_and_max_relative(emu):
    with _arm(emu, max_relative_target_rad=0.1) as arm:
        sent = arm.command(ArmCommand(joints=[1.0, -1.0, 0.05, 0, 0], gripper=0.5))
        np.testing.assert_allclose(sent.joints, [0.1, -0.1, 0.05, 0, 0], atol=TICK)
    with _arm(emu) as arm:
        lo, hi = arm.calibration.joint_limits()
        sent = arm.command(ArmCommand(joints=hi + 0.5, gripper=0.5))
        np.testing.assert_allclose(sent.joints, hi)
        assert arm.last_sent is sent
        with pytest.raises(ValueError, match="5"):
            arm.command(ArmCommand(joints=np.zeros(3), gripper=0.5))


def test_estop_disables_torque_and_blocks_commands(emu):
    with _arm(emu) as arm:
        arm.estop()
        _barrier(arm)
        assert _torque(emu) == [0] * 6 and arm.estopped
        with pytest.raises(DeviceFaultError, match="resume"):
            arm.command(ArmCommand(joints=np.zeros(5), gripper=0.5))
        arm.resume()
        _barrier(arm)
        assert _torque(emu) == [1] * 6
        arm.command(ArmCommand(joints=np.zeros(5), gripper=0.5))


def test_torque_disabled_block_restores(emu):
    with _arm(emu) as arm:
        arm.enable()
        with arm.torque_disabled():
            _barrier(arm)
            assert _torque(emu) == [0] * 6
            emu.set(1, "Present_Position", 2500)  # moved by hand
        _barrier(arm)
        assert _torque(emu) == [1] * 6 and emu.get(1, "Goal_Position") == 2500


def test_keep_torque_on_disconnect(emu):
    with _arm(emu, disable_torque_on_disconnect=False) as arm:
        arm.enable()
        _barrier(arm)
    time.sleep(0.05)  # nothing to wait for: a torque-off written on disconnect would have landed by now
    assert _torque(emu) == [1] * 6


def test_missing_servo_fails_connect_and_closes_port(emu):
    emu.silent.add(4)
    arm = _arm(emu)
    with pytest.raises(DeviceFaultError, match=r"servo id\(s\) \[4\]"):
        arm.connect()
    assert not arm.is_connected and not arm.bus.is_open


def test_state_fault_names_port_and_servo(emu):
    with _arm(emu) as arm:
        emu.corrupt.add(2)
        with pytest.raises(DeviceFaultError, match=f"{emu.port}.*Present_Position"):
            arm.state()
        emu.corrupt.clear()
        arm.state()


def test_command_is_one_sync_write(emu):
    with _arm(emu) as arm:
        arm.enable()
        _barrier(arm)
        emu.received.clear()
        arm.command(ArmCommand(joints=np.zeros(5), gripper=0.0))
        _barrier(arm)
        assert [(sid, inst) for sid, inst, _ in emu.received] == [(0xFE, INST_SYNC_WRITE), (1, 0x01)]


# ---------------------------------------------------------------------------------------------- defects


def _stale_goals(emu, offset=400):
    """A goal left 400 ticks away from where each servo is: turning torque on before goal = present jumps."""
    for i in range(1, 7):
        emu.set(i, "Goal_Position", emu.get(i, "Present_Position") + offset)


def _positions(emu):
    return [emu.get(i, "Present_Position") for i in range(1, 7)]


@pytest.mark.parametrize("acceleration", [None, 100])
@pytest.mark.parametrize("found_on", [False, True])
def test_connect_never_moves_the_arm(acceleration, found_on):
    with FeetechBusEmulator(speed=0.0) as emu:  # speed 0: only a torque-on jump can move a servo
        assert emu.torque_snaps
        _stale_goals(emu)
        if found_on:
            for i in range(1, 7):
                emu.set(i, "Torque_Enable", 1)
        before = _positions(emu)
        with _arm(emu, acceleration=acceleration) as arm:
            _barrier(arm)
            assert _positions(emu) == before, "connect moved the arm"
            assert [emu.get(i, "Goal_Position") for i in range(1, 7)] == before
            assert _torque(emu) == [int(found_on)] * 6  # torque as found
            if acceleration is not None:
                assert [emu.get(i, "Acceleration") for i in range(1, 7)] == [acceleration] * 6
            _stale_goals(emu)  # another program wrote goals meanwhile: enable() must not jump either
            arm.enable()
            _barrier(arm)
            assert _positions(emu) == before and _torque(emu) == [1] * 6


def test_enable_refuses_when_a_servo_does_not_take_its_goal():
    with FeetechBusEmulator(speed=0.0) as emu:
        _stale_goals(emu)
        emu.ignore_writes.add(3)
        arm = _arm(emu)
        with pytest.raises(DeviceFaultError, match=r"servo\(s\) \[3\] did not take goal = present"):
            arm.connect()
        assert _torque(emu) == [0] * 6 and not arm.bus.is_open


def test_disconnect_releases_every_servo_when_one_faults_during_the_hold(emu):
    arm = _arm(emu)
    arm.connect()
    arm.command(ArmCommand(joints=np.zeros(5), gripper=0.5))
    _barrier(arm)
    assert _torque(emu) == [1] * 6
    emu.error_bits[3] = 0x20  # overload: the final hold's read fails
    with pytest.raises(DeviceFaultError, match=r"hold failed.*servo 3.*overload"):
        arm.disconnect()
    assert _torque(emu) == [0] * 6 and not arm.bus.is_open and not arm.is_connected


def test_disconnect_names_a_servo_that_does_not_acknowledge_torque_off(emu):
    arm = _arm(emu, timeout_s=0.05)
    arm.connect()
    arm.hold()  # torque on, where it is
    emu.silent.add(4)  # its receive line works, its answers are lost
    with pytest.raises(DeviceFaultError, match=r"servo\(s\) \[4\].*cut the servo power"):
        arm.disconnect()
    assert _torque(emu) == [0] * 6 and not arm.bus.is_open


def test_disconnect_writes_each_servo_when_the_sync_write_fails(emu, monkeypatch):
    arm = _arm(emu)
    arm.connect()
    arm.hold()
    real = arm.bus.sync_write

    def broken(register, values):
        if register == "Torque_Enable":
            raise DeviceFaultError("servo bus: SYNC_WRITE failed (test)")
        return real(register, values)

    monkeypatch.setattr(arm.bus, "sync_write", broken)
    arm.disconnect()  # every servo acknowledged its own WRITE: nothing to report
    assert _torque(emu) == [0] * 6


def test_max_relative_command_reads_once_per_cycle(emu):
    with _arm(emu, max_relative_target_rad=0.1) as arm:
        arm.hold()
        _barrier(arm)
        emu.received.clear()
        arm.state()
        arm.command(ArmCommand(joints=np.full(5, 1.0), gripper=0.5))  # reuses the state() just read
        arm.command(ArmCommand(joints=np.full(5, 1.0), gripper=0.5))  # fresh too (within present_max_age_s)
        _barrier(arm)
        kinds = [inst for sid, inst, _ in emu.received]
        assert kinds == [0x82, INST_SYNC_WRITE, INST_SYNC_WRITE, 0x01]
    with _arm(emu, max_relative_target_rad=0.1, present_max_age_s=0.0) as arm:
        arm.hold()
        _barrier(arm)
        emu.received.clear()
        here = np.array([emu.get(i, "Present_Position") - 2048 for i in range(1, 6)]) * TICK  # held there
        sent = arm.command(ArmCommand(joints=np.full(5, 1.0), gripper=0.5))  # no fresh state: one read
        _barrier(arm)
        assert [inst for sid, inst, _ in emu.received] == [0x82, INST_SYNC_WRITE, 0x01]
        np.testing.assert_allclose(sent.joints, here + 0.1, atol=TICK)


def test_malformed_answers_are_faults_that_name_the_servo_never_silence(emu):
    with _arm(emu) as arm:
        emu.short_answer.add(3)
        with pytest.raises(DeviceFaultError, match=r"servo 3.*1 data byte\(s\) where 2") as ei:
            arm.state()
        assert "silent" not in str(ei.value) and ei.value.kind == "malformed"
        emu.short_answer.clear()
        emu.set_raw(2, "Present_Position", b"\xff\xf0")  # 61695: no STS3215 position
        with pytest.raises(DeviceFaultError, match=r"servo 2.*Present_Position = 61695 lies outside 0\.\.4095"):
            arm.state()
        emu.set(2, "Present_Position", 2048)
        np.testing.assert_allclose(arm.state().joints, 0, atol=1e-12)  # the bus is in step again
        assert arm.bus.stats.faults["timeout"] == 0


def test_velocity_comes_in_the_same_read(emu):
    with _arm(emu, read_velocity=True) as arm:
        emu.set(2, "Present_Velocity", 100)
        _barrier(arm)
        emu.received.clear()
        s = arm.state()
        assert [inst for _, inst, _ in emu.received] == [0x82]
        assert s.joint_velocities[1] == pytest.approx(100 * TICK)
