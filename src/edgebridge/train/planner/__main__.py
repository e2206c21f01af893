"""``python -m edgebridge.train.planner``: SFT of the planner VLM on pointing data.

Example::

    edge-sim pointing --tasks all --scenes 6000 --out data/pointing
    python -m edgebridge.train.planner --data data/pointing --run-dir runs/planner --steps 6000
    torchrun --nproc-per-node 2 -m edgebridge.train.planner --data data/pointing --run-dir runs/planner

Rerunning with the same ``--run-dir`` resumes from its last checkpoint. Then export with
``edge-export vlm --trained runs/planner --out DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from .model import VLMConfig
    from .trainer import PlannerTrainConfig

    d, m = PlannerTrainConfig(), VLMConfig()
    ap = argparse.ArgumentParser(prog="python -m edgebridge.train.planner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="pointing data set (edge-sim pointing --out)")
    ap.add_argument("--run-dir", type=Path, required=True, help="run directory (created; resumed if it holds a "
                    "checkpoint); not --run, which torchrun would take for its own --run-path")
    for f in fields(PlannerTrainConfig):
        if f.name in ("data", "model"):
            continue
        v = getattr(d, f.name)
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(v) if v is not None else int, default=v)
    for name in ("vit_width", "vit_layers", "vit_heads", "vit_ff", "lm_width", "lm_layers", "lm_heads", "lm_ff",
                 "patch"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(m, name),
                        help="model size (ignored when resuming)")
    ap.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun (gloo, nccl)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch
    except ImportError:
        print("python -m edgebridge.train.planner: torch is missing; pip install 'edgebridge[train]'", file=sys.stderr)
        return 2
    from .model import VLMConfig
    from .trainer import PlannerTrainConfig, train

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.data / "train" / "metadata.jsonl").is_file():
        print(f"python -m edgebridge.train.planner: {args.data} is not a pointing data set (no train/metadata.jsonl); "
              f"write one with 'edge-sim pointing --tasks all --scenes 6000 --out {args.data}'", file=sys.stderr)
        return 2
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        torch.distributed.init_process_group(backend=args.backend)
    model = VLMConfig(**{n: getattr(args, n) for n in ("vit_width", "vit_layers", "vit_heads", "vit_ff", "lm_width",
                                                       "lm_layers", "lm_heads", "lm_ff", "patch")})
    cfg = PlannerTrainConfig(data=str(args.data), model=model,
                             **{f.name: getattr(args, f.name) for f in fields(PlannerTrainConfig)
                                if f.name not in ("data", "model")})
    try:
        last = train(args.run_dir, cfg)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0 and last:
        print(f"planner trained: parse {last['parse_rate']:.2f}, anchors {last['px_median']:.1f} / "
              f"{last['px_p90']:.1f} px (median / p90 at 640x480) -> {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
