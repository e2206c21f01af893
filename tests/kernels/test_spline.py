"""GuidanceSpline: scipy parity, unit quaternions, edge cases, time scaling limits, the compiled batch path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

from edgebridge.contracts import Guidance, Waypoints
from edgebridge.kernels import GuidanceSpline


def _waypoints(m, seed=0):
    rng = np.random.default_rng(seed)
    return Waypoints(rng.uniform(-0.5, 0.5, (m, 3)), Rotation.random(m, random_state=seed).as_quat(),
                     rng.uniform(0, 1, m))


def _scipy(spline, positions):
    z = np.zeros(3)
    return make_interp_spline(spline.knots, positions, k=3, bc_type=([(1, z)], [(1, z)]))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 12), seed=st.integers(0, 10**6))
def test_positions_match_scipy(m, seed):
    wp = _waypoints(m, seed)
    s = GuidanceSpline.fit(wp)
    ref = _scipy(s, wp.positions)
    ts = np.linspace(0, s.duration, 257)
    np.testing.assert_allclose(s.position(ts), ref(ts), atol=1e-9, rtol=0)
    np.testing.assert_allclose(s.velocity(ts), ref(ts, 1), atol=1e-8, rtol=0)
    np.testing.assert_allclose(s.acceleration(ts), ref(ts, 2), atol=1e-7, rtol=0)
    np.testing.assert_allclose(s.position(s.knots), wp.positions, atol=1e-12)  # interpolates
    np.testing.assert_allclose(s.velocity([0.0, s.duration]), 0, atol=1e-12)  # clamped ends


def test_explicit_durations_and_chord_length():
    wp = Waypoints([[0, 0, 0], [0.1, 0, 0], [0.1, 0.3, 0]], [[0, 0, 0, 1]] * 3, [1, 1, 1])
    s = GuidanceSpline.fit(wp)
    np.testing.assert_allclose(np.diff(s.knots), [1.0, 3.0])  # 0.1 m and 0.3 m at 0.1 m/s
    s2 = GuidanceSpline.fit(wp, durations=[2.0, 0.5])
    np.testing.assert_allclose(s2.knots, [0, 2.0, 2.5])
    np.testing.assert_allclose(s2.position(2.0), [0.1, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match="durations"):
        GuidanceSpline.fit(wp, durations=[1.0, 0.0])


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_quaternions_unit_and_interpolating(m, seed):
    wp = _waypoints(m, seed)
    s = GuidanceSpline.fit(wp)
    ts = np.linspace(-0.5, s.duration + 0.5, 301)
    q = s.orientation(ts)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    qk = s.orientation(s.knots)
    np.testing.assert_allclose(np.abs(np.sum(qk * wp.quats, axis=1)), 1.0, atol=1e-9)  # same rotation (+-q)
    g = s.gripper(ts)
    assert np.all((g >= 0) & (g <= 1))
    np.testing.assert_allclose(s.gripper(s.knots), wp.gripper, atol=1e-12)


def test_single_waypoint_is_constant():
    wp = Waypoints([[0.3, 0.1, 0.2]], [[0, 0, 0, 1]], [0.5])
    s = GuidanceSpline.fit(wp)
    assert s.duration == 0.0
    np.testing.assert_allclose(s.position([0.0, 1.0]), [[0.3, 0.1, 0.2]] * 2)
    np.testing.assert_allclose(s.velocity(0.5), 0)
    np.testing.assert_allclose(s.orientation(2.0), [0, 0, 0, 1])
    np.testing.assert_allclose(s.evaluate_many([3.0]), [[0.3, 0.1, 0.2, 0, 0, 0, 1, 0.5]])
    assert s.time_scaled(0.1, 0.1, 0.1, 0.1) is s
    g = s.sample(0.1)
    assert isinstance(g, Guidance) and len(g) == 1


def test_repeated_waypoints_do_not_divide_by_zero():
    p = [[0, 0, 0], [0, 0, 0], [0.2, 0, 0], [0.2, 0, 0], [0.2, 0, 0]]
    q = [[0, 0, 0, 1]] * 4 + [[1, 0, 0, 0]]  # last: same position, rotated
    g = [1, 1, 1, 0, 0]  # 4th: same pose, gripper closes
    s = GuidanceSpline.fit(Waypoints(p, q, g))
    assert len(s.knots) == 4 and np.all(np.diff(s.knots) > 0)  # only the exact repeat is merged
    ts = np.linspace(0, s.duration, 200)
    for arr in (s.position(ts), s.velocity(ts), s.orientation(ts), s.gripper(ts), s.evaluate_many(ts)):
        assert np.all(np.isfinite(arr))
    all_same = GuidanceSpline.fit(Waypoints([[1, 2, 3]] * 3, [[0, 0, 0, 1]] * 3, [1, 1, 1]))
    assert all_same.duration == 0.0
    np.testing.assert_allclose(all_same.position(0.3), [1, 2, 3])


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 8), seed=st.integers(0, 10**6),
       lim=st.tuples(*[st.floats(0.05, 3.0)] * 4))
def test_time_scaling_respects_limits(m, seed, lim):
    s = GuidanceSpline.fit(_waypoints(m, seed)).time_scaled(*lim)
    ts = np.linspace(0, s.duration, 4001)
    v = np.linalg.norm(s.velocity(ts), axis=1).max()
    a = np.linalg.norm(s.acceleration(ts), axis=1).max()
    q = s.orientation(ts)
    dt = ts[1] - ts[0]
    ang = 2 * np.arccos(np.clip(np.abs(np.sum(q[1:] * q[:-1], axis=1)), 0, 1))
    w = ang.max() / dt  # finite-difference angular speed (a lower bound of the true peak)
    tol = 1 + 1e-6
    assert v <= lim[0] * tol and a <= lim[1] * tol and w <= lim[2] * tol
    pk = s.peaks()
    assert pk[3] <= lim[3] * tol
    ratios = [pk[0] / lim[0], pk[1] / lim[1], pk[2] / lim[2], pk[3] / lim[3]]
    assert max(ratios) == pytest.approx(1.0, rel=1e-6)  # the tightest limit is active
    assert v == pytest.approx(pk[0], rel=1e-3) and a == pytest.approx(pk[1], rel=1e-2)


def test_compiled_batch_matches_numpy():
    s = GuidanceSpline.fit(_waypoints(6, 7))
    ts = np.concatenate([np.linspace(-1, s.duration + 1, 97), s.knots])
    rows = s.evaluate_many(ts)
    np.testing.assert_allclose(rows[:, :3], s.position(ts), atol=1e-12)
    np.testing.assert_allclose(rows[:, 3:7], s.orientation(ts), atol=1e-12)
    np.testing.assert_allclose(rows[:, 7], s.gripper(ts), atol=1e-12)
    with pytest.raises(ValueError, match="t: sample times must be finite"):
        s.evaluate_many([0.0, float("nan")])


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 9), seed=st.integers(0, 10**6), duration=st.floats(5.0, 30.0))
def test_compiled_batch_matches_numpy_at_guidance_sampling(m, seed, duration):
    """The guidance's sampling pattern: one piece time-scaled to 5-30 s, sampled every 0.05 s (100-600
    rows), past its end too; every column equals the numpy methods within 1e-12."""
    w = np.random.default_rng(seed).uniform(0.5, 2.0, m - 1)
    s = GuidanceSpline.fit(_waypoints(m, seed), durations=duration * w / w.sum())
    ts = 0.05 * np.arange(int(duration / 0.05) + 3)
    rows = s.evaluate_many(ts)
    assert rows.shape == (ts.size, 8)
    np.testing.assert_allclose(rows[:, :3], s.position(ts), atol=1e-12, rtol=0)
    np.testing.assert_allclose(rows[:, 3:7], s.orientation(ts), atol=1e-12, rtol=0)
    np.testing.assert_allclose(rows[:, 7], np.clip(s.gripper(ts), 0.0, 1.0), atol=1e-12, rtol=0)


def test_sample_returns_guidance():
    s = GuidanceSpline.fit(_waypoints(4, 1), durations=[0.5, 0.5, 0.5])
    g = s.sample(0.1)
    assert len(g) == 16 and g.t[-1] == pytest.approx(1.5)
    g2 = s.sample(0.1, t0=1.4, n=5)
    assert len(g2) == 5
    np.testing.assert_allclose(g2.positions[-1], s.position(1.5), atol=1e-12)  # holds the end
    with pytest.raises(ValueError, match="dt"):
        s.sample(0.0)
