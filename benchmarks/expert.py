"""Action expert: one action chunk (batch 1) at K DDIM steps, three ways.

* ORT unrolled: one ONNX Runtime call on the graph with the K steps unrolled (what the runtime ships:
  the fused graph, see ``edgebridge.train.fused_sampler``);
* ORT K calls: the encoder graph once + K calls of a one-step denoiser graph, DDIM updates in numpy;
* torch eager: the same network in torch, ``DDIMSampler`` as trained (the baseline).

At K=10 two more cases show where the ratio comes from: ``ORT plain graph`` (``DDIMSampler`` exported as
written, as before the fused graph) and ``torch fused`` (the fused sampler run eagerly in torch).

All three use the shipped architecture (``src/edgebridge/assets/expert/expert.json``'s model config when
present, else the default) with the same weights; timing does not depend on the weight values. Both
runtimes get 2 threads. Also times ``OnnxExpert.act`` end to end (featurise + network + decode) on the
shipped weights when they are present.

    python benchmarks/expert.py [--repeats 50] [--rounds 3] [--json FILE] [--success-seeds 5]

The three cases run in ``--rounds`` interleaved rounds (unrolled, K calls, torch; again ...): times are the
median over rounds, ratios the median of the ratios within a round, so a burst of load from other
processes on a shared machine shifts a whole round instead of one case.

``--backend trt`` (where TensorRT and a GPU exist, e.g. the Jetson) times instead one chunk through the
TensorRT engine (``TensorRTExpert.run``, batch 1, device copies included) against ONNX Runtime on the same
ONNX, plus ``TensorRTExpert.act`` end to end, and records the device, the engine's build record and the
power mode (nvpmodel, jetson_clocks) beside the numbers::

    python benchmarks/expert.py --backend trt [--engine ENGINE] [--onnx ONNX] [--repeats 200] [--json FILE]

Without ``--engine`` it builds an FP16 engine of the shipped ONNX in a temporary directory first.

``--success-seeds N`` also runs the shipped ONNX expert and the plain-IK expert (the baseline) in the
embedded world on N *held-out* seeds (from 1000 up; the shipped weights were trained on demonstrations
with seeds 0..39), task ``put_cup_in_tray``, conditions ``clean`` and ``plan_3cm`` (3 cm anchor offset),
and adds ``success.<expert>.<task>.<condition>`` keys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, fmt_ms, fmt_ratio, machine_line, print_table, ratio, time_call, write_json  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.expert.onnx:OnnxExpert.act"]
ASSET = Path(__file__).resolve().parents[1] / "src" / "edgebridge" / "assets" / "expert" / "expert.onnx"
KS = (1, 2, 4, 10)


def _inputs(cfg, torch):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, cfg.n_points, 3, generator=g), torch.randn(1, cfg.pose_dim, generator=g),
            torch.randn(1, cfg.guidance_tokens, cfg.pose_dim, generator=g),
            torch.randn(1, cfg.horizon, cfg.pose_dim, generator=g))


def _worker(kind: str, k: int, tmp: Path, repeats: int) -> float:
    """Time one case in this (fresh) process, so no other runtime's thread pool competes for the cores."""
    if kind == "act":
        return _time_act(repeats)
    import torch

    from edgebridge.export.expert import ort_session
    from edgebridge.train.fused_sampler import FusedDDIMSampler
    from edgebridge.train.model import DDIMSampler, ExpertNetConfig, make_net

    torch.set_num_threads(2)
    rec = torch.load(tmp / "net.pt", weights_only=False)
    net = make_net(ExpertNetConfig.from_dict(rec["config"])).eval()
    net.load_state_dict(rec["state"])
    inputs = _inputs(net.cfg, torch)
    feeds = {n: a.numpy() for n, a in zip(("cloud", "proprio", "guidance", "noise"), inputs)}
    sampler = DDIMSampler(net, k).eval()
    if kind in ("torch", "torch_fused"):
        module = sampler if kind == "torch" else FusedDDIMSampler(net, k).eval()

        def fn():
            with torch.no_grad():
                return module(*inputs)
        return time_call(fn, repeats=repeats, warmup=5)["median_ms"]
    if kind == "torch_cuda":
        return _time_torch_cuda(sampler, inputs, repeats, torch)
    if kind in ("unrolled", "plain"):
        sess = ort_session(tmp / (f"k{k}" if kind == "unrolled" else f"k{k}plain") / "expert.onnx")
        return time_call(lambda: sess.run(["action"], feeds), repeats=repeats, warmup=5)["median_ms"]
    enc, den = ort_session(tmp / "encode.onnx"), ort_session(tmp / "denoise.onnx")
    steps = [(np.array([t], np.int64), np.float32(np.sqrt(a)), np.float32(np.sqrt(1 - a)), np.float32(np.sqrt(p)),
              np.float32(np.sqrt(1 - p))) for t, (a, p) in zip(sampler.timesteps, sampler.coeffs)]

    def kcalls():
        cond = enc.run(None, {"cloud": feeds["cloud"], "proprio": feeds["proprio"], "guidance": feeds["guidance"]})[0]
        x = feeds["noise"]
        for t, sa, s1a, sp, s1p in steps:
            x0 = den.run(None, {"sample": x, "t": t, "cond": cond})[0]
            x = sp * x0 + s1p * ((x - sa * x0) / s1a)
        return x

    if kind == "check":  # the K-call path and the plain graph must compute what the unrolled graph computes
        sess = ort_session(tmp / f"k{k}" / "expert.onnx")
        out = sess.run(["action"], feeds)[0]
        err = float(np.max(np.abs(kcalls() - out)))
        if (tmp / f"k{k}plain").exists():
            err = max(err, float(np.max(np.abs(ort_session(tmp / f"k{k}plain" / "expert.onnx").run(["action"], feeds)[0]
                                               - out))))
        return err
    return time_call(kcalls, repeats=repeats, warmup=5)["median_ms"]


