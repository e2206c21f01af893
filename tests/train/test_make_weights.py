"""make_weights reuses recorded demonstrations (a LeRobot data set with its ``meta/edgebridge.json``) only when
they are the ones asked for (count, seed, config)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict

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
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: seen.append(cmd))
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
    assert seen == [demo_seed]
