"""Featurisation shared by training and runtime: inverse pairs both ways, sampling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from edgebridge.errors import ExpertError
from edgebridge.rotations import matrix_from_rot6d, matrix_to_quat, quat_to_matrix, rot6d_from_matrix
from edgebridge.runtime.expert.features import (FeatureSpec, Normalizer, absolute_from_relative, action_targets,
                                                decode_action, goal_index, raw_features, relative_features,
                                                resample_cloud, sample_guidance)


def _random_poses(rng, shape):
    q = Rotation.random(int(np.prod(shape)), random_state=rng.integers(1 << 31)).as_quat().reshape(*shape, 4)
    return rng.normal(0, 0.3, shape + (3,)), q


def test_rot6d_round_trip():
    rng = np.random.default_rng(0)
    r = Rotation.random(50, random_state=1).as_matrix()
    np.testing.assert_allclose(matrix_from_rot6d(rot6d_from_matrix(r)), r, atol=1e-12)
    # Gram-Schmidt turns a perturbed 6-D vector into a proper rotation
    m = matrix_from_rot6d(rot6d_from_matrix(r) + rng.normal(0, 0.05, (50, 6)))
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_degenerate_rot6d_is_an_expert_error():
    with pytest.raises(ExpertError, match="degenerate"):
        absolute_from_relative(np.zeros((1, 3)), np.array([[0.0, 0.0, 0.0, 1.0]]), np.zeros((1, 1, 10)))


def test_matrix_to_quat_matches_scipy_up_to_sign():
    r = Rotation.random(200, random_state=3)
    q = matrix_to_quat(r.as_matrix())
    ref = r.as_quat()
    ref = np.where(ref[:, 3:4] < 0, -ref, ref)
    np.testing.assert_allclose(q, ref, atol=1e-9)


def test_relative_absolute_round_trip():
    rng = np.random.default_rng(1)
    ref_p, ref_q = _random_poses(rng, (4,))
    p, q = _random_poses(rng, (4, 16))
    g = rng.uniform(0, 1, (4, 16))
    rel = relative_features(ref_p, ref_q, p, q, g)
    assert rel.shape == (4, 16, 10)
    back = absolute_from_relative(ref_p, ref_q, rel)
    np.testing.assert_allclose(back[..., :3], p, atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(back[..., 3:7]), quat_to_matrix(q), atol=1e-9)
    np.testing.assert_allclose(back[..., 7], g, atol=1e-12)
    # the relative encoding of the reference pose itself is the identity
    same = relative_features(ref_p, ref_q, ref_p[:, None], ref_q[:, None], np.ones((4, 1)))
    np.testing.assert_allclose(same[..., :9], np.tile([0, 0, 0, 1, 0, 0, 0, 1, 0], (4, 1, 1)), atol=1e-12)


def test_decode_inverts_normalised_targets():
    rng = np.random.default_rng(2)
    ee_p, ee_q = _random_poses(rng, (3,))
    p, q = _random_poses(rng, (3, 16))
    action = np.concatenate([p, q, rng.uniform(0, 1, (3, 16, 1))], axis=-1)
    ee = np.concatenate([ee_p, ee_q], axis=-1)
    targets = action_targets(ee, action)
    norm = Normalizer.fit({"cloud": rng.normal(size=(10, 3)), "proprio": rng.normal(size=(10, 10)),
                           "guidance": rng.normal(size=(10, 10)), "action": targets})
    back = decode_action(norm, ee, norm.normalize("action", targets))
    np.testing.assert_allclose(back[..., :3], p, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(back[..., 3:7] * q, axis=-1)), 1.0, atol=1e-5)


def test_sample_guidance_interpolates_and_clamps():
    t = np.array([0.0, 1.0, 2.0])
    poses = np.zeros((3, 8))
    poses[:, 0] = [0.0, 1.0, 3.0]
    poses[:, 6] = 1.0
    poses[:, 7] = [1.0, 1.0, 0.0]
    s = sample_guidance(t, poses, np.array([-1.0, 0.5, 1.5, 5.0]))
    np.testing.assert_allclose(s[:, 0], [0.0, 0.5, 2.0, 3.0])
    np.testing.assert_allclose(s[:, 7], [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(np.linalg.norm(s[:, 3:7], axis=1), 1.0)


def test_goal_is_the_next_gripper_event_else_the_end():
    t = np.arange(6) * 0.1
    grip = np.array([1, 1, 0, 0, 1, 1.0])
    np.testing.assert_array_equal(goal_index(t, grip, np.array([0.0, 0.25, 0.45])), [2, 4, 5])


def test_resample_cloud_uses_only_valid_points():
    xyz = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = resample_cloud(xyz, 4, 8)
    assert out.shape == (8, 3)
    assert set(map(tuple, out)) <= set(map(tuple, xyz[:4]))
    assert resample_cloud(xyz, 10, 5).shape == (5, 3)
    with pytest.raises(ExpertError, match="no valid points"):
        resample_cloud(xyz, 0, 8)


def test_raw_features_shapes_and_frame():
    spec = FeatureSpec(n_points=8, guidance_steps=4, horizon=4, action_dt=0.1)
    rng = np.random.default_rng(4)
    ee = np.concatenate([rng.normal(size=(2, 3)), np.tile([0, 0, 0, 1.0], (2, 1))], axis=1)
    gt = np.linspace(0, 1, 11)
    g = np.zeros((11, 8))
    g[:, 0] = gt
    g[:, 6] = 1
    g[:, 7] = 1
    raw = raw_features(spec, rng.normal(size=(2, 8, 3)), ee, np.ones(2), gt, g, np.array([0.0, 0.5]))
    assert raw["cloud"].shape == (2, 8, 3) and raw["proprio"].shape == (2, 10) and raw["guidance"].shape == (2, 5, 10)
    # guidance token k is the guidance at now + (k+1) dt, relative to the end effector
    np.testing.assert_allclose(raw["guidance"][1, :4, 0], 0.5 + 0.1 * np.arange(1, 5) - ee[1, 0], atol=1e-12)
    np.testing.assert_allclose(raw["guidance"][:, 4, 0], 1.0 - ee[:, 0], atol=1e-12)  # goal: the end


def test_normalizer_round_trip_and_validation():
    rng = np.random.default_rng(5)
    data = {"cloud": rng.normal(size=(100, 3)), "proprio": rng.normal(size=(100, 10)),
            "guidance": rng.normal(size=(100, 10)), "action": rng.normal(size=(100, 10)) * 0.0 + 1.0}
    n = Normalizer.fit(data)
    assert np.all(n.std["action"] > 0)  # constant channels get the std floor, not a division by zero
    again = Normalizer.from_dict(n.to_dict())
    x = rng.normal(size=(5, 10))
    np.testing.assert_allclose(again.unnormalize("proprio", again.normalize("proprio", x)), x, atol=1e-5)
    bad = n.to_dict()
    bad["action"]["std"][0] = 0.0
    with pytest.raises(ExpertError, match="action"):
        Normalizer.from_dict(bad)
    with pytest.raises(ExpertError, match="keys"):
        Normalizer.from_dict({"cloud": {}})


def test_residual_round_trip_and_zero_is_the_base():
    from edgebridge.runtime.expert.features import CorrectionLimit, apply_residual, residual_features

    rng = np.random.default_rng(7)
    bp, bq = _random_poses(rng, (3, 16))
    base = np.concatenate([bp, bq, rng.uniform(0, 1, (3, 16, 1))], axis=-1)
    # a target within the bound: a few cm away, rotated by < 0.2 rad, other gripper value
    small = Rotation.from_rotvec(rng.normal(0, 0.05, (48, 3))).as_matrix().reshape(3, 16, 3, 3)
    r = np.einsum("bkij,bkjl->bkil", quat_to_matrix(bq), small)
    action = np.concatenate([bp + rng.normal(0, 0.01, bp.shape), matrix_to_quat(r),
                             rng.uniform(0, 1, (3, 16, 1))], axis=-1)
    res = residual_features(base, action)
    bound_only = CorrectionLimit(position_m=0.05, rotation_rad=0.2, distrust_from_m=None, distrust_full_m=None)
    back = apply_residual(base, res, bound_only)
    np.testing.assert_allclose(back[..., :3], action[..., :3], atol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(back[..., 3:7] * action[..., 3:7], axis=-1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(back[..., 7], action[..., 7], atol=1e-9)
    # zero correction = the base chunk, quaternion signs included (rows are interpolated linearly)
    np.testing.assert_allclose(apply_residual(base, np.zeros((3, 16, 10))), base, atol=1e-9)
    np.testing.assert_allclose(residual_features(base, base), 0.0, atol=1e-12)


def test_correction_is_bounded():
    from edgebridge.runtime.expert.features import CorrectionLimit, apply_residual

    base = np.tile(np.r_[0.4, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 1.0], (1, 2, 1))  # top-down, w = 0
    res = np.zeros((1, 2, 10))
    res[0, 0, :3] = [0.3, 0.0, 0.4]  # 50 cm
    r = Rotation.from_rotvec([0.0, 0.0, 1.0]).as_matrix()  # 1 rad about z
    res[0, 1, 3:9] = np.r_[r[:, 0], r[:, 1]] - np.r_[1, 0, 0, 0, 1, 0]
    out = apply_residual(base, res, CorrectionLimit(position_m=0.05, rotation_rad=0.2, distrust_from_m=None,
                                                    distrust_full_m=None))
    np.testing.assert_allclose(out[0, 0, :3] - base[0, 0, :3], [0.03, 0.0, 0.04], atol=1e-12)
    ang = Rotation.from_quat(out[0, 1, 3:7]).inv() * Rotation.from_quat(base[0, 1, 3:7])
    assert ang.magnitude() == pytest.approx(0.2, abs=1e-9)
    with pytest.raises(ValueError, match="bounds"):
        CorrectionLimit(position_m=0.0)


def test_a_request_far_beyond_the_bound_is_faded_out():
    from edgebridge.runtime.expert.features import CorrectionLimit, apply_residual

    lim = CorrectionLimit(position_m=0.02, rotation_rad=0.1, distrust_from_m=0.04, distrust_full_m=0.06)
    base = np.tile(np.r_[0.4, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 0.5], (4, 3, 1))
    res = np.zeros((4, 3, 10))
    r = Rotation.from_rotvec([0.0, 0.0, 0.05]).as_matrix()
    res[..., 3:9] = np.r_[r[:, 0], r[:, 1]] - np.r_[1, 0, 0, 0, 1, 0]
    res[..., 9] = 0.4
    res[:, 1, 1] = [0.01, 0.04, 0.05, 0.2]  # the largest request of each chunk decides its weight
    np.testing.assert_allclose(lim.trust(res), [1.0, 1.0, 0.5, 0.0])
    out = apply_residual(base, res, lim)
    np.testing.assert_allclose(out[:, 1, 1], [0.01, 0.02, 0.02, 0.0], atol=1e-12)  # 4 cm clipped; 5 cm * 0.5
    np.testing.assert_allclose(out[:, 0, 7], [0.9, 0.9, 0.7, 0.5], atol=1e-12)  # the gripper correction too
    ang = [(Rotation.from_quat(o).inv() * Rotation.from_quat(base[0, 0, 3:7])).magnitude() for o in out[:, 0, 3:7]]
    np.testing.assert_allclose(ang, [0.05, 0.05, 0.025, 0.0], atol=1e-9)
    for lo, hi in ((0.05, None), (0.06, 0.05), (0.0, 0.05)):
        with pytest.raises(ValueError, match="distrust_from_m"):
            CorrectionLimit(distrust_from_m=lo, distrust_full_m=hi)


def test_base_chunk_is_the_ik_chunk():
    from edgebridge.contracts import ArmState, Guidance, Pose
    from edgebridge.runtime.expert.features import base_chunk
    from edgebridge.runtime.ik_expert import IKExpert

    rng = np.random.default_rng(3)
    gt = np.arange(30) * 0.1
    p, q = _random_poses(rng, (30,))
    p[:, 2] = np.abs(p[:, 2]) - 0.05  # some targets below the IK floor
    q = np.where(q[:, 3:4] < 0, -q, q)
    g = np.concatenate([p, q, rng.uniform(0, 1, (30, 1))], axis=1)
    guidance = Guidance(gt, p, q, g[:, 7], stamp_ns=10**9)
    for now in (0.0, 0.73, 2.5, 4.0):
        state = ArmState(np.zeros(7), Pose(p[0], q[0]), 1.0, stamp_ns=10**9 + int(round(now * 1e9)))
        ik = IKExpert().act(None, state, guidance).poses
        np.testing.assert_allclose(base_chunk(FeatureSpec(), gt, g, np.array([now]))[0], ik, atol=1e-6)


def test_cloud_roi_box_around_the_goal_clipped_to_the_workspace():
    from edgebridge.contracts import Guidance
    from edgebridge.runtime.expert.features import CloudROI, goal_position

    roi = CloudROI(half_xy_m=0.1, below_m=0.05, above_m=0.2)
    lo, hi = roi.bounds(np.array([0.5, 0.0, 0.1]))
    np.testing.assert_allclose(lo, [0.4, -0.1, 0.05])
    np.testing.assert_allclose(hi, [0.6, 0.1, 0.3])
    lo, hi = roi.bounds(np.array([0.5, 0.0, 0.02]), ((0.0, -1.0, -0.03), (0.55, 1.0, 1.0)))
    np.testing.assert_allclose(lo, [0.4, -0.1, -0.03])
    np.testing.assert_allclose(hi, [0.55, 0.1, 0.22])
    lo, hi = roi.bounds(np.array([2.0, 0.0, 0.1]), ((0.0, -1.0, 0.0), (1.0, 1.0, 1.0)))  # no overlap: ROI alone
    np.testing.assert_allclose(lo, [1.9, -0.1, 0.05])
    box = roi.box(np.array([0.5, 0.0, 0.1]))
    np.testing.assert_allclose(box.center, [0.5, 0.0, 0.175])
    np.testing.assert_allclose(box.half_extents, [0.1, 0.1, 0.125])
    assert CloudROI.from_dict(None) is None and CloudROI.from_dict(roi.to_dict()) == roi
    with pytest.raises(ExpertError, match="cloud_roi"):
        CloudROI.from_dict({"half_xy_m": 0.1})
    with pytest.raises(ValueError, match="below_m"):
        CloudROI(below_m=0.0)
    # the goal is the next gripper event after now, else the end
    t = np.linspace(0.0, 2.0, 5)
    pos = np.stack([t, np.zeros(5), np.zeros(5)], axis=1)
    g = Guidance(t, pos, np.tile([0.0, 0.0, 0.0, 1.0], (5, 1)), np.array([1.0, 1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(goal_position(g, 0.2), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(goal_position(g, 1.2), [2.0, 0.0, 0.0])
