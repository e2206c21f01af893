"""Feetech STS/SCS serial servo bus over pyserial: PING, READ, WRITE, SYNC_READ, SYNC_WRITE.

Packets (half-duplex TTL bus, the same framing as Dynamixel protocol 1.0)::

    instruction: 0xFF 0xFF id len instr params... checksum     len = len(params) + 2
    status:      0xFF 0xFF id len error params... checksum     len = len(params) + 2
    checksum = ~(id + len + instr|error + sum(params)) & 0xFF

SYNC_READ (0x82) goes to the broadcast id 0xFE with params ``addr n id1 id2 ...``; each servo answers
with its own status packet, in the order asked. SYNC_WRITE (0x83) carries ``addr n id1 d1.. id2 d2..``
and gets no answer. Words are little-endian on STS servos, big-endian on SCS.

Every failure (timeout, bad checksum, an answer from the wrong id, a servo error bit) raises
``DeviceFaultError`` naming the port, the servo id, the register and what to check next.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..config import check
from ..errors import DeviceFaultError, DeviceNotConnectedError
from .feetech_tables import (BROADCAST_ID, INST_PING, INST_READ, INST_SYNC_READ, INST_SYNC_WRITE,
                             INST_WRITE, MAX_ID, READ_ONLY, STATUS_ERRORS, ServoModel, model_by_name)

log = logging.getLogger(__name__)

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


def encode_value(model: ServoModel, register: str, value: int) -> bytes:
    """An integer register value -> its bytes (sign-magnitude where the model stores it so)."""
    _, size = model.register(register)
    value = int(value)
    sign_bit = model.sign_bits.get(register)
    if sign_bit is not None:
        mag = abs(value)
        if mag >= (1 << sign_bit):
            raise ValueError(f"{register}: |{value}| does not fit {sign_bit} magnitude bits")
        value = mag | ((1 << sign_bit) if value < 0 else 0)
    if not 0 <= value < (1 << (8 * size)):
        raise ValueError(f"{register}: value {value} does not fit {size} byte(s)")
    return value.to_bytes(size, "little" if model.little_endian else "big")


def decode_value(model: ServoModel, register: str, data: bytes) -> int:
    """Register bytes -> integer (undoing sign-magnitude)."""
    value = int.from_bytes(data, "little" if model.little_endian else "big")
    sign_bit = model.sign_bits.get(register)
    if sign_bit is not None and value & (1 << sign_bit):
        value = -(value & ((1 << sign_bit) - 1))
    return value


@dataclass(frozen=True)
class ServoBusConfig:
    """A Feetech bus on one serial port.

    ``timeout_s`` bounds one status packet; ``retries`` repeats a transaction that timed out or came
    back corrupt (a servo error bit is never retried).
    """

    port: str
    model: str = "sts3215"
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 1

    def __post_init__(self) -> None:
        check(isinstance(self.port, str) and bool(self.port), "port", f"expected a device path, got {self.port!r}")
        check(self.baudrate > 0, "baudrate", f"must be > 0, got {self.baudrate}")
        check(0 < self.timeout_s <= 5.0, "timeout_s", f"must be in (0, 5] seconds, got {self.timeout_s}")
        check(0 <= self.retries <= 10, "retries", f"must be in [0, 10], got {self.retries}")
        try:
            model_by_name(self.model)
        except ValueError as e:
            check(False, "model", str(e))


@dataclass
class BusStats:
    """Counters for the bus: packets sent/received and faults by kind."""

    tx_packets: int = 0
    rx_packets: int = 0
    faults: dict = field(default_factory=lambda: {"timeout": 0, "checksum": 0, "wrong_id": 0, "servo_error": 0})


class _BusFault(Exception):
    """Internal: one failed attempt, with its kind for the counters."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


