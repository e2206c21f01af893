"""Quality of the VLM planner on held-out pointing scenes, through the runtime's ``GGUFPlanner.plan``.

    python benchmarks/planner_quality.py --json FILE [--vlm LM.gguf --mmproj MM.gguf] [--data build/pointing]
                                         [--scenes 200] [--threads 2] [--unknown-scenes 20]

Model: the shipped planner (``vlm.gguf`` + ``vlm-mmproj.gguf`` in ``assets/planner``) unless ``--vlm``/``--mmproj``
name other files (chat handler ``mtmd``). Data: a pointing data set (``edge-sim pointing``; ``make planner``
writes ``build/pointing``). Scenes: the first ``--scenes`` rows of its test split (held-out seeds, all
tasks; all of them when the split has fewer). Each row's scene is rendered again
(``render_pointing_scene(task, seed, heldout=...)``) for its clean depth and segmentation, and its oracle plan
must equal the row's ``plan`` (else the data set and the simulator disagree and the run stops). The planner
sees the scene's RGB-D frame and the row's instruction, as in an episode.

Measures (pixel errors in 640x480 pixels: the scene's 320x240 pixels x 2):
- ``plan_parse_rate``: plans that parse / scenes (a ``PlanError`` counts as not parsed);
- ``anchor_px_median`` / ``_p90``: per-anchor pixel error against the oracle's anchors, matched in order. A plan
  that does not parse or has another number of anchors than the oracle's makes each of the scene's anchors a
  miss with error = inf (so a median is inf when more than half the anchors are misses);
- ``prior_px_median``: the same error of a no-image baseline, the mean anchor per task and anchor index over the
  TRAIN split; ``anchor_vs_prior_ratio`` = anchor_px_median / prior_px_median (< 1: the image helps);
- ``scene_within_2cm``: share of scenes whose anchors all lift to within 2 cm of the oracle's 3-D points, lifted
  as the pipeline lifts a VLM plan (``runtime.lift.lift_plan`` on the clean depth, intrinsics and camera pose of
  the scene, then ``runtime.grasp_point.apply_grasp_point``: a grasp on a round open object moved onto its
  axis); ``waypoint_cm_median``: per-anchor 3-D error after that lift (misses inf); ``..._lift_only``: the same
  without the grasp point; ``plan_accepted_rate``: plans the pipeline's lift accepts
  (anchors inside ``AnchorBounds`` of the sim setup); ``oracle_waypoint_cm_median``: the same lift's error on the
  oracle's pixels (the floor of the 3-D error); ``trained_phrasing_*`` / ``heldout_phrasing_*``: within 2 cm and
  pixel errors over the scenes with trained / held-out phrasings;
- ``heldout_phrasing_correct`` (over ``heldout_scenes`` with held-out phrasings) and ``trained_phrasing_correct``:
  plans with the oracle's anchor count whose every anchor lies within 3 px (320x240 pixels) of the segmentation
  mask of the object the oracle's anchor is on: the right objects in the right order;
- ``plan_ms_p50`` / ``_p90``: wall time of ``planner.plan`` (llama.cpp on ``--threads`` threads);
- ``unknown_object_*``: ``--unknown-scenes`` test scenes of put_cup_in_tray, each planned with instructions
  naming objects that are not there (``UNKNOWN_INSTRUCTIONS``): parse rate and where the first anchor lands
  (on the cup, the tray, another object, or none); ``cup_task_on_cup_rate``: the same for the scenes' own
  instructions in the main run, for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, print_table, quiet_llama_logs, write_json  # noqa: E402

from edgebridge.contracts import RGBD  # noqa: E402
from edgebridge.errors import PlanError  # noqa: E402
from edgebridge.runtime.grasp_point import apply_grasp_point  # noqa: E402
from edgebridge.runtime.lift import AnchorBounds, lift_plan  # noqa: E402
from edgebridge.runtime.planner.format import parse_plan  # noqa: E402
from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.planner.gguf:GGUFPlanner.plan", "edgebridge.runtime.lift:lift_plan"]
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "build" / "pointing"
UNKNOWN_TASK = "put_cup_in_tray"
UNKNOWN_INSTRUCTIONS = ("put the banana in the tray", "put the green bottle in the tray")
REF_WIDTH = 640  # pixel errors are reported in 640x480 pixels
MASK_TOL_PX = 3
WITHIN_M = 0.02
GRASP_POINT = "cloud"  # the pipeline's grasp point for a non-privileged plan (planner.grasp_point = "auto")


def read_split(root: Path, split: str) -> list[dict]:
    path = root / split / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prior_table(train: list[dict]) -> dict[tuple[str, int], np.ndarray]:
    """(task, anchor index) -> the mean anchor pixel over the train split."""
    acc: dict[tuple[str, int], list] = defaultdict(list)
    for row in train:
        for i, uv in enumerate(row["anchors_px"]):
            acc[(row["task"], i)].append(uv)
    return {k: np.mean(np.asarray(v, dtype=np.float64), axis=0) for k, v in acc.items()}


def px_errors(pred, true, scale: float) -> list[float]:
    """Per true anchor: the pixel distance to the predicted anchor of the same index (x ``scale``); every
    anchor is a miss (inf) when ``pred`` is None or has another length."""
    if pred is None or len(pred) != len(true):
        return [math.inf] * len(true)
    return [scale * math.hypot(p[0] - t[0], p[1] - t[1]) for p, t in zip(pred, true)]


def on_mask(seg: np.ndarray, body: int, u: int, v: int, tol: int = MASK_TOL_PX) -> bool:
    """Whether pixel (u, v) lies within ``tol`` pixels of the segmentation mask of ``body``."""
    h, w = seg.shape
    v0, v1, u0, u1 = max(0, v - tol), min(h, v + tol + 1), max(0, u - tol), min(w, u + tol + 1)
    vs, us = np.nonzero(seg[v0:v1, u0:u1] == body)
    return bool(vs.size and np.min((vs + v0 - v) ** 2 + (us + u0 - u) ** 2) <= tol * tol)


def object_at(scene, u: int, v: int) -> str | None:
    """The scene object whose mask is nearest (within ``MASK_TOL_PX``) to pixel (u, v), or None."""
    hits = [n for n, b in scene.bodies.items() if on_mask(scene.segmentation, b, u, v)]
    if len(hits) > 1:  # the one under the pixel, else the first
        under = [n for n in hits if scene.segmentation[v, u] == scene.bodies[n]]
        hits = under or hits
    return hits[0] if hits else None


def right_objects(plan, scene) -> bool:
    """Same anchor count as the oracle and every anchor on (within 3 px of) the object the oracle's is on."""
    if plan is None or len(plan.anchors) != len(scene.anchor_objects):
        return False
    return all(on_mask(scene.segmentation, scene.bodies[name], a.u, a.v)
               for a, name in zip(plan.anchors, scene.anchor_objects))


