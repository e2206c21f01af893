"""EthernetArm against a controller emulator on a real TCP socket (127.0.0.1)."""

import socket
import struct
import time
import zlib

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.contracts import ArmCommand
from edgebridge.drivers import ethernet_protocol as ep
from edgebridge.drivers.ethernet_arm import EthernetArm, EthernetArmConfig
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError
from edgebridge.interfaces import Arm
from ethernet_arm_emulator import ArmControllerEmulator
from helpers.waiting import wait_until


@pytest.fixture
def ctl():
    with ArmControllerEmulator() as c:
        yield c


def _arm(ctl, **kw):
    return EthernetArm(EthernetArmConfig(host="127.0.0.1", port=ctl.port, **kw))


def _state_when_ready(arm):
    wait_until(lambda: arm._latest is not None, 2.0, "the first state frame from the controller")
    return arm.state()


def test_frame_layout_and_crc():
    f = ep.encode_frame(ep.MSG_HEARTBEAT, 7, 123, b"")
    assert len(f) == 22 and f[:2] == b"EB" and f[2] == 1 and f[3] == ep.MSG_HEARTBEAT
    assert struct.unpack_from("<I", f, 4)[0] == 7 and struct.unpack_from("<q", f, 8)[0] == 123
    assert struct.unpack_from("<I", f, 18)[0] == zlib.crc32(f[:18])
    r = ep.FrameReader()
    cmd = ep.encode_frame(ep.MSG_COMMAND, 3, 9, ep.pack_command(0.5, np.arange(6.0)))
    bad = bytearray(cmd)
    bad[20] ^= 1
    r.feed(b"\x00junk" + bytes(bad) + cmd[:10])
    with pytest.raises(ep.FrameError, match="CRC mismatch in COMMAND"):
        r.next()
    assert r.next() is None
    r.feed(cmd[10:])
    frame = r.next()
    assert (frame.type, frame.seq) == (ep.MSG_COMMAND, 3)
    g, q = ep.unpack_command(frame.payload, 6)
    assert g == 0.5 and np.array_equal(q, np.arange(6.0))


def test_config_validation():
    with pytest.raises(ConfigError, match="port"):
        EthernetArmConfig(host="10.0.0.2", port=0)
    with pytest.raises(ConfigError, match="state_timeout_s"):
        EthernetArmConfig(host="10.0.0.2", state_timeout_s=0)


def test_state_and_command_round_trip(ctl):
    arm = _arm(ctl)
    assert isinstance(arm, Arm)
    with pytest.raises(DeviceNotConnectedError):
        arm.state()
    with arm:
        assert arm.hello.name == "emulator"
        s = _state_when_ready(arm)
        assert s.joints.shape == (6,) and s.gripper == 1.0
        target = np.array([0.1, -0.2, 0.3, 0.0, 0.05, -0.1])
        sent = arm.command(ArmCommand(joints=target, gripper=0.25))
        assert np.array_equal(sent.joints, target) and sent.gripper == 0.25
        wait_until(lambda: np.allclose(arm.state().joints, target, atol=1e-9), 2.0,
                   "the arm to reach the commanded joints")
        assert arm.state().gripper == 0.25 and arm.last_acked_command_seq == arm.command_seq == 1
        assert arm.state().ee_pose.position[2] == pytest.approx(0.2 + 0.001)
        with pytest.raises(ValueError, match="6"):
            arm.command(ArmCommand(joints=np.zeros(3), gripper=0.5))
    # UDP: the hold datagram reaches the controller asynchronously after disconnect returns
    wait_until(lambda: ep.MSG_HOLD in ctl.types_received(), 2.0, "the hold datagram sent on disconnect")


