"""``edge-export vlm --trained RUN_DIR --out DIR``: a planner VLM trained by
``python -m edgebridge.train.planner`` -> GGUF language model + GGUF vision projector, quantised, and
checked against torch.

Files in ``DIR``: ``vlm-f32.gguf`` (the reference), ``vlm-Q8_0.gguf`` and ``vlm-Q4_K_M.gguf`` (llama.cpp's
quantiser), ``vlm-mmproj-f16.gguf`` and ``vlm-mmproj-Q8_0.gguf``, and ``parity.json``:

- **Image embeddings**: llama.cpp's (mtmd, from the PNG) against torch's (from the trainer's
  preprocessing of the same image), as the largest absolute difference relative to the largest torch
  value. Tolerance :data:`EMBED_RTOL` for the f16 projector (f16 weights and ggml's f16 GELU table);
  the f32 projector agrees to about 1e-4.
- **Greedy plans** on held-out scenes (the run's test split): the GGUF planner (llama.cpp, plan grammar,
  temperature 0) against torch's greedy decoding, plan by plan, for each language-model file.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .vlm import ExportError, quantize

log = logging.getLogger(__name__)

EMBED_RTOL = 2e-2
SHIP_LM = "vlm-Q8_0.gguf"
SHIP_MMPROJ = "vlm-mmproj-f16.gguf"


def _torch_plans(model, tok, split, n: int) -> list[str]:
    import torch

    from ..train.planner.data import preprocess
    from ..train.planner.tokenizer import EOS

    c = model.config
    out = []
    prefix = torch.tensor(split.prefix)
    for i in range(n):
        img = torch.from_numpy(preprocess(split.images[i], c.image_size, c.image_mean, c.image_std))[None]
        out.append(tok.decode(model.greedy(img, prefix, torch.tensor(split.suffix[i]), eos=EOS)))
    return out


def _canonical(text: str, instruction: str, w: int, h: int) -> str | None:
    from ..runtime.planner.format import parse_plan, plan_to_json

    try:
        return plan_to_json(parse_plan(text, instruction, w, h))
    except Exception:  # noqa: BLE001 - an unparsable answer compares as None
        return None


def parity(lm_files: dict[str, Path], mmproj: Path, model, tok, data: str | Path, *, n_plans: int = 20,
           n_embed: int = 3, n_threads: int = 2, split: str = "test") -> dict:
    """Embedding and greedy-plan parity of the GGUF files against the torch model."""
    from ..contracts import RGBD, Intrinsics
    from ..runtime.planner.format import plan_to_json
    from ..runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig
    from ..runtime.planner.prompt import png_bytes
    from ..train.planner.data import load_split, preprocess
    from .mtmd_probe import image_embeddings

    import torch

    c = model.config
    name_split = split
    split = load_split(data, name_split, tok, c.plan_width, c.plan_height, limit=max(n_plans, n_embed))
    n_plans = min(n_plans, len(split))
    report: dict = {"embed_rtol": EMBED_RTOL, "n_plans": n_plans, "data": f"{data} ({name_split})"}
    rel = []
    first_lm = next(iter(lm_files.values()))
    for i in range(min(n_embed, len(split))):
        rgb = split.images[i]
        ref = model.image_embeddings(torch.from_numpy(preprocess(rgb, c.image_size, c.image_mean, c.image_std))[None])
        ref = ref[0].numpy()
        got = image_embeddings(first_lm, mmproj, png_bytes(rgb), n_threads=n_threads)
        if got.shape != ref.shape:
            raise ExportError(f"parity: llama.cpp gives {got.shape} image embeddings, torch {ref.shape}")
        rel.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
    report["embed_max_rel_diff"] = max(rel)
    t0 = time.perf_counter()
    ref_plans = [_canonical(t, r["instruction"], c.plan_width, c.plan_height)
                 for t, r in zip(_torch_plans(model, tok, split, n_plans), split.rows)]
    report["torch_s"] = time.perf_counter() - t0
    report["torch_parsed"] = sum(p is not None for p in ref_plans)
    for name, lm in lm_files.items():
        cfg = GGUFPlannerConfig(model_path=str(lm), mmproj_path=str(mmproj), chat_handler="mtmd", n_ctx=1024,
                                n_threads=n_threads)
        same, mism = 0, []
        with GGUFPlanner(cfg) as planner:
            for i in range(n_plans):
                r = split.rows[i]
                k = r["intrinsics"]
                intr = Intrinsics(c.plan_width, c.plan_height, k["fx"], k["fy"], k["cx"], k["cy"])
                frame = RGBD(split.images[i], np.ones((c.plan_height, c.plan_width), np.float32), intr)
                try:
                    got = plan_to_json(planner.plan(frame, r["instruction"]))
                except Exception as e:  # noqa: BLE001 - reported as a mismatch
                    got = f"error: {e}"
                if ref_plans[i] is None:  # torch's answer does not parse: nothing to compare
                    continue
                if got == ref_plans[i]:
                    same += 1
                elif len(mism) < 5:
                    mism.append({"scene": r["file_name"], "torch": ref_plans[i], "llama.cpp": got})
        report[f"plans_identical_{name}"] = same
        report[f"mismatches_{name}"] = mism
    return report


def export_trained(run: str | Path, out: str | Path, *, quants: tuple[str, ...] = ("Q8_0", "Q4_K_M"),
                   data: str | Path | None = None, n_plans: int = 20, check: bool = True) -> dict:
    """Write the GGUF files of a trained run and (``check``) their parity report; returns the report."""
    from ..runtime.planner.prompt import GGUF_KEY_HASH, GGUF_KEY_VERSION, load_assets
    from ..train.appf import CheckpointError
    from ..train.planner.trainer import load_trained
    from .vlm_gguf import write_lm, write_mmproj

    run, out = Path(run), Path(out)
    try:
        model, tok = load_trained(run)
    except (FileNotFoundError, CheckpointError) as e:
        raise ExportError(str(e)) from e
    out.mkdir(parents=True, exist_ok=True)
    assets = load_assets()
    stamp = {GGUF_KEY_VERSION: assets.version, GGUF_KEY_HASH: assets.hash}
    f32 = write_lm(model, tok, out / "vlm-f32.gguf", metadata=stamp)
    # a quadratic location head's rows cancel large terms near the peak: its output matrix stays f32
    keep = model.config.location_head == "quadratic"
    lms = {"f32": f32, **{q: quantize(f32, out / f"vlm-{q}.gguf", q, keep_output=keep) for q in quants}}
    mm16 = write_mmproj(model, out / SHIP_MMPROJ, quant="F16")
    write_mmproj(model, out / "vlm-mmproj-Q8_0.gguf", quant="Q8_0")
    report: dict = {"files": {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(out.glob("*.gguf"))}}
    if check:
        if data is None:
            data = json.loads((run / "config.json").read_text())["data"]
        report.update(parity(lms, mm16, model, tok, data, n_plans=n_plans))
        if report["embed_max_rel_diff"] > EMBED_RTOL:
            raise ExportError(f"parity: llama.cpp's image embeddings differ from torch's by "
                              f"{report['embed_max_rel_diff']:.3g} (relative), over the tolerance {EMBED_RTOL}")
    (out / "parity.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
