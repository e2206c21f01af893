"""``edge-run --record DIR --rerun FILE.rrd`` end to end in the simulator: the run is one LeRobot data set (an
episode per episode run, a frame per expert step, the features of docs/datasets.md, decodable video) and one
Rerun recording (the entity paths and counts of runtime/rerun_view.py); ``edge-sim run --rerun`` writes one too;
bad --record / --rerun arguments stop the run before a device opens."""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest

from edgebridge.runtime import cli
from edgebridge.runtime import devices as devmod

ORACLE = ["--planner", "oracle", "--expert", "ik"]
PER_STEP = ["/camera/image", "/world/chunk", "/world/correction", "/world/ee", "/world/ee_path", "/plots/gripper",
            "/plots/gripper_target", "/plots/correction_mm"]
PER_PLAN = ["/camera/image/anchors", "/plan", "/world/waypoints", "/world/spline"]


def _needs(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m, reason=f"{m} not installed (extras 'sim', 'dataset', 'rerun')")


def test_edge_run_records_one_lerobot_data_set_and_one_rerun_recording(tmp_path, capsys):
    _needs("pybullet", "pyarrow", "av", "rerun")
    from edgebridge.datasets.lerobot_v3 import LeRobotReader
    from edgebridge.runtime.rerun_view import read_recording

    ds_dir, rrd = tmp_path / "data", tmp_path / "run.rrd"
    rc = cli.main([*ORACLE, "--episodes", "2", "--max-seconds", "2", "--record", str(ds_dir), "--rerun", str(rrd),
                   "--profile", str(tmp_path / "profile")])
    out = capsys.readouterr().out
    assert rc == 1 and out.count("time limit reached") == 2  # 2 s is too short for the task: both end on the limit
    assert f"LeRobot data set: {ds_dir} (2 episodes)" in out and f"Rerun recording: {rrd}" in out

    ds = LeRobotReader(ds_dir)
    lengths = [e["length"] for e in ds.episodes]
    assert len(ds) == 2 and all(n > 10 for n in lengths), lengths  # ~20 expert steps at 10 Hz in 2 s
    assert ds.fps == 10 and ds.robot_type == "sim_panda" and ds.tasks == ["put cup in tray"]
    feats = {k: (ft["dtype"], ft["shape"]) for k, ft in ds.features.items()}
    assert feats["observation.images.front"] == ("video", (240, 320, 3))
    for key, shape in (("observation.state", (8,)), ("action", (8,)), ("observation.joints", (7,)),
                       ("observation.guidance", (17, 8)), ("observation.goal", (8,))):
        assert feats[key] == ("float32", shape), key
    assert feats["observation.plan"][0] == "string"
    assert "observation.cloud" not in feats  # the IK expert takes no cloud, so none is recorded
    for i, n in enumerate(lengths):
        ep = ds.episode(i)
        assert (ep["episode_index"] == i).all() and ep["frame_index"].tolist() == list(range(n))
        # the IK expert follows the guidance: each action is the recorded guidance window's first pose
        np.testing.assert_allclose(ep["action"][:, :3], ep["observation.guidance"][:, 0, :3], atol=1e-4)
        assert np.linalg.norm(ep["observation.state"][-1, :3] - ep["observation.state"][0, :3]) > 0.05  # it moved
        plan = json.loads(ep["observation.plan"][0])
        assert len(plan["anchors"]) == 2 and all(len(a["point_2d"]) == 2 for a in plan["anchors"])
        rgb = ds.frames(i, "observation.images.front")
        assert rgb.shape == (n, 240, 320, 3) and rgb.std() > 10
    edge = json.loads((ds_dir / "meta" / "edgebridge.json").read_text())
    assert [(e["episode_index"], e["seed"], e["success"], e["reason"], e["frames"]) for e in edge["episodes"]] == \
        [(0, 0, False, "time limit reached", lengths[0]), (1, 1, False, "time limit reached", lengths[1])]
    assert np.asarray(edge["T_base_cam"]).shape == (4, 4) and edge["action_dt"] == 0.1

    rec = read_recording(rrd)
    counts = {k: len(v) for k, v in rec.items()}
    for entity in PER_STEP:  # every expert step of both episodes, one timeline
        assert counts.get(entity) == sum(lengths), (entity, counts)
    for entity in PER_PLAN:  # put_cup_in_tray is one sub-task: one plan per episode
        assert counts.get(entity) == 2, (entity, counts)
    assert counts["/episode"] == 4 and "/world/cloud" not in counts
    assert counts.get("/profile/expert") == sum(lengths) and counts.get("/profile/planner") == 2  # --profile spans
    times = [t for t, _ in rec["/world/ee"]]
    assert times == sorted(times) and times[lengths[0]] > times[lengths[0] - 1] + 1.0  # the second episode follows


def test_edge_sim_run_writes_a_rerun_recording(tmp_path, capsys):
    _needs("pybullet", "rerun")
    from edgebridge.runtime.rerun_view import read_recording
    from edgebridge.sim.cli import main as sim_main

    rrd = tmp_path / "sim.rrd"
    assert sim_main(["run", "--task", "put_cup_in_tray", "--max-seconds", "1.5", "--rerun", str(rrd)]) == 1
    assert f"Rerun recording: {rrd}" in capsys.readouterr().out
    counts = {k: len(v) for k, v in read_recording(rrd).items()}
    assert counts.get("/plan") == 1 and counts.get("/episode") == 2
    assert counts.get("/camera/image", 0) > 5 and counts["/camera/image"] == counts.get("/world/chunk")


def test_a_signal_mid_run_still_leaves_a_readable_data_set_and_recording(tmp_path, capsys, monkeypatch):
    _needs("pybullet", "pyarrow", "av", "rerun")
    from edgebridge.datasets.lerobot_v3 import LeRobotReader
    from edgebridge.runtime.rerun_view import read_recording

    said = cli._say

    def say(msg: str) -> None:  # SIGINT 0.8 s into the second episode
        said(msg)
        if "episode 2/3" in msg:
            threading.Timer(0.8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

    monkeypatch.setattr(cli, "_say", say)
    ds_dir, rrd = tmp_path / "data", tmp_path / "run.rrd"
    rc = cli.main([*ORACLE, "--episodes", "3", "--max-seconds", "3", "--record", str(ds_dir), "--rerun", str(rrd)])
    out = capsys.readouterr().out
    assert rc == 130 and "episode 3/3" not in out, out
    ds = LeRobotReader(ds_dir)  # finalized: both episodes that ran are in it, the interrupted one marked so
    edge = json.loads((ds_dir / "meta" / "edgebridge.json").read_text())
    assert len(ds) == 2 and [e["reason"] for e in edge["episodes"]] == ["time limit reached", "SIGINT received"]
    assert len(ds.frames(1, "observation.images.front")) == ds.episodes[1]["length"] > 0
    assert len(read_recording(rrd)["/episode"]) == 4


@pytest.fixture
def no_devices(monkeypatch):
    def fail(cfg, choices):
        raise AssertionError("a device was opened")

    monkeypatch.setattr(devmod, "build_devices", fail)


def test_a_used_record_directory_is_refused_before_a_device_opens(tmp_path, capsys, no_devices):
    (tmp_path / "old.txt").write_text("x")
    assert cli.main([*ORACLE, "--record", str(tmp_path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--record" in err and "not an empty directory" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_a_rerun_target_that_is_no_rrd_file_is_refused(tmp_path, capsys, no_devices):
    _needs("rerun")
    assert cli.main([*ORACLE, "--rerun", str(tmp_path / "run.txt")]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected a FILE.rrd or 'spawn'" in err, err
