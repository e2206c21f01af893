"""Trained action expert -> ONNX with the K DDIM steps unrolled in one graph, parity-checked against torch.

``export_expert`` writes ``<name>.onnx`` (fp32, opset 17, dynamic batch; inputs ``cloud`` (B, N, 3),
``proprio`` (B, 10), ``guidance`` (B, G+1, 10), ``noise`` (B, H, 10); output ``action`` (B, H, 10)) and
``<name>.json``, the metadata :class:`edgebridge.runtime.expert.OnnxExpert` reads (sizes, K, action dt,
normalisation stats, training command and data, commit, metrics, parity). Optional fp16 / int8 variants
are written next to it with their measured error against the fp32 torch model.

The graph is exported from :class:`edgebridge.train.fused_sampler.FusedDDIMSampler` (``graph="fused"``,
the default: step-constant parts folded, static shapes, about half the nodes) or from
:class:`edgebridge.train.model.DDIMSampler` as written (``graph="plain"``). Either way the parity check
compares it with ``DDIMSampler``, the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgebridgeError, require
from ..runtime.expert.features import OUTPUT_RELATIVE, CorrectionLimit

if TYPE_CHECKING:  # torch is imported lazily so `edge-export --help` and other subcommands stay light
    import torch

    from ..train.model import ActionExpertNet, DDIMSampler

log = logging.getLogger(__name__)

INPUTS = ("cloud", "proprio", "guidance", "noise")
OUTPUT = "action"
OPSET = 17
PARITY_TOL = 1e-4
METADATA_VERSION = 1
GRAPHS = ("fused", "plain")


class ExportError(EdgebridgeError):
    """Export failed or the exported graph disagrees with the torch model."""


def example_inputs(net: ActionExpertNet, batch: int = 2, seed: int = 0) -> "tuple[torch.Tensor, ...]":
    """Seeded random inputs of the right shapes (normalised features are roughly unit scale)."""
    torch = require("torch", "export")
    c = net.cfg
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, c.n_points, 3, generator=g), torch.randn(batch, c.pose_dim, generator=g),
            torch.randn(batch, c.guidance_tokens, c.pose_dim, generator=g),
            torch.randn(batch, c.horizon, c.pose_dim, generator=g))


def _export(module: "torch.nn.Module", args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    torch = require("torch", "export")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
                          do_constant_folding=True)
    except Exception as e:
        raise ExportError(f"torch.onnx.export to {path} failed: {e}") from e


def ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def max_abs_error(path: Path, reference: np.ndarray, args: "tuple[torch.Tensor, ...]") -> float:
    """Largest |ORT(path) - reference| on ``args``."""
    sess = ort_session(path)
    out = sess.run([OUTPUT], {n: a.numpy() for n, a in zip(INPUTS, args)})[0]
    return float(np.max(np.abs(out.astype(np.float64) - reference)))


def parity_check(sampler: DDIMSampler, path: Path, *, tol: float = PARITY_TOL, batch: int = 3,
                 seed: int = 123) -> float:
    """Compare the ONNX graph with the torch sampler on seeded inputs; raise if they differ by > tol."""
    torch = require("torch", "export")
    args = example_inputs(sampler.net, batch, seed)
    with torch.no_grad():
        ref = sampler(*args).numpy().astype(np.float64)
    err = max_abs_error(path, ref, args)
    if not np.isfinite(err) or err > tol:
        raise ExportError(f"{path}: ONNX output differs from torch by {err:.3g} (> {tol:g}) on batch {batch}; "
                          "the export is wrong — check unsupported ops in the exporter warnings")
    return err


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fp16_variant(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def constants_as_initializers(model):
    """Move tensor-valued Constant nodes into the initializer list (the quantiser only quantises weights
    that are initializers; the exporter leaves some folded weights as Constant nodes)."""
    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        attr = {a.name: a for a in node.attribute}
        if "value" in attr:
            tensor = attr["value"].t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)
    return model


def _int8_variant(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staged = dst.with_name(f"{dst.stem}_staged.onnx")
    onnx.save(constants_as_initializers(onnx.load(str(src))), str(staged))
    try:
        quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8)
    finally:
        staged.unlink(missing_ok=True)


def export_variants(sampler: DDIMSampler, fp32: Path, *, fp16: bool, int8: bool) -> dict:
    """Write fp16 / int8 variants of ``fp32`` and measure each one's error against torch fp32."""
    torch = require("torch", "export")
    out: dict = {}
    args = example_inputs(sampler.net, 3, 321)
    with torch.no_grad():
        ref = sampler(*args).numpy().astype(np.float64)
    for name, make, enabled in (("fp16", _fp16_variant, fp16), ("int8", _int8_variant, int8)):
        if not enabled:
            continue
        dst = fp32.with_name(f"{fp32.stem}_{name}.onnx")
        try:
            make(fp32, dst)
            err = max_abs_error(dst, ref, args)
            out[name] = {"file": dst.name, "max_abs_err": err, "bytes": dst.stat().st_size,
                         "sha256": sha256(dst)}
            log.info("%s variant %s: max abs error vs torch fp32 %.3g", name, dst, err)
        except Exception as e:  # a variant is optional: record why it is missing
            out[name] = {"file": None, "error": f"{type(e).__name__}: {e}"}
            log.warning("%s variant not written: %s", name, e)
    return out


