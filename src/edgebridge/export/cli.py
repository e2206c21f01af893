"""`edge-export` command line (placeholder until the ONNX / TensorRT / GGUF exporters lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edge-export: not yet available in this build (the ONNX / TensorRT / GGUF exporters is not implemented yet).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
