"""A trained planner VLM (``python -m edgebridge.train.planner``) -> GGUF language model + GGUF vision
projector (mmproj), written tensor by tensor with the ``gguf`` package.

- **Language model** (``general.architecture = llama``): the decoder, its vocabulary (tokenizer model
  ``llama``, ``add_space_prefix = false``, so llama.cpp tokenises exactly as the trainer did), the chat
  template (ChatML with the image marker where the image goes) and the plan-format stamp. Written in
  f32 and quantised by llama.cpp (Q8_0, Q4_K_M: every matrix row is a multiple of 256).
- **Vision projector** (``general.architecture = clip``, ``clip.projector_type = mlp``): the ViT and
  the 2-layer MLP, with ``clip.vision.feature_layer = [block_count]`` so llama.cpp runs every block
  (without it a LLaVA graph stops one block early) and CLIP's mean/std (llama.cpp pads with
  ``int(255 * mean)``, the colour the trainer pads with). Written in f16 (the convolution and position
  table in the precision llama.cpp needs: f16 and f32); a Q8_0 copy quantises the matrices with
  gguf-py's reference quantiser.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import require

log = logging.getLogger(__name__)

from ..runtime.planner.prompt import GGUF_KEY_PLAN_HEIGHT as KEY_PLAN_H
from ..runtime.planner.prompt import GGUF_KEY_PLAN_WIDTH as KEY_PLAN_W


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def write_lm(model, tok, path: str | Path, *, metadata: dict | None = None, name: str = "edgebridge-planner") -> Path:
    """The decoder as a llama GGUF (f32)."""
    gguf = require("gguf", "vlm", "the GGUF writer")
    from ..train.planner.tokenizer import BOS, CHAT_TEMPLATE, EOS, UNK

    c = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(c.n_ctx)
    w.add_embedding_length(c.lm_width)
    w.add_block_count(c.lm_layers)
    w.add_feed_forward_length(c.lm_ff)
    w.add_head_count(c.lm_heads)
    w.add_head_count_kv(c.lm_heads)
    w.add_rope_dimension_count(c.lm_width // c.lm_heads)
    w.add_rope_freq_base(c.rope_base)
    w.add_layer_norm_rms_eps(c.rms_eps)
    w.add_vocab_size(len(tok))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tok.tokens)
    w.add_token_scores(tok.scores)
    w.add_token_types(tok.types)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(UNK)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_uint32(KEY_PLAN_W, c.plan_width)
    w.add_uint32(KEY_PLAN_H, c.plan_height)
    for k, v in (metadata or {}).items():
        w.add_string(k, str(v))
    w.add_tensor("token_embd.weight", _np(model.token_embd.weight))
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", _np(b.attn_norm.weight))
        for gname, lin in (("attn_q", b.wq), ("attn_k", b.wk), ("attn_v", b.wv), ("attn_output", b.wo),
                           ("ffn_gate", b.gate), ("ffn_up", b.up), ("ffn_down", b.down)):
            w.add_tensor(p + gname + ".weight", _np(lin.weight))
        w.add_tensor(p + "ffn_norm.weight", _np(b.ffn_norm.weight))
    w.add_tensor("output_norm.weight", _np(model.output_norm.weight))
    w.add_tensor("output.weight", _np(model.output_weight()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj(model, path: str | Path, *, quant: str = "F16", name: str = "edgebridge-planner-vision") -> Path:
    """The vision tower + projector as a clip GGUF; ``quant`` is ``F16``, ``F32`` or ``Q8_0``."""
    gguf = require("gguf", "vlm", "the GGUF writer")
    c = model.config
    v = model.vision
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if quant not in ("F16", "F32", "Q8_0"):
        raise ValueError(f"write_mmproj: quant must be F16, F32 or Q8_0, got {quant!r}")
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", c.image_size)
    w.add_uint32("clip.vision.patch_size", c.patch)
    w.add_uint32("clip.vision.embedding_length", c.vit_width)
    w.add_uint32("clip.vision.feed_forward_length", c.vit_ff)
    w.add_uint32("clip.vision.projection_dim", c.lm_width)
    w.add_uint32("clip.vision.attention.head_count", c.vit_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", c.vit_eps)
    w.add_uint32("clip.vision.block_count", c.vit_layers)
    w.add_array("clip.vision.feature_layer", [c.vit_layers])
    w.add_array("clip.vision.image_mean", [float(x) for x in c.image_mean])
    w.add_array("clip.vision.image_std", [float(x) for x in c.image_std])
    ftype = {"F32": 0, "F16": 1, "Q8_0": 7}[quant]
    w.add_file_type(ftype)

    def mat(tname: str, t) -> None:  # 2-D weight matrices take the file's precision
        a = _np(t)
        if quant == "F32":
            w.add_tensor(tname, a)
        elif quant == "F16" or a.shape[-1] % 32:
            w.add_tensor(tname, a.astype(np.float16))
        else:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def vec(tname: str, t) -> None:
        w.add_tensor(tname, _np(t))

    pe = _np(v.patch_embd.weight)
    w.add_tensor("v.patch_embd.weight", pe if quant == "F32" else pe.astype(np.float16))
    w.add_tensor("v.position_embd.weight", _np(v.position_embd))
    vec("v.pre_ln.weight", v.pre_ln.weight)
    vec("v.pre_ln.bias", v.pre_ln.bias)
    for i, b in enumerate(v.blocks):
        p = f"v.blk.{i}."
        for lname, ln in (("ln1", b.ln1), ("ln2", b.ln2)):
            vec(p + lname + ".weight", ln.weight)
            vec(p + lname + ".bias", ln.bias)
        for gname, lin in (("attn_q", b.q), ("attn_k", b.k), ("attn_v", b.v), ("attn_out", b.out),
                           ("ffn_up", b.up), ("ffn_down", b.down)):
            mat(p + gname + ".weight", lin.weight)
            vec(p + gname + ".bias", lin.bias)
    mat("mm.0.weight", v.mm0.weight)
    vec("mm.0.bias", v.mm0.bias)
    mat("mm.2.weight", v.mm2.weight)
    vec("mm.2.bias", v.mm2.bias)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def describe(path: str | Path) -> dict:  # pragma: no cover - maintenance helper
    gguf = require("gguf", "vlm")
    r = gguf.GGUFReader(str(path))
    return json.loads(json.dumps({f.name: str(f.contents())[:80] for f in r.fields.values()}))
