import os
import signal
import threading

import numpy as np
import pytest

from edgebridge.clock import MonotonicClock
from edgebridge.runtime.loop import ControlLoop, Mode, PeriodStats
from edgebridge.runtime.watchdog import SignalGuard, Watchdog

from runtime_fakes import LIMITS, PERIOD_S, FakeClock, PointKinematics, RecordingArm, chunk_line, loop_cfg

MS = 1_000_000


def make_loop(arm=None, clock=None, **cfg):
    clock = clock or FakeClock()
    arm = arm or RecordingArm()
    cfg = loop_cfg(**cfg)
    loop = ControlLoop(arm, LIMITS, cfg, PointKinematics(), clock=clock,
                       watchdog=Watchdog(cfg.chunk_timeout_s, camera_timeout_s=0.5))
    return loop, arm, clock


class SlowArm(RecordingArm):
    """state() takes ``slow_ns`` of (fake) time on the listed cycles."""

    def __init__(self, clock, slow: dict, **kw):
        super().__init__(**kw)
        self.clock, self.slow = clock, slow

    def state(self):
        st = super().state()
        self.clock.advance(self.slow.get(self.n_state, 0))
        return st


def test_deadlines_do_not_drift_and_misses_are_counted():
    clock = FakeClock()
    P = int(PERIOD_S * 1e9)
    arm = SlowArm(clock, {50: int(2.5 * P), 120: int(1.3 * P), 150: int(1.7 * P)})
    loop, _, _ = make_loop(arm=arm, clock=clock)
    t0 = clock.now_ns()
    wakes = []
    orig = loop.stats.wake
    loop.stats.wake = lambda w, d: (wakes.append((w, d)), orig(w, d))
    res = loop.run(duration_s=2.0)
    period = int(PERIOD_S * 1e9)
    deadlines = np.array([d for _, d in wakes])
    # every deadline lies on the t0 + k * period grid: no accumulated drift
    assert np.all((deadlines - t0) % period == 0)
    assert deadlines[-1] - t0 == pytest.approx(2.0e9, abs=period)
    # a 2.5-period cycle skips the 2 ticks it overran; 1.7 periods skips 1 (it would run 0.7 P late);
    # 1.3 periods runs the next tick 0.3 P late: recorded as lateness, not a miss
    assert res.stats["skipped"] == 3
    assert res.stats["misses"] == 3
    assert res.stats["late_max_ms"] == pytest.approx(0.3 * PERIOD_S * 1e3, rel=1e-6)
    assert res.reason == "duration reached"


def test_follows_chunks_then_holds_when_they_stop():
    loop, arm, clock = make_loop(chunk_timeout_s=0.6)
    loop.prepare()
    t0 = clock.now_ns()
    loop.inbox.put(chunk_line(t0, (0, 0, 0.3), (0.05, 0, 0.3), n=11, dt=0.05))
    for _ in range(90):  # 0.9 s: chunk is 0.5 s long; timeout 0.6 s after its arrival -> hold
        loop.step()
        clock.advance(int(PERIOD_S * 1e9))
    assert arm.commands, "nothing was sent"
    assert arm.q[0] > 0.04  # it followed the chunk
    assert loop.mode is Mode.HELD and arm.holds == 1 and loop.watchdog.holds == 1
    assert arm.violations == []
    n_sent = len(arm.commands)
    # a fresh chunk resumes from the measured pose, smoothly
    t1 = clock.now_ns()
    loop.inbox.put(chunk_line(t1, (0.05, 0, 0.3), (0.0, 0.05, 0.3), n=11, dt=0.05))
    for _ in range(60):
        loop.step()
        clock.advance(int(PERIOD_S * 1e9))
    assert len(arm.commands) > n_sent and arm.q[1] > 0.03
    assert arm.violations == []


def test_target_outside_workspace_is_never_sent_and_stops():
    loop, arm, clock = make_loop(max_rejections=5, chunk_timeout_s=10.0)
    loop.prepare()
    # an expert that keeps proposing a path out of the workspace (z below 0.05)
    for k in range(2000):
        if k % 10 == 0:
            t = clock.now_ns()
            z = float(arm.q[2])
            loop.inbox.put(chunk_line(t, (0, 0, z), (0, 0, z - 0.5), n=30, dt=0.1))
        if loop.step() is Mode.STOPPED:
            break
        clock.advance(int(PERIOD_S * 1e9))
    assert loop.mode is Mode.STOPPED
    assert arm.violations == []
    assert min(c.joints[2] for c in arm.commands) >= LIMITS.workspace_min[2] - 1e-12
    assert loop.safety.rejections["workspace"] >= 5
    assert "rejected within 1 s" in loop._stop_reason and "workspace" in loop._stop_reason
    assert arm.holds >= 1


