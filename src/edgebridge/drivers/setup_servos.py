"""What ``edge-setup scan`` and ``edge-setup set-id`` do on a servo bus, over ``servo_setup`` (no prompts).

- ``scan_port(port, protocols, baudrates, ids)``: every (protocol, baud rate) at which something answers,
  one ``BusScan`` each; ``progress`` is told each combination before it is tried.
- ``only_servo(scans, port)``: the one servo that answered (LeRobot's rule for setting ids: one servo
  connected at a time); refuses, naming every servo that answered, when there are more, or a garbled id
  where it answered (two servos sharing an id).
- ``assign_id(port, scan, old, new, baudrate=None)``: write the new id (and optionally a new baud rate).
- ``set_operating_mode(port, protocol, baudrate, ids, mode)``: torque off, then Operating_Mode (EEPROM; the
  Feetech lock opened and closed again), read back; only the modes in which Goal_Position commands a
  position (the arm refuses any other).
- ``scans_to_dict`` / ``render_scans``: JSON and a rich table.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from ..errors import DeviceFaultError
from .servo_bus import ServoBus, ServoBusConfig
from .servo_protocol import model_by_number
from .servo_setup import DEFAULT_MODEL, BusScan, find_servos, set_baudrate, set_id

log = logging.getLogger(__name__)

SCAN_TIMEOUT_S = 0.01  # one PING; a silent id costs this much


class SetupRefused(Exception):
    """The bus is not in a state the command can act on (several servos, none, an unknown model)."""


def parse_ids(text: str | None, top: int = 253) -> list[int] | None:
    """``"1-6,10"`` -> [1, 2, 3, 4, 5, 6, 10]; None or empty -> None (every id)."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            lo, hi = int(a), int(b) if b else int(a)
            out.extend(range(lo, hi + 1))
    except ValueError as e:
        raise ValueError(f"--ids: expected ids and ranges such as 1-6,10, got {text!r}") from e
    bad = [i for i in out if not 0 <= i <= top]
    if bad or not out:
        raise ValueError(f"--ids: ids must lie in [0, {top}], got {text!r}")
    return sorted(set(out))


def scan_port(port: str, protocols: Iterable[str], baudrates: Iterable[int], ids: Iterable[int] | None = None,
              progress: Callable[[str, int], None] | None = None, timeout_s: float = SCAN_TIMEOUT_S) -> list[BusScan]:
    """Every (protocol, baud rate) of ``protocols`` x ``baudrates`` at which something answers on ``port``."""
    ids = None if ids is None else list(ids)
    found = []
    for protocol in protocols:
        for baud in baudrates:
            if progress is not None:
                progress(protocol, baud)
            found += find_servos(port, (protocol,), (baud,), ids, timeout_s)
    return found


def _servo_text(scan: BusScan, sid: int) -> str:
    name = scan.model_name(sid) or f"model number {scan.servos[sid]}"
    return f"id {sid} ({name}, {scan.protocol} at {scan.baudrate} baud)"


def only_servo(scans: list[BusScan], port: str) -> tuple[BusScan, int]:
    """The single servo that answered; ``SetupRefused`` naming them when none or several did."""
    servos = [(s, sid) for s in scans for sid in sorted(s.servos)]
    if not servos:
        garbled = [f"id {sid} ({s.protocol} at {s.baudrate} baud)" for s in scans for sid in s.garbled]
        extra = f"; garbled answers from {', '.join(garbled)} (two servos sharing an id?)" if garbled else ""
        raise SetupRefused(f"no servo answers on {port}{extra}; check the servo's power supply (the USB cable "
                           f"alone does not power it), its cable, and the protocol and baud rates tried")
    if len(servos) > 1:
        raise SetupRefused(f"more than one servo answers on {port}: {', '.join(_servo_text(s, i) for s, i in servos)}; "
                           f"connect only the servo whose id you want to set (one at a time, as LeRobot's "
                           f"setup-motors does)")
    scan, sid = servos[0]
    if scan.garbled:
        raise SetupRefused(f"on {port} ({scan.protocol} at {scan.baudrate} baud) servo id {sid} answers, and id(s) "
                           f"{list(scan.garbled)} answer garbled (two servos sharing an id, or noise); connect one "
                           f"servo at a time")
    for other in scans:
        if other.garbled and other is not scan:
            log.warning("garbled answers on %s at %s %d baud from id(s) %s (noise at the wrong baud rate?); "
                        "going on with %s", port, other.protocol, other.baudrate, list(other.garbled),
                        _servo_text(scan, sid))
    return scan, sid