def lift_errors_m(plan, frame: RGBD, scene, grasp_point: str = "plan") -> list[float]:
    """Per oracle anchor: distance of the lifted plan anchor to the oracle's 3-D point (inf: miss).
    ``grasp_point``: the pipeline's grasp-point policy applied after the lift (``runtime/grasp_point.py``)."""
    true = np.asarray(scene.anchors_xyz, dtype=np.float64)
    if plan is None or len(plan.anchors) != len(true):
        return [math.inf] * len(true)
    try:
        wp = lift_plan(plan, frame, scene.T_base_cam)
    except PlanError:
        return [math.inf] * len(true)
    wp, _ = apply_grasp_point(plan, wp, frame, scene.T_base_cam, grasp_point)
    return np.linalg.norm(np.asarray(wp.positions, dtype=np.float64) - true, axis=1).tolist()


def sim_anchor_bounds() -> AnchorBounds:
    """The bounds the simulated setup's pipeline lifts anchors into (``Pipeline.anchor_bounds``)."""
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.sim.episode import workspace

    cfg = load_robot_config("sim_panda")
    return AnchorBounds(cfg.limits.workspace_min, cfg.limits.workspace_max, workspace())


def pointing_config(data: Path):
    """The ``PointingConfig`` the data set was written with (``info.json``), or None for the default."""
    import dataclasses

    from edgebridge.sim.pointing import PointingConfig

    path = data / "info.json"
    saved = json.loads(path.read_text()).get("config") if path.is_file() else None
    if not saved:
        return None
    fields = {f.name: f for f in dataclasses.fields(PointingConfig)}
    return PointingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})


