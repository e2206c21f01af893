"""`edge-calib` command line (placeholder until hand-eye calibration lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edge-calib: not yet available in this build (hand-eye calibration is not implemented yet).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
