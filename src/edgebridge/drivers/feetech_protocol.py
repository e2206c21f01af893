"""Feetech STS/SCS framing (the same as Dynamixel protocol 1.0).

::

    instruction: 0xFF 0xFF id len instr params... checksum     len = len(params) + 2
    status:      0xFF 0xFF id len error params... checksum     len = len(params) + 2
    checksum = ~(id + len + instr|error + sum(params)) & 0xFF

SYNC_READ (0x82) goes to the broadcast id 0xFE with params ``addr n id1 id2 ...``; each servo answers
with its own status packet, in the order asked. SYNC_WRITE (0x83) carries ``addr n id1 d1.. id2 d2..``
and gets no answer. A status packet names neither the instruction nor the address it answers, so the bus
matches answers by id and length and re-synchronises with a servo after any fault (``servo_bus``).
"""

from __future__ import annotations

from .feetech_tables import (BROADCAST_ID, INST_PING, INST_READ, INST_SYNC_READ, INST_SYNC_WRITE, INST_WRITE,
                             MAX_ID, STATUS_ERRORS)
from .servo_protocol import Corrupt, ServoProtocol, Status

HEADER = b"\xff\xff"
MAX_PACKET_LEN = 250


def checksum(body: bytes | bytearray) -> int:
    """Feetech checksum over id, length, instruction/error and parameters."""
    return (~sum(body)) & 0xFF


def instruction_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """Frame an instruction packet."""
    if not 0 <= servo_id <= BROADCAST_ID:
        raise ValueError(f"servo id must be in [0, {BROADCAST_ID}], got {servo_id}")
    if len(params) + 2 > MAX_PACKET_LEN:
        raise ValueError(f"packet too long: {len(params)} parameter bytes")
    body = bytes([servo_id, len(params) + 2, instruction]) + bytes(params)
    return HEADER + body + bytes([checksum(body)])


class FeetechProtocol(ServoProtocol):
    name = "feetech"
    broadcast_id = BROADCAST_ID
    max_id = MAX_ID
    INST_PING = INST_PING
    INST_READ = INST_READ
    INST_WRITE = INST_WRITE
    INST_SYNC_READ = INST_SYNC_READ
    INST_SYNC_WRITE = INST_SYNC_WRITE
    identity = (3, 3)  # Model_Number (3, 2) + ID (5, 1)
    ping_params = 0

    def instruction(self, servo_id: int, instruction: int, params: bytes = b"") -> bytes:
        return instruction_packet(servo_id, instruction, params)

    def status_size(self, n_params: int) -> int:
        return 6 + n_params

    def read_params(self, addr: int, size: int) -> bytes:
        return bytes([addr, size])

    def write_params(self, addr: int, data: bytes) -> bytes:
        return bytes([addr]) + bytes(data)

    def error_text(self, error: int) -> str | None:
        if not error:
            return None
        names = [n for bit, n in STATUS_ERRORS.items() if error & bit]
        return ", ".join(names) if names else f"error byte 0x{error:02x}"

    def identity_id(self, params: bytes) -> tuple[int, int]:
        return params[0] | (params[1] << 8), params[2]

    def parse(self, buf: bytearray) -> Status | Corrupt | None:
        while True:
            i = buf.find(HEADER)
            if i < 0:
                del buf[:max(len(buf) - 1, 0)]  # keep a trailing 0xFF: it may start the next header
                return None
            if i:
                del buf[:i]
            while len(buf) > 2 and buf[2] == 0xFF:  # tolerate a third 0xFF
                del buf[0]
            if len(buf) < 4:
                return None
            rid, length = buf[2], buf[3]
            if length < 2 or length > MAX_PACKET_LEN or rid > BROADCAST_ID:
                del buf[:2]  # not a packet: look for the next header
                continue
            end = 4 + length
            if len(buf) < end:
                return None
            pkt = bytes(buf[:end])
            chk, expect = pkt[-1], checksum(pkt[2:-1])
            if chk != expect:
                del buf[:2]  # the real packet may start inside these bytes
                return Corrupt(rid, f"bad checksum 0x{chk:02x} (expected 0x{expect:02x})")
            del buf[:end]
            return Status(rid, pkt[4], pkt[5:-1])
