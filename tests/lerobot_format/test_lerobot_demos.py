"""The expert trains on LeRobot data sets: the same samples as from the npz demonstrations they were converted
from, a clear error for a plain arm recording, and a hindsight hook for recordings without guidance."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow (extra 'dataset') not installed")
pytest.importorskip("av", reason="PyAV (extra 'dataset') not installed")

from helpers.synth import write_demos  # noqa: E402

from edgebridge.datasets.edge_features import GOAL, GUIDANCE, edge_features, edge_frame  # noqa: E402
from edgebridge.datasets.layout import feature  # noqa: E402
from edgebridge.datasets.lerobot_v3 import LeRobotReader, LeRobotWriter  # noqa: E402
from edgebridge.train.data import DemoError, load_demos, read_meta, spec_from_meta  # noqa: E402


@pytest.fixture(scope="module")
def npz_and_lerobot(tmp_path_factory):
    from edgebridge.sim.demos import npz_to_lerobot

    root = tmp_path_factory.mktemp("demos")
    npz = write_demos(root / "npz", episodes=3, seed=5, n_points=64)
    npz_to_lerobot(npz, root / "lerobot")
    return npz, root / "lerobot"


def test_lerobot_set_gives_the_samples_of_the_npz_set(npz_and_lerobot):
    npz, lr = npz_and_lerobot
    meta = read_meta(lr)
    assert (meta["format"], meta["n_points"], meta["horizon"], meta["action_dt"]) == ("lerobot-v3", 64, 16, 0.1)
    a, b = load_demos(npz), load_demos(lr)
    assert len(a) == len(b) > 60 and np.array_equal(a.episode, b.episode)
    for k in ("proprio", "guidance", "action", "cloud"):
        np.testing.assert_allclose(getattr(b, k), getattr(a, k), atol=2e-5, err_msg=k)  # float32 storage
    assert spec_from_meta(meta) == spec_from_meta(read_meta(npz))


def test_failed_episodes_are_left_out_and_max_episodes_holds(npz_and_lerobot, tmp_path):
    import json

    _, lr = npz_and_lerobot
    edge = json.loads((lr / "meta/edgebridge.json").read_text())
    assert [e["episode_index"] for e in edge["episodes"]] == [0, 1, 2]
    edge["episodes"][1]["success"] = False
    import shutil

    shutil.copytree(lr, tmp_path / "ds")
    (tmp_path / "ds/meta/edgebridge.json").write_text(json.dumps(edge))
    d = load_demos(tmp_path / "ds")
    assert d.meta["skipped_unsuccessful"] == 1 and len(np.unique(d.episode)) == 2
    assert len(np.unique(load_demos(tmp_path / "ds", max_episodes=1).episode)) == 1


def plain_recording(root, state_names):
    """A LeRobot recording of the kind LeRobot's own tools make: joint state and action, nothing else."""
    feats = {"observation.state": feature("float32", (len(state_names),), state_names),
             "action": feature("float32", (len(state_names),), state_names)}
    with LeRobotWriter(root, 30, feats, "so101_follower") as w:
        for i in range(5):
            w.add_frame({"observation.state": np.zeros(len(state_names)), "action": np.zeros(len(state_names))})
        w.save_episode(task="pick the cube")
    return root


def test_plain_arm_recording_gets_a_list_of_what_is_missing(tmp_path):
    joints = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
              "gripper.pos"]
    d = plain_recording(tmp_path / "so101", joints)
    with pytest.raises(DemoError) as e:
        load_demos(d)
    msg = str(e.value)
    for need in ("no observation.cloud", "no observation.guidance", "no observation.goal",
                 "observation.state is ['shoulder_pan.pos'", "not the end-effector pose + gripper",
                 "docs/datasets.md"):
        assert need in msg, (need, msg)


def test_hindsight_builds_the_guidance_of_a_recording_without_one(npz_and_lerobot, tmp_path):
    _, lr = npz_and_lerobot
    src = LeRobotReader(lr)
    feats = edge_features(n_joints=None, n_points=64, guidance_steps=None, plan=False)
    kept = {}
    with LeRobotWriter(tmp_path / "ds", 10, feats) as w:
        for i in range(len(src)):
            ep = src.episode(i)
            kept[len(kept)] = (ep[GUIDANCE], ep[GOAL])
            for k in range(len(ep["index"])):
                w.add_frame(edge_frame(feats, state=ep["observation.state"][k], action=ep["action"][k],
                                       cloud=ep["observation.cloud"][k], n_valid=int(ep["observation.cloud_n_valid"][k])))
            w.save_episode(task="t")
    with pytest.raises(DemoError, match="no observation.guidance"):
        load_demos(tmp_path / "ds")
    calls = []

    def hindsight(ep):  # here: the guidance the original recording had
        calls.append(len(ep["observation.state"]))
        return kept[len(calls) - 1]

    import json

    (tmp_path / "ds/meta/edgebridge.json").write_text(json.dumps({"horizon": 16}))
    got, want = load_demos(tmp_path / "ds", hindsight=hindsight), load_demos(lr)
    assert len(calls) == 3
    np.testing.assert_allclose(got.action, want.action, atol=1e-6)
