#!/usr/bin/env bash
# edgebridge device install for a Jetson Orin: JetPack 6 (L4T r36.x), Python 3.10, CUDA, TensorRT 8.6 / 10.x.
#
#   sudo ./install.sh                # all steps: preflight verify venv llama engines system
#   ./install.sh preflight           # only check this machine (no root needed)
#   sudo ./install.sh engines        # rebuild the TensorRT engines (after a JetPack upgrade)
#
# Steps
#   preflight  aarch64, /etc/nv_tegra_release r36.x, Python 3.10, nvcc; refuses with what it found and what it needs
#   verify     the bundle's files against SHA256SUMS (coreutils; before anything is installed)
#   venv       PREFIX/venv with JetPack's TensorRT bindings on its path (a .pth file), edgebridge and its
#              dependencies from the bundle's wheels (offline) or, from a checkout, the package index
#   llama      llama-cpp-python compiled with CUDA for sm_87, multimodal library (mtmd) on; refuses a CPU-only result
#   engines    the TensorRT engine of the action expert (edge-export engine: FP16, timing cache, parity vs ONNX Runtime)
#   system     user edgebridge, systemd units, udev rules, /etc/edgebridge/edgebridge.env (root)
#
# Run from an unpacked bundle (edge-export bundle) it installs into the bundle's own directory, offline.
# Run as deploy/install.sh from a source checkout (what CMake's targets do) it installs the checkout.
#
# Environment
#   EDGEBRIDGE_PREFIX       install root (default: the bundle directory; from a checkout /opt/edgebridge)
#   EDGEBRIDGE_PYTHON       the Python 3.10 interpreter (default python3.10)
#   EDGEBRIDGE_LLAMA=0      skip the llama.cpp CUDA build
#   EDGEBRIDGE_WHEELHOUSE   offline wheels for a checkout install (default: the package index)
#   EDGEBRIDGE_ENGINE_ARGS  more arguments for edge-export engine (e.g. "--builder trtexec --workspace-mb 512")
#   EDGEBRIDGE_RELEASE_FILE, EDGEBRIDGE_ARCH, EDGEBRIDGE_NVCC: what preflight reads (default: this machine's)
# Exit status: 0 done, 1 a step failed, 2 usage, 3 preflight refused this machine.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -f "$SELF_DIR/manifest.json" ]; then
  MODE=bundle; ROOT=$SELF_DIR; DEPLOY=$SELF_DIR/deploy; PREFIX=${EDGEBRIDGE_PREFIX:-$SELF_DIR}
else
  MODE=source; ROOT=$(cd "$SELF_DIR/.." && pwd); DEPLOY=$SELF_DIR; PREFIX=${EDGEBRIDGE_PREFIX:-/opt/edgebridge}
fi
VENV=$PREFIX/venv
CUDA_ARCH=87

