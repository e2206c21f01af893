"""Reproduce the shipped action-expert weights from scratch (``make weights``).

Steps: write demonstrations of every task with ``edge-sim demos`` (``--jobs`` tasks at a time, one thread
each) -> APPF stage 1 (action pre-training) -> APPF stage 2 (point-cloud fine-tuning) -> ``edge-export
expert`` into ``src/edgebridge/assets/expert/`` (ONNX + metadata). Defaults are sized for a 2-core CPU:
all five sim tasks, 40 demonstrations each. It prints how long each step took and records it under
``make_weights`` in the exported metadata: the demonstrations of each task, each training stage, the
export, the world size and the device's name (the time of a run is that record, not a figure here).
``--device cuda`` trains on a GPU, with other numerics than a CPU run.

``--nproc N`` (``make weights NPROC=N``) trains under ``torchrun --standalone --nproc-per-node N -m
edgebridge.train.appf_run`` (DDP: gloo on the CPU, nccl on GPUs, one per process): the stage batch sizes
stay global, each process draws 1/N of every batch; with 1 (the default) it trains in this process.

    python -m edgebridge.train.make_weights [--tasks ...] [--episodes 40] [--jobs 2] [--nproc 1]
        [--stage1-steps 600] [--stage2-steps 2800] [--clean-plans 0.25]
        [--work build/weights] [--out src/edgebridge/assets/expert] [--seed 0]

Rerunning reuses finished demonstrations (per task) and resumes an interrupted training run in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "expert"
TASKS = ("put_cup_in_tray", "put_cube_then_cup_in_tray", "stack_red_on_blue", "clear_table", "clear_table_obstacle")


def _sim_cli() -> list[str]:
    """The command line of ``edge-sim`` (the simulator is driven as a program, never imported here)."""
    exe = Path(sys.executable).with_name("edge-sim")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgebridge.sim.cli"]


def _sim_env() -> dict:
    """The environment of an ``edge-sim`` process: one thread, as several run side by side (``--jobs``)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _demo_config(task: str, episodes: int, out: Path, seed: int) -> dict:
    """The settings ``edge-sim demos`` writes demonstrations with (its ``--print-config``)."""
    cmd = [*_sim_cli(), "demos", "--task", task, "--episodes", str(episodes), "--out", str(out),
           "--seed", str(seed), "--print-config"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_sim_env()) as proc:
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
        subprocess.run(cmd, check=True, env=_sim_env())
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit {e.returncode}; the simulator extra is "
                           "needed: pip install 'edgebridge[sim]'") from e
    return out


def record_demos(tasks: list[str], episodes: int, work: Path, seed: int, jobs: int) -> tuple[list[Path], dict]:
    """:func:`_demos` of every task under ``work/demos``, ``jobs`` at a time: the directories in task order and
    each task's seconds. After a failure no further task starts; the running ones finish, then it is raised."""
    failed = threading.Event()

    def one(task: str) -> tuple[Path, float] | None:
        if failed.is_set():
            return None
        t0 = time.monotonic()
        try:
            out = _demos(task, episodes, work / "demos" / task, seed)
        except BaseException:
            failed.set()
            raise
        return out, round(time.monotonic() - t0, 1)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="demos")
    try:
        done = [f.result() for f in [pool.submit(one, task) for task in tasks]]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [d for d, _ in done], {f"demos_{task}_s": s for task, (_, s) in zip(tasks, done)}


def train_config(args: argparse.Namespace):
    """The TrainConfig of these arguments: the same in-process and under torchrun, whatever ``--nproc`` (its
    batch sizes and threads are the run's, shared out over the processes), so a run resumes under another."""
    from .appf import StageConfig, TrainConfig

    return replace(TrainConfig(), seed=args.seed, goal_noise=args.goal_noise, plan_shift_m=args.plan_shift,
                   arm_shift_m=args.arm_shift, clean_plan_fraction=args.clean_plans, eval_every=200, ckpt_every=200,
                   warmup=50,
                   stage1=StageConfig(args.stage1_steps, args.stage1_batch, 1e-3, use_cloud=False),
                   stage2=StageConfig(args.stage2_steps, args.stage2_batch, 5e-4, use_cloud=True))


