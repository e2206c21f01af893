"""``edge-run doctor``: is this device ready to run edgebridge? One row per check, PASS / WARN / FAIL, and
for each problem the fix.

    edge-run doctor [--config SETUP] [--bundle DIR] [--engine FILE] [--json FILE] [--quick]
    python -m edgebridge.runtime.doctor ...      # the same, without the edge-run dispatch

Checks: platform (aarch64, Python 3.10), L4T / JetPack, CUDA (nvcc, a device), TensorRT and the CUDA
bindings, ONNX Runtime's execution providers, llama.cpp (CUDA offload, the multimodal library), numba.cuda,
free memory, the bundle's hashes against its manifest, each engine's build record against this device,
the RealSense camera, serial ports and their permissions, real-time priority and memlock limits, the power
mode and clocks; then (unless ``--quick``) one expert pass and one planner call, timed.

Exit code: 0 when nothing FAILs (WARNs allowed), 1 when a check FAILs, 2 on bad arguments. On a machine
that is not a Jetson the platform, L4T, CUDA and TensorRT checks FAIL by design: it is not ready.

The bundle's file hashes are checked on the runtime side (``runtime.bundle_manifest``, re-exported here);
``edge-export bundle --verify`` calls :func:`verify_bundle` too. The checks themselves are in
``runtime.doctor_checks``; the timed expert pass and planner call, and the command, here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle_manifest import MANIFEST
from .bundle_manifest import DEVICE_DIRS, SUMS, bundle_files, sha256_file, verify_bundle  # noqa: F401 - re-exported
from .doctor_checks import (FAIL, PASS, WARN, Check, Host, _import, check_bundle, check_camera, check_cuda,
                            check_engines, check_l4t, check_limits, check_llama, check_memory, check_numba,
                            check_onnxruntime, check_platform, check_power, check_serial, check_tensorrt)
from .doctor_checks import INSTALL_PTH, MIN_FREE_MB  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_BUNDLE = "/opt/edgebridge"


# ------------------------------------------------------------------------------------------ latency

def _resolve(p: str, base: Path | None) -> Path:
    """A path from a setup file: relative ones resolve against the bundle root when the file is there."""
    q = Path(p)
    return base / q if not q.is_absolute() and base is not None and (base / q).exists() else q


def _time_expert(factory: Callable, repeats: int) -> float:
    def once(ex, feeds) -> float:
        t0 = time.perf_counter()
        ex.run(feeds)
        return (time.perf_counter() - t0) * 1e3

    with factory() as ex:
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in ex.input_shapes(1).items()}
        once(ex, feeds)  # warm-up: the first call allocates
        return float(np.median([once(ex, feeds) for _ in range(repeats)]))


def measure_expert(cfg, bundle: Path | None, engines: list[Path], repeats: int = 10) -> tuple[list[Check], dict]:
    """One engine pass (TensorRT when an engine and tensorrt are here, else the ONNX model on ONNX Runtime)."""
    from .expert.base import ExpertBackendConfig

    engine = next((e for e in engines if e.is_file()), None)
    trt, err = _import("tensorrt")
    if engine is not None and trt is not None:
        from .expert.tensorrt import TensorRTExpert

        label, factory, why = f"TensorRT {engine.name}", lambda: TensorRTExpert(ExpertBackendConfig(str(engine))), ""
    else:
        from .devices import shipped_expert
        from .expert.onnx import OnnxExpert

        cands = [bundle / "models/expert/expert.onnx" if bundle else None,
                 _resolve(cfg.expert.model, bundle) if cfg is not None and str(cfg.expert.model).endswith(".onnx") else None,
                 shipped_expert()]
        onnx = next((c for c in cands if c is not None and Path(c).is_file()), None)
        if onnx is None:
            return [Check("expert pass", FAIL, "no engine and no ONNX model to run", "./install.sh engines")], {}
        why = "no engine built" if engine is None else f"tensorrt does not import ({err})"
        label, factory = f"ONNX Runtime {Path(onnx).name}", lambda: OnnxExpert(ExpertBackendConfig(str(onnx)))
    try:
        ms = _time_expert(factory, repeats)
    except Exception as e:
        return [Check("expert pass", FAIL, f"{label}: {type(e).__name__}: {e}", "see the message; ./install.sh engines")], {}
    if why:
        return [Check("expert pass", WARN, f"{label}: {ms:.1f} ms per chunk (the TensorRT engine did not run: {why})",
                      "./install.sh engines on the Orin")], {f"expert ({label})": ms}
    return [Check("expert pass", PASS, f"{label}: {ms:.1f} ms per chunk")], {f"expert ({label})": ms}


def measure_planner(cfg, bundle: Path | None) -> tuple[list[Check], dict]:
    """Load the setup's GGUF planner and ask it for one plan on a synthetic frame."""
    from ..contracts import RGBD, Intrinsics
    from ..errors import PlanError
    from .config import load_robot_config, with_overrides
    from .devices import make_planner

    cfg = cfg if cfg is not None else load_robot_config("sim_panda")
    if cfg.planner.backend != "gguf":
        return [Check("planner call", PASS, f"planner backend {cfg.planner.backend}: no local model to time")], {}
    opts = dict(cfg.planner.options)
    if opts.get("mmproj_path"):
        opts["mmproj_path"] = str(_resolve(opts["mmproj_path"], bundle))
    model = str(_resolve(cfg.planner.model, bundle)) if cfg.planner.model else ""
    cfg = with_overrides(cfg, planner={"model": model, "options": opts})
    frame = RGBD(np.full((480, 640, 3), 128, np.uint8), np.full((480, 640), 0.8, np.float32),
                 Intrinsics(640, 480, 600.0, 600.0, 320.0, 240.0))
    lat = {}
    try:
        t0 = time.perf_counter()
        planner = make_planner(cfg, "gguf", None, None, simulated=False)
        lat["planner load"] = (time.perf_counter() - t0) * 1e3
    except Exception as e:
        return [Check("planner call", FAIL, f"the planner does not load: {e}", "./install.sh llama; check the GGUF files")], {}
    note = ""
    try:
        t0 = time.perf_counter()
        try:
            planner.plan(frame, "put the cup in the tray")
        except PlanError as e:  # a grey synthetic frame may well give no valid plan: the call still counts
            note = f" (plan rejected on the synthetic frame: {str(e)[:80]})"
        lat["planner call"] = (time.perf_counter() - t0) * 1e3
    finally:
        planner.close()
    gpu = int(opts.get("n_gpu_layers", 0))
    llama, _ = _import("llama_cpp")
    if gpu == 0 and llama is not None and llama.llama_supports_gpu_offload():
        return [Check("planner call", WARN, f"{lat['planner call']:.0f} ms with n_gpu_layers = 0 (CPU){note}",
                      "set planner.options.n_gpu_layers = -1 in the setup")], lat
    return [Check("planner call", PASS, f"{lat['planner call']:.0f} ms (n_gpu_layers {gpu}){note}")], lat