say()  { printf 'install.sh: %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die()  { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "step $1 needs root: sudo $0 $1"; }
python_bin() { echo "${EDGEBRIDGE_PYTHON:-python3.10}"; }
manifest_get() {  # manifest_get KEY.PATH -> value (lists one per line); empty when absent
  local py=$VENV/bin/python
  [ -x "$py" ] || py=$(python_bin)
  "$py" - "$ROOT/manifest.json" "$1" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("\n".join(v) if isinstance(v, list) else ("" if v is None else v))
EOF
}

preflight() {
  local refused=() arch rel line major rev py pyver nvcc cudaver jp=""
  arch=${EDGEBRIDGE_ARCH:-$(uname -m)}
  [ "$arch" = aarch64 ] || refused+=("architecture $arch; the device install needs aarch64 (a Jetson Orin)")
  rel=${EDGEBRIDGE_RELEASE_FILE:-/etc/nv_tegra_release}
  if [ ! -r "$rel" ]; then
    refused+=("no $rel: not a Jetson running L4T; flash JetPack 6 (L4T r36.x)")
  else
    line=$(head -n 1 "$rel")
    major=$(sed -n 's/^# *R\([0-9][0-9]*\) (release).*/\1/p' <<<"$line")
    rev=$(sed -n 's/.*REVISION: *\([0-9.][0-9.]*\).*/\1/p' <<<"$line")
    if [ "$major" != 36 ]; then
      refused+=("L4T R${major:-?}.${rev:-?} in $rel; needs r36.x (JetPack 6.0 or later): reflash with SDK Manager")
    else
      case "$rev" in
        2.*|3.*) jp="JetPack 6.0 (CUDA 12.2, TensorRT 8.6)" ;;
        0.*|1.*) refused+=("L4T R36.$rev is a JetPack 6 developer preview; needs r36.2 or later") ;;
        *) jp="JetPack 6.1+ (CUDA 12.6, TensorRT 10.3)" ;;
      esac
    fi
  fi
  py=$(python_bin)
  pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "none")
  [ "$pyver" = 3.10 ] || refused+=("Python $pyver at $py; needs 3.10 (JetPack 6's TensorRT bindings): sudo apt install python3.10-venv")
  nvcc=${EDGEBRIDGE_NVCC:-${CUDACXX:-/usr/local/cuda/bin/nvcc}}
  if [ -x "$nvcc" ]; then
    cudaver=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.][0-9.]*\).*/\1/p')
  else
    refused+=("no nvcc at $nvcc; needs the CUDA toolkit: sudo apt install nvidia-jetpack")
  fi
  if [ ${#refused[@]} -gt 0 ]; then
    for r in "${refused[@]}"; do printf 'preflight: refused: %s\n' "$r" >&2; done
    return 3
  fi
  say "preflight ok: aarch64, L4T R36.$rev = $jp, Python $pyver, nvcc ${cudaver:-?}"
}

step_verify() {
  if [ "$MODE" != bundle ]; then say "verify: not a bundle, nothing to check"; return 0; fi
  (cd "$ROOT" && sha256sum --quiet --strict -c SHA256SUMS) || die "verify: the files above differ from the bundle's SHA256SUMS; copy the bundle again"
  say "verify: every file matches SHA256SUMS"
}

link_tensorrt() {  # a directory of links to JetPack's TensorRT packages only, put on the venv's path by a .pth file
  local site jp found=0 d pkg
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  jp=$VENV/jetpack-site
  mkdir -p "$jp"
  for d in /usr/lib/python3.10/dist-packages /usr/lib/python3/dist-packages; do
    for pkg in "$d"/tensorrt "$d"/tensorrt_lean "$d"/tensorrt_dispatch "$d"/tensorrt-*.dist-info "$d"/tensorrt*.egg-info; do
      if [ -e "$pkg" ]; then ln -sfn "$pkg" "$jp/$(basename "$pkg")"; found=1; fi
    done
  done
  echo "$jp" > "$site/jetpack-tensorrt.pth"
  [ $found = 1 ] || warn "JetPack's TensorRT Python bindings not found: sudo apt install python3-libnvinfer, then $0 venv"
}

step_venv() {
  local py whl reqs=()
  py=$(python_bin)
  mkdir -p "$PREFIX"
  "$py" -m venv "$VENV"
  link_tensorrt
  if [ "$MODE" = bundle ]; then
    whl=$(ls "$ROOT"/wheels/edgebridge-*.whl | head -n 1)
    mapfile -t reqs < <(manifest_get wheelhouse.requirements)
    if [ -d "$ROOT/wheelhouse" ]; then
      "$VENV/bin/python" -m pip install --no-index --find-links "$ROOT/wheelhouse" "$whl" "${reqs[@]}"
    else
      warn "the bundle has no wheelhouse (--no-wheelhouse): installing from the package index"
      "$VENV/bin/python" -m pip install "$whl" "${reqs[@]}"
    fi
  else
    local src=("$ROOT[realsense]" "cuda-python>=12.2,<13" pytest pytest-timeout hypothesis)
    if [ -n "${EDGEBRIDGE_WHEELHOUSE:-}" ]; then
      "$VENV/bin/python" -m pip install --no-index --find-links "$EDGEBRIDGE_WHEELHOUSE" "${src[@]}"
    else
      "$VENV/bin/python" -m pip install "${src[@]}"
    fi
  fi
  "$VENV/bin/python" -c 'import edgebridge' || die "venv: edgebridge does not import in $VENV"
  say "venv: $VENV ($("$VENV/bin/python" -V 2>&1))"
}

step_llama() {
  if [ "${EDGEBRIDGE_LLAMA:-1}" = 0 ]; then say "llama: skipped (EDGEBRIDGE_LLAMA=0)"; return 0; fi
  export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}  # without it the build can fall back to the CPU silently
  export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DLLAVA_BUILD=on ${EDGEBRIDGE_LLAMA_CMAKE_ARGS:-}"
  export FORCE_CMAKE=1
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  "$VENV/bin/python" -m pip uninstall -y -q llama-cpp-python >/dev/null 2>&1 || true
  local sdist
  sdist=$(ls "$ROOT"/wheelhouse/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1 || true)
  say "llama: compiling llama-cpp-python with CUDA for sm_$CUDA_ARCH (20-40 min on an Orin)"
  if [ -n "$sdist" ]; then
    "$VENV/bin/python" -m pip install --no-index --find-links "$ROOT/wheelhouse" --no-cache-dir "$sdist"
  else
    "$VENV/bin/python" -m pip install --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python>=0.3.8"
  fi
  "$VENV/bin/python" - <<'EOF' || die "llama: the build has no CUDA offload or no mtmd library (check CUDACXX and the build log above)"
import sys
import llama_cpp
import llama_cpp.mtmd_cpp  # noqa: F401  (loads libmtmd: the vision projector path)
sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)
EOF
  say "llama: CUDA offload and mtmd available"
}

