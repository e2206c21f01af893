"""A tiny random vision projector (``mmproj``) GGUF for the tiny language model: a LLaVA-style CLIP
graph (``clip.projector_type = mlp``) llama.cpp's libmtmd loads, with random weights. It lets tests run
the vision path of the GGUF planner (``MTMDChatHandler``: image -> patches -> ViT -> MLP -> the language
model's embeddings) without a trained model. ``projection_dim`` must equal the language model's
``n_embd`` (256 for ``edgebridge.export.tiny_gguf``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_mmproj(path: str | Path, *, projection_dim: int = 256, image_size: int = 64, patch: int = 16,
                      width: int = 64, ff: int = 128, layers: int = 1, heads: int = 2, seed: int = 0) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_patches = (image_size // patch) ** 2

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * 0.05).astype(np.float16)

    def vec(n: int, value: float | None = None) -> np.ndarray:
        return np.full(n, value, np.float32) if value is not None else np.zeros(n, np.float32)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("edgebridge-tiny-random-vision")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch)
    w.add_uint32("clip.vision.embedding_length", width)
    w.add_uint32("clip.vision.feed_forward_length", ff)
    w.add_uint32("clip.vision.projection_dim", projection_dim)
    w.add_uint32("clip.vision.attention.head_count", heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.block_count", layers)
    w.add_array("clip.vision.feature_layer", [layers])
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_file_type(1)
    w.add_tensor("v.patch_embd.weight", (rng.standard_normal((width, 3, patch, patch)) * 0.02).astype(np.float16))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_patches, width)) * 0.02).astype(np.float32))
    w.add_tensor("v.pre_ln.weight", vec(width, 1.0))
    w.add_tensor("v.pre_ln.bias", vec(width))
    for i in range(layers):
        p = f"v.blk.{i}."
        for ln in ("ln1", "ln2"):
            w.add_tensor(p + ln + ".weight", vec(width, 1.0))
            w.add_tensor(p + ln + ".bias", vec(width))
        for name, (o, n) in (("attn_q", (width, width)), ("attn_k", (width, width)), ("attn_v", (width, width)),
                             ("attn_out", (width, width)), ("ffn_up", (ff, width)), ("ffn_down", (width, ff))):
            w.add_tensor(p + name + ".weight", mat(o, n))
            w.add_tensor(p + name + ".bias", vec(o))
    w.add_tensor("mm.0.weight", mat(projection_dim, width))
    w.add_tensor("mm.0.bias", vec(projection_dim))
    w.add_tensor("mm.2.weight", mat(projection_dim, projection_dim))
    w.add_tensor("mm.2.bias", vec(projection_dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
