"""make_weights reuses recorded demonstrations (a LeRobot data set with its ``meta/edgebridge.json``) only when
they are the ones asked for (count, seed, config); records the tasks ``--jobs`` at a time, one thread each;
trains in-process, or under torchrun with ``--nproc`` > 1."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from edgebridge.sim.demos import DemoConfig
from edgebridge.train import make_weights


def _meta(out):
    return out / "meta" / "edgebridge.json"


@pytest.fixture
def recorded(tmp_path):
    """What ``edge-sim demos --episodes 3 --seed 0`` leaves: its record lists the episodes, the seed, the config."""
    from edgebridge.datasets.edge_features import write_edge_meta

    out = tmp_path / "put_cup_in_tray"
    write_edge_meta(out, {"kind": "demonstrations", "seed": 0, "config": asdict(DemoConfig()),
                          "episodes": [{"episode_index": i, "task": "put_cup_in_tray", "seed": i, "success": True}
                                       for i in range(3)]})
    return out


@pytest.fixture
def calls(monkeypatch):
    seen: list[list[str]] = []

    def run(cmd, check, env=None):
        assert check and env["OMP_NUM_THREADS"] == "1"  # several edge-sim processes share the cores
        seen.append(cmd)

    monkeypatch.setattr(subprocess, "run", run)
    return seen


def test_same_count_seed_and_config_are_reused(recorded, calls):
    assert make_weights._demos("put_cup_in_tray", 3, recorded, 0) == recorded
    assert calls == []
    assert _meta(recorded).exists()


@pytest.mark.parametrize("episodes, seed", [(3, 1), (2, 0), (4, 0)])
def test_another_seed_or_count_records_again(recorded, calls, episodes, seed):
    make_weights._demos("put_cup_in_tray", episodes, recorded, seed)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[cmd.index("--seed") + 1] == str(seed) and cmd[cmd.index("--episodes") + 1] == str(episodes)
    assert cmd[cmd.index("--out") + 1] == str(recorded)  # edge-sim demos replaces the stale set there


def test_another_demo_config_records_again(recorded, calls):
    meta = json.loads(_meta(recorded).read_text())
    meta["config"]["execution_noise_m"] = 0.0
    _meta(recorded).write_text(json.dumps(meta))
    make_weights._demos("put_cup_in_tray", 3, recorded, 0)
    assert len(calls) == 1


def test_a_former_npz_set_is_recorded_again(tmp_path, calls):
    out = tmp_path / "put_cup_in_tray"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"seed": 0, "config": asdict(DemoConfig())}))
    for i in range(3):
        (out / f"episode_{i:04d}.npz").write_bytes(b"")
    make_weights._demos("put_cup_in_tray", 3, out, 0)  # the same demonstrations, in the format training left
    assert len(calls) == 1


class _Stop(Exception):
    pass


@pytest.mark.parametrize("argv, demo_seed", [(["--seed", "1"], 1), (["--seed", "1", "--demo-seed", "0"], 0)])
def test_demo_seed_defaults_to_the_training_seed(monkeypatch, tmp_path, argv, demo_seed):
    pytest.importorskip("torch")
    seen = []

    def record(task, episodes, out, seed):
        seen.append(seed)
        raise _Stop

    monkeypatch.setattr(make_weights, "_demos", record)
    with pytest.raises(_Stop):
        make_weights.main([*argv, "--work", str(tmp_path), "--out", str(tmp_path / "out")])
    assert seen and set(seen) == {demo_seed}


def test_defaults(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    seen = {}

    def record(tasks, episodes, work, seed, jobs):
        seen.update(tasks=tasks, episodes=episodes, jobs=jobs)
        return [], {}

    def train(demo_dirs, run_dir, cfg, *, nproc, device, command):
        seen.update(cfg=cfg, nproc=nproc)
        raise _Stop

    monkeypatch.setattr(make_weights, "record_demos", record)
    monkeypatch.setattr(make_weights, "train", train)
    with pytest.raises(_Stop):
        make_weights.main(["--work", str(tmp_path), "--out", str(tmp_path / "out")])
    assert seen["tasks"] == ["put_cup_in_tray", "put_cube_then_cup_in_tray", "stack_red_on_blue", "clear_table",
                             "clear_table_obstacle"]
    assert (seen["episodes"], seen["jobs"], seen["nproc"]) == (40, 2, 1)
    assert seen["cfg"].clean_plan_fraction == 0.25 and seen["cfg"].threads == 2


def test_tasks_are_recorded_jobs_at_a_time_in_task_order(monkeypatch, tmp_path):
    lock, running, peak = threading.Lock(), [0], [0]

    def demos(task, episodes, out, seed):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return out

    monkeypatch.setattr(make_weights, "_demos", demos)
    tasks = ["a", "b", "c", "d", "e"]
    dirs, timings = make_weights.record_demos(tasks, 3, tmp_path, 0, jobs=2)
    assert dirs == [tmp_path / "demos" / t for t in tasks] and peak[0] == 2
    assert list(timings) == [f"demos_{t}_s" for t in tasks]
    make_weights.record_demos(tasks, 3, tmp_path, 0, jobs=1)
    assert peak[0] == 2 and running[0] == 0


def test_a_failed_task_stops_the_recording(monkeypatch, tmp_path):
    started = []

    def demos(task, episodes, out, seed):
        started.append(task)
        if task == "a":
            raise RuntimeError("edge-sim demos failed")
        return out

    monkeypatch.setattr(make_weights, "_demos", demos)
    with pytest.raises(RuntimeError, match="failed"):
        make_weights.record_demos(["a", "b"], 3, tmp_path, 0, jobs=1)
    assert started == ["a"]


def test_nproc_trains_under_torchrun(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from edgebridge.train.appf import TrainConfig

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check, env: seen.append((cmd, env)))
    args = make_weights.argparse.Namespace(nproc=2, device="cpu", seed=3, goal_noise=0.1, plan_shift=0.03,
                                           arm_shift=0.02, clean_plans=0.25, stage1_steps=5, stage1_batch=64,
                                           stage2_steps=6, stage2_batch=32)
    cfg = make_weights.train_config(args)
    # the same config as in-process (a run resumes under either); the two processes share the threads
    assert cfg == make_weights.train_config(make_weights.argparse.Namespace(**{**vars(args), "nproc": 1}))
    assert make_weights.threads_per_process(cfg, 2, "cpu") == 1 and make_weights.threads_per_process(cfg, 1, "cpu") == 2
    demos = [tmp_path / "demos" / "a", tmp_path / "demos" / "b"]
    make_weights.train(demos, tmp_path / "run", cfg, nproc=2, device="cpu", command="make weights NPROC=2")
    (cmd, env), = seen
    i = cmd.index("--standalone")
    assert cmd[i:i + 5] == ["--standalone", "--nproc-per-node", "2", "-m", "edgebridge.train.appf_run"]
    assert cmd[cmd.index("--demos") + 1:] == [str(d) for d in demos]
    assert cmd[cmd.index("--run-dir") + 1] == str(tmp_path / "run") and env["OMP_NUM_THREADS"] == "1"
    # the processes train the very config an in-process run would
    config = Path(cmd[cmd.index("--config") + 1])
    assert TrainConfig.from_dict(json.loads(config.read_text())) == cfg
