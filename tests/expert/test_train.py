"""APPF training: both stages run, logs and checkpoints are written, a run resumes exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY  # noqa: E402

from edgebridge.train.appf import StageConfig, Trainer, TrainConfig, load_final  # noqa: E402
from edgebridge.train.data import DemoError, load_demos  # noqa: E402
from edgebridge.train.model import ExpertConfig  # noqa: E402


def _cfg(**kw) -> TrainConfig:
    base = dict(model=ExpertConfig(**TINY), stage1=StageConfig(4, 32, 1e-3, False),
                stage2=StageConfig(4, 16, 1e-3, True), eval_every=2, ckpt_every=2, warmup=2, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_logs_checkpoints_and_metrics(tiny_run):
    for name in ("config.json", "norm.json", "log.csv", "log.json", "curves.png", "ckpt.pt", "final.pt", "metrics.json"):
        assert (tiny_run / name).exists(), name
    rows = list(csv.DictReader(open(tiny_run / "log.csv")))
    assert [int(r["stage"]) for r in rows] == [1] * 4 + [2] * 4
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert sum(1 for r in rows if r["val_loss"]) == 4  # every eval_every steps in both stages
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["val_pos_err_mm"] > 0 and metrics["parameters"] > 0
    net, rec = load_final(tiny_run)
    assert rec["command"] == "pytest tiny run" and rec["spec"]["horizon"] == 16 and "cloud" in rec["norm"]


def test_resume_continues_exactly(demo_dir, tmp_path):
    cfg = _cfg()
    whole = tmp_path / "whole"
    Trainer([demo_dir], whole, cfg).run()
    # stop after 2 of 4 stage-1 steps (a checkpoint is written there), then rerun the same command
    part = tmp_path / "part"
    first = Trainer([demo_dir], part, cfg)
    first._run_stage(1, StageConfig(2, 32, 1e-3, False))
    second = Trainer([demo_dir], part, cfg)
    assert (second.stage, second.step) == (1, 2)
    second.run()
    a, _ = load_final(whole)
    b, _ = load_final(part)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=f"parameter {name} differs after resume")
    rows = json.loads((part / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in rows] == [(1, i) for i in range(1, 5)] + [(2, i) for i in range(1, 5)]


def test_resume_refuses_a_different_config(demo_dir, tmp_path):
    Trainer([demo_dir], tmp_path, _cfg())._save()
    with pytest.raises(ValueError, match="different training config"):
        Trainer([demo_dir], tmp_path, _cfg(goal_noise=0.5))


def test_demo_errors_name_the_file(tmp_path, demo_dir):
    with pytest.raises(DemoError, match="meta.json: not found"):
        load_demos(tmp_path)
    (tmp_path / "meta.json").write_text('{"n_points": 512}')
    with pytest.raises(DemoError, match="no episode_"):
        load_demos(tmp_path)
    ep = dict(np.load(next(demo_dir.glob("episode_*.npz"))))
    ep["action"] = ep["action"][:, :8]
    np.savez(tmp_path / "episode_000000.npz", **ep)
    with pytest.raises(DemoError, match=r"episode_000000.npz: action has shape"):
        load_demos(tmp_path)


def test_cli_parses_and_builds_config():
    from edgebridge.train.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(["--demos", "d", "--run", "r", "--stage1-steps", "7", "--goal-noise", "0.2",
                                      "--tiny"])
    cfg = config_from_args(args)
    assert cfg.stage1.steps == 7 and not cfg.stage1.use_cloud and cfg.stage2.use_cloud
    assert cfg.goal_noise == 0.2 and cfg.stage2.batch == 256