class ServoBus:
    """Feetech STS/SCS servo bus on one serial port (pyserial)."""

    def __init__(self, config: ServoBusConfig) -> None:
        self.config = config
        self.model = model_by_name(config.model)
        self.stats = BusStats()
        self._ser: Any = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        if self._ser is not None:
            return
        import serial

        try:
            self._ser = serial.Serial(self.config.port, self.config.baudrate, timeout=self.config.timeout_s,
                                      write_timeout=max(self.config.timeout_s, 0.1))
        except (serial.SerialException, OSError) as e:
            raise DeviceFaultError(
                f"cannot open servo bus port {self.config.port!r} at {self.config.baudrate} baud ({e}); "
                f"check the USB cable, the port name (ls /dev/ttyACM* /dev/ttyUSB*) and that no other "
                f"process holds it") from e
        self._ser.reset_input_buffer()

    def close(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            finally:
                self._ser = None

    def __enter__(self) -> "ServoBus":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ public transactions
    def ping(self, servo_id: int) -> bool:
        """True if ``servo_id`` answers a PING; False on silence. Corrupt answers raise."""
        try:
            self._transact(servo_id, INST_PING, b"", "(ping)", n_params=0, retry=False)
        except DeviceFaultError as e:
            if isinstance(e.__cause__, _BusFault) and e.__cause__.kind == "timeout":
                return False
            raise
        return True

    def read(self, servo_id: int, register: str) -> int:
        addr, size = self.model.register(register)
        data = self._transact(servo_id, INST_READ, bytes([addr, size]), register, n_params=size)
        return decode_value(self.model, register, data)

    def write(self, servo_id: int, register: str, value: int) -> None:
        """WRITE one register and wait for the servo's status packet."""
        self._check_writable(register)
        addr, _ = self.model.register(register)
        payload = bytes([addr]) + encode_value(self.model, register, value)
        self._transact(servo_id, INST_WRITE, payload, register, n_params=0)

    def sync_read(self, register: str, ids: Iterable[int]) -> dict[int, int]:
        """SYNC_READ ``register`` from ``ids``; returns {id: value}."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        addr, size = self.model.register(register)
        packet = instruction_packet(BROADCAST_ID, INST_SYNC_READ, bytes([addr, size, *ids]))
        last: _BusFault | None = None
        for attempt in range(self.config.retries + 1):
            try:
                self._send(packet)
                out = {}
                for sid in ids:
                    data = self._receive(sid, register, size)
                    out[sid] = decode_value(self.model, register, data)
                return out
            except _BusFault as f:
                last = self._note_fault(f, attempt)
                if f.kind == "servo_error":
                    break
        raise self._fault_error(last, register) from last

    def sync_write(self, register: str, values: Mapping[int, int]) -> bytes:
        """SYNC_WRITE one register on several servos (no answer); returns the packet sent."""
        self._check_writable(register)
        ids = [int(i) for i in values]
        self._check_ids(ids)
        addr, size = self.model.register(register)
        params = bytearray([addr, size])
        for sid in ids:
            params.append(sid)
            params += encode_value(self.model, register, values[sid])
        packet = instruction_packet(BROADCAST_ID, INST_SYNC_WRITE, bytes(params))
        try:
            self._send(packet)
        except _BusFault as f:
            raise self._fault_error(f, register) from f
        return packet

    # ------------------------------------------------------------------ internals
    def _require_open(self) -> None:
        if self._ser is None:
            raise DeviceNotConnectedError(f"servo bus on {self.config.port!r} is not open; call open() first")

    def _check_writable(self, register: str) -> None:
        self.model.register(register)
        if register in READ_ONLY:
            raise ValueError(f"register {register!r} is read-only on {self.model.name}")

    @staticmethod
    def _check_ids(ids: list[int]) -> None:
        if not ids:
            raise ValueError("need at least one servo id")
        bad = [i for i in ids if not 0 <= i <= MAX_ID]
        if bad or len(set(ids)) != len(ids):
            raise ValueError(f"servo ids must be unique and in [0, {MAX_ID}], got {ids}")

    def _transact(self, servo_id: int, instruction: int, params: bytes, register: str, *,
                  n_params: int, retry: bool = True) -> bytes:
        packet = instruction_packet(servo_id, instruction, params)
        last: _BusFault | None = None
        for attempt in range(self.config.retries + 1 if retry else 1):
            try:
                self._send(packet)
                return self._receive(servo_id, register, n_params)
            except _BusFault as f:
                last = self._note_fault(f, attempt)
                if f.kind == "servo_error":
                    break
        raise self._fault_error(last, register, servo_id) from last

    def _note_fault(self, f: _BusFault, attempt: int) -> _BusFault:
        self.stats.faults[f.kind] = self.stats.faults.get(f.kind, 0) + 1
        log.debug("servo bus %s: attempt %d failed: %s", self.config.port, attempt + 1, f)
        self._drain()
        return f

    def _drain(self) -> None:
        """After a fault, wait until the line is quiet (late answers of other servos) and drop it all,
        so the next transaction does not read a stale packet."""
        if self._ser is None:
            return
        quiet = max(self.config.timeout_s / 2, 0.002)
        deadline = time.monotonic() + 4 * self.config.timeout_s
        self._ser.timeout = quiet
        try:
            while self._ser.read(4096) and time.monotonic() < deadline:
                pass
        finally:
            self._ser.timeout = self.config.timeout_s
            self._ser.reset_input_buffer()

    def _fault_error(self, f: _BusFault | None, register: str, servo_id: int | None = None) -> DeviceFaultError:
        hint = {
            "timeout": "check the servo's power supply, its id and baud rate, and the bus cable",
            "checksum": "check the cable and grounding (noise on the bus), or lower the baud rate",
            "wrong_id": "two servos may share an id; connect them one at a time and re-assign ids",
            "servo_error": "let the servo cool down / check supply voltage and load, then re-enable torque",
        }.get(f.kind if f else "", "check the bus")
        who = f"servo {servo_id}" if servo_id is not None else "the bus"
        return DeviceFaultError(f"servo bus {self.config.port}: {who}, register {register}: {f}; {hint}")

    def _send(self, packet: bytes) -> None:
        self._require_open()
        self._ser.reset_input_buffer()
        try:
            self._ser.write(packet)
            self._ser.flush()
        except Exception as e:
            raise _BusFault("timeout", f"write failed ({e})") from e
        self.stats.tx_packets += 1

    def _read_exact(self, n: int, deadline: float, servo_id: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._ser.read(n - len(buf))
            if chunk:
                buf += chunk
            elif time.monotonic() >= deadline:
                raise _BusFault("timeout", f"no answer from servo {servo_id} within {self.config.timeout_s * 1e3:.0f} ms "
                                           f"(got {len(buf)} of {n} bytes)")
        return bytes(buf)

    def _receive(self, servo_id: int, register: str, n_params: int) -> bytes:
        """Read one status packet from ``servo_id`` carrying ``n_params`` parameter bytes."""
        deadline = time.monotonic() + self.config.timeout_s
        # Find the header, skipping line noise.
        prev = b""
        skipped = 0
        while True:
            b = self._read_exact(1, deadline, servo_id)
            if prev == b"\xff" and b == b"\xff":
                break
            prev = b
            skipped += 1
            if skipped > 2 * MAX_PACKET_LEN:
                raise _BusFault("checksum", "no packet header in the byte stream")
        head = self._read_exact(2, deadline, servo_id)
        while head[0] == 0xFF:  # tolerate a third 0xFF
            head = head[1:] + self._read_exact(1, deadline, servo_id)
        rid, length = head[0], head[1]
        if length < 2 or length > MAX_PACKET_LEN:
            raise _BusFault("checksum", f"invalid length byte {length} in answer from id {rid}")
        rest = self._read_exact(length, deadline, servo_id)
        error, params, chk = rest[0], rest[1:-1], rest[-1]
        expect = checksum(bytes([rid, length]) + rest[:-1])
        if chk != expect:
            raise _BusFault("checksum", f"bad checksum 0x{chk:02x} (expected 0x{expect:02x}) in answer from id {rid}")
        self.stats.rx_packets += 1
        if rid != servo_id:
            raise _BusFault("wrong_id", f"answer came from id {rid}, expected id {servo_id}")
        if error:
            names = [n for bit, n in STATUS_ERRORS.items() if error & bit] or [f"error byte 0x{error:02x}"]
            raise _BusFault("servo_error", "servo reports " + ", ".join(names))
        if len(params) != n_params:
            raise _BusFault("checksum", f"expected {n_params} data byte(s), got {len(params)}")
        return bytes(params)
