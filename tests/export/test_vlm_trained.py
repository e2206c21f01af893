"""edge-export vlm --trained: a tiny planner VLM trained on a few scenes -> GGUF LM + mmproj, quantised,
embeddings and greedy plans checked against torch; the GGUF planner runs it on frames of other sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

from edgebridge.export.vlm_trained import export_trained, parity  # noqa: E402
from edgebridge.train.planner.model import VLMConfig  # noqa: E402
from edgebridge.train.planner.trainer import PlannerTrainConfig, load_trained, train  # noqa: E402


@pytest.fixture(scope="module")
def overfit_run(pointing_data, tmp_path_factory):
    """A tiny VLM that has memorised the training scenes, so its greedy plans parse."""
    run = tmp_path_factory.mktemp("planner-run")
    cfg = PlannerTrainConfig(data=str(pointing_data), steps=300, batch=4, lr=3e-3, warmup=20, eval_every=300,
                             eval_n=2, save_every=300, threads=2,
                             model=VLMConfig(vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                                             lm_width=256, lm_layers=1, lm_heads=4, lm_ff=256))
    train(run, cfg)
    return run


@pytest.mark.slow
def test_export_trained_files_and_parity(overfit_run, pointing_data, tmp_path):
    out = tmp_path / "gguf"
    rep = export_trained(overfit_run, out, quants=("Q8_0",), n_plans=0)
    for name in ("vlm-f32.gguf", "vlm-Q8_0.gguf", "vlm-mmproj-f16.gguf", "vlm-mmproj-Q8_0.gguf", "parity.json"):
        assert (out / name).is_file(), name
    assert rep["embed_max_rel_diff"] < rep["embed_rtol"]
    assert json.loads((out / "parity.json").read_text())["files"]["vlm-Q8_0.gguf"] > 0
    # greedy plans on the memorised training scenes: llama.cpp (grammar, temperature 0) == torch
    model, tok = load_trained(overfit_run)
    res = parity({"f32": out / "vlm-f32.gguf"}, out / "vlm-mmproj-f16.gguf", model, tok, pointing_data,
                 n_plans=4, n_embed=1, split="train")
    assert res["torch_parsed"] >= 1, res
    assert res["plans_identical_f32"] == res["torch_parsed"], res["mismatches_f32"]


def test_planner_resizes_other_frame_sizes(overfit_run, tmp_path):
    """A 640x480 frame is resized to the model's 320x240 and anchors come back in 640x480 pixels."""
    from edgebridge.contracts import RGBD, Intrinsics
    from edgebridge.export.vlm_gguf import write_lm, write_mmproj
    from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig

    model, tok = load_trained(overfit_run)
    lm, proj = write_lm(model, tok, tmp_path / "lm.gguf"), write_mmproj(model, tmp_path / "mm.gguf")
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    frame = RGBD(rgb, np.ones((480, 640), np.float32), Intrinsics(640, 480, 500.0, 500.0, 319.5, 239.5))
    with GGUFPlanner(GGUFPlannerConfig(model_path=str(lm), mmproj_path=str(proj), chat_handler="mtmd",
                                       n_ctx=1024, n_threads=1)) as planner:
        assert planner.plan_size == (320, 240)
        plan = planner.plan(frame, "put the cup in the tray")
    assert all(0 <= a.u < 640 and 0 <= a.v < 480 for a in plan.anchors)


def test_export_trained_missing_run_is_explained(tmp_path, capsys):
    from edgebridge.export.cli import main

    assert main(["vlm", "--trained", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "planner run directory" in capsys.readouterr().err
