"""Pipeline tests on fakes: a flat-table camera, a scripted planner, the point-mass arm. Lock-step
(SimClock) runs are deterministic and fast; one short real-time run exercises the worker thread."""

import time

import numpy as np
import pytest

from edgebridge.clock import MonotonicClock, SimClock
from edgebridge.contracts import RGBD, ActionChunk, Anchor, Intrinsics, Plan
from edgebridge.interfaces import DeviceBase
from edgebridge.runtime.config import ExpertSettings, PerceptionConfig, RobotConfig
from edgebridge.runtime.guidance import GuidanceConfig
from edgebridge.runtime.ik_expert import IKExpert, IKExpertConfig
from edgebridge.runtime.pipeline import Devices, Pipeline

from runtime_fakes import LIMITS, PointKinematics, RecordingArm, loop_cfg

INTR = Intrinsics(64, 48, 50.0, 50.0, 32.0, 24.0)
T_BASE_CAM = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])  # 1 m above, looking down
FAST = GuidanceConfig(speed_m_s=0.5, dwell_s=0.1, min_segment_s=0.1, approach_m=0.08)


class FlatCamera(DeviceBase):
    """A table plane 0.9 m below the camera (z = 0.1 in the base frame); ``fail_after`` reads then raises."""

    name = "flat camera"

    def __init__(self, clock, fail_after: int | None = None) -> None:
        super().__init__()
        self.clock, self.fail_after, self.reads = clock, fail_after, 0
        self.T_base_cam = T_BASE_CAM
        self.connect()

    def read(self) -> RGBD:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise ConnectionError("camera unplugged (USB reset)")
        depth = np.full((48, 64), 0.9, dtype=np.float32)
        return RGBD(np.zeros((48, 64, 3), np.uint8), depth, INTR, stamp_ns=self.clock.now_ns())


class ScriptedPlanner:
    def plan(self, rgbd, instruction):
        return Plan(instruction, (Anchor(40, 24, 1.0), Anchor(40, 24, 0.0), Anchor(26, 30, 1.0)),
                    orientation=np.array([0.0, 0.0, 0.0, 1.0]), source="scripted")

    def close(self):
        pass


class FaultyExpert:
    """Wraps IKExpert; ``mode``: raise / nan / stall after ``after`` good chunks."""

    def __init__(self, mode: str, after: int = 3, needs_cloud: bool = False) -> None:
        self.inner = IKExpert(IKExpertConfig(horizon=10, dt=0.1))
        self.mode, self.after, self.calls = mode, after, 0
        self.needs_cloud = needs_cloud

    def act(self, cloud, state, guidance):
        self.calls += 1
        if self.calls > self.after:
            if self.mode == "raise":
                raise RuntimeError("onnxruntime: invalid output shape")
            if self.mode == "nan":
                poses = np.full((4, 8), np.nan, dtype=np.float32)
                return ActionChunk(poses, state.stamp_ns, 0.1)  # the contract refuses NaN -> ValueError
            if self.mode == "stall":
                time.sleep(3.0)
        return self.inner.act(cloud, state, guidance)

    def close(self):
        pass


def setup(clock, expert=None, camera=None, rate_hz=100.0, **loop_kw):
    cfg = RobotConfig(name="test", limits=LIMITS, loop=loop_cfg(rate_hz=rate_hz, **loop_kw),
                      expert=ExpertSettings(backend="ik", every_k_ticks=10),
                      perception=PerceptionConfig(crop_min=(-0.4, -0.4, 0.0), crop_max=(0.4, 0.4, 0.5), n_points=64),
                      task_timeout_s=20.0)
    arm = RecordingArm(q0=(0.1, 0.0, 0.3), period_s=1.0 / rate_hz, clock=clock)
    dev = Devices(arm=arm, camera=camera or FlatCamera(clock), kinematics=PointKinematics(), planner=ScriptedPlanner(),
                  expert=expert or IKExpert(IKExpertConfig(horizon=10, dt=0.1)), clock=clock, T_base_cam=T_BASE_CAM)
    return cfg, dev, arm


def test_lockstep_episode_follows_the_plan():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place", task="t", seed=3)
    assert out.success, out.reason
    assert out.reason.startswith("guidance complete")
    assert arm.violations == [] and len(arm.commands) > 100
    # it reached the grasp point (table surface z = 0.1, grasped a little below) and the place point
    zs = np.array([c.joints[2] for c in arm.commands])
    assert zs.min() < 0.1
    assert np.linalg.norm(arm.q[:2] - [-0.108, -0.108]) < 0.03
    assert out.loop["misses"] == 0 and out.loop["sent"] == len(arm.commands)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_expert_failures_stop_with_reason(mode):
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock, expert=FaultyExpert(mode))
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success
    assert out.reason.startswith("expert fault: 3 consecutive failures")
    assert ("invalid output shape" in out.reason) if mode == "raise" else ("non-finite" in out.reason)
    assert arm.violations == [] and arm.holds >= 1


