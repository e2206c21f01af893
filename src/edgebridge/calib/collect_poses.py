"""Planning the board poses of an automatic hand-eye session (eye-to-hand: camera fixed, board on the gripper).

Given rough estimates of ``T_base_cam`` and ``T_ee_board`` (from the first samples, see ``collect``) and the
board's pose at the start, :func:`candidate_board_poses` draws board poses around the start that the camera
sees whole and face-on enough: the board turned to face the camera, then tilted by ``min_tilt_deg`` to
``max_tilt_deg`` about an axis across the line of sight, rolled about it by up to ``max_roll_deg`` and shifted
by up to ``max_offset_m``. :func:`spread` picks the ones whose orientations lie farthest from each other
(large rotations between samples are what hand-eye calibration needs), :func:`order_by_travel` sorts the
reachable ones into a short tour. Pure numpy: no device, no simulator.
"""

from __future__ import annotations

import numpy as np

from ..contracts import Intrinsics
from .board import BoardConfig, board_size_m


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` rad about the unit vector ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def rotation_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle (deg) of the rotation between two orientations."""
    c = (np.trace(Ra.T @ Rb) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def board_corners(board: BoardConfig) -> np.ndarray:
    """The four outer corners of the board pattern (4, 3) and its centre last: (5, 3), board frame."""
    w, h = board_size_m(board)
    return np.array([[0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0], [w / 2, h / 2, 0]], dtype=np.float64)


def project(T_cam_x: np.ndarray, points: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection (no distortion: planning only) of frame-x points: (uv (N, 2), depth (N,))."""
    pc = points @ T_cam_x[:3, :3].T + T_cam_x[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([intr.fx * pc[:, 0] / z + intr.cx, intr.fy * pc[:, 1] / z + intr.cy], axis=1)
    return uv, z


def view_angle_deg(T_cam_board: np.ndarray, board: BoardConfig) -> float:
    """Angle between the board's normal and the line of sight to its centre (0: face-on)."""
    c = T_cam_board[:3, :3] @ board_corners(board)[4] + T_cam_board[:3, 3]
    ray = c / np.linalg.norm(c)
    return float(np.degrees(np.arccos(np.clip(T_cam_board[:3, 2] @ ray, -1.0, 1.0))))


def visible(T_cam_board: np.ndarray, board: BoardConfig, intr: Intrinsics, *, margin: float = 0.06,
            max_view_deg: float = 55.0) -> bool:
    """Whether the whole board lies inside the image with ``margin`` (fraction of width/height) to spare,
    in front of the camera, its printed face turned to the camera within ``max_view_deg``."""
    uv, z = project(T_cam_board, board_corners(board)[:4], intr)
    if not np.all(z > 0.05):
        return False
    mu, mv = margin * intr.width, margin * intr.height
    inside = (uv[:, 0] >= mu) & (uv[:, 0] <= intr.width - 1 - mu) & (uv[:, 1] >= mv) & (uv[:, 1] <= intr.height - 1 - mv)
    return bool(np.all(inside)) and view_angle_deg(T_cam_board, board) <= max_view_deg


def facing(T_cam_board: np.ndarray, board: BoardConfig) -> np.ndarray:
    """The board pose turned about its centre (least rotation) to face the camera squarely."""
    c = T_cam_board[:3, :3] @ board_corners(board)[4] + T_cam_board[:3, 3]
    ray = c / np.linalg.norm(c)
    z = T_cam_board[:3, 2]
    axis = np.cross(z, ray)
    s = np.linalg.norm(axis)
    R = T_cam_board[:3, :3] if s < 1e-9 else _rot(axis, np.arctan2(s, z @ ray)) @ T_cam_board[:3, :3]
    return _about_centre(R, c, board)


def _about_centre(R: np.ndarray, centre: np.ndarray, board: BoardConfig) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = centre - R @ board_corners(board)[4]
    return T


def candidate_board_poses(T_cam_board0: np.ndarray, board: BoardConfig, intr: Intrinsics, rng: np.random.Generator,
                          *, n: int = 400, min_tilt_deg: float = 12.0, max_tilt_deg: float = 35.0,
                          max_roll_deg: float = 40.0, max_offset_m: float = 0.06, margin: float = 0.06,
                          max_view_deg: float = 55.0) -> list[np.ndarray]:
    """Up to ``n`` board poses (T_cam_board) around the start pose ``T_cam_board0`` that pass :func:`visible`."""
    face = facing(T_cam_board0, board)
    c0 = face[:3, :3] @ board_corners(board)[4] + face[:3, 3]
    ray = c0 / np.linalg.norm(c0)
    across = np.cross(ray, [0.0, 1.0, 0.0])
    across /= np.linalg.norm(across)
    up = np.cross(ray, across)
    out = []
    for _ in range(n):
        phi = rng.uniform(0, 2 * np.pi)
        tilt_axis = np.cos(phi) * across + np.sin(phi) * up
        tilt = np.radians(rng.uniform(min_tilt_deg, max_tilt_deg))
        roll = np.radians(rng.uniform(-max_roll_deg, max_roll_deg))
        R = _rot(tilt_axis, tilt) @ _rot(ray, roll) @ face[:3, :3]
        c = c0 + rng.uniform(-max_offset_m, max_offset_m, 3)
        T = _about_centre(R, c, board)
        if visible(T, board, intr, margin=margin, max_view_deg=max_view_deg):
            out.append(T)
    return out


def _angles_deg(R: np.ndarray, Rs: np.ndarray) -> np.ndarray:
    """Rotation angles (deg) between ``R`` (3, 3) and each of ``Rs`` (N, 3, 3)."""
    c = (np.einsum("ij,nij->n", R, Rs) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def spread(rotations: list[np.ndarray], taken: list[np.ndarray], k: int | None = None) -> list[int]:
    """Indices of up to ``k`` (default: all) of ``rotations`` (3x3 each), chosen one by one as the farthest
    (largest least rotation angle) from everything chosen so far and from ``taken``."""
    if not rotations:
        return []
    Rs = np.asarray(rotations, dtype=np.float64)
    nearest = np.full(len(Rs), np.inf)
    for R in taken:
        nearest = np.minimum(nearest, _angles_deg(np.asarray(R), Rs))
    chosen: list[int] = []
    for _ in range(len(Rs) if k is None else min(k, len(Rs))):
        i = int(np.argmax(nearest))
        if nearest[i] < 0:
            break
        chosen.append(i)
        nearest = np.minimum(nearest, _angles_deg(Rs[i], Rs))
        nearest[chosen] = -1.0
    return chosen


def order_by_travel(q_start: np.ndarray, targets: list[np.ndarray]) -> list[int]:
    """A short tour through joint targets: nearest neighbour (largest joint change) from ``q_start``."""
    left = list(range(len(targets)))
    order: list[int] = []
    q = np.asarray(q_start, dtype=np.float64)
    while left:
        j = min(left, key=lambda i: float(np.max(np.abs(targets[i] - q))))
        order.append(j)
        left.remove(j)
        q = targets[j]
    return order
