"""The VLM planner on the first frame of the episode scenes, against the oracle's plan of the same frame.

    python benchmarks/planner_on_episodes.py [--task put_cup_in_tray] [--seeds 50] [--seed-base 7000]
                                             [--vlm LM.gguf --mmproj MM.gguf] [--threads 1] [--json FILE]

``benchmarks/sim_success.py --planner gguf`` gives the closed-loop success; this separates what the
plan contributes to it. Each scene is built as ``run_episode`` builds it (``build_world``: the task's
scene, the jittered camera, the arm at home), the camera's first frame goes to the shipped VLM (or
``--vlm``/``--mmproj``) through ``GGUFPlanner.plan`` and to the oracle, and the two plans are compared:
anchor pixel error at 640x480 (a plan with another anchor count: every anchor a miss, inf) and the grasp
yaw error, folded to [0, 90] degrees (a parallel gripper is symmetric under 180 degrees).

``--json`` keys: ``anchor_px_median``, ``anchor_px_p90``, ``grasp_px_median``, ``scene_worst_le_9px`` (share of
scenes whose worst anchor is within 9 px, about 2 cm at this camera's distance), ``yaw_err_deg_median``,
``yaw_err_deg_p90``, ``vlm_yaw_deg_spread`` (max - min of the VLM's yaws), ``oracle_yaw_deg_spread``, ``scenes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

RUNTIME_PATHS = ["edgebridge.runtime.planner.gguf:GGUFPlanner.plan"]


def yaw_deg(q) -> float:
    """Yaw of a top-down gripper quaternion (x, y, z, w) = (cos(yaw/2), sin(yaw/2), 0, 0)."""
    return math.degrees(2.0 * math.atan2(float(q[1]), float(q[0])))


def fold180(d: float) -> float:
    d = abs((d + 90.0) % 180.0 - 90.0)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="put_cup_in_tray")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seed-base", type=int, default=7000)
    ap.add_argument("--vlm")
    ap.add_argument("--mmproj")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    from edgebridge.runtime.planner import shipped
    from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig
    from edgebridge.sim.episode import build_world
    from edgebridge.sim.oracle import OracleConfig, OraclePlanner

    if bool(args.vlm) != bool(args.mmproj):
        print("planner_on_episodes: pass both --vlm and --mmproj, or neither (the shipped planner)", file=sys.stderr)
        return 2
    files = (args.vlm, args.mmproj) if args.vlm else shipped.shipped_vlm()
    if files is None:
        print(shipped.missing_message(), file=sys.stderr)
        return 2
    vlm = GGUFPlanner(GGUFPlannerConfig(model_path=str(files[0]), mmproj_path=str(files[1]), chat_handler="mtmd",
                                        n_ctx=shipped.N_CTX, n_threads=args.threads))
    errs, worst, grasp, yaw_err, vlm_yaw, oracle_yaw = [], [], [], [], [], []
    for seed in range(args.seed_base, args.seed_base + args.seeds):
        spec, world, cam, _arm = build_world(args.task, seed)
        try:
            cam.connect()
            rgbd = cam.read()
            o = OraclePlanner(world, cam, OracleConfig(seed=seed)).plan(rgbd, spec.instruction)
            p = vlm.plan(rgbd, spec.instruction)
        finally:
            world.close()
        s = 640.0 / rgbd.rgb.shape[1]
        if len(p.anchors) != len(o.anchors):
            e = [math.inf] * len(o.anchors)
        else:
            e = [s * math.hypot(a.u - b.u, a.v - b.v) for a, b in zip(p.anchors, o.anchors)]
        errs += e
        worst.append(max(e))
        grasp += [x for x, a in zip(e, o.anchors) if a.gripper < 0.5]
        vy, oy = yaw_deg(p.orientation), yaw_deg(o.orientation)
        vlm_yaw.append(vy)
        oracle_yaw.append(oy)
        yaw_err.append(fold180(vy - oy))
        print(f"seed {seed}: anchors {' '.join(f'{x:.1f}' for x in e)} px, yaw VLM {vy:.0f} oracle {oy:.0f} deg",
              flush=True)
    e, w = np.array(errs), np.array(worst)
    res = {"scenes": args.seeds, "anchor_px_median": float(np.median(e)), "anchor_px_p90": float(np.percentile(e, 90)),
           "grasp_px_median": float(np.median(grasp)) if grasp else math.nan,
           "scene_worst_le_9px": float(np.mean(w <= 9.0)), "yaw_err_deg_median": float(np.median(yaw_err)),
           "yaw_err_deg_p90": float(np.percentile(yaw_err, 90)),
           "vlm_yaw_deg_spread": float(np.ptp(vlm_yaw)), "oracle_yaw_deg_spread": float(np.ptp(oracle_yaw))}
    print(f"{args.task}, {args.seeds} episode scenes from {args.seed_base}: anchors median {res['anchor_px_median']:.1f} / "
          f"p90 {res['anchor_px_p90']:.1f} px (640x480), grasp median {res['grasp_px_median']:.1f} px, scenes "
          f"with every anchor within 9 px {res['scene_worst_le_9px']:.2f}; yaw error median "
          f"{res['yaw_err_deg_median']:.0f} / p90 {res['yaw_err_deg_p90']:.0f} deg (VLM yaws span "
          f"{res['vlm_yaw_deg_spread']:.0f} deg, the oracle's {res['oracle_yaw_deg_spread']:.0f})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
