"""Network inputs and outputs of the action expert, in numpy (shared by training and the runtime).

One featurisation, used by ``edgebridge.train`` on recorded demonstrations and by the runtime backends on
live data, so the two can never drift apart. No torch here.

Frames and encodings (see docs/expert.md):

* A *pose feature* is 10 numbers: position (3), 6-D rotation (the first two columns of the rotation
  matrix, Zhou et al. 2019) (6), gripper (1).
* ``cloud`` (B, N, 3): base-frame points minus the position of the guidance's *goal* (its next grasp or
  release pose, see below; base-frame axes, not rotated), then normalised per axis with the ``cloud``
  statistics. Centred on the anchor the plan aims at, the object's offset from the plan is what the
  encoder sees directly.
* ``proprio`` (B, 10): the current end-effector pose feature in the base frame, normalised.
* ``guidance`` (B, G + 1, 10): the guidance sampled at ``now + (k + 1) * action_dt`` for k < G, and the
  goal (the guidance pose at the next gripper event after ``now``, else the guidance's last pose), each
  *relative* to the current pose: position minus current position (base axes), rotation
  ``R_cur^T R``, absolute gripper; normalised with the ``guidance`` statistics.
* network output ``action`` (B, H, 10), normalised with the ``action`` statistics, is a *correction of
  the guidance* (``output = "guidance_residual"``): the chunk is the **base chunk** — the guidance at
  ``now + k * action_dt`` for k < H, exactly what the plain-IK executor outputs — plus, per step, a
  position offset (base axes), a rotation ``R_base^T R`` as 6-D minus the identity's 6-D, and a
  gripper offset. A zero correction reproduces the IK executor, so the expert's timing always comes
  from the guidance. :func:`apply_residual` bounds the correction (``CorrectionLimit``).
  The other output encoding, ``output = "ee_relative"`` (the H poses relative to the current pose), is
  decoded by :func:`decode_action`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ExpertError
from ...rotations import matrix_from_rot6d, matrix_to_quat, quat_to_matrix, rot6d_from_matrix
from ..ik_expert import IKExpertConfig

POSE_DIM = 10
STATS_KEYS = ("cloud", "proprio", "guidance", "action")
MIN_STD = 1e-2
OUTPUT_RESIDUAL = "guidance_residual"
OUTPUT_RELATIVE = "ee_relative"
IK_MIN_Z = IKExpertConfig().min_z  # the plain-IK executor's floor on target height
_I6 = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True)
class CorrectionLimit:
    """Safety bounds on the learned correction of the guidance.

    Bound: per step at most ``position_m`` of translation and ``rotation_rad`` of rotation; a larger
    correction is scaled down to the bound. The plan error the expert is trained to correct is a few
    centimetres; a bigger correction is not trusted.

    Distrust: a chunk whose largest position correction reaches ``distrust_from_m`` is taken as a scene
    the network does not understand (clipping its request to the bound would still push the arm a full
    bound in a wrong direction), so the chunk's whole correction is faded out: weight 1 up to
    ``distrust_from_m``, 0 from ``distrust_full_m`` (the chunk is then the guidance unchanged, as with
    plain IK), linear between. Both None (the default): no distrust. ``distrust_from_m`` belongs above
    the corrections the expert requests on the tasks it was trained on and below those on scenes it was
    not; the measured requests and success rates are in ``benchmarks/results/sim_expert.md``."""

    position_m: float = 0.02
    rotation_rad: float = 0.1
    distrust_from_m: float | None = None
    distrust_full_m: float | None = None

    def __post_init__(self) -> None:
        if not (self.position_m > 0 and self.rotation_rad > 0):
            raise ValueError(f"CorrectionLimit: bounds must be > 0, got {self}")
        lo, hi = self.distrust_from_m, self.distrust_full_m
        if (lo is None) != (hi is None) or (lo is not None and not (0 < lo < hi)):
            raise ValueError(f"CorrectionLimit: distrust_from_m and distrust_full_m must both be None or "
                             f"satisfy 0 < distrust_from_m < distrust_full_m, got {lo!r}, {hi!r}")

    @staticmethod
    def requested_m(residual: np.ndarray) -> np.ndarray:
        """The largest position correction of each chunk of ``residual`` (..., H, 10), in metres."""
        return np.max(np.linalg.norm(np.asarray(residual)[..., :3], axis=-1), axis=-1)

    def trust(self, residual: np.ndarray) -> np.ndarray:
        """Weight in [0, 1] per chunk of ``residual`` (..., H, 10): 1 = apply the correction, 0 = ignore it."""
        request = self.requested_m(residual)
        if self.distrust_from_m is None:
            return np.ones_like(request)
        span = self.distrust_full_m - self.distrust_from_m
        return np.clip((self.distrust_full_m - request) / span, 0.0, 1.0)


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes shared by featurisation, the network and the metadata JSON."""

    n_points: int = 512
    guidance_steps: int = 16
    horizon: int = 16
    action_dt: float = 0.1

    def __post_init__(self) -> None:
        for name in ("n_points", "guidance_steps", "horizon"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"FeatureSpec.{name}: expected a positive int, got {v!r}")
        if not (np.isfinite(self.action_dt) and self.action_dt > 0):
            raise ValueError(f"FeatureSpec.action_dt: expected seconds > 0, got {self.action_dt!r}")

    @property
    def guidance_tokens(self) -> int:
        return self.guidance_steps + 1


