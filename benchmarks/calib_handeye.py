"""Hand-eye calibration from start to finish in the simulator: ``edge-calib collect`` + ``edge-calib handeye``
against the true camera pose, and put-cup-in-tray episodes run with the recovered pose.

    python benchmarks/calib_handeye.py [--seeds 3] [--seed-base 0] [--poses 15] [--episodes]
                                       [--baseline-seeds 3] [--json FILE]

Per seed: the world of ``put_cup_in_tray`` with that seed (its jittered camera, as the episode of that seed
has it) and a ChArUco board on the gripper (``calib.setup_rig.open_rig``); ``Collector`` in auto mode
(probe turns, rough solve, planned poses, slow checked moves; frames at 1280x960); then the solve of
``edge-calib handeye`` (``cli.read_session`` + ``solve_session``: park, refined on the board corners).
The error is the rotation angle and translation distance between the recovered ``T_base_cam`` and the
camera's true pose.

Baselines in the same run: the setup's nominal camera pose (the un-jittered sim camera, what one would use
without calibrating), the closed-form park solution of the same samples (no refinement), and for the first
``--baseline-seeds`` seeds a session with small rotations only (tilts and rolls up to 5 deg, probes 3 deg),
which shows what the large rotations buy. Ratios: baseline error / calibrated error.

``--episodes``: per seed, three put-cup-in-tray episodes (oracle planner, the shipped ONNX expert, depth tare
on, as ``benchmarks/sim_success.py --planner oracle --experts expert`` runs them): the pipeline given the true
camera pose, the recovered one, and the nominal one (``Devices.T_base_cam``; the oracle still reads the true
scene), and the three success counts.

``--json`` keys: ``calib_trans_err_mm`` / ``calib_rot_err_deg`` (worst seed), ``..._mean``,
``calib_samples`` (mean kept samples), ``calib_reprojection_px`` (mean RMS), ``calib_closed_form_*``,
``calib_nominal_*``, ``calib_small_rotation_*``, ``calib_collect_s`` (mean wall time of a session),
``success_true_calib`` / ``success_recovered_calib`` / ``success_nominal_calib`` / ``episodes`` and
``recovered_vs_true_*`` / ``nominal_vs_true_*`` (``p_below``: one-sided Fisher exact p of a lower success
rate than with the true pose; ``verdict``: ``below`` at p < 0.05, else ``level``) (with ``--episodes``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, fmt_ratio, machine_line, print_table, write_json  # noqa: E402

TASK = "put_cup_in_tray"
CAPTURE = (1280, 960)
SMALL = dict(probe_tilt_deg=3.0, min_tilt_deg=0.0, max_tilt_deg=5.0, max_roll_deg=5.0)


def calibrate(seed: int, poses: int, directory: Path, **collect_kw) -> dict:
    """One session + solve in the world of ``seed``: errors of the refined and closed-form solutions."""
    from edgebridge.calib.board import BoardConfig
    from edgebridge.calib.cli import read_session, solve_session
    from edgebridge.calib.collect import CollectConfig, Collector
    from edgebridge.calib.handeye import transform_error
    from edgebridge.calib.setup_rig import open_rig

    board = BoardConfig()
    t0 = time.perf_counter()
    rig = open_rig("sim_panda", board, seed=seed, task=TASK, capture_size=CAPTURE)
    try:
        truth = rig.camera.T_base_cam.copy()
        Collector(rig, board, CollectConfig(poses=poses, seed=seed, **collect_kw), directory, say=lambda s: None).run()
    finally:
        rig.close()
    t1 = time.perf_counter()
    res, closed = solve_session(read_session(directory))
    rot, trans = transform_error(res.T, truth)
    crot, ctrans = transform_error(closed.T, truth)
    return {"T": res.T, "truth": truth, "rot_deg": rot, "trans_mm": trans * 1e3, "closed_rot_deg": crot,
            "closed_trans_mm": ctrans * 1e3, "samples": res.n_samples, "reproj_px": res.reprojection_rms_px,
            "collect_s": t1 - t0}


def nominal_pose() -> np.ndarray:
    """The setup's camera pose before calibration: the sim camera without its per-seed jitter."""
    from edgebridge.sim.camera import SimCameraConfig, look_at

    c = SimCameraConfig()
    return look_at(c.eye, c.target, c.up)


def nominal_error(truth: np.ndarray) -> tuple[float, float]:
    from edgebridge.calib.handeye import transform_error

    rot, trans = transform_error(nominal_pose(), truth)
    return rot, trans * 1e3


