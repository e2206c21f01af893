"""Session fixtures shared by several test directories, each built once and only when a test asks for it.

* ``demo_dir``, ``tiny_run``, ``tiny_onnx``: synthetic demonstrations, a tiny trained expert run and its
  ONNX export (tests/train, tests/export, tests/runtime/expert, tests/benchmarks);
* ``tiny_model``: the tiny random GGUF planner model (tests/runtime/planner, tests/export/test_vlm.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

# The benchmark scripts put benchmarks/ first on sys.path when the tests import them, and
# benchmarks/kernels.py would then shadow the `kernels` package transformers imports (the Hugging Face
# LLaVA tests): bind the package now, before any benchmark is imported.
with contextlib.suppress(ImportError):
    import kernels  # noqa: F401


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from helpers.synth import write_demos

    return write_demos(tmp_path_factory.mktemp("demos"), episodes=4, seed=0)


@pytest.fixture(scope="session")
def tiny_run(demo_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from helpers.tiny_expert import TINY

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    pytest.importorskip("gguf", reason="gguf (extra 'vlm') not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    from edgebridge.export.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf")


@pytest.fixture(scope="session")
def pointing_data(tmp_path_factory) -> Path:
    """A small pointing data set (``edge-sim pointing``): 12 scenes of two tasks, every split present."""
    from edgebridge.sim.pointing import write_pointing_dataset

    out = tmp_path_factory.mktemp("pointing")
    write_pointing_dataset(out, ["put_cup_in_tray", "stack_red_on_blue"], 12, val_frac=0.17, test_frac=0.17)
    return out
