import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebridge.config import ConfigError, from_dict
from edgebridge.runtime import safety as S
from edgebridge.runtime.config import SafetyLimits
from edgebridge.runtime.safety import JointLimiter, SafetyLayer

from runtime_fakes import LIMITS, PERIOD_S, PointKinematics


def layer(fk=PointKinematics().fk):
    s = SafetyLayer(LIMITS, PERIOD_S, fk=fk)
    s.reset(np.array([0.0, 0.0, 0.3]))
    return s


def test_valid_command_is_built_and_becomes_reference():
    s = layer()
    v = s.validate(np.array([0.0004, 0.0, 0.3]), 0.5, 123)
    assert v.ok and v.command is not None and v.command.stamp_ns == 123
    assert np.allclose(s.reference, [0.0004, 0.0, 0.3])


@pytest.mark.parametrize("q, grip, reason", [
    ([np.nan, 0, 0.3], 1.0, S.NON_FINITE),
    ([0, 0, np.inf], 1.0, S.NON_FINITE),
    ([0, 0, 0.3], np.nan, S.NON_FINITE),
    ([0, 0], 1.0, S.JOINT_COUNT),
    ([0.0, 0.0, -0.001], 1.0, S.JOINT_LIMIT),
    ([0.0, 0.0, 0.3], 1.2, S.GRIPPER_RANGE),
    ([0.0, 0.0, 0.3], -0.1, S.GRIPPER_RANGE),
    ([0.004, 0.0, 0.3], 1.0, S.ACCELERATION_LIMIT),   # 0.4 rad/s from rest in 10 ms: 40 rad/s^2 > 5
    ([0.01, 0.0, 0.3], 1.0, S.VELOCITY_LIMIT),        # 1 rad/s > 0.5
    ([0.0, 0.0, 0.02], 1.0, None),                    # far step: joint ok but velocity fails first
])
def test_every_rejection_path(q, grip, reason):
    s = layer()
    v = s.validate(np.array(q, dtype=float), grip, 0)
    assert not v.ok and v.command is None
    if reason is not None:
        assert v.reason == reason, v.detail
        assert s.rejections[reason] == 1
    # a rejection leaves the reference untouched
    assert np.allclose(s.reference, [0.0, 0.0, 0.3])


def test_workspace_rejection_uses_fk():
    s = SafetyLayer(LIMITS, PERIOD_S, fk=PointKinematics().fk)
    s.reset(np.array([0.0, 0.0, 0.04]))  # standing still below the workspace box: only the box fails
    v = s.validate(np.array([0.0, 0.0, 0.04]), 1.0, 0)
    assert v.reason == S.WORKSPACE and "workspace" in v.detail


def test_fk_exception_is_a_rejection():
    def bad_fk(q):
        raise RuntimeError("singular")
    s = layer(fk=bad_fk)
    v = s.validate(np.array([0.0, 0.0, 0.3]), 1.0, 0)
    assert v.reason == S.FK_FAILED and "singular" in v.detail


def test_limits_from_toml_dict_name_the_key():
    with pytest.raises(ConfigError, match="joint_upper"):
        from_dict(SafetyLimits, {"joint_lower": [0, 0], "joint_upper": [1], "joint_velocity": [1, 1],
                                 "joint_acceleration": [1, 1]})
    with pytest.raises(ConfigError, match=r"joint_upper\[0\]"):
        from_dict(SafetyLimits, {"joint_lower": [1.0], "joint_upper": [0.0], "joint_velocity": [1],
                                 "joint_acceleration": [1]})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.4, 0.4), st.floats(-0.4, 0.4), st.floats(0.05, 0.7)), min_size=1, max_size=4),
       st.integers(5, 60))
def test_limiter_output_always_passes_safety(targets, hold_ticks):
    """Whatever targets (inside the limits) the limiter is given, its commands pass velocity/acceleration."""
    s = layer()
    lim = JointLimiter(LIMITS, PERIOD_S)
    lim.reset(np.array([0.0, 0.0, 0.3]))
    for tgt in targets:
        for _ in range(hold_ticks):
            q = lim.step(np.array(tgt))
            v = s.validate(q, 1.0, 0)
            assert v.ok, v.detail
            lim.commit(q)
    # and deceleration from any state is valid too
    while not lim.stopped:
        q = lim.decelerate()
        v = s.validate(q, 1.0, 0)
        assert v.ok, v.detail
        lim.commit(q)