def test_arm_driver_fault_stops_with_reason_and_holds():
    arm = RecordingArm(fail_command_after=20)
    loop, _, clock = make_loop(arm=arm)
    loop.prepare()
    loop.inbox.put(chunk_line(clock.now_ns(), (0, 0, 0.3), (0.05, 0, 0.3), n=11, dt=0.05))
    res = loop.run(duration_s=2.0)
    assert res.fault and "CRC error" in res.reason and "command()" in res.reason
    assert arm.holds == 1 and len(arm.commands) == 20 and arm.violations == []


def test_arm_state_fault_stops():
    arm = RecordingArm(fail_state_after=5)
    loop, _, _ = make_loop(arm=arm)
    res = loop.run(duration_s=1.0)
    assert res.fault and "bus timeout" in res.reason and arm.holds == 1


def test_camera_lost_is_a_controlled_stop():
    loop, arm, clock = make_loop()
    loop.prepare()
    t0 = clock.now_ns()
    loop.watchdog.feed_camera(t0)
    # moving when the camera dies: the loop brakes with validated commands, then holds
    loop.inbox.put(chunk_line(t0, (0, 0, 0.3), (0.2, 0, 0.3), n=21, dt=0.1))
    res = loop.run(duration_s=3.0)
    assert res.reason.startswith("camera lost")
    assert arm.holds == 1 and arm.violations == []
    v_end = (arm.commands[-1].joints - arm.commands[-2].joints) / PERIOD_S
    assert np.all(np.abs(v_end) < 0.1)  # it braked before holding


def test_signal_requests_controlled_stop():
    loop, arm, _ = make_loop(clock=None)
    loop.clock = MonotonicClock()
    loop.watchdog.feed_camera = lambda now: None
    loop.watchdog.camera_timeout_ns = None
    threading.Timer(0.15, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    with SignalGuard(loop.watchdog):
        res = loop.run(duration_s=5.0)
    assert res.reason == "SIGTERM received"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_dry_run_sends_nothing_but_computes_commands():
    loop, arm, clock = make_loop()
    loop.dry_run = True
    loop.prepare()
    loop.inbox.put(chunk_line(clock.now_ns(), (0, 0, 0.3), (0.05, 0, 0.3), n=11, dt=0.05))
    for _ in range(30):
        loop.step()
        clock.advance(int(PERIOD_S * 1e9))
    assert arm.commands == [] and loop.sent > 0


def test_real_clock_short_run_keeps_period():
    loop, arm, _ = make_loop(clock=None, rate_hz=200.0)
    loop.clock = MonotonicClock()
    loop.watchdog.camera_timeout_ns = None
    res = loop.run(duration_s=0.5)
    # absolute deadlines: ticks run or skipped add up to the duration even on a loaded machine
    assert 98 <= res.cycles + res.stats["skipped"] <= 102
    assert res.stats["compute_p50_ms"] < 1.0


def test_period_stats_summary():
    s = PeriodStats(1_000_000, capacity=8)
    for k in range(20):
        s.wake(k * 1_000_000 + (600_000 if k == 5 else 0), k * 1_000_000)
        s.done(100)
    out = s.summary()
    assert out["cycles"] == 20 and out["misses"] == 1


class NoIK(PointKinematics):
    def ik(self, target, q_seed):
        raise ValueError("IK did not converge (residual 0.3 m)")


def test_ik_failure_is_a_rejection_never_a_command():
    clock = FakeClock()
    arm = RecordingArm()
    cfg = loop_cfg(max_rejections=5, chunk_timeout_s=10.0)
    loop = ControlLoop(arm, LIMITS, cfg, NoIK(), clock=clock)
    loop.prepare()
    # an expert that keeps sending chunks (every 10 ticks) the IK cannot follow
    loop.hooks.append(lambda c: loop.inbox.put(chunk_line(clock.now_ns(), (0, 0, 0.3), (0.05, 0, 0.3), n=11,
                                                          dt=0.05)) if c % 10 == 1 else None)
    res = loop.run(duration_s=2.0)
    assert arm.commands == []
    assert res.rejections["ik_failed"] >= 5 and "IK failed" in res.reason
    assert arm.holds == 1
