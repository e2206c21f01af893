"""A Feetech STS bus emulator on the far end of a pseudo-terminal, for driver tests and benchmarks.

``BusEmulatorCore`` holds what any servo family shares (the Dynamixel emulator reuses it): a register
memory per virtual servo, motion (with torque on, Present_Position moves toward Goal_Position at ``speed``
ticks per second; ``torque_snaps``: turning torque on moves a servo to its goal at once, as a real one
jumps toward a stale goal), PING, READ, WRITE, SYNC_READ, SYNC_WRITE, and timing: with ``baudrate`` set,
every packet occupies the line for ``bytes * 10 / baudrate`` seconds, as on the wire.

Fault injection: ``silent`` ids never answer, ``corrupt`` ids answer with a bad checksum, ``wrong_id``
maps an id to the id it answers as, ``error_bits`` sets the status error byte, ``late`` maps an id to a
delay (s) before each of its answers (the servo answers in order: later answers queue behind it;
``late_count`` limits how many answers are late),
``short_answer`` ids leave the last data byte out of a well-formed answer, ``ignore_writes`` ids drop
WRITE / SYNC_WRITE.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
import tty

from edgebridge.drivers.feetech_tables import (BROADCAST_ID, INST_PING, INST_READ, INST_SYNC_READ,
                                               INST_SYNC_WRITE, INST_WRITE, STS3215)


class BusEmulatorCore:
    """Family-independent part; subclasses frame packets (``_take``, ``_status``) and lay out params."""

    BROADCAST = BROADCAST_ID
    PING, READ, WRITE, SYNC_READ, SYNC_WRITE = INST_PING, INST_READ, INST_WRITE, INST_SYNC_READ, INST_SYNC_WRITE
    ADDR_BYTES = 1  # width of the address and length fields of READ / SYNC_READ / SYNC_WRITE
    name = "servo-emulator"

    def __init__(self, ids, start_ticks, speed, model, models=None, baudrate=None):
        self.ids = tuple(ids)
        self.models = {i: (models or {}).get(i, model) for i in self.ids}
        self.model = model
        self.speed = float(speed)
        self.baudrate = baudrate
        self.mem = {i: bytearray(256) for i in self.ids}
        for i in self.ids:
            self._put(i, "Model_Number", self.models[i].model_number)
            self._put(i, "ID", i)
            self._put(i, "Present_Position", start_ticks)
            self._put(i, "Goal_Position", start_ticks)
        self._exact: dict[int, float] = {}
        self.torque_snaps = True
        self.silent: set[int] = set()
        self.corrupt: set[int] = set()
        self.wrong_id: dict[int, int] = {}
        self.error_bits: dict[int, int] = {}
        self.late: dict[int, float] = {}
        self.late_count: dict[int, int] = {}
        self.short_answer: set[int] = set()
        self.ignore_writes: set[int] = set()
        self.received: list[tuple[int, int, bytes]] = []  # (id, instruction, params)
        self.lock = threading.Lock()
        self._out: list = []  # heap of (due, seq, bytes)
        self._seq = itertools.count()
        self._line_free = 0.0
        self._servo_free: dict[int, float] = {}
        self._renamed: dict[int, int] = {}
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    # -------------------------------------------------------------- registers
    def _put(self, sid: int, reg: str, value: int) -> None:
        m = self.models[sid]
        addr, size = m.register(reg)
        self.mem[sid][addr:addr + size] = m.encode(reg, value)

    def _get(self, sid: int, reg: str) -> int:
        m = self.models[sid]
        addr, size = m.register(reg)
        return m.decode(reg, bytes(self.mem[sid][addr:addr + size]))

    def get(self, sid: int, reg: str) -> int:
        with self.lock:
            return self._get(sid, reg)

    def set(self, sid: int, reg: str, value: int) -> None:
        with self.lock:
            self._put(sid, reg, value)

    def set_raw(self, sid: int, reg: str, data: bytes) -> None:
        """Register bytes as given (values no real servo would hold)."""
        addr, size = self.models[sid].register(reg)
        with self.lock:
            self.mem[sid][addr:addr + size] = bytes(data)[:size].ljust(size, b"\0")

    # -------------------------------------------------------------- lifecycle
    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------- motion
    def _advance(self) -> None:
        now = time.monotonic()
        step = self.speed * (now - self._last)
        self._last = now
        for sid in self.ids:
            if not self._get(sid, "Torque_Enable"):
                continue
            shown = self._get(sid, "Present_Position")
            pos = self._exact.get(sid, float(shown))
            if round(pos) != shown:  # Present_Position was set from outside (arm moved by hand)
                pos = float(shown)
            goal = self._get(sid, "Goal_Position")
            d = goal - pos
            pos = float(goal) if abs(d) <= step else pos + step * (1 if d > 0 else -1)
            self._exact[sid] = pos
            self._put(sid, "Present_Position", int(round(pos)))

    # -------------------------------------------------------------- timing
    def _wire(self, n: int) -> float:
        return n * 10 / self.baudrate if self.baudrate else 0.0

    def _queue(self, sid: int, packet: bytes, t_ready: float) -> None:
        """Send ``packet`` (an answer of ``sid``) once the line and the servo are free."""
        if sid in self.late:
            due = max(t_ready + self.late[sid], self._servo_free.get(sid, 0.0))
            if sid in self.late_count:
                self.late_count[sid] -= 1
                if self.late_count[sid] <= 0:
                    del self.late_count[sid], self.late[sid]
        else:
            due = max(t_ready, self._line_free, self._servo_free.get(sid, 0.0)) + self._wire(len(packet))
            self._line_free = due
        self._servo_free[sid] = due
        heapq.heappush(self._out, (due, next(self._seq), packet))

    def _flush_due(self) -> float:
        """Write the answers that are due; seconds until the next one (or a default poll)."""
        now = time.monotonic()
        while self._out and self._out[0][0] <= now:
            _, _, pkt = heapq.heappop(self._out)
            try:
                os.write(self._master, pkt)
            except OSError:
                pass
        return min(0.005, self._out[0][0] - now) if self._out else 0.005

    def _run(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            wait = self._flush_due()
            try:
                r, _, _ = select.select([self._master], [], [], max(wait, 0.0))
                if not r:
                    with self.lock:
                        self._advance()
                    continue
                buf += os.read(self._master, 4096)
            except OSError:
                time.sleep(0.005)
                continue
            while True:
                pkt = self._take(buf)
                if pkt is None:
                    break
                sid, inst, params, size = pkt
                t_ready = max(time.monotonic(), self._line_free) + self._wire(size)
                self._line_free = t_ready
                with self.lock:
                    self._advance()
                    self._handle(sid, inst, params, t_ready)

    # -------------------------------------------------------------- protocol (generic)
    def _reply(self, sid: int, params: bytes, t_ready: float) -> None:
        if sid in self.silent:
            return
        if sid in self.short_answer and params:
            params = params[:-1]
        rid = self.wrong_id.get(sid, sid)
        pkt = self._status(rid, self.error_bits.get(sid, 0), bytes(params))
        if sid in self.corrupt:
            pkt = pkt[:-1] + bytes([pkt[-1] ^ 0x5A])
        self._queue(sid, pkt, t_ready)

    def _split(self, params: bytes) -> tuple[int, int, bytes]:
        """(address, length, rest) of READ / SYNC_READ / SYNC_WRITE params."""
        w = self.ADDR_BYTES
        return (int.from_bytes(params[:w], "little"), int.from_bytes(params[w:2 * w], "little"), params[2 * w:])

    def _write(self, sid: int, addr: int, data: bytes) -> int:
        """Apply a write; returns the status error byte (0: fine)."""
        if sid in self.ignore_writes:
            return 0
        err = self._write_error(sid, addr, data)
        if err:
            return err
        t_addr = self.models[sid].register("Torque_Enable")[0]
        was_on = self.mem[sid][t_addr]
        self.mem[sid][addr:addr + len(data)] = data
        if self.torque_snaps and not was_on and self.mem[sid][t_addr]:
            goal = self._get(sid, "Goal_Position")
            self._put(sid, "Present_Position", goal)
            self._exact[sid] = float(goal)
        id_addr = self.models[sid].register("ID")[0]
        if addr <= id_addr < addr + len(data) and self.mem[sid][id_addr] != sid:
            self._rename(sid, self.mem[sid][id_addr])
        return 0

    def _rename(self, old: int, new: int) -> None:
        self._renamed[old] = new
        self.mem[new] = self.mem.pop(old)
        self.models[new] = self.models.pop(old)
        self.ids = tuple(new if i == old else i for i in self.ids)
        self._exact.pop(old, None)

    def _write_error(self, sid: int, addr: int, data: bytes) -> int:
        return 0

    def _ping_params(self, sid: int) -> bytes:
        return b""

    def _handle(self, sid: int, inst: int, params: bytes, t_ready: float) -> None:
        self.received.append((sid, inst, params))
        if inst == self.PING and sid in self.mem:
            self._reply(sid, self._ping_params(sid), t_ready)
        elif inst == self.READ and sid in self.mem:
            addr, n, _ = self._split(params)
            self._reply(sid, bytes(self.mem[sid][addr:addr + n]), t_ready)
        elif inst == self.WRITE and (sid in self.mem or sid == self.BROADCAST):
            w = self.ADDR_BYTES
            addr, data = int.from_bytes(params[:w], "little"), params[w:]
            err = 0
            for t in (self.ids if sid == self.BROADCAST else (sid,)):
                err = self._write(t, addr, data)
            if sid != self.BROADCAST:
                rid = self._renamed.get(sid, sid)  # after a write of ID the servo answers as its new id
                if err:
                    self._reply_error(rid, err, t_ready)
                else:
                    self._reply(rid, b"", t_ready)
        elif inst == self.SYNC_READ:
            addr, n, ids = self._split(params)
            for t in ids:
                if t in self.mem:
                    self._reply(t, bytes(self.mem[t][addr:addr + n]), t_ready)
        elif inst == self.SYNC_WRITE:
            addr, n, body = self._split(params)
            for k in range(0, len(body), n + 1):
                t = body[k]
                if t in self.mem:
                    self._write(t, addr, body[k + 1:k + 1 + n])

    def _reply_error(self, sid: int, err: int, t_ready: float) -> None:
        saved = self.error_bits.get(sid)
        self.error_bits[sid] = err
        try:
            self._reply(sid, b"", t_ready)
        finally:
            if saved is None:
                self.error_bits.pop(sid)
            else:
                self.error_bits[sid] = saved

    # subclass hooks
    def _take(self, buf: bytearray):
        """Take the next instruction out of ``buf``: (id, instruction, params, bytes on the wire) or None."""
        raise NotImplementedError

    def _status(self, rid: int, error: int, params: bytes) -> bytes:
        raise NotImplementedError


def _chk(body: bytes) -> int:
    return (~sum(body)) & 0xFF


class FeetechBusEmulator(BusEmulatorCore):
    name = "feetech-emulator"

    def __init__(self, ids=(1, 2, 3, 4, 5, 6), start_ticks=2048, speed=20000.0, model=STS3215, models=None,
                 baudrate=None):
        super().__init__(ids, start_ticks, speed, model, models, baudrate)

    def _take(self, buf: bytearray):
        while True:
            i = buf.find(b"\xff\xff")
            if i < 0 or len(buf) < i + 4:
                return None
            length = buf[i + 3]
            end = i + 4 + length
            if len(buf) < end:
                return None
            pkt = bytes(buf[i:end])
            del buf[:end]
            if _chk(pkt[2:-1]) == pkt[-1]:  # a real servo ignores a corrupt instruction
                return pkt[2], pkt[4], pkt[5:-1], len(pkt)

    def _status(self, rid: int, error: int, params: bytes) -> bytes:
        body = bytes([rid, len(params) + 2, error]) + params
        return b"\xff\xff" + body + bytes([_chk(body)])
