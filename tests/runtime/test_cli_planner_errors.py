"""``edge-run`` with planner files that cannot work: a missing, corrupt, truncated or wrong GGUF model or
vision projector, given by ``--vlm`` / ``--mmproj``, by the setup file, or shipped. Each is one line on
stderr naming the file and what to do, and exit code 2; nothing is built after the planner fails."""

from __future__ import annotations

import os
import shutil

import pytest

from edgebridge.runtime.cli import main
from edgebridge.runtime.planner import shipped

pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    from helpers.tiny_mmproj import write_tiny_mmproj

    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.gguf").write_bytes(os.urandom(100_000))
    (d / "garbage-mmproj.gguf").write_bytes(os.urandom(50_000))
    (d / "text.gguf").write_text("this is not a model\n")
    data = tiny_model.read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])
    mmproj = write_tiny_mmproj(d / "mmproj.gguf")
    mm = mmproj.read_bytes()
    (d / "truncated-mmproj.gguf").write_bytes(mm[: len(mm) * 2 // 3])
    write_tiny_mmproj(d / "mmproj-128.gguf", projection_dim=128)  # for a model with n_embd 128, not 256
    return {"dir": d, "lm": tiny_model, "mmproj": mmproj}


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("name", ["garbage.gguf", "text.gguf", "truncated.gguf", "mmproj.gguf"])
def test_a_bad_model_file_is_one_line_and_exit_2(files, capsys, name):
    path = files["dir"] / name
    assert main(["--planner", "gguf", "--vlm", str(path), "--mmproj", str(files["mmproj"]), "--expert", "ik"]) == 2
    _one_line_error(capsys, f"could not load {path}", "edge-export vlm")


@pytest.mark.parametrize("name", ["garbage-mmproj.gguf", "text.gguf", "truncated-mmproj.gguf", "mmproj-128.gguf",
                                  "LM"])
def test_a_bad_projector_with_a_valid_model_is_one_line_and_exit_2(files, capsys, name):
    path = files["lm"] if name == "LM" else files["dir"] / name  # "LM": the language model given as projector
    assert main(["--planner", "gguf", "--vlm", str(files["lm"]), "--mmproj", str(path), "--expert", "ik"]) == 2
    _one_line_error(capsys, f"vision projector {path} does not load", "edge-export vlm")


def test_missing_files_are_one_line_and_exit_2(files, capsys):
    missing = files["dir"] / "nothere-mmproj.gguf"
    assert main(["--planner", "gguf", "--vlm", str(files["lm"]), "--mmproj", str(missing), "--expert", "ik"]) == 2
    _one_line_error(capsys, f"{missing} not found")
    assert main(["--planner", "gguf", "--vlm", str(files["dir"] / "nothere.gguf"), "--expert", "ik"]) == 2
    _one_line_error(capsys, "nothere.gguf not found", "edge-export vlm")


def test_a_bad_model_named_by_the_setup_file_is_one_line_and_exit_2(files, capsys, tmp_path):
    from edgebridge.runtime.config import resolve_config

    text = resolve_config("sim_panda").read_text()
    bad = files["dir"] / "garbage.gguf"
    assert '[planner]\nbackend = "gguf"' in text
    text = text.replace('[planner]\nbackend = "gguf"', f'[planner]\nbackend = "gguf"\nmodel = "{bad}"\n'
                        f'options = {{ mmproj_path = "{files["mmproj"]}", chat_handler = "mtmd" }}')
    cfg = tmp_path / "robot.toml"
    cfg.write_text(text)
    assert main(["--config", str(cfg), "--expert", "ik"]) == 2
    _one_line_error(capsys, f"could not load {bad}")


def test_missing_shipped_planner_is_one_line_naming_make_planner(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "planner_dir", lambda: tmp_path)
    assert main(["--planner", "gguf", "--expert", "ik"]) == 2
    _one_line_error(capsys, "shipped planner is missing", "vlm.gguf, vlm-mmproj.gguf", "make planner",
                    "--planner oracle")
    shutil.copy(__file__, tmp_path / shipped.MODEL_FILE)  # only one of the two files
    assert main(["--planner", "gguf", "--expert", "ik"]) == 2
    err = _one_line_error(capsys, "(vlm-mmproj.gguf not in", "make planner")
    assert "vlm.gguf," not in err


def test_corrupt_shipped_planner_is_one_line_naming_make_planner(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "planner_dir", lambda: tmp_path)
    shutil.copy(files["lm"], tmp_path / shipped.MODEL_FILE)
    shutil.copy(files["dir"] / "truncated-mmproj.gguf", tmp_path / shipped.MMPROJ_FILE)
    assert main(["--planner", "gguf", "--expert", "ik"]) == 2
    _one_line_error(capsys, "vlm-mmproj.gguf does not load", "rebuild it with 'make planner'", "--planner oracle")
