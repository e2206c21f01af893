"""Jetson platform facts: the L4T release (and the JetPack it implies), the power mode and the clocks.

Everything here reads files and, for the power mode, asks ``nvpmodel -q``; nothing changes a setting.
Off a Jetson every reader returns ``{}``, so a profile or a report can always include the result.

* :func:`jetson_release` parses ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...``):
  L4T r36.2 / r36.3 is JetPack 6.0 (CUDA 12.2, TensorRT 8.6), r36.4 is JetPack 6.1 / 6.2 (CUDA 12.6,
  TensorRT 10.3). All of JetPack 6 ships Python 3.10.
* :func:`read_power_mode` gives the nvpmodel mode (id and name), the CPU, GPU and EMC clocks (current,
  min, max) and whether ``jetson_clocks`` has pinned them at their maximum: what a latency figure
  measured on a Jetson means depends on all of these, so every profile records them.

``root`` (default ``/``) lets tests point the readers at a fake file tree.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

RELEASE_FILE = "etc/nv_tegra_release"
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
NVPMODEL_CONF = "etc/nvpmodel.conf"
NVPMODEL = "/usr/sbin/nvpmodel"
_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")
_MODE_RE = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>")

# L4T r36 revision -> the JetPack, CUDA and TensorRT it ships (NVIDIA's JetPack 6 release notes).
JETPACK6 = ((4, {"jetpack": "6.1+", "cuda": "12.6", "tensorrt": "10.3"}),
            (2, {"jetpack": "6.0", "cuda": "12.2", "tensorrt": "8.6"}))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def jetson_release(root: Path | str = "/") -> dict:
    """``{"l4t": "36.4.0", "major": 36, "revision": "4.0", "jetpack", "cuda", "tensorrt", "model"}``;
    ``{}`` when ``/etc/nv_tegra_release`` is absent or unreadable (not a Jetson)."""
    root = Path(root)
    text = _read(root / RELEASE_FILE)
    if not text:
        return {}
    m = _RELEASE_RE.search(text.splitlines()[0])
    if not m:
        log.warning("%s: unrecognised first line %r", root / RELEASE_FILE, text.splitlines()[0][:80])
        return {"raw": text.splitlines()[0][:200]}
    major, revision = int(m.group(1)), m.group(2)
    parts = (revision.split(".") + ["0", "0"])[:2]
    out = {"l4t": f"{major}.{parts[0]}.{parts[1]}", "major": major, "revision": revision}
    if major == 36:
        minor = int(parts[0]) if parts[0].isdigit() else 0
        for first, facts in JETPACK6:
            if minor >= first:
                out.update(facts)
                break
    model = _read(root / "proc/device-tree/model")
    if model:
        out["model"] = model.rstrip("\x00")
    return out


def _nvpmodel(root: Path, run: Callable) -> dict:
    """The current mode: ``nvpmodel -q`` (``NV Power Mode: MAXN`` then the id), else the status file
    nvpmodel keeps (``pmode:0000``) with the name from ``/etc/nvpmodel.conf``."""
    try:
        res = run([NVPMODEL, "-q"], capture_output=True, text=True, timeout=5)
        lines = [ln.strip() for ln in (res.stdout or "").splitlines() if ln.strip()]
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("NV Power Mode")), None)
        ident = next((int(ln) for ln in lines if ln.isdigit()), None)
        if res.returncode == 0 and name is not None:
            return {"name": name, "id": ident, "source": "nvpmodel -q"}
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("nvpmodel -q: %s", e)
    status = _read(root / NVPMODEL_STATUS)
    m = re.search(r"pmode:(\d+)", status or "")
    if not m:
        return {}
    ident = int(m.group(1))
    names = dict((int(i), n) for i, n in _MODE_RE.findall(_read(root / NVPMODEL_CONF) or ""))
    return {"name": names.get(ident), "id": ident, "source": str(root / NVPMODEL_STATUS)}


def _cpu_clocks(root: Path) -> dict:
    base = root / "sys/devices/system/cpu"
    cpus = sorted((p for p in base.glob("cpu[0-9]*") if (p / "cpufreq").is_dir()),
                  key=lambda p: int(p.name[3:]))
    if not cpus:
        return {}
    rows = []
    for cpu in cpus:
        f = cpu / "cpufreq"
        rows.append({"cpu": int(cpu.name[3:]), "cur_khz": _read_int(f / "scaling_cur_freq"),
                     "min_khz": _read_int(f / "scaling_min_freq"), "max_khz": _read_int(f / "scaling_max_freq"),
                     "hw_max_khz": _read_int(f / "cpuinfo_max_freq"), "governor": _read(f / "scaling_governor")})
    return {"online": _read(base / "online"), "cpus": rows,
            "governors": sorted({r["governor"] for r in rows if r["governor"]})}


def _gpu_clocks(root: Path) -> dict:
    """The GPU's devfreq node (``17000000.gpu`` on JetPack 6, ``17000000.ga10b`` on older releases)."""
    nodes = sorted(p for p in (root / "sys/class/devfreq").glob("*") if "gpu" in p.name or "ga10b" in p.name)
    if not nodes:
        return {}
    d = nodes[0]
    return {"node": d.name, "cur_hz": _read_int(d / "cur_freq"), "min_hz": _read_int(d / "min_freq"),
            "max_hz": _read_int(d / "max_freq"), "governor": _read(d / "governor")}


