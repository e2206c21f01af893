"""Contract types validate shape, dtype and finiteness and name the field in their errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from edgebridge.contracts import (ActionChunk, Anchor, ArmCommand, ArmState, Guidance, Intrinsics, Plan,
                                  PointCloud, Pose, RGBD, Waypoints, check_transform)
from edgebridge.rotations import matrix_to_quat, quat_to_matrix


def intr(w=8, h=6):
    return Intrinsics(width=w, height=h, fx=5.0, fy=5.0, cx=w / 2, cy=h / 2)


def test_intrinsics_rejects_bad_model_and_focal():
    with pytest.raises(ValueError, match=r"Intrinsics.model"):
        Intrinsics(width=4, height=4, fx=1, fy=1, cx=2, cy=2, model="fisheye")
    with pytest.raises(ValueError, match=r"Intrinsics.fx"):
        Intrinsics(width=4, height=4, fx=0, fy=1, cx=2, cy=2)
    with pytest.raises(ValueError, match=r"Intrinsics.width"):
        Intrinsics(width=0, height=4, fx=1, fy=1, cx=2, cy=2)


def test_rgbd_validates_shapes_and_allows_holes():
    i = intr()
    depth = np.ones((6, 8), np.float32)
    depth[0, 0] = np.nan
    depth[1, 1] = 0.0
    frame = RGBD(np.zeros((6, 8, 3), np.uint8), depth, i)
    assert frame.depth.flags.writeable is False
    with pytest.raises(ValueError, match=r"RGBD.rgb: expected shape \(6, 8, 3\)"):
        RGBD(np.zeros((6, 7, 3), np.uint8), depth, i)
    with pytest.raises(ValueError, match=r"RGBD.depth: expected dtype float32"):
        RGBD(np.zeros((6, 8, 3), np.uint8), depth.astype(np.float64), i)
    with pytest.raises(ValueError, match=r"RGBD.depth: negative"):
        RGBD(np.zeros((6, 8, 3), np.uint8), -depth, i)


def test_contract_arrays_are_copies_and_read_only():
    xyz = np.zeros((4, 3), np.float32)
    cloud = PointCloud(xyz)
    xyz[0, 0] = 5.0
    assert cloud.xyz[0, 0] == 0.0
    with pytest.raises(ValueError):
        cloud.xyz[0, 0] = 1.0


def test_pointcloud_nan_and_n_valid():
    with pytest.raises(ValueError, match=r"PointCloud.xyz: 1 non-finite"):
        PointCloud(np.array([[0, 0, np.nan]], np.float32))
    with pytest.raises(ValueError, match=r"PointCloud.n_valid"):
        PointCloud(np.zeros((3, 3), np.float32), n_valid=4)
    empty = PointCloud(np.zeros((0, 3), np.float32))
    assert len(empty) == 0 and empty.n_valid == 0


def test_plan_and_anchor_validation():
    with pytest.raises(ValueError, match=r"Anchor.u"):
        Anchor(u=-1, v=0, gripper=1.0)
    with pytest.raises(ValueError, match=r"Anchor.gripper"):
        Anchor(u=1, v=0, gripper=1.5)
    with pytest.raises(ValueError, match=r"Plan.anchors"):
        Plan("put cup in tray", anchors=())
    with pytest.raises(ValueError, match=r"Plan.orientation"):
        Plan("x", anchors=(Anchor(1, 1, 1.0),), orientation=[0, 0, 0, 2.0])
    with pytest.raises(ValueError, match=r"Plan.subtasks"):
        Plan("x", anchors=(Anchor(1, 1, 1.0),), subtasks=(3,))
    p = Plan("x", anchors=(Anchor(1, 1, 1.0), Anchor(2, 2, 0.0)), subtasks=(0, 1))
    assert p.anchors[1].gripper == 0.0


def test_waypoints_guidance_chunk_validation():
    q = np.tile([0, 0, 0, 1.0], (2, 1))
    with pytest.raises(ValueError, match=r"Waypoints.positions"):
        Waypoints(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match=r"Waypoints.gripper"):
        Waypoints(np.zeros((2, 3)), q, [0.0, 2.0])
    with pytest.raises(ValueError, match=r"Guidance.t: sample times"):
        Guidance([1.0, 0.0], np.zeros((2, 3)), q, [1, 1])
    chunk = np.zeros((4, 8))
    chunk[:, 6] = 1
    ActionChunk(chunk, start_ns=0, dt=0.1)
    chunk[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"ActionChunk.poses: 1 non-finite"):
        ActionChunk(chunk, start_ns=0, dt=0.1)
    chunk[2, 0] = 0
    chunk[:, 6] = 0.5
    with pytest.raises(ValueError, match=r"ActionChunk.poses: quaternion"):
        ActionChunk(chunk, start_ns=0, dt=0.1)


def test_arm_state_and_command():
    s = ArmState(np.zeros(7), Pose.identity(), 1.0)
    assert s.joints.shape == (7,)
    with pytest.raises(ValueError, match=r"ArmCommand.joints: 1 non-finite"):
        ArmCommand(np.array([0, np.nan]), 0.5)
    with pytest.raises(ValueError, match=r"ArmCommand.gripper"):
        ArmCommand(np.zeros(2), 1.5)
    with pytest.raises(ValueError, match=r"ArmState.ee_pose"):
        ArmState(np.zeros(7), np.eye(4), 1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=4, max_size=4), st.lists(st.floats(-2, 2), min_size=3, max_size=3))
def test_pose_matrix_round_trip(qraw, t):
    q = np.array(qraw)
    if np.linalg.norm(q) < 1e-3:
        q = np.array([0, 0, 0, 1.0])
    q = q / np.linalg.norm(q)
    pose = Pose(np.array(t), q)
    back = Pose.from_matrix(pose.matrix())
    np.testing.assert_allclose(back.matrix(), pose.matrix(), atol=1e-9)
    np.testing.assert_allclose(quat_to_matrix(q), Rotation.from_quat(q).as_matrix(), atol=1e-12)
    np.testing.assert_allclose((pose @ pose.inverse()).matrix(), np.eye(4), atol=1e-9)
    pts = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(pose.apply(pts), (pose.matrix() @ np.c_[pts, np.ones(5)].T).T[:, :3], atol=1e-12)
    assert matrix_to_quat(pose.rotation)[3] >= 0


def test_check_transform():
    check_transform("T", np.eye(4))
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(ValueError, match="T_base_cam: rotation block"):
        check_transform("T_base_cam", bad)
    with pytest.raises(ValueError, match="last row"):
        check_transform("T", np.ones((4, 4)))
