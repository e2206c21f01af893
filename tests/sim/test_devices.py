"""SimArm / SimCamera: interfaces, shapes, intrinsics consistent with projection, T_base_cam, noise."""

import numpy as np
import pytest

from edgebridge.contracts import ArmCommand, ArmState, RGBD
from edgebridge.errors import DeviceNotConnectedError, SafetyViolation
from edgebridge.interfaces import Arm, Camera
from edgebridge.sim.arm import SimArm
from edgebridge.sim.camera import DepthNoiseConfig, SimCamera, SimCameraConfig, apply_depth_noise
from edgebridge.sim.world import SimWorld


@pytest.fixture()
def world():
    w = SimWorld()
    w.add_object("cube", "cube", [0.5, -0.1], color="red")
    w.add_object("tray", "tray", [0.45, 0.3], color="grey")
    w.settle(0.2)
    yield w
    w.close()


def test_arm_interface_and_command(world):
    arm = SimArm(world)
    assert isinstance(arm, Arm)
    with pytest.raises(DeviceNotConnectedError):
        arm.state()
    with arm:
        s = arm.state()
        assert isinstance(s, ArmState) and s.joints.shape == (7,) and 0.9 < s.gripper <= 1.0
        np.testing.assert_allclose(s.ee_pose.position, arm.kin.fk(s.joints).position)
        target = s.joints + np.array([0.2, 0, 0, 0, 0, 0, 0])
        target[3] = 1.0  # above joint 4's upper limit (0): clipped
        sent = arm.command(ArmCommand(joints=target, gripper=0.0))
        assert sent.joints[3] == pytest.approx(arm.kin.upper[3]) and sent.joints[0] == pytest.approx(target[0])
        world.clock.advance(1.5)
        s2 = arm.state()
        assert abs(s2.joints[0] - target[0]) < 0.02 and s2.gripper < 0.1
        arm.estop()
        with pytest.raises(SafetyViolation):
            arm.command(ArmCommand(joints=s2.joints, gripper=1.0))
    assert not arm.is_connected


def test_camera_frame_intrinsics_and_projection(world):
    cam = SimCamera(world)
    assert isinstance(cam, Camera)
    with cam:
        f = cam.read()
    assert isinstance(f, RGBD) and f.rgb.shape == (240, 320, 3) and f.depth.dtype == np.float32
    k = f.intrinsics
    assert (k.width, k.height) == (320, 240) and k.fx == pytest.approx(k.fy)
    # the projection of the cube's top centre lands on the cube in the segmentation, at the right depth
    top = world.pose("cube").position + [0, 0, 0.025]
    uv, z = cam.project(top[None])
    u, v = np.round(uv[0]).astype(int)
    assert cam.last_segmentation[v, u] == world.object("cube").body
    assert f.depth[v, u] == pytest.approx(z[0], abs=0.01)
    # deprojecting a table pixel with the intrinsics + T_base_cam lands on the table plane z = 0
    vs, us = np.nonzero(cam.last_segmentation == world.table)
    i = len(us) // 2
    d = f.depth[vs[i], us[i]]
    pc = np.array([(us[i] - k.cx) / k.fx * d, (vs[i] - k.cy) / k.fy * d, d])
    pb = cam.T_base_cam[:3, :3] @ pc + cam.T_base_cam[:3, 3]
    assert abs(pb[2]) < 0.005
    # T_base_cam: optical z axis points from the eye to the target
    fwd = np.subtract(cam.config.target, cam.config.eye)
    np.testing.assert_allclose(cam.T_base_cam[:3, 2], fwd / np.linalg.norm(fwd), atol=1e-9)
    np.testing.assert_allclose(cam.T_base_cam[:3, 3], cam.config.eye)


def test_depth_noise_model_is_seeded_and_shaped():
    depth = np.full((60, 80), 1.0, np.float32)
    depth[20:40, 30:50] = 0.6  # an object in front: depth edges
    noise = DepthNoiseConfig(sigma_a=0.001, sigma_b=0.002, dropout_prob=0.05, holes=2, flying_prob=1.0,
                             depth_bias_m=0.01)
    a = apply_depth_noise(depth, noise, np.random.default_rng(3))
    b = apply_depth_noise(depth, noise, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    valid = a > 0
    assert 0.02 < 1 - valid.mean() < 0.4  # dropout + holes
    far = valid & (depth == 1.0)
    assert np.mean(a[far] - 1.0) == pytest.approx(0.01, abs=0.002)  # the bias
    assert 0.002 < np.std(a[far]) < 0.006  # sigma = 0.001 + 0.002 * 1^2
    edge = np.zeros_like(valid)
    edge[20, 31:49] = True
    fly = edge & valid & (a > 0.62) & (a < 0.98)
    assert fly.sum() > 3  # flying pixels between the object and the background
    with pytest.raises(ValueError, match="depth_noise.dropout_prob"):
        DepthNoiseConfig(dropout_prob=2.0)


def test_camera_config_rejects_bad_pose():
    with pytest.raises(ValueError, match="camera.target"):
        SimCameraConfig(eye=(1, 0, 1), target=(1, 0, 1))
