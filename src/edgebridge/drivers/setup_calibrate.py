"""Recording a servo arm's joint calibration (``edge-setup calibrate``), the LeRobot way: torque off, the
owner puts the arm in its zero pose (the offsets), then moves every joint through its whole range (the
tick ranges, and the gripper's closed and open ticks); the result is an ``ArmCalibration`` file.

The arm's calibration file so far (the setup's, or the shipped nominal one) is the template: it names the
joints, their servo ids, models and signs, and which way the gripper closes; only the ticks are measured.

- ``RangeRecorder``: the lowest and highest ticks each servo showed, and the servos whose reading
  jumped across the servo's 0 / 4095 boundary (a range must lie within one turn).
- ``record_ranges(bus, ids, stop)``: read every servo's position until ``stop`` is set.
- ``build_calibration(template, arm_id, zero, ranges)``: the new calibration, or one ``ConfigError``
  line naming the joint that was not moved enough, or whose range crosses the boundary.
- ``calibrate(arm, arm_id, ...)``: the procedure on a connected ``SerialArm``, with torque off throughout;
  ``prompt`` asks the owner (None: nothing is asked, the sweep lasts ``sweep_s``).
- ``LiveRanges`` (the ranges so far, redrawn while the owner sweeps) and ``render_calibration``: rich output.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config import ConfigError
from .arm_calibration import ArmCalibration, GripperCalibration, JointCalibration
from .servo_protocol import model_by_name

log = logging.getLogger(__name__)

MIN_SPAN_TICKS = 100   # about 9 degrees at 4096 ticks per turn: a joint moved less was not swept
SAMPLE_PERIOD_S = 0.02

ZERO_POSE = ("Move the arm to its zero pose: every joint at 0 rad of its URDF (SO-101 and Koch: each joint in "
             "the middle of its range, the arm stretched out as in docs/drivers.md), then press Enter")
SWEEP = ("Move every joint, one after another, through its whole range, and open and close the gripper fully; "
         "press Enter when done")


@dataclass
class RangeRecorder:
    """Lowest and highest ticks per servo id; ``wrapped``: ids whose reading jumped by more than half a turn
    between two samples (the joint crossed the servo's zero tick)."""

    resolution: dict[int, int]
    lo: dict[int, int] = field(default_factory=dict)
    hi: dict[int, int] = field(default_factory=dict)
    wrapped: set[int] = field(default_factory=set)
    samples: int = 0
    _last: dict[int, int] = field(default_factory=dict)

    def add(self, ticks: dict[int, int]) -> None:
        for sid, v in ticks.items():
            v = int(v)
            last = self._last.get(sid)
            if last is not None and abs(v - last) > self.resolution[sid] // 2:
                self.wrapped.add(sid)
            self._last[sid] = v
            self.lo[sid] = min(self.lo.get(sid, v), v)
            self.hi[sid] = max(self.hi.get(sid, v), v)
        self.samples += 1

    def last(self, sid: int) -> int | None:
        return self._last.get(sid)


def record_ranges(bus, ids, stop: threading.Event, recorder: RangeRecorder,
                  on_sample: Callable[[RangeRecorder], None] | None = None,
                  period_s: float = SAMPLE_PERIOD_S) -> RangeRecorder:
    """Read the positions of ``ids`` (one SYNC_READ) every ``period_s`` into ``recorder`` until ``stop`` is
    set; a bus fault propagates (``DeviceFaultError`` naming the servo)."""
    ids = list(ids)
    t_next = time.monotonic()
    while True:
        recorder.add(bus.read_positions(ids))
        if on_sample is not None:
            on_sample(recorder)
        if stop.is_set():
            return recorder
        t_next += period_s
        stop.wait(max(0.0, t_next - time.monotonic()))


def build_calibration(template: ArmCalibration, arm_id: str, zero: dict[int, int], ranges: RangeRecorder,
                      min_span: int = MIN_SPAN_TICKS) -> ArmCalibration:
    """The measured calibration: ``template``'s joints (names, ids, models, signs) with offsets from ``zero``
    and tick ranges from ``ranges`` (which should include the zero pose); the gripper's closed / open ticks
    are its range's ends, the way round the template has them."""
    joints = []
    for j in template.joints:
        _check_swept(template, j.name, j.id, ranges, min_span)
        joints.append(JointCalibration(name=j.name, id=j.id, offset=int(zero[j.id]), sign=j.sign,
                                       min=ranges.lo[j.id], max=ranges.hi[j.id], model=j.model))
    g = template.gripper
    _check_swept(template, "gripper", g.id, ranges, min_span)
    lo, hi = ranges.lo[g.id], ranges.hi[g.id]
    closed, opened = (lo, hi) if g.closed < g.open else (hi, lo)
    try:
        return ArmCalibration(arm_id=arm_id, joints=tuple(joints), model=template.model,
                              gripper=GripperCalibration(id=g.id, closed=closed, open=opened, model=g.model))
    except ConfigError as e:
        raise ConfigError(f"calibration of arm {arm_id!r}: {e}") from e


def _check_swept(template: ArmCalibration, name: str, sid: int, ranges: RangeRecorder, min_span: int) -> None:
    if sid not in ranges.lo:
        raise ConfigError(f"{name} (servo {sid}): no position was read; check that servo's cable")
    if sid in ranges.wrapped:
        res = model_by_name(template.models_by_id()[sid]).resolution
        raise ConfigError(f"{name} (servo {sid}): its reading jumped between {res - 1} and 0 while it moved, so its "
                          f"range crosses the servo's zero tick; re-seat the servo horn (or the joint) so the whole "
                          f"range lies within one turn, then calibrate again")
    span = ranges.hi[sid] - ranges.lo[sid]
    if span < min_span:
        raise ConfigError(f"{name} (servo {sid}): moved only {span} ticks ({ranges.lo[sid]}..{ranges.hi[sid]}, at "
                          f"least {min_span} needed); move it through its whole range during the sweep, or check "
                          f"that this servo id sits in that joint")


def calibrate(arm, arm_id: str, *, prompt: Callable[[str], str] | None = None, sweep_s: float = 5.0,
              say: Callable[[str], None] = log.info,
              on_sample: Callable[[RangeRecorder], None] | None = None) -> ArmCalibration:
    """The procedure on a connected servo arm (``SerialArm``: ``bus``, ``calibration`` as the template,
    ``torque_disabled()``). ``prompt`` (None: nothing asked): Enter once the arm is in its zero pose, Enter
    again to end the sweep; without it the zero pose is read at once and the sweep lasts ``sweep_s``."""
    template: ArmCalibration = arm.calibration
    ids = template.all_ids
    res = {sid: model_by_name(m).resolution for sid, m in template.models_by_id().items()}
    recorder = RangeRecorder(res)
    with arm.torque_disabled():
        say("torque is off on every servo: the arm can be moved by hand (support it: it may sag)")
        if prompt is not None:
            prompt(ZERO_POSE)
        zero = arm.bus.read_positions(ids)
        say("zero pose: " + ", ".join(f"{sid}={t}" for sid, t in zero.items()))
        recorder.add(zero)
        stop = threading.Event()
        if prompt is None:
            timer = threading.Timer(sweep_s, stop.set)
            timer.daemon = True
            say(f"recording the joint ranges for {sweep_s:g} s")
            timer.start()
        else:
            say(SWEEP)
            waiter = threading.Thread(target=lambda: (prompt(""), stop.set()), name="calibrate-enter", daemon=True)
            waiter.start()
        try:
            record_ranges(arm.bus, ids, stop, recorder, on_sample)
        finally:
            stop.set()
    return build_calibration(template, arm_id, zero, recorder)


class LiveRanges:
    """While the owner sweeps the joints: each servo's lowest, present and highest ticks, redrawn in place."""

    def __init__(self, template, con) -> None:
        self.names = {j.id: j.name for j in template.joints} | {template.gripper.id: "gripper"}
        self.con, self.live, self.last = con, None, 0.0

    def __call__(self, rec: RangeRecorder) -> None:
        from rich.live import Live
        from rich.table import Table

        if time.monotonic() - self.last < 0.1:
            return
        self.last = time.monotonic()
        t = Table("joint", "id", "min", "now", "max", title="ranges so far (press Enter when done)")
        for sid, name in self.names.items():
            t.add_row(name, str(sid), str(rec.lo.get(sid, "-")), str(rec.last(sid)), str(rec.hi.get(sid, "-")))
        if self.live is None:
            self.live = Live(t, console=self.con, auto_refresh=False)
            self.live.start()
        self.live.update(t, refresh=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def render_calibration(cal: ArmCalibration, con) -> None:
    """The recorded calibration as a table (ticks, and the joint range in degrees)."""
    from rich.table import Table

    t = Table(title=f"calibration of {cal.arm_id}")
    for col in ("joint", "id", "offset", "min", "max", "range deg"):
        t.add_column(col, justify="left" if col == "joint" else "right")
    lo, hi = cal.joint_limits()
    for j, a, b in zip(cal.joints, lo, hi):
        t.add_row(j.name, str(j.id), str(j.offset), str(j.min), str(j.max),
                  f"{math.degrees(a):.0f}..{math.degrees(b):.0f}")
    g = cal.gripper
    t.add_row("gripper", str(g.id), "-", f"closed {g.closed}", f"open {g.open}", "-")
    con.print(t)