def test_camera_lost_stops_with_reason():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock, expert=FaultyExpert("none", needs_cloud=True), camera=FlatCamera(clock, fail_after=8))
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success and out.reason.startswith("camera lost"), out.reason
    assert arm.violations == [] and arm.holds >= 1


def test_arm_fault_mid_episode():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    arm.fail_command_after = 50
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success and "arm driver fault" in out.reason and "CRC error" in out.reason
    assert len(arm.commands) == 50 and arm.violations == []


def test_dry_run_sends_nothing():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    out = Pipeline(cfg, dev, dry_run=True, guidance_config=FAST).run("pick and place")
    assert arm.commands == [] and out.loop["sent"] > 100


def test_realtime_stalled_expert_holds_and_loop_keeps_period():
    """The expert stalls for 3 s in its worker: the loop keeps running (no misses from the stall),
    decelerates and holds when chunks stop, and the stop reason is reported."""
    clock = MonotonicClock()
    cfg, dev, arm = setup(clock, expert=FaultyExpert("stall", after=5), rate_hz=100.0, chunk_timeout_s=0.3)
    t0 = time.monotonic()
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place", max_seconds=1.5)
    assert time.monotonic() - t0 < 6.0
    assert not out.success and out.reason == "time limit reached"
    assert arm.holds >= 1 and arm.violations == []
    assert out.loop["cycles"] >= 100  # ~150 at 100 Hz for 1.5 s


