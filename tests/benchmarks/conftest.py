"""Shared fixtures of the benchmark tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# appended, not first: benchmarks/kernels.py must not shadow the `kernels` package (transformers imports it)
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="session")
def random_vlm(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny planner VLM with random weights as GGUF (language model, vision projector): its plans are
    noise, but they parse (the decoding is grammar-constrained) and it plans in 320x240 like the real one."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gguf", reason="gguf (extra 'vlm') not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    from edgebridge.export.vlm_gguf import write_lm, write_mmproj
    from edgebridge.train.planner.data import constant_phrases, vocab_texts
    from edgebridge.train.planner.model import PlannerVLM, VLMConfig
    from edgebridge.train.planner.tokenizer import PlanTokenizer

    torch.manual_seed(0)
    tok = PlanTokenizer.build(vocab_texts(["put the cup in the tray"], 320, 240), constant_phrases(320, 240))
    model = PlannerVLM(VLMConfig(vocab_size=len(tok), vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                                 lm_width=256, lm_layers=1, lm_heads=4, lm_ff=256))
    out = tmp_path_factory.mktemp("random-vlm")
    return write_lm(model, tok, out / "lm.gguf"), write_mmproj(model, out / "mm.gguf")
