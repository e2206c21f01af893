"""An arm controller emulator speaking the edgebridge Ethernet protocol on 127.0.0.1, for tests.

Streams STATE at ``rate_hz``; joints move toward the last command at ``speed`` rad/s; holds when the
watchdog expires; answers corrupt frames with ERROR. Fault injection: ``corrupt_states`` (the next N
STATE frames get a broken CRC), ``paused`` (stop streaming, keep the socket), ``drop()`` (close the
connection).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from edgebridge.drivers import ethernet_protocol as ep


class ArmControllerEmulator:
    def __init__(self, n_joints=6, rate_hz=200.0, watchdog_s=0.2, speed=5.0):
        self.n = n_joints
        self.rate_hz = rate_hz
        self.watchdog_s = watchdog_s
        self.speed = speed
        self.q = np.zeros(n_joints)
        self.target = np.zeros(n_joints)
        self.gripper = 1.0
        self.flags = 0
        self.last_cmd_seq = 0
        self.received: list[ep.Frame] = []
        self.corrupt_states = 0
        self.paused = threading.Event()
        self.watchdog_trips = 0
        self.lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.drop()
        self._srv.close()
        self._thread.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def drop(self):
        c, self._conn = self._conn, None
        if c is not None:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def types_received(self):
        with self.lock:
            return [f.type for f in self.received]

    def _serve(self):
        self._srv.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except (socket.timeout, OSError):
                continue
            self._conn = conn
            try:
                self._session(conn)
            except OSError:
                pass
            finally:
                self.drop()

    def _session(self, conn):
        conn.settimeout(0.001)
        seq = 0
        conn.sendall(ep.encode_frame(ep.MSG_HELLO, seq, time.monotonic_ns(),
                                     ep.Hello(self.n, self.rate_hz, self.watchdog_s, "emulator").pack()))
        reader = ep.FrameReader()
        period = 1.0 / self.rate_hz
        next_tx = time.monotonic()
        last_rx = time.monotonic()
        last_step = time.monotonic()
        while not self._stop.is_set() and self._conn is conn:
            try:
                data = conn.recv(65536)
                if not data:
                    return
                reader.feed(data)
            except socket.timeout:
                pass
            while True:
                try:
                    f = reader.next()
                except ep.FrameError as e:
                    conn.sendall(ep.encode_frame(ep.MSG_ERROR, 0, time.monotonic_ns(), ep.pack_error(ep.ERR_CRC, str(e))))
                    continue
                if f is None:
                    break
                last_rx = time.monotonic()
                self._apply(f)
            now = time.monotonic()
            with self.lock:
                if now - last_rx > self.watchdog_s and not self.flags & ep.FLAG_HOLDING:
                    self.flags |= ep.FLAG_HOLDING
                    self.target = self.q.copy()
                    self.watchdog_trips += 1
                if not self.flags & ep.FLAG_ESTOP:
                    step = self.speed * (now - last_step)
                    self.q += np.clip(self.target - self.q, -step, step)
                last_step = now
            if now >= next_tx and not self.paused.is_set():
                next_tx += period
                seq += 1
                with self.lock:
                    msg = ep.StateMsg(self.last_cmd_seq, self.flags, self.gripper, self.q.copy(), np.zeros(self.n),
                                      np.array([0.3, 0.0, 0.2 + 0.01 * self.q[0]]), np.array([0.0, 0.0, 0.0, 1.0]))
                frame = bytearray(ep.encode_frame(ep.MSG_STATE, seq, time.monotonic_ns(), msg.pack()))
                if self.corrupt_states > 0:
                    self.corrupt_states -= 1
                    frame[-1] ^= 0xFF
                conn.sendall(bytes(frame))

    def _apply(self, f):
        with self.lock:
            self.received.append(f)
            if f.type == ep.MSG_COMMAND:
                grip, q = ep.unpack_command(f.payload, self.n)
                if not self.flags & ep.FLAG_ESTOP:
                    self.target, self.gripper = q, grip
                    self.flags &= ~ep.FLAG_HOLDING
                self.last_cmd_seq = f.seq
            elif f.type == ep.MSG_HOLD:
                self.target = self.q.copy()
                self.flags |= ep.FLAG_HOLDING
            elif f.type == ep.MSG_ESTOP:
                self.flags |= ep.FLAG_ESTOP
                self.target = self.q.copy()
            elif f.type == ep.MSG_RESUME:
                self.flags &= ~ep.FLAG_ESTOP
