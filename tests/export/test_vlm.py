"""edge-export vlm on the tiny model: quantisation, metadata stamp, load-and-plan check, errors."""

from __future__ import annotations

import pytest

from edgebridge.export.vlm import ExportError, check_model, find_convert_script, quantize, stamp_metadata
from edgebridge.runtime.planner.prompt import GGUF_KEY_HASH, GGUF_KEY_VERSION, load_assets


@pytest.mark.parametrize("qtype, ftype", [("Q8_0", 7), ("Q4_K_M", 15)])
def test_quantize_tiny_and_check(tiny_model, tmp_path, qtype, ftype):
    import gguf

    a = load_assets()
    stamped = stamp_metadata(tiny_model, tmp_path / "stamped.gguf", {GGUF_KEY_VERSION: a.version, GGUF_KEY_HASH: a.hash})
    out = quantize(stamped, tmp_path / f"tiny-{qtype}.gguf", qtype)
    assert out.stat().st_size < 0.6 * tiny_model.stat().st_size
    r = gguf.GGUFReader(str(out))
    assert int(r.get_field("general.file_type").contents()) == ftype
    assert r.get_field(GGUF_KEY_VERSION).contents() == a.version
    assert r.get_field(GGUF_KEY_HASH).contents() == a.hash
    if qtype == "Q4_K_M":  # rows are multiples of 256: K-quants apply, no per-tensor fallback
        kinds = {t.tensor_type.name for t in r.tensors if t.name.startswith("blk.")}
        assert kinds & {"Q4_K", "Q6_K"} and not kinds & {"Q5_0", "Q8_0"}, kinds
    res = check_model(out)
    assert res["n_anchors"] >= 1 and res["n_tokens"] > 0


def test_quantize_errors(tiny_model, tmp_path):
    with pytest.raises(ExportError, match="unknown quantisation"):
        quantize(tiny_model, tmp_path / "x.gguf", "Q3_X")
    with pytest.raises(ExportError, match="not found"):
        quantize(tmp_path / "none.gguf", tmp_path / "x.gguf", "Q8_0")


def test_convert_script_missing_is_explained(monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_CONVERT", raising=False)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py was not found"):
        find_convert_script()


def test_cli_tiny(tmp_path, capsys):
    from edgebridge.export.cli import main

    assert main(["vlm", "--tiny", "--out", str(tmp_path), "--quant", "Q8_0"]) == 0
    assert (tmp_path / "tiny-Q8_0.gguf").is_file()
    assert '"Q8_0"' in capsys.readouterr().out
