"""Kernel benchmark: the kernel paths ``edge-run`` executes, each against a baseline timed in the same run.

* Cloud stage (``Pipeline.cloud``): ``depth_to_cloud`` on a 640x480 tabletop frame -> the setup's
  ``perception.n_points`` base-frame points with its ``perception.voxel_m`` (sim_panda: 512 points,
  voxel "auto"), ``backend="auto"`` (the Numba CPU twin) vs the numpy twin of the same algorithm
  (``_ref.cloud_voxel`` + ``_ref.fps``). Its two stages, ``_cpu.cloud_voxel`` (fused deproject + transform
  + crop + voxel) and ``_cpu.fps``, each vs its numpy twin. On a real GPU also ``backend="cuda"`` (what
  ``EDGEBRIDGE_KERNELS=cuda`` runs) vs the CPU twin.
* Guidance sampling (``PiecewiseGuidance.sample``: each spline piece evaluated at its share of the sample
  times): one piece sampled every ``perception.guidance_dt`` (0.05 s) over 5, 15 and 30 s (100, 300 and
  600 rows) and a 0.6 s piece (12 rows, a gripper dwell). ``GuidanceSpline.evaluate_many`` (Numba, one
  call) vs the numpy ``position`` + ``orientation`` + ``gripper`` trio (the same rows to 1e-12) and vs
  scipy giving the same rows (``make_interp_spline`` for positions, ``Slerp`` for orientations,
  ``np.interp`` for the gripper). Ratios are the smaller of (ratio of medians, ratio of minima), the
  sides timed in interleaved rounds.
* Start-up, fresh processes: ``import edgebridge`` + the first ``depth_to_cloud`` and + the first
  ``evaluate_many`` with a warm Numba cache; the cloud path's JIT compile time (empty cache).

``--json FILE`` writes one flat object: cloud_ms, cloud_vs_numpy, cloud_voxel_ms, cloud_voxel_vs_numpy,
fps_ms, fps_vs_numpy, cloud_voxels, cloud_cuda_ms and cloud_cuda_vs_cpu (real GPU only),
spline_sample_<n>_ms, spline_sample_<n>_vs_numpy, spline_sample_<n>_vs_scipy for n in 12, 100, 300, 600,
cloud_first_call_s, spline_first_call_s, jit_compile_s.

Run: .venv/bin/python benchmarks/kernels.py [--repeats 15] [--json benchmarks/results/kernels.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, fmt_ms, fmt_ratio, machine_line, print_table, ratio, time_call, write_json  # noqa: E402

from edgebridge.contracts import RGBD, Intrinsics, Waypoints  # noqa: E402
from edgebridge.kernels import GuidanceSpline, WorkspaceBox, available_backends, depth_to_cloud  # noqa: E402
from edgebridge.kernels.cloud import auto_voxel_size  # noqa: E402
from edgebridge.runtime.config import load_robot_config  # noqa: E402

# What this script times that edge-run runs (tests/test_benchmarked_paths.py checks that it does).
RUNTIME_PATHS = ["edgebridge.kernels.cloud:depth_to_cloud", "edgebridge.kernels._cpu:cloud_voxel",
                 "edgebridge.kernels._cpu:fps", "edgebridge.kernels.spline:GuidanceSpline.evaluate_many"]

SETUP = "sim_panda"  # the default edge-run setup: its perception settings are the ones timed
PLAN_SECONDS = (5.0, 15.0, 30.0)
DWELL_S = 0.6  # a gripper dwell: the shortest piece a plan has


def tabletop_scene(seed: int = 0):
    """640x480 frame of a table 0.88 m below a downward-looking camera, three boxes on it, 1 mm depth
    noise, 2 % dropouts; the camera pose and a 0.6 x 0.6 x 0.3 m workspace box over the table."""
    rng = np.random.default_rng(seed)
    H, W = 480, 640
    intr = Intrinsics(W, H, 615.0, 615.0, 319.5, 239.5)
    depth = np.full((H, W), 0.88, np.float32)
    for (v0, u0, hh, ww, height) in [(150, 200, 60, 80, 0.08), (260, 380, 90, 70, 0.12), (300, 120, 50, 50, 0.05)]:
        depth[v0:v0 + hh, u0:u0 + ww] -= height
    depth += rng.normal(0, 0.001, (H, W)).astype(np.float32)
    depth[rng.uniform(size=(H, W)) < 0.02] = 0.0
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    T[:3, 3] = [0.5, 0.0, 0.9]
    box = WorkspaceBox.from_bounds([0.2, -0.3, 0.0], [0.8, 0.3, 0.3])
    return RGBD(rgb, depth, intr), T, box


def _subprocess_s(code: str, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


CLOUD_FIRST_CALL = """
import time; t0 = time.perf_counter()
import numpy as np, edgebridge
from edgebridge.contracts import Intrinsics, RGBD
from edgebridge.kernels import depth_to_cloud, WorkspaceBox
intr = Intrinsics(64, 48, 60.0, 60.0, 32.0, 24.0)
f = RGBD(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 0.5, np.float32), intr)
c = depth_to_cloud(f, np.eye(4), WorkspaceBox([0, 0, 0.5], [1, 1, 1]), 64)
print(time.perf_counter() - t0)
"""

SPLINE_FIRST_CALL = """
import time; t0 = time.perf_counter()
import numpy as np, edgebridge
from edgebridge.contracts import Waypoints
from edgebridge.kernels import GuidanceSpline
s = GuidanceSpline.fit(Waypoints([[0.3, 0, 0.2], [0.5, 0.1, 0.1]], [[0, 0, 0, 1]] * 2, [1, 0]))
rows = s.evaluate_many(0.05 * np.arange(100))
print(time.perf_counter() - t0)
"""


def _gpu_name() -> str:
    from numba import cuda

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def _load() -> str:
    """1-minute load average (the machine is shared: medians move with it)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _conservative(base: dict, fast: dict) -> float:
    """Smaller of (ratio of medians, ratio of minima): load hits the two sides unevenly."""
    return min(ratio(base["median_ms"], fast["median_ms"]), ratio(base["min_ms"], fast["min_ms"]))


