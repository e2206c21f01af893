"""``python -m edgebridge.train.planner.hf_llava --base DIR --data DATA --run-dir RUN``: the planner recipe
applied to a pretrained Hugging Face LLaVA-1.5 checkpoint (``LlavaForConditionalGeneration``: CLIP tower read
at ``vision_feature_layer``, 2-layer GELU MLP projector, llama decoder) from a local ``save_pretrained``
directory (``local_files_only=True``: nothing is fetched). Each example is what llama.cpp sees at run time:

- **Prompt**: the runtime's, in the GGUF planner's chat messages, rendered through the checkpoint's own chat
  template as llama-cpp-python's ``MTMDChatHandler`` renders it (image parts become the media marker,
  ``trim_blocks``/``lstrip_blocks``, ``{% generation %}`` ignored, ``bos_token``/``eos_token`` empty as
  llama.cpp detokenises them), split at the marker: the text before with the tokenizer's special tokens
  (BOS), the text after without, as libmtmd tokenises its chunks; one placeholder per image token between.
- **Target**: the data set's plan JSON (the from-scratch trainer's target) without a leading space (the plan
  grammar starts with ``{``), then EOS; the loss is on these tokens only.
- **Image**: llama.cpp's ``mlp`` preprocessing: aspect kept, Pillow's antialiased bicubic resampling (which
  llama.cpp reimplements), centred on a square of ``int(255 * image_mean)``, normalised with mean/std.

Training: AdamW, linear warm-up, batch of step *s* drawn from ``(seed, s)``, one example per forward, resumable
(``RUN/checkpoint.pt``); ``save_pretrained`` to ``RUN/model`` with the processor files and
``edgebridge_train.json`` (plan image size, format stamp), which ``edge-export vlm --hf`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ...errors import require
from ...runtime.planner.prompt import chat_messages, load_assets
from .data import MEDIA_MARKER, read_png, read_split

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT = "checkpoint.pt"
MODEL_DIR = "model"
TRAIN_INFO = "edgebridge_train.json"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja")
_FIXED = 22  # Pillow's fixed-point precision for 8-bit resampling


class HFLlavaError(ValueError):
    """The checkpoint is not one this recipe supports, or a run directory does not match its config."""


# --------------------------------------------------------------------------- image (llama.cpp's, exactly)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's (and llama.cpp's pillow-compatible) bicubic kernel
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _coeffs(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights, (n_out, ksize) each, as Pillow's ``precompute_coeffs``."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    ksize = int(math.ceil(support)) * 2 + 1
    centre = (np.arange(n_out) + 0.5) * scale
    xmin = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), n_in) - xmin
    k = np.arange(ksize)
    w = _bicubic((k[None, :] + xmin[:, None] - centre[:, None] + 0.5) * (1.0 / fscale))
    w = np.where(k[None, :] < count[:, None], w, 0.0)
    total = w.sum(1, keepdims=True)
    w = np.where(total != 0.0, w / np.where(total == 0.0, 1.0, total), w)
    fixed = np.trunc(np.where(w < 0, w * (1 << _FIXED) - 0.5, w * (1 << _FIXED) + 0.5)).astype(np.int64)
    return np.minimum(xmin[:, None] + k[None, :], n_in - 1), fixed


def resize_bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8: Pillow's ``Image.resize(..., BICUBIC)`` (antialiased,
    horizontal pass then vertical, 8-bit fixed point), bit for bit."""
    x = rgb.astype(np.int64)
    if width != rgb.shape[1]:
        idx, k = _coeffs(rgb.shape[1], width)
        x = np.einsum("hokc,ok->hoc", x[:, idx, :], k)
        x = np.clip((x + (1 << (_FIXED - 1))) >> _FIXED, 0, 255)
    if height != rgb.shape[0]:
        idx, k = _coeffs(rgb.shape[0], height)
        x = np.einsum("okwc,ok->owc", x[idx], k)
        x = np.clip((x + (1 << (_FIXED - 1))) >> _FIXED, 0, 255)
    return x.astype(np.uint8)


