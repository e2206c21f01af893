"""A Franka Research 3 over libfranka (``franky-control``, extra ``franka``) implementing the ``Arm`` interface.

- ``connect()``: opens libfranka's connection (TCP 1337 + UDP state) and the Franka Hand's (TCP 1338) and
  reads the state. Nothing moves: no motion starts before the first ``command``.
- ``state()``: joints, joint velocities and ``O_T_EE`` from libfranka's robot state; the gripper opening
  (width / max width) from a thread that polls the hand. A robot clock that stops advancing for
  ``state_timeout_s``, a reflex or a pressed user stop raise ``DeviceFaultError``.
- ``command(cmd)``: streams the joint target. ``command_mode = "impedance"`` (default): a
  ``JointImpedanceTracker`` (libfranka's 1 kHz torque loop) gets each target and its velocity;
  ``"motion"``: an asynchronous ``JointMotion`` aimed ``lookahead_s`` ahead along the command velocity,
  re-issued at most every ``motion_reissue_s``. Impedance was chosen by measurement
  (``benchmarks/arm_tracking.py``; docs/drivers.md).
  The gripper scalar (0 closed, 1 open) is handed to the hand thread: below ``grasp_below`` a grasp with
  ``grasp_force_n``, otherwise a move to that fraction of the hand's width.
- ``hold()``: target = present (only once a motion runs; before that the robot holds by itself).
- A reflex, a libfranka error or a lost controller stops the motion, then raises ``DeviceFaultError``
  naming the cause; ``command`` refuses until ``resume()``, which reconnects when the link was lost and
  runs libfranka's automatic error recovery (``recover_from_errors``).
- Time limits: every franky call runs on one worker thread and is waited for with a deadline
  (``connect_timeout_s`` for the connection, ``call_timeout_s`` for the rest). A call past its deadline
  shuts down this process's sockets to the controller, so the blocked libfranka call ends and nothing is
  left holding the connection; the arm then reports the link as lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..contracts import ArmCommand, ArmState, Pose, now_ns
from ..errors import DeviceFaultError, require
from ..interfaces import DeviceBase
from .franka_calls import GRIPPER_PORT, ROBOT_PORT, CallTimeout, _Caller, cut_connections
from .franka_config import DEFAULT_STIFFNESS, N_JOINTS, FrankaArmConfig  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class FrankaArm(DeviceBase):
    """Franka FR3 through libfranka (see module docstring)."""

    def __init__(self, config: FrankaArmConfig) -> None:
        super().__init__()
        self.config = config
        self.name = f"Franka arm at {config.host}"
        self.last_sent: ArmCommand | None = None
        self.gripper_max_width = config.gripper_max_width_m
        self._fk = None
        self._caller: _Caller | None = None
        self._robot = None
        self._tracker = None
        self._moving = False  # a motion of ours runs (after the first command)
        self._fault: str | None = None
        self._link_lost: str | None = None
        self._estopped = False
        self._prev_cmd: tuple[float, np.ndarray] | None = None
        self._dq_max = np.zeros(N_JOINTS)
        self._issued = 0.0  # motion mode: when the last JointMotion was issued (monotonic s)
        self._clock: tuple[float, float] = (-1.0, 0.0)  # (robot time s, monotonic s when it last advanced)
        self._gripper_goal: float | None = None
        self._gripper_width: tuple[float, float] | None = None  # (width m, monotonic s)
        self._gripper_error: str | None = None
        self._gripper_stop = threading.Event()
        self._gripper_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self._connected:
            return
        self._fk = require("franky", "franka", "the Franka driver (franky-control, libfranka 0.21 for FR3)")
        self._open_robot()
        if self.config.gripper:
            try:
                self._open_gripper()
            except BaseException:
                self._close_robot()
                raise
        self._fault = self._link_lost = None
        self._estopped = False
        self._connected = True
        log.info("%s connected (%s mode%s)", self.name, self.config.command_mode,
                 ", Franka Hand" if self.config.gripper else "")

    def _open_robot(self) -> None:
        fk, c = self._fk, self.config
        rt = fk.RealtimeConfig.Enforce if c.realtime else fk.RealtimeConfig.Ignore
        self._caller = _Caller(f"franka-{c.host}")
        try:
            self._robot = self._caller.call(
                lambda: fk.Robot(c.host, realtime_config=rt, relative_dynamics_factor=c.relative_dynamics_factor),
                c.connect_timeout_s, "connect")
            st = self._caller.call(lambda: self._robot.state, c.call_timeout_s, "first state")
            dq_max = self._caller.call(lambda: np.array(self._robot.joint_velocity_limit.get(), dtype=np.float64),
                                       c.call_timeout_s, "velocity limits")
        except BaseException as e:
            self._close_robot()
            raise DeviceFaultError(self._connect_error(e)) from e
        if len(st.q) != N_JOINTS:
            self._close_robot()
            raise DeviceFaultError(f"{self.name}: the robot reports {len(st.q)} joints, the driver expects {N_JOINTS}")
        self._tracker, self._moving, self._prev_cmd = None, False, None
        self._clock = (-1.0, 0.0)
        # the velocity sent with a target stays inside franky's motion limits (its planner refuses more)
        self._dq_max = dq_max * c.relative_dynamics_factor

    def _connect_error(self, e: BaseException) -> str:
        fk, c, where = self._fk, self.config, f"{self.name}:{ROBOT_PORT}"
        if isinstance(e, CallTimeout):
            return (f"{where}: the controller accepted the connection but did not answer within "
                    f"{c.connect_timeout_s} s; check that FCI is activated in Desk and that nothing else holds the "
                    f"robot's connection (connect_timeout_s)")
        if isinstance(e, fk.IncompatibleVersionException):
            return (f"{where}: {e}; franky-control's libfranka 0.21 speaks the FR3 protocol: a Panda or an older FR3 "
                    f"system image needs franky built against the libfranka its firmware supports")
        if isinstance(e, fk.RealtimeException):
            return f"{where}: {e}; run on a PREEMPT_RT kernel (docs/drivers.md), or realtime = false for a simulator"
        return (f"{where}: cannot connect ({type(e).__name__}: {e}); check the robot is powered, FCI activated, "
                f"its IP address and the cable to the Control box's LAN port")

    def _open_gripper(self) -> None:
        fk, c = self._fk, self.config
        try:
            g = self._caller.call(lambda: fk.Gripper(c.host), c.connect_timeout_s, "gripper connect")
            gs = self._caller.call(lambda: g.state, c.call_timeout_s, "gripper state")
        except BaseException as e:
            if isinstance(e, CallTimeout):
                cut_connections(c.host, (GRIPPER_PORT,))
            raise DeviceFaultError(f"{self.name}:{GRIPPER_PORT}: cannot reach the Franka Hand ({type(e).__name__}: "
                                   f"{e}); check it is mounted and enabled in Desk, or set gripper = false") from e
        if gs.max_width > 0:
            self.gripper_max_width = float(gs.max_width)
        else:
            log.warning("%s: the hand reports max width 0 (not homed); using gripper_max_width_m = %.3f m. "
                        "Home it once from Desk", self.name, c.gripper_max_width_m)
        self._gripper_width = (float(gs.width), time.monotonic())
        self._gripper_goal, self._gripper_error = None, None
        self._gripper_stop.clear()
        self._gripper_thread = threading.Thread(target=self._gripper_loop, args=(g,), name=f"franka-hand-{c.host}",
                                                daemon=True)
        self._gripper_thread.start()

    def disconnect(self) -> None:
        try:
            if self._caller is not None and self._moving and self._fault is None and self._link_lost is None:
                self._stop_motion(gently=True)
        except DeviceFaultError as e:
            log.error("%s: could not stop the motion while disconnecting: %s", self.name, e)
        finally:
            self._close_gripper()
            self._close_robot()
            self._connected = False

    def _close_gripper(self) -> None:
        t = self._gripper_thread
        if t is None:
            return
        self._gripper_stop.set()
        t.join(self.config.call_timeout_s)
        if t.is_alive():
            cut_connections(self.config.host, (GRIPPER_PORT,))
            t.join(self.config.call_timeout_s)
        self._gripper_thread = None

    def _close_robot(self) -> None:
        """Drop the robot on the worker thread (libfranka's destructor may block); cut it when that overruns."""
        caller, box = self._caller, [self._robot, self._tracker]
        self._robot = self._tracker = None
        self._moving = False
        if caller is None:
            return
        try:
            caller.call(box.clear, max(self.config.call_timeout_s, 1.5), "close")  # libfranka's UDP timeout: 1 s
        except CallTimeout:
            pass
        n = cut_connections(self.config.host, (ROBOT_PORT,))  # 0 unless a call is stuck or the Robot is held elsewhere
        if n or caller.stuck is not None:
            log.warning("%s: cut %d connection(s) to the controller left open (stuck call: %s)", self.name, n,
                        caller.stuck)
        caller.close()
        self._caller = None

    # ------------------------------------------------------------------ calls and faults
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        if self._caller is None:
            raise DeviceFaultError(f"{self.name}: no connection to the controller ({self._link_lost}); call resume()")
        try:
            return self._caller.call(fn, self.config.call_timeout_s, what)
        except CallTimeout as e:
            self._lose_link(str(e), e)
        except self._fk.NetworkException as e:
            self._lose_link(f"{what}: {e}", e)
        except DeviceFaultError:
            raise
        except Exception as e:  # franky's exceptions, and the RuntimeErrors of its motion planner
            self._fail(f"{what}: {type(e).__name__}: {e}", e)

    def _lose_link(self, why: str, e: BaseException | None = None):
        self._link_lost = why
        self._fault = self._fault or why
        self._tracker, self._moving = None, False
        cut_connections(self.config.host, (ROBOT_PORT,))
        raise DeviceFaultError(f"{self.name}: lost the controller ({why}); the robot stops by itself when "
                               f"its connection ends. Check the network and the robot, then resume()") from e

    def _fail(self, why: str, e: BaseException | None = None):
        """A reflex or libfranka error: stop our motion (the robot holds), record it, raise."""
        errors = self._motion_errors()
        self._fault = why + (f" (robot errors: {errors})" if errors else "")
        try:
            self._stop_motion(gently=False)
        except DeviceFaultError as e2:
            log.error("%s: could not stop the motion after a fault: %s", self.name, e2)
        raise DeviceFaultError(f"{self.name}: {self._fault}; the arm holds. Clear the cause (e.g. free the arm "
                               f"from a collision), then resume() (libfranka's automatic error recovery)") from e

    def _motion_errors(self) -> str:
        try:
            st = self._caller.call(lambda: self._robot.state, self.config.call_timeout_s, "error state")
            s = str(st.last_motion_errors)
            return "" if s in ("", "[]") else s
        except Exception:
            return ""

    def _stop_motion(self, gently: bool) -> None:
        """End our motion: the robot then holds its position by itself. ``gently``: ramp the impedance
        controller down (TorqueStopMotion) instead of preempting it."""
        robot, tracker = self._robot, self._tracker
        self._tracker, self._moving = None, False
        if robot is None:
            return

        def stop() -> None:
            try:
                if gently and tracker is not None:
                    tracker.stop()
                else:
                    robot.stop()
                    robot.join_motion(self.config.call_timeout_s)
            except self._fk.NetworkException:
                raise
            except self._fk.Exception as e:  # the preemption we asked for, or the fault already raised
                log.debug("%s: motion ended: %s", self.name, e)

        try:
            self._caller.call(stop, max(self.config.call_timeout_s, 2.0), "stop")
        except Exception as e:  # no answer, a broken connection, a dead Robot ("Net Exception")
            self._link_lost = self._link_lost or f"stop: {type(e).__name__}: {e}"
            cut_connections(self.config.host, (ROBOT_PORT,))
            raise DeviceFaultError(f"{self.name}: could not stop the motion ({e})") from e

    def _linked(self) -> None:
        self._require_connected()
        if self._link_lost is not None:
            raise DeviceFaultError(f"{self.name}: lost the controller ({self._link_lost}); call resume()")

    def _usable(self) -> None:
        self._linked()
        if self._estopped:
            raise DeviceFaultError(f"{self.name}: stopped by estop(); call resume() once the arm is safe")
        if self._fault is not None:
            raise DeviceFaultError(f"{self.name}: faulted ({self._fault}); clear the cause, then call resume()")

    # ------------------------------------------------------------------ Arm interface
    def state(self) -> ArmState:
        self._linked()
        st = self._call(lambda: self._robot.state, "state")
        now = time.monotonic()
        t_robot = st.time.to_sec()
        if t_robot != self._clock[0]:
            self._clock = (t_robot, now)
        elif now - self._clock[1] > self.config.state_timeout_s:
            self._lose_link(f"no new state for {(now - self._clock[1]) * 1e3:.0f} ms (robot clock stuck at "
                            f"{t_robot:.3f} s, state_timeout_s = {self.config.state_timeout_s})")
        mode = str(st.robot_mode).rsplit(".", 1)[-1]
        if mode in ("Reflex", "UserStopped") and self._fault is None and not self._estopped:
            self._fail(f"robot in {mode} mode" + ("" if mode == "Reflex" else " (the user stop is pressed)"))
        q, dq, T = (np.asarray(x, dtype=np.float64) for x in (st.q, st.dq, st.O_T_EE.matrix))
        bad = [f"{name} {arr.shape}" + ("" if np.all(np.isfinite(arr)) else " with non-finite values")
               for name, arr, shape in (("joints", q, (7,)), ("velocities", dq, (7,)), ("O_T_EE", T, (4, 4)))
               if arr.shape != shape or not np.all(np.isfinite(arr))]
        if bad:  # a frame libfranka accepted but no arm can be in: a fault, never a state for the loop
            raise DeviceFaultError(f"{self.name}: the controller sent an impossible state ({'; '.join(bad)}); "
                                   f"the arm is not commanded; check the controller, then resume()")
        return ArmState(joints=q, ee_pose=Pose.from_matrix(T), gripper=self._gripper_fraction(now),
                        joint_velocities=dq, stamp_ns=now_ns())

    def _gripper_fraction(self, now: float) -> float:
        if not self.config.gripper:
            return 1.0
        if self._gripper_error is not None:
            raise DeviceFaultError(f"{self.name}: the Franka Hand failed ({self._gripper_error}); disconnect() and "
                                   f"connect() again, or set gripper = false")
        width, t = self._gripper_width
        if now - t > self.config.gripper_timeout_s:
            raise DeviceFaultError(f"{self.name}: no Franka Hand state for {now - t:.1f} s (gripper_timeout_s = "
                                   f"{self.config.gripper_timeout_s}); check the hand")
        return float(np.clip(width / self.gripper_max_width, 0.0, 1.0))

    def command(self, cmd: ArmCommand) -> ArmCommand:
        """Stream ``cmd`` (joint target, gripper goal); returns what was sent."""
        self._usable()
        if not isinstance(cmd, ArmCommand):
            raise TypeError(f"{self.name}: command() takes an ArmCommand, got {type(cmd).__name__}")
        if cmd.joints.shape != (N_JOINTS,):
            raise ValueError(f"{self.name}: command has {cmd.joints.shape[0]} joints, the arm has {N_JOINTS}")
        q = cmd.joints.copy()
        now = time.monotonic()
        dq = np.zeros(N_JOINTS)
        prev = self._prev_cmd
        if self.config.velocity_feedforward and prev is not None and 0 < now - prev[0] < 0.1:
            dq = np.clip((q - prev[1]) / (now - prev[0]), -self._dq_max, self._dq_max)
        self._prev_cmd = (now, q)
        self._call(lambda: self._send(q, dq, now), "command")
        if self.config.gripper:
            g = float(cmd.gripper)
            goal = self._gripper_goal
            if goal is None or abs(g - goal) >= self.config.gripper_deadband or \
                    (g < self.config.grasp_below) != (goal < self.config.grasp_below):
                self._gripper_goal = g
        sent = ArmCommand(joints=q, gripper=self._gripper_goal if self.config.gripper else cmd.gripper,
                          ee_target=cmd.ee_target, stamp_ns=now_ns())
        self.last_sent = sent
        return sent

    def _send(self, q: np.ndarray, dq: np.ndarray, now: float) -> None:
        """On the worker thread: start our motion with the first target, then update it."""
        fk, c, robot = self._fk, self.config, self._robot
        if c.command_mode == "impedance":
            if self._tracker is None:
                self._tracker = fk.JointImpedanceTracker(
                    robot, stiffness=np.asarray(c.stiffness, dtype=np.float64),
                    damping=None if c.damping is None else np.asarray(c.damping, dtype=np.float64))
                self._moving = True
            else:
                robot.poll_motion()  # raises what ended the motion (reflex, libfranka error)
                if not robot.is_in_control:
                    raise fk.ControlException("the impedance controller stopped without an error")
            self._tracker.set_target(q, dq)
        else:
            if self._moving:
                robot.poll_motion()
                if now - self._issued < c.motion_reissue_s:
                    return
            target = fk.JointState(q + dq * c.lookahead_s, dq)
            robot.move(fk.JointMotion(target, return_when_finished=False), asynchronous=True)
            self._moving, self._issued = True, now

    def hold(self) -> None:
        """Target = present position. Before the first command, and after a fault, the robot holds by itself."""
        self._require_connected()
        if not self._moving or self._fault is not None or self._link_lost is not None:
            return
        fk, robot = self._fk, self._robot

        def hold() -> None:
            q = np.asarray(robot.current_joint_positions, dtype=np.float64)
            if self._tracker is not None:
                self._tracker.set_target(q, np.zeros(N_JOINTS))
            else:
                robot.move(fk.JointMotion(fk.JointState(q), return_when_finished=False), asynchronous=True)

        self._call(hold, "hold")
        self._prev_cmd = None

    def estop(self) -> None:
        """Stop our motion at once (libfranka's stop) and refuse commands until ``resume()``. The robot's own
        emergency stop is the external enabling / stop device; this is not a replacement for it."""
        self._require_connected()
        self._estopped = True
        if self._link_lost is None:
            self._stop_motion(gently=False)
        log.warning("%s: stopped (estop); commands refused until resume()", self.name)

    def resume(self) -> None:
        """Leave a fault or an estop: reconnect what was lost (robot, hand), then libfranka's automatic error
        recovery."""
        self._require_connected()
        if self._link_lost is not None:
            self._close_robot()
            self._open_robot()
            self._link_lost = None
        if self.config.gripper and self._gripper_error is not None:
            self._close_gripper()
            self._open_gripper()
        try:
            ok = self._caller.call(self._robot.recover_from_errors, max(self.config.call_timeout_s, 5.0), "recover")
        except Exception as e:
            if not isinstance(e, (self._fk.CommandException, self._fk.ControlException)):  # the link: reconnect next
                self._link_lost = f"recover: {type(e).__name__}: {e}"
                cut_connections(self.config.host, (ROBOT_PORT,))
            raise DeviceFaultError(f"{self.name}: automatic error recovery failed ({type(e).__name__}: {e}); check "
                                   f"Desk for the error and clear it there, then resume() again") from e
        if ok is False:
            raise DeviceFaultError(f"{self.name}: automatic error recovery was refused; check Desk for the error")
        self._fault, self._estopped, self._prev_cmd = None, False, None
        self._clock = (-1.0, 0.0)
        log.info("%s: resumed", self.name)

    # ------------------------------------------------------------------ the hand
    def _gripper_loop(self, g) -> None:
        """Own thread: poll the width, and run the latest gripper goal once the previous action finished."""
        c, fut, issued = self.config, None, None
        try:
            while not self._gripper_stop.is_set():
                self._gripper_width = (float(g.width), time.monotonic())
                if fut is not None and fut.wait(0.0):
                    try:
                        log.debug("%s: hand action %s -> %s", self.name, issued, fut.get())
                    except self._fk.Exception as e:
                        log.warning("%s: hand action for goal %.2f failed: %s", self.name, issued, e)
                    fut = None
                goal = self._gripper_goal
                if fut is None and goal is not None and goal != issued:
                    if goal < c.grasp_below:
                        if issued is None or issued >= c.grasp_below:
                            fut = g.grasp_async(0.0, c.gripper_speed_mps, c.grasp_force_n, 0.005,
                                                self.gripper_max_width)  # close until contact, any width counts
                    else:
                        fut = g.move_async(goal * self.gripper_max_width, c.gripper_speed_mps)
                    issued = goal
                self._gripper_stop.wait(c.gripper_poll_s)
        except Exception as e:
            self._gripper_error = f"{type(e).__name__}: {e}"
            log.error("%s: Franka Hand thread ended: %s", self.name, self._gripper_error)
        finally:
            del g
