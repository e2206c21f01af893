"""Resident memory of ``edge-run`` without the VLM: the share of each import, and a run on a replay camera.

Every number comes from a fresh subprocess (this process loads the simulator to record frames and never
measures itself):

1. **Import shares.** ``python`` alone, then, cumulatively, each heavy import in the order a run reaches it:
   numpy, the CLI, the pipeline and device factory, numba, scipy.linalg (numba's BLAS check imports it on
   the first kernel), the cloud and spline kernels (loaded from Numba's on-disk cache, filled first),
   onnxruntime with the shipped expert session and one inference, pinocchio with the Panda kinematics from
   the shipped URDF (one FK + IK), rich. VmRSS after each step (``/proc/self/status``); MB per step, the
   part of it in shared-library pages (RssFile), and its share of the last step's total; median over
   ``--repeats`` interpreters.
2. **The runtime.** ``Pipeline.run`` in real time (``MonotonicClock``, the loop in a thread, as on a robot)
   with a replay camera playing frames recorded here from one simulator render, a null 7-joint arm (it
   follows every command exactly) on the shipped Panda kinematics, the shipped ONNX expert, and a planner
   that returns the oracle's plan recorded with the frames (not the VLM); the ``sim_panda`` setup's loop,
   limits and perception; episodes back to back for ``--seconds``. Peak = the larger of VmHWM at the end (the
   high-water mark of this process image) and VmRSS sampled every 0.1 s (``ru_maxrss`` is not used: Linux carries it
   across exec from the parent); steady = the median
   sample over the second half of the run. Once more with an empty Numba cache: a device's first run, kernels compiling.
3. **The baseline.** The default demo minus the VLM, simulator inside: ``edge-run --planner oracle``
   (``edgebridge.runtime.cli.main``), measured the same way.

    python benchmarks/memory.py --json benchmarks/results/memory.json
    python benchmarks/memory.py --skip-sim --skip-cold --seconds 10 --repeats 1     # quick
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("COLUMNS", "150")  # the tables are wide; rich reads COLUMNS when not on a terminal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, machine_line, print_table, write_json  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.pipeline:Pipeline.run"]
TARGET_MB = 400.0
HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- RSS, read in the child


_RSS = """
def _status_mb(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(key + ' not in /proc/self/status (Linux only)')
"""


def status_mb(key: str = "VmRSS") -> float:
    """``key`` (VmRSS, VmHWM, ...) of this process from ``/proc/self/status``, in MiB."""
    ns: dict = {}
    exec(_RSS, ns)
    return ns["_status_mb"](key)


# --------------------------------------------------------------------------- 1. import shares


@dataclass(frozen=True)
class Step:
    """One cumulative import step: ``code`` runs at module level of the child after the steps before it."""

    name: str
    what: str
    code: str


_KERNELS = """
import numpy as _np
from edgebridge.contracts import RGBD as _RGBD, Intrinsics as _Intr, Waypoints as _Wp
from edgebridge.kernels import GuidanceSpline as _Spline, WorkspaceBox as _Box, depth_to_cloud as _cloud
_T = _np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])
_f = _RGBD(_np.zeros((48, 64, 3), _np.uint8), _np.full((48, 64), 0.9, _np.float32), _Intr(64, 48, 50.0, 50.0, 32.0, 24.0))
_cloud(_f, _T, _Box.from_bounds((-0.4, -0.4, 0.0), (0.4, 0.4, 0.5)), 64)
_q = _np.tile([0.0, 0.0, 0.0, 1.0], (3, 1))
_Spline.fit(_Wp(_np.array([[0.3, 0, 0.3], [0.4, 0.1, 0.2], [0.5, 0, 0.1]]), _q, _np.ones(3))).evaluate_many(_np.linspace(0, 1, 5))
"""

_EXPERT = """
import numpy as _np
from edgebridge.runtime.expert.onnx import load_shipped as _load
_e = _load()
_e.session.run(None, {k: _np.zeros(s, _np.float32) for k, s in _e.input_shapes(1).items()})
"""

_KINEMATICS = """
from edgebridge.drivers.kinematics import PANDA_HOME as _home, Kinematics as _Kin
_k = _Kin()
_k.ik(_k.fk(_home), _home)
"""

# The order a run reaches them: edge-run's CLI, the pipeline (``_run``), the first kernel call (numba's target
# context checks for BLAS, which imports scipy.linalg), the device factory's expert and kinematics. rich is
# imported only by ``--profile``'s table and ``edge-run doctor``, so it comes last.
RUNTIME_STEPS = (
    Step("python", "the interpreter and site", ""),
    Step("numpy", "import numpy", "import numpy"),
    Step("cli", "edgebridge.runtime.cli", "import edgebridge.runtime.cli"),
    Step("pipeline", "runtime.pipeline, devices, guidance, expert base",
         "import edgebridge.runtime.pipeline, edgebridge.runtime.devices, edgebridge.runtime.guidance, "
         "edgebridge.runtime.expert.base"),
    Step("numba", "import numba (llvmlite)", "import numba"),
    Step("scipy", "scipy.linalg: numba's BLAS check on its first kernel",
         "import scipy.linalg.cython_blas, scipy.linalg.cython_lapack"),
    Step("kernels", "cloud + spline kernels compiled / cache loaded", _KERNELS),
    Step("onnxruntime", "import onnxruntime", "import onnxruntime"),
    Step("expert", "shipped expert session + one inference", _EXPERT),
    Step("pinocchio", "import pinocchio (eigenpy, coal)", "import pinocchio"),
    Step("kinematics", "Panda URDF model + FK/IK", _KINEMATICS),
    Step("rich", "rich console + table (--profile, doctor only)", "import rich.console, rich.table"),
)


def _import_child_code(steps) -> str:
    parts = [_RSS]
    for s in steps:
        parts.append(s.code)
        parts.append(f"print('@@rss', {s.name!r}, _status_mb('VmRSS'), _status_mb('RssFile'), flush=True)")
    return "\n".join(parts)


def _child_env(**extra: str) -> dict:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def import_shares(steps=RUNTIME_STEPS, repeats: int = 3, timeout_s: float = 300.0) -> dict:
    """Run ``steps`` cumulatively in ``repeats`` fresh interpreters; per step the median VmRSS after it.

    Returns ``{"steps": [{name, what, rss_mb, step_mb, file_mb, share}], "total_mb", "repeats"}``: ``step_mb``
    is the rise of VmRSS over the step before (the first step's is its whole RSS), ``file_mb`` the part of
    that rise in file-backed pages (shared libraries: RssFile), ``share`` the step's fraction of ``total_mb``
    (the RSS after the last step), so the steps' MB add up to the total and the shares to 1."""
    if not steps:
        raise ValueError("import_shares: need at least one step")
    names = [s.name for s in steps]
    if len(set(names)) != len(names) or any(not n.isidentifier() for n in names):
        raise ValueError(f"import_shares: step names must be distinct identifiers, got {names}")
    code = _import_child_code(steps)
    runs: list[dict] = []
    for _ in range(max(1, repeats)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                             env=_child_env())
        if out.returncode != 0:
            raise RuntimeError(f"import-share child failed (rc {out.returncode}): {out.stderr.strip()[-2000:]}")
        got = {}
        for line in out.stdout.splitlines():
            if line.startswith("@@rss "):
                _, name, rss, file_ = line.split()
                got[name] = (float(rss), float(file_))
        missing = [n for n in names if n not in got]
        if missing:
            raise RuntimeError(f"import-share child reported no RSS for steps {missing}")
        runs.append(got)
    rss = [float(np.median([r[n][0] for r in runs])) for n in names]
    files = [float(np.median([r[n][1] for r in runs])) for n in names]
    total = rss[-1]
    rows, prev, prev_file = [], 0.0, 0.0
    for s, r, f in zip(steps, rss, files):
        rows.append({"name": s.name, "what": s.what, "rss_mb": r, "step_mb": r - prev, "file_mb": f - prev_file,
                     "share": (r - prev) / total if total > 0 else float("nan")})
        prev, prev_file = r, f
    return {"steps": rows, "total_mb": total, "repeats": len(runs)}


def share_keys(shares: dict) -> dict:
    """The flat JSON keys of ``import_shares``'s result: ``mem_import_<step>_mb`` per step, the total."""
    flat = {f"mem_import_{s['name']}_mb": round(s["step_mb"], 2) for s in shares["steps"]}
    flat["mem_import_total_mb"] = round(shares["total_mb"], 2)
    return flat


# --------------------------------------------------------------------------- the recorded scene


def record_scene(directory: Path, task: str = "put_cup_in_tray", seed: int = 0, n_frames: int = 4) -> dict:
    """Frames from one simulator render and the oracle's plan for them, in the replay layout, plus
    ``scene.json`` (T_base_cam, the arm's start joints, the plan). Runs in this process (never measured)."""
    from edgebridge.drivers.replay import RGBDRecorder
    from edgebridge.sim.episode import build_world
    from edgebridge.sim.oracle import OracleConfig, OraclePlanner

    spec, world, camera, arm = build_world(task, seed)
    try:
        camera.connect()
        arm.connect()
        frame = camera.read()
        plan = OraclePlanner(world, camera, OracleConfig(seed=seed)).plan(frame, spec.instruction)
        with RGBDRecorder(directory / "frames", overwrite=True) as rec:
            rec.write(frame)
            for _ in range(n_frames - 1):
                rec.write(camera.read())
        scene = {"task": spec.slug, "seed": seed, "instruction": spec.instruction,
                 "T_base_cam": np.asarray(camera.T_base_cam).tolist(), "q0": arm.state().joints.tolist(),
                 "plan": {"anchors": [[a.u, a.v, a.gripper, a.depth] for a in plan.anchors],
                          "orientation": np.asarray(plan.orientation).tolist(), "subtasks": list(plan.subtasks)}}
    finally:
        world.close()
    (directory / "scene.json").write_text(json.dumps(scene))
    return scene


# --------------------------------------------------------------------------- 2. the runtime (child side)


class _RssSampler:
    """VmRSS every ``period_s`` in a daemon thread, stamped with ``time.monotonic``."""

    def __init__(self, period_s: float = 0.1) -> None:
        import threading

        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            self.samples.append((time.monotonic(), status_mb("VmRSS")))
            self._stop.wait(self.period_s)

    def start(self) -> "_RssSampler":
        self._t.start()
        return self

    def stop(self, t_from: float) -> dict:
        """Stop; the summary of the samples taken at or after ``t_from`` (monotonic s)."""
        import resource

        self._stop.set()
        self._t.join(2.0)
        late = [mb for t, mb in self.samples if t >= t_from] or [mb for _, mb in self.samples[-1:]]
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        # the kernel raises its high-water mark lazily (pages handed back by madvise do not update it), so a
        # sample may lie above VmHWM: the peak is the larger of the two. ru_maxrss is reported but not used:
        # Linux carries it across exec from the forked parent, so a child of a large process (a test runner)
        # would report the parent's size.
        peak = max([status_mb("VmHWM")] + [mb for _, mb in self.samples])
        return {"peak_mb": peak, "ru_maxrss_mb": maxrss, "steady_mb": float(np.median(late)),
                "end_mb": status_mb("VmRSS"), "end_anon_mb": status_mb("RssAnon"), "end_file_mb": status_mb("RssFile"),
                "samples": len(self.samples)}


def runtime_child(scene_dir: str, seconds: float) -> dict:
    """Build the runtime's Pipeline on the replay scene (see the module docstring) and run episodes back to
    back for ``seconds``; returns RSS figures and what ran. Runs in a fresh interpreter."""
    import time

    sampler = _RssSampler().start()
    t_start = time.monotonic()

    from edgebridge.clock import MonotonicClock
    from edgebridge.contracts import Anchor, ArmState, Plan
    from edgebridge.drivers.kinematics import Kinematics, KinematicsConfig
    from edgebridge.drivers.replay import ReplayCamera, ReplayConfig
    from edgebridge.interfaces import DeviceBase
    from edgebridge.kernels import WorkspaceBox
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.runtime.devices import make_expert
    from edgebridge.runtime.pipeline import Devices, Pipeline

    scene = json.loads((Path(scene_dir) / "scene.json").read_text())
    cfg = load_robot_config("sim_panda")  # the demo's loop, limits, perception and expert settings

    class NullArm(DeviceBase):
        """Seven joints that follow every command exactly, instantly; the pose from the Panda kinematics."""

        name = "null arm (7 joints)"

        def __init__(self, kin, q0, clock) -> None:
            super().__init__()
            self.kin, self.clock = kin, clock
            self.q, self.gripper = np.asarray(q0, dtype=np.float64), 1.0

        def state(self) -> ArmState:
            return ArmState(self.q.copy(), self.kin.fk(self.q), self.gripper, stamp_ns=self.clock.now_ns())

        def command(self, cmd):
            self.q, self.gripper = np.asarray(cmd.joints, dtype=np.float64).copy(), float(cmd.gripper)
            return cmd

        def hold(self) -> None:
            pass

        def estop(self) -> None:
            pass

    class RecordedPlanner:
        """Returns the oracle's plan recorded with the frames, for any frame (not a model)."""

        def __init__(self, plan: dict) -> None:
            self.anchors = tuple(Anchor(int(u), int(v), float(g), d) for u, v, g, d in plan["anchors"])
            self.orientation = np.asarray(plan["orientation"])
            self.subtasks = tuple(plan["subtasks"])

        def plan(self, rgbd, instruction: str) -> Plan:
            return Plan(instruction, self.anchors, self.orientation, self.subtasks, source="recorded oracle plan",
                        stamp_ns=rgbd.stamp_ns)

        def close(self) -> None:
            pass

    clock = MonotonicClock(spin_ns=int(cfg.loop.spin_us * 1e3))
    kin = Kinematics(KinematicsConfig())
    notes: list[str] = []
    expert = make_expert(cfg, "onnx", notes)
    camera = ReplayCamera(ReplayConfig(str(Path(scene_dir) / "frames"), loop=True))
    camera.connect()
    arm = NullArm(kin, scene["q0"], clock)
    arm.connect()
    p = cfg.perception
    devices = Devices(arm=arm, camera=camera, kinematics=kin, planner=RecordedPlanner(scene["plan"]), expert=expert,
                      clock=clock, T_base_cam=np.asarray(scene["T_base_cam"]),
                      workspace=WorkspaceBox.from_bounds(p.crop_min, p.crop_max), notes=notes,
                      closers=[arm.disconnect, camera.disconnect, expert.close])
    t_run = time.monotonic()
    reasons: list[str] = []
    try:
        while True:
            left = seconds - (time.monotonic() - t_run)
            if left < 1.0:
                break
            out = Pipeline(cfg, devices).run(scene["instruction"], task=scene["task"], seed=scene["seed"],
                                             max_seconds=left)
            reasons.append(out.reason)
    finally:
        devices.close()
    t_end = time.monotonic()
    res = sampler.stop(t_run + (t_end - t_run) / 2)
    res.update({"episodes": len(reasons), "reasons": reasons, "run_s": t_end - t_run, "setup_s": t_run - t_start,
                "notes": notes})
    return res


def sim_demo_child(max_seconds: float | None) -> dict:
    """``edge-run --planner oracle`` in this (fresh) interpreter: the default demo minus the VLM."""
    import contextlib
    import io
    import time

    sampler = _RssSampler().start()
    t0 = time.monotonic()
    from edgebridge.runtime.cli import main

    argv = ["--planner", "oracle"] + ([] if max_seconds is None else ["--max-seconds", str(max_seconds)])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    t1 = time.monotonic()
    res = sampler.stop(t0 + (t1 - t0) / 2)
    res.update({"rc": rc, "run_s": t1 - t0, "result": [ln for ln in buf.getvalue().splitlines() if "result" in ln]})
    return res


def _run_child(call: str, timeout_s: float, **env: str) -> dict:
    """``memory.<call>`` in a fresh interpreter; its result (the JSON on the ``@@result`` line)."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import json, memory; " \
           f"print('@@result', json.dumps(memory.{call}), flush=True)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                         env=_child_env(**env))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("@@result ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {call} failed (rc {out.returncode}): {out.stderr.strip()[-3000:]}")
    return json.loads(lines[-1][len("@@result "):])


# --------------------------------------------------------------------------- main


def _run_row(label: str, r: dict, base: dict | None) -> list:
    """A table row; ``base`` is the simulator demo's result (None: no baseline row ran), ``r is base`` for it."""
    vs = "baseline" if r is base else f"{r['peak_mb'] / base['peak_mb']:.2f}x" if base else "n/a"
    return [label, f"{r['peak_mb']:.1f}", f"{r['steady_mb']:.1f}", f"{r['end_anon_mb']:.1f}", f"{r['end_file_mb']:.1f}",
            f"{r['run_s']:.1f}", vs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="length of each runtime run, episodes back to back (default 30)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh interpreters per import-share step (default 3)")
    ap.add_argument("--sim-max-seconds", type=float, default=None,
                    help="edge-run --max-seconds for the simulator baseline (default: the task's own limit)")
    ap.add_argument("--skip-sim", action="store_true", help="no simulator baseline row")
    ap.add_argument("--skip-cold", action="store_true",
                    help="no first-run row (the runtime with an empty Numba cache: the kernels compile)")
    ap.add_argument("--scene", metavar="DIR", default=None,
                    help="replay scene directory (frames/ + scene.json); default: record one now in a temp dir")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    flat: dict = {"mem_target_mb": TARGET_MB, "mem_runtime_seconds": args.seconds}

    # Numba's on-disk cache filled first (untimed), so the shares show what every run after the first loads
    subprocess.run([sys.executable, "-c", _KERNELS], check=True, capture_output=True, env=_child_env(), timeout=600)
    shares = import_shares(repeats=args.repeats)
    rows = [[s["name"], s["what"], f"{s['rss_mb']:.1f}", f"{s['step_mb']:.1f}", f"{s['file_mb']:.1f}",
             f"{100 * s['share']:.1f}%"] for s in shares["steps"]]
    flat.update(share_keys(shares))
    print_table("edge-run import shares (cumulative VmRSS in a fresh interpreter)",
                ["step", "what", "RSS MB", "step MB", "of it file-backed", "share"], rows,
                caption=f"{machine_line()}; median of {shares['repeats']} fresh interpreters; share = step MB / RSS "
                        f"after the last step ({shares['total_mb']:.1f} MB); file-backed = shared-library pages "
                        f"(RssFile); Numba cache warm")

    with tempfile.TemporaryDirectory(prefix="edgebridge-memory-") as tmp:
        scene_dir = Path(args.scene) if args.scene else Path(tmp) / "scene"
        if not (scene_dir / "scene.json").is_file():
            record_scene(scene_dir)
        run = f"runtime_child({str(scene_dir)!r}, {args.seconds!r})"
        rt = _run_child(run, timeout_s=args.seconds + 300)
        cold = None if args.skip_cold else _run_child(run, timeout_s=args.seconds + 600,
                                                      NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"))
    sim = None if args.skip_sim else _run_child(f"sim_demo_child({args.sim_max_seconds!r})", timeout_s=900)

    flat.update({"mem_runtime_peak_mb": round(rt["peak_mb"], 1), "mem_runtime_steady_mb": round(rt["steady_mb"], 1),
                 "mem_runtime_ru_maxrss_mb": round(rt["ru_maxrss_mb"], 1), "mem_runtime_anon_mb": round(rt["end_anon_mb"], 1),
                 "mem_runtime_file_mb": round(rt["end_file_mb"], 1), "mem_runtime_episodes": rt["episodes"]})
    peaks = [rt["peak_mb"]]
    table = []
    if sim is not None:
        flat.update({"mem_sim_demo_peak_mb": round(sim["peak_mb"], 1), "mem_sim_demo_steady_mb": round(sim["steady_mb"], 1),
                     "mem_sim_demo_ru_maxrss_mb": round(sim["ru_maxrss_mb"], 1), "mem_sim_demo_rc": sim["rc"],
                     "mem_runtime_vs_sim_demo_peak": round(rt["peak_mb"] / sim["peak_mb"], 3)})
        table.append(_run_row("edge-run --planner oracle (simulator inside)", sim, sim))
        print(f"sim demo: rc {sim['rc']}; {' '.join(sim['result'])}", flush=True)
    table.append(_run_row("runtime: replay camera, null arm, ONNX expert, recorded plan", rt, sim))
    print(f"runtime: {rt['episodes']} episodes ({'; '.join(sorted(set(rt['reasons'])))}), set-up {rt['setup_s']:.1f} s",
          flush=True)
    if cold is not None:
        peaks.append(cold["peak_mb"])
        flat.update({"mem_runtime_first_run_peak_mb": round(cold["peak_mb"], 1),
                     "mem_runtime_first_run_steady_mb": round(cold["steady_mb"], 1)})
        table.append(_run_row("  same, first run (empty Numba cache: kernels compile)", cold, sim))
    flat["mem_runtime_under_target"] = bool(max(peaks) < TARGET_MB)
    print_table("edge-run resident memory without the VLM (MB)",
                ["run", "peak", "steady", "anon", "file", "s", "peak vs sim demo"], table,
                caption=f"{machine_line()}; fresh process per row; peak = max(VmHWM, samples), steady = median "
                        f"VmRSS over the second half of the run, anon / file = RssAnon / RssFile at the end; "
                        f"target: peak < {TARGET_MB:.0f} MB")
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