class CallLog:
    """An episode observer that notes each call (``runtime/episode_record.py`` lists them)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *a, **kw: self.calls.append((method, a, kw))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class Broken:
    def on_chunk(self, *a):
        raise RuntimeError("observer bug")


def test_observers_see_the_plan_the_guidance_and_every_expert_step():
    clock = SimClock(start_ns=1_000_000_000)
    camera = FlatCamera(clock, fail_after=20)  # the IK expert needs no frames: losing the camera only thins them
    cfg, dev, arm = setup(clock, camera=camera)
    log = CallLog()
    pipe = Pipeline(cfg, dev, guidance_config=FAST, observers=[log, None, Broken()])
    out = pipe.run("pick and place", task="t", seed=3)
    assert out.success, out.reason  # neither a failing observer nor the lost camera stops the episode
    names = log.names()
    assert names[0] == "begin_episode" and log.calls[0][1:] == (("pick and place",), {"task": "t", "seed": 3})
    assert names[-1] == "end_episode" and log.calls[-1][1] == (out, None)
    assert names.index("on_plan") < names.index("on_guidance") < names.index("on_chunk")
    assert names.count("on_plan") == names.count("on_guidance") == 1
    steps = names[names.index("on_guidance") + 1:-1]
    n = steps.count("on_chunk")
    assert n > 20 and steps.count("on_state") == n
    assert 0 < steps.count("on_frame") < n  # frames while the camera worked (the expert itself takes none)
    for prev, nxt in zip(log.calls, log.calls[1:]):  # each step: [frame,] state, chunk, with the same state
        if prev[0] == "on_state":
            assert nxt[0] == "on_chunk" and nxt[1][2] is prev[1][0]
    frame, cloud = next(c[1] for c in log.calls if c[0] == "on_frame")
    assert isinstance(frame, RGBD) and cloud is None
    plan, plan_frame = next(c[1] for c in log.calls if c[0] == "on_plan")
    assert len(plan.anchors) == 3 and isinstance(plan_frame, RGBD)


def test_without_observers_an_expert_that_takes_no_cloud_reads_no_frames():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert out.success and dev.camera.reads <= 2  # the planner's frame only


def make_recording_arm():  # module level: the loop process imports it
    return RecordingArm(q0=(0.1, 0.0, 0.3))


def test_realtime_episode_with_the_loop_in_its_own_process():
    clock = MonotonicClock()
    cfg, dev, _ = setup(clock, chunk_timeout_s=0.5)
    import dataclasses

    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, isolation="process"))
    dev.arm, dev.arm_factory, dev.kin_factory = None, make_recording_arm, PointKinematics
    quick = GuidanceConfig(speed_m_s=1.0, v_max=1.0, a_max=4.0, dwell_s=0.05, min_segment_s=0.05, approach_m=0.05)
    from edgebridge.runtime.profiling import Profiler

    prof = Profiler()
    log = CallLog()
    pipe = Pipeline(cfg, dev, guidance_config=quick, settle_s=0.3, profiler=prof, observers=[log])
    out = pipe.run("pick and place", max_seconds=15.0)
    assert out.success, out.reason
    # the expert worker beside a loop process reports its steps to the observers as in the other modes
    names = log.names()
    assert names[0] == "begin_episode" and names[-1] == "end_episode" and log.calls[-1][1] == (out, prof)
    assert "on_plan" in names and names.count("on_chunk") >= 3
    assert names.count("on_frame") == names.count("on_state") == names.count("on_chunk")
    assert out.loop["sent"] > 100 and out.loop["rejections"] == {}
    # the loop's own stages were profiled in the child and came back with its result
    stages = prof.stage_table()
    assert stages["loop_compute"]["n"] >= out.loop["cycles"] - 1 and stages["driver_io"]["n"] >= out.loop["sent"]
    assert stages["end_to_end"]["n"] >= 1 and 0 < stages["end_to_end"]["p50_ms"] < 1000
    assert pipe.last_period_stats is not None and pipe.last_period_stats.n == out.loop["cycles"]


class OffImagePlanner(ScriptedPlanner):
    def plan(self, rgbd, instruction):
        return Plan(instruction, (Anchor(500, 24, 1.0),), source="scripted")  # u beyond the 64-px image


def test_rejected_plan_ends_the_episode_with_the_reason_and_sends_nothing():
    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    dev.planner = OffImagePlanner()
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success and out.reason.startswith("plan rejected:")
    assert arm.commands == []


class BiasedCamera(FlatCamera):
    """The flat table read ``bias`` metres too far (a drifted stereo calibration)."""

    def __init__(self, clock, bias: float) -> None:
        super().__init__(clock)
        self.bias = bias

    def read(self) -> RGBD:
        f = super().read()
        return RGBD(f.rgb, f.depth + np.float32(self.bias), f.intrinsics, stamp_ns=f.stamp_ns)


def test_depth_tare_corrects_a_biased_camera_before_the_episode():
    import dataclasses

    from edgebridge.runtime.config import CameraConfig

    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock, camera=BiasedCamera(clock, 0.05))
    cfg = dataclasses.replace(cfg, camera=CameraConfig(depth_tare=True, table_z_m=0.1))
    pipe = Pipeline(cfg, dev, guidance_config=FAST)
    out = pipe.run("pick and place")
    assert out.success, out.reason
    assert abs(pipe.depth_tare.bias_m - 0.05) < 1e-4 and pipe.depth_tare.applied
    np.testing.assert_allclose(pipe.capture(None).depth, 0.9, atol=1e-5)
    # same plan as the unbiased camera: the grasp reaches the table (z = 0.1)
    assert min(c.joints[2] for c in arm.commands) < 0.1
    # without the tare the 5 cm bias sends the grasp 5 cm below the table: the lifted anchors differ
    raw = Pipeline(setup(clock, camera=BiasedCamera(clock, 0.05))[0], dev, guidance_config=FAST)
    plan = ScriptedPlanner().plan(None, "x")
    assert raw.lift(plan, raw.capture(None)).positions[0, 2] < pipe.lift(plan, pipe.capture(None)).positions[0, 2] - 0.04


def test_depth_tare_failure_stops_before_the_arm_moves():
    import dataclasses

    from edgebridge.runtime.config import CameraConfig

    clock = SimClock(start_ns=1_000_000_000)
    cfg, dev, arm = setup(clock)
    cfg = dataclasses.replace(cfg, camera=CameraConfig(depth_tare=True, table_z_m=0.5))  # 0.4 m off: not a table
    out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place")
    assert not out.success and out.reason.startswith("depth tare failed:") and "max_bias_m" in out.reason
    assert arm.commands == []


def test_warm_up_runs_cloud_and_expert_once_and_stays_out_of_the_profile():
    from edgebridge.runtime.profiling import Profiler

    clock = MonotonicClock()
    calls = []

    class CloudExpert:
        needs_cloud = True

        def act(self, cloud, state, guidance):
            calls.append((cloud.n_valid, guidance.t[-1]))
            return IKExpert(IKExpertConfig(horizon=10, dt=0.1)).act(cloud, state, guidance)

        def close(self):
            pass

    cfg, dev, arm = setup(clock, expert=CloudExpert())
    prof = Profiler()
    pipe = Pipeline(cfg, dev, profiler=prof)
    pipe.warm_up(arm.state())
    assert len(calls) == 1 and calls[0][0] > 0  # one act on a real cloud, on a hold-in-place guidance
    assert arm.commands == [] and prof.stage_table() == {} and pipe.profiler is prof


def test_sigint_ends_a_loop_process_episode_within_a_second():
    """A signal to the supervising process: a stop through shared memory, the child brakes and holds,
    ``run`` returns with the signal as the reason (the figure is printed with -s)."""
    import dataclasses
    import os
    import signal
    import threading

    clock = MonotonicClock()
    cfg, dev, _ = setup(clock, chunk_timeout_s=0.5)
    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, isolation="process"))
    dev.arm, dev.arm_factory, dev.kin_factory = None, make_recording_arm, PointKinematics
    sent = []
    timer = threading.Timer(1.5, lambda: (sent.append(time.monotonic()), os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    try:
        out = Pipeline(cfg, dev, guidance_config=FAST).run("pick and place", max_seconds=30.0)
    finally:
        timer.cancel()
    elapsed = time.monotonic() - sent[0]
    print(f"SIGINT -> loop-process episode ended in {elapsed:.3f} s")
    assert out.reason == "SIGINT received" and not out.success, out.reason
    assert elapsed < 1.0
