"""`edge-export` command line: one subcommand per exporter (argparse subparsers)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _vlm(args: argparse.Namespace) -> int:
    from .vlm import ExportError, export_vlm

    if args.hf:
        from .vlm_hf import export_hf

        try:
            rep = export_hf(args.hf, args.out, outtype=args.outtype, quants=tuple(args.quant), check=not args.no_check)
        except ExportError as e:
            print(f"edge-export vlm: {e}", file=sys.stderr)
            return 1
        print(json.dumps(rep, indent=2, default=str))
        return 0
    if args.trained:
        from .vlm_trained import export_trained

        try:
            rep = export_trained(args.trained, args.out, quants=tuple(args.quant), data=args.data,
                                 n_plans=args.parity_plans, check=not args.no_check)
        except ExportError as e:
            print(f"edge-export vlm: {e}", file=sys.stderr)
            return 1
        print(json.dumps(rep, indent=2, default=str))
        return 0
    if not args.tiny and not args.hf_dir:
        print("edge-export vlm: give a trained run (--trained RUN_DIR), a Hugging Face checkpoint directory "
              "or --tiny", file=sys.stderr)
        return 2
    try:
        res = export_vlm(args.out, hf_dir=args.hf_dir, tiny=args.tiny, quants=tuple(args.quant),
                         convert_script=args.convert_script, check=not args.no_check, chat_handler=args.chat_handler)
    except ExportError as e:
        print(f"edge-export vlm: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"f16": str(res.f16), "mmproj": None if res.mmproj is None else str(res.mmproj),
                      "quantized": {q: str(p) for q, p in res.quantized.items()},
                      "checks": res.checks}, indent=2, default=float))
    return 0


def _add_vlm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vlm", help="Hugging Face VLM -> GGUF (f16) -> quantised GGUF + a planning check")
    p.add_argument("hf_dir", nargs="?", help="Hugging Face checkpoint directory (with config.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--trained", metavar="RUN_DIR", help="a run of python -m edgebridge.train.planner: write its LM + "
                   "mmproj GGUF files and check them against torch")
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face LLaVA-1.5 directory (or a run of python -m "
                   "edgebridge.train.planner.hf_llava): write its LM + mmproj GGUF files with the project's writer and "
                   "check them against torch (docs/planner_hf.md)")
    p.add_argument("--outtype", choices=["f16", "f32"], default="f16", help="--hf: precision of the language model")
    p.add_argument("--data", help="--trained: pointing data set whose test split the parity check uses "
                   "(default: the run's)")
    p.add_argument("--parity-plans", type=int, default=20, help="--trained: held-out scenes planned by both")
    p.add_argument("--tiny", action="store_true", help="build the tiny random test model instead (no download)")
    p.add_argument("--quant", nargs="+", default=None,
                   help="quantisation types (default Q8_0 Q4_K_M with --trained, else Q8_0 Q5_K_M Q4_K_M)")
    p.add_argument("--convert-script", help="path to llama.cpp's convert_hf_to_gguf.py")
    p.add_argument("--chat-handler", default="qwen2.5-vl", help="chat handler used by the check")
    p.add_argument("--no-check", action="store_true", help="skip loading each result and planning once")
    p.set_defaults(func=_vlm)


def _bundle(args: argparse.Namespace) -> int:
    from .bundle import BundleError, make_bundle, verify

    if args.verify:
        problems = verify(Path(args.verify))
        for line in problems:
            print(f"edge-export bundle: {line}", file=sys.stderr)
        print(f"{args.verify}: {'differs from its manifest' if problems else 'every file matches its manifest'}")
        return 1 if problems else 0
    if not args.config or not args.out:
        print("edge-export bundle: give --config SETUP --out DIR to make a bundle, or --verify DIR", file=sys.stderr)
        return 2
    try:
        path = make_bundle(args.config, Path(args.out), wheelhouse=not args.no_wheelhouse, wheel=args.wheel,
                           tar=args.tar, expert=args.expert, vlm=args.vlm, mmproj=args.mmproj,
                           precision="fp32" if args.fp32 else "fp16", force=args.force)
    except BundleError as e:
        print(f"edge-export bundle: {e}", file=sys.stderr)
        return 1
    print(f"wrote bundle {path}")
    return 0


def _add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="everything a Jetson Orin needs for one robot setup (models, setup, wheels, "
                       "install script, manifest); --verify re-hashes one")
    p.add_argument("--config", help="robot setup: a TOML file or a shipped name (so101_serial, fr3_franky, koch_dynamixel)")
    p.add_argument("--out", help="bundle directory to write")
    p.add_argument("--tar", action="store_true", help="also write OUT.tar.gz (one file to copy to the device)")
    p.add_argument("--verify", metavar="BUNDLE", help="re-hash a bundle directory or .tar.gz against its manifest; "
                   "exit 1 naming each file that differs")
    p.add_argument("--no-wheelhouse", action="store_true", help="skip the aarch64/cp310 wheel download (the device "
                   "then installs from a package index)")
    p.add_argument("--wheel", type=Path, help="a built edgebridge wheel (default: build one from this checkout)")
    p.add_argument("--expert", help="the expert ONNX (default: the setup's expert.model, else the shipped one)")
    p.add_argument("--vlm", help="planner GGUF (default: the setup's planner.model, else the shipped VLM)")
    p.add_argument("--mmproj", help="its vision projector GGUF")
    p.add_argument("--fp32", action="store_true", help="build the device engine in FP32 (default FP16)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_bundle)


def _engine(args: argparse.Namespace) -> int:
    from .tensorrt_build import EngineBuildError, build, parity_check
    from ..errors import EdgebridgeError

    try:
        engine, builder = build(args.onnx, args.out, builder=args.builder, fp16=not args.fp32,
                                workspace_mb=args.workspace_mb, batch=(1, 1, args.max_batch),
                                timing_cache=args.timing_cache)
        print(f"wrote TensorRT engine {engine} ({builder} builder) and {engine.with_suffix('.json')}")
        if args.parity:
            rep = parity_check(engine, args.onnx, args.parity, tol=args.tol)
            print(f"parity vs ONNX Runtime on {rep['samples']} recorded inputs: max abs err {rep['max_abs_err']:.3g} "
                  f"(tol {rep['tol']:g}), engine {rep['engine_ms_median']:.2f} ms per call")
    except (EngineBuildError, EdgebridgeError, FileNotFoundError) as e:
        print(f"edge-export engine: {e}", file=sys.stderr)
        return 1
    return 0


def _add_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="expert ONNX -> TensorRT engine on this device (trtexec or the Python "
                       "builder; TensorRT 8.6 / 10.x), build record next to it, optional parity check")
    p.add_argument("onnx", type=Path, help="the expert ONNX (its .json metadata beside it)")
    p.add_argument("--out", type=Path, required=True, help="engine file to write (+ .json)")
    p.add_argument("--builder", choices=["auto", "python", "trtexec"], default="auto",
                   help="auto: the tensorrt Python bindings when they import, else trtexec")
    p.add_argument("--fp32", action="store_true", help="no FP16 kernels")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder memory-pool limit (MiB)")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch of the optimisation profile")
    p.add_argument("--timing-cache", type=Path, help="timing cache file (read if present, then written)")
    p.add_argument("--parity", type=Path, metavar="NPZ", help="recorded inputs (a bundle's parity_inputs.npz): "
                   "compare the engine with ONNX Runtime on them")
    p.add_argument("--tol", type=float, default=None, help="parity tolerance (default 0.05 FP16, 0.001 FP32)")
    p.set_defaults(func=_engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-export", description="Export models for the edge runtime.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_vlm(sub)
    _add_bundle(sub)
    _add_engine(sub)
    from .expert import add_subparser as _add_expert

    _add_expert(sub)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "vlm" and args.quant is None:
        args.quant = ["Q8_0", "Q4_K_M"] if args.trained or args.hf else ["Q8_0", "Q5_K_M", "Q4_K_M"]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