def render(row: dict, config=None):
    """The row's scene rendered again (with the data set's ``config``); its oracle plan must be the row's."""
    from edgebridge.sim.pointing import render_pointing_scene

    scene = render_pointing_scene(row["task"], int(row["seed"]), heldout=bool(row["phrasing_heldout"]), config=config)
    if scene.plan_json != row["plan"] or list(scene.anchor_objects) != list(row.get("anchor_objects", scene.anchor_objects)):
        raise RuntimeError(f"{row['task']} seed {row['seed']} ({row.get('file_name')}): the scene rendered again plans "
                           f"{scene.plan_json}, the data set holds {row['plan']}; the data set was written by another "
                           f"version of the simulator or with another PointingConfig: write it again")
    return scene


def frame_of(scene) -> RGBD:
    return RGBD(rgb=scene.rgb, depth=scene.depth, intrinsics=scene.intrinsics, stamp_ns=0)


def timed_plan(planner: GGUFPlanner, frame: RGBD, instruction: str, times_ms: list[float]):
    t0 = time.perf_counter()
    try:
        return planner.plan(frame, instruction)
    except PlanError:
        return None
    finally:
        times_ms.append((time.perf_counter() - t0) * 1e3)


def pct(a, q: float) -> float:
    """``np.percentile`` (linear) with misses (inf) counted: inf when it falls among them; nan when empty."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    if a.size == 0:
        return math.nan
    pos = q / 100 * (a.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or math.isinf(a[hi]):
        return float(a[lo] if lo == hi else math.inf)
    return float(a[lo] + (a[hi] - a[lo]) * (pos - lo))


def share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else math.nan


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve_model(args, ap) -> tuple[Path, Path]:
    if args.vlm is None and args.mmproj is None:
        from edgebridge.runtime.planner import shipped

        files = shipped.shipped_vlm()
        if files is None:
            ap.error(shipped.missing_message().replace("planner gguf:", "no --vlm/--mmproj given and"))
        return files
    if args.vlm is None or args.mmproj is None:
        ap.error("pass both --vlm LM.gguf and --mmproj MMPROJ.gguf (or neither, for the shipped planner)")
    for p in (args.vlm, args.mmproj):
        if not p.is_file():
            ap.error(f"{p}: no such file")
    return args.vlm, args.mmproj


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{digits}f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlm", type=Path, default=None, help="language model GGUF (default: the shipped planner)")
    ap.add_argument("--mmproj", type=Path, default=None, help="its vision projector GGUF")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"pointing data set (edge-sim pointing --out; default {DEFAULT_DATA})")
    ap.add_argument("--scenes", type=int, default=200, help="test scenes to plan (the first N of the test split)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--unknown-scenes", type=int, default=20,
                    help=f"{UNKNOWN_TASK} test scenes planned with instructions naming absent objects")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.scenes < 1 or args.threads < 1 or args.unknown_scenes < 0:
        ap.error("--scenes and --threads must be >= 1, --unknown-scenes >= 0")
    for split in ("train", "test"):
        if not (args.data / split / "metadata.jsonl").is_file():
            ap.error(f"{args.data} is not a pointing data set ({split}/metadata.jsonl missing); pass --data DIR or "
                     f"write one with 'edge-sim pointing --tasks all --scenes 6000 --out {args.data}'")
    lm, mm = resolve_model(args, ap)
    info_path = args.data / "info.json"
    if info_path.is_file() and not json.loads(info_path.read_text()).get("complete", False):
        print(f"planner_quality: {args.data} is an unfinished data set (info.json: complete false)", file=sys.stderr)
    test = read_split(args.data, "test")
    if not test:
        ap.error(f"{args.data}: the test split is empty")
    if len(test) < args.scenes:
        print(f"planner_quality: the test split has {len(test)} scenes, fewer than --scenes {args.scenes}: "
              f"using all {len(test)}", file=sys.stderr)
    rows = test[:args.scenes]
    prior = prior_table(read_split(args.data, "train"))
    config = pointing_config(args.data)
    bounds = sim_anchor_bounds()

    quiet_llama_logs()
    planner = GGUFPlanner(GGUFPlannerConfig(model_path=str(lm), mmproj_path=str(mm), chat_handler="mtmd",
                                            n_threads=args.threads, n_ctx=1024))
    times: list[float] = []
    px, prior_px, cm, oracle_cm = [], [], [], []
    per_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    parsed, within, accepted, held_ok, trained_ok, cup_on_cup = [], [], [], [], [], []
    cm_raw, within_raw = [], []
    by_phrasing: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    unknown_cache: list = []
    t0 = time.perf_counter()
    for n, row in enumerate(rows, 1):
        scene = render(row, config)
        frame = frame_of(scene)
        scale = REF_WIDTH / scene.intrinsics.width
        plan = timed_plan(planner, frame, row["instruction"], times)
        pred = None if plan is None else [(a.u, a.v) for a in plan.anchors]
        e_px = px_errors(pred, scene.anchors_px, scale)
        e_prior = [scale * math.hypot(*(prior[(row["task"], i)] - uv)) if (row["task"], i) in prior else math.inf
                   for i, uv in enumerate(np.asarray(scene.anchors_px, dtype=np.float64))]
        e_m = lift_errors_m(plan, frame, scene, GRASP_POINT)
        e_raw = lift_errors_m(plan, frame, scene)
        oracle = parse_plan(scene.plan_json, row["instruction"], scene.intrinsics.width, scene.intrinsics.height)
        oracle_cm += [100 * e for e in lift_errors_m(oracle, frame, scene, GRASP_POINT)]
        ok = True
        if plan is not None:
            try:
                lift_plan(plan, frame, scene.T_base_cam, bounds)
            except PlanError:
                ok = False
        accepted.append(plan is not None and ok)
        parsed.append(plan is not None)
        px += e_px
        prior_px += e_prior
        cm += [100 * e for e in e_m]
        within.append(all(e <= WITHIN_M for e in e_m))
        cm_raw += [100 * e for e in e_raw]
        within_raw.append(all(e <= WITHIN_M for e in e_raw))
        by_phrasing["heldout" if row["phrasing_heldout"] else "trained"]["within"].append(within[-1])
        by_phrasing["heldout" if row["phrasing_heldout"] else "trained"]["px"] += e_px
        (held_ok if row["phrasing_heldout"] else trained_ok).append(right_objects(plan, scene))
        t = per_task[row["task"]]
        t["px"] += e_px
        t["prior"] += e_prior
        t["within"].append(within[-1])
        t["parsed"].append(parsed[-1])
        if row["task"] == UNKNOWN_TASK:
            first = pred[0] if pred else None
            cup_on_cup.append(first is not None and object_at(scene, *first) == "cup")
            if len(unknown_cache) < args.unknown_scenes:
                unknown_cache.append(scene)
        if n % 25 == 0 or n == len(rows):
            dt = time.perf_counter() - t0
            print(f"  {n}/{len(rows)} scenes: parsed {share(parsed):.2f}, anchor px median {fmt(pct(px, 50))}, "
                  f"within 2 cm {share(within):.2f}, {dt / n:.1f} s/scene, ETA {dt / n * (len(rows) - n):.0f} s",
                  file=sys.stderr)

    # instructions naming objects the scene does not have
    extra = [r for r in test if r["task"] == UNKNOWN_TASK][len(unknown_cache):]
    unknown_cache += [render(r, config) for r in extra[:max(0, args.unknown_scenes - len(unknown_cache))]]
    landed: dict[str, int] = defaultdict(int)
    u_parsed = []
    for scene in unknown_cache:
        for text in UNKNOWN_INSTRUCTIONS:
            plan = timed_plan(planner, frame_of(scene), text, [])
            u_parsed.append(plan is not None)
            if plan is not None and plan.anchors:
                name = object_at(scene, plan.anchors[0].u, plan.anchors[0].v)
                landed["cup" if name == "cup" else "tray" if name == "tray" else "none" if name is None else "other"] += 1
    planner.close()
    n_unknown = len(u_parsed)

    res = {
        "plan_parse_rate": share(parsed), "anchor_px_median": pct(px, 50), "anchor_px_p90": pct(px, 90),
        "prior_px_median": pct(prior_px, 50), "scene_within_2cm": share(within), "waypoint_cm_median": pct(cm, 50),
        "oracle_waypoint_cm_median": pct(oracle_cm, 50), "plan_accepted_rate": share(accepted),
        "scene_within_2cm_lift_only": share(within_raw), "waypoint_cm_median_lift_only": pct(cm_raw, 50),
        "heldout_phrasing_correct": share(held_ok), "heldout_scenes": len(held_ok),
        "trained_phrasing_correct": share(trained_ok), "trained_scenes": len(trained_ok),
        "plan_ms_p50": float(np.percentile(times, 50)), "plan_ms_p90": float(np.percentile(times, 90)),
        "lm_mb": lm.stat().st_size / 1e6, "mmproj_mb": mm.stat().st_size / 1e6,
        "unknown_object_plans": n_unknown, "unknown_object_parse_rate": share(u_parsed),
        "cup_task_on_cup_rate": share(cup_on_cup),
        "cpu": cpu_name(), "threads": args.threads, "scenes": len(rows), "model": lm.name, "mmproj": mm.name,
        "data": str(args.data),
    }
    for where in ("cup", "tray", "other", "none"):
        res[f"unknown_object_on_{where}_rate"] = landed[where] / n_unknown if n_unknown else math.nan
    a, p = res["anchor_px_median"], res["prior_px_median"]
    res["anchor_vs_prior_ratio"] = a / p if math.isfinite(a) and math.isfinite(p) and p > 0 else math.nan
    for kind, t in by_phrasing.items():
        res.update({f"{kind}_phrasing_scenes": len(t["within"]), f"{kind}_phrasing_scene_within_2cm": share(t["within"]),
                    f"{kind}_phrasing_anchor_px_median": pct(t["px"], 50),
                    f"{kind}_phrasing_anchor_px_p90": pct(t["px"], 90)})
    for task, t in per_task.items():
        res.update({f"task.{task}.scenes": len(t["parsed"]), f"task.{task}.anchor_px_median": pct(t["px"], 50),
                    f"task.{task}.prior_px_median": pct(t["prior"], 50),
                    f"task.{task}.scene_within_2cm": share(t["within"])})

    table = [
        ["plans that parse", fmt(100 * res["plan_parse_rate"]) + " %", f"{sum(parsed)}/{len(parsed)}"],
        ["anchor error median / p90 (px @640x480)", f"{fmt(a)} / {fmt(res['anchor_px_p90'])}",
         f"prior (train mean per task+index): {fmt(p)}; ratio {fmt(res['anchor_vs_prior_ratio'], 2)}"],
        ["scenes with every anchor within 2 cm (3-D)", fmt(100 * res["scene_within_2cm"]) + " %",
         f"waypoint error median {fmt(res['waypoint_cm_median'], 2)} cm (lift floor "
         f"{fmt(res['oracle_waypoint_cm_median'], 2)} cm); lift alone (no grasp point) "
         f"{fmt(100 * res['scene_within_2cm_lift_only'])} %, {fmt(res['waypoint_cm_median_lift_only'], 2)} cm"],
        ["trained / held-out phrasings: within 2 cm",
         f"{fmt(100 * res.get('trained_phrasing_scene_within_2cm', math.nan))} / "
         f"{fmt(100 * res.get('heldout_phrasing_scene_within_2cm', math.nan))} %",
         f"anchor px p90 {fmt(res.get('trained_phrasing_anchor_px_p90', math.nan))} / "
         f"{fmt(res.get('heldout_phrasing_anchor_px_p90', math.nan))}"],
        ["plans the pipeline's lift accepts", fmt(100 * res["plan_accepted_rate"]) + " %", "AnchorBounds of sim_panda"],
        ["right objects, held-out phrasings", fmt(100 * res["heldout_phrasing_correct"]) + " %",
         f"{res['heldout_scenes']} scenes; trained phrasings {fmt(100 * res['trained_phrasing_correct'])} % "
         f"of {res['trained_scenes']}"],
        ["plan wall time p50 / p90 (ms)", f"{fmt(res['plan_ms_p50'], 0)} / {fmt(res['plan_ms_p90'], 0)}",
         f"llama.cpp threads {args.threads}"],
        ["model files (MB)", f"{res['lm_mb']:.1f} + {res['mmproj_mb']:.1f}", f"{lm.name} + {mm.name}"],
        [f"absent object named ({n_unknown} plans)", fmt(100 * res["unknown_object_parse_rate"]) + " % parse",
         "first anchor on: " + ", ".join(f"{w} {fmt(100 * res[f'unknown_object_on_{w}_rate'], 0)} %"
                                         for w in ("cup", "tray", "other", "none"))
         + f" (own instruction: cup {fmt(100 * res['cup_task_on_cup_rate'], 0)} %)"],
    ]
    print_table(f"planner quality, {len(rows)} held-out scenes of {args.data.name}", ["measure", "value", "notes"],
                table, caption=f"{res['cpu']}; a plan with the wrong anchor count makes every anchor of its scene a "
                               f"miss (error inf)")
    print_table("per task", ["task", "scenes", "parsed", "anchor px median", "prior px median", "within 2 cm"],
                [[task, len(t["parsed"]), fmt(share(t["parsed"]), 2), fmt(pct(t["px"], 50)), fmt(pct(t["prior"], 50)),
                  fmt(share(t["within"]), 2)] for task, t in sorted(per_task.items())])
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
