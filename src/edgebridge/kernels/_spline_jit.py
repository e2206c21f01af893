"""Compiled evaluation of a GuidanceSpline's packed segment table (see ``spline.py`` for the columns).

``many(ts, tab)``: (T, 8) rows ``x y z qx qy qz qw gripper`` for (T,) times, behind
``GuidanceSpline.evaluate_many``. Same formulas as the numpy methods of ``GuidanceSpline``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .spline import C_A, C_B, C_C, C_D, C_G0, C_G1, C_H, C_Q0, C_Q1, C_T0, C_TH


@njit(cache=True, inline="always")
def _row(t, tab, out, o):
    S = tab.shape[0]
    t_first = tab[0, C_T0]
    t_last = tab[S - 1, C_T0] + tab[S - 1, C_H]
    tc = min(max(t, t_first), t_last)
    lo, hi = 0, S - 1  # last segment whose start <= tc
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if tab[mid, C_T0] <= tc:
            lo = mid
        else:
            hi = mid - 1
    i = lo
    tau = tc - tab[i, C_T0]
    for a in range(3):
        out[o + a] = tab[i, C_A + a] + tau * (tab[i, C_B + a] + tau * (tab[i, C_C + a] + tau * tab[i, C_D + a]))
    h = tab[i, C_H]
    s = tau / h if h > 0 else 0.0
    w = s * s * (3.0 - 2.0 * s)
    half = 0.5 * tab[i, C_TH]
    sh = math.sin(half)
    if sh < 1e-9:
        k0, k1 = 1.0 - w, w
    else:
        k0, k1 = math.sin((1.0 - w) * half) / sh, math.sin(w * half) / sh
    nrm = 0.0
    for a in range(4):
        qa = k0 * tab[i, C_Q0 + a] + k1 * tab[i, C_Q1 + a]
        out[o + 3 + a] = qa
        nrm += qa * qa
    nrm = math.sqrt(nrm)
    for a in range(4):
        out[o + 3 + a] /= nrm
    g = tab[i, C_G0] + s * (tab[i, C_G1] - tab[i, C_G0])
    out[o + 7] = min(max(g, 0.0), 1.0)


@njit(cache=True)
def many(ts, tab):
    out = np.empty((ts.size, 8))
    flat = out.reshape(-1)
    for k in range(ts.size):
        _row(ts[k], tab, flat, 8 * k)
    return out
