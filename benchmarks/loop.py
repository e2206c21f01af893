"""Control-loop timing: period error and deadline misses at 100 / 500 / 1000 Hz, idle and loaded.

Loaded = an action expert inferring at 10 Hz in a worker thread (the shipped ONNX model if present,
else a random ONNX graph of similar cost built here with ``onnx.helper``) and the planner busy (a
llama.cpp generation loop on the tiny GGUF from ``edgebridge.export.tiny_gguf`` if llama-cpp-python
imports, else a CPU-bound Python thread). The table says which.

Each case runs the loop in-process (a thread sharing the GIL with the workers: the baseline) and in its
own process (``LoopProcess``: chunks in / state out through shared memory). A "floor" row per rate runs a
bare sleep/wake loop (no runtime work) at the same priority: the misses the machine itself causes. The arm is a null arm (it
follows commands exactly) on point kinematics, so the numbers are the runtime's own overhead.

    python benchmarks/loop.py --seconds 60 --json benchmarks/results/loop.json
"""

from __future__ import annotations

import argparse
import os
import os as _os

_os.environ.setdefault("COLUMNS", "150")  # the table is wide; rich reads COLUMNS when not on a terminal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, fmt_ratio, machine_line, print_table, ratio, write_json  # noqa: E402

from edgebridge.contracts import ActionChunk, ArmState, Pose  # noqa: E402
from edgebridge.interfaces import DeviceBase  # noqa: E402
from edgebridge.runtime.config import LoopConfig, SafetyLimits  # noqa: E402
from edgebridge.runtime.loop import ControlLoop  # noqa: E402
from edgebridge.runtime.loop_process import LoopProcess  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.loop:ControlLoop.run"]
LIMITS = SafetyLimits(joint_lower=(-1.0, -1.0, 0.0), joint_upper=(1.0, 1.0, 1.0), joint_velocity=(1.0,) * 3,
                      joint_acceleration=(10.0,) * 3, workspace_min=(-1, -1, 0), workspace_max=(1, 1, 1))


class NullArm(DeviceBase):
    """Follows every command exactly, instantly."""

    name = "null arm"

    def __init__(self) -> None:
        super().__init__()
        self.q = np.array([0.0, 0.0, 0.4])

    def state(self) -> ArmState:
        return ArmState(self.q, Pose(self.q), 1.0)

    def command(self, cmd):
        self.q = cmd.joints
        return cmd

    def hold(self) -> None:
        pass

    def estop(self) -> None:
        pass


class PointKinematics:
    def fk(self, q) -> Pose:
        return Pose(np.asarray(q, dtype=np.float64))

    def ik(self, target: Pose, q_seed) -> np.ndarray:
        return target.position.copy()


# --------------------------------------------------------------------------- load generators


def build_expert_session():
    """The shipped expert ONNX if present, else a random graph of similar cost (PointNet-ish + 10 steps)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    shipped = sorted((Path(__file__).resolve().parents[1] / "src/edgebridge/assets/expert").glob("*.onnx"))
    if shipped:
        return ort.InferenceSession(str(shipped[0]), opts, providers=["CPUExecutionProvider"]), f"shipped {shipped[0].name}"
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name))

    w("w1", (3, 64)); w("w2", (64, 128))
    nodes += [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
              helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
              helper.make_node("ReduceMax", ["r2"], ["g"], axes=[0], keepdims=1)]
    prev = "g"
    for k in range(10):  # 10 unrolled denoising steps
        w(f"s{k}a", (128, 256)); w(f"s{k}b", (256, 128))
        nodes += [helper.make_node("MatMul", [prev, f"s{k}a"], [f"t{k}"]), helper.make_node("Tanh", [f"t{k}"], [f"u{k}"]),
                  helper.make_node("MatMul", [f"u{k}", f"s{k}b"], [f"y{k}"])]
        prev = f"y{k}"
    graph = helper.make_graph(nodes, "bench_expert", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 3])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 128])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), "random ONNX graph"


def expert_worker(session, put, stop: threading.Event, hz: float = 10.0) -> dict:
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in session.get_inputs()}  # every input of the graph (the shipped expert has four)
    times = []
    t_next = time.monotonic()
    base = np.array([0.0, 0.0, 0.4])
    while not stop.is_set():
        t_obs = time.monotonic_ns()
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        k = len(times)
        poses = np.zeros((16, 8), dtype=np.float32)
        poses[:, :3] = base + 0.05 * np.sin(0.3 * (k + np.arange(16)[:, None] * 0.5)) * np.array([1, 1, 0.5])
        poses[:, 6] = 1.0
        poses[:, 7] = 1.0
        put(ActionChunk(poses, t_obs, 0.05, times[-1]))
        t_next += 1.0 / hz
        stop.wait(max(0.0, t_next - time.monotonic()))
    return {"expert_ms": float(np.median(times)) if times else float("nan")}


def planner_worker(stop: threading.Event, info: dict) -> None:
    try:
        import llama_cpp  # noqa: F401
        from edgebridge.export.tiny_gguf import write_tiny_gguf

        path = Path(tempfile.mkdtemp()) / "tiny.gguf"
        write_tiny_gguf(path)
        llm = llama_cpp.Llama(model_path=str(path), n_threads=1, n_ctx=512, verbose=False, seed=0)
        info["planner"] = "llama.cpp tiny GGUF generation loop"
        info["ready"].set()
        n = 0
        while not stop.is_set():
            llm.create_completion("pick up the red cup and place it in the tray", max_tokens=48, temperature=1.0)
            n += 1
        info["generations"] = n
    except Exception as e:  # fall back to pure-Python CPU load, and say so
        info["planner"] = f"CPU-bound Python thread (llama.cpp unavailable: {type(e).__name__})"
        info["ready"].set()
        x = 0
        while not stop.is_set():
            for i in range(10000):
                x += i * i


# --------------------------------------------------------------------------- the environment's floor


def steal_ms() -> float:
    """CPU time the hypervisor gave to other guests (``steal`` in /proc/stat, all CPUs), in ms; NaN off Linux.
    A vCPU that is not running cannot wake a loop, however high its priority."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _bare_child(rate: float, seconds: float, rt: int, cpu: int, conn) -> None:
    """Absolute-deadline sleep/spin with nothing else in the cycle: what the OS (and hypervisor) allow."""
    from edgebridge.clock import MonotonicClock
    from edgebridge.runtime.loop import PeriodStats, apply_realtime

    apply_realtime(rt, cpu)
    clock = MonotonicClock()
    period = int(round(1e9 / rate))
    stats = PeriodStats(period)
    t_next = clock.now_ns()
    end = t_next + int(seconds * 1e9)
    while t_next < end:
        woke = clock.now_ns()
        stats.wake(woke, t_next)
        now = clock.now_ns()
        stats.done(now - woke)
        t_next += period
        late = now - t_next
        if late > stats.miss_ns:
            k = late // period + 1
            t_next += k * period
            stats.skipped += int(k)
            stats.misses += int(k)
        clock.sleep_until(t_next)
    conn.send(stats.summary())


