"""Success rate of action experts in the embedded world, under plan and depth noise; sim step and
render times.

    python benchmarks/sim_success.py [--seeds 50] [--seed-base 0] [--tasks put_cup_in_tray,...] [--experts ik[,onnx]]
                                     [--conditions clean,plan_3cm,anchor_depth_3cm,...] [--json FILE]
                                     [--planner oracle|gguf [--vlm LM.gguf --mmproj MMPROJ.gguf]] [--jobs N]

Per expert, task and condition: the fraction of ``--seeds`` episodes (seeds B..B+N-1 with B =
``--seed-base``; the oracle planner unless ``--planner gguf``)
that meet the task's success predicate, and its ratio to the same expert's ``clean`` rate (the baseline
in this run). Conditions (``CONDITIONS``: each sets arguments of ``run_episode``):

- ``plan_Xcm``: a random 3-D offset of X cm on every oracle anchor;
- ``anchor_depth_Xcm`` (1, 3, 10): the depth at which each anchor is lifted is off by a zero-mean
  Gaussian error of std X cm along the camera ray, independent per anchor and per plan; the point cloud
  the expert sees stays as sensed. An anchor lifted outside the workspace is handled as on a robot, by
  the setup's ``planner.anchor_out_of_bounds`` (default ``clamp``: moved along its camera ray to the
  nearest point inside the workspace when that is within ``planner.anchor_clamp_max_m``, else the plan is
  rejected and re-planned; ``docs/planner.md``);
- ``depth_bias_Xcm`` (1, 10; formerly ``depth_Xcm``): stereo depth noise on the whole frame plus an X cm
  depth bias (``DepthNoiseConfig.condition``);
- ``wrong_object`` / ``grasp_8cm`` (oracle only): the first plan grasps another movable object / 8 cm beside
  the object; re-plans are right. A grasp that closes on nothing is re-planned (``planner.max_regrasps``,
  ``docs/planner.md``); ``*_noregrasp``: the same with ``max_regrasps = 0``;
- ``push_cup`` (tasks with a cup): the cup is pushed 3-6 cm at a random moment before the grasp
  (``edgebridge.sim.disturb``); ``push_cup_replan``: the same with ``planner.replan_before_grasp``;
  ``push_cup_noreplan``: with no re-plan at all (``planner.max_regrasps = 0``);
- ``plan_yaw``: clean plans, the gripper yaw the planner wrote instead of the one measured in the depth
  image at the grasp anchor (``planner.grasp_yaw = "plan"``; the oracle's plans keep theirs either way);
  ``plan_point``: clean plans, every grasp lifted where its pixel lands, a mug's not moved onto its axis
  (``planner.grasp_point = "plan"``; the oracle's plans are never moved).

The default set is the expert-vs-IK table's: clean, plan_1cm, plan_3cm, anchor_depth_1cm/3cm/10cm,
depth_bias_1cm. Every episode
first measures the depth offset against the table top and removes it (the depth tare,
``edgebridge.calib.depth_tare``); ``--no-depth-tare`` runs on the frames as read (a 10 cm bias then lifts
the anchors under the table, where they are clamped back along their rays; with
``planner.anchor_out_of_bounds = "reject"`` every plan is rejected).
Timings: one physics step (1/240 s, Panda + objects) and one RGB-D + segmentation render (CPU tiny
renderer) at 320x240 and 640x480, with the 640/320 ratio.

``--json`` keys: ``success.<expert>.<task>.<condition>``, ``plans_accepted.*`` / ``plans_rejected.*`` (plans per
episode, mean), ``clamped.*`` / ``regrasps.*`` / ``pregrasp_replans.*`` (anchors clamped into the workspace,
re-plans after an empty grasp, re-plans at the pre-grasp point; per episode, mean), ``render_ms_320``, ``render_ms_640``, ``step_ms``, ``planner``.

Planner: ``--planner oracle`` (default; the simulator's privileged plans) or ``--planner gguf``: the VLM
planner (``runtime/planner/gguf.py``) on the camera image, the shipped model unless ``--vlm`` and ``--mmproj``
name other files (chat handler ``mtmd``), llama.cpp on 2 / jobs threads. Its rows and keys name it: the
expert becomes ``gguf+<expert>`` (``success.gguf+ik.put_cup_in_tray.clean``), so runs of "VLM + expert",
"VLM + plain IK" and "oracle + expert" lie side by side. The ``plan_*`` conditions offset the oracle's
anchors and do not apply to the VLM: run it with ``--conditions clean`` (or the depth conditions), e.g.
``--planner gguf --experts ik,expert --tasks put_cup_in_tray --seeds 50 --seed-base 7000 --jobs 2
--conditions clean``. The planner is built with each episode's devices, as ``edge-run`` builds it (a
memory-mapped load of tens of ms).
Every episode runs through the runtime's ``Pipeline`` in lock-step with the simulator, exactly as
``edge-run`` runs it (``edgebridge.sim.episode.run_episode``). Experts: ``ik`` (plain IK along the
guidance) and ``onnx`` (alias ``expert``, the name the JSON keys of the expert-vs-IK table use): the shipped
action expert, or ``--onnx MODEL``. ``--jobs N`` runs episodes in N processes. The shipped expert was
trained on demonstrations of seeds 0..59 (``make weights``): pass ``--seed-base 6000`` to measure it on held-out
scenes.

With ``ik`` and another expert in one run, a second table compares each expert with plain IK on the same
scenes: both counts with Wilson 95 % intervals, the one-sided Fisher exact p-values of "above IK" and
"below IK", and the verdict (``above`` / ``below`` at p < 0.05, else ``level``: within the sampling noise);
``--json`` adds ``vs_ik.<expert>.<task>.<condition>.p_above`` / ``.p_below`` / ``.verdict``. Plain IK does
not change when the expert does: ``--ik-from FILE.json`` takes its counts from an earlier run's ``--json``
on the same scenes (same ``--seeds``, ``--seed-base``, depth tare; refused otherwise).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (add_json_arg, fmt_ms, fmt_ratio, machine_line, print_table, quiet_llama_logs, ratio,  # noqa: E402
                     time_call, write_json)

# condition -> the run_episode arguments it sets (edgebridge.sim.episode.run_episode)
CONDITIONS = {
    "clean": {},
    "plan_1cm": {"plan_noise_m": 0.01},
    "plan_3cm": {"plan_noise_m": 0.03},
    "anchor_depth_1cm": {"anchor_depth_noise_m": 0.01},
    "anchor_depth_3cm": {"anchor_depth_noise_m": 0.03},
    "anchor_depth_10cm": {"anchor_depth_noise_m": 0.10},
    "depth_bias_1cm": {"depth_noise": 0.01},
    "depth_bias_10cm": {"depth_noise": 0.10},
    "wrong_object": {"wrong_plan": "wrong_object"},
    "grasp_8cm": {"wrong_plan": "grasp_8cm"},
    "wrong_object_noregrasp": {"wrong_plan": "wrong_object", "config_overrides": {"planner": {"max_regrasps": 0}}},
    "grasp_8cm_noregrasp": {"wrong_plan": "grasp_8cm", "config_overrides": {"planner": {"max_regrasps": 0}}},
    "push_cup": {"push_cup": True},
    "push_cup_replan": {"push_cup": True, "config_overrides": {"planner": {"replan_before_grasp": True}}},
    "push_cup_noreplan": {"push_cup": True, "config_overrides": {"planner": {"max_regrasps": 0}}},
    "plan_yaw": {"config_overrides": {"planner": {"grasp_yaw": "plan"}}},
    "plan_point": {"config_overrides": {"planner": {"grasp_point": "plan"}}},
}
ALIASES = {"depth_1cm": "depth_bias_1cm", "depth_10cm": "depth_bias_10cm"}  # their names in earlier tables
DEFAULT_CONDITIONS = ("clean", "plan_1cm", "plan_3cm", "anchor_depth_1cm", "anchor_depth_3cm", "anchor_depth_10cm",
                      "depth_bias_1cm")
ORACLE_ONLY = ("plan_noise_m", "wrong_plan")  # arguments that change the oracle's plans
CUP_ONLY = ("push_cup",)  # arguments that need a cup in the scene


def timings() -> dict:
    from edgebridge.sim.camera import SimCamera, SimCameraConfig
    from edgebridge.sim.tasks import get_task, setup_scene
    from edgebridge.sim.world import SimWorld

    out = {}
    with SimWorld() as world:
        setup_scene(world, get_task("clear_table"), seed=0)
        out["step_ms"] = time_call(world.step, repeats=500, warmup=20)["median_ms"]
        for w, h in ((320, 240), (640, 480)):
            cam = SimCamera(world, SimCameraConfig(width=w, height=h))
            out[f"render_ms_{w}"] = time_call(cam.render, repeats=10, warmup=2)["median_ms"]
    return out


def _init_worker() -> None:
    logging.basicConfig(level=logging.ERROR)


def _episode(job: tuple) -> object:
    """One episode through the runtime pipeline (``edgebridge.sim.episode.run_episode``)."""
    from edgebridge.sim.episode import run_episode

    task, seed, expert, cond, tare, model, threads, planner = job
    kw = {}
    if planner is not None:  # (name, vlm, mmproj): the VLM on ``threads`` llama.cpp threads
        name, vlm, mmproj = planner
        quiet_llama_logs()
        kw = dict(planner=name, vlm=vlm, mmproj=mmproj,
                  planner_options={"n_threads": threads, **({"chat_handler": "mtmd"} if vlm else {})})
    return run_episode(task, seed, "onnx" if expert == "expert" else expert, **CONDITIONS[cond], depth_tare=tare, expert_model=model if expert != "ik" else None,
                       expert_threads=threads if expert != "ik" else None, **kw)


def vs_ik_table(counts: dict[tuple[str, str, str], tuple[int, int]], ik: str = "ik") -> dict:
    """Print each non-IK expert against plain IK (named ``ik``) on the same scenes; return the ``vs_ik.*`` JSON
    keys."""
    from edgebridge.sim.stats import compare_success

    flat, rows = {}, []
    for (e, task, cond), (k, n) in counts.items():
        if e == ik or (ik, task, cond) not in counts:
            continue
        c = compare_success(k, n, *counts[(ik, task, cond)])
        key = f"vs_ik.{e}.{task}.{cond}"
        flat.update({f"{key}.p_above": round(c.p_above, 4), f"{key}.p_below": round(c.p_below, 4),
                     f"{key}.verdict": c.verdict})
        rows.append([e, task, cond, f"{k}/{n} [{c.ci95[0]:.2f}, {c.ci95[1]:.2f}]",
                     f"{c.k_baseline}/{c.n_baseline} [{c.ci95_baseline[0]:.2f}, {c.ci95_baseline[1]:.2f}]",
                     f"{k - c.k_baseline:+d}", f"{c.p_above:.3f}", f"{c.p_below:.3f}", c.verdict])
    print_table("expert vs plain IK, same scenes (Wilson 95 % intervals; one-sided Fisher exact p)",
                ["expert", "task", "condition", "expert", "plain IK", "diff", "p above", "p below", "verdict"], rows)
    return flat


def check_cup_tasks(ap: argparse.ArgumentParser, conds: list[str], tasks: list[str]) -> None:
    """Conditions that push the cup only run on tasks whose scene has one."""
    from edgebridge.sim.tasks import TASKS

    with_cup = [slug for slug, spec in TASKS.items() if any("cup" in (s.obj, s.target) for s in spec.steps)]
    cup_conds = [c for c in conds if any(CONDITIONS[c].get(k) for k in CUP_ONLY)]
    without = [t for t in tasks if t not in with_cup]
    if cup_conds and without:
        ap.error(f"conditions {cup_conds} push the cup; tasks {without} have none (tasks with a cup: "
                 f"{', '.join(with_cup)})")


def ik_counts(ap: argparse.ArgumentParser, args) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Plain-IK counts from an earlier run's ``--json`` (``--ik-from``), which must have measured the same
    scenes (seeds, first seed, depth tare, planner): plain IK does not change when the expert does."""
    import json

    try:
        old = json.loads(args.ik_from.read_text())
    except (OSError, ValueError) as e:
        ap.error(f"--ik-from {args.ik_from}: cannot read it as a sim_success JSON ({e})")
    want = {"seeds": args.seeds, "seed_base": args.seed_base, "depth_tare": not args.no_depth_tare}
    differ = {k: old.get(k) for k, v in want.items() if old.get(k) != v}
    if differ:
        ap.error(f"--ik-from {args.ik_from}: measured other scenes ({differ}; this run: {want}); run plain IK "
                 f"with the same --seeds/--seed-base")
    out = {}
    for key, rate in old.items():
        parts = key.split(".")
        if parts[0] == "success" and len(parts) == 4 and parts[1].split("+")[-1] == "ik":
            out[(parts[1], parts[2], parts[3])] = (int(round(rate * args.seeds)), args.seeds)
    if not out:
        ap.error(f"--ik-from {args.ik_from}: holds no success.ik.* keys")
    return out