def test_limiter_converges_without_overshoot():
    lim = JointLimiter(LIMITS, PERIOD_S)
    lim.reset(np.zeros(3))
    target = np.array([0.2, -0.1, 0.05])
    for _ in range(300):
        q = lim.step(target)
        lim.commit(q)
        assert np.all(np.abs(q) <= np.abs(target) + 2e-3)
    assert np.allclose(q, target, atol=1e-4)


def test_no_reference_no_command():
    """Without a reference the velocity/acceleration checks cannot run, so nothing is accepted."""
    s = SafetyLayer(LIMITS, PERIOD_S, fk=PointKinematics().fk)
    v = s.validate(np.array([0.4, 0.4, 0.6]), 1.0, 0)  # a jump from anywhere
    assert not v.ok and v.reason == S.NO_REFERENCE and "reset" in v.detail
    assert s.rejections[S.NO_REFERENCE] == 1 and s.accepted == 0


@pytest.mark.parametrize("q, v, name", [
    ([np.nan, 0.0, 0.3], None, "q"),
    ([0.0, np.inf, 0.3], None, "q"),
    ([0.0, 0.0], None, "q"),
    ([0.0, 0.0, 0.3], [0.0, np.nan, 0.0], "v"),
    ([0.0, 0.0, 0.3], [0.0, 0.0], "v"),
])
def test_reset_refuses_a_bad_reference_and_keeps_none(q, v, name):
    s = layer()  # a good reference first: a refused reset must not leave it (or half of the new one) behind
    with pytest.raises(ValueError, match=rf"SafetyLayer.reset: {name}: "):
        s.reset(np.array(q), None if v is None else np.array(v))
    assert s.reference is None
    verdict = s.validate(np.array([0.0, 0.0, 0.3]), 1.0, 0)
    assert verdict.reason == S.NO_REFERENCE
    s.reset(np.array([0.0, 0.0, 0.3]))
    assert s.validate(np.array([0.0, 0.0, 0.3]), 1.0, 0).ok


def test_acceleration_is_checked_against_the_reset_velocity():
    s = layer()
    s.reset(np.array([0.0, 0.0, 0.3]), v=np.array([0.3, 0.0, 0.0]))
    assert s.validate(np.array([0.003, 0.0, 0.3]), 1.0, 0).ok          # keeps 0.3 rad/s
    s.reset(np.array([0.0, 0.0, 0.3]), v=np.array([-0.3, 0.0, 0.0]))
    assert s.validate(np.array([0.003, 0.0, 0.3]), 1.0, 0).reason == S.ACCELERATION_LIMIT  # reverses in 10 ms


@pytest.mark.parametrize("period", [0.0, -0.01, np.nan, np.inf, "fast", True])
def test_period_must_be_finite_and_positive(period):
    with pytest.raises(ValueError, match="period_s: must be a finite number > 0"):
        SafetyLayer(LIMITS, period)
    with pytest.raises(ValueError, match="period_s: must be a finite number > 0"):
        JointLimiter(LIMITS, period)


def test_limiter_reset_refuses_non_finite():
    lim = JointLimiter(LIMITS, PERIOD_S)
    with pytest.raises(ValueError, match="JointLimiter.reset: q: non-finite"):
        lim.reset(np.array([0.0, np.nan, 0.3]))
    with pytest.raises(RuntimeError, match="call reset"):
        lim.step(np.zeros(3))


finite_or_not = st.floats(-1.0, 1.0) | st.sampled_from([np.nan, np.inf, -np.inf])


@settings(max_examples=150, deadline=None)
@given(st.lists(finite_or_not, min_size=3, max_size=3), st.lists(finite_or_not, min_size=3, max_size=3),
       st.lists(st.lists(finite_or_not, min_size=3, max_size=3), min_size=1, max_size=5))
def test_no_accepted_command_breaks_velocity_or_acceleration(q0, v0, commands):
    """Whatever references and commands come in, an accepted command is within the velocity and
    acceleration limits of the reference it was checked against."""
    s = SafetyLayer(LIMITS, PERIOD_S)
    try:
        s.reset(np.array(q0), np.array(v0))
    except ValueError:
        assert not (np.all(np.isfinite(q0)) and np.all(np.isfinite(v0)))
    for q in commands:
        q_ref, v_ref = s.reference, s._v_ref.copy()
        verdict = s.validate(np.array(q), 1.0, 0)
        if verdict.ok:
            assert q_ref is not None
            v = (np.array(q) - q_ref) / PERIOD_S
            assert np.all(np.abs(v) <= s.vmax)
            assert np.all(np.abs((v - v_ref) / PERIOD_S) <= s.amax)