def run_floor(rate: float, seconds: float, rt: int, cpu: int) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_child, args=(rate, seconds, rt, cpu, child), daemon=True)
    proc.start()
    s = parent.recv() if parent.poll(seconds + 60) else {}
    proc.join(10)
    return {"p50": s.get("period_err_p50_ms", float("nan")), "p99": s.get("period_err_p99_ms", float("nan")),
            "max": s.get("period_err_max_ms", float("nan")), "misses": s.get("misses", -1),
            "cycles": s.get("cycles", 0), "compute_p99": s.get("compute_p99_ms", float("nan")),
            "planner": "-", "expert": "-", "reason": "bare sleep/wake loop"}


# --------------------------------------------------------------------------- one case


def run_case(rate: float, seconds: float, loaded: bool, isolation: str, rt: int, cpu: int) -> dict:
    # In its own process the loop can run with the cyclic GC off (it makes no reference cycles); in a
    # thread that would switch it off for the whole application, so there it is only frozen.
    cfg = LoopConfig(rate_hz=rate, chunk_timeout_s=1.0, gc="disable" if isolation == "process" else "freeze", realtime_priority=rt, cpu=cpu,
                     isolation=isolation, max_ee_speed=0.5)
    stop = threading.Event()
    info: dict = {"ready": threading.Event(), "planner": "-", "expert": "-"}
    threads = []
    lp = loop = None
    if isolation == "process":
        lp = LoopProcess(NullArm, PointKinematics, LIMITS, cfg).start()
        put = lp.put
    else:
        loop = ControlLoop(NullArm().__enter__(), LIMITS, cfg, PointKinematics())
        put = loop.inbox.put
    if loaded:
        session, info["expert"] = build_expert_session()
        threads.append(threading.Thread(target=planner_worker, args=(stop, info), daemon=True))
        threads[-1].start()
        info["ready"].wait(30)
        res_box: dict = {}

        def run_expert():
            try:
                res_box.update(expert_worker(session, put, stop))
            except Exception as e:  # reported below: a case without its load must not print numbers
                res_box["error"] = f"{type(e).__name__}: {e}"

        threads.append(threading.Thread(target=run_expert, daemon=True))
        threads[-1].start()
    if lp is not None:
        time.sleep(seconds)
        lp.request_stop("benchmark done")
        result = lp.join(30)
    else:
        result = loop.run(duration_s=seconds)
    stop.set()  # the load threads stop before the loop's shared memory goes: the expert thread still puts
    for t in threads:
        t.join(30)
    if lp is not None:
        lp.close()
    if loaded:
        if "error" in res_box:
            raise RuntimeError(f"the expert load failed, so this case was not loaded: {res_box['error']}")
        info["expert_ms"] = res_box.get("expert_ms", float("nan"))
    s = result.stats
    return {"p50": s.get("period_err_p50_ms", float("nan")), "p99": s.get("period_err_p99_ms", float("nan")),
            "max": s.get("period_err_max_ms", float("nan")), "misses": s.get("misses", -1),
            "cycles": s.get("cycles", 0), "compute_p99": s.get("compute_p99_ms", float("nan")),
            "planner": info["planner"], "expert": info["expert"], "expert_ms": info.get("expert_ms", float("nan")),
            "reason": result.reason}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per case (default 60)")
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 1000.0])
    ap.add_argument("--rt", type=int, default=0, help="SCHED_FIFO priority for the loop (0 = off)")
    ap.add_argument("--cpu", type=int, default=-1, help="pin the loop to this CPU (-1 = no pinning)")
    ap.add_argument("--isolation", choices=["both", "thread", "process"], default="both")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare sleep/wake loop (the environment's floor)")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    isolations = ["thread", "process"] if args.isolation == "both" else [args.isolation]
    rows, flat, loads_used, expert_ms = [], {}, set(), []
    results = {}
    for rate in args.rates:
        if not args.no_floor:
            st0 = steal_ms()
            r = run_floor(rate, args.seconds, args.rt, args.cpu)
            r["steal_ms"] = steal_ms() - st0
            results[(rate, "floor", "bare")] = r
            rows.append([f"{int(rate)} Hz", "floor", "bare loop", f"{r['p50']:.3f}", f"{r['p99']:.3f}",
                         f"{r['max']:.3f}", r["misses"], r["cycles"], f"{r['compute_p99']:.3f}",
                         f"{r['steal_ms']:.0f}", "-"])
            print(f"{int(rate)} Hz floor (bare sleep/wake loop): p99 {r['p99']:.3f} ms, max {r['max']:.3f} ms, "
                  f"misses {r['misses']}", flush=True)
        for load in ("idle", "loaded"):
            for iso in isolations:
                st0 = steal_ms()
                r = run_case(rate, args.seconds, load == "loaded", iso, args.rt, args.cpu)
                r["steal_ms"] = steal_ms() - st0
                results[(rate, load, iso)] = r
                if load == "loaded":
                    loads_used.add(f"expert: {r['expert']}; planner: {r['planner']}")
                    expert_ms.append(r["expert_ms"])
                base = results.get((rate, load, "thread"))
                vs = fmt_ratio(ratio(base["p99"], r["p99"])) if base and iso != "thread" else "baseline"
                rows.append([f"{int(rate)} Hz", load, iso, f"{r['p50']:.3f}", f"{r['p99']:.3f}", f"{r['max']:.3f}",
                             r["misses"], r["cycles"], f"{r['compute_p99']:.3f}", f"{r['steal_ms']:.0f}", vs])
                print(f"{int(rate)} Hz {load} {iso}: p99 {r['p99']:.3f} ms, max {r['max']:.3f} ms, "
                      f"misses {r['misses']} ({r['reason']})", flush=True)
    primary = "process" if "process" in isolations else isolations[0]
    for (rate, load, iso), r in results.items():
        tag = f"loop_{int(rate)}hz_{load}"
        if iso == "bare":
            flat.update({f"{tag}_p99_ms": r["p99"], f"{tag}_max_ms": r["max"], f"{tag}_misses": r["misses"],
                         f"{tag}_steal_ms": r["steal_ms"]})
            continue
        if iso == primary:
            flat.update({f"{tag}_p99_ms": r["p99"], f"{tag}_max_ms": r["max"], f"{tag}_misses": r["misses"]})
        flat.update({f"{tag}_{iso}_p99_ms": r["p99"], f"{tag}_{iso}_max_ms": r["max"], f"{tag}_{iso}_misses": r["misses"],
                     f"{tag}_{iso}_steal_ms": r["steal_ms"]})
    flat["loop_isolation"] = primary
    flat["loop_seconds_per_case"] = args.seconds
    flat["loop_rt_priority"] = args.rt
    chunk = ""
    if expert_ms and not np.all(np.isnan(expert_ms)):
        chunk = (f"; the expert at 10 Hz, median chunk {np.nanmin(expert_ms):.1f}-{np.nanmax(expert_ms):.1f} ms "
                 f"across the loaded cases")
    caption = (f"{machine_line()}; {args.seconds:g} s per case; SCHED_FIFO {args.rt or 'off'}; "
               f"loaded = {'; '.join(sorted(loads_used)) or '-'}{chunk}. Period error = |actual period - nominal|; "
               f"miss = a tick run > half a period late or skipped. 'vs thread' = thread p99 / process p99. "
               f"floor = a bare absolute-deadline sleep/wake loop in its own process at the same priority "
               f"(no runtime work): the stalls the OS/hypervisor alone cause. steal ms = CPU time the hypervisor "
               f"gave other guests during the case (/proc/stat, all vCPUs).")
    print_table("control loop period error (ms)", ["rate", "load", "loop in", "p50", "p99", "max", "misses", "cycles",
                                                   "compute p99", "steal ms", "vs thread"], rows, caption=caption)
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
