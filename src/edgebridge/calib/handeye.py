"""Hand-eye calibration with OpenCV (``calibrateHandEye`` / ``calibrateRobotWorldHandEye``).

Inputs per sample i: the arm's end-effector pose ``T_base_ee[i]`` and the calibration target's pose
in the camera ``T_cam_target[i]`` (from ``board.detect_board_pose``).

- ``mount = "fixed"`` (eye-to-hand: camera beside the arm, target on the gripper): unknowns
  ``T_base_cam`` and ``T_ee_target``; ``T_base_ee[i] @ T_ee_target == T_base_cam @ T_cam_target[i]``.
- ``mount = "wrist"`` (eye-in-hand: camera on the gripper, target on the table): unknowns
  ``T_ee_cam`` and ``T_base_target``; ``T_base_ee[i] @ T_ee_cam @ T_cam_target[i] == T_base_target``.

Methods: ``tsai``, ``park``, ``horaud``, ``andreff``, ``daniilidis`` (hand-eye AX = XB) and ``shah``,
``li`` (robot-world hand-eye AX = ZB, solving both unknowns jointly). The residual of each sample is
the disagreement of the two sides of the equation above (rotation angle, translation distance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts import check_transform
from ..errors import require

HAND_EYE_METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")
ROBOT_WORLD_METHODS = ("shah", "li")
METHODS = HAND_EYE_METHODS + ROBOT_WORLD_METHODS


def _cv2():
    return require("cv2", "calib", "hand-eye calibration")


def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def _make(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def average_transform(Ts: np.ndarray) -> np.ndarray:
    """Mean rigid transform: chordal-L2 mean rotation, mean translation."""
    from scipy.spatial.transform import Rotation

    Ts = np.asarray(Ts)
    return _make(Rotation.from_matrix(Ts[:, :3, :3]).mean().as_matrix(), Ts[:, :3, 3].mean(axis=0))


def transform_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(rotation angle in degrees, translation distance in metres) between two transforms."""
    dR = A[:3, :3].T @ B[:3, :3]
    ang = float(np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1.0, 1.0))))
    return ang, float(np.linalg.norm(A[:3, 3] - B[:3, 3]))


@dataclass(frozen=True)
class HandEyeResult:
    """``T``: T_base_cam (fixed) or T_ee_cam (wrist); ``T_target``: T_ee_target (fixed) or
    T_base_target (wrist). ``residuals``: (N, 2) per-sample (deg, m)."""

    T: np.ndarray
    T_target: np.ndarray
    mount: str
    method: str
    residuals: np.ndarray

    @property
    def rms_rot_deg(self) -> float:
        return float(np.sqrt(np.mean(self.residuals[:, 0] ** 2)))

    @property
    def rms_trans_m(self) -> float:
        return float(np.sqrt(np.mean(self.residuals[:, 1] ** 2)))

    @property
    def n_samples(self) -> int:
        return int(self.residuals.shape[0])


def _stack(name: str, Ts) -> np.ndarray:
    Ts = np.asarray(Ts, dtype=np.float64)
    if Ts.ndim != 3 or Ts.shape[1:] != (4, 4):
        raise ValueError(f"{name}: expected (N, 4, 4) transforms, got shape {Ts.shape}")
    for i, T in enumerate(Ts):
        check_transform(f"{name}[{i}]", T)
    return Ts


def residuals(T_base_ee, T_cam_target, T: np.ndarray, mount: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample residuals of a hand-eye solution ``T`` and the implied constant target transform."""
    A, B = np.asarray(T_base_ee), np.asarray(T_cam_target)
    if mount == "fixed":
        ee_target = np.array([_inv(a) @ T @ b for a, b in zip(A, B)])
        Y = average_transform(ee_target)
        res = [transform_error(a @ Y, T @ b) for a, b in zip(A, B)]
    elif mount == "wrist":
        base_target = np.array([a @ T @ b for a, b in zip(A, B)])
        Y = average_transform(base_target)
        res = [transform_error(c, Y) for c in base_target]
    else:
        raise ValueError(f"mount must be 'fixed' or 'wrist', got {mount!r}")
    return np.array(res, dtype=np.float64).reshape(-1, 2), Y


def calibrate_hand_eye(T_base_ee, T_cam_target, *, mount: str = "fixed", method: str = "park") -> HandEyeResult:
    """Solve the hand-eye problem for ``mount`` (see module docstring)."""
    cv2 = _cv2()
    A = _stack("T_base_ee", T_base_ee)
    B = _stack("T_cam_target", T_cam_target)
    if len(A) != len(B):
        raise ValueError(f"need as many arm poses as target poses, got {len(A)} and {len(B)}")
    if len(A) < 3:
        raise ValueError(f"hand-eye calibration needs at least 3 samples (10-20 with varied rotations), got {len(A)}")
    if mount not in ("fixed", "wrist"):
        raise ValueError(f"mount must be 'fixed' or 'wrist', got {mount!r}")
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown hand-eye method {method!r}; choose one of {', '.join(METHODS)}")

    if method in HAND_EYE_METHODS:
        flag = getattr(cv2, f"CALIB_HAND_EYE_{method.upper()}")
        # OpenCV solves for X = cam->gripper given gripper->base. For a fixed camera, feeding base->gripper
        # (inverse arm poses) makes the same solver return cam->base.
        G = A if mount == "wrist" else np.array([_inv(a) for a in A])
        R, t = cv2.calibrateHandEye([g[:3, :3] for g in G], [g[:3, 3] for g in G],
                                    [b[:3, :3] for b in B], [b[:3, 3] for b in B], method=flag)
        T = _make(R, t)
    else:
        flag = getattr(cv2, f"CALIB_ROBOT_WORLD_HAND_EYE_{method.upper()}")
        # OpenCV: world->cam_i = gripper->cam . base->gripper_i . world->base.
        # wrist: world = target, base->gripper = inv(T_base_ee). fixed: the roles of base and gripper swap.
        G = np.array([_inv(a) for a in A]) if mount == "wrist" else A
        _, _, R, t = cv2.calibrateRobotWorldHandEye([b[:3, :3] for b in B], [b[:3, 3] for b in B],
                                                    [g[:3, :3] for g in G], [g[:3, 3] for g in G], method=flag)
        T = _inv(_make(R, t))  # gripper->cam is T_cam_ee (wrist) / T_cam_base (fixed)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"hand-eye method {method!r} returned a non-finite result; use more samples with "
                         f"larger rotations between them")
    res, Y = residuals(A, B, T, mount)
    return HandEyeResult(T=T, T_target=Y, mount=mount, method=method, residuals=res)
