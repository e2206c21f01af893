"""``python -m edgebridge.train``: APPF training of the action expert on recorded demonstrations.

Example::

    python -m edgebridge.train --demos demos/put_cup_in_tray --run runs/expert \
        --stage1-steps 1500 --stage2-steps 2000 --goal-noise 0.1 --seed 0

Rerunning with the same ``--run`` resumes from its last checkpoint. Then export with
``edge-export expert --run runs/expert --out src/edgebridge/assets/expert``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from .appf import TrainConfig

    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m edgebridge.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=Path, nargs="+", required=True, help="demonstration directories")
    ap.add_argument("--run", type=Path, required=True, help="run directory (created; resumed if it holds ckpt.pt)")
    ap.add_argument("--stage1-steps", type=int, default=d.stage1.steps, help="action pre-training steps")
    ap.add_argument("--stage1-batch", type=int, default=d.stage1.batch)
    ap.add_argument("--stage1-lr", type=float, default=d.stage1.lr)
    ap.add_argument("--stage2-steps", type=int, default=d.stage2.steps, help="point-cloud fine-tuning steps")
    ap.add_argument("--stage2-batch", type=int, default=d.stage2.batch)
    ap.add_argument("--stage2-lr", type=float, default=d.stage2.lr)
    ap.add_argument("--goal-noise", type=float, default=d.goal_noise,
                    help="std of Gaussian noise on the guidance/goal tokens (normalised units)")
    ap.add_argument("--plan-shift", type=float, default=d.plan_shift_m, metavar="M",
                    help="std (metres, per axis) of the consistent plan-shift augmentation (0: off)")
    ap.add_argument("--arm-shift", type=float, default=d.arm_shift_m, metavar="M",
                    help="std (metres, per axis) of the arm-offset augmentation that hides the correction "
                         "from the proprio tokens (0: off)")
    ap.add_argument("--clean-plans", type=float, default=d.clean_plan_fraction, metavar="FRACTION",
                    help="fraction of the plan-shifted samples whose shift cancels the demonstrated correction "
                         "(an accurate plan, target correction ~0)")
    ap.add_argument("--aux-weight", type=float, default=d.aux_weight,
                    help="weight of the auxiliary cloud-feature -> correction regression in stage 2 (0: off)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--device", default="cpu", help="torch device to train on: cpu or cuda[:N] (data "
                    "augmentation stays on the CPU)")
    ap.add_argument("--tiny", action="store_true", help="a tiny network (for smoke tests)")
    return ap


def config_from_args(args: argparse.Namespace):
    from .appf import StageConfig, TrainConfig
    from .model import ExpertNetConfig

    model = ExpertNetConfig()
    if args.tiny:
        model = ExpertNetConfig(cloud_channels=(16, 32), cloud_feat=32, obs_feat=32, step_embed=16, down_dims=(16, 32))
    return replace(TrainConfig(), model=model, goal_noise=args.goal_noise, plan_shift_m=args.plan_shift, arm_shift_m=args.arm_shift,
                   clean_plan_fraction=args.clean_plans, aux_weight=args.aux_weight,
                   seed=args.seed,
                   eval_every=args.eval_every, ckpt_every=args.eval_every, threads=args.threads,
                   stage1=StageConfig(args.stage1_steps, args.stage1_batch, args.stage1_lr, use_cloud=False),
                   stage2=StageConfig(args.stage2_steps, args.stage2_batch, args.stage2_lr, use_cloud=True))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .appf import Trainer

    command = "python -m edgebridge.train " + " ".join(shlex.quote(a) for a in argv)
    try:  # bad settings, missing or malformed demonstrations, an unusable run directory or device: one line
        trainer = Trainer(args.demos, args.run, config_from_args(args), command=command, device=args.device)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"python -m edgebridge.train: {e}", file=sys.stderr)
        return 2
    trainer.run()  # errors while training keep their traceback
    return 0


if __name__ == "__main__":
    sys.exit(main())
