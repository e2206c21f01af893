"""benchmarks/expert_novelty.py: phases of an episode, and novelty scores on a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# appended, not first: benchmarks/kernels.py must not shadow the `kernels` package (transformers imports it)
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import expert_novelty  # noqa: E402


def test_episode_phases_split_each_episode_at_its_first_grasp():
    episode = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    gripper = np.array([1.0, 1.0, 0.6, 0.6, 1.0, 1.0, 0.0, 0.0])
    assert expert_novelty.episode_phases(episode, gripper).tolist() == [0, 0, 1, 1, 2, 0, 1, 1]
    # never closed: the whole episode is the approach
    assert expert_novelty.episode_phases(np.zeros(3, int), np.ones(3)).tolist() == [0, 0, 0]


def _boxes_instead_of_cups(src: Path, dst: Path) -> Path:
    """The same episodes with every cloud replaced by a solid 20 cm box of points around the first one."""
    dst.mkdir()
    (dst / "meta.json").write_text((src / "meta.json").read_text())
    rng = np.random.default_rng(1)
    for f in sorted(src.glob("episode_*.npz")):
        ep = dict(np.load(f))
        centre = ep["cloud"][:, :1, :]
        ep["cloud"] = (centre + rng.uniform(-0.1, 0.1, ep["cloud"].shape)).astype(np.float32)
        np.savez(dst / f.name, **ep)
    return dst


def test_novelty_flags_foreign_clouds_and_not_the_validation_episodes(tiny_run, demo_dir, tmp_path):
    from helpers.synth import write_demos

    demos = write_demos(tmp_path / "cups", episodes=16, seed=3)  # more episodes of the tiny run's kind
    other = _boxes_instead_of_cups(demo_dir, tmp_path / "boxes")
    out = tmp_path / "novelty.json"
    assert expert_novelty.main(["--run", str(tiny_run), "--demos", str(demos), "--other", str(other),
                                "--shrink", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    phases = [k.split(".")[-1] for k in res if k.startswith("samples.boxes.")]
    assert phases and set(phases) <= set(expert_novelty.PHASES)
    for p in phases:
        assert res[f"novel_mahalanobis.boxes.{p}"] > 0.5
    val = [p for p in expert_novelty.PHASES if f"samples.validation.{p}" in res]
    n = sum(res[f"samples.validation.{p}"] for p in val)
    novel = sum(res[f"novel_mahalanobis.validation.{p}"] * res[f"samples.validation.{p}"] for p in val) / n
    assert val and novel < 0.2  # episodes of the same kind, never trained on, are mostly not novel


def test_novelty_needs_a_finished_run(tmp_path, demo_dir):
    with pytest.raises(SystemExit):
        expert_novelty.main(["--run", str(tmp_path), "--demos", str(demo_dir)])