def _emc_clock(root: Path) -> dict:
    rate = _read_int(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate")  # readable by root only
    return {"cur_hz": rate} if rate is not None else {}


def _pinned(cpu: dict, gpu: dict) -> bool | None:
    """jetson_clocks sets every CPU's and the GPU's minimum clock to its maximum."""
    rows = cpu.get("cpus") or []
    if not rows or any(r["min_khz"] is None or r["max_khz"] is None for r in rows):
        return None
    cpu_pinned = all(r["min_khz"] == r["max_khz"] for r in rows)
    if gpu.get("min_hz") is not None and gpu.get("max_hz") is not None:
        return cpu_pinned and gpu["min_hz"] == gpu["max_hz"]
    return cpu_pinned


def read_power_mode(root: Path | str = "/", run: Callable = subprocess.run) -> dict:
    """The power state of a Jetson (``{}`` elsewhere): ``nvpmodel`` (``id``, ``name``), ``jetson_clocks``
    (True when the CPU and GPU minimum clocks are pinned at their maximum, None when unreadable),
    ``cpu`` / ``gpu`` / ``emc`` clocks, ``l4t`` and ``model``. Never raises on a missing file."""
    root = Path(root)
    release = jetson_release(root)
    if not release:
        return {}
    cpu, gpu = _cpu_clocks(root), _gpu_clocks(root)
    out = {"l4t": release.get("l4t"), "jetpack": release.get("jetpack"), "model": release.get("model"),
           "nvpmodel": _nvpmodel(root, run), "jetson_clocks": _pinned(cpu, gpu), "cpu": cpu, "gpu": gpu,
           "emc": _emc_clock(root)}
    return out


def describe_power(state: dict) -> str:
    """One line for a report: ``MAXN (mode 0), jetson_clocks on, GPU 1300 MHz``; ``not a Jetson``."""
    if not state:
        return "not a Jetson (no power mode)"
    mode = state.get("nvpmodel") or {}
    name = mode.get("name") or "unknown mode"
    parts = [f"{name} (mode {mode.get('id')})" if mode.get("id") is not None else name]
    pinned = state.get("jetson_clocks")
    parts.append("jetson_clocks " + {True: "on", False: "off", None: "unknown"}[pinned])
    gpu = state.get("gpu") or {}
    if gpu.get("cur_hz"):
        parts.append(f"GPU {gpu['cur_hz'] / 1e6:.0f} MHz")
    return ", ".join(parts)
