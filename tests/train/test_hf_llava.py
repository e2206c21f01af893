"""Fine-tuning a Hugging Face LLaVA-1.5 checkpoint with the planner recipe and exporting it to llama.cpp,
on a tiny random LLaVA built here (CLIP tower 64 wide x 3 blocks at 56 px / patch 14, llama decoder 64 wide
x 2 blocks, a byte-fallback BPE vocabulary trained on the prompt): llama.cpp's preprocessing against the
recipe's, tokenisation, seeded resumable training, image-embedding and greedy-generation parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgebridge.runtime.planner.prompt import png_bytes  # noqa: E402
from edgebridge.train.planner import hf_llava  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The recipe sets torch's thread count (``--threads``); give the next tests the count they had."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)

LLAVA_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf's chat template
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
INSTRUCTIONS = ["put the red cube in the tray", "stack the red cube on the blue cube", "put the cup in the bin",
                "move the green block to the left"]
PLANS = [[(120, 80, "open"), (120, 95, "close"), (250, 160, "open")], [(40, 200, "close"), (300, 20, "open")],
         [(160, 120, "open"), (161, 121, "close")], [(10, 10, "close"), (310, 230, "open"), (0, 239, "open")]]
META = "\u2581"


def _plan_json(anchors, yaw: int) -> str:
    return json.dumps({"anchors": [{"point_2d": [u, v], "gripper": g} for u, v, g in anchors], "yaw": yaw,
                       "subtasks": [0]})


def _scene(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = np.full((240, 320, 3), (90 + 20 * i, 110, 130), np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, 280), rng.integers(0, 200)
        img[y:y + 40, x:x + 40] = rng.integers(0, 256, 3)
    return img


def write_pointing(root: Path) -> Path:
    """Four scenes in the imagefolder layout edge-sim pointing writes (train and test splits)."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        rows = []
        for i, (ins, plan) in enumerate(zip(INSTRUCTIONS, PLANS)):
            name = f"{i:05d}.png"
            (root / split / name).write_bytes(png_bytes(_scene(i)))
            rows.append({"file_name": name, "instruction": ins, "plan": _plan_json(plan, 15 * i - 30)})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _tokenizer(texts: list[str]):
    """A Llama-2-style tokenizer: byte-fallback BPE over SentencePiece pieces (spaces as U+2581, a space
    prepended), merges listed for every split of every piece in piece order, as HF converts SentencePiece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    norm = normalizers.Sequence([normalizers.Prepend(META), normalizers.Replace(" ", META)])
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.normalizer = norm
    probe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=360, show_progress=False, special_tokens=[]))
    learned = sorted(probe.get_vocab().items(), key=lambda kv: kv[1])
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in learned]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [(p[:k], p[k:]) for p in pieces[259:] for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = norm
    tk.decoder = decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    tk.add_special_tokens(["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>")


def build_tiny_llava(out: Path, seed: int = 0) -> Path:
    """A random LlavaForConditionalGeneration with its tokenizer and chat template, saved with save_pretrained."""
    texts = []
    for ins, plan in zip(INSTRUCTIONS, PLANS):
        texts += list(hf_llava.render_chat(LLAVA_TEMPLATE, ins, 320, 240)) + [_plan_json(plan, -30)]
    texts += [" ".join(str(n) for n in range(320)), "You are a robot task planner. You answer with JSON only."]
    tok = _tokenizer(texts)
    tok.chat_template = LLAVA_TEMPLATE
    vc = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=2,
                                       image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    tc = transformers.LlamaConfig(vocab_size=len(tok) + 3, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id,
                                  tie_word_embeddings=False)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
                                   vision_feature_layer=-2, vision_feature_select_strategy="default",
                                   projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(cfg)
    with torch.no_grad():  # a wider spread than the 0.02 init, so the random model's features are not all alike
        for n, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in n:
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(hf_llava.CLIP_MEAN), "image_std": list(hf_llava.CLIP_STD), "crop_size": {"height": 56,
         "width": 56}, "image_processor_type": "CLIPImageProcessor"}))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_llava")
    return {"base": build_tiny_llava(root / "base"), "data": write_pointing(root / "data"), "root": root}


def test_letterbox_is_pillow_bicubic_bit_for_bit():
    Image = pytest.importorskip("PIL.Image")

    rng = np.random.default_rng(3)
    for h, w, nw, nh in [(240, 320, 56, 42), (240, 320, 336, 252), (480, 640, 336, 252), (50, 30, 20, 33)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
        assert np.array_equal(hf_llava.resize_bicubic(img, nw, nh), want), (h, w, nw, nh)
    sq = hf_llava.letterbox(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), 336, hf_llava.CLIP_MEAN)
    assert sq.shape == (336, 336, 3) and (sq[:42] == (122, 116, 104)).all() and (sq[-42:] == (122, 116, 104)).all()


def test_preprocessing_matches_llama_cpp(tmp_path):
    """What llama.cpp's mlp projector sees for a 320x240 PNG at a 56 px tower == the recipe's tensor
    (a probe projector hands the normalised pixels through)."""
    pytest.importorskip("llama_cpp")
    from edgebridge.export.mtmd_probe import image_embeddings
    from edgebridge.export.tiny_gguf import TinyModelSpec, write_tiny_gguf
    from test_planner_vlm import _probe_mmproj

    p, size = 8, 56
    lm = write_tiny_gguf(tmp_path / "lm.gguf", TinyModelSpec(n_embd=3 * p * p, n_head=4, n_ff=256, n_layer=1))
    proj = _probe_mmproj(tmp_path / "probe.gguf", 3 * p * p, p, size)
    rgb = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    emb = image_embeddings(lm, proj, png_bytes(rgb))
    g = size // p
    got = emb.reshape(g, g, 3, p, p).transpose(2, 0, 3, 1, 4).reshape(3, size, size)
    want = hf_llava.preprocess(rgb, size, hf_llava.CLIP_MEAN, hf_llava.CLIP_STD)
    assert np.abs(got - want.astype(np.float16).astype(np.float32)).max() < 1e-5


def test_prompt_and_answer_tokens(tiny):
    ck = hf_llava.load(tiny["base"])
    before, after = hf_llava.render_chat(ck.template, INSTRUCTIONS[0], 320, 240)
    assert before == "USER: " and after.startswith(" You are the planner") and after.endswith(" ASSISTANT:")
    ids = hf_llava.prompt_ids(ck, INSTRUCTIONS[0], 320, 240)
    assert ids[0] == ck.tokenizer.bos_token_id and ids.count(ck.image_token) == 16
    answer = _plan_json(PLANS[0], -30)
    a = hf_llava.encode_answer(ck.tokenizer, answer)
    assert a[-1] == ck.tokenizer.eos_token_id and ck.tokenizer.decode(a[:-1]) == answer
    assert not ck.tokenizer.convert_ids_to_tokens(a[0]).startswith(META)  # the grammar's first character is '{'
    with pytest.raises(hf_llava.HFLlavaError, match="not a Hugging Face checkpoint"):
        hf_llava.load(tiny["root"])


def _cfg(tiny, steps: int, **kw) -> hf_llava.HFTrainConfig:
    return hf_llava.HFTrainConfig(base=str(tiny["base"]), data=str(tiny["data"]), steps=steps, lr=3e-3, warmup=1,
                                  batch=2, seed=0, save_every=2, threads=1, **kw)


def test_training_is_seeded_resumes_exactly_and_learns(tiny):
    root = tiny["root"]
    a = hf_llava.train(root / "a", _cfg(tiny, 4))
    hf_llava.train(root / "b", _cfg(tiny, 2))
    b = hf_llava.train(root / "b", _cfg(tiny, 4))  # resumes at step 2
    assert a["losses"] == b["losses"] and len(a["losses"]) == 4
    sa, sb = (torch.load(root / r / hf_llava.CHECKPOINT, weights_only=True)["model"] for r in ("a", "b"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(hf_llava.HFLlavaError, match="lr"):
        hf_llava.train(root / "b", hf_llava.HFTrainConfig(**{**_cfg(tiny, 4).__dict__, "lr": 1e-4}))


@pytest.fixture(scope="module")
def finetuned(tiny) -> dict:
    run = hf_llava.train(tiny["root"] / "run", _cfg(tiny, 30))
    return {**run, "model": tiny["root"] / "run" / hf_llava.MODEL_DIR}


def test_fine_tuning_learns_the_plans(finetuned):
    losses = finetuned["losses"]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), losses
    info = json.loads((finetuned["model"] / hf_llava.TRAIN_INFO).read_text())
    assert (info["plan_width"], info["plan_height"]) == (320, 240)
    assert (finetuned["model"] / "preprocessor_config.json").is_file()


def test_llama_cpp_tokenises_the_prompt_as_the_recipe(finetuned, tmp_path):
    lc = pytest.importorskip("llama_cpp")
    from edgebridge.export.vlm_hf import write_lm

    ck = hf_llava.load(finetuned["model"])
    llm = lc.Llama(str(write_lm(ck, tmp_path / "lm.gguf", outtype="f32")), vocab_only=True, verbose=False)
    tok = ck.tokenizer
    for ins in INSTRUCTIONS + ["Zebra \u00fcber caf\u00e9 123x45!", "  two  spaces "]:
        before, after = hf_llava.render_chat(ck.template, ins, 320, 240)
        assert llm.tokenize(before.encode(), add_bos=True, special=True) == tok(before)["input_ids"]
        assert llm.tokenize(after.encode(), add_bos=False, special=True) == tok(after, add_special_tokens=False)["input_ids"]
    answer = _plan_json(PLANS[1], 45)
    assert llm.detokenize(hf_llava.encode_answer(tok, answer)[:-1]).decode() == answer
    assert llm.metadata["tokenizer.chat_template"] == LLAVA_TEMPLATE


@pytest.mark.parametrize("mmproj, rtol", [("F32", 5e-3), ("F16", 2e-2)])
def test_export_matches_torch(finetuned, tmp_path, mmproj, rtol):
    """llama.cpp's image embeddings and greedy tokens against torch's, on the fine-tuned model and one of
    its data set's scenes (parity.json)."""
    pytest.importorskip("llama_cpp")
    from edgebridge.export.vlm_hf import export_hf

    rep = export_hf(finetuned["model"].parent, tmp_path, outtype="f32", mmproj=mmproj, n_tokens=40, n_threads=1)
    assert rep["embed_max_rel_diff"] < rtol
    assert rep["prompt_tokens_equal"]
    if mmproj == "F32":
        assert rep["greedy_identical"], rep
        assert json.loads(rep["torch_text"]) == json.loads(_plan_json(PLANS[0], -30))  # the plan it was taught
    assert json.loads((tmp_path / "parity.json").read_text())["embed_max_rel_diff"] == rep["embed_max_rel_diff"]