def threads_per_process(cfg, nproc: int, device: str) -> int:
    """CPU threads each training process uses (``appf.Trainer``: on the CPU the run's threads are shared out)."""
    return max(1, cfg.threads // nproc) if device == "cpu" else cfg.threads


def _torchrun_cli() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def torchrun_command(nproc: int, config: Path, run_dir: Path, demo_dirs: list[Path], device: str,
                     command: str) -> list[str]:
    """The command line that trains ``config`` under DDP with ``nproc`` processes on this machine."""
    return [*_torchrun_cli(), "--standalone", "--nproc-per-node", str(nproc), "-m", "edgebridge.train.appf_run",
            "--config", str(config), "--run-dir", str(run_dir), "--device", device, "--command", command,
            "--demos", *map(str, demo_dirs)]


def train(demo_dirs: list[Path], run_dir: Path, cfg, *, nproc: int, device: str, command: str) -> None:
    """Train (or resume) ``run_dir``: in this process, or with ``nproc`` > 1 under torchrun."""
    if nproc <= 1:
        from .appf import Trainer

        Trainer(demo_dirs, run_dir, cfg, command=command, device=device).run()
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir.parent / "train_config.json"
    config.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    cmd = torchrun_command(nproc, config, run_dir, demo_dirs, device, command)
    log.info("running %s", " ".join(shlex.quote(c) for c in cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(cfg, nproc, device))}
    try:
        subprocess.run(cmd, check=True, env=env)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"training under torchrun failed with exit {e.returncode} (its log is above); "
                           "rerun to resume, or train in-process with --nproc 1") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebridge.train.make_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="edge-sim task slugs to train on")
    ap.add_argument("--episodes", type=int, default=40, help="demonstrations per task")
    ap.add_argument("--jobs", type=int, default=2, help="edge-sim demos processes at a time (one task each)")
    ap.add_argument("--stage1-steps", type=int, default=600)
    ap.add_argument("--stage1-batch", type=int, default=512)
    ap.add_argument("--stage2-steps", type=int, default=2800)
    ap.add_argument("--stage2-batch", type=int, default=256)
    ap.add_argument("--goal-noise", type=float, default=0.1)
    ap.add_argument("--plan-shift", type=float, default=0.03, metavar="M",
                    help="std (metres) of the consistent plan-shift augmentation")
    ap.add_argument("--arm-shift", type=float, default=0.02, metavar="M",
                    help="std (metres) of the arm-offset augmentation")
    ap.add_argument("--clean-plans", type=float, default=0.25, metavar="FRACTION",
                    help="fraction of the plan-shifted samples given an accurate plan (target correction ~0), so "
                         "the expert learns to leave good guidance alone")
    ap.add_argument("--seed", type=int, default=0, help="seeds the demonstrations and the training")
    ap.add_argument("--demo-seed", type=int, default=None,
                    help="seeds the demonstrations instead (default: --seed); another training draw on the same data")
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu or cuda); the shipped "
                    "weights are from the CPU")
    ap.add_argument("--nproc", type=int, default=1, help="training processes: > 1 trains under torchrun (DDP), "
                    "the batch sizes staying global")
    ap.add_argument("--k", type=int, default=10, help="DDIM steps unrolled in the shipped graph")
    ap.add_argument("--work", type=Path, default=Path("build/weights"), help="demos + training run directory")
    ap.add_argument("--out", type=Path, default=ASSETS, help="where the ONNX + metadata go")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.nproc < 1:
        ap.error("--jobs and --nproc must be at least 1")
    demo_seed = args.seed if args.demo_seed is None else args.demo_seed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from ..export.expert import export_expert
    from .appf import load_final
    from .distributed import device_name

    t_start = time.monotonic()
    demo_dirs, timings = record_demos(args.tasks, args.episodes, args.work, demo_seed, args.jobs)
    timings["demos_s"] = round(time.monotonic() - t_start, 1)
    cfg = train_config(args)
    command = "python -m edgebridge.train.make_weights " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.monotonic()
    run_dir = args.work / "run"
    train(demo_dirs, run_dir, cfg, nproc=args.nproc, device=args.device, command=command)
    timings["train_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    net, record = load_final(run_dir)
    m = record.get("metrics") or {}  # a run record of before the per-stage times has none of them
    timings.update({f"train_stage{i}_s": m[f"stage{i}_wall_s"] for i in (1, 2) if f"stage{i}_wall_s" in m})
    record["data"] = {**(record.get("data") or {}), "tasks": args.tasks, "episodes_per_task": args.episodes,
                      "demo_seed": demo_seed}
    path = export_expert(net, record, args.out, k=args.k)
    timings["export_s"] = round(time.monotonic() - t0, 1)
    total = time.monotonic() - t_start
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    world = int(m.get("world_size", 1))
    where = m.get("train_device_name") or device_name(args.device)
    meta["make_weights"] = {**timings, "total_s": round(total, 1), "world_size": world, "device": args.device,
                            "device_name": where, "demo_jobs": args.jobs, "torch": torch.__version__,
                            "threads": threads_per_process(cfg, world, args.device)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"make weights: wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {meta_path.name} in "
          f"{total / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}; trained on {world} "
          f"process(es), {where}); val position error {meta['metrics']['val_pos_err_mm']:.1f} mm at "
          f"K={meta['metrics']['eval_k']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
