"""The fixed-rate control loop.

Each cycle: read the arm state, drain new chunks, ask the watchdog, interpolate the blended chunk target
at *now*, IK to joints, shape with the joint limiter, validate in the safety layer, send, publish the
state, wait for the next absolute deadline (``t_next += period``: no drift; hybrid sleep/spin from
``edgebridge.clock``). The clock is injectable: a fake clock in tests, ``SimClock`` for lock-step sim.

Nothing reaches ``Arm.command`` that the safety layer did not build. A rejected command is replaced by
a (validated) deceleration command or, failing that, ``Arm.hold()``; too many rejections within a second,
a driver fault or a stop request end the run with the reason. Stale chunks -> decelerate and hold;
a fresh chunk resumes from the measured pose.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import numpy as np

from ..clock import Clock, MonotonicClock
from ..contracts import ActionChunk, ArmState
from .chunks import ChunkBlender, Target
from .config import LoopConfig, SafetyLimits
from .safety import IK_FAILED, JointLimiter, Kinematics, SafetyLayer
from .watchdog import Health, Watchdog

log = logging.getLogger(__name__)


class Mode(Enum):
    FOLLOW = "follow"        # tracking the blended chunk target
    DECEL = "decelerate"     # braking to a stop (stale chunks or a rejected command)
    HELD = "held"            # arm.hold() issued; nothing is sent until resumed
    STOPPED = "stopped"      # loop finished


# --------------------------------------------------------------------------- I/O between threads


class ChunkInbox:
    """Chunks in: any thread ``put``s, the loop ``drain``s. ``deque`` append/popleft are atomic."""

    def __init__(self, maxlen: int = 64) -> None:
        self._q: deque[ActionChunk] = deque(maxlen=maxlen)

    def put(self, chunk: ActionChunk) -> None:
        self._q.append(chunk)

    def drain(self) -> list[ActionChunk]:
        out = []
        q = self._q
        while q:
            try:
                out.append(q.popleft())
            except IndexError:  # pragma: no cover - raced with another consumer
                break
        return out


class StateBox:
    """State out: the loop publishes the latest measured state; readers take the newest (no queue)."""

    def __init__(self) -> None:
        self._state: ArmState | None = None
        self.cycle = 0
        self.event = threading.Event()

    def publish(self, state: ArmState, cycle: int) -> None:
        self._state = state
        self.cycle = cycle
        self.event.set()

    def latest(self) -> ArmState | None:
        return self._state


# --------------------------------------------------------------------------- statistics


class PeriodStats:
    """Per-cycle timing in preallocated ring buffers: wake lateness (wake - deadline), actual period,
    cycle compute time. A deadline miss is a tick that ran more than ``miss_ns`` (default half a period)
    late, or did not run at all because the previous cycle overran it (``skipped``)."""

    def __init__(self, period_ns: int, capacity: int = 1 << 17, miss_ns: int | None = None) -> None:
        self.period_ns = int(period_ns)
        self.miss_ns = self.period_ns // 2 if miss_ns is None else int(miss_ns)
        self.lateness = np.zeros(capacity, dtype=np.int64)
        self.period = np.zeros(capacity, dtype=np.int64)
        self.compute = np.zeros(capacity, dtype=np.int64)
        self.n = 0
        self.misses = 0
        self.skipped = 0
        self._prev_wake: int | None = None

    def wake(self, wake_ns: int, deadline_ns: int) -> None:
        i = self.n % len(self.lateness)
        late = wake_ns - deadline_ns
        self.lateness[i] = late
        self.period[i] = 0 if self._prev_wake is None else wake_ns - self._prev_wake
        self._prev_wake = wake_ns
        if late > self.miss_ns:
            self.misses += 1

    def done(self, compute_ns: int) -> None:
        self.compute[self.n % len(self.compute)] = compute_ns
        self.n += 1

    def summary(self) -> dict:
        """Milliseconds: period error |period - nominal| p50/p99/max, lateness p99/max, compute p50/p99."""
        m = min(self.n, len(self.period))
        if m < 2:
            return {"cycles": self.n, "misses": self.misses, "skipped": self.skipped}
        per = self.period[1:m] if self.n <= len(self.period) else self.period[:m]
        err = np.abs(per - self.period_ns) / 1e6
        late = self.lateness[:m] / 1e6
        comp = self.compute[:m] / 1e6
        return {
            "cycles": self.n, "misses": self.misses, "skipped": self.skipped,
            "period_err_p50_ms": float(np.percentile(err, 50)), "period_err_p99_ms": float(np.percentile(err, 99)),
            "period_err_max_ms": float(err.max()),
            "late_p99_ms": float(np.percentile(late, 99)), "late_max_ms": float(late.max()),
            "compute_p50_ms": float(np.percentile(comp, 50)), "compute_p99_ms": float(np.percentile(comp, 99)),
        }


# --------------------------------------------------------------------------- real-time setup


def apply_realtime(priority: int, cpu: int) -> list[str]:
    """SCHED_FIFO at ``priority`` (0 = skip) and pinning to ``cpu`` (-1 = skip) for the calling thread.
    Returns what was applied; where the OS refuses, logs a warning saying why and what to do."""
    done = []
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
            done.append(f"pinned to CPU {cpu}")
        except (AttributeError, OSError, ValueError) as e:
            log.warning("loop: cannot pin to CPU %d (%s); running unpinned", cpu, e)
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            done.append(f"SCHED_FIFO priority {priority}")
        except (AttributeError, PermissionError, OSError) as e:
            log.warning("loop: SCHED_FIFO priority %d refused (%s); running at normal priority. Grant "
                        "CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf) to enable it", priority, e)
        if _mlockall():
            done.append("memory locked")
    return done


def _mlockall() -> bool:
    """Lock current and future pages in RAM (no page faults in the loop); False where refused."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            log.warning("loop: mlockall refused (errno %d); page faults may add latency. Raise "
                        "RLIMIT_MEMLOCK (ulimit -l) to enable it", ctypes.get_errno())
            return False
        return True
    except (OSError, AttributeError) as e:  # pragma: no cover - non-Linux
        log.warning("loop: mlockall unavailable (%s)", e)
        return False


