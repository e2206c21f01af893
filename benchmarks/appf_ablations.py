"""Paper ablations of the action expert in our simulator: APPF vs end-to-end training, and the goal noise.

Variants, all on the same demonstrations, seed and network:

* ``appf``: stage 1 (trajectories only, cloud branch zeroed) then stage 2 (with clouds) — the shipped recipe;
* ``e2e``: end-to-end, clouds from the first step, for as many steps as ``appf``'s two stages together;
* ``noise_<g>``: ``appf`` with Gaussian goal/guidance noise ``g`` (normalised units) for each ``--goal-noises``.

Each variant is trained in ``--work/<variant>``, exported to ONNX (K = 10) and run closed loop in the
simulator (oracle planner, ``--seeds`` held-out scenes from ``--seed-base``, each ``--conditions``); the
validation loss and position error of the correction are logged every ``--eval-every`` steps. Output:
a table (variant, steps, training time, final validation error vs the guidance alone, success), a PNG of
validation loss / error against the step (``--plot``), and with ``--json`` the flat keys
``<variant>.val_pos_err_mm``, ``<variant>.val_loss``, ``<variant>.train_s``, ``<variant>.success.<condition>``
and ``guidance_pos_err_mm``. Reruns reuse finished runs in ``--work``.

    python benchmarks/appf_ablations.py --demos build/weights/demos/put_cup_in_tray \\
        --json benchmarks/results/appf_ablations.json --plot benchmarks/results/appf_ablations.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("COLUMNS", "150")  # the table is wide; rich reads COLUMNS when not on a terminal
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, machine_line, print_table, write_json  # noqa: E402

CONDITIONS = {"clean": 0.0, "plan_1cm": 0.01, "plan_3cm": 0.03}


def _variants(args) -> dict[str, dict]:
    s1, s2 = args.stage1_steps, args.stage2_steps
    out = {"appf": {"stage1": s1, "stage2": s2, "goal_noise": args.goal_noise},
           "e2e": {"stage1": 0, "stage2": s1 + s2, "goal_noise": args.goal_noise}}
    for g in args.goal_noises:
        if g != args.goal_noise:
            out[f"noise_{g:g}"] = {"stage1": s1, "stage2": s2, "goal_noise": g}
    return {k: v for k, v in out.items() if not args.only or k in args.only}


def train_and_export(name: str, v: dict, args) -> tuple[Path, list[dict], dict]:
    from edgebridge.export.expert import export_expert
    from edgebridge.train.appf import StageConfig, Trainer, TrainConfig, load_final

    run = args.work / name
    cfg = replace(TrainConfig(), seed=args.seed, goal_noise=v["goal_noise"], plan_shift_m=args.plan_shift,
                  arm_shift_m=args.arm_shift,
                  eval_every=args.eval_every, ckpt_every=args.eval_every, warmup=50,
                  stage1=StageConfig(v["stage1"], 512, 1e-3, use_cloud=False),
                  stage2=StageConfig(v["stage2"], 256, 5e-4, use_cloud=True))
    if not (run / "final.pt").exists():
        Trainer([args.demos], run, cfg, command=f"benchmarks/appf_ablations.py variant {name}",
                device=args.device).run()
    net, record = load_final(run)
    onnx = run / "onnx" / "expert.onnx"
    if not onnx.exists():
        export_expert(net, record, onnx.parent, k=10)
    rows = json.loads((run / "log.json").read_text())
    return onnx, rows, record["metrics"]


def _episode(job: tuple) -> bool:
    from edgebridge.sim.episode import run_episode

    onnx, task, seed, plan_m, threads = job
    logging.basicConfig(level=logging.ERROR)
    return run_episode(task, seed, "onnx", plan_noise_m=plan_m, expert_model=onnx, expert_threads=threads).success


def success(onnx: Path, args, pool=None) -> dict[str, float]:
    """Closed-loop success rate per condition (episodes in ``pool``'s processes when given)."""
    threads = max(1, 2 // max(1, args.jobs))
    run = pool.map if pool is not None else (lambda f, jobs: [f(j) for j in jobs])
    out = {}
    for cond in args.conditions:
        res = run(_episode, [(str(onnx), args.task, seed, CONDITIONS[cond], threads)
                             for seed in range(args.seed_base, args.seed_base + args.seeds)])
        out[cond] = sum(res) / args.seeds
    return out


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        ev = [r for r in rows if r.get("val_loss") is not None]
        x = [r["global_step"] for r in ev]
        axes[0].plot(x, [r["val_loss"] for r in ev], marker=".", label=name)
        axes[1].plot(x, [r["val_pos_err_mm"] for r in ev], marker=".", label=name)
    axes[0].set(xlabel="training step (stage 1 + stage 2)", ylabel="validation denoising loss", yscale="log")
    axes[1].set(xlabel="training step (stage 1 + stage 2)", ylabel="validation position error of the chunk [mm]")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("APPF vs end-to-end, and goal noise (validation split, K = 10)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=Path, required=True, help="demonstrations (edge-sim demos --out DIR)")
    ap.add_argument("--work", type=Path, default=Path("build/ablations"))
    ap.add_argument("--task", default="put_cup_in_tray")
    ap.add_argument("--stage1-steps", type=int, default=300)
    ap.add_argument("--stage2-steps", type=int, default=600)
    ap.add_argument("--goal-noise", type=float, default=0.1, help="the recipe's goal noise (appf, e2e)")
    ap.add_argument("--goal-noises", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.5])
    ap.add_argument("--plan-shift", type=float, default=0.03, help="plan-shift augmentation (m), all variants")
    ap.add_argument("--arm-shift", type=float, default=0.02, help="arm-offset augmentation (m), all variants")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=10, help="closed-loop episodes per variant and condition")
    ap.add_argument("--seed-base", type=int, default=5000, help="first scene seed (held out from the demos)")
    ap.add_argument("--conditions", nargs="+", default=["clean", "plan_3cm"], choices=list(CONDITIONS))
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    ap.add_argument("--device", default="cpu", help="torch device for training (cpu or cuda)")
    ap.add_argument("--jobs", type=int, default=1, help="closed-loop episodes run in parallel processes")
    ap.add_argument("--plot", type=Path, default=None, help="write the validation curves PNG here")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    flat, rows, curves = {}, [], {}
    t0 = time.perf_counter()
    pool = None
    if args.jobs > 1 and args.seeds > 0:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.jobs)
    for name, v in _variants(args).items():
        onnx, log_rows, metrics = train_and_export(name, v, args)
        curves[name] = log_rows
        rates = success(onnx, args, pool) if args.seeds > 0 else {}
        train_s = float(log_rows[-1]["time_s"]) if log_rows else float("nan")
        flat.update({f"{name}.val_pos_err_mm": metrics["val_pos_err_mm"], f"{name}.val_loss": metrics["val_loss"],
                     f"{name}.val_pos_err_zero_mm": metrics.get("val_pos_err_zero_mm", float("nan")),
                     f"{name}.train_s": train_s, **{f"{name}.success.{c}": r for c, r in rates.items()}})
        flat["guidance_pos_err_mm"] = metrics["val_ik_pos_err_mm"]
        rows.append([name, f"{v['stage1']}+{v['stage2']}", f"{v['goal_noise']:g}",
                     f"{train_s:.0f} ({metrics.get('train_device', 'cpu')})",
                     f"{metrics['val_loss']:.4f}", f"{metrics['val_pos_err_mm']:.1f}",
                     f"{metrics.get('val_pos_err_zero_mm', float('nan')):.1f}", f"{metrics['val_ik_pos_err_mm']:.1f}",
                     *[f"{rates.get(c, float('nan')):.2f}" for c in args.conditions]])
        print(f"  {name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print_table(f"APPF ablations ({args.task}; closed loop on seeds {args.seed_base}..{args.seed_base + args.seeds - 1})",
                ["variant", "steps s1+s2", "goal noise", "train s (device)", "val loss", "val err mm", "val err mm (zero noise)",
                 "guidance err mm",
                 *[f"success {c}" for c in args.conditions]], rows, caption=machine_line())
    if args.plot:
        plot(curves, args.plot)
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
