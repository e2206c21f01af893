"""Rotations and unit quaternions, numpy only.

Conventions (docs/design.md): quaternions are ``(x, y, z, w)`` (scipy's order), unit norm; ``q`` and
``-q`` are the same rotation, and functions that return a quaternion from a matrix pick ``w >= 0``.
Rotation matrices act on column vectors (``p_a = R_a_b @ p_b``). The 6-D form of a rotation is its
first two matrix columns (Zhou et al. 2019), the encoding the action expert's network uses.

Array functions take any leading batch shape ``(...)``; :func:`quat_angle` and :func:`slerp` work on
single (4,) quaternions with scalar math (they run once per control tick).
"""

from __future__ import annotations

import math

import numpy as np


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (x, y, z, w) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.empty(q.shape[:-1] + (3, 3))
    r[..., 0, 0] = 1 - 2 * (y * y + z * z)
    r[..., 0, 1] = 2 * (x * y - z * w)
    r[..., 0, 2] = 2 * (x * z + y * w)
    r[..., 1, 0] = 2 * (x * y + z * w)
    r[..., 1, 1] = 1 - 2 * (x * x + z * z)
    r[..., 1, 2] = 2 * (y * z - x * w)
    r[..., 2, 0] = 2 * (x * z - y * w)
    r[..., 2, 1] = 2 * (y * z + x * w)
    r[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), ``w >= 0``.

    Shepperd's method: per matrix, the branch with the largest of ``m00, m11, m22, trace`` keeps the
    square root away from zero; the result is normalised."""
    r = np.asarray(r, dtype=np.float64)
    m = r.reshape(-1, 3, 3)
    m00, m01, m02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    m10, m11, m12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    m20, m21, m22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    tr = m00 + m11 + m22
    k = np.argmax(np.stack([m00, m11, m22, tr], axis=1), axis=1)
    q = np.empty((m.shape[0], 4))
    s = 2.0 * np.sqrt(np.maximum(1.0 + tr, 1e-12))
    branch = np.stack([(m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s, 0.25 * s], axis=1)
    q[k == 3] = branch[k == 3]
    s = 2.0 * np.sqrt(np.maximum(1.0 + m00 - m11 - m22, 1e-12))
    branch = np.stack([0.25 * s, (m01 + m10) / s, (m02 + m20) / s, (m21 - m12) / s], axis=1)
    q[k == 0] = branch[k == 0]
    s = 2.0 * np.sqrt(np.maximum(1.0 + m11 - m00 - m22, 1e-12))
    branch = np.stack([(m01 + m10) / s, 0.25 * s, (m12 + m21) / s, (m02 - m20) / s], axis=1)
    q[k == 1] = branch[k == 1]
    s = 2.0 * np.sqrt(np.maximum(1.0 + m22 - m00 - m11, 1e-12))
    branch = np.stack([(m02 + m20) / s, (m12 + m21) / s, 0.25 * s, (m10 - m01) / s], axis=1)
    q[k == 2] = branch[k == 2]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(q[:, 3:4] < 0, -q, q)
    return q.reshape(r.shape[:-2] + (4,))


def quat_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    """Rotation angle (rad, in [0, pi]) between two (4,) unit quaternions."""
    d = min(abs(float(q0 @ q1)), 1.0)
    return 2.0 * math.acos(d)


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation between (4,) unit quaternions (x, y, z, w), shortest path, ``a`` in [0, 1]."""
    d = float(q0 @ q1)
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / math.sqrt(float(q @ q))
    th = math.acos(min(d, 1.0))
    s = math.sin(th)
    return (math.sin((1.0 - a) * th) / s) * q0 + (math.sin(a * th) / s) * q1


def rot6d_from_matrix(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first column, then the second."""
    r = np.asarray(r)
    return np.concatenate([r[..., :, 0], r[..., :, 1]], axis=-1)


def matrix_from_rot6d(d6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) proper rotation by Gram-Schmidt (the inverse of :func:`rot6d_from_matrix`;
    any 6-D vector with two non-parallel halves maps to a rotation).

    Raises ``ValueError`` (naming it degenerate) when a first column is zero or the columns are parallel."""
    d6 = np.asarray(d6, dtype=np.float64)
    a, b = d6[..., :3], d6[..., 3:6]
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    if np.any(na < 1e-8):
        raise ValueError("6-D rotation with a zero first column is degenerate")
    x = a / na
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    if np.any(nb < 1e-8):
        raise ValueError("6-D rotation with parallel columns is degenerate")
    y = b / nb
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)
