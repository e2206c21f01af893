"""Hugging Face VLM checkpoint -> GGUF (f16) -> quantised GGUF, plus a load-and-plan check.

1. **Convert** (``convert_hf``): llama.cpp's ``convert_hf_to_gguf.py`` turns the checkpoint into an
   f16 GGUF, and with ``--mmproj`` the vision tower into the ``mmproj`` GGUF. The script ships with
   llama.cpp's source tree, *not* with the llama-cpp-python or gguf wheels; it is looked up as: the
   ``--convert-script`` argument, ``$LLAMA_CPP_CONVERT``, ``$LLAMA_CPP_DIR/convert_hf_to_gguf.py``, then
   ``convert_hf_to_gguf.py`` / ``convert_hf_to_gguf`` on ``PATH``. Not found -> an error saying how to get it.
2. **Stamp** (``stamp_metadata``): the plan format version + hash are written into the GGUF metadata,
   so a runtime can tell which prompt/grammar a model was exported for. Quantisation copies them.
3. **Quantise** (``quantize``): ``llama_cpp.llama_model_quantize`` to Q8_0 / Q5_K_M / Q4_K_M. The
   mmproj file is passed through unquantised (llama.cpp's quantiser only handles language models;
   vision towers are kept in f16, as upstream ships them).
4. **Check** (``check_model``): load the result with :class:`GGUFPlanner` and run one
   grammar-constrained plan; the plan must parse.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgebridgeError, require

log = logging.getLogger(__name__)

QUANT_TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "F16": "LLAMA_FTYPE_MOSTLY_F16"}


class ExportError(EdgebridgeError):
    """A conversion, quantisation or check step of the VLM export failed."""


def find_convert_script(explicit: str | None = None) -> Path:
    """Locate llama.cpp's ``convert_hf_to_gguf.py`` (see the module doc for the search order)."""
    candidates: list[str | None] = [explicit, os.environ.get("LLAMA_CPP_CONVERT")]
    if os.environ.get("LLAMA_CPP_DIR"):
        candidates.append(str(Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"))
    candidates += [shutil.which("convert_hf_to_gguf.py"), shutil.which("convert_hf_to_gguf")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ExportError("llama.cpp's convert_hf_to_gguf.py was not found (it is not part of the llama-cpp-python "
                      "or gguf wheels). Clone https://github.com/ggml-org/llama.cpp, pip install its "
                      "requirements/requirements-convert_hf_to_gguf.txt, then pass --convert-script "
                      "<llama.cpp>/convert_hf_to_gguf.py or set LLAMA_CPP_DIR")


def convert_hf(hf_dir: str | Path, out_dir: str | Path, *, script: str | None = None,
               mmproj: bool = True) -> tuple[Path, Path | None]:
    """Convert a HF checkpoint directory to ``<name>-f16.gguf`` (+ ``mmproj-<name>-f16.gguf``)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"{hf_dir} is not a Hugging Face checkpoint directory (no config.json)")
    conv = find_convert_script(script)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = out_dir / f"{hf_dir.name}-f16.gguf"
    _run([sys.executable, str(conv), str(hf_dir), "--outfile", str(model), "--outtype", "f16"], "convert")
    proj = None
    if mmproj:
        proj = out_dir / f"mmproj-{hf_dir.name}-f16.gguf"
        _run([sys.executable, str(conv), str(hf_dir), "--outfile", str(proj), "--outtype", "f16", "--mmproj"],
             "convert the vision tower (--mmproj)")
    return model, proj


def _run(cmd: list[str], what: str) -> None:
    log.info("running %s", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportError(f"{what} failed (exit {r.returncode}): {r.stderr.strip()[-600:]}")


def stamp_metadata(src: str | Path, dst: str | Path, values: dict[str, str]) -> Path:
    """Copy GGUF ``src`` to ``dst`` with extra string key/values (e.g. the plan format version)."""
    gguf = require("gguf", "vlm", "GGUF metadata stamping")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ExportError(f"stamp_metadata: source and destination are the same file {src}")
    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or field.name in values:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for k, v in values.items():
        writer.add_string(k, str(v))
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst


def quantize(src: str | Path, dst: str | Path, qtype: str = "Q4_K_M", *, n_threads: int = 0,
             keep_output: bool = False) -> Path:
    """Quantise a GGUF language model with llama.cpp; returns ``dst``. ``keep_output`` leaves
    ``output.weight`` in the source's precision (llama.cpp's ``--leave-output-tensor``)."""
    lc = require("llama_cpp", "vlm", "GGUF quantisation")
    src, dst = Path(src), Path(dst)
    if qtype not in QUANT_TYPES:
        raise ExportError(f"unknown quantisation {qtype!r}; choose one of {sorted(QUANT_TYPES)}")
    if not src.is_file():
        raise ExportError(f"quantize: input model {src} not found")
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, QUANT_TYPES[qtype])
    params.nthread = n_threads or (os.cpu_count() or 1)
    if keep_output:
        params.quantize_output_tensor = False
    dst.parent.mkdir(parents=True, exist_ok=True)
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama_model_quantize({src} -> {dst}, {qtype}) failed with code {rc}; is {src} a "
                          f"complete f16/f32 GGUF language model (not an mmproj file)?")
    return dst


def check_model(model: str | Path, mmproj: str | Path | None = None, *, chat_handler: str = "qwen2.5-vl",
                n_ctx: int = 4096) -> dict:
    """Load ``model`` with the GGUF planner and run one grammar-constrained plan; returns timings."""
    from ..errors import PlanError
    from ..runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig, blank_frame

    cfg = GGUFPlannerConfig(model_path=str(model), mmproj_path=None if mmproj is None else str(mmproj),
                            chat_handler=chat_handler, text_only=mmproj is None, n_ctx=n_ctx, temperature=0.7)
    t0 = time.perf_counter()
    try:
        with GGUFPlanner(cfg) as planner:
            load_ms = (time.perf_counter() - t0) * 1e3
            plan = planner.plan(blank_frame(320, 240), "pick up the red block and put it in the tray")
    except PlanError as e:
        raise ExportError(f"check of {model} failed: {e}") from e
    return {"load_ms": load_ms, "n_anchors": len(plan.anchors), **plan.timings_ms}


@dataclass(frozen=True)
class ExportResult:
    f16: Path
    mmproj: Path | None
    quantized: dict[str, Path]
    checks: dict[str, dict]


def export_vlm(out_dir: str | Path, *, hf_dir: str | Path | None = None, tiny: bool = False,
               quants: tuple[str, ...] = ("Q8_0", "Q5_K_M", "Q4_K_M"), convert_script: str | None = None,
               check: bool = True, chat_handler: str = "qwen2.5-vl") -> ExportResult:
    """The whole export: convert (or build the tiny model), stamp, quantise, check each result."""
    from ..runtime.planner.prompt import GGUF_KEY_HASH, GGUF_KEY_VERSION, load_assets

    assets = load_assets()
    stamp = {GGUF_KEY_VERSION: assets.version, GGUF_KEY_HASH: assets.hash}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tiny:
        from .tiny_gguf import write_tiny_gguf

        f16, proj, name = write_tiny_gguf(out_dir / "tiny-f16.gguf", metadata=stamp), None, "tiny"
    elif hf_dir is not None:
        raw, proj = convert_hf(hf_dir, out_dir / "convert", script=convert_script)
        name = Path(hf_dir).name
        f16 = stamp_metadata(raw, out_dir / f"{name}-f16.gguf", stamp)
        if proj is not None:
            proj = Path(shutil.copy2(proj, out_dir / proj.name))
    else:
        raise ExportError("export_vlm: give a Hugging Face checkpoint directory or tiny=True")
    quantized = {q: quantize(f16, out_dir / f"{name}-{q}.gguf", q) for q in quants}
    checks = {q: check_model(p, proj, chat_handler=chat_handler) for q, p in quantized.items()} if check else {}
    return ExportResult(f16=f16, mmproj=proj, quantized=quantized, checks=checks)