def episode(seed: int, T_base_cam: np.ndarray | None) -> bool:
    """One put-cup-in-tray episode as sim_success runs it (oracle planner, ONNX expert, depth tare), the
    pipeline given ``T_base_cam`` (None: the camera's true pose)."""
    from edgebridge.runtime.config import load_robot_config, with_overrides
    from edgebridge.runtime.devices import RunChoices, build_devices
    from edgebridge.runtime.pipeline import Pipeline
    from edgebridge.sim.tasks import match_task

    cfg = with_overrides(load_robot_config("sim_panda"), camera={"depth_tare": True})
    devices, instruction = build_devices(cfg, RunChoices(task=TASK, seed=seed, planner="oracle", expert="onnx"))
    try:
        if T_base_cam is not None:
            devices.T_base_cam = np.asarray(T_base_cam, dtype=np.float64)
        out = Pipeline(cfg, devices).run(instruction, task=match_task(TASK).slug, seed=seed)
    finally:
        devices.close()
    return bool(out.success)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="worlds (camera poses) calibrated")
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--poses", type=int, default=15, help="samples per session")
    ap.add_argument("--baseline-seeds", type=int, default=3, help="seeds that also get a small-rotation session")
    ap.add_argument("--episodes", action="store_true", help="put-cup-in-tray with the true and the recovered pose")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.poses < 3:
        ap.error("need --seeds >= 1 and --poses >= 3")
    logging.basicConfig(level=logging.ERROR)
    rows, runs, small, nominal, wins = [], [], [], [], {"true": 0, "recovered": 0, "nominal": 0}
    for seed in range(args.seed_base, args.seed_base + args.seeds):
        with TemporaryDirectory(prefix="calib-bench-") as tmp:
            r = calibrate(seed, args.poses, Path(tmp) / "large")
            s = calibrate(seed, args.poses, Path(tmp) / "small", **SMALL) \
                if seed < args.seed_base + args.baseline_seeds else None
        runs.append(r)
        nominal.append(nominal_error(r["truth"]))
        if s is not None:
            small.append(s)
        ok = []
        if args.episodes:
            for name, T in (("true", None), ("recovered", r["T"]), ("nominal", nominal_pose())):
                won = episode(seed, T)
                wins[name] += won
                ok.append("y" if won else "n")
        rows.append([seed, r["samples"], f"{r['trans_mm']:.2f} / {r['rot_deg']:.3f}",
                     f"{r['closed_trans_mm']:.2f} / {r['closed_rot_deg']:.3f}",
                     "" if s is None else f"{s['trans_mm']:.2f} / {s['rot_deg']:.3f}",
                     f"{nominal[-1][1]:.0f} / {nominal[-1][0]:.1f}", f"{r['reproj_px']:.2f}", f"{r['collect_s']:.0f}",
                     *(["/".join(ok)] if ok else [])])
        print(f"  seed {seed}: {r['trans_mm']:.3f} mm, {r['rot_deg']:.4f} deg, {r['samples']} samples "
              f"({r['collect_s']:.1f} s)", flush=True)

    def worst(key, items):
        return float(max(x[key] for x in items))

    def mean(key, items):
        return float(np.mean([x[key] for x in items]))

    flat = {"calib_trans_err_mm": worst("trans_mm", runs), "calib_rot_err_deg": worst("rot_deg", runs),
            "calib_trans_err_mm_mean": mean("trans_mm", runs), "calib_rot_err_deg_mean": mean("rot_deg", runs),
            "calib_samples": mean("samples", runs), "calib_reprojection_px": mean("reproj_px", runs),
            "calib_collect_s": mean("collect_s", runs), "calib_seeds": len(runs),
            "calib_closed_form_trans_err_mm": worst("closed_trans_mm", runs),
            "calib_closed_form_rot_err_deg": worst("closed_rot_deg", runs),
            "calib_nominal_trans_err_mm": float(max(n[1] for n in nominal)),
            "calib_nominal_rot_err_deg": float(max(n[0] for n in nominal))}
    if small:
        flat.update(calib_small_rotation_trans_err_mm=worst("trans_mm", small),
                    calib_small_rotation_rot_err_deg=worst("rot_deg", small))
    if args.episodes:
        from edgebridge.sim.stats import compare_success

        n = len(runs)
        vs = {name: compare_success(wins[name], n, wins["true"], n) for name in ("recovered", "nominal")}
        flat.update(success_true_calib=wins["true"], success_recovered_calib=wins["recovered"],
                    success_nominal_calib=wins["nominal"], episodes=n,
                    recovered_vs_true_p_below=round(vs["recovered"].p_below, 4),
                    recovered_vs_true_verdict=vs["recovered"].verdict,
                    nominal_vs_true_p_below=round(vs["nominal"].p_below, 4), nominal_vs_true_verdict=vs["nominal"].verdict)
    cols = ["seed", "n", "mm / deg", "closed form", "small rot", "nominal", "px", "s"] + \
        (["ok t/r/n"] if args.episodes else [])
    print_table(f"hand-eye in the simulator: edge-calib collect (auto, {args.poses} poses, {CAPTURE[0]}x{CAPTURE[1]}) "
                f"+ handeye, error against the true T_base_cam", cols,
                rows, caption=machine_line())
    summary = [["edge-calib (refined)", f"{flat['calib_trans_err_mm']:.3f}", f"{flat['calib_rot_err_deg']:.4f}", "1.0x"],
               ["closed-form park, same samples", f"{flat['calib_closed_form_trans_err_mm']:.3f}",
                f"{flat['calib_closed_form_rot_err_deg']:.4f}",
                fmt_ratio(flat["calib_closed_form_trans_err_mm"] / flat["calib_trans_err_mm"])],
               ["nominal camera pose", f"{flat['calib_nominal_trans_err_mm']:.1f}", f"{flat['calib_nominal_rot_err_deg']:.3f}",
                fmt_ratio(flat["calib_nominal_trans_err_mm"] / flat["calib_trans_err_mm"])]]
    if small:
        summary.append(["small rotations (<= 5 deg)", f"{flat['calib_small_rotation_trans_err_mm']:.3f}",
                        f"{flat['calib_small_rotation_rot_err_deg']:.4f}",
                        fmt_ratio(flat["calib_small_rotation_trans_err_mm"] / flat["calib_trans_err_mm"])])
    print_table("worst seed: translation mm, rotation deg, baseline error / calibrated error",
                ["camera pose", "mm", "deg", "vs calibrated"], summary)
    if args.episodes:
        print_table("put_cup_in_tray, oracle planner + ONNX expert, same scenes (one-sided Fisher exact p of "
                    "'below the true pose')", ["camera pose", "success", "p below true", "verdict"],
                    [["true", f"{wins['true']}/{n}", "", ""]]
                    + [[name, f"{wins[name]}/{n}", f"{c.p_below:.3f}", c.verdict] for name, c in vs.items()])
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
