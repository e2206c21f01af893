"""FrankaArm (FR3 over libfranka) against a silent TCP server, and against franky-sim (MuJoCo) in a child
process (franka_sim_server.py): state, streaming in both command modes, the hand, faults and recovery,
a controller that goes silent or dies, and the control loop driving the arm."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading
import time
import types

import numpy as np
import pytest

from edgebridge.config import ConfigError, from_dict
from edgebridge.contracts import ActionChunk, ArmCommand
from edgebridge.drivers.franka import FrankaArm, FrankaArmConfig
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError, MissingExtraError
from edgebridge.interfaces import Arm
from edgebridge.runtime.config import load_robot_config
from franka_sim_server import SimServer, free_loopback, ports_free
from helpers.waiting import wait_until

AMP, FREQ = 0.1, 0.3  # the joint sinusoid streamed in the tracking tests (rad, Hz)
HOME = np.array([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])  # franky-sim's start pose


def _franky():
    return pytest.importorskip("franky", reason="franky-control (extra 'franka') not installed")


@pytest.fixture(scope="module")
def sim_server():
    _franky()
    pytest.importorskip("franky_sim", reason="franky-sim (extra 'dev') not installed: no simulated FR3")
    srv = SimServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop() if srv.alive else srv.kill()
        assert ports_free(srv.host), "the franky-sim server left its ports bound"


@pytest.fixture
def host(sim_server):
    """The simulated robot's address; a server a previous test killed or stopped is started again."""
    if not sim_server.alive:
        sim_server.start()
    return sim_server.host


@pytest.fixture
def arm(host):
    a = FrankaArm(FrankaArmConfig(host=host, realtime=False))
    a.connect()
    try:
        yield a
    finally:
        a.disconnect()


def _ref(q0, t):
    """q0 + AMP sin(2 pi FREQ t), eased in over the first 0.5 s."""
    return q0 + (0.5 - 0.5 * np.cos(np.pi * min(t / 0.5, 1.0))) * AMP * np.sin(2 * np.pi * FREQ * t)


def _stream(arm, duration_s, rate_hz=200.0, q0=None, gripper=1.0):
    """Stream ``_ref`` at ``rate_hz`` on absolute deadlines; returns the RMS (rad) of measured - reference
    from 0.1 s after the ease-in. Bounds in the tests leave room for a loaded 2-core machine; the figures
    are benchmarks/arm_tracking.py's."""
    q0 = arm.state().joints.copy() if q0 is None else q0
    period, errs = 1.0 / rate_hz, []
    t0 = t_next = time.monotonic()
    while (t := time.monotonic() - t0) < duration_s:
        st = arm.state()
        if t > 0.6:
            errs.append(st.joints - _ref(q0, t))
        arm.command(ArmCommand(_ref(q0, t + period), gripper))
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    return float(np.sqrt(np.mean(np.square(errs)))) if errs else 0.0


# --------------------------------------------------------------------------- without a robot


def test_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="command_mode"):
        FrankaArmConfig(host="172.16.0.2", command_mode="torque")
    with pytest.raises(ConfigError, match="stiffness"):
        FrankaArmConfig(host="172.16.0.2", stiffness=(600.0,) * 6)
    with pytest.raises(ConfigError, match="grasp_force_n"):
        FrankaArmConfig(host="172.16.0.2", grasp_force_n=500.0)


def test_fr3_setup_loads():
    cfg = load_robot_config("fr3_franky")
    assert cfg.arm.driver == "franka" and cfg.camera.driver == "realsense"
    arm_cfg = from_dict(FrankaArmConfig, dict(cfg.arm.options), prefix="arm.options.")
    assert arm_cfg.command_mode == "impedance" and arm_cfg.realtime and arm_cfg.gripper
    assert cfg.limits.n_joints == 7 and cfg.limits.joint_upper[3] < 0 < cfg.limits.joint_lower[5]
    assert cfg.kinematics["ee_frame"] == "panda_grasptarget"


def test_missing_franky_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)
    arm = FrankaArm(FrankaArmConfig(host="127.0.0.1"))
    with pytest.raises(MissingExtraError) as e:
        arm.connect()
    assert "edgebridge[franka]" in str(e.value) and "\n" not in str(e.value)
    assert not arm.is_connected
    with pytest.raises(DeviceNotConnectedError):
        arm.state()


