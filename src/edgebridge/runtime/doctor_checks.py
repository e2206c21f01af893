"""The checks of ``edge-run doctor``: one function per area (platform, L4T, CUDA, TensorRT, ONNX Runtime,
llama.cpp, numba, memory, the bundle, engines, camera, serial ports, limits, power), each returning
:class:`Check` rows (PASS / WARN / FAIL, and the fix) for a :class:`Host`."""

from __future__ import annotations

import grp
import importlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .bundle_manifest import MANIFEST, verify_bundle
from .power import describe_power, jetson_release, read_power_mode

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
MIN_FREE_MB = {FAIL: 1024, WARN: 2048}
INSTALL_PTH = "./install.sh venv (the venv sees JetPack's TensorRT through a .pth file)"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Host:
    """Where the checks look: ``root`` for /etc, /proc, /sys and /dev; the machine and Python version."""

    root: Path = Path("/")
    machine: str = field(default_factory=platform.machine)
    python: tuple = tuple(sys.version_info[:3])
    run: Callable = subprocess.run

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")


def _import(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as e:  # a stub or a broken native library raises more than ImportError
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def check_platform(h: Host) -> list[Check]:
    py = ".".join(str(x) for x in h.python)
    return [Check("platform", PASS, h.machine) if h.machine == "aarch64" else
            Check("platform", FAIL, f"{h.machine}: not a Jetson Orin (aarch64)",
                  "run the device install on the Orin; a development machine fails this check by design"),
            Check("python", PASS, py) if tuple(h.python[:2]) == (3, 10) else
            Check("python", WARN, f"{py}; JetPack 6's TensorRT bindings are built for Python 3.10",
                  "create the venv with python3.10 (./install.sh venv)")]


def check_l4t(h: Host) -> tuple[list[Check], dict]:
    rel = jetson_release(h.root)
    if not rel:
        return [Check("L4T / JetPack", FAIL, "no /etc/nv_tegra_release: not a Jetson running L4T",
                      "flash JetPack 6 (L4T r36.x) with NVIDIA SDK Manager")], rel
    if rel.get("major") != 36:
        return [Check("L4T / JetPack", FAIL, f"L4T {rel.get('l4t', rel.get('raw'))}; edgebridge needs r36.x (JetPack 6)",
                      "flash JetPack 6.0 or later")], rel
    return [Check("L4T / JetPack", PASS, f"L4T {rel['l4t']} = JetPack {rel.get('jetpack', '?')} (CUDA "
                  f"{rel.get('cuda', '?')}, TensorRT {rel.get('tensorrt', '?')}){', ' + rel['model'] if rel.get('model') else ''}")], rel


def check_cuda(h: Host) -> list[Check]:
    out = []
    nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if h.path(p).is_file()), None)
    if nvcc:
        try:
            text = h.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
            m = re.search(r"release ([0-9.]+)", text or "")
            out.append(Check("nvcc", PASS, f"{nvcc} (CUDA {m.group(1) if m else '?'})"))
        except (OSError, subprocess.SubprocessError) as e:
            out.append(Check("nvcc", WARN, f"{nvcc} does not run ({e})", "reinstall the CUDA toolkit (nvidia-jetpack)"))
    else:
        out.append(Check("nvcc", FAIL, "not found (needed to build llama.cpp with CUDA)",
                         "sudo apt install nvidia-jetpack (or cuda-toolkit-12-x); it installs /usr/local/cuda/bin/nvcc"))
    from .expert.cuda_mem import _cudart

    cudart = _cudart()
    if cudart is None:
        out.append(Check("CUDA bindings", FAIL, "cuda-python does not import (TensorRT's device buffers)",
                         "pip install cuda-python (it is in the bundle's wheelhouse)"))
        return out
    try:
        err, n = cudart.cudaGetDeviceCount()
        ok = int(err) == 0 and int(n) > 0
        detail = f"cuda-python: {int(n)} CUDA device(s)" if ok else f"cuda-python: no CUDA device ({err})"
    except Exception as e:
        ok, detail = False, f"cuda-python: cudaGetDeviceCount failed ({type(e).__name__}: {e})"
    out.append(Check("CUDA device", PASS if ok else FAIL, detail, "" if ok else
                     "a CUDA device and driver are needed: on the Orin add the user to the video group; in a "
                     "container run with --runtime nvidia"))
    return out


def check_tensorrt(rel: dict) -> list[Check]:
    trt, err = _import("tensorrt")
    if trt is None:
        return [Check("TensorRT", FAIL, f"the tensorrt module does not import ({err})",
                      f"sudo apt install python3-libnvinfer (JetPack), then {INSTALL_PTH}")]
    ver = str(getattr(trt, "__version__", "?"))
    want = rel.get("tensorrt")
    if want and not ver.startswith(want):
        return [Check("TensorRT", WARN, f"{ver}; L4T {rel.get('l4t')} ships {want}",
                      "use JetPack's own TensorRT (python3-libnvinfer), not a pip wheel")]
    return [Check("TensorRT", PASS, ver)]