def test_runtime_planner_runs_the_export(finetuned, tiny, tmp_path):
    """The exported pair under the runtime's GGUF planner (mtmd handler, plan grammar, f16 projector)."""
    pytest.importorskip("llama_cpp")
    from edgebridge.contracts import RGBD, Intrinsics
    from edgebridge.export.vlm_hf import export_hf
    from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig

    export_hf(finetuned["model"], tmp_path, outtype="f32", check=False)
    cfg = GGUFPlannerConfig(model_path=str(tmp_path / "vlm-f32.gguf"), mmproj_path=str(tmp_path / "vlm-mmproj-f16.gguf"),
                            chat_handler="mtmd", n_ctx=1024, n_threads=1, max_tokens=256)
    frame = RGBD(_scene(0), np.ones((240, 320), np.float32), Intrinsics(320, 240, 300.0, 300.0, 160.0, 120.0))
    with GGUFPlanner(cfg) as planner:
        plan = planner.plan(frame, INSTRUCTIONS[0])
    assert [(a.u, a.v) for a in plan.anchors] == [(u, v) for u, v, _ in PLANS[0]]  # the plan it was taught


def test_command_lines(finetuned, tiny, tmp_path):
    from edgebridge.export.cli import main as export_main

    assert hf_llava.main(["--base", str(tiny["base"]), "--data", str(tiny["data"]), "--run-dir", str(tmp_path / "run"),
                          "--steps", "1", "--batch", "1", "--threads", "1"]) == 0
    assert (tmp_path / "run" / hf_llava.MODEL_DIR / "config.json").is_file()
    assert hf_llava.main(["--base", str(tiny["base"]), "--data", str(tiny["data"]), "--run-dir", str(tmp_path / "frozen"),
                          "--steps", "1", "--batch", "1", "--threads", "1", "--lr", "1e-2", "--freeze-vision"]) == 0
    before = hf_llava.load(tiny["base"]).model.state_dict()
    after = torch.load(tmp_path / "frozen" / hf_llava.CHECKPOINT, weights_only=True)["model"]
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert not all(torch.equal(before[k], after[k]) for k in before if "language_model" in k)
    assert export_main(["vlm", "--hf", str(finetuned["model"]), "--out", str(tmp_path / "out"), "--outtype", "f32",
                        "--quant", "Q8_0", "--no-check"]) == 0
    assert {p.name for p in (tmp_path / "out").glob("*.gguf")} == {"vlm-f32.gguf", "vlm-Q8_0.gguf", "vlm-mmproj-f16.gguf"}
    assert export_main(["vlm", "--hf", str(tmp_path), "--out", str(tmp_path / "x")]) == 1  # no checkpoint there


@pytest.mark.parametrize("change, words", [
    ({"vision_feature_select_strategy": "full"}, "class token"),
    ({"projector_hidden_act": "relu"}, "projector activation"),
    ({"vision_feature_layer": [-2, -5]}, "stacks several layers"),
])
def test_unsupported_layouts_are_named(change, words):
    cfg = transformers.LlavaConfig(**change)
    with pytest.raises(hf_llava.HFLlavaError, match=words):
        hf_llava.check_config(cfg, "ckpt")
    qwen = transformers.AutoConfig.for_model("qwen2_vl")
    with pytest.raises(hf_llava.HFLlavaError, match="model_type is .qwen2_vl."):
        hf_llava.check_config(qwen, "ckpt")
