"""What an arm owner does once on a servo bus, as functions over ``ServoBus`` (no prompts: the
``edge-setup`` commands wrap these).

- ``find_servos(port)``: try each protocol and baud rate; what answers where (ids, model numbers).
- ``scan(bus)``: PING every id on an open bus -> ``BusScan`` (id -> model number, garbled ids).
- ``set_id(bus, old, new)`` / ``set_baudrate(bus, id, baud)``: EEPROM writes, torque off first (and the
  Feetech EEPROM lock opened and closed again).
- ``read_positions`` / ``torque_off`` are ``ServoBus`` methods: torque off, move the arm by hand, read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

from ..errors import DeviceFaultError
from .servo_bus import ServoBus, ServoBusConfig
from .servo_protocol import PROTOCOLS, model_by_number

log = logging.getLogger(__name__)

COMMON_BAUDRATES = (1_000_000, 57_600, 115_200, 500_000, 2_000_000, 3_000_000, 4_000_000)
DEFAULT_MODEL = {"feetech": "sts3215", "dynamixel2": "xl430-w250"}


@dataclass(frozen=True)
class BusScan:
    """What answered on one port at one baud rate in one protocol: ``servos`` id -> model number;
    ``garbled`` ids answered with corrupt packets (two servos sharing the id, or noise)."""

    port: str
    protocol: str
    baudrate: int
    servos: dict
    garbled: tuple = ()

    def model_name(self, servo_id: int) -> str | None:
        """The model name of the servo at ``servo_id`` (None: a model number this package does not know)."""
        m = model_by_number(self.servos[servo_id], self.protocol)
        return m.name if m else None


def scan(bus: ServoBus, ids: Iterable[int] | None = None, timeout_s: float = 0.01) -> BusScan:
    """PING every id (default: all) with a short timeout: what answers on this open bus."""
    found, garbled = {}, []
    for sid in (range(bus.protocol.max_id + 1) if ids is None else ids):
        try:
            number = bus.ping_model(sid, timeout_s=timeout_s)
        except DeviceFaultError as e:
            log.warning("%s", e)
            garbled.append(sid)
            continue
        if number is not None:
            found[sid] = number
    return BusScan(bus.config.port, bus.protocol.name, bus.config.baudrate, found, tuple(garbled))


def find_servos(port: str, protocols: Iterable[str] = tuple(PROTOCOLS), baudrates: Iterable[int] = COMMON_BAUDRATES,
                ids: Iterable[int] | None = None, timeout_s: float = 0.01) -> list[BusScan]:
    """Every (protocol, baud rate) at which something answers on ``port``, with what answered."""
    out = []
    ids = None if ids is None else list(ids)
    for protocol in protocols:
        for baud in baudrates:
            cfg = ServoBusConfig(port, model=DEFAULT_MODEL[protocol], baudrate=baud, protocol=protocol, retries=0)
            with ServoBus(cfg) as bus:
                found = scan(bus, ids, timeout_s)
            if found.servos or found.garbled:
                out.append(found)
    return out


def set_id(bus: ServoBus, old_id: int, new_id: int) -> None:
    """Give the servo at ``old_id`` the id ``new_id`` (stored in its EEPROM). Connect one servo at a time:
    ``new_id`` must be free."""
    port = bus.config.port
    if not bus.ping(old_id):
        raise DeviceFaultError(f"servo bus {port}: no servo answers at id {old_id}; scan the bus for its id")
    if bus.ping(new_id):
        raise DeviceFaultError(f"servo bus {port}: id {new_id} is already taken; connect one servo at a time, "
                               f"or pick a free id")
    bus.set_model(new_id, bus.model_of(old_id))
    _write_eeprom(bus, old_id, "ID", new_id)
    if not bus.ping(new_id):
        raise DeviceFaultError(f"servo bus {port}: servo {old_id} took id {new_id} but does not answer there; "
                               f"power-cycle it and scan the bus")


def set_baudrate(bus: ServoBus, servo_id: int, baudrate: int) -> None:
    """Switch ``servo_id`` to ``baudrate``; the bus reopens at that rate (other servos stay at the old one:
    switch them all, one after another, with the same call)."""
    model = bus.model_of(servo_id)
    codes = model.baud_codes
    if baudrate not in codes:
        raise ValueError(f"servo {servo_id}: baud rate {baudrate} not supported; choose one of {sorted(codes)}")
    lock = _unlock(bus, servo_id)
    bus.write_no_answer(servo_id, "Baud_Rate", codes[baudrate])  # it may answer at either rate
    bus.reopen(baudrate)
    if not bus.ping(servo_id, timeout_s=0.1):
        raise DeviceFaultError(f"servo bus {bus.config.port}: servo {servo_id} does not answer at {baudrate} baud "
                               f"after the switch; power-cycle it and look for it with find_servos")
    if lock:
        bus.write(servo_id, "Lock", 1)


def _unlock(bus: ServoBus, servo_id: int) -> bool:
    """Torque off, and open the Feetech EEPROM lock; True when a lock was opened."""
    model = bus.model_of(servo_id)
    bus.write(servo_id, "Torque_Enable", 0)
    lock = model.protocol == "feetech" and "Lock" in model.table
    if lock:
        bus.write(servo_id, "Lock", 0)
    return lock


def _write_eeprom(bus: ServoBus, servo_id: int, register: str, value: int) -> None:
    """Torque off, EEPROM lock open, write (the answer to a write of ID may come from either id: not
    waited for), lock closed again at the id that now answers."""
    lock = _unlock(bus, servo_id)
    if register == "ID":
        bus.write_no_answer(servo_id, register, value)
        time.sleep(bus.config.timeout_s)  # let the servo store it (EEPROM) and answer, before the next request
    else:
        bus.write(servo_id, register, value)
    if lock:
        bus.write(value if register == "ID" else servo_id, "Lock", 1)