def export_expert(net: ActionExpertNet, record: dict, out_dir: Path, *, k: int = 10, name: str = "expert",
                  fp16: bool = False, int8: bool = False, tol: float = PARITY_TOL, graph: str = "fused") -> Path:
    """Export ``net`` with K unrolled DDIM steps to ``out_dir/<name>.onnx`` + ``<name>.json``.

    ``record`` is what training saved (``norm``, ``spec``, ``metrics``, ``command``, ``data``,
    ``train_config``; ``correction_limit``, else the default); missing entries are written as null; its
    ``extra_metadata`` entries are added to the
    metadata as they are. ``graph``: ``"fused"`` or ``"plain"`` (module docstring). Returns the ONNX path."""
    from ..train.fused_sampler import FusedDDIMSampler
    from ..train.model import DDIMSampler, count_parameters

    if graph not in GRAPHS:
        raise ExportError(f"export graph {graph!r}: expected one of {', '.join(GRAPHS)}")
    out_dir = Path(out_dir)
    net = net.eval()
    sampler = DDIMSampler(net, k).eval()
    exported = FusedDDIMSampler(net, k).eval() if graph == "fused" else sampler
    path = out_dir / f"{name}.onnx"
    t0 = time.monotonic()
    _export(exported, example_inputs(net, 1), path, list(INPUTS), [OUTPUT])
    err = parity_check(sampler, path, tol=tol)
    log.info("exported %s (%s graph, %.1f MB, K=%d) in %.1f s; parity max abs diff %.2e", path, graph,
             path.stat().st_size / 1e6, k, time.monotonic() - t0, err)
    variants = export_variants(sampler, path, fp16=fp16, int8=int8)
    spec = record.get("spec") or {}
    cfg = net.cfg
    train_cfg = record.get("train_config") or {}
    meta = {
        "format_version": METADATA_VERSION,
        "model": path.name,
        "sha256": sha256(path),
        "opset": OPSET,
        "graph": graph,
        "inputs": {"cloud": [-1, cfg.n_points, 3], "proprio": [-1, cfg.pose_dim],
                   "guidance": [-1, cfg.guidance_tokens, cfg.pose_dim], "noise": [-1, cfg.horizon, cfg.pose_dim]},
        "outputs": {OUTPUT: [-1, cfg.horizon, cfg.pose_dim]},
        "n_points": cfg.n_points, "guidance_steps": cfg.guidance_tokens - 1, "horizon": cfg.horizon,
        "ddim_steps": k, "timesteps": sampler.timesteps, "train_steps": cfg.train_steps,
        "prediction": cfg.prediction, "action_dt": float(spec.get("action_dt", 0.1)),
        "normalization": record.get("norm"),
        "output": record.get("output") or OUTPUT_RELATIVE,
        "correction_limit": record.get("correction_limit") or asdict(CorrectionLimit()),
        # the crop the training clouds had: the runtime must crop live clouds the same way
        "cloud_roi": (record.get("data") or {}).get("cloud_roi"),
        "model_config": cfg.to_dict(), "parameters": count_parameters(net),
        "training_command": record.get("command"), "train_config": train_cfg,
        "data_seed": train_cfg.get("seed"), "data": record.get("data"),
        "commit": git_commit(), "metrics": record.get("metrics"),
        "parity": {"max_abs_diff": err, "tol": tol, "reference": "torch fp32 eager"},
        "variants": variants,
        **(record.get("extra_metadata") or {}),
    }
    if meta["normalization"] is None:
        raise ExportError("record has no normalisation stats ('norm'); export from a finished training run")
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def export_step_graphs(net: ActionExpertNet, out_dir: Path) -> tuple[Path, Path]:
    """The encoder and one denoiser step as separate graphs (the K-separate-calls baseline)."""
    torch = require("torch", "export")
    from ..train.model import DenoiseModule, EncodeModule

    out_dir = Path(out_dir)
    net = net.eval()
    cloud, proprio, guidance, noise = example_inputs(net, 1)
    enc = out_dir / "encode.onnx"
    _export(EncodeModule(net), (cloud, proprio, guidance), enc, ["cloud", "proprio", "guidance"], ["cond"])
    with torch.no_grad():
        cond = net.encode(cloud, proprio, guidance)
    den = out_dir / "denoise.onnx"
    _export(DenoiseModule(net), (noise, torch.tensor([9], dtype=torch.int64), cond), den,
            ["sample", "t", "cond"], ["pred"])
    return enc, den