def assign_id(port: str, scan: BusScan, old: int, new: int, baudrate: int | None = None,
              timeout_s: float = 0.05) -> None:
    """Give the servo at ``old`` (as ``scan`` found it) id ``new``; then, if ``baudrate`` is set, switch it to
    that baud rate."""
    model = scan.model_name(old)
    if model is None:
        raise SetupRefused(f"servo {old} on {port} reports model number {scan.servos[old]}, which edgebridge has no "
                           f"register table for ({scan.protocol}); set its id with the vendor's tool")
    cfg = ServoBusConfig(port, model=DEFAULT_MODEL[scan.protocol], baudrate=scan.baudrate, timeout_s=timeout_s,
                         retries=1, protocol=scan.protocol)
    with ServoBus(cfg, models={old: model, new: model}) as bus:
        if old != new:
            set_id(bus, old, new)
        if baudrate is not None and baudrate != scan.baudrate:
            set_baudrate(bus, new, baudrate)
        if not bus.ping(new):
            raise DeviceFaultError(f"servo bus {port}: servo {new} does not answer after the change; power-cycle "
                                   f"it and scan the bus")


def set_operating_mode(port: str, protocol: str, baudrate: int, ids: Iterable[int], mode: int,
                       timeout_s: float = 0.05) -> dict[int, str]:
    """Write Operating_Mode ``mode`` to every servo of ``ids`` (torque off first) and read it back; returns
    id -> model name. Every servo is checked before any is written."""
    cfg = ServoBusConfig(port, model=DEFAULT_MODEL[protocol], baudrate=baudrate, timeout_s=timeout_s, retries=1,
                         protocol=protocol)
    with ServoBus(cfg) as bus:
        models = {}
        for sid in ids:
            number = bus.ping_model(sid)
            if number is None:
                raise SetupRefused(f"servo {sid} does not answer on {port} ({protocol} at {baudrate} baud); scan the "
                                   f"bus for its id and baud rate")
            m = model_by_number(number, protocol)
            if m is None or "Operating_Mode" not in m.table:
                raise SetupRefused(f"servo {sid} on {port} (model number {number}) has no Operating_Mode register "
                                   f"edgebridge knows")
            if mode not in m.position_modes:
                raise SetupRefused(f"servo {sid} ({m.name}): mode {mode} does not hold a goal position, which the arm "
                                   f"needs; choose one of {list(m.position_modes)}")
            bus.set_model(sid, m)
            models[sid] = m
        for sid, m in models.items():
            bus.write(sid, "Torque_Enable", 0)
            lock = m.protocol == "feetech" and "Lock" in m.table
            if lock:
                bus.write(sid, "Lock", 0)
            bus.write(sid, "Operating_Mode", mode)
            if lock:
                bus.write(sid, "Lock", 1)
            back = bus.read(sid, "Operating_Mode")
            if back != mode:
                raise DeviceFaultError(f"servo bus {port}: servo {sid} reads back Operating_Mode {back} after "
                                       f"writing {mode}; power-cycle it and try again")
    return {sid: m.name for sid, m in models.items()}


def scans_to_dict(scans: list[BusScan]) -> list[dict]:
    return [{"port": s.port, "protocol": s.protocol, "baudrate": s.baudrate,
             "servos": {str(sid): {"model_number": n, "model": s.model_name(sid)}
                        for sid, n in sorted(s.servos.items())},
             "garbled": list(s.garbled)} for s in scans]


def render_scans(scans: list[BusScan], port: str, console) -> None:
    from rich.table import Table

    t = Table(title=f"servos on {port}")
    for col in ("protocol", "baud", "id", "model number", "model"):
        t.add_column(col, justify="right" if col in ("baud", "id", "model number") else "left")
    for s in scans:
        for sid, number in sorted(s.servos.items()):
            t.add_row(s.protocol, str(s.baudrate), str(sid), str(number), s.model_name(sid) or "(unknown model)")
        for sid in s.garbled:
            t.add_row(s.protocol, str(s.baudrate), str(sid), "-", "[red]garbled[/red] (two servos share this id?)")
    console.print(t)