@dataclass(frozen=True)
class CloudROI:
    """Region of interest of the expert's cloud: an axis-aligned box around the guidance's goal (its
    next grasp or release point), ``half_xy_m`` to each side, from ``below_m`` under it to ``above_m``
    over it, intersected with the workspace crop. The N points are spent where the correction is
    decided: over the whole workspace 512 points lie ~4 cm apart (a cup gets a handful), in this box
    about 1 cm. The box follows the *plan's* goal, so it must be larger than the plan error the
    expert corrects (a few cm)."""

    half_xy_m: float = 0.12
    below_m: float = 0.12
    above_m: float = 0.15

    def __post_init__(self) -> None:
        for name in ("half_xy_m", "below_m", "above_m"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"CloudROI.{name}: expected metres > 0, got {v!r}")

    def relative_bounds(self, margin_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the box relative to the goal, grown by ``margin_m`` on every side."""
        return (-np.array([self.half_xy_m, self.half_xy_m, self.below_m]) - margin_m,
                np.array([self.half_xy_m, self.half_xy_m, self.above_m]) + margin_m)

    def bounds(self, goal: np.ndarray, workspace: tuple | None = None,
               margin_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the box around ``goal`` (3,) (grown by ``margin_m``), clipped to ``workspace`` =
        (lo, hi) when given (the ROI alone when they do not overlap)."""
        goal = np.asarray(goal, np.float64)
        rlo, rhi = self.relative_bounds(margin_m)
        lo, hi = goal + rlo, goal + rhi
        if workspace is not None:
            wlo, whi = (np.asarray(b, np.float64) for b in workspace)
            clo, chi = np.maximum(lo, wlo), np.minimum(hi, whi)
            if np.all(chi - clo > 1e-3):
                lo, hi = clo, chi
        return lo, hi

    def box(self, goal: np.ndarray, workspace: tuple | None = None, margin_m: float = 0.0):
        """The ROI as a ``kernels.WorkspaceBox`` for ``depth_to_cloud``."""
        from ...kernels import WorkspaceBox

        return WorkspaceBox.from_bounds(*self.bounds(goal, workspace, margin_m))

    def to_dict(self) -> dict:
        return {"half_xy_m": self.half_xy_m, "below_m": self.below_m, "above_m": self.above_m}

    @classmethod
    def from_dict(cls, d: dict | None) -> "CloudROI | None":
        if not d:
            return None
        try:
            return cls(**{k: float(d[k]) for k in ("half_xy_m", "below_m", "above_m")})
        except (KeyError, TypeError, ValueError) as e:
            raise ExpertError(f"cloud_roi {d!r}: expected half_xy_m, below_m, above_m in metres ({e})") from e


# --------------------------------------------------------------------------- rotations


def _rotation_from_output(d6: np.ndarray) -> np.ndarray:
    """:func:`~edgebridge.rotations.matrix_from_rot6d` of a network output; a degenerate one is an
    :class:`ExpertError`."""
    try:
        return matrix_from_rot6d(d6)
    except ValueError as e:
        raise ExpertError(f"{e}; the network output is degenerate") from e


# --------------------------------------------------------------------------- pose features


def pose_features(pos: np.ndarray, quat: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """Absolute pose features (..., 10) from positions (..., 3), quaternions (..., 4), gripper (...)."""
    return np.concatenate([np.asarray(pos, np.float64), rot6d_from_matrix(quat_to_matrix(quat)),
                           np.asarray(gripper, np.float64)[..., None]], axis=-1)


def relative_features(ref_pos: np.ndarray, ref_quat: np.ndarray, pos: np.ndarray, quat: np.ndarray,
                      gripper: np.ndarray) -> np.ndarray:
    """Poses (B, K, ...) relative to reference poses (B, ...) -> (B, K, 10).

    Position: ``pos - ref_pos`` (base axes); rotation: 6-D of ``R_ref^T R``; gripper unchanged."""
    ref_r = quat_to_matrix(ref_quat)  # (B, 3, 3)
    r = quat_to_matrix(quat)  # (B, K, 3, 3)
    rel_r = np.einsum("bji,bkjl->bkil", ref_r, r)
    dp = np.asarray(pos, np.float64) - np.asarray(ref_pos, np.float64)[:, None, :]
    return np.concatenate([dp, rot6d_from_matrix(rel_r), np.asarray(gripper, np.float64)[..., None]], axis=-1)


def absolute_from_relative(ref_pos: np.ndarray, ref_quat: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`relative_features`: (B, K, 10) relative -> (B, K, 8) absolute
    ``x y z qx qy qz qw gripper`` with the gripper clipped to [0, 1]."""
    rel = np.asarray(rel, dtype=np.float64)
    ref_r = quat_to_matrix(ref_quat)  # (B, 3, 3)
    r = np.einsum("bij,bkjl->bkil", ref_r, _rotation_from_output(rel[..., 3:9]))
    pos = rel[..., :3] + np.asarray(ref_pos, np.float64)[:, None, :]
    quat = matrix_to_quat(r)
    grip = np.clip(rel[..., 9:10], 0.0, 1.0)
    return np.concatenate([pos, quat, grip], axis=-1)


# --------------------------------------------------------------------------- guidance sampling


def sample_guidance(t: np.ndarray, poses: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Sample a guidance trajectory (t (T,), poses (T, 8)) at ``times`` (any shape), clamped to its span:
    :func:`edgebridge.runtime.guidance.interpolate`, the interpolation every executor uses."""
    from ..guidance import interpolate

    return interpolate(t, poses, times)


def goal_index(t: np.ndarray, gripper: np.ndarray, now: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Index of the goal sample for each ``now``: the first sample after ``now`` whose gripper differs by
    more than ``threshold`` from the gripper at ``now`` (the next grasp/release), else the last sample."""
    t = np.asarray(t, np.float64)
    gripper = np.asarray(gripper, np.float64)
    now = np.atleast_1d(np.asarray(now, np.float64))
    j = np.clip(np.searchsorted(t, now, side="right") - 1, 0, t.shape[0] - 1)
    out = np.full(now.shape, t.shape[0] - 1, dtype=np.int64)
    for n in range(now.shape[0]):
        changed = np.nonzero(np.abs(gripper[j[n]:] - gripper[j[n]]) > threshold)[0]
        if changed.size:
            out[n] = j[n] + changed[0]
    return out


def goal_position(guidance, now_s: float) -> np.ndarray:
    """Position (3,) of the goal of a ``Guidance`` at ``now_s`` (seconds on its time base): the same goal
    the features centre the cloud on."""
    i = goal_index(guidance.t, guidance.gripper, np.array([float(now_s)]))[0]
    return np.asarray(guidance.positions[i], np.float64)


def resample_cloud(xyz: np.ndarray, n_valid: int, n_points: int) -> np.ndarray:
    """Exactly ``n_points`` points from the first ``n_valid``: an even stride when there are more,
    repetition when fewer."""
    if n_valid < 1:
        raise ExpertError("point cloud has no valid points (empty workspace crop?); the expert needs at "
                          "least one point — check the camera and the crop box")
    valid = xyz[:n_valid]
    if n_valid == n_points:
        return valid
    idx = (np.arange(n_points) * n_valid) // n_points
    return valid[idx]


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalizer:
    """Per-channel mean/std for each network tensor (``cloud`` 3, ``proprio`` 10, ``guidance`` 10,
    ``action`` 10 channels). Stored in the metadata JSON."""

    mean: dict
    std: dict

    @classmethod
    def fit(cls, arrays: dict, min_std: float = MIN_STD) -> "Normalizer":
        mean, std = {}, {}
        for k in STATS_KEYS:
            a = np.asarray(arrays[k], np.float64)
            a = a.reshape(-1, a.shape[-1])
            mean[k] = a.mean(axis=0)
            std[k] = np.maximum(a.std(axis=0), min_std)
        return cls(mean, std)

    @classmethod
    def identity(cls) -> "Normalizer":
        dims = {"cloud": 3, "proprio": POSE_DIM, "guidance": POSE_DIM, "action": POSE_DIM}
        return cls({k: np.zeros(d) for k, d in dims.items()}, {k: np.ones(d) for k, d in dims.items()})

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        try:
            mean = {k: np.asarray(d[k]["mean"], np.float64) for k in STATS_KEYS}
            std = {k: np.asarray(d[k]["std"], np.float64) for k in STATS_KEYS}
        except (KeyError, TypeError) as e:
            raise ExpertError(f"normalisation stats need keys {STATS_KEYS} with 'mean' and 'std' ({e}); "
                              "re-export the model to rewrite its metadata") from e
        for k in STATS_KEYS:
            if mean[k].shape != std[k].shape or np.any(std[k] <= 0) or not np.all(np.isfinite(mean[k])):
                raise ExpertError(f"normalisation stats for {k!r} are invalid (shapes {mean[k].shape}/"
                                  f"{std[k].shape}, std must be > 0 and finite)")
        return cls(mean, std)

    def to_dict(self) -> dict:
        return {k: {"mean": self.mean[k].tolist(), "std": self.std[k].tolist()} for k in STATS_KEYS}

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean[key]) / self.std[key]).astype(np.float32)

    def unnormalize(self, key: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) * self.std[key] + self.mean[key]


# --------------------------------------------------------------------------- batched featurisation


def raw_features(spec: FeatureSpec, clouds: np.ndarray, ee_pose: np.ndarray, gripper: np.ndarray,
                 guidance_t: np.ndarray, guidance: np.ndarray, now: np.ndarray) -> dict:
    """Un-normalised network inputs for B observations that share one guidance trajectory.

    clouds (B, N, 3) base frame; ee_pose (B, 7); gripper (B,); guidance_t (T,); guidance (T, 8);
    now (B,) seconds on the guidance time base. Returns float64 ``cloud`` (centred on the goal),
    ``proprio``, ``guidance``."""
    ee_pose = np.asarray(ee_pose, np.float64)
    now = np.asarray(now, np.float64)
    pos, quat = ee_pose[:, :3], ee_pose[:, 3:7]
    times = now[:, None] + spec.action_dt * np.arange(1, spec.guidance_steps + 1)[None, :]
    future = sample_guidance(guidance_t, guidance, times)  # (B, G, 8)
    goal = np.asarray(guidance, np.float64)[goal_index(guidance_t, np.asarray(guidance)[:, 7], now)]
    tokens = np.concatenate([future, goal[:, None, :]], axis=1)  # (B, G+1, 8)
    return {
        "cloud": np.asarray(clouds, np.float64) - goal[:, None, :3],
        "proprio": pose_features(pos, quat, gripper),
        "guidance": relative_features(pos, quat, tokens[..., :3], tokens[..., 3:7], tokens[..., 7]),
    }


def action_targets(ee_pose: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Training targets: absolute (B, H, 8) actions -> relative (B, H, 10) features."""
    ee_pose = np.asarray(ee_pose, np.float64)
    a = np.asarray(action, np.float64)
    return relative_features(ee_pose[:, :3], ee_pose[:, 3:7], a[..., :3], a[..., 3:7], a[..., 7])


def normalize_inputs(norm: Normalizer, raw: dict) -> dict:
    """Normalised float32 network inputs from :func:`raw_features`."""
    return {k: np.ascontiguousarray(norm.normalize(k, raw[k])) for k in ("cloud", "proprio", "guidance")}


def decode_action(norm: Normalizer, ee_pose: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``ee_relative`` network output (B, H, 10), normalised -> absolute (B, H, 8) poses + gripper."""
    rel = norm.unnormalize("action", out)
    ee_pose = np.asarray(ee_pose, np.float64)
    return absolute_from_relative(ee_pose[:, :3], ee_pose[:, 3:7], rel)


# --------------------------------------------------------------------------- guidance residual


def base_chunk(spec: FeatureSpec, guidance_t: np.ndarray, guidance: np.ndarray, now: np.ndarray) -> np.ndarray:
    """The plain-IK chunk (B, H, 8): the guidance at ``now + k * action_dt`` for k < H (clamped to its
    span), target height floored at ``IK_MIN_Z`` — what ``runtime.ik_expert.IKExpert`` outputs."""
    from ...contracts import Guidance
    from ..guidance import interpolate_guidance  # the IK executor's own interpolation, so they agree exactly

    now = np.atleast_1d(np.asarray(now, np.float64))
    g = np.asarray(guidance, np.float64)
    gd = Guidance(np.asarray(guidance_t, np.float64), g[:, :3], g[:, 3:7], np.clip(g[:, 7], 0.0, 1.0))
    steps = spec.action_dt * np.arange(spec.horizon)
    rows = np.stack([interpolate_guidance(gd, n + steps) for n in now])
    rows[..., 2] = np.maximum(rows[..., 2], IK_MIN_Z)
    return rows


def residual_features(base: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Correction (B, H, 10) that turns ``base`` (B, H, 8) into ``action`` (B, H, 8): position offset,
    6-D of ``R_base^T R_action`` minus the identity's, gripper offset (zero = no correction)."""
    base = np.asarray(base, np.float64)
    action = np.asarray(action, np.float64)
    rel = np.einsum("...ji,...jk->...ik", quat_to_matrix(base[..., 3:7]), quat_to_matrix(action[..., 3:7]))
    return np.concatenate([action[..., :3] - base[..., :3], rot6d_from_matrix(rel) - _I6,
                           (action[..., 7] - base[..., 7])[..., None]], axis=-1)


def apply_residual(base: np.ndarray, residual: np.ndarray, limit: CorrectionLimit | None = None) -> np.ndarray:
    """Inverse of :func:`residual_features`: ``base`` (B, H, 8) corrected by ``residual`` (B, H, 10) ->
    absolute (B, H, 8), each chunk's correction weighted by ``limit.trust``, each step's bounded by ``limit``
    and the gripper clipped to [0, 1]."""
    base = np.asarray(base, np.float64)
    res = np.asarray(residual, np.float64)
    if limit is not None:  # a request far beyond the bound fades the whole correction out
        res = res * limit.trust(res)[..., None, None]
    dp = res[..., :3]
    if limit is not None:
        n = np.linalg.norm(dp, axis=-1, keepdims=True)
        dp = dp * np.minimum(1.0, limit.position_m / np.maximum(n, 1e-12))
    q = matrix_to_quat(_rotation_from_output(res[..., 3:9] + _I6))  # (B, H, 4), w >= 0
    if limit is not None:
        half = np.arccos(np.clip(q[..., 3:4], -1.0, 1.0))  # half the rotation angle
        axis_s = np.linalg.norm(q[..., :3], axis=-1, keepdims=True)
        cap = np.minimum(half, 0.5 * limit.rotation_rad)
        scale = np.where(axis_s > 1e-12, np.sin(cap) / np.maximum(axis_s, 1e-12), 0.0)
        q = np.concatenate([q[..., :3] * scale, np.cos(cap)], axis=-1)
    r = np.einsum("...ij,...jk->...ik", quat_to_matrix(base[..., 3:7]), quat_to_matrix(q))
    quat = matrix_to_quat(r)
    # keep the base chunk's hemisphere: consecutive rows are interpolated linearly by the executor, and a
    # top-down grasp has w ~ 0, where the w >= 0 convention would flip signs from row to row
    quat = np.where(np.sum(quat * base[..., 3:7], axis=-1, keepdims=True) < 0, -quat, quat)
    return np.concatenate([base[..., :3] + dp, quat,
                           np.clip(base[..., 7:8] + res[..., 9:10], 0.0, 1.0)], axis=-1)


def residual_targets(spec: FeatureSpec, guidance_t: np.ndarray, guidance: np.ndarray, now: np.ndarray,
                     action: np.ndarray) -> np.ndarray:
    """Training targets: demonstrated absolute actions (B, H, 8) as corrections (B, H, 10) of the base
    chunk of the (noisy) guidance at the same times."""
    return residual_features(base_chunk(spec, guidance_t, guidance, now), action)
