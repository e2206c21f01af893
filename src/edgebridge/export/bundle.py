"""``edge-export bundle``: everything a Jetson Orin needs to run one robot setup, offline, in one directory.

    edge-export bundle --config so101_serial.toml --out build/bundle [--tar] [--no-wheelhouse]
    edge-export bundle --verify build/bundle          # or build/bundle.tar.gz

Layout (paths relative to the bundle root, which becomes /opt/edgebridge on the device)::

    manifest.json  SHA256SUMS  install.sh      the record, coreutils-checkable sums, the device install
    config/<setup>.toml  config/files/...       the setup, its file paths rewritten to point inside the bundle
    models/expert/expert.onnx + .json           the action expert (no engine: engines are built on the device)
    models/expert/parity_inputs.npz             recorded inputs + ONNX Runtime outputs for the engine parity check
    models/planner/<vlm>.gguf + <mmproj>.gguf   the planner VLM and its vision projector
    wheels/edgebridge-*.whl                     this package
    wheelhouse/                                 aarch64 / cp310 wheels of the runtime dependencies (pip download
                                                --platform), the llama-cpp-python source and its build tools
    deploy/                                     systemd units, udev rules, Dockerfile

What comes from JetPack instead of the wheelhouse: see ``FROM_JETPACK``. The manifest records the target
(L4T r36 / JetPack 6, CUDA 12.2 or 12.6, TensorRT 8.6 or 10.3, SM 8.7, Python 3.10), the sha256 of every
file and the edgebridge commit; :func:`verify` re-hashes a bundle and names each file that differs.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import EdgebridgeError
from ..runtime.doctor import MANIFEST, SUMS, bundle_files, sha256_file, verify_bundle

log = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout: pyproject.toml, deploy/
TARGET = {"arch": "aarch64", "l4t": "r36.x", "jetpack": "6.x", "cuda": ["12.2", "12.6"],
          "tensorrt": ["8.6", "10.3"], "sm": "8.7", "python": "3.10"}
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
PYTHON = "3.10"
# Runtime dependencies that do not come from the wheelhouse, and where they come from on the device.
FROM_JETPACK = {
    "tensorrt": "JetPack's apt package python3-libnvinfer (TensorRT 8.6 on JetPack 6.0, 10.3 on 6.1+); the venv "
                "sees it through a .pth file (install.sh venv)",
    "trtexec": "JetPack's TensorRT, /usr/src/tensorrt/bin/trtexec",
    "CUDA": "JetPack (/usr/local/cuda); nvcc builds llama.cpp",
    "pycuda": "not needed: the TensorRT backend uses cuda-python (in the wheelhouse)",
    "onnxruntime-gpu": "optional, from NVIDIA's Jetson AI Lab index; the CPU onnxruntime in the wheelhouse is enough "
                       "beside the TensorRT engine",
    "torch": "not needed at run time (training and export only)",
    "llama-cpp-python": "its source is in the wheelhouse; install.sh llama compiles it with CUDA for sm_87",
}
EXTRA_WHEELS = ["cuda-python>=12.2,<13"]  # device buffers for TensorRT
# llama-cpp-python's build tools and dependencies. pip download evaluates environment markers for the Python
# running it, not for --python-version, so the Python 3.10 backports scikit-build-core needs are named here.
LLAMA_BUILD_WHEELS = ["scikit-build-core[pyproject]>=0.9.2", "cmake>=3.21", "ninja", "typing-extensions>=4.5",
                      "diskcache>=5.6.1", "jinja2>=2.11.3", "exceptiongroup>=1.0", "tomli>=1.2.2"]
# String settings of a setup that name files (beside expert.model and the planner's, which go to models/).
MODEL_KEYS = {("expert", "model"), ("planner", "model"), ("planner", "options", "mmproj_path")}


class BundleError(EdgebridgeError):
    """The bundle could not be made, or a bundle does not match its manifest."""


# ------------------------------------------------------------------------------------------ wheelhouse

def runtime_requirements(extras: tuple[str, ...] = ("realsense",)) -> list[str]:
    """edgebridge's own requirements for Python 3.10 on aarch64 Linux: the base ones plus ``extras``."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement

    env = {"python_version": PYTHON, "python_full_version": PYTHON + ".12", "platform_machine": "aarch64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for text in importlib.metadata.requires("edgebridge") or []:
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            continue
        req.marker = None
        out.append(str(req))
    return out


def pip_download_commands(dest: Path, requirements: list[str], llama: str | None) -> list[list[str]]:
    """The ``pip download`` calls that fill a wheelhouse for cp310 / aarch64: binary wheels only, plus the
    llama-cpp-python source distribution (``llama``: its requirement, None to leave it out)."""
    base = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--python-version", PYTHON,
            "--implementation", "cp", "--only-binary=:all:"]
    for p in PLATFORMS:
        base += ["--platform", p]
    cmds = [base + requirements + EXTRA_WHEELS + (LLAMA_BUILD_WHEELS if llama else [])]
    if llama:
        cmds.append([sys.executable, "-m", "pip", "download", "--dest", str(dest), "--no-deps",
                     "--no-binary=:all:", llama])
    return cmds


