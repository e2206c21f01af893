"""Lens distortion models of normalised image coordinates (librealsense conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.calib.undistort import distort_normalized, undistort_normalized
from edgebridge.contracts import Intrinsics


def _intr(model="none", coeffs=(0, 0, 0, 0, 0)):
    return Intrinsics(64, 48, 60.0, 62.0, 31.5, 23.5, model=model, coeffs=np.array(coeffs, dtype=float))


@pytest.mark.parametrize("model", ["brown_conrady", "inverse_brown_conrady"])
def test_undistort_inverts_distort(model):
    intr = _intr(model, (0.1, -0.05, 0.001, -0.002, 0.01))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 0.5, 50), rng.uniform(-0.4, 0.4, 50)
    xd, yd = distort_normalized(x, y, intr)
    assert not np.allclose(xd, x)
    xu, yu = undistort_normalized(xd, yd, intr)
    np.testing.assert_allclose(xu, x, atol=1e-9)
    np.testing.assert_allclose(yu, y, atol=1e-9)


def test_no_distortion_is_identity():
    x, y = np.array([0.3, -0.2]), np.array([-0.1, 0.25])
    for intr in (_intr("none", (0.1, 0, 0, 0, 0)), _intr("brown_conrady")):
        xu, yu = undistort_normalized(x, y, intr)
        np.testing.assert_array_equal(xu, x)
        np.testing.assert_array_equal(yu, y)
    xd, yd = distort_normalized(x, y, _intr("none", (0.1, 0, 0, 0, 0)))
    np.testing.assert_array_equal(xd, x)


def test_radial_only_known_value():
    # k1 = 0.1 at r^2 = 0.25: the radial factor is 1.025
    xd, yd = distort_normalized(0.3, 0.4, _intr("brown_conrady", (0.1, 0, 0, 0, 0)))
    np.testing.assert_allclose([xd, yd], [0.3 * 1.025, 0.4 * 1.025], rtol=1e-12)
