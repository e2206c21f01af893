"""Lens distortion of normalised image coordinates, librealsense's conventions.

Normalised coordinates are ``((u - cx) / fx, (v - cy) / fy)``. The models are those of
:class:`~edgebridge.contracts.Intrinsics` (coefficients ``k1 k2 p1 p2 k3``):

- ``brown_conrady``: the tangential term acts on the undistorted point;
- ``inverse_brown_conrady``: the tangential term acts on the radially distorted point
  (librealsense's "modified" form);
- ``none``: identity.

:func:`distort_normalized` is the forward model (projection); :func:`undistort_normalized` inverts it
by fixed-point iteration, as ``rs2_deproject_pixel_to_point`` does.
"""

from __future__ import annotations

import numpy as np

from ..contracts import Intrinsics

_UNDISTORT_ITERATIONS = 20


def _radial(r2: np.ndarray, k1: float, k2: float, k3: float) -> np.ndarray:
    return 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2


def undistort_normalized(x: np.ndarray, y: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Map normalised image coordinates ``((u-cx)/fx, (v-cy)/fy)`` to undistorted ray coordinates.

    Follows librealsense's ``rs2_deproject_pixel_to_point`` (coefficients k1 k2 p1 p2 k3), which both
    models invert by fixed-point iteration of the forward model in :func:`distort_normalized`:
    ``brown_conrady`` (tangential term on the undistorted point) and ``inverse_brown_conrady``
    (tangential term on the radially distorted point, librealsense's "modified" form).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if intr.model == "none" or not np.any(intr.coeffs):
        return x, y
    k1, k2, p1, p2, k3 = (float(c) for c in intr.coeffs)
    modified = intr.model == "inverse_brown_conrady"
    xu, yu = x.copy(), y.copy()
    for _ in range(_UNDISTORT_ITERATIONS):
        r2 = xu * xu + yu * yu
        radial = _radial(r2, k1, k2, k3)
        xt, yt = (xu * radial, yu * radial) if modified else (xu, yu)
        dx = 2 * p1 * xt * yt + p2 * (r2 + 2 * xt * xt)
        dy = 2 * p2 * xt * yt + p1 * (r2 + 2 * yt * yt)
        xu = (x - dx) / radial
        yu = (y - dy) / radial
    return xu, yu


def distort_normalized(x: np.ndarray, y: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Forward distortion of undistorted normalised coordinates (librealsense's projection)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if intr.model == "none":
        return x, y
    k1, k2, p1, p2, k3 = (float(c) for c in intr.coeffs)
    r2 = x * x + y * y
    radial = _radial(r2, k1, k2, k3)
    xt, yt = (x * radial, y * radial) if intr.model == "inverse_brown_conrady" else (x, y)
    return (x * radial + 2 * p1 * xt * yt + p2 * (r2 + 2 * xt * xt),
            y * radial + 2 * p2 * xt * yt + p1 * (r2 + 2 * yt * yt))