step_engines() {
  local onnx parity="" prec=""
  if [ "$MODE" = bundle ]; then
    onnx=$ROOT/models/expert/expert.onnx
    parity=$ROOT/models/expert/parity_inputs.npz
    [ "$(manifest_get expert.precision)" = fp32 ] && prec=--fp32
  else
    onnx=$("$VENV/bin/python" -c 'from edgebridge.runtime.devices import shipped_expert; print(shipped_expert() or "")')
    [ -n "$onnx" ] || die "engines: no shipped expert ONNX in this checkout (make weights)"
  fi
  mkdir -p "$PREFIX/engines"
  # shellcheck disable=SC2086
  "$VENV/bin/edge-export" engine "$onnx" --out "$PREFIX/engines/expert.engine" \
    --timing-cache "$PREFIX/engines/timing.cache" ${parity:+--parity "$parity"} $prec ${EDGEBRIDGE_ENGINE_ARGS:-}
}

step_system() {
  need_root system
  local g cfg=""
  id edgebridge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edgebridge --shell /usr/sbin/nologin edgebridge
  for g in dialout video plugdev render; do
    getent group "$g" >/dev/null && usermod -aG "$g" edgebridge
  done
  if [ "$PREFIX" != /opt/edgebridge ] && [ ! -e /opt/edgebridge ]; then ln -s "$PREFIX" /opt/edgebridge; fi
  install -m 0644 "$DEPLOY"/systemd/*.service /etc/systemd/system/
  install -m 0644 "$DEPLOY"/udev/*.rules /etc/udev/rules.d/
  install -d /etc/edgebridge
  [ "$MODE" = bundle ] && cfg=$(manifest_get config.file)
  if [ ! -f /etc/edgebridge/edgebridge.env ]; then
    sed "s|^EDGEBRIDGE_CONFIG=.*|EDGEBRIDGE_CONFIG=${cfg:-config/setup.toml}|" "$DEPLOY/edgebridge.env" > /etc/edgebridge/edgebridge.env
  fi
  systemctl daemon-reload
  udevadm control --reload-rules && udevadm trigger --subsystem-match=tty --subsystem-match=usb || true
  systemctl enable edgebridge-power.service
  say "system: units and udev rules installed; edit /etc/edgebridge/edgebridge.env, then: sudo systemctl enable --now edgebridge.service"
}

main() {
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(all)
  [ "${steps[0]}" = all ] && steps=(preflight verify venv llama engines system)
  for s in "${steps[@]}"; do
    case "$s" in
      preflight) preflight || exit $? ;;
      verify|venv|llama|engines|system) "step_$s" ;;
      -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) printf 'install.sh: unknown step %s (preflight verify venv llama engines system all)\n' "$s" >&2; exit 2 ;;
    esac
  done
}

main "$@"
