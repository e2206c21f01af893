"""End to end: an oracle + plain-IK episode, the CLI, and demonstrations read back without pybullet."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgebridge.sim.episode import run_episode


def test_put_cup_in_tray_oracle_ik_succeeds(tmp_path):
    for module in ("pyarrow", "av"):
        pytest.importorskip(module, reason=f"{module} (extra 'dataset') not installed: record_dir writes LeRobot")
    r = run_episode("put cup in tray", seed=0, record_dir=tmp_path / "rec")
    assert r.success, r.reason
    assert r.task == "put_cup_in_tray" and 3 < r.duration < 20
    # record_dir: the episode as a one-episode LeRobot data set, one frame per expert step
    from edgebridge.datasets.lerobot_v3 import LeRobotReader

    ds = LeRobotReader(tmp_path / "rec")
    n = ds.episodes[0]["length"]
    assert len(ds) == 1 and n > 20 and ds.tasks == ["put cup in tray"]
    ep = ds.episode(0)
    assert ep["observation.state"].shape == (n, 8) and ep["action"].shape == (n, 8)
    assert ep["action"][:, 7].min() < 0.5 < ep["action"][0, 7]  # the gripper was told to close on the cup
    assert ep["observation.state"][:, 7].min() < 0.9  # and it closed (the cup stops it)
    assert ds.frames(0, "observation.images.front").std() > 10  # the camera's view, not a blank video
    edge = json.loads((tmp_path / "rec" / "meta" / "edgebridge.json").read_text())
    assert [(e["success"], e["seed"]) for e in edge["episodes"]] == [(True, 0)]


def test_episode_time_limit_ends_as_failure():
    r = run_episode("put_cup_in_tray", seed=1, max_seconds=2.0)
    assert not r.success and "time limit" in r.reason and r.duration < 4


def test_unknown_expert_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown expert 'nope'"):
        run_episode("put_cup_in_tray", seed=0, expert="nope")


def test_onnx_expert_is_the_shipped_one():
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.runtime.devices import RunChoices, build_devices
    from edgebridge.runtime.expert import OnnxExpert, shipped_model_path

    dev, _ = build_devices(load_robot_config("sim_panda"), RunChoices(expert="onnx"))
    try:
        assert isinstance(dev.expert, OnnxExpert) and dev.expert.config.model == str(shipped_model_path())
    finally:
        dev.close()


def test_episode_runs_through_the_runtime_pipeline(monkeypatch):
    """edge-sim's episodes are the runtime's: the pipeline's control loop, safety layer and chunk
    blending send every command."""
    from edgebridge.runtime import chunks, loop, safety

    calls = {"run": 0, "validate": 0, "push": 0}
    for mod, cls, name in ((loop, "ControlLoop", "run"), (safety, "SafetyLayer", "validate"),
                           (chunks, "ChunkBlender", "push")):
        orig = getattr(getattr(mod, cls), name)

        def counted(self, *a, _orig=orig, _name=name, **kw):
            calls[_name] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(getattr(mod, cls), name, counted)
    r = run_episode("put_cup_in_tray", seed=0)
    assert r.success, r.reason
    assert calls["run"] == 1 and calls["push"] > 10 and calls["validate"] >= r.loop["sent"] > 100


def test_cli_exit_codes(tmp_path):
    cmd = [sys.executable, "-m", "edgebridge.sim.cli"]
    bad = subprocess.run(cmd + ["run", "--task", "make coffee"], capture_output=True, text=True)
    assert bad.returncode == 2 and "known tasks" in bad.stderr
    fail = subprocess.run(cmd + ["run", "--task", "put cup in tray", "--max-seconds", "1", "--json",
                                 str(tmp_path / "r.json")], capture_output=True, text=True)
    assert fail.returncode == 1
    assert json.loads((tmp_path / "r.json").read_text())["success_rate"] == 0.0


def test_demos_written_and_read_without_simulator(tmp_path, monkeypatch):
    from edgebridge.runtime.safety import SafetyLayer
    from edgebridge.sim import demos
    from edgebridge.sim.demos import DemoConfig, write_demos

    validated, recorded = [], []
    orig, orig_add = SafetyLayer.validate, demos.add_episode
    monkeypatch.setattr(SafetyLayer, "validate", lambda self, *a, **kw: validated.append(1) or orig(self, *a, **kw))
    monkeypatch.setattr(demos, "add_episode", lambda w, arrays, task: recorded.append(arrays) or orig_add(w, arrays, task))
    out = tmp_path / "demos"
    meta = write_demos("put_cup_in_tray", 1, out, seed=4, cfg=DemoConfig(expert_dt=0.2, max_seconds=8.0))
    assert len(meta["episodes"]) == 1 and meta["episodes"][0]["episode_index"] == 0
    assert len(validated) > 100  # the demonstrator's commands went through the runtime's safety layer
    code = (
        "import sys, json, numpy as np\n"
        "sys.modules['pybullet'] = None\n"  # any import of the simulator would fail
        "from edgebridge.datasets.lerobot_v3 import LeRobotReader\n"
        f"ds = LeRobotReader(r'{out}')\n"
        "meta = json.load(open(ds.root / 'meta/edgebridge.json'))\n"
        "ep = ds.episode(0)\n"
        "T = len(ep['index'])\n"
        "assert ds.fps == 5 and ds.info['codebase_version'] == 'v3.0'\n"
        "assert ep['observation.cloud'].shape == (T, meta['n_points'], 3) and ep['action'].shape == (T, 8)\n"
        "assert ep['observation.guidance'].shape == (T, 17, 8) and ep['observation.joints'].shape == (T, 7)\n"
        "assert np.all(ep['observation.cloud_n_valid'] > 100)\n"
        "rgb = ds.frames(0, 'observation.images.front')\n"
        "assert rgb.shape == (T, 240, 320, 3) and rgb.std() > 5\n"
        "print(T, meta['episodes'][0]['success'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    T = int(res.stdout.split()[0])
    assert T >= 20
    from edgebridge.datasets.lerobot_v3 import LeRobotReader

    ep = LeRobotReader(out).episode(0)
    (arrays,) = recorded
    # the expert's actions start near the arm's current pose (it tracks them)
    assert np.median(np.linalg.norm(ep["action"][:, :3] - ep["observation.state"][:, :3], axis=1)) < 0.05
    # the demonstrator's whole chunk is the next steps' recorded actions (how training rebuilds it); not at the
    # first step, which comes one control tick off the others' time grid, nor past a cut-off episode's end
    idx = np.minimum(np.arange(T)[:, None] + np.arange(16)[None, :], T - 1)
    inside = T if arrays["success"] else T - 15
    np.testing.assert_allclose(ep["action"][idx][1:inside], arrays["action"][1:inside], atol=1e-5)
    assert np.abs(ep["action"][idx][0] - arrays["action"][0])[:, :3].max() < 0.005
    # every cloud lies in the region of interest around the (noisy) guidance's goal at its step
    from edgebridge.runtime.expert.features import CloudROI

    roi = CloudROI.from_dict(meta["cloud_roi"])
    for i in range(0, T, 5):
        lo, hi = roi.bounds(ep["observation.goal"][i, :3], meta["workspace_bounds"], meta["cloud_roi_margin_m"])
        pts = ep["observation.cloud"][i, :ep["observation.cloud_n_valid"][i]]
        assert np.all(pts >= lo - 1e-4) and np.all(pts <= hi + 1e-4), i
    # a second run replaces the set; a directory holding something else is refused
    write_demos("put_cup_in_tray", 1, out, seed=5, cfg=DemoConfig(expert_dt=0.2, max_seconds=2.0))
    assert LeRobotReader(out).episodes[0]["length"] < T
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a demonstration set"):
        write_demos("put_cup_in_tray", 1, tmp_path / "other", seed=4)


def test_perturbed_demonstrator_records_the_clean_chunk_and_spares_the_contacts():
    from edgebridge.contracts import ArmState, Guidance, Pose
    from edgebridge.runtime.ik_expert import IKExpert
    from edgebridge.sim.demos import PerturbedDemonstrator

    t = np.linspace(0.0, 6.0, 61)
    pos = np.stack([0.3 + 0.02 * t, np.zeros_like(t), 0.3 - 0.03 * t], axis=1)
    grip = np.where(t < 3.0, 1.0, 0.0)  # a grasp at t = 3 s
    g = Guidance(t, pos, np.tile([1.0, 0.0, 0.0, 0.0], (61, 1)), grip, stamp_ns=10**9)
    demo = PerturbedDemonstrator(IKExpert(), 0.02, 1.0, 1.0, np.random.default_rng(0))
    state = ArmState(np.zeros(7), Pose(pos[10], np.array([1.0, 0.0, 0.0, 0.0])), 1.0, stamp_ns=2 * 10**9)
    executed = demo.act(None, state, g)
    clean = IKExpert().act(None, state, g)
    np.testing.assert_array_equal(demo.last_clean.poses, clean.poses)
    assert not np.allclose(executed.poses[:, :3], clean.poses[:, :3])  # the execution is perturbed
    np.testing.assert_array_equal(executed.poses[:, 3:], clean.poses[:, 3:])  # orientation and gripper are not
    off = demo.offset(np.linspace(0.0, 6.0, 601))
    assert np.all(np.abs(off) <= 0.04 + 1e-12)
    near = np.abs(np.linspace(0.0, 6.0, 601) - 3.0) <= 0.3
    assert np.all(off[near] == 0.0) and np.abs(off[~near]).max() > 0.005
