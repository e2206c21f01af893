"""The LeRobot check environment: a virtual environment of its own with ``lerobot-dataset`` (the library LeRobot
reads data sets with) and the CPU torch, built once and reused (``EDGEBRIDGE_LEROBOT_VENV``, default
``~/.cache/edgebridge/lerobot-venv``).

It stays apart from the project's environment on purpose: ``lerobot-dataset`` pins ``opencv-python-headless<4.13``
(which would shadow the ``calib`` extra's ``opencv-contrib-python-headless``: both install ``cv2``) and
``av<16``, and imports torch and torchvision without declaring them. torch is the project's pin (``torch==2.13.0``,
resolved as the Makefile resolves it); torchvision is the stand-in beside this file (see its docstring).

    python tests/lerobot_format/lerobot_env/build.py      # build (or reuse) and print the interpreter's path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = ("lerobot-dataset==0.4.4", "torch==2.13.0")
STAMP = ".edgebridge-check-env"


def venv_dir() -> Path:
    return Path(os.environ.get("EDGEBRIDGE_LEROBOT_VENV", Path.home() / ".cache" / "edgebridge" / "lerobot-venv"))


def _spec() -> str:
    shim = "".join(p.read_text() for p in sorted((HERE / "torchvision").glob("*.py")))
    return " ".join(REQUIREMENTS) + f" shim:{hashlib.sha1(shim.encode()).hexdigest()[:12]}"


class BuildError(RuntimeError):
    pass


def _run(cmd: list[str], timeout: float) -> None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"`{' '.join(cmd[:4])} ...` took over {timeout:.0f} s") from e
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise BuildError(f"`{' '.join(cmd[:4])} ...` failed (exit {p.returncode}): {tail[0]}")


def ensure(timeout: float = 600.0) -> tuple[Path, float]:
    """The environment's python, and the seconds spent building it (0 when reused). Raises BuildError."""
    root = venv_dir()
    py = root / "bin" / "python"
    stamp = root / STAMP
    if py.exists() and stamp.exists() and stamp.read_text().split("\n")[0] == _spec():
        return py, 0.0
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    base = getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", str(root)], 120)
    _run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS], timeout)
    _run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], 60)  # none expected; never the CUDA one
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shutil.copytree(HERE / "torchvision", Path(site) / "torchvision",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _run([str(py), "-c", "import torch, ledataset.datasets.lerobot_dataset"], 120)
    took = time.monotonic() - t0
    stamp.write_text(f"{_spec()}\nbuilt in {took:.0f} s\n")
    return py, took


if __name__ == "__main__":
    path, took = ensure()
    print(path, f"(built in {took:.0f} s)" if took else "(reused)")