def check_planner(ap: argparse.ArgumentParser, args, conds: list[str]) -> tuple[tuple | None, str]:
    """(the episodes' planner as (name, vlm, mmproj), or None for the oracle; its label for the table)."""
    if args.planner == "oracle":
        if args.vlm is not None or args.mmproj is not None:
            ap.error("--vlm/--mmproj need --planner gguf")
        return None, "oracle"
    noisy = [c for c in conds if any(k in CONDITIONS[c] for k in ORACLE_ONLY)]
    if noisy:
        ap.error(f"--planner {args.planner}: conditions {noisy} change the oracle's plans and do not apply to the "
                 f"VLM; pass --conditions clean (or anchor_depth_*, depth_bias_*, push_cup*)")
    if args.vlm is None and args.mmproj is None:
        from edgebridge.runtime.planner import shipped

        files = shipped.shipped_vlm()
        if files is None:
            ap.error(shipped.missing_message())
        return (args.planner, None, None), f"{args.planner} ({files[0].name} + {files[1].name}, shipped)"
    if args.vlm is None or args.mmproj is None:
        ap.error("--planner gguf: pass both --vlm LM.gguf and --mmproj MMPROJ.gguf (or neither: the shipped planner)")
    for p in (args.vlm, args.mmproj):
        if not p.is_file():
            ap.error(f"{p}: no such file")
    return (args.planner, str(args.vlm), str(args.mmproj)), f"{args.planner} ({args.vlm.name} + {args.mmproj.name})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=50, help="episodes per task and condition (seeds 0..N-1)")
    ap.add_argument("--tasks", default="put_cup_in_tray,put_cube_then_cup_in_tray,stack_red_on_blue,clear_table,"
                                       "clear_table_obstacle")
    ap.add_argument("--seed-base", type=int, default=0, help="first seed (use held-out seeds for trained experts)")
    ap.add_argument("--experts", default="ik", help="comma-separated expert names (ik, onnx, ...)")
    ap.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS), help=f"subset of {list(CONDITIONS)} "
                    f"(default: {','.join(DEFAULT_CONDITIONS)})")
    ap.add_argument("--onnx", type=Path, default=None, metavar="MODEL",
                    help="run the `onnx`/`expert` expert on this exported model (metadata JSON beside it) instead of "
                         "the shipped one")
    ap.add_argument("--jobs", type=int, default=1, help="episodes run in parallel processes (each expert on "
                                                        "2 / jobs threads)")
    ap.add_argument("--no-depth-tare", action="store_true", help="no depth tare against the table top")
    ap.add_argument("--no-timings", action="store_true", help="skip the sim step and render timings")
    ap.add_argument("--planner", choices=("oracle", "gguf"), default="oracle",
                    help="oracle (privileged simulator plans) or gguf (the VLM planner on the camera image)")
    ap.add_argument("--vlm", type=Path, default=None, help="--planner gguf: language model GGUF (default: shipped)")
    ap.add_argument("--mmproj", type=Path, default=None, help="--planner gguf: its vision projector GGUF")
    ap.add_argument("--ik-from", type=Path, default=None, metavar="FILE.json",
                    help="plain-IK counts from an earlier --json of the same scenes, for the expert-vs-IK table "
                         "(plain IK does not change when the expert does)")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from edgebridge.sim.tasks import get_task

    threads = max(1, 2 // max(1, args.jobs))
    onnx_path = str(args.onnx) if args.onnx is not None else None

    conds = [ALIASES.get(c, c) for c in args.conditions.split(",") if c]
    bad = [c for c in conds if c not in CONDITIONS]
    if bad or args.seeds < 1:
        ap.error(f"unknown conditions {bad} (choose from {list(CONDITIONS)}) or --seeds < 1")
    tasks = [get_task(t).slug for t in args.tasks.split(",") if t]
    check_cup_tasks(ap, conds, tasks)
    experts = [e for e in args.experts.split(",") if e]
    bad = [e for e in experts if e not in ("ik", "onnx", "expert")]
    if bad:
        ap.error(f"unknown experts {bad}; choose from ik, onnx (alias expert)")
    if onnx_path is not None and not Path(onnx_path).is_file():
        ap.error(f"--onnx {onnx_path}: no such file")
    planner, planner_label = check_planner(ap, args, conds)
    ik_prior = ik_counts(ap, args) if args.ik_from is not None else {}  # checked before any episode runs

    flat: dict = {}
    rows = []
    counts: dict[tuple[str, str, str], tuple[int, int]] = {}
    t0 = time.perf_counter()
    pool = None
    if args.jobs > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker)
    run = pool.map if pool is not None else (lambda f, jobs: [f(j) for j in jobs])
    for expert in experts:
        e = expert if planner is None else f"{args.planner}+{expert}"
        for task in tasks:
            rates = {}
            for cond in conds:
                res = run(_episode, [(task, s, expert, cond, not args.no_depth_tare, onnx_path, threads,
                                      planner) for s in range(args.seed_base, args.seed_base + args.seeds)])
                rates[cond] = sum(r.success for r in res) / len(res)
                counts[(e, task, cond)] = (sum(r.success for r in res), len(res))
                flat[f"success.{e}.{task}.{cond}"] = rates[cond]
                acc = sum(r.planning.get("accepted", 0) for r in res)
                rej = sum(r.planning.get("rejected", 0) for r in res)
                flat[f"plans_accepted.{e}.{task}.{cond}"] = acc / len(res)
                flat[f"plans_rejected.{e}.{task}.{cond}"] = rej / len(res)
                for what in ("clamped", "regrasps", "pregrasp_replans"):  # per episode, mean
                    flat[f"{what}.{e}.{task}.{cond}"] = sum(r.planning.get(what, 0) for r in res) / len(res)
                fails = [r.reason for r in res if not r.success]
                top = max(set(fails), key=fails.count)[:40] if fails else ""
                base = rates.get("clean")
                rows.append([e, task, cond, f"{rates[cond]:.2f}", f"{sum(r.success for r in res)}/{len(res)}",
                             fmt_ratio(rates[cond] / base) if base else "n/a", f"{acc}/{rej}", top])
                print(f"  {e} {task} {cond}: {rates[cond]:.2f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if pool is not None:
        pool.close()
        pool.join()
    print_table(f"sim success, {planner_label} planner, {args.seeds} seeds per cell "
                f"({args.seed_base}..{args.seed_base + args.seeds - 1}), depth tare "
                f"{'off' if args.no_depth_tare else 'on'}",
                ["planner+expert" if planner else "expert", "task", "condition", "success", "n", "vs clean",
                 "plans ok/rejected", "typical failure"], rows,
                caption=machine_line())
    ik_name = "ik" if planner is None else f"{args.planner}+ik"
    if args.ik_from is not None:  # plain IK measured earlier on the same scenes
        counts.update({k: v for k, v in ik_prior.items() if k[1] in tasks and k[2] in conds and k not in counts})
    if any(k[0] == ik_name for k in counts) and any(k[0] != ik_name for k in counts):
        flat.update(vs_ik_table(counts, ik_name))
    if not args.no_timings:
        tm = timings()
        flat.update(tm)
        print_table("sim timings", ["what", "median ms", "vs 320x240 render"],
                    [["physics step (1/240 s)", fmt_ms(tm["step_ms"]), "-"],
                     ["render 320x240", fmt_ms(tm["render_ms_320"]), "1.0x"],
                     ["render 640x480", fmt_ms(tm["render_ms_640"]),
                      fmt_ratio(ratio(tm["render_ms_320"], tm["render_ms_640"]))]])
    flat["seeds"] = args.seeds
    flat["seed_base"] = args.seed_base
    flat["depth_tare"] = not args.no_depth_tare
    flat["planner"] = planner_label
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
