"""GuidanceSpline: scipy parity, unit quaternions, edge cases, time scaling limits, compiled tick path."""

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
    np.testing.assert_allclose(s.evaluate_at(3.0), [0.3, 0.1, 0.2, 0, 0, 0, 1, 0.5])
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


def test_compiled_tick_matches_numpy():
    s = GuidanceSpline.fit(_waypoints(6, 7))
    ts = np.concatenate([np.linspace(-1, s.duration + 1, 97), s.knots])
    rows = s.evaluate_many(ts)
    np.testing.assert_allclose(rows[:, :3], s.position(ts), atol=1e-12)
    np.testing.assert_allclose(rows[:, 3:7], s.orientation(ts), atol=1e-12)
    np.testing.assert_allclose(rows[:, 7], s.gripper(ts), atol=1e-12)
    for t in ts[::10]:
        np.testing.assert_allclose(s.evaluate_at(t), rows[list(ts).index(t)], atol=0)
    with pytest.raises(ValueError, match="t: expected a finite"):
        s.evaluate_at(float("nan"))


def test_sample_returns_guidance():
    s = GuidanceSpline.fit(_waypoints(4, 1), durations=[0.5, 0.5, 0.5])
    g = s.sample(0.1)
    assert len(g) == 16 and g.t[-1] == pytest.approx(1.5)
    g2 = s.sample(0.1, t0=1.4, n=5)
    assert len(g2) == 5
    np.testing.assert_allclose(g2.positions[-1], s.position(1.5), atol=1e-12)  # holds the end
    with pytest.raises(ValueError, match="dt"):
        s.sample(0.0)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 9), seed=st.integers(0, 10**6), shuffle=st.booleans())
def test_position_at_matches_position(m, seed, shuffle):
    """The pure-Python cursor tick equals the numpy path bit for bit, on a monotone clock (the control
    loop) and in random order (cursor misses), at knots, and before / after the ends (hold)."""
    s = GuidanceSpline.fit(_waypoints(m, seed))
    ts = np.concatenate([[-1.0, 0.0], np.linspace(-0.2, s.duration + 0.2, 211), s.knots, [s.duration, 1e9]])
    ts = np.sort(ts)
    if shuffle:
        ts = np.random.default_rng(seed).permutation(ts)
    got = np.array([s.position_at(float(t)) for t in ts])
    np.testing.assert_array_equal(got, s.position(ts))
    assert all(type(v) is float for v in s.position_at(0.5 * s.duration))


def test_position_at_rejects_non_finite_and_holds_ends():
    s = GuidanceSpline.fit(_waypoints(4, 2))
    s.position_at(0.0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="t: expected a finite"):
            s.position_at(bad)
    np.testing.assert_array_equal(s.position_at(s.duration + 5.0), s.position(s.duration))
    np.testing.assert_array_equal(s.position_at(-5.0), s.position(0.0))
    one = GuidanceSpline.fit(Waypoints([[0.3, 0.1, 0.2]], [[0, 0, 0, 1]], [0.5]))
    assert one.position_at(-1e6) == one.position_at(7.0) == (0.3, 0.1, 0.2)


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 9), seed=st.integers(0, 10**6), dt=st.sampled_from([0.002, 0.01, 1 / 300, 0.0137]),
       block=st.sampled_from([1, 7, 256]))
def test_cursor_equals_position_over_long_runs(m, seed, dt, block):
    """The per-tick stepper returns position(t0 + dt k) exactly, across every segment change, past the
    end (held), from a start before 0, over many refills: no drift however long it runs."""
    s = GuidanceSpline.fit(_waypoints(m, seed)).time_scaled(0.5, 1.0, 2.0, 4.0)
    t0 = -0.05 - 0.3 * dt
    n = int((s.duration + 0.5 - t0) / dt) + 3
    n = min(n, 60_000)
    cur = s.cursor(t0, dt, block=block)
    got = np.array([cur.next() for _ in range(n)])
    want = s.position(t0 + dt * np.arange(n))
    assert np.abs(got - want).max() <= 1e-12
    np.testing.assert_array_equal(got, want)
    assert cur.k == n and cur.t == pytest.approx(t0 + dt * n)
    assert all(type(v) is float for v in next(cur))


def test_cursor_crosses_knots_exactly_and_validates():
    s = GuidanceSpline.fit(_waypoints(5, 3), durations=[0.1, 0.2, 0.3, 0.4])
    cur = s.cursor(0.0, 0.05)  # lands on every knot (0.1, 0.3, 0.6, 1.0), the segment boundaries
    got = np.array([v for _, v in zip(range(30), cur)])
    np.testing.assert_allclose(got, s.position(0.05 * np.arange(30)), atol=1e-12, rtol=0)
    np.testing.assert_allclose(got[[2, 6, 12, 20]], _waypoints(5, 3).positions[1:], atol=1e-12)
    assert s.cursor(0.0, 0.05).k == 0
    for kw, match in [(dict(t0=float("nan"), dt=0.01), "t0"), (dict(t0=0.0, dt=0.0), "dt"),
                      (dict(t0=0.0, dt=float("inf")), "dt")]:
        with pytest.raises(ValueError, match=match):
            s.cursor(**kw)
    with pytest.raises(ValueError, match="block"):
        s.cursor(0.0, 0.01, block=0)
