"""Reproduce the shipped action-expert weights from scratch (``make weights``).

Steps: write demonstrations with ``edge-sim demos`` -> APPF stage 1 (action pre-training) -> APPF stage 2
(point-cloud fine-tuning) -> ``edge-export expert`` into ``src/edgebridge/assets/expert/`` (ONNX +
metadata). Prints how long each step took. Defaults are sized for a 2-core CPU (about 50 minutes;
``--device cuda`` trains on a GPU in a few minutes, with other numerics than the shipped CPU run).

    python -m edgebridge.train.make_weights [--episodes 60] [--stage1-steps 600] [--stage2-steps 2800]
        [--work build/weights] [--out src/edgebridge/assets/expert] [--seed 0]

Rerunning reuses finished demonstrations and resumes an interrupted training run in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "expert"
TASKS = ("put_cup_in_tray",)


def _sim_cli() -> list[str]:
    """The command line of ``edge-sim`` (the simulator is driven as a program, never imported here)."""
    exe = Path(sys.executable).with_name("edge-sim")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgebridge.sim.cli"]


def _demo_config(task: str, episodes: int, out: Path, seed: int) -> dict:
    """The settings ``edge-sim demos`` writes demonstrations with (its ``--print-config``)."""
    cmd = [*_sim_cli(), "demos", "--task", task, "--episodes", str(episodes), "--out", str(out),
           "--seed", str(seed), "--print-config"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        printed, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit {proc.returncode}; the simulator extra is "
                           "needed: pip install 'edgebridge[sim]'")
    return json.loads(printed)


def _demos(task: str, episodes: int, out: Path, seed: int) -> Path:
    """Run ``edge-sim demos`` unless ``out`` already holds these demonstrations (same count, seed and config)."""
    meta = out / "meta" / "edgebridge.json"  # the LeRobot data set's edgebridge record (sim/demos.py)
    if meta.exists():
        recorded = json.loads(meta.read_text())
        wanted = {"episodes": episodes, "seed": seed, "config": _demo_config(task, episodes, out, seed)}
        found = {"episodes": len(recorded.get("episodes", [])), "seed": recorded.get("seed"),
                 "config": recorded.get("config")}
        if found == wanted:
            log.info("reusing %s", out)
            return out
        differ = ", ".join("another DemoConfig" if k == "config" else f"{k} {found[k]} (wanted {wanted[k]})"
                           for k in wanted if found[k] != wanted[k])
        log.info("%s holds other demonstrations (%s); recording again", out, differ)  # edge-sim demos replaces them
    cmd = [*_sim_cli(), "demos", "--task", task, "--episodes", str(episodes),
           "--out", str(out), "--seed", str(seed)]
    log.info("running %s", " ".join(shlex.quote(c) for c in cmd))
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit {e.returncode}; the simulator extra is "
                           "needed: pip install 'edgebridge[sim]'") from e
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebridge.train.make_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="edge-sim task slugs to train on")
    ap.add_argument("--episodes", type=int, default=60, help="demonstrations per task")
    ap.add_argument("--stage1-steps", type=int, default=600)
    ap.add_argument("--stage1-batch", type=int, default=512)
    ap.add_argument("--stage2-steps", type=int, default=2800)
    ap.add_argument("--stage2-batch", type=int, default=256)
    ap.add_argument("--goal-noise", type=float, default=0.1)
    ap.add_argument("--plan-shift", type=float, default=0.03, metavar="M",
                    help="std (metres) of the consistent plan-shift augmentation")
    ap.add_argument("--arm-shift", type=float, default=0.02, metavar="M",
                    help="std (metres) of the arm-offset augmentation")
    ap.add_argument("--clean-plans", type=float, default=0.0, metavar="FRACTION",
                    help="fraction of the plan-shifted samples given an accurate plan (target correction ~0)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the demonstrations and the training")
    ap.add_argument("--demo-seed", type=int, default=None,
                    help="seeds the demonstrations instead (default: --seed); another training draw on the same data")
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu or cuda); the shipped "
                    "weights and the timing above are from the CPU")
    ap.add_argument("--k", type=int, default=10, help="DDIM steps unrolled in the shipped graph")
    ap.add_argument("--work", type=Path, default=Path("build/weights"), help="demos + training run directory")
    ap.add_argument("--out", type=Path, default=ASSETS, help="where the ONNX + metadata go")
    args = ap.parse_args(argv)
    demo_seed = args.seed if args.demo_seed is None else args.demo_seed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from ..export.expert import export_expert
    from .appf import StageConfig, Trainer, TrainConfig, load_final

    t_start = time.monotonic()
    timings = {}
    demo_dirs = []
    for task in args.tasks:
        t0 = time.monotonic()
        demo_dirs.append(_demos(task, args.episodes, args.work / "demos" / task, demo_seed))
        timings[f"demos_{task}_s"] = round(time.monotonic() - t0, 1)
    cfg = replace(TrainConfig(), seed=args.seed, goal_noise=args.goal_noise, plan_shift_m=args.plan_shift, arm_shift_m=args.arm_shift,
                  clean_plan_fraction=args.clean_plans, eval_every=200, ckpt_every=200,
                  warmup=50, stage1=StageConfig(args.stage1_steps, args.stage1_batch, 1e-3, use_cloud=False),
                  stage2=StageConfig(args.stage2_steps, args.stage2_batch, 5e-4, use_cloud=True))
    command = "python -m edgebridge.train.make_weights " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.monotonic()
    run_dir = args.work / "run"
    Trainer(demo_dirs, run_dir, cfg, command=command, device=args.device).run()
    timings["train_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    net, record = load_final(run_dir)
    record["data"] = {**(record.get("data") or {}), "tasks": args.tasks, "episodes_per_task": args.episodes,
                      "demo_seed": demo_seed}
    path = export_expert(net, record, args.out, k=args.k)
    timings["export_s"] = round(time.monotonic() - t0, 1)
    total = time.monotonic() - t_start
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["make_weights"] = {**timings, "total_s": round(total, 1), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"make weights: wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {meta_path.name} in "
          f"{total / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}); "
          f"val position error {meta['metrics']['val_pos_err_mm']:.1f} mm at K={meta['metrics']['eval_k']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
