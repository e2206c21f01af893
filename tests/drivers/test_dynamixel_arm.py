"""SerialArm on Dynamixel protocol 2.0: the shipped Koch v1.1 setup against the pty bus emulator."""

import math

import numpy as np
import pytest

from edgebridge.config import ConfigError, from_dict
from edgebridge.contracts import ArmCommand
from edgebridge.drivers.dynamixel_tables import INST_SYNC_READ, INST_SYNC_WRITE, XL430_W250
from edgebridge.drivers.serial_arm import SerialArm, SerialArmConfig
from edgebridge.errors import DeviceFaultError
from edgebridge.runtime.config import load_robot_config
from dynamixel_bus_emulator import DynamixelBusEmulator
from helpers.waiting import wait_until

TICK = 2 * math.pi / 4096
KOCH = {1: XL430_W250, 2: XL430_W250}
IDS = range(1, 7)


def _koch_options(emu, **kw) -> dict:
    opts = dict(load_robot_config("koch_dynamixel").arm.options)
    opts.update(port=emu.port, timeout_s=0.25, retries=0, **kw)
    return opts


def _arm(emu, **kw) -> SerialArm:
    return SerialArm(from_dict(SerialArmConfig, _koch_options(emu, **kw)))


def _barrier(arm):
    assert arm.bus.ping(1)


def _get(emu, reg):
    return [emu.get(i, reg) for i in IDS]


def test_shipped_setup_loads_and_names_a_dynamixel_arm():
    cfg = load_robot_config("koch_dynamixel")
    assert cfg.name == "koch_dynamixel" and cfg.arm.options["protocol"] == "dynamixel2"
    arm_cfg = from_dict(SerialArmConfig, dict(cfg.arm.options))
    arm = SerialArm(arm_cfg)
    assert arm.joint_names == tuple(cfg.kinematics["joint_names"]) and arm.n_joints == cfg.limits.n_joints
    assert arm.calibration.models_by_id() == {1: "xl430-w250", 2: "xl430-w250", 3: "xl330-m288", 4: "xl330-m288",
                                              5: "xl330-m288", 6: "xl330-m288"}
    lo, hi = arm.calibration.joint_limits()
    np.testing.assert_allclose(lo, cfg.limits.joint_lower, atol=TICK)
    np.testing.assert_allclose(hi, cfg.limits.joint_upper, atol=TICK)
    with pytest.raises(ConfigError, match="speak 'dynamixel2'"):
        SerialArm(from_dict(SerialArmConfig, {**cfg.arm.options, "protocol": "feetech"}))


@pytest.mark.parametrize("acceleration", [None, 50])
def test_koch_connect_never_moves_then_state_command_estop(acceleration):
    with DynamixelBusEmulator(models=KOCH, speed=20000.0) as emu:
        for i in IDS:
            emu.set(i, "Goal_Position", 2048 - 400)  # stale goals: an early torque-on would jump
        emu.set(3, "Present_Position", 2048 + 512)
        emu.speed = 0.0
        before = _get(emu, "Present_Position")
        arm = _arm(emu, acceleration=acceleration)
        with arm:
            _barrier(arm)
            assert _get(emu, "Present_Position") == before and _get(emu, "Goal_Position") == before
            assert _get(emu, "Torque_Enable") == [0] * 6
            if acceleration is not None:
                assert _get(emu, "Profile_Acceleration") == [acceleration] * 6
            s = arm.state()
            np.testing.assert_allclose(s.joints, [0, 0, math.pi / 4, 0, 0], atol=1e-12)
            arm.enable()
            _barrier(arm)
            assert _get(emu, "Present_Position") == before and _get(emu, "Torque_Enable") == [1] * 6
            emu.speed = 20000.0
            emu.received.clear()
            arm.state()
            sent = arm.command(ArmCommand(joints=np.array([0.1, -0.1, 1.2, 0.05, -0.05]), gripper=1.0))
            _barrier(arm)
            assert [inst for _, inst, _ in emu.received] == [INST_SYNC_READ, INST_SYNC_WRITE, 0x01]
            np.testing.assert_allclose(sent.joints, [0.1, -0.1, math.pi / 4 + 0.2, 0.05, -0.05], atol=TICK)
            wait_until(lambda: np.allclose(arm.state().joints, sent.joints, atol=1e-9), 2.0,
                       "the servos to reach the commanded joints")
            assert emu.get(6, "Goal_Position") == 3000
            arm.estop()
            _barrier(arm)
            assert _get(emu, "Torque_Enable") == [0] * 6
            with pytest.raises(DeviceFaultError, match="resume"):
                arm.command(ArmCommand(joints=np.zeros(5), gripper=0.5))
            arm.resume()
        wait_until(lambda: _get(emu, "Torque_Enable") == [0] * 6, 2.0, "torque off after disconnect")


def test_connect_checks_models_and_operating_modes():
    with DynamixelBusEmulator() as emu:  # six XL330: the shoulder should be XL430
        with pytest.raises(DeviceFaultError, match=r"servo 1 reports model number 1200.*xl430-w250"):
            _arm(emu).connect()
    with DynamixelBusEmulator(models=KOCH) as emu:
        emu.set(4, "Operating_Mode", 1)  # velocity control: a goal position means nothing
        arm = _arm(emu)
        with pytest.raises(DeviceFaultError, match=r"servo 4 is in operating mode 1.*Operating_Mode"):
            arm.connect()
        assert not arm.bus.is_open
        emu.set(4, "Operating_Mode", 4)  # extended position: fine
        with arm:
            arm.state()


def test_disconnect_releases_every_servo_when_one_has_a_hardware_alert():
    with DynamixelBusEmulator(models=KOCH) as emu:
        arm = _arm(emu)
        arm.connect()
        arm.hold()
        _barrier(arm)
        assert _get(emu, "Torque_Enable") == [1] * 6
        emu.error_bits[5] = 0x80  # overload shutdown: the final hold fails on servo 5
        with pytest.raises(DeviceFaultError, match=r"hold failed.*servo 5.*hardware error"):
            arm.disconnect()
        assert _get(emu, "Torque_Enable") == [0] * 6 and not arm.bus.is_open
