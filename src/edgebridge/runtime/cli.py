"""``edge-run``: run the think-then-act pipeline on a robot setup (default: the simulated Panda).

    edge-run                                   # sim world, shipped VLM planner (llama.cpp), shipped ONNX expert
    edge-run --task stack_red_on_blue --episodes 5 --json out.json
    edge-run --planner gguf --vlm models/planner.gguf --profile runs/profile
    edge-run --realtime --profile runs/rt      # the simulator on the wall clock: real concurrency
    edge-run --episodes 5 --record runs/data --rerun runs/run.rrd   # a LeRobot data set + a Rerun recording
    edge-run --config so101_serial.toml --planner gguf --vlm planner.gguf --task "put the cube in the tray"

    edge-run --config so101_serial.toml --port /dev/ttyACM1   # another arm address for this run
    edge-run doctor                            # check this machine's install (the Jetson path)

One progress line per stage and one result line per episode; the exit codes are in ``EXIT_CODES``
(``edge-run --help`` lists them). SIGINT / SIGTERM stop the run: the arm is braked and held, no
further episode starts, and the exit code is 130 / 143.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..config import ConfigError
from ..errors import DeviceFaultError, EdgebridgeError, require
from .config import CONFIG_DIR, load_robot_config, with_overrides
from .watchdog import SignalGuard, StopRequest

log = logging.getLogger("edgebridge.run")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DEVICE = 0, 1, 2, 3
EXIT_CODES = """exit codes:
  0    every episode succeeded
  1    an episode failed (its reason is on its result line), or --record could not write its data set
  2    bad arguments or configuration: setup file, model files, calibration, a missing extra
  3    a device could not be opened or faulted: camera or arm not found, port busy or refused, timeout
  130  SIGINT  } the arm was braked to a stop and held, and no further episode ran
  143  SIGTERM }

