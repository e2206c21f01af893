"""``edge-export vlm --hf DIR --out OUT``: a Hugging Face LLaVA-1.5 directory (a base checkpoint, or the
``RUN/model`` that ``python -m edgebridge.train.planner.hf_llava`` writes) -> a llama.cpp language-model GGUF
and a CLIP vision-projector GGUF (mmproj), written tensor by tensor with the ``gguf`` package, and checked
against torch.

- **Language model** (``general.architecture = llama``): the decoder with Q and K rows permuted from HF's
  rotate-half layout to the adjacent pairs llama.cpp's rope turns; the tokenizer's vocabulary as a
  ``llama`` (SentencePiece) vocabulary: pieces as they are (U+2581 for spaces), byte tokens, each piece
  scored by the rank of the first BPE merge that makes it (what llama.cpp merges by), special tokens as
  control tokens, padding rows up to the embedding size; the checkpoint's chat template in
  ``tokenizer.chat_template`` (llama-cpp-python's ``MTMDChatHandler`` renders it). A fine-tuned model also
  carries the plan format stamp and its plan image size, so the planner resizes frames to it.
- **Vision projector** (``general.architecture = clip``, ``clip.projector_type = mlp``): the CLIP tower
  with its class embedding and pre-LayerNorm (no post-LayerNorm: LLaVA reads a hidden state before it),
  quick-GELU (``clip.use_gelu = false``), ``clip.vision.feature_layer`` from ``vision_feature_layer``,
  the projector as ``mm.0`` / ``mm.2``, and the image mean/std of the preprocessor config.
- **Parity** (``parity.json``): llama.cpp's image embeddings (libmtmd, from the PNG) against torch's (the
  recipe's preprocessing of the same image), and greedy generation (no grammar, temperature 0) token for
  token against torch's greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import require
from .vlm import ExportError, quantize

log = logging.getLogger(__name__)

EMBED_RTOL = {"F32": 5e-3, "F16": 2e-2}  # ggml's GELU is tanh-form via an f16 table; HF's is erf
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF llama's Q/K rows (rotate-half pairs i, i + d/2) -> llama.cpp's (adjacent pairs 2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def resolve(src: str | Path) -> Path:
    """A checkpoint directory, or a fine-tuning run whose ``model/`` holds one."""
    from ..train.planner.hf_llava import MODEL_DIR

    src = Path(src)
    if not (src / "config.json").is_file() and (src / MODEL_DIR / "config.json").is_file():
        return src / MODEL_DIR
    return src


# --------------------------------------------------------------------------- vocabulary


def vocabulary(tok, n_rows: int) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types of the ``llama`` vocabulary, padded to ``n_rows``."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ExportError("the tokenizer is not a SentencePiece-style byte-fallback BPE (Llama-2's kind); llama.cpp's "
                          "'llama' vocabulary cannot reproduce it")
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    pieces = {i: p for p, i in model["vocab"].items()}
    pieces.update({i: t["content"] for i, t in added.items()})
    n = max(pieces) + 1
    if n > n_rows:
        raise ExportError(f"the tokenizer has {n} tokens, the embedding only {n_rows} rows")
    tokens, scores, types = [], [], []
    unk = model.get("unk_token")
    for i in range(n_rows):
        p = pieces.get(i)
        if p is None:
            tokens.append(f"[PAD{i}]"), scores.append(-1000.0), types.append(TOKEN_UNUSED)
            continue
        tokens.append(p)
        if i in added and p != unk:
            scores.append(0.0)
            types.append(TOKEN_CONTROL if added[i].get("special") else TOKEN_USER_DEFINED)
        elif p == unk:
            scores.append(0.0), types.append(TOKEN_UNKNOWN)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", p):
            scores.append(0.0), types.append(TOKEN_BYTE)
        else:  # llama.cpp merges the highest score first; HF the lowest rank: the same order
            scores.append(-float(rank[p]) if p in rank else (0.0 if len(p) == 1 else -1e9))
            types.append(TOKEN_NORMAL)
    return tokens, scores, types


def _adds_space_prefix(tok) -> bool:
    spec = json.loads(tok.backend_tokenizer.to_str())
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or ('"Metaspace"' in text and '"prepend_scheme": "never"' not in text)


# --------------------------------------------------------------------------- writers


def write_lm(ck, path: str | Path, *, outtype: str = "f16", metadata: dict | None = None) -> Path:
    """The llama decoder, its vocabulary and chat template as a GGUF (``outtype`` f32 or f16)."""
    gguf = require("gguf", "vlm", "the GGUF writer")
    from ..runtime.planner.prompt import GGUF_KEY_PLAN_HEIGHT, GGUF_KEY_PLAN_WIDTH
    from ..train.planner.hf_llava import modules

    if outtype not in ("f32", "f16"):
        raise ExportError(f"outtype must be f32 or f16, got {outtype!r}")
    tc = ck.model.config.text_config
    rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError(f"rope scaling {rope} is not written by this exporter; use a checkpoint without it")
    if getattr(tc, "attention_bias", False) or getattr(tc, "mlp_bias", False):
        raise ExportError("attention or MLP biases in the llama decoder are not written by this exporter")
    theta = float(rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0)))
    _, _, lm, head = modules(ck.model)
    n_head, n_kv = tc.num_attention_heads, tc.num_key_value_heads or tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // n_head
    emb = _np(lm.embed_tokens.weight)
    tokens, scores, types = vocabulary(ck.tokenizer, emb.shape[0])
    tok = ck.tokenizer
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(Path(getattr(ck.model.config, "_name_or_path", "") or "llava").name or "llava")
    w.add_context_length(tc.max_position_embeddings)
    w.add_embedding_length(tc.hidden_size)
    w.add_block_count(tc.num_hidden_layers)
    w.add_feed_forward_length(tc.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim * n_head != tc.hidden_size:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(tc.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for what, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                      ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(w, f"add_{what}_token_id")(tid)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    w.add_add_bos_token(bool(probe) and probe[0] == tok.bos_token_id)
    w.add_add_eos_token(bool(probe) and probe[-1] == tok.eos_token_id)
    w.add_add_space_prefix(_adds_space_prefix(tok))
    w.add_chat_template(ck.template)
    info = ck.info
    if info.get("plan_width"):
        w.add_uint32(GGUF_KEY_PLAN_WIDTH, int(info["plan_width"]))
        w.add_uint32(GGUF_KEY_PLAN_HEIGHT, int(info["plan_height"]))
    for k, v in (metadata or {}).items():
        w.add_string(k, str(v))

    def mat(name: str, a: np.ndarray) -> None:
        w.add_tensor(name, a if outtype == "f32" else a.astype(np.float16))

    mat("token_embd.weight", emb)
    for i, b in enumerate(lm.layers):
        p = f"blk.{i}."
        at, mlp = b.self_attn, b.mlp
        w.add_tensor(p + "attn_norm.weight", _np(b.input_layernorm.weight))
        mat(p + "attn_q.weight", permute_rope(_np(at.q_proj.weight), n_head))
        mat(p + "attn_k.weight", permute_rope(_np(at.k_proj.weight), n_kv))
        mat(p + "attn_v.weight", _np(at.v_proj.weight))
        mat(p + "attn_output.weight", _np(at.o_proj.weight))
        mat(p + "ffn_gate.weight", _np(mlp.gate_proj.weight))
        mat(p + "ffn_up.weight", _np(mlp.up_proj.weight))
        mat(p + "ffn_down.weight", _np(mlp.down_proj.weight))
        w.add_tensor(p + "ffn_norm.weight", _np(b.post_attention_layernorm.weight))
    w.add_tensor("output_norm.weight", _np(lm.norm.weight))
    mat("output.weight", _np(head.weight))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj(ck, path: str | Path, *, quant: str = "F16") -> Path:
    """The CLIP tower + projector as a clip GGUF; ``quant`` is ``F16`` or ``F32`` (the convolution and
    position table stay f16 / f32 as llama.cpp needs them)."""
    gguf = require("gguf", "vlm", "the GGUF writer")
    from ..train.planner.hf_llava import feature_layer, modules

    if quant not in ("F16", "F32"):
        raise ExportError(f"mmproj quant must be F16 or F32, got {quant!r}")
    cfg = ck.model.config
    vc = cfg.vision_config
    if vc.intermediate_size == vc.hidden_size:
        raise ExportError("the vision tower's MLP is as wide as the tower: llama.cpp reads such an ffn pair as "
                          "swapped (a legacy layout); this tower cannot be exported")
    vt, proj, _, _ = modules(ck.model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("llava-vision")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", vc.hidden_act == "gelu")  # false: CLIP's quick-GELU
    w.add_uint32("clip.vision.image_size", vc.image_size)
    w.add_uint32("clip.vision.patch_size", vc.patch_size)
    w.add_uint32("clip.vision.embedding_length", vc.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", vc.intermediate_size)
    w.add_uint32("clip.vision.projection_dim", cfg.text_config.hidden_size)
    w.add_uint32("clip.vision.attention.head_count", vc.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vc.layer_norm_eps)
    w.add_uint32("clip.vision.block_count", vc.num_hidden_layers)
    w.add_array("clip.vision.feature_layer", [feature_layer(cfg)])
    w.add_array("clip.vision.image_mean", [float(x) for x in ck.mean])
    w.add_array("clip.vision.image_std", [float(x) for x in ck.std])
    w.add_file_type(0 if quant == "F32" else 1)

    def mat(name: str, t) -> None:
        a = _np(t)
        w.add_tensor(name, a if quant == "F32" else a.astype(np.float16))

    def vec(name: str, t) -> None:
        w.add_tensor(name, _np(t))

    e = vt.embeddings
    vec("v.class_embd", e.class_embedding)
    mat("v.patch_embd.weight", e.patch_embedding.weight)
    pos = _np(e.position_embedding.weight)  # rotated: llama.cpp puts the class token last (llama_cpp_rows)
    w.add_tensor("v.position_embd.weight", np.concatenate([pos[1:], pos[:1]]))
    vec("v.pre_ln.weight", vt.pre_layrnorm.weight)
    vec("v.pre_ln.bias", vt.pre_layrnorm.bias)
    for i, b in enumerate(vt.encoder.layers):
        p = f"v.blk.{i}."
        for gname, ln in (("ln1", b.layer_norm1), ("ln2", b.layer_norm2)):
            vec(p + gname + ".weight", ln.weight)
            vec(p + gname + ".bias", ln.bias)
        at = b.self_attn
        for gname, lin in (("attn_q", at.q_proj), ("attn_k", at.k_proj), ("attn_v", at.v_proj),
                           ("attn_out", at.out_proj), ("ffn_up", b.mlp.fc1), ("ffn_down", b.mlp.fc2)):
            mat(p + gname + ".weight", lin.weight)
            vec(p + gname + ".bias", lin.bias)
    mat("mm.0.weight", proj.linear_1.weight)
    vec("mm.0.bias", proj.linear_1.bias)
    mat("mm.2.weight", proj.linear_2.weight)
    vec("mm.2.bias", proj.linear_2.bias)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- parity


def parity(ck, lm: Path, mmproj: Path, rgb: np.ndarray, instruction: str, *, n_tokens: int = 24,
           n_threads: int = 2) -> dict:
    """Image embeddings and greedy tokens, llama.cpp against torch, for one image and instruction."""
    import torch

    lc = require("llama_cpp", "vlm", "the parity check")
    from llama_cpp.llama_chat_format import MTMDChatHandler

    from ..runtime.planner.prompt import chat_messages, image_data_uri, load_assets, png_bytes
    from ..train.planner.hf_llava import greedy, image_features, preprocess, prompt_ids
    from .mtmd_probe import image_embeddings

    h, w = rgb.shape[:2]
    pixels = torch.from_numpy(preprocess(rgb, ck.image_size, ck.mean, ck.std))[None]
    with torch.no_grad():
        ref = image_features(ck.model, pixels)[0].float().numpy()
    got = image_embeddings(lm, mmproj, png_bytes(rgb), n_threads=n_threads)
    if got.shape != ref.shape:
        raise ExportError(f"parity: llama.cpp gives {got.shape} image embeddings, torch {ref.shape}")
    report: dict = {"embed_max_abs_diff": float(np.abs(got - ref).max()),
                    "embed_max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max())}
    ids = prompt_ids(ck, instruction, w, h)
    eos = ck.tokenizer.eos_token_id
    ref_tokens = greedy(ck.model, ids, pixels, ck.image_token, eos, n_tokens)
    llm = lc.Llama(model_path=str(lm), chat_handler=MTMDChatHandler(clip_model_path=str(mmproj), verbose=False),
                   n_ctx=max(512, len(ids) + n_tokens + 8), n_threads=n_threads, verbose=False)
    try:
        prompt = load_assets().render(instruction, w, h)
        out = llm.create_chat_completion(messages=chat_messages(prompt, image_data_uri(rgb)), temperature=0.0,
                                         repeat_penalty=1.0, max_tokens=n_tokens)
        text = out["choices"][0]["message"]["content"] or ""
        seq = [int(t) for t in llm.input_ids[:llm.n_tokens]]
        text_pos = [i for i, t in enumerate(ids) if t != ck.image_token]
        report["prompt_tokens_equal"] = [seq[i] for i in text_pos] == [ids[i] for i in text_pos]
        evaluated = seq[len(ids):]  # every generated token but the last was fed back
        body = [t for t in ref_tokens if t != eos]
        torch_text = llm.detokenize(body).decode("utf-8", errors="ignore")
        report.update({
            "torch_tokens": ref_tokens, "llama_cpp_tokens": evaluated, "torch_text": torch_text, "llama_cpp_text": text,
            # the last generated token is not fed back: llama.cpp's text stands for it
            "greedy_tokens_compared": len(ref_tokens),
            "greedy_identical": evaluated == ref_tokens[:len(evaluated)] and len(evaluated) >= len(ref_tokens) - 1
                                and text.strip() == torch_text.strip()})
    finally:
        llm.close()
    return report


def _probe_scene(ck) -> tuple[np.ndarray, str]:
    """The first test scene of the run's data set when it is present, else a synthetic 320x240 image."""
    from ..train.planner.data import read_png, read_split

    data = ck.info.get("data")
    if data:
        for split in ("test", "train"):
            try:
                row = read_split(data, split)[0]
            except FileNotFoundError:
                continue
            return read_png(Path(data) / split / row["file_name"]), row["instruction"]
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([x * 255 // 319, y * 255 // 239, (x + y) % 256], -1).astype(np.uint8)
    return rgb, "put the red cube in the tray"


def export_hf(src: str | Path, out: str | Path, *, outtype: str = "f16", mmproj: str = "F16",
              quants: tuple[str, ...] = (), check: bool = True, n_tokens: int = 24, n_threads: int = 2) -> dict:
    """Write ``vlm-<outtype>.gguf``, ``vlm-mmproj-<mmproj>.gguf`` (+ llama.cpp quantisations) and, with
    ``check``, ``parity.json``; returns the report. Raises :class:`ExportError` over the embedding tolerance."""
    from ..train.planner.hf_llava import HFLlavaError, load

    src = resolve(src)
    try:
        ck = load(src)
    except HFLlavaError as e:
        raise ExportError(str(e)) from e
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = {}
    if ck.info.get("format_version"):
        from ..runtime.planner.prompt import GGUF_KEY_HASH, GGUF_KEY_VERSION

        stamp = {GGUF_KEY_VERSION: ck.info["format_version"], GGUF_KEY_HASH: ck.info["format_hash"]}
    lm = write_lm(ck, out / f"vlm-{outtype}.gguf", outtype=outtype, metadata=stamp)
    mm = write_mmproj(ck, out / f"vlm-mmproj-{mmproj.lower()}.gguf", quant=mmproj)
    for q in quants:
        quantize(lm, out / f"vlm-{q}.gguf", q)
    report: dict = {"source": str(src), "files": {p.name: round(p.stat().st_size / 1e6, 3)
                                                  for p in sorted(out.glob("*.gguf"))}}
    if check:
        rgb, instruction = _probe_scene(ck)
        report.update(parity(ck, lm, mm, rgb, instruction, n_tokens=n_tokens, n_threads=n_threads))
        report["embed_rtol"] = EMBED_RTOL[mmproj]
        if report["embed_max_rel_diff"] > EMBED_RTOL[mmproj]:
            raise ExportError(f"parity: llama.cpp's image embeddings differ from torch's by "
                              f"{report['embed_max_rel_diff']:.3g} (relative), over the tolerance {EMBED_RTOL[mmproj]}")
    (out / "parity.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgebridge.export.vlm_hf",
                                description="Hugging Face LLaVA-1.5 directory -> llama.cpp LM GGUF + mmproj GGUF.")
    p.add_argument("src", help="checkpoint directory or fine-tuning run directory")
    p.add_argument("--out", required=True)
    p.add_argument("--outtype", choices=["f32", "f16"], default="f16")
    p.add_argument("--mmproj", choices=["F32", "F16"], default="F16")
    p.add_argument("--quant", nargs="*", default=[])
    p.add_argument("--no-check", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        rep = export_hf(a.src, a.out, outtype=a.outtype, mmproj=a.mmproj, quants=tuple(a.quant), check=not a.no_check)
    except ExportError as e:
        print(f"vlm_hf: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rep, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
