"""Re-export an expert from its plain ONNX graph: recover the torch weights, export them again.

An expert exported with ``graph="plain"`` (:class:`edgebridge.train.model.DDIMSampler` as written, which
is what every export before the fused graph was) holds every weight of the network as an initializer or a
constant, possibly transposed or reshaped. :func:`recover_net` finds each one: it exports a probe network
of the same config, whose parameters are distinct random values, with the same exporter, locates every
parameter among the probe graph's tensors by value, and reads the tensor of the same name in the source
graph. It then exports the recovered network as a plain graph again and requires the outputs of that
graph and the source graph to agree, so a mismatch (another exporter version, another model code) fails
loudly instead of giving wrong weights.

A fused graph cannot be a source: it folds the step-embedding MLP into per-step constants.

    python -m edgebridge.export.reexport --onnx OLD/expert.onnx --out NEW [--graph fused]

writes ``NEW/expert.onnx`` + ``.json`` with the source's metadata (training command, data, metrics) and a
``reexport`` entry: the source's sha256 and the largest output difference between the two graphs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from .expert import (GRAPHS, INPUTS, OUTPUT, ExportError, _export, example_inputs, export_expert, ort_session,
                     sha256)
from ..train.finetune import graph_tensors

log = logging.getLogger(__name__)

# a recovered plain graph must reproduce the source graph's outputs to this (the same ops on the same
# weights: in practice the difference is 0)
RECOVERY_TOL = 1e-6


def _locate(value: np.ndarray, tensors: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    """(name, transposed) of the probe tensor holding ``value`` (as is or transposed, any shape)."""
    for name, t in tensors.items():
        if t.size != value.size or t.dtype != value.dtype:
            continue
        if np.array_equal(t.reshape(-1), value.reshape(-1)):
            return name, False
        if value.ndim == 2 and np.array_equal(t.reshape(-1), value.T.reshape(-1)):
            return name, True
    return None


def _outputs(path: Path, net, seed: int = 0) -> np.ndarray:
    args = example_inputs(net, 3, seed)
    return ort_session(path).run([OUTPUT], {n: a.numpy() for n, a in zip(INPUTS, args)})[0]


def recover_net(onnx_path: Path, meta: dict):
    """The :class:`~edgebridge.train.model.ActionExpertNet` whose plain export is ``onnx_path`` (its
    metadata ``meta``). The training-only ``aux_head`` is not in the graph and keeps its initial values."""
    import torch

    from ..train.model import DDIMSampler, ExpertNetConfig, make_net

    if meta.get("graph", "plain") != "plain":
        raise ExportError(f"{onnx_path}: a {meta.get('graph')!r} graph cannot be re-exported (its step "
                          "embedding is folded into constants); re-export from a plain graph or a training run")
    cfg = ExpertNetConfig.from_dict(meta["model_config"])
    k = int(meta["ddim_steps"])
    probe = make_net(cfg, seed=20251103).eval()
    skip = {n for n in probe.state_dict() if n.startswith("aux_head.")}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    source = graph_tensors(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        _export(DDIMSampler(probe, k).eval(), example_inputs(probe, 1), probe_path, list(INPUTS), [OUTPUT])
        probe_tensors = graph_tensors(probe_path)
        state = {}
        for name, value in probe.state_dict().items():
            if name in skip:
                state[name] = value
                continue
            found = _locate(value.numpy(), probe_tensors)
            if found is None or found[0] not in source or source[found[0]].size != value.numel():
                raise ExportError(f"{onnx_path}: parameter {name} {tuple(value.shape)} not found in the graph; "
                                  "was it exported by this version of edgebridge with graph='plain'?")
            arr = source[found[0]].reshape(value.T.shape if found[1] else value.shape)
            state[name] = torch.from_numpy(np.array(arr.T if found[1] else arr))
        net = make_net(cfg).eval()
        net.load_state_dict(state)
        # non-persistent buffers computed at construction (the step embedding's frequencies) can differ in
        # the last bit between CPUs: take the source's values, so the function is the source's exactly
        buffers = dict(net.named_buffers())
        for name, value in probe.named_buffers():
            found = _locate(value.numpy(), probe_tensors) if name not in state else None
            if found is not None and found[0] in source:
                buffers[name].copy_(torch.from_numpy(np.array(source[found[0]]).reshape(value.shape)))
        check_path = Path(tmp) / "check.onnx"
        _export(DDIMSampler(net, k).eval(), example_inputs(net, 1), check_path, list(INPUTS), [OUTPUT])
        diff = float(np.max(np.abs(_outputs(check_path, net) - _outputs(onnx_path, net))))
    if not diff <= RECOVERY_TOL:
        raise ExportError(f"{onnx_path}: the recovered weights reproduce the graph only to {diff:.3g} "
                          f"(> {RECOVERY_TOL:g}); the source was exported by other code")
    log.info("recovered %d tensors from %s (re-exported plain graph agrees to %.2g)", len(state), onnx_path, diff)
    return net


def record_from_metadata(meta: dict) -> dict:
    """The ``record`` :func:`export_expert` takes, rebuilt from an export's metadata."""
    regenerated = ("model", "sha256", "opset", "graph", "inputs", "outputs", "n_points", "guidance_steps", "horizon",
            "ddim_steps", "timesteps", "train_steps", "prediction", "action_dt", "normalization", "output",
            "correction_limit", "cloud_roi", "model_config", "parameters", "training_command", "train_config",
            "data_seed", "data", "commit", "metrics", "parity", "variants", "format_version", "reexport")
    return {"norm": meta["normalization"], "spec": {"action_dt": meta.get("action_dt", 0.1)},
            "output": meta.get("output"), "command": meta.get("training_command"), "data": meta.get("data"),
            "train_config": meta.get("train_config"), "metrics": meta.get("metrics"),
            "correction_limit": meta.get("correction_limit"),
            "extra_metadata": {k: v for k, v in meta.items() if k not in regenerated}}


