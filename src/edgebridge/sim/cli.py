"""`edge-sim` command line (placeholder until the simulator lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edge-sim: not yet available in this build (the simulator is not implemented yet).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
