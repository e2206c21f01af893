"""Write a tiny random llama-architecture GGUF model (no download) for tests and benchmarks.

The model has random weights, so its answers are noise; what it exercises is the real path: llama.cpp
loading, chat templating, tokenisation, grammar-constrained sampling, quantisation and the server.
Tensor rows are multiples of 256 (``n_embd = 256``, ``n_ff = 512``), so K-quants (Q4_K_M, Q5_K_M)
apply to every matrix instead of falling back per tensor.

The vocabulary is a SentencePiece-style ("llama" tokenizer model) list: ``<unk>``, ``<s>``, ``</s>``,
the 256 byte tokens ``<0x00>``..``<0xFF>`` (byte fallback), printable ASCII, and every prefix of the
words of the planner prompt (so prompts tokenise to words, not single bytes).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import require

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny model. Keep ``n_embd`` and ``n_ff`` multiples of 256 for K-quants."""

    n_embd: int = 256
    n_ff: int = 512
    n_layer: int = 2
    n_head: int = 4
    n_ctx: int = 4096
    seed: int = 0
    weight_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("n_embd", "n_ff", "n_layer", "n_head", "n_ctx"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"TinyModelSpec.{name}: expected a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"TinyModelSpec: n_embd {self.n_embd} must be divisible by n_head {self.n_head}")


def tiny_vocab(extra_text: str = "") -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types (gguf.TokenType values) of the tiny vocabulary."""
    gguf = require("gguf", "vlm", "the tiny GGUF writer")
    TT = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TT.UNKNOWN, TT.CONTROL, TT.CONTROL] + [TT.BYTE] * 256
    scores = [0.0] * len(tokens)
    pieces: dict[str, None] = {}
    for c in range(0x21, 0x7F):
        pieces[chr(c)] = None
    pieces["\u2581"] = None
    from ..runtime.planner.prompt import SYSTEM_MESSAGE, load_assets

    text = load_assets().template + " " + SYSTEM_MESSAGE + " " + extra_text
    text += ' "anchors" "point_2d" "gripper" "open" "close" "yaw" "subtasks" <|im_start|> <|im_end|>'
    for word in sorted(set(re.findall(r"[^\s]+", text))):
        for w in (word, "\u2581" + word):
            for k in range(2, min(len(w), 16) + 1):
                pieces[w[:k]] = None
    for p in pieces:
        tokens.append(p)
        types.append(TT.NORMAL)
        scores.append(-1.0 / len(p))  # longer pieces merge first
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: str | Path, spec: TinyModelSpec | None = None, *, metadata: dict | None = None) -> Path:
    """Write the tiny model (f16 matrices, f32 norms) to ``path``; returns the path."""
    gguf = require("gguf", "vlm", "the tiny GGUF writer")
    spec = spec or TinyModelSpec()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(spec.seed)

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * spec.weight_std).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("edgebridge-tiny-random")
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    for key, value in (metadata or {}).items():
        w.add_string(key, str(value))
    w.add_tensor("token_embd.weight", mat(n_vocab, spec.n_embd))
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(spec.n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", mat(spec.n_embd, spec.n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(spec.n_embd, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(spec.n_ff, spec.n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(spec.n_ff, spec.n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(spec.n_embd, spec.n_ff))
    w.add_tensor("output_norm.weight", np.ones(spec.n_embd, np.float32))
    w.add_tensor("output.weight", mat(n_vocab, spec.n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log.info("wrote tiny GGUF model %s (%d tokens, %.1f MB)", path, n_vocab, path.stat().st_size / 1e6)
    return path
