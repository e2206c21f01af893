"""What a serial servo family is, as data and framing: servo models and the protocol interface.

A ``ServoModel`` is a control table (register name -> ``(address, n_bytes)``) plus the facts the drivers
need (resolution, word order, signed registers, plausible answer ranges, velocity unit, the modes in which
Goal_Position commands a position). A ``ServoProtocol`` frames instruction packets and parses status
packets for one family (``feetech``: Feetech STS/SCS; ``dynamixel2``: Dynamixel protocol 2.0).
``servo_bus.ServoBus`` runs transactions over either one, so everything above the bus is the same.

Register names follow LeRobot's (``Torque_Enable``, ``Goal_Position``, ``Present_Position``,
``Model_Number``, ``ID``, ``Operating_Mode``, ...) in every family, so the arm code never names an address.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, NamedTuple

from ..errors import UnknownNameError

# protocol name -> (module, class); the tables register their models in MODELS on import.
PROTOCOLS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "feetech": ("edgebridge.drivers.feetech_protocol", "FeetechProtocol"),
    "dynamixel2": ("edgebridge.drivers.dynamixel_protocol", "Dynamixel2Protocol"),
})
_TABLE_MODULES = ("edgebridge.drivers.feetech_tables", "edgebridge.drivers.dynamixel_tables")


@dataclass(frozen=True)
class ServoModel:
    """One servo model. ``sign_bits``: registers stored sign-magnitude (name -> sign bit, Feetech);
    ``signed``: registers stored two's complement (Dynamixel). ``ranges``: the values an answer may hold
    (anything else is a malformed answer). ``velocity_unit_rad_s``: Present_Velocity's unit in rad/s.
    ``position_modes``: Operating_Mode values in which Goal_Position commands a position.
    ``acceleration``: (register, max value) of the profile acceleration, or None. ``baud_codes``: baud
    rate -> the value of its Baud_Rate register."""

    name: str
    model_number: int
    resolution: int
    table: Mapping[str, tuple[int, int]]
    protocol: str
    little_endian: bool = True
    sign_bits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    signed: frozenset = frozenset()
    read_only: frozenset = frozenset()
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    velocity_unit_rad_s: float = 0.0
    position_modes: tuple[int, ...] = (0,)
    acceleration: tuple[str, int] | None = None
    baud_codes: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def register(self, name: str) -> tuple[int, int]:
        try:
            return self.table[name]
        except KeyError as e:
            raise UnknownNameError(f"servo model {self.name!r} has no register {name!r}; "
                                   f"known registers: {', '.join(self.table)}") from e

    def encode(self, register: str, value: int) -> bytes:
        """An integer register value -> its bytes (sign-magnitude or two's complement where stored so)."""
        _, size = self.register(register)
        value = int(value)
        bits = 8 * size
        sign_bit = self.sign_bits.get(register)
        if sign_bit is not None:
            mag = abs(value)
            if mag >= (1 << sign_bit):
                raise ValueError(f"{register}: |{value}| does not fit {sign_bit} magnitude bits")
            value = mag | ((1 << sign_bit) if value < 0 else 0)
        elif register in self.signed:
            if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
                raise ValueError(f"{register}: value {value} does not fit {size} signed byte(s)")
            value &= (1 << bits) - 1
        if not 0 <= value < (1 << bits):
            raise ValueError(f"{register}: value {value} does not fit {size} byte(s)")
        return value.to_bytes(size, "little" if self.little_endian else "big")

    def decode(self, register: str, data: bytes) -> int:
        """Register bytes -> integer (undoing sign-magnitude / two's complement)."""
        value = int.from_bytes(data, "little" if self.little_endian else "big")
        sign_bit = self.sign_bits.get(register)
        if sign_bit is not None and value & (1 << sign_bit):
            return -(value & ((1 << sign_bit) - 1))
        if register in self.signed and value & (1 << (8 * len(data) - 1)):
            return value - (1 << (8 * len(data)))
        return value

    def out_of_range(self, register: str, value: int) -> str | None:
        """Why ``value`` cannot be a real answer for ``register`` (None when it can)."""
        lo_hi = self.ranges.get(register)
        if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
            return f"{register} = {value} lies outside {lo_hi[0]}..{lo_hi[1]}"
        return None


class Status(NamedTuple):
    """One status packet: who answered, its error byte, its parameters."""

    servo_id: int
    error: int
    params: bytes


class Corrupt(NamedTuple):
    """Bytes that looked like a status packet but failed their checksum / CRC (``servo_id`` as framed)."""

    servo_id: int
    why: str


class ServoProtocol:
    """Framing of one servo family. Subclasses set the constants and implement the methods."""

    name = ""
    broadcast_id = 0xFE
    max_id = 0xFD
    INST_PING = 0x01
    INST_READ = 0x02
    INST_WRITE = 0x03
    INST_SYNC_READ = 0x82
    INST_SYNC_WRITE = 0x83
    identity: tuple[int, int] = (0, 0)  # (address, n_bytes) read to re-synchronise with a servo
    ping_params = 0                      # parameter bytes in a PING answer

    def instruction(self, servo_id: int, instruction: int, params: bytes = b"") -> bytes:
        raise NotImplementedError

    def parse(self, buf: bytearray) -> Status | Corrupt | None:
        """Take the first packet out of ``buf`` (dropping line noise before it); None: need more bytes."""
        raise NotImplementedError

    def status_size(self, n_params: int) -> int:
        """Bytes on the wire of a status packet carrying ``n_params`` parameters (no stuffing)."""
        raise NotImplementedError

    def error_text(self, error: int) -> str | None:
        """What a status packet's error byte says (None: no error)."""
        raise NotImplementedError

    def identity_id(self, params: bytes) -> tuple[int, int]:
        """(model number, id) from the answer to a read of ``identity``."""
        raise NotImplementedError

    def error_hint(self, error: int) -> str:
        """What to do about a status packet's error byte."""
        return "let the servo cool down, check the supply voltage and the load, then re-enable torque"

    def ping_model(self, params: bytes) -> int | None:
        """The model number a PING answer carries, or None when the family's PING carries none."""
        return None

    # parameter layouts, the same shape in every family but for the address / length widths
    def read_params(self, addr: int, size: int) -> bytes:
        raise NotImplementedError

    def write_params(self, addr: int, data: bytes) -> bytes:
        raise NotImplementedError

    def sync_read_params(self, addr: int, size: int, ids: list[int]) -> bytes:
        return self.read_params(addr, size) + bytes(ids)

    def sync_write_params(self, addr: int, size: int, items: list[tuple[int, bytes]]) -> bytes:
        out = bytearray(self.read_params(addr, size))
        for sid, data in items:
            out.append(sid)
            out += data
        return bytes(out)


def protocol_by_name(name: str) -> ServoProtocol:
    try:
        mod, cls = PROTOCOLS[name]
    except KeyError as e:
        raise ValueError(f"unknown servo protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}") from e
    return getattr(importlib.import_module(mod), cls)()


def all_models() -> dict[str, ServoModel]:
    """Every known servo model by name, all families."""
    out: dict[str, ServoModel] = {}
    for mod in _TABLE_MODULES:
        out.update(importlib.import_module(mod).MODELS)
    return out


def model_by_name(name: str, protocol: str | None = None) -> ServoModel:
    """The servo model ``name`` (any family, or only ``protocol``'s); the error lists the known ones."""
    models = all_models()
    if protocol is not None:
        models = {k: m for k, m in models.items() if m.protocol == protocol}
    try:
        return models[name]
    except KeyError as e:
        where = f" for protocol {protocol!r}" if protocol else ""
        raise ValueError(f"unknown servo model {name!r}{where}; known models: {', '.join(models)}") from e


def model_by_number(number: int, protocol: str) -> ServoModel | None:
    """The model of ``protocol`` whose Model_Number is ``number`` (None when unknown)."""
    for m in all_models().values():
        if m.protocol == protocol and m.model_number == number:
            return m
    return None