def check_onnxruntime() -> list[Check]:
    ort, err = _import("onnxruntime")
    if ort is None:
        return [Check("onnxruntime", FAIL, f"does not import ({err})", "pip install onnxruntime (in the wheelhouse)")]
    prov = ort.get_available_providers()
    gpu = [p for p in prov if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    if gpu:
        return [Check("onnxruntime", PASS, f"{ort.__version__}: {', '.join(prov)}")]
    return [Check("onnxruntime", WARN, f"{ort.__version__}: {', '.join(prov)} only",
                  "optional: onnxruntime-gpu from the Jetson AI Lab index for the CUDA/TensorRT providers; the "
                  "TensorRT engine backend (expert.backend = trt) does not need it")]


def check_llama() -> list[Check]:
    llama, err = _import("llama_cpp")
    if llama is None:
        return [Check("llama.cpp", FAIL, f"llama_cpp does not import ({err})",
                      "./install.sh llama (builds llama-cpp-python with CUDA for sm_87)")]
    gpu = bool(llama.llama_supports_gpu_offload())
    out = [Check("llama.cpp GPU offload", PASS if gpu else FAIL,
                 f"llama-cpp-python {llama.__version__}: " + ("CUDA build" if gpu else "CPU-only build"),
                 "" if gpu else 'rebuild: CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87" '
                 "CUDACXX=/usr/local/cuda/bin/nvcc (./install.sh llama)")]
    mtmd, err = _import("llama_cpp.mtmd_cpp")
    out.append(Check("llama.cpp mtmd", PASS if mtmd is not None else FAIL,
                     "libmtmd loads (vision projector)" if mtmd is not None else f"no multimodal library ({err})",
                     "" if mtmd is not None else "rebuild llama-cpp-python with -DLLAVA_BUILD=on (./install.sh llama)"))
    return out


def check_numba() -> list[Check]:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return [Check("numba.cuda", WARN, "NUMBA_ENABLE_CUDASIM=1: the CUDA simulator, not the GPU",
                      "unset NUMBA_ENABLE_CUDASIM")]
    cuda, err = _import("numba.cuda")
    if cuda is None:
        return [Check("numba.cuda", FAIL, f"does not import ({err})", "pip install numba (in the wheelhouse)")]
    try:
        ok = bool(cuda.is_available())
    except Exception as e:  # pragma: no cover - driver faults
        ok, err = False, str(e)
    return [Check("numba.cuda", PASS if ok else FAIL, "a CUDA GPU is available" if ok else
                  "no CUDA GPU for numba (kernels run on the CPU)",
                  "" if ok else "on the Orin: CUDA from JetPack; numba finds libcudart under /usr/local/cuda")]


def check_memory(h: Host) -> list[Check]:
    try:
        info = dict(re.findall(r"^(\w+):\s+(\d+) kB", h.path("/proc/meminfo").read_text(), re.M))
        free, total = int(info["MemAvailable"]) / 1024, int(info["MemTotal"]) / 1024
    except (OSError, KeyError) as e:
        return [Check("memory", WARN, f"/proc/meminfo unreadable ({e})")]
    status = FAIL if free < MIN_FREE_MB[FAIL] else WARN if free < MIN_FREE_MB[WARN] else PASS
    return [Check("memory", status, f"{free:,.0f} MB available of {total:,.0f} MB", "" if status == PASS else
                  "stop other GPU/CPU users (a desktop session: sudo systemctl set-default multi-user.target)")]


def check_bundle(bundle: Path | None, h: Host) -> list[Check]:
    if bundle is None:
        return [Check("bundle", WARN, "no bundle given or found at /opt/edgebridge", "pass --bundle DIR")]
    problems = verify_bundle(bundle)
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        return [Check("bundle", FAIL, f"{bundle}: " + "; ".join(problems[:4]) + more,
                      "copy the bundle again (edge-export bundle --verify on the build machine)")]
    m = json.loads((bundle / MANIFEST).read_text())
    return [Check("bundle", PASS, f"{bundle}: {len(m.get('files', {}))} files match the manifest (edgebridge "
                  f"{m.get('edgebridge', {}).get('version')} {str(m.get('edgebridge', {}).get('commit'))[:12]})")]


def check_engines(engines: list[Path]) -> list[Check]:
    if not engines:
        return [Check("engines", WARN, "no TensorRT engine built yet", "./install.sh engines (or edge-export engine)")]
    from .expert.tensorrt import current_device, describe_device, engine_mismatch

    here = current_device()
    out = []
    for e in engines:
        try:
            rec = json.loads(e.with_suffix(".json").read_text()).get("engine") or {}
        except (OSError, json.JSONDecodeError) as err:
            out.append(Check(f"engine {e.name}", FAIL, f"no readable metadata next to it ({err})",
                             "rebuild it: ./install.sh engines"))
            continue
        built = {**(rec.get("device") or {}), **({"tensorrt": rec["tensorrt"]} if rec.get("tensorrt") else {})}
        if not e.is_file():
            out.append(Check(f"engine {e.name}", FAIL, f"{e} missing", "./install.sh engines"))
        elif diffs := engine_mismatch(built, here):
            out.append(Check(f"engine {e.name}", FAIL, "; ".join(diffs), "rebuild it here: ./install.sh engines"))
        else:
            par = rec.get("parity") or {}
            extra = f", parity {par['max_abs_err']:.2g} vs ORT" if "max_abs_err" in par else ", no parity check yet"
            out.append(Check(f"engine {e.name}", PASS, f"built for {describe_device(built)}{extra}"))
    return out


def check_camera(cfg) -> list[Check]:
    need = cfg is not None and cfg.camera.driver == "realsense"
    rs, err = _import("pyrealsense2")
    if rs is None:
        return [Check("camera", FAIL if need else WARN, f"pyrealsense2 does not import ({err})",
                      "pip install pyrealsense2 (wheelhouse); apt install libusb-1.0-0")]
    try:
        devs = [(d.get_info(rs.camera_info.name), d.get_info(rs.camera_info.serial_number))
                for d in rs.context().query_devices()]
    except Exception as e:
        return [Check("camera", FAIL if need else WARN, f"librealsense: {e}", "replug the camera; udev rules installed?")]
    if devs:
        return [Check("camera", PASS, ", ".join(f"{n} #{s}" for n, s in devs))]
    return [Check("camera", FAIL if need else WARN, "no RealSense camera found",
                  "plug it into a USB 3 port; install deploy/udev/99-edgebridge-realsense.rules (./install.sh system)")]


def check_serial(cfg, h: Host) -> list[Check]:
    ports = sorted({*h.root.glob("dev/ttyUSB*"), *h.root.glob("dev/ttyACM*"), *h.root.glob("dev/edgebridge-*")})
    want = (cfg.arm.options.get("port") if cfg is not None and cfg.arm.driver.endswith("serial") else None)
    out = []
    try:
        dialout = grp.getgrnam("dialout").gr_gid in os.getgroups()
    except KeyError:
        dialout = None
    if want:
        p = h.path(want)
        if not p.exists():
            out.append(Check("serial port", FAIL, f"{want} (arm.options.port) does not exist; present: "
                             f"{', '.join('/' + x.relative_to(h.root).as_posix() for x in ports) or 'none'}",
                             "plug the bus adapter in; the udev rule links it as /dev/edgebridge-arm"))
        elif not os.access(p, os.R_OK | os.W_OK):
            out.append(Check("serial port", FAIL, f"{want}: no read/write permission",
                             "sudo usermod -aG dialout $USER and log in again (the service has it)"))
        else:
            out.append(Check("serial port", PASS, f"{want} read/write"))
    else:
        out.append(Check("serial ports", PASS if ports else WARN,
                         ", ".join("/" + x.relative_to(h.root).as_posix() for x in ports) or "none",
                         "" if ports else "plug the arm's bus adapter in (not needed for a Franka)"))
    if dialout is False:
        out.append(Check("dialout group", WARN, "this user is not in dialout", "sudo usermod -aG dialout $USER"))
    for lat in sorted(h.root.glob("sys/bus/usb-serial/devices/*/latency_timer")):
        v = lat.read_text().strip()
        out.append(Check(f"FTDI latency {lat.parent.name}", PASS if v == "1" else WARN, f"{v} ms",
                         "" if v == "1" else "the udev rule 99-edgebridge-serial.rules sets 1 ms (./install.sh system)"))
    return out


def check_limits(cfg) -> list[Check]:
    prio = cfg.loop.realtime_priority if cfg is not None else 50
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    ok = prio == 0 or soft == resource.RLIM_INFINITY or soft >= prio or os.geteuid() == 0
    mem, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    mem_ok = mem == resource.RLIM_INFINITY or os.geteuid() == 0
    fix = "run as edgebridge.service (LimitRTPRIO=95, LimitMEMLOCK=infinity) or add to /etc/security/limits.d"
    return [Check("RT priority", PASS if ok else WARN, f"RLIMIT_RTPRIO {soft}; the loop asks SCHED_FIFO {prio}",
                  "" if ok else fix),
            Check("memlock", PASS if mem_ok else WARN, "unlimited" if mem == resource.RLIM_INFINITY else f"{mem} bytes",
                  "" if mem_ok else fix)]


def check_power(h: Host) -> tuple[list[Check], dict]:
    state = read_power_mode(h.root, h.run)
    if not state:
        return [Check("power mode", WARN, "not a Jetson: no nvpmodel", "")], state
    mode = (state.get("nvpmodel") or {}).get("name") or "unknown"
    fix = "sudo nvpmodel -m 0 && sudo jetson_clocks, or: sudo systemctl enable --now edgebridge-power.service"
    return [Check("power mode", PASS if mode.startswith("MAXN") else WARN, describe_power(state),
                  "" if mode.startswith("MAXN") else fix),
            Check("clocks", PASS if state.get("jetson_clocks") else WARN,
                  "pinned at maximum (jetson_clocks)" if state.get("jetson_clocks") else "not pinned: latencies vary",
                  "" if state.get("jetson_clocks") else fix)], state

