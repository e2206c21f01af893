"""edge-calib collect: pose planning, target checks, corner refinement, and whole sessions in the simulator."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

cv2 = pytest.importorskip("cv2", reason="OpenCV (edgebridge[calib]) not installed")

from edgebridge.calib.board import BoardConfig, camera_matrix  # noqa: E402
from edgebridge.calib.collect import CollectConfig, CollectError, Collector, Rig  # noqa: E402
from edgebridge.calib.collect_poses import (candidate_board_poses, order_by_travel, rotation_deg, spread,  # noqa: E402
                                            view_angle_deg, visible)
from edgebridge.calib.handeye import _inv, calibrate_hand_eye, refine_reprojection, transform_error  # noqa: E402
from edgebridge.config import ConfigError  # noqa: E402
from edgebridge.contracts import Intrinsics  # noqa: E402

BOARD = BoardConfig()
INTR = Intrinsics(1280, 960, 1030.0, 1030.0, 640.0, 479.0)


def _T(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def test_planned_board_poses_stay_in_view_and_turn_far_apart():
    start = _T([0.2, -0.1, 0.05], [-0.1, -0.14, 0.8])
    cands = candidate_board_poses(start, BOARD, INTR, np.random.default_rng(0), n=300, min_tilt_deg=12,
                                  max_tilt_deg=35)
    assert len(cands) > 100
    assert all(visible(T, BOARD, INTR) and view_angle_deg(T, BOARD) <= 55 for T in cands)
    picked = spread([T[:3, :3] for T in cands], [start[:3, :3]], 10)
    Rs = [cands[i][:3, :3] for i in picked]
    least = min(rotation_deg(a, b) for i, a in enumerate(Rs) for b in Rs[i + 1:])
    first10 = [c[:3, :3] for c in cands[:10]]
    assert least > 20 and least > min(rotation_deg(a, b) for i, a in enumerate(first10) for b in first10[i + 1:])
    assert not visible(_T([0, 0, 0], [0.5, 0.0, 0.8]), BOARD, INTR)        # off the image
    assert not visible(_T([0, 1.3, 0], [-0.1, -0.14, 0.8]), BOARD, INTR)   # turned 75 deg away
    tour = order_by_travel(np.zeros(2), [np.array([3.0, 0]), np.array([1.0, 0]), np.array([2.0, 0])])
    assert tour == [1, 2, 0]


class _BoxKin:
    """Kinematics stand-in: the end effector sits at q[:3] with the identity rotation."""

    def fk_matrix(self, q):
        return _T([0, 0, 0], np.asarray(q)[:3])


def _limits(**kw):
    from edgebridge.runtime.config import SafetyLimits

    base = dict(joint_lower=(-1.0,) * 4, joint_upper=(1.0,) * 4, joint_velocity=(1.0,) * 4,
                joint_acceleration=(5.0,) * 4, workspace_min=(-0.5, -0.5, 0.0), workspace_max=(0.5, 0.5, 0.6))
    return SafetyLimits(**{**base, **kw})


def test_targets_are_checked_against_joint_limits_workspace_and_the_table():
    rig = Rig(arm=None, camera=None, kinematics=_BoxKin(), limits=_limits(), clock=None, rate_hz=100.0)
    c = Collector(rig, BOARD, CollectConfig(), "/nonexistent")
    here = np.array([0.0, 0.0, 0.3, 0.0])
    assert c.check_target(np.array([0.2, 0.1, 0.3, 0.5]), here) is None
    assert "joint 3" in c.check_target(np.array([0.0, 0.0, 0.3, 0.99]), here)       # inside the margin
    assert "workspace box" in c.check_target(np.array([0.0, 0.0, 0.7, 0.0]), here.copy() * 0 + [0, 0, 0.5, 0])
    # a board hanging 25 cm below the gripper at z 0.3 keeps 5 cm; at z 0.2 it would touch the table
    hang = _T([0, 0, 0], [-0.1, -0.14, -0.25])
    hang[:3, :3] = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    assert c.check_target(np.array([0.0, 0.0, 0.3 + 0.28, 0.0]), here + [0, 0, 0.28, 0], hang) is None
    assert "table" in c.check_target(np.array([0.0, 0.0, 0.2, 0.0]), here, hang)
    with pytest.raises(ConfigError, match="speed_fraction"):
        CollectConfig(speed_fraction=0.9)
    with pytest.raises(ConfigError, match="poses"):
        CollectConfig(poses=2)


def test_manual_mode_needs_a_torque_off_mode():
    class Stiff:
        name = "stiff arm"

    rig = Rig(arm=Stiff(), camera=None, kinematics=_BoxKin(), limits=_limits(), clock=None, rate_hz=100.0)
    with pytest.raises(CollectError, match="stiff arm has no torque-off mode.*--no-torque-off"):
        Collector(rig, BOARD, CollectConfig(mode="manual"), "/nonexistent")._manual()


def test_corner_refinement_beats_the_closed_form_on_noisy_corners():
    rng = np.random.default_rng(1)
    X = _T([2.2, 0.1, -0.4], [1.0, 0.0, 1.0])        # T_base_cam
    Y = _T([0.1, 0.2, 0.3], [0.05, -0.1, 0.03])       # T_ee_target
    K, dist = camera_matrix(INTR)
    obj = np.array([[x * 0.04, y * 0.04, 0.0] for x in range(1, 5) for y in range(1, 7)])
    A, B, obs = [], [], []
    for i in range(12):
        T_cam_board = _T(rng.normal(size=3) * 0.3, [rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0.8])
        a = X @ T_cam_board @ _inv(Y)
        uv, _ = cv2.projectPoints(obj, cv2.Rodrigues(T_cam_board[:3, :3])[0], T_cam_board[:3, 3], K, dist)
        uv = uv.reshape(-1, 2) + rng.normal(scale=0.3, size=(len(obj), 2))
        _, rv, tv = cv2.solvePnP(obj, uv, K, dist)
        b = np.eye(4)
        b[:3, :3], b[:3, 3] = cv2.Rodrigues(rv)[0], tv.ravel()
        A.append(a), B.append(b), obs.append((obj, uv))
    closed = calibrate_hand_eye(np.array(A), np.array(B), mount="fixed", method="park")
    ref = refine_reprojection(closed, np.array(A), np.array(B), obs, K, dist)
    assert ref.method == "park+reprojection" and 0.2 < ref.reprojection_rms_px < 0.45
    e_closed, e_ref = transform_error(closed.T, X), transform_error(ref.T, X)
    assert e_ref[1] < e_closed[1] and e_ref[1] < 0.001 and e_ref[0] < 0.05
    with pytest.raises(ValueError, match="one of each per sample"):
        refine_reprojection(closed, np.array(A), np.array(B), obs[:5], K, dist)


# --------------------------------------------------------------------------- the simulator

pytest.importorskip("pybullet", reason="the simulator (edgebridge[sim]) is not installed")


def test_sim_board_is_rendered_where_it_is():
    """The board on the sim gripper, rendered and detected, sits at its true pose (texture the right way
    round, the camera's principal point where the renderer samples)."""
    from edgebridge.calib.board import detect_board_pose
    from edgebridge.sim.episode import build_world

    _, world, camera, arm = build_world("put_cup_in_tray", 4)
    try:
        camera.connect()
        arm.connect()
        arm.attach_board(BOARD)
        camera.set_resolution(1280, 960)
        frame = camera.read()
        pose = detect_board_pose(frame.rgb, frame.intrinsics, BOARD)
        truth = np.linalg.inv(camera.T_base_cam) @ world.attachment_pose(arm.board)
        assert pose.n_points == 24 and transform_error(pose.T_cam_target, truth)[1] < 0.003
        # the corners where the true pose puts them: no shift (half a pixel with the principal point at the
        # pixel centre, (W - 1) / 2), only the renderer's aliasing
        K, dist = camera_matrix(frame.intrinsics)
        uv, _ = cv2.projectPoints(pose.object_points, cv2.Rodrigues(truth[:3, :3])[0], truth[:3, 3], K, dist)
        err = uv.reshape(-1, 2) - pose.image_points
        assert np.all(np.abs(err.mean(axis=0)) < 0.25) and np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.8
        assert frame.intrinsics.width == 1280 and frame.seq == 1
    finally:
        world.close()


def test_manual_session_with_torque_off_in_sim(tmp_path):
    """The owner moves the sim arm by hand (torque off, commands refused), Enter per pose: samples.toml."""
    from edgebridge.calib.cli import read_session
    from edgebridge.calib.setup_rig import open_rig
    from edgebridge.errors import SafetyViolation

    rig = open_rig("sim_panda", BOARD, seed=2, capture_size=(1280, 960))
    home = np.asarray(rig.arm.state().joints)
    turns = [np.zeros(7), np.r_[0, 0, 0, 0, 0.15, 0, 0], np.r_[0, 0, 0, 0, 0, 0.15, 0], np.r_[0, 0, 0, 0, 0, 0, 0.3]]
    asked = []

    def hand(text):
        asked.append(text)
        if len(asked) > len(turns):
            return "q"
        rig.arm.guide(home + turns[len(asked) - 1])
        return ""

    try:
        res = Collector(rig, BOARD, CollectConfig(mode="manual", poses=10), tmp_path, prompt=hand).run()
        with pytest.raises(SafetyViolation, match="torque is off"):
            with rig.arm.torque_disabled():
                from edgebridge.contracts import ArmCommand

                rig.arm.command(ArmCommand(joints=home, gripper=1.0))
    finally:
        rig.close()
    assert res.samples == 4 and len(asked) == 5 and "pose 1/10" in asked[0]
    s = read_session(tmp_path)
    assert s.data["collect"]["mode"] == "manual" and len(s.observations) == 4 and s.intrinsics.width == 1280
    assert np.allclose(s.T_base_ee[3][:3, 3], s.T_base_ee[0][:3, 3], atol=1e-3)  # a wrist turn moves no position
    assert rotation_deg(s.T_base_ee[3][:3, :3], s.T_base_ee[0][:3, :3]) == pytest.approx(np.degrees(0.3), abs=0.2)


@pytest.mark.slow
def test_cli_collect_then_handeye_recovers_the_sim_camera(tmp_path, capsys):
    """End to end in the simulated world: collect (auto) -> handeye -> the true camera pose within 2 mm, 0.2 deg."""
    from edgebridge.calib.calib_file import CameraCalibration
    from edgebridge.calib.cli import main as edge_calib
    from edgebridge.sim.episode import build_world

    out = tmp_path / "session"
    assert edge_calib(["collect", "--config", "sim_panda", "--out", str(out), "--yes", "--poses", "10",
                       "--seed", "1", "--capture-size", "1280x960"]) == 0
    text = capsys.readouterr().out
    assert "planned" in text and "wrote 10 samples" in text
    assert edge_calib(["handeye", "--samples", str(out), "--out", str(tmp_path / "calib.toml")]) == 0
    cal = CameraCalibration.load(tmp_path / "calib.toml")
    _, world, camera, _ = build_world("put_cup_in_tray", 1)  # the episode of seed 1 has this camera
    truth = camera.T_base_cam.copy()
    world.close()
    rot, trans = transform_error(cal.T_base_cam, truth)
    assert trans < 0.002 and rot < 0.2, (trans, rot)
    assert cal.provenance.method == "park+reprojection" and cal.provenance.reprojection_rms_px < 1.0
    assert edge_calib(["collect", "--config", str(tmp_path / "none.toml"), "--out", str(out), "--yes"]) == 2
    assert "none.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        edge_calib(["collect", "--config", "sim_panda", "--out", str(out), "--yes", "--capture-size", "big"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_a_session_that_cannot_move_says_why(tmp_path):
    """Auto mode inside a workspace box the probes cannot stay in: one error naming the refusals."""
    from edgebridge.calib.setup_rig import open_rig

    rig = open_rig("sim_panda", BOARD, seed=0, capture_size=(1280, 960))
    rig.limits = replace(rig.limits, workspace_max=(0.9, 0.65, 0.401))  # the gripper stands at z = 0.401
    try:
        with pytest.raises(CollectError, match="gave a sample.*workspace box"):
            Collector(rig, BOARD, CollectConfig(poses=5), tmp_path).run()
    finally:
        rig.close()
