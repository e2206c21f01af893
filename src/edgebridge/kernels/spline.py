"""B-spline guidance: a smooth, time-parametrised pose + gripper trajectory through sparse waypoints.

Positions: the interpolating cubic B-spline with zero end velocity (clamped; identical to
``scipy.interpolate.make_interp_spline(t, p, k=3, bc_type=([(1, 0)], [(1, 0)]))``), stored piecewise in
power form. Knot times: chord-length parametrisation (segment "length" = max of the translation, the
rotation angle times ``ROT_LENGTH_M_PER_RAD`` and the gripper change times ``GRIP_LENGTH_M``, covered at
``NOMINAL_SPEED_M_S``) or explicit ``durations``. Consecutive waypoints identical in pose and gripper are
merged, so a zero chord never divides by zero.
Orientation: per segment, slerp along the shortest arc with the smoothstep ``3s^2 - 2s^3``: unit
quaternions, interpolates every waypoint, zero angular velocity at waypoints, and closed-form peaks
(angular speed 1.5 theta/h, angular acceleration 6 theta/h^2). Gripper: linear in time per segment.
Outside [0, duration] the trajectory holds its end values with zero velocity.

Evaluation: ``position`` / ``velocity`` / ``acceleration`` / ``orientation`` / ``gripper`` / ``sample``
(numpy, vectorised) and ``evaluate_many(ts)`` -> (T, 8) rows ``x y z qx qy qz qw gripper`` in one
compiled call (Numba, ``_spline_jit.many``: the numpy methods' formulas, equal to them within 1e-12;
gripper clipped to [0, 1]), the faster way to sample many times at once.
"""

from __future__ import annotations

import numpy as np

from ..contracts import Guidance, Waypoints

NOMINAL_SPEED_M_S = 0.1
ROT_LENGTH_M_PER_RAD = 0.1
GRIP_LENGTH_M = 0.02
MERGE_TOL = 1e-9

# packed per-segment table columns (one row per segment; the compiled kernel reads only this)
C_T0, C_H, C_A, C_B, C_C, C_D, C_Q0, C_Q1, C_TH, C_G0, C_G1 = 0, 1, 2, 5, 8, 11, 14, 18, 22, 23, 24
N_COLS = 25