def _llama_requirement() -> str:
    try:
        return f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python>=0.3.8"


def fill_wheelhouse(dest: Path, requirements: list[str], run: Callable = subprocess.run,
                    llama: str | None = "auto") -> list[str]:
    """Download the wheels into ``dest``; returns the file names. ``run`` is ``subprocess.run`` (tests
    pass a fake)."""
    dest.mkdir(parents=True, exist_ok=True)
    llama = _llama_requirement() if llama == "auto" else llama
    for cmd in pip_download_commands(dest, requirements, llama):
        log.info("%s", " ".join(cmd))
        res = run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = " | ".join((res.stderr or res.stdout or "").strip().splitlines()[-3:])
            raise BundleError(f"pip download for the aarch64/cp310 wheelhouse failed: {tail}; check the package "
                              "index (pip config list), or pass --no-wheelhouse (the device then needs an index)")
    return sorted(p.name for p in dest.iterdir())


def build_wheel(dest: Path, run: Callable = subprocess.run) -> Path:
    """This checkout as a wheel (``pip wheel --no-deps --no-build-isolation``)."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise BundleError(f"no source checkout at {SOURCE_ROOT}; pass a built wheel with --wheel FILE")
    dest.mkdir(parents=True, exist_ok=True)
    res = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest),
               str(SOURCE_ROOT)], capture_output=True, text=True)
    wheels = sorted(dest.glob("edgebridge-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = " | ".join((res.stderr or "").strip().splitlines()[-3:])
        raise BundleError(f"building the edgebridge wheel failed: {tail}; or pass --wheel FILE")
    return wheels[-1]


# ---------------------------------------------------------------------------------------------- setup

def _commit() -> dict:
    try:
        head = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(SOURCE_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
        if head.returncode == 0:
            return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except OSError:
        pass
    return {"commit": "unknown", "dirty": None}


def _get(d: dict, keys: tuple) -> object:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _set(d: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _file_refs(data: dict, base: Path, prefix: tuple = ()) -> list[tuple[tuple, Path]]:
    """(key path, file) for every string setting naming an existing file (relative to the working directory
    or to the setup's own directory), model settings left out."""
    out = []
    for k, v in data.items():
        keys = prefix + (k,)
        if isinstance(v, dict):
            out += _file_refs(v, base, keys)
        elif isinstance(v, str) and v and keys not in MODEL_KEYS and ("/" in v or "." in v):
            for cand in (Path(v), base / v):
                if cand.is_file():
                    out.append((keys, cand))
                    break
    return out


def _copy(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst.as_posix()


def _expert_files(data: dict, expert: str | None) -> Path:
    from ..runtime.devices import shipped_expert

    model = expert or (_get(data, ("expert", "model")) or "")
    if str(model).endswith(".engine"):
        model = str(Path(model).with_suffix(".onnx"))  # the engine is rebuilt on the device from its ONNX
    path = Path(model) if model else shipped_expert()
    if path is None or not path.is_file() or not path.with_suffix(".json").is_file():
        raise BundleError(f"expert model {path}: no ONNX file with its .json metadata; export one (edge-export "
                          "expert) or pass --expert FILE.onnx")
    return path


def _planner_files(data: dict, vlm: str | None, mmproj: str | None) -> tuple[Path, Path | None]:
    from ..runtime.planner import shipped

    model = vlm or _get(data, ("planner", "model"))
    proj = mmproj or _get(data, ("planner", "options", "mmproj_path"))
    if not model:
        files = shipped.shipped_vlm()
        if files is None:
            raise BundleError(shipped.missing_message())
        model, proj = files[0], proj or files[1]
    model, proj = Path(model), Path(proj) if proj else None
    for p in (model, proj):
        if p is not None and not p.is_file():
            raise BundleError(f"planner file {p} not found; pass --vlm / --mmproj")
    return model, proj


# --------------------------------------------------------------------------------------------- bundle

def make_bundle(config: str, out: Path, *, wheelhouse: bool = True, wheel: Path | None = None, tar: bool = False,
                expert: str | None = None, vlm: str | None = None, mmproj: str | None = None,
                precision: str = "fp16", parity_samples: int = 8, force: bool = False,
                run: Callable = subprocess.run) -> Path:
    """Write the bundle for setup ``config`` into ``out`` (and ``out.tar.gz`` with ``tar``); returns the
    directory (or the tarball). ``run`` runs ``pip`` (tests pass a fake)."""
    from ..calib import toml_io
    from ..config import ConfigError
    from ..runtime.config import load_robot_config, resolve_config
    from .tensorrt_build import input_shapes, record_parity_inputs

    if precision not in ("fp16", "fp32"):
        raise BundleError(f"precision {precision!r}: expected fp16 or fp32")
    try:
        cfg_path = resolve_config(config)
        cfg = load_robot_config(cfg_path)
    except ConfigError as e:
        raise BundleError(f"setup {config}: {e}") from e
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise BundleError(f"{out} exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = toml_io.read(cfg_path)
    t0 = time.monotonic()

    onnx = _expert_files(data, expert)
    _copy(onnx, out / "models/expert/expert.onnx")
    _copy(onnx.with_suffix(".json"), out / "models/expert/expert.json")
    meta = json.loads(onnx.with_suffix(".json").read_text())
    shapes = input_shapes(onnx, meta)
    record_parity_inputs(out / "models/expert/expert.onnx", out / "models/expert/parity_inputs.npz", n=parity_samples)
    model, proj = _planner_files(data, vlm, mmproj)
    _copy(model, out / "models/planner" / model.name)

    # the setup, with every file it names copied in and its path rewritten relative to the bundle root
    files_moved = {}
    for keys, src in _file_refs(data, cfg_path.parent):
        rel = f"config/files/{len(files_moved)}-{src.name}"
        _copy(src, out / rel)
        _set(data, keys, rel)
        files_moved[".".join(keys)] = rel
    _set(data, ("expert", "backend"), "trt")
    _set(data, ("expert", "model"), "engines/expert.engine")
    _set(data, ("planner", "backend"), "gguf")
    _set(data, ("planner", "model"), f"models/planner/{model.name}")
    if proj is not None:
        _copy(proj, out / "models/planner" / proj.name)
        _set(data, ("planner", "options", "mmproj_path"), f"models/planner/{proj.name}")
    if _get(data, ("planner", "options", "n_gpu_layers")) is None:
        _set(data, ("planner", "options", "n_gpu_layers"), -1)  # all layers on the Orin's GPU
    cfg_rel = f"config/{cfg_path.stem}.toml"
    (out / "config").mkdir(exist_ok=True)
    toml_io.write(out / cfg_rel, data, header=f"{cfg.name}: bundled by edge-export bundle from {cfg_path.name}.\n"
                  "Paths are relative to the bundle root (/opt/edgebridge): run edge-run from there.\n"
                  "expert: the TensorRT engine install.sh engines builds; ONNX fallback: models/expert/expert.onnx")

    deploy = SOURCE_ROOT / "deploy"
    if not (deploy / "install.sh").is_file():
        raise BundleError(f"{deploy}/install.sh not found: bundles are made from a source checkout")
    shutil.copytree(deploy, out / "deploy", ignore=shutil.ignore_patterns("install.sh", "__pycache__"))
    shutil.copy2(deploy / "install.sh", out / "install.sh")

    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="edgebridge-wheel-") as tmp:
            whl = build_wheel(Path(tmp), run=run)
            _copy(whl, out / "wheels" / whl.name)
    else:
        whl = Path(wheel)
        if not whl.is_file():
            raise BundleError(f"wheel {whl} not found; build one (pip wheel --no-deps .) or leave --wheel out")
        _copy(whl, out / "wheels" / whl.name)
    extras = ("realsense",) if cfg.camera.driver == "realsense" else ()
    reqs = runtime_requirements(extras)
    if wheelhouse:
        wh = {"python": PYTHON, "platforms": list(PLATFORMS), "requirements": reqs + EXTRA_WHEELS,
              "llama_cpp_python": _llama_requirement(), "build_tools": LLAMA_BUILD_WHEELS,
              "files": fill_wheelhouse(out / "wheelhouse", reqs, run=run)}
    else:
        wh = {"skipped": "--no-wheelhouse: the device installs from a package index", "requirements": reqs}
    wh["from_jetpack"] = FROM_JETPACK

    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size} for rel in bundle_files(out)}
    (out / SUMS).write_text("".join(f"{r['sha256']}  {rel}\n" for rel, r in files.items()))
    manifest = {
        "format": 1, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "edgebridge": {"version": importlib.metadata.version("edgebridge"), **_commit()},
        "built_on": {"machine": platform.machine(), "python": platform.python_version()},
        "target": TARGET,
        "config": {"file": cfg_rel, "name": cfg.name, "source": str(cfg_path), "files": files_moved},
        "expert": {"onnx": "models/expert/expert.onnx", "metadata": "models/expert/expert.json",
                   "inputs": {n: [1, *s] for n, s in shapes.items()}, "dynamic_axis": "batch (dim 0)",
                   "precision": precision, "engine": "engines/expert.engine",
                   "parity_inputs": "models/expert/parity_inputs.npz", "sha256": files["models/expert/expert.onnx"]["sha256"]},
        "planner": {"model": f"models/planner/{model.name}",
                    "mmproj": f"models/planner/{proj.name}" if proj is not None else None},
        "wheel": f"wheels/{whl.name}", "wheelhouse": wh, "install": "install.sh", "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("bundle %s: %d files, %.0f MB, %.1f s", out, len(files), sum(r["bytes"] for r in files.values()) / 1e6,
             time.monotonic() - t0)
    if tar:
        tgz = out.with_name(out.name + ".tar.gz")
        with tarfile.open(tgz, "w:gz") as tf:
            tf.add(out, arcname=out.name)
        return tgz
    return out


def verify(path: Path) -> list[str]:
    """Problems of a bundle directory or ``.tar.gz`` against its manifest (empty: it matches)."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(path) as tf:
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    return [f"{path}: unsafe member {m.name!r}; not a bundle made by edge-export bundle"]
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python < 3.10.12: members were checked above
                tf.extractall(tmp)
            roots = [p for p in Path(tmp).iterdir() if p.is_dir()]
            if len(roots) != 1:
                return [f"{path}: expected one top-level directory, found {len(roots)}"]
            return verify_bundle(roots[0])
    if not path.is_dir():
        return [f"{path}: no such bundle directory or .tar.gz"]
    return verify_bundle(path)