def test_nothing_listening_is_a_clear_error():
    _franky()
    host = free_loopback()
    t0 = time.monotonic()
    with pytest.raises(DeviceFaultError, match="cannot connect.*FCI"):
        FrankaArm(FrankaArmConfig(host=host, realtime=False)).connect()
    assert time.monotonic() - t0 < 1.0


def _go_to(arm, q_goal, seconds=1.0, rate_hz=200.0):
    """Stream an eased joint path from the last command (or the present joints) to ``q_goal``."""
    q_start = arm.last_sent.joints if arm.last_sent is not None else arm.state().joints
    for k in range(1, int(seconds * rate_hz) + 1):
        s = 0.5 - 0.5 * np.cos(np.pi * k / (seconds * rate_hz))
        arm.state()
        arm.command(ArmCommand(q_start + s * (q_goal - q_start), 1.0))
        time.sleep(1.0 / rate_hz)


def _settled(arm, tol=1e-3):
    """The joints once they moved less than ``tol`` rad over 0.1 s, else None (for wait_until)."""
    q = arm.state().joints
    time.sleep(0.1)
    q2 = arm.state().joints
    return (q2,) if np.abs(q2 - q).max() < tol else None


def _franka_threads():
    return [t for t in threading.enumerate() if t.name.startswith("franka-") and t.is_alive()]


def test_silent_controller_times_out_and_leaves_nothing_behind():
    """A server that accepts TCP 1337 and never answers: connect ends in a clear error within its
    deadline, the blocked libfranka call is cut loose (its thread ends, the server sees the socket
    close) and the next attempt is not blocked by the first."""
    _franky()
    host = free_loopback()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 1337))
    srv.listen(4)
    srv.settimeout(2.0)
    try:
        for attempt in range(2):
            arm = FrankaArm(FrankaArmConfig(host=host, realtime=False, connect_timeout_s=0.3))
            t0 = time.monotonic()
            with pytest.raises(DeviceFaultError, match="accepted the connection but did not answer within 0.3 s"):
                arm.connect()
            assert time.monotonic() - t0 < 1.5, f"attempt {attempt}: connect overran its deadline"
            conn, _ = srv.accept()
            conn.settimeout(2.0)
            with conn:  # libfranka's side is shut down: the server reads what it sent, then EOF
                while conn.recv(4096):
                    pass
            wait_until(lambda: not _franka_threads(), 2.0, "the connect thread to end")
            assert not arm.is_connected
    finally:
        srv.close()


# --------------------------------------------------------------------------- against franky-sim


def test_connect_reads_state_and_never_moves(arm):
    from edgebridge.drivers.kinematics import Kinematics

    assert isinstance(arm, Arm)
    st = arm.state()
    time.sleep(0.3)
    st2 = arm.state()
    assert np.abs(st2.joints - st.joints).max() < 1e-4, "the arm moved on connect"
    assert not arm._robot.is_in_control, "connect started a motion"
    assert st.joints.shape == (7,) and st.joint_velocities.shape == (7,)
    assert st.gripper == pytest.approx(0.5, abs=0.01)  # franky-sim's hand starts at 40 of 80 mm
    # libfranka's O_T_EE agrees with the setup's kinematics (Panda URDF, panda_grasptarget) to 2 mm
    ee = Kinematics().fk(st.joints)
    assert np.linalg.norm(ee.position - st.ee_pose.position) < 2e-3
    assert abs(abs(float(np.dot(ee.quat, st.ee_pose.quat))) - 1) < 1e-4


@pytest.mark.parametrize("mode, rms_max", [("impedance", 0.12 * AMP), ("motion", 0.3 * AMP)])
def test_streams_joint_targets(host, mode, rms_max):
    with FrankaArm(FrankaArmConfig(host=host, realtime=False, command_mode=mode, gripper=False)) as arm:
        q0 = arm.state().joints.copy()
        rms = _stream(arm, 1.2, q0=q0)
        assert rms < rms_max, f"{mode}: tracking error {rms * 1e3:.1f} mrad RMS"
        arm.hold()
        q_hold, = wait_until(lambda: _settled(arm), 2.0, "the arm to stop after hold()")
        assert arm.state().gripper == 1.0  # no hand configured
    assert np.abs(q_hold - q0).max() < 2 * AMP + 0.02


