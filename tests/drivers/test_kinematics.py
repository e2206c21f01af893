"""Kinematics (pinocchio) against PyBullet's link state, IK round trips and failures."""

import numpy as np
import pytest

from edgebridge.contracts import Pose
from edgebridge.drivers.kinematics import PANDA_HOME, IKError, Kinematics, KinematicsConfig


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def test_fk_matches_pybullet_link_state(kin):
    import pybullet as p
    import pybullet_data

    cid = p.connect(p.DIRECT)
    try:
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
        robot = p.loadURDF("franka_panda/panda.urdf", useFixedBase=True, physicsClientId=cid)
        rng = np.random.default_rng(0)
        for _ in range(5):
            q = rng.uniform(kin.lower, kin.upper)
            for j in range(7):
                p.resetJointState(robot, j, q[j], physicsClientId=cid)
            pos, quat = p.getLinkState(robot, 11, computeForwardKinematics=True, physicsClientId=cid)[4:6]
            fk = kin.fk(q)
            np.testing.assert_allclose(fk.position, pos, atol=1e-5)
            assert abs(abs(np.dot(fk.quat, quat)) - 1) < 1e-6
    finally:
        p.disconnect(cid)


def test_ik_round_trip(kin):
    rng = np.random.default_rng(1)
    home = np.array(PANDA_HOME)
    for _ in range(10):
        q_true = np.clip(home + rng.uniform(-0.4, 0.4, 7), kin.lower, kin.upper)
        target = kin.fk(q_true)
        q = kin.ik(target, home)
        got = kin.fk(q)
        assert np.linalg.norm(got.position - target.position) < 1e-3
        assert abs(abs(np.dot(got.quat, target.quat)) - 1) < 1e-4
        assert kin.within_limits(q)


def test_ik_unreachable_names_target(kin):
    with pytest.raises(IKError, match=r"IK failed for target position \[2.0, 0.0, 0.3\]"):
        kin.ik(Pose([2.0, 0.0, 0.3], [1, 0, 0, 0]), PANDA_HOME)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="kinematics.urdf"):
        KinematicsConfig(urdf=str(tmp_path / "missing.urdf"))
    with pytest.raises(ValueError, match="end-effector frame 'nope'"):
        Kinematics(KinematicsConfig(ee_frame="nope"))
