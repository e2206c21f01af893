"""Rotation and quaternion helpers: known values, round trips, agreement with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from edgebridge.rotations import (matrix_from_rot6d, matrix_to_quat, quat_angle, quat_to_matrix,
                                  rot6d_from_matrix, slerp)

S = math.sqrt(0.5)


def _about_z(angle: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)])


def test_known_values():
    np.testing.assert_allclose(quat_to_matrix([0.0, 0.0, 0.0, 1.0]), np.eye(3), atol=1e-15)
    rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(quat_to_matrix([0.0, 0.0, S, S]), rz90, atol=1e-15)
    np.testing.assert_allclose(matrix_to_quat(rz90), [0.0, 0.0, S, S], atol=1e-15)
    # 180 degrees about x: w = 0
    np.testing.assert_allclose(matrix_to_quat(np.diag([1.0, -1.0, -1.0])), [1.0, 0.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(rot6d_from_matrix(rz90), [0.0, 1.0, 0.0, -1.0, 0.0, 0.0])


def test_quat_matrix_round_trip_and_scipy():
    r = Rotation.random(300, random_state=0)
    q = r.as_quat()
    m = quat_to_matrix(q)
    np.testing.assert_allclose(m, r.as_matrix(), atol=1e-12)
    back = matrix_to_quat(m)
    assert np.all(back[:, 3] >= 0)
    np.testing.assert_allclose(back, np.where(q[:, 3:4] < 0, -q, q), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(back, axis=-1), 1.0, atol=1e-12)


def test_batch_shapes_are_kept():
    q = Rotation.random(12, random_state=1).as_quat().reshape(3, 4, 4)
    assert quat_to_matrix(q).shape == (3, 4, 3, 3)
    assert matrix_to_quat(quat_to_matrix(q)).shape == (3, 4, 4)
    assert matrix_to_quat(np.eye(3)).shape == (4,)
    assert rot6d_from_matrix(quat_to_matrix(q)).shape == (3, 4, 6)
    assert matrix_from_rot6d(np.zeros((3, 4, 6)) + [1, 0, 0, 0, 1, 0]).shape == (3, 4, 3, 3)


def test_rot6d_round_trip_and_gram_schmidt():
    r = Rotation.random(50, random_state=2).as_matrix()
    np.testing.assert_allclose(matrix_from_rot6d(rot6d_from_matrix(r)), r, atol=1e-12)
    m = matrix_from_rot6d(rot6d_from_matrix(r) + np.random.default_rng(0).normal(0, 0.05, (50, 6)))
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


@pytest.mark.parametrize("d6", [np.zeros(6), np.array([1.0, 0, 0, 2.0, 0, 0])])
def test_degenerate_rot6d_is_a_value_error(d6):
    with pytest.raises(ValueError, match="degenerate"):
        matrix_from_rot6d(d6)


def test_quat_angle_and_slerp():
    q0, q1 = _about_z(0.0), _about_z(1.0)
    assert quat_angle(q0, q1) == pytest.approx(1.0, abs=1e-12)
    assert quat_angle(q0, -q1) == pytest.approx(1.0, abs=1e-12)  # -q is the same rotation
    assert quat_angle(q1, q1) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(slerp(q0, q1, 0.25), _about_z(0.25), atol=1e-12)
    np.testing.assert_allclose(slerp(q0, -q1, 0.5), _about_z(0.5), atol=1e-12)  # shortest path
    np.testing.assert_allclose(slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(slerp(q0, q1, 1.0), q1, atol=1e-12)
    # nearly equal quaternions: normalised linear interpolation, still unit
    q2 = _about_z(1e-4)
    assert np.linalg.norm(slerp(q0, q2, 0.5)) == pytest.approx(1.0, abs=1e-15)
    assert quat_angle(q0, slerp(q0, q2, 0.5)) == pytest.approx(0.5e-4, rel=1e-3)
