"""An arm with an Ethernet controller, over the TCP protocol of ``ethernet_protocol`` (see there).

One TCP connection (TCP_NODELAY) carries both directions: the controller streams STATE frames at its
rate, the host sends COMMAND / HOLD / ESTOP / RESUME frames and a HEARTBEAT whenever it has sent
nothing for ``heartbeat_s``. A receiver thread decodes frames and keeps the latest state; ``state()``
returns it, or raises ``DeviceFaultError`` when it is older than ``state_timeout_s`` (controller
silent), the link is gone (controller closed the connection, cable pulled), or the controller reports
a fault. Frames with a bad CRC are dropped and counted, never used.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..config import check
from ..contracts import ArmCommand, ArmState, Pose, now_ns
from ..errors import DeviceFaultError
from ..interfaces import DeviceBase
from . import ethernet_protocol as ep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EthernetArmConfig:
    """An arm controller reachable over TCP (``[arm]`` table of the robot setup).

    ``n_joints``: joints the controller must report in its HELLO (a mismatch refuses to connect).
    """

    host: str
    port: int = 30010
    n_joints: int = 6
    connect_timeout_s: float = 2.0
    state_timeout_s: float = 0.1
    heartbeat_s: float = 0.05

    def __post_init__(self) -> None:
        check(bool(self.host), "host", "must be a host name or IP address")
        check(0 < self.port < 65536, "port", f"must be in [1, 65535], got {self.port}")
        check(0 < self.n_joints <= 32, "n_joints", f"must be in [1, 32], got {self.n_joints}")
        check(self.connect_timeout_s > 0, "connect_timeout_s", f"must be > 0, got {self.connect_timeout_s}")
        check(self.state_timeout_s > 0, "state_timeout_s", f"must be > 0, got {self.state_timeout_s}")
        check(0 < self.heartbeat_s < 10, "heartbeat_s", f"must be in (0, 10), got {self.heartbeat_s}")


class EthernetArm(DeviceBase):
    """TCP client for an arm's Ethernet controller (see module docstring)."""

    def __init__(self, config: EthernetArmConfig) -> None:
        super().__init__()
        self.config = config
        self.name = f"Ethernet arm at {config.host}:{config.port}"
        self.hello: ep.Hello | None = None
        self.crc_errors = 0
        self.controller_errors: list[tuple[int, str]] = []
        self.last_sent: ArmCommand | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._latest: tuple[int, ep.StateMsg, int] | None = None  # (receive ns, msg, controller stamp)
        self._link_error: str | None = None
        self._seq = 0
        self._cmd_seq = 0
        self._last_tx = 0.0
        self._estopped = False
        self._reader = ep.FrameReader()

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self._connected:
            return
        c = self.config
        try:
            sock = socket.create_connection((c.host, c.port), timeout=c.connect_timeout_s)
        except OSError as e:
            raise DeviceFaultError(f"{self.name}: cannot connect ({e}); check the controller is powered, "
                                   f"its IP address and port, and the network cable") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            self.hello = self._await_hello()
        except BaseException:
            self._close_socket()
            raise
        if self.hello.n_joints != c.n_joints:
            self._close_socket()
            raise DeviceFaultError(f"{self.name}: controller {self.hello.name!r} reports {self.hello.n_joints} joints, "
                                   f"config says n_joints = {c.n_joints}; fix the [arm] config")
        sock.settimeout(min(c.heartbeat_s, 0.02))
        self._stop.clear()
        self._link_error = None
        self._latest = None
        self._estopped = False
        self._thread = threading.Thread(target=self._rx_loop, name="ethernet-arm-rx", daemon=True)
        self._thread.start()
        self._connected = True
        log.info("%s connected: controller %r, %d joints, state at %.0f Hz", self.name, self.hello.name,
                 self.hello.n_joints, self.hello.state_rate_hz)

    def disconnect(self) -> None:
        if not self._connected:
            return
        try:
            if self._link_error is None and not self._estopped:
                self._send(ep.MSG_HOLD)
        except DeviceFaultError as e:
            log.warning("%s: could not send HOLD while disconnecting: %s", self.name, e)
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            self._close_socket()
            self._connected = False

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _await_hello(self) -> ep.Hello:
        deadline = time.monotonic() + self.config.connect_timeout_s
        while time.monotonic() < deadline:
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError as e:
                raise DeviceFaultError(f"{self.name}: connection failed during handshake ({e})") from e
            if not data:
                raise DeviceFaultError(f"{self.name}: controller closed the connection before its HELLO")
            self._reader.feed(data)
            try:
                frame = self._reader.next()
            except ep.FrameError as e:
                raise DeviceFaultError(f"{self.name}: corrupt HELLO ({e}); check the controller firmware "
                                       f"speaks edgebridge protocol v{ep.VERSION}") from e
            if frame is not None:
                if frame.type != ep.MSG_HELLO:
                    raise DeviceFaultError(f"{self.name}: expected HELLO first, got {frame.name}")
                return ep.Hello.unpack(frame.payload)
        raise DeviceFaultError(f"{self.name}: no HELLO within {self.config.connect_timeout_s} s; is this an "
                               f"edgebridge-protocol controller?")

    # ------------------------------------------------------------------ receiver
    def _rx_loop(self) -> None:
        hb = self.config.heartbeat_s
        while not self._stop.is_set():
            if time.monotonic() - self._last_tx >= hb:
                try:
                    self._send(ep.MSG_HEARTBEAT)
                except DeviceFaultError:
                    return
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                self._lose_link(f"receive failed ({e})")
                return
            if not data:
                self._lose_link("controller closed the connection")
                return
            self._reader.feed(data)
            while True:
                try:
                    frame = self._reader.next()
                except ep.FrameError as e:
                    self.crc_errors += 1
                    log.warning("%s: dropped a corrupt frame: %s", self.name, e)
                    continue
                if frame is None:
                    break
                self._on_frame(frame)

    def _on_frame(self, frame: ep.Frame) -> None:
        if frame.type == ep.MSG_STATE:
            try:
                msg = ep.StateMsg.unpack(frame.payload, self.hello.n_joints)
            except ep.FrameError as e:
                self.crc_errors += 1
                log.warning("%s: dropped a malformed STATE: %s", self.name, e)
                return
            with self._state_lock:
                self._latest = (now_ns(), msg, frame.stamp_ns)
        elif frame.type == ep.MSG_ERROR:
            code, text = ep.unpack_error(frame.payload)
            self.controller_errors.append((code, text))
            log.error("%s: controller error %d: %s", self.name, code, text)
        else:
            log.debug("%s: ignoring %s frame", self.name, frame.name)

    def _lose_link(self, why: str) -> None:
        self._link_error = why
        log.error("%s: link lost: %s", self.name, why)

    # ------------------------------------------------------------------ sending
    def _send(self, msg_type: int, payload: bytes = b"", seq: int | None = None) -> int:
        if self._link_error is not None:
            raise DeviceFaultError(f"{self.name}: link lost ({self._link_error}); disconnect() and connect() "
                                   f"again once the controller is back")
        with self._send_lock:
            self._seq += 1
            s = self._seq if seq is None else seq
            try:
                self._sock.sendall(ep.encode_frame(msg_type, s, now_ns(), payload))
            except OSError as e:
                self._lose_link(f"send failed ({e})")
                raise DeviceFaultError(f"{self.name}: sending {ep.MSG_NAMES[msg_type]} failed ({e}); "
                                       f"check the cable and the controller") from e
            self._last_tx = time.monotonic()
            return s

    # ------------------------------------------------------------------ Arm interface
    def _fresh(self) -> tuple[int, ep.StateMsg, int]:
        self._require_connected()
        if self._link_error is not None:
            raise DeviceFaultError(f"{self.name}: link lost ({self._link_error}); disconnect() and connect() "
                                   f"again once the controller is back")
        with self._state_lock:
            latest = self._latest
        age_s = (now_ns() - latest[0]) / 1e9 if latest else float("inf")
        if age_s > self.config.state_timeout_s:
            got = "no state yet" if latest is None else f"last state {age_s * 1e3:.0f} ms ago"
            raise DeviceFaultError(f"{self.name}: controller silent ({got}, timeout "
                                   f"{self.config.state_timeout_s * 1e3:.0f} ms); check the controller and the network")
        if latest[1].flags & ep.FLAG_FAULT:
            raise DeviceFaultError(f"{self.name}: controller reports a fault (flags 0x{latest[1].flags:02x}); "
                                   f"clear it on the controller")
        return latest

    def state(self) -> ArmState:
        rx_ns, msg, _ = self._fresh()
        return ArmState(joints=msg.joints, ee_pose=Pose(msg.ee_position, msg.ee_quat), gripper=msg.gripper,
                        joint_velocities=msg.velocities, stamp_ns=rx_ns)

    @property
    def last_acked_command_seq(self) -> int:
        """The last command sequence number the controller says it applied."""
        with self._state_lock:
            return self._latest[1].last_command_seq if self._latest else 0

    def command(self, cmd: ArmCommand) -> ArmCommand:
        self._require_connected()
        if self._estopped:
            raise DeviceFaultError(f"{self.name}: emergency stop is active; call resume() once the arm is safe")
        if cmd.joints.shape != (self.config.n_joints,):
            raise ValueError(f"{self.name}: command has {cmd.joints.shape[0]} joints, the arm has {self.config.n_joints}")
        self._cmd_seq += 1
        self._send(ep.MSG_COMMAND, ep.pack_command(cmd.gripper, cmd.joints), seq=self._cmd_seq)
        sent = ArmCommand(joints=cmd.joints, gripper=cmd.gripper, ee_target=cmd.ee_target, stamp_ns=now_ns())
        self.last_sent = sent
        return sent

    @property
    def command_seq(self) -> int:
        return self._cmd_seq

    def hold(self) -> None:
        self._require_connected()
        self._send(ep.MSG_HOLD)

    def estop(self) -> None:
        self._require_connected()
        self._estopped = True
        self._send(ep.MSG_ESTOP)
        log.warning("%s: emergency stop sent", self.name)

    def resume(self) -> None:
        self._require_connected()
        self._send(ep.MSG_RESUME)
        self._estopped = False
