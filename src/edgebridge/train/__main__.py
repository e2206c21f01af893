"""``python -m edgebridge.train``: APPF training of the action expert on recorded demonstrations, or
fine-tuning a trained one on recorded (e.g. teleoperated) episodes.

Examples::

    python -m edgebridge.train --demos demos/put_cup_in_tray --run runs/expert \
        --stage1-steps 1500 --stage2-steps 2000 --goal-noise 0.1 --seed 0
    python -m edgebridge.train --from-dataset data/stack --init shipped --run runs/stack --steps 400

``--from-dataset`` fine-tunes the ``--init`` weights (``shipped``, an .onnx export or a training run
directory) on LeRobot data sets; episodes without guidance get it in hindsight from their gripper events
(``train/finetune.py``, ``train/hindsight.py``); the validation error is printed before and after.
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
    ap.add_argument("--demos", type=Path, nargs="+", default=None, help="demonstration directories (APPF from scratch)")
    ap.add_argument("--from-dataset", type=Path, nargs="+", default=None, metavar="DIR",
                    help="LeRobot data sets to fine-tune --init on (guidance built in hindsight where missing)")
    ap.add_argument("--init", default="shipped", help="--from-dataset: the weights to start from: shipped, an .onnx "
                    "export (with its .json) or a training run directory")
    ap.add_argument("--steps", type=int, default=400, help="--from-dataset: fine-tuning steps")
    ap.add_argument("--batch", type=int, default=64, help="--from-dataset: batch size")
    ap.add_argument("--lr", type=float, default=1e-4, help="--from-dataset: peak learning rate")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="--from-dataset: validation episodes (fraction)")
    ap.add_argument("--run", type=Path, default=None, help="run directory (created; resumed if it holds ckpt.pt); "
                    "--from-dataset: default runs/finetune-<first data set's name>")
    ap.add_argument("--stage1-steps", type=int, default=d.stage1.steps, help="action pre-training steps")
    ap.add_argument("--stage1-batch", type=int, default=d.stage1.batch)
    ap.add_argument("--stage1-lr", type=float, default=d.stage1.lr)
    ap.add_argument("--stage2-steps", type=int, default=d.stage2.steps, help="point-cloud fine-tuning steps")
    ap.add_argument("--stage2-batch", type=int, default=d.stage2.batch)
    ap.add_argument("--stage2-lr", type=float, default=d.stage2.lr)
    ap.add_argument("--goal-noise", type=float, default=d.goal_noise,
                    help="std of Gaussian noise on the guidance/goal tokens (normalised units)")
    ap.add_argument("--plan-shift", type=float, default=None, metavar="M",
                    help=f"std (metres, per axis) of the consistent plan-shift augmentation (0: off; default "
                         f"{d.plan_shift_m}, fine-tuning: as the initial weights were trained)")
    ap.add_argument("--arm-shift", type=float, default=None, metavar="M",
                    help=f"std (metres, per axis) of the arm-offset augmentation that hides the correction "
                         f"from the proprio tokens (0: off; default {d.arm_shift_m}, fine-tuning: as trained)")
    ap.add_argument("--clean-plans", type=float, default=None, metavar="FRACTION",
                    help=f"fraction of the plan-shifted samples whose shift cancels the demonstrated correction "
                         f"(an accurate plan, target correction ~0; default {d.clean_plan_fraction}, fine-tuning: as trained)")
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

    d = TrainConfig()
    model = ExpertNetConfig()
    if args.tiny:
        model = ExpertNetConfig(cloud_channels=(16, 32), cloud_feat=32, obs_feat=32, step_embed=16, down_dims=(16, 32))
    return replace(TrainConfig(), model=model, goal_noise=args.goal_noise,
                   plan_shift_m=d.plan_shift_m if args.plan_shift is None else args.plan_shift,
                   arm_shift_m=d.arm_shift_m if args.arm_shift is None else args.arm_shift,
                   clean_plan_fraction=d.clean_plan_fraction if args.clean_plans is None else args.clean_plans,
                   aux_weight=args.aux_weight,
                   seed=args.seed,
                   eval_every=args.eval_every, ckpt_every=args.eval_every, threads=args.threads,
                   stage1=StageConfig(args.stage1_steps, args.stage1_batch, args.stage1_lr, use_cloud=False),
                   stage2=StageConfig(args.stage2_steps, args.stage2_batch, args.stage2_lr, use_cloud=True))


def finetune_from_args(args, command: str) -> int:
    """``--from-dataset``: fine-tune ``--init`` on the data sets; prints the validation error before and after."""
    from .finetune import FineTuner, FinetuneConfig

    run = args.run or Path("runs") / f"finetune-{args.from_dataset[0].resolve().name}"
    try:
        cfg = FinetuneConfig(steps=args.steps, batch=args.batch, lr=args.lr, goal_noise=args.goal_noise,
                             plan_shift_m=args.plan_shift, arm_shift_m=args.arm_shift, clean_plan_fraction=args.clean_plans,
                             val_fraction=args.val_fraction, eval_every=args.eval_every, seed=args.seed, threads=args.threads)
        tuner = FineTuner(args.from_dataset, run, cfg, init=args.init, command=command, device=args.device)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"python -m edgebridge.train: {e}", file=sys.stderr)
        return 2
    m = tuner.run()
    b, a = m["before"], m["after"]
    print(f"fine-tuned {m['init']} on {m['episodes']} episodes ({m['train_samples']} training / {m['val_samples']} "
          f"validation samples, {m['steps']} steps, {m['train_time_s']:.0f} s) -> {run}/final.pt")
    print(f"validation position error (DDIM-{tuner.init.k}, zero initial noise as the runtime samples): "
          f"{b['pos_err_zero_mm']:.1f} mm before, {a['pos_err_zero_mm']:.1f} mm after "
          f"(sampled noise {b['pos_err_mm']:.1f} -> {a['pos_err_mm']:.1f} mm; the guidance alone {a['ik_pos_err_mm']:.1f} mm; "
          f"gripper {b['gripper_err']:.3f} -> {a['gripper_err']:.3f})")
    print(f"export: edge-export expert --run {run} --out {run}/export --k {tuner.init.k}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser()
    args = ap.parse_args(argv)
    if (args.demos is None) == (args.from_dataset is None):
        ap.error("give --demos (APPF training from scratch) or --from-dataset (fine-tuning --init), not both")
    if args.demos is not None and args.run is None:
        ap.error("--demos needs --run DIR")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m edgebridge.train " + " ".join(shlex.quote(a) for a in argv)
    if args.from_dataset is not None:
        return finetune_from_args(args, command)
    from .appf import Trainer

    try:  # bad settings, missing or malformed demonstrations, an unusable run directory or device: one line
        trainer = Trainer(args.demos, args.run, config_from_args(args), command=command, device=args.device)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"python -m edgebridge.train: {e}", file=sys.stderr)
        return 2
    trainer.run()  # errors while training keep their traceback
    return 0


if __name__ == "__main__":
    sys.exit(main())