def letterbox(rgb: np.ndarray, size: int, mean) -> np.ndarray:
    """(size, size, 3) uint8: the image scaled to fit (aspect kept, sizes computed in float32 and rounded
    up as llama.cpp does), centred on a square filled with ``int(255 * mean)``."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb.copy()
    f32 = np.float32
    scale = min(f32(size) / f32(w), f32(size) / f32(h))
    nw, nh = min(int(np.ceil(f32(w) * scale)), size), min(int(np.ceil(f32(h) * scale)), size)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.array([int(255 * m) for m in mean], np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resize_bicubic(rgb, nw, nh)
    return out


def preprocess(rgb: np.ndarray, size: int, mean, std) -> np.ndarray:
    """(3, size, size) float32: letterboxed and normalised as ``(x / 255 - mean) / std`` in float32."""
    sq = letterbox(rgb, size, mean).astype(np.float32) / np.float32(255.0)
    return ((sq - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()


# --------------------------------------------------------------------------- the checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """A loaded LLaVA-1.5 checkpoint and what the recipe reads from its directory."""

    model: object
    tokenizer: object
    template: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_image_tokens: int
    image_token: int
    info: dict  # edgebridge_train.json of a fine-tuned model, else {}


def modules(model):
    """(CLIP vision transformer, projector, llama decoder, lm_head) across transformers' two layouts."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "vision_tower"):  # transformers >= 4.52
        vt, proj, lm, head = inner.vision_tower, inner.multi_modal_projector, inner.language_model, model.lm_head
    else:
        vt, proj, lm, head = (model.vision_tower, model.multi_modal_projector, model.language_model.model,
                              model.language_model.lm_head)
    return getattr(vt, "vision_model", vt), proj, lm, head


def check_config(cfg, where: str) -> None:
    """Raise :class:`HFLlavaError` unless ``cfg`` is the LLaVA-1.5 layout llama.cpp's ``mlp`` projector runs."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HFLlavaError(f"{where}: {what}. Only the LLaVA-1.5 layout is supported (CLIP tower, 2-layer GELU "
                               f"MLP projector, llama decoder); docs/planner_hf.md lists the base models that export")
    need(getattr(cfg, "model_type", None) == "llava", f"model_type is {getattr(cfg, 'model_type', None)!r}")
    need(cfg.vision_config.model_type in ("clip_vision_model", "clip"),
         f"vision tower is {cfg.vision_config.model_type!r}, not CLIP")
    need(cfg.text_config.model_type == "llama", f"language model is {cfg.text_config.model_type!r}, not llama")
    need(cfg.vision_feature_select_strategy == "default", f"vision_feature_select_strategy is "
         f"{cfg.vision_feature_select_strategy!r}; llama.cpp drops the class token ('default')")
    layer = cfg.vision_feature_layer
    need(isinstance(layer, int) or (isinstance(layer, (list, tuple)) and len(layer) == 1),
         f"vision_feature_layer {layer!r} stacks several layers")
    need(cfg.projector_hidden_act == "gelu", f"projector activation is {cfg.projector_hidden_act!r}, not gelu")
    need(getattr(cfg, "multimodal_projector_bias", True), "the projector has no biases (llama.cpp needs them)")
    need(cfg.vision_config.hidden_act in ("quick_gelu", "gelu"),
         f"vision activation is {cfg.vision_config.hidden_act!r}, not quick_gelu or gelu")


def feature_layer(cfg) -> int:
    """``vision_feature_layer`` as a non-negative index into the tower's hidden states (0: the input of the
    first block), the index llama.cpp's ``clip.vision.feature_layer`` takes."""
    layer = cfg.vision_feature_layer
    layer = layer[0] if isinstance(layer, (list, tuple)) else int(layer)
    n = cfg.vision_config.num_hidden_layers
    return n + 1 + layer if layer < 0 else layer


def chat_template(base: Path, tokenizer) -> str:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json`` (a processor's), else
    the tokenizer's."""
    if (base / "chat_template.jinja").is_file():
        return (base / "chat_template.jinja").read_text()
    if (base / "chat_template.json").is_file():
        return json.loads((base / "chat_template.json").read_text())["chat_template"]
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, str) and t:
        return t
    raise HFLlavaError(f"{base} has no chat template (chat_template.jinja, chat_template.json or the tokenizer's); "
                       f"add the model's template to the directory")