def spline_piece(duration: float, seed: int = 1) -> GuidanceSpline:
    """An 8-waypoint pose + gripper piece lasting ``duration`` s (segment durations drawn, then scaled)."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    m = 8
    wp = Waypoints(rng.uniform(-0.4, 0.4, (m, 3)), Rotation.random(m, random_state=seed).as_quat(),
                   rng.uniform(0, 1, m))
    d = rng.uniform(0.5, 2.0, m - 1)
    return GuidanceSpline.fit(wp, durations=duration * d / d.sum())


def scipy_rows(sp: GuidanceSpline):
    """scipy objects giving the same (T, 8) rows as ``sp.evaluate_many``'s columns: position (the same
    clamped cubic), orientation (``Slerp`` between the knots' quaternions: scipy's slerp is plain, ours
    smoothstep-timed, the same work per row), gripper (linear)."""
    from scipy.interpolate import make_interp_spline
    from scipy.spatial.transform import Rotation, Slerp

    t = sp.knots
    z = np.zeros(3)
    pos = make_interp_spline(t, sp.position(t), k=3, bc_type=([(1, z)], [(1, z)]))
    rot = Slerp(t, Rotation.from_quat(sp.orientation(t)))
    g = sp.gripper(t)

    def rows(ts):
        tc = np.clip(ts, t[0], t[-1])
        out = np.empty((ts.size, 8))
        out[:, :3] = pos(tc)
        out[:, 3:7] = rot(tc).as_quat()
        out[:, 7] = np.interp(tc, t, g)
        return out
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per case (rounds for the spline)")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    perception = load_robot_config(SETUP).perception

    # ---- start-up: fresh processes, warm cache (and the cloud path with an empty cache)
    with tempfile.TemporaryDirectory() as cache:
        cold = _subprocess_s(CLOUD_FIRST_CALL, {**env, "NUMBA_CACHE_DIR": cache})
    _subprocess_s(CLOUD_FIRST_CALL, env)  # make sure the default cache is warm
    _subprocess_s(SPLINE_FIRST_CALL, env)
    warm = float(np.median([_subprocess_s(CLOUD_FIRST_CALL, env) for _ in range(3)]))
    warm_spline = float(np.median([_subprocess_s(SPLINE_FIRST_CALL, env) for _ in range(3)]))

    load0 = _load()
    rows, res = [], {}

    def case(name, key, fast, base, base_name, repeats, base_repeats):
        tf = time_call(fast, repeats=repeats, warmup=2)
        tb = time_call(base, repeats=base_repeats, warmup=1)
        r = _conservative(tb, tf)
        rows.append([name, fmt_ms(tf["median_ms"]), base_name, fmt_ms(tb["median_ms"]), fmt_ratio(r)])
        res[f"{key}_ms"] = tf["median_ms"]
        return r

    # ---- cloud stage, as Pipeline.cloud calls it
    rgbd, T, box = tabletop_scene()
    n, voxel = perception.n_points, perception.voxel_m
    vs = auto_voxel_size(box, n) if voxel == "auto" else float(voxel)
    voxel_txt = f"voxel {voxel!r} = {vs * 1000:.1f} mm" if voxel == "auto" else f"voxel {vs * 1000:.1f} mm"

    def cloud(be):
        return depth_to_cloud(rgbd, T, box, n, voxel_size=voxel, backend=be)

    c = cloud("auto")
    res["cloud_vs_numpy"] = case(f"depth_to_cloud 640x480 -> {n} pts ({voxel_txt}, FPS; auto = Numba cpu) "
                                 f"[{c.n_valid} valid]", "cloud", lambda: cloud("auto"), lambda: cloud("numpy"),
                                 "numpy twin", 3 * args.repeats, 5)

    from edgebridge.kernels import _backend, _cpu, _ref

    a = (rgbd.depth, rgbd.intrinsics.as_array(), T, box.as_array(), 0.05, 3.0, 1, rgbd.rgb)
    vox, _ = _cpu.cloud_voxel(*a, vs)
    res["cloud_voxels"] = int(vox.shape[0])
    res["cloud_voxel_vs_numpy"] = case(f"  stage: fused deproject+transform+crop+voxel (_cpu.cloud_voxel) "
                                       f"[{vox.shape[0]} voxels]", "cloud_voxel", lambda: _cpu.cloud_voxel(*a, vs),
                                       lambda: _ref.cloud_voxel(*a, vs), "numpy twin", 3 * args.repeats, 5)
    res["fps_vs_numpy"] = case(f"  stage: FPS {n} of {vox.shape[0]} (_cpu.fps)", "fps", lambda: _cpu.fps(vox, n, 0),
                               lambda: _ref.fps(vox, n, 0), "numpy twin", 3 * args.repeats, 5)
    if "cuda" in available_backends() and not _backend.cuda_simulated():  # a real GPU: the numba.cuda twin
        c = cloud("cuda")
        res["cloud_cuda_vs_cpu"] = case(f"depth_to_cloud, backend cuda ({_gpu_name()}; host arrays in and out) "
                                        f"[{c.n_valid} valid]", "cloud_cuda", lambda: cloud("cuda"),
                                        lambda: cloud("cpu"), "Numba cpu", 3 * args.repeats, 3 * args.repeats)

    # ---- guidance sampling: evaluate_many vs the numpy trio vs scipy, interleaved rounds
    dt = perception.guidance_dt
    for dur in (DWELL_S, *PLAN_SECONDS):
        sp = spline_piece(dur)
        ts = dt * np.arange(int(round(dur / dt)))
        k = ts.size
        sci = scipy_rows(sp)
        sides = {"jit": lambda: sp.evaluate_many(ts),
                 "numpy": lambda: (sp.position(ts), sp.orientation(ts), sp.gripper(ts)),
                 "scipy": lambda: sci(ts)}
        got = sp.evaluate_many(ts)
        assert np.abs(got[:, :7] - np.hstack([sp.position(ts), sp.orientation(ts)])).max() <= 1e-12
        for fn in sides.values():  # warm-up
            fn()
        t = {s: [] for s in sides}
        for _ in range(args.repeats):
            for s, fn in sides.items():
                t[s].append(time_call(fn, repeats=20, warmup=1)["median_ms"])
        st = {s: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v))} for s, v in t.items()}
        key = f"spline_sample_{k}"
        res[f"{key}_ms"] = st["jit"]["median_ms"]
        res[f"{key}_vs_numpy"] = _conservative(st["numpy"], st["jit"])
        res[f"{key}_vs_scipy"] = _conservative(st["scipy"], st["jit"])
        name = f"spline piece, {k} rows ({dur:g} s at {dt:g} s): evaluate_many"
        rows.append([name, fmt_ms(st["jit"]["median_ms"]), "numpy position+orientation+gripper",
                     fmt_ms(st["numpy"]["median_ms"]), fmt_ratio(res[f"{key}_vs_numpy"])])
        rows.append([name, fmt_ms(st["jit"]["median_ms"]), "scipy BSpline+Slerp+interp",
                     fmt_ms(st["scipy"]["median_ms"]), fmt_ratio(res[f"{key}_vs_scipy"])])

    res["cloud_first_call_s"], res["spline_first_call_s"], res["jit_compile_s"] = warm, warm_spline, cold - warm
    print_table("edgebridge.kernels, the paths edge-run executes (median ms)",
                ["case", "time", "baseline", "baseline time", "ratio"], rows,
                caption=f"{machine_line()}; load average at start {load0}, at end {_load()}")
    print_table("start-up (fresh process)", ["what", "seconds"],
                [["import edgebridge + first depth_to_cloud, warm cache", f"{warm:.3f}"],
                 ["import edgebridge + first evaluate_many, warm cache", f"{warm_spline:.3f}"],
                 ["import edgebridge + first depth_to_cloud, empty cache (includes JIT compile)", f"{cold:.3f}"],
                 ["=> JIT compile time of the cloud path (difference)", f"{cold - warm:.3f}"]])
    targets = [("cloud stage median < 5 ms", res["cloud_ms"] < 5.0),
               ("cloud stage >= 10x numpy twin", res["cloud_vs_numpy"] >= 10),
               ("guidance sampling (100-600 rows) faster than the numpy trio",
                all(res[f"spline_sample_{int(round(d / dt))}_vs_numpy"] > 1 for d in PLAN_SECONDS)),
               ("guidance sampling (100-600 rows) no slower than scipy",
                all(res[f"spline_sample_{int(round(d / dt))}_vs_scipy"] >= 1 for d in PLAN_SECONDS)),
               ("import + first call < 1 s", max(warm, warm_spline) < 1.0)]
    print_table("targets", ["target", "holds"], [[name, "yes" if ok else "NO"] for name, ok in targets])
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
