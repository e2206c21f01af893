"""`edge-export` command line: one subcommand per exporter (argparse subparsers)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _vlm(args: argparse.Namespace) -> int:
    from .vlm import ExportError, export_vlm

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-export", description="Export models for the edge runtime.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_vlm(sub)
    from .expert import add_subparser as _add_expert

    _add_expert(sub)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "vlm" and args.quant is None:
        args.quant = ["Q8_0", "Q4_K_M"] if args.trained else ["Q8_0", "Q5_K_M", "Q4_K_M"]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