def load(base: str | Path, dtype=None) -> Checkpoint:
    """Load model, tokenizer and chat template from a local directory (nothing is downloaded)."""
    torch = require("torch", "train", "the Hugging Face LLaVA recipe")
    tf = require("transformers", "train", "the Hugging Face LLaVA recipe")
    base = Path(base)
    if not (base / "config.json").is_file():
        raise HFLlavaError(f"{base} is not a Hugging Face checkpoint directory (no config.json); give the "
                           f"directory save_pretrained wrote (e.g. a download of llava-hf/llava-1.5-7b-hf)")
    cfg = tf.AutoConfig.from_pretrained(base, local_files_only=True)
    check_config(cfg, str(base))
    dkw = "dtype" if int(tf.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = tf.LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True,
                                                             **{dkw: dtype or torch.float32})
    tok = tf.AutoTokenizer.from_pretrained(base, local_files_only=True)
    spec = json.loads(tok.backend_tokenizer.to_str())["model"]
    if spec.get("type") != "BPE" or not spec.get("byte_fallback"):
        raise HFLlavaError(f"{base}: the tokenizer is not a SentencePiece-style byte-fallback BPE (Llama-2's kind); "
                           f"llama.cpp's 'llama' vocabulary cannot reproduce it")
    pp = base / "preprocessor_config.json"
    pc = json.loads(pp.read_text()) if pp.is_file() else {}
    vc = cfg.vision_config
    info_path = base / TRAIN_INFO
    return Checkpoint(model=model.eval(), tokenizer=tok, template=chat_template(base, tok), image_size=vc.image_size,
                      mean=tuple(pc.get("image_mean", CLIP_MEAN)), std=tuple(pc.get("image_std", CLIP_STD)),
                      n_image_tokens=(vc.image_size // vc.patch_size) ** 2, image_token=cfg.image_token_index,
                      info=json.loads(info_path.read_text()) if info_path.is_file() else {})


# --------------------------------------------------------------------------- prompt and tokens


def _template_env():
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGeneration(Extension):  # HF's {% generation %} marks assistant text for masks; it renders its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[IgnoreGeneration, loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    return env


def render_chat(template: str, instruction: str, width: int, height: int) -> tuple[str, str]:
    """The text before and after the image marker, as llama.cpp's MTMD chat handler renders the GGUF
    planner's messages through ``template``."""
    prompt = load_assets().render(instruction, width, height)
    messages = []
    for m in chat_messages(prompt, "data:image/png;base64,"):
        m = dict(m)
        if isinstance(m["content"], list):
            m["content"] = [{"type": "text", "text": MEDIA_MARKER} if p.get("type") == "image_url" else p
                            for p in m["content"]]
        messages.append(m)

    def raise_exception(msg: str):
        raise HFLlavaError(f"chat template: {msg}")

    text = _template_env().from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="",
                                                        eos_token="", raise_exception=raise_exception)
    before, sep, after = text.partition(MEDIA_MARKER)
    if not sep:
        raise HFLlavaError("the chat template did not place the image: it must render image parts (turned into text "
                           f"parts holding {MEDIA_MARKER!r}) as llama.cpp's MTMD handler passes them")
    return before, after


def encode_answer(tok, text: str) -> list[int]:
    """The answer's tokens without SentencePiece's leading-space prefix, then EOS."""
    pieces = tok.backend_tokenizer.model.tokenize(text.replace(" ", "\u2581"))
    return [p.id for p in pieces] + [tok.eos_token_id]


