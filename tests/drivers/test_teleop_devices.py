"""Teleoperation devices: the leader arm against the pty bus emulator, keys from a real pseudo-terminal,
the keyboard's motion and gripper, the SpaceMouse through a stand-in ``pyspacemouse``."""

from __future__ import annotations

import math
import os
import pty
import sys
import termios
import types
from collections import namedtuple

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.drivers.arm_calibration import ArmCalibration
from edgebridge.drivers.serial_arm import SO101_DEFAULT_CALIBRATION
from edgebridge.drivers.teleop_devices import (EEDelta, JointTarget, Keyboard, KeyboardConfig, LeaderArm,
                                               LeaderArmConfig, SpaceMouse, SpaceMouseConfig, TerminalKeys,
                                               TerminalKeysConfig, parse_keys)
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError, MissingExtraError
from feetech_bus_emulator import FeetechBusEmulator
from helpers.waiting import wait_until


def test_parse_keys():
    assert parse_keys(b"wA \x1b[C\x1b[D\x1b\n") == ["w", "a", "space", "right", "left", "esc", "enter"]
    assert parse_keys(b"\x1b[15~q") == ["q"]  # an unknown escape sequence (F5) is skipped whole


@pytest.fixture
def terminal():
    master, slave = pty.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_terminal_keys_reads_a_terminal_and_restores_it(terminal):
    master, name = terminal
    fd = os.open(name, os.O_RDONLY | os.O_NOCTTY)
    before = termios.tcgetattr(fd)
    keys = TerminalKeys(TerminalKeysConfig(tty=name))
    with pytest.raises(DeviceNotConnectedError):
        keys.pop()
    with keys:
        assert not termios.tcgetattr(fd)[3] & termios.ICANON  # cbreak: no line buffering
        os.write(master, b"w\x1b[Cd")
        wait_until(lambda: keys.events.end, 2.0, "the right arrow to end the episode")
        wait_until(lambda: len(keys._keys) == 2, 2.0, "both letters")
        assert keys.pop() == ["w", "d"] and keys.pop() == []
        assert not keys.events.redo and not keys.events.stop
        os.write(master, b"\x1b[D")
        wait_until(lambda: keys.events.redo, 2.0, "the left arrow to ask for a re-recording")
        keys.events.clear_episode()
        assert not keys.events.end and not keys.events.redo
    assert termios.tcgetattr(fd) == before
    os.close(fd)


def test_terminal_keys_without_a_terminal_names_the_way_out(tmp_path):
    f = tmp_path / "not-a-tty"
    f.write_text("")
    with pytest.raises(DeviceFaultError, match="--no-interactive"):
        TerminalKeys(TerminalKeysConfig(tty=str(f))).connect()


def test_keyboard_moves_while_a_key_is_held_and_toggles_the_gripper():
    now = [0.0]
    kb = Keyboard(KeyboardConfig(linear_speed_m_s=0.05, angular_speed_rad_s=0.5, hold_s=0.1), clock=lambda: now[0])
    d = kb.apply(["w", "r"], 0.01)
    np.testing.assert_allclose(d.translation, [0.0005, 0.0, 0.0005])
    assert d.gripper is None and not np.any(d.rotation)
    now[0] = 0.05  # within hold_s of the press: still moving (the terminal repeats a held key)
    np.testing.assert_allclose(kb.apply([], 0.01).translation, [0.0005, 0.0, 0.0005])
    now[0] = 0.2
    assert not np.any(kb.apply([], 0.01).translation)
    d = kb.apply(["d", "q"], 0.02)
    np.testing.assert_allclose(d.translation, [0.0, -0.001, 0.0])
    np.testing.assert_allclose(d.rotation, [0.0, 0.0, 0.01])
    assert kb.apply(["space"], 0.01).gripper == 0.0
    assert kb.apply(["space"], 0.01).gripper == 1.0
    with pytest.raises(DeviceNotConnectedError):
        kb.read(0.01)
    with pytest.raises(ConfigError, match="hold_s"):
        KeyboardConfig(hold_s=0)


# --------------------------------------------------------------------------- leader arm


