"""SFT of the planner VLM on pointing data: seeded, resumable, under ``torchrun`` (DDP) or alone.

The loss is cross-entropy on the answer tokens, with **distance-aware targets on the location
tokens**: where the answer holds a pixel coordinate, the target is a Gaussian over the coordinate bins
(``sigma_px``) instead of a single bin, and over the yaw bins a wrapped Gaussian (yaw is periodic in
180 deg for a parallel gripper). Cross-entropy on a single digit bin does not know that 129 is close to
130; this does, and decoding stays plain argmax/grammar-constrained token generation in llama.cpp.

Each run directory holds ``config.json`` (model + training settings), ``tokenizer.json``,
``checkpoint.pt`` (model, optimiser, step; rewritten every ``save_every`` steps and at the end),
``log.csv`` and ``curves.png`` (loss, validation anchor error). Rerunning on the same directory resumes.
The checkpoint holds tensors and plain values only and is read with ``weights_only=True``
(:func:`edgebridge.train.appf.load_checkpoint`): one holding a pickled object is refused, never run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...runtime.planner.format import parse_plan
from ..appf import load_checkpoint
from ..distributed import rank_world
from .data import PointingSplit, constant_phrases, load_split, preprocess, read_split, vocab_texts
from .model import PlannerVLM, VLMConfig, count_params
from .tokenizer import EOS, SLOT_U, SLOT_V, SLOT_YAW, YAW_LIMIT, PlanTokenizer

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "opt", "step")


@dataclass(frozen=True)
class PlannerTrainConfig:
    data: str = ""
    steps: int = 2400
    batch: int = 16
    lr: float = 8e-4
    min_lr_frac: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    sigma_px: float = 1.0
    reg_weight: float = 1.0
    reg_scale_px: float = 8.0
    point_weight: float = 0.5
    point_sigma_patches: float = 0.7
    sigma_yaw: float = 3.0
    yaw_weight: float = 1.0
    seed: int = 0
    threads: int = 0
    eval_every: int = 500
    eval_n: int = 64
    save_every: int = 250
    train_limit: int | None = None
    model: VLMConfig = field(default_factory=VLMConfig)


def batch_tensors(split: PointingSplit, idx: np.ndarray, cfg: VLMConfig) -> dict:
    """Images, the shared prefix, padded (suffix + answer[:-1]) rows and the answer positions."""
    imgs = torch.from_numpy(np.stack([preprocess(split.images[i], cfg.image_size, cfg.image_mean, cfg.image_std)
                                      for i in idx]))
    rests = [split.suffix[i] + split.answer[i][:-1] for i in idx]
    width = max(len(r) for r in rests)
    rest = torch.full((len(idx), width), EOS, dtype=torch.long)
    for j, r in enumerate(rests):
        rest[j, :len(r)] = torch.tensor(r)
    start = len(split.prefix) + cfg.n_patches
    rows, cols, tgt, slot, val = [], [], [], [], []
    for j, i in enumerate(idx):
        s0 = start + len(split.suffix[i]) - 1
        n = len(split.answer[i])
        rows += [j] * n
        cols += range(s0, s0 + n)
        tgt += split.answer[i]
        slot += split.slots[i]
        val += split.values[i]
    # pointing targets: the position that predicts each anchor's u, and the anchor's (u, v) in the padded square
    prow, pcol, pxy = [], [], []
    top, left = (cfg.image_size - cfg.plan_height) // 2, (cfg.image_size - cfg.plan_width) // 2
    for r, c, s, v, s2, v2 in zip(rows, cols, slot, val, slot[2:] + [0, 0], val[2:] + [0, 0]):
        if s == SLOT_U and s2 == SLOT_V:  # u, ", ", v
            prow.append(r)
            pcol.append(c)
            pxy.append((v + left + 0.5, v2 + top + 0.5))
    return {"img": imgs, "prefix": torch.tensor(split.prefix), "rest": rest, "rows": torch.tensor(rows),
            "cols": torch.tensor(cols), "target": torch.tensor(tgt), "slot": torch.tensor(slot),
            "value": torch.tensor(val, dtype=torch.float32), "point_rows": torch.tensor(prow, dtype=torch.long),
            "point_cols": torch.tensor(pcol, dtype=torch.long),
            "point_xy": torch.tensor(pxy, dtype=torch.float32).reshape(-1, 2)}


def point_loss(scores: torch.Tensor, b: dict, cfg: VLMConfig, sigma_patches: float) -> torch.Tensor:
    """Cross-entropy of the pointing scores against a Gaussian over the patch grid at each anchor: the
    position that is about to write an anchor's pixel is taught to look at the anchor's patch."""
    g = cfg.image_size // cfg.patch
    centres = (torch.arange(g, dtype=torch.float32) + 0.5) * cfg.patch
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=-1)           # (n_patches, 2) in pixels
    d2 = ((grid[None] - b["point_xy"][:, None]) ** 2).sum(-1) / (cfg.patch * sigma_patches) ** 2
    q = torch.softmax(-0.5 * d2, dim=-1)
    return -(q * F.log_softmax(scores.float(), dim=-1)).sum(-1).mean()


def plan_loss(logits: torch.Tensor, b: dict, tok: PlanTokenizer, sigma_px: float, sigma_yaw: float,
              reg_weight: float = 0.0, reg_scale_px: float = 8.0, yaw_weight: float = 1.0) -> torch.Tensor:
    """Mean per-token loss: hard CE off the location slots, Gaussian-target CE on them, plus (``reg_weight``)
    the distance between the expected pixel under the model's distribution over the pixel bins and the
    target, in units of ``reg_scale_px``: a gradient that says which way to move, however far off the
    prediction is, where cross-entropy only says which bin is right. ``yaw_weight`` scales the yaw token's
    term (one token per plan against two per anchor)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    loss = -logp.gather(1, b["target"][:, None]).squeeze(1)
    for kind, ids, lo, period, sigma in ((SLOT_U, tok.u_ids, 0, None, sigma_px), (SLOT_V, tok.u_ids, 0, None, sigma_px),
                                         (SLOT_YAW, tok.yaw_ids, -YAW_LIMIT, 180.0, sigma_yaw)):
        m = b["slot"] == kind
        if not m.any():
            continue
        bins = torch.arange(lo, lo + len(ids), dtype=torch.float32)
        d = bins[None, :] - b["value"][m][:, None]
        if period:
            d = torch.remainder(d + period / 2, period) - period / 2
        q = torch.softmax(-0.5 * (d / sigma) ** 2, dim=-1)
        lp = logp[m][:, ids]
        loss[m] = -(q * lp).sum(-1)
        if kind == SLOT_YAW and yaw_weight != 1.0:
            loss[m] = yaw_weight * loss[m]
        if reg_weight and kind in (SLOT_U, SLOT_V):
            expected = (torch.softmax(lp, dim=-1) * bins).sum(-1)
            loss[m] = loss[m] + reg_weight * (expected - b["value"][m]).abs() / reg_scale_px
    return loss.mean()


