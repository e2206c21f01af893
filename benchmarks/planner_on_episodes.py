"""The VLM planner on the first frame of the episode scenes, against the oracle's plan of the same frame.

    python benchmarks/planner_on_episodes.py [--task put_cup_in_tray] [--seeds 50] [--seed-base 7000]
                                             [--vlm LM.gguf --mmproj MM.gguf] [--threads 1] [--json FILE]

``benchmarks/sim_success.py --planner gguf`` gives the closed-loop success; this separates what the
plan contributes to it. Each scene is built as ``run_episode`` builds it (``build_world``: the task's
scene, the jittered camera, the arm at home), the camera's first frame goes to the shipped VLM (or
``--vlm``/``--mmproj``) through ``GGUFPlanner.plan`` and to the oracle, and the two plans are compared:
anchor pixel error at 640x480 (a plan with another anchor count: every anchor a miss, inf) and the grasp
yaw error, folded to [0, 90] degrees (a parallel gripper is symmetric under 180 degrees), of the VLM's own
yaw token and of the yaw the runtime measures in the depth image at the VLM's grasp anchor
(``planner.grasp_yaw``, ``runtime/grasp_yaw.py``, what ``Pipeline.lift`` applies by default).
``--stereo-noise``: the depth as a D435-like stereo camera gives it (``DepthNoiseConfig.stereo``).

``--json`` keys: ``anchor_px_median``, ``anchor_px_p90``, ``grasp_px_median``, ``scene_worst_le_9px`` (share of
scenes whose worst anchor is within 9 px, about 2 cm at this camera's distance), ``yaw_err_deg_median``,
``yaw_err_deg_p90``, ``vlm_yaw_deg_spread`` (max - min of the VLM's yaws), ``oracle_yaw_deg_spread``,
``cloud_yaw_err_deg_median``, ``cloud_yaw_err_deg_p90``, ``cloud_yaw_read`` (share of plans whose yaw the depth
gave), ``scenes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

RUNTIME_PATHS = ["edgebridge.runtime.planner.gguf:GGUFPlanner.plan", "edgebridge.runtime.grasp_yaw:apply_grasp_yaw"]


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
    ap.add_argument("--stereo-noise", action="store_true",
                    help="render depth with the simulated D435-like stereo noise (DepthNoiseConfig.stereo: ~3 mm at "
                         "1 m, dropout, holes, flying pixels at edges); the VLM sees the same colour image")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    from edgebridge.runtime.grasp_yaw import apply_grasp_yaw
    from edgebridge.runtime.lift import lift_plan
    from edgebridge.runtime.planner import shipped
    from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig
    from edgebridge.sim.camera import DepthNoiseConfig
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
    errs, worst, grasp, yaw_err, vlm_yaw, oracle_yaw, cloud_err = [], [], [], [], [], [], []
    for seed in range(args.seed_base, args.seed_base + args.seeds):
        spec, world, cam, _arm = build_world(args.task, seed, depth_noise=DepthNoiseConfig.stereo() if args.stereo_noise
                                             else 0.0)
        try:
            cam.connect()
            rgbd = cam.read()
            o = OraclePlanner(world, cam, OracleConfig(seed=seed)).plan(rgbd, spec.instruction)
            p = vlm.plan(rgbd, spec.instruction)
            T = cam.T_base_cam
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
        _, est = apply_grasp_yaw(p, lift_plan(p, rgbd, T), rgbd, T, "cloud")
        cy = math.degrees(est.yaw) if est is not None and est.yaw is not None else math.nan
        cloud_err.append(fold180(cy - oy))
        print(f"seed {seed}: anchors {' '.join(f'{x:.1f}' for x in e)} px, yaw VLM {vy:.0f} depth {cy:.0f} "
              f"({est.how}) oracle {oy:.0f} deg", flush=True)
    e, w = np.array(errs), np.array(worst)
    res = {"scenes": args.seeds, "stereo_noise": bool(args.stereo_noise), "anchor_px_median": float(np.median(e)), "anchor_px_p90": float(np.percentile(e, 90)),
           "grasp_px_median": float(np.median(grasp)) if grasp else math.nan,
           "scene_worst_le_9px": float(np.mean(w <= 9.0)), "yaw_err_deg_median": float(np.median(yaw_err)),
           "yaw_err_deg_p90": float(np.percentile(yaw_err, 90)),
           "vlm_yaw_deg_spread": float(np.ptp(vlm_yaw)), "oracle_yaw_deg_spread": float(np.ptp(oracle_yaw))}
    ce = np.array(cloud_err)
    read = ~np.isnan(ce)
    res.update({"cloud_yaw_read": float(read.mean()),
                "cloud_yaw_err_deg_median": float(np.median(ce[read])) if read.any() else math.nan,
                "cloud_yaw_err_deg_p90": float(np.percentile(ce[read], 90)) if read.any() else math.nan})
    print(f"{args.task}, {args.seeds} episode scenes from {args.seed_base}: anchors median {res['anchor_px_median']:.1f} / "
          f"p90 {res['anchor_px_p90']:.1f} px (640x480), grasp median {res['grasp_px_median']:.1f} px, scenes "
          f"with every anchor within 9 px {res['scene_worst_le_9px']:.2f}; yaw error median "
          f"{res['yaw_err_deg_median']:.0f} / p90 {res['yaw_err_deg_p90']:.0f} deg (VLM yaws span "
          f"{res['vlm_yaw_deg_spread']:.0f} deg, the oracle's {res['oracle_yaw_deg_spread']:.0f}); yaw from the depth at "
          f"the VLM's grasp anchor: error median {res['cloud_yaw_err_deg_median']:.1f} / p90 "
          f"{res['cloud_yaw_err_deg_p90']:.1f} deg, read in {res['cloud_yaw_read']:.0%} of plans")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
