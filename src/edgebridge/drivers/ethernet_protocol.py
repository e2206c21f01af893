"""Binary protocol between edgebridge and an arm's Ethernet controller (one TCP connection).

Every message is one frame, all integers and floats little-endian::

    offset size  field
    0      2     magic b"EB"
    2      1     version (1)
    3      1     type (see MSG_*)
    4      4     seq, u32 (the sender's message counter; for COMMAND the command sequence number)
    8      8     stamp_ns, i64 (the sender's monotonic clock)
    16     2     payload length N, u16
    18     N     payload
    18+N   4     CRC-32 (zlib / IEEE 802.3) of bytes [0, 18+N)

Payloads (J = number of arm joints, f64 = little-endian double):

    HELLO     controller -> host, first frame:  u8 J, f32 state_rate_hz, f32 watchdog_s, utf-8 name
    STATE     controller -> host, streamed:     u32 last_command_seq, u8 flags (bit0 estop, bit1 holding,
              bit2 fault), f64 gripper, J x f64 joints (rad), J x f64 joint velocities (rad/s),
              3 x f64 ee position (m), 4 x f64 ee quaternion (x y z w), base frame
    COMMAND   host -> controller:               f64 gripper [0, 1], J x f64 joint targets (rad)
    HOLD / ESTOP / RESUME / HEARTBEAT           host -> controller, empty payload
    ERROR     controller -> host:               u16 code, utf-8 message

Controller duties: send HELLO on accept, then STATE at ``state_rate_hz``; hold position when neither a
COMMAND nor a HEARTBEAT arrived for ``watchdog_s`` (and set the holding flag); drop frames with a bad
CRC and answer them with ERROR code ``ERR_CRC``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"EB"
VERSION = 1
HEADER = struct.Struct("<2sBBIqH")
CRC = struct.Struct("<I")
MAX_PAYLOAD = 4096

MSG_HELLO = 0x01
MSG_STATE = 0x02
MSG_COMMAND = 0x10
MSG_HOLD = 0x11
MSG_ESTOP = 0x12
MSG_RESUME = 0x13
MSG_HEARTBEAT = 0x20
MSG_ERROR = 0x30
MSG_NAMES = {MSG_HELLO: "HELLO", MSG_STATE: "STATE", MSG_COMMAND: "COMMAND", MSG_HOLD: "HOLD",
             MSG_ESTOP: "ESTOP", MSG_RESUME: "RESUME", MSG_HEARTBEAT: "HEARTBEAT", MSG_ERROR: "ERROR"}

FLAG_ESTOP = 0x01
FLAG_HOLDING = 0x02
FLAG_FAULT = 0x04

ERR_CRC = 1
ERR_BAD_COMMAND = 2
ERR_LIMIT = 3


class FrameError(ValueError):
    """A frame failed to decode (bad magic, version, length or CRC)."""


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    stamp_ns: int
    payload: bytes

    @property
    def name(self) -> str:
        return MSG_NAMES.get(self.type, f"0x{self.type:02x}")


def encode_frame(msg_type: int, seq: int, stamp_ns: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, VERSION, msg_type, seq & 0xFFFFFFFF, int(stamp_ns), len(payload))
    return head + payload + CRC.pack(zlib.crc32(head + payload))


class FrameReader:
    """Incremental decoder: feed bytes, take whole frames. A corrupt frame raises ``FrameError`` once
    and is skipped; the reader resynchronises on the next magic."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Frame | None:
        buf = self._buf
        start = buf.find(MAGIC)
        if start < 0:
            del buf[:max(0, len(buf) - 1)]
            return None
        if start:
            del buf[:start]
        if len(buf) < HEADER.size:
            return None
        magic, version, mtype, seq, stamp, n = HEADER.unpack_from(buf)
        if version != VERSION or n > MAX_PAYLOAD:
            del buf[:2]
            raise FrameError(f"bad frame header (version {version}, payload length {n})")
        end = HEADER.size + n + CRC.size
        if len(buf) < end:
            return None
        (crc,) = CRC.unpack_from(buf, HEADER.size + n)
        want = zlib.crc32(bytes(buf[:HEADER.size + n]))
        if crc != want:
            name = MSG_NAMES.get(mtype, f"0x{mtype:02x}")
            del buf[:2]  # resync: the next magic may start inside this broken frame
            raise FrameError(f"CRC mismatch in {name} frame seq {seq}: got 0x{crc:08x}, computed 0x{want:08x}")
        frame = Frame(mtype, seq, stamp, bytes(buf[HEADER.size:HEADER.size + n]))
        del buf[:end]
        return frame


# ---------------------------------------------------------------------- payloads

_HELLO = struct.Struct("<Bff")
_STATE_HEAD = struct.Struct("<IBd")


@dataclass(frozen=True)
class Hello:
    n_joints: int
    state_rate_hz: float
    watchdog_s: float
    name: str

    def pack(self) -> bytes:
        return _HELLO.pack(self.n_joints, self.state_rate_hz, self.watchdog_s) + self.name.encode()

    @classmethod
    def unpack(cls, p: bytes) -> "Hello":
        if len(p) < _HELLO.size:
            raise FrameError(f"HELLO payload too short ({len(p)} bytes)")
        j, rate, wd = _HELLO.unpack_from(p)
        return cls(j, rate, wd, p[_HELLO.size:].decode(errors="replace"))


@dataclass(frozen=True)
class StateMsg:
    last_command_seq: int
    flags: int
    gripper: float
    joints: np.ndarray
    velocities: np.ndarray
    ee_position: np.ndarray
    ee_quat: np.ndarray

    def pack(self) -> bytes:
        vals = np.concatenate([self.joints, self.velocities, self.ee_position, self.ee_quat]).astype("<f8")
        return _STATE_HEAD.pack(self.last_command_seq, self.flags, self.gripper) + vals.tobytes()

    @classmethod
    def unpack(cls, p: bytes, n_joints: int) -> "StateMsg":
        want = _STATE_HEAD.size + 8 * (2 * n_joints + 7)
        if len(p) != want:
            raise FrameError(f"STATE payload has {len(p)} bytes, expected {want} for {n_joints} joints")
        seq, flags, grip = _STATE_HEAD.unpack_from(p)
        v = np.frombuffer(p, dtype="<f8", offset=_STATE_HEAD.size).astype(np.float64)
        j = n_joints
        return cls(seq, flags, grip, v[:j], v[j:2 * j], v[2 * j:2 * j + 3], v[2 * j + 3:])


def pack_command(gripper: float, joints: np.ndarray) -> bytes:
    return struct.pack("<d", float(gripper)) + np.asarray(joints, dtype="<f8").tobytes()


def unpack_command(p: bytes, n_joints: int) -> tuple[float, np.ndarray]:
    if len(p) != 8 * (n_joints + 1):
        raise FrameError(f"COMMAND payload has {len(p)} bytes, expected {8 * (n_joints + 1)}")
    v = np.frombuffer(p, dtype="<f8").astype(np.float64)
    return float(v[0]), v[1:]


def pack_error(code: int, message: str) -> bytes:
    return struct.pack("<H", code) + message.encode()


def unpack_error(p: bytes) -> tuple[int, str]:
    if len(p) < 2:
        raise FrameError("ERROR payload too short")
    return struct.unpack_from("<H", p)[0], p[2:].decode(errors="replace")