def _complete_spline_slopes(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Knot derivatives of the C2 cubic interpolant with zero end derivatives (Thomas algorithm)."""
    M = t.size
    m = np.zeros_like(p)
    if M <= 2:
        return m
    h = np.diff(t)
    delta = np.diff(p, axis=0) / h[:, None]
    n = M - 2  # unknowns m_1 .. m_{M-2}
    sub = h[2:n + 1]  # row j >= 1 (knot j+1): coefficient h_{j+1} of m_j
    diag = 2 * (h[:-1] + h[1:])
    sup = h[0:n - 1]  # row j <= n-2 (knot j+1): coefficient h_j of m_{j+2}
    rhs = 3 * (h[1:, None] * delta[:-1] + h[:-1, None] * delta[1:])
    cp, dp = np.empty(n), np.empty((n, p.shape[1]))
    cp[0] = sup[0] / diag[0] if n > 1 else 0.0
    dp[0] = rhs[0] / diag[0]
    for i in range(1, n):
        den = diag[i] - sub[i - 1] * cp[i - 1]
        cp[i] = sup[i] / den if i < n - 1 else 0.0
        dp[i] = (rhs[i] - sub[i - 1] * dp[i - 1]) / den
    x = np.empty_like(dp)
    x[-1] = dp[-1]
    for i in range(n - 2, -1, -1):
        x[i] = dp[i] - cp[i] * x[i + 1]
    m[1:-1] = x
    return m


class GuidanceSpline:
    """Immutable trajectory; build with :meth:`fit`. Times in seconds from the first waypoint."""

    def __init__(self, knots: np.ndarray, positions: np.ndarray, quats: np.ndarray, gripper: np.ndarray):
        self._t = np.asarray(knots, np.float64)
        M = self._t.size
        p = np.asarray(positions, np.float64)
        q = np.asarray(quats, np.float64).copy()
        for i in range(1, M):  # shortest arc: keep consecutive quaternions in one hemisphere
            if np.dot(q[i - 1], q[i]) < 0:
                q[i] = -q[i]
        self._p, self._q, self._g = p, q, np.asarray(gripper, np.float64)
        S = max(M - 1, 1)
        tab = np.zeros((S, N_COLS))
        if M == 1:
            tab[0, C_A:C_A + 3] = p[0]
            tab[0, C_Q0:C_Q0 + 4] = tab[0, C_Q1:C_Q1 + 4] = q[0]
            tab[0, C_G0] = tab[0, C_G1] = self._g[0]
        else:
            h = np.diff(self._t)
            m = _complete_spline_slopes(self._t, p)
            delta = np.diff(p, axis=0) / h[:, None]
            tab[:, C_T0], tab[:, C_H] = self._t[:-1], h
            tab[:, C_A:C_A + 3], tab[:, C_B:C_B + 3] = p[:-1], m[:-1]
            tab[:, C_C:C_C + 3] = (3 * delta - 2 * m[:-1] - m[1:]) / h[:, None]
            tab[:, C_D:C_D + 3] = (m[:-1] + m[1:] - 2 * delta) / (h * h)[:, None]
            tab[:, C_Q0:C_Q0 + 4], tab[:, C_Q1:C_Q1 + 4] = q[:-1], q[1:]
            dots = np.clip(np.abs(np.sum(q[:-1] * q[1:], axis=1)), 0.0, 1.0)
            tab[:, C_TH] = 2 * np.arccos(dots)  # rotation angle of each segment
            tab[:, C_G0], tab[:, C_G1] = self._g[:-1], self._g[1:]
        self._tab = np.ascontiguousarray(tab)
        self._tab.flags.writeable = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def fit(cls, waypoints: Waypoints, *, durations=None) -> "GuidanceSpline":
        """Fit through ``waypoints``. ``durations`` (M-1,) seconds > 0 per segment, else chord length
        at ``NOMINAL_SPEED_M_S`` (then merge exact repeats). Use :meth:`time_scaled` to meet limits."""
        if not isinstance(waypoints, Waypoints):
            raise ValueError(f"waypoints: expected edgebridge.contracts.Waypoints, got {type(waypoints).__name__}")
        p, q, g = waypoints.positions, waypoints.quats, waypoints.gripper
        M = p.shape[0]
        if durations is not None:
            d = np.asarray(durations, np.float64)
            if d.shape != (M - 1,) or not np.all(np.isfinite(d)) or np.any(d <= 0):
                raise ValueError(f"durations: expected {M - 1} finite values > 0 s (one per segment), got {durations!r}")
            return cls(np.concatenate([[0.0], np.cumsum(d)]), p, q, g)
        if M == 1:
            return cls(np.zeros(1), p, q, g)
        angle = 2 * np.arccos(np.clip(np.abs(np.sum(q[:-1] * q[1:], axis=1)), 0.0, 1.0))
        L = np.maximum.reduce([np.linalg.norm(np.diff(p, axis=0), axis=1), ROT_LENGTH_M_PER_RAD * angle,
                               GRIP_LENGTH_M * np.abs(np.diff(g))])
        keep = np.concatenate([[True], L > MERGE_TOL])
        L = L[L > MERGE_TOL]
        t = np.concatenate([[0.0], np.cumsum(L / NOMINAL_SPEED_M_S)])
        return cls(t, p[keep], q[keep], g[keep])

    def time_scaled(self, v_max: float, a_max: float, w_max: float, alpha_max: float) -> "GuidanceSpline":
        """The same path, uniformly re-timed so that the tightest of the limits (linear speed m/s,
        linear acceleration m/s^2, angular speed rad/s, angular acceleration rad/s^2) is just met
        (slower or faster than now). Exact: the clamped spline commutes with uniform time scaling."""
        lim = {}
        for name, val in (("v_max", v_max), ("a_max", a_max), ("w_max", w_max), ("alpha_max", alpha_max)):
            x = float(val)
            if not (np.isfinite(x) and x > 0):
                raise ValueError(f"{name}: expected a finite limit > 0, got {val!r}")
            lim[name] = x
        if self._t.size == 1:
            return self
        v, a, w, al = self.peaks()
        k = max(v / lim["v_max"], np.sqrt(a / lim["a_max"]), w / lim["w_max"], np.sqrt(al / lim["alpha_max"]))
        if k <= 0:  # every waypoint identical in pose: nothing moves, keep the timing
            return self
        k *= 1 + 1e-12
        return GuidanceSpline(self._t * k, self._p, self._q, self._g)

    def peaks(self) -> tuple[float, float, float, float]:
        """Exact peak linear speed, linear acceleration, angular speed and angular acceleration."""
        tab = self._tab
        if self._t.size == 1:
            return 0.0, 0.0, 0.0, 0.0
        h = tab[:, C_H]
        b, c, d = tab[:, C_B:C_B + 3], tab[:, C_C:C_C + 3], tab[:, C_D:C_D + 3]
        # acceleration is linear per segment: its norm peaks at an end
        a0, a1 = 2 * c, 2 * c + 6 * d * h[:, None]
        a_pk = float(max(np.linalg.norm(a0, axis=1).max(), np.linalg.norm(a1, axis=1).max()))
        # |v|^2 is quartic: check segment ends and the real roots of d/dtau |v|^2 = 2 v.a (a cubic)
        v_pk = 0.0
        for i in range(h.size):
            vb, vc, vd = b[i], 2 * c[i], 3 * d[i]  # v(tau) = vb + vc tau + vd tau^2
            cands = [0.0, h[i]]
            cub = [2 * vd @ vd, 3 * vc @ vd, vc @ vc + 2 * vb @ vd, vb @ vc]  # (v . a) coefficients
            if np.any(np.abs(cub) > 0):
                for r in np.roots(np.trim_zeros(np.asarray(cub), "f")):
                    if abs(r.imag) < 1e-9 and 0 <= r.real <= h[i]:
                        cands.append(float(r.real))
            for tau in cands:
                v_pk = max(v_pk, float(np.linalg.norm(vb + vc * tau + vd * tau * tau)))
        th = tab[:, C_TH]
        return v_pk, a_pk, float(np.max(1.5 * th / h)), float(np.max(6 * th / (h * h)))

    # ------------------------------------------------------------------ evaluation (numpy, vectorised)

    @property
    def duration(self) -> float:
        return float(self._t[-1] - self._t[0])

    @property
    def knots(self) -> np.ndarray:
        return self._t.copy()

    def _locate(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        ta = np.asarray(t, np.float64)
        scalar = ta.ndim == 0
        ta = np.atleast_1d(ta)
        if not np.all(np.isfinite(ta)):
            raise ValueError("t: sample times must be finite")
        tc = np.clip(ta, self._t[0], self._t[-1])
        seg = np.clip(np.searchsorted(self._t, tc, side="right") - 1, 0, self._tab.shape[0] - 1)
        tau = tc - self._tab[seg, C_T0]
        inside = (ta >= self._t[0]) & (ta <= self._t[-1]) & (self._t.size > 1)
        return seg, tau, inside, scalar

    def _poly(self, t, order: int) -> np.ndarray:
        seg, tau, inside, scalar = self._locate(t)
        r = self._tab[seg]
        b, c, d = r[:, C_B:C_B + 3], r[:, C_C:C_C + 3], r[:, C_D:C_D + 3]
        x = tau[:, None]
        if order == 0:
            out = r[:, C_A:C_A + 3] + x * (b + x * (c + x * d))
        elif order == 1:
            out = (b + x * (2 * c + 3 * x * d)) * inside[:, None]
        else:
            out = (2 * c + 6 * x * d) * inside[:, None]
        return out[0] if scalar else out

    def position(self, t) -> np.ndarray:
        """(T, 3) positions for (T,) times, or (3,) for a scalar time."""
        return self._poly(t, 0)

    def velocity(self, t) -> np.ndarray:
        return self._poly(t, 1)

    def acceleration(self, t) -> np.ndarray:
        return self._poly(t, 2)

    def _phase(self, t):
        seg, tau, inside, scalar = self._locate(t)
        r = self._tab[seg]
        h = r[:, C_H]
        s = np.where(h > 0, tau / np.where(h > 0, h, 1.0), 0.0)
        return r, s, scalar

    def orientation(self, t) -> np.ndarray:
        """Unit quaternions (x, y, z, w): (T, 4), or (4,) for a scalar time."""
        r, s, scalar = self._phase(t)
        q0, q1, th = r[:, C_Q0:C_Q0 + 4], r[:, C_Q1:C_Q1 + 4], r[:, C_TH]
        w = s * s * (3 - 2 * s)
        half = th / 2
        sin_half = np.sin(half)
        small = sin_half < 1e-9
        safe = np.where(small, 1.0, sin_half)
        k0 = np.where(small, 1 - w, np.sin((1 - w) * half) / safe)
        k1 = np.where(small, w, np.sin(w * half) / safe)
        q = k0[:, None] * q0 + k1[:, None] * q1
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return q[0] if scalar else q

    def gripper(self, t) -> np.ndarray:
        r, s, scalar = self._phase(t)
        g = r[:, C_G0] + s * (r[:, C_G1] - r[:, C_G0])
        return g[0] if scalar else g

    def sample(self, dt: float, t0: float = 0.0, n: int | None = None) -> Guidance:
        """Sample at ``t0, t0 + dt, ...``: up to the end (inclusive) or exactly ``n`` samples (holding
        the end values past the end). Always at least one sample."""
        dt = float(dt)
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a sample period > 0 s, got {dt!r}")
        if not np.isfinite(float(t0)):
            raise ValueError(f"t0: expected a finite time, got {t0!r}")
        if n is None:
            count = max(1, int(np.floor((self._t[-1] - float(t0)) / dt + 1e-9)) + 1)
        elif isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        else:
            count = int(n)
        ts = float(t0) + dt * np.arange(count)
        return Guidance(ts, self.position(ts), self.orientation(ts), np.clip(self.gripper(ts), 0.0, 1.0))

    # ------------------------------------------------------------------ evaluation (compiled)

    def evaluate_many(self, t) -> np.ndarray:
        """(T, 8) float64 rows ``x y z qx qy qz qw gripper`` (the layout of an ``ActionChunk`` row) for
        (T,) times, in one compiled call: the columns equal :meth:`position`, :meth:`orientation` and
        :meth:`gripper` (clipped to [0, 1]) at the same times. Compiled with Numba on first use (cached
        on disk)."""
        from ._spline_jit import many

        ts = np.ascontiguousarray(np.atleast_1d(np.asarray(t, np.float64)))
        if not np.all(np.isfinite(ts)):
            raise ValueError("t: sample times must be finite")
        return many(ts, self._tab)

    def __repr__(self) -> str:
        return f"GuidanceSpline(waypoints={self._t.size}, duration={self.duration:.3f} s)"