def test_gripper_grasps_and_opens(arm):
    arm.command(ArmCommand(arm.state().joints, 0.0))  # a close: grasp with force
    wait_until(lambda: arm.state().gripper < 0.05, 3.0, "the hand to close")
    arm.command(ArmCommand(arm.state().joints, 1.0))
    wait_until(lambda: arm.state().gripper > 0.95, 3.0, "the hand to open")
    assert arm.last_sent.gripper == 1.0


def test_estop_stops_and_refuses_until_resume(arm):
    _stream(arm, 0.3)
    arm.estop()
    assert not arm._robot.is_in_control
    with pytest.raises(DeviceFaultError, match="estop"):
        arm.command(ArmCommand(arm.state().joints, 1.0))
    arm.resume()
    arm.command(ArmCommand(arm.state().joints, 1.0))
    assert arm._robot.is_in_control


def test_reflex_becomes_hold_then_fault_then_recovery(arm, monkeypatch):
    franky = _franky()
    q0 = arm.state().joints.copy()
    _stream(arm, 0.3, q0=q0)
    reflex = franky.ControlException('libfranka: Move command aborted: motion aborted by reflex! ["joint_reflex"]')

    def poll_motion():
        raise reflex

    monkeypatch.setattr(arm._robot, "poll_motion", poll_motion)
    with pytest.raises(DeviceFaultError, match="joint_reflex.*resume"):
        arm.command(ArmCommand(q0, 1.0))
    monkeypatch.undo()
    assert not arm._robot.is_in_control  # our motion is stopped: the robot holds by itself
    q_held, = wait_until(lambda: _settled(arm), 2.0, "the arm to stop")
    time.sleep(0.2)
    assert np.abs(arm.state().joints - q_held).max() < 2e-3
    with pytest.raises(DeviceFaultError, match="resume"):
        arm.command(ArmCommand(q0, 1.0))
    arm.hold()  # a hold while faulted is harmless
    recovered = []
    orig = arm._robot.recover_from_errors
    monkeypatch.setattr(arm._robot, "recover_from_errors", lambda: recovered.append(1) or orig())
    arm.resume()
    assert recovered == [1]
    assert _stream(arm, 0.8, q0=arm.state().joints.copy()) < 0.25 * AMP


def test_reflex_or_user_stop_in_the_state_is_a_fault(arm, monkeypatch):
    franky = _franky()
    real = type(arm._robot).state

    def state_in(mode):
        def fake(robot):
            st = real.__get__(robot)
            return types.SimpleNamespace(q=st.q, dq=st.dq, O_T_EE=st.O_T_EE, time=st.time, robot_mode=mode,
                                         last_motion_errors='["cartesian_reflex"]')
        return property(fake)

    monkeypatch.setattr(type(arm._robot), "state", state_in(franky.RobotMode.UserStopped))
    with pytest.raises(DeviceFaultError, match="UserStopped mode .the user stop is pressed"):
        arm.state()
    arm.resume()  # the sim's recovery succeeds; the fake state says the stop is still pressed
    monkeypatch.setattr(type(arm._robot), "state", state_in(franky.RobotMode.Reflex))
    with pytest.raises(DeviceFaultError, match=r"Reflex mode \(robot errors: \[\"cartesian_reflex\"\]\)"):
        arm.state()
    monkeypatch.undo()
    arm.resume()
    assert arm.state().joints.shape == (7,)
    arm.command(ArmCommand(arm.state().joints, 1.0))


def test_an_impossible_state_is_a_fault_naming_it(arm, monkeypatch):
    real = type(arm._robot).state

    def with_q(q):
        def fake(robot):
            st = real.__get__(robot)
            return types.SimpleNamespace(q=q, dq=st.dq, O_T_EE=st.O_T_EE, time=st.time, robot_mode=st.robot_mode)
        return property(fake)

    monkeypatch.setattr(type(arm._robot), "state", with_q([0.0, float("nan"), 0, -1.5, 0, 1.5, 0.8]))
    with pytest.raises(DeviceFaultError, match=r"impossible state \(joints \(7,\) with non-finite values\)"):
        arm.state()
    monkeypatch.setattr(type(arm._robot), "state", with_q([0.0, 0.1]))
    with pytest.raises(DeviceFaultError, match=r"joints \(2,\)"):
        arm.state()
    monkeypatch.undo()
    assert arm.state().joints.shape == (7,)  # the next good frame is a state again


