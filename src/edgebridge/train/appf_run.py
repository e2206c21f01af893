"""``python -m edgebridge.train.appf_run``: one APPF training run of a given config, alone or under ``torchrun``.

    torchrun --standalone --nproc-per-node 2 -m edgebridge.train.appf_run --config train_config.json \
        --run-dir build/weights/run --demos build/weights/demos/put_cup_in_tray build/weights/demos/...

``--config`` is a training config as JSON (what ``make weights --nproc N`` writes, or a run directory's
``config.json``), so every process trains with the same config, and the same one an in-process run of it
would use. Each stage's batch is global, split over the processes (``appf.Trainer``). Rerunning on the same
``--run-dir`` resumes; the export step is ``edge-export expert --run DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edgebridge.train.appf_run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="training config (JSON, TrainConfig.to_dict)")
    ap.add_argument("--demos", type=Path, nargs="+", required=True, help="demonstration directories")
    ap.add_argument("--run-dir", type=Path, required=True, help="run directory (created; resumed if it holds "
                    "ckpt.pt); not --run, which torchrun would take for its own --run-path")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; under torchrun a plain cuda is GPU LOCAL_RANK")
    ap.add_argument("--command", default="", help="the command recorded in final.pt (default: this one)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if importlib.util.find_spec("torch") is None:
        print("python -m edgebridge.train.appf_run: torch is missing; pip install 'edgebridge[train]'", file=sys.stderr)
        return 2
    from .appf import Trainer, TrainConfig

    command = args.command or "python -m edgebridge.train.appf_run " + " ".join(argv)
    try:  # an unreadable config, bad settings or demonstrations, an unusable device: one line
        cfg = TrainConfig.from_dict(json.loads(args.config.read_text()))
        trainer = Trainer(args.demos, args.run_dir, cfg, command=command, device=args.device)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"python -m edgebridge.train.appf_run: {e}", file=sys.stderr)
        return 2
    metrics = trainer.run()  # errors while training keep their traceback
    if metrics:  # rank 0
        print(f"trained on {metrics['world_size']} process(es) ({metrics['train_device_name']}): stage 1 "
              f"{metrics['stage1_wall_s']:.0f} s, stage 2 {metrics['stage2_wall_s']:.0f} s; val position error "
              f"{metrics['val_pos_err_mm']:.1f} mm -> {args.run_dir}/final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
