"""Dynamixel protocol 2.0 framing, written here and checked byte for byte against ``dynamixel_sdk``.

::

    instruction: FF FF FD 00 | id | len_lo len_hi | instr | params... | crc_lo crc_hi
    status:      FF FF FD 00 | id | len_lo len_hi | 0x55 | error | params... | crc_lo crc_hi
    len = bytes after the length field (instruction/status byte, error, params, CRC)
    crc = CRC-16 (polynomial 0x8005, initial 0, no reflection) over everything before it

Byte stuffing: inside the instruction and parameters, every ``FF FF FD`` is sent as ``FF FF FD FD`` (the
length and the CRC count the stuffed bytes), so a header never appears inside a packet. READ, SYNC_READ
and SYNC_WRITE carry 2-byte little-endian addresses and lengths. The error byte is an error number in bits
0-6 (``dynamixel_tables.ERROR_NUMBERS``) plus the hardware alert bit 7 (read Hardware_Error_Status).
"""

from __future__ import annotations

from .dynamixel_tables import (BROADCAST_ID, ERR_ALERT, ERROR_NUMBERS, INST_PING, INST_READ, INST_STATUS,
                               INST_SYNC_READ, INST_SYNC_WRITE, INST_WRITE, MAX_ID)
from .servo_protocol import Corrupt, ServoProtocol, Status

HEADER = b"\xff\xff\xfd\x00"
MAX_PACKET_LEN = 1024


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray, crc: int = 0) -> int:
    """The Dynamixel 2.0 CRC-16 of ``data``."""
    for b in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(packet: bytes) -> bytes:
    """Stuff the instruction and parameters of an unstuffed packet without its CRC (header .. params),
    fixing its length field; a ``FD`` that follows ``FF FF`` gets a second ``FD``."""
    out = bytearray(packet[:7])
    for i in range(7, len(packet)):
        out.append(packet[i])
        if packet[i] == 0xFD and packet[i - 1] == 0xFF and packet[i - 2] == 0xFF:
            out.append(0xFD)
    n = len(out) - 7 + 2  # + CRC
    out[5], out[6] = n & 0xFF, n >> 8
    return bytes(out)


def unstuff(body: bytes, before: bytes) -> bytes:
    """Undo stuffing in ``body`` (the bytes after the length field, CRC excluded); ``before`` = the two
    bytes preceding it in the packet (a pattern may start in the length field)."""
    src = bytes(before) + bytes(body)
    if b"\xff\xff\xfd\xfd" not in src:  # the common case: nothing was stuffed
        return bytes(body)
    out = bytearray()
    i = 2
    while i < len(src):
        out.append(src[i])
        if src[i] == 0xFD and src[i - 1] == 0xFF and src[i - 2] == 0xFF and i + 1 < len(src) and src[i + 1] == 0xFD:
            i += 1  # skip the stuffed FD
        i += 1
    return bytes(out)


def instruction_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """Frame a protocol 2.0 instruction packet (stuffed, CRC appended)."""
    if not 0 <= servo_id <= BROADCAST_ID:
        raise ValueError(f"servo id must be in [0, {BROADCAST_ID}], got {servo_id}")
    n = len(params) + 3
    raw = HEADER + bytes([servo_id, n & 0xFF, n >> 8, instruction]) + bytes(params)
    packet = stuff(raw)
    if len(packet) + 2 > MAX_PACKET_LEN:
        raise ValueError(f"packet too long: {len(params)} parameter bytes")
    crc = crc16(packet)
    return packet + bytes([crc & 0xFF, crc >> 8])


class Dynamixel2Protocol(ServoProtocol):
    name = "dynamixel2"
    broadcast_id = BROADCAST_ID
    max_id = MAX_ID
    INST_PING = INST_PING
    INST_READ = INST_READ
    INST_WRITE = INST_WRITE
    INST_SYNC_READ = INST_SYNC_READ
    INST_SYNC_WRITE = INST_SYNC_WRITE
    identity = (0, 8)  # Model_Number (0, 2) .. ID (7, 1)
    ping_params = 3    # model number (2) + firmware version (1)

    def instruction(self, servo_id: int, instruction: int, params: bytes = b"") -> bytes:
        return instruction_packet(servo_id, instruction, params)

    def status_size(self, n_params: int) -> int:
        return 11 + n_params

    def read_params(self, addr: int, size: int) -> bytes:
        return addr.to_bytes(2, "little") + size.to_bytes(2, "little")

    def write_params(self, addr: int, data: bytes) -> bytes:
        return addr.to_bytes(2, "little") + bytes(data)

    def error_text(self, error: int) -> str | None:
        if not error:
            return None
        parts = []
        if error & ERR_ALERT:
            parts.append("a hardware error (alert bit; see Hardware_Error_Status)")
        number = error & 0x7F
        if number:
            parts.append(ERROR_NUMBERS.get(number, f"error number {number}"))
        return ", ".join(parts)

    def error_hint(self, error: int) -> str:
        if error & ERR_ALERT:
            return ("read its Hardware_Error_Status (overload, overheating, input voltage, encoder, electrical "
                    "shock), remove the cause, then reboot it (power-cycle) and enable torque again")
        return "the servo refused the instruction: check the register and the value (EEPROM registers need torque off)"

    def identity_id(self, params: bytes) -> tuple[int, int]:
        return params[0] | (params[1] << 8), params[7]

    def ping_model(self, params: bytes) -> int | None:
        return params[0] | (params[1] << 8)

    def parse(self, buf: bytearray) -> Status | Corrupt | None:
        while True:
            i = buf.find(b"\xff\xff\xfd")
            if i < 0:
                del buf[:max(len(buf) - 2, 0)]  # keep a trailing FF FF: it may start the next header
                return None
            if i:
                del buf[:i]
            if len(buf) < 7:
                return None
            rid, length = buf[4], buf[5] | (buf[6] << 8)
            if buf[3] != 0x00 or rid > MAX_ID or not 4 <= length <= MAX_PACKET_LEN:
                del buf[:3]  # a stuffed FF FF FD FD, or noise: look for the next header
                continue
            end = 7 + length
            if len(buf) < end:
                return None
            pkt = bytes(buf[:end])
            crc, expect = pkt[-2] | (pkt[-1] << 8), crc16(pkt[:-2])
            if crc != expect:
                del buf[:3]  # the real packet may start inside these bytes
                return Corrupt(rid, f"bad CRC 0x{crc:04x} (expected 0x{expect:04x})")
            del buf[:end]
            body = unstuff(pkt[7:-2], pkt[5:7])
            if body[0] != INST_STATUS or len(body) < 2:
                continue  # an instruction packet (an adapter echoing what was sent): not an answer
            return Status(rid, body[1], body[2:])