def test_controller_goes_silent_mid_motion(sim_server, arm):
    """SIGSTOP the server while streaming: the stale robot clock is a fault within state_timeout_s; after
    SIGCONT, resume() reconnects (the blocked connection was cut) and the arm streams again."""
    _stream(arm, 0.3)
    os.killpg(sim_server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceFaultError, match="no new state|no answer"):
            for _ in range(1000):
                arm.state()
                time.sleep(0.005)
        assert time.monotonic() - t0 < arm.config.state_timeout_s + arm.config.call_timeout_s + 0.3
        with pytest.raises(DeviceFaultError, match="lost the controller"):
            arm.command(ArmCommand(arm.last_sent.joints, 1.0))
    finally:
        os.killpg(sim_server.proc.pid, signal.SIGCONT)
    arm.resume()
    assert _stream(arm, 0.8) < 0.25 * AMP  # it streams again (tracking itself: test_streams_joint_targets)


def test_control_loop_drives_the_arm(host):
    """The runtime's ControlLoop (fr3_franky limits and loop settings, Panda URDF kinematics) follows a
    5 cm end-effector chunk through the driver."""
    from edgebridge.clock import MonotonicClock
    from edgebridge.drivers.kinematics import Kinematics
    from edgebridge.runtime.loop import ControlLoop
    from edgebridge.runtime.watchdog import Watchdog

    setup = load_robot_config("fr3_franky")
    cfg = dataclasses.replace(setup.loop, rate_hz=200.0, realtime_priority=0, cpu=-1, chunk_timeout_s=2.0)
    kin = Kinematics()
    with FrankaArm(FrankaArmConfig(host=host, realtime=False)) as arm:
        _go_to(arm, HOME, seconds=0.6)  # earlier tests leave the arm anywhere; the chunk starts in the workspace's middle
        arm.hold()
        loop = ControlLoop(arm, setup.limits, cfg, kin, clock=MonotonicClock(), watchdog=Watchdog(cfg.chunk_timeout_s))
        loop.prepare()
        st = arm.state()
        p0, quat = kin.fk(st.joints).position, st.ee_pose.quat
        p1 = p0 + np.array([0.0, 0.05, -0.03])
        n = 11
        poses = np.zeros((n, 8))
        poses[:, :3] = np.linspace(p0, p1, n)
        poses[:, 3:7] = quat if quat[3] >= 0 else -quat
        poses[:, 7] = 1.0
        loop.inbox.put(ActionChunk(poses, time.monotonic_ns(), 0.1))
        res = loop.run(duration_s=1.5)
        reached = kin.fk(arm.state().joints).position
    assert not res.fault, res.reason
    assert res.sent > 100 and sum(res.rejections.values()) == 0, (res, p0, st.joints)
    assert np.linalg.norm(reached - p1) < 5e-3, f"ended {np.round((reached - p1) * 1e3, 1)} mm from the target"


def test_controller_dies_mid_motion(sim_server, host):
    arm = FrankaArm(FrankaArmConfig(host=host, realtime=False))
    arm.connect()
    try:
        _stream(arm, 0.3)
        sim_server.kill()
        t0 = time.monotonic()
        with pytest.raises(DeviceFaultError, match="lost the controller"):
            for _ in range(1000):
                arm.state()
                arm.command(ArmCommand(arm.last_sent.joints, 1.0))
                time.sleep(0.005)
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(DeviceFaultError, match="lost the controller"):
            arm.command(ArmCommand(arm.last_sent.joints, 1.0))
        sim_server.start()  # the controller is back: resume() reconnects the robot and the hand
        arm.resume()
        arm.command(ArmCommand(arm.state().joints, 1.0))
        assert arm.state().gripper > 0.4
    finally:
        t0 = time.monotonic()
        arm.disconnect()
        assert time.monotonic() - t0 < 2.0
    wait_until(lambda: not _franka_threads(), 2.0, "the driver's threads to end")
