"""The planner VLM's trainer: vocabulary and tokenisation against llama.cpp, the image preprocessing
against llama.cpp's, image embeddings against llama.cpp's, the distance-aware loss, seeded resumable
training and torchrun/DDP (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgebridge.runtime.planner.prompt import png_bytes  # noqa: E402
from edgebridge.train.planner.data import constant_phrases, preprocess, render_chat, vocab_texts  # noqa: E402
from edgebridge.train.planner.model import PlannerVLM, VLMConfig  # noqa: E402
from edgebridge.train.planner.tokenizer import SLOT_U, SLOT_V, SLOT_YAW, PlanTokenizer  # noqa: E402
from edgebridge.train.planner.trainer import PlannerTrainConfig, plan_loss, train  # noqa: E402

INSTRUCTIONS = ["put the mug in the bin", "stack the red cube on the blue cube",
                "put the red cube in the tray, then the cup", "Zebra über café 123x45!", "  two  spaces "]
ANSWER = ('{"anchors": [{"point_2d": [312, 188], "gripper": "close"}, {"point_2d": [0, 239], "gripper": "open"}], '
          '"yaw": -30, "subtasks": [0]}')


@pytest.fixture(scope="module")
def tok() -> PlanTokenizer:
    return PlanTokenizer.build(vocab_texts(INSTRUCTIONS[:2], 320, 240), constant_phrases(320, 240))


def tiny_config(tok: PlanTokenizer) -> VLMConfig:
    return VLMConfig(vocab_size=len(tok), vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                     lm_width=64, lm_layers=1, lm_heads=2, lm_ff=128)


def test_answer_tokens_round_trip_with_slots(tok):
    ids, slots, values = tok.encode_answer(ANSWER)
    assert tok.decode(ids) == ANSWER
    assert [v for s, v in zip(slots, values) if s == SLOT_U] == [312, 0]
    assert [v for s, v in zip(slots, values) if s == SLOT_V] == [188, 239]
    assert [v for s, v in zip(slots, values) if s == SLOT_YAW] == [-30]
    assert len(ids) < 25  # location tokens and structural pieces: a short answer
    with pytest.raises(ValueError, match="location token"):
        tok.encode_answer(ANSWER.replace("312", "400"))


def test_prompt_is_a_few_tokens(tok):
    before, after = render_chat(INSTRUCTIONS[0], 320, 240)
    assert len(tok.encode(before, bos=True)) < 10 and len(tok.encode(after)) < 20
    assert tok.decode(tok.encode(after)) == after


def test_tokenizer_matches_llama_cpp(tok, tmp_path):
    lc = pytest.importorskip("llama_cpp")
    from edgebridge.export.vlm_gguf import write_lm

    path = write_lm(PlannerVLM(tiny_config(tok)), tok, tmp_path / "lm.gguf")
    llm = lc.Llama(str(path), vocab_only=True, verbose=False)
    for ins in INSTRUCTIONS:
        before, after = render_chat(ins, 320, 240)
        assert tok.encode(before, bos=True) == llm.tokenize(before.encode(), add_bos=True, special=True)
        assert tok.encode(after) == llm.tokenize(after.encode(), add_bos=False, special=True)
    ids, _, _ = tok.encode_answer(ANSWER)
    assert llm.detokenize(ids[:-1]).decode() == ANSWER


def _probe_mmproj(path, n_embd: int, patch: int = 8, size: int = 320):
    """A projector that hands llama.cpp's preprocessed pixels through: each patch's normalised pixels
    become its embedding (identity patch embedding, blocks with zero outputs, an MLP that is the identity
    through GELU's linear range)."""
    import gguf

    w = 3 * patch * patch
    assert w == n_embd
    pe = np.zeros((w, 3, patch, patch), np.float32)
    for c in range(3):
        for y in range(patch):
            for x in range(patch):
                pe[c * patch * patch + y * patch + x, c, y, x] = 1.0
    g = gguf.GGUFWriter(str(path), "clip")
    for k, v in (("clip.has_vision_encoder", True), ("clip.has_text_encoder", False), ("clip.has_llava_projector", True),
                 ("clip.use_gelu", True)):
        g.add_bool(k, v)
    g.add_string("clip.projector_type", "mlp")
    for k, v in (("image_size", size), ("patch_size", patch), ("embedding_length", w), ("feed_forward_length", 2 * w),
                 ("projection_dim", n_embd), ("attention.head_count", 4), ("block_count", 1)):
        g.add_uint32(f"clip.vision.{k}", v)
    g.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    g.add_array("clip.vision.feature_layer", [1])
    g.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    g.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    g.add_tensor("v.patch_embd.weight", pe.astype(np.float16))
    g.add_tensor("v.position_embd.weight", np.zeros(((size // patch) ** 2, w), np.float32))
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    for ln in ("ln1", "ln2"):
        g.add_tensor(f"v.blk.0.{ln}.weight", np.ones(w, np.float32))
        g.add_tensor(f"v.blk.0.{ln}.bias", z(w))
    for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
        g.add_tensor(f"v.blk.0.{n}.weight", z(w, w))
        g.add_tensor(f"v.blk.0.{n}.bias", z(w))
    g.add_tensor("v.blk.0.ffn_up.weight", z(2 * w, w))
    g.add_tensor("v.blk.0.ffn_up.bias", z(2 * w))
    g.add_tensor("v.blk.0.ffn_down.weight", z(w, 2 * w))
    g.add_tensor("v.blk.0.ffn_down.bias", z(w))
    g.add_tensor("mm.0.weight", np.eye(w, dtype=np.float32))
    g.add_tensor("mm.0.bias", np.full(w, 20.0, np.float32))  # GELU(x) == x for x >= 10 in ggml
    g.add_tensor("mm.2.weight", np.eye(n_embd, w, dtype=np.float32))
    g.add_tensor("mm.2.bias", np.full(n_embd, -20.0, np.float32))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return path


def test_preprocessing_matches_llama_cpp(tmp_path):
    """torch's image tensor == what llama.cpp's projector sees for the same PNG: the same centred
    letterbox, pad colour and normalisation, pixel for pixel."""
    pytest.importorskip("llama_cpp")
    from edgebridge.export.mtmd_probe import image_embeddings
    from edgebridge.export.tiny_gguf import TinyModelSpec, write_tiny_gguf
    from edgebridge.train.planner.model import CLIP_MEAN, CLIP_STD

    p = 8
    lm = write_tiny_gguf(tmp_path / "lm.gguf", TinyModelSpec(n_embd=3 * p * p, n_head=4, n_ff=256, n_layer=1))
    proj = _probe_mmproj(tmp_path / "probe.gguf", 3 * p * p, p)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    rgb[100:140, 150:200] = (255, 0, 0)
    emb = image_embeddings(lm, proj, png_bytes(rgb))  # (1600, 192): patch-major, then (c, y, x)
    g = 320 // p
    got = emb.reshape(g, g, 3, p, p).transpose(2, 0, 3, 1, 4).reshape(3, 320, 320)
    want = preprocess(rgb, 320, CLIP_MEAN, CLIP_STD)
    # ggml's convolution takes its input in f16 (im2col): equal to torch's tensor rounded to f16
    assert np.abs(got - want.astype(np.float16).astype(np.float32)).max() < 1e-5
    assert np.abs(got - want).max() < 2e-3


def test_image_embeddings_match_llama_cpp(tok, tmp_path):
    pytest.importorskip("llama_cpp")
    from edgebridge.export.mtmd_probe import image_embeddings
    from edgebridge.export.vlm_gguf import write_lm, write_mmproj

    torch.manual_seed(0)
    m = PlannerVLM(VLMConfig(vocab_size=len(tok), vit_width=96, vit_layers=2, vit_heads=2, vit_ff=192,
                             lm_width=64, lm_layers=1, lm_heads=2, lm_ff=128))
    lm = write_lm(m, tok, tmp_path / "lm.gguf")
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    ref = m.image_embeddings(torch.from_numpy(preprocess(rgb, 320, m.config.image_mean, m.config.image_std))[None])[0]
    for quant, tol in (("F32", 1e-3), ("F16", 2e-2)):
        proj = write_mmproj(m, tmp_path / f"mmproj-{quant}.gguf", quant=quant)
        got = image_embeddings(lm, proj, png_bytes(rgb))
        assert np.abs(got - ref.numpy()).max() / np.abs(ref.numpy()).max() < tol, quant


def test_distance_aware_loss_prefers_near_bins(tok):
    ids, slots, values = tok.encode_answer(ANSWER)
    b = {"target": torch.tensor(ids), "slot": torch.tensor(slots), "value": torch.tensor(values, dtype=torch.float32)}

    def logits_at(offset: int) -> torch.Tensor:
        lg = torch.full((len(ids), len(tok)), -10.0)
        for i, (t, s, v) in enumerate(zip(ids, slots, values)):
            lg[i, tok.id(str(v + offset)) if s in (SLOT_U, SLOT_V) and 0 <= v + offset <= 319 else t] = 10.0
        return lg

    near, far = plan_loss(logits_at(1), b, tok, 1.0, 3.0), plan_loss(logits_at(-20), b, tok, 1.0, 3.0)
    exact = plan_loss(logits_at(0), b, tok, 1.0, 3.0)
    assert exact < near < far


def test_expected_pixel_term_grows_with_distance(tok):
    ids, slots, values = tok.encode_answer(ANSWER)
    b = {"target": torch.tensor(ids), "slot": torch.tensor(slots), "value": torch.tensor(values, dtype=torch.float32)}
    lg = torch.zeros(len(ids), len(tok))
    base = plan_loss(lg, b, tok, 1.0, 3.0)
    with_reg = plan_loss(lg, b, tok, 1.0, 3.0, reg_weight=1.0)
    assert with_reg > base  # a uniform guess is off by ~100 px on average


def test_pointing_targets_and_loss(pointing_data, tok):
    from edgebridge.train.planner.data import load_split
    from edgebridge.train.planner.trainer import batch_tensors, point_loss

    split = load_split(pointing_data, "train", tok, limit=2)
    cfg = tiny_config(tok)
    b = batch_tensors(split, np.arange(2), cfg)
    want = [[u + 0.5, v + 40.5] for r in split.rows for u, v in r["anchors_px"]]  # 40 px of padding on top
    assert b["point_xy"].tolist() == want
    n = len(want)
    centre = lambda x, y: int(y // 40) * 8 + int(x // 40)  # noqa: E731 - the patch under a pixel (patch 40)
    right, wrong = torch.zeros(n, 64), torch.zeros(n, 64)
    for i, (x, y) in enumerate(want):
        right[i, centre(x, y)] = 10.0
        wrong[i, (centre(x, y) + 27) % 64] = 10.0
    assert point_loss(right, b, cfg, 0.7) < point_loss(wrong, b, cfg, 0.7)


def test_training_is_seeded_and_resumes_exactly(pointing_data, tmp_path):
    common = dict(data=str(pointing_data), batch=2, eval_every=1000, eval_n=1, save_every=3, threads=1,
                  model=VLMConfig(vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40, lm_width=64,
                                  lm_layers=1, lm_heads=2, lm_ff=128))
    train(tmp_path / "a", PlannerTrainConfig(steps=6, **common))
    train(tmp_path / "b", PlannerTrainConfig(steps=3, **common))
    train(tmp_path / "b", PlannerTrainConfig(steps=6, **common))  # resumes at step 3
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (tmp_path / "a" / "curves.png").is_file() and (tmp_path / "a" / "log.csv").is_file()


@pytest.mark.slow
def test_torchrun_ddp_gloo(pointing_data, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "edgebridge.train.planner", "--data", str(pointing_data), "--run-dir", str(run), "--steps", "2",
           "--batch", "1", "--eval-every", "2", "--eval-n", "1", "--threads", "1", "--vit-width", "64",
           "--vit-layers", "1", "--vit-heads", "2", "--vit-ff", "128", "--patch", "40", "--lm-width", "64",
           "--lm-layers", "1", "--lm-heads", "2", "--lm-ff", "128", "--backend", "gloo"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "world 2" in r.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