def test_leader_arm_turns_torque_off_and_reads_joints():
    with FeetechBusEmulator() as emu:
        for sid, ticks in ((3, 2048 + 512), (6, 2600)):  # goal = present: a servo with torque on stays there
            emu.set(sid, "Goal_Position", ticks)
            emu.set(sid, "Present_Position", ticks)
        for i in range(1, 7):
            emu.set(i, "Torque_Enable", 1)
        leader = LeaderArm(LeaderArmConfig(port=emu.port, timeout_s=0.25, retries=0))
        with pytest.raises(DeviceNotConnectedError):
            leader.read()
        with leader:
            assert [emu.get(i, "Torque_Enable") for i in range(1, 7)] == [0] * 6  # moves freely by hand
            t = leader.read(0.01)
            assert isinstance(t, JointTarget)
            cal = ArmCalibration.load(SO101_DEFAULT_CALIBRATION)
            want = cal.ticks_to_rad([2048, 2048, 2048 + 512, 2048, 2048])
            np.testing.assert_allclose(t.joints, want, atol=1e-12)
            assert abs(abs(t.joints[2]) - math.pi / 4) < 1e-9
            assert t.gripper == pytest.approx(cal.gripper_to_unit(2600))
            emu.set(1, "Present_Position", 2048 + 1024)
            np.testing.assert_allclose(leader.read().joints[0], cal.ticks_to_rad([3072, 2048, 2048, 2048, 2048])[0])
        assert not leader.bus.is_open


def test_leader_arm_names_a_silent_servo():
    with FeetechBusEmulator() as emu:
        emu.silent.add(4)
        leader = LeaderArm(LeaderArmConfig(port=emu.port, timeout_s=0.05, retries=0))
        with pytest.raises(DeviceFaultError, match=r"servo id\(s\) \[4\]"):
            leader.connect()
        assert not leader.bus.is_open


def test_leader_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        LeaderArmConfig(port="/dev/ttyACM1", calibration=str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="protocol"):
        LeaderArmConfig(port="/dev/ttyACM1", protocol="can")
    with pytest.raises(ConfigError, match="speak .feetech"):
        LeaderArm(LeaderArmConfig(port="/dev/ttyACM1", protocol="dynamixel2"))


# --------------------------------------------------------------------------- SpaceMouse

State = namedtuple("State", "t x y z roll pitch yaw buttons")


@pytest.fixture
def fake_spacemouse(monkeypatch):
    mod = types.ModuleType("pyspacemouse")
    mod.states = [State(0, 0.5, -0.05, 1.0, 0, 0, -0.4, [0, 0])]
    mod.open = lambda device=None: object()
    mod.read = lambda: mod.states[0]
    mod.close = lambda: None
    monkeypatch.setitem(sys.modules, "pyspacemouse", mod)
    return mod


def test_spacemouse_scales_axes_with_a_deadzone_and_buttons_drive_the_gripper(fake_spacemouse):
    sm = SpaceMouse(SpaceMouseConfig(linear_speed_m_s=0.1, angular_speed_rad_s=1.0, deadzone=0.1))
    with pytest.raises(DeviceNotConnectedError):
        sm.read(0.01)
    with sm:
        d = sm.read(0.01)
        assert isinstance(d, EEDelta)
        np.testing.assert_allclose(d.translation, [0.0005, 0.0, 0.001])  # y inside the deadzone
        np.testing.assert_allclose(d.rotation, [0.0, 0.0, -0.004])
        assert d.gripper is None
        fake_spacemouse.states[0] = State(0, 0, 0, 0, 0, 0, 0, [1, 0])
        assert sm.read(0.01).gripper == 0.0  # the left button closes, on the press
        assert sm.read(0.01).gripper is None  # held: no new event
        fake_spacemouse.states[0] = State(0, 0, 0, 0, 0, 0, 0, [0, 1])
        assert sm.read(0.01).gripper == 1.0


def test_spacemouse_missing_package_or_device(monkeypatch, fake_spacemouse):
    fake_spacemouse.open = lambda device=None: None
    with pytest.raises(DeviceFaultError, match="no SpaceMouse found"):
        SpaceMouse().connect()
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)  # not installed
    with pytest.raises(MissingExtraError, match="pip install pyspacemouse"):
        SpaceMouse().connect()