def model_config(saved: dict) -> VLMConfig:
    """The model configuration of a run's ``config.json`` (runs written before the quadratic location
    head have a free one)."""
    m = {"location_head": "free", **saved["model"]}
    return VLMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.items()})


def _lr(cfg: PlannerTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model: PlannerVLM, split: PointingSplit, tok: PlanTokenizer, n: int) -> dict:
    """Greedy plans on the first ``n`` scenes: parse rate and anchor error (pixels at 640x480)."""
    cfg = model.config
    model.eval()
    errs, parsed, t0 = [], 0, time.perf_counter()
    prefix = torch.tensor(split.prefix)
    for i in range(min(n, len(split))):
        img = torch.from_numpy(preprocess(split.images[i], cfg.image_size, cfg.image_mean, cfg.image_std))[None]
        ids = model.greedy(img, prefix, torch.tensor(split.suffix[i]), eos=EOS)
        row = split.rows[i]
        try:
            plan = parse_plan(tok.decode(ids), row["instruction"], cfg.plan_width, cfg.plan_height, source="torch")
        except Exception:  # noqa: BLE001 - any failure counts as not parsed
            continue
        parsed += 1
        truth = row["anchors_px"]
        if len(plan.anchors) != len(truth):
            errs += [float("inf")] * len(truth)
            continue
        scale = 640.0 / cfg.plan_width
        errs += [scale * math.hypot(a.u - u, a.v - v) for a, (u, v) in zip(plan.anchors, truth)]
    model.train()
    e = np.array(errs) if errs else np.array([float("inf")])  # a missing or extra anchor counts as inf
    return {"parse_rate": parsed / max(1, min(n, len(split))), "px_median": float(np.percentile(e, 50, method="higher")),
            "px_p90": float(np.percentile(e, 90, method="higher")), "eval_s": time.perf_counter() - t0}


