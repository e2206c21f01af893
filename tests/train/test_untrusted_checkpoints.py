"""Checkpoints are data, never code: a checkpoint holding a pickled object whose ``__reduce__`` runs a
function is refused by every loader (expert export and resume, planner resume and export), and the
function never runs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgebridge.train.appf import CheckpointError, load_checkpoint, load_final, plain  # noqa: E402


def _plant(marker: str) -> str:
    """What the payload runs when unpickled: leaves a marker file."""
    Path(marker).write_text("code ran")
    return "pwned"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_plant, (self.marker,))


def plant(path: Path, marker: Path, **state) -> Path:
    """A checkpoint that looks right (the keys a loader wants) but carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "note": Payload(marker)}, path)
    return path


def refused(load, marker: Path, path: Path, exc=CheckpointError) -> str:
    with pytest.raises(exc) as e:
        load()
    assert not marker.exists(), "the pickled payload ran"
    msg = str(e.value)
    assert str(path) in msg and "re-train" in msg and "\n" not in msg, msg
    return msg


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    """The control: loaded the old way (weights_only=False) the same file runs the payload."""
    marker = tmp_path / "marker"
    path = plant(tmp_path / "evil.pt", marker, model={})
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_load_checkpoint_refuses_objects_junk_and_wrong_keys(tmp_path):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "evil.pt", marker, model={})
    msg = refused(lambda: load_checkpoint(path), marker, path)
    assert "_plant" in msg and "could run code" in msg
    legacy = tmp_path / "legacy.pt"  # an old-style plain pickle (torch before the zip format)
    legacy.write_bytes(pickle.dumps({"model": {}, "note": Payload(marker)}, protocol=2))
    refused(lambda: load_checkpoint(legacy), marker, legacy)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    refused(lambda: load_checkpoint(junk), marker, junk)
    ok = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, ok)
    assert "w" in load_checkpoint(ok, ("model",))["model"]
    with pytest.raises(CheckpointError, match="no 'step'"):
        load_checkpoint(ok, ("model", "step"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_plain_keeps_metadata_to_json_types():
    import numpy as np

    assert plain({"a": (1, np.float32(0.5)), "b": np.int64(3)}) == {"a": [1, 0.5], "b": 3}
    with pytest.raises(TypeError, match="Path is not a plain JSON value"):
        plain({"run": Path("x")})


# ----------------------------------------------------------------------------- the action expert

def test_expert_final_and_its_export_refuse_a_payload(tmp_path, capsys):
    from edgebridge.export.cli import main

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    final = plant(run / "final.pt", marker, model_config={}, ema={})
    refused(lambda: load_final(run), marker, final)
    assert main(["expert", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(final) in err and "re-train" in err and "Traceback" not in err and not marker.exists()


def test_expert_resume_refuses_a_payload(demo_dir, tmp_path):
    from helpers.tiny_expert import TINY

    from edgebridge.train.appf import StageConfig, Trainer, TrainConfig
    from edgebridge.train.model import ExpertNetConfig

    cfg = TrainConfig(model=ExpertNetConfig(**TINY), stage1=StageConfig(1, 8, 1e-3, False),
                      stage2=StageConfig(1, 8, 1e-3, True), warmup=1, val_fraction=0.25)
    marker, run = tmp_path / "marker", tmp_path / "run"
    ckpt = plant(run / "ckpt.pt", marker, stage=1, step=0, net={}, ema={}, opt={}, rows=[], rng={}, gen=None,
                 elapsed=0.0, config=plain(cfg.to_dict()))
    refused(lambda: Trainer([demo_dir], run, cfg), marker, ckpt)


def test_expert_checkpoints_hold_only_weights_and_plain_metadata(tiny_run):
    """What the trainer writes needs nothing but weights_only=True: metadata is plain JSON types."""
    for name in ("ckpt.pt", "final.pt"):
        state = torch.load(tiny_run / name, weights_only=True)
        meta = {k: v for k, v in state.items() if k not in ("net", "ema", "opt", "gen", "loss_gen")}
        assert json.loads(json.dumps(meta)) == meta, name
    net, rec = load_final(tiny_run)
    assert rec["spec"]["horizon"] == 16 and rec["output"]


# ----------------------------------------------------------------------------- the planner VLM

@pytest.fixture()
def planner_run(tmp_path):
    """A planner run directory as training leaves it (config, tokenizer) with a planted checkpoint."""
    from edgebridge.train.planner.data import constant_phrases, vocab_texts
    from edgebridge.train.planner.model import VLMConfig
    from edgebridge.train.planner.tokenizer import PlanTokenizer

    run = tmp_path / "planner"
    run.mkdir()
    tok = PlanTokenizer.build(vocab_texts(["put the mug in the bin"], 320, 240), constant_phrases(320, 240))
    tok.save(run / "tokenizer.json")
    mcfg = VLMConfig(vocab_size=len(tok), vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                     lm_width=64, lm_layers=1, lm_heads=2, lm_ff=128)
    (run / "config.json").write_text(json.dumps({"model": mcfg.to_dict(), "data": str(tmp_path / "no-data")}))
    marker = tmp_path / "marker"
    plant(run / "checkpoint.pt", marker, model={}, opt={}, step=1)
    return run, marker


def test_planner_resume_refuses_a_payload(planner_run):
    from edgebridge.train.planner.trainer import PlannerTrainConfig, train

    run, marker = planner_run
    refused(lambda: train(run, PlannerTrainConfig(data=str(run / "no-data"), steps=2, threads=1)), marker,
            run / "checkpoint.pt")


def test_planner_export_refuses_a_payload(planner_run, tmp_path):
    from edgebridge.export.vlm import ExportError
    from edgebridge.export.vlm_trained import export_trained
    from edgebridge.train.planner.trainer import load_trained

    run, marker = planner_run
    refused(lambda: load_trained(run), marker, run / "checkpoint.pt")
    refused(lambda: export_trained(run, tmp_path / "gguf", check=False), marker, run / "checkpoint.pt",
            exc=ExportError)
    assert not (tmp_path / "gguf").exists() and not os.path.exists(marker)
