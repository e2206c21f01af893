import math

import numpy as np
import pytest

from edgebridge.contracts import ActionChunk
from edgebridge.rotations import quat_angle, slerp
from edgebridge.runtime.chunks import ChunkBlender, ChunkTrack, Target

from runtime_fakes import chunk_line

MS = 1_000_000


def test_slerp_midpoint_is_half_the_angle():
    q0 = np.array([0.0, 0.0, 0.0, 1.0])
    q1 = np.array([0.0, 0.0, math.sin(0.5), math.cos(0.5)])  # 1 rad about z
    qm = slerp(q0, q1, 0.5)
    assert quat_angle(q0, qm) == pytest.approx(0.5, abs=1e-9)
    assert quat_angle(qm, q1) == pytest.approx(0.5, abs=1e-9)
    # shortest path: -q1 is the same rotation
    assert quat_angle(q0, slerp(q0, -q1, 0.5)) == pytest.approx(0.5, abs=1e-9)


def test_track_interpolates_linearly_and_holds_ends():
    c = chunk_line(1000 * MS, (0, 0, 0), (0.9, 0, 0), n=10, dt=0.1)
    tr = ChunkTrack.from_chunk(c, 1000 * MS)
    p, q, g = tr.sample(1000 * MS + 150 * MS)  # halfway between steps 1 and 2
    assert p[0] == pytest.approx(0.15, abs=1e-6)
    assert tr.sample(0)[0][0] == pytest.approx(0.0)  # before start: first pose
    assert tr.sample(10_000 * MS)[0][0] == pytest.approx(0.9, abs=1e-6)  # after end: last pose


def test_late_chunk_is_sampled_at_now_not_replayed():
    # Observation at t=1 s, arrives 300 ms later: the target at arrival is step 3, not step 0.
    blender = ChunkBlender(blend_s=0.0, max_speed=100.0)
    t_obs = 1000 * MS
    blender.reset(Target(np.array([0.3, 0, 0]), np.array([0, 0, 0, 1.0]), 1.0), t_obs)
    c = chunk_line(t_obs, (0, 0, 0), (0.9, 0, 0), n=10, dt=0.1)
    now = t_obs + 300 * MS
    blender.push(c, now)
    assert blender.sample(now, 0.01).position[0] == pytest.approx(0.3, abs=1e-6)


def _max_step(blender, chunks_at, t0, t1, period_ns):
    """Run the blender from t0 to t1, pushing chunks at their arrival times; return step sizes."""
    prev, steps = None, []
    pending = sorted(chunks_at, key=lambda x: x[0])
    t = t0
    while t <= t1:
        while pending and pending[0][0] <= t:
            blender.push(pending.pop(0)[1], t)
        p = blender.sample(t, period_ns / 1e9).position
        if prev is not None:
            steps.append(float(np.linalg.norm(p - prev)))
        prev = p
        t += period_ns
    return np.array(steps)


def test_chunk_boundary_has_no_jump_beyond_speed_limit():
    # Two chunks that disagree by 5 cm at the switch: the output must move no faster than max_speed.
    period = 2 * MS
    vmax = 0.25
    blender = ChunkBlender(blend_s=0.1, max_speed=vmax)
    t0 = 1000 * MS
    blender.reset(Target(np.zeros(3), np.array([0, 0, 0, 1.0]), 1.0), t0)
    a = chunk_line(t0, (0, 0, 0), (0.1, 0, 0), n=11, dt=0.05)
    b = chunk_line(t0 + 200 * MS, (0.04, 0.05, 0), (0.14, 0.05, 0), n=11, dt=0.05)
    steps = _max_step(blender, [(t0, a), (t0 + 250 * MS, b)], t0, t0 + 1000 * MS, period)
    assert steps.max() <= vmax * period / 1e9 + 1e-12
    # and the output really reaches the second chunk (the limit does not freeze it)
    assert blender.last.position[1] == pytest.approx(0.05, abs=1e-6)


def test_crossfade_alone_is_continuous():
    # With a loose speed limit the cross-fade itself keeps the per-tick change small at the boundary.
    period = 2 * MS
    blender = ChunkBlender(blend_s=0.1, max_speed=1e3)
    t0 = 1000 * MS
    blender.reset(Target(np.zeros(3), np.array([0, 0, 0, 1.0]), 1.0), t0)
    a = chunk_line(t0, (0, 0, 0), (0.0, 0, 0), n=2, dt=0.05)
    b = chunk_line(t0, (0.0, 0.1, 0), (0.0, 0.1, 0), n=2, dt=0.05)
    steps = _max_step(blender, [(t0, a), (t0 + 100 * MS, b)], t0, t0 + 400 * MS, period)
    # 10 cm over a 100 ms fade sampled every 2 ms: 2 mm per tick, never the 10 cm jump
    assert steps.max() <= 0.1 * period / (100 * MS) + 1e-9


def test_sample_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="reset"):
        ChunkBlender().sample(0, 0.01)


def test_gripper_is_rate_limited():
    blender = ChunkBlender(blend_s=0.0, max_gripper_speed=2.0)
    blender.reset(Target(np.zeros(3), np.array([0, 0, 0, 1.0]), 1.0), 0)
    blender.push(chunk_line(0, (0, 0, 0), (0, 0, 0), n=2, gripper=0.0), 0)
    g = [blender.sample(k * 10 * MS, 0.01).gripper for k in range(1, 60)]
    assert np.max(np.abs(np.diff([1.0] + g))) <= 0.02 + 1e-12
    assert g[-1] == pytest.approx(0.0)


def test_bad_chunk_rejected_by_contract():
    poses = np.zeros((3, 8), dtype=np.float32)
    poses[:, 6] = 1
    poses[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ActionChunk(poses, 0, 0.05)
