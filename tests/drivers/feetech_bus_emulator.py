"""A Feetech STS bus emulator on the far end of a pseudo-terminal, for driver tests.

It speaks the byte protocol (PING, READ, WRITE, SYNC_READ, SYNC_WRITE) for a set of virtual servos,
each with a 256-byte register memory; with torque on, Present_Position moves toward Goal_Position at
``speed`` ticks per second. Fault injection: ``silent`` ids never answer, ``corrupt`` ids answer with
a bad checksum, ``wrong_id`` maps an id to the id it answers as, ``error_bits`` sets the status error byte.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty

from edgebridge.drivers.feetech_tables import (BROADCAST_ID, INST_PING, INST_READ, INST_SYNC_READ,
                                               INST_SYNC_WRITE, INST_WRITE, STS3215)


def _chk(body: bytes) -> int:
    return (~sum(body)) & 0xFF


class FeetechBusEmulator:
    def __init__(self, ids=(1, 2, 3, 4, 5, 6), start_ticks=2048, speed=20000.0, model=STS3215):
        self.model = model
        self.ids = tuple(ids)
        self.speed = float(speed)
        self.mem = {i: bytearray(256) for i in self.ids}
        for i in self.ids:
            self._put(i, "Model_Number", model.model_number)
            self._put(i, "ID", i)
            self._put(i, "Present_Position", start_ticks)
            self._put(i, "Goal_Position", start_ticks)
        self._exact: dict[int, float] = {}
        self.silent: set[int] = set()
        self.corrupt: set[int] = set()
        self.wrong_id: dict[int, int] = {}
        self.error_bits: dict[int, int] = {}
        self.received: list[tuple[int, int, bytes]] = []  # (id, instruction, params)
        self.lock = threading.Lock()
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="feetech-emulator", daemon=True)

    # -------------------------------------------------------------- registers
    def _put(self, sid: int, reg: str, value: int) -> None:
        addr, size = self.model.register(reg)
        self.mem[sid][addr:addr + size] = int(value).to_bytes(size, "little")

    def get(self, sid: int, reg: str) -> int:
        addr, size = self.model.register(reg)
        with self.lock:
            return int.from_bytes(self.mem[sid][addr:addr + size], "little")

    def set(self, sid: int, reg: str, value: int) -> None:
        with self.lock:
            self._put(sid, reg, value)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "FeetechBusEmulator":
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

    # -------------------------------------------------------------- loop
    def _advance(self) -> None:
        now = time.monotonic()
        step = self.speed * (now - self._last)
        self._last = now
        t_addr = self.model.register("Torque_Enable")[0]
        for sid in self.ids:
            if not self.mem[sid][t_addr]:
                continue
            shown = int.from_bytes(self.mem[sid][56:58], "little")
            pos = self._exact.get(sid, float(shown))
            if round(pos) != shown:  # Present_Position was set from outside (arm moved by hand)
                pos = float(shown)
            goal = int.from_bytes(self.mem[sid][42:44], "little")
            d = goal - pos
            pos = float(goal) if abs(d) <= step else pos + step * (1 if d > 0 else -1)
            self._exact[sid] = pos
            self._put(sid, "Present_Position", int(round(pos)))

    def _run(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._master], [], [], 0.005)
                if not r:
                    with self.lock:
                        self._advance()
                    continue
                buf += os.read(self._master, 4096)
            except OSError:
                time.sleep(0.005)
                continue
            while True:
                i = buf.find(b"\xff\xff")
                if i < 0 or len(buf) < i + 4:
                    break
                length = buf[i + 3]
                end = i + 4 + length
                if len(buf) < end:
                    break
                pkt = bytes(buf[i:end])
                del buf[:end]
                if _chk(pkt[2:-1]) != pkt[-1]:
                    continue  # a real servo ignores a corrupt instruction
                with self.lock:
                    self._advance()
                    self._handle(pkt[2], pkt[4], pkt[5:-1])

    def _reply(self, sid: int, params: bytes = b"") -> None:
        if sid in self.silent:
            return
        rid = self.wrong_id.get(sid, sid)
        body = bytes([rid, len(params) + 2, self.error_bits.get(sid, 0)]) + params
        chk = _chk(body)
        if sid in self.corrupt:
            chk ^= 0x5A
        os.write(self._master, b"\xff\xff" + body + bytes([chk]))

    def _handle(self, sid: int, inst: int, params: bytes) -> None:
        self.received.append((sid, inst, params))
        if inst == INST_PING and sid in self.mem:
            self._reply(sid)
        elif inst == INST_READ and sid in self.mem:
            addr, n = params[0], params[1]
            self._reply(sid, bytes(self.mem[sid][addr:addr + n]))
        elif inst == INST_WRITE and (sid in self.mem or sid == BROADCAST_ID):
            addr, data = params[0], params[1:]
            for t in (self.ids if sid == BROADCAST_ID else (sid,)):
                self.mem[t][addr:addr + len(data)] = data
            if sid != BROADCAST_ID:
                self._reply(sid)
        elif inst == INST_SYNC_READ:
            addr, n = params[0], params[1]
            for t in params[2:]:
                if t in self.mem:
                    self._reply(t, bytes(self.mem[t][addr:addr + n]))
        elif inst == INST_SYNC_WRITE:
            addr, n = params[0], params[1]
            body = params[2:]
            for k in range(0, len(body), n + 1):
                t = body[k]
                if t in self.mem:
                    self.mem[t][addr:addr + n] = body[k + 1:k + 1 + n]
