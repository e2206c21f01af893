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

:func:`refine_reprojection` then refines both unknowns together on the board corners themselves: it
minimises the reprojection error of every detected corner of every sample (a robust least squares over
12 parameters), which a per-sample ``solvePnP`` pose cannot do (its depth and tilt are the weak part).
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
    reprojection_rms_px: float | None = None  # set by refine_reprojection

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


def _to_vec(T: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return np.r_[Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]]


def _from_vec(x: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return _make(Rotation.from_rotvec(x[:3]).as_matrix(), x[3:6])


def predicted_cam_target(T_base_ee: np.ndarray, T: np.ndarray, T_target: np.ndarray, mount: str) -> np.ndarray:
    """T_cam_target of one sample implied by a solution (``T``, ``T_target``) and the arm pose."""
    if mount == "fixed":  # T_cam_base @ T_base_ee @ T_ee_target
        return _inv(T) @ T_base_ee @ T_target
    return _inv(T) @ _inv(T_base_ee) @ T_target  # T_cam_ee @ T_ee_base @ T_base_target


def refine_reprojection(res: HandEyeResult, T_base_ee, T_cam_target, observations, K: np.ndarray,
                        dist: np.ndarray, *, loss_scale_px: float = 1.0) -> HandEyeResult:
    """Refine a hand-eye solution on the board corners: ``observations[i]`` = (board points (N, 3) m,
    their detected pixels (N, 2)) of sample i (``board.BoardPose.object_points`` / ``image_points``).
    Minimises the reprojection error of all corners over ``T`` and ``T_target`` (soft-L1 loss with scale
    ``loss_scale_px``, so a mis-detected corner does not pull the solution). Returns the refined result:
    ``method`` + "+reprojection", per-sample residuals of the refined pair against the per-sample poses
    ``T_cam_target``, and ``reprojection_rms_px``."""
    cv2 = _cv2()
    from scipy.optimize import least_squares

    A = _stack("T_base_ee", T_base_ee)
    B = _stack("T_cam_target", T_cam_target)
    if not len(observations) == len(A) == len(B):
        raise ValueError(f"refine_reprojection: {len(A)} arm poses, {len(B)} target poses and "
                         f"{len(observations)} corner sets; need one of each per sample")
    obs = []
    for i, (obj, img) in enumerate(observations):
        obj = np.asarray(obj, dtype=np.float64).reshape(-1, 3)
        img = np.asarray(img, dtype=np.float64).reshape(-1, 2)
        if len(obj) != len(img) or len(obj) < 4:
            raise ValueError(f"refine_reprojection: sample {i}: need >= 4 matched corners, got {len(obj)}/{len(img)}")
        obs.append((obj, img))
    K = np.asarray(K, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)

    def reprojection(x: np.ndarray) -> np.ndarray:
        T, Y = _from_vec(x[:6]), _from_vec(x[6:])
        out = []
        for a, (obj, img) in zip(A, obs):
            P = predicted_cam_target(a, T, Y, res.mount)
            uv, _ = cv2.projectPoints(obj, cv2.Rodrigues(P[:3, :3])[0], P[:3, 3], K, dist)
            out.append((uv.reshape(-1, 2) - img).ravel())
        return np.concatenate(out)

    x0 = np.r_[_to_vec(res.T), _to_vec(res.T_target)]
    sol = least_squares(reprojection, x0, method="trf", loss="soft_l1", f_scale=loss_scale_px, x_scale="jac")
    T, Y = _from_vec(sol.x[:6]), _from_vec(sol.x[6:])
    if not (sol.success and np.all(np.isfinite(sol.x))):
        raise ValueError(f"reprojection refinement did not converge ({sol.message}); check [board] (the measured "
                         f"square size) and [intrinsics], or solve without it (--no-refine)")
    if res.mount == "fixed":
        per = [transform_error(a @ Y, T @ b) for a, b in zip(A, B)]
    else:
        per = [transform_error(a @ T @ b, Y) for a, b in zip(A, B)]
    rms = float(np.sqrt(np.mean(np.sum(sol.fun.reshape(-1, 2) ** 2, axis=1))))
    return HandEyeResult(T=T, T_target=Y, mount=res.mount, method=f"{res.method}+reprojection",
                         residuals=np.array(per, dtype=np.float64).reshape(-1, 2), reprojection_rms_px=rms)