def reexport(onnx_path: Path, out_dir: Path, *, graph: str = "fused", name: str | None = None) -> Path:
    """Recover the weights of the plain export ``onnx_path`` and export them to ``out_dir`` as ``graph``."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    meta_path = onnx_path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as e:
        raise ExportError(f"{meta_path}: the metadata next to {onnx_path} is missing; it holds the model "
                          "config and normalisation the re-export needs") from e
    net = recover_net(onnx_path, meta)
    k = int(meta["ddim_steps"])
    source_sha = sha256(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:  # out_dir may be the source's own directory
        path = export_expert(net, record_from_metadata(meta), Path(tmp), k=k, graph=graph,
                             name=name or onnx_path.stem)
        diff = float(np.max(np.abs(_outputs(path, net, seed=7) - _outputs(onnx_path, net, seed=7))))
        new_meta = json.loads(path.with_suffix(".json").read_text())
        new_meta["reexport"] = {"source_sha256": source_sha, "source_commit": meta.get("commit"),
                                "max_abs_diff_vs_source": diff,
                                "command": f"python -m edgebridge.export.reexport --graph {graph}"}
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / path.name
        dst.write_bytes(path.read_bytes())
        dst.with_suffix(".json").write_text(json.dumps(new_meta, indent=2) + "\n")
    log.info("re-exported %s -> %s (%s graph); outputs differ by at most %.2g", onnx_path, dst, graph, diff)
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, help="a plain-graph expert export (with its .json)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (may be the source's)")
    ap.add_argument("--graph", choices=GRAPHS, default="fused")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dst = reexport(args.onnx, args.out, graph=args.graph)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = json.loads(dst.with_suffix(".json").read_text())
    print(f"wrote {dst} ({meta['graph']} graph, parity vs torch {meta['parity']['max_abs_diff']:.2e}, "
          f"vs source graph {meta['reexport']['max_abs_diff_vs_source']:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