def prompt_ids(ck: Checkpoint, instruction: str, width: int, height: int) -> list[int]:
    """BOS + text before the image + one placeholder per image token + text after (the generation prompt)."""
    before, after = render_chat(ck.template, instruction, width, height)
    tok = ck.tokenizer
    return (tok(before, add_special_tokens=True)["input_ids"] + [ck.image_token] * ck.n_image_tokens
            + tok(after, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- torch forward


def llama_cpp_rows(n_patches: int) -> list[int]:
    """The tower's hidden-state rows (0: class token, 1 + i: patch i) llama.cpp hands the projector.

    llama.cpp's LLaVA graph (the libmtmd of llama-cpp-python 0.3.36) appends the class token *after* the
    patches, adds the position table in sequence order and then reads rows 1..n: with the position table
    written rotated (patch i gets row 1 + i, the class token row 0, as CLIP was trained) the blocks compute
    exactly CLIP's states, and the projector receives patches 1..n-1 followed by the class token. The
    recipe trains on that sequence, so the exported pair reproduces the fine-tuned model (a test holds it)."""
    return list(range(2, n_patches + 1)) + [0]


def image_features(model, pixels):
    """(B, n_image_tokens, lm_width): the projected features of the configured tower layer, in the rows
    llama.cpp feeds the language model (:func:`llama_cpp_rows`)."""
    vt, proj, _, _ = modules(model)
    hs = vt(pixels, output_hidden_states=True).hidden_states[feature_layer(model.config)]
    return proj(hs[:, llama_cpp_rows(hs.shape[1] - 1)])


def embed(model, ids, pixels, image_token: int):
    """(1, T, lm_width) input embeddings with the image placeholders replaced by the image features."""
    import torch

    table = model.get_input_embeddings()
    ids = torch.as_tensor(ids, device=table.weight.device)[None]
    emb = table(ids)
    mask = (ids == image_token)[..., None]
    pixels = pixels.to(device=table.weight.device, dtype=table.weight.dtype)
    feats = image_features(model, pixels).to(emb.dtype).reshape(-1, emb.shape[-1])
    return emb.masked_scatter(mask, feats)


def greedy(model, ids, pixels, image_token: int, eos: int, max_new: int) -> list[int]:
    """Greedy decoding (the tokens generated, EOS included when reached)."""
    import torch

    out: list[int] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        x, past = embed(model, ids, pixels, image_token), None
        for _ in range(max_new):
            r = model(inputs_embeds=x, past_key_values=past, use_cache=True)
            past, t = r.past_key_values, int(r.logits[0, -1].argmax())
            out.append(t)
            if t == eos:
                break
            x = model.get_input_embeddings()(torch.tensor([[t]], device=x.device))
    return out


# --------------------------------------------------------------------------- training

@dataclass
class HFTrainConfig:
    base: str
    data: str
    steps: int = 200
    lr: float = 2e-5
    warmup: int = 10
    batch: int = 4
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    freeze_vision: bool = False
    save_every: int = 50
    limit: int | None = None
    threads: int = 0
    device: str = "cpu"  # "cuda" places model and batches on the GPU
    dtype: str = "float32"  # or "bfloat16"


@dataclass
class Example:
    ids: list[int]
    n_prompt: int
    file: Path


def build_examples(ck: Checkpoint, data: str | Path, split: str = "train", limit: int | None = None
                   ) -> tuple[list[Example], int, int]:
    """The split's examples and the plan image size (every image must have it)."""
    rows = read_split(data, split)[:limit]
    if not rows:
        raise HFLlavaError(f"{data}/{split} holds no scenes")
    h, w = read_png(Path(data) / split / rows[0]["file_name"]).shape[:2]
    out = []
    for r in rows:
        p = prompt_ids(ck, r["instruction"], w, h)
        out.append(Example(p + encode_answer(ck.tokenizer, r["plan"]), len(p), Path(data) / split / r["file_name"]))
    return out, w, h


def _pixels(ck: Checkpoint, ex: Example, plan_size: tuple[int, int]):
    import torch

    rgb = read_png(ex.file)
    if rgb.shape[1::-1] != plan_size:
        raise HFLlavaError(f"{ex.file}: {rgb.shape[1]}x{rgb.shape[0]} px, the split's images are "
                           f"{plan_size[0]}x{plan_size[1]}")
    return torch.from_numpy(preprocess(rgb, ck.image_size, ck.mean, ck.std))[None]


def example_loss(ck: Checkpoint, ex: Example, pixels):
    """Summed cross-entropy over the answer tokens."""
    import torch
    import torch.nn.functional as F

    x = embed(ck.model, ex.ids, pixels, ck.image_token)
    logits = ck.model(inputs_embeds=x).logits[0, ex.n_prompt - 1:-1]
    target = torch.tensor(ex.ids[ex.n_prompt:], device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="sum")


def train(run_dir: str | Path, cfg: HFTrainConfig) -> dict:
    """Fine-tune (or resume) into ``run_dir``; returns ``{"step", "losses"}``."""
    torch = require("torch", "train", "the Hugging Face LLaVA recipe")
    (run := Path(run_dir)).mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ck = load(cfg.base, getattr(torch, cfg.dtype))
    model = ck.model.to(cfg.device)
    if cfg.freeze_vision:
        modules(model)[0].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    examples, w, h = build_examples(ck, cfg.data, "train", cfg.limit)
    step, losses = 0, []
    ckpt = run / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        free = ("steps", "save_every", "threads", "device")
        saved = {k: v for k, v in state["config"].items() if k not in free}
        now = {k: v for k, v in asdict(cfg).items() if k not in free}
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise HFLlavaError(f"{ckpt} was written with another configuration ({', '.join(diff)} differ); use a new "
                               f"--run-dir or the same options")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, losses = state["step"], list(state["losses"])
        log.info("resuming %s at step %d", run, step)
    model.eval()  # LLaVA's dropouts are 0; eval keeps every forward deterministic
    t0 = time.perf_counter()
    while step < cfg.steps:
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, step])
        picks = rng.choice(len(examples), size=cfg.batch, replace=len(examples) < cfg.batch)
        opt.zero_grad(set_to_none=True)
        total = sum(len(examples[i].ids) - examples[i].n_prompt for i in picks)
        acc = 0.0
        for i in picks:
            loss = example_loss(ck, examples[i], _pixels(ck, examples[i], (w, h)))
            (loss / total).backward()
            acc += float(loss.detach())
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        losses.append(acc / total)
        log.info("step %d loss %.4f lr %.2g (%.1f s)", step, losses[-1], lr, time.perf_counter() - t0)
        if step % cfg.save_every == 0 or step == cfg.steps:
            tmp = run / (CHECKPOINT + ".tmp")
            torch.save({"step": step, "model": model.state_dict(), "optim": opt.state_dict(), "config": asdict(cfg),
                        "losses": losses}, tmp)
            tmp.replace(ckpt)
    (run / "log.csv").write_text("step,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses)))
    save(ck, run / MODEL_DIR, cfg, w, h, step)
    return {"step": step, "losses": losses}


def save(ck: Checkpoint, out: Path, cfg: HFTrainConfig, width: int, height: int, step: int) -> Path:
    """``save_pretrained`` of model and tokenizer, the base's processor files and the plan image size."""
    out.mkdir(parents=True, exist_ok=True)
    ck.model.save_pretrained(out)
    ck.tokenizer.save_pretrained(out)
    for name in PROCESSOR_FILES:
        src = Path(cfg.base) / name
        if src.is_file() and not (out / name).is_file():
            shutil.copyfile(src, out / name)
    assets = load_assets()
    (out / TRAIN_INFO).write_text(json.dumps({
        "plan_width": width, "plan_height": height, "base": str(cfg.base), "data": str(cfg.data), "steps": step,
        "format_version": assets.version, "format_hash": assets.hash}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgebridge.train.planner.hf_llava",
                                description="Fine-tune a local Hugging Face LLaVA-1.5 checkpoint on pointing data.")
    p.add_argument("--base", required=True, help="checkpoint directory (save_pretrained layout, read locally)")
    p.add_argument("--data", required=True, help="pointing data set (edge-sim pointing, imagefolder layout)")
    p.add_argument("--run-dir", required=True, help="checkpoint, log and the fine-tuned model (RUN/model)")
    d = HFTrainConfig("", "")
    for name in ("steps", "batch", "seed", "warmup", "save_every", "limit", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--device", default=d.device, help="cpu (default) or cuda")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16"])
    p.add_argument("--freeze-vision", action="store_true", help="train projector and language model only")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = HFTrainConfig(**{f.name: getattr(a, f.name) for f in fields(HFTrainConfig)})
    try:
        res = train(a.run_dir, cfg)
    except (HFLlavaError, FileNotFoundError) as e:
        print(f"hf_llava: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"step": res["step"], "last_loss": res["losses"][-1] if res["losses"] else None,
                      "model": str(Path(a.run_dir) / MODEL_DIR)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
