"""A Dynamixel protocol 2.0 bus emulator (X-series servos) on the far end of a pseudo-terminal.

Shares ``BusEmulatorCore`` with the Feetech emulator (registers, motion, torque-on jump, wire time, fault
injection: ``silent``, ``corrupt``, ``wrong_id``, ``error_bits``, ``late``, ``short_answer``,
``ignore_writes``) and frames packets the 2.0 way, written here independently of the driver: header
``FF FF FD 00``, 2-byte length, CRC-16 (bitwise, polynomial 0x8005), byte stuffing both ways, status
instruction 0x55 with an error byte. PING answers carry the model number and firmware version; writing an
EEPROM register (address < 64) with torque on answers an access error, as a real X servo does.
``echo``: the adapter echoes every instruction back (half-duplex adapters without echo cancellation).
"""

from __future__ import annotations

from feetech_bus_emulator import BusEmulatorCore

from edgebridge.drivers.dynamixel_tables import XL330_M288

FIRMWARE = 46
ACCESS_ERROR = 0x07


def crc16_bitwise(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _stuff(body: bytes, before: bytes) -> bytes:
    out = bytearray()
    prev = bytearray(before)
    for b in body:
        out.append(b)
        if b == 0xFD and prev[-2:] == b"\xff\xff":
            out.append(0xFD)
        prev.append(b)
    return bytes(out)


def _unstuff(body: bytes) -> bytes:
    return body.replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")


def frame(sid: int, body: bytes) -> bytes:
    """Header + id + length + stuffed ``body`` (instruction or 0x55 + error, params) + CRC."""
    stuffed = _stuff(body, b"\x00\x00")
    n = len(stuffed) + 2
    pkt = b"\xff\xff\xfd\x00" + bytes([sid, n & 0xFF, n >> 8]) + stuffed
    crc = crc16_bitwise(pkt)
    return pkt + bytes([crc & 0xFF, crc >> 8])


class DynamixelBusEmulator(BusEmulatorCore):
    ADDR_BYTES = 2
    name = "dynamixel-emulator"

    def __init__(self, ids=(1, 2, 3, 4, 5, 6), start_ticks=2048, speed=20000.0, model=XL330_M288, models=None,
                 baudrate=None):
        super().__init__(ids, start_ticks, speed, model, models, baudrate)
        self.echo = False
        for i in self.ids:
            self._put(i, "Operating_Mode", 3)
            self._put(i, "Firmware_Version", FIRMWARE)

    def _take(self, buf: bytearray):
        while True:
            i = buf.find(b"\xff\xff\xfd\x00")
            if i < 0 or len(buf) < i + 7:
                return None
            n = buf[i + 5] | (buf[i + 6] << 8)
            end = i + 7 + n
            if len(buf) < end:
                return None
            pkt = bytes(buf[i:end])
            del buf[:end]
            if crc16_bitwise(pkt[:-2]) != (pkt[-2] | (pkt[-1] << 8)):
                continue  # a real servo ignores a corrupt instruction
            if self.echo:
                self._queue(-1, pkt, 0.0)
            body = _unstuff(pkt[7:-2])
            return pkt[4], body[0], body[1:], len(pkt)

    def _status(self, rid: int, error: int, params: bytes) -> bytes:
        return frame(rid, bytes([0x55, error]) + params)

    def _ping_params(self, sid: int) -> bytes:
        return bytes(self.mem[sid][0:2]) + bytes([self.mem[sid][6]])

    def _write_error(self, sid: int, addr: int, data: bytes) -> int:
        torque = self.mem[sid][self.models[sid].register("Torque_Enable")[0]]
        return ACCESS_ERROR if addr < 64 and torque else 0
