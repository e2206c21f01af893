"""Shared fixtures: synthetic demonstrations, a tiny trained run and its ONNX export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

TINY = dict(cloud_channels=(16, 32), cloud_feat=32, obs_feat=32, step_embed=16, down_dims=(16, 32))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from synth import write_demos

    return write_demos(tmp_path_factory.mktemp("demos"), episodes=4, seed=0)


@pytest.fixture(scope="session")
def tiny_run(demo_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from edgebridge.train.appf import StageConfig, Trainer, TrainConfig
    from edgebridge.train.model import ExpertNetConfig

    cfg = TrainConfig(model=ExpertNetConfig(**TINY), stage1=StageConfig(4, 64, 1e-3, False),
                      stage2=StageConfig(4, 32, 1e-3, True), eval_every=2, ckpt_every=2, warmup=2,
                      val_fraction=0.25)
    run = tmp_path_factory.mktemp("run")
    Trainer([demo_dir], run, cfg, command="pytest tiny run").run()
    return run


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    from edgebridge.export.expert import export_from_run

    return export_from_run(tiny_run, tmp_path_factory.mktemp("onnx"), k=2)


def observation(seed: int = 5, step: int = 5):
    """(cloud, state, guidance) contracts from one synthetic episode step, stamps consistent."""
    from synth import make_episode

    from edgebridge.contracts import ArmState, Guidance, PointCloud, Pose

    ep = make_episode(np.random.default_rng(seed))
    t0 = 10**9
    cloud = PointCloud(ep["cloud"][step], n_valid=int(ep["cloud_n_valid"][step]))
    state = ArmState(np.zeros(7), Pose(ep["ee_pose"][step, :3], ep["ee_pose"][step, 3:]), float(ep["gripper"][step]),
                     stamp_ns=t0 + int(round(ep["t"][step] * 1e9)))
    g = ep["guidance"]
    guidance = Guidance(ep["guidance_t"], g[:, :3], g[:, 3:7], g[:, 7], stamp_ns=t0)
    return cloud, state, guidance, ep