edge-run doctor [...]: check this machine's install (see edge-run doctor --help)."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-run", description="Run the edgebridge pipeline on a robot setup "
                                 "(default: the embedded simulated Panda).", epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
    ap.add_argument("--config", default="sim_panda", help=f"robot setup: a TOML file or a shipped name ({shipped}); "
                    "default sim_panda")
    ap.add_argument("--port", default=None, help="the arm's serial port for this run (arm.options.port), "
                    "e.g. /dev/ttyACM1")
    ap.add_argument("--host", default=None, help="the arm's controller address for this run (arm.options.host; "
                    "franka)")
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
    ap.add_argument("--record", metavar="DIR", default=None, help="record the run as one LeRobotDataset v3.0 in "
                    "DIR (new or empty; one episode per episode run, one frame per expert step: camera video, "
                    "state, action, guidance, plan; docs/datasets.md)")
    ap.add_argument("--rerun", metavar="FILE.rrd|spawn", default=None, help="log the run in 3-D to a Rerun "
                    "recording FILE.rrd, or to a live viewer with 'spawn' (extra 'rerun')")
    ap.add_argument("--profile", metavar="DIR", nargs="?", const="runs/profile", default=None,
                    help="per-stage latency profile: table + profile.json, profile.trace.json (Chrome trace "
                         "events: Perfetto, chrome://tracing), plots and index.html in DIR (default runs/profile)")
    ap.add_argument("--dry-run", action="store_true", help="everything but sending commands to the arm")
    ap.add_argument("--realtime", action="store_true", help="simulated setups: the simulator steps on the wall clock "
                    "and frames arrive at the camera's rate, so the loop, planner and expert run concurrently as on "
                    "a robot (default: lock-step)")
    ap.add_argument("--json", metavar="FILE", default=None, help="write one JSON object per episode "
                    "(task, instruction, seed, success, duration, reason, loop, planning) to FILE (JSON lines)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return ap


def _say(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(" ".join(f"edge-run: {msg}".split()), file=sys.stderr, flush=True)  # one line, whatever msg holds


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, (EdgebridgeError, ConfigError)) else f"{type(e).__name__}: {e}"


def _doctor(argv: list[str]) -> int:
    try:
        from . import doctor
    except ImportError as e:
        own = isinstance(e, ModuleNotFoundError) and e.name == f"{__package__}.doctor"
        _err("edge-run doctor is not available in this build" + ("" if own else f" ({e})"))
        return EXIT_CONFIG
    return doctor.main(argv)


def _arm_address(cfg, port: str | None, host: str | None):
    """``--port`` / ``--host`` onto the setup's arm options; a simulated arm has no address."""
    if port is None and host is None:
        return cfg
    if cfg.arm.driver == "sim":
        raise ConfigError(f"--port/--host set a real arm's address; {cfg.name} simulates its arm")
    opts = dict(cfg.arm.options)
    opts.update({k: v for k, v in (("port", port), ("host", host)) if v is not None})
    return with_overrides(cfg, arm={"options": opts})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "doctor":
        return _doctor(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.episodes < 1:
        _err("--episodes must be >= 1")
        return EXIT_CONFIG
    try:
        cfg = _arm_address(load_robot_config(args.config), args.port, args.host)
        if args.rate is not None:
            cfg = with_overrides(cfg, loop={"rate_hz": args.rate})
    except ConfigError as e:
        _err(f"configuration error: {e}")
        return EXIT_CONFIG
    if args.realtime and cfg.arm.driver != "sim":
        _err(f"--realtime applies to the simulated world only; {cfg.name} (arm driver {cfg.arm.driver!r}) "
             f"always runs in real time")
        return EXIT_CONFIG
    from .devices import task_scene

    try:
        scene = task_scene(cfg, args.task)  # the simulator: the task whose scene the text names
    except KeyError as e:
        _err(f"--task {e}")
        return EXIT_CONFIG
    stop = StopRequest()
    with SignalGuard(stop) as guard:
        try:
            code = _run(args, cfg, scene, stop, guard)
        except KeyboardInterrupt:
            code = None
    if stop.is_set() or code is None:
        name = stop.reason.split()[0] if stop.reason else "interrupt"
        _err(f"stopped by {name}; no further episode ran")
        return stop.exit_code or 130
    return code


def _run(args, cfg, scene: str | None, stop: StopRequest, guard: SignalGuard) -> int:
    from .devices import RunChoices, build_devices
    from .pipeline import Pipeline
    from .profiling import Profiler

    profiler = Profiler() if args.profile is not None else None
    try:  # before any device opens
        _check_record(args.record)
    except (ConfigError, ImportError) as e:
        _err(_describe(e))
        return EXIT_CONFIG
    recorder = view = None  # --record: one data set for the run, opened with the first episode's devices
    json_out = open(args.json, "w") if args.json else None
    failed = ran = 0
    loop_stats = None
    realtime = True
    try:
        try:
            view = _open_rerun(args.rerun)
        except (ImportError, ValueError, OSError) as e:
            _err(str(e) if str(e).startswith("--rerun") else f"--rerun {args.rerun}: {e}")
            return EXIT_CONFIG
        for i in range(args.episodes):
            seed = args.seed + i
            choices = RunChoices(task=args.task, seed=seed, planner=args.planner, vlm=args.vlm, mmproj=args.mmproj,
                                 expert=args.expert, sim_realtime=args.realtime)
            t0 = time.perf_counter()
            try:
                with guard.interrupting():  # nothing moves yet: a signal ends the run at once
                    devices, instruction = build_devices(cfg, choices)
            except (DeviceFaultError, OSError) as e:
                _err(f"could not open the devices of {cfg.name}: {_describe(e)}")
                return EXIT_DEVICE
            except Exception as e:  # configuration, model files, calibration, a missing extra
                _err(f"could not set up {cfg.name}: {_describe(e)}")
                return EXIT_CONFIG
            try:
                if i == 0:
                    for note in devices.notes:
                        _say(f"[edge-run] {note}")
                    _say(f"[edge-run] loop: {cfg.loop.rate_hz:g} Hz, {'dry run (no commands sent)' if args.dry_run else 'live'}"
                         f"{', lock-step with the simulator' if not devices.clock.realtime else ', real time'}")
                _say(f"[edge-run] episode {i + 1}/{args.episodes}: {instruction!r} (seed {seed})")
                if args.record and recorder is None:
                    from .episode_record import EpisodeRecorder, RecordConfig

                    recorder = EpisodeRecorder(args.record, RecordConfig.from_robot(cfg),
                                               meta={"T_base_cam": devices.T_base_cam.tolist()})
                pipe = Pipeline(cfg, devices, dry_run=args.dry_run, profiler=profiler, stop=stop,
                                observers=(recorder, view))
                out = pipe.run(instruction, task=scene or args.task, seed=seed, max_seconds=args.max_seconds)
                if pipe.last_period_stats is not None:
                    loop_stats = pipe.last_period_stats
                realtime = devices.clock.realtime
            except DeviceFaultError as e:  # the arm did not open in the loop's own process
                _err(f"device fault in {cfg.name}: {_describe(e)}")
                return EXIT_DEVICE
            finally:
                devices.close()
            ran += 1
            failed += not out.success
            _report(args, i, seed, out, pipe, devices, instruction, t0, json_out)
            if stop.is_set():
                break
    finally:
        if json_out is not None:
            json_out.close()
        recorded = _close_observers(args, recorder, view)
    if profiler is not None and ran:
        try:
            profiler.report(args.profile, loop_stats, title=f"edge-run profile ({cfg.name}, last episode's loop)",
                            realtime=realtime)
            _say(f"[edge-run] profile written to {args.profile}/index.html")
        except OSError as e:
            _err(f"could not write the profile to {args.profile}: {e}")
    if args.episodes > 1:
        skipped = f" ({args.episodes - ran} not run: {stop.reason})" if ran < args.episodes else ""
        _say(f"[edge-run] {ran - failed}/{args.episodes} episodes succeeded{skipped}")
    return EXIT_FAILED if failed or not recorded else EXIT_OK


def _check_record(path: str | None) -> None:
    """``--record DIR``: a new or empty directory, and the data set extra installed."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise ConfigError(f"--record {p}: not an empty directory; record into a new one")
    for module in ("pyarrow", "av"):
        require(module, "dataset", "--record (a LeRobot data set)")


def _open_rerun(target: str | None):
    if target is None:
        return None
    from .rerun_view import RerunView

    return RerunView.open(target, app_id="edge-run")


def _close_observers(args, recorder, view) -> bool:
    """Finish the data set and the Rerun recording (also after an error or a signal); False when the data
    set could not be written."""
    ok = True
    if recorder is not None:
        from .episode_record import recorded_episodes

        try:
            recorder.close()
            _say(f"[edge-run] LeRobot data set: {args.record} ({len(recorded_episodes(args.record))} episodes)")
        except Exception as e:
            _err(f"--record {args.record}: {_describe(e)}")
            ok = False
    if view is not None:
        try:
            view.close()
        except Exception as e:  # a viewer that went away
            _err(f"--rerun {args.rerun}: {_describe(e)}")
        else:
            if args.rerun != "spawn":
                _say(f"[edge-run] Rerun recording: {args.rerun} (open it with `rerun {args.rerun}`)")
    return ok


def _report(args, i: int, seed: int, out, pipe, devices, instruction: str, t0: float, json_out) -> None:
    n, lp = args.episodes, out.loop
    _say(f"[edge-run] result {i + 1}/{n}: {'SUCCESS' if out.success else 'FAILED'} | "
         f"task {out.task} | seed {seed} | {out.duration:.1f} s | {out.reason} | loop "
         f"{lp.get('cycles', 0)} cycles, {lp.get('misses', 0)} misses, {lp.get('sent', 0)} sent | "
         f"wall {time.perf_counter() - t0:.1f} s")
    if pipe.last_planning is not None:
        _say(f"[edge-run] planning {i + 1}/{n}: {pipe.last_planning.summary()}")
    summary = getattr(devices.expert, "correction_summary", None)
    corrections = summary() if callable(summary) else None
    if corrections is not None:
        _say(f"[edge-run] expert {i + 1}/{n}: {corrections}")
    if pipe.depth_tare is not None:
        _say(f"[edge-run] depth tare {i + 1}/{n}: {pipe.depth_tare.describe()}")
    if json_out is not None:
        json_out.write(json.dumps({"task": out.task, "instruction": instruction, "seed": seed,
                                   "success": out.success, "duration": round(out.duration, 3),
                                   "reason": out.reason, "loop": out.loop, "planning": out.planning}) + "\n")
        json_out.flush()


if __name__ == "__main__":
    sys.exit(main())
