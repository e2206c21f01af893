"""APPF training under torchrun (DDP, gloo): two ranks stay in sync, rank 0 alone writes the run, the batch
is global, a run resumes exactly; alone the trainer records world size 1 and the time of each stage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.train import distributed as ddp  # noqa: E402
from edgebridge.train.appf import StageConfig, Trainer, TrainConfig, load_final  # noqa: E402
from edgebridge.train.model import ExpertNetConfig  # noqa: E402

WORKER = Path(__file__).with_name("ddp_appf_worker.py")


def _cfg(**kw) -> TrainConfig:
    base = dict(model=ExpertNetConfig(**TINY), stage1=StageConfig(4, 16, 1e-3, False),
                stage2=StageConfig(2, 8, 1e-3, True), eval_every=100, ckpt_every=100, warmup=2, val_fraction=0.25,
                eval_k=2, threads=1, plan_shift_m=0.02, clean_plan_fraction=0.25, arm_shift_m=0.01)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("batch, world, share", [(1024, 1, 1024), (1024, 2, 512), (256, 4, 64), (7, 2, 3), (2, 2, 1)])
def test_the_global_batch_is_split_over_the_ranks(batch, world, share):
    assert ddp.shard_batch(batch, world) == share


def test_a_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        ddp.shard_batch(3, 4)


def test_rank_seeds():
    assert ddp.rank_seed(7, 0, 1) == 7  # alone: the config's seed, as before DDP
    seeds = {ddp.rank_seed(7, r, 4) for r in range(4)}
    assert len(seeds) == 4 and seeds == {ddp.rank_seed(7, r, 4) for r in range(4)}


def test_backend_and_device_per_rank(monkeypatch):
    assert ddp.backend_for("cpu") == "gloo" and ddp.backend_for("cuda:1") == "nccl"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.local_device("cuda") == "cuda" and ddp.rank_world() == (0, 1)
    assert ddp.init_from_env("cpu") is False  # not under torchrun: no process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp.local_device("cuda") == "cuda:1"
    assert ddp.local_device("cuda:0") == "cuda:0" and ddp.local_device("cpu") == "cpu"


def test_device_name():
    name = ddp.device_name("cpu")
    assert name and f"({os.cpu_count()} cores)" in name


def test_alone_the_record_has_world_size_one_and_stage_times(tiny_run):
    _, rec = load_final(tiny_run)
    m = rec["metrics"]
    assert m["world_size"] == 1 and m["train_device"] == "cpu" and m["train_device_name"]
    assert m["stage1_wall_s"] > 0 and m["stage2_wall_s"] > 0
    assert m["stage1_wall_s"] + m["stage2_wall_s"] >= m["train_time_s"] - 0.2  # wall includes evaluations


def test_appf_run_bad_config_is_one_line_and_exit_2(demo_dir, tmp_path, capsys):
    from edgebridge.train import appf_run

    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({**_cfg().to_dict(), "goal_noise": -1}))
    assert appf_run.main(["--config", str(bad), "--demos", str(demo_dir), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m edgebridge.train.appf_run:") and "goal_noise" in err and "\n" not in err


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(demo_dir, tmp_path):
    cfg = _cfg()
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg.to_dict()))
    # a checkpoint written by one process, for the two ranks to resume
    Trainer([demo_dir], tmp_path / "single", cfg)._run_stage(1, StageConfig(2, 16, 1e-3, False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           str(demo_dir), str(tmp_path), str(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]

    for seen in ranks:  # each rank joined a group of two and left it when the run ended
        assert seen["world"] == 2 and seen["owned_group"] and seen["group_destroyed"]
        assert seen["destroyed_after_whole"] == seen["destroyed"] == ["destroy"]
        assert seen["encoder_unchanged_in_stage1"]  # stage 1 does not touch the cloud encoder, as alone
        assert seen["resumed_at"] == [1, 2] and seen["single_resumed_at"] == [1, 2]
    # DDP keeps the ranks' parameters identical, and a stopped run resumes exactly
    assert ranks[0]["whole"] == ranks[1]["whole"] == ranks[0]["part"] == ranks[1]["part"]
    assert ranks[0]["single"] == ranks[1]["single"]
    # rank 0 alone wrote the run directories; the others return no metrics
    assert ranks[1]["writes"] == [] and ranks[1]["metrics"] == {}
    names = {Path(p).name for p in ranks[0]["writes"]}
    assert {"config.json", "norm.json", "ckpt.pt.tmp", "final.pt", "metrics.json", "log.json"} <= names

    net, rec = load_final(tmp_path / "whole")
    m = rec["metrics"]
    assert m == ranks[0]["metrics"] and m["world_size"] == 2 and m["train_device_name"]
    assert m["stage1_wall_s"] > 0 and m["stage2_wall_s"] > 0
    assert all(math.isfinite(m[k]) for k in ("val_loss", "val_pos_err_mm"))
    rows = json.loads((tmp_path / "whole" / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in rows] == [(1, i) for i in (1, 2, 3, 4)] + [(2, 1), (2, 2)]
    assert all(math.isfinite(r["loss"]) for r in rows)
    part, _ = load_final(tmp_path / "part")  # the EMA (rank 0's) resumes exactly too
    for (name, a), b in zip(net.state_dict().items(), part.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"EMA parameter {name} differs after resume")
    assert load_final(tmp_path / "single")[1]["metrics"]["world_size"] == 2