# --------------------------------------------------------------------------------------------- main

def _engines(args, bundle: Path | None, cfg) -> list[Path]:
    if args.engine:
        return [Path(e) for e in args.engine]
    if cfg is not None and cfg.expert.backend == "trt" and cfg.expert.model:
        return [_resolve(cfg.expert.model, bundle)]
    return sorted((bundle / "engines").glob("*.engine")) if bundle else []


def run_checks(args, h: Host) -> tuple[list[Check], dict]:
    bundle = Path(args.bundle) if args.bundle else (
        Path(DEFAULT_BUNDLE) if (Path(DEFAULT_BUNDLE) / MANIFEST).is_file() else None)
    checks: list[Check] = []
    cfg, config = None, args.config
    if config is None and bundle is not None and (bundle / MANIFEST).is_file():
        rel = json.loads((bundle / MANIFEST).read_text()).get("config", {}).get("file")
        config = str(bundle / rel) if rel else None
    if config is not None:
        from ..config import ConfigError
        from .config import load_robot_config

        try:
            cfg = load_robot_config(config)
            checks.append(Check("setup", PASS, f"{cfg.name} ({config})"))
        except ConfigError as e:
            checks.append(Check("setup", FAIL, str(e), "fix the setup file"))
    checks += check_platform(h)
    l4t, rel = check_l4t(h)
    checks += l4t + check_cuda(h) + check_tensorrt(rel) + check_onnxruntime() + check_llama() + check_numba()
    checks += check_memory(h) + check_bundle(bundle, h)
    engines = _engines(args, bundle, cfg)
    checks += check_engines(engines) + check_camera(cfg) + check_serial(cfg, h) + check_limits(cfg)
    power, state = check_power(h)
    checks += power
    latency: dict = {}
    if not args.quick:
        for fn in (lambda: measure_expert(cfg, bundle, engines), lambda: measure_planner(cfg, bundle)):
            c, lat = fn()
            checks += c
            latency.update(lat)
    return checks, {"latency_ms": latency, "power": state, "release": rel,
                    "bundle": str(bundle) if bundle else None, "engines": [str(e) for e in engines]}


def _print(checks: list[Check], extra: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    style = {PASS: "green", WARN: "yellow", FAIL: "bold red"}
    t = Table(title="edge-run doctor")
    for col in ("check", "status", "detail", "fix"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    Console().print(t)
    if extra["latency_ms"]:
        lt = Table("stage", "ms", title="latency (median ms)")
        for k, v in extra["latency_ms"].items():
            lt.add_row(k, f"{v:.1f}")
        Console().print(lt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-run doctor", description="Check that this device is ready to run "
                                 "edgebridge. Exit 0: no FAIL; 1: a check failed; 2: bad arguments.")
    ap.add_argument("--config", help="robot setup (TOML or shipped name); default: the bundle's")
    ap.add_argument("--bundle", help=f"installed bundle (default {DEFAULT_BUNDLE} when it holds a manifest)")
    ap.add_argument("--engine", action="append", help="TensorRT engine to check (repeatable; default: the "
                    "setup's, else the bundle's engines/)")
    ap.add_argument("--json", metavar="FILE", help="also write the checks and latencies as JSON")
    ap.add_argument("--quick", action="store_true", help="skip the timed expert pass and planner call")
    ap.add_argument("--root", default="/", help=argparse.SUPPRESS)  # tests: a fake /etc, /proc, /sys, /dev
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    checks, extra = run_checks(args, Host(root=Path(args.root)))
    code = EXIT_FAIL if any(c.status == FAIL for c in checks) else EXIT_OK
    _print(checks, extra)
    n = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    print(f"doctor: {n[PASS]} pass, {n[WARN]} warn, {n[FAIL]} fail; exit {code}")
    if args.json:
        Path(args.json).write_text(json.dumps({"exit_code": code, "checks": [asdict(c) for c in checks], **extra},
                                              indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
