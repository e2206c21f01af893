"""`edge-sim`: run episodes in the embedded world, write demonstrations, list tasks.

    edge-sim run --task "put cup in tray" --planner oracle --expert ik --seed 0 --episodes 5 \
        [--plan-noise-cm 1] [--depth-noise-cm 1] [--no-depth-tare] [--realtime] [--json FILE] [--record DIR] \
        [--rerun FILE.rrd|spawn]
    edge-sim demos --task put_cup_in_tray --episodes 20 --out demos/ [--seed 0] [--print-config]
    edge-sim demos --from-npz OLD_DIR --out demos/      # convert a former npz demonstration set
    edge-sim pointing --tasks all --scenes 6000 --out DIR [--seed-base 100000] [--val-frac 0.05] \
        [--test-frac 0.05] [--heldout-frac 0.3] [--jobs 2] [--resume]
    edge-sim tasks

Episodes (and demonstrations) run through the same runtime pipeline as ``edge-run``
(``edgebridge.sim.episode``). `demos` writes a LeRobotDataset v3.0 (``docs/datasets.md``). `run --rerun`
logs every episode to a Rerun recording (``runtime/rerun_view.py``). `run` exits 1 when any episode
fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-sim", description="edgebridge embedded simulated world")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run episodes through the runtime pipeline under experimental conditions")
    r.add_argument("--task", required=True, help="task slug or instruction, e.g. 'put cup in tray'")
    r.add_argument("--planner", default="oracle", choices=["oracle"])
    r.add_argument("--expert", default="ik", choices=["ik", "onnx"],
                   help="ik (plain IK along the guidance) or onnx (the shipped action expert)")
    r.add_argument("--onnx", type=Path, default=None, metavar="MODEL", help="run --expert onnx on this exported "
                   "model (metadata JSON beside it) instead of the shipped one")
    r.add_argument("--realtime", action="store_true", help="the simulator steps on the wall clock (default: "
                   "lock-step with the control loop)")
    r.add_argument("--seed", type=int, default=0, help="first seed")
    r.add_argument("--episodes", type=int, default=1)
    r.add_argument("--plan-noise-cm", type=float, default=0.0, help="3-D anchor offset of the oracle plan")
    r.add_argument("--depth-noise-cm", type=float, default=0.0, help="depth bias (+ stereo noise when > 0)")
    r.add_argument("--no-depth-tare", action="store_true", help="use the depth as read (no offset measured "
                                                                "against the table top)")
    r.add_argument("--max-seconds", type=float, default=None, help="simulated time limit per episode")
    r.add_argument("--json", type=Path, default=None, help="write the episode results to this JSON file")
    r.add_argument("--record", type=Path, default=None, help="write each episode as a LeRobot v3 data set under DIR/<task>_seed<N> (docs/datasets.md)")
    r.add_argument("--rerun", default=None, metavar="FILE.rrd|spawn",
                   help="log the episodes in 3-D to a Rerun recording file, or to a live viewer with 'spawn'")
    d = sub.add_parser("demos", help="write demonstrations for the action expert (a LeRobot data set)")
    d.add_argument("--task", default=None, help="task slug (required unless --from-npz)")
    d.add_argument("--episodes", type=int, default=None, help="number of demonstrations (required unless --from-npz)")
    d.add_argument("--out", type=Path, required=True, help="data set directory (an earlier demonstration set "
                                                             "there is replaced)")
    d.add_argument("--from-npz", type=Path, default=None, metavar="DIR",
                   help="convert a demonstration set of the former episode_*.npz + meta.json format instead")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--print-config", action="store_true",
                   help="print the demonstration settings (DemoConfig as JSON) and write nothing")
    pt = sub.add_parser("pointing", help="write a pointing data set (imagefolder: images, instructions, oracle plans)")
    pt.add_argument("--tasks", default="all", help="'all' or a comma list of task slugs")
    pt.add_argument("--scenes", type=int, required=True, help="number of scenes, spread evenly over the tasks")
    pt.add_argument("--out", type=Path, required=True)
    pt.add_argument("--seed-base", type=int, default=100000, help="scene i has seed SEED_BASE + i")
    pt.add_argument("--val-frac", type=float, default=0.05)
    pt.add_argument("--test-frac", type=float, default=0.05)
    pt.add_argument("--heldout-frac", type=float, default=0.3, help="share of val/test scenes with a held-out phrasing")
    pt.add_argument("--jobs", type=int, default=1, help="worker processes (one PyBullet world each)")
    pt.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same arguments)")
    sub.add_parser("tasks", help="list the registered tasks and their phrasings")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .tasks import TASKS, get_task

    if args.cmd == "tasks":
        from rich.console import Console
        from rich.table import Table

        t = Table(title="edge-sim tasks")
        for col in ("slug", "level", "instruction", "other phrasings"):
            t.add_column(col)
        for s in TASKS.values():
            t.add_row(s.slug, s.level, s.instruction, "; ".join(s.phrasings[1:]))
        Console().print(t)
        return 0
    if args.cmd == "pointing":
        return _pointing(args)
    if args.cmd == "demos" and (args.from_npz is not None or args.print_config):
        return _demos(args)
    if args.cmd == "demos" and (args.task is None or args.episodes is None):
        print("edge-sim demos: --task and --episodes are required (or --from-npz DIR)", file=sys.stderr)
        return 2
    try:
        get_task(args.task)
    except KeyError as e:
        print(f"edge-sim: {e}", file=sys.stderr)
        return 2
    if args.episodes < 1:
        print(f"edge-sim: --episodes must be >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    if args.cmd == "demos":
        return _demos(args)
    from ..config import ConfigError
    from ..errors import EdgebridgeError
    from .episode import run_episode

    try:
        observers = _observers(args, run_episode)
    except (ImportError, ValueError, OSError) as e:
        print(f"edge-sim: {e}", file=sys.stderr)
        return 2
    results = []
    try:
        for i in range(args.episodes):
            seed = args.seed + i
            rec = args.record / f"{get_task(args.task).slug}_seed{seed}" if args.record else None
            kw = {"observers": observers} if observers else {}
            try:
                r = run_episode(args.task, seed, args.expert, plan_noise_m=args.plan_noise_cm / 100,
                                depth_noise=args.depth_noise_cm / 100, depth_tare=not args.no_depth_tare,
                                record_dir=rec, max_seconds=args.max_seconds, realtime=args.realtime,
                                expert_model=str(args.onnx) if args.onnx else None, **kw)
            except (KeyError, ValueError, ConfigError, EdgebridgeError, OSError) as e:
                print(f"edge-sim: {e}", file=sys.stderr)
                return 2
            results.append(r)
            print(f"{r.task} seed {r.seed}: {'success' if r.success else 'FAILED'} in {r.duration:.1f} s sim "
                  f"({r.wall_s:.1f} s wall): {r.reason}")
    finally:
        for o in observers:
            o.close()
    if args.rerun and args.rerun != "spawn":
        print(f"Rerun recording: {args.rerun} (open it with `rerun {args.rerun}`)")
    n_ok = sum(r.success for r in results)
    print(f"{n_ok}/{len(results)} episodes succeeded")
    if args.json:
        args.json.write_text(json.dumps({"episodes": [r.to_dict() for r in results], "success_rate": n_ok / len(results)},
                                        indent=2))
    return 0 if n_ok == len(results) else 1


def _observers(args, run_episode) -> list:
    """The episode observers ``run`` attaches: the Rerun view for ``--rerun``."""
    if not args.rerun:
        return []
    import inspect

    if "observers" not in inspect.signature(run_episode).parameters:
        raise ValueError("--rerun: this build's run_episode takes no episode observers (Pipeline observers are "
                         "not wired in yet)")
    from ..runtime.rerun_view import RerunView

    return [RerunView.open(args.rerun, app_id="edge-sim")]


def _demos(args) -> int:
    from .demos import DemoConfig, npz_to_lerobot, write_demos

    if args.print_config:
        from dataclasses import asdict

        print(json.dumps(asdict(DemoConfig())))
        return 0
    try:
        if args.from_npz is not None:
            meta = npz_to_lerobot(args.from_npz, args.out)
            print(f"converted {len(meta['episodes'])} episodes from {args.from_npz} to {args.out}")
            return 0
        meta = write_demos(args.task, args.episodes, args.out, seed=args.seed)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"edge-sim demos: {e}", file=sys.stderr)
        return 2
    ok = sum(e["success"] for e in meta["episodes"])
    print(f"wrote {len(meta['episodes'])} episodes ({ok} successful) to {args.out} (LeRobot v3.0) in "
          f"{meta['wall_s']:.1f} s")
    return 0


def _pointing(args) -> int:
    from rich.console import Console

    from ..errors import EdgebridgeError
    from .pointing import write_pointing_dataset

    try:
        info = write_pointing_dataset(args.out, args.tasks, args.scenes, seed_base=args.seed_base,
                                      val_frac=args.val_frac, test_frac=args.test_frac,
                                      heldout_frac=args.heldout_frac, jobs=args.jobs, resume=args.resume)
    except (KeyError, ValueError, FileExistsError, EdgebridgeError) as e:
        print(f"edge-sim: {e}", file=sys.stderr)
        return 2
    sp = info["splits"]
    Console(soft_wrap=True).print(f"[bold]pointing[/bold]: {info['scenes']} scenes (train {sp['train']['count']}, val "
                    f"{sp['val']['count']}, test {sp['test']['count']}) over {len(info['tasks'])} tasks in "
                    f"{info['wall_s']:.1f} s: {info['scenes_per_s']:.2f} scenes/s, {info['redraws']} redraws -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
