"""Guidance in hindsight: anchors from the gripper events, the goal noise, the timing, and load_demos' hook."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgebridge.contracts import Pose, Waypoints
from edgebridge.runtime.guidance import approach_waypoints, fit_guidance
from edgebridge.train.hindsight import Hindsight, HindsightConfig

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
START = np.array([0.45, 0.0, 0.40])


def demo(cube=(0.50, -0.12, 0.05), target=(0.48, 0.14, 0.05), dt: float = 0.1):
    """A demonstration that follows the runtime's own guidance through two surface anchors (a grasp on
    ``cube``, a release over ``target``), sampled at ``dt``: state = action = the spline. Returns
    (state, action, lifted waypoints, spline)."""
    lifted = Waypoints(np.array([cube, target], np.float64), np.stack([DOWN, DOWN]), np.array([0.0, 1.0]))
    path, d = approach_waypoints(lifted, Pose(START, DOWN), start_gripper=1.0)
    spline = fit_guidance(path, d)
    t = np.arange(0.0, spline.duration + 1.0, dt)
    rows = spline.evaluate_many(t)
    rows[:, 3:7] /= np.linalg.norm(rows[:, 3:7], axis=1, keepdims=True)
    rows[:, 7] = np.clip(rows[:, 7], 0.0, 1.0)
    return rows.copy(), rows.copy(), lifted, spline


def test_anchors_are_the_poses_at_the_gripper_events():
    state, action, lifted, _ = demo()
    h = Hindsight(HindsightConfig(goal_noise=0.0))
    a = h.anchors(state, action, np.random.default_rng(0))
    assert len(a.frames) == 2 and np.all(np.diff(a.frames) > 0)
    # the contact points went back to the surface points a planner names (grasp depth, release clearance)
    np.testing.assert_allclose(a.clean.positions, lifted.positions, atol=1e-3)
    np.testing.assert_array_equal(a.clean.gripper, [0.0, 1.0])
    np.testing.assert_array_equal(a.noisy.positions, a.clean.positions)  # no noise asked


def test_zero_noise_rebuilds_the_demonstrated_guidance():
    state, action, _, spline = demo()
    h = Hindsight(HindsightConfig(goal_noise=0.0))
    window, goal = h({"observation.state": state.astype(np.float32), "action": action.astype(np.float32)})
    assert window.shape == (len(state), 17, 8) and goal.shape == (len(state), 8)
    assert window.dtype == np.float32 and np.all(np.isfinite(window))
    err = np.linalg.norm(window[:, 0, :3] - state[:, :3], axis=1)
    assert err.max() < 0.02 and err.mean() < 0.006, (err.mean(), err.max())  # in phase with the demonstration
    # before the grasp the goal is the grasp contact, after it the release contact
    ev = h.anchors(state, action, np.random.default_rng(0)).frames
    np.testing.assert_allclose(goal[0, :3], state[ev[0], :3], atol=0.01)
    np.testing.assert_allclose(goal[ev[0] + 2, :3], state[ev[1], :3], atol=0.01)


def test_goal_noise_has_the_configured_size_and_is_fixed_per_episode():
    state, action, _, _ = demo()
    scale = (0.02, 0.05, 0.1)
    h = Hindsight(HindsightConfig(goal_noise=0.1, noise_scale_m=scale))
    offsets = np.concatenate([(lambda a: a.noisy.positions - a.clean.positions)(
        h.anchors(state, action, np.random.default_rng(s))) for s in range(400)])
    np.testing.assert_allclose(offsets.std(axis=0), 0.1 * np.array(scale), rtol=0.12)
    ep = {"observation.state": state.astype(np.float32), "action": action.astype(np.float32)}
    w1, _ = h(ep)
    w2, _ = h(ep)
    np.testing.assert_array_equal(w1, w2)  # the same episode gets the same noise
    w3, _ = Hindsight(replace(h.config, seed=1))(ep)
    assert not np.allclose(w1, w3)
    # without a scale the episode's own spread of goal - position is the unit
    a = Hindsight(HindsightConfig()).anchors(state, action, np.random.default_rng(0))
    assert np.all(a.scale_m >= 0.01) and np.all(a.scale_m < 0.3)


def test_an_episode_without_gripper_event_gets_its_last_pose_as_the_only_anchor():
    state, action, _, _ = demo()
    action[:, 7] = 1.0
    window, goal = Hindsight(HindsightConfig(goal_noise=0.0))({"observation.state": state, "action": action})
    assert np.all(np.isfinite(window)) and np.allclose(goal[:, :3], goal[0, :3])


def test_bad_episode_is_refused():
    with pytest.raises(ValueError, match="observation.state"):
        Hindsight()({"observation.state": np.zeros((5, 7)), "action": np.zeros((5, 7))})
    with pytest.raises(ValueError, match="goal_noise"):
        HindsightConfig(goal_noise=-1)


def test_load_demos_builds_guidance_in_hindsight_for_a_recording_without_it(tmp_path):
    pytest.importorskip("pyarrow")
    from edgebridge.datasets.edge_features import edge_features, edge_frame, write_edge_meta
    from edgebridge.datasets.lerobot_v3 import LeRobotWriter
    from edgebridge.train.data import DemoError, load_demos

    feats = edge_features(n_joints=7, n_points=64, plan=False)
    with LeRobotWriter(tmp_path, 10, feats, "test") as w:
        for i in range(3):
            state, action, _, _ = demo(cube=(0.5, -0.12 + 0.02 * i, 0.05))
            rng = np.random.default_rng(i)
            for s, a in zip(state, action):
                cloud = s[:3] + rng.normal(0, 0.05, (64, 3))
                w.add_frame(edge_frame(w.features, state=s, action=a, joints=np.zeros(7), cloud=cloud, n_valid=64))
            w.save_episode(task="stack")
    write_edge_meta(tmp_path, {"action_dt": 0.1, "horizon": 16, "n_points": 64})
    with pytest.raises(DemoError, match="observation.guidance"):
        load_demos(tmp_path)
    ds = load_demos(tmp_path, hindsight=Hindsight(HindsightConfig(goal_noise=0.1, noise_scale_m=(0.02, 0.1, 0.1))))
    assert len(ds) > 100 and ds.guidance.shape[1:] == (17, 10) and ds.action.shape[1:] == (16, 10)
    assert np.all(np.isfinite(ds.action)) and np.all(np.isfinite(ds.guidance))
    assert set(np.unique(ds.episode)) == {0, 1, 2}
    # the target is a correction of the noisy guidance: centimetres, not the whole motion
    assert np.abs(ds.action[..., :3]).max() < 0.1
