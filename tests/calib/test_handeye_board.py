"""Hand-eye calibration, calibration files, ChArUco detection and the edge-calib CLI."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

cv2 = pytest.importorskip("cv2", reason="OpenCV (edgebridge[calib]) not installed")

from edgebridge.calib.board import BoardConfig, detect_board_pose, render_board  # noqa: E402
from edgebridge.calib.calib_file import CalibrationConfig, CameraCalibration, Provenance  # noqa: E402
from edgebridge.calib.cli import main as edge_calib  # noqa: E402
from edgebridge.calib.handeye import METHODS, _inv, calibrate_hand_eye, transform_error  # noqa: E402
from edgebridge.calib.toml_io import write  # noqa: E402
from edgebridge.config import ConfigError  # noqa: E402
from edgebridge.contracts import Intrinsics  # noqa: E402

INTR = Intrinsics(640, 480, 600.0, 600.0, 320.0, 240.0)


def _rand_T(rng, rot=1.0, trans=0.3):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * rot).as_matrix()
    T[:3, 3] = rng.normal(size=3) * trans
    return T


def _synthetic(mount, n=12, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    X, Y = _rand_T(rng), _rand_T(rng, 0.5, 0.1)
    A = np.array([_rand_T(rng) for _ in range(n)])
    if mount == "fixed":  # T_base_ee @ T_ee_target = T_base_cam @ T_cam_target
        B = np.array([_inv(X) @ a @ Y for a in A])
    else:  # T_base_ee @ T_ee_cam @ T_cam_target = T_base_target
        B = np.array([_inv(X) @ _inv(a) @ Y for a in A])
    if noise:
        for b in B:
            b[:3, 3] += rng.normal(size=3) * noise
    return X, Y, A, B


@pytest.mark.parametrize("mount", ["fixed", "wrist"])
@pytest.mark.parametrize("method", METHODS)
def test_synthetic_hand_eye_recovers_transform(mount, method):
    X, Y, A, B = _synthetic(mount)
    res = calibrate_hand_eye(A, B, mount=mount, method=method)
    assert np.abs(res.T - X).max() < 1e-6
    assert np.abs(res.T_target - Y).max() < 1e-6
    assert res.rms_trans_m < 1e-6 and res.n_samples == 12


def test_noise_shows_in_residuals_and_inputs_are_validated():
    X, _, A, B = _synthetic("fixed", noise=0.002)
    res = calibrate_hand_eye(A, B, mount="fixed", method="park")
    assert 5e-4 < res.rms_trans_m < 1e-2
    assert transform_error(res.T, X)[1] < 0.01
    with pytest.raises(ValueError, match="at least 3"):
        calibrate_hand_eye(A[:2], B[:2])
    with pytest.raises(ValueError, match="unknown hand-eye method"):
        calibrate_hand_eye(A, B, method="magic")
    bad = A.copy()
    bad[1, :3, :3] *= 2
    with pytest.raises(ValueError, match=r"T_base_ee\[1\]"):
        calibrate_hand_eye(bad, B)


def _render_view(cfg, T_cam_board, ppm=4000.0):
    """Render the printed board as seen by a pinhole camera at T_cam_board (exact homography)."""
    img = render_board(cfg, ppm)
    S = np.array([[1 / ppm, 0, 0.5 / ppm], [0, 1 / ppm, 0.5 / ppm], [0, 0, 1]])  # pixel centre -> metres
    H = INTR.K() @ np.column_stack([T_cam_board[:3, 0], T_cam_board[:3, 1], T_cam_board[:3, 3]]) @ S
    return cv2.warpPerspective(img, H, (INTR.width, INTR.height), flags=cv2.INTER_AREA, borderValue=255)


def _view_pose(rpy, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
    T[:3, 3] = t
    return T


def test_charuco_pose_from_rendered_image():
    cfg = BoardConfig()
    truth = _view_pose([0.3, -0.2, 0.1], [-0.1, -0.12, 0.55])
    pose = detect_board_pose(_render_view(cfg, truth), INTR, cfg)
    assert pose is not None and pose.n_points >= 20 and pose.reprojection_rms_px < 1.0
    rot_deg, trans_m = transform_error(pose.T_cam_target, truth)
    assert rot_deg < 0.5 and trans_m < 0.005
    assert detect_board_pose(np.full((480, 640), 255, np.uint8), INTR, cfg) is None
    with pytest.raises(ValueError, match="colour stream"):
        detect_board_pose(np.zeros((480, 640), np.uint8), Intrinsics(640, 480, 1, 1, 0, 0, "inverse_brown_conrady"), cfg)


def test_calibration_file_round_trip_and_errors(tmp_path):
    X, _, _, _ = _synthetic("fixed")
    cal = CameraCalibration(T=X, camera="realsense:1", intrinsics=INTR,
                            provenance=Provenance(date="2026-01-01", method="park", samples=12, residual_trans_m=0.001))
    p = cal.save(tmp_path / "calib.toml")
    back = CameraCalibration.load(p)
    assert np.array_equal(back.T_base_cam, X) and np.array_equal(back.intrinsics.as_array(), INTR.as_array()) and back.provenance == cal.provenance
    with pytest.raises(ValueError, match="fixed camera"):
        back.T_ee_cam
    assert CalibrationConfig(file=str(p)).load().camera == "realsense:1"
    with pytest.raises(ConfigError, match="exceeds"):
        CalibrationConfig(file=str(p), max_residual_trans_m=1e-4).load()
    d = cal.to_dict()
    d["extrinsics"]["T_base_cam"][0][0] = 3.0
    write(tmp_path / "bad.toml", d)
    with pytest.raises(ConfigError, match=r"bad.toml: extrinsics.T_base_cam: rotation"):
        CameraCalibration.load(tmp_path / "bad.toml")
    d = cal.to_dict()
    d["mount"] = "wrist"
    write(tmp_path / "bad2.toml", d)
    with pytest.raises(ConfigError, match="T_ee_cam: required"):
        CameraCalibration.load(tmp_path / "bad2.toml")
    with pytest.raises(ConfigError, match="not found"):
        CameraCalibration.load(tmp_path / "none.toml")


def test_cli_handeye_from_images_show_check(tmp_path, capsys):
    """End to end: an eye-to-hand session with rendered board images -> calib.toml close to truth."""
    import imageio.v3 as iio

    cfg = BoardConfig()
    rng = np.random.default_rng(3)
    T_base_cam = _view_pose([np.pi, 0.0, np.pi / 2], [0.4, 0.0, 0.8])  # looking down at the table
    T_ee_board = _view_pose([0.0, 0.0, 0.0], [-0.1, -0.14, 0.02])
    samples = []
    for i in range(10):
        # Board poses the camera can see, then the arm pose that puts it there.
        T_cam_board = _view_pose(rng.uniform(-0.35, 0.35, 3), [-0.1 + rng.uniform(-0.05, 0.05),
                                 -0.14 + rng.uniform(-0.05, 0.05), rng.uniform(0.45, 0.65)])
        T_base_ee = T_base_cam @ T_cam_board @ _inv(T_ee_board)
        iio.imwrite(tmp_path / f"{i:03d}.png", _render_view(cfg, T_cam_board))
        samples.append({"image": f"{i:03d}.png", "T_base_ee": T_base_ee.tolist()})
    manifest = {"mount": "fixed", "camera": "test-cam",
                "board": {k: getattr(cfg, k) for k in ("kind", "squares_x", "squares_y", "square_length",
                                                        "marker_length", "dictionary")},
                "intrinsics": {"width": 640, "height": 480, "fx": 600.0, "fy": 600.0, "cx": 320.0, "cy": 240.0,
                               "model": "none", "coeffs": [0.0] * 5},
                "samples": samples}
    write(tmp_path / "samples.toml", manifest)
    out = tmp_path / "calib.toml"
    assert edge_calib(["handeye", "--samples", str(tmp_path), "--out", str(out), "--method", "park"]) == 0
    cal = CameraCalibration.load(out)
    rot_deg, trans_m = transform_error(cal.T_base_cam, T_base_cam)
    assert rot_deg < 1.0 and trans_m < 0.01
    assert cal.provenance.samples == 10 and cal.provenance.residual_trans_m < 0.01
    assert "RMS" in capsys.readouterr().out
    assert edge_calib(["show", str(out)]) == 0
    assert "T_base_cam" in capsys.readouterr().out
    assert edge_calib(["check", str(out)]) == 0
    assert edge_calib(["check", str(out), "--max-residual-mm", "1e-6"]) == 1
    assert edge_calib(["check", str(tmp_path / "missing.toml")]) == 2
    assert edge_calib(["board", "--out", str(tmp_path / "board.png")]) == 0
    assert iio.imread(tmp_path / "board.png").ndim == 2
