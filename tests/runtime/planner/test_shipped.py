"""The shipped planner VLM as the GGUF backend's default: with no ``--vlm`` and no ``planner.model`` the
factory loads ``assets/planner/vlm.gguf`` + ``vlm-mmproj.gguf`` with the ``mtmd`` chat handler. Tested
with the tiny random language model and a tiny random vision projector standing in for the shipped
files (so the vision path, image -> projector -> model -> plan, runs for real)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgebridge.config import ConfigError
from edgebridge.runtime.config import load_robot_config
from edgebridge.runtime.devices import make_planner
from edgebridge.runtime.planner import shipped
from edgebridge.runtime.planner.gguf import blank_frame


def test_shipped_paths_come_from_the_package(monkeypatch, tmp_path):
    import edgebridge

    assert shipped.planner_dir().resolve() == Path(edgebridge.__file__).resolve().parent / "assets" / "planner"
    monkeypatch.setattr(shipped, "planner_dir", lambda: tmp_path)
    assert shipped.shipped_vlm() is None
    (tmp_path / "vlm.gguf").write_bytes(b"GGUF")
    assert shipped.shipped_vlm() is None  # the projector is missing
    (tmp_path / "vlm-mmproj.gguf").write_bytes(b"GGUF")
    assert shipped.shipped_vlm() == (tmp_path / "vlm.gguf", tmp_path / "vlm-mmproj.gguf")


def test_no_model_and_nothing_shipped_is_a_config_error_naming_make_planner(monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "planner_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match="shipped planner is missing.*make planner.*--planner oracle"):
        make_planner(load_robot_config("so101_serial"), "gguf", None, None)


@pytest.fixture
def shipped_tiny(tiny_model, tmp_path, monkeypatch):
    from helpers.tiny_mmproj import write_tiny_mmproj

    shutil.copy(tiny_model, tmp_path / shipped.MODEL_FILE)
    write_tiny_mmproj(tmp_path / shipped.MMPROJ_FILE)
    monkeypatch.setattr(shipped, "planner_dir", lambda: tmp_path)
    return tmp_path


def test_gguf_backend_without_a_model_loads_the_shipped_vlm_and_sees_the_image(shipped_tiny):
    cfg = load_robot_config("so101_serial")  # a real setup: the shipped projector makes it a seeing planner
    notes: list[str] = []
    planner = make_planner(cfg, "gguf", None, None, notes=notes)
    try:
        c = planner.config
        assert c.model_path == str(shipped_tiny / "vlm.gguf") and c.mmproj_path == str(shipped_tiny / "vlm-mmproj.gguf")
        assert c.chat_handler == "mtmd" and not c.text_only and planner.vision
        assert any("shipped VLM vlm.gguf + vlm-mmproj.gguf (mtmd)" in n for n in notes)
        plan = planner.plan(blank_frame(128, 96), "put the cup in the tray")
        assert 1 <= len(plan.anchors) and all(0 <= a.u < 128 and 0 <= a.v < 96 for a in plan.anchors)
        assert plan.timings_ms["n_prompt_tokens"] > 16  # the prompt and the image's tokens
    finally:
        planner.close()


def test_an_explicit_projector_or_model_wins_over_the_shipped_files(shipped_tiny, tiny_model):
    cfg = load_robot_config("so101_serial")
    with pytest.raises(Exception, match="nothere-mmproj.gguf not found"):
        make_planner(cfg, "gguf", None, None, mmproj=str(shipped_tiny / "nothere-mmproj.gguf"))
    with pytest.raises(ConfigError, match="no vision projector"):  # --vlm without --mmproj: not the shipped one
        make_planner(cfg, "gguf", str(tiny_model), None)


def test_edge_run_gguf_without_vlm_runs_the_shipped_planner_in_the_simulator(shipped_tiny, tmp_path, capsys):
    pytest.importorskip("pybullet", reason="the sim world needs pybullet ('sim' extra)")
    from edgebridge.runtime.cli import main

    out = tmp_path / "eps.jsonl"
    rc = main(["--planner", "gguf", "--task", "put_cup_in_tray", "--expert", "ik", "--max-seconds", "2",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert "shipped VLM vlm.gguf + vlm-mmproj.gguf (mtmd)" in text and "text-only" not in text
    row = json.loads(out.read_text())
    assert rc == (0 if row["success"] else 1) and not row["success"]  # random weights do not do the task
    assert row["planning"]["requests"] >= 1  # --json: the episode's planning and loop counts
    assert row["planning"]["accepted"] + row["planning"]["rejected"] >= 1
