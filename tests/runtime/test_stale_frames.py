"""Stale camera frames: a camera that keeps returning one old frame is caught by the frame's own stamp
(and sequence number), not by whether a read succeeded; the arm holds within ``max_frame_age_s`` plus a
control period, and the reason names the stale frame."""

from __future__ import annotations

import numpy as np

from edgebridge.clock import SimClock
from edgebridge.contracts import RGBD
from edgebridge.runtime.loop import ControlLoop
from edgebridge.runtime.pipeline import Pipeline
from edgebridge.runtime.watchdog import Health, Watchdog

from runtime_fakes import LIMITS, PERIOD_S, FakeClock, PointKinematics, RecordingArm, loop_cfg
from test_pipeline import FAST, FaultyExpert, FlatCamera, setup

S = 1_000_000_000
PERIOD_NS = int(PERIOD_S * S)


def test_an_unchanged_frame_is_not_fresh_by_stamp_or_by_sequence_number():
    wd = Watchdog(0.5, camera_timeout_s=1.0)
    wd.feed_camera(10 * S, seq=7, read_ns=10 * S)
    for k in range(1, 12):  # the same frame again and again, read every 0.1 s
        wd.feed_camera(10 * S, seq=7, read_ns=10 * S + k * S // 10)
    assert wd.check(11 * S)[0] is not Health.STOP  # exactly max age: not yet
    health, why = wd.check(11 * S + 1)
    assert health is Health.STOP and why.startswith("camera frame stale"), why
    assert "frame number 7" in why and "11 read(s)" in why
    # a driver that restamps a frozen frame with the read time: the repeated number gives it away
    wd = Watchdog(0.5, camera_timeout_s=1.0)
    for k in range(15):
        wd.feed_camera(10 * S + k * S // 10, seq=3, read_ns=10 * S + k * S // 10)
    health, why = wd.check(11 * S + S // 2)
    assert health is Health.STOP and why.startswith("camera frame stale"), why
    # new frames keep it healthy; no frames at all is "camera lost"
    wd = Watchdog(0.5, camera_timeout_s=1.0)
    for k in range(30):
        wd.feed_camera(10 * S + k * S // 10, seq=k, read_ns=10 * S + k * S // 10 + 5_000_000)
        assert wd.check(10 * S + k * S // 10 + 5_000_000)[0] is not Health.STOP
    health, why = wd.check(10 * S + 29 * S // 10 + S + 1)
    assert health is Health.STOP and why.startswith("camera lost: no frame for"), why


def test_the_loop_holds_within_max_frame_age_plus_one_period():
    clock = FakeClock()
    arm = RecordingArm()
    cfg = loop_cfg()
    wd = Watchdog(cfg.chunk_timeout_s, camera_timeout_s=0.5)
    loop = ControlLoop(arm, LIMITS, cfg, PointKinematics(), clock=clock, watchdog=wd)
    frozen_at = clock.now_ns()
    holds_at = []
    hold = arm.hold
    arm.hold = lambda: (holds_at.append(clock.now_ns()), hold())

    def camera(cycle):  # every cycle the camera hands back the frame captured at frozen_at
        wd.feed_camera(frozen_at, seq=1, read_ns=clock.now_ns())

    loop.hooks.append(camera)
    res = loop.run(duration_s=3.0)
    assert res.reason.startswith("camera frame stale"), res.reason
    assert holds_at and holds_at[0] - frozen_at <= 0.5 * S + PERIOD_NS, (holds_at[0] - frozen_at) / S
    print(f"loop: held {(holds_at[0] - frozen_at) / S:.3f} s after the frozen frame's capture (limit 0.5 s)")
    assert holds_at[0] - frozen_at > 0.5 * S  # and not before the limit


class FrozenCamera(FlatCamera):
    """Fresh frames for ``fresh`` reads, then the last one again for ever (a wedged driver)."""

    def __init__(self, clock, fresh: int) -> None:
        super().__init__(clock)
        self.fresh, self.last = fresh, None

    def read(self) -> RGBD:
        if self.last is None or self.reads < self.fresh:
            self.last = super().read()
        else:
            self.reads += 1
        return self.last


def test_a_frozen_camera_holds_the_arm_in_an_episode():
    clock = SimClock(start_ns=S)
    camera = FrozenCamera(clock, fresh=12)
    cfg, dev, arm = setup(clock, expert=FaultyExpert("none", needs_cloud=True), camera=camera)
    holds_at = []
    hold = arm.hold
    arm.hold = lambda: (holds_at.append(clock.now_ns()), hold())
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success and out.reason.startswith("camera frame stale"), out.reason
    assert camera.reads > camera.fresh + 2  # the frozen frame was read again and again
    age = (holds_at[0] - camera.last.stamp_ns) / S
    print(f"frozen camera: the arm held {age:.3f} s after the last fresh frame (limit {cfg.camera.max_frame_age_s} s)")
    # the limit (camera.max_frame_age_s) and one period to notice, plus braking from the arm's speed
    brake = 0.5 / LIMITS.joint_acceleration[0] + 2 * PERIOD_S
    assert cfg.camera.max_frame_age_s < age <= cfg.camera.max_frame_age_s + PERIOD_S + brake, age
    assert arm.violations == []
    assert np.all(np.isfinite(arm.q))
