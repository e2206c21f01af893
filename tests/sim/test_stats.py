"""Success-rate comparison used by the sim benchmark: intervals and verdicts on known cases."""

import pytest

from edgebridge.config import ConfigError
from edgebridge.sim.stats import compare_success, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(49, 50)
    assert lo == pytest.approx(0.8950, abs=2e-4) and hi == pytest.approx(0.9965, abs=2e-4)
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=2e-4)
    lo, hi = wilson_interval(50, 50)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.9287, abs=2e-4)


@pytest.mark.parametrize("k, kb, verdict", [
    (48, 31, "above"),   # far apart: beyond the sampling noise of 50 episodes
    (50, 38, "above"),
    (49, 50, "level"),   # one episode at the ceiling: within the noise
    (50, 49, "level"),
    (0, 0, "level"),
    (31, 48, "below"),
])
def test_verdicts(k, kb, verdict):
    c = compare_success(k, 50, kb, 50)
    assert c.verdict == verdict
    assert 0.0 <= c.p_above <= 1.0 and 0.0 <= c.p_below <= 1.0
    assert c.rate == k / 50 and c.rate_baseline == kb / 50


def test_one_sided_p_values_are_mirror_images():
    a = compare_success(40, 50, 30, 50)
    b = compare_success(30, 50, 40, 50)
    assert a.p_above == pytest.approx(b.p_below)
    assert a.p_above < 0.05 < a.p_below


@pytest.mark.parametrize("args", [(51, 50, 10, 50), (-1, 50, 10, 50), (1, 0, 1, 1), (10, 50, 10, 50, 1.5)])
def test_bad_counts_are_named(args):
    with pytest.raises(ConfigError, match="successes|alpha"):
        compare_success(*args)
