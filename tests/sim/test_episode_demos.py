"""End to end: an oracle + plain-IK episode, the CLI, and demonstrations read back without pybullet."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgebridge.sim.episode import run_episode


def test_put_cup_in_tray_oracle_ik_succeeds(tmp_path):
    r = run_episode("put cup in tray", seed=0, record_dir=tmp_path / "rec")
    assert r.success, r.reason
    assert r.task == "put_cup_in_tray" and 3 < r.duration < 20
    assert (tmp_path / "rec" / "camera.gif").stat().st_size > 1000
    lines = (tmp_path / "rec" / "steps.jsonl").read_text().splitlines()
    assert len(lines) > 20 and "ee" in json.loads(lines[0])


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
    from edgebridge.sim.demos import DemoConfig, write_demos

    validated = []
    orig = SafetyLayer.validate
    monkeypatch.setattr(SafetyLayer, "validate", lambda self, *a, **kw: validated.append(1) or orig(self, *a, **kw))
    meta = write_demos("put_cup_in_tray", 1, tmp_path, seed=4, cfg=DemoConfig(expert_dt=0.2, max_seconds=8.0))
    assert len(meta["episodes"]) == 1
    assert len(validated) > 100  # the demonstrator's commands went through the runtime's safety layer
    code = (
        "import sys, json, numpy as np\n"
        "sys.modules['pybullet'] = None\n"  # any import of the simulator would fail
        f"d = r'{tmp_path}'\n"
        "meta = json.load(open(d + '/meta.json'))\n"
        "z = np.load(d + '/' + meta['episodes'][0]['file'])\n"
        "T = z['t'].shape[0]\n"
        "assert z['cloud'].shape == (T, meta['n_points'], 3) and z['cloud'].dtype == np.float32\n"
        "assert z['action'].shape == (T, 16, 8) and z['goal'].shape == (T, 8)\n"
        "assert z['guidance'].shape[1] == 8 and z['joints'].shape == (T, 7)\n"
        "assert np.all(z['cloud_n_valid'] > 100)\n"
        "print(T, bool(z['success']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    T = int(out.stdout.split()[0])
    assert T >= 20
    z = np.load(tmp_path / meta["episodes"][0]["file"])
    # the expert's actions start near the arm's current pose (it tracks them)
    assert np.median(np.linalg.norm(z["action"][:, 0, :3] - z["ee_pose"][:, :3], axis=1)) < 0.05
    # every cloud lies in the region of interest around the (noisy) guidance's goal at its step
    from edgebridge.contracts import Guidance
    from edgebridge.runtime.expert.features import CloudROI, goal_position

    roi = CloudROI.from_dict(meta["cloud_roi"])
    g = z["guidance"]
    gd = Guidance(z["guidance_t"], g[:, :3], g[:, 3:7], g[:, 7])
    for i in range(0, len(z["t"]), 5):
        lo, hi = roi.bounds(goal_position(gd, z["t"][i]), meta["workspace_bounds"], meta["cloud_roi_margin_m"])
        pts = z["cloud"][i, :z["cloud_n_valid"][i]]
        assert np.all(pts >= lo - 1e-4) and np.all(pts <= hi + 1e-4), i


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
