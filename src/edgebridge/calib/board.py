"""Calibration boards (ChArUco, ArUco grid) with OpenCV's ``cv2.aruco``: make, render, detect pose.

Board frame: origin at the board's top-left chessboard corner as rendered, x along the columns,
y along the rows, z out of the printed face into the board (OpenCV's convention), metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..config import check
from ..contracts import Intrinsics
from ..errors import require


def _cv2():
    return require("cv2", "calib", "calibration board detection")


@dataclass(frozen=True)
class BoardConfig:
    """A printed target. ``square_length`` / ``marker_length`` in metres (measure the print!).
    For ``aruco_grid``, ``squares_x/y`` count markers and ``square_length`` is the gap between them."""

    kind: Literal["charuco", "aruco_grid"] = "charuco"
    squares_x: int = 5
    squares_y: int = 7
    square_length: float = 0.04
    marker_length: float = 0.03
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        check(self.kind in ("charuco", "aruco_grid"), "kind", f"expected 'charuco' or 'aruco_grid', got {self.kind!r}")
        check(self.squares_x >= 2 and self.squares_y >= 2, "squares_x/squares_y",
              f"need at least 2 x 2, got {self.squares_x} x {self.squares_y}")
        check(self.square_length > 0 and self.marker_length > 0, "square_length/marker_length", "must be > 0")
        if self.kind == "charuco":
            check(self.marker_length < self.square_length, "marker_length",
                  f"must be smaller than square_length ({self.square_length}), got {self.marker_length}")
        check(self.dictionary.startswith("DICT_"), "dictionary",
              f"expected an OpenCV ArUco dictionary name like 'DICT_5X5_100', got {self.dictionary!r}")


def make_board(cfg: BoardConfig):
    cv2 = _cv2()
    try:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, cfg.dictionary))
    except AttributeError as e:
        raise ValueError(f"board.dictionary: unknown ArUco dictionary {cfg.dictionary!r}") from e
    if cfg.kind == "charuco":
        return cv2.aruco.CharucoBoard((cfg.squares_x, cfg.squares_y), cfg.square_length, cfg.marker_length, dictionary)
    return cv2.aruco.GridBoard((cfg.squares_x, cfg.squares_y), cfg.marker_length, cfg.square_length, dictionary)


def board_size_m(cfg: BoardConfig) -> tuple[float, float]:
    """Physical (width, height) of the board pattern in metres."""
    if cfg.kind == "charuco":
        return cfg.squares_x * cfg.square_length, cfg.squares_y * cfg.square_length
    pitch = cfg.marker_length + cfg.square_length
    return cfg.squares_x * pitch - cfg.square_length, cfg.squares_y * pitch - cfg.square_length


def render_board(cfg: BoardConfig, px_per_m: float = 4000.0, margin_px: int = 0) -> np.ndarray:
    """The board pattern as a grey image (uint8), ``px_per_m`` pixels per metre, plus a white margin."""
    w, h = board_size_m(cfg)
    size = (int(round(w * px_per_m)) + 2 * margin_px, int(round(h * px_per_m)) + 2 * margin_px)
    return make_board(cfg).generateImage(size, marginSize=margin_px, borderBits=1)


@dataclass(frozen=True)
class BoardPose:
    """``T_cam_target``: board frame -> camera frame; ``n_points`` used; RMS reprojection error (px);
    the matched points (board frame (N, 3) m, image (N, 2) px) the pose was solved from, which a hand-eye
    refinement over all samples uses again (``handeye.refine_reprojection``)."""

    T_cam_target: np.ndarray
    n_points: int
    reprojection_rms_px: float
    object_points: np.ndarray | None = None
    image_points: np.ndarray | None = None


def camera_matrix(intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV camera matrix and distortion vector (k1 k2 p1 p2 k3) for ``intr``."""
    if intr.model == "inverse_brown_conrady":
        raise ValueError("board detection needs forward-distortion intrinsics; 'inverse_brown_conrady' is "
                         "a depth-stream model: detect the board in the colour stream")
    return intr.K(), (intr.coeffs.copy() if intr.model == "brown_conrady" else np.zeros(5))


def detect_board_pose(image: np.ndarray, intr: Intrinsics, cfg: BoardConfig, *, min_points: int = 6) -> BoardPose | None:
    """Find the board in ``image`` (grey or RGB uint8) and solve its pose; None when too few points."""
    cv2 = _cv2()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"image: expected a uint8 grey or RGB image, got {img.dtype} {img.shape}")
    K, dist = camera_matrix(intr)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    board = make_board(cfg)
    if cfg.kind == "charuco":
        corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    else:
        corners, ids, _ = cv2.aruco.ArucoDetector(board.getDictionary()).detectMarkers(gray)
    if ids is None or len(ids) == 0:
        return None
    obj, pts = board.matchImagePoints(corners, ids)
    if obj is None or len(obj) < min_points:
        return None
    ok, rvec, tvec = cv2.solvePnP(obj, pts, K, dist, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj, pts, K, dist, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, dist)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - pts.reshape(-1, 2)) ** 2, axis=1))))
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.reshape(3)
    return BoardPose(T_cam_target=T, n_points=int(len(obj)), reprojection_rms_px=rms,
                     object_points=obj.reshape(-1, 3).astype(np.float64),
                     image_points=pts.reshape(-1, 2).astype(np.float64))