def export_from_run(run_dir: Path, out_dir: Path, **kw) -> Path:
    """Export the finished training run in ``run_dir`` (its ``final.pt``)."""
    from ..train.appf import load_final

    net, record = load_final(Path(run_dir))
    return export_expert(net, record, out_dir, **kw)


def add_subparser(sub) -> None:
    """Register ``edge-export expert`` on an argparse subparsers object."""
    p = sub.add_parser("expert", help="trained action expert -> ONNX (K DDIM steps unrolled) + metadata",
                       description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="training run directory (holds final.pt)")
    p.add_argument("--out", type=Path, required=True, help="output directory for <name>.onnx and <name>.json")
    p.add_argument("--k", type=int, default=10, help="DDIM steps unrolled in the graph (1, 2, 4, 10)")
    p.add_argument("--name", default="expert")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 variant and its error")
    p.add_argument("--int8", action="store_true", help="also write a dynamic-int8 variant and its error")
    p.add_argument("--tol", type=float, default=PARITY_TOL, help="parity tolerance vs torch (max abs diff)")
    p.add_argument("--graph", choices=GRAPHS, default="fused",
                   help="fused: step-constant parts folded, static shapes (default); plain: DDIMSampler as written")
    p.add_argument("--trt", type=Path, default=None,
                   help="also build a TensorRT engine at this path (needs tensorrt + an NVIDIA GPU)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..train.appf import CheckpointError

    try:
        path = export_from_run(args.run, args.out, k=args.k, name=args.name, fp16=args.fp16, int8=args.int8,
                               tol=args.tol, graph=args.graph)
    except (FileNotFoundError, CheckpointError) as e:  # no finished run there, or not a safe one: say which file
        print(f"edge-export expert: {e}", file=sys.stderr)
        return 2
    except ExportError as e:  # the export failed or its parity check did: the message says which
        print(f"edge-export expert: {e}", file=sys.stderr)
        return 1
    meta = json.loads(path.with_suffix(".json").read_text())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, K={args.k}, "
          f"parity max abs diff {meta['parity']['max_abs_diff']:.2e})")
    for vname, v in meta["variants"].items():
        print(f"  {vname}: {v.get('file')} max abs err {v.get('max_abs_err', v.get('error'))}")
    if args.trt is not None:
        from .tensorrt_build import build_engine

        build_engine(path, args.trt)
        print(f"wrote TensorRT engine {args.trt}")
    return 0
