# edgebridge: `make run` runs the embedded default (simulated arm + camera), `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PIN := torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run test test-fast bench weights planner bundle clean sysdeps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# The demo needs the runtime, the simulator and llama.cpp (the planner VLM; pip compiles it once, ~7 min,
# and caches the wheel): no torch.
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[sim,vlm]'
	touch $@

# The test suite needs everything. torch is pinned first so the `torch>=2.4` range is already satisfied
# by the CPU build (a bare range would pull a multi-GB CUDA build).
$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

# pyrealsense2 needs libusb at import time (Debian: libusb-1.0-0); the install tests configure CMake and verify
# the systemd units (Debian: cmake, systemd). Best effort: a missing tool skips its tests, naming it.
SYSDEPS := libusb-1.0-0 cmake systemd
sysdeps:
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing="$$missing libusb-1.0-0"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -z "$$missing" ] || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1)) ; } || \
	  echo "warning: missing$$missing; their tests will be skipped (apt-get install$$missing)"

run: $(VENV)/.run-installed
	$(VENV)/bin/edge-run

test: sysdeps $(VENV)/.dev-installed
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q tests

# The suite without the tests marked slow (@pytest.mark.slow: over ~10 s each).
test-fast: sysdeps $(VENV)/.dev-installed
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m "not slow" tests

bench: $(VENV)/.dev-installed
	$(PY) benchmarks/run_all.py

# The shipped expert from scratch: demonstrations of the five sim tasks, APPF, export. NPROC=2 trains under
# torchrun (DDP, the batch sizes staying global); the time of each step is recorded in expert.json.
NPROC ?= 1
weights: $(VENV)/.dev-installed
	$(PY) -m edgebridge.train.make_weights --nproc $(NPROC)

# The planner VLM from scratch: pointing scenes from the simulator, SFT under torchrun (2 processes), export to
# GGUF (LM + vision projector) with parity checks, then the shipped copies in assets/planner.
PLANNER_SCENES ?= 6000
PLANNER_STEPS  ?= 2800
planner: $(VENV)/.dev-installed
	$(VENV)/bin/edge-sim pointing --tasks all --scenes $(PLANNER_SCENES) --out build/pointing --jobs 2 --resume
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --nproc-per-node 2 -m edgebridge.train.planner --data build/pointing \
	  --run-dir build/planner-run --steps $(PLANNER_STEPS) --threads 1
	$(VENV)/bin/edge-export vlm --trained build/planner-run --out build/planner
	cp build/planner/vlm-Q8_0.gguf src/edgebridge/assets/planner/vlm.gguf
	cp build/planner/vlm-mmproj-f16.gguf src/edgebridge/assets/planner/vlm-mmproj.gguf
	cp build/planner/parity.json src/edgebridge/assets/planner/vlm-parity.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# The Jetson bundle of a setup (expert ONNX, planner GGUF, setup, wheel, aarch64 wheelhouse, manifest): docs/jetson.md.
SETUP ?= so101_serial
bundle: $(VENV)/.dev-installed
	$(VENV)/bin/edge-export bundle --config $(SETUP) --out build/bundle --tar
