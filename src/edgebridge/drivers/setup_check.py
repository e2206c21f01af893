"""``edge-setup check-arm``: move each joint of a connected, enabled arm a small step and back, slowly, and
report per joint how well the arm followed.

Every command is shaped by a joint limiter (velocity and acceleration limits, lowered for a slow move) and
validated by a safety layer before it is sent (joint, velocity, acceleration limits and the workspace box):
both are handed in (the runtime's ``JointLimiter`` and ``SafetyLayer``), so this module only drives the
arm. At each control tick: read the state, shape the next target, validate it, send it, wait for the next
absolute deadline. A phase (out to ``home + step`` on one joint, or back) ends ``settle_s`` after the
shaped target reached the goal.

Per joint (``JointResult``): ``final_error`` (mean |measured - goal| over the last third of the settle time,
the worse of out and back), ``rms_error`` (measured against the command sent one tick before, while it
moves), ``lag`` (command-to-state latency: when the measured joint crossed 25 / 50 / 75 % of the step, minus
when the command did; the median), ``others`` (the largest move of any other joint meanwhile: a large one
means swapped servo ids or wiring). A fault from the arm ends the check (the rest is not run); a command
the safety layer refuses ends that joint's step, which is then brought back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..clock import MonotonicClock
from ..contracts import now_ns
from ..errors import DeviceFaultError

log = logging.getLogger(__name__)

LEVELS = (0.25, 0.5, 0.75)  # fractions of the step at which the lag is measured
REACHED_RAD = 1e-5          # the shaped target is at the goal


@dataclass(frozen=True)
class CheckSettings:
    """``step_rad``: how far each joint moves; ``speed_rad_s``: the limiter's top speed (for the report:
    the limiter is built with it); ``settle_s``: hold time at each end; ``tolerance_rad``: the largest final
    error that passes; ``margin_rad``: the step stays this far inside the joint limits; ``rate_hz``: the
    control rate; ``phase_timeout_s``: a phase longer than this is a fault."""

    step_rad: float = 0.05
    speed_rad_s: float = 0.2
    settle_s: float = 0.3
    tolerance_rad: float = 0.02
    margin_rad: float = 0.01
    rate_hz: float = 100.0
    phase_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("step_rad", "speed_rad_s", "settle_s", "tolerance_rad", "rate_hz", "phase_timeout_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"check-arm: {name} must be a finite number > 0, got {v}")
        if not 0 < self.step_rad <= 0.5:
            raise ValueError(f"check-arm: step_rad must be in (0, 0.5] rad (a small step), got {self.step_rad}")


@dataclass
class JointResult:
    name: str
    step_rad: float = 0.0
    final_error_rad: float | None = None
    rms_error_rad: float | None = None
    lag_s: float | None = None
    others_rad: float | None = None
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ran: bool = False

    @property
    def passed(self) -> bool:
        return self.ran and not self.faults


@dataclass
class CheckReport:
    arm: str
    settings: CheckSettings
    joints: list[JointResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ticks: int = 0
    deadline_misses: int = 0

    @property
    def passed(self) -> bool:
        return not self.errors and bool(self.joints) and all(j.passed for j in self.joints)

    def to_dict(self) -> dict:
        return {"arm": self.arm, "passed": self.passed, "settings": asdict(self.settings),
                "joints": [{**asdict(j), "passed": j.passed} for j in self.joints], "errors": list(self.errors),
                "notes": list(self.notes), "ticks": self.ticks, "deadline_misses": self.deadline_misses}


class _Refused(Exception):
    """The safety layer refused a command."""


@dataclass
class _Trace:
    """One phase: per tick the state read (time s, joints) and the command sent after it (time s, joints)."""

    t_state: list = field(default_factory=list)
    q_state: list = field(default_factory=list)
    t_cmd: list = field(default_factory=list)
    q_cmd: list = field(default_factory=list)
    goal: np.ndarray | None = None
    start: np.ndarray | None = None
    reached_t: float | None = None


class _Runner:
    def __init__(self, arm, safety, limiter, settings: CheckSettings, clock, gripper: float,
                 report: CheckReport) -> None:
        self.arm, self.safety, self.limiter, self.s = arm, safety, limiter, settings
        self.clock, self.gripper, self.report = clock, gripper, report
        self.period_ns = int(round(1e9 / settings.rate_hz))

    def move(self, goal: np.ndarray, start: np.ndarray) -> _Trace:
        """Shape, validate and send commands toward ``goal`` until ``settle_s`` after reaching it."""
        tr = _Trace(goal=goal.copy(), start=start.copy())
        t0 = time.monotonic()
        t_next = self.clock.now_ns()
        while True:
            st = self.arm.state()
            tr.t_state.append(time.monotonic())
            tr.q_state.append(np.asarray(st.joints, dtype=np.float64).copy())
            q = self.limiter.step(goal)
            verdict = self.safety.validate(q, self.gripper, now_ns())
            if not verdict.ok:
                raise _Refused(f"{verdict.reason}: {verdict.detail}")
            self.arm.command(verdict.command)
            self.limiter.commit(q)
            now = time.monotonic()
            tr.t_cmd.append(now)
            tr.q_cmd.append(q.copy())
            self.report.ticks += 1
            if tr.reached_t is None and np.max(np.abs(q - goal)) < REACHED_RAD:
                tr.reached_t = now
            if tr.reached_t is not None and now - tr.reached_t >= self.s.settle_s:
                return tr
            if now - t0 > self.s.phase_timeout_s:
                raise DeviceFaultError(f"{self.report.arm}: a {self.s.step_rad} rad step took over "
                                       f"{self.s.phase_timeout_s} s; the loop is too slow for its rate "
                                       f"({self.s.rate_hz} Hz)")
            t_next += self.period_ns
            late = self.clock.now_ns() - t_next
            if late > 0:
                self.report.deadline_misses += 1
                if late > self.period_ns:  # more than a period behind: start afresh from now
                    t_next += late
            self.clock.sleep_until(t_next)

    def resync(self) -> np.ndarray:
        """Hold, then take the measured joints as the new reference of limiter and safety layer."""
        self.arm.hold()
        q = np.asarray(self.arm.state().joints, dtype=np.float64)
        self.safety.reset(q)
        self.limiter.reset(q)
        return q


def check_joints(arm, names, lower, upper, safety, limiter, settings: CheckSettings, *, clock=None,
                 label: str | None = None, hints: dict[str, str] | None = None) -> CheckReport:
    """Step every joint of ``arm`` (connected and enabled) out and back; see the module docstring.
    ``lower`` / ``upper``: the joint limits the step must stay inside (rad); ``hints``: a sentence to add when
    the safety layer refuses the start pose for a reason (e.g. ``workspace``)."""
    report = CheckReport(label or getattr(arm, "name", type(arm).__name__), settings)
    clock = clock or MonotonicClock(spin_ns=0)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    st = arm.state()
    home = np.asarray(st.joints, dtype=np.float64).copy()
    names = list(names)
    if home.shape != (len(names),):
        report.errors.append(f"{report.arm}: reports {home.size} joints, the setup names {len(names)}")
        return report
    out = np.flatnonzero((home < lower) | (home > upper))
    if out.size:
        report.errors.extend(f"{names[j]} starts at {home[j]:.3f} rad, outside its limits [{lower[j]:.3f}, "
                             f"{upper[j]:.3f}]: move it inside by hand (torque off), then check again" for j in out)
        return report
    safety.reset(home)
    limiter.reset(home)
    gripper = float(np.clip(st.gripper, 0.0, 1.0))
    first = safety.validate(home, gripper, now_ns())
    if not first.ok:
        hint = (hints or {}).get(first.reason, "")
        report.errors.append(f"the safety layer refuses the arm's start pose ({first.reason}: {first.detail})"
                             f"{'; ' + hint if hint else ''}")
        return report
    run = _Runner(arm, safety, limiter, settings, clock, gripper, report)
    stats = getattr(getattr(arm, "bus", None), "stats", None)
    for j, name in enumerate(names):
        res = JointResult(name)
        report.joints.append(res)
        if report.errors:
            res.faults.append("not run (the check stopped earlier)")
            continue
        sign = 1.0 if home[j] + settings.step_rad <= upper[j] - settings.margin_rad else -1.0
        if sign < 0 and home[j] - settings.step_rad < lower[j] + settings.margin_rad:
            res.faults.append(f"no room for a {settings.step_rad} rad step inside its limits")
            continue
        res.step_rad = sign * settings.step_rad
        goal = home.copy()
        goal[j] += res.step_rad
        bus_before = sum(stats.faults.values()) if stats is not None else 0
        traces = []
        try:
            traces.append(run.move(goal, home))
            traces.append(run.move(home, goal))
            res.ran = True
        except _Refused as e:
            res.faults.append(f"the safety layer refused a command ({e})")
            try:
                run.move(home, run.resync())
            except (_Refused, DeviceFaultError) as e2:
                report.errors.append(f"{name}: could not bring the arm back to its start pose ({e2})")
        except DeviceFaultError as e:
            res.faults.append(str(e))
            report.errors.append(f"{name}: {e}")
        if stats is not None and sum(stats.faults.values()) > bus_before:
            res.notes.append(f"{sum(stats.faults.values()) - bus_before} bus fault(s) retried")
        if res.ran:
            _measure(res, j, names, traces, home, settings)
    return report


def _measure(res: JointResult, j: int, names: list[str], traces: list[_Trace], home: np.ndarray,
             s: CheckSettings) -> None:
    finals, errs, lags = [], [], []
    moved = np.zeros(len(names))  # the largest move of each joint away from home
    for tr in traces:
        t_s, q_s = np.asarray(tr.t_state), np.vstack(tr.q_state)
        t_c, q_c = np.asarray(tr.t_cmd), np.vstack(tr.q_cmd)
        tail = t_s >= t_s[-1] - s.settle_s / 3
        finals.append(float(np.mean(np.abs(q_s[tail, j] - tr.goal[j]))))
        prev = np.concatenate(([tr.start[j]], q_c[:-1, j]))  # the command in force when each state was read
        moving = t_s <= (tr.reached_t if tr.reached_t is not None else t_s[-1])
        errs.append(q_s[moving, j] - prev[moving])
        for level in LEVELS:
            x = tr.start[j] + level * (tr.goal[j] - tr.start[j])
            tc, ts = _crossing(t_c, q_c[:, j], x, tr.goal[j] > tr.start[j]), \
                _crossing(t_s, q_s[:, j], x, tr.goal[j] > tr.start[j])
            if tc is not None and ts is not None:
                lags.append(ts - tc)
        moved = np.maximum(moved, np.max(np.abs(q_s - home), axis=0))
    res.final_error_rad = max(finals)
    e = np.concatenate(errs)
    res.rms_error_rad = float(np.sqrt(np.mean(e * e))) if e.size else None
    res.lag_s = float(np.median(lags)) if lags else None
    moved[j] = -1.0
    k = int(np.argmax(moved))
    res.others_rad = float(moved[k]) if len(names) > 1 else None
    if res.final_error_rad > s.tolerance_rad:
        res.faults.append(f"ended {res.final_error_rad * 1e3:.1f} mrad from its goal (tolerance "
                          f"{s.tolerance_rad * 1e3:.0f} mrad): the joint did not follow (servo id, load, gains?)")
    if res.lag_s is None:
        res.faults.append("never crossed the middle of its step")
    limit = max(s.tolerance_rad, 0.5 * s.step_rad)
    if res.others_rad is not None and res.others_rad > limit:
        res.faults.append(f"{names[k]} moved {res.others_rad:.3f} rad with it: swapped servo ids or wiring?")


def _crossing(t: np.ndarray, x: np.ndarray, level: float, rising: bool) -> float | None:
    """The first time ``x`` reaches ``level`` (linear between samples), None if it never does."""
    hit = np.flatnonzero(x >= level) if rising else np.flatnonzero(x <= level)
    if not hit.size:
        return None
    i = int(hit[0])
    if i == 0:
        return float(t[0])
    x0, x1 = x[i - 1], x[i]
    f = 0.0 if x1 == x0 else (level - x0) / (x1 - x0)
    return float(t[i - 1] + f * (t[i] - t[i - 1]))


def render(report: CheckReport, console=None) -> None:
    """The per-joint table (rich), then the errors and notes, one line each."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = report.settings
    t = Table(title=f"check-arm: {report.arm}\n{s.step_rad:g} rad steps at {s.speed_rad_s:g} rad/s, {s.rate_hz:g} Hz")
    t.add_column("joint", no_wrap=True)
    for col in ("step rad", "final mrad", "rms mrad", "lag ms", "others mrad"):
        t.add_column(col, justify="right")
    t.add_column("result")

    def num(v, scale=1e3, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v * scale)

    for j in report.joints:
        verdict = "[green]PASS[/green]" if j.passed else "[red]FAIL[/red]"
        text = "; ".join(j.faults + j.notes)
        t.add_row(j.name, num(j.step_rad, 1.0, "{:+.3f}") if j.step_rad else "-", num(j.final_error_rad),
                  num(j.rms_error_rad), num(j.lag_s), num(j.others_rad), f"{verdict} {text}".strip())
    console.print(t)
    for e in report.errors:
        console.print(f"[red]error:[/red] {e}")
    for n in report.notes:
        console.print(f"note: {n}")
    miss = f", {report.deadline_misses} missed deadline(s)" if report.deadline_misses else ""
    console.print(f"{'[green]PASS' if report.passed else '[red]FAIL'}[/]: {report.ticks} control ticks{miss}")
