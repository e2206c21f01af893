#!/usr/bin/env bash
# The container's entrypoint: build the TensorRT engines on the first start (they need the GPU, which
# `docker build` does not have; a volume on /opt/edgebridge/engines keeps them), then run edge-run.
#   docker run ... edgebridge doctor [--json FILE]   -> edge-run's readiness checks instead of a run
set -euo pipefail
cd /opt/edgebridge
case "${1:-}" in
  doctor) shift; exec venv/bin/python -m edgebridge.runtime.doctor --bundle /opt/edgebridge "$@" ;;
  -h|--help) exec venv/bin/edge-run --help ;;
esac
if [ ! -f engines/expert.engine ]; then
  ./install.sh engines
fi
exec venv/bin/edge-run "$@"
