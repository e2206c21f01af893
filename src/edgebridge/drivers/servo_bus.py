"""A serial servo bus over pyserial: PING, READ, WRITE, SYNC_READ, SYNC_WRITE, for any servo family.

The framing comes from a ``ServoProtocol`` (``feetech``: Feetech STS/SCS, ``dynamixel2``: Dynamixel
protocol 2.0) and the registers from each servo's ``ServoModel`` (one bus may mix models of a family, as
the Koch arm mixes XL430 and XL330). Everything else lives here, the same for every family:

- Every answer is matched to its request: it must come from an id that was asked and carry exactly the
  number of bytes asked for; the input buffer is flushed before each request and anything else is dropped
  (``stats.stale``). A status packet names neither the instruction nor the address it answers, so after a
  fault (a timeout, a garbled answer) every servo whose answer was not taken is marked out of step; before
  it is asked again the bus reads its identity (model number and id; each such read asks for a different
  number of bytes, so no earlier answer can pass for it) and drops whatever comes first: a servo answers
  in order, so its late answers arrive before that one. A late answer is never taken for a later request.
- A well-formed answer that cannot be right (a wrong number of data bytes from the servo asked, a value
  outside the range its model can hold) is a ``malformed`` fault, never a silent servo.
- Every failure raises one ``DeviceFaultError`` line naming the port, the servo id, the transaction and the
  likely cause and fix: silent (power, cable, id, baud rate), garbled (shared id, noise), wrong id, servo
  error bits, malformed. The error carries ``kind`` and ``servo_id``. Timeouts, garbled and malformed
  answers are retried ``retries`` times; servo error bits never are.

For the arm and the setup commands: ``read_positions``, ``torque_off`` (acknowledged by every servo)
and ``hold_and_enable`` (goal = present, read back, then torque on: the arm does not move); scanning,
set-id and set-baud live in ``servo_setup``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..config import check
from ..errors import DeviceFaultError, DeviceNotConnectedError
from .servo_protocol import PROTOCOLS, ServoModel, Status, model_by_name, protocol_by_name

log = logging.getLogger(__name__)

PROBE_LENGTHS = 16  # re-synchronisation reads cycle through this many lengths

HINTS = {
    "timeout": "silent: check its power supply (the USB cable alone does not power the servos), its cable, and "
               "that its id is {sid} and its baud rate {baud}",
    "checksum": "garbled: two servos may share id {sid}, or there is noise on the bus (check the cable and "
                "grounding, or lower the baud rate)",
    "wrong_id": "a servo answers with the wrong id or two servos share an id: scan the bus and re-assign ids one "
                "servo at a time",
    "servo_error": "{error_hint}",
    "malformed": "check that the servo model ({model}) and protocol ({protocol}) match the hardware and its "
                 "firmware, or replace the servo",
}


@dataclass(frozen=True)
class ServoBusConfig:
    """A servo bus on one serial port. ``model``: the servos' model unless told per id.

    ``timeout_s`` bounds one answer; ``retries`` repeats a transaction that timed out or came back garbled or
    malformed (a servo error bit is never retried).
    """

    port: str
    model: str = "sts3215"
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 1
    protocol: str = "feetech"

    def __post_init__(self) -> None:
        check(isinstance(self.port, str) and bool(self.port), "port", f"expected a device path, got {self.port!r}")
        check(self.baudrate > 0, "baudrate", f"must be > 0, got {self.baudrate}")
        check(0 < self.timeout_s <= 5.0, "timeout_s", f"must be in (0, 5] seconds, got {self.timeout_s}")
        check(0 <= self.retries <= 10, "retries", f"must be in [0, 10], got {self.retries}")
        check(self.protocol in PROTOCOLS, "protocol", f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        try:
            model_by_name(self.model, self.protocol)
        except ValueError as e:
            check(False, "model", str(e))


@dataclass
class BusStats:
    """Counters for the bus: packets sent/received, answers dropped as stale, faults by kind."""

    tx_packets: int = 0
    rx_packets: int = 0
    stale: int = 0
    resyncs: int = 0
    faults: dict = field(default_factory=lambda: {"timeout": 0, "checksum": 0, "wrong_id": 0, "servo_error": 0,
                                                  "malformed": 0})


class _BusFault(Exception):
    """Internal: one failed attempt. ``unanswered``: ids whose answers were not taken (now out of step)."""

    def __init__(self, kind: str, msg: str, servo_id: int | None = None, unanswered: Iterable[int] = (),
                 error: int = 0) -> None:
        super().__init__(msg)
        self.kind = kind
        self.error = error
        self.servo_id = servo_id
        self.unanswered = set(unanswered)


class ServoBus:
    """A servo bus on one serial port (pyserial); see the module docstring."""

    def __init__(self, config: ServoBusConfig, models: Mapping[int, str | ServoModel] | None = None) -> None:
        self.config = config
        self.protocol = protocol_by_name(config.protocol)
        self.model = model_by_name(config.model, config.protocol)
        self.stats = BusStats()
        self._models: dict[int, ServoModel] = {}
        for sid, m in (models or {}).items():
            self.set_model(sid, m)
        self._ser: Any = None
        self._fd: int | None = None
        self._rx = bytearray()
        self._out_of_step: set[int] = set()

    # ------------------------------------------------------------------ models
    def set_model(self, servo_id: int, model: str | ServoModel) -> None:
        m = model if isinstance(model, ServoModel) else model_by_name(model, self.config.protocol)
        if m.protocol != self.protocol.name:
            raise ValueError(f"servo {servo_id}: model {m.name} speaks {m.protocol}, this bus {self.protocol.name}")
        self._models[int(servo_id)] = m

    def model_of(self, servo_id: int) -> ServoModel:
        return self._models.get(servo_id, self.model)

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
        try:
            self._fd = self._ser.fileno()
        except Exception:  # no file descriptor (not POSIX): read through pyserial
            self._fd = None
        self._ser.reset_input_buffer()
        self._rx.clear()

    def reopen(self, baudrate: int) -> None:
        """Close and open again at ``baudrate`` (after servos were switched to it)."""
        self.close()
        self.config = dataclasses.replace(self.config, baudrate=int(baudrate))
        self._out_of_step.clear()
        self.open()

    def close(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            finally:
                self._ser = None
                self._fd = None

    def __enter__(self) -> "ServoBus":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    def ping(self, servo_id: int, timeout_s: float | None = None) -> bool:
        """True if ``servo_id`` answers a PING; False on silence. Garbled answers raise."""
        return self._ping(servo_id, timeout_s) is not None

    def ping_model(self, servo_id: int, timeout_s: float | None = None) -> int | None:
        """The model number of ``servo_id`` (PING, plus a READ of Model_Number where PING carries none);
        None when it is silent."""
        st = self._ping(servo_id, timeout_s)
        if st is None:
            return None
        number = self.protocol.ping_model(st.params)
        return number if number is not None else self.read(servo_id, "Model_Number")

    def _ping(self, servo_id: int, timeout_s: float | None) -> Status | None:
        p = self.protocol
        try:
            return self._exchange(p.instruction(servo_id, p.INST_PING), {servo_id: p.ping_params}, "PING",
                                  retry=False, timeout_s=timeout_s)[servo_id]
        except DeviceFaultError as e:
            if getattr(e, "kind", None) == "timeout":
                return None
            raise

    def read(self, servo_id: int, register: str) -> int:
        model = self.model_of(servo_id)
        addr, size = model.register(register)
        p = self.protocol
        st = self._exchange(p.instruction(servo_id, p.INST_READ, p.read_params(addr, size)), {servo_id: size},
                            f"READ {register}", decode=((register, 0, size),))
        return model.decode(register, st[servo_id].params)

    def write(self, servo_id: int, register: str, value: int) -> None:
        """WRITE one register and wait for the servo's status packet."""
        model = self.model_of(servo_id)
        self._check_writable(model, register)
        addr, _ = model.register(register)
        p = self.protocol
        self._exchange(p.instruction(servo_id, p.INST_WRITE, p.write_params(addr, model.encode(register, value))),
                       {servo_id: 0}, f"WRITE {register}")

    def write_no_answer(self, servo_id: int, register: str, value: int) -> None:
        """WRITE without waiting for the status packet (a write that changes how the servo answers)."""
        model = self.model_of(servo_id)
        self._check_writable(model, register)
        addr, _ = model.register(register)
        p = self.protocol
        try:
            self._send(p.instruction(servo_id, p.INST_WRITE, p.write_params(addr, model.encode(register, value))))
        except _BusFault as f:
            raise self._fault_error(f, f"WRITE {register}") from f
        self._out_of_step.add(servo_id)  # its answer, if any, is still to come

    def sync_read(self, register: str, ids: Iterable[int]) -> dict[int, int]:
        """SYNC_READ ``register`` from ``ids``; returns {id: value}."""
        return {sid: v[register] for sid, v in self.sync_read_span((register,), ids).items()}

    def sync_read_span(self, registers: Iterable[str], ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """One SYNC_READ of the contiguous span covering ``registers`` (e.g. Present_Velocity and
        Present_Position); returns {id: {register: value}}."""
        ids = self._check_ids(ids)
        registers = tuple(registers)
        spans = [self._common(r, ids) for r in registers]
        start = min(a for a, _ in spans)
        size = max(a + n for a, n in spans) - start
        p = self.protocol
        if size > 64:
            raise ValueError(f"registers {registers} span {size} bytes; read them separately")
        layout = tuple((r, a - start, n) for r, (a, n) in zip(registers, spans))
        packet = p.instruction(p.broadcast_id, p.INST_SYNC_READ, p.sync_read_params(start, size, ids))
        got = self._exchange(packet, {sid: size for sid in ids}, f"SYNC_READ {'+'.join(registers)}", decode=layout)
        return {sid: {r: self.model_of(sid).decode(r, got[sid].params[o:o + n]) for r, o, n in layout} for sid in ids}

    def sync_write(self, register: str, values: Mapping[int, int]) -> bytes:
        """SYNC_WRITE one register on several servos (no answer); returns the packet sent."""
        ids = self._check_ids(values)
        addr, size = self._common(register, ids)
        for sid in ids:
            self._check_writable(self.model_of(sid), register)
        p = self.protocol
        items = [(sid, self.model_of(sid).encode(register, values[sid])) for sid in ids]
        packet = p.instruction(p.broadcast_id, p.INST_SYNC_WRITE, p.sync_write_params(addr, size, items))
        try:
            self._send(packet)
        except _BusFault as f:
            raise self._fault_error(f, f"SYNC_WRITE {register}") from f
        return packet

    # ------------------------------------------------------------------ torque and positions
    def read_positions(self, ids: Iterable[int]) -> dict[int, int]:
        """Present_Position of ``ids`` (one SYNC_READ), whatever their torque."""
        return self.sync_read("Present_Position", ids)

    def torque_off(self, ids: Iterable[int]) -> dict[int, DeviceFaultError]:
        """Torque off on every servo of ``ids``, whatever fails: one SYNC_WRITE, then a WRITE to each servo,
        which acknowledges it (an answer carrying error bits still says the servo took it). Returns
        {id: error} for the servos that did not acknowledge (empty: all off)."""
        ids = self._check_ids(ids)
        try:
            self.sync_write("Torque_Enable", {i: 0 for i in ids})
        except DeviceFaultError as e:
            log.warning("%s; writing torque off to each servo instead", e)
        errors = {}
        for sid in ids:
            try:
                self.write(sid, "Torque_Enable", 0)
            except DeviceFaultError as e:
                if getattr(e, "kind", None) != "servo_error":
                    errors[sid] = e
        return errors

    def hold_and_enable(self, ids: Iterable[int]) -> dict[int, int]:
        """Goal = present on ``ids``, read back, then torque on: the servos do not move. Refuses (torque left
        as it was) when a servo does not take its goal. Returns the goals written."""
        ids = self._check_ids(ids)
        goals = self.read_positions(ids)
        for attempt in range(2):
            self.sync_write("Goal_Position", goals)
            back = self.sync_read("Goal_Position", ids)
            wrong = {i: back[i] for i in ids if back[i] != goals[i]}
            if not wrong:
                break
        else:
            sid = next(iter(wrong))
            raise DeviceFaultError(
                f"servo bus {self.config.port}: servo {sid} did not take goal = present (wrote {goals[sid]}, reads "
                f"back {wrong[sid]}); torque left off so the arm cannot jump: check that servo's cable and that "
                f"no other program writes to the bus")
        self.sync_write("Torque_Enable", {i: 1 for i in ids})
        return goals

    # ------------------------------------------------------------------ internals
    def _require_open(self) -> None:
        if self._ser is None:
            raise DeviceNotConnectedError(f"servo bus on {self.config.port!r} is not open; call open() first")

    @staticmethod
    def _check_writable(model: ServoModel, register: str) -> None:
        model.register(register)
        if register in model.read_only:
            raise ValueError(f"register {register!r} is read-only on {model.name}")

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("need at least one servo id")
        top = self.protocol.max_id
        bad = [i for i in ids if not 0 <= i <= top]
        if bad or len(set(ids)) != len(ids):
            raise ValueError(f"servo ids must be unique and in [0, {top}], got {ids}")
        return ids

    def _common(self, register: str, ids: list[int]) -> tuple[int, int]:
        """(address, size) of ``register``, which must be the same on every servo of ``ids``."""
        where = {self.model_of(i).register(register) for i in ids}
        if len(where) != 1:
            raise ValueError(f"register {register} sits at different addresses on servos {ids}; "
                             f"read it from each servo")
        return where.pop()

    def _exchange(self, packet: bytes, want: dict[int, int], what: str, *, retry: bool = True,
                  timeout_s: float | None = None, decode: tuple = ()) -> dict[int, Status]:
        """Send ``packet``; take one answer from each id of ``want`` (id -> data bytes); check ``decode``'s
        (register, offset, size) values against the models' ranges."""
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        last: _BusFault | None = None
        for attempt in range(self.config.retries + 1 if retry else 1):
            try:
                for sid in [i for i in want if i in self._out_of_step]:
                    self._resync(sid, timeout)
                self._send(packet)
                got = self._collect(want, timeout)
                for sid, st in got.items():
                    self._check_values(sid, st.params, decode)
                return got
            except _BusFault as f:
                last = f
                self.stats.faults[f.kind] = self.stats.faults.get(f.kind, 0) + 1
                self._out_of_step |= f.unanswered
                log.debug("servo bus %s: %s attempt %d failed: %s", self.config.port, what, attempt + 1, f)
                if f.kind == "servo_error":
                    break
        raise self._fault_error(last, what) from last

    def _check_values(self, sid: int, params: bytes, decode: tuple) -> None:
        model = self.model_of(sid)
        for register, offset, size in decode:
            why = model.out_of_range(register, model.decode(register, params[offset:offset + size]))
            if why:
                raise _BusFault("malformed", f"answered {why}", sid)

    def _collect(self, want: dict[int, int], timeout: float) -> dict[int, Status]:
        p = self.protocol
        pending = dict(want)
        got: dict[int, Status] = {}
        others: list[int] = []
        wire = sum(p.status_size(n) for n in want.values()) * 10 / self.config.baudrate
        deadline = time.monotonic() + timeout + wire
        while pending:
            item = self._next_packet(deadline)
            if item is None:
                sid = next(iter(pending))
                if others:
                    raise _BusFault("wrong_id", f"no answer from servo {sid}, but from id(s) {sorted(set(others))}",
                                    sid, pending)
                answered = f" (servo(s) {', '.join(map(str, got))} did)" if got else ""
                raise _BusFault("timeout", f"no answer within {timeout * 1e3:.0f} ms{answered}", sid, pending)
            if not isinstance(item, Status):
                sid = item.servo_id if item.servo_id in pending else next(iter(pending))
                raise _BusFault("checksum", f"garbled answer ({item.why})", sid, pending)
            sid = item.servo_id
            if sid not in pending:  # a late answer of an earlier fault, or a servo with a duplicate id
                if sid not in self._out_of_step:  # known to be late: no sign of a wrong id
                    others.append(sid)
                self.stats.stale += 1
                continue
            err = p.error_text(item.error)
            if err is not None:
                pending.pop(sid)
                raise _BusFault("servo_error", f"servo reports {err}", sid, pending, error=item.error)
            if len(item.params) != pending[sid]:
                n = pending.pop(sid)
                raise _BusFault("malformed", f"answered with {len(item.params)} data byte(s) where {n} were asked",
                                sid, pending)
            got[sid] = item
            del pending[sid]
            deadline = max(deadline, time.monotonic() + timeout)
        return got

    def _resync(self, sid: int, timeout: float) -> None:
        """Bring ``sid`` back in step: read its identity, dropping whatever comes before that answer."""
        p = self.protocol
        addr, size = p.identity
        size += self.stats.resyncs % PROBE_LENGTHS  # each probe its own length: a stale probe answer is no match
        self.stats.resyncs += 1
        self._send(p.instruction(sid, p.INST_READ, p.read_params(addr, size)))
        deadline = time.monotonic() + timeout
        garbled, others = False, set()
        while True:
            item = self._next_packet(deadline)
            if item is None:
                again = "(asked again after an earlier fault)"
                if garbled:
                    raise _BusFault("checksum", f"garbled answers only {again}", sid, {sid})
                if others:
                    raise _BusFault("wrong_id", f"no answer, but from id(s) {sorted(others)} {again}", sid, {sid})
                raise _BusFault("timeout", f"no answer {again}", sid, {sid})
            if not isinstance(item, Status):
                garbled = True
            elif item.servo_id == sid and len(item.params) == size and p.identity_id(item.params)[1] == sid:
                self._out_of_step.discard(sid)
                return
            elif item.servo_id != sid and item.servo_id not in self._out_of_step:
                others.add(item.servo_id)
            self.stats.stale += 1

    def _fault_error(self, f: _BusFault, what: str) -> DeviceFaultError:
        sid = f.servo_id
        model = self.model_of(sid) if sid is not None else self.model
        hint = HINTS.get(f.kind, "check the bus").format(
            sid=sid, baud=self.config.baudrate, model=model.name, protocol=self.protocol.name,
            error_hint=self.protocol.error_hint(f.error))
        who = f"servo {sid}" if sid is not None else "the bus"
        e = DeviceFaultError(f"servo bus {self.config.port}: {who}, {what}: {f}; {hint}")
        e.kind, e.servo_id = f.kind, sid
        return e

    def _send(self, packet: bytes) -> None:
        self._require_open()
        self._rx.clear()
        try:
            self._ser.reset_input_buffer()
            self._ser.write(packet)
            self._ser.flush()
        except Exception as e:
            raise _BusFault("timeout", f"write to the port failed ({e}); was the adapter unplugged?") from e
        self.stats.tx_packets += 1

    def _next_packet(self, deadline: float):
        """The next parsed packet (``Status`` or ``Corrupt``) or None at the deadline."""
        while True:
            item = self.protocol.parse(self._rx)
            if item is not None:
                if isinstance(item, Status):
                    self.stats.rx_packets += 1
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                if self._fd is not None:
                    if not select.select([self._fd], [], [], remaining)[0]:
                        return None
                    data = os.read(self._fd, 4096)
                    if not data:
                        raise OSError("end of file")
                else:
                    data = self._ser.read(max(1, self._ser.in_waiting))
            except OSError as e:
                raise _BusFault("timeout", f"read from the port failed ({e}); was the adapter unplugged?") from e
            self._rx += data
