"""``edge-run``: run the think-then-act pipeline on a robot setup (default: the simulated Panda).

    edge-run                                   # sim world, shipped VLM planner (llama.cpp), shipped ONNX expert
    edge-run --task stack_red_on_blue --episodes 5 --json out.json
    edge-run --planner gguf --vlm models/planner.gguf --profile runs/profile
    edge-run --realtime --profile runs/rt      # the simulator on the wall clock: real concurrency
    edge-run --config so101_serial.toml --planner gguf --vlm planner.gguf --task "put the cube in the tray"

One progress line per stage and one result line per episode; the exit code is 0 only when every
episode succeeded (1: an episode failed, 2: bad arguments or configuration, 130: interrupted).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..config import ConfigError
from ..errors import EdgebridgeError
from .config import load_robot_config, with_overrides

log = logging.getLogger("edgebridge.run")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-run", description="Run the edgebridge pipeline on a robot setup "
                                 "(default: the embedded simulated Panda).")
    ap.add_argument("--config", default="sim_panda", help="robot setup: a TOML file or a shipped name "
                    "(sim_panda, so101_serial, panda_ethernet); default sim_panda")
    ap.add_argument("--task", default="put_cup_in_tray", help="task slug or instruction text, given to the planner "
                    "word for word; in the simulator free text sets up the scene of the task it names, e.g. "
                    "'drop the mug in the bin' (default put_cup_in_tray)")
    ap.add_argument("--planner", choices=["oracle", "gguf", "remote"], default=None,
                    help="planner backend (default: the setup's; sim_panda uses gguf, the shipped VLM; oracle = the "
                    "simulator's privileged plans)")
    ap.add_argument("--vlm", metavar="PATH", default=None, help="GGUF model for --planner gguf (default: the "
                    "setup's planner.model, else the shipped planner in assets/planner, built by 'make planner')")
    ap.add_argument("--mmproj", metavar="PATH", default=None, help="vision projector GGUF of the --vlm model; "
                    "without one the GGUF planner plans from the instruction alone (text-only; sim only)")
    ap.add_argument("--expert", choices=["onnx", "trt", "ik"], default=None,
                    help="action expert (default: the setup's; the shipped ONNX model, else ik)")
    ap.add_argument("--rate", type=float, default=None, help="control-loop rate in Hz (default: the setup's)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (episode i uses seed + i)")
    ap.add_argument("--episodes", type=int, default=1, help="number of episodes (default 1)")
    ap.add_argument("--max-seconds", type=float, default=None, help="per-episode time limit (default: the setup's)")
    ap.add_argument("--record", metavar="DIR", default=None, help="write per-episode step logs + results under DIR")
    ap.add_argument("--profile", metavar="DIR", nargs="?", const="runs/profile", default=None,
                    help="per-stage latency profile: table + profile.json, profile.trace.json (Chrome trace "
                         "events: Perfetto, chrome://tracing), plots and index.html in DIR (default runs/profile)")
    ap.add_argument("--dry-run", action="store_true", help="everything but sending commands to the arm")
    ap.add_argument("--realtime", action="store_true", help="simulated setups: the simulator steps on the wall clock "
                    "and frames arrive at the camera's rate, so the loop, planner and expert run concurrently as on "
                    "a robot (default: lock-step)")
    ap.add_argument("--json", metavar="FILE", default=None, help="write one JSON object per episode "
                    "(task, instruction, seed, success, duration, reason) to FILE (JSON lines)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return ap


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.episodes < 1:
        print("edge-run: --episodes must be >= 1", file=sys.stderr)
        return 2
    try:
        cfg = load_robot_config(args.config)
        if args.rate is not None:
            cfg = with_overrides(cfg, loop={"rate_hz": args.rate})
    except ConfigError as e:
        print(f"edge-run: configuration error: {e}", file=sys.stderr)
        return 2
    if args.realtime and cfg.arm.driver != "sim":
        print(f"edge-run: --realtime applies to the simulated world only; {cfg.name} (arm driver "
              f"{cfg.arm.driver!r}) always runs in real time", file=sys.stderr)
        return 2
    from .devices import RunChoices, build_devices, task_scene
    from .pipeline import Pipeline
    from .profiling import Profiler

    try:
        scene = task_scene(cfg, args.task)  # the simulator: the task whose scene the text names
    except KeyError as e:
        print(f"edge-run: --task {e}", file=sys.stderr)
        return 2

    profiler = Profiler() if args.profile is not None else None
    results = []
    json_out = open(args.json, "w") if args.json else None
    failed = 0
    loop_stats = None
    realtime = True
    try:
        for i in range(args.episodes):
            seed = args.seed + i
            choices = RunChoices(task=args.task, seed=seed, planner=args.planner, vlm=args.vlm, mmproj=args.mmproj,
                                 expert=args.expert, sim_realtime=args.realtime)
            t0 = time.perf_counter()
            try:
                devices, instruction = build_devices(cfg, choices)
            except (ConfigError, EdgebridgeError, ImportError, ValueError, KeyError, OSError) as e:
                print(f"edge-run: could not open the devices of {cfg.name}: {e}", file=sys.stderr)
                return 2
            try:
                if i == 0:
                    for note in devices.notes:
                        _say(f"[edge-run] {note}")
                    _say(f"[edge-run] loop: {cfg.loop.rate_hz:g} Hz, {'dry run (no commands sent)' if args.dry_run else 'live'}"
                         f"{', lock-step with the simulator' if not devices.clock.realtime else ', real time'}")
                _say(f"[edge-run] episode {i + 1}/{args.episodes}: {instruction!r} (seed {seed})")
                record = Path(args.record) / f"episode_{i:03d}_seed{seed}" if args.record else None
                pipe = Pipeline(cfg, devices, dry_run=args.dry_run, profiler=profiler, record_dir=record)
                out = pipe.run(instruction, task=scene or args.task, seed=seed, max_seconds=args.max_seconds)
                if pipe.last_period_stats is not None:
                    loop_stats = pipe.last_period_stats
                realtime = devices.clock.realtime
            finally:
                devices.close()
            results.append(out)
            failed += not out.success
            lp = out.loop
            _say(f"[edge-run] result {i + 1}/{args.episodes}: {'SUCCESS' if out.success else 'FAILED'} | "
                 f"task {out.task} | seed {seed} | {out.duration:.1f} s | {out.reason} | loop "
                 f"{lp.get('cycles', 0)} cycles, {lp.get('misses', 0)} misses, {lp.get('sent', 0)} sent | "
                 f"wall {time.perf_counter() - t0:.1f} s")
            if pipe.last_planning is not None:
                _say(f"[edge-run] planning {i + 1}/{args.episodes}: {pipe.last_planning.summary()}")
            summary = getattr(devices.expert, "correction_summary", None)
            corrections = summary() if callable(summary) else None
            if corrections is not None:
                _say(f"[edge-run] expert {i + 1}/{args.episodes}: {corrections}")
            if pipe.depth_tare is not None:
                _say(f"[edge-run] depth tare {i + 1}/{args.episodes}: {pipe.depth_tare.describe()}")
            if json_out is not None:
                json_out.write(json.dumps({"task": out.task, "instruction": instruction, "seed": seed,
                                           "success": out.success, "duration": round(out.duration, 3),
                                           "reason": out.reason}) + "\n")
                json_out.flush()
    except KeyboardInterrupt:
        print("edge-run: interrupted", file=sys.stderr)
        return 130
    finally:
        if json_out is not None:
            json_out.close()
    if profiler is not None:
        try:
            profiler.report(args.profile, loop_stats, title=f"edge-run profile ({cfg.name}, last episode's loop)",
                            realtime=realtime)
            _say(f"[edge-run] profile written to {args.profile}/index.html")
        except OSError as e:
            print(f"edge-run: could not write the profile to {args.profile}: {e}", file=sys.stderr)
    if args.episodes > 1:
        _say(f"[edge-run] {args.episodes - failed}/{args.episodes} episodes succeeded")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