def test_heartbeat_keeps_watchdog_quiet(ctl):
    with _arm(ctl, heartbeat_s=0.02) as arm:
        _state_when_ready(arm)
        time.sleep(3 * ctl.watchdog_s)  # three watchdog periods in which it must not trip
        wait_until(lambda: ctl.types_received().count(ep.MSG_HEARTBEAT) >= 10, 2.0,
                   "10 heartbeats at the controller")
        assert ctl.watchdog_trips == 0


def test_estop_and_resume(ctl):
    with _arm(ctl) as arm:
        _state_when_ready(arm)
        arm.estop()
        wait_until(lambda: ctl.flags & ep.FLAG_ESTOP, 2.0, "the controller to latch the e-stop")
        with pytest.raises(DeviceFaultError, match="resume"):
            arm.command(ArmCommand(joints=np.zeros(6), gripper=0.5))
        arm.resume()
        wait_until(lambda: not ctl.flags & ep.FLAG_ESTOP, 2.0, "the controller to clear the e-stop")
        arm.command(ArmCommand(joints=np.zeros(6), gripper=0.5))


def test_corrupt_state_frames_are_dropped_and_counted(ctl):
    with _arm(ctl) as arm:
        _state_when_ready(arm)
        ctl.corrupt_states = 3
        wait_until(lambda: arm.crc_errors == 3, 2.0, "3 corrupt state frames counted")
        arm.state()  # later good frames still flow


def test_host_corrupt_frame_gets_error_from_controller(ctl):
    with _arm(ctl) as arm:
        _state_when_ready(arm)
        bad = bytearray(ep.encode_frame(ep.MSG_COMMAND, 99, 0, ep.pack_command(0.5, np.ones(6))))
        bad[-2] ^= 0xFF
        arm._sock.sendall(bytes(bad))
        wait_until(lambda: arm.controller_errors and arm.controller_errors[0][0] == ep.ERR_CRC, 2.0,
                   "the controller's CRC error reply")
        assert not np.any(ctl.target == 1.0)  # the corrupt command was not applied


def test_silent_controller_times_out(ctl):
    with _arm(ctl, state_timeout_s=0.05) as arm:
        _state_when_ready(arm)
        ctl.paused.set()
        wait_until(lambda: not _try_state(arm), 2.0, "the paused controller's state to go stale")
        with pytest.raises(DeviceFaultError, match=r"127.0.0.1.*silent"):
            arm.state()
        ctl.paused.clear()
        wait_until(lambda: _try_state(arm), 2.0, "fresh state after the controller resumes")


def _try_state(arm):
    try:
        arm.state()
        return True
    except DeviceFaultError:
        return False


def test_controller_disconnect_is_a_fault(ctl):
    arm = _arm(ctl)
    arm.connect()
    _state_when_ready(arm)
    ctl.drop()
    wait_until(lambda: arm._link_error is not None, 2.0, "the arm to notice the dropped link")
    with pytest.raises(DeviceFaultError, match="link lost"):
        arm.state()
    with pytest.raises(DeviceFaultError, match="link lost"):
        arm.command(ArmCommand(joints=np.zeros(6), gripper=0.5))
    arm.disconnect()
    arm.connect()  # the emulator accepts again
    _state_when_ready(arm)
    arm.disconnect()


def test_connect_failures():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DeviceFaultError, match=f"127.0.0.1:{port}.*cannot connect"):
        EthernetArm(EthernetArmConfig(host="127.0.0.1", port=port, connect_timeout_s=0.5)).connect()
    with ArmControllerEmulator(n_joints=7) as c:
        with pytest.raises(DeviceFaultError, match="7 joints"):
            EthernetArm(EthernetArmConfig(host="127.0.0.1", port=c.port)).connect()
    srv = socket.create_server(("127.0.0.1", 0))  # accepts but never says HELLO
    try:
        with pytest.raises(DeviceFaultError, match="no HELLO"):
            EthernetArm(EthernetArmConfig(host="127.0.0.1", port=srv.getsockname()[1], connect_timeout_s=0.2)).connect()
    finally:
        srv.close()