def save_curves(run: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the plot extra is optional
        log.warning("matplotlib missing: no curves.png (pip install 'edgebridge[plot]')")
        return
    rows = list(csv.DictReader((run / "log.csv").open()))
    if not rows:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    tr = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    ax[0].plot(*zip(*tr), lw=0.8, label="train")
    va = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    if va:
        ax[0].plot(*zip(*va), "o-", label="val")
    ax[0].set(xlabel="step", ylabel="loss per answer token", yscale="log", title="SFT loss")
    ax[0].legend()
    ev = [(int(r["step"]), float(r["px_median"]), float(r["px_p90"])) for r in rows
          if r["px_median"] and math.isfinite(float(r["px_p90"]))]
    if ev:
        s, med, p90 = zip(*ev)
        ax[1].plot(s, med, "o-", label="median")
        ax[1].plot(s, p90, "s-", label="p90")
        ax[1].axhline(4, ls=":", c="g", label="median target")
        ax[1].axhline(12, ls=":", c="r", label="p90 target")
    ax[1].set(xlabel="step", ylabel="anchor error (px at 640x480)", yscale="log",
              title="validation anchors (greedy)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=110)
    plt.close(fig)


def train(run: str | Path, cfg: PlannerTrainConfig) -> dict:
    """Train (or resume) into ``run``; returns the last evaluation."""
    run = Path(run)
    rank, world = rank_world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.pt"
    if (run / "tokenizer.json").is_file():
        tok = PlanTokenizer.load(run / "tokenizer.json")
        saved = json.loads((run / "config.json").read_text())
        mcfg = model_config(saved)
    else:
        rows = read_split(cfg.data, "train")
        w, h = cfg.model.plan_width, cfg.model.plan_height
        tok = PlanTokenizer.build(vocab_texts(sorted({r["instruction"] for r in rows}), w, h),
                                  constant_phrases(w, h))
        mcfg = replace(cfg.model, vocab_size=len(tok))
        if rank == 0:
            tok.save(run / "tokenizer.json")
            (run / "config.json").write_text(json.dumps({**asdict(replace(cfg, model=mcfg)), "model": mcfg.to_dict()},
                                                        indent=2))
    cfg = replace(cfg, model=mcfg)
    torch.manual_seed(cfg.seed)
    model = PlannerVLM(mcfg)
    model.set_location_tokens(tok.number_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, CHECKPOINT_KEYS)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = int(ck["step"])
        log.info("resumed %s at step %d", run, step)
    train_split = load_split(cfg.data, "train", tok, mcfg.plan_width, mcfg.plan_height, limit=cfg.train_limit)
    val_split = load_split(cfg.data, "val", tok, mcfg.plan_width, mcfg.plan_height) if rank == 0 else None
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    if rank == 0:
        log.info("planner VLM: %.2f M parameters (vision %.2f M), vocabulary %d, %d train scenes, world %d",
                 count_params(model) / 1e6, count_params(model.vision) / 1e6, len(tok), len(train_split), world)
    log_path = run / "log.csv"
    fields = ["step", "loss", "lr", "val_loss", "parse_rate", "px_median", "px_p90", "elapsed_s"]
    if rank == 0 and not log_path.is_file():
        with log_path.open("w", newline="") as f:
            csv.DictWriter(f, fields).writeheader()
    last: dict = {}
    t0, losses = time.perf_counter(), []
    model.train()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(train_split), size=cfg.batch * world, replace=len(train_split) < cfg.batch * world)
        b = batch_tensors(train_split, idx[rank::world], mcfg)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        if cfg.point_weight and len(b["point_rows"]):
            logits, scores = ddp(b["img"], b["prefix"], b["rest"], b["rows"], b["cols"],
                                 (b["point_rows"], b["point_cols"]))
            aux = cfg.point_weight * point_loss(scores, b, mcfg, cfg.point_sigma_patches)
        else:
            logits, aux = ddp(b["img"], b["prefix"], b["rest"], b["rows"], b["cols"]), 0.0
        loss = plan_loss(logits, b, tok, cfg.sigma_px, cfg.sigma_yaw, cfg.reg_weight, cfg.reg_scale_px,
                         cfg.yaw_weight) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        done = step == cfg.steps
        if rank == 0 and (step % cfg.save_every == 0 or done or step % cfg.eval_every == 0):
            row = {"step": step, "loss": f"{np.mean(losses):.5f}", "lr": f"{_lr(cfg, step - 1):.2e}",
                   "elapsed_s": f"{time.perf_counter() - t0:.1f}"}
            losses = []
            if step % cfg.eval_every == 0 or done:
                with torch.no_grad():
                    model.eval()
                    vb = batch_tensors(val_split, np.arange(min(len(val_split), 64)), mcfg)
                    vl = plan_loss(model(vb["img"], vb["prefix"], vb["rest"], vb["rows"], vb["cols"]), vb, tok,
                                   cfg.sigma_px, cfg.sigma_yaw, cfg.reg_weight, cfg.reg_scale_px)
                    model.train()
                last = evaluate(model, val_split, tok, cfg.eval_n)
                row.update(val_loss=f"{float(vl):.5f}", parse_rate=f"{last['parse_rate']:.3f}",
                           px_median=f"{last['px_median']:.2f}", px_p90=f"{last['px_p90']:.2f}")
                log.info("step %d: loss %s val %.4f | parse %.2f | anchors %.1f / %.1f px (median/p90 at 640x480)",
                         step, row["loss"], float(vl), last["parse_rate"], last["px_median"], last["px_p90"])
            with log_path.open("a", newline="") as f:
                csv.DictWriter(f, fields).writerow(row)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": int(step)}, tmp)
            os.replace(tmp, ckpt_path)
            save_curves(run)
    return last


def load_trained(run: str | Path) -> tuple[PlannerVLM, PlanTokenizer]:
    """The model and tokenizer of a run directory (its last checkpoint)."""
    run = Path(run)
    for name in ("config.json", "tokenizer.json", "checkpoint.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name} not found; is {run} a planner run directory written by "
                                    f"'python -m edgebridge.train.planner'?")
    saved = json.loads((run / "config.json").read_text())
    mcfg = model_config(saved)
    tok = PlanTokenizer.load(run / "tokenizer.json")
    model = PlannerVLM(mcfg)
    model.set_location_tokens(tok.number_ids)
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt", CHECKPOINT_KEYS)["model"])
    model.eval()
    return model, tok