def _time_torch_cuda(sampler, inputs, repeats: int, torch) -> float:
    """Median ms of one chunk in torch on the GPU, eager, batch 1, inputs already on the device, timed with a
    device synchronisation per call (what a control loop waiting for the chunk sees)."""
    sampler = sampler.cuda()
    inputs = tuple(x.cuda() for x in inputs)

    def fn():
        with torch.no_grad():
            out = sampler(*inputs)
        torch.cuda.synchronize()
        return out

    return time_call(fn, repeats=repeats, warmup=10)["median_ms"]


def _cuda_device_name() -> str | None:
    """The GPU torch sees, or None; asked in a child process so that this one never initialises CUDA."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    name = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    return name or None


def _spawn(kind: str, k: int, tmp: Path, repeats: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, str(k), str(tmp), "--repeats", str(repeats)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} K={k} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three cases; the table "
                                                           "holds the median over rounds")
    ap.add_argument("--success-seeds", type=int, default=0, help="held-out sim episodes per cell (0: skip)")
    ap.add_argument("--seed-base", type=int, default=1000, help="first held-out sim seed")
    ap.add_argument("--backend", choices=["ort", "trt"], default="ort", help="ort: ONNX Runtime vs torch (default); "
                    "trt: the TensorRT engine vs ONNX Runtime, where TensorRT exists")
    ap.add_argument("--engine", type=Path, default=None, help="--backend trt: a built engine (default: build one)")
    ap.add_argument("--onnx", type=Path, default=ASSET, help="--backend trt: the ONNX the engine was built from")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "K", "DIR"), help=argparse.SUPPRESS)
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        ap.error(f"--rounds and --repeats must be >= 1, got {args.rounds} and {args.repeats}")
    if args.worker:
        print(_worker(args.worker[0], int(args.worker[1]), Path(args.worker[2]), args.repeats))
        return 0
    if args.backend == "trt":
        return _trt_main(args)

    import torch

    from edgebridge.export.expert import export_expert, export_step_graphs
    from edgebridge.runtime.expert.features import Normalizer
    from edgebridge.train.model import ExpertNetConfig, count_parameters, make_net

    cfg = ExpertNetConfig()
    if ASSET.with_suffix(".json").exists():
        cfg = ExpertNetConfig.from_dict(json.loads(ASSET.with_suffix(".json").read_text())["model_config"])
    net = make_net(cfg).eval()
    record = {"norm": Normalizer.identity().to_dict()}
    results: dict = {"parameters": count_parameters(net)}
    rows = []
    gpu_name = _cuda_device_name()
    cuda = gpu_name is not None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.save({"config": cfg.to_dict(), "state": net.state_dict()}, tmp / "net.pt")
        export_step_graphs(net, tmp)
        for k in KS:
            results[f"onnx_mb_k{k}"] = export_expert(net, record, tmp / f"k{k}", k=k).stat().st_size / 1e6
        export_expert(net, record, tmp / "k10plain", k=10, graph="plain")
        for k in KS:
            err = _spawn("check", k, tmp, 1)
            if err > 1e-4:
                raise RuntimeError(f"K={k}: the K-call path differs from the unrolled graph by {err:.2e}")
            # interleaved rounds: a burst of load from other processes hits one round of all three cases
            # rather than one case, and the ratios are taken within a round
            kinds = ("unrolled", "kcalls", "torch") + (("plain", "torch_fused") if k == 10 else ())
            runs = np.array([[_spawn(kind, k, tmp, args.repeats) for kind in kinds] for _ in range(args.rounds)])
            t_u, t_k, t_t = (float(v) for v in np.median(runs[:, :3], axis=0))
            r_t = float(np.median(runs[:, 2] / runs[:, 0]))
            r_k = float(np.median(runs[:, 1] / runs[:, 0]))
            results.update({f"chunk_ms_ort_unrolled_k{k}": t_u, f"chunk_ms_ort_kcalls_k{k}": t_k,
                            f"chunk_ms_torch_k{k}": t_t, f"ort_unrolled_vs_torch_k{k}": r_t,
                            f"ort_unrolled_vs_kcalls_k{k}": r_k})
            rows.append([f"K={k}", fmt_ms(t_u), fmt_ms(t_k), fmt_ms(t_t), fmt_ratio(r_t), fmt_ratio(r_k)])
            if k == 10:
                t_p, t_f = (float(v) for v in np.median(runs[:, 3:], axis=0))
                results.update({"chunk_ms_ort_unrolled_plain_k10": t_p, "chunk_ms_torch_fused_k10": t_f,
                                "ort_unrolled_vs_plain_k10": float(np.median(runs[:, 3] / runs[:, 0])),
                                "ort_unrolled_vs_torch_fused_k10": float(np.median(runs[:, 4] / runs[:, 0]))})
            if cuda:  # a GPU beside the CPU: torch eager on it, for reference (no TensorRT here)
                results[f"chunk_ms_torch_cuda_k{k}"] = t_g = _spawn("torch_cuda", k, tmp, args.repeats)
                rows[-1].append(fmt_ms(t_g))
        act_ms = _spawn("act", 10, tmp, args.repeats) if ASSET.exists() else float("nan")
    results["act_ms_shipped"] = act_ms
    gpu = [f"torch eager {gpu_name}"] if cuda else []
    results["rounds"] = args.rounds
    print_table(f"action expert: one chunk, batch 1 (median ms; each case in a fresh process, 2 threads; "
                f"median of {args.rounds} interleaved rounds, ratios within a round)",
                ["K", "ORT unrolled", "ORT K calls", "torch eager", "unrolled vs torch", "unrolled vs K calls", *gpu],
                rows, caption=f"{machine_line()}; {results['parameters']:,} parameters; "
                              f"OnnxExpert.act end to end (shipped weights, K=10): {fmt_ms(act_ms)} ms")
    print_table("K=10: where the ratio comes from (same rounds)",
                ["case", "median ms", "ORT unrolled (fused graph) is faster by"],
                [["ORT unrolled, fused graph (shipped)", fmt_ms(results["chunk_ms_ort_unrolled_k10"]), "-"],
                 ["ORT unrolled, plain graph", fmt_ms(results["chunk_ms_ort_unrolled_plain_k10"]),
                  fmt_ratio(results["ort_unrolled_vs_plain_k10"])],
                 ["torch eager, DDIMSampler (baseline)", fmt_ms(results["chunk_ms_torch_k10"]),
                  fmt_ratio(results["ort_unrolled_vs_torch_k10"])],
                 ["torch eager, fused sampler", fmt_ms(results["chunk_ms_torch_fused_k10"]),
                  fmt_ratio(results["ort_unrolled_vs_torch_fused_k10"])]])
    ok = results["chunk_ms_ort_unrolled_k10"] < 10 and results["ort_unrolled_vs_torch_k10"] >= 3
    print(f"targets (K=10: ORT unrolled < 10 ms and >= 3x torch eager): {'met' if ok else 'NOT met'}")
    results["targets_met"] = ok
    if args.success_seeds > 0:
        results.update(_success(args.success_seeds, args.seed_base))
    write_json(args.json, results)
    return 0


SUCCESS_CONDITIONS = {"clean": 0.0, "plan_3cm": 0.03}


def _rate_ratio(rate: float, base: float) -> str:
    return fmt_ratio(rate / base) if base > 0 else "n/a"


def _success(n: int, base: int, task: str = "put_cup_in_tray") -> dict:
    """Success of the shipped ONNX expert vs the plain-IK expert on held-out seeds."""
    import logging

    from edgebridge.sim.episode import run_episode

    logging.getLogger("edgebridge").setLevel(logging.ERROR)
    out, rows = {}, []
    for expert in ("ik", "onnx"):
        for cond, plan_m in SUCCESS_CONDITIONS.items():
            res = [run_episode(task, base + s, expert, plan_noise_m=plan_m) for s in range(n)]
            rate = sum(r.success for r in res) / n
            out[f"success.{expert}.{task}.{cond}"] = rate
            fails = [r.reason for r in res if not r.success]
            rows.append([expert, cond, f"{rate:.2f}", f"{sum(r.success for r in res)}/{n}",
                         _rate_ratio(rate, out[f"success.ik.{task}.{cond}"]),
                         (max(set(fails), key=fails.count)[:40] if fails else "")])
    print_table(f"sim success, {task}, oracle planner, held-out seeds {base}..{base + n - 1}",
                ["expert", "condition", "success", "n", "vs ik (rate ratio)", "typical failure"], rows)
    return out


def _trt_main(args) -> int:
    """TensorRT engine vs ONNX Runtime on the same ONNX, batch 1, in this process."""
    import importlib

    try:
        importlib.import_module("tensorrt")
    except Exception as e:  # the registry stub raises more than ImportError
        print(f"benchmarks/expert.py --backend trt: TensorRT is not usable here ({type(e).__name__}: {e}); run it on "
              "the Jetson (JetPack's python3-libnvinfer) or an NVIDIA GPU host with TensorRT", file=sys.stderr)
        return 2
    from edgebridge.runtime.expert import ExpertBackendConfig, OnnxExpert
    from edgebridge.runtime.expert.tensorrt import TensorRTExpert, current_device, describe_device
    from edgebridge.runtime.power import describe_power, read_power_mode

    with tempfile.TemporaryDirectory() as tmp_name:
        engine = args.engine
        if engine is None:
            from edgebridge.export.tensorrt_build import build_engine

            engine = build_engine(args.onnx, Path(tmp_name) / "expert.engine", fp16=True, batch=(1, 1, 1))
        rec = json.loads(Path(engine).with_suffix(".json").read_text()).get("engine", {})
        rng = np.random.default_rng(0)
        with TensorRTExpert(ExpertBackendConfig(str(engine), max_offset_m=10.0)) as trt_ex, \
                OnnxExpert(ExpertBackendConfig(str(args.onnx), threads=2)) as ort_ex:
            feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in trt_ex.input_shapes(1).items()}
            err = float(np.max(np.abs(trt_ex.run(feeds) - ort_ex.run(feeds))))
            t_trt = time_call(lambda: trt_ex.run(feeds), repeats=args.repeats, warmup=10)
            t_ort = time_call(lambda: ort_ex.run(feeds), repeats=args.repeats, warmup=10)
            cloud, state, guidance = _act_inputs()
            t_act = time_call(lambda: trt_ex.act(cloud, state, guidance), repeats=args.repeats, warmup=5)
    device, power = current_device(), read_power_mode()
    results = {"chunk_ms_trt": t_trt["median_ms"], "chunk_ms_trt_p90": t_trt["p90_ms"],
               "chunk_ms_ort": t_ort["median_ms"], "trt_vs_ort": ratio(t_ort["median_ms"], t_trt["median_ms"]),
               "act_ms_trt": t_act["median_ms"], "max_abs_diff_trt_vs_ort": err, "repeats": args.repeats,
               "device": describe_device(device), "device_sm": device.get("sm"), "device_l4t": device.get("l4t"),
               "power": describe_power(power), "power_mode": (power.get("nvpmodel") or {}).get("name"),
               "jetson_clocks": power.get("jetson_clocks"),
               **{f"engine_{k}": rec.get(k) for k in ("builder", "tensorrt", "fp16", "int8")}}
    print_table("action expert: one chunk, batch 1, TensorRT engine vs ONNX Runtime (median ms)",
                ["case", "median ms", "p90 ms", "TensorRT faster by"],
                [["TensorRT engine (TensorRTExpert.run)", fmt_ms(t_trt["median_ms"]), fmt_ms(t_trt["p90_ms"]),
                  fmt_ratio(results["trt_vs_ort"])],
                 ["ONNX Runtime (OnnxExpert.run)", fmt_ms(t_ort["median_ms"]), fmt_ms(t_ort["p90_ms"]), "-"],
                 ["TensorRTExpert.act end to end", fmt_ms(t_act["median_ms"]), fmt_ms(t_act["p90_ms"]), ""]],
                caption=f"{machine_line()}; {describe_device(device)}; {describe_power(power)}; engine "
                        f"{'FP16' if rec.get('fp16') else 'FP32'} ({rec.get('builder')}); max abs diff vs ORT {err:.2e}")
    write_json(args.json, results)
    return 0


def _act_inputs():
    from edgebridge.contracts import ArmState, Guidance, PointCloud, Pose

    rng = np.random.default_rng(0)
    cloud = PointCloud(rng.uniform(-0.3, 0.3, (2000, 3)).astype(np.float32) + np.float32([0.5, 0, 0.1]))
    state = ArmState(np.zeros(7), Pose(np.array([0.45, 0.0, 0.3]), np.array([1.0, 0, 0, 0])), 1.0, stamp_ns=10**9)
    t = np.arange(60) * 0.1
    pos = np.stack([0.45 + 0.002 * np.arange(60), np.zeros(60), 0.3 - 0.004 * np.arange(60)], axis=1)
    guidance = Guidance(t, pos, np.tile([1.0, 0, 0, 0], (60, 1)), np.ones(60), stamp_ns=10**9 - 10**8)
    return cloud, state, guidance


def _time_act(repeats: int) -> float:
    from edgebridge.runtime.expert import ExpertBackendConfig, OnnxExpert

    cloud, state, guidance = _act_inputs()
    with OnnxExpert(ExpertBackendConfig(str(ASSET), max_offset_m=10.0)) as ex:
        return time_call(lambda: ex.act(cloud, state, guidance), repeats=repeats, warmup=5)["median_ms"]


if __name__ == "__main__":
    sys.exit(main())