def reset_scheduler() -> None:
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        pass


@dataclass
class LoopResult:
    reason: str
    cycles: int
    sent: int
    rejections: dict
    holds: int
    stats: dict = field(default_factory=dict)
    fault: bool = False
    # a loop in its own process sends these back when profiling: the loop's stage samples (ns) and its timing
    profile: dict | None = None
    period_stats: "PeriodStats | None" = None


# --------------------------------------------------------------------------- the loop


class ControlLoop:
    """Fixed-rate loop over one arm. ``kinematics`` maps the blended end-effector target to joints (IK)
    and back (FK, for the workspace check). ``dry_run``: everything but ``Arm.command`` (the command
    stream is computed, validated and counted, the arm is not moved). ``profiler``: optional
    :class:`edgebridge.runtime.profiling.Profiler` (None = no timing overhead)."""

    DECEL_MAX_S = 2.0  # a controlled stop may brake for at most this long before hold()

    def __init__(self, arm, limits: SafetyLimits, cfg: LoopConfig, kinematics: Kinematics, *,
                 clock: Clock | None = None, inbox: ChunkInbox | None = None, states: StateBox | None = None,
                 watchdog: Watchdog | None = None, profiler=None, dry_run: bool = False) -> None:
        self.arm = arm
        self.cfg = cfg
        self.kin = kinematics
        self.clock = clock or MonotonicClock(spin_ns=int(cfg.spin_us * 1e3))
        self.period_ns = cfg.period_ns
        self.period_s = self.period_ns / 1e9
        self.inbox = inbox or ChunkInbox()
        self.states = states or StateBox()
        self.watchdog = watchdog or Watchdog(cfg.chunk_timeout_s)
        self.profiler = profiler
        self.dry_run = dry_run
        self.safety = SafetyLayer(limits, self.period_s, fk=kinematics.fk)
        self.limiter = JointLimiter(limits, self.period_s)
        self.blender = ChunkBlender(cfg.blend_s, cfg.max_ee_speed, cfg.max_ee_angular_speed, cfg.max_gripper_speed)
        self.stats = PeriodStats(self.period_ns)
        self.mode = Mode.HELD
        self.cycle = 0
        self.sent = 0
        self.holds = 0
        self._recent_rejections: deque[int] = deque()
        self._latest_chunk: ActionChunk | None = None
        self._gripper_cmd = 1.0
        self._stop_reason: str | None = None
        self._fault = False
        self._decel_cycles = 0
        self._holding = False
        self._chunks_seen = 0
        self._held_at_chunk = -1  # at start any chunk resumes
        self.hooks: list[Callable[[int], None]] = []
        self._thread: threading.Thread | None = None
        self._result: LoopResult | None = None
        self.last_state: ArmState | None = None

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        """Power the arm (``Arm.enable()`` where the driver has it: torque on, holding its present pose;
        drivers do not power the arm in ``connect``; not in a dry run, which leaves the arm as found),
        read it once and hold its measured pose; call before the first ``step``."""
        enable = getattr(self.arm, "enable", None)
        if callable(enable) and not self.dry_run:
            enable()
        now = self.clock.now_ns()
        st = self.arm.state()
        self.last_state = st
        self.states.publish(st, 0)
        self._resume_from(st, now, push_latest=False)
        self.mode = Mode.HELD

    def _resume_from(self, st: ArmState, now: int, push_latest: bool = True) -> None:
        self.limiter.reset(st.joints)
        self.safety.reset(st.joints)
        self._gripper_cmd = float(np.clip(st.gripper, 0.0, 1.0))
        self.blender.reset(Target(st.ee_pose.position.copy(), st.ee_pose.quat.copy(), self._gripper_cmd), now)
        if push_latest and self._latest_chunk is not None:
            self.blender.push(self._latest_chunk, now)

    def request_stop(self, reason: str) -> None:
        self.watchdog.request_stop(reason)

    # ------------------------------------------------------------------ one cycle
    def step(self) -> Mode:
        """Run one control cycle at the clock's current time (no waiting). Returns the mode after it."""
        clock, prof = self.clock, self.profiler
        now = clock.now_ns()
        self.cycle += 1
        for hook in self.hooks:  # lock-step stages (expert in the simulator); run before the arm is read
            hook(self.cycle)
        w0 = time.monotonic_ns() if prof is not None else 0  # profiling is wall time, also in lock-step
        try:
            st = self.arm.state()
        except Exception as e:
            self._driver_fault("state", e)
            return self.mode
        if prof is not None:
            prof.record_span("driver_io", w0, time.monotonic_ns() - w0)
        self.last_state = st
        for chunk in self.inbox.drain():
            self._latest_chunk = chunk
            self._chunks_seen += 1
            self.watchdog.feed_chunk(now)
            if self.mode is Mode.FOLLOW or self.mode is Mode.DECEL:
                self.blender.push(chunk, now)
        health, why = self.watchdog.check(now)
        if health is Health.STOP:
            self._stop_reason = why
            self._controlled_stop(now)
        elif health is Health.HOLD:
            if self.mode is Mode.FOLLOW:
                self.mode = Mode.DECEL
                self._decel_cycles = 0
            if self.mode is Mode.DECEL:
                self._decelerate(now)
        else:
            if self.mode is Mode.HELD and self._chunks_seen > self._held_at_chunk:
                self._resume_from(st, now)  # only a chunk that arrived after the hold resumes
                self.mode = Mode.FOLLOW
            if self.mode is Mode.DECEL:
                self.mode = Mode.FOLLOW
            if self.mode is Mode.FOLLOW:
                self._follow(now)
        self.states.publish(st, self.cycle)
        if prof is not None:
            prof.record_span("loop_compute", w0, time.monotonic_ns() - w0)
        return self.mode

    def _follow(self, now: int) -> None:
        target = self.blender.sample(now, self.period_s)
        pose = target.pose()
        seed = self.limiter.q
        try:
            q_target = np.asarray(self.kin.ik(pose, seed), dtype=np.float64)
            ok = q_target.shape == seed.shape and bool(np.all(np.isfinite(q_target)))
        except Exception as e:
            ok, q_target = False, seed
            log.debug("IK raised %s: %s", type(e).__name__, e)
        if not ok:
            self.safety.reject(IK_FAILED, f"no IK solution for target {np.round(target.position, 4)}")
            self._on_rejection(now, "IK failed")
            return
        q_cmd = self.limiter.step(q_target)
        verdict = self.safety.validate(q_cmd, target.gripper, now, ee_target=pose)
        if verdict.ok:
            self._send(verdict.command)
        else:
            self._on_rejection(now, f"{verdict.reason}: {verdict.detail}")

    def _on_rejection(self, now: int, why: str) -> None:
        recent = self._recent_rejections
        recent.append(now)
        while recent and now - recent[0] > 1_000_000_000:
            recent.popleft()
        if len(recent) == 1:
            log.warning("command rejected (%s); decelerating", why)
        if len(recent) >= self.cfg.max_rejections:
            self._stop_reason = f"{len(recent)} commands rejected within 1 s, last: {why}"
            self._controlled_stop(now)
            return
        # Brake with a validated command; if even that is refused, hold where the arm is.
        q_dec = self.limiter.decelerate()
        verdict = self.safety.validate(q_dec, self._gripper_cmd, now)
        if verdict.ok and not self.limiter.stopped:
            self._send(verdict.command)
            self.mode = Mode.DECEL
        else:
            self._hold()

    def _decelerate(self, now: int) -> bool:
        """One braking command; ``hold()`` once stopped. True when held."""
        self._decel_cycles += 1
        if self.limiter.stopped or self._decel_cycles * self.period_s > self.DECEL_MAX_S:
            self._hold()
            return True
        verdict = self.safety.validate(self.limiter.decelerate(), self._gripper_cmd, now)
        if verdict.ok:
            self._send(verdict.command)
            return False
        self._hold()
        return True

    def _send(self, cmd) -> None:
        prof = self.profiler
        t0 = time.monotonic_ns() if prof is not None else 0
        if not self.dry_run:
            try:
                self.arm.command(cmd)
            except Exception as e:
                self._driver_fault("command", e)
                return
        self.limiter.commit(cmd.joints)
        self._gripper_cmd = cmd.gripper
        self._holding = False
        self.sent += 1
        if prof is not None:
            t1 = time.monotonic_ns()
            prof.record_span("driver_io", t0, t1 - t0)
            prof.command_sent(t1, self._latest_chunk)

    def _hold(self) -> None:
        """``Arm.hold()`` once (not again while already holding); the limiter restarts from rest."""
        if not self._holding:
            try:
                self.arm.hold()
            except Exception as e:
                self._driver_fault("hold", e)
                return
            self.holds += 1
            self._holding = True
        self.limiter.reset(self.limiter.q)
        self.safety.reset(self.limiter.q)
        self._held_at_chunk = self._chunks_seen
        if self.mode is not Mode.STOPPED:
            self.mode = Mode.HELD

    def _controlled_stop(self, now: int) -> None:
        """Brake (validated commands) to a standstill, then hold and finish."""
        if self.mode in (Mode.FOLLOW, Mode.DECEL):
            self.mode = Mode.DECEL
            self._decel_cycles = 0
            while not self._decelerate(now):
                if self.mode is Mode.STOPPED:  # driver fault while braking
                    return
                now += self.period_ns
                self.clock.sleep_until(now)
        if self.mode is not Mode.STOPPED:
            self._hold()
        self.mode = Mode.STOPPED

    def _driver_fault(self, where: str, e: Exception) -> None:
        self._fault = True
        self._stop_reason = self._stop_reason or f"arm driver fault in {where}(): {type(e).__name__}: {e}"
        log.error("%s", self._stop_reason)
        try:
            self.arm.hold()
            self.holds += 1
        except Exception as e2:
            log.error("arm.hold() failed after a driver fault (%s); issuing estop", e2)
            try:
                self.arm.estop()
            except Exception as e3:
                log.critical("arm.estop() failed too: %s", e3)
        self.mode = Mode.STOPPED

    # ------------------------------------------------------------------ running
    def run(self, duration_s: float | None = None) -> LoopResult:
        """Run until stopped (watchdog STOP, fault, too many rejections) or ``duration_s`` elapsed."""
        cfg, clock = self.cfg, self.clock
        applied = apply_realtime(cfg.realtime_priority, cfg.cpu) if clock.realtime else []
        if applied:
            log.info("loop: %s", ", ".join(applied))
        gc_was = gc.isenabled()
        if cfg.gc == "freeze":
            gc.collect()
            gc.freeze()
        elif cfg.gc == "disable":
            gc.collect()
            gc.disable()
        try:
            if self.last_state is None:
                self.prepare()
            period = self.period_ns
            t_next = clock.now_ns()
            t_end = None if duration_s is None else t_next + int(duration_s * 1e9)
            stats = self.stats
            while self.mode is not Mode.STOPPED:
                woke = clock.now_ns()
                stats.wake(woke, t_next)
                self.step()
                now = clock.now_ns()
                stats.done(now - woke)
                if self.mode is Mode.STOPPED:
                    break
                t_next += period
                late = now - t_next
                if late > stats.miss_ns:  # overran the next tick by more than half a period: skip the
                    k = late // period + 1  # ticks already gone (no burst of catch-up cycles)
                    t_next += k * period
                    stats.skipped += int(k)
                    stats.misses += int(k)
                if t_end is not None and t_next >= t_end:
                    self.watchdog.request_stop("duration reached")
                    self.step()
                    break
                clock.sleep_until(t_next)
        except BaseException as e:
            self._stop_reason = self._stop_reason or f"loop error: {type(e).__name__}: {e}"
            self._fault = True
            try:
                self.arm.hold()
            except Exception as e2:  # pragma: no cover - best effort on the way out
                log.error("arm.hold() failed while leaving the loop: %s", e2)
            if not isinstance(e, Exception):
                raise
            log.exception("control loop failed")
        finally:
            if cfg.gc == "freeze":
                gc.unfreeze()
            if gc_was:
                gc.enable()
            if applied:
                reset_scheduler()
        self.mode = Mode.STOPPED
        self._result = LoopResult(
            reason=self._stop_reason or self.watchdog.stop_reason or "stopped",
            cycles=self.cycle, sent=self.sent, rejections=dict(self.safety.rejections), holds=self.holds,
            stats=self.stats.summary(), fault=self._fault)
        return self._result

    def start(self, duration_s: float | None = None) -> threading.Thread:
        """Run in a daemon thread; ``join()`` returns the :class:`LoopResult`."""
        self._thread = threading.Thread(target=self.run, args=(duration_s,), name="control-loop", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> LoopResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self._result
